//! This broker as a member of its cluster, whose metadata lives in the controller quorum
//! (`crate::controller`). A broker started with no cluster flags is a cluster of one: its
//! own sole voter, through the same code as three brokers.
//!
//! [`ClusterNode`] starts this node's controller voter (or broker-only observer), registers
//! the broker, heartbeats it, and turns every newly applied controller
//! [`crate::controller::MetadataImage`] into the broker's topic registry image and a
//! reconciliation job on every shard (open the partitions it hosts, become leader or
//! follower: `super::cluster_replica`). The admin APIs (CreateTopics, DeleteTopics,
//! CreatePartitions, IncrementalAlterConfigs, Metadata, DescribeCluster) are here too: they
//! validate with `super::handlers`' topic-config checks and go through controller proposals.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kafka_protocol::messages::{self as m, BrokerId, TopicName};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::watch;
use tracing::{info, warn};
use uuid::Uuid;

use super::config::BrokerConfig;
use super::handlers::{effective_topic_configs, validate_topic_configs, MAX_PARTITIONS_PER_TOPIC};
use super::metadata::{validate_topic_name, MetadataImage};
use super::protocol::error_code as ec;
use super::shard::{BrokerContext, Job, Shard};
use crate::controller::{
    parse_voters, ConfigResource, Controller, ControllerConfig, ControllerError, Endpoint,
    HeartbeatRequest, MetadataCommand, MetadataImage as ClusterImage,
};

/// Kafka error code LEADER_NOT_AVAILABLE.
const LEADER_NOT_AVAILABLE: i16 = 5;
/// Kafka error code NOT_CONTROLLER.
const NOT_CONTROLLER: i16 = 41;

/// Controller settings read from the broker configuration (Kafka key names).
const CONTROLLER_KEYS: &[&str] = &[
    "controller.quorum.election.timeout.ms",
    "controller.quorum.heartbeat.interval.ms",
    "broker.session.timeout.ms",
    "controller.quorum.request.timeout.ms",
    "replication.mode",
    "metadata.snapshot.interval.entries",
    "metadata.poll.interval.ms",
];

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
    request_timeout: Duration,
    /// `broker.session.timeout.ms`: how long the controller keeps this broker's session.
    session_timeout_ms: u64,
    /// Origin of `session_sent_ms`.
    clock: Instant,
    /// When the last registration or heartbeat the controller answered was sent (ms since
    /// `clock`; `u64::MAX`: none yet).
    session_sent_ms: AtomicU64,
    /// The last converted image and the controller image it came from.
    cache: Mutex<Option<(Arc<ClusterImage>, Arc<MetadataImage>)>>,
    stop: watch::Sender<bool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The voter set is this node alone.
    sole_voter: bool,
    /// Started without `controller.quorum.voters` (a cluster of one by default).
    implicit: bool,
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
            cache: Mutex::new(None),
            stop,
            thread: Mutex::new(None),
            sole_voter,
            implicit,
        }))
    }

    /// Blocks until this broker is registered and unfenced and every partition it holds a
    /// replica of has a leader, or `timeout` passes (false). A cluster of one waits for this
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
            if unfenced && led() {
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
    pub fn run(
        self: &Arc<Self>,
        ctx: Arc<BrokerContext>,
        listeners: Vec<Endpoint>,
    ) -> std::io::Result<()> {
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
                runtime.block_on(node.membership(ctx, listeners));
            })?;
        *self.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(thread);
        Ok(())
    }

    async fn register(&self, stop: &mut watch::Receiver<bool>, listeners: &[Endpoint]) -> bool {
        loop {
            if *stop.borrow() {
                return false;
            }
            let call = self.controller.register_broker(
                self.node_id,
                self.incarnation,
                listeners.to_vec(),
                None,
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

    async fn heartbeat(&self, want_shutdown: bool) -> Result<bool, ControllerError> {
        let request = HeartbeatRequest {
            broker_id: self.node_id,
            broker_epoch: self.broker_epoch(),
            metadata_offset: self.controller.metadata().metadata_offset,
            want_shutdown,
        };
        let sent = self.clock_ms();
        match tokio::time::timeout(self.request_timeout, self.controller.heartbeat(request)).await {
            Ok(r) => r.map(|r| {
                self.session_renewed(sent);
                r.fenced
            }),
            Err(_) => Err(ControllerError::NotAvailable("heartbeat timed out".into())),
        }
    }

    async fn membership(self: Arc<Self>, ctx: Arc<BrokerContext>, listeners: Vec<Endpoint>) {
        let mut stop = self.stop.subscribe();
        let mut images = self.controller.watch_metadata();
        // Replicas open and follow the metadata even before registration (a restarted broker
        // catches up while it is still fenced).
        let mut previous = images.borrow_and_update().clone();
        post_reconcile(&ctx, previous.clone());
        if !self.register(&mut stop, &listeners).await {
            return;
        }
        let mut tick = tokio::time::interval(self.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = tick.tick() => match self.heartbeat(false).await {
                    Ok(_) => {}
                    Err(ControllerError::Rejected(e)) => {
                        // A stale epoch or unknown broker: this registration is gone.
                        warn!("heartbeat refused ({e}); registering again");
                        if !self.register(&mut stop, &listeners).await {
                            return;
                        }
                    }
                    Err(e) => tracing::debug!("heartbeat failed: {e}"),
                },
                changed = images.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let image = images.borrow_and_update().clone();
                    post_topics_deleted(&ctx, &previous, &image);
                    post_reconcile(&ctx, image.clone());
                    previous = image;
                }
            }
        }
        // Controlled shutdown: fenced now, so leaderships move before the process stops.
        if let Err(e) = self.heartbeat(true).await {
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
    async fn wait_for_image(&self, done: impl Fn(&ClusterImage) -> bool) -> bool {
        poll_until(self.request_timeout, Duration::from_millis(10), || {
            std::future::ready(done(&self.controller.metadata()))
        })
        .await
    }
}

/// Polls `done` every `period` until it holds (true) or `timeout` has passed (false).
async fn poll_until<Fut: std::future::Future<Output = bool>>(
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

fn post_reconcile(ctx: &BrokerContext, image: Arc<ClusterImage>) {
    for s in 0..ctx.shard_count() {
        let image = image.clone();
        let job: Job = Box::new(move |shard: Rc<Shard>| {
            Box::pin(super::cluster_replica::reconcile(shard, image))
        });
        if ctx.post(s, job).is_err() {
            tracing::debug!(shard = s, "shard gone; metadata not applied");
        }
    }
}

/// Tells every shard's group coordinator which topics left the image (deleted, or deleted
/// and created again under a new id), so their committed offsets go too.
fn post_topics_deleted(ctx: &BrokerContext, before: &ClusterImage, after: &ClusterImage) {
    let gone: Vec<String> = before
        .topics
        .values()
        .filter(|t| {
            after
                .topic(&t.name)
                .is_none_or(|n| n.topic_id != t.topic_id)
        })
        .map(|t| t.name.clone())
        .collect();
    if gone.is_empty() {
        return;
    }
    for s in 0..ctx.shard_count() {
        let topics = gone.clone();
        let job: Job = Box::new(move |shard: Rc<Shard>| {
            Box::pin(super::groups::topics_deleted_here(shard, topics))
        });
        if ctx.post(s, job).is_err() {
            tracing::debug!(
                shard = s,
                "shard gone; topic deletion not told to its groups"
            );
        }
    }
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn controller_error(e: &ControllerError) -> (i16, String) {
    let code = match e {
        ControllerError::Rejected(m) => m.code(),
        ControllerError::NotAvailable(_) | ControllerError::Shutdown => NOT_CONTROLLER,
        _ => ec::UNKNOWN_SERVER_ERROR,
    };
    (code, e.to_string())
}

fn default_replication_factor(shard: &Shard) -> i16 {
    shard
        .ctx
        .config
        .raw
        .get("default.replication.factor")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1)
}

/// Creates a topic through the controller and waits until this node's image has it.
/// Waits (bounded by the request timeout) until every partition of `topic` that the image
/// says this broker leads is leader on its owner shard, so the creator's first request is not
/// answered NOT_LEADER_OR_FOLLOWER by a replica still opening. Partitions led elsewhere are
/// the client's to find (Metadata), as in Kafka.
async fn wait_local_leaders(shard: &Rc<Shard>, node: &ClusterNode, topic: &str) {
    poll_until(node.request_timeout, Duration::from_millis(5), || async {
        let image = node.cluster_image();
        let Some(t) = image.topic(topic) else {
            return true;
        };
        let mine: Vec<i32> = (0..t.partitions.len() as i32)
            .filter(|&p| t.partitions[p as usize].leader == Some(node.node_id))
            .collect();
        for p in mine {
            let name = topic.to_string();
            let led = shard
                .call(shard.ctx.owner(topic, p), move |s| async move {
                    super::cluster_replica::is_leader(&s, &name, p)
                })
                .await
                .unwrap_or(true);
            if !led {
                return false;
            }
        }
        true
    })
    .await;
}

/// Waits (bounded by the request timeout) until no shard of this broker holds a replica of
/// the deleted topic `topic_id` any more, so that when DeleteTopics answers, the partition
/// directories here are gone and the name can be reused at once.
async fn wait_local_deleted(shard: &Rc<Shard>, node: &ClusterNode, topic: &str, topic_id: Uuid) {
    poll_until(node.request_timeout, Duration::from_millis(5), || async {
        for target in 0..shard.ctx.shard_count() {
            let name = topic.to_string();
            let held = shard
                .call(target, move |s| async move {
                    super::cluster_replica::holds_topic(&s, &name, topic_id)
                })
                .await
                .unwrap_or(false);
            if held {
                return false;
            }
        }
        true
    })
    .await;
}

async fn create_topic(
    shard: &Rc<Shard>,
    node: &ClusterNode,
    name: &str,
    partitions: i32,
    replication_factor: i16,
    configs: BTreeMap<String, String>,
) -> Result<Uuid, (i16, String)> {
    let id = node
        .controller
        .create_topic(name, partitions, replication_factor, configs)
        .await
        .map_err(|e| controller_error(&e))?;
    if !node.wait_for_image(|i| i.topic(name).is_some()).await {
        return Err((ec::REQUEST_TIMED_OUT, "topic not visible in time".into()));
    }
    wait_local_leaders(shard, node, name).await;
    info!(
        topic = name,
        partitions, replication_factor, "created topic"
    );
    Ok(id)
}

/// CreateTopics.
pub async fn create_topics(
    shard: &Rc<Shard>,
    node: &ClusterNode,
    req: m::CreateTopicsRequest,
) -> m::CreateTopicsResponse {
    let mut resp = m::CreateTopicsResponse::default();
    for t in req.topics {
        let name = t.name.as_str().to_string();
        let mut configs = BTreeMap::new();
        for c in &t.configs {
            if let Some(v) = &c.value {
                configs.insert(c.name.as_str().to_string(), v.as_str().to_string());
            }
        }
        let partitions = if t.num_partitions == -1 {
            shard.ctx.config.num_partitions
        } else {
            t.num_partitions
        };
        let rf = if t.replication_factor == -1 {
            default_replication_factor(shard)
        } else {
            t.replication_factor
        };
        let check = || -> Result<(), (i16, String)> {
            validate_topic_name(&name).map_err(|e| (ec::INVALID_TOPIC_EXCEPTION, e))?;
            if node.cluster_image().topic(&name).is_some() {
                return Err((
                    ec::TOPIC_ALREADY_EXISTS,
                    format!("topic `{name}` already exists"),
                ));
            }
            if !t.assignments.is_empty() {
                return Err((
                    ec::INVALID_REPLICA_ASSIGNMENT,
                    "manual replica assignment is not supported; placement is the controller's"
                        .into(),
                ));
            }
            if !(1..=MAX_PARTITIONS_PER_TOPIC).contains(&partitions) {
                return Err((
                    ec::INVALID_PARTITIONS,
                    format!("number of partitions must be in 1..={MAX_PARTITIONS_PER_TOPIC}"),
                ));
            }
            let live = node.cluster_image().live_brokers().len();
            if rf < 1 || rf as usize > live {
                return Err((
                    ec::INVALID_REPLICATION_FACTOR,
                    format!("replication factor {rf} with {live} live brokers"),
                ));
            }
            validate_topic_configs(shard, &configs).map_err(|e| (ec::INVALID_CONFIG, e))?;
            Ok(())
        };
        let outcome = match check() {
            Ok(()) if req.validate_only => Ok(Uuid::nil()),
            Ok(()) => create_topic(shard, node, &name, partitions, rf, configs.clone()).await,
            Err(e) => Err(e),
        };
        let mut result =
            m::create_topics_response::CreatableTopicResult::default().with_name(t.name.clone());
        match outcome {
            Ok(id) => {
                let cs = effective_topic_configs(shard, &configs)
                    .into_iter()
                    .map(|(k, v, src)| {
                        m::create_topics_response::CreatableTopicConfigs::default()
                            .with_name(StrBytes::from_string(k))
                            .with_value(Some(StrBytes::from_string(v)))
                            .with_config_source(src)
                    })
                    .collect();
                result = result
                    .with_topic_id(id)
                    .with_num_partitions(partitions)
                    .with_replication_factor(rf)
                    .with_configs(Some(cs));
            }
            Err((code, msg)) => {
                result = result
                    .with_error_code(code)
                    .with_error_message(Some(StrBytes::from_string(msg)))
                    .with_num_partitions(-1)
                    .with_replication_factor(-1);
            }
        }
        resp.topics.push(result);
    }
    resp
}

/// DeleteTopics: every broker deletes its replicas when the deletion reaches
/// its metadata image.
pub async fn delete_topics(
    shard: &Rc<Shard>,
    node: &ClusterNode,
    version: i16,
    req: m::DeleteTopicsRequest,
) -> m::DeleteTopicsResponse {
    let targets: Vec<(Option<String>, Uuid)> = if version >= 6 {
        req.topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.as_str().to_string()), t.topic_id))
            .collect()
    } else {
        req.topic_names
            .iter()
            .map(|n| (Some(n.as_str().to_string()), Uuid::nil()))
            .collect()
    };
    let mut resp = m::DeleteTopicsResponse::default();
    for (name, id) in targets {
        let image = node.cluster_image();
        let found = match &name {
            Some(n) => image.topic(n),
            None => image.topic_by_id(id),
        }
        .map(|t| (t.name.clone(), t.topic_id));
        let mut r = m::delete_topics_response::DeletableTopicResult::default()
            .with_name(name.as_deref().map(|n| TopicName(str_bytes(n))))
            .with_topic_id(id);
        match found {
            None => {
                r = r.with_error_code(if name.is_some() {
                    ec::UNKNOWN_TOPIC_OR_PARTITION
                } else {
                    ec::UNKNOWN_TOPIC_ID
                });
            }
            Some((topic, topic_id)) if topic == crate::group::OFFSETS_TOPIC => {
                r = r
                    .with_name(Some(TopicName(str_bytes(&topic))))
                    .with_topic_id(topic_id)
                    .with_error_code(ec::INVALID_TOPIC_EXCEPTION)
                    .with_error_message(Some(str_bytes("the internal topic cannot be deleted")));
            }
            Some((topic, topic_id)) => {
                r = r
                    .with_name(Some(TopicName(str_bytes(&topic))))
                    .with_topic_id(topic_id);
                let command = MetadataCommand::DeleteTopic {
                    name: topic.clone(),
                };
                match node.controller.propose(command).await {
                    Ok(_) => {
                        node.wait_for_image(|i| i.topic(&topic).is_none()).await;
                        wait_local_deleted(shard, node, &topic, topic_id).await;
                        info!(topic, "deleted topic");
                    }
                    Err(e) => {
                        let (code, msg) = controller_error(&e);
                        r = r
                            .with_error_code(code)
                            .with_error_message(Some(StrBytes::from_string(msg)));
                    }
                }
            }
        }
        resp.responses.push(r);
    }
    resp
}

/// CreatePartitions.
pub async fn create_partitions(
    shard: &Rc<Shard>,
    node: &ClusterNode,
    req: m::CreatePartitionsRequest,
) -> m::CreatePartitionsResponse {
    let mut resp = m::CreatePartitionsResponse::default();
    for t in req.topics {
        let name = t.name.as_str().to_string();
        let outcome: Result<(), (i16, String)> = async {
            let image = node.cluster_image();
            let topic = image.topic(&name).ok_or((
                ec::UNKNOWN_TOPIC_OR_PARTITION,
                format!("topic `{name}` does not exist"),
            ))?;
            let old = topic.partitions.len() as i32;
            if t.count > MAX_PARTITIONS_PER_TOPIC || t.count <= old {
                return Err((
                    ec::INVALID_PARTITIONS,
                    format!("topic has {old} partitions; the new count must be larger (at most {MAX_PARTITIONS_PER_TOPIC})"),
                ));
            }
            if t.assignments.as_ref().is_some_and(|a| !a.is_empty()) {
                return Err((
                    ec::INVALID_REPLICA_ASSIGNMENT,
                    "manual replica assignment is not supported".into(),
                ));
            }
            if req.validate_only {
                return Ok(());
            }
            let command = MetadataCommand::CreatePartitions {
                name: name.clone(),
                total_count: t.count,
                placement_start: rand::random::<u32>(),
            };
            node.controller
                .propose(command)
                .await
                .map_err(|e| controller_error(&e))?;
            node.wait_for_image(|i| {
                i.topic(&name)
                    .is_some_and(|t2| t2.partitions.len() as i32 >= t.count)
            })
            .await;
            wait_local_leaders(shard, node, &name).await;
            info!(topic = name, from = old, to = t.count, "added partitions");
            Ok(())
        }
        .await;
        let mut r = m::create_partitions_response::CreatePartitionsTopicResult::default()
            .with_name(t.name.clone());
        if let Err((code, msg)) = outcome {
            r = r
                .with_error_code(code)
                .with_error_message(Some(StrBytes::from_string(msg)));
        }
        resp.results.push(r);
    }
    resp
}

/// IncrementalAlterConfigs (topic resources): one ConfigChange proposal.
pub async fn incremental_alter_configs(
    shard: &Rc<Shard>,
    node: &ClusterNode,
    req: m::IncrementalAlterConfigsRequest,
) -> m::IncrementalAlterConfigsResponse {
    const RESOURCE_TOPIC: i8 = 2;
    let mut resp = m::IncrementalAlterConfigsResponse::default();
    for r in req.resources {
        let name = r.resource_name.as_str().to_string();
        let outcome: Result<(), (i16, String)> = async {
            if r.resource_type != RESOURCE_TOPIC {
                return Err((
                    ec::INVALID_REQUEST,
                    "only topic configs can be altered (broker configs are static)".into(),
                ));
            }
            let image = node.cluster_image();
            let topic = image.topic(&name).ok_or((
                ec::UNKNOWN_TOPIC_OR_PARTITION,
                format!("topic `{name}` does not exist"),
            ))?;
            let mut configs = topic.configs.clone();
            let mut changes = BTreeMap::new();
            for c in &r.configs {
                let key = c.name.as_str().to_string();
                match c.config_operation {
                    0 => {
                        let v = c
                            .value
                            .as_ref()
                            .ok_or((ec::INVALID_CONFIG, format!("SET `{key}` without a value")))?;
                        configs.insert(key.clone(), v.as_str().to_string());
                        changes.insert(key, Some(v.as_str().to_string()));
                    }
                    1 => {
                        configs.remove(&key);
                        changes.insert(key, None);
                    }
                    2 | 3 if key == "cleanup.policy" => {
                        // APPEND / SUBTRACT on the list, from the effective value.
                        let v = c.value.as_ref().map(|v| v.as_str().to_string());
                        let v =
                            v.ok_or((ec::INVALID_CONFIG, format!("`{key}` without a value")))?;
                        let current = shard.ctx.config.topic_value(&key, &configs);
                        let mut list: Vec<String> = current
                            .unwrap_or_default()
                            .split(',')
                            .map(|p| p.trim().to_string())
                            .filter(|p| !p.is_empty())
                            .collect();
                        for item in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                            let has = list.iter().any(|p| p == item);
                            if c.config_operation == 2 && !has {
                                list.push(item.to_string());
                            } else if c.config_operation == 3 {
                                list.retain(|p| p != item);
                            }
                        }
                        let joined = list.join(",");
                        configs.insert(key.clone(), joined.clone());
                        changes.insert(key, Some(joined));
                    }
                    op => {
                        return Err((
                            ec::INVALID_CONFIG,
                            format!("operation {op} is not valid for `{key}`"),
                        ))
                    }
                }
            }
            if changes.contains_key(crate::controller::REPLICATION_MODE_CONFIG) {
                return Err((
                    ec::INVALID_CONFIG,
                    "replication.mode is fixed when the topic is created".into(),
                ));
            }
            validate_topic_configs(shard, &configs).map_err(|e| (ec::INVALID_CONFIG, e))?;
            if req.validate_only {
                return Ok(());
            }
            let command = MetadataCommand::ConfigChange {
                resource: ConfigResource::Topic(name.clone()),
                changes,
            };
            node.controller
                .propose(command)
                .await
                .map_err(|e| controller_error(&e))?;
            node.wait_for_image(|i| i.topic(&name).is_some_and(|t| t.configs == configs))
                .await;
            // The replicas here run with the new config before the answer (reconciliation
            // applies it too, later, on every broker).
            let calls = (0..shard.ctx.shard_count()).map(|s| {
                let topic = name.clone();
                shard.call(s, move |sh| sh.apply_topic_config(topic))
            });
            for c in futures_util::future::join_all(calls).await {
                c.map_err(|e| (ec::UNKNOWN_SERVER_ERROR, e.to_string()))?;
            }
            info!(topic = name, "altered topic config");
            Ok(())
        }
        .await;
        resp.responses
            .push(super::handlers::alter_config_result(&r, outcome));
    }
    resp
}

fn describe_partitions(
    image: &ClusterImage,
    topic: &crate::controller::TopicImage,
) -> m::metadata_response::MetadataResponseTopic {
    let live = |b: &i32| image.broker(*b).is_some_and(|r| !r.fenced);
    let partitions = topic
        .partitions
        .iter()
        .map(|p| {
            let ids = |v: &[i32]| v.iter().map(|b| BrokerId(*b)).collect::<Vec<_>>();
            let offline: Vec<i32> = p.replicas.iter().copied().filter(|b| !live(b)).collect();
            m::metadata_response::MetadataResponsePartition::default()
                .with_error_code(if p.leader.is_some() {
                    ec::NONE
                } else {
                    LEADER_NOT_AVAILABLE
                })
                .with_partition_index(p.partition)
                .with_leader_id(BrokerId(p.leader.unwrap_or(-1)))
                .with_leader_epoch(p.leader_epoch)
                .with_replica_nodes(ids(&p.replicas))
                .with_isr_nodes(ids(&p.isr))
                .with_offline_replicas(ids(&offline))
        })
        .collect();
    m::metadata_response::MetadataResponseTopic::default()
        .with_name(Some(TopicName(str_bytes(&topic.name))))
        .with_topic_id(topic.topic_id)
        .with_is_internal(topic.name == crate::group::OFFSETS_TOPIC)
        .with_partitions(partitions)
}

/// Metadata: every live broker, and each partition's leader, leader epoch,
/// replicas, ISR and offline replicas from the controller image.
pub async fn metadata(
    shard: &Rc<Shard>,
    node: &ClusterNode,
    version: i16,
    req: m::MetadataRequest,
) -> m::MetadataResponse {
    let cfg = &shard.ctx.config;
    let mut image = node.cluster_image();
    let all = match &req.topics {
        None => true,
        Some(t) => t.is_empty() && version == 0,
    };
    let mut topics = Vec::new();
    if all {
        topics.extend(
            image
                .topics
                .values()
                .map(|t| describe_partitions(&image, t)),
        );
    } else {
        let allow_auto = cfg.auto_create_topics && (version < 4 || req.allow_auto_topic_creation);
        for rt in req.topics.iter().flatten() {
            if rt.name.is_none() && !rt.topic_id.is_nil() {
                match image.topic_by_id(rt.topic_id) {
                    Some(t) => topics.push(describe_partitions(&image, t)),
                    None => topics.push(
                        m::metadata_response::MetadataResponseTopic::default()
                            .with_topic_id(rt.topic_id)
                            .with_error_code(ec::UNKNOWN_TOPIC_ID),
                    ),
                }
                continue;
            }
            let name = rt
                .name
                .as_ref()
                .map(|n| n.as_str().to_string())
                .unwrap_or_default();
            if let Some(t) = image.topic(&name) {
                topics.push(describe_partitions(&image, t));
                continue;
            }
            let unknown = |code| {
                m::metadata_response::MetadataResponseTopic::default()
                    .with_name(Some(TopicName(str_bytes(&name))))
                    .with_error_code(code)
            };
            if validate_topic_name(&name).is_err() {
                topics.push(unknown(ec::INVALID_TOPIC_EXCEPTION));
                continue;
            }
            if !allow_auto {
                topics.push(unknown(ec::UNKNOWN_TOPIC_OR_PARTITION));
                continue;
            }
            let created = if name == crate::group::records::OFFSETS_TOPIC {
                // The internal topic is created with its own partitions, replication and
                // configs (as Kafka's auto-creation does), never the defaults of user topics.
                let n = shard.groups.offsets_partitions();
                super::groups::ensure_offsets_topic_cluster(node, cfg, n)
                    .await
                    .map(|()| Uuid::nil())
                    .map_err(|e| (ec::COORDINATOR_NOT_AVAILABLE, e))
            } else {
                let rf = default_replication_factor(shard);
                create_topic(shard, node, &name, cfg.num_partitions, rf, BTreeMap::new()).await
            };
            if created.is_ok() {
                let _ = node.wait_for_image(|i| i.topic(&name).is_some()).await;
            }
            image = node.cluster_image();
            match (created, image.topic(&name)) {
                (_, Some(t)) => topics.push(describe_partitions(&image, t)),
                (Err((code, msg)), None) => {
                    warn!(topic = name, "auto-create failed: {msg}");
                    topics.push(unknown(code));
                }
                (Ok(_), None) => topics.push(unknown(LEADER_NOT_AVAILABLE)),
            }
        }
    }
    if !node.session_alive() {
        // This broker's session has expired (or is about to): its leaderships are moving,
        // and naming itself leader would send clients back here. They ask another broker.
        for p in topics.iter_mut().flat_map(|t| t.partitions.iter_mut()) {
            if p.leader_id.0 == node.node_id {
                p.leader_id = BrokerId(-1);
                p.error_code = LEADER_NOT_AVAILABLE;
            }
        }
    }
    let listener = super::connection::listener_name(cfg);
    let brokers = image
        .brokers
        .values()
        .filter(|b| !b.fenced || b.broker_id == node.node_id)
        .filter_map(|b| {
            let ep = b.endpoint(&listener)?;
            Some(
                m::metadata_response::MetadataResponseBroker::default()
                    .with_node_id(BrokerId(b.broker_id))
                    .with_host(str_bytes(&ep.host))
                    .with_port(i32::from(ep.port))
                    .with_rack(b.rack.as_deref().map(str_bytes)),
            )
        })
        .collect();
    // Clients send admin requests to the controller id; every broker forwards them, so while
    // the controller is unknown or not a listed broker, name this broker (as KRaft brokers do).
    let controller = node
        .controller
        .controller_id()
        .and_then(|c| i32::try_from(c).ok())
        .filter(|c| image.broker(*c).is_some_and(|b| !b.fenced))
        .unwrap_or(node.node_id);
    m::MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(str_bytes(&node.cluster_id)))
        .with_controller_id(BrokerId(controller))
        .with_topics(topics)
}

/// DescribeCluster: the registered brokers and the active controller.
pub fn describe_cluster(shard: &Shard, node: &ClusterNode) -> m::DescribeClusterResponse {
    let image = node.cluster_image();
    let listener = super::connection::listener_name(&shard.ctx.config);
    let brokers = image
        .brokers
        .values()
        .filter_map(|b| {
            let ep = b.endpoint(&listener)?;
            Some(
                m::describe_cluster_response::DescribeClusterBroker::default()
                    .with_broker_id(BrokerId(b.broker_id))
                    .with_host(str_bytes(&ep.host))
                    .with_port(i32::from(ep.port))
                    .with_rack(b.rack.as_deref().map(str_bytes))
                    .with_is_fenced(b.fenced),
            )
        })
        .collect();
    let controller = node
        .controller
        .controller_id()
        .and_then(|c| i32::try_from(c).ok())
        .unwrap_or(-1);
    m::DescribeClusterResponse::default()
        .with_cluster_id(str_bytes(&node.cluster_id))
        .with_controller_id(BrokerId(controller))
        .with_endpoint_type(1)
        .with_brokers(brokers)
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
