//! `sluicectl logdirs describe`: DescribeLogDirs on every broker (or the chosen ones), like
//! `kafka-log-dirs.sh --describe`: each log directory with its disk space and the size and
//! offset lag of every partition replica in it.

use std::io::Write;

use kafka_protocol::messages::describe_log_dirs_request::DescribableLogDirTopic;
use kafka_protocol::messages::{DescribeLogDirsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use serde::Serialize;

use crate::client::{check, error_name};
use crate::output::{write_json, Format, Table};
use crate::Ctx;

/// The `logdirs` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum LogdirsCmd {
    /// Log directories of each broker, with per-partition sizes.
    Describe {
        /// Broker id, repeatable (every broker when omitted).
        #[arg(long = "broker")]
        brokers: Vec<i32>,
        /// Topic, repeatable (every topic when omitted).
        #[arg(long = "topic")]
        topics: Vec<String>,
    },
}

/// One partition replica in a log directory.
#[derive(Debug, Serialize)]
struct ReplicaRow {
    topic: String,
    partition: i32,
    size_bytes: i64,
    offset_lag: i64,
    is_future: bool,
}

/// One log directory of one broker.
#[derive(Debug, Serialize)]
struct LogDirRow {
    broker: i32,
    log_dir: String,
    /// Kafka error name, `NONE` for a healthy directory.
    error: String,
    /// File-system size (-1 when the broker does not say: DescribeLogDirs < v4).
    total_bytes: i64,
    /// File-system space available (-1 when the broker does not say).
    usable_bytes: i64,
    replicas: Vec<ReplicaRow>,
}

/// Runs a `logdirs` subcommand.
pub fn run(ctx: &Ctx, cmd: LogdirsCmd, out: &mut impl Write) -> anyhow::Result<()> {
    let LogdirsCmd::Describe { brokers, topics } = cmd;
    let mut cluster = ctx.cluster()?;
    let brokers: Vec<i32> = if brokers.is_empty() {
        cluster.brokers().map(|b| b.node_id).collect()
    } else {
        brokers
    };
    // Null asks for every partition; named topics need their partition lists.
    let wanted = if topics.is_empty() {
        None
    } else {
        let metas = topics
            .iter()
            .map(|t| cluster.topic(t))
            .collect::<Result<Vec<_>, _>>()?;
        Some(
            metas
                .iter()
                .map(|m| {
                    DescribableLogDirTopic::default()
                        .with_topic(TopicName(StrBytes::from_string(m.name.clone())))
                        .with_partitions(m.partitions.iter().map(|p| p.partition).collect())
                })
                .collect(),
        )
    };
    let req = DescribeLogDirsRequest::default().with_topics(wanted);
    let mut dirs = Vec::new();
    for broker in brokers {
        let resp = cluster.node(broker)?.call(&req, 4)?;
        check(
            resp.error_code,
            || format!("DescribeLogDirs on broker {broker}"),
            None,
        )?;
        for d in resp.results {
            let mut replicas: Vec<ReplicaRow> = d
                .topics
                .iter()
                .flat_map(|t| {
                    t.partitions.iter().map(move |p| ReplicaRow {
                        topic: t.name.to_string(),
                        partition: p.partition_index,
                        size_bytes: p.partition_size,
                        offset_lag: p.offset_lag,
                        is_future: p.is_future_key,
                    })
                })
                .collect();
            replicas.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
            dirs.push(LogDirRow {
                broker,
                log_dir: d.log_dir.to_string(),
                error: error_name(d.error_code),
                total_bytes: d.total_bytes,
                usable_bytes: d.usable_bytes,
                replicas,
            });
        }
    }
    match ctx.format {
        Format::Json => write_json(out, &dirs)?,
        Format::Table => {
            let mut t = Table::new(&["BROKER", "LOG-DIR", "ERROR", "TOTAL-BYTES", "USABLE-BYTES"]);
            for d in &dirs {
                t.row(vec![
                    d.broker.to_string(),
                    d.log_dir.clone(),
                    d.error.clone(),
                    d.total_bytes.to_string(),
                    d.usable_bytes.to_string(),
                ]);
            }
            t.write(out)?;
            writeln!(out)?;
            let mut t = Table::new(&["BROKER", "TOPIC", "PARTITION", "SIZE-BYTES", "OFFSET-LAG"]);
            for d in &dirs {
                for r in &d.replicas {
                    t.row(vec![
                        d.broker.to_string(),
                        r.topic.clone(),
                        r.partition.to_string(),
                        r.size_bytes.to_string(),
                        r.offset_lag.to_string(),
                    ]);
                }
            }
            t.write(out)?;
        }
    }
    Ok(())
}
