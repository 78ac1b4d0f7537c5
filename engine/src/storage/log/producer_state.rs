//! The log's side of the idempotent producer: the per-partition [`ProducerStateTable`] kept
//! in step with the log, and its snapshot files (`<20-digit offset>.snapshot`).
//!
//! - Append (leader): the batches are analysed and the table updated in the same synchronous
//!   section that assigns their offsets, under the FIFO append lock, so pipelined requests of
//!   one producer are checked in log order and a retry is caught even while the original is
//!   still being written. A record set without producer ids skips all of it.
//! - Append (follower): batches are replayed without checks (the leader checked them).
//! - Snapshots: taken at every roll (written by the background roll finisher, after the
//!   rolled segment is fsync'd) and at clean close; loaded at open (the newest one at or
//!   below the log end), then the batch headers after it are replayed. Truncation reloads
//!   the newest snapshot at or below the new end and replays up to it; retention forgets
//!   producers whose batches are all deleted and removes snapshots below the log start.

use std::rc::Rc;

use crate::idempotence::{
    parse_snapshot_file_name, snapshot_file_name, AppendAnalysis, BatchMetadata,
    ProducerStateTable, ReplayedBatch,
};
use crate::io::file::{remove_file_if_exists, write_file_atomic};

use super::super::config::{FlushPolicy, LogConfig};
use super::super::error::{AppendError, StorageError};
use super::super::record_batch::BatchHeader;
use super::super::segment::{HeaderCursor, Segment};
use super::{Inner, LogAppendInfo, PartitionLog};

/// The producer fields of a stored batch header.
fn producer_header(h: &BatchHeader) -> crate::idempotence::BatchHeader {
    crate::idempotence::BatchHeader {
        producer_id: h.producer_id,
        producer_epoch: h.producer_epoch,
        base_sequence: h.base_sequence,
        last_offset_delta: h.last_offset_delta,
        max_timestamp_ms: h.max_timestamp,
        transactional: h.is_transactional(),
    }
}

/// Applies a batch that already carries its offset (replication, replay).
pub(super) fn replay_producer_batch(table: &mut ProducerStateTable, h: &BatchHeader) {
    table.replay(&ReplayedBatch {
        header: producer_header(h),
        base_offset: h.base_offset,
    });
}

impl Inner {
    /// Checks a client's record set against the producer state (no change yet). Control
    /// batches are refused (only the broker writes markers); transactional batches are
    /// refused unless transactions are enabled, and need a producer id.
    pub(super) fn analyze_producers(
        &self,
        batches: &[(usize, BatchHeader)],
        first_offset: i64,
        log_append_time: i64,
    ) -> Result<AppendAnalysis, AppendError> {
        if batches
            .iter()
            .all(|(_, h)| h.producer_id < 0 && h.attributes & 0x30 == 0)
        {
            return Ok(AppendAnalysis::NotIdempotent);
        }
        let mut headers = Vec::with_capacity(batches.len());
        for (pos, h) in batches {
            if h.is_control() {
                return Err(AppendError::InvalidRecord(format!(
                    "batch at byte {pos}: clients may not write control batches"
                )));
            }
            if h.is_transactional() {
                if !self.transactions_enabled.get() {
                    return Err(AppendError::TransactionalBatch);
                }
                if h.producer_id < 0 {
                    return Err(AppendError::InvalidRecord(format!(
                        "batch at byte {pos}: a transactional batch needs a producer id"
                    )));
                }
            }
            let mut p = producer_header(h);
            if log_append_time >= 0 {
                p.max_timestamp_ms = log_append_time;
            }
            headers.push(p);
        }
        Ok(self
            .st
            .borrow()
            .producers
            .analyze_append(&headers, first_offset)?)
    }

    /// The epoch check of a coordinator-written record set (Kafka checks only the epoch for
    /// `AppendOrigin.COORDINATOR`): a batch of an older epoch than its producer's is refused.
    pub(super) fn check_coordinator_epochs(
        &self,
        batches: &[(usize, BatchHeader)],
    ) -> Result<(), AppendError> {
        let st = self.st.borrow();
        for (_, h) in batches {
            if h.producer_id < 0 {
                continue;
            }
            if let Some(entry) = st.producers.entry(h.producer_id) {
                if h.producer_epoch < entry.epoch {
                    return Err(
                        crate::idempotence::ProducerStateError::InvalidProducerEpoch {
                            producer_id: h.producer_id,
                            current: entry.epoch,
                            got: h.producer_epoch,
                        }
                        .into(),
                    );
                }
            }
        }
        Ok(())
    }

    /// The table as snapshot bytes (its end offset is the log end offset).
    pub(super) fn capture_producer_snapshot(&self) -> Vec<u8> {
        self.st.borrow().producers.to_snapshot()
    }

    /// Writes a snapshot taken at `offset`.
    pub(super) async fn write_producer_snapshot(
        &self,
        offset: i64,
        bytes: Vec<u8>,
    ) -> Result<(), StorageError> {
        let path = self.dir.join(snapshot_file_name(offset));
        write_file_atomic(&path, bytes)
            .await
            .map_err(|e| StorageError::io(&path, e))?;
        self.st.borrow_mut().producer_snapshots.insert(offset);
        Ok(())
    }

    /// The snapshot taken at a roll. A failure is logged, not fatal: the snapshot only
    /// shortens the replay at the next open, and the log itself is intact.
    pub(super) async fn write_roll_snapshot(&self, offset: i64, bytes: Vec<u8>) {
        if let Err(e) = self.write_producer_snapshot(offset, bytes).await {
            tracing::warn!(dir = %self.dir.display(), offset, error = %e, "cannot write the producer snapshot at a roll");
        }
    }

    /// Snapshot at clean close, so the next open replays nothing.
    pub(super) async fn snapshot_producers_at_close(&self, leo: i64) -> Result<(), StorageError> {
        let bytes = {
            let mut st = self.st.borrow_mut();
            st.producers.advance_end_offset(leo);
            debug_assert_eq!(st.producers.end_offset(), leo);
            st.producers.to_snapshot()
        };
        self.write_producer_snapshot(leo, bytes).await
    }

    /// Removes the snapshots above `offset`.
    pub(super) async fn delete_producer_snapshots_above(
        &self,
        offset: i64,
    ) -> Result<(), StorageError> {
        let doomed: Vec<i64> = self
            .st
            .borrow()
            .producer_snapshots
            .range(offset.saturating_add(1)..)
            .copied()
            .collect();
        for o in doomed {
            self.delete_producer_snapshot(o).await?;
        }
        Ok(())
    }

    async fn delete_producer_snapshot(&self, offset: i64) -> Result<(), StorageError> {
        let path = self.dir.join(snapshot_file_name(offset));
        remove_file_if_exists(&path)
            .await
            .map_err(|e| StorageError::io(&path, e))?;
        self.st.borrow_mut().producer_snapshots.remove(&offset);
        Ok(())
    }

    /// After retention or DeleteRecords moved the log start: forgets producers whose batches
    /// are all gone and deletes snapshots below the log start (keeping the newest).
    pub(super) async fn retain_producer_state(&self) -> Result<(), StorageError> {
        let (doomed, evicted) = {
            let mut st = self.st.borrow_mut();
            let start = st.log_start_offset;
            let evicted = st.producers.evict_below(start);
            let offsets: Vec<i64> = st.producer_snapshots.iter().copied().collect();
            (
                crate::idempotence::snapshots_below_log_start(&offsets, start),
                evicted,
            )
        };
        if evicted > 0 {
            tracing::debug!(dir = %self.dir.display(), evicted, "producers below the log start forgotten");
        }
        for o in doomed {
            self.delete_producer_snapshot(o).await?;
        }
        Ok(())
    }

    /// After truncation to `new_end`: the state above it is gone, so the table is rebuilt
    /// from the newest snapshot at or below it plus the batches between.
    pub(super) async fn rebuild_producer_state(&self, new_end: i64) -> Result<(), StorageError> {
        self.delete_producer_snapshots_above(new_end).await?;
        let expiration = self.st.borrow().producers.expiration_ms();
        let table = self
            .restore_producer_table(new_end, expiration, None)
            .await?;
        self.st.borrow_mut().producers = table;
        Ok(())
    }

    /// Loads the snapshots present in the directory and restores the table at open, with the
    /// transaction indexes: each segment's `.txnindex` is loaded and checked, and from the
    /// first segment whose file is torn or invalid, or that recovery scanned
    /// (`scanned_from`), every index is rebuilt from the markers the replay meets.
    pub(super) async fn load_producer_state(
        &self,
        scanned_from: Option<i64>,
    ) -> Result<(), StorageError> {
        let mut found = std::collections::BTreeSet::new();
        for entry in std::fs::read_dir(&self.dir).map_err(|e| StorageError::io(&self.dir, e))? {
            let entry = entry.map_err(|e| StorageError::io(&self.dir, e))?;
            if let Some(offset) = entry
                .file_name()
                .to_str()
                .and_then(parse_snapshot_file_name)
            {
                found.insert(offset);
            }
        }
        let (leo, expiration) = {
            let mut st = self.st.borrow_mut();
            st.producer_snapshots = found;
            (st.next_offset, st.producers.expiration_ms())
        };
        // Snapshots above the log end describe data a crash took away.
        self.delete_producer_snapshots_above(leo).await?;
        let segments: Vec<Rc<Segment>> = self.st.borrow().segments.clone();
        let mut rebuild_from = scanned_from;
        for s in &segments {
            if !s.load_txn_index()? {
                rebuild_from = Some(rebuild_from.map_or(s.base_offset, |r| r.min(s.base_offset)));
            }
        }
        for s in segments
            .iter()
            .filter(|s| rebuild_from.is_some_and(|r| s.base_offset >= r))
        {
            s.aborted.borrow_mut().clear();
        }
        let table = self
            .restore_producer_table(leo, expiration, rebuild_from)
            .await?;
        tracing::debug!(dir = %self.dir.display(), producers = table.len(), "producer state loaded");
        self.st.borrow_mut().producers = table;
        if let Some(from) = rebuild_from {
            for s in segments.iter().filter(|s| s.base_offset >= from) {
                s.write_txn_index().await?;
            }
            tracing::debug!(dir = %self.dir.display(), from, "transaction indexes rebuilt from the log");
        }
        Ok(())
    }

    /// The table for a log ending at `end`: the newest readable snapshot at or below it,
    /// then the headers of the batches from there to `end` (no record is decompressed; a
    /// transaction marker's one record is read). With `rebuild_txn_from`, the snapshot is at
    /// or below that offset too and the ABORT markers of the segments from there on are
    /// added to their (emptied) in-memory transaction indexes.
    async fn restore_producer_table(
        &self,
        end: i64,
        expiration_ms: i64,
        rebuild_txn_from: Option<i64>,
    ) -> Result<ProducerStateTable, StorageError> {
        let newest = rebuild_txn_from.map_or(end, |r| r.min(end));
        let candidates: Vec<i64> = self
            .st
            .borrow()
            .producer_snapshots
            .range(..=newest)
            .rev()
            .copied()
            .collect();
        let mut table = None;
        for offset in candidates {
            let path = self.dir.join(snapshot_file_name(offset));
            let loaded = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    ProducerStateTable::from_snapshot(&b, expiration_ms).map_err(|e| e.to_string())
                });
            match loaded {
                Ok(t) if t.end_offset() == offset => {
                    table = Some(t);
                    break;
                }
                Ok(_) => {
                    tracing::warn!(file = %path.display(), "producer snapshot offset does not match its name; removing it")
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "unreadable producer snapshot; removing it")
                }
            }
            self.delete_producer_snapshot(offset).await?;
        }
        let log_start = self.st.borrow().log_start_offset;
        let from = table.as_ref().map_or(log_start, |t| t.end_offset());
        let mut table = ProducerStateTable::rebuild(expiration_ms, table, std::iter::empty(), end);
        self.replay_headers(&mut table, from, end, rebuild_txn_from)
            .await?;
        table.advance_end_offset(end);
        Ok(table)
    }

    /// Replays the headers of the batches with base offset in `[from, end)`.
    async fn replay_headers(
        &self,
        table: &mut ProducerStateTable,
        from: i64,
        end: i64,
        rebuild_txn_from: Option<i64>,
    ) -> Result<(), StorageError> {
        let segments: Vec<Rc<Segment>> = {
            let st = self.st.borrow();
            let first = st
                .segments
                .partition_point(|s| s.base_offset <= from)
                .saturating_sub(1);
            st.segments[first..].to_vec()
        };
        let mut batches = 0u64;
        for segment in segments {
            if segment.base_offset >= end {
                break;
            }
            let limit = segment.size();
            let mut pos = if from > segment.base_offset {
                match segment.find_batch(from, limit).await? {
                    Some((p, _)) => p,
                    None => continue,
                }
            } else {
                0
            };
            let mut cursor = HeaderCursor::new(&segment, limit);
            while pos < limit {
                let h = cursor.header_at(pos).await?;
                if h.base_offset >= end {
                    break;
                }
                if h.base_offset >= from && h.last_offset() < end {
                    if h.attributes & 0x30 == 0x30 {
                        let bytes = segment
                            .log
                            .read_exact_at(h.size(), pos)
                            .await
                            .map_err(|e| StorageError::io(segment.log.path(), e))?;
                        let rebuild = rebuild_txn_from.is_some_and(|r| segment.base_offset >= r);
                        // Outside the rebuilt range the entry is already in a trusted index.
                        super::transactions::apply_txn_marker(table, &segment, &bytes, &h, rebuild);
                    } else {
                        replay_producer_batch(table, &h);
                    }
                    batches += 1;
                }
                pos += h.size() as u64;
            }
        }
        if batches > 0 {
            tracing::debug!(dir = %self.dir.display(), from, end, batches, "producer state replayed from the log");
        }
        Ok(())
    }
}

impl PartitionLog {
    /// Answers a retried batch with its original offsets once the original is readable (and
    /// durable when every append is fsync'd), as its own acknowledgement would have waited.
    pub(super) async fn acknowledge_duplicate(
        &self,
        dup: BatchMetadata,
        log_append_time: i64,
        cfg: &LogConfig,
    ) -> Result<LogAppendInfo, AppendError> {
        tracing::debug!(dir = %self.inner.dir.display(), first_offset = dup.first_offset, "duplicate batch acknowledged");
        self.inner.wait_visible(dup.last_offset + 1).await?;
        if cfg.flush == FlushPolicy::EveryAppend {
            self.wait_durable(dup.last_offset).await?;
        }
        Ok(LogAppendInfo {
            first_offset: dup.first_offset,
            last_offset: dup.last_offset,
            log_append_time_ms: if log_append_time >= 0 {
                dup.timestamp_ms
            } else {
                -1
            },
            log_start_offset: self.log_start_offset(),
            record_count: 0,
            batch_count: 0,
            max_timestamp: dup.timestamp_ms,
        })
    }

    /// Forgets producers idle for `expiration_ms` (`producer.id.expiration.ms`), on the
    /// retention timer; returns how many.
    pub fn expire_producers(&self, now_ms: i64, expiration_ms: i64) -> usize {
        let mut st = self.inner.st.borrow_mut();
        st.producers.set_expiration_ms(expiration_ms);
        st.producers.tick(now_ms)
    }

    /// Number of producers tracked in this partition.
    pub fn producer_count(&self) -> usize {
        self.inner.st.borrow().producers.len()
    }

    /// The producers tracked in this partition, by producer id (DescribeProducers).
    pub fn producer_entries(&self) -> Vec<crate::idempotence::ProducerEntry> {
        self.inner
            .st
            .borrow()
            .producers
            .producers()
            .cloned()
            .collect()
    }

    /// Offsets of the producer-state snapshot files of this partition, oldest first.
    pub fn producer_snapshot_offsets(&self) -> Vec<i64> {
        self.inner
            .st
            .borrow()
            .producer_snapshots
            .iter()
            .copied()
            .collect()
    }
}
