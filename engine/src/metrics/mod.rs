//! Broker metrics, thread-per-core friendly.
//!
//! Every shard owns a [`ShardMetrics`] block of relaxed atomics that only its own thread
//! writes (the hot path reaches it through a thread-local set when the shard starts, so no
//! `Arc` is cloned and no lock is taken per request); the scraper reads all blocks and sums
//! them at scrape time. Per-partition gauges are not stored at all: the scraper asks each
//! owner shard for a [`PartitionSnapshot`] of its open logs when `/metrics` is requested.
//! A thread that is not a shard (tests, tools) records nothing.
//!
//! - [`histogram`]: fixed-bucket atomic latency histograms.
//! - [`encode`]: the Prometheus text format writer.

pub mod encode;
pub mod histogram;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use encode::{Kind, TextEncoder};
use histogram::{Histogram, HistogramSnapshot};

/// API keys below this bound get their own counters (Kafka's keys are < 100).
pub const API_KEYS: usize = 128;

/// Metric names reserved for features that are not wired into the broker yet; register them
/// with [`Metrics::register_counter`] / [`Metrics::register_gauge_fn`] when they land.
pub mod names {
    /// Counter: ISR shrinks (a follower dropped out of the in-sync set).
    pub const ISR_SHRINKS_TOTAL: &str = "sluice_isr_shrinks_total";
    /// Counter: ISR expansions (a follower caught up and rejoined).
    pub const ISR_EXPANDS_TOTAL: &str = "sluice_isr_expands_total";
    /// Counter: partition leader elections won by this broker.
    pub const LEADER_ELECTIONS_TOTAL: &str = "sluice_leader_elections_total";
    /// Counter: unclean leader elections.
    pub const UNCLEAN_LEADER_ELECTIONS_TOTAL: &str = "sluice_unclean_leader_elections_total";
    /// Gauge {group,topic,partition}: log end offset minus committed offset.
    pub const CONSUMER_GROUP_LAG: &str = "sluice_consumer_group_lag";
}

/// Counters of one shard. Aligned so that two shards' blocks never share a cache line.
#[repr(align(128))]
#[derive(Debug)]
pub struct ShardMetrics {
    /// The shard index.
    pub shard: usize,
    requests: Box<[AtomicU64]>,
    latency: Box<[Histogram]>,
    /// (api key, error label) -> count; errors are rare, and only this shard and the scraper
    /// ever take the lock.
    errors: Mutex<BTreeMap<(i16, String), u64>>,
    received_bytes: AtomicU64,
    sent_bytes: AtomicU64,
    connections_accepted: AtomicU64,
    connections_open: AtomicI64,
    produce_records: AtomicU64,
    produce_bytes: AtomicU64,
    fetch_bytes: AtomicU64,
    /// Fetch requests by [`FetchRequestKind`].
    fetch_kinds: [AtomicU64; 3],
    fetch_sessions: AtomicI64,
    fetch_session_partitions: AtomicI64,
    fetch_sessions_created: AtomicU64,
    fetch_session_evictions: AtomicU64,
    fsync: Histogram,
    uring_submitted: AtomicU64,
    uring_completed: AtomicU64,
    runtime: OnceLock<tokio::runtime::Handle>,
}

impl ShardMetrics {
    fn new(shard: usize) -> Self {
        ShardMetrics {
            shard,
            requests: (0..API_KEYS).map(|_| AtomicU64::new(0)).collect(),
            latency: (0..API_KEYS).map(|_| Histogram::default()).collect(),
            errors: Mutex::new(BTreeMap::new()),
            received_bytes: AtomicU64::new(0),
            sent_bytes: AtomicU64::new(0),
            connections_accepted: AtomicU64::new(0),
            connections_open: AtomicI64::new(0),
            produce_records: AtomicU64::new(0),
            produce_bytes: AtomicU64::new(0),
            fetch_bytes: AtomicU64::new(0),
            fetch_kinds: Default::default(),
            fetch_sessions: AtomicI64::new(0),
            fetch_session_partitions: AtomicI64::new(0),
            fetch_sessions_created: AtomicU64::new(0),
            fetch_session_evictions: AtomicU64::new(0),
            fsync: Histogram::default(),
            uring_submitted: AtomicU64::new(0),
            uring_completed: AtomicU64::new(0),
            runtime: OnceLock::new(),
        }
    }

    fn add_error(&self, api: i16, label: String) {
        // A poisoned lock only means a panic elsewhere while counting; the map is still valid.
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        *errors.entry((api, label)).or_insert(0) += 1;
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<ShardMetrics>>> = const { RefCell::new(None) };
}

fn with_current(f: impl FnOnce(&ShardMetrics)) {
    CURRENT.with(|c| {
        if let Some(m) = c.borrow().as_ref() {
            f(m)
        }
    });
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// One handled request: its API key, how long the broker took, and the error that closed the
/// connection, if any (a Kafka error name such as `INVALID_REQUEST`).
pub fn record_request(api_key: i16, elapsed: Duration, error: Option<&str>) {
    with_current(|m| {
        let idx = usize::try_from(api_key).unwrap_or(usize::MAX);
        if let (Some(c), Some(h)) = (m.requests.get(idx), m.latency.get(idx)) {
            add(c, 1);
            h.observe(elapsed);
        }
        if let Some(e) = error {
            m.add_error(api_key, e.to_string());
        }
    });
}

/// A Kafka error code returned to a client for one partition (or request) of `api_key`.
pub fn record_error_code(api_key: i16, code: i16) {
    if code == 0 {
        return;
    }
    with_current(|m| m.add_error(api_key, error_name(code)));
}

/// Counts the partition error codes of a Produce response.
pub fn record_produce_errors(resp: &kafka_protocol::messages::ProduceResponse) {
    for t in &resp.responses {
        for p in &t.partition_responses {
            record_error_code(0, p.error_code);
        }
    }
}

/// Bytes read from client sockets.
pub fn record_received(bytes: u64) {
    with_current(|m| add(&m.received_bytes, bytes));
}

/// Bytes written to client sockets.
pub fn record_sent(bytes: u64) {
    with_current(|m| add(&m.sent_bytes, bytes));
}

/// A client connection was accepted.
pub fn connection_opened() {
    with_current(|m| {
        add(&m.connections_accepted, 1);
        m.connections_open.fetch_add(1, Ordering::Relaxed);
    });
}

/// A client connection closed.
pub fn connection_closed() {
    with_current(|m| {
        m.connections_open.fetch_sub(1, Ordering::Relaxed);
    });
}

/// Records and record-batch bytes appended by Produce.
pub fn record_produce(records: u64, bytes: u64) {
    with_current(|m| {
        add(&m.produce_records, records);
        add(&m.produce_bytes, bytes);
    });
}

/// Record bytes written to clients in Fetch responses.
pub fn record_fetch(bytes: u64) {
    with_current(|m| add(&m.fetch_bytes, bytes));
}

/// How a Fetch request used incremental fetch sessions (KIP-227).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchRequestKind {
    /// A full fetch without a session (epoch -1, a version below 7, or a follower).
    Sessionless = 0,
    /// A full fetch asking for a session (epoch 0).
    Full = 1,
    /// An incremental fetch in an existing session.
    Incremental = 2,
}

impl FetchRequestKind {
    const LABELS: [&'static str; 3] = ["sessionless", "full", "incremental"];
}

/// A Fetch request of `kind` was received.
pub fn record_fetch_request(kind: FetchRequestKind) {
    with_current(|m| add(&m.fetch_kinds[kind as usize], 1));
}

/// The calling shard's fetch session cache now holds `sessions` sessions over `partitions`
/// partitions.
pub fn set_fetch_sessions(sessions: usize, partitions: usize) {
    with_current(|m| {
        m.fetch_sessions.store(
            i64::try_from(sessions).unwrap_or(i64::MAX),
            Ordering::Relaxed,
        );
        m.fetch_session_partitions.store(
            i64::try_from(partitions).unwrap_or(i64::MAX),
            Ordering::Relaxed,
        );
    });
}

/// The calling shard created a fetch session, evicting `evicted` others for it.
pub fn record_fetch_session_created(evicted: u64) {
    with_current(|m| {
        add(&m.fetch_sessions_created, 1);
        add(&m.fetch_session_evictions, evicted);
    });
}

/// One fsync/fdatasync and how long it took.
pub fn record_fsync(elapsed: Duration) {
    with_current(|m| m.fsync.observe(elapsed));
}

/// An io_uring operation was submitted by Sluice code.
pub fn uring_submitted() {
    with_current(|m| add(&m.uring_submitted, 1));
}

/// An io_uring operation submitted by Sluice code completed (successfully or not).
pub fn uring_completed() {
    with_current(|m| add(&m.uring_completed, 1));
}

/// Kafka's name for an error code in SCREAMING_SNAKE case (`UNKNOWN_TOPIC_OR_PARTITION`).
pub fn error_name(code: i16) -> String {
    use kafka_protocol::error::ResponseError;
    match ResponseError::try_from_code(code) {
        None => "NONE".to_string(),
        Some(ResponseError::Unknown(c)) => format!("UNKNOWN_CODE_{c}"),
        Some(e) => screaming_snake(&e.to_string()),
    }
}

fn screaming_snake(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 8);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// Kafka's name for an API key (`Produce`, `Fetch`, ...), or the number for unknown keys.
pub fn api_name(api_key: i16) -> String {
    match kafka_protocol::messages::ApiKey::try_from(api_key) {
        Ok(k) => format!("{k:?}"),
        Err(_) => format!("Unknown{api_key}"),
    }
}

/// A group's committed offset for one partition, read on the coordinator's shard at scrape time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOffsetSnapshot {
    /// Group id.
    pub group: String,
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: i32,
    /// Committed offset.
    pub committed: i64,
}

/// The state of one open partition, read on its owner shard at scrape time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionSnapshot {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: i32,
    /// Log start offset.
    pub log_start_offset: i64,
    /// Log end offset.
    pub log_end_offset: i64,
    /// High watermark (equals the log end offset while there is no replication).
    pub high_watermark: i64,
    /// Bytes in the partition's segments.
    pub size_bytes: u64,
    /// Number of segments.
    pub segments: u64,
    /// Replicas assigned (1 on a cluster of one).
    pub replicas: u32,
    /// Replicas in sync (1 on a cluster of one: the leader itself).
    pub in_sync_replicas: u32,
    /// The log cannot serve (failed to open, or went offline after an I/O error).
    pub offline: bool,
}

/// Where the broker is in its life, for `/ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Readiness {
    /// Shards are opening partitions; not accepting yet.
    Starting = 0,
    /// Every shard listens and has opened its partitions.
    Ready = 1,
    /// Shutting down: draining connections, then closing logs.
    Draining = 2,
}

/// A counter registered by a feature outside this module.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge registered by a feature outside this module.
#[derive(Debug, Clone, Default)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    /// Adds `d` (may be negative).
    pub fn add(&self, d: i64) {
        self.0.fetch_add(d, Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Samples computed at scrape time: `(labels, value)` pairs.
pub type GaugeFn = Box<dyn Fn() -> Vec<(Vec<(String, String)>, f64)> + Send + Sync>;

enum Source {
    Counter(Counter),
    Gauge(Gauge),
    Fn(GaugeFn),
}

struct Registered {
    name: &'static str,
    help: &'static str,
    labels: Vec<(String, String)>,
    source: Source,
}

/// The broker's metrics: one block per shard plus families registered by other features.
pub struct Metrics {
    shards: Vec<Arc<ShardMetrics>>,
    readiness: AtomicU8,
    registered: Mutex<Vec<Registered>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("shards", &self.shards.len())
            .finish()
    }
}

impl Metrics {
    /// Metrics for a broker with `shards` shards.
    pub fn new(shards: usize) -> Self {
        Metrics {
            shards: (0..shards)
                .map(|i| Arc::new(ShardMetrics::new(i)))
                .collect(),
            readiness: AtomicU8::new(Readiness::Starting as u8),
            registered: Mutex::new(Vec::new()),
        }
    }

    /// Makes the calling thread record into shard `id`'s block. Call on the shard thread
    /// inside its runtime (the runtime handle is kept to read the shard's busy time).
    pub fn attach_shard(&self, id: usize) {
        let Some(m) = self.shards.get(id) else {
            return;
        };
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let _ = m.runtime.set(handle);
        }
        CURRENT.with(|c| *c.borrow_mut() = Some(m.clone()));
    }

    /// Moves the broker to `r` (reported by `/ready`).
    pub fn set_readiness(&self, r: Readiness) {
        self.readiness.store(r as u8, Ordering::Release);
    }

    /// The current readiness.
    pub fn readiness(&self) -> Readiness {
        match self.readiness.load(Ordering::Acquire) {
            1 => Readiness::Ready,
            2 => Readiness::Draining,
            _ => Readiness::Starting,
        }
    }

    fn register(&self, r: Registered) {
        debug_assert!(encode::valid_name(r.name));
        let mut reg = self.registered.lock().unwrap_or_else(|p| p.into_inner());
        reg.push(r);
    }

    /// Registers a counter series `name{labels}` and returns the handle to bump it.
    /// Registering the same name with other labels adds a series to the same family.
    pub fn register_counter(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
    ) -> Counter {
        let c = Counter::default();
        self.register(Registered {
            name,
            help,
            labels: owned_labels(labels),
            source: Source::Counter(c.clone()),
        });
        c
    }

    /// Registers a gauge series `name{labels}` and returns the handle to set it.
    pub fn register_gauge(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
    ) -> Gauge {
        let g = Gauge::default();
        self.register(Registered {
            name,
            help,
            labels: owned_labels(labels),
            source: Source::Gauge(g.clone()),
        });
        g
    }

    /// Registers a gauge family whose samples `f` computes at every scrape (e.g. group lag).
    /// `f` runs on the admin thread and must not block for long.
    pub fn register_gauge_fn(&self, name: &'static str, help: &'static str, f: GaugeFn) {
        self.register(Registered {
            name,
            help,
            labels: Vec::new(),
            source: Source::Fn(f),
        });
    }

    /// Renders every metric. `partitions` are the owners' snapshots gathered for this scrape;
    /// `mailbox_jobs[i]` is shard `i`'s queue length.
    pub fn render(
        &self,
        partitions: &[PartitionSnapshot],
        group_offsets: &[GroupOffsetSnapshot],
        mailbox_jobs: &[usize],
    ) -> String {
        let mut e = TextEncoder::new();
        self.render_requests(&mut e);
        self.render_shards(&mut e, mailbox_jobs);
        self.render_fetch_sessions(&mut e);
        render_partitions(&mut e, partitions);
        render_group_lag(&mut e, partitions, group_offsets);
        self.render_registered(&mut e);
        e.finish()
    }

    fn sum(&self, f: impl Fn(&ShardMetrics) -> u64) -> f64 {
        self.shards.iter().map(|m| f(m)).sum::<u64>() as f64
    }

    fn render_requests(&self, e: &mut TextEncoder) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        e.family(
            "sluice_requests_total",
            "Kafka requests handled, by API.",
            Kind::Counter,
        );
        let mut latency: Vec<(usize, HistogramSnapshot)> = Vec::new();
        for api in 0..API_KEYS {
            let n: u64 = self.shards.iter().map(|m| load(&m.requests[api])).sum();
            if n == 0 {
                continue;
            }
            let name = api_name(api as i16);
            e.sample("sluice_requests_total", &[("api", &name)], n as f64);
            let mut h = HistogramSnapshot::default();
            for m in &self.shards {
                h.merge(&m.latency[api].snapshot());
            }
            latency.push((api, h));
        }
        e.family(
            "sluice_request_duration_seconds",
            "Time from reading a request to its response being ready (excludes the socket write), by API.",
            Kind::Histogram,
        );
        for (api, h) in &latency {
            let name = api_name(*api as i16);
            e.histogram("sluice_request_duration_seconds", &[("api", &name)], h);
        }
        let mut errors: BTreeMap<(i16, String), u64> = BTreeMap::new();
        for m in &self.shards {
            let map = m.errors.lock().unwrap_or_else(|p| p.into_inner());
            for (k, v) in map.iter() {
                *errors.entry(k.clone()).or_insert(0) += v;
            }
        }
        e.family(
            "sluice_request_errors_total",
            "Errors returned to clients (per partition for Produce and Fetch) or that closed the connection, by API and Kafka error name.",
            Kind::Counter,
        );
        for ((api, error), n) in &errors {
            let name = api_name(*api);
            e.sample(
                "sluice_request_errors_total",
                &[("api", &name), ("error", error)],
                *n as f64,
            );
        }
        type Total = (&'static str, &'static str, fn(&ShardMetrics) -> u64);
        let totals: [Total; 5] = [
            (
                "sluice_network_received_bytes_total",
                "Bytes read from client connections (request frames with their size prefix).",
                |m| m.received_bytes.load(Ordering::Relaxed),
            ),
            (
                "sluice_network_sent_bytes_total",
                "Bytes written to client connections (responses, including sendfile).",
                |m| m.sent_bytes.load(Ordering::Relaxed),
            ),
            (
                "sluice_produce_records_total",
                "Records appended by Produce requests.",
                |m| m.produce_records.load(Ordering::Relaxed),
            ),
            (
                "sluice_produce_bytes_total",
                "Record-batch bytes appended by Produce requests.",
                |m| m.produce_bytes.load(Ordering::Relaxed),
            ),
            (
                "sluice_fetch_bytes_total",
                "Record-batch bytes returned by Fetch requests.",
                |m| m.fetch_bytes.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, f) in totals {
            e.family(name, help, Kind::Counter);
            e.sample(name, &[], self.sum(f));
        }
        e.family(
            "sluice_fsync_duration_seconds",
            "Duration of fsync/fdatasync calls on log, index and metadata files.",
            Kind::Histogram,
        );
        let mut fsync = HistogramSnapshot::default();
        for m in &self.shards {
            fsync.merge(&m.fsync.snapshot());
        }
        e.histogram("sluice_fsync_duration_seconds", &[], &fsync);
    }

    fn render_fetch_sessions(&self, e: &mut TextEncoder) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        e.family(
            "sluice_fetch_requests_total",
            "Fetch requests by how they used incremental fetch sessions (KIP-227): sessionless, full (asking for a session) or incremental.",
            Kind::Counter,
        );
        for (i, kind) in FetchRequestKind::LABELS.iter().enumerate() {
            let n = self.sum(|m| load(&m.fetch_kinds[i]));
            e.sample("sluice_fetch_requests_total", &[("kind", kind)], n);
        }
        e.family(
            "sluice_fetch_sessions",
            "Incremental fetch sessions open, by the shard that holds them.",
            Kind::Gauge,
        );
        for m in &self.shards {
            let shard = m.shard.to_string();
            let v = m.fetch_sessions.load(Ordering::Relaxed) as f64;
            e.sample("sluice_fetch_sessions", &[("shard", &shard)], v);
        }
        e.family(
            "sluice_fetch_session_partitions",
            "Partitions cached in open incremental fetch sessions, by shard.",
            Kind::Gauge,
        );
        for m in &self.shards {
            let shard = m.shard.to_string();
            let v = m.fetch_session_partitions.load(Ordering::Relaxed) as f64;
            e.sample("sluice_fetch_session_partitions", &[("shard", &shard)], v);
        }
        type Total = (&'static str, &'static str, fn(&ShardMetrics) -> u64);
        let totals: [Total; 2] = [
            (
                "sluice_fetch_sessions_created_total",
                "Incremental fetch sessions created.",
                |m| m.fetch_sessions_created.load(Ordering::Relaxed),
            ),
            (
                "sluice_fetch_session_evictions_total",
                "Incremental fetch sessions evicted to make room for a new one.",
                |m| m.fetch_session_evictions.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, f) in totals {
            e.family(name, help, Kind::Counter);
            e.sample(name, &[], self.sum(f));
        }
    }

    fn render_shards(&self, e: &mut TextEncoder, mailbox_jobs: &[usize]) {
        type Get = fn(&ShardMetrics) -> f64;
        let families: [(&str, &str, Kind, Get); 5] = [
            (
                "sluice_connections_open",
                "Client connections currently open, by shard.",
                Kind::Gauge,
                |m| m.connections_open.load(Ordering::Relaxed) as f64,
            ),
            (
                "sluice_connections_accepted_total",
                "Client connections accepted, by shard.",
                Kind::Counter,
                |m| m.connections_accepted.load(Ordering::Relaxed) as f64,
            ),
            (
                "sluice_io_uring_submitted_total",
                "io_uring operations submitted by Sluice's file I/O, by shard.",
                Kind::Counter,
                |m| m.uring_submitted.load(Ordering::Relaxed) as f64,
            ),
            (
                "sluice_io_uring_completed_total",
                "io_uring operations completed for Sluice's file I/O, by shard.",
                Kind::Counter,
                |m| m.uring_completed.load(Ordering::Relaxed) as f64,
            ),
            (
                "sluice_shard_busy_seconds_total",
                "Time the shard's runtime spent running tasks rather than waiting for events.",
                Kind::Counter,
                |m| {
                    m.runtime
                        .get()
                        .map(|h| h.metrics().worker_total_busy_duration(0).as_secs_f64())
                        .unwrap_or(0.0)
                },
            ),
        ];
        for (name, help, kind, get) in families {
            e.family(name, help, kind);
            for m in &self.shards {
                let shard = m.shard.to_string();
                e.sample(name, &[("shard", &shard)], get(m));
            }
        }
        e.family(
            "sluice_shard_mailbox_jobs",
            "Cross-shard jobs queued for the shard and not yet started.",
            Kind::Gauge,
        );
        for (i, n) in mailbox_jobs.iter().enumerate() {
            let shard = i.to_string();
            e.sample("sluice_shard_mailbox_jobs", &[("shard", &shard)], *n as f64);
        }
    }

    fn render_registered(&self, e: &mut TextEncoder) {
        let reg = self.registered.lock().unwrap_or_else(|p| p.into_inner());
        let mut by_name: BTreeMap<&str, Vec<&Registered>> = BTreeMap::new();
        for r in reg.iter() {
            by_name.entry(r.name).or_default().push(r);
        }
        for (name, series) in by_name {
            let kind = match series[0].source {
                Source::Counter(_) => Kind::Counter,
                Source::Gauge(_) | Source::Fn(_) => Kind::Gauge,
            };
            e.family(name, series[0].help, kind);
            for r in series {
                let labels = |l: &[(String, String)]| -> Vec<(String, String)> { l.to_vec() };
                let samples: Vec<(Vec<(String, String)>, f64)> = match &r.source {
                    Source::Counter(c) => vec![(labels(&r.labels), c.get() as f64)],
                    Source::Gauge(g) => vec![(labels(&r.labels), g.get() as f64)],
                    Source::Fn(f) => f(),
                };
                for (l, v) in samples {
                    let borrowed: Vec<(&str, &str)> =
                        l.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    e.sample(name, &borrowed, v);
                }
            }
        }
    }
}

fn owned_labels(labels: &[(&str, &str)]) -> Vec<(String, String)> {
    labels
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

/// Consumer lag as `kafka-consumer-groups.sh` shows it: the partition's high watermark minus the
/// group's committed offset (never negative), for partitions whose log is open here.
fn render_group_lag(
    e: &mut TextEncoder,
    partitions: &[PartitionSnapshot],
    group_offsets: &[GroupOffsetSnapshot],
) {
    let hw: HashMap<(&str, i32), i64> = partitions
        .iter()
        .filter(|p| !p.offline)
        .map(|p| ((p.topic.as_str(), p.partition), p.high_watermark))
        .collect();
    e.family(
        names::CONSUMER_GROUP_LAG,
        "Records between a group's committed offset and the partition's high watermark.",
        Kind::Gauge,
    );
    for g in group_offsets {
        let Some(&end) = hw.get(&(g.topic.as_str(), g.partition)) else {
            continue;
        };
        let partition = g.partition.to_string();
        e.sample(
            names::CONSUMER_GROUP_LAG,
            &[
                ("group", &g.group),
                ("topic", &g.topic),
                ("partition", &partition),
            ],
            (end - g.committed).max(0) as f64,
        );
    }
}

fn render_partitions(e: &mut TextEncoder, partitions: &[PartitionSnapshot]) {
    type Get = fn(&PartitionSnapshot) -> f64;
    let families: [(&str, &str, Get); 5] = [
        (
            "sluice_partition_log_end_offset",
            "Offset the next appended record will get.",
            |p| p.log_end_offset as f64,
        ),
        (
            "sluice_partition_high_watermark",
            "Offset below which records are committed and visible to consumers.",
            |p| p.high_watermark as f64,
        ),
        (
            "sluice_partition_log_start_offset",
            "First offset still in the log (after retention and deletions).",
            |p| p.log_start_offset as f64,
        ),
        (
            "sluice_partition_size_bytes",
            "Bytes in the partition's segment files.",
            |p| p.size_bytes as f64,
        ),
        (
            "sluice_partition_segments",
            "Segments in the partition's log.",
            |p| p.segments as f64,
        ),
    ];
    for (name, help, get) in families {
        e.family(name, help, Kind::Gauge);
        for p in partitions.iter().filter(|p| !p.offline) {
            let partition = p.partition.to_string();
            e.sample(
                name,
                &[("topic", &p.topic), ("partition", &partition)],
                get(p),
            );
        }
    }
    let under = partitions
        .iter()
        .filter(|p| !p.offline && p.in_sync_replicas < p.replicas)
        .count();
    let offline = partitions.iter().filter(|p| p.offline).count();
    e.family(
        "sluice_under_replicated_partitions",
        "Partitions led here whose in-sync replica set is smaller than their replica set.",
        Kind::Gauge,
    );
    e.sample("sluice_under_replicated_partitions", &[], under as f64);
    e.family(
        "sluice_offline_partitions",
        "Partitions assigned here whose log cannot serve (failed to open or I/O error).",
        Kind::Gauge,
    );
    e.sample("sluice_offline_partitions", &[], offline as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attached(m: &Metrics) {
        m.attach_shard(0);
    }

    #[test]
    fn counters_recorded_on_a_shard_thread_are_rendered() {
        let m = Arc::new(Metrics::new(2));
        let m2 = m.clone();
        std::thread::spawn(move || {
            attached(&m2);
            record_request(0, Duration::from_millis(1), None);
            record_request(0, Duration::from_millis(3), Some("INVALID_REQUEST"));
            record_error_code(1, 3);
            record_error_code(1, 0);
            record_received(100);
            record_produce(5, 500);
            connection_opened();
        })
        .join()
        .unwrap();
        // Not a shard thread: nothing recorded.
        record_request(0, Duration::from_millis(1), None);
        let p = PartitionSnapshot {
            topic: "t".into(),
            partition: 0,
            log_start_offset: 0,
            log_end_offset: 5,
            high_watermark: 5,
            size_bytes: 500,
            segments: 1,
            replicas: 1,
            in_sync_replicas: 1,
            offline: false,
        };
        let text = m.render(&[p], &[], &[0, 2]);
        assert!(
            text.contains("sluice_requests_total{api=\"Produce\"} 2\n"),
            "{text}"
        );
        assert!(text.contains(
            "sluice_request_errors_total{api=\"Produce\",error=\"INVALID_REQUEST\"} 1\n"
        ));
        assert!(text.contains(
            "sluice_request_errors_total{api=\"Fetch\",error=\"UNKNOWN_TOPIC_OR_PARTITION\"} 1\n"
        ));
        assert!(text.contains("sluice_network_received_bytes_total 100\n"));
        assert!(text.contains("sluice_produce_records_total 5\n"));
        assert!(text.contains("sluice_connections_open{shard=\"0\"} 1\n"));
        assert!(text.contains("sluice_connections_open{shard=\"1\"} 0\n"));
        assert!(text.contains("sluice_shard_mailbox_jobs{shard=\"1\"} 2\n"));
        assert!(text.contains("sluice_partition_log_end_offset{topic=\"t\",partition=\"0\"} 5\n"));
        assert!(text.contains("sluice_under_replicated_partitions 0\n"));
        assert!(text.contains("sluice_offline_partitions 0\n"));
        assert!(text.contains("sluice_request_duration_seconds_count{api=\"Produce\"} 2\n"));
    }

    #[test]
    fn registered_families_group_their_series() {
        let m = Metrics::new(1);
        let a = m.register_counter(names::ISR_SHRINKS_TOTAL, "ISR shrinks.", &[("topic", "a")]);
        let _b = m.register_counter(names::ISR_SHRINKS_TOTAL, "ISR shrinks.", &[("topic", "b")]);
        a.add(2);
        m.register_gauge_fn(
            names::CONSUMER_GROUP_LAG,
            "Lag.",
            Box::new(|| vec![(vec![("group".to_string(), "g".to_string())], 7.0)]),
        );
        let text = m.render(&[], &[], &[0]);
        assert_eq!(
            text.matches("# TYPE sluice_isr_shrinks_total counter")
                .count(),
            1
        );
        assert!(text.contains("sluice_isr_shrinks_total{topic=\"a\"} 2\n"));
        assert!(text.contains("sluice_isr_shrinks_total{topic=\"b\"} 0\n"));
        assert!(text.contains("sluice_consumer_group_lag{group=\"g\"} 7\n"));
    }

    #[test]
    fn offline_and_under_replicated_are_counted() {
        let m = Metrics::new(1);
        let base = PartitionSnapshot {
            topic: "t".into(),
            partition: 0,
            log_start_offset: 0,
            log_end_offset: 0,
            high_watermark: 0,
            size_bytes: 0,
            segments: 1,
            replicas: 3,
            in_sync_replicas: 2,
            offline: false,
        };
        let off = PartitionSnapshot {
            partition: 1,
            offline: true,
            ..base.clone()
        };
        let text = m.render(&[base, off], &[], &[0]);
        assert!(text.contains("sluice_under_replicated_partitions 1\n"));
        assert!(text.contains("sluice_offline_partitions 1\n"));
        assert!(!text.contains("partition=\"1\""));
    }

    #[test]
    fn names_follow_kafka() {
        assert_eq!(error_name(3), "UNKNOWN_TOPIC_OR_PARTITION");
        assert_eq!(error_name(1), "OFFSET_OUT_OF_RANGE");
        assert_eq!(api_name(0), "Produce");
        assert_eq!(api_name(1), "Fetch");
        assert_eq!(api_name(-5), "Unknown-5");
    }
}
