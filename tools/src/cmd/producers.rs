//! `sluicectl producers describe`: DescribeProducers on each partition's leader, like
//! `kafka-transactions.sh describe-producers`: the idempotent producers whose state the
//! partition keeps.

use std::io::Write;

use kafka_protocol::messages::describe_producers_request::TopicRequest;
use kafka_protocol::messages::{DescribeProducersRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use serde::Serialize;

use crate::client::check;
use crate::output::{write_json, Format, Table};
use crate::Ctx;

/// The `producers` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ProducersCmd {
    /// Active producers of each partition of a topic.
    Describe {
        /// Topic name.
        topic: String,
        /// Partition, repeatable (all partitions when omitted).
        #[arg(long = "partition")]
        partitions: Vec<i32>,
    },
}

/// One producer of one partition.
#[derive(Debug, Serialize)]
struct ProducerRow {
    partition: i32,
    producer_id: i64,
    producer_epoch: i32,
    last_sequence: i32,
    last_timestamp: i64,
    coordinator_epoch: i32,
    current_txn_start_offset: i64,
}

/// Runs a `producers` subcommand.
pub fn run(ctx: &Ctx, cmd: ProducersCmd, out: &mut impl Write) -> anyhow::Result<()> {
    let ProducersCmd::Describe { topic, partitions } = cmd;
    let mut cluster = ctx.cluster()?;
    let by_leader = cluster.partitions_by_leader(&topic, partitions)?;
    let mut rows = Vec::new();
    for (leader, ps) in by_leader {
        let req = DescribeProducersRequest::default().with_topics(vec![TopicRequest::default()
            .with_name(TopicName(StrBytes::from_string(topic.clone())))
            .with_partition_indexes(ps)]);
        let resp = cluster.node(leader)?.call(&req, 0)?;
        for t in resp.topics {
            for p in t.partitions {
                check(
                    p.error_code,
                    || format!("DescribeProducers of {topic}-{}", p.partition_index),
                    p.error_message.as_deref(),
                )?;
                rows.extend(p.active_producers.iter().map(|s| ProducerRow {
                    partition: p.partition_index,
                    producer_id: s.producer_id.0,
                    producer_epoch: s.producer_epoch,
                    last_sequence: s.last_sequence,
                    last_timestamp: s.last_timestamp,
                    coordinator_epoch: s.coordinator_epoch,
                    current_txn_start_offset: s.current_txn_start_offset,
                }));
            }
        }
    }
    rows.sort_by_key(|r| (r.partition, r.producer_id));
    match ctx.format {
        Format::Json => write_json(out, &rows)?,
        Format::Table => {
            let mut t = Table::new(&[
                "PARTITION",
                "PRODUCER-ID",
                "EPOCH",
                "LAST-SEQUENCE",
                "LAST-TIMESTAMP",
                "TXN-START-OFFSET",
            ]);
            for r in &rows {
                t.row(vec![
                    r.partition.to_string(),
                    r.producer_id.to_string(),
                    r.producer_epoch.to_string(),
                    r.last_sequence.to_string(),
                    r.last_timestamp.to_string(),
                    r.current_txn_start_offset.to_string(),
                ]);
            }
            t.write(out)?;
        }
    }
    Ok(())
}
