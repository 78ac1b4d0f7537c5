//! The producer's record accumulator, sans IO: records go in per partition, batches come out
//! when full (`batch.size`) or old enough (`linger.ms`), as in the Java client's
//! `RecordAccumulator`. Time is an input; nothing here sleeps or touches a socket.

use bytes::Bytes;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Per-record overhead assumed when sizing batches (RecordBatch v2 record framing, roughly).
const RECORD_OVERHEAD: usize = 16;

/// A record waiting to be sent.
#[derive(Debug, Clone)]
pub struct PendingRecord {
    /// Optional key.
    pub key: Option<Bytes>,
    /// The value (bench header + payload).
    pub value: Bytes,
    /// Intended send time (the CO-correct start of its latency).
    pub intended: Instant,
    /// The producer's sequence number for reconciliation.
    pub sequence: u64,
}

impl PendingRecord {
    fn size(&self) -> usize {
        self.value.len() + self.key.as_ref().map_or(0, |k| k.len()) + RECORD_OVERHEAD
    }
}

/// A batch of records for one partition.
#[derive(Debug)]
pub struct Batch {
    /// Target partition.
    pub partition: i32,
    /// When the first record entered the batch.
    pub created: Instant,
    /// The records, in send order.
    pub records: Vec<PendingRecord>,
    /// Estimated encoded size.
    pub bytes: usize,
}

/// Batches records per partition by size and linger.
#[derive(Debug)]
pub struct Accumulator {
    batch_size: usize,
    linger: Duration,
    queues: Vec<VecDeque<Batch>>,
    buffered_bytes: usize,
    buffered_records: usize,
}

impl Accumulator {
    /// An accumulator for `partitions` partitions.
    pub fn new(partitions: usize, batch_size: usize, linger: Duration) -> Self {
        Accumulator {
            batch_size: batch_size.max(1),
            linger,
            queues: (0..partitions).map(|_| VecDeque::new()).collect(),
            buffered_bytes: 0,
            buffered_records: 0,
        }
    }

    /// Bytes held (not yet drained).
    pub fn buffered_bytes(&self) -> usize {
        self.buffered_bytes
    }

    /// Records held (not yet drained).
    pub fn buffered_records(&self) -> usize {
        self.buffered_records
    }

    /// Appends a record to the partition's open batch, opening a new one when it would overflow
    /// `batch.size` (a record larger than `batch.size` gets a batch of its own, as in Java).
    pub fn append(&mut self, partition: i32, record: PendingRecord, now: Instant) {
        let Some(queue) = self.queues.get_mut(partition as usize) else {
            debug_assert!(false, "partition {partition} out of range");
            return;
        };
        let size = record.size();
        self.buffered_bytes += size;
        self.buffered_records += 1;
        if let Some(last) = queue.back_mut() {
            if last.bytes + size <= self.batch_size {
                last.bytes += size;
                last.records.push(record);
                return;
            }
        }
        queue.push_back(Batch {
            partition,
            created: now,
            records: vec![record],
            bytes: size,
        });
    }

    /// Whether the partition's head batch may be sent at `now`.
    fn head_ready(&self, queue: &VecDeque<Batch>, now: Instant, flush: bool) -> bool {
        match queue.front() {
            None => false,
            Some(head) => {
                flush
                    || queue.len() > 1
                    || head.bytes >= self.batch_size
                    || now >= head.created + self.linger
            }
        }
    }

    /// Takes at most one ready batch per partition for which `may_send(partition)` is true.
    /// With `flush`, every non-empty partition is ready (used at the end of a run).
    pub fn drain_ready(
        &mut self,
        now: Instant,
        flush: bool,
        mut may_send: impl FnMut(i32) -> bool,
    ) -> Vec<Batch> {
        let mut out = Vec::new();
        for p in 0..self.queues.len() {
            if !self.head_ready(&self.queues[p], now, flush) || !may_send(p as i32) {
                continue;
            }
            if let Some(batch) = self.queues[p].pop_front() {
                self.buffered_bytes -= batch.bytes;
                self.buffered_records -= batch.records.len();
                out.push(batch);
            }
        }
        out
    }

    /// The earliest time a linger timer makes some batch ready (None if nothing is waiting on
    /// a timer).
    pub fn next_linger_deadline(&self) -> Option<Instant> {
        self.queues
            .iter()
            .filter_map(|q| q.front())
            .map(|b| b.created + self.linger)
            .min()
    }

    /// Whether any record is still held.
    pub fn is_empty(&self) -> bool {
        self.buffered_records == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(now: Instant, seq: u64, len: usize) -> PendingRecord {
        PendingRecord {
            key: None,
            value: Bytes::from(vec![0u8; len]),
            intended: now,
            sequence: seq,
        }
    }

    #[test]
    fn full_batches_are_ready_and_linger_releases_the_rest() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(2, 1000, Duration::from_millis(5));
        for i in 0..10 {
            acc.append(0, rec(t0, i, 200 - RECORD_OVERHEAD), t0);
        }
        // 5 records of 200 bytes per batch: two full batches, one drained per call.
        let ready = acc.drain_ready(t0, false, |_| true);
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].records.len(), 5);
        assert_eq!(ready[0].records[0].sequence, 0);
        let ready = acc.drain_ready(t0, false, |_| true);
        assert_eq!(ready.len(), 1);
        assert!(acc.is_empty());

        acc.append(1, rec(t0, 10, 10), t0);
        assert!(acc.drain_ready(t0, false, |_| true).is_empty());
        assert_eq!(
            acc.next_linger_deadline(),
            Some(t0 + Duration::from_millis(5))
        );
        let later = t0 + Duration::from_millis(5);
        let ready = acc.drain_ready(later, false, |_| true);
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].partition, 1);
        assert_eq!(acc.buffered_bytes(), 0);
    }

    #[test]
    fn may_send_holds_a_partition_back_and_flush_releases_all() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(2, 100, Duration::from_secs(10));
        acc.append(0, rec(t0, 0, 10), t0);
        acc.append(1, rec(t0, 1, 10), t0);
        assert!(acc.drain_ready(t0, true, |p| p != 0).len() == 1);
        assert_eq!(acc.buffered_records(), 1);
        assert_eq!(acc.drain_ready(t0, true, |_| true)[0].partition, 0);
    }

    #[test]
    fn oversized_record_gets_its_own_batch() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(1, 1, Duration::ZERO);
        acc.append(0, rec(t0, 0, 100), t0);
        acc.append(0, rec(t0, 1, 100), t0);
        let a = acc.drain_ready(t0, false, |_| true);
        let b = acc.drain_ready(t0, false, |_| true);
        assert_eq!((a[0].records.len(), b[0].records.len()), (1, 1));
    }
}
