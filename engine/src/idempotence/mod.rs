//! Idempotent-producer state: per (producer id, partition) sequence tracking, sans-IO.
