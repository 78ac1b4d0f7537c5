//! DescribeConfigs and IncrementalAlterConfigs (topic configs through the controller, broker
//! configs read-only), and the topic-config checks CreateTopics shares.

use std::collections::BTreeMap;
use std::rc::Rc;

use kafka_protocol::messages as m;
use kafka_protocol::protocol::StrBytes;
use tracing::info;

use super::controller_error;
use crate::broker::cluster::ClusterNode;
use crate::broker::config::{ConfigSource, TOPIC_KEYS};
use crate::broker::protocol::error_code as ec;
use crate::broker::services::Services;
use crate::broker::shard::ShardLocal;
use crate::controller::{ConfigResource, MetadataCommand};

/// One resource's IncrementalAlterConfigs answer.
pub(super) fn alter_config_result(
    r: &m::incremental_alter_configs_request::AlterConfigsResource,
    outcome: Result<(), (i16, String)>,
) -> m::incremental_alter_configs_response::AlterConfigsResourceResponse {
    let out = m::incremental_alter_configs_response::AlterConfigsResourceResponse::default()
        .with_resource_type(r.resource_type)
        .with_resource_name(r.resource_name.clone());
    match outcome {
        Ok(()) => out,
        Err((code, msg)) => out
            .with_error_code(code)
            .with_error_message(Some(StrBytes::from_string(msg))),
    }
}

/// One config entry for DescribeConfigs: name, value, source, read-only.
type ConfigEntry = (String, String, i8, bool);

/// Checks topic-level config overrides: known keys, values that parse.
pub(super) fn validate_topic_configs(
    svc: &Services,
    configs: &BTreeMap<String, String>,
) -> Result<(), String> {
    for k in configs.keys() {
        if !TOPIC_KEYS.iter().any(|(name, _)| name == k) {
            return Err(format!("unknown or unsupported topic config `{k}`"));
        }
    }
    svc.shard
        .ctx
        .config
        .log_config(configs)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

pub(super) fn effective_topic_configs(
    svc: &Services,
    overrides: &BTreeMap<String, String>,
) -> Vec<(String, String, i8)> {
    let cfg = &svc.shard.ctx.config;
    TOPIC_KEYS
        .iter()
        .map(|(key, broker_key)| {
            let value = cfg.topic_value(key, overrides).unwrap_or_default();
            let source = if overrides.contains_key(*key) {
                1 // DYNAMIC_TOPIC_CONFIG
            } else if cfg
                .sources
                .get(*broker_key)
                .is_some_and(|s| *s != ConfigSource::Default)
            {
                4 // STATIC_BROKER_CONFIG
            } else {
                5 // DEFAULT_CONFIG
            };
            (key.to_string(), value, source)
        })
        .collect()
}

const RESOURCE_TOPIC: i8 = 2;

const RESOURCE_BROKER: i8 = 4;

fn config_type(key: &str) -> i8 {
    match key {
        "cleanup.policy" => 7, // LIST
        "message.timestamp.type"
        | "listeners"
        | "advertised.listeners"
        | "log.dirs"
        | "log.message.timestamp.type" => 2, // STRING
        "auto.create.topics.enable"
        | "fetch.zero.copy"
        | "log.cleaner.enable"
        | "unclean.leader.election.enable" => 1, // BOOLEAN
        "min.cleanable.dirty.ratio"
        | "log.cleaner.min.cleanable.ratio"
        | "log.cleaner.io.max.bytes.per.second" => 6, // DOUBLE
        "replication.mode" | "controller.quorum.voters" => 2, // STRING
        "min.insync.replicas" | "default.replication.factor" => 3, // INT
        "segment.index.bytes"
        | "index.interval.bytes"
        | "max.message.bytes"
        | "node.id"
        | "num.partitions"
        | "message.max.bytes"
        | "socket.request.max.bytes"
        | "log.index.interval.bytes"
        | "log.index.size.max.bytes"
        | "num.shards"
        | "queued.max.requests.per.connection"
        | "producer.id.expiration.ms" => 3, // INT
        _ => 5,                // LONG
    }
}

pub fn describe_configs(
    svc: &Rc<Services>,
    req: m::DescribeConfigsRequest,
) -> m::DescribeConfigsResponse {
    let cfg = &svc.shard.ctx.config;
    let image = svc.shard.image();
    let mut resp = m::DescribeConfigsResponse::default();
    for r in req.resources {
        let mut result = m::describe_configs_response::DescribeConfigsResult::default()
            .with_resource_type(r.resource_type)
            .with_resource_name(r.resource_name.clone());
        let wanted = |k: &str| {
            r.configuration_keys
                .as_ref()
                .is_none_or(|keys| keys.is_empty() || keys.iter().any(|w| w.as_str() == k))
        };
        let entries: Result<Vec<ConfigEntry>, (i16, String)> = match r.resource_type {
            RESOURCE_TOPIC => match image.topic(r.resource_name.as_str()) {
                None => Err((ec::UNKNOWN_TOPIC_OR_PARTITION, "unknown topic".into())),
                Some(t) => Ok(effective_topic_configs(svc, &t.configs)
                    .into_iter()
                    .map(|(k, v, s)| (k, v, s, false))
                    .collect()),
            },
            RESOURCE_BROKER
                if r.resource_name.is_empty()
                    || r.resource_name.as_str() == cfg.node_id.to_string() =>
            {
                Ok(cfg
                    .raw
                    .iter()
                    .map(|(k, v)| {
                        let s = if cfg
                            .sources
                            .get(k)
                            .is_some_and(|s| *s != ConfigSource::Default)
                        {
                            4
                        } else {
                            5
                        };
                        (k.clone(), v.clone(), s, true)
                    })
                    .collect())
            }
            RESOURCE_BROKER => Err((
                ec::INVALID_REQUEST,
                format!("this is broker {}", cfg.node_id),
            )),
            _ => Err((
                ec::INVALID_REQUEST,
                "only topic and broker resources are supported".into(),
            )),
        };
        match entries {
            Ok(list) => {
                result.configs = list
                    .into_iter()
                    .filter(|(k, ..)| wanted(k))
                    .map(|(k, v, source, read_only)| {
                        let ty = config_type(&k);
                        m::describe_configs_response::DescribeConfigsResourceResult::default()
                            .with_name(StrBytes::from_string(k))
                            .with_value(Some(StrBytes::from_string(v)))
                            .with_read_only(read_only)
                            .with_config_source(source)
                            .with_config_type(ty)
                    })
                    .collect();
            }
            Err((code, msg)) => {
                result = result
                    .with_error_code(code)
                    .with_error_message(Some(StrBytes::from_string(msg)));
            }
        }
        resp.results.push(result);
    }
    resp
}

/// IncrementalAlterConfigs (topic resources): one ConfigChange proposal.
pub async fn incremental_alter_configs(
    svc: &Rc<Services>,
    node: &ClusterNode,
    req: m::IncrementalAlterConfigsRequest,
) -> m::IncrementalAlterConfigsResponse {
    const RESOURCE_TOPIC: i8 = 2;
    let mut resp = m::IncrementalAlterConfigsResponse::default();
    for r in req.resources {
        let name = r.resource_name.as_str().to_string();
        let outcome: Result<(), (i16, String)> = async {
            if r.resource_type != RESOURCE_TOPIC {
                return Err((
                    ec::INVALID_REQUEST,
                    "only topic configs can be altered (broker configs are static)".into(),
                ));
            }
            let image = node.cluster_image();
            let topic = image.topic(&name).ok_or((
                ec::UNKNOWN_TOPIC_OR_PARTITION,
                format!("topic `{name}` does not exist"),
            ))?;
            let mut configs = topic.configs.clone();
            let mut changes = BTreeMap::new();
            for c in &r.configs {
                let key = c.name.as_str().to_string();
                match c.config_operation {
                    0 => {
                        let v = c
                            .value
                            .as_ref()
                            .ok_or((ec::INVALID_CONFIG, format!("SET `{key}` without a value")))?;
                        configs.insert(key.clone(), v.as_str().to_string());
                        changes.insert(key, Some(v.as_str().to_string()));
                    }
                    1 => {
                        configs.remove(&key);
                        changes.insert(key, None);
                    }
                    2 | 3 if key == "cleanup.policy" => {
                        // APPEND / SUBTRACT on the list, from the effective value.
                        let v = c.value.as_ref().map(|v| v.as_str().to_string());
                        let v =
                            v.ok_or((ec::INVALID_CONFIG, format!("`{key}` without a value")))?;
                        let current = svc.shard.ctx.config.topic_value(&key, &configs);
                        let mut list: Vec<String> = current
                            .unwrap_or_default()
                            .split(',')
                            .map(|p| p.trim().to_string())
                            .filter(|p| !p.is_empty())
                            .collect();
                        for item in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                            let has = list.iter().any(|p| p == item);
                            if c.config_operation == 2 && !has {
                                list.push(item.to_string());
                            } else if c.config_operation == 3 {
                                list.retain(|p| p != item);
                            }
                        }
                        let joined = list.join(",");
                        configs.insert(key.clone(), joined.clone());
                        changes.insert(key, Some(joined));
                    }
                    op => {
                        return Err((
                            ec::INVALID_CONFIG,
                            format!("operation {op} is not valid for `{key}`"),
                        ))
                    }
                }
            }
            if changes.contains_key(crate::controller::REPLICATION_MODE_CONFIG) {
                return Err((
                    ec::INVALID_CONFIG,
                    "replication.mode is fixed when the topic is created".into(),
                ));
            }
            validate_topic_configs(svc, &configs).map_err(|e| (ec::INVALID_CONFIG, e))?;
            if req.validate_only {
                return Ok(());
            }
            let command = MetadataCommand::ConfigChange {
                resource: ConfigResource::Topic(name.clone()),
                changes,
            };
            node.controller
                .propose(command)
                .await
                .map_err(|e| controller_error(&e))?;
            node.wait_for_image(|i| i.topic(&name).is_some_and(|t| t.configs == configs))
                .await;
            // The replicas here run with the new config before the answer (reconciliation
            // applies it too, later, on every broker).
            let calls = (0..svc.shard.ctx.shard_count()).map(|s| {
                let topic = name.clone();
                svc.shard.call(s, move |sh| sh.apply_topic_config(topic))
            });
            for c in futures_util::future::join_all(calls).await {
                c.map_err(|e| (ec::UNKNOWN_SERVER_ERROR, e.to_string()))?;
            }
            info!(topic = name, "altered topic config");
            Ok(())
        }
        .await;
        resp.responses.push(alter_config_result(&r, outcome));
    }
    resp
}
