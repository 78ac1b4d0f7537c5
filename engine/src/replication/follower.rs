//! The follower side of one partition: after a leadership change it finds where its log
//! diverges from the new leader's with OffsetForLeaderEpoch (KIP-101, multi-round per
//! KIP-279) and truncates there, never blindly to its high watermark; then it fetches,
//! appends verbatim and follows the leader's high watermark. A fetch answer naming a
//! diverging epoch (KIP-595) sends it back through the same truncation rule.

use super::log::{EpochEndOffset, EpochLog};
use super::{BrokerId, LeaderEpoch, Offset, ReplicationError};

/// The next request a follower sends to its leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowerRequest {
    /// Ask where `leader_epoch` (our latest epoch) ends in the leader's log.
    OffsetForLeaderEpoch {
        /// The leader to ask.
        leader: BrokerId,
        /// Our idea of the current leader epoch (fences either side).
        current_leader_epoch: LeaderEpoch,
        /// The epoch whose end we want.
        leader_epoch: LeaderEpoch,
    },
    /// Fetch from `fetch_offset` (our log end offset).
    Fetch {
        /// The leader to fetch from.
        leader: BrokerId,
        /// Our idea of the current leader epoch.
        current_leader_epoch: LeaderEpoch,
        /// Our log end offset.
        fetch_offset: Offset,
        /// The epoch of our last record, for the leader's divergence check.
        last_fetched_epoch: Option<LeaderEpoch>,
    },
}

/// The replication part of a fetch answer (the records travel separately).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchResponseInfo {
    /// The leader's high watermark.
    pub high_watermark: Offset,
    /// Set when our log diverges from the leader's: truncate before appending anything.
    pub diverging_epoch: Option<EpochEndOffset>,
    /// The offset after the last record in the answer (the fetch offset when it has none).
    pub records_end_offset: Offset,
}

/// What the shell does with a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowerStep {
    /// The response belongs to an older request or epoch: drop it.
    Ignore,
    /// Retry the next request after a back-off (leader not ready, transient error).
    Backoff,
    /// The leader is in a newer epoch than ours: wait for the controller's record.
    AwaitMetadata,
    /// Truncate the log to this offset, then send the next request.
    Truncate(Offset),
    /// Delete the whole log and restart it empty at this offset (the leader's log start,
    /// above our log end), then fetch from there.
    StartAt(Offset),
    /// Append the answer's records verbatim; the high watermark becomes this.
    Append {
        /// The follower's new high watermark.
        high_watermark: Offset,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Truncating,
    Fetching,
    AwaitingLeader,
}

/// A follower's replication state for one partition in one leader epoch.
#[derive(Debug, Clone)]
pub struct FollowerState {
    leader: Option<BrokerId>,
    leader_epoch: LeaderEpoch,
    phase: Phase,
    high_watermark: Offset,
}

impl FollowerState {
    /// Starts following `leader` in `leader_epoch`; `high_watermark` is what this replica
    /// knew. A non-empty log starts by finding its divergence point.
    pub fn new(
        leader: Option<BrokerId>,
        leader_epoch: LeaderEpoch,
        high_watermark: Offset,
        log: &impl EpochLog,
    ) -> Self {
        let phase = match leader {
            None => Phase::AwaitingLeader,
            Some(_) if log.latest_epoch().is_some() => Phase::Truncating,
            Some(_) => Phase::Fetching,
        };
        FollowerState {
            leader,
            leader_epoch,
            phase,
            high_watermark: high_watermark.min(log.log_end_offset()),
        }
    }

    /// The leader being followed.
    pub fn leader(&self) -> Option<BrokerId> {
        self.leader
    }

    /// The leader epoch this follower is in.
    pub fn leader_epoch(&self) -> LeaderEpoch {
        self.leader_epoch
    }

    /// The high watermark learned from the leader.
    pub fn high_watermark(&self) -> Offset {
        self.high_watermark
    }

    /// True once truncation is done and the follower fetches.
    pub fn is_fetching(&self) -> bool {
        self.phase == Phase::Fetching
    }

    /// The request to send now (`None` while no leader is known or after being fenced).
    pub fn next_request(&mut self, log: &impl EpochLog) -> Option<FollowerRequest> {
        let leader = self.leader?;
        if self.phase == Phase::Truncating {
            match log.latest_epoch() {
                Some(epoch) => {
                    return Some(FollowerRequest::OffsetForLeaderEpoch {
                        leader,
                        current_leader_epoch: self.leader_epoch,
                        leader_epoch: epoch,
                    })
                }
                // Truncated down to nothing: nothing can diverge any more.
                None => self.phase = Phase::Fetching,
            }
        }
        match self.phase {
            Phase::Fetching => Some(FollowerRequest::Fetch {
                leader,
                current_leader_epoch: self.leader_epoch,
                fetch_offset: log.log_end_offset(),
                last_fetched_epoch: log.latest_epoch(),
            }),
            _ => None,
        }
    }

    /// The leader answered the OffsetForLeaderEpoch sent as `sent`.
    pub fn on_offset_for_leader_epoch_response(
        &mut self,
        sent: &FollowerRequest,
        response: Result<EpochEndOffset, ReplicationError>,
        log: &impl EpochLog,
    ) -> FollowerStep {
        let FollowerRequest::OffsetForLeaderEpoch {
            current_leader_epoch,
            leader_epoch,
            ..
        } = *sent
        else {
            return FollowerStep::Ignore;
        };
        if current_leader_epoch != self.leader_epoch
            || self.phase != Phase::Truncating
            || log.latest_epoch() != Some(leader_epoch)
        {
            return FollowerStep::Ignore;
        }
        match response {
            Ok(answer) => self.truncate_for(answer, log),
            Err(e) => self.on_error(e),
        }
    }

    /// The fetch offset of `sent` if it is the Fetch this follower is waiting on: same leader
    /// epoch, still fetching, and sent from the current log end (anything else is a stale
    /// answer to ignore).
    fn current_fetch(&self, sent: &FollowerRequest, log: &impl EpochLog) -> Option<Offset> {
        let FollowerRequest::Fetch {
            current_leader_epoch,
            fetch_offset,
            ..
        } = *sent
        else {
            return None;
        };
        (current_leader_epoch == self.leader_epoch
            && self.phase == Phase::Fetching
            && fetch_offset == log.log_end_offset())
        .then_some(fetch_offset)
    }

    /// The leader answered the Fetch sent as `sent`.
    pub fn on_fetch_response(
        &mut self,
        sent: &FollowerRequest,
        response: Result<FetchResponseInfo, ReplicationError>,
        log: &impl EpochLog,
    ) -> FollowerStep {
        let Some(fetch_offset) = self.current_fetch(sent, log) else {
            return FollowerStep::Ignore;
        };
        let info = match response {
            Ok(info) => info,
            Err(ReplicationError::OffsetOutOfRange { .. }) => {
                // Our log ends past the leader's: find the divergence point again.
                self.phase = Phase::Truncating;
                return FollowerStep::Backoff;
            }
            Err(e) => return self.on_error(e),
        };
        if let Some(answer) = info.diverging_epoch {
            self.phase = Phase::Truncating;
            return self.truncate_for(answer, log);
        }
        if info.records_end_offset < fetch_offset {
            return FollowerStep::Ignore;
        }
        let hw = info.high_watermark.min(info.records_end_offset);
        if hw > self.high_watermark {
            self.high_watermark = hw;
        }
        FollowerStep::Append {
            high_watermark: self.high_watermark,
        }
    }

    /// The leader refused the Fetch sent as `sent` with OFFSET_OUT_OF_RANGE and named its log
    /// start offset. When that start is above our fetch offset, the records we would fetch
    /// next were deleted on the leader (retention or DeleteRecords) while we were behind: as
    /// Kafka's fetcher does, the log restarts empty at the leader's start. Otherwise the
    /// answer is an ordinary out-of-range error ([`Self::on_fetch_response`]).
    pub fn on_fetch_out_of_range(
        &mut self,
        sent: &FollowerRequest,
        leader_log_start: Offset,
        log: &impl EpochLog,
    ) -> FollowerStep {
        let Some(fetch_offset) = self.current_fetch(sent, log) else {
            return FollowerStep::Ignore;
        };
        if leader_log_start <= fetch_offset {
            let error = ReplicationError::OffsetOutOfRange {
                offset: fetch_offset,
                log_end_offset: -1,
            };
            return self.on_fetch_response(sent, Err(error), log);
        }
        // Everything below the leader's start is committed there; the empty log ends at it.
        self.high_watermark = self.high_watermark.max(leader_log_start);
        FollowerStep::StartAt(leader_log_start)
    }

    /// KIP-279: compare the leader's answer with our own epoch cache.
    fn truncate_for(&mut self, answer: EpochEndOffset, log: &impl EpochLog) -> FollowerStep {
        let end = log.log_end_offset();
        let (to, done) = if answer.is_undefined() {
            // The leader cannot place our epoch (it has nothing that old): fall back to the
            // high watermark, the only offset known to be shared.
            (self.high_watermark.min(end), true)
        } else {
            match log.end_offset_for_epoch(answer.leader_epoch) {
                None => (answer.end_offset.min(end), true),
                Some((ours, our_end)) if ours == answer.leader_epoch => {
                    (answer.end_offset.min(our_end).min(end), true)
                }
                // We never had the leader's epoch: cut back to the end of our largest epoch
                // below it and ask again about that one.
                Some((_, our_end)) => (our_end.min(end), false),
            }
        };
        if to < self.high_watermark {
            tracing::warn!(
                truncate_to = to,
                high_watermark = self.high_watermark,
                "truncating below the high watermark: committed records are lost"
            );
            self.high_watermark = to;
        }
        self.phase = if done {
            Phase::Fetching
        } else {
            Phase::Truncating
        };
        FollowerStep::Truncate(to)
    }

    fn on_error(&mut self, error: ReplicationError) -> FollowerStep {
        match error {
            ReplicationError::FencedLeaderEpoch { .. } => {
                self.phase = Phase::AwaitingLeader;
                FollowerStep::AwaitMetadata
            }
            _ => FollowerStep::Backoff,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::log::MemoryLog;

    fn log_with(epochs: &[LeaderEpoch]) -> MemoryLog<u64> {
        let mut log = MemoryLog::new();
        for (i, e) in epochs.iter().enumerate() {
            log.append(*e, i as u64);
        }
        log
    }

    fn apply(log: &mut MemoryLog<u64>, step: FollowerStep) {
        if let FollowerStep::Truncate(to) = step {
            log.truncate_to(to);
        }
    }

    #[test]
    fn restarts_at_the_leader_log_start_when_behind_it() {
        let log = log_with(&[1, 1, 1]);
        let mut f = FollowerState::new(Some(2), 1, 3, &log);
        f.phase = Phase::Fetching;
        let sent = f.next_request(&log).expect("a fetch");
        // The leader deleted everything below 10: we restart there.
        assert_eq!(
            f.on_fetch_out_of_range(&sent, 10, &log),
            FollowerStep::StartAt(10)
        );
        assert_eq!(f.high_watermark(), 10);
        // A start at or below our fetch offset is the ordinary case: find the divergence.
        let mut g = FollowerState::new(Some(2), 1, 3, &log);
        g.phase = Phase::Fetching;
        let sent = g.next_request(&log).expect("a fetch");
        assert_eq!(
            g.on_fetch_out_of_range(&sent, 2, &log),
            FollowerStep::Backoff
        );
        assert!(!g.is_fetching());
        // An answer to an older epoch's request is dropped.
        let mut h = FollowerState::new(Some(2), 2, 3, &log);
        h.phase = Phase::Fetching;
        assert_eq!(
            h.on_fetch_out_of_range(&sent, 10, &log),
            FollowerStep::Ignore
        );
    }

    /// KIP-101's example: the follower truncates at the divergence point, not at its HW.
    #[test]
    fn truncates_at_divergence_not_high_watermark() {
        // Follower: [e1, e1, e2(uncommitted from deposed leader)], HW 1.
        let mut log = log_with(&[1, 1, 2]);
        let mut f = FollowerState::new(Some(3), 3, 1, &log);
        let req = f.next_request(&log);
        assert_eq!(
            req,
            Some(FollowerRequest::OffsetForLeaderEpoch {
                leader: 3,
                current_leader_epoch: 3,
                leader_epoch: 2
            })
        );
        // The new leader never had epoch 2: its epoch 1 ends at 2, epoch 3 starts there.
        let Some(req) = req else { return };
        let step = f.on_offset_for_leader_epoch_response(
            &req,
            Ok(EpochEndOffset {
                leader_epoch: 1,
                end_offset: 2,
            }),
            &log,
        );
        // Our epoch 1 ends at 2 as well: keep offsets 0 and 1 (above the HW of 1).
        assert_eq!(step, FollowerStep::Truncate(2));
        apply(&mut log, step);
        assert!(matches!(
            f.next_request(&log),
            Some(FollowerRequest::Fetch {
                fetch_offset: 2,
                ..
            })
        ));
    }

    #[test]
    fn multi_round_truncation_when_epochs_differ() {
        // Follower epochs 1,2,4; leader has 1,3 (epoch 1 ends at 3 on the leader).
        let mut log = log_with(&[1, 1, 2, 2, 4]);
        let mut f = FollowerState::new(Some(9), 5, 0, &log);
        let Some(req) = f.next_request(&log) else {
            panic!("expected a request")
        };
        // Leader answers for epoch 4: its largest epoch <= 4 is 3, ending at 6.
        let step = f.on_offset_for_leader_epoch_response(
            &req,
            Ok(EpochEndOffset {
                leader_epoch: 3,
                end_offset: 6,
            }),
            &log,
        );
        // Our largest epoch <= 3 is 2, ending at 4: cut there and ask again about epoch 2.
        assert_eq!(step, FollowerStep::Truncate(4));
        apply(&mut log, step);
        let Some(req) = f.next_request(&log) else {
            panic!("expected a request")
        };
        assert!(matches!(
            req,
            FollowerRequest::OffsetForLeaderEpoch {
                leader_epoch: 2,
                ..
            }
        ));
        let step = f.on_offset_for_leader_epoch_response(
            &req,
            Ok(EpochEndOffset {
                leader_epoch: 1,
                end_offset: 3,
            }),
            &log,
        );
        // Our epoch 1 ends at 2, the leader's at 3: keep 2 records.
        assert_eq!(step, FollowerStep::Truncate(2));
    }

    #[test]
    fn undefined_answer_falls_back_to_high_watermark() {
        let log = log_with(&[2, 2, 2, 2]);
        let mut f = FollowerState::new(Some(1), 5, 3, &log);
        let Some(req) = f.next_request(&log) else {
            panic!("expected a request")
        };
        let step = f.on_offset_for_leader_epoch_response(&req, Ok(EpochEndOffset::UNDEFINED), &log);
        assert_eq!(step, FollowerStep::Truncate(3));
        assert!(f.is_fetching());
    }

    #[test]
    fn stale_and_fenced_responses() {
        let log = log_with(&[]);
        let mut f = FollowerState::new(Some(1), 4, 0, &log);
        let Some(req) = f.next_request(&log) else {
            panic!("expected a fetch")
        };
        let older = FollowerRequest::Fetch {
            leader: 1,
            current_leader_epoch: 3,
            fetch_offset: 0,
            last_fetched_epoch: None,
        };
        let ok = FetchResponseInfo {
            high_watermark: 0,
            diverging_epoch: None,
            records_end_offset: 2,
        };
        assert_eq!(
            f.on_fetch_response(&older, Ok(ok), &log),
            FollowerStep::Ignore
        );
        assert_eq!(
            f.on_fetch_response(&req, Ok(ok), &log),
            FollowerStep::Append { high_watermark: 0 }
        );
        let fenced = Err(ReplicationError::FencedLeaderEpoch {
            request: 4,
            current: 5,
        });
        assert_eq!(
            f.on_fetch_response(&req, fenced, &log),
            FollowerStep::AwaitMetadata
        );
        assert_eq!(f.next_request(&log), None);
    }
}
