//! The time index (`.timeindex`): 12-byte entries of (max timestamp so far, offset - base).
//!
//! Sans-IO like the offset index. Entries are strictly increasing in timestamp and
//! non-decreasing in offset; a lookup gives the offset from which to scan for a timestamp.

use super::offset_index::IndexError;

/// Bytes per entry.
pub const ENTRY_SIZE: usize = 12;

/// In-memory time index of one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeIndex {
    base_offset: i64,
    entries: Vec<(i64, u32)>,
    max_entries: usize,
}

impl TimeIndex {
    /// An empty time index for the segment starting at `base_offset`.
    pub fn new(base_offset: i64, max_entries: usize) -> Self {
        TimeIndex {
            base_offset,
            entries: Vec::new(),
            max_entries: max_entries.max(1),
        }
    }

    /// Decodes file bytes; `next_offset` bounds the offsets entries may name.
    pub fn decode(base_offset: i64, bytes: &[u8], max_entries: usize) -> Result<Self, IndexError> {
        if !bytes.chunks_exact(ENTRY_SIZE).remainder().is_empty() {
            return Err(IndexError::BadLength(bytes.len()));
        }
        let mut idx = TimeIndex::new(base_offset, max_entries);
        for (i, c) in bytes.chunks_exact(ENTRY_SIZE).enumerate() {
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&c[..8]);
            let ts = i64::from_be_bytes(ts);
            let rel = u32::from_be_bytes([c[8], c[9], c[10], c[11]]);
            if let Some(&(lt, lr)) = idx.entries.last() {
                if ts <= lt || rel < lr {
                    return Err(IndexError::NotMonotonic(i));
                }
            }
            idx.entries.push((ts, rel));
        }
        // More than `max_entries` is legal: forced entries at roll/close may exceed it.
        Ok(idx)
    }

    /// Encodes all entries in file format.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_from(0)
    }

    /// Encodes entries `start..` in file format (they belong at byte `start * ENTRY_SIZE`).
    pub fn encode_from(&self, start: usize) -> Vec<u8> {
        let tail = self.entries.get(start..).unwrap_or_default();
        let mut out = Vec::with_capacity(tail.len() * ENTRY_SIZE);
        for &(ts, rel) in tail {
            out.extend_from_slice(&ts.to_be_bytes());
            out.extend_from_slice(&rel.to_be_bytes());
        }
        out
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether no more entries fit.
    pub fn is_full(&self) -> bool {
        self.entries.len() >= self.max_entries
    }

    /// Entry `i` as (timestamp, absolute offset).
    pub fn entry(&self, i: usize) -> Option<(i64, i64)> {
        self.entries
            .get(i)
            .map(|&(ts, rel)| (ts, self.base_offset + i64::from(rel)))
    }

    /// The last entry.
    pub fn last(&self) -> Option<(i64, i64)> {
        self.len().checked_sub(1).and_then(|i| self.entry(i))
    }

    /// Appends (timestamp, offset) if the timestamp is larger than the last entry's, as Kafka's
    /// `maybeAppend` does. `force` allows the entry even when the index is full (used when the
    /// segment rolls, so the largest timestamp is always indexed).
    pub fn maybe_append(&mut self, timestamp: i64, offset: i64, force: bool) {
        // As Kafka's (whose last entry starts as (-1, base)): "no timestamp" is never indexed.
        if timestamp < 0 {
            return;
        }
        let rel = offset - self.base_offset;
        let Ok(rel) = u32::try_from(rel) else { return };
        if self.is_full() && !force {
            return;
        }
        if let Some(&(lt, lr)) = self.entries.last() {
            if timestamp <= lt || rel < lr {
                return;
            }
        }
        self.entries.push((timestamp, rel));
    }

    /// The entry with the largest timestamp <= `target`, as (timestamp, offset).
    pub fn lookup(&self, target: i64) -> Option<(i64, i64)> {
        let n = self.entries.partition_point(|&(ts, _)| ts <= target);
        n.checked_sub(1).and_then(|i| self.entry(i))
    }

    /// Drops entries naming offsets >= `offset` (log truncation).
    pub fn truncate_to_offset(&mut self, offset: i64) {
        let rel = offset - self.base_offset;
        if rel <= 0 {
            self.entries.clear();
            return;
        }
        let rel = u32::try_from(rel).unwrap_or(u32::MAX);
        let n = self.entries.partition_point(|&(_, r)| r < rel);
        self.entries.truncate(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_append_lookup_truncate() {
        let mut t = TimeIndex::new(50, 3);
        t.maybe_append(-1, 51, true); // no timestamp: never indexed, even when forced
        assert!(t.is_empty());
        t.maybe_append(1000, 55, false);
        t.maybe_append(1000, 60, false); // same timestamp: skipped
        t.maybe_append(900, 61, false); // older: skipped
        t.maybe_append(2000, 70, false);
        assert_eq!(t.len(), 2);
        assert_eq!(t.lookup(999), None);
        assert_eq!(t.lookup(1500), Some((1000, 55)));
        assert_eq!(t.lookup(5000), Some((2000, 70)));
        t.maybe_append(3000, 80, false);
        t.maybe_append(4000, 90, false);
        assert_eq!(t.len(), 3);
        t.maybe_append(4000, 90, true);
        t.maybe_append(4001, 91, true);
        assert_eq!(t.len(), 5);
        let d = TimeIndex::decode(50, &t.encode(), 3).unwrap();
        assert_eq!(d, t);
        t.truncate_to_offset(70);
        assert_eq!(t.last(), Some((1000, 55)));
        t.truncate_to_offset(50);
        assert!(t.is_empty());
    }

    #[test]
    fn rejects_non_monotonic_files() {
        let mut b = Vec::new();
        for (ts, rel) in [(5i64, 1u32), (4, 2)] {
            b.extend_from_slice(&ts.to_be_bytes());
            b.extend_from_slice(&rel.to_be_bytes());
        }
        assert_eq!(
            TimeIndex::decode(0, &b, 10),
            Err(IndexError::NotMonotonic(1))
        );
        assert_eq!(
            TimeIndex::decode(0, &b[..5], 10),
            Err(IndexError::BadLength(5))
        );
    }
}
