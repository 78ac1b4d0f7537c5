//! A three-voter controller quorum on 127.0.0.1: election, topic creation through a follower,
//! broker fencing on session expiry, controller failover, and restart from the data dir.
//! Every wait is bounded.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::controller::{
    parse_voters, Controller, ControllerConfig, Endpoint, HeartbeatRequest, NodeId, Voter,
};
use uuid::Uuid;

#[path = "support/ports.rs"]
mod ports;
use ports::free_ports;

fn config() -> ControllerConfig {
    ControllerConfig {
        broker_session_timeout_ms: 1_500,
        raft_heartbeat_ms: 50,
        raft_election_timeout_ms: 300,
        request_timeout_ms: 8_000,
        // Small, so snapshots and log purges happen during the test.
        snapshot_every_entries: 6,
        ..ControllerConfig::default()
    }
}

fn start(id: NodeId, voters: &[Voter], root: &Path) -> Arc<Controller> {
    let dir = root.join(format!("node-{id}"));
    Arc::new(Controller::start(id, voters, &dir, config()).expect("controller starts"))
}

/// Polls `check` every 20 ms until it holds or `limit` passes; returns the time it took.
async fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

fn agreed_leader(nodes: &[&Arc<Controller>]) -> Option<NodeId> {
    let first = nodes.first()?.controller_id()?;
    nodes
        .iter()
        .all(|n| n.controller_id() == Some(first))
        .then_some(first)
}

/// A broker process's heartbeat loop, stopped by its flag.
fn heartbeat_loop(ctl: Arc<Controller>, broker_id: i32, broker_epoch: i64, alive: Arc<AtomicBool>) {
    tokio::spawn(async move {
        while alive.load(Ordering::SeqCst) {
            let request = HeartbeatRequest {
                broker_id,
                broker_epoch,
                metadata_offset: ctl.metadata().metadata_offset,
                want_shutdown: false,
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), ctl.heartbeat(request)).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

#[tokio::test(flavor = "current_thread")]
async fn three_voters_elect_create_fence_fail_over_and_restart() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let root = tempfile::tempdir().expect("tempdir");
    let ports = free_ports(3);
    let spec = format!(
        "1@127.0.0.1:{},2@127.0.0.1:{},3@127.0.0.1:{}",
        ports[0], ports[1], ports[2]
    );
    let voters = parse_voters(&spec).expect("voters parse");
    let mut nodes: BTreeMap<NodeId, Arc<Controller>> = voters
        .iter()
        .map(|v| (v.id, start(v.id, &voters, root.path())))
        .collect();

    // 1. A controller is elected and every voter agrees on it.
    let all: Vec<&Arc<Controller>> = nodes.values().collect();
    let took = wait_for("a controller", Duration::from_secs(15), || {
        agreed_leader(&all).is_some()
    })
    .await;
    let leader = agreed_leader(&all).expect("leader");
    eprintln!("controller {leader} elected in {took:?}");
    assert_eq!(all.iter().filter(|n| n.is_controller()).count(), 1);
    // Garbage on a voter's port closes that connection only; the voter keeps serving.
    {
        use tokio::io::AsyncWriteExt;
        let mut junk = tokio::net::TcpStream::connect(&voters[0].addr)
            .await
            .expect("connect");
        let _ = junk
            .write_all(b"\x00\x00\x00\x05{bad}GET / HTTP/1.1\r\n")
            .await;
    }

    // 2. Brokers 1..3 register through their own node and heartbeat; they get unfenced.
    let mut alive: BTreeMap<i32, Arc<AtomicBool>> = BTreeMap::new();
    for (&id, ctl) in &nodes {
        let broker_id = id as i32;
        let epoch = ctl
            .register_broker(
                broker_id,
                Uuid::new_v4(),
                vec![Endpoint {
                    name: "PLAINTEXT".into(),
                    host: "127.0.0.1".into(),
                    port: 9090 + broker_id as u16,
                }],
                None,
            )
            .await
            .expect("broker registers");
        let flag = Arc::new(AtomicBool::new(true));
        heartbeat_loop(ctl.clone(), broker_id, epoch, flag.clone());
        alive.insert(broker_id, flag);
    }
    let any = nodes[&leader].clone();
    wait_for("three unfenced brokers", Duration::from_secs(10), || {
        any.metadata().live_brokers() == vec![1, 2, 3]
    })
    .await;

    // 3. A topic created through a follower is visible on all three voters.
    let follower = *nodes.keys().find(|&&id| id != leader).expect("a follower");
    let topic_id = nodes[&follower]
        .create_topic("orders", 6, 3, BTreeMap::new())
        .await
        .expect("create through a follower");
    for ctl in nodes.values() {
        wait_for("the topic on every voter", Duration::from_secs(10), || {
            ctl.metadata().topic("orders").map(|t| t.topic_id) == Some(topic_id)
        })
        .await;
    }
    let reference = nodes[&leader].metadata().topic("orders").cloned();
    for ctl in nodes.values() {
        assert_eq!(ctl.metadata().topic("orders").cloned(), reference);
    }
    let orders = reference.expect("topic");
    assert!(orders
        .partitions
        .iter()
        .all(|p| p.leader.is_some() && p.isr.len() == 3));
    // Leaders spread over all brokers (placement rule with a random start).
    let mut leaders: Vec<i32> = orders.partitions.iter().filter_map(|p| p.leader).collect();
    leaders.sort_unstable();
    leaders.dedup();
    assert_eq!(leaders, vec![1, 2, 3]);
    // A duplicate is refused with TOPIC_ALREADY_EXISTS.
    let dup = nodes[&follower]
        .create_topic("orders", 1, 1, BTreeMap::new())
        .await
        .expect_err("duplicate topic");
    assert_eq!(dup.code(), 36);

    // 4. The broker of a follower node stops heartbeating (its voter stays up): it is fenced
    //    and its partitions get new leaders.
    let silent = nodes
        .keys()
        .copied()
        .find(|&id| id != leader && id != follower)
        .expect("third node") as i32;
    let led_before: Vec<(i32, i32)> = orders
        .partitions
        .iter()
        .filter(|p| p.leader == Some(silent))
        .map(|p| (p.partition, p.leader_epoch))
        .collect();
    assert!(!led_before.is_empty());
    alive[&silent].store(false, Ordering::SeqCst);
    let ctl = nodes[&leader].clone();
    let took = wait_for("the silent broker fenced", Duration::from_secs(10), || {
        ctl.metadata().broker(silent).is_some_and(|b| b.fenced)
    })
    .await;
    eprintln!("broker {silent} fenced {took:?} after its heartbeats stopped");
    let image = ctl.metadata();
    let orders = image.topic("orders").expect("topic");
    for (partition, epoch) in &led_before {
        let p = &orders.partitions[*partition as usize];
        assert!(
            p.leader.is_some() && p.leader != Some(silent),
            "partition {partition} not moved"
        );
        assert!(p.leader_epoch > *epoch);
        assert!(!p.isr.contains(&silent));
    }

    // 5. The controller node dies (voter and its broker): a new controller is elected among
    //    the survivors and topic creation still works.
    alive[&(leader as i32)].store(false, Ordering::SeqCst);
    let old = nodes.remove(&leader).expect("leader node");
    old.shutdown();
    drop(old);
    let killed_at = Instant::now();
    let survivors: Vec<&Arc<Controller>> = nodes.values().collect();
    wait_for("a new controller", Duration::from_secs(15), || {
        agreed_leader(&survivors).is_some_and(|l| l != leader)
    })
    .await;
    let new_leader = agreed_leader(&survivors).expect("new leader");
    eprintln!(
        "controller {new_leader} took over {:?} after controller {leader} stopped",
        killed_at.elapsed()
    );
    let created_at = Instant::now();
    nodes[&follower]
        .create_topic("after-failover", 2, 1, BTreeMap::new())
        .await
        .expect("create after failover");
    eprintln!(
        "topic created {:?} after the new controller",
        created_at.elapsed()
    );
    for ctl in nodes.values() {
        wait_for(
            "the new topic on survivors",
            Duration::from_secs(10),
            || ctl.metadata().topic("after-failover").is_some(),
        )
        .await;
    }
    // The dead controller's broker expires too and loses its leaderships.
    let ctl = nodes[&new_leader].clone();
    wait_for(
        "old controller's broker fenced",
        Duration::from_secs(10),
        || {
            let image = ctl.metadata();
            image.broker(leader as i32).is_some_and(|b| b.fenced)
                && image
                    .topic("orders")
                    .is_some_and(|t| t.partitions.iter().all(|p| p.leader != Some(leader as i32)))
        },
    )
    .await;

    // 6. The old controller restarts from its data dir and catches up.
    let restarted = start(leader, &voters, root.path());
    let ctl = restarted.clone();
    let reference = nodes[&new_leader].metadata();
    wait_for("restarted node catches up", Duration::from_secs(15), || {
        let image = ctl.metadata();
        image.topic("after-failover").is_some()
            && image.topics == reference.topics
            && image.brokers == reference.brokers
    })
    .await;
    // rf=1 partitions placed on the dead controller's broker are offline (no other replica
    // may lead them); the rest are led by their live replica.
    let image = restarted.metadata();
    let topic = image.topic("after-failover").expect("topic");
    for p in &topic.partitions {
        let replica_live = image.broker(p.replicas[0]).is_some_and(|b| !b.fenced);
        assert_eq!(
            p.leader.is_some(),
            replica_live,
            "partition {}",
            p.partition
        );
    }
    wait_for(
        "restarted node follows the controller",
        Duration::from_secs(10),
        || restarted.controller_id() == Some(new_leader),
    )
    .await;

    for flag in alive.values() {
        flag.store(false, Ordering::SeqCst);
    }
    restarted.shutdown();
    for ctl in nodes.values() {
        ctl.shutdown();
    }
}

/// A voter that was down while the controller snapshotted and purged its log catches up from
/// the leader's snapshot (InstallSnapshot) and the log after it.
#[tokio::test(flavor = "current_thread")]
async fn lagging_voter_catches_up_through_a_snapshot() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let root = tempfile::tempdir().expect("tempdir");
    let ports = free_ports(3);
    let spec = format!(
        "1@127.0.0.1:{},2@127.0.0.1:{},3@127.0.0.1:{}",
        ports[0], ports[1], ports[2]
    );
    let voters = parse_voters(&spec).expect("voters parse");
    let mut nodes: BTreeMap<NodeId, Arc<Controller>> = voters
        .iter()
        .map(|v| (v.id, start(v.id, &voters, root.path())))
        .collect();
    let all: Vec<&Arc<Controller>> = nodes.values().collect();
    wait_for("a controller", Duration::from_secs(15), || {
        agreed_leader(&all).is_some()
    })
    .await;
    let leader = agreed_leader(&all).expect("leader");
    let ctl = nodes[&leader].clone();
    let epoch = ctl
        .register_broker(leader as i32, Uuid::new_v4(), vec![], None)
        .await
        .expect("register");
    let alive = Arc::new(AtomicBool::new(true));
    heartbeat_loop(ctl.clone(), leader as i32, epoch, alive.clone());
    wait_for("a live broker", Duration::from_secs(10), || {
        !ctl.metadata().live_brokers().is_empty()
    })
    .await;

    let lagging = *nodes.keys().find(|&&id| id != leader).expect("follower");
    let down = nodes.remove(&lagging).expect("follower node");
    down.shutdown();
    drop(down);
    // Far more entries than `snapshot_every_entries`: the leader snapshots and purges.
    for i in 0..24 {
        ctl.create_topic(&format!("t{i}"), 1, 1, BTreeMap::new())
            .await
            .expect("create while a voter is down");
    }
    let restarted = start(lagging, &voters, root.path());
    let reference = ctl.metadata();
    wait_for("lagging voter catches up", Duration::from_secs(15), || {
        let image = restarted.metadata();
        image.topics == reference.topics && image.brokers == reference.brokers
    })
    .await;
    assert_eq!(restarted.metadata().topics.len(), 24);
    alive.store(false, Ordering::SeqCst);
    restarted.shutdown();
    for node in nodes.values() {
        node.shutdown();
    }
}

/// A node that is not a voter runs broker-only: it forwards writes to the controller, pulls
/// the metadata image, and a controlled shutdown moves its leaderships at once.
#[tokio::test(flavor = "current_thread")]
async fn broker_only_node_forwards_pulls_metadata_and_shuts_down_cleanly() {
    let root = tempfile::tempdir().expect("tempdir");
    let ports = free_ports(3);
    let spec = format!(
        "1@127.0.0.1:{},2@127.0.0.1:{},3@127.0.0.1:{}",
        ports[0], ports[1], ports[2]
    );
    let voters = parse_voters(&spec).expect("voters parse");
    let nodes: BTreeMap<NodeId, Arc<Controller>> = voters
        .iter()
        .map(|v| (v.id, start(v.id, &voters, root.path())))
        .collect();
    let observer = start(4, &voters, root.path());
    assert!(!observer.is_controller());
    let all: Vec<&Arc<Controller>> = nodes.values().collect();
    wait_for("a controller", Duration::from_secs(15), || {
        agreed_leader(&all).is_some()
    })
    .await;
    let leader = agreed_leader(&all).expect("leader");

    // Brokers 1 (on a voter) and 4 (broker-only) register and heartbeat.
    let mut flags = Vec::new();
    for (broker_id, ctl) in [(1, nodes[&1].clone()), (4, observer.clone())] {
        let epoch = ctl
            .register_broker(broker_id, Uuid::new_v4(), vec![], None)
            .await
            .expect("register");
        let flag = Arc::new(AtomicBool::new(true));
        heartbeat_loop(ctl, broker_id, epoch, flag.clone());
        flags.push((broker_id, epoch, flag));
    }
    wait_for("both brokers unfenced", Duration::from_secs(10), || {
        observer.metadata().live_brokers() == vec![1, 4]
    })
    .await;
    wait_for(
        "the observer learns the controller",
        Duration::from_secs(10),
        || observer.controller_id() == Some(leader),
    )
    .await;

    // A topic created through the broker-only node shows up in its pulled image.
    let topic_id = observer
        .create_topic("obs", 4, 2, BTreeMap::new())
        .await
        .expect("create through a broker-only node");
    wait_for(
        "the topic in the pulled image",
        Duration::from_secs(10),
        || observer.metadata().topic("obs").map(|t| t.topic_id) == Some(topic_id),
    )
    .await;
    let image = observer.metadata();
    let led_by_4 = image
        .topic("obs")
        .expect("topic")
        .partitions
        .iter()
        .filter(|p| p.leader == Some(4))
        .count();
    assert_eq!(led_by_4, 2, "placement alternates leaders over two brokers");

    // Controlled shutdown of broker 4: fenced and its leaderships moved well before the
    // 1.5 s session timeout.
    let (_, epoch4, flag4) = &flags[1];
    flag4.store(false, Ordering::SeqCst);
    let asked = Instant::now();
    let answer = observer
        .heartbeat(HeartbeatRequest {
            broker_id: 4,
            broker_epoch: *epoch4,
            metadata_offset: 0,
            want_shutdown: true,
        })
        .await
        .expect("controlled shutdown heartbeat");
    assert!(answer.fenced);
    let image = nodes[&leader].metadata();
    assert!(image.broker(4).is_some_and(|b| b.fenced));
    assert!(image
        .topic("obs")
        .expect("topic")
        .partitions
        .iter()
        .all(|p| p.leader == Some(1) && p.isr == vec![1]));
    assert!(asked.elapsed() < Duration::from_millis(1_500));

    // A heartbeat with a stale broker epoch is refused (STALE_BROKER_EPOCH).
    let stale = observer
        .heartbeat(HeartbeatRequest {
            broker_id: 4,
            broker_epoch: *epoch4 - 1,
            metadata_offset: 0,
            want_shutdown: false,
        })
        .await
        .expect_err("stale epoch");
    assert_eq!(stale.code(), 77);

    for (_, _, flag) in &flags {
        flag.store(false, Ordering::SeqCst);
    }
    observer.shutdown();
    for node in nodes.values() {
        node.shutdown();
    }
}

/// Quorum mode end to end through the controller: the leader's broker shuts down, the
/// partition waits for log reports, and the most up-to-date live replica of a majority leads.
/// A stale AlterPartition from the deposed leader is refused.
#[tokio::test(flavor = "current_thread")]
async fn quorum_partition_elects_the_longest_log_from_replica_reports() {
    let root = tempfile::tempdir().expect("tempdir");
    let ports = free_ports(3);
    let spec = format!(
        "1@127.0.0.1:{},2@127.0.0.1:{},3@127.0.0.1:{}",
        ports[0], ports[1], ports[2]
    );
    let voters = parse_voters(&spec).expect("voters parse");
    let nodes: BTreeMap<NodeId, Arc<Controller>> = voters
        .iter()
        .map(|v| (v.id, start(v.id, &voters, root.path())))
        .collect();
    let all: Vec<&Arc<Controller>> = nodes.values().collect();
    wait_for("a controller", Duration::from_secs(15), || {
        agreed_leader(&all).is_some()
    })
    .await;
    let mut epochs = BTreeMap::new();
    let mut flags = Vec::new();
    for (&id, ctl) in &nodes {
        let broker_id = id as i32;
        let epoch = ctl
            .register_broker(broker_id, Uuid::new_v4(), vec![], None)
            .await
            .expect("register");
        let flag = Arc::new(AtomicBool::new(true));
        heartbeat_loop(ctl.clone(), broker_id, epoch, flag.clone());
        epochs.insert(broker_id, epoch);
        flags.push((broker_id, flag));
    }
    let ctl = nodes[&1].clone();
    wait_for("three live brokers", Duration::from_secs(10), || {
        ctl.metadata().live_brokers() == vec![1, 2, 3]
    })
    .await;
    let mut configs = BTreeMap::new();
    configs.insert("replication.mode".to_string(), "quorum".to_string());
    ctl.create_topic("q", 1, 3, configs)
        .await
        .expect("quorum topic");
    // Node 1 may be a follower: its image catches up with the controller shortly after.
    wait_for("the topic on node 1", Duration::from_secs(10), || {
        ctl.metadata().partition("q", 0).is_some()
    })
    .await;
    let before = ctl
        .metadata()
        .partition("q", 0)
        .cloned()
        .expect("partition");
    let old_leader = before.leader.expect("initial leader");

    // The leader's broker shuts down in a controlled way.
    for (b, flag) in &flags {
        if *b == old_leader {
            flag.store(false, Ordering::SeqCst);
        }
    }
    ctl.heartbeat(HeartbeatRequest {
        broker_id: old_leader,
        broker_epoch: epochs[&old_leader],
        metadata_offset: 0,
        want_shutdown: true,
    })
    .await
    .expect("controlled shutdown");
    wait_for("the fence on node 1", Duration::from_secs(10), || {
        ctl.metadata()
            .partition("q", 0)
            .is_some_and(|p| p.leader_epoch > before.leader_epoch)
    })
    .await;
    let offline = ctl
        .metadata()
        .partition("q", 0)
        .cloned()
        .expect("partition");
    assert_eq!(offline.leader, None, "quorum mode waits for log reports");

    // The deposed leader's ISR change is refused: FENCED_LEADER_EPOCH.
    let stale = ctl
        .alter_partition(
            "q",
            0,
            old_leader,
            epochs[&old_leader],
            before.leader_epoch,
            before.partition_epoch,
            vec![old_leader],
        )
        .await
        .expect_err("stale AlterPartition");
    assert_eq!(stale.code(), 74);

    // The two survivors report; the one with the longer log leads.
    let survivors: Vec<i32> = before
        .replicas
        .iter()
        .copied()
        .filter(|&b| b != old_leader)
        .collect();
    let election_epoch = offline.next_leader_epoch();
    let first = nodes[&(survivors[0] as u64)]
        .report_replica_log(
            "q",
            0,
            survivors[0],
            election_epoch,
            sluice::controller::ReplicaLogPosition {
                last_epoch: 0,
                log_end_offset: 40,
            },
        )
        .await
        .expect("first report");
    assert_eq!(first.leader, None, "one report of three is no majority");
    let second = nodes[&(survivors[1] as u64)]
        .report_replica_log(
            "q",
            0,
            survivors[1],
            election_epoch,
            sluice::controller::ReplicaLogPosition {
                last_epoch: 0,
                log_end_offset: 42,
            },
        )
        .await
        .expect("second report");
    assert_eq!(second.leader, Some(survivors[1]));
    assert_eq!(second.leader_epoch, election_epoch);
    for node in nodes.values() {
        wait_for(
            "the election on every voter",
            Duration::from_secs(10),
            || node.metadata().partition("q", 0).and_then(|p| p.leader) == Some(survivors[1]),
        )
        .await;
    }

    for (_, flag) in &flags {
        flag.store(false, Ordering::SeqCst);
    }
    for node in nodes.values() {
        node.shutdown();
    }
}
