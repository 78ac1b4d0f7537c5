//! ListOffsets (earliest, latest, by timestamp; only the leader answers) and
//! OffsetForLeaderEpoch (where the leader's log ends for an epoch, KIP-101/KIP-320).

use std::collections::HashMap;
use std::rc::Rc;

use kafka_protocol::messages as m;

use super::{group_by_shard, RequestError};
use crate::broker::partition_io::OffsetOut;
use crate::broker::protocol::error_code as ec;
use crate::broker::replicas::offset_for_leader_epoch_local;
use crate::broker::services::Services;
use crate::broker::shard::{ShardGone, ShardLocal};
use crate::security::acl::AclOperation;

pub async fn list_offsets(
    svc: &Rc<Services>,
    version: i16,
    req: m::ListOffsetsRequest,
) -> Result<m::ListOffsetsResponse, RequestError> {
    let image = svc.shard.image();
    let authz = super::acls::Authz::current(svc);
    // READ_COMMITTED: "latest" is the last stable offset.
    let read_committed = req.isolation_level == 1;
    let mut results: Vec<Option<OffsetOut>> = Vec::new();
    let mut work = Vec::new();
    let mut layout = Vec::new();
    for t in &req.topics {
        let name = t.name.as_str().to_string();
        let meta = image.topic(&name);
        let authorized = authz.allows_topic(AclOperation::Describe, &name);
        let mut parts = Vec::new();
        for p in &t.partitions {
            let pos = results.len();
            parts.push((p.partition_index, pos));
            match meta {
                _ if !authorized => results.push(Some(OffsetOut {
                    error_code: super::acls::TOPIC_AUTHORIZATION_FAILED,
                    timestamp: -1,
                    offset: -1,
                })),
                Some(m) if (0..m.partitions).contains(&p.partition_index) => {
                    results.push(None);
                    work.push((
                        pos,
                        name.clone(),
                        p.partition_index,
                        (p.timestamp, read_committed),
                    ));
                }
                _ => results.push(Some(OffsetOut {
                    error_code: ec::UNKNOWN_TOPIC_OR_PARTITION,
                    timestamp: -1,
                    offset: -1,
                })),
            }
        }
        layout.push((t.name.clone(), parts));
    }
    let groups = group_by_shard(&svc.shard, work);
    let calls = groups.into_iter().map(|(owner, (positions, items))| {
        let replicas = svc.replicas.clone();
        async move {
            (
                positions,
                replicas
                    .call(owner, move |s| s.list_offsets_local(items))
                    .await,
            )
        }
    });
    for (positions, outs) in futures_util::future::join_all(calls).await {
        for (pos, out) in positions.into_iter().zip(outs?) {
            results[pos] = Some(out);
        }
    }
    let mut resp = m::ListOffsetsResponse::default();
    for (name, parts) in layout {
        let topic = name.as_str().to_string();
        let mut t = m::list_offsets_response::ListOffsetsTopicResponse::default().with_name(name);
        for (index, pos) in parts {
            let epoch = image
                .cluster
                .partition(&topic, index)
                .map_or(0, |p| p.leader_epoch);
            let o = results[pos].take().unwrap_or(OffsetOut {
                error_code: ec::UNKNOWN_SERVER_ERROR,
                timestamp: -1,
                offset: -1,
            });
            t.partitions.push(
                m::list_offsets_response::ListOffsetsPartitionResponse::default()
                    .with_partition_index(index)
                    .with_error_code(o.error_code)
                    .with_timestamp(o.timestamp)
                    .with_offset(o.offset)
                    // leader_epoch exists from v4.
                    .with_leader_epoch(if version >= 4 && o.offset >= 0 {
                        epoch
                    } else {
                        -1
                    }),
            );
        }
        resp.topics.push(t);
    }
    Ok(resp)
}

/// Work for one owner shard: (topic, partition) positions in the response, and
/// (topic, partition, current epoch, requested epoch) items.
type EpochWork = (Vec<(usize, usize)>, Vec<(String, i32, i32, i32)>);

/// The OffsetForLeaderEpoch API (v2-4): where the leader's log ends for each requested epoch.
pub async fn offset_for_leader_epoch(
    svc: &Rc<Services>,
    req: m::OffsetForLeaderEpochRequest,
) -> Result<m::OffsetForLeaderEpochResponse, ShardGone> {
    let mut groups: HashMap<usize, EpochWork> = HashMap::new();
    let mut resp = m::OffsetForLeaderEpochResponse::default();
    let authz = super::acls::Authz::current(svc);
    // CLUSTER_ACTION on the cluster (a follower), else DESCRIBE on each topic.
    let cluster_action = authz.allows_cluster(AclOperation::ClusterAction);
    for (ti, t) in req.topics.iter().enumerate() {
        let name = t.topic.as_str().to_string();
        let authorized = cluster_action || authz.allows_topic(AclOperation::Describe, &name);
        let mut result = m::offset_for_leader_epoch_response::OffsetForLeaderTopicResult::default()
            .with_topic(t.topic.clone());
        for (pi, p) in t.partitions.iter().enumerate() {
            result.partitions.push(
                m::offset_for_leader_epoch_response::EpochEndOffset::default()
                    .with_partition(p.partition)
                    .with_error_code(if authorized {
                        ec::UNKNOWN_TOPIC_OR_PARTITION
                    } else {
                        super::acls::TOPIC_AUTHORIZATION_FAILED
                    })
                    .with_leader_epoch(-1)
                    .with_end_offset(-1),
            );
            let known = authorized
                && svc
                    .shard
                    .ctx
                    .metadata
                    .image()
                    .topic(&name)
                    .is_some_and(|m| (0..m.partitions).contains(&p.partition));
            if known {
                let g = groups
                    .entry(svc.shard.ctx.owner(&name, p.partition))
                    .or_default();
                g.0.push((ti, pi));
                g.1.push((
                    name.clone(),
                    p.partition,
                    p.current_leader_epoch,
                    p.leader_epoch,
                ));
            }
        }
        resp.topics.push(result);
    }
    let calls = groups.into_iter().map(|(owner, (positions, items))| {
        let replicas = svc.replicas.clone();
        async move {
            (
                positions,
                replicas
                    .call(owner, move |s| offset_for_leader_epoch_local(s, items))
                    .await,
            )
        }
    });
    for (positions, outs) in futures_util::future::join_all(calls).await {
        for ((ti, pi), (code, epoch, end)) in positions.into_iter().zip(outs?) {
            if let Some(e) = resp
                .topics
                .get_mut(ti)
                .and_then(|t| t.partitions.get_mut(pi))
            {
                e.error_code = code;
                e.leader_epoch = epoch;
                e.end_offset = end;
            }
        }
    }
    Ok(resp)
}
