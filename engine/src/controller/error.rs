//! Errors of the controller: metadata commands rejected by the state machine (with their Kafka
//! error codes) and failures of the quorum around it.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::replication::{BrokerId, LeaderEpoch, ReplicationError};

/// A metadata command the state machine rejected. Replicated to the proposer, so serialisable.
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum MetadataError {
    /// `UNKNOWN_SERVER_ERROR`: the 64-bit producer id space is used up.
    #[error("producer ids exhausted at {0}")]
    ProducerIdsExhausted(i64),
    /// `TOPIC_ALREADY_EXISTS`.
    #[error("topic {0} already exists")]
    TopicAlreadyExists(String),
    /// `UNKNOWN_TOPIC_OR_PARTITION`.
    #[error("unknown topic or partition {0}")]
    UnknownTopicOrPartition(String),
    /// `INVALID_TOPIC_EXCEPTION`.
    #[error("invalid topic: {0}")]
    InvalidTopic(String),
    /// `INVALID_PARTITIONS`.
    #[error("invalid partitions: {0}")]
    InvalidPartitions(String),
    /// `INVALID_REPLICATION_FACTOR`.
    #[error(
        "replication factor {requested} larger than the {available} available brokers, or below 1"
    )]
    InvalidReplicationFactor {
        /// Requested factor.
        requested: i16,
        /// Unfenced brokers.
        available: usize,
    },
    /// `INVALID_CONFIG`.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// `FENCED_LEADER_EPOCH`: the request's leader epoch is older than the controller's.
    #[error("fenced leader epoch {request}, current {current}")]
    FencedLeaderEpoch {
        /// Epoch in the request.
        request: LeaderEpoch,
        /// Controller's epoch.
        current: LeaderEpoch,
    },
    /// `UNKNOWN_LEADER_EPOCH`: the request's epoch is newer than the controller's.
    #[error("unknown leader epoch {request}, current {current}")]
    UnknownLeaderEpoch {
        /// Epoch in the request.
        request: LeaderEpoch,
        /// Controller's epoch.
        current: LeaderEpoch,
    },
    /// `NOT_LEADER_OR_FOLLOWER`: the proposer does not lead the partition.
    #[error("broker {0} does not lead this partition")]
    NotLeaderOrFollower(BrokerId),
    /// `INVALID_UPDATE_VERSION`: a stale AlterPartition (partition epoch mismatch).
    #[error("stale partition epoch {request}, current {current}")]
    InvalidUpdateVersion {
        /// Partition epoch in the request.
        request: i32,
        /// Controller's partition epoch.
        current: i32,
    },
    /// `INELIGIBLE_REPLICA`: not a replica, or fenced.
    #[error("replica {0} is not eligible")]
    IneligibleReplica(BrokerId),
    /// `BROKER_ID_NOT_REGISTERED`.
    #[error("broker {0} is not registered")]
    BrokerIdNotRegistered(BrokerId),
    /// `STALE_BROKER_EPOCH`.
    #[error("stale broker epoch {request} for broker {broker_id}, current {current}")]
    StaleBrokerEpoch {
        /// Broker id.
        broker_id: BrokerId,
        /// Epoch in the request.
        request: i64,
        /// Registered epoch.
        current: i64,
    },
    /// `INVALID_REQUEST`: an ACL binding or filter that `security::acl` refuses.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A snapshot could not be encoded or decoded.
    #[error("metadata snapshot: {0}")]
    Snapshot(String),
}

impl MetadataError {
    /// A refusal of the shared partition rules (`replication::control`), for the proposer
    /// `broker_id`.
    pub fn from_rule(e: ReplicationError, broker_id: BrokerId) -> Self {
        match e {
            ReplicationError::FencedLeaderEpoch { request, current } => {
                MetadataError::FencedLeaderEpoch { request, current }
            }
            ReplicationError::UnknownLeaderEpoch { request, current } => {
                MetadataError::UnknownLeaderEpoch { request, current }
            }
            ReplicationError::InvalidUpdateVersion { request, current } => {
                MetadataError::InvalidUpdateVersion { request, current }
            }
            ReplicationError::IneligibleReplica(b) => MetadataError::IneligibleReplica(b),
            // The rules refuse nothing else; a proposer that does not lead is the remaining case.
            _ => MetadataError::NotLeaderOrFollower(broker_id),
        }
    }

    /// The Kafka protocol error code a broker answers with.
    pub fn code(&self) -> i16 {
        match self {
            MetadataError::TopicAlreadyExists(_) => 36,
            MetadataError::UnknownTopicOrPartition(_) => 3,
            MetadataError::InvalidTopic(_) => 17,
            MetadataError::InvalidPartitions(_) => 37,
            MetadataError::InvalidReplicationFactor { .. } => 38,
            MetadataError::InvalidConfig(_) => 40,
            MetadataError::FencedLeaderEpoch { .. } => 74,
            MetadataError::UnknownLeaderEpoch { .. } => 75,
            MetadataError::NotLeaderOrFollower(_) => 6,
            MetadataError::InvalidUpdateVersion { .. } => 95,
            MetadataError::IneligibleReplica(_) => 107,
            MetadataError::BrokerIdNotRegistered(_) => 102,
            MetadataError::StaleBrokerEpoch { .. } => 77,
            MetadataError::InvalidRequest(_) => 42,
            // UNKNOWN_SERVER_ERROR: nothing a client can act on.
            MetadataError::Snapshot(_) => -1,
            MetadataError::ProducerIdsExhausted(_) => -1,
        }
    }
}

/// A failure of the controller quorum or of the local node.
#[derive(Debug, Error)]
pub enum ControllerError {
    /// The command was applied and rejected by the metadata state machine.
    #[error(transparent)]
    Rejected(#[from] MetadataError),
    /// No controller could be reached in time (`NOT_CONTROLLER` / `REQUEST_TIMED_OUT`).
    #[error("no controller available: {0}")]
    NotAvailable(String),
    /// `--controller-voters` or another setting is malformed.
    #[error("invalid controller config: {0}")]
    InvalidConfig(String),
    /// Disk IO on the metadata log failed.
    #[error("metadata log io: {0}")]
    Io(#[from] std::io::Error),
    /// The controller thread stopped.
    #[error("controller is shut down")]
    Shutdown,
}

impl ControllerError {
    /// The Kafka protocol error code for a broker's answer to a client.
    pub fn code(&self) -> i16 {
        match self {
            ControllerError::Rejected(e) => e.code(),
            // NOT_CONTROLLER: clients retry after refreshing metadata.
            ControllerError::NotAvailable(_) | ControllerError::Shutdown => 41,
            ControllerError::InvalidConfig(_) => 40,
            ControllerError::Io(_) => -1,
        }
    }
}
