//! The storage engine: append-only segments of Kafka RecordBatch v2 bytes with sparse indexes.
