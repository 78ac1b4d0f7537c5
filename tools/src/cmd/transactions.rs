//! `sluicectl transactions list|describe`, like `kafka-transactions.sh`: the transactional ids
//! every broker coordinates (ListTransactions), and one id's state from its coordinator
//! (DescribeTransactions).

use std::io::Write;

use kafka_protocol::messages::{
    DescribeTransactionsRequest, ListTransactionsRequest, ProducerId, TransactionalId,
};
use kafka_protocol::protocol::StrBytes;
use serde::Serialize;

use crate::client::check;
use crate::output::{write_json, Format, Table};
use crate::Ctx;

/// The `transactions` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum TransactionsCmd {
    /// Transactional ids known to the cluster's coordinators.
    List {
        /// Only ids in this state (Empty, Ongoing, PrepareCommit, PrepareAbort,
        /// CompleteCommit, CompleteAbort, ...), repeatable.
        #[arg(long = "state")]
        states: Vec<String>,
        /// Only ids of this producer id, repeatable.
        #[arg(long = "producer-id")]
        producer_ids: Vec<i64>,
        /// Only transactions open for at least this long (ms).
        #[arg(long)]
        min_duration_ms: Option<i64>,
    },
    /// One transactional id's state, from its coordinator.
    Describe {
        /// The transactional id.
        transactional_id: String,
    },
}

#[derive(Debug, Serialize)]
struct ListRow {
    transactional_id: String,
    coordinator: i32,
    producer_id: i64,
    state: String,
}

#[derive(Debug, Serialize)]
struct DescribeRow {
    coordinator: i32,
    transactional_id: String,
    producer_id: i64,
    producer_epoch: i16,
    state: String,
    timeout_ms: i32,
    start_time_ms: i64,
    duration_ms: Option<i64>,
    partitions: Vec<String>,
}

/// Runs a `transactions` subcommand.
pub fn run(ctx: &Ctx, cmd: TransactionsCmd, out: &mut impl Write) -> anyhow::Result<()> {
    let mut cluster = ctx.cluster()?;
    match cmd {
        TransactionsCmd::List {
            states,
            producer_ids,
            min_duration_ms,
        } => {
            let req = ListTransactionsRequest::default()
                .with_state_filters(
                    states
                        .iter()
                        .map(|s| StrBytes::from_string(s.clone()))
                        .collect(),
                )
                .with_producer_id_filters(producer_ids.iter().map(|p| ProducerId(*p)).collect())
                .with_duration_filter(min_duration_ms.unwrap_or(-1));
            let ids: Vec<i32> = cluster.brokers().map(|b| b.node_id).collect();
            let mut rows = Vec::new();
            for id in ids {
                let resp = cluster.node(id)?.call(&req, 1)?;
                check(
                    resp.error_code,
                    || format!("ListTransactions on broker {id}"),
                    None,
                )?;
                if let Some(bad) = resp.unknown_state_filters.first() {
                    anyhow::bail!("unknown transaction state '{bad}'");
                }
                rows.extend(resp.transaction_states.into_iter().map(|t| ListRow {
                    transactional_id: t.transactional_id.0.to_string(),
                    coordinator: id,
                    producer_id: t.producer_id.0,
                    state: t.transaction_state.to_string(),
                }));
            }
            rows.sort_by(|a, b| a.transactional_id.cmp(&b.transactional_id));
            match ctx.format {
                Format::Json => write_json(out, &rows)?,
                Format::Table => {
                    let mut t =
                        Table::new(&["TRANSACTIONAL-ID", "COORDINATOR", "PRODUCER-ID", "STATE"]);
                    for r in &rows {
                        t.row(vec![
                            r.transactional_id.clone(),
                            r.coordinator.to_string(),
                            r.producer_id.to_string(),
                            r.state.clone(),
                        ]);
                    }
                    t.write(out)?;
                }
            }
        }
        TransactionsCmd::Describe { transactional_id } => {
            let coordinator = cluster.coordinator_of(1, &transactional_id)?;
            let req = DescribeTransactionsRequest::default().with_transactional_ids(vec![
                TransactionalId(StrBytes::from_string(transactional_id.clone())),
            ]);
            let resp = cluster.node(coordinator)?.call(&req, 0)?;
            let s = resp
                .transaction_states
                .into_iter()
                .next()
                .ok_or_else(|| anyhow::anyhow!("DescribeTransactions answered nothing"))?;
            check(
                s.error_code,
                || format!("describing transactional id '{transactional_id}'"),
                None,
            )?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            let row = DescribeRow {
                coordinator,
                transactional_id,
                producer_id: s.producer_id.0,
                producer_epoch: s.producer_epoch,
                state: s.transaction_state.to_string(),
                timeout_ms: s.transaction_timeout_ms,
                start_time_ms: s.transaction_start_time_ms,
                duration_ms: (s.transaction_start_time_ms >= 0)
                    .then(|| now - s.transaction_start_time_ms),
                partitions: s
                    .topics
                    .iter()
                    .flat_map(|t| {
                        t.partitions
                            .iter()
                            .map(move |p| format!("{}-{p}", t.topic.0))
                    })
                    .collect(),
            };
            match ctx.format {
                Format::Json => write_json(out, &row)?,
                Format::Table => {
                    let mut t = Table::new(&[
                        "COORDINATOR",
                        "TRANSACTIONAL-ID",
                        "PRODUCER-ID",
                        "EPOCH",
                        "STATE",
                        "TIMEOUT-MS",
                        "START-TIME-MS",
                        "DURATION-MS",
                        "PARTITIONS",
                    ]);
                    t.row(vec![
                        row.coordinator.to_string(),
                        row.transactional_id.clone(),
                        row.producer_id.to_string(),
                        row.producer_epoch.to_string(),
                        row.state.clone(),
                        row.timeout_ms.to_string(),
                        row.start_time_ms.to_string(),
                        row.duration_ms.map_or("-".into(), |d| d.to_string()),
                        row.partitions.join(","),
                    ]);
                    t.write(out)?;
                }
            }
        }
    }
    Ok(())
}
