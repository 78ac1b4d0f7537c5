//! Sans-IO record-level work of the cleaner: reading keys out of a batch, deciding which
//! records survive, and rebuilding a batch from the survivors with its original offsets.
//!
//! A retained record's bytes are copied verbatim: its offset and timestamp deltas stay relative
//! to the original batch's base offset and base timestamp, which the rebuilt batch keeps (as
//! Kafka's v2 `filterTo` does, including the original last offset delta). So offsets never
//! change and only the batch header (length, count, CRC) and, for compressed batches, the
//! compressed payload are new.

use std::borrow::Cow;
use std::io::Write;
use std::ops::Range;

use thiserror::Error;

use crate::storage::decompress::{decompress_records, DecompressError};
use crate::storage::record_batch::{
    compute_crc, BatchError, BatchHeader, Compression, RecordInfo, HEADER_SIZE,
};

/// Offsets of header fields the cleaner rewrites (RecordBatch v2 layout).
const BATCH_LENGTH: usize = 8;
const CRC: usize = 17;
const ATTRIBUTES: usize = 21;
const RECORDS_COUNT: usize = 57;
const COMPRESSION_MASK: i16 = 0x07;
/// Block size of the xerial snappy framing Kafka's Java producer writes.
const XERIAL_BLOCK: usize = 32 * 1024;
const XERIAL_HEADER: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";

/// Why a batch could not be filtered.
#[derive(Debug, Error)]
pub enum RecordsError {
    /// The records section is malformed.
    #[error("malformed records: {0}")]
    Malformed(#[from] BatchError),
    /// The compressed payload cannot be decoded (or is larger than allowed).
    #[error(transparent)]
    Decompress(#[from] DecompressError),
    /// Re-compressing the retained records failed.
    #[error("{codec} compression failed: {reason}")]
    Compress {
        /// Codec in use.
        codec: Compression,
        /// Encoder's message.
        reason: String,
    },
}

/// One record of a batch, located in the batch's (decompressed) records section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRef {
    /// Offset delta from the batch base offset.
    pub offset_delta: i32,
    /// Timestamp delta from the batch base timestamp.
    pub timestamp_delta: i64,
    /// The whole record, length prefix included.
    pub bytes: Range<usize>,
    /// The key, `None` for a null key.
    pub key: Option<Range<usize>>,
    /// The value, `None` for a null value (a tombstone).
    pub value: Option<Range<usize>>,
}

impl RecordRef {
    /// A keyed record with a null value deletes its key.
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }
}

fn read_varlong(buf: &[u8], pos: &mut usize) -> Result<i64, BatchError> {
    let mut raw: u64 = 0;
    let mut shift = 0u32;
    loop {
        let Some(&b) = buf.get(*pos) else {
            return Err(BatchError::InvalidRecord("varint runs past the end".into()));
        };
        *pos += 1;
        raw |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 63 {
            return Err(BatchError::InvalidRecord("varint too long".into()));
        }
    }
    Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
}

fn put_varlong(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        if z < 0x80 {
            out.push(z as u8);
            return;
        }
        out.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
}

/// Locates the `count` records of a records section; every length is bounds-checked, so a
/// malformed section is an error, never a panic.
pub fn parse_records(records: &[u8], count: i32) -> Result<Vec<RecordRef>, BatchError> {
    let mut out = Vec::with_capacity(count.clamp(0, 1 << 16) as usize);
    let mut pos = 0usize;
    for i in 0..count.max(0) {
        let start = pos;
        let len = read_varlong(records, &mut pos)?;
        if len < 1 || pos as i64 + len > records.len() as i64 {
            return Err(BatchError::InvalidRecord(format!(
                "record {i} has length {len}"
            )));
        }
        let end = pos + len as usize;
        let rec = &records[..end];
        let mut p = pos + 1; // attributes
        let timestamp_delta = read_varlong(rec, &mut p)?;
        let offset_delta = read_varlong(rec, &mut p)?;
        let offset_delta = i32::try_from(offset_delta).map_err(|_| {
            BatchError::InvalidRecord(format!("record {i} offset delta {offset_delta}"))
        })?;
        let field = |p: &mut usize, what: &str| -> Result<Option<Range<usize>>, BatchError> {
            let l = read_varlong(rec, p)?;
            if l < -1 || (l > 0 && *p as i64 + l > end as i64) {
                return Err(BatchError::InvalidRecord(format!(
                    "record {i} {what} length {l}"
                )));
            }
            if l < 0 {
                return Ok(None);
            }
            let r = *p..*p + l as usize;
            *p += l as usize;
            Ok(Some(r))
        };
        let key = field(&mut p, "key")?;
        let value = field(&mut p, "value")?;
        if p > end {
            return Err(BatchError::InvalidRecord(format!("record {i} overruns")));
        }
        out.push(RecordRef {
            offset_delta,
            timestamp_delta,
            bytes: start..end,
            key,
            value,
        });
        pos = end;
    }
    if pos != records.len() {
        return Err(BatchError::InvalidRecord(format!(
            "{} bytes after the last record",
            records.len() - pos
        )));
    }
    Ok(out)
}

/// Offset and timestamp deltas of the records of a stored batch's records section. Unlike
/// produce validation, offset deltas may have gaps: the cleaner removes records and keeps
/// the others' offsets.
pub fn stored_record_infos(section: &[u8], count: i32) -> Result<Vec<RecordInfo>, BatchError> {
    Ok(parse_records(section, count)?
        .into_iter()
        .map(|r| RecordInfo {
            offset_delta: r.offset_delta,
            timestamp_delta: r.timestamp_delta,
        })
        .collect())
}

/// The records section of `batch` (a whole batch), decompressed if needed (at most `limit`
/// bytes of output).
pub fn records_section<'a>(
    batch: &'a [u8],
    h: &BatchHeader,
    limit: usize,
) -> Result<Cow<'a, [u8]>, RecordsError> {
    let body = batch
        .get(HEADER_SIZE..h.size().min(batch.len()))
        .unwrap_or_default();
    match h.compression() {
        Compression::None => Ok(Cow::Borrowed(body)),
        codec => Ok(Cow::Owned(decompress_records(codec, body, limit)?)),
    }
}

/// Compresses a records section with `codec` in the framing Kafka's own producer writes.
pub fn compress(codec: Compression, data: &[u8]) -> Result<Vec<u8>, RecordsError> {
    let fail = |e: &dyn std::fmt::Display| RecordsError::Compress {
        codec,
        reason: e.to_string(),
    };
    match codec {
        Compression::None => Ok(data.to_vec()),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).map_err(|e| fail(&e))?;
            e.finish().map_err(|e| fail(&e))
        }
        Compression::Snappy => {
            let mut out = XERIAL_HEADER.to_vec();
            let mut enc = snap::raw::Encoder::new();
            for chunk in data.chunks(XERIAL_BLOCK) {
                let block = enc.compress_vec(chunk).map_err(|e| fail(&e))?;
                let len = u32::try_from(block.len()).map_err(|e| fail(&e))?;
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&block);
            }
            Ok(out)
        }
        Compression::Lz4 => {
            // Independent 64 KiB blocks without a content checksum: what Kafka's
            // KafkaLZ4BlockOutputStream writes and every client reads.
            let mut e = lz4::EncoderBuilder::new()
                .block_size(lz4::BlockSize::Max64KB)
                .block_mode(lz4::BlockMode::Independent)
                .checksum(lz4::ContentChecksum::NoChecksum)
                .build(Vec::new())
                .map_err(|e| fail(&e))?;
            e.write_all(data).map_err(|e| fail(&e))?;
            let (out, res) = e.finish();
            res.map_err(|e| fail(&e))?;
            Ok(out)
        }
        Compression::Zstd => zstd::stream::encode_all(data, 3).map_err(|e| fail(&e)),
        Compression::Unknown(_) => Err(fail(&"unknown codec")),
    }
}

/// Builds a batch from `original` (a whole valid batch) holding only `kept` (records located
/// in `section`, its decompressed records section). Base offset, last offset delta, base and
/// max timestamps, producer fields and attributes are the original's, so every offset and
/// timestamp stays what it was. With nothing kept, the result is an empty batch (no records,
/// uncompressed), the form Kafka keeps to preserve an idempotent producer's last sequence.
pub fn rebuild_batch(
    original: &[u8],
    h: &BatchHeader,
    section: &[u8],
    kept: &[&RecordRef],
) -> Result<Vec<u8>, RecordsError> {
    let mut raw = Vec::with_capacity(kept.iter().map(|r| r.bytes.len()).sum());
    for r in kept {
        raw.extend_from_slice(&section[r.bytes.clone()]);
    }
    let mut attributes = h.attributes;
    let payload = if kept.is_empty() {
        attributes &= !COMPRESSION_MASK;
        Vec::new()
    } else {
        compress(h.compression(), &raw)?
    };
    let mut out = Vec::with_capacity(HEADER_SIZE + payload.len());
    out.extend_from_slice(&original[..HEADER_SIZE]);
    out.extend_from_slice(&payload);
    let batch_length = i32::try_from(out.len() - BATCH_LENGTH - 4)
        .map_err(|_| RecordsError::Malformed(BatchError::InvalidLength(i32::MAX)))?;
    out[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&batch_length.to_be_bytes());
    out[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
    let count = kept.len() as i32;
    out[RECORDS_COUNT..RECORDS_COUNT + 4].copy_from_slice(&count.to_be_bytes());
    let crc = compute_crc(&out);
    out[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
    Ok(out)
}

/// Kafka rejects a record without a key in a compacted topic (`INVALID_RECORD`): checks every
/// record of a non-control batch, decompressing at most `limit` bytes. Returns the index of
/// the first keyless record, if any.
pub fn first_keyless_record(
    batch: &[u8],
    h: &BatchHeader,
    limit: usize,
) -> Result<Option<usize>, RecordsError> {
    if h.is_control() {
        return Ok(None);
    }
    let section = records_section(batch, h, limit)?;
    let records = parse_records(&section, h.records_count)?;
    Ok(records.iter().position(|r| r.key.is_none()))
}

/// A record's key and value as given to `build_keyed_batch` (`None` = null).
pub type KeyValue<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// Encodes one record (for tests and benches building keyed batches).
pub fn encode_record(
    out: &mut Vec<u8>,
    offset_delta: i32,
    timestamp_delta: i64,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) {
    let mut body =
        Vec::with_capacity(16 + key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len));
    body.push(0);
    put_varlong(&mut body, timestamp_delta);
    put_varlong(&mut body, i64::from(offset_delta));
    for f in [key, value] {
        match f {
            Some(b) => {
                put_varlong(&mut body, b.len() as i64);
                body.extend_from_slice(b);
            }
            None => put_varlong(&mut body, -1),
        }
    }
    put_varlong(&mut body, 0);
    put_varlong(out, body.len() as i64);
    out.extend_from_slice(&body);
}

/// Builds a valid batch of keyed records (record i at offset delta i, timestamp
/// `base_timestamp + i`), compressed with `codec`; for tests, benches and tools.
pub fn build_keyed_batch(
    base_offset: i64,
    base_timestamp: i64,
    codec: Compression,
    producer_id: i64,
    records: &[KeyValue<'_>],
) -> Result<Vec<u8>, RecordsError> {
    let mut section = Vec::new();
    for (i, (k, v)) in records.iter().enumerate() {
        encode_record(&mut section, i as i32, i as i64, *k, *v);
    }
    let payload = compress(codec, &section)?;
    let n = records.len() as i32;
    let codec_bits: i16 = match codec {
        Compression::None => 0,
        Compression::Gzip => 1,
        Compression::Snappy => 2,
        Compression::Lz4 => 3,
        Compression::Zstd => 4,
        Compression::Unknown(c) => i16::from(c),
    };
    let mut b = Vec::with_capacity(HEADER_SIZE + payload.len());
    b.extend_from_slice(&base_offset.to_be_bytes());
    b.extend_from_slice(&((HEADER_SIZE - 12 + payload.len()) as i32).to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.push(2);
    b.extend_from_slice(&0u32.to_be_bytes());
    b.extend_from_slice(&codec_bits.to_be_bytes());
    b.extend_from_slice(&(n - 1).max(0).to_be_bytes());
    b.extend_from_slice(&base_timestamp.to_be_bytes());
    b.extend_from_slice(&(base_timestamp + i64::from((n - 1).max(0))).to_be_bytes());
    b.extend_from_slice(&producer_id.to_be_bytes());
    b.extend_from_slice(&(if producer_id >= 0 { 0i16 } else { -1 }).to_be_bytes());
    b.extend_from_slice(&(if producer_id >= 0 { 0i32 } else { -1 }).to_be_bytes());
    b.extend_from_slice(&n.to_be_bytes());
    b.extend_from_slice(&payload);
    let crc = compute_crc(&b);
    b[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::record_batch::validate_batch;

    #[test]
    fn rebuild_keeps_offsets_for_every_codec() {
        let recs: Vec<KeyValue<'_>> = vec![
            (Some(b"a"), Some(b"1")),
            (Some(b"b"), Some(b"2")),
            (None, Some(b"unkeyed")),
            (Some(b"a"), None),
        ];
        for codec in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let b = build_keyed_batch(100, 5_000, codec, -1, &recs).unwrap();
            let h = validate_batch(&b).unwrap();
            let section = records_section(&b, &h, 1 << 20).unwrap();
            let parsed = parse_records(&section, h.records_count).unwrap();
            assert_eq!(parsed.len(), 4);
            assert_eq!(&section[parsed[0].key.clone().unwrap()], b"a");
            assert!(parsed[2].key.is_none());
            assert!(parsed[3].is_tombstone() && !parsed[0].is_tombstone());
            let kept = [&parsed[1], &parsed[3]];
            let nb = rebuild_batch(&b, &h, &section, &kept).unwrap();
            let nh = validate_batch(&nb).unwrap();
            assert_eq!(nh.base_offset, 100);
            assert_eq!(nh.last_offset(), h.last_offset());
            assert_eq!(nh.records_count, 2);
            assert_eq!(nh.compression(), codec);
            assert_eq!(nh.max_timestamp, h.max_timestamp);
            let ns = records_section(&nb, &nh, 1 << 20).unwrap();
            let deltas: Vec<i32> = stored_record_infos(&ns, nh.records_count)
                .unwrap()
                .iter()
                .map(|r| r.offset_delta)
                .collect();
            assert_eq!(deltas, vec![1, 3], "{codec}");
            let empty = rebuild_batch(&b, &h, &section, &[]).unwrap();
            let eh = validate_batch(&empty).unwrap();
            assert_eq!((eh.records_count, eh.last_offset()), (0, h.last_offset()));
            assert_eq!(eh.compression(), Compression::None);
        }
    }

    #[test]
    fn keyless_detection_and_garbage() {
        let b = build_keyed_batch(
            0,
            0,
            Compression::Gzip,
            -1,
            &[(Some(b"k"), Some(b"v")), (None, Some(b"x"))],
        )
        .unwrap();
        let h = validate_batch(&b).unwrap();
        assert_eq!(first_keyless_record(&b, &h, 1 << 20).unwrap(), Some(1));
        assert!(parse_records(&[0x7f, 1, 2], 1).is_err());
        assert!(parse_records(&[], 1).is_err());
        assert!(parse_records(&[2, 0, 0], 1).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Arbitrary bytes never panic the record parser.
        #[test]
        fn parser_never_panics(noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200), n in 0i32..20) {
            let _ = parse_records(&noise, n);
        }
    }
}
