//! One segment: a `.log` file of batches plus its in-memory offset and time indexes.
//!
//! The segment's sizes, indexes and timestamps live in a `RefCell` that is only borrowed in
//! synchronous sections; I/O is done on the `DiskFile` outside any borrow.

use std::cell::RefCell;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::io::file::{remove_file_if_exists, DiskFile};

use super::cleaner::records::stored_record_infos;
use super::config::LogConfig;
use super::decompress::decompress_records;
use super::error::StorageError;
use super::offset_index::OffsetIndex;
use super::record_batch::{
    validate_batch, BatchHeader, Compression, RecordInfo, TimestampType, HEADER_SIZE,
};
use super::time_index::TimeIndex;
use super::validate::DECOMPRESS_LIMIT_FACTOR;

/// Log file suffix.
pub const LOG_SUFFIX: &str = "log";
/// Offset index suffix.
pub const INDEX_SUFFIX: &str = "index";
/// Time index suffix.
pub const TIME_INDEX_SUFFIX: &str = "timeindex";
use super::txn_index::AbortedTxn;
pub use super::txn_index::TXN_INDEX_SUFFIX;

/// `<dir>/<20-digit base offset>.<suffix>`, as Kafka names segment files.
pub fn segment_path(dir: &Path, base_offset: i64, suffix: &str) -> PathBuf {
    dir.join(format!("{base_offset:020}.{suffix}"))
}

/// Parses a segment file name into (base offset, suffix).
pub fn parse_segment_name(name: &str) -> Option<(i64, &str)> {
    let (stem, suffix) = name.split_once('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((stem.parse().ok()?, suffix))
}

/// Mutable state of a segment.
#[derive(Debug)]
pub(crate) struct SegmentState {
    /// Bytes handed to writes (submitted or completed).
    pub reserved_size: u64,
    /// Bytes whose writes completed contiguously from 0: the readable size.
    pub size: u64,
    /// Offset after the last reserved batch.
    pub next_offset: i64,
    pub offset_index: OffsetIndex,
    pub time_index: TimeIndex,
    pub bytes_since_index_entry: u64,
    /// Largest batch max timestamp so far (-1 if none).
    pub max_timestamp: i64,
    pub offset_of_max_timestamp: i64,
    /// Max timestamp of the first batch: the clock `segment.ms` rolls by.
    pub rolling_base_timestamp: Option<i64>,
    pub created_ms: i64,
    /// Completed writes not yet fsync'd.
    pub unflushed: bool,
    /// In-memory indexes differ from the index files.
    pub indexes_dirty: bool,
    /// Offset index entries already written to the `.index` file.
    pub index_entries_on_disk: usize,
    /// Time index entries already written to the `.timeindex` file.
    pub time_entries_on_disk: usize,
}

/// Open `.index` and `.timeindex` handles that new entries are written through.
#[derive(Debug)]
pub(crate) struct IndexFiles {
    offset: DiskFile,
    time: DiskFile,
}

/// A segment of a partition log.
#[derive(Debug)]
pub(crate) struct Segment {
    pub base_offset: i64,
    pub log: Rc<DiskFile>,
    pub dir: PathBuf,
    pub st: RefCell<SegmentState>,
    /// Index file handles, opened at creation (preallocated) or on the first new entry.
    index_files: RefCell<Option<Rc<IndexFiles>>>,
    /// The aborted transactions whose ABORT marker lies in this segment, in marker order
    /// (the `.txnindex` file's entries; see `storage::txn_index`).
    pub aborted: RefCell<Vec<AbortedTxn>>,
}

/// What a full scan of a segment found.
#[derive(Debug, Default)]
pub(crate) struct ScanOutcome {
    /// Bytes cut off the tail because they were not valid batches.
    pub truncated_bytes: u64,
    /// (epoch, base offset) of every batch whose leader epoch differs from the previous one,
    /// so recovery can restore leader-epoch entries a crash kept out of the checkpoint.
    pub epoch_starts: Vec<(i32, i64)>,
}

impl Segment {
    fn with_file(
        dir: &Path,
        base_offset: i64,
        log: DiskFile,
        cfg: &LogConfig,
        now_ms: i64,
    ) -> Segment {
        let max = cfg.max_index_entries();
        Segment {
            base_offset,
            log: Rc::new(log),
            dir: dir.to_path_buf(),
            st: RefCell::new(SegmentState {
                reserved_size: 0,
                size: 0,
                next_offset: base_offset,
                offset_index: OffsetIndex::new(base_offset, max),
                time_index: TimeIndex::new(base_offset, max),
                bytes_since_index_entry: 0,
                max_timestamp: -1,
                offset_of_max_timestamp: base_offset,
                rolling_base_timestamp: None,
                created_ms: now_ms,
                unflushed: false,
                indexes_dirty: true,
                index_entries_on_disk: 0,
                time_entries_on_disk: 0,
            }),
            index_files: RefCell::new(None),
            aborted: RefCell::new(Vec::new()),
        }
    }

    /// Creates a new empty segment (io_uring openat), replacing stale files of the same name.
    pub async fn create(
        dir: &Path,
        base_offset: i64,
        cfg: &LogConfig,
        now_ms: i64,
    ) -> Result<Segment, StorageError> {
        let path = segment_path(dir, base_offset, LOG_SUFFIX);
        for suffix in [
            LOG_SUFFIX,
            INDEX_SUFFIX,
            TIME_INDEX_SUFFIX,
            TXN_INDEX_SUFFIX,
        ] {
            let p = segment_path(dir, base_offset, suffix);
            remove_file_if_exists(&p)
                .await
                .map_err(|e| StorageError::io(&p, e))?;
        }
        let log = DiskFile::create_new(&path)
            .await
            .map_err(|e| StorageError::io(&path, e))?;
        let segment = Segment::with_file(dir, base_offset, log, cfg, now_ms);
        // As Kafka does: both index files start at `segment.index.bytes` (the time index
        // rounded down to whole entries) and are trimmed to their entries at roll and close.
        let index_bytes = u64::from(cfg.segment_index_bytes);
        let time_bytes = index_bytes - index_bytes % super::time_index::ENTRY_SIZE as u64;
        let offset = preallocated(&segment.path(INDEX_SUFFIX), index_bytes).await?;
        let time = preallocated(&segment.path(TIME_INDEX_SUFFIX), time_bytes).await?;
        *segment.index_files.borrow_mut() = Some(Rc::new(IndexFiles { offset, time }));
        Ok(segment)
    }

    /// Writes index entries added since the last call to their positions in the index files
    /// (opening them on first use). Called by the log's writer after the batch write that
    /// the entries point into, so one task orders all of a segment's entry writes. The
    /// writes are synchronous `pwrite`s unless `via_uring` (the writer's current choice).
    pub async fn write_new_index_entries(&self, via_uring: bool) -> Result<(), StorageError> {
        let (idx_from, idx_bytes, time_from, time_bytes) = {
            let st = self.st.borrow();
            if st.offset_index.len() <= st.index_entries_on_disk
                && st.time_index.len() <= st.time_entries_on_disk
            {
                return Ok(());
            }
            (
                st.index_entries_on_disk,
                st.offset_index.encode_from(st.index_entries_on_disk),
                st.time_entries_on_disk,
                st.time_index.encode_from(st.time_entries_on_disk),
            )
        };
        let files = self.index_files().await?;
        let (idx_count, time_count) = (
            idx_bytes.len() / super::offset_index::ENTRY_SIZE,
            time_bytes.len() / super::time_index::ENTRY_SIZE,
        );
        if !idx_bytes.is_empty() {
            let pos = (idx_from * super::offset_index::ENTRY_SIZE) as u64;
            let res = if via_uring {
                files.offset.write_vec_at(idx_bytes, pos).await
            } else {
                files.offset.pwrite_all(&idx_bytes, pos)
            };
            res.map_err(|e| StorageError::io(files.offset.path(), e))?;
        }
        if !time_bytes.is_empty() {
            let pos = (time_from * super::time_index::ENTRY_SIZE) as u64;
            let res = if via_uring {
                files.time.write_vec_at(time_bytes, pos).await
            } else {
                files.time.pwrite_all(&time_bytes, pos)
            };
            res.map_err(|e| StorageError::io(files.time.path(), e))?;
        }
        let mut st = self.st.borrow_mut();
        // Truncation and full rewrites happen only with no write in flight, so the counts
        // cannot have moved under us.
        debug_assert_eq!(st.index_entries_on_disk, idx_from);
        st.index_entries_on_disk = idx_from + idx_count;
        st.time_entries_on_disk = time_from + time_count;
        Ok(())
    }

    async fn index_files(&self) -> Result<Rc<IndexFiles>, StorageError> {
        if let Some(f) = self.index_files.borrow().as_ref() {
            return Ok(f.clone());
        }
        let open = |p: PathBuf| async move {
            DiskFile::open_rw_async(&p)
                .await
                .map_err(|e| StorageError::io(&p, e))
        };
        let offset = open(self.path(INDEX_SUFFIX)).await?;
        let time = open(self.path(TIME_INDEX_SUFFIX)).await?;
        let files = Rc::new(IndexFiles { offset, time });
        *self.index_files.borrow_mut() = Some(files.clone());
        Ok(files)
    }

    /// Wraps a log file the cleaner is writing; it fills the state with `note_batch`.
    pub(crate) fn for_cleaned(
        dir: &Path,
        base_offset: i64,
        log: DiskFile,
        cfg: &LogConfig,
        created_ms: i64,
    ) -> Segment {
        Segment::with_file(dir, base_offset, log, cfg, created_ms)
    }

    /// Wraps an existing log file whose state the caller will load or scan.
    pub fn open_existing(
        dir: &Path,
        base_offset: i64,
        cfg: &LogConfig,
        now_ms: i64,
    ) -> Result<Segment, StorageError> {
        let path = segment_path(dir, base_offset, LOG_SUFFIX);
        let log = DiskFile::open_rw(&path, false).map_err(|e| StorageError::io(&path, e))?;
        Ok(Segment::with_file(dir, base_offset, log, cfg, now_ms))
    }

    /// Path of one of this segment's files.
    pub fn path(&self, suffix: &str) -> PathBuf {
        segment_path(&self.dir, self.base_offset, suffix)
    }

    /// Readable size.
    pub fn size(&self) -> u64 {
        self.st.borrow().size
    }

    /// Records a batch reserved at `position` (synchronous, before its write is submitted):
    /// sizes, next offset, index entries and timestamps. Kafka's rule: an index entry is added
    /// for a batch when more than `index.interval.bytes` were appended since the last entry.
    pub fn note_batch(&self, position: u64, h: &BatchHeader, cfg: &LogConfig) {
        let mut st = self.st.borrow_mut();
        debug_assert_eq!(position, st.reserved_size);
        debug_assert!(h.base_offset >= st.next_offset);
        st.note_batch(position, h, cfg);
    }

    /// Finds the first batch with last offset >= `target` within the first `limit` bytes,
    /// starting from the offset index's hint. Returns (position, header).
    pub async fn find_batch(
        &self,
        target: i64,
        limit: u64,
    ) -> Result<Option<(u64, BatchHeader)>, StorageError> {
        let mut pos = {
            let st = self.st.borrow();
            st.offset_index
                .lookup(target)
                .map_or(0, |(_, p)| u64::from(p))
        };
        let mut cursor = HeaderCursor::new(self, limit);
        while pos < limit {
            let h = cursor.header_at(pos).await?;
            if h.last_offset() >= target {
                return Ok(Some((pos, h)));
            }
            pos += h.size() as u64;
        }
        Ok(None)
    }

    /// The furthest batch start reachable by the offset index from `from` without passing
    /// `max_end` (a byte position) or including a batch with last offset >= `upper`: every
    /// batch between `from` and the returned position can go into a read slice unchecked.
    pub fn index_jump(&self, from: u64, max_end: u64, upper: i64) -> u64 {
        let st = self.st.borrow();
        let by_size = st
            .offset_index
            .lookup_position(u32::try_from(max_end).unwrap_or(u32::MAX));
        let by_offset = st.offset_index.lookup(upper - 1);
        match (by_size, by_offset) {
            (Some((_, a)), Some((_, b))) => u64::from(a.min(b)).max(from),
            _ => from,
        }
    }

    /// Kafka's `findOffsetByTimestamp` within this segment: the first record (offset order)
    /// with timestamp >= `ts` and offset >= `min_offset`, as (offset, timestamp), looking at
    /// batches with max timestamp >= `ts` from the time index's hint onwards.
    pub async fn offset_for_timestamp(
        &self,
        ts: i64,
        min_offset: i64,
        limit: u64,
        max_decompressed: usize,
    ) -> Result<Option<(i64, i64)>, StorageError> {
        let mut pos = {
            let st = self.st.borrow();
            let from = st
                .time_index
                .lookup(ts)
                .map_or(self.base_offset, |(_, o)| o)
                .max(min_offset);
            st.offset_index
                .lookup(from)
                .map_or(0, |(_, p)| u64::from(p))
        };
        let mut cursor = HeaderCursor::new(self, limit);
        while pos < limit {
            let h = cursor.header_at(pos).await?;
            if (h.max_timestamp >= ts || has_unknown_max_timestamp(&h))
                && h.last_offset() >= min_offset
            {
                let found = self
                    .first_record_at_or_after(pos, &h, ts, min_offset, max_decompressed)
                    .await?;
                if found.is_some() {
                    return Ok(found);
                }
            }
            pos += h.size() as u64;
        }
        Ok(None)
    }

    /// Within the batch at `pos` (whose max timestamp is >= `ts`), the first record with
    /// timestamp >= `ts` and offset >= `min_offset`, as (offset, timestamp). A compressed batch
    /// is decompressed (at most `max_decompressed` bytes), as Kafka does for this admin-path
    /// lookup; one that cannot be decoded answers with its base offset and max timestamp.
    async fn first_record_at_or_after(
        &self,
        pos: u64,
        h: &BatchHeader,
        ts: i64,
        min_offset: i64,
        max_decompressed: usize,
    ) -> Result<Option<(i64, i64)>, StorageError> {
        let fallback = (h.base_offset.max(min_offset), h.max_timestamp);
        // LogAppendTime: every record carries the batch's max timestamp.
        if h.timestamp_type() == TimestampType::LogAppendTime {
            return Ok(Some(fallback));
        }
        let bytes = self
            .log
            .read_exact_at(h.size(), pos)
            .await
            .map_err(|e| StorageError::io(self.log.path(), e))?;
        let pick = |r: RecordInfo| {
            let offset = h.base_offset + i64::from(r.offset_delta);
            let rts = h.base_timestamp.saturating_add(r.timestamp_delta);
            (rts >= ts && offset >= min_offset).then_some((offset, rts))
        };
        let codec = h.compression();
        if codec == Compression::None {
            // Stored batches may have offset gaps (compaction), unlike produced ones.
            let body = bytes.get(HEADER_SIZE..).unwrap_or_default();
            let records = stored_record_infos(body, h.records_count).map_err(|e| {
                StorageError::Corrupt(format!(
                    "{}: batch at {pos}: {e}",
                    self.log.path().display()
                ))
            })?;
            return Ok(records.into_iter().find_map(pick));
        }
        let body = bytes.get(HEADER_SIZE..).unwrap_or_default();
        let decoded = decompress_records(codec, body, max_decompressed)
            .map_err(|e| e.to_string())
            .and_then(|records| {
                let infos =
                    stored_record_infos(&records, h.records_count).map_err(|e| e.to_string())?;
                Ok(infos.into_iter().find_map(pick))
            });
        match decoded {
            Ok(found) => Ok(found),
            // A -1 header gives no fallback answer: the batch is passed over.
            Err(_) if h.max_timestamp < 0 => Ok(None),
            Err(reason) => {
                tracing::warn!(
                    file = %self.log.path().display(),
                    position = pos,
                    base_offset = h.base_offset,
                    %codec,
                    %reason,
                    "cannot decode compressed batch for a timestamp lookup; answering with its base offset"
                );
                Ok(Some(fallback))
            }
        }
    }

    /// Scans the whole log file batch by batch, rebuilding both indexes; a torn or corrupt
    /// tail is cut at the last valid batch with a warning naming file, position and reason.
    pub async fn recover(&self, cfg: &LogConfig) -> Result<ScanOutcome, StorageError> {
        let path = self.log.path().to_path_buf();
        let file_len = self.log.len().map_err(|e| StorageError::io(&path, e))?;
        self.st.borrow_mut().reset(self.base_offset, cfg);
        let mut reader = ChunkReader::new(&self.log, file_len);
        let mut pos = 0u64;
        let mut failure: Option<String> = None;
        let mut epoch_starts: Vec<(i32, i64)> = Vec::new();
        while pos < file_len {
            let head = reader.get(pos, HEADER_SIZE).await?;
            let h = match BatchHeader::parse(head) {
                Ok(h) => h,
                Err(e) => {
                    failure = Some(e.to_string());
                    break;
                }
            };
            if pos + h.size() as u64 > file_len {
                failure = Some(format!(
                    "batch of {} bytes runs past the end of the file",
                    h.size()
                ));
                break;
            }
            let bytes = reader.get(pos, h.size()).await?;
            if let Err(e) = validate_batch(bytes) {
                failure = Some(e.to_string());
                break;
            }
            let h = with_record_max_timestamp(bytes, h, cfg);
            let mut st = self.st.borrow_mut();
            if h.base_offset < st.next_offset {
                failure = Some(format!(
                    "batch base offset {} is below the expected next offset {}",
                    h.base_offset, st.next_offset
                ));
                break;
            }
            if h.last_offset() - self.base_offset > i64::from(i32::MAX) {
                failure = Some(format!(
                    "batch last offset {} overflows the segment",
                    h.last_offset()
                ));
                break;
            }
            st.note_batch(pos, &h, cfg);
            if h.partition_leader_epoch >= 0
                && epoch_starts
                    .last()
                    .is_none_or(|&(e, _)| e != h.partition_leader_epoch)
            {
                epoch_starts.push((h.partition_leader_epoch, h.base_offset));
            }
            pos += h.size() as u64;
        }
        let mut outcome = ScanOutcome {
            truncated_bytes: 0,
            epoch_starts,
        };
        if let Some(reason) = failure {
            tracing::warn!(file = %path.display(), position = pos, %reason, "truncating invalid bytes at the log tail");
            outcome.truncated_bytes = file_len - pos;
            self.log
                .set_len(pos)
                .map_err(|e| StorageError::io(&path, e))?;
        }
        let mut st = self.st.borrow_mut();
        st.size = pos;
        st.reserved_size = pos;
        st.indexes_dirty = true;
        // The files may hold stale or zero entries: the next full write replaces them.
        st.index_entries_on_disk = 0;
        st.time_entries_on_disk = 0;
        Ok(outcome)
    }

    /// Whether a segment loaded from trusted indexes may hold batches stored with a -1 max
    /// timestamp (before the leader computed it): data, no time index entry and a first batch
    /// with records and a -1 header. Recovery rescans such a segment to rebuild its time index
    /// from the record timestamps.
    pub async fn may_need_time_rebuild(&self) -> Result<bool, StorageError> {
        {
            let st = self.st.borrow();
            // Older versions indexed the -1 itself (one entry), so that counts as no entry.
            let known = st.time_index.last().is_some_and(|(ts, _)| ts >= 0);
            if st.size < HEADER_SIZE as u64 || known {
                return Ok(false);
            }
        }
        let head = self
            .log
            .read_exact_at(HEADER_SIZE, 0)
            .await
            .map_err(|e| StorageError::io(self.log.path(), e))?;
        Ok(BatchHeader::parse(&head).is_ok_and(|h| has_unknown_max_timestamp(&h)))
    }

    /// Loads trusted index files; returns false (leaving the state reset) if they are missing
    /// or fail their sanity checks, in which case the caller rebuilds them with `recover`.
    pub fn load_indexes(&self, cfg: &LogConfig, next_offset: i64) -> Result<bool, StorageError> {
        let log_len = self
            .log
            .len()
            .map_err(|e| StorageError::io(self.log.path(), e))?;
        let max = cfg.max_index_entries();
        let idx_bytes = match std::fs::read(self.path(INDEX_SUFFIX)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(StorageError::io(self.path(INDEX_SUFFIX), e)),
        };
        let time_bytes = match std::fs::read(self.path(TIME_INDEX_SUFFIX)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(StorageError::io(self.path(TIME_INDEX_SUFFIX), e)),
        };
        // The largest index offset bound makes an index claiming offsets beyond the segment fail.
        let offset_index = match OffsetIndex::decode(self.base_offset, &idx_bytes, max, log_len) {
            Ok(i) if i.last().is_none_or(|(o, _)| o < next_offset) => i,
            Ok(_) => {
                tracing::warn!(file = %self.path(INDEX_SUFFIX).display(), "index names offsets past the segment; rebuilding");
                return Ok(false);
            }
            Err(e) => {
                tracing::warn!(file = %self.path(INDEX_SUFFIX).display(), error = %e, "corrupt index; rebuilding");
                return Ok(false);
            }
        };
        let time_index = match TimeIndex::decode(self.base_offset, &time_bytes, max) {
            Ok(t) if t.last().is_none_or(|(_, o)| o < next_offset) => t,
            Ok(_) | Err(_) => {
                tracing::warn!(file = %self.path(TIME_INDEX_SUFFIX).display(), "corrupt time index; rebuilding");
                return Ok(false);
            }
        };
        let mut st = self.st.borrow_mut();
        st.reset(self.base_offset, cfg);
        if let Some((ts, off)) = time_index.last() {
            st.max_timestamp = ts;
            st.offset_of_max_timestamp = off;
        }
        st.offset_index = offset_index;
        st.time_index = time_index;
        st.size = log_len;
        st.reserved_size = log_len;
        // For the last segment (no successor) `read_tail` finds the real end.
        st.next_offset = if next_offset == i64::MAX {
            st.offset_index
                .last()
                .map_or(self.base_offset, |(o, _)| o + 1)
        } else {
            next_offset
        };
        st.indexes_dirty = false;
        st.index_entries_on_disk = st.offset_index.len();
        st.time_entries_on_disk = st.time_index.len();
        if log_len > 0 {
            st.rolling_base_timestamp = Some(st.max_timestamp);
        }
        Ok(true)
    }

    /// Walks batches after the last index entry to find the segment's next offset (Kafka's
    /// `readNextOffset`) and its newest timestamps; used for a trusted last segment.
    pub async fn read_tail(&self, cfg: &LogConfig) -> Result<(), StorageError> {
        let (mut pos, limit) = {
            let st = self.st.borrow();
            (
                st.offset_index.last().map_or(0, |(_, p)| u64::from(p)),
                st.size,
            )
        };
        let mut next = self.base_offset;
        let mut max_ts = (-1i64, self.base_offset);
        let mut cursor = HeaderCursor::new(self, limit);
        while pos < limit {
            let h = cursor.header_at(pos).await?;
            next = h.next_offset();
            if h.max_timestamp > max_ts.0 {
                max_ts = (h.max_timestamp, h.last_offset());
            }
            pos += h.size() as u64;
        }
        let _ = cfg;
        let mut st = self.st.borrow_mut();
        st.next_offset = st.next_offset.max(next);
        if max_ts.0 > st.max_timestamp {
            st.max_timestamp = max_ts.0;
            st.offset_of_max_timestamp = max_ts.1;
        }
        Ok(())
    }

    /// Cuts the segment at `position` (a batch boundary) whose first dropped offset is
    /// `next_offset`; the caller makes it durable.
    pub fn truncate_to(&self, position: u64, next_offset: i64) -> Result<(), StorageError> {
        self.log
            .set_len(position)
            .map_err(|e| StorageError::io(self.log.path(), e))?;
        let mut st = self.st.borrow_mut();
        st.size = position;
        st.reserved_size = position;
        st.next_offset = next_offset;
        let pos32 = u32::try_from(position).unwrap_or(u32::MAX);
        st.offset_index.truncate_to_position(pos32);
        st.time_index.truncate_to_offset(next_offset);
        match st.time_index.last() {
            Some((ts, off)) => {
                st.max_timestamp = ts;
                st.offset_of_max_timestamp = off;
            }
            None => {
                st.max_timestamp = -1;
                st.offset_of_max_timestamp = self.base_offset;
            }
        }
        st.bytes_since_index_entry = 0;
        if position == 0 {
            st.rolling_base_timestamp = None;
        }
        st.indexes_dirty = true;
        // Aborts whose marker was cut off are undone; the caller rewrites the file.
        self.aborted
            .borrow_mut()
            .retain(|e| e.last_offset < next_offset);
        st.index_entries_on_disk = st.index_entries_on_disk.min(st.offset_index.len());
        st.time_entries_on_disk = st.time_entries_on_disk.min(st.time_index.len());
        Ok(())
    }

    /// Writes both index files from memory (exact length) and optionally fsyncs them.
    /// `final_entry` adds the newest timestamp to the time index first (Kafka does on roll).
    pub async fn write_indexes(&self, final_entry: bool, sync: bool) -> Result<(), StorageError> {
        let (idx, tidx) = {
            let mut st = self.st.borrow_mut();
            if final_entry && st.max_timestamp >= 0 {
                let (ts, off) = (st.max_timestamp, st.offset_of_max_timestamp);
                st.time_index.maybe_append(ts, off, true);
            }
            if !st.indexes_dirty && !final_entry {
                return Ok(());
            }
            st.indexes_dirty = false;
            st.index_entries_on_disk = st.offset_index.len();
            st.time_entries_on_disk = st.time_index.len();
            (st.offset_index.encode(), st.time_index.encode())
        };
        for (suffix, bytes) in [(INDEX_SUFFIX, idx), (TIME_INDEX_SUFFIX, tidx)] {
            let path = self.path(suffix);
            let len = bytes.len() as u64;
            let f = DiskFile::open_rw_async(&path)
                .await
                .map_err(|e| StorageError::io(&path, e))?;
            if !bytes.is_empty() {
                f.write_vec_at(bytes, 0)
                    .await
                    .map_err(|e| StorageError::io(&path, e))?;
            }
            // Trims a preallocated or previously longer file to exactly its entries.
            f.set_len(len).map_err(|e| StorageError::io(&path, e))?;
            if sync {
                f.sync_data()
                    .await
                    .map_err(|e| StorageError::io(&path, e))?;
            }
        }
        // The files now hold exactly the entries; a later entry reopens them on demand.
        *self.index_files.borrow_mut() = None;
        Ok(())
    }

    /// Writes the `.txnindex` file from memory, atomically (a temporary file renamed over it,
    /// fsync'd), or removes it when there is no entry, as Kafka creates it only on the first
    /// abort. The caller serializes calls for one segment.
    pub async fn write_txn_index(&self) -> Result<(), StorageError> {
        let bytes = super::txn_index::encode_all(&self.aborted.borrow());
        let path = self.path(TXN_INDEX_SUFFIX);
        let res = if bytes.is_empty() {
            remove_file_if_exists(&path).await
        } else {
            crate::io::file::write_file_atomic(&path, bytes).await
        };
        res.map_err(|e| StorageError::io(&path, e))
    }

    /// Loads the `.txnindex` file, checked against the segment's offsets (call once its next
    /// offset is known). Returns false (and loads nothing) when the file is torn or invalid:
    /// the caller rebuilds it from the log. A missing file means no aborted transaction.
    pub fn load_txn_index(&self) -> Result<bool, StorageError> {
        let path = self.path(TXN_INDEX_SUFFIX);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(StorageError::io(&path, e)),
        };
        let next = self.st.borrow().next_offset;
        match super::txn_index::decode(&bytes, self.base_offset, next) {
            Ok(entries) => {
                *self.aborted.borrow_mut() = entries;
                Ok(true)
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "corrupt transaction index; rebuilding");
                self.aborted.borrow_mut().clear();
                Ok(false)
            }
        }
    }

    /// Removes the segment's files.
    pub async fn delete_files(&self) -> Result<(), StorageError> {
        for suffix in [
            LOG_SUFFIX,
            INDEX_SUFFIX,
            TIME_INDEX_SUFFIX,
            TXN_INDEX_SUFFIX,
        ] {
            let p = self.path(suffix);
            remove_file_if_exists(&p)
                .await
                .map_err(|e| StorageError::io(&p, e))?;
        }
        Ok(())
    }
}

impl SegmentState {
    fn reset(&mut self, base_offset: i64, cfg: &LogConfig) {
        let max = cfg.max_index_entries();
        self.reserved_size = 0;
        self.size = 0;
        self.next_offset = base_offset;
        self.offset_index = OffsetIndex::new(base_offset, max);
        self.time_index = TimeIndex::new(base_offset, max);
        self.bytes_since_index_entry = 0;
        self.max_timestamp = -1;
        self.offset_of_max_timestamp = base_offset;
        self.rolling_base_timestamp = None;
    }

    fn note_batch(&mut self, position: u64, h: &BatchHeader, cfg: &LogConfig) {
        if h.max_timestamp > self.max_timestamp {
            self.max_timestamp = h.max_timestamp;
            self.offset_of_max_timestamp = h.last_offset();
        }
        if self.rolling_base_timestamp.is_none() {
            self.rolling_base_timestamp = Some(h.max_timestamp);
        }
        if self.bytes_since_index_entry > u64::from(cfg.index_interval_bytes) {
            if let Ok(pos) = u32::try_from(position) {
                self.offset_index.append(h.last_offset(), pos);
            }
            let (ts, off) = (self.max_timestamp, self.offset_of_max_timestamp);
            self.time_index.maybe_append(ts, off, false);
            self.bytes_since_index_entry = 0;
        }
        self.bytes_since_index_entry += h.size() as u64;
        self.reserved_size = position + h.size() as u64;
        self.next_offset = h.next_offset();
        self.indexes_dirty = true;
    }
}

/// Creates (io_uring openat) an index file of `len` reserved, zero-filled bytes. Where the
/// filesystem has no `fallocate`, the file is extended sparsely instead.
async fn preallocated(path: &Path, len: u64) -> Result<DiskFile, StorageError> {
    let f = DiskFile::open_rw_async(path)
        .await
        .map_err(|e| StorageError::io(path, e))?;
    if len > 0 {
        match f.fallocate(0, len, 0).await {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                f.set_len(len).map_err(|e| StorageError::io(path, e))?;
            }
            Err(e) => return Err(StorageError::io(path, e)),
        }
    }
    Ok(f)
}

/// Sequential reader over a file in large chunks, for recovery scans.
struct ChunkReader<'a> {
    file: &'a DiskFile,
    file_len: u64,
    buf: Vec<u8>,
    buf_start: u64,
}

impl<'a> ChunkReader<'a> {
    const CHUNK: usize = 1 << 20;

    fn new(file: &'a DiskFile, file_len: u64) -> Self {
        ChunkReader {
            file,
            file_len,
            buf: Vec::new(),
            buf_start: 0,
        }
    }

    /// Up to `len` bytes at `pos` (fewer only at the end of the file); `pos` never decreases.
    async fn get(&mut self, pos: u64, len: usize) -> Result<&[u8], StorageError> {
        debug_assert!(pos >= self.buf_start);
        let want_end = (pos + len as u64).min(self.file_len);
        if want_end > self.buf_start + self.buf.len() as u64 {
            let drop = ((pos - self.buf_start) as usize).min(self.buf.len());
            self.buf.drain(..drop);
            self.buf_start += drop as u64;
            let read_pos = self.buf_start + self.buf.len() as u64;
            let want = ((want_end - read_pos) as usize)
                .max(Self::CHUNK)
                .min((self.file_len - read_pos) as usize);
            let more = self
                .file
                .read_at(want, read_pos)
                .await
                .map_err(|e| StorageError::io(self.file.path(), e))?;
            self.buf.extend_from_slice(&more);
        }
        let from = ((pos - self.buf_start) as usize).min(self.buf.len());
        let to = ((want_end.saturating_sub(self.buf_start)) as usize)
            .min(self.buf.len())
            .max(from);
        Ok(&self.buf[from..to])
    }
}

/// A CreateTime batch with records whose header says max timestamp -1: stored as a producer
/// sent it before the leader computed max timestamps (or copied so by a follower then).
fn has_unknown_max_timestamp(h: &BatchHeader) -> bool {
    h.max_timestamp < 0
        && h.records_count > 0
        && !h.is_control()
        && h.timestamp_type() == TimestampType::CreateTime
}

/// `h` with the records' max timestamp when its header says -1 (see
/// [`has_unknown_max_timestamp`]), so the time index, retention and rolling rebuilt by recovery
/// see real times. The stored bytes are not changed. Compressed records are decompressed within
/// `DECOMPRESS_LIMIT_FACTOR` x `max.message.bytes`; a batch that cannot be read keeps -1.
fn with_record_max_timestamp(batch: &[u8], mut h: BatchHeader, cfg: &LogConfig) -> BatchHeader {
    if !has_unknown_max_timestamp(&h) {
        return h;
    }
    let limit = (cfg.max_message_bytes as usize).saturating_mul(DECOMPRESS_LIMIT_FACTOR);
    let Some(body) = batch.get(HEADER_SIZE..h.size()) else {
        return h;
    };
    let infos = match h.compression() {
        Compression::None => stored_record_infos(body, h.records_count).ok(),
        codec => decompress_records(codec, body, limit)
            .ok()
            .and_then(|section| stored_record_infos(&section, h.records_count).ok()),
    };
    if let Some(max) = infos.and_then(|infos| {
        infos
            .iter()
            .map(|r| h.base_timestamp.saturating_add(r.timestamp_delta))
            .max()
    }) {
        h.max_timestamp = max;
    }
    h
}

/// Reads batch headers of one segment through a small read-ahead buffer, so walking many
/// small batches costs one read per `READ_AHEAD` bytes instead of one per batch.
pub(crate) struct HeaderCursor<'a> {
    segment: &'a Segment,
    limit: u64,
    buf: Vec<u8>,
    buf_pos: u64,
}

impl<'a> HeaderCursor<'a> {
    const READ_AHEAD: u64 = 8192;

    /// A cursor over the first `limit` bytes (the readable size) of `segment`.
    pub fn new(segment: &'a Segment, limit: u64) -> Self {
        HeaderCursor {
            segment,
            limit,
            buf: Vec::new(),
            buf_pos: 0,
        }
    }

    /// The header of the batch starting at `pos`, checked to end within the limit.
    pub async fn header_at(&mut self, pos: u64) -> Result<BatchHeader, StorageError> {
        let path = self.segment.log.path();
        let buffered =
            pos >= self.buf_pos && pos + HEADER_SIZE as u64 <= self.buf_pos + self.buf.len() as u64;
        if !buffered {
            let len = Self::READ_AHEAD.min(self.limit.saturating_sub(pos)) as usize;
            self.buf = self
                .segment
                .log
                .read_at(len, pos)
                .await
                .map_err(|e| StorageError::io(path, e))?;
            self.buf_pos = pos;
        }
        let off = (pos - self.buf_pos) as usize;
        let h = BatchHeader::parse(&self.buf[off..]).map_err(|e| {
            StorageError::Corrupt(format!(
                "{}: bad batch header at {pos}: {e}",
                path.display()
            ))
        })?;
        if pos + h.size() as u64 > self.limit {
            return Err(StorageError::Corrupt(format!(
                "{}: batch at {pos} of {} bytes runs past {}",
                path.display(),
                h.size(),
                self.limit
            )));
        }
        Ok(h)
    }
}
