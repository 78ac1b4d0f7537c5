//! A small blocking Kafka client on the kafka-protocol crate, enough for an admin CLI:
//! one connection per broker, ApiVersions negotiation, Metadata, leader and coordinator
//! routing, and request timeouts. Blocking keeps the CLI simple: it sends one request at a
//! time and a shell user waits for the answer anyway.

pub mod cluster;
pub mod connection;
pub mod ops;
pub mod records;

pub use cluster::{Cluster, TopicMeta};
pub use connection::Connection;
/// Client properties to TLS/SASL settings, shared with sluice-bench.
pub use sluice::security::client as security;

use kafka_protocol::error::ResponseError;

/// Client-side failures. `is_unreachable` separates "no broker answered" (exit code 3) from
/// errors the cluster returned (exit code 1).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Could not connect to a broker.
    #[error("cannot connect to broker {addr}")]
    Connect {
        /// Broker address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Socket error or connection closed with a request outstanding.
    #[error("connection to broker {addr} failed")]
    Io {
        /// Broker address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// No response within the request timeout.
    #[error("broker {addr} did not answer {api} within {timeout_ms} ms")]
    Timeout {
        /// Broker address.
        addr: String,
        /// The request.
        api: String,
        /// The timeout that expired.
        timeout_ms: u64,
    },
    /// Encoding or decoding failed.
    #[error("protocol error with broker {addr}: {message}")]
    Protocol {
        /// Broker address.
        addr: String,
        /// What went wrong.
        message: String,
    },
    /// No version of an API both sides support.
    #[error("broker {addr} does not support {api} (this tool speaks versions {min}..={max})")]
    Unsupported {
        /// Broker address.
        addr: String,
        /// The API.
        api: String,
        /// Lowest version this client speaks.
        min: i16,
        /// Highest version this client speaks.
        max: i16,
    },
    /// The cluster answered with a Kafka error code.
    #[error("{what}: {} ({code}){}", error_name(*code), message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Kafka {
        /// The operation and its subject (topic, group, ...).
        what: String,
        /// The Kafka error code.
        code: i16,
        /// The broker's error message, if it sent one.
        message: Option<String>,
    },
    /// Something the cluster's answers make impossible (no leader, unknown node, ...).
    #[error("{0}")]
    Cluster(String),
}

impl ClientError {
    /// True when no broker could be reached or none answered in time.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::Connect { .. } | ClientError::Io { .. } | ClientError::Timeout { .. }
        )
    }

    /// The Kafka error code, when the cluster returned one.
    pub fn kafka_code(&self) -> Option<i16> {
        match self {
            ClientError::Kafka { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Kafka's upper-case name of an error code (`UNKNOWN_TOPIC_OR_PARTITION`).
pub fn error_name(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        None => "NONE".to_string(),
        Some(ResponseError::Unknown(c)) => format!("UNKNOWN_ERROR_CODE_{c}"),
        Some(e) => {
            let camel = e.to_string();
            let mut out = String::with_capacity(camel.len() + 8);
            for (i, ch) in camel.chars().enumerate() {
                if ch.is_ascii_uppercase() && i > 0 {
                    out.push('_');
                }
                out.push(ch.to_ascii_uppercase());
            }
            out
        }
    }
}

/// `Ok(())` for error code 0, else a `ClientError::Kafka` describing `what`.
pub fn check(
    code: i16,
    what: impl FnOnce() -> String,
    message: Option<&str>,
) -> Result<(), ClientError> {
    if code == 0 {
        Ok(())
    } else {
        Err(ClientError::Kafka {
            what: what(),
            code,
            message: message.filter(|m| !m.is_empty()).map(str::to_owned),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_are_kafka_style() {
        assert_eq!(error_name(3), "UNKNOWN_TOPIC_OR_PARTITION");
        assert_eq!(error_name(36), "TOPIC_ALREADY_EXISTS");
        assert_eq!(error_name(0), "NONE");
        assert_eq!(error_name(-1), "UNKNOWN_SERVER_ERROR");
    }

    #[test]
    fn kafka_error_message_names_the_subject() {
        let e = check(3, || "topic 'x'".into(), Some("")).unwrap_err();
        assert_eq!(e.to_string(), "topic 'x': UNKNOWN_TOPIC_OR_PARTITION (3)");
        assert!(!e.is_unreachable());
        assert_eq!(e.kafka_code(), Some(3));
    }
}
