//! The broker's side of the idempotent producer: InitProducerId, and well-formed refusals of
//! the transactional APIs.
//!
//! One [`ProducerIdManager`] serves the whole broker. It lives on shard 0 and other shards
//! reach it with `Shard::call`: InitProducerId is rare (once per producer), the manager's
//! persistence is an async io_uring write that must run on a runtime thread anyway, and a
//! single owner needs no lock. Each block of ids is asked of the controller
//! (`MetadataCommand::AllocateProducerIds`, Kafka's AllocateProducerIds), whose metadata log
//! records it, so ids are unique across the cluster and never reused, on a cluster of one as
//! on three brokers.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use kafka_protocol::messages::{self as m, ApiKey};
use kafka_protocol::protocol::{Decodable, Message};
use tokio::sync::oneshot;
use tracing::{error, info};

use super::protocol::error_code as ec;
use super::shard::Shard;
use crate::idempotence::producer_id::{codes, InitProducerIdResult};
use crate::idempotence::{
    InitProducerId, ProducerIdAction, ProducerIdManager, DEFAULT_PRODUCER_ID_BLOCK_SIZE,
    DEFAULT_PRODUCER_ID_EXPIRATION_MS,
};

/// The file in which the release without a controller kept its producer-id high-water mark
/// (read once, by the migration into a cluster of one).
pub const PRODUCER_ID_FILE: &str = "producer-id-high-water-mark";

/// The shard that owns the broker's producer-id manager.
pub const PRODUCER_ID_SHARD: usize = 0;

/// Broker config key for how long an idle producer's state is kept in a partition.
pub const PRODUCER_ID_EXPIRATION_KEY: &str = "producer.id.expiration.ms";

/// `producer.id.expiration.ms` from the broker config (default 1 day).
pub fn producer_id_expiration_ms(shard: &Shard) -> i64 {
    shard
        .ctx
        .config
        .raw
        .get(PRODUCER_ID_EXPIRATION_KEY)
        .and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|v| *v > 0)
        .unwrap_or(DEFAULT_PRODUCER_ID_EXPIRATION_MS)
}

/// Shard 0's producer-id state: the manager (loaded on first use) and the requests waiting
/// for an answer, by token.
#[derive(Default)]
pub struct ProducerIds {
    manager: RefCell<Option<ProducerIdManager>>,
    waiting: RefCell<HashMap<u64, oneshot::Sender<InitProducerIdResult>>>,
    next_token: Cell<u64>,
}

impl std::fmt::Debug for ProducerIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProducerIds")
            .field("waiting", &self.waiting.borrow().len())
            .finish()
    }
}

fn failure(error: i16) -> InitProducerIdResult {
    InitProducerIdResult {
        error,
        producer_id: -1,
        producer_epoch: -1,
    }
}

/// InitProducerId on the owning shard: the answer once the manager has one (after asking
/// the controller for a new block if needed).
pub async fn init_producer_id(shard: Rc<Shard>, req: InitProducerId) -> InitProducerIdResult {
    debug_assert_eq!(shard.id, PRODUCER_ID_SHARD);
    let state = &shard.producer_ids;
    let actions = {
        let mut manager = state.manager.borrow_mut();
        // No stored mark: every block comes from the controller.
        let manager = manager
            .get_or_insert_with(|| ProducerIdManager::new(None, DEFAULT_PRODUCER_ID_BLOCK_SIZE));
        let token = state.next_token.get();
        state.next_token.set(token + 1);
        let (tx, rx) = oneshot::channel();
        state.waiting.borrow_mut().insert(token, tx);
        (manager.init_producer_id(token, &req), rx)
    };
    let (actions, rx) = actions;
    run_actions(&shard, actions);
    rx.await
        .unwrap_or_else(|_| failure(codes::COORDINATOR_NOT_AVAILABLE))
}

fn run_actions(shard: &Rc<Shard>, actions: Vec<ProducerIdAction>) {
    for action in actions {
        match action {
            ProducerIdAction::Respond { token, result } => {
                if let Some(tx) = shard.producer_ids.waiting.borrow_mut().remove(&token) {
                    let _ = tx.send(result);
                }
            }
            ProducerIdAction::PersistHighWaterMark { high_water_mark } => {
                let shard = shard.clone();
                let node = shard.ctx.metadata.cluster_node().clone();
                crate::io::runtime::spawn(async move {
                    let epoch = node.broker_epoch();
                    let block = if epoch < 0 {
                        Err("this broker is not registered yet".to_string())
                    } else {
                        node.controller
                            .allocate_producer_ids(node.node_id, epoch)
                            .await
                            .map_err(|e| e.to_string())
                    };
                    match &block {
                        Ok(b) => info!(
                            first = b.start,
                            end = b.end,
                            "producer id block from the controller"
                        ),
                        Err(e) => {
                            error!("cannot get a producer id block from the controller: {e}")
                        }
                    }
                    let next = match shard.producer_ids.manager.borrow_mut().as_mut() {
                        Some(m) => m.on_block_allocated(high_water_mark, block.map_err(|_| ())),
                        None => Vec::new(),
                    };
                    run_actions(&shard, next);
                });
            }
        }
    }
}

/// The transactional APIs: not advertised (transactions are out of scope), but a client that
/// sends one anyway gets a well-formed response carrying UNSUPPORTED_VERSION instead of a
/// closed connection.
pub fn is_transactional_api(api: ApiKey) -> bool {
    matches!(
        api,
        ApiKey::AddPartitionsToTxn
            | ApiKey::AddOffsetsToTxn
            | ApiKey::EndTxn
            | ApiKey::TxnOffsetCommit
            | ApiKey::WriteTxnMarkers
            | ApiKey::DescribeTransactions
            | ApiKey::ListTransactions
    )
}

/// A refusal of a transactional request, already decoded past its header.
pub enum TxnRefusal {
    /// AddPartitionsToTxn.
    AddPartitionsToTxn(m::AddPartitionsToTxnResponse),
    /// AddOffsetsToTxn.
    AddOffsetsToTxn(m::AddOffsetsToTxnResponse),
    /// EndTxn.
    EndTxn(m::EndTxnResponse),
    /// TxnOffsetCommit.
    TxnOffsetCommit(m::TxnOffsetCommitResponse),
    /// WriteTxnMarkers.
    WriteTxnMarkers(m::WriteTxnMarkersResponse),
    /// DescribeTransactions.
    DescribeTransactions(m::DescribeTransactionsResponse),
    /// ListTransactions.
    ListTransactions(m::ListTransactionsResponse),
}

/// Whether kafka-protocol can decode and encode `api` at `version`.
pub fn txn_version_known(api: ApiKey, version: i16) -> bool {
    let r = match api {
        ApiKey::AddPartitionsToTxn => m::AddPartitionsToTxnRequest::VERSIONS,
        ApiKey::AddOffsetsToTxn => m::AddOffsetsToTxnRequest::VERSIONS,
        ApiKey::EndTxn => m::EndTxnRequest::VERSIONS,
        ApiKey::TxnOffsetCommit => m::TxnOffsetCommitRequest::VERSIONS,
        ApiKey::WriteTxnMarkers => m::WriteTxnMarkersRequest::VERSIONS,
        ApiKey::DescribeTransactions => m::DescribeTransactionsRequest::VERSIONS,
        ApiKey::ListTransactions => m::ListTransactionsRequest::VERSIONS,
        _ => return false,
    };
    (r.min..=r.max).contains(&version)
}

/// Decodes a transactional request body and builds its UNSUPPORTED_VERSION response: every
/// per-item error code (partition, transactional id) and the top-level one where the version
/// has it.
pub fn refuse_transactional(
    api: ApiKey,
    version: i16,
    body: &mut bytes::Bytes,
) -> anyhow::Result<TxnRefusal> {
    const E: i16 = ec::UNSUPPORTED_VERSION;
    Ok(match api {
        ApiKey::AddPartitionsToTxn => {
            let req = m::AddPartitionsToTxnRequest::decode(body, version)?;
            let topic_results = |topics: Vec<
                m::add_partitions_to_txn_request::AddPartitionsToTxnTopic,
            >| {
                topics
                    .into_iter()
                    .map(|t| {
                        m::add_partitions_to_txn_response::AddPartitionsToTxnTopicResult::default()
                            .with_name(t.name)
                            .with_results_by_partition(
                                t.partitions
                                    .into_iter()
                                    .map(|p| {
                                        m::add_partitions_to_txn_response::AddPartitionsToTxnPartitionResult::default()
                                            .with_partition_index(p)
                                            .with_partition_error_code(E)
                                    })
                                    .collect(),
                            )
                    })
                    .collect::<Vec<_>>()
            };
            let resp = m::AddPartitionsToTxnResponse::default();
            TxnRefusal::AddPartitionsToTxn(if version >= 4 {
                resp.with_error_code(E).with_results_by_transaction(
                    req.transactions
                        .into_iter()
                        .map(|t| {
                            m::add_partitions_to_txn_response::AddPartitionsToTxnResult::default()
                                .with_transactional_id(t.transactional_id)
                                .with_topic_results(topic_results(t.topics))
                        })
                        .collect(),
                )
            } else {
                resp.with_results_by_topic_v3_and_below(topic_results(req.v3_and_below_topics))
            })
        }
        ApiKey::AddOffsetsToTxn => {
            m::AddOffsetsToTxnRequest::decode(body, version)?;
            TxnRefusal::AddOffsetsToTxn(m::AddOffsetsToTxnResponse::default().with_error_code(E))
        }
        ApiKey::EndTxn => {
            m::EndTxnRequest::decode(body, version)?;
            TxnRefusal::EndTxn(
                m::EndTxnResponse::default()
                    .with_error_code(E)
                    .with_producer_id(m::ProducerId(-1))
                    .with_producer_epoch(-1),
            )
        }
        ApiKey::TxnOffsetCommit => {
            let req = m::TxnOffsetCommitRequest::decode(body, version)?;
            TxnRefusal::TxnOffsetCommit(
                m::TxnOffsetCommitResponse::default().with_topics(
                    req.topics
                        .into_iter()
                        .map(|t| {
                            m::txn_offset_commit_response::TxnOffsetCommitResponseTopic::default()
                                .with_name(t.name)
                                .with_partitions(
                                    t.partitions
                                        .into_iter()
                                        .map(|p| {
                                            m::txn_offset_commit_response::TxnOffsetCommitResponsePartition::default()
                                                .with_partition_index(p.partition_index)
                                                .with_error_code(E)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                ),
            )
        }
        ApiKey::WriteTxnMarkers => {
            let req = m::WriteTxnMarkersRequest::decode(body, version)?;
            TxnRefusal::WriteTxnMarkers(
                m::WriteTxnMarkersResponse::default().with_markers(
                    req.markers
                        .into_iter()
                        .map(|mk| {
                            m::write_txn_markers_response::WritableTxnMarkerResult::default()
                                .with_producer_id(mk.producer_id)
                                .with_topics(
                                    mk.topics
                                        .into_iter()
                                        .map(|t| {
                                            m::write_txn_markers_response::WritableTxnMarkerTopicResult::default()
                                                .with_name(t.name)
                                                .with_partitions(
                                                    t.partition_indexes
                                                        .into_iter()
                                                        .map(|p| {
                                                            m::write_txn_markers_response::WritableTxnMarkerPartitionResult::default()
                                                                .with_partition_index(p)
                                                                .with_error_code(E)
                                                        })
                                                        .collect(),
                                                )
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                ),
            )
        }
        ApiKey::DescribeTransactions => {
            let req = m::DescribeTransactionsRequest::decode(body, version)?;
            TxnRefusal::DescribeTransactions(
                m::DescribeTransactionsResponse::default().with_transaction_states(
                    req.transactional_ids
                        .into_iter()
                        .map(|id| {
                            m::describe_transactions_response::TransactionState::default()
                                .with_error_code(E)
                                .with_transactional_id(id)
                                .with_producer_id(m::ProducerId(-1))
                                .with_producer_epoch(-1)
                        })
                        .collect(),
                ),
            )
        }
        ApiKey::ListTransactions => {
            m::ListTransactionsRequest::decode(body, version)?;
            TxnRefusal::ListTransactions(m::ListTransactionsResponse::default().with_error_code(E))
        }
        other => anyhow::bail!("{other:?} is not a transactional API"),
    })
}
