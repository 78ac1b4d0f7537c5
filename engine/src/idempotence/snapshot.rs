//! Producer-state snapshots: the [`ProducerStateTable`] of a partition as bytes, written by
//! the shell beside the segments as `<20-digit offset>.snapshot` (the offset is the table's
//! end offset, as Kafka names its snapshots).
//!
//! Layout (big-endian), version 2:
//!
//! ```text
//! version u16 | crc32c u32 (of every byte after it) | end_offset i64 | count u32 |
//! count x { producer_id i64 | epoch i16 | last_timestamp i64 |
//!           coordinator_epoch i32 | current_txn_first_offset i64 (-1: none) | batches u8 |
//!           batches x { first_seq i32 | last_seq i32 | first_offset i64 | last_offset i64 | timestamp i64 } }
//! ```
//!
//! Version 1 (written before transactions) lacks the two transaction fields; it still loads,
//! with no coordinator epoch and no open transaction.
//!
//! Unlike Kafka's snapshot, which keeps only each producer's last batch, all five retained
//! batches are stored, so retries that straddle a restart are still recognised as duplicates.

use std::collections::{BTreeMap, VecDeque};

use bytes::{Buf, BufMut};

use super::state::{BatchMetadata, ProducerEntry, ProducerStateTable, NUM_BATCHES_TO_RETAIN};

/// Current snapshot format version.
pub const SNAPSHOT_VERSION: u16 = 2;
/// The version before transactions, still readable.
pub const SNAPSHOT_VERSION_V1: u16 = 1;
/// File name suffix of snapshots.
pub const SNAPSHOT_SUFFIX: &str = ".snapshot";

const HEADER_LEN: usize = 2 + 4;
const ENTRY_FIXED_LEN_V1: usize = 8 + 2 + 8 + 1;
const ENTRY_FIXED_LEN: usize = ENTRY_FIXED_LEN_V1 + 4 + 8;
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
            body.put_i32(e.coordinator_epoch);
            body.put_i64(e.current_txn_first_offset.unwrap_or(-1));
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
        let entry_fixed_len = match version {
            SNAPSHOT_VERSION => ENTRY_FIXED_LEN,
            SNAPSHOT_VERSION_V1 => ENTRY_FIXED_LEN_V1,
            _ => return Err(SnapshotError::UnsupportedVersion(version)),
        };
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
        if count > b.remaining() / entry_fixed_len {
            return Err(SnapshotError::Truncated);
        }
        let mut producers = BTreeMap::new();
        for _ in 0..count {
            if b.remaining() < entry_fixed_len {
                return Err(SnapshotError::Truncated);
            }
            let producer_id = b.get_i64();
            let epoch = b.get_i16();
            let last_timestamp_ms = b.get_i64();
            let (coordinator_epoch, txn_first) = if version == SNAPSHOT_VERSION_V1 {
                (super::state::NO_COORDINATOR_EPOCH, None)
            } else {
                let ce = b.get_i32();
                let first = b.get_i64();
                if first < -1 || first >= end_offset {
                    return Err(SnapshotError::Invalid(
                        "open transaction offset out of range",
                    ));
                }
                (ce, (first >= 0).then_some(first))
            };
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
            let mut entry = ProducerEntry::new(producer_id, epoch, batches, last_timestamp_ms);
            entry.coordinator_epoch = coordinator_epoch;
            entry.current_txn_first_offset = txn_first;
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
                    transactional: false,
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

    fn seal_version(version: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![0, version];
        out.extend_from_slice(&crc32c::crc32c(body).to_be_bytes());
        out.extend_from_slice(body);
        out
    }
    fn seal(body: &[u8]) -> Vec<u8> {
        seal_version(1, body)
    }
    fn seal_v2(body: &[u8]) -> Vec<u8> {
        seal_version(2, body)
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
            transactional: false,
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
        let mut v3 = bytes.clone();
        v3[1] = 3;
        assert_eq!(
            ProducerStateTable::from_snapshot(&v3, 1).unwrap_err(),
            SnapshotError::UnsupportedVersion(3)
        );
    }

    #[test]
    fn structurally_invalid_content_with_valid_crc() {
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
    fn version_1_snapshots_still_load() {
        // A v1 body: one producer, one batch, written before transactions existed.
        let mut body = Vec::new();
        body.put_i64(20);
        body.put_u32(1);
        body.put_i64(9);
        body.put_i16(4);
        body.put_i64(1_234);
        body.put_u8(1);
        body.put_i32(0);
        body.put_i32(2);
        body.put_i64(10);
        body.put_i64(12);
        body.put_i64(1_234);
        let t = ProducerStateTable::from_snapshot(&seal(&body), 1).unwrap();
        let e = t.entry(9).unwrap();
        assert_eq!(
            (e.epoch, e.last_seq(), e.batches[0].last_offset),
            (4, Some(2), 12)
        );
        assert_eq!(e.current_txn_first_offset, None);
        assert_eq!(e.coordinator_epoch, NO_COORDINATOR_EPOCH);
        assert_eq!(t.first_unstable_offset(), None);
    }

    #[test]
    fn open_transactions_and_coordinator_epochs_round_trip() {
        let mut t = ProducerStateTable::new(DEFAULT_PRODUCER_ID_EXPIRATION_MS);
        let txn = |pid: i64, seq: i32| BatchHeader {
            producer_id: pid,
            producer_epoch: 1,
            base_sequence: seq,
            last_offset_delta: 1,
            max_timestamp_ms: 5,
            transactional: true,
        };
        let CheckOutcome::Append(a) = t.check(&txn(1, 0)).unwrap() else {
            panic!()
        };
        t.update(a, 0).unwrap();
        let CheckOutcome::Append(b) = t.check(&txn(2, 0)).unwrap() else {
            panic!()
        };
        t.update(b, 2).unwrap();
        let marker = TxnMarker {
            producer_id: 2,
            producer_epoch: 1,
            coordinator_epoch: 7,
            aborted: true,
            timestamp_ms: 6,
        };
        t.apply_marker(&marker, 4);
        let back = ProducerStateTable::from_snapshot(&t.to_snapshot(), 1).unwrap();
        assert_eq!(back.entry(1).unwrap().current_txn_first_offset, Some(0));
        assert_eq!(back.entry(2).unwrap().current_txn_first_offset, None);
        assert_eq!(back.entry(2).unwrap().coordinator_epoch, 7);
        assert_eq!(back.open_transactions(), vec![(1, 0)]);
        // An open transaction at or past the end offset is impossible.
        let mut bad = Vec::new();
        bad.put_i64(3);
        bad.put_u32(1);
        bad.put_i64(1);
        bad.put_i16(0);
        bad.put_i64(0);
        bad.put_i32(0);
        bad.put_i64(3);
        bad.put_u8(0);
        assert!(matches!(
            ProducerStateTable::from_snapshot(&seal_v2(&bad), 1),
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
