//! Wire-level pieces with no IO: the served API/version table, request-header peeking,
//! response framing, and the hand-written FetchResponse encoder that leaves holes for record
//! bytes sent straight from segment files.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ResponseHeader};
use kafka_protocol::protocol::Encodable;

/// The APIs and version ranges this broker serves (what ApiVersions advertises).
pub const SUPPORTED_APIS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 11),
    (ApiKey::Fetch, 4, 16),
    (ApiKey::ListOffsets, 1, 8),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::FindCoordinator, 0, 6),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    // The group coordinator's half of transactions; the transaction coordinator's APIs are
    // refused (UNSUPPORTED_VERSION) until they are served.
    (ApiKey::TxnOffsetCommit, 0, 3),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DescribeGroups, 0, 6),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::InitProducerId, 0, 5),
    // Transactions (KIP-98). AddPartitionsToTxn v4+ is the broker-to-broker batch with
    // verify_only (KIP-890); EndTxn v5 (transaction version 2) is not served.
    (ApiKey::AddPartitionsToTxn, 0, 4),
    (ApiKey::AddOffsetsToTxn, 0, 4),
    (ApiKey::EndTxn, 0, 4),
    (ApiKey::WriteTxnMarkers, 1, 1),
    (ApiKey::DescribeTransactions, 0, 0),
    (ApiKey::ListTransactions, 0, 1),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::DescribeQuorum, 0, 2),
    (ApiKey::ElectLeaders, 0, 2),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::DescribeLogDirs, 1, 4),
    (ApiKey::DescribeProducers, 0, 0),
    (ApiKey::CreateAcls, 1, 3),
    (ApiKey::DescribeAcls, 1, 3),
    (ApiKey::DeleteAcls, 1, 3),
    (ApiKey::DescribeClientQuotas, 0, 1),
    (ApiKey::AlterClientQuotas, 0, 1),
    (ApiKey::DescribeUserScramCredentials, 0, 0),
    (ApiKey::AlterUserScramCredentials, 0, 0),
    // Served by the connection on SASL listeners; ILLEGAL_SASL_STATE elsewhere.
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
];

/// The version range served for `key`, if any.
pub fn served_versions(key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED_APIS
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|(_, lo, hi)| (*lo, *hi))
}

/// Kafka error codes used by the broker.
pub mod error_code {
    #![allow(missing_docs)]
    pub const NONE: i16 = 0;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const LEADER_NOT_AVAILABLE: i16 = 5;
    pub const REQUEST_TIMED_OUT: i16 = 7;
    pub const NETWORK_EXCEPTION: i16 = 13;
    pub const NOT_ENOUGH_REPLICAS: i16 = 19;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const ILLEGAL_SASL_STATE: i16 = 34;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const INVALID_PARTITIONS: i16 = 37;
    pub const INVALID_REPLICATION_FACTOR: i16 = 38;
    pub const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
    pub const INVALID_CONFIG: i16 = 40;
    pub const INVALID_REQUEST: i16 = 42;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const UNSUPPORTED_COMPRESSION_TYPE: i16 = 76;
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
    pub const UNKNOWN_TOPIC_ID: i16 = 100;
}

/// The fixed part of a request header, read without decoding the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderPeek {
    /// Raw API key (may be one Kafka does not know).
    pub api_key: i16,
    /// Requested version.
    pub api_version: i16,
    /// Correlation id echoed in the response.
    pub correlation_id: i32,
}

/// Reads api key, version and correlation id from the start of a request frame body.
pub fn peek_header(frame: &[u8]) -> Option<HeaderPeek> {
    if frame.len() < 8 {
        return None;
    }
    Some(HeaderPeek {
        api_key: i16::from_be_bytes([frame[0], frame[1]]),
        api_version: i16::from_be_bytes([frame[2], frame[3]]),
        correlation_id: i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]),
    })
}

/// Errors while encoding a response.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode {api:?} v{version} response: {reason}")]
pub struct EncodeError {
    /// The API.
    pub api: ApiKey,
    /// The version.
    pub version: i16,
    /// The codec's message.
    pub reason: String,
}

/// Encodes a complete response frame (size prefix, header, body) for `api` at `version`.
pub fn encode_response<R: Encodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
) -> Result<BytesMut, EncodeError> {
    // KIP-511: the ApiVersions response header is always v0 so any client can read it.
    let header_version = if api == ApiKey::ApiVersions {
        0
    } else {
        api.response_header_version(version)
    };
    let err = |e: anyhow::Error| EncodeError {
        api,
        version,
        reason: e.to_string(),
    };
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let size = header.compute_size(header_version).map_err(err)?
        + body.compute_size(version).map_err(err)?;
    let mut buf = BytesMut::with_capacity(4 + size);
    buf.put_i32(size as i32);
    header.encode(&mut buf, header_version).map_err(err)?;
    body.encode(&mut buf, version).map_err(err)?;
    debug_assert_eq!(buf.len(), 4 + size);
    Ok(buf)
}

/// Where one partition's record bytes come from in a fetch response.
#[derive(Debug)]
pub enum RecordsSource {
    /// Bytes already in memory (the copy path).
    Bytes(Bytes),
    /// A byte range of a segment file (the zero-copy path). The fd is a `dup` of the segment
    /// file's, so it stays valid even if retention deletes the segment meanwhile.
    File {
        /// Owned duplicate of the segment file descriptor.
        fd: std::os::fd::OwnedFd,
        /// Start position in the file.
        position: u64,
        /// Length in bytes.
        len: u32,
    },
}

impl RecordsSource {
    /// Number of record bytes.
    pub fn len(&self) -> usize {
        match self {
            RecordsSource::Bytes(b) => b.len(),
            RecordsSource::File { len, .. } => *len as usize,
        }
    }

    /// True when there are no record bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One piece of a response frame.
#[derive(Debug)]
pub enum FramePart {
    /// Framing bytes written by the broker.
    Head(Bytes),
    /// Record bytes.
    Records(RecordsSource),
}

/// One partition of a fetch response, as the broker's encoder needs it.
#[derive(Debug)]
pub struct FetchPartitionOut {
    /// Partition id.
    pub partition: i32,
    /// Error code.
    pub error_code: i16,
    /// High watermark.
    pub high_watermark: i64,
    /// Last stable offset.
    pub last_stable_offset: i64,
    /// Log start offset.
    pub log_start_offset: i64,
    /// (producer id, first offset) of the aborted transactions in the records (sent only in
    /// read_committed responses).
    pub aborted_transactions: Vec<(i64, i64)>,
    /// Record bytes, if any.
    pub records: Option<RecordsSource>,
    /// KIP-320: `(epoch, end offset)` where the leader's log ends for the fetcher's last epoch,
    /// when the fetcher's log diverges (versions >= 12: the `DivergingEpoch` tagged field).
    pub diverging_epoch: Option<(i32, i64)>,
}

/// One topic of a fetch response.
#[derive(Debug)]
pub struct FetchTopicOut {
    /// Topic name (versions <= 12).
    pub name: String,
    /// Topic id (versions >= 13).
    pub topic_id: uuid::Uuid,
    /// Partitions in request order.
    pub partitions: Vec<FetchPartitionOut>,
}

/// A fetch response ready to write: framing bytes interleaved with record sources.
#[derive(Debug)]
pub struct FetchFrame {
    /// The parts in wire order; the first starts with the 4-byte size prefix.
    pub parts: Vec<FramePart>,
    /// Total frame size including the size prefix.
    pub total_len: usize,
}

fn put_uvarint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

fn put_array_len(buf: &mut BytesMut, flexible: bool, n: usize) {
    if flexible {
        put_uvarint(buf, n as u64 + 1);
    } else {
        buf.put_i32(n as i32);
    }
}

/// Encodes a FetchResponse (versions 4..=16) around record sources without copying them.
///
/// `session_id` is the KIP-227 fetch session (0: none; versions >= 7). Aborted transactions
/// are `null` for read_uncommitted and the partition's list for read_committed, as Kafka
/// sends them.
pub fn encode_fetch_response(
    version: i16,
    correlation_id: i32,
    error_code: i16,
    session_id: i32,
    topics: Vec<FetchTopicOut>,
    read_committed: bool,
) -> FetchFrame {
    debug_assert!((4..=16).contains(&version));
    let flexible = version >= 12;
    let mut parts = Vec::new();
    let mut total = 0usize;
    let mut head = BytesMut::with_capacity(256);
    head.put_i32(0); // size prefix, patched below
    head.put_i32(correlation_id);
    if flexible {
        put_uvarint(&mut head, 0); // response header v1 tagged fields
    }
    head.put_i32(0); // throttle_time_ms
    if version >= 7 {
        head.put_i16(error_code);
        head.put_i32(session_id);
    }
    put_array_len(&mut head, flexible, topics.len());
    for topic in topics {
        if version >= 13 {
            head.put_slice(topic.topic_id.as_bytes());
        } else if flexible {
            put_uvarint(&mut head, topic.name.len() as u64 + 1);
            head.put_slice(topic.name.as_bytes());
        } else {
            head.put_i16(topic.name.len() as i16);
            head.put_slice(topic.name.as_bytes());
        }
        put_array_len(&mut head, flexible, topic.partitions.len());
        for p in topic.partitions {
            head.put_i32(p.partition);
            head.put_i16(p.error_code);
            head.put_i64(p.high_watermark);
            head.put_i64(p.last_stable_offset);
            if version >= 5 {
                head.put_i64(p.log_start_offset);
            }
            match (read_committed, flexible) {
                (true, _) => {
                    put_array_len(&mut head, flexible, p.aborted_transactions.len());
                    for (producer_id, first_offset) in &p.aborted_transactions {
                        head.put_i64(*producer_id);
                        head.put_i64(*first_offset);
                        if flexible {
                            put_uvarint(&mut head, 0); // AbortedTransaction tagged fields
                        }
                    }
                }
                (false, true) => put_uvarint(&mut head, 0),
                (false, false) => head.put_i32(-1),
            }
            if version >= 11 {
                head.put_i32(-1); // preferred_read_replica
            }
            let len = p.records.as_ref().map_or(0, RecordsSource::len);
            if flexible {
                put_uvarint(&mut head, len as u64 + 1);
            } else {
                head.put_i32(len as i32);
            }
            if let Some(records) = p.records.filter(|r| !r.is_empty()) {
                total += head.len();
                parts.push(FramePart::Head(head.split().freeze()));
                total += records.len();
                parts.push(FramePart::Records(records));
            }
            if flexible {
                match p.diverging_epoch {
                    // Tag 0, DivergingEpoch: epoch, end offset, its own (empty) tagged fields.
                    Some((epoch, end_offset)) => {
                        put_uvarint(&mut head, 1);
                        put_uvarint(&mut head, 0);
                        put_uvarint(&mut head, 4 + 8 + 1);
                        head.put_i32(epoch);
                        head.put_i64(end_offset);
                        put_uvarint(&mut head, 0);
                    }
                    None => put_uvarint(&mut head, 0), // partition tagged fields
                }
            }
        }
        if flexible {
            put_uvarint(&mut head, 0); // topic tagged fields
        }
    }
    if flexible {
        put_uvarint(&mut head, 0); // response tagged fields
    }
    total += head.len();
    parts.push(FramePart::Head(head.freeze()));
    // Patch the size prefix in the first part (it is always a Head starting at byte 0).
    let size = (total - 4) as i32;
    if let Some(FramePart::Head(first)) = parts.first_mut() {
        let mut patched = BytesMut::from(&first[..]);
        patched[0..4].copy_from_slice(&size.to_be_bytes());
        *first = patched.freeze();
    }
    FetchFrame {
        parts,
        total_len: total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::FetchResponse;
    use kafka_protocol::protocol::Decodable;

    fn flatten(frame: FetchFrame) -> Vec<u8> {
        let mut out = Vec::new();
        for p in frame.parts {
            match p {
                FramePart::Head(b) => out.extend_from_slice(&b),
                FramePart::Records(RecordsSource::Bytes(b)) => out.extend_from_slice(&b),
                FramePart::Records(RecordsSource::File { .. }) => panic!("test uses bytes"),
            }
        }
        out
    }

    #[test]
    fn fetch_response_decodes_with_kafka_protocol_in_every_version() {
        let id = uuid::Uuid::from_u128(0x1234_5678_9abc_def0_1122_3344_5566_7788);
        for version in 4..=16i16 {
            for read_committed in [false, true] {
                let topics = vec![
                    FetchTopicOut {
                        name: "alpha".into(),
                        topic_id: id,
                        partitions: vec![
                            FetchPartitionOut {
                                partition: 0,
                                error_code: 0,
                                high_watermark: 10,
                                last_stable_offset: 10,
                                log_start_offset: 2,
                                aborted_transactions: vec![(7, 3), (9, 4)],
                                records: Some(RecordsSource::Bytes(Bytes::from_static(
                                    b"batch-bytes-0",
                                ))),
                                diverging_epoch: None,
                            },
                            FetchPartitionOut {
                                partition: 3,
                                error_code: error_code::OFFSET_OUT_OF_RANGE,
                                high_watermark: 5,
                                last_stable_offset: 5,
                                log_start_offset: 0,
                                aborted_transactions: Vec::new(),
                                records: None,
                                diverging_epoch: Some((3, 42)),
                            },
                        ],
                    },
                    FetchTopicOut {
                        name: "beta".into(),
                        topic_id: id,
                        partitions: vec![FetchPartitionOut {
                            partition: 1,
                            error_code: 0,
                            high_watermark: 1,
                            last_stable_offset: 1,
                            log_start_offset: 0,
                            aborted_transactions: Vec::new(),
                            records: Some(RecordsSource::Bytes(Bytes::from_static(b"xyz"))),
                            diverging_epoch: None,
                        }],
                    },
                ];
                let frame = encode_fetch_response(version, 77, 0, 9, topics, read_committed);
                let total = frame.total_len;
                let bytes = flatten(frame);
                assert_eq!(bytes.len(), total, "v{version}");
                assert_eq!(
                    i32::from_be_bytes(bytes[0..4].try_into().unwrap()) as usize,
                    total - 4
                );
                let mut body = Bytes::from(bytes[4..].to_vec());
                let header = ResponseHeader::decode(
                    &mut body,
                    ApiKey::Fetch.response_header_version(version),
                )
                .unwrap();
                assert_eq!(header.correlation_id, 77);
                let resp = FetchResponse::decode(&mut body, version).unwrap();
                assert!(body.is_empty(), "v{version}: {} trailing bytes", body.len());
                assert_eq!(resp.responses.len(), 2);
                if version >= 7 {
                    assert_eq!(resp.session_id, 9);
                }
                let t0 = &resp.responses[0];
                if version >= 13 {
                    assert_eq!(t0.topic_id, id);
                } else {
                    assert_eq!(t0.topic.as_str(), "alpha");
                }
                assert_eq!(
                    t0.partitions[0].records.as_deref(),
                    Some(&b"batch-bytes-0"[..])
                );
                assert_eq!(t0.partitions[0].high_watermark, 10);
                if version >= 5 {
                    assert_eq!(t0.partitions[0].log_start_offset, 2);
                }
                assert_eq!(t0.partitions[1].error_code, 1);
                if version >= 12 {
                    let d = &t0.partitions[1].diverging_epoch;
                    assert_eq!((d.epoch, d.end_offset), (3, 42), "v{version}");
                    assert_eq!(t0.partitions[0].diverging_epoch.epoch, -1);
                }
                assert_eq!(
                    t0.partitions[1].records.as_deref().map(<[u8]>::len),
                    Some(0)
                );
                assert_eq!(
                    t0.partitions[0].aborted_transactions.is_some(),
                    read_committed
                );
                if read_committed {
                    let a: Vec<(i64, i64)> = t0.partitions[0]
                        .aborted_transactions
                        .as_ref()
                        .unwrap()
                        .iter()
                        .map(|t| (t.producer_id.0, t.first_offset))
                        .collect();
                    assert_eq!(a, vec![(7, 3), (9, 4)], "v{version}");
                    assert_eq!(t0.partitions[0].last_stable_offset, 10);
                }
                assert_eq!(
                    resp.responses[1].partitions[0].records.as_deref(),
                    Some(&b"xyz"[..])
                );
            }
        }
    }

    #[test]
    fn header_peek() {
        assert_eq!(
            peek_header(&[0, 1, 0, 11, 0, 0, 0, 9]),
            Some(HeaderPeek {
                api_key: 1,
                api_version: 11,
                correlation_id: 9
            })
        );
        assert_eq!(peek_header(&[0, 1]), None);
    }

    #[test]
    fn served_versions_within_codec_range() {
        for (key, lo, hi) in SUPPORTED_APIS {
            let r = key.valid_versions();
            assert!(r.min <= *lo && *hi <= r.max, "{key:?}");
        }
    }

    #[test]
    fn every_served_api_has_its_acl_requirements() {
        for (key, _, _) in SUPPORTED_APIS {
            assert!(
                crate::security::acl::required_acls(*key as i16).is_some(),
                "{key:?} is served but missing from security::acl's table"
            );
        }
    }
}
