//! Kafka RecordBatch v2: the sans-IO header codec, validation, stamping and iteration.
//!
//! Layout (big-endian): baseOffset i64 | batchLength i32 | partitionLeaderEpoch i32 | magic i8 |
//! crc u32 | attributes i16 | lastOffsetDelta i32 | baseTimestamp i64 | maxTimestamp i64 |
//! producerId i64 | producerEpoch i16 | baseSequence i32 | recordsCount i32 | records...
//! The CRC-32C covers attributes..end, so stamping baseOffset and partitionLeaderEpoch keeps it.

use thiserror::Error;

/// Size of the fixed batch header.
pub const HEADER_SIZE: usize = 61;
/// Bytes before `batchLength` counts: baseOffset + batchLength.
pub const LOG_OVERHEAD: usize = 12;
/// Smallest legal `batchLength` (a header with no records).
pub const MIN_BATCH_LENGTH: i32 = (HEADER_SIZE - LOG_OVERHEAD) as i32;
/// The only magic this engine stores.
pub const MAGIC_V2: i8 = 2;
/// `NO_TIMESTAMP` in Kafka.
pub const NO_TIMESTAMP: i64 = -1;

const BASE_OFFSET: usize = 0;
const BATCH_LENGTH: usize = 8;
const PARTITION_LEADER_EPOCH: usize = 12;
const MAGIC: usize = 16;
const CRC: usize = 17;
const ATTRIBUTES: usize = 21;
const LAST_OFFSET_DELTA: usize = 23;
const BASE_TIMESTAMP: usize = 27;
const MAX_TIMESTAMP: usize = 35;
const PRODUCER_ID: usize = 43;
const PRODUCER_EPOCH: usize = 51;
const BASE_SEQUENCE: usize = 53;
const RECORDS_COUNT: usize = 57;

const COMPRESSION_MASK: i16 = 0x07;
const TIMESTAMP_TYPE_MASK: i16 = 0x08;
const TRANSACTIONAL_MASK: i16 = 0x10;
const CONTROL_MASK: i16 = 0x20;

/// Why bytes are not a valid RecordBatch v2.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BatchError {
    /// Fewer bytes than the header or the declared length needs.
    #[error("truncated batch: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    /// `batchLength` is smaller than a header or absurdly large.
    #[error("invalid batch length {0}")]
    InvalidLength(i32),
    /// Magic byte is not 2.
    #[error("unsupported magic {0}")]
    UnsupportedMagic(i8),
    /// Stored CRC does not match the computed CRC-32C.
    #[error("CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    /// `recordsCount` is negative or disagrees with `lastOffsetDelta`.
    #[error("invalid record count {count} (lastOffsetDelta {last_offset_delta})")]
    InvalidRecordCount { count: i32, last_offset_delta: i32 },
    /// `lastOffsetDelta` is negative.
    #[error("invalid lastOffsetDelta {0}")]
    InvalidLastOffsetDelta(i32),
    /// A record inside an uncompressed batch is malformed.
    #[error("invalid record: {0}")]
    InvalidRecord(String),
}

/// Compression codec from the attributes' low three bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// No compression.
    None,
    /// gzip.
    Gzip,
    /// snappy.
    Snappy,
    /// lz4.
    Lz4,
    /// zstd.
    Zstd,
    /// A codec id Kafka does not define.
    Unknown(u8),
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Compression::None => f.write_str("none"),
            Compression::Gzip => f.write_str("gzip"),
            Compression::Snappy => f.write_str("snappy"),
            Compression::Lz4 => f.write_str("lz4"),
            Compression::Zstd => f.write_str("zstd"),
            Compression::Unknown(c) => write!(f, "unknown({c})"),
        }
    }
}

/// The timestamp type of a batch (attribute bit 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimestampType {
    /// Timestamps set by the producer.
    #[default]
    CreateTime,
    /// Timestamps set by the broker on append.
    LogAppendTime,
}

/// A parsed RecordBatch v2 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// First offset of the batch.
    pub base_offset: i64,
    /// Bytes after the length field.
    pub batch_length: i32,
    /// Epoch of the leader that appended the batch.
    pub partition_leader_epoch: i32,
    /// Format version (2).
    pub magic: i8,
    /// Stored CRC-32C of attributes..end.
    pub crc: u32,
    /// Raw attributes.
    pub attributes: i16,
    /// Last offset minus base offset.
    pub last_offset_delta: i32,
    /// Timestamp of the first record.
    pub base_timestamp: i64,
    /// Largest timestamp in the batch.
    pub max_timestamp: i64,
    /// Idempotent/transactional producer id, -1 if none.
    pub producer_id: i64,
    /// Producer epoch, -1 if none.
    pub producer_epoch: i16,
    /// Sequence of the first record, -1 if none.
    pub base_sequence: i32,
    /// Number of records.
    pub records_count: i32,
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    i32::from_be_bytes(a)
}
fn be_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}
fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

impl BatchHeader {
    /// Parses the 61-byte header at the start of `buf` and checks length and magic (not CRC).
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, BatchError> {
        if buf.len() < LOG_OVERHEAD {
            return Err(BatchError::Truncated {
                need: LOG_OVERHEAD,
                have: buf.len(),
            });
        }
        let batch_length = be_i32(buf, BATCH_LENGTH);
        if batch_length < MIN_BATCH_LENGTH {
            return Err(BatchError::InvalidLength(batch_length));
        }
        if buf.len() < HEADER_SIZE {
            return Err(BatchError::Truncated {
                need: HEADER_SIZE,
                have: buf.len(),
            });
        }
        let magic = buf[MAGIC] as i8;
        if magic != MAGIC_V2 {
            return Err(BatchError::UnsupportedMagic(magic));
        }
        Ok(BatchHeader {
            base_offset: be_i64(buf, BASE_OFFSET),
            batch_length,
            partition_leader_epoch: be_i32(buf, PARTITION_LEADER_EPOCH),
            magic,
            crc: be_u32(buf, CRC),
            attributes: be_i16(buf, ATTRIBUTES),
            last_offset_delta: be_i32(buf, LAST_OFFSET_DELTA),
            base_timestamp: be_i64(buf, BASE_TIMESTAMP),
            max_timestamp: be_i64(buf, MAX_TIMESTAMP),
            producer_id: be_i64(buf, PRODUCER_ID),
            producer_epoch: be_i16(buf, PRODUCER_EPOCH),
            base_sequence: be_i32(buf, BASE_SEQUENCE),
            records_count: be_i32(buf, RECORDS_COUNT),
        })
    }

    /// Total size on disk: batchLength + 12.
    pub fn size(&self) -> usize {
        self.batch_length as usize + LOG_OVERHEAD
    }

    /// Last offset in the batch.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    /// Offset after the batch.
    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }

    /// Compression codec.
    pub fn compression(&self) -> Compression {
        match (self.attributes & COMPRESSION_MASK) as u8 {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            c => Compression::Unknown(c),
        }
    }

    /// CreateTime or LogAppendTime.
    pub fn timestamp_type(&self) -> TimestampType {
        if self.attributes & TIMESTAMP_TYPE_MASK != 0 {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        }
    }

    /// Part of a transaction.
    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_MASK != 0
    }

    /// A control batch (transaction marker).
    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_MASK != 0
    }

    /// Sequence of the last record (wraps like Kafka's DefaultRecordBatch).
    pub fn last_sequence(&self) -> i32 {
        if self.base_sequence < 0 {
            return -1;
        }
        let last = i64::from(self.base_sequence) + i64::from(self.last_offset_delta);
        (last % (i64::from(i32::MAX) + 1)) as i32
    }

    /// Checks counts that do not need the record bytes.
    pub fn validate_counts(&self) -> Result<(), BatchError> {
        if self.last_offset_delta < 0 {
            return Err(BatchError::InvalidLastOffsetDelta(self.last_offset_delta));
        }
        if self.records_count < 0 || self.records_count > self.last_offset_delta.saturating_add(1) {
            return Err(BatchError::InvalidRecordCount {
                count: self.records_count,
                last_offset_delta: self.last_offset_delta,
            });
        }
        Ok(())
    }
}

/// CRC-32C of a whole batch's attributes..end.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[ATTRIBUTES..])
}

/// Parses and fully validates one batch at the start of `buf` (length in bounds, magic, CRC,
/// counts). Returns the header; the batch occupies `header.size()` bytes of `buf`.
pub fn validate_batch(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(buf)?;
    let size = header.size();
    if buf.len() < size {
        return Err(BatchError::Truncated {
            need: size,
            have: buf.len(),
        });
    }
    let computed = compute_crc(&buf[..size]);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    header.validate_counts()?;
    Ok(header)
}

/// Overwrites the base offset (not covered by the CRC).
pub fn set_base_offset(batch: &mut [u8], offset: i64) {
    batch[BASE_OFFSET..BASE_OFFSET + 8].copy_from_slice(&offset.to_be_bytes());
}

/// Overwrites the partition leader epoch (not covered by the CRC).
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    batch[PARTITION_LEADER_EPOCH..PARTITION_LEADER_EPOCH + 4].copy_from_slice(&epoch.to_be_bytes());
}

/// Sets a CreateTime batch's max timestamp to `ts` and recomputes the CRC (Kafka's
/// `setMaxTimestamp(CREATE_TIME, ts)` when the records disagree with the header).
pub fn set_max_timestamp(batch: &mut [u8], ts: i64) {
    batch[MAX_TIMESTAMP..MAX_TIMESTAMP + 8].copy_from_slice(&ts.to_be_bytes());
    let crc = compute_crc(batch);
    batch[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Whether any batch of `records` (walked by headers only, stopping at the first malformed
/// one, which validation reports) is compressed with `codec`.
pub fn uses_codec(records: &[u8], codec: Compression) -> bool {
    BatchIter::headers_only(records)
        .map_while(Result::ok)
        .any(|(_, h)| h.compression() == codec)
}

/// Marks the batch LogAppendTime with max timestamp `ts` and recomputes the CRC (both fields
/// are covered by it), as Kafka's `setMaxTimestamp(LOG_APPEND_TIME, ts)` does.
pub fn set_log_append_time(batch: &mut [u8], ts: i64) {
    let attrs = be_i16(batch, ATTRIBUTES) | TIMESTAMP_TYPE_MASK;
    batch[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&attrs.to_be_bytes());
    batch[MAX_TIMESTAMP..MAX_TIMESTAMP + 8].copy_from_slice(&ts.to_be_bytes());
    let crc = compute_crc(batch);
    batch[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Iterates over the batches of a buffer, validating each (header, length, CRC, counts).
/// Yields `(position, header)`; after an error it yields nothing more.
pub struct BatchIter<'a> {
    buf: &'a [u8],
    pos: usize,
    failed: bool,
    verify_crc: bool,
}

impl<'a> BatchIter<'a> {
    /// Iterates with full validation including CRC.
    pub fn new(buf: &'a [u8]) -> Self {
        BatchIter {
            buf,
            pos: 0,
            failed: false,
            verify_crc: true,
        }
    }

    /// Iterates headers only (lengths and magic), skipping CRC checks.
    pub fn headers_only(buf: &'a [u8]) -> Self {
        BatchIter {
            buf,
            pos: 0,
            failed: false,
            verify_crc: false,
        }
    }

    /// Position of the next batch (after the last yielded one).
    pub fn position(&self) -> usize {
        self.pos
    }
}

impl Iterator for BatchIter<'_> {
    type Item = Result<(usize, BatchHeader), BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        let rest = &self.buf[self.pos..];
        let res = if self.verify_crc {
            validate_batch(rest)
        } else {
            BatchHeader::parse(rest).and_then(|h| {
                if rest.len() < h.size() {
                    Err(BatchError::Truncated {
                        need: h.size(),
                        have: rest.len(),
                    })
                } else {
                    Ok(h)
                }
            })
        };
        match res {
            Ok(h) => {
                let at = self.pos;
                self.pos += h.size();
                Some(Ok((at, h)))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Reads a zigzag varint (Kafka's varint/varlong) from `buf[*pos..]`.
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

/// One record of an uncompressed batch, as far as the log layer cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordInfo {
    /// Offset delta from the batch base offset.
    pub offset_delta: i32,
    /// Timestamp delta from the batch base timestamp.
    pub timestamp_delta: i64,
}

/// Walks the records of an uncompressed batch, checking that each one is well formed, that
/// offset deltas are 0..count and that the records fill the batch exactly.
pub fn uncompressed_records(
    batch: &[u8],
    header: &BatchHeader,
) -> Result<Vec<RecordInfo>, BatchError> {
    let mut out = Vec::with_capacity(header.records_count.clamp(0, 1 << 16) as usize);
    for_each_uncompressed_record(batch, header, |r| out.push(r))?;
    Ok(out)
}

/// Like `uncompressed_records` without allocating: calls `visit` for each record.
pub fn for_each_uncompressed_record(
    batch: &[u8],
    header: &BatchHeader,
    visit: impl FnMut(RecordInfo),
) -> Result<(), BatchError> {
    let end = header.size().min(batch.len());
    if end < HEADER_SIZE {
        return Err(BatchError::Truncated {
            need: HEADER_SIZE,
            have: end,
        });
    }
    for_each_record(&batch[HEADER_SIZE..end], header.records_count, visit)
}

/// Walks `count` records laid out back to back in `records` (the records section of an
/// uncompressed batch, or the decompressed payload of a compressed one), with the same checks
/// as `for_each_uncompressed_record`.
pub fn for_each_record(
    records: &[u8],
    count: i32,
    mut visit: impl FnMut(RecordInfo),
) -> Result<(), BatchError> {
    let batch = records;
    let end = records.len();
    let mut pos = 0;
    for i in 0..count {
        let len = read_varlong(batch, &mut pos)?;
        if len < 0 || pos as i64 + len > end as i64 {
            return Err(BatchError::InvalidRecord(format!(
                "record {i} has length {len}"
            )));
        }
        let rec_end = pos + len as usize;
        let rec = &batch[..rec_end];
        let mut p = pos + 1; // attributes
        if p > rec_end {
            return Err(BatchError::InvalidRecord(format!("record {i} is empty")));
        }
        let timestamp_delta = read_varlong(rec, &mut p)?;
        let offset_delta = read_varlong(rec, &mut p)?;
        if offset_delta != i64::from(i) {
            return Err(BatchError::InvalidRecord(format!(
                "record {i} has offset delta {offset_delta}"
            )));
        }
        for what in ["key", "value"] {
            let l = read_varlong(rec, &mut p)?;
            if l < -1 || (l > 0 && p as i64 + l > rec_end as i64) {
                return Err(BatchError::InvalidRecord(format!(
                    "record {i} {what} length {l}"
                )));
            }
            if l > 0 {
                p += l as usize;
            }
        }
        let headers = read_varlong(rec, &mut p)?;
        if headers < 0 {
            return Err(BatchError::InvalidRecord(format!(
                "record {i} has {headers} headers"
            )));
        }
        for _ in 0..headers {
            let kl = read_varlong(rec, &mut p)?;
            if kl < 0 || p as i64 + kl > rec_end as i64 {
                return Err(BatchError::InvalidRecord(format!(
                    "record {i} header key length {kl}"
                )));
            }
            p += kl as usize;
            let vl = read_varlong(rec, &mut p)?;
            if vl < -1 || (vl > 0 && p as i64 + vl > rec_end as i64) {
                return Err(BatchError::InvalidRecord(format!(
                    "record {i} header value length {vl}"
                )));
            }
            if vl > 0 {
                p += vl as usize;
            }
        }
        if p != rec_end {
            return Err(BatchError::InvalidRecord(format!(
                "record {i} has {} stray bytes",
                rec_end as i64 - p as i64
            )));
        }
        pos = rec_end;
        visit(RecordInfo {
            offset_delta: offset_delta as i32,
            timestamp_delta,
        });
    }
    if pos != end {
        return Err(BatchError::InvalidRecord(format!(
            "{} bytes after the last record",
            end - pos
        )));
    }
    Ok(())
}

/// Builders used by tests, benches and tools to make valid batches.
pub mod builder {
    use super::*;

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

    /// Options for `build_batch`.
    #[derive(Debug, Clone)]
    pub struct BatchSpec {
        /// Base offset to write into the header.
        pub base_offset: i64,
        /// Partition leader epoch to write.
        pub partition_leader_epoch: i32,
        /// First record timestamp.
        pub base_timestamp: i64,
        /// Producer id (-1 for none).
        pub producer_id: i64,
        /// Producer epoch.
        pub producer_epoch: i16,
        /// Base sequence.
        pub base_sequence: i32,
        /// Raw attributes.
        pub attributes: i16,
    }

    impl Default for BatchSpec {
        fn default() -> Self {
            BatchSpec {
                base_offset: 0,
                partition_leader_epoch: -1,
                base_timestamp: 0,
                producer_id: -1,
                producer_epoch: -1,
                base_sequence: -1,
                attributes: 0,
            }
        }
    }

    /// Builds an uncompressed batch holding `values` (no keys, no headers); record i has
    /// timestamp `base_timestamp + i`.
    pub fn build_batch(spec: &BatchSpec, values: &[&[u8]]) -> Vec<u8> {
        let mut records = Vec::new();
        for (i, v) in values.iter().enumerate() {
            let mut body = Vec::with_capacity(v.len() + 16);
            body.push(0);
            put_varlong(&mut body, i as i64);
            put_varlong(&mut body, i as i64);
            put_varlong(&mut body, -1);
            put_varlong(&mut body, v.len() as i64);
            body.extend_from_slice(v);
            put_varlong(&mut body, 0);
            put_varlong(&mut records, body.len() as i64);
            records.extend_from_slice(&body);
        }
        let n = values.len() as i32;
        let mut b = Vec::with_capacity(HEADER_SIZE + records.len());
        b.extend_from_slice(&spec.base_offset.to_be_bytes());
        b.extend_from_slice(&((HEADER_SIZE - LOG_OVERHEAD + records.len()) as i32).to_be_bytes());
        b.extend_from_slice(&spec.partition_leader_epoch.to_be_bytes());
        b.push(MAGIC_V2 as u8);
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&spec.attributes.to_be_bytes());
        b.extend_from_slice(&(n - 1).max(0).to_be_bytes());
        b.extend_from_slice(&spec.base_timestamp.to_be_bytes());
        let max_ts = spec.base_timestamp + i64::from((n - 1).max(0));
        b.extend_from_slice(&max_ts.to_be_bytes());
        b.extend_from_slice(&spec.producer_id.to_be_bytes());
        b.extend_from_slice(&spec.producer_epoch.to_be_bytes());
        b.extend_from_slice(&spec.base_sequence.to_be_bytes());
        b.extend_from_slice(&n.to_be_bytes());
        b.extend_from_slice(&records);
        let crc = compute_crc(&b);
        b[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// Builds a batch whose record i has timestamp `timestamps[i]` (the header's base
    /// timestamp is the first), records section compressed with `codec`, and `max_timestamp`
    /// in the header (`None` = the records' max, as a correct producer writes it).
    pub fn build_timed_batch(
        spec: &BatchSpec,
        timestamps: &[i64],
        codec: Compression,
        max_timestamp: Option<i64>,
    ) -> Result<Vec<u8>, String> {
        let base_ts = timestamps.first().copied().unwrap_or(spec.base_timestamp);
        let mut section = Vec::new();
        for (i, ts) in timestamps.iter().enumerate() {
            crate::storage::cleaner::records::encode_record(
                &mut section,
                i as i32,
                ts - base_ts,
                None,
                Some(format!("value-{i}").as_bytes()),
            );
        }
        let payload = crate::storage::cleaner::records::compress(codec, &section)
            .map_err(|e| e.to_string())?;
        let codec_bits: i16 = match codec {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
            Compression::Unknown(c) => i16::from(c),
        };
        let n = timestamps.len() as i32;
        let max_ts =
            max_timestamp.unwrap_or_else(|| timestamps.iter().copied().max().unwrap_or(-1));
        let mut b = Vec::with_capacity(HEADER_SIZE + payload.len());
        b.extend_from_slice(&spec.base_offset.to_be_bytes());
        b.extend_from_slice(&((HEADER_SIZE - LOG_OVERHEAD + payload.len()) as i32).to_be_bytes());
        b.extend_from_slice(&spec.partition_leader_epoch.to_be_bytes());
        b.push(MAGIC_V2 as u8);
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&((spec.attributes & !COMPRESSION_MASK) | codec_bits).to_be_bytes());
        b.extend_from_slice(&(n - 1).max(0).to_be_bytes());
        b.extend_from_slice(&base_ts.to_be_bytes());
        b.extend_from_slice(&max_ts.to_be_bytes());
        b.extend_from_slice(&spec.producer_id.to_be_bytes());
        b.extend_from_slice(&spec.producer_epoch.to_be_bytes());
        b.extend_from_slice(&spec.base_sequence.to_be_bytes());
        b.extend_from_slice(&n.to_be_bytes());
        b.extend_from_slice(&payload);
        let crc = compute_crc(&b);
        b[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::builder::*;
    use super::*;

    #[test]
    fn roundtrip_header_and_records() {
        let spec = BatchSpec {
            base_timestamp: 1000,
            producer_id: 7,
            base_sequence: 3,
            ..Default::default()
        };
        let b = build_batch(&spec, &[b"a", b"bb", b"ccc"]);
        let h = validate_batch(&b).unwrap();
        assert_eq!(h.size(), b.len());
        assert_eq!(h.records_count, 3);
        assert_eq!(h.last_offset_delta, 2);
        assert_eq!(h.max_timestamp, 1002);
        assert_eq!(h.producer_id, 7);
        assert_eq!(h.last_sequence(), 5);
        assert_eq!(h.compression(), Compression::None);
        let recs = uncompressed_records(&b, &h).unwrap();
        assert_eq!(recs.len(), 3);
        assert_eq!(
            recs[2],
            RecordInfo {
                offset_delta: 2,
                timestamp_delta: 2
            }
        );
    }

    #[test]
    fn stamping_offset_and_epoch_keeps_crc() {
        let mut b = build_batch(&BatchSpec::default(), &[b"x"]);
        set_base_offset(&mut b, 42);
        set_partition_leader_epoch(&mut b, 9);
        let h = validate_batch(&b).unwrap();
        assert_eq!((h.base_offset, h.partition_leader_epoch), (42, 9));
        set_log_append_time(&mut b, 555);
        let h = validate_batch(&b).unwrap();
        assert_eq!(h.timestamp_type(), TimestampType::LogAppendTime);
        assert_eq!(h.max_timestamp, 555);
    }

    #[test]
    fn rejects_bad_input_without_panicking() {
        let b = build_batch(&BatchSpec::default(), &[b"hello", b"world"]);
        for cut in 0..b.len() {
            assert!(validate_batch(&b[..cut]).is_err(), "cut at {cut}");
        }
        for i in ATTRIBUTES..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x40;
            assert!(
                matches!(validate_batch(&c), Err(BatchError::CrcMismatch { .. })),
                "flip {i}"
            );
        }
        let mut c = b.clone();
        c[MAGIC] = 1;
        assert_eq!(validate_batch(&c), Err(BatchError::UnsupportedMagic(1)));
        let mut c = b.clone();
        c[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(matches!(
            validate_batch(&c),
            Err(BatchError::Truncated { .. })
        ));
        let mut c = b.clone();
        c[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&(-5i32).to_be_bytes());
        assert_eq!(validate_batch(&c), Err(BatchError::InvalidLength(-5)));
        // Negative count with a recomputed CRC is still rejected.
        let mut c = b.clone();
        c[RECORDS_COUNT..RECORDS_COUNT + 4].copy_from_slice(&(-1i32).to_be_bytes());
        let crc = compute_crc(&c);
        c[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            validate_batch(&c),
            Err(BatchError::InvalidRecordCount { .. })
        ));
    }

    #[test]
    fn garbage_records_are_invalid() {
        let mut b = build_batch(&BatchSpec::default(), &[b"hello"]);
        b[HEADER_SIZE] = 0x7f; // record length varint now points past the end
        let crc = compute_crc(&b);
        b[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
        let h = validate_batch(&b).unwrap();
        assert!(uncompressed_records(&b, &h).is_err());
    }

    #[test]
    fn iterates_multiple_batches_and_stops_at_a_torn_tail() {
        let mut buf = build_batch(&BatchSpec::default(), &[b"a"]);
        buf.extend(build_batch(
            &BatchSpec {
                base_offset: 1,
                ..Default::default()
            },
            &[b"b", b"c"],
        ));
        let whole = buf.len();
        buf.extend_from_slice(&build_batch(&BatchSpec::default(), &[b"z"])[..20]);
        let mut it = BatchIter::new(&buf);
        assert_eq!(it.next().unwrap().unwrap().1.base_offset, 0);
        assert_eq!(it.next().unwrap().unwrap().1.base_offset, 1);
        assert_eq!(it.position(), whole);
        assert!(it.next().unwrap().is_err());
        assert!(it.next().is_none());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Arbitrary bytes and mutated batches never panic any decoder.
        #[test]
        fn decoders_never_panic(
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            flips in proptest::collection::vec((0usize..400, proptest::prelude::any::<u8>()), 0..8),
        ) {
            let _ = validate_batch(&noise);
            for item in BatchIter::new(&noise) { let _ = item; }
            if let Ok(h) = BatchHeader::parse(&noise) {
                let _ = uncompressed_records(&noise, &h);
                let _ = h.last_sequence();
            }
            let mut b = build_batch(&BatchSpec::default(), &[b"key-less", b"values", b""]);
            for (at, x) in flips {
                let n = b.len();
                b[at % n] ^= x;
            }
            // Recompute the CRC so the record walker sees the damage too.
            if b.len() >= HEADER_SIZE {
                let crc = compute_crc(&b);
                b[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
            }
            if let Ok(h) = validate_batch(&b) {
                let _ = uncompressed_records(&b, &h);
            }
        }
    }
}
