//! The sparse offset index (`.index`): 8-byte entries of (offset - base offset, file position).
//!
//! Sans-IO: entries live in memory (the lookup structure); the segment writes each new entry
//! to its preallocated file (`encode_from`) and the whole, trimmed index (`encode()`) when it
//! rolls, closes, truncates or is recovered. Entry offsets are batch last offsets and entry positions are batch
//! start positions, so every entry points at a batch boundary.

use thiserror::Error;

/// Bytes per entry.
pub const ENTRY_SIZE: usize = 8;

/// Why index bytes cannot be trusted (the segment then rebuilds its index from the log).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IndexError {
    /// File length is not a multiple of the entry size.
    #[error("index length {0} is not a multiple of the entry size")]
    BadLength(usize),
    /// Entries are not strictly increasing.
    #[error("entry {0} is not greater than the previous one")]
    NotMonotonic(usize),
    /// An entry points past the end of the log.
    #[error("entry {index} points at position {position} beyond log size {log_size}")]
    PastEnd {
        /// Entry number.
        index: usize,
        /// Its position.
        position: u64,
        /// Size of the log file.
        log_size: u64,
    },
    /// More entries than the configured maximum.
    #[error("{0} entries exceed the index capacity")]
    TooManyEntries(usize),
}

/// In-memory sparse offset index of one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetIndex {
    base_offset: i64,
    entries: Vec<(u32, u32)>,
    max_entries: usize,
}

impl OffsetIndex {
    /// An empty index for the segment starting at `base_offset`.
    pub fn new(base_offset: i64, max_entries: usize) -> Self {
        OffsetIndex {
            base_offset,
            entries: Vec::new(),
            max_entries: max_entries.max(1),
        }
    }

    /// Decodes index file bytes, checking monotonicity and that positions lie inside the log.
    pub fn decode(
        base_offset: i64,
        bytes: &[u8],
        max_entries: usize,
        log_size: u64,
    ) -> Result<Self, IndexError> {
        if !bytes.chunks_exact(ENTRY_SIZE).remainder().is_empty() {
            return Err(IndexError::BadLength(bytes.len()));
        }
        let mut idx = OffsetIndex::new(base_offset, max_entries);
        for (i, c) in bytes.chunks_exact(ENTRY_SIZE).enumerate() {
            let rel = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
            let pos = u32::from_be_bytes([c[4], c[5], c[6], c[7]]);
            if let Some(&(lr, lp)) = idx.entries.last() {
                if rel <= lr || pos <= lp {
                    return Err(IndexError::NotMonotonic(i));
                }
            }
            if u64::from(pos) >= log_size {
                return Err(IndexError::PastEnd {
                    index: i,
                    position: u64::from(pos),
                    log_size,
                });
            }
            idx.entries.push((rel, pos));
        }
        if idx.entries.len() > idx.max_entries {
            return Err(IndexError::TooManyEntries(idx.entries.len()));
        }
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
        for &(rel, pos) in tail {
            out.extend_from_slice(&rel.to_be_bytes());
            out.extend_from_slice(&pos.to_be_bytes());
        }
        out
    }

    /// Base offset of the segment.
    pub fn base_offset(&self) -> i64 {
        self.base_offset
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether no more entries fit (the segment must roll).
    pub fn is_full(&self) -> bool {
        self.entries.len() >= self.max_entries
    }

    /// Entry `i` as (absolute offset, position).
    pub fn entry(&self, i: usize) -> Option<(i64, u32)> {
        self.entries
            .get(i)
            .map(|&(rel, pos)| (self.base_offset + i64::from(rel), pos))
    }

    /// The last entry.
    pub fn last(&self) -> Option<(i64, u32)> {
        self.len().checked_sub(1).and_then(|i| self.entry(i))
    }

    /// Adds an entry for the batch whose last offset is `offset`, starting at `position`.
    /// Ignored when full or not greater than the last entry.
    pub fn append(&mut self, offset: i64, position: u32) {
        let rel = offset - self.base_offset;
        debug_assert!((0..=i64::from(u32::MAX)).contains(&rel));
        let Ok(rel) = u32::try_from(rel) else { return };
        if self.is_full() {
            return;
        }
        if let Some(&(lr, lp)) = self.entries.last() {
            if rel <= lr || position <= lp {
                return;
            }
        }
        self.entries.push((rel, position));
    }

    /// The largest entry with offset <= `target`, as (offset, position).
    pub fn lookup(&self, target: i64) -> Option<(i64, u32)> {
        let rel = target - self.base_offset;
        if rel < 0 {
            return None;
        }
        let rel = u32::try_from(rel).unwrap_or(u32::MAX);
        let n = self.entries.partition_point(|&(r, _)| r <= rel);
        n.checked_sub(1).and_then(|i| self.entry(i))
    }

    /// The largest entry with position <= `position`.
    pub fn lookup_position(&self, position: u32) -> Option<(i64, u32)> {
        let n = self.entries.partition_point(|&(_, p)| p <= position);
        n.checked_sub(1).and_then(|i| self.entry(i))
    }

    /// Drops entries for batches at or after `position` (log truncation).
    pub fn truncate_to_position(&mut self, position: u32) {
        let n = self.entries.partition_point(|&(_, p)| p < position);
        self.entries.truncate(n);
    }

    /// Removes every entry.
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_boundaries() {
        let mut idx = OffsetIndex::new(100, 4);
        assert_eq!(idx.lookup(100), None);
        idx.append(109, 0);
        idx.append(119, 4096);
        idx.append(129, 8192);
        assert_eq!(idx.lookup(99), None);
        assert_eq!(idx.lookup(108), None);
        assert_eq!(idx.lookup(109), Some((109, 0)));
        assert_eq!(idx.lookup(118), Some((109, 0)));
        assert_eq!(idx.lookup(119), Some((119, 4096)));
        assert_eq!(idx.lookup(i64::MAX), Some((129, 8192)));
        idx.append(129, 9000); // not increasing: ignored
        assert_eq!(idx.len(), 3);
        idx.append(139, 12288);
        assert!(idx.is_full());
        idx.append(149, 16384);
        assert_eq!(idx.len(), 4);
        assert_eq!(idx.lookup_position(5000), Some((119, 4096)));
    }

    #[test]
    fn encode_decode_and_sanity() {
        let mut idx = OffsetIndex::new(0, 100);
        idx.append(3, 0);
        idx.append(10, 500);
        let bytes = idx.encode();
        assert_eq!(bytes.len(), 16);
        assert_eq!(OffsetIndex::decode(0, &bytes, 100, 1000).unwrap(), idx);
        assert!(matches!(
            OffsetIndex::decode(0, &bytes, 100, 500),
            Err(IndexError::PastEnd { .. })
        ));
        assert!(matches!(
            OffsetIndex::decode(0, &bytes[..9], 100, 1000),
            Err(IndexError::BadLength(9))
        ));
        let mut bad = bytes.clone();
        bad.extend_from_slice(&[0; 8]);
        assert!(matches!(
            OffsetIndex::decode(0, &bad, 100, 1000),
            Err(IndexError::NotMonotonic(2))
        ));
        assert!(matches!(
            OffsetIndex::decode(0, &bytes, 1, 1000),
            Err(IndexError::TooManyEntries(2))
        ));
    }

    #[test]
    fn truncate() {
        let mut idx = OffsetIndex::new(0, 100);
        idx.append(3, 0);
        idx.append(10, 500);
        idx.append(20, 900);
        idx.truncate_to_position(500);
        assert_eq!(idx.len(), 1);
        idx.truncate_to_position(0);
        assert!(idx.is_empty());
    }
}
