//! Connection security: TLS (rustls), SASL (PLAIN, SCRAM-SHA-256/512), principals, the
//! SCRAM credential store, and Kafka's ACL model and authorizer. The cores (`scram`, `sasl`,
//! `principal`, `acl`) are sans-IO; `tls` loads files and builds rustls configurations; the
//! connection layer (`broker::connection`) drives them (`acl` is evaluated by `broker::api::acls`, per request).
//! `client` is the other side, shared by sluicectl and sluice-bench: client properties to TLS
//! and SASL settings, and the client's SASL exchange.

pub mod acl;
pub mod client;
pub mod credentials;
pub mod principal;
pub mod quota;
pub mod sasl;
pub mod scram;
pub mod tls;
