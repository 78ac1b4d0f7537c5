//! The leader-epoch cache: (epoch, start offset) pairs, as Kafka's `LeaderEpochFileCache`.
//!
//! Sans-IO; the log persists `encode()` to `leader-epoch-checkpoint` (Kafka's text format:
//! version line `0`, entry count, then `epoch startOffset` per line).

/// One epoch and the first offset written in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    /// Leader epoch.
    pub epoch: i32,
    /// First offset appended in that epoch.
    pub start_offset: i64,
}

/// The cache of epoch start offsets, strictly increasing in both fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderEpochCache {
    entries: Vec<EpochEntry>,
}

impl LeaderEpochCache {
    /// An empty cache.
    pub fn new() -> Self {
        LeaderEpochCache::default()
    }

    /// All entries, oldest first.
    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    /// The newest epoch.
    pub fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|e| e.epoch)
    }

    /// Records that `epoch` starts at `start_offset`. Returns whether the cache changed.
    /// Entries that conflict (epoch >= new epoch or start >= new start) are removed first,
    /// as Kafka does, so the cache stays strictly monotonic.
    pub fn assign(&mut self, epoch: i32, start_offset: i64) -> bool {
        if epoch < 0 || start_offset < 0 {
            return false;
        }
        if let Some(last) = self.entries.last() {
            if last.epoch == epoch && last.start_offset <= start_offset {
                return false;
            }
            if last.epoch > epoch && last.start_offset <= start_offset {
                // An older epoch than the latest is appended after it (a stale leader's batch
                // copied by a follower); Kafka ignores it with a warning.
                tracing::warn!(
                    epoch,
                    start_offset,
                    latest = last.epoch,
                    "ignoring older leader epoch"
                );
                return false;
            }
        }
        self.entries
            .retain(|e| e.epoch < epoch && e.start_offset < start_offset);
        self.entries.push(EpochEntry {
            epoch,
            start_offset,
        });
        true
    }

    /// Kafka's OffsetForLeaderEpoch answer: the end offset of `epoch` given the log end offset,
    /// as (epoch, end offset); `None` is Kafka's (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET).
    pub fn end_offset_for(&self, epoch: i32, log_end_offset: i64) -> Option<(i32, i64)> {
        let latest = self.entries.last()?;
        if epoch == latest.epoch {
            return Some((epoch, log_end_offset));
        }
        let higher = self.entries.iter().find(|e| e.epoch > epoch)?;
        match self.entries.iter().rev().find(|e| e.epoch <= epoch) {
            Some(floor) => Some((floor.epoch, higher.start_offset)),
            None => Some((epoch, higher.start_offset)),
        }
    }

    /// Removes entries starting at or after `end_offset` (log truncated to `end_offset`).
    pub fn truncate_from_end(&mut self, end_offset: i64) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| e.start_offset < end_offset);
        before != self.entries.len()
    }

    /// Log start moved to `start_offset`: entries before it are dropped, except the latest of
    /// them, which is moved to start at `start_offset`.
    pub fn truncate_from_start(&mut self, start_offset: i64) -> bool {
        let n = self
            .entries
            .partition_point(|e| e.start_offset < start_offset);
        if n == 0 {
            return false;
        }
        let mut kept = self.entries[n - 1];
        let changed = kept.start_offset != start_offset || n > 1;
        kept.start_offset = start_offset;
        self.entries.drain(..n);
        if self
            .entries
            .first()
            .is_some_and(|e| e.start_offset == start_offset)
        {
            return true;
        }
        self.entries.insert(0, kept);
        changed
    }

    /// Removes everything.
    pub fn clear(&mut self) -> bool {
        let changed = !self.entries.is_empty();
        self.entries.clear();
        changed
    }

    /// Checkpoint file contents.
    pub fn encode(&self) -> Vec<u8> {
        let mut s = format!("0\n{}\n", self.entries.len());
        for e in &self.entries {
            s.push_str(&format!("{} {}\n", e.epoch, e.start_offset));
        }
        s.into_bytes()
    }

    /// Parses checkpoint file contents; `None` if malformed.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut lines = text.lines();
        if lines.next()?.trim() != "0" {
            return None;
        }
        let n: usize = lines.next()?.trim().parse().ok()?;
        let mut cache = LeaderEpochCache::new();
        for _ in 0..n {
            let mut parts = lines.next()?.split_whitespace();
            let epoch: i32 = parts.next()?.parse().ok()?;
            let start_offset: i64 = parts.next()?.parse().ok()?;
            if let Some(last) = cache.entries.last() {
                if epoch <= last.epoch || start_offset < last.start_offset {
                    return None;
                }
            }
            cache.entries.push(EpochEntry {
                epoch,
                start_offset,
            });
        }
        Some(cache)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(pairs: &[(i32, i64)]) -> LeaderEpochCache {
        let mut c = LeaderEpochCache::new();
        for &(e, o) in pairs {
            assert!(c.assign(e, o));
        }
        c
    }

    #[test]
    fn end_offset_for_epoch_matches_kafka() {
        let c = cache(&[(1, 0), (3, 10), (5, 20)]);
        assert_eq!(c.end_offset_for(5, 30), Some((5, 30)));
        assert_eq!(c.end_offset_for(3, 30), Some((3, 20)));
        assert_eq!(c.end_offset_for(4, 30), Some((3, 20)));
        assert_eq!(c.end_offset_for(1, 30), Some((1, 10)));
        assert_eq!(c.end_offset_for(0, 30), Some((0, 0)));
        assert_eq!(c.end_offset_for(6, 30), None);
        assert_eq!(LeaderEpochCache::new().end_offset_for(0, 0), None);
    }

    #[test]
    fn assign_and_truncate() {
        let mut c = cache(&[(1, 0), (3, 10)]);
        assert!(!c.assign(3, 15));
        assert!(!c.assign(2, 15));
        assert!(c.truncate_from_end(10));
        assert_eq!(c.latest_epoch(), Some(1));
        assert!(c.assign(4, 12));
        assert!(c.truncate_from_start(5));
        assert_eq!(
            c.entries(),
            &[
                EpochEntry {
                    epoch: 1,
                    start_offset: 5
                },
                EpochEntry {
                    epoch: 4,
                    start_offset: 12
                }
            ]
        );
        assert!(c.truncate_from_start(12));
        assert_eq!(
            c.entries(),
            &[EpochEntry {
                epoch: 4,
                start_offset: 12
            }]
        );
        // A conflicting assignment at a lower offset replaces later entries.
        let mut c = cache(&[(1, 0), (3, 10)]);
        assert!(c.assign(4, 5));
        assert_eq!(
            c.entries(),
            &[
                EpochEntry {
                    epoch: 1,
                    start_offset: 0
                },
                EpochEntry {
                    epoch: 4,
                    start_offset: 5
                }
            ]
        );
    }

    #[test]
    fn checkpoint_roundtrip_and_garbage() {
        let c = cache(&[(1, 0), (3, 10)]);
        assert_eq!(LeaderEpochCache::decode(&c.encode()), Some(c));
        assert_eq!(LeaderEpochCache::decode(b"0\n2\n1 0\n"), None);
        assert_eq!(LeaderEpochCache::decode(b"1\n0\n"), None);
        assert_eq!(LeaderEpochCache::decode(b"0\n2\n3 0\n1 5\n"), None);
        assert_eq!(LeaderEpochCache::decode(&[0xff, 0xfe]), None);
    }
}
