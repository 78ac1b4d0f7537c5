//! The Fetch handler: works out the partitions to read (from the request, or from the
//! incremental fetch session it names), reads them on their owner shards with long polling,
//! and answers through the zero-copy encoder.
//!
//! Sessions (KIP-227) are decided by [`crate::broker::fetch_session`]; this shell calls it on the
//! shard that holds the session (`id % shards`), so a client that reconnects onto another
//! shard keeps its session. Follower fetches never create sessions (the replica fetcher sends
//! full fetches); a follower that asks for one gets a sessionless answer.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kafka_protocol::messages::{self as m, ApiKey};
use uuid::Uuid;

use super::{group_by_shard, RequestError};
use crate::broker::fetch_session::{
    FetchKind, FetchParams, FetchSessionCache, Outcome, PartitionKey, TopicKey, INVALID_SESSION_ID,
};
use crate::broker::partition_io::{FetchIn, FetchOut};
use crate::broker::protocol::{
    encode_fetch_response, error_code as ec, FetchFrame, FetchPartitionOut, FetchTopicOut,
};
use crate::broker::services::Services;
use crate::broker::shard::ShardLocal;
use crate::metrics::FetchRequestKind;

/// Milliseconds on a monotonic clock (sessions only compare times taken on one shard).
fn now_ms() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Runs `f` on the session cache of the shard that holds session `id`, then refreshes that
/// shard's session gauges.
async fn on_session_shard<R, F>(svc: &Rc<Services>, id: i32, f: F) -> Result<R, RequestError>
where
    R: Send + 'static,
    F: FnOnce(&mut FetchSessionCache) -> R + Send + 'static,
{
    let owner = FetchSessionCache::owner(id, svc.shard.ctx.shard_count());
    Ok(svc
        .fetch_sessions
        .call(owner, move |s| async move {
            let mut cache = s.cache.borrow_mut();
            let r = f(&mut cache);
            let stats = cache.stats();
            crate::metrics::set_fetch_sessions(stats.sessions, stats.partitions);
            r
        })
        .await?)
}

/// The response of incremental session `id` was replaced by an empty throttled one: the
/// session forgets what it recorded as told, so the client gets every partition's state on its
/// next fetch (Kafka does not update a session for a throttled response either).
pub async fn forget_told(svc: &Rc<Services>, id: i32) -> Result<(), RequestError> {
    on_session_shard(svc, id, move |c| c.forget_told(id)).await
}

/// One partition to read.
struct Entry {
    key: PartitionKey,
    name: String,
    topic_id: Uuid,
    partition: i32,
    /// An error decided before reading (unknown topic or partition).
    preset: Option<i16>,
    params: FetchParams,
}

/// A response carrying only a top-level error (the session paths), as Kafka sends it.
fn session_error(version: i16, cid: i32, code: i16, read_committed: bool) -> FetchFrame {
    crate::metrics::record_error_code(ApiKey::Fetch as i16, code);
    encode_fetch_response(
        version,
        cid,
        code,
        INVALID_SESSION_ID,
        Vec::new(),
        read_committed,
    )
}

/// Handles one Fetch request (versions 4..=16).
pub async fn fetch(
    svc: &Rc<Services>,
    version: i16,
    cid: i32,
    req: m::FetchRequest,
) -> Result<FetchFrame, RequestError> {
    let shard = &svc.shard;
    let image = shard.image();
    let zero_copy =
        shard.ctx.config.fetch_zero_copy && crate::broker::request_context::zero_copy_allowed();
    let read_committed = req.isolation_level == 1;
    // A follower's fetch names its broker id (in replica_state from v15).
    let replica_id = if version >= 15 {
        req.replica_state.replica_id.0
    } else {
        req.replica_id.0
    };
    let uses_topic_ids = version >= 13;
    let authz = super::acls::Authz::current(svc);
    if replica_id >= 0 && !authz.allows_cluster(crate::security::acl::AclOperation::ClusterAction) {
        // A follower's fetch needs CLUSTER_ACTION on the cluster (the whole request fails).
        return Ok(session_error(
            version,
            cid,
            super::acls::CLUSTER_AUTHORIZATION_FAILED,
            req.isolation_level == 1,
        ));
    }
    let kind = if version >= 7 {
        FetchKind::of(req.session_id, req.session_epoch)
    } else {
        FetchKind::Sessionless { close: None }
    };
    // A follower's full fetch is answered without a session.
    let create_session = matches!(kind, FetchKind::Full { .. }) && replica_id < 0;
    crate::metrics::record_fetch_request(match kind {
        FetchKind::Incremental { .. } => FetchRequestKind::Incremental,
        FetchKind::Full { .. } if create_session => FetchRequestKind::Full,
        _ => FetchRequestKind::Sessionless,
    });
    if let FetchKind::Sessionless { close: Some(id) } | FetchKind::Full { close: Some(id) } = kind {
        // Any session a full fetch names is closed (KIP-227).
        on_session_shard(svc, id, move |c| c.remove(id)).await?;
    }
    let topic_key = |name: &m::TopicName, id: Uuid| {
        if uses_topic_ids {
            TopicKey::Id(id)
        } else {
            TopicKey::Name(name.as_str().to_string())
        }
    };
    let requested: Vec<(PartitionKey, FetchParams)> = req
        .topics
        .iter()
        .flat_map(|t| {
            let topic = topic_key(&t.topic, t.topic_id);
            t.partitions.iter().map(move |p| {
                (
                    PartitionKey {
                        topic: topic.clone(),
                        partition: p.partition,
                    },
                    FetchParams {
                        fetch_offset: p.fetch_offset,
                        max_bytes: p.partition_max_bytes,
                        current_leader_epoch: p.current_leader_epoch,
                        last_fetched_epoch: p.last_fetched_epoch,
                        log_start_offset: p.log_start_offset,
                    },
                )
            })
        })
        .collect();
    let (to_read, session) = match kind {
        FetchKind::Incremental { id, epoch } => {
            let forgotten: Vec<PartitionKey> = req
                .forgotten_topics_data
                .iter()
                .flat_map(|t| {
                    let topic = topic_key(&t.topic, t.topic_id);
                    t.partitions.iter().map(move |p| PartitionKey {
                        topic: topic.clone(),
                        partition: *p,
                    })
                })
                .collect();
            let now = now_ms();
            let begun = on_session_shard(svc, id, move |c| {
                c.begin_incremental(id, epoch, uses_topic_ids, now, requested, &forgotten)
            })
            .await?;
            match begun {
                Err(code) => return Ok(session_error(version, cid, code, read_committed)),
                // Every partition was forgotten: the session is gone, nothing to read.
                Ok(plan) if plan.closed => {
                    return Ok(encode_fetch_response(
                        version,
                        cid,
                        ec::NONE,
                        INVALID_SESSION_ID,
                        Vec::new(),
                        read_committed,
                    ))
                }
                Ok(plan) => (plan.partitions, Some((id, plan.epoch))),
            }
        }
        _ => (requested, None),
    };
    let unknown_topic = if uses_topic_ids {
        ec::UNKNOWN_TOPIC_ID
    } else {
        ec::UNKNOWN_TOPIC_OR_PARTITION
    };
    let entries: Vec<Entry> = to_read
        .into_iter()
        .map(|(key, params)| {
            let meta = match &key.topic {
                TopicKey::Id(id) => image.topic_by_id(id),
                TopicKey::Name(name) => image.topic(name),
            };
            let (name, topic_id) = match (&key.topic, meta) {
                (TopicKey::Id(id), m) => (m.map(|m| m.name.clone()).unwrap_or_default(), *id),
                (TopicKey::Name(n), m) => (n.clone(), m.map_or(Uuid::nil(), |m| m.id)),
            };
            // A consumer needs READ on the topic, asked before whether it exists (as Kafka
            // does), so a principal without it cannot probe for topic names. A topic id that
            // names no topic has no name to authorise: UNKNOWN_TOPIC_ID.
            let denied = replica_id < 0
                && !name.is_empty()
                && !authz.allows_topic(crate::security::acl::AclOperation::Read, &name);
            let preset = match meta {
                _ if denied => Some(super::acls::TOPIC_AUTHORIZATION_FAILED),
                Some(m) if (0..m.partitions).contains(&key.partition) => None,
                Some(_) => Some(ec::UNKNOWN_TOPIC_OR_PARTITION),
                None => Some(unknown_topic),
            };
            Entry {
                partition: key.partition,
                key,
                name,
                topic_id,
                preset,
                params,
            }
        })
        .collect();
    let work: Vec<(usize, String, i32, FetchParams)> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.preset.is_none())
        .map(|(pos, e)| (pos, e.name.clone(), e.partition, e.params))
        .collect();
    let max_wait = Duration::from_millis(u64::try_from(req.max_wait_ms.max(0)).unwrap_or(0));
    let deadline = tokio::time::Instant::now() + max_wait;
    let groups = group_by_shard(&svc.shard, work);
    let mut results: Vec<Option<FetchOut>>;
    loop {
        results = (0..entries.len()).map(|_| None).collect();
        let calls = groups.iter().map(|(owner, (positions, items))| {
            let items: Vec<FetchIn> = items
                .iter()
                .map(|(topic, partition, p)| FetchIn {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: p.fetch_offset,
                    max_bytes: p.max_bytes,
                    replica_id,
                    current_leader_epoch: p.current_leader_epoch,
                    last_fetched_epoch: p.last_fetched_epoch,
                    log_start_offset: p.log_start_offset,
                    read_committed,
                })
                .collect();
            let owner = *owner;
            let replicas = svc.replicas.clone();
            async move {
                (
                    positions,
                    replicas
                        .call(owner, move |s| s.fetch_local(items, zero_copy))
                        .await,
                )
            }
        });
        let mut bytes = 0usize;
        let mut any_error = false;
        for (positions, outs) in futures_util::future::join_all(calls).await {
            for (pos, out) in positions.iter().zip(outs?) {
                bytes += out.records.as_ref().map_or(0, |r| r.len());
                any_error |= out.error_code != ec::NONE;
                results[*pos] = Some(out);
            }
        }
        let satisfied = bytes >= usize::try_from(req.min_bytes.max(0)).unwrap_or(0) || any_error;
        if satisfied || groups.is_empty() || tokio::time::Instant::now() >= deadline {
            break;
        }
        // Long poll: wait for an append on any requested partition, then read again.
        let waits = groups.iter().map(|(owner, (_, items))| {
            let items: Vec<(String, i32, i64, bool, bool)> = items
                .iter()
                .map(|(t, p, params)| {
                    let replica = replica_id >= 0;
                    let committed = read_committed && !replica;
                    (t.clone(), *p, params.fetch_offset, replica, committed)
                })
                .collect();
            let owner = *owner;
            let replicas = svc.replicas.clone();
            Box::pin(async move {
                let _ = replicas
                    .call(owner, move |s| s.wait_for_data(items, deadline))
                    .await;
            })
        });
        let waits: Vec<_> = waits.collect();
        let mut phase = shard.phase.subscribe();
        let draining = tokio::select! {
            _ = futures_util::future::select_all(waits) => false,
            _ = tokio::time::sleep_until(deadline) => false,
            // Shutdown: answer with what we have rather than hold the drain up.
            _ = phase.changed() => true,
        };
        if draining {
            break;
        }
    }
    // Response-wide max_bytes, in read order; the first non-empty partition always goes out
    // whole so a batch larger than the limit can still be consumed (as Kafka does).
    // max_bytes <= 0 still returns the first batch, like any limit smaller than a batch.
    let mut remaining = usize::try_from(req.max_bytes).unwrap_or(0);
    let mut first = true;
    let mut outs: Vec<FetchPartitionOut> = Vec::with_capacity(entries.len());
    for (pos, e) in entries.iter().enumerate() {
        let out = match e.preset {
            Some(code) => FetchPartitionOut {
                partition: e.partition,
                error_code: code,
                high_watermark: -1,
                last_stable_offset: -1,
                log_start_offset: -1,
                aborted_transactions: Vec::new(),
                records: None,
                diverging_epoch: None,
            },
            None => {
                let (code, hw, lso, ls, mut records, mut aborted, diverging_epoch) =
                    match results[pos].take() {
                        Some(o) => (
                            o.error_code,
                            o.high_watermark,
                            o.last_stable_offset,
                            o.log_start_offset,
                            o.records,
                            o.aborted,
                            o.diverging_epoch,
                        ),
                        None => (ec::UNKNOWN_SERVER_ERROR, -1, -1, -1, None, Vec::new(), None),
                    };
                if let Some(rec) = &records {
                    let len = rec.len();
                    if first || len <= remaining {
                        remaining = remaining.saturating_sub(len);
                        first = false;
                    } else {
                        records = None;
                        aborted.clear();
                    }
                }
                FetchPartitionOut {
                    partition: e.partition,
                    error_code: code,
                    high_watermark: hw,
                    last_stable_offset: lso,
                    log_start_offset: ls,
                    aborted_transactions: aborted,
                    records,
                    diverging_epoch,
                }
            }
        };
        outs.push(out);
    }
    let outcome = |o: &FetchPartitionOut| Outcome {
        has_records: o.records.as_ref().is_some_and(|r| !r.is_empty()),
        error_code: o.error_code,
        high_watermark: o.high_watermark,
        log_start_offset: o.log_start_offset,
        diverging: o.diverging_epoch.is_some(),
    };
    let mut include = vec![true; outs.len()];
    let mut session_id = INVALID_SESSION_ID;
    if let Some((id, epoch)) = session {
        let outcomes: Vec<(PartitionKey, Outcome)> = entries
            .iter()
            .zip(&outs)
            .map(|(e, o)| (e.key.clone(), outcome(o)))
            .collect();
        match on_session_shard(svc, id, move |c| c.finish_incremental(id, epoch, &outcomes)).await?
        {
            Ok(keep) => include = keep,
            Err(code) => return Ok(session_error(version, cid, code, read_committed)),
        }
        session_id = id;
    } else if create_session {
        let partitions: Vec<(PartitionKey, FetchParams, Outcome)> = entries
            .iter()
            .zip(&outs)
            .map(|(e, o)| (e.key.clone(), e.params, outcome(o)))
            .collect();
        // A new session lives on the shard of the connection that asked for it.
        let (id, evicted) = {
            let mut cache = svc.fetch_sessions.cache.borrow_mut();
            let created = cache.create(now_ms(), uses_topic_ids, partitions);
            let stats = cache.stats();
            crate::metrics::set_fetch_sessions(stats.sessions, stats.partitions);
            created
        };
        if id != INVALID_SESSION_ID {
            crate::metrics::record_fetch_session_created(u64::from(evicted.is_some()));
        }
        session_id = id;
    }
    // Group by topic in order of first appearance: a full fetch keeps the request's order; an
    // incremental one lists only the partitions to report, in session order.
    let mut topics: Vec<FetchTopicOut> = Vec::new();
    let mut topic_pos: HashMap<TopicKey, usize> = HashMap::new();
    for ((e, out), keep) in entries.into_iter().zip(outs).zip(include) {
        if !keep {
            continue;
        }
        crate::metrics::record_error_code(ApiKey::Fetch as i16, out.error_code);
        let i = *topic_pos.entry(e.key.topic).or_insert_with(|| {
            topics.push(FetchTopicOut {
                name: e.name,
                topic_id: e.topic_id,
                partitions: Vec::new(),
            });
            topics.len() - 1
        });
        topics[i].partitions.push(out);
    }
    Ok(encode_fetch_response(
        version,
        cid,
        ec::NONE,
        session_id,
        topics,
        read_committed,
    ))
}
