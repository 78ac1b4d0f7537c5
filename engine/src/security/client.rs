//! How Sluice's clients (sluicectl, sluice-bench) reach a secured listener:
//! `security.protocol`, TLS trust and client certificates, and SASL credentials, read from
//! Kafka client properties (a `--command-config` file as Kafka's tools take, and `-X key=value`
//! as kcat takes); and the client side of a SASL exchange (`SaslExchange`, sans-IO: each
//! client's connection carries its tokens in SaslAuthenticate requests).
//!
//! Both spellings Kafka users have are accepted: librdkafka's (`ssl.ca.location`,
//! `ssl.certificate.location`, `ssl.key.location`, `sasl.mechanisms`, `sasl.username`,
//! `sasl.password`) and the Java client's (`ssl.truststore.location` / `ssl.keystore.location`
//! with type PEM, `sasl.mechanism`, `sasl.jaas.config`). Certificates are PEM files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::credentials::jaas_options;
use super::scram::{ScramClient, ScramError, ScramMechanism};
use super::tls::TlsError;

/// Kafka's `security.protocol` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// No TLS, no authentication.
    Plaintext,
    /// TLS.
    Ssl,
    /// SASL over plain TCP.
    SaslPlaintext,
    /// SASL over TLS.
    SaslSsl,
}

/// A SASL mechanism the clients speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    /// PLAIN (RFC 4616).
    Plain,
    /// SCRAM-SHA-256 or SCRAM-SHA-512.
    Scram(ScramMechanism),
}

impl SaslMechanism {
    /// The mechanism name as SaslHandshake carries it.
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::Scram(m) => m.name(),
        }
    }
}

/// SASL credentials.
#[derive(Clone)]
pub struct SaslAuth {
    /// Mechanism.
    pub mechanism: SaslMechanism,
    /// User name.
    pub username: String,
    /// Password (never printed).
    pub password: String,
}

impl std::fmt::Debug for SaslAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaslAuth")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// What every connection of one client run uses.
#[derive(Clone)]
pub struct Security {
    /// The protocol of the listener the bootstrap addresses point at.
    pub protocol: Protocol,
    /// TLS settings when the protocol uses TLS.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// SASL credentials when the protocol uses SASL.
    pub sasl: Option<SaslAuth>,
}

impl Default for Security {
    fn default() -> Self {
        Security {
            protocol: Protocol::Plaintext,
            tls: None,
            sasl: None,
        }
    }
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("protocol", &self.protocol)
            .field("tls", &self.tls.is_some())
            .field("sasl", &self.sasl)
            .finish()
    }
}

/// A property that cannot be used, with the reason.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct PropertyError {
    /// The property (or file) at fault.
    pub key: String,
    /// Why.
    pub reason: String,
}

fn bad(key: &str, reason: impl Into<String>) -> PropertyError {
    PropertyError {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// Reads a Java-style properties file: `key=value` lines (also `key: value`), `#` and `!`
/// comments, surrounding blanks trimmed. A value may contain `=`.
pub fn read_properties(path: &Path) -> Result<BTreeMap<String, String>, PropertyError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad(&path.display().to_string(), format!("cannot read: {e}")))?;
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        let Some(cut) = line.find(['=', ':']) else {
            return Err(bad(
                &format!("{} line {}", path.display(), n + 1),
                "expected key=value",
            ));
        };
        out.insert(
            line[..cut].trim().to_string(),
            line[cut + 1..].trim().to_string(),
        );
    }
    Ok(out)
}

/// Splits `-X key=value`.
pub fn parse_property(arg: &str) -> Result<(String, String), PropertyError> {
    match arg.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(bad(arg, "expected key=value")),
    }
}

/// Properties that only matter to other clients (or to a JVM) and are ignored here.
const IGNORED: &[&str] = &[
    "client.id",
    "ssl.truststore.password",
    "ssl.keystore.password",
    "ssl.key.password",
    "ssl.protocol",
    "ssl.enabled.protocols",
];

impl Security {
    /// The settings `props` describe. Unknown `ssl.*`/`sasl.*` keys are refused rather than
    /// silently ignored, so a misspelt setting does not fall back to something weaker.
    pub fn from_properties(props: &BTreeMap<String, String>) -> Result<Self, PropertyError> {
        let p = Props(props);
        let get = |k: &str| p.get(k);
        for k in props.keys() {
            let known = matches!(
                k.as_str(),
                "security.protocol"
                    | "ssl.ca.location"
                    | "ssl.truststore.location"
                    | "ssl.truststore.type"
                    | "ssl.certificate.location"
                    | "ssl.key.location"
                    | "ssl.keystore.location"
                    | "ssl.keystore.type"
                    | "ssl.endpoint.identification.algorithm"
                    | "sasl.mechanism"
                    | "sasl.mechanisms"
                    | "sasl.username"
                    | "sasl.password"
                    | "sasl.jaas.config"
            ) || IGNORED.contains(&k.as_str());
            if !known && (k.starts_with("ssl.") || k.starts_with("sasl.")) {
                return Err(bad(k, "not a client property Sluice's tools support"));
            }
        }
        let protocol = match get("security.protocol")
            .unwrap_or("PLAINTEXT")
            .to_ascii_uppercase()
            .as_str()
        {
            "PLAINTEXT" => Protocol::Plaintext,
            "SSL" => Protocol::Ssl,
            "SASL_PLAINTEXT" => Protocol::SaslPlaintext,
            "SASL_SSL" => Protocol::SaslSsl,
            other => {
                return Err(bad(
                    "security.protocol",
                    format!("{other:?}: expected PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"),
                ))
            }
        };
        let tls = match protocol {
            Protocol::Ssl | Protocol::SaslSsl => Some(Arc::new(tls_config(&p)?)),
            _ => None,
        };
        let sasl = match protocol {
            Protocol::SaslPlaintext | Protocol::SaslSsl => Some(sasl_auth(&p)?),
            _ => None,
        };
        Ok(Security {
            protocol,
            tls,
            sasl,
        })
    }

    /// The settings of a properties file (`--command-config`) with `key=value` overrides
    /// (`-X`, which win over the file).
    pub fn from_sources(
        command_config: Option<&Path>,
        overrides: &[String],
    ) -> Result<Self, PropertyError> {
        let mut props = match command_config {
            Some(path) => read_properties(path)?,
            None => BTreeMap::new(),
        };
        for p in overrides {
            let (k, v) = parse_property(p)?;
            props.insert(k, v);
        }
        Security::from_properties(&props)
    }

    /// The name TLS checks the broker's certificate against: the host of `addr` (`host:port`,
    /// `[v6]:port`).
    pub fn server_name(addr: &str) -> Result<rustls::pki_types::ServerName<'static>, String> {
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| format!("{host:?} is not a TLS server name: {e}"))
    }
}

/// The client side of one SASL authentication, sans IO: the caller sends SaslHandshake with
/// `mechanism()`, then each token in a SaslAuthenticate request and hands the server's reply
/// to `step` until it returns `None` (KIP-152).
pub struct SaslExchange {
    state: ExchangeState,
}

enum ExchangeState {
    /// PLAIN's one token, not yet sent.
    Plain(Vec<u8>),
    /// PLAIN: token sent, waiting for the (empty) reply.
    PlainSent,
    /// SCRAM: client-first not yet sent.
    ScramFirst(ScramClient),
    /// SCRAM: waiting for server-first.
    ScramServerFirst(ScramClient),
    /// SCRAM: waiting for server-final.
    ScramServerFinal(ScramClient),
    /// Nothing more to send.
    Done,
}

/// Why a SASL exchange failed on the client side (the server's own refusals come back as
/// SaslAuthenticate error codes).
#[derive(Debug, thiserror::Error)]
pub enum SaslClientError {
    /// The server's SCRAM message was malformed or did not prove it knows the password.
    #[error(transparent)]
    Scram(#[from] ScramError),
    /// The server answered a token after the exchange was complete (or before it started).
    #[error("SASL exchange out of step: the server sent a token when none was expected")]
    OutOfStep,
}

impl SaslExchange {
    /// An exchange for `auth` with a fresh random SCRAM nonce.
    pub fn new(auth: &SaslAuth) -> Self {
        use rand::Rng;
        let nonce: String = rand::thread_rng()
            .sample_iter(&rand::distributions::Alphanumeric)
            .take(24)
            .map(char::from)
            .collect();
        Self::with_nonce(auth, nonce)
    }

    /// An exchange for `auth` with the given SCRAM client nonce (printable, fresh).
    pub fn with_nonce(auth: &SaslAuth, nonce: String) -> Self {
        let state = match auth.mechanism {
            SaslMechanism::Plain => {
                ExchangeState::Plain(format!("\0{}\0{}", auth.username, auth.password).into_bytes())
            }
            SaslMechanism::Scram(m) => ExchangeState::ScramFirst(ScramClient::new(
                m,
                &auth.username,
                &auth.password,
                nonce,
            )),
        };
        SaslExchange { state }
    }

    /// The first token to send in SaslAuthenticate (after SaslHandshake succeeded).
    pub fn first_token(&mut self) -> Result<Vec<u8>, SaslClientError> {
        match std::mem::replace(&mut self.state, ExchangeState::Done) {
            ExchangeState::Plain(token) => {
                self.state = ExchangeState::PlainSent;
                Ok(token)
            }
            ExchangeState::ScramFirst(mut c) => {
                let token = c.client_first();
                self.state = ExchangeState::ScramServerFirst(c);
                Ok(token)
            }
            _ => Err(SaslClientError::OutOfStep),
        }
    }

    /// The server's reply to the last token: the next token to send, or `None` when the
    /// exchange is complete (for SCRAM, once the server proved it knows the password).
    pub fn step(&mut self, server: &[u8]) -> Result<Option<Vec<u8>>, SaslClientError> {
        match std::mem::replace(&mut self.state, ExchangeState::Done) {
            ExchangeState::ScramServerFirst(mut c) => {
                let token = c.server_first(server)?;
                self.state = ExchangeState::ScramServerFinal(c);
                Ok(Some(token))
            }
            ExchangeState::ScramServerFinal(mut c) => {
                c.server_final(server)?;
                Ok(None)
            }
            // PLAIN's reply is empty; the error code says whether it was accepted.
            ExchangeState::PlainSent => Ok(None),
            ExchangeState::Plain(_) | ExchangeState::ScramFirst(_) | ExchangeState::Done => {
                Err(SaslClientError::OutOfStep)
            }
        }
    }
}

/// Property lookup; an empty value counts as unset.
struct Props<'a>(&'a BTreeMap<String, String>);

impl<'a> Props<'a> {
    fn get(&self, key: &str) -> Option<&'a str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

fn pem_type(p: &Props<'_>, key: &str) -> Result<(), PropertyError> {
    match p.get(key) {
        None => Ok(()),
        Some(t) if t.eq_ignore_ascii_case("PEM") => Ok(()),
        Some(t) => Err(bad(key, format!("{t:?}: only PEM files are supported"))),
    }
}

fn tls_config(p: &Props<'_>) -> Result<rustls::ClientConfig, PropertyError> {
    let get = |k: &str| p.get(k);
    pem_type(p, "ssl.truststore.type")?;
    pem_type(p, "ssl.keystore.type")?;
    match get("ssl.endpoint.identification.algorithm") {
        None => {}
        Some(a) if a.eq_ignore_ascii_case("https") => {}
        Some(a) => {
            return Err(bad(
                "ssl.endpoint.identification.algorithm",
                format!("{a:?}: the broker's host name is always checked (https)"),
            ))
        }
    }
    let (trust_key, truststore) = match (get("ssl.ca.location"), get("ssl.truststore.location")) {
        (Some(ca), _) => ("ssl.ca.location", PathBuf::from(ca)),
        (None, Some(ts)) => ("ssl.truststore.location", PathBuf::from(ts)),
        (None, None) => {
            return Err(bad(
                "ssl.ca.location",
                "a TLS listener needs the CA certificates to trust (PEM)",
            ))
        }
    };
    let identity = match (
        get("ssl.certificate.location"),
        get("ssl.key.location"),
        get("ssl.keystore.location"),
    ) {
        (Some(cert), Some(key), _) => Some((PathBuf::from(cert), PathBuf::from(key))),
        (Some(_), None, _) | (None, Some(_), _) => {
            return Err(bad(
                "ssl.certificate.location",
                "a client certificate needs both ssl.certificate.location and ssl.key.location",
            ))
        }
        // A PEM keystore holds the key and the chain in one file.
        (None, None, Some(ks)) => Some((PathBuf::from(ks), PathBuf::from(ks))),
        (None, None, None) => None,
    };
    super::tls::client_config(
        &truststore,
        identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
    )
    .map_err(|e| {
        // Name the property whose file is at fault.
        let key = match &e {
            TlsError::Io { path, .. } | TlsError::Invalid { path, .. } if *path != truststore => {
                if get("ssl.keystore.location").is_some_and(|k| Path::new(k) == path) {
                    "ssl.keystore.location"
                } else if get("ssl.key.location").is_some_and(|k| Path::new(k) == path) {
                    "ssl.key.location"
                } else {
                    "ssl.certificate.location"
                }
            }
            _ => trust_key,
        };
        bad(key, e.to_string())
    })
}

fn sasl_auth(p: &Props<'_>) -> Result<SaslAuth, PropertyError> {
    let get = |k: &str| p.get(k);
    let (mech_key, name) = match (get("sasl.mechanism"), get("sasl.mechanisms")) {
        (Some(m), _) => ("sasl.mechanism", m),
        (None, Some(m)) => ("sasl.mechanisms", m),
        // Kafka's default mechanism.
        (None, None) => ("sasl.mechanism", "GSSAPI"),
    };
    let mechanism = match name {
        "PLAIN" => SaslMechanism::Plain,
        other => match ScramMechanism::from_name(other) {
            Some(m) => SaslMechanism::Scram(m),
            None => {
                return Err(bad(
                    mech_key,
                    format!("{other:?}: supported are PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512"),
                ))
            }
        },
    };
    let (username, password) = match (
        get("sasl.username"),
        get("sasl.password"),
        get("sasl.jaas.config"),
    ) {
        (Some(u), Some(p), _) => (u.to_string(), p.to_string()),
        (None, None, Some(jaas)) => {
            let (_, options) =
                jaas_options(jaas).map_err(|e| bad("sasl.jaas.config", e.to_string()))?;
            match (options.get("username"), options.get("password")) {
                (Some(u), Some(p)) => (u.clone(), p.clone()),
                _ => {
                    return Err(bad(
                        "sasl.jaas.config",
                        "the login module needs username=\"...\" and password=\"...\"",
                    ))
                }
            }
        }
        _ => {
            return Err(bad(
                "sasl.username",
                "SASL needs sasl.username and sasl.password (or sasl.jaas.config)",
            ))
        }
    };
    Ok(SaslAuth {
        mechanism,
        username,
        password,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn plaintext_by_default_and_sasl_from_either_spelling() {
        let s = Security::from_properties(&BTreeMap::new()).unwrap();
        assert_eq!(s.protocol, Protocol::Plaintext);
        assert!(s.tls.is_none() && s.sasl.is_none());

        let s = Security::from_properties(&props(&[
            ("security.protocol", "sasl_plaintext"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", "bob"),
            ("sasl.password", "pw"),
        ]))
        .unwrap();
        let a = s.sasl.unwrap();
        assert_eq!(a.mechanism, SaslMechanism::Scram(ScramMechanism::Sha512));
        assert_eq!((a.username.as_str(), a.password.as_str()), ("bob", "pw"));

        let s = Security::from_properties(&props(&[
            ("security.protocol", "SASL_PLAINTEXT"),
            ("sasl.mechanism", "PLAIN"),
            (
                "sasl.jaas.config",
                "org.apache.kafka.common.security.plain.PlainLoginModule required username=\"al\" password=\"x=y\";",
            ),
        ]))
        .unwrap();
        let a = s.sasl.unwrap();
        assert_eq!(
            (a.mechanism, a.password.as_str()),
            (SaslMechanism::Plain, "x=y")
        );
        assert!(
            !format!("{a:?}").contains("x=y"),
            "the password is never printed"
        );
    }

    #[test]
    fn refusals_name_the_property() {
        let err = |p: &[(&str, &str)]| Security::from_properties(&props(p)).unwrap_err().key;
        assert_eq!(err(&[("security.protocol", "TLS")]), "security.protocol");
        assert_eq!(err(&[("sasl.mechanizm", "PLAIN")]), "sasl.mechanizm");
        assert_eq!(err(&[("security.protocol", "SSL")]), "ssl.ca.location");
        assert_eq!(
            err(&[
                ("security.protocol", "SASL_PLAINTEXT"),
                ("sasl.mechanism", "PLAIN"),
                ("sasl.username", "a"),
            ]),
            "sasl.username"
        );
        // Kafka's default mechanism is GSSAPI, which sluicectl does not speak.
        assert_eq!(
            err(&[("security.protocol", "SASL_PLAINTEXT")]),
            "sasl.mechanism"
        );
        assert_eq!(
            err(&[
                ("security.protocol", "SASL_PLAINTEXT"),
                ("sasl.mechanism", "GSSAPI"),
                ("sasl.username", "a"),
                ("sasl.password", "b"),
            ]),
            "sasl.mechanism"
        );
        assert_eq!(
            err(&[
                ("security.protocol", "SSL"),
                ("ssl.ca.location", "/nonexistent/ca.pem"),
            ]),
            "ssl.ca.location"
        );
        assert_eq!(
            err(&[
                ("security.protocol", "SSL"),
                ("ssl.truststore.type", "JKS"),
                ("ssl.truststore.location", "x.jks"),
            ]),
            "ssl.truststore.type"
        );
    }

    fn auth(mechanism: SaslMechanism, password: &str) -> SaslAuth {
        SaslAuth {
            mechanism,
            username: "alice".into(),
            password: password.into(),
        }
    }

    #[test]
    fn scram_exchange_against_the_server_core() {
        use crate::security::scram::{ScramCredential, ScramServer};
        let mech = ScramMechanism::Sha256;
        let stored = ScramCredential::new(mech, "right", b"salt-salt", 4096);
        for (password, ok) in [("right", true), ("wrong", false)] {
            let mut client = SaslExchange::with_nonce(
                &auth(SaslMechanism::Scram(mech), password),
                "cn0nce".into(),
            );
            let mut server = ScramServer::new(mech, "sn0nce".into());
            let first = client.first_token().unwrap();
            let server_first = server
                .client_first(&first, |u| (u == "alice").then(|| stored.clone()), b"decoy")
                .unwrap();
            let last = client.step(&server_first).unwrap().expect("client-final");
            match server.client_final(&last) {
                Ok(done) => {
                    assert!(ok, "a wrong password was accepted");
                    assert_eq!(client.step(&done.server_final).unwrap(), None);
                    assert!(matches!(client.step(b""), Err(SaslClientError::OutOfStep)));
                }
                Err(_) => assert!(!ok, "the right password was refused"),
            }
        }
    }

    #[test]
    fn plain_exchange_is_one_token() {
        let mut client = SaslExchange::new(&auth(SaslMechanism::Plain, "pw"));
        assert!(matches!(client.step(b""), Err(SaslClientError::OutOfStep)));
        let mut client = SaslExchange::new(&auth(SaslMechanism::Plain, "pw"));
        assert_eq!(client.first_token().unwrap(), b"\0alice\0pw");
        assert_eq!(client.step(b"").unwrap(), None);
    }

    #[test]
    fn server_names() {
        assert!(Security::server_name("localhost:9093").is_ok());
        assert!(Security::server_name("127.0.0.1:9093").is_ok());
        assert!(Security::server_name("[::1]:9093").is_ok());
        assert!(Security::server_name("bad host:1").is_err());
    }

    #[test]
    fn properties_files_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("client.properties");
        std::fs::write(
            &f,
            "# comment\n! also\nsecurity.protocol = SASL_SSL\nsasl.jaas.config=Mod required username=\"a\" password=\"b=c\";\nsasl.mechanism: PLAIN\n",
        )
        .unwrap();
        let p = read_properties(&f).unwrap();
        assert_eq!(p["security.protocol"], "SASL_SSL");
        assert_eq!(p["sasl.mechanism"], "PLAIN");
        assert!(p["sasl.jaas.config"].ends_with("password=\"b=c\";"));
        std::fs::write(&f, "no separator here\n").unwrap();
        assert!(read_properties(&f).unwrap_err().key.ends_with("line 1"));
        assert_eq!(
            parse_property("sasl.password=a=b").unwrap(),
            ("sasl.password".into(), "a=b".into())
        );
        assert!(parse_property("=x").is_err());
    }
}
