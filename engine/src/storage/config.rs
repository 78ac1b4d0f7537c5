//! Per-partition log configuration, named after Kafka's topic-level settings.

pub use super::record_batch::TimestampType;

/// When appended data is fsync'd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// fsync after every append (`flush.messages=1`), shared by concurrent appends (group commit).
    EveryAppend,
    /// fsync once `messages` records are unflushed or `ms` milliseconds passed (`flush.messages`,
    /// `flush.ms`); 0 disables that trigger.
    Interval {
        /// `flush.messages`.
        messages: u64,
        /// `flush.ms`.
        ms: u64,
    },
    /// Leave flushing to the OS page cache (Kafka's default); segments are fsync'd when rolled.
    Os,
}

/// Configuration of one partition log; `Default` is Kafka's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogConfig {
    /// `segment.bytes`: roll the active segment when it would exceed this size.
    pub segment_bytes: u64,
    /// `segment.ms`: roll a non-empty active segment this long after its first batch.
    pub segment_ms: i64,
    /// `segment.index.bytes`: maximum size of an offset index (the time index gets the same
    /// number of entries); a full index rolls the segment.
    pub segment_index_bytes: u32,
    /// `index.interval.bytes`: log bytes between two offset index entries.
    pub index_interval_bytes: u32,
    /// `retention.ms`: delete segments whose newest timestamp is older; -1 = unlimited.
    pub retention_ms: i64,
    /// `retention.bytes`: delete the oldest segments while the log is larger; -1 = unlimited.
    pub retention_bytes: i64,
    /// `max.message.bytes`: largest batch accepted.
    pub max_message_bytes: u32,
    /// `flush.messages` / `flush.ms`, as a policy.
    pub flush: FlushPolicy,
    /// `message.timestamp.type`.
    pub message_timestamp_type: TimestampType,
    /// `message.timestamp.before.max.ms` (or `difference.max.ms`): a CreateTime record older
    /// than the broker's clock by more than this is refused; `i64::MAX` = no limit.
    pub message_timestamp_before_max_ms: i64,
    /// `message.timestamp.after.max.ms` (or `difference.max.ms`): a CreateTime record newer
    /// than the broker's clock by more than this is refused; `i64::MAX` = no limit.
    pub message_timestamp_after_max_ms: i64,
    /// `cleanup.policy` contains `compact`: the log cleaner keeps the latest record per key.
    pub compact: bool,
    /// `cleanup.policy` contains `delete`: `retention.ms`/`retention.bytes` apply.
    pub delete: bool,
    /// `delete.retention.ms`: how long tombstones stay readable in a compacted log.
    pub delete_retention_ms: i64,
    /// `min.compaction.lag.ms`: records younger than this are never compacted.
    pub min_compaction_lag_ms: i64,
    /// `min.cleanable.dirty.ratio` in parts per million (kept integral so the config is `Eq`).
    pub min_cleanable_dirty_ratio_ppm: u32,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            segment_index_bytes: 10 * 1024 * 1024,
            index_interval_bytes: 4096,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            max_message_bytes: 1_048_588,
            flush: FlushPolicy::Os,
            message_timestamp_type: TimestampType::CreateTime,
            message_timestamp_before_max_ms: i64::MAX,
            message_timestamp_after_max_ms: i64::MAX,
            compact: false,
            delete: true,
            delete_retention_ms: 24 * 3600 * 1000,
            min_compaction_lag_ms: 0,
            min_cleanable_dirty_ratio_ppm: 500_000,
        }
    }
}

impl LogConfig {
    /// Maximum offset index entries per segment.
    pub fn max_index_entries(&self) -> usize {
        (self.segment_index_bytes as usize / super::offset_index::ENTRY_SIZE).max(1)
    }
}
