//! The Kafka-protocol broker, in layers that import only downwards (ARCHITECTURE.md,
//! "Dependency rules"; `engine/tests/layering.rs` checks them):
//!
//! - Foundation: [`config`] (TOML/env/flags with Kafka key names), [`protocol`] (served
//!   versions, framing, the zero-copy FetchResponse encoder), [`metadata`] (the topic registry
//!   the shards read), [`cluster`] (membership: the controller voter, registration,
//!   heartbeats; a cluster of one by default), [`cluster_client`] (broker-to-broker calls),
//!   [`node_identity`] (`meta.properties`, the legacy-directory migration), [`listeners`],
//!   [`fetch_session`] (the sans-IO KIP-227 cache), [`request_context`].
//! - [`shard`]: the core of each shard (partitions, image copy, phase) and `Peers<T>`, the
//!   mailboxes that reach a per-shard value on another shard.
//! - Services on the core: [`replicas`] with [`partition_io`] (replication, and the produce,
//!   fetch and list-offsets paths through it), [`groups`] (the group coordinator),
//!   [`producer_ids`]; [`services`] holds one shard's services together.
//! - [`api`]: the request handlers, one module per API family.
//! - [`connection`]: per-connection read/dispatch/in-order write (TLS and SASL on it);
//!   [`server`]: starting shard threads, two-phase shutdown.

pub mod api;
pub mod cluster;
pub mod cluster_client;
pub mod config;
pub mod connection;
pub mod fetch_session;
pub mod groups;
pub mod listeners;
pub mod metadata;
pub mod node_identity;
pub mod partition_io;
pub mod producer_ids;
pub mod protocol;
pub mod replicas;
pub mod request_context;
pub mod server;
pub mod services;
pub mod shard;
pub mod transactions;

pub use config::{BrokerConfig, ConfigError};
pub use server::{Event, Server, ServerError};
