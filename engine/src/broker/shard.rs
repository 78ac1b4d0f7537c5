//! Shards: one pinned thread per core, each owning a disjoint set of partitions.
//!
//! A request touching a partition owned by another shard is forwarded as a job over that
//! shard's crossbeam queue; the owner is woken through an eventfd its runtime awaits, runs the
//! job on its own thread (so a `PartitionLog` is only ever touched by its owner, without
//! locks), and answers through a oneshot channel that wakes the requester's runtime.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use nix::sys::eventfd::{EfdFlags, EventFd};
use tokio::io::unix::AsyncFd;
use tokio::sync::{oneshot, watch, Notify};
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::config::BrokerConfig;
use super::metadata::{owner_shard, MetadataStore};
use super::protocol::{error_code, RecordsSource};
use crate::storage::{PartitionLog, ReadError};

/// A unit of work sent to another shard: builds a (non-`Send`) future on the owner thread.
pub type Job = Box<dyn FnOnce(Rc<Shard>) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// The target shard has stopped and can no longer answer.
#[derive(Debug, thiserror::Error)]
#[error("shard {0} is gone")]
pub struct ShardGone(pub usize);

/// The sending side of a shard's queue, shared by every shard.
#[derive(Debug)]
pub struct Mailbox {
    tx: crossbeam_channel::Sender<Job>,
    wake: Arc<EventFd>,
}

/// The receiving side of a shard's queue, moved onto the shard thread.
pub struct MailboxReceiver {
    rx: crossbeam_channel::Receiver<Job>,
    wake: Arc<EventFd>,
}

/// Creates a shard's queue and its eventfd.
pub fn mailbox() -> std::io::Result<(Mailbox, MailboxReceiver)> {
    let wake = Arc::new(EventFd::from_flags(
        EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC,
    )?);
    let (tx, rx) = crossbeam_channel::unbounded();
    Ok((
        Mailbox {
            tx,
            wake: wake.clone(),
        },
        MailboxReceiver { rx, wake },
    ))
}

/// State shared by all shards (`Send + Sync`): configuration, the topic registry, mailboxes.
pub struct BrokerContext {
    /// The resolved configuration.
    pub config: Arc<BrokerConfig>,
    /// The topic registry.
    pub metadata: MetadataStore,
    mailboxes: Vec<Mailbox>,
    /// Per-shard counters and readiness, read by the admin listener.
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl BrokerContext {
    /// Builds the context; `mailboxes[i]` belongs to shard `i`.
    pub fn new(
        config: Arc<BrokerConfig>,
        metadata: MetadataStore,
        mailboxes: Vec<Mailbox>,
    ) -> Self {
        let metrics = Arc::new(crate::metrics::Metrics::new(mailboxes.len()));
        BrokerContext {
            config,
            metadata,
            mailboxes,
            metrics,
        }
    }

    /// Jobs queued for `shard` and not yet started (its load, for /metrics).
    pub fn mailbox_len(&self, shard: usize) -> usize {
        self.mailboxes.get(shard).map_or(0, |m| m.tx.len())
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.mailboxes.len()
    }

    /// Queues `job` on `shard` and wakes it.
    pub fn post(&self, shard: usize, job: Job) -> Result<(), ShardGone> {
        let mb = self.mailboxes.get(shard).ok_or(ShardGone(shard))?;
        mb.tx.send(job).map_err(|_| ShardGone(shard))?;
        // EAGAIN only when the counter would overflow, in which case the shard is awake anyway.
        let _ = mb.wake.write(1);
        Ok(())
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

/// Per-thread shard state.
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
    /// The group coordinator of this shard's `__consumer_offsets` partitions.
    pub groups: super::groups::ShardGroups,
    /// The broker's producer-id manager (used on shard 0 only).
    pub producer_ids: super::producer_ids::ProducerIds,
    /// This shard's partition replicas (leader or follower state of every hosted partition).
    pub replicas: super::cluster_replica::ShardReplicas,
    /// This shard's copy of the metadata image ([`Shard::image`]).
    image_cache: super::metadata::ImageCache,
    /// The incremental fetch sessions whose ids name this shard (KIP-227).
    pub fetch_sessions: RefCell<super::fetch_session::FetchSessionCache>,
}

/// Input for one partition of a produce.
pub struct ProduceIn {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// RecordBatch bytes.
    pub records: Option<BytesMut>,
    /// The request's acks (-1 waits for the commit point).
    pub acks: i16,
    /// The request's timeout_ms (how long acks=all waits).
    pub timeout_ms: i32,
}

/// Result for one partition of a produce.
#[derive(Debug, Clone)]
pub struct ProduceOut {
    /// Kafka error code.
    pub error_code: i16,
    /// Error message for the client.
    pub error_message: Option<String>,
    /// Offset of the first record appended.
    pub base_offset: i64,
    /// Append time (LogAppendTime topics) or -1.
    pub log_append_time_ms: i64,
    /// Log start offset after the append.
    pub log_start_offset: i64,
}

/// A produce to one partition, started in order (see [`Shard::produce_local`]).
enum Started {
    Done(ProduceOut),
    Pending(Pin<Box<dyn Future<Output = ProduceOut>>>),
}

fn produce_error(code: i16, msg: Option<String>) -> ProduceOut {
    ProduceOut {
        error_code: code,
        error_message: msg,
        base_offset: -1,
        log_append_time_ms: -1,
        log_start_offset: -1,
    }
}

async fn append_one(shard: Rc<Shard>, partition: Rc<Partition>, item: ProduceIn) -> ProduceOut {
    let Some(records) = item.records.filter(|r| !r.is_empty()) else {
        return produce_error(error_code::CORRUPT_MESSAGE, Some("empty record set".into()));
    };
    let bytes = records.len() as u64;
    let admitted =
        match super::cluster_replica::before_append(&shard, &item.topic, item.partition, item.acks)
        {
            Ok(a) => a,
            Err((code, msg)) => return produce_error(code, Some(msg)),
        };
    let epoch = admitted.leader_epoch;
    match partition.log.append_leader(records, epoch, now_ms()).await {
        Ok(info) => {
            crate::metrics::record_produce(u64::from(info.record_count), bytes);
            // Wakes long-polling fetches: followers replicate the append, and consumers are
            // woken again when the high watermark covers it.
            partition.appended.notify_waiters();
            let (first, last) = (info.first_offset, info.last_offset);
            let committed = super::cluster_replica::after_append(
                &shard,
                admitted,
                first,
                last,
                item.acks,
                item.timeout_ms,
            )
            .await;
            if let Err((code, msg)) = committed {
                return produce_error(code, Some(msg));
            }
            ProduceOut {
                error_code: error_code::NONE,
                error_message: None,
                base_offset: info.first_offset,
                log_append_time_ms: info.log_append_time_ms,
                log_start_offset: info.log_start_offset,
            }
        }
        Err(e) => {
            debug!(
                topic = item.topic,
                partition = item.partition,
                "append rejected: {e}"
            );
            produce_error(e.kafka_error_code(), Some(e.to_string()))
        }
    }
}

/// Input for one partition of a fetch.
#[derive(Debug, Clone)]
pub struct FetchIn {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// First offset wanted.
    pub offset: i64,
    /// partition_max_bytes.
    pub max_bytes: i32,
    /// The fetching replica's broker id; -1 for a consumer.
    pub replica_id: i32,
    /// current_leader_epoch of the request (-1: not checked).
    pub current_leader_epoch: i32,
    /// last_fetched_epoch of the request (-1: none).
    pub last_fetched_epoch: i32,
    /// The fetching replica's log start offset (Fetch v5+ `log_start_offset`; -1: none).
    pub log_start_offset: i64,
}

/// Result for one partition of a fetch.
#[derive(Debug)]
pub struct FetchOut {
    /// Kafka error code.
    pub error_code: i16,
    /// High watermark.
    pub high_watermark: i64,
    /// Log start offset.
    pub log_start_offset: i64,
    /// Records, if any.
    pub records: Option<RecordsSource>,
    /// The fetching replica's log diverges: where the leader's log ends for its last epoch
    /// (KIP-320; the follower truncates there, no records are sent).
    pub diverging_epoch: Option<(i32, i64)>,
}

/// Result of a ListOffsets lookup.
#[derive(Debug, Clone, Copy)]
pub struct OffsetOut {
    /// Kafka error code.
    pub error_code: i16,
    /// Timestamp of the found record (-1 for earliest/latest).
    pub timestamp: i64,
    /// The offset (-1 if none).
    pub offset: i64,
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

    /// Creates the state for shard `id`.
    pub fn new(id: usize, ctx: Arc<BrokerContext>) -> Shard {
        let (phase, _) = watch::channel(Phase::Running);
        let groups = super::groups::ShardGroups::new(&ctx.config, &ctx.metadata);
        // Validated when the configuration was resolved; the defaults only for a hand-built one.
        let sessions_config =
            super::fetch_session::SessionConfig::from_config(&ctx.config).unwrap_or_default();
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ (id as u64).rotate_left(32);
        let fetch_sessions = RefCell::new(super::fetch_session::FetchSessionCache::new(
            sessions_config,
            id,
            ctx.shard_count(),
            seed,
        ));
        Shard {
            id,
            ctx,
            partitions: RefCell::new(HashMap::new()),
            phase,
            connections: Cell::new(0),
            connection_closed: Notify::new(),
            groups,
            producer_ids: Default::default(),
            replicas: Default::default(),
            image_cache: Default::default(),
            fetch_sessions,
        }
    }

    /// Runs `f` on shard `target` and returns its result: directly when `target` is this
    /// shard, otherwise through the target's mailbox.
    pub async fn call<R, F, Fut>(self: &Rc<Self>, target: usize, f: F) -> Result<R, ShardGone>
    where
        R: Send + 'static,
        F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
        Fut: Future<Output = R> + 'static,
    {
        if target == self.id {
            return Ok(f(self.clone()).await);
        }
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |shard| {
            Box::pin(async move {
                let _ = tx.send(f(shard).await);
            })
        });
        self.ctx.post(target, job)?;
        rx.await.map_err(|_| ShardGone(target))
    }

    /// Receives jobs from other shards until the runtime stops.
    pub async fn run_mailbox(self: Rc<Self>, mailbox: MailboxReceiver) {
        // SAFETY: the Arc keeps the EventFd (and so its fd) open and unchanged for as long as
        // the AsyncFd, which owns one of the Arc's references, exists.
        let registered = unsafe {
            AsyncFd::register_with_interest(mailbox.wake.clone(), tokio::io::Interest::READABLE)
        };
        let fd = match registered.map_err(|e| e.into_parts().1) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::error!(shard = self.id, "cannot register the mailbox eventfd: {e}");
                return;
            }
        };
        loop {
            // Reset the counter before draining: a job queued after the drain re-arms it.
            match fd.readable().await {
                Ok(mut guard) => {
                    let _ =
                        guard.try_io(|inner| inner.get_ref().read().map_err(std::io::Error::from));
                }
                Err(e) => {
                    tracing::error!(shard = self.id, "mailbox eventfd failed: {e}");
                    return;
                }
            }
            while let Ok(job) = mailbox.rx.try_recv() {
                crate::io::runtime::spawn(job(self.clone()));
            }
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
    pub fn partition_snapshots(&self) -> Vec<crate::metrics::PartitionSnapshot> {
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
                        // Single node: everything appended is committed; a cluster
                        // leader reports its high watermark.
                        snap.high_watermark = super::cluster_replica::wake_end(
                            self,
                            &topic.name,
                            p,
                            snap.log_end_offset,
                            false,
                        );
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

    fn open_partitions(&self) -> Vec<Rc<Partition>> {
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

    /// Appends to local partitions this broker leads (acks=-1 waits for the replication rule).
    ///
    /// Two phases. First, in request order, each partition's append is started and polled
    /// once: the log takes its FIFO append lock at the first poll, so this fixes the order of
    /// the offsets (the storage contract: appends to a partition are ordered by call). Then
    /// `submitted` fires, which lets the connection start its next produce request, and the
    /// appends are awaited together.
    pub async fn produce_local(
        self: Rc<Self>,
        items: Vec<ProduceIn>,
        submitted: Option<oneshot::Sender<()>>,
    ) -> Vec<ProduceOut> {
        let mut started = Vec::with_capacity(items.len());
        for item in items {
            let partition = match self.partition(&item.topic, item.partition).await {
                Ok(p) => p,
                Err(code) => {
                    started.push(Started::Done(produce_error(code, None)));
                    continue;
                }
            };
            let mut append = Box::pin(append_one(self.clone(), partition, item));
            let first = std::future::poll_fn(|cx| Poll::Ready(append.as_mut().poll(cx))).await;
            started.push(match first {
                Poll::Ready(out) => Started::Done(out),
                Poll::Pending => Started::Pending(append),
            });
        }
        if let Some(tx) = submitted {
            let _ = tx.send(());
        }
        let finish = started.into_iter().map(|s| async move {
            match s {
                Started::Done(out) => out,
                Started::Pending(append) => append.await,
            }
        });
        futures_util::future::join_all(finish).await
    }

    /// Reads from local partitions. With `zero_copy` the records are a dup'd segment fd and a
    /// range (sent later with sendfile); otherwise they are copied into memory here.
    pub async fn fetch_local(
        self: Rc<Self>,
        items: Vec<FetchIn>,
        zero_copy: bool,
    ) -> Vec<FetchOut> {
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            out.push(self.fetch_one(item, zero_copy).await);
        }
        out
    }

    async fn fetch_one(self: &Rc<Self>, item: FetchIn, zero_copy: bool) -> FetchOut {
        let fail = |code: i16, hw: i64, ls: i64| FetchOut {
            error_code: code,
            high_watermark: hw,
            log_start_offset: ls,
            records: None,
            diverging_epoch: None,
        };
        let partition = match self.partition(&item.topic, item.partition).await {
            Ok(p) => p,
            Err(code) => return fail(code, -1, -1),
        };
        let log = &partition.log;
        let limit = match super::cluster_replica::fetch_limit(self, &item) {
            Ok(limit) => limit,
            // The log start lets a follower behind it restart there (OFFSET_OUT_OF_RANGE).
            Err(code) => return fail(code, -1, log.log_start_offset()),
        };
        if let Some(d) = limit.diverging_epoch {
            return FetchOut {
                error_code: error_code::NONE,
                high_watermark: limit.high_watermark,
                log_start_offset: log.log_start_offset(),
                records: None,
                diverging_epoch: Some((d.leader_epoch, d.end_offset)),
            };
        }
        let (upper, hw) = (limit.read_to, limit.high_watermark);
        let max_bytes = u32::try_from(item.max_bytes.max(0)).unwrap_or(0);
        let read = match log.read(item.offset, max_bytes, upper, true).await {
            Ok(r) => r,
            Err(ReadError::OffsetOutOfRange {
                log_start, log_end, ..
            }) => {
                return fail(error_code::OFFSET_OUT_OF_RANGE, log_end, log_start);
            }
            Err(e) => {
                warn!(
                    topic = item.topic,
                    partition = item.partition,
                    "read failed: {e}"
                );
                return fail(error_code::KAFKA_STORAGE_ERROR, hw, log.log_start_offset());
            }
        };
        let records = match read.slice {
            None => None,
            Some(slice) if zero_copy => {
                // SAFETY: `slice` keeps the segment file open for the whole borrow, so the
                // raw fd is valid; we immediately duplicate it into an owned fd.
                let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(slice.raw_fd()) };
                match borrowed.try_clone_to_owned() {
                    Ok(fd) => Some(RecordsSource::File {
                        fd,
                        position: slice.position(),
                        len: slice.len(),
                    }),
                    Err(e) => {
                        warn!("cannot dup segment fd: {e}");
                        return fail(error_code::KAFKA_STORAGE_ERROR, hw, read.log_start_offset);
                    }
                }
            }
            Some(slice) => match slice.read_to_vec().await {
                Ok(v) => Some(RecordsSource::Bytes(v.into())),
                Err(e) => {
                    warn!(
                        topic = item.topic,
                        partition = item.partition,
                        "read failed: {e}"
                    );
                    return fail(error_code::KAFKA_STORAGE_ERROR, hw, read.log_start_offset);
                }
            },
        };
        FetchOut {
            error_code: error_code::NONE,
            high_watermark: hw,
            log_start_offset: read.log_start_offset,
            records,
            diverging_epoch: None,
        }
    }

    /// Waits until any of the local partitions has data at or beyond the given offset, or
    /// until `deadline`. Returns immediately if one already has.
    pub async fn wait_for_data(
        self: Rc<Self>,
        items: Vec<(String, i32, i64, bool)>,
        deadline: tokio::time::Instant,
    ) {
        let mut parts = Vec::with_capacity(items.len());
        for (topic, p, offset, replica) in items {
            if let Ok(part) = self.partition(&topic, p).await {
                parts.push((part, offset, topic, p, replica));
            }
        }
        let mut waits = Vec::with_capacity(parts.len());
        for (part, offset, topic, p, replica) in &parts {
            let mut n = Box::pin(part.appended.notified());
            n.as_mut().enable();
            let end = super::cluster_replica::wake_end(
                &self,
                topic,
                *p,
                part.log.log_end_offset(),
                *replica,
            );
            if end > *offset {
                return;
            }
            waits.push(n);
        }
        if waits.is_empty() {
            tokio::time::sleep_until(deadline).await;
            return;
        }
        tokio::select! {
            _ = futures_util::future::select_all(waits) => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }

    /// ListOffsets on local partitions: -1 latest, -2 earliest, otherwise by timestamp.
    pub async fn list_offsets_local(
        self: Rc<Self>,
        items: Vec<(String, i32, i64)>,
    ) -> Vec<OffsetOut> {
        let mut out = Vec::with_capacity(items.len());
        for (topic, p, ts) in items {
            // Only the leader answers, whatever the lookup.
            if let Err(code) = super::cluster_replica::list_offsets_latest(&self, &topic, p) {
                out.push(OffsetOut {
                    error_code: code,
                    timestamp: -1,
                    offset: -1,
                });
                continue;
            }
            let r = match self.partition(&topic, p).await {
                Err(code) => OffsetOut {
                    error_code: code,
                    timestamp: -1,
                    offset: -1,
                },
                Ok(part) => match ts {
                    -1 => match super::cluster_replica::list_offsets_latest(&self, &topic, p) {
                        Err(code) => OffsetOut {
                            error_code: code,
                            timestamp: -1,
                            offset: -1,
                        },
                        Ok(hw) => OffsetOut {
                            error_code: 0,
                            timestamp: -1,
                            offset: hw,
                        },
                    },
                    -2 => OffsetOut {
                        error_code: 0,
                        timestamp: -1,
                        offset: part.log.log_start_offset(),
                    },
                    t if t < 0 => OffsetOut {
                        error_code: error_code::INVALID_REQUEST,
                        timestamp: -1,
                        offset: -1,
                    },
                    t => match part.log.offset_for_timestamp(t).await {
                        Ok(Some((offset, timestamp))) => OffsetOut {
                            error_code: 0,
                            timestamp,
                            offset,
                        },
                        Ok(None) => OffsetOut {
                            error_code: 0,
                            timestamp: -1,
                            offset: -1,
                        },
                        Err(e) => {
                            warn!(topic, partition = p, "timestamp lookup failed: {e}");
                            OffsetOut {
                                error_code: error_code::KAFKA_STORAGE_ERROR,
                                timestamp: -1,
                                offset: -1,
                            }
                        }
                    },
                },
            };
            out.push(r);
        }
        out
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
        let producer_expiration = super::producer_ids::producer_id_expiration_ms(self);
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

    /// Flushes and closes every open partition (writes the clean-shutdown markers).
    pub async fn close_all(&self) {
        super::cluster_replica::checkpoint_high_watermarks(self).await;
        let parts = self.open_partitions();
        self.partitions.borrow_mut().clear();
        for p in parts {
            if let Err(e) = p.log.close().await {
                warn!(dir = %p.log.dir().display(), "close failed: {e}");
            }
        }
    }
}
