//! `sluicectl groups`: list / describe / delete / reset-offsets, like kafka-consumer-groups.sh.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::Duration;

use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::{
    DeleteGroupsRequest, DescribeGroupsRequest, GroupId, ListGroupsRequest, OffsetCommitRequest,
    OffsetFetchRequest, TopicName,
};
use kafka_protocol::protocol::{Request, StrBytes};
use serde::Serialize;
use sluice::group::assignor::ConsumerAssignment;

use super::parse_time_ms;
use crate::client::ops::{EARLIEST, LATEST};
use crate::client::{check, ClientError, Cluster};
use crate::output::{write_json, Format, Table};
use crate::{Ctx, UsageError};

/// OffsetFetch versions up to 7 take one group (8+ batch groups).
const OFFSET_FETCH_CAP: i16 = 7;
/// OffsetCommit versions up to 8 address topics by name.
const OFFSET_COMMIT_CAP: i16 = 8;
/// Tries for calls that may meet a coordinator that is moving or loading.
const COORDINATOR_ATTEMPTS: u32 = 5;

/// The `groups` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum GroupsCmd {
    /// List the groups of every broker.
    List,
    /// State, members and their assignments, committed offsets and lag per partition.
    Describe {
        /// Group id.
        group: String,
    },
    /// Delete groups (they must have no members).
    Delete {
        /// Group ids.
        #[arg(required = true)]
        groups: Vec<String>,
    },
    /// Plan (and with --execute commit) new offsets for an inactive group.
    ResetOffsets(ResetArgs),
}

/// Arguments of `groups reset-offsets`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("spec").required(true).args(
    ["to_earliest", "to_latest", "to_offset", "shift_by", "to_datetime"])))]
pub struct ResetArgs {
    /// Group id.
    pub group: String,
    /// Topic, optionally with partitions: orders or orders:0,2.
    #[arg(long, required = true)]
    pub topic: String,
    /// Reset to the log start offset.
    #[arg(long)]
    pub to_earliest: bool,
    /// Reset to the log end offset.
    #[arg(long)]
    pub to_latest: bool,
    /// Reset to this offset (clamped to the log's range).
    #[arg(long)]
    pub to_offset: Option<i64>,
    /// Move the committed offset by N (negative: back), clamped to the log's range.
    #[arg(long, allow_hyphen_values = true)]
    pub shift_by: Option<i64>,
    /// Reset to the first offset at or after this time (RFC 3339 or epoch ms).
    #[arg(long)]
    pub to_datetime: Option<String>,
    /// Commit the plan (without it, only print it).
    #[arg(long)]
    pub execute: bool,
}

fn gid(g: &str) -> GroupId {
    GroupId(StrBytes::from_string(g.to_string()))
}

fn tname(t: &str) -> TopicName {
    TopicName(StrBytes::from_string(t.to_string()))
}

/// Is this a "coordinator moving or loading" code worth retrying?
fn coordinator_retriable(code: i16) -> bool {
    // COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR.
    matches!(code, 14..=16)
}

/// Sends `req` to the coordinator of `group`, finding it again when it moved.
fn call_coordinator<R: Request>(
    cluster: &mut Cluster,
    group: &str,
    req: &R,
    cap: i16,
    error_of: impl Fn(&R::Response) -> i16,
) -> Result<R::Response, ClientError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let last = attempt >= COORDINATOR_ATTEMPTS;
        let node = match cluster.coordinator(group) {
            Ok(n) => n,
            Err(e) if !last && e.kafka_code().is_some_and(coordinator_retriable) => {
                std::thread::sleep(Duration::from_millis(200 * u64::from(attempt)));
                continue;
            }
            Err(e) => return Err(e),
        };
        let resp = cluster.node(node)?.call(req, cap)?;
        if !last && coordinator_retriable(error_of(&resp)) {
            std::thread::sleep(Duration::from_millis(200 * u64::from(attempt)));
            continue;
        }
        return Ok(resp);
    }
}

/// The group's committed offsets of `topic` (partitions without a commit are left out).
pub fn committed_offsets(
    cluster: &mut Cluster,
    group: &str,
    topic: &str,
    partitions: &[i32],
) -> Result<BTreeMap<i32, i64>, ClientError> {
    let all = fetch_committed(
        cluster,
        group,
        Some(vec![OffsetFetchRequestTopic::default()
            .with_name(tname(topic))
            .with_partition_indexes(partitions.to_vec())]),
    )?;
    Ok(all
        .into_iter()
        .filter(|((t, _), _)| t == topic)
        .map(|((_, p), o)| (p, o))
        .collect())
}

/// OffsetFetch: (topic, partition) -> committed offset; `topics == None` asks for all.
fn fetch_committed(
    cluster: &mut Cluster,
    group: &str,
    topics: Option<Vec<OffsetFetchRequestTopic>>,
) -> Result<BTreeMap<(String, i32), i64>, ClientError> {
    let req = OffsetFetchRequest::default()
        .with_group_id(gid(group))
        .with_topics(topics);
    let resp = call_coordinator(cluster, group, &req, OFFSET_FETCH_CAP, |r| r.error_code)?;
    check(
        resp.error_code,
        || format!("fetching committed offsets of group '{group}'"),
        None,
    )?;
    let mut out = BTreeMap::new();
    for t in resp.topics {
        for p in t.partitions {
            check(
                p.error_code,
                || {
                    format!(
                        "committed offset of group '{group}' for {}-{}",
                        t.name.0, p.partition_index
                    )
                },
                None,
            )?;
            if p.committed_offset >= 0 {
                out.insert(
                    (t.name.0.to_string(), p.partition_index),
                    p.committed_offset,
                );
            }
        }
    }
    Ok(out)
}

/// OffsetCommit of `offsets` for `topic` as a client outside the group (generation -1).
pub fn commit_offsets(
    cluster: &mut Cluster,
    group: &str,
    topic: &str,
    offsets: &BTreeMap<i32, i64>,
) -> Result<(), ClientError> {
    if offsets.is_empty() {
        return Ok(());
    }
    let req = OffsetCommitRequest::default()
        .with_group_id(gid(group))
        .with_generation_id_or_member_epoch(-1)
        .with_member_id(StrBytes::from_static_str(""))
        .with_retention_time_ms(-1)
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(tname(topic))
            .with_partitions(
                offsets
                    .iter()
                    .map(|(&p, &o)| {
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(p)
                            .with_committed_offset(o)
                            .with_committed_leader_epoch(-1)
                    })
                    .collect(),
            )]);
    let resp = call_coordinator(cluster, group, &req, OFFSET_COMMIT_CAP, |r| {
        r.topics
            .iter()
            .flat_map(|t| t.partitions.iter())
            .map(|p| p.error_code)
            .find(|c| *c != 0)
            .unwrap_or(0)
    })?;
    for t in &resp.topics {
        for p in &t.partitions {
            check(
                p.error_code,
                || {
                    format!(
                        "committing offsets of group '{group}' for {}-{}",
                        t.name.0, p.partition_index
                    )
                },
                None,
            )?;
        }
    }
    Ok(())
}

/// A group member in `groups describe`.
#[derive(Debug, Serialize)]
struct MemberRow {
    member_id: String,
    group_instance_id: Option<String>,
    client_id: String,
    client_host: String,
    /// Decoded ConsumerProtocol assignment, topic -> partitions.
    assignment: BTreeMap<String, Vec<i32>>,
}

/// One partition in `groups describe`.
#[derive(Debug, Serialize)]
struct OffsetRow {
    topic: String,
    partition: i32,
    committed_offset: Option<i64>,
    log_end_offset: Option<i64>,
    lag: Option<i64>,
    member_id: Option<String>,
}

/// `groups describe` as a whole.
#[derive(Debug, Serialize)]
struct GroupDescription {
    group: String,
    state: String,
    protocol_type: String,
    protocol: String,
    members: Vec<MemberRow>,
    offsets: Vec<OffsetRow>,
}

struct Described {
    state: String,
    protocol_type: String,
    protocol: String,
    members: Vec<MemberRow>,
}

fn describe_group(cluster: &mut Cluster, group: &str) -> Result<Described, ClientError> {
    let req = DescribeGroupsRequest::default().with_groups(vec![gid(group)]);
    let resp = call_coordinator(cluster, group, &req, 6, |r| {
        r.groups.first().map_or(0, |g| g.error_code)
    })?;
    let g = resp.groups.into_iter().next().ok_or_else(|| {
        ClientError::Cluster(format!("DescribeGroups answered nothing for '{group}'"))
    })?;
    check(
        g.error_code,
        || format!("describing group '{group}'"),
        g.error_message.as_deref(),
    )?;
    let consumer = g.protocol_type.as_str() == "consumer";
    let members = g
        .members
        .iter()
        .map(|m| MemberRow {
            member_id: m.member_id.to_string(),
            group_instance_id: m.group_instance_id.as_ref().map(|s| s.to_string()),
            client_id: m.client_id.to_string(),
            client_host: m.client_host.to_string(),
            // Only the "consumer" protocol's assignment has a known shape; an undecodable one
            // (a new client version, or another protocol) shows as empty rather than failing.
            assignment: if consumer && !m.member_assignment.is_empty() {
                ConsumerAssignment::decode(&m.member_assignment)
                    .map(|a| a.partitions)
                    .unwrap_or_default()
            } else {
                BTreeMap::new()
            },
        })
        .collect();
    Ok(Described {
        state: g.group_state.to_string(),
        protocol_type: g.protocol_type.to_string(),
        protocol: g.protocol_data.to_string(),
        members,
    })
}

/// Log end offsets for (topic, partitions); topics that vanished are skipped.
fn log_ends(
    cluster: &mut Cluster,
    parts: &BTreeSet<(String, i32)>,
) -> Result<BTreeMap<(String, i32), i64>, ClientError> {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (t, p) in parts {
        by_topic.entry(t).or_default().push(*p);
    }
    let mut out = BTreeMap::new();
    for (t, ps) in by_topic {
        let meta = match cluster.topic(t) {
            Ok(m) => m,
            Err(e) if e.kafka_code() == Some(3) => continue,
            Err(e) => return Err(e),
        };
        let ps: Vec<i32> = ps
            .into_iter()
            .filter(|p| {
                meta.partitions
                    .iter()
                    .any(|m| m.partition == *p && m.leader >= 0)
            })
            .collect();
        for (p, o) in cluster.list_offsets(&meta, &ps, LATEST)? {
            out.insert((t.to_string(), p), o);
        }
    }
    Ok(out)
}

fn list(ctx: &Ctx, cluster: &mut Cluster, out: &mut impl Write) -> anyhow::Result<()> {
    // Each broker lists the groups it coordinates; ask all of them, as Kafka's admin does.
    let nodes: Vec<i32> = cluster.brokers().map(|b| b.node_id).collect();
    let mut groups: BTreeMap<String, (String, String)> = BTreeMap::new();
    for n in nodes {
        let resp = cluster.node(n)?.call(&ListGroupsRequest::default(), 5)?;
        check(
            resp.error_code,
            || format!("listing groups on broker {n}"),
            None,
        )?;
        for g in resp.groups {
            groups.insert(
                g.group_id.0.to_string(),
                (g.protocol_type.to_string(), g.group_state.to_string()),
            );
        }
    }
    match ctx.format {
        Format::Json => write_json(
            out,
            &groups
                .iter()
                .map(|(g, (pt, st))| {
                    serde_json::json!({ "group": g, "protocol_type": pt, "state": st })
                })
                .collect::<Vec<_>>(),
        )?,
        Format::Table => {
            let mut t = Table::new(&["GROUP", "STATE", "PROTOCOL-TYPE"]);
            for (g, (pt, st)) in &groups {
                t.row(vec![
                    g.clone(),
                    if st.is_empty() { "-".into() } else { st.clone() },
                    pt.clone(),
                ]);
            }
            t.write(out)?;
        }
    }
    Ok(())
}

fn describe(
    ctx: &Ctx,
    cluster: &mut Cluster,
    group: &str,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let d = describe_group(cluster, group)?;
    if d.state == "Dead" {
        return Err(ClientError::Kafka {
            what: format!("group '{group}'"),
            code: 69,
            message: Some("the group does not exist".into()),
        }
        .into());
    }
    let committed = fetch_committed(cluster, group, None)?;
    let mut owner: BTreeMap<(String, i32), String> = BTreeMap::new();
    for m in &d.members {
        for (t, ps) in &m.assignment {
            for p in ps {
                owner.insert((t.clone(), *p), m.member_id.clone());
            }
        }
    }
    let parts: BTreeSet<(String, i32)> = committed.keys().chain(owner.keys()).cloned().collect();
    let ends = log_ends(cluster, &parts)?;
    let offsets: Vec<OffsetRow> = parts
        .iter()
        .map(|k| {
            let c = committed.get(k).copied();
            let e = ends.get(k).copied();
            OffsetRow {
                topic: k.0.clone(),
                partition: k.1,
                committed_offset: c,
                log_end_offset: e,
                lag: match (c, e) {
                    (Some(c), Some(e)) => Some((e - c).max(0)),
                    _ => None,
                },
                member_id: owner.get(k).cloned(),
            }
        })
        .collect();
    let desc = GroupDescription {
        group: group.to_string(),
        state: d.state,
        protocol_type: d.protocol_type,
        protocol: d.protocol,
        members: d.members,
        offsets,
    };
    match ctx.format {
        Format::Json => write_json(out, &desc)?,
        Format::Table => {
            let assignor = if desc.protocol.is_empty() {
                String::new()
            } else {
                format!(", assignor '{}'", desc.protocol)
            };
            writeln!(
                out,
                "Group {} is {} (protocol type '{}'{assignor}), {} members.",
                desc.group,
                desc.state,
                desc.protocol_type,
                desc.members.len()
            )?;
            writeln!(out)?;
            let mut t = Table::new(&[
                "TOPIC",
                "PARTITION",
                "CURRENT-OFFSET",
                "LOG-END-OFFSET",
                "LAG",
                "CONSUMER-ID",
                "HOST",
                "CLIENT-ID",
            ]);
            let dash = |o: Option<i64>| o.map_or("-".to_string(), |v| v.to_string());
            for o in &desc.offsets {
                let m = o
                    .member_id
                    .as_ref()
                    .and_then(|id| desc.members.iter().find(|m| &m.member_id == id));
                t.row(vec![
                    o.topic.clone(),
                    o.partition.to_string(),
                    dash(o.committed_offset),
                    dash(o.log_end_offset),
                    dash(o.lag),
                    m.map_or("-".into(), |m| m.member_id.clone()),
                    m.map_or("-".into(), |m| m.client_host.clone()),
                    m.map_or("-".into(), |m| m.client_id.clone()),
                ]);
            }
            t.write(out)?;
            let idle: Vec<&MemberRow> = desc
                .members
                .iter()
                .filter(|m| m.assignment.is_empty())
                .collect();
            if !idle.is_empty() {
                writeln!(out)?;
                for m in idle {
                    writeln!(
                        out,
                        "Member {} ({} at {}) has no partitions.",
                        m.member_id, m.client_id, m.client_host
                    )?;
                }
            }
        }
    }
    Ok(())
}

fn delete(
    ctx: &Ctx,
    cluster: &mut Cluster,
    groups: &[String],
    out: &mut impl Write,
) -> anyhow::Result<()> {
    for g in groups {
        let req = DeleteGroupsRequest::default().with_groups_names(vec![gid(g)]);
        let resp = call_coordinator(cluster, g, &req, 2, |r| {
            r.results.first().map_or(0, |x| x.error_code)
        })?;
        for r in &resp.results {
            check(r.error_code, || format!("deleting group '{g}'"), None)?;
        }
    }
    match ctx.format {
        Format::Json => write_json(out, &serde_json::json!({ "deleted": groups }))?,
        Format::Table => {
            for g in groups {
                writeln!(out, "Deleted group {g}.")?;
            }
        }
    }
    Ok(())
}

/// One line of a reset plan.
#[derive(Debug, Serialize)]
struct PlanRow {
    topic: String,
    partition: i32,
    current_offset: Option<i64>,
    new_offset: i64,
}

fn parse_topic_spec(spec: &str) -> Result<(String, Option<Vec<i32>>), UsageError> {
    match spec.split_once(':') {
        None => Ok((spec.to_string(), None)),
        Some((t, ps)) => {
            let parts = ps
                .split(',')
                .map(|p| p.trim().parse::<i32>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| {
                    UsageError(format!(
                        "--topic '{spec}': partitions must be numbers, as in orders:0,1"
                    ))
                })?;
            Ok((t.to_string(), Some(parts)))
        }
    }
}

fn reset_offsets(
    ctx: &Ctx,
    cluster: &mut Cluster,
    a: &ResetArgs,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let (topic, only) = parse_topic_spec(&a.topic)?;
    let datetime = a.to_datetime.as_deref().map(parse_time_ms).transpose()?;
    let d = describe_group(cluster, &a.group)?;
    // Kafka resets only inactive groups: a live member would overwrite the new offsets.
    if d.state != "Empty" && d.state != "Dead" {
        return Err(ClientError::Cluster(format!(
            "group '{}' is {} with {} members; offsets can be reset only when the group is \
             inactive (Empty): stop its consumers first",
            a.group,
            d.state,
            d.members.len()
        ))
        .into());
    }
    let meta = cluster.topic(&topic)?;
    let partitions: Vec<i32> = match only {
        Some(ps) => {
            for &p in &ps {
                Cluster::leader_of(&meta, p)?;
            }
            ps
        }
        None => meta.partitions.iter().map(|p| p.partition).collect(),
    };
    let current = committed_offsets(cluster, &a.group, &topic, &partitions)?;
    let earliest = cluster.list_offsets(&meta, &partitions, EARLIEST)?;
    let latest = cluster.list_offsets(&meta, &partitions, LATEST)?;
    let at_time = match datetime {
        Some(ts) => cluster.list_offsets(&meta, &partitions, ts)?,
        None => BTreeMap::new(),
    };
    let mut plan = Vec::with_capacity(partitions.len());
    for &p in &partitions {
        let lo = earliest.get(&p).copied().unwrap_or(0);
        let hi = latest.get(&p).copied().unwrap_or(lo);
        let cur = current.get(&p).copied();
        let target = if a.to_earliest {
            lo
        } else if a.to_latest {
            hi
        } else if let Some(o) = a.to_offset {
            o
        } else if let Some(s) = a.shift_by {
            // A partition without a commit shifts from where a new consumer would start.
            cur.unwrap_or(hi).saturating_add(s)
        } else {
            // No record at or after the time: the log end, as Kafka does.
            at_time.get(&p).copied().filter(|o| *o >= 0).unwrap_or(hi)
        };
        plan.push(PlanRow {
            topic: topic.clone(),
            partition: p,
            current_offset: cur,
            new_offset: target.clamp(lo, hi.max(lo)),
        });
    }
    if a.execute {
        let offsets = plan.iter().map(|r| (r.partition, r.new_offset)).collect();
        commit_offsets(cluster, &a.group, &topic, &offsets)?;
    }
    match ctx.format {
        Format::Json => write_json(
            out,
            &serde_json::json!({ "group": a.group, "executed": a.execute, "plan": plan }),
        )?,
        Format::Table => {
            let mut t = Table::new(&[
                "GROUP",
                "TOPIC",
                "PARTITION",
                "CURRENT-OFFSET",
                "NEW-OFFSET",
            ]);
            for r in &plan {
                t.row(vec![
                    a.group.clone(),
                    r.topic.clone(),
                    r.partition.to_string(),
                    r.current_offset.map_or("-".into(), |o| o.to_string()),
                    r.new_offset.to_string(),
                ]);
            }
            t.write(out)?;
            if a.execute {
                writeln!(out, "\nCommitted the new offsets.")?;
            } else {
                writeln!(
                    out,
                    "\nDry run: nothing committed. Add --execute to commit these offsets."
                )?;
            }
        }
    }
    Ok(())
}

/// Runs a `groups` subcommand.
pub fn run(ctx: &Ctx, cmd: GroupsCmd, out: &mut impl Write) -> anyhow::Result<()> {
    let mut cluster = ctx.cluster()?;
    match cmd {
        GroupsCmd::List => list(ctx, &mut cluster, out),
        GroupsCmd::Describe { group } => describe(ctx, &mut cluster, &group, out),
        GroupsCmd::Delete { groups } => delete(ctx, &mut cluster, &groups, out),
        GroupsCmd::ResetOffsets(a) => reset_offsets(ctx, &mut cluster, &a, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_specs() {
        assert_eq!(parse_topic_spec("t").unwrap(), ("t".into(), None));
        assert_eq!(
            parse_topic_spec("t:0,2").unwrap(),
            ("t".into(), Some(vec![0, 2]))
        );
        assert!(parse_topic_spec("t:x").is_err());
    }
}
