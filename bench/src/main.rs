//! `sluice-bench`: run workloads against any Kafka-compatible broker, compare runs, measure the
//! machine's baseline, or start the in-process fake broker.

use anyhow::{anyhow, Context, Result};
use clap::{Parser, Subcommand};
use sluice::security::client::Security;
use sluice_bench::baseline::{self, BaselineOptions};
use sluice_bench::fake_broker::{FakeBroker, LatencyModel};
use sluice_bench::report::{self, BrokerInfo};
use sluice_bench::runner::{self, RunOptions};
use sluice_bench::workload::{CompressionCodec, ConsumerMode, Workload};
use sluice_bench::{compare, payload, perf, replication};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "sluice-bench",
    version,
    about = "Kafka-protocol benchmark harness with HDR histograms"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a workload against a broker and write results/<name>/.
    Run(Box<RunArgs>),
    /// Fixed-rate runs at increasing rates up to saturation (and max rate), then a comparison.
    Sweep(Box<SweepArgs>),
    /// Compare runs side by side and overlay their latency spectra.
    Compare {
        /// Result directories (each with summary.json and .hgrm files).
        #[arg(required = true, num_args = 1..)]
        runs: Vec<PathBuf>,
        /// Where to write compare.txt and the overlaid plots.
        #[arg(long, default_value = "results/compare")]
        out: PathBuf,
    },
    /// The ISR vs majority-quorum experiment: starts local clusters itself (root: network
    /// namespaces), runs each fault scenario once per mode, writes one report.
    Replication(Box<ReplicationArgs>),
    /// Broker vs the machine's limits in one run: iperf3 loopback and a page-cache write,
    /// then fresh brokers at max rate and at fractions of the peak; writes README.md,
    /// perf.json and .hgrm files.
    Perf(Box<PerfArgs>),
    /// Measure the machine's limits: disk write, loopback TCP, file-to-socket transfer.
    Baseline {
        /// Directory on the file system to measure (the broker's data directory).
        #[arg(long, default_value = "/tmp")]
        data_dir: PathBuf,
        /// MiB moved per measurement.
        #[arg(long, default_value_t = 256)]
        mib: u64,
        /// Chunk size in KiB.
        #[arg(long, default_value_t = 1024)]
        chunk_kib: usize,
        /// Repetitions per measurement (median reported).
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Output file.
        #[arg(long, default_value = "results/baseline/baseline.json")]
        out: PathBuf,
    },
    /// Run the in-process fake broker with an injected Produce latency (for trust checks).
    FakeBroker {
        /// Listen address (127.0.0.1 only is sensible).
        #[arg(long, default_value = "127.0.0.1:19092")]
        listen: String,
        /// Latency steps "delay:weight,...", e.g. "5ms:90,20ms:9,100ms:1".
        #[arg(long, default_value = "1ms")]
        latency: String,
        /// Start of a stall (seconds after start) during which no Produce response leaves.
        #[arg(long)]
        stall_at: Option<f64>,
        /// Length of the stall in seconds.
        #[arg(long, default_value_t = 1.0)]
        stall_for: f64,
        /// Stop after this many seconds.
        #[arg(long, default_value_t = 60.0)]
        duration: f64,
    },
}

#[derive(clap::Args)]
struct ReplicationArgs {
    /// The `sluice` broker binary (default: next to sluice-bench).
    #[arg(long)]
    sluice_bin: Option<PathBuf>,
    /// Report directory.
    #[arg(long, default_value = "results/replication")]
    out: PathBuf,
    /// Brokers' data directories (each case's is removed after it).
    #[arg(long, default_value = "/tmp/sluice-replexp")]
    work_dir: PathBuf,
    /// Fixed producer rates, msgs/s: all for `healthy`, the first for the fault scenarios.
    #[arg(long, value_delimiter = ',', default_value = "1000,4000")]
    rates: Vec<f64>,
    /// Slow-follower delays in ms (the largest is used with five brokers).
    #[arg(long, value_delimiter = ',', default_value = "1,10,50")]
    delays_ms: Vec<u64>,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 15.0)]
    duration: f64,
    /// Warm-up seconds per run.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Scenarios (default: all).
    #[arg(long, value_delimiter = ',', value_enum)]
    scenarios: Vec<replication::Scenario>,
    /// Payload seed (the same for both modes).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Message size in bytes.
    #[arg(long, default_value_t = 1024)]
    message_size: usize,
}

#[derive(clap::Args)]
struct PerfArgs {
    /// Broker binary (repeat to interleave several, e.g. before and after a change; default:
    /// `sluice` next to sluice-bench).
    #[arg(long)]
    sluice_bin: Vec<PathBuf>,
    /// Label per --sluice-bin, in the same order.
    #[arg(long)]
    label: Vec<String>,
    /// Broker setting "key=value" for every broker (repeatable).
    #[arg(long = "set")]
    settings: Vec<String>,
    /// Report directory.
    #[arg(long, default_value = "results/perf")]
    out: PathBuf,
    /// Brokers' data directories and the page-cache test file (removed after use).
    #[arg(long, default_value = "/tmp/sluice-perf")]
    work_dir: PathBuf,
    /// Rounds; each measures the limits and then every binary.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Partitions.
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// Producers.
    #[arg(long, default_value_t = 1)]
    producers: u32,
    /// Message size, bytes.
    #[arg(long, default_value_t = 1000)]
    message_size: usize,
    /// batch.size, bytes.
    #[arg(long, default_value_t = 1 << 20)]
    batch_size: usize,
    /// linger.ms of the max-rate run (fixed-rate runs use 0).
    #[arg(long, default_value_t = 5.0)]
    linger_ms: f64,
    /// acks: 0, 1 or -1/all.
    #[arg(long, default_value = "1", allow_hyphen_values = true)]
    acks: String,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 12.0)]
    duration: f64,
    /// Warm-up seconds per run.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Fixed-rate runs as fractions of the measured peak.
    #[arg(long, value_delimiter = ',', default_value = "0.1,0.5")]
    fractions: Vec<f64>,
    /// iperf3 seconds per round (0 = skip).
    #[arg(long, default_value_t = 5)]
    iperf_seconds: u64,
    /// MiB written for the page-cache measurement.
    #[arg(long, default_value_t = 2048)]
    page_cache_mib: u64,
    /// Harness worker threads (0 = one per CPU).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

#[derive(clap::Args)]
struct SweepArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Rates to try in order, msgs/s (comma-separated).
    #[arg(long, value_delimiter = ',', required = true)]
    rates: Vec<f64>,
    /// Stop when the achieved rate falls below this fraction of the target.
    #[arg(long, default_value_t = 0.95)]
    saturation: f64,
    /// Finish with a max-rate (closed-loop) run.
    #[arg(long)]
    with_max: bool,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Workload file (TOML, OMB vocabulary). Without it, flags define a one-off workload.
    #[arg(long, short)]
    workload: Option<PathBuf>,
    /// Bootstrap broker "host:port".
    #[arg(long, short, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// Results directory name under --results-dir (default: derived from the workload).
    #[arg(long)]
    name: Option<String>,
    /// Parent directory of results.
    #[arg(long, default_value = "results")]
    results_dir: PathBuf,
    /// Label of the broker in reports.
    #[arg(long, default_value = "")]
    broker_label: String,
    /// Baseline file to report ratios against.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Total producer rate, msgs/s (0 = max rate).
    #[arg(long)]
    rate: Option<f64>,
    /// Measured duration, seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Warm-up, seconds.
    #[arg(long)]
    warmup: Option<f64>,
    /// Partitions per topic.
    #[arg(long)]
    partitions: Option<u32>,
    /// Message size in bytes.
    #[arg(long)]
    message_size: Option<usize>,
    /// Producers per topic.
    #[arg(long)]
    producers: Option<u32>,
    /// Consumers per subscription.
    #[arg(long)]
    consumers: Option<u32>,
    /// Subscriptions per topic (each reads every message; one consumer group each).
    #[arg(long)]
    subscriptions: Option<u32>,
    /// Consumers in a group per subscription ("group", OMB's model) or by assignment ("assign").
    #[arg(long)]
    consumer_mode: Option<ConsumerMode>,
    /// Group mode: preferred assignor, "range" or "roundrobin".
    #[arg(long)]
    assignor: Option<String>,
    /// acks: 0, 1 or -1/all.
    #[arg(long, allow_hyphen_values = true)]
    acks: Option<String>,
    /// linger.ms.
    #[arg(long)]
    linger_ms: Option<f64>,
    /// batch.size in bytes.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Max in-flight requests per connection.
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// Compression: none, gzip, snappy, lz4, zstd.
    #[arg(long)]
    compression: Option<CompressionCodec>,
    /// Replication factor of the created topic.
    #[arg(long)]
    replication_factor: Option<i16>,
    /// Seconds consumers may take after producers stop to read everything.
    #[arg(long)]
    drain_timeout: Option<f64>,
    /// Tokio worker threads (0 = one per CPU).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Seed for payload bytes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Exit 0 even if acked and consumed messages do not reconcile.
    #[arg(long)]
    allow_mismatch: bool,
    /// Do not draw the progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Kafka client properties file (`security.protocol`, `ssl.*`, `sasl.*`), as Kafka's
    /// tools take with --command-config; the same keys as sluicectl.
    #[arg(long)]
    command_config: Option<PathBuf>,
    /// One client property, key=value (repeatable; wins over --command-config), as kcat -X.
    #[arg(short = 'X', long = "property", value_name = "KEY=VALUE")]
    property: Vec<String>,
}

fn build_workload(a: &RunArgs) -> Result<Workload> {
    let mut w = match &a.workload {
        Some(p) => Workload::load(p)?,
        None => Workload::from_toml(
            &format!(
                "name = \"cli\"\npartitionsPerTopic = 16\nmessageSize = {}\nproducerRate = 1000\ntestDurationSeconds = 10\n",
                1024.max(payload::HEADER_LEN)
            ),
            "defaults",
        )?,
    };
    if let Some(v) = a.rate {
        w.producer_rate = v;
    }
    if let Some(v) = a.duration {
        w.test_duration_seconds = Some(v);
        w.test_duration_minutes = None;
    }
    if let Some(v) = a.warmup {
        w.warmup_duration_seconds = Some(v);
        w.warmup_duration_minutes = None;
    }
    if let Some(v) = a.partitions {
        w.partitions_per_topic = v;
    }
    if let Some(v) = a.message_size {
        w.message_size = v;
    }
    if let Some(v) = a.producers {
        w.producers_per_topic = v;
    }
    if let Some(v) = a.consumers {
        w.consumer_per_subscription = v;
    }
    if let Some(v) = a.subscriptions {
        w.subscriptions_per_topic = v;
    }
    if let Some(v) = a.consumer_mode {
        w.consumer_mode = v;
    }
    if let Some(v) = &a.assignor {
        w.partition_assignor = v.clone();
    }
    if let Some(v) = &a.acks {
        w.acks = match v.as_str() {
            "all" | "-1" => -1,
            "0" => 0,
            "1" => 1,
            other => return Err(anyhow!("acks must be 0, 1, -1 or all, not {other}")),
        };
    }
    if let Some(v) = a.linger_ms {
        w.linger_ms = v;
    }
    if let Some(v) = a.batch_size {
        w.batch_size = v;
    }
    if let Some(v) = a.max_in_flight {
        w.max_in_flight = v;
    }
    if let Some(v) = a.compression {
        w.compression = v;
    }
    if let Some(v) = a.replication_factor {
        w.replication_factor = v;
    }
    if let Some(v) = a.drain_timeout {
        w.drain_timeout_seconds = v;
    }
    w.validate()?;
    Ok(w)
}

fn default_name(w: &Workload, a: &RunArgs) -> String {
    let stem = a
        .workload
        .as_ref()
        .and_then(|p| p.file_stem())
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| format!("cli-{}p", w.partitions_per_topic));
    let rate = if w.is_max_rate() {
        "max".to_string()
    } else {
        format!("{}", w.producer_rate.round() as u64)
    };
    format!("bench-{stem}-{rate}")
}

/// Runs one workload and writes `results/<name>/`; returns its summary.
fn run_once(a: &RunArgs, w: &Workload, name: &str) -> Result<report::Summary> {
    let dir = a.results_dir.join(name);
    let baseline = match &a.baseline {
        Some(p) => Some((p.display().to_string(), baseline::load(p)?)),
        None => None,
    };
    let opts = RunOptions {
        bootstrap: a.bootstrap.clone(),
        topic_prefix: "sluice-bench".to_string(),
        threads: a.threads,
        seed: a.seed,
        progress: !a.no_progress && std::io::stderr().is_terminal(),
        markers: Vec::new(),
        security: Security::from_sources(a.command_config.as_deref(), &a.property)?,
    };
    let outcome = runner::run(w, &opts)?;
    let summary = report::summarize(
        name,
        &outcome,
        BrokerInfo {
            bootstrap: a.bootstrap.clone(),
            label: a.broker_label.clone(),
        },
        baseline.as_ref().map(|(f, b)| (f.as_str(), b)),
    );
    report::write_run(&dir, &summary, &outcome)?;
    out(&report::render_text(&summary));
    out(&format!("results: {}\n", dir.display()));
    Ok(summary)
}

fn mismatch_exit(ok: bool, allow: bool) -> i32 {
    if ok || allow {
        0
    } else {
        eprintln!("reconciliation MISMATCH: acknowledged messages were lost or duplicated");
        2
    }
}

fn cmd_run(a: RunArgs) -> Result<i32> {
    let w = build_workload(&a)?;
    let name = a.name.clone().unwrap_or_else(|| default_name(&w, &a));
    let summary = run_once(&a, &w, &name)?;
    Ok(mismatch_exit(summary.reconciliation.ok, a.allow_mismatch))
}

/// Fixed-rate runs at increasing rates until the broker no longer keeps up (achieved rate
/// below `saturation` x target), optionally followed by a max-rate run; then a comparison.
fn cmd_sweep(s: SweepArgs) -> Result<i32> {
    let base = build_workload(&s.run)?;
    let stem = s.run.name.clone().unwrap_or_else(|| {
        default_name(&base, &s.run)
            .trim_end_matches(|c: char| c != '-')
            .trim_end_matches('-')
            .to_string()
    });
    let mut dirs = Vec::new();
    let mut all_ok = true;
    for rate in &s.rates {
        if *rate <= 0.0 {
            return Err(anyhow!(
                "sweep rates must be > 0 (use --with-max for max rate)"
            ));
        }
        let mut w = base.clone();
        w.producer_rate = *rate;
        let name = format!("{stem}-{}", rate.round() as u64);
        let summary = run_once(&s.run, &w, &name)?;
        all_ok &= summary.reconciliation.ok;
        dirs.push(s.run.results_dir.join(&name));
        if summary.rates.publish_msgs_per_sec < s.saturation * rate {
            out(&format!(
                "saturated at {rate} msg/s (achieved {:.0}); stopping the sweep\n",
                summary.rates.publish_msgs_per_sec
            ));
            break;
        }
    }
    if s.with_max {
        let mut w = base.clone();
        w.producer_rate = 0.0;
        let name = format!("{stem}-max");
        let summary = run_once(&s.run, &w, &name)?;
        all_ok &= summary.reconciliation.ok;
        dirs.push(s.run.results_dir.join(&name));
    }
    let cmp = s.run.results_dir.join(format!("{stem}-sweep"));
    out(&compare::compare(&dirs, &cmp)?);
    out(&format!("plots: {}\n", cmp.display()));
    Ok(mismatch_exit(all_ok, s.run.allow_mismatch))
}

/// Runs the replication experiment and prints its table; exit 2 if an acknowledged message
/// was lost.
fn cmd_replication(a: ReplicationArgs) -> Result<i32> {
    let opts = replication::ExperimentOptions {
        binary: a.sluice_bin.unwrap_or_else(replication::default_binary),
        out: a.out.clone(),
        work_dir: a.work_dir,
        rates: a.rates,
        delays_ms: a.delays_ms,
        duration: a.duration,
        warmup: a.warmup,
        scenarios: if a.scenarios.is_empty() {
            replication::Scenario::ALL.to_vec()
        } else {
            a.scenarios
        },
        seed: a.seed,
        message_size: a.message_size,
    };
    let results = replication::run(&opts)?;
    out(&replication::render_table(&results));
    out(&format!("report: {}\n", a.out.display()));
    Ok(mismatch_exit(replication::all_reconciled(&results), false))
}

/// Runs `sluice-bench perf` and prints its table; exit 2 if a run lost acknowledgements.
fn cmd_perf(a: PerfArgs) -> Result<i32> {
    let acks = match a.acks.as_str() {
        "all" | "-1" => -1,
        "0" => 0,
        "1" => 1,
        other => return Err(anyhow!("acks must be 0, 1, -1 or all, not {other}")),
    };
    if a.fractions.iter().any(|f| !(*f > 0.0 && *f <= 1.0)) {
        return Err(anyhow!("--fractions must be in (0, 1]"));
    }
    let binaries = if a.sluice_bin.is_empty() {
        vec![replication::default_binary()]
    } else {
        a.sluice_bin
    };
    let opts = perf::PerfOptions {
        binaries,
        labels: a.label,
        broker_settings: a.settings,
        out: a.out.clone(),
        work_dir: a.work_dir,
        rounds: a.rounds,
        partitions: a.partitions,
        producers: a.producers,
        message_size: a.message_size,
        batch_size: a.batch_size,
        linger_ms: a.linger_ms,
        acks,
        duration: a.duration,
        warmup: a.warmup,
        fractions: a.fractions,
        iperf_seconds: a.iperf_seconds,
        page_cache_mib: a.page_cache_mib,
        threads: a.threads,
    };
    let report = perf::run(&opts)?;
    out(&perf::render(&report, &opts));
    out(&format!("report: {}\n", a.out.join("README.md").display()));
    Ok(if report.runs.iter().all(|r| r.all_acked) {
        0
    } else {
        2
    })
}

/// Writes to stdout, ignoring a closed pipe (`sluice-bench compare ... | head`).
fn out(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let code = match real_main() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn real_main() -> Result<i32> {
    match Cli::parse().command {
        Command::Run(a) => cmd_run(*a),
        Command::Sweep(s) => cmd_sweep(*s),
        Command::Replication(r) => cmd_replication(*r),
        Command::Perf(p) => cmd_perf(*p),
        Command::Compare { runs, out: out_dir } => {
            let table = compare::compare(&runs, &out_dir)?;
            out(&table);
            out(&format!("plots: {}\n", out_dir.display()));
            Ok(0)
        }
        Command::Baseline {
            data_dir,
            mib,
            chunk_kib,
            repeats,
            out: out_file,
        } => {
            let b = baseline::run(&BaselineOptions {
                data_dir,
                bytes: mib << 20,
                chunk: chunk_kib << 10,
                repeats,
            })?;
            if let Some(parent) = out_file.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            std::fs::write(&out_file, serde_json::to_string_pretty(&b)? + "\n")
                .with_context(|| format!("writing {}", out_file.display()))?;
            out(&format!(
                "disk write buffered {:.0} MB/s, fdatasync {:.0} MB/s, loopback TCP {:.0} MB/s,\nfile->socket copy {:.0} MB/s, sendfile {:.0} MB/s, splice {:.0} MB/s\nwritten: {}",
                b.disk_write_buffered_mb_s,
                b.disk_write_fdatasync_mb_s,
                b.loopback_tcp_mb_s,
                b.file_to_socket_copy_mb_s,
                b.file_to_socket_sendfile_mb_s,
                b.file_to_socket_splice_mb_s,
                out_file.display()
            ));
            Ok(0)
        }
        Command::FakeBroker {
            listen,
            latency,
            stall_at,
            stall_for,
            duration,
        } => {
            let mut model = LatencyModel::parse(&latency).map_err(|e| anyhow!(e))?;
            model.stall = stall_at.map(|s| {
                (
                    Duration::from_secs_f64(s.max(0.0)),
                    Duration::from_secs_f64(stall_for.max(0.0)),
                )
            });
            let broker = FakeBroker::start(&listen, model)?;
            out(&format!(
                "fake broker on {} for {duration} s\n",
                broker.addr()
            ));
            let end = Instant::now() + Duration::from_secs_f64(duration.max(0.0));
            while Instant::now() < end {
                std::thread::sleep(Duration::from_millis(100));
            }
            drop(broker);
            Ok(0)
        }
    }
}
