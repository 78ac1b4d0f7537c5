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
                // Only the group coordinator writes the offsets topic (Kafka's answer).
                Some(_) if name == OFFSETS_TOPIC => results.push(Some(err_out(
                    ec::INVALID_TOPIC_EXCEPTION,
                    "cannot append to internal topic __consumer_offsets",
                ))),
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

fn err_out(code: i16, msg: &str) -> ProduceOut {
    ProduceOut {
        error_code: code,
        error_message: Some(msg.to_string()),
        base_offset: -1,
        log_append_time_ms: -1,
        log_start_offset: -1,
    }
}
