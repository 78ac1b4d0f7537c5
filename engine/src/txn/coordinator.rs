//! The transaction coordinator's decisions (Kafka's `TransactionCoordinator` and
//! `TransactionMetadata`), sans-IO: which state a request moves a transactional id to, which
//! record that takes in `__transaction_state`, and which markers follow.
//!
//! Every change of a transactional id's state is a [`Transition`]: the shell appends its
//! record to the id's `__transaction_state` partition (acks=all) and reports the outcome with
//! [`TxnCoordinator::finish`]; only then does the state change. While a transition is in
//! flight the id answers CONCURRENT_TRANSACTIONS, so transitions of one id never overlap.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::records::{TxnLogValue, TxnStatus};
use crate::group::records::java_string_hash;

/// Kafka error codes the coordinator answers with.
pub mod codes {
    /// No error.
    pub const NONE: i16 = 0;
    /// UNKNOWN_TOPIC_OR_PARTITION.
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    /// COORDINATOR_LOAD_IN_PROGRESS.
    pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    /// COORDINATOR_NOT_AVAILABLE.
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    /// NOT_COORDINATOR.
    pub const NOT_COORDINATOR: i16 = 16;
    /// INVALID_REQUEST.
    pub const INVALID_REQUEST: i16 = 42;
    /// INVALID_PRODUCER_EPOCH.
    pub const INVALID_PRODUCER_EPOCH: i16 = 47;
    /// INVALID_TXN_STATE.
    pub const INVALID_TXN_STATE: i16 = 48;
    /// INVALID_PRODUCER_ID_MAPPING.
    pub const INVALID_PRODUCER_ID_MAPPING: i16 = 49;
    /// INVALID_TRANSACTION_TIMEOUT.
    pub const INVALID_TRANSACTION_TIMEOUT: i16 = 50;
    /// CONCURRENT_TRANSACTIONS.
    pub const CONCURRENT_TRANSACTIONS: i16 = 51;
    /// OPERATION_NOT_ATTEMPTED.
    pub const OPERATION_NOT_ATTEMPTED: i16 = 55;
    /// PRODUCER_FENCED.
    pub const PRODUCER_FENCED: i16 = 90;
    /// TRANSACTIONAL_ID_NOT_FOUND.
    pub const TRANSACTIONAL_ID_NOT_FOUND: i16 = 105;
}

/// The topic the coordinator keeps its state in.
pub const TXN_TOPIC: &str = "__transaction_state";

/// The `__transaction_state` partition of a transactional id (Kafka's `partitionFor`).
pub fn txn_partition_for(transactional_id: &str, partitions: i32) -> i32 {
    let hash = java_string_hash(transactional_id);
    let abs = if hash == i32::MIN { 0 } else { hash.abs() };
    abs % partitions.max(1)
}

/// The coordinator's settings (Kafka's broker keys).
#[derive(Debug, Clone)]
pub struct TxnConfig {
    /// `transaction.max.timeout.ms`: the longest `transaction.timeout.ms` a producer may ask.
    pub max_timeout_ms: i32,
    /// `transaction.state.log.num.partitions` (the topic's count once it exists).
    pub partitions: i32,
    /// `transactional.id.expiration.ms`: an id with no transaction open and no update for
    /// this long is removed (a tombstone in its partition).
    pub id_expiration_ms: i64,
}

impl Default for TxnConfig {
    fn default() -> Self {
        TxnConfig {
            max_timeout_ms: 900_000,
            partitions: 50,
            id_expiration_ms: 604_800_000,
        }
    }
}

/// One transactional id's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnMeta {
    /// The id.
    pub transactional_id: String,
    /// Its `__transaction_state` partition.
    pub partition: i32,
    /// The stored state.
    pub value: TxnLogValue,
    /// A transition is being written.
    pub pending: bool,
}

/// A change of one id's state: the record to append, then [`TxnCoordinator::finish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The id.
    pub transactional_id: String,
    /// Its `__transaction_state` partition.
    pub partition: i32,
    /// The coordinator epoch (leader epoch of the partition) it was decided under.
    pub coordinator_epoch: i32,
    /// The state to store.
    pub target: TxnLogValue,
}

/// The markers that end a transaction: one per partition, written by each partition's leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkerJob {
    /// The id.
    pub transactional_id: String,
    /// Producer id of the transaction.
    pub producer_id: i64,
    /// Producer epoch the markers carry.
    pub producer_epoch: i16,
    /// COMMIT (true) or ABORT.
    pub commit: bool,
    /// The coordinator epoch the markers carry (fences markers of a deposed coordinator).
    pub coordinator_epoch: i32,
    /// The partitions.
    pub partitions: BTreeSet<(String, i32)>,
}

/// What InitProducerId needs next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitPlan {
    /// Answer with this error.
    Fail(i16),
    /// A new producer id is needed (a new transactional id, or its epochs ran out): get one
    /// and call [`TxnCoordinator::init_with_producer_id`].
    NeedProducerId,
    /// Write this transition, then answer with its producer id and epoch.
    Write(Transition),
    /// An ongoing transaction must be aborted first, under a bumped epoch (which fences the
    /// old producer): write this transition (PrepareAbort), answer
    /// CONCURRENT_TRANSACTIONS (the client retries), then write the markers.
    FenceAndAbort(Transition),
}

/// What EndTxn needs next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndPlan {
    /// Answer with this code (NONE for a retry of a completed end).
    Answer(i16),
    /// Write this PrepareCommit/PrepareAbort transition, answer, then write the markers.
    Write(Transition),
}

/// The largest epoch a producer is given before it gets a new producer id.
const MAX_EPOCH: i16 = i16::MAX - 1;

/// The transactional ids of the `__transaction_state` partitions one shard coordinates.
#[derive(Debug, Default)]
pub struct TxnCoordinator {
    config: TxnConfig,
    txns: HashMap<String, TxnMeta>,
    /// Partitions served, with their coordinator epoch.
    owned: HashMap<i32, i32>,
    /// Partitions being loaded (leader, not serving yet).
    loading: HashSet<i32>,
}

impl TxnCoordinator {
    /// A coordinator serving no partition yet.
    pub fn new(config: TxnConfig) -> TxnCoordinator {
        TxnCoordinator {
            config,
            ..Default::default()
        }
    }

    /// The settings.
    pub fn config(&self) -> &TxnConfig {
        &self.config
    }

    /// The partition of `transactional_id`.
    pub fn partition_for(&self, transactional_id: &str) -> i32 {
        txn_partition_for(transactional_id, self.config.partitions)
    }

    // ---------------------------------------------------------------- partitions

    /// This shard became leader of partition `p`: its ids are loaded before it serves.
    pub fn begin_loading(&mut self, p: i32) {
        self.unload(p);
        self.loading.insert(p);
    }

    /// One record of partition `p` while loading: the latest value of an id wins; a
    /// tombstone (`None`) removes it.
    pub fn load(&mut self, p: i32, transactional_id: String, value: Option<TxnLogValue>) {
        match value {
            Some(value) => {
                self.txns.insert(
                    transactional_id.clone(),
                    TxnMeta {
                        transactional_id,
                        partition: p,
                        value,
                        pending: false,
                    },
                );
            }
            None => {
                self.txns.remove(&transactional_id);
            }
        }
    }

    /// Partition `p` is loaded and served under `coordinator_epoch`. Returns the markers of
    /// transactions that were being ended when the previous coordinator stopped (Kafka
    /// resends them), and the ids whose fencing abort must be written again.
    pub fn finish_loading(
        &mut self,
        p: i32,
        coordinator_epoch: i32,
        now_ms: i64,
    ) -> (Vec<MarkerJob>, Vec<Transition>) {
        self.loading.remove(&p);
        self.owned.insert(p, coordinator_epoch);
        let mut jobs = Vec::new();
        let mut fences = Vec::new();
        for meta in self.txns.values().filter(|m| m.partition == p) {
            match meta.value.status {
                TxnStatus::PrepareCommit | TxnStatus::PrepareAbort => {
                    jobs.push(marker_job(meta, coordinator_epoch))
                }
                TxnStatus::PrepareEpochFence => {
                    fences.push(abort_transition(meta, coordinator_epoch, now_ms, true))
                }
                _ => {}
            }
        }
        (jobs, fences)
    }

    /// This shard no longer leads partition `p`: its ids are forgotten.
    pub fn unload(&mut self, p: i32) {
        self.loading.remove(&p);
        self.owned.remove(&p);
        self.txns.retain(|_, m| m.partition != p);
    }

    /// The coordinator epoch partition `p` is served under, if it is.
    pub fn coordinator_epoch(&self, p: i32) -> Option<i32> {
        self.owned.get(&p).copied()
    }

    /// NOT_COORDINATOR / COORDINATOR_LOAD_IN_PROGRESS when `transactional_id` is not served
    /// here, else its partition and coordinator epoch.
    pub fn serving(&self, transactional_id: &str) -> Result<(i32, i32), i16> {
        let p = self.partition_for(transactional_id);
        if self.loading.contains(&p) {
            return Err(codes::COORDINATOR_LOAD_IN_PROGRESS);
        }
        self.owned
            .get(&p)
            .map(|e| (p, *e))
            .ok_or(codes::NOT_COORDINATOR)
    }

    // ---------------------------------------------------------------- requests

    /// InitProducerId with a transactional id (Kafka's `handleInitProducerId`).
    /// `expected` is the producer's current id and epoch (KIP-360, v3+), when it sends one.
    pub fn init_producer_id(
        &mut self,
        transactional_id: &str,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
        now_ms: i64,
    ) -> InitPlan {
        if transactional_id.is_empty() {
            return InitPlan::Fail(codes::INVALID_REQUEST);
        }
        if timeout_ms <= 0 || timeout_ms > self.config.max_timeout_ms {
            return InitPlan::Fail(codes::INVALID_TRANSACTION_TIMEOUT);
        }
        let (_, coordinator_epoch) = match self.serving(transactional_id) {
            Ok(x) => x,
            Err(code) => return InitPlan::Fail(code),
        };
        let Some(meta) = self.txns.get_mut(transactional_id) else {
            return InitPlan::NeedProducerId;
        };
        if meta.pending {
            return InitPlan::Fail(codes::CONCURRENT_TRANSACTIONS);
        }
        let v = &meta.value;
        if let Some((pid, epoch)) = expected {
            // KIP-360: a producer that names its id and epoch must be the current one.
            if pid != v.producer_id || epoch != v.producer_epoch {
                return InitPlan::Fail(codes::PRODUCER_FENCED);
            }
        }
        match v.status {
            TxnStatus::PrepareCommit | TxnStatus::PrepareAbort | TxnStatus::PrepareEpochFence => {
                InitPlan::Fail(codes::CONCURRENT_TRANSACTIONS)
            }
            TxnStatus::Ongoing => {
                let t = abort_transition(meta, coordinator_epoch, now_ms, true);
                meta.pending = true;
                InitPlan::FenceAndAbort(t)
            }
            TxnStatus::Empty
            | TxnStatus::CompleteCommit
            | TxnStatus::CompleteAbort
            | TxnStatus::Dead => {
                if v.producer_epoch >= MAX_EPOCH {
                    return InitPlan::NeedProducerId;
                }
                let target = TxnLogValue {
                    producer_id: v.producer_id,
                    producer_epoch: v.producer_epoch + 1,
                    timeout_ms,
                    status: TxnStatus::Empty,
                    partitions: BTreeSet::new(),
                    last_update_ms: now_ms,
                    start_ms: -1,
                };
                meta.pending = true;
                InitPlan::Write(Transition {
                    transactional_id: transactional_id.to_string(),
                    partition: meta.partition,
                    coordinator_epoch,
                    target,
                })
            }
        }
    }

    /// InitProducerId, continued with a fresh producer id (epoch 0).
    pub fn init_with_producer_id(
        &mut self,
        transactional_id: &str,
        producer_id: i64,
        timeout_ms: i32,
        now_ms: i64,
    ) -> Result<Transition, i16> {
        let (partition, coordinator_epoch) = self.serving(transactional_id)?;
        let meta = self
            .txns
            .entry(transactional_id.to_string())
            .or_insert_with(|| TxnMeta {
                transactional_id: transactional_id.to_string(),
                partition,
                // Not stored yet: a failed write leaves nothing behind ([`finish`]).
                value: TxnLogValue {
                    producer_id: -1,
                    producer_epoch: -1,
                    timeout_ms,
                    status: TxnStatus::Dead,
                    partitions: BTreeSet::new(),
                    last_update_ms: now_ms,
                    start_ms: -1,
                },
                pending: false,
            });
        if meta.pending {
            return Err(codes::CONCURRENT_TRANSACTIONS);
        }
        match meta.value.status {
            TxnStatus::Empty
            | TxnStatus::CompleteCommit
            | TxnStatus::CompleteAbort
            | TxnStatus::Dead => {}
            // Another InitProducerId got here first and opened a transaction since.
            _ => return Err(codes::CONCURRENT_TRANSACTIONS),
        }
        meta.pending = true;
        Ok(Transition {
            transactional_id: transactional_id.to_string(),
            partition,
            coordinator_epoch,
            target: TxnLogValue {
                producer_id,
                producer_epoch: 0,
                timeout_ms,
                status: TxnStatus::Empty,
                partitions: BTreeSet::new(),
                last_update_ms: now_ms,
                start_ms: -1,
            },
        })
    }

    /// Checks a client request naming (`producer_id`, `producer_epoch`) against the id.
    fn check_producer(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
    ) -> Result<(i32, &TxnMeta), i16> {
        let (_, coordinator_epoch) = self.serving(transactional_id)?;
        let meta = self
            .txns
            .get(transactional_id)
            .filter(|m| m.value.status != TxnStatus::Dead)
            .ok_or(codes::INVALID_PRODUCER_ID_MAPPING)?;
        if meta.value.producer_id != producer_id {
            return Err(codes::INVALID_PRODUCER_ID_MAPPING);
        }
        if meta.value.producer_epoch != producer_epoch {
            return Err(codes::PRODUCER_FENCED);
        }
        if meta.pending {
            return Err(codes::CONCURRENT_TRANSACTIONS);
        }
        Ok((coordinator_epoch, meta))
    }

    /// AddPartitionsToTxn (and AddOffsetsToTxn, with the group's offsets partition):
    /// `Ok(None)` when every partition is in the transaction already, else the transition
    /// that adds them (and opens the transaction).
    pub fn add_partitions(
        &mut self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partitions: &[(String, i32)],
        now_ms: i64,
    ) -> Result<Option<Transition>, i16> {
        let (coordinator_epoch, meta) =
            self.check_producer(transactional_id, producer_id, producer_epoch)?;
        let v = &meta.value;
        match v.status {
            TxnStatus::PrepareCommit | TxnStatus::PrepareAbort | TxnStatus::PrepareEpochFence => {
                return Err(codes::CONCURRENT_TRANSACTIONS)
            }
            TxnStatus::Ongoing if partitions.iter().all(|p| v.partitions.contains(p)) => {
                return Ok(None)
            }
            _ => {}
        }
        let mut target = v.clone();
        if target.status != TxnStatus::Ongoing {
            target.partitions.clear();
            target.start_ms = now_ms;
        }
        target.status = TxnStatus::Ongoing;
        target.last_update_ms = now_ms;
        target.partitions.extend(partitions.iter().cloned());
        let t = Transition {
            transactional_id: transactional_id.to_string(),
            partition: meta.partition,
            coordinator_epoch,
            target,
        };
        self.set_pending(transactional_id);
        Ok(Some(t))
    }

    /// Whether `partitions` are all in `transactional_id`'s ongoing transaction under
    /// (`producer_id`, `producer_epoch`): the KIP-890 check a partition leader asks for before
    /// it accepts a transaction's first batch.
    pub fn verify_partitions(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partitions: &[(String, i32)],
    ) -> Vec<((String, i32), i16)> {
        let check = match self.serving(transactional_id) {
            Err(code) => Err(code),
            Ok(_) => match self.txns.get(transactional_id) {
                None => Err(codes::INVALID_PRODUCER_ID_MAPPING),
                Some(m) if m.value.producer_id != producer_id => {
                    Err(codes::INVALID_PRODUCER_ID_MAPPING)
                }
                Some(m) if m.value.producer_epoch != producer_epoch => Err(codes::PRODUCER_FENCED),
                Some(m) => Ok(m),
            },
        };
        partitions
            .iter()
            .map(|p| {
                let code = match &check {
                    Err(code) => *code,
                    Ok(m)
                        if m.value.status == TxnStatus::Ongoing
                            && m.value.partitions.contains(p) =>
                    {
                        codes::NONE
                    }
                    Ok(_) => codes::INVALID_TXN_STATE,
                };
                (p.clone(), code)
            })
            .collect()
    }

    /// EndTxn (Kafka's `handleEndTransaction`, before transaction version 2).
    pub fn end_txn(
        &mut self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        now_ms: i64,
    ) -> EndPlan {
        let (coordinator_epoch, meta) =
            match self.check_producer(transactional_id, producer_id, producer_epoch) {
                Ok(x) => x,
                Err(code) => return EndPlan::Answer(code),
            };
        let wrong = codes::INVALID_TXN_STATE;
        match (meta.value.status, commit) {
            (TxnStatus::Ongoing, _) => {
                let mut target = meta.value.clone();
                target.status = if commit {
                    TxnStatus::PrepareCommit
                } else {
                    TxnStatus::PrepareAbort
                };
                target.last_update_ms = now_ms;
                let t = Transition {
                    transactional_id: transactional_id.to_string(),
                    partition: meta.partition,
                    coordinator_epoch,
                    target,
                };
                self.set_pending(transactional_id);
                EndPlan::Write(t)
            }
            (TxnStatus::CompleteCommit, true) | (TxnStatus::CompleteAbort, false) => {
                EndPlan::Answer(codes::NONE)
            }
            (TxnStatus::PrepareCommit, true) | (TxnStatus::PrepareAbort, false) => {
                EndPlan::Answer(codes::CONCURRENT_TRANSACTIONS)
            }
            _ => EndPlan::Answer(wrong),
        }
    }

    fn set_pending(&mut self, transactional_id: &str) {
        if let Some(m) = self.txns.get_mut(transactional_id) {
            m.pending = true;
        }
    }

    // ---------------------------------------------------------------- completions

    /// The record of `t` was written (`ok`) or not. On success the id takes the target state
    /// if its partition is still served under the same coordinator epoch; either way the id
    /// takes transitions again.
    pub fn finish(&mut self, t: &Transition, ok: bool) -> bool {
        let current = self.owned.get(&t.partition) == Some(&t.coordinator_epoch);
        let Some(meta) = self.txns.get_mut(&t.transactional_id) else {
            return false;
        };
        meta.pending = false;
        if ok && current {
            if t.target.status == TxnStatus::Dead {
                self.txns.remove(&t.transactional_id);
            } else {
                meta.value = t.target.clone();
            }
            true
        } else {
            if meta.value.producer_id < 0 {
                // A new id whose first record was not written: nothing is stored.
                self.txns.remove(&t.transactional_id);
            }
            false
        }
    }

    /// The markers that end the transaction `t` prepared (PrepareCommit / PrepareAbort).
    pub fn markers_for(&self, t: &Transition) -> Option<MarkerJob> {
        let meta = self.txns.get(&t.transactional_id)?;
        matches!(
            meta.value.status,
            TxnStatus::PrepareCommit | TxnStatus::PrepareAbort
        )
        .then(|| marker_job(meta, t.coordinator_epoch))
    }

    /// Every marker of `job` is written: the transition to CompleteCommit / CompleteAbort
    /// (None when the id moved on or is no longer served under the job's epoch).
    pub fn complete(&mut self, job: &MarkerJob, now_ms: i64) -> Option<Transition> {
        let p = self.partition_for(&job.transactional_id);
        if self.owned.get(&p) != Some(&job.coordinator_epoch) {
            return None;
        }
        let meta = self.txns.get_mut(&job.transactional_id)?;
        let expected = if job.commit {
            TxnStatus::PrepareCommit
        } else {
            TxnStatus::PrepareAbort
        };
        if meta.pending
            || meta.value.status != expected
            || meta.value.producer_id != job.producer_id
            || meta.value.producer_epoch != job.producer_epoch
        {
            return None;
        }
        let mut target = meta.value.clone();
        target.status = if job.commit {
            TxnStatus::CompleteCommit
        } else {
            TxnStatus::CompleteAbort
        };
        target.partitions.clear();
        target.last_update_ms = now_ms;
        meta.pending = true;
        Some(Transition {
            transactional_id: job.transactional_id.clone(),
            partition: p,
            coordinator_epoch: job.coordinator_epoch,
            target,
        })
    }

    /// Whether the marker job is still the coordinator's business (its id is still being
    /// ended under the job's producer epoch and coordinator epoch).
    pub fn job_current(&self, job: &MarkerJob) -> bool {
        let p = self.partition_for(&job.transactional_id);
        self.owned.get(&p) == Some(&job.coordinator_epoch)
            && self.txns.get(&job.transactional_id).is_some_and(|m| {
                m.value.producer_epoch == job.producer_epoch
                    && m.value.status
                        == if job.commit {
                            TxnStatus::PrepareCommit
                        } else {
                            TxnStatus::PrepareAbort
                        }
            })
    }

    /// Transactions open longer than their timeout, to be aborted under a bumped epoch (the
    /// producer is fenced, as Kafka's `abortTimedOutTransactions` does).
    pub fn expired(&mut self, now_ms: i64) -> Vec<Transition> {
        let mut out = Vec::new();
        for meta in self.txns.values_mut() {
            let Some(&epoch) = self.owned.get(&meta.partition) else {
                continue;
            };
            let v = &meta.value;
            if meta.pending
                || v.status != TxnStatus::Ongoing
                || v.start_ms.saturating_add(i64::from(v.timeout_ms)) > now_ms
            {
                continue;
            }
            out.push(abort_transition(meta, epoch, now_ms, true));
            meta.pending = true;
        }
        out
    }

    /// Ids idle longer than `transactional.id.expiration.ms` with no transaction open or being
    /// ended (Empty, CompleteCommit, CompleteAbort), as Kafka's
    /// `removeExpiredTransactionalIds`: each a transition to Dead, written as a tombstone.
    pub fn expired_ids(&mut self, now_ms: i64) -> Vec<Transition> {
        let expiration = self.config.id_expiration_ms;
        let mut out = Vec::new();
        for meta in self.txns.values_mut() {
            let Some(&epoch) = self.owned.get(&meta.partition) else {
                continue;
            };
            let v = &meta.value;
            let idle = matches!(
                v.status,
                TxnStatus::Empty | TxnStatus::CompleteCommit | TxnStatus::CompleteAbort
            );
            if meta.pending
                || !idle
                || v.producer_id < 0
                || v.last_update_ms.saturating_add(expiration) > now_ms
            {
                continue;
            }
            let mut target = v.clone();
            target.status = TxnStatus::Dead;
            target.partitions.clear();
            target.last_update_ms = now_ms;
            out.push(Transition {
                transactional_id: meta.transactional_id.clone(),
                partition: meta.partition,
                coordinator_epoch: epoch,
                target,
            });
            meta.pending = true;
        }
        out.sort_by(|a, b| a.transactional_id.cmp(&b.transactional_id));
        out
    }

    /// When the next open transaction times out, if one is open.
    pub fn next_expiry(&self) -> Option<i64> {
        self.txns
            .values()
            .filter(|m| {
                m.value.status == TxnStatus::Ongoing && self.owned.contains_key(&m.partition)
            })
            .map(|m| {
                m.value
                    .start_ms
                    .saturating_add(i64::from(m.value.timeout_ms))
            })
            .min()
    }

    // ---------------------------------------------------------------- describe

    /// One id's state (DescribeTransactions).
    pub fn describe(&self, transactional_id: &str) -> Result<&TxnMeta, i16> {
        self.serving(transactional_id)?;
        self.txns
            .get(transactional_id)
            .filter(|m| m.value.producer_id >= 0)
            .ok_or(codes::TRANSACTIONAL_ID_NOT_FOUND)
    }

    /// The ids served here (ListTransactions), filtered by state names and producer ids
    /// (an empty filter passes everything).
    pub fn list(&self, states: &[TxnStatus], producer_ids: &[i64]) -> Vec<&TxnMeta> {
        let mut out: Vec<&TxnMeta> = self
            .txns
            .values()
            .filter(|m| self.owned.contains_key(&m.partition) && m.value.producer_id >= 0)
            .filter(|m| states.is_empty() || states.contains(&m.value.status))
            .filter(|m| producer_ids.is_empty() || producer_ids.contains(&m.value.producer_id))
            .collect();
        out.sort_by(|a, b| a.transactional_id.cmp(&b.transactional_id));
        out
    }
}

/// The markers of a transaction in PrepareCommit / PrepareAbort.
fn marker_job(meta: &TxnMeta, coordinator_epoch: i32) -> MarkerJob {
    MarkerJob {
        transactional_id: meta.transactional_id.clone(),
        producer_id: meta.value.producer_id,
        producer_epoch: meta.value.producer_epoch,
        commit: meta.value.status == TxnStatus::PrepareCommit,
        coordinator_epoch,
        partitions: meta.value.partitions.clone(),
    }
}

/// PrepareAbort of an open transaction, with the epoch bumped when `fence` (the old producer
/// can then neither write nor end it).
fn abort_transition(
    meta: &TxnMeta,
    coordinator_epoch: i32,
    now_ms: i64,
    fence: bool,
) -> Transition {
    let mut target = meta.value.clone();
    if fence && target.producer_epoch < MAX_EPOCH {
        target.producer_epoch += 1;
    }
    target.status = TxnStatus::PrepareAbort;
    target.last_update_ms = now_ms;
    Transition {
        transactional_id: meta.transactional_id.clone(),
        partition: meta.partition,
        coordinator_epoch,
        target,
    }
}
