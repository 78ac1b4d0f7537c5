//! Producer tasks: open-loop fixed rate (latency from the intended send time) or closed-loop
//! max rate, batching through the [`Accumulator`], pipelining up to `max.in.flight` Produce
//! requests per broker.

use crate::accumulator::{Accumulator, Batch, PendingRecord};
use crate::client::cluster::PRODUCE_VERSIONS;
use crate::client::connection::{decode_response, ResponseFuture};
use crate::client::{cluster, ClientError, Connection, PartitionInfo};
use crate::clock;
use crate::murmur2::partition_for_key;
use crate::payload::ValueBuilder;
use crate::rate::RateSchedule;
use crate::recorder::{new_histogram, record};
use crate::runner::Shared;
use crate::timer::PreciseTimer;
use crate::workload::{CompressionCodec, KeyDistributor, Workload};
use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use rand::{Rng, SeedableRng};
use sluice::security::client::Security;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Number of distinct keys cycled through by `KEY_ROUND_ROBIN`.
const ROUND_ROBIN_KEYS: u64 = 10_000;
/// Kafka error codes after which the leader map is re-read: UNKNOWN_TOPIC_OR_PARTITION,
/// LEADER_NOT_AVAILABLE, NOT_LEADER_OR_FOLLOWER, FENCED_LEADER_EPOCH, UNKNOWN_LEADER_EPOCH,
/// NOT_ENOUGH_REPLICAS is not one (the leader is right, the ISR is short).
const LEADERSHIP_ERRORS: [i16; 5] = [3, 5, 6, 74, 75];
/// Minimum time between two Metadata refreshes (Java's `retry.backoff.ms` is 100 ms).
const METADATA_REFRESH_BACKOFF: Duration = Duration::from_millis(100);
/// Max-rate queue bound per in-flight request.
const MAX_RATE_QUEUE_PER_REQUEST: usize = 256 * 1024;
/// Errors kept verbatim for the report.
const MAX_ERRORS_KEPT: usize = 10;

/// Everything one producer needs.
pub struct ProducerSpec {
    /// Global producer index (also written into every value).
    pub index: u32,
    /// Topic to write.
    pub topic: String,
    /// The topic's partitions and leaders.
    pub partitions: Vec<PartitionInfo>,
    /// Broker id to address.
    pub brokers: HashMap<i32, String>,
    /// This producer's rate in msgs/s; `None` for max rate.
    pub rate: Option<f64>,
    /// When sending starts (the schedule's time zero).
    pub start: Instant,
    /// When sending stops.
    pub end: Instant,
    /// The workload (producer settings).
    pub workload: Arc<Workload>,
    /// Payload filler.
    pub template: Bytes,
    /// Run id stamped into values.
    pub run_id: u64,
    /// TLS and SASL settings of every connection.
    pub security: Security,
}

/// What a producer hands back at the end.
#[derive(Debug)]
pub struct ProducerResult {
    /// Publish latency from the intended send time (CO-corrected), microseconds.
    pub publish: Histogram<u64>,
    /// Publish latency from the actual send time (what a closed-loop tool reports).
    pub publish_uncorrected: Histogram<u64>,
    /// Messages written to a broker.
    pub sent: u64,
    /// Messages whose request failed or timed out.
    pub failed: u64,
    /// Messages generated but never sent (the run ended first).
    pub unsent: u64,
    /// First few errors.
    pub errors: Vec<String>,
}

struct SentBatch {
    partition: i32,
    records: Vec<(u64, Instant)>,
    bytes: u64,
}

struct Completion {
    broker: i32,
    sent_at: Instant,
    acked_at: Instant,
    version: i16,
    batches: Vec<SentBatch>,
    result: Result<Bytes, ClientError>,
}

fn compression(c: CompressionCodec) -> Compression {
    match c {
        CompressionCodec::None => Compression::None,
        CompressionCodec::Gzip => Compression::Gzip,
        CompressionCodec::Snappy => Compression::Snappy,
        CompressionCodec::Lz4 => Compression::Lz4,
        CompressionCodec::Zstd => Compression::Zstd,
    }
}

/// Encodes a batch as one RecordBatch v2 (CRC-32C and compression by kafka-protocol).
pub fn encode_batch(batch: &Batch, codec: CompressionCodec) -> anyhow::Result<Bytes> {
    let timestamp_ms = (clock::now_micros() / 1000) as i64;
    let records: Vec<Record> = batch
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // kafka-protocol starts a new batch whenever `offset - sequence` changes, and
            // writes the first record's sequence as baseSequence: -1, 0, 1... keeps one batch
            // with baseSequence -1 (no idempotence).
            sequence: i as i32 - 1,
            timestamp: timestamp_ms,
            key: r.key.clone(),
            value: Some(r.value.clone()),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::with_capacity(batch.bytes + 128);
    RecordBatchEncoder::encode(
        &mut buf,
        records.iter(),
        &RecordEncodeOptions {
            version: 2,
            compression: compression(codec),
        },
    )?;
    Ok(buf.freeze())
}

struct Producer {
    spec: ProducerSpec,
    shared: Arc<Shared>,
    conns: HashMap<i32, Connection>,
    in_flight: HashMap<i32, usize>,
    tasks: JoinSet<Completion>,
    result: ProducerResult,
    leaders: Vec<i32>,
    /// Set by a leadership error or a broken connection: re-read Metadata before sending.
    metadata_stale: bool,
    last_refresh: Option<Instant>,
}

/// Runs one producer until `spec.end`, then flushes and waits for outstanding acks (bounded by
/// the request timeout).
pub async fn run_producer(spec: ProducerSpec, shared: Arc<Shared>) -> ProducerResult {
    let leaders = spec.partitions.iter().map(|p| p.leader).collect();
    let mut p = Producer {
        spec,
        shared,
        conns: HashMap::new(),
        in_flight: HashMap::new(),
        tasks: JoinSet::new(),
        result: ProducerResult {
            publish: new_histogram(),
            publish_uncorrected: new_histogram(),
            sent: 0,
            failed: 0,
            unsent: 0,
            errors: Vec::new(),
        },
        leaders,
        metadata_stale: false,
        last_refresh: None,
    };
    p.run().await;
    p.result
}

impl Producer {
    fn note_error(&mut self, e: String) {
        if self.result.errors.len() < MAX_ERRORS_KEPT {
            tracing::warn!(producer = self.spec.index, error = %e, "produce failed");
            self.result.errors.push(e);
        }
    }

    async fn run(&mut self) {
        let w = self.spec.workload.clone();
        let nparts = self.spec.partitions.len().max(1);
        let linger = Duration::from_secs_f64(w.linger_ms / 1000.0);
        let mut acc = Accumulator::new(nparts, w.batch_size, linger);
        let values = ValueBuilder::new(
            self.spec.template.clone(),
            w.message_size,
            self.spec.run_id,
            self.spec.index,
        );
        let mut schedule = self
            .spec
            .rate
            .map(|r| RateSchedule::new(self.spec.start, r));
        // Max rate keeps a bounded queue, enough to fill every in-flight request with 256 KiB,
        // so that it measures the broker's saturation rather than the length of its own queue.
        let max_rate_queue = (w.max_in_flight * MAX_RATE_QUEUE_PER_REQUEST)
            .clamp(w.message_size * 4, w.buffer_memory);
        let mut seq: u64 = 0;
        let mut rr = self.spec.index as usize % nparts;
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.spec.run_id ^ self.spec.index as u64);
        let timeout = Duration::from_millis(w.request_timeout_ms);
        let hard_stop = self.spec.end + timeout + Duration::from_secs(5);
        // tokio's timers tick in whole milliseconds; see `timer` for why that matters here.
        let mut timer = PreciseTimer::new().ok();

        loop {
            let now = Instant::now();
            let producing = now < self.spec.end;
            if self.metadata_stale
                && self
                    .last_refresh
                    .is_none_or(|t| now.duration_since(t) >= METADATA_REFRESH_BACKOFF)
            {
                self.refresh_metadata().await;
            }
            // The schedule is cut at `end`: every message intended before it is sent, even
            // when the wake-up that notices it comes after `end`.
            let cutoff = now.min(self.spec.end - Duration::from_micros(1));
            if producing || schedule.is_some() {
                let limit = match schedule {
                    Some(_) => w.buffer_memory,
                    None => max_rate_queue,
                };
                while acc.buffered_bytes() < limit {
                    let intended = match schedule.as_mut() {
                        Some(s) => match s.take_due(cutoff) {
                            Some(t) => t,
                            None => break,
                        },
                        None if producing => now,
                        None => break,
                    };
                    let (key, partition) = match w.key_distributor {
                        KeyDistributor::NoKey => {
                            rr = (rr + 1) % nparts;
                            (None, rr as i32)
                        }
                        KeyDistributor::KeyRoundRobin => {
                            let k = Bytes::from(format!("key-{}", seq % ROUND_ROBIN_KEYS));
                            let p = partition_for_key(&k, nparts as u32) as i32;
                            (Some(k), p)
                        }
                        KeyDistributor::RandomNano => {
                            let k = Bytes::from(rng.gen::<u64>().to_string());
                            let p = partition_for_key(&k, nparts as u32) as i32;
                            (Some(k), p)
                        }
                    };
                    let value = values.build(clock::micros_at(intended), seq);
                    acc.append(
                        partition,
                        PendingRecord {
                            key,
                            value,
                            intended,
                            sequence: seq,
                        },
                        now,
                    );
                    seq += 1;
                }
            }

            // Send what is ready, one request per broker with at most one batch per partition.
            let flush = !producing;
            let max_in_flight = w.max_in_flight;
            let leaders = &self.leaders;
            let in_flight = &self.in_flight;
            let ready = acc.drain_ready(now, flush, |p| {
                let b = leaders.get(p as usize).copied().unwrap_or(-1);
                in_flight.get(&b).copied().unwrap_or(0) < max_in_flight
            });
            if !ready.is_empty() {
                let mut by_broker: HashMap<i32, Vec<Batch>> = HashMap::new();
                for b in ready {
                    let leader = self
                        .leaders
                        .get(b.partition as usize)
                        .copied()
                        .unwrap_or(-1);
                    by_broker.entry(leader).or_default().push(b);
                }
                for (broker, batches) in by_broker {
                    self.send(broker, batches, timeout).await;
                }
            }

            if !producing && acc.is_empty() && self.tasks.is_empty() {
                break;
            }
            if now > hard_stop {
                let abandoned = acc.buffered_records() as u64;
                self.result.unsent += abandoned;
                self.note_error(format!(
                    "gave up at the hard stop with {abandoned} records unsent and {} requests outstanding",
                    self.tasks.len()
                ));
                // Outstanding requests are neither acked nor failed by the broker: count them
                // as failed so the reconciliation does not expect them.
                while let Some(done) = self.tasks.try_join_next() {
                    if let Ok(c) = done {
                        self.complete(c);
                    }
                }
                self.tasks.abort_all();
                break;
            }

            // Sleep until the next message is due, a linger timer fires, or an ack arrives.
            // Deadlines already past are skipped: they are blocked on in-flight capacity or
            // buffer space, which only an ack frees.
            let mut wake = now + Duration::from_millis(50);
            if producing {
                wake = wake.min(self.spec.end);
                if let Some(s) = &schedule {
                    if acc.buffered_bytes() < w.buffer_memory {
                        wake = wake.min(s.next_intended().max(now));
                    }
                }
            }
            if let Some(d) = acc.next_linger_deadline() {
                if d > now {
                    wake = wake.min(d);
                }
            }
            if schedule.is_none() && producing && acc.buffered_bytes() < max_rate_queue {
                wake = now;
            }
            if wake <= now {
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                Some(done) = self.tasks.join_next() => {
                    match done {
                        Ok(c) => self.complete(c),
                        Err(e) => self.note_error(format!("produce task failed: {e}")),
                    }
                }
                _ = async {
                    match timer.as_mut() {
                        Some(t) => {
                            if t.sleep_until(wake).await.is_err() {
                                tokio::time::sleep_until(tokio::time::Instant::from_std(wake)).await;
                            }
                        }
                        None => tokio::time::sleep_until(tokio::time::Instant::from_std(wake)).await,
                    }
                } => {}
            }
        }
        debug_assert!(self.result.sent >= self.result.failed);
    }

    /// Re-reads partition leaders from any known broker (the Java client does this on
    /// NOT_LEADER_OR_FOLLOWER and on disconnects); failed messages are not retried. An
    /// answer naming no leader for some partition (a broker cut off from the cluster says
    /// so for the partitions it led) is used only when no other broker answers better.
    async fn refresh_metadata(&mut self) {
        self.last_refresh = Some(Instant::now());
        let mut addrs: Vec<String> = self.spec.brokers.values().cloned().collect();
        addrs.sort();
        let mut fallback = None;
        for addr in addrs {
            let attempt = async {
                let mut c =
                    Connection::connect(&addr, "sluice-bench-metadata", &self.spec.security)
                        .await?;
                cluster::metadata(&mut c, std::slice::from_ref(&self.spec.topic)).await
            };
            let Ok(Ok(cl)) = tokio::time::timeout(Duration::from_secs(2), attempt).await else {
                continue;
            };
            let Some(parts) = cl.topics.get(&self.spec.topic) else {
                continue;
            };
            if parts.len() != self.leaders.len() {
                continue;
            }
            let leaders: Vec<i32> = parts.iter().map(|p| p.leader).collect();
            if leaders.iter().any(|l| *l < 0) {
                fallback.get_or_insert((leaders, cl.brokers));
                continue;
            }
            self.leaders = leaders;
            self.spec.brokers.extend(cl.brokers);
            self.metadata_stale = false;
            tracing::info!(producer = self.spec.index, leaders = ?self.leaders, "metadata refreshed");
            return;
        }
        if let Some((leaders, brokers)) = fallback {
            self.leaders = leaders;
            self.spec.brokers.extend(brokers);
            self.metadata_stale = false;
            tracing::info!(producer = self.spec.index, leaders = ?self.leaders, "metadata refreshed (some partitions have no leader)");
        }
    }

    async fn connection(&mut self, broker: i32) -> Result<&mut Connection, ClientError> {
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
            let c = Connection::connect(
                &addr,
                &format!("sluice-bench-p{}", self.spec.index),
                &self.spec.security,
            )
            .await?;
            self.conns.insert(broker, c);
        }
        self.conns
            .get_mut(&broker)
            .ok_or_else(|| ClientError::Closed(format!("broker {broker}")))
    }

    async fn send(&mut self, broker: i32, batches: Vec<Batch>, timeout: Duration) {
        let w = self.spec.workload.clone();
        let n: u64 = batches.iter().map(|b| b.records.len() as u64).sum();
        let mut partition_data = Vec::with_capacity(batches.len());
        let mut sent = Vec::with_capacity(batches.len());
        for b in &batches {
            match encode_batch(b, w.compression) {
                Ok(records) => {
                    let bytes = records.len() as u64;
                    partition_data.push(
                        PartitionProduceData::default()
                            .with_index(b.partition)
                            .with_records(Some(records)),
                    );
                    sent.push(SentBatch {
                        partition: b.partition,
                        records: b.records.iter().map(|r| (r.sequence, r.intended)).collect(),
                        bytes,
                    });
                }
                Err(e) => {
                    self.result.sent += b.records.len() as u64;
                    self.result.failed += b.records.len() as u64;
                    self.note_error(format!("encoding batch: {e}"));
                }
            }
        }
        if sent.is_empty() {
            return;
        }
        let req = ProduceRequest::default()
            .with_acks(w.acks)
            .with_timeout_ms(w.request_timeout_ms.min(i32::MAX as u64) as i32)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(self.spec.topic.clone())))
                .with_partition_data(partition_data)]);
        let expect_response = w.acks != 0;
        let sent_at = Instant::now();
        let outcome: Result<(i16, Option<ResponseFuture>), ClientError> = async {
            let conn = self.connection(broker).await?;
            let addr = conn.addr().to_string();
            let v = conn
                .versions()
                .pick(&addr, ApiKey::Produce, "Produce", PRODUCE_VERSIONS)?;
            let fut = conn.send(&req, v, expect_response).await?;
            Ok((v, fut))
        }
        .await;
        let sent_count: u64 = sent.iter().map(|b| b.records.len() as u64).sum();
        self.result.sent += sent_count;
        debug_assert!(sent_count <= n);
        self.shared
            .counters
            .sent
            .fetch_add(sent_count, Ordering::Relaxed);
        match outcome {
            Err(e) => {
                self.conns.remove(&broker);
                self.metadata_stale = true;
                self.fail(sent_count, format!("sending to broker {broker}: {e}"));
            }
            Ok((version, None)) => {
                // acks=0: the write to the socket is the acknowledgement.
                let now = Instant::now();
                self.complete(Completion {
                    broker,
                    sent_at,
                    acked_at: now,
                    version,
                    batches: sent,
                    result: Ok(Bytes::new()),
                });
            }
            Ok((version, Some(fut))) => {
                *self.in_flight.entry(broker).or_default() += 1;
                self.tasks.spawn(async move {
                    let result = fut.wait(timeout).await;
                    Completion {
                        broker,
                        sent_at,
                        acked_at: Instant::now(),
                        version,
                        batches: sent,
                        result,
                    }
                });
            }
        }
    }

    fn fail(&mut self, n: u64, e: String) {
        self.result.failed += n;
        self.shared.counters.failed.fetch_add(n, Ordering::Relaxed);
        self.note_error(e);
    }

    fn complete(&mut self, c: Completion) {
        if let Some(n) = self.in_flight.get_mut(&c.broker) {
            *n = n.saturating_sub(1);
        }
        let acks_zero = self.spec.workload.acks == 0;
        let mut errors: HashMap<i32, i16> = HashMap::new();
        match c.result {
            Err(e) => {
                self.conns.remove(&c.broker);
                self.metadata_stale = true;
                let n = c.batches.iter().map(|b| b.records.len() as u64).sum();
                self.fail(n, format!("produce to broker {}: {e}", c.broker));
                return;
            }
            Ok(mut body) if !acks_zero => {
                let addr = format!("broker {}", c.broker);
                match decode_response::<ProduceRequest>(&addr, &mut body, c.version) {
                    Ok(resp) => {
                        for t in &resp.responses {
                            for p in &t.partition_responses {
                                errors.insert(p.index, p.error_code);
                            }
                        }
                    }
                    Err(e) => {
                        let n = c.batches.iter().map(|b| b.records.len() as u64).sum();
                        self.fail(n, e.to_string());
                        return;
                    }
                }
            }
            Ok(_) => {}
        }
        let measure_from = self.shared.measure_from();
        let mut interval = self.shared.lock_interval_publish();
        for b in &c.batches {
            let code = if acks_zero {
                0
            } else {
                // A partition missing from the response was not acknowledged.
                errors.get(&b.partition).copied().unwrap_or(-1)
            };
            if code != 0 {
                if LEADERSHIP_ERRORS.contains(&code) {
                    self.metadata_stale = true;
                }
                drop(interval);
                self.fail(
                    b.records.len() as u64,
                    format!(
                        "partition {} on broker {}: error code {code}",
                        b.partition, c.broker
                    ),
                );
                interval = self.shared.lock_interval_publish();
                continue;
            }
            self.shared
                .ledger
                .ack(self.spec.index, b.records.iter().map(|(s, _)| *s));
            let n = b.records.len() as u64;
            self.shared.counters.acked.fetch_add(n, Ordering::Relaxed);
            self.shared.counters.acked_bytes.fetch_add(
                n * self.spec.workload.message_size as u64,
                Ordering::Relaxed,
            );
            self.shared
                .counters
                .acked_wire_bytes
                .fetch_add(b.bytes, Ordering::Relaxed);
            for (_, intended) in &b.records {
                let corrected = c.acked_at.saturating_duration_since(*intended).as_micros() as u64;
                // The per-second series covers warm-up too; the run's histograms do not.
                record(&mut interval, corrected);
                if *intended < measure_from {
                    continue;
                }
                let actual = c.acked_at.saturating_duration_since(c.sent_at).as_micros() as u64;
                record(&mut self.result.publish, corrected);
                record(&mut self.result.publish_uncorrected, actual);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::RecordBatchDecoder;

    #[test]
    fn batches_round_trip_through_every_codec() {
        let t0 = Instant::now();
        let values = ValueBuilder::new(Bytes::from_static(b"sluice "), 300, 9, 1);
        for codec in [
            CompressionCodec::None,
            CompressionCodec::Gzip,
            CompressionCodec::Snappy,
            CompressionCodec::Lz4,
            CompressionCodec::Zstd,
        ] {
            let batch = Batch {
                partition: 3,
                created: t0,
                records: (0..5)
                    .map(|i| PendingRecord {
                        key: Some(Bytes::from(format!("k{i}"))),
                        value: values.build(1000 + i, i),
                        intended: t0,
                        sequence: i,
                    })
                    .collect(),
                bytes: 1600,
            };
            let mut encoded = encode_batch(&batch, codec).unwrap();
            // RecordBatch v2: magic 2 at byte 16, codec in the low 3 bits of the attributes.
            assert_eq!(encoded[16], 2);
            // One batch of 5 records, non-idempotent (baseSequence -1).
            assert_eq!(
                i32::from_be_bytes([encoded[53], encoded[54], encoded[55], encoded[56]]),
                -1
            );
            assert_eq!(
                i32::from_be_bytes([encoded[57], encoded[58], encoded[59], encoded[60]]),
                5
            );
            assert_eq!(encoded[22] & 0x07, compression(codec) as u8, "{codec:?}");
            let set = RecordBatchDecoder::decode(&mut encoded).unwrap();
            assert_eq!(set.records.len(), 5, "{codec:?}");
            for (i, r) in set.records.iter().enumerate() {
                assert_eq!(r.offset, i as i64);
                let h = crate::payload::Header::parse(r.value.as_ref().unwrap()).unwrap();
                assert_eq!(
                    (h.sequence, h.intended_micros, h.run_id),
                    (i as u64, 1000 + i as u64, 9)
                );
            }
        }
    }
}
