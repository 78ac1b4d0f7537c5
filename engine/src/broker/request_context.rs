//! What a request handler knows about the connection its request came in on: the listener
//! (Metadata, FindCoordinator and DescribeCluster answer with that listener's endpoints), the
//! client's address, and whether records may leave with sendfile. The connection sets it
//! (`CONNECTION.scope`) around each request it hands to `broker::api`.

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
