//! Three `sluice` processes forming a cluster on 127.0.0.1: replicated produce/fetch, leader
//! epoch fencing (NOT_LEADER_OR_FOLLOWER, FENCED_LEADER_EPOCH, UNKNOWN_LEADER_EPOCH),
//! OffsetForLeaderEpoch, Fetch divergence (KIP-320 `diverging_epoch`), failover after the
//! leader is SIGKILLed, in both replication modes; DescribeQuorum and the high watermark
//! checkpoint. Every wait is bounded; the brokers are killed when the test ends.

#[path = "broker_support.rs"]
mod support;

#[path = "support/cluster.rs"]
mod cluster;

use std::time::{Duration, Instant};

use cluster::{
    epoch_end, fetch, fetch_partition0, latest_offset, produce, produce_until_ok,
    produce_with_timeout, tn, Cluster,
};
use kafka_protocol::messages::{
    describe_quorum_request, DeleteTopicsRequest, DescribeQuorumRequest,
};
use support::*;

const NOT_LEADER_OR_FOLLOWER: i16 = 6;
const FENCED_LEADER_EPOCH: i16 = 74;
const UNKNOWN_LEADER_EPOCH: i16 = 75;

/// (leader, leader epoch, isr) of a partition.
type State = (i32, i32, Vec<i32>);

impl Cluster {
    /// The three voters in `mode`.
    fn start_in_mode(mode: &str) -> Cluster {
        Cluster::start(&[&format!("replication.mode={mode}")])
    }

    /// (leader, leader epoch, isr) of partition 0 as broker `via` sees it.
    fn partition0(&self, via: i32, topic: &str) -> Option<State> {
        let resp = self.metadata(via, topic);
        let t = resp.topics.first()?;
        let p = t.partitions.first()?;
        (p.error_code == 0 && p.leader_id.0 >= 0).then(|| {
            (
                p.leader_id.0,
                p.leader_epoch,
                p.isr_nodes.iter().map(|b| b.0).collect(),
            )
        })
    }

    fn wait_for(&self, via: i32, topic: &str, what: &str, ok: impl Fn(&State) -> bool) -> State {
        self.wait_until(
            what,
            Duration::from_secs(20),
            |c| c.partition0(via, topic),
            ok,
        )
    }
}

/// A replica's Fetch v12 of partition 0: (error, diverging epoch, diverging end offset,
/// record bytes).
fn replica_fetch(
    b: &Broker,
    topic: &str,
    replica: i32,
    epoch: i32,
    offset: i64,
    last_fetched_epoch: i32,
) -> (i16, i32, i64, usize) {
    let req = fetch_partition0(topic, replica, epoch, offset, last_fetched_epoch);
    let resp = b.client().request(12, &req);
    let p = &resp.responses[0].partitions[0];
    (
        p.error_code,
        p.diverging_epoch.epoch,
        p.diverging_epoch.end_offset,
        p.records.as_ref().map_or(0, |r| r.len()),
    )
}

fn run(mode: &str) {
    let mut cluster = Cluster::start_in_mode(mode);
    let topic = "fenced";
    cluster.create_topic(topic, 1, 3);
    let (leader, epoch, _) = cluster.wait_for(1, topic, "initial leader", |s| s.2.len() == 3);
    // Every broker answers Metadata for the whole cluster.
    for via in 1..=3 {
        assert_eq!(cluster.partition0(via, topic).map(|s| s.0), Some(leader));
    }
    let follower = (1..=3).find(|b| *b != leader).expect("a follower");
    // A quorum-mode leader starts its epoch with a control batch (the epoch marker).
    let marker = i64::from(mode == "quorum");

    // Produce: acks=all on the leader commits; a follower refuses.
    // Until the replicas have applied the new partition the leader refuses up front
    // (NOT_LEADER_OR_FOLLOWER, NOT_ENOUGH_REPLICAS) without appending; clients retry.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (code, base) = loop {
        let r = produce(cluster.broker(leader), topic, batch("a", 5, 0));
        if !matches!(r.0, NOT_LEADER_OR_FOLLOWER | 19) || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!((code, base), (0, marker), "acks=all produce on the leader");
    let (code, _) = produce(cluster.broker(follower), topic, batch("x", 1, 0));
    assert_eq!(code, NOT_LEADER_OR_FOLLOWER);

    // Fetch epochs: the current one reads committed records, a newer one is unknown.
    let (code, hw, vals) = fetch(cluster.broker(leader), topic, epoch);
    let a = vals.iter().filter(|v| v.starts_with("a-")).count();
    assert_eq!((code, hw, a), (0, 5 + marker, 5));
    let (code, ..) = fetch(cluster.broker(leader), topic, epoch + 1);
    assert_eq!(code, UNKNOWN_LEADER_EPOCH);

    // ListOffsets latest is the high watermark, with the leader epoch; followers refuse.
    assert_eq!(
        latest_offset(cluster.broker(leader), topic),
        (0, 5 + marker, epoch)
    );
    assert_eq!(
        latest_offset(cluster.broker(follower), topic).0,
        NOT_LEADER_OR_FOLLOWER
    );

    // OffsetForLeaderEpoch: the current epoch ends at the log end.
    assert_eq!(
        epoch_end(cluster.broker(leader), topic, epoch, epoch),
        (0, epoch, 5 + marker)
    );

    // Every follower has the committed records before we kill the leader (acks=all).
    // SIGKILL the leader: a survivor takes over with a higher epoch.
    cluster.kill(leader);
    let (new_leader, new_epoch, _) = cluster.wait_for(follower, topic, "failover", |s| {
        s.0 != leader && s.1 > epoch
    });
    // The follower's metadata may name the new leader before the new leader has applied its
    // own promotion: until then it is a follower of the old epoch and rightly answers
    // NOT_LEADER_OR_FOLLOWER. Once promoted, a request in the old epoch is fenced.
    let deadline = Instant::now() + Duration::from_secs(15);
    let code = loop {
        let (code, ..) = fetch(cluster.broker(new_leader), topic, epoch);
        if code != NOT_LEADER_OR_FOLLOWER || Instant::now() > deadline {
            break code;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(code, FENCED_LEADER_EPOCH, "the old epoch is fenced");
    // KIP-320: a replica claiming records of the old epoch beyond where that epoch ends on
    // the new leader learns the divergence point (no OFFSET_OUT_OF_RANGE, no records). The
    // dead old leader is the replica here, so no live follower's state is disturbed.
    let old_epoch_end = 5 + marker;
    produce_until_ok(
        cluster.broker(new_leader),
        topic,
        batch("d", 2, 20),
        "produce in the new epoch",
    );
    let (code, div_epoch, div_end, bytes) = replica_fetch(
        cluster.broker(new_leader),
        topic,
        leader,
        new_epoch,
        old_epoch_end + 1,
        epoch,
    );
    assert_eq!(
        (code, div_epoch, div_end, bytes),
        (0, epoch, old_epoch_end, 0),
        "diverging_epoch of a replica ahead in the old epoch"
    );
    // The acknowledged records survived; new writes commit on the two survivors.
    produce_until_ok(
        cluster.broker(new_leader),
        topic,
        batch("b", 3, 10),
        "produce after failover",
    );
    let (code, _, vals) = fetch(cluster.broker(new_leader), topic, new_epoch);
    assert_eq!(code, 0);
    let a: Vec<&String> = vals.iter().filter(|v| v.starts_with("a-")).collect();
    assert_eq!(a.len(), 5, "acknowledged records after failover: {vals:?}");
    assert_eq!(vals.iter().filter(|v| v.starts_with("d-")).count(), 2);
    assert!(vals.iter().filter(|v| v.starts_with("b-")).count() >= 3);

    // DeleteTopics through the controller: every surviving replica's directory goes.
    let req = DeleteTopicsRequest::default()
        .with_timeout_ms(10_000)
        .with_topic_names(vec![tn(topic)]);
    let resp = cluster.broker(new_leader).client().request(5, &req);
    assert_eq!(resp.responses[0].error_code, 0);
    let deadline = Instant::now() + Duration::from_secs(15);
    for b in cluster.brokers.iter().flatten() {
        let dir = b.data_dir.join(format!("{topic}-0"));
        while dir.exists() {
            assert!(Instant::now() < deadline, "{} not deleted", dir.display());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn isr_cluster_fences_epochs_and_fails_over() {
    run("isr");
}

#[test]
fn quorum_cluster_fences_epochs_and_fails_over() {
    run("quorum");
}

/// With both followers gone (and with them the controller majority, so the ISR cannot shrink),
/// an acks=all write is appended but never committed: it fails with REQUEST_TIMED_OUT once the
/// request's timeout_ms has passed.
#[test]
fn isr_acks_all_times_out_without_followers() {
    let mut cluster = Cluster::start_in_mode("isr");
    let topic = "stuck";
    cluster.create_topic(topic, 1, 3);
    let (leader, ..) = cluster.wait_for(1, topic, "initial leader", |s| s.2.len() == 3);
    produce_until_ok(
        cluster.broker(leader),
        topic,
        batch("ok", 1, 0),
        "first produce",
    );
    for b in 1..=3 {
        if b != leader {
            cluster.kill(b);
        }
    }
    let started = Instant::now();
    let (code, _) = produce_with_timeout(cluster.broker(leader), topic, batch("stuck", 1, 1), 1000);
    let took = started.elapsed();
    assert_eq!(code, 7, "REQUEST_TIMED_OUT");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "answered after {took:?}"
    );
}

/// DescribeQuorum (API 55) from any broker: the active controller, its Raft term, and every
/// voter with a log end offset (the leader's is at least the high watermark).
#[test]
fn describe_quorum_names_the_controller_and_every_voter() {
    let cluster = Cluster::start_in_mode("isr");
    cluster.create_topic("dq", 1, 3);
    let req = DescribeQuorumRequest::default().with_topics(vec![
        describe_quorum_request::TopicData::default()
            .with_topic_name(tn("__cluster_metadata"))
            .with_partitions(vec![
                describe_quorum_request::PartitionData::default().with_partition_index(0)
            ]),
    ]);
    let mut leaders = Vec::new();
    for via in 1..=3 {
        let resp = cluster.broker(via).client().request(2, &req);
        assert_eq!(resp.error_code, 0, "via {via}: {resp:?}");
        let p = &resp.topics[0].partitions[0];
        assert_eq!(p.error_code, 0, "via {via}: {p:?}");
        assert!(
            (1..=3).contains(&p.leader_id.0) && p.leader_epoch > 0,
            "{p:?}"
        );
        assert!(p.high_watermark > 0, "{p:?}");
        let mut ids: Vec<i32> = p.current_voters.iter().map(|v| v.replica_id.0).collect();
        ids.sort_unstable();
        assert_eq!(ids, vec![1, 2, 3]);
        let leader_end = p
            .current_voters
            .iter()
            .find(|v| v.replica_id == p.leader_id)
            .map(|v| v.log_end_offset);
        assert!(leader_end >= Some(p.high_watermark), "{p:?}");
        leaders.push(p.leader_id.0);
    }
    leaders.dedup();
    assert_eq!(leaders.len(), 1, "every broker names one controller");
}

/// The high watermark is checkpointed (`replication-offset-checkpoint` in the partition
/// directory) at a clean shutdown, and a restarted replica starts from it.
#[test]
fn high_watermark_is_checkpointed_at_shutdown() {
    let mut cluster = Cluster::start_in_mode("isr");
    let topic = "hwck";
    cluster.create_topic(topic, 1, 3);
    let (leader, ..) = cluster.wait_for(1, topic, "initial leader", |s| s.2.len() == 3);
    produce_until_ok(cluster.broker(leader), topic, batch("h", 7, 0), "produce");
    let follower = (1..=3).find(|b| *b != leader).expect("a follower");
    // The follower learns the HW from its next fetch.
    std::thread::sleep(Duration::from_millis(800));
    for id in [follower, leader] {
        let dir = cluster.broker(id).data_dir.join(format!("{topic}-0"));
        let status = cluster.stop(id);
        assert!(status.success(), "broker {id} exit: {status:?}");
        let text = std::fs::read_to_string(dir.join("replication-offset-checkpoint"))
            .unwrap_or_else(|e| panic!("broker {id}: no checkpoint: {e}"));
        assert_eq!(text, "0\n7\n", "broker {id}");
    }
}

/// A broker whose controller quorum is gone (the other voters stopped first) stops promptly:
/// a heartbeat in flight is abandoned and the controlled-shutdown heartbeat is bounded
/// (3 s), instead of two whole request timeouts (10 s each) spent waiting for a controller
/// that cannot answer.
#[test]
fn last_broker_stops_without_waiting_for_a_lost_quorum() {
    let mut cluster = Cluster::start_in_mode("isr");
    // Every broker registered (an RF-3 topic needs all three).
    cluster.create_topic("lastone", 1, 3);
    for id in [1, 2] {
        let status = cluster.stop(id);
        assert!(status.success(), "broker {id} exit: {status:?}");
    }
    // Let broker 3 notice: its heartbeats now go unanswered.
    std::thread::sleep(Duration::from_millis(600));
    let started = Instant::now();
    let status = cluster.stop(3);
    let took = started.elapsed();
    assert!(status.success(), "broker 3 exit: {status:?}");
    assert!(
        took < Duration::from_secs(8),
        "the last broker took {took:?} to stop (the controller request timeout is 10 s)"
    );
}
