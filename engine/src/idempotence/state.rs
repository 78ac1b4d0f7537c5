//! Per-partition producer state, like Kafka's `ProducerStateManager`: for each producer id its
//! epoch and the metadata of its last [`NUM_BATCHES_TO_RETAIN`] batches, used to accept a
//! batch once, acknowledge its retries with the original offsets, and reject gaps and fenced
//! epochs.
//!
//! # What the shell must do (concurrency)
//!
//! [`ProducerStateTable::check`] runs before offsets are assigned and returns an
//! [`AppendTicket`]; [`ProducerStateTable::update`] records the batch with its base offset.
//! The shard must call `check`, assign the offsets and call `update` in one synchronous step
//! (no `.await` in between), as Kafka does under the partition's log lock: offsets are
//! assigned in memory before the write is submitted, so nothing else can slip in. The
//! ticket carries the producer entry's change stamp, and `update` refuses a stale ticket
//! ([`ProducerStateError::StaleTicket`]) instead of recording a batch against state it was
//! not checked against; the shell then checks again. A duplicate answers with the original
//! offsets, but its acknowledgement must wait like the original's (the original may not be
//! replicated yet): the shell acknowledges once the high watermark passes `last_offset`.
//! If the write of an accepted batch fails, the log is truncated and the table rebuilt with
//! [`ProducerStateTable::rebuild`].

use std::collections::{BTreeMap, VecDeque};

/// Kafka retains the metadata of this many batches per producer (max in-flight requests).
pub const NUM_BATCHES_TO_RETAIN: usize = 5;
/// `RecordBatch.NO_PRODUCER_ID`.
pub const NO_PRODUCER_ID: i64 = -1;
/// `RecordBatch.NO_PRODUCER_EPOCH`.
pub const NO_PRODUCER_EPOCH: i16 = -1;
/// Default `producer.id.expiration.ms` (1 day).
pub const DEFAULT_PRODUCER_ID_EXPIRATION_MS: i64 = 86_400_000;

/// Kafka error code OUT_OF_ORDER_SEQUENCE_NUMBER.
pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
/// Kafka error code INVALID_PRODUCER_EPOCH.
pub const INVALID_PRODUCER_EPOCH: i16 = 47;
/// Kafka error code INVALID_TXN_STATE.
pub const INVALID_TXN_STATE: i16 = 48;
/// Kafka error code TRANSACTION_COORDINATOR_FENCED.
pub const TRANSACTION_COORDINATOR_FENCED: i16 = 52;
/// No coordinator epoch recorded yet (Kafka's `RecordBatch.NO_PARTITION_LEADER_EPOCH`).
pub const NO_COORDINATOR_EPOCH: i32 = -1;

/// The producer fields of a record batch header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Producer id, -1 for a non-idempotent batch.
    pub producer_id: i64,
    /// Producer epoch.
    pub producer_epoch: i16,
    /// Sequence of the first record.
    pub base_sequence: i32,
    /// Offset delta of the last record (records - 1).
    pub last_offset_delta: i32,
    /// Max timestamp of the batch.
    pub max_timestamp_ms: i64,
    /// The batch carries the transactional attribute (part of an ongoing transaction).
    pub transactional: bool,
}

impl BatchHeader {
    /// Sequence of the last record, wrapping past `i32::MAX` to 0 as Kafka does.
    pub fn last_sequence(&self) -> i32 {
        increment_sequence(self.base_sequence, self.last_offset_delta)
    }
}

/// Length of a RecordBatch v2 header (up to and including the record count).
pub const RECORD_BATCH_HEADER_LEN: usize = 61;

/// Why a RecordBatch header could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchHeaderError {
    /// Fewer than 61 bytes.
    #[error("record batch header truncated ({0} bytes)")]
    Truncated(usize),
    /// Not magic 2.
    #[error("record batch magic {0} is not 2")]
    Magic(i8),
}

/// The producer fields of a RecordBatch v2 (`baseOffset`, `lastOffsetDelta`,
/// `maxTimestamp`, `producerId`, `producerEpoch`, `baseSequence`), for the produce path and
/// for replaying the log. The batch's CRC is the storage layer's business.
pub fn parse_record_batch_header(batch: &[u8]) -> Result<ReplayedBatch, BatchHeaderError> {
    let h = batch
        .get(..RECORD_BATCH_HEADER_LEN)
        .ok_or(BatchHeaderError::Truncated(batch.len()))?;
    let i64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[o..o + 8]);
        i64::from_be_bytes(b)
    };
    let i32_at = |o: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&h[o..o + 4]);
        i32::from_be_bytes(b)
    };
    let magic = h[16] as i8;
    if magic != 2 {
        return Err(BatchHeaderError::Magic(magic));
    }
    Ok(ReplayedBatch {
        header: BatchHeader {
            producer_id: i64_at(43),
            producer_epoch: i16::from_be_bytes([h[51], h[52]]),
            base_sequence: i32_at(53),
            last_offset_delta: i32_at(23),
            max_timestamp_ms: i64_at(35),
            transactional: i16::from_be_bytes([h[21], h[22]]) & 0x10 != 0,
        },
        base_offset: i64_at(0),
    })
}

/// `DefaultRecordBatch.incrementSequence`.
pub fn increment_sequence(sequence: i32, increment: i32) -> i32 {
    if sequence > i32::MAX - increment {
        increment - (i32::MAX - sequence) - 1
    } else {
        sequence + increment
    }
}

fn in_sequence(last: i32, next: i32) -> bool {
    next as i64 == last as i64 + 1 || (next == 0 && last == i32::MAX)
}

/// What the table remembers of one appended batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMetadata {
    /// First sequence.
    pub first_seq: i32,
    /// Last sequence.
    pub last_seq: i32,
    /// Offset of the first record.
    pub first_offset: i64,
    /// Offset of the last record.
    pub last_offset: i64,
    /// Max timestamp of the batch.
    pub timestamp_ms: i64,
}

/// One producer's state in one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerEntry {
    /// Producer id.
    pub producer_id: i64,
    /// Current epoch.
    pub epoch: i16,
    /// Last batches, oldest first, at most [`NUM_BATCHES_TO_RETAIN`].
    pub batches: VecDeque<BatchMetadata>,
    /// Timestamp of the last batch, for expiry.
    pub last_timestamp_ms: i64,
    /// Epoch of the transaction coordinator that wrote this producer's last marker.
    pub coordinator_epoch: i32,
    /// First offset of the producer's ongoing transaction, if one is open.
    pub current_txn_first_offset: Option<i64>,
    stamp: u64,
}

impl ProducerEntry {
    /// Creates an entry (used by snapshot decoding).
    pub fn new(
        producer_id: i64,
        epoch: i16,
        batches: VecDeque<BatchMetadata>,
        last_timestamp_ms: i64,
    ) -> Self {
        ProducerEntry {
            producer_id,
            epoch,
            batches,
            last_timestamp_ms,
            coordinator_epoch: NO_COORDINATOR_EPOCH,
            current_txn_first_offset: None,
            stamp: 0,
        }
    }

    /// Last sequence appended in the current epoch.
    pub fn last_seq(&self) -> Option<i32> {
        self.batches.back().map(|b| b.last_seq)
    }

    fn find_duplicate(&self, h: &BatchHeader) -> Option<BatchMetadata> {
        if h.producer_epoch != self.epoch {
            return None;
        }
        let last = h.last_sequence();
        self.batches
            .iter()
            .find(|b| b.first_seq == h.base_sequence && b.last_seq == last)
            .copied()
    }
}

/// Why a batch is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProducerStateError {
    /// A gap or a reordering: not the next sequence.
    #[error("out of order sequence for producer {producer_id}: expected {expected:?}, got {got}")]
    OutOfOrderSequence {
        /// Producer id.
        producer_id: i64,
        /// The sequence expected, if known.
        expected: Option<i32>,
        /// The sequence received.
        got: i32,
    },
    /// An epoch older than the producer's current one: a zombie producer.
    #[error("producer {producer_id} epoch {got} is older than current epoch {current}")]
    InvalidProducerEpoch {
        /// Producer id.
        producer_id: i64,
        /// Current epoch.
        current: i16,
        /// Epoch received.
        got: i16,
    },
    /// The producer's state changed between `check` and `update` (shell bug): check again.
    #[error("producer {0} state changed since the check")]
    StaleTicket(i64),
    /// A non-transactional batch while the producer has a transaction open, or a marker
    /// that is not a transaction marker.
    #[error("invalid transaction state for producer {producer_id}: {reason}")]
    InvalidTxnState {
        /// Producer id.
        producer_id: i64,
        /// What is wrong.
        reason: &'static str,
    },
    /// A marker from a transaction coordinator older than the one that wrote the last
    /// marker for this producer (Kafka's `TransactionCoordinatorFencedException`).
    #[error("producer {producer_id}: coordinator epoch {got} is older than {current}")]
    CoordinatorFenced {
        /// Producer id.
        producer_id: i64,
        /// Coordinator epoch of the last marker.
        current: i32,
        /// Coordinator epoch received.
        got: i32,
    },
}

impl ProducerStateError {
    /// The Kafka error code for the produce response.
    pub fn error_code(&self) -> i16 {
        match self {
            ProducerStateError::OutOfOrderSequence { .. } => OUT_OF_ORDER_SEQUENCE_NUMBER,
            ProducerStateError::InvalidProducerEpoch { .. } => INVALID_PRODUCER_EPOCH,
            // Retriable from the client's view; the shell should never let it escape.
            ProducerStateError::StaleTicket(_) => OUT_OF_ORDER_SEQUENCE_NUMBER,
            ProducerStateError::InvalidTxnState { .. } => INVALID_TXN_STATE,
            ProducerStateError::CoordinatorFenced { .. } => TRANSACTION_COORDINATOR_FENCED,
        }
    }
}

/// Permission to append a checked batch; hand it back to [`ProducerStateTable::update`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendTicket {
    header: BatchHeader,
    /// Stamp of the producer entry at check time, None if it had no entry.
    stamp: Option<u64>,
}

impl AppendTicket {
    /// The checked header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }
}

/// The verdict on a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckOutcome {
    /// No producer id: nothing to track.
    NotIdempotent,
    /// Append it, then call `update` with the ticket and its base offset.
    Append(AppendTicket),
    /// Already stored: acknowledge with these offsets and do not write.
    Duplicate(BatchMetadata),
}

/// A batch read back from the log, to rebuild the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayedBatch {
    /// Its header.
    pub header: BatchHeader,
    /// Its base offset.
    pub base_offset: i64,
}

/// Producer state of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerStateTable {
    producers: BTreeMap<i64, ProducerEntry>,
    /// The log offset up to which batches are reflected (exclusive): a snapshot's name.
    end_offset: i64,
    expiration_ms: i64,
    next_stamp: u64,
    /// Transactions whose marker is written but maybe not yet replicated (Kafka's
    /// `unreplicatedTxns`): they keep bounding the last stable offset until the high
    /// watermark passes their marker, since a truncation could still reopen them.
    unreplicated: Vec<CompletedTxn>,
}

impl ProducerStateTable {
    /// An empty table; `expiration_ms` is `producer.id.expiration.ms`.
    pub fn new(expiration_ms: i64) -> Self {
        ProducerStateTable {
            producers: BTreeMap::new(),
            end_offset: 0,
            expiration_ms,
            next_stamp: 1,
            unreplicated: Vec::new(),
        }
    }

    pub(crate) fn from_parts(
        producers: BTreeMap<i64, ProducerEntry>,
        end_offset: i64,
        expiration_ms: i64,
    ) -> Self {
        let mut table = ProducerStateTable {
            producers,
            end_offset,
            expiration_ms,
            next_stamp: 1,
            unreplicated: Vec::new(),
        };
        for e in table.producers.values_mut() {
            e.stamp = table.next_stamp;
            table.next_stamp += 1;
        }
        table
    }

    /// Offset after the last batch the table reflects.
    pub fn end_offset(&self) -> i64 {
        self.end_offset
    }

    /// The configured expiry.
    pub fn expiration_ms(&self) -> i64 {
        self.expiration_ms
    }

    /// The entry of a producer.
    pub fn entry(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    /// All entries by producer id.
    pub fn producers(&self) -> impl Iterator<Item = &ProducerEntry> {
        self.producers.values()
    }

    /// Number of producers tracked.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    /// True when no producer is tracked.
    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Validates a batch before offsets are assigned (Kafka's `analyzeAndValidateProducerState`
    /// for a client append).
    pub fn check(&self, h: &BatchHeader) -> Result<CheckOutcome, ProducerStateError> {
        if h.producer_id == NO_PRODUCER_ID {
            return Ok(CheckOutcome::NotIdempotent);
        }
        let Some(entry) = self.producers.get(&h.producer_id) else {
            // No state (new producer, or its state expired or was truncated away): since
            // KIP-360 Kafka accepts any first sequence rather than UNKNOWN_PRODUCER_ID.
            if h.base_sequence < 0 {
                return Err(ProducerStateError::OutOfOrderSequence {
                    producer_id: h.producer_id,
                    expected: None,
                    got: h.base_sequence,
                });
            }
            return Ok(CheckOutcome::Append(AppendTicket {
                header: *h,
                stamp: None,
            }));
        };
        if let Some(dup) = entry.find_duplicate(h) {
            return Ok(CheckOutcome::Duplicate(dup));
        }
        if h.producer_epoch < entry.epoch {
            return Err(ProducerStateError::InvalidProducerEpoch {
                producer_id: h.producer_id,
                current: entry.epoch,
                got: h.producer_epoch,
            });
        }
        if !h.transactional && entry.current_txn_first_offset.is_some() {
            // Kafka's `checkTransactionalState`: data outside the open transaction.
            return Err(ProducerStateError::InvalidTxnState {
                producer_id: h.producer_id,
                reason: "non-transactional batch while a transaction is open",
            });
        }
        let out_of_order = |expected| ProducerStateError::OutOfOrderSequence {
            producer_id: h.producer_id,
            expected,
            got: h.base_sequence,
        };
        if h.producer_epoch != entry.epoch {
            // A new epoch starts its sequences at 0.
            if h.base_sequence != 0 && entry.epoch != NO_PRODUCER_EPOCH {
                return Err(out_of_order(Some(0)));
            }
        } else {
            let last = entry.last_seq().unwrap_or(-1);
            if entry.epoch != NO_PRODUCER_EPOCH && !in_sequence(last, h.base_sequence) {
                return Err(out_of_order(Some(increment_sequence(last, 1))));
            }
        }
        Ok(CheckOutcome::Append(AppendTicket {
            header: *h,
            stamp: Some(entry.stamp),
        }))
    }

    /// Records a checked batch at `base_offset` (after offset assignment).
    pub fn update(
        &mut self,
        ticket: AppendTicket,
        base_offset: i64,
    ) -> Result<BatchMetadata, ProducerStateError> {
        let pid = ticket.header.producer_id;
        let current = self.producers.get(&pid).map(|e| e.stamp);
        if current != ticket.stamp {
            return Err(ProducerStateError::StaleTicket(pid));
        }
        debug_assert!(base_offset >= self.end_offset, "offsets go backwards");
        Ok(self.apply(&ticket.header, base_offset))
    }

    fn apply(&mut self, h: &BatchHeader, base_offset: i64) -> BatchMetadata {
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        let entry = self
            .producers
            .entry(h.producer_id)
            .or_insert_with(|| ProducerEntry {
                producer_id: h.producer_id,
                epoch: h.producer_epoch,
                batches: VecDeque::new(),
                last_timestamp_ms: h.max_timestamp_ms,
                coordinator_epoch: NO_COORDINATOR_EPOCH,
                current_txn_first_offset: None,
                stamp,
            });
        if entry.epoch != h.producer_epoch {
            // A new epoch forgets the old epoch's batches (they can no longer be retried).
            entry.epoch = h.producer_epoch;
            entry.batches.clear();
        }
        let meta = BatchMetadata {
            first_seq: h.base_sequence,
            last_seq: h.last_sequence(),
            first_offset: base_offset,
            last_offset: base_offset + h.last_offset_delta as i64,
            timestamp_ms: h.max_timestamp_ms,
        };
        entry.batches.push_back(meta);
        while entry.batches.len() > NUM_BATCHES_TO_RETAIN {
            entry.batches.pop_front();
        }
        entry.last_timestamp_ms = h.max_timestamp_ms;
        entry.stamp = stamp;
        if h.transactional && entry.current_txn_first_offset.is_none() {
            entry.current_txn_first_offset = Some(base_offset);
        }
        self.end_offset = self.end_offset.max(meta.last_offset + 1);
        meta
    }

    /// The change stamp of a producer's entry (None: no entry).
    pub(crate) fn stamp_of(&self, producer_id: i64) -> Option<u64> {
        self.producers.get(&producer_id).map(|e| e.stamp)
    }

    /// A table holding copies of the given producers' entries only (a scratch copy).
    pub(crate) fn subset(&self, producer_ids: impl Iterator<Item = i64>) -> Self {
        let mut producers = BTreeMap::new();
        for pid in producer_ids {
            if let Some(e) = self.producers.get(&pid) {
                producers.insert(pid, e.clone());
            }
        }
        ProducerStateTable {
            producers,
            end_offset: self.end_offset,
            expiration_ms: self.expiration_ms,
            next_stamp: self.next_stamp,
            unreplicated: Vec::new(),
        }
    }

    /// Records a batch that was checked against the current state.
    pub(crate) fn apply_checked(&mut self, h: &BatchHeader, base_offset: i64) -> BatchMetadata {
        self.apply(h, base_offset)
    }

    /// Moves the end offset forward (non-idempotent batches appended after the last tracked
    /// one); never backwards.
    pub fn advance_end_offset(&mut self, end_offset: i64) {
        self.end_offset = self.end_offset.max(end_offset);
    }

    /// Sets `producer.id.expiration.ms` (a broker config that can change at runtime).
    pub fn set_expiration_ms(&mut self, expiration_ms: i64) {
        self.expiration_ms = expiration_ms;
    }

    /// Forgets producers whose last batch ends below `log_start_offset` (Kafka's
    /// `truncateHead`: their batches were deleted by retention or DeleteRecords); returns how
    /// many.
    pub fn evict_below(&mut self, log_start_offset: i64) -> usize {
        let before = self.producers.len();
        self.producers.retain(|_, e| {
            e.batches
                .back()
                .is_some_and(|b| b.last_offset >= log_start_offset)
        });
        self.unreplicated
            .retain(|t| t.last_offset >= log_start_offset);
        before - self.producers.len()
    }

    /// An empty table starting at `offset` (the log was emptied and restarted there).
    pub fn reset_to(&mut self, offset: i64) {
        self.producers.clear();
        self.unreplicated.clear();
        self.end_offset = offset;
    }

    /// Applies a batch read back from the log, without validation: the log is the truth.
    pub fn replay(&mut self, batch: &ReplayedBatch) {
        if batch.header.producer_id == NO_PRODUCER_ID {
            self.end_offset = self
                .end_offset
                .max(batch.base_offset + batch.header.last_offset_delta as i64 + 1);
            return;
        }
        self.apply(&batch.header, batch.base_offset);
    }

    /// Rebuilds the table for a log ending at `log_end_offset` from the latest snapshot at or
    /// below it (if any) and the batches of the log after that snapshot. Used at start-up when
    /// the newest snapshot is missing, and after truncation (state above the new end is gone).
    pub fn rebuild(
        expiration_ms: i64,
        snapshot: Option<ProducerStateTable>,
        log: impl IntoIterator<Item = ReplayedBatch>,
        log_end_offset: i64,
    ) -> Self {
        let mut table = match snapshot {
            Some(s) if s.end_offset <= log_end_offset => {
                let mut s = s;
                s.expiration_ms = expiration_ms;
                s
            }
            _ => ProducerStateTable::new(expiration_ms),
        };
        let start = table.end_offset;
        for b in log {
            let last = b.base_offset + b.header.last_offset_delta as i64;
            if b.base_offset >= start && last < log_end_offset {
                table.replay(&b);
            }
        }
        table.end_offset = table.end_offset.max(start);
        table
    }

    /// Removes producers idle for `producer.id.expiration.ms`; returns how many.
    pub fn tick(&mut self, now_ms: i64) -> usize {
        let before = self.producers.len();
        let expiration = self.expiration_ms;
        // A producer with an open transaction never expires (Kafka's `isProducerExpired`):
        // forgetting it would lose the transaction's first offset and with it the LSO.
        self.producers.retain(|_, e| {
            e.current_txn_first_offset.is_some()
                || now_ms.saturating_sub(e.last_timestamp_ms) < expiration
        });
        before - self.producers.len()
    }
}

/// A transaction ended by a marker (Kafka's `CompletedTxn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompletedTxn {
    /// Producer id.
    pub producer_id: i64,
    /// First offset of the transaction's data (the marker's offset when it had none).
    pub first_offset: i64,
    /// Offset of the marker.
    pub last_offset: i64,
    /// ABORT (true) or COMMIT.
    pub aborted: bool,
}

/// A transaction marker as the producer state needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnMarker {
    /// Producer id of the batch.
    pub producer_id: i64,
    /// Producer epoch of the batch.
    pub producer_epoch: i16,
    /// Epoch of the coordinator that wrote it (from the control record's value).
    pub coordinator_epoch: i32,
    /// ABORT (true) or COMMIT.
    pub aborted: bool,
    /// Timestamp of the marker batch.
    pub timestamp_ms: i64,
}

impl ProducerStateTable {
    /// Checks a marker before its offset is assigned, as Kafka's `appendEndTxnMarker` does:
    /// an epoch older than the producer's is fenced (INVALID_PRODUCER_EPOCH), and so is a
    /// coordinator epoch older than the one of the producer's last marker.
    pub fn check_marker(&self, m: &TxnMarker) -> Result<(), ProducerStateError> {
        if m.producer_id == NO_PRODUCER_ID {
            return Err(ProducerStateError::InvalidTxnState {
                producer_id: m.producer_id,
                reason: "a transaction marker needs a producer id",
            });
        }
        let Some(entry) = self.producers.get(&m.producer_id) else {
            return Ok(());
        };
        if m.producer_epoch < entry.epoch {
            return Err(ProducerStateError::InvalidProducerEpoch {
                producer_id: m.producer_id,
                current: entry.epoch,
                got: m.producer_epoch,
            });
        }
        if m.coordinator_epoch < entry.coordinator_epoch {
            return Err(ProducerStateError::CoordinatorFenced {
                producer_id: m.producer_id,
                current: entry.coordinator_epoch,
                got: m.coordinator_epoch,
            });
        }
        Ok(())
    }

    /// Records a marker at `offset` (checked by [`Self::check_marker`] on a leader, taken as
    /// the truth on replay): the producer's open transaction, if any, is complete. Returns
    /// it, with the LSO to store in an aborted-transaction index entry.
    pub fn apply_marker(&mut self, m: &TxnMarker, offset: i64) -> (CompletedTxn, i64) {
        debug_assert!(offset >= self.end_offset, "a marker below the table's end");
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        // Kafka's `lastStableOffset(completedTxn)`: the first offset of another producer's
        // open transaction, or right after the marker.
        let lso = self
            .producers
            .values()
            .filter(|e| e.producer_id != m.producer_id)
            .filter_map(|e| e.current_txn_first_offset)
            .min()
            .unwrap_or(offset + 1);
        let entry = self.producers.entry(m.producer_id).or_insert_with(|| {
            ProducerEntry::new(
                m.producer_id,
                m.producer_epoch,
                VecDeque::new(),
                m.timestamp_ms,
            )
        });
        if entry.epoch != m.producer_epoch {
            entry.epoch = m.producer_epoch;
            entry.batches.clear();
        }
        entry.coordinator_epoch = m.coordinator_epoch;
        entry.last_timestamp_ms = m.timestamp_ms;
        entry.stamp = stamp;
        let first_offset = entry.current_txn_first_offset.take().unwrap_or(offset);
        let txn = CompletedTxn {
            producer_id: m.producer_id,
            first_offset,
            last_offset: offset,
            aborted: m.aborted,
        };
        self.unreplicated.push(txn);
        self.end_offset = self.end_offset.max(offset + 1);
        (txn, lso)
    }

    /// Forgets completed transactions whose marker is below the high watermark: they can no
    /// longer be truncated away, so they stop bounding the LSO.
    pub fn on_high_watermark(&mut self, high_watermark: i64) {
        self.unreplicated
            .retain(|t| t.last_offset >= high_watermark);
    }

    /// The first offset that may still belong to an undecided transaction: the smallest
    /// first offset of the open transactions and of the completed ones whose marker is not
    /// known to be replicated. None: every transaction is decided.
    pub fn first_unstable_offset(&self) -> Option<i64> {
        let open = self
            .producers
            .values()
            .filter_map(|e| e.current_txn_first_offset);
        let unreplicated = self.unreplicated.iter().map(|t| t.first_offset);
        open.chain(unreplicated).min()
    }

    /// Kafka's last stable offset for a high watermark: `min(first unstable offset, hw)`.
    /// Prunes the unreplicated transactions the high watermark passed.
    pub fn last_stable_offset(&mut self, high_watermark: i64) -> i64 {
        self.on_high_watermark(high_watermark);
        self.first_unstable_offset()
            .map_or(high_watermark, |o| o.min(high_watermark))
    }

    /// The open transactions as (producer id, first offset), by producer id.
    pub fn open_transactions(&self) -> Vec<(i64, i64)> {
        self.producers
            .values()
            .filter_map(|e| e.current_txn_first_offset.map(|o| (e.producer_id, o)))
            .collect()
    }
}

/// Snapshot offsets to load and delete when truncating to `offset`: the latest snapshot at or
/// below it, and those above it (now describing data that no longer exists).
pub fn snapshots_for_truncation(snapshot_offsets: &[i64], offset: i64) -> (Option<i64>, Vec<i64>) {
    let keep = snapshot_offsets
        .iter()
        .copied()
        .filter(|o| *o <= offset)
        .max();
    let mut delete: Vec<i64> = snapshot_offsets
        .iter()
        .copied()
        .filter(|o| *o > offset)
        .collect();
    delete.sort_unstable();
    (keep, delete)
}

/// Snapshots that describe only data below the log start offset (deleted by retention),
/// which Kafka removes (`deleteSnapshotsBefore(logStartOffset)`); the newest one is always
/// kept so a restart need not replay the whole log.
pub fn snapshots_below_log_start(snapshot_offsets: &[i64], log_start_offset: i64) -> Vec<i64> {
    let newest = snapshot_offsets.iter().copied().max();
    let mut old: Vec<i64> = snapshot_offsets
        .iter()
        .copied()
        .filter(|o| *o < log_start_offset && Some(*o) != newest)
        .collect();
    old.sort_unstable();
    old
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn batch(pid: i64, epoch: i16, seq: i32, count: i32) -> BatchHeader {
        BatchHeader {
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            last_offset_delta: count - 1,
            max_timestamp_ms: 1_000,
            transactional: false,
        }
    }

    /// Check + update as the shard does; returns the base offset or the duplicate's.
    fn append(
        t: &mut ProducerStateTable,
        next_offset: &mut i64,
        h: BatchHeader,
    ) -> Result<(i64, bool), ProducerStateError> {
        match t.check(&h)? {
            CheckOutcome::Append(ticket) => {
                let base = *next_offset;
                *next_offset += h.last_offset_delta as i64 + 1;
                t.update(ticket, base)?;
                Ok((base, false))
            }
            CheckOutcome::Duplicate(meta) => Ok((meta.first_offset, true)),
            CheckOutcome::NotIdempotent => {
                let base = *next_offset;
                *next_offset += h.last_offset_delta as i64 + 1;
                Ok((base, false))
            }
        }
    }

    fn txn(pid: i64, seq: i32, count: i32) -> BatchHeader {
        BatchHeader {
            transactional: true,
            ..batch(pid, 0, seq, count)
        }
    }

    fn end(pid: i64, epoch: i16, coordinator_epoch: i32, aborted: bool) -> TxnMarker {
        TxnMarker {
            producer_id: pid,
            producer_epoch: epoch,
            coordinator_epoch,
            aborted,
            timestamp_ms: 2_000,
        }
    }

    #[test]
    fn open_transactions_bound_the_lso_until_their_marker_is_replicated() {
        let mut t = ProducerStateTable::new(DEFAULT_PRODUCER_ID_EXPIRATION_MS);
        let mut next = 0;
        assert_eq!(t.last_stable_offset(0), 0);
        append(&mut t, &mut next, txn(1, 0, 2)).unwrap(); // 0..2
        append(&mut t, &mut next, batch(9, 0, 0, 1)).unwrap(); // 2
        append(&mut t, &mut next, txn(2, 0, 2)).unwrap(); // 3..5
        append(&mut t, &mut next, txn(1, 2, 1)).unwrap(); // 5
        assert_eq!(t.first_unstable_offset(), Some(0));
        assert_eq!(t.last_stable_offset(6), 0);
        // Data outside the open transaction is refused.
        assert_eq!(
            t.check(&batch(1, 0, 3, 1)).unwrap_err().error_code(),
            INVALID_TXN_STATE
        );
        t.check_marker(&end(1, 0, 0, false)).unwrap();
        let (done, lso) = t.apply_marker(&end(1, 0, 0, false), 6);
        assert_eq!(
            done,
            CompletedTxn {
                producer_id: 1,
                first_offset: 0,
                last_offset: 6,
                aborted: false
            }
        );
        // The entry's LSO is producer 2's open transaction.
        assert_eq!(lso, 3);
        // Until the high watermark passes the marker, the completed transaction still counts.
        assert_eq!(t.last_stable_offset(6), 0);
        assert_eq!(t.last_stable_offset(7), 3);
        let (done, lso) = t.apply_marker(&end(2, 0, 0, true), 7);
        assert_eq!((done.first_offset, done.aborted, lso), (3, true, 8));
        assert_eq!(t.last_stable_offset(8), 8);
        assert_eq!(t.first_unstable_offset(), None);
        // A marker without data completes an empty transaction at its own offset.
        let (done, _) = t.apply_marker(&end(5, 0, 0, true), 8);
        assert_eq!((done.first_offset, done.last_offset), (8, 8));
    }

    #[test]
    fn stale_markers_are_fenced_and_open_transactions_never_expire() {
        let mut t = ProducerStateTable::new(1_000);
        let mut next = 0;
        append(
            &mut t,
            &mut next,
            BatchHeader {
                producer_epoch: 3,
                ..txn(1, 0, 1)
            },
        )
        .unwrap();
        assert_eq!(
            t.check_marker(&end(1, 2, 0, true))
                .unwrap_err()
                .error_code(),
            INVALID_PRODUCER_EPOCH
        );
        t.apply_marker(&end(1, 3, 4, true), 1);
        assert_eq!(
            t.check_marker(&end(1, 3, 3, false))
                .unwrap_err()
                .error_code(),
            TRANSACTION_COORDINATOR_FENCED
        );
        t.check_marker(&end(1, 3, 4, false)).unwrap();
        // A newer producer epoch is accepted and forgets the old epoch's batches.
        t.check_marker(&end(1, 4, 4, false)).unwrap();
        let mut next = 2;
        append(
            &mut t,
            &mut next,
            BatchHeader {
                producer_epoch: 3,
                ..txn(2, 0, 1)
            },
        )
        .unwrap();
        append(
            &mut t,
            &mut next,
            BatchHeader {
                producer_epoch: 3,
                ..batch(3, 0, 0, 1)
            },
        )
        .unwrap();
        // Producer 3 expires, producer 2 (open transaction) does not; producer 1 expires.
        assert_eq!(t.tick(1_000_000), 2);
        assert_eq!(t.open_transactions(), vec![(2, 2)]);
        assert!(t.entry(2).is_some());
    }

    #[test]
    fn parses_record_batch_v2_header() {
        let mut b = vec![0u8; RECORD_BATCH_HEADER_LEN + 3];
        b[..8].copy_from_slice(&1234i64.to_be_bytes());
        b[16] = 2;
        b[23..27].copy_from_slice(&4i32.to_be_bytes());
        b[35..43].copy_from_slice(&99i64.to_be_bytes());
        b[43..51].copy_from_slice(&7i64.to_be_bytes());
        b[51..53].copy_from_slice(&3i16.to_be_bytes());
        b[53..57].copy_from_slice(&10i32.to_be_bytes());
        let r = parse_record_batch_header(&b).unwrap();
        assert_eq!(r.base_offset, 1234);
        assert_eq!(
            r.header,
            BatchHeader {
                producer_id: 7,
                producer_epoch: 3,
                base_sequence: 10,
                last_offset_delta: 4,
                max_timestamp_ms: 99,
                transactional: false,
            }
        );
        assert_eq!(r.header.last_sequence(), 14);
        assert_eq!(
            parse_record_batch_header(&b[..60]),
            Err(BatchHeaderError::Truncated(60))
        );
        b[16] = 1;
        assert_eq!(
            parse_record_batch_header(&b),
            Err(BatchHeaderError::Magic(1))
        );
    }

    #[test]
    fn in_order_batches_are_accepted_and_retries_are_duplicates() {
        let mut t = ProducerStateTable::new(DEFAULT_PRODUCER_ID_EXPIRATION_MS);
        let mut next = 0;
        assert_eq!(append(&mut t, &mut next, batch(7, 0, 0, 3)), Ok((0, false)));
        assert_eq!(append(&mut t, &mut next, batch(7, 0, 3, 2)), Ok((3, false)));
        // Retry of the first batch: original offsets, nothing written.
        assert_eq!(append(&mut t, &mut next, batch(7, 0, 0, 3)), Ok((0, true)));
        assert_eq!(next, 5);
        let e = t.entry(7).unwrap();
        assert_eq!(e.last_seq(), Some(4));
        assert_eq!(e.batches[1].last_offset, 4);
        assert_eq!(t.end_offset(), 5);
    }

    #[test]
    fn gap_is_out_of_order() {
        let mut t = ProducerStateTable::new(DEFAULT_PRODUCER_ID_EXPIRATION_MS);
        let mut next = 0;
        append(&mut t, &mut next, batch(1, 0, 0, 1)).unwrap();
        let err = t.check(&batch(1, 0, 2, 1)).unwrap_err();
        assert_eq!(err.error_code(), OUT_OF_ORDER_SEQUENCE_NUMBER);
        assert_eq!(
            err,
            ProducerStateError::OutOfOrderSequence {
                producer_id: 1,
                expected: Some(1),
                got: 2
            }
        );
        // A retry of a batch older than the retained five is out of order, not a duplicate.
        for s in 1..7 {
            append(&mut t, &mut next, batch(1, 0, s, 1)).unwrap();
        }
        assert!(t.check(&batch(1, 0, 0, 1)).is_err());
        assert!(matches!(
            t.check(&batch(1, 0, 2, 1)),
            Ok(CheckOutcome::Duplicate(_))
        ));
        // Overlapping but not identical range: out of order.
        assert!(t.check(&batch(1, 0, 5, 3)).is_err());
    }

    #[test]
    fn old_epoch_is_fenced_and_new_epoch_restarts_at_zero() {
        let mut t = ProducerStateTable::new(DEFAULT_PRODUCER_ID_EXPIRATION_MS);
        let mut next = 0;
        append(&mut t, &mut next, batch(1, 3, 0, 1)).unwrap();
        let err = t.check(&batch(1, 2, 1, 1)).unwrap_err();
        assert_eq!(err.error_code(), INVALID_PRODUCER_EPOCH);
        // Epoch bump (KIP-360, done locally by the idempotent client) must start at 0.
        assert_eq!(
            t.check(&batch(1, 4, 5, 1)).unwrap_err().error_code(),
            OUT_OF_ORDER_SEQUENCE_NUMBER
        );
        assert_eq!(append(&mut t, &mut next, batch(1, 4, 0, 1)), Ok((1, false)));
        assert_eq!(
            t.entry(1).unwrap().batches.len(),
            1,
            "old epoch's batches dropped"
        );
        // The old epoch's batch retried after the bump: fenced, not a duplicate.
        assert_eq!(
            t.check(&batch(1, 3, 0, 1)).unwrap_err().error_code(),
            INVALID_PRODUCER_EPOCH
        );
    }

    #[test]
    fn unknown_producer_any_sequence_accepted() {
        let t = ProducerStateTable::new(DEFAULT_PRODUCER_ID_EXPIRATION_MS);
        assert!(matches!(
            t.check(&batch(9, 0, 0, 1)),
            Ok(CheckOutcome::Append(_))
        ));
        assert!(matches!(
            t.check(&batch(9, 0, 42, 1)),
            Ok(CheckOutcome::Append(_))
        ));
        assert!(t.check(&batch(9, 0, -5, 1)).is_err());
        assert_eq!(
            t.check(&batch(NO_PRODUCER_ID, -1, -1, 1)),
            Ok(CheckOutcome::NotIdempotent)
        );
    }

    #[test]
    fn sequence_wraps_at_i32_max() {
        assert_eq!(batch(1, 0, i32::MAX - 1, 4).last_sequence(), 1);
        let mut t = ProducerStateTable::new(DEFAULT_PRODUCER_ID_EXPIRATION_MS);
        let mut next = 0;
        append(&mut t, &mut next, batch(1, 0, i32::MAX - 2, 3)).unwrap();
        assert_eq!(t.entry(1).unwrap().last_seq(), Some(i32::MAX));
        assert_eq!(append(&mut t, &mut next, batch(1, 0, 0, 2)), Ok((3, false)));
        // A batch that itself crosses the wrap.
        let mut t = ProducerStateTable::new(DEFAULT_PRODUCER_ID_EXPIRATION_MS);
        append(&mut t, &mut next, batch(2, 0, i32::MAX - 1, 4)).unwrap();
        assert!(matches!(
            t.check(&batch(2, 0, 2, 1)),
            Ok(CheckOutcome::Append(_))
        ));
        assert!(matches!(
            t.check(&batch(2, 0, i32::MAX - 1, 4)),
            Ok(CheckOutcome::Duplicate(_))
        ));
    }

    #[test]
    fn stale_ticket_is_refused() {
        let mut t = ProducerStateTable::new(DEFAULT_PRODUCER_ID_EXPIRATION_MS);
        let CheckOutcome::Append(first) = t.check(&batch(1, 0, 0, 1)).unwrap() else {
            panic!()
        };
        let CheckOutcome::Append(second) = t.check(&batch(1, 0, 0, 1)).unwrap() else {
            panic!()
        };
        t.update(first, 0).unwrap();
        assert_eq!(t.update(second, 1), Err(ProducerStateError::StaleTicket(1)));
        // Another producer's update does not invalidate this producer's ticket.
        let CheckOutcome::Append(a) = t.check(&batch(1, 0, 1, 1)).unwrap() else {
            panic!()
        };
        let CheckOutcome::Append(b) = t.check(&batch(2, 0, 0, 1)).unwrap() else {
            panic!()
        };
        t.update(b, 1).unwrap();
        t.update(a, 2).unwrap();
    }

    #[test]
    fn expiry_on_tick() {
        let mut t = ProducerStateTable::new(10_000);
        let mut next = 0;
        append(&mut t, &mut next, batch(1, 0, 0, 1)).unwrap();
        let mut late = batch(2, 0, 0, 1);
        late.max_timestamp_ms = 5_000;
        append(&mut t, &mut next, late).unwrap();
        assert_eq!(t.tick(10_999), 0);
        assert_eq!(t.tick(11_000), 1);
        assert!(t.entry(1).is_none());
        assert!(t.entry(2).is_some());
        // An expired producer continues: accepted as unknown.
        assert!(matches!(
            t.check(&batch(1, 0, 1, 1)),
            Ok(CheckOutcome::Append(_))
        ));
    }

    #[test]
    fn rebuild_from_log_and_truncation() {
        let mut t = ProducerStateTable::new(DEFAULT_PRODUCER_ID_EXPIRATION_MS);
        let mut next = 0;
        let mut log = Vec::new();
        for (pid, seq) in [(1, 0), (2, 0), (1, 2), (NO_PRODUCER_ID, -1), (2, 2), (1, 4)] {
            let h = batch(pid, 0, seq, 2);
            let (base, dup) = append(&mut t, &mut next, h).unwrap();
            assert!(!dup);
            log.push(ReplayedBatch {
                header: h,
                base_offset: base,
            });
        }
        // Full rebuild from the log equals the live table.
        let rebuilt = ProducerStateTable::rebuild(t.expiration_ms(), None, log.clone(), next);
        assert_eq!(rebuilt.producers().collect::<Vec<_>>().len(), 2);
        assert_eq!(
            rebuilt.entry(1).map(|e| &e.batches),
            t.entry(1).map(|e| &e.batches)
        );
        assert_eq!(rebuilt.end_offset(), t.end_offset());
        // Snapshot after the third batch, then truncate the log to offset 8, dropping the
        // last two batches (offsets 8..=11).
        let snap = ProducerStateTable::rebuild(t.expiration_ms(), None, log[..3].to_vec(), 6);
        assert_eq!(snap.end_offset(), 6);
        let truncated =
            ProducerStateTable::rebuild(t.expiration_ms(), Some(snap.clone()), log.clone(), 8);
        assert_eq!(
            truncated.entry(1).unwrap().last_seq(),
            Some(3),
            "producer 1 back at its second batch"
        );
        assert_eq!(truncated.entry(2).unwrap().last_seq(), Some(1));
        assert_eq!(truncated.end_offset(), 8);
        // The retried batch that was truncated away is now accepted again, not a duplicate.
        assert!(matches!(
            truncated.check(&batch(1, 0, 4, 2)),
            Ok(CheckOutcome::Append(_))
        ));
        // A snapshot above the truncation point is ignored.
        let ignored =
            ProducerStateTable::rebuild(t.expiration_ms(), Some(t.clone()), log[..1].to_vec(), 2);
        assert_eq!(ignored.entry(1).unwrap().last_seq(), Some(1));
        assert!(ignored.entry(2).is_none());
        assert_eq!(
            snapshots_for_truncation(&[0, 100, 50, 200], 120),
            (Some(100), vec![200])
        );
        assert_eq!(snapshots_for_truncation(&[50], 10), (None, vec![50]));
        assert_eq!(snapshots_below_log_start(&[10, 30, 20], 25), vec![10, 20]);
        assert_eq!(
            snapshots_below_log_start(&[10], 25),
            Vec::<i64>::new(),
            "newest kept"
        );
    }

    #[test]
    fn eviction_below_the_log_start_and_reset() {
        let mut t = ProducerStateTable::new(DEFAULT_PRODUCER_ID_EXPIRATION_MS);
        let mut next = 0;
        append(&mut t, &mut next, batch(1, 0, 0, 4)).unwrap();
        append(&mut t, &mut next, batch(2, 0, 0, 4)).unwrap();
        append(&mut t, &mut next, batch(1, 0, 4, 1)).unwrap();
        // Producer 2's only batch is 4..=7; producer 1's last is 8.
        assert_eq!(t.evict_below(8), 1);
        assert!(t.entry(2).is_none());
        assert_eq!(t.evict_below(9), 1);
        assert!(t.is_empty());
        t.advance_end_offset(5);
        assert_eq!(t.end_offset(), 9, "never backwards");
        t.reset_to(100);
        assert_eq!((t.len(), t.end_offset()), (0, 100));
    }

    #[derive(Debug, Clone)]
    enum Send {
        /// Send the producer's next new batch of `n` records.
        New(usize, i32),
        /// Resend one of the producer's earlier batches (a retry).
        Retry(usize, usize),
        /// The producer bumps its epoch (client-side, after an error).
        Bump(usize),
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]
        #[test]
        fn random_retries_and_reorders(sends in proptest::collection::vec(prop_oneof![
            3 => (0..3usize, 1..4i32).prop_map(|(p, n)| Send::New(p, n)),
            3 => (0..3usize, 0..8usize).prop_map(|(p, k)| Send::Retry(p, k)),
            1 => (0..3usize).prop_map(Send::Bump),
        ], 1..80)) {
            let mut t = ProducerStateTable::new(DEFAULT_PRODUCER_ID_EXPIRATION_MS);
            let mut next_offset = 0i64;
            // Per producer: epoch, next sequence to create, batches created (epoch, header).
            let mut epoch = [0i16; 3];
            let mut next_seq = [0i32; 3];
            let mut created: Vec<Vec<BatchHeader>> = vec![Vec::new(); 3];
            // Every batch accepted: (pid, epoch, first seq) must be unique.
            let mut accepted: Vec<(i64, i16, i32, i32)> = Vec::new();
            for s in sends {
                let h = match s {
                    Send::New(p, n) => {
                        let h = batch(p as i64 + 100, epoch[p], next_seq[p], n);
                        next_seq[p] = increment_sequence(next_seq[p], n);
                        created[p].push(h);
                        h
                    }
                    Send::Retry(p, k) => match created[p].iter().rev().nth(k) {
                        Some(h) => *h,
                        None => continue,
                    },
                    Send::Bump(p) => {
                        epoch[p] += 1;
                        next_seq[p] = 0;
                        continue;
                    }
                };
                if let Ok((_, false)) = append(&mut t, &mut next_offset, h) {
                    accepted.push((h.producer_id, h.producer_epoch, h.base_sequence, h.last_sequence()));
                }
            }
            // A batch is accepted at most once.
            let mut keys: Vec<_> = accepted.iter().map(|a| (a.0, a.1, a.2)).collect();
            keys.sort();
            let before = keys.len();
            keys.dedup();
            prop_assert_eq!(before, keys.len(), "a batch was accepted twice");
            // Accepted sequences are contiguous per producer and epoch, starting at 0.
            for pid in 100..103i64 {
                let mut by_epoch: BTreeMap<i16, Vec<(i32, i32)>> = BTreeMap::new();
                for a in accepted.iter().filter(|a| a.0 == pid) {
                    by_epoch.entry(a.1).or_default().push((a.2, a.3));
                }
                let mut last_epoch = -1;
                for (e, runs) in by_epoch {
                    prop_assert!(e > last_epoch);
                    last_epoch = e;
                    prop_assert_eq!(runs[0].0, 0, "first accepted sequence of an epoch (other than a new producer) is 0");
                    for w in runs.windows(2) {
                        prop_assert_eq!(w[1].0, increment_sequence(w[0].1, 1), "gap or overlap");
                    }
                }
            }
        }
    }
}
