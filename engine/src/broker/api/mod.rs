//! The request handlers, one module per API family: decode with kafka-protocol, route
//! partitions and groups to the shards that own them through the services' peers, gather,
//! encode. [`handle_request`] dispatches one frame.
//!
//! - [`produce`]: Produce. [`fetch`]: Fetch (with KIP-227 sessions). [`offsets`]: ListOffsets,
//!   OffsetForLeaderEpoch.
//! - [`metadata`]: Metadata, DescribeCluster. [`topics`]: CreateTopics, DeleteTopics,
//!   CreatePartitions. [`configs`]: DescribeConfigs, IncrementalAlterConfigs.
//! - [`records`]: DeleteRecords, DescribeLogDirs, DescribeProducers.
//! - [`acls`]: CreateAcls, DescribeAcls, DeleteAcls, and [`acls::Authz`], what the request's
//!   principal may do (every handler of an authorised API asks it).
//! - [`quotas`]: DescribeClientQuotas, AlterClientQuotas, and the produce and fetch
//!   throttling under client quotas.
//! - [`users`]: DescribeUserScramCredentials, AlterUserScramCredentials, and the import of
//!   the bootstrap SCRAM credentials.
//! - [`groups`]: FindCoordinator and the group APIs. [`producers`]: InitProducerId and the
//!   refused transactional APIs. [`transactions`]: the transaction APIs (KIP-98).
//!   [`quorum`]: DescribeQuorum. [`leaders`]: ElectLeaders.
//!
//! Handlers sit above every service (`broker::services`); no service imports them.

pub mod acls;
pub mod configs;
pub mod fetch;
pub mod groups;
pub mod leaders;
pub mod metadata;
pub mod offsets;
pub mod produce;
pub mod producers;
pub mod quorum;
pub mod quotas;
pub mod records;
pub mod topics;
pub mod transactions;
pub mod users;

use std::collections::HashMap;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{self as m, ApiKey, RequestHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::sync::oneshot;
use tracing::debug;

use super::protocol::{
    encode_response, error_code as ec, peek_header, served_versions, EncodeError, FetchFrame,
    SUPPORTED_APIS,
};
use super::services::Services;
use super::shard::Shard;
use crate::controller::ControllerError;

/// Kafka error code NOT_CONTROLLER.
const NOT_CONTROLLER: i16 = 41;

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
    /// An authorizer is configured and the API is not authorised yet: only super users may
    /// use it.
    #[error("{api:?} is not authorised yet and {principal} is not a super user")]
    NotAuthorised {
        /// The API.
        api: ApiKey,
        /// The request's principal.
        principal: String,
    },
    /// A shard stopped while the request was in flight (shutdown).
    #[error(transparent)]
    ShardGone(#[from] super::shard::ShardGone),
}

pub(crate) fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// Handles one request frame (without its size prefix). `Ok(None)` means no response is
/// sent (produce with acks=0).
///
/// For a Produce, `submitted` fires once every partition's append has taken its place in its
/// log's order (the connection may then start the next produce); for other requests it is
/// dropped when the request completes.
///
/// A request a `request_percentage` quota applies to is timed ([`quotas::Timed`]) and its
/// time recorded against the quota, which may mute the connection.
pub async fn handle_request(
    svc: Rc<Services>,
    frame: Bytes,
    submitted: Option<oneshot::Sender<()>>,
) -> Result<Option<Response>, RequestError> {
    let timer = peek_header(&frame)
        .and_then(|p| ApiKey::try_from(p.api_key).ok())
        .and_then(|api| quotas::request_timer(&svc, api, &frame));
    let Some(timer) = timer else {
        return dispatch(svc, frame, submitted, None).await;
    };
    let handled = dispatch(svc.clone(), frame, submitted, Some(timer.clone()));
    let out = quotas::Timed::new(handled, timer.clone()).await;
    quotas::record_request_time(&svc, &timer);
    out
}

/// [`handle_request`] without the request quota's timing; `timer` is the request's when it
/// is timed (Produce and Fetch record the time so far to put the throttle in the response).
async fn dispatch(
    svc: Rc<Services>,
    frame: Bytes,
    submitted: Option<oneshot::Sender<()>>,
    timer: Option<Rc<quotas::RequestTimer>>,
) -> Result<Option<Response>, RequestError> {
    let request_throttle = |svc: &Services| {
        timer
            .as_deref()
            .map_or(0, |t| quotas::record_request_time(svc, t))
    };
    let peek = peek_header(&frame).ok_or(RequestError::TooShort(frame.len()))?;
    let api = ApiKey::try_from(peek.api_key).map_err(|_| RequestError::UnknownApi(peek.api_key))?;
    let version = peek.api_version;
    if api == ApiKey::ApiVersions {
        return api_versions(frame, peek.correlation_id, version).map(|r| Some(Response::Frame(r)));
    }
    let served = served_versions(api).is_some_and(|(lo, hi)| (lo..=hi).contains(&version));
    if !served {
        if producers::is_transactional_api(api) && producers::txn_version_known(api, version) {
            return producers::refuse_transactional(frame, api, version).map(Some);
        }
        return Err(RequestError::Unsupported { api, version });
    }
    let malformed = |e: anyhow::Error| RequestError::Malformed {
        api,
        version,
        reason: e.to_string(),
    };
    let request_bytes = frame.len();
    let mut buf = frame;
    let header =
        RequestHeader::decode(&mut buf, api.request_header_version(version)).map_err(malformed)?;
    let cid = header.correlation_id;
    if !acls::is_authorised_api(api) {
        let authz = acls::Authz::current(&svc);
        if !authz.is_super_user() {
            return Err(RequestError::NotAuthorised {
                api,
                principal: authz.principal().to_string(),
            });
        }
    }
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
            let client_id = header.client_id.as_deref();
            let throttle = quotas::throttle_produce(&svc, client_id, request_bytes);
            match produce::produce(&svc, version, req, submitted).await? {
                Some(mut resp) => {
                    resp.throttle_time_ms = throttle.max(request_throttle(&svc));
                    crate::metrics::record_produce_errors(&resp);
                    frame(&resp)
                }
                None => Ok(None),
            }
        }
        ApiKey::Fetch => {
            let req = decode!(m::FetchRequest);
            let follower = if version >= 15 {
                req.replica_state.replica_id.0 >= 0
            } else {
                req.replica_id.0 >= 0
            };
            if follower {
                if let Some(t) = &timer {
                    t.exempt();
                }
            }
            let incremental = version >= 7 && req.session_id > 0 && req.session_epoch > 0;
            let session_id = req.session_id;
            let resp = fetch::fetch(&svc, version, cid, req).await?;
            let (resp, throttled) = quotas::throttle_fetch(
                &svc,
                header.client_id.as_deref(),
                version,
                cid,
                incremental,
                follower,
                request_throttle(&svc),
                resp,
            );
            if throttled && incremental {
                fetch::forget_told(&svc, session_id).await?;
            }
            Ok(Some(Response::Fetch(resp)))
        }
        ApiKey::ListOffsets => {
            let req = decode!(m::ListOffsetsRequest);
            frame(&offsets::list_offsets(&svc, version, req).await?)
        }
        ApiKey::Metadata => {
            let req = decode!(m::MetadataRequest);
            let node = svc.shard.ctx.metadata.cluster_node().clone();
            frame(&metadata::metadata(&svc, &node, version, req).await)
        }
        ApiKey::CreateTopics => {
            let req = decode!(m::CreateTopicsRequest);
            let node = svc.shard.ctx.metadata.cluster_node().clone();
            frame(&acls::create_topics(&svc, &node, req).await)
        }
        ApiKey::DeleteTopics => {
            let req = decode!(m::DeleteTopicsRequest);
            let node = svc.shard.ctx.metadata.cluster_node().clone();
            frame(&acls::delete_topics(&svc, &node, version, req).await)
        }
        ApiKey::CreatePartitions => {
            let req = decode!(m::CreatePartitionsRequest);
            let node = svc.shard.ctx.metadata.cluster_node().clone();
            frame(&acls::create_partitions(&svc, &node, req).await)
        }
        ApiKey::OffsetForLeaderEpoch => {
            let req = decode!(m::OffsetForLeaderEpochRequest);
            frame(&offsets::offset_for_leader_epoch(&svc, req).await?)
        }
        ApiKey::DescribeConfigs => {
            let req = decode!(m::DescribeConfigsRequest);
            frame(&acls::describe_configs(&svc, req))
        }
        ApiKey::IncrementalAlterConfigs => {
            let req = decode!(m::IncrementalAlterConfigsRequest);
            let node = svc.shard.ctx.metadata.cluster_node().clone();
            frame(&acls::incremental_alter_configs(&svc, &node, req).await)
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
            let req = decode!(m::DescribeClusterRequest);
            frame(&metadata::describe_cluster(
                &svc,
                svc.shard.ctx.metadata.cluster_node(),
                &req,
            ))
        }
        ApiKey::ElectLeaders => {
            let req = decode!(m::ElectLeadersRequest);
            let node = svc.shard.ctx.metadata.cluster_node().clone();
            frame(&acls::elect_leaders(&svc, &node, version, req).await)
        }
        ApiKey::DescribeQuorum => {
            let req = decode!(m::DescribeQuorumRequest);
            let node = svc.shard.ctx.metadata.cluster_node().clone();
            frame(&acls::describe_quorum(&svc, &node, version, req).await)
        }
        ApiKey::FindCoordinator => {
            let req = decode!(m::FindCoordinatorRequest);
            frame(&acls::find_coordinator(&svc, version, req))
        }
        ApiKey::JoinGroup => {
            let req = decode!(m::JoinGroupRequest);
            if !acls::may_use_group(&svc, req.group_id.as_str()) {
                return frame(
                    &m::JoinGroupResponse::default()
                        .with_error_code(acls::GROUP_AUTHORIZATION_FAILED)
                        .with_generation_id(-1),
                );
            }
            frame(&groups::join_group(&svc.groups, version, &header, req).await?)
        }
        ApiKey::SyncGroup => {
            let req = decode!(m::SyncGroupRequest);
            if !acls::may_use_group(&svc, req.group_id.as_str()) {
                return frame(
                    &m::SyncGroupResponse::default()
                        .with_error_code(acls::GROUP_AUTHORIZATION_FAILED),
                );
            }
            frame(&groups::sync_group(&svc.groups, version, req).await?)
        }
        ApiKey::Heartbeat => {
            let req = decode!(m::HeartbeatRequest);
            if !acls::may_use_group(&svc, req.group_id.as_str()) {
                return frame(
                    &m::HeartbeatResponse::default()
                        .with_error_code(acls::GROUP_AUTHORIZATION_FAILED),
                );
            }
            frame(&groups::heartbeat(&svc.groups, version, req).await?)
        }
        ApiKey::LeaveGroup => {
            let req = decode!(m::LeaveGroupRequest);
            if !acls::may_use_group(&svc, req.group_id.as_str()) {
                return frame(
                    &m::LeaveGroupResponse::default()
                        .with_error_code(acls::GROUP_AUTHORIZATION_FAILED),
                );
            }
            frame(&groups::leave_group(&svc.groups, version, req).await?)
        }
        ApiKey::OffsetCommit => {
            let req = decode!(m::OffsetCommitRequest);
            frame(&acls::offset_commit(&svc, version, req).await?)
        }
        ApiKey::TxnOffsetCommit => {
            let req = decode!(m::TxnOffsetCommitRequest);
            frame(&acls::txn_offset_commit(&svc, version, req).await?)
        }
        ApiKey::OffsetFetch => {
            let req = decode!(m::OffsetFetchRequest);
            frame(&acls::offset_fetch(&svc, version, req).await?)
        }
        ApiKey::ListGroups => {
            let req = decode!(m::ListGroupsRequest);
            let mut resp = groups::list_groups(&svc.groups, version, req).await?;
            acls::filter_list_groups(&svc, &mut resp);
            frame(&resp)
        }
        ApiKey::DescribeGroups => {
            let req = decode!(m::DescribeGroupsRequest);
            let include_operations = req.include_authorized_operations;
            let mut resp = groups::describe_groups(&svc.groups, version, req).await?;
            acls::filter_describe_groups(&svc, include_operations, &mut resp);
            frame(&resp)
        }
        ApiKey::DeleteGroups => {
            let req = decode!(m::DeleteGroupsRequest);
            frame(&acls::delete_groups(&svc, req).await?)
        }
        ApiKey::OffsetDelete => {
            let req = decode!(m::OffsetDeleteRequest);
            frame(&acls::offset_delete(&svc, req).await?)
        }
        ApiKey::DeleteRecords => {
            let req = decode!(m::DeleteRecordsRequest);
            frame(&acls::delete_records(&svc, req).await?)
        }
        ApiKey::DescribeLogDirs => {
            let req = decode!(m::DescribeLogDirsRequest);
            frame(&acls::describe_log_dirs(&svc, version, req).await?)
        }
        ApiKey::DescribeProducers => {
            let req = decode!(m::DescribeProducersRequest);
            frame(&acls::describe_producers(&svc, req).await?)
        }
        ApiKey::CreateAcls => {
            let req = decode!(m::CreateAclsRequest);
            let node = svc.shard.ctx.metadata.cluster_node().clone();
            frame(&acls::create_acls(&svc, &node, req).await)
        }
        ApiKey::DescribeAcls => {
            let req = decode!(m::DescribeAclsRequest);
            frame(&acls::describe_acls(&svc, req))
        }
        ApiKey::DeleteAcls => {
            let req = decode!(m::DeleteAclsRequest);
            let node = svc.shard.ctx.metadata.cluster_node().clone();
            frame(&acls::delete_acls(&svc, &node, req).await)
        }
        ApiKey::DescribeClientQuotas => {
            let req = decode!(m::DescribeClientQuotasRequest);
            frame(&quotas::describe_client_quotas(&svc, req))
        }
        ApiKey::AlterClientQuotas => {
            let req = decode!(m::AlterClientQuotasRequest);
            let node = svc.shard.ctx.metadata.cluster_node().clone();
            frame(&quotas::alter_client_quotas(&svc, &node, req).await)
        }
        ApiKey::DescribeUserScramCredentials => {
            let req = decode!(m::DescribeUserScramCredentialsRequest);
            frame(&users::describe_user_scram_credentials(&svc, req))
        }
        ApiKey::AlterUserScramCredentials => {
            let req = decode!(m::AlterUserScramCredentialsRequest);
            let node = svc.shard.ctx.metadata.cluster_node().clone();
            frame(&users::alter_user_scram_credentials(&svc, &node, req).await)
        }
        ApiKey::InitProducerId => {
            let req = decode!(m::InitProducerIdRequest);
            frame(&acls::init_producer_id(&svc, version, req).await?)
        }
        ApiKey::AddPartitionsToTxn => {
            let req = decode!(m::AddPartitionsToTxnRequest);
            frame(&transactions::add_partitions_to_txn(&svc, version, req).await)
        }
        ApiKey::AddOffsetsToTxn => {
            let req = decode!(m::AddOffsetsToTxnRequest);
            frame(&transactions::add_offsets_to_txn(&svc, version, req).await)
        }
        ApiKey::EndTxn => {
            let req = decode!(m::EndTxnRequest);
            frame(&transactions::end_txn(&svc, version, req).await)
        }
        ApiKey::WriteTxnMarkers => {
            let req = decode!(m::WriteTxnMarkersRequest);
            frame(&transactions::write_txn_markers(&svc, req).await)
        }
        ApiKey::DescribeTransactions => {
            let req = decode!(m::DescribeTransactionsRequest);
            frame(&transactions::describe_transactions(&svc, req).await)
        }
        ApiKey::ListTransactions => {
            let req = decode!(m::ListTransactionsRequest);
            frame(&transactions::list_transactions(&svc, version, req).await)
        }
        _ => Err(RequestError::Unsupported { api, version }),
    }
}

/// A controller refusal or failure as a Kafka error code and message.
pub(crate) fn controller_error(e: &ControllerError) -> (i16, String) {
    let code = match e {
        ControllerError::Rejected(m) => m.code(),
        ControllerError::NotAvailable(_) | ControllerError::Shutdown => NOT_CONTROLLER,
        _ => ec::UNKNOWN_SERVER_ERROR,
    };
    (code, e.to_string())
}

/// Object-safe wrapper so one closure can encode any response body.
pub(crate) trait ErasedEncodable {
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
