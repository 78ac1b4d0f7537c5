//! `sluice-bench replication`: the ISR vs majority-quorum experiment (issue 7). Each scenario
//! runs once per mode against a fresh local cluster with identical load and seeds; faults are
//! injected at known times and marked on the time axis; the report overlays the two modes.

pub mod cluster;
pub mod netns;
pub mod probe;
pub mod proxy;

use crate::compare;
use crate::plot::Marker;
use crate::recorder::Percentiles;
use crate::report::{self, BrokerInfo};
use crate::runner::{self, RunOptions, Sample};
use crate::workload::Workload;
use anyhow::{anyhow, Context, Result};
use cluster::{ClusterSpec, LocalCluster};
use probe::{Probe, ProbeSample, ProbeTargets};
use serde::{Deserialize, Serialize};
use sluice::security::client::Security;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Attempts per case (see [`run`]).
const SETUP_ATTEMPTS: u32 = 3;

/// The replication modes compared, in report order.
pub const MODES: [&str; 2] = ["isr", "quorum"];

/// A fault scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Three healthy brokers, at every rate.
    Healthy,
    /// One follower's requests to the leader delayed (each delay).
    SlowFollower,
    /// A follower `kill -9`ed, later restarted.
    FollowerKill,
    /// The leader `kill -9`ed, later restarted.
    LeaderKill,
    /// The leader cut off from the other brokers (network namespaces), later healed.
    Partition,
    /// Five brokers, replication factor 5, two slow followers.
    FiveSlow,
}

impl Scenario {
    /// All scenarios in report order.
    pub const ALL: [Scenario; 6] = [
        Scenario::Healthy,
        Scenario::SlowFollower,
        Scenario::FollowerKill,
        Scenario::LeaderKill,
        Scenario::Partition,
        Scenario::FiveSlow,
    ];

    /// Directory and report name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Healthy => "1-healthy",
            Scenario::SlowFollower => "2-slow-follower",
            Scenario::FollowerKill => "3-follower-kill",
            Scenario::LeaderKill => "4-leader-kill",
            Scenario::Partition => "5-partition",
            Scenario::FiveSlow => "6-five-brokers-slow",
        }
    }
}

/// Options of the experiment.
#[derive(Debug, Clone)]
pub struct ExperimentOptions {
    /// The `sluice` binary.
    pub binary: PathBuf,
    /// Report directory.
    pub out: PathBuf,
    /// Where brokers keep their data (removed case by case).
    pub work_dir: PathBuf,
    /// Fixed producer rates (msgs/s): all for `healthy`, the first for the fault scenarios.
    pub rates: Vec<f64>,
    /// Follower delays for `slow-follower`; the largest is used for `five-slow`.
    pub delays_ms: Vec<u64>,
    /// Measured seconds per run.
    pub duration: f64,
    /// Warm-up seconds per run.
    pub warmup: f64,
    /// Scenarios to run.
    pub scenarios: Vec<Scenario>,
    /// Payload seed (the same for both modes).
    pub seed: u64,
    /// Message size in bytes.
    pub message_size: usize,
}

/// What one run (scenario, variant, mode) measured, as written to `experiment.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseResult {
    /// Scenario name.
    pub scenario: String,
    /// Variant: rate or delay.
    pub variant: String,
    /// `isr` or `quorum`.
    pub mode: String,
    /// Result directory (relative to the report).
    pub dir: String,
    /// Brokers and replication factor.
    pub replicas: u32,
    /// Target rate.
    pub target_rate: f64,
    /// Acknowledged msgs/s over the measured window.
    pub publish_rate: f64,
    /// Publish latency (CO-corrected), us.
    pub publish_us: Percentiles,
    /// End-to-end latency, us.
    pub e2e_us: Percentiles,
    /// Acked messages.
    pub acked: u64,
    /// Failed sends (not acknowledged; never retried by the harness).
    pub failed: u64,
    /// Acknowledged messages never consumed.
    pub lost: u64,
    /// Messages consumed more than once.
    pub duplicates: u64,
    /// Reconciliation held (no acked message lost).
    pub reconciled: bool,
    /// The injected faults.
    pub faults: Vec<Marker>,
    /// Leader at the first fault.
    pub leader_at_fault: i32,
    /// Seconds from the fault until Metadata (asked of a broker on the majority side) named
    /// another leader; `None` without a leader fault or if none was seen.
    pub time_to_new_leader_s: Option<f64>,
    /// Seconds from the fault to the end of the first one-second interval whose acked rate
    /// was back to half the target (1 s resolution).
    pub time_to_recovered_publish_s: Option<f64>,
    /// Smallest and largest ISR size seen during the run.
    pub isr_size_min_max: (usize, usize),
    /// Leader and ISR in the last Metadata the probe saw (after the faults were undone).
    pub final_leader: i32,
    /// See `final_leader`.
    pub final_isr: Vec<i32>,
    /// First errors of the run.
    pub errors: Vec<String>,
}

/// One fault action at an offset from the start of the measured window.
#[derive(Debug, Clone, Copy)]
enum Action {
    /// Delay these followers' requests to the leader by `ms` (at the start).
    Slow {
        followers: usize,
        ms: u64,
    },
    KillFollower,
    KillLeader,
    RestartKilled,
    IsolateLeader,
    Heal,
}

struct Case {
    scenario: Scenario,
    variant: String,
    nodes: u32,
    rate: f64,
    /// (seconds into the measured window; negative = during warm-up, action).
    plan: Vec<(f64, Action)>,
}

fn cases(o: &ExperimentOptions) -> Vec<Case> {
    let rate = o.rates.first().copied().unwrap_or(1000.0);
    let third = o.duration / 3.0;
    let mut v = Vec::new();
    for s in &o.scenarios {
        match s {
            Scenario::Healthy => {
                for r in &o.rates {
                    v.push(Case {
                        scenario: *s,
                        variant: format!("rate-{}", r.round() as u64),
                        nodes: 3,
                        rate: *r,
                        plan: vec![],
                    });
                }
            }
            Scenario::SlowFollower => {
                for d in &o.delays_ms {
                    v.push(Case {
                        scenario: *s,
                        variant: format!("delay-{d}ms"),
                        nodes: 3,
                        rate,
                        plan: vec![(
                            -o.warmup,
                            Action::Slow {
                                followers: 1,
                                ms: *d,
                            },
                        )],
                    });
                }
            }
            Scenario::FollowerKill => v.push(Case {
                scenario: *s,
                variant: format!("rate-{}", rate.round() as u64),
                nodes: 3,
                rate,
                plan: vec![
                    (third, Action::KillFollower),
                    (2.0 * third, Action::RestartKilled),
                ],
            }),
            Scenario::LeaderKill => v.push(Case {
                scenario: *s,
                variant: format!("rate-{}", rate.round() as u64),
                nodes: 3,
                rate,
                plan: vec![
                    (third, Action::KillLeader),
                    (2.0 * third, Action::RestartKilled),
                ],
            }),
            Scenario::Partition => v.push(Case {
                scenario: *s,
                variant: format!("rate-{}", rate.round() as u64),
                nodes: 3,
                rate,
                plan: vec![(third, Action::IsolateLeader), (2.0 * third, Action::Heal)],
            }),
            Scenario::FiveSlow => {
                let d = o.delays_ms.iter().copied().max().unwrap_or(10);
                v.push(Case {
                    scenario: *s,
                    variant: format!("delay-{d}ms"),
                    nodes: 5,
                    rate,
                    plan: vec![(
                        -o.warmup,
                        Action::Slow {
                            followers: 2,
                            ms: d,
                        },
                    )],
                });
            }
        }
    }
    v
}

fn workload(o: &ExperimentOptions, case: &Case, name: &str) -> Result<Workload> {
    let w = Workload::from_toml(
        &format!(
            r#"
name = "{name}"
partitionsPerTopic = 1
replicationFactor = {rf}
messageSize = {size}
producersPerTopic = 1
consumerPerSubscription = 1
consumerMode = "assign"
producerRate = {rate}
warmupDurationSeconds = {warmup}
testDurationSeconds = {test}
acks = -1
lingerMs = 1
requestTimeoutMs = 10000
drainTimeoutSeconds = 20
"#,
            rf = case.nodes,
            size = o.message_size,
            rate = case.rate,
            warmup = o.warmup,
            test = o.duration,
        ),
        name,
    )?;
    w.validate()?;
    Ok(w)
}

/// The partition's leader and replicas as one broker sees them.
fn leader_of(c: &LocalCluster, prefix: &str) -> Option<(i32, Vec<i32>)> {
    for n in c.live() {
        let addr = c.addr(n);
        let s = c.block_on(replicas_of(&addr, prefix));
        if s.is_some() {
            return s;
        }
    }
    None
}

async fn replicas_of(addr: &str, prefix: &str) -> Option<(i32, Vec<i32>)> {
    use kafka_protocol::messages::{ApiKey, MetadataRequest};
    let mut c = crate::client::Connection::connect(addr, "replexp-admin", &Security::default())
        .await
        .ok()?;
    let v = c
        .versions()
        .pick(
            addr,
            ApiKey::Metadata,
            "Metadata",
            crate::client::cluster::METADATA_VERSIONS,
        )
        .ok()?;
    let req = MetadataRequest::default()
        .with_topics(None)
        .with_allow_auto_topic_creation(false);
    let resp = c
        .request::<MetadataRequest>(&req, v, Duration::from_secs(2))
        .await
        .ok()?;
    let t = resp.topics.iter().find(|t| {
        t.name
            .as_ref()
            .is_some_and(|n| n.0.as_str().starts_with(prefix))
    })?;
    let p = t.partitions.iter().find(|p| p.partition_index == 0)?;
    if p.error_code != 0 || p.leader_id.0 < 0 {
        return None;
    }
    Some((p.leader_id.0, p.replica_nodes.iter().map(|b| b.0).collect()))
}

/// Runs the fault plan against the cluster; returns the faults with the instants they were
/// injected. Time zero of the plan is when the topic first has a leader, plus the runner's
/// 200 ms set-up pause and the warm-up.
#[allow(clippy::too_many_arguments)]
fn run_plan(
    cluster: &Mutex<LocalCluster>,
    plan: &[(f64, Action)],
    prefix: &str,
    warmup: f64,
    avoid: &AtomicU32,
    deadline: Instant,
) -> Result<(Vec<(Instant, String)>, i32)> {
    let mut events = Vec::new();
    // Wait for the run's topic.
    let (leader, replicas) = loop {
        let got = {
            let c = cluster.lock().map_err(|_| anyhow!("cluster lock"))?;
            leader_of(&c, prefix)
        };
        if let Some(x) = got {
            break x;
        }
        if Instant::now() > deadline {
            return Err(anyhow!("the run's topic never got a leader"));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let zero = Instant::now() + Duration::from_millis(200) + Duration::from_secs_f64(warmup);
    let followers: Vec<u32> = replicas
        .iter()
        .filter(|r| **r != leader)
        .map(|r| *r as u32)
        .collect();
    let mut killed: Option<u32> = None;
    let mut isolated: Option<u32> = None;
    for (at, action) in plan {
        let when = if *at < 0.0 {
            Instant::now()
        } else {
            zero + Duration::from_secs_f64(*at)
        };
        while Instant::now() < when {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut c = cluster.lock().map_err(|_| anyhow!("cluster lock"))?;
        let label = match *action {
            Action::Slow { followers: k, ms } => {
                let slow: Vec<u32> = followers.iter().take(k).copied().collect();
                for f in &slow {
                    c.set_delay(*f, leader as u32, Duration::from_millis(ms))?;
                }
                format!("followers {slow:?} +{ms} ms")
            }
            Action::KillFollower => {
                let f = *followers.first().ok_or_else(|| anyhow!("no follower"))?;
                c.kill(f)?;
                killed = Some(f);
                format!("kill -9 follower {f}")
            }
            Action::KillLeader => {
                avoid.store(leader as u32, Ordering::Relaxed);
                c.kill(leader as u32)?;
                killed = Some(leader as u32);
                format!("kill -9 leader {leader}")
            }
            Action::RestartKilled => {
                let n = killed.take().ok_or_else(|| anyhow!("nothing killed"))?;
                c.restart(n)?;
                format!("restart {n}")
            }
            Action::IsolateLeader => {
                avoid.store(leader as u32, Ordering::Relaxed);
                c.network().isolate(leader as u32)?;
                isolated = Some(leader as u32);
                format!("isolate leader {leader}")
            }
            Action::Heal => {
                let n = isolated.take().ok_or_else(|| anyhow!("nothing isolated"))?;
                c.network().heal(n)?;
                format!("heal {n}")
            }
        };
        tracing::info!(%label, "fault");
        events.push((Instant::now(), label));
    }
    Ok((events, leader))
}

fn recovered_after(ts: &[Sample], fault_t: f64, target: f64) -> Option<f64> {
    // The first interval that starts after the fault and is back to half the target rate.
    ts.iter()
        .find(|s| s.t - 1.0 >= fault_t && s.publish_rate >= 0.5 * target)
        .map(|s| s.t - fault_t)
}

fn run_case(o: &ExperimentOptions, case: &Case, mode: &str, index: usize) -> Result<CaseResult> {
    let rel = format!("{}/{}/{mode}", case.scenario.name(), case.variant);
    let dir = o.out.join(&rel);
    let prefix = format!("replexp-{index}-{mode}");
    let name = format!("{}-{}-{mode}", case.scenario.name(), case.variant);
    let w = workload(o, case, &name)?;
    let data = o.work_dir.join(format!("case-{index}-{mode}"));
    let _ = std::fs::remove_dir_all(&data);
    let pid = std::process::id();
    let spec = ClusterSpec {
        binary: o.binary.clone(),
        nodes: case.nodes,
        mode: mode.to_string(),
        dir: data.clone(),
        proxied: case
            .plan
            .iter()
            .any(|(_, a)| matches!(a, Action::Slow { .. })),
        tag: format!(
            "{:x}{}",
            pid % 0xfff,
            index * 2 + usize::from(mode == "quorum")
        ),
        subnet: ((pid as usize * 7 + index * 2 + usize::from(mode == "quorum")) % 250 + 1) as u8,
    };
    let cluster = Arc::new(Mutex::new(LocalCluster::start(spec)?));
    let (targets, bootstrap) = {
        let c = cluster.lock().map_err(|_| anyhow!("cluster lock"))?;
        let brokers = (1..=c.nodes()).map(|n| (n, c.addr(n))).collect();
        (
            ProbeTargets {
                brokers,
                avoid: Arc::new(AtomicU32::new(0)),
            },
            // The runner takes one bootstrap broker; it learns the others from Metadata.
            c.addr(1),
        )
    };
    let probe = Probe::start(targets.clone(), prefix.clone());
    let plan = case.plan.clone();
    let c2 = cluster.clone();
    let p2 = prefix.clone();
    let avoid = targets.avoid.clone();
    let warmup = o.warmup;
    let deadline = Instant::now() + Duration::from_secs(60);
    let faults = std::thread::spawn(move || run_plan(&c2, &plan, &p2, warmup, &avoid, deadline));
    let opts = RunOptions {
        bootstrap: bootstrap.clone(),
        topic_prefix: prefix,
        threads: 2,
        seed: o.seed,
        progress: false,
        markers: Vec::new(),
        security: Security::default(),
    };
    let outcome = runner::run(&w, &opts);
    let faults = faults
        .join()
        .map_err(|_| anyhow!("fault thread panicked"))?;
    let (mut outcome, samples) = match outcome {
        Ok(out) => {
            let samples: Vec<ProbeSample> = probe.finish(out.started);
            (out, samples)
        }
        Err(e) => {
            let _ = probe.finish(Instant::now());
            return Err(e.context(format!("run {rel}")));
        }
    };
    let (events, leader) = faults.with_context(|| format!("faults of {rel}"))?;
    let t_of = |at: Instant| {
        if at >= outcome.started {
            at.duration_since(outcome.started).as_secs_f64()
        } else {
            -outcome.started.duration_since(at).as_secs_f64()
        }
    };
    let markers: Vec<Marker> = events
        .iter()
        .map(|(at, label)| Marker {
            t: t_of(*at),
            label: label.clone(),
        })
        .collect();
    outcome.markers.extend(markers.iter().cloned());
    drop(cluster);

    let summary = report::summarize(
        &name,
        &outcome,
        BrokerInfo {
            bootstrap,
            label: format!("sluice {mode}, {} brokers", case.nodes),
        },
        None,
    );
    report::write_run(&dir, &summary, &outcome)?;
    let mut csv = String::from("t_s,from,leader,leader_epoch,isr_size,isr\n");
    for s in &samples {
        let isr: Vec<String> = s.isr.iter().map(i32::to_string).collect();
        let _ = writeln!(
            csv,
            "{:.3},{},{},{},{},{}",
            s.t,
            s.from,
            s.leader,
            s.leader_epoch,
            s.isr.len(),
            isr.join(" ")
        );
    }
    std::fs::write(dir.join("isr.csv"), csv)?;
    let first_fault = markers.iter().find(|m| m.t >= 0.0 || markers.len() == 1);
    let leader_fault = markers
        .iter()
        .find(|m| m.label.starts_with("kill -9 leader") || m.label.starts_with("isolate"));
    let in_run: Vec<&ProbeSample> = samples.iter().filter(|s| s.t >= 0.0).collect();
    let r = &summary.reconciliation;
    let res = CaseResult {
        scenario: case.scenario.name().to_string(),
        variant: case.variant.clone(),
        mode: mode.to_string(),
        dir: rel,
        replicas: case.nodes,
        target_rate: case.rate,
        publish_rate: summary.rates.publish_msgs_per_sec,
        publish_us: summary.publish_latency_us.clone(),
        e2e_us: summary.e2e_latency_us.clone(),
        acked: r.acked,
        failed: r.failed,
        lost: r.lost,
        duplicates: r.duplicates,
        reconciled: r.ok && r.lost == 0,
        faults: markers.clone(),
        leader_at_fault: leader,
        time_to_new_leader_s: leader_fault
            .and_then(|m| probe::time_to_new_leader(&samples, m.t, leader)),
        time_to_recovered_publish_s: first_fault
            .filter(|m| m.t >= 0.0)
            .and_then(|m| recovered_after(&outcome.timeseries, m.t, case.rate)),
        isr_size_min_max: (
            in_run.iter().map(|s| s.isr.len()).min().unwrap_or(0),
            in_run.iter().map(|s| s.isr.len()).max().unwrap_or(0),
        ),
        final_leader: samples.last().map_or(-1, |s| s.leader),
        final_isr: samples.last().map(|s| s.isr.clone()).unwrap_or_default(),
        errors: summary.errors.iter().take(5).cloned().collect(),
    };
    std::fs::write(
        dir.join("replication.json"),
        serde_json::to_string_pretty(&res)? + "\n",
    )?;
    // Kept when acknowledged messages are missing: the brokers' logs are the evidence.
    if res.reconciled {
        let _ = std::fs::remove_dir_all(&data);
    }
    Ok(res)
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

/// The comparison table of every case, as Markdown.
pub fn render_table(results: &[CaseResult]) -> String {
    let mut t = String::from(
        "| scenario | variant | mode | target msg/s | acked msg/s | publish p50 ms | p99 ms | p99.9 ms | max ms | e2e p99 ms | acked | failed | lost | dup | ISR min-max | new leader s | recovered s |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.2}"));
        let _ = writeln!(
            t,
            "| {} | {} | {} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}-{} | {} | {} |",
            r.scenario,
            r.variant,
            r.mode,
            r.target_rate,
            r.publish_rate,
            ms(r.publish_us.p50),
            ms(r.publish_us.p99),
            ms(r.publish_us.p999),
            ms(r.publish_us.max),
            ms(r.e2e_us.p99),
            r.acked,
            r.failed,
            r.lost,
            r.duplicates,
            r.isr_size_min_max.0,
            r.isr_size_min_max.1,
            opt(r.time_to_new_leader_s),
            opt(r.time_to_recovered_publish_s),
        );
    }
    t
}

/// Runs the experiment; returns every case's result. Fails if a case could not run; a case
/// that lost acknowledged messages is reported (its `reconciled` is false), not an error.
pub fn run(o: &ExperimentOptions) -> Result<Vec<CaseResult>> {
    if !netns::available() {
        return Err(anyhow!(
            "the replication experiment needs root with `ip` and `iptables` (network namespaces)"
        ));
    }
    if !o.binary.is_file() {
        return Err(anyhow!("no sluice binary at {}", o.binary.display()));
    }
    std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    let mut results = Vec::new();
    for (i, case) in cases(o).iter().enumerate() {
        let mut dirs = Vec::new();
        for mode in MODES {
            eprintln!(
                "replication: {} {} {mode} ({:.0} msg/s, {} brokers)",
                case.scenario.name(),
                case.variant,
                case.rate,
                case.nodes
            );
            // A run can fail to start when a new topic's leader has not applied its image
            // yet (a transient NOT_LEADER_OR_FOLLOWER on the runner's first ListOffsets): the
            // case is then run again on a fresh cluster.
            let mut attempt = 1;
            let r = loop {
                match run_case(o, case, mode, i) {
                    Ok(r) => break r,
                    Err(e) if attempt < SETUP_ATTEMPTS => {
                        eprintln!("replication: attempt {attempt} failed ({e:#}); again");
                        attempt += 1;
                    }
                    Err(e) => return Err(e),
                }
            };
            dirs.push(o.out.join(&r.dir));
            results.push(r);
        }
        // Overlaid isr vs quorum spectra, the harness's own comparison.
        let cmp = o
            .out
            .join(case.scenario.name())
            .join(&case.variant)
            .join("compare");
        compare::compare(&dirs, &cmp)?;
        // Written after every case so an interrupted run still leaves its table.
        write_report(o, &results)?;
    }
    Ok(results)
}

fn write_report(o: &ExperimentOptions, results: &[CaseResult]) -> Result<()> {
    std::fs::write(
        o.out.join("experiment.json"),
        serde_json::to_string_pretty(results)? + "\n",
    )?;
    let mut md = String::from("# Replication experiment: measured table\n\n");
    let _ = writeln!(
        md,
        "Written by `sluice-bench replication` ({} s warm-up, {} s measured per run, {} B messages, acks=all, seed {}).\n",
        o.warmup, o.duration, o.message_size, o.seed
    );
    md.push_str(&render_table(results));
    std::fs::write(o.out.join("table.md"), md)?;
    Ok(())
}

/// Whether every case reconciled (no acknowledged message lost).
pub fn all_reconciled(results: &[CaseResult]) -> bool {
    results.iter().all(|r| r.reconciled)
}

/// The default `sluice` binary: next to the running `sluice-bench`.
pub fn default_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("sluice")))
        .unwrap_or_else(|| PathBuf::from("sluice"))
}

/// Used by tests: the report files of one case.
pub fn case_files(out: &Path, r: &CaseResult) -> Vec<PathBuf> {
    let d = out.join(&r.dir);
    [
        "summary.json",
        "publish.hgrm",
        "e2e.hgrm",
        "timeseries.csv",
        "throughput.png",
        "isr.csv",
        "replication.json",
    ]
    .iter()
    .map(|f| d.join(f))
    .collect()
}
