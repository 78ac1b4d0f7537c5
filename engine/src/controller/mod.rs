//! The cluster controller: a Raft quorum of controller voters (openraft) replicating the
//! cluster metadata log, KRaft-style. The Raft leader is the controller.
//!
//! Module map:
//! - [`metadata`]: the sans-IO metadata state machine ([`MetadataImage`], [`MetadataCommand`]),
//!   placement, fencing, elections through the replication policies, snapshots.
//! - [`scram`]: the SCRAM credentials of the image and their one command.
//! - [`session`]: broker session expiry, kept by the controller leader in memory.
//! - [`store`]: openraft's log store and state machine over `<data>/__cluster_metadata/`.
//! - [`network`]: length-prefixed JSON RPC over TCP between voters and from brokers.
//! - this file: [`Controller`], the handle the broker uses, and `--controller-voters` parsing.
//!
//! Runtime: the controller runs on its own OS thread with a tokio current-thread runtime
//! (openraft needs tokio); broker shards talk to it through the [`Controller`] handle, whose
//! async methods hand work to that thread and await a oneshot answer, so no shard ever runs
//! Raft code or blocks on the metadata disk.

pub mod error;
pub mod metadata;
pub mod network;
pub mod scram;
pub mod session;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, Raft, SnapshotPolicy};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

pub use error::{ControllerError, MetadataError};
pub use metadata::{
    Applied, ApplyResult, BrokerRegistration, ConfigResource, Endpoint, MetadataCommand,
    MetadataImage, PartitionImage, ReplicaLogPosition, TopicImage, PRODUCER_ID_BLOCK_SIZE,
    REPLICATION_MODE_CONFIG,
};
pub use network::{HeartbeatRequest, HeartbeatResponse};
pub use scram::{AlterScramCredentials, ScramCredentials, ScramDeletion, ScramUpsertion};
pub use store::NodeId;

use crate::replication::{BrokerId, ReplicationMode};
use crate::security::tls::PeerTls;
use network::{ApplyHeartbeat, Redirect, RpcRequest, RpcResponse};
use session::BrokerSessions;
use store::{LogStore, StateMachineStore};

openraft::declare_raft_types!(
    /// openraft's type configuration for the metadata quorum.
    pub TypeConfig:
        D = MetadataCommand,
        R = ApplyResult,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A server-side controller connection idle this long is closed.
const IDLE_CONNECTION: Duration = Duration::from_secs(60);
/// How long a peer of the SSL controller channel may take to complete its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The directory under a node's data dir that holds the metadata quorum's files.
pub const METADATA_DIR: &str = "__cluster_metadata";

/// One controller voter from `controller.quorum.voters`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voter {
    /// The voter's `node.id`.
    pub id: NodeId,
    /// `host:port` of its controller listener.
    pub addr: String,
}

/// Parses `controller.quorum.voters` / `--controller-voters`: `id@host:port,id@host:port,...`.
pub fn parse_voters(spec: &str) -> Result<Vec<Voter>, ControllerError> {
    let mut voters = Vec::new();
    let mut ids = BTreeSet::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad =
            || ControllerError::InvalidConfig(format!("bad voter `{part}`, want id@host:port"));
        let (id, addr) = part.split_once('@').ok_or_else(bad)?;
        let id: NodeId = id.trim().parse().map_err(|_| bad())?;
        let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(bad());
        }
        if !ids.insert(id) {
            return Err(ControllerError::InvalidConfig(format!(
                "voter id {id} listed twice"
            )));
        }
        voters.push(Voter {
            id,
            addr: addr.to_string(),
        });
    }
    if voters.is_empty() {
        return Err(ControllerError::InvalidConfig(
            "controller.quorum.voters is empty".into(),
        ));
    }
    Ok(voters)
}

/// The metadata quorum as one voter sees it ([`Controller::quorum`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumState {
    /// The Raft leader (the active controller), if known.
    pub leader: Option<NodeId>,
    /// The Raft term (KRaft's leader epoch of the metadata log).
    pub term: u64,
    /// Whether this voter leads.
    pub is_leader: bool,
    /// The offset after the last metadata record this voter applied (its high watermark).
    pub applied_offset: i64,
    /// On the leader: milliseconds since a voter majority last acknowledged it.
    pub millis_since_quorum_ack: Option<u64>,
    /// Every voter with its log end offset (-1: unknown here).
    pub voters: Vec<VoterState>,
}

/// One voter of the metadata quorum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoterState {
    /// Its node id.
    pub id: NodeId,
    /// The offset after its last metadata log entry (-1: unknown to this voter).
    pub log_end_offset: i64,
}

/// Controller settings (Kafka names where Kafka has one).
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// `broker.session.timeout.ms`: a broker silent this long is fenced.
    pub broker_session_timeout_ms: u64,
    /// Raft heartbeat interval (`controller.quorum.fetch.timeout.ms` plays this role in KRaft).
    pub raft_heartbeat_ms: u64,
    /// Lower bound of the Raft election timeout (`controller.quorum.election.timeout.ms`).
    pub raft_election_timeout_ms: u64,
    /// How long a proposal or heartbeat keeps retrying to find a controller.
    pub request_timeout_ms: u64,
    /// Metadata log entries between snapshots.
    pub snapshot_every_entries: u64,
    /// Cluster default of `replication.mode` for new topics.
    pub default_replication_mode: ReplicationMode,
    /// Broker-only nodes: how often the metadata image is pulled from the controller.
    pub metadata_poll_ms: u64,
    /// TLS of the controller channel (`controller.listener.names` mapped to SSL): mutual TLS
    /// between voters and from brokers. `None`: plain TCP.
    pub tls: Option<crate::security::tls::TlsSettings>,
    /// `auto.leader.rebalance.enable`: the active controller runs preferred elections when
    /// a broker's leader imbalance is above the threshold.
    pub auto_leader_rebalance_enable: bool,
    /// `leader.imbalance.per.broker.percentage` (0-100).
    pub leader_imbalance_per_broker_percentage: u32,
    /// `leader.imbalance.check.interval.seconds`.
    pub leader_imbalance_check_interval_seconds: u64,
}

impl ControllerConfig {
    /// Applies one `key=value` setting from the broker's config; `Ok(false)` if the key is not
    /// a controller setting.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool, ControllerError> {
        let number = || {
            value
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| {
                    ControllerError::InvalidConfig(format!(
                        "{key} must be a positive integer, got `{value}`"
                    ))
                })
        };
        match key {
            "broker.session.timeout.ms" => self.broker_session_timeout_ms = number()?,
            "controller.quorum.election.timeout.ms" => self.raft_election_timeout_ms = number()?,
            "controller.quorum.heartbeat.interval.ms" => self.raft_heartbeat_ms = number()?,
            "controller.quorum.request.timeout.ms" => self.request_timeout_ms = number()?,
            "metadata.snapshot.interval.entries" => self.snapshot_every_entries = number()?,
            "metadata.poll.interval.ms" => self.metadata_poll_ms = number()?,
            "leader.imbalance.check.interval.seconds" => {
                self.leader_imbalance_check_interval_seconds = number()?
            }
            "leader.imbalance.per.broker.percentage" => {
                self.leader_imbalance_per_broker_percentage = value
                    .trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|&n| n <= 100)
                    .ok_or_else(|| {
                        ControllerError::InvalidConfig(format!(
                            "{key} must be an integer from 0 to 100, got `{value}`"
                        ))
                    })?
            }
            "auto.leader.rebalance.enable" => {
                self.auto_leader_rebalance_enable = match value.trim() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(ControllerError::InvalidConfig(format!(
                            "{key} must be true or false, got `{value}`"
                        )))
                    }
                }
            }
            "replication.mode" => {
                self.default_replication_mode =
                    value
                        .parse()
                        .map_err(|e: crate::replication::ReplicationError| {
                            ControllerError::InvalidConfig(e.to_string())
                        })?
            }
            _ => return Ok(false),
        }
        if self.raft_heartbeat_ms >= self.raft_election_timeout_ms {
            return Err(ControllerError::InvalidConfig(
                "the Raft heartbeat interval must be below the election timeout".into(),
            ));
        }
        Ok(true)
    }
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            broker_session_timeout_ms: 9_000,
            raft_heartbeat_ms: 100,
            raft_election_timeout_ms: 1_000,
            request_timeout_ms: 10_000,
            snapshot_every_entries: 1_000,
            default_replication_mode: ReplicationMode::Isr,
            metadata_poll_ms: 200,
            tls: None,
            auto_leader_rebalance_enable: true,
            leader_imbalance_per_broker_percentage: 10,
            leader_imbalance_check_interval_seconds: 300,
        }
    }
}

/// State shared by the controller thread's tasks.
struct Core {
    node_id: NodeId,
    /// `None` on a broker-only node (not a voter): it forwards calls and pulls metadata.
    raft: Option<Raft<TypeConfig>>,
    voters: BTreeMap<NodeId, String>,
    /// The controller a broker-only node last heard of.
    observed_leader: Mutex<Option<NodeId>>,
    /// Round-robin cursor over voters for a broker-only node that knows no controller.
    next_voter: AtomicUsize,
    sessions: Mutex<BrokerSessions>,
    image: watch::Receiver<Arc<MetadataImage>>,
    config: ControllerConfig,
    /// TLS of the controller channel, both directions (`config.tls` loaded).
    channel: Option<Arc<PeerTls>>,
    epoch: Instant,
}

enum Call {
    Propose(MetadataCommand),
    Heartbeat(HeartbeatRequest),
}

enum Answer {
    Applied(ApplyResult),
    Heartbeat(ApplyHeartbeat),
}

impl Core {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn leader(&self) -> Option<NodeId> {
        match &self.raft {
            Some(raft) => raft.metrics().borrow().current_leader,
            None => *self
                .observed_leader
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        }
    }

    fn observe_leader(&self, leader: Option<NodeId>) {
        if self.raft.is_none() {
            *self
                .observed_leader
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = leader;
        }
    }

    /// The next voter to try when no controller is known (broker-only nodes).
    fn any_voter(&self) -> Option<NodeId> {
        if self.voters.is_empty() {
            return None;
        }
        let i = self.next_voter.fetch_add(1, AtomicOrdering::Relaxed) % self.voters.len();
        self.voters.keys().nth(i).copied()
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, BrokerSessions> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn propose_local(&self, command: MetadataCommand) -> Result<ApplyResult, Redirect> {
        let Some(raft) = &self.raft else {
            return Err(Redirect::NotController(self.leader()));
        };
        match raft.client_write(command).await {
            Ok(response) => Ok(response.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(Redirect::NotController(f.leader_id))
            }
            Err(e) => {
                tracing::debug!(error = %e, "metadata proposal failed locally");
                Err(Redirect::NotController(None))
            }
        }
    }

    async fn heartbeat_local(&self, request: HeartbeatRequest) -> Result<ApplyHeartbeat, Redirect> {
        if self.leader() != Some(self.node_id) {
            return Err(Redirect::NotController(self.leader()));
        }
        // A leader that has not heard from a voter majority for an election timeout may be
        // cut off and replaced: it must not renew sessions (the broker beside it would keep
        // leading partitions that the real controller moves away).
        if self.voters.len() > 1 {
            let acked = self
                .raft
                .as_ref()
                .and_then(|r| r.metrics().borrow().millis_since_quorum_ack);
            if acked.is_none_or(|ms| ms > self.config.raft_election_timeout_ms) {
                return Err(Redirect::NotController(None));
            }
        }
        let image = self.image.borrow().clone();
        let broker = match image.broker(request.broker_id) {
            Some(b) => b.clone(),
            None => return Ok(Err(MetadataError::BrokerIdNotRegistered(request.broker_id))),
        };
        if broker.broker_epoch != request.broker_epoch {
            return Ok(Err(MetadataError::StaleBrokerEpoch {
                broker_id: request.broker_id,
                request: request.broker_epoch,
                current: broker.broker_epoch,
            }));
        }
        if request.want_shutdown {
            // Controlled shutdown: move the broker's leaderships now rather than after its
            // session expires, as Kafka does for a broker that asks to shut down.
            self.sessions().remove(request.broker_id);
            if !broker.fenced {
                let fence = MetadataCommand::FenceBroker {
                    broker_id: request.broker_id,
                    broker_epoch: request.broker_epoch,
                };
                if let Err(e) = self.propose_local(fence).await? {
                    return Ok(Err(e));
                }
            }
            return Ok(Ok(HeartbeatResponse {
                fenced: true,
                metadata_offset: self.image.borrow().metadata_offset,
            }));
        }
        self.sessions()
            .heartbeat(request.broker_id, request.broker_epoch, self.now_ms());
        let mut fenced = broker.fenced;
        if fenced {
            let unfence = MetadataCommand::UnfenceBroker {
                broker_id: request.broker_id,
                broker_epoch: request.broker_epoch,
            };
            match self.propose_local(unfence).await? {
                Ok(_) => fenced = false,
                Err(e) => return Ok(Err(e)),
            }
        }
        Ok(Ok(HeartbeatResponse {
            fenced,
            metadata_offset: self.image.borrow().metadata_offset,
        }))
    }

    async fn serve_local(&self, call: &Call) -> Result<Answer, Redirect> {
        match call {
            Call::Propose(c) => self.propose_local(c.clone()).await.map(Answer::Applied),
            Call::Heartbeat(h) => self.heartbeat_local(h.clone()).await.map(Answer::Heartbeat),
        }
    }

    /// Serves `call` here if this node is the controller, else forwards it to the controller,
    /// retrying through elections until the request timeout.
    async fn call(&self, call: Call) -> Result<Answer, ControllerError> {
        let timeout = Duration::from_millis(self.config.request_timeout_ms);
        let deadline = Instant::now() + timeout;
        let rpc_timeout = Duration::from_millis(self.config.request_timeout_ms.clamp(100, 2_000));
        let mut hint: Option<NodeId> = None;
        let mut last_error = String::from("no controller elected");
        while Instant::now() < deadline {
            let target = hint.take().or_else(|| self.leader()).or_else(|| {
                if self.raft.is_none() {
                    self.any_voter()
                } else {
                    None
                }
            });
            let redirect = match target {
                None => None,
                Some(id) if id == self.node_id => match self.serve_local(&call).await {
                    Ok(answer) => return Ok(answer),
                    Err(Redirect::NotController(h)) => h,
                },
                Some(id) => {
                    let Some(addr) = self.voters.get(&id) else {
                        return Err(ControllerError::NotAvailable(format!(
                            "leader {id} is not a configured voter"
                        )));
                    };
                    let request = match &call {
                        Call::Propose(c) => RpcRequest::Propose(c.clone()),
                        Call::Heartbeat(h) => RpcRequest::Heartbeat(h.clone()),
                    };
                    match network::call(addr, self.channel.as_deref(), &request, rpc_timeout).await
                    {
                        Ok(RpcResponse::Propose(Ok(r))) => return Ok(Answer::Applied(r)),
                        Ok(RpcResponse::Heartbeat(Ok(r))) => return Ok(Answer::Heartbeat(r)),
                        Ok(RpcResponse::Propose(Err(Redirect::NotController(h))))
                        | Ok(RpcResponse::Heartbeat(Err(Redirect::NotController(h)))) => {
                            self.observe_leader(h);
                            h
                        }
                        Ok(other) => {
                            last_error = format!("unexpected response {other:?}");
                            None
                        }
                        Err(e) => {
                            last_error = format!("controller {id} at {addr}: {e}");
                            self.observe_leader(None);
                            None
                        }
                    }
                }
            };
            // Follow a fresh redirect at once; otherwise wait for an election to settle.
            match redirect {
                Some(h) if Some(h) != target => hint = Some(h),
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        Err(ControllerError::NotAvailable(last_error))
    }

    async fn handle_rpc(self: &Arc<Self>, request: RpcRequest) -> RpcResponse {
        let Some(raft) = &self.raft else {
            return RpcResponse::NotAVoter;
        };
        match request {
            RpcRequest::AppendEntries(r) => {
                RpcResponse::AppendEntries(raft.append_entries(r).await)
            }
            RpcRequest::Vote(r) => RpcResponse::Vote(raft.vote(r).await),
            RpcRequest::InstallSnapshot(r) => {
                RpcResponse::InstallSnapshot(raft.install_snapshot(r).await)
            }
            RpcRequest::Propose(c) => RpcResponse::Propose(self.propose_local(c).await),
            RpcRequest::Heartbeat(h) => RpcResponse::Heartbeat(self.heartbeat_local(h).await),
            RpcRequest::ReadMetadata => RpcResponse::Metadata {
                image: Box::new((**self.image.borrow()).clone()),
                controller: self.leader(),
            },
        }
    }

    /// Broker-only nodes: fetch the image from the controller (or any voter while none is
    /// known) and publish it when it moved forward.
    async fn pull_metadata(&self, publish: &watch::Sender<Arc<MetadataImage>>) {
        let Some(id) = self.leader().or_else(|| self.any_voter()) else {
            return;
        };
        let Some(addr) = self.voters.get(&id) else {
            return;
        };
        let timeout = Duration::from_millis(self.config.request_timeout_ms.clamp(100, 2_000));
        match network::call(
            addr,
            self.channel.as_deref(),
            &RpcRequest::ReadMetadata,
            timeout,
        )
        .await
        {
            Ok(RpcResponse::Metadata { image, controller }) => {
                self.observe_leader(controller);
                if image.metadata_offset > publish.borrow().metadata_offset {
                    publish.send_replace(Arc::new(*image));
                }
            }
            Ok(other) => tracing::debug!(voter = id, "unexpected metadata answer {other:?}"),
            Err(e) => {
                tracing::debug!(voter = id, error = %e, "metadata pull failed");
                self.observe_leader(None);
            }
        }
    }

    /// On the leader: start sessions for live brokers it has not heard from and fence the
    /// expired ones. Elsewhere: forget sessions, a new leader starts them afresh.
    async fn tick_sessions(&self) {
        if self.leader() != Some(self.node_id) {
            self.sessions().clear();
            return;
        }
        let now = self.now_ms();
        let image = self.image.borrow().clone();
        let expired = {
            let mut sessions = self.sessions();
            for b in image.brokers.values() {
                if b.fenced {
                    sessions.remove(b.broker_id);
                } else {
                    sessions.ensure(b.broker_id, b.broker_epoch, now);
                }
            }
            sessions.expired(now)
        };
        for (broker_id, broker_epoch) in expired {
            tracing::warn!(broker_id, broker_epoch, "broker session expired; fencing");
            let fence = MetadataCommand::FenceBroker {
                broker_id,
                broker_epoch,
            };
            match self.propose_local(fence).await {
                Ok(_) => self.sessions().remove(broker_id),
                Err(_) => return,
            }
        }
    }
}

impl Core {
    /// On the leader, with `auto.leader.rebalance.enable`: Kafka's leader imbalance check
    /// ([`MetadataImage::imbalanced_partitions`]), then one preferred election command for
    /// the partitions it names.
    async fn tick_rebalance(&self) {
        if !self.config.auto_leader_rebalance_enable || self.leader() != Some(self.node_id) {
            return;
        }
        let image = self.image.borrow().clone();
        let partitions =
            image.imbalanced_partitions(self.config.leader_imbalance_per_broker_percentage);
        if partitions.is_empty() {
            return;
        }
        tracing::info!(
            partitions = partitions.len(),
            "leader imbalance above leader.imbalance.per.broker.percentage; electing preferred leaders"
        );
        let command = MetadataCommand::ElectLeaders {
            election: metadata::ElectionType::Preferred,
            partitions: Some(partitions),
        };
        match self.propose_local(command).await {
            Ok(Ok(metadata::Applied::Elections(results))) => {
                for r in results.iter().filter(|r| r.error_code != 0) {
                    tracing::debug!(
                        topic = r.topic,
                        partition = r.partition,
                        code = r.error_code,
                        "automatic preferred election not done"
                    );
                }
            }
            other => tracing::debug!("automatic preferred election: {other:?}"),
        }
    }
}

/// Serves one connection to the controller listener: the TLS handshake first when the
/// channel is SSL (a peer without a trusted certificate is logged and dropped).
async fn accept_connection(core: Arc<Core>, stream: TcpStream, peer: std::net::SocketAddr) {
    let _ = stream.set_nodelay(true);
    let Some(tls) = core.channel.clone() else {
        return serve_connection(core, stream).await;
    };
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
        Ok(Ok(stream)) => serve_connection(core, stream).await,
        Ok(Err(e)) => tracing::warn!(%peer, error = %e, "controller channel TLS handshake failed"),
        Err(_) => tracing::warn!(%peer, "controller channel TLS handshake timed out"),
    }
}

async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(core: Arc<Core>, mut stream: S) {
    loop {
        // Voters reuse connections and the leader heartbeats every few hundred milliseconds,
        // so a connection silent this long belongs to a peer that vanished without a FIN.
        let read = tokio::time::timeout(
            IDLE_CONNECTION,
            network::read_frame::<RpcRequest, _>(&mut stream),
        );
        let request = match read.await {
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "controller connection closed on a bad frame");
                return;
            }
            Err(_) => {
                tracing::debug!("idle controller connection closed");
                return;
            }
        };
        let response = core.handle_rpc(request).await;
        if let Err(e) = network::write_frame(&mut stream, &response).await {
            tracing::debug!(error = %e, "controller connection write failed");
            return;
        }
    }
}

/// The handle to this node's controller voter. Cheap to share behind an `Arc`; every method
/// may be called from any thread or runtime.
pub struct Controller {
    node_id: NodeId,
    core: Arc<Core>,
    runtime: tokio::runtime::Handle,
    image: watch::Receiver<Arc<MetadataImage>>,
    shutdown: Mutex<Option<oneshot::Sender<()>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    default_mode: ReplicationMode,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("node_id", &self.node_id)
            .field("controller_id", &self.controller_id())
            .finish()
    }
}

impl Controller {
    /// Starts this node's controller voter: opens `<data_dir>/__cluster_metadata/`, binds its
    /// voter address, joins (or first forms) the quorum, on a dedicated thread.
    pub fn start(
        node_id: NodeId,
        voters: &[Voter],
        data_dir: &Path,
        config: ControllerConfig,
    ) -> Result<Controller, ControllerError> {
        if voters.is_empty() {
            return Err(ControllerError::InvalidConfig(
                "controller.quorum.voters is empty".into(),
            ));
        }
        // A node that is not a voter runs as a broker-only observer of the quorum.
        let listen_addr = voters
            .iter()
            .find(|v| v.id == node_id)
            .map(|v| v.addr.clone());
        let voters: BTreeMap<NodeId, String> =
            voters.iter().map(|v| (v.id, v.addr.clone())).collect();
        let dir: PathBuf = data_dir.join(METADATA_DIR);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let default_mode = config.default_replication_mode;
        let thread = std::thread::Builder::new()
            .name(format!("controller-{node_id}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(ControllerError::Io(e)));
                        return;
                    }
                };
                runtime.block_on(run_controller(
                    node_id,
                    listen_addr,
                    voters,
                    dir,
                    config,
                    ready_tx,
                    shutdown_rx,
                ));
            })?;
        let (core, runtime, image) = match ready_rx.recv() {
            Ok(Ok(ready)) => ready,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(ControllerError::Shutdown);
            }
        };
        Ok(Controller {
            node_id,
            core,
            runtime,
            image,
            shutdown: Mutex::new(Some(shutdown_tx)),
            thread: Mutex::new(Some(thread)),
            default_mode,
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The node the quorum currently follows as controller, if one is elected.
    pub fn controller_id(&self) -> Option<NodeId> {
        self.core.leader()
    }

    /// Whether this node is the active controller.
    pub fn is_controller(&self) -> bool {
        self.controller_id() == Some(self.node_id)
    }

    /// The metadata image this voter has applied.
    pub fn metadata(&self) -> Arc<MetadataImage> {
        self.image.borrow().clone()
    }

    /// A watch that sees every newly applied metadata image.
    pub fn watch_metadata(&self) -> watch::Receiver<Arc<MetadataImage>> {
        self.image.clone()
    }

    /// The metadata quorum as this voter's Raft state shows it (DescribeQuorum); `None` on a
    /// broker-only node. Only the leader knows the voters' log ends.
    pub fn quorum(&self) -> Option<QuorumState> {
        let raft = self.core.raft.as_ref()?;
        let metrics = raft.metrics().borrow().clone();
        let is_leader = metrics.current_leader == Some(self.node_id);
        // Kafka offsets: the next offset of the log; openraft indexes entries from 0.
        let next = |index: Option<u64>| index.map_or(0, |i| i64::try_from(i).map_or(-1, |i| i + 1));
        let voters = metrics
            .membership_config
            .voter_ids()
            .map(|id| {
                let log_end_offset = if id == self.node_id {
                    next(metrics.last_log_index)
                } else if is_leader {
                    metrics
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(&id))
                        .map_or(-1, |matched| next(matched.as_ref().map(|l| l.index)))
                } else {
                    -1
                };
                VoterState { id, log_end_offset }
            })
            .collect();
        Some(QuorumState {
            leader: metrics.current_leader,
            term: metrics.current_term,
            is_leader,
            applied_offset: next(metrics.last_applied.map(|l| l.index)),
            millis_since_quorum_ack: metrics.millis_since_quorum_ack,
            voters,
        })
    }

    async fn run(&self, call: Call) -> Result<Answer, ControllerError> {
        let core = self.core.clone();
        let (tx, rx) = oneshot::channel();
        self.runtime.spawn(async move {
            let _ = tx.send(core.call(call).await);
        });
        rx.await.map_err(|_| ControllerError::Shutdown)?
    }

    /// Commits `command` through the controller (forwarded if this node is not it) and returns
    /// what applying it did; a rejection comes back as [`ControllerError::Rejected`].
    pub async fn propose(&self, command: MetadataCommand) -> Result<Applied, ControllerError> {
        match self.run(Call::Propose(command)).await? {
            Answer::Applied(r) => r.map_err(ControllerError::Rejected),
            Answer::Heartbeat(_) => Err(ControllerError::NotAvailable("mismatched answer".into())),
        }
    }

    /// A broker heartbeat: renews its session and unfences it if it was fenced.
    pub async fn heartbeat(
        &self,
        request: HeartbeatRequest,
    ) -> Result<HeartbeatResponse, ControllerError> {
        match self.run(Call::Heartbeat(request)).await? {
            Answer::Heartbeat(r) => r.map_err(ControllerError::Rejected),
            Answer::Applied(_) => Err(ControllerError::NotAvailable("mismatched answer".into())),
        }
    }

    /// Registers a broker process; returns its broker epoch. It stays fenced until its first
    /// heartbeat.
    pub async fn register_broker(
        &self,
        broker_id: BrokerId,
        incarnation: Uuid,
        listeners: Vec<Endpoint>,
        rack: Option<String>,
    ) -> Result<i64, ControllerError> {
        let command = MetadataCommand::RegisterBroker {
            broker_id,
            incarnation,
            listeners,
            rack,
        };
        match self.propose(command).await? {
            Applied::BrokerRegistered { broker_epoch } => Ok(broker_epoch),
            other => Err(ControllerError::NotAvailable(format!(
                "unexpected registration answer {other:?}"
            ))),
        }
    }

    /// Creates a topic with a fresh topic id and a random placement start (as Kafka), with
    /// `replication.mode` defaulting to the cluster's.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
    ) -> Result<Uuid, ControllerError> {
        self.create_topic_with_id(
            name,
            Uuid::new_v4(),
            partitions,
            replication_factor,
            configs,
        )
        .await
    }

    /// [`Controller::create_topic`] with the topic id chosen by the caller (a migrated topic
    /// keeps the id its clients know).
    pub async fn create_topic_with_id(
        &self,
        name: &str,
        topic_id: Uuid,
        partitions: i32,
        replication_factor: i16,
        mut configs: BTreeMap<String, String>,
    ) -> Result<Uuid, ControllerError> {
        configs
            .entry(REPLICATION_MODE_CONFIG.to_string())
            .or_insert_with(|| self.default_mode.as_str().to_string());
        let command = MetadataCommand::CreateTopic {
            name: name.to_string(),
            topic_id,
            partitions,
            replication_factor,
            configs,
            placement_start: rand::random::<u32>(),
        };
        match self.propose(command).await? {
            Applied::TopicCreated { topic_id } => Ok(topic_id),
            other => Err(ControllerError::NotAvailable(format!(
                "unexpected create-topic answer {other:?}"
            ))),
        }
    }

    /// The next block of producer ids for `broker_id` (Kafka's AllocateProducerIds): the
    /// range is committed in the metadata log before it is returned.
    pub async fn allocate_producer_ids(
        &self,
        broker_id: BrokerId,
        broker_epoch: i64,
    ) -> Result<std::ops::Range<i64>, ControllerError> {
        let command = MetadataCommand::AllocateProducerIds {
            broker_id,
            broker_epoch,
        };
        match self.propose(command).await? {
            Applied::ProducerIds { first_id, count } => Ok(first_id..first_id + count),
            other => Err(ControllerError::NotAvailable(format!(
                "unexpected producer id answer {other:?}"
            ))),
        }
    }

    /// A partition leader's ISR change (Kafka's AlterPartition); returns the committed record.
    #[allow(clippy::too_many_arguments)]
    pub async fn alter_partition(
        &self,
        topic: &str,
        partition: i32,
        broker_id: BrokerId,
        broker_epoch: i64,
        leader_epoch: i32,
        partition_epoch: i32,
        new_isr: Vec<BrokerId>,
    ) -> Result<PartitionImage, ControllerError> {
        let command = MetadataCommand::AlterPartition {
            topic: topic.to_string(),
            partition,
            broker_id,
            broker_epoch,
            leader_epoch,
            partition_epoch,
            new_isr,
        };
        match self.propose(command).await? {
            Applied::Partition(p) => Ok(p),
            other => Err(ControllerError::NotAvailable(format!(
                "unexpected AlterPartition answer {other:?}"
            ))),
        }
    }

    /// A replica's answer to a quorum-mode election: it has fenced itself to `election_epoch`
    /// (the partition's `next_leader_epoch()`) and its log ends at `position`. Returns the
    /// partition record after the report (with a leader once a majority has reported).
    pub async fn report_replica_log(
        &self,
        topic: &str,
        partition: i32,
        broker_id: BrokerId,
        election_epoch: i32,
        position: ReplicaLogPosition,
    ) -> Result<PartitionImage, ControllerError> {
        let command = MetadataCommand::ReportReplicaLog {
            topic: topic.to_string(),
            partition,
            broker_id,
            election_epoch,
            position,
        };
        match self.propose(command).await? {
            Applied::Partition(p) => Ok(p),
            other => Err(ControllerError::NotAvailable(format!(
                "unexpected election report answer {other:?}"
            ))),
        }
    }

    /// Stops the voter: Raft, its listener and the controller thread. Idempotent.
    pub fn shutdown(&self) {
        let tx = self
            .shutdown
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(tx) = tx {
            let _ = tx.send(());
        }
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            if thread.join().is_err() {
                tracing::error!(node_id = self.node_id, "controller thread panicked");
            }
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.shutdown();
    }
}

type Ready = (
    Arc<Core>,
    tokio::runtime::Handle,
    watch::Receiver<Arc<MetadataImage>>,
);

/// The controller channel's TLS (`config.tls` loaded): a voter serves and dials it, a
/// broker-only node only dials it.
fn peer_channel(
    config: &ControllerConfig,
    voter: bool,
) -> Result<Option<Arc<PeerTls>>, ControllerError> {
    let Some(settings) = &config.tls else {
        return Ok(None);
    };
    let channel = if voter {
        PeerTls::mutual("controller", settings.clone())
    } else {
        PeerTls::client("controller", settings.clone())
    };
    channel
        .map(|c| Some(Arc::new(c)))
        .map_err(|e| ControllerError::InvalidConfig(format!("controller channel TLS: {e}")))
}

async fn run_controller(
    node_id: NodeId,
    listen_addr: Option<String>,
    voters: BTreeMap<NodeId, String>,
    dir: PathBuf,
    config: ControllerConfig,
    ready: std::sync::mpsc::Sender<Result<Ready, ControllerError>>,
    shutdown: oneshot::Receiver<()>,
) {
    let channel = match peer_channel(&config, listen_addr.is_some()) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let started = match listen_addr {
        Some(addr) => start_voter(node_id, addr, voters, dir, config, channel).await,
        None => Ok(start_observer(node_id, voters, config, channel)),
    };
    let (core, tasks, image_rx) = match started {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let ready_sent = ready
        .send(Ok((
            core.clone(),
            tokio::runtime::Handle::current(),
            image_rx,
        )))
        .is_ok();
    if ready_sent {
        let _ = shutdown.await;
    }
    for task in tasks {
        task.abort();
    }
    if let Some(raft) = &core.raft {
        if let Err(e) = raft.shutdown().await {
            tracing::warn!(node_id, error = %e, "raft shutdown");
        }
    }
    tracing::info!(node_id, "controller stopped");
}

type Started = (
    Arc<Core>,
    Vec<tokio::task::JoinHandle<()>>,
    watch::Receiver<Arc<MetadataImage>>,
);

/// A voter: Raft over the metadata log, the RPC listener, and the session ticker (which acts
/// only while this node leads).
async fn start_voter(
    node_id: NodeId,
    listen_addr: String,
    voters: BTreeMap<NodeId, String>,
    dir: PathBuf,
    config: ControllerConfig,
    channel: Option<Arc<PeerTls>>,
) -> Result<Started, ControllerError> {
    let log_store = LogStore::open(&dir)?;
    let (image_tx, image_rx) = watch::channel(Arc::new(MetadataImage::new()));
    let state_machine = StateMachineStore::open(&dir, image_tx)?;
    let raft_config = openraft::Config {
        cluster_name: "sluice".into(),
        heartbeat_interval: config.raft_heartbeat_ms,
        election_timeout_min: config.raft_election_timeout_ms,
        election_timeout_max: config.raft_election_timeout_ms * 2,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every_entries),
        max_in_snapshot_log_to_keep: config.snapshot_every_entries / 2,
        ..Default::default()
    }
    .validate()
    .map_err(|e| ControllerError::InvalidConfig(e.to_string()))?;
    // A cluster of one started without voters (port 0) has nobody to talk to: it binds no
    // port at all (an ephemeral one could take a port another process is about to bind).
    let listener = if voters.len() == 1 && listen_addr.ends_with(":0") {
        None
    } else {
        Some(TcpListener::bind(&listen_addr).await?)
    };
    let raft = Raft::new(
        node_id,
        Arc::new(raft_config),
        network::Network {
            tls: channel.clone(),
        },
        log_store,
        state_machine,
    )
    .await
    .map_err(|e| ControllerError::NotAvailable(format!("raft start: {e}")))?;
    let members: BTreeMap<NodeId, BasicNode> = voters
        .iter()
        .map(|(&id, addr)| (id, BasicNode::new(addr)))
        .collect();
    // Every voter initialises with the same voter set, which openraft allows; a node with a
    // log (restart) answers NotAllowed, which is the normal case.
    match raft.initialize(members).await {
        Ok(()) => tracing::info!(node_id, "metadata quorum initialised"),
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
        Err(e) => return Err(ControllerError::NotAvailable(format!("raft init: {e}"))),
    }
    let core = Arc::new(Core {
        node_id,
        raft: Some(raft),
        voters,
        observed_leader: Mutex::new(None),
        next_voter: AtomicUsize::new(0),
        sessions: Mutex::new(BrokerSessions::new(config.broker_session_timeout_ms)),
        image: image_rx.clone(),
        config,
        channel,
        epoch: Instant::now(),
    });
    let accept_core = core.clone();
    let accept = tokio::spawn(async move {
        let Some(listener) = listener else {
            return;
        };
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    tokio::spawn(accept_connection(accept_core.clone(), stream, peer));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "controller accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    let tick_core = core.clone();
    let tick_every =
        Duration::from_millis((core.config.broker_session_timeout_ms / 4).clamp(20, 1_000));
    let ticker = tokio::spawn(async move {
        loop {
            tokio::time::sleep(tick_every).await;
            tick_core.tick_sessions().await;
        }
    });
    let rebalance_core = core.clone();
    let rebalance_every =
        Duration::from_secs(core.config.leader_imbalance_check_interval_seconds.max(1));
    let rebalancer = tokio::spawn(async move {
        loop {
            tokio::time::sleep(rebalance_every).await;
            rebalance_core.tick_rebalance().await;
        }
    });
    Ok((core, vec![accept, ticker, rebalancer], image_rx))
}

/// A broker-only node: no Raft, no listener; calls go to the controller and the metadata
/// image is pulled from it every `metadata_poll_ms`.
fn start_observer(
    node_id: NodeId,
    voters: BTreeMap<NodeId, String>,
    config: ControllerConfig,
    channel: Option<Arc<PeerTls>>,
) -> Started {
    let (image_tx, image_rx) = watch::channel(Arc::new(MetadataImage::new()));
    let poll_every = Duration::from_millis(config.metadata_poll_ms.max(10));
    let core = Arc::new(Core {
        node_id,
        raft: None,
        voters,
        observed_leader: Mutex::new(None),
        next_voter: AtomicUsize::new(0),
        sessions: Mutex::new(BrokerSessions::new(config.broker_session_timeout_ms)),
        image: image_rx.clone(),
        config,
        channel,
        epoch: Instant::now(),
    });
    let poll_core = core.clone();
    let poller = tokio::spawn(async move {
        loop {
            poll_core.pull_metadata(&image_tx).await;
            tokio::time::sleep(poll_every).await;
        }
    });
    (core, vec![poller], image_rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voters_parse_and_reject_malformed_entries() {
        let voters = parse_voters("1@127.0.0.1:19091, 2@localhost:19092,3@[::1]:19093").unwrap();
        assert_eq!(voters.len(), 3);
        assert_eq!(
            voters[1],
            Voter {
                id: 2,
                addr: "localhost:19092".into()
            }
        );
        assert_eq!(voters[2].addr, "[::1]:19093");
        for bad in [
            "",
            "1@",
            "x@127.0.0.1:1",
            "1@127.0.0.1",
            "1@127.0.0.1:0",
            "1@:9",
            "1@h:1,1@h:2",
            "1@h:70000",
        ] {
            assert!(parse_voters(bad).is_err(), "accepted `{bad}`");
        }
    }

    #[test]
    fn config_keys_apply_and_validate() {
        let mut c = ControllerConfig::default();
        assert_eq!(c.set("broker.session.timeout.ms", "1500").ok(), Some(true));
        assert_eq!(c.broker_session_timeout_ms, 1500);
        assert_eq!(c.set("replication.mode", "quorum").ok(), Some(true));
        assert_eq!(c.default_replication_mode, ReplicationMode::Quorum);
        assert_eq!(c.set("log.dirs", "/tmp").ok(), Some(false));
        assert!(c.set("broker.session.timeout.ms", "-1").is_err());
        assert!(c.set("replication.mode", "paxos").is_err());
        assert!(c
            .set("controller.quorum.heartbeat.interval.ms", "5000")
            .is_err());
        // A fresh config: the refused heartbeat above stays set, so every later set would fail.
        let mut c = ControllerConfig::default();
        assert!(c.auto_leader_rebalance_enable);
        assert_eq!(c.leader_imbalance_per_broker_percentage, 10);
        assert_eq!(c.leader_imbalance_check_interval_seconds, 300);
        assert_eq!(
            c.set("auto.leader.rebalance.enable", "false").ok(),
            Some(true)
        );
        assert!(!c.auto_leader_rebalance_enable);
        assert!(c.set("auto.leader.rebalance.enable", "yes").is_err());
        assert_eq!(
            c.set("leader.imbalance.per.broker.percentage", "0").ok(),
            Some(true)
        );
        assert_eq!(c.leader_imbalance_per_broker_percentage, 0);
        assert!(c
            .set("leader.imbalance.per.broker.percentage", "101")
            .is_err());
        assert!(c
            .set("leader.imbalance.per.broker.percentage", "-1")
            .is_err());
        assert_eq!(
            c.set("leader.imbalance.check.interval.seconds", "2").ok(),
            Some(true)
        );
        assert_eq!(c.leader_imbalance_check_interval_seconds, 2);
        assert!(c
            .set("leader.imbalance.check.interval.seconds", "0")
            .is_err());
    }
}
