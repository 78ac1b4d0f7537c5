//! `sluicectl topics reassign`: partition reassignment, like `kafka-reassign-partitions.sh`
//! (`generate`, `execute`, `verify`, `cancel`), with plans in Kafka's reassignment JSON
//! format: `{"version":1,"partitions":[{"topic":"t","partition":0,"replicas":[2,3,4]}]}`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use kafka_protocol::messages::alter_partition_reassignments_request::{
    ReassignablePartition, ReassignableTopic,
};
use kafka_protocol::messages::list_partition_reassignments_request::ListPartitionReassignmentsTopics;
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, BrokerId, ListPartitionReassignmentsRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use serde::{Deserialize, Serialize};

use crate::client::cluster::Cluster;
use crate::client::{check, error_name, ClientError};
use crate::output::{write_json, Format, Table};
use crate::{Ctx, UsageError};

/// Kafka error code NO_REASSIGNMENT_IN_PROGRESS.
const NO_REASSIGNMENT_IN_PROGRESS: i16 = 85;

/// The `topics reassign` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ReassignCmd {
    /// Propose a plan moving every partition of --topics onto --brokers (same replication
    /// factor); prints the current assignment (to roll back with) and the proposal.
    Generate {
        /// Topics, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        topics: Vec<String>,
        /// Broker ids to place the replicas on, comma-separated: --brokers 2,3,4.
        #[arg(long, value_delimiter = ',', required = true)]
        brokers: Vec<i32>,
    },
    /// Start the reassignments of a plan (AlterPartitionReassignments).
    Execute {
        /// The plan (Kafka's reassignment JSON).
        #[arg(long)]
        plan: PathBuf,
    },
    /// Report each partition of a plan as complete, in progress or mismatched; exits
    /// non-zero unless every partition is complete.
    Verify {
        /// The plan.
        #[arg(long)]
        plan: PathBuf,
    },
    /// Cancel the reassignments in progress of a plan's partitions.
    Cancel {
        /// The plan.
        #[arg(long)]
        plan: PathBuf,
    },
}

/// Kafka's reassignment JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Always 1.
    pub version: i32,
    /// The partitions and their target replicas.
    pub partitions: Vec<PlanPartition>,
}

/// One partition of a [`Plan`] (Kafka's `log_dirs` field, if present, is ignored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanPartition {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: i32,
    /// Target replicas, preferred leader first.
    pub replicas: Vec<i32>,
}

/// Reads and checks a plan file.
pub fn read_plan(path: &Path) -> anyhow::Result<Plan> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| UsageError(format!("cannot read plan {}: {e}", path.display())))?;
    let plan: Plan = serde_json::from_str(&text)
        .map_err(|e| UsageError(format!("plan {} is not valid: {e}", path.display())))?;
    if plan.version != 1 {
        return Err(UsageError(format!(
            "plan {}: version {} (only 1 is known)",
            path.display(),
            plan.version
        ))
        .into());
    }
    if plan.partitions.is_empty() {
        return Err(UsageError(format!("plan {} names no partition", path.display())).into());
    }
    Ok(plan)
}

/// The round-robin proposal of `generate`: partition `i`'s replicas are `rf` consecutive
/// brokers of the (sorted) list starting at `i`, so leaders and replicas spread evenly.
pub fn propose(current: &Plan, brokers: &[i32]) -> Result<Plan, UsageError> {
    let mut brokers = brokers.to_vec();
    brokers.sort_unstable();
    brokers.dedup();
    let mut partitions = Vec::with_capacity(current.partitions.len());
    for (i, p) in current.partitions.iter().enumerate() {
        let rf = p.replicas.len();
        if rf > brokers.len() {
            return Err(UsageError(format!(
                "{}-{} has {rf} replicas, more than the {} brokers given",
                p.topic,
                p.partition,
                brokers.len()
            )));
        }
        partitions.push(PlanPartition {
            topic: p.topic.clone(),
            partition: p.partition,
            replicas: (0..rf).map(|j| brokers[(i + j) % brokers.len()]).collect(),
        });
    }
    Ok(Plan {
        version: 1,
        partitions,
    })
}

/// One partition's answer to execute or cancel.
#[derive(Debug, Serialize)]
struct Outcome {
    topic: String,
    partition: i32,
    /// Kafka error name, `NONE` on success.
    error: String,
    message: Option<String>,
}

/// One partition's state in verify.
#[derive(Debug, Serialize)]
struct Verified {
    topic: String,
    partition: i32,
    /// `complete`, `in_progress` or `mismatch`.
    status: &'static str,
    target: Vec<i32>,
    replicas: Vec<i32>,
    isr: Vec<i32>,
    adding: Vec<i32>,
    removing: Vec<i32>,
}

/// Runs a `topics reassign` subcommand. Returns false when a partition failed (execute,
/// cancel) or is not complete (verify).
pub fn run(ctx: &Ctx, cmd: ReassignCmd, out: &mut impl Write) -> anyhow::Result<bool> {
    let mut cluster = ctx.cluster()?;
    match cmd {
        ReassignCmd::Generate { topics, brokers } => {
            let known: Vec<i32> = cluster.brokers().map(|b| b.node_id).collect();
            if let Some(b) = brokers.iter().find(|b| !known.contains(b)) {
                return Err(UsageError(format!("broker {b} is not in the cluster")).into());
            }
            let current = current_assignment(&mut cluster, &topics)?;
            let proposed = propose(&current, &brokers)?;
            match ctx.format {
                Format::Json => write_json(
                    out,
                    &serde_json::json!({"current": current, "proposed": proposed}),
                )?,
                Format::Table => {
                    writeln!(out, "Current partition replica assignment")?;
                    writeln!(out, "{}", serde_json::to_string(&current)?)?;
                    writeln!(out)?;
                    writeln!(out, "Proposed partition reassignment configuration")?;
                    writeln!(out, "{}", serde_json::to_string(&proposed)?)?;
                }
            }
            Ok(true)
        }
        ReassignCmd::Execute { plan } => {
            let plan = read_plan(&plan)?;
            let topics: Vec<String> = plan.partitions.iter().map(|p| p.topic.clone()).collect();
            let current = current_assignment(&mut cluster, &topics)?;
            let rows = alter(ctx, &mut cluster, &plan, false)?;
            match ctx.format {
                Format::Json => write_json(
                    out,
                    &serde_json::json!({"current": current, "results": rows}),
                )?,
                Format::Table => {
                    writeln!(
                        out,
                        "Current partition replica assignment (save it to roll back)"
                    )?;
                    writeln!(out, "{}", serde_json::to_string(&current)?)?;
                    writeln!(out)?;
                    outcome_table(&rows, "STARTED", out)?;
                }
            }
            Ok(report_failures(&rows, "reassigning", &[]))
        }
        ReassignCmd::Cancel { plan } => {
            let plan = read_plan(&plan)?;
            let rows = alter(ctx, &mut cluster, &plan, true)?;
            match ctx.format {
                Format::Json => write_json(out, &rows)?,
                Format::Table => outcome_table(&rows, "CANCELLED", out)?,
            }
            let not_in_progress = error_name(NO_REASSIGNMENT_IN_PROGRESS);
            Ok(report_failures(&rows, "cancelling", &[&not_in_progress]))
        }
        ReassignCmd::Verify { plan } => {
            let plan = read_plan(&plan)?;
            let rows = verify(ctx, &mut cluster, &plan)?;
            match ctx.format {
                Format::Json => write_json(out, &rows)?,
                Format::Table => {
                    let mut t = Table::new(&[
                        "TOPIC",
                        "PARTITION",
                        "STATUS",
                        "TARGET",
                        "REPLICAS",
                        "ISR",
                        "ADDING",
                        "REMOVING",
                    ]);
                    let list = |v: &[i32]| {
                        v.iter()
                            .map(|b| b.to_string())
                            .collect::<Vec<_>>()
                            .join(",")
                    };
                    for r in &rows {
                        t.row(vec![
                            r.topic.clone(),
                            r.partition.to_string(),
                            r.status.to_string(),
                            list(&r.target),
                            list(&r.replicas),
                            list(&r.isr),
                            list(&r.adding),
                            list(&r.removing),
                        ]);
                    }
                    t.write(out)?;
                }
            }
            Ok(rows.iter().all(|r| r.status == "complete"))
        }
    }
}

/// The current replicas of every partition of `topics` as a plan (sorted, deduplicated).
fn current_assignment(cluster: &mut Cluster, topics: &[String]) -> anyhow::Result<Plan> {
    let mut names = topics.to_vec();
    names.sort();
    names.dedup();
    let mut partitions = Vec::new();
    for name in &names {
        let meta = cluster.topic(name)?;
        partitions.extend(meta.partitions.iter().map(|p| PlanPartition {
            topic: name.clone(),
            partition: p.partition,
            replicas: p.replicas.clone(),
        }));
    }
    Ok(Plan {
        version: 1,
        partitions,
    })
}

/// Sends the plan's targets (or, with `cancel`, null targets).
fn alter(
    ctx: &Ctx,
    cluster: &mut Cluster,
    plan: &Plan,
    cancel: bool,
) -> anyhow::Result<Vec<Outcome>> {
    let mut by_topic: BTreeMap<&str, Vec<ReassignablePartition>> = BTreeMap::new();
    for p in &plan.partitions {
        by_topic.entry(&p.topic).or_default().push(
            ReassignablePartition::default()
                .with_partition_index(p.partition)
                .with_replicas(
                    (!cancel).then(|| p.replicas.iter().map(|&b| BrokerId(b)).collect()),
                ),
        );
    }
    let timeout_ms = ctx.timeout.as_millis().min(i32::MAX as u128) as i32;
    let req = AlterPartitionReassignmentsRequest::default()
        .with_timeout_ms(timeout_ms)
        .with_allow_replication_factor_change(true)
        .with_topics(
            by_topic
                .into_iter()
                .map(|(t, parts)| {
                    ReassignableTopic::default()
                        .with_name(TopicName(StrBytes::from_string(t.to_string())))
                        .with_partitions(parts)
                })
                .collect(),
        );
    let conn = cluster.any();
    if !conn.supports::<AlterPartitionReassignmentsRequest>() {
        return Err(ClientError::Kafka {
            what: "AlterPartitionReassignments".into(),
            code: 35,
            message: Some("the broker does not serve AlterPartitionReassignments".into()),
        }
        .into());
    }
    // The broker answers once the controller applied the change and its own metadata
    // shows it, which may take up to its request timeout.
    conn.set_timeout(ctx.timeout * 2)?;
    let resp = conn.call(&req, 1);
    conn.set_timeout(ctx.timeout)?;
    let resp = resp?;
    check(
        resp.error_code,
        || "AlterPartitionReassignments".into(),
        resp.error_message.as_deref(),
    )?;
    let mut rows: Vec<Outcome> = resp
        .responses
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| Outcome {
                topic: t.name.to_string(),
                partition: p.partition_index,
                error: error_name(p.error_code),
                message: p.error_message.as_ref().map(|m| m.to_string()),
            })
        })
        .collect();
    rows.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    Ok(rows)
}

fn outcome_table(rows: &[Outcome], ok: &str, out: &mut impl Write) -> anyhow::Result<()> {
    let mut t = Table::new(&["TOPIC", "PARTITION", "RESULT", "MESSAGE"]);
    for r in rows {
        let result = if r.error == "NONE" {
            ok.to_string()
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
    Ok(())
}

/// Prints the failed partitions to stderr; true when there is none (`benign` errors are
/// not failures).
fn report_failures(rows: &[Outcome], doing: &str, benign: &[&str]) -> bool {
    let failed: Vec<&Outcome> = rows
        .iter()
        .filter(|r| r.error != "NONE" && !benign.contains(&r.error.as_str()))
        .collect();
    for r in &failed {
        eprintln!(
            "sluicectl: error: {doing} {}-{}: {}{}",
            r.topic,
            r.partition,
            r.error,
            r.message
                .as_deref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default()
        );
    }
    failed.is_empty()
}

/// Each plan partition: in progress (listed by ListPartitionReassignments), complete (its
/// replicas are the target and all in sync) or mismatch.
fn verify(ctx: &Ctx, cluster: &mut Cluster, plan: &Plan) -> anyhow::Result<Vec<Verified>> {
    let mut wanted: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for p in &plan.partitions {
        wanted.entry(&p.topic).or_default().push(p.partition);
    }
    let timeout_ms = ctx.timeout.as_millis().min(i32::MAX as u128) as i32;
    let req = ListPartitionReassignmentsRequest::default()
        .with_timeout_ms(timeout_ms)
        .with_topics(Some(
            wanted
                .iter()
                .map(|(t, ps)| {
                    ListPartitionReassignmentsTopics::default()
                        .with_name(TopicName(StrBytes::from_string(t.to_string())))
                        .with_partition_indexes(ps.clone())
                })
                .collect(),
        ));
    let resp = cluster.any().call(&req, 0)?;
    check(
        resp.error_code,
        || "ListPartitionReassignments".into(),
        resp.error_message.as_deref(),
    )?;
    let ids = |v: &[BrokerId]| v.iter().map(|b| b.0).collect::<Vec<i32>>();
    let mut moving: BTreeMap<(String, i32), (Vec<i32>, Vec<i32>)> = BTreeMap::new();
    for t in &resp.topics {
        for p in &t.partitions {
            moving.insert(
                (t.name.to_string(), p.partition_index),
                (ids(&p.adding_replicas), ids(&p.removing_replicas)),
            );
        }
    }
    let topics: Vec<String> = wanted.keys().map(|t| t.to_string()).collect();
    let metas = cluster.metadata(Some(&topics))?;
    let mut rows = Vec::new();
    for p in &plan.partitions {
        let meta = metas
            .iter()
            .find(|t| t.name == p.topic)
            .and_then(|t| t.partitions.iter().find(|m| m.partition == p.partition));
        let (replicas, isr) = meta
            .map(|m| (m.replicas.clone(), m.isr.clone()))
            .unwrap_or_default();
        let (status, adding, removing) = match moving.get(&(p.topic.clone(), p.partition)) {
            Some((a, r)) => ("in_progress", a.clone(), r.clone()),
            None => {
                let mut in_sync = isr.clone();
                in_sync.sort_unstable();
                let mut target = p.replicas.clone();
                target.sort_unstable();
                if replicas == p.replicas && in_sync == target {
                    ("complete", vec![], vec![])
                } else {
                    ("mismatch", vec![], vec![])
                }
            }
        };
        rows.push(Verified {
            topic: p.topic.clone(),
            partition: p.partition,
            status,
            target: p.replicas.clone(),
            replicas,
            isr,
            adding,
            removing,
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposal_spreads_partitions_over_the_given_brokers_and_keeps_the_factor() {
        let current: Plan = serde_json::from_str(
            r#"{"version":1,"partitions":[
                {"topic":"t","partition":0,"replicas":[1,2,3],"log_dirs":["any","any","any"]},
                {"topic":"t","partition":1,"replicas":[2,3,1]},
                {"topic":"u","partition":0,"replicas":[1]}]}"#,
        )
        .unwrap();
        let plan = propose(&current, &[4, 2, 3, 3]).unwrap();
        let replicas: Vec<Vec<i32>> = plan.partitions.iter().map(|p| p.replicas.clone()).collect();
        assert_eq!(replicas, vec![vec![2, 3, 4], vec![3, 4, 2], vec![4]]);
        assert!(propose(&current, &[2, 3]).is_err());
        // Round trip in Kafka's format.
        let text = serde_json::to_string(&plan).unwrap();
        assert!(text.starts_with(
            r#"{"version":1,"partitions":[{"topic":"t","partition":0,"replicas":[2,3,4]}"#
        ));
    }
}
