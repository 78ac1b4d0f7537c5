//! Sluice: a Kafka-compatible, thread-per-core streaming storage engine and broker.
//!
//! See `ARCHITECTURE.md` at the repository root for the map of this crate.

pub mod admin;
pub mod broker;
pub mod check;
pub mod controller;
#[doc(hidden)]
pub mod fuzzing;
pub mod group;
pub mod idempotence;
pub mod io;
pub mod logging;
pub mod metrics;
pub mod partitioner;
pub mod replication;
pub mod security;
pub mod storage;
pub mod txn;
