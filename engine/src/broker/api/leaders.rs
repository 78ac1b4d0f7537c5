//! ElectLeaders (API 43): preferred and unclean leader elections, carried out by the
//! controller ([`MetadataCommand::ElectLeaders`]), answered per partition with Kafka's codes
//! once this broker's image shows the new leaders.

use std::collections::BTreeMap;

use kafka_protocol::messages::{self as m, TopicName};
use kafka_protocol::protocol::StrBytes;
use tracing::info;

use super::{controller_error, str_bytes};
use crate::broker::cluster::ClusterNode;
use crate::broker::protocol::error_code as ec;
use crate::controller::metadata::{Applied, ElectionType, PartitionElection};
use crate::controller::MetadataCommand;

/// Kafka error code INVALID_REQUEST.
const INVALID_REQUEST: i16 = 42;

/// ElectLeaders after authorisation: `election_type` 0 (preferred; the only one in v0) or 1
/// (unclean) for the listed partitions, or every partition when `topic_partitions` is null.
pub async fn elect_leaders(
    node: &ClusterNode,
    version: i16,
    req: m::ElectLeadersRequest,
) -> m::ElectLeadersResponse {
    let requested: Option<Vec<(String, i32)>> = req.topic_partitions.as_ref().map(|topics| {
        topics
            .iter()
            .flat_map(|t| {
                let name = t.topic.as_str().to_string();
                t.partitions.iter().map(move |&p| (name.clone(), p))
            })
            .collect()
    });
    let Some(election) = ElectionType::from_wire(req.election_type) else {
        let message = format!("unknown election type {}", req.election_type);
        return refuse(version, requested.as_deref(), INVALID_REQUEST, &message);
    };
    let command = MetadataCommand::ElectLeaders {
        election,
        partitions: requested.clone(),
    };
    let results = match node.controller.propose(command).await {
        Ok(Applied::Elections(results)) => results,
        Ok(other) => {
            let message = format!("unexpected controller answer {other:?}");
            return refuse(
                version,
                requested.as_deref(),
                ec::UNKNOWN_SERVER_ERROR,
                &message,
            );
        }
        Err(e) => {
            let (code, message) = controller_error(&e);
            return refuse(version, requested.as_deref(), code, &message);
        }
    };
    let elected: Vec<&PartitionElection> = results.iter().filter(|r| r.error_code == 0).collect();
    if !elected.is_empty() {
        info!(?election, partitions = elected.len(), "leaders elected");
        // Answer once this broker's image shows the elections, so a client that asks this
        // broker for metadata next sees the new leaders.
        node.wait_for_image(|image| {
            elected.iter().all(|r| {
                image
                    .partition(&r.topic, r.partition)
                    .is_none_or(|p| match election {
                        ElectionType::Preferred => p.leader == p.replicas.first().copied(),
                        ElectionType::Unclean => p.leader.is_some(),
                    })
            })
        })
        .await;
    }
    response(
        version,
        0,
        results
            .into_iter()
            .map(|r| (r.topic, r.partition, r.error_code, r.message)),
    )
}

/// Every requested partition answered `code` (also the top-level code from v1).
pub fn refuse(
    version: i16,
    requested: Option<&[(String, i32)]>,
    code: i16,
    message: &str,
) -> m::ElectLeadersResponse {
    response(
        version,
        code,
        requested
            .unwrap_or_default()
            .iter()
            .map(|(t, p)| (t.clone(), *p, code, Some(message.to_string()))),
    )
}

/// Builds the response, results grouped by topic in first-seen order.
fn response(
    version: i16,
    top_level: i16,
    results: impl Iterator<Item = (String, i32, i16, Option<String>)>,
) -> m::ElectLeadersResponse {
    let mut order: Vec<String> = Vec::new();
    let mut by_topic: BTreeMap<String, Vec<m::elect_leaders_response::PartitionResult>> =
        BTreeMap::new();
    for (topic, partition, code, message) in results {
        if !by_topic.contains_key(&topic) {
            order.push(topic.clone());
        }
        by_topic.entry(topic).or_default().push(
            m::elect_leaders_response::PartitionResult::default()
                .with_partition_id(partition)
                .with_error_code(code)
                .with_error_message(message.filter(|_| code != 0).map(StrBytes::from_string)),
        );
    }
    let replica_election_results = order
        .into_iter()
        .map(|topic| {
            let partitions = by_topic.remove(&topic).unwrap_or_default();
            m::elect_leaders_response::ReplicaElectionResult::default()
                .with_topic(TopicName(str_bytes(&topic)))
                .with_partition_result(partitions)
        })
        .collect();
    let resp =
        m::ElectLeadersResponse::default().with_replica_election_results(replica_election_results);
    if version >= 1 {
        resp.with_error_code(top_level)
    } else {
        resp
    }
}
