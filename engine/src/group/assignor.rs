//! Client-side partition assignment: the `range` and `roundrobin` assignors and the
//! ConsumerProtocol subscription/assignment encoding that the "consumer" protocol type carries
//! in JoinGroup metadata and SyncGroup assignments.
//!
//! The broker never runs these (the group leader, a client, computes the assignment and the
//! coordinator only relays it); our own tools and benchmark client do, and the coordinator
//! decodes subscriptions to answer OffsetDelete with GROUP_SUBSCRIBED_TO_TOPIC.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::{
    ConsumerProtocolAssignment, TopicPartition as AssignedTopic,
};
use kafka_protocol::messages::consumer_protocol_subscription::{
    ConsumerProtocolSubscription, TopicPartition as OwnedTopic,
};
use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

/// Highest ConsumerProtocol version this module writes and understands.
pub const CONSUMER_PROTOCOL_MAX_VERSION: i16 = 3;

/// Why subscription or assignment bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsumerProtocolError {
    /// Shorter than the version prefix.
    #[error("consumer protocol payload shorter than its version")]
    Truncated,
    /// Negative version.
    #[error("invalid consumer protocol version {0}")]
    InvalidVersion(i16),
    /// The body did not match the schema.
    #[error("malformed consumer protocol payload: {0}")]
    Malformed(String),
}

/// A consumer's subscription, the JoinGroup protocol metadata of the "consumer" type.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConsumerSubscription {
    /// Subscribed topics.
    pub topics: Vec<String>,
    /// Opaque assignor data.
    pub user_data: Option<Bytes>,
    /// v1+: partitions the member owns now (cooperative rebalancing).
    pub owned_partitions: Vec<(String, Vec<i32>)>,
    /// v2+: generation of the owned partitions, -1 unknown.
    pub generation_id: i32,
    /// v3+: the member's rack.
    pub rack_id: Option<String>,
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

fn split_version(bytes: &[u8]) -> Result<(i16, &[u8]), ConsumerProtocolError> {
    if bytes.len() < 2 {
        return Err(ConsumerProtocolError::Truncated);
    }
    let mut b = bytes;
    let version = b.get_i16();
    if version < 0 {
        return Err(ConsumerProtocolError::InvalidVersion(version));
    }
    // A newer client only appends fields, so decode what we know.
    Ok((version.min(CONSUMER_PROTOCOL_MAX_VERSION), b))
}

impl ConsumerSubscription {
    /// A subscription to `topics` with nothing else.
    pub fn new<S: Into<String>>(topics: impl IntoIterator<Item = S>) -> Self {
        ConsumerSubscription {
            topics: topics.into_iter().map(Into::into).collect(),
            generation_id: -1,
            ..Default::default()
        }
    }

    /// Encodes with a version prefix (`version` clamped to 0..=3).
    pub fn encode(&self, version: i16) -> Bytes {
        let version = version.clamp(0, CONSUMER_PROTOCOL_MAX_VERSION);
        let msg = ConsumerProtocolSubscription::default()
            .with_topics(self.topics.iter().map(|t| str_bytes(t)).collect())
            .with_user_data(self.user_data.clone())
            .with_owned_partitions(
                self.owned_partitions
                    .iter()
                    .map(|(t, ps)| {
                        OwnedTopic::default()
                            .with_topic(TopicName(str_bytes(t)))
                            .with_partitions(ps.clone())
                    })
                    .collect(),
            )
            .with_generation_id(self.generation_id)
            .with_rack_id(self.rack_id.as_deref().map(str_bytes));
        let mut buf = BytesMut::new();
        buf.put_i16(version);
        // Encoding our own well-formed struct only fails on lengths beyond i32.
        if let Err(e) = msg.encode(&mut buf, version) {
            tracing::error!(error = %e, "consumer subscription does not fit the protocol");
        }
        buf.freeze()
    }

    /// Decodes version-prefixed subscription bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, ConsumerProtocolError> {
        let (version, mut body) = split_version(bytes)?;
        let msg = ConsumerProtocolSubscription::decode(&mut body, version)
            .map_err(|e| ConsumerProtocolError::Malformed(e.to_string()))?;
        Ok(ConsumerSubscription {
            topics: msg.topics.iter().map(|t| t.to_string()).collect(),
            user_data: msg.user_data,
            owned_partitions: msg
                .owned_partitions
                .into_iter()
                .map(|tp| (tp.topic.0.to_string(), tp.partitions))
                .collect(),
            generation_id: msg.generation_id,
            rack_id: msg.rack_id.map(|r| r.to_string()),
        })
    }
}

/// A member's assignment, the SyncGroup payload of the "consumer" type.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConsumerAssignment {
    /// Assigned partitions by topic, partitions ascending.
    pub partitions: BTreeMap<String, Vec<i32>>,
    /// Opaque assignor data.
    pub user_data: Option<Bytes>,
}

impl ConsumerAssignment {
    /// Encodes with a version prefix (`version` clamped to 0..=3).
    pub fn encode(&self, version: i16) -> Bytes {
        let version = version.clamp(0, CONSUMER_PROTOCOL_MAX_VERSION);
        let msg = ConsumerProtocolAssignment::default()
            .with_assigned_partitions(
                self.partitions
                    .iter()
                    .map(|(t, ps)| {
                        AssignedTopic::default()
                            .with_topic(TopicName(str_bytes(t)))
                            .with_partitions(ps.clone())
                    })
                    .collect(),
            )
            .with_user_data(self.user_data.clone());
        let mut buf = BytesMut::new();
        buf.put_i16(version);
        if let Err(e) = msg.encode(&mut buf, version) {
            tracing::error!(error = %e, "consumer assignment does not fit the protocol");
        }
        buf.freeze()
    }

    /// Decodes version-prefixed assignment bytes; empty bytes are an empty assignment, as
    /// the coordinator sends to members the leader left out.
    pub fn decode(bytes: &[u8]) -> Result<Self, ConsumerProtocolError> {
        if bytes.is_empty() {
            return Ok(ConsumerAssignment::default());
        }
        let (version, mut body) = split_version(bytes)?;
        let msg = ConsumerProtocolAssignment::decode(&mut body, version)
            .map_err(|e| ConsumerProtocolError::Malformed(e.to_string()))?;
        let mut partitions: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for tp in msg.assigned_partitions {
            partitions
                .entry(tp.topic.0.to_string())
                .or_default()
                .extend(tp.partitions);
        }
        for ps in partitions.values_mut() {
            ps.sort_unstable();
        }
        Ok(ConsumerAssignment {
            partitions,
            user_data: msg.user_data,
        })
    }

    /// Number of assigned partitions.
    pub fn len(&self) -> usize {
        self.partitions.values().map(Vec::len).sum()
    }

    /// True when nothing is assigned.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A group member as the assignor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignorMember {
    /// Member id.
    pub member_id: String,
    /// Static member id.
    pub group_instance_id: Option<String>,
    /// Its subscription.
    pub subscription: ConsumerSubscription,
}

/// Kafka's member order: static members by instance id first, then dynamic ones by member id.
fn member_order(a: &AssignorMember, b: &AssignorMember) -> std::cmp::Ordering {
    match (&a.group_instance_id, &b.group_instance_id) {
        (Some(x), Some(y)) => x.cmp(y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.member_id.cmp(&b.member_id),
    }
}

/// A partition assignment strategy, run by the group leader.
pub trait PartitionAssignor {
    /// The protocol name members advertise ("range", "roundrobin").
    fn name(&self) -> &'static str;
    /// Assigns the partitions of the subscribed topics (partition counts in
    /// `partitions_per_topic`; topics missing there are skipped) to `members`.
    fn assign(
        &self,
        partitions_per_topic: &BTreeMap<String, i32>,
        members: &[AssignorMember],
    ) -> BTreeMap<String, ConsumerAssignment>;
}

fn empty_assignments(members: &[AssignorMember]) -> BTreeMap<String, ConsumerAssignment> {
    members
        .iter()
        .map(|m| (m.member_id.clone(), ConsumerAssignment::default()))
        .collect()
}

/// Kafka's `RangeAssignor`: per topic, consecutive ranges of partitions to the sorted
/// subscribers, the first `partitions % subscribers` getting one extra.
#[derive(Debug, Clone, Copy, Default)]
pub struct RangeAssignor;

impl PartitionAssignor for RangeAssignor {
    fn name(&self) -> &'static str {
        "range"
    }

    fn assign(
        &self,
        partitions_per_topic: &BTreeMap<String, i32>,
        members: &[AssignorMember],
    ) -> BTreeMap<String, ConsumerAssignment> {
        let mut out = empty_assignments(members);
        let topics: BTreeSet<&String> = members
            .iter()
            .flat_map(|m| &m.subscription.topics)
            .collect();
        for topic in topics {
            let Some(&count) = partitions_per_topic.get(topic) else {
                continue;
            };
            let mut subscribers: Vec<&AssignorMember> = members
                .iter()
                .filter(|m| m.subscription.topics.contains(topic))
                .collect();
            subscribers.sort_by(|a, b| member_order(a, b));
            let n = subscribers.len() as i32;
            if n == 0 || count <= 0 {
                continue;
            }
            let (per, extra) = (count / n, count % n);
            for (i, m) in subscribers.iter().enumerate() {
                let i = i as i32;
                let start = per * i + i.min(extra);
                let len = per + i32::from(i < extra);
                if len == 0 {
                    continue;
                }
                if let Some(a) = out.get_mut(&m.member_id) {
                    a.partitions
                        .entry(topic.clone())
                        .or_default()
                        .extend(start..start + len);
                }
            }
        }
        out
    }
}

/// Kafka's `RoundRobinAssignor`: all partitions of all subscribed topics, sorted, dealt one by
/// one to the sorted members, skipping members not subscribed to the partition's topic.
#[derive(Debug, Clone, Copy, Default)]
pub struct RoundRobinAssignor;

impl PartitionAssignor for RoundRobinAssignor {
    fn name(&self) -> &'static str {
        "roundrobin"
    }

    fn assign(
        &self,
        partitions_per_topic: &BTreeMap<String, i32>,
        members: &[AssignorMember],
    ) -> BTreeMap<String, ConsumerAssignment> {
        let mut out = empty_assignments(members);
        let mut sorted: Vec<&AssignorMember> = members.iter().collect();
        sorted.sort_by(|a, b| member_order(a, b));
        if sorted.is_empty() {
            return out;
        }
        let topics: BTreeSet<&String> = members
            .iter()
            .flat_map(|m| &m.subscription.topics)
            .collect();
        let mut cursor = 0usize;
        for topic in topics {
            let Some(&count) = partitions_per_topic.get(topic) else {
                continue;
            };
            for partition in 0..count.max(0) {
                // Some member subscribes to `topic` (it came from a subscription), so this
                // search ends within one lap.
                let Some(offset) = (0..sorted.len()).find(|k| {
                    sorted[(cursor + k) % sorted.len()]
                        .subscription
                        .topics
                        .contains(topic)
                }) else {
                    break;
                };
                let idx = (cursor + offset) % sorted.len();
                if let Some(a) = out.get_mut(&sorted[idx].member_id) {
                    a.partitions
                        .entry(topic.clone())
                        .or_default()
                        .push(partition);
                }
                cursor = idx + 1;
            }
        }
        out
    }
}

/// The assignor named `name`, if Sluice implements it.
pub fn assignor_by_name(name: &str) -> Option<Box<dyn PartitionAssignor>> {
    match name {
        "range" => Some(Box::new(RangeAssignor)),
        "roundrobin" => Some(Box::new(RoundRobinAssignor)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, topics: &[&str]) -> AssignorMember {
        AssignorMember {
            member_id: id.into(),
            group_instance_id: None,
            subscription: ConsumerSubscription::new(topics.iter().copied()),
        }
    }

    fn counts(pairs: &[(&str, i32)]) -> BTreeMap<String, i32> {
        pairs.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    fn parts(a: &ConsumerAssignment) -> Vec<(String, i32)> {
        a.partitions
            .iter()
            .flat_map(|(t, ps)| ps.iter().map(move |p| (t.clone(), *p)))
            .collect()
    }

    fn tp(list: &[(&str, i32)]) -> Vec<(String, i32)> {
        list.iter().map(|(t, p)| (t.to_string(), *p)).collect()
    }

    #[test]
    fn range_matches_kafka_documentation_example() {
        // RangeAssignor javadoc: C0, C1 on t0, t1 with 3 partitions each.
        let members = [member("C0", &["t0", "t1"]), member("C1", &["t0", "t1"])];
        let a = RangeAssignor.assign(&counts(&[("t0", 3), ("t1", 3)]), &members);
        assert_eq!(
            parts(&a["C0"]),
            tp(&[("t0", 0), ("t0", 1), ("t1", 0), ("t1", 1)])
        );
        assert_eq!(parts(&a["C1"]), tp(&[("t0", 2), ("t1", 2)]));
    }

    #[test]
    fn roundrobin_matches_kafka_documentation_examples() {
        // RoundRobinAssignor javadoc, identical subscriptions.
        let members = [member("C0", &["t0", "t1"]), member("C1", &["t0", "t1"])];
        let a = RoundRobinAssignor.assign(&counts(&[("t0", 3), ("t1", 3)]), &members);
        assert_eq!(parts(&a["C0"]), tp(&[("t0", 0), ("t0", 2), ("t1", 1)]));
        assert_eq!(parts(&a["C1"]), tp(&[("t0", 1), ("t1", 0), ("t1", 2)]));
        // Javadoc, differing subscriptions: t0 1 partition, t1 2, t2 3.
        let members = [
            member("C0", &["t0"]),
            member("C1", &["t0", "t1"]),
            member("C2", &["t0", "t1", "t2"]),
        ];
        let a = RoundRobinAssignor.assign(&counts(&[("t0", 1), ("t1", 2), ("t2", 3)]), &members);
        assert_eq!(parts(&a["C0"]), tp(&[("t0", 0)]));
        assert_eq!(parts(&a["C1"]), tp(&[("t1", 0)]));
        assert_eq!(
            parts(&a["C2"]),
            tp(&[("t1", 1), ("t2", 0), ("t2", 1), ("t2", 2)])
        );
    }

    #[test]
    fn every_partition_assigned_exactly_once() {
        let members = [
            member("b", &["x", "y"]),
            member("a", &["x"]),
            member("c", &["y", "z"]),
        ];
        let topics = counts(&[("x", 7), ("y", 5), ("z", 1), ("unknown-to-metadata", 0)]);
        for assignor in [
            &RangeAssignor as &dyn PartitionAssignor,
            &RoundRobinAssignor,
        ] {
            let a = assignor.assign(&topics, &members);
            let mut seen = BTreeSet::new();
            for (mid, asg) in &a {
                let m = members.iter().find(|m| &m.member_id == mid).unwrap();
                for (t, p) in parts(asg) {
                    assert!(
                        m.subscription.topics.contains(&t),
                        "{} got unsubscribed {t}",
                        assignor.name()
                    );
                    assert!(seen.insert((t, p)), "{} assigned twice", assignor.name());
                }
            }
            assert_eq!(seen.len(), 13, "{}", assignor.name());
        }
    }

    #[test]
    fn range_sorts_static_members_first_by_instance_id() {
        let mut m1 = member("zzz", &["t"]);
        m1.group_instance_id = Some("b".into());
        let mut m2 = member("aaa", &["t"]);
        m2.group_instance_id = Some("a".into());
        let m3 = member("000", &["t"]);
        let a = RangeAssignor.assign(&counts(&[("t", 3)]), &[m1, m2, m3]);
        assert_eq!(parts(&a["aaa"]), tp(&[("t", 0)]));
        assert_eq!(parts(&a["zzz"]), tp(&[("t", 1)]));
        assert_eq!(parts(&a["000"]), tp(&[("t", 2)]));
    }

    #[test]
    fn more_members_than_partitions_leaves_some_empty() {
        let members = [
            member("a", &["t"]),
            member("b", &["t"]),
            member("c", &["t"]),
        ];
        let a = RangeAssignor.assign(&counts(&[("t", 2)]), &members);
        assert_eq!(a["a"].len() + a["b"].len() + a["c"].len(), 2);
        assert!(a["c"].is_empty());
    }

    #[test]
    fn subscription_round_trips_every_version() {
        let sub = ConsumerSubscription {
            topics: vec!["a".into(), "b".into()],
            user_data: Some(Bytes::from_static(b"ud")),
            owned_partitions: vec![("a".into(), vec![0, 2])],
            generation_id: 7,
            rack_id: Some("r1".into()),
        };
        let v3 = sub.encode(3);
        assert_eq!(&v3[..2], &[0, 3]);
        assert_eq!(ConsumerSubscription::decode(&v3).unwrap(), sub);
        let v0 = ConsumerSubscription::decode(&sub.encode(0)).unwrap();
        assert_eq!(v0.topics, sub.topics);
        assert!(v0.owned_partitions.is_empty());
        assert_eq!(v0.generation_id, -1);
        // A future version with extra trailing fields still decodes.
        let mut future = sub.encode(3).to_vec();
        future[1] = 9;
        future.extend_from_slice(&[1, 2, 3]);
        assert_eq!(
            ConsumerSubscription::decode(&future).unwrap().topics,
            sub.topics
        );
        assert!(ConsumerSubscription::decode(&[0]).is_err());
        assert!(ConsumerSubscription::decode(&[0xff, 0xff, 0]).is_err());
        assert!(ConsumerSubscription::decode(&[0, 0, 0, 0, 0, 9]).is_err());
    }

    #[test]
    fn assignment_round_trips() {
        let mut a = ConsumerAssignment::default();
        a.partitions.insert("t".into(), vec![1, 3]);
        a.partitions.insert("u".into(), vec![0]);
        for v in 0..=3 {
            assert_eq!(ConsumerAssignment::decode(&a.encode(v)).unwrap(), a);
        }
        assert!(ConsumerAssignment::decode(&[]).unwrap().is_empty());
        assert!(ConsumerAssignment::decode(&[0, 0, 0, 0, 0, 5, 0]).is_err());
        assert!(assignor_by_name("range").is_some());
        assert!(assignor_by_name("sticky").is_none());
    }
}
