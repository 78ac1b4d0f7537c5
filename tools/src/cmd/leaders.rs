//! `sluicectl leaders elect`: ElectLeaders, like `kafka-leader-election.sh`: move leadership
//! back to the preferred replicas, or elect a leader out of the ISR for leaderless partitions.

use std::io::Write;

use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
use kafka_protocol::messages::{ElectLeadersRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use serde::Serialize;

use crate::client::{check, error_name, ClientError};
use crate::output::{write_json, Format, Table};
use crate::{Ctx, UsageError};

/// Kafka error code ELECTION_NOT_NEEDED: the partition already has the leader asked for.
const ELECTION_NOT_NEEDED: i16 = 84;

/// The election kind (`--type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ElectionKind {
    /// The preferred (first assigned) replica leads, if it is alive and in sync.
    Preferred,
    /// A leaderless partition gets a live replica as leader, even one out of sync (may lose
    /// records).
    Unclean,
}

/// The `leaders` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum LeadersCmd {
    /// Run preferred or unclean leader elections (ElectLeaders).
    Elect {
        /// Election type.
        #[arg(long = "type", value_enum)]
        kind: ElectionKind,
        /// Topic (every partition of it unless --partition is given).
        #[arg(long, conflicts_with = "all_topic_partitions")]
        topic: Option<String>,
        /// Partition of --topic, repeatable.
        #[arg(long = "partition", requires = "topic")]
        partitions: Vec<i32>,
        /// Every partition of every topic (the broker answers only the partitions it acted
        /// on or could not).
        #[arg(long)]
        all_topic_partitions: bool,
    },
}

/// One partition's answer.
#[derive(Debug, Serialize)]
struct Election {
    topic: String,
    partition: i32,
    /// Kafka error name, `NONE` when a leader was elected.
    error: String,
    /// The broker's message, if any.
    message: Option<String>,
}

/// Runs a `leaders` subcommand. Returns false when an election failed (ELECTION_NOT_NEEDED
/// is not a failure).
pub fn run(ctx: &Ctx, cmd: LeadersCmd, out: &mut impl Write) -> anyhow::Result<bool> {
    let LeadersCmd::Elect {
        kind,
        topic,
        partitions,
        all_topic_partitions,
    } = cmd;
    let mut cluster = ctx.cluster()?;
    let topic_partitions = match (topic, all_topic_partitions) {
        (None, false) => {
            return Err(UsageError(
                "name the partitions: --topic [--partition N] or --all-topic-partitions".into(),
            )
            .into())
        }
        (Some(_), true) => {
            return Err(
                UsageError("--topic and --all-topic-partitions exclude each other".into()).into(),
            )
        }
        (None, true) => None,
        (Some(topic), false) => {
            let partitions = if partitions.is_empty() {
                cluster
                    .topic(&topic)?
                    .partitions
                    .iter()
                    .map(|p| p.partition)
                    .collect()
            } else {
                partitions
            };
            Some(vec![TopicPartitions::default()
                .with_topic(TopicName(StrBytes::from_string(topic)))
                .with_partitions(partitions)])
        }
    };
    let timeout_ms = ctx.timeout.as_millis().min(i32::MAX as u128) as i32;
    let req = ElectLeadersRequest::default()
        .with_election_type(match kind {
            ElectionKind::Preferred => 0,
            ElectionKind::Unclean => 1,
        })
        .with_topic_partitions(topic_partitions)
        .with_timeout_ms(timeout_ms);
    let conn = cluster.any();
    if !conn.supports::<ElectLeadersRequest>() {
        return Err(ClientError::Kafka {
            what: "ElectLeaders".into(),
            code: 35,
            message: Some("the broker does not serve ElectLeaders".into()),
        }
        .into());
    }
    if kind == ElectionKind::Unclean && conn.version_for::<ElectLeadersRequest>(2)? < 1 {
        return Err(UsageError(
            "the broker supports only preferred elections (ElectLeaders v0)".into(),
        )
        .into());
    }
    // The broker answers once the controller applied the elections and its own metadata shows
    // them, which may take up to its request timeout.
    conn.set_timeout(ctx.timeout * 2)?;
    let resp = conn.call(&req, 2);
    conn.set_timeout(ctx.timeout)?;
    let resp = resp?;
    check(resp.error_code, || "ElectLeaders".into(), None)?;
    let mut rows: Vec<Election> = resp
        .replica_election_results
        .iter()
        .flat_map(|t| {
            t.partition_result.iter().map(|p| Election {
                topic: t.topic.to_string(),
                partition: p.partition_id,
                error: error_name(p.error_code),
                message: p.error_message.as_ref().map(|m| m.to_string()),
            })
        })
        .collect();
    rows.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    let not_needed = error_name(ELECTION_NOT_NEEDED);
    match ctx.format {
        Format::Json => write_json(out, &rows)?,
        Format::Table => {
            if rows.is_empty() {
                writeln!(out, "No partition needed an election.")?;
            } else {
                let mut t = Table::new(&["TOPIC", "PARTITION", "RESULT", "MESSAGE"]);
                for r in &rows {
                    let result = if r.error == "NONE" {
                        "ELECTED".to_string()
                    } else {
                        r.error.clone()
                    };
                    t.row(vec![
                        r.topic.clone(),
                        r.partition.to_string(),
                        result,
                        r.message.clone().unwrap_or_default(),
                    ]);
                }
                t.write(out)?;
            }
        }
    }
    let failed: Vec<&Election> = rows
        .iter()
        .filter(|r| r.error != "NONE" && r.error != not_needed)
        .collect();
    for r in &failed {
        eprintln!(
            "sluicectl: error: electing a leader for {}-{}: {}{}",
            r.topic,
            r.partition,
            r.error,
            r.message
                .as_deref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default()
        );
    }
    Ok(failed.is_empty())
}
