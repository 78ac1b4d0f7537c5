//! A rebalance in the middle of a load against a local Sluice broker (skipped without a broker
//! build, like the smoke test): two members of one group consume four partitions, a third joins
//! while producers run, every member rejoins, and the group settles in a later generation.
//! Checks: nothing acknowledged is lost, duplicates only as replays after the rebalance, one
//! owner per partition at a time, and each new owner starts where the previous one committed.

mod support;

use sluice::security::client::Security;
use sluice_bench::client::cluster;
use sluice_bench::consumer::ConsumerSpec;
use sluice_bench::group_consumer::{
    run_group_consumer, GroupConsumerSpec, GroupReport, GroupShared,
};
use sluice_bench::producer::{run_producer, ProducerSpec};
use sluice_bench::runner::Shared;
use sluice_bench::workload::Workload;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

const PARTITIONS: i32 = 4;

#[test]
fn a_member_joining_mid_run_moves_partitions_without_loss() {
    let Some(broker) = support::start_sluice() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(scenario(broker.addr.clone()));
}

async fn scenario(bootstrap: String) {
    let topic = "rebalance-test".to_string();
    let cl = cluster::create_topic(
        &bootstrap,
        "test",
        &topic,
        PARTITIONS,
        1,
        &Security::default(),
    )
    .await
    .unwrap();
    let parts = cl.topics[&topic].clone();
    let w = Arc::new(
        Workload::from_toml(
            "name='rebalance'\npartitionsPerTopic=4\nmessageSize=128\nproducerRate=500\n\
             testDurationSeconds=9\nkeyDistributor='KEY_ROUND_ROBIN'\n",
            "test",
        )
        .unwrap(),
    );
    let shared = Arc::new(Shared::unscheduled(1, 1));
    let group = Arc::new(GroupShared::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let member = |i: u32| {
        let spec = GroupConsumerSpec {
            fetch: ConsumerSpec {
                consumer: i,
                subscription: 0,
                topic: topic.clone(),
                brokers: cl.brokers.clone(),
                leaders: parts.iter().map(|p| (p.partition, p.leader)).collect(),
                start_offsets: HashMap::new(),
                run_id: 7,
                max_wait_ms: 100,
                partition_max_bytes: 1 << 20,
                security: Security::default(),
            },
            bootstrap: bootstrap.clone(),
            group_id: "rebalance-group".into(),
            partition_count: PARTITIONS,
            default_offsets: (0..PARTITIONS).map(|p| (p, 0)).collect(),
            assignor: "range".into(),
        };
        tokio::spawn(run_group_consumer(
            spec,
            shared.clone(),
            group.clone(),
            stop_rx.clone(),
        ))
    };
    let mut members = vec![member(0), member(1)];
    let settle = Instant::now() + Duration::from_secs(30);
    let first = loop {
        if let Some(g) = group.stable_generation(2) {
            break g;
        }
        assert!(Instant::now() < settle, "the group never settled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    let start = Instant::now() + Duration::from_millis(100);
    shared.schedule(start);
    let producer = tokio::spawn(run_producer(
        ProducerSpec {
            index: 0,
            topic: topic.clone(),
            partitions: parts.clone(),
            brokers: cl.brokers.clone(),
            rate: Some(w.producer_rate),
            start,
            end: start + w.test_duration(),
            workload: w.clone(),
            template: bytes::Bytes::from(vec![7u8; 512]),
            run_id: 7,
            security: Security::default(),
        },
        shared.clone(),
    ));
    // A third member joins while the load runs; the others hear of the rebalance on their
    // next heartbeat (at most 3 s later) and rejoin.
    tokio::time::sleep(Duration::from_secs(2)).await;
    members.push(member(2));
    let settle = Instant::now() + Duration::from_secs(30);
    let second = loop {
        if let Some(g) = group.stable_generation(3) {
            break g;
        }
        assert!(
            Instant::now() < settle,
            "the group never settled with 3 members"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(second > first, "{first} -> {second}");

    let p = producer.await.unwrap();
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    let drain = Instant::now() + Duration::from_secs(20);
    while shared.ledger.missing() > 0 && Instant::now() < drain {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_tx.send(true).unwrap();
    for m in members {
        let r = tokio::time::timeout(Duration::from_secs(30), m)
            .await
            .expect("member stopped")
            .unwrap();
        assert!(r.errors.is_empty(), "{:?}", r.errors);
    }

    let r = shared.ledger.reconcile(p.sent, p.failed);
    assert!(r.acked > 3000, "{r:?}");
    assert!(
        r.ok && r.lost == 0 && r.duplicates == r.rebalance_duplicates,
        "{r:?}"
    );
    let report = GroupReport::of(
        "rebalance-group",
        &topic,
        3,
        PARTITIONS,
        Some(second),
        &group,
    );
    eprintln!("{r:?}\n{report:#?}");
    assert!(report.overlaps.is_empty(), "{report:?}");
    assert!(report.never_owned.is_empty(), "{report:?}");
    assert!(report.generations.contains(&first) && report.generations.contains(&second));
    // In the last generation the three members split the four partitions.
    let mut owners: Vec<u32> = report
        .ownership
        .iter()
        .filter(|o| o.generation == second)
        .map(|o| o.member)
        .collect();
    owners.sort_unstable();
    owners.dedup();
    assert_eq!(owners, vec![0, 1, 2], "{report:?}");
    // Commits on revoke landed: each owner of a partition starts where the previous one ended.
    for partition in 0..PARTITIONS {
        let mut spans: Vec<_> = report
            .ownership
            .iter()
            .filter(|o| o.partition == partition)
            .collect();
        spans.sort_by_key(|o| o.from_us);
        assert_eq!(spans[0].start_offset, 0, "{spans:?}");
        for pair in spans.windows(2) {
            assert_eq!(pair[1].start_offset, pair[0].end_offset, "{spans:?}");
        }
    }
}
