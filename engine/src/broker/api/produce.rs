//! Produce: each partition's records go to its owner shard, which appends them through the
//! replication service (`broker::partition_io`); the answer waits for the request's acks.

use std::rc::Rc;

use bytes::BytesMut;
use kafka_protocol::messages as m;
use kafka_protocol::protocol::StrBytes;
use tokio::sync::oneshot;

use super::{group_by_shard, RequestError};
use crate::broker::partition_io::{ProduceIn, ProduceOut};
use crate::broker::protocol::error_code as ec;
use crate::broker::services::Services;
use crate::broker::shard::ShardLocal;
use crate::group::OFFSETS_TOPIC;

pub async fn produce(
    svc: &Rc<Services>,
    version: i16,
    req: m::ProduceRequest,
    submitted: Option<oneshot::Sender<()>>,
) -> Result<Option<m::ProduceResponse>, RequestError> {
    let acks = req.acks;
    let timeout_ms = req.timeout_ms;
    let image = svc.shard.image();
    let authz = super::acls::Authz::current(svc);
    // A transactional produce needs WRITE on its transactional id (Kafka's check).
    let txn_denied = req.transactional_id.as_ref().is_some_and(|id| {
        !authz.allows(
            crate::security::acl::AclOperation::Write,
            crate::security::acl::ResourceType::TransactionalId,
            id.0.as_str(),
        )
    });
    let mut results: Vec<Option<ProduceOut>> = Vec::new();
    let mut work = Vec::new();
    let mut layout = Vec::new();
    for topic in &req.topic_data {
        let name = topic.name.as_str().to_string();
        let known = image.topic(&name).cloned();
        let authorized = authz.allows_topic(crate::security::acl::AclOperation::Write, &name);
        let mut parts = Vec::new();
        for p in &topic.partition_data {
            let pos = results.len();
            parts.push((p.index, pos));
            let invalid_acks = !matches!(acks, -1..=1);
            match &known {
                _ if invalid_acks => results.push(Some(err_out(21, "acks must be -1, 0 or 1"))),
                _ if !authorized => results.push(Some(err_out(
                    super::acls::TOPIC_AUTHORIZATION_FAILED,
                    "not authorized to write to this topic",
                ))),
                _ if txn_denied => results.push(Some(err_out(
                    super::acls::TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
                    "not authorized to write for this transactional id",
                ))),
                // Only the coordinators write their topics (Kafka's answer).
                Some(_) if name == OFFSETS_TOPIC || name == crate::txn::TXN_TOPIC => {
                    results.push(Some(err_out(
                        ec::INVALID_TOPIC_EXCEPTION,
                        "cannot append to an internal topic",
                    )))
                }
                // Kafka's ProduceRequest rule: zstd needs Produce v7 (KIP-110), so a client
                // that negotiated less could not have meant it.
                Some(_)
                    if version < 7
                        && p.records.as_ref().is_some_and(|r| {
                            crate::storage::record_batch::uses_codec(
                                r,
                                crate::storage::record_batch::Compression::Zstd,
                            )
                        }) =>
                {
                    results.push(Some(err_out(
                        ec::UNSUPPORTED_COMPRESSION_TYPE,
                        "zstd compression needs Produce version 7 or later",
                    )))
                }
                Some(t) if (0..t.partitions).contains(&p.index) => {
                    results.push(None);
                    // The segment stores the client's bytes; storage needs them mutable to stamp
                    // the base offset, so the request's records are copied once here.
                    let records = p.records.as_ref().map(|r| BytesMut::from(&r[..]));
                    work.push((pos, name.clone(), p.index, records));
                }
                _ => results.push(Some(err_out(
                    ec::UNKNOWN_TOPIC_OR_PARTITION,
                    "unknown topic or partition",
                ))),
            }
        }
        layout.push((topic.name.clone(), parts));
    }
    if let Some(txn_id) = req.transactional_id.as_ref() {
        verify_transactional(svc, txn_id.0.as_str(), &mut work, &mut results).await;
    }
    let groups = group_by_shard(&svc.shard, work);
    let mut submissions = Vec::with_capacity(groups.len());
    let calls = groups.into_iter().map(|(owner, (positions, items))| {
        let items: Vec<ProduceIn> = items
            .into_iter()
            .map(|(topic, partition, records)| ProduceIn {
                topic,
                partition,
                records,
                acks,
                timeout_ms,
            })
            .collect();
        let (tx, rx) = oneshot::channel();
        submissions.push(rx);
        let replicas = svc.replicas.clone();
        async move {
            (
                positions,
                replicas
                    .call(owner, move |s| s.produce_local(items, Some(tx)))
                    .await,
            )
        }
    });
    let calls: Vec<_> = calls.collect();
    // The request counts as submitted once every owner has ordered its appends (or failed).
    let all_submitted = async move {
        for rx in submissions {
            let _ = rx.await;
        }
        if let Some(tx) = submitted {
            let _ = tx.send(());
        }
    };
    let (outcomes, ()) =
        futures_util::future::join(futures_util::future::join_all(calls), all_submitted).await;
    for (positions, outs) in outcomes {
        let outs = outs?;
        for (pos, out) in positions.into_iter().zip(outs) {
            results[pos] = Some(out);
        }
    }
    if acks == 0 {
        // No response to carry the error: close the connection instead, so the producer
        // refreshes its metadata (what Kafka does).
        if let Some(code) = results
            .iter()
            .flatten()
            .map(|o| o.error_code)
            .find(|c| *c != ec::NONE)
        {
            return Err(RequestError::AcksZeroFailed(code));
        }
        return Ok(None);
    }
    let mut resp = m::ProduceResponse::default();
    for (name, parts) in layout {
        let mut t = m::produce_response::TopicProduceResponse::default().with_name(name);
        for (index, pos) in parts {
            let out = results[pos]
                .take()
                .unwrap_or_else(|| err_out(ec::UNKNOWN_SERVER_ERROR, "lost result"));
            t.partition_responses.push(
                m::produce_response::PartitionProduceResponse::default()
                    .with_index(index)
                    .with_error_code(out.error_code)
                    .with_base_offset(out.base_offset)
                    .with_log_append_time_ms(out.log_append_time_ms)
                    .with_log_start_offset(out.log_start_offset)
                    .with_error_message(out.error_message.map(StrBytes::from_string)),
            );
        }
        resp.responses.push(t);
    }
    Ok(Some(resp))
}

/// A partition's records waiting to be produced: (position in the response, topic,
/// partition, records).
type Work = (usize, String, i32, Option<BytesMut>);

/// KIP-890 (part 1): a transactional batch goes in only on a partition the transaction
/// coordinator says is in the producer's ongoing transaction, so a late retry from a
/// transaction that already ended cannot open one that nobody will end. The others are
/// answered here and leave `work`.
async fn verify_transactional(
    svc: &Rc<Services>,
    transactional_id: &str,
    work: &mut Vec<Work>,
    results: &mut [Option<ProduceOut>],
) {
    let mut asks: std::collections::BTreeMap<(i64, i16), Vec<(String, i32)>> = Default::default();
    for (_, topic, p, records) in work.iter() {
        let Some(h) = records
            .as_deref()
            .and_then(|r| crate::storage::record_batch::BatchHeader::parse(r).ok())
        else {
            continue; // validated (and refused) by the append
        };
        if h.is_transactional() {
            asks.entry((h.producer_id, h.producer_epoch))
                .or_default()
                .push((topic.clone(), *p));
        }
    }
    let mut refused: std::collections::HashMap<(String, i32), i16> = Default::default();
    for ((pid, epoch), parts) in asks {
        for (part, code) in svc
            .transactions
            .verify(transactional_id, pid, epoch, parts)
            .await
        {
            if code != ec::NONE {
                refused.insert(part, code);
            }
        }
    }
    if refused.is_empty() {
        return;
    }
    work.retain(|(pos, topic, p, _)| {
        let Some(code) = refused.get(&(topic.clone(), *p)) else {
            return true;
        };
        let (code, msg) = match *code {
            crate::txn::codes::PRODUCER_FENCED | crate::txn::codes::INVALID_PRODUCER_EPOCH => (
                crate::txn::codes::INVALID_PRODUCER_EPOCH,
                "the producer was fenced by a newer epoch",
            ),
            crate::txn::codes::INVALID_PRODUCER_ID_MAPPING => (
                crate::txn::codes::INVALID_PRODUCER_ID_MAPPING,
                "the transactional id does not map to this producer id",
            ),
            crate::txn::codes::INVALID_TXN_STATE => (
                crate::txn::codes::INVALID_TXN_STATE,
                "the partition is not in the producer's ongoing transaction",
            ),
            // The coordinator is moving or loading: retriable, as Kafka answers.
            _ => (
                ec::NOT_ENOUGH_REPLICAS,
                "the transaction coordinator could not verify the transaction; retry",
            ),
        };
        results[*pos] = Some(err_out(code, msg));
        false
    });
}

fn err_out(code: i16, msg: &str) -> ProduceOut {
    ProduceOut {
        error_code: code,
        error_message: Some(msg.to_string()),
        base_offset: -1,
        log_append_time_ms: -1,
        log_start_offset: -1,
    }
}
