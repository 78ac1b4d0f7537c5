//! Consumers by assignment: each consumer owns a set of partitions and long-polls their
//! leaders with Fetch, decoding RecordBatch v2 (any compression), recording end-to-end latency
//! from the intended send time in each value, and marking messages in the run's ledger.

use crate::client::cluster::FETCH_VERSIONS;
use crate::client::{ClientError, Connection};
use crate::clock;
use crate::payload::Header;
use crate::recorder::{new_histogram, record};
use crate::runner::Shared;
use bytes::{Buf, Bytes};
use hdrhistogram::Histogram;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ApiKey, BrokerId, FetchRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::RecordBatchDecoder;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Kafka's `fetch.max.bytes` default.
const FETCH_MAX_BYTES: i32 = 52_428_800;
/// Errors kept verbatim for the report.
const MAX_ERRORS_KEPT: usize = 10;

/// One consumer's assignment on one broker.
pub struct FetcherSpec {
    /// Consumer index (for client ids and logs).
    pub consumer: u32,
    /// Topic.
    pub topic: String,
    /// Broker address.
    pub addr: String,
    /// Partitions led by this broker and their start offsets.
    pub start_offsets: HashMap<i32, i64>,
    /// Run id to accept.
    pub run_id: u64,
    /// `fetch.max.wait.ms`.
    pub max_wait_ms: i32,
    /// `max.partition.fetch.bytes`.
    pub partition_max_bytes: i32,
}

/// What a fetcher hands back.
#[derive(Debug)]
pub struct FetcherResult {
    /// End-to-end latency from the intended send time, microseconds.
    pub e2e: Histogram<u64>,
    /// Records of this run read (including duplicates).
    pub records: u64,
    /// Records of other runs or unparseable values skipped.
    pub foreign: u64,
    /// First few errors.
    pub errors: Vec<String>,
}

/// Splits a Fetch `records` blob into complete batches; a trailing partial batch (which a
/// broker may return when it cuts at `max_bytes`) is dropped and fetched again next time.
pub fn split_batches(mut records: Bytes) -> Vec<Bytes> {
    let mut out = Vec::new();
    while records.len() >= 12 {
        let len = (&records[8..12]).get_i32();
        if len <= 0 {
            break;
        }
        let total = 12 + len as usize;
        if records.len() < total {
            break;
        }
        out.push(records.split_to(total));
    }
    out
}

/// Fetches until `stop` turns true; every loop iteration is bounded by the fetch wait plus a
/// timeout, so the fetcher notices `stop` promptly.
pub async fn run_fetcher(
    spec: FetcherSpec,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> FetcherResult {
    let mut result = FetcherResult {
        e2e: new_histogram(),
        records: 0,
        foreign: 0,
        errors: Vec::new(),
    };
    let mut offsets = spec.start_offsets.clone();
    let mut conn: Option<Connection> = None;
    let timeout = Duration::from_millis(spec.max_wait_ms.max(0) as u64) + Duration::from_secs(10);
    let note = |result: &mut FetcherResult, e: String| {
        if result.errors.len() < MAX_ERRORS_KEPT {
            tracing::warn!(consumer = spec.consumer, error = %e, "fetch failed");
            result.errors.push(e);
        }
    };
    while !*stop.borrow() {
        if conn.is_none() {
            let client_id = format!("sluice-bench-c{}", spec.consumer);
            let connect = Connection::connect(&spec.addr, &client_id);
            tokio::select! {
                c = connect => match c {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        note(&mut result, e.to_string());
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                },
                _ = stop.changed() => break,
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let mut parts: Vec<i32> = offsets.keys().copied().collect();
        parts.sort_unstable();
        let req = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(spec.max_wait_ms)
            .with_min_bytes(1)
            .with_max_bytes(FETCH_MAX_BYTES)
            .with_isolation_level(0)
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_string(spec.topic.clone())))
                .with_partitions(
                    parts
                        .iter()
                        .map(|p| {
                            FetchPartition::default()
                                .with_partition(*p)
                                .with_current_leader_epoch(-1)
                                .with_fetch_offset(offsets.get(p).copied().unwrap_or(0))
                                .with_last_fetched_epoch(-1)
                                .with_log_start_offset(-1)
                                .with_partition_max_bytes(spec.partition_max_bytes)
                        })
                        .collect(),
                )]);
        let addr = c.addr().to_string();
        let fetched: Result<_, ClientError> = async {
            let v = c
                .versions()
                .pick(&addr, ApiKey::Fetch, "Fetch", FETCH_VERSIONS)?;
            c.request::<FetchRequest>(&req, v, timeout).await
        }
        .await;
        let resp = match fetched {
            Ok(r) => r,
            Err(e) => {
                note(&mut result, e.to_string());
                conn = None;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let arrived_micros = clock::now_micros();
        let measure_from = clock::micros_at(shared.measure_from);
        if resp.error_code != 0 {
            note(&mut result, format!("fetch error code {}", resp.error_code));
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let mut got = 0u64;
        let mut bytes = 0u64;
        let mut interval = shared.lock_interval_e2e();
        for t in resp.responses {
            for p in t.partitions {
                if p.error_code != 0 {
                    drop(interval);
                    note(
                        &mut result,
                        format!(
                            "partition {}: error code {}",
                            p.partition_index, p.error_code
                        ),
                    );
                    interval = shared.lock_interval_e2e();
                    continue;
                }
                let Some(records) = p.records else { continue };
                let Some(next) = offsets.get(&p.partition_index).copied() else {
                    continue;
                };
                let mut new_next = next;
                for mut batch in split_batches(records) {
                    let set = match RecordBatchDecoder::decode(&mut batch) {
                        Ok(s) => s,
                        Err(e) => {
                            drop(interval);
                            note(
                                &mut result,
                                format!("decoding batch of partition {}: {e}", p.partition_index),
                            );
                            interval = shared.lock_interval_e2e();
                            break;
                        }
                    };
                    for r in set.records {
                        // Compressed batches come back whole: skip what was already read.
                        if r.offset < next || r.control {
                            continue;
                        }
                        new_next = new_next.max(r.offset + 1);
                        let Some(value) = r.value else {
                            result.foreign += 1;
                            continue;
                        };
                        match Header::parse(&value) {
                            Some(h) if h.run_id == spec.run_id => {
                                shared.ledger.consume(h.producer, h.sequence);
                                got += 1;
                                bytes += value.len() as u64;
                                let lat = arrived_micros.saturating_sub(h.intended_micros);
                                record(&mut interval, lat);
                                if h.intended_micros >= measure_from {
                                    record(&mut result.e2e, lat);
                                }
                            }
                            _ => result.foreign += 1,
                        }
                    }
                }
                offsets.insert(p.partition_index, new_next);
            }
        }
        drop(interval);
        result.records += got;
        shared.counters.consumed.fetch_add(got, Ordering::Relaxed);
        shared
            .counters
            .consumed_bytes
            .fetch_add(bytes, Ordering::Relaxed);
    }
    result
}

/// How long a fetcher loop may take to notice a stop request (for callers' deadlines).
pub fn stop_latency(max_wait_ms: i32) -> Duration {
    Duration::from_millis(max_wait_ms.max(0) as u64) + Duration::from_secs(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_drops_a_partial_trailing_batch() {
        let mut blob = Vec::new();
        for len in [20i32, 5] {
            blob.extend_from_slice(&7i64.to_be_bytes());
            blob.extend_from_slice(&len.to_be_bytes());
            blob.extend(std::iter::repeat(1u8).take(len as usize));
        }
        // A third batch cut short.
        blob.extend_from_slice(&9i64.to_be_bytes());
        blob.extend_from_slice(&100i32.to_be_bytes());
        blob.extend_from_slice(&[0u8; 10]);
        let parts = split_batches(Bytes::from(blob));
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].len(), 32);
        assert_eq!(parts[1].len(), 17);
    }
}
