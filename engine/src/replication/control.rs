//! The controller's record of one partition (leader, leader epoch, partition epoch, ISR,
//! replicas) and the decisions it takes on it: AlterPartition validation, fencing a dead
//! broker, electing through the policy. The real controller keeps this record in its Raft
//! log; the simulator keeps it in an oracle. Both call the same code.

use super::policy::{ElectionCandidate, ElectionOutcome, ReplicationPolicy};
use super::{BrokerId, LeaderEpoch, ReplicationConfig, ReplicationError};

/// What the controller has committed about a partition (Kafka's `PartitionRecord`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    /// The current leader, `None` while the partition is offline.
    pub leader: Option<BrokerId>,
    /// Bumped on every leader change (including to "no leader").
    pub leader_epoch: LeaderEpoch,
    /// Bumped on every change of the record (leader or ISR), AlterPartition's version check.
    pub partition_epoch: i32,
    /// Assigned replicas in preference order.
    pub replicas: Vec<BrokerId>,
    /// The committed in-sync replica set.
    pub isr: Vec<BrokerId>,
}

/// A leader's proposal to change the ISR (Kafka's AlterPartition request for one partition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlterPartitionRequest {
    /// The proposing leader.
    pub broker_id: BrokerId,
    /// The leader epoch the proposer leads in.
    pub leader_epoch: LeaderEpoch,
    /// The partition epoch the proposal is based on.
    pub partition_epoch: i32,
    /// The proposed ISR.
    pub new_isr: Vec<BrokerId>,
}

/// The controller's per-partition state machine.
#[derive(Debug, Clone)]
pub struct PartitionControl {
    state: PartitionState,
    config: ReplicationConfig,
    unclean_elections: u64,
}

impl PartitionControl {
    /// A new partition with its replicas assigned, no leader yet, every replica in the ISR.
    pub fn new(replicas: Vec<BrokerId>, config: ReplicationConfig) -> Self {
        PartitionControl {
            state: PartitionState {
                leader: None,
                leader_epoch: -1,
                partition_epoch: 0,
                isr: replicas.clone(),
                replicas,
            },
            config,
            unclean_elections: 0,
        }
    }

    /// The committed record.
    pub fn state(&self) -> &PartitionState {
        &self.state
    }

    /// The replication settings this partition uses.
    pub fn config(&self) -> &ReplicationConfig {
        &self.config
    }

    /// How many elections chose a leader outside the ISR.
    pub fn unclean_elections(&self) -> u64 {
        self.unclean_elections
    }

    /// The epoch the next leader will get; a vote-based election fences replicas to it first.
    pub fn next_leader_epoch(&self) -> LeaderEpoch {
        self.state.leader_epoch + 1
    }

    /// Validates and applies an AlterPartition proposal. `eligible` says whether a broker may
    /// join the ISR (registered and not fenced).
    pub fn alter_partition(
        &mut self,
        request: &AlterPartitionRequest,
        eligible: impl Fn(BrokerId) -> bool,
    ) -> Result<PartitionState, ReplicationError> {
        let current = self.state.leader_epoch;
        if request.leader_epoch < current {
            return Err(ReplicationError::FencedLeaderEpoch {
                request: request.leader_epoch,
                current,
            });
        }
        if request.leader_epoch > current {
            return Err(ReplicationError::UnknownLeaderEpoch {
                request: request.leader_epoch,
                current,
            });
        }
        if self.state.leader != Some(request.broker_id) {
            return Err(ReplicationError::NotLeaderOrFollower);
        }
        if request.partition_epoch != self.state.partition_epoch {
            // A retried proposal that already went through is answered with the current state.
            if same_members(&request.new_isr, &self.state.isr) {
                return Ok(self.state.clone());
            }
            return Err(ReplicationError::InvalidUpdateVersion {
                request: request.partition_epoch,
                current: self.state.partition_epoch,
            });
        }
        if !request.new_isr.contains(&request.broker_id) {
            return Err(ReplicationError::IneligibleReplica(request.broker_id));
        }
        for &member in &request.new_isr {
            let joining = !self.state.isr.contains(&member);
            if !self.state.replicas.contains(&member) || (joining && !eligible(member)) {
                return Err(ReplicationError::IneligibleReplica(member));
            }
        }
        self.state.isr = self
            .state
            .replicas
            .iter()
            .copied()
            .filter(|r| request.new_isr.contains(r))
            .collect();
        self.state.partition_epoch += 1;
        tracing::debug!(isr = ?self.state.isr, partition_epoch = self.state.partition_epoch, "ISR change committed");
        Ok(self.state.clone())
    }

    /// A broker's session ended: drop it from the ISR (unless it is the last member, which
    /// must stay so a clean election can wait for it) and take away its leadership. Returns
    /// true if the record changed.
    pub fn fence_broker(&mut self, broker: BrokerId) -> bool {
        let mut changed = false;
        if self.state.isr.len() > 1 && self.state.isr.contains(&broker) {
            self.state.isr.retain(|&b| b != broker);
            changed = true;
        }
        if self.state.leader == Some(broker) {
            self.state.leader = None;
            self.state.leader_epoch += 1;
            changed = true;
        }
        if changed {
            self.state.partition_epoch += 1;
        }
        changed
    }

    /// Runs an election through `policy` when the partition has no leader. `candidates` lists
    /// the replicas in assignment order. A new leader gets a new leader epoch.
    pub fn elect(
        &mut self,
        policy: &dyn ReplicationPolicy,
        candidates: &[ElectionCandidate],
    ) -> ElectionOutcome {
        if self.state.leader.is_some() {
            return ElectionOutcome::NoEligibleLeader;
        }
        let outcome = policy.elect_leader(candidates, &self.config);
        if let ElectionOutcome::Elected { leader, unclean } = outcome {
            // A vote-based election may have fenced replicas to the next epoch already; the
            // new epoch is above every epoch handed out so far either way.
            self.state.leader = Some(leader);
            self.state.leader_epoch += 1;
            self.state.partition_epoch += 1;
            if unclean || policy.election_reads_logs() {
                // Unclean: nobody else is known to match the new leader's log. Quorum: the
                // ISR is bookkeeping only; members rejoin as they catch up.
                self.state.isr = vec![leader];
            } else if !self.state.isr.contains(&leader) {
                self.state.isr.push(leader);
            }
            if unclean {
                self.unclean_elections += 1;
                tracing::warn!(
                    leader,
                    epoch = self.state.leader_epoch,
                    "unclean leader election"
                );
            } else {
                tracing::info!(leader, epoch = self.state.leader_epoch, "leader elected");
            }
        }
        outcome
    }
}

fn same_members(a: &[BrokerId], b: &[BrokerId]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::policy::{IsrPolicy, LogPosition, QuorumPolicy};

    fn candidates(alive: &[BrokerId], isr: &[BrokerId]) -> Vec<ElectionCandidate> {
        [1, 2, 3]
            .iter()
            .map(|&b| ElectionCandidate {
                broker_id: b,
                alive: alive.contains(&b),
                in_isr: isr.contains(&b),
                log: alive.contains(&b).then_some(LogPosition {
                    last_epoch: 0,
                    log_end_offset: b as i64,
                }),
            })
            .collect()
    }

    #[test]
    fn election_bumps_epoch_and_alter_partition_checks_versions() {
        let mut c = PartitionControl::new(vec![1, 2, 3], ReplicationConfig::default());
        let out = c.elect(&IsrPolicy, &candidates(&[1, 2, 3], &[1, 2, 3]));
        assert_eq!(
            out,
            ElectionOutcome::Elected {
                leader: 1,
                unclean: false
            }
        );
        assert_eq!(c.state().leader_epoch, 0);
        let pe = c.state().partition_epoch;
        let shrink = AlterPartitionRequest {
            broker_id: 1,
            leader_epoch: 0,
            partition_epoch: pe,
            new_isr: vec![1, 2],
        };
        let st = c.alter_partition(&shrink, |_| true);
        assert_eq!(st.map(|s| s.isr), Ok(vec![1, 2]));
        // The same proposal retried is answered with the current record.
        assert!(c.alter_partition(&shrink, |_| true).is_ok());
        let stale = AlterPartitionRequest {
            new_isr: vec![1],
            ..shrink.clone()
        };
        assert_eq!(
            c.alter_partition(&stale, |_| true).map_err(|e| e.code()),
            Err(95)
        );
        let fenced = AlterPartitionRequest {
            leader_epoch: -1,
            ..shrink
        };
        assert_eq!(
            c.alter_partition(&fenced, |_| true).map_err(|e| e.code()),
            Err(74)
        );
    }

    #[test]
    fn fencing_the_leader_bumps_epoch_and_keeps_last_isr_member() {
        let mut c = PartitionControl::new(vec![1, 2, 3], ReplicationConfig::default());
        c.elect(&IsrPolicy, &candidates(&[1, 2, 3], &[1, 2, 3]));
        assert!(c.fence_broker(2));
        assert!(c.fence_broker(3));
        assert!(c.fence_broker(1));
        assert_eq!(c.state().leader, None);
        assert_eq!(c.state().isr, vec![1]);
        assert_eq!(c.state().leader_epoch, 1);
        // Only broker 1 (the last ISR member) may lead, and it is down.
        let out = c.elect(&IsrPolicy, &candidates(&[2, 3], &[1]));
        assert_eq!(out, ElectionOutcome::NoEligibleLeader);
        assert_eq!(c.state().leader_epoch, 1);
    }

    #[test]
    fn quorum_election_resets_isr_to_leader() {
        let mut c = PartitionControl::new(vec![1, 2, 3], ReplicationConfig::default());
        let out = c.elect(&QuorumPolicy, &candidates(&[2, 3], &[1, 2, 3]));
        assert_eq!(
            out,
            ElectionOutcome::Elected {
                leader: 3,
                unclean: false
            }
        );
        assert_eq!(c.state().isr, vec![3]);
    }
}
