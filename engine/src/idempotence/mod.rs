//! Idempotent-producer state: per (producer id, partition) sequence tracking, sans-IO.
//!
//! - [`producer_id`]: [`ProducerIdManager`], InitProducerId allocation that never reuses an id.
//! - [`state`]: [`ProducerStateTable`], one per partition: duplicate detection over the last
//!   five batches of each producer, sequence and epoch checks, expiry, rebuild from the log.
//! - [`append`]: checks for a whole produce record set (several batches), analyse then commit.
//! - [`snapshot`]: the table's versioned, CRC-32C protected snapshot files
//!   (`<20-digit offset>.snapshot` beside the segments).

pub mod append;
pub mod producer_id;
pub mod snapshot;
pub mod state;

pub use append::{AppendAnalysis, ProducerAppend};
pub use producer_id::{
    init_producer_id_request, init_producer_id_response, InitProducerId, InitProducerIdResult,
    ProducerIdAction, ProducerIdManager, DEFAULT_PRODUCER_ID_BLOCK_SIZE,
};
pub use snapshot::{parse_snapshot_file_name, snapshot_file_name, SnapshotError};
pub use state::{
    parse_record_batch_header, snapshots_below_log_start, snapshots_for_truncation, AppendTicket,
    BatchHeader, BatchHeaderError, BatchMetadata, CheckOutcome, CompletedTxn, ProducerEntry,
    ProducerStateError, ProducerStateTable, ReplayedBatch, TxnMarker,
    DEFAULT_PRODUCER_ID_EXPIRATION_MS,
};
