//! The leader side of one partition: tracks each follower's log end offset and last
//! caught-up time, places the high watermark through the policy, completes acks=all
//! waiters, and proposes ISR changes to the controller (AlterPartition). It never touches
//! the log; it reads it through [`EpochLog`] and reports what to do as [`LeaderAction`]s.

use std::collections::VecDeque;

use super::control::{AlterPartitionRequest, PartitionState};
use super::log::{EpochEndOffset, EpochLog};
use super::policy::{CommitView, ReplicaProgress, ReplicationPolicy};
use super::{
    BrokerId, LeaderEpoch, Millis, Offset, ReplicationConfig, ReplicationError, ReplicationMode,
};

/// An acks=all produce waiting for its records to commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProduceWaiter {
    /// The shell's handle for the request.
    pub id: u64,
    /// The offset of the first record of the write (returned to the client).
    pub base_offset: Offset,
    /// The log end offset right after the write: it commits once the HW reaches this.
    pub required_offset: Offset,
    /// When the write fails with REQUEST_TIMED_OUT if not committed.
    pub deadline: Millis,
}

/// What the shell must do after feeding the leader an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaderAction {
    /// The high watermark moved forward: consumers may read up to here; checkpoint it.
    HighWatermark(Offset),
    /// Answer an acks=all produce: its base offset, or the error.
    CompleteProduce {
        /// The waiter's id.
        id: u64,
        /// Base offset on success.
        result: Result<Offset, ReplicationError>,
    },
    /// Send this ISR change to the controller.
    AlterPartition(AlterPartitionRequest),
}

/// A follower's fetch as the leader sees it (the replication fields of a Fetch request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowerFetch {
    /// The fetching replica (Fetch `replica_id`).
    pub replica_id: BrokerId,
    /// Where the follower's log ends: everything below is on its log.
    pub fetch_offset: Offset,
    /// The follower's idea of the current leader epoch (`None`: not sent, not checked).
    pub current_leader_epoch: Option<LeaderEpoch>,
    /// The epoch of the follower's last record (KIP-595 `last_fetched_epoch`).
    pub last_fetched_epoch: Option<LeaderEpoch>,
}

/// The leader's answer to a follower fetch, minus the record bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchDecision {
    /// The leader's high watermark after counting this fetch.
    pub high_watermark: Offset,
    /// The leader's log end offset.
    pub log_end_offset: Offset,
    /// Set when the follower's log diverges: it must truncate before fetching (KIP-595).
    pub diverging_epoch: Option<EpochEndOffset>,
    /// Records to send start here (only meaningful when `diverging_epoch` is `None`).
    pub read_from: Offset,
}

#[derive(Debug, Clone)]
struct FollowerProgress {
    broker_id: BrokerId,
    log_end_offset: Option<Offset>,
    last_caught_up_ms: Millis,
    last_fetch_ms: Millis,
    last_fetch_leader_log_end_offset: Offset,
    /// The follower's log start offset, as its last fetch reported it (`None`: not yet).
    log_start_offset: Option<Offset>,
}

#[derive(Debug, Clone)]
struct PendingIsr {
    request: AlterPartitionRequest,
    sent_ms: Millis,
    /// The controller refused it for a stale epoch: stop resending, keep counting the
    /// maximal ISR until a newer record arrives (the proposal may have raced a commit).
    awaiting_metadata: bool,
}

/// The leader's state for one partition in one leader epoch.
#[derive(Debug)]
pub struct LeaderState<P> {
    broker_id: BrokerId,
    policy: P,
    config: ReplicationConfig,
    leader_epoch: LeaderEpoch,
    epoch_start_offset: Offset,
    partition_epoch: i32,
    replicas: Vec<BrokerId>,
    isr: Vec<BrokerId>,
    pending_isr: Option<PendingIsr>,
    followers: Vec<FollowerProgress>,
    log_end_offset: Offset,
    high_watermark: Offset,
    waiters: VecDeque<ProduceWaiter>,
    actions: VecDeque<LeaderAction>,
    /// When this leadership began (followers' contact is counted from here at the latest).
    started_ms: Millis,
}

impl<P: ReplicationPolicy> LeaderState<P> {
    /// Starts leading `state.leader_epoch` with the local log ending at `log_end_offset` and
    /// the high watermark this replica already knew.
    pub fn new(
        broker_id: BrokerId,
        policy: P,
        config: ReplicationConfig,
        state: &PartitionState,
        log_end_offset: Offset,
        high_watermark: Offset,
        now: Millis,
    ) -> Self {
        assert!(
            high_watermark <= log_end_offset,
            "high watermark {high_watermark} above log end offset {log_end_offset}"
        );
        let followers = state
            .replicas
            .iter()
            .filter(|&&r| r != broker_id)
            .map(|&r| FollowerProgress {
                broker_id: r,
                log_end_offset: None,
                // ISR members get a full lag window to show up in the new epoch (as Kafka).
                last_caught_up_ms: if state.isr.contains(&r) { now } else { 0 },
                last_fetch_ms: 0,
                last_fetch_leader_log_end_offset: 0,
                log_start_offset: None,
            })
            .collect();
        let mut leader = LeaderState {
            broker_id,
            policy,
            config,
            leader_epoch: state.leader_epoch,
            epoch_start_offset: log_end_offset,
            partition_epoch: state.partition_epoch,
            replicas: state.replicas.clone(),
            isr: state.isr.clone(),
            pending_isr: None,
            followers,
            log_end_offset,
            high_watermark,
            waiters: VecDeque::new(),
            actions: VecDeque::new(),
            started_ms: now,
        };
        leader.maybe_advance_high_watermark(now);
        leader
    }

    /// The epoch this leader leads.
    pub fn leader_epoch(&self) -> LeaderEpoch {
        self.leader_epoch
    }

    /// The current high watermark.
    pub fn high_watermark(&self) -> Offset {
        self.high_watermark
    }

    /// The local log end offset as last reported.
    pub fn log_end_offset(&self) -> Offset {
        self.log_end_offset
    }

    /// Where this epoch's records start.
    pub fn epoch_start_offset(&self) -> Offset {
        self.epoch_start_offset
    }

    /// The committed ISR.
    pub fn isr(&self) -> &[BrokerId] {
        &self.isr
    }

    /// The partition epoch of the record this leader last applied.
    pub fn partition_epoch(&self) -> i32 {
        self.partition_epoch
    }

    /// The ISR counted for commits: committed members plus pending additions.
    pub fn maximal_isr(&self) -> Vec<BrokerId> {
        let mut isr = self.isr.clone();
        if let Some(p) = &self.pending_isr {
            for &b in &p.request.new_isr {
                if !isr.contains(&b) {
                    isr.push(b);
                }
            }
        }
        isr
    }

    /// The policy deciding for this partition.
    pub fn policy(&self) -> &P {
        &self.policy
    }

    /// acks=all writes waiting for the commit point.
    pub fn pending_produces(&self) -> usize {
        self.waiters.len()
    }

    /// Quorum mode: whether a majority of the replicas (this leader included) fetched within
    /// `replica.lag.time.max.ms` (a new leader counts its first window from taking office).
    /// Without that contact the leader cannot commit, and the majority on the other side of a
    /// network partition may have elected a new leader already, so it stops serving clients
    /// (Raft's check-quorum). Always true in isr mode, where the controller session decides.
    pub fn has_majority_contact(&self, now: Millis) -> bool {
        if self.policy.mode() != ReplicationMode::Quorum {
            return true;
        }
        let window = self.config.replica_lag_time_max_ms;
        let reached = 1 + self
            .followers
            .iter()
            .filter(|f| now.saturating_sub(f.last_fetch_ms.max(self.started_ms)) <= window)
            .count();
        reached * 2 > self.replicas.len()
    }

    /// A follower's fetch reported its log start offset (the Fetch request's
    /// `log_start_offset`; followers move theirs to the leader's, which they learn from fetch
    /// answers). Ignored for a replica that is not a follower of this partition.
    pub fn on_follower_log_start(&mut self, replica_id: BrokerId, log_start_offset: Offset) {
        if log_start_offset < 0 {
            return;
        }
        if let Some(f) = self
            .followers
            .iter_mut()
            .find(|f| f.broker_id == replica_id)
        {
            // A log start never moves back, except when a follower's log is replaced
            // wholesale; the follower's own report is the truth either way.
            f.log_start_offset = Some(log_start_offset);
        }
    }

    /// Kafka's low watermark for DeleteRecords: the smallest log start offset among the
    /// in-sync replicas, `leader_log_start` being the leader's own. An in-sync follower that
    /// has not reported one yet counts as -1 (unknown), so a DeleteRecords waits for it.
    pub fn low_watermark(&self, leader_log_start: Offset) -> Offset {
        let low = self
            .followers
            .iter()
            .filter(|f| self.isr.contains(&f.broker_id))
            .map(|f| f.log_start_offset.unwrap_or(-1))
            .fold(leader_log_start, Offset::min);
        debug_assert!(low <= leader_log_start);
        low
    }

    /// Fails every waiting acks=all write with `error` (a leader that knows it is cut off:
    /// its clients should retry elsewhere now rather than at their request timeout).
    pub fn fail_waiters(&mut self, error: &ReplicationError) {
        for w in self.waiters.drain(..) {
            self.actions.push_back(LeaderAction::CompleteProduce {
                id: w.id,
                result: Err(error.clone()),
            });
        }
        debug_assert!(self.waiters.is_empty());
    }

    /// The next action for the shell, oldest first.
    pub fn poll_action(&mut self) -> Option<LeaderAction> {
        self.actions.pop_front()
    }

    /// Checks a request's `current_leader_epoch` against this leader's epoch.
    pub fn validate_leader_epoch(
        &self,
        request_epoch: Option<LeaderEpoch>,
    ) -> Result<(), ReplicationError> {
        validate_epoch(request_epoch, self.leader_epoch)
    }

    /// Admission of a produce before its records are appended.
    pub fn check_produce(&self, acks_all: bool, now: Millis) -> Result<(), ReplicationError> {
        if !acks_all {
            return Ok(());
        }
        let progress = self.progress(now);
        self.policy
            .check_acks_all(&self.view(&progress), &self.config)
    }

    /// The local log now ends at `log_end_offset`; `waiter` is the acks=all write just
    /// appended, if any.
    pub fn on_append(
        &mut self,
        log_end_offset: Offset,
        waiter: Option<ProduceWaiter>,
        now: Millis,
    ) {
        assert!(
            log_end_offset >= self.log_end_offset,
            "leader log went backwards: {} -> {log_end_offset}",
            self.log_end_offset
        );
        self.log_end_offset = log_end_offset;
        if let Some(w) = waiter {
            debug_assert!(w.required_offset <= log_end_offset);
            // Concurrent appends may finish out of order in a shell; keep the queue sorted by
            // the offset each waiter needs, so commits complete them front to back.
            let at = self
                .waiters
                .partition_point(|b| b.required_offset <= w.required_offset);
            self.waiters.insert(at, w);
        }
        self.maybe_advance_high_watermark(now);
    }

    /// A follower fetched: validate its epoch and log position, record its progress, and say
    /// what to send back.
    pub fn on_follower_fetch(
        &mut self,
        fetch: &FollowerFetch,
        log: &impl EpochLog,
        now: Millis,
    ) -> Result<FetchDecision, ReplicationError> {
        self.validate_leader_epoch(fetch.current_leader_epoch)?;
        debug_assert_eq!(log.log_end_offset(), self.log_end_offset);
        let Some(index) = self
            .followers
            .iter()
            .position(|f| f.broker_id == fetch.replica_id)
        else {
            return Err(ReplicationError::NotLeaderOrFollower);
        };
        if fetch.fetch_offset < 0 || fetch.fetch_offset > self.log_end_offset {
            return Err(ReplicationError::OffsetOutOfRange {
                offset: fetch.fetch_offset,
                log_end_offset: self.log_end_offset,
            });
        }
        // KIP-595: the follower's last record must be where our log has the same epoch;
        // otherwise it holds records we never had and must truncate first.
        // A fetch without `last_fetched_epoch` (versions < 12) is not checked, as in Kafka.
        if let Some(epoch) = fetch.last_fetched_epoch.filter(|_| fetch.fetch_offset > 0) {
            let ours = log.epoch_end_offset(epoch);
            if ours.is_undefined()
                || ours.leader_epoch < epoch
                || ours.end_offset < fetch.fetch_offset
            {
                return Ok(FetchDecision {
                    high_watermark: self.high_watermark,
                    log_end_offset: self.log_end_offset,
                    diverging_epoch: Some(ours),
                    read_from: fetch.fetch_offset,
                });
            }
        }
        let leader_end = self.log_end_offset;
        let follower = &mut self.followers[index];
        if fetch.fetch_offset >= leader_end {
            follower.last_caught_up_ms = follower.last_caught_up_ms.max(now);
        } else if fetch.fetch_offset >= follower.last_fetch_leader_log_end_offset {
            follower.last_caught_up_ms = follower.last_caught_up_ms.max(follower.last_fetch_ms);
        }
        follower.last_fetch_leader_log_end_offset = leader_end;
        follower.last_fetch_ms = now;
        follower.log_end_offset = Some(fetch.fetch_offset);
        self.maybe_expand_isr(fetch.replica_id, fetch.fetch_offset, now);
        self.maybe_advance_high_watermark(now);
        Ok(FetchDecision {
            high_watermark: self.high_watermark,
            log_end_offset: self.log_end_offset,
            diverging_epoch: None,
            read_from: fetch.fetch_offset,
        })
    }

    /// Answers OffsetForLeaderEpoch for a follower that asks where `requested_epoch` ends.
    pub fn offset_for_leader_epoch(
        &self,
        current_leader_epoch: Option<LeaderEpoch>,
        requested_epoch: LeaderEpoch,
        log: &impl EpochLog,
    ) -> Result<EpochEndOffset, ReplicationError> {
        self.validate_leader_epoch(current_leader_epoch)?;
        Ok(log.epoch_end_offset(requested_epoch))
    }

    /// How far a consumer may read: up to the high watermark.
    pub fn consumer_fetch_limit(
        &self,
        current_leader_epoch: Option<LeaderEpoch>,
    ) -> Result<Offset, ReplicationError> {
        self.validate_leader_epoch(current_leader_epoch)?;
        Ok(self.high_watermark)
    }

    /// Timer: expire acks=all waiters, shrink the ISR of lagging followers, retry an
    /// unanswered AlterPartition.
    pub fn on_tick(&mut self, now: Millis) {
        while let Some(pos) = self.waiters.iter().position(|w| w.deadline <= now) {
            if let Some(w) = self.waiters.remove(pos) {
                self.actions.push_back(LeaderAction::CompleteProduce {
                    id: w.id,
                    result: Err(ReplicationError::RequestTimedOut),
                });
            }
        }
        match &mut self.pending_isr {
            Some(p) => {
                if !p.awaiting_metadata
                    && now.saturating_sub(p.sent_ms) >= self.config.alter_partition_retry_ms
                {
                    p.sent_ms = now;
                    self.actions
                        .push_back(LeaderAction::AlterPartition(p.request.clone()));
                }
            }
            None => self.maybe_shrink_isr(now),
        }
        self.maybe_advance_high_watermark(now);
    }

    /// The controller committed a newer record for this epoch (ISR change).
    pub fn on_partition_state(&mut self, state: &PartitionState, now: Millis) {
        if state.leader_epoch != self.leader_epoch || state.partition_epoch <= self.partition_epoch
        {
            return;
        }
        self.partition_epoch = state.partition_epoch;
        self.isr = state.isr.clone();
        self.pending_isr = None;
        tracing::debug!(isr = ?self.isr, partition_epoch = self.partition_epoch, "leader applied ISR");
        self.maybe_advance_high_watermark(now);
    }

    /// The controller answered `request`, an AlterPartition we sent. An answer to an older
    /// proposal than the pending one is only used for the record it carries.
    pub fn on_alter_partition_response(
        &mut self,
        request: &AlterPartitionRequest,
        response: Result<PartitionState, ReplicationError>,
        now: Millis,
    ) {
        let current = self
            .pending_isr
            .as_ref()
            .is_some_and(|p| p.request == *request);
        if !current {
            if let Ok(state) = response {
                self.on_partition_state(&state, now);
            }
            return;
        }
        match response {
            Ok(state) => self.on_partition_state(&state, now),
            // The controller's record moved on (another change, a new epoch): whether or not
            // our proposal is part of it, only the new record tells. Until it arrives the
            // maximal ISR stays counted, so the leader cannot commit on a set the controller
            // never had (Kafka keeps its pending state on these errors too).
            Err(
                e @ (ReplicationError::InvalidUpdateVersion { .. }
                | ReplicationError::FencedLeaderEpoch { .. }
                | ReplicationError::UnknownLeaderEpoch { .. }
                | ReplicationError::NotLeaderOrFollower),
            ) => {
                tracing::debug!(error = %e, "AlterPartition refused; awaiting a newer record");
                if let Some(p) = &mut self.pending_isr {
                    p.awaiting_metadata = true;
                }
            }
            Err(e) => {
                // Refused outright (an ineligible member): the committed ISR stands.
                tracing::debug!(error = %e, "AlterPartition rejected");
                self.pending_isr = None;
            }
        }
    }

    /// Replaces the replication settings (a topic config change); they apply from the next
    /// decision on.
    pub fn set_config(&mut self, config: ReplicationConfig) {
        self.config = config;
    }

    /// This replica stops leading: every waiting acks=all write fails with
    /// NOT_LEADER_OR_FOLLOWER (the client retries against the new leader).
    pub fn resign(&mut self) -> Vec<LeaderAction> {
        let mut out: Vec<LeaderAction> = self.actions.drain(..).collect();
        out.extend(
            self.waiters
                .drain(..)
                .map(|w| LeaderAction::CompleteProduce {
                    id: w.id,
                    result: Err(ReplicationError::NotLeaderOrFollower),
                }),
        );
        out
    }

    fn progress(&self, now: Millis) -> Vec<ReplicaProgress> {
        let maximal = self.maximal_isr();
        self.replicas
            .iter()
            .map(|&r| {
                if r == self.broker_id {
                    return ReplicaProgress {
                        broker_id: r,
                        log_end_offset: Some(self.log_end_offset),
                        in_isr: true,
                        in_maximal_isr: true,
                        caught_up: true,
                    };
                }
                let f = self.followers.iter().find(|f| f.broker_id == r);
                ReplicaProgress {
                    broker_id: r,
                    log_end_offset: f.and_then(|f| f.log_end_offset),
                    in_isr: self.isr.contains(&r),
                    in_maximal_isr: maximal.contains(&r),
                    caught_up: f.is_some_and(|f| {
                        f.log_end_offset.is_some()
                            && now.saturating_sub(f.last_caught_up_ms)
                                <= self.config.replica_lag_time_max_ms
                    }),
                }
            })
            .collect()
    }

    fn view<'a>(&self, progress: &'a [ReplicaProgress]) -> CommitView<'a> {
        CommitView {
            leader_id: self.broker_id,
            leader_epoch: self.leader_epoch,
            epoch_start_offset: self.epoch_start_offset,
            high_watermark: self.high_watermark,
            replicas: progress,
        }
    }

    fn maybe_advance_high_watermark(&mut self, now: Millis) {
        let progress = self.progress(now);
        let view = self.view(&progress);
        let candidate = self.policy.high_watermark(&view).min(self.log_end_offset);
        if candidate > self.high_watermark {
            self.high_watermark = candidate;
            self.actions
                .push_back(LeaderAction::HighWatermark(candidate));
        }
        debug_assert!(self.high_watermark <= self.log_end_offset);
        if self
            .waiters
            .front()
            .is_some_and(|w| w.required_offset <= self.high_watermark)
        {
            let progress = self.progress(now);
            let verdict = self
                .policy
                .check_committed(&self.view(&progress), &self.config);
            while let Some(w) = self.waiters.front().copied() {
                if w.required_offset > self.high_watermark {
                    break;
                }
                self.waiters.pop_front();
                self.actions.push_back(LeaderAction::CompleteProduce {
                    id: w.id,
                    result: verdict.clone().map(|()| w.base_offset),
                });
            }
        }
    }

    fn propose_isr(&mut self, new_isr: Vec<BrokerId>, now: Millis) {
        let request = AlterPartitionRequest {
            broker_id: self.broker_id,
            leader_epoch: self.leader_epoch,
            partition_epoch: self.partition_epoch,
            new_isr,
        };
        tracing::debug!(?request, "proposing ISR change");
        self.actions
            .push_back(LeaderAction::AlterPartition(request.clone()));
        self.pending_isr = Some(PendingIsr {
            request,
            sent_ms: now,
            awaiting_metadata: false,
        });
    }

    fn maybe_expand_isr(&mut self, replica: BrokerId, follower_end: Offset, now: Millis) {
        if self.pending_isr.is_some() || self.isr.contains(&replica) {
            return;
        }
        if self
            .policy
            .may_join_isr(follower_end, self.high_watermark, self.epoch_start_offset)
        {
            let mut new_isr = self.isr.clone();
            new_isr.push(replica);
            self.propose_isr(new_isr, now);
        }
    }

    fn maybe_shrink_isr(&mut self, now: Millis) {
        let lagging: Vec<BrokerId> = self
            .followers
            .iter()
            .filter(|f| self.isr.contains(&f.broker_id))
            .filter(|f| {
                self.policy
                    .should_leave_isr(f.last_caught_up_ms, now, &self.config)
            })
            .map(|f| f.broker_id)
            .collect();
        if lagging.is_empty() {
            return;
        }
        let new_isr: Vec<BrokerId> = self
            .isr
            .iter()
            .copied()
            .filter(|b| !lagging.contains(b))
            .collect();
        self.propose_isr(new_isr, now);
    }
}

/// Kafka's epoch check: older -> FENCED_LEADER_EPOCH, newer -> UNKNOWN_LEADER_EPOCH.
pub(crate) fn validate_epoch(
    request_epoch: Option<LeaderEpoch>,
    current: LeaderEpoch,
) -> Result<(), ReplicationError> {
    match request_epoch {
        Some(request) if request < current => {
            Err(ReplicationError::FencedLeaderEpoch { request, current })
        }
        Some(request) if request > current => {
            Err(ReplicationError::UnknownLeaderEpoch { request, current })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::log::MemoryLog;
    use crate::replication::policy::{IsrPolicy, QuorumPolicy};

    fn state(isr: &[BrokerId]) -> PartitionState {
        PartitionState {
            leader: Some(1),
            leader_epoch: 2,
            partition_epoch: 5,
            replicas: vec![1, 2, 3],
            isr: isr.to_vec(),
        }
    }

    fn config() -> ReplicationConfig {
        ReplicationConfig {
            min_insync_replicas: 2,
            replica_lag_time_max_ms: 100,
            unclean_leader_election_enable: false,
            alter_partition_retry_ms: 50,
        }
    }

    fn log(n: usize, epoch: LeaderEpoch) -> MemoryLog<u64> {
        let mut log = MemoryLog::new();
        for i in 0..n {
            log.append(epoch, i as u64);
        }
        log
    }

    fn fetch(replica: BrokerId, offset: Offset) -> FollowerFetch {
        FollowerFetch {
            replica_id: replica,
            fetch_offset: offset,
            current_leader_epoch: Some(2),
            last_fetched_epoch: (offset > 0).then_some(2),
        }
    }

    fn drain<P: ReplicationPolicy>(l: &mut LeaderState<P>) -> Vec<LeaderAction> {
        std::iter::from_fn(|| l.poll_action()).collect()
    }

    #[test]
    fn low_watermark_is_the_smallest_in_sync_log_start() {
        let mut l = LeaderState::new(1, IsrPolicy, config(), &state(&[1, 2]), 10, 10, 0);
        // Follower 2 is in sync but has not reported: unknown.
        assert_eq!(l.low_watermark(5), -1);
        l.on_follower_log_start(2, 3);
        assert_eq!(l.low_watermark(5), 3);
        l.on_follower_log_start(2, 7);
        assert_eq!(l.low_watermark(5), 5);
        // Follower 3 is out of the ISR: it does not hold the low watermark back.
        l.on_follower_log_start(3, 0);
        assert_eq!(l.low_watermark(5), 5);
        // Unknown brokers and -1 reports change nothing.
        l.on_follower_log_start(9, 0);
        l.on_follower_log_start(2, -1);
        assert_eq!(l.low_watermark(8), 7);
    }

    #[test]
    fn quorum_leader_without_majority_contact_stops_and_fails_waiters() {
        let log = log(2, 2);
        let mut l = LeaderState::new(1, QuorumPolicy, config(), &state(&[1, 2, 3]), 2, 0, 1_000);
        // A new leader gets one lag window from taking office.
        assert!(l.has_majority_contact(1_100));
        assert!(!l.has_majority_contact(1_101));
        // One follower's fetch is a majority of three with the leader.
        l.on_follower_fetch(&fetch(2, 2), &log, 1_050)
            .map(|_| ())
            .ok();
        assert!(l.has_majority_contact(1_150));
        assert!(!l.has_majority_contact(1_151));
        l.on_append(
            3,
            Some(ProduceWaiter {
                id: 9,
                base_offset: 2,
                required_offset: 3,
                deadline: 5_000,
            }),
            1_151,
        );
        drain(&mut l);
        l.fail_waiters(&ReplicationError::NotLeaderOrFollower);
        assert_eq!(
            drain(&mut l),
            vec![LeaderAction::CompleteProduce {
                id: 9,
                result: Err(ReplicationError::NotLeaderOrFollower)
            }]
        );
        assert_eq!(l.pending_produces(), 0);
        // isr mode leaves this to the controller session.
        let isr = LeaderState::new(1, IsrPolicy, config(), &state(&[1, 2, 3]), 2, 0, 0);
        assert!(isr.has_majority_contact(1_000_000));
    }

    #[test]
    fn isr_waiter_completes_when_every_isr_member_has_it() {
        let mut l = LeaderState::new(1, IsrPolicy, config(), &state(&[1, 2, 3]), 0, 0, 0);
        let log = log(4, 2);
        l.on_append(
            4,
            Some(ProduceWaiter {
                id: 7,
                base_offset: 0,
                required_offset: 4,
                deadline: 1_000,
            }),
            1,
        );
        assert!(drain(&mut l).is_empty());
        l.on_follower_fetch(&fetch(2, 4), &log, 2).map(|_| ()).ok();
        assert!(drain(&mut l).is_empty(), "broker 3 has not fetched");
        let d = l.on_follower_fetch(&fetch(3, 4), &log, 3);
        assert_eq!(d.map(|d| d.high_watermark), Ok(4));
        let actions = drain(&mut l);
        assert!(actions.contains(&LeaderAction::HighWatermark(4)));
        assert!(actions.contains(&LeaderAction::CompleteProduce {
            id: 7,
            result: Ok(0)
        }));
    }

    #[test]
    fn quorum_commits_on_majority_and_ignores_slowest() {
        let mut l = LeaderState::new(1, QuorumPolicy, config(), &state(&[1, 2, 3]), 0, 0, 0);
        let log = log(4, 2);
        l.on_append(4, None, 1);
        l.on_follower_fetch(&fetch(2, 4), &log, 2).map(|_| ()).ok();
        assert_eq!(l.high_watermark(), 4);
    }

    #[test]
    fn lagging_follower_is_proposed_out_of_isr_and_commit_resumes() {
        let mut l = LeaderState::new(1, IsrPolicy, config(), &state(&[1, 2, 3]), 0, 0, 0);
        let log = log(4, 2);
        l.on_append(4, None, 1);
        l.on_follower_fetch(&fetch(2, 4), &log, 10).map(|_| ()).ok();
        l.on_tick(50);
        assert_eq!(l.high_watermark(), 0);
        l.on_follower_fetch(&fetch(2, 4), &log, 150)
            .map(|_| ())
            .ok();
        l.on_tick(150);
        let actions = drain(&mut l);
        let Some(LeaderAction::AlterPartition(req)) = actions
            .iter()
            .find(|a| matches!(a, LeaderAction::AlterPartition(_)))
            .cloned()
        else {
            panic!("expected an ISR shrink proposal, got {actions:?}");
        };
        assert_eq!(req.new_isr, vec![1, 2]);
        // Until the controller commits, broker 3 still counts.
        assert_eq!(l.high_watermark(), 0);
        // A late refusal of some older proposal does not touch the pending one.
        let older = AlterPartitionRequest {
            partition_epoch: 4,
            ..req.clone()
        };
        l.on_alter_partition_response(
            &older,
            Err(ReplicationError::InvalidUpdateVersion {
                request: 4,
                current: 5,
            }),
            150,
        );
        l.on_tick(150 + 50);
        assert!(
            drain(&mut l).contains(&LeaderAction::AlterPartition(req.clone())),
            "the pending proposal must still be retried"
        );
        let mut committed = state(&[1, 2]);
        committed.partition_epoch = 6;
        l.on_alter_partition_response(&req, Ok(committed), 201);
        assert_eq!(l.high_watermark(), 4);
    }

    #[test]
    fn stale_epochs_are_fenced_and_divergence_is_reported() {
        let mut l = LeaderState::new(1, IsrPolicy, config(), &state(&[1, 2, 3]), 3, 0, 0);
        let log = log(3, 2);
        let stale = FollowerFetch {
            current_leader_epoch: Some(1),
            ..fetch(2, 0)
        };
        assert_eq!(
            l.on_follower_fetch(&stale, &log, 1).map_err(|e| e.code()),
            Err(74)
        );
        let future = FollowerFetch {
            current_leader_epoch: Some(3),
            ..fetch(2, 0)
        };
        assert_eq!(
            l.on_follower_fetch(&future, &log, 1).map_err(|e| e.code()),
            Err(75)
        );
        // The follower claims records of epoch 1 up to offset 3; we have only epoch 2 there.
        let diverged = FollowerFetch {
            last_fetched_epoch: Some(1),
            ..fetch(2, 3)
        };
        let d = l.on_follower_fetch(&diverged, &log, 1);
        assert_eq!(
            d.map(|d| d.diverging_epoch),
            Ok(Some(EpochEndOffset {
                leader_epoch: 1,
                end_offset: 0
            }))
        );
    }

    #[test]
    fn min_insync_refuses_acks_all_and_resign_fails_waiters() {
        let l = LeaderState::new(1, IsrPolicy, config(), &state(&[1]), 0, 0, 0);
        assert_eq!(l.check_produce(true, 0).map_err(|e| e.code()), Err(19));
        assert!(l.check_produce(false, 0).is_ok());
        let mut l = LeaderState::new(1, IsrPolicy, config(), &state(&[1, 2]), 0, 0, 0);
        l.on_append(
            1,
            Some(ProduceWaiter {
                id: 1,
                base_offset: 0,
                required_offset: 1,
                deadline: 10,
            }),
            0,
        );
        let out = l.resign();
        assert_eq!(
            out,
            vec![LeaderAction::CompleteProduce {
                id: 1,
                result: Err(ReplicationError::NotLeaderOrFollower)
            }]
        );
    }

    #[test]
    fn waiter_times_out() {
        let mut l = LeaderState::new(1, IsrPolicy, config(), &state(&[1, 2]), 0, 0, 0);
        l.on_append(
            1,
            Some(ProduceWaiter {
                id: 9,
                base_offset: 0,
                required_offset: 1,
                deadline: 10,
            }),
            0,
        );
        l.on_tick(10);
        assert!(drain(&mut l).contains(&LeaderAction::CompleteProduce {
            id: 9,
            result: Err(ReplicationError::RequestTimedOut)
        }));
    }
}
