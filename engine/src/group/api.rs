//! Requests into and responses out of the group coordinator, independent of wire versions.
//! `group::wire` converts them to and from kafka-protocol messages.

use bytes::Bytes;

/// A Kafka error code (`org.apache.kafka.common.protocol.Errors`).
pub type ErrorCode = i16;

/// The Kafka error codes the coordinator answers with.
pub mod codes {
    use super::ErrorCode;
    /// No error.
    pub const NONE: ErrorCode = 0;
    /// Unexpected server error.
    pub const UNKNOWN_SERVER_ERROR: ErrorCode = -1;
    /// Topic or partition does not exist.
    pub const UNKNOWN_TOPIC_OR_PARTITION: ErrorCode = 3;
    /// Offset metadata longer than `offset.metadata.max.bytes`.
    pub const OFFSET_METADATA_TOO_LARGE: ErrorCode = 12;
    /// The coordinator is still loading its `__consumer_offsets` partition.
    pub const COORDINATOR_LOAD_IN_PROGRESS: ErrorCode = 14;
    /// The coordinator is not available (group migrating, write failed transiently).
    pub const COORDINATOR_NOT_AVAILABLE: ErrorCode = 15;
    /// This broker is not the coordinator of the group.
    pub const NOT_COORDINATOR: ErrorCode = 16;
    /// The generation id is not the group's current one.
    pub const ILLEGAL_GENERATION: ErrorCode = 22;
    /// The member's protocol type or protocols are incompatible with the group.
    pub const INCONSISTENT_GROUP_PROTOCOL: ErrorCode = 23;
    /// The group id is empty or null where that is not allowed.
    pub const INVALID_GROUP_ID: ErrorCode = 24;
    /// The member id is not in the group.
    pub const UNKNOWN_MEMBER_ID: ErrorCode = 25;
    /// The session timeout is outside the broker's allowed range.
    pub const INVALID_SESSION_TIMEOUT: ErrorCode = 26;
    /// The group is rebalancing; rejoin.
    pub const REBALANCE_IN_PROGRESS: ErrorCode = 27;
    /// The request was malformed.
    pub const INVALID_REQUEST: ErrorCode = 42;
    /// The group still has members.
    pub const NON_EMPTY_GROUP: ErrorCode = 68;
    /// The group does not exist.
    pub const GROUP_ID_NOT_FOUND: ErrorCode = 69;
    /// JoinGroup v4+: retry with the member id given in the response.
    pub const MEMBER_ID_REQUIRED: ErrorCode = 79;
    /// The group reached `group.max.size`.
    pub const GROUP_MAX_SIZE_REACHED: ErrorCode = 81;
    /// Another member with the same `group.instance.id` replaced this one.
    pub const FENCED_INSTANCE_ID: ErrorCode = 82;
    /// OffsetDelete on a topic the group's members are subscribed to.
    pub const GROUP_SUBSCRIBED_TO_TOPIC: ErrorCode = 86;
    /// OffsetFetch `require_stable`: the partition has a commit not yet decided (a
    /// transactional one awaiting its marker, or one being written).
    pub const UNSTABLE_OFFSET_COMMIT: ErrorCode = 88;
}

/// An opaque token the shell attaches to a request; the coordinator hands it back with the
/// response, possibly much later (a JoinGroup waits for the rebalance).
pub type RequestToken = u64;

/// One protocol (assignor) a member supports, with its metadata (the subscription).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinProtocol {
    /// Protocol name, e.g. "range".
    pub name: String,
    /// Protocol metadata, for "consumer" a `ConsumerProtocolSubscription`.
    pub metadata: Bytes,
}

/// JoinGroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinGroup {
    /// Group id.
    pub group_id: String,
    /// Session timeout.
    pub session_timeout_ms: i32,
    /// Rebalance timeout (v0: equals the session timeout).
    pub rebalance_timeout_ms: i32,
    /// Member id, empty for a new member.
    pub member_id: String,
    /// Static member id.
    pub group_instance_id: Option<String>,
    /// Protocol type, e.g. "consumer".
    pub protocol_type: String,
    /// Supported protocols in the member's order of preference.
    pub protocols: Vec<JoinProtocol>,
    /// v4+: a new dynamic member must first obtain a member id (MEMBER_ID_REQUIRED).
    pub require_known_member_id: bool,
    /// Client id from the request header.
    pub client_id: String,
    /// Client host, e.g. "/127.0.0.1".
    pub client_host: String,
    /// Reason for joining (v8+), logged only.
    pub reason: Option<String>,
}

/// A member as the leader sees it in its JoinGroup response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedMember {
    /// Member id.
    pub member_id: String,
    /// Static member id.
    pub group_instance_id: Option<String>,
    /// Metadata for the selected protocol.
    pub metadata: Bytes,
}

/// JoinGroup response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinGroupResult {
    /// Error code.
    pub error: ErrorCode,
    /// Generation id, -1 on error.
    pub generation_id: i32,
    /// Protocol type of the group.
    pub protocol_type: Option<String>,
    /// Selected protocol.
    pub protocol_name: Option<String>,
    /// Leader member id.
    pub leader: String,
    /// The member id of the requester (also set with MEMBER_ID_REQUIRED).
    pub member_id: String,
    /// All members with their metadata, only for the leader.
    pub members: Vec<JoinedMember>,
}

impl JoinGroupResult {
    /// An error response that carries `member_id` back.
    pub fn error(error: ErrorCode, member_id: impl Into<String>) -> Self {
        JoinGroupResult {
            error,
            generation_id: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            member_id: member_id.into(),
            members: Vec::new(),
        }
    }
}

/// SyncGroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncGroup {
    /// Group id.
    pub group_id: String,
    /// Generation id.
    pub generation_id: i32,
    /// Member id.
    pub member_id: String,
    /// Static member id.
    pub group_instance_id: Option<String>,
    /// v5+: protocol type, checked against the group's.
    pub protocol_type: Option<String>,
    /// v5+: protocol name, checked against the group's.
    pub protocol_name: Option<String>,
    /// Assignments, only from the leader.
    pub assignments: Vec<(String, Bytes)>,
}

/// SyncGroup response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncGroupResult {
    /// Error code.
    pub error: ErrorCode,
    /// Protocol type.
    pub protocol_type: Option<String>,
    /// Protocol name.
    pub protocol_name: Option<String>,
    /// This member's assignment.
    pub assignment: Bytes,
}

impl SyncGroupResult {
    /// An error response.
    pub fn error(error: ErrorCode) -> Self {
        SyncGroupResult {
            error,
            protocol_type: None,
            protocol_name: None,
            assignment: Bytes::new(),
        }
    }
}

/// Heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// Group id.
    pub group_id: String,
    /// Generation id.
    pub generation_id: i32,
    /// Member id.
    pub member_id: String,
    /// Static member id.
    pub group_instance_id: Option<String>,
}

/// One member leaving (LeaveGroup v3+ batches them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeavingMember {
    /// Member id, empty to leave by `group_instance_id`.
    pub member_id: String,
    /// Static member id.
    pub group_instance_id: Option<String>,
}

/// LeaveGroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaveGroup {
    /// Group id.
    pub group_id: String,
    /// Members leaving.
    pub members: Vec<LeavingMember>,
}

/// LeaveGroup response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaveGroupResult {
    /// Top-level error.
    pub error: ErrorCode,
    /// Per member: (member id, instance id, error).
    pub members: Vec<(String, Option<String>, ErrorCode)>,
}

/// One partition's offset to commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionCommit {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Leader epoch, -1 unknown.
    pub leader_epoch: i32,
    /// Metadata (null is stored as "").
    pub metadata: Option<String>,
}

/// OffsetCommit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommit {
    /// Group id.
    pub group_id: String,
    /// Generation, -1 for a simple (non group-managed) commit.
    pub generation_id: i32,
    /// Member id, empty for a simple commit.
    pub member_id: String,
    /// Static member id.
    pub group_instance_id: Option<String>,
    /// v2..v4 `retention_time_ms` (-1 = broker default).
    pub retention_time_ms: i64,
    /// The offsets.
    pub partitions: Vec<PartitionCommit>,
}

/// TxnOffsetCommit: offsets committed inside a producer's transaction, pending until the
/// transaction coordinator writes the COMMIT (or ABORT) marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnOffsetCommit {
    /// The producer's transactional id (logged; the group coordinator does not check it
    /// against the transaction coordinator, as Kafka's does not).
    pub transactional_id: String,
    /// Group id.
    pub group_id: String,
    /// The producer id the offsets are pending for.
    pub producer_id: i64,
    /// The producer epoch, written into the transactional batch.
    pub producer_epoch: i16,
    /// v3+: the member's generation, -1 (older versions, or no group membership).
    pub generation_id: i32,
    /// v3+: the member id, empty (older versions, or no group membership).
    pub member_id: String,
    /// v3+: the static member id.
    pub group_instance_id: Option<String>,
    /// The offsets.
    pub partitions: Vec<PartitionCommit>,
}

/// Per-partition result of a commit or delete: (topic, partition, error).
pub type PartitionError = (String, i32, ErrorCode);

/// One partition of an OffsetFetch response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedOffset {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Committed offset, -1 if none.
    pub offset: i64,
    /// Leader epoch, -1 if unknown.
    pub leader_epoch: i32,
    /// Metadata.
    pub metadata: String,
    /// Error.
    pub error: ErrorCode,
}

/// One group of an OffsetFetch request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetFetchGroup {
    /// Group id.
    pub group_id: String,
    /// Partitions to fetch by topic; None = every committed offset of the group.
    pub topics: Option<Vec<(String, Vec<i32>)>>,
}

/// OffsetFetch (v8+ carries several groups; older versions one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetFetch {
    /// Groups.
    pub groups: Vec<OffsetFetchGroup>,
    /// v7+: answer UNSTABLE_OFFSET_COMMIT for a partition with an undecided commit instead
    /// of its last committed offset.
    pub require_stable: bool,
}

/// The offsets of one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetFetchGroupResult {
    /// Group id.
    pub group_id: String,
    /// Group-level error.
    pub error: ErrorCode,
    /// Offsets.
    pub offsets: Vec<FetchedOffset>,
}

/// ListGroups.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListGroups {
    /// v4+: only groups in these states (case-insensitive); empty = all.
    pub states_filter: Vec<String>,
    /// v5+: only groups of these types (case-insensitive); empty = all. Ours are "classic".
    pub types_filter: Vec<String>,
}

/// One listed group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedGroup {
    /// Group id.
    pub group_id: String,
    /// Protocol type ("" for offsets-only groups).
    pub protocol_type: String,
    /// State name.
    pub state: String,
}

/// ListGroups response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListGroupsResult {
    /// COORDINATOR_LOAD_IN_PROGRESS while a partition is loading.
    pub error: ErrorCode,
    /// Groups.
    pub groups: Vec<ListedGroup>,
}

/// A member as DescribeGroups shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribedMember {
    /// Member id.
    pub member_id: String,
    /// Static member id.
    pub group_instance_id: Option<String>,
    /// Client id.
    pub client_id: String,
    /// Client host.
    pub client_host: String,
    /// Metadata for the selected protocol (Stable groups only).
    pub metadata: Bytes,
    /// Assignment (Stable groups only).
    pub assignment: Bytes,
}

/// One described group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribedGroup {
    /// Error.
    pub error: ErrorCode,
    /// Group id.
    pub group_id: String,
    /// False when the group does not exist (reported as Dead, or GROUP_ID_NOT_FOUND on v6+).
    pub exists: bool,
    /// State name.
    pub state: String,
    /// Protocol type.
    pub protocol_type: String,
    /// Selected protocol when Stable, else "".
    pub protocol: String,
    /// Members.
    pub members: Vec<DescribedMember>,
}

/// OffsetDelete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetDelete {
    /// Group id.
    pub group_id: String,
    /// Partitions by topic.
    pub topics: Vec<(String, Vec<i32>)>,
}

/// OffsetDelete response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetDeleteResult {
    /// Top-level error.
    pub error: ErrorCode,
    /// Per partition.
    pub partitions: Vec<PartitionError>,
}

/// A request to the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupRequest {
    /// JoinGroup.
    Join(JoinGroup),
    /// SyncGroup.
    Sync(SyncGroup),
    /// Heartbeat.
    Heartbeat(Heartbeat),
    /// LeaveGroup.
    Leave(LeaveGroup),
    /// OffsetCommit.
    OffsetCommit(OffsetCommit),
    /// TxnOffsetCommit.
    TxnOffsetCommit(TxnOffsetCommit),
    /// OffsetFetch.
    OffsetFetch(OffsetFetch),
    /// ListGroups.
    ListGroups(ListGroups),
    /// DescribeGroups.
    DescribeGroups(Vec<String>),
    /// DeleteGroups.
    DeleteGroups(Vec<String>),
    /// OffsetDelete.
    OffsetDelete(OffsetDelete),
}

/// A response from the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupResponse {
    /// JoinGroup.
    Join(JoinGroupResult),
    /// SyncGroup.
    Sync(SyncGroupResult),
    /// Heartbeat: the error code.
    Heartbeat(ErrorCode),
    /// LeaveGroup.
    Leave(LeaveGroupResult),
    /// OffsetCommit: per partition.
    OffsetCommit(Vec<PartitionError>),
    /// TxnOffsetCommit: per partition.
    TxnOffsetCommit(Vec<PartitionError>),
    /// OffsetFetch: per group.
    OffsetFetch(Vec<OffsetFetchGroupResult>),
    /// ListGroups.
    ListGroups(ListGroupsResult),
    /// DescribeGroups.
    DescribeGroups(Vec<DescribedGroup>),
    /// DeleteGroups: (group, error).
    DeleteGroups(Vec<(String, ErrorCode)>),
    /// OffsetDelete.
    OffsetDelete(OffsetDeleteResult),
}
