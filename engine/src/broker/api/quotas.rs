//! Client quotas: the DescribeClientQuotas (48) and AlterClientQuotas (49) APIs, and the
//! throttling of Produce and Fetch ([`throttle_produce`], [`throttle_fetch`]).
//!
//! The quotas live in the cluster metadata (`MetadataCommand::AlterClientQuotas`, the image's
//! `client_quotas`); the model, resolution order and rate measurement are
//! `security::quota`'s. Each broker enforces the whole quota on its own traffic, as Kafka
//! does, with one set of sensors shared by its shards (`BrokerContext::quota_sensors`).
//!
//! Throttling follows KIP-219: the response goes out at once carrying `throttle_time_ms`, and
//! the connection is muted (nothing more is read from it or started) for that long. A
//! throttled Fetch is answered with no records (its bytes are taken back from the sensor),
//! as Kafka's `getThrottledResponse` does. Without any quota configured the produce and
//! fetch paths pay one empty-map check on the image they already share.

use std::rc::Rc;

use bytes::{BufMut, BytesMut};
use kafka_protocol::messages as m;
use tracing::info;

use super::acls::{Authz, CLUSTER_AUTHORIZATION_FAILED};
use super::{controller_error, str_bytes};
use crate::broker::cluster::ClusterNode;
use crate::broker::protocol::{encode_fetch_response, error_code as ec, FetchFrame, FramePart};
use crate::broker::request_context::{mute_connection, CONNECTION};
use crate::broker::services::Services;
use crate::broker::shard::now_ms;
use crate::controller::MetadataCommand;
use crate::security::acl::AclOperation;
use crate::security::principal::ANONYMOUS;
use crate::security::quota::{
    user_of, ClientQuotas, QuotaAlteration, QuotaEntity, QuotaFilter, QuotaKind, QuotaValue,
};

/// Records `value` against the quota of `kind` that applies to this request's principal and
/// `client_id`; returns the throttle time (0: none, or no quota applies) and mutes the
/// connection for it.
fn record(
    svc: &Services,
    quotas: &ClientQuotas,
    kind: QuotaKind,
    client_id: &str,
    value: f64,
) -> Option<(i32, crate::security::quota::SensorKey)> {
    let resolved = CONNECTION
        .try_with(|c| quotas.resolve(kind, user_of(&c.principal), client_id))
        .unwrap_or_else(|_| quotas.resolve(kind, user_of(ANONYMOUS), client_id));
    let (bound, sensor) = resolved?;
    let throttle = svc
        .shard
        .ctx
        .quota_sensors
        .record(&sensor, bound, value, now_ms());
    Some((throttle, sensor))
}

/// The produce throttle for a request of `request_bytes` from `client_id` (Kafka counts the
/// request's size against `producer_byte_rate`). Mutes the connection when throttled.
pub fn throttle_produce(svc: &Services, client_id: Option<&str>, request_bytes: usize) -> i32 {
    let image = svc.shard.image();
    let quotas = &image.cluster.client_quotas;
    if quotas.is_empty() {
        return 0;
    }
    let Some((throttle, sensor)) = record(
        svc,
        quotas,
        QuotaKind::Produce,
        client_id.unwrap_or(""),
        request_bytes as f64,
    ) else {
        return 0;
    };
    if throttle > 0 {
        tracing::debug!(?sensor, throttle, "produce throttled");
        mute_connection(throttle);
    }
    throttle
}

/// Applies `consumer_byte_rate` to a consumer's fetch response (followers are not
/// throttled): within the quota the frame goes out as it is; over it the response is
/// replaced by one without records carrying the throttle time, the connection is muted,
/// and the bytes not sent are taken back from the sensor.
pub fn throttle_fetch(
    svc: &Services,
    client_id: Option<&str>,
    version: i16,
    correlation_id: i32,
    incremental: bool,
    follower: bool,
    frame: FetchFrame,
) -> FetchFrame {
    if follower {
        return frame;
    }
    let image = svc.shard.image();
    let quotas = &image.cluster.client_quotas;
    if quotas.is_empty() {
        return frame;
    }
    let size = frame.total_len as f64;
    let Some((throttle, sensor)) =
        record(svc, quotas, QuotaKind::Fetch, client_id.unwrap_or(""), size)
    else {
        return frame;
    };
    if throttle == 0 {
        return frame;
    }
    svc.shard
        .ctx
        .quota_sensors
        .unrecord(&sensor, size, now_ms());
    tracing::debug!(?sensor, throttle, "fetch throttled");
    mute_connection(throttle);
    // An incremental session keeps its id; a full or sessionless fetch gets none (Kafka's
    // throttled response), so the client fetches the same positions again.
    let session_id = if incremental {
        fetch_session_id(&frame, version).unwrap_or(0)
    } else {
        0
    };
    let mut empty =
        encode_fetch_response(version, correlation_id, ec::NONE, session_id, vec![], false);
    set_fetch_throttle(&mut empty, version, throttle);
    empty
}

/// Offset of `throttle_time_ms` in a fetch frame (after the size prefix, the correlation id
/// and, from v12, the response header's empty tagged fields).
fn throttle_offset(version: i16) -> usize {
    if version >= 12 {
        9
    } else {
        8
    }
}

fn fetch_session_id(frame: &FetchFrame, version: i16) -> Option<i32> {
    if version < 7 {
        return None;
    }
    let FramePart::Head(head) = frame.parts.first()? else {
        return None;
    };
    let at = throttle_offset(version) + 4 + 2;
    let b = head.get(at..at + 4)?;
    Some(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn set_fetch_throttle(frame: &mut FetchFrame, version: i16, throttle: i32) {
    let Some(FramePart::Head(head)) = frame.parts.first_mut() else {
        return;
    };
    let at = throttle_offset(version);
    if head.len() < at + 4 {
        return;
    }
    let mut patched = BytesMut::with_capacity(head.len());
    patched.put_slice(&head[..at]);
    patched.put_i32(throttle);
    patched.put_slice(&head[at + 4..]);
    *head = patched.freeze();
}

/// Why a quota API is refused: with an authorizer, CLUSTER_AUTHORIZATION_FAILED without
/// `operation` on the cluster (without one, every principal may, as with the config APIs).
fn refused(svc: &Services, operation: AclOperation) -> bool {
    let authz = Authz::current(svc);
    authz.enabled() && !authz.allows_cluster(operation)
}

/// DescribeClientQuotas: DESCRIBE_CONFIGS on the cluster; the entities the filter selects.
pub fn describe_client_quotas(
    svc: &Rc<Services>,
    req: m::DescribeClientQuotasRequest,
) -> m::DescribeClientQuotasResponse {
    use m::describe_client_quotas_response::{EntityData, EntryData, ValueData};
    let error = |code: i16, msg: String| {
        m::DescribeClientQuotasResponse::default()
            .with_error_code(code)
            .with_error_message(Some(str_bytes(&msg)))
            .with_entries(None)
    };
    if refused(svc, AclOperation::DescribeConfigs) {
        return error(
            CLUSTER_AUTHORIZATION_FAILED,
            "not authorized to describe client quotas (DESCRIBE_CONFIGS on the cluster)".into(),
        );
    }
    let filter = match QuotaFilter::from_components(
        req.components.iter().map(|c| {
            (
                c.entity_type.as_str(),
                c.match_type,
                c._match.as_ref().map(|s| s.as_str()),
            )
        }),
        req.strict,
    ) {
        Ok(f) => f,
        Err(e) => return error(ec::INVALID_REQUEST, e.0),
    };
    let image = svc.shard.image();
    let entries = image
        .cluster
        .client_quotas
        .describe(&filter)
        .map(|(entity, values)| {
            EntryData::default()
                .with_entity(
                    entity
                        .components()
                        .into_iter()
                        .map(|(t, n)| {
                            EntityData::default()
                                .with_entity_type(str_bytes(t))
                                .with_entity_name(n.map(str_bytes))
                        })
                        .collect(),
                )
                .with_values(
                    values
                        .iter()
                        .map(|(k, v)| ValueData::default().with_key(str_bytes(k)).with_value(v.0))
                        .collect(),
                )
        })
        .collect();
    m::DescribeClientQuotasResponse::default().with_entries(Some(entries))
}

/// AlterClientQuotas: ALTER_CONFIGS on the cluster; every entry validated, the valid ones
/// proposed to the controller in one command (unless `validate_only`), answered once this
/// broker's image has them.
pub async fn alter_client_quotas(
    svc: &Rc<Services>,
    node: &ClusterNode,
    req: m::AlterClientQuotasRequest,
) -> m::AlterClientQuotasResponse {
    use m::alter_client_quotas_response::{EntityData, EntryData};
    let entry = |e: &m::alter_client_quotas_request::EntryData, code: i16, msg: Option<String>| {
        EntryData::default()
            .with_error_code(code)
            .with_error_message(msg.map(|s| str_bytes(&s)))
            .with_entity(
                e.entity
                    .iter()
                    .map(|c| {
                        EntityData::default()
                            .with_entity_type(c.entity_type.clone())
                            .with_entity_name(c.entity_name.clone())
                    })
                    .collect(),
            )
    };
    if refused(svc, AclOperation::AlterConfigs) {
        let entries = req
            .entries
            .iter()
            .map(|e| entry(e, CLUSTER_AUTHORIZATION_FAILED, None))
            .collect();
        return m::AlterClientQuotasResponse::default().with_entries(entries);
    }
    // Per request entry: Ok(index into `valid`) or its error.
    let mut checked: Vec<Result<(), String>> = Vec::with_capacity(req.entries.len());
    let mut valid: Vec<QuotaAlteration> = Vec::new();
    for e in &req.entries {
        let alteration = QuotaEntity::from_components(e.entity.iter().map(|c| {
            (
                c.entity_type.as_str(),
                c.entity_name.as_ref().map(|n| n.as_str()),
            )
        }))
        .map(|entity| QuotaAlteration {
            entity,
            ops: e
                .ops
                .iter()
                .map(|op| {
                    let value = (!op.remove).then_some(QuotaValue(op.value));
                    (op.key.as_str().to_string(), value)
                })
                .collect(),
        })
        .and_then(|a| a.validate().map(|()| a));
        match alteration {
            // Kafka refuses an entity named twice in one request.
            Ok(a) if valid.iter().any(|v| v.entity == a.entity) => {
                checked.push(Err(format!("entity {} appears twice", a.entity)))
            }
            Ok(a) => {
                valid.push(a);
                checked.push(Ok(()));
            }
            Err(err) => checked.push(Err(err.0)),
        }
    }
    let outcome: Result<(), (i16, String)> = if valid.is_empty() || req.validate_only {
        Ok(())
    } else {
        match node
            .controller
            .propose(MetadataCommand::AlterClientQuotas {
                alterations: valid.clone(),
            })
            .await
        {
            Ok(_) => {
                if node
                    .wait_for_image(|i| valid.iter().all(|a| i.client_quotas.reflects(a)))
                    .await
                {
                    info!(
                        principal = %crate::broker::request_context::principal_and_host().0,
                        entities = valid.len(),
                        "altered client quotas"
                    );
                    Ok(())
                } else {
                    Err((
                        ec::REQUEST_TIMED_OUT,
                        "client quotas not visible in time".to_string(),
                    ))
                }
            }
            Err(e) => Err(controller_error(&e)),
        }
    };
    let entries = req
        .entries
        .iter()
        .zip(checked)
        .map(|(e, c)| match (c, &outcome) {
            (Err(msg), _) => entry(e, ec::INVALID_REQUEST, Some(msg)),
            (Ok(()), Ok(())) => entry(e, ec::NONE, None),
            (Ok(()), Err((code, msg))) => entry(e, *code, Some(msg.clone())),
        })
        .collect();
    m::AlterClientQuotasResponse::default().with_entries(entries)
}
