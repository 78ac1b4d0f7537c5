//! Sans-IO cleaning plans: which segments may be cleaned, how dirty a log is, and how cleaned
//! segments are grouped.

use crate::storage::config::LogConfig;

/// What the planner needs to know about a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentView {
    /// Base offset.
    pub base_offset: i64,
    /// Readable size in bytes.
    pub size: u64,
    /// Newest timestamp in the segment (its creation time if it has none).
    pub largest_timestamp: i64,
    /// Offset index entries.
    pub index_entries: usize,
}

/// The cleanable part of a log, by segment index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cleanable {
    /// Segments `0..first_dirty` were cleaned before (the clean part).
    pub first_dirty: usize,
    /// Segments `first_dirty..end` are dirty and may be cleaned; `end` never reaches the
    /// active segment.
    pub end: usize,
    /// Bytes of the clean part.
    pub clean_bytes: u64,
    /// Bytes of the dirty cleanable part.
    pub dirty_bytes: u64,
}

impl Cleanable {
    /// Kafka's dirty ratio: dirty bytes over clean plus dirty bytes.
    pub fn dirty_ratio(&self) -> f64 {
        let total = self.clean_bytes + self.dirty_bytes;
        if total == 0 {
            0.0
        } else {
            self.dirty_bytes as f64 / total as f64
        }
    }

    /// Whether Kafka's cleaner would pick this log: some dirty bytes and a ratio at or above
    /// `min.cleanable.dirty.ratio`.
    pub fn is_due(&self, cfg: &LogConfig) -> bool {
        self.dirty_bytes > 0
            && self.dirty_ratio() * 1e6 >= f64::from(cfg.min_cleanable_dirty_ratio_ppm)
    }
}

/// The cleanable range of `segments` (oldest first, the last one active). A segment is
/// cleanable when it is not active, its successor starts at or below `recovery_point` (it is
/// rolled, flushed and its indexes are on disk) and it is older than `min.compaction.lag.ms`
/// (measured by its newest timestamp). Cleaning stops at the first segment that is not.
/// `first_dirty_offset` is the cleaner checkpoint: where the previous cleaning stopped.
pub fn cleanable(
    segments: &[SegmentView],
    first_dirty_offset: i64,
    recovery_point: i64,
    now_ms: i64,
    cfg: &LogConfig,
) -> Cleanable {
    // A checkpoint beyond the active segment's base is stale (the log was truncated below
    // it): everything is dirty again.
    let first_dirty_offset = match segments.last() {
        Some(active) if first_dirty_offset > active.base_offset => 0,
        _ => first_dirty_offset,
    };
    let mut end = 0;
    while end + 1 < segments.len()
        && segments[end + 1].base_offset <= recovery_point
        && now_ms.saturating_sub(segments[end].largest_timestamp) >= cfg.min_compaction_lag_ms
    {
        end += 1;
    }
    // A segment is clean when all of it lies below the checkpoint (its successor starts at or
    // below it); the checkpoint is always a segment base, so no segment is half clean.
    let mut first_dirty = 0;
    while first_dirty < end && segments[first_dirty + 1].base_offset <= first_dirty_offset {
        first_dirty += 1;
    }
    let bytes = |r: std::ops::Range<usize>| segments[r].iter().map(|s| s.size).sum::<u64>();
    Cleanable {
        first_dirty,
        end,
        clean_bytes: bytes(0..first_dirty),
        dirty_bytes: bytes(first_dirty..end),
    }
}

/// Kafka's `groupSegmentsBySize`: consecutive segments of `segments[..end]` merged so that a
/// group's bytes fit `segment.bytes`, its index entries fit `segment.index.bytes` and its
/// offsets fit a relative offset (`next_base` gives the offset after the group's last
/// segment). Every segment is in exactly one group, in order.
pub fn group_by_size(
    segments: &[SegmentView],
    end: usize,
    cfg: &LogConfig,
) -> Vec<std::ops::Range<usize>> {
    let max_entries = cfg.max_index_entries();
    let mut groups = Vec::new();
    let mut start = 0;
    while start < end {
        let mut stop = start + 1;
        let mut bytes = segments[start].size;
        let mut entries = segments[start].index_entries;
        while stop < end {
            let s = &segments[stop];
            let next_base = segments.get(stop + 1).map_or(i64::MAX, |n| n.base_offset);
            if bytes + s.size > cfg.segment_bytes
                || entries + s.index_entries > max_entries
                || next_base.saturating_sub(segments[start].base_offset) > i64::from(i32::MAX)
            {
                break;
            }
            bytes += s.size;
            entries += s.index_entries;
            stop += 1;
        }
        groups.push(start..stop);
        start = stop;
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(base: i64, size: u64, ts: i64) -> SegmentView {
        SegmentView {
            base_offset: base,
            size,
            largest_timestamp: ts,
            index_entries: 1,
        }
    }

    #[test]
    fn active_unflushed_and_young_segments_are_not_cleanable() {
        let cfg = LogConfig::default();
        let segs = [
            seg(0, 100, 10),
            seg(10, 100, 20),
            seg(20, 100, 30),
            seg(30, 5, 40),
        ];
        let c = cleanable(&segs, 0, 30, 1000, &cfg);
        assert_eq!((c.first_dirty, c.end, c.dirty_bytes), (0, 3, 300));
        assert!((c.dirty_ratio() - 1.0).abs() < 1e-9);
        // The recovery point has not passed segment 2.
        assert_eq!(cleanable(&segs, 0, 20, 1000, &cfg).end, 2);
        // min.compaction.lag.ms keeps segments with recent records.
        let lag = LogConfig {
            min_compaction_lag_ms: 985,
            ..cfg
        };
        assert_eq!(cleanable(&segs, 0, 30, 1000, &lag).end, 1);
        // The checkpoint marks the clean part.
        let c = cleanable(&segs, 20, 30, 1000, &cfg);
        assert_eq!((c.first_dirty, c.clean_bytes, c.dirty_bytes), (2, 200, 100));
        assert!(!c.is_due(&cfg));
        let c = cleanable(&segs, 10, 30, 1000, &cfg);
        assert!(c.is_due(&cfg));
        assert!(!cleanable(&segs[3..], 0, 100, 1000, &cfg).is_due(&cfg));
        // A checkpoint past the active segment (after a truncation) is ignored.
        assert_eq!(cleanable(&segs, 500, 30, 1000, &cfg).first_dirty, 0);
    }

    #[test]
    fn groups_fit_segment_bytes() {
        let cfg = LogConfig {
            segment_bytes: 250,
            ..LogConfig::default()
        };
        let segs = [
            seg(0, 100, 0),
            seg(10, 100, 0),
            seg(20, 100, 0),
            seg(30, 300, 0),
            seg(40, 10, 0),
            seg(50, 0, 0),
        ];
        assert_eq!(group_by_size(&segs, 5, &cfg), vec![0..2, 2..3, 3..4, 4..5]);
        assert!(group_by_size(&segs, 0, &cfg).is_empty());
    }
}
