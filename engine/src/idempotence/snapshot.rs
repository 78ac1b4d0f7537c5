//! Producer-state snapshots: the [`ProducerStateTable`] of a partition as bytes, written by
//! the shell beside the segments as `<20-digit offset>.snapshot` (the offset is the table's
//! end offset, as Kafka names its snapshots).
//!
//! Layout (big-endian), version 1:
//!
//! ```text
//! version u16 | crc32c u32 (of every byte after it) | end_offset i64 | count u32 |
//! count x { producer_id i64 | epoch i16 | last_timestamp i64 | batches u8 |
//!           batches x { first_seq i32 | last_seq i32 | first_offset i64 | last_offset i64 | timestamp i64 } }
//! ```
//!
//! Unlike Kafka's snapshot, which keeps only each producer's last batch, all five retained
//! batches are stored, so retries that straddle a restart are still recognised as duplicates.

use std::collections::{BTreeMap, VecDeque};

use bytes::{Buf, BufMut};

use super::state::{BatchMetadata, ProducerEntry, ProducerStateTable, NUM_BATCHES_TO_RETAIN};

/// Current snapshot format version.
pub const SNAPSHOT_VERSION: u16 = 1;
/// File name suffix of snapshots.
pub const SNAPSHOT_SUFFIX: &str = ".snapshot";

const HEADER_LEN: usize = 2 + 4;
const ENTRY_FIXED_LEN: usize = 8 + 2 + 8 + 1;
const BATCH_LEN: usize = 4 + 4 + 8 + 8 + 8;

/// Why a snapshot could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// Ended early.
    #[error("producer snapshot truncated")]
    Truncated,
    /// Unknown format version.
    #[error("producer snapshot version {0} is not supported")]
    UnsupportedVersion(u16),
    /// Checksum mismatch.
    #[error("producer snapshot CRC mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Crc {
        /// CRC in the file.
        stored: u32,
        /// CRC of the content.
        computed: u32,
    },
    /// Structurally impossible content.
    #[error("producer snapshot is invalid: {0}")]
    Invalid(&'static str),
}

/// `00000000000000001234.snapshot` for offset 1234.
pub fn snapshot_file_name(offset: i64) -> String {
    format!("{offset:020}{SNAPSHOT_SUFFIX}")
}

/// The offset of a snapshot file name, None if the name is not one.
pub fn parse_snapshot_file_name(name: &str) -> Option<i64> {
    let digits = name.strip_suffix(SNAPSHOT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl ProducerStateTable {
    /// Serialises the table (see the module docs for the layout).
    pub fn to_snapshot(&self) -> Vec<u8> {
        let mut body = Vec::new();
        body.put_i64(self.end_offset());
        body.put_u32(self.len() as u32);
        for e in self.producers() {
            debug_assert!(e.batches.len() <= NUM_BATCHES_TO_RETAIN);
            body.put_i64(e.producer_id);
            body.put_i16(e.epoch);
            body.put_i64(e.last_timestamp_ms);
            body.put_u8(e.batches.len() as u8);
            for b in &e.batches {
                body.put_i32(b.first_seq);
                body.put_i32(b.last_seq);
                body.put_i64(b.first_offset);
                body.put_i64(b.last_offset);
                body.put_i64(b.timestamp_ms);
            }
        }
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.put_u16(SNAPSHOT_VERSION);
        out.put_u32(crc32c::crc32c(&body));
        out.extend_from_slice(&body);
        out
    }

    /// Reads a snapshot; any corruption is an error, never a panic.
    pub fn from_snapshot(bytes: &[u8], expiration_ms: i64) -> Result<Self, SnapshotError> {
        if bytes.len() < HEADER_LEN {
            return Err(SnapshotError::Truncated);
        }
        let mut b = bytes;
        let version = b.get_u16();
        if version != SNAPSHOT_VERSION {
            return Err(SnapshotError::UnsupportedVersion(version));
        }
        let stored = b.get_u32();
        let computed = crc32c::crc32c(b);
        if stored != computed {
            return Err(SnapshotError::Crc { stored, computed });
        }
        if b.remaining() < 12 {
            return Err(SnapshotError::Truncated);
        }
        let end_offset = b.get_i64();
        let count = b.get_u32() as usize;
        if count > b.remaining() / ENTRY_FIXED_LEN {
            return Err(SnapshotError::Truncated);
        }
        let mut producers = BTreeMap::new();
        for _ in 0..count {
            if b.remaining() < ENTRY_FIXED_LEN {
                return Err(SnapshotError::Truncated);
            }
            let producer_id = b.get_i64();
            let epoch = b.get_i16();
            let last_timestamp_ms = b.get_i64();
            let n = b.get_u8() as usize;
            if n > NUM_BATCHES_TO_RETAIN {
                return Err(SnapshotError::Invalid("more batches than Kafka retains"));
            }
            if b.remaining() < n * BATCH_LEN {
                return Err(SnapshotError::Truncated);
            }
            let mut batches = VecDeque::with_capacity(n);
            for _ in 0..n {
                let meta = BatchMetadata {
                    first_seq: b.get_i32(),
                    last_seq: b.get_i32(),
                    first_offset: b.get_i64(),
                    last_offset: b.get_i64(),
                    timestamp_ms: b.get_i64(),
                };
                if meta.last_offset < meta.first_offset || meta.last_offset >= end_offset {
                    return Err(SnapshotError::Invalid("batch offsets out of range"));
                }
                batches.push_back(meta);
            }
            let entry = ProducerEntry::new(producer_id, epoch, batches, last_timestamp_ms);
            if producers.insert(producer_id, entry).is_some() {
                return Err(SnapshotError::Invalid("duplicate producer id"));
            }
        }
        if b.has_remaining() {
            return Err(SnapshotError::Invalid("trailing bytes"));
        }
        Ok(ProducerStateTable::from_parts(
            producers,
            end_offset,
            expiration_ms,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::state::*;
    use super::*;
    use proptest::prelude::*;

    fn sample() -> ProducerStateTable {
        let mut t = ProducerStateTable::new(DEFAULT_PRODUCER_ID_EXPIRATION_MS);
        let mut offset = 0;
        for i in 0..7 {
            for pid in [3i64, 11, 42] {
                let h = BatchHeader {
                    producer_id: pid,
                    producer_epoch: 2,
                    base_sequence: i * 2,
                    last_offset_delta: 1,
                    max_timestamp_ms: 1_000 + i as i64,
                };
                let CheckOutcome::Append(ticket) = t.check(&h).unwrap() else {
                    panic!()
                };
                t.update(ticket, offset).unwrap();
                offset += 2;
            }
        }
        t
    }

    #[test]
    fn round_trip() {
        let t = sample();
        let bytes = t.to_snapshot();
        let back =
            ProducerStateTable::from_snapshot(&bytes, DEFAULT_PRODUCER_ID_EXPIRATION_MS).unwrap();
        assert_eq!(back.end_offset(), t.end_offset());
        assert_eq!(back.len(), 3);
        for (a, b) in t.producers().zip(back.producers()) {
            assert_eq!(
                (a.producer_id, a.epoch, &a.batches, a.last_timestamp_ms),
                (b.producer_id, b.epoch, &b.batches, b.last_timestamp_ms)
            );
        }
        assert_eq!(back.entry(3).unwrap().batches.len(), NUM_BATCHES_TO_RETAIN);
        // A retry of a batch from before the restart is still a duplicate.
        let retry = BatchHeader {
            producer_id: 42,
            producer_epoch: 2,
            base_sequence: 8,
            last_offset_delta: 1,
            max_timestamp_ms: 0,
        };
        assert!(
            matches!(back.check(&retry), Ok(CheckOutcome::Duplicate(m)) if m.first_offset == 2 * (4 * 3 + 2))
        );
        let empty = ProducerStateTable::new(1);
        assert_eq!(
            ProducerStateTable::from_snapshot(&empty.to_snapshot(), 1)
                .unwrap()
                .len(),
            0
        );
    }

    #[test]
    fn corruption_is_detected() {
        let bytes = sample().to_snapshot();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(
                ProducerStateTable::from_snapshot(&bad, 1).is_err(),
                "bit flip at {i} undetected"
            );
        }
        for cut in 0..bytes.len() {
            assert!(
                ProducerStateTable::from_snapshot(&bytes[..cut], 1).is_err(),
                "truncation at {cut}"
            );
        }
        let mut v2 = bytes.clone();
        v2[1] = 2;
        assert_eq!(
            ProducerStateTable::from_snapshot(&v2, 1).unwrap_err(),
            SnapshotError::UnsupportedVersion(2)
        );
    }

    #[test]
    fn structurally_invalid_content_with_valid_crc() {
        fn seal(body: &[u8]) -> Vec<u8> {
            let mut out = vec![0, 1];
            out.extend_from_slice(&crc32c::crc32c(body).to_be_bytes());
            out.extend_from_slice(body);
            out
        }
        // Count claims a billion producers.
        let mut body = Vec::new();
        body.put_i64(10);
        body.put_u32(1_000_000_000);
        assert_eq!(
            ProducerStateTable::from_snapshot(&seal(&body), 1).unwrap_err(),
            SnapshotError::Truncated
        );
        // Six batches.
        let mut body = Vec::new();
        body.put_i64(10);
        body.put_u32(1);
        body.put_i64(1);
        body.put_i16(0);
        body.put_i64(0);
        body.put_u8(6);
        body.extend_from_slice(&[0u8; 6 * 32]);
        assert!(matches!(
            ProducerStateTable::from_snapshot(&seal(&body), 1),
            Err(SnapshotError::Invalid(_))
        ));
    }

    #[test]
    fn file_names() {
        assert_eq!(snapshot_file_name(1234), "00000000000000001234.snapshot");
        assert_eq!(
            parse_snapshot_file_name("00000000000000001234.snapshot"),
            Some(1234)
        );
        assert_eq!(parse_snapshot_file_name("1234.snapshot"), None);
        assert_eq!(parse_snapshot_file_name("00000000000000001234.log"), None);
        assert_eq!(
            parse_snapshot_file_name("0000000000000000123x.snapshot"),
            None
        );
        assert_eq!(
            parse_snapshot_file_name(&snapshot_file_name(i64::MAX)),
            Some(i64::MAX)
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = ProducerStateTable::from_snapshot(&bytes, 1);
        }
    }
}
