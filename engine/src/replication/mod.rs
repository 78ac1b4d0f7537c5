//! Replication core: one pipeline with pluggable commit and election rules (ISR, majority quorum).
//!
//! Everything here is sans-IO: plain deterministic types that take inputs (a local append
//! finished, a follower fetched, a timer fired, the controller decided) and produce actions
//! (advance the high watermark, complete or fail produce waiters, propose an ISR change,
//! truncate, append). The broker's shard tasks feed them and carry out the actions; the
//! deterministic simulator in `engine/tests/replication_sim.rs` drives the same types under
//! seeded fault schedules.
//!
//! Module map:
//! - [`policy`]: the [`ReplicationPolicy`] trait and its two rules, [`IsrPolicy`] and
//!   [`QuorumPolicy`] (commit point, ISR bookkeeping, acks=all admission, leader election).
//! - [`leader`]: [`LeaderState`], the leader side of one partition.
//! - [`follower`]: [`FollowerState`], epoch-based truncation (KIP-101/KIP-279) then fetching.
//! - [`replica`]: [`PartitionReplica`], one broker's replica of a partition, switching between
//!   the two roles on controller decisions and fencing stale epochs.
//! - [`control`]: [`PartitionControl`], the controller's per-partition record (leader, epochs,
//!   ISR) with AlterPartition validation and elections through the policy.
//! - [`log`]: [`EpochLog`], the read-only view of a partition log the core needs, and
//!   [`MemoryLog`], an in-memory log with a leader-epoch cache.

pub mod control;
pub mod error;
pub mod follower;
pub mod leader;
pub mod log;
pub mod policy;
pub mod replica;

pub use control::{
    AlterPartitionRequest, Fenced, PartitionRecordMut, PartitionState, PreferredElection,
};
pub use error::ReplicationError;
pub use follower::{FetchResponseInfo, FollowerRequest, FollowerState, FollowerStep};
pub use leader::{FetchDecision, FollowerFetch, LeaderAction, LeaderState, ProduceWaiter};
pub use log::{EpochEndOffset, EpochLog, MemoryLog};
pub use policy::{
    CommitView, ElectionCandidate, ElectionOutcome, IsrPolicy, LogPosition, QuorumPolicy,
    ReplicaProgress, ReplicationPolicy,
};
pub use replica::{PartitionReplica, Role, RoleChange};

use std::fmt;
use std::str::FromStr;

/// A broker (replica) id, as in Kafka's `replica_id` / `broker.id`.
pub type BrokerId = i32;
/// An offset in a partition log.
pub type Offset = i64;
/// A leader epoch: bumped by the controller on every leadership change of a partition.
pub type LeaderEpoch = i32;
/// A logical time in milliseconds supplied by the caller (the sans-IO core never reads a clock).
pub type Millis = u64;

/// Kafka's "no epoch" marker (`UNDEFINED_EPOCH`, -1).
pub const UNDEFINED_EPOCH: LeaderEpoch = -1;
/// Kafka's "no offset" marker (`UNDEFINED_EPOCH_OFFSET`, -1).
pub const UNDEFINED_OFFSET: Offset = -1;

/// The replication rule of a topic (`replication.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicationMode {
    /// Kafka's in-sync replica set: commit when the whole ISR has an offset.
    Isr,
    /// ZAB/Raft-style majority quorum: commit when a majority of replicas has an offset.
    Quorum,
}

impl ReplicationMode {
    /// The configuration value (`isr` or `quorum`).
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicationMode::Isr => "isr",
            ReplicationMode::Quorum => "quorum",
        }
    }
}

impl fmt::Display for ReplicationMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ReplicationMode {
    type Err = ReplicationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "isr" => Ok(ReplicationMode::Isr),
            "quorum" => Ok(ReplicationMode::Quorum),
            other => Err(ReplicationError::InvalidConfig(format!(
                "replication.mode must be `isr` or `quorum`, got `{other}`"
            ))),
        }
    }
}

/// The per-topic replication settings the core reads (Kafka names and defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationConfig {
    /// `min.insync.replicas`: the smallest ISR that may accept acks=all writes (isr mode).
    pub min_insync_replicas: usize,
    /// `replica.lag.time.max.ms`: a follower not caught up for this long leaves the ISR.
    pub replica_lag_time_max_ms: Millis,
    /// `unclean.leader.election.enable`: let an out-of-sync replica lead (isr mode, loses data).
    pub unclean_leader_election_enable: bool,
    /// How long an unanswered AlterPartition waits before the leader sends it again.
    pub alter_partition_retry_ms: Millis,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            min_insync_replicas: 1,
            replica_lag_time_max_ms: 30_000,
            unclean_leader_election_enable: false,
            alter_partition_retry_ms: 2_000,
        }
    }
}

impl ReplicationConfig {
    /// Rejects settings that cannot work (a zero lag time or a zero min ISR).
    pub fn validate(&self) -> Result<(), ReplicationError> {
        if self.min_insync_replicas == 0 {
            return Err(ReplicationError::InvalidConfig(
                "min.insync.replicas must be at least 1".into(),
            ));
        }
        if self.replica_lag_time_max_ms == 0 {
            return Err(ReplicationError::InvalidConfig(
                "replica.lag.time.max.ms must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// The number of replicas that forms a majority of `replicas` (2f+1 -> f+1).
pub fn majority(replicas: usize) -> usize {
    replicas / 2 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majority_of_odd_and_even_sets() {
        assert_eq!(majority(1), 1);
        assert_eq!(majority(3), 2);
        assert_eq!(majority(4), 3);
        assert_eq!(majority(5), 3);
    }

    #[test]
    fn mode_parses_config_values() {
        assert_eq!(
            "isr".parse::<ReplicationMode>().ok(),
            Some(ReplicationMode::Isr)
        );
        assert_eq!(
            " Quorum ".parse::<ReplicationMode>().ok(),
            Some(ReplicationMode::Quorum)
        );
        assert!("raft".parse::<ReplicationMode>().is_err());
    }

    #[test]
    fn config_validation_rejects_zero_min_isr() {
        let config = ReplicationConfig {
            min_insync_replicas: 0,
            ..ReplicationConfig::default()
        };
        assert!(config.validate().is_err());
        assert!(ReplicationConfig::default().validate().is_ok());
    }
}
