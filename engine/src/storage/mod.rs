//! The storage engine: append-only segments of Kafka RecordBatch v2 bytes with sparse indexes.
//!
//! A partition is a directory of segments (`<20-digit base offset>.log/.index/.timeindex`),
//! a `leader-epoch-checkpoint`, a recovery-point and a log-start checkpoint. `PartitionLog` is
//! the API the broker and replication layers call; the format modules are sans-IO.

pub mod checkpoint;
pub mod cleaner;
pub mod config;
pub mod decompress;
pub mod error;
pub mod leader_epoch;
pub mod log;
pub mod offset_index;
pub mod record_batch;
pub(crate) mod recovery;
pub mod retention;
pub(crate) mod segment;
pub mod time_index;
pub mod txn_index;
pub mod validate;

pub use config::{FlushPolicy, LogConfig, TimestampType};
pub use error::{AppendError, ReadError, StorageError};
pub use log::{CommittedRead, FileSlice, LogAppendInfo, LogStats, PartitionLog, ReadResult};
pub use record_batch::{BatchHeader, BatchIter};
pub use retention::RetentionOutcome;
pub use segment_names::{parse_segment_name, segment_path};

/// Segment file naming, for tools.
pub mod segment_names {
    pub use super::segment::{
        parse_segment_name, segment_path, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX,
    };
}
