//! The view of a partition log the replication core needs, and an in-memory log.
//!
//! The core never writes a log itself: it reads a few facts through [`EpochLog`] (log end
//! offset, the leader-epoch cache) and tells its shell to truncate or append. The storage
//! engine's partition log implements [`EpochLog`] for the broker; [`MemoryLog`] implements it
//! for tests and the deterministic simulator.

use super::{LeaderEpoch, Offset, ReplicationError, UNDEFINED_EPOCH, UNDEFINED_OFFSET};

/// An OffsetForLeaderEpoch answer: the largest epoch <= the requested one and where it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEndOffset {
    /// The largest epoch the log knows that is <= the requested epoch.
    pub leader_epoch: LeaderEpoch,
    /// The first offset after that epoch (the next epoch's start, or the log end offset).
    pub end_offset: Offset,
}

impl EpochEndOffset {
    /// The answer for an epoch the log cannot place (`UNDEFINED_EPOCH`, `UNDEFINED_EPOCH_OFFSET`).
    pub const UNDEFINED: EpochEndOffset = EpochEndOffset {
        leader_epoch: UNDEFINED_EPOCH,
        end_offset: UNDEFINED_OFFSET,
    };

    /// True when the log could not place the requested epoch.
    pub fn is_undefined(&self) -> bool {
        self.end_offset == UNDEFINED_OFFSET
    }
}

/// Read-only facts about a partition log that replication decisions depend on.
pub trait EpochLog {
    /// The offset the next appended record gets.
    fn log_end_offset(&self) -> Offset;
    /// The epoch of the newest leader-epoch cache entry, if any.
    fn latest_epoch(&self) -> Option<LeaderEpoch>;
    /// Kafka's `LeaderEpochFileCache.endOffsetFor`: the largest epoch <= `epoch` and its end
    /// offset; `None` when `epoch` is newer than every cached epoch (or the cache is empty).
    fn end_offset_for_epoch(&self, epoch: LeaderEpoch) -> Option<(LeaderEpoch, Offset)>;

    /// [`EpochLog::end_offset_for_epoch`] as a protocol answer.
    fn epoch_end_offset(&self, epoch: LeaderEpoch) -> EpochEndOffset {
        match self.end_offset_for_epoch(epoch) {
            Some((leader_epoch, end_offset)) => EpochEndOffset {
                leader_epoch,
                end_offset,
            },
            None => EpochEndOffset::UNDEFINED,
        }
    }
}

/// Computes `endOffsetFor` over a leader-epoch cache of `(epoch, start offset)` entries sorted
/// by epoch, shared by every [`EpochLog`] that keeps its cache as such a slice.
pub fn end_offset_for_epoch_in(
    cache: &[(LeaderEpoch, Offset)],
    log_end_offset: Offset,
    epoch: LeaderEpoch,
) -> Option<(LeaderEpoch, Offset)> {
    if epoch == UNDEFINED_EPOCH {
        return None;
    }
    let latest = cache.last()?;
    if latest.0 == epoch {
        return Some((epoch, log_end_offset));
    }
    // The first entry with an epoch above the requested one starts where the answer ends.
    let higher = cache.partition_point(|&(e, _)| e <= epoch);
    let (_, higher_start) = *cache.get(higher)?;
    if higher == 0 {
        // Older than anything cached: Kafka answers the requested epoch ending at the first
        // cached start offset, so a follower truncates to where the leader's history begins.
        return Some((epoch, higher_start));
    }
    let (floor_epoch, _) = cache[higher - 1];
    Some((floor_epoch, higher_start))
}

/// An in-memory partition log of `(leader epoch, value)` records with a leader-epoch cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryLog<T> {
    records: Vec<(LeaderEpoch, T)>,
    epochs: Vec<(LeaderEpoch, Offset)>,
}

impl<T: Clone> MemoryLog<T> {
    /// An empty log.
    pub fn new() -> Self {
        MemoryLog {
            records: Vec::new(),
            epochs: Vec::new(),
        }
    }

    /// Leader append: stamps `epoch` on the record and returns its offset.
    pub fn append(&mut self, epoch: LeaderEpoch, value: T) -> Offset {
        let offset = self.log_end_offset();
        self.note_epoch(epoch, offset);
        self.records.push((epoch, value));
        offset
    }

    /// Follower append: records copied verbatim from the leader, epochs included. Records
    /// whose epoch goes backwards are refused whole (a leader never sends them).
    pub fn append_follower(
        &mut self,
        records: &[(LeaderEpoch, T)],
    ) -> Result<(), ReplicationError> {
        let mut latest = self.latest_epoch().unwrap_or(UNDEFINED_EPOCH);
        for &(epoch, _) in records {
            if epoch < latest {
                return Err(ReplicationError::EpochRegression { epoch, latest });
            }
            latest = epoch;
        }
        for (epoch, value) in records {
            let offset = self.log_end_offset();
            self.note_epoch(*epoch, offset);
            self.records.push((*epoch, value.clone()));
        }
        Ok(())
    }

    /// A new leader records where its epoch starts even before it appends anything (as
    /// Kafka's `maybeAssignEpochStartOffset` on becoming leader), so OffsetForLeaderEpoch
    /// answers end older epochs at the right place.
    pub fn assign_epoch_start(&mut self, epoch: LeaderEpoch, start_offset: Offset) {
        self.note_epoch(epoch, start_offset);
    }

    /// Removes every record at or above `offset` and the epoch entries starting there.
    pub fn truncate_to(&mut self, offset: Offset) {
        let keep = usize::try_from(offset.max(0)).unwrap_or(0);
        if keep < self.records.len() {
            self.records.truncate(keep);
        }
        self.epochs.retain(|&(_, start)| start < offset);
    }

    /// The record at `offset`.
    pub fn get(&self, offset: Offset) -> Option<&(LeaderEpoch, T)> {
        usize::try_from(offset)
            .ok()
            .and_then(|i| self.records.get(i))
    }

    /// Up to `max` records from `offset` (empty when `offset` is at or past the end).
    pub fn read(&self, offset: Offset, max: usize) -> &[(LeaderEpoch, T)] {
        let start = usize::try_from(offset.max(0))
            .unwrap_or(usize::MAX)
            .min(self.records.len());
        let end = start.saturating_add(max).min(self.records.len());
        &self.records[start..end]
    }

    /// All records, oldest first.
    pub fn records(&self) -> &[(LeaderEpoch, T)] {
        &self.records
    }

    /// The leader-epoch cache: `(epoch, start offset)` sorted by epoch.
    pub fn epoch_cache(&self) -> &[(LeaderEpoch, Offset)] {
        &self.epochs
    }

    fn note_epoch(&mut self, epoch: LeaderEpoch, start_offset: Offset) {
        match self.epochs.last() {
            Some(&(last, _)) if last >= epoch => {
                // Epochs never go backwards in one log; a stale stamp would corrupt the cache.
                assert!(
                    last == epoch,
                    "record epoch {epoch} older than cached epoch {last}"
                );
            }
            _ => self.epochs.push((epoch, start_offset)),
        }
    }
}

impl<T> EpochLog for MemoryLog<T> {
    fn log_end_offset(&self) -> Offset {
        self.records.len() as Offset
    }

    fn latest_epoch(&self) -> Option<LeaderEpoch> {
        self.epochs.last().map(|&(e, _)| e)
    }

    fn end_offset_for_epoch(&self, epoch: LeaderEpoch) -> Option<(LeaderEpoch, Offset)> {
        end_offset_for_epoch_in(&self.epochs, self.records.len() as Offset, epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_with(epochs: &[LeaderEpoch]) -> MemoryLog<u64> {
        let mut log = MemoryLog::new();
        for (i, e) in epochs.iter().enumerate() {
            log.append(*e, i as u64);
        }
        log
    }

    #[test]
    fn end_offset_for_epoch_follows_kafka() {
        // offsets 0..2 epoch 1, 2..5 epoch 3, 5..6 epoch 4
        let log = log_with(&[1, 1, 3, 3, 3, 4]);
        assert_eq!(log.end_offset_for_epoch(4), Some((4, 6)));
        assert_eq!(log.end_offset_for_epoch(3), Some((3, 5)));
        assert_eq!(log.end_offset_for_epoch(2), Some((1, 2)));
        assert_eq!(log.end_offset_for_epoch(1), Some((1, 2)));
        assert_eq!(log.end_offset_for_epoch(0), Some((0, 0)));
        assert_eq!(log.end_offset_for_epoch(5), None);
        assert_eq!(log.end_offset_for_epoch(UNDEFINED_EPOCH), None);
        assert_eq!(log.latest_epoch(), Some(4));
    }

    #[test]
    fn truncation_drops_epochs_that_start_above() {
        let mut log = log_with(&[1, 1, 3, 3, 3, 4]);
        log.truncate_to(3);
        assert_eq!(log.log_end_offset(), 3);
        assert_eq!(log.epoch_cache(), &[(1, 0), (3, 2)]);
        log.truncate_to(2);
        assert_eq!(log.epoch_cache(), &[(1, 0)]);
        assert_eq!(log.end_offset_for_epoch(3), None);
    }

    #[test]
    fn assigned_epoch_without_records_ends_older_epochs() {
        let mut log = log_with(&[1, 1]);
        log.assign_epoch_start(5, 2);
        assert_eq!(log.end_offset_for_epoch(3), Some((1, 2)));
        assert_eq!(log.end_offset_for_epoch(5), Some((5, 2)));
        log.append(5, 9);
        assert_eq!(log.epoch_cache(), &[(1, 0), (5, 2)]);
    }

    #[test]
    fn follower_append_refuses_epoch_regression() {
        let mut log = log_with(&[1, 3]);
        assert!(log.append_follower(&[(3, 7), (2, 8)]).is_err());
        assert_eq!(log.log_end_offset(), 2);
        assert!(log.append_follower(&[(3, 7), (4, 8)]).is_ok());
        assert_eq!(log.epoch_cache(), &[(1, 0), (3, 1), (4, 3)]);
    }

    /// The answer computed straight from the records' epochs, without the cache.
    fn brute_force(
        epochs: &[LeaderEpoch],
        requested: LeaderEpoch,
    ) -> Option<(LeaderEpoch, Offset)> {
        let latest = *epochs.last()?;
        if requested == UNDEFINED_EPOCH || requested > latest {
            return None;
        }
        let end_of =
            |e: LeaderEpoch| epochs.iter().position(|&x| x > e).unwrap_or(epochs.len()) as Offset;
        match epochs.iter().copied().filter(|&e| e <= requested).max() {
            Some(floor) => Some((floor, end_of(floor))),
            None => Some((requested, 0)),
        }
    }

    proptest::proptest! {
        #[test]
        fn end_offset_for_epoch_matches_brute_force(
            steps in proptest::collection::vec(0i32..3, 0..40),
            requested in -1i32..20,
        ) {
            // Non-decreasing epochs with gaps, as leaders hand them out.
            let mut epoch = 0;
            let epochs: Vec<LeaderEpoch> = steps.iter().map(|s| { epoch += s; epoch }).collect();
            let log = log_with(&epochs);
            proptest::prop_assert_eq!(log.end_offset_for_epoch(requested), brute_force(&epochs, requested));
        }
    }

    #[test]
    fn read_is_bounded() {
        let log = log_with(&[1, 1, 1]);
        assert_eq!(log.read(1, 10).len(), 2);
        assert_eq!(log.read(3, 10).len(), 0);
        assert_eq!(log.read(99, 10).len(), 0);
        assert_eq!(log.read(-4, 1).len(), 1);
    }
}
