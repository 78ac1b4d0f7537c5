//! Consumers by assignment: each consumer owns a set of partitions and long-polls their
//! leaders with Fetch, decoding RecordBatch v2 (any compression), recording end-to-end latency
//! from the intended send time in each value, and marking messages in the run's ledger.

use crate::client::cluster::{self, FETCH_VERSIONS};
use crate::client::connection::decode_response;
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
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Kafka's `fetch.max.bytes` default.
const FETCH_MAX_BYTES: i32 = 52_428_800;
/// Errors kept verbatim for the report.
const MAX_ERRORS_KEPT: usize = 10;

/// One consumer: its assigned partitions, where they start, and where their leaders are.
pub struct ConsumerSpec {
    /// Consumer index (for client ids and logs).
    pub consumer: u32,
    /// Topic.
    pub topic: String,
    /// Broker id to address.
    pub brokers: HashMap<i32, String>,
    /// Assigned partition to its leader broker id.
    pub leaders: HashMap<i32, i32>,
    /// Assigned partition to the offset to start reading from.
    pub start_offsets: HashMap<i32, i64>,
    /// Run id to accept.
    pub run_id: u64,
    /// `fetch.max.wait.ms`.
    pub max_wait_ms: i32,
    /// `max.partition.fetch.bytes`.
    pub partition_max_bytes: i32,
}

/// What a consumer hands back.
#[derive(Debug)]
pub struct ConsumerResult {
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

/// Kafka error codes after which the leaders are re-read from Metadata.
const LEADERSHIP_ERRORS: [i16; 5] = [3, 5, 6, 74, 75];

struct FetchDone {
    broker: i32,
    version: i16,
    arrived_micros: u64,
    result: Result<Bytes, ClientError>,
}

struct Consumer {
    spec: ConsumerSpec,
    shared: Arc<Shared>,
    result: ConsumerResult,
    offsets: HashMap<i32, i64>,
    conns: HashMap<i32, Connection>,
    metadata_stale: bool,
}

impl Consumer {
    fn note(&mut self, e: String) {
        if self.result.errors.len() < MAX_ERRORS_KEPT {
            tracing::warn!(consumer = self.spec.consumer, error = %e, "fetch failed");
            self.result.errors.push(e);
        }
    }

    fn fetch_request(&self, partitions: &[i32]) -> FetchRequest {
        FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(self.spec.max_wait_ms)
            .with_min_bytes(1)
            .with_max_bytes(FETCH_MAX_BYTES)
            .with_isolation_level(0)
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_string(self.spec.topic.clone())))
                .with_partitions(
                    partitions
                        .iter()
                        .map(|p| {
                            FetchPartition::default()
                                .with_partition(*p)
                                .with_current_leader_epoch(-1)
                                .with_fetch_offset(self.offsets.get(p).copied().unwrap_or(0))
                                .with_last_fetched_epoch(-1)
                                .with_log_start_offset(-1)
                                .with_partition_max_bytes(self.spec.partition_max_bytes)
                        })
                        .collect(),
                )])
    }

    /// Sends one Fetch to `broker` for the assigned partitions it leads.
    async fn send_fetch(
        &mut self,
        broker: i32,
        tasks: &mut JoinSet<FetchDone>,
    ) -> Result<(), ClientError> {
        let mut parts: Vec<i32> = self
            .spec
            .leaders
            .iter()
            .filter(|(_, l)| **l == broker)
            .map(|(p, _)| *p)
            .collect();
        parts.sort_unstable();
        let req = self.fetch_request(&parts);
        if !self.conns.contains_key(&broker) {
            let addr =
                self.spec
                    .brokers
                    .get(&broker)
                    .cloned()
                    .ok_or_else(|| ClientError::Protocol {
                        addr: format!("broker {broker}"),
                        message: "no address for leader".into(),
                    })?;
            let client_id = format!("sluice-bench-c{}", self.spec.consumer);
            let c = Connection::connect(&addr, &client_id).await?;
            self.conns.insert(broker, c);
        }
        let Some(conn) = self.conns.get_mut(&broker) else {
            return Err(ClientError::Closed(format!("broker {broker}")));
        };
        let addr = conn.addr().to_string();
        let version = conn
            .versions()
            .pick(&addr, ApiKey::Fetch, "Fetch", FETCH_VERSIONS)?;
        let fut = conn
            .send(&req, version, true)
            .await?
            .ok_or_else(|| ClientError::Closed(addr.clone()))?;
        let timeout = stop_latency(self.spec.max_wait_ms);
        tasks.spawn(async move {
            let result = fut.wait(timeout).await;
            FetchDone {
                broker,
                version,
                arrived_micros: clock::now_micros(),
                result,
            }
        });
        Ok(())
    }

    async fn refresh_metadata(&mut self) {
        let mut addrs: Vec<String> = self.spec.brokers.values().cloned().collect();
        addrs.sort();
        for addr in addrs {
            let attempt = async {
                let mut c = Connection::connect(&addr, "sluice-bench-metadata").await?;
                cluster::metadata(&mut c, std::slice::from_ref(&self.spec.topic)).await
            };
            let Ok(Ok(cl)) = tokio::time::timeout(Duration::from_secs(2), attempt).await else {
                continue;
            };
            let Some(parts) = cl.topics.get(&self.spec.topic) else {
                continue;
            };
            for p in parts {
                if let Some(l) = self.spec.leaders.get_mut(&p.partition) {
                    *l = p.leader;
                }
            }
            self.spec.brokers.extend(cl.brokers);
            self.metadata_stale = false;
            return;
        }
    }

    fn process(&mut self, done: FetchDone) {
        let addr = format!("broker {}", done.broker);
        let resp = match done
            .result
            .and_then(|mut b| decode_response::<FetchRequest>(&addr, &mut b, done.version))
        {
            Ok(r) => r,
            Err(e) => {
                self.conns.remove(&done.broker);
                self.metadata_stale = true;
                self.note(e.to_string());
                return;
            }
        };
        if resp.error_code != 0 {
            self.note(format!("fetch error code {}", resp.error_code));
            return;
        }
        let measure_from = clock::micros_at(self.shared.measure_from);
        let shared = self.shared.clone();
        let mut got = 0u64;
        let mut bytes = 0u64;
        let mut errors = Vec::new();
        {
            let mut interval = shared.lock_interval_e2e();
            for t in resp.responses {
                for p in t.partitions {
                    if p.error_code != 0 {
                        if LEADERSHIP_ERRORS.contains(&p.error_code) {
                            self.metadata_stale = true;
                        }
                        errors.push(format!(
                            "partition {}: error code {}",
                            p.partition_index, p.error_code
                        ));
                        continue;
                    }
                    let Some(records) = p.records else { continue };
                    let Some(next) = self.offsets.get(&p.partition_index).copied() else {
                        continue;
                    };
                    let mut new_next = next;
                    for mut batch in split_batches(records) {
                        let set = match RecordBatchDecoder::decode(&mut batch) {
                            Ok(s) => s,
                            Err(e) => {
                                errors.push(format!(
                                    "decoding batch of partition {}: {e}",
                                    p.partition_index
                                ));
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
                                self.result.foreign += 1;
                                continue;
                            };
                            match Header::parse(&value) {
                                Some(h) if h.run_id == self.spec.run_id => {
                                    shared.ledger.consume(h.producer, h.sequence);
                                    got += 1;
                                    bytes += value.len() as u64;
                                    let lat = done.arrived_micros.saturating_sub(h.intended_micros);
                                    record(&mut interval, lat);
                                    if h.intended_micros >= measure_from {
                                        record(&mut self.result.e2e, lat);
                                    }
                                }
                                _ => self.result.foreign += 1,
                            }
                        }
                    }
                    self.offsets.insert(p.partition_index, new_next);
                }
            }
        }
        for e in errors {
            self.note(e);
        }
        self.result.records += got;
        shared.counters.consumed.fetch_add(got, Ordering::Relaxed);
        shared
            .counters
            .consumed_bytes
            .fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Consumes the assigned partitions until `stop` turns true. Each leader broker has at most
/// one Fetch outstanding and gets the next one as soon as its response is processed, as in the
/// Java consumer's fetcher; every wait is bounded by the fetch wait plus a timeout.
pub async fn run_consumer(
    spec: ConsumerSpec,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> ConsumerResult {
    let offsets = spec.start_offsets.clone();
    let mut c = Consumer {
        spec,
        shared,
        result: ConsumerResult {
            e2e: new_histogram(),
            records: 0,
            foreign: 0,
            errors: Vec::new(),
        },
        offsets,
        conns: HashMap::new(),
        metadata_stale: false,
    };
    let mut tasks: JoinSet<FetchDone> = JoinSet::new();
    let mut outstanding: HashSet<i32> = HashSet::new();
    while !*stop.borrow() {
        if c.metadata_stale && outstanding.is_empty() {
            c.refresh_metadata().await;
        }
        let mut leaders: Vec<i32> = c.spec.leaders.values().copied().collect();
        leaders.sort_unstable();
        leaders.dedup();
        for b in leaders {
            if b < 0 || outstanding.contains(&b) || c.metadata_stale {
                continue;
            }
            match c.send_fetch(b, &mut tasks).await {
                Ok(()) => {
                    outstanding.insert(b);
                }
                Err(e) => {
                    c.conns.remove(&b);
                    c.metadata_stale = true;
                    c.note(e.to_string());
                }
            }
        }
        tokio::select! {
            Some(done) = tasks.join_next() => match done {
                Ok(d) => {
                    outstanding.remove(&d.broker);
                    c.process(d);
                }
                Err(e) => {
                    outstanding.clear();
                    c.note(format!("fetch task failed: {e}"));
                }
            },
            _ = stop.changed() => break,
            _ = tokio::time::sleep(Duration::from_millis(100)), if outstanding.is_empty() => {}
        }
    }
    tasks.abort_all();
    c.result
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
            blob.extend(std::iter::repeat_n(1u8, len as usize));
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
