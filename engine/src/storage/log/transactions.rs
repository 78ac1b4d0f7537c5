//! The log's side of Kafka transactions: transaction markers (control batches) written by the
//! leader for the coordinator, the open transactions kept in the producer state, the last
//! stable offset, the per-segment aborted-transaction index and read_committed reads.
//!
//! - A transactional data batch opens (or continues) its producer's transaction; the
//!   producer state records the transaction's first offset (`idempotence::state`).
//! - A marker (COMMIT or ABORT) is checked against the producer's epoch and the coordinator
//!   epoch of its last marker under the append lock, then applied in the same synchronous
//!   section that assigns its offset. An ABORT adds an entry to the in-memory index of the
//!   segment that holds the marker at once (so a read never sees the LSO pass an abort
//!   without its entry) and to the segment's `.txnindex` file once the marker is written.
//! - LSO = min(first offset of every open transaction and of every completed one whose
//!   marker the high watermark has not passed, high watermark).

use std::rc::Rc;

use bytes::BytesMut;

use crate::idempotence::{ProducerStateTable, TxnMarker};

use super::super::error::{AppendError, ReadError, StorageError};
use super::super::record_batch::BatchHeader;
use super::super::segment::Segment;
use super::super::txn_index::{build_marker_batch, overlapping, parse_marker, AbortedTxn};
use super::{Inner, LogAppendInfo, PartitionLog, ReadResult};

/// A read_committed read: the batches below the LSO and the aborted transactions that
/// overlap them.
#[derive(Debug, Clone)]
pub struct CommittedRead {
    /// The batches (bounded by the LSO) and the log's start and end.
    pub read: ReadResult,
    /// The last stable offset the read was bounded by.
    pub last_stable_offset: i64,
    /// (producer id, first offset) of every aborted transaction whose data may lie in the
    /// range read, ordered by marker offset: Kafka's fetch `aborted_transactions`.
    pub aborted: Vec<(i64, i64)>,
}

/// The marker of a transactional control batch, if it is one (a parse failure is logged and
/// treated as no marker: the batch passed CRC validation, so this is a producer bug).
fn marker_of(batch: &[u8], h: &BatchHeader) -> Option<TxnMarker> {
    match parse_marker(batch, h) {
        Ok(Some(m)) => Some(TxnMarker {
            producer_id: h.producer_id,
            producer_epoch: h.producer_epoch,
            coordinator_epoch: m.coordinator_epoch,
            aborted: m.aborted,
            timestamp_ms: h.max_timestamp,
        }),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(offset = h.base_offset, error = %e, "transactional control batch is not a readable marker");
            None
        }
    }
}

/// Applies a transactional control batch stored at `h.base_offset` in `segment`: the
/// producer's transaction completes, and an ABORT gets an entry in the segment's in-memory
/// index (when `index_aborts`). Returns whether an entry was added (the caller then
/// persists the file).
pub(super) fn apply_txn_marker(
    table: &mut ProducerStateTable,
    segment: &Segment,
    batch: &[u8],
    h: &BatchHeader,
    index_aborts: bool,
) -> bool {
    let Some(marker) = marker_of(batch, h) else {
        table.advance_end_offset(h.next_offset());
        return false;
    };
    let (txn, lso) = table.apply_marker(&marker, h.base_offset);
    table.advance_end_offset(h.next_offset());
    if !txn.aborted || !index_aborts {
        return false;
    }
    let mut aborted = segment.aborted.borrow_mut();
    debug_assert!(aborted
        .last()
        .is_none_or(|e| e.last_offset < txn.last_offset));
    aborted.push(AbortedTxn {
        producer_id: txn.producer_id,
        first_offset: txn.first_offset,
        last_offset: txn.last_offset,
        last_stable_offset: lso,
    });
    true
}

impl Inner {
    /// Checks the transaction markers of a broker-written record set against the producer
    /// state (under the append lock, before offsets are assigned).
    pub(super) fn check_txn_markers(
        &self,
        records: &[u8],
        batches: &[(usize, BatchHeader)],
    ) -> Result<(), AppendError> {
        let st = self.st.borrow();
        for (pos, h) in batches {
            if h.attributes & 0x30 != 0x30 {
                continue;
            }
            let Some(m) = marker_of(&records[*pos..*pos + h.size()], h) else {
                return Err(AppendError::InvalidRecord(format!(
                    "batch at byte {pos}: a transactional control batch must be a COMMIT or ABORT marker"
                )));
            };
            st.producers.check_marker(&m)?;
        }
        Ok(())
    }

    /// Writes a segment's `.txnindex` from memory (serialized per log, so the last writer
    /// always writes the newest entries).
    pub(super) async fn persist_txn_index(
        &self,
        segment: &Rc<Segment>,
    ) -> Result<(), StorageError> {
        let _g = self.checkpoint_lock.lock().await;
        if let Err(e) = segment.write_txn_index().await {
            // The marker is in the log and the in-memory index is right; recovery rebuilds a
            // missing entry only for scanned segments, so a failure here takes the log offline.
            tracing::error!(dir = %self.dir.display(), error = %e, "cannot write the transaction index");
            self.st.borrow_mut().offline = true;
            return Err(e);
        }
        Ok(())
    }
}

impl PartitionLog {
    /// Accepts (true) or refuses (false, the default) transactional batches from clients in
    /// [`PartitionLog::append_leader`]. The broker leaves this off until a transaction
    /// coordinator exists; markers ([`PartitionLog::append_txn_marker`]) and replicated
    /// batches are accepted either way.
    pub fn set_transactions_enabled(&self, enabled: bool) {
        self.inner.transactions_enabled.set(enabled);
    }

    /// Writes a COMMIT or ABORT marker for a producer at the partition leader (Kafka's
    /// WriteTxnMarkers on the partition): refused with INVALID_PRODUCER_EPOCH when
    /// `producer_epoch` is older than the producer's, and with TRANSACTION_COORDINATOR_FENCED
    /// when `coordinator_epoch` is older than the one of the producer's last marker.
    pub async fn append_txn_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        coordinator_epoch: i32,
        aborted: bool,
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<LogAppendInfo, AppendError> {
        if producer_id < 0 {
            return Err(AppendError::InvalidRecord(
                "a transaction marker needs a producer id".into(),
            ));
        }
        let records = BytesMut::from(
            &build_marker_batch(
                producer_id,
                producer_epoch,
                coordinator_epoch,
                aborted,
                now_ms,
            )[..],
        );
        self.append_leader_control(records, leader_epoch, now_ms)
            .await
    }

    /// The first offset that may belong to an undecided transaction (see
    /// [`ProducerStateTable::first_unstable_offset`]); None when there is none.
    pub fn first_unstable_offset(&self) -> Option<i64> {
        self.inner.st.borrow().producers.first_unstable_offset()
    }

    /// Kafka's last stable offset for the partition's high watermark: min(first unstable
    /// offset, high watermark). Without transactions it is the high watermark.
    pub fn last_stable_offset(&self, high_watermark: i64) -> i64 {
        let hw = high_watermark.min(self.log_end_offset());
        self.inner.st.borrow_mut().producers.last_stable_offset(hw)
    }

    /// The open transactions as (producer id, first offset).
    pub fn open_transactions(&self) -> Vec<(i64, i64)> {
        self.inner.st.borrow().producers.open_transactions()
    }

    /// The aborted transactions of `[from, upper)` (Kafka's `collectAbortedTransactions`):
    /// entries of the segments that can hold their markers, which lie at or after `from`.
    pub fn aborted_transactions(&self, from: i64, upper: i64) -> Vec<AbortedTxn> {
        let st = self.inner.st.borrow();
        let first = st
            .segments
            .partition_point(|s| s.base_offset <= from)
            .saturating_sub(1);
        let mut out = Vec::new();
        for s in &st.segments[first..] {
            out.extend(overlapping(&s.aborted.borrow(), from, upper).copied());
        }
        out
    }

    /// A read_committed read: like [`PartitionLog::read`] with the upper bound lowered to
    /// the LSO for `high_watermark`, plus the aborted transactions overlapping what it
    /// returns. The slice is the same zero-copy file range a read_uncommitted read returns.
    pub async fn read_committed(
        &self,
        from_offset: i64,
        max_bytes: u32,
        high_watermark: i64,
        min_one_batch: bool,
    ) -> Result<CommittedRead, ReadError> {
        let lso = self.last_stable_offset(high_watermark);
        let read = self
            .read(from_offset, max_bytes, lso, min_one_batch)
            .await?;
        let aborted = if read.slice.is_some() {
            self.aborted_transactions(from_offset, lso)
                .into_iter()
                .map(|e| (e.producer_id, e.first_offset))
                .collect()
        } else {
            Vec::new()
        };
        Ok(CommittedRead {
            read,
            last_stable_offset: lso,
            aborted,
        })
    }

    /// Every aborted-transaction index entry of the log, oldest first (tools and tests).
    pub fn aborted_index_entries(&self) -> Vec<AbortedTxn> {
        let st = self.inner.st.borrow();
        st.segments
            .iter()
            .flat_map(|s| s.aborted.borrow().clone())
            .collect()
    }
}
