//! Sans-IO validation of produce (leader) and replica-fetch (follower) record sets.

use super::config::{LogConfig, TimestampType};
use super::decompress::{decompress_records, DecompressError};
use super::error::AppendError;
use super::record_batch::{
    for_each_record, for_each_uncompressed_record, set_max_timestamp, validate_batch, BatchError,
    BatchHeader, Compression, RecordInfo, HEADER_SIZE, NO_TIMESTAMP,
};

/// Compressed records are decompressed into at most this many times `max.message.bytes`
/// (codecs rarely beat 4:1 on real data; more than that is a hostile or corrupt batch).
pub const DECOMPRESS_LIMIT_FACTOR: usize = 4;

/// Checks that `records` is a sequence of whole, CRC-valid v2 batches within the size limits.
/// Returns each batch's position and header.
fn split_batches(
    records: &[u8],
    cfg: &LogConfig,
    check_message_size: bool,
) -> Result<Vec<(usize, BatchHeader)>, AppendError> {
    if records.len() as u64 > cfg.segment_bytes {
        return Err(AppendError::RecordListTooLarge {
            size: records.len(),
            max: cfg.segment_bytes,
        });
    }
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < records.len() {
        let rest = &records[pos..];
        let h = match validate_batch(rest) {
            Ok(h) => h,
            Err(BatchError::UnsupportedMagic(m)) if m == 0 || m == 1 => {
                return Err(AppendError::UnsupportedMagic(m))
            }
            Err(
                e @ (BatchError::InvalidRecordCount { .. } | BatchError::InvalidLastOffsetDelta(_)),
            ) => {
                return Err(AppendError::InvalidRecord(format!(
                    "batch at byte {pos}: {e}"
                )))
            }
            Err(source) => {
                return Err(AppendError::Corrupt {
                    position: pos,
                    source,
                })
            }
        };
        if check_message_size && h.size() > cfg.max_message_bytes as usize {
            return Err(AppendError::RecordTooLarge {
                size: h.size(),
                max: cfg.max_message_bytes,
            });
        }
        out.push((pos, h));
        pos += h.size();
    }
    Ok(out)
}

/// Validates a producer's record set as Kafka's LogValidator does for v2 and fixes each batch's
/// max timestamp in place (CRC recomputed) when the records disagree with the header.
///
/// - Structure, CRC, counts (`recordsCount == lastOffsetDelta + 1 >= 1`), a sequence for every
///   batch with a producer id, no LogAppendTime attribute from a client.
/// - Uncompressed batches: every record is walked (cheap: varints only), which gives the
///   records' max timestamp and checks each against `message.timestamp.before/after.max.ms`.
/// - Compressed batches: the header is trusted unless its max timestamp is -1 or below the
///   base timestamp; a suspect header, or a configured timestamp window (Kafka checks every
///   record), decompresses the records, bounded by `DECOMPRESS_LIMIT_FACTOR` x
///   `max.message.bytes`. The default configuration never decompresses a well-formed batch.
///
/// LogAppendTime topics skip the timestamp work: the append stamps the broker's clock.
pub fn validate_leader(
    records: &mut [u8],
    cfg: &LogConfig,
    now_ms: i64,
) -> Result<Vec<(usize, BatchHeader)>, AppendError> {
    let mut batches = split_batches(records, cfg, true)?;
    let create_time = cfg.message_timestamp_type == TimestampType::CreateTime;
    let window = TimestampWindow::of(cfg, now_ms);
    for (pos, h) in &mut batches {
        let pos = *pos;
        let batch = &mut records[pos..pos + h.size()];
        if h.records_count < 1 || h.records_count != h.last_offset_delta.saturating_add(1) {
            return Err(AppendError::InvalidRecord(format!(
                "batch at byte {pos}: {} records but lastOffsetDelta {}",
                h.records_count, h.last_offset_delta
            )));
        }
        if h.base_timestamp < NO_TIMESTAMP || h.max_timestamp < NO_TIMESTAMP {
            return Err(AppendError::InvalidTimestamp(format!(
                "batch at byte {pos}: base timestamp {}, max timestamp {}",
                h.base_timestamp, h.max_timestamp
            )));
        }
        if !h.is_control() {
            if h.producer_id >= 0 && h.base_sequence < 0 {
                return Err(AppendError::InvalidRecord(format!(
                    "batch at byte {pos}: invalid sequence number {} for producer id {}",
                    h.base_sequence, h.producer_id
                )));
            }
            if h.timestamp_type() == TimestampType::LogAppendTime {
                return Err(AppendError::InvalidTimestamp(format!(
                    "batch at byte {pos}: a producer may not set the timestamp type to LogAppendTime"
                )));
            }
        }
        let codec = h.compression();
        if let Compression::Unknown(c) = codec {
            return Err(AppendError::InvalidRecord(format!(
                "batch at byte {pos}: unknown compression codec {c}"
            )));
        }
        let times = if codec == Compression::None {
            let mut times = RecordTimes::new(h.base_timestamp);
            for_each_uncompressed_record(batch, h, |r| times.visit(r))
                .map_err(|e| AppendError::InvalidRecord(format!("batch at byte {pos}: {e}")))?;
            Some(times)
        } else if create_time && (!header_trusted(h) || window.is_bounded()) {
            compressed_record_times(batch, h, pos, cfg, window.is_bounded())?
        } else {
            None
        };
        // `None` here: a trusted compressed header with no window configured (nothing to check
        // and nothing to fix), or one too large to decompress with no window.
        if let Some(t) = times.filter(|_| create_time) {
            window.check(&t, pos)?;
            if t.max != h.max_timestamp {
                set_max_timestamp(batch, t.max);
                h.max_timestamp = t.max;
            }
            debug_assert_eq!(
                BatchHeader::parse(batch).map(|p| p.max_timestamp),
                Ok(t.max)
            );
        }
        if cfg.compact {
            check_keyed(batch, h, pos, cfg)?;
        }
    }
    Ok(batches)
}

/// A compressed batch header is taken at its word (Kafka decompresses every batch; Sluice only
/// those whose header cannot be right): a real max timestamp no smaller than the first record's.
fn header_trusted(h: &BatchHeader) -> bool {
    h.max_timestamp >= 0 && h.base_timestamp >= 0 && h.max_timestamp >= h.base_timestamp
}

/// The records' timestamps of a compressed batch, decompressed within the bound. A batch that
/// decompresses past the bound keeps its header (`None`) unless a timestamp window must be
/// checked, which then cannot be and refuses the batch.
fn compressed_record_times(
    batch: &[u8],
    h: &BatchHeader,
    pos: usize,
    cfg: &LogConfig,
    must_check: bool,
) -> Result<Option<RecordTimes>, AppendError> {
    let limit = (cfg.max_message_bytes as usize).saturating_mul(DECOMPRESS_LIMIT_FACTOR);
    let body = batch.get(HEADER_SIZE..).unwrap_or_default();
    let section = match decompress_records(h.compression(), body, limit) {
        Ok(s) => s,
        Err(DecompressError::TooLarge { limit }) if !must_check => {
            tracing::debug!(
                position = pos,
                limit,
                "compressed batch too large to recompute its max timestamp; header kept"
            );
            return Ok(None);
        }
        Err(e @ DecompressError::TooLarge { .. }) => {
            return Err(AppendError::InvalidRecord(format!(
                "batch at byte {pos}: cannot check record timestamps: {e}"
            )))
        }
        Err(e) => {
            return Err(AppendError::Corrupt {
                position: pos,
                source: BatchError::InvalidRecord(e.to_string()),
            })
        }
    };
    let mut times = RecordTimes::new(h.base_timestamp);
    for_each_record(&section, h.records_count, |r| times.visit(r))
        .map_err(|e| AppendError::InvalidRecord(format!("batch at byte {pos}: {e}")))?;
    Ok(Some(times))
}

/// What the record walk learns about timestamps: the max (Kafka's `maxTimestamp`, which starts
/// at -1) and the smallest and largest real (not -1) record timestamps with their indexes.
#[derive(Debug, Clone, Copy)]
struct RecordTimes {
    base: i64,
    index: i32,
    max: i64,
    oldest: Option<(i64, i32)>,
    newest: Option<(i64, i32)>,
}

impl RecordTimes {
    fn new(base: i64) -> Self {
        RecordTimes {
            base,
            index: 0,
            max: NO_TIMESTAMP,
            oldest: None,
            newest: None,
        }
    }

    fn visit(&mut self, r: RecordInfo) {
        let ts = self.base.saturating_add(r.timestamp_delta);
        self.max = self.max.max(ts);
        if ts != NO_TIMESTAMP {
            if self.oldest.is_none_or(|(o, _)| ts < o) {
                self.oldest = Some((ts, self.index));
            }
            if self.newest.is_none_or(|(n, _)| ts > n) {
                self.newest = Some((ts, self.index));
            }
        }
        self.index = self.index.saturating_add(1);
    }
}

/// Kafka's `message.timestamp.before.max.ms` / `after.max.ms` around the broker's clock.
#[derive(Debug, Clone, Copy)]
struct TimestampWindow {
    now_ms: i64,
    before_max_ms: i64,
    after_max_ms: i64,
}

impl TimestampWindow {
    fn of(cfg: &LogConfig, now_ms: i64) -> Self {
        TimestampWindow {
            now_ms,
            before_max_ms: cfg.message_timestamp_before_max_ms,
            after_max_ms: cfg.message_timestamp_after_max_ms,
        }
    }

    /// Whether any record timestamp could be refused (the defaults accept everything).
    fn is_bounded(&self) -> bool {
        self.before_max_ms < i64::MAX || self.after_max_ms < i64::MAX
    }

    fn check(&self, t: &RecordTimes, pos: usize) -> Result<(), AppendError> {
        let lo = self.now_ms.saturating_sub(self.before_max_ms);
        let hi = self.now_ms.saturating_add(self.after_max_ms);
        let out = |(ts, i): (i64, i32)| {
            AppendError::InvalidTimestamp(format!(
                "timestamp {ts} of record {i} in the batch at byte {pos} is out of range: \
                 it must be within [{lo}, {hi}]"
            ))
        };
        if let Some(old) = t
            .oldest
            .filter(|&(ts, _)| self.now_ms.saturating_sub(ts) > self.before_max_ms)
        {
            return Err(out(old));
        }
        if let Some(new) = t
            .newest
            .filter(|&(ts, _)| ts.saturating_sub(self.now_ms) > self.after_max_ms)
        {
            return Err(out(new));
        }
        Ok(())
    }
}

/// Kafka's LogValidator for compacted topics: every record needs a key (`INVALID_RECORD`).
/// Compressed batches are decompressed for this, up to 4 x `max.message.bytes`.
fn check_keyed(
    batch: &[u8],
    h: &BatchHeader,
    pos: usize,
    cfg: &LogConfig,
) -> Result<(), AppendError> {
    let limit = (cfg.max_message_bytes as usize).saturating_mul(4);
    match super::cleaner::records::first_keyless_record(batch, h, limit) {
        Ok(None) => Ok(()),
        Ok(Some(i)) => Err(AppendError::InvalidRecord(format!(
            "batch at byte {pos}: record {i} has no key, which a compacted topic requires"
        ))),
        Err(e) => Err(AppendError::InvalidRecord(format!(
            "batch at byte {pos}: {e}"
        ))),
    }
}

/// Validates a follower's record set: whole CRC-valid batches, contiguous offsets starting
/// at `log_end_offset`.
pub fn validate_follower(
    records: &[u8],
    cfg: &LogConfig,
    log_end_offset: i64,
) -> Result<Vec<(usize, BatchHeader)>, AppendError> {
    // Like Kafka, a follower does not apply max.message.bytes: it must copy whatever the
    // leader accepted, even if the topic config changed since.
    let batches = split_batches(records, cfg, false)?;
    // Offsets only go up. A gap (base offset above the previous batch's end) is what log
    // compaction leaves on the leader; a follower accepts it, as Kafka's do.
    let mut expected = log_end_offset;
    for &(_, h) in &batches {
        if h.base_offset < expected {
            return Err(AppendError::NonContiguous {
                expected,
                got: h.base_offset,
            });
        }
        expected = h.next_offset();
    }
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use super::super::record_batch::builder::{build_batch, build_timed_batch, BatchSpec};
    use super::*;

    fn leader(b: &[u8], cfg: &LogConfig) -> Result<Vec<(usize, BatchHeader)>, AppendError> {
        validate_leader(&mut b.to_vec(), cfg, 0)
    }

    #[test]
    fn leader_error_codes() {
        let cfg = LogConfig::default();
        let good = build_batch(&BatchSpec::default(), &[b"a", b"b"]);
        assert_eq!(leader(&good, &cfg).unwrap().len(), 1);
        let mut two = good.clone();
        two.extend_from_slice(&good);
        assert_eq!(leader(&two, &cfg).unwrap().len(), 2);
        assert!(leader(&[], &cfg).unwrap().is_empty());

        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(leader(&bad, &cfg).unwrap_err().kafka_error_code(), 2);
        assert_eq!(
            leader(&good[..good.len() - 1], &cfg)
                .unwrap_err()
                .kafka_error_code(),
            2
        );

        let small = LogConfig {
            max_message_bytes: 10,
            ..cfg
        };
        assert_eq!(leader(&good, &small).unwrap_err().kafka_error_code(), 10);
        let tiny_segment = LogConfig {
            segment_bytes: 10,
            ..cfg
        };
        assert_eq!(
            leader(&good, &tiny_segment).unwrap_err().kafka_error_code(),
            18
        );

        let mut old = good.clone();
        old[16] = 1;
        assert_eq!(leader(&old, &cfg).unwrap_err().kafka_error_code(), 43);

        let neg_ts = build_batch(
            &BatchSpec {
                base_timestamp: -5,
                ..Default::default()
            },
            &[b"a"],
        );
        assert_eq!(leader(&neg_ts, &cfg).unwrap_err().kafka_error_code(), 32);
    }

    #[test]
    fn follower_must_be_contiguous() {
        let cfg = LogConfig::default();
        let a = build_batch(
            &BatchSpec {
                base_offset: 5,
                ..Default::default()
            },
            &[b"a", b"b"],
        );
        let b = build_batch(
            &BatchSpec {
                base_offset: 7,
                ..Default::default()
            },
            &[b"c"],
        );
        let mut both = a.clone();
        both.extend_from_slice(&b);
        assert_eq!(validate_follower(&both, &cfg, 5).unwrap().len(), 2);
        // A gap before the first batch or between batches is what cleaning leaves: accepted.
        assert_eq!(validate_follower(&both, &cfg, 4).unwrap().len(), 2);
        let mut gap = a.clone();
        gap.extend_from_slice(&build_batch(
            &BatchSpec {
                base_offset: 9,
                ..Default::default()
            },
            &[b"c"],
        ));
        assert_eq!(validate_follower(&gap, &cfg, 5).unwrap().len(), 2);
        // Going back is not.
        assert!(matches!(
            validate_follower(&both, &cfg, 6),
            Err(AppendError::NonContiguous {
                expected: 6,
                got: 5
            })
        ));
        let mut back = b.clone();
        back.extend_from_slice(&a);
        assert!(matches!(
            validate_follower(&back, &cfg, 7),
            Err(AppendError::NonContiguous {
                expected: 8,
                got: 5
            })
        ));
    }

    fn timed(ts: &[i64], codec: Compression, max: Option<i64>) -> Vec<u8> {
        build_timed_batch(&BatchSpec::default(), ts, codec, max).unwrap()
    }

    fn windowed(before: i64, after: i64) -> LogConfig {
        LogConfig {
            message_timestamp_before_max_ms: before,
            message_timestamp_after_max_ms: after,
            ..LogConfig::default()
        }
    }

    #[test]
    fn minus_one_header_gets_the_records_max_and_a_new_crc() {
        let cfg = LogConfig::default();
        for codec in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let mut b = timed(&[1000, 1040, 1010, 1020], codec, Some(-1));
            let [(_, h)] = validate_leader(&mut b, &cfg, 0).unwrap()[..] else {
                panic!("one batch")
            };
            assert_eq!(h.max_timestamp, 1040, "{codec}");
            let stored = validate_batch(&b).expect("CRC recomputed");
            assert_eq!(stored.max_timestamp, 1040, "{codec}");
            assert_eq!(stored.compression(), codec);
        }
    }

    #[test]
    fn wrong_headers_are_fixed_when_they_cannot_be_trusted() {
        let cfg = LogConfig::default();
        // Uncompressed: the records are walked anyway, so any disagreement is fixed.
        let mut b = timed(&[1000, 1500], Compression::None, Some(1200));
        assert_eq!(
            validate_leader(&mut b, &cfg, 0).unwrap()[0].1.max_timestamp,
            1500
        );
        // Compressed, max below the base timestamp: suspect, recomputed.
        let mut b = timed(&[1000, 1500], Compression::Gzip, Some(900));
        assert_eq!(
            validate_leader(&mut b, &cfg, 0).unwrap()[0].1.max_timestamp,
            1500
        );
        // Compressed, plausible header, no window: trusted as sent (not decompressed).
        let mut b = timed(&[1000, 1500], Compression::Gzip, Some(1200));
        let before = b.clone();
        assert_eq!(
            validate_leader(&mut b, &cfg, 0).unwrap()[0].1.max_timestamp,
            1200
        );
        assert_eq!(b, before);
        // A correct header is left byte for byte.
        for codec in [Compression::None, Compression::Zstd] {
            let mut b = timed(&[5, 9, 7], codec, None);
            let before = b.clone();
            validate_leader(&mut b, &cfg, 0).unwrap();
            assert_eq!(b, before, "{codec}");
        }
        // Records without timestamps keep -1, as in Kafka.
        let mut b = timed(&[-1, -1], Compression::None, Some(-1));
        assert_eq!(
            validate_leader(&mut b, &cfg, 0).unwrap()[0].1.max_timestamp,
            -1
        );
    }

    #[test]
    fn log_append_time_topics_do_not_recompute() {
        let cfg = LogConfig {
            message_timestamp_type: TimestampType::LogAppendTime,
            ..windowed(10, 10)
        };
        let mut b = timed(&[1, 2], Compression::Gzip, Some(-1));
        let before = b.clone();
        // Out of any window, but LogAppendTime ignores the producer's times.
        validate_leader(&mut b, &cfg, 1_000_000).unwrap();
        assert_eq!(b, before);
    }

    #[test]
    fn timestamp_window_refuses_any_record_outside() {
        let now = 1_000_000;
        let cfg = windowed(1000, 100);
        for codec in [Compression::None, Compression::Gzip, Compression::Zstd] {
            for (ts, ok) in [
                (vec![now - 1000, now, now + 100], true),
                (vec![now, now - 1001, now], false),
                (vec![now, now + 101, now], false),
                (vec![now - 5000], false),
                (vec![now, -1, now], true),
            ] {
                for max in [None, Some(-1)] {
                    let mut b = timed(&ts, codec, max);
                    let r = validate_leader(&mut b, &cfg, now);
                    assert_eq!(r.is_ok(), ok, "{codec} {ts:?} {max:?}: {r:?}");
                    if let Err(e) = r {
                        assert_eq!(e.kafka_error_code(), 32, "{e}");
                    }
                }
            }
        }
        // Unbounded on one side only.
        let cfg = windowed(i64::MAX, 0);
        let mut old = timed(&[0], Compression::None, None);
        assert!(validate_leader(&mut old, &cfg, now).is_ok());
        let mut future = timed(&[now + 1], Compression::Zstd, None);
        assert_eq!(
            validate_leader(&mut future, &cfg, now)
                .unwrap_err()
                .kafka_error_code(),
            32
        );
    }

    #[test]
    fn client_rules_of_the_log_validator() {
        let cfg = LogConfig::default();
        let lat = BatchSpec {
            attributes: 0x08,
            ..Default::default()
        };
        let mut b = build_batch(&lat, &[b"a"]);
        assert_eq!(
            validate_leader(&mut b, &cfg, 0)
                .unwrap_err()
                .kafka_error_code(),
            32
        );
        let no_seq = BatchSpec {
            producer_id: 7,
            producer_epoch: 0,
            base_sequence: -1,
            ..Default::default()
        };
        let mut b = build_batch(&no_seq, &[b"a"]);
        assert_eq!(
            validate_leader(&mut b, &cfg, 0)
                .unwrap_err()
                .kafka_error_code(),
            87
        );
        // A compressed batch whose records disagree with its count, found when decompressed.
        let mut b = timed(&[1, 2, 3], Compression::Gzip, Some(-1));
        b[RECORDS_COUNT_AT..RECORDS_COUNT_AT + 4].copy_from_slice(&2i32.to_be_bytes());
        b[LAST_OFFSET_DELTA_AT..LAST_OFFSET_DELTA_AT + 4].copy_from_slice(&1i32.to_be_bytes());
        let crc = super::super::record_batch::compute_crc(&b);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(
            validate_leader(&mut b, &cfg, 0)
                .unwrap_err()
                .kafka_error_code(),
            87
        );
    }

    const RECORDS_COUNT_AT: usize = 57;
    const LAST_OFFSET_DELTA_AT: usize = 23;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
        /// Whatever the header says, a stored CreateTime batch whose header could not be
        /// trusted carries its records' max timestamp and a valid CRC; a window refuses exactly
        /// the batches with a record outside it.
        #[test]
        fn stored_max_timestamp_matches_the_records(
            ts in proptest::collection::vec(0i64..10_000, 1..20),
            codec in proptest::sample::select(vec![Compression::None, Compression::Gzip, Compression::Zstd]),
            header in proptest::option::of(-1i64..0),
            window in proptest::option::of((0i64..6_000, 0i64..6_000)),
        ) {
            let now = 5_000;
            let cfg = match window {
                Some((before, after)) => windowed(before, after),
                None => LogConfig::default(),
            };
            let mut b = timed(&ts, codec, header);
            let max = *ts.iter().max().unwrap();
            let inside = window.is_none_or(|(before, after)| {
                ts.iter().all(|&t| now - t <= before && t - now <= after)
            });
            match validate_leader(&mut b, &cfg, now) {
                Ok(v) => {
                    proptest::prop_assert!(inside);
                    proptest::prop_assert_eq!(v[0].1.max_timestamp, max);
                    let stored = validate_batch(&b).unwrap();
                    proptest::prop_assert_eq!(stored.max_timestamp, max);
                }
                Err(e) => {
                    proptest::prop_assert!(!inside, "{}", e);
                    proptest::prop_assert_eq!(e.kafka_error_code(), 32);
                }
            }
        }
    }
}
