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
use super::connection::serve_connection;
use super::metadata::{MetadataError, MetadataStore};
use super::shard::{mailbox, BrokerContext, MailboxReceiver, Phase, Shard};

/// How long shards may take to finish in-flight requests on shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors starting the broker.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The topic registry could not be loaded.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
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
    /// Cluster mode: the controller could not start.
    #[error("cluster: {0}")]
    Cluster(#[from] crate::controller::ControllerError),
    /// A shard thread stopped before it was ready.
    #[error("shard {0} stopped during start-up")]
    StartFailed(usize),
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
    threads: Vec<JoinHandle<()>>,
    events: mpsc::Receiver<Event>,
    events_tx: mpsc::Sender<Event>,
    /// The bound listener address (the real port when 0 was configured).
    pub local_addr: SocketAddr,
    /// The admin HTTP listener, if enabled and bound.
    pub admin: Option<crate::admin::AdminServer>,
    /// Set to true once every shard is ready: shards listen only then.
    _serve: tokio::sync::watch::Sender<bool>,
}

impl Server {
    /// Loads metadata, binds one SO_REUSEPORT listener per shard, starts the shard threads and
    /// waits until every shard has opened its partitions.
    pub fn start(config: BrokerConfig) -> Result<Server, ServerError> {
        let cluster = super::cluster::ClusterNode::start(&config)?;
        let metadata = match &cluster {
            Some(node) => {
                super::groups::check_group_config(&config)?;
                MetadataStore::cluster(node.clone())
            }
            None => {
                let metadata = MetadataStore::open(&config.data_dir)?;
                super::groups::ensure_offsets_topic(&metadata, &config)?;
                metadata
            }
        };
        let shards = config.shards;
        let mut listeners = Vec::with_capacity(shards);
        let listen_err = |addr, source| ServerError::Listen { addr, source };
        crate::io::net::ensure_port_free(config.listen)
            .map_err(|e| listen_err(config.listen, e))?;
        let first = crate::io::net::reuseport_socket(config.listen)
            .map_err(|e| listen_err(config.listen, e))?;
        let local_addr = first
            .local_addr()
            .map_err(|e| listen_err(config.listen, e))?;
        listeners.push(first);
        for _ in 1..shards {
            let l = crate::io::net::reuseport_socket(local_addr)
                .map_err(|e| listen_err(local_addr, e))?;
            listeners.push(l);
        }
        let mut mailboxes = Vec::with_capacity(shards);
        let mut receivers = Vec::with_capacity(shards);
        for _ in 0..shards {
            let (tx, rx) = mailbox().map_err(ServerError::Shard)?;
            mailboxes.push(tx);
            receivers.push(rx);
        }
        let mut config = config;
        if config.listen.port() == 0 && config.advertised_port == 0 {
            config.advertised_port = i32::from(local_addr.port());
        }
        let ctx = Arc::new(BrokerContext::new(Arc::new(config), metadata, mailboxes));
        let admin = start_admin(&ctx)?;
        let (events_tx, events) = mpsc::channel();
        let (serve, serve_rx) = tokio::sync::watch::channel(false);
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let mut threads = Vec::with_capacity(shards);
        for (id, (listener, rx)) in listeners.into_iter().zip(receivers).enumerate() {
            let ctx = ctx.clone();
            let tx = events_tx.clone();
            let serve_rx = serve_rx.clone();
            let t = std::thread::Builder::new()
                .name(format!("shard-{id}"))
                .spawn(move || {
                    pin_to_core(id % cores);
                    shard_main(id, ctx, rx, listener, serve_rx, tx.clone());
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
        if let Some(node) = &cluster {
            node.run(ctx.clone()).map_err(ServerError::Shard)?;
        }
        // Every shard has opened its partitions: only now may clients connect.
        let _ = serve.send(true);
        ctx.metrics.set_readiness(crate::metrics::Readiness::Ready);
        info!(addr = %local_addr, shards, data_dir = %ctx.config.data_dir.display(), "sluice listening");
        Ok(Server {
            ctx,
            threads,
            events,
            events_tx,
            local_addr,
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
            let job: super::shard::Job = Box::new(move |shard: Rc<Shard>| {
                Box::pin(async move {
                    shard.phase.send_replace(phase);
                })
            });
            if self.ctx.post(id, job).is_err() {
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
        if let Some(node) = self.ctx.metadata.cluster_node() {
            node.shutdown();
        }
        info!("stopped");
    }
}

/// Starts the admin listener. A bind failure on the default address is only a warning (a
/// second broker on the host, or a test, must still start); an address the operator chose
/// must bind.
fn start_admin(ctx: &Arc<BrokerContext>) -> Result<Option<crate::admin::AdminServer>, ServerError> {
    let Some(addr) = ctx.config.admin_listener else {
        return Ok(None);
    };
    match crate::admin::AdminServer::start(addr, ctx.clone()) {
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

fn shard_main(
    id: usize,
    ctx: Arc<BrokerContext>,
    rx: MailboxReceiver,
    listener: crate::io::net::BoundSocket,
    mut serve: tokio::sync::watch::Receiver<bool>,
    events: mpsc::Sender<Event>,
) {
    crate::io::runtime::block_on(async move {
        ctx.metrics.attach_shard(id);
        let shard = Rc::new(Shard::new(id, ctx));
        // Before the mailbox runs: other shards may forward group requests at once.
        super::groups::start(&shard);
        crate::io::runtime::spawn(shard.clone().run_mailbox(rx));
        shard.open_owned_partitions().await;
        let _ = events.send(Event::Started(id));
        // Start-up failed elsewhere when the sender is dropped before saying "serve".
        if serve.wait_for(|go| *go).await.is_err() {
            return;
        }
        let listener = match listener
            .listen(1024)
            .and_then(tokio::net::TcpListener::from_std)
        {
            Ok(l) => l,
            Err(e) => {
                error!(shard = id, "cannot listen: {e}");
                return;
            }
        };
        crate::io::runtime::spawn(retention_loop(shard.clone()));
        crate::io::runtime::spawn(shard.clone().run_log_cleaner());
        let mut phase = shard.phase.subscribe();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        crate::io::runtime::spawn(serve_connection(shard.clone(), stream, peer));
                    }
                    Err(e) => {
                        warn!(shard = id, "accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                _ = phase.changed() => {
                    if *phase.borrow() != Phase::Running { break; }
                }
            }
        }
        drop(listener);
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
        shard.close_all().await;
        info!(shard = id, "shard closed");
    });
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
