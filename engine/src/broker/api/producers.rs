//! InitProducerId (answered by the producer-id service on shard 0), and well-formed refusals
//! of the transactional APIs.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::{self as m, ApiKey, RequestHeader};
use kafka_protocol::protocol::{Decodable, Message};
use tracing::debug;

use super::{ErasedEncodable, RequestError, Response};
use crate::broker::protocol::error_code as ec;
use crate::broker::services::Services;

/// InitProducerId: a producer id and epoch from the broker's producer-id manager.
pub async fn init_producer_id(
    svc: &Rc<Services>,
    version: i16,
    req: m::InitProducerIdRequest,
) -> Result<m::InitProducerIdResponse, RequestError> {
    if let Some(id) = req.transactional_id.as_ref().map(|t| t.0.to_string()) {
        return Ok(super::transactions::init_producer_id(svc, version, &req, id).await);
    }
    let req = crate::idempotence::init_producer_id_request(&req, version);
    let result = svc.producer_ids.init_producer_id(req).await?;
    Ok(crate::idempotence::init_producer_id_response(&result))
}

/// The transactional APIs: a client that sends one at a version the broker does not serve
/// (EndTxn v5, TxnOffsetCommit above v3, ...) gets a well-formed
/// response carrying UNSUPPORTED_VERSION instead of a closed connection.
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
pub fn refusal(api: ApiKey, version: i16, body: &mut bytes::Bytes) -> anyhow::Result<TxnRefusal> {
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

/// A transactional API sent although not advertised: a well-formed UNSUPPORTED_VERSION answer.
pub fn refuse_transactional(
    frame: Bytes,
    api: ApiKey,
    version: i16,
) -> Result<Response, RequestError> {
    use TxnRefusal as T;
    let malformed = |e: anyhow::Error| RequestError::Malformed {
        api,
        version,
        reason: e.to_string(),
    };
    let mut buf = frame;
    let header =
        RequestHeader::decode(&mut buf, api.request_header_version(version)).map_err(malformed)?;
    let cid = header.correlation_id;
    debug!(?api, version, "transactional API refused");
    let body: Box<dyn ErasedEncodable> = match refusal(api, version, &mut buf).map_err(malformed)? {
        T::AddPartitionsToTxn(r) => Box::new(r),
        T::AddOffsetsToTxn(r) => Box::new(r),
        T::EndTxn(r) => Box::new(r),
        T::TxnOffsetCommit(r) => Box::new(r),
        T::WriteTxnMarkers(r) => Box::new(r),
        T::DescribeTransactions(r) => Box::new(r),
        T::ListTransactions(r) => Box::new(r),
    };
    Ok(Response::Frame(body.encode_frame(api, version, cid)?))
}
