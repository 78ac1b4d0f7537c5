//! DescribeQuorum (API 55, KIP-595/KIP-836): the metadata quorum of the controller voters, as
//! `kafka-metadata-quorum.sh describe --status` and `sluicectl cluster describe` show it.
//!
//! The active controller answers from its Raft state (leader, term, voters with their log end
//! offsets); any other broker forwards the request to the active controller's Kafka listener,
//! as a KRaft broker forwards admin requests, so a client may ask any broker.

use std::time::Duration;

use kafka_protocol::messages::{self as m, ApiKey, BrokerId, TopicName};
use kafka_protocol::protocol::StrBytes;
use tracing::debug;

use crate::broker::cluster::ClusterNode;
use crate::broker::cluster_client::KafkaClient;
use crate::broker::protocol::error_code as ec;
use crate::controller::QuorumState;

/// The topic name of the metadata log in DescribeQuorum (Kafka's).
pub const METADATA_TOPIC: &str = "__cluster_metadata";
/// Kafka error code NOT_LEADER_OR_FOLLOWER.
const NOT_LEADER_OR_FOLLOWER: i16 = 6;
/// How long a forwarded DescribeQuorum may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);

fn failed(code: i16, message: &str) -> m::DescribeQuorumResponse {
    m::DescribeQuorumResponse::default()
        .with_error_code(code)
        .with_error_message(Some(StrBytes::from_string(message.to_string())))
}

/// The DescribeQuorum answer of the active controller, from its Raft state. The leader's
/// `last_fetch_timestamp` is now (it is the log); other voters' fetch times are not tracked
/// by the Raft library and are reported as -1 ("unknown", as Kafka does).
pub fn describe_local(node_id: i32, q: &QuorumState, now_ms: i64) -> m::DescribeQuorumResponse {
    debug_assert!(q.is_leader);
    let voters = q
        .voters
        .iter()
        .map(|v| {
            let id = i32::try_from(v.id).unwrap_or(-1);
            let (fetched, caught_up) = if id == node_id {
                (now_ms, now_ms)
            } else {
                (-1, -1)
            };
            m::describe_quorum_response::ReplicaState::default()
                .with_replica_id(BrokerId(id))
                .with_log_end_offset(v.log_end_offset)
                .with_last_fetch_timestamp(fetched)
                .with_last_caught_up_timestamp(caught_up)
        })
        .collect();
    let partition = m::describe_quorum_response::PartitionData::default()
        .with_partition_index(0)
        .with_error_code(ec::NONE)
        .with_leader_id(BrokerId(node_id))
        .with_leader_epoch(i32::try_from(q.term).unwrap_or(i32::MAX))
        .with_high_watermark(q.applied_offset)
        .with_current_voters(voters)
        .with_observers(Vec::new());
    m::DescribeQuorumResponse::default().with_topics(vec![
        m::describe_quorum_response::TopicData::default()
            .with_topic_name(TopicName(StrBytes::from_static_str(METADATA_TOPIC)))
            .with_partitions(vec![partition]),
    ])
}

/// DescribeQuorum on any broker: answered here by the active controller, else forwarded to it.
pub async fn describe_quorum(
    node: &ClusterNode,
    version: i16,
    req: m::DescribeQuorumRequest,
) -> m::DescribeQuorumResponse {
    let asks_metadata = req.topics.iter().any(|t| {
        t.topic_name.as_str() == METADATA_TOPIC
            && t.partitions.iter().any(|p| p.partition_index == 0)
    });
    if !asks_metadata {
        return failed(
            ec::UNKNOWN_TOPIC_OR_PARTITION,
            "DescribeQuorum describes __cluster_metadata partition 0 only",
        );
    }
    if let Some(q) = node.controller.quorum().filter(|q| q.is_leader) {
        return describe_local(node.node_id, &q, crate::broker::shard::now_ms());
    }
    let leader = node
        .controller
        .controller_id()
        .and_then(|c| i32::try_from(c).ok());
    let image = node.cluster_image();
    let Some(ep) = leader
        .filter(|l| *l != node.node_id)
        .and_then(|l| image.broker(l))
        .and_then(|b| b.inter_broker_endpoint())
    else {
        return failed(NOT_LEADER_OR_FOLLOWER, "no active controller is known");
    };
    let addr = format!("{}:{}", ep.host, ep.port);
    let forwarded = async {
        let mut client = KafkaClient::connect(
            &addr,
            node.inter_broker_tls.as_deref(),
            format!("sluice-forward-{}", node.node_id),
            FORWARD_TIMEOUT,
        )
        .await?;
        client
            .call::<_, m::DescribeQuorumResponse>(
                ApiKey::DescribeQuorum,
                version,
                &req,
                FORWARD_TIMEOUT,
            )
            .await
    };
    match forwarded.await {
        Ok(resp) => resp,
        Err(e) => {
            debug!(addr, "DescribeQuorum forward failed: {e}");
            failed(
                NOT_LEADER_OR_FOLLOWER,
                "the active controller did not answer; retry",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::VoterState;

    #[test]
    fn local_answer_names_the_leader_and_every_voter() {
        let q = QuorumState {
            leader: Some(2),
            term: 7,
            is_leader: true,
            applied_offset: 40,
            millis_since_quorum_ack: Some(3),
            voters: vec![
                VoterState {
                    id: 1,
                    log_end_offset: 38,
                },
                VoterState {
                    id: 2,
                    log_end_offset: 41,
                },
            ],
        };
        let r = describe_local(2, &q, 1_000);
        let p = &r.topics[0].partitions[0];
        assert_eq!(r.topics[0].topic_name.as_str(), METADATA_TOPIC);
        assert_eq!(
            (p.leader_id.0, p.leader_epoch, p.high_watermark),
            (2, 7, 40)
        );
        let ends: Vec<(i32, i64, i64)> = p
            .current_voters
            .iter()
            .map(|v| (v.replica_id.0, v.log_end_offset, v.last_fetch_timestamp))
            .collect();
        assert_eq!(ends, vec![(1, 38, -1), (2, 41, 1_000)]);
    }
}
