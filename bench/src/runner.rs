//! One benchmark run: create the topic, start consumers at the log end, run producers through
//! warm-up and the measured window, drain consumers, reconcile, and collect the results.

use crate::client::{cluster, Connection};
use crate::consumer::{run_consumer, stop_latency, ConsumerSpec};
use crate::group_consumer::{
    run_group_consumer, GroupConsumerSpec, GroupReport, GroupShared, GROUP_REQUEST_TIMEOUT,
};
use crate::ledger::{Ledger, Reconciliation};
use crate::plot::Marker;
use crate::producer::{run_producer, ProducerSpec};
use crate::recorder::{merge, new_histogram, Percentiles};
use crate::workload::{ConsumerMode, PayloadKind, Workload};
use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use sluice::security::client::Security;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long a run waits for its consumer groups to be stable before producing (covers the
/// broker's `group.initial.rebalance.delay.ms`, 3 s by default, and a rebalance or two).
const GROUP_SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Monotonic counters shared by producers, consumers and the sampler.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages written to brokers.
    pub sent: AtomicU64,
    /// Messages acknowledged.
    pub acked: AtomicU64,
    /// Value bytes acknowledged.
    pub acked_bytes: AtomicU64,
    /// Encoded batch bytes acknowledged (after compression).
    pub acked_wire_bytes: AtomicU64,
    /// Messages whose produce failed.
    pub failed: AtomicU64,
    /// Messages of this run consumed.
    pub consumed: AtomicU64,
    /// Value bytes consumed.
    pub consumed_bytes: AtomicU64,
}

/// State shared by every task of a run.
#[derive(Debug)]
pub struct Shared {
    /// Counters.
    pub counters: Counters,
    /// Acked/consumed ledger.
    pub ledger: Ledger,
    /// Samples whose intended time is before this are warm-up and not recorded; set once,
    /// when the schedule is fixed (after consumer groups are stable).
    measure_from: OnceLock<Instant>,
    /// Stands for "not scheduled yet": later than any sample.
    never: Instant,
    interval_publish: Mutex<Histogram<u64>>,
    interval_e2e: Mutex<Histogram<u64>>,
}

impl Shared {
    /// Shared state for `producers` producers read by one subscription, measuring from
    /// `measure_from`.
    pub fn new(producers: usize, measure_from: Instant) -> Self {
        let s = Self::unscheduled(producers, 1);
        s.schedule(measure_from);
        s
    }

    /// Shared state for `producers` producers each read by `subscriptions` subscriptions,
    /// whose measured window is not known yet (see [`Shared::schedule`]).
    pub fn unscheduled(producers: usize, subscriptions: usize) -> Self {
        Shared {
            counters: Counters::default(),
            ledger: Ledger::with_subscriptions(producers, subscriptions),
            measure_from: OnceLock::new(),
            never: Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600),
            interval_publish: Mutex::new(new_histogram()),
            interval_e2e: Mutex::new(new_histogram()),
        }
    }

    /// Fixes the start of the measured window (the first call wins).
    pub fn schedule(&self, measure_from: Instant) {
        let _ = self.measure_from.set(measure_from);
    }

    /// Samples whose intended time is before this are warm-up and not recorded.
    pub fn measure_from(&self) -> Instant {
        self.measure_from.get().copied().unwrap_or(self.never)
    }

    /// The publish-latency histogram of the current one-second interval.
    pub fn lock_interval_publish(&self) -> MutexGuard<'_, Histogram<u64>> {
        self.interval_publish
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The end-to-end-latency histogram of the current one-second interval.
    pub fn lock_interval_e2e(&self) -> MutexGuard<'_, Histogram<u64>> {
        self.interval_e2e.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One row of `timeseries.csv`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Sample {
    /// Seconds since producers started.
    pub t: f64,
    /// Whether this interval is part of the warm-up.
    pub warmup: bool,
    /// Acknowledged msgs/s.
    pub publish_rate: f64,
    /// Acknowledged MB/s (value bytes, 10^6).
    pub publish_mb: f64,
    /// Consumed msgs/s.
    pub consume_rate: f64,
    /// Consumed MB/s.
    pub consume_mb: f64,
    /// Acknowledged but not yet consumed.
    pub backlog: i64,
    /// Failed msgs in the interval.
    pub failed: u64,
    /// Publish latency p50 in the interval (ms).
    pub publish_p50_ms: f64,
    /// Publish latency p99 in the interval (ms).
    pub publish_p99_ms: f64,
    /// End-to-end p50 in the interval (ms).
    pub e2e_p50_ms: f64,
    /// End-to-end p99 in the interval (ms).
    pub e2e_p99_ms: f64,
}

/// Options that are not part of the workload.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Bootstrap "host:port".
    pub bootstrap: String,
    /// Topic name prefix (a random suffix is added).
    pub topic_prefix: String,
    /// Worker threads (0 = number of CPUs).
    pub threads: usize,
    /// Seed for payloads and keys.
    pub seed: u64,
    /// Show a progress bar (only drawn on a terminal).
    pub progress: bool,
    /// Extra events to mark on the time axis (e.g. faults a scenario injects at known times).
    pub markers: Vec<Marker>,
    /// TLS and SASL settings of every connection (`security.protocol` and friends).
    pub security: Security,
}

/// Everything a run measured.
#[derive(Debug)]
pub struct RunOutcome {
    /// The workload run.
    pub workload: Workload,
    /// Topic used.
    pub topic: String,
    /// Publish latency, CO-corrected (from intended send time), us.
    pub publish: Histogram<u64>,
    /// Publish latency from the actual send time, us.
    pub publish_uncorrected: Histogram<u64>,
    /// End-to-end latency from intended send time, us.
    pub e2e: Histogram<u64>,
    /// Per-second samples.
    pub timeseries: Vec<Sample>,
    /// Reconciliation.
    pub reconciliation: Reconciliation,
    /// Measured-window averages.
    pub rates: Rates,
    /// First errors seen.
    pub errors: Vec<String>,
    /// Messages generated but never sent.
    pub unsent: u64,
    /// Events on the time axis: warm-up end plus `RunOptions::markers`.
    pub markers: Vec<Marker>,
    /// Consumer groups (group mode): members, generations, who owned which partition when.
    pub groups: Vec<GroupReport>,
    /// When the producers' schedule started: t = 0 of `timeseries` and `markers`.
    pub started: Instant,
}

/// Average rates over the measured window.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct Rates {
    /// Measured window length in seconds.
    pub window_seconds: f64,
    /// Target publish rate (msgs/s); 0 for max rate.
    pub target_rate: f64,
    /// Acknowledged msgs/s.
    pub publish_msgs_per_sec: f64,
    /// Acknowledged MB/s (value bytes).
    pub publish_mb_per_sec: f64,
    /// Acknowledged MB/s on the wire (encoded, compressed batches).
    pub publish_wire_mb_per_sec: f64,
    /// Consumed msgs/s.
    pub consume_msgs_per_sec: f64,
    /// Consumed MB/s.
    pub consume_mb_per_sec: f64,
    /// Largest backlog seen (msgs).
    pub max_backlog: i64,
    /// CPU time (user + system) the harness process used per second of the run, in cores:
    /// what the load generator took from a machine it shares with the broker.
    #[serde(default)]
    pub harness_cpu_cores: f64,
}

/// User + system CPU seconds used by this process so far (0 if unavailable).
fn process_cpu_seconds() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_SELF).map_or(0.0, |u| {
        let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
        t(u.user_time()) + t(u.system_time())
    })
}

fn payload_template(w: &Workload, seed: u64) -> Result<Bytes> {
    if let Some(f) = &w.payload_file {
        let b = std::fs::read(f).with_context(|| format!("reading payload file {f}"))?;
        if b.is_empty() {
            return Err(anyhow!("payload file {f} is empty"));
        }
        return Ok(Bytes::from(b));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let len = w.message_size.max(64) * 4;
    Ok(match w.payload {
        PayloadKind::Random => {
            let mut v = vec![0u8; len];
            rng.fill_bytes(&mut v);
            Bytes::from(v)
        }
        PayloadKind::Text => {
            const WORDS: &[&str] = &[
                "stream",
                "partition",
                "offset",
                "segment",
                "leader",
                "replica",
                "commit",
                "broker",
                "consumer",
                "producer",
                "batch",
                "record",
                "index",
                "log",
                "the",
                "a",
            ];
            let mut s = String::with_capacity(len + 16);
            while s.len() < len {
                s.push_str(WORDS[rng.gen_range(0..WORDS.len())]);
                s.push(' ');
            }
            Bytes::from(s)
        }
    })
}

/// Runs a workload against a broker. Bounded: warm-up + test + drain timeout + request
/// timeouts.
pub fn run(workload: &Workload, opts: &RunOptions) -> Result<RunOutcome> {
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        opts.threads
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(run_async(workload.clone(), opts.clone()))
}

/// How long the start offsets may take while leadership moves (a fault plan may start
/// before the run has asked for them).
const START_OFFSETS_TIMEOUT: Duration = Duration::from_secs(30);

/// The log end of each partition of `topic` when the run starts, asked of its leader. A
/// leader that cannot answer now (moved, cut off from the controller, unreachable) is asked
/// again after a Metadata refresh, until `START_OFFSETS_TIMEOUT`.
async fn start_offsets(
    cl: &cluster::Cluster,
    topic: &str,
    security: &Security,
) -> Result<HashMap<i32, i64>> {
    let deadline = Instant::now() + START_OFFSETS_TIMEOUT;
    let mut view = cl.clone();
    let mut out: HashMap<i32, i64> = HashMap::new();
    let wanted: Vec<i32> = view
        .topics
        .get(topic)
        .map(|ps| ps.iter().map(|p| p.partition).collect())
        .unwrap_or_default();
    loop {
        let mut by_leader: HashMap<i32, Vec<i32>> = HashMap::new();
        for p in view.topics.get(topic).into_iter().flatten() {
            if !out.contains_key(&p.partition) {
                by_leader.entry(p.leader).or_default().push(p.partition);
            }
        }
        let mut last_error = None;
        for (leader, ps) in &by_leader {
            let Some(addr) = view.addr_of(*leader) else {
                last_error = Some(anyhow!("partitions {ps:?} of {topic} have no leader"));
                continue;
            };
            let asked = async {
                let mut conn = Connection::connect(addr, "sluice-bench-admin", security).await?;
                cluster::list_offsets(&mut conn, topic, ps, -1).await
            };
            match asked.await {
                Ok(offsets) => out.extend(offsets),
                Err(e) => last_error = Some(anyhow::Error::new(e)),
            }
        }
        if wanted.iter().all(|p| out.contains_key(p)) {
            return Ok(out);
        }
        if Instant::now() >= deadline {
            return Err(last_error
                .unwrap_or_else(|| anyhow!("no start offsets for {topic}"))
                .context(format!(
                    "start offsets of {topic} (for {}s)",
                    START_OFFSETS_TIMEOUT.as_secs()
                )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Fresh leaders, from any broker that answers.
        for addr in view.brokers.values().cloned().collect::<Vec<_>>() {
            let fresh = async {
                let mut conn = Connection::connect(&addr, "sluice-bench-admin", security).await?;
                cluster::metadata(&mut conn, &[topic.to_string()]).await
            };
            if let Ok(fresh) = fresh.await {
                if fresh.topics.contains_key(topic) {
                    view = fresh;
                    break;
                }
            }
        }
    }
}

async fn run_async(w: Workload, opts: RunOptions) -> Result<RunOutcome> {
    w.validate()?;
    let w = Arc::new(w);
    let run_id: u64 = rand::thread_rng().gen();
    let mut topics = Vec::new();
    for t in 0..w.topics {
        topics.push(format!("{}-{:08x}-{t}", opts.topic_prefix, run_id as u32));
    }
    let mut clusters = Vec::new();
    for t in &topics {
        let c = cluster::create_topic(
            &opts.bootstrap,
            "sluice-bench-admin",
            t,
            w.partitions_per_topic as i32,
            w.replication_factor,
            &opts.security,
        )
        .await
        .with_context(|| format!("creating topic {t} on {}", opts.bootstrap))?;
        clusters.push(c);
    }

    let cpu_at_start = process_cpu_seconds();
    let wall_at_start = Instant::now();
    let total_producers = w.total_producers() as usize;
    let warmup = w.warmup_duration();
    let test = w.test_duration();
    let shared = Arc::new(Shared::unscheduled(
        total_producers,
        w.subscriptions_per_topic as usize,
    ));
    let (stop_tx, stop_rx) = watch::channel(false);

    // Consumers: each subscription reads everything. By assignment its consumers split the
    // partitions round-robin; in group mode it is one consumer group whose members split them
    // as the group leader's assignor decides.
    let mut fetchers = Vec::new();
    let mut groups: Vec<(String, String, u32, i32, Arc<GroupShared>)> = Vec::new();
    let mut consumer_index = 0u32;
    for (ti, topic) in topics.iter().enumerate() {
        let cl = &clusters[ti];
        let parts = cl.topics.get(topic).cloned().unwrap_or_default();
        let leaders_addr = cl.brokers.clone();
        let start_offsets = start_offsets(cl, topic, &opts.security).await?;
        for sub in 0..w.subscriptions_per_topic {
            let n = w.consumer_per_subscription.max(1) as usize;
            let group = match w.consumer_mode {
                ConsumerMode::Group => {
                    let g = Arc::new(GroupShared::default());
                    groups.push((
                        format!("{topic}-sub{sub}"),
                        topic.clone(),
                        n as u32,
                        parts.len() as i32,
                        g.clone(),
                    ));
                    Some(g)
                }
                ConsumerMode::Assign => None,
            };
            for c in 0..n {
                let mut leaders = HashMap::new();
                let mut offsets = HashMap::new();
                for (i, p) in parts.iter().enumerate() {
                    if group.is_some() || i % n == c {
                        leaders.insert(p.partition, p.leader);
                        offsets.insert(
                            p.partition,
                            start_offsets.get(&p.partition).copied().unwrap_or(0),
                        );
                    }
                }
                let mut spec = ConsumerSpec {
                    consumer: consumer_index,
                    subscription: sub,
                    topic: topic.clone(),
                    brokers: leaders_addr.clone(),
                    leaders,
                    start_offsets: HashMap::new(),
                    run_id,
                    max_wait_ms: w.fetch_max_wait_ms,
                    partition_max_bytes: w.max_partition_fetch_bytes,
                    security: opts.security.clone(),
                };
                consumer_index += 1;
                if let Some(g) = &group {
                    let gspec = GroupConsumerSpec {
                        fetch: spec,
                        bootstrap: opts.bootstrap.clone(),
                        group_id: format!("{topic}-sub{sub}"),
                        partition_count: parts.len() as i32,
                        default_offsets: offsets,
                        assignor: w.partition_assignor.clone(),
                    };
                    fetchers.push(tokio::spawn(run_group_consumer(
                        gspec,
                        shared.clone(),
                        g.clone(),
                        stop_rx.clone(),
                    )));
                } else if !offsets.is_empty() {
                    spec.start_offsets = offsets;
                    fetchers.push(tokio::spawn(run_consumer(
                        spec,
                        shared.clone(),
                        stop_rx.clone(),
                    )));
                }
            }
        }
    }

    // As OMB waits for its consumers before producing: every group stable, with all members
    // synced in one generation, so that the first rebalance does not land in the measurement.
    let mut errors = Vec::new();
    let mut stable: Vec<Option<i32>> = vec![None; groups.len()];
    let settle_deadline = Instant::now() + GROUP_SETTLE_TIMEOUT;
    while !groups.is_empty() {
        for (i, (_, _, members, _, g)) in groups.iter().enumerate() {
            stable[i] = g.stable_generation(*members as usize);
        }
        if stable.iter().all(Option::is_some) {
            break;
        }
        // A member that ended before producing could start has failed to join for good.
        if let Some(i) = fetchers.iter().position(|f| f.is_finished()) {
            let why = match fetchers.swap_remove(i).await {
                Ok(r) => r.errors.join("; "),
                Err(e) => e.to_string(),
            };
            let _ = stop_tx.send(true);
            return Err(anyhow!(
                "a group consumer stopped before the run started: {why} \
                 (brokers without consumer groups need --consumer-mode assign)"
            ));
        }
        if Instant::now() >= settle_deadline {
            errors.push(format!(
                "consumer groups not stable after {} s; producing anyway",
                GROUP_SETTLE_TIMEOUT.as_secs()
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Give connections a moment to be set up before the schedule's time zero.
    let start = Instant::now() + Duration::from_millis(200);
    let measure_from = start + warmup;
    let end = measure_from + test;
    shared.schedule(measure_from);

    let rate_per_producer = if w.is_max_rate() {
        None
    } else {
        Some(w.producer_rate / total_producers as f64)
    };
    let mut producers = Vec::new();
    let mut index = 0u32;
    for (ti, topic) in topics.iter().enumerate() {
        let cl = &clusters[ti];
        for _ in 0..w.producers_per_topic {
            let spec = ProducerSpec {
                index,
                topic: topic.clone(),
                partitions: cl.topics.get(topic).cloned().unwrap_or_default(),
                brokers: cl.brokers.clone(),
                rate: rate_per_producer,
                start,
                end,
                workload: w.clone(),
                template: payload_template(&w, opts.seed.wrapping_add(index as u64))?,
                run_id,
                security: opts.security.clone(),
            };
            producers.push(tokio::spawn(run_producer(spec, shared.clone())));
            index += 1;
        }
    }

    // Sampler and progress bar, once a second, until the drain is over.
    let total_secs = (warmup + test).as_secs_f64();
    let bar = if opts.progress {
        let b = ProgressBar::new((total_secs * 10.0) as u64);
        b.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let (sampler_stop_tx, mut sampler_stop_rx) = watch::channel(false);
    let sampler_shared = shared.clone();
    let sampler_bar = bar.clone();
    let subscriptions = u64::from(w.subscriptions_per_topic.max(1));
    let sampler = tokio::spawn(async move {
        let mut samples = Vec::new();
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::from_std(start + Duration::from_secs(1)),
            Duration::from_secs(1),
        );
        let mut last = (0u64, 0u64, 0u64, 0u64, 0u64);
        let mut last_t = start;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = sampler_stop_rx.changed() => break,
            }
            let now = Instant::now();
            let c = &sampler_shared.counters;
            let cur = (
                c.acked.load(Ordering::Relaxed),
                c.acked_bytes.load(Ordering::Relaxed),
                c.consumed.load(Ordering::Relaxed),
                c.consumed_bytes.load(Ordering::Relaxed),
                c.failed.load(Ordering::Relaxed),
            );
            let dt = now.duration_since(last_t).as_secs_f64().max(1e-6);
            let (pp50, pp99) = {
                let mut h = sampler_shared.lock_interval_publish();
                let r = (ms(h.value_at_quantile(0.5)), ms(h.value_at_quantile(0.99)));
                h.reset();
                r
            };
            let (ep50, ep99) = {
                let mut h = sampler_shared.lock_interval_e2e();
                let r = (ms(h.value_at_quantile(0.5)), ms(h.value_at_quantile(0.99)));
                h.reset();
                r
            };
            let s = Sample {
                t: now.duration_since(start).as_secs_f64(),
                // An interval belongs to the warm-up if it started before the measured window.
                warmup: last_t < measure_from,
                publish_rate: (cur.0 - last.0) as f64 / dt,
                publish_mb: (cur.1 - last.1) as f64 / dt / 1e6,
                consume_rate: (cur.2 - last.2) as f64 / dt,
                consume_mb: (cur.3 - last.3) as f64 / dt / 1e6,
                // Every subscription reads every acknowledged message.
                backlog: (cur.0 * subscriptions) as i64 - cur.2 as i64,
                failed: cur.4 - last.4,
                publish_p50_ms: pp50,
                publish_p99_ms: pp99,
                e2e_p50_ms: ep50,
                e2e_p99_ms: ep99,
            };
            sampler_bar.set_position((s.t * 10.0).min(total_secs * 10.0) as u64);
            sampler_bar.set_message(format!(
                "pub {:.0} msg/s p99 {:.2} ms | cons {:.0} msg/s e2e p99 {:.2} ms | backlog {}",
                s.publish_rate, s.publish_p99_ms, s.consume_rate, s.e2e_p99_ms, s.backlog
            ));
            samples.push(s);
            last = cur;
            last_t = now;
        }
        samples
    });

    let mut publish_parts = Vec::new();
    let mut uncorrected_parts = Vec::new();
    let mut sent = 0;
    let mut failed = 0;
    let mut unsent = 0;
    for p in producers {
        let r = p.await.context("producer task panicked")?;
        publish_parts.push(r.publish);
        uncorrected_parts.push(r.publish_uncorrected);
        sent += r.sent;
        failed += r.failed;
        unsent += r.unsent;
        errors.extend(r.errors);
    }
    let producers_done = Instant::now();

    // Drain: wait until every acknowledged message is consumed, or the drain timeout.
    let drain_deadline = producers_done + Duration::from_secs_f64(w.drain_timeout_seconds.max(0.0));
    while shared.ledger.missing() > 0 && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(true);
    let mut e2e_parts = Vec::new();
    // Group members also commit and leave when they stop (two bounded requests).
    let stop_bound = stop_latency(w.fetch_max_wait_ms)
        + Duration::from_secs(1)
        + if groups.is_empty() {
            Duration::ZERO
        } else {
            GROUP_REQUEST_TIMEOUT * 2
        };
    for f in fetchers {
        match tokio::time::timeout(stop_bound, f).await {
            Ok(Ok(r)) => {
                e2e_parts.push(r.e2e);
                errors.extend(r.errors);
            }
            Ok(Err(e)) => errors.push(format!("consumer task failed: {e}")),
            Err(_) => errors.push("consumer did not stop in time".to_string()),
        }
    }
    let _ = sampler_stop_tx.send(true);
    let timeseries = sampler.await.unwrap_or_default();
    let groups: Vec<GroupReport> = groups
        .iter()
        .zip(&stable)
        .map(|((id, topic, members, partitions, g), st)| {
            GroupReport::of(id, topic, *members, *partitions, *st, g)
        })
        .collect();
    for g in &groups {
        errors.extend(g.overlaps.iter().cloned());
    }
    bar.finish_and_clear();

    let reconciliation = shared.ledger.reconcile(sent, failed);
    let publish = merge(publish_parts.iter());
    let publish_uncorrected = merge(uncorrected_parts.iter());
    let e2e = merge(e2e_parts.iter());
    let window = test.as_secs_f64();
    let measured: Vec<&Sample> = timeseries
        .iter()
        .filter(|s| !s.warmup && s.t <= (warmup + test).as_secs_f64() + 0.5)
        .collect();
    let avg = |f: fn(&Sample) -> f64| {
        if measured.is_empty() {
            0.0
        } else {
            measured.iter().map(|s| f(s)).sum::<f64>() / measured.len() as f64
        }
    };
    let wire_total = shared.counters.acked_wire_bytes.load(Ordering::Relaxed) as f64;
    let acked_total = shared.counters.acked_bytes.load(Ordering::Relaxed) as f64;
    let rates = Rates {
        window_seconds: window,
        target_rate: if w.is_max_rate() {
            0.0
        } else {
            w.producer_rate
        },
        publish_msgs_per_sec: avg(|s| s.publish_rate),
        publish_mb_per_sec: avg(|s| s.publish_mb),
        publish_wire_mb_per_sec: if acked_total > 0.0 {
            avg(|s| s.publish_mb) * wire_total / acked_total
        } else {
            0.0
        },
        consume_msgs_per_sec: avg(|s| s.consume_rate),
        consume_mb_per_sec: avg(|s| s.consume_mb),
        max_backlog: timeseries.iter().map(|s| s.backlog).max().unwrap_or(0),
        harness_cpu_cores: (process_cpu_seconds() - cpu_at_start)
            / wall_at_start.elapsed().as_secs_f64().max(1e-6),
    };
    let mut markers = opts.markers.clone();
    if !warmup.is_zero() {
        markers.insert(
            0,
            Marker {
                t: warmup.as_secs_f64(),
                label: "warm-up end".into(),
            },
        );
    }
    Ok(RunOutcome {
        markers,
        workload: (*w).clone(),
        topic: topics.join(","),
        publish,
        publish_uncorrected,
        e2e,
        timeseries,
        reconciliation,
        rates,
        errors,
        unsent,
        groups,
        started: start,
    })
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Percentiles of the outcome's histograms, for reports.
pub fn percentiles(o: &RunOutcome) -> (Percentiles, Percentiles, Percentiles) {
    (
        Percentiles::of(&o.publish),
        Percentiles::of(&o.publish_uncorrected),
        Percentiles::of(&o.e2e),
    )
}
