//! What a request handler knows about the connection its request came in on: the listener
//! (Metadata, FindCoordinator and DescribeCluster answer with that listener's endpoints), the
//! client's address, and whether records may leave with sendfile. The connection sets it
//! (`CONNECTION.scope`) around each request it hands to `broker::api`.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;

use super::config::BrokerConfig;

/// What a request handler may need to know about its connection.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The client's address (JoinGroup records it as the member's `client_host`).
    pub peer: SocketAddr,
    /// The listener the request arrived on.
    pub listener: String,
    /// Host and port Metadata advertises for this broker to this client.
    pub advertised: (String, i32),
    /// Whether fetched records may go out with sendfile (not through TLS).
    pub zero_copy: bool,
    /// The authenticated principal, as Kafka names it: `User:<name>` after SASL,
    /// `User:<subject DN>` for a TLS client certificate, else `User:ANONYMOUS`.
    pub principal: String,
    /// Until when the connection is muted by a quota (KIP-219): no request is read from it
    /// or started before then. Shared by every request of the connection.
    pub muted_until: Rc<Cell<Option<tokio::time::Instant>>>,
}

impl ConnectionInfo {
    /// The client's IP address as text (what an ACL's host is compared with).
    pub fn host(&self) -> String {
        self.peer.ip().to_string()
    }
}

tokio::task_local! {
    /// The connection whose request is being handled.
    pub static CONNECTION: Rc<ConnectionInfo>;
}

/// The endpoint to advertise for this broker: the one of the listener the current request
/// arrived on (Kafka answers with the endpoints of the request's listener), else the
/// inter-broker listener's.
pub fn advertised(cfg: &BrokerConfig) -> (String, i32) {
    CONNECTION
        .try_with(|c| c.advertised.clone())
        .unwrap_or_else(|_| (cfg.advertised_host.clone(), cfg.advertised_port))
}

/// The name of the listener the current request arrived on, else the inter-broker
/// listener's.
pub fn listener_name(cfg: &BrokerConfig) -> String {
    CONNECTION
        .try_with(|c| c.listener.clone())
        .unwrap_or_else(|_| {
            cfg.listeners
                .first()
                .map(|l| l.name.clone())
                .unwrap_or_default()
        })
}

/// The principal and client host of the current request (`User:ANONYMOUS` and no host
/// outside a connection).
pub fn principal_and_host() -> (String, String) {
    CONNECTION
        .try_with(|c| (c.principal.clone(), c.host()))
        .unwrap_or_else(|_| {
            (
                crate::security::principal::ANONYMOUS.to_string(),
                String::new(),
            )
        })
}

/// Whether the current request's connection may use sendfile for fetched records.
pub fn zero_copy_allowed() -> bool {
    CONNECTION.try_with(|c| c.zero_copy).unwrap_or(true)
}

/// Mutes the current request's connection for `ms` milliseconds from now (a quota
/// violation); a longer mute already in place stays.
pub fn mute_connection(ms: i32) {
    if ms <= 0 {
        return;
    }
    let until = tokio::time::Instant::now() + std::time::Duration::from_millis(ms as u64);
    let _ = CONNECTION.try_with(|c| {
        if c.muted_until.get().is_none_or(|t| t < until) {
            c.muted_until.set(Some(until));
        }
    });
}

/// Waits until `muted_until` has passed (returns at once when the connection is not muted).
pub async fn wait_unmuted(muted_until: &Cell<Option<tokio::time::Instant>>) {
    // A mute may be extended while we sleep: look again after each wait.
    while let Some(until) = muted_until.get() {
        if tokio::time::Instant::now() >= until {
            muted_until.set(None);
            return;
        }
        tokio::time::sleep_until(until).await;
    }
}
