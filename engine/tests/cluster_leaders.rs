//! Three `sluice` processes on 127.0.0.1: ElectLeaders moves leadership back to the preferred
//! replica after it restarted (and answers ELECTION_NOT_NEEDED the second time), the
//! controller's automatic leader rebalance does the same by itself, and `broker.rack` spreads
//! replicas over racks and shows in Metadata. Every wait is bounded; the brokers are killed
//! when a test ends.

#[path = "broker_support.rs"]
mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kafka_protocol::messages::{
    create_topics_request, elect_leaders_request, metadata_request, CreateTopicsRequest,
    ElectLeadersRequest, ElectLeadersResponse, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use nix::sys::signal::Signal;
use support::*;

const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const ELECTION_NOT_NEEDED: i16 = 84;

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
    /// Three voters; `racks[i]` is broker `i + 1`'s `broker.rack`; `extra` settings for all.
    fn start(racks: [&str; 3], extra: &[&str]) -> Cluster {
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
            let mut settings = vec![
                "broker.session.timeout.ms=2000".to_string(),
                "broker.heartbeat.interval.ms=200".into(),
                "controller.quorum.election.timeout.ms=500".into(),
                "replica.fetch.wait.max.ms=200".into(),
                format!("broker.rack={}", racks[id - 1]),
            ];
            settings.extend(extra.iter().map(|s| s.to_string()));
            for s in settings {
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

    /// Controlled shutdown (SIGTERM): the controller fences the broker at once.
    fn stop(&mut self, id: i32) {
        let mut b = self.brokers[(id - 1) as usize].take().expect("running");
        b.stop_with(Signal::SIGTERM);
    }

    fn restart(&mut self, id: i32) {
        let b = self.spawn(id);
        self.brokers[(id - 1) as usize] = Some(b);
    }

    fn metadata(&self, via: i32, topic: &str) -> MetadataResponse {
        let req = MetadataRequest::default().with_topics(Some(vec![
            metadata_request::MetadataRequestTopic::default().with_name(Some(tn(topic))),
        ]));
        self.broker(via).client().request(12, &req)
    }

    /// (leader, replicas, isr) of `topic`-`partition` as broker `via` sees it.
    fn partition(
        &self,
        via: i32,
        topic: &str,
        partition: i32,
    ) -> Option<(i32, Vec<i32>, Vec<i32>)> {
        let resp = self.metadata(via, topic);
        let t = resp.topics.first()?;
        let p = t
            .partitions
            .iter()
            .find(|p| p.partition_index == partition)?;
        (p.error_code == 0).then(|| {
            (
                p.leader_id.0,
                p.replica_nodes.iter().map(|b| b.0).collect(),
                p.isr_nodes.iter().map(|b| b.0).collect(),
            )
        })
    }

    fn wait_for(
        &self,
        via: i32,
        topic: &str,
        what: &str,
        ok: impl Fn(&(i32, Vec<i32>, Vec<i32>)) -> bool,
    ) -> (i32, Vec<i32>, Vec<i32>) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = None;
        while Instant::now() < deadline {
            last = self.partition(via, topic, 0);
            if let Some(s) = &last {
                if ok(s) {
                    return s.clone();
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{what}: partition state {last:?}");
    }

    fn create_topic(&self, topic: &str, partitions: i32, rf: i16) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let req = CreateTopicsRequest::default()
                .with_timeout_ms(10_000)
                .with_topics(vec![create_topics_request::CreatableTopic::default()
                    .with_name(tn(topic))
                    .with_num_partitions(partitions)
                    .with_replication_factor(rf)]);
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

fn elect(
    b: &Broker,
    election_type: i8,
    partitions: Option<&[(&str, i32)]>,
) -> ElectLeadersResponse {
    let topic_partitions = partitions.map(|ps| {
        ps.iter()
            .map(|(t, p)| {
                elect_leaders_request::TopicPartitions::default()
                    .with_topic(tn(t))
                    .with_partitions(vec![*p])
            })
            .collect()
    });
    let req = ElectLeadersRequest::default()
        .with_election_type(election_type)
        .with_topic_partitions(topic_partitions)
        .with_timeout_ms(10_000);
    b.client().request(2, &req)
}

/// (topic, partition, code) of every result.
fn codes(resp: &ElectLeadersResponse) -> Vec<(String, i32, i16)> {
    resp.replica_election_results
        .iter()
        .flat_map(|t| {
            t.partition_result
                .iter()
                .map(|p| (t.topic.as_str().to_string(), p.partition_id, p.error_code))
        })
        .collect()
}

/// Stops the preferred replica of `topic`-0, waits for another leader, restarts it and waits
/// until it is back in the ISR (then, unless `may_move_back`, still not leading). Returns the
/// preferred replica's id.
fn move_leadership_away(cluster: &mut Cluster, topic: &str, may_move_back: bool) -> i32 {
    let (leader, replicas, _) =
        cluster.wait_for(1, topic, "initial leader", |s| s.2.len() == 3 && s.0 >= 0);
    let preferred = replicas[0];
    assert_eq!(
        leader, preferred,
        "a new partition is led by its preferred replica"
    );
    let other = replicas[1];
    cluster.stop(preferred);
    cluster.wait_for(other, topic, "failover", |s| s.0 >= 0 && s.0 != preferred);
    cluster.restart(preferred);
    let (leader, ..) = cluster.wait_for(other, topic, "back in the ISR", |s| {
        s.2.contains(&preferred) && s.2.len() == 3
    });
    assert!(
        may_move_back || leader != preferred,
        "nothing moved leadership back"
    );
    preferred
}

#[test]
fn elect_leaders_moves_leadership_back_and_racks_spread_replicas() {
    let mut cluster = Cluster::start(
        ["rack-a", "rack-a", "rack-b"],
        &["auto.leader.rebalance.enable=false"],
    );
    let topic = "preferred";
    cluster.create_topic(topic, 1, 3);
    let preferred = move_leadership_away(&mut cluster, topic, false);
    let via = if preferred == 1 { 2 } else { 1 };
    // Unclean: the partition has a leader, nothing to do.
    let resp = elect(cluster.broker(via), 1, Some(&[(topic, 0)]));
    assert_eq!(resp.error_code, 0);
    assert_eq!(
        codes(&resp),
        vec![(topic.to_string(), 0, ELECTION_NOT_NEEDED)]
    );
    // Preferred: moves back, and the answering broker's metadata shows it at once.
    let resp = elect(
        cluster.broker(via),
        0,
        Some(&[(topic, 0), (topic, 5), ("no-such-topic", 0)]),
    );
    assert_eq!(resp.error_code, 0);
    assert_eq!(
        codes(&resp),
        vec![
            (topic.to_string(), 0, 0),
            (topic.to_string(), 5, UNKNOWN_TOPIC_OR_PARTITION),
            ("no-such-topic".to_string(), 0, UNKNOWN_TOPIC_OR_PARTITION),
        ]
    );
    assert_eq!(
        cluster.partition(via, topic, 0).map(|s| s.0),
        Some(preferred)
    );
    let resp = elect(cluster.broker(via), 0, Some(&[(topic, 0)]));
    assert_eq!(
        codes(&resp),
        vec![(topic.to_string(), 0, ELECTION_NOT_NEEDED)]
    );
    // Null partitions: every partition, the ones needing nothing left out.
    let resp = elect(cluster.broker(preferred), 0, None);
    assert_eq!(resp.error_code, 0);
    assert_eq!(codes(&resp), vec![]);
    // An unknown election type is an invalid request.
    let resp = elect(cluster.broker(via), 7, Some(&[(topic, 0)]));
    assert_eq!(resp.error_code, 42);
    // The new leader serves: its replica became leader on the broker.
    cluster.wait_for(preferred, topic, "leader after election", |s| {
        s.0 == preferred && s.2.len() == 3
    });
    // Racks: Metadata shows each broker's; every partition spans both racks.
    cluster.create_topic("racked", 6, 2);
    let meta = cluster.metadata(2, "racked");
    let rack_of = |id: i32| {
        meta.brokers
            .iter()
            .find(|b| b.node_id.0 == id)
            .and_then(|b| b.rack.as_ref().map(|r| r.to_string()))
    };
    assert_eq!(rack_of(1).as_deref(), Some("rack-a"));
    assert_eq!(rack_of(3).as_deref(), Some("rack-b"));
    let parts = &meta.topics[0].partitions;
    assert_eq!(parts.len(), 6);
    for p in parts {
        let racks: std::collections::BTreeSet<_> =
            p.replica_nodes.iter().map(|b| rack_of(b.0)).collect();
        assert_eq!(
            racks.len(),
            2,
            "replicas {:?} share a rack",
            p.replica_nodes
        );
    }
}

#[test]
fn auto_rebalance_moves_leadership_back() {
    let mut cluster = Cluster::start(["", "", ""], &["leader.imbalance.check.interval.seconds=1"]);
    let topic = "rebalanced";
    cluster.create_topic(topic, 1, 3);
    let preferred = move_leadership_away(&mut cluster, topic, true);
    let via = if preferred == 1 { 2 } else { 1 };
    // One partition, not led by its preferred replica: 100 % > 10 %; the controller elects
    // the preferred replica within a check interval or two.
    cluster.wait_for(via, topic, "automatic rebalance", |s| s.0 == preferred);
    // No rack anywhere: Metadata carries none.
    let meta = cluster.metadata(via, topic);
    assert!(meta.brokers.iter().all(|b| b.rack.is_none()));
}
