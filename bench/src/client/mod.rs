//! A small async Kafka client on the kafka-protocol crate: connections with pipelined
//! requests, version negotiation, metadata and the admin calls a benchmark needs.

pub mod cluster;
pub mod connection;

pub use cluster::{Cluster, PartitionInfo};
pub use connection::{ApiVersions, Connection};

use thiserror::Error;

/// Client-side failures.
#[derive(Debug, Error)]
pub enum ClientError {
    /// Socket error.
    #[error("io error talking to {addr}: {source}")]
    Io {
        /// Peer address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The TLS handshake failed (untrusted or mismatched certificate, not a TLS port, ...).
    #[error("TLS with {addr} failed: {source}")]
    Tls {
        /// Peer address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The broker refused the SASL authentication, or the exchange failed.
    #[error("authentication with {addr} failed: {message}")]
    Auth {
        /// Peer address.
        addr: String,
        /// Mechanism, user and the broker's reason.
        message: String,
    },
    /// The connection closed with the request outstanding.
    #[error("connection to {0} closed")]
    Closed(String),
    /// No response within the request timeout.
    #[error("request to {0} timed out")]
    Timeout(String),
    /// Encoding or decoding failed.
    #[error("protocol error with {addr}: {message}")]
    Protocol {
        /// Peer address.
        addr: String,
        /// What went wrong.
        message: String,
    },
    /// No version of an API both sides support.
    #[error("broker {addr} does not support {api} in versions {min}..={max}")]
    UnsupportedApi {
        /// Peer address.
        addr: String,
        /// The API.
        api: &'static str,
        /// Lowest version this client speaks.
        min: i16,
        /// Highest version this client speaks.
        max: i16,
    },
    /// The broker answered with a Kafka error code.
    #[error("{what}: kafka error code {code}")]
    Kafka {
        /// The operation.
        what: String,
        /// The Kafka error code.
        code: i16,
    },
}
