//! Three `sluice` processes on 127.0.0.1: a broker restarted after kill -9 does not lead (nor
//! answer clients as leader of) a partition epoch that ended while it was down. Its metadata
//! replayed from its own log still names it leader; until it has registered again and its
//! image has caught up with the controller's log, it answers NOT_LEADER_OR_FOLLOWER and its
//! Metadata does not name it leader (KRaft's broker catch-up). Both replication modes. Every
//! wait is bounded; the brokers are killed and their directories deleted when a test ends.

#[path = "broker_support.rs"]
mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::{
    create_topics_request, fetch_request, list_offsets_request, metadata_request,
    offset_for_leader_epoch_request, produce_request, BrokerId, CreateTopicsRequest, FetchRequest,
    ListOffsetsRequest, MetadataRequest, OffsetForLeaderEpochRequest, ProduceRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use support::*;

const NOT_LEADER_OR_FOLLOWER: i16 = 6;

fn tn(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

struct Cluster {
    brokers: Vec<Option<Broker>>,
    dirs: Vec<PathBuf>,
    args: Vec<Vec<String>>,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    fn start(mode: &str) -> Cluster {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ports = support::ports::free_ports(3);
        let voters = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}@127.0.0.1:{p}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut dirs = Vec::new();
        let mut all_args = Vec::new();
        for id in 1..=3 {
            dirs.push(tmp.path().join(format!("node{id}")));
            let mut args: Vec<String> = vec![
                "--node-id".into(),
                id.to_string(),
                "--controller-voters".into(),
                voters.clone(),
            ];
            for s in [
                format!("replication.mode={mode}"),
                "broker.session.timeout.ms=2000".into(),
                "broker.heartbeat.interval.ms=200".into(),
                "controller.quorum.election.timeout.ms=500".into(),
                "replica.fetch.wait.max.ms=200".into(),
                // The leader's automatic rebalance would move leadership back to a restarted
                // preferred replica: this test watches the restarted broker's own decisions.
                "auto.leader.rebalance.enable=false".into(),
            ] {
                args.push("--set".into());
                args.push(s);
            }
            all_args.push(args);
        }
        let mut cluster = Cluster {
            brokers: Vec::new(),
            dirs,
            args: all_args,
            _tmp: tmp,
        };
        for id in 1..=3 {
            let b = cluster.spawn(id);
            cluster.brokers.push(Some(b));
        }
        cluster
    }

    fn spawn(&self, id: i32) -> Broker {
        let i = (id - 1) as usize;
        let args: Vec<&str> = self.args[i].iter().map(String::as_str).collect();
        Broker::start_in(&self.dirs[i], &args, &[])
    }

    fn broker(&self, id: i32) -> &Broker {
        self.brokers[(id - 1) as usize]
            .as_ref()
            .expect("broker running")
    }

    /// SIGKILL.
    fn kill(&mut self, id: i32) {
        drop(self.brokers[(id - 1) as usize].take().expect("running"));
    }

    fn restart(&mut self, id: i32) {
        let b = self.spawn(id);
        self.brokers[(id - 1) as usize] = Some(b);
    }

    /// Each running broker's log lines about registration, catch-up and partition roles (for
    /// a failure's message).
    fn logs(&self) -> String {
        let keys = [
            "registered",
            "caught up",
            "fenced",
            "elected",
            "leading",
            "following",
            "cut off",
            "isr",
            "ISR",
        ];
        let mut out = String::new();
        for (i, b) in self.brokers.iter().enumerate() {
            let Some(b) = b else { continue };
            out.push_str(&format!("--- broker {}\n", i + 1));
            for line in b
                .log()
                .lines()
                .filter(|l| keys.iter().any(|k| l.contains(k)))
            {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// (error, leader, leader epoch, isr) of partition 0 as broker `via` answers Metadata.
    fn partition0(&self, via: i32, topic: &str) -> Option<(i16, i32, i32, Vec<i32>)> {
        let req = MetadataRequest::default().with_topics(Some(vec![
            metadata_request::MetadataRequestTopic::default().with_name(Some(tn(topic))),
        ]));
        let resp = self.broker(via).client().request(12, &req);
        let p = resp.topics.first()?.partitions.first()?.clone();
        Some((
            p.error_code,
            p.leader_id.0,
            p.leader_epoch,
            p.isr_nodes.iter().map(|b| b.0).collect(),
        ))
    }

    /// Waits (20 s at most) until `via` names a leader satisfying `ok`: (leader, epoch, isr).
    fn wait_for(
        &self,
        via: i32,
        topic: &str,
        what: &str,
        ok: impl Fn(i32, i32, &[i32]) -> bool,
    ) -> (i32, i32, Vec<i32>) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = None;
        while Instant::now() < deadline {
            last = self.partition0(via, topic);
            if let Some((0, leader, epoch, isr)) = &last {
                if *leader >= 0 && ok(*leader, *epoch, isr) {
                    return (*leader, *epoch, isr.clone());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{what}: partition state {last:?}");
    }

    fn create_topic(&self, topic: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let req = CreateTopicsRequest::default()
                .with_timeout_ms(10_000)
                .with_topics(vec![create_topics_request::CreatableTopic::default()
                    .with_name(tn(topic))
                    .with_num_partitions(1)
                    .with_replication_factor(3)]);
            let code = self.broker(1).client().request(5, &req).topics[0].error_code;
            if code == 0 {
                return;
            }
            // Brokers still registering (INVALID_REPLICATION_FACTOR) or no controller yet.
            assert!(
                Instant::now() < deadline,
                "CreateTopics kept failing: {code}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// acks=all Produce v9 to partition 0: the error code.
fn produce(b: &Broker, topic: &str, records: Bytes) -> i16 {
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![produce_request::TopicProduceData::default()
            .with_name(tn(topic))
            .with_partition_data(vec![
                produce_request::PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(records)),
            ])]);
    b.client().request(9, &req).responses[0].partition_responses[0].error_code
}

/// Produces until the broker accepts (15 s at most; a new leader or ISR may be settling).
fn produce_until_ok(b: &Broker, topic: &str, records: Bytes, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let code = produce(b, topic, records.clone());
        if code == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {code}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A consumer's Fetch v12 of partition 0 from offset 0 with no current epoch:
/// (error, values).
fn fetch(b: &Broker, topic: &str) -> (i16, Vec<String>) {
    let req = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(0)
        .with_max_bytes(1 << 20)
        .with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(tn(topic))
            .with_partitions(vec![fetch_request::FetchPartition::default()
                .with_partition(0)
                .with_current_leader_epoch(-1)
                .with_fetch_offset(0)
                .with_last_fetched_epoch(-1)
                .with_partition_max_bytes(1 << 20)])]);
    let resp = b.client().request(12, &req);
    let p = &resp.responses[0].partitions[0];
    (
        p.error_code,
        p.records.as_ref().map(values).unwrap_or_default(),
    )
}

/// ListOffsets v4 latest of partition 0: (error, offset, leader epoch).
fn latest_offset(b: &Broker, topic: &str) -> (i16, i64, i32) {
    let req = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
            .with_name(tn(topic))
            .with_partitions(vec![
                list_offsets_request::ListOffsetsPartition::default()
                    .with_partition_index(0)
                    .with_current_leader_epoch(-1)
                    .with_timestamp(-1),
            ])]);
    let resp = b.client().request(4, &req);
    let p = &resp.topics[0].partitions[0];
    (p.error_code, p.offset, p.leader_epoch)
}

/// A consumer's OffsetForLeaderEpoch v4 for `epoch` of partition 0, with no current epoch:
/// (error, epoch, end offset).
fn epoch_end(b: &Broker, topic: &str, epoch: i32) -> (i16, i32, i64) {
    let req = OffsetForLeaderEpochRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![
            offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                .with_topic(tn(topic))
                .with_partitions(vec![
                    offset_for_leader_epoch_request::OffsetForLeaderPartition::default()
                        .with_partition(0)
                        .with_current_leader_epoch(-1)
                        .with_leader_epoch(epoch),
                ]),
        ]);
    let resp = b.client().request(4, &req);
    let e = &resp.topics[0].partitions[0];
    (e.error_code, e.leader_epoch, e.end_offset)
}

/// Checks that `id` does not act as leader of partition 0 in `stale_epoch` (or any epoch up to
/// it): Produce, Fetch, ListOffsets and OffsetForLeaderEpoch are refused or, if answered as
/// leader, in a newer epoch; its Metadata names neither itself as leader of such an epoch.
/// Returns whether it answered as the leader of a newer epoch (the check is then over).
fn assert_not_stale_leader(cluster: &Cluster, id: i32, topic: &str, stale_epoch: i32) -> bool {
    let b = cluster.broker(id);
    let (code, _, epoch) = latest_offset(b, topic);
    assert!(
        code != 0 || epoch > stale_epoch,
        "broker {id} answered ListOffsets as leader of epoch {epoch} (superseded: {stale_epoch})"
    );
    let newer = code == 0;
    if let Some((_, leader, epoch, _)) = cluster.partition0(id, topic) {
        assert!(
            leader != id || epoch > stale_epoch,
            "broker {id}'s Metadata names itself leader of epoch {epoch} (superseded: {stale_epoch})"
        );
    }
    if newer {
        return true;
    }
    let (code, epoch, end) = epoch_end(b, topic, stale_epoch);
    assert_eq!(
        code, NOT_LEADER_OR_FOLLOWER,
        "broker {id} answered OffsetForLeaderEpoch as a stale leader: epoch {epoch} ends at {end}"
    );
    let (code, vals) = fetch(b, topic);
    assert_eq!(
        code, NOT_LEADER_OR_FOLLOWER,
        "broker {id} served a consumer Fetch as a stale leader: {vals:?}"
    );
    let code = produce(b, topic, batch("stale", 1, 100));
    assert_ne!(code, 0, "broker {id} accepted a produce as a stale leader");
    false
}

fn run(mode: &str) {
    let mut cluster = Cluster::start(mode);
    let topic = "restarted";
    cluster.create_topic(topic);
    let (old_leader, old_epoch, _) =
        cluster.wait_for(1, topic, "initial leader", |_, _, isr| isr.len() == 3);
    produce_until_ok(
        cluster.broker(old_leader),
        topic,
        batch("a", 5, 0),
        "produce to the first leader",
    );

    // kill -9 the leader: a survivor leads a newer epoch and takes more acknowledged writes.
    cluster.kill(old_leader);
    let survivor = (1..=3).find(|b| *b != old_leader).expect("a survivor");
    let (new_leader, new_epoch, _) = cluster.wait_for(survivor, topic, "failover", |l, e, _| {
        l != old_leader && e > old_epoch
    });
    produce_until_ok(
        cluster.broker(new_leader),
        topic,
        batch("b", 3, 10),
        "produce to the new leader",
    );
    let other = (1..=3)
        .find(|b| *b != old_leader && *b != new_leader)
        .expect("the third broker");

    // Both survivors die; the old leader comes back alone. Its metadata log ends before the
    // failover, so its replayed image says it leads the old epoch; without a controller
    // majority it can neither register nor catch up, and must not lead meanwhile.
    cluster.kill(new_leader);
    cluster.kill(other);
    cluster.restart(old_leader);
    let alone_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < alone_until {
        assert!(
            !assert_not_stale_leader(&cluster, old_leader, topic, old_epoch),
            "broker {old_leader} led a newer epoch without a controller majority"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A survivor with the newer metadata returns: the old leader registers and catches up,
    // and at no point in between leads the superseded epoch. Then the last broker returns (in
    // ISR mode the restarted survivor's new incarnation left the ISR, so the partition may
    // wait for the last leader).
    cluster.restart(other);
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_not_stale_leader(&cluster, old_leader, topic, old_epoch);
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.restart(new_leader);
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let current = cluster
            .partition0(old_leader, topic)
            .filter(|(code, leader, _, _)| *code == 0 && *leader >= 0);
        let newer_led_here = assert_not_stale_leader(&cluster, old_leader, topic, old_epoch);
        if let Some((_, leader, epoch, _)) = current {
            if epoch > new_epoch && (leader != old_leader || newer_led_here) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no leader after {new_epoch} once the controller was back: {current:?}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (leader, _, _) = cluster.wait_for(old_leader, topic, "leader", |_, e, _| e > new_epoch);
    // Nothing acknowledged was lost to the restarted broker's stale view.
    produce_until_ok(
        cluster.broker(leader),
        topic,
        batch("c", 2, 20),
        "produce after the restart",
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let vals = loop {
        let (code, vals) = fetch(cluster.broker(leader), topic);
        if code == 0 && vals.iter().any(|v| v.starts_with("c-")) {
            break vals;
        }
        assert!(Instant::now() < deadline, "fetch after restart: {code}");
        std::thread::sleep(Duration::from_millis(100));
    };
    for (prefix, n) in [("a-", 5), ("b-", 3)] {
        assert_eq!(
            vals.iter().filter(|v| v.starts_with(prefix)).count(),
            n,
            "acknowledged {prefix} records: {vals:?}"
        );
    }
    assert!(
        !vals.iter().any(|v| v.starts_with("stale-")),
        "a stale leader's write survived: {vals:?}"
    );
}

#[test]
fn isr_restarted_broker_does_not_lead_a_superseded_epoch() {
    run("isr");
}

#[test]
fn quorum_restarted_broker_does_not_lead_a_superseded_epoch() {
    run("quorum");
}
