//! FindCoordinator, the ten group APIs of Kafka's classic protocol and TxnOffsetCommit: decoded here, answered
//! by the group service on the shard that coordinates the group (`broker::groups`).

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use kafka_protocol::messages::{self as m, BrokerId, RequestHeader};
use kafka_protocol::protocol::StrBytes;

use crate::broker::groups::{coordinator_shard, submit, submit_local, Groups};
use crate::broker::protocol::error_code as ec;
use crate::broker::request_context::{listener_name, CONNECTION};
use crate::broker::shard::{ShardGone, ShardLocal};
use crate::broker::transactions::Transactions;
use crate::group::api::{
    codes, DescribedGroup, ListGroupsResult, OffsetFetch, OffsetFetchGroupResult,
};
use crate::group::{offsets_partition_for, wire, GroupRequest, GroupResponse, OFFSETS_TOPIC};
use crate::txn::{txn_partition_for, TXN_TOPIC};

fn client_id(header: &RequestHeader) -> String {
    header
        .client_id
        .as_ref()
        .map(|c| c.as_str().to_string())
        .unwrap_or_default()
}

fn client_host() -> String {
    CONNECTION
        .try_with(|c| format!("/{}", c.peer.ip()))
        .unwrap_or_else(|_| "/".to_string())
}

/// A response of the wrong kind means a coordinator bug; answer with a generic error rather
/// than panic on a client's request.
fn mismatch(what: &str) {
    tracing::error!("group coordinator answered {what} with a different response kind");
}

/// Where FindCoordinator sends a client: (error, message, node id, host, port).
type CoordinatorAnswer = (i16, Option<String>, i32, String, i32);

fn no_coordinator(code: i16, msg: &str) -> CoordinatorAnswer {
    (code, Some(msg.to_string()), -1, String::new(), -1)
}

/// The coordinator of `group_id` is the current leader of its
/// `__consumer_offsets` partition. COORDINATOR_NOT_AVAILABLE while the topic is being
/// created (this call starts the creation) or the partition has no live leader.
fn cluster_coordinator(
    gs: &Rc<Groups>,
    node: &Arc<crate::broker::cluster::ClusterNode>,
    group_id: &str,
) -> CoordinatorAnswer {
    let image = node.cluster_image();
    let n = gs.offsets_partitions();
    if image.topic(OFFSETS_TOPIC).is_none() {
        gs.create_offsets_topic(node);
        return no_coordinator(
            ec::COORDINATOR_NOT_AVAILABLE,
            "the offsets topic is being created",
        );
    }
    let p = offsets_partition_for(group_id, n);
    leader_endpoint(&gs.shard.ctx.config, &image, OFFSETS_TOPIC, p).unwrap_or_else(|| {
        no_coordinator(
            ec::COORDINATOR_NOT_AVAILABLE,
            "the group's offsets partition has no live leader",
        )
    })
}

/// The coordinator of `transactional_id` is the current leader of its
/// `__transaction_state` partition (created on first use, as Kafka does).
fn txn_coordinator(
    ts: &Rc<Transactions>,
    node: &Arc<crate::broker::cluster::ClusterNode>,
    transactional_id: &str,
) -> CoordinatorAnswer {
    let image = node.cluster_image();
    if transactional_id.is_empty() {
        return no_coordinator(ec::INVALID_REQUEST, "empty transactional id");
    }
    if image.topic(TXN_TOPIC).is_none() {
        ts.create_topic(node);
        return no_coordinator(
            ec::COORDINATOR_NOT_AVAILABLE,
            "the transaction state topic is being created",
        );
    }
    let p = txn_partition_for(transactional_id, ts.partitions());
    leader_endpoint(&ts.shard.ctx.config, &image, TXN_TOPIC, p).unwrap_or_else(|| {
        no_coordinator(
            ec::COORDINATOR_NOT_AVAILABLE,
            "the transactional id's state partition has no live leader",
        )
    })
}

/// The endpoint, on this connection's listener, of the live leader of `topic`-`p`.
fn leader_endpoint(
    cfg: &crate::broker::config::BrokerConfig,
    image: &crate::controller::MetadataImage,
    topic: &str,
    p: i32,
) -> Option<CoordinatorAnswer> {
    let leader = image.partition(topic, p).and_then(|p| p.leader)?;
    let b = image.broker(leader).filter(|b| !b.fenced)?;
    let ep = b.endpoint(&listener_name(cfg))?;
    Some((
        ec::NONE,
        None,
        b.broker_id,
        ep.host.clone(),
        i32::from(ep.port),
    ))
}

/// FindCoordinator v0-6. A group's coordinator is the leader of its `__consumer_offsets`
/// partition, a transactional id's the leader of its `__transaction_state` partition (on a
/// cluster of one, this broker).
pub fn find_coordinator(
    gs: &Rc<Groups>,
    ts: &Rc<Transactions>,
    version: i16,
    req: m::FindCoordinatorRequest,
) -> m::FindCoordinatorResponse {
    let node = gs.shard.ctx.metadata.cluster_node();
    let answer = |key_type: i8, key: &str| -> CoordinatorAnswer {
        match key_type {
            0 => cluster_coordinator(gs, node, key),
            1 => txn_coordinator(ts, node, key),
            _ => no_coordinator(ec::INVALID_REQUEST, "unknown coordinator key type"),
        }
    };
    let str_bytes = |s: &str| StrBytes::from_string(s.to_string());
    let resp = m::FindCoordinatorResponse::default();
    if version >= 4 {
        let coordinators = req
            .coordinator_keys
            .into_iter()
            .map(|key| {
                let (code, msg, node, host, port) = answer(req.key_type, key.as_str());
                m::find_coordinator_response::Coordinator::default()
                    .with_key(key)
                    .with_node_id(BrokerId(node))
                    .with_host(str_bytes(&host))
                    .with_port(port)
                    .with_error_code(code)
                    .with_error_message(msg.as_deref().map(str_bytes))
            })
            .collect();
        resp.with_coordinators(coordinators)
    } else {
        let (code, msg, node, host, port) = answer(req.key_type, req.key.as_str());
        let resp = resp
            .with_error_code(code)
            .with_node_id(BrokerId(node))
            .with_host(str_bytes(&host))
            .with_port(port);
        if version >= 1 {
            resp.with_error_message(msg.as_deref().map(str_bytes))
        } else {
            resp
        }
    }
}

/// JoinGroup.
pub async fn join_group(
    gs: &Rc<Groups>,
    version: i16,
    header: &RequestHeader,
    req: m::JoinGroupRequest,
) -> Result<m::JoinGroupResponse, ShardGone> {
    let r = wire::join_group_request(&req, version, &client_id(header), &client_host());
    let group = r.group_id.clone();
    let member = r.member_id.clone();
    let result = match submit(gs, &group, GroupRequest::Join(r)).await? {
        Ok(GroupResponse::Join(j)) => j,
        Err(code) => crate::group::api::JoinGroupResult::error(code, member),
        Ok(_) => {
            mismatch("JoinGroup");
            crate::group::api::JoinGroupResult::error(codes::UNKNOWN_SERVER_ERROR, member)
        }
    };
    Ok(wire::join_group_response(&result, version))
}

/// SyncGroup.
pub async fn sync_group(
    gs: &Rc<Groups>,
    version: i16,
    req: m::SyncGroupRequest,
) -> Result<m::SyncGroupResponse, ShardGone> {
    let r = wire::sync_group_request(&req, version);
    let group = r.group_id.clone();
    let result = match submit(gs, &group, GroupRequest::Sync(r)).await? {
        Ok(GroupResponse::Sync(s)) => s,
        Err(code) => crate::group::api::SyncGroupResult::error(code),
        Ok(_) => {
            mismatch("SyncGroup");
            crate::group::api::SyncGroupResult::error(codes::UNKNOWN_SERVER_ERROR)
        }
    };
    Ok(wire::sync_group_response(&result, version))
}

/// Heartbeat.
pub async fn heartbeat(
    gs: &Rc<Groups>,
    version: i16,
    req: m::HeartbeatRequest,
) -> Result<m::HeartbeatResponse, ShardGone> {
    let r = wire::heartbeat_request(&req, version);
    let group = r.group_id.clone();
    let code = match submit(gs, &group, GroupRequest::Heartbeat(r)).await? {
        Ok(GroupResponse::Heartbeat(code)) | Err(code) => code,
        Ok(_) => {
            mismatch("Heartbeat");
            codes::UNKNOWN_SERVER_ERROR
        }
    };
    Ok(wire::heartbeat_response(code))
}

/// LeaveGroup.
pub async fn leave_group(
    gs: &Rc<Groups>,
    version: i16,
    req: m::LeaveGroupRequest,
) -> Result<m::LeaveGroupResponse, ShardGone> {
    let r = wire::leave_group_request(&req, version);
    let group = r.group_id.clone();
    let result = match submit(gs, &group, GroupRequest::Leave(r)).await? {
        Ok(GroupResponse::Leave(l)) => l,
        other => {
            let code = match other {
                Err(code) => code,
                Ok(_) => {
                    mismatch("LeaveGroup");
                    codes::UNKNOWN_SERVER_ERROR
                }
            };
            crate::group::api::LeaveGroupResult {
                error: code,
                members: Vec::new(),
            }
        }
    };
    Ok(wire::leave_group_response(&result, version))
}

/// OffsetCommit.
pub async fn offset_commit(
    gs: &Rc<Groups>,
    version: i16,
    req: m::OffsetCommitRequest,
) -> Result<m::OffsetCommitResponse, ShardGone> {
    let r = wire::offset_commit_request(&req, version);
    let group = r.group_id.clone();
    let fallback: Vec<(String, i32, i16)> = r
        .partitions
        .iter()
        .map(|p| (p.topic.clone(), p.partition, codes::UNKNOWN_SERVER_ERROR))
        .collect();
    let result = match submit(gs, &group, GroupRequest::OffsetCommit(r)).await? {
        Ok(GroupResponse::OffsetCommit(v)) => v,
        Err(code) => fallback.into_iter().map(|(t, p, _)| (t, p, code)).collect(),
        Ok(_) => {
            mismatch("OffsetCommit");
            fallback
        }
    };
    Ok(wire::offset_commit_response(&result))
}

/// TxnOffsetCommit (v0-3): the group's coordinator writes the offsets as a transactional
/// batch of the producer; they stay pending until the transaction's marker.
pub async fn txn_offset_commit(
    gs: &Rc<Groups>,
    version: i16,
    req: m::TxnOffsetCommitRequest,
) -> Result<m::TxnOffsetCommitResponse, ShardGone> {
    let r = wire::txn_offset_commit_request(&req, version);
    let group = r.group_id.clone();
    let fallback: Vec<(String, i32, i16)> = r
        .partitions
        .iter()
        .map(|p| (p.topic.clone(), p.partition, codes::UNKNOWN_SERVER_ERROR))
        .collect();
    let result = match submit(gs, &group, GroupRequest::TxnOffsetCommit(r)).await? {
        Ok(GroupResponse::TxnOffsetCommit(v)) => v,
        Err(code) => fallback.into_iter().map(|(t, p, _)| (t, p, code)).collect(),
        Ok(_) => {
            mismatch("TxnOffsetCommit");
            fallback
        }
    };
    Ok(wire::txn_offset_commit_response(&result))
}

/// OffsetFetch, including v8+ with several groups that may live on different shards.
pub async fn offset_fetch(
    gs: &Rc<Groups>,
    version: i16,
    req: m::OffsetFetchRequest,
) -> Result<m::OffsetFetchResponse, ShardGone> {
    let request = wire::offset_fetch_request(&req, version);
    // Split by coordinator shard, keeping each group's position.
    let mut by_shard: HashMap<usize, (Vec<usize>, OffsetFetch)> = HashMap::new();
    for (pos, g) in request.groups.iter().enumerate() {
        let owner = coordinator_shard(gs, &g.group_id);
        let e = by_shard.entry(owner).or_insert_with(|| {
            (
                Vec::new(),
                OffsetFetch {
                    groups: Vec::new(),
                    require_stable: request.require_stable,
                },
            )
        });
        e.0.push(pos);
        e.1.groups.push(g.clone());
    }
    let mut results: Vec<Option<OffsetFetchGroupResult>> = vec![None; request.groups.len()];
    let calls = by_shard.into_iter().map(|(owner, (positions, part))| {
        let gs = gs.clone();
        async move {
            let r = gs
                .call(owner, move |s| {
                    submit_local(s, GroupRequest::OffsetFetch(part))
                })
                .await;
            (positions, r)
        }
    });
    for (positions, r) in futures_util::future::join_all(calls).await {
        match r? {
            Ok(GroupResponse::OffsetFetch(groups)) => {
                for (pos, g) in positions.into_iter().zip(groups) {
                    results[pos] = Some(g);
                }
            }
            other => {
                let code = match other {
                    Err(code) => code,
                    Ok(_) => {
                        mismatch("OffsetFetch");
                        codes::UNKNOWN_SERVER_ERROR
                    }
                };
                for pos in positions {
                    results[pos] = Some(OffsetFetchGroupResult {
                        group_id: request.groups[pos].group_id.clone(),
                        error: code,
                        offsets: Vec::new(),
                    });
                }
            }
        }
    }
    let results: Vec<OffsetFetchGroupResult> = results
        .into_iter()
        .zip(&request.groups)
        .map(|(r, g)| {
            r.unwrap_or_else(|| OffsetFetchGroupResult {
                group_id: g.group_id.clone(),
                error: codes::UNKNOWN_SERVER_ERROR,
                offsets: Vec::new(),
            })
        })
        .collect();
    Ok(wire::offset_fetch_response(&request, &results, version))
}

/// ListGroups: every shard's groups.
pub async fn list_groups(
    gs: &Rc<Groups>,
    version: i16,
    req: m::ListGroupsRequest,
) -> Result<m::ListGroupsResponse, ShardGone> {
    let r = wire::list_groups_request(&req, version);
    let calls = (0..gs.shard.ctx.shard_count()).map(|s| {
        let r = r.clone();
        gs.call(s, move |sh| submit_local(sh, GroupRequest::ListGroups(r)))
    });
    let mut merged = ListGroupsResult {
        error: codes::NONE,
        groups: Vec::new(),
    };
    for r in futures_util::future::join_all(calls).await {
        match r? {
            Ok(GroupResponse::ListGroups(l)) => {
                if merged.error == codes::NONE {
                    merged.error = l.error;
                }
                merged.groups.extend(l.groups);
            }
            Err(code) => {
                if merged.error == codes::NONE {
                    merged.error = code;
                }
            }
            Ok(_) => mismatch("ListGroups"),
        }
    }
    merged.groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
    Ok(wire::list_groups_response(&merged, version))
}

/// Splits group ids by coordinator shard, runs `make(ids)` on each, and puts the per-group
/// answers back in request order.
async fn per_group<T: Send + 'static>(
    gs: &Rc<Groups>,
    ids: Vec<String>,
    make: fn(Vec<String>) -> GroupRequest,
    extract: fn(GroupResponse) -> Option<Vec<T>>,
    fail: impl Fn(&str, i16) -> T,
) -> Result<Vec<T>, ShardGone> {
    let mut by_shard: HashMap<usize, (Vec<usize>, Vec<String>)> = HashMap::new();
    for (pos, id) in ids.iter().enumerate() {
        let e = by_shard.entry(coordinator_shard(gs, id)).or_default();
        e.0.push(pos);
        e.1.push(id.clone());
    }
    let mut out: Vec<Option<T>> = (0..ids.len()).map(|_| None).collect();
    let calls = by_shard.into_iter().map(|(owner, (positions, part))| {
        let gs = gs.clone();
        async move {
            let r = gs.call(owner, move |s| submit_local(s, make(part))).await;
            (positions, r)
        }
    });
    for (positions, r) in futures_util::future::join_all(calls).await {
        let (code, items) = match r? {
            Ok(resp) => (codes::UNKNOWN_SERVER_ERROR, extract(resp)),
            Err(code) => (code, None),
        };
        match items {
            Some(items) => {
                for (pos, item) in positions.into_iter().zip(items) {
                    out[pos] = Some(item);
                }
            }
            None => {
                for pos in positions {
                    out[pos] = Some(fail(&ids[pos], code));
                }
            }
        }
    }
    Ok(out
        .into_iter()
        .zip(&ids)
        .map(|(o, id)| o.unwrap_or_else(|| fail(id, codes::UNKNOWN_SERVER_ERROR)))
        .collect())
}

/// DescribeGroups (groups may live on different shards).
pub async fn describe_groups(
    gs: &Rc<Groups>,
    version: i16,
    req: m::DescribeGroupsRequest,
) -> Result<m::DescribeGroupsResponse, ShardGone> {
    let ids = wire::describe_groups_request(&req);
    let groups = per_group(
        gs,
        ids,
        GroupRequest::DescribeGroups,
        |r| match r {
            GroupResponse::DescribeGroups(g) => Some(g),
            _ => None,
        },
        |id, code| DescribedGroup {
            error: code,
            group_id: id.to_string(),
            exists: false,
            state: "Dead".into(),
            protocol_type: String::new(),
            protocol: String::new(),
            members: Vec::new(),
        },
    )
    .await?;
    Ok(wire::describe_groups_response(&groups, version))
}

/// DeleteGroups (fanned out over the shards that coordinate the groups).
pub async fn delete_groups(
    gs: &Rc<Groups>,
    req: m::DeleteGroupsRequest,
) -> Result<m::DeleteGroupsResponse, ShardGone> {
    let ids = wire::delete_groups_request(&req);
    let results = per_group(
        gs,
        ids,
        GroupRequest::DeleteGroups,
        |r| match r {
            GroupResponse::DeleteGroups(g) => Some(g),
            _ => None,
        },
        |id, code| (id.to_string(), code),
    )
    .await?;
    Ok(wire::delete_groups_response(&results))
}

/// OffsetDelete.
pub async fn offset_delete(
    gs: &Rc<Groups>,
    req: m::OffsetDeleteRequest,
) -> Result<m::OffsetDeleteResponse, ShardGone> {
    let r = wire::offset_delete_request(&req);
    let group = r.group_id.clone();
    let result = match submit(gs, &group, GroupRequest::OffsetDelete(r)).await? {
        Ok(GroupResponse::OffsetDelete(d)) => d,
        other => {
            let code = match other {
                Err(code) => code,
                Ok(_) => {
                    mismatch("OffsetDelete");
                    codes::UNKNOWN_SERVER_ERROR
                }
            };
            crate::group::api::OffsetDeleteResult {
                error: code,
                partitions: Vec::new(),
            }
        }
    };
    Ok(wire::offset_delete_response(&result))
}
