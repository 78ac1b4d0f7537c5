//! kafka-protocol (0.18) messages to and from the coordinator's [`api`](super::api) types.
//!
//! Each `*_request` function takes the decoded request and its API version and returns the
//! core request; each `*_response` builds the response message for that version, filling
//! only fields the version has (kafka-protocol refuses to encode others). The broker's
//! handler is then: decode, convert, `GroupCoordinator::handle`, convert, encode.

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{
    DescribedGroup as WireDescribedGroup, DescribedGroupMember,
};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup as WireListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{
    DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse,
    GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse,
    LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse,
    OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse,
    OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse, TopicName,
    TxnOffsetCommitRequest, TxnOffsetCommitResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::api::*;

fn s(v: &StrBytes) -> String {
    v.as_str().to_owned()
}

fn os(v: &Option<StrBytes>) -> Option<String> {
    v.as_ref().map(s)
}

fn sb(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_owned())
}

fn osb(v: &Option<String>) -> Option<StrBytes> {
    v.as_deref().map(sb)
}

/// Groups `(topic, partition, x)` rows by topic, keeping the first-seen topic order.
fn by_topic<T>(rows: impl IntoIterator<Item = (String, T)>) -> Vec<(String, Vec<T>)> {
    let mut out: Vec<(String, Vec<T>)> = Vec::new();
    for (topic, row) in rows {
        match out.iter_mut().find(|(t, _)| *t == topic) {
            Some((_, v)) => v.push(row),
            None => out.push((topic, vec![row])),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// JoinGroup (v0-9).

/// JoinGroup request -> core. `client_id` from the request header, `client_host` as Kafka
/// shows it ("/127.0.0.1").
pub fn join_group_request(
    req: &JoinGroupRequest,
    version: i16,
    client_id: &str,
    client_host: &str,
) -> JoinGroup {
    JoinGroup {
        group_id: s(&req.group_id.0),
        session_timeout_ms: req.session_timeout_ms,
        // v0 had no rebalance timeout: the session timeout served as both.
        rebalance_timeout_ms: if version == 0 || req.rebalance_timeout_ms < 0 {
            req.session_timeout_ms
        } else {
            req.rebalance_timeout_ms
        },
        member_id: s(&req.member_id),
        group_instance_id: if version >= 5 {
            os(&req.group_instance_id)
        } else {
            None
        },
        protocol_type: s(&req.protocol_type),
        protocols: req
            .protocols
            .iter()
            .map(|p| JoinProtocol {
                name: s(&p.name),
                metadata: p.metadata.clone(),
            })
            .collect(),
        require_known_member_id: version >= 4,
        client_id: client_id.to_owned(),
        client_host: client_host.to_owned(),
        reason: if version >= 8 { os(&req.reason) } else { None },
    }
}

/// Core -> JoinGroup response.
pub fn join_group_response(r: &JoinGroupResult, version: i16) -> JoinGroupResponse {
    let protocol_name = match (&r.protocol_name, version >= 7) {
        (Some(p), _) => Some(sb(p)),
        (None, true) => None,
        // Before v7 the field is not nullable.
        (None, false) => Some(StrBytes::default()),
    };
    JoinGroupResponse::default()
        .with_error_code(r.error)
        .with_generation_id(r.generation_id)
        .with_protocol_type(if version >= 7 {
            osb(&r.protocol_type)
        } else {
            None
        })
        .with_protocol_name(protocol_name)
        .with_leader(sb(&r.leader))
        .with_member_id(sb(&r.member_id))
        .with_members(
            r.members
                .iter()
                .map(|m| {
                    JoinGroupResponseMember::default()
                        .with_member_id(sb(&m.member_id))
                        .with_group_instance_id(if version >= 5 {
                            osb(&m.group_instance_id)
                        } else {
                            None
                        })
                        .with_metadata(m.metadata.clone())
                })
                .collect(),
        )
}

// ---------------------------------------------------------------------------------------------
// SyncGroup (v0-5).

/// SyncGroup request -> core.
pub fn sync_group_request(req: &SyncGroupRequest, version: i16) -> SyncGroup {
    SyncGroup {
        group_id: s(&req.group_id.0),
        generation_id: req.generation_id,
        member_id: s(&req.member_id),
        group_instance_id: if version >= 3 {
            os(&req.group_instance_id)
        } else {
            None
        },
        protocol_type: if version >= 5 {
            os(&req.protocol_type)
        } else {
            None
        },
        protocol_name: if version >= 5 {
            os(&req.protocol_name)
        } else {
            None
        },
        assignments: req
            .assignments
            .iter()
            .map(|a| (s(&a.member_id), a.assignment.clone()))
            .collect(),
    }
}

/// Core -> SyncGroup response.
pub fn sync_group_response(r: &SyncGroupResult, version: i16) -> SyncGroupResponse {
    let v5 = version >= 5;
    SyncGroupResponse::default()
        .with_error_code(r.error)
        .with_protocol_type(if v5 { osb(&r.protocol_type) } else { None })
        .with_protocol_name(if v5 { osb(&r.protocol_name) } else { None })
        .with_assignment(r.assignment.clone())
}

// ---------------------------------------------------------------------------------------------
// Heartbeat (v0-4).

/// Heartbeat request -> core.
pub fn heartbeat_request(req: &HeartbeatRequest, version: i16) -> Heartbeat {
    Heartbeat {
        group_id: s(&req.group_id.0),
        generation_id: req.generation_id,
        member_id: s(&req.member_id),
        group_instance_id: if version >= 3 {
            os(&req.group_instance_id)
        } else {
            None
        },
    }
}

/// Core -> Heartbeat response.
pub fn heartbeat_response(error: ErrorCode) -> HeartbeatResponse {
    HeartbeatResponse::default().with_error_code(error)
}

// ---------------------------------------------------------------------------------------------
// LeaveGroup (v0-5).

/// LeaveGroup request -> core: v0-2 carry one member id, v3+ a batch.
pub fn leave_group_request(req: &LeaveGroupRequest, version: i16) -> LeaveGroup {
    let members = if version <= 2 {
        vec![LeavingMember {
            member_id: s(&req.member_id),
            group_instance_id: None,
        }]
    } else {
        req.members
            .iter()
            .map(|m| LeavingMember {
                member_id: s(&m.member_id),
                group_instance_id: os(&m.group_instance_id),
            })
            .collect()
    };
    LeaveGroup {
        group_id: s(&req.group_id.0),
        members,
    }
}

/// Core -> LeaveGroup response. Before v3 the single member's error is the top-level error.
pub fn leave_group_response(r: &LeaveGroupResult, version: i16) -> LeaveGroupResponse {
    if version <= 2 {
        let error = if r.error != codes::NONE {
            r.error
        } else {
            r.members.first().map_or(codes::NONE, |m| m.2)
        };
        return LeaveGroupResponse::default().with_error_code(error);
    }
    LeaveGroupResponse::default()
        .with_error_code(r.error)
        .with_members(
            r.members
                .iter()
                .map(|(id, inst, code)| {
                    MemberResponse::default()
                        .with_member_id(sb(id))
                        .with_group_instance_id(osb(inst))
                        .with_error_code(*code)
                })
                .collect(),
        )
}

// ---------------------------------------------------------------------------------------------
// OffsetCommit (v2-9).

/// OffsetCommit request -> core.
pub fn offset_commit_request(req: &OffsetCommitRequest, version: i16) -> OffsetCommit {
    OffsetCommit {
        group_id: s(&req.group_id.0),
        generation_id: req.generation_id_or_member_epoch,
        member_id: s(&req.member_id),
        group_instance_id: if version >= 7 {
            os(&req.group_instance_id)
        } else {
            None
        },
        retention_time_ms: if (2..=4).contains(&version) {
            req.retention_time_ms
        } else {
            -1
        },
        partitions: req
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions.iter().map(move |p| PartitionCommit {
                    topic: s(&t.name.0),
                    partition: p.partition_index,
                    offset: p.committed_offset,
                    leader_epoch: if version >= 6 {
                        p.committed_leader_epoch
                    } else {
                        -1
                    },
                    metadata: os(&p.committed_metadata),
                })
            })
            .collect(),
    }
}

/// Core -> OffsetCommit response.
pub fn offset_commit_response(results: &[PartitionError]) -> OffsetCommitResponse {
    let topics = by_topic(results.iter().map(|(t, p, e)| (t.clone(), (*p, *e))));
    OffsetCommitResponse::default().with_topics(
        topics
            .into_iter()
            .map(|(t, parts)| {
                OffsetCommitResponseTopic::default()
                    .with_name(TopicName(sb(&t)))
                    .with_partitions(
                        parts
                            .into_iter()
                            .map(|(p, e)| {
                                OffsetCommitResponsePartition::default()
                                    .with_partition_index(p)
                                    .with_error_code(e)
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------------
// TxnOffsetCommit (v0-3 served; the crate knows 0-5, and 4-5 carry nothing new here).

/// TxnOffsetCommit request -> core. Before v3 there is no member: generation -1, member "".
pub fn txn_offset_commit_request(req: &TxnOffsetCommitRequest, version: i16) -> TxnOffsetCommit {
    let v3 = version >= 3;
    TxnOffsetCommit {
        transactional_id: s(&req.transactional_id.0),
        group_id: s(&req.group_id.0),
        producer_id: req.producer_id.0,
        producer_epoch: req.producer_epoch,
        generation_id: if v3 { req.generation_id } else { -1 },
        member_id: if v3 { s(&req.member_id) } else { String::new() },
        group_instance_id: if v3 { os(&req.group_instance_id) } else { None },
        partitions: req
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions.iter().map(move |p| PartitionCommit {
                    topic: s(&t.name.0),
                    partition: p.partition_index,
                    offset: p.committed_offset,
                    leader_epoch: if version >= 2 {
                        p.committed_leader_epoch
                    } else {
                        -1
                    },
                    metadata: os(&p.committed_metadata),
                })
            })
            .collect(),
    }
}

/// Core -> TxnOffsetCommit response (the same shape in every version).
pub fn txn_offset_commit_response(results: &[PartitionError]) -> TxnOffsetCommitResponse {
    let topics = by_topic(results.iter().map(|(t, p, e)| (t.clone(), (*p, *e))));
    TxnOffsetCommitResponse::default().with_topics(
        topics
            .into_iter()
            .map(|(t, parts)| {
                TxnOffsetCommitResponseTopic::default()
                    .with_name(TopicName(sb(&t)))
                    .with_partitions(
                        parts
                            .into_iter()
                            .map(|(p, e)| {
                                TxnOffsetCommitResponsePartition::default()
                                    .with_partition_index(p)
                                    .with_error_code(e)
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------------
// OffsetFetch (v1-9). `require_stable` (v7+) asks for UNSTABLE_OFFSET_COMMIT on partitions
// with an undecided commit.

/// OffsetFetch request -> core (one group before v8, several from v8).
pub fn offset_fetch_request(req: &OffsetFetchRequest, version: i16) -> OffsetFetch {
    if version >= 8 {
        OffsetFetch {
            groups: req
                .groups
                .iter()
                .map(|g| OffsetFetchGroup {
                    group_id: s(&g.group_id.0),
                    topics: g.topics.as_ref().map(|ts| {
                        ts.iter()
                            .map(|t| (s(&t.name.0), t.partition_indexes.clone()))
                            .collect()
                    }),
                })
                .collect(),
            require_stable: req.require_stable,
        }
    } else {
        OffsetFetch {
            groups: vec![OffsetFetchGroup {
                group_id: s(&req.group_id.0),
                topics: req.topics.as_ref().map(|ts| {
                    ts.iter()
                        .map(|t| (s(&t.name.0), t.partition_indexes.clone()))
                        .collect()
                }),
            }],
            require_stable: version >= 7 && req.require_stable,
        }
    }
}

/// Core -> OffsetFetch response. `request` is the core request the results answer (needed
/// for v1, which reports a group error on every requested partition).
pub fn offset_fetch_response(
    request: &OffsetFetch,
    results: &[OffsetFetchGroupResult],
    version: i16,
) -> OffsetFetchResponse {
    let epoch = |e: i32| if version >= 5 { e } else { -1 };
    if version >= 8 {
        return OffsetFetchResponse::default().with_groups(
            results
                .iter()
                .map(|g| {
                    let topics = by_topic(g.offsets.iter().map(|o| (o.topic.clone(), o)));
                    OffsetFetchResponseGroup::default()
                        .with_group_id(GroupId(sb(&g.group_id)))
                        .with_error_code(g.error)
                        .with_topics(
                            topics
                                .into_iter()
                                .map(|(t, offs)| {
                                    OffsetFetchResponseTopics::default()
                                        .with_name(TopicName(sb(&t)))
                                        .with_partitions(
                                            offs.into_iter()
                                                .map(|o| {
                                                    OffsetFetchResponsePartitions::default()
                                                        .with_partition_index(o.partition)
                                                        .with_committed_offset(o.offset)
                                                        .with_committed_leader_epoch(o.leader_epoch)
                                                        .with_metadata(Some(sb(&o.metadata)))
                                                        .with_error_code(o.error)
                                                })
                                                .collect(),
                                        )
                                })
                                .collect(),
                        )
                })
                .collect(),
        );
    }
    let Some(g) = results.first() else {
        return OffsetFetchResponse::default();
    };
    let mut offsets = g.offsets.clone();
    if version < 2 && g.error != codes::NONE {
        // v1 has no top-level error: every requested partition carries it.
        if let Some(topics) = request.groups.first().and_then(|rg| rg.topics.as_ref()) {
            offsets = topics
                .iter()
                .flat_map(|(t, ps)| {
                    ps.iter().map(move |p| FetchedOffset {
                        topic: t.clone(),
                        partition: *p,
                        offset: -1,
                        leader_epoch: -1,
                        metadata: String::new(),
                        error: g.error,
                    })
                })
                .collect();
        }
    }
    let topics = by_topic(offsets.iter().map(|o| (o.topic.clone(), o)));
    let mut resp = OffsetFetchResponse::default().with_topics(
        topics
            .into_iter()
            .map(|(t, offs)| {
                OffsetFetchResponseTopic::default()
                    .with_name(TopicName(sb(&t)))
                    .with_partitions(
                        offs.into_iter()
                            .map(|o| {
                                OffsetFetchResponsePartition::default()
                                    .with_partition_index(o.partition)
                                    .with_committed_offset(o.offset)
                                    .with_committed_leader_epoch(epoch(o.leader_epoch))
                                    .with_metadata(Some(sb(&o.metadata)))
                                    .with_error_code(o.error)
                            })
                            .collect(),
                    )
            })
            .collect(),
    );
    if version >= 2 {
        resp = resp.with_error_code(g.error);
    }
    resp
}

// ---------------------------------------------------------------------------------------------
// ListGroups (v0-5), DescribeGroups (v0-6), DeleteGroups (v0-2), OffsetDelete (v0).

/// ListGroups request -> core.
pub fn list_groups_request(req: &ListGroupsRequest, version: i16) -> ListGroups {
    ListGroups {
        states_filter: if version >= 4 {
            req.states_filter.iter().map(s).collect()
        } else {
            Vec::new()
        },
        types_filter: if version >= 5 {
            req.types_filter.iter().map(s).collect()
        } else {
            Vec::new()
        },
    }
}

/// Core -> ListGroups response.
pub fn list_groups_response(r: &ListGroupsResult, version: i16) -> ListGroupsResponse {
    ListGroupsResponse::default()
        .with_error_code(r.error)
        .with_groups(
            r.groups
                .iter()
                .map(|g| {
                    let mut lg = WireListedGroup::default()
                        .with_group_id(GroupId(sb(&g.group_id)))
                        .with_protocol_type(sb(&g.protocol_type));
                    if version >= 4 {
                        lg = lg.with_group_state(sb(&g.state));
                    }
                    if version >= 5 {
                        lg = lg.with_group_type(StrBytes::from_static_str("classic"));
                    }
                    lg
                })
                .collect(),
        )
}

/// DescribeGroups request -> core (the group ids).
pub fn describe_groups_request(req: &DescribeGroupsRequest) -> Vec<String> {
    req.groups.iter().map(|g| s(&g.0)).collect()
}

/// Core -> DescribeGroups response. From v6 a missing group is GROUP_ID_NOT_FOUND (KIP-1043);
/// before, Kafka describes it as a Dead group with no error.
pub fn describe_groups_response(groups: &[DescribedGroup], version: i16) -> DescribeGroupsResponse {
    DescribeGroupsResponse::default().with_groups(
        groups
            .iter()
            .map(|g| {
                let mut d = WireDescribedGroup::default()
                    .with_error_code(g.error)
                    .with_group_id(GroupId(sb(&g.group_id)))
                    .with_group_state(sb(&g.state))
                    .with_protocol_type(sb(&g.protocol_type))
                    .with_protocol_data(sb(&g.protocol))
                    .with_members(
                        g.members
                            .iter()
                            .map(|m| {
                                DescribedGroupMember::default()
                                    .with_member_id(sb(&m.member_id))
                                    .with_group_instance_id(if version >= 4 {
                                        osb(&m.group_instance_id)
                                    } else {
                                        None
                                    })
                                    .with_client_id(sb(&m.client_id))
                                    .with_client_host(sb(&m.client_host))
                                    .with_member_metadata(m.metadata.clone())
                                    .with_member_assignment(m.assignment.clone())
                            })
                            .collect(),
                    );
                if version >= 6 && g.error == codes::NONE && !g.exists {
                    d = d
                        .with_error_code(codes::GROUP_ID_NOT_FOUND)
                        .with_error_message(Some(sb(&format!("Group {} not found.", g.group_id))));
                }
                d
            })
            .collect(),
    )
}

/// DeleteGroups request -> core (the group ids).
pub fn delete_groups_request(req: &DeleteGroupsRequest) -> Vec<String> {
    req.groups_names.iter().map(|g| s(&g.0)).collect()
}

/// Core -> DeleteGroups response.
pub fn delete_groups_response(results: &[(String, ErrorCode)]) -> DeleteGroupsResponse {
    DeleteGroupsResponse::default().with_results(
        results
            .iter()
            .map(|(g, e)| {
                DeletableGroupResult::default()
                    .with_group_id(GroupId(sb(g)))
                    .with_error_code(*e)
            })
            .collect(),
    )
}

/// OffsetDelete request -> core.
pub fn offset_delete_request(req: &OffsetDeleteRequest) -> OffsetDelete {
    OffsetDelete {
        group_id: s(&req.group_id.0),
        topics: req
            .topics
            .iter()
            .map(|t| {
                (
                    s(&t.name.0),
                    t.partitions.iter().map(|p| p.partition_index).collect(),
                )
            })
            .collect(),
    }
}

/// Core -> OffsetDelete response.
pub fn offset_delete_response(r: &OffsetDeleteResult) -> OffsetDeleteResponse {
    let topics = by_topic(r.partitions.iter().map(|(t, p, e)| (t.clone(), (*p, *e))));
    OffsetDeleteResponse::default()
        .with_error_code(r.error)
        .with_topics(
            topics
                .into_iter()
                .map(|(t, parts)| {
                    OffsetDeleteResponseTopic::default()
                        .with_name(TopicName(sb(&t)))
                        .with_partitions(
                            parts
                                .into_iter()
                                .map(|(p, e)| {
                                    OffsetDeleteResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_error_code(e)
                                })
                                .collect(),
                        )
                })
                .collect(),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::leave_group_request::MemberIdentity;
    use kafka_protocol::messages::offset_fetch_request::{
        OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
    };
    use kafka_protocol::protocol::{Decodable, Encodable, Message};

    /// Encodes and decodes `msg` at every version it supports, proving the response is valid
    /// for that version.
    fn round_trip<M: Encodable + Decodable + Message>(
        msg: &M,
        versions: std::ops::RangeInclusive<i16>,
    ) -> Vec<M> {
        versions
            .map(|v| {
                let mut buf = BytesMut::new();
                msg.encode(&mut buf, v)
                    .unwrap_or_else(|e| panic!("encode v{v}: {e}"));
                let mut bytes = buf.freeze();
                M::decode(&mut bytes, v).unwrap_or_else(|e| panic!("decode v{v}: {e}"))
            })
            .collect()
    }

    #[test]
    fn join_request_versions() {
        let req = JoinGroupRequest::default()
            .with_group_id(GroupId(sb("g")))
            .with_session_timeout_ms(10_000)
            .with_rebalance_timeout_ms(60_000)
            .with_protocol_type(sb("consumer"))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(sb("range"))
                .with_metadata(Bytes::from_static(b"m"))]);
        let v0 = join_group_request(&req, 0, "cid", "/127.0.0.1");
        assert_eq!(v0.rebalance_timeout_ms, 10_000);
        assert!(!v0.require_known_member_id);
        let v4 = join_group_request(&req, 4, "cid", "/h");
        assert_eq!(v4.rebalance_timeout_ms, 60_000);
        assert!(v4.require_known_member_id);
        assert_eq!(v4.protocols[0].name, "range");
        let with_inst = req.clone().with_group_instance_id(Some(sb("i")));
        assert_eq!(
            join_group_request(&with_inst, 5, "c", "h")
                .group_instance_id
                .as_deref(),
            Some("i")
        );
    }

    #[test]
    fn responses_encode_for_every_version() {
        let join = JoinGroupResult {
            error: codes::NONE,
            generation_id: 3,
            protocol_type: Some("consumer".into()),
            protocol_name: None,
            leader: "m1".into(),
            member_id: "m1".into(),
            members: vec![JoinedMember {
                member_id: "m1".into(),
                group_instance_id: Some("i".into()),
                metadata: Bytes::from_static(b"x"),
            }],
        };
        for v in 0..=9 {
            let decoded = round_trip(&join_group_response(&join, v), v..=v);
            assert_eq!(decoded[0].generation_id, 3);
            assert_eq!(decoded[0].members.len(), 1);
        }
        let sync = SyncGroupResult {
            error: codes::NONE,
            protocol_type: Some("consumer".into()),
            protocol_name: Some("range".into()),
            assignment: Bytes::from_static(b"a"),
        };
        for v in 0..=5 {
            assert_eq!(
                &round_trip(&sync_group_response(&sync, v), v..=v)[0].assignment[..],
                b"a"
            );
        }
        round_trip(&heartbeat_response(codes::REBALANCE_IN_PROGRESS), 0..=4);
        let leave = LeaveGroupResult {
            error: codes::NONE,
            members: vec![("m".into(), None, codes::UNKNOWN_MEMBER_ID)],
        };
        for v in 0..=5 {
            let d = &round_trip(&leave_group_response(&leave, v), v..=v)[0];
            if v <= 2 {
                assert_eq!(d.error_code, codes::UNKNOWN_MEMBER_ID);
            } else {
                assert_eq!(d.error_code, codes::NONE);
                assert_eq!(d.members[0].error_code, codes::UNKNOWN_MEMBER_ID);
            }
        }
        let commit =
            offset_commit_response(&[("t".into(), 0, 0), ("u".into(), 1, 22), ("t".into(), 1, 0)]);
        assert_eq!(commit.topics.len(), 2);
        assert_eq!(commit.topics[0].partitions.len(), 2);
        round_trip(&commit, 2..=9);
        let listed = ListGroupsResult {
            error: codes::NONE,
            groups: vec![ListedGroup {
                group_id: "g".into(),
                protocol_type: "consumer".into(),
                state: "Stable".into(),
            }],
        };
        for v in 0..=5 {
            let d = &round_trip(&list_groups_response(&listed, v), v..=v)[0];
            assert_eq!(
                d.groups[0].group_state.as_str(),
                if v >= 4 { "Stable" } else { "" }
            );
        }
        let missing = DescribedGroup {
            error: codes::NONE,
            group_id: "nope".into(),
            exists: false,
            state: "Dead".into(),
            protocol_type: String::new(),
            protocol: String::new(),
            members: vec![],
        };
        for v in 0..=6 {
            let d = &round_trip(
                &describe_groups_response(std::slice::from_ref(&missing), v),
                v..=v,
            )[0];
            let expect = if v >= 6 {
                codes::GROUP_ID_NOT_FOUND
            } else {
                codes::NONE
            };
            assert_eq!(d.groups[0].error_code, expect);
        }
        round_trip(
            &delete_groups_response(&[("g".into(), codes::NON_EMPTY_GROUP)]),
            0..=2,
        );
        round_trip(
            &offset_delete_response(&OffsetDeleteResult {
                error: codes::NONE,
                partitions: vec![("t".into(), 0, codes::GROUP_SUBSCRIBED_TO_TOPIC)],
            }),
            0..=0,
        );
    }

    /// Encodes a request at `v` and decodes it again, as the broker receives it.
    fn received<M: Encodable + Decodable>(m: &M, v: i16) -> M {
        let mut buf = BytesMut::new();
        m.encode(&mut buf, v)
            .unwrap_or_else(|e| panic!("encode v{v}: {e}"));
        M::decode(&mut buf.freeze(), v).unwrap_or_else(|e| panic!("decode v{v}: {e}"))
    }

    #[test]
    fn offset_commit_request_every_version() {
        use kafka_protocol::messages::offset_commit_request::{
            OffsetCommitRequestPartition, OffsetCommitRequestTopic,
        };
        for v in 2..=9 {
            let mut req = OffsetCommitRequest::default()
                .with_group_id(GroupId(sb("g")))
                .with_generation_id_or_member_epoch(4)
                .with_member_id(sb("m"))
                .with_topics(vec![OffsetCommitRequestTopic::default()
                    .with_name(TopicName(sb("t")))
                    .with_partitions(vec![OffsetCommitRequestPartition::default()
                        .with_partition_index(2)
                        .with_committed_offset(99)
                        .with_committed_leader_epoch(if v >= 6 { 7 } else { -1 })
                        .with_committed_metadata(Some(sb("md")))])]);
            if (2..=4).contains(&v) {
                req = req.with_retention_time_ms(5_000);
            }
            if v >= 7 {
                req = req.with_group_instance_id(Some(sb("i")));
            }
            let core = offset_commit_request(&received(&req, v), v);
            assert_eq!(
                (core.generation_id, core.member_id.as_str()),
                (4, "m"),
                "v{v}"
            );
            assert_eq!(core.partitions[0].offset, 99);
            assert_eq!(core.partitions[0].metadata.as_deref(), Some("md"));
            assert_eq!(core.partitions[0].leader_epoch, if v >= 6 { 7 } else { -1 });
            assert_eq!(core.retention_time_ms, if v <= 4 { 5_000 } else { -1 });
            assert_eq!(core.group_instance_id.is_some(), v >= 7);
        }
    }

    #[test]
    fn admin_requests_every_version() {
        use kafka_protocol::messages::offset_delete_request::{
            OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
        };
        for v in 0..=5 {
            let mut req = ListGroupsRequest::default();
            if v >= 4 {
                req = req.with_states_filter(vec![sb("Stable")]);
            }
            if v >= 5 {
                req = req.with_types_filter(vec![sb("classic")]);
            }
            let core = list_groups_request(&received(&req, v), v);
            assert_eq!(core.states_filter.len(), usize::from(v >= 4));
            assert_eq!(core.types_filter.len(), usize::from(v >= 5));
        }
        for v in 0..=6 {
            let req = DescribeGroupsRequest::default()
                .with_groups(vec![GroupId(sb("a")), GroupId(sb("b"))]);
            assert_eq!(describe_groups_request(&received(&req, v)), vec!["a", "b"]);
        }
        for v in 0..=2 {
            let req = DeleteGroupsRequest::default().with_groups_names(vec![GroupId(sb("x"))]);
            assert_eq!(delete_groups_request(&received(&req, v)), vec!["x"]);
        }
        let req = OffsetDeleteRequest::default()
            .with_group_id(GroupId(sb("g")))
            .with_topics(vec![OffsetDeleteRequestTopic::default()
                .with_name(TopicName(sb("t")))
                .with_partitions(vec![
                    OffsetDeleteRequestPartition::default().with_partition_index(3)
                ])]);
        assert_eq!(
            offset_delete_request(&received(&req, 0)),
            OffsetDelete {
                group_id: "g".into(),
                topics: vec![("t".into(), vec![3])]
            }
        );
        for v in 0..=4 {
            let mut req = HeartbeatRequest::default()
                .with_group_id(GroupId(sb("g")))
                .with_generation_id(3)
                .with_member_id(sb("m"));
            if v >= 3 {
                req = req.with_group_instance_id(Some(sb("i")));
            }
            let core = heartbeat_request(&received(&req, v), v);
            assert_eq!(
                (core.generation_id, core.group_instance_id.is_some()),
                (3, v >= 3)
            );
        }
        for v in 0..=5 {
            let mut req = SyncGroupRequest::default()
                .with_group_id(GroupId(sb("g")))
                .with_generation_id(3)
                .with_member_id(sb("m"));
            if v >= 5 {
                req = req
                    .with_protocol_type(Some(sb("consumer")))
                    .with_protocol_name(Some(sb("range")));
            }
            let core = sync_group_request(&received(&req, v), v);
            assert_eq!(core.protocol_name.is_some(), v >= 5);
        }
    }

    #[test]
    fn leave_request_versions() {
        let v1 = LeaveGroupRequest::default()
            .with_group_id(GroupId(sb("g")))
            .with_member_id(sb("m"));
        assert_eq!(
            leave_group_request(&v1, 1).members,
            vec![LeavingMember {
                member_id: "m".into(),
                group_instance_id: None
            }]
        );
        let v3 = LeaveGroupRequest::default()
            .with_group_id(GroupId(sb("g")))
            .with_members(vec![
                MemberIdentity::default().with_member_id(sb("a")),
                MemberIdentity::default().with_group_instance_id(Some(sb("i"))),
            ]);
        let core = leave_group_request(&v3, 3);
        assert_eq!(core.members.len(), 2);
        assert_eq!(core.members[1].group_instance_id.as_deref(), Some("i"));
    }

    #[test]
    fn offset_fetch_single_and_multi_group() {
        let v7 = OffsetFetchRequest::default()
            .with_group_id(GroupId(sb("g")))
            .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                .with_name(TopicName(sb("t")))
                .with_partition_indexes(vec![0, 1])]));
        let core = offset_fetch_request(&v7, 7);
        assert_eq!(core.groups.len(), 1);
        assert_eq!(core.groups[0].topics.as_ref().unwrap()[0].1, vec![0, 1]);
        let all = offset_fetch_request(
            &OffsetFetchRequest::default()
                .with_group_id(GroupId(sb("g")))
                .with_topics(None),
            2,
        );
        assert_eq!(all.groups[0].topics, None);
        let v8 = OffsetFetchRequest::default().with_groups(vec![
            OffsetFetchRequestGroup::default()
                .with_group_id(GroupId(sb("a")))
                .with_topics(None),
            OffsetFetchRequestGroup::default()
                .with_group_id(GroupId(sb("b")))
                .with_topics(Some(vec![OffsetFetchRequestTopics::default()
                    .with_name(TopicName(sb("t")))
                    .with_partition_indexes(vec![3])])),
        ]);
        let core8 = offset_fetch_request(&v8, 8);
        assert_eq!(core8.groups.len(), 2);
        let results = vec![
            OffsetFetchGroupResult {
                group_id: "a".into(),
                error: codes::NONE,
                offsets: vec![],
            },
            OffsetFetchGroupResult {
                group_id: "b".into(),
                error: codes::NONE,
                offsets: vec![FetchedOffset {
                    topic: "t".into(),
                    partition: 3,
                    offset: 9,
                    leader_epoch: 1,
                    metadata: String::new(),
                    error: codes::NONE,
                }],
            },
        ];
        let r = &round_trip(&offset_fetch_response(&core8, &results, 8), 8..=9)[1];
        assert_eq!(r.groups[1].topics[0].partitions[0].committed_offset, 9);
        // v1: a group-level error lands on every requested partition.
        let err = vec![OffsetFetchGroupResult {
            group_id: "g".into(),
            error: codes::COORDINATOR_LOAD_IN_PROGRESS,
            offsets: vec![],
        }];
        let r1 = &round_trip(&offset_fetch_response(&core, &err, 1), 1..=1)[0];
        assert_eq!(r1.topics[0].partitions.len(), 2);
        assert_eq!(
            r1.topics[0].partitions[1].error_code,
            codes::COORDINATOR_LOAD_IN_PROGRESS
        );
        let r3 = &round_trip(&offset_fetch_response(&core, &err, 3), 3..=3)[0];
        assert_eq!(r3.error_code, codes::COORDINATOR_LOAD_IN_PROGRESS);
    }
}
