//! Writes a run's results directory: summary.json, publish.hgrm, publish-uncorrected.hgrm,
//! e2e.hgrm, timeseries.csv and the plots.

use crate::baseline::Baseline;
use crate::group_consumer::GroupReport;
use crate::ledger::Reconciliation;
use crate::machine::{command_line, git_commit, Machine};
use crate::plot;
use crate::recorder::{percentile_distribution, Percentiles};
use crate::runner::{Rates, RunOutcome};
use crate::workload::Workload;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

/// The broker a run measured.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct BrokerInfo {
    /// Bootstrap address.
    pub bootstrap: String,
    /// Free-form label (e.g. "sluice 0.1.0 single node").
    pub label: String,
}

/// Ratios of this run to the machine's raw limits measured by `sluice-bench baseline`.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct BaselineRatio {
    /// The baseline file.
    pub baseline_file: String,
    /// Publish MB/s over buffered sequential write MB/s.
    pub publish_vs_disk_buffered: f64,
    /// Publish MB/s over sequential write with fdatasync MB/s.
    pub publish_vs_disk_fdatasync: f64,
    /// Publish MB/s over loopback TCP MB/s.
    pub publish_vs_loopback_tcp: f64,
    /// Consume MB/s over file-to-socket sendfile MB/s.
    pub consume_vs_sendfile: f64,
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Results directory name.
    pub name: String,
    /// The workload as run (after CLI overrides).
    pub workload: Workload,
    /// Topic(s) used.
    pub topic: String,
    /// Broker measured.
    pub broker: BrokerInfo,
    /// Exact command line.
    pub command: String,
    /// Git commit of the harness.
    pub git_commit: String,
    /// Machine.
    pub machine: Machine,
    /// UTC time the report was written (seconds since the epoch).
    pub written_at_unix: u64,
    /// Publish latency from intended send time (CO-corrected), microseconds.
    pub publish_latency_us: Percentiles,
    /// Publish latency from actual send time (not CO-corrected), microseconds.
    pub publish_latency_uncorrected_us: Percentiles,
    /// End-to-end latency from intended send time, microseconds.
    pub e2e_latency_us: Percentiles,
    /// Measured-window rates.
    pub rates: Rates,
    /// Acked vs consumed.
    pub reconciliation: Reconciliation,
    /// Messages generated but never sent.
    pub unsent: u64,
    /// First errors seen.
    pub errors: Vec<String>,
    /// Ratios to a baseline, when one was given.
    pub baseline: Option<BaselineRatio>,
    /// Events on the time axis (warm-up end, injected faults).
    pub markers: Vec<plot::Marker>,
    /// Consumer groups of a group-mode run: generations and partition ownership over time.
    #[serde(default)]
    pub groups: Vec<GroupReport>,
}

/// Builds the summary of a run.
pub fn summarize(
    name: &str,
    outcome: &RunOutcome,
    broker: BrokerInfo,
    baseline: Option<(&str, &Baseline)>,
) -> Summary {
    let ratio = baseline.map(|(file, b)| {
        let r = |x: f64, y: f64| if y > 0.0 { x / y } else { 0.0 };
        BaselineRatio {
            baseline_file: file.to_string(),
            publish_vs_disk_buffered: r(
                outcome.rates.publish_mb_per_sec,
                b.disk_write_buffered_mb_s,
            ),
            publish_vs_disk_fdatasync: r(
                outcome.rates.publish_mb_per_sec,
                b.disk_write_fdatasync_mb_s,
            ),
            publish_vs_loopback_tcp: r(outcome.rates.publish_mb_per_sec, b.loopback_tcp_mb_s),
            consume_vs_sendfile: r(
                outcome.rates.consume_mb_per_sec,
                b.file_to_socket_sendfile_mb_s,
            ),
        }
    });
    Summary {
        name: name.to_string(),
        workload: outcome.workload.clone(),
        topic: outcome.topic.clone(),
        broker,
        command: command_line(),
        git_commit: git_commit(),
        machine: Machine::probe(),
        written_at_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        publish_latency_us: Percentiles::of(&outcome.publish),
        publish_latency_uncorrected_us: Percentiles::of(&outcome.publish_uncorrected),
        e2e_latency_us: Percentiles::of(&outcome.e2e),
        rates: outcome.rates.clone(),
        reconciliation: outcome.reconciliation.clone(),
        unsent: outcome.unsent,
        errors: outcome.errors.clone(),
        baseline: ratio,
        markers: outcome.markers.clone(),
        groups: outcome.groups.clone(),
    }
}

/// Writes every output file of a run into `dir` (created if missing).
pub fn write_run(dir: &Path, summary: &Summary, outcome: &RunOutcome) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |file: &str, text: String| -> Result<()> {
        let p = dir.join(file);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))
    };
    write(
        "summary.json",
        serde_json::to_string_pretty(summary)? + "\n",
    )?;
    write("publish.hgrm", percentile_distribution(&outcome.publish))?;
    write(
        "publish-uncorrected.hgrm",
        percentile_distribution(&outcome.publish_uncorrected),
    )?;
    write("e2e.hgrm", percentile_distribution(&outcome.e2e))?;
    let mut csv = String::from(
        "t_s,warmup,publish_msgs_s,publish_mb_s,consume_msgs_s,consume_mb_s,backlog,failed,publish_p50_ms,publish_p99_ms,e2e_p50_ms,e2e_p99_ms\n",
    );
    for s in &outcome.timeseries {
        let _ = writeln!(
            csv,
            "{:.3},{},{:.1},{:.3},{:.1},{:.3},{},{},{:.3},{:.3},{:.3},{:.3}",
            s.t,
            s.warmup as u8,
            s.publish_rate,
            s.publish_mb,
            s.consume_rate,
            s.consume_mb,
            s.backlog,
            s.failed,
            s.publish_p50_ms,
            s.publish_p99_ms,
            s.e2e_p50_ms,
            s.e2e_p99_ms
        );
    }
    write("timeseries.csv", csv)?;
    let title = if summary.broker.label.is_empty() {
        summary.workload.name.clone()
    } else {
        format!("{} ({})", summary.workload.name, summary.broker.label)
    };
    let series = vec![
        plot::Spectrum::from_histogram("publish (CO-corrected)", &outcome.publish),
        plot::Spectrum::from_histogram("publish (uncorrected)", &outcome.publish_uncorrected),
        plot::Spectrum::from_histogram("end-to-end", &outcome.e2e),
    ];
    plot::spectrum_files(dir, "latency-spectrum", &title, &series)?;
    plot::throughput_files(
        dir,
        "throughput",
        &title,
        &outcome.timeseries,
        &outcome.markers,
    )?;
    Ok(())
}

/// A one-screen text summary for the terminal.
pub fn render_text(s: &Summary) -> String {
    let mut out = String::new();
    let r = &s.rates;
    let _ = writeln!(out, "{} -> {}", s.workload.name, s.broker.bootstrap);
    let _ = writeln!(
        out,
        "publish {:.0} msg/s ({:.2} MB/s), consume {:.0} msg/s ({:.2} MB/s), target {}, harness CPU {:.2} cores",
        r.publish_msgs_per_sec,
        r.publish_mb_per_sec,
        r.consume_msgs_per_sec,
        r.consume_mb_per_sec,
        if r.target_rate > 0.0 {
            format!("{:.0} msg/s", r.target_rate)
        } else {
            "max".to_string()
        },
        r.harness_cpu_cores
    );
    let _ = writeln!(
        out,
        "{:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "latency (ms)", "p50", "p75", "p95", "p99", "p99.9", "p99.99", "max"
    );
    for (label, p) in [
        ("publish", &s.publish_latency_us),
        ("publish (uncorrected)", &s.publish_latency_uncorrected_us),
        ("end-to-end", &s.e2e_latency_us),
    ] {
        let m = |v: u64| v as f64 / 1000.0;
        let _ = writeln!(
            out,
            "{:<22} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            label,
            m(p.p50),
            m(p.p75),
            m(p.p95),
            m(p.p99),
            m(p.p999),
            m(p.p9999),
            m(p.max)
        );
    }
    let c = &s.reconciliation;
    let _ = writeln!(
        out,
        "reconciliation: sent {} acked {} failed {} consumed {} lost {} duplicates {} (after rebalance {}) consumed-unacked {} => {}",
        c.sent,
        c.acked,
        c.failed,
        c.consumed,
        c.lost,
        c.duplicates,
        c.rebalance_duplicates,
        c.consumed_unacked,
        if c.ok { "OK" } else { "MISMATCH" }
    );
    for g in &s.groups {
        let _ = writeln!(
            out,
            "group {}: {} members, generations {:?}, {} ownership intervals, {} => {}",
            g.group_id,
            g.members,
            g.generations,
            g.ownership.len(),
            if g.never_owned.is_empty() {
                "every partition owned".to_string()
            } else {
                format!("partitions never owned {:?}", g.never_owned)
            },
            if g.overlaps.is_empty() {
                "one owner at a time"
            } else {
                "OVERLAPPING OWNERS"
            }
        );
    }
    if let Some(b) = &s.baseline {
        let _ = writeln!(
            out,
            "vs baseline: publish/disk-buffered {:.3}, publish/disk-fdatasync {:.3}, publish/loopback-tcp {:.3}, consume/sendfile {:.3}",
            b.publish_vs_disk_buffered, b.publish_vs_disk_fdatasync, b.publish_vs_loopback_tcp, b.consume_vs_sendfile
        );
    }
    out
}
