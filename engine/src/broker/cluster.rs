//! This broker as a member of its cluster, whose metadata lives in the controller quorum
//! (`crate::controller`). A broker started with no cluster flags is a cluster of one: its
//! own sole voter, through the same code as three brokers.
//!
//! [`ClusterNode`] starts this node's controller voter (or broker-only observer), registers
//! the broker, heartbeats it, and turns every newly applied controller
//! [`crate::controller::MetadataImage`] into the broker's topic registry image, handed to an
//! [`ImageSink`] (the services apply it on every shard: replicas open and follow, group
//! coordinators forget deleted topics). The admin APIs that go through controller proposals
//! are in `super::api` (topics, configs, metadata); this module imports nothing from the
//! shard or its services.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{info, warn};
use uuid::Uuid;

use super::config::BrokerConfig;
use super::metadata::MetadataImage;
use crate::controller::{
    parse_voters, Controller, ControllerConfig, ControllerError, Endpoint, HeartbeatRequest,
    MetadataImage as ClusterImage,
};
use crate::security::tls::PeerTls;

/// The longest a stopping broker waits for its controlled-shutdown heartbeat.
const CONTROLLED_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);

/// Controller settings read from the broker configuration (Kafka key names).
const CONTROLLER_KEYS: &[&str] = &[
    "controller.quorum.election.timeout.ms",
    "controller.quorum.heartbeat.interval.ms",
    "broker.session.timeout.ms",
    "controller.quorum.request.timeout.ms",
    "replication.mode",
    "metadata.snapshot.interval.entries",
    "metadata.poll.interval.ms",
    "auto.leader.rebalance.enable",
    "leader.imbalance.per.broker.percentage",
    "leader.imbalance.check.interval.seconds",
];

/// Where the membership thread hands each newly applied metadata image, with the one applied
/// before it (`None` for the first): the broker's services (`ServicePeers::apply_image`).
pub type ImageSink = Box<dyn Fn(Option<&Arc<ClusterImage>>, &Arc<ClusterImage>) + Send + 'static>;

/// This broker's membership in a cluster: its controller handle, registration and the
/// broker-side view of the cluster metadata.
pub struct ClusterNode {
    /// This broker's `node.id`.
    pub node_id: i32,
    /// The controller voter (or broker-only observer) of this node.
    pub controller: Controller,
    /// Cluster id reported to clients, derived from the voter list so every broker agrees.
    pub cluster_id: String,
    incarnation: Uuid,
    broker_epoch: AtomicI64,
    heartbeat_interval: Duration,
    pub(crate) request_timeout: Duration,
    /// `broker.session.timeout.ms`: how long the controller keeps this broker's session.
    session_timeout_ms: u64,
    /// Origin of `session_sent_ms`.
    clock: Instant,
    /// When the last registration or heartbeat the controller answered was sent (ms since
    /// `clock`; `u64::MAX`: none yet).
    session_sent_ms: AtomicU64,
    /// This registration's local metadata image has applied the controller's log up to the
    /// registration record (see [`ClusterNode::caught_up`]); cleared at each registration.
    caught_up: AtomicBool,
    /// The last converted image and the controller image it came from.
    cache: Mutex<Option<(Arc<ClusterImage>, Arc<MetadataImage>)>>,
    stop: watch::Sender<bool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The voter set is this node alone.
    sole_voter: bool,
    /// Started without `controller.quorum.voters` (a cluster of one by default).
    implicit: bool,
    /// TLS for connections to other brokers' inter-broker listeners (it is SSL).
    pub inter_broker_tls: Option<Arc<PeerTls>>,
    /// `broker.rack`, registered with the controller (`None` when empty).
    rack: Option<String>,
}

impl std::fmt::Debug for ClusterNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterNode")
            .field("node_id", &self.node_id)
            .field("broker_epoch", &self.broker_epoch())
            .finish()
    }
}

fn raw_ms(config: &BrokerConfig, key: &str, default: u64) -> u64 {
    config
        .raw
        .get(key)
        .and_then(|v| v.trim().parse().ok())
        .filter(|&v| v > 0)
        .unwrap_or(default)
}

/// A stable 22-character cluster id (Kafka's format) derived from the voter list.
fn cluster_id_for(voters: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for b in voters.bytes().filter(|b| !b.is_ascii_whitespace()) {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
    }
    (0..22)
        .map(|_| {
            let c = ALPHABET[(h & 63) as usize] as char;
            h = h.rotate_right(6);
            c
        })
        .collect()
}

impl ClusterNode {
    /// Starts this node's controller: the voters of `controller.quorum.voters`, or, when it
    /// is empty, a cluster of one whose sole voter is this node (it binds no controller
    /// port: nobody else dials it).
    pub fn start(config: &BrokerConfig) -> Result<Arc<ClusterNode>, ControllerError> {
        let configured = config
            .raw
            .get("controller.quorum.voters")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let implicit = configured.is_empty();
        let spec = if implicit {
            format!("{}@127.0.0.1:0", config.node_id)
        } else {
            configured
        };
        let voters = if implicit {
            vec![crate::controller::Voter {
                id: config.node_id as u64,
                addr: "127.0.0.1:0".into(),
            }]
        } else {
            parse_voters(&spec)?
        };
        let sole_voter = voters.len() == 1 && voters[0].id == config.node_id as u64;
        let identity = super::node_identity::load_or_create(
            &config.data_dir,
            config.node_id,
            &voters,
            implicit,
            || {
                if implicit {
                    super::metadata::new_cluster_id()
                } else {
                    cluster_id_for(&spec)
                }
            },
        )?;
        let mut cc = ControllerConfig::default();
        for key in CONTROLLER_KEYS {
            if let Some(v) = config.raw.get(*key) {
                cc.set(key, v)?;
            }
        }
        cc.tls = config.controller_tls.clone();
        // A cluster of one never dials another broker.
        let inter_broker_tls = match config.listeners.first().and_then(|l| l.tls.clone()) {
            _ if implicit => None,
            Some(settings) => Some(Arc::new(
                PeerTls::client("inter-broker", settings).map_err(|e| {
                    ControllerError::InvalidConfig(format!("inter-broker listener TLS: {e}"))
                })?,
            )),
            None => None,
        };
        let request_timeout = Duration::from_millis(cc.request_timeout_ms);
        let node_id = config.node_id;
        let session_timeout_ms = cc.broker_session_timeout_ms;
        let controller = Controller::start(node_id as u64, &voters, &config.data_dir, cc)?;
        info!(node_id, voters = spec, cluster_id = %identity.cluster_id, "controller started");
        let (stop, _) = watch::channel(false);
        Ok(Arc::new(ClusterNode {
            node_id,
            controller,
            cluster_id: identity.cluster_id,
            incarnation: Uuid::new_v4(),
            broker_epoch: AtomicI64::new(-1),
            heartbeat_interval: Duration::from_millis(raw_ms(
                config,
                "broker.heartbeat.interval.ms",
                500,
            )),
            request_timeout,
            session_timeout_ms,
            clock: Instant::now(),
            session_sent_ms: AtomicU64::new(u64::MAX),
            caught_up: AtomicBool::new(false),
            cache: Mutex::new(None),
            stop,
            thread: Mutex::new(None),
            sole_voter,
            implicit,
            inter_broker_tls,
            rack: config
                .raw
                .get("broker.rack")
                .map(|r| r.trim().to_string())
                .filter(|r| !r.is_empty()),
        }))
    }

    /// Blocks until this broker is registered and unfenced, its metadata has caught up with
    /// the controller since, and every partition it holds a replica of has a leader, or
    /// `timeout` passes (false). A cluster of one waits for this
    /// before it accepts clients, so its first client finds its topics led, as a single broker
    /// should; a member of a larger quorum must not wait (the other voters may not be up).
    pub fn wait_until_serving(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let epoch = self.broker_epoch();
            let image = self.controller.metadata();
            let unfenced = epoch >= 0
                && image
                    .broker(self.node_id)
                    .is_some_and(|b| b.broker_epoch == epoch && !b.fenced);
            let led = || {
                image
                    .topics
                    .values()
                    .flat_map(|t| t.partitions.iter())
                    .filter(|p| p.replicas.contains(&self.node_id))
                    .all(|p| p.leader.is_some())
            };
            if unfenced && self.caught_up() && led() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether this node is the only controller voter (a cluster of one).
    pub fn sole_voter(&self) -> bool {
        self.sole_voter
    }

    /// Whether this node was started without `controller.quorum.voters`.
    pub fn implicit(&self) -> bool {
        self.implicit
    }

    /// The broker epoch of this process's registration, -1 before it registered.
    pub fn broker_epoch(&self) -> i64 {
        self.broker_epoch.load(Ordering::Acquire)
    }

    fn clock_ms(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    /// Records a registration or heartbeat that the controller answered, by when it was sent:
    /// the controller received it later, so its session clock runs no earlier than ours.
    fn session_renewed(&self, sent_ms: u64) {
        let prev = self.session_sent_ms.load(Ordering::Acquire);
        if prev == u64::MAX || sent_ms > prev {
            self.session_sent_ms.store(sent_ms, Ordering::Release);
        }
    }

    /// Whether this broker's controller session may still be alive: the last registration or
    /// heartbeat the controller answered was sent less than `broker.session.timeout.ms` ago.
    /// Once it is not, the controller has fenced this broker (or will before any answer
    /// could reach it), so its leaderships are moving: leaders refuse produce and consumer
    /// fetch with NOT_LEADER_OR_FOLLOWER and Metadata stops naming this broker leader, so
    /// clients go to the new leader instead of waiting for the network to heal.
    pub fn session_alive(&self) -> bool {
        let sent = self.session_sent_ms.load(Ordering::Acquire);
        sent != u64::MAX && self.clock_ms().saturating_sub(sent) < self.session_timeout_ms
    }

    /// Whether `image` has applied this process's registration record, and with it every
    /// record the controller had committed before it: the image is as new as the
    /// controller's log was when this incarnation registered. Its broker epoch is the record's
    /// log index, so this is `metadata_offset >= broker_epoch` (KRaft's broker catch-up
    /// condition: the controller's committed offset at registration). Before that, an image
    /// replayed from this node's own log after a restart may still name this broker leader of
    /// an epoch that ended while it was down; such leaderships are not taken.
    pub fn image_caught_up(&self, image: &ClusterImage) -> bool {
        let epoch = self.broker_epoch();
        epoch >= 0 && u64::try_from(epoch).is_ok_and(|e| image.metadata_offset >= e)
    }

    /// Whether the images this broker applies have caught up with the controller since its
    /// (latest) registration ([`ClusterNode::image_caught_up`] of an image it has seen).
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// Whether this broker may act as a partition leader towards clients: its controller
    /// session is alive and its metadata has caught up since it registered. Leaders refuse
    /// client requests and Metadata names no partition led here while it may not.
    pub fn may_lead(&self) -> bool {
        self.caught_up() && self.session_alive()
    }

    /// Notes `image` (about to be handed to the services): the first one of this registration
    /// to have caught up lets the broker lead.
    fn note_image(&self, image: &ClusterImage) {
        if self.caught_up() || !self.image_caught_up(image) {
            return;
        }
        self.caught_up.store(true, Ordering::Release);
        info!(
            node_id = self.node_id,
            broker_epoch = self.broker_epoch(),
            metadata_offset = image.metadata_offset,
            "metadata caught up with the controller since registration: leading and serving"
        );
    }

    /// The current controller image.
    pub fn cluster_image(&self) -> Arc<ClusterImage> {
        self.controller.metadata()
    }

    /// The broker's topic registry image for the current controller image (converted once
    /// per controller image).
    pub fn image(&self) -> Arc<MetadataImage> {
        let source = self.controller.metadata();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((from, image)) = cache.as_ref() {
            if Arc::ptr_eq(from, &source) {
                return image.clone();
            }
        }
        let image = Arc::new(MetadataImage::from_cluster(
            self.cluster_id.clone(),
            source.clone(),
        ));
        *cache = Some((source, image.clone()));
        image
    }

    /// Starts the membership thread: registration, heartbeats, and a reconciliation job on
    /// every shard for each new metadata image.
    /// `listeners` are every client listener's advertised endpoint, the inter-broker
    /// listener first, as the controller registers them.
    pub fn run(self: &Arc<Self>, sink: ImageSink, listeners: Vec<Endpoint>) -> std::io::Result<()> {
        let node = self.clone();
        let thread = std::thread::Builder::new()
            .name(format!("cluster-{}", self.node_id))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!("cannot start the cluster runtime: {e}");
                        return;
                    }
                };
                runtime.block_on(node.membership(sink, listeners));
            })?;
        *self.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(thread);
        Ok(())
    }

    async fn register(&self, stop: &mut watch::Receiver<bool>, listeners: &[Endpoint]) -> bool {
        // A new registration is caught up only once its own record is applied here.
        self.caught_up.store(false, Ordering::Release);
        loop {
            if *stop.borrow() {
                return false;
            }
            let call = self.controller.register_broker(
                self.node_id,
                self.incarnation,
                listeners.to_vec(),
                self.rack.clone(),
            );
            let sent = self.clock_ms();
            match tokio::time::timeout(self.request_timeout, call).await {
                Ok(Ok(epoch)) => {
                    self.broker_epoch.store(epoch, Ordering::Release);
                    self.session_renewed(sent);
                    info!(
                        node_id = self.node_id,
                        broker_epoch = epoch,
                        "registered with the controller"
                    );
                    return true;
                }
                Ok(Err(e)) => warn!("broker registration failed, retrying: {e}"),
                Err(_) => warn!("broker registration timed out, retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                _ = stop.changed() => {}
            }
        }
    }

    async fn heartbeat(
        &self,
        want_shutdown: bool,
        timeout: Duration,
    ) -> Result<bool, ControllerError> {
        let request = HeartbeatRequest {
            broker_id: self.node_id,
            broker_epoch: self.broker_epoch(),
            metadata_offset: self.controller.metadata().metadata_offset,
            want_shutdown,
        };
        let sent = self.clock_ms();
        match tokio::time::timeout(timeout, self.controller.heartbeat(request)).await {
            Ok(r) => r.map(|r| {
                self.session_renewed(sent);
                r.fenced
            }),
            Err(_) => Err(ControllerError::NotAvailable("heartbeat timed out".into())),
        }
    }

    /// A regular heartbeat, abandoned (`None`) when the broker is asked to stop meanwhile: a
    /// heartbeat to an unreachable controller would otherwise hold the stop for a whole
    /// request timeout.
    async fn heartbeat_unless_stopped(
        &self,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<Result<bool, ControllerError>> {
        if *stop.borrow() {
            return None;
        }
        tokio::select! {
            r = self.heartbeat(false, self.request_timeout) => Some(r),
            _ = stop.changed() => None,
        }
    }

    async fn membership(self: Arc<Self>, sink: ImageSink, listeners: Vec<Endpoint>) {
        let mut stop = self.stop.subscribe();
        let mut images = self.controller.watch_metadata();
        // Replicas open and follow the metadata even before registration (a restarted broker
        // catches up while it is still fenced), but take no leadership until the image has
        // caught up with the controller (`image_caught_up`, checked by the replicas on each
        // image they apply).
        let mut previous = images.borrow_and_update().clone();
        sink(None, &previous);
        if !self.register(&mut stop, &listeners).await {
            return;
        }
        // The image may have caught up during the registration: hand it over again, now that
        // the broker epoch it is checked against is known.
        let image = images.borrow_and_update().clone();
        self.note_image(&image);
        sink(Some(&previous), &image);
        previous = image;
        let mut tick = tokio::time::interval(self.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = tick.tick() => match self.heartbeat_unless_stopped(&mut stop).await {
                    None => break,
                    Some(Ok(_)) => {}
                    Some(Err(ControllerError::Rejected(e))) => {
                        // A stale epoch or unknown broker: this registration is gone.
                        warn!("heartbeat refused ({e}); registering again");
                        if !self.register(&mut stop, &listeners).await {
                            return;
                        }
                        let image = images.borrow_and_update().clone();
                        self.note_image(&image);
                        sink(Some(&previous), &image);
                        previous = image;
                    }
                    Some(Err(e)) => tracing::debug!("heartbeat failed: {e}"),
                },
                changed = images.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let image = images.borrow_and_update().clone();
                    self.note_image(&image);
                    sink(Some(&previous), &image);
                    previous = image;
                }
            }
        }
        // Controlled shutdown: fenced now, so leaderships move before the process stops. With
        // no controller to answer (the other voters already stopped) waiting longer gains
        // nothing: the session lapses and the controller fences this broker anyway.
        let bound = self.request_timeout.min(CONTROLLED_SHUTDOWN_TIMEOUT);
        if let Err(e) = self.heartbeat(true, bound).await {
            warn!("controlled shutdown heartbeat failed: {e}");
        }
    }

    /// Controlled shutdown, then stops the controller. Call once the shards have drained.
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
        self.controller.shutdown();
    }

    /// Waits until this node's image satisfies `done` (a committed change reached it).
    pub(crate) async fn wait_for_image(&self, done: impl Fn(&ClusterImage) -> bool) -> bool {
        poll_until(self.request_timeout, Duration::from_millis(10), || {
            std::future::ready(done(&self.controller.metadata()))
        })
        .await
    }
}

/// Polls `done` every `period` until it holds (true) or `timeout` has passed (false).
pub(crate) async fn poll_until<Fut: std::future::Future<Output = bool>>(
    timeout: Duration,
    period: Duration,
    mut done: impl FnMut() -> Fut,
) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if done().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_id_is_stable_and_kafka_shaped() {
        let a = cluster_id_for("1@127.0.0.1:19091,2@127.0.0.1:19092");
        assert_eq!(a, cluster_id_for("1@127.0.0.1:19091, 2@127.0.0.1:19092"));
        assert_ne!(a, cluster_id_for("1@127.0.0.1:19091"));
        assert_eq!(a.len(), 22);
    }
}
