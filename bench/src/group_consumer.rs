//! Consumers in a group (OMB's model: one subscription = one consumer group whose members
//! split the partitions). A member finds its coordinator, joins (with the member-id-required
//! round trip of JoinGroup v4+), and, when it is the leader, computes every member's
//! assignment with `sluice::group::assignor` (Kafka's range and roundrobin). It then fetches its
//! partitions from their committed offsets (or the run's start offsets when none) through the
//! shared [`Fetcher`], heartbeats, commits positions every second and before giving partitions
//! up (eager rebalancing, as the classic protocol's "range"/"roundrobin" assignors), rejoins
//! on REBALANCE_IN_PROGRESS / ILLEGAL_GENERATION / UNKNOWN_MEMBER_ID, and leaves at the end.
//!
//! The decisions (what an error code means, when timers are due, the leader's assignment,
//! which ownership intervals overlap) are plain functions tested without a broker; the member
//! task is the IO shell around them. One task runs both the fetch loop and the membership, so a
//! partition is never fetched after it was revoked.

use crate::client::connection::decode_response;
use crate::client::{ClientError, Connection};
use crate::clock;
use crate::consumer::{ConsumerResult, ConsumerSpec, Fetcher};
use crate::runner::Shared;
use bytes::Bytes;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ApiKey, FindCoordinatorRequest, GroupId, HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest,
    OffsetCommitRequest, OffsetFetchRequest, SyncGroupRequest, TopicName,
};
use kafka_protocol::protocol::{Request, StrBytes};
use serde::{Deserialize, Serialize};
use sluice::group::assignor::{
    assignor_by_name, AssignorMember, ConsumerAssignment, ConsumerSubscription,
};
use sluice::security::client::Security;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::watch;
use tokio::time::Instant;

/// The Java consumer's `session.timeout.ms` default.
pub const SESSION_TIMEOUT_MS: i32 = 10_000;
/// Heartbeat interval (`heartbeat.interval.ms`, a third of the session timeout).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3);
/// `auto.commit.interval.ms`.
pub const COMMIT_INTERVAL: Duration = Duration::from_secs(1);
/// How long a rebalance may wait for members to rejoin (`max.poll.interval.ms`). Shorter than
/// the Java default (5 min) so that a run stays bounded; members here rejoin within a fetch.
pub const REBALANCE_TIMEOUT_MS: i32 = 30_000;
/// Timeout of every group request except JoinGroup (which waits for the rebalance).
pub const GROUP_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before retrying after a retriable error.
const RETRY_BACKOFF: Duration = Duration::from_millis(200);
/// Join attempts (each bounded) before a member gives up for good.
const MAX_JOIN_ATTEMPTS: u32 = 50;

/// Versions of the group APIs this client speaks (JoinGroup v4+ for MEMBER_ID_REQUIRED; the
/// single-group OffsetFetch and the single-key FindCoordinator forms).
const FIND_COORDINATOR_VERSIONS: (i16, i16) = (0, 3);
const JOIN_GROUP_VERSIONS: (i16, i16) = (4, 8);
const SYNC_GROUP_VERSIONS: (i16, i16) = (3, 5);
const HEARTBEAT_VERSIONS: (i16, i16) = (0, 4);
const LEAVE_GROUP_VERSIONS: (i16, i16) = (0, 5);
const OFFSET_COMMIT_VERSIONS: (i16, i16) = (2, 8);
const OFFSET_FETCH_VERSIONS: (i16, i16) = (1, 7);

/// Kafka error codes the membership acts on.
pub mod codes {
    /// COORDINATOR_LOAD_IN_PROGRESS.
    pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    /// COORDINATOR_NOT_AVAILABLE.
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    /// NOT_COORDINATOR.
    pub const NOT_COORDINATOR: i16 = 16;
    /// ILLEGAL_GENERATION.
    pub const ILLEGAL_GENERATION: i16 = 22;
    /// UNKNOWN_MEMBER_ID.
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    /// REBALANCE_IN_PROGRESS.
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    /// MEMBER_ID_REQUIRED.
    pub const MEMBER_ID_REQUIRED: i16 = 79;
}

/// What a member does about an error code of a group request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupAction {
    /// No error.
    Proceed,
    /// Transient: try the same request again after a pause.
    Retry,
    /// The coordinator moved or is unavailable: find it again.
    FindCoordinator,
    /// Rejoin; `commit_first` when the generation is still valid (a rebalance is starting),
    /// so positions can be committed before the partitions are given up.
    Rejoin {
        /// Commit positions before revoking.
        commit_first: bool,
    },
    /// The coordinator forgot this member: drop the member id and join as a new member.
    ResetMemberAndRejoin,
    /// Anything else: report it.
    Fail,
}

/// Maps a group API error code to the member's next action (as the Java consumer's
/// coordinator does for Heartbeat, SyncGroup and OffsetCommit).
pub fn classify(code: i16) -> GroupAction {
    use codes::*;
    match code {
        0 => GroupAction::Proceed,
        COORDINATOR_LOAD_IN_PROGRESS => GroupAction::Retry,
        COORDINATOR_NOT_AVAILABLE | NOT_COORDINATOR => GroupAction::FindCoordinator,
        REBALANCE_IN_PROGRESS => GroupAction::Rejoin { commit_first: true },
        ILLEGAL_GENERATION => GroupAction::Rejoin {
            commit_first: false,
        },
        UNKNOWN_MEMBER_ID => GroupAction::ResetMemberAndRejoin,
        _ => GroupAction::Fail,
    }
}

/// The member's periodic work: heartbeats and auto-commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// When the next heartbeat is due.
    pub heartbeat_at: Instant,
    /// When the next auto-commit is due.
    pub commit_at: Instant,
}

impl Timers {
    /// Timers of a member that has just joined at `now`.
    pub fn started(now: Instant) -> Self {
        Timers {
            heartbeat_at: now + HEARTBEAT_INTERVAL,
            commit_at: now + COMMIT_INTERVAL,
        }
    }

    /// The earliest deadline: the fetch loop must come back to the membership by then.
    pub fn next_deadline(&self) -> Instant {
        self.heartbeat_at.min(self.commit_at)
    }

    /// Whether a heartbeat is due at `now`; if so the next one is scheduled.
    pub fn heartbeat_due(&mut self, now: Instant) -> bool {
        if now < self.heartbeat_at {
            return false;
        }
        self.heartbeat_at = now + HEARTBEAT_INTERVAL;
        true
    }

    /// Whether an auto-commit is due at `now`; if so the next one is scheduled.
    pub fn commit_due(&mut self, now: Instant) -> bool {
        if now < self.commit_at {
            return false;
        }
        self.commit_at = now + COMMIT_INTERVAL;
        true
    }
}

/// Why a group operation failed.
#[derive(Debug, Error)]
pub enum GroupError {
    /// The connection or the encoding failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The coordinator answered with an error code.
    #[error("{api} for group {group}: kafka error code {code}")]
    Kafka {
        /// The API.
        api: &'static str,
        /// The group.
        group: String,
        /// The error code.
        code: i16,
    },
    /// Subscription or assignment bytes could not be decoded or assigned.
    #[error("group {group}: {message}")]
    Protocol {
        /// The group.
        group: String,
        /// What went wrong.
        message: String,
    },
    /// The run is stopping.
    #[error("stopped")]
    Stopped,
}

/// A member in a JoinGroup response, as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedMember {
    /// Member id.
    pub member_id: String,
    /// Static instance id.
    pub group_instance_id: Option<String>,
    /// Subscription bytes (ConsumerProtocol).
    pub metadata: Bytes,
}

/// The leader's SyncGroup assignments: decodes every member's subscription, runs `protocol`
/// (the assignor the coordinator chose) over the partition counts, and encodes each member's
/// assignment at the highest subscription version any member used (capped at 3).
pub fn leader_assignments(
    protocol: &str,
    members: &[JoinedMember],
    partitions_per_topic: &BTreeMap<String, i32>,
) -> Result<Vec<(String, Bytes)>, String> {
    let assignor =
        assignor_by_name(protocol).ok_or_else(|| format!("unknown assignor {protocol:?}"))?;
    let mut version = 0i16;
    let mut input = Vec::with_capacity(members.len());
    for m in members {
        if m.metadata.len() >= 2 {
            version = version.max(i16::from_be_bytes([m.metadata[0], m.metadata[1]]));
        }
        let subscription = ConsumerSubscription::decode(&m.metadata)
            .map_err(|e| format!("subscription of {}: {e}", m.member_id))?;
        input.push(AssignorMember {
            member_id: m.member_id.clone(),
            group_instance_id: m.group_instance_id.clone(),
            subscription,
        });
    }
    let assigned = assignor.assign(partitions_per_topic, &input);
    Ok(members
        .iter()
        .map(|m| {
            let a = assigned.get(&m.member_id).cloned().unwrap_or_default();
            (m.member_id.clone(), a.encode(version.clamp(0, 3)))
        })
        .collect())
}

/// This member's partitions of `topic` in SyncGroup assignment bytes.
pub fn assigned_partitions(assignment: &[u8], topic: &str) -> Result<Vec<i32>, String> {
    let a = ConsumerAssignment::decode(assignment).map_err(|e| e.to_string())?;
    Ok(a.partitions.get(topic).cloned().unwrap_or_default())
}

/// Positions that moved since the last successful commit, sorted by partition.
pub fn offsets_to_commit(
    positions: &HashMap<i32, i64>,
    committed: &HashMap<i32, i64>,
) -> Vec<(i32, i64)> {
    let mut out: Vec<(i32, i64)> = positions
        .iter()
        .filter(|(p, o)| committed.get(p) != Some(o))
        .map(|(p, o)| (*p, *o))
        .collect();
    out.sort_unstable();
    out
}

/// One stretch of time during which a member owned (fetched) a partition.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ownership {
    /// Consumer index of the member.
    pub member: u32,
    /// Group generation of the assignment.
    pub generation: i32,
    /// Partition.
    pub partition: i32,
    /// When fetching started (host clock, microseconds).
    pub from_us: u64,
    /// When the partition was revoked and its in-flight fetches dropped.
    pub to_us: u64,
    /// First offset read.
    pub start_offset: i64,
    /// Position at revocation.
    pub end_offset: i64,
}

/// Pairs of intervals in which two different members owned the same partition at the same
/// time, described for the report; empty when every partition had one owner at a time.
pub fn overlapping_ownership(intervals: &[Ownership]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, a) in intervals.iter().enumerate() {
        for b in &intervals[i + 1..] {
            if a.partition == b.partition
                && a.member != b.member
                && a.from_us < b.to_us
                && b.from_us < a.to_us
            {
                out.push(format!(
                    "partition {} owned by member {} (generation {}) and member {} (generation {}) at once",
                    a.partition, a.member, a.generation, b.member, b.generation
                ));
            }
        }
    }
    out
}

/// What a run reports about one consumer group (in `summary.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct GroupReport {
    /// Group id.
    pub group_id: String,
    /// Topic subscribed.
    pub topic: String,
    /// Members started.
    pub members: u32,
    /// Generation all members had synced at when producers started (-1 if never stable).
    pub stable_generation: i32,
    /// Distinct generations in which some member owned partitions.
    pub generations: Vec<i32>,
    /// Every ownership interval, by partition then time.
    pub ownership: Vec<Ownership>,
    /// Partitions no member ever owned.
    pub never_owned: Vec<i32>,
    /// Overlapping ownerships (two members fetching one partition at once); empty when each
    /// partition was consumed by exactly one member at a time.
    pub overlaps: Vec<String>,
}

impl GroupReport {
    /// The report of a group from its shared state after the members stopped.
    pub fn of(
        group_id: &str,
        topic: &str,
        members: u32,
        partitions: i32,
        stable_generation: Option<i32>,
        shared: &GroupShared,
    ) -> Self {
        let mut ownership = shared.ownership();
        ownership.sort_by_key(|o| (o.partition, o.from_us, o.member));
        let mut generations: Vec<i32> = ownership.iter().map(|o| o.generation).collect();
        generations.sort_unstable();
        generations.dedup();
        let never_owned = (0..partitions)
            .filter(|p| !ownership.iter().any(|o| o.partition == *p))
            .collect();
        GroupReport {
            group_id: group_id.to_string(),
            topic: topic.to_string(),
            members,
            stable_generation: stable_generation.unwrap_or(-1),
            generations,
            overlaps: overlapping_ownership(&ownership),
            ownership,
            never_owned,
        }
    }
}

/// What the members of one group share in the harness: who synced at which generation (for
/// the runner's wait until the group is stable), how far each partition has been read (to
/// tell replays after a rebalance from duplicate deliveries), and the ownership log.
#[derive(Debug, Default)]
pub struct GroupShared {
    synced: Mutex<HashMap<u32, i32>>,
    read_up_to: Mutex<HashMap<i32, i64>>,
    ownership: Mutex<Vec<Ownership>>,
}

impl GroupShared {
    /// The generation all `members` members are synced at, if they agree.
    pub fn stable_generation(&self, members: usize) -> Option<i32> {
        let g = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        let first = *g.values().next()?;
        (g.len() == members && g.values().all(|x| *x == first)).then_some(first)
    }

    /// Every ownership interval closed so far.
    pub fn ownership(&self) -> Vec<Ownership> {
        self.ownership
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn synced_at(&self, member: u32, generation: Option<i32>) {
        let mut g = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        match generation {
            Some(generation) => g.insert(member, generation),
            None => g.remove(&member),
        };
    }

    fn read_up_to(&self, partition: i32) -> i64 {
        let g = self.read_up_to.lock().unwrap_or_else(|e| e.into_inner());
        g.get(&partition).copied().unwrap_or(-1)
    }

    fn close(&self, o: Ownership) {
        {
            let mut g = self.read_up_to.lock().unwrap_or_else(|e| e.into_inner());
            let e = g.entry(o.partition).or_insert(-1);
            *e = (*e).max(o.end_offset);
        }
        self.ownership
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(o);
    }
}

/// One group member of a run.
pub struct GroupConsumerSpec {
    /// Fetch settings; `leaders` covers every partition of the topic, `start_offsets` empty.
    pub fetch: ConsumerSpec,
    /// Bootstrap address (for FindCoordinator).
    pub bootstrap: String,
    /// Group id (one per subscription).
    pub group_id: String,
    /// Partitions of the topic.
    pub partition_count: i32,
    /// Where to start a partition that has no committed offset (the run's start offsets).
    pub default_offsets: HashMap<i32, i64>,
    /// Preferred assignor ("range" or "roundrobin").
    pub assignor: String,
}

struct Member {
    index: u32,
    client_id: String,
    bootstrap: String,
    security: Security,
    group_id: String,
    topic: String,
    partition_count: i32,
    default_offsets: HashMap<i32, i64>,
    protocols: Vec<&'static str>,
    coordinator: Option<Connection>,
    member_id: String,
    generation: i32,
    joined: bool,
    committed: HashMap<i32, i64>,
    owned: Vec<Ownership>,
    timers: Timers,
    fetcher: Fetcher,
    group: Arc<GroupShared>,
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

impl Member {
    fn group_id(&self) -> GroupId {
        GroupId(str_bytes(&self.group_id))
    }

    fn kafka(&self, api: &'static str, code: i16) -> GroupError {
        GroupError::Kafka {
            api,
            group: self.group_id.clone(),
            code,
        }
    }

    fn protocol_error(&self, message: String) -> GroupError {
        GroupError::Protocol {
            group: self.group_id.clone(),
            message,
        }
    }

    /// Sends `req` to the coordinator and waits at most `timeout`, or until `stop` changes.
    async fn call<R: Request>(
        &mut self,
        req: &R,
        name: &'static str,
        versions: (i16, i16),
        timeout: Duration,
        stop: Option<&mut watch::Receiver<bool>>,
    ) -> Result<R::Response, GroupError> {
        let conn = self.coordinator_conn().await?;
        let addr = conn.addr().to_string();
        let key = ApiKey::try_from(R::KEY).map_err(|_| ClientError::Protocol {
            addr: addr.clone(),
            message: format!("unknown api key {}", R::KEY),
        })?;
        let version = conn.versions().pick(&addr, key, name, versions)?;
        let fut = match conn.send(req, version, true).await {
            Ok(Some(f)) => f,
            Ok(None) => return Err(self.drop_coordinator(ClientError::Closed(addr))),
            Err(e) => return Err(self.drop_coordinator(e)),
        };
        let body = match stop {
            Some(stop) => tokio::select! {
                r = fut.wait(timeout) => r,
                _ = stop.changed() => {
                    // The coordinator still owes this response (a parked JoinGroup); a fresh
                    // connection keeps the LeaveGroup that follows from queueing behind it.
                    self.coordinator = None;
                    return Err(GroupError::Stopped);
                }
            },
            None => fut.wait(timeout).await,
        };
        body.and_then(|mut b| decode_response::<R>(&addr, &mut b, version))
            .map_err(|e| self.drop_coordinator(e))
    }

    /// Forgets the coordinator connection after `e`: one that failed, timed out or garbled a
    /// response is not reused.
    fn drop_coordinator(&mut self, e: ClientError) -> GroupError {
        self.coordinator = None;
        GroupError::Client(e)
    }

    /// The negotiated version the coordinator connection will use for `api`.
    fn version_of(&self, api: ApiKey, name: &'static str, versions: (i16, i16)) -> i16 {
        self.coordinator
            .as_ref()
            .and_then(|c| c.versions().pick(c.addr(), api, name, versions).ok())
            .unwrap_or(versions.1)
    }

    async fn coordinator_conn(&mut self) -> Result<&mut Connection, GroupError> {
        if self.coordinator.is_none() {
            let addr = self.find_coordinator().await?;
            let c = Connection::connect(&addr, &self.client_id, &self.security).await?;
            self.coordinator = Some(c);
        }
        self.coordinator
            .as_mut()
            .ok_or_else(|| GroupError::Client(ClientError::Closed(self.group_id.clone())))
    }

    async fn find_coordinator(&mut self) -> Result<String, GroupError> {
        let mut conn =
            Connection::connect(&self.bootstrap, &self.client_id, &self.security).await?;
        let addr = conn.addr().to_string();
        let version = conn.versions().pick(
            &addr,
            ApiKey::FindCoordinator,
            "FindCoordinator",
            FIND_COORDINATOR_VERSIONS,
        )?;
        let req = FindCoordinatorRequest::default().with_key(str_bytes(&self.group_id));
        let resp = conn
            .request::<FindCoordinatorRequest>(&req, version, GROUP_REQUEST_TIMEOUT)
            .await?;
        if resp.error_code != 0 {
            return Err(self.kafka("FindCoordinator", resp.error_code));
        }
        Ok(format!("{}:{}", resp.host.as_str(), resp.port))
    }

    fn join_request(&self) -> JoinGroupRequest {
        let metadata = ConsumerSubscription::new([self.topic.clone()]).encode(0);
        JoinGroupRequest::default()
            .with_group_id(self.group_id())
            .with_session_timeout_ms(SESSION_TIMEOUT_MS)
            .with_rebalance_timeout_ms(REBALANCE_TIMEOUT_MS)
            .with_member_id(str_bytes(&self.member_id))
            .with_protocol_type(StrBytes::from_static_str("consumer"))
            .with_protocols(
                self.protocols
                    .iter()
                    .map(|p| {
                        JoinGroupRequestProtocol::default()
                            .with_name(StrBytes::from_static_str(p))
                            .with_metadata(metadata.clone())
                    })
                    .collect(),
            )
    }

    /// Joins and syncs until this member has an assignment, then starts fetching it.
    async fn join(&mut self, stop: &mut watch::Receiver<bool>) -> Result<(), GroupError> {
        debug_assert!(!self.joined && self.fetcher.positions().is_empty());
        self.group.synced_at(self.index, None);
        for _ in 0..MAX_JOIN_ATTEMPTS {
            if *stop.borrow() {
                return Err(GroupError::Stopped);
            }
            match self.join_once(stop).await {
                Ok(()) => return Ok(()),
                Err(GroupError::Stopped) => return Err(GroupError::Stopped),
                // A broker without consumer groups will not grow them by retrying.
                Err(e @ GroupError::Client(ClientError::UnsupportedApi { .. })) => return Err(e),
                Err(e) => {
                    if let GroupError::Kafka { code, .. } = e {
                        match classify(code) {
                            GroupAction::FindCoordinator => self.coordinator = None,
                            GroupAction::ResetMemberAndRejoin => self.member_id.clear(),
                            GroupAction::Fail => return Err(e),
                            _ => {}
                        }
                    }
                    tracing::debug!(group = %self.group_id, error = %e, "join attempt failed");
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY_BACKOFF) => {}
                        _ = stop.changed() => return Err(GroupError::Stopped),
                    }
                }
            }
        }
        Err(self.protocol_error(format!(
            "no assignment after {MAX_JOIN_ATTEMPTS} join attempts"
        )))
    }

    async fn join_once(&mut self, stop: &mut watch::Receiver<bool>) -> Result<(), GroupError> {
        let join_timeout =
            Duration::from_millis(REBALANCE_TIMEOUT_MS as u64) + GROUP_REQUEST_TIMEOUT;
        let req = self.join_request();
        let mut resp = self
            .call(
                &req,
                "JoinGroup",
                JOIN_GROUP_VERSIONS,
                join_timeout,
                Some(stop),
            )
            .await?;
        if resp.error_code == codes::MEMBER_ID_REQUIRED {
            // KIP-394: the coordinator names the member; join again with that id.
            self.member_id = resp.member_id.to_string();
            let req = self.join_request();
            resp = self
                .call(
                    &req,
                    "JoinGroup",
                    JOIN_GROUP_VERSIONS,
                    join_timeout,
                    Some(stop),
                )
                .await?;
        }
        if resp.error_code != 0 {
            return Err(self.kafka("JoinGroup", resp.error_code));
        }
        self.member_id = resp.member_id.to_string();
        self.generation = resp.generation_id;
        let protocol = resp
            .protocol_name
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let assignments = if resp.leader == resp.member_id {
            let members: Vec<JoinedMember> = resp
                .members
                .iter()
                .map(|m| JoinedMember {
                    member_id: m.member_id.to_string(),
                    group_instance_id: m.group_instance_id.as_ref().map(|s| s.to_string()),
                    metadata: m.metadata.clone(),
                })
                .collect();
            let counts = BTreeMap::from([(self.topic.clone(), self.partition_count)]);
            leader_assignments(&protocol, &members, &counts)
                .map_err(|m| self.protocol_error(m))?
                .into_iter()
                .map(|(member_id, assignment)| {
                    SyncGroupRequestAssignment::default()
                        .with_member_id(str_bytes(&member_id))
                        .with_assignment(assignment)
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut sync = SyncGroupRequest::default()
            .with_group_id(self.group_id())
            .with_generation_id(self.generation)
            .with_member_id(str_bytes(&self.member_id))
            .with_assignments(assignments);
        if self.version_of(ApiKey::SyncGroup, "SyncGroup", SYNC_GROUP_VERSIONS) >= 5 {
            sync = sync
                .with_protocol_type(Some(StrBytes::from_static_str("consumer")))
                .with_protocol_name(Some(str_bytes(&protocol)));
        }
        let resp = self
            .call(
                &sync,
                "SyncGroup",
                SYNC_GROUP_VERSIONS,
                join_timeout,
                Some(stop),
            )
            .await?;
        if resp.error_code != 0 {
            return Err(self.kafka("SyncGroup", resp.error_code));
        }
        let partitions = assigned_partitions(&resp.assignment, &self.topic)
            .map_err(|m| self.protocol_error(m))?;
        let committed = self.fetch_committed(&partitions).await?;
        let now_us = clock::now_micros();
        self.committed.clear();
        for p in partitions {
            let start = match committed.get(&p) {
                Some(o) if *o >= 0 => {
                    self.committed.insert(p, *o);
                    *o
                }
                _ => self.default_offsets.get(&p).copied().unwrap_or(0),
            };
            let replay_below = self.group.read_up_to(p);
            self.fetcher.assign(p, start, replay_below);
            self.owned.push(Ownership {
                member: self.index,
                generation: self.generation,
                partition: p,
                from_us: now_us,
                to_us: now_us,
                start_offset: start,
                end_offset: start,
            });
        }
        tracing::debug!(
            group = %self.group_id, member = %self.member_id, generation = self.generation,
            partitions = ?self.owned.iter().map(|o| o.partition).collect::<Vec<_>>(),
            "joined"
        );
        self.joined = true;
        self.timers = Timers::started(Instant::now());
        self.group.synced_at(self.index, Some(self.generation));
        Ok(())
    }

    async fn fetch_committed(
        &mut self,
        partitions: &[i32],
    ) -> Result<HashMap<i32, i64>, GroupError> {
        if partitions.is_empty() {
            return Ok(HashMap::new());
        }
        let req = OffsetFetchRequest::default()
            .with_group_id(self.group_id())
            .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                .with_name(TopicName(str_bytes(&self.topic)))
                .with_partition_indexes(partitions.to_vec())]));
        let resp = self
            .call(
                &req,
                "OffsetFetch",
                OFFSET_FETCH_VERSIONS,
                GROUP_REQUEST_TIMEOUT,
                None,
            )
            .await?;
        if resp.error_code != 0 {
            return Err(self.kafka("OffsetFetch", resp.error_code));
        }
        let mut out = HashMap::new();
        for t in resp.topics {
            for p in t.partitions {
                if p.error_code != 0 {
                    return Err(self.kafka("OffsetFetch", p.error_code));
                }
                out.insert(p.partition_index, p.committed_offset);
            }
        }
        Ok(out)
    }

    /// Commits the positions that moved. Returns the action the first error code asks for.
    async fn commit(&mut self) -> Result<GroupAction, GroupError> {
        let todo = offsets_to_commit(self.fetcher.positions(), &self.committed);
        if todo.is_empty() || !self.joined {
            return Ok(GroupAction::Proceed);
        }
        let req = OffsetCommitRequest::default()
            .with_group_id(self.group_id())
            .with_generation_id_or_member_epoch(self.generation)
            .with_member_id(str_bytes(&self.member_id))
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName(str_bytes(&self.topic)))
                .with_partitions(
                    todo.iter()
                        .map(|(p, o)| {
                            OffsetCommitRequestPartition::default()
                                .with_partition_index(*p)
                                .with_committed_offset(*o)
                        })
                        .collect(),
                )]);
        let resp = self
            .call(
                &req,
                "OffsetCommit",
                OFFSET_COMMIT_VERSIONS,
                GROUP_REQUEST_TIMEOUT,
                None,
            )
            .await?;
        let mut action = GroupAction::Proceed;
        let committed: HashMap<i32, i64> = todo.into_iter().collect();
        for t in resp.topics {
            for p in t.partitions {
                if p.error_code == 0 {
                    if let Some(o) = committed.get(&p.partition_index) {
                        self.committed.insert(p.partition_index, *o);
                    }
                } else if action == GroupAction::Proceed {
                    action = classify(p.error_code);
                    if action == GroupAction::Fail {
                        self.fetcher.note(format!(
                            "OffsetCommit partition {}: kafka error code {}",
                            p.partition_index, p.error_code
                        ));
                    }
                }
            }
        }
        Ok(action)
    }

    async fn heartbeat(&mut self) -> Result<GroupAction, GroupError> {
        let req = HeartbeatRequest::default()
            .with_group_id(self.group_id())
            .with_generation_id(self.generation)
            .with_member_id(str_bytes(&self.member_id));
        let resp = self
            .call(
                &req,
                "Heartbeat",
                HEARTBEAT_VERSIONS,
                GROUP_REQUEST_TIMEOUT,
                None,
            )
            .await?;
        let action = classify(resp.error_code);
        if action == GroupAction::Fail {
            self.fetcher
                .note(format!("Heartbeat: kafka error code {}", resp.error_code));
        }
        Ok(action)
    }

    /// Gives every partition up (eager rebalancing): optionally commits first, then stops
    /// fetching and closes the ownership intervals.
    async fn revoke(&mut self, commit_first: bool) {
        if commit_first && self.joined {
            match self.commit().await {
                Ok(GroupAction::Proceed) => {}
                Ok(other) => {
                    tracing::debug!(group = %self.group_id, ?other, "commit on revoke refused")
                }
                Err(e) => self.fetcher.note(format!("commit on revoke: {e}")),
            }
        }
        let positions = self.fetcher.revoke_all();
        let now_us = clock::now_micros();
        for mut o in self.owned.drain(..) {
            o.to_us = now_us;
            o.end_offset = positions
                .get(&o.partition)
                .copied()
                .unwrap_or(o.start_offset);
            self.group.close(o);
        }
        self.joined = false;
        self.group.synced_at(self.index, None);
    }

    /// Acts on what a heartbeat or commit asked for.
    async fn act(&mut self, action: GroupAction) {
        match action {
            GroupAction::Proceed | GroupAction::Retry => {}
            GroupAction::FindCoordinator => self.coordinator = None,
            GroupAction::Rejoin { commit_first } => self.revoke(commit_first).await,
            GroupAction::ResetMemberAndRejoin => {
                self.revoke(false).await;
                self.member_id.clear();
            }
            GroupAction::Fail => {}
        }
    }

    async fn leave(&mut self) {
        if self.member_id.is_empty() {
            return;
        }
        let version = self.version_of(ApiKey::LeaveGroup, "LeaveGroup", LEAVE_GROUP_VERSIONS);
        let mut req = LeaveGroupRequest::default().with_group_id(self.group_id());
        req = if version >= 3 {
            req.with_members(vec![
                MemberIdentity::default().with_member_id(str_bytes(&self.member_id))
            ])
        } else {
            req.with_member_id(str_bytes(&self.member_id))
        };
        match self
            .call(
                &req,
                "LeaveGroup",
                LEAVE_GROUP_VERSIONS,
                GROUP_REQUEST_TIMEOUT,
                None,
            )
            .await
        {
            Ok(r) if r.error_code != 0 => self
                .fetcher
                .note(format!("LeaveGroup: kafka error code {}", r.error_code)),
            Ok(_) => {}
            Err(e) => self.fetcher.note(format!("LeaveGroup: {e}")),
        }
    }
}

/// Runs one group member until `stop` turns true: join, fetch, heartbeat, commit, rejoin when
/// told to, and at the end commit, give the partitions up and leave the group. Every request
/// is bounded; JoinGroup and SyncGroup also end when `stop` changes.
pub async fn run_group_consumer(
    spec: GroupConsumerSpec,
    shared: Arc<Shared>,
    group: Arc<GroupShared>,
    mut stop: watch::Receiver<bool>,
) -> ConsumerResult {
    let index = spec.fetch.consumer;
    let topic = spec.fetch.topic.clone();
    let preferred = if spec.assignor == "roundrobin" {
        vec!["roundrobin", "range"]
    } else {
        vec!["range", "roundrobin"]
    };
    let mut m = Member {
        index,
        client_id: format!("sluice-bench-c{index}"),
        bootstrap: spec.bootstrap,
        security: spec.fetch.security.clone(),
        group_id: spec.group_id,
        topic,
        partition_count: spec.partition_count,
        default_offsets: spec.default_offsets,
        protocols: preferred,
        coordinator: None,
        member_id: String::new(),
        generation: -1,
        joined: false,
        committed: HashMap::new(),
        owned: Vec::new(),
        timers: Timers::started(Instant::now()),
        fetcher: Fetcher::new(spec.fetch, shared),
        group,
    };
    while !*stop.borrow() {
        if !m.joined {
            match m.join(&mut stop).await {
                Ok(()) => {}
                Err(GroupError::Stopped) => break,
                Err(e) => {
                    m.fetcher.note(format!("joining: {e}"));
                    break;
                }
            }
        }
        let until = m.timers.next_deadline();
        m.fetcher.step(until, &mut stop).await;
        let now = Instant::now();
        if m.timers.heartbeat_due(now) {
            match m.heartbeat().await {
                Ok(a) => m.act(a).await,
                Err(e) => {
                    tracing::debug!(group = %m.group_id, error = %e, "heartbeat failed");
                }
            }
        }
        if m.joined && m.timers.commit_due(now) {
            match m.commit().await {
                Ok(a) => m.act(a).await,
                Err(e) => tracing::debug!(group = %m.group_id, error = %e, "commit failed"),
            }
        }
    }
    m.revoke(true).await;
    m.leave().await;
    m.fetcher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, topics: &[&str], version: i16) -> JoinedMember {
        JoinedMember {
            member_id: id.into(),
            group_instance_id: None,
            metadata: ConsumerSubscription::new(topics.iter().copied()).encode(version),
        }
    }

    #[test]
    fn error_codes_map_to_the_consumer_actions() {
        assert_eq!(classify(0), GroupAction::Proceed);
        assert_eq!(
            classify(codes::REBALANCE_IN_PROGRESS),
            GroupAction::Rejoin { commit_first: true }
        );
        assert_eq!(
            classify(codes::ILLEGAL_GENERATION),
            GroupAction::Rejoin {
                commit_first: false
            }
        );
        assert_eq!(
            classify(codes::UNKNOWN_MEMBER_ID),
            GroupAction::ResetMemberAndRejoin
        );
        assert_eq!(
            classify(codes::NOT_COORDINATOR),
            GroupAction::FindCoordinator
        );
        assert_eq!(
            classify(codes::COORDINATOR_NOT_AVAILABLE),
            GroupAction::FindCoordinator
        );
        assert_eq!(
            classify(codes::COORDINATOR_LOAD_IN_PROGRESS),
            GroupAction::Retry
        );
        assert_eq!(classify(29), GroupAction::Fail);
    }

    #[test]
    fn timers_fire_on_schedule_and_rearm() {
        let t0 = Instant::now();
        let mut t = Timers::started(t0);
        assert_eq!(t.next_deadline(), t0 + COMMIT_INTERVAL);
        assert!(!t.commit_due(t0));
        assert!(t.commit_due(t0 + COMMIT_INTERVAL));
        assert!(!t.commit_due(t0 + COMMIT_INTERVAL));
        assert!(!t.heartbeat_due(t0 + Duration::from_secs(2)));
        assert!(t.heartbeat_due(t0 + HEARTBEAT_INTERVAL));
        assert_eq!(t.heartbeat_at, t0 + HEARTBEAT_INTERVAL * 2);
        assert_eq!(t.next_deadline(), t0 + COMMIT_INTERVAL * 2);
    }

    #[test]
    fn leader_splits_partitions_with_the_chosen_assignor() {
        let members = [member("m-b", &["t"], 1), member("m-a", &["t"], 0)];
        let counts = BTreeMap::from([("t".to_string(), 4)]);
        let range = leader_assignments("range", &members, &counts).unwrap();
        // Range sorts by member id: m-a gets 0,1, m-b gets 2,3; one entry per member in order.
        assert_eq!(range[0].0, "m-b");
        assert_eq!(assigned_partitions(&range[0].1, "t").unwrap(), vec![2, 3]);
        assert_eq!(assigned_partitions(&range[1].1, "t").unwrap(), vec![0, 1]);
        // Encoded at the highest version a member used.
        assert_eq!(&range[0].1[..2], &[0, 1]);
        let rr = leader_assignments("roundrobin", &members, &counts).unwrap();
        assert_eq!(assigned_partitions(&rr[1].1, "t").unwrap(), vec![0, 2]);
        assert_eq!(assigned_partitions(&rr[0].1, "t").unwrap(), vec![1, 3]);
        assert!(leader_assignments("sticky", &members, &counts).is_err());
        let bad = [JoinedMember {
            member_id: "x".into(),
            group_instance_id: None,
            metadata: Bytes::from_static(&[0]),
        }];
        assert!(leader_assignments("range", &bad, &counts).is_err());
        // A member left without partitions gets an empty assignment, not none.
        let three = [
            member("a", &["t"], 0),
            member("b", &["t"], 0),
            member("c", &["t"], 0),
        ];
        let two = BTreeMap::from([("t".to_string(), 2)]);
        let a = leader_assignments("range", &three, &two).unwrap();
        assert_eq!(a.len(), 3);
        assert!(assigned_partitions(&a[2].1, "t").unwrap().is_empty());
        assert!(assigned_partitions(&[], "t").unwrap().is_empty());
        assert!(assigned_partitions(&[0, 0, 0], "t").is_err());
    }

    #[test]
    fn only_moved_positions_are_committed() {
        let positions = HashMap::from([(0, 10), (1, 5), (2, 7)]);
        let committed = HashMap::from([(0, 10), (1, 4)]);
        assert_eq!(
            offsets_to_commit(&positions, &committed),
            vec![(1, 5), (2, 7)]
        );
        assert!(offsets_to_commit(&HashMap::new(), &committed).is_empty());
    }

    fn own(member: u32, partition: i32, from_us: u64, to_us: u64) -> Ownership {
        Ownership {
            member,
            generation: 1,
            partition,
            from_us,
            to_us,
            start_offset: 0,
            end_offset: 0,
        }
    }

    #[test]
    fn overlapping_owners_are_reported() {
        // Hand-over at t=10: no overlap; same member twice: no overlap.
        let ok = [
            own(0, 0, 0, 10),
            own(1, 0, 10, 20),
            own(1, 0, 20, 30),
            own(0, 1, 0, 30),
        ];
        assert!(overlapping_ownership(&ok).is_empty());
        let bad = [own(0, 0, 0, 11), own(1, 0, 10, 20), own(1, 1, 0, 5)];
        let o = overlapping_ownership(&bad);
        assert_eq!(o.len(), 1);
        assert!(o[0].contains("partition 0"), "{o:?}");
    }

    #[test]
    fn group_is_stable_when_every_member_synced_one_generation() {
        let g = GroupShared::default();
        assert_eq!(g.stable_generation(2), None);
        g.synced_at(0, Some(1));
        assert_eq!(g.stable_generation(2), None);
        g.synced_at(1, Some(2));
        assert_eq!(g.stable_generation(2), None);
        g.synced_at(0, Some(2));
        assert_eq!(g.stable_generation(2), Some(2));
        g.synced_at(1, None);
        assert_eq!(g.stable_generation(2), None);
        // Closing an interval records how far the partition was read.
        assert_eq!(g.read_up_to(3), -1);
        let mut o = own(0, 3, 0, 1);
        o.end_offset = 42;
        g.close(o.clone());
        assert_eq!(g.read_up_to(3), 42);
        assert_eq!(g.ownership(), vec![o]);
        let r = GroupReport::of("g", "t", 2, 5, Some(2), &g);
        assert_eq!(r.never_owned, vec![0, 1, 2, 4]);
        assert_eq!(r.generations, vec![1]);
        assert!(r.overlaps.is_empty());
    }
}
