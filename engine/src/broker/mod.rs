//! The Kafka-protocol broker: configuration, shards, connections and request handlers.
//!
//! - [`cluster`], [`cluster_replica`], [`cluster_client`]: membership of the cluster (a
//!   cluster of one by default): controller-backed metadata and admin APIs, replication
//!   through storage, broker-to-broker calls.
//! - [`node_identity`]: `meta.properties`, and the migration of a directory written by the
//!   release without a controller.
//! - [`config`]: TOML/env/flag configuration with Kafka key names.
//! - [`metadata`]: the topic registry the shards read (the controller image's view).
//! - [`protocol`]: served API versions, framing, the zero-copy FetchResponse encoder.
//! - [`shard`]: per-core shard state, partition ownership, cross-shard jobs.
//! - [`handlers`]: one function per Kafka API.
//! - [`fetch`]: the Fetch handler; [`fetch_session`]: its KIP-227 session cache (sans-IO).
//! - [`groups`]: the consumer-group coordinator of each shard, `__consumer_offsets`.
//! - [`producer_ids`]: InitProducerId (owned by shard 0), refusals of the transactional APIs.
//! - [`admin_records`]: DeleteRecords, DescribeLogDirs, DescribeProducers.
//! - [`quorum`]: DescribeQuorum (the controller voters' Raft state, forwarded to the leader).
//! - [`connection`]: per-connection read/dispatch/in-order write (TLS and SASL on it).
//! - [`listeners`]: named listeners, their security protocols, TLS and SASL settings.
//! - [`server`]: starting shard threads, two-phase shutdown.

pub mod admin_records;
pub mod cluster;
pub mod cluster_client;
pub mod cluster_replica;
pub mod config;
pub mod connection;
pub mod fetch;
pub mod fetch_session;
pub mod groups;
pub mod handlers;
pub mod listeners;
pub mod metadata;
pub mod node_identity;
pub mod producer_ids;
pub mod protocol;
pub mod quorum;
pub mod server;
pub mod shard;

pub use config::{BrokerConfig, ConfigError};
pub use server::{Event, Server, ServerError};
