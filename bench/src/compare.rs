//! `sluice-bench compare A B ...`: a side-by-side table of several runs and their spectra
//! overlaid on one plot (read back from each run's summary.json and .hgrm files).

use crate::plot::{spectrum_files, Spectrum};
use crate::recorder::{parse_percentile_distribution, Percentiles};
use crate::report::Summary;
use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Loads a run's summary.
pub fn load_summary(dir: &Path) -> Result<Summary> {
    let p = dir.join("summary.json");
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
}

fn run_label(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| dir.display().to_string())
}

/// Renders the comparison table; columns are as wide as the longest run name.
pub fn table(runs: &[(String, Summary)]) -> String {
    let width = runs
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0)
        .max(12);
    let mut out = String::new();
    let _ = write!(out, "{:<28}", "metric");
    for (label, _) in runs {
        let _ = write!(out, " {label:>width$}");
    }
    out.push('\n');
    let mut row = |name: &str, f: &dyn Fn(&Summary) -> String| {
        let _ = write!(out, "{name:<28}");
        for (_, s) in runs {
            let _ = write!(out, " {:>width$}", f(s));
        }
        out.push('\n');
    };
    row("target rate (msg/s)", &|s| {
        if s.rates.target_rate > 0.0 {
            format!("{:.0}", s.rates.target_rate)
        } else {
            "max".into()
        }
    });
    row("publish (msg/s)", &|s| {
        format!("{:.0}", s.rates.publish_msgs_per_sec)
    });
    row("publish (MB/s)", &|s| {
        format!("{:.2}", s.rates.publish_mb_per_sec)
    });
    row("consume (msg/s)", &|s| {
        format!("{:.0}", s.rates.consume_msgs_per_sec)
    });
    row("max backlog (msgs)", &|s| s.rates.max_backlog.to_string());
    row("harness CPU (cores)", &|s| {
        format!("{:.2}", s.rates.harness_cpu_cores)
    });
    type Pick = fn(&Percentiles) -> u64;
    let cols: [(&str, Pick); 7] = [
        ("p50", |p| p.p50),
        ("p75", |p| p.p75),
        ("p95", |p| p.p95),
        ("p99", |p| p.p99),
        ("p99.9", |p| p.p999),
        ("p99.99", |p| p.p9999),
        ("max", |p| p.max),
    ];
    for (name, f) in cols {
        row(&format!("publish {name} (ms)"), &|s| {
            format!("{:.3}", f(&s.publish_latency_us) as f64 / 1000.0)
        });
    }
    for (name, f) in cols {
        row(&format!("end-to-end {name} (ms)"), &|s| {
            format!("{:.3}", f(&s.e2e_latency_us) as f64 / 1000.0)
        });
    }
    row("reconciliation", &|s| {
        if s.reconciliation.ok {
            format!("OK ({})", s.reconciliation.acked)
        } else {
            format!(
                "LOST {} DUP {}",
                s.reconciliation.lost, s.reconciliation.duplicates
            )
        }
    });
    row("load average (1 min)", &|s| {
        format!("{:.2}", s.machine.load_avg_1m)
    });
    out
}

/// Compares runs: returns the table and writes overlaid spectra into `out_dir`.
pub fn compare(dirs: &[PathBuf], out_dir: &Path) -> Result<String> {
    let mut runs = Vec::new();
    let mut publish = Vec::new();
    let mut e2e = Vec::new();
    for d in dirs {
        let label = run_label(d);
        runs.push((label.clone(), load_summary(d)?));
        for (file, into) in [("publish.hgrm", &mut publish), ("e2e.hgrm", &mut e2e)] {
            let p = d.join(file);
            let text =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            into.push(Spectrum {
                label: label.clone(),
                points: parse_percentile_distribution(&text),
            });
        }
    }
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    spectrum_files(out_dir, "compare-publish", "publish latency", &publish)?;
    spectrum_files(out_dir, "compare-e2e", "end-to-end latency", &e2e)?;
    let text = table(&runs);
    std::fs::write(out_dir.join("compare.txt"), &text)
        .with_context(|| format!("writing {}", out_dir.join("compare.txt").display()))?;
    Ok(text)
}
