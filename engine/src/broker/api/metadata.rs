//! Metadata (brokers, topics, leaders, replicas, ISRs from the controller image; auto-creation)
//! and DescribeCluster.

use std::collections::BTreeMap;
use std::rc::Rc;

use kafka_protocol::messages::{self as m, BrokerId, TopicName};
use tracing::warn;
use uuid::Uuid;

/// Kafka error code LEADER_NOT_AVAILABLE.
const LEADER_NOT_AVAILABLE: i16 = 5;

use super::str_bytes;
use super::topics::{create_topic, default_replication_factor};
use crate::broker::cluster::ClusterNode;
use crate::broker::metadata::validate_topic_name;
use crate::broker::protocol::error_code as ec;
use crate::broker::services::Services;
use crate::controller::MetadataImage as ClusterImage;
use crate::security::acl::{AclOperation, ResourceType, AUTHORIZED_OPERATIONS_OMITTED};

fn describe_partitions(
    image: &ClusterImage,
    topic: &crate::controller::TopicImage,
) -> m::metadata_response::MetadataResponseTopic {
    let live = |b: &i32| image.broker(*b).is_some_and(|r| !r.fenced);
    let partitions = topic
        .partitions
        .iter()
        .map(|p| {
            let ids = |v: &[i32]| v.iter().map(|b| BrokerId(*b)).collect::<Vec<_>>();
            let offline: Vec<i32> = p.replicas.iter().copied().filter(|b| !live(b)).collect();
            m::metadata_response::MetadataResponsePartition::default()
                .with_error_code(if p.leader.is_some() {
                    ec::NONE
                } else {
                    LEADER_NOT_AVAILABLE
                })
                .with_partition_index(p.partition)
                .with_leader_id(BrokerId(p.leader.unwrap_or(-1)))
                .with_leader_epoch(p.leader_epoch)
                .with_replica_nodes(ids(&p.replicas))
                .with_isr_nodes(ids(&p.isr))
                .with_offline_replicas(ids(&offline))
        })
        .collect();
    m::metadata_response::MetadataResponseTopic::default()
        .with_name(Some(TopicName(str_bytes(&topic.name))))
        .with_topic_id(topic.topic_id)
        .with_is_internal(topic.name == crate::group::OFFSETS_TOPIC)
        .with_partitions(partitions)
}

/// Metadata: every live broker, and each partition's leader, leader epoch,
/// replicas, ISR and offline replicas from the controller image.
pub async fn metadata(
    svc: &Rc<Services>,
    node: &ClusterNode,
    version: i16,
    req: m::MetadataRequest,
) -> m::MetadataResponse {
    let cfg = &svc.shard.ctx.config;
    let mut image = node.cluster_image();
    let authz = super::acls::Authz::current(svc);
    let denied = |name: &str| {
        m::metadata_response::MetadataResponseTopic::default()
            .with_name(Some(TopicName(str_bytes(name))))
            .with_error_code(super::acls::TOPIC_AUTHORIZATION_FAILED)
    };
    let all = match &req.topics {
        None => true,
        Some(t) => t.is_empty() && version == 0,
    };
    let mut topics = Vec::new();
    if all {
        topics.extend(
            image
                .topics
                .values()
                // Topics the principal may not describe are left out.
                .filter(|t| authz.allows_topic(AclOperation::Describe, &t.name))
                .map(|t| describe_partitions(&image, t)),
        );
    } else {
        let allow_auto = cfg.auto_create_topics && (version < 4 || req.allow_auto_topic_creation);
        for rt in req.topics.iter().flatten() {
            if rt.name.is_none() && !rt.topic_id.is_nil() {
                match image.topic_by_id(rt.topic_id) {
                    Some(t) if !authz.allows_topic(AclOperation::Describe, &t.name) => topics.push(
                        m::metadata_response::MetadataResponseTopic::default()
                            .with_topic_id(rt.topic_id)
                            .with_error_code(super::acls::TOPIC_AUTHORIZATION_FAILED),
                    ),
                    Some(t) => topics.push(describe_partitions(&image, t)),
                    None => topics.push(
                        m::metadata_response::MetadataResponseTopic::default()
                            .with_topic_id(rt.topic_id)
                            .with_error_code(ec::UNKNOWN_TOPIC_ID),
                    ),
                }
                continue;
            }
            let name = rt
                .name
                .as_ref()
                .map(|n| n.as_str().to_string())
                .unwrap_or_default();
            if !authz.allows_topic(AclOperation::Describe, &name) {
                topics.push(denied(&name));
                continue;
            }
            if let Some(t) = image.topic(&name) {
                topics.push(describe_partitions(&image, t));
                continue;
            }
            let unknown = |code| {
                m::metadata_response::MetadataResponseTopic::default()
                    .with_name(Some(TopicName(str_bytes(&name))))
                    .with_error_code(code)
            };
            if validate_topic_name(&name).is_err() {
                topics.push(unknown(ec::INVALID_TOPIC_EXCEPTION));
                continue;
            }
            if !allow_auto {
                topics.push(unknown(ec::UNKNOWN_TOPIC_OR_PARTITION));
                continue;
            }
            // Auto-creation needs CREATE on the cluster or on the topic.
            if !authz.allows_cluster(AclOperation::Create)
                && !authz.allows_topic(AclOperation::Create, &name)
            {
                topics.push(denied(&name));
                continue;
            }
            let created = if name == crate::group::records::OFFSETS_TOPIC {
                // The internal topic is created with its own partitions, replication and
                // configs (as Kafka's auto-creation does), never the defaults of user topics.
                let n = svc.groups.offsets_partitions();
                crate::broker::groups::ensure_offsets_topic_cluster(node, cfg, n)
                    .await
                    .map(|()| Uuid::nil())
                    .map_err(|e| (ec::COORDINATOR_NOT_AVAILABLE, e))
            } else {
                let rf = default_replication_factor(svc);
                create_topic(svc, node, &name, cfg.num_partitions, rf, BTreeMap::new()).await
            };
            if created.is_ok() {
                let _ = node.wait_for_image(|i| i.topic(&name).is_some()).await;
            }
            image = node.cluster_image();
            match (created, image.topic(&name)) {
                (_, Some(t)) => topics.push(describe_partitions(&image, t)),
                (Err((code, msg)), None) => {
                    warn!(topic = name, "auto-create failed: {msg}");
                    topics.push(unknown(code));
                }
                (Ok(_), None) => topics.push(unknown(LEADER_NOT_AVAILABLE)),
            }
        }
    }
    if !node.may_lead() {
        // This broker's session has expired (or is about to): its leaderships are moving,
        // and naming itself leader would send clients back here. Or it has just registered
        // and its image has not caught up with the controller: a leadership it names may
        // have ended while it was down. Either way clients ask another broker.
        for p in topics.iter_mut().flat_map(|t| t.partitions.iter_mut()) {
            if p.leader_id.0 == node.node_id {
                p.leader_id = BrokerId(-1);
                p.error_code = LEADER_NOT_AVAILABLE;
            }
        }
    }
    let listener = crate::broker::request_context::listener_name(cfg);
    let brokers = image
        .brokers
        .values()
        .filter(|b| !b.fenced || b.broker_id == node.node_id)
        .filter_map(|b| {
            let ep = b.endpoint(&listener)?;
            Some(
                m::metadata_response::MetadataResponseBroker::default()
                    .with_node_id(BrokerId(b.broker_id))
                    .with_host(str_bytes(&ep.host))
                    .with_port(i32::from(ep.port))
                    .with_rack(b.rack.as_deref().map(str_bytes)),
            )
        })
        .collect();
    // Clients send admin requests to the controller id; every broker forwards them, so while
    // the controller is unknown or not a listed broker, name this broker (as KRaft brokers do).
    let controller = node
        .controller
        .controller_id()
        .and_then(|c| i32::try_from(c).ok())
        .filter(|c| image.broker(*c).is_some_and(|b| !b.fenced))
        .unwrap_or(node.node_id);
    // KIP-430: the principal's operations on each topic it may describe, and (v8-10) on the
    // cluster; Kafka's MIN_VALUE when not asked for.
    if version >= 8 && req.include_topic_authorized_operations {
        for t in &mut topics {
            if t.error_code == super::acls::TOPIC_AUTHORIZATION_FAILED {
                continue;
            }
            if let Some(name) = &t.name {
                t.topic_authorized_operations =
                    authz.authorized_operations(ResourceType::Topic, name.as_str());
            }
        }
    }
    let cluster_operations =
        if (8..=10).contains(&version) && req.include_cluster_authorized_operations {
            authz.cluster_authorized_operations()
        } else {
            AUTHORIZED_OPERATIONS_OMITTED
        };
    m::MetadataResponse::default()
        .with_cluster_authorized_operations(cluster_operations)
        .with_brokers(brokers)
        .with_cluster_id(Some(str_bytes(&node.cluster_id)))
        .with_controller_id(BrokerId(controller))
        .with_topics(topics)
}

/// DescribeCluster: the registered brokers, the active controller and, when asked, the
/// principal's operations on the cluster (KIP-430).
pub fn describe_cluster(
    svc: &Services,
    node: &ClusterNode,
    req: &m::DescribeClusterRequest,
) -> m::DescribeClusterResponse {
    let image = node.cluster_image();
    let listener = crate::broker::request_context::listener_name(&svc.shard.ctx.config);
    let brokers = image
        .brokers
        .values()
        .filter_map(|b| {
            let ep = b.endpoint(&listener)?;
            Some(
                m::describe_cluster_response::DescribeClusterBroker::default()
                    .with_broker_id(BrokerId(b.broker_id))
                    .with_host(str_bytes(&ep.host))
                    .with_port(i32::from(ep.port))
                    .with_rack(b.rack.as_deref().map(str_bytes))
                    .with_is_fenced(b.fenced),
            )
        })
        .collect();
    let controller = node
        .controller
        .controller_id()
        .and_then(|c| i32::try_from(c).ok())
        .unwrap_or(-1);
    let cluster_operations = if req.include_cluster_authorized_operations {
        super::acls::Authz::current(svc).cluster_authorized_operations()
    } else {
        AUTHORIZED_OPERATIONS_OMITTED
    };
    m::DescribeClusterResponse::default()
        .with_cluster_authorized_operations(cluster_operations)
        .with_cluster_id(str_bytes(&node.cluster_id))
        .with_controller_id(BrokerId(controller))
        .with_endpoint_type(1)
        .with_brokers(brokers)
}
