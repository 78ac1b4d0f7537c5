//! Typed storage errors and their Kafka error codes.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use super::record_batch::BatchError;

/// Kafka error codes the storage layer produces.
pub mod codes {
    /// OFFSET_OUT_OF_RANGE.
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    /// CORRUPT_MESSAGE.
    pub const CORRUPT_MESSAGE: i16 = 2;
    /// MESSAGE_TOO_LARGE.
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    /// RECORD_LIST_TOO_LARGE.
    pub const RECORD_LIST_TOO_LARGE: i16 = 18;
    /// INVALID_TIMESTAMP.
    pub const INVALID_TIMESTAMP: i16 = 32;
    /// UNSUPPORTED_FOR_MESSAGE_FORMAT.
    pub const UNSUPPORTED_FOR_MESSAGE_FORMAT: i16 = 43;
    /// KAFKA_STORAGE_ERROR.
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    /// INVALID_RECORD.
    pub const INVALID_RECORD: i16 = 87;
    /// INVALID_TXN_STATE.
    pub const INVALID_TXN_STATE: i16 = 48;
    /// UNKNOWN_SERVER_ERROR.
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
}

/// A failure of the log's files or of its on-disk state.
#[derive(Debug, Error)]
pub enum StorageError {
    /// An I/O operation failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// File or directory concerned.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// An earlier write or fsync failed; the log refuses further work (Kafka takes the log dir
    /// offline for the same reason: after a failed fsync the page cache state is unknown).
    #[error("log {0} is offline after an I/O failure")]
    Offline(PathBuf),
    /// On-disk data is inconsistent in a way recovery cannot repair.
    #[error("corrupt log: {0}")]
    Corrupt(String),
    /// The caller passed an impossible argument.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The log was closed or deleted.
    #[error("log {0} is closed")]
    Closed(PathBuf),
}

impl StorageError {
    /// Wraps an `io::Error` with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        StorageError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Why an append was rejected. Nothing is written when this is returned (except `Storage`).
#[derive(Debug, Error)]
pub enum AppendError {
    /// A batch fails CRC or structural checks.
    #[error("corrupt batch at byte {position}: {source}")]
    Corrupt {
        /// Byte position within the request records.
        position: usize,
        /// What is wrong.
        #[source]
        source: BatchError,
    },
    /// A batch is well formed but not acceptable (bad counts, records, control batch...).
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    /// The magic byte is 0 or 1, which this engine does not store.
    #[error("unsupported record batch magic {0}")]
    UnsupportedMagic(i8),
    /// A batch exceeds `max.message.bytes`.
    #[error("batch of {size} bytes exceeds max.message.bytes {max}")]
    RecordTooLarge {
        /// Batch size.
        size: usize,
        /// The limit.
        max: u32,
    },
    /// The whole record set exceeds `segment.bytes`.
    #[error("record set of {size} bytes exceeds segment.bytes {max}")]
    RecordListTooLarge {
        /// Record set size.
        size: usize,
        /// The limit.
        max: u64,
    },
    /// A timestamp is out of range.
    #[error("invalid timestamp: {0}")]
    InvalidTimestamp(String),
    /// A follower append goes back: a batch starts below the log end or the previous batch's end.
    #[error("follower append goes back: expected offset {expected} or above, got {got}")]
    NonContiguous {
        /// The offset the log expected.
        expected: i64,
        /// The offset the batch carries.
        got: i64,
    },
    /// The idempotent-producer checks refused a batch (sequence gap, fenced epoch).
    #[error(transparent)]
    ProducerState(#[from] crate::idempotence::ProducerStateError),
    /// A transactional batch: no transaction coordinator runs, so none can be ongoing.
    #[error("transactional batch refused: transactions are not supported")]
    TransactionalBatch,
    /// The storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl AppendError {
    /// The Kafka error code to put in a produce response.
    pub fn kafka_error_code(&self) -> i16 {
        match self {
            AppendError::Corrupt { .. } => codes::CORRUPT_MESSAGE,
            AppendError::InvalidRecord(_) => codes::INVALID_RECORD,
            AppendError::UnsupportedMagic(_) => codes::UNSUPPORTED_FOR_MESSAGE_FORMAT,
            AppendError::RecordTooLarge { .. } => codes::MESSAGE_TOO_LARGE,
            AppendError::RecordListTooLarge { .. } => codes::RECORD_LIST_TOO_LARGE,
            AppendError::InvalidTimestamp(_) => codes::INVALID_TIMESTAMP,
            AppendError::NonContiguous { .. } => codes::UNKNOWN_SERVER_ERROR,
            AppendError::ProducerState(e) => e.error_code(),
            AppendError::TransactionalBatch => codes::INVALID_TXN_STATE,
            AppendError::Storage(_) => codes::KAFKA_STORAGE_ERROR,
        }
    }
}

/// Why a read failed.
#[derive(Debug, Error)]
pub enum ReadError {
    /// The offset is below the log start or above the log end.
    #[error("offset {requested} out of range [{log_start}, {log_end}]")]
    OffsetOutOfRange {
        /// The offset asked for.
        requested: i64,
        /// Current log start offset.
        log_start: i64,
        /// Current log end offset.
        log_end: i64,
    },
    /// The storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl ReadError {
    /// The Kafka error code to put in a fetch response.
    pub fn kafka_error_code(&self) -> i16 {
        match self {
            ReadError::OffsetOutOfRange { .. } => codes::OFFSET_OUT_OF_RANGE,
            ReadError::Storage(_) => codes::KAFKA_STORAGE_ERROR,
        }
    }
}
