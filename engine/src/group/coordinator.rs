//! The group coordinator: Kafka's classic group protocol as a deterministic state machine.
//!
//! The shell feeds it requests (with an opaque token and `now_ms`), timer ticks, replayed
//! `__consumer_offsets` records and the completion of the appends it asked for; it answers with
//! [`CoordinatorAction`]s. It never reads a clock, a socket or a file, so every schedule of
//! joins, leaves, expiries and write failures can be replayed exactly in a test.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;
use tracing::{debug, info, warn};

use super::api::*;
use super::assignor::ConsumerSubscription;
use super::records::{
    offsets_partition_for, GroupMetadataValue, MemberMetadataValue, OffsetCommitValue, OffsetsKey,
    RecordError, DEFAULT_OFFSETS_PARTITIONS,
};

/// Coordinator settings (Kafka broker configs of the same meaning).
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// `group.initial.rebalance.delay.ms`: how long the first rebalance of an empty group
    /// waits for more members (default 3000).
    pub initial_rebalance_delay_ms: i64,
    /// `group.min.session.timeout.ms` (default 6000).
    pub min_session_timeout_ms: i32,
    /// `group.max.session.timeout.ms` (default 1800000).
    pub max_session_timeout_ms: i32,
    /// `group.max.size` (default unbounded).
    pub max_group_size: usize,
    /// `offset.metadata.max.bytes` (default 4096).
    pub offset_metadata_max_bytes: usize,
    /// `offsets.topic.num.partitions` (default 50).
    pub offsets_partitions: i32,
    /// How long a new member may wait in JoinGroup before it is dropped (Kafka: 5 minutes).
    pub new_member_join_timeout_ms: i64,
    /// `offsets.retention.minutes` in ms (default 7 days): how long committed offsets of an
    /// empty group (or of topics a stable group no longer subscribes to) are kept.
    pub offsets_retention_ms: i64,
    /// `offsets.retention.check.interval.ms` (default 600000).
    pub offsets_retention_check_interval_ms: i64,
    /// Seed for member-id generation; the shell passes a random value at start-up so ids do
    /// not collide with ids persisted by a previous run.
    pub member_id_seed: u64,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            initial_rebalance_delay_ms: 3000,
            min_session_timeout_ms: 6000,
            max_session_timeout_ms: 1_800_000,
            max_group_size: usize::MAX,
            offset_metadata_max_bytes: 4096,
            offsets_partitions: DEFAULT_OFFSETS_PARTITIONS,
            new_member_join_timeout_ms: 300_000,
            offsets_retention_ms: 7 * 24 * 60 * 60 * 1000,
            offsets_retention_check_interval_ms: 600_000,
            member_id_seed: 0x5eed,
        }
    }
}

/// Answers "does this topic partition exist?" for OffsetCommit and OffsetDelete, as Kafka's
/// request handler checks the metadata cache before calling the coordinator.
pub trait TopicCatalog {
    /// True if `topic`-`partition` exists.
    fn partition_exists(&self, topic: &str, partition: i32) -> bool;
}

impl<F: Fn(&str, i32) -> bool> TopicCatalog for F {
    fn partition_exists(&self, topic: &str, partition: i32) -> bool {
        self(topic, partition)
    }
}

/// A catalog in which every partition exists (tests, tools).
#[derive(Debug, Clone, Copy, Default)]
pub struct AnyTopic;

impl TopicCatalog for AnyTopic {
    fn partition_exists(&self, _topic: &str, _partition: i32) -> bool {
        true
    }
}

/// Group states of the classic protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GroupState {
    /// No members (offsets may still be stored).
    Empty,
    /// Waiting for members to (re)join.
    PreparingRebalance,
    /// Joined; waiting for the leader's assignment.
    CompletingRebalance,
    /// Assignment distributed; members heartbeat.
    Stable,
    /// Removed (deleted, or coordinator moved).
    Dead,
}

impl GroupState {
    /// The name Kafka uses in ListGroups / DescribeGroups.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// Identifies an append the coordinator asked for.
pub type AppendId = u64;

/// A record for `__consumer_offsets`: key and value (None = tombstone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetsRecord {
    /// Encoded key.
    pub key: Bytes,
    /// Encoded value, None for a tombstone.
    pub value: Option<Bytes>,
}

/// Why an append to `__consumer_offsets` failed, as the replica manager reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendError {
    /// This broker no longer leads the partition.
    NotLeader,
    /// Not enough in-sync replicas, or the partition is unknown.
    NotEnoughReplicas,
    /// The write timed out.
    Timeout,
    /// The batch was too large.
    RecordTooLarge,
    /// A disk error.
    Storage,
    /// Any other Kafka error code.
    Other(ErrorCode),
}

impl AppendError {
    /// The error Kafka's coordinator returns for this append failure.
    pub fn to_coordinator_error(self) -> ErrorCode {
        match self {
            AppendError::NotEnoughReplicas | AppendError::Timeout => {
                codes::COORDINATOR_NOT_AVAILABLE
            }
            AppendError::NotLeader | AppendError::Storage => codes::NOT_COORDINATOR,
            AppendError::RecordTooLarge => codes::UNKNOWN_SERVER_ERROR,
            AppendError::Other(code) => code,
        }
    }
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoordinatorAction {
    /// Send `response` for the request identified by `token`.
    Respond {
        /// The request's token.
        token: RequestToken,
        /// The response.
        response: GroupResponse,
    },
    /// Append `records` to `__consumer_offsets` partition `partition` (acks=all), then call
    /// [`GroupCoordinator::on_append_complete`] with `append_id`.
    Append {
        /// Completion handle.
        append_id: AppendId,
        /// `__consumer_offsets` partition.
        partition: i32,
        /// Records in order.
        records: Vec<OffsetsRecord>,
        /// Some for a TxnOffsetCommit: the records must be written as one transactional
        /// batch of this producer (Kafka's `isTransactional`, the producer's id and epoch).
        producer: Option<TxnProducer>,
    },
}

/// The producer a transactional offset-commit batch is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnProducer {
    /// Producer id.
    pub producer_id: i64,
    /// Producer epoch.
    pub producer_epoch: i16,
}

/// An offset committed inside a transaction, waiting for the transaction's marker.
#[derive(Debug, Clone)]
struct PendingTxnOffset {
    value: OffsetCommitValue,
    /// Its place in the partition's log order (see `GroupCoordinator::next_order`).
    order: u64,
    /// The append writing it, while it is in flight.
    in_flight: Option<AppendId>,
}

#[derive(Debug, Clone)]
struct Member {
    member_id: String,
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    rebalance_timeout_ms: i32,
    session_timeout_ms: i32,
    protocols: Vec<JoinProtocol>,
    assignment: Bytes,
    awaiting_join: Option<RequestToken>,
    awaiting_sync: Option<RequestToken>,
    is_new: bool,
    heartbeat_deadline_ms: i64,
}

impl Member {
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|p| p.name == protocol)
            .map(|p| p.metadata.clone())
            .unwrap_or_default()
    }

    fn matches(&self, protocols: &[JoinProtocol]) -> bool {
        self.protocols == protocols
    }

    fn should_keep_alive(&self, now_ms: i64) -> bool {
        if self.awaiting_join.is_some() {
            // A rejoining member is bounded by the rebalance timeout instead.
            !self.is_new || now_ms < self.heartbeat_deadline_ms
        } else if self.awaiting_sync.is_some() {
            true
        } else {
            now_ms < self.heartbeat_deadline_ms
        }
    }

    /// The deadline the timer must wake up for, if the member can expire at all now.
    fn expiry_deadline(&self) -> Option<i64> {
        if (self.awaiting_join.is_some() && !self.is_new) || self.awaiting_sync.is_some() {
            None
        } else {
            Some(self.heartbeat_deadline_ms)
        }
    }
}

#[derive(Debug, Clone)]
struct Group {
    id: String,
    partition: i32,
    state: GroupState,
    state_timestamp_ms: i64,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    static_members: HashMap<String, String>,
    pending_members: BTreeMap<String, i64>,
    pending_sync: BTreeSet<String>,
    sync_deadline_ms: Option<i64>,
    rebalance_deadline_ms: Option<i64>,
    /// Some while the first rebalance of an empty group is in its initial delay.
    initial_delay_remaining_ms: Option<i64>,
    new_member_added: bool,
    offsets: BTreeMap<(String, i32), OffsetCommitValue>,
    /// The log order of each entry of `offsets` (an entry here without one in `offsets` is
    /// stale and never read): a transactional offset replaces a committed one at its marker
    /// only if it was written after it, Kafka's `CommitRecordMetadataAndOffset.olderThan`.
    offset_order: HashMap<(String, i32), u64>,
    /// Commits written but not yet acknowledged, per partition: never expired meanwhile, or
    /// the expiry tombstone would land after (and erase) the newer commit.
    pending_commits: BTreeMap<(String, i32), u32>,
    /// Kafka's `pendingTransactionalOffsetCommits`: per producer id, the offsets committed
    /// in its open transaction, invisible to OffsetFetch until the COMMIT marker.
    pending_txn: BTreeMap<i64, BTreeMap<(String, i32), PendingTxnOffset>>,
    /// Topics the members subscribe to (consumer protocol), None if unknown.
    subscribed_topics: Option<BTreeSet<String>>,
}

impl Group {
    fn new(id: &str, partition: i32, now_ms: i64) -> Self {
        Group {
            id: id.to_owned(),
            partition,
            state: GroupState::Empty,
            state_timestamp_ms: now_ms,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            static_members: HashMap::new(),
            pending_members: BTreeMap::new(),
            pending_sync: BTreeSet::new(),
            sync_deadline_ms: None,
            rebalance_deadline_ms: None,
            initial_delay_remaining_ms: None,
            new_member_added: false,
            offsets: BTreeMap::new(),
            offset_order: HashMap::new(),
            pending_commits: BTreeMap::new(),
            pending_txn: BTreeMap::new(),
            subscribed_topics: None,
        }
    }

    fn transition(&mut self, to: GroupState, now_ms: i64) {
        debug_assert!(
            valid_transition(self.state, to),
            "illegal group transition {:?} -> {:?}",
            self.state,
            to
        );
        self.state = to;
        self.state_timestamp_ms = now_ms;
    }

    fn is_leader(&self, member_id: &str) -> bool {
        self.leader.as_deref() == Some(member_id)
    }

    fn supports_protocols(&self, protocol_type: &str, protocols: &[JoinProtocol]) -> bool {
        if protocol_type.is_empty() || protocols.is_empty() {
            return false;
        }
        if self.members.is_empty() {
            return true;
        }
        self.protocol_type.as_deref() == Some(protocol_type)
            && protocols.iter().any(|p| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|mp| mp.name == p.name))
            })
    }

    /// Kafka's vote: each member votes for its most preferred protocol that every member
    /// supports; most votes wins, ties go to the leader's order of preference.
    fn select_protocol(&self) -> Option<String> {
        let first = self.members.values().next()?;
        let candidates: Vec<&str> = first
            .protocols
            .iter()
            .map(|p| p.name.as_str())
            .filter(|name| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|mp| mp.name == *name))
            })
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let mut votes: HashMap<&str, usize> = HashMap::new();
        for m in self.members.values() {
            if let Some(choice) = m
                .protocols
                .iter()
                .map(|p| p.name.as_str())
                .find(|n| candidates.contains(n))
            {
                *votes.entry(choice).or_default() += 1;
            }
        }
        let leader_order: Vec<&str> = self
            .leader
            .as_ref()
            .and_then(|l| self.members.get(l))
            .unwrap_or(first)
            .protocols
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        let rank = |n: &str| {
            leader_order
                .iter()
                .position(|x| *x == n)
                .unwrap_or(usize::MAX)
        };
        candidates
            .iter()
            .max_by(|a, b| {
                votes
                    .get(*a)
                    .unwrap_or(&0)
                    .cmp(votes.get(*b).unwrap_or(&0))
                    .then_with(|| rank(b).cmp(&rank(a)))
            })
            .map(|s| (*s).to_owned())
    }

    /// The earliest time at which a timer of this group fires.
    fn next_deadline(&self) -> Option<i64> {
        let members = self.members.values().filter_map(Member::expiry_deadline);
        let pending = self.pending_members.values().copied();
        let rebalance = self
            .rebalance_deadline_ms
            .filter(|_| self.state == GroupState::PreparingRebalance);
        let sync = self
            .sync_deadline_ms
            .filter(|_| !self.pending_sync.is_empty());
        members.chain(pending).chain(rebalance).chain(sync).min()
    }

    fn max_rebalance_timeout_ms(&self) -> i64 {
        self.members
            .values()
            .map(|m| m.rebalance_timeout_ms as i64)
            .max()
            .unwrap_or(0)
    }

    fn all_members_joined(&self) -> bool {
        self.pending_members.is_empty() && self.members.values().all(|m| m.awaiting_join.is_some())
    }

    fn current_member_metadata(&self) -> Vec<JoinedMember> {
        let protocol = self.protocol.clone().unwrap_or_default();
        self.members
            .values()
            .map(|m| JoinedMember {
                member_id: m.member_id.clone(),
                group_instance_id: m.instance_id.clone(),
                metadata: m.metadata_for(&protocol),
            })
            .collect()
    }

    /// Kafka's `validateCurrentMember`: a static member must map to this member id, and the
    /// member id must exist.
    fn validate_current_member(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Option<ErrorCode> {
        if let Some(inst) = instance_id {
            return match self.static_members.get(inst) {
                Some(current) if current != member_id => Some(codes::FENCED_INSTANCE_ID),
                Some(_) => None,
                None => Some(codes::UNKNOWN_MEMBER_ID),
            };
        }
        if !self.members.contains_key(member_id) {
            return Some(codes::UNKNOWN_MEMBER_ID);
        }
        None
    }

    /// Whether a commit of this partition is undecided: being written, or in an open
    /// transaction (Kafka's `hasPendingOffsetCommitsForTopicPartition`).
    fn has_pending_commit(&self, key: &(String, i32)) -> bool {
        self.pending_commits.contains_key(key)
            || self
                .pending_txn
                .values()
                .any(|offsets| offsets.contains_key(key))
    }

    /// Makes `value` (written at `order`) the committed offset of `key` unless a commit
    /// written later is already there.
    fn materialise(&mut self, key: (String, i32), value: OffsetCommitValue, order: u64) {
        let newer_there = self.offsets.contains_key(&key)
            && self.offset_order.get(&key).is_some_and(|o| *o > order);
        if !newer_there {
            self.offset_order.insert(key.clone(), order);
            self.offsets.insert(key, value);
        }
    }

    fn compute_subscribed_topics(&mut self) {
        self.subscribed_topics = None;
        if self.protocol_type.as_deref() != Some("consumer") {
            return;
        }
        let Some(protocol) = self.protocol.clone() else {
            return;
        };
        let mut topics = BTreeSet::new();
        for m in self.members.values() {
            match ConsumerSubscription::decode(&m.metadata_for(&protocol)) {
                Ok(sub) => topics.extend(sub.topics),
                Err(_) => return,
            }
        }
        self.subscribed_topics = Some(topics);
    }

    fn is_subscribed_to(&self, topic: &str) -> bool {
        self.subscribed_topics
            .as_ref()
            .is_none_or(|t| t.contains(topic))
    }

    fn metadata_value(&self, assignments: Option<&HashMap<String, Bytes>>) -> GroupMetadataValue {
        let protocol = self.protocol.clone().unwrap_or_default();
        GroupMetadataValue {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation: self.generation,
            protocol: self.protocol.clone(),
            leader: self.leader.clone(),
            current_state_timestamp_ms: self.state_timestamp_ms,
            members: self
                .members
                .values()
                .map(|m| MemberMetadataValue {
                    member_id: m.member_id.clone(),
                    group_instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    session_timeout_ms: m.session_timeout_ms,
                    subscription: m.metadata_for(&protocol),
                    assignment: assignments
                        .and_then(|a| a.get(&m.member_id).cloned())
                        .unwrap_or_else(|| m.assignment.clone()),
                })
                .collect(),
        }
    }

    /// True when the group holds nothing worth keeping in memory.
    fn is_vacant(&self) -> bool {
        self.state == GroupState::Empty
            && self.members.is_empty()
            && self.pending_members.is_empty()
            && self.offsets.is_empty()
            && self.pending_commits.is_empty()
            && self.pending_txn.is_empty()
            && self.generation == 0
    }
}

fn valid_transition(from: GroupState, to: GroupState) -> bool {
    use GroupState::*;
    match to {
        Empty => matches!(from, PreparingRebalance | Empty),
        PreparingRebalance => matches!(from, Stable | CompletingRebalance | Empty),
        CompletingRebalance => from == PreparingRebalance,
        Stable => matches!(from, CompletingRebalance | Stable),
        Dead => true,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PartitionStatus {
    Loading,
    Active,
}

#[derive(Debug)]
enum PendingAppend {
    Commit {
        token: RequestToken,
        group: String,
        written: Vec<(String, i32, OffsetCommitValue)>,
        results: Vec<PartitionError>,
        order: u64,
    },
    TxnCommit {
        token: RequestToken,
        group: String,
        producer_id: i64,
        written: Vec<(String, i32)>,
        results: Vec<PartitionError>,
    },
    SyncStore {
        group: String,
        generation: i32,
        assignments: HashMap<String, Bytes>,
    },
    StaticReplace {
        token: RequestToken,
        group: String,
        generation: i32,
        instance_id: String,
        old_member_id: String,
        new_member_id: String,
        old_protocols: Vec<JoinProtocol>,
        old_timeouts: (i32, i32),
        leader_before: String,
    },
    DeleteGroups {
        token: RequestToken,
        groups: Vec<String>,
    },
    OffsetDelete {
        token: RequestToken,
        result: OffsetDeleteResult,
    },
    /// Written without anyone waiting (an emptied group's new generation).
    Background,
}

impl PendingAppend {
    /// Groups whose state the completion may change.
    fn groups(&self) -> Vec<String> {
        match self {
            PendingAppend::Commit { group, .. }
            | PendingAppend::TxnCommit { group, .. }
            | PendingAppend::SyncStore { group, .. }
            | PendingAppend::StaticReplace { group, .. } => vec![group.clone()],
            PendingAppend::DeleteGroups { groups, .. } => groups.clone(),
            PendingAppend::OffsetDelete { .. } | PendingAppend::Background => Vec::new(),
        }
    }
}

#[derive(Debug)]
struct MultiDelete {
    remaining: usize,
    results: Vec<(String, ErrorCode)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Join,
    Sync,
    Heartbeat,
    Leave,
    OffsetCommit,
    TxnOffsetCommit,
    OffsetFetch,
    Describe,
    Delete,
    OffsetDelete,
}

/// The coordinator for every group whose `__consumer_offsets` partition this broker leads.
#[derive(Debug)]
pub struct GroupCoordinator {
    config: CoordinatorConfig,
    partitions: HashMap<i32, PartitionStatus>,
    groups: HashMap<String, Group>,
    pending_appends: HashMap<AppendId, PendingAppend>,
    multi_deletes: HashMap<RequestToken, MultiDelete>,
    next_append_id: AppendId,
    rng: u64,
    out: Vec<CoordinatorAction>,
    next_retention_check_ms: Option<i64>,
    /// Timer index: (deadline, group) for every active group with a timer, so `tick` and
    /// `next_deadline` do not scan every group.
    deadlines: BTreeSet<(i64, String)>,
    group_deadlines: HashMap<String, i64>,
    /// The next position in log order. Records get it in the order they are replayed (in
    /// log order, before any append of their partition) and appends in the order they are
    /// emitted, which is the order they reach their partition's log (the shell's
    /// invariant); so within one partition, comparing two positions is comparing log
    /// offsets, which is all Kafka's materialisation rule needs.
    next_order: u64,
    /// Producer id -> groups that may hold offsets pending in its transaction (a superset:
    /// each lookup checks the group).
    producer_groups: HashMap<i64, BTreeSet<String>>,
    /// Markers reported while their partition was loading: (partition, producer, commit).
    deferred_markers: Vec<(i32, i64, bool)>,
}

impl GroupCoordinator {
    /// A coordinator that owns no partition yet.
    pub fn new(config: CoordinatorConfig) -> Self {
        let rng = config.member_id_seed ^ 0x9E37_79B9_7F4A_7C15;
        GroupCoordinator {
            config,
            partitions: HashMap::new(),
            groups: HashMap::new(),
            pending_appends: HashMap::new(),
            multi_deletes: HashMap::new(),
            next_append_id: 1,
            rng,
            out: Vec::new(),
            next_retention_check_ms: None,
            deadlines: BTreeSet::new(),
            group_deadlines: HashMap::new(),
            next_order: 0,
            producer_groups: HashMap::new(),
            deferred_markers: Vec::new(),
        }
    }

    fn take_order(&mut self) -> u64 {
        let o = self.next_order;
        self.next_order += 1;
        o
    }

    /// The configuration.
    pub fn config(&self) -> &CoordinatorConfig {
        &self.config
    }

    /// The `__consumer_offsets` partition of a group.
    pub fn partition_for(&self, group_id: &str) -> i32 {
        offsets_partition_for(group_id, self.config.offsets_partitions)
    }

    // -----------------------------------------------------------------------------------------
    // Partition ownership and loading.

    /// This broker became leader of `partition`: requests for its groups answer
    /// COORDINATOR_LOAD_IN_PROGRESS until [`Self::finish_loading`].
    pub fn begin_loading(&mut self, partition: i32) {
        self.groups.retain(|_, g| g.partition != partition);
        self.partitions.insert(partition, PartitionStatus::Loading);
        self.deferred_markers.retain(|m| m.0 != partition);
        self.prune_producer_groups();
        self.reindex_all();
    }

    /// Replays one record of `partition` (in log order). Undecodable records are errors the
    /// shell logs and skips; they never panic.
    pub fn load(
        &mut self,
        partition: i32,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), RecordError> {
        let Some(key) = OffsetsKey::decode(key)? else {
            return Ok(());
        };
        let group_id = key.group().to_owned();
        match key {
            OffsetsKey::Offset {
                topic,
                partition: p,
                ..
            } => match value {
                Some(v) => {
                    let value = OffsetCommitValue::decode(v)?;
                    let order = self.take_order();
                    let g = self
                        .groups
                        .entry(group_id.clone())
                        .or_insert_with(|| Group::new(&group_id, partition, -1));
                    g.offset_order.insert((topic.clone(), p), order);
                    g.offsets.insert((topic, p), value);
                }
                None => {
                    if let Some(g) = self.groups.get_mut(&group_id) {
                        g.offsets.remove(&(topic, p));
                    }
                }
            },
            OffsetsKey::GroupMetadata { .. } => match value {
                Some(v) => {
                    let value = GroupMetadataValue::decode(v)?;
                    let g = self
                        .groups
                        .entry(group_id.clone())
                        .or_insert_with(|| Group::new(&group_id, partition, -1));
                    apply_group_metadata(g, value);
                }
                None => {
                    if let Some(g) = self.groups.get_mut(&group_id) {
                        let offsets = std::mem::take(&mut g.offsets);
                        let offset_order = std::mem::take(&mut g.offset_order);
                        let pending_txn = std::mem::take(&mut g.pending_txn);
                        *g = Group::new(&group_id, partition, -1);
                        g.offsets = offsets;
                        g.offset_order = offset_order;
                        g.pending_txn = pending_txn;
                    }
                }
            },
        }
        Ok(())
    }

    /// Replays one record of a transactional batch of `producer_id` (in log order): an
    /// offset commit becomes pending for the producer (a tombstone removes the pending
    /// one), as Kafka's loader does; any other record loads as [`Self::load`] does.
    pub fn load_txn(
        &mut self,
        partition: i32,
        producer_id: i64,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), RecordError> {
        let Some(decoded) = OffsetsKey::decode(key)? else {
            return Ok(());
        };
        let OffsetsKey::Offset {
            group,
            topic,
            partition: p,
        } = decoded
        else {
            return self.load(partition, key, value);
        };
        match value {
            Some(v) => {
                let value = OffsetCommitValue::decode(v)?;
                let order = self.take_order();
                let g = self
                    .groups
                    .entry(group.clone())
                    .or_insert_with(|| Group::new(&group, partition, -1));
                g.pending_txn.entry(producer_id).or_default().insert(
                    (topic, p),
                    PendingTxnOffset {
                        value,
                        order,
                        in_flight: None,
                    },
                );
                self.producer_groups
                    .entry(producer_id)
                    .or_default()
                    .insert(group);
            }
            None => {
                if let Some(pending) = self
                    .groups
                    .get_mut(&group)
                    .and_then(|g| g.pending_txn.get_mut(&producer_id))
                {
                    pending.remove(&(topic, p));
                }
            }
        }
        Ok(())
    }

    /// Replays a COMMIT (`commit`) or ABORT marker of `producer_id` found in `partition`
    /// while loading it (in log order with [`Self::load`] and [`Self::load_txn`]).
    pub fn load_txn_marker(&mut self, partition: i32, producer_id: i64, commit: bool) {
        self.complete_txn(partition, producer_id, commit);
        self.out.clear();
    }

    /// The transaction coordinator appended a COMMIT (`commit`) or ABORT marker of
    /// `producer_id` to `partition`. While the partition loads, the completion waits for
    /// [`Self::finish_loading`] (the marker lies after what the load replays, or is replayed
    /// itself, and a second completion finds nothing pending); a partition this coordinator
    /// does not own is ignored (its next owner replays the marker).
    pub fn on_txn_marker(
        &mut self,
        partition: i32,
        producer_id: i64,
        commit: bool,
    ) -> Vec<CoordinatorAction> {
        match self.partitions.get(&partition) {
            Some(PartitionStatus::Active) => self.complete_txn(partition, producer_id, commit),
            Some(PartitionStatus::Loading) => {
                self.deferred_markers.push((partition, producer_id, commit));
                Vec::new()
            }
            None => Vec::new(),
        }
    }

    /// The transaction of `producer_id` ended in `partition`. On commit every offset
    /// pending for the producer in the partition's groups becomes the committed one, unless
    /// a commit written after it in the log is already there (Kafka's
    /// `completePendingTxnOffsetCommit`); on abort they are dropped. A marker for a producer
    /// with nothing pending changes nothing.
    fn complete_txn(
        &mut self,
        partition: i32,
        producer_id: i64,
        commit: bool,
    ) -> Vec<CoordinatorAction> {
        let candidates: Vec<String> = self
            .producer_groups
            .get(&producer_id)
            .map(|ids| ids.iter().cloned().collect())
            .unwrap_or_default();
        let active = self.partitions.get(&partition) == Some(&PartitionStatus::Active);
        let mut touched = Vec::new();
        for id in candidates {
            let Some(g) = self.groups.get_mut(&id) else {
                self.forget_producer_group(producer_id, &id);
                continue;
            };
            if g.partition != partition {
                continue;
            }
            self.forget_producer_group(producer_id, &id);
            let Some(g) = self.groups.get_mut(&id) else {
                continue;
            };
            let Some(pending) = g.pending_txn.remove(&producer_id) else {
                continue;
            };
            if commit {
                for (key, p) in pending {
                    if p.in_flight.is_some() {
                        // Its batch precedes the marker in the log (appends to a partition
                        // keep their order); only a failed write would make this wrong, and
                        // a failed write means this broker lost the partition.
                        debug!(group = %id, producer_id, "transactional offset committed while its write completes");
                    }
                    g.materialise(key, p.value, p.order);
                }
            }
            debug!(group = %id, producer_id, commit, "transactional offsets completed");
            touched.push(id);
        }
        if active {
            for id in &touched {
                self.remove_if_vacant(id);
                self.reindex(id);
            }
            self.debug_check_index();
        }
        std::mem::take(&mut self.out)
    }

    fn forget_producer_group(&mut self, producer_id: i64, group: &str) {
        if let Some(ids) = self.producer_groups.get_mut(&producer_id) {
            ids.remove(group);
            if ids.is_empty() {
                self.producer_groups.remove(&producer_id);
            }
        }
    }

    /// Whether `group` has offsets pending in the transaction of `producer_id`.
    pub fn has_pending_txn_offsets(&self, group_id: &str, producer_id: i64) -> bool {
        self.groups
            .get(group_id)
            .is_some_and(|g| g.pending_txn.contains_key(&producer_id))
    }

    /// Drops index entries of groups that are gone (after an unload or a new load).
    fn prune_producer_groups(&mut self) {
        let groups = &self.groups;
        self.producer_groups.retain(|pid, ids| {
            ids.retain(|id| {
                groups
                    .get(id)
                    .is_some_and(|g| g.pending_txn.contains_key(pid))
            });
            !ids.is_empty()
        });
    }

    /// Loading of `partition` is complete: loaded groups with members become Stable and their
    /// members must heartbeat within their session timeout from `now_ms`.
    pub fn finish_loading(&mut self, partition: i32, now_ms: i64) {
        self.partitions.insert(partition, PartitionStatus::Active);
        self.groups
            .retain(|_, g| g.partition != partition || !g.is_vacant());
        for g in self
            .groups
            .values_mut()
            .filter(|g| g.partition == partition)
        {
            g.state = if g.members.is_empty() {
                GroupState::Empty
            } else {
                GroupState::Stable
            };
            if g.state_timestamp_ms < 0 {
                g.state_timestamp_ms = now_ms;
            }
            for m in g.members.values_mut() {
                m.heartbeat_deadline_ms = now_ms + m.session_timeout_ms as i64;
            }
            g.compute_subscribed_topics();
        }
        debug!(partition, "__consumer_offsets partition loaded");
        self.reindex_all();
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.deferred_markers)
            .into_iter()
            .partition(|m| m.0 == partition);
        self.deferred_markers = later;
        for (p, producer_id, commit) in due {
            // Answers nothing: a completion only moves offsets.
            let _ = self.complete_txn(p, producer_id, commit);
        }
        self.debug_check_index();
    }

    /// This broker lost `partition`: its groups are dropped and waiting requests answered
    /// NOT_COORDINATOR so clients look the coordinator up again.
    pub fn unload(&mut self, partition: i32) -> Vec<CoordinatorAction> {
        self.partitions.remove(&partition);
        self.deferred_markers.retain(|m| m.0 != partition);
        let ids: Vec<String> = self
            .groups
            .values()
            .filter(|g| g.partition == partition)
            .map(|g| g.id.clone())
            .collect();
        for id in ids {
            if let Some(mut g) = self.groups.remove(&id) {
                for m in g.members.values_mut() {
                    if let Some(t) = m.awaiting_join.take() {
                        self.respond(
                            t,
                            GroupResponse::Join(JoinGroupResult::error(
                                codes::NOT_COORDINATOR,
                                m.member_id.clone(),
                            )),
                        );
                    }
                    if let Some(t) = m.awaiting_sync.take() {
                        self.respond(
                            t,
                            GroupResponse::Sync(SyncGroupResult::error(codes::NOT_COORDINATOR)),
                        );
                    }
                }
            }
        }
        self.prune_producer_groups();
        self.reindex_all();
        self.debug_check_index();
        std::mem::take(&mut self.out)
    }

    // -----------------------------------------------------------------------------------------
    // Introspection (tools, tests).

    /// State of a group, None if unknown.
    pub fn group_state(&self, group_id: &str) -> Option<GroupState> {
        self.groups.get(group_id).map(|g| g.state)
    }

    /// Generation of a group.
    pub fn generation(&self, group_id: &str) -> Option<i32> {
        self.groups.get(group_id).map(|g| g.generation)
    }

    /// Leader of a group.
    pub fn leader(&self, group_id: &str) -> Option<String> {
        self.groups.get(group_id).and_then(|g| g.leader.clone())
    }

    /// Member ids of a group.
    pub fn member_ids(&self, group_id: &str) -> Vec<String> {
        self.groups
            .get(group_id)
            .map(|g| g.members.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The committed offset of a partition.
    pub fn committed_offset(&self, group_id: &str, topic: &str, partition: i32) -> Option<i64> {
        self.groups
            .get(group_id)?
            .offsets
            .get(&(topic.to_owned(), partition))
            .map(|v| v.offset)
    }

    /// Every committed offset: `(group, topic, partition, offset)`, in group order.
    pub fn committed_offsets(&self) -> Vec<(String, String, i32, i64)> {
        let mut out = Vec::new();
        for (group, g) in &self.groups {
            for ((topic, partition), v) in &g.offsets {
                out.push((group.clone(), topic.clone(), *partition, v.offset));
            }
        }
        out.sort();
        out
    }

    /// Group ids known to the coordinator, sorted.
    pub fn group_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.groups.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Number of appends not yet completed.
    pub fn pending_appends(&self) -> usize {
        self.pending_appends.len()
    }

    // -----------------------------------------------------------------------------------------
    // Inputs.

    /// Handles one request. Its response may come now or from a later call (JoinGroup and
    /// SyncGroup wait for the rebalance; writes wait for their append).
    pub fn handle(
        &mut self,
        token: RequestToken,
        now_ms: i64,
        request: GroupRequest,
        catalog: &dyn TopicCatalog,
    ) -> Vec<CoordinatorAction> {
        let touched: Vec<String> = match &request {
            GroupRequest::Join(r) => vec![r.group_id.clone()],
            GroupRequest::Sync(r) => vec![r.group_id.clone()],
            GroupRequest::Heartbeat(r) => vec![r.group_id.clone()],
            GroupRequest::Leave(r) => vec![r.group_id.clone()],
            GroupRequest::OffsetCommit(r) => vec![r.group_id.clone()],
            GroupRequest::TxnOffsetCommit(r) => vec![r.group_id.clone()],
            GroupRequest::DeleteGroups(ids) => ids.clone(),
            GroupRequest::OffsetDelete(r) => vec![r.group_id.clone()],
            GroupRequest::OffsetFetch(_)
            | GroupRequest::ListGroups(_)
            | GroupRequest::DescribeGroups(_) => Vec::new(),
        };
        match request {
            GroupRequest::Join(r) => self.join_group(token, now_ms, r),
            GroupRequest::Sync(r) => self.sync_group(token, now_ms, r),
            GroupRequest::Heartbeat(r) => self.heartbeat(token, now_ms, r),
            GroupRequest::Leave(r) => self.leave_group(token, now_ms, r),
            GroupRequest::OffsetCommit(r) => self.offset_commit(token, now_ms, r, catalog),
            GroupRequest::TxnOffsetCommit(r) => self.txn_offset_commit(token, now_ms, r, catalog),
            GroupRequest::OffsetFetch(r) => self.offset_fetch(token, r),
            GroupRequest::ListGroups(r) => self.list_groups(token, r),
            GroupRequest::DescribeGroups(ids) => self.describe_groups(token, ids),
            GroupRequest::DeleteGroups(ids) => self.delete_groups(token, now_ms, ids),
            GroupRequest::OffsetDelete(r) => self.offset_delete(token, r, catalog),
        }
        for id in &touched {
            self.reindex(id);
        }
        self.debug_check_index();
        std::mem::take(&mut self.out)
    }

    /// Recomputes the timer of one group in the index.
    fn reindex(&mut self, group_id: &str) {
        let next = self
            .groups
            .get(group_id)
            .filter(|g| self.partitions.get(&g.partition) == Some(&PartitionStatus::Active))
            .and_then(Group::next_deadline);
        let old = self.group_deadlines.get(group_id).copied();
        if old == next {
            return;
        }
        if let Some(old) = old {
            self.deadlines.remove(&(old, group_id.to_owned()));
            self.group_deadlines.remove(group_id);
        }
        if let Some(next) = next {
            self.deadlines.insert((next, group_id.to_owned()));
            self.group_deadlines.insert(group_id.to_owned(), next);
        }
    }

    fn reindex_all(&mut self) {
        self.deadlines.clear();
        self.group_deadlines.clear();
        let ids: Vec<String> = self.groups.keys().cloned().collect();
        for id in ids {
            self.reindex(&id);
        }
    }

    /// Debug builds verify the timer index against a full recomputation after every input.
    fn debug_check_index(&self) {
        #[cfg(debug_assertions)]
        for g in self.groups.values() {
            let active = self.partitions.get(&g.partition) == Some(&PartitionStatus::Active);
            let expected = if active { g.next_deadline() } else { None };
            debug_assert_eq!(
                self.group_deadlines.get(&g.id).copied(),
                expected,
                "stale timer index for group {}",
                g.id
            );
        }
        debug_assert_eq!(self.deadlines.len(), self.group_deadlines.len());
    }

    /// The earliest time at which [`Self::tick`] has something to do.
    pub fn next_deadline(&self) -> Option<i64> {
        let best = self.deadlines.first().map(|(t, _)| *t);
        match (best, self.next_retention_check_ms) {
            (Some(b), Some(r)) => Some(b.min(r)),
            (b, r) => b.or(r),
        }
    }

    /// Runs every timer due at `now_ms`: member expiry, pending-member expiry, rebalance and
    /// sync timeouts, and the periodic expiry of old offsets.
    pub fn tick(&mut self, now_ms: i64) -> Vec<CoordinatorAction> {
        match self.next_retention_check_ms {
            None => {
                self.next_retention_check_ms =
                    Some(now_ms + self.config.offsets_retention_check_interval_ms)
            }
            Some(t) if t <= now_ms => {
                self.expire_offsets(now_ms);
                self.next_retention_check_ms =
                    Some(now_ms + self.config.offsets_retention_check_interval_ms);
                self.reindex_all();
            }
            Some(_) => {}
        }
        let due: Vec<String> = self
            .deadlines
            .iter()
            .take_while(|(t, _)| *t <= now_ms)
            .map(|(_, id)| id.clone())
            .collect();
        for id in due {
            self.tick_group(&id, now_ms);
            self.reindex(&id);
        }
        self.debug_check_index();
        std::mem::take(&mut self.out)
    }

    /// The append `append_id` finished (`Ok` once replicated as acks=all requires).
    pub fn on_append_complete(
        &mut self,
        append_id: AppendId,
        now_ms: i64,
        result: Result<(), AppendError>,
    ) -> Vec<CoordinatorAction> {
        let touched = self
            .pending_appends
            .get(&append_id)
            .map(PendingAppend::groups)
            .unwrap_or_default();
        let actions = self.complete_append(append_id, now_ms, result);
        for id in &touched {
            self.reindex(id);
        }
        self.debug_check_index();
        actions
    }

    fn complete_append(
        &mut self,
        append_id: AppendId,
        now_ms: i64,
        result: Result<(), AppendError>,
    ) -> Vec<CoordinatorAction> {
        let Some(pending) = self.pending_appends.remove(&append_id) else {
            warn!(
                append_id,
                "completion for an unknown __consumer_offsets append"
            );
            return Vec::new();
        };
        let error = result.err().map(AppendError::to_coordinator_error);
        match pending {
            PendingAppend::Commit {
                token,
                group,
                written,
                mut results,
                order,
            } => {
                let code = error.unwrap_or(codes::NONE);
                if let Some(g) = self.groups.get_mut(&group) {
                    for (topic, partition, value) in &written {
                        let key = (topic.clone(), *partition);
                        if let Some(n) = g.pending_commits.get_mut(&key) {
                            *n -= 1;
                            if *n == 0 {
                                g.pending_commits.remove(&key);
                            }
                        }
                        if error.is_none() {
                            g.materialise(key, value.clone(), order);
                        }
                    }
                }
                results.extend(written.into_iter().map(|(t, p, _)| (t, p, code)));
                self.respond(token, GroupResponse::OffsetCommit(results));
            }
            PendingAppend::TxnCommit {
                token,
                group,
                producer_id,
                written,
                mut results,
            } => {
                let code = error.unwrap_or(codes::NONE);
                if let Some(pending) = self
                    .groups
                    .get_mut(&group)
                    .and_then(|g| g.pending_txn.get_mut(&producer_id))
                {
                    for key in &written {
                        let Some(p) = pending.get_mut(key) else {
                            continue;
                        };
                        if p.in_flight != Some(append_id) {
                            // A later TxnOffsetCommit of the same producer replaced it.
                            continue;
                        }
                        if error.is_some() {
                            // Kafka's `failPendingTxnOffsetCommit`: not in the log, not pending.
                            pending.remove(key);
                        } else {
                            p.in_flight = None;
                        }
                    }
                }
                if let Some(g) = self.groups.get_mut(&group) {
                    if g.pending_txn
                        .get(&producer_id)
                        .is_some_and(BTreeMap::is_empty)
                    {
                        g.pending_txn.remove(&producer_id);
                    }
                }
                if error.is_some() {
                    self.remove_if_vacant(&group);
                }
                results.extend(written.into_iter().map(|(t, p)| (t, p, code)));
                self.respond(token, GroupResponse::TxnOffsetCommit(results));
            }
            PendingAppend::SyncStore {
                group,
                generation,
                assignments,
            } => self.complete_sync_store(&group, generation, assignments, error, now_ms),
            PendingAppend::StaticReplace {
                token,
                group,
                generation,
                instance_id,
                old_member_id,
                new_member_id,
                old_protocols,
                old_timeouts,
                leader_before,
            } => {
                let Some(g) = self.groups.get_mut(&group) else {
                    self.respond(
                        token,
                        GroupResponse::Join(JoinGroupResult::error(
                            codes::COORDINATOR_NOT_AVAILABLE,
                            "",
                        )),
                    );
                    return std::mem::take(&mut self.out);
                };
                if let Some(code) = error {
                    if g.static_members.get(&instance_id) == Some(&new_member_id) {
                        replace_member_id(g, &instance_id, &new_member_id, &old_member_id);
                        if let Some(m) = g.members.get_mut(&old_member_id) {
                            m.protocols = old_protocols;
                            m.rebalance_timeout_ms = old_timeouts.0;
                            m.session_timeout_ms = old_timeouts.1;
                        }
                    }
                    self.respond(token, GroupResponse::Join(JoinGroupResult::error(code, "")));
                } else {
                    let result = JoinGroupResult {
                        error: codes::NONE,
                        generation_id: generation,
                        protocol_type: g.protocol_type.clone(),
                        protocol_name: g.protocol.clone(),
                        leader: leader_before,
                        member_id: new_member_id,
                        members: Vec::new(),
                    };
                    self.respond(token, GroupResponse::Join(result));
                }
            }
            PendingAppend::DeleteGroups { token, groups } => {
                if let Some(multi) = self.multi_deletes.get_mut(&token) {
                    if let Some(code) = error {
                        for r in multi.results.iter_mut().filter(|r| groups.contains(&r.0)) {
                            r.1 = code;
                        }
                    }
                    multi.remaining = multi.remaining.saturating_sub(1);
                    if multi.remaining == 0 {
                        if let Some(done) = self.multi_deletes.remove(&token) {
                            self.respond(token, GroupResponse::DeleteGroups(done.results));
                        }
                    }
                }
            }
            PendingAppend::OffsetDelete { token, mut result } => {
                if let Some(code) = error {
                    result.error = code;
                }
                self.respond(token, GroupResponse::OffsetDelete(result));
            }
            PendingAppend::Background => {
                if let Some(code) = error {
                    warn!(code, "background __consumer_offsets write failed");
                }
            }
        }
        std::mem::take(&mut self.out)
    }

    // -----------------------------------------------------------------------------------------
    // Helpers.

    fn respond(&mut self, token: RequestToken, response: GroupResponse) {
        self.out
            .push(CoordinatorAction::Respond { token, response });
    }

    fn append(&mut self, partition: i32, records: Vec<OffsetsRecord>, pending: PendingAppend) {
        self.append_as(partition, records, pending, None);
    }

    fn append_as(
        &mut self,
        partition: i32,
        records: Vec<OffsetsRecord>,
        pending: PendingAppend,
        producer: Option<TxnProducer>,
    ) -> AppendId {
        let append_id = self.next_append_id;
        self.next_append_id += 1;
        self.pending_appends.insert(append_id, pending);
        self.out.push(CoordinatorAction::Append {
            append_id,
            partition,
            records,
            producer,
        });
        append_id
    }

    fn validate_group_status(&self, group_id: &str, api: Api) -> Option<ErrorCode> {
        // Kafka's `isValidGroupId`: TxnOffsetCommit needs a non-empty group id.
        let empty_ok = matches!(
            api,
            Api::OffsetCommit | Api::OffsetFetch | Api::Describe | Api::Delete
        );
        if group_id.is_empty() && !empty_ok {
            return Some(codes::INVALID_GROUP_ID);
        }
        match self.partitions.get(&self.partition_for(group_id)) {
            None => Some(codes::NOT_COORDINATOR),
            Some(PartitionStatus::Loading) => Some(codes::COORDINATOR_LOAD_IN_PROGRESS),
            Some(PartitionStatus::Active) => None,
        }
    }

    fn next_member_id(&mut self, prefix: &str) -> String {
        let mut next = || {
            // splitmix64: deterministic for a seed, well spread, no global state.
            self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.rng;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let (a, b) = (next(), next());
        format!(
            "{prefix}-{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | ((b >> 48) & 0x3fff),
            b & 0xffff_ffff_ffff
        )
    }

    fn remove_if_vacant(&mut self, group_id: &str) {
        if self.groups.get(group_id).is_some_and(Group::is_vacant) {
            self.groups.remove(group_id);
        }
    }

    // -----------------------------------------------------------------------------------------
    // JoinGroup.

    fn join_group(&mut self, token: RequestToken, now_ms: i64, req: JoinGroup) {
        let join_error = |code: ErrorCode, member: &str| {
            GroupResponse::Join(JoinGroupResult::error(code, member.to_owned()))
        };
        if let Some(code) = self.validate_group_status(&req.group_id, Api::Join) {
            return self.respond(token, join_error(code, &req.member_id));
        }
        if req.session_timeout_ms < self.config.min_session_timeout_ms
            || req.session_timeout_ms > self.config.max_session_timeout_ms
        {
            return self.respond(
                token,
                join_error(codes::INVALID_SESSION_TIMEOUT, &req.member_id),
            );
        }
        let unknown_member = req.member_id.is_empty();
        if !self.groups.contains_key(&req.group_id) {
            if !unknown_member {
                return self.respond(token, join_error(codes::UNKNOWN_MEMBER_ID, &req.member_id));
            }
            let partition = self.partition_for(&req.group_id);
            self.groups.insert(
                req.group_id.clone(),
                Group::new(&req.group_id, partition, now_ms),
            );
        }
        let group_id = req.group_id.clone();
        self.join_existing(token, now_ms, req);
        let complete = self
            .groups
            .get(&group_id)
            .is_some_and(|g| g.state == GroupState::PreparingRebalance);
        if complete {
            self.maybe_complete_join(&group_id, now_ms);
        }
        self.remove_if_vacant(&group_id);
    }

    fn join_existing(&mut self, token: RequestToken, now_ms: i64, req: JoinGroup) {
        let max_size = self.config.max_group_size;
        let Some(g) = self.groups.get(&req.group_id) else {
            return;
        };
        let err =
            |c: ErrorCode| GroupResponse::Join(JoinGroupResult::error(c, req.member_id.clone()));
        if g.state == GroupState::Dead {
            return self.respond(token, err(codes::COORDINATOR_NOT_AVAILABLE));
        }
        let known = g.members.contains_key(&req.member_id)
            || g.pending_members.contains_key(&req.member_id)
            || req
                .group_instance_id
                .as_ref()
                .is_some_and(|i| g.static_members.contains_key(i));
        if !known && g.members.len() >= max_size {
            return self.respond(
                token,
                GroupResponse::Join(JoinGroupResult::error(codes::GROUP_MAX_SIZE_REACHED, "")),
            );
        }
        if !g.supports_protocols(&req.protocol_type, &req.protocols) {
            return self.respond(token, err(codes::INCONSISTENT_GROUP_PROTOCOL));
        }
        if req.member_id.is_empty() {
            self.join_new_member(token, now_ms, req);
        } else {
            self.join_current_member(token, now_ms, req);
        }
    }

    fn join_new_member(&mut self, token: RequestToken, now_ms: i64, req: JoinGroup) {
        let prefix = req
            .group_instance_id
            .clone()
            .unwrap_or_else(|| req.client_id.clone());
        let mut member_id = self.next_member_id(&prefix);
        while self.groups.get(&req.group_id).is_some_and(|g| {
            g.members.contains_key(&member_id) || g.pending_members.contains_key(&member_id)
        }) {
            member_id = self.next_member_id(&prefix);
        }
        let Some(g) = self.groups.get(&req.group_id) else {
            return;
        };
        if let Some(inst) = req.group_instance_id.clone() {
            if let Some(old) = g.static_members.get(&inst).cloned() {
                self.replace_static_member(token, now_ms, req, inst, old, member_id);
            } else {
                self.add_member_and_rebalance(token, now_ms, &req, member_id);
            }
        } else if req.require_known_member_id {
            let deadline = now_ms + req.session_timeout_ms as i64;
            if let Some(g) = self.groups.get_mut(&req.group_id) {
                g.pending_members.insert(member_id.clone(), deadline);
            }
            debug!(group = %req.group_id, %member_id, "new member must rejoin with its member id");
            self.respond(
                token,
                GroupResponse::Join(JoinGroupResult::error(codes::MEMBER_ID_REQUIRED, member_id)),
            );
        } else {
            self.add_member_and_rebalance(token, now_ms, &req, member_id);
        }
    }

    fn join_current_member(&mut self, token: RequestToken, now_ms: i64, req: JoinGroup) {
        let Some(g) = self.groups.get(&req.group_id) else {
            return;
        };
        if g.pending_members.contains_key(&req.member_id) {
            let member_id = req.member_id.clone();
            return self.add_member_and_rebalance(token, now_ms, &req, member_id);
        }
        if let Some(code) =
            g.validate_current_member(&req.member_id, req.group_instance_id.as_deref())
        {
            return self.respond(
                token,
                GroupResponse::Join(JoinGroupResult::error(code, req.member_id.clone())),
            );
        }
        let Some(member) = g.members.get(&req.member_id) else {
            // validate_current_member guarantees membership; stay safe if that ever changes.
            return self.respond(
                token,
                GroupResponse::Join(JoinGroupResult::error(
                    codes::UNKNOWN_MEMBER_ID,
                    req.member_id.clone(),
                )),
            );
        };
        let matches = member.matches(&req.protocols);
        let is_leader = g.is_leader(&req.member_id);
        match g.state {
            GroupState::PreparingRebalance => self.update_member_and_rebalance(token, now_ms, &req),
            GroupState::CompletingRebalance if matches => {
                // A retried JoinGroup: answer with the generation the member already has.
                let result = current_join_result(g, &req.member_id);
                self.respond(token, GroupResponse::Join(result));
            }
            GroupState::CompletingRebalance => {
                self.update_member_and_rebalance(token, now_ms, &req)
            }
            GroupState::Stable if is_leader || !matches => {
                // The leader rejoining forces a rebalance so it can reassign (e.g. metadata
                // changed); a follower with new protocols too.
                self.update_member_and_rebalance(token, now_ms, &req)
            }
            GroupState::Stable => {
                let result = current_join_result(g, &req.member_id);
                if let Some(m) = self
                    .groups
                    .get_mut(&req.group_id)
                    .and_then(|g| g.members.get_mut(&req.member_id))
                {
                    m.heartbeat_deadline_ms = now_ms + m.session_timeout_ms as i64;
                }
                self.respond(token, GroupResponse::Join(result));
            }
            GroupState::Empty | GroupState::Dead => self.respond(
                token,
                GroupResponse::Join(JoinGroupResult::error(
                    codes::UNKNOWN_MEMBER_ID,
                    req.member_id.clone(),
                )),
            ),
        }
    }

    fn add_member_and_rebalance(
        &mut self,
        token: RequestToken,
        now_ms: i64,
        req: &JoinGroup,
        member_id: String,
    ) {
        let Some(g) = self.groups.get_mut(&req.group_id) else {
            return;
        };
        let member = Member {
            member_id: member_id.clone(),
            instance_id: req.group_instance_id.clone(),
            client_id: req.client_id.clone(),
            client_host: req.client_host.clone(),
            rebalance_timeout_ms: req.rebalance_timeout_ms,
            session_timeout_ms: req.session_timeout_ms,
            protocols: req.protocols.clone(),
            assignment: Bytes::new(),
            awaiting_join: Some(token),
            awaiting_sync: None,
            is_new: true,
            heartbeat_deadline_ms: now_ms + self.config.new_member_join_timeout_ms,
        };
        if g.members.is_empty() {
            g.protocol_type = Some(req.protocol_type.clone());
        }
        if let Some(inst) = &req.group_instance_id {
            g.static_members.insert(inst.clone(), member_id.clone());
        }
        if g.state == GroupState::PreparingRebalance && g.generation == 0 {
            g.new_member_added = true;
        }
        if g.leader.is_none() {
            g.leader = Some(member_id.clone());
        }
        g.members.insert(member_id.clone(), member);
        g.pending_members.remove(&member_id);
        debug!(group = %req.group_id, %member_id, "member added");
        self.maybe_prepare_rebalance(&req.group_id, now_ms, "new member joined");
    }

    fn update_member_and_rebalance(&mut self, token: RequestToken, now_ms: i64, req: &JoinGroup) {
        let Some(m) = self
            .groups
            .get_mut(&req.group_id)
            .and_then(|g| g.members.get_mut(&req.member_id))
        else {
            return;
        };
        m.protocols = req.protocols.clone();
        m.rebalance_timeout_ms = req.rebalance_timeout_ms;
        m.session_timeout_ms = req.session_timeout_ms;
        let stale = m.awaiting_join.replace(token);
        if let Some(old) = stale {
            // The client gave up on its earlier JoinGroup; answer it so no token leaks.
            self.respond(
                old,
                GroupResponse::Join(JoinGroupResult::error(
                    codes::REBALANCE_IN_PROGRESS,
                    req.member_id.clone(),
                )),
            );
        }
        self.maybe_prepare_rebalance(&req.group_id, now_ms, "member rejoined");
    }

    fn replace_static_member(
        &mut self,
        token: RequestToken,
        now_ms: i64,
        req: JoinGroup,
        instance_id: String,
        old_member_id: String,
        new_member_id: String,
    ) {
        let Some(g) = self.groups.get_mut(&req.group_id) else {
            return;
        };
        let leader_before = g.leader.clone().unwrap_or_default();
        let fenced = replace_member_id(g, &instance_id, &old_member_id, &new_member_id);
        let Some(m) = g.members.get_mut(&new_member_id) else {
            return;
        };
        let old_protocols = std::mem::replace(&mut m.protocols, req.protocols.clone());
        let old_timeouts = (m.rebalance_timeout_ms, m.session_timeout_ms);
        m.rebalance_timeout_ms = req.rebalance_timeout_ms;
        m.session_timeout_ms = req.session_timeout_ms;
        m.client_id = req.client_id.clone();
        m.client_host = req.client_host.clone();
        m.heartbeat_deadline_ms = now_ms + req.session_timeout_ms as i64;
        info!(group = %req.group_id, %instance_id, old = %old_member_id, new = %new_member_id, "static member replaced");
        for (t, sync) in fenced {
            let response = if sync {
                GroupResponse::Sync(SyncGroupResult::error(codes::FENCED_INSTANCE_ID))
            } else {
                GroupResponse::Join(JoinGroupResult::error(
                    codes::FENCED_INSTANCE_ID,
                    old_member_id.clone(),
                ))
            };
            self.respond(t, response);
        }
        let Some(g) = self.groups.get_mut(&req.group_id) else {
            return;
        };
        match g.state {
            GroupState::Stable => {
                if g.select_protocol() == g.protocol {
                    // Same protocol: persist the new member id and answer with the current
                    // generation, no rebalance (the point of static membership).
                    let partition = g.partition;
                    let record = group_record(g, None);
                    let pending = PendingAppend::StaticReplace {
                        token,
                        group: req.group_id.clone(),
                        generation: g.generation,
                        instance_id,
                        old_member_id,
                        new_member_id,
                        old_protocols,
                        old_timeouts,
                        leader_before,
                    };
                    self.append(partition, vec![record], pending);
                } else {
                    if let Some(m) = g.members.get_mut(&new_member_id) {
                        m.awaiting_join = Some(token);
                    }
                    self.maybe_prepare_rebalance(
                        &req.group_id,
                        now_ms,
                        "static member changed protocols",
                    );
                }
            }
            GroupState::CompletingRebalance => {
                if let Some(m) = g.members.get_mut(&new_member_id) {
                    m.awaiting_join = Some(token);
                }
                self.prepare_rebalance(&req.group_id, now_ms, "static member rejoined during sync");
            }
            GroupState::PreparingRebalance | GroupState::Empty | GroupState::Dead => {
                if let Some(m) = g.members.get_mut(&new_member_id) {
                    m.awaiting_join = Some(token);
                }
            }
        }
    }

    fn maybe_prepare_rebalance(&mut self, group_id: &str, now_ms: i64, reason: &str) {
        let can = self.groups.get(group_id).is_some_and(|g| {
            matches!(
                g.state,
                GroupState::Stable | GroupState::CompletingRebalance | GroupState::Empty
            )
        });
        if can {
            self.prepare_rebalance(group_id, now_ms, reason);
        }
    }

    fn prepare_rebalance(&mut self, group_id: &str, now_ms: i64, reason: &str) {
        let initial_delay = self.config.initial_rebalance_delay_ms;
        let Some(g) = self.groups.get_mut(group_id) else {
            return;
        };
        let mut answers = Vec::new();
        if g.state == GroupState::CompletingRebalance {
            for m in g.members.values_mut() {
                m.assignment = Bytes::new();
                if let Some(t) = m.awaiting_sync.take() {
                    answers.push(t);
                }
            }
        }
        g.pending_sync.clear();
        g.sync_deadline_ms = None;
        let rebalance_timeout = g.max_rebalance_timeout_ms();
        if g.state == GroupState::Empty {
            let delay = initial_delay.max(0);
            g.rebalance_deadline_ms = Some(now_ms + delay);
            g.initial_delay_remaining_ms = Some((rebalance_timeout - delay).max(0));
        } else {
            g.rebalance_deadline_ms = Some(now_ms + rebalance_timeout);
            g.initial_delay_remaining_ms = None;
        }
        g.transition(GroupState::PreparingRebalance, now_ms);
        info!(
            group = group_id,
            generation = g.generation,
            reason,
            "preparing to rebalance"
        );
        for t in answers {
            self.respond(
                t,
                GroupResponse::Sync(SyncGroupResult::error(codes::REBALANCE_IN_PROGRESS)),
            );
        }
        // Like Kafka's tryCompleteElseWatch: nobody left to wait for completes at once.
        self.maybe_complete_join(group_id, now_ms);
    }

    fn maybe_complete_join(&mut self, group_id: &str, now_ms: i64) {
        let initial_delay = self.config.initial_rebalance_delay_ms;
        let Some(g) = self.groups.get_mut(group_id) else {
            return;
        };
        if g.state != GroupState::PreparingRebalance {
            return;
        }
        let deadline = g.rebalance_deadline_ms.unwrap_or(now_ms);
        if let Some(remaining) = g.initial_delay_remaining_ms {
            // The initial delay never completes early: it waits for more members to arrive.
            if now_ms < deadline {
                return;
            }
            if g.new_member_added && remaining > 0 {
                let delay = initial_delay.min(remaining).max(1);
                g.new_member_added = false;
                g.initial_delay_remaining_ms = Some(remaining - delay);
                g.rebalance_deadline_ms = Some(now_ms + delay);
                return;
            }
        } else if !(g.all_members_joined() || now_ms >= deadline) {
            return;
        }
        self.complete_join(group_id, now_ms);
    }

    fn complete_join(&mut self, group_id: &str, now_ms: i64) {
        let Some(g) = self.groups.get_mut(group_id) else {
            return;
        };
        // Dynamic members that did not rejoin in time are gone; static ones stay until their
        // session expires, so a slow restart keeps its partitions.
        let laggards: Vec<String> = g
            .members
            .values()
            .filter(|m| m.awaiting_join.is_none() && m.instance_id.is_none())
            .map(|m| m.member_id.clone())
            .collect();
        for id in &laggards {
            info!(group = group_id, member = %id, "member did not rejoin in time");
            remove_member(g, id);
        }
        if !g.members.is_empty() {
            let leader_joined = g
                .leader
                .as_ref()
                .and_then(|l| g.members.get(l))
                .is_some_and(|m| m.awaiting_join.is_some());
            if !leader_joined {
                match g.members.values().find(|m| m.awaiting_join.is_some()) {
                    Some(m) => g.leader = Some(m.member_id.clone()),
                    None => {
                        // Only static members that have not rejoined: wait for their session
                        // to expire or for them to come back.
                        g.rebalance_deadline_ms = Some(now_ms + g.max_rebalance_timeout_ms());
                        g.initial_delay_remaining_ms = None;
                        return;
                    }
                }
            }
        }
        g.generation += 1;
        g.rebalance_deadline_ms = None;
        g.initial_delay_remaining_ms = None;
        g.new_member_added = false;
        if g.members.is_empty() {
            g.protocol = None;
            g.leader = None;
            g.subscribed_topics = None;
            g.transition(GroupState::Empty, now_ms);
            info!(
                group = group_id,
                generation = g.generation,
                "group is now empty"
            );
            let partition = g.partition;
            let record = group_record(g, None);
            self.append(partition, vec![record], PendingAppend::Background);
            return;
        }
        g.protocol = g.select_protocol();
        g.transition(GroupState::CompletingRebalance, now_ms);
        g.compute_subscribed_topics();
        let leader = g.leader.clone().unwrap_or_default();
        let all = g.current_member_metadata();
        let mut answers = Vec::new();
        for m in g.members.values_mut() {
            m.is_new = false;
            m.heartbeat_deadline_ms = now_ms + m.session_timeout_ms as i64;
            if let Some(t) = m.awaiting_join.take() {
                answers.push((
                    t,
                    JoinGroupResult {
                        error: codes::NONE,
                        generation_id: g.generation,
                        protocol_type: g.protocol_type.clone(),
                        protocol_name: g.protocol.clone(),
                        leader: leader.clone(),
                        member_id: m.member_id.clone(),
                        members: if m.member_id == leader {
                            all.clone()
                        } else {
                            Vec::new()
                        },
                    },
                ));
            }
        }
        g.pending_sync = g.members.keys().cloned().collect();
        g.sync_deadline_ms = Some(now_ms + g.max_rebalance_timeout_ms());
        info!(group = group_id, generation = g.generation, members = g.members.len(), protocol = ?g.protocol, "rebalance joined");
        for (t, r) in answers {
            self.respond(t, GroupResponse::Join(r));
        }
    }

    /// Removes a member after a leave or an expiry, and moves the group on.
    fn remove_member_and_update(&mut self, group_id: &str, member_id: &str, now_ms: i64) {
        let Some(g) = self.groups.get_mut(group_id) else {
            return;
        };
        let Some(mut m) = remove_member(g, member_id) else {
            return;
        };
        if let Some(t) = m.awaiting_join.take() {
            self.respond(
                t,
                GroupResponse::Join(JoinGroupResult::error(codes::UNKNOWN_MEMBER_ID, member_id)),
            );
        }
        if let Some(t) = m.awaiting_sync.take() {
            self.respond(
                t,
                GroupResponse::Sync(SyncGroupResult::error(codes::UNKNOWN_MEMBER_ID)),
            );
        }
        let state = self.groups.get(group_id).map(|g| g.state);
        match state {
            Some(GroupState::Stable | GroupState::CompletingRebalance) => {
                self.maybe_prepare_rebalance(group_id, now_ms, "member left")
            }
            Some(GroupState::PreparingRebalance) => self.maybe_complete_join(group_id, now_ms),
            _ => {}
        }
    }

    fn tick_group(&mut self, group_id: &str, now_ms: i64) {
        let Some(g) = self.groups.get_mut(group_id) else {
            return;
        };
        let expired: Vec<String> = g
            .members
            .values()
            .filter(|m| !m.should_keep_alive(now_ms))
            .map(|m| m.member_id.clone())
            .collect();
        let expired_pending: Vec<String> = g
            .pending_members
            .iter()
            .filter(|(_, d)| **d <= now_ms)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired_pending {
            g.pending_members.remove(id);
        }
        for id in expired {
            info!(group = group_id, member = %id, "member session expired");
            self.remove_member_and_update(group_id, &id, now_ms);
        }
        let Some(g) = self.groups.get(group_id) else {
            return;
        };
        if g.state == GroupState::PreparingRebalance {
            self.maybe_complete_join(group_id, now_ms);
        }
        let Some(g) = self.groups.get_mut(group_id) else {
            return;
        };
        let sync_expired = matches!(
            g.state,
            GroupState::CompletingRebalance | GroupState::Stable
        ) && !g.pending_sync.is_empty()
            && g.sync_deadline_ms.is_some_and(|d| d <= now_ms);
        if sync_expired {
            let laggards: Vec<String> = std::mem::take(&mut g.pending_sync).into_iter().collect();
            g.sync_deadline_ms = None;
            for id in laggards {
                info!(group = group_id, member = %id, "member did not sync in time");
                if let Some(g) = self.groups.get_mut(group_id) {
                    if let Some(mut m) = remove_member(g, &id) {
                        if let Some(t) = m.awaiting_join.take() {
                            self.respond(
                                t,
                                GroupResponse::Join(JoinGroupResult::error(
                                    codes::UNKNOWN_MEMBER_ID,
                                    id.clone(),
                                )),
                            );
                        }
                        if let Some(t) = m.awaiting_sync.take() {
                            self.respond(
                                t,
                                GroupResponse::Sync(SyncGroupResult::error(
                                    codes::UNKNOWN_MEMBER_ID,
                                )),
                            );
                        }
                    }
                }
            }
            self.maybe_prepare_rebalance(group_id, now_ms, "members did not sync");
        }
        self.remove_if_vacant(group_id);
    }

    // -----------------------------------------------------------------------------------------
    // SyncGroup.

    fn sync_group(&mut self, token: RequestToken, now_ms: i64, req: SyncGroup) {
        let err = |c| GroupResponse::Sync(SyncGroupResult::error(c));
        if let Some(code) = self.validate_group_status(&req.group_id, Api::Sync) {
            return self.respond(token, err(code));
        }
        let Some(g) = self.groups.get_mut(&req.group_id) else {
            return self.respond(token, err(codes::UNKNOWN_MEMBER_ID));
        };
        if g.state == GroupState::Dead {
            return self.respond(token, err(codes::COORDINATOR_NOT_AVAILABLE));
        }
        if let Some(code) =
            g.validate_current_member(&req.member_id, req.group_instance_id.as_deref())
        {
            return self.respond(token, err(code));
        }
        if req.generation_id != g.generation {
            return self.respond(token, err(codes::ILLEGAL_GENERATION));
        }
        if req
            .protocol_type
            .as_ref()
            .is_some_and(|p| g.protocol_type.as_ref() != Some(p))
            || req
                .protocol_name
                .as_ref()
                .is_some_and(|p| g.protocol.as_ref() != Some(p))
        {
            return self.respond(token, err(codes::INCONSISTENT_GROUP_PROTOCOL));
        }
        match g.state {
            GroupState::Empty => self.respond(token, err(codes::UNKNOWN_MEMBER_ID)),
            GroupState::PreparingRebalance => {
                self.respond(token, err(codes::REBALANCE_IN_PROGRESS))
            }
            GroupState::CompletingRebalance => {
                g.pending_sync.remove(&req.member_id);
                let is_leader = g.is_leader(&req.member_id);
                let stale = g
                    .members
                    .get_mut(&req.member_id)
                    .and_then(|m| m.awaiting_sync.replace(token));
                if is_leader {
                    let assignments: HashMap<String, Bytes> = req
                        .assignments
                        .into_iter()
                        .filter(|(id, _)| g.members.contains_key(id))
                        .collect();
                    let partition = g.partition;
                    let record = group_record(g, Some(&assignments));
                    let generation = g.generation;
                    self.append(
                        partition,
                        vec![record],
                        PendingAppend::SyncStore {
                            group: req.group_id.clone(),
                            generation,
                            assignments,
                        },
                    );
                }
                if let Some(old) = stale {
                    self.respond(old, err(codes::REBALANCE_IN_PROGRESS));
                }
            }
            GroupState::Stable => {
                g.pending_sync.remove(&req.member_id);
                let result = match g.members.get_mut(&req.member_id) {
                    Some(m) => {
                        m.heartbeat_deadline_ms = now_ms + m.session_timeout_ms as i64;
                        SyncGroupResult {
                            error: codes::NONE,
                            protocol_type: g.protocol_type.clone(),
                            protocol_name: g.protocol.clone(),
                            assignment: m.assignment.clone(),
                        }
                    }
                    None => SyncGroupResult::error(codes::UNKNOWN_MEMBER_ID),
                };
                self.respond(token, GroupResponse::Sync(result));
            }
            GroupState::Dead => self.respond(token, err(codes::COORDINATOR_NOT_AVAILABLE)),
        }
    }

    fn complete_sync_store(
        &mut self,
        group_id: &str,
        generation: i32,
        assignments: HashMap<String, Bytes>,
        error: Option<ErrorCode>,
        now_ms: i64,
    ) {
        let Some(g) = self.groups.get_mut(group_id) else {
            return;
        };
        // A later rebalance already answered the waiting members: nothing left to do.
        if g.state != GroupState::CompletingRebalance || g.generation != generation {
            return;
        }
        if let Some(code) = error {
            let mut answers = Vec::new();
            for m in g.members.values_mut() {
                m.assignment = Bytes::new();
                if let Some(t) = m.awaiting_sync.take() {
                    answers.push(t);
                }
            }
            for t in answers {
                self.respond(t, GroupResponse::Sync(SyncGroupResult::error(code)));
            }
            self.maybe_prepare_rebalance(group_id, now_ms, "failed to persist the assignment");
            return;
        }
        let mut answers = Vec::new();
        for m in g.members.values_mut() {
            m.assignment = assignments.get(&m.member_id).cloned().unwrap_or_default();
            if let Some(t) = m.awaiting_sync.take() {
                // Its session may have run out while it waited for the leader.
                m.heartbeat_deadline_ms = now_ms + m.session_timeout_ms as i64;
                answers.push((t, m.assignment.clone()));
            }
        }
        g.transition(GroupState::Stable, now_ms);
        info!(group = group_id, generation, "group is stable");
        let (pt, pn) = (g.protocol_type.clone(), g.protocol.clone());
        for (t, assignment) in answers {
            self.respond(
                t,
                GroupResponse::Sync(SyncGroupResult {
                    error: codes::NONE,
                    protocol_type: pt.clone(),
                    protocol_name: pn.clone(),
                    assignment,
                }),
            );
        }
    }

    // -----------------------------------------------------------------------------------------
    // Heartbeat and LeaveGroup.

    fn heartbeat(&mut self, token: RequestToken, now_ms: i64, req: Heartbeat) {
        let code = self.heartbeat_code(now_ms, &req);
        self.respond(token, GroupResponse::Heartbeat(code));
    }

    fn heartbeat_code(&mut self, now_ms: i64, req: &Heartbeat) -> ErrorCode {
        if let Some(code) = self.validate_group_status(&req.group_id, Api::Heartbeat) {
            // While loading, Kafka answers heartbeats blindly so members are not kicked out.
            return if code == codes::COORDINATOR_LOAD_IN_PROGRESS {
                codes::NONE
            } else {
                code
            };
        }
        let Some(g) = self.groups.get_mut(&req.group_id) else {
            return codes::UNKNOWN_MEMBER_ID;
        };
        if g.state == GroupState::Dead {
            return codes::COORDINATOR_NOT_AVAILABLE;
        }
        if let Some(code) =
            g.validate_current_member(&req.member_id, req.group_instance_id.as_deref())
        {
            return code;
        }
        if req.generation_id != g.generation {
            return codes::ILLEGAL_GENERATION;
        }
        let state = g.state;
        if let Some(m) = g.members.get_mut(&req.member_id) {
            m.heartbeat_deadline_ms = now_ms + m.session_timeout_ms as i64;
        }
        match state {
            GroupState::Empty => codes::UNKNOWN_MEMBER_ID,
            GroupState::PreparingRebalance => codes::REBALANCE_IN_PROGRESS,
            GroupState::CompletingRebalance | GroupState::Stable => codes::NONE,
            GroupState::Dead => codes::COORDINATOR_NOT_AVAILABLE,
        }
    }

    fn leave_group(&mut self, token: RequestToken, now_ms: i64, req: LeaveGroup) {
        if let Some(code) = self.validate_group_status(&req.group_id, Api::Leave) {
            return self.respond(
                token,
                GroupResponse::Leave(LeaveGroupResult {
                    error: code,
                    members: Vec::new(),
                }),
            );
        }
        let Some(g) = self.groups.get(&req.group_id) else {
            let members = req
                .members
                .into_iter()
                .map(|m| (m.member_id, m.group_instance_id, codes::UNKNOWN_MEMBER_ID))
                .collect();
            return self.respond(
                token,
                GroupResponse::Leave(LeaveGroupResult {
                    error: codes::NONE,
                    members,
                }),
            );
        };
        if g.state == GroupState::Dead {
            return self.respond(
                token,
                GroupResponse::Leave(LeaveGroupResult {
                    error: codes::COORDINATOR_NOT_AVAILABLE,
                    members: Vec::new(),
                }),
            );
        }
        let mut results = Vec::with_capacity(req.members.len());
        for leaving in req.members {
            let code = self.leave_one(&req.group_id, &leaving, now_ms);
            results.push((leaving.member_id, leaving.group_instance_id, code));
        }
        self.respond(
            token,
            GroupResponse::Leave(LeaveGroupResult {
                error: codes::NONE,
                members: results,
            }),
        );
        self.remove_if_vacant(&req.group_id);
    }

    fn leave_one(&mut self, group_id: &str, leaving: &LeavingMember, now_ms: i64) -> ErrorCode {
        let Some(g) = self.groups.get_mut(group_id) else {
            return codes::UNKNOWN_MEMBER_ID;
        };
        let member_id = if leaving.member_id.is_empty() {
            // Administrative removal of a static member by its instance id.
            match leaving
                .group_instance_id
                .as_ref()
                .and_then(|inst| g.static_members.get(inst))
            {
                Some(id) => id.clone(),
                None => return codes::UNKNOWN_MEMBER_ID,
            }
        } else if g.pending_members.remove(&leaving.member_id).is_some() {
            if g.state == GroupState::PreparingRebalance {
                self.maybe_complete_join(group_id, now_ms);
            }
            return codes::NONE;
        } else {
            if let Some(code) =
                g.validate_current_member(&leaving.member_id, leaving.group_instance_id.as_deref())
            {
                return code;
            }
            leaving.member_id.clone()
        };
        info!(group = group_id, member = %member_id, "member left the group");
        self.remove_member_and_update(group_id, &member_id, now_ms);
        codes::NONE
    }

    // -----------------------------------------------------------------------------------------
    // Offsets.

    fn offset_commit(
        &mut self,
        token: RequestToken,
        now_ms: i64,
        req: OffsetCommit,
        catalog: &dyn TopicCatalog,
    ) {
        let mut results: Vec<PartitionError> = Vec::new();
        let mut valid = Vec::new();
        for p in req.partitions {
            if catalog.partition_exists(&p.topic, p.partition) {
                valid.push(p);
            } else {
                results.push((p.topic, p.partition, codes::UNKNOWN_TOPIC_OR_PARTITION));
            }
        }
        if valid.is_empty() {
            return self.respond(token, GroupResponse::OffsetCommit(results));
        }
        let fail_all = |results: &mut Vec<PartitionError>, valid: Vec<PartitionCommit>, code| {
            results.extend(valid.into_iter().map(|p| (p.topic, p.partition, code)));
        };
        if let Some(code) = self.validate_group_status(&req.group_id, Api::OffsetCommit) {
            fail_all(&mut results, valid, code);
            return self.respond(token, GroupResponse::OffsetCommit(results));
        }
        if !self.groups.contains_key(&req.group_id) {
            if req.generation_id < 0 {
                // Not group-managed (assign() + commit): the group exists only for its offsets.
                let partition = self.partition_for(&req.group_id);
                self.groups.insert(
                    req.group_id.clone(),
                    Group::new(&req.group_id, partition, now_ms),
                );
            } else {
                fail_all(&mut results, valid, codes::ILLEGAL_GENERATION);
                return self.respond(token, GroupResponse::OffsetCommit(results));
            }
        }
        let Some(g) = self.groups.get_mut(&req.group_id) else {
            return;
        };
        let validation = if g.state == GroupState::Dead {
            Some(codes::COORDINATOR_NOT_AVAILABLE)
        } else if req.generation_id < 0 && g.state == GroupState::Empty {
            // Admin client or a consumer using assign(): allowed while nobody is a member.
            None
        } else if req.generation_id >= 0
            || !req.member_id.is_empty()
            || req.group_instance_id.is_some()
        {
            g.validate_current_member(&req.member_id, req.group_instance_id.as_deref())
                .or((req.generation_id != g.generation).then_some(codes::ILLEGAL_GENERATION))
        } else if g.state != GroupState::Empty {
            // Once the group has members only they may commit.
            Some(codes::UNKNOWN_MEMBER_ID)
        } else {
            None
        };
        let state_error = match (validation, g.state) {
            (Some(code), _) => Some(code),
            (None, GroupState::CompletingRebalance) => Some(codes::REBALANCE_IN_PROGRESS),
            _ => None,
        };
        if let Some(code) = state_error {
            fail_all(&mut results, valid, code);
            let group_id = req.group_id.clone();
            self.respond(token, GroupResponse::OffsetCommit(results));
            self.remove_if_vacant(&group_id);
            return;
        }
        if let Some(m) = g.members.get_mut(&req.member_id) {
            m.heartbeat_deadline_ms = now_ms + m.session_timeout_ms as i64;
        }
        let mut written = Vec::new();
        let mut records = Vec::new();
        for p in valid {
            let metadata = p.metadata.unwrap_or_default();
            if metadata.len() > self.config.offset_metadata_max_bytes {
                results.push((p.topic, p.partition, codes::OFFSET_METADATA_TOO_LARGE));
                continue;
            }
            let value = OffsetCommitValue {
                offset: p.offset,
                leader_epoch: p.leader_epoch,
                metadata,
                commit_timestamp_ms: now_ms,
                expire_timestamp_ms: (req.retention_time_ms >= 0)
                    .then(|| now_ms.saturating_add(req.retention_time_ms)),
            };
            let key = OffsetsKey::Offset {
                group: req.group_id.clone(),
                topic: p.topic.clone(),
                partition: p.partition,
            };
            records.push(OffsetsRecord {
                key: key.encode(),
                value: Some(value.encode()),
            });
            written.push((p.topic, p.partition, value));
        }
        if records.is_empty() {
            let group_id = req.group_id.clone();
            self.respond(token, GroupResponse::OffsetCommit(results));
            self.remove_if_vacant(&group_id);
            return;
        }
        for (topic, partition, _) in &written {
            *g.pending_commits
                .entry((topic.clone(), *partition))
                .or_default() += 1;
        }
        let partition = g.partition;
        let order = self.take_order();
        self.append(
            partition,
            records,
            PendingAppend::Commit {
                token,
                group: req.group_id,
                written,
                results,
                order,
            },
        );
    }

    /// Kafka's `handleTxnCommitOffsets`: a group that does not exist is created empty; the
    /// member is checked only when the request names one (v3+); no REBALANCE_IN_PROGRESS
    /// (the offsets count only once the transaction commits). The offsets are written as a
    /// transactional batch of the producer and stay pending until its marker.
    fn txn_offset_commit(
        &mut self,
        token: RequestToken,
        now_ms: i64,
        req: TxnOffsetCommit,
        catalog: &dyn TopicCatalog,
    ) {
        let mut results: Vec<PartitionError> = Vec::new();
        let mut valid = Vec::new();
        for p in req.partitions {
            if catalog.partition_exists(&p.topic, p.partition) {
                valid.push(p);
            } else {
                results.push((p.topic, p.partition, codes::UNKNOWN_TOPIC_OR_PARTITION));
            }
        }
        if valid.is_empty() {
            return self.respond(token, GroupResponse::TxnOffsetCommit(results));
        }
        let fail_all = |results: &mut Vec<PartitionError>, valid: Vec<PartitionCommit>, code| {
            results.extend(valid.into_iter().map(|p| (p.topic, p.partition, code)));
        };
        if let Some(code) = self.validate_group_status(&req.group_id, Api::TxnOffsetCommit) {
            fail_all(&mut results, valid, code);
            return self.respond(token, GroupResponse::TxnOffsetCommit(results));
        }
        if req.producer_id < 0 {
            // A transactional batch needs a producer; Kafka would silently write a plain
            // commit here, which no transactional client can mean.
            fail_all(&mut results, valid, codes::INVALID_REQUEST);
            return self.respond(token, GroupResponse::TxnOffsetCommit(results));
        }
        let partition = self.partition_for(&req.group_id);
        let g = self
            .groups
            .entry(req.group_id.clone())
            .or_insert_with(|| Group::new(&req.group_id, partition, now_ms));
        let validation = if g.state == GroupState::Dead {
            Some(codes::COORDINATOR_NOT_AVAILABLE)
        } else if req.generation_id >= 0
            || !req.member_id.is_empty()
            || req.group_instance_id.is_some()
        {
            g.validate_current_member(&req.member_id, req.group_instance_id.as_deref())
                .or((req.generation_id != g.generation).then_some(codes::ILLEGAL_GENERATION))
        } else {
            None
        };
        if let Some(code) = validation {
            fail_all(&mut results, valid, code);
            let group_id = req.group_id.clone();
            self.respond(token, GroupResponse::TxnOffsetCommit(results));
            self.remove_if_vacant(&group_id);
            return;
        }
        let mut written = Vec::new();
        let mut values = Vec::new();
        let mut records = Vec::new();
        for p in valid {
            let metadata = p.metadata.unwrap_or_default();
            if metadata.len() > self.config.offset_metadata_max_bytes {
                results.push((p.topic, p.partition, codes::OFFSET_METADATA_TOO_LARGE));
                continue;
            }
            let value = OffsetCommitValue {
                offset: p.offset,
                leader_epoch: p.leader_epoch,
                metadata,
                commit_timestamp_ms: now_ms,
                expire_timestamp_ms: None,
            };
            let key = OffsetsKey::Offset {
                group: req.group_id.clone(),
                topic: p.topic.clone(),
                partition: p.partition,
            };
            records.push(OffsetsRecord {
                key: key.encode(),
                value: Some(value.encode()),
            });
            written.push((p.topic.clone(), p.partition));
            values.push(((p.topic, p.partition), value));
        }
        if records.is_empty() {
            let group_id = req.group_id.clone();
            self.respond(token, GroupResponse::TxnOffsetCommit(results));
            self.remove_if_vacant(&group_id);
            return;
        }
        let order = self.take_order();
        let producer_id = req.producer_id;
        let append_id = self.append_as(
            partition,
            records,
            PendingAppend::TxnCommit {
                token,
                group: req.group_id.clone(),
                producer_id,
                written,
                results,
            },
            Some(TxnProducer {
                producer_id,
                producer_epoch: req.producer_epoch,
            }),
        );
        debug!(
            group = %req.group_id,
            transactional_id = %req.transactional_id,
            producer_id,
            "transactional offsets pending"
        );
        if let Some(g) = self.groups.get_mut(&req.group_id) {
            let pending = g.pending_txn.entry(producer_id).or_default();
            for (key, value) in values {
                pending.insert(
                    key,
                    PendingTxnOffset {
                        value,
                        order,
                        in_flight: Some(append_id),
                    },
                );
            }
        }
        self.producer_groups
            .entry(producer_id)
            .or_default()
            .insert(req.group_id);
    }

    /// Kafka's `getOffsets`: with `require_stable`, a partition with an undecided commit
    /// (in flight, or pending in a transaction) answers UNSTABLE_OFFSET_COMMIT and offset -1,
    /// which the consumer retries; the group-level error stays NONE.
    fn offset_fetch(&mut self, token: RequestToken, req: OffsetFetch) {
        let require_stable = req.require_stable;
        let mut out = Vec::with_capacity(req.groups.len());
        for fg in req.groups {
            if let Some(code) = self.validate_group_status(&fg.group_id, Api::OffsetFetch) {
                out.push(OffsetFetchGroupResult {
                    group_id: fg.group_id,
                    error: code,
                    offsets: Vec::new(),
                });
                continue;
            }
            let group = self.groups.get(&fg.group_id);
            let offsets = match fg.topics {
                None => group
                    .map(|g| {
                        g.offsets
                            .iter()
                            .map(|(key, v)| {
                                if require_stable && g.has_pending_commit(key) {
                                    unstable(&key.0, key.1)
                                } else {
                                    fetched(&key.0, key.1, Some(v))
                                }
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                Some(topics) => topics
                    .into_iter()
                    .flat_map(|(t, parts)| {
                        parts
                            .into_iter()
                            .map(move |p| (t.clone(), p))
                            .collect::<Vec<_>>()
                    })
                    .map(|(t, p)| {
                        let key = (t.clone(), p);
                        if require_stable && group.is_some_and(|g| g.has_pending_commit(&key)) {
                            return unstable(&t, p);
                        }
                        let v = group.and_then(|g| g.offsets.get(&key));
                        fetched(&t, p, v)
                    })
                    .collect(),
            };
            out.push(OffsetFetchGroupResult {
                group_id: fg.group_id,
                error: codes::NONE,
                offsets,
            });
        }
        self.respond(token, GroupResponse::OffsetFetch(out));
    }

    fn offset_delete(
        &mut self,
        token: RequestToken,
        req: OffsetDelete,
        catalog: &dyn TopicCatalog,
    ) {
        let top = |error| {
            GroupResponse::OffsetDelete(OffsetDeleteResult {
                error,
                partitions: Vec::new(),
            })
        };
        if let Some(code) = self.validate_group_status(&req.group_id, Api::OffsetDelete) {
            return self.respond(token, top(code));
        }
        let Some(g) = self.groups.get_mut(&req.group_id) else {
            return self.respond(token, top(codes::GROUP_ID_NOT_FOUND));
        };
        let consumer = g.protocol_type.as_deref() == Some("consumer");
        match g.state {
            GroupState::Dead => return self.respond(token, top(codes::GROUP_ID_NOT_FOUND)),
            GroupState::Empty => {}
            _ if consumer => {}
            _ => return self.respond(token, top(codes::NON_EMPTY_GROUP)),
        }
        let mut partitions = Vec::new();
        let mut records = Vec::new();
        for (topic, parts) in req.topics {
            for p in parts {
                let code = if !catalog.partition_exists(&topic, p) {
                    codes::UNKNOWN_TOPIC_OR_PARTITION
                } else if g.state != GroupState::Empty && g.is_subscribed_to(&topic) {
                    codes::GROUP_SUBSCRIBED_TO_TOPIC
                } else {
                    if g.offsets.remove(&(topic.clone(), p)).is_some() {
                        let key = OffsetsKey::Offset {
                            group: req.group_id.clone(),
                            topic: topic.clone(),
                            partition: p,
                        };
                        records.push(OffsetsRecord {
                            key: key.encode(),
                            value: None,
                        });
                    }
                    codes::NONE
                };
                partitions.push((topic.clone(), p, code));
            }
        }
        let result = OffsetDeleteResult {
            error: codes::NONE,
            partitions,
        };
        if records.is_empty() {
            self.respond(token, GroupResponse::OffsetDelete(result));
        } else {
            let partition = g.partition;
            self.append(
                partition,
                records,
                PendingAppend::OffsetDelete { token, result },
            );
        }
    }

    /// Kafka's offset expiration (KIP-211): offsets of an empty group expire
    /// `offsets.retention` after the group became empty; a stable consumer group keeps the
    /// offsets of topics it subscribes to and expires the others by commit time; an
    /// offsets-only group expires each offset by commit time. An explicit v1 expire timestamp
    /// wins. An empty group left without offsets is deleted.
    fn expire_offsets(&mut self, now_ms: i64) {
        let retention = self.config.offsets_retention_ms;
        let mut ids: Vec<String> = self
            .groups
            .values()
            .filter(|g| self.partitions.get(&g.partition) == Some(&PartitionStatus::Active))
            .map(|g| g.id.clone())
            .collect();
        ids.sort();
        let mut by_partition: BTreeMap<i32, Vec<OffsetsRecord>> = BTreeMap::new();
        for id in ids {
            let Some(g) = self.groups.get_mut(&id) else {
                continue;
            };
            let rule: Option<(Option<i64>, Option<&BTreeSet<String>>)> =
                match (g.protocol_type.as_deref(), g.state) {
                    (Some(_), GroupState::Empty) => Some((Some(g.state_timestamp_ms), None)),
                    (Some("consumer"), GroupState::Stable) => {
                        g.subscribed_topics.as_ref().map(|t| (None, Some(t)))
                    }
                    (None, _) => Some((None, None)),
                    _ => None,
                };
            let Some((base, subscribed)) = rule else {
                continue;
            };
            let expired: Vec<(String, i32)> = g
                .offsets
                .iter()
                .filter(|(key, v)| {
                    !subscribed.is_some_and(|t| t.contains(&key.0))
                        && !g.pending_commits.contains_key(*key)
                        && match v.expire_timestamp_ms {
                            Some(expire) => now_ms >= expire,
                            None => {
                                let since = match base {
                                    Some(b) if b >= 0 => b,
                                    _ => v.commit_timestamp_ms,
                                };
                                now_ms.saturating_sub(since) >= retention
                            }
                        }
                })
                .map(|(k, _)| k.clone())
                .collect();
            if expired.is_empty() {
                continue;
            }
            info!(group = %id, count = expired.len(), "expiring committed offsets");
            remove_offsets(&mut self.groups, &mut by_partition, &id, &expired);
        }
        for (partition, records) in by_partition {
            self.append(partition, records, PendingAppend::Background);
        }
    }

    /// Topics were deleted: their committed offsets go too (Kafka's
    /// `handleDeletedPartitions`), with tombstones, and empty groups left without offsets are
    /// removed.
    pub fn on_topics_deleted(&mut self, topics: &[String]) -> Vec<CoordinatorAction> {
        let mut ids: Vec<String> = self
            .groups
            .values()
            .filter(|g| self.partitions.get(&g.partition) == Some(&PartitionStatus::Active))
            .map(|g| g.id.clone())
            .collect();
        ids.sort();
        let mut by_partition: BTreeMap<i32, Vec<OffsetsRecord>> = BTreeMap::new();
        for id in ids {
            let Some(g) = self.groups.get(&id) else {
                continue;
            };
            let gone: Vec<(String, i32)> = g
                .offsets
                .keys()
                .filter(|(t, _)| topics.contains(t))
                .cloned()
                .collect();
            if !gone.is_empty() {
                remove_offsets(&mut self.groups, &mut by_partition, &id, &gone);
            }
        }
        for (partition, records) in by_partition {
            self.append(partition, records, PendingAppend::Background);
        }
        self.reindex_all();
        self.debug_check_index();
        std::mem::take(&mut self.out)
    }

    // -----------------------------------------------------------------------------------------
    // Group administration.

    fn list_groups(&mut self, token: RequestToken, req: ListGroups) {
        let loading = self
            .partitions
            .values()
            .any(|s| *s == PartitionStatus::Loading);
        let classic_ok = req.types_filter.is_empty()
            || req
                .types_filter
                .iter()
                .any(|t| t.eq_ignore_ascii_case("classic"));
        let mut groups: Vec<ListedGroup> = if classic_ok {
            self.groups
                .values()
                .filter(|g| self.partitions.get(&g.partition) == Some(&PartitionStatus::Active))
                .filter(|g| {
                    req.states_filter.is_empty()
                        || req
                            .states_filter
                            .iter()
                            .any(|s| s.eq_ignore_ascii_case(g.state.name()))
                })
                .map(|g| ListedGroup {
                    group_id: g.id.clone(),
                    protocol_type: g.protocol_type.clone().unwrap_or_default(),
                    state: g.state.name().to_owned(),
                })
                .collect()
        } else {
            Vec::new()
        };
        groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        let error = if loading {
            codes::COORDINATOR_LOAD_IN_PROGRESS
        } else {
            codes::NONE
        };
        self.respond(
            token,
            GroupResponse::ListGroups(ListGroupsResult { error, groups }),
        );
    }

    fn describe_groups(&mut self, token: RequestToken, ids: Vec<String>) {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let mut d = DescribedGroup {
                error: codes::NONE,
                group_id: id.clone(),
                exists: false,
                state: GroupState::Dead.name().to_owned(),
                protocol_type: String::new(),
                protocol: String::new(),
                members: Vec::new(),
            };
            if let Some(code) = self.validate_group_status(&id, Api::Describe) {
                d.error = code;
            } else if let Some(g) = self.groups.get(&id) {
                let stable = g.state == GroupState::Stable;
                let protocol = g.protocol.clone().unwrap_or_default();
                d.exists = true;
                d.state = g.state.name().to_owned();
                d.protocol_type = g.protocol_type.clone().unwrap_or_default();
                d.protocol = if stable {
                    protocol.clone()
                } else {
                    String::new()
                };
                d.members = g
                    .members
                    .values()
                    .map(|m| DescribedMember {
                        member_id: m.member_id.clone(),
                        group_instance_id: m.instance_id.clone(),
                        client_id: m.client_id.clone(),
                        client_host: m.client_host.clone(),
                        metadata: if stable {
                            m.metadata_for(&protocol)
                        } else {
                            Bytes::new()
                        },
                        assignment: if stable {
                            m.assignment.clone()
                        } else {
                            Bytes::new()
                        },
                    })
                    .collect();
            }
            out.push(d);
        }
        self.respond(token, GroupResponse::DescribeGroups(out));
    }

    fn delete_groups(&mut self, token: RequestToken, now_ms: i64, ids: Vec<String>) {
        let mut results = Vec::with_capacity(ids.len());
        let mut by_partition: BTreeMap<i32, (Vec<String>, Vec<OffsetsRecord>)> = BTreeMap::new();
        for id in ids {
            if let Some(code) = self.validate_group_status(&id, Api::Delete) {
                results.push((id, code));
                continue;
            }
            let code = match self.groups.get(&id).map(|g| g.state) {
                None | Some(GroupState::Dead) => codes::GROUP_ID_NOT_FOUND,
                Some(GroupState::Empty) => codes::NONE,
                Some(_) => codes::NON_EMPTY_GROUP,
            };
            if code == codes::NONE {
                if let Some(mut g) = self.groups.remove(&id) {
                    g.transition(GroupState::Dead, now_ms);
                    let entry = by_partition.entry(g.partition).or_default();
                    for (topic, partition) in g.offsets.keys() {
                        let key = OffsetsKey::Offset {
                            group: id.clone(),
                            topic: topic.clone(),
                            partition: *partition,
                        };
                        entry.1.push(OffsetsRecord {
                            key: key.encode(),
                            value: None,
                        });
                    }
                    entry.1.push(OffsetsRecord {
                        key: OffsetsKey::GroupMetadata { group: id.clone() }.encode(),
                        value: None,
                    });
                    entry.0.push(id.clone());
                    info!(group = %id, "group deleted");
                }
            }
            results.push((id, code));
        }
        if by_partition.is_empty() {
            return self.respond(token, GroupResponse::DeleteGroups(results));
        }
        self.multi_deletes.insert(
            token,
            MultiDelete {
                remaining: by_partition.len(),
                results,
            },
        );
        for (partition, (groups, records)) in by_partition {
            self.append(
                partition,
                records,
                PendingAppend::DeleteGroups { token, groups },
            );
        }
    }
}

/// Drops `keys` from a group's offsets with tombstones (added to `by_partition`), and the
/// group itself when it is empty and has nothing left, as Kafka's `cleanupGroupMetadata`.
fn remove_offsets(
    groups: &mut HashMap<String, Group>,
    by_partition: &mut BTreeMap<i32, Vec<OffsetsRecord>>,
    group_id: &str,
    keys: &[(String, i32)],
) {
    let Some(g) = groups.get_mut(group_id) else {
        return;
    };
    let records = by_partition.entry(g.partition).or_default();
    for (topic, partition) in keys {
        if g.offsets.remove(&(topic.clone(), *partition)).is_none() {
            continue;
        }
        let key = OffsetsKey::Offset {
            group: group_id.to_owned(),
            topic: topic.clone(),
            partition: *partition,
        };
        records.push(OffsetsRecord {
            key: key.encode(),
            value: None,
        });
    }
    if g.state == GroupState::Empty
        && g.members.is_empty()
        && g.pending_members.is_empty()
        && g.offsets.is_empty()
        && g.pending_commits.is_empty()
        && g.pending_txn.is_empty()
    {
        records.push(OffsetsRecord {
            key: OffsetsKey::GroupMetadata {
                group: group_id.to_owned(),
            }
            .encode(),
            value: None,
        });
        groups.remove(group_id);
        info!(group = group_id, "empty group without offsets removed");
    }
}

fn unstable(topic: &str, partition: i32) -> FetchedOffset {
    FetchedOffset {
        error: codes::UNSTABLE_OFFSET_COMMIT,
        ..fetched(topic, partition, None)
    }
}

fn fetched(topic: &str, partition: i32, v: Option<&OffsetCommitValue>) -> FetchedOffset {
    FetchedOffset {
        topic: topic.to_owned(),
        partition,
        offset: v.map_or(-1, |v| v.offset),
        leader_epoch: v.map_or(-1, |v| v.leader_epoch),
        metadata: v.map(|v| v.metadata.clone()).unwrap_or_default(),
        error: codes::NONE,
    }
}

fn current_join_result(g: &Group, member_id: &str) -> JoinGroupResult {
    JoinGroupResult {
        error: codes::NONE,
        generation_id: g.generation,
        protocol_type: g.protocol_type.clone(),
        protocol_name: g.protocol.clone(),
        leader: g.leader.clone().unwrap_or_default(),
        member_id: member_id.to_owned(),
        members: if g.is_leader(member_id) {
            g.current_member_metadata()
        } else {
            Vec::new()
        },
    }
}

fn group_record(g: &Group, assignments: Option<&HashMap<String, Bytes>>) -> OffsetsRecord {
    OffsetsRecord {
        key: OffsetsKey::GroupMetadata {
            group: g.id.clone(),
        }
        .encode(),
        value: Some(g.metadata_value(assignments).encode()),
    }
}

/// Removes a member from the group's bookkeeping (no state transition); returns it.
fn remove_member(g: &mut Group, member_id: &str) -> Option<Member> {
    let m = g.members.remove(member_id)?;
    if let Some(inst) = &m.instance_id {
        if g.static_members.get(inst).map(String::as_str) == Some(member_id) {
            g.static_members.remove(inst);
        }
    }
    g.pending_sync.remove(member_id);
    if g.is_leader(member_id) {
        g.leader = g
            .members
            .values()
            .find(|m| m.awaiting_join.is_some())
            .or_else(|| g.members.values().next())
            .map(|m| m.member_id.clone());
    }
    Some(m)
}

/// Moves a static member to a new member id. Returns the tokens the old id was waiting on
/// (`true` for a SyncGroup), which must be answered FENCED_INSTANCE_ID.
fn replace_member_id(
    g: &mut Group,
    instance_id: &str,
    old: &str,
    new: &str,
) -> Vec<(RequestToken, bool)> {
    let mut fenced = Vec::new();
    let Some(mut m) = g.members.remove(old) else {
        return fenced;
    };
    if let Some(t) = m.awaiting_join.take() {
        fenced.push((t, false));
    }
    if let Some(t) = m.awaiting_sync.take() {
        fenced.push((t, true));
    }
    m.member_id = new.to_owned();
    g.members.insert(new.to_owned(), m);
    g.static_members
        .insert(instance_id.to_owned(), new.to_owned());
    if g.is_leader(old) {
        g.leader = Some(new.to_owned());
    }
    if g.pending_sync.remove(old) {
        g.pending_sync.insert(new.to_owned());
    }
    fenced
}

fn apply_group_metadata(g: &mut Group, value: GroupMetadataValue) {
    g.protocol_type = (!value.protocol_type.is_empty()).then_some(value.protocol_type);
    g.generation = value.generation;
    g.protocol = value.protocol;
    g.leader = value.leader;
    g.state_timestamp_ms = value.current_state_timestamp_ms;
    g.members.clear();
    g.static_members.clear();
    let protocol = g.protocol.clone().unwrap_or_default();
    for m in value.members {
        if let Some(inst) = &m.group_instance_id {
            g.static_members.insert(inst.clone(), m.member_id.clone());
        }
        g.members.insert(
            m.member_id.clone(),
            Member {
                member_id: m.member_id,
                instance_id: m.group_instance_id,
                client_id: m.client_id,
                client_host: m.client_host,
                rebalance_timeout_ms: m.rebalance_timeout_ms,
                session_timeout_ms: m.session_timeout_ms,
                protocols: vec![JoinProtocol {
                    name: protocol.clone(),
                    metadata: m.subscription,
                }],
                assignment: m.assignment,
                awaiting_join: None,
                awaiting_sync: None,
                is_new: false,
                heartbeat_deadline_ms: 0,
            },
        );
    }
    if g.leader
        .as_ref()
        .is_some_and(|l| !g.members.contains_key(l))
    {
        g.leader = g.members.keys().next().cloned();
    }
}
