//! `sluicectl topics`: create / list / describe / delete / add-partitions.

use std::io::Write;

use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use serde::Serialize;

use super::parse_kv;
use crate::client::check;
use crate::client::ops::{EARLIEST, LATEST};
use crate::output::{ids, write_json, Format, Table};
use crate::Ctx;

/// The `topics` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum TopicsCmd {
    /// Create a topic.
    Create {
        /// Topic name.
        name: String,
        /// Number of partitions (broker default when omitted).
        #[arg(long)]
        partitions: Option<i32>,
        /// Replication factor (broker default when omitted).
        #[arg(long)]
        replication_factor: Option<i16>,
        /// Topic config, repeatable: --config cleanup.policy=compact.
        #[arg(long = "config", value_name = "K=V")]
        configs: Vec<String>,
        /// Sluice's replication mode for this topic (sets the `replication.mode` config).
        #[arg(long, value_parser = ["isr", "quorum"])]
        replication_mode: Option<String>,
    },
    /// List topic names.
    List,
    /// Describe partitions: leader, replicas, ISR, leader epoch, log start and end offsets.
    Describe {
        /// Topic (all topics when omitted).
        name: Option<String>,
    },
    /// Delete topics.
    Delete {
        /// Topic names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Grow a topic to a total number of partitions.
    AddPartitions {
        /// Topic name.
        name: String,
        /// The new total number of partitions.
        #[arg(long)]
        total: i32,
    },
}

fn topic_name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

/// One partition of `topics describe`.
#[derive(Debug, Serialize)]
struct PartitionRow {
    partition: i32,
    leader: i32,
    leader_epoch: i32,
    replicas: Vec<i32>,
    isr: Vec<i32>,
    offline_replicas: Vec<i32>,
    /// ListOffsets earliest.
    log_start_offset: Option<i64>,
    /// ListOffsets latest: the high watermark, the end of what consumers can read.
    log_end_offset: Option<i64>,
}

/// One topic of `topics describe`.
#[derive(Debug, Serialize)]
struct TopicRow {
    name: String,
    topic_id: String,
    is_internal: bool,
    partitions: Vec<PartitionRow>,
}

/// Runs a `topics` subcommand.
pub fn run(ctx: &Ctx, cmd: TopicsCmd, out: &mut impl Write) -> anyhow::Result<()> {
    let mut cluster = ctx.cluster()?;
    let timeout_ms = ctx.timeout.as_millis().min(i32::MAX as u128) as i32;
    match cmd {
        TopicsCmd::Create {
            name,
            partitions,
            replication_factor,
            configs,
            replication_mode,
        } => {
            let mut cfgs = configs
                .iter()
                .map(|c| parse_kv(c))
                .collect::<Result<Vec<_>, _>>()?;
            if let Some(mode) = replication_mode {
                cfgs.push(("replication.mode".into(), mode));
            }
            let req = CreateTopicsRequest::default()
                .with_timeout_ms(timeout_ms)
                .with_topics(vec![CreatableTopic::default()
                    .with_name(topic_name(&name))
                    .with_num_partitions(partitions.unwrap_or(-1))
                    .with_replication_factor(replication_factor.unwrap_or(-1))
                    .with_configs(
                        cfgs.iter()
                            .map(|(k, v)| {
                                CreatableTopicConfig::default()
                                    .with_name(StrBytes::from_string(k.clone()))
                                    .with_value(Some(StrBytes::from_string(v.clone())))
                            })
                            .collect(),
                    )]);
            let resp = cluster.any().call(&req, 7)?;
            let t = resp
                .topics
                .first()
                .ok_or_else(|| anyhow::anyhow!("CreateTopics answer has no result for '{name}'"))?;
            check(
                t.error_code,
                || format!("creating topic '{name}'"),
                t.error_message.as_deref(),
            )?;
            // Versions before 5 do not echo the partition count; ask Metadata then.
            let (parts, rf) = if t.num_partitions > 0 {
                (t.num_partitions, t.replication_factor)
            } else {
                let m = cluster.topic(&name)?;
                let rf = m.partitions.first().map_or(-1, |p| p.replicas.len() as i16);
                (m.partitions.len() as i32, rf)
            };
            match ctx.format {
                Format::Json => write_json(
                    out,
                    &serde_json::json!({
                        "name": name,
                        "topic_id": t.topic_id.to_string(),
                        "partitions": parts,
                        "replication_factor": rf,
                        "configs": cfgs.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
                    }),
                )?,
                Format::Table => writeln!(
                    out,
                    "Created topic {name} with {parts} partitions, replication factor {rf}."
                )?,
            }
        }
        TopicsCmd::List => {
            let topics = cluster.metadata(None)?;
            let names: Vec<&str> = topics.iter().map(|t| t.name.as_str()).collect();
            match ctx.format {
                Format::Json => write_json(out, &names)?,
                Format::Table => {
                    for n in names {
                        writeln!(out, "{n}")?;
                    }
                }
            }
        }
        TopicsCmd::Describe { name } => {
            let metas = match &name {
                Some(n) => vec![cluster.topic(n)?],
                None => cluster.metadata(None)?,
            };
            let mut rows = Vec::with_capacity(metas.len());
            for m in metas {
                let with_leader: Vec<i32> = m
                    .partitions
                    .iter()
                    .filter(|p| p.leader >= 0)
                    .map(|p| p.partition)
                    .collect();
                let start = cluster.list_offsets(&m, &with_leader, EARLIEST)?;
                let end = cluster.list_offsets(&m, &with_leader, LATEST)?;
                rows.push(TopicRow {
                    partitions: m
                        .partitions
                        .iter()
                        .map(|p| PartitionRow {
                            partition: p.partition,
                            leader: p.leader,
                            leader_epoch: p.leader_epoch,
                            replicas: p.replicas.clone(),
                            isr: p.isr.clone(),
                            offline_replicas: p.offline_replicas.clone(),
                            log_start_offset: start.get(&p.partition).copied(),
                            log_end_offset: end.get(&p.partition).copied(),
                        })
                        .collect(),
                    name: m.name,
                    topic_id: m.topic_id,
                    is_internal: m.is_internal,
                });
            }
            match ctx.format {
                Format::Json => {
                    if name.is_some() && rows.len() == 1 {
                        write_json(out, &rows[0])?
                    } else {
                        write_json(out, &rows)?
                    }
                }
                Format::Table => {
                    let mut t = Table::new(&[
                        "TOPIC",
                        "PARTITION",
                        "LEADER",
                        "EPOCH",
                        "REPLICAS",
                        "ISR",
                        "LOG-START",
                        "LOG-END",
                    ]);
                    let opt = |o: Option<i64>| o.map_or("-".to_string(), |v| v.to_string());
                    for r in &rows {
                        for p in &r.partitions {
                            t.row(vec![
                                r.name.clone(),
                                p.partition.to_string(),
                                if p.leader < 0 {
                                    "none".into()
                                } else {
                                    p.leader.to_string()
                                },
                                p.leader_epoch.to_string(),
                                ids(&p.replicas),
                                ids(&p.isr),
                                opt(p.log_start_offset),
                                opt(p.log_end_offset),
                            ]);
                        }
                    }
                    t.write(out)?;
                }
            }
        }
        TopicsCmd::Delete { names } => {
            let conn = cluster.any();
            let v = conn.version_for::<DeleteTopicsRequest>(6)?;
            let mut req = DeleteTopicsRequest::default().with_timeout_ms(timeout_ms);
            if v >= 6 {
                req = req.with_topics(
                    names
                        .iter()
                        .map(|n| DeleteTopicState::default().with_name(Some(topic_name(n))))
                        .collect(),
                );
            } else {
                req = req.with_topic_names(names.iter().map(|n| topic_name(n)).collect());
            }
            let resp = conn.call_version(&req, v)?;
            for r in &resp.responses {
                let n = r.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
                check(
                    r.error_code,
                    || format!("deleting topic '{n}'"),
                    r.error_message.as_deref(),
                )?;
            }
            match ctx.format {
                Format::Json => write_json(out, &serde_json::json!({ "deleted": names }))?,
                Format::Table => {
                    for n in &names {
                        writeln!(out, "Deleted topic {n}.")?;
                    }
                }
            }
        }
        TopicsCmd::AddPartitions { name, total } => {
            let before = cluster.topic(&name)?.partitions.len() as i32;
            let req = CreatePartitionsRequest::default()
                .with_timeout_ms(timeout_ms)
                .with_topics(vec![CreatePartitionsTopic::default()
                    .with_name(topic_name(&name))
                    .with_count(total)]);
            let resp = cluster.any().call(&req, 3)?;
            for r in &resp.results {
                check(
                    r.error_code,
                    || format!("growing topic '{name}' from {before} to {total} partitions"),
                    r.error_message.as_deref(),
                )?;
            }
            let warning = format!(
                "keyed ordering changes: the partition of a key is murmur2(key) % partitions, so \
                 with {total} instead of {before} partitions most keys now go to other partitions; \
                 records of one key written before and after this change are no longer in one \
                 partition, and consumers may see them out of order"
            );
            eprintln!("WARNING: {warning}");
            match ctx.format {
                Format::Json => write_json(
                    out,
                    &serde_json::json!({
                        "name": name, "partitions_before": before,
                        "partitions": total, "warning": warning,
                    }),
                )?,
                Format::Table => writeln!(
                    out,
                    "Topic {name} now has {total} partitions (was {before})."
                )?,
            }
        }
    }
    Ok(())
}
