//! Workload files in OpenMessaging Benchmark's vocabulary (TOML), plus the producer settings
//! OMB keeps in its driver file.

use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;
use thiserror::Error;

/// Why a workload could not be loaded.
#[derive(Debug, Error)]
pub enum WorkloadError {
    /// The file could not be read.
    #[error("reading workload {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for a workload.
    #[error("parsing workload {path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// The cause.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range.
    #[error("invalid workload: {0}")]
    Invalid(String),
}

/// How producers choose keys (OMB's `keyDistributor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum KeyDistributor {
    /// No key: the producer spreads records round-robin over partitions.
    NoKey,
    /// Keys cycle through a fixed set; partitions by murmur2 like the Java client.
    KeyRoundRobin,
    /// A random key per record; partitions by murmur2.
    RandomNano,
}

/// Compression codec of produced batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressionCodec {
    /// No compression.
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    Lz4,
    /// Zstandard.
    Zstd,
}

impl std::str::FromStr for CompressionCodec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "gzip" => Ok(Self::Gzip),
            "snappy" => Ok(Self::Snappy),
            "lz4" => Ok(Self::Lz4),
            "zstd" => Ok(Self::Zstd),
            other => Err(format!("unknown compression {other:?}")),
        }
    }
}

/// How the payload bytes after the bench header are filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadKind {
    /// Random bytes (incompressible, OMB's default payload files are random).
    Random,
    /// English-like text (compressible).
    Text,
}

/// How consumers get their partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsumerMode {
    /// Each subscription is a consumer group (OMB's model): the members join, the leader
    /// assigns, offsets are committed, and partitions move at rebalances.
    #[default]
    Group,
    /// Partitions are dealt to the consumers by the harness (`assign()`), no group.
    Assign,
}

impl std::str::FromStr for ConsumerMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "group" => Ok(Self::Group),
            "assign" => Ok(Self::Assign),
            other => Err(format!("unknown consumer mode {other:?} (group or assign)")),
        }
    }
}

/// One benchmark workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    /// Human-readable name.
    pub name: String,
    /// Number of topics.
    #[serde(default = "one")]
    pub topics: u32,
    /// Partitions per topic.
    pub partitions_per_topic: u32,
    /// Replication factor of created topics.
    #[serde(default = "one_i16")]
    pub replication_factor: i16,
    /// Message value size in bytes (at least 28: the bench header).
    pub message_size: usize,
    /// Payload filler.
    #[serde(default = "random_payload")]
    pub payload: PayloadKind,
    /// Optional file whose bytes fill the payload (overrides `payload`).
    #[serde(default)]
    pub payload_file: Option<String>,
    /// Key distribution.
    #[serde(default = "no_key")]
    pub key_distributor: KeyDistributor,
    /// Producers per topic.
    #[serde(default = "one")]
    pub producers_per_topic: u32,
    /// Subscriptions per topic (each reads every message).
    #[serde(default = "one")]
    pub subscriptions_per_topic: u32,
    /// Consumers per subscription (partitions are split among them).
    #[serde(default = "one")]
    pub consumer_per_subscription: u32,
    /// Whether each subscription is a consumer group or a fixed assignment.
    #[serde(default)]
    pub consumer_mode: ConsumerMode,
    /// Group mode: the assignor the members propose first ("range" or "roundrobin"; both
    /// are offered, as the Java consumer offers its list).
    #[serde(default = "default_assignor")]
    pub partition_assignor: String,
    /// Total publish rate over all producers, msgs/s; 0 or negative = max rate.
    pub producer_rate: f64,
    /// Warm-up in seconds (its samples are not recorded; reconciliation still covers them).
    #[serde(default)]
    pub warmup_duration_seconds: Option<f64>,
    /// Warm-up in minutes (OMB's field; used if the seconds field is absent).
    #[serde(default)]
    pub warmup_duration_minutes: Option<f64>,
    /// Measured duration in seconds.
    #[serde(default)]
    pub test_duration_seconds: Option<f64>,
    /// Measured duration in minutes (OMB's field; used if the seconds field is absent).
    #[serde(default)]
    pub test_duration_minutes: Option<f64>,
    /// Producer `acks`: 0, 1 or -1 (all).
    #[serde(default = "one_i16")]
    pub acks: i16,
    /// Producer `linger.ms`.
    #[serde(default = "default_linger")]
    pub linger_ms: f64,
    /// Producer `batch.size` in bytes.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Producer `max.in.flight.requests.per.connection`.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// Producer `buffer.memory`: records held beyond this wait (open loop keeps their intended
    /// times, so the wait counts as latency).
    #[serde(default = "default_buffer")]
    pub buffer_memory: usize,
    /// Producer `request.timeout.ms`.
    #[serde(default = "default_timeout")]
    pub request_timeout_ms: u64,
    /// Compression codec.
    #[serde(default = "no_compression")]
    pub compression: CompressionCodec,
    /// Consumer `fetch.max.wait.ms`.
    #[serde(default = "default_fetch_wait")]
    pub fetch_max_wait_ms: i32,
    /// Consumer `max.partition.fetch.bytes`.
    #[serde(default = "default_partition_fetch")]
    pub max_partition_fetch_bytes: i32,
    /// How long consumers may take after the producers stop to read every acked message.
    #[serde(default = "default_drain")]
    pub drain_timeout_seconds: f64,
}

fn one() -> u32 {
    1
}
fn one_i16() -> i16 {
    1
}
fn no_key() -> KeyDistributor {
    KeyDistributor::NoKey
}
fn random_payload() -> PayloadKind {
    PayloadKind::Random
}
fn no_compression() -> CompressionCodec {
    CompressionCodec::None
}
fn default_linger() -> f64 {
    1.0
}
fn default_batch() -> usize {
    131_072
}
fn default_in_flight() -> usize {
    5
}
fn default_buffer() -> usize {
    32 * 1024 * 1024
}
fn default_timeout() -> u64 {
    30_000
}
fn default_fetch_wait() -> i32 {
    100
}
fn default_partition_fetch() -> i32 {
    1_048_576
}
fn default_assignor() -> String {
    "range".to_string()
}
fn default_drain() -> f64 {
    15.0
}

impl Workload {
    /// Parses workload TOML text.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, WorkloadError> {
        let w: Workload = toml::from_str(text).map_err(|e| WorkloadError::Parse {
            path: origin.to_string(),
            source: Box::new(e),
        })?;
        w.validate()?;
        Ok(w)
    }

    /// Reads and parses a workload file.
    pub fn load(path: &Path) -> Result<Self, WorkloadError> {
        let text = std::fs::read_to_string(path).map_err(|e| WorkloadError::Io {
            path: path.display().to_string(),
            source: e,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Checks ranges after parsing or after CLI overrides.
    pub fn validate(&self) -> Result<(), WorkloadError> {
        let bad = |m: &str| Err(WorkloadError::Invalid(m.to_string()));
        if self.topics == 0 || self.partitions_per_topic == 0 {
            return bad("topics and partitionsPerTopic must be >= 1");
        }
        if self.producers_per_topic == 0 {
            return bad("producersPerTopic must be >= 1");
        }
        if self.message_size < crate::payload::HEADER_LEN {
            return Err(WorkloadError::Invalid(format!(
                "messageSize must be >= {} (the bench header)",
                crate::payload::HEADER_LEN
            )));
        }
        if ![0, 1, -1].contains(&self.acks) {
            return bad("acks must be 0, 1 or -1 (all)");
        }
        if sluice::group::assignor::assignor_by_name(&self.partition_assignor).is_none() {
            return bad("partitionAssignor must be \"range\" or \"roundrobin\"");
        }
        if self.replication_factor < 1 {
            return bad("replicationFactor must be >= 1");
        }
        if self.max_in_flight == 0 {
            return bad("maxInFlight must be >= 1");
        }
        if !self.producer_rate.is_finite() || !self.linger_ms.is_finite() || self.linger_ms < 0.0 {
            return bad("producerRate and lingerMs must be finite, lingerMs >= 0");
        }
        let test = self.test_duration();
        if test.is_zero() || test > Duration::from_secs(24 * 3600) {
            return bad("test duration must be > 0 and at most 24 h");
        }
        if self.warmup_duration() > Duration::from_secs(24 * 3600) {
            return bad("warm-up duration must be at most 24 h");
        }
        Ok(())
    }

    /// The warm-up duration.
    pub fn warmup_duration(&self) -> Duration {
        secs(
            self.warmup_duration_seconds,
            self.warmup_duration_minutes,
            0.0,
        )
    }

    /// The measured duration.
    pub fn test_duration(&self) -> Duration {
        secs(self.test_duration_seconds, self.test_duration_minutes, 0.0)
    }

    /// Whether this is a max-rate (closed-loop, saturation-finding) run.
    pub fn is_max_rate(&self) -> bool {
        self.producer_rate <= 0.0
    }

    /// Total number of producers in the run.
    pub fn total_producers(&self) -> u32 {
        self.topics * self.producers_per_topic
    }
}

fn secs(s: Option<f64>, m: Option<f64>, default: f64) -> Duration {
    let v = s.or(m.map(|m| m * 60.0)).unwrap_or(default);
    if v.is_finite() && v > 0.0 {
        Duration::from_secs_f64(v.min(1e9))
    } else {
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_omb_vocabulary_with_defaults() {
        let w = Workload::from_toml(
            r#"
name = "1 topic / 16 partitions / 1KiB"
topics = 1
partitionsPerTopic = 16
messageSize = 1024
keyDistributor = "KEY_ROUND_ROBIN"
producersPerTopic = 2
consumerPerSubscription = 2
producerRate = 5000
warmupDurationSeconds = 2
testDurationMinutes = 0.5
compression = "lz4"
"#,
            "inline",
        )
        .unwrap();
        assert_eq!(w.partitions_per_topic, 16);
        assert_eq!(w.key_distributor, KeyDistributor::KeyRoundRobin);
        assert_eq!(w.test_duration(), Duration::from_secs(30));
        assert_eq!(w.warmup_duration(), Duration::from_secs(2));
        assert_eq!(w.acks, 1);
        assert_eq!(w.batch_size, 131_072);
        assert_eq!(w.compression, CompressionCodec::Lz4);
        assert!(!w.is_max_rate());
        assert_eq!(w.total_producers(), 2);
        assert_eq!(w.consumer_mode, ConsumerMode::Group);
        assert_eq!(w.partition_assignor, "range");
    }

    #[test]
    fn parses_consumer_mode_and_assignor() {
        let base = "name='x'\npartitionsPerTopic=4\nmessageSize=1024\nproducerRate=1\ntestDurationSeconds=1\n";
        let w = Workload::from_toml(
            &format!("{base}consumerMode='assign'\npartitionAssignor='roundrobin'\nsubscriptionsPerTopic=2\n"),
            "t",
        )
        .unwrap();
        assert_eq!(w.consumer_mode, ConsumerMode::Assign);
        assert_eq!(w.partition_assignor, "roundrobin");
        assert_eq!(w.subscriptions_per_topic, 2);
        assert!(Workload::from_toml(&format!("{base}consumerMode='both'\n"), "t").is_err());
        assert!(Workload::from_toml(&format!("{base}partitionAssignor='sticky'\n"), "t").is_err());
        assert_eq!("group".parse::<ConsumerMode>(), Ok(ConsumerMode::Group));
        assert!("x".parse::<ConsumerMode>().is_err());
    }

    #[test]
    fn rejects_bad_values_and_unknown_fields() {
        let base = "name='x'\npartitionsPerTopic=1\nmessageSize=1024\nproducerRate=1\ntestDurationSeconds=1\n";
        assert!(Workload::from_toml(base, "t").is_ok());
        assert!(Workload::from_toml(&format!("{base}acks=2\n"), "t").is_err());
        assert!(Workload::from_toml(&format!("{base}bogus=1\n"), "t").is_err());
        let small = base.replace("messageSize=1024", "messageSize=10");
        assert!(Workload::from_toml(&small, "t").is_err());
        let no_time = base.replace("testDurationSeconds=1\n", "");
        assert!(Workload::from_toml(&no_time, "t").is_err());
        assert!(Workload::from_toml("not toml [", "t").is_err());
    }

    #[test]
    fn shipped_workloads_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "toml") {
                Workload::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                n += 1;
            }
        }
        assert!(n >= 4);
    }
}
