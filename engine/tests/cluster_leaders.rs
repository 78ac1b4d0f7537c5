//! Three `sluice` processes on 127.0.0.1: ElectLeaders moves leadership back to the preferred
//! replica after it restarted (and answers ELECTION_NOT_NEEDED the second time), the
//! controller's automatic leader rebalance does the same by itself, and `broker.rack` spreads
//! replicas over racks and shows in Metadata. Every wait is bounded; the brokers are killed
//! when a test ends.

#[path = "broker_support.rs"]
mod support;

#[path = "support/cluster.rs"]
mod cluster;

use std::time::Duration;

use cluster::{replica_state, tn, Cluster};
use kafka_protocol::messages::{elect_leaders_request, ElectLeadersRequest, ElectLeadersResponse};
use support::*;

const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const ELECTION_NOT_NEEDED: i16 = 84;

/// (leader, replicas, isr) of a partition.
type State = (i32, Vec<i32>, Vec<i32>);

impl Cluster {
    /// Three voters; `racks[i]` is broker `i + 1`'s `broker.rack`; `extra` settings for all.
    fn start_racked(racks: [&str; 3], extra: &[&str]) -> Cluster {
        Cluster::start_with(3, &[], |id| {
            let mut settings = vec![format!("broker.rack={}", racks[(id - 1) as usize])];
            settings.extend(extra.iter().map(|s| s.to_string()));
            settings
        })
    }

    /// (leader, replicas, isr) of `topic`-`partition` as broker `via` sees it.
    fn partition(&self, via: i32, topic: &str, partition: i32) -> Option<State> {
        let resp = self.metadata(via, topic);
        let t = resp.topics.first()?;
        let p = t
            .partitions
            .iter()
            .find(|p| p.partition_index == partition)?;
        replica_state(p)
    }

    fn wait_for(&self, via: i32, topic: &str, what: &str, ok: impl Fn(&State) -> bool) -> State {
        self.wait_until(
            what,
            Duration::from_secs(20),
            |c| c.partition(via, topic, 0),
            ok,
        )
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
    let mut cluster = Cluster::start_racked(
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
    let mut cluster =
        Cluster::start_racked(["", "", ""], &["leader.imbalance.check.interval.seconds=1"]);
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
