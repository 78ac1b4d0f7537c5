//! The controller's record of one partition (leader, leader epoch, partition epoch, ISR,
//! replicas) and the rules it applies to it: AlterPartition validation, fencing a broker whose
//! session ended, electing a leader through the replication policy. These rules exist once,
//! here: the production controller (`controller::metadata`, which keeps the record in its Raft
//! log as `PartitionImage`) and the replication simulator (which keeps a [`PartitionState`])
//! both apply them through a [`PartitionRecordMut`] view of their own record.
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

impl PartitionState {
    /// A new partition with its replicas assigned, no leader yet, every replica in the ISR.
    pub fn new(replicas: Vec<BrokerId>) -> Self {
        PartitionState {
            leader: None,
            leader_epoch: -1,
            partition_epoch: 0,
            isr: replicas.clone(),
            replicas,
        }
    }

    /// The epoch the next leader will get; a vote-based election fences replicas to it first.
    pub fn next_leader_epoch(&self) -> LeaderEpoch {
        self.leader_epoch + 1
    }

    /// The controller rules' view of this record.
    pub fn record_mut(&mut self) -> PartitionRecordMut<'_> {
        PartitionRecordMut {
            leader: &mut self.leader,
            leader_epoch: &mut self.leader_epoch,
            partition_epoch: &mut self.partition_epoch,
            replicas: &self.replicas,
            isr: &mut self.isr,
        }
    }
}

/// The fields of a partition's controller record that the rules read and change, borrowed
/// from whichever struct holds them.
#[derive(Debug)]
pub struct PartitionRecordMut<'a> {
    /// The current leader, `None` while the partition is offline.
    pub leader: &'a mut Option<BrokerId>,
    /// Bumped on every leader change.
    pub leader_epoch: &'a mut LeaderEpoch,
    /// Bumped on every change of the record.
    pub partition_epoch: &'a mut i32,
    /// Assigned replicas in preference order.
    pub replicas: &'a [BrokerId],
    /// The committed in-sync replica set.
    pub isr: &'a mut Vec<BrokerId>,
}

/// What [`PartitionRecordMut::fence_replica`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fenced {
    /// The record changed (ISR or leader).
    pub changed: bool,
    /// The fenced broker was the leader: the partition is offline until an election.
    pub lost_leader: bool,
}

impl PartitionRecordMut<'_> {
    /// Validates and applies an AlterPartition proposal. `eligible` says whether a broker may
    /// join the ISR (registered and not fenced). `Ok(true)`: the ISR changed; `Ok(false)`: a
    /// retried proposal that already went through, answered with the current record.
    pub fn alter_partition(
        &mut self,
        request: &AlterPartitionRequest,
        eligible: impl Fn(BrokerId) -> bool,
    ) -> Result<bool, ReplicationError> {
        let current = *self.leader_epoch;
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
        if *self.leader != Some(request.broker_id) {
            return Err(ReplicationError::NotLeaderOrFollower);
        }
        if request.partition_epoch != *self.partition_epoch {
            if same_members(&request.new_isr, self.isr) {
                return Ok(false);
            }
            return Err(ReplicationError::InvalidUpdateVersion {
                request: request.partition_epoch,
                current: *self.partition_epoch,
            });
        }
        if !request.new_isr.contains(&request.broker_id) {
            return Err(ReplicationError::IneligibleReplica(request.broker_id));
        }
        for &member in &request.new_isr {
            let joining = !self.isr.contains(&member);
            if !self.replicas.contains(&member) || (joining && !eligible(member)) {
                return Err(ReplicationError::IneligibleReplica(member));
            }
        }
        *self.isr = self
            .replicas
            .iter()
            .copied()
            .filter(|r| request.new_isr.contains(r))
            .collect();
        *self.partition_epoch += 1;
        tracing::debug!(isr = ?self.isr, partition_epoch = *self.partition_epoch, "ISR change committed");
        Ok(true)
    }

    /// A broker's session ended: drop it from the ISR (unless it is the last member, which
    /// must stay so a clean election can wait for it) and take away its leadership.
    pub fn fence_replica(&mut self, broker: BrokerId) -> Fenced {
        let mut out = Fenced::default();
        if self.isr.len() > 1 && self.isr.contains(&broker) {
            self.isr.retain(|&b| b != broker);
            out.changed = true;
        }
        if *self.leader == Some(broker) {
            *self.leader = None;
            *self.leader_epoch += 1;
            out.changed = true;
            out.lost_leader = true;
        }
        if out.changed {
            *self.partition_epoch += 1;
        }
        out
    }

    /// Runs an election through `policy` when the partition has no leader. `candidates` lists
    /// the replicas in assignment order; for a partition that never had a leader (epoch -1)
    /// every log is empty, so a live candidate's log is `(-1, 0)`. A new leader gets a new
    /// leader epoch. Returns the outcome with the leader actually chosen.
    pub fn elect(
        &mut self,
        policy: &dyn ReplicationPolicy,
        config: &ReplicationConfig,
        candidates: &[ElectionCandidate],
    ) -> ElectionOutcome {
        if self.leader.is_some() {
            return ElectionOutcome::NoEligibleLeader;
        }
        let never_led = *self.leader_epoch < 0;
        let outcome = policy.elect_leader(candidates, config);
        let ElectionOutcome::Elected {
            mut leader,
            unclean,
        } = outcome
        else {
            return outcome;
        };
        if never_led && policy.election_reads_logs() {
            // Every log is empty, so all live replicas tie: keep the preferred replica first,
            // as placement intended, rather than the highest id the tie-break would pick.
            if let Some(first) = candidates.iter().find(|c| c.alive) {
                leader = first.broker_id;
            }
        }
        // A vote-based election may have fenced replicas to the next epoch already; the new
        // epoch is above every epoch handed out so far either way.
        *self.leader = Some(leader);
        *self.leader_epoch += 1;
        *self.partition_epoch += 1;
        if unclean || (policy.election_reads_logs() && !never_led) {
            // Unclean: nobody else is known to match the new leader's log. Quorum: the ISR is
            // bookkeeping only; members rejoin through AlterPartition as they catch up.
            *self.isr = vec![leader];
        } else if !self.isr.contains(&leader) {
            self.isr.push(leader);
        }
        ElectionOutcome::Elected { leader, unclean }
    }

    /// Moves leadership to the preferred replica (the first assigned one) when it is alive
    /// (`alive`) and in the ISR, as Kafka's preferred election does: a new leader epoch, the
    /// ISR unchanged (an ISR member holds every committed record, so nothing committed is
    /// lost; the old leader becomes a follower and truncates what was not committed). Only
    /// sound where ISR membership implies having every committed record (`isr` mode).
    pub fn elect_preferred(&mut self, alive: impl Fn(BrokerId) -> bool) -> PreferredElection {
        let Some(&preferred) = self.replicas.first() else {
            return PreferredElection::NotAvailable;
        };
        if *self.leader == Some(preferred) {
            return PreferredElection::NotNeeded;
        }
        if !self.isr.contains(&preferred) || !alive(preferred) {
            return PreferredElection::NotAvailable;
        }
        *self.leader = Some(preferred);
        *self.leader_epoch += 1;
        *self.partition_epoch += 1;
        PreferredElection::Elected(preferred)
    }
}

/// What [`PartitionRecordMut::elect_preferred`] did (Kafka's preferred leader election).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreferredElection {
    /// The preferred replica (first in the replica list) leads already.
    NotNeeded,
    /// The preferred replica is not alive or not in the ISR: nothing changed.
    NotAvailable,
    /// The preferred replica leads now, in a new leader epoch.
    Elected(BrokerId),
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

    fn elect(
        s: &mut PartitionState,
        policy: &dyn ReplicationPolicy,
        alive: &[BrokerId],
    ) -> ElectionOutcome {
        let isr = s.isr.clone();
        s.record_mut().elect(
            policy,
            &ReplicationConfig::default(),
            &candidates(alive, &isr),
        )
    }

    #[test]
    fn election_bumps_epoch_and_alter_partition_checks_versions() {
        let mut c = PartitionState::new(vec![1, 2, 3]);
        let out = elect(&mut c, &IsrPolicy, &[1, 2, 3]);
        assert_eq!(
            out,
            ElectionOutcome::Elected {
                leader: 1,
                unclean: false
            }
        );
        assert_eq!(c.leader_epoch, 0);
        let pe = c.partition_epoch;
        let shrink = AlterPartitionRequest {
            broker_id: 1,
            leader_epoch: 0,
            partition_epoch: pe,
            new_isr: vec![1, 2],
        };
        assert_eq!(c.record_mut().alter_partition(&shrink, |_| true), Ok(true));
        assert_eq!(c.isr, vec![1, 2]);
        // The same proposal retried is answered with the current record.
        assert_eq!(c.record_mut().alter_partition(&shrink, |_| true), Ok(false));
        let stale = AlterPartitionRequest {
            new_isr: vec![1],
            ..shrink.clone()
        };
        assert_eq!(
            c.record_mut()
                .alter_partition(&stale, |_| true)
                .map_err(|e| e.code()),
            Err(95)
        );
        let fenced = AlterPartitionRequest {
            leader_epoch: -1,
            ..shrink
        };
        assert_eq!(
            c.record_mut()
                .alter_partition(&fenced, |_| true)
                .map_err(|e| e.code()),
            Err(74)
        );
    }

    #[test]
    fn fencing_the_leader_bumps_epoch_and_keeps_last_isr_member() {
        let mut c = PartitionState::new(vec![1, 2, 3]);
        elect(&mut c, &IsrPolicy, &[1, 2, 3]);
        assert!(c.record_mut().fence_replica(2).changed);
        assert!(c.record_mut().fence_replica(3).changed);
        let last = c.record_mut().fence_replica(1);
        assert!(last.changed && last.lost_leader);
        assert_eq!(c.leader, None);
        assert_eq!(c.isr, vec![1]);
        assert_eq!(c.leader_epoch, 1);
        // Only broker 1 (the last ISR member) may lead, and it is down.
        let out = elect(&mut c, &IsrPolicy, &[2, 3]);
        assert_eq!(out, ElectionOutcome::NoEligibleLeader);
        assert_eq!(c.leader_epoch, 1);
    }

    #[test]
    fn preferred_election_needs_a_live_in_sync_preferred_replica() {
        let mut c = PartitionState::new(vec![1, 2, 3]);
        elect(&mut c, &IsrPolicy, &[1, 2, 3]);
        assert_eq!(
            c.record_mut().elect_preferred(|_| true),
            PreferredElection::NotNeeded
        );
        // Broker 1 dies: 2 leads, 1 leaves the ISR.
        assert!(c.record_mut().fence_replica(1).lost_leader);
        elect(&mut c, &IsrPolicy, &[2, 3]);
        assert_eq!(c.leader, Some(2));
        let before = (c.leader_epoch, c.partition_epoch);
        // Back alive but not yet in the ISR: refused, nothing changes.
        assert_eq!(
            c.record_mut().elect_preferred(|_| true),
            PreferredElection::NotAvailable
        );
        assert_eq!((c.leader_epoch, c.partition_epoch), before);
        c.isr.push(1);
        // In the ISR but not alive: refused.
        assert_eq!(
            c.record_mut().elect_preferred(|b| b != 1),
            PreferredElection::NotAvailable
        );
        assert_eq!(
            c.record_mut().elect_preferred(|_| true),
            PreferredElection::Elected(1)
        );
        assert_eq!(c.leader, Some(1));
        assert_eq!(c.leader_epoch, before.0 + 1);
        assert_eq!(c.partition_epoch, before.1 + 1);
        assert_eq!(c.isr.len(), 3);
    }

    #[test]
    fn quorum_first_election_keeps_placement_later_ones_reset_isr_to_leader() {
        let mut c = PartitionState::new(vec![1, 2, 3]);
        // Never led: every log is empty, the first live replica leads, the ISR stays whole.
        let out = elect(&mut c, &QuorumPolicy, &[2, 3]);
        assert_eq!(
            out,
            ElectionOutcome::Elected {
                leader: 2,
                unclean: false
            }
        );
        assert_eq!(c.isr, vec![1, 2, 3]);
        assert!(c.record_mut().fence_replica(2).lost_leader);
        // Later elections pick the longest log (broker 3 here) and reset the ISR to it.
        let out = elect(&mut c, &QuorumPolicy, &[2, 3]);
        assert_eq!(
            out,
            ElectionOutcome::Elected {
                leader: 3,
                unclean: false
            }
        );
        assert_eq!(c.isr, vec![3]);
    }
}
