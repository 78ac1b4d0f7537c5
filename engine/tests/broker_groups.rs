//! Consumer groups over the raw Kafka protocol against the real `sluice` binary:
//! FindCoordinator, the JoinGroup member-id round trip, SyncGroup, Heartbeat, OffsetCommit /
//! OffsetFetch (single and multi-group), LeaveGroup, List/Describe/DeleteGroups, OffsetDelete,
//! the error codes of bad commits, `__consumer_offsets` as an internal topic, and committed
//! offsets surviving a kill -9.

#[path = "broker_support.rs"]
mod support;

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use nix::sys::signal::Signal;
use sluice::group::assignor::ConsumerSubscription;
use support::*;

const NONE: i16 = 0;
const INVALID_TOPIC_EXCEPTION: i16 = 17;
const ILLEGAL_GENERATION: i16 = 22;
const UNKNOWN_MEMBER_ID: i16 = 25;
const REBALANCE_IN_PROGRESS: i16 = 27;
const NON_EMPTY_GROUP: i16 = 68;
const GROUP_ID_NOT_FOUND: i16 = 69;
const MEMBER_ID_REQUIRED: i16 = 79;

const JOIN_V: i16 = 7;
const SYNC_V: i16 = 5;
const HB_V: i16 = 4;
const COMMIT_V: i16 = 8;
const FETCH_V: i16 = 7;

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn gid(s: &str) -> GroupId {
    GroupId(sb(s))
}

fn tn(s: &str) -> TopicName {
    TopicName(sb(s))
}

/// Starts a broker whose groups rebalance without the initial delay.
fn start() -> Broker {
    let broker = Broker::start(&["--set", "group.initial.rebalance.delay.ms=0"]);
    wait_loaded(&broker);
    broker
}

/// Waits (bounded) until every shard replayed `__consumer_offsets`: ListGroups answers
/// COORDINATOR_LOAD_IN_PROGRESS (14) until then.
fn wait_loaded(broker: &Broker) {
    let mut c = broker.client();
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let l: ListGroupsResponse = c.request(4, &ListGroupsRequest::default());
        if l.error_code == NONE {
            return;
        }
        assert_eq!(l.error_code, 14, "ListGroups during start-up");
        assert!(std::time::Instant::now() < deadline, "offsets never loaded");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
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

fn join_request(group: &str, member: &str, topics: &[&str]) -> JoinGroupRequest {
    JoinGroupRequest::default()
        .with_group_id(gid(group))
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(10_000)
        .with_member_id(sb(member))
        .with_protocol_type(sb("consumer"))
        .with_protocols(vec![join_group_request::JoinGroupRequestProtocol::default(
        )
        .with_name(sb("range"))
        .with_metadata(ConsumerSubscription::new(topics.iter().copied()).encode(0))])
}

/// Joins a new dynamic member: the MEMBER_ID_REQUIRED round trip, then the real join (sent,
/// not awaited: the answer comes with the rebalance). Returns (member id, correlation id).
fn join_new(c: &mut Client, group: &str, topics: &[&str]) -> (String, i32) {
    let first: JoinGroupResponse = c.request(JOIN_V, &join_request(group, "", topics));
    assert_eq!(first.error_code, MEMBER_ID_REQUIRED, "first join");
    assert_eq!(first.generation_id, -1);
    let member = first.member_id.to_string();
    assert!(member.starts_with("sluice-test-"), "member id {member}");
    let cid = c.send(JOIN_V, &join_request(group, &member, topics));
    (member, cid)
}

fn sync(
    c: &mut Client,
    group: &str,
    generation: i32,
    member: &str,
    assignments: &[(&str, &[u8])],
) -> SyncGroupResponse {
    let req = SyncGroupRequest::default()
        .with_group_id(gid(group))
        .with_generation_id(generation)
        .with_member_id(sb(member))
        .with_protocol_type(Some(sb("consumer")))
        .with_protocol_name(Some(sb("range")))
        .with_assignments(
            assignments
                .iter()
                .map(|(m, a)| {
                    sync_group_request::SyncGroupRequestAssignment::default()
                        .with_member_id(sb(m))
                        .with_assignment(Bytes::copy_from_slice(a))
                })
                .collect(),
        );
    c.request(SYNC_V, &req)
}

fn heartbeat(c: &mut Client, group: &str, generation: i32, member: &str) -> i16 {
    let r: HeartbeatResponse = c.request(
        HB_V,
        &HeartbeatRequest::default()
            .with_group_id(gid(group))
            .with_generation_id(generation)
            .with_member_id(sb(member)),
    );
    r.error_code
}

/// Commits `offset` for topic-partition `(topic, p)`; returns the partition's error code.
fn commit(
    c: &mut Client,
    group: &str,
    generation: i32,
    member: &str,
    topic: &str,
    p: i32,
    offset: i64,
) -> i16 {
    let req = OffsetCommitRequest::default()
        .with_group_id(gid(group))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(sb(member))
        .with_topics(vec![
            offset_commit_request::OffsetCommitRequestTopic::default()
                .with_name(tn(topic))
                .with_partitions(vec![
                    offset_commit_request::OffsetCommitRequestPartition::default()
                        .with_partition_index(p)
                        .with_committed_offset(offset),
                ]),
        ]);
    let r: OffsetCommitResponse = c.request(COMMIT_V, &req);
    assert_eq!(r.topics.len(), 1);
    assert_eq!(r.topics[0].partitions.len(), 1);
    r.topics[0].partitions[0].error_code
}

/// The committed offset of `(topic, p)` for `group` (-1 if none), via OffsetFetch v7.
fn fetch_offset(c: &mut Client, group: &str, topic: &str, p: i32) -> i64 {
    let req = OffsetFetchRequest::default()
        .with_group_id(gid(group))
        .with_topics(Some(vec![
            offset_fetch_request::OffsetFetchRequestTopic::default()
                .with_name(tn(topic))
                .with_partition_indexes(vec![p]),
        ]));
    let r: OffsetFetchResponse = c.request(FETCH_V, &req);
    assert_eq!(r.error_code, NONE, "OffsetFetch group error");
    let part = &r.topics[0].partitions[0];
    assert_eq!(part.error_code, NONE);
    part.committed_offset
}

fn describe(c: &mut Client, groups: &[&str]) -> DescribeGroupsResponse {
    c.request(
        5,
        &DescribeGroupsRequest::default().with_groups(groups.iter().map(|g| gid(g)).collect()),
    )
}

/// Waits (bounded) until DescribeGroups reports `state` for `group`.
fn wait_state(c: &mut Client, group: &str, state: &str) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let d = describe(c, &[group]);
        if d.groups[0].group_state.as_str() == state {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{group} never reached {state}: {d:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn apis_are_advertised_and_offsets_topic_is_internal() {
    let broker = start();
    let mut c = broker.client();
    let versions: ApiVersionsResponse = c.request(3, &ApiVersionsRequest::default());
    let range = |key: ApiKey| {
        versions
            .api_keys
            .iter()
            .find(|k| k.api_key == key as i16)
            .map(|k| (k.min_version, k.max_version))
    };
    assert_eq!(range(ApiKey::JoinGroup), Some((0, 9)));
    assert_eq!(range(ApiKey::SyncGroup), Some((0, 5)));
    assert_eq!(range(ApiKey::Heartbeat), Some((0, 4)));
    assert_eq!(range(ApiKey::LeaveGroup), Some((0, 5)));
    assert_eq!(range(ApiKey::OffsetCommit), Some((2, 9)));
    assert_eq!(range(ApiKey::OffsetFetch), Some((1, 9)));
    assert_eq!(range(ApiKey::ListGroups), Some((0, 5)));
    assert_eq!(range(ApiKey::DescribeGroups), Some((0, 6)));
    assert_eq!(range(ApiKey::DeleteGroups), Some((0, 2)));
    assert_eq!(range(ApiKey::OffsetDelete), Some((0, 0)));

    // Listed as internal, with the default 50 partitions.
    let md: MetadataResponse = c.request(
        12,
        &MetadataRequest::default()
            .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
            )
            .with_name(Some(tn("__consumer_offsets")))])),
    );
    assert_eq!(md.topics[0].error_code, NONE);
    assert!(md.topics[0].is_internal);
    assert_eq!(md.topics[0].partitions.len(), 50);

    // Compacted, as Kafka creates it.
    let r: DescribeConfigsResponse = c.request(
        4,
        &DescribeConfigsRequest::default().with_resources(vec![
            describe_configs_request::DescribeConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(sb("__consumer_offsets"))
                .with_configuration_keys(Some(vec![sb("cleanup.policy"), sb("segment.bytes")])),
        ]),
    );
    let configs: Vec<(String, String)> = r.results[0]
        .configs
        .iter()
        .map(|c| {
            let v = c.value.as_ref().map(|v| v.to_string()).unwrap_or_default();
            (c.name.to_string(), v)
        })
        .collect();
    assert!(
        configs.contains(&("cleanup.policy".into(), "compact".into())),
        "{configs:?}"
    );
    assert!(
        configs.contains(&("segment.bytes".into(), "104857600".into())),
        "{configs:?}"
    );

    // Clients may neither write it nor delete it.
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![produce_request::TopicProduceData::default()
            .with_name(tn("__consumer_offsets"))
            .with_partition_data(vec![
                produce_request::PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(batch("x", 1, 0))),
            ])]);
    let r: ProduceResponse = c.request(9, &req);
    assert_eq!(
        r.responses[0].partition_responses[0].error_code,
        INVALID_TOPIC_EXCEPTION
    );
    let r: DeleteTopicsResponse = c.request(
        5,
        &DeleteTopicsRequest::default()
            .with_topic_names(vec![tn("__consumer_offsets")])
            .with_timeout_ms(5000),
    );
    assert_eq!(r.responses[0].error_code, INVALID_TOPIC_EXCEPTION);
}

#[test]
fn find_coordinator_names_this_broker_for_groups() {
    let broker = start();
    let mut c = broker.client();
    for version in [0i16, 1, 3] {
        let r: FindCoordinatorResponse = c.request(
            version,
            &FindCoordinatorRequest::default().with_key(sb("g")),
        );
        assert_eq!(r.error_code, NONE, "v{version}");
        assert_eq!(r.node_id.0, 1);
        assert_eq!(r.host.as_str(), "127.0.0.1");
        assert_eq!(r.port, i32::from(broker.addr.port()));
    }
    let r: FindCoordinatorResponse = c.request(
        4,
        &FindCoordinatorRequest::default().with_coordinator_keys(vec![sb("g1"), sb("g2")]),
    );
    let got: Vec<(String, i16, i32)> = r
        .coordinators
        .iter()
        .map(|x| (x.key.to_string(), x.error_code, x.node_id.0))
        .collect();
    assert_eq!(got, vec![("g1".into(), 0, 1), ("g2".into(), 0, 1)]);
    // Transactions are out of scope: no coordinator for them.
    let r: FindCoordinatorResponse = c.request(
        4,
        &FindCoordinatorRequest::default()
            .with_key_type(1)
            .with_coordinator_keys(vec![sb("txn")]),
    );
    assert_eq!(r.coordinators[0].error_code, 15);
}

#[test]
fn group_lifecycle_and_commit_errors() {
    let broker = start();
    let mut a = broker.client();
    let mut b = broker.client();
    create_topic(&mut a, "gt", 2);
    let g = "lifecycle-group";

    // Member A alone: generation 1, A leads.
    let (ma, cid) = join_new(&mut a, g, &["gt"]);
    let ja: JoinGroupResponse = a.recv::<JoinGroupRequest>(JOIN_V, cid);
    assert_eq!(ja.error_code, NONE);
    assert_eq!(ja.generation_id, 1);
    assert_eq!(ja.leader.as_str(), ma);
    assert_eq!(ja.member_id.as_str(), ma);
    assert_eq!(ja.protocol_name.as_ref().map(|p| p.as_str()), Some("range"));
    assert_eq!(ja.members.len(), 1);
    let r = sync(&mut a, g, 1, &ma, &[(&ma, b"assignment-a")]);
    assert_eq!(r.error_code, NONE);
    assert_eq!(&r.assignment[..], b"assignment-a");
    assert_eq!(heartbeat(&mut a, g, 1, &ma), NONE);

    // Commits: accepted from the current generation, refused otherwise.
    assert_eq!(commit(&mut a, g, 1, &ma, "gt", 0, 42), NONE);
    assert_eq!(fetch_offset(&mut a, g, "gt", 0), 42);
    assert_eq!(fetch_offset(&mut a, g, "gt", 1), -1);
    assert_eq!(commit(&mut a, g, 2, &ma, "gt", 0, 1), ILLEGAL_GENERATION);
    assert_eq!(
        commit(&mut a, g, 1, "stranger", "gt", 0, 1),
        UNKNOWN_MEMBER_ID
    );
    assert_eq!(
        commit(&mut a, "no-such-group", 1, "m", "gt", 0, 1),
        ILLEGAL_GENERATION
    );
    assert_eq!(commit(&mut a, g, 1, &ma, "no-such-topic", 0, 1), 3);
    assert_eq!(heartbeat(&mut a, g, 1, "stranger"), UNKNOWN_MEMBER_ID);
    assert_eq!(
        fetch_offset(&mut a, g, "gt", 0),
        42,
        "refused commits wrote"
    );

    // Member B arrives: the group prepares a rebalance; A's heartbeats are told to rejoin,
    // its commits are still accepted (so it can commit while revoking, as in Kafka).
    let (mb, cid_b) = join_new(&mut b, g, &["gt"]);
    wait_state(&mut a, g, "PreparingRebalance");
    assert_eq!(heartbeat(&mut a, g, 1, &ma), REBALANCE_IN_PROGRESS);
    assert_eq!(commit(&mut a, g, 1, &ma, "gt", 0, 43), NONE);
    let cid_a = a.send(JOIN_V, &join_request(g, &ma, &["gt"]));
    let ja: JoinGroupResponse = a.recv::<JoinGroupRequest>(JOIN_V, cid_a);
    let jb: JoinGroupResponse = b.recv::<JoinGroupRequest>(JOIN_V, cid_b);
    assert_eq!((ja.error_code, jb.error_code), (NONE, NONE));
    assert_eq!((ja.generation_id, jb.generation_id), (2, 2));
    assert_eq!(ja.leader.as_str(), ma, "the leader stays the leader");
    assert_eq!(ja.members.len(), 2, "the leader sees every member");
    assert!(jb.members.is_empty(), "followers see no members");

    // The follower's SyncGroup waits for the leader's assignment.
    let cid_sync_b = b.send(
        SYNC_V,
        &SyncGroupRequest::default()
            .with_group_id(gid(g))
            .with_generation_id(2)
            .with_member_id(sb(&mb))
            .with_protocol_type(Some(sb("consumer")))
            .with_protocol_name(Some(sb("range"))),
    );
    assert_eq!(heartbeat(&mut a, g, 2, &ma), NONE, "CompletingRebalance");
    assert_eq!(
        commit(&mut a, g, 2, &ma, "gt", 0, 44),
        REBALANCE_IN_PROGRESS,
        "no commits until the assignment is out"
    );
    let ra = sync(&mut a, g, 2, &ma, &[(&ma, b"p0"), (&mb, b"p1")]);
    let rb: SyncGroupResponse = b.recv::<SyncGroupRequest>(SYNC_V, cid_sync_b);
    assert_eq!((ra.error_code, rb.error_code), (NONE, NONE));
    assert_eq!(
        (&ra.assignment[..], &rb.assignment[..]),
        (&b"p0"[..], &b"p1"[..])
    );
    assert_eq!(commit(&mut b, g, 2, &mb, "gt", 1, 7), NONE);
    assert_eq!(commit(&mut a, g, 1, &ma, "gt", 0, 1), ILLEGAL_GENERATION);

    // DescribeGroups and ListGroups see the stable group with both members.
    let d = describe(&mut a, &[g, "ghost-group"]);
    assert_eq!(d.groups.len(), 2);
    assert_eq!(d.groups[0].group_state.as_str(), "Stable");
    assert_eq!(d.groups[0].protocol_type.as_str(), "consumer");
    assert_eq!(d.groups[0].protocol_data.as_str(), "range");
    let mut members: Vec<String> = d.groups[0]
        .members
        .iter()
        .map(|m| m.member_id.to_string())
        .collect();
    members.sort();
    let mut want = vec![ma.clone(), mb.clone()];
    want.sort();
    assert_eq!(members, want);
    assert!(d.groups[0]
        .members
        .iter()
        .all(|m| m.client_host.as_str() == "/127.0.0.1"));
    assert_eq!(d.groups[1].group_state.as_str(), "Dead");
    // COORDINATOR_LOAD_IN_PROGRESS (14) while a shard still replays its partitions.
    let deadline = std::time::Instant::now() + TIMEOUT;
    let l: ListGroupsResponse = loop {
        let l: ListGroupsResponse = a.request(4, &ListGroupsRequest::default());
        if l.error_code != 14 || std::time::Instant::now() > deadline {
            break l;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(l.error_code, NONE);
    let listed: Vec<(String, String)> = l
        .groups
        .iter()
        .map(|x| (x.group_id.to_string(), x.group_state.to_string()))
        .collect();
    assert!(
        listed.contains(&(g.to_string(), "Stable".to_string())),
        "{listed:?}"
    );

    // A group with members cannot be deleted.
    let r: DeleteGroupsResponse = a.request(
        2,
        &DeleteGroupsRequest::default().with_groups_names(vec![gid(g)]),
    );
    assert_eq!(r.results[0].error_code, NON_EMPTY_GROUP);

    // Both leave in one batched LeaveGroup: the group is Empty, its offsets stay.
    let r: LeaveGroupResponse = a.request(
        4,
        &LeaveGroupRequest::default()
            .with_group_id(gid(g))
            .with_members(vec![
                leave_group_request::MemberIdentity::default().with_member_id(sb(&ma)),
                leave_group_request::MemberIdentity::default().with_member_id(sb(&mb)),
            ]),
    );
    assert_eq!(r.error_code, NONE);
    assert!(r.members.iter().all(|m| m.error_code == NONE), "{r:?}");
    let d = describe(&mut a, &[g]);
    assert_eq!(d.groups[0].group_state.as_str(), "Empty");
    assert!(d.groups[0].members.is_empty());
    assert_eq!(fetch_offset(&mut a, g, "gt", 0), 43);
    assert_eq!(fetch_offset(&mut a, g, "gt", 1), 7);

    // OffsetDelete removes one partition's offset of the empty group.
    let r: OffsetDeleteResponse = a.request(
        0,
        &OffsetDeleteRequest::default()
            .with_group_id(gid(g))
            .with_topics(vec![
                offset_delete_request::OffsetDeleteRequestTopic::default()
                    .with_name(tn("gt"))
                    .with_partitions(vec![
                        offset_delete_request::OffsetDeleteRequestPartition::default()
                            .with_partition_index(1),
                    ]),
            ]),
    );
    assert_eq!(r.error_code, NONE);
    assert_eq!(r.topics[0].partitions[0].error_code, NONE);
    assert_eq!(fetch_offset(&mut a, g, "gt", 1), -1);
    assert_eq!(fetch_offset(&mut a, g, "gt", 0), 43);

    // Deleting the empty group removes it and its offsets.
    let r: DeleteGroupsResponse = a.request(
        2,
        &DeleteGroupsRequest::default().with_groups_names(vec![gid(g), gid("ghost-group")]),
    );
    let codes: Vec<i16> = r.results.iter().map(|x| x.error_code).collect();
    assert_eq!(codes, vec![NONE, GROUP_ID_NOT_FOUND]);
    assert_eq!(fetch_offset(&mut a, g, "gt", 0), -1);
    let d: DescribeGroupsResponse = a.request(
        6,
        &DescribeGroupsRequest::default().with_groups(vec![gid(g)]),
    );
    assert_eq!(d.groups[0].error_code, GROUP_ID_NOT_FOUND);
}

#[test]
fn offsets_of_many_groups_survive_kill_9() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let flags = ["--set", "group.initial.rebalance.delay.ms=0"];
    let mut broker = Broker::start_in(&dir, &flags, &[]);
    wait_loaded(&broker);
    let mut c = broker.client();
    create_topic(&mut c, "kt", 3);
    // Simple (assign-style) commits for many groups, spread over offsets partitions and shards.
    let groups: Vec<String> = (0..20).map(|i| format!("restart-group-{i}")).collect();
    for (i, g) in groups.iter().enumerate() {
        for p in 0..3 {
            let offset = (i as i64) * 100 + i64::from(p);
            let code = commit(&mut c, g, -1, "", "kt", p, offset);
            assert_eq!(code, NONE, "{g} {p}: {}", broker.log());
        }
        // Overwrite once so replay must keep the latest.
        assert_eq!(
            commit(&mut c, g, -1, "", "kt", 0, (i as i64) * 100 + 50),
            NONE
        );
    }
    // A managed group whose metadata must come back too.
    let (m, cid) = join_new(&mut c, "restart-managed", &["kt"]);
    let j: JoinGroupResponse = c.recv::<JoinGroupRequest>(JOIN_V, cid);
    assert_eq!(j.error_code, NONE);
    assert_eq!(
        sync(&mut c, "restart-managed", 1, &m, &[(&m, b"x")]).error_code,
        NONE
    );
    assert_eq!(commit(&mut c, "restart-managed", 1, &m, "kt", 2, 99), NONE);
    drop(c);

    broker.stop_with(Signal::SIGKILL);
    let broker = Broker::start_in(&dir, &flags, &[]);
    let mut c = broker.client();
    // Ask right away: groups on partitions still replaying answer LOAD_IN_PROGRESS and the
    // request is retried below; once loaded, every group is back.

    // OffsetFetch v8 asks for every group at once: they live on different shards.
    let req = OffsetFetchRequest::default().with_groups(
        groups
            .iter()
            .map(|g| {
                offset_fetch_request::OffsetFetchRequestGroup::default()
                    .with_group_id(gid(g))
                    .with_topics(Some(vec![
                        offset_fetch_request::OffsetFetchRequestTopics::default()
                            .with_name(tn("kt"))
                            .with_partition_indexes(vec![0, 1, 2]),
                    ]))
            })
            .collect(),
    );
    let deadline = std::time::Instant::now() + TIMEOUT;
    let r: OffsetFetchResponse = loop {
        let r: OffsetFetchResponse = c.request(8, &req);
        // COORDINATOR_LOAD_IN_PROGRESS (14) while the partitions replay.
        if r.groups.iter().all(|g| g.error_code != 14) || std::time::Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(r.groups.len(), groups.len());
    let codes: Vec<i16> = r.groups.iter().map(|g| g.error_code).collect();
    assert!(codes.iter().all(|c| *c == NONE), "{codes:?}");
    for (i, (g, got)) in groups.iter().zip(&r.groups).enumerate() {
        assert_eq!(got.group_id.as_str(), g, "groups answered in request order");
        assert_eq!(got.error_code, NONE);
        let mut offsets: Vec<(i32, i64)> = got.topics[0]
            .partitions
            .iter()
            .map(|p| (p.partition_index, p.committed_offset))
            .collect();
        offsets.sort();
        let base = (i as i64) * 100;
        assert_eq!(
            offsets,
            vec![(0, base + 50), (1, base + 1), (2, base + 2)],
            "{g}"
        );
    }
    wait_loaded(&broker);
    assert_eq!(fetch_offset(&mut c, "restart-managed", "kt", 2), 99);
    // The managed group came back Stable with its member, generation and protocol.
    let d = describe(&mut c, &["restart-managed"]);
    assert_eq!(d.groups[0].group_state.as_str(), "Stable");
    assert_eq!(d.groups[0].members.len(), 1);
    assert_eq!(d.groups[0].members[0].member_id.as_str(), m);
    assert_eq!(heartbeat(&mut c, "restart-managed", 1, &m), NONE);
}

#[test]
fn bad_group_setting_stops_the_broker_naming_the_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .args(["--set", "offsets.topic.num.partitions=0"])
        .output()
        .expect("run sluice");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("offsets.topic.num.partitions"), "{stderr}");
}

#[test]
fn shutdown_answers_waiting_joins_not_coordinator() {
    let mut broker = start();
    let mut a = broker.client();
    let mut b = broker.client();
    create_topic(&mut a, "st", 1);
    let g = "shutdown-group";
    let (ma, cid) = join_new(&mut a, g, &["st"]);
    let ja: JoinGroupResponse = a.recv::<JoinGroupRequest>(JOIN_V, cid);
    assert_eq!(ja.error_code, NONE);
    assert_eq!(sync(&mut a, g, 1, &ma, &[(&ma, b"x")]).error_code, NONE);
    // B waits in JoinGroup for A, which never rejoins (10 s rebalance timeout).
    let (_mb, cid_b) = join_new(&mut b, g, &["st"]);
    wait_state(&mut a, g, "PreparingRebalance");
    let stopped = std::time::Instant::now();
    let status = broker.stop_with(Signal::SIGTERM);
    assert!(status.success(), "{status}");
    let jb: JoinGroupResponse = b.recv::<JoinGroupRequest>(JOIN_V, cid_b);
    assert_eq!(
        jb.error_code, 16,
        "NOT_COORDINATOR: look the coordinator up again"
    );
    assert!(
        stopped.elapsed() < std::time::Duration::from_secs(8),
        "the waiting JoinGroup held the shutdown for {:?}",
        stopped.elapsed()
    );
}
