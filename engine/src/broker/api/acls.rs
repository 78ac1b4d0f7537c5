//! Authorisation of requests ([`Authz`]) and the three ACL APIs: CreateAcls, DescribeAcls,
//! DeleteAcls.
//!
//! The ACL bindings live in the cluster metadata (`MetadataCommand::CreateAcls`/`DeleteAcls`,
//! applied by every broker's image); `super.users` and `allow.everyone.if.no.acl.found` are
//! this broker's configuration (`BrokerConfig::authorizer`, `None` when `authorizer.class.name`
//! is empty: then every check passes, as before authorisation existed). The rules are
//! `security::acl`'s (Kafka's StandardAuthorizer).
//!
//! CreateAcls and DeleteAcls go through the controller like CreateTopics and answer once this
//! broker's image has the change.

use std::rc::Rc;
use std::sync::Arc;

use kafka_protocol::messages::{self as m, ApiKey};
use kafka_protocol::protocol::StrBytes;
use tracing::{info, warn};

use super::{controller_error, str_bytes};
use crate::broker::cluster::ClusterNode;
use crate::broker::protocol::error_code as ec;
use crate::broker::request_context::principal_and_host;
use crate::broker::services::Services;
use crate::controller::{Applied, MetadataCommand, MetadataImage as ClusterImage};
use crate::security::acl::{
    self, AccessControlEntry, AccessControlEntryFilter, AclBinding, AclBindingFilter, AclOperation,
    AclPermissionType, Authorizer, Decision, PatternType, ResourcePattern, ResourcePatternFilter,
    ResourceType, CLUSTER_NAME,
};

/// Kafka error code TOPIC_AUTHORIZATION_FAILED.
pub const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
/// Kafka error code GROUP_AUTHORIZATION_FAILED.
pub const GROUP_AUTHORIZATION_FAILED: i16 = 30;
/// Kafka error code CLUSTER_AUTHORIZATION_FAILED.
pub const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;
/// Kafka error code SECURITY_DISABLED: the ACL APIs on a broker without an authorizer.
pub const SECURITY_DISABLED: i16 = 54;
/// The message that goes with [`SECURITY_DISABLED`].
const NO_AUTHORIZER: &str = "no authorizer is configured on the broker (authorizer.class.name)";
/// Kafka error code TRANSACTIONAL_ID_AUTHORIZATION_FAILED.
pub const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;

/// What one request may do: this broker's authorizer settings, the bindings of its current
/// metadata image, and the request's principal and client host.
pub struct Authz<'a> {
    policy: Option<&'a Authorizer>,
    image: Arc<ClusterImage>,
    principal: String,
    host: String,
}

impl<'a> Authz<'a> {
    /// The authorisation context of the request being handled on `svc`'s shard.
    pub fn current(svc: &'a Services) -> Authz<'a> {
        let policy = svc.shard.ctx.config.authorizer.as_ref();
        // Without an authorizer every check passes: the produce and fetch paths then pay for
        // no principal or image copy.
        let (principal, host) = if policy.is_some() {
            principal_and_host()
        } else {
            (String::new(), String::new())
        };
        Authz {
            policy,
            image: svc.shard.image().cluster.clone(),
            principal,
            host,
        }
    }

    /// Whether an authorizer is configured.
    pub fn enabled(&self) -> bool {
        self.policy.is_some()
    }

    /// May the request's principal do `operation` on `(resource_type, name)`? Always true
    /// without an authorizer.
    pub fn allows(&self, operation: AclOperation, resource_type: ResourceType, name: &str) -> bool {
        let Some(decision) = self.decide(operation, resource_type, name) else {
            return true;
        };
        let allowed = decision.is_allowed();
        if !allowed {
            tracing::debug!(
                principal = %self.principal,
                host = %self.host,
                %operation,
                %resource_type,
                resource = name,
                ?decision,
                "authorization denied"
            );
        }
        allowed
    }

    /// The authorizer's decision, `None` without an authorizer.
    fn decide(
        &self,
        operation: AclOperation,
        resource_type: ResourceType,
        name: &str,
    ) -> Option<Decision> {
        let policy = self.policy?;
        Some(policy.decide_with(
            &self.image.acls,
            &self.principal,
            &self.host,
            operation,
            resource_type,
            name,
        ))
    }

    /// The KIP-430 bit set of the operations the principal may do on `(resource_type, name)`
    /// (implied operations included, as the authorizer's rules imply them); every operation
    /// of the type without an authorizer. Unlike [`Self::allows`], refusals are not logged:
    /// they are answers here, not denied requests.
    pub fn authorized_operations(&self, resource_type: ResourceType, name: &str) -> i32 {
        acl::authorized_operations(resource_type, |operation| {
            self.decide(operation, resource_type, name)
                .is_none_or(|d| d.is_allowed())
        })
    }

    /// The principal's operations on the cluster (KIP-430) as Metadata and DescribeCluster
    /// answer them: 0 without DESCRIBE on the cluster, as Kafka's.
    pub fn cluster_authorized_operations(&self) -> i32 {
        if self.allows_cluster(AclOperation::Describe) {
            self.authorized_operations(ResourceType::Cluster, CLUSTER_NAME)
        } else {
            0
        }
    }

    /// [`Self::allows`] on the cluster resource.
    pub fn allows_cluster(&self, operation: AclOperation) -> bool {
        self.allows(operation, ResourceType::Cluster, CLUSTER_NAME)
    }

    /// [`Self::allows`] on a topic.
    pub fn allows_topic(&self, operation: AclOperation, topic: &str) -> bool {
        self.allows(operation, ResourceType::Topic, topic)
    }

    /// Whether the principal is a super user (or there is no authorizer).
    pub fn is_super_user(&self) -> bool {
        self.policy.is_none_or(|p| p.is_super_user(&self.principal))
    }

    /// The request's principal.
    pub fn principal(&self) -> &str {
        &self.principal
    }
}

/// The APIs whose handlers check the authorizer (or that Kafka never authorises). With an
/// authorizer on, any other API is served to super users only; other principals have their
/// connection closed (see `docs/security.md`, "not yet authorised").
pub fn is_authorised_api(api: ApiKey) -> bool {
    matches!(
        api,
        ApiKey::Produce
            | ApiKey::Fetch
            | ApiKey::ListOffsets
            | ApiKey::OffsetForLeaderEpoch
            | ApiKey::Metadata
            | ApiKey::ApiVersions
            | ApiKey::SaslHandshake
            | ApiKey::SaslAuthenticate
            // Kafka answers DescribeCluster without a check.
            | ApiKey::DescribeCluster
            | ApiKey::ElectLeaders
            | ApiKey::CreateAcls
            | ApiKey::DescribeAcls
            | ApiKey::DeleteAcls
            | ApiKey::DescribeUserScramCredentials
            | ApiKey::AlterUserScramCredentials
            | ApiKey::FindCoordinator
            | ApiKey::JoinGroup
            | ApiKey::SyncGroup
            | ApiKey::Heartbeat
            | ApiKey::LeaveGroup
            | ApiKey::OffsetCommit
            | ApiKey::TxnOffsetCommit
            | ApiKey::OffsetFetch
            | ApiKey::ListGroups
            | ApiKey::DescribeGroups
            | ApiKey::DeleteGroups
            | ApiKey::OffsetDelete
            | ApiKey::CreateTopics
            | ApiKey::DeleteTopics
            | ApiKey::CreatePartitions
            | ApiKey::DescribeConfigs
            | ApiKey::IncrementalAlterConfigs
            | ApiKey::DeleteRecords
            | ApiKey::DescribeLogDirs
            | ApiKey::DescribeProducers
            | ApiKey::InitProducerId
            | ApiKey::AddPartitionsToTxn
            | ApiKey::AddOffsetsToTxn
            | ApiKey::EndTxn
            | ApiKey::WriteTxnMarkers
            | ApiKey::DescribeTransactions
            | ApiKey::ListTransactions
            | ApiKey::DescribeQuorum
            | ApiKey::DescribeClientQuotas
            | ApiKey::AlterClientQuotas
    )
}

fn code<T: Copy>(
    c: i8,
    parse: fn(i8) -> Result<T, crate::security::acl::UnknownCode>,
) -> Result<T, String> {
    parse(c).map_err(|e| e.to_string())
}

fn opt(s: &Option<StrBytes>) -> Option<String> {
    s.as_ref().map(|s| s.as_str().to_string())
}

fn creation_binding(c: &m::create_acls_request::AclCreation) -> Result<AclBinding, String> {
    Ok(AclBinding::new(
        ResourcePattern::new(
            code(c.resource_type, ResourceType::from_code)?,
            c.resource_name.as_str(),
            code(c.resource_pattern_type, PatternType::from_code)?,
        ),
        AccessControlEntry::new(
            c.principal.as_str(),
            c.host.as_str(),
            code(c.operation, AclOperation::from_code)?,
            code(c.permission_type, AclPermissionType::from_code)?,
        ),
    ))
}

#[allow(clippy::too_many_arguments)]
fn filter_of(
    resource_type: i8,
    name: &Option<StrBytes>,
    pattern_type: i8,
    principal: &Option<StrBytes>,
    host: &Option<StrBytes>,
    operation: i8,
    permission: i8,
) -> Result<AclBindingFilter, String> {
    let filter = AclBindingFilter {
        pattern: ResourcePatternFilter {
            resource_type: code(resource_type, ResourceType::from_code)?,
            name: opt(name),
            pattern_type: code(pattern_type, PatternType::from_code)?,
        },
        entry: AccessControlEntryFilter {
            principal: opt(principal),
            host: opt(host),
            operation: code(operation, AclOperation::from_code)?,
            permission: code(permission, AclPermissionType::from_code)?,
        },
    };
    filter.validate().map_err(|e| e.message)?;
    Ok(filter)
}

/// Why an ACL API is refused, if it is: SECURITY_DISABLED without an authorizer (as Kafka),
/// CLUSTER_AUTHORIZATION_FAILED without `operation` on the cluster.
fn refusal(authz: &Authz<'_>, operation: AclOperation) -> Option<(i16, Option<String>)> {
    if !authz.enabled() {
        Some((SECURITY_DISABLED, Some(NO_AUTHORIZER.to_string())))
    } else if !authz.allows_cluster(operation) {
        Some((CLUSTER_AUTHORIZATION_FAILED, None))
    } else {
        None
    }
}

/// CreateAcls: ALTER on the cluster; each creation validated, the valid ones added in one
/// metadata command.
pub async fn create_acls(
    svc: &Rc<Services>,
    node: &ClusterNode,
    req: m::CreateAclsRequest,
) -> m::CreateAclsResponse {
    let result = |code: i16, msg: Option<String>| {
        m::create_acls_response::AclCreationResult::default()
            .with_error_code(code)
            .with_error_message(msg.map(|s| str_bytes(&s)))
    };
    let authz = Authz::current(svc);
    if let Some((code, msg)) = refusal(&authz, AclOperation::Alter) {
        let results = req
            .creations
            .iter()
            .map(|_| result(code, msg.clone()))
            .collect();
        return m::CreateAclsResponse::default().with_results(results);
    }
    let mut results: Vec<Option<m::create_acls_response::AclCreationResult>> = Vec::new();
    let mut valid = Vec::new();
    for c in &req.creations {
        match creation_binding(c).and_then(|b| b.validate().map(|()| b).map_err(|e| e.message)) {
            Ok(b) => {
                valid.push(b);
                results.push(None);
            }
            Err(msg) => results.push(Some(result(ec::INVALID_REQUEST, Some(msg)))),
        }
    }
    let outcome = if valid.is_empty() {
        Ok(())
    } else {
        match node
            .controller
            .propose(MetadataCommand::CreateAcls {
                bindings: valid.clone(),
            })
            .await
        {
            Ok(_) => {
                if node
                    .wait_for_image(|i| valid.iter().all(|b| i.acls.contains(b)))
                    .await
                {
                    info!(
                        principal = authz.principal(),
                        count = valid.len(),
                        "created ACLs"
                    );
                    Ok(())
                } else {
                    Err((
                        ec::REQUEST_TIMED_OUT,
                        "ACLs not visible in time".to_string(),
                    ))
                }
            }
            Err(e) => Err(controller_error(&e)),
        }
    };
    let results = results
        .into_iter()
        .map(|r| match (r, &outcome) {
            (Some(r), _) => r,
            (None, Ok(())) => result(ec::NONE, None),
            (None, Err((code, msg))) => result(*code, Some(msg.clone())),
        })
        .collect();
    m::CreateAclsResponse::default().with_results(results)
}

/// DescribeAcls: DESCRIBE on the cluster; the bindings the filter selects, grouped by
/// resource pattern.
pub fn describe_acls(svc: &Rc<Services>, req: m::DescribeAclsRequest) -> m::DescribeAclsResponse {
    let authz = Authz::current(svc);
    if let Some((code, msg)) = refusal(&authz, AclOperation::Describe) {
        let msg = msg.unwrap_or_else(|| {
            "not authorized to describe ACLs (DESCRIBE on the cluster)".to_string()
        });
        return m::DescribeAclsResponse::default()
            .with_error_code(code)
            .with_error_message(Some(str_bytes(&msg)));
    }
    let filter = match filter_of(
        req.resource_type_filter,
        &req.resource_name_filter,
        req.pattern_type_filter,
        &req.principal_filter,
        &req.host_filter,
        req.operation,
        req.permission_type,
    ) {
        Ok(f) => f,
        Err(msg) => {
            return m::DescribeAclsResponse::default()
                .with_error_code(ec::INVALID_REQUEST)
                .with_error_message(Some(str_bytes(&msg)))
        }
    };
    let mut resources: Vec<m::describe_acls_response::DescribeAclsResource> = Vec::new();
    let mut last: Option<&ResourcePattern> = None;
    // The image's set is ordered by pattern first: one resource's bindings are contiguous.
    for b in authz.image.acls.iter().filter(|b| filter.matches(b)) {
        if last != Some(&b.pattern) {
            resources.push(
                m::describe_acls_response::DescribeAclsResource::default()
                    .with_resource_type(b.pattern.resource_type.code())
                    .with_resource_name(str_bytes(&b.pattern.name))
                    .with_pattern_type(b.pattern.pattern_type.code()),
            );
            last = Some(&b.pattern);
        }
        if let Some(r) = resources.last_mut() {
            r.acls.push(
                m::describe_acls_response::AclDescription::default()
                    .with_principal(str_bytes(&b.entry.principal))
                    .with_host(str_bytes(&b.entry.host))
                    .with_operation(b.entry.operation.code())
                    .with_permission_type(b.entry.permission.code()),
            );
        }
    }
    m::DescribeAclsResponse::default().with_resources(resources)
}

/// DeleteAcls: ALTER on the cluster; every binding a filter selects is removed in one
/// metadata command, and each filter's result lists what it removed.
pub async fn delete_acls(
    svc: &Rc<Services>,
    node: &ClusterNode,
    req: m::DeleteAclsRequest,
) -> m::DeleteAclsResponse {
    let failed = |code: i16, msg: Option<String>| {
        m::delete_acls_response::DeleteAclsFilterResult::default()
            .with_error_code(code)
            .with_error_message(msg.map(|s| str_bytes(&s)))
    };
    let authz = Authz::current(svc);
    if let Some((code, msg)) = refusal(&authz, AclOperation::Alter) {
        let results = req
            .filters
            .iter()
            .map(|_| failed(code, msg.clone()))
            .collect();
        return m::DeleteAclsResponse::default().with_filter_results(results);
    }
    let mut results: Vec<Option<m::delete_acls_response::DeleteAclsFilterResult>> = Vec::new();
    let mut filters = Vec::new();
    for f in &req.filters {
        match filter_of(
            f.resource_type_filter,
            &f.resource_name_filter,
            f.pattern_type_filter,
            &f.principal_filter,
            &f.host_filter,
            f.operation,
            f.permission_type,
        ) {
            Ok(f) => {
                filters.push(f);
                results.push(None);
            }
            Err(msg) => results.push(Some(failed(ec::INVALID_REQUEST, Some(msg)))),
        }
    }
    let outcome = if filters.is_empty() {
        Ok(Vec::new())
    } else {
        match node
            .controller
            .propose(MetadataCommand::DeleteAcls {
                filters: filters.clone(),
            })
            .await
        {
            Ok(Applied::AclsDeleted(removed)) => {
                let gone = |i: &ClusterImage| removed.iter().flatten().all(|b| !i.acls.contains(b));
                if node.wait_for_image(gone).await {
                    let n: usize = removed.iter().map(Vec::len).sum();
                    info!(principal = authz.principal(), count = n, "deleted ACLs");
                    Ok(removed)
                } else {
                    Err((
                        ec::REQUEST_TIMED_OUT,
                        "ACL removal not visible in time".to_string(),
                    ))
                }
            }
            Ok(other) => {
                warn!(?other, "DeleteAcls: unexpected controller answer");
                Err((
                    ec::UNKNOWN_SERVER_ERROR,
                    "unexpected controller answer".to_string(),
                ))
            }
            Err(e) => Err(controller_error(&e)),
        }
    };
    let mut removed = match &outcome {
        Ok(r) => r.clone().into_iter(),
        Err(_) => Vec::new().into_iter(),
    };
    let results = results
        .into_iter()
        .map(|r| match (r, &outcome) {
            (Some(r), _) => r,
            (None, Err((code, msg))) => failed(*code, Some(msg.clone())),
            (None, Ok(_)) => {
                let matching = removed
                    .next()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|b| {
                        m::delete_acls_response::DeleteAclsMatchingAcl::default()
                            .with_resource_type(b.pattern.resource_type.code())
                            .with_resource_name(str_bytes(&b.pattern.name))
                            .with_pattern_type(b.pattern.pattern_type.code())
                            .with_principal(str_bytes(&b.entry.principal))
                            .with_host(str_bytes(&b.entry.host))
                            .with_operation(b.entry.operation.code())
                            .with_permission_type(b.entry.permission.code())
                    })
                    .collect();
                failed(ec::NONE, None).with_matching_acls(matching)
            }
        })
        .collect();
    m::DeleteAclsResponse::default().with_filter_results(results)
}

// ------------------------------------------------------------------ group APIs

/// May the request's principal do `operation` on the group `group`?
fn allows_group(authz: &Authz<'_>, operation: AclOperation, group: &str) -> bool {
    authz.allows(operation, ResourceType::Group, group)
}

/// FindCoordinator: DESCRIBE on each group (TRANSACTIONAL_ID's DESCRIBE for transactional
/// ids); a denied key is answered GROUP_AUTHORIZATION_FAILED (or
/// TRANSACTIONAL_ID_AUTHORIZATION_FAILED) without a coordinator.
pub fn find_coordinator(
    svc: &Rc<Services>,
    version: i16,
    mut req: m::FindCoordinatorRequest,
) -> m::FindCoordinatorResponse {
    let authz = Authz::current(svc);
    let (rt, denied_code) = match req.key_type {
        1 => (
            ResourceType::TransactionalId,
            TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
        ),
        _ => (ResourceType::Group, GROUP_AUTHORIZATION_FAILED),
    };
    let allowed = |key: &str| authz.allows(AclOperation::Describe, rt, key);
    if version < 4 {
        if !allowed(req.key.as_str()) {
            return m::FindCoordinatorResponse::default()
                .with_error_code(denied_code)
                .with_node_id(m::BrokerId(-1))
                .with_port(-1);
        }
        return super::groups::find_coordinator(&svc.groups, &svc.transactions, version, req);
    }
    let (ok, denied): (Vec<StrBytes>, Vec<StrBytes>) = std::mem::take(&mut req.coordinator_keys)
        .into_iter()
        .partition(|k| allowed(k.as_str()));
    let mut resp = super::groups::find_coordinator(
        &svc.groups,
        &svc.transactions,
        version,
        req.with_coordinator_keys(ok),
    );
    resp.coordinators.extend(denied.into_iter().map(|key| {
        m::find_coordinator_response::Coordinator::default()
            .with_key(key)
            .with_node_id(m::BrokerId(-1))
            .with_port(-1)
            .with_error_code(denied_code)
    }));
    resp
}

/// Whether the principal may READ the group of a JoinGroup, SyncGroup, Heartbeat or
/// LeaveGroup (else the API's answer is GROUP_AUTHORIZATION_FAILED).
pub fn may_use_group(svc: &Rc<Services>, group: &str) -> bool {
    allows_group(&Authz::current(svc), AclOperation::Read, group)
}

/// OffsetCommit: READ on the group (else every partition GROUP_AUTHORIZATION_FAILED), then
/// READ on each topic (else its partitions TOPIC_AUTHORIZATION_FAILED).
pub async fn offset_commit(
    svc: &Rc<Services>,
    version: i16,
    mut req: m::OffsetCommitRequest,
) -> Result<m::OffsetCommitResponse, super::RequestError> {
    let authz = Authz::current(svc);
    let answer = |topics: &[m::offset_commit_request::OffsetCommitRequestTopic], code: i16| {
        topics
            .iter()
            .map(|t| {
                m::offset_commit_response::OffsetCommitResponseTopic::default()
                    .with_name(t.name.clone())
                    .with_topic_id(t.topic_id)
                    .with_partitions(
                        t.partitions
                            .iter()
                            .map(|p| {
                                m::offset_commit_response::OffsetCommitResponsePartition::default()
                                    .with_partition_index(p.partition_index)
                                    .with_error_code(code)
                            })
                            .collect(),
                    )
            })
            .collect::<Vec<_>>()
    };
    if !allows_group(&authz, AclOperation::Read, req.group_id.as_str()) {
        return Ok(m::OffsetCommitResponse::default()
            .with_topics(answer(&req.topics, GROUP_AUTHORIZATION_FAILED)));
    }
    let (ok, denied): (Vec<_>, Vec<_>) = std::mem::take(&mut req.topics)
        .into_iter()
        .partition(|t| authz.allows_topic(AclOperation::Read, t.name.as_str()));
    let mut resp = super::groups::offset_commit(&svc.groups, version, req.with_topics(ok)).await?;
    resp.topics
        .extend(answer(&denied, TOPIC_AUTHORIZATION_FAILED));
    Ok(resp)
}

/// TxnOffsetCommit, as Kafka's `handleTxnOffsetCommitRequest`: WRITE on the transactional
/// id (else TRANSACTIONAL_ID_AUTHORIZATION_FAILED on every partition), READ on the group
/// (else GROUP_AUTHORIZATION_FAILED on every partition), then READ on each topic (a denied
/// topic's partitions get TOPIC_AUTHORIZATION_FAILED, the others go on).
pub async fn txn_offset_commit(
    svc: &Rc<Services>,
    version: i16,
    mut req: m::TxnOffsetCommitRequest,
) -> Result<m::TxnOffsetCommitResponse, super::RequestError> {
    let authz = Authz::current(svc);
    let answer = |topics: &[m::txn_offset_commit_request::TxnOffsetCommitRequestTopic],
                  code: i16| {
        topics
            .iter()
            .map(|t| {
                m::txn_offset_commit_response::TxnOffsetCommitResponseTopic::default()
                    .with_name(t.name.clone())
                    .with_partitions(
                        t.partitions
                            .iter()
                            .map(|p| {
                                m::txn_offset_commit_response::TxnOffsetCommitResponsePartition::default()
                                    .with_partition_index(p.partition_index)
                                    .with_error_code(code)
                            })
                            .collect(),
                    )
            })
            .collect::<Vec<_>>()
    };
    if !authz.allows(
        AclOperation::Write,
        ResourceType::TransactionalId,
        req.transactional_id.as_str(),
    ) {
        return Ok(m::TxnOffsetCommitResponse::default()
            .with_topics(answer(&req.topics, TRANSACTIONAL_ID_AUTHORIZATION_FAILED)));
    }
    if !allows_group(&authz, AclOperation::Read, req.group_id.as_str()) {
        return Ok(m::TxnOffsetCommitResponse::default()
            .with_topics(answer(&req.topics, GROUP_AUTHORIZATION_FAILED)));
    }
    let (ok, denied): (Vec<_>, Vec<_>) = std::mem::take(&mut req.topics)
        .into_iter()
        .partition(|t| authz.allows_topic(AclOperation::Read, t.name.as_str()));
    let mut resp =
        super::groups::txn_offset_commit(&svc.groups, version, req.with_topics(ok)).await?;
    resp.topics
        .extend(answer(&denied, TOPIC_AUTHORIZATION_FAILED));
    Ok(resp)
}

/// OffsetFetch: DESCRIBE on each group (else GROUP_AUTHORIZATION_FAILED and no offsets), and
/// on each topic: a named topic the principal may not describe is answered
/// TOPIC_AUTHORIZATION_FAILED, and left out of an all-topics answer.
pub async fn offset_fetch(
    svc: &Rc<Services>,
    version: i16,
    req: m::OffsetFetchRequest,
) -> Result<m::OffsetFetchResponse, super::RequestError> {
    let authz = Authz::current(svc);
    let all_topics = if version >= 8 {
        false
    } else {
        req.topics.is_none()
    };
    let single_group_denied =
        version < 8 && !allows_group(&authz, AclOperation::Describe, req.group_id.as_str());
    let mut resp = super::groups::offset_fetch(&svc.groups, version, req).await?;
    if single_group_denied {
        resp.error_code = GROUP_AUTHORIZATION_FAILED;
        for t in &mut resp.topics {
            for p in &mut t.partitions {
                p.error_code = GROUP_AUTHORIZATION_FAILED;
                p.committed_offset = -1;
            }
        }
        if all_topics {
            resp.topics.clear();
        }
        return Ok(resp);
    }
    if all_topics {
        resp.topics
            .retain(|t| authz.allows_topic(AclOperation::Describe, t.name.as_str()));
    }
    for t in &mut resp.topics {
        if !authz.allows_topic(AclOperation::Describe, t.name.as_str()) {
            for p in &mut t.partitions {
                p.error_code = TOPIC_AUTHORIZATION_FAILED;
                p.committed_offset = -1;
                p.metadata = None;
            }
        }
    }
    for g in &mut resp.groups {
        if !allows_group(&authz, AclOperation::Describe, g.group_id.as_str()) {
            g.error_code = GROUP_AUTHORIZATION_FAILED;
            g.topics.clear();
            continue;
        }
        for t in &mut g.topics {
            if !authz.allows_topic(AclOperation::Describe, t.name.as_str()) {
                for p in &mut t.partitions {
                    p.error_code = TOPIC_AUTHORIZATION_FAILED;
                    p.committed_offset = -1;
                    p.metadata = None;
                }
            }
        }
    }
    Ok(resp)
}

/// ListGroups: every group with DESCRIBE on the cluster, else only the groups the principal
/// may describe.
pub fn filter_list_groups(svc: &Rc<Services>, resp: &mut m::ListGroupsResponse) {
    let authz = Authz::current(svc);
    if authz.allows_cluster(AclOperation::Describe) {
        return;
    }
    resp.groups
        .retain(|g| allows_group(&authz, AclOperation::Describe, g.group_id.as_str()));
}

/// DescribeGroups: a group the principal may not describe is answered
/// GROUP_AUTHORIZATION_FAILED with nothing else. With `include_operations` (v3+), each group
/// described without error carries the principal's operations on it (KIP-430).
pub fn filter_describe_groups(
    svc: &Rc<Services>,
    include_operations: bool,
    resp: &mut m::DescribeGroupsResponse,
) {
    let authz = Authz::current(svc);
    for g in &mut resp.groups {
        if !allows_group(&authz, AclOperation::Describe, g.group_id.as_str()) {
            *g = m::describe_groups_response::DescribedGroup::default()
                .with_group_id(g.group_id.clone())
                .with_error_code(GROUP_AUTHORIZATION_FAILED);
        } else if include_operations && g.error_code == ec::NONE {
            g.authorized_operations =
                authz.authorized_operations(ResourceType::Group, g.group_id.as_str());
        } else {
            g.authorized_operations = acl::AUTHORIZED_OPERATIONS_OMITTED;
        }
    }
}

/// DeleteGroups: DELETE on each group; the others are answered GROUP_AUTHORIZATION_FAILED
/// and not deleted.
pub async fn delete_groups(
    svc: &Rc<Services>,
    mut req: m::DeleteGroupsRequest,
) -> Result<m::DeleteGroupsResponse, super::RequestError> {
    let authz = Authz::current(svc);
    let (ok, denied): (Vec<_>, Vec<_>) = std::mem::take(&mut req.groups_names)
        .into_iter()
        .partition(|g| allows_group(&authz, AclOperation::Delete, g.as_str()));
    let mut resp = super::groups::delete_groups(&svc.groups, req.with_groups_names(ok)).await?;
    resp.results.extend(denied.into_iter().map(|g| {
        m::delete_groups_response::DeletableGroupResult::default()
            .with_group_id(g)
            .with_error_code(GROUP_AUTHORIZATION_FAILED)
    }));
    Ok(resp)
}

/// OffsetDelete: DELETE on the group (else GROUP_AUTHORIZATION_FAILED), READ on each topic
/// (else its partitions TOPIC_AUTHORIZATION_FAILED).
pub async fn offset_delete(
    svc: &Rc<Services>,
    mut req: m::OffsetDeleteRequest,
) -> Result<m::OffsetDeleteResponse, super::RequestError> {
    let authz = Authz::current(svc);
    if !allows_group(&authz, AclOperation::Delete, req.group_id.as_str()) {
        return Ok(m::OffsetDeleteResponse::default().with_error_code(GROUP_AUTHORIZATION_FAILED));
    }
    let (ok, denied): (Vec<_>, Vec<_>) = std::mem::take(&mut req.topics)
        .into_iter()
        .partition(|t| authz.allows_topic(AclOperation::Read, t.name.as_str()));
    let mut resp = super::groups::offset_delete(&svc.groups, req.with_topics(ok)).await?;
    resp.topics.extend(denied.into_iter().map(|t| {
        m::offset_delete_response::OffsetDeleteResponseTopic::default()
            .with_name(t.name)
            .with_partitions(
                t.partitions
                    .iter()
                    .map(|p| {
                        m::offset_delete_response::OffsetDeleteResponsePartition::default()
                            .with_partition_index(p.partition_index)
                            .with_error_code(TOPIC_AUTHORIZATION_FAILED)
                    })
                    .collect(),
            )
    }));
    Ok(resp)
}

// ------------------------------------------------------------------ topic and config APIs

/// CreateTopics: CREATE on the cluster, else on each topic; the others are answered
/// TOPIC_AUTHORIZATION_FAILED and not created.
pub async fn create_topics(
    svc: &Rc<Services>,
    node: &ClusterNode,
    mut req: m::CreateTopicsRequest,
) -> m::CreateTopicsResponse {
    let authz = Authz::current(svc);
    let cluster = authz.allows_cluster(AclOperation::Create);
    let (ok, denied): (Vec<_>, Vec<_>) = std::mem::take(&mut req.topics)
        .into_iter()
        .partition(|t| cluster || authz.allows_topic(AclOperation::Create, t.name.as_str()));
    let mut resp = super::topics::create_topics(svc, node, req.with_topics(ok)).await;
    resp.topics.extend(denied.into_iter().map(|t| {
        m::create_topics_response::CreatableTopicResult::default()
            .with_name(t.name)
            .with_error_code(TOPIC_AUTHORIZATION_FAILED)
            .with_num_partitions(-1)
            .with_replication_factor(-1)
    }));
    resp
}

/// DeleteTopics: DELETE on each topic (named, or found by id); the others are answered
/// TOPIC_AUTHORIZATION_FAILED and not deleted.
pub async fn delete_topics(
    svc: &Rc<Services>,
    node: &ClusterNode,
    version: i16,
    mut req: m::DeleteTopicsRequest,
) -> m::DeleteTopicsResponse {
    let authz = Authz::current(svc);
    let may = |name: &str| authz.allows_topic(AclOperation::Delete, name);
    let mut denied = Vec::new();
    let names = std::mem::take(&mut req.topic_names);
    let (ok, no): (Vec<_>, Vec<_>) = names.into_iter().partition(|n| may(n.as_str()));
    req.topic_names = ok;
    for n in no {
        denied.push(
            m::delete_topics_response::DeletableTopicResult::default()
                .with_name(Some(n))
                .with_error_code(TOPIC_AUTHORIZATION_FAILED),
        );
    }
    let image = authz.image.clone();
    let states = std::mem::take(&mut req.topics);
    for s in states {
        let name = match &s.name {
            Some(n) => Some(n.as_str().to_string()),
            None => image.topic_by_id(s.topic_id).map(|t| t.name.clone()),
        };
        match name {
            Some(n) if !may(&n) => denied.push(
                m::delete_topics_response::DeletableTopicResult::default()
                    // Without DESCRIBE the name of a topic given by id is not returned.
                    .with_name(s.name.clone())
                    .with_topic_id(s.topic_id)
                    .with_error_code(TOPIC_AUTHORIZATION_FAILED),
            ),
            _ => req.topics.push(s),
        }
    }
    let mut resp = super::topics::delete_topics(svc, node, version, req).await;
    resp.responses.extend(denied);
    resp
}

/// CreatePartitions: ALTER on each topic; the others are answered
/// TOPIC_AUTHORIZATION_FAILED.
pub async fn create_partitions(
    svc: &Rc<Services>,
    node: &ClusterNode,
    mut req: m::CreatePartitionsRequest,
) -> m::CreatePartitionsResponse {
    let authz = Authz::current(svc);
    let (ok, denied): (Vec<_>, Vec<_>) = std::mem::take(&mut req.topics)
        .into_iter()
        .partition(|t| authz.allows_topic(AclOperation::Alter, t.name.as_str()));
    let mut resp = super::topics::create_partitions(svc, node, req.with_topics(ok)).await;
    resp.results.extend(denied.into_iter().map(|t| {
        m::create_partitions_response::CreatePartitionsTopicResult::default()
            .with_name(t.name)
            .with_error_code(TOPIC_AUTHORIZATION_FAILED)
    }));
    resp
}

/// Config resource type TOPIC (DescribeConfigs, IncrementalAlterConfigs).
const CONFIG_TOPIC: i8 = 2;

/// May the principal do `operation` (DESCRIBE_CONFIGS or ALTER_CONFIGS) on a config resource:
/// a topic's, else the cluster's (a broker or broker logger). The error code when not.
fn config_denied(authz: &Authz<'_>, operation: AclOperation, rt: i8, name: &str) -> Option<i16> {
    if rt == CONFIG_TOPIC {
        (!authz.allows_topic(operation, name)).then_some(TOPIC_AUTHORIZATION_FAILED)
    } else {
        (!authz.allows_cluster(operation)).then_some(CLUSTER_AUTHORIZATION_FAILED)
    }
}

/// DescribeConfigs: DESCRIBE_CONFIGS on each topic, or on the cluster for broker resources.
pub fn describe_configs(
    svc: &Rc<Services>,
    mut req: m::DescribeConfigsRequest,
) -> m::DescribeConfigsResponse {
    let authz = Authz::current(svc);
    let mut denied = Vec::new();
    let resources = std::mem::take(&mut req.resources);
    for r in resources {
        match config_denied(
            &authz,
            AclOperation::DescribeConfigs,
            r.resource_type,
            r.resource_name.as_str(),
        ) {
            Some(code) => denied.push(
                m::describe_configs_response::DescribeConfigsResult::default()
                    .with_error_code(code)
                    .with_resource_type(r.resource_type)
                    .with_resource_name(r.resource_name),
            ),
            None => req.resources.push(r),
        }
    }
    let mut resp = super::configs::describe_configs(svc, req);
    resp.results.extend(denied);
    resp
}

/// IncrementalAlterConfigs: ALTER_CONFIGS on each topic, or on the cluster for broker
/// resources.
pub async fn incremental_alter_configs(
    svc: &Rc<Services>,
    node: &ClusterNode,
    mut req: m::IncrementalAlterConfigsRequest,
) -> m::IncrementalAlterConfigsResponse {
    let authz = Authz::current(svc);
    let mut denied = Vec::new();
    let resources = std::mem::take(&mut req.resources);
    for r in resources {
        match config_denied(
            &authz,
            AclOperation::AlterConfigs,
            r.resource_type,
            r.resource_name.as_str(),
        ) {
            Some(code) => denied.push(
                m::incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                    .with_error_code(code)
                    .with_resource_type(r.resource_type)
                    .with_resource_name(r.resource_name),
            ),
            None => req.resources.push(r),
        }
    }
    let mut resp = super::configs::incremental_alter_configs(svc, node, req).await;
    resp.responses.extend(denied);
    resp
}

// ------------------------------------------------------------------ records, producers, quorum

impl Authz<'_> {
    /// May the principal do `operation` on some resource of `resource_type` (Kafka's
    /// `authorizeByResourceType`)? Always true without an authorizer.
    pub fn allows_some(&self, operation: AclOperation, resource_type: ResourceType) -> bool {
        self.policy.is_none_or(|p| {
            p.decide_by_type_with(
                &self.image.acls,
                &self.principal,
                &self.host,
                operation,
                resource_type,
            )
        })
    }
}

/// InitProducerId: WRITE on the transactional id when there is one (else
/// TRANSACTIONAL_ID_AUTHORIZATION_FAILED); without one, IDEMPOTENT_WRITE on the cluster or
/// WRITE on some topic (else CLUSTER_AUTHORIZATION_FAILED).
pub async fn init_producer_id(
    svc: &Rc<Services>,
    version: i16,
    req: m::InitProducerIdRequest,
) -> Result<m::InitProducerIdResponse, super::RequestError> {
    let authz = Authz::current(svc);
    let denied = match &req.transactional_id {
        Some(id) => (!authz.allows(
            AclOperation::Write,
            ResourceType::TransactionalId,
            id.as_str(),
        ))
        .then_some(TRANSACTIONAL_ID_AUTHORIZATION_FAILED),
        None => (!authz.allows_cluster(AclOperation::IdempotentWrite)
            && !authz.allows_some(AclOperation::Write, ResourceType::Topic))
        .then_some(CLUSTER_AUTHORIZATION_FAILED),
    };
    if let Some(code) = denied {
        return Ok(m::InitProducerIdResponse::default()
            .with_error_code(code)
            .with_producer_id(m::ProducerId(-1))
            .with_producer_epoch(-1));
    }
    super::producers::init_producer_id(svc, version, req).await
}

/// DeleteRecords: DELETE on each topic; the others' partitions are answered
/// TOPIC_AUTHORIZATION_FAILED.
pub async fn delete_records(
    svc: &Rc<Services>,
    mut req: m::DeleteRecordsRequest,
) -> Result<m::DeleteRecordsResponse, super::RequestError> {
    let authz = Authz::current(svc);
    let (ok, denied): (Vec<_>, Vec<_>) = std::mem::take(&mut req.topics)
        .into_iter()
        .partition(|t| authz.allows_topic(AclOperation::Delete, t.name.as_str()));
    let mut resp = super::records::delete_records(svc, req.with_topics(ok)).await?;
    resp.topics.extend(denied.into_iter().map(|t| {
        m::delete_records_response::DeleteRecordsTopicResult::default()
            .with_name(t.name)
            .with_partitions(
                t.partitions
                    .iter()
                    .map(|p| {
                        m::delete_records_response::DeleteRecordsPartitionResult::default()
                            .with_partition_index(p.partition_index)
                            .with_low_watermark(-1)
                            .with_error_code(TOPIC_AUTHORIZATION_FAILED)
                    })
                    .collect(),
            )
    }));
    Ok(resp)
}

/// DescribeProducers: READ on each topic; the others' partitions are answered
/// TOPIC_AUTHORIZATION_FAILED.
pub async fn describe_producers(
    svc: &Rc<Services>,
    mut req: m::DescribeProducersRequest,
) -> Result<m::DescribeProducersResponse, super::RequestError> {
    let authz = Authz::current(svc);
    let (ok, denied): (Vec<_>, Vec<_>) = std::mem::take(&mut req.topics)
        .into_iter()
        .partition(|t| authz.allows_topic(AclOperation::Read, t.name.as_str()));
    let mut resp = super::records::describe_producers(svc, req.with_topics(ok)).await?;
    resp.topics.extend(denied.into_iter().map(|t| {
        m::describe_producers_response::TopicResponse::default()
            .with_name(t.name)
            .with_partitions(
                t.partition_indexes
                    .iter()
                    .map(|p| {
                        m::describe_producers_response::PartitionResponse::default()
                            .with_partition_index(*p)
                            .with_error_code(TOPIC_AUTHORIZATION_FAILED)
                    })
                    .collect(),
            )
    }));
    Ok(resp)
}

/// DescribeLogDirs: DESCRIBE on the cluster; without it the answer is empty (with
/// CLUSTER_AUTHORIZATION_FAILED from v3, which has the field), as in Kafka.
pub async fn describe_log_dirs(
    svc: &Rc<Services>,
    version: i16,
    req: m::DescribeLogDirsRequest,
) -> Result<m::DescribeLogDirsResponse, super::RequestError> {
    if !Authz::current(svc).allows_cluster(AclOperation::Describe) {
        let resp = m::DescribeLogDirsResponse::default();
        return Ok(if version >= 3 {
            resp.with_error_code(CLUSTER_AUTHORIZATION_FAILED)
        } else {
            resp
        });
    }
    Ok(super::records::describe_log_dirs(svc, version, req).await?)
}

/// ElectLeaders: ALTER on the cluster, else CLUSTER_AUTHORIZATION_FAILED (top level from v1,
/// and on every requested partition), as in Kafka.
pub async fn elect_leaders(
    svc: &Rc<Services>,
    node: &ClusterNode,
    version: i16,
    req: m::ElectLeadersRequest,
) -> m::ElectLeadersResponse {
    if !Authz::current(svc).allows_cluster(AclOperation::Alter) {
        let requested: Option<Vec<(String, i32)>> = req.topic_partitions.as_ref().map(|ts| {
            ts.iter()
                .flat_map(|t| {
                    let name = t.topic.as_str().to_string();
                    t.partitions.iter().map(move |&p| (name.clone(), p))
                })
                .collect()
        });
        return super::leaders::refuse(
            version,
            requested.as_deref(),
            CLUSTER_AUTHORIZATION_FAILED,
            "ALTER on the cluster is required",
        );
    }
    super::leaders::elect_leaders(node, version, req).await
}

/// DescribeQuorum: DESCRIBE on the cluster, else CLUSTER_AUTHORIZATION_FAILED.
pub async fn describe_quorum(
    svc: &Rc<Services>,
    node: &ClusterNode,
    version: i16,
    req: m::DescribeQuorumRequest,
) -> m::DescribeQuorumResponse {
    if !Authz::current(svc).allows_cluster(AclOperation::Describe) {
        return m::DescribeQuorumResponse::default().with_error_code(CLUSTER_AUTHORIZATION_FAILED);
    }
    super::quorum::describe_quorum(node, version, req).await
}
