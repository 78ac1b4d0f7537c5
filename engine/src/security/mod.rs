//! Connection security: TLS (rustls), SASL (PLAIN, SCRAM-SHA-256/512), principals, and the
//! SCRAM credential store. The cores (`scram`, `sasl`, `principal`) are sans-IO; `tls` loads
//! files and builds rustls configurations; the connection layer (`broker::connection`) drives
//! them.

pub mod credentials;
pub mod principal;
pub mod sasl;
pub mod scram;
pub mod tls;
