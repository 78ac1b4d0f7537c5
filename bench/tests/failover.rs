//! The client follows a leader change, as the replication experiment (issue 7) needs: two
//! fake-broker nodes share one log; mid-run every partition's leadership moves from node 0 to
//! node 1. Producers and consumers must notice NOT_LEADER_OR_FOLLOWER, re-read Metadata, carry
//! on against the new leader, and no acknowledged message may be lost.

use sluice_bench::fake_broker::{FakeBroker, LatencyModel};
use sluice_bench::runner::{run, RunOptions};
use sluice_bench::workload::Workload;
use std::time::Duration;

#[test]
fn producers_and_consumers_follow_a_leader_change() {
    let node0 = FakeBroker::start("127.0.0.1:0", LatencyModel::parse("1ms").unwrap()).unwrap();
    let node1 = node0
        .join("127.0.0.1:0", LatencyModel::parse("1ms").unwrap())
        .unwrap();
    assert_eq!((node0.node_id(), node1.node_id()), (0, 1));
    let w = Workload::from_toml(
        r#"
name = "failover"
partitionsPerTopic = 8
messageSize = 256
producersPerTopic = 2
consumerPerSubscription = 2
producerRate = 1000
testDurationSeconds = 4
lingerMs = 1
drainTimeoutSeconds = 5
# The fake broker serves no consumer groups.
consumerMode = "assign"
"#,
        "failover",
    )
    .unwrap();
    let switcher = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        node1.set_leader(1);
        node1
    });
    let out = run(
        &w,
        &RunOptions {
            bootstrap: node0.addr().to_string(),
            topic_prefix: "failover".into(),
            threads: 2,
            seed: 3,
            progress: false,
            markers: Vec::new(),
            security: Default::default(),
        },
    )
    .unwrap();
    let _node1 = switcher.join().unwrap();
    let r = &out.reconciliation;
    eprintln!("{r:?}");
    assert!(r.ok && r.lost == 0, "{r:?}");
    assert_eq!(r.sent, 4000, "{r:?}");
    // Only requests in flight at the switch may fail; everything after it goes to node 1.
    assert!(r.acked >= 3800, "{r:?}");
    assert!(r.consumed >= r.acked, "{r:?}");
    let last = out.timeseries.iter().rev().find(|s| s.t <= 4.0);
    assert!(
        last.is_some_and(|s| s.publish_rate > 800.0 && s.consume_rate > 800.0),
        "{:?}",
        out.timeseries
    );
}
