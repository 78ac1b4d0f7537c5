//! TxnOffsetCommit against the real `sluice` binary: advertised v0-3, offsets committed in a
//! transaction stay invisible (OffsetFetch `require_stable` answers UNSTABLE_OFFSET_COMMIT),
//! and after a restart the coordinator replays the transactional batches with the COMMIT and
//! ABORT markers found in `__consumer_offsets` (appended here through `PartitionLog`, as the
//! transaction coordinator will): committed offsets visible, aborted ones gone, an open
//! transaction still pending.

#[path = "broker_support.rs"]
mod support;

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use nix::sys::signal::Signal;
use sluice::group::{offsets_partition_for, OFFSETS_TOPIC};
use sluice::io::runtime::block_on;
use sluice::storage::{LogConfig, PartitionLog};
use support::*;

const NONE: i16 = 0;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
const INVALID_GROUP_ID: i16 = 24;
const UNKNOWN_MEMBER_ID: i16 = 25;
const UNSUPPORTED_VERSION: i16 = 35;
const UNSTABLE_OFFSET_COMMIT: i16 = 88;

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn tn(s: &str) -> TopicName {
    TopicName(sb(s))
}

fn create_topic(c: &mut Client, name: &str, partitions: i32) {
    let req = CreateTopicsRequest::default()
        .with_topics(vec![create_topics_request::CreatableTopic::default()
            .with_name(tn(name))
            .with_num_partitions(partitions)
            .with_replication_factor(1)])
        .with_timeout_ms(10_000);
    let r: CreateTopicsResponse = c.request(5, &req);
    assert_eq!(r.topics[0].error_code, NONE, "create {name}");
}

fn producer_id(c: &mut Client) -> (i64, i16) {
    let req = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let r: InitProducerIdResponse = c.request(4, &req);
    assert_eq!(r.error_code, NONE);
    (r.producer_id.0, r.producer_epoch)
}

/// TxnOffsetCommit of one offset; returns the partition's error code.
#[allow(clippy::too_many_arguments)]
fn txn_commit(
    c: &mut Client,
    version: i16,
    group: &str,
    (pid, epoch): (i64, i16),
    member: &str,
    topic: &str,
    partition: i32,
    offset: i64,
) -> i16 {
    let req = TxnOffsetCommitRequest::default()
        .with_transactional_id(TransactionalId(sb("txn-1")))
        .with_group_id(GroupId(sb(group)))
        .with_producer_id(ProducerId(pid))
        .with_producer_epoch(epoch)
        .with_generation_id(-1)
        .with_member_id(sb(member))
        .with_topics(vec![
            txn_offset_commit_request::TxnOffsetCommitRequestTopic::default()
                .with_name(tn(topic))
                .with_partitions(vec![
                    txn_offset_commit_request::TxnOffsetCommitRequestPartition::default()
                        .with_partition_index(partition)
                        .with_committed_offset(offset)
                        .with_committed_leader_epoch(-1)
                        .with_committed_metadata(Some(sb("txn"))),
                ]),
        ]);
    let r: TxnOffsetCommitResponse = c.request(version, &req);
    assert_eq!(r.topics.len(), 1);
    assert_eq!(r.topics[0].partitions.len(), 1);
    r.topics[0].partitions[0].error_code
}

/// OffsetFetch v7 of one partition: (group error, partition error, offset).
fn fetch(
    c: &mut Client,
    group: &str,
    topic: &str,
    p: i32,
    require_stable: bool,
) -> (i16, i16, i64) {
    let req = OffsetFetchRequest::default()
        .with_group_id(GroupId(sb(group)))
        .with_require_stable(require_stable)
        .with_topics(Some(vec![
            offset_fetch_request::OffsetFetchRequestTopic::default()
                .with_name(tn(topic))
                .with_partition_indexes(vec![p]),
        ]));
    let r: OffsetFetchResponse = c.request(7, &req);
    let part = &r.topics[0].partitions[0];
    (r.error_code, part.error_code, part.committed_offset)
}

/// `fetch`, retried while the coordinator is still loading after a start.
fn fetch_loaded(
    c: &mut Client,
    group: &str,
    topic: &str,
    p: i32,
    require_stable: bool,
) -> (i16, i16, i64) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let r = fetch(c, group, topic, p, require_stable);
        if r.0 != COORDINATOR_LOAD_IN_PROGRESS {
            return r;
        }
        assert!(std::time::Instant::now() < deadline, "offsets never loaded");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn txn_offset_commit_is_served_and_pending_offsets_are_unstable() {
    let broker = Broker::start(&[]);
    let mut c = broker.client();
    let versions: ApiVersionsResponse = c.request(3, &ApiVersionsRequest::default());
    let k = versions
        .api_keys
        .iter()
        .find(|k| k.api_key == ApiKey::TxnOffsetCommit as i16)
        .expect("TxnOffsetCommit advertised");
    assert_eq!((k.min_version, k.max_version), (0, 3));
    for other in [
        ApiKey::AddOffsetsToTxn,
        ApiKey::EndTxn,
        ApiKey::WriteTxnMarkers,
    ] {
        assert!(versions.api_keys.iter().any(|a| a.api_key == other as i16));
    }
    create_topic(&mut c, "in", 2);
    let producer = producer_id(&mut c);
    // Right after start a group's partition may still load; the client retries that.
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let code = txn_commit(&mut c, 3, "g", producer, "", "in", 0, 42);
        if code == NONE {
            break;
        }
        assert_eq!(code, COORDINATOR_LOAD_IN_PROGRESS, "{}", broker.log());
        assert!(std::time::Instant::now() < deadline, "offsets never loaded");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(fetch(&mut c, "g", "in", 0, false), (NONE, NONE, -1));
    assert_eq!(
        fetch(&mut c, "g", "in", 0, true),
        (NONE, UNSTABLE_OFFSET_COMMIT, -1)
    );
    assert_eq!(fetch(&mut c, "g", "in", 1, true), (NONE, NONE, -1));
    // Every served version; v0 has no leader epoch and no member.
    assert_eq!(txn_commit(&mut c, 0, "g", producer, "", "in", 1, 7), NONE);
    assert_eq!(
        fetch(&mut c, "g", "in", 1, true),
        (NONE, UNSTABLE_OFFSET_COMMIT, -1)
    );
    // Errors per partition, with Kafka's codes.
    assert_eq!(
        txn_commit(&mut c, 3, "g", producer, "", "nope", 0, 1),
        UNKNOWN_TOPIC_OR_PARTITION
    );
    assert_eq!(
        txn_commit(&mut c, 3, "", producer, "", "in", 0, 1),
        INVALID_GROUP_ID
    );
    assert_eq!(
        txn_commit(&mut c, 3, "g", producer, "ghost", "in", 0, 1),
        UNKNOWN_MEMBER_ID
    );
    // A version the broker does not serve is refused, the connection stays open.
    let r: TxnOffsetCommitResponse = c.request(
        4,
        &TxnOffsetCommitRequest::default().with_topics(vec![
            txn_offset_commit_request::TxnOffsetCommitRequestTopic::default()
                .with_name(tn("in"))
                .with_partitions(vec![
                    txn_offset_commit_request::TxnOffsetCommitRequestPartition::default()
                        .with_partition_index(0),
                ]),
        ]),
    );
    assert_eq!(r.topics[0].partitions[0].error_code, UNSUPPORTED_VERSION);
    assert_eq!(
        fetch(&mut c, "g", "in", 0, true),
        (NONE, UNSTABLE_OFFSET_COMMIT, -1)
    );
}

/// Appends a COMMIT or ABORT marker for `pid` to the offsets partition of `group` in a
/// stopped broker's data directory.
fn append_marker(data_dir: &std::path::Path, group: &str, (pid, epoch): (i64, i16), commit: bool) {
    let p = offsets_partition_for(group, 50);
    let dir = data_dir.join(format!("{OFFSETS_TOPIC}-{p}"));
    assert!(dir.is_dir(), "{} exists", dir.display());
    block_on(async {
        let log = PartitionLog::open(dir, LogConfig::default())
            .await
            .expect("open the offsets partition");
        let open_before = log.open_transactions();
        assert!(
            open_before.iter().any(|(id, _)| *id == pid),
            "the coordinator wrote a transactional batch of {pid}: {open_before:?}"
        );
        let epoch_now = log.latest_epoch().unwrap_or(0);
        log.append_txn_marker(pid, epoch, 0, !commit, epoch_now, now_ms())
            .await
            .expect("marker appended");
        assert!(log.open_transactions().iter().all(|(id, _)| *id != pid));
        log.close().await.expect("close");
    });
}

#[test]
fn a_restart_replays_txn_offsets_with_their_markers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let mut broker = Broker::start_in(&dir, &[], &[]);
    let mut c = broker.client();
    create_topic(&mut c, "in", 1);
    let committed = producer_id(&mut c);
    let aborted = producer_id(&mut c);
    let open = producer_id(&mut c);
    let deadline = std::time::Instant::now() + TIMEOUT;
    for (group, producer, offset) in [
        ("g-commit", committed, 11),
        ("g-abort", aborted, 22),
        ("g-open", open, 33),
    ] {
        // A plain commit first: the transactional one must win over it at COMMIT only.
        loop {
            let r: OffsetCommitResponse = c.request(
                8,
                &OffsetCommitRequest::default()
                    .with_group_id(GroupId(sb(group)))
                    .with_generation_id_or_member_epoch(-1)
                    .with_topics(vec![
                        offset_commit_request::OffsetCommitRequestTopic::default()
                            .with_name(tn("in"))
                            .with_partitions(vec![
                                offset_commit_request::OffsetCommitRequestPartition::default()
                                    .with_partition_index(0)
                                    .with_committed_offset(5),
                            ]),
                    ]),
            );
            let code = r.topics[0].partitions[0].error_code;
            if code == NONE {
                break;
            }
            assert_eq!(code, COORDINATOR_LOAD_IN_PROGRESS);
            assert!(std::time::Instant::now() < deadline, "offsets never loaded");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(
            txn_commit(&mut c, 3, group, producer, "", "in", 0, offset),
            NONE
        );
        assert_eq!(fetch(&mut c, group, "in", 0, false), (NONE, NONE, 5));
    }
    drop(c);
    broker.stop_with(Signal::SIGTERM);

    append_marker(&dir, "g-commit", committed, true);
    append_marker(&dir, "g-abort", aborted, false);

    let broker = Broker::start_in(&dir, &[], &[]);
    let mut c = broker.client();
    assert_eq!(
        fetch_loaded(&mut c, "g-commit", "in", 0, true),
        (NONE, NONE, 11),
        "{}",
        broker.log()
    );
    assert_eq!(
        fetch_loaded(&mut c, "g-abort", "in", 0, true),
        (NONE, NONE, 5)
    );
    assert_eq!(
        fetch_loaded(&mut c, "g-open", "in", 0, true),
        (NONE, UNSTABLE_OFFSET_COMMIT, -1)
    );
    assert_eq!(
        fetch_loaded(&mut c, "g-open", "in", 0, false),
        (NONE, NONE, 5)
    );
}
