//! CreateTopics, DeleteTopics and CreatePartitions: validated here, carried out by controller
//! proposals, answered once this broker's replicas follow the change.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use kafka_protocol::messages::{self as m, TopicName};
use kafka_protocol::protocol::StrBytes;
use tracing::info;
use uuid::Uuid;

use super::configs::{effective_topic_configs, validate_topic_configs};
use super::{controller_error, str_bytes};
use crate::broker::cluster::{poll_until, ClusterNode};
use crate::broker::metadata::validate_topic_name;
use crate::broker::protocol::error_code as ec;
use crate::broker::replicas::{holds_topic, is_leader};
use crate::broker::services::Services;
use crate::broker::shard::ShardLocal;
use crate::controller::MetadataCommand;

/// Sluice's cap on partitions per topic: each partition is a directory with preallocated
/// indexes, so an absurd count from a client must not exhaust the disk.
pub const MAX_PARTITIONS_PER_TOPIC: i32 = 10_000;

pub(super) fn default_replication_factor(svc: &Services) -> i16 {
    svc.shard
        .ctx
        .config
        .raw
        .get("default.replication.factor")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1)
}

/// Creates a topic through the controller and waits until this node's image has it.
/// Waits (bounded by the request timeout) until every partition of `topic` that the image
/// says this broker leads is leader on its owner shard, so the creator's first request is not
/// answered NOT_LEADER_OR_FOLLOWER by a replica still opening. Partitions led elsewhere are
/// the client's to find (Metadata), as in Kafka.
async fn wait_local_leaders(svc: &Rc<Services>, node: &ClusterNode, topic: &str) {
    poll_until(node.request_timeout, Duration::from_millis(5), || async {
        let image = node.cluster_image();
        let Some(t) = image.topic(topic) else {
            return true;
        };
        let mine: Vec<i32> = (0..t.partitions.len() as i32)
            .filter(|&p| t.partitions[p as usize].leader == Some(node.node_id))
            .collect();
        for p in mine {
            let name = topic.to_string();
            let led = svc
                .replicas
                .call(svc.shard.ctx.owner(topic, p), move |r| async move {
                    is_leader(&r, &name, p)
                })
                .await
                .unwrap_or(true);
            if !led {
                return false;
            }
        }
        true
    })
    .await;
}

/// Waits (bounded by the request timeout) until no shard of this broker holds a replica of
/// the deleted topic `topic_id` any more, so that when DeleteTopics answers, the partition
/// directories here are gone and the name can be reused at once.
async fn wait_local_deleted(svc: &Rc<Services>, node: &ClusterNode, topic: &str, topic_id: Uuid) {
    poll_until(node.request_timeout, Duration::from_millis(5), || async {
        for target in 0..svc.shard.ctx.shard_count() {
            let name = topic.to_string();
            let held = svc
                .replicas
                .call(
                    target,
                    move |r| async move { holds_topic(&r, &name, topic_id) },
                )
                .await
                .unwrap_or(false);
            if held {
                return false;
            }
        }
        true
    })
    .await;
}

pub(super) async fn create_topic(
    svc: &Rc<Services>,
    node: &ClusterNode,
    name: &str,
    partitions: i32,
    replication_factor: i16,
    configs: BTreeMap<String, String>,
) -> Result<Uuid, (i16, String)> {
    let id = node
        .controller
        .create_topic(name, partitions, replication_factor, configs)
        .await
        .map_err(|e| controller_error(&e))?;
    if !node.wait_for_image(|i| i.topic(name).is_some()).await {
        return Err((ec::REQUEST_TIMED_OUT, "topic not visible in time".into()));
    }
    wait_local_leaders(svc, node, name).await;
    info!(
        topic = name,
        partitions, replication_factor, "created topic"
    );
    Ok(id)
}

/// CreateTopics.
pub async fn create_topics(
    svc: &Rc<Services>,
    node: &ClusterNode,
    req: m::CreateTopicsRequest,
) -> m::CreateTopicsResponse {
    let mut resp = m::CreateTopicsResponse::default();
    for t in req.topics {
        let name = t.name.as_str().to_string();
        let mut configs = BTreeMap::new();
        for c in &t.configs {
            if let Some(v) = &c.value {
                configs.insert(c.name.as_str().to_string(), v.as_str().to_string());
            }
        }
        let partitions = if t.num_partitions == -1 {
            svc.shard.ctx.config.num_partitions
        } else {
            t.num_partitions
        };
        let rf = if t.replication_factor == -1 {
            default_replication_factor(svc)
        } else {
            t.replication_factor
        };
        let check = || -> Result<(), (i16, String)> {
            validate_topic_name(&name).map_err(|e| (ec::INVALID_TOPIC_EXCEPTION, e))?;
            if node.cluster_image().topic(&name).is_some() {
                return Err((
                    ec::TOPIC_ALREADY_EXISTS,
                    format!("topic `{name}` already exists"),
                ));
            }
            if !t.assignments.is_empty() {
                return Err((
                    ec::INVALID_REPLICA_ASSIGNMENT,
                    "manual replica assignment is not supported; placement is the controller's"
                        .into(),
                ));
            }
            if !(1..=MAX_PARTITIONS_PER_TOPIC).contains(&partitions) {
                return Err((
                    ec::INVALID_PARTITIONS,
                    format!("number of partitions must be in 1..={MAX_PARTITIONS_PER_TOPIC}"),
                ));
            }
            let live = node.cluster_image().live_brokers().len();
            if rf < 1 || rf as usize > live {
                return Err((
                    ec::INVALID_REPLICATION_FACTOR,
                    format!("replication factor {rf} with {live} live brokers"),
                ));
            }
            validate_topic_configs(svc, &configs).map_err(|e| (ec::INVALID_CONFIG, e))?;
            Ok(())
        };
        let outcome = match check() {
            Ok(()) if req.validate_only => Ok(Uuid::nil()),
            Ok(()) => create_topic(svc, node, &name, partitions, rf, configs.clone()).await,
            Err(e) => Err(e),
        };
        let mut result =
            m::create_topics_response::CreatableTopicResult::default().with_name(t.name.clone());
        match outcome {
            Ok(id) => {
                let cs = effective_topic_configs(svc, &configs)
                    .into_iter()
                    .map(|(k, v, src)| {
                        m::create_topics_response::CreatableTopicConfigs::default()
                            .with_name(StrBytes::from_string(k))
                            .with_value(Some(StrBytes::from_string(v)))
                            .with_config_source(src)
                    })
                    .collect();
                result = result
                    .with_topic_id(id)
                    .with_num_partitions(partitions)
                    .with_replication_factor(rf)
                    .with_configs(Some(cs));
            }
            Err((code, msg)) => {
                result = result
                    .with_error_code(code)
                    .with_error_message(Some(StrBytes::from_string(msg)))
                    .with_num_partitions(-1)
                    .with_replication_factor(-1);
            }
        }
        resp.topics.push(result);
    }
    resp
}

/// DeleteTopics: every broker deletes its replicas when the deletion reaches
/// its metadata image.
pub async fn delete_topics(
    svc: &Rc<Services>,
    node: &ClusterNode,
    version: i16,
    req: m::DeleteTopicsRequest,
) -> m::DeleteTopicsResponse {
    let targets: Vec<(Option<String>, Uuid)> = if version >= 6 {
        req.topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.as_str().to_string()), t.topic_id))
            .collect()
    } else {
        req.topic_names
            .iter()
            .map(|n| (Some(n.as_str().to_string()), Uuid::nil()))
            .collect()
    };
    let mut resp = m::DeleteTopicsResponse::default();
    for (name, id) in targets {
        let image = node.cluster_image();
        let found = match &name {
            Some(n) => image.topic(n),
            None => image.topic_by_id(id),
        }
        .map(|t| (t.name.clone(), t.topic_id));
        let mut r = m::delete_topics_response::DeletableTopicResult::default()
            .with_name(name.as_deref().map(|n| TopicName(str_bytes(n))))
            .with_topic_id(id);
        match found {
            None => {
                r = r.with_error_code(if name.is_some() {
                    ec::UNKNOWN_TOPIC_OR_PARTITION
                } else {
                    ec::UNKNOWN_TOPIC_ID
                });
            }
            Some((topic, topic_id)) if topic == crate::group::OFFSETS_TOPIC => {
                r = r
                    .with_name(Some(TopicName(str_bytes(&topic))))
                    .with_topic_id(topic_id)
                    .with_error_code(ec::INVALID_TOPIC_EXCEPTION)
                    .with_error_message(Some(str_bytes("the internal topic cannot be deleted")));
            }
            Some((topic, topic_id)) => {
                r = r
                    .with_name(Some(TopicName(str_bytes(&topic))))
                    .with_topic_id(topic_id);
                let command = MetadataCommand::DeleteTopic {
                    name: topic.clone(),
                };
                match node.controller.propose(command).await {
                    Ok(_) => {
                        node.wait_for_image(|i| i.topic(&topic).is_none()).await;
                        wait_local_deleted(svc, node, &topic, topic_id).await;
                        info!(topic, "deleted topic");
                    }
                    Err(e) => {
                        let (code, msg) = controller_error(&e);
                        r = r
                            .with_error_code(code)
                            .with_error_message(Some(StrBytes::from_string(msg)));
                    }
                }
            }
        }
        resp.responses.push(r);
    }
    resp
}

/// CreatePartitions.
pub async fn create_partitions(
    svc: &Rc<Services>,
    node: &ClusterNode,
    req: m::CreatePartitionsRequest,
) -> m::CreatePartitionsResponse {
    let mut resp = m::CreatePartitionsResponse::default();
    for t in req.topics {
        let name = t.name.as_str().to_string();
        let outcome: Result<(), (i16, String)> = async {
            let image = node.cluster_image();
            let topic = image.topic(&name).ok_or((
                ec::UNKNOWN_TOPIC_OR_PARTITION,
                format!("topic `{name}` does not exist"),
            ))?;
            let old = topic.partitions.len() as i32;
            if t.count > MAX_PARTITIONS_PER_TOPIC || t.count <= old {
                return Err((
                    ec::INVALID_PARTITIONS,
                    format!("topic has {old} partitions; the new count must be larger (at most {MAX_PARTITIONS_PER_TOPIC})"),
                ));
            }
            if t.assignments.as_ref().is_some_and(|a| !a.is_empty()) {
                return Err((
                    ec::INVALID_REPLICA_ASSIGNMENT,
                    "manual replica assignment is not supported".into(),
                ));
            }
            if req.validate_only {
                return Ok(());
            }
            let command = MetadataCommand::CreatePartitions {
                name: name.clone(),
                total_count: t.count,
                placement_start: rand::random::<u32>(),
            };
            node.controller
                .propose(command)
                .await
                .map_err(|e| controller_error(&e))?;
            node.wait_for_image(|i| {
                i.topic(&name)
                    .is_some_and(|t2| t2.partitions.len() as i32 >= t.count)
            })
            .await;
            wait_local_leaders(svc, node, &name).await;
            info!(topic = name, from = old, to = t.count, "added partitions");
            Ok(())
        }
        .await;
        let mut r = m::create_partitions_response::CreatePartitionsTopicResult::default()
            .with_name(t.name.clone());
        if let Err((code, msg)) = outcome {
            r = r
                .with_error_code(code)
                .with_error_message(Some(StrBytes::from_string(msg)));
        }
        resp.results.push(r);
    }
    resp
}
