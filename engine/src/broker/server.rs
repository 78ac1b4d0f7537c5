//! Starting the shard threads and stopping them cleanly.
//!
//! Shutdown is two-phase so no request loses a partition it is waiting on: every shard first
//! drains (stops accepting and reading, finishes in-flight requests, which may still call
//! other shards), and only when all have drained does each close its logs.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::{error, info, warn};

use super::config::BrokerConfig;
use super::connection::{serve_connection, ListenerRuntime};
use super::metadata::MetadataStore;
use super::services::{ServicePeers, ServiceReceivers, Services};
use super::shard::{BrokerContext, Phase, Shard};

/// How long shards may take to finish in-flight requests on shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a cluster of one waits, before it serves, to be registered, unfenced and leading
/// its partitions (normally milliseconds: it elects itself).
const SOLE_VOTER_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors starting the broker.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Binding the listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// Creating a shard's queue or thread failed.
    #[error("cannot start shard: {0}")]
    Shard(std::io::Error),
    /// The group coordinator's configuration or `__consumer_offsets` could not be set up.
    #[error(transparent)]
    Groups(#[from] super::groups::GroupSetupError),
    /// The controller could not start.
    #[error("cluster: {0}")]
    Cluster(#[from] crate::controller::ControllerError),
    /// A shard thread stopped before it was ready.
    #[error("shard {0} stopped during start-up")]
    StartFailed(usize),
    /// A listener's TLS files could not be loaded.
    #[error("listener {listener}: {source}")]
    Tls {
        /// The listener name.
        listener: String,
        /// The cause.
        source: crate::security::tls::TlsError,
    },
    /// The SCRAM credential store could not be read.
    #[error(transparent)]
    Credentials(#[from] crate::security::credentials::CredentialError),
}

/// Events reported to the thread that owns the [`Server`].
#[derive(Debug)]
pub enum Event {
    /// Shard finished opening its partitions and accepts connections.
    Started(usize),
    /// Shard has no more connections.
    Drained(usize),
    /// Shard thread ended.
    Exited(usize),
    /// A stop was requested (signal).
    Stop,
}

/// A running broker.
pub struct Server {
    ctx: Arc<BrokerContext>,
    peers: Arc<ServicePeers>,
    threads: Vec<JoinHandle<()>>,
    events: mpsc::Receiver<Event>,
    events_tx: mpsc::Sender<Event>,
    /// The bound address of the inter-broker listener (the real port when 0 was configured).
    pub local_addr: SocketAddr,
    /// Every listener's name and bound address, the inter-broker one first.
    pub listener_addrs: Vec<(String, SocketAddr)>,
    /// The admin HTTP listener, if enabled and bound.
    pub admin: Option<crate::admin::AdminServer>,
    /// Set to true once every shard is ready: shards listen only then.
    _serve: tokio::sync::watch::Sender<bool>,
}

impl Server {
    /// Loads metadata, binds one SO_REUSEPORT listener per shard, starts the shard threads and
    /// waits until every shard has opened its partitions.
    pub fn start(config: BrokerConfig) -> Result<Server, ServerError> {
        // The bootstrap SCRAM file (`sluice format --add-scram`) must be readable before
        // anything starts; its credentials go into the metadata once the node serves.
        crate::security::credentials::FileCredentialStore::open(&config.data_dir)?;
        let node = super::cluster::ClusterNode::start(&config)?;
        let offsets_partitions = super::groups::check_group_config(&config)?;
        super::transactions::check_txn_config(&config)
            .map_err(super::groups::GroupSetupError::from)?;
        let metadata = MetadataStore::cluster(node.clone());
        let shards = config.shards;
        let listen_err = |addr, source| ServerError::Listen { addr, source };
        // Per listener: one SO_REUSEPORT socket per shard, all on the same port.
        let mut bound: Vec<Vec<crate::io::net::BoundSocket>> = Vec::new();
        let mut listener_addrs = Vec::new();
        for l in &config.listeners {
            crate::io::net::ensure_port_free(l.bind).map_err(|e| listen_err(l.bind, e))?;
            let first =
                crate::io::net::reuseport_socket(l.bind).map_err(|e| listen_err(l.bind, e))?;
            let addr = first.local_addr().map_err(|e| listen_err(l.bind, e))?;
            let mut sockets = vec![first];
            for _ in 1..shards {
                sockets
                    .push(crate::io::net::reuseport_socket(addr).map_err(|e| listen_err(addr, e))?);
            }
            bound.push(sockets);
            listener_addrs.push((l.name.clone(), addr));
        }
        let local_addr = listener_addrs[0].1;
        let runtimes = Arc::new(listener_runtimes(&config, &listener_addrs, &node)?);
        spawn_tls_reloader(&config, &runtimes);
        // Shard i gets the i-th socket of every listener.
        let mut listeners: Vec<Vec<crate::io::net::BoundSocket>> =
            (0..shards).map(|_| Vec::new()).collect();
        for sockets in bound {
            for (i, s) in sockets.into_iter().enumerate() {
                listeners[i].push(s);
            }
        }
        let (peers, receivers) = ServicePeers::new(shards).map_err(ServerError::Shard)?;
        let mut config = config;
        if config.listen.port() == 0 && config.advertised_port == 0 {
            config.advertised_port = i32::from(local_addr.port());
        }
        let ctx = Arc::new(BrokerContext::new(Arc::new(config), metadata, shards));
        let admin = start_admin(&ctx, &peers)?;
        let (events_tx, events) = mpsc::channel();
        let (serve, serve_rx) = tokio::sync::watch::channel(false);
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let mut threads = Vec::with_capacity(shards);
        for (id, (listener, rx)) in listeners.into_iter().zip(receivers).enumerate() {
            let ctx = ctx.clone();
            let peers = peers.clone();
            let tx = events_tx.clone();
            let serve_rx = serve_rx.clone();
            let runtimes = runtimes.clone();
            let t = std::thread::Builder::new()
                .name(format!("shard-{id}"))
                .spawn(move || {
                    pin_to_core(id % cores);
                    shard_main(
                        id,
                        ctx,
                        &peers,
                        rx,
                        listener,
                        runtimes,
                        serve_rx,
                        tx.clone(),
                    );
                    let _ = tx.send(Event::Exited(id));
                })
                .map_err(ServerError::Shard)?;
            threads.push(t);
        }
        let mut started = 0;
        while started < shards {
            match events.recv() {
                Ok(Event::Started(_)) => started += 1,
                Ok(Event::Exited(id)) => return Err(ServerError::StartFailed(id)),
                Ok(_) => {}
                Err(_) => return Err(ServerError::StartFailed(0)),
            }
        }
        // Every listener is registered (the inter-broker one first): each client is told
        // the endpoints of the listener it came in on.
        let endpoints = runtimes
            .iter()
            .map(|l| crate::controller::Endpoint {
                name: l.config.name.clone(),
                host: l.config.advertised_host.clone(),
                port: u16::try_from(l.config.advertised_port).unwrap_or(0),
            })
            .collect();
        let sink_peers = peers.clone();
        let sink: super::cluster::ImageSink =
            Box::new(move |previous, image| sink_peers.apply_image(previous.map(|p| &**p), image));
        node.run(sink, endpoints).map_err(ServerError::Shard)?;
        if node.sole_voter() {
            // A cluster of one prepares what a single broker has from its first request: a
            // directory written by a release without a controller becomes its metadata log
            // (once), and `__consumer_offsets` exists (a larger cluster creates it on the
            // first FindCoordinator, once its brokers have registered). Both need this broker
            // registered and unfenced first (placement).
            let _ = node.wait_until_serving(SOLE_VOTER_READY_TIMEOUT);
            let prepared = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(crate::controller::ControllerError::Io)
                .and_then(|rt| {
                    rt.block_on(async {
                        if node.implicit() {
                            super::node_identity::migrate_legacy(&node, &ctx.config.data_dir)
                                .await?;
                        }
                        // Served from the first request on, as the file was before.
                        super::api::users::import_bootstrap_credentials(
                            &node,
                            &ctx.config.data_dir,
                        )
                        .await?;
                        if let Err(e) = super::groups::ensure_offsets_topic_cluster(
                            &node,
                            &ctx.config,
                            offsets_partitions,
                        )
                        .await
                        {
                            warn!("cannot create the offsets topic yet: {e}");
                        }
                        Ok(())
                    })
                });
            if let Err(e) = prepared {
                node.shutdown();
                return Err(ServerError::Cluster(e));
            }
            if !node.wait_until_serving(SOLE_VOTER_READY_TIMEOUT) {
                warn!(
                    "not yet registered and leading every partition after {:?}; serving anyway",
                    SOLE_VOTER_READY_TIMEOUT
                );
            }
        }
        if !node.sole_voter() {
            spawn_bootstrap_import(&node, &ctx.config.data_dir);
        }
        // Every shard has opened its partitions: only now may clients connect.
        let _ = serve.send(true);
        ctx.metrics.set_readiness(crate::metrics::Readiness::Ready);
        for (l, (name, addr)) in runtimes.iter().zip(&listener_addrs) {
            info!(listener = %name, protocol = l.config.protocol.name(), %addr, "listener ready");
        }
        info!(addr = %local_addr, shards, data_dir = %ctx.config.data_dir.display(), "sluice listening");
        Ok(Server {
            ctx,
            peers,
            threads,
            events,
            events_tx,
            local_addr,
            listener_addrs,
            admin,
            _serve: serve,
        })
    }

    /// A sender that stops the server with [`Event::Stop`] (give it to the signal thread).
    pub fn stopper(&self) -> mpsc::Sender<Event> {
        self.events_tx.clone()
    }

    /// Blocks until a stop is requested or a shard dies, then shuts down cleanly.
    pub fn run(self) {
        loop {
            match self.events.recv() {
                Ok(Event::Stop) | Err(_) => break,
                Ok(Event::Exited(id)) => {
                    error!(
                        shard = id,
                        "shard thread stopped unexpectedly; shutting down"
                    );
                    break;
                }
                Ok(_) => {}
            }
        }
        self.shutdown();
    }

    fn set_phase(&self, phase: Phase) {
        for id in 0..self.ctx.shard_count() {
            let job: super::shard::Job<Shard> = Box::new(move |shard: Rc<Shard>| {
                Box::pin(async move {
                    shard.phase.send_replace(phase);
                })
            });
            if self.peers.shards.post(id, job).is_err() {
                warn!(shard = id, "shard already stopped");
            }
        }
    }

    fn shutdown(self) {
        info!("shutting down: draining connections");
        self.ctx
            .metrics
            .set_readiness(crate::metrics::Readiness::Draining);
        self.set_phase(Phase::Draining);
        let deadline = std::time::Instant::now() + DRAIN_TIMEOUT + Duration::from_secs(1);
        let mut drained = 0;
        let mut exited = 0;
        while drained + exited < self.ctx.shard_count() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.events.recv_timeout(left) {
                Ok(Event::Drained(_)) => drained += 1,
                Ok(Event::Exited(_)) => exited += 1,
                Ok(_) => {}
                Err(_) => {
                    warn!("shards did not drain in time; closing logs anyway");
                    break;
                }
            }
        }
        info!("closing logs");
        self.set_phase(Phase::Closing);
        for t in self.threads {
            let _ = t.join();
        }
        self.ctx.metadata.cluster_node().shutdown();
        info!("stopped");
    }
}

/// Starts the admin listener. A bind failure on the default address is only a warning (a
/// second broker on the host, or a test, must still start); an address the operator chose
/// must bind.
fn start_admin(
    ctx: &Arc<BrokerContext>,
    peers: &Arc<ServicePeers>,
) -> Result<Option<crate::admin::AdminServer>, ServerError> {
    let Some(addr) = ctx.config.admin_listener else {
        return Ok(None);
    };
    match crate::admin::AdminServer::start(addr, ctx.clone(), peers.clone()) {
        Ok(a) => Ok(Some(a)),
        Err(source)
            if ctx.config.sources.get("admin.listener")
                == Some(&super::config::ConfigSource::Default) =>
        {
            warn!(%addr, "admin listener disabled: cannot bind the default address: {source}");
            Ok(None)
        }
        Err(source) => Err(ServerError::Listen { addr, source }),
    }
}

fn pin_to_core(core: usize) {
    let mut set = nix::sched::CpuSet::new();
    if let Err(e) = set
        .set(core)
        .and_then(|_| nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set))
    {
        warn!(core, "cannot pin shard thread: {e}");
    }
}

#[allow(clippy::too_many_arguments)]
fn shard_main(
    id: usize,
    ctx: Arc<BrokerContext>,
    peers: &ServicePeers,
    rx: ServiceReceivers,
    sockets: Vec<crate::io::net::BoundSocket>,
    runtimes: Arc<Vec<Arc<ListenerRuntime>>>,
    mut serve: tokio::sync::watch::Receiver<bool>,
    events: mpsc::Sender<Event>,
) {
    crate::io::runtime::block_on(async move {
        ctx.metrics.attach_shard(id);
        let svc = Services::start(id, ctx, peers, rx);
        let shard = svc.shard.clone();
        shard.open_owned_partitions().await;
        let _ = events.send(Event::Started(id));
        // Start-up failed elsewhere when the sender is dropped before saying "serve".
        if serve.wait_for(|go| *go).await.is_err() {
            return;
        }
        let mut accepters = Vec::new();
        for (socket, runtime) in sockets.into_iter().zip(runtimes.iter()) {
            let listener = match socket
                .listen(1024)
                .and_then(tokio::net::TcpListener::from_std)
            {
                Ok(l) => l,
                Err(e) => {
                    error!(shard = id, listener = %runtime.config.name, "cannot listen: {e}");
                    return;
                }
            };
            accepters.push(crate::io::runtime::spawn(accept_loop(
                svc.clone(),
                listener,
                runtime.clone(),
            )));
        }
        crate::io::runtime::spawn(retention_loop(shard.clone()));
        crate::io::runtime::spawn(shard.clone().run_log_cleaner());
        let mut phase = shard.phase.subscribe();
        while *phase.borrow() == Phase::Running {
            if phase.changed().await.is_err() {
                break;
            }
        }
        // Every accept loop ends (and drops its listener) on the phase change.
        for a in accepters {
            let _ = a.await;
        }
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        while shard.connections.get() > 0 {
            tokio::select! {
                _ = shard.connection_closed.notified() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    warn!(shard = id, open = shard.connections.get(), "connections still open after drain timeout");
                    break;
                }
            }
        }
        let _ = events.send(Event::Drained(id));
        while *phase.borrow() != Phase::Closing {
            if phase.changed().await.is_err() {
                break;
            }
        }
        svc.replicas.close().await;
        info!(shard = id, "shard closed");
    });
}

async fn accept_loop(
    svc: Rc<Services>,
    listener: tokio::net::TcpListener,
    runtime: Arc<ListenerRuntime>,
) {
    let shard = &svc.shard;
    let mut phase = shard.phase.subscribe();
    loop {
        if *phase.borrow() != Phase::Running {
            return;
        }
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    crate::io::runtime::spawn(serve_connection(svc.clone(), stream, peer, runtime.clone()));
                }
                Err(e) => {
                    warn!(shard = shard.id, listener = %runtime.config.name, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = phase.changed() => {}
        }
    }
}

/// Loads each listener's TLS files and SASL settings, with the bound port advertised where
/// port 0 was configured.
fn listener_runtimes(
    config: &BrokerConfig,
    addrs: &[(String, SocketAddr)],
    node: &super::cluster::ClusterNode,
) -> Result<Vec<Arc<ListenerRuntime>>, ServerError> {
    // SCRAM credentials come from the current metadata image: a credential altered through
    // any broker applies to the next authentication here.
    let image = node.controller.watch_metadata();
    let store: Arc<dyn crate::security::credentials::CredentialStore> = Arc::new(
        move |mech: crate::security::scram::ScramMechanism,
              user: &str|
              -> Option<crate::security::scram::ScramCredential> {
            image.borrow().scram.get(mech, user).cloned()
        },
    );
    let decoy_key: Vec<u8> = (0..32).map(|_| rand::random::<u8>()).collect();
    let mut out = Vec::new();
    for (l, (_, addr)) in config.listeners.iter().zip(addrs) {
        let mut lc = l.clone();
        if lc.advertised_port == 0 {
            lc.advertised_port = i32::from(addr.port());
        }
        let tls = match &l.tls {
            Some(t) => {
                if t.key_password_set {
                    warn!(listener = %l.name, "ssl.key.password is set: Sluice reads unencrypted PEM keys only and ignores it");
                }
                let acceptor =
                    crate::security::tls::ReloadableAcceptor::new(t.clone()).map_err(|source| {
                        ServerError::Tls {
                            listener: l.name.clone(),
                            source,
                        }
                    })?;
                Some(Arc::new(acceptor))
            }
            None => None,
        };
        let sasl = l.sasl.as_ref().map(|s| {
            Arc::new(crate::security::sasl::SaslSettings {
                mechanisms: s.mechanisms.clone(),
                plain_users: s.plain_users.clone(),
                store: store.clone(),
                max_reauth_ms: s.max_reauth_ms,
                decoy_key: decoy_key.clone(),
            })
        });
        out.push(Arc::new(ListenerRuntime {
            config: lc,
            tls,
            sasl,
        }));
    }
    Ok(out)
}

/// How long a broker of a larger cluster keeps trying to import its bootstrap SCRAM
/// credentials (the quorum may have no leader yet when it starts).
const BOOTSTRAP_IMPORT_DEADLINE: Duration = Duration::from_secs(300);

/// Imports the bootstrap SCRAM credentials on a thread of its own, retrying while the
/// controller quorum is not available (a sole voter imports before serving instead).
fn spawn_bootstrap_import(node: &Arc<super::cluster::ClusterNode>, data_dir: &std::path::Path) {
    if !data_dir
        .join(crate::security::credentials::SCRAM_FILE)
        .exists()
    {
        return;
    }
    let node = node.clone();
    let dir = data_dir.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("scram-bootstrap".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => {
                    rt.block_on(super::api::users::import_bootstrap_credentials_retrying(
                        &node,
                        &dir,
                        BOOTSTRAP_IMPORT_DEADLINE,
                    ));
                }
                Err(e) => warn!("cannot import the bootstrap SCRAM credentials: {e}"),
            }
        });
    if let Err(e) = spawned {
        warn!("cannot start the SCRAM bootstrap thread: {e}");
    }
}

/// Checks the TLS listeners' files every `ssl.reload.interval.ms` and reloads changed ones.
/// The thread ends when the server (the last holder of the listeners) is gone.
fn spawn_tls_reloader(config: &BrokerConfig, runtimes: &Arc<Vec<Arc<ListenerRuntime>>>) {
    let every: u64 = config
        .raw
        .get("ssl.reload.interval.ms")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(30_000);
    if every == 0 || runtimes.iter().all(|l| l.tls.is_none()) {
        return;
    }
    let weak = Arc::downgrade(runtimes);
    let spawned = std::thread::Builder::new()
        .name("tls-reload".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_millis(every));
            let Some(runtimes) = weak.upgrade() else {
                return;
            };
            for l in runtimes.iter() {
                if let Some(tls) = &l.tls {
                    tls.reload_if_changed(&l.config.name);
                }
            }
        });
    if let Err(e) = spawned {
        warn!("cannot start the TLS reload thread: {e}");
    }
}

async fn retention_loop(shard: Rc<Shard>) {
    let every = Duration::from_millis(shard.ctx.config.retention_check_interval_ms);
    loop {
        tokio::time::sleep(every).await;
        if *shard.phase.borrow() != Phase::Running {
            return;
        }
        shard.enforce_retention().await;
    }
}
