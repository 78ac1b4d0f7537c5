//! Tests of the coordinator state machine: one per path and error code, a restart from the
//! replayed log, and a property test over random schedules.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use proptest::prelude::*;

use super::api::*;
use super::assignor::{ConsumerAssignment, ConsumerSubscription};
use super::coordinator::*;
use super::records::{OffsetsKey, DEFAULT_OFFSETS_PARTITIONS};

const SESSION: i32 = 10_000;
const REBALANCE: i32 = 30_000;

struct Harness {
    c: GroupCoordinator,
    now: i64,
    next_token: u64,
    responses: HashMap<u64, GroupResponse>,
    /// Appends waiting for completion when `auto_complete` is off (with the producer of a
    /// transactional batch).
    held: Vec<(AppendId, i32, Vec<OffsetsRecord>, Option<i64>)>,
    /// Records persisted so far, per partition, in order.
    log: Vec<(i32, OffsetsRecord)>,
    /// For each record of `log`, the producer of its transactional batch (None: plain).
    log_producer: Vec<Option<i64>>,
    /// Transaction markers: (records of `log` before it, partition, producer, commit).
    markers: Vec<(usize, i32, i64, bool)>,
    auto_complete: bool,
    fail_next_append: Option<AppendError>,
}

impl Harness {
    fn new() -> Self {
        Self::with_config(CoordinatorConfig {
            initial_rebalance_delay_ms: 0,
            ..Default::default()
        })
    }

    /// The broker restarts: appends not yet acknowledged are lost, waiting requests die with
    /// their connections, and a new coordinator replays the log.
    fn restart(&mut self) {
        self.held.clear();
        self.responses.clear();
        self.fail_next_append = None;
        let mut c = GroupCoordinator::new(self.c.config().clone());
        // Per partition, in log order: a record (with its batch's producer) or a marker.
        type Entry<'a> = (Option<&'a OffsetsRecord>, Option<i64>, bool);
        let mut by_partition: BTreeMap<i32, Vec<Entry<'_>>> = BTreeMap::new();
        let mut markers = self.markers.iter().peekable();
        for (i, (p, r)) in self.log.iter().enumerate() {
            while let Some((_, mp, pid, commit)) = markers.next_if(|m| m.0 <= i) {
                by_partition
                    .entry(*mp)
                    .or_default()
                    .push((None, Some(*pid), *commit));
            }
            let producer = self.log_producer.get(i).copied().flatten();
            by_partition
                .entry(*p)
                .or_default()
                .push((Some(r), producer, false));
        }
        for (_, mp, pid, commit) in markers {
            by_partition
                .entry(*mp)
                .or_default()
                .push((None, Some(*pid), *commit));
        }
        for p in 0..DEFAULT_OFFSETS_PARTITIONS {
            c.begin_loading(p);
            for (r, producer, commit) in by_partition.get(&p).into_iter().flatten() {
                match (r, producer) {
                    (Some(r), None) => c.load(p, &r.key, r.value.as_deref()).expect("log replays"),
                    (Some(r), Some(pid)) => c
                        .load_txn(p, *pid, &r.key, r.value.as_deref())
                        .expect("log replays"),
                    (None, Some(pid)) => c.load_txn_marker(p, *pid, *commit),
                    (None, None) => unreachable!("a marker has a producer"),
                }
            }
            c.finish_loading(p, self.now);
        }
        self.c = c;
    }

    fn with_config(config: CoordinatorConfig) -> Self {
        let mut c = GroupCoordinator::new(config);
        for p in 0..DEFAULT_OFFSETS_PARTITIONS {
            c.begin_loading(p);
            c.finish_loading(p, 0);
        }
        Harness {
            c,
            now: 0,
            next_token: 1,
            responses: HashMap::new(),
            held: Vec::new(),
            log: Vec::new(),
            log_producer: Vec::new(),
            markers: Vec::new(),
            auto_complete: true,
            fail_next_append: None,
        }
    }

    fn process(&mut self, actions: Vec<CoordinatorAction>) {
        for a in actions {
            match a {
                CoordinatorAction::Respond { token, response } => {
                    assert!(
                        self.responses.insert(token, response).is_none(),
                        "token {token} answered twice"
                    );
                }
                CoordinatorAction::Append {
                    append_id,
                    partition,
                    records,
                    producer,
                } => {
                    let pid = producer.map(|p| p.producer_id);
                    if self.auto_complete {
                        self.complete(append_id, partition, records, pid);
                    } else {
                        self.held.push((append_id, partition, records, pid));
                    }
                }
            }
        }
    }

    fn complete(
        &mut self,
        append_id: AppendId,
        partition: i32,
        records: Vec<OffsetsRecord>,
        producer: Option<i64>,
    ) {
        let result = match self.fail_next_append.take() {
            Some(e) => Err(e),
            None => {
                self.log_producer
                    .extend(std::iter::repeat_n(producer, records.len()));
                self.log.extend(records.into_iter().map(|r| (partition, r)));
                Ok(())
            }
        };
        let actions = self.c.on_append_complete(append_id, self.now, result);
        self.process(actions);
    }

    fn release_held(&mut self) {
        for (id, p, r, pid) in std::mem::take(&mut self.held) {
            self.complete(id, p, r, pid);
        }
    }

    fn send(&mut self, req: GroupRequest) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        let actions = self.c.handle(token, self.now, req, &AnyTopic);
        self.process(actions);
        token
    }

    fn send_with(&mut self, req: GroupRequest, catalog: &dyn TopicCatalog) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        let actions = self.c.handle(token, self.now, req, catalog);
        self.process(actions);
        token
    }

    fn advance(&mut self, ms: i64) {
        self.now += ms;
        let actions = self.c.tick(self.now);
        self.process(actions);
    }

    fn take(&mut self, token: u64) -> Option<GroupResponse> {
        self.responses.remove(&token)
    }

    fn join_result(&mut self, token: u64) -> JoinGroupResult {
        match self.take(token) {
            Some(GroupResponse::Join(r)) => r,
            other => panic!("expected a JoinGroup response for {token}, got {other:?}"),
        }
    }

    fn sync_result(&mut self, token: u64) -> SyncGroupResult {
        match self.take(token) {
            Some(GroupResponse::Sync(r)) => r,
            other => panic!("expected a SyncGroup response for {token}, got {other:?}"),
        }
    }

    fn join(
        &mut self,
        group: &str,
        member: &str,
        instance: Option<&str>,
        protocols: &[&str],
    ) -> u64 {
        self.send(GroupRequest::Join(join_req(
            group, member, instance, protocols,
        )))
    }

    /// A new dynamic member through the MEMBER_ID_REQUIRED round trip; returns the token of
    /// the second JoinGroup and the member id.
    fn join_new(&mut self, group: &str) -> (u64, String) {
        let t = self.join(group, "", None, &["range"]);
        let r = self.join_result(t);
        assert_eq!(r.error, codes::MEMBER_ID_REQUIRED);
        assert!(!r.member_id.is_empty());
        let t2 = self.join(group, &r.member_id, None, &["range"]);
        (t2, r.member_id)
    }

    fn sync(
        &mut self,
        group: &str,
        member: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> u64 {
        self.send(GroupRequest::Sync(SyncGroup {
            group_id: group.into(),
            generation_id: generation,
            member_id: member.into(),
            group_instance_id: None,
            protocol_type: None,
            protocol_name: None,
            assignments,
        }))
    }

    fn heartbeat(&mut self, group: &str, member: &str, generation: i32) -> ErrorCode {
        let t = self.send(GroupRequest::Heartbeat(Heartbeat {
            group_id: group.into(),
            generation_id: generation,
            member_id: member.into(),
            group_instance_id: None,
        }));
        match self.take(t) {
            Some(GroupResponse::Heartbeat(e)) => e,
            other => panic!("expected heartbeat response, got {other:?}"),
        }
    }

    fn commit(
        &mut self,
        group: &str,
        member: &str,
        generation: i32,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> ErrorCode {
        let t = self.send(GroupRequest::OffsetCommit(commit_req(
            group, member, generation, topic, partition, offset,
        )));
        match self.take(t) {
            Some(GroupResponse::OffsetCommit(r)) => {
                assert_eq!(r.len(), 1);
                r[0].2
            }
            other => panic!("expected commit response, got {other:?}"),
        }
    }

    fn fetch(&mut self, group: &str, topic: &str, partition: i32) -> (ErrorCode, i64) {
        let t = self.send(GroupRequest::OffsetFetch(OffsetFetch {
            groups: vec![OffsetFetchGroup {
                group_id: group.into(),
                topics: Some(vec![(topic.into(), vec![partition])]),
            }],
            require_stable: false,
        }));
        match self.take(t) {
            Some(GroupResponse::OffsetFetch(r)) => {
                (r[0].error, r[0].offsets.first().map_or(-2, |o| o.offset))
            }
            other => panic!("expected fetch response, got {other:?}"),
        }
    }

    /// One member forms a Stable group; returns its member id and the generation.
    fn stable_single(&mut self, group: &str) -> (String, i32) {
        let (t, id) = self.join_new(group);
        let r = self.join_result(t);
        assert_eq!(r.error, codes::NONE);
        let s = self.sync(
            group,
            &id,
            r.generation_id,
            vec![(id.clone(), Bytes::from_static(b"A"))],
        );
        assert_eq!(self.sync_result(s).error, codes::NONE);
        assert_eq!(self.c.group_state(group), Some(GroupState::Stable));
        (id, r.generation_id)
    }
}

fn join_req(group: &str, member: &str, instance: Option<&str>, protocols: &[&str]) -> JoinGroup {
    JoinGroup {
        group_id: group.into(),
        session_timeout_ms: SESSION,
        rebalance_timeout_ms: REBALANCE,
        member_id: member.into(),
        group_instance_id: instance.map(Into::into),
        protocol_type: "consumer".into(),
        protocols: protocols
            .iter()
            .map(|p| JoinProtocol {
                name: (*p).into(),
                metadata: ConsumerSubscription::new(["t"]).encode(3),
            })
            .collect(),
        require_known_member_id: true,
        client_id: "client".into(),
        client_host: "/127.0.0.1".into(),
        reason: None,
    }
}

fn commit_req(
    group: &str,
    member: &str,
    generation: i32,
    topic: &str,
    partition: i32,
    offset: i64,
) -> OffsetCommit {
    OffsetCommit {
        group_id: group.into(),
        generation_id: generation,
        member_id: member.into(),
        group_instance_id: None,
        retention_time_ms: -1,
        partitions: vec![PartitionCommit {
            topic: topic.into(),
            partition,
            offset,
            leader_epoch: -1,
            metadata: None,
        }],
    }
}

#[test]
fn member_id_required_round_trip_then_single_member_generation() {
    let mut h = Harness::new();
    let (t, id) = h.join_new("g");
    assert!(
        id.starts_with("client-"),
        "member id is client id + uuid: {id}"
    );
    let r = h.join_result(t);
    assert_eq!(r.error, codes::NONE);
    assert_eq!(r.generation_id, 1);
    assert_eq!(r.leader, id);
    assert_eq!(r.member_id, id);
    assert_eq!(r.protocol_name.as_deref(), Some("range"));
    assert_eq!(r.members.len(), 1, "the leader receives the member list");
    assert_eq!(h.c.group_state("g"), Some(GroupState::CompletingRebalance));
    // Heartbeats are accepted while the leader computes the assignment.
    assert_eq!(h.heartbeat("g", &id, 1), codes::NONE);
    let s = h.sync("g", &id, 1, vec![(id.clone(), Bytes::from_static(b"asg"))]);
    let sr = h.sync_result(s);
    assert_eq!(sr.error, codes::NONE);
    assert_eq!(&sr.assignment[..], b"asg");
    assert_eq!(h.c.group_state("g"), Some(GroupState::Stable));
    // The assignment was persisted as GroupMetadataValue.
    assert!(h
        .log
        .iter()
        .any(|(_, r)| OffsetsKey::decode(&r.key).unwrap()
            == Some(OffsetsKey::GroupMetadata { group: "g".into() })));
}

#[test]
fn v3_join_without_member_id_gets_one_directly() {
    let mut h = Harness::new();
    let mut req = join_req("g", "", None, &["range"]);
    req.require_known_member_id = false;
    let t = h.send(GroupRequest::Join(req));
    let r = h.join_result(t);
    assert_eq!(r.error, codes::NONE);
    assert_eq!(r.generation_id, 1);
}

#[test]
fn second_member_triggers_rebalance_and_followers_wait_for_leader_sync() {
    let mut h = Harness::new();
    let (a, gen1) = h.stable_single("g");
    let (tb, b) = h.join_new("g");
    assert!(h.take(tb).is_none(), "B waits for the rebalance");
    assert_eq!(h.c.group_state("g"), Some(GroupState::PreparingRebalance));
    assert_eq!(h.heartbeat("g", &a, gen1), codes::REBALANCE_IN_PROGRESS);
    // Commits are still accepted from the current generation while preparing.
    assert_eq!(h.commit("g", &a, gen1, "t", 0, 5), codes::NONE);
    let ta = h.join("g", &a, None, &["range"]);
    let (ra, rb) = (h.join_result(ta), h.join_result(tb));
    assert_eq!(ra.generation_id, gen1 + 1);
    assert_eq!(rb.generation_id, gen1 + 1);
    assert_eq!(ra.leader, a);
    assert_eq!(rb.leader, a);
    assert_eq!(ra.members.len(), 2);
    assert!(rb.members.is_empty(), "followers get no member list");
    // Old generation now rejected.
    assert_eq!(
        h.commit("g", &a, gen1, "t", 0, 6),
        codes::ILLEGAL_GENERATION
    );
    // Commit while CompletingRebalance.
    assert_eq!(
        h.commit("g", &b, gen1 + 1, "t", 0, 6),
        codes::REBALANCE_IN_PROGRESS
    );
    let sb = h.sync("g", &b, gen1 + 1, vec![]);
    assert!(
        h.take(sb).is_none(),
        "follower waits for the leader's assignment"
    );
    let sa = h.sync(
        "g",
        &a,
        gen1 + 1,
        vec![
            (a.clone(), Bytes::from_static(b"for-a")),
            (b.clone(), Bytes::from_static(b"for-b")),
        ],
    );
    assert_eq!(&h.sync_result(sa).assignment[..], b"for-a");
    assert_eq!(&h.sync_result(sb).assignment[..], b"for-b");
    assert_eq!(h.c.group_state("g"), Some(GroupState::Stable));
    // A late SyncGroup in Stable gets its assignment immediately.
    let again = h.sync("g", &b, gen1 + 1, vec![]);
    assert_eq!(&h.sync_result(again).assignment[..], b"for-b");
    assert_eq!(h.commit("g", &b, gen1 + 1, "t", 0, 7), codes::NONE);
    assert_eq!(h.fetch("g", "t", 0), (codes::NONE, 7));
}

#[test]
fn members_that_do_not_rejoin_within_the_rebalance_timeout_are_removed() {
    let mut h = Harness::new();
    let (a, _) = h.stable_single("g");
    let (tb, b) = h.join_new("g");
    let ta = h.join("g", &a, None, &["range"]);
    let gen2 = h.join_result(ta).generation_id;
    h.join_result(tb);
    let sa = h.sync("g", &a, gen2, vec![]);
    let sb = h.sync("g", &b, gen2, vec![]);
    h.sync_result(sa);
    h.sync_result(sb);
    // C joins; A rejoins; B stays silent (but keeps heartbeating, which does not count).
    let (tc, _c) = h.join_new("g");
    let ta = h.join("g", &a, None, &["range"]);
    assert!(h.take(ta).is_none());
    for _ in 0..5 {
        h.advance(REBALANCE as i64 / 6);
        assert_eq!(h.heartbeat("g", &b, gen2), codes::REBALANCE_IN_PROGRESS);
        assert!(h.take(ta).is_none());
    }
    h.advance(REBALANCE as i64 / 6);
    let ra = h.join_result(ta);
    let rc = h.join_result(tc);
    assert_eq!(ra.generation_id, gen2 + 1);
    assert_eq!(rc.generation_id, gen2 + 1);
    assert_eq!(ra.members.len(), 2);
    assert!(!h.c.member_ids("g").contains(&b));
    assert_eq!(h.heartbeat("g", &b, gen2), codes::UNKNOWN_MEMBER_ID);
}

#[test]
fn session_expiry_removes_member_and_rebalances() {
    let mut h = Harness::new();
    let (a, gen1) = h.stable_single("g");
    assert_eq!(h.c.next_deadline(), Some(h.now + SESSION as i64));
    h.advance(SESSION as i64 - 1);
    assert_eq!(h.c.group_state("g"), Some(GroupState::Stable));
    h.advance(1);
    // The only member expired: the rebalance completes at once into an empty generation.
    assert_eq!(h.c.group_state("g"), Some(GroupState::Empty));
    assert_eq!(h.c.generation("g"), Some(gen1 + 1));
    assert_eq!(h.heartbeat("g", &a, gen1), codes::UNKNOWN_MEMBER_ID);
    // Only the periodic offset-retention check remains.
    assert!(h.c.next_deadline().is_some_and(|d| d > h.now));
}

#[test]
fn offsets_expire_after_retention() {
    let day = 24 * 60 * 60 * 1000;
    let mut h = Harness::with_config(CoordinatorConfig {
        initial_rebalance_delay_ms: 0,
        offsets_retention_ms: day,
        offsets_retention_check_interval_ms: 60_000,
        ..Default::default()
    });
    h.advance(0); // arms the retention timer
                  // Offsets-only group: each offset expires a day after its commit.
    assert_eq!(h.commit("simple", "", -1, "t", 0, 1), codes::NONE);
    h.advance(day / 2);
    assert_eq!(h.commit("simple", "", -1, "t", 1, 1), codes::NONE);
    // Stable consumer group subscribed to "t": its "t" offsets never expire, "old" ones do.
    let (a, gen) = h.stable_single("g");
    assert_eq!(h.commit("g", &a, gen, "t", 0, 5), codes::NONE);
    assert_eq!(h.commit("g", &a, gen, "old", 0, 5), codes::NONE);
    // An explicit retention (OffsetCommit v2-v4) does not expire a subscribed topic either.
    let mut explicit = commit_req("g", &a, gen, "t", 1, 6);
    explicit.retention_time_ms = 1_000;
    let t = h.send(GroupRequest::OffsetCommit(explicit));
    assert_eq!(
        h.take(t),
        Some(GroupResponse::OffsetCommit(vec![(
            "t".into(),
            1,
            codes::NONE
        )]))
    );
    assert_eq!(h.fetch("g", "t", 1).1, 6);
    for _ in 0..(day / 2 / 5_000 + 12) {
        h.advance(5_000);
        assert_eq!(h.heartbeat("g", &a, gen), codes::NONE);
    }
    assert_eq!(h.fetch("simple", "t", 0).1, -1, "expired");
    assert_eq!(h.fetch("simple", "t", 1).1, 1, "not yet");
    assert_eq!(h.fetch("g", "t", 0).1, 5, "subscribed topic kept");
    assert_eq!(
        h.fetch("g", "t", 1).1,
        6,
        "subscribed topic kept despite explicit retention"
    );
    for _ in 0..(day / 2 / 5_000 + 12) {
        h.advance(5_000);
        assert_eq!(h.heartbeat("g", &a, gen), codes::NONE);
    }
    assert_eq!(h.fetch("g", "old", 0).1, -1, "unsubscribed topic expired");
    assert_eq!(
        h.c.group_state("simple"),
        None,
        "empty group without offsets is deleted"
    );
    let tombstone = OffsetsKey::GroupMetadata {
        group: "simple".into(),
    }
    .encode();
    assert!(h
        .log
        .iter()
        .any(|(_, r)| r.key == tombstone && r.value.is_none()));
    // An empty consumer group: offsets expire a retention period after it became empty.
    let t = h.send(GroupRequest::Leave(LeaveGroup {
        group_id: "g".into(),
        members: vec![LeavingMember {
            member_id: a.clone(),
            group_instance_id: None,
        }],
    }));
    h.take(t);
    assert_eq!(h.c.group_state("g"), Some(GroupState::Empty));
    h.advance(day - 120_000);
    assert_eq!(h.fetch("g", "t", 0).1, 5);
    h.advance(180_000);
    assert_eq!(h.fetch("g", "t", 0).1, -1);
    assert_eq!(h.c.group_state("g"), None);
}

#[test]
fn deleted_topics_lose_their_offsets() {
    let mut h = Harness::new();
    assert_eq!(h.commit("a", "", -1, "gone", 0, 1), codes::NONE);
    assert_eq!(h.commit("b", "", -1, "gone", 0, 1), codes::NONE);
    assert_eq!(h.commit("b", "", -1, "kept", 0, 2), codes::NONE);
    let actions = h.c.on_topics_deleted(&["gone".to_string()]);
    h.process(actions);
    assert_eq!(h.c.group_state("a"), None, "nothing left: group removed");
    assert_eq!(h.fetch("b", "gone", 0).1, -1);
    assert_eq!(h.fetch("b", "kept", 0).1, 2);
    let tombstones = h.log.iter().filter(|(_, r)| r.value.is_none()).count();
    assert_eq!(tombstones, 3, "two offsets and group a");
}

#[test]
fn pending_commit_is_not_expired() {
    let mut h = Harness::with_config(CoordinatorConfig {
        initial_rebalance_delay_ms: 0,
        offsets_retention_ms: 1_000,
        offsets_retention_check_interval_ms: 1_000,
        ..Default::default()
    });
    h.advance(0);
    assert_eq!(h.commit("s", "", -1, "t", 0, 1), codes::NONE);
    h.auto_complete = false;
    let t = h.send(GroupRequest::OffsetCommit(commit_req(
        "s", "", -1, "t", 0, 2,
    )));
    h.advance(5_000);
    assert!(
        h.held
            .iter()
            .all(|(_, _, recs, _)| recs.iter().all(|r| r.value.is_some())),
        "no tombstone while the commit is in flight"
    );
    h.release_held();
    h.take(t);
    assert_eq!(h.fetch("s", "t", 0).1, 2);
}

#[test]
fn heartbeat_error_paths() {
    let mut h = Harness::new();
    assert_eq!(h.heartbeat("nope", "m", 1), codes::UNKNOWN_MEMBER_ID);
    let (a, gen) = h.stable_single("g");
    assert_eq!(h.heartbeat("g", &a, gen + 5), codes::ILLEGAL_GENERATION);
    assert_eq!(h.heartbeat("g", "stranger", gen), codes::UNKNOWN_MEMBER_ID);
    assert_eq!(h.heartbeat("", "m", 1), codes::INVALID_GROUP_ID);
    assert_eq!(h.heartbeat("g", &a, gen), codes::NONE);
}

#[test]
fn protocol_selection_and_inconsistent_protocols() {
    let mut h = Harness::new();
    let mut req_a = join_req("g", "", None, &["range", "roundrobin"]);
    req_a.require_known_member_id = false;
    let ta = h.send(GroupRequest::Join(req_a));
    let a = h.join_result(ta);
    assert_eq!(a.protocol_name.as_deref(), Some("range"));
    // A member supporting only "sticky" cannot join.
    let t = h.join("g", "", None, &["sticky"]);
    assert_eq!(h.join_result(t).error, codes::INCONSISTENT_GROUP_PROTOCOL);
    // Another protocol type cannot join.
    let mut other = join_req("g", "", None, &["range"]);
    other.protocol_type = "connect".into();
    let t = h.send(GroupRequest::Join(other));
    assert_eq!(h.join_result(t).error, codes::INCONSISTENT_GROUP_PROTOCOL);
    // Empty protocol list.
    let t = h.join("g2", "", None, &[]);
    assert_eq!(h.join_result(t).error, codes::INCONSISTENT_GROUP_PROTOCOL);
    assert_eq!(
        h.c.group_state("g2"),
        None,
        "a failed first join leaves no group behind"
    );
    // Two members preferring roundrobin outvote the leader's range.
    let mut rb = join_req("g", "", None, &["roundrobin", "range"]);
    rb.require_known_member_id = false;
    let tb = h.send(GroupRequest::Join(rb.clone()));
    let tc = h.send(GroupRequest::Join(rb));
    let ta = h.join("g", &a.member_id, None, &["range", "roundrobin"]);
    h.advance(REBALANCE as i64);
    for t in [ta, tb, tc] {
        let r = h.join_result(t);
        assert_eq!(r.error, codes::NONE);
        assert_eq!(r.protocol_name.as_deref(), Some("roundrobin"));
    }
}

#[test]
fn protocol_vote_tie_follows_leader_preference() {
    let mut h = Harness::new();
    let mut a = join_req("g", "", None, &["roundrobin", "range"]);
    a.require_known_member_id = false;
    let ta = h.send(GroupRequest::Join(a));
    let ra = h.join_result(ta);
    let s = h.sync("g", &ra.member_id, ra.generation_id, vec![]);
    h.sync_result(s);
    let mut b = join_req("g", "", None, &["range", "roundrobin"]);
    b.require_known_member_id = false;
    let tb = h.send(GroupRequest::Join(b));
    let ta = h.join("g", &ra.member_id, None, &["roundrobin", "range"]);
    let r = h.join_result(ta);
    h.join_result(tb);
    assert_eq!(r.leader, ra.member_id);
    assert_eq!(r.protocol_name.as_deref(), Some("roundrobin"));
}

#[test]
fn join_validation_errors() {
    let mut h = Harness::new();
    let t = h.join("", "", None, &["range"]);
    assert_eq!(h.join_result(t).error, codes::INVALID_GROUP_ID);
    let mut req = join_req("g", "", None, &["range"]);
    req.session_timeout_ms = 10;
    let t = h.send(GroupRequest::Join(req));
    assert_eq!(h.join_result(t).error, codes::INVALID_SESSION_TIMEOUT);
    let mut req = join_req("g", "", None, &["range"]);
    req.session_timeout_ms = i32::MAX;
    let t = h.send(GroupRequest::Join(req));
    assert_eq!(h.join_result(t).error, codes::INVALID_SESSION_TIMEOUT);
    let t = h.join("unknown", "some-member", None, &["range"]);
    assert_eq!(h.join_result(t).error, codes::UNKNOWN_MEMBER_ID);
    let (_a, _) = h.stable_single("g");
    let t = h.join("g", "not-a-member", None, &["range"]);
    assert_eq!(h.join_result(t).error, codes::UNKNOWN_MEMBER_ID);
}

#[test]
fn group_max_size() {
    let mut h = Harness::with_config(CoordinatorConfig {
        initial_rebalance_delay_ms: 0,
        max_group_size: 1,
        ..Default::default()
    });
    let (_a, _) = h.stable_single("g");
    let mut req = join_req("g", "", None, &["range"]);
    req.require_known_member_id = false;
    let t = h.send(GroupRequest::Join(req));
    assert_eq!(h.join_result(t).error, codes::GROUP_MAX_SIZE_REACHED);
}

#[test]
fn rejoin_of_follower_with_same_protocols_in_stable_returns_current_generation() {
    let mut h = Harness::new();
    let (a, _) = h.stable_single("g");
    let (tb, b) = h.join_new("g");
    let ta = h.join("g", &a, None, &["range"]);
    let gen = h.join_result(ta).generation_id;
    h.join_result(tb);
    let sa = h.sync("g", &a, gen, vec![]);
    let sb = h.sync("g", &b, gen, vec![]);
    h.sync_result(sa);
    h.sync_result(sb);
    let t = h.join("g", &b, None, &["range"]);
    let r = h.join_result(t);
    assert_eq!((r.error, r.generation_id), (codes::NONE, gen));
    assert_eq!(h.c.group_state("g"), Some(GroupState::Stable));
    // The leader rejoining forces a rebalance.
    let t = h.join("g", &a, None, &["range"]);
    assert!(h.take(t).is_none());
    assert_eq!(h.c.group_state("g"), Some(GroupState::PreparingRebalance));
}

#[test]
fn static_member_restart_replaces_member_id_without_rebalance() {
    let mut h = Harness::new();
    let t = h.join("g", "", Some("inst-1"), &["range"]);
    let r = h.join_result(t);
    assert_eq!(
        r.error,
        codes::NONE,
        "static members skip MEMBER_ID_REQUIRED"
    );
    assert!(r.member_id.starts_with("inst-1-"));
    let old = r.member_id.clone();
    let s = h.sync(
        "g",
        &old,
        r.generation_id,
        vec![(old.clone(), Bytes::from_static(b"mine"))],
    );
    h.sync_result(s);
    let appends_before = h.log.len();
    // The process restarts: same instance id, no member id.
    let t = h.join("g", "", Some("inst-1"), &["range"]);
    let r2 = h.join_result(t);
    assert_eq!(r2.error, codes::NONE);
    assert_ne!(r2.member_id, old);
    assert_eq!(r2.generation_id, r.generation_id, "no new generation");
    assert_eq!(
        r2.leader, old,
        "Kafka reports the previous leader id so the member does not reassign"
    );
    assert!(r2.members.is_empty());
    assert_eq!(h.c.group_state("g"), Some(GroupState::Stable));
    assert!(
        h.log.len() > appends_before,
        "the new member id was persisted"
    );
    // The new member id gets its old assignment back.
    let s = h.sync("g", &r2.member_id, r2.generation_id, vec![]);
    assert_eq!(&h.sync_result(s).assignment[..], b"mine");
    // The old incarnation is fenced.
    let t = h.send(GroupRequest::Heartbeat(Heartbeat {
        group_id: "g".into(),
        generation_id: r.generation_id,
        member_id: old.clone(),
        group_instance_id: Some("inst-1".into()),
    }));
    assert_eq!(
        h.take(t),
        Some(GroupResponse::Heartbeat(codes::FENCED_INSTANCE_ID))
    );
    let mut commit = commit_req("g", &old, r.generation_id, "t", 0, 1);
    commit.group_instance_id = Some("inst-1".into());
    let t = h.send(GroupRequest::OffsetCommit(commit));
    assert_eq!(
        h.take(t),
        Some(GroupResponse::OffsetCommit(vec![(
            "t".into(),
            0,
            codes::FENCED_INSTANCE_ID
        )]))
    );
}

#[test]
fn static_member_replacement_reverts_when_the_write_fails() {
    let mut h = Harness::new();
    let t = h.join("g", "", Some("i"), &["range"]);
    let r = h.join_result(t);
    let s = h.sync("g", &r.member_id, r.generation_id, vec![]);
    h.sync_result(s);
    h.fail_next_append = Some(AppendError::NotLeader);
    let t = h.join("g", "", Some("i"), &["range"]);
    assert_eq!(h.join_result(t).error, codes::NOT_COORDINATOR);
    assert_eq!(h.c.member_ids("g"), vec![r.member_id.clone()]);
}

#[test]
fn static_member_not_rejoining_is_kept_until_session_expiry() {
    let mut h = Harness::new();
    let t = h.join("g", "", Some("s"), &["range"]);
    let rs = h.join_result(t);
    let s = h.sync("g", &rs.member_id, rs.generation_id, vec![]);
    h.sync_result(s);
    let (tb, _b) = h.join_new("g");
    for _ in 0..6 {
        assert!(h.take(tb).is_none());
        assert_eq!(
            h.heartbeat("g", &rs.member_id, rs.generation_id),
            codes::REBALANCE_IN_PROGRESS
        );
        h.advance(REBALANCE as i64 / 6);
    }
    // Rebalance timed out: the static member stays (it did not rejoin, but it is static).
    let rb = h.join_result(tb);
    assert_eq!(rb.error, codes::NONE);
    assert_eq!(
        rb.members.len(),
        2,
        "the leader still sees the static member"
    );
    assert!(h.c.member_ids("g").contains(&rs.member_id));
    // Gone for a whole session: now it is removed.
    h.advance(SESSION as i64);
    assert!(!h.c.member_ids("g").contains(&rs.member_id));
}

#[test]
fn leave_group_batched_and_by_instance_id() {
    let mut h = Harness::new();
    let t = h.join("g", "", Some("i1"), &["range"]);
    let r1 = h.join_result(t);
    let (t2, m2) = h.join_new("g");
    let t1 = h.join("g", &r1.member_id, Some("i1"), &["range"]);
    h.join_result(t1);
    h.join_result(t2);
    let t = h.send(GroupRequest::Leave(LeaveGroup {
        group_id: "g".into(),
        members: vec![
            LeavingMember {
                member_id: "".into(),
                group_instance_id: Some("i1".into()),
            },
            LeavingMember {
                member_id: m2.clone(),
                group_instance_id: None,
            },
            LeavingMember {
                member_id: "ghost".into(),
                group_instance_id: None,
            },
            LeavingMember {
                member_id: "wrong".into(),
                group_instance_id: Some("i9".into()),
            },
        ],
    }));
    let Some(GroupResponse::Leave(res)) = h.take(t) else {
        panic!()
    };
    assert_eq!(res.error, codes::NONE);
    let codes_: Vec<ErrorCode> = res.members.iter().map(|m| m.2).collect();
    assert_eq!(
        codes_,
        vec![
            codes::NONE,
            codes::NONE,
            codes::UNKNOWN_MEMBER_ID,
            codes::UNKNOWN_MEMBER_ID
        ]
    );
    assert_eq!(h.c.group_state("g"), Some(GroupState::Empty));
    // Unknown group: per-member UNKNOWN_MEMBER_ID, no top-level error.
    let t = h.send(GroupRequest::Leave(LeaveGroup {
        group_id: "none".into(),
        members: vec![LeavingMember {
            member_id: "x".into(),
            group_instance_id: None,
        }],
    }));
    assert_eq!(
        h.take(t),
        Some(GroupResponse::Leave(LeaveGroupResult {
            error: codes::NONE,
            members: vec![("x".into(), None, codes::UNKNOWN_MEMBER_ID)]
        }))
    );
}

#[test]
fn leave_with_fenced_instance() {
    let mut h = Harness::new();
    let t = h.join("g", "", Some("i1"), &["range"]);
    h.join_result(t);
    let t = h.send(GroupRequest::Leave(LeaveGroup {
        group_id: "g".into(),
        members: vec![LeavingMember {
            member_id: "stale-id".into(),
            group_instance_id: Some("i1".into()),
        }],
    }));
    let Some(GroupResponse::Leave(res)) = h.take(t) else {
        panic!()
    };
    assert_eq!(res.members[0].2, codes::FENCED_INSTANCE_ID);
}

#[test]
fn leaving_member_waiting_in_join_is_answered() {
    let mut h = Harness::new();
    let (a, _) = h.stable_single("g");
    let (tb, b) = h.join_new("g");
    let t = h.send(GroupRequest::Leave(LeaveGroup {
        group_id: "g".into(),
        members: vec![LeavingMember {
            member_id: b.clone(),
            group_instance_id: None,
        }],
    }));
    h.take(t);
    assert_eq!(h.join_result(tb).error, codes::UNKNOWN_MEMBER_ID);
    // A alone now: its rejoin completes the rebalance.
    let ta = h.join("g", &a, None, &["range"]);
    assert_eq!(h.join_result(ta).members.len(), 1);
}

#[test]
fn simple_commits_and_commit_errors() {
    let mut h = Harness::new();
    // Unknown group, generation -1: allowed, creates an Empty offsets-only group.
    assert_eq!(h.commit("simple", "", -1, "t", 0, 10), codes::NONE);
    // Generation -1 on an empty group is allowed whatever the member id says.
    assert_eq!(
        h.commit("simple", "admin-client", -1, "t", 1, 11),
        codes::NONE
    );
    assert_eq!(h.c.group_state("simple"), Some(GroupState::Empty));
    assert_eq!(h.fetch("simple", "t", 0), (codes::NONE, 10));
    // Unknown group with a generation: rejected.
    assert_eq!(
        h.commit("other", "m", 3, "t", 0, 1),
        codes::ILLEGAL_GENERATION
    );
    assert_eq!(h.c.group_state("other"), None);
    let (a, gen) = h.stable_single("g");
    assert_eq!(
        h.commit("g", "", -1, "t", 0, 1),
        codes::UNKNOWN_MEMBER_ID,
        "members only once non-empty"
    );
    assert_eq!(
        h.commit("g", "intruder", gen, "t", 0, 1),
        codes::UNKNOWN_MEMBER_ID
    );
    assert_eq!(
        h.commit("g", &a, gen - 1, "t", 0, 1),
        codes::ILLEGAL_GENERATION
    );
    // Metadata too large and unknown topic are per partition.
    let mut req = commit_req("g", &a, gen, "t", 0, 3);
    req.partitions[0].metadata = Some("x".repeat(5000));
    req.partitions.push(PartitionCommit {
        topic: "t".into(),
        partition: 1,
        offset: 4,
        leader_epoch: 2,
        metadata: Some("ok".into()),
    });
    req.partitions.push(PartitionCommit {
        topic: "missing".into(),
        partition: 0,
        offset: 4,
        leader_epoch: 2,
        metadata: None,
    });
    let catalog = |t: &str, _p: i32| t != "missing";
    let t = h.send_with(GroupRequest::OffsetCommit(req), &catalog);
    let Some(GroupResponse::OffsetCommit(mut res)) = h.take(t) else {
        panic!()
    };
    res.sort();
    assert_eq!(
        res,
        vec![
            ("missing".into(), 0, codes::UNKNOWN_TOPIC_OR_PARTITION),
            ("t".into(), 0, codes::OFFSET_METADATA_TOO_LARGE),
            ("t".into(), 1, codes::NONE)
        ]
    );
    assert_eq!(h.fetch("g", "t", 1), (codes::NONE, 4));
    assert_eq!(h.fetch("g", "t", 0), (codes::NONE, -1));
    // A failed append maps the error and does not change the committed offset.
    h.fail_next_append = Some(AppendError::NotEnoughReplicas);
    assert_eq!(
        h.commit("g", &a, gen, "t", 1, 99),
        codes::COORDINATOR_NOT_AVAILABLE
    );
    h.fail_next_append = Some(AppendError::NotLeader);
    assert_eq!(h.commit("g", &a, gen, "t", 1, 99), codes::NOT_COORDINATOR);
    assert_eq!(h.fetch("g", "t", 1), (codes::NONE, 4));
}

#[test]
fn commit_response_waits_for_the_append() {
    let mut h = Harness::new();
    h.auto_complete = false;
    let t = h.send(GroupRequest::OffsetCommit(commit_req(
        "g", "", -1, "t", 0, 8,
    )));
    assert!(h.take(t).is_none());
    assert_eq!(
        h.fetch("g", "t", 0),
        (codes::NONE, -1),
        "uncommitted offsets are invisible"
    );
    h.release_held();
    assert_eq!(
        h.take(t),
        Some(GroupResponse::OffsetCommit(vec![(
            "t".into(),
            0,
            codes::NONE
        )]))
    );
    assert_eq!(h.fetch("g", "t", 0), (codes::NONE, 8));
}

#[test]
fn offset_fetch_all_topics_unknown_groups_and_multi_group() {
    let mut h = Harness::new();
    assert_eq!(h.commit("a", "", -1, "t", 0, 1), codes::NONE);
    assert_eq!(h.commit("a", "", -1, "u", 2, 5), codes::NONE);
    let t = h.send(GroupRequest::OffsetFetch(OffsetFetch {
        groups: vec![
            OffsetFetchGroup {
                group_id: "a".into(),
                topics: None,
            },
            OffsetFetchGroup {
                group_id: "unknown".into(),
                topics: Some(vec![("t".into(), vec![0])]),
            },
            OffsetFetchGroup {
                group_id: "unknown2".into(),
                topics: None,
            },
        ],
        require_stable: false,
    }));
    let Some(GroupResponse::OffsetFetch(res)) = h.take(t) else {
        panic!()
    };
    assert_eq!(res.len(), 3);
    assert_eq!(
        res[0].offsets.iter().map(|o| o.offset).collect::<Vec<_>>(),
        vec![1, 5]
    );
    assert_eq!(res[1].offsets[0].offset, -1);
    assert_eq!(res[1].error, codes::NONE);
    assert!(res[2].offsets.is_empty());
}

#[test]
fn not_coordinator_and_loading() {
    let mut h = Harness::new();
    let p = h.c.partition_for("g");
    let actions = h.c.unload(p);
    h.process(actions);
    let t = h.join("g", "", None, &["range"]);
    assert_eq!(h.join_result(t).error, codes::NOT_COORDINATOR);
    h.c.begin_loading(p);
    let t = h.join("g", "", None, &["range"]);
    assert_eq!(h.join_result(t).error, codes::COORDINATOR_LOAD_IN_PROGRESS);
    assert_eq!(h.fetch("g", "t", 0).0, codes::COORDINATOR_LOAD_IN_PROGRESS);
    assert_eq!(
        h.heartbeat("g", "m", 1),
        codes::NONE,
        "heartbeats answered blindly while loading"
    );
    assert_eq!(
        h.commit("g", "", -1, "t", 0, 1),
        codes::COORDINATOR_LOAD_IN_PROGRESS
    );
    let t = h.send(GroupRequest::ListGroups(ListGroups::default()));
    let Some(GroupResponse::ListGroups(l)) = h.take(t) else {
        panic!()
    };
    assert_eq!(l.error, codes::COORDINATOR_LOAD_IN_PROGRESS);
    h.c.finish_loading(p, h.now);
    let (t, _) = h.join_new("g");
    assert_eq!(h.join_result(t).error, codes::NONE);
}

#[test]
fn unload_answers_waiting_requests_not_coordinator() {
    let mut h = Harness::new();
    let (_a, _) = h.stable_single("g");
    let (tb, _b) = h.join_new("g");
    let p = h.c.partition_for("g");
    let actions = h.c.unload(p);
    h.process(actions);
    assert_eq!(h.join_result(tb).error, codes::NOT_COORDINATOR);
    assert_eq!(h.c.group_state("g"), None);
}

#[test]
fn list_and_describe_groups() {
    let mut h = Harness::new();
    let (a, _) = h.stable_single("stable");
    assert_eq!(h.commit("empty", "", -1, "t", 0, 1), codes::NONE);
    let t = h.send(GroupRequest::ListGroups(ListGroups::default()));
    let Some(GroupResponse::ListGroups(l)) = h.take(t) else {
        panic!()
    };
    let ids: Vec<(&str, &str, &str)> = l
        .groups
        .iter()
        .map(|g| {
            (
                g.group_id.as_str(),
                g.state.as_str(),
                g.protocol_type.as_str(),
            )
        })
        .collect();
    assert_eq!(
        ids,
        vec![("empty", "Empty", ""), ("stable", "Stable", "consumer")]
    );
    let t = h.send(GroupRequest::ListGroups(ListGroups {
        states_filter: vec!["stable".into()],
        types_filter: vec![],
    }));
    let Some(GroupResponse::ListGroups(l)) = h.take(t) else {
        panic!()
    };
    assert_eq!(l.groups.len(), 1);
    let t = h.send(GroupRequest::ListGroups(ListGroups {
        states_filter: vec![],
        types_filter: vec!["consumer".into()],
    }));
    let Some(GroupResponse::ListGroups(l)) = h.take(t) else {
        panic!()
    };
    assert!(l.groups.is_empty(), "classic groups only");
    let t = h.send(GroupRequest::DescribeGroups(vec![
        "stable".into(),
        "ghost".into(),
    ]));
    let Some(GroupResponse::DescribeGroups(d)) = h.take(t) else {
        panic!()
    };
    assert_eq!(d[0].state, "Stable");
    assert_eq!(d[0].protocol, "range");
    assert_eq!(d[0].members[0].member_id, a);
    assert_eq!(&d[0].members[0].assignment[..], b"A");
    assert_eq!(d[0].members[0].client_host, "/127.0.0.1");
    assert!(!d[1].exists);
    assert_eq!(d[1].state, "Dead");
    // Not Stable: no protocol and no member metadata.
    let (_tb, _b) = h.join_new("stable");
    let t = h.send(GroupRequest::DescribeGroups(vec!["stable".into()]));
    let Some(GroupResponse::DescribeGroups(d)) = h.take(t) else {
        panic!()
    };
    assert_eq!(d[0].state, "PreparingRebalance");
    assert_eq!(d[0].protocol, "");
    assert!(d[0].members.iter().all(|m| m.assignment.is_empty()));
}

#[test]
fn delete_groups() {
    let mut h = Harness::new();
    let (_a, _) = h.stable_single("busy");
    assert_eq!(h.commit("idle", "", -1, "t", 0, 1), codes::NONE);
    assert_eq!(h.commit("idle2", "", -1, "t", 0, 1), codes::NONE);
    h.auto_complete = false;
    let t = h.send(GroupRequest::DeleteGroups(vec![
        "busy".into(),
        "idle".into(),
        "ghost".into(),
        "idle2".into(),
    ]));
    assert!(h.take(t).is_none(), "waits for the tombstones");
    h.release_held();
    let Some(GroupResponse::DeleteGroups(r)) = h.take(t) else {
        panic!()
    };
    assert_eq!(
        r,
        vec![
            ("busy".into(), codes::NON_EMPTY_GROUP),
            ("idle".into(), codes::NONE),
            ("ghost".into(), codes::GROUP_ID_NOT_FOUND),
            ("idle2".into(), codes::NONE)
        ]
    );
    assert_eq!(h.c.group_state("idle"), None);
    assert_eq!(h.fetch("idle", "t", 0), (codes::NONE, -1));
    let tombstones: Vec<_> = h.log.iter().filter(|(_, r)| r.value.is_none()).collect();
    assert_eq!(
        tombstones.len(),
        4,
        "offset + group tombstones for both groups"
    );
}

#[test]
fn offset_delete() {
    let mut h = Harness::new();
    let t = h.send(GroupRequest::OffsetDelete(OffsetDelete {
        group_id: "ghost".into(),
        topics: vec![],
    }));
    assert_eq!(
        h.take(t),
        Some(GroupResponse::OffsetDelete(OffsetDeleteResult {
            error: codes::GROUP_ID_NOT_FOUND,
            partitions: vec![]
        }))
    );
    let (a, gen) = h.stable_single("g");
    assert_eq!(h.commit("g", &a, gen, "t", 0, 1), codes::NONE);
    assert_eq!(h.commit("g", &a, gen, "other", 0, 1), codes::NONE);
    let t = h.send(GroupRequest::OffsetDelete(OffsetDelete {
        group_id: "g".into(),
        topics: vec![("t".into(), vec![0]), ("other".into(), vec![0])],
    }));
    let Some(GroupResponse::OffsetDelete(r)) = h.take(t) else {
        panic!()
    };
    assert_eq!(r.error, codes::NONE);
    assert_eq!(
        r.partitions,
        vec![
            ("t".into(), 0, codes::GROUP_SUBSCRIBED_TO_TOPIC),
            ("other".into(), 0, codes::NONE)
        ]
    );
    assert_eq!(h.fetch("g", "other", 0), (codes::NONE, -1));
    assert_eq!(h.fetch("g", "t", 0), (codes::NONE, 1));
    // Once empty, any offset can be deleted.
    assert_eq!(h.commit("e", "", -1, "t", 0, 1), codes::NONE);
    let catalog = |t: &str, _p: i32| t == "t";
    let t = h.send_with(
        GroupRequest::OffsetDelete(OffsetDelete {
            group_id: "e".into(),
            topics: vec![("t".into(), vec![0]), ("gone".into(), vec![0])],
        }),
        &catalog,
    );
    let Some(GroupResponse::OffsetDelete(r)) = h.take(t) else {
        panic!()
    };
    assert_eq!(
        r.partitions,
        vec![
            ("t".into(), 0, codes::NONE),
            ("gone".into(), 0, codes::UNKNOWN_TOPIC_OR_PARTITION)
        ]
    );
}

#[test]
fn initial_rebalance_delay_waits_for_more_members() {
    let mut h = Harness::with_config(CoordinatorConfig {
        initial_rebalance_delay_ms: 3000,
        ..Default::default()
    });
    let (ta, _a) = h.join_new("g");
    h.advance(1000);
    let (tb, _b) = h.join_new("g");
    h.advance(1999);
    assert!(h.take(ta).is_none());
    h.advance(1);
    // B arrived during the delay, so the delay is extended once more.
    assert!(h.take(ta).is_none());
    h.advance(3000);
    let (ra, rb) = (h.join_result(ta), h.join_result(tb));
    assert_eq!((ra.generation_id, rb.generation_id), (1, 1));
    assert_eq!(ra.leader, rb.leader);
}

#[test]
fn sync_store_failure_propagates_error_and_rebalances() {
    let mut h = Harness::new();
    let (ta, a) = h.join_new("g");
    let ra = h.join_result(ta);
    h.fail_next_append = Some(AppendError::NotLeader);
    let s = h.sync(
        "g",
        &a,
        ra.generation_id,
        vec![(a.clone(), Bytes::from_static(b"x"))],
    );
    assert_eq!(h.sync_result(s).error, codes::NOT_COORDINATOR);
    assert_eq!(h.c.group_state("g"), Some(GroupState::PreparingRebalance));
}

#[test]
fn sync_error_paths() {
    let mut h = Harness::new();
    let s = h.sync("ghost", "m", 1, vec![]);
    assert_eq!(h.sync_result(s).error, codes::UNKNOWN_MEMBER_ID);
    let (a, gen) = h.stable_single("g");
    let s = h.sync("g", &a, gen + 1, vec![]);
    assert_eq!(h.sync_result(s).error, codes::ILLEGAL_GENERATION);
    let s = h.sync("g", "nobody", gen, vec![]);
    assert_eq!(h.sync_result(s).error, codes::UNKNOWN_MEMBER_ID);
    let s = h.send(GroupRequest::Sync(SyncGroup {
        group_id: "g".into(),
        generation_id: gen,
        member_id: a.clone(),
        group_instance_id: None,
        protocol_type: Some("consumer".into()),
        protocol_name: Some("roundrobin".into()),
        assignments: vec![],
    }));
    assert_eq!(h.sync_result(s).error, codes::INCONSISTENT_GROUP_PROTOCOL);
    let (_tb, _b) = h.join_new("g");
    let s = h.sync("g", &a, gen, vec![]);
    assert_eq!(h.sync_result(s).error, codes::REBALANCE_IN_PROGRESS);
}

#[test]
fn rebalance_during_completing_answers_waiting_syncs() {
    let mut h = Harness::new();
    let (a, _) = h.stable_single("g");
    let (tb, b) = h.join_new("g");
    let ta = h.join("g", &a, None, &["range"]);
    let gen = h.join_result(ta).generation_id;
    h.join_result(tb);
    let sb = h.sync("g", &b, gen, vec![]);
    assert!(h.take(sb).is_none());
    // A third member arrives before the leader syncs.
    let (_tc, _c) = h.join_new("g");
    assert_eq!(h.sync_result(sb).error, codes::REBALANCE_IN_PROGRESS);
}

#[test]
fn members_that_never_sync_are_removed() {
    let mut h = Harness::new();
    let (a, _) = h.stable_single("g");
    let (tb, b) = h.join_new("g");
    let ta = h.join("g", &a, None, &["range"]);
    let gen = h.join_result(ta).generation_id;
    h.join_result(tb);
    let sa = h.sync("g", &a, gen, vec![]);
    h.sync_result(sa);
    assert_eq!(h.c.group_state("g"), Some(GroupState::Stable));
    // B heartbeats but never syncs.
    for _ in 0..5 {
        h.advance(REBALANCE as i64 / 5);
        h.heartbeat("g", &a, gen);
        h.heartbeat("g", &b, gen);
    }
    assert!(!h.c.member_ids("g").contains(&b));
    assert_eq!(h.c.group_state("g"), Some(GroupState::PreparingRebalance));
}

#[test]
fn pending_member_expires_if_it_never_rejoins() {
    let mut h = Harness::new();
    let (a, gen) = h.stable_single("g");
    let t = h.join("g", "", None, &["range"]);
    assert_eq!(h.join_result(t).error, codes::MEMBER_ID_REQUIRED);
    h.advance(SESSION as i64 / 2);
    h.heartbeat("g", &a, gen);
    h.advance(SESSION as i64 / 2);
    assert_eq!(h.c.member_ids("g"), vec![a.clone()]);
    assert_eq!(h.c.group_state("g"), Some(GroupState::Stable));
}

#[test]
fn state_survives_restart_by_replaying_the_log() {
    let mut h = Harness::new();
    let (a, gen) = h.stable_single("g");
    assert_eq!(h.commit("g", &a, gen, "t", 0, 42), codes::NONE);
    assert_eq!(h.commit("g", &a, gen, "t", 1, 7), codes::NONE);
    assert_eq!(h.commit("simple", "", -1, "t", 0, 3), codes::NONE);
    assert_eq!(h.commit("deleted", "", -1, "t", 0, 3), codes::NONE);
    let t = h.send(GroupRequest::DeleteGroups(vec!["deleted".into()]));
    h.take(t);
    let t = h.send(GroupRequest::OffsetDelete(OffsetDelete {
        group_id: "simple".into(),
        topics: vec![("t".into(), vec![9])],
    }));
    h.take(t);
    let log = h.log.clone();

    let mut h2 = Harness::new();
    let mut by_partition: BTreeMap<i32, Vec<&OffsetsRecord>> = BTreeMap::new();
    for (p, r) in &log {
        by_partition.entry(*p).or_default().push(r);
    }
    for (p, records) in by_partition {
        h2.c.begin_loading(p);
        for r in records {
            h2.c.load(p, &r.key, r.value.as_deref()).unwrap();
        }
        h2.c.finish_loading(p, h2.now);
    }
    assert_eq!(h2.c.group_state("g"), Some(GroupState::Stable));
    assert_eq!(h2.c.generation("g"), Some(gen));
    assert_eq!(h2.c.leader("g"), Some(a.clone()));
    assert_eq!(h2.fetch("g", "t", 0), (codes::NONE, 42));
    assert_eq!(h2.fetch("g", "t", 1), (codes::NONE, 7));
    assert_eq!(h2.fetch("simple", "t", 0), (codes::NONE, 3));
    assert_eq!(h2.c.group_state("deleted"), None);
    // The member carries on where it was...
    assert_eq!(h2.heartbeat("g", &a, gen), codes::NONE);
    let s = h2.sync("g", &a, gen, vec![]);
    assert_eq!(&h2.sync_result(s).assignment[..], b"A");
    // ...and expires if it is gone.
    h2.advance(SESSION as i64);
    assert_eq!(h2.c.group_state("g"), Some(GroupState::Empty));
    // Garbage records are errors, not panics.
    assert!(h2.c.load(0, &[0, 1, 0], Some(&[1])).is_err());
    assert!(h2
        .c
        .load(
            0,
            &OffsetsKey::GroupMetadata { group: "x".into() }.encode(),
            Some(&[0, 3, 0])
        )
        .is_err());
}

#[test]
fn commit_assignment_uses_consumer_protocol_end_to_end() {
    // The leader's view through the assignor, as our benchmark client does it.
    use super::assignor::{AssignorMember, PartitionAssignor, RangeAssignor};
    let mut h = Harness::new();
    let (a, _) = h.stable_single("g");
    let (tb, b) = h.join_new("g");
    let ta = h.join("g", &a, None, &["range"]);
    let ra = h.join_result(ta);
    h.join_result(tb);
    let members: Vec<AssignorMember> = ra
        .members
        .iter()
        .map(|m| AssignorMember {
            member_id: m.member_id.clone(),
            group_instance_id: m.group_instance_id.clone(),
            subscription: ConsumerSubscription::decode(&m.metadata).unwrap(),
        })
        .collect();
    let plan = RangeAssignor.assign(&[("t".to_string(), 6)].into_iter().collect(), &members);
    let assignments = plan
        .iter()
        .map(|(id, asg)| (id.clone(), asg.encode(3)))
        .collect();
    let sb = h.sync("g", &b, ra.generation_id, vec![]);
    let sa = h.sync("g", &a, ra.generation_id, assignments);
    let got_a = ConsumerAssignment::decode(&h.sync_result(sa).assignment).unwrap();
    let got_b = ConsumerAssignment::decode(&h.sync_result(sb).assignment).unwrap();
    assert_eq!(got_a.len() + got_b.len(), 6);
    assert_eq!(got_a.len(), 3);
}

// ---------------------------------------------------------------------------------------------
// Property test: random schedules of a few clients.

#[derive(Debug, Clone)]
enum Op {
    Join(usize),
    Sync(usize),
    Heartbeat(usize),
    Leave(usize),
    Commit(usize),
    SimpleCommit,
    Advance(i64),
    FailNextAppend,
    HoldAppends(bool),
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..4usize).prop_map(Op::Join),
        3 => (0..4usize).prop_map(Op::Sync),
        3 => (0..4usize).prop_map(Op::Heartbeat),
        1 => (0..4usize).prop_map(Op::Leave),
        2 => (0..4usize).prop_map(Op::Commit),
        1 => Just(Op::SimpleCommit),
        3 => prop_oneof![Just(1i64), Just(1_000), Just(5_000), Just(12_000), Just(31_000)].prop_map(Op::Advance),
        1 => Just(Op::FailNextAppend),
        1 => any::<bool>().prop_map(Op::HoldAppends),
        1 => Just(Op::Restart),
    ]
}

#[derive(Debug, Default, Clone)]
struct Client {
    member_id: String,
    generation: i32,
    is_leader: bool,
    members: Vec<String>,
    instance: Option<String>,
}

#[derive(Debug, Clone)]
enum Pending {
    Join(usize),
    Sync {
        client: usize,
        generation: i32,
        member_id: String,
    },
    Commit,
    Other,
}

fn run_schedule(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut h = Harness::new();
    let mut clients: Vec<Client> = (0..4)
        .map(|i| Client {
            instance: (i == 3).then(|| "static-3".to_string()),
            ..Default::default()
        })
        .collect();
    let mut pending: HashMap<u64, Pending> = HashMap::new();
    // What the leader of each generation sent to each member.
    let mut leader_assignments: HashMap<i32, HashMap<String, Bytes>> = HashMap::new();
    let mut highest_synced_generation = 0;

    let settle = |h: &mut Harness,
                  clients: &mut Vec<Client>,
                  pending: &mut HashMap<u64, Pending>,
                  leader_assignments: &HashMap<i32, HashMap<String, Bytes>>,
                  highest: &mut i32|
     -> Result<(), TestCaseError> {
        let answered: Vec<u64> = pending
            .keys()
            .copied()
            .filter(|t| h.responses.contains_key(t))
            .collect();
        for t in answered {
            let resp = h.responses.remove(&t).unwrap();
            match (pending.remove(&t).unwrap(), resp) {
                (Pending::Join(i), GroupResponse::Join(r)) => {
                    let c = &mut clients[i];
                    match r.error {
                        codes::NONE => {
                            c.member_id = r.member_id.clone();
                            c.generation = r.generation_id;
                            c.is_leader = r.leader == r.member_id;
                            c.members = r.members.iter().map(|m| m.member_id.clone()).collect();
                            if c.is_leader {
                                prop_assert!(
                                    !r.members.is_empty()
                                        || r.generation_id == h.c.generation("g").unwrap_or(0)
                                );
                            }
                        }
                        codes::MEMBER_ID_REQUIRED => c.member_id = r.member_id.clone(),
                        codes::UNKNOWN_MEMBER_ID | codes::FENCED_INSTANCE_ID => c.member_id.clear(),
                        _ => {}
                    }
                }
                (
                    Pending::Sync {
                        client,
                        generation,
                        member_id,
                    },
                    GroupResponse::Sync(r),
                ) => {
                    if r.error == codes::NONE {
                        // Invariant: a member's assignment is exactly what its generation's
                        // leader sent for it.
                        let expected = leader_assignments
                            .get(&generation)
                            .and_then(|m| m.get(&member_id))
                            .cloned()
                            .unwrap_or_default();
                        prop_assert_eq!(&r.assignment, &expected, "assignment not from the leader");
                        // Invariant: generations become Stable in order, one at a time.
                        prop_assert!(
                            generation >= *highest,
                            "generation {} stable after {}",
                            generation,
                            highest
                        );
                        *highest = generation;
                    } else if matches!(
                        r.error,
                        codes::UNKNOWN_MEMBER_ID | codes::FENCED_INSTANCE_ID
                    ) {
                        clients[client].member_id.clear();
                    }
                }
                (Pending::Commit, GroupResponse::OffsetCommit(_)) => {}
                (Pending::Other, _) => {}
                (p, r) => prop_assert!(false, "mismatched response {:?} for {:?}", r, p),
            }
        }
        Ok(())
    };

    for op in ops {
        match op {
            Op::Join(i) => {
                let c = &clients[i];
                let mut req = join_req("g", &c.member_id, c.instance.as_deref(), &["range"]);
                if i == 2 {
                    req.require_known_member_id = false;
                }
                let t = h.send(GroupRequest::Join(req));
                pending.insert(t, Pending::Join(i));
            }
            Op::Sync(i) => {
                let c = clients[i].clone();
                if c.member_id.is_empty() {
                    continue;
                }
                let assignments: Vec<(String, Bytes)> = if c.is_leader {
                    let plan: HashMap<String, Bytes> = c
                        .members
                        .iter()
                        .map(|m| (m.clone(), Bytes::from(format!("{}@{}", m, c.generation))))
                        .collect();
                    leader_assignments
                        .entry(c.generation)
                        .or_insert_with(|| plan.clone());
                    leader_assignments[&c.generation]
                        .clone()
                        .into_iter()
                        .collect()
                } else {
                    vec![]
                };
                let t = h.sync("g", &c.member_id, c.generation, assignments);
                pending.insert(
                    t,
                    Pending::Sync {
                        client: i,
                        generation: c.generation,
                        member_id: c.member_id.clone(),
                    },
                );
            }
            Op::Heartbeat(i) => {
                let c = &clients[i];
                let t = h.send(GroupRequest::Heartbeat(Heartbeat {
                    group_id: "g".into(),
                    generation_id: c.generation,
                    member_id: c.member_id.clone(),
                    group_instance_id: c.instance.clone(),
                }));
                pending.insert(t, Pending::Other);
            }
            Op::Leave(i) => {
                let c = &mut clients[i];
                let t = h.send(GroupRequest::Leave(LeaveGroup {
                    group_id: "g".into(),
                    members: vec![LeavingMember {
                        member_id: c.member_id.clone(),
                        group_instance_id: c.instance.clone(),
                    }],
                }));
                c.member_id.clear();
                pending.insert(t, Pending::Other);
            }
            Op::Commit(i) => {
                let c = &clients[i];
                let gen_before = h.c.generation("g");
                let members_before = h.c.member_ids("g");
                let state_before = h.c.group_state("g");
                let mut req = commit_req("g", &c.member_id, c.generation, "t", i as i32, 1);
                req.group_instance_id = c.instance.clone();
                let held = !h.auto_complete;
                let t = h.send(GroupRequest::OffsetCommit(req));
                let accepted_for_write = held && !h.responses.contains_key(&t);
                if let Some(GroupResponse::OffsetCommit(r)) = h.responses.get(&t) {
                    if r[0].2 == codes::NONE || accepted_for_write {
                        // Invariant: only the current generation's members commit.
                        prop_assert_eq!(gen_before, Some(c.generation));
                        prop_assert!(members_before.contains(&c.member_id));
                        prop_assert!(matches!(
                            state_before,
                            Some(GroupState::Stable | GroupState::PreparingRebalance)
                        ));
                    }
                }
                pending.insert(t, Pending::Commit);
            }
            Op::SimpleCommit => {
                let state_before = h.c.group_state("g");
                let t = h.send(GroupRequest::OffsetCommit(commit_req(
                    "g", "", -1, "t", 9, 1,
                )));
                if let Some(GroupResponse::OffsetCommit(r)) = h.responses.get(&t) {
                    if r[0].2 == codes::NONE {
                        prop_assert!(matches!(state_before, None | Some(GroupState::Empty)));
                    }
                }
                pending.insert(t, Pending::Other);
            }
            Op::Advance(ms) => h.advance(ms),
            Op::FailNextAppend => h.fail_next_append = Some(AppendError::Timeout),
            Op::HoldAppends(hold) => {
                h.auto_complete = !hold;
                if !hold {
                    h.release_held();
                }
            }
            Op::Restart => {
                let offsets = |h: &mut Harness| -> Vec<i64> {
                    (0..10).map(|p| h.fetch("g", "t", p).1).collect()
                };
                let quiet = h.held.is_empty();
                let state = h.c.group_state("g");
                let generation = h.c.generation("g");
                let members = h.c.member_ids("g");
                let before = offsets(&mut h);
                h.restart();
                h.auto_complete = true;
                pending.clear();
                // Invariant: acknowledged commits survive a restart exactly.
                let after = offsets(&mut h);
                prop_assert_eq!(&before, &after, "committed offsets changed across restart");
                if quiet && state == Some(GroupState::Stable) {
                    prop_assert_eq!(h.c.group_state("g"), Some(GroupState::Stable));
                    prop_assert_eq!(h.c.generation("g"), generation);
                    prop_assert_eq!(h.c.member_ids("g"), members);
                }
                let reloaded = h.c.generation("g").unwrap_or(0);
                leader_assignments.retain(|g, _| *g <= reloaded);
            }
        }
        settle(
            &mut h,
            &mut clients,
            &mut pending,
            &leader_assignments,
            &mut highest_synced_generation,
        )?;
        // Structural invariants of the coordinator.
        if let Some(state) = h.c.group_state("g") {
            let members = h.c.member_ids("g");
            match state {
                GroupState::Empty => prop_assert!(members.is_empty()),
                GroupState::CompletingRebalance | GroupState::Stable => {
                    prop_assert!(!members.is_empty());
                    let leader = h.c.leader("g");
                    prop_assert!(leader.is_some_and(|l| members.contains(&l)));
                }
                _ => {}
            }
        }
    }
    // Every waiting JoinGroup / SyncGroup is eventually answered once clients go quiet.
    h.auto_complete = true;
    h.release_held();
    for _ in 0..20 {
        h.advance(31_000);
    }
    settle(
        &mut h,
        &mut clients,
        &mut pending,
        &leader_assignments,
        &mut highest_synced_generation,
    )?;
    let waiting: Vec<&Pending> = pending.values().collect();
    prop_assert!(waiting.is_empty(), "unanswered requests: {:?}", waiting);
    prop_assert!(
        h.c.next_deadline().is_none_or(|d| d > h.now),
        "a timer is overdue after tick"
    );
    prop_assert!(
        h.c.member_ids("g").is_empty(),
        "silent members must have expired"
    );
    prop_assert_eq!(h.c.pending_appends(), 0);
    Ok(())
}

proptest! {
    #[test]
    fn replaying_arbitrary_records_never_panics(
        records in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..40), proptest::option::of(proptest::collection::vec(any::<u8>(), 0..80))),
            0..20,
        )
    ) {
        let mut c = GroupCoordinator::new(CoordinatorConfig::default());
        c.begin_loading(0);
        for (k, v) in &records {
            let _ = c.load(0, k, v.as_deref());
        }
        c.finish_loading(0, 0);
        let _ = c.tick(1_000_000);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
    #[test]
    fn random_schedules_keep_group_invariants(ops in proptest::collection::vec(op(), 1..60)) {
        run_schedule(ops)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Consumers speaking the wire protocol (encoded and decoded with kafka-protocol at different
// versions), the scenario at the core level: three members on a six-partition topic,
// one dies, its partitions move within the session timeout.

mod wire_consumers {
    use super::*;
    use crate::group::assignor::{AssignorMember, PartitionAssignor, RangeAssignor};
    use crate::group::wire;
    use bytes::BytesMut;
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
    use kafka_protocol::messages::{
        GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, SyncGroupRequest,
        SyncGroupResponse,
    };
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

    /// Encodes with `version` and decodes again, as the bytes would cross the network.
    fn over_the_wire<M: Encodable + Decodable>(m: &M, version: i16) -> M {
        let mut buf = BytesMut::new();
        m.encode(&mut buf, version).expect("encode");
        M::decode(&mut buf.freeze(), version).expect("decode")
    }

    fn sb(s: &str) -> StrBytes {
        StrBytes::from_string(s.to_owned())
    }

    #[derive(Debug)]
    enum Phase {
        Idle,
        Joining(u64),
        Syncing(u64),
        Stable,
    }

    struct Consumer {
        version_join: i16,
        version_sync: i16,
        member_id: String,
        generation: i32,
        phase: Phase,
        assignment: Vec<i32>,
        alive: bool,
        leader_members: Vec<(String, Bytes)>,
        is_leader: bool,
        last_heartbeat: i64,
    }

    impl Consumer {
        fn new(version_join: i16, version_sync: i16) -> Self {
            Consumer {
                version_join,
                version_sync,
                member_id: String::new(),
                generation: -1,
                phase: Phase::Idle,
                assignment: Vec::new(),
                alive: true,
                leader_members: Vec::new(),
                is_leader: false,
                last_heartbeat: 0,
            }
        }

        fn step(&mut self, h: &mut Harness) {
            if !self.alive {
                return;
            }
            match self.phase {
                Phase::Idle => {
                    let req = JoinGroupRequest::default()
                        .with_group_id(GroupId(sb("g")))
                        .with_session_timeout_ms(SESSION)
                        .with_rebalance_timeout_ms(REBALANCE)
                        .with_member_id(sb(&self.member_id))
                        .with_protocol_type(sb("consumer"))
                        .with_protocols(vec![JoinGroupRequestProtocol::default()
                            .with_name(sb("range"))
                            .with_metadata(ConsumerSubscription::new(["t"]).encode(3))]);
                    let req = over_the_wire(&req, self.version_join);
                    let core = wire::join_group_request(&req, self.version_join, "c", "/127.0.0.1");
                    self.phase = Phase::Joining(h.send(GroupRequest::Join(core)));
                }
                Phase::Joining(t) => {
                    let Some(GroupResponse::Join(r)) = h.take(t) else {
                        return;
                    };
                    let resp = over_the_wire(
                        &wire::join_group_response(&r, self.version_join),
                        self.version_join,
                    );
                    self.member_id = resp.member_id.to_string();
                    if resp.error_code != codes::NONE {
                        if resp.error_code == codes::UNKNOWN_MEMBER_ID {
                            self.member_id.clear();
                        }
                        self.phase = Phase::Idle;
                        return;
                    }
                    self.generation = resp.generation_id;
                    self.is_leader = resp.leader == resp.member_id;
                    self.leader_members = resp
                        .members
                        .iter()
                        .map(|m| (m.member_id.to_string(), m.metadata.clone()))
                        .collect();
                    let assignments = if self.is_leader {
                        let members: Vec<AssignorMember> = self
                            .leader_members
                            .iter()
                            .map(|(id, md)| AssignorMember {
                                member_id: id.clone(),
                                group_instance_id: None,
                                subscription: ConsumerSubscription::decode(md)
                                    .expect("subscription"),
                            })
                            .collect();
                        RangeAssignor
                            .assign(&[("t".to_string(), 6)].into_iter().collect(), &members)
                            .into_iter()
                            .map(|(id, a)| {
                                SyncGroupRequestAssignment::default()
                                    .with_member_id(sb(&id))
                                    .with_assignment(a.encode(3))
                            })
                            .collect()
                    } else {
                        Vec::new()
                    };
                    let req = SyncGroupRequest::default()
                        .with_group_id(GroupId(sb("g")))
                        .with_generation_id(self.generation)
                        .with_member_id(sb(&self.member_id))
                        .with_assignments(assignments);
                    let req = over_the_wire(&req, self.version_sync);
                    let core = wire::sync_group_request(&req, self.version_sync);
                    self.phase = Phase::Syncing(h.send(GroupRequest::Sync(core)));
                }
                Phase::Syncing(t) => {
                    let Some(GroupResponse::Sync(r)) = h.take(t) else {
                        return;
                    };
                    let resp: SyncGroupResponse = over_the_wire(
                        &wire::sync_group_response(&r, self.version_sync),
                        self.version_sync,
                    );
                    if resp.error_code != codes::NONE {
                        self.phase = Phase::Idle;
                        return;
                    }
                    let a = ConsumerAssignment::decode(&resp.assignment).expect("assignment");
                    self.assignment = a.partitions.get("t").cloned().unwrap_or_default();
                    self.phase = Phase::Stable;
                    self.last_heartbeat = h.now;
                }
                Phase::Stable => {
                    if h.now - self.last_heartbeat < 3_000 {
                        return;
                    }
                    self.last_heartbeat = h.now;
                    let req = HeartbeatRequest::default()
                        .with_group_id(GroupId(sb("g")))
                        .with_generation_id(self.generation)
                        .with_member_id(sb(&self.member_id));
                    let req = over_the_wire(&req, 4);
                    let t = h.send(GroupRequest::Heartbeat(wire::heartbeat_request(&req, 4)));
                    let Some(GroupResponse::Heartbeat(code)) = h.take(t) else {
                        panic!("heartbeat answered at once")
                    };
                    let resp: HeartbeatResponse = over_the_wire(&wire::heartbeat_response(code), 4);
                    if resp.error_code != codes::NONE {
                        self.assignment.clear();
                        self.phase = Phase::Idle;
                    }
                }
            }
        }
    }

    fn ownership(consumers: &[Consumer]) -> Option<Vec<usize>> {
        let gens: Vec<i32> = consumers
            .iter()
            .filter(|c| c.alive)
            .map(|c| c.generation)
            .collect();
        if consumers
            .iter()
            .any(|c| c.alive && !matches!(c.phase, Phase::Stable))
            || gens.windows(2).any(|w| w[0] != w[1])
        {
            return None;
        }
        let mut owner = vec![usize::MAX; 6];
        for (i, c) in consumers.iter().enumerate().filter(|(_, c)| c.alive) {
            for p in &c.assignment {
                assert_eq!(owner[*p as usize], usize::MAX, "partition {p} owned twice");
                owner[*p as usize] = i;
            }
        }
        Some(owner)
    }

    #[test]
    fn three_members_six_partitions_one_dies() {
        let mut h = Harness::with_config(CoordinatorConfig::default());
        // Mixed client versions: old (v3, no member-id round trip), v5, and the newest.
        let mut consumers = vec![
            Consumer::new(3, 2),
            Consumer::new(5, 3),
            Consumer::new(9, 5),
        ];
        let mut stable_at = None;
        for _ in 0..100 {
            for c in consumers.iter_mut() {
                c.step(&mut h);
            }
            if let Some(owner) = ownership(&consumers) {
                assert!(
                    owner.iter().all(|o| *o < 3),
                    "every partition owned: {owner:?}"
                );
                stable_at = Some(h.now);
                break;
            }
            h.advance(100);
        }
        let stable_at = stable_at.expect("group never stabilised");
        assert!(
            consumers.iter().all(|c| c.assignment.len() == 2),
            "range gives 2 each"
        );
        let generation = consumers[0].generation;
        assert_eq!(
            generation, 1,
            "the initial delay gathered everyone in one generation"
        );

        // Member 1 dies: no more heartbeats, no LeaveGroup.
        consumers[1].alive = false;
        let died_at = h.now;
        let mut moved_at = None;
        for _ in 0..400 {
            h.advance(100);
            for c in consumers.iter_mut() {
                c.step(&mut h);
            }
            if let Some(owner) = ownership(&consumers) {
                if consumers[0].generation > generation {
                    assert!(
                        owner.iter().all(|o| *o == 0 || *o == 2),
                        "survivors own all: {owner:?}"
                    );
                    moved_at = Some(h.now);
                    break;
                }
            }
        }
        let moved_at = moved_at.expect("partitions never moved");
        assert!(stable_at <= died_at);
        assert!(
            moved_at - died_at <= SESSION as i64 + 3_000 + 1_000,
            "moved after {} ms, session timeout is {SESSION} ms",
            moved_at - died_at
        );
        assert_eq!(
            consumers[0].assignment.len() + consumers[2].assignment.len(),
            6
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Transactional offset commits (TxnOffsetCommit and the transaction markers).

fn txn_req(
    group: &str,
    producer_id: i64,
    topic: &str,
    partition: i32,
    offset: i64,
) -> TxnOffsetCommit {
    TxnOffsetCommit {
        transactional_id: "txn".into(),
        group_id: group.into(),
        producer_id,
        producer_epoch: 0,
        generation_id: -1,
        member_id: String::new(),
        group_instance_id: None,
        partitions: vec![PartitionCommit {
            topic: topic.into(),
            partition,
            offset,
            leader_epoch: 3,
            metadata: Some("m".into()),
        }],
    }
}

impl Harness {
    fn txn_commit_with(&mut self, req: TxnOffsetCommit) -> Vec<PartitionError> {
        let t = self.send(GroupRequest::TxnOffsetCommit(req));
        match self.take(t) {
            Some(GroupResponse::TxnOffsetCommit(r)) => r,
            other => panic!("expected a TxnOffsetCommit response, got {other:?}"),
        }
    }

    fn txn_commit(
        &mut self,
        group: &str,
        producer_id: i64,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> ErrorCode {
        let r = self.txn_commit_with(txn_req(group, producer_id, topic, partition, offset));
        assert_eq!(r.len(), 1);
        r[0].2
    }

    /// The transaction coordinator writes a marker of `producer_id` to `group`'s partition.
    fn marker(&mut self, group: &str, producer_id: i64, commit: bool) {
        let p = self.c.partition_for(group);
        self.markers.push((self.log.len(), p, producer_id, commit));
        let actions = self.c.on_txn_marker(p, producer_id, commit);
        self.process(actions);
    }

    /// OffsetFetch with `require_stable`: (partition error, offset).
    fn fetch_stable(&mut self, group: &str, topic: &str, partition: i32) -> (ErrorCode, i64) {
        let t = self.send(GroupRequest::OffsetFetch(OffsetFetch {
            groups: vec![OffsetFetchGroup {
                group_id: group.into(),
                topics: Some(vec![(topic.into(), vec![partition])]),
            }],
            require_stable: true,
        }));
        match self.take(t) {
            Some(GroupResponse::OffsetFetch(r)) => {
                assert_eq!(r[0].error, codes::NONE, "the group-level error stays NONE");
                let o = &r[0].offsets[0];
                (o.error, o.offset)
            }
            other => panic!("expected fetch response, got {other:?}"),
        }
    }
}

#[test]
fn txn_offsets_are_pending_until_the_commit_marker() {
    let mut h = Harness::new();
    assert_eq!(h.commit("g", "", -1, "t", 0, 5), codes::NONE);
    assert_eq!(h.txn_commit("g", 7, "t", 0, 10), codes::NONE);
    // Written as one transactional batch of the producer, with the normal record format.
    assert_eq!(h.log_producer.last(), Some(&Some(7)));
    assert_eq!(
        h.fetch("g", "t", 0),
        (codes::NONE, 5),
        "invisible while pending"
    );
    assert_eq!(
        h.fetch_stable("g", "t", 0),
        (codes::UNSTABLE_OFFSET_COMMIT, -1)
    );
    assert_eq!(
        h.fetch_stable("g", "t", 1),
        (codes::NONE, -1),
        "other partitions are stable"
    );
    // A marker of another producer changes nothing.
    h.marker("g", 8, true);
    assert_eq!(h.fetch("g", "t", 0), (codes::NONE, 5));
    h.marker("g", 7, true);
    assert_eq!(h.fetch("g", "t", 0), (codes::NONE, 10));
    assert_eq!(h.fetch_stable("g", "t", 0), (codes::NONE, 10));
    // The committed value is what the request carried.
    let t = h.send(GroupRequest::OffsetFetch(OffsetFetch {
        groups: vec![OffsetFetchGroup {
            group_id: "g".into(),
            topics: None,
        }],
        require_stable: true,
    }));
    let Some(GroupResponse::OffsetFetch(r)) = h.take(t) else {
        panic!("no fetch answer")
    };
    assert_eq!(r[0].offsets.len(), 1);
    assert_eq!(
        (
            r[0].offsets[0].leader_epoch,
            r[0].offsets[0].metadata.as_str()
        ),
        (3, "m")
    );
    // The state survives a restart: the log replays to the same offsets.
    h.restart();
    assert_eq!(h.fetch_stable("g", "t", 0), (codes::NONE, 10));
}

#[test]
fn aborted_txn_offsets_are_dropped() {
    let mut h = Harness::new();
    assert_eq!(h.txn_commit("fresh", 7, "t", 0, 10), codes::NONE);
    assert_eq!(
        h.c.group_state("fresh"),
        Some(GroupState::Empty),
        "an unknown group is created empty, as Kafka does for transactional commits"
    );
    assert!(h.c.has_pending_txn_offsets("fresh", 7));
    h.marker("fresh", 7, false);
    assert!(!h.c.has_pending_txn_offsets("fresh", 7));
    assert_eq!(h.fetch("fresh", "t", 0), (codes::NONE, -1));
    assert_eq!(h.fetch_stable("fresh", "t", 0), (codes::NONE, -1));
    assert_eq!(
        h.c.group_state("fresh"),
        None,
        "nothing left: the group goes"
    );
    h.restart();
    assert_eq!(h.fetch_stable("fresh", "t", 0), (codes::NONE, -1));
    assert_eq!(h.c.group_state("fresh"), None);
}

#[test]
fn txn_offsets_and_plain_commits_are_ordered_by_their_place_in_the_log() {
    let mut h = Harness::new();
    // A plain commit written after the transactional one wins over it at the marker.
    assert_eq!(h.txn_commit("g", 7, "t", 0, 10), codes::NONE);
    assert_eq!(h.commit("g", "", -1, "t", 0, 20), codes::NONE);
    assert_eq!(h.fetch("g", "t", 0), (codes::NONE, 20));
    h.marker("g", 7, true);
    assert_eq!(
        h.fetch("g", "t", 0),
        (codes::NONE, 20),
        "the later plain commit stays"
    );
    // A plain commit written before the transactional one loses to it.
    assert_eq!(h.commit("g", "", -1, "t", 1, 30), codes::NONE);
    assert_eq!(h.txn_commit("g", 8, "t", 1, 40), codes::NONE);
    h.marker("g", 8, true);
    assert_eq!(h.fetch("g", "t", 1), (codes::NONE, 40));
    // A plain commit still being written when the marker lands was written after the
    // transactional batch: it must not be overwritten when it completes, nor lose.
    assert_eq!(h.txn_commit("g", 9, "t", 2, 50), codes::NONE);
    h.auto_complete = false;
    let t = h.send(GroupRequest::OffsetCommit(commit_req(
        "g", "", -1, "t", 2, 60,
    )));
    assert_eq!(
        h.fetch_stable("g", "t", 2),
        (codes::UNSTABLE_OFFSET_COMMIT, -1)
    );
    h.marker("g", 9, true);
    assert_eq!(h.fetch("g", "t", 2), (codes::NONE, 50));
    h.release_held();
    h.auto_complete = true;
    assert!(h.take(t).is_some());
    assert_eq!(h.fetch("g", "t", 2), (codes::NONE, 60));
    // And the replay agrees on every partition.
    h.restart();
    assert_eq!(h.fetch("g", "t", 0), (codes::NONE, 20));
    assert_eq!(h.fetch("g", "t", 1), (codes::NONE, 40));
    assert_eq!(h.fetch("g", "t", 2), (codes::NONE, 60));
}

#[test]
fn txn_offset_commit_checks_the_member_when_it_names_one() {
    let mut h = Harness::new();
    let (member, generation) = h.stable_single("g");
    let with = |generation: i32, member: &str, instance: Option<&str>| TxnOffsetCommit {
        generation_id: generation,
        member_id: member.into(),
        group_instance_id: instance.map(str::to_owned),
        ..txn_req("g", 7, "t", 0, 10)
    };
    let code = |r: Vec<PartitionError>| r[0].2;
    assert_eq!(
        code(h.txn_commit_with(with(generation + 1, &member, None))),
        codes::ILLEGAL_GENERATION
    );
    assert_eq!(
        code(h.txn_commit_with(with(generation, "stranger", None))),
        codes::UNKNOWN_MEMBER_ID
    );
    assert_eq!(
        code(h.txn_commit_with(with(generation, &member, Some("nobody")))),
        codes::UNKNOWN_MEMBER_ID
    );
    assert!(
        !h.c.has_pending_txn_offsets("g", 7),
        "refused commits leave nothing pending"
    );
    assert_eq!(
        code(h.txn_commit_with(with(generation, &member, None))),
        codes::NONE
    );
    // Before v3 there is no member: a Stable group still takes the commit (Kafka does not
    // ask a transactional commit for membership).
    assert_eq!(h.txn_commit("g", 8, "t", 1, 3), codes::NONE);
    assert!(h.c.has_pending_txn_offsets("g", 7) && h.c.has_pending_txn_offsets("g", 8));

    // A static member replaced by a newer instance is fenced.
    let t = h.join("s", "", Some("inst"), &["range"]);
    let first = h.join_result(t);
    assert_eq!(first.error, codes::NONE);
    let s = h.sync(
        "s",
        &first.member_id,
        first.generation_id,
        vec![(first.member_id.clone(), Bytes::from_static(b"A"))],
    );
    assert_eq!(h.sync_result(s).error, codes::NONE);
    let t = h.join("s", "", Some("inst"), &["range"]);
    let second = h.join_result(t);
    assert_ne!(second.member_id, first.member_id);
    let fenced = TxnOffsetCommit {
        generation_id: first.generation_id,
        member_id: first.member_id.clone(),
        group_instance_id: Some("inst".into()),
        ..txn_req("s", 7, "t", 0, 10)
    };
    assert_eq!(code(h.txn_commit_with(fenced)), codes::FENCED_INSTANCE_ID);
}

#[test]
fn txn_offset_commit_refusals_use_kafkas_codes() {
    let mut h = Harness::new();
    assert_eq!(h.txn_commit("", 7, "t", 0, 1), codes::INVALID_GROUP_ID);
    assert_eq!(h.txn_commit("g", -1, "t", 0, 1), codes::INVALID_REQUEST);
    let unknown = |t: &str, _p: i32| t != "gone";
    let t = h.send_with(
        GroupRequest::TxnOffsetCommit(txn_req("g", 7, "gone", 0, 1)),
        &unknown,
    );
    assert_eq!(
        h.take(t),
        Some(GroupResponse::TxnOffsetCommit(vec![(
            "gone".into(),
            0,
            codes::UNKNOWN_TOPIC_OR_PARTITION
        )]))
    );
    let mut big = txn_req("g", 7, "t", 0, 1);
    big.partitions[0].metadata = Some("x".repeat(h.c.config().offset_metadata_max_bytes + 1));
    big.partitions.push(PartitionCommit {
        topic: "t".into(),
        partition: 1,
        offset: 2,
        leader_epoch: -1,
        metadata: None,
    });
    let r = h.txn_commit_with(big);
    assert!(r.contains(&("t".into(), 0, codes::OFFSET_METADATA_TOO_LARGE)));
    assert!(r.contains(&("t".into(), 1, codes::NONE)));
    h.marker("g", 7, true);
    assert_eq!(h.fetch("g", "t", 0), (codes::NONE, -1));
    assert_eq!(h.fetch("g", "t", 1), (codes::NONE, 2));

    let p = h.c.partition_for("g");
    h.c.begin_loading(p);
    assert_eq!(
        h.txn_commit("g", 7, "t", 0, 1),
        codes::COORDINATOR_LOAD_IN_PROGRESS
    );
    h.c.unload(p);
    assert_eq!(h.txn_commit("g", 7, "t", 0, 1), codes::NOT_COORDINATOR);
}

#[test]
fn a_failed_txn_write_leaves_nothing_pending() {
    let mut h = Harness::new();
    h.fail_next_append = Some(AppendError::NotEnoughReplicas);
    assert_eq!(
        h.txn_commit("g", 7, "t", 0, 10),
        codes::COORDINATOR_NOT_AVAILABLE
    );
    assert!(!h.c.has_pending_txn_offsets("g", 7));
    assert_eq!(h.fetch_stable("g", "t", 0), (codes::NONE, -1));
    h.marker("g", 7, true);
    assert_eq!(h.fetch("g", "t", 0), (codes::NONE, -1));
}

#[test]
fn loading_replays_txn_batches_and_markers() {
    let mut h = Harness::new();
    assert_eq!(h.commit("g", "", -1, "t", 0, 1), codes::NONE);
    assert_eq!(h.commit("g", "", -1, "t", 1, 1), codes::NONE);
    assert_eq!(h.commit("g", "", -1, "t", 2, 1), codes::NONE);
    assert_eq!(h.txn_commit("g", 7, "t", 0, 10), codes::NONE);
    assert_eq!(h.txn_commit("g", 8, "t", 1, 20), codes::NONE);
    assert_eq!(h.txn_commit("g", 9, "t", 2, 30), codes::NONE);
    h.marker("g", 7, true);
    h.marker("g", 8, false);
    // Producer 9's marker is not in the log yet.
    h.restart();
    assert_eq!(h.fetch_stable("g", "t", 0), (codes::NONE, 10), "committed");
    assert_eq!(h.fetch_stable("g", "t", 1), (codes::NONE, 1), "aborted");
    assert_eq!(
        h.fetch_stable("g", "t", 2),
        (codes::UNSTABLE_OFFSET_COMMIT, -1),
        "still open after the load"
    );
    assert_eq!(h.fetch("g", "t", 2), (codes::NONE, 1));
    assert!(h.c.has_pending_txn_offsets("g", 9));
    h.marker("g", 9, true);
    assert_eq!(h.fetch_stable("g", "t", 2), (codes::NONE, 30));

    // A group that only ever had transactional offsets loads with them pending.
    assert_eq!(h.txn_commit("only", 11, "t", 0, 5), codes::NONE);
    h.restart();
    assert_eq!(h.c.group_state("only"), Some(GroupState::Empty));
    assert_eq!(
        h.fetch_stable("only", "t", 0),
        (codes::UNSTABLE_OFFSET_COMMIT, -1)
    );
    h.marker("only", 11, true);
    assert_eq!(h.fetch_stable("only", "t", 0), (codes::NONE, 5));
}

#[test]
fn a_marker_reported_while_the_partition_loads_applies_when_it_finishes() {
    let mut h = Harness::new();
    assert_eq!(h.txn_commit("g", 7, "t", 0, 10), codes::NONE);
    let p = h.c.partition_for("g");
    let log = h.log.clone();
    let producers = h.log_producer.clone();
    h.c.begin_loading(p);
    // The marker lands after what this load replays.
    assert!(h.c.on_txn_marker(p, 7, true).is_empty());
    for ((lp, r), pid) in log.iter().zip(&producers) {
        assert_eq!(*lp, p);
        match pid {
            Some(pid) => h.c.load_txn(p, *pid, &r.key, r.value.as_deref()).unwrap(),
            None => h.c.load(p, &r.key, r.value.as_deref()).unwrap(),
        }
    }
    assert!(h.c.has_pending_txn_offsets("g", 7));
    h.c.finish_loading(p, h.now);
    assert!(!h.c.has_pending_txn_offsets("g", 7));
    assert_eq!(h.fetch("g", "t", 0), (codes::NONE, 10));
}

#[test]
fn require_stable_also_waits_for_a_plain_commit_in_flight() {
    let mut h = Harness::new();
    assert_eq!(h.commit("g", "", -1, "t", 0, 1), codes::NONE);
    h.auto_complete = false;
    let t = h.send(GroupRequest::OffsetCommit(commit_req(
        "g", "", -1, "t", 0, 2,
    )));
    assert_eq!(
        h.fetch_stable("g", "t", 0),
        (codes::UNSTABLE_OFFSET_COMMIT, -1)
    );
    assert_eq!(h.fetch("g", "t", 0), (codes::NONE, 1));
    h.release_held();
    assert!(h.take(t).is_some());
    assert_eq!(h.fetch_stable("g", "t", 0), (codes::NONE, 2));
}
