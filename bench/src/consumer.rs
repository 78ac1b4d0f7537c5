//! The fetch path both consumer modes share: a [`Fetcher`] owns a set of partitions and
//! long-polls their leaders with Fetch, decoding RecordBatch v2 (any compression), recording
//! end-to-end latency from the intended send time in each value, and marking messages in the
//! run's ledger. [`run_consumer`] drives one by assignment; `group_consumer` drives one as a
//! member of a consumer group.

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
use sluice::security::client::Security;
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

/// One consumer: its assigned partitions, where they start, and where their leaders are
/// (in group mode: the leaders of every partition, and no start offsets).
pub struct ConsumerSpec {
    /// Consumer index (for client ids and logs).
    pub consumer: u32,
    /// Subscription index within the topic (each subscription reads every message).
    pub subscription: u32,
    /// Topic.
    pub topic: String,
    /// Broker id to address.
    pub brokers: HashMap<i32, String>,
    /// Partition to its leader broker id.
    pub leaders: HashMap<i32, i32>,
    /// Assigned partition to the offset to start reading from.
    pub start_offsets: HashMap<i32, i64>,
    /// Run id to accept.
    pub run_id: u64,
    /// `fetch.max.wait.ms`.
    pub max_wait_ms: i32,
    /// `max.partition.fetch.bytes`.
    pub partition_max_bytes: i32,
    /// TLS and SASL settings of every connection.
    pub security: Security,
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

/// Where a fetcher reads: the topic, its brokers, and the partitions it owns now. Both
/// consumer modes drive one: by assignment it owns a fixed set for the whole run; in a group
/// the membership hands partitions in and takes them back at each rebalance.
pub struct Fetcher {
    consumer: u32,
    subscription: u32,
    topic: String,
    brokers: HashMap<i32, String>,
    /// Leader of every partition of the topic this fetcher knows about.
    leaders: HashMap<i32, i32>,
    /// Owned partitions to their next offset to read (the fetch position).
    positions: HashMap<i32, i64>,
    /// Owned partitions whose offsets below the bound were read before by another member:
    /// reading them again is a replay after a rebalance, not a duplicate delivery.
    replay_below: HashMap<i32, i64>,
    run_id: u64,
    max_wait_ms: i32,
    partition_max_bytes: i32,
    security: Security,
    shared: Arc<Shared>,
    result: ConsumerResult,
    conns: HashMap<i32, Connection>,
    metadata_stale: bool,
    tasks: JoinSet<FetchDone>,
    outstanding: HashSet<i32>,
}

impl Fetcher {
    /// A fetcher owning `spec.start_offsets` (possibly none yet).
    pub fn new(spec: ConsumerSpec, shared: Arc<Shared>) -> Self {
        Fetcher {
            consumer: spec.consumer,
            subscription: spec.subscription,
            topic: spec.topic,
            brokers: spec.brokers,
            leaders: spec.leaders,
            positions: spec.start_offsets,
            replay_below: HashMap::new(),
            run_id: spec.run_id,
            max_wait_ms: spec.max_wait_ms,
            partition_max_bytes: spec.partition_max_bytes,
            security: spec.security,
            shared,
            result: ConsumerResult {
                e2e: new_histogram(),
                records: 0,
                foreign: 0,
                errors: Vec::new(),
            },
            conns: HashMap::new(),
            metadata_stale: false,
            tasks: JoinSet::new(),
            outstanding: HashSet::new(),
        }
    }

    /// Starts owning `partition` at `offset`; offsets below `replay_below` were consumed by
    /// a previous owner.
    pub fn assign(&mut self, partition: i32, offset: i64, replay_below: i64) {
        self.positions.insert(partition, offset);
        if replay_below > offset {
            self.replay_below.insert(partition, replay_below);
        }
    }

    /// Stops owning every partition and returns their positions. Fetches in flight are
    /// dropped unprocessed, so a position is exactly what was recorded as consumed.
    pub fn revoke_all(&mut self) -> HashMap<i32, i64> {
        // Dropping the set aborts its tasks; their responses are never processed.
        self.tasks = JoinSet::new();
        self.outstanding.clear();
        self.replay_below.clear();
        std::mem::take(&mut self.positions)
    }

    /// The positions of the owned partitions.
    pub fn positions(&self) -> &HashMap<i32, i64> {
        &self.positions
    }

    /// Records an error for the report (the first few are kept).
    pub fn note(&mut self, e: String) {
        if self.result.errors.len() < MAX_ERRORS_KEPT {
            tracing::warn!(consumer = self.consumer, error = %e, "consumer error");
            self.result.errors.push(e);
        }
    }

    /// Ends the fetcher and hands back what it measured.
    pub fn finish(mut self) -> ConsumerResult {
        self.tasks.abort_all();
        self.result
    }

    fn fetch_request(&self, partitions: &[i32]) -> FetchRequest {
        FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(self.max_wait_ms)
            .with_min_bytes(1)
            .with_max_bytes(FETCH_MAX_BYTES)
            .with_isolation_level(0)
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_string(self.topic.clone())))
                .with_partitions(
                    partitions
                        .iter()
                        .map(|p| {
                            FetchPartition::default()
                                .with_partition(*p)
                                .with_current_leader_epoch(-1)
                                .with_fetch_offset(self.positions.get(p).copied().unwrap_or(0))
                                .with_last_fetched_epoch(-1)
                                .with_log_start_offset(-1)
                                .with_partition_max_bytes(self.partition_max_bytes)
                        })
                        .collect(),
                )])
    }

    /// Leaders of the owned partitions, deduplicated; -1 when unknown.
    fn owned_leaders(&self) -> Vec<i32> {
        let mut out: Vec<i32> = self
            .positions
            .keys()
            .map(|p| self.leaders.get(p).copied().unwrap_or(-1))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Sends one Fetch to `broker` for the owned partitions it leads.
    async fn send_fetch(&mut self, broker: i32) -> Result<(), ClientError> {
        let mut parts: Vec<i32> = self
            .positions
            .keys()
            .filter(|p| self.leaders.get(p) == Some(&broker))
            .copied()
            .collect();
        parts.sort_unstable();
        let req = self.fetch_request(&parts);
        if !self.conns.contains_key(&broker) {
            let addr = self
                .brokers
                .get(&broker)
                .cloned()
                .ok_or_else(|| ClientError::Protocol {
                    addr: format!("broker {broker}"),
                    message: "no address for leader".into(),
                })?;
            let client_id = format!("sluice-bench-c{}", self.consumer);
            let c = Connection::connect(&addr, &client_id, &self.security).await?;
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
        let timeout = stop_latency(self.max_wait_ms);
        self.tasks.spawn(async move {
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
        let mut addrs: Vec<String> = self.brokers.values().cloned().collect();
        addrs.sort();
        for addr in addrs {
            let attempt = async {
                let mut c =
                    Connection::connect(&addr, "sluice-bench-metadata", &self.security).await?;
                cluster::metadata(&mut c, std::slice::from_ref(&self.topic)).await
            };
            let Ok(Ok(cl)) = tokio::time::timeout(Duration::from_secs(2), attempt).await else {
                continue;
            };
            let Some(parts) = cl.topics.get(&self.topic) else {
                continue;
            };
            for p in parts {
                self.leaders.insert(p.partition, p.leader);
            }
            self.brokers.extend(cl.brokers);
            // A partition without a leader (an election under way) is asked about again,
            // else its fetches would never resume.
            self.metadata_stale = parts
                .iter()
                .any(|p| p.leader < 0 && self.positions.contains_key(&p.partition));
            return;
        }
    }

    /// One round of the fetch loop: a Fetch to every leader of an owned partition that has
    /// none outstanding, then the first response processed, or nothing by `until` (or when
    /// `stop` changes). Each leader has at most one Fetch outstanding and gets the next as soon
    /// as its response is processed, as in the Java consumer's fetcher.
    pub async fn step(&mut self, until: tokio::time::Instant, stop: &mut watch::Receiver<bool>) {
        if self.metadata_stale && self.outstanding.is_empty() {
            self.refresh_metadata().await;
        }
        for b in self.owned_leaders() {
            if b < 0 || self.outstanding.contains(&b) || self.metadata_stale {
                continue;
            }
            match self.send_fetch(b).await {
                Ok(()) => {
                    self.outstanding.insert(b);
                }
                Err(e) => {
                    self.conns.remove(&b);
                    self.metadata_stale = true;
                    self.note(e.to_string());
                }
            }
        }
        // Nothing in flight (no partitions, or leaders unknown): retry after a short pause.
        let idle = tokio::time::Instant::now() + Duration::from_millis(100);
        let until = if self.outstanding.is_empty() {
            until.min(idle)
        } else {
            until
        };
        tokio::select! {
            Some(done) = self.tasks.join_next(), if !self.outstanding.is_empty() => match done {
                Ok(d) => {
                    self.outstanding.remove(&d.broker);
                    self.process(d);
                }
                Err(e) => {
                    if !e.is_cancelled() {
                        self.outstanding.clear();
                        self.note(format!("fetch task failed: {e}"));
                    }
                }
            },
            _ = stop.changed() => {}
            _ = tokio::time::sleep_until(until) => {}
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
        let measure_from = clock::micros_at(self.shared.measure_from());
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
                    // A partition revoked while its fetch was in flight is not read.
                    let Some(next) = self.positions.get(&p.partition_index).copied() else {
                        continue;
                    };
                    let replay_below = self
                        .replay_below
                        .get(&p.partition_index)
                        .copied()
                        .unwrap_or(i64::MIN);
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
                                Some(h) if h.run_id == self.run_id => {
                                    shared.ledger.consume_at(
                                        self.subscription,
                                        h.producer,
                                        h.sequence,
                                        r.offset < replay_below,
                                    );
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
                    debug_assert!(new_next >= next, "a fetch position never moves back");
                    self.positions.insert(p.partition_index, new_next);
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

/// Consumes the assigned partitions until `stop` turns true; every wait is bounded by the
/// fetch wait plus a timeout.
pub async fn run_consumer(
    spec: ConsumerSpec,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> ConsumerResult {
    let mut f = Fetcher::new(spec, shared);
    while !*stop.borrow() {
        let until = tokio::time::Instant::now() + Duration::from_secs(1);
        f.step(until, &mut stop).await;
    }
    f.finish()
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
