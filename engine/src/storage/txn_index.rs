//! Transactions in the log, sans-IO: the aborted-transaction index (`.txnindex`, one per
//! segment, in Kafka's layout) and the control records of transaction markers.
//!
//! `.txnindex` entries, 34 bytes each, big-endian, in marker order:
//!
//! ```text
//! version i16 (= 0) | producer_id i64 | first_offset i64 | last_offset i64 | last_stable_offset i64
//! ```
//!
//! An entry is appended to the segment that holds the ABORT marker (`last_offset` is the
//! marker's offset). A read_committed fetch collects the entries that overlap the range it
//! returns, which is what Kafka's fetch response calls `aborted_transactions`.
//!
//! A transaction marker is a control batch (attributes: transactional | control) holding one
//! record: key `version i16 (= 0) | type i16` (0 ABORT, 1 COMMIT), value `version i16 (= 0) |
//! coordinator_epoch i32`.

use super::cleaner::records::{encode_record, parse_records, records_section};
use super::record_batch::{compute_crc, BatchHeader, HEADER_SIZE, LOG_OVERHEAD, MAGIC_V2};

/// File name suffix of the aborted-transaction index.
pub const TXN_INDEX_SUFFIX: &str = "txnindex";
/// Size of one `.txnindex` entry.
pub const ENTRY_LEN: usize = 34;
/// The only entry version Kafka defines.
pub const ENTRY_VERSION: i16 = 0;
/// Control record type of an ABORT marker.
pub const CONTROL_TYPE_ABORT: i16 = 0;
/// Control record type of a COMMIT marker.
pub const CONTROL_TYPE_COMMIT: i16 = 1;
/// Attributes of a transaction marker batch: transactional (0x10) | control (0x20).
pub const MARKER_ATTRIBUTES: i16 = 0x30;

/// One aborted transaction (Kafka's `AbortedTxn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    /// Producer id.
    pub producer_id: i64,
    /// First offset of the transaction's data.
    pub first_offset: i64,
    /// Offset of the ABORT marker.
    pub last_offset: i64,
    /// The partition's LSO once the marker was written.
    pub last_stable_offset: i64,
}

impl AbortedTxn {
    /// The entry's 34 bytes.
    pub fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut b = [0u8; ENTRY_LEN];
        b[0..2].copy_from_slice(&ENTRY_VERSION.to_be_bytes());
        b[2..10].copy_from_slice(&self.producer_id.to_be_bytes());
        b[10..18].copy_from_slice(&self.first_offset.to_be_bytes());
        b[18..26].copy_from_slice(&self.last_offset.to_be_bytes());
        b[26..34].copy_from_slice(&self.last_stable_offset.to_be_bytes());
        b
    }
}

/// Why a `.txnindex` file cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxnIndexError {
    /// Not a whole number of entries (a torn append).
    #[error("transaction index of {0} bytes is not a whole number of entries")]
    Torn(usize),
    /// An entry Kafka could not have written.
    #[error("transaction index entry {index} is invalid: {reason}")]
    Invalid {
        /// Entry number.
        index: usize,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Decodes a segment's `.txnindex`, checking every entry against the segment's offset range
/// `[base_offset, next_offset)`: version 0, a producer id, `first <= last`, the marker inside
/// the segment, markers in increasing order.
pub fn decode(
    bytes: &[u8],
    base_offset: i64,
    next_offset: i64,
) -> Result<Vec<AbortedTxn>, TxnIndexError> {
    if !bytes.len().is_multiple_of(ENTRY_LEN) {
        return Err(TxnIndexError::Torn(bytes.len()));
    }
    let i64_at = |c: &[u8], o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&c[o..o + 8]);
        i64::from_be_bytes(a)
    };
    let mut out = Vec::with_capacity(bytes.len() / ENTRY_LEN);
    for (index, c) in bytes.chunks_exact(ENTRY_LEN).enumerate() {
        let invalid = |reason| TxnIndexError::Invalid { index, reason };
        if i16::from_be_bytes([c[0], c[1]]) != ENTRY_VERSION {
            return Err(invalid("unknown version"));
        }
        let e = AbortedTxn {
            producer_id: i64_at(c, 2),
            first_offset: i64_at(c, 10),
            last_offset: i64_at(c, 18),
            last_stable_offset: i64_at(c, 26),
        };
        if e.producer_id < 0 {
            return Err(invalid("no producer id"));
        }
        if e.first_offset < 0 || e.first_offset > e.last_offset {
            return Err(invalid("first offset after the marker"));
        }
        if e.last_offset < base_offset || e.last_offset >= next_offset {
            return Err(invalid("marker outside the segment"));
        }
        if e.last_stable_offset < 0 {
            return Err(invalid("negative last stable offset"));
        }
        if out
            .last()
            .is_some_and(|p: &AbortedTxn| p.last_offset >= e.last_offset)
        {
            return Err(invalid("markers out of order"));
        }
        out.push(e);
    }
    Ok(out)
}

/// Encodes entries as a whole file.
pub fn encode_all(entries: &[AbortedTxn]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * ENTRY_LEN);
    for e in entries {
        out.extend_from_slice(&e.encode());
    }
    out
}

/// The entries of `entries` a fetch of `[from, upper)` must report: transactions whose data
/// may lie in that range (`last_offset >= from` and `first_offset < upper`), as Kafka's
/// `collectAbortedTransactions`.
pub fn overlapping(
    entries: &[AbortedTxn],
    from: i64,
    upper: i64,
) -> impl Iterator<Item = &AbortedTxn> {
    entries
        .iter()
        .filter(move |e| e.last_offset >= from && e.first_offset < upper)
}

/// A decoded transaction marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlMarker {
    /// ABORT (true) or COMMIT.
    pub aborted: bool,
    /// Epoch of the coordinator that wrote it.
    pub coordinator_epoch: i32,
}

/// Why a control batch is not a transaction marker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MarkerError {
    /// Not a transactional control batch with one record.
    #[error("not a transaction marker batch: {0}")]
    NotMarker(&'static str),
    /// The control record cannot be parsed.
    #[error("malformed control record: {0}")]
    Malformed(String),
}

/// Reads the marker of a control batch (`batch` holds the whole batch): `Ok(None)` for a
/// control batch that is not a transaction marker (such as a quorum leader's epoch marker).
pub fn parse_marker(batch: &[u8], h: &BatchHeader) -> Result<Option<ControlMarker>, MarkerError> {
    if !h.is_control() {
        return Err(MarkerError::NotMarker("not a control batch"));
    }
    // Control batches are small; the limit only protects against a hostile codec stream.
    let section =
        records_section(batch, h, 1 << 16).map_err(|e| MarkerError::Malformed(e.to_string()))?;
    let records = parse_records(&section, h.records_count)
        .map_err(|e| MarkerError::Malformed(e.to_string()))?;
    let Some(first) = records.first() else {
        return Err(MarkerError::NotMarker("no record"));
    };
    let key = first
        .key
        .clone()
        .and_then(|r| section.get(r))
        .ok_or(MarkerError::NotMarker("control record without a key"))?;
    if key.len() < 4 {
        return Err(MarkerError::Malformed(format!(
            "control key of {} bytes",
            key.len()
        )));
    }
    let kind = i16::from_be_bytes([key[2], key[3]]);
    let aborted = match kind {
        CONTROL_TYPE_ABORT => true,
        CONTROL_TYPE_COMMIT => false,
        // Other control types (LEADER_CHANGE, snapshot markers) end no transaction.
        _ => return Ok(None),
    };
    if !h.is_transactional() || h.producer_id < 0 {
        return Err(MarkerError::NotMarker(
            "a transaction marker must be transactional with a producer id",
        ));
    }
    let value = first
        .value
        .clone()
        .and_then(|r| section.get(r))
        .ok_or(MarkerError::NotMarker("transaction marker without a value"))?;
    if value.len() < 6 {
        return Err(MarkerError::Malformed(format!(
            "marker value of {} bytes",
            value.len()
        )));
    }
    Ok(Some(ControlMarker {
        aborted,
        coordinator_epoch: i32::from_be_bytes([value[2], value[3], value[4], value[5]]),
    }))
}

/// Builds an end-transaction marker batch for a producer (base offset 0, to be stamped by the
/// log): one control record, uncompressed, base sequence -1, as Kafka's
/// `MemoryRecords.withEndTransactionMarker` writes it.
pub fn build_marker_batch(
    producer_id: i64,
    producer_epoch: i16,
    coordinator_epoch: i32,
    aborted: bool,
    timestamp_ms: i64,
) -> Vec<u8> {
    let kind = if aborted {
        CONTROL_TYPE_ABORT
    } else {
        CONTROL_TYPE_COMMIT
    };
    let mut key = Vec::with_capacity(4);
    key.extend_from_slice(&0i16.to_be_bytes());
    key.extend_from_slice(&kind.to_be_bytes());
    let mut value = Vec::with_capacity(6);
    value.extend_from_slice(&0i16.to_be_bytes());
    value.extend_from_slice(&coordinator_epoch.to_be_bytes());
    let mut section = Vec::new();
    encode_record(&mut section, 0, 0, Some(&key), Some(&value));
    let mut b = Vec::with_capacity(HEADER_SIZE + section.len());
    b.extend_from_slice(&0i64.to_be_bytes());
    b.extend_from_slice(&((HEADER_SIZE - LOG_OVERHEAD + section.len()) as i32).to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.push(MAGIC_V2 as u8);
    b.extend_from_slice(&0u32.to_be_bytes());
    b.extend_from_slice(&MARKER_ATTRIBUTES.to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes());
    b.extend_from_slice(&timestamp_ms.to_be_bytes());
    b.extend_from_slice(&timestamp_ms.to_be_bytes());
    b.extend_from_slice(&producer_id.to_be_bytes());
    b.extend_from_slice(&producer_epoch.to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.extend_from_slice(&1i32.to_be_bytes());
    b.extend_from_slice(&section);
    let crc = compute_crc(&b);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::record_batch::validate_batch;
    use proptest::prelude::*;

    fn entry(pid: i64, first: i64, last: i64) -> AbortedTxn {
        AbortedTxn {
            producer_id: pid,
            first_offset: first,
            last_offset: last,
            last_stable_offset: last + 1,
        }
    }

    #[test]
    fn entries_have_kafkas_layout_and_round_trip() {
        let e = entry(0x0102_0304_0506_0708, 10, 20);
        let b = e.encode();
        assert_eq!(&b[0..2], &[0, 0]);
        assert_eq!(&b[2..10], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(i64::from_be_bytes(b[10..18].try_into().unwrap()), 10);
        assert_eq!(i64::from_be_bytes(b[18..26].try_into().unwrap()), 20);
        assert_eq!(i64::from_be_bytes(b[26..34].try_into().unwrap()), 21);
        let all = vec![e, entry(3, 15, 25), entry(1, 26, 26)];
        assert_eq!(decode(&encode_all(&all), 0, 30).unwrap(), all);
        assert_eq!(decode(&[], 0, 0).unwrap(), vec![]);
    }

    #[test]
    fn torn_and_invalid_files_are_refused() {
        let all = encode_all(&[entry(1, 10, 20), entry(2, 12, 22)]);
        for cut in 1..all.len() {
            if !cut.is_multiple_of(ENTRY_LEN) {
                assert_eq!(decode(&all[..cut], 0, 30), Err(TxnIndexError::Torn(cut)));
            }
        }
        // Marker outside the segment.
        assert!(decode(&all, 21, 30).is_err());
        assert!(decode(&all, 0, 22).is_err());
        // Out of order.
        let swapped = encode_all(&[entry(2, 12, 22), entry(1, 10, 20)]);
        assert!(decode(&swapped, 0, 30).is_err());
        // Bad version, first after last, zero entries (a preallocated tail).
        let mut bad = all.clone();
        bad[1] = 1;
        assert!(decode(&bad, 0, 30).is_err());
        assert!(decode(&encode_all(&[entry(1, 21, 20)]), 0, 30).is_err());
        let mut zeros = all.clone();
        zeros.extend_from_slice(&[0u8; ENTRY_LEN]);
        assert!(decode(&zeros, 0, 30).is_err());
    }

    #[test]
    fn overlap_is_what_a_fetch_reports() {
        let all = [entry(1, 0, 5), entry(2, 3, 10), entry(3, 12, 14)];
        let pick = |from, upper| {
            overlapping(&all, from, upper)
                .map(|e| e.producer_id)
                .collect::<Vec<_>>()
        };
        assert_eq!(pick(0, 3), vec![1]);
        assert_eq!(pick(6, 12), vec![2]);
        assert_eq!(pick(6, 13), vec![2, 3]);
        assert_eq!(pick(15, 100), Vec::<i64>::new());
    }

    #[test]
    fn markers_build_validate_and_parse() {
        for aborted in [true, false] {
            let b = build_marker_batch(42, 3, 9, aborted, 1_000);
            let h = validate_batch(&b).unwrap();
            assert!(h.is_control() && h.is_transactional());
            assert_eq!(
                (h.producer_id, h.producer_epoch, h.base_sequence),
                (42, 3, -1)
            );
            assert_eq!(
                parse_marker(&b, &h).unwrap(),
                Some(ControlMarker {
                    aborted,
                    coordinator_epoch: 9
                })
            );
        }
        // A non-control batch is not a marker.
        let data = crate::storage::record_batch::builder::build_batch(
            &crate::storage::record_batch::builder::BatchSpec::default(),
            &[b"x"],
        );
        let h = validate_batch(&data).unwrap();
        assert!(parse_marker(&data, &h).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_index_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes, 0, i64::MAX);
        }

        #[test]
        fn arbitrary_control_records_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut b = build_marker_batch(1, 0, 0, true, 0);
            b.truncate(HEADER_SIZE);
            b.extend_from_slice(&tail);
            if let Ok(h) = BatchHeader::parse(&b) {
                let _ = parse_marker(&b, &h);
            }
        }
    }
}
