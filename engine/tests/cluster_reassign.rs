//! Four `sluice` processes on 127.0.0.1 (three controller voters and a broker-only node):
//! AlterPartitionReassignments moves a partition with acknowledged records off one broker and
//! onto another (the new replica catches up, joins the ISR, leadership leaves the removed
//! broker, which deletes its partition directory), refuses bad targets with Kafka's codes,
//! and a move that cannot finish (its new replica is down) is listed by
//! ListPartitionReassignments and cancelled back to the original replicas. Every wait is
//! bounded; the brokers are killed when the test ends.

#[path = "broker_support.rs"]
mod support;

#[path = "support/cluster.rs"]
mod cluster;

use std::time::{Duration, Instant};

use cluster::{replica_state, tn, Cluster};
use kafka_protocol::messages::{
    alter_partition_reassignments_request as alter, create_topics_request, fetch_request,
    list_partition_reassignments_request as list, metadata_request,
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, BrokerId,
    CreateTopicsRequest, FetchRequest, FetchResponse, ListPartitionReassignmentsRequest,
    ListPartitionReassignmentsResponse, MetadataRequest, MetadataResponse, ProduceResponse,
};
use kafka_protocol::protocol::StrBytes;
use support::*;

const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const INVALID_REPLICATION_FACTOR: i16 = 38;
const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
const INVALID_REQUEST: i16 = 42;
const NO_REASSIGNMENT_IN_PROGRESS: i16 = 85;

/// (leader, replicas, isr) of a partition.
type State = (i32, Vec<i32>, Vec<i32>);

impl Cluster {
    /// The three voters and broker-only node 4.
    fn start_four() -> Cluster {
        Cluster::start_with(4, &["auto.leader.rebalance.enable=false"], |_| Vec::new())
    }

    /// Metadata for `topic` as `via` answers it, never auto-creating it.
    fn metadata_no_create(&self, via: i32, topic: &str) -> MetadataResponse {
        let req = MetadataRequest::default()
            .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
            )
            .with_name(Some(tn(topic)))]))
            .with_allow_auto_topic_creation(false);
        self.broker(via).client().request(12, &req)
    }

    fn partition(&self, via: i32, topic: &str) -> Option<State> {
        let resp = self.metadata_no_create(via, topic);
        let p = resp.topics.first()?.partitions.first()?;
        replica_state(p)
    }

    fn wait_for(&self, via: i32, topic: &str, what: &str, ok: impl Fn(&State) -> bool) -> State {
        self.wait_until(
            what,
            Duration::from_secs(30),
            |c| c.partition(via, topic),
            ok,
        )
    }

    /// Creates `topic` (one partition, three replicas) once every broker is registered.
    fn create_topic_on_four(&self, topic: &str, configs: &[(&str, &str)]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // No topic asked for: a Metadata naming one would auto-create it.
            let req = MetadataRequest::default()
                .with_topics(Some(vec![]))
                .with_allow_auto_topic_creation(false);
            let meta: MetadataResponse = self.broker(1).client().request(12, &req);
            let brokers = meta.brokers.len();
            if brokers == 4 {
                let req = CreateTopicsRequest::default()
                    .with_timeout_ms(10_000)
                    .with_topics(vec![create_topics_request::CreatableTopic::default()
                        .with_name(tn(topic))
                        .with_num_partitions(1)
                        .with_replication_factor(3)
                        .with_configs(
                            configs
                                .iter()
                                .map(|(k, v)| {
                                    create_topics_request::CreatableTopicConfig::default()
                                        .with_name(StrBytes::from_string(k.to_string()))
                                        .with_value(Some(StrBytes::from_string(v.to_string())))
                                })
                                .collect(),
                        )]);
                let code = self.broker(1).client().request(5, &req).topics[0].error_code;
                if code == 0 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "CreateTopics kept failing");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn reassign(
    b: &Broker,
    items: &[(&str, i32, Option<Vec<i32>>)],
) -> AlterPartitionReassignmentsResponse {
    reassign_with(b, 1, true, items)
}

/// AlterPartitionReassignments at `version`, with `allow_replication_factor_change` (v1).
fn reassign_with(
    b: &Broker,
    version: i16,
    allow_rf_change: bool,
    items: &[(&str, i32, Option<Vec<i32>>)],
) -> AlterPartitionReassignmentsResponse {
    let topics = items
        .iter()
        .map(|(t, p, target)| {
            alter::ReassignableTopic::default()
                .with_name(tn(t))
                .with_partitions(vec![alter::ReassignablePartition::default()
                    .with_partition_index(*p)
                    .with_replicas(
                        target
                            .as_ref()
                            .map(|r| r.iter().map(|&b| BrokerId(b)).collect()),
                    )])
        })
        .collect();
    let req = AlterPartitionReassignmentsRequest::default()
        .with_timeout_ms(10_000)
        .with_allow_replication_factor_change(allow_rf_change)
        .with_topics(topics);
    b.client().request(version, &req)
}

/// (topic, partition, code) of every result.
fn codes(resp: &AlterPartitionReassignmentsResponse) -> Vec<(String, i32, i16)> {
    resp.responses
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (t.name.as_str().to_string(), p.partition_index, p.error_code))
        })
        .collect()
}

/// (topic, partition, replicas, adding, removing) of a listed reassignment.
type Listed = (String, i32, Vec<i32>, Vec<i32>, Vec<i32>);

/// Every listed reassignment.
fn listed(b: &Broker, topics: Option<&[(&str, i32)]>) -> Vec<Listed> {
    let req = ListPartitionReassignmentsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(topics.map(|ts| {
            ts.iter()
                .map(|(t, p)| {
                    list::ListPartitionReassignmentsTopics::default()
                        .with_name(tn(t))
                        .with_partition_indexes(vec![*p])
                })
                .collect()
        }));
    let resp: ListPartitionReassignmentsResponse = b.client().request(0, &req);
    assert_eq!(resp.error_code, 0);
    let ids = |v: &[BrokerId]| v.iter().map(|b| b.0).collect::<Vec<_>>();
    resp.topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| {
                (
                    t.name.as_str().to_string(),
                    p.partition_index,
                    ids(&p.replicas),
                    ids(&p.adding_replicas),
                    ids(&p.removing_replicas),
                )
            })
        })
        .collect()
}

/// Produces `n` records with acks=all, retrying while `b` does not know it leads yet
/// (NOT_LEADER_OR_FOLLOWER, or UNKNOWN_TOPIC_OR_PARTITION before its image has the topic).
/// Returns the base offset.
fn produce(b: &Broker, topic: &str, prefix: &str, n: usize) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let req = produce_request(topic, 0, -1, batch(prefix, n, 0));
        let resp: ProduceResponse = b.client().request(9, &req);
        let p = &resp.responses[0].partition_responses[0];
        if (p.error_code == 6 || p.error_code == 3) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        assert_eq!(p.error_code, 0, "produce to {topic}: {p:?}");
        return p.base_offset;
    }
}

/// Every record value of partition 0 from offset 0, as `b` (its leader) serves it.
fn read_all(b: &Broker, topic: &str) -> Vec<String> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let req = FetchRequest::default()
            .with_max_wait_ms(100)
            .with_max_bytes(1 << 20)
            .with_topics(vec![fetch_request::FetchTopic::default()
                .with_topic(tn(topic))
                .with_partitions(vec![fetch_request::FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(out.len() as i64)
                    .with_partition_max_bytes(1 << 20)])]);
        let resp: FetchResponse = b.client().request(12, &req);
        let p = &resp.responses[0].partitions[0];
        assert_eq!(p.error_code, 0, "fetch {topic}");
        let got = p.records.as_ref().map(values).unwrap_or_default();
        if got.is_empty() {
            return out;
        }
        out.extend(got);
        assert!(Instant::now() < deadline, "fetch did not end");
    }
}

#[test]
fn reassignment_moves_a_partition_and_cancellation_reverts_one() {
    let mut cluster = Cluster::start_four();
    let topic = "moved";
    cluster.create_topic_on_four(topic, &[]);
    let (leader, original, _) =
        cluster.wait_for(1, topic, "initial ISR", |s| s.0 >= 0 && s.2.len() == 3);
    let removed = original[0];
    assert_eq!(
        leader, removed,
        "the preferred replica leads a new partition"
    );
    let added = (1..=4).find(|b| !original.contains(b)).unwrap_or(4);
    // The target's order is the new preferred order.
    let target: Vec<i32> = vec![added, original[1], original[2]];
    let before: Vec<String> = (0..5)
        .flat_map(|i| {
            produce(cluster.broker(leader), topic, &format!("before{i}"), 20);
            (0..20).map(move |j| format!("before{i}-{j}"))
        })
        .collect();

    // Bad targets, each refused on its own; no reassignment is started by them.
    cluster.create_topic_on_four("quorum", &[("replication.mode", "quorum")]);
    let via = original[1];
    let resp = reassign(
        cluster.broker(via),
        &[
            ("nope", 0, Some(vec![1, 2, 3])),
            (topic, 3, Some(vec![1, 2, 3])),
            (topic, 0, Some(vec![])),
            (topic, 0, Some(vec![2, 2, 3])),
            (topic, 0, Some(vec![2, 3, 42])),
            (topic, 0, None),
            ("quorum", 0, Some(vec![1, 2, 4])),
        ],
    );
    assert_eq!(resp.error_code, 0);
    let t = topic.to_string();
    assert_eq!(
        codes(&resp),
        vec![
            ("nope".into(), 0, UNKNOWN_TOPIC_OR_PARTITION),
            (t.clone(), 3, UNKNOWN_TOPIC_OR_PARTITION),
            (t.clone(), 0, INVALID_REPLICA_ASSIGNMENT),
            (t.clone(), 0, INVALID_REPLICA_ASSIGNMENT),
            (t.clone(), 0, INVALID_REPLICA_ASSIGNMENT),
            (t.clone(), 0, NO_REASSIGNMENT_IN_PROGRESS),
            ("quorum".into(), 0, INVALID_REQUEST),
        ]
    );
    let message = resp.responses.last().unwrap().partitions[0]
        .error_message
        .as_ref()
        .map(|m| m.to_string())
        .unwrap_or_default();
    assert!(message.contains("quorum"), "{message}");
    // KIP-860: v1 may refuse a new replication factor; v0 (no such flag) is served too.
    let two = vec![original[1], original[2]];
    let resp = reassign_with(
        cluster.broker(via),
        1,
        false,
        &[(topic, 0, Some(two.clone()))],
    );
    assert_eq!(
        codes(&resp),
        vec![(t.clone(), 0, INVALID_REPLICATION_FACTOR)]
    );
    assert!(!resp.allow_replication_factor_change);
    let resp = reassign_with(cluster.broker(via), 0, true, &[(topic, 5, Some(two))]);
    assert_eq!(
        codes(&resp),
        vec![(t.clone(), 5, UNKNOWN_TOPIC_OR_PARTITION)]
    );
    assert_eq!(listed(cluster.broker(via), None), vec![]);

    // The move.
    let resp = reassign(cluster.broker(via), &[(topic, 0, Some(target.clone()))]);
    assert_eq!(codes(&resp), vec![(t.clone(), 0, 0)]);
    let (leader, replicas, isr) = cluster.wait_for(via, topic, "reassignment done", |s| {
        s.1 == target && s.2.len() == 3 && s.0 >= 0
    });
    assert_eq!(replicas, target);
    let mut sorted = isr.clone();
    sorted.sort();
    let mut want = target.clone();
    want.sort();
    assert_eq!(sorted, want, "every target replica in sync");
    assert_ne!(leader, removed, "leadership left the removed broker");
    assert!(target.contains(&leader));
    assert_eq!(listed(cluster.broker(via), None), vec![]);
    // Everything acknowledged before the move is served by the new leader, and it takes
    // new writes.
    let (leader, ..) = cluster.wait_for(leader, topic, "leader sees itself", |s| s.0 >= 0);
    assert_eq!(produce(cluster.broker(leader), topic, "after", 10), 100);
    let mut expected = before.clone();
    expected.extend((0..10).map(|j| format!("after-{j}")));
    assert_eq!(read_all(cluster.broker(leader), topic), expected);
    // The removed broker stopped its replica and deleted its directory; the added one has it.
    let gone = cluster.dirs[(removed - 1) as usize].join(format!("{topic}-0"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while gone.exists() {
        assert!(Instant::now() < deadline, "{} still exists", gone.display());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(cluster.dirs[(added - 1) as usize]
        .join(format!("{topic}-0"))
        .exists());

    // A move that cannot finish: its new replica (the removed broker) is stopped.
    cluster.stop(removed);
    let live = target[1];
    let back: Vec<i32> = vec![target[0], target[1], removed];
    let resp = reassign(cluster.broker(live), &[(topic, 0, Some(back))]);
    assert_eq!(codes(&resp), vec![(t.clone(), 0, 0)]);
    let mut merged = target.clone();
    merged.push(removed);
    let entry = (t.clone(), 0, merged.clone(), vec![removed], vec![target[2]]);
    assert_eq!(listed(cluster.broker(live), None), vec![entry.clone()]);
    assert_eq!(
        listed(
            cluster.broker(live),
            Some(&[(topic, 0), (topic, 7), ("nope", 0)])
        ),
        vec![entry]
    );
    assert_eq!(listed(cluster.broker(live), Some(&[("quorum", 0)])), vec![]);
    cluster.wait_for(live, topic, "moving", |s| s.1 == merged);
    // Cancelled: back to the replicas before it, nothing in progress.
    let resp = reassign(cluster.broker(live), &[(topic, 0, None)]);
    assert_eq!(codes(&resp), vec![(t.clone(), 0, 0)]);
    assert_eq!(listed(cluster.broker(live), None), vec![]);
    cluster.wait_for(live, topic, "cancelled", |s| {
        s.1 == target && s.2.len() == 3
    });
    let resp = reassign_with(cluster.broker(live), 0, true, &[(topic, 0, None)]);
    assert_eq!(codes(&resp), vec![(t, 0, NO_REASSIGNMENT_IN_PROGRESS)]);
    let (leader, ..) = cluster.wait_for(live, topic, "leader", |s| s.0 >= 0);
    assert_eq!(read_all(cluster.broker(leader), topic), expected);
}
