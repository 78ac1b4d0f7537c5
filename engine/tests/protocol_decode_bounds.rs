//! The vendored kafka-protocol must turn a hostile array count into a decode error, never an
//! allocation the process cannot survive (third_party/kafka-protocol/SLUICE-PATCH.md).

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{CreateTopicsRequest, MetadataRequest};
use kafka_protocol::protocol::Decodable;

fn body_with_count(count: i32, tail: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i32(count);
    b.put_slice(tail);
    b.freeze()
}

#[test]
fn metadata_with_i32_max_topics_is_an_error() {
    let mut body = body_with_count(i32::MAX, &[0, 1, b'x']);
    assert!(MetadataRequest::decode(&mut body, 1).is_err());
}

#[test]
fn compact_array_with_huge_count_is_an_error() {
    // Metadata v9 (flexible): topics is a compact array, count+1 as an unsigned varint.
    let mut b = BytesMut::new();
    b.put_slice(&[0xff, 0xff, 0xff, 0xff, 0x07]); // 2^31 - 1
    b.put_slice(&[0, 0, 0]);
    let mut body = b.freeze();
    assert!(MetadataRequest::decode(&mut body, 9).is_err());
}

#[test]
fn create_topics_with_huge_count_is_an_error() {
    let mut body = body_with_count(0x4000_0000, &[0; 16]);
    assert!(CreateTopicsRequest::decode(&mut body, 2).is_err());
}

#[test]
fn plausible_counts_still_decode() {
    // Two topics by name (Metadata v1: array of strings).
    let mut b = BytesMut::new();
    b.put_i32(2);
    for name in ["a", "bc"] {
        b.put_i16(name.len() as i16);
        b.put_slice(name.as_bytes());
    }
    let mut body = b.freeze();
    let req = MetadataRequest::decode(&mut body, 1).expect("valid request decodes");
    assert_eq!(req.topics.map(|t| t.len()), Some(2));
}
