//! Replication through storage: the sans-IO replication core (`crate::replication`) driven by
//! a shard's real partition logs.
//!
//! Each shard keeps one [`Replica`] per partition it owns and hosts a replica of. Controller
//! images reach the shard as [`reconcile`] jobs: the replica becomes leader or follower
//! (`PartitionReplica::apply_partition_state`), a follower starts a fetcher task, a quorum
//! election gets this replica's vote. The leader side is fed by the produce and fetch paths
//! ([`before_append`], [`after_append`], [`fetch_limit`]) and a 100 ms tick (ISR shrink,
//! acks=all timeouts); its actions (high watermark moved, produce answered, AlterPartition)
//! are carried out by [`drive`]. Everything runs on the owner shard's thread.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::metrics::{names, Counter};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{self as m, ApiKey, BrokerId, TopicName};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::cluster::ClusterNode;
use super::cluster_client::KafkaClient;
use super::config::BrokerConfig;
use super::partition_io::FetchIn;
use super::protocol::error_code as ec;
use super::shard::{Partition, Peers, Phase, Shard, ShardLocal};
use crate::controller::{
    ControllerError, MetadataImage as ClusterImage, PartitionImage, TopicImage,
};
use crate::replication::policy::policy_for;
use crate::replication::{
    EpochEndOffset, EpochLog, FetchResponseInfo, FollowerFetch, FollowerRequest, FollowerStep,
    LeaderAction, LeaderState, PartitionReplica, PartitionState, ProduceWaiter, ReplicationConfig,
    ReplicationError, ReplicationMode, ReplicationPolicy, RoleChange,
};
use crate::storage::PartitionLog;

/// Kafka error code NOT_LEADER_OR_FOLLOWER.
const NOT_LEADER_OR_FOLLOWER: i16 = 6;
/// How often leaders check ISR lag and acks=all deadlines.
const TICK: Duration = Duration::from_millis(100);
/// Ticks between high watermark checkpoints (5 s, Kafka's
/// `replica.high.watermark.checkpoint.interval.ms` default).
const HW_CHECKPOINT_TICKS: u64 = 50;
/// Largest fetch response a replica fetcher asks for (all partitions).
const FOLLOWER_FETCH_BYTES: i32 = 16 * 1024 * 1024;
/// Largest share of one partition in a replica fetch.
const FOLLOWER_PARTITION_BYTES: i32 = 4 * 1024 * 1024;
/// Fetch version followers speak (flexible, topic names, current/last-fetched epochs).
const FOLLOWER_FETCH_VERSION: i16 = 12;
/// OffsetForLeaderEpoch version followers speak (replica id, current leader epoch).
const OFFSET_FOR_LEADER_EPOCH_VERSION: i16 = 4;

type SharedPolicy = Arc<dyn ReplicationPolicy + Send + Sync>;

impl EpochLog for PartitionLog {
    fn log_end_offset(&self) -> i64 {
        PartitionLog::log_end_offset(self)
    }

    fn latest_epoch(&self) -> Option<i32> {
        PartitionLog::latest_epoch(self)
    }

    fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, i64)> {
        PartitionLog::end_offset_for_epoch(self, epoch)
    }
}

/// Milliseconds on a monotonic clock (the replication core's time).
fn now() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// One partition replica hosted by this shard.
pub struct Replica {
    topic: String,
    partition: i32,
    topic_id: Uuid,
    part: Rc<Partition>,
    state: RefCell<PartitionReplica<SharedPolicy>>,
    waiters: RefCell<HashMap<u64, oneshot::Sender<Result<i64, ReplicationError>>>>,
    /// Leader epoch the running fetcher task serves (-1: none).
    fetcher_epoch: Cell<i32>,
    /// Election epoch this replica last voted in (quorum mode).
    voted_epoch: Cell<i32>,
    removed: Cell<bool>,
    /// ISR size in the last image applied (0 before the first).
    isr_seen: Cell<usize>,
    /// Quorum mode: the leader epoch whose epoch marker is not appended yet (-1: none).
    /// Produces wait for it, so the marker is the first batch of its epoch.
    marker_pending: Cell<i32>,
    /// The leader found itself cut off at its last tick (logged on each change).
    cut_off: Cell<bool>,
    /// The high watermark last written to the partition's checkpoint file.
    hw_written: Cell<i64>,
}

/// Replication counters of one shard, labelled `shard`, registered on first use.
struct ReplicationCounters {
    isr_shrinks: Counter,
    isr_expands: Counter,
    leader_elections: Counter,
}

fn counters(rs: &Replicas) -> &ReplicationCounters {
    rs.counters.get_or_init(|| {
        let id = rs.shard.id.to_string();
        let labels = [("shard", id.as_str())];
        let m = &rs.shard.ctx.metrics;
        ReplicationCounters {
            isr_shrinks: m.register_counter(
                names::ISR_SHRINKS_TOTAL,
                "Committed ISR shrinks of partitions led here.",
                &labels,
            ),
            isr_expands: m.register_counter(
                names::ISR_EXPANDS_TOTAL,
                "Committed ISR expansions of partitions led here.",
                &labels,
            ),
            leader_elections: m.register_counter(
                names::LEADER_ELECTIONS_TOTAL,
                "Partitions this broker became leader of.",
                &labels,
            ),
        }
    })
}

/// Called when this broker becomes leader of a partition (with its leader epoch) or stops
/// leading it (`None`): how a service above replication follows leadership.
pub type LeadershipListener = Box<dyn Fn(&str, i32, Option<i32>)>;

/// The replication service of one shard: the leader or follower state of every partition
/// replica the shard owns, driven by the controller's images, and the produce, fetch and
/// list-offsets paths that go through it (`broker::partition_io`).
pub struct Replicas {
    /// The shard core this service runs on.
    pub shard: Rc<Shard>,
    peers: Arc<Peers<Replicas>>,
    leadership_listeners: RefCell<Vec<LeadershipListener>>,
    counters: std::cell::OnceCell<ReplicationCounters>,
    slots: RefCell<HashMap<(String, i32), Rc<Replica>>>,
    pending: RefCell<Option<Arc<ClusterImage>>>,
    reconciling: Cell<bool>,
    ticking: Cell<bool>,
    next_waiter: Cell<u64>,
    topic_configs: RefCell<HashMap<String, BTreeMap<String, String>>>,
    /// Leader brokers this shard runs a replica fetcher for.
    fetchers: RefCell<std::collections::HashSet<i32>>,
    /// Topics whose replicas this shard is deleting right now.
    deleting: RefCell<std::collections::HashSet<String>>,
}

impl ShardLocal for Replicas {
    fn shard_id(&self) -> usize {
        self.shard.id
    }

    fn peers(&self) -> &Peers<Replicas> {
        &self.peers
    }
}

impl Replicas {
    /// The replication service of `shard`; `peers` reaches the other shards' services.
    pub fn new(shard: Rc<Shard>, peers: Arc<Peers<Replicas>>) -> Replicas {
        Replicas {
            shard,
            peers,
            leadership_listeners: RefCell::new(Vec::new()),
            counters: Default::default(),
            slots: Default::default(),
            pending: Default::default(),
            reconciling: Default::default(),
            ticking: Default::default(),
            next_waiter: Default::default(),
            topic_configs: Default::default(),
            fetchers: Default::default(),
            deleting: Default::default(),
        }
    }

    /// Registers `listener` for the leadership changes of this shard's replicas.
    pub fn on_leadership_change(&self, listener: LeadershipListener) {
        self.leadership_listeners.borrow_mut().push(listener);
    }

    /// Every replica's committed prefix for /metrics: the state of this shard's partitions.
    pub fn partition_snapshots(&self) -> Vec<crate::metrics::PartitionSnapshot> {
        self.shard
            .partition_snapshots(&|topic, p, log_end| wake_end(self, topic, p, log_end, false))
    }

    /// Checkpoints the high watermarks, then closes every partition of the shard.
    pub async fn close(&self) {
        checkpoint_high_watermarks(self).await;
        self.shard.close_all().await;
    }

    fn get(&self, topic: &str, partition: i32) -> Option<Rc<Replica>> {
        self.slots
            .borrow()
            .get(&(topic.to_string(), partition))
            .cloned()
    }
}

/// The topic's replication settings: topic overrides, else the broker's defaults.
fn replication_config(config: &BrokerConfig, topic: &TopicImage) -> ReplicationConfig {
    let mut c = topic.replication_config();
    let raw = |k: &str| config.raw.get(k).map(|v| v.trim().to_string());
    if !topic.configs.contains_key("min.insync.replicas") {
        if let Some(n) = raw("min.insync.replicas").and_then(|v| v.parse().ok()) {
            c.min_insync_replicas = n;
        }
    }
    if let Some(n) = raw("replica.lag.time.max.ms").and_then(|v| v.parse().ok()) {
        c.replica_lag_time_max_ms = n;
    }
    if !topic.configs.contains_key("unclean.leader.election.enable") {
        c.unclean_leader_election_enable =
            raw("unclean.leader.election.enable").as_deref() == Some("true");
    }
    c
}

fn partition_state(p: &PartitionImage) -> PartitionState {
    PartitionState {
        leader: p.leader,
        leader_epoch: p.leader_epoch,
        partition_epoch: p.partition_epoch,
        replicas: p.replicas.clone(),
        isr: p.isr.clone(),
    }
}

/// Keeps the leader's view of its log end offset equal to the log's (appends of any request
/// may have finished since the last call). A log shorter than the leader thinks can only come
/// from a follower truncation that finished after this replica became leader; such a leader
/// refuses requests (NOT_LEADER_OR_FOLLOWER) until the next tick rebuilds it from the log
/// ([`restart_leadership`]).
fn sync_log_end(
    leader: &mut LeaderState<SharedPolicy>,
    log: &PartitionLog,
    now: u64,
) -> Result<(), ReplicationError> {
    let leo = log.log_end_offset();
    if leo > leader.log_end_offset() {
        leader.on_append(leo, None, now);
    } else if leo < leader.log_end_offset() {
        warn!(
            log_end_offset = leo,
            leader_log_end_offset = leader.log_end_offset(),
            "leader log shorter than its state (late truncation); refusing requests"
        );
        return Err(ReplicationError::NotLeaderOrFollower);
    }
    Ok(())
}

/// Why a leader must stop serving clients before any newer partition record reaches it:
/// its broker's controller session has lapsed (the controller fences it and elects another
/// leader), its broker registered again and its metadata has not caught up since (the
/// partition may have moved meanwhile), or, in quorum mode, no majority of its replicas has fetched within
/// `replica.lag.time.max.ms`. `None` while it may lead.
fn cut_off(
    node: &ClusterNode,
    leader: &LeaderState<SharedPolicy>,
    now: u64,
) -> Option<&'static str> {
    if !node.session_alive() {
        Some("this broker's controller session has lapsed")
    } else if !node.caught_up() {
        Some("this broker's metadata has not caught up with the controller since it registered")
    } else if !leader.has_majority_contact(now) {
        Some("no majority of the replicas fetched within replica.lag.time.max.ms")
    } else {
        None
    }
}

/// Whether this shard still holds (or is still deleting) a replica of topic `topic_id`.
pub fn holds_topic(rs: &Replicas, topic: &str, topic_id: Uuid) -> bool {
    let r = rs;
    r.deleting.borrow().contains(topic)
        || r.slots
            .borrow()
            .values()
            .any(|s| s.topic == topic && s.topic_id == topic_id)
}

/// Applies a controller image to this shard's replicas. Images arriving while one is being
/// applied are coalesced: only the newest is applied next.
pub async fn reconcile(rs: Rc<Replicas>, image: Arc<ClusterImage>) {
    let replicas = &rs;
    *replicas.pending.borrow_mut() = Some(image);
    if replicas.reconciling.replace(true) {
        return;
    }
    loop {
        let next = replicas.pending.borrow_mut().take();
        let Some(image) = next else { break };
        reconcile_once(&rs, &image).await;
    }
    replicas.reconciling.set(false);
    if !replicas.ticking.replace(true) {
        crate::io::runtime::spawn(tick_loop(rs.clone()));
    }
}

async fn reconcile_once(rs: &Rc<Replicas>, image: &Arc<ClusterImage>) {
    let node = rs.shard.ctx.metadata.cluster_node().clone();
    // A stopping shard opens nothing more (its logs are about to close).
    if *rs.shard.phase.borrow() != Phase::Running {
        return;
    }
    let node_id = node.node_id;
    let caught_up = node.image_caught_up(image);
    // Topics deleted (or deleted and recreated) since the last image.
    let stale: Vec<(String, i32)> = rs
        .slots
        .borrow()
        .values()
        .filter(|r| {
            image
                .topic(&r.topic)
                .is_none_or(|t| t.topic_id != r.topic_id)
        })
        .map(|r| (r.topic.clone(), r.partition))
        .collect();
    let mut deleted: HashMap<String, i32> = HashMap::new();
    for (topic, _) in &stale {
        rs.deleting.borrow_mut().insert(topic.clone());
    }
    for (topic, p) in stale {
        if let Some(r) = rs.slots.borrow_mut().remove(&(topic.clone(), p)) {
            r.removed.set(true);
            r.fetcher_epoch.set(-1);
            r.waiters.borrow_mut().clear();
        }
        let n = deleted.entry(topic).or_insert(0);
        *n = (*n).max(p + 1);
    }
    for (topic, n) in deleted {
        rs.topic_configs.borrow_mut().remove(&topic);
        rs.shard
            .clone()
            .delete_topic_partitions(topic.clone(), n)
            .await;
        rs.deleting.borrow_mut().remove(&topic);
    }
    for t in image.topics.values() {
        let changed = rs.topic_configs.borrow().get(&t.name) != Some(&t.configs);
        if changed {
            rs.topic_configs
                .borrow_mut()
                .insert(t.name.clone(), t.configs.clone());
            rs.shard.clone().apply_topic_config(t.name.clone()).await;
        }
        let mode = t.replication_mode();
        for p in &t.partitions {
            if !p.replicas.contains(&node_id)
                || rs.shard.ctx.owner(&t.name, p.partition) != rs.shard.id
            {
                continue;
            }
            let slot = match rs.get(&t.name, p.partition) {
                Some(s) if s.topic_id == t.topic_id => s,
                _ => {
                    let part = match rs.shard.partition(&t.name, p.partition).await {
                        Ok(part) => part,
                        Err(code) => {
                            warn!(
                                topic = t.name,
                                partition = p.partition,
                                code,
                                "cannot open replica"
                            );
                            continue;
                        }
                    };
                    // The checkpointed high watermark, so a restarted replica does not report
                    // (or, as a new leader, start from) the log start.
                    let checkpointed = part.log.checkpointed_high_watermark();
                    // Every replica cleans only its committed prefix (moved every tick).
                    part.log.set_cleanable_end(checkpointed.unwrap_or(0));
                    let state = PartitionReplica::new(
                        node_id,
                        policy_for(mode),
                        replication_config(&rs.shard.ctx.config, t),
                        checkpointed.unwrap_or(0),
                        &part.log,
                    );
                    let slot = Rc::new(Replica {
                        topic: t.name.clone(),
                        partition: p.partition,
                        topic_id: t.topic_id,
                        part,
                        state: RefCell::new(state),
                        waiters: RefCell::new(HashMap::new()),
                        fetcher_epoch: Cell::new(-1),
                        voted_epoch: Cell::new(-1),
                        removed: Cell::new(false),
                        isr_seen: Cell::new(0),
                        marker_pending: Cell::new(-1),
                        cut_off: Cell::new(false),
                        hw_written: Cell::new(checkpointed.unwrap_or(-1)),
                    });
                    rs.slots
                        .borrow_mut()
                        .insert((t.name.clone(), p.partition), slot.clone());
                    slot
                }
            };
            if changed {
                slot.state
                    .borrow_mut()
                    .set_config(replication_config(&rs.shard.ctx.config, t));
            }
            apply(rs, &node, &slot, p, mode, caught_up);
        }
    }
}

/// The partition state this replica applies from an image: as recorded, except that a
/// leadership of this broker is not taken from an image that has not caught up with the
/// controller since this broker registered (`ClusterNode::image_caught_up`). After a restart
/// the image replayed from the local log can name this broker leader of an epoch that
/// ended while it was down; leading it would answer clients (and append, and load
/// coordinators) from a superseded epoch. The replica waits as a follower with no leader and
/// takes the leadership, same epoch, from the first caught-up image that still records it.
fn applicable_state(p: &PartitionImage, node_id: i32, caught_up: bool) -> PartitionState {
    let mut state = partition_state(p);
    if !caught_up && state.leader == Some(node_id) {
        state.leader = None;
    }
    debug_assert!(caught_up || state.leader != Some(node_id));
    state
}

fn apply(
    rs: &Rc<Replicas>,
    node: &Arc<ClusterNode>,
    slot: &Rc<Replica>,
    p: &PartitionImage,
    mode: ReplicationMode,
    caught_up: bool,
) {
    let now = now();
    // Count committed ISR changes of partitions led here once each, whoever asked for them
    // (this leader's AlterPartition or the controller fencing a broker).
    let seen = slot.isr_seen.replace(p.isr.len());
    if p.leader == Some(node.node_id) && seen != 0 {
        match p.isr.len().cmp(&seen) {
            std::cmp::Ordering::Less => counters(rs).isr_shrinks.inc(),
            std::cmp::Ordering::Greater => counters(rs).isr_expands.inc(),
            std::cmp::Ordering::Equal => {}
        }
    }
    // A leader of this very epoch (a broker that registered again) keeps it: the newer
    // image is no older than the one it took the leadership from.
    let leads_it = slot.state.borrow().role_leader_epoch() == Some(p.leader_epoch);
    let change = slot.state.borrow_mut().apply_partition_state(
        &applicable_state(p, node.node_id, caught_up || leads_it),
        &slot.part.log,
        now,
    );
    // Services that follow leadership (the group coordinator of an offsets partition).
    let led = match &change {
        RoleChange::BecameLeader { leader_epoch, .. } => Some(Some(*leader_epoch)),
        RoleChange::BecameFollower { .. } => Some(None),
        RoleChange::IsrChanged | RoleChange::None => None,
    };
    if let Some(epoch) = led {
        for listener in rs.leadership_listeners.borrow().iter() {
            listener(&slot.topic, slot.partition, epoch);
        }
    }
    match change {
        RoleChange::BecameLeader {
            leader_epoch,
            append_epoch_marker,
            ..
        } => {
            info!(
                topic = slot.topic,
                partition = slot.partition,
                leader_epoch,
                "leading"
            );
            counters(rs).leader_elections.inc();
            slot.fetcher_epoch.set(-1);
            slot.part.appended.notify_waiters();
            if append_epoch_marker {
                slot.marker_pending.set(leader_epoch);
                crate::io::runtime::spawn(append_epoch_marker_record(
                    rs.clone(),
                    node.clone(),
                    slot.clone(),
                    leader_epoch,
                ));
            }
        }
        RoleChange::BecameFollower {
            leader: Some(leader),
            leader_epoch,
        } => {
            info!(
                topic = slot.topic,
                partition = slot.partition,
                leader,
                leader_epoch,
                "following"
            );
            slot.fetcher_epoch.set(leader_epoch);
            ensure_fetcher(rs, node, leader);
        }
        RoleChange::BecameFollower { leader: None, .. } => slot.fetcher_epoch.set(-1),
        RoleChange::IsrChanged | RoleChange::None => {}
    }
    // A quorum election waits for a majority of replicas to fence themselves and report
    // their log positions. A replica votes only in an election its caught-up image shows
    // (a replayed image's election may be long over).
    let election = p.next_leader_epoch();
    if mode == ReplicationMode::Quorum
        && p.leader.is_none()
        && !p.election_reports.contains_key(&node.node_id)
        && slot.voted_epoch.get() < election
        && caught_up
    {
        let position = slot
            .state
            .borrow_mut()
            .fence_for_election(election, &slot.part.log);
        slot.voted_epoch.set(election);
        slot.fetcher_epoch.set(-1);
        let (node, slot2) = (node.clone(), slot.clone());
        crate::io::runtime::spawn(async move {
            let r = node
                .controller
                .report_replica_log(
                    &slot2.topic,
                    slot2.partition,
                    node.node_id,
                    election,
                    position.into(),
                )
                .await;
            if let Err(e) = r {
                warn!(
                    topic = slot2.topic,
                    partition = slot2.partition,
                    "election report failed: {e}"
                );
                // Vote again on the next image.
                slot2.voted_epoch.set(-1);
            }
        });
    }
    drive(rs, node, slot);
}

/// A control batch starting `epoch` (the role of Raft's no-op entry and KRaft's LeaderChange
/// record): once a majority has it, the quorum commit point may pass older epochs' records.
/// Consumers skip control batches.
fn epoch_marker(leader: i32, epoch: i32) -> Option<BytesMut> {
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    // Control record key: version 0, type 2 (LEADER_CHANGE); value: version 0, leader id.
    let mut value = Vec::with_capacity(6);
    value.extend_from_slice(&0i16.to_be_bytes());
    value.extend_from_slice(&leader.to_be_bytes());
    let record = Record {
        transactional: false,
        control: true,
        partition_leader_epoch: epoch,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: super::shard::now_ms(),
        key: Some(Bytes::from_static(&[0, 0, 0, 2])),
        value: Some(Bytes::from(value)),
        headers: Default::default(),
        delete_horizon: false,
    };
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    match RecordBatchEncoder::encode(&mut buf, [record].iter(), &options) {
        Ok(()) => Some(buf),
        Err(e) => {
            warn!("cannot encode the epoch marker: {e}");
            None
        }
    }
}

async fn append_epoch_marker_record(
    rs: Rc<Replicas>,
    node: Arc<ClusterNode>,
    slot: Rc<Replica>,
    epoch: i32,
) {
    if slot.state.borrow().role_leader_epoch() != Some(epoch) {
        return;
    }
    let Some(batch) = epoch_marker(node.node_id, epoch) else {
        slot.marker_pending.set(-1);
        return;
    };
    let appended = slot
        .part
        .log
        .append_leader_control(batch, epoch, super::shard::now_ms())
        .await;
    if slot.marker_pending.get() == epoch {
        slot.marker_pending.set(-1);
    }
    match appended {
        Ok(_) => {
            {
                let mut st = slot.state.borrow_mut();
                if let Some(l) = st.leader_mut().filter(|l| l.leader_epoch() == epoch) {
                    let _ = sync_log_end(l, &slot.part.log, now());
                }
            }
            slot.part.appended.notify_waiters();
            drive(&rs, &node, &slot);
        }
        Err(e) => warn!(
            topic = slot.topic,
            partition = slot.partition,
            "epoch marker append failed: {e}"
        ),
    }
}

/// Carries out the leader's pending actions.
fn drive(rs: &Rc<Replicas>, node: &Arc<ClusterNode>, slot: &Rc<Replica>) {
    loop {
        let action = slot.state.borrow_mut().poll_action();
        match action {
            None => break,
            Some(LeaderAction::HighWatermark(_)) => slot.part.appended.notify_waiters(),
            Some(LeaderAction::CompleteProduce { id, result }) => {
                if let Some(tx) = slot.waiters.borrow_mut().remove(&id) {
                    let _ = tx.send(result);
                }
            }
            Some(LeaderAction::AlterPartition(request)) => {
                let (rs, node, slot) = (rs.clone(), node.clone(), slot.clone());
                crate::io::runtime::spawn(async move {
                    let answer = node
                        .controller
                        .alter_partition(
                            &slot.topic,
                            slot.partition,
                            node.node_id,
                            node.broker_epoch(),
                            request.leader_epoch,
                            request.partition_epoch,
                            request.new_isr.clone(),
                        )
                        .await;
                    let response = match answer {
                        Ok(p) => Ok(partition_state(&p)),
                        Err(ControllerError::Rejected(e)) => Err(match e.code() {
                            74 => ReplicationError::FencedLeaderEpoch {
                                request: request.leader_epoch,
                                current: -1,
                            },
                            75 => ReplicationError::UnknownLeaderEpoch {
                                request: request.leader_epoch,
                                current: -1,
                            },
                            6 => ReplicationError::NotLeaderOrFollower,
                            95 => ReplicationError::InvalidUpdateVersion {
                                request: request.partition_epoch,
                                current: -1,
                            },
                            _ => ReplicationError::IneligibleReplica(-1),
                        }),
                        // No answer: the leader sends it again after its retry interval.
                        Err(e) => {
                            debug!("AlterPartition not answered: {e}");
                            return;
                        }
                    };
                    if let Some(l) = slot.state.borrow_mut().leader_mut() {
                        l.on_alter_partition_response(&request, response, now());
                    }
                    drive(&rs, &node, &slot);
                });
            }
        }
    }
}

/// Writes the high watermark of every replica of this shard whose value changed since its
/// last checkpoint (Kafka's `replication-offset-checkpoint`, per partition directory here).
pub async fn checkpoint_high_watermarks(rs: &Replicas) {
    let slots: Vec<Rc<Replica>> = rs.slots.borrow().values().cloned().collect();
    for slot in slots {
        if slot.removed.get() {
            continue;
        }
        let hw = slot
            .state
            .borrow()
            .high_watermark()
            .min(slot.part.log.log_end_offset());
        if hw < 0 || hw == slot.hw_written.get() {
            continue;
        }
        match slot.part.log.write_high_watermark(hw).await {
            Ok(()) => slot.hw_written.set(hw),
            Err(e) => warn!(
                topic = slot.topic,
                partition = slot.partition,
                "cannot checkpoint the high watermark: {e}"
            ),
        }
    }
}

async fn tick_loop(rs: Rc<Replicas>) {
    let node = rs.shard.ctx.metadata.cluster_node().clone();
    let mut ticks: u64 = 0;
    loop {
        tokio::time::sleep(TICK).await;
        let phase = *rs.shard.phase.borrow();
        if phase == Phase::Closing {
            // The shard's close writes the last checkpoint.
            return;
        }
        ticks += 1;
        if phase == Phase::Running && ticks.is_multiple_of(HW_CHECKPOINT_TICKS) {
            checkpoint_high_watermarks(&rs).await;
        }
        let slots: Vec<Rc<Replica>> = rs.slots.borrow().values().cloned().collect();
        let now = now();
        for slot in slots {
            slot.part
                .log
                .set_cleanable_end(slot.state.borrow().high_watermark());
            let consistent = {
                let mut st = slot.state.borrow_mut();
                match st.leader_mut() {
                    Some(l) => {
                        let ok = sync_log_end(l, &slot.part.log, now).is_ok();
                        if ok {
                            l.on_tick(now);
                        }
                        let why = cut_off(&node, l, now);
                        if let Some(why) = why {
                            // Its acks=all writes cannot commit here any more: the clients
                            // retry against the new leader now, not at their timeout.
                            l.fail_waiters(&ReplicationError::NotLeaderOrFollower);
                            if !slot.cut_off.replace(true) {
                                warn!(
                                    topic = slot.topic,
                                    partition = slot.partition,
                                    leader_epoch = l.leader_epoch(),
                                    "leader cut off ({why}): refusing produce and fetch"
                                );
                            }
                        } else if slot.cut_off.replace(false) {
                            info!(
                                topic = slot.topic,
                                partition = slot.partition,
                                "leader reachable again: serving"
                            );
                        }
                        ok
                    }
                    None => {
                        slot.cut_off.set(false);
                        true
                    }
                }
            };
            if consistent {
                drive(&rs, &node, &slot);
            } else {
                restart_leadership(&rs, &node, &slot);
            }
        }
    }
}

/// Rebuilds a leader whose state no longer matches its log (see [`sync_log_end`]): a fresh
/// replica takes the current partition record and leads again from the log as it is.
fn restart_leadership(rs: &Rc<Replicas>, node: &Arc<ClusterNode>, slot: &Rc<Replica>) {
    let image = node.cluster_image();
    let Some(topic) = image.topic(&slot.topic) else {
        return;
    };
    let Some(p) = image.partition(&slot.topic, slot.partition) else {
        return;
    };
    let mode = topic.replication_mode();
    let caught_up = node.image_caught_up(&image);
    let hw = slot
        .state
        .borrow()
        .high_watermark()
        .clamp(0, slot.part.log.log_end_offset().max(0));
    let fresh = PartitionReplica::new(
        node.node_id,
        policy_for(mode),
        replication_config(&rs.shard.ctx.config, topic),
        hw,
        &slot.part.log,
    );
    drop(slot.state.replace(fresh));
    // Waiting acks=all produces of the old state fail (their senders drop): clients retry.
    slot.waiters.borrow_mut().clear();
    apply(rs, node, slot, p, mode, caught_up);
}

fn error_out(e: &ReplicationError) -> (i16, String) {
    (e.code(), e.to_string())
}

/// A produce admitted on this replica: the leader epoch to stamp, and its replica.
pub struct Admitted {
    slot: Rc<Replica>,
    /// The leader epoch the append carries.
    pub leader_epoch: i32,
}

/// Cluster-mode admission of a produce to `topic`-`partition`: this broker must lead it, and
/// acks=all needs enough in-sync replicas (`NOT_ENOUGH_REPLICAS`).
pub fn before_append(
    rs: &Replicas,
    topic: &str,
    partition: i32,
    acks: i16,
) -> Result<Admitted, (i16, String)> {
    let node = rs.shard.ctx.metadata.cluster_node();
    let Some(slot) = rs.get(topic, partition) else {
        return Err((
            NOT_LEADER_OR_FOLLOWER,
            "this broker hosts no replica of the partition".into(),
        ));
    };
    let now = now();
    let pending = slot.marker_pending.get();
    if pending >= 0 && slot.state.borrow().role_leader_epoch() == Some(pending) {
        return Err((
            NOT_LEADER_OR_FOLLOWER,
            "the new leader is still writing its epoch marker; retry".into(),
        ));
    }
    let admitted = {
        let mut st = slot.state.borrow_mut();
        st.leader_for_request(None).and_then(|l| {
            if cut_off(node, l, now).is_some() {
                return Err(ReplicationError::NotLeaderOrFollower);
            }
            sync_log_end(l, &slot.part.log, now)?;
            l.check_produce(acks == -1, now)?;
            Ok(l.leader_epoch())
        })
    };
    match admitted {
        Ok(leader_epoch) => Ok(Admitted {
            slot: slot.clone(),
            leader_epoch,
        }),
        Err(e) => Err(error_out(&e)),
    }
}

/// After the leader appended `[base_offset, last_offset]`: records the new log end and, for
/// acks=all, waits until the policy's commit point covers it (or `timeout_ms` passes:
/// `REQUEST_TIMED_OUT`; or leadership is lost: `NOT_LEADER_OR_FOLLOWER`).
pub async fn after_append(
    rs: &Rc<Replicas>,
    admitted: Admitted,
    base_offset: i64,
    last_offset: i64,
    acks: i16,
    timeout_ms: i32,
) -> Result<(), (i16, String)> {
    let node = rs.shard.ctx.metadata.cluster_node().clone();
    let slot = admitted.slot;
    let required = last_offset + 1;
    let now = now();
    let rx = {
        let mut st = slot.state.borrow_mut();
        let Some(l) = st
            .leader_mut()
            .filter(|l| l.leader_epoch() == admitted.leader_epoch)
        else {
            return Err((
                NOT_LEADER_OR_FOLLOWER,
                "leadership moved during the append".into(),
            ));
        };
        let leo = slot
            .part
            .log
            .log_end_offset()
            .max(required)
            .max(l.log_end_offset());
        if acks == -1 {
            let id = rs.next_waiter.get();
            rs.next_waiter.set(id + 1);
            let (tx, rx) = oneshot::channel();
            slot.waiters.borrow_mut().insert(id, tx);
            let waiter = ProduceWaiter {
                id,
                base_offset,
                required_offset: required,
                deadline: now + u64::try_from(timeout_ms.max(0)).unwrap_or(0),
            };
            l.on_append(leo, Some(waiter), now);
            Some(rx)
        } else {
            l.on_append(leo, None, now);
            None
        }
    };
    drive(rs, &node, &slot);
    match rx {
        None => Ok(()),
        Some(rx) => match rx.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(error_out(&e)),
            Err(_) => Err((NOT_LEADER_OR_FOLLOWER, "partition replica went away".into())),
        },
    }
}

/// What a fetch may read.
#[derive(Debug, Clone, Copy)]
pub struct FetchLimit {
    /// Records are read up to here (exclusive).
    pub read_to: i64,
    /// The high watermark to report.
    pub high_watermark: i64,
    /// A replica whose log diverges from the leader's: where the leader's log ends for the
    /// replica's last fetched epoch (KIP-320 `diverging_epoch`; nothing is read).
    pub diverging_epoch: Option<EpochEndOffset>,
}

/// What a fetch may read. A replica's fetch (replica id set) updates the
/// leader's follower state and reads up to the log end, or learns where its log diverges; a
/// consumer reads up to the high watermark.
pub fn fetch_limit(rs: &Rc<Replicas>, item: &FetchIn) -> Result<FetchLimit, i16> {
    let node = rs.shard.ctx.metadata.cluster_node().clone();
    let Some(slot) = rs.get(&item.topic, item.partition) else {
        return Err(NOT_LEADER_OR_FOLLOWER);
    };
    let epoch = (item.current_leader_epoch >= 0).then_some(item.current_leader_epoch);
    let now = now();
    let result = {
        let mut st = slot.state.borrow_mut();
        st.leader_for_request(epoch).and_then(|l| {
            sync_log_end(l, &slot.part.log, now)?;
            if item.replica_id >= 0 {
                let fetch = FollowerFetch {
                    replica_id: item.replica_id,
                    fetch_offset: item.offset,
                    current_leader_epoch: epoch,
                    last_fetched_epoch: (item.last_fetched_epoch >= 0)
                        .then_some(item.last_fetched_epoch),
                };
                let d = l.on_follower_fetch(&fetch, &slot.part.log, now)?;
                l.on_follower_log_start(item.replica_id, item.log_start_offset);
                if d.diverging_epoch.is_some_and(|e| e.is_undefined()) {
                    // Nothing of the follower's last epoch is here (Kafka answers this with
                    // OFFSET_OUT_OF_RANGE too): it asks OffsetForLeaderEpoch and truncates.
                    return Err(ReplicationError::OffsetOutOfRange {
                        offset: item.offset,
                        log_end_offset: d.log_end_offset,
                    });
                }
                Ok(FetchLimit {
                    read_to: d.log_end_offset,
                    high_watermark: d.high_watermark,
                    diverging_epoch: d.diverging_epoch,
                })
            } else {
                // A cut-off leader's data may be stale: consumers move with the producers.
                if cut_off(&node, l, now).is_some() {
                    return Err(ReplicationError::NotLeaderOrFollower);
                }
                let hw = l.consumer_fetch_limit(epoch)?;
                Ok(FetchLimit {
                    read_to: hw,
                    high_watermark: hw,
                    diverging_epoch: None,
                })
            }
        })
    };
    drive(rs, &node, &slot);
    result.map_err(|e| e.code())
}

/// The offset a long-polling fetch waits to pass: the high watermark for consumers of a
/// leader, the log end for a replica's fetch.
pub fn wake_end(rs: &Replicas, topic: &str, partition: i32, log_end: i64, replica: bool) -> i64 {
    if replica {
        return log_end;
    }
    rs.get(topic, partition)
        .map_or(log_end, |s| s.state.borrow().high_watermark())
}

/// ListOffsets: only the leader answers, and "latest" is the high watermark.
pub fn list_offsets_latest(rs: &Replicas, topic: &str, partition: i32) -> Result<i64, i16> {
    let Some(slot) = rs.get(topic, partition) else {
        return Err(NOT_LEADER_OR_FOLLOWER);
    };
    let mut st = slot.state.borrow_mut();
    st.leader_for_request(None)
        .map(|l| l.high_watermark())
        .map_err(|e| e.code())
}

/// DeleteRecords: the leader's high watermark and low watermark (the smallest log start
/// offset of the in-sync replicas). Only the leader answers (NOT_LEADER_OR_FOLLOWER).
pub fn record_watermarks(rs: &Replicas, topic: &str, partition: i32) -> Result<(i64, i64), i16> {
    let Some(slot) = rs.get(topic, partition) else {
        return Err(NOT_LEADER_OR_FOLLOWER);
    };
    let mut st = slot.state.borrow_mut();
    st.leader_for_request(None)
        .map(|l| {
            (
                l.high_watermark(),
                l.low_watermark(slot.part.log.log_start_offset()),
            )
        })
        .map_err(|e| e.code())
}

/// Whether this broker leads `topic`-`partition`.
pub fn is_leader(rs: &Replicas, topic: &str, partition: i32) -> bool {
    rs.get(topic, partition)
        .is_some_and(|s| s.state.borrow().is_leader())
}

/// OffsetForLeaderEpoch on this shard's partitions: `(topic, partition, current epoch,
/// requested epoch)` -> `(error, epoch, end offset)`.
pub async fn offset_for_leader_epoch_local(
    rs: Rc<Replicas>,
    items: Vec<(String, i32, i32, i32)>,
) -> Vec<(i16, i32, i64)> {
    let mut out = Vec::with_capacity(items.len());
    for (topic, partition, current, requested) in items {
        let current = (current >= 0).then_some(current);
        let answer = match rs.get(&topic, partition) {
            None => Err(NOT_LEADER_OR_FOLLOWER),
            Some(slot) => {
                let mut st = slot.state.borrow_mut();
                st.leader_for_request(current)
                    .and_then(|l| l.offset_for_leader_epoch(current, requested, &slot.part.log))
                    .map_err(|e| e.code())
            }
        };
        out.push(match answer {
            Ok(EpochEndOffset {
                leader_epoch,
                end_offset,
            }) => (ec::NONE, leader_epoch, end_offset),
            Err(code) => (code, -1, -1),
        });
    }
    out
}

fn code_to_error(code: i16, epoch: i32, offset: i64) -> ReplicationError {
    match code {
        74 => ReplicationError::FencedLeaderEpoch {
            request: epoch,
            current: -1,
        },
        75 => ReplicationError::UnknownLeaderEpoch {
            request: epoch,
            current: -1,
        },
        1 => ReplicationError::OffsetOutOfRange {
            offset,
            log_end_offset: -1,
        },
        _ => ReplicationError::NotLeaderOrFollower,
    }
}

/// The complete record batches in `records` and the offset after the last one.
fn complete_batches(records: &Bytes) -> (usize, Option<i64>) {
    let mut pos = 0usize;
    let mut end = None;
    while records.len() >= pos + 27 {
        let b = &records[pos..];
        let base = i64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        let len = i32::from_be_bytes([b[8], b[9], b[10], b[11]]);
        let Ok(len) = usize::try_from(len) else { break };
        let size = len + 12;
        if records.len() < pos + size || len < 15 {
            break;
        }
        let delta = i32::from_be_bytes([b[23], b[24], b[25], b[26]]);
        end = Some(base + i64::from(delta) + 1);
        pos += size;
    }
    (pos, end)
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// The partitions this shard follows `leader` in, each with its next request.
fn followed_partitions(rs: &Replicas, leader: i32) -> Vec<(Rc<Replica>, Option<FollowerRequest>)> {
    let slots: Vec<Rc<Replica>> = rs.slots.borrow().values().cloned().collect();
    let mut out = Vec::new();
    for slot in slots {
        if slot.removed.get() || slot.fetcher_epoch.get() < 0 {
            continue;
        }
        let mut st = slot.state.borrow_mut();
        let Some(f) = st.follower_mut() else { continue };
        if f.leader() != Some(leader) || f.leader_epoch() != slot.fetcher_epoch.get() {
            continue;
        }
        let request = f.next_request(&slot.part.log);
        drop(st);
        out.push((slot, request));
    }
    out
}

/// Starts the fetcher of (this shard, `leader`) unless it runs.
fn ensure_fetcher(rs: &Rc<Replicas>, node: &Arc<ClusterNode>, leader: i32) {
    if rs.fetchers.borrow_mut().insert(leader) {
        crate::io::runtime::spawn(fetcher_loop(rs.clone(), node.clone(), leader));
    }
}

/// True when a follower's log operation `what` succeeded; a failure is logged.
fn log_step<T, E: std::fmt::Display>(slot: &Replica, what: &str, result: Result<T, E>) -> bool {
    match result {
        Ok(_) => true,
        Err(e) => {
            warn!(
                topic = slot.topic,
                partition = slot.partition,
                "{what} failed: {e}"
            );
            false
        }
    }
}

/// Carries out one follower step for `slot` (after a response). `records` are the complete
/// batches a fetch returned. Returns whether the partition made progress.
async fn carry_out(slot: &Replica, step: FollowerStep, records: Option<Bytes>) -> bool {
    match step {
        FollowerStep::Append { .. } => {
            let Some(records) = records.filter(|r| !r.is_empty()) else {
                return false;
            };
            let appended = slot
                .part
                .log
                .append_follower(BytesMut::from(&records[..]))
                .await;
            let appended = log_step(slot, "follower append", appended);
            if appended {
                slot.part.appended.notify_waiters();
            }
            appended
        }
        FollowerStep::Truncate(offset) => {
            info!(
                topic = slot.topic,
                partition = slot.partition,
                offset,
                "truncating to the divergence point"
            );
            log_step(slot, "truncation", slot.part.log.truncate_to(offset).await)
        }
        FollowerStep::StartAt(offset) => {
            info!(
                topic = slot.topic,
                partition = slot.partition,
                offset,
                "behind the leader's log start: restarting the log there"
            );
            log_step(
                slot,
                "restarting the log at the leader's start",
                slot.part.log.truncate_fully_and_start_at(offset).await,
            )
        }
        FollowerStep::Backoff | FollowerStep::AwaitMetadata | FollowerStep::Ignore => false,
    }
}

/// Moves a follower's log start up to the leader's (DeleteRecords or retention on the
/// leader), as Kafka's fetcher does with the `log_start_offset` of each fetch answer; never
/// past this replica's own log end. The next fetch reports the new start to the leader,
/// whose DeleteRecords waits for every in-sync replica.
async fn follow_log_start(slot: &Replica, leader_log_start: i64) {
    let log = &slot.part.log;
    let target = leader_log_start.min(log.log_end_offset());
    if target <= log.log_start_offset() || slot.removed.get() {
        return;
    }
    match log.delete_records_before(target).await {
        Ok(start) => debug!(
            topic = slot.topic,
            partition = slot.partition,
            log_start_offset = start,
            "log start moved to the leader's"
        ),
        Err(e) => warn!(
            topic = slot.topic,
            partition = slot.partition,
            "cannot move the log start to the leader's: {e}"
        ),
    }
}

/// The replica fetcher of one (follower shard, leader broker), as Kafka's
/// `ReplicaFetcherThread`: for every partition this shard follows `leader` in, it first
/// truncates by OffsetForLeaderEpoch (one batched request), then fetches all of them in one
/// Fetch with its replica id and appends the leader's batches verbatim. It ends when this
/// shard follows nothing on `leader` any more or the shard stops.
async fn fetcher_loop(rs: Rc<Replicas>, node: Arc<ClusterNode>, leader: i32) {
    let wait_ms: i32 = rs
        .shard
        .ctx
        .config
        .raw
        .get("replica.fetch.wait.max.ms")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(500);
    let call_timeout = Duration::from_millis(u64::try_from(wait_ms.max(0)).unwrap_or(0) + 5_000);
    let mut client: Option<KafkaClient> = None;
    loop {
        let partitions = if *rs.shard.phase.borrow() == Phase::Running {
            followed_partitions(&rs, leader)
        } else {
            Vec::new()
        };
        if partitions.is_empty() {
            // Decided and deregistered without an await in between, so a partition that
            // starts following `leader` later starts a new fetcher.
            rs.fetchers.borrow_mut().remove(&leader);
            return;
        }
        let epochs: Vec<(Rc<Replica>, FollowerRequest)> = partitions
            .iter()
            .filter_map(|(s, r)| match r {
                Some(r @ FollowerRequest::OffsetForLeaderEpoch { .. }) => Some((s.clone(), *r)),
                _ => None,
            })
            .collect();
        let fetches: Vec<(Rc<Replica>, FollowerRequest)> = partitions
            .iter()
            .filter_map(|(s, r)| match r {
                Some(r @ FollowerRequest::Fetch { .. }) => Some((s.clone(), *r)),
                _ => None,
            })
            .collect();
        if epochs.is_empty() && fetches.is_empty() {
            sleep_ms(100).await;
            continue;
        }
        if client.is_none() {
            let image = node.cluster_image();
            let Some(ep) = image.broker(leader).and_then(|b| b.inter_broker_endpoint()) else {
                sleep_ms(200).await;
                continue;
            };
            let addr = format!("{}:{}", ep.host, ep.port);
            match KafkaClient::connect(
                &addr,
                node.inter_broker_tls.as_deref(),
                format!("sluice-replica-{}", node.node_id),
                Duration::from_secs(2),
            )
            .await
            {
                Ok(c) => client = Some(c),
                Err(e) => {
                    debug!(leader, addr, "cannot reach the leader: {e}");
                    sleep_ms(200).await;
                    continue;
                }
            }
        }
        let Some(conn) = client.as_mut() else {
            continue;
        };
        let mut progress = false;
        if !epochs.is_empty() {
            let mut topics: BTreeMap<String, Vec<_>> = BTreeMap::new();
            for (slot, r) in &epochs {
                if let FollowerRequest::OffsetForLeaderEpoch {
                    current_leader_epoch,
                    leader_epoch,
                    ..
                } = *r
                {
                    topics.entry(slot.topic.clone()).or_default().push(
                        m::offset_for_leader_epoch_request::OffsetForLeaderPartition::default()
                            .with_partition(slot.partition)
                            .with_current_leader_epoch(current_leader_epoch)
                            .with_leader_epoch(leader_epoch),
                    );
                }
            }
            let req = m::OffsetForLeaderEpochRequest::default()
                .with_replica_id(BrokerId(node.node_id))
                .with_topics(
                    topics
                        .into_iter()
                        .map(|(t, ps)| {
                            m::offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                                .with_topic(TopicName(StrBytes::from_string(t)))
                                .with_partitions(ps)
                        })
                        .collect(),
                );
            let resp: m::OffsetForLeaderEpochResponse = match conn
                .call(
                    ApiKey::OffsetForLeaderEpoch,
                    OFFSET_FOR_LEADER_EPOCH_VERSION,
                    &req,
                    call_timeout,
                )
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    debug!(leader, "OffsetForLeaderEpoch failed: {e}");
                    client = None;
                    sleep_ms(200).await;
                    continue;
                }
            };
            for (slot, request) in &epochs {
                let FollowerRequest::OffsetForLeaderEpoch {
                    current_leader_epoch,
                    ..
                } = *request
                else {
                    continue;
                };
                let answer = resp
                    .topics
                    .iter()
                    .filter(|t| t.topic.as_str() == slot.topic)
                    .flat_map(|t| t.partitions.iter())
                    .find(|p| p.partition == slot.partition)
                    .map(|p| {
                        if p.error_code == ec::NONE {
                            Ok(EpochEndOffset {
                                leader_epoch: p.leader_epoch,
                                end_offset: p.end_offset,
                            })
                        } else {
                            Err(code_to_error(p.error_code, current_leader_epoch, -1))
                        }
                    })
                    .unwrap_or(Err(ReplicationError::NotLeaderOrFollower));
                let step = {
                    let mut st = slot.state.borrow_mut();
                    match st.follower_mut() {
                        Some(f) => {
                            f.on_offset_for_leader_epoch_response(request, answer, &slot.part.log)
                        }
                        None => continue,
                    }
                };
                progress |= carry_out(slot, step, None).await;
            }
        }
        if !fetches.is_empty() {
            let mut topics: BTreeMap<String, Vec<_>> = BTreeMap::new();
            for (slot, r) in &fetches {
                if let FollowerRequest::Fetch {
                    current_leader_epoch,
                    fetch_offset,
                    last_fetched_epoch,
                    ..
                } = *r
                {
                    topics.entry(slot.topic.clone()).or_default().push(
                        m::fetch_request::FetchPartition::default()
                            .with_partition(slot.partition)
                            .with_current_leader_epoch(current_leader_epoch)
                            .with_fetch_offset(fetch_offset)
                            .with_last_fetched_epoch(last_fetched_epoch.unwrap_or(-1))
                            .with_log_start_offset(slot.part.log.log_start_offset())
                            .with_partition_max_bytes(FOLLOWER_PARTITION_BYTES),
                    );
                }
            }
            // Only long-poll when no partition is still truncating.
            let max_wait = if epochs.is_empty() { wait_ms } else { 0 };
            let req = m::FetchRequest::default()
                .with_replica_id(BrokerId(node.node_id))
                .with_max_wait_ms(max_wait)
                .with_min_bytes(1)
                .with_max_bytes(FOLLOWER_FETCH_BYTES)
                .with_topics(
                    topics
                        .into_iter()
                        .map(|(t, ps)| {
                            m::fetch_request::FetchTopic::default()
                                .with_topic(TopicName(StrBytes::from_string(t)))
                                .with_partitions(ps)
                        })
                        .collect(),
                );
            let resp: m::FetchResponse = match conn
                .call(ApiKey::Fetch, FOLLOWER_FETCH_VERSION, &req, call_timeout)
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    debug!(leader, "follower fetch failed: {e}");
                    client = None;
                    sleep_ms(200).await;
                    continue;
                }
            };
            for (slot, request) in &fetches {
                let FollowerRequest::Fetch {
                    current_leader_epoch,
                    fetch_offset,
                    ..
                } = *request
                else {
                    continue;
                };
                let part = resp
                    .responses
                    .iter()
                    .filter(|t| t.topic.as_str() == slot.topic)
                    .flat_map(|t| t.partitions.iter())
                    .find(|p| p.partition_index == slot.partition);
                let leader_log_start = part
                    .filter(|p| p.error_code == ec::NONE)
                    .map_or(-1, |p| p.log_start_offset);
                // OFFSET_OUT_OF_RANGE with the leader's log start (Sluice leaders send it).
                let out_of_range_start = part
                    .filter(|p| p.error_code == ec::OFFSET_OUT_OF_RANGE && p.log_start_offset >= 0)
                    .map(|p| p.log_start_offset);
                let (answer, records) = match part {
                    None => (Err(ReplicationError::NotLeaderOrFollower), None),
                    Some(p) if p.error_code != ec::NONE => (
                        Err(code_to_error(
                            p.error_code,
                            current_leader_epoch,
                            fetch_offset,
                        )),
                        None,
                    ),
                    Some(p) => {
                        let records = p.records.clone().unwrap_or_default();
                        let (len, end) = complete_batches(&records);
                        let d = &p.diverging_epoch;
                        let info = FetchResponseInfo {
                            high_watermark: p.high_watermark,
                            // KIP-320: the leader's log ends for our last epoch here.
                            diverging_epoch: (d.epoch >= 0 || d.end_offset >= 0).then_some(
                                EpochEndOffset {
                                    leader_epoch: d.epoch,
                                    end_offset: d.end_offset,
                                },
                            ),
                            records_end_offset: end.unwrap_or(fetch_offset),
                        };
                        (Ok(info), Some(records.slice(..len)))
                    }
                };
                let step = {
                    let mut st = slot.state.borrow_mut();
                    match (st.follower_mut(), out_of_range_start) {
                        (Some(f), Some(start)) => {
                            f.on_fetch_out_of_range(request, start, &slot.part.log)
                        }
                        (Some(f), None) => f.on_fetch_response(request, answer, &slot.part.log),
                        (None, _) => continue,
                    }
                };
                progress |= carry_out(slot, step, records).await;
                follow_log_start(slot, leader_log_start).await;
            }
        }
        if !progress {
            // Nothing moved (errors, back-off, or the long poll ended empty): do not spin.
            sleep_ms(if epochs.is_empty() { 20 } else { 100 }).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_batches_stops_at_a_partial_batch() {
        let mut b = vec![0u8; 61];
        b[..8].copy_from_slice(&10i64.to_be_bytes());
        b[8..12].copy_from_slice(&49i32.to_be_bytes());
        b[23..27].copy_from_slice(&2i32.to_be_bytes());
        // A second batch header cut short.
        let records = Bytes::from(b);
        assert_eq!(complete_batches(&records), (61, Some(13)));
        let cut = records.slice(..40);
        assert_eq!(complete_batches(&cut), (0, None));
    }
}
