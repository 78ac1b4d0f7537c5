//! Sans-IO retention planning: which leading segments to delete, as Kafka's log layer does.

use super::config::LogConfig;

/// What the planner needs to know about a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Base offset.
    pub base_offset: i64,
    /// Size in bytes.
    pub size: u64,
    /// Newest timestamp in the segment (file mtime if it has none).
    pub largest_timestamp: i64,
}

/// The plan: delete the first `delete_count` segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPlan {
    /// Number of leading segments to delete.
    pub delete_count: usize,
}

/// What `enforce_retention` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionOutcome {
    /// Segments deleted.
    pub deleted_segments: usize,
    /// Bytes deleted.
    pub deleted_bytes: u64,
    /// Log start offset afterwards.
    pub log_start_offset: i64,
}

/// Plans deletion of leading non-active segments (the last segment is never deleted) that
/// breach `retention.ms`, `retention.bytes` or lie wholly below `log_start_offset`.
pub fn plan_retention(
    segments: &[SegmentInfo],
    cfg: &LogConfig,
    now_ms: i64,
    log_start_offset: i64,
) -> RetentionPlan {
    let deletable = segments.len().saturating_sub(1);
    let mut n = 0;
    // Below the log start (DeleteRecords moved it past whole segments).
    while n < deletable && segments[n + 1].base_offset <= log_start_offset {
        n += 1;
    }
    if cfg.retention_ms >= 0 {
        while n < deletable
            && now_ms.saturating_sub(segments[n].largest_timestamp) > cfg.retention_ms
        {
            n += 1;
        }
    }
    if cfg.retention_bytes >= 0 {
        let total: u64 = segments[n..].iter().map(|s| s.size).sum();
        let mut excess = total as i64 - cfg.retention_bytes;
        while n < deletable && excess - segments[n].size as i64 >= 0 {
            excess -= segments[n].size as i64;
            n += 1;
        }
    }
    RetentionPlan { delete_count: n }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(v: &[(i64, u64, i64)]) -> Vec<SegmentInfo> {
        v.iter()
            .map(|&(b, s, t)| SegmentInfo {
                base_offset: b,
                size: s,
                largest_timestamp: t,
            })
            .collect()
    }

    #[test]
    fn time_size_and_start_rules() {
        let s = segs(&[
            (0, 100, 1000),
            (10, 100, 2000),
            (20, 100, 3000),
            (30, 50, 9000),
        ]);
        let unlimited = LogConfig {
            retention_ms: -1,
            retention_bytes: -1,
            ..LogConfig::default()
        };
        assert_eq!(plan_retention(&s, &unlimited, 10_000, 0).delete_count, 0);
        let by_time = LogConfig {
            retention_ms: 7500,
            ..unlimited
        };
        assert_eq!(plan_retention(&s, &by_time, 10_000, 0).delete_count, 2);
        // Never the active segment, however old.
        assert_eq!(
            plan_retention(
                &s,
                &LogConfig {
                    retention_ms: 0,
                    ..unlimited
                },
                100_000,
                0
            )
            .delete_count,
            3
        );
        // Kafka deletes only while the remaining size stays >= retention.bytes.
        let by_size = LogConfig {
            retention_bytes: 160,
            ..unlimited
        };
        assert_eq!(plan_retention(&s, &by_size, 0, 0).delete_count, 1);
        let by_size = LogConfig {
            retention_bytes: 150,
            ..unlimited
        };
        assert_eq!(plan_retention(&s, &by_size, 0, 0).delete_count, 2);
        let by_size = LogConfig {
            retention_bytes: 350,
            ..unlimited
        };
        assert_eq!(plan_retention(&s, &by_size, 0, 0).delete_count, 0);
        assert_eq!(plan_retention(&s, &unlimited, 0, 20).delete_count, 2);
        assert_eq!(plan_retention(&s, &unlimited, 0, 19).delete_count, 1);
        assert_eq!(
            plan_retention(&s[..1], &by_time, 100_000, 0).delete_count,
            0
        );
    }
}
