//! Record batches in and out: kafka-protocol's encoder and decoder, plus trimming the partial
//! batch a Fetch response may end with.

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// A record to produce.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutRecord {
    /// Key, `None` for a null key.
    pub key: Option<Bytes>,
    /// Value, `None` for a tombstone.
    pub value: Option<Bytes>,
    /// Headers in order.
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// A consumed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InRecord {
    /// Offset.
    pub offset: i64,
    /// Timestamp in ms.
    pub timestamp: i64,
    /// Key.
    pub key: Option<Bytes>,
    /// Value.
    pub value: Option<Bytes>,
    /// Headers in order.
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// Parses a compression name as Kafka's `compression.type` spells it.
pub fn parse_compression(s: &str) -> Result<Compression, String> {
    match s {
        "none" => Ok(Compression::None),
        "gzip" => Ok(Compression::Gzip),
        "snappy" => Ok(Compression::Snappy),
        "lz4" => Ok(Compression::Lz4),
        "zstd" => Ok(Compression::Zstd),
        other => Err(format!(
            "unknown compression '{other}' (none, gzip, snappy, lz4, zstd)"
        )),
    }
}

/// Encodes `records` as one v2 batch with creation timestamp `now_ms`.
pub fn encode_batch(
    records: &[OutRecord],
    compression: Compression,
    now_ms: i64,
) -> anyhow::Result<Bytes> {
    let recs: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, r)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder starts a new batch unless offset - sequence stays constant; this keeps
            // one batch with base sequence -1 (no idempotence).
            sequence: i as i32 - 1,
            timestamp: now_ms,
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| (StrBytes::from_string(k.clone()), v.clone()))
                .collect::<IndexMap<_, _>>(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        recs.iter(),
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )?;
    Ok(buf.freeze())
}

/// Byte offset of `lastOffsetDelta` in a v2 batch header.
const LAST_OFFSET_DELTA_AT: usize = 23;

/// The prefix of `records` made of whole batches (a broker may cut the last batch of a Fetch
/// response at the size limit; the client asks again from where it stopped), and the offset
/// after the last whole batch.
pub fn whole_batches(records: &Bytes) -> (Bytes, Option<i64>) {
    let mut end = 0usize;
    let mut next_offset = None;
    while records.len() >= end + LAST_OFFSET_DELTA_AT + 4 {
        let h = &records[end..];
        let len = i32::from_be_bytes([h[8], h[9], h[10], h[11]]);
        let Ok(len) = usize::try_from(len) else { break };
        let size = 12 + len;
        if end + size > records.len() || size < LAST_OFFSET_DELTA_AT + 4 {
            break;
        }
        let base = i64::from_be_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]);
        let delta = i32::from_be_bytes([h[23], h[24], h[25], h[26]]);
        next_offset = Some(base + i64::from(delta) + 1);
        end += size;
    }
    (records.slice(..end), next_offset)
}

/// The records of a fetched record set at or after `from_offset` (a fetch returns the whole
/// batch holding the requested offset), control records left out, and the position after
/// the last whole batch. That position moves past batches with nothing to show (transaction
/// markers, batches emptied by compaction), so a consumer never fetches them again.
pub fn decode_records(
    records: &Bytes,
    from_offset: i64,
) -> anyhow::Result<(Vec<InRecord>, Option<i64>)> {
    let (mut buf, next_offset) = whole_batches(records);
    let mut out = Vec::new();
    for set in RecordBatchDecoder::decode_all(&mut buf)? {
        for r in set.records {
            if r.control || r.offset < from_offset {
                continue;
            }
            out.push(InRecord {
                offset: r.offset,
                timestamp: r.timestamp,
                key: r.key,
                value: r.value,
                headers: r
                    .headers
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            });
        }
    }
    Ok((out, next_offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize) -> Vec<OutRecord> {
        (0..n)
            .map(|i| OutRecord {
                key: Some(Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(format!("v{i}"))),
                headers: vec![("h".into(), Some(Bytes::from_static(b"x")))],
            })
            .collect()
    }

    #[test]
    fn round_trips_keys_values_and_headers() {
        for c in ["none", "gzip", "snappy", "lz4", "zstd"] {
            let b = encode_batch(&sample(3), parse_compression(c).unwrap(), 1000).unwrap();
            let (got, next) = decode_records(&b, 1).unwrap();
            assert_eq!(next, Some(3));
            assert_eq!(got.len(), 2, "{c}");
            assert_eq!(got[0].offset, 1);
            assert_eq!(got[0].key.as_deref(), Some(&b"k1"[..]));
            assert_eq!(got[1].value.as_deref(), Some(&b"v2"[..]));
            assert_eq!(
                got[1].headers,
                vec![("h".to_string(), Some(Bytes::from_static(b"x")))]
            );
            assert_eq!(got[1].timestamp, 1000);
        }
    }

    #[test]
    fn a_cut_last_batch_is_dropped() {
        let a = encode_batch(&sample(2), Compression::None, 1).unwrap();
        let mut both = BytesMut::from(&a[..]);
        both.extend_from_slice(&a[..a.len() - 5]);
        let both = both.freeze();
        assert_eq!(
            RecordBatchDecoder::decode_all(&mut a.clone())
                .unwrap()
                .len(),
            1
        );
        assert_eq!(whole_batches(&both).0.len(), a.len());
        assert_eq!(whole_batches(&both).1, Some(2));
        assert_eq!(decode_records(&both, 0).unwrap().0.len(), 2);
        assert_eq!(
            whole_batches(&Bytes::from_static(b"short")),
            (Bytes::new(), None)
        );
    }

    #[test]
    fn unknown_compression_is_an_error() {
        assert!(parse_compression("brotli").is_err());
    }
}
