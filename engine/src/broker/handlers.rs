//! Request handlers: decode with kafka-protocol, route partitions to their owner shards,
//! gather, encode. One function per API.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{self as m, ApiKey, RequestHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::sync::oneshot;
use tracing::debug;

use super::config::{ConfigSource, TOPIC_KEYS};
use super::groups;
use super::producer_ids;
use super::protocol::{
    encode_response, error_code as ec, peek_header, served_versions, EncodeError, FetchFrame,
    SUPPORTED_APIS,
};
use super::shard::{OffsetOut, ProduceIn, ProduceOut, Shard};
use super::{cluster, cluster_replica};
use crate::group::OFFSETS_TOPIC;

/// A response ready for the connection writer.
#[derive(Debug)]
pub enum Response {
    /// A fully encoded frame.
    Frame(BytesMut),
    /// A fetch response whose record bytes are still in segment files.
    Fetch(FetchFrame),
}

/// A request the connection cannot answer: the connection is closed (with a log line).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The frame is shorter than a request header.
    #[error("frame too short for a request header ({0} bytes)")]
    TooShort(usize),
    /// The API key is not one Kafka defines.
    #[error("unknown api key {0}")]
    UnknownApi(i16),
    /// The API or version is not served (and not advertised in ApiVersions).
    #[error("unsupported {api:?} version {version}")]
    Unsupported {
        /// The API.
        api: ApiKey,
        /// The requested version.
        version: i16,
    },
    /// The header or body does not parse at the requested version.
    #[error("malformed {api:?} v{version} request: {reason}")]
    Malformed {
        /// The API.
        api: ApiKey,
        /// The version.
        version: i16,
        /// The codec's message.
        reason: String,
    },
    /// The response could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// An acks=0 produce failed; the connection is closed to tell the client.
    #[error("acks=0 produce failed with error code {0}")]
    AcksZeroFailed(i16),
    /// A shard stopped while the request was in flight (shutdown).
    #[error(transparent)]
    ShardGone(#[from] super::shard::ShardGone),
}

/// Sluice's cap on partitions per topic: each partition is a directory with preallocated
/// indexes, so an absurd count from a client must not exhaust the disk.
pub const MAX_PARTITIONS_PER_TOPIC: i32 = 10_000;

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// Handles one request frame (without its size prefix). `Ok(None)` means no response is
/// sent (produce with acks=0).
///
/// For a Produce, `submitted` fires once every partition's append has taken its place in its
/// log's order (the connection may then start the next produce); for other requests it is
/// dropped when the request completes.
pub async fn handle_request(
    shard: Rc<Shard>,
    frame: Bytes,
    submitted: Option<oneshot::Sender<()>>,
) -> Result<Option<Response>, RequestError> {
    let peek = peek_header(&frame).ok_or(RequestError::TooShort(frame.len()))?;
    let api = ApiKey::try_from(peek.api_key).map_err(|_| RequestError::UnknownApi(peek.api_key))?;
    let version = peek.api_version;
    if api == ApiKey::ApiVersions {
        return api_versions(frame, peek.correlation_id, version).map(|r| Some(Response::Frame(r)));
    }
    if producer_ids::is_transactional_api(api) && producer_ids::txn_version_known(api, version) {
        return refuse_transactional(frame, api, version).map(Some);
    }
    match served_versions(api) {
        Some((lo, hi)) if (lo..=hi).contains(&version) => {}
        _ => return Err(RequestError::Unsupported { api, version }),
    }
    let malformed = |e: anyhow::Error| RequestError::Malformed {
        api,
        version,
        reason: e.to_string(),
    };
    let mut buf = frame;
    let header =
        RequestHeader::decode(&mut buf, api.request_header_version(version)).map_err(malformed)?;
    let cid = header.correlation_id;
    macro_rules! decode {
        ($t:ty) => {
            <$t>::decode(&mut buf, version).map_err(malformed)?
        };
    }
    let frame = |body: &dyn ErasedEncodable| -> Result<Option<Response>, RequestError> {
        Ok(Some(Response::Frame(body.encode_frame(api, version, cid)?)))
    };
    match api {
        ApiKey::Produce => {
            let req = decode!(m::ProduceRequest);
            match produce(&shard, version, req, submitted).await? {
                Some(resp) => {
                    crate::metrics::record_produce_errors(&resp);
                    frame(&resp)
                }
                None => Ok(None),
            }
        }
        ApiKey::Fetch => {
            let req = decode!(m::FetchRequest);
            Ok(Some(Response::Fetch(
                super::fetch::fetch(&shard, version, cid, req).await?,
            )))
        }
        ApiKey::ListOffsets => {
            let req = decode!(m::ListOffsetsRequest);
            frame(&list_offsets(&shard, version, req).await?)
        }
        ApiKey::Metadata => {
            let req = decode!(m::MetadataRequest);
            let node = shard.ctx.metadata.cluster_node().clone();
            frame(&cluster::metadata(&shard, &node, version, req).await)
        }
        ApiKey::CreateTopics => {
            let req = decode!(m::CreateTopicsRequest);
            let node = shard.ctx.metadata.cluster_node().clone();
            frame(&cluster::create_topics(&shard, &node, req).await)
        }
        ApiKey::DeleteTopics => {
            let req = decode!(m::DeleteTopicsRequest);
            let node = shard.ctx.metadata.cluster_node().clone();
            frame(&cluster::delete_topics(&shard, &node, version, req).await)
        }
        ApiKey::CreatePartitions => {
            let req = decode!(m::CreatePartitionsRequest);
            let node = shard.ctx.metadata.cluster_node().clone();
            frame(&cluster::create_partitions(&shard, &node, req).await)
        }
        ApiKey::OffsetForLeaderEpoch => {
            let req = decode!(m::OffsetForLeaderEpochRequest);
            frame(&cluster_replica::offset_for_leader_epoch(&shard, req).await?)
        }
        ApiKey::DescribeConfigs => {
            let req = decode!(m::DescribeConfigsRequest);
            frame(&describe_configs(&shard, req))
        }
        ApiKey::IncrementalAlterConfigs => {
            let req = decode!(m::IncrementalAlterConfigsRequest);
            let node = shard.ctx.metadata.cluster_node().clone();
            frame(&cluster::incremental_alter_configs(&shard, &node, req).await)
        }
        ApiKey::SaslHandshake => {
            let _req = decode!(m::SaslHandshakeRequest);
            // Not a SASL listener (SASL listeners answer in the connection layer).
            frame(&m::SaslHandshakeResponse::default().with_error_code(ec::ILLEGAL_SASL_STATE))
        }
        ApiKey::SaslAuthenticate => {
            let _req = decode!(m::SaslAuthenticateRequest);
            frame(
                &m::SaslAuthenticateResponse::default()
                    .with_error_code(ec::ILLEGAL_SASL_STATE)
                    .with_error_message(Some(str_bytes("this listener does not use SASL"))),
            )
        }
        ApiKey::DescribeCluster => {
            let _req = decode!(m::DescribeClusterRequest);
            frame(&cluster::describe_cluster(
                &shard,
                shard.ctx.metadata.cluster_node(),
            ))
        }
        ApiKey::DescribeQuorum => {
            let req = decode!(m::DescribeQuorumRequest);
            let node = shard.ctx.metadata.cluster_node().clone();
            frame(&super::quorum::describe_quorum(&node, version, req).await)
        }
        ApiKey::FindCoordinator => {
            let req = decode!(m::FindCoordinatorRequest);
            frame(&groups::find_coordinator(&shard, version, req))
        }
        ApiKey::JoinGroup => {
            let req = decode!(m::JoinGroupRequest);
            frame(&groups::join_group(&shard, version, &header, req).await?)
        }
        ApiKey::SyncGroup => {
            let req = decode!(m::SyncGroupRequest);
            frame(&groups::sync_group(&shard, version, req).await?)
        }
        ApiKey::Heartbeat => {
            let req = decode!(m::HeartbeatRequest);
            frame(&groups::heartbeat(&shard, version, req).await?)
        }
        ApiKey::LeaveGroup => {
            let req = decode!(m::LeaveGroupRequest);
            frame(&groups::leave_group(&shard, version, req).await?)
        }
        ApiKey::OffsetCommit => {
            let req = decode!(m::OffsetCommitRequest);
            frame(&groups::offset_commit(&shard, version, req).await?)
        }
        ApiKey::OffsetFetch => {
            let req = decode!(m::OffsetFetchRequest);
            frame(&groups::offset_fetch(&shard, version, req).await?)
        }
        ApiKey::ListGroups => {
            let req = decode!(m::ListGroupsRequest);
            frame(&groups::list_groups(&shard, version, req).await?)
        }
        ApiKey::DescribeGroups => {
            let req = decode!(m::DescribeGroupsRequest);
            frame(&groups::describe_groups(&shard, version, req).await?)
        }
        ApiKey::DeleteGroups => {
            let req = decode!(m::DeleteGroupsRequest);
            frame(&groups::delete_groups(&shard, req).await?)
        }
        ApiKey::OffsetDelete => {
            let req = decode!(m::OffsetDeleteRequest);
            frame(&groups::offset_delete(&shard, req).await?)
        }
        ApiKey::DeleteRecords => {
            let req = decode!(m::DeleteRecordsRequest);
            frame(&super::admin_records::delete_records(&shard, req).await?)
        }
        ApiKey::DescribeLogDirs => {
            let req = decode!(m::DescribeLogDirsRequest);
            frame(&super::admin_records::describe_log_dirs(&shard, version, req).await?)
        }
        ApiKey::DescribeProducers => {
            let req = decode!(m::DescribeProducersRequest);
            frame(&super::admin_records::describe_producers(&shard, req).await?)
        }
        ApiKey::InitProducerId => {
            let req = decode!(m::InitProducerIdRequest);
            let req = crate::idempotence::init_producer_id_request(&req, version);
            let result = shard
                .call(producer_ids::PRODUCER_ID_SHARD, move |s| {
                    producer_ids::init_producer_id(s, req)
                })
                .await?;
            frame(&crate::idempotence::init_producer_id_response(&result))
        }
        _ => Err(RequestError::Unsupported { api, version }),
    }
}

/// A transactional API sent although not advertised: a well-formed UNSUPPORTED_VERSION answer.
fn refuse_transactional(frame: Bytes, api: ApiKey, version: i16) -> Result<Response, RequestError> {
    use producer_ids::TxnRefusal as T;
    let malformed = |e: anyhow::Error| RequestError::Malformed {
        api,
        version,
        reason: e.to_string(),
    };
    let mut buf = frame;
    let header =
        RequestHeader::decode(&mut buf, api.request_header_version(version)).map_err(malformed)?;
    let cid = header.correlation_id;
    debug!(?api, version, "transactional API refused");
    let body: Box<dyn ErasedEncodable> =
        match producer_ids::refuse_transactional(api, version, &mut buf).map_err(malformed)? {
            T::AddPartitionsToTxn(r) => Box::new(r),
            T::AddOffsetsToTxn(r) => Box::new(r),
            T::EndTxn(r) => Box::new(r),
            T::TxnOffsetCommit(r) => Box::new(r),
            T::WriteTxnMarkers(r) => Box::new(r),
            T::DescribeTransactions(r) => Box::new(r),
            T::ListTransactions(r) => Box::new(r),
        };
    Ok(Response::Frame(body.encode_frame(api, version, cid)?))
}

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

/// Object-safe wrapper so one closure can encode any response body.
trait ErasedEncodable {
    fn encode_frame(&self, api: ApiKey, version: i16, cid: i32) -> Result<BytesMut, EncodeError>;
}

impl<T: Encodable> ErasedEncodable for T {
    fn encode_frame(&self, api: ApiKey, version: i16, cid: i32) -> Result<BytesMut, EncodeError> {
        encode_response(api, version, cid, self)
    }
}

/// ApiVersions, including KIP-511's fallback: a version we do not know gets a v0 response
/// carrying UNSUPPORTED_VERSION and our API list, so the client can retry with a version we do.
fn api_versions(frame: Bytes, cid: i32, version: i16) -> Result<BytesMut, RequestError> {
    let api_keys: Vec<m::api_versions_response::ApiVersion> = SUPPORTED_APIS
        .iter()
        .map(|(k, lo, hi)| {
            m::api_versions_response::ApiVersion::default()
                .with_api_key(*k as i16)
                .with_min_version(*lo)
                .with_max_version(*hi)
        })
        .collect();
    let (lo, hi) = served_versions(ApiKey::ApiVersions).unwrap_or((0, 0));
    if !(lo..=hi).contains(&version) {
        let resp = m::ApiVersionsResponse::default()
            .with_error_code(ec::UNSUPPORTED_VERSION)
            .with_api_keys(api_keys);
        return Ok(encode_response(ApiKey::ApiVersions, 0, cid, &resp)?);
    }
    let api = ApiKey::ApiVersions;
    let malformed = |e: anyhow::Error| RequestError::Malformed {
        api,
        version,
        reason: e.to_string(),
    };
    let mut buf = frame;
    RequestHeader::decode(&mut buf, api.request_header_version(version)).map_err(malformed)?;
    let req = m::ApiVersionsRequest::decode(&mut buf, version).map_err(malformed)?;
    debug!(
        client = req.client_software_name.as_str(),
        version = req.client_software_version.as_str(),
        "ApiVersions"
    );
    let resp = m::ApiVersionsResponse::default().with_api_keys(api_keys);
    Ok(encode_response(api, version, cid, &resp)?)
}

/// Work for one owner shard: positions in the response, and (topic, partition, input) items.
pub(super) type ShardWork<T> = (Vec<usize>, Vec<(String, i32, T)>);

/// One config entry for DescribeConfigs: name, value, source, read-only.
type ConfigEntry = (String, String, i8, bool);

/// Groups items by owner shard, keeping each item's position so answers can be put back in
/// request order.
pub(super) fn group_by_shard<T>(
    shard: &Shard,
    items: Vec<(usize, String, i32, T)>,
) -> HashMap<usize, ShardWork<T>> {
    let mut groups: HashMap<usize, ShardWork<T>> = HashMap::new();
    for (pos, topic, p, item) in items {
        let owner = shard.ctx.owner(&topic, p);
        let g = groups.entry(owner).or_default();
        g.0.push(pos);
        g.1.push((topic, p, item));
    }
    groups
}

async fn produce(
    shard: &Rc<Shard>,
    version: i16,
    req: m::ProduceRequest,
    submitted: Option<oneshot::Sender<()>>,
) -> Result<Option<m::ProduceResponse>, RequestError> {
    let acks = req.acks;
    let timeout_ms = req.timeout_ms;
    let image = shard.image();
    let mut results: Vec<Option<ProduceOut>> = Vec::new();
    let mut work = Vec::new();
    let mut layout = Vec::new();
    for topic in &req.topic_data {
        let name = topic.name.as_str().to_string();
        let known = image.topic(&name).cloned();
        let mut parts = Vec::new();
        for p in &topic.partition_data {
            let pos = results.len();
            parts.push((p.index, pos));
            let invalid_acks = !matches!(acks, -1..=1);
            match &known {
                _ if invalid_acks => results.push(Some(err_out(21, "acks must be -1, 0 or 1"))),
                // Only the group coordinator writes the offsets topic (Kafka's answer).
                Some(_) if name == OFFSETS_TOPIC => results.push(Some(err_out(
                    ec::INVALID_TOPIC_EXCEPTION,
                    "cannot append to internal topic __consumer_offsets",
                ))),
                // Kafka's ProduceRequest rule: zstd needs Produce v7 (KIP-110), so a client
                // that negotiated less could not have meant it.
                Some(_)
                    if version < 7
                        && p.records.as_ref().is_some_and(|r| {
                            crate::storage::record_batch::uses_codec(
                                r,
                                crate::storage::record_batch::Compression::Zstd,
                            )
                        }) =>
                {
                    results.push(Some(err_out(
                        ec::UNSUPPORTED_COMPRESSION_TYPE,
                        "zstd compression needs Produce version 7 or later",
                    )))
                }
                Some(t) if (0..t.partitions).contains(&p.index) => {
                    results.push(None);
                    // The segment stores the client's bytes; storage needs them mutable to stamp
                    // the base offset, so the request's records are copied once here.
                    let records = p.records.as_ref().map(|r| BytesMut::from(&r[..]));
                    work.push((pos, name.clone(), p.index, records));
                }
                _ => results.push(Some(err_out(
                    ec::UNKNOWN_TOPIC_OR_PARTITION,
                    "unknown topic or partition",
                ))),
            }
        }
        layout.push((topic.name.clone(), parts));
    }
    let groups = group_by_shard(shard, work);
    let mut submissions = Vec::with_capacity(groups.len());
    let calls = groups.into_iter().map(|(owner, (positions, items))| {
        let items: Vec<ProduceIn> = items
            .into_iter()
            .map(|(topic, partition, records)| ProduceIn {
                topic,
                partition,
                records,
                acks,
                timeout_ms,
            })
            .collect();
        let (tx, rx) = oneshot::channel();
        submissions.push(rx);
        let shard = shard.clone();
        async move {
            (
                positions,
                shard
                    .call(owner, move |s| s.produce_local(items, Some(tx)))
                    .await,
            )
        }
    });
    let calls: Vec<_> = calls.collect();
    // The request counts as submitted once every owner has ordered its appends (or failed).
    let all_submitted = async move {
        for rx in submissions {
            let _ = rx.await;
        }
        if let Some(tx) = submitted {
            let _ = tx.send(());
        }
    };
    let (outcomes, ()) =
        futures_util::future::join(futures_util::future::join_all(calls), all_submitted).await;
    for (positions, outs) in outcomes {
        let outs = outs?;
        for (pos, out) in positions.into_iter().zip(outs) {
            results[pos] = Some(out);
        }
    }
    if acks == 0 {
        // No response to carry the error: close the connection instead, so the producer
        // refreshes its metadata (what Kafka does).
        if let Some(code) = results
            .iter()
            .flatten()
            .map(|o| o.error_code)
            .find(|c| *c != ec::NONE)
        {
            return Err(RequestError::AcksZeroFailed(code));
        }
        return Ok(None);
    }
    let mut resp = m::ProduceResponse::default();
    for (name, parts) in layout {
        let mut t = m::produce_response::TopicProduceResponse::default().with_name(name);
        for (index, pos) in parts {
            let out = results[pos]
                .take()
                .unwrap_or_else(|| err_out(ec::UNKNOWN_SERVER_ERROR, "lost result"));
            t.partition_responses.push(
                m::produce_response::PartitionProduceResponse::default()
                    .with_index(index)
                    .with_error_code(out.error_code)
                    .with_base_offset(out.base_offset)
                    .with_log_append_time_ms(out.log_append_time_ms)
                    .with_log_start_offset(out.log_start_offset)
                    .with_error_message(out.error_message.map(StrBytes::from_string)),
            );
        }
        resp.responses.push(t);
    }
    Ok(Some(resp))
}

fn err_out(code: i16, msg: &str) -> ProduceOut {
    ProduceOut {
        error_code: code,
        error_message: Some(msg.to_string()),
        base_offset: -1,
        log_append_time_ms: -1,
        log_start_offset: -1,
    }
}

async fn list_offsets(
    shard: &Rc<Shard>,
    version: i16,
    req: m::ListOffsetsRequest,
) -> Result<m::ListOffsetsResponse, RequestError> {
    let image = shard.image();
    let mut results: Vec<Option<OffsetOut>> = Vec::new();
    let mut work = Vec::new();
    let mut layout = Vec::new();
    for t in &req.topics {
        let name = t.name.as_str().to_string();
        let meta = image.topic(&name);
        let mut parts = Vec::new();
        for p in &t.partitions {
            let pos = results.len();
            parts.push((p.partition_index, pos));
            match meta {
                Some(m) if (0..m.partitions).contains(&p.partition_index) => {
                    results.push(None);
                    work.push((pos, name.clone(), p.partition_index, p.timestamp));
                }
                _ => results.push(Some(OffsetOut {
                    error_code: ec::UNKNOWN_TOPIC_OR_PARTITION,
                    timestamp: -1,
                    offset: -1,
                })),
            }
        }
        layout.push((t.name.clone(), parts));
    }
    let groups = group_by_shard(shard, work);
    let calls = groups.into_iter().map(|(owner, (positions, items))| {
        let shard = shard.clone();
        async move {
            (
                positions,
                shard
                    .call(owner, move |s| s.list_offsets_local(items))
                    .await,
            )
        }
    });
    for (positions, outs) in futures_util::future::join_all(calls).await {
        for (pos, out) in positions.into_iter().zip(outs?) {
            results[pos] = Some(out);
        }
    }
    let mut resp = m::ListOffsetsResponse::default();
    for (name, parts) in layout {
        let topic = name.as_str().to_string();
        let mut t = m::list_offsets_response::ListOffsetsTopicResponse::default().with_name(name);
        for (index, pos) in parts {
            let epoch = image
                .cluster
                .partition(&topic, index)
                .map_or(0, |p| p.leader_epoch);
            let o = results[pos].take().unwrap_or(OffsetOut {
                error_code: ec::UNKNOWN_SERVER_ERROR,
                timestamp: -1,
                offset: -1,
            });
            t.partitions.push(
                m::list_offsets_response::ListOffsetsPartitionResponse::default()
                    .with_partition_index(index)
                    .with_error_code(o.error_code)
                    .with_timestamp(o.timestamp)
                    .with_offset(o.offset)
                    // leader_epoch exists from v4.
                    .with_leader_epoch(if version >= 4 && o.offset >= 0 {
                        epoch
                    } else {
                        -1
                    }),
            );
        }
        resp.topics.push(t);
    }
    Ok(resp)
}

/// Checks topic-level config overrides: known keys, values that parse.
pub(super) fn validate_topic_configs(
    shard: &Shard,
    configs: &BTreeMap<String, String>,
) -> Result<(), String> {
    for k in configs.keys() {
        if !TOPIC_KEYS.iter().any(|(name, _)| name == k) {
            return Err(format!("unknown or unsupported topic config `{k}`"));
        }
    }
    shard
        .ctx
        .config
        .log_config(configs)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

pub(super) fn effective_topic_configs(
    shard: &Shard,
    overrides: &BTreeMap<String, String>,
) -> Vec<(String, String, i8)> {
    let cfg = &shard.ctx.config;
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

fn describe_configs(
    shard: &Rc<Shard>,
    req: m::DescribeConfigsRequest,
) -> m::DescribeConfigsResponse {
    let cfg = &shard.ctx.config;
    let image = shard.image();
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
                Some(t) => Ok(effective_topic_configs(shard, &t.configs)
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
