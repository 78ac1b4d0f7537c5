//! `PartitionLog`: one partition's segments, appends, reads, flushing and truncation.
//!
//! Owned by one shard thread and shared by its tasks as `Rc<PartitionLog>`. All state sits in
//! `RefCell`/`Cell`s borrowed only in synchronous sections, never across an `.await`. Appends
//! take `append_lock` (a FIFO async mutex) only to roll and to reserve offsets and file
//! positions; the write itself runs in a spawned task, so many appends are in flight at once
//! and a caller that gives up cannot leave a hole. Completed writes advance the readable end
//! in reservation order; fsyncs advance the durable end.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, VecDeque};
use std::io;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::{watch, Mutex};

use crate::idempotence::{AppendAnalysis, ProducerStateTable, DEFAULT_PRODUCER_ID_EXPIRATION_MS};
use crate::io::file::{write_file_atomic, DiskFile};
use crate::io::runtime::spawn;

use super::checkpoint::{
    encode_offset, CLEAN_SHUTDOWN_FILE, HIGH_WATERMARK_FILE, LEADER_EPOCH_FILE, LOG_START_FILE,
    RECOVERY_POINT_FILE,
};
use super::config::{FlushPolicy, LogConfig, TimestampType};
use super::error::{AppendError, ReadError, StorageError};
use super::leader_epoch::LeaderEpochCache;
use super::record_batch::{
    set_base_offset, set_log_append_time, set_partition_leader_epoch, BatchHeader,
};
use super::recovery;
use super::retention::{plan_retention, RetentionOutcome, SegmentInfo};
use super::segment::{HeaderCursor, Segment};
use super::validate::{validate_follower, validate_leader, DECOMPRESS_LIMIT_FACTOR};

mod producer_state;
mod transactions;
use producer_state::replay_producer_batch;
use transactions::apply_txn_marker;
pub use transactions::CommittedRead;

/// Result of a successful append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogAppendInfo {
    /// Offset of the first record appended (-1 if the record set was empty).
    pub first_offset: i64,
    /// Offset of the last record appended (-1 if empty).
    pub last_offset: i64,
    /// Broker append time for LogAppendTime topics, -1 for CreateTime.
    pub log_append_time_ms: i64,
    /// Log start offset after the append.
    pub log_start_offset: i64,
    /// Records appended.
    pub record_count: u32,
    /// Batches appended.
    pub batch_count: u32,
    /// Largest batch max timestamp appended (-1 if none).
    pub max_timestamp: i64,
}

/// A byte range of one segment file holding whole batches, sendable with sendfile/splice.
#[derive(Debug, Clone)]
pub struct FileSlice {
    file: Rc<DiskFile>,
    position: u64,
    len: u32,
}

impl FileSlice {
    /// Descriptor of the segment file (kept open as long as the slice lives).
    pub fn raw_fd(&self) -> RawFd {
        self.file.raw_fd()
    }

    /// Start position in the file.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Length in bytes.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether the slice is empty (never true for a slice `read` returns).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies the bytes into memory (the copy path; the zero-copy path uses `raw_fd`).
    pub async fn read_to_vec(&self) -> Result<Vec<u8>, StorageError> {
        self.file
            .read_exact_at(self.len as usize, self.position)
            .await
            .map_err(|e| StorageError::io(self.file.path(), e))
    }
}

/// Result of a read.
#[derive(Debug, Clone)]
pub struct ReadResult {
    /// Whole batches from the one containing the requested offset; `None` when there is
    /// nothing to return (at the end, or the next batch crosses the upper bound / max bytes).
    pub slice: Option<FileSlice>,
    /// Log start offset at the time of the read.
    pub log_start_offset: i64,
    /// Log end offset at the time of the read.
    pub log_end_offset: i64,
}

/// Counters of one log since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Appends that reserved offsets.
    pub appends: u64,
    /// fsync rounds completed (a round syncs every segment with unflushed data).
    pub fsyncs: u64,
    /// Segments rolled.
    pub rolls: u64,
}

/// A reserved write waiting for the log's writer task.
struct QueuedWrite {
    seq: u64,
    segment: Rc<Segment>,
    position: u64,
    bytes: Bytes,
}

/// How long the writer uses io_uring after a synchronous write was slow (throttled).
const URING_WRITES_AFTER_SLOW: Duration = Duration::from_secs(1);

/// A synchronous write of `bytes` slower than this was throttled by the kernel (dirty-page
/// balancing or the disk), not slowed by the copy: 5 ms plus 2 ns per byte (a copy at
/// 0.5 GB/s, the speed of first-touch guest memory, the slowest copy we have measured).
fn slow_sync_write(bytes: usize) -> Duration {
    Duration::from_millis(5) + Duration::from_nanos(2 * bytes as u64)
}

/// Most buffers and bytes the writer puts in one `writev`.
const MAX_WRITEV_BUFS: usize = 256;
const MAX_WRITEV_BYTES: usize = 8 << 20;

struct PendingWrite {
    seq: u64,
    segment: Rc<Segment>,
    end_position: u64,
    end_offset: i64,
    records: u64,
    done: bool,
}

struct LogState {
    segments: Vec<Rc<Segment>>,
    log_start_offset: i64,
    /// Next offset to reserve.
    next_offset: i64,
    /// Every offset below is written (completed, contiguous) and readable.
    visible_end: i64,
    /// Every offset below is fsync'd.
    durable_end: i64,
    /// Value of the recovery-point checkpoint on disk.
    recovery_point: i64,
    pending: VecDeque<PendingWrite>,
    next_seq: u64,
    epochs: LeaderEpochCache,
    flush_in_flight: bool,
    unflushed_messages: u64,
    dir_dirty: bool,
    offline: bool,
    /// An fsync (or a roll's flush, which includes one) failed: the page cache may hold data
    /// the disk lost (fsyncgate), so the log is never reopened until the broker restarts.
    fsync_failed: bool,
    closed: bool,
    stats: LogStats,
    /// Reserved writes in reservation order, not yet handed to the kernel.
    write_queue: VecDeque<QueuedWrite>,
    /// The writer task is running (at most one per log).
    writer_running: bool,
    /// Until then the writer submits through io_uring instead of writing synchronously
    /// (set when a synchronous write was throttled).
    uring_writes_until: Option<Instant>,
    /// Idempotent-producer state; checked and updated with offset assignment, in one
    /// synchronous section under the append lock (see `producer_state`).
    producers: ProducerStateTable,
    /// Offsets of the producer-state snapshot files in the directory.
    producer_snapshots: BTreeSet<i64>,
}

struct Inner {
    dir: PathBuf,
    config: Cell<LogConfig>,
    st: RefCell<LogState>,
    append_lock: Mutex<()>,
    checkpoint_lock: Mutex<()>,
    roll_flush_lock: Mutex<()>,
    visible_tx: watch::Sender<i64>,
    flush_tx: watch::Sender<u64>,
    /// The cleaner works only below this offset ([`PartitionLog::set_cleanable_end`]).
    cleanable_end: Cell<i64>,
    /// Transactional batches from clients are accepted ([`PartitionLog::set_transactions_enabled`]).
    transactions_enabled: Cell<bool>,
}

/// One partition's log. See the module docs for the concurrency model.
pub struct PartitionLog {
    inner: Rc<Inner>,
}

impl std::fmt::Debug for PartitionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionLog")
            .field("dir", &self.inner.dir)
            .field("log_start_offset", &self.log_start_offset())
            .field("log_end_offset", &self.log_end_offset())
            .finish()
    }
}

fn check_config(c: &LogConfig) -> Result<(), StorageError> {
    if c.segment_bytes < 1 || c.segment_bytes > i32::MAX as u64 {
        return Err(StorageError::InvalidArgument(format!(
            "segment.bytes {} not in 1..=2^31-1",
            c.segment_bytes
        )));
    }
    if c.segment_index_bytes < 8 {
        return Err(StorageError::InvalidArgument(
            "segment.index.bytes must hold one entry".into(),
        ));
    }
    Ok(())
}

fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

enum Mode {
    /// `broker_control`: the batches are control batches the broker itself wrote (a quorum
    /// leader's epoch marker), which clients may not send. `coordinator`: data batches a
    /// coordinator of this broker wrote (Kafka's `AppendOrigin.COORDINATOR`).
    Leader {
        epoch: i32,
        now_ms: i64,
        broker_control: bool,
        coordinator: bool,
    },
    Follower,
}

impl Mode {
    fn is_follower(&self) -> bool {
        matches!(self, Mode::Follower)
    }
}

impl PartitionLog {
    /// Opens the partition directory `dir`, creating it or recovering it as needed.
    pub async fn open(dir: PathBuf, config: LogConfig) -> Result<PartitionLog, StorageError> {
        check_config(&config)?;
        let loaded = recovery::load(&dir, &config, wall_clock_ms()).await?;
        let leo = loaded.next_offset;
        let (visible_tx, _) = watch::channel(leo);
        let (flush_tx, _) = watch::channel(0u64);
        let inner = Rc::new(Inner {
            dir,
            config: Cell::new(config),
            st: RefCell::new(LogState {
                segments: loaded.segments,
                log_start_offset: loaded.log_start_offset,
                next_offset: leo,
                visible_end: leo,
                durable_end: leo,
                recovery_point: loaded.recovery_point,
                pending: VecDeque::new(),
                next_seq: 0,
                epochs: loaded.epochs,
                flush_in_flight: false,
                unflushed_messages: 0,
                dir_dirty: false,
                offline: false,
                fsync_failed: false,
                closed: false,
                stats: LogStats::default(),
                write_queue: VecDeque::new(),
                writer_running: false,
                uring_writes_until: None,
                producers: ProducerStateTable::new(DEFAULT_PRODUCER_ID_EXPIRATION_MS),
                producer_snapshots: BTreeSet::new(),
            }),
            append_lock: Mutex::new(()),
            checkpoint_lock: Mutex::new(()),
            roll_flush_lock: Mutex::new(()),
            visible_tx,
            flush_tx,
            cleanable_end: Cell::new(i64::MAX),
            transactions_enabled: Cell::new(false),
        });
        let log = PartitionLog { inner };
        log.inner.load_producer_state(loaded.scanned_from).await?;
        log.inner.spawn_interval_flusher();
        Ok(log)
    }

    /// The partition directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Current configuration.
    pub fn config(&self) -> LogConfig {
        self.inner.config.get()
    }

    /// Replaces the configuration (takes effect for the next append/roll/retention check).
    /// An invalid configuration is ignored with a warning.
    pub fn set_config(&self, c: LogConfig) {
        if let Err(e) = check_config(&c) {
            tracing::warn!(dir = %self.inner.dir.display(), error = %e, "rejected log config");
            return;
        }
        let old = self.inner.config.replace(c);
        let interval_ms = |f: FlushPolicy| match f {
            FlushPolicy::Interval { ms, .. } => ms,
            _ => 0,
        };
        if interval_ms(old.flush) != interval_ms(c.flush) {
            self.inner.spawn_interval_flusher();
        }
    }

    /// Validates `records` (all batches first; nothing is written on error; max timestamps
    /// the records disagree with are fixed as Kafka's LogValidator does, `now_ms` being the
    /// clock of the timestamp window), assigns offsets and the leader epoch in place and
    /// appends them.
    pub async fn append_leader(
        &self,
        mut records: BytesMut,
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<LogAppendInfo, AppendError> {
        let cfg = self.config();
        let batches = validate_leader(&mut records, &cfg, now_ms)?;
        self.append(
            records,
            batches,
            Mode::Leader {
                epoch: leader_epoch,
                now_ms,
                broker_control: false,
                coordinator: false,
            },
        )
        .await
    }

    /// Appends control batches written by the broker itself (a quorum leader's epoch marker)
    /// as leader: offsets and epoch are stamped as for [`PartitionLog::append_leader`], and
    /// the control-batch refusal that protects the log from clients does not apply.
    pub async fn append_leader_control(
        &self,
        mut records: BytesMut,
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<LogAppendInfo, AppendError> {
        let cfg = self.config();
        let batches = validate_leader(&mut records, &cfg, now_ms)?;
        if let Some((pos, _)) = batches.iter().find(|(_, h)| !h.is_control()) {
            return Err(AppendError::InvalidRecord(format!(
                "batch at byte {pos} is not a control batch"
            )));
        }
        self.append(
            records,
            batches,
            Mode::Leader {
                epoch: leader_epoch,
                now_ms,
                broker_control: true,
                coordinator: false,
            },
        )
        .await
    }

    /// Appends data batches a coordinator of this broker wrote, as leader (Kafka's
    /// `AppendOrigin.COORDINATOR`; the group coordinator's transactional offset commits):
    /// validated and stamped as [`PartitionLog::append_leader`], but the producer state
    /// checks only the epoch (an older one is INVALID_PRODUCER_EPOCH), not sequences or
    /// duplicates, then records the batch (a transactional one opens or continues its
    /// producer's transaction). Control batches are refused.
    pub async fn append_coordinator(
        &self,
        mut records: BytesMut,
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<LogAppendInfo, AppendError> {
        let cfg = self.config();
        let batches = validate_leader(&mut records, &cfg, now_ms)?;
        if let Some((pos, _)) = batches.iter().find(|(_, h)| h.is_control()) {
            return Err(AppendError::InvalidRecord(format!(
                "batch at byte {pos}: a coordinator writes no control batch here"
            )));
        }
        self.append(
            records,
            batches,
            Mode::Leader {
                epoch: leader_epoch,
                now_ms,
                broker_control: false,
                coordinator: true,
            },
        )
        .await
    }

    /// Appends batches that already carry offsets (replication); they must start at the log
    /// end offset and be contiguous.
    pub async fn append_follower(&self, records: BytesMut) -> Result<LogAppendInfo, AppendError> {
        let cfg = self.config();
        // Contiguity is checked again under the append lock; this early check keeps a bad
        // request from waiting behind in-flight appends.
        let batches = validate_follower(&records, &cfg, self.inner.st.borrow().next_offset)?;
        self.append(records, batches, Mode::Follower).await
    }

    async fn append(
        &self,
        mut records: BytesMut,
        batches: Vec<(usize, BatchHeader)>,
        mode: Mode,
    ) -> Result<LogAppendInfo, AppendError> {
        let inner = &self.inner;
        let cfg = inner.config.get();
        let log_append_time = match mode {
            Mode::Leader { now_ms, .. }
                if cfg.message_timestamp_type == TimestampType::LogAppendTime =>
            {
                now_ms
            }
            _ => -1,
        };
        if batches.is_empty() {
            inner.check_usable()?;
            return Ok(LogAppendInfo {
                first_offset: -1,
                last_offset: -1,
                log_append_time_ms: log_append_time,
                log_start_offset: self.log_start_offset(),
                record_count: 0,
                batch_count: 0,
                max_timestamp: -1,
            });
        }
        let now_ms = match mode {
            Mode::Leader { now_ms, .. } => now_ms,
            Mode::Follower => wall_clock_ms(),
        };
        let guard = inner.append_lock.lock().await;
        inner.check_usable()?;
        if let Mode::Follower = mode {
            // A gap is what compaction leaves on the leader; going back is not allowed.
            let expected = inner.st.borrow().next_offset;
            if batches[0].1.base_offset < expected {
                return Err(AppendError::NonContiguous {
                    expected,
                    got: batches[0].1.base_offset,
                });
            }
        }
        let total = records.len() as u64;
        let (first_offset, last_offset_guess) = {
            let st = inner.st.borrow();
            let span: i64 = batches
                .iter()
                .map(|(_, h)| i64::from(h.last_offset_delta) + 1)
                .sum();
            match mode {
                Mode::Leader { .. } => (st.next_offset, st.next_offset + span - 1),
                Mode::Follower => (
                    batches[0].1.base_offset,
                    batches[batches.len() - 1].1.last_offset(),
                ),
            }
        };
        // Kafka's `maxTimestampInMessages`: what `segment.ms` is measured against on append.
        let incoming_max_timestamp = if log_append_time >= 0 {
            log_append_time
        } else {
            batches
                .iter()
                .map(|(_, h)| h.max_timestamp)
                .max()
                .unwrap_or(-1)
        };
        if inner.should_roll(
            total,
            last_offset_guess,
            incoming_max_timestamp,
            now_ms,
            &cfg,
        ) {
            inner.roll_locked(now_ms).await?;
        }

        // Reserve: everything below is synchronous, so offsets and positions follow the lock order.
        let producer_append = match mode {
            Mode::Leader {
                broker_control: true,
                ..
            } => {
                inner.check_txn_markers(&records, &batches)?;
                None
            }
            Mode::Leader {
                coordinator: true, ..
            } => {
                inner.check_coordinator_epochs(&batches)?;
                None
            }
            Mode::Leader { .. } => {
                match inner.analyze_producers(&batches, first_offset, log_append_time)? {
                    AppendAnalysis::Duplicate(dup) => {
                        drop(guard);
                        return self.acknowledge_duplicate(dup, log_append_time, &cfg).await;
                    }
                    AppendAnalysis::NotIdempotent => None,
                    AppendAnalysis::Append(a) => Some(a),
                }
            }
            Mode::Follower => None,
        };
        let (segment, position, seq, epochs_changed, info, aborts) = {
            let mut st = inner.st.borrow_mut();
            if let Some(a) = producer_append {
                // Cannot fail: the analysis above ran in this same synchronous section.
                st.producers
                    .commit_append(a)
                    .map_err(|e| StorageError::Corrupt(format!("producer state: {e}")))?;
            }
            let segment = st
                .segments
                .last()
                .cloned()
                .ok_or_else(|| StorageError::Corrupt("log has no segment".into()))?;
            let position = segment.st.borrow().reserved_size;
            let mut next = st.next_offset;
            let mut epochs_changed = false;
            let mut record_count: u32 = 0;
            let mut max_timestamp = -1i64;
            let mut aborts = false;
            for (pos, h) in &batches {
                let bytes = &mut records[*pos..*pos + h.size()];
                let mut h = *h;
                if let Mode::Leader { epoch, .. } = mode {
                    set_base_offset(bytes, next);
                    set_partition_leader_epoch(bytes, epoch);
                    h.base_offset = next;
                    h.partition_leader_epoch = epoch;
                    if log_append_time >= 0 {
                        set_log_append_time(bytes, log_append_time);
                        h.max_timestamp = log_append_time;
                    }
                }
                // Leaders assign contiguous offsets; a follower copies the leader's, with the
                // gaps that cleaning left.
                debug_assert!(
                    h.base_offset == next || (mode.is_follower() && h.base_offset > next)
                );
                if h.partition_leader_epoch >= 0 {
                    epochs_changed |= st.epochs.assign(h.partition_leader_epoch, h.base_offset);
                }
                segment.note_batch(position + *pos as u64, &h, &cfg);
                if h.attributes & 0x30 == 0x30 {
                    // A transaction marker (transactional control batch): leaders checked it
                    // under this lock (`check_txn_markers`); followers take the leader's word.
                    aborts |= apply_txn_marker(
                        &mut st.producers,
                        &segment,
                        &records[*pos..*pos + h.size()],
                        &h,
                        true,
                    );
                } else if let Mode::Follower
                | Mode::Leader {
                    coordinator: true, ..
                } = mode
                {
                    replay_producer_batch(&mut st.producers, &h);
                }
                record_count = record_count.saturating_add(h.records_count.max(0) as u32);
                max_timestamp = max_timestamp.max(h.max_timestamp);
                next = h.next_offset();
            }
            assert_eq!(
                segment.st.borrow().reserved_size,
                position + total,
                "segment reservation drifted"
            );
            let last_offset = next - 1;
            st.producers.advance_end_offset(next);
            st.next_offset = next;
            st.stats.appends += 1;
            let seq = st.next_seq;
            st.next_seq += 1;
            st.pending.push_back(PendingWrite {
                seq,
                segment: segment.clone(),
                end_position: position + total,
                end_offset: next,
                records: u64::from(record_count),
                done: false,
            });
            let info = LogAppendInfo {
                first_offset,
                last_offset,
                log_append_time_ms: log_append_time,
                log_start_offset: st.log_start_offset,
                record_count,
                batch_count: batches.len() as u32,
                max_timestamp,
            };
            (segment, position, seq, epochs_changed, info, aborts)
        };
        let txn_segment = aborts.then(|| segment.clone());
        // Queued under the append lock, so the queue keeps reservation order.
        inner.st.borrow_mut().write_queue.push_back(QueuedWrite {
            seq,
            segment,
            position,
            bytes: records.freeze(),
        });
        drop(guard);
        inner.clone().kick_writer();
        inner.wait_visible(info.last_offset + 1).await?;
        if let Some(segment) = txn_segment {
            inner.persist_txn_index(&segment).await?;
        }
        if epochs_changed {
            inner.persist_epochs().await?;
        }
        match cfg.flush {
            FlushPolicy::EveryAppend => self.wait_durable(info.last_offset).await?,
            FlushPolicy::Interval { messages, .. }
                if messages > 0 && inner.st.borrow().unflushed_messages >= messages =>
            {
                inner.clone().start_flush();
            }
            _ => {}
        }
        Ok(info)
    }

    /// Resolves once every offset <= `offset` is fsync'd. Concurrent callers share fsyncs:
    /// while one is in flight, later callers wait for it and then share the next one.
    pub async fn wait_durable(&self, offset: i64) -> Result<(), StorageError> {
        let inner = &self.inner;
        let mut flushes = inner.flush_tx.subscribe();
        loop {
            let start = {
                let st = inner.st.borrow();
                if st.offline {
                    return Err(StorageError::Offline(inner.dir.clone()));
                }
                if st.durable_end > offset {
                    return Ok(());
                }
                if st.closed {
                    return Err(StorageError::Closed(inner.dir.clone()));
                }
                if offset >= st.next_offset {
                    return Err(StorageError::InvalidArgument(format!(
                        "offset {offset} is not below the log end offset {}",
                        st.next_offset
                    )));
                }
                if offset >= st.visible_end {
                    None
                } else {
                    Some(!st.flush_in_flight)
                }
            };
            match start {
                None => inner.wait_visible(offset + 1).await?,
                Some(true) => {
                    inner.clone().start_flush();
                    let _ = flushes.changed().await;
                }
                Some(false) => {
                    let _ = flushes.changed().await;
                }
            }
        }
    }

    /// Whether an earlier write or fsync failed and the log refuses further work.
    pub fn is_offline(&self) -> bool {
        self.inner.st.borrow().offline
    }

    /// Whether the log went offline after a write (ENOSPC, EIO on write) and no fsync has
    /// failed: what it acknowledged is still in the page cache, so the owner may drop it and
    /// open the directory again (recovery cuts the half-written tail) once space returns.
    /// After a failed fsync this is false for good: the log stays offline until a restart.
    pub fn may_reopen(&self) -> bool {
        let st = self.inner.st.borrow();
        st.offline && !st.fsync_failed
    }

    /// Counters since open (appends, fsync rounds, rolls), for metrics.
    pub fn stats(&self) -> LogStats {
        self.inner.st.borrow().stats
    }

    /// Every offset below this is on disk.
    pub fn durable_offset(&self) -> i64 {
        self.inner.st.borrow().durable_end
    }

    /// fsyncs everything appended so far.
    pub async fn flush(&self) -> Result<(), StorageError> {
        let end = self.inner.st.borrow().next_offset;
        if end <= 0 {
            return Ok(());
        }
        self.wait_durable(end - 1).await
    }

    /// First offset that can be read.
    pub fn log_start_offset(&self) -> i64 {
        self.inner.st.borrow().log_start_offset
    }

    /// The offset after the last readable batch. Appends still being written are not counted:
    /// an append that returned is always below it.
    pub fn log_end_offset(&self) -> i64 {
        self.inner.st.borrow().visible_end
    }

    /// Bytes in all segments.
    pub fn size_bytes(&self) -> u64 {
        self.inner
            .st
            .borrow()
            .segments
            .iter()
            .map(|s| s.size())
            .sum()
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.inner.st.borrow().segments.len()
    }

    /// Base offsets of the segments, oldest first.
    pub fn segment_base_offsets(&self) -> Vec<i64> {
        self.inner
            .st
            .borrow()
            .segments
            .iter()
            .map(|s| s.base_offset)
            .collect()
    }

    /// Reads whole batches starting with the one containing `from_offset`, at most `max_bytes`
    /// (but at least one batch if `min_one_batch`), none holding offsets >= `upper_bound`.
    pub async fn read(
        &self,
        from_offset: i64,
        max_bytes: u32,
        upper_bound: i64,
        min_one_batch: bool,
    ) -> Result<ReadResult, ReadError> {
        let inner = &self.inner;
        let (segments, log_start, log_end) = {
            let st = inner.st.borrow();
            if st.offline {
                return Err(StorageError::Offline(inner.dir.clone()).into());
            }
            if st.closed {
                return Err(StorageError::Closed(inner.dir.clone()).into());
            }
            let idx = st
                .segments
                .partition_point(|s| s.base_offset <= from_offset)
                .saturating_sub(1);
            (
                st.segments[idx..].to_vec(),
                st.log_start_offset,
                st.visible_end,
            )
        };
        if from_offset < log_start || from_offset > log_end {
            return Err(ReadError::OffsetOutOfRange {
                requested: from_offset,
                log_start,
                log_end,
            });
        }
        let empty = ReadResult {
            slice: None,
            log_start_offset: log_start,
            log_end_offset: log_end,
        };
        let upper = upper_bound.min(log_end);
        if from_offset >= upper {
            return Ok(empty);
        }
        for segment in segments {
            let limit = segment.size();
            let Some((start, first)) = segment.find_batch(from_offset, limit).await? else {
                continue;
            };
            if first.last_offset() >= upper {
                return Ok(empty);
            }
            let first_size = first.size() as u64;
            if first_size > u64::from(max_bytes) && !min_one_batch {
                return Ok(empty);
            }
            let max_end = start.saturating_add(u64::from(max_bytes)).min(limit);
            let mut end = segment.index_jump(start + first_size, max_end, upper);
            let mut cursor = HeaderCursor::new(&segment, limit);
            while end < limit {
                let h = cursor.header_at(end).await?;
                if h.last_offset() >= upper || end + h.size() as u64 > max_end {
                    break;
                }
                end += h.size() as u64;
            }
            let len = u32::try_from(end - start)
                .map_err(|_| StorageError::Corrupt("slice longer than 4 GiB".into()))?;
            return Ok(ReadResult {
                slice: Some(FileSlice {
                    file: segment.log.clone(),
                    position: start,
                    len,
                }),
                log_start_offset: log_start,
                log_end_offset: log_end,
            });
        }
        Ok(empty)
    }

    /// Kafka's ListOffsets by timestamp: the first record with timestamp >= `ts`, as
    /// (offset, timestamp). Batches are searched record by record; a compressed batch is
    /// decompressed for this (bounded by `DECOMPRESS_LIMIT_FACTOR` x `max.message.bytes`).
    pub async fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(i64, i64)>, StorageError> {
        let inner = &self.inner;
        let (segments, log_start) = {
            let st = inner.st.borrow();
            inner.check_usable_st(&st)?;
            (st.segments.clone(), st.log_start_offset)
        };
        let max_decompressed = usize::try_from(inner.config.get().max_message_bytes)
            .unwrap_or(usize::MAX)
            .saturating_mul(DECOMPRESS_LIMIT_FACTOR);
        for segment in segments {
            // -1: no batch with a known max timestamp (data stored with -1 headers before the
            // leader computed them); its records are searched.
            let max = segment.st.borrow().max_timestamp;
            if max >= 0 && max < ts {
                continue;
            }
            let limit = segment.size();
            if let Some(found) = segment
                .offset_for_timestamp(ts, log_start, limit, max_decompressed)
                .await?
            {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// Removes every batch containing an offset >= `offset` (a batch straddling it is removed
    /// whole), across segments, indexes and the leader-epoch cache.
    pub async fn truncate_to(&self, offset: i64) -> Result<(), StorageError> {
        let inner = &self.inner;
        let _guard = inner.append_lock.lock().await;
        // Serializes with the background finishing of rolled segments (indexes, recovery point).
        let _roll = inner.roll_flush_lock.lock().await;
        inner.drain_writes().await?;
        let (log_start, leo) = {
            let st = inner.st.borrow();
            (st.log_start_offset, st.next_offset)
        };
        if offset >= leo {
            return Ok(());
        }
        if offset < log_start {
            return inner.truncate_fully_locked(offset).await;
        }
        let (target, keep) = {
            let st = inner.st.borrow();
            let keep = st
                .segments
                .partition_point(|s| s.base_offset <= offset)
                .max(1);
            (st.segments.get(keep - 1).cloned(), keep)
        };
        let target = target.ok_or_else(|| StorageError::Corrupt("log has no segment".into()))?;
        let limit = target.size();
        let (position, new_end) = match target.find_batch(offset, limit).await? {
            Some((pos, h)) => (pos, h.base_offset),
            None => (limit, target.st.borrow().next_offset),
        };
        if new_end < log_start {
            // The batch holding `offset` straddles the log start (DeleteRecords moved it inside
            // a batch); dropping it leaves nothing readable, so restart the log at `offset`.
            return inner.truncate_fully_locked(offset).await;
        }
        let removed: Vec<Rc<Segment>> = inner.st.borrow_mut().segments.drain(keep..).collect();
        // Lower the recovery point first: after a crash the truncated segment must be scanned.
        let lowered = target.base_offset.min(inner.st.borrow().recovery_point);
        inner.write_recovery_point(lowered).await?;
        target.truncate_to(position, new_end)?;
        // Keeps the index files equal to the in-memory indexes (no stale entries past the end).
        target.write_indexes(false, false).await?;
        inner.persist_txn_index(&target).await?;
        target
            .log
            .sync_data()
            .await
            .map_err(|e| StorageError::io(target.log.path(), e))?;
        for s in &removed {
            s.delete_files().await?;
        }
        inner.sync_dir().await?;
        let changed = {
            let mut st = inner.st.borrow_mut();
            st.next_offset = new_end;
            st.visible_end = new_end;
            st.durable_end = st.durable_end.min(new_end);
            st.epochs.truncate_from_end(new_end)
        };
        inner.visible_tx.send_replace(new_end);
        if changed {
            inner.persist_epochs().await?;
        }
        inner.rebuild_producer_state(new_end).await
    }

    /// Deletes every segment and starts an empty log at `offset` (a follower far behind the
    /// leader's log start does this).
    pub async fn truncate_fully_and_start_at(&self, offset: i64) -> Result<(), StorageError> {
        if offset < 0 {
            return Err(StorageError::InvalidArgument(format!(
                "negative offset {offset}"
            )));
        }
        let inner = &self.inner;
        let _guard = inner.append_lock.lock().await;
        // Serializes with the background finishing of rolled segments (indexes, recovery point).
        let _roll = inner.roll_flush_lock.lock().await;
        inner.drain_writes().await?;
        inner.truncate_fully_locked(offset).await
    }

    /// The newest leader epoch in the cache.
    pub fn latest_epoch(&self) -> Option<i32> {
        self.inner.st.borrow().epochs.latest_epoch()
    }

    /// Kafka's OffsetForLeaderEpoch: (epoch, end offset) for `epoch`, `None` if undefined.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, i64)> {
        let st = self.inner.st.borrow();
        st.epochs.end_offset_for(epoch, st.visible_end)
    }

    /// The leader-epoch cache entries as (epoch, start offset).
    pub fn epoch_entries(&self) -> Vec<(i32, i64)> {
        self.inner
            .st
            .borrow()
            .epochs
            .entries()
            .iter()
            .map(|e| (e.epoch, e.start_offset))
            .collect()
    }

    /// Kafka's DeleteRecords: moves the log start to `offset` (not beyond the log end) and
    /// deletes segments wholly below it. Returns the new log start offset.
    pub async fn delete_records_before(&self, offset: i64) -> Result<i64, StorageError> {
        let inner = &self.inner;
        let _guard = inner.append_lock.lock().await;
        // Serializes with the background finishing of rolled segments (indexes, recovery point).
        let _roll = inner.roll_flush_lock.lock().await;
        let (start, end) = {
            let st = inner.st.borrow();
            inner.check_usable_st(&st)?;
            (st.log_start_offset, st.visible_end)
        };
        if offset > end {
            return Err(StorageError::InvalidArgument(format!(
                "offset {offset} is beyond the log end {end}"
            )));
        }
        if offset <= start {
            return Ok(start);
        }
        inner.advance_log_start(offset).await?;
        inner.delete_segments_below_start().await?;
        inner.retain_producer_state().await?;
        Ok(self.log_start_offset())
    }

    /// Deletes old non-active segments by `retention.ms` and `retention.bytes`, and segments
    /// wholly below the log start offset.
    pub async fn enforce_retention(&self, now_ms: i64) -> Result<RetentionOutcome, StorageError> {
        let inner = &self.inner;
        let _guard = inner.append_lock.lock().await;
        // Serializes with the background finishing of rolled segments (indexes, recovery point).
        let _roll = inner.roll_flush_lock.lock().await;
        let cfg = inner.config.get();
        let infos: Vec<SegmentInfo> = {
            let st = inner.st.borrow();
            inner.check_usable_st(&st)?;
            st.segments
                .iter()
                .map(|s| {
                    let ss = s.st.borrow();
                    // Kafka falls back to the file's modification time when a segment has no timestamps.
                    let largest_timestamp = if ss.max_timestamp >= 0 {
                        ss.max_timestamp
                    } else {
                        ss.created_ms
                    };
                    SegmentInfo {
                        base_offset: s.base_offset,
                        size: ss.size,
                        largest_timestamp,
                    }
                })
                .collect()
        };
        let log_start = self.log_start_offset();
        // A compact-only topic keeps everything the cleaner keeps (Kafka's cleanup.policy).
        let plan_cfg = if cfg.delete {
            cfg
        } else {
            LogConfig {
                retention_ms: -1,
                retention_bytes: -1,
                ..cfg
            }
        };
        let plan = plan_retention(&infos, &plan_cfg, now_ms, log_start);
        let mut outcome = RetentionOutcome {
            deleted_segments: 0,
            deleted_bytes: 0,
            log_start_offset: log_start,
        };
        if plan.delete_count > 0 {
            let new_start = infos[plan.delete_count].base_offset;
            if new_start > log_start {
                inner.advance_log_start(new_start).await?;
            }
            let (n, bytes) = inner.delete_segments_below_start().await?;
            outcome.deleted_segments = n;
            outcome.deleted_bytes = bytes;
            inner.retain_producer_state().await?;
        }
        outcome.log_start_offset = self.log_start_offset();
        Ok(outcome)
    }

    /// Rolls a non-empty active segment once `segment.ms` of wall-clock time has passed since
    /// it was created. Kafka has no such timer (it only rolls on append); record timestamps
    /// are not used here because a producer sending old timestamps would roll on every tick.
    pub async fn roll_if_due(&self, now_ms: i64) -> Result<bool, StorageError> {
        let inner = &self.inner;
        let _guard = inner.append_lock.lock().await;
        inner.check_usable()?;
        let cfg = inner.config.get();
        let due = {
            let st = inner.st.borrow();
            st.segments
                .last()
                .is_some_and(|s| inner.time_roll_due(s, None, now_ms, &cfg))
        };
        if due {
            inner.roll_locked(now_ms).await?;
        }
        Ok(due)
    }

    /// Flushes everything, writes trimmed indexes and checkpoints, then the clean-shutdown
    /// marker. The log refuses further work afterwards.
    pub async fn close(&self) -> Result<(), StorageError> {
        let inner = &self.inner;
        let _guard = inner.append_lock.lock().await;
        if inner.st.borrow().closed {
            return Ok(());
        }
        inner.check_usable()?;
        inner.drain_writes().await?;
        self.flush().await?;
        let _roll = inner.roll_flush_lock.lock().await;
        let segments = inner.st.borrow().segments.clone();
        for s in &segments {
            s.write_indexes(true, true).await?;
        }
        let (leo, start) = {
            let st = inner.st.borrow();
            (st.next_offset, st.log_start_offset)
        };
        inner.write_recovery_point(leo).await?;
        inner
            .write_checkpoint(LOG_START_FILE, encode_offset(start))
            .await?;
        inner.persist_epochs().await?;
        inner.snapshot_producers_at_close(leo).await?;
        inner
            .write_checkpoint(CLEAN_SHUTDOWN_FILE, Vec::new())
            .await?;
        inner.st.borrow_mut().closed = true;
        inner.flush_tx.send_modify(|g| *g += 1);
        Ok(())
    }

    /// Deletes the partition directory and everything in it.
    pub async fn delete(self) -> Result<(), StorageError> {
        let inner = &self.inner;
        let _guard = inner.append_lock.lock().await;
        let _roll = inner.roll_flush_lock.lock().await;
        let _ = inner.drain_writes().await;
        inner.st.borrow_mut().closed = true;
        inner.flush_tx.send_modify(|g| *g += 1);
        // A directory removal is rare and not on the hot path; std is used as at open.
        std::fs::remove_dir_all(&inner.dir).map_err(|e| StorageError::io(&inner.dir, e))
    }
}

impl Drop for PartitionLog {
    /// Background tasks (rolled-segment finishing, interval flushes) may outlive the handle;
    /// marking the log closed stops them from starting new work on a directory that may be
    /// reopened by a new `PartitionLog`.
    fn drop(&mut self) {
        if let Ok(mut st) = self.inner.st.try_borrow_mut() {
            st.closed = true;
        }
    }
}

impl Inner {
    fn check_usable(&self) -> Result<(), StorageError> {
        self.check_usable_st(&self.st.borrow())
    }

    fn check_usable_st(&self, st: &LogState) -> Result<(), StorageError> {
        if st.offline {
            Err(StorageError::Offline(self.dir.clone()))
        } else if st.closed {
            Err(StorageError::Closed(self.dir.clone()))
        } else {
            Ok(())
        }
    }

    /// Kafka's `timeWaitedForRoll` against `segment.ms`. With an incoming batch and a segment
    /// whose first batch has a timestamp, the wait is measured in record time (incoming max
    /// timestamp minus the first batch's max timestamp), so old timestamps do not roll on
    /// every append; otherwise it is wall-clock time since the segment was created.
    fn time_roll_due(
        &self,
        s: &Segment,
        incoming_max_timestamp: Option<i64>,
        now_ms: i64,
        cfg: &LogConfig,
    ) -> bool {
        let ss = s.st.borrow();
        if ss.reserved_size == 0 {
            return false;
        }
        let waited = match (ss.rolling_base_timestamp, incoming_max_timestamp) {
            (Some(base), Some(incoming)) if base >= 0 => incoming.saturating_sub(base),
            _ => now_ms.saturating_sub(ss.created_ms),
        };
        waited > cfg.segment_ms
    }

    /// Kafka's `shouldRoll`: size, full indexes, relative offset overflow, or segment.ms.
    fn should_roll(
        &self,
        add_bytes: u64,
        last_offset: i64,
        incoming_max_timestamp: i64,
        now_ms: i64,
        cfg: &LogConfig,
    ) -> bool {
        let st = self.st.borrow();
        let Some(active) = st.segments.last() else {
            return false;
        };
        {
            let ss = active.st.borrow();
            if ss.reserved_size == 0 {
                return false;
            }
            if ss.reserved_size + add_bytes > cfg.segment_bytes
                || ss.offset_index.is_full()
                || ss.time_index.is_full()
                || last_offset - active.base_offset > i64::from(i32::MAX)
            {
                return true;
            }
        }
        self.time_roll_due(active, Some(incoming_max_timestamp), now_ms, cfg)
    }

    /// Starts a new segment at the next offset; the old one is finished (final time index
    /// entry, trimmed indexes, fsync) in the background once its writes complete.
    async fn roll_locked(self: &Rc<Self>, now_ms: i64) -> Result<(), StorageError> {
        let cfg = self.config.get();
        let (base, old) = {
            let st = self.st.borrow();
            (st.next_offset, st.segments.last().cloned())
        };
        if old.as_ref().is_some_and(|o| o.base_offset == base) {
            return Ok(());
        }
        let segment = match Segment::create(&self.dir, base, &cfg, now_ms).await {
            Ok(s) => Rc::new(s),
            Err(e) => {
                self.st.borrow_mut().offline = true;
                tracing::error!(dir = %self.dir.display(), error = %e, "cannot create segment");
                return Err(e);
            }
        };
        {
            let mut st = self.st.borrow_mut();
            st.segments.push(segment);
            st.dir_dirty = true;
            st.stats.rolls += 1;
        }
        tracing::debug!(dir = %self.dir.display(), base, "rolled segment");
        if let Some(old) = old {
            let inner = self.clone();
            let snapshot = self.capture_producer_snapshot();
            spawn(async move {
                if let Err(e) = inner.finish_rolled(old, base, snapshot).await {
                    tracing::error!(dir = %inner.dir.display(), error = %e, "flushing a rolled segment failed");
                    let mut st = inner.st.borrow_mut();
                    st.offline = true;
                    // The roll's flush writes (trimmed indexes, the recovery-point checkpoint)
                    // and fsyncs: a full disk fails the writes, and local filesystems report
                    // ENOSPC at allocation, not at fsync; any other failure may be an fsync's.
                    st.fsync_failed |= !is_out_of_space(&e);
                    drop(st);
                    inner.visible_tx.send_modify(|_| {});
                    inner.flush_tx.send_modify(|g| *g += 1);
                }
            });
        }
        Ok(())
    }

    async fn finish_rolled(
        self: &Rc<Self>,
        old: Rc<Segment>,
        next_base: i64,
        producer_snapshot: Vec<u8>,
    ) -> Result<(), StorageError> {
        let _order = self.roll_flush_lock.lock().await;
        self.wait_visible(next_base).await?;
        let still_rolled = {
            let st = self.st.borrow();
            // A truncation may have removed the old segment or made it active again; then
            // there is nothing to finish (and the recovery point must not move past it).
            let pos = st.segments.iter().position(|s| Rc::ptr_eq(s, &old));
            !st.closed
                && pos.is_some_and(|p| {
                    st.segments
                        .get(p + 1)
                        .is_some_and(|n| n.base_offset == next_base)
                })
        };
        if !still_rolled {
            return Ok(());
        }
        old.write_indexes(true, true).await?;
        old.st.borrow_mut().unflushed = false;
        old.log
            .sync_data()
            .await
            .map_err(|e| StorageError::io(old.log.path(), e))?;
        self.sync_dir().await?;
        self.write_roll_snapshot(next_base, producer_snapshot).await;
        {
            let mut st = self.st.borrow_mut();
            // Earlier segments were finished in order before this one, so all of [.., next_base) is durable.
            if st.durable_end < next_base && st.visible_end >= next_base {
                st.durable_end = next_base;
            }
        }
        self.flush_tx.send_modify(|g| *g += 1);
        if self.st.borrow().recovery_point < next_base {
            self.write_recovery_point(next_base).await?;
        }
        Ok(())
    }

    /// Hands queued writes to the kernel from one spawned task per log: appends queued before
    /// the task runs (or while it waits for an index file) go out together in one `pwritev`.
    /// The write itself is a synchronous page-cache copy on the shard thread (see
    /// `DiskFile::pwrite_all_vectored`); completion is still reported in reservation order.
    fn kick_writer(self: Rc<Self>) {
        {
            let mut st = self.st.borrow_mut();
            if st.writer_running || st.write_queue.is_empty() {
                return;
            }
            st.writer_running = true;
        }
        spawn(async move {
            loop {
                let run = {
                    let mut st = self.st.borrow_mut();
                    if st.offline || st.write_queue.is_empty() {
                        st.writer_running = false;
                        break;
                    }
                    let mut run: Vec<QueuedWrite> = Vec::new();
                    let mut bytes = 0usize;
                    while let Some(next) = st.write_queue.front() {
                        let contiguous = run.last().is_none_or(|last| {
                            Rc::ptr_eq(&last.segment, &next.segment)
                                && last.position + last.bytes.len() as u64 == next.position
                        });
                        if !contiguous
                            || run.len() >= MAX_WRITEV_BUFS
                            || (!run.is_empty() && bytes + next.bytes.len() > MAX_WRITEV_BYTES)
                        {
                            break;
                        }
                        bytes += next.bytes.len();
                        if let Some(w) = st.write_queue.pop_front() {
                            run.push(w);
                        }
                    }
                    run
                };
                let Some(first) = run.first() else { continue };
                let segment = first.segment.clone();
                let file = segment.log.clone();
                let position = first.position;
                let seqs: Vec<u64> = run.iter().map(|w| w.seq).collect();
                let bufs: Vec<Bytes> = run.into_iter().map(|w| w.bytes).collect();
                let len: usize = bufs.iter().map(Bytes::len).sum();
                // A plain pwritev on the shard thread while the page cache absorbs writes at
                // memory speed; io_uring (its io-wq workers) while the kernel throttles dirty
                // pages, so that a blocked write does not stall the shard. See
                // `DiskFile::pwrite_all_vectored` and docs/arch/storage.md ("Write path").
                let now = Instant::now();
                let via_uring = self.st.borrow().uring_writes_until.is_some_and(|t| now < t);
                let res = if via_uring {
                    file.write_all_vectored_at(bufs, position).await
                } else {
                    let res = file.pwrite_all_vectored(&bufs, position);
                    drop(bufs);
                    if now.elapsed() > slow_sync_write(len) {
                        self.st.borrow_mut().uring_writes_until =
                            Some(Instant::now() + URING_WRITES_AFTER_SLOW);
                        tracing::debug!(dir = %self.dir.display(), bytes = len, took_us = now.elapsed().as_micros() as u64,
                            "page-cache write was throttled; writing through io_uring for a while");
                    }
                    res
                };
                // Index entries for these batches go to the index files before the batches
                // become visible, so a roll or close that waits for visibility sees them.
                let res = match res {
                    Ok(()) => segment
                        .write_new_index_entries(via_uring)
                        .await
                        .map_err(|e| io::Error::other(e.to_string())),
                    Err(e) => Err(e),
                };
                let failed = res.is_err();
                self.complete_writes(&seqs, res);
                if failed {
                    self.st.borrow_mut().writer_running = false;
                    break;
                }
            }
        });
    }

    fn complete_writes(&self, seqs: &[u64], res: io::Result<()>) {
        let mut st = self.st.borrow_mut();
        if let Err(e) = res {
            tracing::error!(dir = %self.dir.display(), error = %e, "segment write failed; log goes offline");
            st.offline = true;
            drop(st);
            self.visible_tx.send_modify(|_| {});
            self.flush_tx.send_modify(|g| *g += 1);
            return;
        }
        let Some(front) = st.pending.front().map(|p| p.seq) else {
            return;
        };
        for &seq in seqs {
            let Some(idx) = seq.checked_sub(front).map(|i| i as usize) else {
                continue;
            };
            if let Some(p) = st.pending.get_mut(idx) {
                p.done = true;
            }
        }
        let mut advanced = false;
        while st.pending.front().is_some_and(|p| p.done) {
            let Some(p) = st.pending.pop_front() else {
                break;
            };
            {
                let mut ss = p.segment.st.borrow_mut();
                debug_assert!(p.end_position >= ss.size);
                ss.size = p.end_position;
                ss.unflushed = true;
            }
            st.visible_end = p.end_offset;
            st.unflushed_messages += p.records;
            advanced = true;
        }
        if advanced {
            let v = st.visible_end;
            drop(st);
            self.visible_tx.send_replace(v);
        }
    }

    async fn wait_visible(&self, offset: i64) -> Result<(), StorageError> {
        let mut rx = self.visible_tx.subscribe();
        loop {
            {
                let st = self.st.borrow();
                if st.offline {
                    return Err(StorageError::Offline(self.dir.clone()));
                }
                if st.visible_end >= offset || st.next_offset < offset {
                    return Ok(());
                }
            }
            if rx.changed().await.is_err() {
                return Err(StorageError::Closed(self.dir.clone()));
            }
        }
    }

    /// Waits for every reserved write to complete (the caller holds the append lock).
    async fn drain_writes(&self) -> Result<(), StorageError> {
        let next = self.st.borrow().next_offset;
        self.wait_visible(next).await
    }

    /// Spawns one fsync round; durable_end moves to the readable end captured before it.
    fn start_flush(self: Rc<Self>) {
        let (watermark, segments, dir_dirty) = {
            let mut st = self.st.borrow_mut();
            if st.flush_in_flight || st.offline || st.closed {
                return;
            }
            st.flush_in_flight = true;
            let segments: Vec<_> = st
                .segments
                .iter()
                .filter(|s| std::mem::take(&mut s.st.borrow_mut().unflushed))
                .cloned()
                .collect();
            let dir_dirty = std::mem::take(&mut st.dir_dirty);
            (st.visible_end, segments, dir_dirty)
        };
        spawn(async move {
            let mut result = Ok(());
            for s in &segments {
                if let Err(e) = s.log.sync_data().await {
                    result = Err(StorageError::io(s.log.path(), e));
                    break;
                }
            }
            if result.is_ok() && dir_dirty {
                result = self.sync_dir().await;
            }
            {
                let mut st = self.st.borrow_mut();
                st.flush_in_flight = false;
                match &result {
                    Ok(()) => {
                        if watermark > st.durable_end {
                            st.durable_end = watermark;
                        }
                        st.unflushed_messages = 0;
                        st.stats.fsyncs += 1;
                    }
                    Err(e) => {
                        tracing::error!(dir = %self.dir.display(), error = %e, "fsync failed; log goes offline until restart");
                        st.offline = true;
                        st.fsync_failed = true;
                    }
                }
            }
            self.flush_tx.send_modify(|g| *g += 1);
        });
    }

    fn spawn_interval_flusher(self: &Rc<Self>) {
        let FlushPolicy::Interval { ms, .. } = self.config.get().flush else {
            return;
        };
        if ms == 0 {
            return;
        }
        let weak = Rc::downgrade(self);
        spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                let Some(inner) = weak.upgrade() else { return };
                // A config change that alters the interval spawns a new flusher; this one ends.
                if !matches!(inner.config.get().flush, FlushPolicy::Interval { ms: m, .. } if m == ms)
                {
                    return;
                }
                let due = {
                    let st = inner.st.borrow();
                    if st.closed || st.offline {
                        return;
                    }
                    st.durable_end < st.visible_end
                };
                if due {
                    inner.start_flush();
                }
            }
        });
    }

    async fn sync_dir(&self) -> Result<(), StorageError> {
        let dir = DiskFile::open_dir(&self.dir)
            .await
            .map_err(|e| StorageError::io(&self.dir, e))?;
        dir.sync_all()
            .await
            .map_err(|e| StorageError::io(&self.dir, e))
    }

    async fn write_checkpoint(&self, name: &str, contents: Vec<u8>) -> Result<(), StorageError> {
        let path = self.dir.join(name);
        write_file_atomic(&path, contents)
            .await
            .map_err(|e| StorageError::io(&path, e))
    }

    async fn write_recovery_point(&self, offset: i64) -> Result<(), StorageError> {
        let _g = self.checkpoint_lock.lock().await;
        self.write_checkpoint(RECOVERY_POINT_FILE, encode_offset(offset))
            .await?;
        self.st.borrow_mut().recovery_point = offset;
        Ok(())
    }

    async fn persist_epochs(&self) -> Result<(), StorageError> {
        let _g = self.checkpoint_lock.lock().await;
        let bytes = self.st.borrow().epochs.encode();
        self.write_checkpoint(LEADER_EPOCH_FILE, bytes).await
    }

    async fn advance_log_start(&self, offset: i64) -> Result<(), StorageError> {
        let changed = {
            let mut st = self.st.borrow_mut();
            if offset <= st.log_start_offset {
                return Ok(());
            }
            st.log_start_offset = offset;
            st.epochs.truncate_from_start(offset)
        };
        {
            let _g = self.checkpoint_lock.lock().await;
            self.write_checkpoint(LOG_START_FILE, encode_offset(offset))
                .await?;
        }
        if changed {
            self.persist_epochs().await?;
        }
        Ok(())
    }

    /// Deletes non-active segments whose successor starts at or below the log start.
    async fn delete_segments_below_start(&self) -> Result<(usize, u64), StorageError> {
        let doomed: Vec<Rc<Segment>> = {
            let mut st = self.st.borrow_mut();
            let start = st.log_start_offset;
            let mut n = 0;
            while n + 1 < st.segments.len() && st.segments[n + 1].base_offset <= start {
                n += 1;
            }
            st.segments.drain(..n).collect()
        };
        let mut bytes = 0;
        for s in &doomed {
            bytes += s.size();
            s.delete_files().await?;
            tracing::info!(dir = %self.dir.display(), base = s.base_offset, "deleted segment");
        }
        if !doomed.is_empty() {
            self.st.borrow_mut().dir_dirty = true;
        }
        Ok((doomed.len(), bytes))
    }

    async fn truncate_fully_locked(self: &Rc<Self>, offset: i64) -> Result<(), StorageError> {
        let cfg = self.config.get();
        let old: Vec<Rc<Segment>> = std::mem::take(&mut self.st.borrow_mut().segments);
        for s in &old {
            s.delete_files().await?;
        }
        let segment = Rc::new(Segment::create(&self.dir, offset, &cfg, wall_clock_ms()).await?);
        self.sync_dir().await?;
        {
            let mut st = self.st.borrow_mut();
            st.segments.push(segment);
            st.log_start_offset = offset;
            st.next_offset = offset;
            st.visible_end = offset;
            st.durable_end = offset;
            st.epochs.clear();
            st.producers.reset_to(offset);
        }
        self.delete_producer_snapshots_above(-1).await?;
        self.visible_tx.send_replace(offset);
        {
            let _g = self.checkpoint_lock.lock().await;
            self.write_checkpoint(LOG_START_FILE, encode_offset(offset))
                .await?;
        }
        self.persist_epochs().await?;
        self.write_recovery_point(offset).await
    }
}

/// The log as the cleaner sees it at one instant (see `storage::cleaner`).
pub(crate) struct CleanerView {
    /// Segments, oldest first; the last one is active.
    pub segments: Vec<Rc<Segment>>,
    /// Segments whose successor starts at or below this are flushed with their indexes.
    pub recovery_point: i64,
}

// Hooks for the log cleaner, kept apart from the append path: the cleaner copies segments
// without any lock and takes `roll_flush_lock` (which every other segment-list change except
// roll takes) only to check and swap. A roll only pushes the new active segment, so it
// cannot disturb the non-active run being replaced.
impl PartitionLog {
    /// Segments and recovery point, if the log is usable.
    /// Persists the replication high watermark (written periodically and at close by the
    /// broker's replication layer; the log itself does not know it).
    pub async fn write_high_watermark(&self, offset: i64) -> Result<(), StorageError> {
        let inner = &self.inner;
        let _g = inner.checkpoint_lock.lock().await;
        inner
            .write_checkpoint(HIGH_WATERMARK_FILE, encode_offset(offset))
            .await
    }

    /// The checkpointed replication high watermark, capped at the log end (records above it
    /// may have been lost in a crash); `None` without a readable checkpoint.
    pub fn checkpointed_high_watermark(&self) -> Option<i64> {
        // One small read when a replica opens.
        let bytes = std::fs::read(self.inner.dir.join(HIGH_WATERMARK_FILE)).ok()?;
        let hw = super::checkpoint::decode_offset(&bytes)?;
        Some(hw.min(self.log_end_offset()).max(self.log_start_offset()))
    }

    /// Bounds the cleaner to offsets below `offset` (a replicated partition's high watermark:
    /// records above it may still be truncated, and every replica must clean the same
    /// committed prefix). Without a call the whole flushed log, minus the active segment, is
    /// cleanable.
    pub fn set_cleanable_end(&self, offset: i64) {
        self.inner.cleanable_end.set(offset);
    }

    pub(crate) fn cleaner_view(&self) -> Result<CleanerView, StorageError> {
        let st = self.inner.st.borrow();
        self.inner.check_usable_st(&st)?;
        Ok(CleanerView {
            segments: st.segments.clone(),
            // Only segments wholly below this are cleaned; never data of an undecided
            // transaction (its records could still be aborted), as Kafka stops at the LSO.
            recovery_point: st.recovery_point.min(self.inner.cleanable_end.get()).min(
                st.producers
                    .open_transactions()
                    .iter()
                    .map(|t| t.1)
                    .min()
                    .unwrap_or(i64::MAX),
            ),
        })
    }

    /// Serializes a segment swap with truncation, retention, DeleteRecords, close and the
    /// finishing of rolled segments.
    pub(crate) async fn lock_segment_list(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.roll_flush_lock.lock().await
    }

    /// With the segment-list lock held: whether `old` (segment, size when copied) is still a
    /// consecutive run of non-active segments with the same sizes in a usable log.
    pub(crate) fn segments_unchanged(&self, old: &[(Rc<Segment>, u64)]) -> bool {
        let st = self.inner.st.borrow();
        if st.offline || st.closed || old.is_empty() {
            return false;
        }
        let Some(i) = st.segments.iter().position(|s| Rc::ptr_eq(s, &old[0].0)) else {
            return false;
        };
        i + old.len() < st.segments.len()
            && old
                .iter()
                .zip(&st.segments[i..])
                .all(|((o, size), s)| Rc::ptr_eq(o, s) && s.size() == *size)
    }

    /// With the segment-list lock held and `segments_unchanged` true: puts `new` in place of
    /// the run starting with `first` of `count` segments.
    pub(crate) fn replace_segments(&self, first: &Rc<Segment>, count: usize, new: Rc<Segment>) {
        let mut st = self.inner.st.borrow_mut();
        let Some(i) = st.segments.iter().position(|s| Rc::ptr_eq(s, first)) else {
            return;
        };
        assert!(
            i + count < st.segments.len(),
            "the cleaner never replaces the active segment"
        );
        st.segments.splice(i..i + count, [new]);
        st.dir_dirty = true;
    }
}

/// Whether `e` is a full disk or quota (ENOSPC, EDQUOT): a failed allocation, after which the
/// log may be reopened once space returns.
fn is_out_of_space(e: &StorageError) -> bool {
    match e {
        StorageError::Io { source, .. } => matches!(
            source.raw_os_error(),
            Some(libc::ENOSPC) | Some(libc::EDQUOT)
        ),
        _ => false,
    }
}

#[cfg(test)]
mod out_of_space_tests {
    use super::*;

    #[test]
    fn only_a_full_disk_or_quota_counts_as_out_of_space() {
        let io = |code| StorageError::io("/x", io::Error::from_raw_os_error(code));
        assert!(is_out_of_space(&io(libc::ENOSPC)));
        assert!(is_out_of_space(&io(libc::EDQUOT)));
        assert!(!is_out_of_space(&io(libc::EIO)));
        assert!(!is_out_of_space(&StorageError::Offline("/x".into())));
    }
}
