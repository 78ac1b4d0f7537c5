//! Replication errors, each mapped to the Kafka error code a client or follower receives.

use super::{BrokerId, LeaderEpoch, Offset};
use kafka_protocol::ResponseError;

/// A replication decision that refuses a request; [`ReplicationError::code`] is its Kafka code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicationError {
    /// This broker is not the leader (or not a replica) of the partition.
    #[error("NOT_LEADER_OR_FOLLOWER: broker is not the leader of this partition")]
    NotLeaderOrFollower,
    /// The request carries an older leader epoch than this replica knows.
    #[error("FENCED_LEADER_EPOCH: request epoch {request} is older than current epoch {current}")]
    FencedLeaderEpoch {
        /// The epoch in the request.
        request: LeaderEpoch,
        /// The epoch this replica knows.
        current: LeaderEpoch,
    },
    /// The request carries a newer leader epoch than this replica knows yet.
    #[error("UNKNOWN_LEADER_EPOCH: request epoch {request} is newer than current epoch {current}")]
    UnknownLeaderEpoch {
        /// The epoch in the request.
        request: LeaderEpoch,
        /// The epoch this replica knows.
        current: LeaderEpoch,
    },
    /// acks=all refused up front: too few in-sync replicas (or no live majority).
    #[error("NOT_ENOUGH_REPLICAS: {in_sync} in sync, {required} required")]
    NotEnoughReplicas {
        /// Replicas currently counted in sync.
        in_sync: usize,
        /// Replicas required.
        required: usize,
    },
    /// The write reached the commit point but the ISR had shrunk below min.insync.replicas.
    #[error("NOT_ENOUGH_REPLICAS_AFTER_APPEND: {in_sync} in sync, {required} required")]
    NotEnoughReplicasAfterAppend {
        /// Replicas in sync when the write committed.
        in_sync: usize,
        /// Replicas required.
        required: usize,
    },
    /// The fetch offset lies outside the leader's log.
    #[error("OFFSET_OUT_OF_RANGE: offset {offset} outside [0, {log_end_offset}]")]
    OffsetOutOfRange {
        /// The requested offset.
        offset: Offset,
        /// The leader's log end offset.
        log_end_offset: Offset,
    },
    /// An acks=all write was not committed before its deadline.
    #[error("REQUEST_TIMED_OUT: acks=all write not committed in time")]
    RequestTimedOut,
    /// AlterPartition carried a stale partition epoch.
    #[error("INVALID_UPDATE_VERSION: partition epoch {request} is not current {current}")]
    InvalidUpdateVersion {
        /// The partition epoch in the request.
        request: i32,
        /// The controller's partition epoch.
        current: i32,
    },
    /// AlterPartition proposed an ISR member that is fenced or not a replica.
    #[error("INELIGIBLE_REPLICA: broker {0} cannot join the ISR")]
    IneligibleReplica(BrokerId),
    /// Replicated records carry a leader epoch older than the log's latest one.
    #[error("records of epoch {epoch} after epoch {latest}: refusing to append")]
    EpochRegression {
        /// The epoch of the offending record.
        epoch: LeaderEpoch,
        /// The log's latest epoch.
        latest: LeaderEpoch,
    },
    /// A configuration value is out of range.
    #[error("invalid replication config: {0}")]
    InvalidConfig(String),
}

impl ReplicationError {
    /// The Kafka protocol error this maps to (codes come from the `kafka-protocol` crate).
    pub fn response_error(&self) -> ResponseError {
        match self {
            ReplicationError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
            ReplicationError::NotLeaderOrFollower => ResponseError::NotLeaderOrFollower,
            ReplicationError::RequestTimedOut => ResponseError::RequestTimedOut,
            ReplicationError::NotEnoughReplicas { .. } => ResponseError::NotEnoughReplicas,
            ReplicationError::NotEnoughReplicasAfterAppend { .. } => {
                ResponseError::NotEnoughReplicasAfterAppend
            }
            ReplicationError::InvalidConfig(_) => ResponseError::InvalidRequest,
            ReplicationError::EpochRegression { .. } => ResponseError::CorruptMessage,
            ReplicationError::FencedLeaderEpoch { .. } => ResponseError::FencedLeaderEpoch,
            ReplicationError::UnknownLeaderEpoch { .. } => ResponseError::UnknownLeaderEpoch,
            ReplicationError::InvalidUpdateVersion { .. } => ResponseError::InvalidUpdateVersion,
            ReplicationError::IneligibleReplica(_) => ResponseError::IneligibleReplica,
        }
    }

    /// The Kafka protocol error code for this error.
    pub fn code(&self) -> i16 {
        self.response_error().code()
    }

    /// True for errors after which a client should refresh metadata and retry elsewhere.
    pub fn is_leadership_error(&self) -> bool {
        matches!(
            self,
            ReplicationError::NotLeaderOrFollower
                | ReplicationError::FencedLeaderEpoch { .. }
                | ReplicationError::UnknownLeaderEpoch { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_kafka() {
        assert_eq!(ReplicationError::NotLeaderOrFollower.code(), 6);
        assert_eq!(
            ReplicationError::NotEnoughReplicas {
                in_sync: 1,
                required: 2
            }
            .code(),
            19
        );
        assert_eq!(
            ReplicationError::FencedLeaderEpoch {
                request: 1,
                current: 2
            }
            .code(),
            74
        );
        assert_eq!(
            ReplicationError::UnknownLeaderEpoch {
                request: 3,
                current: 2
            }
            .code(),
            75
        );
        assert_eq!(
            ReplicationError::InvalidUpdateVersion {
                request: 1,
                current: 2
            }
            .code(),
            95
        );
    }
}
