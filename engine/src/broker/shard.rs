//! The shard core: one pinned thread per core, each owning a disjoint set of partitions, and
//! the mailboxes that carry work between shards.
//!
//! A request touching a partition owned by another shard is forwarded as a job over the
//! owner's crossbeam queue for the per-shard value it needs (the core, or a service built on
//! it: [`Peers`]); the owner is woken through an eventfd its runtime awaits, runs the job on
//! its own thread (so a `PartitionLog` is only ever touched by its owner, without locks), and
//! answers through a oneshot channel that wakes the requester's runtime. This module names no
//! service: replication, groups and producer ids are built on it (`broker::services`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::eventfd::{EfdFlags, EventFd};
use tokio::io::unix::AsyncFd;
use tokio::sync::{oneshot, watch, Notify};
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::config::BrokerConfig;
use super::metadata::{owner_shard, MetadataStore};
use super::protocol::error_code;
use crate::storage::PartitionLog;

/// A unit of work for the `T` of another shard: builds a (non-`Send`) future on the owner
/// thread from that shard's `T`.
pub type Job<T> = Box<dyn FnOnce(Rc<T>) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// The target shard has stopped and can no longer answer.
#[derive(Debug, thiserror::Error)]
#[error("shard {0} is gone")]
pub struct ShardGone(pub usize);

/// The sending side of one shard's queue of `T` jobs.
struct Mailbox<T> {
    tx: crossbeam_channel::Sender<Job<T>>,
    wake: Arc<EventFd>,
}

/// The receiving side of a shard's queue of `T` jobs, moved onto the shard thread.
pub struct MailboxReceiver<T> {
    rx: crossbeam_channel::Receiver<Job<T>>,
    wake: Arc<EventFd>,
}

/// The queues that reach the per-shard instances of `T` (the shard core, or a service built
/// on it) on every shard: `Peers<T>` is how a `T` on one shard runs code on the `T` of
/// another (Seastar's `sharded<T>`). Each service has its own, so a service reaches its
/// peers without naming the services above it. `Send + Sync`: shared by every shard, the
/// controller thread and the admin listener.
pub struct Peers<T> {
    mailboxes: Vec<Mailbox<T>>,
}

impl<T> std::fmt::Debug for Peers<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("shards", &self.mailboxes.len())
            .finish()
    }
}

/// New queues of a per-shard type: the shared sending side, and one receiver per shard.
pub type PeersAndReceivers<T> = (Arc<Peers<T>>, Vec<MailboxReceiver<T>>);

impl<T: 'static> Peers<T> {
    /// Queues for `shards` shards; `receivers[i]` belongs to shard `i`'s `T`.
    pub fn new(shards: usize) -> std::io::Result<PeersAndReceivers<T>> {
        let mut mailboxes = Vec::with_capacity(shards);
        let mut receivers = Vec::with_capacity(shards);
        for _ in 0..shards {
            let wake = Arc::new(EventFd::from_flags(
                EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC,
            )?);
            let (tx, rx) = crossbeam_channel::unbounded();
            mailboxes.push(Mailbox {
                tx,
                wake: wake.clone(),
            });
            receivers.push(MailboxReceiver { rx, wake });
        }
        Ok((Arc::new(Peers { mailboxes }), receivers))
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.mailboxes.len()
    }

    /// Jobs queued for `shard` and not yet started (its load, for /metrics).
    pub fn queued(&self, shard: usize) -> usize {
        self.mailboxes.get(shard).map_or(0, |m| m.tx.len())
    }

    /// Queues `job` on `shard` and wakes it.
    pub fn post(&self, shard: usize, job: Job<T>) -> Result<(), ShardGone> {
        let mb = self.mailboxes.get(shard).ok_or(ShardGone(shard))?;
        mb.tx.send(job).map_err(|_| ShardGone(shard))?;
        // EAGAIN only when the counter would overflow, in which case the shard is awake anyway.
        let _ = mb.wake.write(1);
        Ok(())
    }
}

/// A per-shard value that other shards reach through its [`Peers`]: the shard core and each
/// service above it.
pub trait ShardLocal: Sized + 'static {
    /// The shard this instance lives on.
    fn shard_id(&self) -> usize;
    /// The queues to this type's instances on every shard.
    fn peers(&self) -> &Peers<Self>;

    /// Runs `f` on shard `target`'s instance and returns its result: directly when `target`
    /// is this shard, otherwise through the target's mailbox.
    fn call<R, F, Fut>(
        self: &Rc<Self>,
        target: usize,
        f: F,
    ) -> impl Future<Output = Result<R, ShardGone>>
    where
        R: Send + 'static,
        F: FnOnce(Rc<Self>) -> Fut + Send + 'static,
        Fut: Future<Output = R> + 'static,
    {
        let me = self.clone();
        async move {
            if target == me.shard_id() {
                return Ok(f(me).await);
            }
            let (tx, rx) = oneshot::channel();
            let job: Job<Self> = Box::new(move |local| {
                Box::pin(async move {
                    let _ = tx.send(f(local).await);
                })
            });
            me.peers().post(target, job)?;
            rx.await.map_err(|_| ShardGone(target))
        }
    }
}

/// Receives jobs for `local` (this shard's instance of `T`) until the runtime stops.
pub async fn run_mailbox<T: ShardLocal>(local: Rc<T>, mailbox: MailboxReceiver<T>) {
    let shard = local.shard_id();
    // SAFETY: the Arc keeps the EventFd (and so its fd) open and unchanged for as long as
    // the AsyncFd, which owns one of the Arc's references, exists.
    let registered = unsafe {
        AsyncFd::register_with_interest(mailbox.wake.clone(), tokio::io::Interest::READABLE)
    };
    let fd = match registered.map_err(|e| e.into_parts().1) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(shard, "cannot register the mailbox eventfd: {e}");
            return;
        }
    };
    loop {
        // Reset the counter before draining: a job queued after the drain re-arms it.
        match fd.readable().await {
            Ok(mut guard) => {
                let _ = guard.try_io(|inner| inner.get_ref().read().map_err(std::io::Error::from));
            }
            Err(e) => {
                tracing::error!(shard, "mailbox eventfd failed: {e}");
                return;
            }
        }
        while let Ok(job) = mailbox.rx.try_recv() {
            crate::io::runtime::spawn(job(local.clone()));
        }
    }
}

/// State shared by all shards (`Send + Sync`): configuration, the topic registry, metrics.
pub struct BrokerContext {
    /// The resolved configuration.
    pub config: Arc<BrokerConfig>,
    /// The topic registry.
    pub metadata: MetadataStore,
    shards: usize,
    /// Per-shard counters and readiness, read by the admin listener.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The client quota sensors of this broker, shared by its shards.
    pub quota_sensors: crate::security::quota::QuotaSensors,
}

impl BrokerContext {
    /// Builds the context of a broker with `shards` shards.
    pub fn new(config: Arc<BrokerConfig>, metadata: MetadataStore, shards: usize) -> Self {
        let metrics = Arc::new(crate::metrics::Metrics::new(shards));
        let (windows, window_secs) = config.quota_windows;
        let quota_sensors =
            crate::security::quota::QuotaSensors::new(windows, window_secs.saturating_mul(1000));
        BrokerContext {
            config,
            metadata,
            shards,
            metrics,
            quota_sensors,
        }
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards
    }

    /// The shard owning `(topic, partition)`.
    pub fn owner(&self, topic: &str, partition: i32) -> usize {
        owner_shard(topic, partition, self.shard_count())
    }
}

/// Lifecycle phase of a shard, driven by the main thread on shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Accepting and serving.
    Running,
    /// Stop accepting and reading new requests; finish in-flight ones.
    Draining,
    /// Close every log and exit.
    Closing,
}

/// A partition open on its owner shard.
pub struct Partition {
    /// The log.
    pub log: PartitionLog,
    /// Woken on every append (long-polling fetches wait on it).
    pub appended: Notify,
    /// The topic id this log belongs to (a recreated topic gets a new one).
    pub topic_id: Uuid,
    /// When this log was opened: a log that went offline after a failed write is reopened
    /// at most once per `REOPEN_BACKOFF`.
    pub opened_at: std::time::Instant,
}

/// How long an offline log stays closed before a request may reopen it (a full disk would
/// otherwise cost a recovery scan per produce).
const REOPEN_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);

enum Slot {
    Opening(Rc<Notify>),
    Open(Rc<Partition>),
}

/// The core of one shard (one thread, one core): the partitions it owns, its copy of the
/// metadata image, its phase and connection count. Replication, groups and producer ids are
/// services built on it (`broker::services`); the core names none of them.
pub struct Shard {
    /// Shard index.
    pub id: usize,
    /// Shared broker state.
    pub ctx: Arc<BrokerContext>,
    partitions: RefCell<HashMap<String, HashMap<i32, Slot>>>,
    /// Current phase (the sender is driven by jobs from the main thread).
    pub phase: watch::Sender<Phase>,
    /// Open connections on this shard.
    pub connections: Cell<usize>,
    /// Signalled when a connection closes.
    pub connection_closed: Notify,
    /// This shard's copy of the metadata image ([`Shard::image`]).
    image_cache: super::metadata::ImageCache,
    peers: Arc<Peers<Shard>>,
}

impl ShardLocal for Shard {
    fn shard_id(&self) -> usize {
        self.id
    }

    fn peers(&self) -> &Peers<Shard> {
        &self.peers
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Shard {
    /// The current metadata image, from this shard's copy: one atomic version check and no
    /// lock shared with other shards on the produce and fetch path (see
    /// [`super::metadata::ImageCache`]).
    pub fn image(&self) -> Arc<super::metadata::MetadataImage> {
        self.image_cache.get(&self.ctx.metadata)
    }

    /// Creates the core of shard `id`; `peers` reaches the cores of every shard.
    pub fn new(id: usize, ctx: Arc<BrokerContext>, peers: Arc<Peers<Shard>>) -> Shard {
        let (phase, _) = watch::channel(Phase::Running);
        Shard {
            id,
            ctx,
            partitions: RefCell::new(HashMap::new()),
            phase,
            connections: Cell::new(0),
            connection_closed: Notify::new(),
            image_cache: Default::default(),
            peers,
        }
    }

    fn lookup(&self, topic: &str, partition: i32) -> Option<Result<Rc<Partition>, Rc<Notify>>> {
        let mut map = self.partitions.borrow_mut();
        let slots = map.get_mut(topic)?;
        let found = match slots.get(&partition)? {
            Slot::Open(p) => Ok(p.clone()),
            Slot::Opening(n) => Err(n.clone()),
        };
        if let Ok(p) = &found {
            // A log that went offline after a failed write (a full disk) is dropped and opened
            // again: recovery cuts what was half written and appends resume once space
            // returns. After a failed fsync `may_reopen` is false: offline until restart.
            if p.log.may_reopen() && p.opened_at.elapsed() >= REOPEN_BACKOFF {
                warn!(
                    shard = self.id,
                    topic, partition, "log offline after a failed write; reopening it"
                );
                slots.remove(&partition);
                return None;
            }
        }
        Some(found)
    }

    /// The open partition `(topic, partition)`, opening (and recovering) it on first use.
    /// Fails with a Kafka error code when the topic or partition does not exist.
    pub async fn partition(&self, topic: &str, partition: i32) -> Result<Rc<Partition>, i16> {
        debug_assert_eq!(
            self.ctx.owner(topic, partition),
            self.id,
            "partition served by a shard that does not own it"
        );
        loop {
            match self.lookup(topic, partition) {
                Some(Ok(p)) => return Ok(p),
                // Created before the opener can finish (no await in between), so not missed.
                Some(Err(opening)) => opening.notified().await,
                None => break,
            }
        }
        let image = self.image();
        let meta = image
            .topic(topic)
            .filter(|t| (0..t.partitions).contains(&partition))
            .ok_or(error_code::UNKNOWN_TOPIC_OR_PARTITION)?
            .clone();
        // Only partitions this broker hosts a replica of have a log here.
        let node = self.ctx.config.node_id;
        if image
            .cluster
            .partition(topic, partition)
            .is_none_or(|p| !p.replicas.contains(&node))
        {
            return Err(6); // NOT_LEADER_OR_FOLLOWER
        }
        let config = self.ctx.config.log_config(&meta.configs).map_err(|e| {
            warn!(topic, partition, "invalid stored topic config: {e}");
            error_code::KAFKA_STORAGE_ERROR
        })?;
        let opening = Rc::new(Notify::new());
        self.partitions
            .borrow_mut()
            .entry(topic.to_string())
            .or_default()
            .insert(partition, Slot::Opening(opening.clone()));
        let dir = self
            .ctx
            .config
            .data_dir
            .join(format!("{topic}-{partition}"));
        let result = PartitionLog::open(dir.clone(), config).await;
        let out = match result {
            Ok(log) => {
                // The broker's transaction coordinator ends what clients' transactional
                // batches open.
                log.set_transactions_enabled(true);
                let p = Rc::new(Partition {
                    log,
                    appended: Notify::new(),
                    topic_id: meta.id,
                    opened_at: std::time::Instant::now(),
                });
                debug!(shard = self.id, dir = %dir.display(), "partition open");
                self.partitions
                    .borrow_mut()
                    .entry(topic.to_string())
                    .or_default()
                    .insert(partition, Slot::Open(p.clone()));
                Ok(p)
            }
            Err(e) => {
                warn!(shard = self.id, dir = %dir.display(), "cannot open partition: {e}");
                if let Some(m) = self.partitions.borrow_mut().get_mut(topic) {
                    m.remove(&partition);
                }
                Err(error_code::KAFKA_STORAGE_ERROR)
            }
        };
        opening.notify_waiters();
        out
    }

    /// Opens every partition this shard owns (start-up recovery).
    pub async fn open_owned_partitions(&self) {
        let image = self.image();
        for topic in image.topics() {
            for p in 0..topic.partitions {
                if self.ctx.owner(&topic.name, p) == self.id {
                    let _ = self.partition(&topic.name, p).await;
                }
            }
        }
    }

    /// The state of every partition this shard owns, for /metrics: open logs, and owned
    /// partitions that are not open (their open failed) as offline.
    /// `high_watermark(topic, partition, log_end)` is what the replica reports as committed.
    pub fn partition_snapshots(
        &self,
        high_watermark: &dyn Fn(&str, i32, i64) -> i64,
    ) -> Vec<crate::metrics::PartitionSnapshot> {
        let image = self.image();
        let map = self.partitions.borrow();
        let mut out = Vec::new();
        let me = self.ctx.config.node_id;
        for topic in image.topics() {
            for p in 0..topic.partitions {
                if self.ctx.owner(&topic.name, p) != self.id {
                    continue;
                }
                // Only replicas hosted here; (replicas, ISR) as the controller has them,
                // counted on the leader only (as Kafka's UnderReplicatedPartitions).
                let (replicas, in_sync) = match image.cluster.partition(&topic.name, p) {
                    Some(pi) if pi.replicas.contains(&me) => {
                        let n = pi.replicas.len() as u32;
                        let led_here = pi.leader == Some(me);
                        (n, if led_here { pi.isr.len() as u32 } else { n })
                    }
                    _ => continue,
                };
                let slot = map.get(&topic.name).and_then(|m| m.get(&p));
                let mut snap = crate::metrics::PartitionSnapshot {
                    topic: topic.name.clone(),
                    partition: p,
                    log_start_offset: -1,
                    log_end_offset: -1,
                    high_watermark: -1,
                    size_bytes: 0,
                    segments: 0,
                    replicas,
                    in_sync_replicas: in_sync,
                    offline: true,
                };
                match slot {
                    Some(Slot::Opening(_)) => continue,
                    None => {}
                    Some(Slot::Open(part)) => {
                        let log = &part.log;
                        snap.log_start_offset = log.log_start_offset();
                        snap.log_end_offset = log.log_end_offset();
                        snap.high_watermark = high_watermark(&topic.name, p, snap.log_end_offset);
                        snap.size_bytes = log.size_bytes();
                        snap.segments = log.segment_count() as u64;
                        snap.offline = log.is_offline();
                    }
                }
                out.push(snap);
            }
        }
        out
    }

    /// The partitions open on this shard.
    pub fn open_partitions(&self) -> Vec<Rc<Partition>> {
        self.partitions
            .borrow()
            .values()
            .flat_map(|m| m.values())
            .filter_map(|s| match s {
                Slot::Open(p) => Some(p.clone()),
                Slot::Opening(_) => None,
            })
            .collect()
    }

    /// Applies the topic's current config to its open partitions on this shard.
    pub async fn apply_topic_config(self: Rc<Self>, topic: String) {
        let image = self.image();
        let Some(meta) = image.topic(&topic) else {
            return;
        };
        let Ok(config) = self.ctx.config.log_config(&meta.configs) else {
            return;
        };
        let parts: Vec<Rc<Partition>> = self
            .partitions
            .borrow()
            .get(&topic)
            .map(|m| {
                m.values()
                    .filter_map(|s| match s {
                        Slot::Open(p) => Some(p.clone()),
                        Slot::Opening(_) => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        for p in parts {
            p.log.set_config(config);
        }
    }

    /// Deletes this shard's partitions of a topic (already removed from the registry).
    pub async fn delete_topic_partitions(self: Rc<Self>, topic: String, partitions: i32) {
        let removed = self
            .partitions
            .borrow_mut()
            .remove(&topic)
            .unwrap_or_default();
        for (p, slot) in removed {
            let Slot::Open(mut part) = slot else { continue };
            // In-flight fetches may still hold the partition; give them a moment to finish.
            let mut waited = Duration::ZERO;
            loop {
                match Rc::try_unwrap(part) {
                    Ok(owned) => {
                        if let Err(e) = owned.log.delete().await {
                            warn!(topic, partition = p, "cannot delete partition: {e}");
                        }
                        break;
                    }
                    Err(shared) if waited < Duration::from_secs(5) => {
                        part = shared;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        waited += Duration::from_millis(10);
                    }
                    Err(shared) => {
                        let dir = shared.log.dir().to_path_buf();
                        let _ = shared.log.close().await;
                        if let Err(e) = std::fs::remove_dir_all(&dir) {
                            warn!(dir = %dir.display(), "cannot remove partition dir: {e}");
                        }
                        break;
                    }
                }
            }
        }
        // Directories of partitions that were never opened in this process.
        for p in 0..partitions {
            if self.ctx.owner(&topic, p) == self.id {
                let dir = self.ctx.config.data_dir.join(format!("{topic}-{p}"));
                if dir.exists() {
                    if let Err(e) = std::fs::remove_dir_all(&dir) {
                        warn!(dir = %dir.display(), "cannot remove partition dir: {e}");
                    }
                }
            }
        }
        info!(shard = self.id, topic, "deleted topic partitions");
    }

    /// Enforces retention and time-based rolls on every open partition.
    pub async fn enforce_retention(&self) {
        let now = now_ms();
        let producer_expiration = self.ctx.config.producer_id_expiration_ms();
        for p in self.open_partitions() {
            p.log.expire_producers(now, producer_expiration);
            if let Err(e) = p.log.enforce_retention(now).await {
                warn!(dir = %p.log.dir().display(), "retention failed: {e}");
            }
            if let Err(e) = p.log.roll_if_due(now).await {
                warn!(dir = %p.log.dir().display(), "segment roll failed: {e}");
            }
        }
    }

    /// Runs this shard's log cleaner over its compacted partitions until the shard stops.
    pub async fn run_log_cleaner(self: Rc<Self>) {
        let config = match crate::storage::cleaner::CleanerConfig::from_raw(&self.ctx.config.raw) {
            Ok(c) => c,
            Err((key, value)) => {
                warn!(
                    shard = self.id,
                    key, value, "log cleaner disabled: bad setting"
                );
                return;
            }
        };
        crate::storage::cleaner::run(
            config,
            || self.open_partitions(),
            |p: &Rc<Partition>| &p.log,
            || *self.phase.borrow() == Phase::Running,
        )
        .await;
    }

    /// Flushes and closes every open partition (writes the clean-shutdown markers). The
    /// replication service checkpoints its high watermarks first.
    pub async fn close_all(&self) {
        let parts = self.open_partitions();
        self.partitions.borrow_mut().clear();
        for p in parts {
            if let Err(e) = p.log.close().await {
                warn!(dir = %p.log.dir().display(), "close failed: {e}");
            }
        }
    }
}
