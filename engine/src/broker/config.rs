//! Broker configuration: Kafka key names from a TOML file, `SLUICE_*` environment variables
//! and command-line overrides, resolved into one typed [`BrokerConfig`].
//!
//! Precedence, highest first: flags > environment > file > defaults. Every source is reduced
//! to `key -> string` first, so a value parses the same way wherever it came from and a bad
//! value names its key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::storage::{FlushPolicy, LogConfig, TimestampType};

/// A configuration error, always naming the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML file could not be parsed.
    #[error("config file is not valid TOML: {0}")]
    Toml(String),
    /// A key has a value of the wrong type or out of range.
    #[error("invalid value {value:?} for config key `{key}`: {reason}")]
    InvalidValue {
        /// The Kafka key name.
        key: String,
        /// The value as given.
        value: String,
        /// Why it was refused.
        reason: String,
    },
}

/// Every broker key Sluice understands, with its default (as a string, parsed like any input)
/// and a one-line description; docs/configuration.md lists the same table.
pub const BROKER_KEYS: &[(&str, &str, &str)] = &[
    ("node.id", "1", "broker id reported in Metadata"),
    (
        "listeners",
        "PLAINTEXT://127.0.0.1:9092",
        "NAME://host:port,... listeners to bind (names mapped by listener.security.protocol.map)",
    ),
    (
        "advertised.listeners",
        "",
        "NAME://host:port,... given to clients of each listener (default: listeners)",
    ),
    (
        "listener.security.protocol.map",
        super::listeners::DEFAULT_PROTOCOL_MAP,
        "listener name -> PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
    ),
    (
        "inter.broker.listener.name",
        "",
        "listener registered for other brokers (default: the first of listeners)",
    ),
    (
        "controller.listener.names",
        "",
        "listener name of the controller channel (PLAINTEXT or SSL; not a Kafka listener)",
    ),
    ("ssl.keystore.type", "PEM", "keystore format (PEM only)"),
    (
        "ssl.keystore.location",
        "",
        "PEM file with the private key and certificate chain of TLS listeners",
    ),
    (
        "ssl.key.password",
        "",
        "password of an encrypted key (refused: encrypted keys are not supported)",
    ),
    ("ssl.truststore.type", "PEM", "truststore format (PEM only)"),
    (
        "ssl.truststore.location",
        "",
        "PEM file with the CA certificates trusted for client certificates",
    ),
    (
        "ssl.client.auth",
        "none",
        "client certificates: none, requested or required",
    ),
    (
        "ssl.principal.mapping.rules",
        "DEFAULT",
        "principal of a client certificate (DEFAULT: User:<subject DN, RFC 2253>)",
    ),
    (
        "ssl.enabled.protocols",
        "TLSv1.2,TLSv1.3",
        "TLS versions accepted",
    ),
    (
        "ssl.reload.interval.ms",
        "30000",
        "how often TLS listener files are checked for changes and reloaded (0 = never)",
    ),
    (
        "sasl.enabled.mechanisms",
        "SCRAM-SHA-256,SCRAM-SHA-512",
        "SASL mechanisms of SASL listeners: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512",
    ),
    (
        "sasl.jaas.config",
        "",
        "PlainLoginModule JAAS config whose user_<name>=\"<password>\" are the PLAIN users",
    ),
    (
        "connections.max.reauth.ms",
        "0",
        "SASL session lifetime; a connection must re-authenticate within it (0 = no limit)",
    ),
    (
        "authorizer.class.name",
        "",
        "ACL authorizer: empty = none (every principal may do everything); org.apache.kafka.metadata.authorizer.StandardAuthorizer (or kafka.security.authorizer.AclAuthorizer) = ACLs from the cluster metadata",
    ),
    (
        "super.users",
        "",
        "principals allowed everything when an authorizer is on, `;`-separated (User:admin;User:ANONYMOUS)",
    ),
    (
        "allow.everyone.if.no.acl.found",
        "false",
        "with an authorizer: allow an operation on a resource no ACL names",
    ),
    (
        "log.dirs",
        "./data",
        "data directory (one directory; the first of a comma list)",
    ),
    (
        "num.shards",
        "0",
        "shard threads, one per core (0 = number of cores)",
    ),
    (
        "num.partitions",
        "1",
        "partitions of an auto-created topic or of CreateTopics with -1",
    ),
    (
        "auto.create.topics.enable",
        "true",
        "create unknown topics on Metadata requests",
    ),
    (
        "log.segment.bytes",
        "1073741824",
        "segment size that triggers a roll",
    ),
    (
        "log.roll.ms",
        "604800000",
        "segment age that triggers a roll",
    ),
    (
        "log.retention.ms",
        "604800000",
        "delete segments older than this (-1 = never)",
    ),
    (
        "log.retention.hours",
        "168",
        "retention in hours, used when log.retention.ms is not set",
    ),
    (
        "log.retention.bytes",
        "-1",
        "delete old segments beyond this partition size (-1 = no limit)",
    ),
    (
        "log.retention.check.interval.ms",
        "300000",
        "how often each shard enforces retention and segment.ms",
    ),
    (
        "log.index.interval.bytes",
        "4096",
        "bytes of log between two offset index entries",
    ),
    (
        "log.index.size.max.bytes",
        "10485760",
        "preallocated size of an offset index",
    ),
    (
        "log.flush.interval.messages",
        "-1",
        "fsync after this many messages (1 = every append, -1 = never)",
    ),
    (
        "log.flush.interval.ms",
        "-1",
        "fsync at this interval (-1 = left to the OS)",
    ),
    (
        "log.message.timestamp.type",
        "CreateTime",
        "CreateTime or LogAppendTime",
    ),
    (
        "log.message.timestamp.before.max.ms",
        "9223372036854775807",
        "refuse CreateTime records older than the broker clock by more than this",
    ),
    (
        "log.message.timestamp.after.max.ms",
        "9223372036854775807",
        "refuse CreateTime records newer than the broker clock by more than this",
    ),
    (
        "log.message.timestamp.difference.max.ms",
        "9223372036854775807",
        "deprecated: before/after limit used where those keep their default",
    ),
    (
        "message.max.bytes",
        "1048588",
        "largest record batch accepted",
    ),
    (
        "socket.request.max.bytes",
        "104857600",
        "largest request frame accepted",
    ),
    (
        "fetch.zero.copy",
        "false",
        "send fetched records with sendfile (false = read and write)",
    ),
    (
        "max.incremental.fetch.session.cache.slots",
        "1000",
        "incremental fetch sessions (KIP-227) the broker keeps, split over its shards",
    ),
    (
        "min.incremental.fetch.session.eviction.ms",
        "120000",
        "a fetch session idle (or, for a larger newcomer, alive) this long may be evicted",
    ),
    (
        "producer.id.expiration.ms",
        "86400000",
        "forget a partition's idle producer after this",
    ),
    (
        "queued.max.requests.per.connection",
        "32",
        "pipelined requests read ahead on one connection",
    ),
    (
        "quota.window.num",
        "11",
        "windows a client quota's rate is measured over",
    ),
    (
        "quota.window.size.seconds",
        "1",
        "length of one client quota window",
    ),
    (
        "offsets.topic.num.partitions",
        "50",
        "partitions of __consumer_offsets, set when it is created",
    ),
    (
        "offsets.topic.segment.bytes",
        "104857600",
        "segment size of __consumer_offsets",
    ),
    (
        "offsets.retention.minutes",
        "10080",
        "keep committed offsets of empty groups this long",
    ),
    (
        "offsets.retention.check.interval.ms",
        "600000",
        "how often old committed offsets are expired",
    ),
    (
        "offset.metadata.max.bytes",
        "4096",
        "largest metadata string of a committed offset",
    ),
    (
        "group.initial.rebalance.delay.ms",
        "3000",
        "wait for more members before a new group's first rebalance",
    ),
    (
        "group.min.session.timeout.ms",
        "6000",
        "smallest session timeout a member may ask for",
    ),
    (
        "group.max.session.timeout.ms",
        "1800000",
        "largest session timeout a member may ask for",
    ),
    (
        "group.max.size",
        "2147483647",
        "most members in one consumer group",
    ),
    (
        "transaction.max.timeout.ms",
        "900000",
        "longest transaction.timeout.ms a producer may ask",
    ),
    (
        "transaction.state.log.num.partitions",
        "50",
        "partitions of __transaction_state when it is created",
    ),
    (
        "transaction.state.log.replication.factor",
        "3",
        "replication factor of __transaction_state (capped at the live brokers)",
    ),
    (
        "transaction.state.log.min.isr",
        "2",
        "min.insync.replicas of __transaction_state (capped at its replication factor)",
    ),
    (
        "transaction.state.log.segment.bytes",
        "104857600",
        "segment size of __transaction_state",
    ),
    (
        "transaction.abort.timed.out.transaction.cleanup.interval.ms",
        "10000",
        "how often open transactions are checked against their timeout",
    ),
    (
        "transactional.id.expiration.ms",
        "604800000",
        "an idle transactional id (no transaction open) is removed after this long",
    ),
    (
        "transaction.remove.expired.transaction.cleanup.interval.ms",
        "3600000",
        "how often idle transactional ids are checked against their expiration",
    ),
    (
        "transaction.state.log.write.timeout.ms",
        "5000",
        "replication wait of a transaction state record or marker",
    ),
    (
        "admin.listener",
        "127.0.0.1:9644",
        "HTTP /metrics /health /ready address (empty = disabled)",
    ),
    (
        "log.level",
        "info",
        "log filter (tracing EnvFilter syntax); RUST_LOG wins",
    ),
    ("log.format", "text", "log line format: text or json"),
    (
        "log.cleaner.enable",
        "true",
        "run the log cleaner (compaction) on every shard",
    ),
    (
        "log.cleaner.io.max.bytes.per.second",
        "1.7976931348623157E308",
        "cleaner I/O limit per shard (read + written)",
    ),
    (
        "log.cleaner.backoff.ms",
        "15000",
        "pause between the cleaner's passes over a shard's partitions",
    ),
    (
        "log.cleaner.dedupe.buffer.size",
        "134217728",
        "memory for the cleaner's offset map per shard",
    ),
    (
        "log.cleaner.delete.retention.ms",
        "86400000",
        "how long tombstones stay in compacted topics",
    ),
    (
        "log.cleaner.min.cleanable.ratio",
        "0.5",
        "dirty ratio at which a compacted log is cleaned",
    ),
    (
        "log.cleaner.min.compaction.lag.ms",
        "0",
        "records younger than this are not compacted",
    ),
    (
        "controller.quorum.voters",
        "",
        "id@host:port,... of the controller voters (empty = a cluster of one: this node is its sole voter)",
    ),
    (
        "broker.session.timeout.ms",
        "9000",
        "cluster: a broker silent this long is fenced",
    ),
    (
        "broker.heartbeat.interval.ms",
        "500",
        "cluster: how often a broker heartbeats the controller",
    ),
    (
        "controller.quorum.election.timeout.ms",
        "1000",
        "cluster: Raft election timeout",
    ),
    (
        "controller.quorum.heartbeat.interval.ms",
        "100",
        "cluster: Raft leader heartbeat interval",
    ),
    (
        "controller.quorum.request.timeout.ms",
        "10000",
        "cluster: how long a controller call keeps retrying",
    ),
    (
        "replication.mode",
        "isr",
        "cluster: default replication rule of new topics (isr or quorum)",
    ),
    (
        "default.replication.factor",
        "1",
        "cluster: replication factor of auto-created topics and CreateTopics with -1",
    ),
    (
        "min.insync.replicas",
        "1",
        "cluster: smallest ISR accepting acks=all writes",
    ),
    (
        "replica.lag.time.max.ms",
        "30000",
        "cluster: a follower not caught up this long leaves the ISR",
    ),
    (
        "unclean.leader.election.enable",
        "false",
        "cluster: let an out-of-sync replica lead (loses data)",
    ),
    (
        "replica.fetch.wait.max.ms",
        "500",
        "cluster: long-poll time of follower fetches",
    ),
    (
        "metadata.snapshot.interval.entries",
        "1000",
        "cluster: metadata log entries between snapshots",
    ),
    (
        "metadata.poll.interval.ms",
        "200",
        "cluster: broker-only nodes pull the metadata image this often",
    ),
    (
        "broker.rack",
        "",
        "cluster: this broker's rack; replicas are spread over racks when brokers have one",
    ),
    (
        "auto.leader.rebalance.enable",
        "true",
        "cluster: the controller moves leadership back to preferred replicas when imbalanced",
    ),
    (
        "leader.imbalance.per.broker.percentage",
        "10",
        "cluster: share (%) of a broker's preferred partitions led elsewhere that triggers a rebalance",
    ),
    (
        "leader.imbalance.check.interval.seconds",
        "300",
        "cluster: how often the controller checks the leader imbalance",
    ),
];

/// Topic-level keys accepted by CreateTopics and IncrementalAlterConfigs, with the broker key
/// that supplies their default.
pub const TOPIC_KEYS: &[(&str, &str)] = &[
    ("cleanup.policy", ""),
    ("retention.ms", "log.retention.ms"),
    ("retention.bytes", "log.retention.bytes"),
    ("segment.bytes", "log.segment.bytes"),
    ("segment.ms", "log.roll.ms"),
    ("segment.index.bytes", "log.index.size.max.bytes"),
    ("index.interval.bytes", "log.index.interval.bytes"),
    ("max.message.bytes", "message.max.bytes"),
    ("flush.messages", "log.flush.interval.messages"),
    ("flush.ms", "log.flush.interval.ms"),
    ("message.timestamp.type", "log.message.timestamp.type"),
    (
        "message.timestamp.before.max.ms",
        "log.message.timestamp.before.max.ms",
    ),
    (
        "message.timestamp.after.max.ms",
        "log.message.timestamp.after.max.ms",
    ),
    (
        "message.timestamp.difference.max.ms",
        "log.message.timestamp.difference.max.ms",
    ),
    ("delete.retention.ms", "log.cleaner.delete.retention.ms"),
    (
        "min.cleanable.dirty.ratio",
        "log.cleaner.min.cleanable.ratio",
    ),
    ("min.compaction.lag.ms", "log.cleaner.min.compaction.lag.ms"),
    ("replication.mode", "replication.mode"),
    ("min.insync.replicas", "min.insync.replicas"),
    (
        "unclean.leader.election.enable",
        "unclean.leader.election.enable",
    ),
];

/// The resolved broker configuration.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// `node.id`.
    pub node_id: i32,
    /// Bound address of the inter-broker listener (the first of `listeners`, or
    /// `inter.broker.listener.name`).
    pub listen: SocketAddr,
    /// Advertised host of the inter-broker listener (registered with the controller; the
    /// fallback when a request's listener is not known).
    pub advertised_host: String,
    /// Advertised port of the inter-broker listener.
    pub advertised_port: i32,
    /// Every listener, the inter-broker one first.
    pub listeners: Vec<super::listeners::ListenerConfig>,
    /// TLS of the controller channel (`controller.listener.names` mapped to SSL).
    pub controller_tls: Option<crate::security::tls::TlsSettings>,
    /// `log.dirs` (first entry).
    pub data_dir: PathBuf,
    /// Number of shard threads (resolved: never 0).
    pub shards: usize,
    /// `num.partitions`.
    pub num_partitions: i32,
    /// `auto.create.topics.enable`.
    pub auto_create_topics: bool,
    /// `log.retention.check.interval.ms`.
    pub retention_check_interval_ms: u64,
    /// `socket.request.max.bytes`.
    pub socket_request_max_bytes: usize,
    /// `fetch.zero.copy`.
    pub fetch_zero_copy: bool,
    /// `queued.max.requests.per.connection`.
    pub max_inflight_per_connection: usize,
    /// `quota.window.num` and `quota.window.size.seconds`: client quota rates are measured
    /// over this many windows of this many seconds.
    pub quota_windows: (usize, u64),
    /// `admin.listener` (None = disabled).
    pub admin_listener: Option<SocketAddr>,
    /// `log.level`.
    pub log_level: String,
    /// `log.format` is `json`.
    pub log_json: bool,
    /// The authorizer's settings (`super.users`, `allow.everyone.if.no.acl.found`; its
    /// bindings come from the cluster metadata) when `authorizer.class.name` turns it on;
    /// `None`: every principal may do everything.
    pub authorizer: Option<crate::security::acl::Authorizer>,
    /// Every resolved key as a string, for DescribeConfigs and topic-config defaults.
    pub raw: BTreeMap<String, String>,
    /// Where each key's value came from.
    pub sources: BTreeMap<String, ConfigSource>,
}

/// Kafka's KRaft authorizer class: ACLs in the cluster metadata.
pub const STANDARD_AUTHORIZER: &str = "org.apache.kafka.metadata.authorizer.StandardAuthorizer";
/// The ZooKeeper-era class name, accepted as the same authorizer.
pub const ACL_AUTHORIZER: &str = "kafka.security.authorizer.AclAuthorizer";

/// Where a configuration value came from (reported by DescribeConfigs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    /// Built-in default.
    Default,
    /// The TOML file.
    File,
    /// A `SLUICE_*` environment variable.
    Env,
    /// A command-line flag.
    Flag,
}

/// The environment variable that overrides `key`: `SLUICE_` + key upper-cased, `.` -> `_`.
pub fn env_name(key: &str) -> String {
    format!(
        "SLUICE_{}",
        key.to_ascii_uppercase().replace(['.', '-'], "_")
    )
}

/// Flattens a TOML document into dotted keys: `node.id = 1` parses as `{node = {id = 1}}`.
pub fn flatten_toml(text: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Toml(e.to_string()))?;
    let mut out = BTreeMap::new();
    flatten_into("", &toml::Value::Table(table), &mut out);
    Ok(out)
}

fn flatten_into(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, String>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten_into(&key, v, out);
            }
        }
        toml::Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        toml::Value::Array(items) => {
            let parts: Vec<String> = items
                .iter()
                .map(|v| match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            out.insert(prefix.to_string(), parts.join(","));
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

fn invalid(key: &str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::InvalidValue {
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Parses an integer config value, naming the key on error.
pub fn parse_int<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, ConfigError> {
    value
        .trim()
        .parse::<T>()
        .map_err(|_| invalid(key, value, "expected an integer in range"))
}

/// Parses a boolean config value (`true`/`false`), naming the key on error.
pub fn parse_bool(key: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(invalid(key, value, "expected true or false")),
    }
}

impl BrokerConfig {
    /// `producer.id.expiration.ms`: how long an idle producer's state is kept in a partition
    /// (default one day).
    pub fn producer_id_expiration_ms(&self) -> i64 {
        self.raw
            .get("producer.id.expiration.ms")
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|v| *v > 0)
            .unwrap_or(crate::idempotence::DEFAULT_PRODUCER_ID_EXPIRATION_MS)
    }

    /// Resolves the configuration from its sources. `file` is the TOML text (if any), `env`
    /// the process environment, `flags` the overrides from the command line (already as Kafka
    /// keys). Returns the config and warnings for unknown keys.
    pub fn resolve(
        file: Option<&str>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &[(String, String)],
    ) -> Result<(BrokerConfig, Vec<String>), ConfigError> {
        let mut warnings = Vec::new();
        let mut raw: BTreeMap<String, String> = BTreeMap::new();
        let mut sources = BTreeMap::new();
        for (k, v, _) in BROKER_KEYS {
            raw.insert((*k).to_string(), (*v).to_string());
            sources.insert((*k).to_string(), ConfigSource::Default);
        }
        let known = |k: &str| {
            BROKER_KEYS.iter().any(|(name, _, _)| *name == k)
                || k == "log.dir"
                // Per-listener overrides (`listener.name.<name>.<key>`), as in Kafka.
                || k.starts_with("listener.name.")
        };
        if let Some(text) = file {
            for (k, v) in flatten_toml(text)? {
                if !known(&k) {
                    warnings.push(format!("unknown config key `{k}` in config file (ignored)"));
                    continue;
                }
                let k = if k == "log.dir" {
                    "log.dirs".to_string()
                } else {
                    k
                };
                sources.insert(k.clone(), ConfigSource::File);
                raw.insert(k, v);
            }
        }
        let env: BTreeMap<String, String> = env.into_iter().collect();
        for (k, _, _) in BROKER_KEYS {
            if let Some(v) = env.get(&env_name(k)) {
                raw.insert((*k).to_string(), v.clone());
                sources.insert((*k).to_string(), ConfigSource::Env);
            }
        }
        for name in env.keys() {
            if name.starts_with("SLUICE_")
                && !BROKER_KEYS.iter().any(|(k, _, _)| env_name(k) == *name)
            {
                warnings.push(format!("unknown environment variable `{name}` (ignored)"));
            }
        }
        for (k, v) in flags {
            if !known(k) {
                warnings.push(format!(
                    "unknown config key `{k}` on the command line (ignored)"
                ));
                continue;
            }
            raw.insert(k.clone(), v.clone());
            sources.insert(k.clone(), ConfigSource::Flag);
        }
        // Kafka: log.retention.ms wins over log.retention.hours when both are set.
        if sources.get("log.retention.ms") == Some(&ConfigSource::Default)
            && sources.get("log.retention.hours") != Some(&ConfigSource::Default)
        {
            let hours: i64 = parse_int("log.retention.hours", &raw["log.retention.hours"])?;
            let ms = if hours < 0 {
                -1
            } else {
                hours.saturating_mul(3_600_000)
            };
            raw.insert("log.retention.ms".into(), ms.to_string());
            let src = sources["log.retention.hours"];
            sources.insert("log.retention.ms".into(), src);
        }
        let cfg = Self::from_raw(raw, sources)?;
        let clustered = !cfg
            .raw
            .get("controller.quorum.voters")
            .is_none_or(|v| v.trim().is_empty());
        if clustered
            && cfg.listeners[0].protocol == super::listeners::SecurityProtocol::Plaintext
            && cfg
                .authorizer
                .as_ref()
                .is_some_and(|a| !a.is_super_user(crate::security::principal::ANONYMOUS))
        {
            // Brokers reach each other on the PLAINTEXT inter-broker listener as
            // User:ANONYMOUS; as in Kafka, that principal needs its rights (docs/security.md).
            warnings.push(
                "authorizer.class.name is set in a cluster but super.users does not name \
                 User:ANONYMOUS, the principal of the PLAINTEXT inter-broker listener: follower \
                 fetches and forwarded requests between brokers will be refused unless ACLs \
                 allow them"
                    .to_string(),
            );
        }
        Ok((cfg, warnings))
    }

    fn from_raw(
        raw: BTreeMap<String, String>,
        sources: BTreeMap<String, ConfigSource>,
    ) -> Result<Self, ConfigError> {
        let get = |k: &str| raw.get(k).map(String::as_str).unwrap_or("");
        let node_id: i32 = parse_int("node.id", get("node.id"))?;
        if node_id < 0 {
            return Err(invalid("node.id", get("node.id"), "must be >= 0"));
        }
        let listeners = super::listeners::parse_listeners(&raw)?;
        let inter_broker = &listeners[0];
        if !get("controller.quorum.voters").trim().is_empty() && inter_broker.protocol.sasl() {
            // The follower fetcher authenticates with its certificate (SSL), not with SASL.
            return Err(invalid(
                "inter.broker.listener.name",
                &inter_broker.name,
                "cluster mode needs a PLAINTEXT or SSL inter-broker listener (SASL between brokers is not done yet; SSL with ssl.client.auth=required authenticates brokers by certificate)",
            ));
        }
        if !get("controller.quorum.voters").trim().is_empty()
            && inter_broker
                .tls
                .as_ref()
                .is_some_and(|t| t.truststore.is_none())
        {
            return Err(invalid(
                "ssl.truststore.location",
                "",
                format!(
                    "the SSL inter-broker listener {} needs the CAs of the other brokers' certificates",
                    inter_broker.name
                ),
            ));
        }
        let controller_tls = super::listeners::controller_channel_tls(&raw)?;
        let listen = inter_broker.bind;
        let adv_host = inter_broker.advertised_host.clone();
        let adv_port = inter_broker.advertised_port;
        let data_dir = get("log.dirs")
            .split(',')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        if data_dir.is_empty() {
            return Err(invalid(
                "log.dirs",
                get("log.dirs"),
                "must name a directory",
            ));
        }
        let shards: usize = parse_int("num.shards", get("num.shards"))?;
        let shards = if shards == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            shards
        };
        if shards > 1024 {
            return Err(invalid(
                "num.shards",
                get("num.shards"),
                "at most 1024 shards",
            ));
        }
        let num_partitions: i32 = parse_int("num.partitions", get("num.partitions"))?;
        if num_partitions < 1 {
            return Err(invalid(
                "num.partitions",
                get("num.partitions"),
                "must be >= 1",
            ));
        }
        let auto_create_topics = parse_bool(
            "auto.create.topics.enable",
            get("auto.create.topics.enable"),
        )?;
        let retention_check_interval_ms: u64 = parse_int(
            "log.retention.check.interval.ms",
            get("log.retention.check.interval.ms"),
        )?;
        if retention_check_interval_ms == 0 {
            return Err(invalid(
                "log.retention.check.interval.ms",
                "0",
                "must be > 0",
            ));
        }
        let socket_request_max_bytes: usize =
            parse_int("socket.request.max.bytes", get("socket.request.max.bytes"))?;
        if !(64..=i32::MAX as usize).contains(&socket_request_max_bytes) {
            return Err(invalid(
                "socket.request.max.bytes",
                get("socket.request.max.bytes"),
                "must be in 64..=2147483647",
            ));
        }
        let fetch_zero_copy = parse_bool("fetch.zero.copy", get("fetch.zero.copy"))?;
        let producer_expiry: i32 = parse_int(
            "producer.id.expiration.ms",
            get("producer.id.expiration.ms"),
        )?;
        if producer_expiry < 1 {
            let v = get("producer.id.expiration.ms");
            return Err(invalid("producer.id.expiration.ms", v, "must be >= 1"));
        }
        let max_inflight: usize = parse_int(
            "queued.max.requests.per.connection",
            get("queued.max.requests.per.connection"),
        )?;
        if !(1..=1024).contains(&max_inflight) {
            return Err(invalid(
                "queued.max.requests.per.connection",
                get("queued.max.requests.per.connection"),
                "must be in 1..=1024",
            ));
        }
        let quota_window_num: usize = parse_int("quota.window.num", get("quota.window.num"))?;
        if !(2..=3600).contains(&quota_window_num) {
            let v = get("quota.window.num");
            return Err(invalid("quota.window.num", v, "must be in 2..=3600"));
        }
        let quota_window_secs: u64 = parse_int(
            "quota.window.size.seconds",
            get("quota.window.size.seconds"),
        )?;
        if !(1..=3600).contains(&quota_window_secs) {
            let v = get("quota.window.size.seconds");
            return Err(invalid(
                "quota.window.size.seconds",
                v,
                "must be in 1..=3600",
            ));
        }
        let admin_listener = match get("admin.listener").trim() {
            "" => None,
            a => Some(a.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    "admin.listener",
                    a,
                    "expected ip:port (or empty to disable)",
                )
            })?),
        };
        let log_json = match get("log.format").trim() {
            "text" => false,
            "json" => true,
            other => return Err(invalid("log.format", other, "expected text or json")),
        };
        let authorizer = match get("authorizer.class.name").trim() {
            "" => None,
            STANDARD_AUTHORIZER | ACL_AUTHORIZER => {
                let allow = parse_bool(
                    "allow.everyone.if.no.acl.found",
                    get("allow.everyone.if.no.acl.found"),
                )?;
                Some(
                    crate::security::acl::Authorizer::from_config(get("super.users"), allow)
                        .map_err(|e| invalid("super.users", get("super.users"), &e.message))?,
                )
            }
            other => {
                return Err(invalid(
                    "authorizer.class.name",
                    other,
                    "expected empty (no authorization) or org.apache.kafka.metadata.authorizer.StandardAuthorizer",
                ))
            }
        };
        let cfg = BrokerConfig {
            node_id,
            listen,
            advertised_host: adv_host,
            advertised_port: adv_port,
            listeners,
            controller_tls,
            data_dir: PathBuf::from(data_dir),
            shards,
            num_partitions,
            auto_create_topics,
            retention_check_interval_ms,
            socket_request_max_bytes,
            fetch_zero_copy,
            max_inflight_per_connection: max_inflight,
            quota_windows: (quota_window_num, quota_window_secs),
            admin_listener,
            log_level: get("log.level").trim().to_string(),
            log_json,
            authorizer,
            raw,
            sources,
        };
        // Validate the log defaults now so a bad value fails at start-up, not on first use.
        cfg.log_config(&BTreeMap::new())?;
        super::fetch_session::SessionConfig::from_config(&cfg)?;
        crate::storage::cleaner::CleanerConfig::from_raw(&cfg.raw)
            .map_err(|(k, v)| invalid(&k, &v, "not a valid log cleaner setting"))?;
        Ok(cfg)
    }

    /// The effective value of a topic-level key: the topic override, else the broker default.
    pub fn topic_value(&self, key: &str, overrides: &BTreeMap<String, String>) -> Option<String> {
        if let Some(v) = overrides.get(key) {
            return Some(v.clone());
        }
        let (_, broker_key) = TOPIC_KEYS.iter().find(|(k, _)| *k == key)?;
        if broker_key.is_empty() {
            // cleanup.policy has no broker key in Sluice; Kafka's default is delete.
            return Some("delete".to_string());
        }
        self.raw.get(*broker_key).cloned()
    }

    /// Builds the storage `LogConfig` for a topic from the broker defaults and its overrides.
    pub fn log_config(
        &self,
        overrides: &BTreeMap<String, String>,
    ) -> Result<LogConfig, ConfigError> {
        let v = |k: &str| self.topic_value(k, overrides).unwrap_or_default();
        // Errors name the key the operator wrote: the topic key when it is a topic override,
        // else the broker key that supplied the default.
        let key_name = |k: &'static str| -> &'static str {
            if overrides.contains_key(k) {
                return k;
            }
            TOPIC_KEYS
                .iter()
                .find(|(t, b)| *t == k && !b.is_empty())
                .map_or(k, |(_, b)| *b)
        };
        let num = |k: &'static str, lo: i64, hi: i64| -> Result<i64, ConfigError> {
            let raw = v(k);
            let reason = format!("expected an integer in {lo}..={hi}");
            match raw.trim().parse::<i64>() {
                Ok(n) if (lo..=hi).contains(&n) => Ok(n),
                _ => Err(invalid(key_name(k), &raw, reason)),
            }
        };
        let i32_max = i64::from(i32::MAX);
        let segment_bytes = num("segment.bytes", 14, i32_max)? as u64;
        let segment_ms = num("segment.ms", 1, i64::MAX)?;
        let segment_index_bytes = num("segment.index.bytes", 8, i32_max)? as u32;
        let index_interval_bytes = num("index.interval.bytes", 0, i32_max)? as u32;
        let retention_ms = num("retention.ms", -1, i64::MAX)?;
        let retention_bytes = num("retention.bytes", -1, i64::MAX)?;
        let max_message_bytes = num("max.message.bytes", 0, i32_max)? as u32;
        let flush_messages = num("flush.messages", -1, i64::MAX)?;
        let flush_ms = num("flush.ms", -1, i64::MAX)?;
        let flush = match (flush_messages, flush_ms) {
            (1, _) | (_, 0) => FlushPolicy::EveryAppend,
            (m, ms) if m <= 0 && ms < 0 => FlushPolicy::Os,
            (m, ms) => FlushPolicy::Interval {
                messages: if m <= 0 { u64::MAX } else { m as u64 },
                ms: if ms < 0 { u64::MAX } else { ms as u64 },
            },
        };
        let message_timestamp_type = match v("message.timestamp.type").as_str() {
            "CreateTime" => TimestampType::CreateTime,
            "LogAppendTime" => TimestampType::LogAppendTime,
            other => {
                return Err(invalid(
                    key_name("message.timestamp.type"),
                    other,
                    "expected CreateTime or LogAppendTime",
                ))
            }
        };
        // Kafka 3.6+ (KIP-937): before/after default to the deprecated difference key while
        // they keep their own default.
        let difference_ms = num("message.timestamp.difference.max.ms", 0, i64::MAX)?;
        let or_difference = |ms: i64| if ms == i64::MAX { difference_ms } else { ms };
        let message_timestamp_before_max_ms =
            or_difference(num("message.timestamp.before.max.ms", 0, i64::MAX)?);
        let message_timestamp_after_max_ms =
            or_difference(num("message.timestamp.after.max.ms", 0, i64::MAX)?);
        let policy = v("cleanup.policy");
        let (mut compact, mut delete) = (false, false);
        for p in policy.split(',').map(str::trim) {
            match p {
                "compact" => compact = true,
                "delete" => delete = true,
                _ => {
                    return Err(invalid(
                        "cleanup.policy",
                        &policy,
                        "expected a list of `compact` and `delete`",
                    ))
                }
            }
        }
        let delete_retention_ms = num("delete.retention.ms", 0, i64::MAX)?;
        let min_compaction_lag_ms = num("min.compaction.lag.ms", 0, i64::MAX)?;
        let ratio_raw = v("min.cleanable.dirty.ratio");
        let min_cleanable_dirty_ratio_ppm = match ratio_raw.trim().parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => (r * 1e6).round() as u32,
            _ => {
                return Err(invalid(
                    key_name("min.cleanable.dirty.ratio"),
                    &ratio_raw,
                    "expected a number in 0..=1",
                ))
            }
        };
        Ok(LogConfig {
            segment_bytes,
            segment_ms,
            segment_index_bytes,
            index_interval_bytes,
            retention_ms,
            retention_bytes,
            max_message_bytes,
            flush,
            message_timestamp_type,
            message_timestamp_before_max_ms,
            message_timestamp_after_max_ms,
            compact,
            delete,
            delete_retention_ms,
            min_compaction_lag_ms,
            min_cleanable_dirty_ratio_ppm,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(
        file: Option<&str>,
        env: &[(&str, &str)],
        flags: &[(&str, &str)],
    ) -> Result<BrokerConfig, ConfigError> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let flags: Vec<(String, String)> = flags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        BrokerConfig::resolve(file, env, &flags).map(|(c, _)| c)
    }

    #[test]
    fn defaults() {
        let c = resolve(None, &[], &[]).unwrap();
        assert_eq!(c.listen, "127.0.0.1:9092".parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.num_partitions, 1);
        assert!(c.auto_create_topics);
        assert!(c.shards >= 1);
        assert_eq!(c.socket_request_max_bytes, 100 * 1024 * 1024);
        assert_eq!(c.raw["log.retention.ms"], "604800000");
    }

    #[test]
    fn toml_nested_tables_flatten_to_dotted_keys() {
        let c = resolve(
            Some("node.id = 7\nlog.dirs = \"/tmp/x\"\n[num]\npartitions = 3\n"),
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(c.node_id, 7);
        assert_eq!(c.num_partitions, 3);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn precedence_flags_over_env_over_file() {
        let file = Some("num.partitions = 2\nnode.id = 3\nlog.segment.bytes = 1000\n");
        let c = resolve(
            file,
            &[("SLUICE_NUM_PARTITIONS", "4"), ("SLUICE_NODE_ID", "5")],
            &[("node.id", "6")],
        )
        .unwrap();
        assert_eq!(c.num_partitions, 4, "env beats file");
        assert_eq!(c.node_id, 6, "flag beats env");
        assert_eq!(c.raw["log.segment.bytes"], "1000", "file beats default");
        assert_eq!(c.sources["node.id"], ConfigSource::Flag);
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = resolve(Some("num.partitions = \"many\""), &[], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("num.partitions"), "{e}");
        let e = resolve(None, &[("SLUICE_LISTENERS", "nonsense")], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("listeners"), "{e}");
        let e = resolve(None, &[], &[("log.segment.bytes", "-5")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("segment.bytes"), "{e}");
        assert!(matches!(
            resolve(Some("= broken"), &[], &[]),
            Err(ConfigError::Toml(_))
        ));
    }

    #[test]
    fn authorizer_keys() {
        let resolve = |flags: &[(&str, &str)]| {
            let flags: Vec<(String, String)> = flags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            BrokerConfig::resolve(None, Vec::new(), &flags)
        };
        let (c, _) = resolve(&[]).unwrap();
        assert!(c.authorizer.is_none(), "off by default");
        for class in [STANDARD_AUTHORIZER, ACL_AUTHORIZER] {
            let (c, w) = resolve(&[
                ("authorizer.class.name", class),
                ("super.users", "User:admin; User:ops"),
            ])
            .unwrap();
            let a = c.authorizer.expect("on");
            assert!(a.is_super_user("User:admin") && a.is_super_user("User:ops"));
            assert!(w.is_empty(), "{w:?}");
        }
        let e = resolve(&[("authorizer.class.name", "com.example.Custom")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("authorizer.class.name"), "{e}");
        let e = resolve(&[
            ("authorizer.class.name", STANDARD_AUTHORIZER),
            ("super.users", "admin"),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("super.users"), "{e}");
        // In a cluster, the inter-broker principal must be a super user, or a warning says so.
        let voters = ("controller.quorum.voters", "1@127.0.0.1:9093");
        let (_, w) = resolve(&[("authorizer.class.name", STANDARD_AUTHORIZER), voters]).unwrap();
        assert!(w.iter().any(|w| w.contains("User:ANONYMOUS")), "{w:?}");
        let (_, w) = resolve(&[
            ("authorizer.class.name", STANDARD_AUTHORIZER),
            ("super.users", "User:ANONYMOUS"),
            voters,
        ])
        .unwrap();
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn cluster_inter_broker_listener_is_plaintext_or_ssl_with_a_truststore() {
        let resolve = |flags: &[(&str, &str)]| {
            let flags: Vec<(String, String)> = flags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            BrokerConfig::resolve(None, Vec::new(), &flags)
        };
        let voters = ("controller.quorum.voters", "1@127.0.0.1:9093");
        let ssl = [
            ("listeners", "SSL://127.0.0.1:9092"),
            ("ssl.keystore.location", "/node.pem"),
            voters,
        ];
        let e = resolve(&ssl).unwrap_err().to_string();
        assert!(e.contains("ssl.truststore.location"), "{e}");
        let mut trusted = ssl.to_vec();
        trusted.push(("ssl.truststore.location", "/ca.pem"));
        let (c, _) = resolve(&trusted).unwrap();
        assert!(c.listeners[0].tls.is_some());
        // A single node may serve SSL without a truststore: it dials no other broker.
        assert!(resolve(&ssl[..2]).is_ok());
        let e = resolve(&[
            ("listeners", "SASL_PLAINTEXT://127.0.0.1:9092"),
            ("sasl.enabled.mechanisms", "SCRAM-SHA-256"),
            voters,
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("inter.broker.listener.name"), "{e}");
    }

    #[test]
    fn example_file_is_valid_and_complete() {
        let text = include_str!("../../../sluice.example.toml");
        let (c, warnings) = BrokerConfig::resolve(Some(text), Vec::new(), &[]).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(c.listen, "127.0.0.1:9092".parse().unwrap());
        for (key, _, _) in BROKER_KEYS {
            let documented =
                text.contains(&format!("{key} =")) || text.contains(&format!("# {key} ="));
            assert!(
                documented || *key == "advertised.listeners",
                "{key} missing from sluice.example.toml"
            );
        }
    }

    #[test]
    fn bad_broker_log_default_names_the_broker_key_and_range() {
        let e = resolve(None, &[], &[("log.segment.bytes", "-5")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`log.segment.bytes`") && e.contains("14..=2147483647"),
            "{e}"
        );
        let c = resolve(None, &[], &[]).unwrap();
        let mut o = BTreeMap::new();
        o.insert("segment.bytes".to_string(), "3000000000".to_string());
        let e = c.log_config(&o).unwrap_err().to_string();
        assert!(e.contains("`segment.bytes`"), "{e}");
    }

    #[test]
    fn unknown_keys_warn() {
        let (_, w) = BrokerConfig::resolve(Some("foo.bar = 1"), Vec::new(), &[]).unwrap();
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("foo.bar"));
    }

    #[test]
    fn retention_hours_used_when_ms_unset() {
        let c = resolve(Some("log.retention.hours = 1"), &[], &[]).unwrap();
        assert_eq!(c.raw["log.retention.ms"], "3600000");
        let c = resolve(
            Some("log.retention.hours = 1\nlog.retention.ms = 5"),
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(c.raw["log.retention.ms"], "5");
    }

    #[test]
    fn topic_overrides_and_flush_policy() {
        let c = resolve(None, &[], &[]).unwrap();
        let mut o = BTreeMap::new();
        o.insert("retention.ms".to_string(), "1000".to_string());
        o.insert("flush.messages".to_string(), "1".to_string());
        let lc = c.log_config(&o).unwrap();
        assert_eq!(lc.retention_ms, 1000);
        assert_eq!(lc.flush, FlushPolicy::EveryAppend);
        assert_eq!(
            c.log_config(&BTreeMap::new()).unwrap().flush,
            FlushPolicy::Os
        );
        o.insert("cleanup.policy".to_string(), "compact".to_string());
        let lc = c.log_config(&o).unwrap();
        assert!(lc.compact && !lc.delete);
        o.insert("cleanup.policy".to_string(), "compact, delete".to_string());
        let lc = c.log_config(&o).unwrap();
        assert!(lc.compact && lc.delete);
        assert_eq!(lc.min_cleanable_dirty_ratio_ppm, 500_000);
        o.insert("cleanup.policy".to_string(), "shred".to_string());
        assert!(c.log_config(&o).is_err());
    }

    #[test]
    fn timestamp_window_keys_and_the_difference_fallback() {
        let c = resolve(None, &[], &[]).unwrap();
        let lc = c.log_config(&BTreeMap::new()).unwrap();
        assert_eq!(
            (
                lc.message_timestamp_before_max_ms,
                lc.message_timestamp_after_max_ms
            ),
            (i64::MAX, i64::MAX)
        );
        let topic = |pairs: &[(&str, &str)]| {
            let o: BTreeMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            c.log_config(&o).map(|lc| {
                (
                    lc.message_timestamp_before_max_ms,
                    lc.message_timestamp_after_max_ms,
                )
            })
        };
        assert_eq!(
            topic(&[("message.timestamp.difference.max.ms", "500")]).unwrap(),
            (500, 500)
        );
        assert_eq!(
            topic(&[
                ("message.timestamp.difference.max.ms", "500"),
                ("message.timestamp.after.max.ms", "7")
            ])
            .unwrap(),
            (500, 7)
        );
        assert_eq!(
            topic(&[("message.timestamp.before.max.ms", "3600000")]).unwrap(),
            (3_600_000, i64::MAX)
        );
        for bad in ["-1", "soon"] {
            let e = topic(&[("message.timestamp.before.max.ms", bad)]).unwrap_err();
            assert!(
                e.to_string().contains("message.timestamp.before.max.ms"),
                "{e}"
            );
        }
        let b = resolve(
            None,
            &[],
            &[("log.message.timestamp.after.max.ms", "3600000")],
        )
        .unwrap();
        let lc = b.log_config(&BTreeMap::new()).unwrap();
        assert_eq!(lc.message_timestamp_after_max_ms, 3_600_000);
        let e = resolve(None, &[], &[("log.message.timestamp.after.max.ms", "-5")]).unwrap_err();
        assert!(
            e.to_string().contains("log.message.timestamp.after.max.ms"),
            "{e}"
        );
    }
}
