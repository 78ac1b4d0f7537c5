//! The pluggable rules of replication: where the commit point is, who is in sync, whether an
//! acks=all write is admitted, and who may lead. [`IsrPolicy`] is Kafka's rule set;
//! [`QuorumPolicy`] is ZAB/Raft's majority rule. A third rule is a new type implementing
//! [`ReplicationPolicy`]; the leader, follower and controller code stays the same.

use std::fmt;

use super::{
    majority, BrokerId, LeaderEpoch, Millis, Offset, ReplicationConfig, ReplicationError,
    ReplicationMode,
};

/// The leader's view of one replica (the leader itself included) when deciding a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaProgress {
    /// The replica's broker id.
    pub broker_id: BrokerId,
    /// Its log end offset as last reported in this leader epoch (`None`: not yet heard from).
    pub log_end_offset: Option<Offset>,
    /// Member of the ISR the controller committed.
    pub in_isr: bool,
    /// Member of the ISR the leader counts for safety: committed ISR plus pending additions,
    /// and pending removals still counted (Kafka's "maximal ISR").
    pub in_maximal_isr: bool,
    /// Caught up with the leader within `replica.lag.time.max.ms` (always true for the leader).
    pub caught_up: bool,
}

/// Everything a policy may look at to place the commit point or admit a write.
#[derive(Debug, Clone, Copy)]
pub struct CommitView<'a> {
    /// The leader's broker id.
    pub leader_id: BrokerId,
    /// The current leader epoch.
    pub leader_epoch: LeaderEpoch,
    /// The leader's log end offset when this epoch began: offsets below it came from older
    /// epochs.
    pub epoch_start_offset: Offset,
    /// The leader's current high watermark.
    pub high_watermark: Offset,
    /// Every assigned replica, leader included.
    pub replicas: &'a [ReplicaProgress],
}

impl CommitView<'_> {
    /// The leader's own log end offset.
    pub fn leader_log_end_offset(&self) -> Offset {
        self.replicas
            .iter()
            .find(|r| r.broker_id == self.leader_id)
            .and_then(|r| r.log_end_offset)
            .unwrap_or(self.high_watermark)
    }

    /// Size of the committed ISR.
    pub fn isr_size(&self) -> usize {
        self.replicas.iter().filter(|r| r.in_isr).count()
    }

    /// Size of the maximal ISR.
    pub fn maximal_isr_size(&self) -> usize {
        self.replicas.iter().filter(|r| r.in_maximal_isr).count()
    }
}

/// Where a replica's log ends, as an election compares logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogPosition {
    /// The epoch of the last record (or epoch-cache entry); -1 for an empty log.
    pub last_epoch: LeaderEpoch,
    /// The log end offset.
    pub log_end_offset: Offset,
}

/// One replica as the controller sees it when electing a leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElectionCandidate {
    /// The replica's broker id.
    pub broker_id: BrokerId,
    /// Its broker session is live (registered, heartbeating, not fenced).
    pub alive: bool,
    /// Member of the committed ISR.
    pub in_isr: bool,
    /// Its log position if it answered the election (and is fenced from the old epoch).
    pub log: Option<LogPosition>,
}

/// The result of an election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElectionOutcome {
    /// `leader` leads the next epoch; `unclean` marks a leader that may lack committed data.
    Elected {
        /// The new leader.
        leader: BrokerId,
        /// True when the leader came from outside the ISR (data loss possible).
        unclean: bool,
    },
    /// Nobody may lead: the partition stays offline until a candidate becomes eligible.
    NoEligibleLeader,
}

/// The rules of one replication mode. Implementations are stateless decisions over views.
pub trait ReplicationPolicy: fmt::Debug {
    /// The mode this policy implements (reported in metadata and metrics).
    fn mode(&self) -> ReplicationMode;

    /// The commit point the replicas support now. The leader never moves its high watermark
    /// backwards, so a value below the current one is ignored.
    fn high_watermark(&self, view: &CommitView<'_>) -> Offset;

    /// Admission of an acks=all write before it is appended (`NOT_ENOUGH_REPLICAS`).
    fn check_acks_all(
        &self,
        view: &CommitView<'_>,
        config: &ReplicationConfig,
    ) -> Result<(), ReplicationError>;

    /// The answer to an acks=all write whose offset just committed.
    fn check_committed(
        &self,
        view: &CommitView<'_>,
        config: &ReplicationConfig,
    ) -> Result<(), ReplicationError> {
        let _ = (view, config);
        Ok(())
    }

    /// Chooses the next leader among `candidates` (in assignment order).
    fn elect_leader(
        &self,
        candidates: &[ElectionCandidate],
        config: &ReplicationConfig,
    ) -> ElectionOutcome;

    /// Whether a controller election must first fence a set of replicas and read their log
    /// positions (true for vote-based rules).
    fn election_reads_logs(&self) -> bool {
        false
    }

    /// Whether a new leader appends a marker record to start its epoch, so the commit point
    /// can pass records of older epochs (Raft's no-op, Kafka KRaft's LeaderChange record).
    fn appends_epoch_marker(&self) -> bool {
        false
    }

    /// Kafka's ISR shrink rule: a follower leaves after `replica.lag.time.max.ms` without
    /// catching up to the leader.
    fn should_leave_isr(
        &self,
        last_caught_up_ms: Millis,
        now: Millis,
        config: &ReplicationConfig,
    ) -> bool {
        now.saturating_sub(last_caught_up_ms) > config.replica_lag_time_max_ms
    }

    /// Kafka's ISR expand rule: a follower rejoins once it holds the high watermark and has
    /// reached the current epoch.
    fn may_join_isr(
        &self,
        follower_log_end_offset: Offset,
        high_watermark: Offset,
        epoch_start_offset: Offset,
    ) -> bool {
        follower_log_end_offset >= high_watermark && follower_log_end_offset >= epoch_start_offset
    }
}

/// A shared policy chosen at run time (a topic's `replication.mode`) delegates every rule.
impl<T: ReplicationPolicy + ?Sized> ReplicationPolicy for std::sync::Arc<T> {
    fn mode(&self) -> ReplicationMode {
        (**self).mode()
    }
    fn high_watermark(&self, view: &CommitView<'_>) -> Offset {
        (**self).high_watermark(view)
    }
    fn check_acks_all(
        &self,
        view: &CommitView<'_>,
        config: &ReplicationConfig,
    ) -> Result<(), ReplicationError> {
        (**self).check_acks_all(view, config)
    }
    fn check_committed(
        &self,
        view: &CommitView<'_>,
        config: &ReplicationConfig,
    ) -> Result<(), ReplicationError> {
        (**self).check_committed(view, config)
    }
    fn elect_leader(
        &self,
        candidates: &[ElectionCandidate],
        config: &ReplicationConfig,
    ) -> ElectionOutcome {
        (**self).elect_leader(candidates, config)
    }
    fn election_reads_logs(&self) -> bool {
        (**self).election_reads_logs()
    }
    fn appends_epoch_marker(&self) -> bool {
        (**self).appends_epoch_marker()
    }
    fn should_leave_isr(
        &self,
        last_caught_up_ms: Millis,
        now: Millis,
        config: &ReplicationConfig,
    ) -> bool {
        (**self).should_leave_isr(last_caught_up_ms, now, config)
    }
    fn may_join_isr(
        &self,
        follower_log_end_offset: Offset,
        high_watermark: Offset,
        epoch_start_offset: Offset,
    ) -> bool {
        (**self).may_join_isr(follower_log_end_offset, high_watermark, epoch_start_offset)
    }
}

/// The policy of `mode`, shareable across partitions.
pub fn policy_for(mode: ReplicationMode) -> std::sync::Arc<dyn ReplicationPolicy + Send + Sync> {
    match mode {
        ReplicationMode::Isr => std::sync::Arc::new(IsrPolicy),
        ReplicationMode::Quorum => std::sync::Arc::new(QuorumPolicy),
    }
}

/// Kafka's in-sync replica rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IsrPolicy;

impl ReplicationPolicy for IsrPolicy {
    fn mode(&self) -> ReplicationMode {
        ReplicationMode::Isr
    }

    /// The smallest log end offset in the maximal ISR: an offset commits once every in-sync
    /// replica has it. A member not yet heard from in this epoch holds the commit point.
    fn high_watermark(&self, view: &CommitView<'_>) -> Offset {
        view.replicas
            .iter()
            .filter(|r| r.in_maximal_isr)
            .map(|r| r.log_end_offset.unwrap_or(view.high_watermark))
            .min()
            .unwrap_or(view.high_watermark)
    }

    fn check_acks_all(
        &self,
        view: &CommitView<'_>,
        config: &ReplicationConfig,
    ) -> Result<(), ReplicationError> {
        let in_sync = view.isr_size();
        if in_sync < config.min_insync_replicas {
            return Err(ReplicationError::NotEnoughReplicas {
                in_sync,
                required: config.min_insync_replicas,
            });
        }
        Ok(())
    }

    fn check_committed(
        &self,
        view: &CommitView<'_>,
        config: &ReplicationConfig,
    ) -> Result<(), ReplicationError> {
        let in_sync = view.maximal_isr_size();
        if in_sync < config.min_insync_replicas {
            return Err(ReplicationError::NotEnoughReplicasAfterAppend {
                in_sync,
                required: config.min_insync_replicas,
            });
        }
        Ok(())
    }

    /// The first live ISR member in assignment order; with unclean election enabled and no
    /// live ISR member, the first live replica (which may lack committed records).
    fn elect_leader(
        &self,
        candidates: &[ElectionCandidate],
        config: &ReplicationConfig,
    ) -> ElectionOutcome {
        if let Some(c) = candidates.iter().find(|c| c.alive && c.in_isr) {
            return ElectionOutcome::Elected {
                leader: c.broker_id,
                unclean: false,
            };
        }
        if config.unclean_leader_election_enable {
            if let Some(c) = candidates.iter().find(|c| c.alive) {
                return ElectionOutcome::Elected {
                    leader: c.broker_id,
                    unclean: true,
                };
            }
        }
        ElectionOutcome::NoEligibleLeader
    }
}

/// ZAB/Raft majority rules: commit on a majority, elect the most up-to-date log of a majority.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuorumPolicy;

impl ReplicationPolicy for QuorumPolicy {
    fn mode(&self) -> ReplicationMode {
        ReplicationMode::Quorum
    }

    /// The largest offset a majority of replicas (leader included) has, but only once that
    /// majority holds a record of the current epoch: counting replicas for an older epoch's
    /// records alone is unsafe (Raft section 5.4.2), a later leader could overwrite them.
    fn high_watermark(&self, view: &CommitView<'_>) -> Offset {
        let mut ends: Vec<Offset> = view
            .replicas
            .iter()
            .filter_map(|r| r.log_end_offset)
            .collect();
        let need = majority(view.replicas.len());
        if ends.len() < need {
            return view.high_watermark;
        }
        ends.sort_unstable_by(|a, b| b.cmp(a));
        let candidate = ends[need - 1];
        if candidate > view.epoch_start_offset {
            candidate
        } else {
            view.high_watermark
        }
    }

    /// acks=all needs a majority caught up: `min.insync.replicas` is implied by the majority,
    /// and a larger configured value still applies.
    fn check_acks_all(
        &self,
        view: &CommitView<'_>,
        config: &ReplicationConfig,
    ) -> Result<(), ReplicationError> {
        let in_sync = view.replicas.iter().filter(|r| r.caught_up).count();
        let required = majority(view.replicas.len()).max(config.min_insync_replicas);
        if in_sync < required {
            return Err(ReplicationError::NotEnoughReplicas { in_sync, required });
        }
        Ok(())
    }

    /// Among the replicas that answered (and so are fenced from the old epoch), the largest
    /// `(last epoch, log end offset, broker id)`, as ZAB orders votes; without a majority of
    /// answers, no leader.
    fn elect_leader(
        &self,
        candidates: &[ElectionCandidate],
        _config: &ReplicationConfig,
    ) -> ElectionOutcome {
        let voters: Vec<(LogPosition, BrokerId)> = candidates
            .iter()
            .filter(|c| c.alive)
            .filter_map(|c| c.log.map(|log| (log, c.broker_id)))
            .collect();
        if voters.len() < majority(candidates.len()) {
            return ElectionOutcome::NoEligibleLeader;
        }
        match voters.iter().max() {
            Some(&(_, leader)) => ElectionOutcome::Elected {
                leader,
                unclean: false,
            },
            None => ElectionOutcome::NoEligibleLeader,
        }
    }

    fn election_reads_logs(&self) -> bool {
        true
    }

    fn appends_epoch_marker(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(id: BrokerId, leo: Option<Offset>, isr: bool) -> ReplicaProgress {
        ReplicaProgress {
            broker_id: id,
            log_end_offset: leo,
            in_isr: isr,
            in_maximal_isr: isr,
            caught_up: isr,
        }
    }

    fn view(replicas: &[ReplicaProgress], epoch_start: Offset, hw: Offset) -> CommitView<'_> {
        CommitView {
            leader_id: replicas[0].broker_id,
            leader_epoch: 3,
            epoch_start_offset: epoch_start,
            high_watermark: hw,
            replicas,
        }
    }

    #[test]
    fn isr_commit_waits_for_slowest_member() {
        let r = [
            progress(1, Some(10), true),
            progress(2, Some(9), true),
            progress(3, Some(2), true),
        ];
        assert_eq!(IsrPolicy.high_watermark(&view(&r, 0, 0)), 2);
        let r = [
            progress(1, Some(10), true),
            progress(2, Some(9), true),
            progress(3, Some(2), false),
        ];
        assert_eq!(IsrPolicy.high_watermark(&view(&r, 0, 0)), 9);
    }

    #[test]
    fn quorum_commit_rides_fastest_majority_in_current_epoch() {
        let r = [
            progress(1, Some(10), true),
            progress(2, Some(9), true),
            progress(3, Some(2), true),
        ];
        assert_eq!(QuorumPolicy.high_watermark(&view(&r, 0, 0)), 9);
        // The majority has nothing of the current epoch (which starts at 9) yet.
        assert_eq!(QuorumPolicy.high_watermark(&view(&r, 9, 4)), 4);
        let five = [
            progress(1, Some(10), true),
            progress(2, Some(3), true),
            progress(3, None, true),
            progress(4, Some(8), true),
            progress(5, Some(1), true),
        ];
        assert_eq!(QuorumPolicy.high_watermark(&view(&five, 0, 0)), 3);
    }

    #[test]
    fn isr_admission_enforces_min_insync() {
        let config = ReplicationConfig {
            min_insync_replicas: 2,
            ..ReplicationConfig::default()
        };
        let r = [progress(1, Some(10), true), progress(2, Some(1), false)];
        let err = IsrPolicy.check_acks_all(&view(&r, 0, 0), &config);
        assert_eq!(err.map_err(|e| e.code()), Err(19));
    }

    #[test]
    fn quorum_admission_needs_majority_caught_up() {
        let config = ReplicationConfig::default();
        let r = [
            progress(1, Some(10), true),
            progress(2, Some(1), false),
            progress(3, Some(1), false),
        ];
        assert!(QuorumPolicy
            .check_acks_all(&view(&r, 0, 0), &config)
            .is_err());
        let r = [
            progress(1, Some(10), true),
            progress(2, Some(1), true),
            progress(3, Some(1), false),
        ];
        assert!(QuorumPolicy
            .check_acks_all(&view(&r, 0, 0), &config)
            .is_ok());
    }

    fn candidate(
        id: BrokerId,
        alive: bool,
        isr: bool,
        log: Option<(i32, i64)>,
    ) -> ElectionCandidate {
        ElectionCandidate {
            broker_id: id,
            alive,
            in_isr: isr,
            log: log.map(|(e, o)| LogPosition {
                last_epoch: e,
                log_end_offset: o,
            }),
        }
    }

    #[test]
    fn isr_election_prefers_live_isr_then_unclean() {
        let clean = ReplicationConfig::default();
        let unclean = ReplicationConfig {
            unclean_leader_election_enable: true,
            ..ReplicationConfig::default()
        };
        let c = [
            candidate(1, false, true, None),
            candidate(2, true, false, None),
            candidate(3, true, true, None),
        ];
        assert_eq!(
            IsrPolicy.elect_leader(&c, &clean),
            ElectionOutcome::Elected {
                leader: 3,
                unclean: false
            }
        );
        let c = [
            candidate(1, false, true, None),
            candidate(2, true, false, None),
        ];
        assert_eq!(
            IsrPolicy.elect_leader(&c, &clean),
            ElectionOutcome::NoEligibleLeader
        );
        assert_eq!(
            IsrPolicy.elect_leader(&c, &unclean),
            ElectionOutcome::Elected {
                leader: 2,
                unclean: true
            }
        );
    }

    #[test]
    fn quorum_election_orders_by_epoch_offset_id() {
        let config = ReplicationConfig::default();
        let c = [
            candidate(1, true, true, Some((3, 10))),
            candidate(2, true, true, Some((4, 7))),
            candidate(3, true, true, Some((4, 7))),
        ];
        assert_eq!(
            QuorumPolicy.elect_leader(&c, &config),
            ElectionOutcome::Elected {
                leader: 3,
                unclean: false
            }
        );
        let c = [
            candidate(1, true, true, Some((3, 10))),
            candidate(2, false, true, Some((4, 7))),
            candidate(3, true, true, None),
        ];
        assert_eq!(
            QuorumPolicy.elect_leader(&c, &config),
            ElectionOutcome::NoEligibleLeader
        );
    }
}
