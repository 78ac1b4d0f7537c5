//! `sluicectl records delete`: DeleteRecords on each partition's leader, like
//! `kafka-delete-records.sh`: records below the given offset become unreadable and the
//! segments wholly below it are deleted.

use std::io::Write;

use kafka_protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsTopic,
};
use kafka_protocol::messages::{DeleteRecordsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use serde::Serialize;

use crate::client::{error_name, ClientError};
use crate::output::{write_json, Format, Table};
use crate::{Ctx, UsageError};

/// Kafka's DeleteRecords offset meaning "the high watermark" (delete everything readable).
const HIGH_WATERMARK: i64 = -1;

/// The `records` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum RecordsCmd {
    /// Delete the records below an offset (the new log start offset) on each partition.
    Delete {
        /// Topic name.
        topic: String,
        /// Partition, repeatable (all partitions when omitted).
        #[arg(long = "partition")]
        partitions: Vec<i32>,
        /// The new log start offset, or `hw` (or -1) for the high watermark: everything
        /// consumers can read now.
        #[arg(long, value_parser = parse_offset)]
        before: i64,
    },
}

/// `--before`: an offset >= 0, or `hw` / -1.
fn parse_offset(s: &str) -> Result<i64, String> {
    if s.eq_ignore_ascii_case("hw") || s == "-1" {
        return Ok(HIGH_WATERMARK);
    }
    match s.parse::<i64>() {
        Ok(n) if n >= 0 => Ok(n),
        _ => Err(format!("expected an offset >= 0 or `hw`, got '{s}'")),
    }
}

/// One partition's answer.
#[derive(Debug, Serialize)]
struct Deleted {
    topic: String,
    partition: i32,
    /// The new log start offset (the smallest of the in-sync replicas'), -1 on error.
    low_watermark: i64,
    /// Kafka error name, `NONE` on success.
    error: String,
}

/// Runs a `records` subcommand. Returns false when a partition failed.
pub fn run(ctx: &Ctx, cmd: RecordsCmd, out: &mut impl Write) -> anyhow::Result<bool> {
    let RecordsCmd::Delete {
        topic,
        partitions,
        before,
    } = cmd;
    let mut cluster = ctx.cluster()?;
    let by_leader = cluster.partitions_by_leader(&topic, partitions)?;
    if by_leader.is_empty() {
        return Err(UsageError(format!("topic '{topic}' has no partitions")).into());
    }
    let asked: usize = by_leader.values().map(Vec::len).sum();
    let timeout_ms = ctx.timeout.as_millis().min(i32::MAX as u128) as i32;
    let mut rows = Vec::new();
    for (leader, ps) in by_leader {
        let req = DeleteRecordsRequest::default()
            .with_timeout_ms(timeout_ms)
            .with_topics(vec![DeleteRecordsTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.clone())))
                .with_partitions(
                    ps.iter()
                        .map(|&p| {
                            DeleteRecordsPartition::default()
                                .with_partition_index(p)
                                .with_offset(before)
                        })
                        .collect(),
                )]);
        let conn = cluster.node(leader)?;
        // The broker may wait up to the timeout for its followers before answering.
        conn.set_timeout(ctx.timeout * 2)?;
        let resp = conn.call(&req, 2);
        conn.set_timeout(ctx.timeout)?;
        let resp = resp?;
        for t in resp.topics {
            for p in t.partitions {
                rows.push(Deleted {
                    topic: t.name.to_string(),
                    partition: p.partition_index,
                    low_watermark: p.low_watermark,
                    error: error_name(p.error_code),
                });
            }
        }
    }
    rows.sort_by_key(|r| r.partition);
    if rows.len() != asked {
        return Err(ClientError::Cluster(format!(
            "DeleteRecords answered {} of {asked} partitions",
            rows.len(),
        ))
        .into());
    }
    match ctx.format {
        Format::Json => write_json(out, &rows)?,
        Format::Table => {
            let mut t = Table::new(&["TOPIC", "PARTITION", "LOW-WATERMARK", "ERROR"]);
            for r in &rows {
                t.row(vec![
                    r.topic.clone(),
                    r.partition.to_string(),
                    r.low_watermark.to_string(),
                    r.error.clone(),
                ]);
            }
            t.write(out)?;
        }
    }
    let failed: Vec<&Deleted> = rows.iter().filter(|r| r.error != "NONE").collect();
    for r in &failed {
        eprintln!(
            "sluicectl: error: deleting records of {}-{}: {}",
            r.topic, r.partition, r.error
        );
    }
    Ok(failed.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_and_high_watermark() {
        assert_eq!(parse_offset("42"), Ok(42));
        assert_eq!(parse_offset("0"), Ok(0));
        assert_eq!(parse_offset("hw"), Ok(HIGH_WATERMARK));
        assert_eq!(parse_offset("HW"), Ok(HIGH_WATERMARK));
        assert_eq!(parse_offset("-1"), Ok(HIGH_WATERMARK));
        assert!(parse_offset("-2").is_err());
        assert!(parse_offset("latest").is_err());
    }
}
