//! The services of one shard, built on its core, and the queues that join each of them to
//! its peers on the other shards.
//!
//! Layers, each importing only those below it (ARCHITECTURE.md, "Dependency rules"):
//!
//! 1. [`Shard`]: the core. Partitions it owns, its copy of the metadata image, phase,
//!    connection count, and [`Peers`], the mailboxes that carry work to another shard.
//! 2. [`Replicas`]: replication, the leader or follower state of every replica the shard owns,
//!    and the produce, fetch and list-offsets paths through it (`partition_io`).
//! 3. [`Groups`] (the group coordinator, which writes through replication and follows its
//!    leadership), [`ProducerIds`], [`FetchSessions`].
//! 4. [`Transactions`] (the transaction coordinator: it takes producer ids from
//!    [`ProducerIds`] and tells [`Groups`] of the markers it writes on `__consumer_offsets`).
//! 5. [`Services`]: one shard's services together, handed to its connections and the request
//!    handlers (`broker::api`), which route work to other shards through each service's peers.
//!
//! A service reaches the layers below through the fields it was built with, never the ones
//! above: replication tells the group coordinator about leadership through a listener the
//! coordinator registered ([`Replicas::on_leadership_change`]).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::fetch_session::{FetchSessionCache, SessionConfig};
use super::groups::Groups;
use super::producer_ids::ProducerIds;
use super::replicas::Replicas;
use super::shard::{run_mailbox, BrokerContext, MailboxReceiver, Peers, Shard, ShardLocal};
use super::transactions::Transactions;
use crate::controller::MetadataImage as ClusterImage;

/// The incremental fetch sessions (KIP-227) whose ids name this shard: the sans-IO
/// [`FetchSessionCache`] and the queues to the other shards' caches.
pub struct FetchSessions {
    shard_id: usize,
    peers: Arc<Peers<FetchSessions>>,
    /// The cache.
    pub cache: RefCell<FetchSessionCache>,
}

impl ShardLocal for FetchSessions {
    fn shard_id(&self) -> usize {
        self.shard_id
    }

    fn peers(&self) -> &Peers<FetchSessions> {
        &self.peers
    }
}

impl FetchSessions {
    fn new(shard: &Shard, peers: Arc<Peers<FetchSessions>>) -> FetchSessions {
        // Validated when the configuration was resolved; the defaults only for a hand-built one.
        let config = SessionConfig::from_config(&shard.ctx.config).unwrap_or_default();
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ (shard.id as u64).rotate_left(32);
        FetchSessions {
            shard_id: shard.id,
            peers,
            cache: RefCell::new(FetchSessionCache::new(
                config,
                shard.id,
                shard.ctx.shard_count(),
                seed,
            )),
        }
    }
}

/// One shard's services, for its connections and request handlers.
pub struct Services {
    /// The shard core.
    pub shard: Rc<Shard>,
    /// Replication (and the produce and fetch paths through it).
    pub replicas: Rc<Replicas>,
    /// The consumer-group coordinator.
    pub groups: Rc<Groups>,
    /// Producer ids (InitProducerId).
    pub producer_ids: Rc<ProducerIds>,
    /// Incremental fetch sessions.
    pub fetch_sessions: Rc<FetchSessions>,
    /// The transaction coordinator.
    pub transactions: Rc<Transactions>,
}

/// The queues of every service on every shard (`Send + Sync`): shared by the shards, the
/// controller thread (which hands new images to replication and the group coordinators) and
/// the admin listener (which asks each shard for its metrics).
#[derive(Debug)]
pub struct ServicePeers {
    /// Shard cores.
    pub shards: Arc<Peers<Shard>>,
    /// Replication services.
    pub replicas: Arc<Peers<Replicas>>,
    /// Group services.
    pub groups: Arc<Peers<Groups>>,
    /// Producer-id services.
    pub producer_ids: Arc<Peers<ProducerIds>>,
    /// Fetch-session services.
    pub fetch_sessions: Arc<Peers<FetchSessions>>,
    /// Transaction coordinators.
    pub transactions: Arc<Peers<Transactions>>,
}

/// The receiving ends of one shard's service queues, moved onto its thread.
pub struct ServiceReceivers {
    shard: MailboxReceiver<Shard>,
    replicas: MailboxReceiver<Replicas>,
    groups: MailboxReceiver<Groups>,
    producer_ids: MailboxReceiver<ProducerIds>,
    fetch_sessions: MailboxReceiver<FetchSessions>,
    transactions: MailboxReceiver<Transactions>,
}

impl ServicePeers {
    /// The queues of `shards` shards; the i-th receivers belong to shard i.
    pub fn new(shards: usize) -> std::io::Result<(Arc<ServicePeers>, Vec<ServiceReceivers>)> {
        let (shard_peers, shard_rx) = Peers::new(shards)?;
        let (replicas, replicas_rx) = Peers::new(shards)?;
        let (groups, groups_rx) = Peers::new(shards)?;
        let (producer_ids, producer_ids_rx) = Peers::new(shards)?;
        let (fetch_sessions, fetch_sessions_rx) = Peers::new(shards)?;
        let (transactions, transactions_rx) = Peers::new(shards)?;
        let receivers = shard_rx
            .into_iter()
            .zip(replicas_rx)
            .zip(groups_rx)
            .zip(producer_ids_rx)
            .zip(fetch_sessions_rx)
            .zip(transactions_rx)
            .map(
                |(((((shard, replicas), groups), producer_ids), fetch_sessions), transactions)| {
                    ServiceReceivers {
                        shard,
                        replicas,
                        groups,
                        producer_ids,
                        fetch_sessions,
                        transactions,
                    }
                },
            )
            .collect();
        let peers = ServicePeers {
            shards: shard_peers,
            replicas,
            groups,
            producer_ids,
            fetch_sessions,
            transactions,
        };
        Ok((Arc::new(peers), receivers))
    }

    /// Jobs queued for `shard` in all its services and not yet started (its load).
    pub fn queued(&self, shard: usize) -> usize {
        self.shards.queued(shard)
            + self.replicas.queued(shard)
            + self.groups.queued(shard)
            + self.producer_ids.queued(shard)
            + self.fetch_sessions.queued(shard)
            + self.transactions.queued(shard)
    }

    /// Hands a new controller image to every shard: the group coordinators forget the
    /// offsets of topics that left it (`previous` is the image applied before), then
    /// replication applies it.
    pub fn apply_image(&self, previous: Option<&ClusterImage>, image: &Arc<ClusterImage>) {
        if let Some(before) = previous {
            let gone: Vec<String> = before
                .topics
                .values()
                .filter(|t| {
                    image
                        .topic(&t.name)
                        .is_none_or(|n| n.topic_id != t.topic_id)
                })
                .map(|t| t.name.clone())
                .collect();
            if !gone.is_empty() {
                for s in 0..self.groups.shard_count() {
                    let topics = gone.clone();
                    let posted = self.groups.post(
                        s,
                        Box::new(move |g: Rc<Groups>| {
                            Box::pin(super::groups::topics_deleted_here(g, topics))
                        }),
                    );
                    if posted.is_err() {
                        tracing::debug!(
                            shard = s,
                            "shard gone; topic deletion not told to its groups"
                        );
                    }
                }
            }
        }
        for s in 0..self.replicas.shard_count() {
            let image = image.clone();
            let posted = self.replicas.post(
                s,
                Box::new(move |r: Rc<Replicas>| Box::pin(super::replicas::reconcile(r, image))),
            );
            if posted.is_err() {
                tracing::debug!(shard = s, "shard gone; metadata not applied");
            }
        }
    }
}

impl Services {
    /// Builds shard `id`'s core and services on its thread and starts their mailboxes and
    /// the group timer. Partitions are not opened yet.
    pub fn start(
        id: usize,
        ctx: Arc<BrokerContext>,
        peers: &ServicePeers,
        rx: ServiceReceivers,
    ) -> Rc<Services> {
        let shard = Rc::new(Shard::new(id, ctx, peers.shards.clone()));
        let replicas = Rc::new(Replicas::new(shard.clone(), peers.replicas.clone()));
        let groups = Groups::new(replicas.clone(), peers.groups.clone());
        let producer_ids = Rc::new(ProducerIds::new(shard.clone(), peers.producer_ids.clone()));
        let fetch_sessions = Rc::new(FetchSessions::new(&shard, peers.fetch_sessions.clone()));
        let transactions = Transactions::new(
            groups.clone(),
            producer_ids.clone(),
            peers.transactions.clone(),
        );
        // Before the mailboxes run: other shards may forward group requests at once.
        super::groups::start(&groups);
        super::transactions::start(&transactions);
        crate::io::runtime::spawn(run_mailbox(shard.clone(), rx.shard));
        crate::io::runtime::spawn(run_mailbox(replicas.clone(), rx.replicas));
        crate::io::runtime::spawn(run_mailbox(groups.clone(), rx.groups));
        crate::io::runtime::spawn(run_mailbox(producer_ids.clone(), rx.producer_ids));
        crate::io::runtime::spawn(run_mailbox(fetch_sessions.clone(), rx.fetch_sessions));
        crate::io::runtime::spawn(run_mailbox(transactions.clone(), rx.transactions));
        Rc::new(Services {
            shard,
            replicas,
            groups,
            producer_ids,
            fetch_sessions,
            transactions,
        })
    }
}
