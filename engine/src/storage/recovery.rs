//! Opening a partition directory: load trusted segments, scan the rest, repair the tail.
//!
//! Runs once per partition at open time, so it uses std for directory listing, file opening
//! and checkpoint reads; log reads during scans go through io_uring.

use std::io;
use std::path::Path;
use std::rc::Rc;

use crate::io::file::{sync_dir_blocking, write_file_atomic};

use super::checkpoint::{
    decode_offset, encode_offset, CLEAN_SHUTDOWN_FILE, LEADER_EPOCH_FILE, LOG_START_FILE,
    RECOVERY_POINT_FILE,
};
use super::config::LogConfig;
use super::error::StorageError;
use super::leader_epoch::LeaderEpochCache;
use super::segment::{
    parse_segment_name, Segment, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX, TXN_INDEX_SUFFIX,
};

/// The state a log starts from.
pub(crate) struct Loaded {
    pub segments: Vec<Rc<Segment>>,
    pub log_start_offset: i64,
    pub next_offset: i64,
    pub recovery_point: i64,
    pub epochs: LeaderEpochCache,
    /// Base of the first segment recovery scanned (its `.txnindex` and every later one's
    /// must be rebuilt from the log), if any.
    pub scanned_from: Option<i64>,
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, StorageError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StorageError::io(path, e)),
    }
}

fn read_offset_checkpoint(dir: &Path, name: &str) -> Result<Option<i64>, StorageError> {
    let path = dir.join(name);
    Ok(match read_optional(&path)? {
        None => None,
        Some(bytes) => {
            let v = decode_offset(&bytes);
            if v.is_none() {
                tracing::warn!(file = %path.display(), "malformed checkpoint ignored");
            }
            v
        }
    })
}

fn mtime_ms(path: &Path) -> Option<i64> {
    let m = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(m.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64)
}

/// Loads or recovers the log in `dir` (creating the directory if needed).
pub(crate) async fn load(dir: &Path, cfg: &LogConfig, now_ms: i64) -> Result<Loaded, StorageError> {
    std::fs::create_dir_all(dir).map_err(|e| StorageError::io(dir, e))?;
    // An interrupted cleaner swap is completed or discarded before segments are listed.
    super::cleaner::recover_swaps(dir)?;
    let clean_marker = dir.join(CLEAN_SHUTDOWN_FILE);
    let clean = clean_marker.exists();
    let recovery_point = read_offset_checkpoint(dir, RECOVERY_POINT_FILE)?.unwrap_or(0);
    let start_checkpoint = read_offset_checkpoint(dir, LOG_START_FILE)?;
    let mut epochs = match read_optional(&dir.join(LEADER_EPOCH_FILE))? {
        None => LeaderEpochCache::new(),
        Some(b) => LeaderEpochCache::decode(&b).unwrap_or_else(|| {
            tracing::warn!(dir = %dir.display(), "malformed leader-epoch-checkpoint ignored");
            LeaderEpochCache::new()
        }),
    };

    let mut log_bases = Vec::new();
    let mut index_files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| StorageError::io(dir, e))? {
        let entry = entry.map_err(|e| StorageError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".tmp") {
            // An interrupted atomic checkpoint write.
            let _ = std::fs::remove_file(entry.path());
            continue;
        }
        match parse_segment_name(name) {
            Some((base, LOG_SUFFIX)) => log_bases.push(base),
            Some((base, INDEX_SUFFIX | TIME_INDEX_SUFFIX | TXN_INDEX_SUFFIX)) => {
                index_files.push((base, entry.path()))
            }
            _ => {}
        }
    }
    log_bases.sort_unstable();
    for (base, path) in index_files {
        if log_bases.binary_search(&base).is_err() {
            tracing::warn!(file = %path.display(), "removing index without a log file");
            let _ = std::fs::remove_file(&path);
        }
    }

    let mut epochs_from_scan = false;
    let mut segments: Vec<Rc<Segment>> = Vec::new();
    let mut scanned: Vec<Rc<Segment>> = Vec::new();
    let mut i = 0;
    while i < log_bases.len() {
        let base = log_bases[i];
        let next_base = log_bases.get(i + 1).copied();
        let created =
            mtime_ms(&super::segment::segment_path(dir, base, LOG_SUFFIX)).unwrap_or(now_ms);
        let seg = Rc::new(Segment::open_existing(dir, base, cfg, created)?);
        // A segment holding offsets at or after the recovery point may have lost its tail.
        let must_scan = !clean && next_base.is_none_or(|nb| nb > recovery_point);
        let mut scan = must_scan;
        if !must_scan {
            let bound = next_base.unwrap_or(i64::MAX);
            if seg.load_indexes(cfg, bound)? {
                if seg.may_need_time_rebuild().await? {
                    tracing::info!(dir = %dir.display(), base, "segment has batches with a -1 max timestamp; rebuilding its time index from the records");
                    scan = true;
                } else if next_base.is_none() {
                    // Trusted last segment: find its end from the last index entry.
                    if let Err(e) = seg.read_tail(cfg).await {
                        tracing::warn!(dir = %dir.display(), base, error = %e, "tail of a clean segment unreadable; scanning");
                        scan = true;
                    }
                }
            } else {
                scan = true;
            }
        }
        let mut drop_rest = false;
        if scan {
            let outcome = seg.recover(cfg).await?;
            // As Kafka's segment recovery does: epochs newer than the cache's latest come back
            // from the batches themselves (the checkpoint may not have been written).
            for &(epoch, start) in &outcome.epoch_starts {
                if epochs.latest_epoch().is_none_or(|latest| epoch > latest) {
                    epochs_from_scan |= epochs.assign(epoch, start);
                }
            }
            let next = seg.st.borrow().next_offset;
            if outcome.truncated_bytes > 0 && next_base.is_some() {
                drop_rest = true;
            }
            if next_base.is_some_and(|nb| next > nb) {
                tracing::warn!(dir = %dir.display(), base, next, "segment overlaps its successor");
                drop_rest = true;
            }
            scanned.push(seg.clone());
        }
        segments.push(seg);
        if drop_rest {
            for &later in &log_bases[i + 1..] {
                tracing::warn!(dir = %dir.display(), base = later, "deleting segment after a corrupt one");
                for suffix in [
                    LOG_SUFFIX,
                    INDEX_SUFFIX,
                    TIME_INDEX_SUFFIX,
                    TXN_INDEX_SUFFIX,
                ] {
                    let p = super::segment::segment_path(dir, later, suffix);
                    match std::fs::remove_file(&p) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(StorageError::io(&p, e)),
                    }
                }
            }
            break;
        }
        i += 1;
    }

    let mut log_start = start_checkpoint.unwrap_or(0);
    if let Some(first) = segments.first() {
        log_start = log_start.max(first.base_offset);
    }
    if segments.is_empty() {
        segments.push(Rc::new(Segment::create(dir, log_start, cfg, now_ms).await?));
    }
    // Non-last segments end where their successor starts.
    for w in 0..segments.len().saturating_sub(1) {
        let nb = segments[w + 1].base_offset;
        let mut st = segments[w].st.borrow_mut();
        if st.next_offset < nb {
            st.next_offset = nb;
        }
    }
    let last = segments
        .last()
        .cloned()
        .ok_or_else(|| StorageError::Corrupt("no segment".into()))?;
    let next_offset = last.st.borrow().next_offset;
    if log_start > next_offset {
        tracing::warn!(dir = %dir.display(), log_start, next_offset, "log start checkpoint beyond the log end; clamping");
        log_start = next_offset;
    }

    // Data found by a scan may only be in the page cache (after a process crash): make it
    // durable, with its rebuilt indexes, before reporting it durable.
    for s in &scanned {
        s.log
            .sync_data()
            .await
            .map_err(|e| StorageError::io(s.log.path(), e))?;
        // A rolled segment's time index ends with its max timestamp, as rolling writes it.
        s.write_indexes(!Rc::ptr_eq(s, &last), true).await?;
    }
    let mut epochs_changed = epochs_from_scan | epochs.truncate_from_end(next_offset);
    epochs_changed |= epochs.truncate_from_start(log_start);
    if epochs_changed {
        write_file_atomic(&dir.join(LEADER_EPOCH_FILE), epochs.encode())
            .await
            .map_err(|e| StorageError::io(dir, e))?;
    }
    let new_recovery_point = last.base_offset;
    write_file_atomic(
        &dir.join(RECOVERY_POINT_FILE),
        encode_offset(new_recovery_point),
    )
    .await
    .map_err(|e| StorageError::io(dir, e))?;
    if clean {
        std::fs::remove_file(&clean_marker).map_err(|e| StorageError::io(&clean_marker, e))?;
    }
    // The marker's removal and any file we created or deleted must survive a crash.
    sync_dir_blocking(dir).map_err(|e| StorageError::io(dir, e))?;
    if !scanned.is_empty() {
        tracing::info!(dir = %dir.display(), segments = scanned.len(), next_offset, "recovered log");
    }
    Ok(Loaded {
        scanned_from: scanned.first().map(|s| s.base_offset),
        segments,
        log_start_offset: log_start,
        next_offset,
        recovery_point: new_recovery_point,
        epochs,
    })
}
