//! Named Kafka listeners: `listeners`, `advertised.listeners`, `listener.security.protocol.map`,
//! `inter.broker.listener.name`, and each listener's TLS and SASL settings (the
//! `listener.name.<name>.` prefixed key first, then the plain key, as Kafka looks them up).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use super::config::ConfigError;
use crate::security::sasl::Mechanism;
use crate::security::tls::{ClientAuth, TlsSettings};

/// A listener's security protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityProtocol {
    /// No TLS, no authentication.
    Plaintext,
    /// TLS; the principal comes from the client certificate (if any).
    Ssl,
    /// SASL over plain TCP.
    SaslPlaintext,
    /// SASL over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    fn parse(s: &str) -> Option<Self> {
        Some(match s.trim().to_ascii_uppercase().as_str() {
            "PLAINTEXT" => SecurityProtocol::Plaintext,
            "SSL" => SecurityProtocol::Ssl,
            "SASL_PLAINTEXT" => SecurityProtocol::SaslPlaintext,
            "SASL_SSL" => SecurityProtocol::SaslSsl,
            _ => return None,
        })
    }

    /// Kafka's name.
    pub fn name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }

    /// The listener speaks TLS.
    pub fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    /// The listener requires SASL.
    pub fn sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

/// The SASL settings of a listener, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslListenerConfig {
    /// `sasl.enabled.mechanisms`.
    pub mechanisms: Vec<Mechanism>,
    /// PLAIN users from the JAAS config.
    pub plain_users: BTreeMap<String, String>,
    /// `connections.max.reauth.ms`.
    pub max_reauth_ms: i64,
}

/// One configured listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// The listener name (upper case, as Kafka compares them).
    pub name: String,
    /// Its security protocol.
    pub protocol: SecurityProtocol,
    /// The address it binds.
    pub bind: SocketAddr,
    /// The host clients are told to connect to.
    pub advertised_host: String,
    /// The advertised port (0: the bound port, known once bound).
    pub advertised_port: i32,
    /// TLS settings (SSL and SASL_SSL).
    pub tls: Option<TlsSettings>,
    /// SASL settings (SASL_PLAINTEXT and SASL_SSL).
    pub sasl: Option<SaslListenerConfig>,
}

/// The default `listener.security.protocol.map`.
pub const DEFAULT_PROTOCOL_MAP: &str =
    "PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL";

fn invalid(key: &str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::InvalidValue {
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Parses `NAME://host:port` (a bare `host:port` is a PLAINTEXT listener).
fn parse_endpoint(
    key: &str,
    whole: &str,
    item: &str,
) -> Result<(String, String, u16), ConfigError> {
    let item = item.trim();
    let (name, addr) = match item.split_once("://") {
        Some((n, rest)) => (n.trim().to_ascii_uppercase(), rest),
        None => ("PLAINTEXT".to_string(), item),
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(invalid(key, whole, format!("bad listener name {name:?}")));
    }
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| invalid(key, whole, "expected NAME://host:port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| invalid(key, whole, "port is not a number in 0..65535"))?;
    let host = host.trim_matches(['[', ']']).to_string();
    Ok((name, host, port))
}

fn split_list(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// Looks a key up for a listener: `listener.name.<name>.<key>` first, then `<key>`.
pub fn listener_value<'a>(raw: &'a BTreeMap<String, String>, listener: &str, key: &str) -> &'a str {
    let prefixed = format!("listener.name.{}.{key}", listener.to_ascii_lowercase());
    raw.get(&prefixed)
        .or_else(|| raw.get(key))
        .map(String::as_str)
        .unwrap_or("")
}

/// `listener.security.protocol.map`, names upper case.
fn protocol_map(
    raw: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, SecurityProtocol>, ConfigError> {
    let map_text = raw
        .get("listener.security.protocol.map")
        .map(String::as_str)
        .unwrap_or("");
    let mut map: BTreeMap<String, SecurityProtocol> = BTreeMap::new();
    for item in split_list(map_text) {
        let (name, proto) = item.split_once(':').ok_or_else(|| {
            invalid(
                "listener.security.protocol.map",
                map_text,
                "expected NAME:PROTOCOL,...",
            )
        })?;
        let proto = SecurityProtocol::parse(proto).ok_or_else(|| {
            invalid(
                "listener.security.protocol.map",
                map_text,
                format!("unknown security protocol {proto:?} (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL)"),
            )
        })?;
        map.insert(name.trim().to_ascii_uppercase(), proto);
    }
    Ok(map)
}

/// The names of `controller.listener.names`, upper case.
fn controller_listener_names(raw: &BTreeMap<String, String>) -> Vec<String> {
    split_list(
        raw.get("controller.listener.names")
            .map_or("", String::as_str),
    )
    .map(str::to_ascii_uppercase)
    .collect()
}

/// The TLS settings of the controller channel (the Raft traffic between voters and the
/// brokers' calls to them), from the first of `controller.listener.names` as Kafka names the
/// controller listener: `None` when it is PLAINTEXT (or not named). SSL is mutual TLS: every
/// node presents its keystore's certificate and trusts the truststore's CAs for the others'.
/// SASL is not offered on this channel.
pub fn controller_channel_tls(
    raw: &BTreeMap<String, String>,
) -> Result<Option<TlsSettings>, ConfigError> {
    let Some(name) = controller_listener_names(raw).into_iter().next() else {
        return Ok(None);
    };
    let protocol = protocol_map(raw)?.get(&name).copied().unwrap_or(
        // Kafka's rule for a name missing from the map: the name itself, else PLAINTEXT.
        SecurityProtocol::parse(&name).unwrap_or(SecurityProtocol::Plaintext),
    );
    match protocol {
        SecurityProtocol::Plaintext => Ok(None),
        SecurityProtocol::Ssl => {
            let settings = tls_settings(raw, &name)?;
            if settings.truststore.is_none() {
                return Err(invalid(
                    &format!(
                        "listener.name.{}.ssl.truststore.location",
                        name.to_ascii_lowercase()
                    ),
                    "",
                    "the SSL controller channel needs the CAs of the other nodes' certificates",
                ));
            }
            Ok(Some(settings))
        }
        other => Err(invalid(
            "controller.listener.names",
            &name,
            format!(
                "the controller channel speaks PLAINTEXT or SSL (mutual TLS), not {}",
                other.name()
            ),
        )),
    }
}

/// Resolves every listener. The first one of `listeners` is the default inter-broker one.
/// Listeners named in `controller.listener.names` are not Kafka listeners (the controller
/// binds its voter address from `controller.quorum.voters`), so a Kafka `server.properties`
/// that lists `CONTROLLER://...` among its listeners keeps working.
pub fn parse_listeners(raw: &BTreeMap<String, String>) -> Result<Vec<ListenerConfig>, ConfigError> {
    let get = |k: &str| raw.get(k).map(String::as_str).unwrap_or("");
    let map = protocol_map(raw)?;
    let controller_names = controller_listener_names(raw);
    let listeners_text = get("listeners");
    let mut out: Vec<ListenerConfig> = Vec::new();
    for item in split_list(listeners_text) {
        let (name, host, port) = parse_endpoint("listeners", listeners_text, item)?;
        if controller_names.contains(&name) {
            continue;
        }
        let protocol = *map.get(&name).ok_or_else(|| {
            invalid(
                "listeners",
                listeners_text,
                format!("listener {name} has no entry in listener.security.protocol.map"),
            )
        })?;
        if out.iter().any(|l| l.name == name) {
            return Err(invalid(
                "listeners",
                listeners_text,
                format!("listener {name} named twice"),
            ));
        }
        let ip = if host.is_empty() {
            "0.0.0.0".to_string()
        } else {
            host.clone()
        };
        let bind: SocketAddr = format!(
            "{}:{port}",
            if ip.contains(':') {
                format!("[{ip}]")
            } else {
                ip
            }
        )
        .parse()
        .map_err(|_| invalid("listeners", listeners_text, "host must be an IP address"))?;
        if out.iter().any(|l| l.bind == bind && port != 0) {
            return Err(invalid(
                "listeners",
                listeners_text,
                format!("two listeners bind {bind}"),
            ));
        }
        let tls = if protocol.tls() {
            Some(tls_settings(raw, &name)?)
        } else {
            None
        };
        let sasl = if protocol.sasl() {
            Some(sasl_settings(raw, &name)?)
        } else {
            None
        };
        out.push(ListenerConfig {
            name,
            protocol,
            bind,
            advertised_host: host,
            advertised_port: i32::from(port),
            tls,
            sasl,
        });
    }
    if out.is_empty() {
        return Err(invalid("listeners", listeners_text, "no listener"));
    }
    let adv_text = get("advertised.listeners");
    for item in split_list(adv_text) {
        let (name, host, port) = parse_endpoint("advertised.listeners", adv_text, item)?;
        let l = out.iter_mut().find(|l| l.name == name).ok_or_else(|| {
            invalid(
                "advertised.listeners",
                adv_text,
                format!("{name} is not one of the listeners"),
            )
        })?;
        if host.is_empty() {
            return Err(invalid("advertised.listeners", adv_text, "host is empty"));
        }
        l.advertised_host = host;
        l.advertised_port = i32::from(port);
    }
    for l in &mut out {
        if matches!(l.advertised_host.as_str(), "" | "0.0.0.0" | "::") {
            // As Kafka does for a wildcard bind with nothing advertised: the host name.
            l.advertised_host = nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "127.0.0.1".to_string());
        }
    }
    let inter = get("inter.broker.listener.name")
        .trim()
        .to_ascii_uppercase();
    if !inter.is_empty() {
        let i = out.iter().position(|l| l.name == inter).ok_or_else(|| {
            invalid(
                "inter.broker.listener.name",
                &inter,
                "not one of the listeners",
            )
        })?;
        // The inter-broker listener goes first: it is the one registered with the controller.
        let l = out.remove(i);
        out.insert(0, l);
    }
    Ok(out)
}

fn tls_settings(raw: &BTreeMap<String, String>, name: &str) -> Result<TlsSettings, ConfigError> {
    let v = |k: &str| listener_value(raw, name, k).trim().to_string();
    let prefixed = |k: &str| format!("listener.name.{}.{k}", name.to_ascii_lowercase());
    for k in ["ssl.keystore.type", "ssl.truststore.type"] {
        let t = v(k);
        if !t.is_empty() && !t.eq_ignore_ascii_case("PEM") {
            return Err(invalid(
                k,
                &t,
                "only PEM is supported (convert a JKS/PKCS12 store with keytool/openssl)",
            ));
        }
    }
    let keystore = v("ssl.keystore.location");
    if keystore.is_empty() {
        return Err(invalid(
            &prefixed("ssl.keystore.location"),
            "",
            format!(
                "listener {name} uses TLS and needs a PEM keystore (key and certificate chain)"
            ),
        ));
    }
    let truststore = v("ssl.truststore.location");
    let client_auth = match v("ssl.client.auth").to_ascii_lowercase().as_str() {
        "" | "none" => ClientAuth::None,
        "requested" => ClientAuth::Requested,
        "required" => ClientAuth::Required,
        other => {
            return Err(invalid(
                "ssl.client.auth",
                other,
                "expected none, requested or required",
            ))
        }
    };
    if client_auth != ClientAuth::None && truststore.is_empty() {
        return Err(invalid(
            "ssl.truststore.location",
            "",
            "ssl.client.auth needs the CA certificates of the clients",
        ));
    }
    let rules = v("ssl.principal.mapping.rules");
    if !rules.is_empty() && rules != "DEFAULT" {
        return Err(invalid(
            "ssl.principal.mapping.rules",
            &rules,
            "only DEFAULT is supported (the principal is the certificate's full subject DN)",
        ));
    }
    let protocols = v("ssl.enabled.protocols");
    let (mut tls12, mut tls13) = (false, false);
    for p in split_list(&protocols) {
        match p {
            "TLSv1.2" => tls12 = true,
            "TLSv1.3" => tls13 = true,
            other => {
                return Err(invalid(
                    "ssl.enabled.protocols",
                    &protocols,
                    format!("{other} is not supported (TLSv1.2, TLSv1.3)"),
                ))
            }
        }
    }
    if !tls12 && !tls13 {
        return Err(invalid(
            "ssl.enabled.protocols",
            &protocols,
            "no protocol enabled",
        ));
    }
    Ok(TlsSettings {
        keystore: PathBuf::from(keystore),
        key_password_set: !v("ssl.key.password").is_empty(),
        truststore: (!truststore.is_empty()).then(|| PathBuf::from(truststore)),
        client_auth,
        tls12,
        tls13,
    })
}

fn sasl_settings(
    raw: &BTreeMap<String, String>,
    name: &str,
) -> Result<SaslListenerConfig, ConfigError> {
    let text = listener_value(raw, name, "sasl.enabled.mechanisms").to_string();
    let mut mechanisms = Vec::new();
    for m in split_list(&text) {
        let mech = Mechanism::from_name(m).ok_or_else(|| {
            invalid(
                "sasl.enabled.mechanisms",
                &text,
                format!("{m} is not supported (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)"),
            )
        })?;
        if !mechanisms.contains(&mech) {
            mechanisms.push(mech);
        }
    }
    if mechanisms.is_empty() {
        return Err(invalid(
            "sasl.enabled.mechanisms",
            &text,
            "no mechanism enabled",
        ));
    }
    let mut plain_users = BTreeMap::new();
    if mechanisms.contains(&Mechanism::Plain) {
        let jaas_key = format!(
            "listener.name.{}.plain.sasl.jaas.config",
            name.to_ascii_lowercase()
        );
        let jaas = raw
            .get(&jaas_key)
            .map(String::as_str)
            .unwrap_or_else(|| listener_value(raw, name, "sasl.jaas.config"));
        if jaas.trim().is_empty() {
            return Err(invalid(
                &jaas_key,
                "",
                "PLAIN is enabled but no PlainLoginModule JAAS config names its users",
            ));
        }
        plain_users = crate::security::credentials::plain_users_from_jaas(jaas)
            .map_err(|e| invalid(&jaas_key, "<redacted>", e.to_string()))?;
    }
    let reauth_text = listener_value(raw, name, "connections.max.reauth.ms");
    let max_reauth_ms: i64 = super::config::parse_int("connections.max.reauth.ms", reauth_text)?;
    if max_reauth_ms < 0 {
        return Err(invalid(
            "connections.max.reauth.ms",
            reauth_text,
            "must be >= 0",
        ));
    }
    Ok(SaslListenerConfig {
        mechanisms,
        plain_users,
        max_reauth_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut m: BTreeMap<String, String> = [
            ("listener.security.protocol.map", DEFAULT_PROTOCOL_MAP),
            ("sasl.enabled.mechanisms", "SCRAM-SHA-256,SCRAM-SHA-512"),
            ("ssl.enabled.protocols", "TLSv1.2,TLSv1.3"),
            ("connections.max.reauth.ms", "0"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in pairs {
            m.insert(k.to_string(), v.to_string());
        }
        m
    }

    #[test]
    fn several_named_listeners() {
        let r = raw(&[
            (
                "listeners",
                "PLAINTEXT://127.0.0.1:9092,SASL_SSL://0.0.0.0:9095,INTERNAL://127.0.0.1:9096",
            ),
            (
                "listener.security.protocol.map",
                "PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,INTERNAL:SSL",
            ),
            (
                "advertised.listeners",
                "SASL_SSL://broker.example.com:19095",
            ),
            ("ssl.keystore.location", "/k.pem"),
            (
                "listener.name.internal.ssl.keystore.location",
                "/internal.pem",
            ),
            ("listener.name.internal.ssl.client.auth", "required"),
            ("listener.name.internal.ssl.truststore.location", "/ca.pem"),
            ("inter.broker.listener.name", "INTERNAL"),
        ]);
        let ls = parse_listeners(&r).unwrap();
        let names: Vec<&str> = ls.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["INTERNAL", "PLAINTEXT", "SASL_SSL"]);
        assert_eq!(ls[0].protocol, SecurityProtocol::Ssl);
        let t = ls[0].tls.as_ref().unwrap();
        assert_eq!(t.keystore, PathBuf::from("/internal.pem"));
        assert_eq!(t.client_auth, ClientAuth::Required);
        assert_eq!(ls[2].advertised_host, "broker.example.com");
        assert_eq!(ls[2].advertised_port, 19095);
        assert_eq!(
            ls[2].tls.as_ref().unwrap().keystore,
            PathBuf::from("/k.pem")
        );
        assert!(ls[2].sasl.is_some());
        assert!(ls[1].tls.is_none() && ls[1].sasl.is_none());
    }

    #[test]
    fn bad_listener_settings_name_the_key() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("listeners", "FOO://127.0.0.1:1")],
                "listener.security.protocol.map",
            ),
            (
                &[("listeners", "SSL://127.0.0.1:1")],
                "ssl.keystore.location",
            ),
            (
                &[
                    ("listeners", "SSL://127.0.0.1:1"),
                    ("ssl.keystore.location", "/k"),
                    ("ssl.keystore.type", "JKS"),
                ],
                "ssl.keystore.type",
            ),
            (
                &[
                    ("listeners", "SSL://127.0.0.1:1"),
                    ("ssl.keystore.location", "/k"),
                    ("ssl.client.auth", "required"),
                ],
                "ssl.truststore.location",
            ),
            (
                &[
                    ("listeners", "SASL_PLAINTEXT://127.0.0.1:1"),
                    ("sasl.enabled.mechanisms", "GSSAPI"),
                ],
                "sasl.enabled.mechanisms",
            ),
            (
                &[
                    ("listeners", "SASL_PLAINTEXT://127.0.0.1:1"),
                    ("sasl.enabled.mechanisms", "PLAIN"),
                ],
                "plain.sasl.jaas.config",
            ),
            (
                &[
                    ("listeners", "PLAINTEXT://127.0.0.1:1"),
                    ("advertised.listeners", "X://h:1"),
                ],
                "advertised.listeners",
            ),
            (
                &[
                    ("listeners", "PLAINTEXT://127.0.0.1:1"),
                    ("inter.broker.listener.name", "X"),
                ],
                "inter.broker.listener.name",
            ),
        ];
        for (pairs, key) in cases {
            let e = parse_listeners(&raw(pairs)).unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn the_controller_listener_is_the_controller_channel_not_a_kafka_listener() {
        // Kafka's combined-mode server.properties lists CONTROLLER among the listeners.
        let base = [
            (
                "listeners",
                "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093",
            ),
            (
                "listener.security.protocol.map",
                "PLAINTEXT:PLAINTEXT,CONTROLLER:SSL",
            ),
            ("controller.listener.names", "CONTROLLER"),
            (
                "listener.name.controller.ssl.keystore.location",
                "/node.pem",
            ),
        ];
        let ls = parse_listeners(&raw(&base)).unwrap();
        let names: Vec<&str> = ls.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["PLAINTEXT"]);
        // SSL without the CAs of the other nodes is refused, naming the key.
        let e = controller_channel_tls(&raw(&base)).unwrap_err().to_string();
        assert!(e.contains("ssl.truststore.location"), "{e}");
        let mut with_trust = base.to_vec();
        with_trust.push(("ssl.truststore.location", "/ca.pem"));
        let t = controller_channel_tls(&raw(&with_trust)).unwrap().unwrap();
        assert_eq!(t.keystore, PathBuf::from("/node.pem"));
        assert_eq!(t.truststore, Some(PathBuf::from("/ca.pem")));
        // PLAINTEXT (or no controller listener at all): plain TCP.
        let plain = raw(&[
            ("listeners", "PLAINTEXT://127.0.0.1:9092"),
            (
                "listener.security.protocol.map",
                "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            ),
            ("controller.listener.names", "CONTROLLER"),
        ]);
        assert_eq!(controller_channel_tls(&plain).unwrap(), None);
        assert_eq!(controller_channel_tls(&raw(&[])).unwrap(), None);
        // SASL is not offered on the controller channel.
        let sasl = raw(&[
            ("listener.security.protocol.map", "CONTROLLER:SASL_SSL"),
            ("controller.listener.names", "CONTROLLER"),
        ]);
        let e = controller_channel_tls(&sasl).unwrap_err().to_string();
        assert!(e.contains("controller.listener.names"), "{e}");
    }

    #[test]
    fn plain_users_come_from_the_listener_jaas() {
        let r = raw(&[
            ("listeners", "SASL_PLAINTEXT://127.0.0.1:0"),
            ("sasl.enabled.mechanisms", "PLAIN,SCRAM-SHA-256"),
            (
                "listener.name.sasl_plaintext.plain.sasl.jaas.config",
                r#"org.apache.kafka.common.security.plain.PlainLoginModule required user_a="pa";"#,
            ),
        ]);
        let ls = parse_listeners(&r).unwrap();
        let s = ls[0].sasl.as_ref().unwrap();
        assert_eq!(s.plain_users["a"], "pa");
        assert_eq!(s.mechanisms.len(), 2);
    }
}

#[cfg(test)]
mod example_tests {
    #[test]
    fn secure_example_config_resolves() {
        let text = include_str!("../../../scripts/deploy/secure.toml");
        let (c, warnings) =
            super::super::config::BrokerConfig::resolve(Some(text), Vec::new(), &[]).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let names: Vec<&str> = c.listeners.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["PLAINTEXT", "SASL_SSL", "SERVICES"]);
        let services = &c.listeners[2];
        assert_eq!(
            services.tls.as_ref().map(|t| t.client_auth),
            Some(crate::security::tls::ClientAuth::Required)
        );
        assert_eq!(
            c.listeners[1].sasl.as_ref().map(|s| s.max_reauth_ms),
            Some(3_600_000)
        );
        assert_eq!(c.listeners[1].advertised_host, "broker1.example.com");
    }

    #[test]
    fn secure_cluster_example_resolves() {
        let text = include_str!("../../../scripts/deploy/secure-cluster.toml");
        let (c, warnings) =
            super::super::config::BrokerConfig::resolve(Some(text), Vec::new(), &[]).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let names: Vec<&str> = c.listeners.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["INTERNAL", "PLAINTEXT", "SASL_SSL"]);
        assert_eq!(
            c.listeners[0].tls.as_ref().map(|t| t.client_auth),
            Some(crate::security::tls::ClientAuth::Required)
        );
        let controller = c.controller_tls.expect("the controller channel is SSL");
        assert!(controller.truststore.is_some());
        assert!(c
            .authorizer
            .is_some_and(|a| a.is_super_user("User:CN=broker2.example.com")));
    }
}
