//! Sans-IO validation of produce (leader) and replica-fetch (follower) record sets.

use super::config::LogConfig;
use super::error::AppendError;
use super::record_batch::{
    for_each_uncompressed_record, validate_batch, BatchError, BatchHeader, Compression,
    NO_TIMESTAMP,
};

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

/// Validates a producer's record set as Kafka's LogValidator does for v2 without
/// decompressing: structure, CRC, counts, uncompressed records, timestamps.
pub fn validate_leader(
    records: &[u8],
    cfg: &LogConfig,
) -> Result<Vec<(usize, BatchHeader)>, AppendError> {
    let batches = split_batches(records, cfg, true)?;
    for &(pos, h) in &batches {
        if h.records_count < 1 || h.records_count != h.last_offset_delta + 1 {
            return Err(AppendError::InvalidRecord(format!(
                "batch at byte {pos}: {} records but lastOffsetDelta {}",
                h.records_count, h.last_offset_delta
            )));
        }
        if h.compression() == Compression::None {
            for_each_uncompressed_record(&records[pos..pos + h.size()], &h, |_| {})
                .map_err(|e| AppendError::InvalidRecord(format!("batch at byte {pos}: {e}")))?;
        } else if let Compression::Unknown(c) = h.compression() {
            return Err(AppendError::InvalidRecord(format!(
                "batch at byte {pos}: unknown compression codec {c}"
            )));
        }
        if h.base_timestamp < NO_TIMESTAMP || h.max_timestamp < NO_TIMESTAMP {
            return Err(AppendError::InvalidTimestamp(format!(
                "batch at byte {pos}: base timestamp {}, max timestamp {}",
                h.base_timestamp, h.max_timestamp
            )));
        }
        if cfg.compact {
            check_keyed(&records[pos..pos + h.size()], &h, pos, cfg)?;
        }
    }
    Ok(batches)
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
    use super::super::record_batch::builder::{build_batch, BatchSpec};
    use super::*;

    #[test]
    fn leader_error_codes() {
        let cfg = LogConfig::default();
        let good = build_batch(&BatchSpec::default(), &[b"a", b"b"]);
        assert_eq!(validate_leader(&good, &cfg).unwrap().len(), 1);
        let mut two = good.clone();
        two.extend_from_slice(&good);
        assert_eq!(validate_leader(&two, &cfg).unwrap().len(), 2);
        assert!(validate_leader(&[], &cfg).unwrap().is_empty());

        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(
            validate_leader(&bad, &cfg).unwrap_err().kafka_error_code(),
            2
        );
        assert_eq!(
            validate_leader(&good[..good.len() - 1], &cfg)
                .unwrap_err()
                .kafka_error_code(),
            2
        );

        let small = LogConfig {
            max_message_bytes: 10,
            ..cfg
        };
        assert_eq!(
            validate_leader(&good, &small)
                .unwrap_err()
                .kafka_error_code(),
            10
        );
        let tiny_segment = LogConfig {
            segment_bytes: 10,
            ..cfg
        };
        assert_eq!(
            validate_leader(&good, &tiny_segment)
                .unwrap_err()
                .kafka_error_code(),
            18
        );

        let mut old = good.clone();
        old[16] = 1;
        assert_eq!(
            validate_leader(&old, &cfg).unwrap_err().kafka_error_code(),
            43
        );

        let neg_ts = build_batch(
            &BatchSpec {
                base_timestamp: -5,
                ..Default::default()
            },
            &[b"a"],
        );
        assert_eq!(
            validate_leader(&neg_ts, &cfg)
                .unwrap_err()
                .kafka_error_code(),
            32
        );
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
}
