//! sluice-bench: a Kafka-protocol load generator that measures any Kafka-compatible broker
//! with coordinated-omission-corrected HDR histograms and OMB-style reports.

pub mod accumulator;
pub mod baseline;
pub mod client;
pub mod clock;
pub mod compare;
pub mod consumer;
pub mod fake_broker;
pub mod group_consumer;
pub mod ledger;
pub mod machine;
/// The Java client's key partitioner, shared with `sluicectl` through the engine library.
pub use sluice::partitioner as murmur2;
pub mod payload;
pub mod perf;
pub mod plot;
pub mod producer;
pub mod rate;
pub mod recorder;
pub mod replication;
pub mod report;
pub mod runner;
pub mod timer;
pub mod workload;
