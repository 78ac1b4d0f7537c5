//! Smoke run of `sluice-bench perf` (a few seconds): one round against a local Sluice broker
//! binary (skipped without one, unless SLUICE_SMOKE_REQUIRED is set), checking the report
//! files, that every run reconciled, and that the brokers' data directories are gone. No
//! timing is asserted.

#[allow(dead_code)] // the broker-starting helpers serve the other test files
mod support;

use std::process::Command;

#[test]
fn perf_command_writes_its_report_and_cleans_up() {
    let Some(bin) = support::sluice_binary().filter(|b| b.is_file()) else {
        assert!(
            std::env::var("SLUICE_SMOKE_REQUIRED").is_err(),
            "SLUICE_SMOKE_REQUIRED is set but no sluice broker binary was found"
        );
        eprintln!("skipping: no sluice binary (cargo build -p engine --bin sluice)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("report");
    let work = tmp.path().join("work");
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-bench"))
        .arg("perf")
        .arg("--sluice-bin")
        .arg(&bin)
        .args(["--label", "smoke", "--rounds", "1", "--duration", "2"])
        .args([
            "--warmup",
            "0.5",
            "--fractions",
            "0.5",
            "--iperf-seconds",
            "1",
        ])
        .args([
            "--page-cache-mib",
            "8",
            "--batch-size",
            "65536",
            "--threads",
            "2",
        ])
        .arg("--out")
        .arg(&out_dir)
        .arg("--work-dir")
        .arg(&work)
        .output()
        .expect("running sluice-bench perf");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "sluice-bench perf failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("| round | broker | load |"), "{stdout}");

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("perf.json")).unwrap()).unwrap();
    let runs = report["runs"].as_array().unwrap();
    let loads: Vec<&str> = runs.iter().map(|r| r["load"].as_str().unwrap()).collect();
    assert_eq!(loads, ["max", "50%"]);
    for r in runs {
        assert_eq!(r["all_acked"], true, "{r}");
        // publish_mb_s averages whole one-second samples, which a loaded machine may not
        // deliver in a short run: only its presence is checked.
        assert!(r["publish_mb_s"].as_f64().is_some(), "{r}");
        assert!(r["broker_cpu_s_per_gb"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["broker_rss_peak_kib"].as_u64().unwrap() > 0, "{r}");
        let dir = out_dir.join(r["dir"].as_str().unwrap());
        for f in ["publish.hgrm", "summary.json"] {
            let len = std::fs::metadata(dir.join(f)).map_or(0, |m| m.len());
            assert!(len > 0, "{} missing or empty", dir.join(f).display());
        }
    }
    let limits = &report["limits"][0];
    assert!(limits["page_cache_write_mb_s"].as_f64().unwrap() > 0.0);
    // iperf3 may be missing on a developer machine: then the report says why.
    assert!(
        limits["iperf3_mb_s"].as_f64().is_some()
            || !limits["iperf3_note"].as_str().unwrap().is_empty()
    );
    let readme = std::fs::read_to_string(out_dir.join("README.md")).unwrap();
    assert!(readme.contains("x iperf3") && readme.contains("publish.hgrm"));
    // Every broker's data directory and the page-cache file were removed.
    let left: Vec<_> = std::fs::read_dir(&work)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in the work dir: {left:?}");
}
