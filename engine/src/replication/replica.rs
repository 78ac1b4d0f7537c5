//! One broker's replica of one partition: leader or follower, switched by the controller's
//! records, with every incoming request checked against the leader epoch first.

use std::collections::VecDeque;

use super::control::PartitionState;
use super::follower::FollowerState;
use super::leader::{validate_epoch, LeaderAction, LeaderState};
use super::log::EpochLog;
use super::policy::{LogPosition, ReplicationPolicy};
use super::{BrokerId, LeaderEpoch, Millis, Offset, ReplicationConfig, ReplicationError};

/// What changed when a controller record was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleChange {
    /// Nothing (stale or already known record).
    None,
    /// This replica now leads `leader_epoch`. The shell records the epoch start in the log's
    /// epoch cache and, if asked, appends an epoch-marker record.
    BecameLeader {
        /// The new epoch.
        leader_epoch: LeaderEpoch,
        /// The log end offset where the epoch starts.
        epoch_start_offset: Offset,
        /// The policy wants a marker record appended at once (see
        /// [`ReplicationPolicy::appends_epoch_marker`]).
        append_epoch_marker: bool,
    },
    /// This replica follows `leader` (or waits for one) in `leader_epoch`.
    BecameFollower {
        /// The leader to follow, if any.
        leader: Option<BrokerId>,
        /// The new epoch.
        leader_epoch: LeaderEpoch,
    },
    /// Same leader and epoch, new ISR.
    IsrChanged,
}

/// The role a replica plays in its current epoch.
#[derive(Debug)]
pub enum Role<P> {
    /// Leading (boxed: a leader's state is much larger than a follower's).
    Leader(Box<LeaderState<P>>),
    /// Following (or waiting for a leader).
    Follower(FollowerState),
}

/// One broker's replica of a partition.
#[derive(Debug)]
pub struct PartitionReplica<P> {
    broker_id: BrokerId,
    policy: P,
    config: ReplicationConfig,
    role: Role<P>,
    /// The highest epoch this replica promised to an election: older leaders are refused.
    fenced_epoch: LeaderEpoch,
    resigned: VecDeque<LeaderAction>,
}

impl<P: ReplicationPolicy + Clone> PartitionReplica<P> {
    /// A replica that knows no leader yet (fresh start or restart); `high_watermark` is the
    /// checkpointed value, if any.
    pub fn new(
        broker_id: BrokerId,
        policy: P,
        config: ReplicationConfig,
        high_watermark: Offset,
        log: &impl EpochLog,
    ) -> Self {
        PartitionReplica {
            broker_id,
            policy,
            config,
            role: Role::Follower(FollowerState::new(None, -1, high_watermark, log)),
            fenced_epoch: -1,
            resigned: VecDeque::new(),
        }
    }

    /// This replica's broker id.
    pub fn broker_id(&self) -> BrokerId {
        self.broker_id
    }

    /// The leader epoch this replica is in.
    pub fn leader_epoch(&self) -> LeaderEpoch {
        match &self.role {
            Role::Leader(l) => l.leader_epoch(),
            Role::Follower(f) => f.leader_epoch(),
        }
    }

    /// The high watermark this replica knows.
    pub fn high_watermark(&self) -> Offset {
        match &self.role {
            Role::Leader(l) => l.high_watermark(),
            Role::Follower(f) => f.high_watermark(),
        }
    }

    /// The current role.
    pub fn role(&self) -> &Role<P> {
        &self.role
    }

    /// The leader state, when leading.
    pub fn leader_mut(&mut self) -> Option<&mut LeaderState<P>> {
        match &mut self.role {
            Role::Leader(l) => Some(l),
            Role::Follower(_) => None,
        }
    }

    /// The follower state, when following.
    pub fn follower_mut(&mut self) -> Option<&mut FollowerState> {
        match &mut self.role {
            Role::Follower(f) => Some(f),
            Role::Leader(_) => None,
        }
    }

    /// Applies changed topic settings (`min.insync.replicas`, lag time, unclean election) from
    /// now on, to the current leadership too.
    pub fn set_config(&mut self, config: ReplicationConfig) {
        if let Role::Leader(l) = &mut self.role {
            l.set_config(config.clone());
        }
        self.config = config;
    }

    /// The epoch this replica leads, if it is the leader.
    pub fn role_leader_epoch(&self) -> Option<LeaderEpoch> {
        match &self.role {
            Role::Leader(l) => Some(l.leader_epoch()),
            Role::Follower(_) => None,
        }
    }

    /// True while leading.
    pub fn is_leader(&self) -> bool {
        matches!(self.role, Role::Leader(_))
    }

    /// The next action for the shell: produce answers of a resigned leadership first.
    pub fn poll_action(&mut self) -> Option<LeaderAction> {
        if let Some(a) = self.resigned.pop_front() {
            return Some(a);
        }
        self.leader_mut().and_then(|l| l.poll_action())
    }

    /// Applies a controller record (from metadata or an AlterPartition answer).
    pub fn apply_partition_state(
        &mut self,
        state: &PartitionState,
        log: &impl EpochLog,
        now: Millis,
    ) -> RoleChange {
        if !state.replicas.contains(&self.broker_id) {
            return RoleChange::None;
        }
        let current = self.leader_epoch();
        if state.leader_epoch < current.max(self.fenced_epoch) {
            return RoleChange::None;
        }
        if state.leader_epoch == current {
            match &mut self.role {
                Role::Leader(l) => {
                    if state.partition_epoch > l.partition_epoch() {
                        l.on_partition_state(state, now);
                        return RoleChange::IsrChanged;
                    }
                    return RoleChange::None;
                }
                // Fenced to this epoch by an election, now told who won it.
                Role::Follower(f) if f.leader().is_none() && state.leader.is_some() => {}
                Role::Follower(_) => return RoleChange::None,
            }
        }
        let hw = self.high_watermark();
        self.step_down();
        if state.leader == Some(self.broker_id) {
            let leo = log.log_end_offset();
            self.role = Role::Leader(Box::new(LeaderState::new(
                self.broker_id,
                self.policy.clone(),
                self.config.clone(),
                state,
                leo,
                hw.min(leo),
                now,
            )));
            tracing::info!(
                broker = self.broker_id,
                epoch = state.leader_epoch,
                "became leader"
            );
            RoleChange::BecameLeader {
                leader_epoch: state.leader_epoch,
                epoch_start_offset: leo,
                append_epoch_marker: self.policy.appends_epoch_marker(),
            }
        } else {
            self.role = Role::Follower(FollowerState::new(
                state.leader,
                state.leader_epoch,
                hw,
                log,
            ));
            RoleChange::BecameFollower {
                leader: state.leader,
                leader_epoch: state.leader_epoch,
            }
        }
    }

    /// An election for `epoch` asks for this replica's log position: from now on it refuses
    /// every older epoch (a leader of an older epoch steps down), as a ZAB/Raft voter does.
    pub fn fence_for_election(&mut self, epoch: LeaderEpoch, log: &impl EpochLog) -> LogPosition {
        if epoch > self.fenced_epoch {
            self.fenced_epoch = epoch;
        }
        if self.leader_epoch() < epoch {
            let hw = self.high_watermark();
            self.step_down();
            self.role = Role::Follower(FollowerState::new(None, epoch, hw, log));
        }
        LogPosition {
            last_epoch: log.latest_epoch().unwrap_or(-1),
            log_end_offset: log.log_end_offset(),
        }
    }

    /// Routes a request that only the leader serves (produce, follower fetch, consumer fetch):
    /// epoch first, then role.
    pub fn leader_for_request(
        &mut self,
        request_epoch: Option<LeaderEpoch>,
    ) -> Result<&mut LeaderState<P>, ReplicationError> {
        validate_epoch(request_epoch, self.leader_epoch())?;
        match &mut self.role {
            Role::Leader(l) => Ok(l),
            Role::Follower(_) => Err(ReplicationError::NotLeaderOrFollower),
        }
    }

    fn step_down(&mut self) {
        if let Role::Leader(l) = &mut self.role {
            tracing::info!(
                broker = self.broker_id,
                epoch = l.leader_epoch(),
                "leaving leadership"
            );
            let actions = l.resign();
            self.resigned.extend(actions);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::log::MemoryLog;
    use crate::replication::policy::IsrPolicy;

    fn state(leader: Option<BrokerId>, epoch: LeaderEpoch) -> PartitionState {
        PartitionState {
            leader,
            leader_epoch: epoch,
            partition_epoch: epoch,
            replicas: vec![1, 2, 3],
            isr: vec![1, 2, 3],
        }
    }

    #[test]
    fn stale_records_are_ignored_and_newer_ones_switch_roles() {
        let log: MemoryLog<u64> = MemoryLog::new();
        let mut r = PartitionReplica::new(1, IsrPolicy, ReplicationConfig::default(), 0, &log);
        assert!(matches!(
            r.apply_partition_state(&state(Some(1), 3), &log, 0),
            RoleChange::BecameLeader {
                leader_epoch: 3,
                ..
            }
        ));
        assert_eq!(
            r.apply_partition_state(&state(Some(2), 2), &log, 0),
            RoleChange::None
        );
        assert!(r.is_leader());
        assert_eq!(
            r.leader_for_request(Some(2))
                .map(|_| ())
                .map_err(|e| e.code()),
            Err(74)
        );
        assert!(matches!(
            r.apply_partition_state(&state(Some(2), 4), &log, 0),
            RoleChange::BecameFollower {
                leader: Some(2),
                leader_epoch: 4
            }
        ));
        assert_eq!(
            r.leader_for_request(Some(4))
                .map(|_| ())
                .map_err(|e| e.code()),
            Err(6)
        );
    }

    #[test]
    fn election_fence_deposes_a_leader() {
        let log: MemoryLog<u64> = MemoryLog::new();
        let mut r = PartitionReplica::new(1, IsrPolicy, ReplicationConfig::default(), 0, &log);
        r.apply_partition_state(&state(Some(1), 3), &log, 0);
        if let Ok(l) = r.leader_for_request(None) {
            l.on_append(
                1,
                Some(crate::replication::ProduceWaiter {
                    id: 4,
                    base_offset: 0,
                    required_offset: 1,
                    deadline: 100,
                }),
                0,
            );
        }
        r.fence_for_election(5, &log);
        assert!(!r.is_leader());
        // The deposed leader's waiting acks=all write fails so the client retries elsewhere.
        assert_eq!(
            r.poll_action(),
            Some(LeaderAction::CompleteProduce {
                id: 4,
                result: Err(ReplicationError::NotLeaderOrFollower)
            })
        );
        // The record of epoch 4 lost the race; epoch 5's winner is accepted.
        assert_eq!(
            r.apply_partition_state(&state(Some(1), 4), &log, 0),
            RoleChange::None
        );
        assert!(matches!(
            r.apply_partition_state(&state(Some(2), 5), &log, 0),
            RoleChange::BecameFollower { .. }
        ));
    }
}
