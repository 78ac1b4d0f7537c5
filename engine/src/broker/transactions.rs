//! The transaction coordinator in the broker: the IO shell around the sans-IO
//! [`TxnCoordinator`].
//!
//! Like the group coordinator, each shard coordinates the transactional ids of the
//! `__transaction_state` partitions it owns and this broker leads, and follows their
//! leadership: a new leader replays its partition (up to the log end it had when elected,
//! once its high watermark covers it) before it serves, and resends the markers of any
//! transaction that was being ended. A state change is a record appended with acks=all to the
//! id's partition; only when it is committed does the coordinator take the new state.
//!
//! Ending a transaction writes a COMMIT or ABORT marker to every partition of it: partitions
//! this broker leads through replication directly, the others with WriteTxnMarkers to their
//! leader, retried until written or until the coordinator moved on. A marker on a
//! `__consumer_offsets` partition also makes the group coordinator materialise or drop the
//! transaction's offsets.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::{self as m, ApiKey};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::cluster::ClusterNode;
use super::cluster_client::KafkaClient;
use super::config::{parse_int, BrokerConfig, ConfigError};
use super::groups::Groups;
use super::producer_ids::ProducerIds;
use super::protocol::error_code as ec;
use super::replicas::Replicas;
use super::shard::{now_ms, Peers, Phase, Shard, ShardGone, ShardLocal};
use crate::group::OFFSETS_TOPIC;
use crate::idempotence::InitProducerId;
use crate::txn::records::{decode_key, encode_key};
use crate::txn::{
    codes, EndPlan, InitPlan, MarkerJob, Transition, TxnConfig, TxnCoordinator, TxnLogValue,
    TxnMeta, TxnStatus, TXN_TOPIC,
};

/// The coordinator's broker keys, validated at start-up.
#[derive(Debug, Clone)]
pub struct TxnSettings {
    /// The state machine's settings.
    pub coordinator: TxnConfig,
    /// `transaction.state.log.replication.factor` (capped at the live brokers).
    pub replication_factor: i16,
    /// `transaction.state.log.min.isr` (capped at the replication factor).
    pub min_isr: i16,
    /// `transaction.state.log.segment.bytes`.
    pub segment_bytes: i32,
    /// `transaction.abort.timed.out.transaction.cleanup.interval.ms`.
    pub abort_check_interval_ms: i64,
    /// `transaction.remove.expired.transaction.cleanup.interval.ms`: how often idle ids are
    /// checked against `transactional.id.expiration.ms`.
    pub remove_check_interval_ms: i64,
    /// How long a state record or a marker may wait for its commit
    /// (`transaction.state.log.write.timeout.ms`, Sluice's; Kafka uses its request timeout).
    pub write_timeout_ms: i32,
}

impl TxnSettings {
    /// Kafka's defaults (`partitions`: the existing topic's count, if any).
    fn defaults(partitions: Option<i32>) -> TxnSettings {
        TxnSettings {
            coordinator: TxnConfig {
                partitions: partitions.unwrap_or(TxnConfig::default().partitions),
                ..TxnConfig::default()
            },
            replication_factor: 3,
            min_isr: 2,
            segment_bytes: 104_857_600,
            abort_check_interval_ms: 10_000,
            remove_check_interval_ms: 3_600_000,
            write_timeout_ms: 5_000,
        }
    }
}

/// Reads and checks the transaction keys (bad values name their key).
pub fn txn_settings(
    cfg: &BrokerConfig,
    topic_partitions: Option<i32>,
) -> Result<TxnSettings, ConfigError> {
    let int = |k: &str, default: i64, min: i64, max: i64| -> Result<i64, ConfigError> {
        let v = match cfg.raw.get(k) {
            Some(v) => parse_int::<i64>(k, v)?,
            None => default,
        };
        if !(min..=max).contains(&v) {
            return Err(ConfigError::InvalidValue {
                key: k.to_string(),
                value: v.to_string(),
                reason: format!("expected {min}..={max}"),
            });
        }
        Ok(v)
    };
    let i32max = i64::from(i32::MAX);
    let partitions = int("transaction.state.log.num.partitions", 50, 1, i32max)? as i32;
    Ok(TxnSettings {
        coordinator: TxnConfig {
            max_timeout_ms: int("transaction.max.timeout.ms", 900_000, 1, i32max)? as i32,
            partitions: topic_partitions.unwrap_or(partitions),
            id_expiration_ms: int("transactional.id.expiration.ms", 604_800_000, 1, i32max)?,
        },
        replication_factor: int("transaction.state.log.replication.factor", 3, 1, 32767)? as i16,
        min_isr: int("transaction.state.log.min.isr", 2, 1, 32767)? as i16,
        segment_bytes: int(
            "transaction.state.log.segment.bytes",
            104_857_600,
            14,
            i32max,
        )? as i32,
        abort_check_interval_ms: int(
            "transaction.abort.timed.out.transaction.cleanup.interval.ms",
            10_000,
            1,
            i64::MAX,
        )?,
        remove_check_interval_ms: int(
            "transaction.remove.expired.transaction.cleanup.interval.ms",
            3_600_000,
            1,
            i64::MAX,
        )?,
        write_timeout_ms: int("transaction.state.log.write.timeout.ms", 5_000, 1, i32max)? as i32,
    })
}

/// The topic configs `__transaction_state` is created with: compacted, never aged out.
fn txn_topic_configs(s: &TxnSettings, rf: i16) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("cleanup.policy".to_string(), "compact".to_string()),
        ("segment.bytes".to_string(), s.segment_bytes.to_string()),
        ("segment.index.bytes".to_string(), "524288".to_string()),
        ("retention.ms".to_string(), "-1".to_string()),
        ("retention.bytes".to_string(), "-1".to_string()),
        (
            "min.insync.replicas".to_string(),
            s.min_isr.min(rf).to_string(),
        ),
    ])
}

/// The transaction service of one shard.
pub struct Transactions {
    /// The shard core.
    pub shard: Rc<Shard>,
    /// The replication service of the same shard.
    pub replicas: Rc<Replicas>,
    groups: Rc<Groups>,
    producer_ids: Rc<ProducerIds>,
    peers: Arc<Peers<Transactions>>,
    coordinator: RefCell<TxnCoordinator>,
    settings: TxnSettings,
    /// Bumped at every leadership change of a `__transaction_state` partition.
    leadership: RefCell<HashMap<i32, u64>>,
    next_leadership: Cell<u64>,
    timer: Notify,
    creating_topic: Cell<bool>,
    /// Idle connections to other brokers (markers, verifications), by broker id.
    pool: RefCell<HashMap<i32, Vec<KafkaClient>>>,
}

impl ShardLocal for Transactions {
    fn shard_id(&self) -> usize {
        self.shard.id
    }

    fn peers(&self) -> &Peers<Transactions> {
        &self.peers
    }
}

impl Transactions {
    /// The transaction service of a shard; it follows the leadership of the shard's
    /// `__transaction_state` partitions from now on.
    pub fn new(
        groups: Rc<Groups>,
        producer_ids: Rc<ProducerIds>,
        peers: Arc<Peers<Transactions>>,
    ) -> Rc<Transactions> {
        let replicas = groups.replicas.clone();
        let shard = replicas.shard.clone();
        let existing = shard
            .ctx
            .metadata
            .image()
            .topic(TXN_TOPIC)
            .map(|t| t.partitions);
        let settings = txn_settings(&shard.ctx.config, existing).unwrap_or_else(|e| {
            warn!("invalid transaction coordinator config ({e}); using defaults");
            TxnSettings::defaults(existing)
        });
        let ts = Rc::new(Transactions {
            shard,
            replicas: replicas.clone(),
            groups,
            producer_ids,
            peers,
            coordinator: RefCell::new(TxnCoordinator::new(settings.coordinator.clone())),
            settings,
            leadership: RefCell::new(HashMap::new()),
            next_leadership: Cell::new(1),
            timer: Notify::new(),
            creating_topic: Cell::new(false),
            pool: RefCell::new(HashMap::new()),
        });
        let weak = Rc::downgrade(&ts);
        replicas.on_leadership_change(Box::new(move |topic, p, leader_epoch| {
            if topic == TXN_TOPIC {
                if let Some(ts) = weak.upgrade() {
                    on_leadership_change(&ts, p, leader_epoch);
                }
            }
        }));
        ts
    }

    /// How long a state record or a marker may wait for its commit.
    pub fn write_timeout_ms(&self) -> i32 {
        self.settings.write_timeout_ms
    }

    /// The `__transaction_state` partition count ids are mapped onto.
    pub fn partitions(&self) -> i32 {
        self.coordinator.borrow().config().partitions
    }

    /// The shard coordinating `transactional_id`.
    pub fn owner_of(&self, transactional_id: &str) -> usize {
        let p = self.coordinator.borrow().partition_for(transactional_id);
        self.shard.ctx.owner(TXN_TOPIC, p)
    }

    /// Asks the controller to create `__transaction_state` (once at a time).
    pub fn create_topic(self: &Rc<Self>, node: &Arc<ClusterNode>) {
        if self.creating_topic.replace(true) {
            return;
        }
        let (ts, node) = (self.clone(), node.clone());
        crate::io::runtime::spawn(async move {
            if let Err(e) = ensure_txn_topic(&node, &ts.settings, ts.partitions()).await {
                warn!("cannot create {TXN_TOPIC}: {e}");
            }
            ts.creating_topic.set(false);
        });
    }
}

/// Idle connections kept per broker.
const POOL_PER_BROKER: usize = 4;

/// One request to broker `broker_id`'s inter-broker listener, on a pooled connection.
async fn remote_call<Req, Resp>(
    ts: &Rc<Transactions>,
    broker_id: i32,
    api: ApiKey,
    version: i16,
    req: &Req,
    timeout: Duration,
) -> Result<Resp, String>
where
    Req: kafka_protocol::protocol::Encodable,
    Resp: kafka_protocol::protocol::Decodable,
{
    let node = ts.shard.ctx.metadata.cluster_node().clone();
    let idle = ts.pool.borrow_mut().get_mut(&broker_id).and_then(Vec::pop);
    let mut client = match idle {
        Some(c) => c,
        None => {
            let image = node.cluster_image();
            let ep = image
                .broker(broker_id)
                .and_then(|b| b.inter_broker_endpoint())
                .ok_or_else(|| format!("broker {broker_id} has no inter-broker endpoint"))?;
            let addr = format!("{}:{}", ep.host, ep.port);
            KafkaClient::connect(
                &addr,
                node.inter_broker_tls.as_deref(),
                format!("sluice-txn-{}", node.node_id),
                Duration::from_secs(2),
            )
            .await
            .map_err(|e| format!("{addr}: {e}"))?
        }
    };
    let resp = client
        .call::<Req, Resp>(api, version, req, timeout)
        .await
        .map_err(|e| e.to_string())?;
    let mut pool = ts.pool.borrow_mut();
    let idle = pool.entry(broker_id).or_default();
    if idle.len() < POOL_PER_BROKER {
        idle.push(client);
    }
    Ok(resp)
}

fn all_with(code: i16, parts: &[(String, i32)]) -> Vec<((String, i32), i16)> {
    parts.iter().map(|x| (x.clone(), code)).collect()
}

impl Transactions {
    /// KIP-890: whether `partitions` are in `transactional_id`'s ongoing transaction under
    /// (`producer_id`, `producer_epoch`), asked of its coordinator (this broker or, with
    /// AddPartitionsToTxn v4 `verify_only`, the broker leading its state partition). A
    /// partition leader asks before it appends a transactional batch, so a late retry of an
    /// ended transaction cannot open a transaction nobody will end.
    pub async fn verify(
        self: &Rc<Self>,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partitions: Vec<(String, i32)>,
    ) -> Vec<((String, i32), i16)> {
        let node = self.shard.ctx.metadata.cluster_node().clone();
        let p = self.coordinator.borrow().partition_for(transactional_id);
        let leader = node
            .cluster_image()
            .partition(TXN_TOPIC, p)
            .and_then(|m| m.leader);
        let Some(l) = leader else {
            return all_with(codes::COORDINATOR_NOT_AVAILABLE, &partitions);
        };
        if l == node.node_id {
            let id = transactional_id.to_string();
            let parts = partitions.clone();
            return on_coordinator(self, transactional_id, move |ts| {
                verify_local(ts, id, producer_id, producer_epoch, parts)
            })
            .await
            .unwrap_or_else(|_| all_with(codes::COORDINATOR_NOT_AVAILABLE, &partitions));
        }
        let mut topics: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for (t, q) in &partitions {
            topics.entry(t.clone()).or_default().push(*q);
        }
        use m::add_partitions_to_txn_request as apr;
        let req = m::AddPartitionsToTxnRequest::default().with_transactions(vec![
            apr::AddPartitionsToTxnTransaction::default()
                .with_transactional_id(m::TransactionalId(StrBytes::from_string(
                    transactional_id.to_string(),
                )))
                .with_producer_id(m::ProducerId(producer_id))
                .with_producer_epoch(producer_epoch)
                .with_verify_only(true)
                .with_topics(
                    topics
                        .into_iter()
                        .map(|(t, ps)| {
                            apr::AddPartitionsToTxnTopic::default()
                                .with_name(m::TopicName(StrBytes::from_string(t)))
                                .with_partitions(ps)
                        })
                        .collect(),
                ),
        ]);
        let resp: Result<m::AddPartitionsToTxnResponse, String> = remote_call(
            self,
            l,
            ApiKey::AddPartitionsToTxn,
            4,
            &req,
            Duration::from_secs(5),
        )
        .await;
        match resp {
            Ok(r) if r.error_code == ec::NONE => {
                let mut found: HashMap<(String, i32), i16> = HashMap::new();
                for t in r
                    .results_by_transaction
                    .into_iter()
                    .flat_map(|t| t.topic_results)
                {
                    let name = t.name.0.to_string();
                    for pr in t.results_by_partition {
                        found.insert((name.clone(), pr.partition_index), pr.partition_error_code);
                    }
                }
                partitions
                    .into_iter()
                    .map(|x| {
                        let code = found
                            .get(&x)
                            .copied()
                            .unwrap_or(codes::COORDINATOR_NOT_AVAILABLE);
                        (x, code)
                    })
                    .collect()
            }
            Ok(r) => all_with(r.error_code, &partitions),
            Err(e) => {
                debug!(coordinator = l, "transaction verification failed: {e}");
                all_with(codes::COORDINATOR_NOT_AVAILABLE, &partitions)
            }
        }
    }
}

/// Creates `__transaction_state` through the controller if the image lacks it (on the first
/// FindCoordinator for a transactional id, as Kafka does).
async fn ensure_txn_topic(
    node: &ClusterNode,
    s: &TxnSettings,
    partitions: i32,
) -> Result<(), String> {
    if node.cluster_image().topic(TXN_TOPIC).is_some() {
        return Ok(());
    }
    let live = node.cluster_image().live_brokers().len();
    if live == 0 {
        return Err("no unfenced broker yet".into());
    }
    let rf = s
        .replication_factor
        .min(i16::try_from(live).unwrap_or(i16::MAX));
    match node
        .controller
        .create_topic(TXN_TOPIC, partitions, rf, txn_topic_configs(s, rf))
        .await
    {
        Ok(id) => {
            info!(partitions, replication_factor = rf, topic_id = %id, "created internal topic {TXN_TOPIC}");
            Ok(())
        }
        Err(crate::controller::ControllerError::Rejected(
            crate::controller::MetadataError::TopicAlreadyExists(_),
        )) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// Checks the transaction keys at start-up.
pub fn check_txn_config(cfg: &BrokerConfig) -> Result<(), ConfigError> {
    txn_settings(cfg, None).map(|_| ())
}

/// Starts this shard's timer (transaction timeouts).
pub fn start(ts: &Rc<Transactions>) {
    crate::io::runtime::spawn(timer_loop(ts.clone()));
}

/// How often a new coordinator checks whether its high watermark reached the log end.
const LOAD_HW_POLL: Duration = Duration::from_millis(20);

/// This broker became leader of `__transaction_state` partition `p` (`leader_epoch` Some)
/// or stopped leading it.
fn on_leadership_change(ts: &Rc<Transactions>, p: i32, leader_epoch: Option<i32>) {
    if !(0..ts.partitions()).contains(&p) {
        warn!(
            partition = p,
            "{TXN_TOPIC} partition outside the coordinator's count; not served"
        );
        return;
    }
    let generation = ts.next_leadership.get();
    ts.next_leadership.set(generation + 1);
    ts.leadership.borrow_mut().insert(p, generation);
    let Some(epoch) = leader_epoch else {
        ts.coordinator.borrow_mut().unload(p);
        info!(
            shard = ts.shard.id,
            partition = p,
            "no longer coordinating {TXN_TOPIC} partition"
        );
        return;
    };
    ts.coordinator.borrow_mut().begin_loading(p);
    let s = ts.clone();
    crate::io::runtime::spawn(async move {
        let current = || s.leadership.borrow().get(&p) == Some(&generation);
        let part = match s.shard.partition(TXN_TOPIC, p).await {
            Ok(part) => part,
            Err(code) => {
                warn!(
                    partition = p,
                    code, "cannot open {TXN_TOPIC} partition to load it"
                );
                return;
            }
        };
        let end = part.log.log_end_offset();
        loop {
            if !current() || *s.shard.phase.borrow() != Phase::Running {
                return;
            }
            match super::replicas::list_offsets_latest(&s.replicas, TXN_TOPIC, p) {
                Ok(hw) if hw >= end => break,
                _ => tokio::time::sleep(LOAD_HW_POLL).await,
            }
        }
        let mut loaded = 0u64;
        let mut skipped = 0u64;
        let complete =
            super::partition_io::replay_batches(&part, end, &current, &mut |h, batch| {
                if h.is_control() {
                    return;
                }
                let records = match super::groups::decode_batch(batch) {
                    Ok(r) => r,
                    Err(e) => {
                        warn!(
                            partition = p,
                            base_offset = h.base_offset,
                            "undecodable {TXN_TOPIC} batch skipped: {e}"
                        );
                        skipped += 1;
                        return;
                    }
                };
                let mut c = s.coordinator.borrow_mut();
                for r in records {
                    let Some(key) = r.key else {
                        skipped += 1;
                        continue;
                    };
                    let id = match decode_key(&key) {
                        Ok(id) => id,
                        Err(e) => {
                            debug!(partition = p, "{TXN_TOPIC} key skipped: {e}");
                            skipped += 1;
                            continue;
                        }
                    };
                    let value = match r.value.as_deref().map(TxnLogValue::decode).transpose() {
                        Ok(v) => v,
                        Err(e) => {
                            debug!(partition = p, "{TXN_TOPIC} value skipped: {e}");
                            skipped += 1;
                            continue;
                        }
                    };
                    c.load(p, id, value);
                    loaded += 1;
                }
            })
            .await;
        if !complete || !current() {
            return;
        }
        let (jobs, fences) = s
            .coordinator
            .borrow_mut()
            .finish_loading(p, epoch, now_ms());
        info!(
            shard = s.shard.id,
            partition = p,
            coordinator_epoch = epoch,
            end_offset = end,
            loaded,
            skipped,
            resumed = jobs.len() + fences.len(),
            "coordinating {TXN_TOPIC} partition"
        );
        for job in jobs {
            crate::io::runtime::spawn(run_markers(s.clone(), job));
        }
        for t in fences {
            s.coordinator.borrow_mut().finish(&t, false);
            abort_in_background(&s, t);
        }
        s.timer.notify_one();
    });
}

/// Appends `t`'s record to its partition and waits for its commit; then the coordinator
/// takes the new state (true) or keeps the old one.
async fn write(ts: &Rc<Transactions>, t: &Transition) -> bool {
    let ok = append_state(ts, t).await;
    ts.coordinator.borrow_mut().finish(t, ok)
}

async fn append_state(ts: &Rc<Transactions>, t: &Transition) -> bool {
    let record = crate::group::OffsetsRecord {
        key: encode_key(&t.transactional_id),
        // An expired id is removed: a tombstone, as Kafka writes for its Dead state.
        value: (t.target.status != TxnStatus::Dead).then(|| t.target.encode()),
    };
    let batch = match super::groups::encode_batch(std::slice::from_ref(&record), now_ms(), None) {
        Ok(b) => b,
        Err(e) => {
            warn!("cannot encode {TXN_TOPIC} record: {e}");
            return false;
        }
    };
    let p = t.partition;
    let admitted = match super::replicas::before_append(&ts.replicas, TXN_TOPIC, p, -1) {
        Ok(a) if a.leader_epoch == t.coordinator_epoch => a,
        Ok(_) => return false,
        Err((code, msg)) => {
            debug!(partition = p, code, "{TXN_TOPIC} append refused: {msg}");
            return false;
        }
    };
    let part = match ts.shard.partition(TXN_TOPIC, p).await {
        Ok(part) => part,
        Err(_) => return false,
    };
    let info = match part
        .log
        .append_leader(batch, admitted.leader_epoch, now_ms())
        .await
    {
        Ok(info) => {
            part.appended.notify_waiters();
            info
        }
        Err(e) => {
            warn!(partition = p, "{TXN_TOPIC} append failed: {e}");
            return false;
        }
    };
    match super::replicas::after_append(
        &ts.replicas,
        admitted,
        info.first_offset,
        info.last_offset,
        -1,
        ts.settings.write_timeout_ms,
    )
    .await
    {
        Ok(()) => true,
        Err((code, msg)) => {
            debug!(
                partition = p,
                code, "{TXN_TOPIC} record not committed: {msg}"
            );
            false
        }
    }
}

/// Writes the PrepareAbort of a fenced or timed-out transaction, then its markers.
fn abort_in_background(ts: &Rc<Transactions>, t: Transition) {
    let ts = ts.clone();
    crate::io::runtime::spawn(async move {
        if write(&ts, &t).await {
            info!(
                transactional_id = t.transactional_id,
                producer_id = t.target.producer_id,
                producer_epoch = t.target.producer_epoch,
                "aborting transaction"
            );
            let job = ts.coordinator.borrow().markers_for(&t);
            if let Some(job) = job {
                run_markers(ts, job).await;
            }
        }
    });
}

/// Writes every marker of `job` (retrying each partition until it is written or the job is
/// no longer current), then the transaction's completion record.
async fn run_markers(ts: Rc<Transactions>, job: MarkerJob) {
    let node = ts.shard.ctx.metadata.cluster_node().clone();
    let mut left: BTreeSet<(String, i32)> = job.partitions.clone();
    let mut last_codes: BTreeMap<(String, i32), i16> = BTreeMap::new();
    let mut attempts = 0u32;
    while !left.is_empty() {
        if !ts.coordinator.borrow().job_current(&job) || *ts.shard.phase.borrow() != Phase::Running
        {
            return;
        }
        let image = node.cluster_image();
        let mut by_leader: BTreeMap<i32, Vec<(String, i32)>> = BTreeMap::new();
        for (topic, p) in &left {
            match image.partition(topic, *p) {
                // The topic was deleted: nothing to mark.
                None => {
                    by_leader.entry(-2).or_default().push((topic.clone(), *p));
                }
                Some(meta) => {
                    let leader = meta.leader.unwrap_or(-1);
                    by_leader
                        .entry(leader)
                        .or_default()
                        .push((topic.clone(), *p));
                }
            }
        }
        for (leader, parts) in by_leader {
            let results: Vec<((String, i32), i16)> = if leader == -2 {
                parts.into_iter().map(|tp| (tp, ec::NONE)).collect()
            } else if leader < 0 {
                parts
                    .into_iter()
                    .map(|tp| (tp, ec::LEADER_NOT_AVAILABLE))
                    .collect()
            } else if leader == node.node_id {
                write_local_markers(&ts, &job, parts).await
            } else {
                write_remote_markers(&ts, leader, &job, parts).await
            };
            for (tp, code) in results {
                if marker_done(code) {
                    left.remove(&tp);
                    last_codes.remove(&tp);
                } else {
                    last_codes.insert(tp, code);
                }
            }
        }
        if !left.is_empty() {
            attempts += 1;
            if attempts.is_multiple_of(50) {
                let pending: Vec<String> = last_codes
                    .iter()
                    .map(|((t, p), code)| format!("{t}-{p}: {code}"))
                    .collect();
                warn!(
                    transactional_id = job.transactional_id,
                    producer_id = job.producer_id,
                    producer_epoch = job.producer_epoch,
                    coordinator_epoch = job.coordinator_epoch,
                    attempts,
                    "transaction markers still not written (partition: last error code): {}",
                    pending.join(", ")
                );
            }
            tokio::time::sleep(Duration::from_millis(100.min(10 * u64::from(attempts)))).await;
        }
    }
    // Every marker is in: the transaction is complete.
    for _ in 0..100 {
        let t = ts.coordinator.borrow_mut().complete(&job, now_ms());
        let Some(t) = t else { return };
        if write(&ts, &t).await {
            debug!(
                transactional_id = job.transactional_id,
                commit = job.commit,
                "transaction complete"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether a marker write's error means the partition needs no marker (it is gone).
fn marker_done(code: i16) -> bool {
    code == ec::NONE || code == ec::UNKNOWN_TOPIC_OR_PARTITION
}

/// Markers on partitions this broker leads; returns each partition's error code.
async fn write_local_markers(
    ts: &Rc<Transactions>,
    job: &MarkerJob,
    parts: Vec<(String, i32)>,
) -> Vec<((String, i32), i16)> {
    let results = futures_util::future::join_all(parts.into_iter().map(|(topic, p)| {
        let job = job.clone();
        let ts = ts.clone();
        async move {
            let code = write_marker(&ts, topic.clone(), p, &job).await;
            (topic, p, code)
        }
    }))
    .await;
    results
        .into_iter()
        .map(|(topic, p, code)| {
            if !marker_done(code) {
                debug!(topic, partition = p, code, "transaction marker to retry");
            }
            ((topic, p), code)
        })
        .collect()
}

/// One marker on a partition this broker leads (on its owner shard), and, on
/// `__consumer_offsets`, the group coordinator told.
pub async fn write_marker(ts: &Rc<Transactions>, topic: String, p: i32, job: &MarkerJob) -> i16 {
    write_marker_here(
        &ts.replicas,
        &ts.groups,
        topic,
        p,
        job.producer_id,
        job.producer_epoch,
        job.coordinator_epoch,
        job.commit,
        ts.settings.write_timeout_ms,
    )
    .await
}

/// Writes one marker on a partition this broker leads, routed to its owner shard (the
/// WriteTxnMarkers handler calls this too). A marker on a `__consumer_offsets` partition
/// then materialises (commit) or drops (abort) the transaction's offsets in its group
/// coordinator.
#[allow(clippy::too_many_arguments)]
pub async fn write_marker_here(
    replicas: &Rc<Replicas>,
    groups: &Rc<Groups>,
    topic: String,
    p: i32,
    producer_id: i64,
    producer_epoch: i16,
    coordinator_epoch: i32,
    commit: bool,
    timeout_ms: i32,
) -> i16 {
    let known = replicas
        .shard
        .image()
        .topic(&topic)
        .is_some_and(|t| (0..t.partitions).contains(&p));
    if !known {
        return ec::UNKNOWN_TOPIC_OR_PARTITION;
    }
    let owner = replicas.shard.ctx.owner(&topic, p);
    let is_offsets = topic == OFFSETS_TOPIC;
    let code = replicas
        .call(owner, move |rs| {
            rs.write_txn_marker_local(
                topic,
                p,
                producer_id,
                producer_epoch,
                coordinator_epoch,
                commit,
                timeout_ms,
            )
        })
        .await
        .unwrap_or(ec::COORDINATOR_NOT_AVAILABLE);
    if code == ec::NONE
        && is_offsets
        && super::groups::on_txn_marker(groups, p, producer_id, commit)
            .await
            .is_err()
    {
        return ec::COORDINATOR_NOT_AVAILABLE;
    }
    code
}

/// Markers on partitions `leader` leads, with one WriteTxnMarkers request; returns each
/// partition's error code (NETWORK_EXCEPTION for all when the request failed).
async fn write_remote_markers(
    ts: &Rc<Transactions>,
    leader: i32,
    job: &MarkerJob,
    parts: Vec<(String, i32)>,
) -> Vec<((String, i32), i16)> {
    let mut topics: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for (t, p) in &parts {
        topics.entry(t.clone()).or_default().push(*p);
    }
    let req = m::WriteTxnMarkersRequest::default().with_markers(vec![
        m::write_txn_markers_request::WritableTxnMarker::default()
            .with_producer_id(m::ProducerId(job.producer_id))
            .with_producer_epoch(job.producer_epoch)
            .with_transaction_result(job.commit)
            .with_coordinator_epoch(job.coordinator_epoch)
            .with_topics(
                topics
                    .into_iter()
                    .map(|(t, ps)| {
                        m::write_txn_markers_request::WritableTxnMarkerTopic::default()
                            .with_name(m::TopicName(StrBytes::from_string(t)))
                            .with_partition_indexes(ps)
                    })
                    .collect(),
            ),
    ]);
    let timeout =
        Duration::from_millis(u64::try_from(ts.settings.write_timeout_ms).unwrap_or(5000) + 2000);
    let call = remote_call::<_, m::WriteTxnMarkersResponse>(
        ts,
        leader,
        ApiKey::WriteTxnMarkers,
        1,
        &req,
        timeout,
    );
    match call.await {
        Ok(resp) => resp
            .markers
            .into_iter()
            .flat_map(|mk| mk.topics)
            .flat_map(|t| {
                let name = t.name.0.to_string();
                t.partitions.into_iter().map(move |p| {
                    if !marker_done(p.error_code) {
                        debug!(
                            topic = name,
                            partition = p.partition_index,
                            code = p.error_code,
                            "remote transaction marker to retry"
                        );
                    }
                    ((name.clone(), p.partition_index), p.error_code)
                })
            })
            .collect(),
        Err(e) => {
            debug!(leader, "WriteTxnMarkers failed: {e}");
            parts
                .into_iter()
                .map(|tp| (tp, ec::NETWORK_EXCEPTION))
                .collect()
        }
    }
}

/// Aborts transactions open longer than their timeout, and removes ids idle longer than
/// `transactional.id.expiration.ms`.
async fn timer_loop(ts: Rc<Transactions>) {
    let mut phase = ts.shard.phase.subscribe();
    let millis = |ms: i64| Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX / 2));
    let interval = millis(ts.settings.abort_check_interval_ms);
    // (Bounded, so that now + interval cannot overflow.)
    let removal_interval =
        millis(ts.settings.remove_check_interval_ms).min(Duration::from_secs(365 * 86_400));
    let mut next_removal = tokio::time::Instant::now() + removal_interval;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {
                let expired = ts.coordinator.borrow_mut().expired(now_ms());
                for t in expired {
                    info!(transactional_id = t.transactional_id, "transaction timed out");
                    ts.coordinator.borrow_mut().finish(&t, false);
                    abort_in_background(&ts, t);
                }
            }
            _ = tokio::time::sleep_until(next_removal) => {
                next_removal = tokio::time::Instant::now() + removal_interval;
                let dead = ts.coordinator.borrow_mut().expired_ids(now_ms());
                if !dead.is_empty() {
                    let ts = ts.clone();
                    crate::io::runtime::spawn(async move {
                        for t in dead {
                            if write(&ts, &t).await {
                                info!(transactional_id = t.transactional_id, "transactional id expired");
                            }
                        }
                    });
                }
            }
            _ = ts.timer.notified() => {}
            changed = phase.changed() => {
                if changed.is_err() || *phase.borrow() != Phase::Running {
                    return;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Requests, on the shard that coordinates the id.

/// The answer to InitProducerId with a transactional id: (error, producer id, epoch).
pub async fn init_producer_id_local(
    ts: Rc<Transactions>,
    transactional_id: String,
    timeout_ms: i32,
    expected: Option<(i64, i16)>,
) -> (i16, i64, i16) {
    let plan = ts.coordinator.borrow_mut().init_producer_id(
        &transactional_id,
        timeout_ms,
        expected,
        now_ms(),
    );
    let t = match plan {
        InitPlan::Fail(code) => return (code, -1, -1),
        InitPlan::Write(t) => t,
        InitPlan::FenceAndAbort(t) => {
            // The coordinator marked the id pending; the background abort takes it over.
            ts.coordinator.borrow_mut().finish(&t, false);
            abort_in_background(&ts, t);
            return (codes::CONCURRENT_TRANSACTIONS, -1, -1);
        }
        InitPlan::NeedProducerId => {
            let r = match ts
                .producer_ids
                .init_producer_id(InitProducerId {
                    transactional_id: None,
                    producer_id: -1,
                    producer_epoch: -1,
                })
                .await
            {
                Ok(r) if r.error == ec::NONE => r,
                Ok(r) => return (r.error, -1, -1),
                Err(ShardGone(..)) => return (codes::COORDINATOR_NOT_AVAILABLE, -1, -1),
            };
            match ts.coordinator.borrow_mut().init_with_producer_id(
                &transactional_id,
                r.producer_id,
                timeout_ms,
                now_ms(),
            ) {
                Ok(t) => t,
                Err(code) => return (code, -1, -1),
            }
        }
    };
    if write(&ts, &t).await {
        info!(
            transactional_id,
            producer_id = t.target.producer_id,
            producer_epoch = t.target.producer_epoch,
            "transactional producer initialised"
        );
        (ec::NONE, t.target.producer_id, t.target.producer_epoch)
    } else {
        (codes::COORDINATOR_NOT_AVAILABLE, -1, -1)
    }
}

/// AddPartitionsToTxn / AddOffsetsToTxn: NONE once the partitions are in the transaction.
pub async fn add_partitions_local(
    ts: Rc<Transactions>,
    transactional_id: String,
    producer_id: i64,
    producer_epoch: i16,
    partitions: Vec<(String, i32)>,
) -> i16 {
    let t = ts.coordinator.borrow_mut().add_partitions(
        &transactional_id,
        producer_id,
        producer_epoch,
        &partitions,
        now_ms(),
    );
    match t {
        Err(code) => code,
        Ok(None) => ec::NONE,
        Ok(Some(t)) => {
            if write(&ts, &t).await {
                ec::NONE
            } else {
                codes::COORDINATOR_NOT_AVAILABLE
            }
        }
    }
}

/// The KIP-890 check of a partition leader: for each partition, NONE when it is in the
/// producer's ongoing transaction.
pub async fn verify_local(
    ts: Rc<Transactions>,
    transactional_id: String,
    producer_id: i64,
    producer_epoch: i16,
    partitions: Vec<(String, i32)>,
) -> Vec<((String, i32), i16)> {
    ts.coordinator.borrow().verify_partitions(
        &transactional_id,
        producer_id,
        producer_epoch,
        &partitions,
    )
}

/// EndTxn: NONE once the PrepareCommit/PrepareAbort record is committed (the markers follow
/// in the background).
pub async fn end_txn_local(
    ts: Rc<Transactions>,
    transactional_id: String,
    producer_id: i64,
    producer_epoch: i16,
    commit: bool,
) -> i16 {
    let plan = ts.coordinator.borrow_mut().end_txn(
        &transactional_id,
        producer_id,
        producer_epoch,
        commit,
        now_ms(),
    );
    let t = match plan {
        EndPlan::Answer(code) => return code,
        EndPlan::Write(t) => t,
    };
    if !write(&ts, &t).await {
        return codes::COORDINATOR_NOT_AVAILABLE;
    }
    let job = ts.coordinator.borrow().markers_for(&t);
    if let Some(job) = job {
        crate::io::runtime::spawn(run_markers(ts.clone(), job));
    }
    ec::NONE
}

/// One id's state for DescribeTransactions.
pub async fn describe_local(
    ts: Rc<Transactions>,
    transactional_id: String,
) -> Result<TxnMeta, i16> {
    ts.coordinator.borrow().describe(&transactional_id).cloned()
}

/// The ids this shard coordinates, filtered (ListTransactions): by state, producer id, and
/// open for at least `min_duration_ms` (when not negative).
pub async fn list_local(
    ts: Rc<Transactions>,
    states: Vec<TxnStatus>,
    producer_ids: Vec<i64>,
    min_duration_ms: i64,
) -> Vec<(String, i64, TxnStatus)> {
    let now = now_ms();
    ts.coordinator
        .borrow()
        .list(&states, &producer_ids)
        .into_iter()
        .filter(|m| {
            min_duration_ms < 0
                || (m.value.start_ms >= 0 && now - m.value.start_ms >= min_duration_ms)
        })
        .map(|m| {
            (
                m.transactional_id.clone(),
                m.value.producer_id,
                m.value.status,
            )
        })
        .collect()
}

/// Runs `f` on the shard that coordinates `transactional_id`.
pub async fn on_coordinator<F, Fut, R>(
    ts: &Rc<Transactions>,
    transactional_id: &str,
    f: F,
) -> Result<R, ShardGone>
where
    F: FnOnce(Rc<Transactions>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = R> + 'static,
    R: Send + 'static,
{
    let owner = ts.owner_of(transactional_id);
    ts.call(owner, f).await
}
