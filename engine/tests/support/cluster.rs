//! A cluster of `sluice` processes on 127.0.0.1 for the `cluster_*` tests: three controller
//! voters (nodes 1-3) and, where a test asks for more, broker-only nodes (4, ...), each in its
//! own directory under one temp dir, with the short session, heartbeat, election and replica
//! fetch timings every cluster test runs with. Also the requests several of those tests send
//! to partition 0 of a topic (acks=all Produce, Fetch, ListOffsets, OffsetForLeaderEpoch).
//!
//! Included by the `cluster_*` tests next to `broker_support.rs`:
//! `#[path = "broker_support.rs"] mod support;` and
//! `#[path = "support/cluster.rs"] mod cluster;` (it uses `crate::support`).
#![allow(dead_code)]

use std::fmt::Debug;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::metadata_response::MetadataResponsePartition;
use kafka_protocol::messages::{
    create_topics_request, fetch_request, list_offsets_request, metadata_request,
    offset_for_leader_epoch_request, produce_request, BrokerId, CreateTopicsRequest, FetchRequest,
    ListOffsetsRequest, MetadataRequest, MetadataResponse, OffsetForLeaderEpochRequest,
    ProduceRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use nix::sys::signal::Signal;

use crate::support::{values, Broker};

/// How many nodes are controller voters (the rest are broker-only).
pub const VOTERS: i32 = 3;

/// The settings every node of every cluster test starts with.
const TIMINGS: [&str; 4] = [
    "broker.session.timeout.ms=2000",
    "broker.heartbeat.interval.ms=200",
    "controller.quorum.election.timeout.ms=500",
    "replica.fetch.wait.max.ms=200",
];

pub fn tn(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

/// Running nodes (`None` once stopped or killed), ids from 1; dropping it kills them all.
pub struct Cluster {
    pub brokers: Vec<Option<Broker>>,
    pub dirs: Vec<PathBuf>,
    args: Vec<Vec<String>>,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    /// The three voters, with `settings` (`--set` pairs) on each.
    pub fn start(settings: &[&str]) -> Cluster {
        Cluster::start_with(VOTERS, settings, |_| Vec::new())
    }

    /// `nodes` nodes (the first three voters, the others broker-only), started one after the
    /// other, with `settings` on each and `per_node(id)` on node `id` as well.
    pub fn start_with(
        nodes: i32,
        settings: &[&str],
        per_node: impl Fn(i32) -> Vec<String>,
    ) -> Cluster {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ports = crate::support::ports::free_ports(VOTERS as usize);
        let voters = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}@127.0.0.1:{p}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut dirs = Vec::new();
        let mut all_args = Vec::new();
        for id in 1..=nodes {
            dirs.push(tmp.path().join(format!("node{id}")));
            let mut args: Vec<String> = vec![
                "--node-id".into(),
                id.to_string(),
                "--controller-voters".into(),
                voters.clone(),
            ];
            let node_settings = TIMINGS
                .iter()
                .chain(settings)
                .map(|s| s.to_string())
                .chain(per_node(id));
            for s in node_settings {
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
        for id in 1..=nodes {
            let b = cluster.spawn(id);
            cluster.brokers.push(Some(b));
        }
        cluster
    }

    /// Starts node `id` on its directory with its arguments.
    pub fn spawn(&self, id: i32) -> Broker {
        let i = (id - 1) as usize;
        let args: Vec<&str> = self.args[i].iter().map(String::as_str).collect();
        Broker::start_in(&self.dirs[i], &args, &[])
    }

    pub fn broker(&self, id: i32) -> &Broker {
        self.brokers[(id - 1) as usize]
            .as_ref()
            .expect("broker running")
    }

    /// Controlled shutdown (SIGTERM): the controller fences the broker at once. The exit
    /// status, once it has exited.
    pub fn stop(&mut self, id: i32) -> ExitStatus {
        let mut b = self.brokers[(id - 1) as usize].take().expect("running");
        b.stop_with(Signal::SIGTERM)
    }

    /// SIGKILL.
    pub fn kill(&mut self, id: i32) {
        drop(self.brokers[(id - 1) as usize].take().expect("running"));
    }

    pub fn restart(&mut self, id: i32) {
        let b = self.spawn(id);
        self.brokers[(id - 1) as usize] = Some(b);
    }

    /// Metadata v12 for `topic` as broker `via` answers it.
    pub fn metadata(&self, via: i32, topic: &str) -> MetadataResponse {
        let req = MetadataRequest::default().with_topics(Some(vec![
            metadata_request::MetadataRequestTopic::default().with_name(Some(tn(topic))),
        ]));
        self.broker(via).client().request(12, &req)
    }

    /// Polls `probe` every 100 ms until its state satisfies `ok`, for `within` at most; fails
    /// the test with `what` and the last state.
    pub fn wait_until<S: Debug>(
        &self,
        what: &str,
        within: Duration,
        probe: impl Fn(&Cluster) -> Option<S>,
        ok: impl Fn(&S) -> bool,
    ) -> S {
        let deadline = Instant::now() + within;
        let mut last = None;
        while Instant::now() < deadline {
            last = probe(self);
            if let Some(s) = last.take() {
                if ok(&s) {
                    return s;
                }
                last = Some(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{what}: partition state {last:?}");
    }

    /// Creates `topic` through broker 1, retrying for 20 s while brokers are still
    /// registering (INVALID_REPLICATION_FACTOR) or there is no controller yet.
    pub fn create_topic(&self, topic: &str, partitions: i32, rf: i16) {
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
            assert!(
                Instant::now() < deadline,
                "CreateTopics kept failing: {code}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// acks=all Produce v9 of `records` to partition 0 (5 s timeout): (error, base offset).
pub fn produce(b: &Broker, topic: &str, records: Bytes) -> (i16, i64) {
    produce_with_timeout(b, topic, records, 5000)
}

pub fn produce_with_timeout(
    b: &Broker,
    topic: &str,
    records: Bytes,
    timeout_ms: i32,
) -> (i16, i64) {
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(timeout_ms)
        .with_topic_data(vec![produce_request::TopicProduceData::default()
            .with_name(tn(topic))
            .with_partition_data(vec![
                produce_request::PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(records)),
            ])]);
    let resp = b.client().request(9, &req);
    let p = &resp.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

/// Produces `records` (acks=all) until the broker accepts them, for up to 15 s (a new leader
/// or ISR may still be settling); fails the test with `what` and the last error code.
pub fn produce_until_ok(b: &Broker, topic: &str, records: Bytes, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (code, _) = produce(b, topic, records.clone());
        if code == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {code}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A consumer's Fetch v12 of partition 0 from offset 0 with `epoch` as current_leader_epoch
/// (-1: none): (error, high watermark, values).
pub fn fetch(b: &Broker, topic: &str, epoch: i32) -> (i16, i64, Vec<String>) {
    let req = fetch_partition0(topic, -1, epoch, 0, -1);
    let resp = b.client().request(12, &req);
    let p = &resp.responses[0].partitions[0];
    let vals = p.records.as_ref().map(values).unwrap_or_default();
    (p.error_code, p.high_watermark, vals)
}

/// A Fetch of partition 0 that does not wait (1 MiB at most) by `replica` (-1: a consumer)
/// with `epoch` as current_leader_epoch, from `offset`, the last fetched epoch
/// `last_fetched_epoch`.
pub fn fetch_partition0(
    topic: &str,
    replica: i32,
    epoch: i32,
    offset: i64,
    last_fetched_epoch: i32,
) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(replica))
        .with_max_wait_ms(0)
        .with_min_bytes(0)
        .with_max_bytes(1 << 20)
        .with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(tn(topic))
            .with_partitions(vec![fetch_request::FetchPartition::default()
                .with_partition(0)
                .with_current_leader_epoch(epoch)
                .with_fetch_offset(offset)
                .with_last_fetched_epoch(last_fetched_epoch)
                .with_partition_max_bytes(1 << 20)])])
}

/// (leader, replicas, isr) of a Metadata partition, if it has no error.
pub fn replica_state(p: &MetadataResponsePartition) -> Option<(i32, Vec<i32>, Vec<i32>)> {
    (p.error_code == 0).then(|| {
        (
            p.leader_id.0,
            p.replica_nodes.iter().map(|b| b.0).collect(),
            p.isr_nodes.iter().map(|b| b.0).collect(),
        )
    })
}

/// ListOffsets v4 latest of partition 0 with no current epoch: (error, offset, leader epoch).
pub fn latest_offset(b: &Broker, topic: &str) -> (i16, i64, i32) {
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

/// A consumer's OffsetForLeaderEpoch v4 for `epoch` of partition 0 with `current_epoch` as
/// current_leader_epoch (-1: none): (error, epoch, end offset).
pub fn epoch_end(b: &Broker, topic: &str, current_epoch: i32, epoch: i32) -> (i16, i32, i64) {
    let req = OffsetForLeaderEpochRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![
            offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                .with_topic(tn(topic))
                .with_partitions(vec![
                    offset_for_leader_epoch_request::OffsetForLeaderPartition::default()
                        .with_partition(0)
                        .with_current_leader_epoch(current_epoch)
                        .with_leader_epoch(epoch),
                ]),
        ]);
    let resp = b.client().request(4, &req);
    let e = &resp.topics[0].partitions[0];
    (e.error_code, e.leader_epoch, e.end_offset)
}
