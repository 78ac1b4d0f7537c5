//! Records of the `__consumer_offsets` topic, in Kafka's own schemas so that Kafka tooling
//! (`kafka-console-consumer --formatter ...OffsetsMessageFormatter`, `kafka-dump-log
//! --offsets-decoder`) can read what Sluice writes, and Sluice can read what Kafka wrote.
//!
//! Keys start with an INT16 schema version: 0 and 1 are `OffsetCommitKey`, 2 is
//! `GroupMetadataKey`. Values start with their own INT16 version. A null value is a tombstone.

use bytes::{BufMut, Bytes, BytesMut};

/// Default number of partitions of `__consumer_offsets` (`offsets.topic.num.partitions`).
pub const DEFAULT_OFFSETS_PARTITIONS: i32 = 50;

/// Name of the internal topic holding committed offsets and group metadata.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Java's `String.hashCode` over UTF-16 code units, which Kafka uses to place a group.
pub fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, unit| h.wrapping_mul(31).wrapping_add(unit as i32))
}

/// The `__consumer_offsets` partition that owns `group_id`: Kafka's
/// `Utils.abs(groupId.hashCode) % partitions`, where `Utils.abs(i32::MIN)` is 0.
pub fn offsets_partition_for(group_id: &str, partitions: i32) -> i32 {
    debug_assert!(partitions > 0);
    let hash = java_string_hash(group_id);
    let abs = if hash == i32::MIN { 0 } else { hash.abs() };
    abs % partitions.max(1)
}

/// Why a `__consumer_offsets` record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The buffer ended before the schema did.
    #[error("truncated record at byte {0}")]
    Truncated(usize),
    /// A string was not UTF-8.
    #[error("invalid UTF-8 string at byte {0}")]
    InvalidUtf8(usize),
    /// A length field was negative where null is not allowed, or absurd.
    #[error("invalid length {len} at byte {at}")]
    InvalidLength {
        /// The length read.
        len: i64,
        /// Where it was read.
        at: usize,
    },
    /// A schema version this decoder does not know.
    #[error("unsupported {what} version {version}")]
    UnsupportedVersion {
        /// Which schema.
        what: &'static str,
        /// The version read.
        version: i16,
    },
}

/// Key of a `__consumer_offsets` record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OffsetsKey {
    /// `OffsetCommitKey`: the committed offset of one partition for one group.
    Offset {
        /// Group id.
        group: String,
        /// Topic name.
        topic: String,
        /// Partition index.
        partition: i32,
    },
    /// `GroupMetadataKey`: the group's membership and assignment.
    GroupMetadata {
        /// Group id.
        group: String,
    },
}

impl OffsetsKey {
    /// The group this record belongs to.
    pub fn group(&self) -> &str {
        match self {
            OffsetsKey::Offset { group, .. } | OffsetsKey::GroupMetadata { group } => group,
        }
    }
}

/// `OffsetCommitValue`: what a group committed for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommitValue {
    /// The committed offset (the next record the group will read).
    pub offset: i64,
    /// Leader epoch of the last consumed record, -1 when unknown.
    pub leader_epoch: i32,
    /// Free-form client metadata.
    pub metadata: String,
    /// When the commit was made (coordinator clock).
    pub commit_timestamp_ms: i64,
    /// Explicit expiry from OffsetCommit v1..v4 `retention_time_ms`, only in value v1.
    pub expire_timestamp_ms: Option<i64>,
}

/// One member of a persisted group (`GroupMetadataValue.MemberMetadata`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberMetadataValue {
    /// Member id.
    pub member_id: String,
    /// Static member id (`group.instance.id`), if any.
    pub group_instance_id: Option<String>,
    /// Client id of the member.
    pub client_id: String,
    /// Client host of the member.
    pub client_host: String,
    /// Rebalance timeout.
    pub rebalance_timeout_ms: i32,
    /// Session timeout.
    pub session_timeout_ms: i32,
    /// The member's metadata for the selected protocol.
    pub subscription: Bytes,
    /// The member's assignment from the leader.
    pub assignment: Bytes,
}

/// `GroupMetadataValue`: a group's generation, protocol, leader and members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMetadataValue {
    /// Protocol type ("consumer", "connect", ...).
    pub protocol_type: String,
    /// Generation id.
    pub generation: i32,
    /// Selected protocol (assignor) name, None when the group is empty.
    pub protocol: Option<String>,
    /// Member id of the group leader.
    pub leader: Option<String>,
    /// When the group last changed state, -1 when unknown.
    pub current_state_timestamp_ms: i64,
    /// Members with their assignments.
    pub members: Vec<MemberMetadataValue>,
}

/// Highest `GroupMetadataValue` version this module decodes.
pub const GROUP_METADATA_VALUE_MAX_VERSION: i16 = 4;

// ---------------------------------------------------------------------------------------------
// Encoding.

pub(crate) fn put_string(buf: &mut BytesMut, s: &str) {
    // Kafka strings are INT16-length prefixed; callers bound lengths before encoding.
    let len = s.len().min(i16::MAX as usize);
    buf.put_i16(len as i16);
    buf.put_slice(&s.as_bytes()[..len]);
}

fn put_nullable_string(buf: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => put_string(buf, s),
        None => buf.put_i16(-1),
    }
}

fn put_bytes(buf: &mut BytesMut, b: &[u8]) {
    buf.put_i32(b.len() as i32);
    buf.put_slice(b);
}

impl OffsetsKey {
    /// Encodes the key: `OffsetCommitKey` v1 or `GroupMetadataKey` v2.
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::new();
        match self {
            OffsetsKey::Offset {
                group,
                topic,
                partition,
            } => {
                buf.put_i16(1);
                put_string(&mut buf, group);
                put_string(&mut buf, topic);
                buf.put_i32(*partition);
            }
            OffsetsKey::GroupMetadata { group } => {
                buf.put_i16(2);
                put_string(&mut buf, group);
            }
        }
        buf.freeze()
    }

    /// Decodes a key. `Ok(None)` for key versions that are not classic-group records
    /// (transactions, KIP-848 groups): the loader skips them as Kafka's classic loader does.
    pub fn decode(bytes: &[u8]) -> Result<Option<OffsetsKey>, RecordError> {
        let mut r = Reader::new(bytes);
        let version = r.i16()?;
        match version {
            0 | 1 => {
                let group = r.string()?;
                let topic = r.string()?;
                let partition = r.i32()?;
                Ok(Some(OffsetsKey::Offset {
                    group,
                    topic,
                    partition,
                }))
            }
            2 => Ok(Some(OffsetsKey::GroupMetadata { group: r.string()? })),
            v if v >= 3 => Ok(None),
            v => Err(RecordError::UnsupportedVersion {
                what: "key",
                version: v,
            }),
        }
    }
}

impl OffsetCommitValue {
    /// Encodes as `OffsetCommitValue` v3 (v1 if an explicit expiry was requested, as Kafka).
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::new();
        if let Some(expire) = self.expire_timestamp_ms {
            buf.put_i16(1);
            buf.put_i64(self.offset);
            put_string(&mut buf, &self.metadata);
            buf.put_i64(self.commit_timestamp_ms);
            buf.put_i64(expire);
        } else {
            buf.put_i16(3);
            buf.put_i64(self.offset);
            buf.put_i32(self.leader_epoch);
            put_string(&mut buf, &self.metadata);
            buf.put_i64(self.commit_timestamp_ms);
        }
        buf.freeze()
    }

    /// Decodes `OffsetCommitValue` v0..v4.
    pub fn decode(bytes: &[u8]) -> Result<OffsetCommitValue, RecordError> {
        let mut r = Reader::new(bytes);
        let version = r.i16()?;
        let flexible = version >= 4;
        let mut value = OffsetCommitValue {
            offset: 0,
            leader_epoch: -1,
            metadata: String::new(),
            commit_timestamp_ms: -1,
            expire_timestamp_ms: None,
        };
        match version {
            0..=4 => {
                value.offset = r.i64()?;
                if version >= 3 {
                    value.leader_epoch = r.i32()?;
                }
                value.metadata = if flexible {
                    r.compact_string()?
                } else {
                    r.string()?
                };
                value.commit_timestamp_ms = r.i64()?;
                if version == 1 {
                    value.expire_timestamp_ms = Some(r.i64()?);
                }
                if flexible {
                    r.skip_tagged_fields()?;
                }
                Ok(value)
            }
            v => Err(RecordError::UnsupportedVersion {
                what: "OffsetCommitValue",
                version: v,
            }),
        }
    }
}

impl GroupMetadataValue {
    /// Encodes as `GroupMetadataValue` v3 (the last non-flexible version, with static members).
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::new();
        buf.put_i16(3);
        put_string(&mut buf, &self.protocol_type);
        buf.put_i32(self.generation);
        put_nullable_string(&mut buf, self.protocol.as_deref());
        put_nullable_string(&mut buf, self.leader.as_deref());
        buf.put_i64(self.current_state_timestamp_ms);
        buf.put_i32(self.members.len() as i32);
        for m in &self.members {
            put_string(&mut buf, &m.member_id);
            put_nullable_string(&mut buf, m.group_instance_id.as_deref());
            put_string(&mut buf, &m.client_id);
            put_string(&mut buf, &m.client_host);
            buf.put_i32(m.rebalance_timeout_ms);
            buf.put_i32(m.session_timeout_ms);
            put_bytes(&mut buf, &m.subscription);
            put_bytes(&mut buf, &m.assignment);
        }
        buf.freeze()
    }

    /// Decodes `GroupMetadataValue` v0..v4.
    pub fn decode(bytes: &[u8]) -> Result<GroupMetadataValue, RecordError> {
        let mut r = Reader::new(bytes);
        let version = r.i16()?;
        if !(0..=GROUP_METADATA_VALUE_MAX_VERSION).contains(&version) {
            return Err(RecordError::UnsupportedVersion {
                what: "GroupMetadataValue",
                version,
            });
        }
        let flexible = version >= 4;
        let string = |r: &mut Reader<'_>| {
            if flexible {
                r.compact_string()
            } else {
                r.string()
            }
        };
        let nullable = |r: &mut Reader<'_>| {
            if flexible {
                r.compact_nullable_string()
            } else {
                r.nullable_string()
            }
        };
        let protocol_type = string(&mut r)?;
        let generation = r.i32()?;
        let protocol = nullable(&mut r)?;
        let leader = nullable(&mut r)?;
        let current_state_timestamp_ms = if version >= 2 { r.i64()? } else { -1 };
        let count = if flexible {
            r.compact_len()?
        } else {
            r.array_len()?
        };
        let mut members = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            let member_id = string(&mut r)?;
            let group_instance_id = if version >= 3 {
                nullable(&mut r)?
            } else {
                None
            };
            let client_id = string(&mut r)?;
            let client_host = string(&mut r)?;
            let rebalance_timeout_ms = if version >= 1 { r.i32()? } else { -1 };
            let session_timeout_ms = r.i32()?;
            let (subscription, assignment) = if flexible {
                (r.compact_bytes()?, r.compact_bytes()?)
            } else {
                (r.bytes()?, r.bytes()?)
            };
            if flexible {
                r.skip_tagged_fields()?;
            }
            members.push(MemberMetadataValue {
                member_id,
                group_instance_id,
                client_id,
                client_host,
                rebalance_timeout_ms: if rebalance_timeout_ms < 0 {
                    session_timeout_ms
                } else {
                    rebalance_timeout_ms
                },
                session_timeout_ms,
                subscription,
                assignment,
            });
        }
        if flexible {
            r.skip_tagged_fields()?;
        }
        Ok(GroupMetadataValue {
            protocol_type,
            generation,
            protocol,
            leader,
            current_state_timestamp_ms,
            members,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// A bounds-checked reader for Kafka's primitive types.

pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes read so far.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes left.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(RecordError::Truncated(self.pos))?;
        let slice = self
            .buf
            .get(self.pos..end)
            .ok_or(RecordError::Truncated(self.pos))?;
        self.pos = end;
        Ok(slice)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn i16(&mut self) -> Result<i16, RecordError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, RecordError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    pub(crate) fn i64(&mut self) -> Result<i64, RecordError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    pub(crate) fn unsigned_varint(&mut self) -> Result<u32, RecordError> {
        let mut value: u32 = 0;
        for i in 0..5 {
            let b = self.take(1)?[0];
            value |= ((b & 0x7f) as u32) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(RecordError::InvalidLength {
            len: value as i64,
            at: self.pos,
        })
    }

    pub(crate) fn utf8(&mut self, len: usize) -> Result<String, RecordError> {
        let at = self.pos;
        let raw = self.take(len)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| RecordError::InvalidUtf8(at))
    }

    pub(crate) fn nullable_string(&mut self) -> Result<Option<String>, RecordError> {
        let at = self.pos;
        let len = self.i16()?;
        match len {
            -1 => Ok(None),
            l if l < 0 => Err(RecordError::InvalidLength { len: l as i64, at }),
            l => self.utf8(l as usize).map(Some),
        }
    }

    pub(crate) fn string(&mut self) -> Result<String, RecordError> {
        let at = self.pos;
        self.nullable_string()?
            .ok_or(RecordError::InvalidLength { len: -1, at })
    }

    pub(crate) fn compact_nullable_string(&mut self) -> Result<Option<String>, RecordError> {
        let len = self.unsigned_varint()?;
        if len == 0 {
            Ok(None)
        } else {
            self.utf8(len as usize - 1).map(Some)
        }
    }

    pub(crate) fn compact_string(&mut self) -> Result<String, RecordError> {
        let at = self.pos;
        self.compact_nullable_string()?
            .ok_or(RecordError::InvalidLength { len: -1, at })
    }

    pub(crate) fn bytes(&mut self) -> Result<Bytes, RecordError> {
        let at = self.pos;
        let len = self.i32()?;
        if len < 0 {
            return Err(RecordError::InvalidLength {
                len: len as i64,
                at,
            });
        }
        Ok(Bytes::copy_from_slice(self.take(len as usize)?))
    }

    pub(crate) fn compact_bytes(&mut self) -> Result<Bytes, RecordError> {
        let at = self.pos;
        let len = self.unsigned_varint()?;
        if len == 0 {
            return Err(RecordError::InvalidLength { len: -1, at });
        }
        Ok(Bytes::copy_from_slice(self.take(len as usize - 1)?))
    }

    pub(crate) fn array_len(&mut self) -> Result<usize, RecordError> {
        let at = self.pos;
        let len = self.i32()?;
        // Every element takes at least one byte: a longer count is corrupt, not a huge group.
        if len < 0 || len as usize > self.buf.len() - self.pos {
            return Err(RecordError::InvalidLength {
                len: len as i64,
                at,
            });
        }
        Ok(len as usize)
    }

    pub(crate) fn compact_len(&mut self) -> Result<usize, RecordError> {
        let at = self.pos;
        let len = self.unsigned_varint()?;
        if len == 0 || (len - 1) as usize > self.buf.len() - self.pos {
            return Err(RecordError::InvalidLength {
                len: len as i64 - 1,
                at,
            });
        }
        Ok(len as usize - 1)
    }

    pub(crate) fn skip_tagged_fields(&mut self) -> Result<(), RecordError> {
        let count = self.unsigned_varint()?;
        for _ in 0..count {
            let _tag = self.unsigned_varint()?;
            let size = self.unsigned_varint()?;
            self.take(size as usize)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_hash_matches_known_values() {
        // Values of "".hashCode(), "a".hashCode(), "hello".hashCode() in Java.
        assert_eq!(java_string_hash(""), 0);
        assert_eq!(java_string_hash("a"), 97);
        assert_eq!(java_string_hash("hello"), 99_162_322);
        // Non-BMP char: two UTF-16 code units (surrogates 0xD83D 0xDE00).
        assert_eq!(java_string_hash("\u{1F600}"), 0xD83D_i32 * 31 + 0xDE00_i32);
        // "polygenelubricants".hashCode() == Integer.MIN_VALUE; Kafka's abs maps it to 0.
        assert_eq!(java_string_hash("polygenelubricants"), i32::MIN);
        assert_eq!(offsets_partition_for("polygenelubricants", 50), 0);
        assert_eq!(offsets_partition_for("hello", 50), 99_162_322 % 50);
        // Negative hash: "Aa-negative" style check via a string whose hash is negative.
        let h = java_string_hash("consumer-group-zz");
        assert_eq!(offsets_partition_for("consumer-group-zz", 50), h.abs() % 50);
    }

    #[test]
    fn offset_key_round_trip_and_layout() {
        let key = OffsetsKey::Offset {
            group: "g".into(),
            topic: "t".into(),
            partition: 7,
        };
        let bytes = key.encode();
        assert_eq!(&bytes[..], &[0, 1, 0, 1, b'g', 0, 1, b't', 0, 0, 0, 7]);
        assert_eq!(OffsetsKey::decode(&bytes).unwrap(), Some(key));
        let gkey = OffsetsKey::GroupMetadata {
            group: "grp".into(),
        };
        let bytes = gkey.encode();
        assert_eq!(&bytes[..], &[0, 2, 0, 3, b'g', b'r', b'p']);
        assert_eq!(OffsetsKey::decode(&bytes).unwrap(), Some(gkey));
        // Key version 3+ (e.g. KIP-848 records) is skipped, not an error.
        assert_eq!(OffsetsKey::decode(&[0, 3, 0, 0]).unwrap(), None);
        assert!(OffsetsKey::decode(&[0xff, 0xff]).is_err());
    }

    #[test]
    fn documented_example_layout() {
        // The example in docs/groups.md.
        let key = OffsetsKey::Offset {
            group: "orders".into(),
            topic: "payments".into(),
            partition: 3,
        }
        .encode();
        let mut expect = vec![0, 1, 0, 6];
        expect.extend_from_slice(b"orders");
        expect.extend_from_slice(&[0, 8]);
        expect.extend_from_slice(b"payments");
        expect.extend_from_slice(&[0, 0, 0, 3]);
        assert_eq!(&key[..], &expect[..]);
        let value = OffsetCommitValue {
            offset: 42,
            leader_epoch: -1,
            metadata: String::new(),
            commit_timestamp_ms: 7,
            expire_timestamp_ms: None,
        }
        .encode();
        let mut expect = vec![
            0, 3, 0, 0, 0, 0, 0, 0, 0, 0x2a, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ];
        expect.extend_from_slice(&7i64.to_be_bytes());
        assert_eq!(&value[..], &expect[..]);
    }

    #[test]
    fn offset_value_round_trip() {
        let v = OffsetCommitValue {
            offset: 42,
            leader_epoch: 3,
            metadata: "meta".into(),
            commit_timestamp_ms: 1_000,
            expire_timestamp_ms: None,
        };
        let bytes = v.encode();
        assert_eq!(i16::from_be_bytes([bytes[0], bytes[1]]), 3);
        assert_eq!(OffsetCommitValue::decode(&bytes).unwrap(), v);
        let v1 = OffsetCommitValue {
            leader_epoch: -1,
            expire_timestamp_ms: Some(9_000),
            ..v
        };
        assert_eq!(OffsetCommitValue::decode(&v1.encode()).unwrap(), v1);
    }

    #[test]
    fn offset_value_v4_flexible_decodes() {
        // v4: offset, leader_epoch, compact string metadata, commit timestamp, tagged fields.
        let mut b = vec![0, 4];
        b.extend_from_slice(&10i64.to_be_bytes());
        b.extend_from_slice(&2i32.to_be_bytes());
        b.push(3); // compact string of length 2
        b.extend_from_slice(b"md");
        b.extend_from_slice(&77i64.to_be_bytes());
        b.push(0);
        let v = OffsetCommitValue::decode(&b).unwrap();
        assert_eq!(
            (v.offset, v.leader_epoch, v.metadata.as_str()),
            (10, 2, "md")
        );
        assert_eq!(v.commit_timestamp_ms, 77);
    }

    fn sample_group() -> GroupMetadataValue {
        GroupMetadataValue {
            protocol_type: "consumer".into(),
            generation: 5,
            protocol: Some("range".into()),
            leader: Some("m1".into()),
            current_state_timestamp_ms: 123,
            members: vec![
                MemberMetadataValue {
                    member_id: "m1".into(),
                    group_instance_id: Some("i1".into()),
                    client_id: "c".into(),
                    client_host: "/127.0.0.1".into(),
                    rebalance_timeout_ms: 300_000,
                    session_timeout_ms: 10_000,
                    subscription: Bytes::from_static(b"sub"),
                    assignment: Bytes::from_static(b"asg"),
                },
                MemberMetadataValue {
                    member_id: "m2".into(),
                    group_instance_id: None,
                    client_id: "c2".into(),
                    client_host: "/127.0.0.2".into(),
                    rebalance_timeout_ms: 1,
                    session_timeout_ms: 2,
                    subscription: Bytes::new(),
                    assignment: Bytes::new(),
                },
            ],
        }
    }

    #[test]
    fn group_value_round_trip() {
        let g = sample_group();
        let bytes = g.encode();
        assert_eq!(i16::from_be_bytes([bytes[0], bytes[1]]), 3);
        assert_eq!(GroupMetadataValue::decode(&bytes).unwrap(), g);
        let empty = GroupMetadataValue {
            protocol: None,
            leader: None,
            members: vec![],
            ..g
        };
        assert_eq!(GroupMetadataValue::decode(&empty.encode()).unwrap(), empty);
    }

    #[test]
    fn group_value_v4_flexible_decodes() {
        fn cs(b: &mut Vec<u8>, s: &str) {
            b.push(s.len() as u8 + 1);
            b.extend_from_slice(s.as_bytes());
        }
        let mut b = vec![0, 4];
        cs(&mut b, "consumer");
        b.extend_from_slice(&2i32.to_be_bytes());
        cs(&mut b, "range");
        cs(&mut b, "m1");
        b.extend_from_slice(&5i64.to_be_bytes());
        b.push(2); // one member
        cs(&mut b, "m1");
        b.push(0); // null instance id
        cs(&mut b, "cid");
        cs(&mut b, "host");
        b.extend_from_slice(&100i32.to_be_bytes());
        b.extend_from_slice(&50i32.to_be_bytes());
        b.push(2);
        b.push(9); // subscription = [9]
        b.push(1); // empty assignment
        b.push(0); // member tagged fields
        b.push(0); // top-level tagged fields
        let g = GroupMetadataValue::decode(&b).unwrap();
        assert_eq!(g.generation, 2);
        assert_eq!(g.leader.as_deref(), Some("m1"));
        assert_eq!(g.members.len(), 1);
        assert_eq!(&g.members[0].subscription[..], &[9]);
        assert_eq!(g.members[0].group_instance_id, None);
    }

    #[test]
    fn corrupt_values_are_errors_not_panics() {
        let bytes = sample_group().encode();
        for cut in 0..bytes.len() {
            assert!(
                GroupMetadataValue::decode(&bytes[..cut]).is_err(),
                "cut {cut}"
            );
        }
        let mut huge = bytes.to_vec();
        // Member count field sits after the fixed header; make it enormous.
        let pos = 2 + 2 + 8 + 4 + 2 + 5 + 2 + 2 + 8;
        huge[pos..pos + 4].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(GroupMetadataValue::decode(&huge).is_err());
        let off = OffsetCommitValue {
            offset: 1,
            leader_epoch: 1,
            metadata: "x".into(),
            commit_timestamp_ms: 1,
            expire_timestamp_ms: None,
        }
        .encode();
        for cut in 0..off.len() {
            assert!(OffsetCommitValue::decode(&off[..cut]).is_err());
        }
        assert!(OffsetCommitValue::decode(&[0, 9, 0]).is_err());
    }
}
