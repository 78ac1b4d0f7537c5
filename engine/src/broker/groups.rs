//! Consumer groups in the broker: the IO shell around the sans-IO [`GroupCoordinator`].
//!
//! Each shard runs one coordinator holding the groups of the `__consumer_offsets` partitions
//! that shard owns. A group request is routed to the owner shard of its offsets partition
//! (its peers' `ShardLocal::call`), handed to the coordinator with a token, and answered when the coordinator
//! emits `Respond` for that token (JoinGroup and SyncGroup wait for the rebalance, commits for
//! their append). `Append` actions become RecordBatch v2 appends to the offsets partition,
//! started in the order the coordinator emitted them. A per-shard timer task drives `tick`,
//! and on start-up each shard replays its offsets partitions into its coordinator.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression as WireCompression, Record, RecordBatchDecoder, RecordBatchEncoder,
    RecordEncodeOptions, TimestampType as WireTimestampType,
};
use tokio::sync::{oneshot, Notify};
use tracing::{debug, info, warn};

use super::config::{parse_int, BrokerConfig, ConfigError};
use super::metadata::MetadataImage;
use super::protocol::error_code as ec;
use super::replicas::Replicas;
use super::shard::{now_ms, Peers, Phase, Shard, ShardGone, ShardLocal};
use crate::group::api::codes;
use crate::group::{
    offsets_partition_for, AppendError, AppendId, CoordinatorAction, CoordinatorConfig,
    GroupCoordinator, GroupRequest, GroupResponse, OffsetsRecord, RequestToken, TxnProducer,
    OFFSETS_TOPIC,
};
use crate::storage::decompress::decompress_records;
use crate::storage::record_batch::Compression as StoredCompression;
use crate::storage::txn_index::parse_marker;
use crate::storage::BatchIter;

/// Bytes read per step while loading an offsets partition (Kafka's
/// `offsets.load.buffer.size` default).
const LOAD_BUFFER_BYTES: u32 = 5 * 1024 * 1024;

/// Largest decompressed records section accepted while loading (bounds a hostile batch).
const LOAD_MAX_DECOMPRESSED: usize = 64 * 1024 * 1024;

/// Kafka's `offsets.commit.timeout.ms` default.
const DEFAULT_COMMIT_TIMEOUT_MS: i32 = 5000;

/// Kafka's `offsets.topic.replication.factor` default.
const DEFAULT_OFFSETS_REPLICATION_FACTOR: i16 = 3;

/// Index size of `__consumer_offsets` segments: room for a full 100 MiB segment at the default
/// index interval (25,600 entries: 200 KiB of offset index, 300 KiB of time index), instead of
/// preallocating the 10 MiB broker default twice for each of fifty partitions.
const OFFSETS_SEGMENT_INDEX_BYTES: &str = "524288";

/// Reads the `group.*` / `offset*` broker keys into the coordinator's configuration.
/// `offsets_partitions` is the partition count of the existing `__consumer_offsets` topic,
/// which wins over the configured one (the group -> partition mapping must not change).
pub fn coordinator_config(
    cfg: &BrokerConfig,
    offsets_partitions: Option<i32>,
) -> Result<CoordinatorConfig, ConfigError> {
    let d = CoordinatorConfig::default();
    let get = |k: &str| cfg.raw.get(k).cloned();
    let int = |k: &str, default: i64| -> Result<i64, ConfigError> {
        match get(k) {
            Some(v) => parse_int::<i64>(k, &v),
            None => Ok(default),
        }
    };
    let positive = |k: &str, default: i64| -> Result<i64, ConfigError> {
        let v = int(k, default)?;
        if v < 0 {
            return Err(ConfigError::InvalidValue {
                key: k.to_string(),
                value: v.to_string(),
                reason: "must not be negative".into(),
            });
        }
        Ok(v)
    };
    let configured_partitions = positive(
        "offsets.topic.num.partitions",
        i64::from(d.offsets_partitions),
    )?;
    if configured_partitions == 0 || configured_partitions > i64::from(i32::MAX) {
        return Err(ConfigError::InvalidValue {
            key: "offsets.topic.num.partitions".into(),
            value: configured_partitions.to_string(),
            reason: "expected 1..=2147483647".into(),
        });
    }
    let to_i32 = |k: &str, v: i64| {
        i32::try_from(v).map_err(|_| ConfigError::InvalidValue {
            key: k.to_string(),
            value: v.to_string(),
            reason: "does not fit a 32-bit integer".into(),
        })
    };
    let min_session = to_i32(
        "group.min.session.timeout.ms",
        positive(
            "group.min.session.timeout.ms",
            i64::from(d.min_session_timeout_ms),
        )?,
    )?;
    let max_session = to_i32(
        "group.max.session.timeout.ms",
        positive(
            "group.max.session.timeout.ms",
            i64::from(d.max_session_timeout_ms),
        )?,
    )?;
    let retention_minutes = positive("offsets.retention.minutes", 7 * 24 * 60)?;
    Ok(CoordinatorConfig {
        initial_rebalance_delay_ms: positive(
            "group.initial.rebalance.delay.ms",
            d.initial_rebalance_delay_ms,
        )?,
        min_session_timeout_ms: min_session,
        max_session_timeout_ms: max_session,
        max_group_size: usize::try_from(positive("group.max.size", i64::from(i32::MAX))?)
            .unwrap_or(usize::MAX),
        offset_metadata_max_bytes: usize::try_from(positive(
            "offset.metadata.max.bytes",
            d.offset_metadata_max_bytes as i64,
        )?)
        .unwrap_or(usize::MAX),
        offsets_partitions: offsets_partitions.unwrap_or(configured_partitions as i32),
        new_member_join_timeout_ms: d.new_member_join_timeout_ms,
        offsets_retention_ms: retention_minutes.saturating_mul(60_000),
        offsets_retention_check_interval_ms: positive(
            "offsets.retention.check.interval.ms",
            d.offsets_retention_check_interval_ms,
        )?
        .max(1),
        // Random per process: member ids generated now must not collide with persisted ones.
        member_id_seed: rand::random(),
    })
}

/// The topic configs `__consumer_offsets` is created with: compacted, 100 MiB segments
/// (`offsets.topic.segment.bytes`), no age or size retention, as Kafka creates it.
fn offsets_topic_configs(cfg: &BrokerConfig) -> Result<BTreeMap<String, String>, GroupSetupError> {
    let segment_bytes = cfg
        .raw
        .get("offsets.topic.segment.bytes")
        .cloned()
        .unwrap_or_else(|| "104857600".into());
    parse_int::<i32>("offsets.topic.segment.bytes", &segment_bytes)?;
    let configs = BTreeMap::from([
        ("cleanup.policy".to_string(), "compact".to_string()),
        ("segment.bytes".to_string(), segment_bytes),
        (
            "segment.index.bytes".to_string(),
            OFFSETS_SEGMENT_INDEX_BYTES.to_string(),
        ),
        // Compaction, never age or size, may remove records: the latest commit of a group
        // that stopped committing must outlive log.retention.ms.
        ("retention.ms".to_string(), "-1".to_string()),
        ("retention.bytes".to_string(), "-1".to_string()),
    ]);
    cfg.log_config(&configs)?;
    Ok(configs)
}

/// Checks the group keys at start-up (the topic itself is created through the
/// controller on first use), so a bad key stops the broker naming the key.
/// Returns the configured `offsets.topic.num.partitions`.
pub fn check_group_config(cfg: &BrokerConfig) -> Result<i32, GroupSetupError> {
    let conf = coordinator_config(cfg, None)?;
    offsets_topic_configs(cfg)?;
    Ok(conf.offsets_partitions)
}

/// Creates `__consumer_offsets` through the controller if the image lacks it
/// (on the first FindCoordinator for a group, as Kafka does, so the brokers of a starting
/// cluster have registered by then). Its replication factor is
/// `offsets.topic.replication.factor` (default 3) capped at the unfenced brokers, and its
/// `min.insync.replicas` is min(2, replication factor): a coordinator write survives the
/// loss of any one replica once acknowledged, and one broker down does not stop commits.
/// Idempotent: when several brokers race, one creation wins and the others find the topic.
pub async fn ensure_offsets_topic_cluster(
    node: &super::cluster::ClusterNode,
    cfg: &BrokerConfig,
    partitions: i32,
) -> Result<(), String> {
    if node.cluster_image().topic(OFFSETS_TOPIC).is_some() {
        return Ok(());
    }
    let wanted = cfg
        .raw
        .get("offsets.topic.replication.factor")
        .and_then(|v| v.trim().parse::<i16>().ok())
        .filter(|v| *v > 0)
        .unwrap_or(DEFAULT_OFFSETS_REPLICATION_FACTOR);
    let live = node.cluster_image().live_brokers().len();
    if live == 0 {
        return Err("no unfenced broker yet".into());
    }
    let rf = wanted.min(i16::try_from(live).unwrap_or(i16::MAX));
    let mut configs = offsets_topic_configs(cfg).map_err(|e| e.to_string())?;
    configs.insert("min.insync.replicas".into(), rf.min(2).to_string());
    match node
        .controller
        .create_topic(OFFSETS_TOPIC, partitions, rf, configs)
        .await
    {
        Ok(id) => {
            info!(
                partitions,
                replication_factor = rf,
                topic_id = %id,
                "created internal topic {OFFSETS_TOPIC}"
            );
            Ok(())
        }
        Err(crate::controller::ControllerError::Rejected(
            crate::controller::MetadataError::TopicAlreadyExists(_),
        )) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// Why the group coordinator could not be set up at start-up.
#[derive(Debug, thiserror::Error)]
pub enum GroupSetupError {
    /// A `group.*` / `offsets.*` key has a bad value.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// The `__consumer_offsets` partition count in effect (the topic's, once it exists).
fn offsets_partitions(image: &MetadataImage) -> Option<i32> {
    image.topic(OFFSETS_TOPIC).map(|t| t.partitions)
}

type Waiter = oneshot::Sender<GroupResponse>;

/// The group service of one shard: the coordinator of the `__consumer_offsets` partitions
/// this shard owns and this broker leads, the requests waiting for its answers, and the
/// signal that re-arms the timer task. Built on the shard core and the replication service
/// (whose leadership it follows and through which it writes).
pub struct Groups {
    /// The shard core.
    pub shard: Rc<Shard>,
    /// The replication service of the same shard.
    pub replicas: Rc<Replicas>,
    peers: Arc<Peers<Groups>>,
    coordinator: RefCell<GroupCoordinator>,
    waiters: RefCell<HashMap<RequestToken, Waiter>>,
    next_token: Cell<RequestToken>,
    timer: Notify,
    /// Bumped at every leadership change of an offsets partition, so a load
    /// started for an older leadership does not finish into a newer one.
    leadership: RefCell<HashMap<i32, u64>>,
    next_leadership: Cell<u64>,
    /// How long a coordinator write may wait for its commit
    /// (`offsets.commit.timeout.ms`, Kafka's default 5000).
    commit_timeout_ms: i32,
    /// This shard is asking the controller to create `__consumer_offsets`.
    creating_offsets_topic: Cell<bool>,
}

impl ShardLocal for Groups {
    fn shard_id(&self) -> usize {
        self.shard.id
    }

    fn peers(&self) -> &Peers<Groups> {
        &self.peers
    }
}

impl Groups {
    /// The committed offsets of this shard's groups, for the consumer-lag metric.
    pub fn offset_snapshots(&self) -> Vec<crate::metrics::GroupOffsetSnapshot> {
        self.coordinator
            .borrow()
            .committed_offsets()
            .into_iter()
            .map(
                |(group, topic, partition, committed)| crate::metrics::GroupOffsetSnapshot {
                    group,
                    topic,
                    partition,
                    committed,
                },
            )
            .collect()
    }

    /// The group service of a shard (the config was validated by `Server::start`). It follows
    /// the leadership of the shard's offsets partitions from now on ([`on_leadership_change`]).
    pub fn new(replicas: Rc<Replicas>, peers: Arc<Peers<Groups>>) -> Rc<Groups> {
        let shard = replicas.shard.clone();
        let cfg = &shard.ctx.config;
        let metadata = &shard.ctx.metadata;
        let conf =
            coordinator_config(cfg, offsets_partitions(&metadata.image())).unwrap_or_else(|e| {
                warn!("invalid group coordinator config ({e}); using defaults");
                CoordinatorConfig::default()
            });
        let groups = Rc::new(Groups {
            shard: shard.clone(),
            replicas: replicas.clone(),
            peers,
            coordinator: RefCell::new(GroupCoordinator::new(conf)),
            waiters: RefCell::new(HashMap::new()),
            next_token: Cell::new(1),
            timer: Notify::new(),
            leadership: RefCell::new(HashMap::new()),
            next_leadership: Cell::new(1),
            commit_timeout_ms: cfg
                .raw
                .get("offsets.commit.timeout.ms")
                .and_then(|v| v.trim().parse::<i32>().ok())
                .filter(|v| *v > 0)
                .unwrap_or(DEFAULT_COMMIT_TIMEOUT_MS),
            creating_offsets_topic: Cell::new(false),
        });
        let weak = Rc::downgrade(&groups);
        replicas.on_leadership_change(Box::new(move |topic, p, leader_epoch| {
            if topic == OFFSETS_TOPIC {
                if let Some(gs) = weak.upgrade() {
                    on_leadership_change(&gs, p, leader_epoch);
                }
            }
        }));
        groups
    }

    /// Asks the controller to create `__consumer_offsets` (once at a time; FindCoordinator
    /// answers COORDINATOR_NOT_AVAILABLE meanwhile and the client asks again).
    pub fn create_offsets_topic(self: &Rc<Self>, node: &Arc<super::cluster::ClusterNode>) {
        if self.creating_offsets_topic.replace(true) {
            return;
        }
        let (gs, node) = (self.clone(), node.clone());
        let n = self.offsets_partitions();
        crate::io::runtime::spawn(async move {
            if let Err(e) = ensure_offsets_topic_cluster(&node, &gs.shard.ctx.config, n).await {
                warn!("cannot create {OFFSETS_TOPIC}: {e}");
            }
            gs.creating_offsets_topic.set(false);
        });
    }

    /// The `__consumer_offsets` partition count the coordinator maps groups onto.
    pub fn offsets_partitions(&self) -> i32 {
        self.coordinator.borrow().config().offsets_partitions
    }
}

/// Starts this shard's group timer. Offsets partitions are loaded when this broker becomes
/// their leader ([`on_leadership_change`]).
pub fn start(gs: &Rc<Groups>) {
    // A shard coordinates only the offsets partitions this broker leads:
    // `on_leadership_change` loads and unloads them as leadership moves.
    crate::io::runtime::spawn(timer_loop(gs.clone()));
}

fn owned_offsets_partitions(gs: &Groups) -> Vec<i32> {
    let n = gs.offsets_partitions();
    (0..n)
        .filter(|p| gs.shard.ctx.owner(OFFSETS_TOPIC, *p) == gs.shard.id)
        .collect()
}

/// Replays one offsets partition from log start to `end` (default: the log end) into the
/// coordinator and marks it loaded; returns (records loaded, records skipped). When
/// `current()` turns false (leadership moved on meanwhile) it stops and leaves the
/// partition to whoever took over.
async fn load_partition(
    gs: &Rc<Groups>,
    p: i32,
    end: Option<i64>,
    current: &dyn Fn() -> bool,
) -> (u64, u64) {
    let started = std::time::Instant::now();
    let mut loaded = 0u64;
    let mut skipped = 0u64;
    match gs.shard.partition(OFFSETS_TOPIC, p).await {
        Err(code) => warn!(
            partition = p,
            code, "cannot open {OFFSETS_TOPIC} partition; its groups start empty"
        ),
        Ok(part) => {
            let end = end.unwrap_or_else(|| part.log.log_end_offset());
            let mut offset = part.log.log_start_offset();
            while offset < end {
                if !current() {
                    return (loaded, skipped);
                }
                let read = match part.log.read(offset, LOAD_BUFFER_BYTES, end, true).await {
                    Ok(r) => r,
                    Err(e) => {
                        warn!(partition = p, offset, "offsets load stopped: {e}");
                        break;
                    }
                };
                let Some(slice) = read.slice else { break };
                let bytes = match slice.read_to_vec().await {
                    Ok(v) => Bytes::from(v),
                    Err(e) => {
                        warn!(partition = p, offset, "offsets load stopped: {e}");
                        break;
                    }
                };
                let mut next = offset;
                let mut c = gs.coordinator.borrow_mut();
                // Transactional offset commits load as pending for their producer; the
                // COMMIT/ABORT markers that follow them materialise or drop them, in log
                // order, as Kafka's loader does. A batch whose marker is not in the log yet
                // stays pending.
                for item in BatchIter::new(&bytes) {
                    let (pos, h) = match item {
                        Ok(x) => x,
                        Err(e) => {
                            warn!(partition = p, offset = next, "bad batch while loading: {e}");
                            break;
                        }
                    };
                    next = h.next_offset();
                    let batch = bytes.slice(pos..pos + h.size());
                    if h.is_control() {
                        if h.is_transactional() && h.producer_id >= 0 {
                            match parse_marker(&batch, &h) {
                                Ok(Some(m)) => c.load_txn_marker(p, h.producer_id, !m.aborted),
                                Ok(None) => {}
                                Err(e) => {
                                    warn!(
                                        partition = p,
                                        base_offset = h.base_offset,
                                        "unreadable transaction marker skipped while loading: {e}"
                                    );
                                    skipped += 1;
                                }
                            }
                        }
                        continue;
                    }
                    let txn_producer =
                        (h.is_transactional() && h.producer_id >= 0).then_some(h.producer_id);
                    let records = match decode_batch(batch) {
                        Ok(r) => r,
                        Err(e) => {
                            warn!(
                                partition = p,
                                base_offset = h.base_offset,
                                "undecodable batch skipped while loading: {e}"
                            );
                            skipped += 1;
                            continue;
                        }
                    };
                    for r in records {
                        let Some(key) = r.key else {
                            skipped += 1;
                            continue;
                        };
                        let replayed = match txn_producer {
                            Some(pid) => c.load_txn(p, pid, &key, r.value.as_deref()),
                            None => c.load(p, &key, r.value.as_deref()),
                        };
                        match replayed {
                            Ok(()) => loaded += 1,
                            Err(e) => {
                                debug!(partition = p, offset = r.offset, "record skipped: {e}");
                                skipped += 1;
                            }
                        }
                    }
                }
                drop(c);
                if next <= offset {
                    warn!(
                        partition = p,
                        offset, "offsets load made no progress; stopping"
                    );
                    break;
                }
                offset = next;
            }
        }
    }
    if !current() {
        return (loaded, skipped);
    }
    gs.coordinator.borrow_mut().finish_loading(p, now_ms());
    debug!(
        shard = gs.shard.id,
        partition = p,
        loaded,
        skipped,
        ms = started.elapsed().as_millis() as u64,
        "offsets partition loaded"
    );
    (loaded, skipped)
}

/// How often a new coordinator checks whether its high watermark reached the log end it
/// must load up to.
const LOAD_HW_POLL: Duration = Duration::from_millis(20);

/// This broker became leader (`leader_epoch` Some) of offsets partition `p`, or
/// stopped leading it (None). A new leader answers COORDINATOR_LOAD_IN_PROGRESS for the
/// partition's groups, waits until its high watermark covers the log end it had when it was
/// elected (every record it holds is then committed), replays the log up to there and
/// serves. A former leader drops the partition's groups; their requests answer
/// NOT_COORDINATOR, waiting joins and syncs too, so clients look the coordinator up again.
pub fn on_leadership_change(gs: &Rc<Groups>, p: i32, leader_epoch: Option<i32>) {
    let n = gs.offsets_partitions();
    if !(0..n).contains(&p) {
        warn!(
            partition = p,
            offsets_partitions = n,
            "{OFFSETS_TOPIC} partition outside the coordinator's partition count; not served"
        );
        return;
    }
    let generation = gs.next_leadership.get();
    gs.next_leadership.set(generation + 1);
    gs.leadership.borrow_mut().insert(p, generation);
    let actions = gs.coordinator.borrow_mut().unload(p);
    let s = gs.clone();
    let Some(epoch) = leader_epoch else {
        info!(
            shard = s.shard.id,
            partition = p,
            "no longer coordinating {OFFSETS_TOPIC} partition"
        );
        crate::io::runtime::spawn(async move { execute(&s, actions).await });
        return;
    };
    gs.coordinator.borrow_mut().begin_loading(p);
    crate::io::runtime::spawn(async move {
        execute(&s, actions).await;
        let current = || s.leadership.borrow().get(&p) == Some(&generation);
        let started = std::time::Instant::now();
        let part = match s.shard.partition(OFFSETS_TOPIC, p).await {
            Ok(part) => part,
            Err(code) => {
                warn!(
                    partition = p,
                    code, "cannot open {OFFSETS_TOPIC} partition to load it"
                );
                return;
            }
        };
        // The coordinator's own transactional batches go through `append_coordinator`,
        // which needs no switch; this lets the partition take transactional batches like
        // any partition once the broker enables transactions everywhere (harmless before:
        // clients cannot produce to the offsets topic).
        part.log.set_transactions_enabled(true);
        let end = part.log.log_end_offset();
        loop {
            if !current() || *s.shard.phase.borrow() != Phase::Running {
                return;
            }
            match super::replicas::list_offsets_latest(&s.replicas, OFFSETS_TOPIC, p) {
                Ok(hw) if hw >= end => break,
                _ => tokio::time::sleep(LOAD_HW_POLL).await,
            }
        }
        let (loaded, skipped) = load_partition(&s, p, Some(end), &current).await;
        if current() {
            info!(
                shard = s.shard.id,
                partition = p,
                leader_epoch = epoch,
                end_offset = end,
                loaded,
                skipped,
                ms = started.elapsed().as_millis() as u64,
                "coordinating {OFFSETS_TOPIC} partition"
            );
            s.timer.notify_one();
        }
    });
}

/// Decodes one stored batch into records, decompressing through storage's bounded codecs.
pub(super) fn decode_batch(batch: Bytes) -> Result<Vec<Record>, String> {
    let mut buf = batch;
    let decompress = |data: &mut Bytes, c: WireCompression| -> anyhow::Result<Bytes> {
        let codec = match c {
            WireCompression::None => StoredCompression::None,
            WireCompression::Gzip => StoredCompression::Gzip,
            WireCompression::Snappy => StoredCompression::Snappy,
            WireCompression::Lz4 => StoredCompression::Lz4,
            WireCompression::Zstd => StoredCompression::Zstd,
        };
        let out = decompress_records(codec, data, LOAD_MAX_DECOMPRESSED)?;
        Ok(Bytes::from(out))
    };
    RecordBatchDecoder::decode_with_custom_compression(&mut buf, Some(decompress))
        .map(|set| set.records)
        .map_err(|e| e.to_string())
}

/// Encodes coordinator records as one uncompressed RecordBatch v2 (offsets are assigned by
/// the log; a `None` value is a tombstone). With `producer` (a TxnOffsetCommit) the batch is
/// transactional and carries the producer's id and epoch, with base sequence 0, as Kafka's
/// `GroupMetadataManager.storeOffsets` builds it (the log does not check a coordinator
/// batch's sequence).
pub(super) fn encode_batch(
    records: &[OffsetsRecord],
    now: i64,
    producer: Option<TxnProducer>,
) -> Result<BytesMut, String> {
    let (producer_id, producer_epoch, first_sequence) = match producer {
        Some(p) => (p.producer_id, p.producer_epoch, 0),
        None => (-1, -1, -1),
    };
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, r)| Record {
            transactional: producer.is_some(),
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch,
            timestamp_type: WireTimestampType::Creation,
            offset: i as i64,
            // The encoder starts a new batch whenever `offset - sequence` changes; keeping it
            // constant makes one batch (written atomically, as Kafka's coordinator does) whose
            // base sequence is the first record's: -1 (no producer) or 0.
            sequence: i as i32 + first_sequence,
            timestamp: now,
            key: Some(r.key.clone()),
            value: r.value.clone(),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: WireCompression::None,
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(buf)
}

/// Maps a storage append failure to what the coordinator expects from the replica manager.
fn append_error(code: i16) -> AppendError {
    match code {
        // MESSAGE_TOO_LARGE, RECORD_LIST_TOO_LARGE
        10 | 18 => AppendError::RecordTooLarge,
        ec::KAFKA_STORAGE_ERROR => AppendError::Storage,
        ec::UNKNOWN_TOPIC_OR_PARTITION => AppendError::NotEnoughReplicas,
        // NOT_LEADER_OR_FOLLOWER, FENCED_LEADER_EPOCH: leadership moved.
        6 | 74 => AppendError::NotLeader,
        // NOT_ENOUGH_REPLICAS(_AFTER_APPEND)
        19 | 20 => AppendError::NotEnoughReplicas,
        // REQUEST_TIMED_OUT: not committed within offsets.commit.timeout.ms.
        7 => AppendError::Timeout,
        _ => AppendError::Other(codes::UNKNOWN_SERVER_ERROR),
    }
}

type Completion = Pin<Box<dyn Future<Output = Result<(), AppendError>>>>;

/// Starts one append; its place in the partition's order is taken before this returns.
async fn start_append(
    gs: &Rc<Groups>,
    partition: i32,
    records: &[OffsetsRecord],
    producer: Option<TxnProducer>,
) -> Result<Result<(), AppendError>, Completion> {
    let batch = match encode_batch(records, now_ms(), producer) {
        Ok(b) => b,
        Err(e) => {
            warn!(partition, "cannot encode {OFFSETS_TOPIC} batch: {e}");
            return Ok(Err(AppendError::Other(codes::UNKNOWN_SERVER_ERROR)));
        }
    };
    // This broker must lead the partition, and the record counts only once the topic's
    // replication rule committed it (acks=all), as Kafka's coordinator writes.
    let admitted = match super::replicas::before_append(&gs.replicas, OFFSETS_TOPIC, partition, -1)
    {
        Ok(a) => a,
        Err((code, msg)) => {
            debug!(partition, code, "{OFFSETS_TOPIC} append refused: {msg}");
            return Ok(Err(append_error(code)));
        }
    };
    let epoch = admitted.leader_epoch;
    let commit_timeout = gs.commit_timeout_ms;
    let s = gs.clone();
    let mut fut: Completion = Box::pin(async move {
        let part = s
            .shard
            .partition(OFFSETS_TOPIC, partition)
            .await
            .map_err(append_error)?;
        let appended = match producer {
            // Kafka's `AppendOrigin.COORDINATOR`: epoch checked, sequences not.
            Some(_) => part.log.append_coordinator(batch, epoch, now_ms()).await,
            None => part.log.append_leader(batch, epoch, now_ms()).await,
        };
        let info = match appended {
            Ok(info) => {
                part.appended.notify_waiters();
                info
            }
            Err(e) => {
                warn!(partition, "{OFFSETS_TOPIC} append failed: {e}");
                return Err(append_error(e.kafka_error_code()));
            }
        };
        super::replicas::after_append(
            &s.replicas,
            admitted,
            info.first_offset,
            info.last_offset,
            -1,
            commit_timeout,
        )
        .await
        .map_err(|(code, msg)| {
            debug!(
                partition,
                code, "{OFFSETS_TOPIC} record not committed: {msg}"
            );
            append_error(code)
        })?;
        Ok(())
    });
    // One poll takes the log's FIFO append lock (the partition is open, so the lookup does
    // not wait): appends reach the log in the order the coordinator asked for them.
    match std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
        Poll::Ready(r) => Ok(r),
        Poll::Pending => Err(fut),
    }
}

/// Carries out coordinator actions: answers waiting requests and starts appends, feeding
/// completions back in.
fn execute(gs: &Rc<Groups>, actions: Vec<CoordinatorAction>) -> Pin<Box<dyn Future<Output = ()>>> {
    let gs = gs.clone();
    Box::pin(async move {
        let mut queue: VecDeque<CoordinatorAction> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                CoordinatorAction::Respond { token, response } => {
                    if let Some(tx) = gs.waiters.borrow_mut().remove(&token) {
                        // The requester may have gone (connection closed): nothing to do.
                        let _ = tx.send(response);
                    }
                }
                CoordinatorAction::Append {
                    append_id,
                    partition,
                    records,
                    producer,
                } => match start_append(&gs, partition, &records, producer).await {
                    Ok(result) => {
                        let more = complete(&gs, append_id, result);
                        queue.extend(more);
                    }
                    Err(pending) => {
                        let s = gs.clone();
                        crate::io::runtime::spawn(async move {
                            let result = pending.await;
                            let more = complete(&s, append_id, result);
                            execute(&s, more).await;
                        });
                    }
                },
            }
        }
        gs.timer.notify_one();
    })
}

fn complete(
    gs: &Groups,
    append_id: AppendId,
    result: Result<(), AppendError>,
) -> Vec<CoordinatorAction> {
    gs.coordinator
        .borrow_mut()
        .on_append_complete(append_id, now_ms(), result)
}

/// The coordinator's answer, or the error code to give when it cannot answer (the shard is
/// shutting down and dropped the request).
pub type Answer = Result<GroupResponse, i16>;

/// Runs `request` on this shard's coordinator and waits for its answer.
pub async fn submit_local(gs: Rc<Groups>, request: GroupRequest) -> Answer {
    let token = gs.next_token.get();
    gs.next_token.set(token.wrapping_add(1));
    let (tx, rx) = oneshot::channel();
    gs.waiters.borrow_mut().insert(token, tx);
    let image = gs.shard.ctx.metadata.image();
    let catalog = |topic: &str, p: i32| {
        image
            .topic(topic)
            .is_some_and(|t| (0..t.partitions).contains(&p))
    };
    let actions = gs
        .coordinator
        .borrow_mut()
        .handle(token, now_ms(), request, &catalog);
    execute(&gs, actions).await;
    // Dropped only on shutdown, when the runtime drops the coordinator's waiters.
    rx.await.map_err(|_| codes::NOT_COORDINATOR)
}

/// The shard hosting `group_id`'s coordinator.
pub fn coordinator_shard(gs: &Groups, group_id: &str) -> usize {
    let p = offsets_partition_for(group_id, gs.offsets_partitions());
    gs.shard.ctx.owner(OFFSETS_TOPIC, p)
}

/// Sends `request` to the coordinator of `group_id`.
pub async fn submit(
    gs: &Rc<Groups>,
    group_id: &str,
    request: GroupRequest,
) -> Result<Answer, ShardGone> {
    let owner = coordinator_shard(gs, group_id);
    gs.call(owner, move |s| submit_local(s, request)).await
}

/// The transaction coordinator appended a COMMIT (`commit`) or ABORT marker of
/// `producer_id` to `__consumer_offsets` partition `partition`; runs on the shard that owns
/// the partition ([`on_txn_marker`] routes there). The offsets the producer committed in
/// the partition's groups through TxnOffsetCommit become visible (commit) or are dropped
/// (abort). Call it after the marker's append succeeded and before the transaction is
/// completed (so no later transaction of the producer has written offsets meanwhile); a
/// partition still loading applies it when its load finishes, one this broker does not
/// coordinate ignores it (its coordinator replays the marker when it loads).
pub async fn txn_marker_appended(gs: Rc<Groups>, partition: i32, producer_id: i64, commit: bool) {
    let actions = gs
        .coordinator
        .borrow_mut()
        .on_txn_marker(partition, producer_id, commit);
    execute(&gs, actions).await;
}

/// [`txn_marker_appended`] on the shard that owns `__consumer_offsets` partition
/// `partition`, through the group service's peers.
pub async fn on_txn_marker(
    gs: &Rc<Groups>,
    partition: i32,
    producer_id: i64,
    commit: bool,
) -> Result<(), ShardGone> {
    let owner = gs.shard.ctx.owner(OFFSETS_TOPIC, partition);
    gs.call(owner, move |s| {
        txn_marker_appended(s, partition, producer_id, commit)
    })
    .await
}

/// Drives the coordinator's timers: sleeps until `next_deadline`, re-armed whenever an input
/// may have moved it. On drain, unloads every partition so waiting members are told
/// NOT_COORDINATOR (as a Kafka broker does when it shuts down) instead of holding the drain.
async fn timer_loop(gs: Rc<Groups>) {
    let mut phase = gs.shard.phase.subscribe();
    // The first tick arms the periodic offset-retention check.
    let actions = gs.coordinator.borrow_mut().tick(now_ms());
    execute(&gs, actions).await;
    loop {
        let next = gs.coordinator.borrow().next_deadline();
        let wait = match next {
            Some(t) => Duration::from_millis(u64::try_from(t - now_ms()).unwrap_or(0)),
            None => Duration::from_secs(3600),
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {
                let actions = gs.coordinator.borrow_mut().tick(now_ms());
                execute(&gs, actions).await;
            }
            _ = gs.timer.notified() => {}
            changed = phase.changed() => {
                if changed.is_err() || *phase.borrow() != Phase::Running {
                    let owned = owned_offsets_partitions(&gs);
                    let mut actions = Vec::new();
                    for p in owned {
                        actions.extend(gs.coordinator.borrow_mut().unload(p));
                    }
                    execute(&gs, actions).await;
                    return;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Request handlers (called from `handlers::handle_request`).

/// Topics left the metadata image; this shard's coordinator forgets their offsets. Runs on
/// every broker, so every coordinator hears of it whichever broker handled the DeleteTopics.
pub async fn topics_deleted_here(gs: Rc<Groups>, topics: Vec<String>) {
    let actions = gs.coordinator.borrow_mut().on_topics_deleted(&topics);
    execute(&gs, actions).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(flags: &[(&str, &str)]) -> BrokerConfig {
        let flags: Vec<(String, String)> = flags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        BrokerConfig::resolve(None, Vec::new(), &flags)
            .expect("valid config")
            .0
    }

    #[test]
    fn batches_round_trip_with_tombstones() {
        let records = vec![
            OffsetsRecord {
                key: Bytes::from_static(b"k1"),
                value: Some(Bytes::from_static(b"v1")),
            },
            OffsetsRecord {
                key: Bytes::from_static(b"k2"),
                value: None,
            },
        ];
        let batch = encode_batch(&records, 1234, None).expect("encode");
        let header = crate::storage::record_batch::validate_batch(&batch).expect("valid v2 batch");
        assert_eq!(header.records_count, 2);
        assert_eq!(header.size(), batch.len(), "one batch");
        assert_eq!(header.producer_id, -1);
        assert_eq!(header.base_sequence, -1);
        let decoded = decode_batch(batch.freeze()).expect("decode");
        let got: Vec<(Option<Bytes>, Option<Bytes>)> =
            decoded.into_iter().map(|r| (r.key, r.value)).collect();
        assert_eq!(
            got,
            vec![
                (
                    Some(Bytes::from_static(b"k1")),
                    Some(Bytes::from_static(b"v1"))
                ),
                (Some(Bytes::from_static(b"k2")), None),
            ]
        );
    }

    #[test]
    fn txn_offset_commit_batches_are_transactional_batches_of_the_producer() {
        let records: Vec<OffsetsRecord> = (0..3)
            .map(|i| OffsetsRecord {
                key: Bytes::from(format!("k{i}")),
                value: Some(Bytes::from_static(b"v")),
            })
            .collect();
        let producer = TxnProducer {
            producer_id: 4242,
            producer_epoch: 7,
        };
        let batch = encode_batch(&records, 1234, Some(producer)).expect("encode");
        let header = crate::storage::record_batch::validate_batch(&batch).expect("valid v2 batch");
        assert_eq!(header.size(), batch.len(), "one batch");
        assert_eq!(header.records_count, 3);
        assert!(header.is_transactional());
        assert!(!header.is_control());
        assert_eq!(header.producer_id, 4242);
        assert_eq!(header.producer_epoch, 7);
        assert_eq!(header.base_sequence, 0);
        assert_eq!(decode_batch(batch.freeze()).expect("decode").len(), 3);
    }

    #[test]
    fn compressed_batches_decode_through_storage_codecs() {
        for compression in [
            WireCompression::Gzip,
            WireCompression::Snappy,
            WireCompression::Lz4,
            WireCompression::Zstd,
        ] {
            let records: Vec<Record> = (0..3)
                .map(|i| Record {
                    transactional: false,
                    control: false,
                    delete_horizon: false,
                    partition_leader_epoch: -1,
                    producer_id: -1,
                    producer_epoch: -1,
                    timestamp_type: WireTimestampType::Creation,
                    offset: i,
                    sequence: i as i32 - 1,
                    timestamp: 0,
                    key: Some(Bytes::from(format!("key-{i}"))),
                    value: Some(Bytes::from(vec![b'x'; 1000])),
                    headers: Default::default(),
                })
                .collect();
            let mut buf = BytesMut::new();
            RecordBatchEncoder::encode(
                &mut buf,
                &records,
                &RecordEncodeOptions {
                    version: 2,
                    compression,
                },
            )
            .expect("encode");
            let header =
                crate::storage::record_batch::BatchHeader::parse(&buf).expect("batch header");
            assert_eq!(header.size(), buf.len(), "one batch");
            let decoded = decode_batch(buf.freeze()).expect("decode");
            assert_eq!(decoded.len(), 3, "{compression:?}");
            assert_eq!(decoded[2].key.as_deref(), Some(&b"key-2"[..]));
        }
    }

    #[test]
    fn garbage_batches_are_errors_not_panics() {
        assert!(decode_batch(Bytes::from_static(&[0u8; 70])).is_err());
        assert!(decode_batch(Bytes::new()).is_err());
    }

    #[test]
    fn coordinator_config_reads_broker_keys() {
        let c = coordinator_config(
            &config(&[
                ("group.initial.rebalance.delay.ms", "0"),
                ("offsets.topic.num.partitions", "7"),
                ("offsets.retention.minutes", "2"),
                ("group.max.size", "3"),
            ]),
            None,
        )
        .expect("config");
        assert_eq!(c.initial_rebalance_delay_ms, 0);
        assert_eq!(c.offsets_partitions, 7);
        assert_eq!(c.offsets_retention_ms, 120_000);
        assert_eq!(c.max_group_size, 3);
        assert_eq!(c.min_session_timeout_ms, 6000);
        // The existing topic's partition count wins.
        let c = coordinator_config(&config(&[("offsets.topic.num.partitions", "7")]), Some(50))
            .expect("config");
        assert_eq!(c.offsets_partitions, 50);
    }

    #[test]
    fn bad_group_keys_name_the_key() {
        for (k, v) in [
            ("offsets.topic.num.partitions", "0"),
            ("group.min.session.timeout.ms", "-1"),
            ("group.max.session.timeout.ms", "99999999999"),
            ("group.initial.rebalance.delay.ms", "soon"),
        ] {
            let e = coordinator_config(&config(&[(k, v)]), None)
                .expect_err(k)
                .to_string();
            assert!(e.contains(k), "{e}");
        }
    }

    #[test]
    fn storage_errors_map_to_coordinator_errors() {
        assert_eq!(append_error(10), AppendError::RecordTooLarge);
        assert_eq!(append_error(ec::KAFKA_STORAGE_ERROR), AppendError::Storage);
        assert_eq!(
            append_error(ec::KAFKA_STORAGE_ERROR).to_coordinator_error(),
            codes::NOT_COORDINATOR
        );
        assert_eq!(
            append_error(ec::UNKNOWN_TOPIC_OR_PARTITION).to_coordinator_error(),
            codes::COORDINATOR_NOT_AVAILABLE
        );
    }
}
