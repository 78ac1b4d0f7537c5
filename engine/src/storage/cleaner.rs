//! The log cleaner: Kafka's log compaction for `cleanup.policy=compact` (and `compact,delete`).
//!
//! One `LogCleaner` runs per shard as a background task on the shard's runtime. A pass over a
//! partition:
//! 1. plans the cleanable range (`plan::cleanable`): non-active, flushed segments older than
//!    `min.compaction.lag.ms`; the partition is cleaned when its dirty ratio (bytes after the
//!    cleaner checkpoint over all cleanable bytes) reaches `min.cleanable.dirty.ratio`;
//! 2. builds the offset map (key -> latest offset) over the dirty segments, bounded by
//!    `log.cleaner.dedupe.buffer.size` (it stops at a segment boundary when full);
//! 3. rewrites every segment from the start up to where the map ends, grouped to fit
//!    `segment.bytes`, keeping for each key only the record at the map's offset (records of
//!    keys not in the map, unkeyed records and control batches are kept), dropping tombstones
//!    whose segment is older than `delete.retention.ms`, and dropping batches left empty
//!    unless they are the last batch of their producer id;
//! 4. swaps each cleaned group in crash-safely (see `swap`), then moves the cleaner
//!    checkpoint to where the map ended.
//!
//! Reading and writing are throttled to `log.cleaner.io.max.bytes.per.second`, and the task
//! yields between chunks so produce and fetch on the same shard keep running.

pub mod plan;
pub mod records;

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::io::file::{remove_file_if_exists, write_file_atomic, DiskFile};

use super::checkpoint::{decode_offset, encode_offset};
use super::config::LogConfig;
use super::error::StorageError;
use super::log::PartitionLog;
use super::record_batch::{validate_batch, BatchHeader};
use super::segment::{
    parse_segment_name, segment_path, HeaderCursor, Segment, INDEX_SUFFIX, LOG_SUFFIX,
    TIME_INDEX_SUFFIX, TXN_INDEX_SUFFIX,
};
use super::txn_index;
use plan::{Cleanable, SegmentView};
use records::{parse_records, rebuild_batch, records_section, RecordRef};

/// Per-partition file holding the cleaner checkpoint: the first offset not yet cleaned
/// (Kafka keeps one `cleaner-offset-checkpoint` per log dir; Sluice keeps its checkpoints per
/// partition, see docs/arch/storage.md).
pub const CLEANER_CHECKPOINT_FILE: &str = "cleaner-offset-checkpoint";
/// Suffix of a cleaned segment's files while they are written.
pub const CLEANED_SUFFIX: &str = "cleaned";
/// Suffix of the swap record `<base>.swap`: its presence commits a swap.
pub const SWAP_SUFFIX: &str = "swap";

/// Bytes read or written between two throttle checks (and yields).
const CHUNK: usize = 256 * 1024;
/// Decompression limit, as a multiple of the larger of `max.message.bytes` and the batch.
const DECOMPRESS_LIMIT_FACTOR: usize = 4;
/// Per-entry overhead charged to the dedupe buffer besides the key bytes.
const MAP_ENTRY_OVERHEAD: usize = 48;

/// Broker-wide cleaner settings (`log.cleaner.*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CleanerConfig {
    /// `log.cleaner.enable`.
    pub enable: bool,
    /// `log.cleaner.io.max.bytes.per.second` (read plus written bytes).
    pub io_max_bytes_per_second: f64,
    /// `log.cleaner.backoff.ms`: pause between passes over the shard's partitions.
    pub backoff_ms: u64,
    /// `log.cleaner.dedupe.buffer.size`: memory for one offset map.
    pub dedupe_buffer_size: usize,
}

impl Default for CleanerConfig {
    fn default() -> Self {
        CleanerConfig {
            enable: true,
            io_max_bytes_per_second: f64::MAX,
            backoff_ms: 15_000,
            dedupe_buffer_size: 128 << 20,
        }
    }
}

impl CleanerConfig {
    /// Reads the `log.cleaner.*` keys from a resolved broker key map (missing keys take the
    /// defaults). The error names the key.
    pub fn from_raw(raw: &BTreeMap<String, String>) -> Result<CleanerConfig, (String, String)> {
        let d = CleanerConfig::default();
        let get = |k: &str| raw.get(k).map(|v| v.trim().to_string());
        let bad = |k: &str, v: &str| (k.to_string(), v.to_string());
        let enable = match get("log.cleaner.enable").as_deref() {
            None => d.enable,
            Some("true") => true,
            Some("false") => false,
            Some(v) => return Err(bad("log.cleaner.enable", v)),
        };
        let io_max_bytes_per_second = match get("log.cleaner.io.max.bytes.per.second") {
            None => d.io_max_bytes_per_second,
            Some(v) => match v.parse::<f64>() {
                Ok(x) if x > 0.0 => x,
                _ => return Err(bad("log.cleaner.io.max.bytes.per.second", &v)),
            },
        };
        let backoff_ms = match get("log.cleaner.backoff.ms") {
            None => d.backoff_ms,
            Some(v) => match v.parse::<u64>() {
                Ok(x) if x > 0 => x,
                _ => return Err(bad("log.cleaner.backoff.ms", &v)),
            },
        };
        let dedupe_buffer_size = match get("log.cleaner.dedupe.buffer.size") {
            None => d.dedupe_buffer_size,
            Some(v) => match v.parse::<usize>() {
                Ok(x) if x >= 1024 => x,
                _ => return Err(bad("log.cleaner.dedupe.buffer.size", &v)),
            },
        };
        Ok(CleanerConfig {
            enable,
            io_max_bytes_per_second,
            backoff_ms,
            dedupe_buffer_size,
        })
    }
}

/// Kafka's cleaner `Throttler`: keeps the cleaner's I/O rate under a limit by sleeping, and
/// yields to the shard's other tasks at every check.
#[derive(Debug)]
pub struct Throttler {
    rate: f64,
    window_start: Instant,
    window_bytes: f64,
}

impl Throttler {
    /// A throttler allowing `rate` bytes per second (`f64::MAX`: unthrottled).
    pub fn new(rate: f64) -> Throttler {
        Throttler {
            rate,
            window_start: Instant::now(),
            window_bytes: 0.0,
        }
    }

    /// Accounts `bytes` of I/O, sleeping if the rate is above the limit, and yields.
    pub async fn consumed(&mut self, bytes: usize) {
        self.window_bytes += bytes as f64;
        let elapsed = self.window_start.elapsed().as_secs_f64();
        let due = self.window_bytes / self.rate;
        if due > elapsed {
            tokio::time::sleep(Duration::from_secs_f64(due - elapsed)).await;
        } else {
            tokio::task::yield_now().await;
        }
        if self.window_start.elapsed() > Duration::from_secs(1) {
            self.window_start = Instant::now();
            self.window_bytes = 0.0;
        }
    }
}

/// What one cleaning did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanStats {
    /// Segments read and rewritten.
    pub segments_cleaned: usize,
    /// Cleaned segments swapped in.
    pub groups_swapped: usize,
    /// Bytes read from old segments.
    pub bytes_read: u64,
    /// Bytes written to cleaned segments.
    pub bytes_written: u64,
    /// Records dropped (superseded values and expired tombstones).
    pub records_removed: u64,
    /// Batches dropped because nothing was left in them.
    pub batches_removed: u64,
    /// The cleaner checkpoint afterwards: the first offset not cleaned.
    pub cleaned_up_to: i64,
}

/// Where a swap can be cut short by an injected crash (tests only).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwapStep {
    /// The `.cleaned` files are written and fsync'd; nothing committed.
    Cleaned,
    /// The swap record is written; nothing renamed.
    Committed,
    /// The cleaned files replaced the first old segment's; the others still exist.
    Renamed,
    /// The old segments are deleted; the swap record still exists.
    Deleted,
}

thread_local! {
    static CRASH_AT: Cell<Option<SwapStep>> = const { Cell::new(None) };
}

/// Makes the next swap on this thread stop dead at `step`, leaving the files as a kill -9
/// there would (tests only).
#[doc(hidden)]
pub fn inject_crash(step: Option<SwapStep>) {
    CRASH_AT.with(|c| c.set(step));
}

fn crash_point(step: SwapStep) -> Result<(), StorageError> {
    if CRASH_AT.with(|c| c.get()) == Some(step) {
        CRASH_AT.with(|c| c.set(None));
        return Err(StorageError::Corrupt(format!("injected crash at {step:?}")));
    }
    Ok(())
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StorageError + '_ {
    move |e| StorageError::io(path, e)
}

fn cleaned_path(dir: &Path, base: i64, suffix: &str) -> PathBuf {
    dir.join(format!("{base:020}.{suffix}.{CLEANED_SUFFIX}"))
}

fn swap_path(dir: &Path, base: i64) -> PathBuf {
    dir.join(format!("{base:020}.{SWAP_SUFFIX}"))
}

async fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    let d = DiskFile::open_dir(dir).await.map_err(io_err(dir))?;
    d.sync_all().await.map_err(io_err(dir))
}

fn read_checkpoint(dir: &Path) -> i64 {
    let path = dir.join(CLEANER_CHECKPOINT_FILE);
    // A tiny file read once per pass; a missing or malformed one means "nothing cleaned yet".
    std::fs::read(&path)
        .ok()
        .and_then(|b| decode_offset(&b))
        .unwrap_or(0)
}

/// The records section of a batch for the cleaner: `None` (with a warning) when it cannot
/// be decoded, in which case the batch is kept as it is and its keys are not mapped.
fn decode_for_cleaning<'a>(
    bytes: &'a [u8],
    h: &BatchHeader,
    cfg: &LogConfig,
    file: &Path,
) -> Option<(Cow<'a, [u8]>, Vec<RecordRef>)> {
    let limit = (cfg.max_message_bytes as usize)
        .max(h.size())
        .saturating_mul(DECOMPRESS_LIMIT_FACTOR);
    let decoded = records_section(bytes, h, limit).and_then(|section| {
        let recs = parse_records(&section, h.records_count)?;
        Ok((section, recs))
    });
    match decoded {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::warn!(file = %file.display(), base_offset = h.base_offset, error = %e, "cleaner keeps a batch it cannot decode");
            None
        }
    }
}

/// Sequential batch reader over the first `limit` bytes of a segment, in `CHUNK` reads.
struct BatchReader<'a> {
    file: &'a DiskFile,
    limit: u64,
    buf: Vec<u8>,
    buf_start: u64,
    /// Position of the next batch.
    pos: u64,
    /// Range of the current batch in `buf`.
    current: std::ops::Range<usize>,
}

impl<'a> BatchReader<'a> {
    fn new(file: &'a DiskFile, limit: u64) -> Self {
        BatchReader {
            file,
            limit,
            buf: Vec::new(),
            buf_start: 0,
            pos: 0,
            current: 0..0,
        }
    }

    /// Makes `[pos, pos + len)` resident in the buffer; returns bytes newly read.
    async fn fill(&mut self, len: u64) -> Result<usize, StorageError> {
        let want_end = (self.pos + len).min(self.limit);
        let have_end = self.buf_start + self.buf.len() as u64;
        if want_end <= have_end {
            return Ok(0);
        }
        let drop = ((self.pos - self.buf_start) as usize).min(self.buf.len());
        self.buf.drain(..drop);
        self.buf_start += drop as u64;
        let read_pos = self.buf_start + self.buf.len() as u64;
        let n = ((want_end - read_pos) as usize)
            .max(CHUNK)
            .min((self.limit - read_pos) as usize);
        let more = self
            .file
            .read_exact_at(n, read_pos)
            .await
            .map_err(io_err(self.file.path()))?;
        self.buf.extend_from_slice(&more);
        Ok(n)
    }

    /// The next whole, CRC-valid batch (see `bytes`), or `None` at the limit. Also returns
    /// the bytes read from disk for it.
    async fn next(&mut self) -> Result<Option<(BatchHeader, usize)>, StorageError> {
        if self.pos >= self.limit {
            return Ok(None);
        }
        let mut read = self.fill(super::record_batch::HEADER_SIZE as u64).await?;
        let at = (self.pos - self.buf_start) as usize;
        let corrupt = |e: &dyn std::fmt::Display, pos: u64| {
            StorageError::Corrupt(format!(
                "{}: batch at {pos}: {e}",
                self.file.path().display()
            ))
        };
        let h = BatchHeader::parse(&self.buf[at..]).map_err(|e| corrupt(&e, self.pos))?;
        if self.pos + h.size() as u64 > self.limit {
            return Err(corrupt(&"runs past the segment end", self.pos));
        }
        read += self.fill(h.size() as u64).await?;
        let at = (self.pos - self.buf_start) as usize;
        let bytes = &self.buf[at..at + h.size()];
        validate_batch(bytes).map_err(|e| corrupt(&e, self.pos))?;
        self.current = at..at + h.size();
        self.pos += h.size() as u64;
        Ok(Some((h, read)))
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[self.current.clone()]
    }
}

/// The offset map: key -> offset of its latest record in the mapped range.
struct OffsetMap {
    map: HashMap<Box<[u8]>, i64>,
    bytes: usize,
}

impl OffsetMap {
    fn put(&mut self, key: &[u8], offset: i64) {
        match self.map.get_mut(key) {
            Some(o) => *o = (*o).max(offset),
            None => {
                self.bytes += key.len() + MAP_ENTRY_OVERHEAD;
                self.map.insert(key.into(), offset);
            }
        }
    }
}

/// The offset a segment's successor must start at or below for the segment to be cleaned:
/// the recovery point, and the first offset of an undecided transaction when there is one.
fn cleanable_bound(log: &PartitionLog, recovery_point: i64) -> i64 {
    match log.first_unstable_offset() {
        Some(first_unstable) => recovery_point.min(first_unstable),
        None => recovery_point,
    }
}

/// One shard's cleaner.
#[derive(Debug)]
pub struct LogCleaner {
    config: CleanerConfig,
    throttler: Throttler,
}

fn segment_view(s: &Segment) -> SegmentView {
    let st = s.st.borrow();
    SegmentView {
        base_offset: s.base_offset,
        size: st.size,
        largest_timestamp: if st.max_timestamp >= 0 {
            st.max_timestamp
        } else {
            st.created_ms
        },
        index_entries: st.offset_index.len(),
    }
}

impl LogCleaner {
    /// A cleaner with these settings.
    pub fn new(config: CleanerConfig) -> LogCleaner {
        LogCleaner {
            config,
            throttler: Throttler::new(config.io_max_bytes_per_second),
        }
    }

    /// The settings.
    pub fn config(&self) -> CleanerConfig {
        self.config
    }

    /// The cleanable range of a compacted log now, `None` for a log that is not compacted or
    /// not usable. It ends before the segment holding the first offset of an undecided
    /// transaction (Kafka's `firstUnstableOffset` bound in `cleanableOffsets`): the records
    /// of an open transaction must not supersede older ones, nor be kept or dropped, before
    /// its marker says whether they count.
    pub fn cleanable(&self, log: &PartitionLog, now_ms: i64) -> Option<Cleanable> {
        let cfg = log.config();
        if !cfg.compact {
            return None;
        }
        let view = log.cleaner_view().ok()?;
        let views: Vec<SegmentView> = view.segments.iter().map(|s| segment_view(s)).collect();
        Some(plan::cleanable(
            &views,
            read_checkpoint(log.dir()),
            cleanable_bound(log, view.recovery_point),
            now_ms,
            &cfg,
        ))
    }

    /// The dirty ratio of a compacted log (0 when there is nothing to clean).
    pub fn dirty_ratio(&self, log: &PartitionLog, now_ms: i64) -> f64 {
        self.cleanable(log, now_ms).map_or(0.0, |c| c.dirty_ratio())
    }

    /// Cleans `log` if it is compacted and its dirty ratio reaches `min.cleanable.dirty.ratio`.
    /// Returns `None` when there was nothing to do. A concurrent truncation, retention or
    /// close makes the pass stop early (what was swapped in stays).
    pub async fn clean(
        &mut self,
        log: &PartitionLog,
        now_ms: i64,
    ) -> Result<Option<CleanStats>, StorageError> {
        let cfg = log.config();
        if !cfg.compact {
            return Ok(None);
        }
        let view = log.cleaner_view()?;
        let segments = view.segments;
        let views: Vec<SegmentView> = segments.iter().map(|s| segment_view(s)).collect();
        let c = plan::cleanable(
            &views,
            read_checkpoint(log.dir()),
            cleanable_bound(log, view.recovery_point),
            now_ms,
            &cfg,
        );
        if !c.is_due(&cfg) {
            return Ok(None);
        }
        let mut stats = CleanStats::default();
        let aborted = AbortedRanges::of(log);
        let (map, map_end) = self
            .build_offset_map(&segments, &views, &c, &cfg, &aborted, &mut stats)
            .await?;
        let mut txns = TxnTracker::default();
        let last_batches = self.last_batch_of_producers(&segments, &views).await?;
        // Tombstones in segments whose newest record is older than this are dropped. Kafka
        // measures from when the segment was first cleaned; Sluice uses the segment's newest
        // timestamp (see docs/arch/storage.md).
        let tombstone_horizon = now_ms.saturating_sub(cfg.delete_retention_ms);
        for group in plan::group_by_size(&views, map_end, &cfg) {
            let old: Vec<(Rc<Segment>, u64)> = group
                .clone()
                .map(|i| (segments[i].clone(), views[i].size))
                .collect();
            let next_base = segments[group.end].base_offset;
            let swapped = self
                .clean_group(
                    log,
                    &old,
                    next_base,
                    &map,
                    &last_batches,
                    (&aborted, &mut txns),
                    tombstone_horizon,
                    &cfg,
                    &mut stats,
                )
                .await?;
            if !swapped {
                tracing::info!(dir = %log.dir().display(), "log changed while cleaning; stopping this pass");
                return Ok(Some(stats));
            }
        }
        stats.cleaned_up_to = segments[map_end].base_offset;
        write_file_atomic(
            &log.dir().join(CLEANER_CHECKPOINT_FILE),
            encode_offset(stats.cleaned_up_to),
        )
        .await
        .map_err(io_err(log.dir()))?;
        tracing::info!(
            dir = %log.dir().display(),
            segments = stats.segments_cleaned,
            read = stats.bytes_read,
            written = stats.bytes_written,
            removed = stats.records_removed,
            cleaned_up_to = stats.cleaned_up_to,
            "cleaned log"
        );
        Ok(Some(stats))
    }

    /// Maps keys over the dirty segments `c.first_dirty..c.end` until the dedupe buffer is
    /// full (at a segment boundary; at least one segment). Returns the map and the index of
    /// the first segment not mapped.
    async fn build_offset_map(
        &mut self,
        segments: &[Rc<Segment>],
        views: &[SegmentView],
        c: &Cleanable,
        cfg: &LogConfig,
        aborted: &AbortedRanges,
        stats: &mut CleanStats,
    ) -> Result<(OffsetMap, usize), StorageError> {
        let mut map = OffsetMap {
            map: HashMap::new(),
            bytes: 0,
        };
        let mut end = c.first_dirty;
        while end < c.end {
            if end > c.first_dirty && map.bytes >= self.config.dedupe_buffer_size {
                break;
            }
            let s = &segments[end];
            let mut reader = BatchReader::new(&s.log, views[end].size);
            let mut since_yield = 0;
            while let Some((h, read)) = reader.next().await? {
                stats.bytes_read += read as u64;
                since_yield += read;
                // Aborted records must never supersede committed ones (Kafka skips them too).
                if !h.is_control() && !aborted.contains(&h) {
                    if let Some((section, recs)) =
                        decode_for_cleaning(reader.bytes(), &h, cfg, s.log.path())
                    {
                        for r in &recs {
                            if let Some(k) = &r.key {
                                map.put(
                                    &section[k.clone()],
                                    h.base_offset + i64::from(r.offset_delta),
                                );
                            }
                        }
                    }
                }
                if since_yield >= CHUNK {
                    self.throttler.consumed(since_yield).await;
                    since_yield = 0;
                }
            }
            self.throttler.consumed(since_yield).await;
            end += 1;
        }
        Ok((map, end))
    }

    /// Base offset of the newest batch of every producer id in the log (header walk).
    async fn last_batch_of_producers(
        &mut self,
        segments: &[Rc<Segment>],
        views: &[SegmentView],
    ) -> Result<HashMap<i64, i64>, StorageError> {
        let mut last = HashMap::new();
        for (s, v) in segments.iter().zip(views) {
            let mut cursor = HeaderCursor::new(s, v.size);
            let mut pos = 0u64;
            let mut walked = 0usize;
            while pos < v.size {
                let h = cursor.header_at(pos).await?;
                if h.producer_id >= 0 {
                    last.insert(h.producer_id, h.base_offset);
                }
                pos += h.size() as u64;
                walked += h.size();
                if walked >= 64 * CHUNK {
                    // Headers only: charge the reads the cursor made, not the bytes skipped.
                    self.throttler.consumed(walked / 64).await;
                    walked = 0;
                }
            }
        }
        Ok(last)
    }

    /// Rewrites one group of segments into a cleaned segment and swaps it in. Returns false
    /// when the log changed under the copy (nothing swapped).
    #[allow(clippy::too_many_arguments)]
    async fn clean_group(
        &mut self,
        log: &PartitionLog,
        old: &[(Rc<Segment>, u64)],
        next_base: i64,
        map: &OffsetMap,
        last_batches: &HashMap<i64, i64>,
        (aborted, txns): (&AbortedRanges, &mut TxnTracker),
        tombstone_horizon: i64,
        cfg: &LogConfig,
        stats: &mut CleanStats,
    ) -> Result<bool, StorageError> {
        let dir = log.dir();
        let base = old[0].0.base_offset;
        let log_path = cleaned_path(dir, base, LOG_SUFFIX);
        remove_file_if_exists(&log_path)
            .await
            .map_err(io_err(&log_path))?;
        let file = DiskFile::create_new(&log_path)
            .await
            .map_err(io_err(&log_path))?;
        let created = old
            .iter()
            .map(|(s, _)| s.st.borrow().created_ms)
            .max()
            .unwrap_or(0);
        let cleaned = Rc::new(Segment::for_cleaned(dir, base, file, cfg, created));
        // The cleaned segment holds every marker of the old ones, so it takes all their
        // aborted-transaction entries (an entry whose data is gone is harmless to readers).
        *cleaned.aborted.borrow_mut() = old
            .iter()
            .flat_map(|(s, _)| s.aborted.borrow().clone())
            .collect();
        let mut out: Vec<u8> = Vec::with_capacity(CHUNK * 2);
        let mut written = 0u64;
        let mut changed = false;
        for (s, size) in old {
            let past_horizon = segment_view(s).largest_timestamp < tombstone_horizon;
            let mut reader = BatchReader::new(&s.log, *size);
            while let Some((h, read)) = reader.next().await? {
                stats.bytes_read += read as u64;
                let bytes = reader.bytes();
                let last_of_producer =
                    h.producer_id >= 0 && last_batches.get(&h.producer_id) == Some(&h.base_offset);
                let kept: Option<Cow<[u8]>> = if h.is_control() {
                    // A transaction marker goes once its transaction has no data left in the
                    // log and its segment is past `delete.retention.ms` (consumers that read
                    // the data have had time to read the marker), unless it is the producer's
                    // newest batch (its epoch and coordinator epoch live there).
                    let data_left = txns.marker(&h);
                    if h.is_transactional() && !data_left && past_horizon && !last_of_producer {
                        None
                    } else {
                        Some(Cow::Borrowed(bytes))
                    }
                } else if aborted.contains(&h) {
                    // Records of an aborted transaction are removed whole, as Kafka's cleaner
                    // does; the producer's newest batch stays (its sequence is needed).
                    if last_of_producer {
                        Some(Cow::Borrowed(bytes))
                    } else {
                        stats.records_removed += h.records_count.max(0) as u64;
                        None
                    }
                } else {
                    match decode_for_cleaning(bytes, &h, cfg, s.log.path()) {
                        None => Some(Cow::Borrowed(bytes)),
                        Some((section, recs)) => {
                            let retained: Vec<&RecordRef> = recs
                                .iter()
                                .filter(|r| {
                                    let Some(k) = &r.key else { return true };
                                    let offset = h.base_offset + i64::from(r.offset_delta);
                                    let latest = map
                                        .map
                                        .get(&section[k.clone()])
                                        .is_none_or(|&m| offset >= m);
                                    latest && !(r.is_tombstone() && past_horizon)
                                })
                                .collect();
                            stats.records_removed += (recs.len() - retained.len()) as u64;
                            if retained.len() == recs.len() {
                                Some(Cow::Borrowed(bytes))
                            } else if retained.is_empty()
                                && !(h.producer_id >= 0
                                    && last_batches.get(&h.producer_id) == Some(&h.base_offset))
                            {
                                None
                            } else {
                                let rebuilt = rebuild_batch(bytes, &h, &section, &retained)
                                    .map_err(|e| {
                                        StorageError::Corrupt(format!(
                                            "{}: rebuilding batch {}: {e}",
                                            s.log.path().display(),
                                            h.base_offset
                                        ))
                                    })?;
                                Some(Cow::Owned(rebuilt))
                            }
                        }
                    }
                };
                if h.is_transactional() && !h.is_control() {
                    txns.data(&h, kept.is_some());
                }
                match kept {
                    None => {
                        changed = true;
                        stats.batches_removed += 1;
                    }
                    Some(b) => {
                        changed |= matches!(b, Cow::Owned(_));
                        let nh = BatchHeader::parse(&b)
                            .map_err(|e| StorageError::Corrupt(format!("rebuilt batch: {e}")))?;
                        cleaned.note_batch(written + out.len() as u64, &nh, cfg);
                        out.extend_from_slice(&b);
                    }
                }
                if out.len() >= CHUNK {
                    let n = out.len();
                    let buf = std::mem::replace(&mut out, Vec::with_capacity(CHUNK * 2));
                    cleaned
                        .log
                        .write_vec_at(buf, written)
                        .await
                        .map_err(io_err(&log_path))?;
                    written += n as u64;
                    stats.bytes_written += n as u64;
                    self.throttler.consumed(n + read).await;
                } else if read >= CHUNK {
                    self.throttler.consumed(read).await;
                }
            }
        }
        if !out.is_empty() {
            let n = out.len();
            cleaned
                .log
                .write_vec_at(out, written)
                .await
                .map_err(io_err(&log_path))?;
            written += n as u64;
            stats.bytes_written += n as u64;
        }
        stats.segments_cleaned += old.len();
        if !changed && old.len() == 1 {
            // Nothing to drop and nothing to merge: keep the segment as it is.
            remove_file_if_exists(&log_path)
                .await
                .map_err(io_err(&log_path))?;
            return Ok(true);
        }
        self.finish_cleaned(&cleaned, written, next_base).await?;
        crash_point(SwapStep::Cleaned)?;
        let guard = log.lock_segment_list().await;
        if !log.segments_unchanged(old) {
            drop(guard);
            for suffix in [
                LOG_SUFFIX,
                INDEX_SUFFIX,
                TIME_INDEX_SUFFIX,
                TXN_INDEX_SUFFIX,
            ] {
                let p = cleaned_path(dir, base, suffix);
                remove_file_if_exists(&p).await.map_err(io_err(&p))?;
            }
            return Ok(false);
        }
        swap(log, old, cleaned, next_base).await?;
        stats.groups_swapped += 1;
        Ok(true)
    }

    /// Completes a cleaned segment's state, writes its trimmed index files next to it as
    /// `.cleaned` files and makes all three durable.
    async fn finish_cleaned(
        &mut self,
        cleaned: &Segment,
        size: u64,
        next_base: i64,
    ) -> Result<(), StorageError> {
        let dir = cleaned.dir.clone();
        let base = cleaned.base_offset;
        let (idx, tidx) = {
            let mut st = cleaned.st.borrow_mut();
            debug_assert_eq!(st.reserved_size, size);
            st.size = size;
            st.reserved_size = size;
            st.next_offset = st.next_offset.max(next_base);
            if st.max_timestamp >= 0 {
                let (ts, off) = (st.max_timestamp, st.offset_of_max_timestamp);
                st.time_index.maybe_append(ts, off, true);
            }
            st.indexes_dirty = false;
            st.unflushed = false;
            st.index_entries_on_disk = st.offset_index.len();
            st.time_entries_on_disk = st.time_index.len();
            (st.offset_index.encode(), st.time_index.encode())
        };
        cleaned
            .log
            .sync_data()
            .await
            .map_err(io_err(cleaned.log.path()))?;
        for (suffix, bytes) in [(INDEX_SUFFIX, idx), (TIME_INDEX_SUFFIX, tidx)] {
            let p = cleaned_path(&dir, base, suffix);
            remove_file_if_exists(&p).await.map_err(io_err(&p))?;
            let f = DiskFile::open_rw_async(&p).await.map_err(io_err(&p))?;
            if !bytes.is_empty() {
                f.write_vec_at(bytes, 0).await.map_err(io_err(&p))?;
            }
            f.sync_data().await.map_err(io_err(&p))?;
        }
        let txn = txn_index::encode_all(&cleaned.aborted.borrow());
        if !txn.is_empty() {
            let p = cleaned_path(&dir, base, TXN_INDEX_SUFFIX);
            write_file_atomic(&p, txn).await.map_err(io_err(&p))?;
        }
        sync_dir(&dir).await
    }
}

/// The aborted transactions of the log by producer id, as (first offset, marker offset).
#[derive(Default)]
struct AbortedRanges(HashMap<i64, Vec<(i64, i64)>>);

impl AbortedRanges {
    fn of(log: &PartitionLog) -> Self {
        let mut m: HashMap<i64, Vec<(i64, i64)>> = HashMap::new();
        for e in log.aborted_index_entries() {
            m.entry(e.producer_id)
                .or_default()
                .push((e.first_offset, e.last_offset));
        }
        AbortedRanges(m)
    }

    /// Whether `h` is a transactional data batch of an aborted transaction.
    fn contains(&self, h: &BatchHeader) -> bool {
        h.is_transactional()
            && !h.is_control()
            && self.0.get(&h.producer_id).is_some_and(|r| {
                r.iter()
                    .any(|&(first, last)| first <= h.base_offset && h.base_offset < last)
            })
    }
}

/// Per producer, whether the transaction being walked kept any data (Kafka's
/// `CleanedTransactionMetadata`): a marker is only removable when none is left.
#[derive(Default)]
struct TxnTracker(HashMap<i64, bool>);

impl TxnTracker {
    fn data(&mut self, h: &BatchHeader, kept: bool) {
        *self.0.entry(h.producer_id).or_insert(false) |= kept;
    }

    /// A control batch: ends the producer's transaction; true if it kept data.
    fn marker(&mut self, h: &BatchHeader) -> bool {
        self.0.remove(&h.producer_id).unwrap_or(false)
    }
}

/// The crash-safe swap, with the segment-list lock held by the caller's check:
/// 1. (done before) `<base>.{log,index,timeindex}.cleaned` written and fsync'd;
/// 2. commit: `<base>.swap` written atomically, holding the end of the replaced range;
/// 3. the cleaned files renamed over the first old segment's files, the segment list
///    updated in memory (readers holding old segments keep their open files);
/// 4. the other old segments' files deleted, the directory fsync'd, the swap record removed.
///
/// `recover_swaps` at open completes a swap whose record exists and discards `.cleaned`
/// files otherwise, so a crash anywhere loses nothing and never leaves two copies.
async fn swap(
    log: &PartitionLog,
    old: &[(Rc<Segment>, u64)],
    cleaned: Rc<Segment>,
    next_base: i64,
) -> Result<(), StorageError> {
    let dir = log.dir().to_path_buf();
    let base = cleaned.base_offset;
    let record = swap_path(&dir, base);
    write_file_atomic(&record, encode_offset(next_base))
        .await
        .map_err(io_err(&record))?;
    crash_point(SwapStep::Committed)?;
    rename_cleaned(&dir, base)?;
    log.replace_segments(&old[0].0, old.len(), cleaned);
    crash_point(SwapStep::Renamed)?;
    for (s, _) in &old[1..] {
        // Only files: the old `Segment`s keep their descriptors for in-flight reads.
        for suffix in [
            LOG_SUFFIX,
            INDEX_SUFFIX,
            TIME_INDEX_SUFFIX,
            TXN_INDEX_SUFFIX,
        ] {
            let p = segment_path(&dir, s.base_offset, suffix);
            remove_file_if_exists(&p).await.map_err(io_err(&p))?;
        }
    }
    sync_dir(&dir).await?;
    crash_point(SwapStep::Deleted)?;
    remove_file_if_exists(&record)
        .await
        .map_err(io_err(&record))?;
    // A swap record that came back after a crash could delete segments created later.
    sync_dir(&dir).await
}

/// Renames `<base>.<suffix>.cleaned` over `<base>.<suffix>`, indexes first, where present.
fn rename_cleaned(dir: &Path, base: i64) -> Result<(), StorageError> {
    for suffix in [
        INDEX_SUFFIX,
        TIME_INDEX_SUFFIX,
        TXN_INDEX_SUFFIX,
        LOG_SUFFIX,
    ] {
        let from = cleaned_path(dir, base, suffix);
        let to = segment_path(dir, base, suffix);
        // A rename is a metadata operation; std keeps it off io_uring as the open path does.
        match std::fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io(&from, e)),
        }
    }
    Ok(())
}

/// At open, before segments are listed: completes every committed swap (`<base>.swap`
/// present: rename the cleaned files still waiting, delete old segments inside the replaced
/// range) and discards the `.cleaned` files of uncommitted ones.
pub(crate) fn recover_swaps(dir: &Path) -> Result<(), StorageError> {
    let mut swaps = Vec::new();
    let mut cleaned_files = Vec::new();
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        match parse_segment_name(name) {
            Some((base, SWAP_SUFFIX)) => swaps.push((base, entry.path())),
            Some((base, LOG_SUFFIX)) => bases.push(base),
            Some((_, s)) if s.ends_with(CLEANED_SUFFIX) => cleaned_files.push(entry.path()),
            _ => {}
        }
    }
    if swaps.is_empty() && cleaned_files.is_empty() {
        return Ok(());
    }
    for (base, record) in &swaps {
        let end = std::fs::read(record).ok().and_then(|b| decode_offset(&b));
        let Some(end) = end else {
            // Written atomically, so never torn; a foreign or empty file is ignored.
            tracing::warn!(file = %record.display(), "malformed swap record ignored");
            let _ = std::fs::remove_file(record);
            continue;
        };
        tracing::warn!(dir = %dir.display(), base, end, "completing an interrupted cleaner swap");
        rename_cleaned(dir, *base)?;
        for &b in bases.iter().filter(|&&b| b > *base && b < end) {
            for suffix in [
                LOG_SUFFIX,
                INDEX_SUFFIX,
                TIME_INDEX_SUFFIX,
                TXN_INDEX_SUFFIX,
            ] {
                let p = segment_path(dir, b, suffix);
                match std::fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StorageError::io(&p, e)),
                }
            }
        }
        crate::io::file::sync_dir_blocking(dir).map_err(io_err(dir))?;
        std::fs::remove_file(record).map_err(io_err(record))?;
    }
    for p in cleaned_files {
        if p.exists() {
            tracing::info!(file = %p.display(), "discarding an uncommitted cleaned segment file");
            std::fs::remove_file(&p).map_err(io_err(&p))?;
        }
    }
    crate::io::file::sync_dir_blocking(dir).map_err(io_err(dir))
}

/// Runs a shard's cleaner until `running()` turns false: every `log.cleaner.backoff.ms` it
/// visits the logs `logs()` returns (through `log_of`), cleaning those due, dirtiest first.
pub async fn run<P, L, G, R>(config: CleanerConfig, logs: L, log_of: G, running: R)
where
    L: Fn() -> Vec<P>,
    G: Fn(&P) -> &PartitionLog,
    R: Fn() -> bool,
{
    if !config.enable {
        return;
    }
    let mut cleaner = LogCleaner::new(config);
    loop {
        tokio::time::sleep(Duration::from_millis(config.backoff_ms)).await;
        if !running() {
            return;
        }
        let now = wall_clock_ms();
        let mut due: Vec<(f64, P)> = logs()
            .into_iter()
            .filter_map(|p| {
                let c = cleaner.cleanable(log_of(&p), now)?;
                c.is_due(&log_of(&p).config()).then(|| (c.dirty_ratio(), p))
            })
            .collect();
        due.sort_by(|a, b| b.0.total_cmp(&a.0));
        for (_, p) in due {
            if !running() {
                return;
            }
            let log = log_of(&p);
            if let Err(e) = cleaner.clean(log, wall_clock_ms()).await {
                tracing::warn!(dir = %log.dir().display(), error = %e, "log cleaning failed");
            }
        }
    }
}

fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
