//! CI smoke runs of the `sluice-bench` binary (a few seconds of light load each): against the
//! in-process fake broker always, and against a local Sluice broker when its binary has been
//! built (`cargo build --release -p engine --bin sluice`; `SLUICE_BIN` overrides the path, and
//! `SLUICE_SMOKE_REQUIRED=1` turns a missing binary into a failure). Each checks every output
//! file and the reconciliation; no timing is asserted.

mod support;

use sluice_bench::fake_broker::{FakeBroker, LatencyModel};
use sluice_bench::report::Summary;
use std::path::{Path, PathBuf};
use std::process::Command;

const OUTPUTS: &[&str] = &[
    "summary.json",
    "publish.hgrm",
    "publish-uncorrected.hgrm",
    "e2e.hgrm",
    "timeseries.csv",
    "latency-spectrum.svg",
    "latency-spectrum.png",
    "throughput.svg",
    "throughput.png",
];

fn workload() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads/smoke.toml")
}

/// Runs the smoke workload through the binary (with `extra` flags) and checks its results
/// directory.
fn smoke_run(bootstrap: &str, results: &Path, name: &str, label: &str, extra: &[&str]) -> Summary {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-bench"))
        .args(["run", "--no-progress", "--threads", "2", "--duration", "2"])
        .args(extra)
        .arg("--workload")
        .arg(workload())
        .args([
            "--bootstrap",
            bootstrap,
            "--name",
            name,
            "--broker-label",
            label,
        ])
        .arg("--results-dir")
        .arg(results)
        .output()
        .expect("running sluice-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "sluice-bench failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("reconciliation:"), "{stdout}");
    let dir = results.join(name);
    for f in OUTPUTS {
        let meta = std::fs::metadata(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(meta.len() > 0, "{f} is empty");
    }
    let summary: Summary =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    let r = &summary.reconciliation;
    // Duplicates are allowed only as replays after a rebalance (group mode, at-least-once).
    assert!(
        r.ok && r.lost == 0 && r.duplicates == r.rebalance_duplicates,
        "{r:?}"
    );
    assert!(r.acked > 0 && r.consumed >= r.acked, "{r:?}");
    assert!(summary.publish_latency_us.count > 0 && summary.e2e_latency_us.count > 0);
    assert!(summary.machine.nproc > 0 && !summary.command.is_empty());
    let hgrm = std::fs::read_to_string(dir.join("publish.hgrm")).unwrap();
    assert!(hgrm.contains("#[Max"), "{hgrm}");
    let csv = std::fs::read_to_string(dir.join("timeseries.csv")).unwrap();
    assert!(csv.lines().count() >= 3, "{csv}");
    summary
}

#[test]
fn smoke_against_the_fake_broker_and_compare() {
    let broker = FakeBroker::start("127.0.0.1:0", LatencyModel::parse("1ms").unwrap()).unwrap();
    let results = tempfile::tempdir().unwrap();
    let s = smoke_run(
        &broker.addr().to_string(),
        results.path(),
        "fake",
        "fake broker",
        // The fake broker serves no consumer groups.
        &["--consumer-mode", "assign"],
    );
    assert!(s.groups.is_empty());
    // Open loop: exactly rate x (warm-up + duration) messages are sent, 2000/s x 3 s.
    assert_eq!(s.reconciliation.sent, 6000, "{:?}", s.reconciliation);
    // One warm-up second and two measured seconds in the time series.
    let csv = std::fs::read_to_string(results.path().join("fake/timeseries.csv")).unwrap();
    let rows: Vec<(f64, bool)> = csv
        .lines()
        .skip(1)
        .map(|l| {
            let mut f = l.split(',');
            let t: f64 = f.next().unwrap().parse().unwrap();
            (t, f.next() == Some("1"))
        })
        .collect();
    assert_eq!(
        rows.iter().filter(|(t, w)| *w && *t < 1.5).count(),
        1,
        "{csv}"
    );
    // Measured rows follow the warm-up; how many whole seconds the sampler closes before the
    // run ends depends on scheduling on a loaded machine, so only their presence and order count.
    let measured: Vec<f64> = rows.iter().filter(|(_, w)| !*w).map(|(t, _)| *t).collect();
    assert!(!measured.is_empty() && measured.len() <= 2, "{csv}");
    assert!(measured.iter().all(|t| *t > 1.5 && *t < 3.5), "{csv}");
    assert!(
        (s.rates.publish_msgs_per_sec - 2000.0).abs() < 100.0,
        "{:?}",
        s.rates
    );
    // The fake broker acknowledges a request 1 ms after the intended send time of its first
    // record, so at least half of the records (the first of each request) wait 1 ms or more.
    assert!(
        s.publish_latency_us.p50 >= 1000 || s.publish_latency_us.p99 >= 1000,
        "{:?}",
        s.publish_latency_us
    );

    let out = Command::new(env!("CARGO_BIN_EXE_sluice-bench"))
        .arg("compare")
        .arg(results.path().join("fake"))
        .arg(results.path().join("fake"))
        .arg("--out")
        .arg(results.path().join("cmp"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("publish p99 (ms)"), "{table}");
    for f in ["compare.txt", "compare-publish.png", "compare-e2e.svg"] {
        assert!(results.path().join("cmp").join(f).exists(), "{f}");
    }
}

#[test]
fn smoke_against_a_local_sluice_broker() {
    let Some(broker) = support::start_sluice() else {
        return;
    };
    let addr = broker.addr.clone();
    let results = tempfile::tempdir().unwrap();
    // OMB's model: the smoke workload's two consumers form one group on four partitions.
    let s = smoke_run(
        &addr,
        results.path(),
        "sluice",
        "sluice single node",
        &["--consumer-mode", "group"],
    );
    assert_eq!(s.groups.len(), 1, "{:?}", s.groups);
    let g = &s.groups[0];
    assert_eq!(g.members, 2, "{g:?}");
    assert!(g.stable_generation >= 1, "{g:?}");
    // Each partition consumed by exactly one member at a time, and every one consumed.
    assert!(g.overlaps.is_empty(), "{g:?}");
    assert!(g.never_owned.is_empty(), "{g:?}");
    // In the generation the run measured, the four partitions are split between both members.
    let mut owners: Vec<(i32, u32)> = g
        .ownership
        .iter()
        .filter(|o| o.generation == g.stable_generation)
        .map(|o| (o.partition, o.member))
        .collect();
    owners.sort_unstable();
    owners.dedup();
    assert_eq!(
        owners.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        vec![0, 1, 2, 3],
        "{g:?}"
    );
    let members: std::collections::BTreeSet<u32> = owners.iter().map(|(_, m)| *m).collect();
    assert_eq!(members.len(), 2, "{g:?}");
    // Members read forward: each interval ends at or after where it started.
    assert!(
        g.ownership.iter().all(|o| o.end_offset >= o.start_offset),
        "{g:?}"
    );
}
