//! Connection security: TLS (rustls), SASL (PLAIN, SCRAM-SHA-256/512), principals, the
//! SCRAM credential store, and Kafka's ACL model and authorizer. The cores (`scram`, `sasl`,
//! `principal`, `acl`) are sans-IO; `tls` loads files and builds rustls configurations; the
//! connection layer (`broker::connection`) drives them (`acl` is evaluated by `broker::api::acls`, per request).

pub mod acl;
pub mod credentials;
pub mod principal;
pub mod quota;
pub mod sasl;
pub mod scram;
pub mod tls;
