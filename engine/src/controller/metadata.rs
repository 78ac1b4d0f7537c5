//! The cluster metadata state machine: brokers, topics, partition assignment, leaders, leader
//! epochs and ISRs, as KRaft's `__cluster_metadata` keeps them.
//!
//! Sans-IO and deterministic: [`MetadataImage::apply`] takes one committed
//! [`MetadataCommand`] and the Raft log index it was committed at, validates it against the
//! current image and either changes the image or rejects it with a Kafka error. Every voter
//! applies the same commands in the same order, so every voter holds the same image. Nothing
//! here reads a clock or a random number generator: what must be random (the placement start,
//! the topic id) is chosen by the proposer and carried in the command, and what depends on
//! time (broker session expiry) is decided by the controller leader ([`super::session`]) and
//! written as an explicit [`MetadataCommand::FenceBroker`].

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::replication::policy::{
    ElectionCandidate, ElectionOutcome, IsrPolicy, LogPosition, QuorumPolicy, ReplicationPolicy,
};
use crate::replication::{
    AlterPartitionRequest, BrokerId, LeaderEpoch, PartitionRecordMut, PreferredElection,
    ReplicationConfig, ReplicationMode,
};

use super::error::MetadataError;
use super::scram::{AlterScramCredentials, ScramCredentials};
use crate::security::acl::{AclBinding, AclBindingFilter};
use crate::security::quota::{ClientQuotas, QuotaAlteration};

/// Topic config key selecting the replication rule (`isr` or `quorum`).
pub const REPLICATION_MODE_CONFIG: &str = "replication.mode";
/// Topic config key: smallest ISR accepting acks=all writes.
pub const MIN_INSYNC_REPLICAS_CONFIG: &str = "min.insync.replicas";
/// Topic config key: let an out-of-sync replica lead.
pub const UNCLEAN_LEADER_ELECTION_CONFIG: &str = "unclean.leader.election.enable";
/// Topic config key: lag after which a follower leaves the ISR.
pub const REPLICA_LAG_TIME_MAX_MS_CONFIG: &str = "replica.lag.time.max.ms";

/// Kafka's longest topic name.
const MAX_TOPIC_NAME_LEN: usize = 249;

/// A listener a broker serves clients on (Kafka's `listeners` entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Listener name, e.g. `PLAINTEXT`.
    pub name: String,
    /// Host clients connect to.
    pub host: String,
    /// Port clients connect to.
    pub port: u16,
}

/// A registered broker (Kafka's `RegisterBrokerRecord` plus fencing state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRegistration {
    /// `broker.id` / `node.id`.
    pub broker_id: BrokerId,
    /// The broker epoch: the metadata offset of the registration; a restart gets a new one.
    pub broker_epoch: i64,
    /// Random id of one process lifetime, so a retried registration is recognised.
    pub incarnation: Uuid,
    /// Client listeners.
    pub listeners: Vec<Endpoint>,
    /// Optional rack (`broker.rack`).
    pub rack: Option<String>,
    /// A fenced broker leads nothing and is not eligible for the ISR.
    pub fenced: bool,
}

impl BrokerRegistration {
    /// The endpoint of the listener named `listener` (Kafka answers Metadata,
    /// DescribeCluster and FindCoordinator with the endpoints of the listener the request
    /// arrived on; a broker without that listener is left out).
    pub fn endpoint(&self, listener: &str) -> Option<&Endpoint> {
        self.listeners
            .iter()
            .find(|ep| ep.name.eq_ignore_ascii_case(listener))
    }

    /// The inter-broker listener's endpoint (registered first), for calls between brokers.
    pub fn inter_broker_endpoint(&self) -> Option<&Endpoint> {
        self.listeners.first()
    }
}

/// Where a replica's log ends, as reported for a quorum election (the replication core's
/// [`LogPosition`], in a form the metadata log can store).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaLogPosition {
    /// Epoch of the last record; -1 for an empty log.
    pub last_epoch: LeaderEpoch,
    /// Log end offset.
    pub log_end_offset: i64,
}

impl ReplicaLogPosition {
    /// The replication core's view of this position.
    pub fn to_log_position(self) -> LogPosition {
        LogPosition {
            last_epoch: self.last_epoch,
            log_end_offset: self.log_end_offset,
        }
    }
}

impl From<LogPosition> for ReplicaLogPosition {
    fn from(p: LogPosition) -> Self {
        ReplicaLogPosition {
            last_epoch: p.last_epoch,
            log_end_offset: p.log_end_offset,
        }
    }
}

/// One partition's controller record (Kafka's `PartitionRecord`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionImage {
    /// Partition index.
    pub partition: i32,
    /// Assigned replicas, preferred leader first.
    pub replicas: Vec<BrokerId>,
    /// Committed in-sync replicas.
    pub isr: Vec<BrokerId>,
    /// Current leader, `None` while offline (Kafka's -1).
    pub leader: Option<BrokerId>,
    /// Bumped on every leadership change (to "no leader" included).
    pub leader_epoch: LeaderEpoch,
    /// Bumped on every change of this record; AlterPartition's version check.
    pub partition_epoch: i32,
    /// Quorum elections: log positions reported by replicas fenced to the next leader epoch.
    pub election_reports: BTreeMap<BrokerId, ReplicaLogPosition>,
}

impl PartitionImage {
    /// The epoch the next elected leader gets; quorum elections collect reports for it.
    pub fn next_leader_epoch(&self) -> LeaderEpoch {
        self.leader_epoch + 1
    }

    /// The controller rules' view of this record (the rules the simulator runs too).
    fn record_mut(&mut self) -> PartitionRecordMut<'_> {
        PartitionRecordMut {
            leader: &mut self.leader,
            leader_epoch: &mut self.leader_epoch,
            partition_epoch: &mut self.partition_epoch,
            replicas: &self.replicas,
            isr: &mut self.isr,
        }
    }
}

/// One topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicImage {
    /// Topic name.
    pub name: String,
    /// Topic id (KIP-516).
    pub topic_id: Uuid,
    /// Topic config overrides, `replication.mode` always present.
    pub configs: BTreeMap<String, String>,
    /// Partitions by index.
    pub partitions: Vec<PartitionImage>,
}

impl TopicImage {
    /// The replication rule of this topic.
    pub fn replication_mode(&self) -> ReplicationMode {
        self.configs
            .get(REPLICATION_MODE_CONFIG)
            .and_then(|m| m.parse().ok())
            .unwrap_or(ReplicationMode::Isr)
    }

    /// The replication settings of this topic (Kafka defaults where unset).
    pub fn replication_config(&self) -> ReplicationConfig {
        let mut config = ReplicationConfig::default();
        if let Some(v) = self.configs.get(MIN_INSYNC_REPLICAS_CONFIG) {
            if let Ok(n) = v.parse() {
                config.min_insync_replicas = n;
            }
        }
        if let Some(v) = self.configs.get(UNCLEAN_LEADER_ELECTION_CONFIG) {
            config.unclean_leader_election_enable = v == "true";
        }
        if let Some(v) = self.configs.get(REPLICA_LAG_TIME_MAX_MS_CONFIG) {
            if let Ok(n) = v.parse() {
                config.replica_lag_time_max_ms = n;
            }
        }
        config
    }
}

/// What a config change applies to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ConfigResource {
    /// A topic's overrides.
    Topic(String),
    /// One broker's dynamic configs.
    Broker(BrokerId),
    /// Cluster-wide dynamic defaults.
    Cluster,
}

/// A command in the metadata log. Validation happens at apply time, on every voter alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataCommand {
    /// A broker (re)starts and registers; it starts fenced until its first heartbeat.
    RegisterBroker {
        /// Broker id.
        broker_id: BrokerId,
        /// Process lifetime id.
        incarnation: Uuid,
        /// Client listeners.
        listeners: Vec<Endpoint>,
        /// Rack.
        rack: Option<String>,
    },
    /// The controller saw a heartbeat from a fenced broker: it may lead again.
    UnfenceBroker {
        /// Broker id.
        broker_id: BrokerId,
        /// Epoch of the registration being unfenced.
        broker_epoch: i64,
    },
    /// The broker's session expired (or it shut down): its leaderships move.
    FenceBroker {
        /// Broker id.
        broker_id: BrokerId,
        /// Epoch of the registration being fenced.
        broker_epoch: i64,
    },
    /// Create a topic; replicas are placed on the unfenced brokers at apply time.
    CreateTopic {
        /// Topic name.
        name: String,
        /// Topic id chosen by the proposer.
        topic_id: Uuid,
        /// Partition count.
        partitions: i32,
        /// Replication factor.
        replication_factor: i16,
        /// Config overrides (the proposer fills in `replication.mode`).
        configs: BTreeMap<String, String>,
        /// Random placement start chosen by the proposer (Kafka's random start index).
        placement_start: u32,
    },
    /// Delete a topic.
    DeleteTopic {
        /// Topic name.
        name: String,
    },
    /// Grow a topic to `total_count` partitions.
    CreatePartitions {
        /// Topic name.
        name: String,
        /// New total partition count.
        total_count: i32,
        /// Random placement start for the new partitions.
        placement_start: u32,
    },
    /// A partition leader proposes a new ISR (Kafka's AlterPartition).
    AlterPartition {
        /// Topic name.
        topic: String,
        /// Partition index.
        partition: i32,
        /// The proposing leader.
        broker_id: BrokerId,
        /// The proposer's broker epoch.
        broker_epoch: i64,
        /// The leader epoch the proposer leads in.
        leader_epoch: LeaderEpoch,
        /// The partition epoch the proposal is based on.
        partition_epoch: i32,
        /// Proposed ISR.
        new_isr: Vec<BrokerId>,
    },
    /// A replica fenced itself to a quorum election's epoch and reports its log position.
    ReportReplicaLog {
        /// Topic name.
        topic: String,
        /// Partition index.
        partition: i32,
        /// Reporting replica.
        broker_id: BrokerId,
        /// The election epoch the replica fenced itself to.
        election_epoch: LeaderEpoch,
        /// Its log position.
        position: ReplicaLogPosition,
    },
    /// Set (`Some`) or delete (`None`) dynamic configs.
    ConfigChange {
        /// Target.
        resource: ConfigResource,
        /// Changes.
        changes: BTreeMap<String, Option<String>>,
    },
    /// A broker asks for the next block of producer ids (Kafka's AllocateProducerIds). The
    /// block is recorded in the log, so no block is handed out twice, across restarts and
    /// controller failovers.
    AllocateProducerIds {
        /// The asking broker.
        broker_id: BrokerId,
        /// Its broker epoch.
        broker_epoch: i64,
    },
    /// Add ACL bindings (Kafka's AccessControlEntryRecord): every binding is validated by
    /// `security::acl`; one invalid binding rejects the whole command (INVALID_REQUEST), and
    /// a binding that exists already is kept once.
    CreateAcls {
        /// The bindings.
        bindings: Vec<AclBinding>,
    },
    /// Remove every binding one of the filters selects (Kafka's
    /// RemoveAccessControlEntryRecord). An invalid filter rejects the whole command.
    DeleteAcls {
        /// The filters.
        filters: Vec<AclBindingFilter>,
    },
    /// Add, replace and remove SCRAM credentials (Kafka's UserScramCredentialRecord and
    /// RemoveUserScramCredentialRecord), validated by `controller::scram`.
    AlterScramCredentials(AlterScramCredentials),
    /// No producer id below `below` is handed out from now on (the migration of a node
    /// whose ids came from its own file). Never moves allocation back.
    ReserveProducerIds {
        /// The first id that may still be allocated.
        below: i64,
    },
    /// Set or remove client quotas (Kafka's ClientQuotaRecord): one AlterClientQuotas
    /// request's valid entries; one invalid entry rejects the whole command.
    AlterClientQuotas {
        /// Per entity, the key changes.
        alterations: Vec<QuotaAlteration>,
    },
    /// Leader elections asked for by ElectLeaders or by the controller's automatic leader
    /// rebalance. Each partition is answered on its own ([`Applied::Elections`]).
    ElectLeaders {
        /// Preferred or unclean.
        election: ElectionType,
        /// The partitions; `None`: every partition of every topic (partitions whose election
        /// is not needed are then left out of the answer, as Kafka does).
        partitions: Option<Vec<(String, i32)>>,
    },
}

/// The kind of a leader election asked for (ElectLeaders' `election_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ElectionType {
    /// 0: move leadership to the preferred (first assigned) replica if it is alive and in
    /// the ISR.
    Preferred,
    /// 1: elect a leader for a leaderless partition, out of the ISR if no ISR member is
    /// alive (whatever the topic's `unclean.leader.election.enable`).
    Unclean,
}

impl ElectionType {
    /// ElectLeaders' wire value (0 preferred, 1 unclean); `None` for any other.
    pub fn from_wire(v: i8) -> Option<Self> {
        match v {
            0 => Some(ElectionType::Preferred),
            1 => Some(ElectionType::Unclean),
            _ => None,
        }
    }
}

/// One broker's preferred partitions in the imbalance check: how many, and the ones another
/// broker (or nobody) leads.
type PreferredShare<'a> = (usize, Vec<(String, i32, &'a PartitionImage)>);

/// Kafka error code ELECTION_NOT_NEEDED.
pub const ELECTION_NOT_NEEDED: i16 = 84;
/// Kafka error code PREFERRED_LEADER_NOT_AVAILABLE.
pub const PREFERRED_LEADER_NOT_AVAILABLE: i16 = 80;
/// Kafka error code ELIGIBLE_LEADERS_NOT_AVAILABLE.
pub const ELIGIBLE_LEADERS_NOT_AVAILABLE: i16 = 83;
/// Kafka error code UNKNOWN_TOPIC_OR_PARTITION.
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;

/// One partition's answer to [`MetadataCommand::ElectLeaders`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionElection {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: i32,
    /// Kafka error code, 0 when a leader was elected.
    pub error_code: i16,
    /// Why, when `error_code` is not 0.
    pub message: Option<String>,
}

/// Producer ids in one [`MetadataCommand::AllocateProducerIds`] block (Kafka's block size).
pub const PRODUCER_ID_BLOCK_SIZE: i64 = 1000;

/// What an applied command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// A broker registered with this epoch.
    BrokerRegistered {
        /// The broker epoch.
        broker_epoch: i64,
    },
    /// A topic exists with this id.
    TopicCreated {
        /// Topic id.
        topic_id: Uuid,
    },
    /// A partition record now reads so (AlterPartition answer).
    Partition(PartitionImage),
    /// The producer ids `[first_id, first_id + count)` belong to the asking broker.
    ProducerIds {
        /// First id of the block.
        first_id: i64,
        /// Ids in the block.
        count: i64,
    },
    /// The bindings each filter of a [`MetadataCommand::DeleteAcls`] removed, in filter order
    /// (a binding selected by two filters is reported for the first).
    AclsDeleted(Vec<Vec<AclBinding>>),
    /// Each partition's answer to [`MetadataCommand::ElectLeaders`].
    Elections(Vec<PartitionElection>),
    /// The command changed what it said (or was already in effect).
    Done,
}

/// The result of applying a command, as replicated to the proposer.
pub type ApplyResult = Result<Applied, MetadataError>;

/// The whole cluster metadata at one log offset. Cheap to share behind an `Arc`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataImage {
    /// Raft log index of the last applied command (Kafka's metadata offset).
    pub metadata_offset: u64,
    /// Registered brokers.
    pub brokers: BTreeMap<BrokerId, BrokerRegistration>,
    /// Topics by name.
    pub topics: BTreeMap<String, TopicImage>,
    /// Dynamic configs by resource.
    pub configs: BTreeMap<ConfigResource, BTreeMap<String, String>>,
    /// Elections that chose a leader outside the ISR (data loss possible).
    pub unclean_elections: u64,
    /// The first producer id not yet handed out in a block (0 in images written before
    /// producer-id blocks existed, whose brokers allocated from their own ranges).
    #[serde(default)]
    pub next_producer_id: i64,
    /// The ACL bindings (empty in images written before ACLs were stored).
    #[serde(default)]
    pub acls: BTreeSet<AclBinding>,
    /// The client quotas (empty in images written before quotas were stored).
    #[serde(default)]
    pub client_quotas: ClientQuotas,
    /// The SCRAM credentials (empty in images written before they were stored).
    #[serde(default)]
    pub scram: ScramCredentials,
}

impl MetadataImage {
    /// The partition `topic`-`partition`, or UNKNOWN_TOPIC_OR_PARTITION.
    fn partition_mut(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> Result<&mut PartitionImage, MetadataError> {
        self.topics
            .get_mut(topic)
            .and_then(|t| {
                usize::try_from(partition)
                    .ok()
                    .and_then(|i| t.partitions.get_mut(i))
            })
            .ok_or_else(|| MetadataError::UnknownTopicOrPartition(format!("{topic}-{partition}")))
    }

    /// An empty image.
    pub fn new() -> Self {
        Self::default()
    }

    /// A topic by name.
    pub fn topic(&self, name: &str) -> Option<&TopicImage> {
        self.topics.get(name)
    }

    /// A topic by id.
    pub fn topic_by_id(&self, id: Uuid) -> Option<&TopicImage> {
        self.topics.values().find(|t| t.topic_id == id)
    }

    /// A partition record.
    pub fn partition(&self, topic: &str, partition: i32) -> Option<&PartitionImage> {
        let index = usize::try_from(partition).ok()?;
        self.topics.get(topic)?.partitions.get(index)
    }

    /// A broker's registration.
    pub fn broker(&self, id: BrokerId) -> Option<&BrokerRegistration> {
        self.brokers.get(&id)
    }

    /// Ids of registered, unfenced brokers in id order.
    pub fn live_brokers(&self) -> Vec<BrokerId> {
        self.brokers
            .values()
            .filter(|b| !b.fenced)
            .map(|b| b.broker_id)
            .collect()
    }

    fn is_live(&self, id: BrokerId) -> bool {
        self.brokers.get(&id).is_some_and(|b| !b.fenced)
    }

    /// Applies one committed command at Raft log `index`. Rejected commands leave the image
    /// unchanged apart from the metadata offset.
    pub fn apply(&mut self, index: u64, command: &MetadataCommand) -> ApplyResult {
        debug_assert!(
            index > self.metadata_offset || index == 0,
            "metadata log applied out of order"
        );
        self.metadata_offset = index;
        match command {
            MetadataCommand::RegisterBroker {
                broker_id,
                incarnation,
                listeners,
                rack,
            } => Ok(self.register_broker(index, *broker_id, *incarnation, listeners, rack)),
            MetadataCommand::UnfenceBroker {
                broker_id,
                broker_epoch,
            } => self.unfence_broker(*broker_id, *broker_epoch),
            MetadataCommand::FenceBroker {
                broker_id,
                broker_epoch,
            } => self.fence_broker(*broker_id, *broker_epoch),
            MetadataCommand::CreateTopic {
                name,
                topic_id,
                partitions,
                replication_factor,
                configs,
                placement_start,
            } => self.create_topic(
                name,
                *topic_id,
                *partitions,
                *replication_factor,
                configs,
                *placement_start,
            ),
            MetadataCommand::DeleteTopic { name } => {
                if self.topics.remove(name).is_none() {
                    return Err(MetadataError::UnknownTopicOrPartition(name.clone()));
                }
                self.configs.remove(&ConfigResource::Topic(name.clone()));
                Ok(Applied::Done)
            }
            MetadataCommand::CreatePartitions {
                name,
                total_count,
                placement_start,
            } => self.create_partitions(name, *total_count, *placement_start),
            MetadataCommand::AlterPartition {
                topic,
                partition,
                broker_id,
                broker_epoch,
                leader_epoch,
                partition_epoch,
                new_isr,
            } => self.alter_partition(
                topic,
                *partition,
                *broker_id,
                *broker_epoch,
                *leader_epoch,
                *partition_epoch,
                new_isr,
            ),
            MetadataCommand::ReportReplicaLog {
                topic,
                partition,
                broker_id,
                election_epoch,
                position,
            } => self.report_replica_log(topic, *partition, *broker_id, *election_epoch, *position),
            MetadataCommand::ConfigChange { resource, changes } => {
                self.config_change(resource, changes)
            }
            MetadataCommand::AllocateProducerIds {
                broker_id,
                broker_epoch,
            } => self.allocate_producer_ids(*broker_id, *broker_epoch),
            MetadataCommand::CreateAcls { bindings } => {
                for b in bindings {
                    b.validate()
                        .map_err(|e| MetadataError::InvalidRequest(e.message))?;
                }
                self.acls.extend(bindings.iter().cloned());
                Ok(Applied::Done)
            }
            MetadataCommand::DeleteAcls { filters } => {
                for f in filters {
                    f.validate()
                        .map_err(|e| MetadataError::InvalidRequest(e.message))?;
                }
                let mut removed = Vec::with_capacity(filters.len());
                for f in filters {
                    let matched: Vec<AclBinding> =
                        self.acls.iter().filter(|b| f.matches(b)).cloned().collect();
                    for b in &matched {
                        self.acls.remove(b);
                    }
                    removed.push(matched);
                }
                Ok(Applied::AclsDeleted(removed))
            }
            MetadataCommand::AlterScramCredentials(alter) => {
                self.scram.apply(alter).map(|()| Applied::Done)
            }
            MetadataCommand::ReserveProducerIds { below } => {
                self.next_producer_id = self.next_producer_id.max(*below);
                Ok(Applied::Done)
            }
            MetadataCommand::AlterClientQuotas { alterations } => {
                self.client_quotas
                    .apply(alterations)
                    .map_err(|e| MetadataError::InvalidRequest(e.0))?;
                Ok(Applied::Done)
            }
            MetadataCommand::ElectLeaders {
                election,
                partitions,
            } => Ok(Applied::Elections(
                self.elect_leaders(*election, partitions.as_deref()),
            )),
        }
    }

    /// Runs the asked elections, one answer per partition (see [`ElectionType`]).
    fn elect_leaders(
        &mut self,
        election: ElectionType,
        partitions: Option<&[(String, i32)]>,
    ) -> Vec<PartitionElection> {
        let all = partitions.is_none();
        let targets: Vec<(String, i32)> = match partitions {
            Some(list) => {
                let mut seen = BTreeSet::new();
                list.iter()
                    .filter(|tp| seen.insert((*tp).clone()))
                    .cloned()
                    .collect()
            }
            None => self
                .topics
                .values()
                .flat_map(|t| (0..t.partitions.len() as i32).map(move |i| (t.name.clone(), i)))
                .collect(),
        };
        let mut out = Vec::with_capacity(targets.len());
        for (topic, partition) in targets {
            let (error_code, message) = match self.elect_one(election, &topic, partition) {
                Ok(()) => (0, None),
                Err((code, message)) => (code, Some(message)),
            };
            if all && error_code == ELECTION_NOT_NEEDED {
                continue;
            }
            out.push(PartitionElection {
                topic,
                partition,
                error_code,
                message,
            });
        }
        out
    }

    /// One partition's election of [`Self::elect_leaders`].
    fn elect_one(
        &mut self,
        election: ElectionType,
        topic: &str,
        partition: i32,
    ) -> Result<(), (i16, String)> {
        let live = self.live_brokers();
        let unknown = || {
            (
                UNKNOWN_TOPIC_OR_PARTITION,
                format!("no such partition {topic}-{partition}"),
            )
        };
        let t = self.topics.get_mut(topic).ok_or_else(unknown)?;
        let mode = t.replication_mode();
        let mut config = t.replication_config();
        let p = usize::try_from(partition)
            .ok()
            .and_then(|i| t.partitions.get_mut(i))
            .ok_or_else(unknown)?;
        match election {
            ElectionType::Preferred => {
                if !p.replicas.is_empty() && p.leader == p.replicas.first().copied() {
                    return Err((
                        ELECTION_NOT_NEEDED,
                        "the preferred replica leads already".into(),
                    ));
                }
                if mode == ReplicationMode::Quorum {
                    // ISR membership does not prove a quorum replica holds every committed
                    // record (a majority commits without it), so handing it leadership could
                    // lose acknowledged writes. Quorum leaders change only by a vote.
                    return Err((
                        PREFERRED_LEADER_NOT_AVAILABLE,
                        "quorum-mode partitions change leader only by a majority vote".into(),
                    ));
                }
                let outcome = p.record_mut().elect_preferred(|b| live.contains(&b));
                match outcome {
                    PreferredElection::NotNeeded => Err((
                        ELECTION_NOT_NEEDED,
                        "the preferred replica leads already".into(),
                    )),
                    PreferredElection::NotAvailable => Err((
                        PREFERRED_LEADER_NOT_AVAILABLE,
                        format!(
                            "preferred replica {:?} of {topic}-{partition} is not alive or not in the ISR",
                            p.replicas.first()
                        ),
                    )),
                    PreferredElection::Elected(leader) => {
                        p.election_reports.clear();
                        tracing::info!(
                            topic,
                            partition,
                            leader,
                            epoch = p.leader_epoch,
                            "preferred leader elected"
                        );
                        Ok(())
                    }
                }
            }
            ElectionType::Unclean => {
                if p.leader.is_some() {
                    return Err((ELECTION_NOT_NEEDED, "the partition has a leader".into()));
                }
                if mode == ReplicationMode::Quorum {
                    // Electing without a majority's vote could lose committed records; the
                    // vote goes on until a majority of replicas is alive.
                    return Err((
                        ELIGIBLE_LEADERS_NOT_AVAILABLE,
                        "quorum-mode partitions elect only by a majority vote; no unclean election"
                            .into(),
                    ));
                }
                config.unclean_leader_election_enable = true;
                let candidates: Vec<ElectionCandidate> = p
                    .replicas
                    .iter()
                    .map(|&b| ElectionCandidate {
                        broker_id: b,
                        alive: live.contains(&b),
                        in_isr: p.isr.contains(&b),
                        log: None,
                    })
                    .collect();
                let outcome = p.record_mut().elect(&IsrPolicy, &config, &candidates);
                match outcome {
                    ElectionOutcome::Elected { leader, unclean } => {
                        p.election_reports.clear();
                        let epoch = p.leader_epoch;
                        if unclean {
                            self.unclean_elections += 1;
                            tracing::warn!(
                                topic,
                                partition,
                                leader,
                                epoch,
                                "unclean leader election (ElectLeaders)"
                            );
                        } else {
                            tracing::info!(
                                topic,
                                partition,
                                leader,
                                epoch,
                                "leader elected (ElectLeaders)"
                            );
                        }
                        Ok(())
                    }
                    _ => Err((
                        ELIGIBLE_LEADERS_NOT_AVAILABLE,
                        format!("no live replica of {topic}-{partition}"),
                    )),
                }
            }
        }
    }

    /// Kafka's automatic leader rebalance check: per broker, the share of the partitions
    /// whose preferred replica it is but which it does not lead; when that share is above
    /// `percentage` %, the partitions of that broker whose preferred replica is alive and in
    /// the ISR (the ones a preferred election would move). `isr`-mode topics only (a
    /// quorum-mode partition does not take preferred elections).
    pub fn imbalanced_partitions(&self, percentage: u32) -> Vec<(String, i32)> {
        // preferred broker -> (partitions it should lead, the ones it does not lead)
        let mut by_broker: BTreeMap<BrokerId, PreferredShare<'_>> = BTreeMap::new();
        for t in self.topics.values() {
            if t.replication_mode() != ReplicationMode::Isr {
                continue;
            }
            for p in &t.partitions {
                let Some(&preferred) = p.replicas.first() else {
                    continue;
                };
                let entry = by_broker.entry(preferred).or_default();
                entry.0 += 1;
                if p.leader != Some(preferred) {
                    entry.1.push((t.name.clone(), p.partition, p));
                }
            }
        }
        let mut out = Vec::new();
        for (broker, (total, off)) in by_broker {
            // ratio > percentage / 100, in integers.
            if total == 0 || off.len() * 100 <= total * percentage as usize {
                continue;
            }
            if !self.is_live(broker) {
                continue;
            }
            out.extend(
                off.into_iter()
                    .filter(|(_, _, p)| p.isr.contains(&broker))
                    .map(|(t, i, _)| (t, i)),
            );
        }
        out
    }

    fn allocate_producer_ids(&mut self, broker_id: BrokerId, broker_epoch: i64) -> ApplyResult {
        self.checked_broker(broker_id, broker_epoch)?;
        let first_id = self.next_producer_id;
        let end = first_id
            .checked_add(PRODUCER_ID_BLOCK_SIZE)
            .ok_or(MetadataError::ProducerIdsExhausted(first_id))?;
        assert!(end > self.next_producer_id, "producer id blocks went back");
        self.next_producer_id = end;
        tracing::debug!(broker_id, first_id, end, "producer id block allocated");
        Ok(Applied::ProducerIds {
            first_id,
            count: PRODUCER_ID_BLOCK_SIZE,
        })
    }

    fn register_broker(
        &mut self,
        index: u64,
        broker_id: BrokerId,
        incarnation: Uuid,
        listeners: &[Endpoint],
        rack: &Option<String>,
    ) -> Applied {
        if let Some(existing) = self.brokers.get_mut(&broker_id) {
            if existing.incarnation == incarnation {
                // A retried registration of the same process keeps its epoch.
                existing.listeners = listeners.to_vec();
                existing.rack = rack.clone();
                return Applied::BrokerRegistered {
                    broker_epoch: existing.broker_epoch,
                };
            }
        }
        let was_live = self.is_live(broker_id);
        let broker_epoch = i64::try_from(index).unwrap_or(i64::MAX);
        self.brokers.insert(
            broker_id,
            BrokerRegistration {
                broker_id,
                broker_epoch,
                incarnation,
                listeners: listeners.to_vec(),
                rack: rack.clone(),
                fenced: true,
            },
        );
        if was_live {
            // A new incarnation replaces a live one: the old process is gone, so are its
            // leaderships (Kafka fences the previous registration the same way).
            self.move_leaderships_off(broker_id);
        }
        Applied::BrokerRegistered { broker_epoch }
    }

    fn checked_broker(
        &mut self,
        broker_id: BrokerId,
        broker_epoch: i64,
    ) -> Result<&mut BrokerRegistration, MetadataError> {
        let broker = self
            .brokers
            .get_mut(&broker_id)
            .ok_or(MetadataError::BrokerIdNotRegistered(broker_id))?;
        if broker.broker_epoch != broker_epoch {
            return Err(MetadataError::StaleBrokerEpoch {
                broker_id,
                request: broker_epoch,
                current: broker.broker_epoch,
            });
        }
        Ok(broker)
    }

    fn unfence_broker(&mut self, broker_id: BrokerId, broker_epoch: i64) -> ApplyResult {
        let broker = self.checked_broker(broker_id, broker_epoch)?;
        if !broker.fenced {
            return Ok(Applied::Done);
        }
        broker.fenced = false;
        tracing::info!(broker_id, broker_epoch, "broker unfenced");
        // Offline partitions this broker replicates may elect now.
        let policy_elections: Vec<(String, usize)> = self
            .topics
            .iter()
            .flat_map(|(name, t)| {
                t.partitions
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.leader.is_none() && p.replicas.contains(&broker_id))
                    .map(move |(i, _)| (name.clone(), i))
            })
            .collect();
        for (topic, index) in policy_elections {
            self.try_elect(&topic, index);
        }
        Ok(Applied::Done)
    }

    fn fence_broker(&mut self, broker_id: BrokerId, broker_epoch: i64) -> ApplyResult {
        let broker = self.checked_broker(broker_id, broker_epoch)?;
        if broker.fenced {
            return Ok(Applied::Done);
        }
        broker.fenced = true;
        tracing::info!(broker_id, broker_epoch, "broker fenced");
        self.move_leaderships_off(broker_id);
        Ok(Applied::Done)
    }

    /// Drops `broker` from every ISR (the last member stays, so a clean election can wait for
    /// it), takes its leaderships away and elects new leaders where the policy allows.
    fn move_leaderships_off(&mut self, broker: BrokerId) {
        let names: Vec<String> = self.topics.keys().cloned().collect();
        for name in names {
            let count = self.topics.get(&name).map_or(0, |t| t.partitions.len());
            for index in 0..count {
                let Some(p) = self
                    .topics
                    .get_mut(&name)
                    .and_then(|t| t.partitions.get_mut(index))
                else {
                    continue;
                };
                if !p.replicas.contains(&broker) {
                    continue;
                }
                p.election_reports.remove(&broker);
                if p.record_mut().fence_replica(broker).lost_leader {
                    p.election_reports.clear();
                }
                if p.leader.is_none() {
                    self.try_elect(&name, index);
                }
            }
        }
    }

    /// Elects a leader for an offline partition through its topic's replication policy.
    /// ISR: the first live ISR member (or any live replica if unclean election is enabled).
    /// Quorum: the most up-to-date reported log among a live majority; a partition that never
    /// had a leader has empty logs everywhere, so its first live replica leads once a live
    /// majority exists.
    fn try_elect(&mut self, topic: &str, index: usize) {
        let live: Vec<BrokerId> = self.live_brokers();
        let Some(t) = self.topics.get_mut(topic) else {
            return;
        };
        let mode = t.replication_mode();
        let config = t.replication_config();
        let Some(p) = t.partitions.get_mut(index) else {
            return;
        };
        if p.leader.is_some() {
            return;
        }
        let never_led = p.leader_epoch < 0;
        let candidates: Vec<ElectionCandidate> = p
            .replicas
            .iter()
            .map(|&b| ElectionCandidate {
                broker_id: b,
                alive: live.contains(&b),
                in_isr: p.isr.contains(&b),
                log: if never_led {
                    live.contains(&b).then_some(LogPosition {
                        last_epoch: -1,
                        log_end_offset: 0,
                    })
                } else {
                    p.election_reports.get(&b).map(|r| r.to_log_position())
                },
            })
            .collect();
        let policy: &dyn ReplicationPolicy = match mode {
            ReplicationMode::Isr => &IsrPolicy,
            ReplicationMode::Quorum => &QuorumPolicy,
        };
        let ElectionOutcome::Elected { leader, unclean } =
            p.record_mut().elect(policy, &config, &candidates)
        else {
            return;
        };
        p.election_reports.clear();
        let epoch = p.leader_epoch;
        if unclean {
            self.unclean_elections += 1;
            tracing::warn!(
                topic,
                partition = index,
                leader,
                epoch,
                "unclean leader election"
            );
        } else {
            tracing::info!(topic, partition = index, leader, epoch, "leader elected");
        }
    }

    fn create_topic(
        &mut self,
        name: &str,
        topic_id: Uuid,
        partitions: i32,
        replication_factor: i16,
        configs: &BTreeMap<String, String>,
        placement_start: u32,
    ) -> ApplyResult {
        validate_topic_name(name)?;
        if let Some(existing) = self.topics.get(name) {
            if existing.topic_id == topic_id {
                // A forwarded proposal retried after a failover: already done.
                return Ok(Applied::TopicCreated { topic_id });
            }
            return Err(MetadataError::TopicAlreadyExists(name.to_string()));
        }
        if topic_id.is_nil() || self.topic_by_id(topic_id).is_some() {
            return Err(MetadataError::InvalidTopic(format!(
                "topic id {topic_id} is nil or in use"
            )));
        }
        if partitions < 1 {
            return Err(MetadataError::InvalidPartitions(format!(
                "partition count must be positive, got {partitions}"
            )));
        }
        validate_topic_configs(configs)?;
        let brokers = self.live_brokers();
        if replication_factor < 1 || replication_factor as usize > brokers.len() {
            return Err(MetadataError::InvalidReplicationFactor {
                requested: replication_factor,
                available: brokers.len(),
            });
        }
        let assignment = self.place(0, partitions, replication_factor as usize, placement_start);
        let topic = TopicImage {
            name: name.to_string(),
            topic_id,
            configs: configs.clone(),
            partitions: assignment
                .into_iter()
                .enumerate()
                .map(|(i, replicas)| new_partition(i as i32, replicas))
                .collect(),
        };
        self.topics.insert(name.to_string(), topic);
        for index in 0..partitions as usize {
            self.try_elect(name, index);
        }
        tracing::info!(topic = name, %topic_id, partitions, replication_factor, "topic created");
        Ok(Applied::TopicCreated { topic_id })
    }

    fn create_partitions(&mut self, name: &str, total: i32, placement_start: u32) -> ApplyResult {
        let brokers = self.live_brokers();
        let topic = self
            .topics
            .get(name)
            .ok_or_else(|| MetadataError::UnknownTopicOrPartition(name.to_string()))?;
        let current = topic.partitions.len() as i32;
        if total <= current {
            return Err(MetadataError::InvalidPartitions(format!(
                "topic {name} has {current} partitions; the new count must be larger, got {total}"
            )));
        }
        let rf = topic.partitions.first().map_or(1, |p| p.replicas.len());
        if rf > brokers.len() {
            return Err(MetadataError::InvalidReplicationFactor {
                requested: rf as i16,
                available: brokers.len(),
            });
        }
        let assignment = self.place(current, total - current, rf, placement_start);
        let Some(topic) = self.topics.get_mut(name) else {
            return Err(MetadataError::UnknownTopicOrPartition(name.to_string()));
        };
        for (k, replicas) in assignment.into_iter().enumerate() {
            topic
                .partitions
                .push(new_partition(current + k as i32, replicas));
        }
        for index in current as usize..total as usize {
            self.try_elect(name, index);
        }
        Ok(Applied::Done)
    }

    #[allow(clippy::too_many_arguments)]
    fn alter_partition(
        &mut self,
        topic: &str,
        partition: i32,
        broker_id: BrokerId,
        broker_epoch: i64,
        leader_epoch: LeaderEpoch,
        partition_epoch: i32,
        new_isr: &[BrokerId],
    ) -> ApplyResult {
        self.checked_broker(broker_id, broker_epoch)?;
        let live = self.live_brokers();
        let p = self.partition_mut(topic, partition)?;
        let request = AlterPartitionRequest {
            broker_id,
            leader_epoch,
            partition_epoch,
            new_isr: new_isr.to_vec(),
        };
        p.record_mut()
            .alter_partition(&request, |b| live.contains(&b))
            .map_err(|e| MetadataError::from_rule(e, broker_id))?;
        Ok(Applied::Partition(p.clone()))
    }

    fn report_replica_log(
        &mut self,
        topic: &str,
        partition: i32,
        broker_id: BrokerId,
        election_epoch: LeaderEpoch,
        position: ReplicaLogPosition,
    ) -> ApplyResult {
        let live = self.is_live(broker_id);
        let p = self.partition_mut(topic, partition)?;
        if p.leader.is_some() || election_epoch != p.next_leader_epoch() {
            // The election this report was for is over (or not this one).
            return Err(MetadataError::FencedLeaderEpoch {
                request: election_epoch,
                current: p.leader_epoch,
            });
        }
        if !p.replicas.contains(&broker_id) || !live {
            return Err(MetadataError::IneligibleReplica(broker_id));
        }
        p.election_reports.insert(broker_id, position);
        let index = partition as usize;
        self.try_elect(topic, index);
        match self.partition(topic, partition) {
            Some(p) => Ok(Applied::Partition(p.clone())),
            None => Ok(Applied::Done),
        }
    }

    fn config_change(
        &mut self,
        resource: &ConfigResource,
        changes: &BTreeMap<String, Option<String>>,
    ) -> ApplyResult {
        match resource {
            ConfigResource::Topic(name) => {
                let topic = self
                    .topics
                    .get(name)
                    .ok_or_else(|| MetadataError::UnknownTopicOrPartition(name.clone()))?;
                let mut next = topic.configs.clone();
                for (k, v) in changes {
                    match v {
                        Some(v) => next.insert(k.clone(), v.clone()),
                        None if k == REPLICATION_MODE_CONFIG => {
                            return Err(MetadataError::InvalidConfig(
                                "replication.mode cannot be removed from a topic".into(),
                            ))
                        }
                        None => next.remove(k),
                    };
                }
                if next.get(REPLICATION_MODE_CONFIG) != topic.configs.get(REPLICATION_MODE_CONFIG) {
                    // Switching rules under live replicas would break both rules' invariants.
                    return Err(MetadataError::InvalidConfig(
                        "replication.mode is fixed at topic creation".into(),
                    ));
                }
                validate_topic_configs(&next)?;
                if let Some(t) = self.topics.get_mut(name) {
                    t.configs = next;
                }
            }
            ConfigResource::Broker(_) | ConfigResource::Cluster => {
                let entry = self.configs.entry(resource.clone()).or_default();
                for (k, v) in changes {
                    match v {
                        Some(v) => entry.insert(k.clone(), v.clone()),
                        None => entry.remove(k),
                    };
                }
            }
        }
        Ok(Applied::Done)
    }

    /// Places `count` partitions from index `first` on the live brokers: rack-aware
    /// ([`place_replicas_rack_aware`]) when any live broker has a rack, else
    /// [`place_replicas`].
    fn place(
        &self,
        first: i32,
        count: i32,
        replication_factor: usize,
        start: u32,
    ) -> Vec<Vec<BrokerId>> {
        let live: Vec<(BrokerId, Option<String>)> = self
            .brokers
            .values()
            .filter(|b| !b.fenced)
            .map(|b| (b.broker_id, b.rack.clone()))
            .collect();
        if live.iter().any(|(_, rack)| rack.is_some()) {
            place_replicas_rack_aware(&live, first, count, replication_factor, start)
        } else {
            let ids: Vec<BrokerId> = live.iter().map(|(b, _)| *b).collect();
            place_replicas(&ids, first, count, replication_factor, start)
        }
    }

    /// Serialises the whole image (the Raft snapshot payload).
    pub fn to_snapshot(&self) -> Result<Vec<u8>, MetadataError> {
        serde_json::to_vec(self).map_err(|e| MetadataError::Snapshot(e.to_string()))
    }

    /// Restores an image from [`MetadataImage::to_snapshot`] bytes.
    pub fn from_snapshot(bytes: &[u8]) -> Result<Self, MetadataError> {
        serde_json::from_slice(bytes).map_err(|e| MetadataError::Snapshot(e.to_string()))
    }
}

fn new_partition(partition: i32, replicas: Vec<BrokerId>) -> PartitionImage {
    PartitionImage {
        partition,
        isr: replicas.clone(),
        replicas,
        leader: None,
        leader_epoch: -1,
        partition_epoch: 0,
        election_reports: BTreeMap::new(),
    }
}

/// Replica placement from the seeds, with Kafka's random start: partition `i` on broker
/// `(start + i) mod n`, its `j`-th replica on `(start + i + j) mod n`, over `brokers` sorted by
/// id. `first` is the index of the first new partition (non-zero for CreatePartitions).
pub fn place_replicas(
    brokers: &[BrokerId],
    first: i32,
    count: i32,
    replication_factor: usize,
    start: u32,
) -> Vec<Vec<BrokerId>> {
    let n = brokers.len();
    if n == 0 || count <= 0 {
        return Vec::new();
    }
    debug_assert!(replication_factor <= n);
    let start = start as usize % n;
    (0..count as usize)
        .map(|k| {
            let i = first as usize + k;
            (0..replication_factor)
                .map(|j| brokers[(start + i + j) % n])
                .collect()
        })
        .collect()
}

/// Kafka's rack-aware replica assignment: the brokers are listed alternating between racks
/// (racks in name order, each rack's brokers in id order); partition `i`'s first replica is
/// the `(start + i)`-th broker of that list (so leaderships go round robin), and each further
/// replica is the next broker, at a shift that grows once per pass over the list, skipping a
/// broker whose rack already holds a replica while some rack holds none, and a broker that
/// holds one while some broker holds none. With at least `replication_factor` racks, every
/// partition's replicas are on distinct racks. Brokers without a rack count as one rack of
/// their own (as Kafka's KRaft placer treats them), placed after the named racks.
pub fn place_replicas_rack_aware(
    brokers: &[(BrokerId, Option<String>)],
    first: i32,
    count: i32,
    replication_factor: usize,
    start: u32,
) -> Vec<Vec<BrokerId>> {
    let n = brokers.len();
    if n == 0 || count <= 0 {
        return Vec::new();
    }
    debug_assert!(replication_factor <= n);
    // Rack -> brokers in id order; `None` (no rack) sorts last.
    let mut by_rack: BTreeMap<(bool, String), Vec<BrokerId>> = BTreeMap::new();
    for (b, rack) in brokers {
        let key = match rack {
            Some(r) => (false, r.clone()),
            None => (true, String::new()),
        };
        by_rack.entry(key).or_default().push(*b);
    }
    for list in by_rack.values_mut() {
        list.sort_unstable();
    }
    let rack_lists: Vec<(&(bool, String), &Vec<BrokerId>)> = by_rack.iter().collect();
    let num_racks = rack_lists.len();
    let mut arranged: Vec<BrokerId> = Vec::with_capacity(n);
    let mut rack_of: BTreeMap<BrokerId, usize> = BTreeMap::new();
    let mut round = 0;
    while arranged.len() < n {
        for (r, (_, list)) in rack_lists.iter().enumerate() {
            if let Some(&b) = list.get(round) {
                arranged.push(b);
                rack_of.insert(b, r);
            }
        }
        round += 1;
    }
    let start = start as usize % n;
    let mut shift = start;
    let mut out = Vec::with_capacity(count as usize);
    for k in 0..count as usize {
        let i = first.max(0) as usize + k;
        if i > 0 && i.is_multiple_of(n) {
            shift += 1;
        }
        let first_index = (i + start) % n;
        let leader = arranged[first_index];
        let mut replicas = vec![leader];
        let mut racks_used = BTreeSet::from([rack_of[&leader]]);
        let mut step = 0usize;
        while replicas.len() < replication_factor.min(n) {
            // The candidate after `first_index` at this shift (never the leader itself).
            let offset = 1 + (shift * num_racks + step) % (n - 1);
            let broker = arranged[(first_index + offset) % n];
            let rack = rack_of[&broker];
            let rack_ok = !racks_used.contains(&rack) || racks_used.len() == num_racks;
            let broker_ok = !replicas.contains(&broker) || replicas.len() == n;
            if rack_ok && broker_ok {
                replicas.push(broker);
                racks_used.insert(rack);
            }
            step += 1;
        }
        out.push(replicas);
    }
    out
}

/// Kafka's topic name rule: 1..=249 chars of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), MetadataError> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-');
    if name.is_empty()
        || name.len() > MAX_TOPIC_NAME_LEN
        || name == "."
        || name == ".."
        || !ok_chars
    {
        return Err(MetadataError::InvalidTopic(format!(
            "invalid topic name `{name}`"
        )));
    }
    Ok(())
}

fn validate_topic_configs(configs: &BTreeMap<String, String>) -> Result<(), MetadataError> {
    if let Some(mode) = configs.get(REPLICATION_MODE_CONFIG) {
        mode.parse::<ReplicationMode>()
            .map_err(|e| MetadataError::InvalidConfig(e.to_string()))?;
    }
    if let Some(v) = configs.get(MIN_INSYNC_REPLICAS_CONFIG) {
        match v.parse::<usize>() {
            Ok(n) if n >= 1 => {}
            _ => {
                return Err(MetadataError::InvalidConfig(format!(
                    "min.insync.replicas must be a positive integer, got `{v}`"
                )))
            }
        }
    }
    if let Some(v) = configs.get(UNCLEAN_LEADER_ELECTION_CONFIG) {
        if v != "true" && v != "false" {
            return Err(MetadataError::InvalidConfig(format!(
                "unclean.leader.election.enable must be true or false, got `{v}`"
            )));
        }
    }
    if let Some(v) = configs.get(REPLICA_LAG_TIME_MAX_MS_CONFIG) {
        match v.parse::<u64>() {
            Ok(n) if n >= 1 => {}
            _ => {
                return Err(MetadataError::InvalidConfig(format!(
                    "replica.lag.time.max.ms must be a positive integer, got `{v}`"
                )))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::acl::{
        AccessControlEntry, AclOperation, AclPermissionType, PatternType, ResourcePattern,
        ResourceType,
    };
    use proptest::prelude::*;

    fn register(image: &mut MetadataImage, index: &mut u64, id: BrokerId) -> i64 {
        *index += 1;
        let cmd = MetadataCommand::RegisterBroker {
            broker_id: id,
            incarnation: Uuid::from_u128(id as u128 + 1 + *index as u128 * 1000),
            listeners: vec![Endpoint {
                name: "PLAINTEXT".into(),
                host: "127.0.0.1".into(),
                port: 9092 + id as u16,
            }],
            rack: None,
        };
        let Ok(Applied::BrokerRegistered { broker_epoch }) = image.apply(*index, &cmd) else {
            panic!("registration failed");
        };
        *index += 1;
        let unfence = MetadataCommand::UnfenceBroker {
            broker_id: id,
            broker_epoch,
        };
        assert_eq!(image.apply(*index, &unfence), Ok(Applied::Done));
        broker_epoch
    }

    fn cluster(n: i32) -> (MetadataImage, u64, Vec<i64>) {
        let mut image = MetadataImage::new();
        let mut index = 0;
        let epochs = (1..=n)
            .map(|b| register(&mut image, &mut index, b))
            .collect();
        (image, index, epochs)
    }

    fn create(
        image: &mut MetadataImage,
        index: &mut u64,
        name: &str,
        partitions: i32,
        rf: i16,
        mode: &str,
        start: u32,
    ) -> ApplyResult {
        *index += 1;
        let mut configs = BTreeMap::new();
        configs.insert(REPLICATION_MODE_CONFIG.to_string(), mode.to_string());
        image.apply(
            *index,
            &MetadataCommand::CreateTopic {
                name: name.into(),
                topic_id: Uuid::from_u128(0xabc0 + *index as u128),
                partitions,
                replication_factor: rf,
                configs,
                placement_start: start,
            },
        )
    }

    fn allocate(
        image: &mut MetadataImage,
        index: &mut u64,
        id: BrokerId,
        epoch: i64,
    ) -> ApplyResult {
        *index += 1;
        image.apply(
            *index,
            &MetadataCommand::AllocateProducerIds {
                broker_id: id,
                broker_epoch: epoch,
            },
        )
    }

    fn block(r: ApplyResult) -> std::ops::Range<i64> {
        match r {
            Ok(Applied::ProducerIds { first_id, count }) => first_id..first_id + count,
            other => panic!("expected a producer id block, got {other:?}"),
        }
    }

    #[test]
    fn producer_id_blocks_are_disjoint_and_survive_snapshots() {
        let (mut image, mut index, epochs) = cluster(3);
        let mut seen: Vec<std::ops::Range<i64>> = Vec::new();
        for round in 0..4 {
            for b in 1..=3 {
                let r = block(allocate(&mut image, &mut index, b, epochs[b as usize - 1]));
                assert_eq!(r.end - r.start, PRODUCER_ID_BLOCK_SIZE);
                assert!(
                    seen.iter().all(|s| r.start >= s.end || r.end <= s.start),
                    "round {round}: block {r:?} overlaps {seen:?}"
                );
                seen.push(r);
            }
            // A restarted controller rebuilds its state from the snapshot: the next block
            // still comes after every block handed out before.
            let restored = MetadataImage::from_snapshot(&image.to_snapshot().expect("snapshot"))
                .expect("restore");
            assert_eq!(restored, image);
            image = restored;
        }
        let next = block(allocate(&mut image, &mut index, 2, epochs[1]));
        assert!(seen.iter().all(|s| next.start >= s.end));
        // A stale or unknown registration gets nothing and moves nothing.
        let before = image.next_producer_id;
        assert!(matches!(
            allocate(&mut image, &mut index, 1, epochs[0] + 99),
            Err(MetadataError::StaleBrokerEpoch { .. })
        ));
        assert!(matches!(
            allocate(&mut image, &mut index, 9, 0),
            Err(MetadataError::BrokerIdNotRegistered(9))
        ));
        assert_eq!(image.next_producer_id, before);
    }

    #[test]
    fn producer_id_blocks_replay_deterministically_and_old_snapshots_load() {
        let (mut a, mut ia, epochs) = cluster(2);
        let mut b = a.clone();
        let mut ib = ia;
        for _ in 0..3 {
            let x = block(allocate(&mut a, &mut ia, 1, epochs[0]));
            let y = block(allocate(&mut b, &mut ib, 1, epochs[0]));
            assert_eq!(x, y, "every voter applies the same block");
        }
        // A snapshot written before producer id blocks existed has no counter: it starts at 0.
        let mut json: serde_json::Value =
            serde_json::from_slice(&a.to_snapshot().expect("snapshot")).expect("json");
        json.as_object_mut()
            .expect("object")
            .remove("next_producer_id");
        let old = MetadataImage::from_snapshot(&serde_json::to_vec(&json).expect("encode"))
            .expect("old snapshot loads");
        assert_eq!(old.next_producer_id, 0);
        // The ids space is bounded: the last block is refused, not wrapped.
        a.next_producer_id = i64::MAX - 10;
        assert!(matches!(
            allocate(&mut a, &mut ia, 1, epochs[0]),
            Err(MetadataError::ProducerIdsExhausted(_))
        ));
    }

    fn topic_acl(
        name: &str,
        pt: PatternType,
        principal: &str,
        op: AclOperation,
        perm: AclPermissionType,
    ) -> AclBinding {
        AclBinding::new(
            ResourcePattern::new(ResourceType::Topic, name, pt),
            AccessControlEntry::new(principal, "*", op, perm),
        )
    }

    #[test]
    fn acls_apply_replay_and_survive_snapshots() {
        use AclOperation::{Read, Write};
        use AclPermissionType::{Allow, Deny};
        let (mut a, mut index, _) = cluster(1);
        let alice_write = topic_acl("orders", PatternType::Literal, "User:alice", Write, Allow);
        let bob_prefix = topic_acl("ord", PatternType::Prefixed, "User:bob", Read, Allow);
        let deny = topic_acl("orders", PatternType::Literal, "User:bob", Read, Deny);
        let mut log = vec![
            MetadataCommand::CreateAcls {
                bindings: vec![alice_write.clone(), bob_prefix.clone(), alice_write.clone()],
            },
            MetadataCommand::CreateAcls {
                bindings: vec![deny.clone()],
            },
        ];
        for cmd in &log {
            index += 1;
            assert_eq!(a.apply(index, cmd), Ok(Applied::Done));
        }
        assert_eq!(a.acls.len(), 3, "a binding added twice is kept once");
        // One invalid binding rejects the whole command and changes nothing.
        index += 1;
        let bad = MetadataCommand::CreateAcls {
            bindings: vec![
                topic_acl("x", PatternType::Literal, "User:carol", Write, Allow),
                topic_acl("x", PatternType::Literal, "no-colon", Write, Allow),
            ],
        };
        let before = a.acls.clone();
        assert_eq!(a.apply(index, &bad).unwrap_err().code(), 42);
        assert_eq!(a.acls, before);
        // DeleteAcls: per filter, what it removed.
        let mut bob_filter = AclBindingFilter::any();
        bob_filter.entry.principal = Some("User:bob".into());
        let delete = MetadataCommand::DeleteAcls {
            filters: vec![bob_filter, alice_write.to_filter()],
        };
        index += 1;
        let removed = a.apply(index, &delete).expect("delete applies");
        let Applied::AclsDeleted(per_filter) = removed else {
            panic!("unexpected {removed:?}")
        };
        assert_eq!(per_filter.len(), 2);
        assert_eq!(per_filter[0].len(), 2);
        assert_eq!(per_filter[1], vec![alice_write.clone()]);
        assert!(a.acls.is_empty());
        log.push(delete);
        // Replaying the same log gives the same image; a snapshot round-trips the bindings.
        let (mut b, mut ib, _) = cluster(1);
        for cmd in &log[..2] {
            ib += 1;
            b.apply(ib, cmd).expect("replay");
        }
        let restored =
            MetadataImage::from_snapshot(&b.to_snapshot().expect("snapshot")).expect("restore");
        assert_eq!(restored, b);
        assert_eq!(restored.acls.len(), 3);
        let serial: Vec<u8> = serde_json::to_vec(&log[1]).expect("encode command");
        let decoded: MetadataCommand = serde_json::from_slice(&serial).expect("decode command");
        assert_eq!(decoded, log[1]);
        // A snapshot written before ACLs were stored has none.
        let mut json: serde_json::Value =
            serde_json::from_slice(&b.to_snapshot().expect("snapshot")).expect("json");
        json.as_object_mut().expect("object").remove("acls");
        let old = MetadataImage::from_snapshot(&serde_json::to_vec(&json).expect("encode"))
            .expect("old snapshot loads");
        assert!(old.acls.is_empty());
    }

    #[test]
    fn client_quotas_apply_replay_and_survive_snapshots() {
        use crate::security::quota::{EntityName, QuotaEntity, QuotaValue};
        let (mut a, mut i, _) = cluster(1);
        let entity = QuotaEntity {
            user: None,
            client_id: Some(EntityName::Named("slow".into())),
        };
        let set = MetadataCommand::AlterClientQuotas {
            alterations: vec![QuotaAlteration {
                entity: entity.clone(),
                ops: vec![("producer_byte_rate".into(), Some(QuotaValue(1024.0)))],
            }],
        };
        i += 1;
        a.apply(i, &set).expect("set");
        assert_eq!(
            a.client_quotas.get(&entity).expect("stored")["producer_byte_rate"],
            QuotaValue(1024.0)
        );
        // An unknown key rejects the whole command and changes nothing.
        let bad = MetadataCommand::AlterClientQuotas {
            alterations: vec![QuotaAlteration {
                entity: entity.clone(),
                ops: vec![
                    ("consumer_byte_rate".into(), Some(QuotaValue(1.0))),
                    ("bogus".into(), Some(QuotaValue(1.0))),
                ],
            }],
        };
        i += 1;
        let before = a.client_quotas.clone();
        assert!(matches!(
            a.apply(i, &bad),
            Err(MetadataError::InvalidRequest(_))
        ));
        assert_eq!(a.client_quotas, before);
        let restored =
            MetadataImage::from_snapshot(&a.to_snapshot().expect("snapshot")).expect("restore");
        assert_eq!(restored, a);
        // A snapshot written before quotas were stored has none.
        let mut json: serde_json::Value =
            serde_json::from_slice(&a.to_snapshot().expect("snapshot")).expect("json");
        json.as_object_mut()
            .expect("object")
            .remove("client_quotas");
        let old = MetadataImage::from_snapshot(&serde_json::to_vec(&json).expect("encode"))
            .expect("old snapshot loads");
        assert!(old.client_quotas.is_empty());
    }

    #[test]
    fn placement_follows_the_seed_rule() {
        let brokers = [1, 2, 3];
        let placed = place_replicas(&brokers, 0, 4, 2, 1);
        // start 1: partition i leads on brokers[(1 + i) % 3], replica j on (1 + i + j) % 3.
        assert_eq!(placed, vec![vec![2, 3], vec![3, 1], vec![1, 2], vec![2, 3]]);
        let more = place_replicas(&brokers, 4, 2, 3, 0);
        assert_eq!(more, vec![vec![2, 3, 1], vec![3, 1, 2]]);
    }

    fn elect(
        image: &mut MetadataImage,
        index: &mut u64,
        election: ElectionType,
        partitions: Option<Vec<(&str, i32)>>,
    ) -> Vec<(String, i32, i16)> {
        *index += 1;
        let command = MetadataCommand::ElectLeaders {
            election,
            partitions: partitions
                .map(|v| v.into_iter().map(|(t, p)| (t.to_string(), p)).collect()),
        };
        match image.apply(*index, &command) {
            Ok(Applied::Elections(r)) => r
                .into_iter()
                .map(|e| (e.topic, e.partition, e.error_code))
                .collect(),
            other => panic!("expected elections, got {other:?}"),
        }
    }

    fn set_isr(
        image: &mut MetadataImage,
        index: &mut u64,
        epochs: &[i64],
        topic: &str,
        partition: i32,
        isr: Vec<BrokerId>,
    ) {
        let p = image.partition(topic, partition).unwrap().clone();
        let leader = p.leader.unwrap();
        *index += 1;
        let alter = MetadataCommand::AlterPartition {
            topic: topic.into(),
            partition,
            broker_id: leader,
            broker_epoch: epochs[(leader - 1) as usize],
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            new_isr: isr,
        };
        image.apply(*index, &alter).unwrap();
    }

    #[test]
    fn preferred_election_moves_leadership_back_once_the_replica_is_in_sync() {
        let (mut image, mut index, epochs) = cluster(3);
        create(&mut image, &mut index, "t", 1, 3, "isr", 0).unwrap();
        assert_eq!(image.partition("t", 0).unwrap().replicas, vec![1, 2, 3]);
        assert_eq!(
            elect(
                &mut image,
                &mut index,
                ElectionType::Preferred,
                Some(vec![("t", 0)])
            ),
            vec![("t".to_string(), 0, ELECTION_NOT_NEEDED)]
        );
        index += 1;
        image
            .apply(
                index,
                &MetadataCommand::FenceBroker {
                    broker_id: 1,
                    broker_epoch: epochs[0],
                },
            )
            .unwrap();
        assert_eq!(image.partition("t", 0).unwrap().leader, Some(2));
        index += 1;
        image
            .apply(
                index,
                &MetadataCommand::UnfenceBroker {
                    broker_id: 1,
                    broker_epoch: epochs[0],
                },
            )
            .unwrap();
        // Alive but not in the ISR yet.
        assert_eq!(
            elect(
                &mut image,
                &mut index,
                ElectionType::Preferred,
                Some(vec![("t", 0)])
            ),
            vec![("t".to_string(), 0, PREFERRED_LEADER_NOT_AVAILABLE)]
        );
        // Nothing to do for "all partitions" answers nothing but the refusal.
        assert_eq!(
            elect(&mut image, &mut index, ElectionType::Preferred, None),
            vec![("t".to_string(), 0, PREFERRED_LEADER_NOT_AVAILABLE)]
        );
        set_isr(&mut image, &mut index, &epochs, "t", 0, vec![1, 2, 3]);
        let before = image.partition("t", 0).unwrap().leader_epoch;
        assert_eq!(
            elect(
                &mut image,
                &mut index,
                ElectionType::Preferred,
                Some(vec![("t", 0), ("t", 0), ("t", 7), ("nope", 0), ("t", -1)])
            ),
            vec![
                ("t".to_string(), 0, 0),
                ("t".to_string(), 7, 3),
                ("nope".to_string(), 0, 3),
                ("t".to_string(), -1, 3),
            ]
        );
        let p = image.partition("t", 0).unwrap();
        assert_eq!(p.leader, Some(1));
        assert_eq!(p.leader_epoch, before + 1);
        assert_eq!(p.isr, vec![1, 2, 3]);
        // Done: "all partitions" leaves out the partitions that need nothing.
        assert_eq!(
            elect(&mut image, &mut index, ElectionType::Preferred, None),
            vec![]
        );
        assert_eq!(image.imbalanced_partitions(10), vec![]);
    }

    #[test]
    fn quorum_partitions_refuse_preferred_and_unclean_elections() {
        let (mut image, mut index, epochs) = cluster(3);
        create(&mut image, &mut index, "q", 1, 3, "quorum", 0).unwrap();
        index += 1;
        image
            .apply(
                index,
                &MetadataCommand::FenceBroker {
                    broker_id: 1,
                    broker_epoch: epochs[0],
                },
            )
            .unwrap();
        // Leaderless until a majority reports: unclean refused, preferred refused.
        assert_eq!(image.partition("q", 0).unwrap().leader, None);
        assert_eq!(
            elect(
                &mut image,
                &mut index,
                ElectionType::Unclean,
                Some(vec![("q", 0)])
            ),
            vec![("q".to_string(), 0, ELIGIBLE_LEADERS_NOT_AVAILABLE)]
        );
        assert_eq!(
            elect(
                &mut image,
                &mut index,
                ElectionType::Preferred,
                Some(vec![("q", 0)])
            ),
            vec![("q".to_string(), 0, PREFERRED_LEADER_NOT_AVAILABLE)]
        );
        assert_eq!(image.partition("q", 0).unwrap().leader, None);
        assert_eq!(image.imbalanced_partitions(0), vec![]);
    }

    #[test]
    fn unclean_election_elects_out_of_sync_replicas_only_when_needed() {
        let (mut image, mut index, epochs) = cluster(2);
        create(&mut image, &mut index, "t", 1, 2, "isr", 0).unwrap();
        assert_eq!(
            elect(
                &mut image,
                &mut index,
                ElectionType::Unclean,
                Some(vec![("t", 0)])
            ),
            vec![("t".to_string(), 0, ELECTION_NOT_NEEDED)]
        );
        let p = image.partition("t", 0).unwrap().clone();
        let (leader, follower) = (p.replicas[0], p.replicas[1]);
        set_isr(&mut image, &mut index, &epochs, "t", 0, vec![leader]);
        index += 1;
        image
            .apply(
                index,
                &MetadataCommand::FenceBroker {
                    broker_id: leader,
                    broker_epoch: epochs[(leader - 1) as usize],
                },
            )
            .unwrap();
        assert_eq!(image.partition("t", 0).unwrap().leader, None);
        // The topic does not allow unclean elections, but ElectLeaders UNCLEAN does.
        assert_eq!(
            elect(&mut image, &mut index, ElectionType::Unclean, None),
            vec![("t".to_string(), 0, 0)]
        );
        let p = image.partition("t", 0).unwrap();
        assert_eq!(p.leader, Some(follower));
        assert_eq!(p.isr, vec![follower]);
        assert_eq!(image.unclean_elections, 1);
        // No live replica at all.
        index += 1;
        image
            .apply(
                index,
                &MetadataCommand::FenceBroker {
                    broker_id: follower,
                    broker_epoch: epochs[(follower - 1) as usize],
                },
            )
            .unwrap();
        assert_eq!(
            elect(
                &mut image,
                &mut index,
                ElectionType::Unclean,
                Some(vec![("t", 0)])
            ),
            vec![("t".to_string(), 0, ELIGIBLE_LEADERS_NOT_AVAILABLE)]
        );
    }

    #[test]
    fn imbalance_check_follows_the_per_broker_threshold() {
        let (mut image, mut index, epochs) = cluster(3);
        // 6 partitions, 2 preferred per broker.
        create(&mut image, &mut index, "t", 6, 2, "isr", 0).unwrap();
        assert_eq!(image.imbalanced_partitions(10), vec![]);
        index += 1;
        image
            .apply(
                index,
                &MetadataCommand::FenceBroker {
                    broker_id: 1,
                    broker_epoch: epochs[0],
                },
            )
            .unwrap();
        index += 1;
        image
            .apply(
                index,
                &MetadataCommand::UnfenceBroker {
                    broker_id: 1,
                    broker_epoch: epochs[0],
                },
            )
            .unwrap();
        // Broker 1 leads none of its 2 preferred partitions, but is out of their ISRs.
        let preferred_on_1: Vec<i32> = image
            .topic("t")
            .unwrap()
            .partitions
            .iter()
            .filter(|p| p.replicas[0] == 1)
            .map(|p| p.partition)
            .collect();
        assert_eq!(preferred_on_1.len(), 2);
        assert_eq!(image.imbalanced_partitions(10), vec![]);
        for &p in &preferred_on_1 {
            let replicas = image.partition("t", p).unwrap().replicas.clone();
            set_isr(&mut image, &mut index, &epochs, "t", p, replicas);
        }
        let expected: Vec<(String, i32)> = preferred_on_1
            .iter()
            .map(|&p| ("t".to_string(), p))
            .collect();
        assert_eq!(image.imbalanced_partitions(10), expected);
        // 2 of 2 off is 100 %: above 99 %, not above 100 %.
        assert_eq!(image.imbalanced_partitions(99), expected);
        assert_eq!(image.imbalanced_partitions(100), vec![]);
        elect(
            &mut image,
            &mut index,
            ElectionType::Preferred,
            Some(expected.iter().map(|(t, p)| (t.as_str(), *p)).collect()),
        );
        assert_eq!(image.imbalanced_partitions(0), vec![]);
    }

    fn rack_brokers(racks: &[(BrokerId, Option<&str>)]) -> Vec<(BrokerId, Option<String>)> {
        racks
            .iter()
            .map(|(b, r)| (*b, r.map(str::to_string)))
            .collect()
    }

    #[test]
    fn rack_aware_placement_spreads_replicas_over_racks_and_leaders_over_brokers() {
        // Kafka's example layout: racks of uneven size.
        let brokers = rack_brokers(&[
            (0, Some("rack1")),
            (1, Some("rack3")),
            (2, Some("rack3")),
            (3, Some("rack2")),
            (4, Some("rack2")),
            (5, Some("rack1")),
        ]);
        let rack = |b: BrokerId| brokers.iter().find(|(x, _)| *x == b).unwrap().1.clone();
        for start in 0..6u32 {
            for rf in 1..=3usize {
                let placed = place_replicas_rack_aware(&brokers, 0, 12, rf, start);
                assert_eq!(placed.len(), 12);
                let mut leaders: BTreeMap<BrokerId, usize> = BTreeMap::new();
                for replicas in &placed {
                    assert_eq!(replicas.len(), rf);
                    let racks: BTreeSet<_> = replicas.iter().map(|&b| rack(b)).collect();
                    assert_eq!(racks.len(), rf, "replicas {replicas:?} share a rack");
                    let distinct: BTreeSet<_> = replicas.iter().collect();
                    assert_eq!(distinct.len(), rf);
                    *leaders.entry(replicas[0]).or_default() += 1;
                }
                // 12 partitions over 6 brokers: every broker leads 2.
                assert!(leaders.values().all(|&n| n == 2), "{leaders:?}");
                assert_eq!(leaders.len(), 6);
            }
        }
        // The broker list alternates racks: rack1, rack2, rack3, rack1, ...
        let placed = place_replicas_rack_aware(&brokers, 0, 6, 1, 0);
        let firsts: Vec<BrokerId> = placed.iter().map(|r| r[0]).collect();
        assert_eq!(firsts, vec![0, 3, 1, 5, 4, 2]);
        // Fewer racks than replicas: every rack used, no broker twice.
        let two = rack_brokers(&[
            (1, Some("a")),
            (2, Some("a")),
            (3, Some("b")),
            (4, Some("b")),
        ]);
        for replicas in place_replicas_rack_aware(&two, 0, 8, 3, 1) {
            let distinct: BTreeSet<_> = replicas.iter().collect();
            assert_eq!(distinct.len(), 3);
            assert!(replicas.iter().any(|b| *b <= 2) && replicas.iter().any(|b| *b >= 3));
        }
        // Growing a topic continues the round robin.
        let grown = place_replicas_rack_aware(&brokers, 6, 6, 2, 0);
        let firsts: Vec<BrokerId> = grown.iter().map(|r| r[0]).collect();
        assert_eq!(firsts, vec![0, 3, 1, 5, 4, 2]);
    }

    #[test]
    fn topics_use_racks_when_brokers_have_them_and_the_old_rule_when_none_do() {
        fn register_in(
            image: &mut MetadataImage,
            index: &mut u64,
            id: BrokerId,
            rack: Option<&str>,
        ) {
            *index += 1;
            let cmd = MetadataCommand::RegisterBroker {
                broker_id: id,
                incarnation: Uuid::from_u128(id as u128 + 77),
                listeners: vec![],
                rack: rack.map(str::to_string),
            };
            let Ok(Applied::BrokerRegistered { broker_epoch }) = image.apply(*index, &cmd) else {
                panic!("registration failed");
            };
            *index += 1;
            image
                .apply(
                    *index,
                    &MetadataCommand::UnfenceBroker {
                        broker_id: id,
                        broker_epoch,
                    },
                )
                .unwrap();
        }
        let mut image = MetadataImage::new();
        let mut index = 0;
        for (id, rack) in [(1, "a"), (2, "a"), (3, "b"), (4, "b"), (5, "c"), (6, "c")] {
            register_in(&mut image, &mut index, id, Some(rack));
        }
        create(&mut image, &mut index, "r", 12, 3, "isr", 5).unwrap();
        let racks: BTreeMap<BrokerId, Option<String>> = image
            .brokers
            .values()
            .map(|b| (b.broker_id, b.rack.clone()))
            .collect();
        let rack_of = |b: BrokerId| racks[&b].clone();
        for p in &image.topic("r").unwrap().partitions {
            let racks: BTreeSet<_> = p.replicas.iter().map(|&b| rack_of(b)).collect();
            assert_eq!(racks.len(), 3, "{:?}", p.replicas);
        }
        index += 1;
        image
            .apply(
                index,
                &MetadataCommand::CreatePartitions {
                    name: "r".into(),
                    total_count: 15,
                    placement_start: 9,
                },
            )
            .unwrap();
        for p in &image.topic("r").unwrap().partitions {
            let racks: BTreeSet<_> = p.replicas.iter().map(|&b| rack_of(b)).collect();
            assert_eq!(racks.len(), 3, "{:?}", p.replicas);
        }
        // No racks anywhere: the seed rule, unchanged.
        let (mut plain, mut index, _) = cluster(3);
        create(&mut plain, &mut index, "p", 4, 2, "isr", 1).unwrap();
        let placed: Vec<Vec<BrokerId>> = plain
            .topic("p")
            .unwrap()
            .partitions
            .iter()
            .map(|p| p.replicas.clone())
            .collect();
        assert_eq!(placed, place_replicas(&[1, 2, 3], 0, 4, 2, 1));
    }

    #[test]
    fn new_topic_gets_preferred_leaders_in_both_modes() {
        let (mut image, mut index, _) = cluster(3);
        assert!(create(&mut image, &mut index, "a", 3, 3, "isr", 0).is_ok());
        assert!(create(&mut image, &mut index, "q", 3, 3, "quorum", 0).is_ok());
        for name in ["a", "q"] {
            let t = image.topic(name).unwrap();
            for p in &t.partitions {
                assert_eq!(p.leader, Some(p.replicas[0]));
                assert_eq!(p.leader_epoch, 0);
                assert_eq!(p.isr, p.replicas);
            }
        }
        assert_eq!(
            create(&mut image, &mut index, "a", 1, 1, "isr", 0),
            Err(MetadataError::TopicAlreadyExists("a".into()))
        );
        assert!(matches!(
            create(&mut image, &mut index, "big", 1, 4, "isr", 0),
            Err(MetadataError::InvalidReplicationFactor { .. })
        ));
        assert!(matches!(
            create(&mut image, &mut index, "bad/name", 1, 1, "isr", 0),
            Err(MetadataError::InvalidTopic(_))
        ));
        assert!(matches!(
            create(&mut image, &mut index, "m", 1, 1, "raft", 0),
            Err(MetadataError::InvalidConfig(_))
        ));
    }

    #[test]
    fn fencing_moves_isr_leadership_and_bumps_epochs() {
        let (mut image, mut index, epochs) = cluster(3);
        create(&mut image, &mut index, "t", 3, 3, "isr", 0).unwrap();
        let before = image.partition("t", 0).unwrap().clone();
        let leader = before.leader.unwrap();
        index += 1;
        let fence = MetadataCommand::FenceBroker {
            broker_id: leader,
            broker_epoch: epochs[(leader - 1) as usize],
        };
        assert_eq!(image.apply(index, &fence), Ok(Applied::Done));
        let after = image.partition("t", 0).unwrap();
        assert_ne!(after.leader, Some(leader));
        assert!(after.leader.is_some());
        assert!(!after.isr.contains(&leader));
        assert!(after.leader_epoch > before.leader_epoch);
        assert!(after.partition_epoch > before.partition_epoch);
        for p in &image.topic("t").unwrap().partitions {
            assert_ne!(p.leader, Some(leader), "fenced broker still leads");
        }
        // A stale broker epoch cannot fence or unfence the new registration.
        index += 1;
        let stale = MetadataCommand::UnfenceBroker {
            broker_id: leader,
            broker_epoch: -5,
        };
        assert!(matches!(
            image.apply(index, &stale),
            Err(MetadataError::StaleBrokerEpoch { .. })
        ));
    }

    #[test]
    fn isr_partition_without_live_isr_stays_offline_unless_unclean() {
        let (mut image, mut index, epochs) = cluster(2);
        create(&mut image, &mut index, "t", 1, 2, "isr", 0).unwrap();
        let p = image.partition("t", 0).unwrap().clone();
        let leader = p.leader.unwrap();
        let follower = p.replicas[1];
        // The leader shrinks the ISR to itself, then dies.
        index += 1;
        let shrink = MetadataCommand::AlterPartition {
            topic: "t".into(),
            partition: 0,
            broker_id: leader,
            broker_epoch: epochs[(leader - 1) as usize],
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            new_isr: vec![leader],
        };
        assert!(image.apply(index, &shrink).is_ok());
        index += 1;
        let fence = MetadataCommand::FenceBroker {
            broker_id: leader,
            broker_epoch: epochs[(leader - 1) as usize],
        };
        image.apply(index, &fence).unwrap();
        let p = image.partition("t", 0).unwrap();
        assert_eq!(p.leader, None, "out-of-sync follower must not lead");
        assert_eq!(p.isr, vec![leader], "last ISR member stays");
        // Enabling unclean election lets the follower lead on the next chance.
        index += 1;
        let mut changes = BTreeMap::new();
        changes.insert(
            UNCLEAN_LEADER_ELECTION_CONFIG.to_string(),
            Some("true".to_string()),
        );
        image
            .apply(
                index,
                &MetadataCommand::ConfigChange {
                    resource: ConfigResource::Topic("t".into()),
                    changes,
                },
            )
            .unwrap();
        index += 1;
        let refence = MetadataCommand::FenceBroker {
            broker_id: follower,
            broker_epoch: epochs[(follower - 1) as usize],
        };
        image.apply(index, &refence).unwrap();
        index += 1;
        image
            .apply(
                index,
                &MetadataCommand::UnfenceBroker {
                    broker_id: follower,
                    broker_epoch: epochs[(follower - 1) as usize],
                },
            )
            .unwrap();
        let p = image.partition("t", 0).unwrap();
        assert_eq!(p.leader, Some(follower));
        assert_eq!(p.isr, vec![follower]);
        assert_eq!(image.unclean_elections, 1);
    }

    #[test]
    fn stale_alter_partition_is_rejected() {
        let (mut image, mut index, epochs) = cluster(3);
        create(&mut image, &mut index, "t", 1, 3, "isr", 0).unwrap();
        let p = image.partition("t", 0).unwrap().clone();
        let leader = p.leader.unwrap();
        let alter =
            |leader_epoch, partition_epoch, isr: Vec<i32>| MetadataCommand::AlterPartition {
                topic: "t".into(),
                partition: 0,
                broker_id: leader,
                broker_epoch: epochs[(leader - 1) as usize],
                leader_epoch,
                partition_epoch,
                new_isr: isr,
            };
        let shrunk: Vec<i32> = p.replicas[..2].to_vec();
        index += 1;
        let Ok(Applied::Partition(after)) = image.apply(
            index,
            &alter(p.leader_epoch, p.partition_epoch, shrunk.clone()),
        ) else {
            panic!("valid AlterPartition rejected");
        };
        assert_eq!(after.partition_epoch, p.partition_epoch + 1);
        // Same proposal retried: answered with the current state.
        index += 1;
        assert!(image
            .apply(index, &alter(p.leader_epoch, p.partition_epoch, shrunk))
            .is_ok());
        // A different proposal on the old partition epoch: INVALID_UPDATE_VERSION.
        index += 1;
        let err = image
            .apply(
                index,
                &alter(p.leader_epoch, p.partition_epoch, vec![leader]),
            )
            .unwrap_err();
        assert_eq!(err.code(), 95);
        // An old leader epoch: FENCED_LEADER_EPOCH.
        index += 1;
        let err = image
            .apply(
                index,
                &alter(p.leader_epoch - 1, after.partition_epoch, vec![leader]),
            )
            .unwrap_err();
        assert_eq!(err.code(), 74);
        // A fenced broker may not join the ISR.
        let outsider = p.replicas[2];
        index += 1;
        image
            .apply(
                index,
                &MetadataCommand::FenceBroker {
                    broker_id: outsider,
                    broker_epoch: epochs[(outsider - 1) as usize],
                },
            )
            .unwrap();
        let current = image.partition("t", 0).unwrap().clone();
        index += 1;
        let err = image
            .apply(
                index,
                &alter(
                    current.leader_epoch,
                    current.partition_epoch,
                    p.replicas.clone(),
                ),
            )
            .unwrap_err();
        assert_eq!(err, MetadataError::IneligibleReplica(outsider));
    }

    #[test]
    fn quorum_election_waits_for_a_majority_of_reports_and_picks_the_longest_log() {
        let (mut image, mut index, epochs) = cluster(3);
        create(&mut image, &mut index, "q", 1, 3, "quorum", 0).unwrap();
        let p = image.partition("q", 0).unwrap().clone();
        let leader = p.leader.unwrap();
        index += 1;
        image
            .apply(
                index,
                &MetadataCommand::FenceBroker {
                    broker_id: leader,
                    broker_epoch: epochs[(leader - 1) as usize],
                },
            )
            .unwrap();
        let offline = image.partition("q", 0).unwrap().clone();
        assert_eq!(offline.leader, None, "quorum mode waits for log reports");
        let election_epoch = offline.next_leader_epoch();
        let others: Vec<i32> = p
            .replicas
            .iter()
            .copied()
            .filter(|&b| b != leader)
            .collect();
        let report = |b: i32, epoch, leo| MetadataCommand::ReportReplicaLog {
            topic: "q".into(),
            partition: 0,
            broker_id: b,
            election_epoch: epoch,
            position: ReplicaLogPosition {
                last_epoch: 0,
                log_end_offset: leo,
            },
        };
        // A report for a stale election is refused.
        index += 1;
        assert!(image
            .apply(index, &report(others[0], election_epoch - 1, 5))
            .is_err());
        index += 1;
        image
            .apply(index, &report(others[0], election_epoch, 5))
            .unwrap();
        assert_eq!(
            image.partition("q", 0).unwrap().leader,
            None,
            "one of three"
        );
        index += 1;
        image
            .apply(index, &report(others[1], election_epoch, 9))
            .unwrap();
        let elected = image.partition("q", 0).unwrap();
        assert_eq!(elected.leader, Some(others[1]), "most up-to-date log leads");
        assert_eq!(elected.leader_epoch, election_epoch);
        assert_eq!(elected.isr, vec![others[1]]);
    }

    #[test]
    fn reregistration_with_new_incarnation_fences_and_moves_leaderships() {
        let (mut image, mut index, _) = cluster(3);
        create(&mut image, &mut index, "t", 3, 2, "isr", 0).unwrap();
        let victim = image.partition("t", 0).unwrap().leader.unwrap();
        let new_epoch = register(&mut image, &mut index, victim);
        assert_eq!(image.broker(victim).unwrap().broker_epoch, new_epoch);
        let p = image.partition("t", 0).unwrap();
        assert_ne!(p.leader, Some(victim));
    }

    #[test]
    fn delete_and_create_partitions() {
        let (mut image, mut index, _) = cluster(3);
        create(&mut image, &mut index, "t", 2, 2, "isr", 2).unwrap();
        index += 1;
        let grow = MetadataCommand::CreatePartitions {
            name: "t".into(),
            total_count: 5,
            placement_start: 1,
        };
        assert_eq!(image.apply(index, &grow), Ok(Applied::Done));
        let t = image.topic("t").unwrap();
        assert_eq!(t.partitions.len(), 5);
        assert!(t
            .partitions
            .iter()
            .all(|p| p.leader.is_some() && p.replicas.len() == 2));
        index += 1;
        assert!(
            image.apply(index, &grow).is_err(),
            "shrinking or same count refused"
        );
        index += 1;
        let delete = MetadataCommand::DeleteTopic { name: "t".into() };
        assert_eq!(image.apply(index, &delete), Ok(Applied::Done));
        index += 1;
        assert_eq!(
            image.apply(index, &delete).unwrap_err().code(),
            3,
            "UNKNOWN_TOPIC_OR_PARTITION"
        );
    }

    fn arb_command() -> impl Strategy<Value = MetadataCommand> {
        let broker = 1..=4i32;
        prop_oneof![
            (broker.clone(), 0u128..3, proptest::option::of(0u8..2)).prop_map(|(b, inc, rack)| {
                MetadataCommand::RegisterBroker {
                    broker_id: b,
                    incarnation: Uuid::from_u128(b as u128 * 10 + inc + 1),
                    listeners: vec![],
                    rack: rack.map(|r| format!("r{r}")),
                }
            }),
            (broker.clone(), 0i64..40).prop_map(|(b, e)| MetadataCommand::UnfenceBroker {
                broker_id: b,
                broker_epoch: e
            }),
            (broker.clone(), 0i64..40).prop_map(|(b, e)| MetadataCommand::FenceBroker {
                broker_id: b,
                broker_epoch: e
            }),
            (
                0u8..3,
                1i32..4,
                1i16..4,
                any::<bool>(),
                any::<u32>(),
                any::<u16>()
            )
                .prop_map(|(t, parts, rf, quorum, start, id)| {
                    let mut configs = BTreeMap::new();
                    configs.insert(
                        REPLICATION_MODE_CONFIG.to_string(),
                        if quorum { "quorum" } else { "isr" }.to_string(),
                    );
                    MetadataCommand::CreateTopic {
                        name: format!("t{t}"),
                        topic_id: Uuid::from_u128(id as u128 + 1),
                        partitions: parts,
                        replication_factor: rf,
                        configs,
                        placement_start: start,
                    }
                }),
            (0u8..3).prop_map(|t| MetadataCommand::DeleteTopic {
                name: format!("t{t}")
            }),
            (0u8..3, 1i32..6, any::<u32>()).prop_map(|(t, n, s)| {
                MetadataCommand::CreatePartitions {
                    name: format!("t{t}"),
                    total_count: n,
                    placement_start: s,
                }
            }),
            (
                0u8..3,
                0i32..3,
                broker.clone(),
                0i64..40,
                -1i32..4,
                0i32..6,
                proptest::collection::vec(broker.clone(), 0..4)
            )
                .prop_map(|(t, p, b, be, le, pe, isr)| {
                    MetadataCommand::AlterPartition {
                        topic: format!("t{t}"),
                        partition: p,
                        broker_id: b,
                        broker_epoch: be,
                        leader_epoch: le,
                        partition_epoch: pe,
                        new_isr: isr,
                    }
                }),
            (
                any::<bool>(),
                proptest::option::of(proptest::collection::vec((0u8..3, -1i32..3), 0..4))
            )
                .prop_map(|(unclean, parts)| MetadataCommand::ElectLeaders {
                    election: if unclean {
                        ElectionType::Unclean
                    } else {
                        ElectionType::Preferred
                    },
                    partitions: parts
                        .map(|v| { v.into_iter().map(|(t, p)| (format!("t{t}"), p)).collect() }),
                }),
            (
                0u8..3,
                0i32..3,
                broker.clone(),
                -1i32..5,
                -1i32..3,
                0i64..20
            )
                .prop_map(|(t, p, b, e, le, leo)| MetadataCommand::ReportReplicaLog {
                    topic: format!("t{t}"),
                    partition: p,
                    broker_id: b,
                    election_epoch: e,
                    position: ReplicaLogPosition {
                        last_epoch: le,
                        log_end_offset: leo,
                    },
                }),
        ]
    }

    /// Checks what every image must satisfy whatever was applied.
    fn check_invariants(image: &MetadataImage) {
        for t in image.topics.values() {
            for (i, p) in t.partitions.iter().enumerate() {
                assert_eq!(p.partition, i as i32);
                let mut unique = p.replicas.clone();
                unique.sort_unstable();
                unique.dedup();
                assert_eq!(unique.len(), p.replicas.len(), "duplicate replica");
                assert!(!p.isr.is_empty(), "empty ISR");
                assert!(p.isr.iter().all(|b| p.replicas.contains(b)));
                if let Some(l) = p.leader {
                    assert!(p.replicas.contains(&l));
                    assert!(p.isr.contains(&l), "leader outside the ISR");
                    assert!(
                        image.broker(l).is_some_and(|b| !b.fenced),
                        "fenced broker leads"
                    );
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn arbitrary_commands_keep_invariants_epochs_monotonic_and_replay_deterministic(
            commands in proptest::collection::vec(arb_command(), 1..60)
        ) {
            let mut image = MetadataImage::new();
            let mut replay = MetadataImage::new();
            for (i, command) in commands.iter().enumerate() {
                let before = image.clone();
                let r1 = image.apply(i as u64 + 1, command);
                let r2 = replay.apply(i as u64 + 1, command);
                prop_assert_eq!(&r1, &r2);
                if r1.is_err() {
                    let mut unchanged = before.clone();
                    unchanged.metadata_offset = image.metadata_offset;
                    prop_assert_eq!(&unchanged, &image, "a rejected command changed the image");
                }
                check_invariants(&image);
                for (name, t) in &image.topics {
                    let Some(old) = before.topics.get(name) else { continue };
                    if old.topic_id != t.topic_id { continue; }
                    for (p, q) in old.partitions.iter().zip(&t.partitions) {
                        prop_assert!(q.leader_epoch >= p.leader_epoch);
                        prop_assert!(q.partition_epoch >= p.partition_epoch);
                        if q.leader != p.leader {
                            prop_assert!(q.leader_epoch > p.leader_epoch, "leader changed without an epoch bump");
                        }
                    }
                }
            }
            let bytes = image.to_snapshot().unwrap();
            let restored = MetadataImage::from_snapshot(&bytes).unwrap();
            prop_assert_eq!(restored, image);
        }
    }

    #[test]
    fn garbage_snapshot_is_an_error_not_a_panic() {
        assert!(MetadataImage::from_snapshot(b"{not json").is_err());
        assert!(MetadataImage::from_snapshot(&[0xff, 0x00]).is_err());
    }
}
