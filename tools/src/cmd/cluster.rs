//! `sluicectl cluster describe`: brokers, controller, cluster id, metadata quorum;
//! `sluicectl cluster quorum`: the metadata quorum alone (like
//! `kafka-metadata-quorum.sh describe --status --replication`).

use std::io::Write;

use kafka_protocol::messages::describe_quorum_request::{PartitionData, TopicData};
use kafka_protocol::messages::{DescribeClusterRequest, DescribeQuorumRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use serde::Serialize;

use crate::client::cluster::BrokerMeta;
use crate::client::{check, Cluster};
use crate::output::{write_json, Format, Table};
use crate::Ctx;

/// The `cluster` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ClusterCmd {
    /// Brokers, controller, cluster id, and the metadata quorum when the broker serves it.
    Describe,
    /// The metadata quorum (DescribeQuorum): leader, epoch, high watermark, each voter's
    /// log end offset and lag.
    Quorum,
}

/// A voter or observer of the metadata quorum.
#[derive(Debug, Serialize)]
struct QuorumReplica {
    replica_id: i32,
    log_end_offset: i64,
    last_fetch_timestamp: i64,
    last_caught_up_timestamp: i64,
}

/// DescribeQuorum of `__cluster_metadata`-0.
#[derive(Debug, Serialize)]
struct Quorum {
    leader_id: i32,
    leader_epoch: i32,
    high_watermark: i64,
    voters: Vec<QuorumReplica>,
    observers: Vec<QuorumReplica>,
}

/// The whole answer.
#[derive(Debug, Serialize)]
struct ClusterInfo {
    cluster_id: Option<String>,
    controller_id: i32,
    brokers: Vec<BrokerMeta>,
    /// `None` when the broker does not advertise DescribeQuorum.
    quorum: Option<Quorum>,
}

fn describe_quorum(cluster: &mut Cluster) -> anyhow::Result<Option<Quorum>> {
    let conn = cluster.any();
    if !conn.supports::<DescribeQuorumRequest>() {
        return Ok(None);
    }
    let req = DescribeQuorumRequest::default().with_topics(vec![TopicData::default()
        .with_topic_name(TopicName(StrBytes::from_static_str("__cluster_metadata")))
        .with_partitions(vec![PartitionData::default().with_partition_index(0)])]);
    let resp = conn.call(&req, 2)?;
    // UNSUPPORTED_VERSION: a single-node broker, which has no metadata quorum.
    if resp.error_code == 35 {
        return Ok(None);
    }
    check(
        resp.error_code,
        || "DescribeQuorum".into(),
        resp.error_message.as_deref(),
    )?;
    let Some(p) = resp.topics.first().and_then(|t| t.partitions.first()) else {
        return Ok(None);
    };
    check(
        p.error_code,
        || "DescribeQuorum of __cluster_metadata-0".into(),
        p.error_message.as_deref(),
    )?;
    let replicas = |v: &[kafka_protocol::messages::describe_quorum_response::ReplicaState]| {
        v.iter()
            .map(|r| QuorumReplica {
                replica_id: r.replica_id.0,
                log_end_offset: r.log_end_offset,
                last_fetch_timestamp: r.last_fetch_timestamp,
                last_caught_up_timestamp: r.last_caught_up_timestamp,
            })
            .collect()
    };
    Ok(Some(Quorum {
        leader_id: p.leader_id.0,
        leader_epoch: p.leader_epoch,
        high_watermark: p.high_watermark,
        voters: replicas(&p.current_voters),
        observers: replicas(&p.observers),
    }))
}

/// The quorum as a header line and a table of its replicas.
fn write_quorum(out: &mut impl Write, q: &Quorum) -> std::io::Result<()> {
    writeln!(
        out,
        "Metadata quorum: leader {} epoch {} high watermark {}",
        q.leader_id, q.leader_epoch, q.high_watermark
    )?;
    let leader_end = q
        .voters
        .iter()
        .find(|r| r.replica_id == q.leader_id)
        .map_or(q.high_watermark, |r| r.log_end_offset);
    let mut t = Table::new(&["REPLICA", "ROLE", "LOG-END", "LAG", "LAST-CAUGHT-UP-MS"]);
    for (role, list) in [("voter", &q.voters), ("observer", &q.observers)] {
        for r in list.iter() {
            t.row(vec![
                r.replica_id.to_string(),
                if r.replica_id == q.leader_id {
                    "leader".into()
                } else {
                    role.to_string()
                },
                r.log_end_offset.to_string(),
                (leader_end - r.log_end_offset).max(0).to_string(),
                r.last_caught_up_timestamp.to_string(),
            ]);
        }
    }
    t.write(out)
}

/// `cluster quorum`: the metadata quorum, or an error when the broker has none to describe.
fn quorum(ctx: &Ctx, out: &mut impl Write) -> anyhow::Result<()> {
    let mut cluster = ctx.cluster()?;
    let Some(q) = describe_quorum(&mut cluster)? else {
        return Err(crate::client::ClientError::Kafka {
            what: "DescribeQuorum".into(),
            code: 35,
            message: Some("the broker does not describe a metadata quorum".into()),
        }
        .into());
    };
    match ctx.format {
        Format::Json => write_json(out, &q)?,
        Format::Table => write_quorum(out, &q)?,
    }
    Ok(())
}

/// Runs a `cluster` subcommand.
pub fn run(ctx: &Ctx, cmd: ClusterCmd, out: &mut impl Write) -> anyhow::Result<()> {
    if let ClusterCmd::Quorum = cmd {
        return quorum(ctx, out);
    }
    let mut cluster = ctx.cluster()?;
    let mut info = ClusterInfo {
        cluster_id: cluster.cluster_id().map(str::to_owned),
        controller_id: cluster.controller_id(),
        brokers: cluster.brokers().cloned().collect(),
        quorum: None,
    };
    // DescribeCluster is the admin API for this; Metadata (already read) is the fallback.
    if cluster.any().supports::<DescribeClusterRequest>() {
        let resp = cluster.any().call(&DescribeClusterRequest::default(), 1)?;
        check(
            resp.error_code,
            || "DescribeCluster".into(),
            resp.error_message.as_deref(),
        )?;
        info.cluster_id = Some(resp.cluster_id.to_string());
        info.controller_id = resp.controller_id.0;
        info.brokers = resp
            .brokers
            .iter()
            .map(|b| BrokerMeta {
                node_id: b.broker_id.0,
                host: b.host.to_string(),
                port: b.port,
                rack: b.rack.as_ref().map(|r| r.to_string()),
            })
            .collect();
        info.brokers.sort_by_key(|b| b.node_id);
    }
    info.quorum = describe_quorum(&mut cluster)?;
    match ctx.format {
        Format::Json => write_json(out, &info)?,
        Format::Table => {
            writeln!(
                out,
                "Cluster id: {}",
                info.cluster_id.as_deref().unwrap_or("(none)")
            )?;
            writeln!(out, "Controller: {}", info.controller_id)?;
            writeln!(out)?;
            let mut t = Table::new(&["BROKER", "HOST", "PORT", "RACK"]);
            for b in &info.brokers {
                t.row(vec![
                    b.node_id.to_string(),
                    b.host.clone(),
                    b.port.to_string(),
                    b.rack.clone().unwrap_or_else(|| "-".into()),
                ]);
            }
            t.write(out)?;
            writeln!(out)?;
            match &info.quorum {
                None => writeln!(
                    out,
                    "Metadata quorum: not available (a single-node broker, or one without DescribeQuorum)."
                )?,
                Some(q) => write_quorum(out, q)?,
            }
        }
    }
    Ok(())
}
