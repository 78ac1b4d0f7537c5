//! Trust tests: the harness measured against an in-process fake broker whose Produce latency is
//! known exactly. The recorder must reproduce the injected percentiles within 1%, and a broker
//! stall must show in the coordinated-omission-corrected histogram (and, for contrast, mostly
//! vanish from the uncorrected one, which is what closed-loop tools report).

use sluice_bench::fake_broker::{FakeBroker, LatencyModel};
use sluice_bench::runner::{run, RunOptions};
use sluice_bench::workload::Workload;
use std::sync::Mutex;
use std::time::Duration;

/// The two runs measure latency on a 2-core machine: run them one at a time so neither's
/// harness and fake broker steal the other's cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn options(addr: std::net::SocketAddr) -> RunOptions {
    RunOptions {
        bootstrap: addr.to_string(),
        topic_prefix: "trust".into(),
        threads: 2,
        seed: 7,
        progress: false,
        markers: Vec::new(),
        security: Default::default(),
    }
}

#[test]
fn measured_percentiles_match_the_injected_distribution_within_one_percent() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // Steps chosen so the checked quantiles fall in the middle of a step, where the exact
    // percentile is known: 50% at 100 ms, 25% at 160 ms, 15% at 240 ms, 9% at 400 ms, 1% at
    // 600 ms. Delays this long keep scheduling noise on a loaded 2-core CI machine (a few
    // hundred microseconds) well inside the 1% budget.
    let model = LatencyModel::parse("100ms:50,160ms:25,240ms:15,400ms:9,600ms:1").unwrap();
    let broker = FakeBroker::start("127.0.0.1:0", model).unwrap();
    // One record per request (batch.size 1, linger 0) so every sample carries its own delay;
    // enough in-flight room that the client never queues (400/s x 0.6 s = 240 outstanding).
    let w = Workload::from_toml(
        r#"
name = "trust"
partitionsPerTopic = 1
messageSize = 256
producerRate = 400
testDurationSeconds = 5
lingerMs = 0
batchSize = 1
maxInFlight = 1000
drainTimeoutSeconds = 5
# The fake broker serves no consumer groups.
consumerMode = "assign"
"#,
        "trust",
    )
    .unwrap();
    let out = run(&w, &options(broker.addr())).unwrap();
    assert!(out.reconciliation.ok, "{:?}", out.reconciliation);
    assert!(
        out.publish.len() >= 1900,
        "only {} samples",
        out.publish.len()
    );
    let injected = broker.injected();
    for (q, expected_ms) in [
        (0.25, 100.0),
        (0.6, 160.0),
        (0.85, 240.0),
        (0.95, 400.0),
        (0.995, 600.0),
    ] {
        let measured = out.publish.value_at_quantile(q) as f64 / 1000.0;
        let applied = injected.value_at_quantile(q) as f64 / 1000.0;
        let err = (measured - expected_ms) / expected_ms;
        assert!(
            (-0.001..=0.01).contains(&err),
            "q={q}: measured {measured:.3} ms vs injected {expected_ms} ms ({:.2}%)",
            err * 100.0
        );
        eprintln!(
            "q={q}: injected {expected_ms} ms, applied {applied:.3} ms, measured {measured:.3} ms"
        );
        let err_applied = (measured - applied).abs() / applied;
        assert!(
            err_applied <= 0.01,
            "q={q}: measured {measured} vs applied {applied}"
        );
    }
}

#[test]
fn a_broker_stall_shows_in_the_corrected_histogram() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut model = LatencyModel::parse("1ms").unwrap();
    // A one-second stall well inside the measured window (setup takes well under a second).
    model.stall = Some((Duration::from_millis(2500), Duration::from_secs(1)));
    let broker = FakeBroker::start("127.0.0.1:0", model).unwrap();
    let w = Workload::from_toml(
        r#"
name = "stall"
partitionsPerTopic = 4
messageSize = 256
producerRate = 1000
warmupDurationSeconds = 0.5
testDurationSeconds = 5
lingerMs = 1
maxInFlight = 5
drainTimeoutSeconds = 5
# The fake broker serves no consumer groups.
consumerMode = "assign"
"#,
        "stall",
    )
    .unwrap();
    let out = run(&w, &options(broker.addr())).unwrap();
    assert!(out.reconciliation.ok, "{:?}", out.reconciliation);
    let ms = |v: u64| v as f64 / 1000.0;
    let corrected_p99 = ms(out.publish.value_at_quantile(0.99));
    let corrected_max = ms(out.publish.max());
    let corrected_p90 = ms(out.publish.value_at_quantile(0.90));
    let uncorrected_p99 = ms(out.publish_uncorrected.value_at_quantile(0.99));
    eprintln!(
        "stall: corrected p90 {corrected_p90} p99 {corrected_p99} max {corrected_max} ms; uncorrected p99 {uncorrected_p99} ms"
    );
    // Messages meant to be sent during the stall (about 20% of the run) waited for its end:
    // their latencies spread from ~1000 ms down to ~0, so p90 is around 500 ms.
    assert!(corrected_max >= 950.0, "corrected max {corrected_max} ms");
    assert!(corrected_p99 >= 800.0, "corrected p99 {corrected_p99} ms");
    assert!(corrected_p90 >= 300.0, "corrected p90 {corrected_p90} ms");
    // Measured from the actual send, only the few requests in flight saw the stall.
    assert!(
        uncorrected_p99 < corrected_p99 / 4.0,
        "uncorrected p99 {uncorrected_p99} ms vs corrected {corrected_p99} ms"
    );
    // The throughput time series shows the hole: whatever the phase of the one-second
    // intervals, one of them overlaps at least half of the stall, so it acks at most ~500/s.
    let measured: Vec<_> = out.timeseries.iter().filter(|s| !s.warmup).collect();
    assert!(
        measured.iter().any(|s| s.publish_rate < 600.0),
        "{measured:?}"
    );
}
