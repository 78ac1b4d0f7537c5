//! CI smoke of the replication experiment (issue 7): every scenario, both modes, at a low
//! rate for a few seconds against real `sluice` clusters in network namespaces. Checks that
//! each case writes its report files and that no acknowledged message was lost; no timing is
//! asserted. Needs root and a `sluice` build (SLUICE_BIN, else target/{release,debug}/sluice);
//! skips otherwise unless SLUICE_SMOKE_REQUIRED is set.

use sluice_bench::replication::{self, ExperimentOptions, Scenario};
#[allow(dead_code)] // the broker-starting helpers serve the other test files
mod support;

#[test]
fn every_scenario_reports_and_reconciles() {
    let Some(binary) = support::sluice_binary_with_netns() else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let opts = ExperimentOptions {
        binary,
        out: out.path().to_path_buf(),
        work_dir: work.path().to_path_buf(),
        rates: vec![200.0],
        delays_ms: vec![10],
        duration: 5.0,
        warmup: 1.0,
        scenarios: Scenario::ALL.to_vec(),
        seed: 7,
        message_size: 1024,
    };
    let results = replication::run(&opts).unwrap();
    eprintln!("{}", replication::render_table(&results));
    // One slow-follower delay: six cases, each in both modes.
    assert_eq!(results.len(), 12);
    for r in &results {
        for f in replication::case_files(out.path(), r) {
            assert!(f.is_file(), "{} missing", f.display());
        }
        assert!(r.acked > 0, "{}/{}: nothing acknowledged", r.dir, r.mode);
        assert!(
            r.reconciled && r.lost == 0,
            "{}: acknowledged messages lost: {r:?}",
            r.dir
        );
        if r.scenario != Scenario::Healthy.name() {
            assert!(!r.faults.is_empty(), "{}: no fault injected", r.dir);
        }
    }
    for s in Scenario::ALL {
        let variants = std::fs::read_dir(out.path().join(s.name())).unwrap();
        for v in variants {
            let cmp = v.unwrap().path().join("compare");
            assert!(cmp.join("compare.txt").is_file(), "{}", cmp.display());
            assert!(
                cmp.join("compare-publish.png").is_file(),
                "{}",
                cmp.display()
            );
        }
    }
    assert!(out.path().join("experiment.json").is_file());
    assert!(out.path().join("table.md").is_file());
    // Every namespace and link of the clusters is gone.
    let links = std::process::Command::new("ip")
        .args(["-o", "link"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    for k in 0..results.len() {
        let bridge = format!("slx{:x}{k}br", std::process::id() % 0xfff);
        assert!(!links.contains(&bridge), "{bridge} left behind");
    }
}
