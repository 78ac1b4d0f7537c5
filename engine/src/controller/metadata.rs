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

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::replication::policy::{
    ElectionCandidate, ElectionOutcome, IsrPolicy, LogPosition, QuorumPolicy, ReplicationPolicy,
};
use crate::replication::{BrokerId, LeaderEpoch, ReplicationConfig, ReplicationMode};

use super::error::MetadataError;

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
}

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
}

impl MetadataImage {
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
        }
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
                let mut changed = false;
                if p.isr.len() > 1 && p.isr.contains(&broker) {
                    p.isr.retain(|&b| b != broker);
                    changed = true;
                }
                p.election_reports.remove(&broker);
                if p.leader == Some(broker) {
                    p.leader = None;
                    p.leader_epoch += 1;
                    p.election_reports.clear();
                    changed = true;
                }
                if changed {
                    p.partition_epoch += 1;
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
        let outcome = policy.elect_leader(&candidates, &config);
        let ElectionOutcome::Elected {
            mut leader,
            unclean,
        } = outcome
        else {
            return;
        };
        if never_led && policy.election_reads_logs() {
            // Every log is empty, so all live replicas tie: keep the preferred replica first,
            // as placement intended, rather than the highest id the tie-break would pick.
            if let Some(first) = candidates.iter().find(|c| c.alive) {
                leader = first.broker_id;
            }
        }
        p.leader = Some(leader);
        p.leader_epoch += 1;
        p.partition_epoch += 1;
        p.election_reports.clear();
        if unclean || (policy.election_reads_logs() && !never_led) {
            // Unclean: nobody is known to match the new leader. Quorum: the ISR is bookkeeping
            // only; members rejoin through AlterPartition as they catch up.
            p.isr = vec![leader];
        } else if !p.isr.contains(&leader) {
            p.isr.push(leader);
        }
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
        let assignment = place_replicas(
            &brokers,
            0,
            partitions,
            replication_factor as usize,
            placement_start,
        );
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
            .get_mut(name)
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
        let assignment = place_replicas(&brokers, current, total - current, rf, placement_start);
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
        let p = self
            .topics
            .get_mut(topic)
            .and_then(|t| {
                usize::try_from(partition)
                    .ok()
                    .and_then(|i| t.partitions.get_mut(i))
            })
            .ok_or_else(|| {
                MetadataError::UnknownTopicOrPartition(format!("{topic}-{partition}"))
            })?;
        if leader_epoch < p.leader_epoch {
            return Err(MetadataError::FencedLeaderEpoch {
                request: leader_epoch,
                current: p.leader_epoch,
            });
        }
        if leader_epoch > p.leader_epoch {
            return Err(MetadataError::UnknownLeaderEpoch {
                request: leader_epoch,
                current: p.leader_epoch,
            });
        }
        if p.leader != Some(broker_id) {
            return Err(MetadataError::NotLeaderOrFollower(broker_id));
        }
        if partition_epoch != p.partition_epoch {
            if same_members(new_isr, &p.isr) {
                // A retried proposal that already went through.
                return Ok(Applied::Partition(p.clone()));
            }
            return Err(MetadataError::InvalidUpdateVersion {
                request: partition_epoch,
                current: p.partition_epoch,
            });
        }
        if !new_isr.contains(&broker_id) {
            return Err(MetadataError::IneligibleReplica(broker_id));
        }
        for &member in new_isr {
            let joining = !p.isr.contains(&member);
            if !p.replicas.contains(&member) || (joining && !live.contains(&member)) {
                return Err(MetadataError::IneligibleReplica(member));
            }
        }
        p.isr = p
            .replicas
            .iter()
            .copied()
            .filter(|r| new_isr.contains(r))
            .collect();
        p.partition_epoch += 1;
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
        let p = self
            .topics
            .get_mut(topic)
            .and_then(|t| {
                usize::try_from(partition)
                    .ok()
                    .and_then(|i| t.partitions.get_mut(i))
            })
            .ok_or_else(|| {
                MetadataError::UnknownTopicOrPartition(format!("{topic}-{partition}"))
            })?;
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

fn same_members(a: &[BrokerId], b: &[BrokerId]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
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
