//! `sluice-bench perf`: the broker against the machine's limits, in one run.
//!
//! Per round: a page-cache write (in process) and single-stream loopback `iperf3` (an external
//! process, bounded in time), then for every broker binary given: a fresh broker on a free
//! 127.0.0.1 port, the workload at max rate, then at fixed fractions of the peak just
//! measured (open loop, CO-corrected, `linger.ms=0`), each with its own data directory that is
//! deleted afterwards. Broker CPU comes from `/proc/<pid>/stat` (user + system ticks), resident
//! size from `/proc/<pid>/status`, harness CPU from the harness's own rusage. Several binaries
//! (`--sluice-bin A --sluice-bin B`) are interleaved within each round, so a before/after
//! comparison on a shared machine sees the same load.

use crate::baseline;
use crate::machine::{command_line, git_commit, Machine};
use crate::report::{self, BrokerInfo};
use crate::runner::{self, RunOptions};
use crate::workload::Workload;
use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};
use sluice::security::client::Security;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Options of `sluice-bench perf`.
#[derive(Debug, Clone)]
pub struct PerfOptions {
    /// Broker binaries, each measured in every round.
    pub binaries: Vec<PathBuf>,
    /// A label per binary (defaults to the file path).
    pub labels: Vec<String>,
    /// Extra `--set key=value` settings for every broker.
    pub broker_settings: Vec<String>,
    /// Report directory (README.md, perf.json, one directory of .hgrm files per run).
    pub out: PathBuf,
    /// Brokers' data directories and the page-cache test file live here (removed after use).
    pub work_dir: PathBuf,
    /// Rounds (each: page cache, iperf3, every binary).
    pub rounds: usize,
    /// Partitions of the topic.
    pub partitions: u32,
    /// Producers.
    pub producers: u32,
    /// Message size, bytes.
    pub message_size: usize,
    /// Producer batch.size, bytes.
    pub batch_size: usize,
    /// linger.ms of the max-rate run (the fixed-rate runs use 0).
    pub linger_ms: f64,
    /// acks.
    pub acks: i16,
    /// Measured seconds per run.
    pub duration: f64,
    /// Warm-up seconds per run.
    pub warmup: f64,
    /// Fixed-rate runs, as fractions of the measured peak (0.1 = 10%).
    pub fractions: Vec<f64>,
    /// iperf3 seconds (0 = skip iperf3).
    pub iperf_seconds: u64,
    /// MiB written for the page-cache measurement.
    pub page_cache_mib: u64,
    /// Harness worker threads (0 = one per CPU).
    pub threads: usize,
}

/// One broker run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PerfRun {
    /// Round number (from 1).
    pub round: usize,
    /// Label of the broker binary.
    pub label: String,
    /// "max" or "<pct>%".
    pub load: String,
    /// Target msgs/s (0 = max rate).
    pub target_rate: f64,
    /// Acknowledged MB/s (10^6 bytes of payload).
    pub publish_mb_s: f64,
    /// publish_mb_s / iperf3 of the same round.
    pub vs_iperf3: Option<f64>,
    /// publish_mb_s / page-cache write of the same round.
    pub vs_page_cache: f64,
    /// Broker CPU seconds (user + system) per GB acknowledged.
    pub broker_cpu_s_per_gb: f64,
    /// Broker CPU used, in cores, over the run.
    pub broker_cores: f64,
    /// Harness cores per 100 MB/s moved.
    pub harness_cores_per_100mb_s: f64,
    /// Broker peak resident size, KiB (VmHWM).
    pub broker_rss_peak_kib: u64,
    /// Publish latency percentiles, microseconds (CO-corrected).
    pub p50_us: u64,
    /// p99.
    pub p99_us: u64,
    /// p99.99.
    pub p9999_us: u64,
    /// Acked equals sent and nothing failed.
    pub all_acked: bool,
    /// Result directory (relative to the report directory).
    pub dir: String,
}

/// One round's machine limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PerfLimits {
    /// Round number (from 1).
    pub round: usize,
    /// Single-stream loopback iperf3, MB/s (None: not measured).
    pub iperf3_mb_s: Option<f64>,
    /// Why iperf3 has no figure.
    pub iperf3_note: String,
    /// Sequential buffered write to the work directory's file system, MB/s.
    pub page_cache_write_mb_s: f64,
    /// 1-minute load average at the start of the round.
    pub load_avg_1m: f64,
}

/// `perf.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PerfReport {
    /// Command line.
    pub command: String,
    /// Harness commit.
    pub git_commit: String,
    /// Machine.
    pub machine: Machine,
    /// Binaries (label, path).
    pub binaries: Vec<(String, String)>,
    /// Machine limits per round.
    pub limits: Vec<PerfLimits>,
    /// Broker runs.
    pub runs: Vec<PerfRun>,
}

/// A broker process with its own data directory; stopped (by pid) and its data removed when
/// dropped.
struct Broker {
    child: Child,
    addr: String,
    data: PathBuf,
}

impl Broker {
    fn start(bin: &Path, data: &Path, settings: &[String], log: &Path) -> Result<Broker> {
        let _ = std::fs::remove_dir_all(data);
        std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
        let port = free_port()?;
        let admin = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let log_file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(bin);
        cmd.arg("--data-dir")
            .arg(data)
            .args(["--listen", &addr])
            .args(["--set", &format!("admin.listener=127.0.0.1:{admin}")]);
        for s in settings {
            cmd.args(["--set", s]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut b = Broker {
            child,
            addr: addr.clone(),
            data: data.to_path_buf(),
        };
        let sock: SocketAddr = addr.parse()?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect_timeout(&sock, Duration::from_millis(200)).is_err() {
            if let Ok(Some(st)) = b.child.try_wait() {
                return Err(anyhow!(
                    "{} exited ({st}) before listening; see {}",
                    bin.display(),
                    log.display()
                ));
            }
            if Instant::now() > deadline {
                return Err(anyhow!(
                    "{} did not listen on {addr} in 15 s",
                    bin.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(b)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // SIGTERM first (a clean shutdown), then SIGKILL if it lingers.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .context("binding a free port")?
        .local_addr()?
        .port())
}

/// User + system CPU seconds of `pid` so far, from /proc/<pid>/stat.
pub fn proc_cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| anyhow!("malformed /proc/{pid}/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks = |i: usize| -> Result<f64> {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| anyhow!("malformed /proc/{pid}/stat"))
    };
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Ok((ticks(11)? + ticks(12)?) / hz)
}

/// Peak resident size of `pid` in KiB (VmHWM), 0 if unreadable.
pub fn proc_rss_peak_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Single-stream loopback TCP through `iperf3` (server and client as child processes, both
/// killed if they outlive `secs + 10` s). Returns MB/s received.
pub fn iperf3_loopback(secs: u64) -> Result<f64> {
    let port = free_port()?.to_string();
    let mut server = Command::new("iperf3")
        .args(["-s", "-1", "-B", "127.0.0.1", "-p", &port])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 -s (is iperf3 installed?)")?;
    let result = iperf3_client(&port, secs);
    let _ = server.kill();
    let _ = server.wait();
    result
}

fn iperf3_client(port: &str, secs: u64) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(secs + 10);
    let mut last_err = anyhow!("iperf3 -c did not run");
    // The server binds asynchronously: a client started too early is refused and exits at
    // once, so retry a few times before giving up.
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(200));
        let mut client = Command::new("iperf3")
            .args(["-c", "127.0.0.1", "-p", port, "-t", &secs.to_string(), "-J"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 -c")?;
        let mut stdout = client.stdout.take();
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(out) = stdout.as_mut() {
                let _ = std::io::Read::read_to_string(out, &mut text);
            }
            text
        });
        let status = loop {
            if let Some(st) = client.try_wait()? {
                break Some(st);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let _ = client.kill();
        let _ = client.wait();
        let text = reader.join().unwrap_or_default();
        match status {
            None => return Err(anyhow!("iperf3 -c did not finish in {} s", secs + 10)),
            Some(st) if st.success() => {
                let v: serde_json::Value =
                    serde_json::from_str(&text).context("parsing iperf3 -J output")?;
                let bps = v["end"]["sum_received"]["bits_per_second"]
                    .as_f64()
                    .ok_or_else(|| anyhow!("iperf3 output has no end.sum_received"))?;
                return Ok(bps / 8.0 / 1e6);
            }
            Some(st) => last_err = anyhow!("iperf3 -c failed ({st})"),
        }
    }
    Err(last_err)
}

fn load_avg() -> f64 {
    Machine::probe().load_avg_1m
}

fn workload(o: &PerfOptions, rate: f64, linger_ms: f64, name: &str) -> Result<Workload> {
    let mut w = Workload::from_toml(
        &format!(
            "name = \"{name}\"\npartitionsPerTopic = {}\nmessageSize = {}\nproducerRate = {rate}\nproducersPerTopic = {}\nsubscriptionsPerTopic = 0\ntestDurationSeconds = {}\nwarmupDurationSeconds = {}\n",
            o.partitions, o.message_size, o.producers, o.duration, o.warmup
        ),
        "sluice-bench perf",
    )?;
    w.batch_size = o.batch_size;
    w.linger_ms = linger_ms;
    w.acks = o.acks;
    w.validate()?;
    Ok(w)
}

/// Runs one workload against a fresh broker; writes its result directory.
#[allow(clippy::too_many_arguments)]
fn broker_run(
    o: &PerfOptions,
    bin: &Path,
    label: &str,
    round: usize,
    load: &str,
    rate: f64,
    linger_ms: f64,
    limits: &PerfLimits,
) -> Result<PerfRun> {
    let slug: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let name = format!(
        "r{round}-{slug}-{}",
        load.trim_end_matches('%').replace('.', "_")
    );
    let name = if load.ends_with('%') {
        format!("{name}pct")
    } else {
        name
    };
    let w = workload(o, rate, linger_ms, &name)?;
    let data = o.work_dir.join(format!("data-{name}"));
    std::fs::create_dir_all(&o.out)?;
    let log = o.work_dir.join(format!("{name}.broker.log"));
    let broker = Broker::start(bin, &data, &o.broker_settings, &log)?;
    let pid = broker.pid();
    let cpu0 = proc_cpu_seconds(pid)?;
    let t0 = Instant::now();
    let opts = RunOptions {
        bootstrap: broker.addr.clone(),
        topic_prefix: "sluice-perf".to_string(),
        threads: o.threads,
        seed: 1,
        progress: false,
        markers: Vec::new(),
        security: Security::default(),
    };
    let outcome = runner::run(&w, &opts);
    let cpu1 = proc_cpu_seconds(pid)?;
    let wall = t0.elapsed().as_secs_f64();
    let rss = proc_rss_peak_kib(pid);
    drop(broker);
    let _ = std::fs::remove_file(&log);
    let outcome = outcome?;
    let summary = report::summarize(
        &name,
        &outcome,
        BrokerInfo {
            bootstrap: opts.bootstrap.clone(),
            label: label.to_string(),
        },
        None,
    );
    report::write_run(&o.out.join(&name), &summary, &outcome)?;
    let r = &outcome.rates;
    let rec = &outcome.reconciliation;
    let gb = rec.acked as f64 * o.message_size as f64 / 1e9;
    let cpu = (cpu1 - cpu0).max(0.0);
    Ok(PerfRun {
        round,
        label: label.to_string(),
        load: load.to_string(),
        target_rate: rate,
        publish_mb_s: r.publish_mb_per_sec,
        vs_iperf3: limits
            .iperf3_mb_s
            .filter(|v| *v > 0.0)
            .map(|v| r.publish_mb_per_sec / v),
        vs_page_cache: if limits.page_cache_write_mb_s > 0.0 {
            r.publish_mb_per_sec / limits.page_cache_write_mb_s
        } else {
            0.0
        },
        broker_cpu_s_per_gb: if gb > 0.0 { cpu / gb } else { 0.0 },
        broker_cores: cpu / wall.max(1e-6),
        harness_cores_per_100mb_s: if r.publish_mb_per_sec > 0.0 {
            r.harness_cpu_cores / (r.publish_mb_per_sec / 100.0)
        } else {
            0.0
        },
        broker_rss_peak_kib: rss,
        p50_us: summary.publish_latency_us.p50,
        p99_us: summary.publish_latency_us.p99,
        p9999_us: summary.publish_latency_us.p9999,
        all_acked: rec.failed == 0 && rec.acked == rec.sent,
        dir: name,
    })
}

/// Runs every round and writes `README.md` and `perf.json` into `o.out`.
pub fn run(o: &PerfOptions) -> Result<PerfReport> {
    if o.binaries.is_empty() {
        return Err(anyhow!("no broker binary given"));
    }
    std::fs::create_dir_all(&o.work_dir)
        .with_context(|| format!("creating {}", o.work_dir.display()))?;
    std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    let labels: Vec<String> = o
        .binaries
        .iter()
        .enumerate()
        .map(|(i, b)| {
            o.labels
                .get(i)
                .cloned()
                .unwrap_or_else(|| b.display().to_string())
        })
        .collect();
    let mut limits = Vec::new();
    let mut runs = Vec::new();
    for round in 1..=o.rounds.max(1) {
        let load_avg_1m = load_avg();
        let page_cache_write_mb_s =
            baseline::page_cache_write_mb_s(&o.work_dir, o.page_cache_mib << 20, 1 << 20)?;
        let (iperf3_mb_s, iperf3_note) = if o.iperf_seconds == 0 {
            (None, "skipped (--iperf-seconds 0)".to_string())
        } else {
            match iperf3_loopback(o.iperf_seconds) {
                Ok(v) => (Some(v), String::new()),
                Err(e) => (None, format!("{e:#}")),
            }
        };
        let lim = PerfLimits {
            round,
            iperf3_mb_s,
            iperf3_note,
            page_cache_write_mb_s,
            load_avg_1m,
        };
        eprintln!(
            "round {round}: page cache {page_cache_write_mb_s:.0} MB/s, iperf3 {}, load {load_avg_1m:.2}",
            iperf3_mb_s.map_or_else(|| lim.iperf3_note.clone(), |v| format!("{v:.0} MB/s"))
        );
        for (bin, label) in o.binaries.iter().zip(&labels) {
            let peak = broker_run(o, bin, label, round, "max", 0.0, o.linger_ms, &lim)?;
            eprintln!(
                "  {label} max: {:.0} MB/s, {:.2} CPU-s/GB",
                peak.publish_mb_s, peak.broker_cpu_s_per_gb
            );
            let peak_msgs = peak.publish_mb_s * 1e6 / o.message_size as f64;
            runs.push(peak);
            for f in &o.fractions {
                let rate = (peak_msgs * f).max(1.0);
                let load = format!("{}%", (f * 100.0).round());
                let r = broker_run(o, bin, label, round, &load, rate, 0.0, &lim)?;
                eprintln!(
                    "  {label} {load}: {:.0} MB/s, p99 {:.2} ms",
                    r.publish_mb_s,
                    r.p99_us as f64 / 1000.0
                );
                runs.push(r);
            }
        }
        limits.push(lim);
    }
    let _ = std::fs::remove_dir(&o.work_dir);
    let report = PerfReport {
        command: command_line(),
        git_commit: git_commit(),
        machine: Machine::probe(),
        binaries: labels
            .iter()
            .cloned()
            .zip(o.binaries.iter().map(|b| b.display().to_string()))
            .collect(),
        limits,
        runs,
    };
    std::fs::write(
        o.out.join("perf.json"),
        serde_json::to_string_pretty(&report)? + "\n",
    )?;
    std::fs::write(o.out.join("README.md"), render(&report, o))?;
    Ok(report)
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
}

/// The report as Markdown: machine, command, limits, one row per run.
pub fn render(r: &PerfReport, o: &PerfOptions) -> String {
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(s, "# sluice-bench perf\n");
    let _ = writeln!(s, "- command: `{}`", r.command);
    let _ = writeln!(s, "- harness commit: `{}`", r.git_commit);
    let _ = writeln!(
        s,
        "- machine: {} cores ({}), {} MiB, kernel {}, load at the end {:.2}",
        m.nproc, m.cpu_model, m.mem_mib, m.kernel, m.load_avg_1m
    );
    for (label, path) in &r.binaries {
        let _ = writeln!(s, "- broker `{label}`: `{path}`");
    }
    let _ = writeln!(
        s,
        "- workload: {} partition(s), {} producer(s), {} B messages, batch.size {}, acks {}; max rate with linger.ms {}, then {} of the peak with linger.ms 0; {} s measured after {} s warm-up\n",
        o.partitions,
        o.producers,
        o.message_size,
        o.batch_size,
        o.acks,
        o.linger_ms,
        o.fractions
            .iter()
            .map(|f| format!("{}%", (f * 100.0).round()))
            .collect::<Vec<_>>()
            .join(", "),
        o.duration,
        o.warmup
    );
    let _ = writeln!(
        s,
        "| round | load avg | iperf3 loopback MB/s | page-cache write MB/s |"
    );
    let _ = writeln!(s, "|---|---|---|---|");
    for l in &r.limits {
        let _ = writeln!(
            s,
            "| {} | {:.2} | {} | {:.0} |",
            l.round,
            l.load_avg_1m,
            l.iperf3_mb_s
                .map_or_else(|| format!("- ({})", l.iperf3_note), |v| format!("{v:.0}")),
            l.page_cache_write_mb_s
        );
    }
    let _ = writeln!(
        s,
        "\n| round | broker | load | MB/s | x iperf3 | x page cache | broker CPU-s/GB | broker cores | harness cores/100 MB/s | broker RSS peak MiB | p50 ms | p99 ms | p99.99 ms | all acked | raw |"
    );
    let _ = writeln!(
        s,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for x in &r.runs {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {} | {:.2} | {:.2} | {:.2} | {:.3} | {:.0} | {:.3} | {:.3} | {:.3} | {} | [{}]({}/publish.hgrm) |",
            x.round,
            x.label,
            x.load,
            x.publish_mb_s,
            opt(x.vs_iperf3, 2),
            x.vs_page_cache,
            x.broker_cpu_s_per_gb,
            x.broker_cores,
            x.harness_cores_per_100mb_s,
            x.broker_rss_peak_kib as f64 / 1024.0,
            x.p50_us as f64 / 1000.0,
            x.p99_us as f64 / 1000.0,
            x.p9999_us as f64 / 1000.0,
            if x.all_acked { "yes" } else { "NO" },
            x.dir,
            x.dir
        );
    }
    s
}
