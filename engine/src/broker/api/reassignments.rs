//! AlterPartitionReassignments (API 45) and ListPartitionReassignments (API 46): partition
//! moves carried out by the controller ([`MetadataCommand::AlterPartitionReassignments`];
//! the rules are in `controller::metadata`'s reassignment module), listed from this
//! broker's image.

use std::collections::BTreeMap;

use kafka_protocol::messages::{self as m, BrokerId, TopicName};
use kafka_protocol::protocol::StrBytes;
use tracing::info;

use super::{controller_error, str_bytes};
use crate::broker::cluster::ClusterNode;
use crate::broker::protocol::error_code as ec;
use crate::controller::metadata::{Applied, PartitionReassignment};
use crate::controller::{MetadataCommand, MetadataImage};

/// The partitions of an AlterPartitionReassignments request with their targets (`None`:
/// cancel), in request order.
pub fn requested(req: &m::AlterPartitionReassignmentsRequest) -> Vec<PartitionReassignment> {
    req.topics
        .iter()
        .flat_map(|t| {
            let name = t.name.as_str().to_string();
            t.partitions.iter().map(move |p| PartitionReassignment {
                topic: name.clone(),
                partition: p.partition_index,
                target: p.replicas.as_ref().map(|r| r.iter().map(|b| b.0).collect()),
            })
        })
        .collect()
}

/// AlterPartitionReassignments after authorisation.
pub async fn alter_partition_reassignments(
    node: &ClusterNode,
    version: i16,
    req: m::AlterPartitionReassignmentsRequest,
) -> m::AlterPartitionReassignmentsResponse {
    let reassignments = requested(&req);
    // v0 has no such field: a target of any size is accepted (Kafka before KIP-860).
    let allow_rf = version < 1 || req.allow_replication_factor_change;
    if reassignments.is_empty() {
        return alter_response(version, allow_rf, 0, None, std::iter::empty());
    }
    let command = MetadataCommand::AlterPartitionReassignments {
        reassignments: reassignments.clone(),
        allow_replication_factor_change: allow_rf,
    };
    let results = match node.controller.propose(command).await {
        Ok(Applied::Reassignments(results)) => results,
        Ok(other) => {
            let message = format!("unexpected controller answer {other:?}");
            return alter_refuse(version, &req, ec::UNKNOWN_SERVER_ERROR, &message);
        }
        Err(e) => {
            let (code, message) = controller_error(&e);
            return alter_refuse(version, &req, code, &message);
        }
    };
    let done: Vec<&PartitionReassignment> = reassignments
        .iter()
        .zip(&results)
        .filter(|(_, r)| r.error_code == 0)
        .map(|(a, _)| a)
        .collect();
    if !done.is_empty() {
        info!(partitions = done.len(), "partition reassignments altered");
        // Answer once this broker's image shows each change (started, completed or
        // cancelled), so a List or Metadata to this broker next sees it.
        node.wait_for_image(|image| {
            done.iter().all(|a| {
                image
                    .partition(&a.topic, a.partition)
                    .is_none_or(|p| match &a.target {
                        Some(target) => {
                            p.target_replicas == *target
                                || (!p.is_reassigning() && p.replicas == *target)
                        }
                        None => !p.is_reassigning(),
                    })
            })
        })
        .await;
    }
    alter_response(
        version,
        allow_rf,
        0,
        None,
        results
            .into_iter()
            .map(|r| (r.topic, r.partition, r.error_code, r.message)),
    )
}

/// Every requested partition answered `code`, which is also the top-level code.
pub fn alter_refuse(
    version: i16,
    req: &m::AlterPartitionReassignmentsRequest,
    code: i16,
    message: &str,
) -> m::AlterPartitionReassignmentsResponse {
    let allow_rf = version < 1 || req.allow_replication_factor_change;
    alter_response(
        version,
        allow_rf,
        code,
        Some(message),
        requested(req)
            .into_iter()
            .map(|a| (a.topic, a.partition, code, Some(message.to_string()))),
    )
}

/// Builds the response, results grouped by topic in first-seen order.
fn alter_response(
    version: i16,
    allow_rf: bool,
    top_level: i16,
    top_message: Option<&str>,
    results: impl Iterator<Item = (String, i32, i16, Option<String>)>,
) -> m::AlterPartitionReassignmentsResponse {
    let mut order: Vec<String> = Vec::new();
    let mut by_topic: BTreeMap<
        String,
        Vec<m::alter_partition_reassignments_response::ReassignablePartitionResponse>,
    > = BTreeMap::new();
    for (topic, partition, code, message) in results {
        if !by_topic.contains_key(&topic) {
            order.push(topic.clone());
        }
        by_topic.entry(topic).or_default().push(
            m::alter_partition_reassignments_response::ReassignablePartitionResponse::default()
                .with_partition_index(partition)
                .with_error_code(code)
                .with_error_message(message.filter(|_| code != 0).map(StrBytes::from_string)),
        );
    }
    let responses = order
        .into_iter()
        .map(|topic| {
            let partitions = by_topic.remove(&topic).unwrap_or_default();
            m::alter_partition_reassignments_response::ReassignableTopicResponse::default()
                .with_name(TopicName(str_bytes(&topic)))
                .with_partitions(partitions)
        })
        .collect();
    let resp = m::AlterPartitionReassignmentsResponse::default()
        .with_error_code(top_level)
        .with_error_message(top_message.filter(|_| top_level != 0).map(str_bytes))
        .with_responses(responses);
    if version >= 1 {
        resp.with_allow_replication_factor_change(allow_rf)
    } else {
        resp
    }
}

/// ListPartitionReassignments after authorisation: the reassignments in progress, all of
/// them (`topics` null) or those of the requested partitions (partitions not being moved,
/// or unknown, are left out, as Kafka does).
pub fn list_partition_reassignments(
    image: &MetadataImage,
    req: &m::ListPartitionReassignmentsRequest,
) -> m::ListPartitionReassignmentsResponse {
    let wanted = |topic: &str, partition: i32| match &req.topics {
        None => true,
        Some(topics) => topics
            .iter()
            .any(|t| t.name.as_str() == topic && t.partition_indexes.contains(&partition)),
    };
    let mut by_topic: BTreeMap<
        &str,
        Vec<m::list_partition_reassignments_response::OngoingPartitionReassignment>,
    > = BTreeMap::new();
    for (topic, p) in image.reassignments() {
        if !wanted(topic, p.partition) {
            continue;
        }
        let ids = |v: &[i32]| v.iter().map(|&b| BrokerId(b)).collect::<Vec<_>>();
        by_topic.entry(topic).or_default().push(
            m::list_partition_reassignments_response::OngoingPartitionReassignment::default()
                .with_partition_index(p.partition)
                .with_replicas(ids(&p.replicas))
                .with_adding_replicas(ids(&p.adding_replicas))
                .with_removing_replicas(ids(&p.removing_replicas)),
        );
    }
    let topics = by_topic
        .into_iter()
        .map(|(name, partitions)| {
            m::list_partition_reassignments_response::OngoingTopicReassignment::default()
                .with_name(TopicName(str_bytes(name)))
                .with_partitions(partitions)
        })
        .collect();
    m::ListPartitionReassignmentsResponse::default().with_topics(topics)
}

/// ListPartitionReassignments refused with `code` (top level).
pub fn list_refuse(code: i16, message: &str) -> m::ListPartitionReassignmentsResponse {
    m::ListPartitionReassignmentsResponse::default()
        .with_error_code(code)
        .with_error_message(Some(str_bytes(message)))
}
