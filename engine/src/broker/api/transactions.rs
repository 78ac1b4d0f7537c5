//! The transaction APIs (KIP-98): InitProducerId with a transactional id, AddPartitionsToTxn,
//! AddOffsetsToTxn, EndTxn, WriteTxnMarkers (broker to broker), DescribeTransactions and
//! ListTransactions. Each is authorised here, then answered by the transaction service on
//! the shard that coordinates the id (`broker::transactions`).

use std::rc::Rc;

use kafka_protocol::messages::{self as m};
use kafka_protocol::protocol::StrBytes;

use super::acls::{
    Authz, CLUSTER_AUTHORIZATION_FAILED, GROUP_AUTHORIZATION_FAILED, TOPIC_AUTHORIZATION_FAILED,
    TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
};
use crate::broker::protocol::error_code as ec;
use crate::broker::services::Services;
use crate::broker::shard::ShardLocal;
use crate::broker::transactions::{self as tx, on_coordinator};
use crate::group::{offsets_partition_for, OFFSETS_TOPIC};
use crate::security::acl::{AclOperation, ResourceType};
use crate::txn::{codes, TxnStatus, TXN_TOPIC};

/// PRODUCER_FENCED is new in KIP-588; older clients are told INVALID_PRODUCER_EPOCH.
fn fenced_for(code: i16, version: i16, first_fenced_version: i16) -> i16 {
    if code == codes::PRODUCER_FENCED && version < first_fenced_version {
        codes::INVALID_PRODUCER_EPOCH
    } else {
        code
    }
}

fn may_write_txn(authz: &Authz<'_>, id: &str) -> bool {
    authz.allows(AclOperation::Write, ResourceType::TransactionalId, id)
}

/// InitProducerId with a transactional id (authorised by the caller).
pub async fn init_producer_id(
    svc: &Rc<Services>,
    version: i16,
    req: &m::InitProducerIdRequest,
    transactional_id: String,
) -> m::InitProducerIdResponse {
    let expected =
        (version >= 3 && req.producer_id.0 >= 0).then_some((req.producer_id.0, req.producer_epoch));
    let timeout = req.transaction_timeout_ms;
    let (code, pid, epoch) =
        on_coordinator(&svc.transactions, &transactional_id.clone(), move |ts| {
            tx::init_producer_id_local(ts, transactional_id, timeout, expected)
        })
        .await
        .unwrap_or((codes::COORDINATOR_NOT_AVAILABLE, -1, -1));
    m::InitProducerIdResponse::default()
        .with_error_code(fenced_for(code, version, 4))
        .with_producer_id(m::ProducerId(pid))
        .with_producer_epoch(epoch)
}

/// AddPartitionsToTxn v0-3 (one transaction from a client). v4+ (batched, broker to broker)
/// carries `verify_only`: the KIP-890 check of a partition leader.
pub async fn add_partitions_to_txn(
    svc: &Rc<Services>,
    version: i16,
    req: m::AddPartitionsToTxnRequest,
) -> m::AddPartitionsToTxnResponse {
    if version >= 4 {
        let authz = Authz::current(svc);
        if !authz.allows_cluster(AclOperation::ClusterAction) {
            return m::AddPartitionsToTxnResponse::default()
                .with_error_code(CLUSTER_AUTHORIZATION_FAILED);
        }
        let mut results = Vec::new();
        for t in req.transactions {
            let topics = one_transaction(
                svc,
                version,
                t.transactional_id.0.to_string(),
                t.producer_id.0,
                t.producer_epoch,
                t.verify_only,
                t.topics,
                false,
            )
            .await;
            results.push(
                m::add_partitions_to_txn_response::AddPartitionsToTxnResult::default()
                    .with_transactional_id(t.transactional_id)
                    .with_topic_results(topics),
            );
        }
        return m::AddPartitionsToTxnResponse::default().with_results_by_transaction(results);
    }
    let topics = one_transaction(
        svc,
        version,
        req.v3_and_below_transactional_id.0.to_string(),
        req.v3_and_below_producer_id.0,
        req.v3_and_below_producer_epoch,
        false,
        req.v3_and_below_topics,
        true,
    )
    .await;
    m::AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(topics)
}

type TopicResults = Vec<m::add_partitions_to_txn_response::AddPartitionsToTxnTopicResult>;

#[allow(clippy::too_many_arguments)]
async fn one_transaction(
    svc: &Rc<Services>,
    version: i16,
    id: String,
    producer_id: i64,
    producer_epoch: i16,
    verify_only: bool,
    topics: Vec<m::add_partitions_to_txn_request::AddPartitionsToTxnTopic>,
    from_client: bool,
) -> TopicResults {
    let authz = Authz::current(svc);
    let image = svc.shard.image();
    let mut items: Vec<((String, i32), i16)> = Vec::new();
    let txn_denied = from_client && !may_write_txn(&authz, &id);
    for t in &topics {
        let name = t.name.0.to_string();
        let denied = from_client && !authz.allows_topic(AclOperation::Write, &name);
        let known = image.topic(&name);
        for p in &t.partitions {
            let code = if txn_denied {
                TRANSACTIONAL_ID_AUTHORIZATION_FAILED
            } else if denied {
                TOPIC_AUTHORIZATION_FAILED
            } else if name == TXN_TOPIC || (from_client && name == OFFSETS_TOPIC) {
                // Kafka: internal topics are added only through AddOffsetsToTxn.
                ec::INVALID_REQUEST
            } else if known.is_none_or(|k| !(0..k.partitions).contains(p)) {
                ec::UNKNOWN_TOPIC_OR_PARTITION
            } else {
                ec::NONE
            };
            items.push(((name.clone(), *p), code));
        }
    }
    let failed = items.iter().any(|(_, c)| *c != ec::NONE);
    let results: Vec<((String, i32), i16)> = if failed {
        // Kafka: when some partitions fail, the others are OPERATION_NOT_ATTEMPTED.
        items
            .into_iter()
            .map(|(p, c)| {
                let c = if c == ec::NONE {
                    codes::OPERATION_NOT_ATTEMPTED
                } else {
                    c
                };
                (p, c)
            })
            .collect()
    } else {
        let parts: Vec<(String, i32)> = items.iter().map(|(p, _)| p.clone()).collect();
        if verify_only {
            let key = id.clone();
            on_coordinator(&svc.transactions, &key, move |ts| {
                tx::verify_local(ts, id, producer_id, producer_epoch, parts)
            })
            .await
            .unwrap_or_else(|_| {
                items
                    .iter()
                    .map(|(p, _)| (p.clone(), codes::COORDINATOR_NOT_AVAILABLE))
                    .collect()
            })
        } else {
            let key = id.clone();
            let code = on_coordinator(&svc.transactions, &key, move |ts| {
                tx::add_partitions_local(ts, id, producer_id, producer_epoch, parts)
            })
            .await
            .unwrap_or(codes::COORDINATOR_NOT_AVAILABLE);
            let code = fenced_for(code, version, 2);
            items.into_iter().map(|(p, _)| (p, code)).collect()
        }
    };
    let mut out: TopicResults = Vec::new();
    for ((topic, p), code) in results {
        let result =
            m::add_partitions_to_txn_response::AddPartitionsToTxnPartitionResult::default()
                .with_partition_index(p)
                .with_partition_error_code(code);
        match out.last_mut() {
            Some(t) if t.name.0.as_str() == topic => t.results_by_partition.push(result),
            _ => out.push(
                m::add_partitions_to_txn_response::AddPartitionsToTxnTopicResult::default()
                    .with_name(m::TopicName(StrBytes::from_string(topic)))
                    .with_results_by_partition(vec![result]),
            ),
        }
    }
    out
}

/// AddOffsetsToTxn: the group's `__consumer_offsets` partition joins the transaction.
pub async fn add_offsets_to_txn(
    svc: &Rc<Services>,
    version: i16,
    req: m::AddOffsetsToTxnRequest,
) -> m::AddOffsetsToTxnResponse {
    let authz = Authz::current(svc);
    let id = req.transactional_id.0.to_string();
    let group = req.group_id.0.to_string();
    let code = if !may_write_txn(&authz, &id) {
        TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    } else if !authz.allows(AclOperation::Read, ResourceType::Group, &group) {
        GROUP_AUTHORIZATION_FAILED
    } else {
        let p = offsets_partition_for(&group, svc.groups.offsets_partitions());
        let (pid, epoch) = (req.producer_id.0, req.producer_epoch);
        let key = id.clone();
        let code = on_coordinator(&svc.transactions, &key, move |ts| {
            tx::add_partitions_local(ts, id, pid, epoch, vec![(OFFSETS_TOPIC.to_string(), p)])
        })
        .await
        .unwrap_or(codes::COORDINATOR_NOT_AVAILABLE);
        fenced_for(code, version, 2)
    };
    m::AddOffsetsToTxnResponse::default().with_error_code(code)
}

/// EndTxn: commit or abort.
pub async fn end_txn(svc: &Rc<Services>, version: i16, req: m::EndTxnRequest) -> m::EndTxnResponse {
    let authz = Authz::current(svc);
    let id = req.transactional_id.0.to_string();
    if !may_write_txn(&authz, &id) {
        return m::EndTxnResponse::default().with_error_code(TRANSACTIONAL_ID_AUTHORIZATION_FAILED);
    }
    let (pid, epoch, commit) = (req.producer_id.0, req.producer_epoch, req.committed);
    let key = id.clone();
    let code = on_coordinator(&svc.transactions, &key, move |ts| {
        tx::end_txn_local(ts, id, pid, epoch, commit)
    })
    .await
    .unwrap_or(codes::COORDINATOR_NOT_AVAILABLE);
    m::EndTxnResponse::default().with_error_code(fenced_for(code, version, 2))
}

/// WriteTxnMarkers (from a transaction coordinator): each marker on the partitions this
/// broker leads. Needs CLUSTER_ACTION.
pub async fn write_txn_markers(
    svc: &Rc<Services>,
    req: m::WriteTxnMarkersRequest,
) -> m::WriteTxnMarkersResponse {
    let allowed = Authz::current(svc).allows_cluster(AclOperation::ClusterAction);
    let timeout_ms = svc.transactions.write_timeout_ms();
    let mut markers = Vec::new();
    for mk in req.markers {
        let mut topics = Vec::new();
        for t in mk.topics {
            let name = t.name.0.to_string();
            let writes = t.partition_indexes.iter().map(|p| {
                let name = name.clone();
                async move {
                    let code = if allowed {
                        tx::write_marker_here(
                            &svc.replicas,
                            &svc.groups,
                            name,
                            *p,
                            mk.producer_id.0,
                            mk.producer_epoch,
                            mk.coordinator_epoch,
                            mk.transaction_result,
                            timeout_ms,
                        )
                        .await
                    } else {
                        CLUSTER_AUTHORIZATION_FAILED
                    };
                    m::write_txn_markers_response::WritableTxnMarkerPartitionResult::default()
                        .with_partition_index(*p)
                        .with_error_code(code)
                }
            });
            let partitions = futures_util::future::join_all(writes).await;
            topics.push(
                m::write_txn_markers_response::WritableTxnMarkerTopicResult::default()
                    .with_name(t.name)
                    .with_partitions(partitions),
            );
        }
        markers.push(
            m::write_txn_markers_response::WritableTxnMarkerResult::default()
                .with_producer_id(mk.producer_id)
                .with_topics(topics),
        );
    }
    m::WriteTxnMarkersResponse::default().with_markers(markers)
}

/// DescribeTransactions: DESCRIBE on each id.
pub async fn describe_transactions(
    svc: &Rc<Services>,
    req: m::DescribeTransactionsRequest,
) -> m::DescribeTransactionsResponse {
    let authz = Authz::current(svc);
    let mut states = Vec::new();
    for id in req.transactional_ids {
        let name = id.0.to_string();
        let base = m::describe_transactions_response::TransactionState::default()
            .with_transactional_id(id)
            .with_transaction_state(StrBytes::from_static_str(""))
            .with_producer_id(m::ProducerId(-1))
            .with_producer_epoch(-1)
            .with_transaction_start_time_ms(-1);
        if !authz.allows(AclOperation::Describe, ResourceType::TransactionalId, &name) {
            states.push(base.with_error_code(TRANSACTIONAL_ID_AUTHORIZATION_FAILED));
            continue;
        }
        let key = name.clone();
        let described = on_coordinator(&svc.transactions, &key, move |ts| {
            tx::describe_local(ts, name)
        })
        .await
        .unwrap_or(Err(codes::COORDINATOR_NOT_AVAILABLE));
        let state = match described {
            Err(code) => base.with_error_code(code),
            Ok(meta) => {
                let v = meta.value;
                let mut topics: Vec<m::describe_transactions_response::TopicData> = Vec::new();
                for (t, p) in v.partitions {
                    match topics.last_mut() {
                        Some(last) if last.topic.0.as_str() == t => last.partitions.push(p),
                        _ => topics.push(
                            m::describe_transactions_response::TopicData::default()
                                .with_topic(m::TopicName(StrBytes::from_string(t)))
                                .with_partitions(vec![p]),
                        ),
                    }
                }
                base.with_transaction_state(StrBytes::from_static_str(v.status.name()))
                    .with_transaction_timeout_ms(v.timeout_ms)
                    .with_transaction_start_time_ms(v.start_ms)
                    .with_producer_id(m::ProducerId(v.producer_id))
                    .with_producer_epoch(v.producer_epoch)
                    .with_topics(topics)
            }
        };
        states.push(state);
    }
    m::DescribeTransactionsResponse::default().with_transaction_states(states)
}

/// ListTransactions v0-1: the ids this broker coordinates that the principal may DESCRIBE,
/// filtered by state, producer id and (v1) minimum running time.
pub async fn list_transactions(
    svc: &Rc<Services>,
    version: i16,
    req: m::ListTransactionsRequest,
) -> m::ListTransactionsResponse {
    let mut unknown = Vec::new();
    let mut states = Vec::new();
    for s in &req.state_filters {
        match TxnStatus::from_name(s.as_str()) {
            Some(st) => states.push(st),
            None => unknown.push(s.clone()),
        }
    }
    let pids: Vec<i64> = req.producer_id_filters.iter().map(|p| p.0).collect();
    let min_duration = if version >= 1 {
        req.duration_filter
    } else {
        -1
    };
    let mut found = Vec::new();
    // Nothing matches a filter made only of unknown states.
    if unknown.is_empty() || !states.is_empty() {
        for s in 0..svc.shard.ctx.shard_count() {
            let (states, pids) = (states.clone(), pids.clone());
            if let Ok(mut list) = svc
                .transactions
                .call(s, move |ts| tx::list_local(ts, states, pids, min_duration))
                .await
            {
                found.append(&mut list);
            }
        }
    }
    let authz = Authz::current(svc);
    let listed = found
        .into_iter()
        .filter(|(id, _, _)| {
            authz.allows(AclOperation::Describe, ResourceType::TransactionalId, id)
        })
        .map(|(id, pid, status)| {
            m::list_transactions_response::TransactionState::default()
                .with_transactional_id(m::TransactionalId(StrBytes::from_string(id)))
                .with_producer_id(m::ProducerId(pid))
                .with_transaction_state(StrBytes::from_static_str(status.name()))
        })
        .collect();
    m::ListTransactionsResponse::default()
        .with_unknown_state_filters(unknown)
        .with_transaction_states(listed)
}
