//! Client quotas: the DescribeClientQuotas (48) and AlterClientQuotas (49) APIs, and the
//! throttling of Produce and Fetch ([`throttle_produce`], [`throttle_fetch`]) and of every
//! client request under `request_percentage` ([`request_timer`], [`Timed`],
//! [`record_request_time`]).
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
//!
//! Request quotas (KIP-124): a request's time is the time its shard thread spent working on
//! it, summed over the polls of its handler future ([`Timed`]); time spent waiting (a
//! long-poll fetch waiting for data, a cross-shard call waiting for its answer) is not
//! counted, as Kafka does not count purgatory time. Recorded as a percentage of one thread
//! against the `request_percentage` that applies, it throttles up to one quota window.
//! Produce and Fetch carry the throttle in `throttle_time_ms` (the larger of the byte and
//! request throttles; a fetch throttled either way is answered without records); for the
//! other APIs the mute is the enforcement. Exempt: ApiVersions, the SASL APIs, follower
//! fetches and the inter-broker and controller APIs. Only a request a request quota applies
//! to is timed.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use kafka_protocol::messages::{self as m, ApiKey};
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
    request_time_value, user_of, ClientQuotas, QuotaAlteration, QuotaEntity, QuotaFilter,
    QuotaKind, QuotaValue, SensorKey,
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
/// and the bytes not sent are taken back from the sensor. `request_throttle` is the
/// request quota's throttle of this fetch (its mute already set): a fetch throttled by
/// either quota is answered the same way, with the larger throttle, as Kafka's. The flag
/// says the response was replaced (an incremental session must then forget what it recorded).
#[allow(clippy::too_many_arguments)]
pub fn throttle_fetch(
    svc: &Services,
    client_id: Option<&str>,
    version: i16,
    correlation_id: i32,
    incremental: bool,
    follower: bool,
    request_throttle: i32,
    frame: FetchFrame,
) -> (FetchFrame, bool) {
    if follower {
        return (frame, false);
    }
    let image = svc.shard.image();
    let quotas = &image.cluster.client_quotas;
    if quotas.is_empty() {
        return (frame, false);
    }
    let size = frame.total_len as f64;
    let (byte_throttle, sensor) =
        match record(svc, quotas, QuotaKind::Fetch, client_id.unwrap_or(""), size) {
            Some((t, sensor)) => (t, Some(sensor)),
            None => (0, None),
        };
    let throttle = byte_throttle.max(request_throttle);
    if throttle == 0 {
        return (frame, false);
    }
    if let Some(sensor) = &sensor {
        svc.shard.ctx.quota_sensors.unrecord(sensor, size, now_ms());
    }
    tracing::debug!(?sensor, byte_throttle, request_throttle, "fetch throttled");
    mute_connection(byte_throttle);
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
    (empty, true)
}

/// The thread time one request has used so far, and the request quota it counts against.
/// Shared by the [`Timed`] wrapper (which adds each poll's time) and the handler (which may
/// record the time so far before encoding its response).
#[derive(Debug)]
pub struct RequestTimer {
    bound: f64,
    sensor: SensorKey,
    /// Time of the finished polls.
    spent: Cell<Duration>,
    /// When the poll in progress started.
    poll_started: Cell<Option<Instant>>,
    /// How much of the time is already recorded.
    recorded: Cell<Duration>,
    exempt: Cell<bool>,
}

impl RequestTimer {
    /// A timer for a request under `request_percentage` `bound`, counted against `sensor`.
    pub fn new(bound: f64, sensor: SensorKey) -> RequestTimer {
        RequestTimer {
            bound,
            sensor,
            spent: Cell::new(Duration::ZERO),
            poll_started: Cell::new(None),
            recorded: Cell::new(Duration::ZERO),
            exempt: Cell::new(false),
        }
    }

    /// The thread time so far, including the poll in progress.
    pub fn spent(&self) -> Duration {
        let current = self
            .poll_started
            .get()
            .map_or(Duration::ZERO, |t| t.elapsed());
        self.spent.get() + current
    }

    /// Exempts the request (a follower fetch: known only once its body is decoded).
    pub fn exempt(&self) {
        self.exempt.set(true);
    }

    /// The time not recorded yet, now marked recorded.
    fn take_unrecorded(&self) -> Duration {
        let spent = self.spent();
        let new = spent.saturating_sub(self.recorded.get());
        self.recorded.set(spent);
        new
    }
}

/// A future that adds the time spent inside each poll of `inner` to its [`RequestTimer`]
/// (time between polls, while the future waits, is not counted).
pub struct Timed<F> {
    inner: Pin<Box<F>>,
    timer: Rc<RequestTimer>,
}

impl<F: Future> Timed<F> {
    /// Times `inner` into `timer`.
    pub fn new(inner: F, timer: Rc<RequestTimer>) -> Timed<F> {
        Timed {
            inner: Box::pin(inner),
            timer,
        }
    }
}

impl<F: Future> Future for Timed<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let started = Instant::now();
        this.timer.poll_started.set(Some(started));
        let out = this.inner.as_mut().poll(cx);
        this.timer.poll_started.set(None);
        this.timer
            .spent
            .set(this.timer.spent.get() + started.elapsed());
        out
    }
}

/// APIs no request quota applies to: ApiVersions and SASL (a client must always be able to
/// connect and authenticate) and the inter-broker and controller APIs (Kafka exempts
/// cluster actions).
pub fn exempt_api(api: ApiKey) -> bool {
    matches!(
        api,
        ApiKey::ApiVersions
            | ApiKey::SaslHandshake
            | ApiKey::SaslAuthenticate
            | ApiKey::WriteTxnMarkers
            | ApiKey::Vote
            | ApiKey::BeginQuorumEpoch
            | ApiKey::EndQuorumEpoch
            | ApiKey::AlterPartition
            | ApiKey::Envelope
            | ApiKey::FetchSnapshot
            | ApiKey::BrokerRegistration
            | ApiKey::BrokerHeartbeat
            | ApiKey::UnregisterBroker
            | ApiKey::AllocateProducerIds
            | ApiKey::ControllerRegistration
            | ApiKey::AssignReplicasToDirs
            | ApiKey::AddRaftVoter
            | ApiKey::RemoveRaftVoter
            | ApiKey::UpdateRaftVoter
            | ApiKey::InitializeShareGroupState
            | ApiKey::ReadShareGroupState
            | ApiKey::WriteShareGroupState
            | ApiKey::DeleteShareGroupState
            | ApiKey::ReadShareGroupStateSummary
    )
}

/// The client id of a request frame (request header v1+: a nullable int16-length string
/// after api key, version and correlation id); `""` when null or absent.
fn peek_client_id(frame: &[u8]) -> String {
    let Some(len) = frame.get(8..10) else {
        return String::new();
    };
    let len = i16::from_be_bytes([len[0], len[1]]);
    if len <= 0 {
        return String::new();
    }
    frame
        .get(10..10 + len as usize)
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}

/// The timer for a request of `api` in `frame`, when a `request_percentage` quota applies
/// to its principal and client id and the API is not exempt; `None` (nothing to time)
/// otherwise, after one flag check when no request quota is configured.
pub fn request_timer(svc: &Services, api: ApiKey, frame: &[u8]) -> Option<Rc<RequestTimer>> {
    let image = svc.shard.image();
    let quotas = &image.cluster.client_quotas;
    if !quotas.has_request_quotas() || exempt_api(api) {
        return None;
    }
    let client_id = peek_client_id(frame);
    let (bound, sensor) = CONNECTION
        .try_with(|c| quotas.resolve(QuotaKind::Request, user_of(&c.principal), &client_id))
        .unwrap_or_else(|_| quotas.resolve(QuotaKind::Request, user_of(ANONYMOUS), &client_id))?;
    Some(Rc::new(RequestTimer::new(bound, sensor)))
}

/// Records the request time not recorded yet against its quota; returns the throttle time
/// (at most one quota window, as Kafka's request quota) and mutes the connection for it.
pub fn record_request_time(svc: &Services, timer: &RequestTimer) -> i32 {
    if timer.exempt.get() {
        return 0;
    }
    let value = request_time_value(timer.take_unrecorded());
    let sensors = &svc.shard.ctx.quota_sensors;
    let throttle = sensors.record_bounded(
        &timer.sensor,
        timer.bound,
        value,
        now_ms(),
        sensors.window_ms(),
    );
    if throttle > 0 {
        tracing::debug!(sensor = ?timer.sensor, throttle, "request quota throttled");
        mute_connection(throttle);
    }
    throttle
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

#[cfg(test)]
mod tests {
    use super::*;

    fn timer() -> Rc<RequestTimer> {
        Rc::new(RequestTimer::new(
            1.0,
            SensorKey {
                kind: QuotaKind::Request,
                user: String::new(),
                client_id: "c".into(),
            },
        ))
    }

    fn spin(d: Duration) {
        let start = Instant::now();
        while start.elapsed() < d {
            std::hint::spin_loop();
        }
    }

    /// Works `work` in each of two polls with a wait of `wait` between them.
    async fn work_wait_work(work: Duration, wait: Duration, seen: Rc<Cell<Duration>>) {
        spin(work);
        tokio::time::sleep(wait).await;
        spin(work);
        seen.set(work);
    }

    #[test]
    fn timed_counts_the_polls_and_not_the_waits() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let t = timer();
        let seen = Rc::new(Cell::new(Duration::ZERO));
        let work = Duration::from_millis(5);
        let wait = Duration::from_millis(100);
        let started = Instant::now();
        rt.block_on(Timed::new(
            work_wait_work(work, wait, seen.clone()),
            t.clone(),
        ));
        let total = started.elapsed();
        assert_eq!(seen.get(), work, "the inner future ran to its end");
        let spent = t.spent();
        // Both polls' work is counted...
        assert!(spent >= 2 * work, "spent {spent:?}");
        // ...and the wait between them is not.
        assert!(spent + wait <= total, "spent {spent:?} of {total:?}");
        // Nothing is in progress once done; the time is taken once.
        assert_eq!(t.spent(), spent);
        assert_eq!(t.take_unrecorded(), spent);
        assert_eq!(t.take_unrecorded(), Duration::ZERO);
    }

    #[test]
    fn the_time_so_far_is_visible_inside_the_poll() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let t = timer();
        let inner = t.clone();
        let work = Duration::from_millis(3);
        let (before, after) = rt.block_on(Timed::new(
            async move {
                let before = inner.take_unrecorded();
                spin(work);
                (before, inner.take_unrecorded())
            },
            t.clone(),
        ));
        assert!(after >= work, "{before:?} then {after:?}");
        // What was taken inside is not taken again; the rest (the end of the poll) is.
        let rest = t.take_unrecorded();
        assert_eq!(t.spent(), before + after + rest);
    }

    #[test]
    fn client_ids_are_peeked_from_the_header() {
        let mut frame = vec![0, 3, 0, 12, 0, 0, 0, 7];
        assert_eq!(peek_client_id(&frame), "");
        frame.extend_from_slice(&[0xff, 0xff]);
        assert_eq!(peek_client_id(&frame), "");
        frame.truncate(8);
        frame.extend_from_slice(&[0, 3, b'a', b'b', b'c', 9]);
        assert_eq!(peek_client_id(&frame), "abc");
        // A length past the frame's end is no client id, not a panic.
        frame.truncate(8);
        frame.extend_from_slice(&[0x7f, 0xff, b'a']);
        assert_eq!(peek_client_id(&frame), "");
    }

    #[test]
    fn connection_and_inter_broker_apis_are_exempt() {
        for api in [
            ApiKey::ApiVersions,
            ApiKey::SaslHandshake,
            ApiKey::SaslAuthenticate,
            ApiKey::Vote,
            ApiKey::BrokerHeartbeat,
        ] {
            assert!(exempt_api(api), "{api:?}");
        }
        for api in [
            ApiKey::Produce,
            ApiKey::Fetch,
            ApiKey::Metadata,
            ApiKey::ListOffsets,
        ] {
            assert!(!exempt_api(api), "{api:?}");
        }
    }
}
