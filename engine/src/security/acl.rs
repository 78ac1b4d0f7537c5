//! Kafka's ACL model and authorizer, sans-IO: no sockets, files, clocks or threads.
//!
//! What is here:
//!
//! - The four ACL enums with their wire codes (the INT8 fields of CreateAcls, DescribeAcls and
//!   DeleteAcls) and the names Kafka prints (`TOPIC`, `PREFIXED`, `DESCRIBE_CONFIGS`, `ALLOW`),
//!   parsed without regard to case or underscores (`describeConfigs`, `DescribeConfigs`,
//!   `DESCRIBE_CONFIGS` are one operation), as a CLI will need.
//! - [`AclBinding`] (a [`ResourcePattern`] and an [`AccessControlEntry`]) and
//!   [`AclBindingFilter`], the filter of DescribeAcls and DeleteAcls, with the matching rules of
//!   Kafka's `ResourcePatternFilter` and `AccessControlEntryFilter`.
//! - [`AclBinding::validate`]: the checks Kafka applies to a binding of a CreateAcls request,
//!   each failing with INVALID_REQUEST (42) and a message.
//! - [`Authorizer`]: Kafka's `StandardAuthorizer` decision rules (KRaft's authorizer, the one
//!   whose ACLs live in the cluster metadata): `super.users`, `allow.everyone.if.no.acl.found`,
//!   DENY before ALLOW, literal, wildcard and prefixed patterns, the `User:*` principal and the
//!   `*` host, and the operations that imply DESCRIBE and DESCRIBE_CONFIGS.
//! - [`required_acls`]: per API the broker serves, what Kafka's request handlers ask the
//!   authorizer, as a data table.
//!
//! How it maps to Kafka: `StandardAuthorizerData.authorize` finds every ACL whose pattern
//! applies to the resource, then decides: a matching DENY denies; otherwise a matching ALLOW
//! allows; otherwise, if no ACL at all (of any principal) applies to the resource, the
//! `allow.everyone.if.no.acl.found` default decides; otherwise the request is denied. Kafka walks
//! an index sorted by reversed resource name to find the applicable ACLs quickly; this module
//! scans the bindings of the resource type, which gives the same answer (an index can come when a
//! measurement asks for it). Kafka's ACL ids (UUIDs in the metadata log) are not modelled: a
//! binding is identified by its value, and adding one that exists is a no-op, as in Kafka's
//! `AclControlManager`.
//!
//! Wired in: the bindings live in the cluster metadata image (`controller::MetadataCommand`'s
//! `CreateAcls`/`DeleteAcls`, serialised with serde), the broker keeps `super.users` and
//! `allow.everyone.if.no.acl.found` in an [`Authorizer`] without bindings and asks
//! [`Authorizer::decide_with`] over the image's set (`broker::api::acls`).
//!
//! [`Authorizer::decide_by_type_with`] is Kafka's `authorizeByResourceType` (InitProducerId
//! without a transactional id). [`authorized_operations`] builds the KIP-430 bit sets of
//! Metadata, DescribeCluster and DescribeGroups over [`supported_operations`].

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use kafka_protocol::messages::ApiKey;
use serde::{Deserialize, Serialize};

/// Kafka's INVALID_REQUEST error code, the code of every validation failure here.
pub const INVALID_REQUEST: i16 = 42;

/// The literal resource name that stands for every resource of its type, and the host that
/// stands for every host.
pub const WILDCARD: &str = "*";

/// The principal of an ACL that applies to every principal.
pub const WILDCARD_PRINCIPAL: &str = "User:*";

/// The only name of the CLUSTER resource.
pub const CLUSTER_NAME: &str = "kafka-cluster";

/// A wire code that is not one of the enum's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} code {code}")]
pub struct UnknownCode {
    /// Which enum (`resource type`, `pattern type`, `operation`, `permission type`).
    pub kind: &'static str,
    /// The code received.
    pub code: i8,
}

/// A name that is not one of the enum's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {name:?}")]
pub struct UnknownName {
    /// Which enum.
    pub kind: &'static str,
    /// The name given.
    pub name: String,
}

/// Compares a name with an enum name ignoring ASCII case and underscores.
fn same_name(given: &str, canonical: &str) -> bool {
    let mut a = given.bytes().filter(|&b| b != b'_');
    let mut b = canonical.bytes().filter(|&b| b != b'_');
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(x), Some(y)) if x.eq_ignore_ascii_case(&y) => {}
            _ => return false,
        }
    }
}

/// Defines an ACL enum: variants with their wire code and printed name, `code`, `from_code`,
/// `name`, `parse`, `Display` and `FromStr`.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        $ty:ident, $kind:literal,
        { $( $(#[$vmeta:meta])* $var:ident = $code:literal, $text:literal; )+ }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum $ty {
            $( $(#[$vmeta])* $var, )+
        }

        impl $ty {
            /// Every value, in wire-code order.
            pub const VALUES: &'static [$ty] = &[ $( $ty::$var, )+ ];

            /// The wire code.
            pub fn code(self) -> i8 {
                match self { $( $ty::$var => $code, )+ }
            }

            /// The value of a wire code; a code Kafka does not define is an error.
            pub fn from_code(code: i8) -> Result<$ty, UnknownCode> {
                match code {
                    $( $code => Ok($ty::$var), )+
                    _ => Err(UnknownCode { kind: $kind, code }),
                }
            }

            /// The name as Kafka prints it.
            pub fn name(self) -> &'static str {
                match self { $( $ty::$var => $text, )+ }
            }

            /// Parses a name, ignoring case and underscores.
            pub fn parse(name: &str) -> Result<$ty, UnknownName> {
                $ty::VALUES
                    .iter()
                    .copied()
                    .find(|v| same_name(name, v.name()))
                    .ok_or_else(|| UnknownName { kind: $kind, name: name.to_owned() })
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl FromStr for $ty {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<$ty, UnknownName> {
                $ty::parse(s)
            }
        }
    };
}

wire_enum! {
    /// The kind of resource an ACL protects.
    ResourceType, "resource type", {
        /// A code this side does not know (never valid in a binding).
        Unknown = 0, "UNKNOWN";
        /// In a filter: any resource type.
        Any = 1, "ANY";
        /// A topic.
        Topic = 2, "TOPIC";
        /// A consumer group.
        Group = 3, "GROUP";
        /// The cluster (one resource, named `kafka-cluster`).
        Cluster = 4, "CLUSTER";
        /// A transactional id.
        TransactionalId = 5, "TRANSACTIONAL_ID";
        /// A delegation token.
        DelegationToken = 6, "DELEGATION_TOKEN";
        /// A user (for creating and describing tokens on behalf of others).
        User = 7, "USER";
    }
}

wire_enum! {
    /// How an ACL's resource name is matched against a resource's name.
    PatternType, "pattern type", {
        /// A code this side does not know.
        Unknown = 0, "UNKNOWN";
        /// In a filter: any pattern type, names compared for equality.
        Any = 1, "ANY";
        /// In a filter: every pattern that applies to the named resource.
        Match = 2, "MATCH";
        /// The name is the resource's name, or `*` for every resource of the type.
        Literal = 3, "LITERAL";
        /// The name is a prefix of the resource's name.
        Prefixed = 4, "PREFIXED";
    }
}

wire_enum! {
    /// An operation on a resource.
    AclOperation, "operation", {
        /// A code this side does not know.
        Unknown = 0, "UNKNOWN";
        /// In a filter: any operation.
        Any = 1, "ANY";
        /// Every operation.
        All = 2, "ALL";
        /// Read (fetch, join a group, commit offsets).
        Read = 3, "READ";
        /// Write (produce).
        Write = 4, "WRITE";
        /// Create (topics).
        Create = 5, "CREATE";
        /// Delete (topics, records, groups).
        Delete = 6, "DELETE";
        /// Alter (partitions, ACLs).
        Alter = 7, "ALTER";
        /// Describe (metadata, offsets, groups).
        Describe = 8, "DESCRIBE";
        /// Inter-broker actions (replication, controller RPCs).
        ClusterAction = 9, "CLUSTER_ACTION";
        /// Read configurations.
        DescribeConfigs = 10, "DESCRIBE_CONFIGS";
        /// Change configurations.
        AlterConfigs = 11, "ALTER_CONFIGS";
        /// Obtain a producer id without a transactional id.
        IdempotentWrite = 12, "IDEMPOTENT_WRITE";
        /// Create delegation tokens for a user.
        CreateTokens = 13, "CREATE_TOKENS";
        /// Describe a user's delegation tokens.
        DescribeTokens = 14, "DESCRIBE_TOKENS";
    }
}

wire_enum! {
    /// Whether an ACL allows or denies.
    AclPermissionType, "permission type", {
        /// A code this side does not know.
        Unknown = 0, "UNKNOWN";
        /// In a filter: either.
        Any = 1, "ANY";
        /// Denies the operation (wins over any ALLOW).
        Deny = 2, "DENY";
        /// Allows the operation.
        Allow = 3, "ALLOW";
    }
}

/// A request failed validation: Kafka's error code and message for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (error {code})")]
pub struct AclError {
    /// The Kafka error code (INVALID_REQUEST).
    pub code: i16,
    /// The error message.
    pub message: String,
}

fn invalid(message: String) -> AclError {
    AclError {
        code: INVALID_REQUEST,
        message,
    }
}

/// The resources an ACL applies to: a type, a name and how the name is matched.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ResourcePattern {
    /// The resource type (not ANY or UNKNOWN in a valid binding).
    pub resource_type: ResourceType,
    /// The name, `*` (literal) for every resource of the type, or a prefix.
    pub name: String,
    /// LITERAL or PREFIXED in a valid binding.
    pub pattern_type: PatternType,
}

impl ResourcePattern {
    /// A pattern.
    pub fn new(
        resource_type: ResourceType,
        name: impl Into<String>,
        pattern_type: PatternType,
    ) -> Self {
        ResourcePattern {
            resource_type,
            name: name.into(),
            pattern_type,
        }
    }

    /// Whether this pattern applies to the resource `(resource_type, name)`: same type, and a
    /// literal equal name, the literal wildcard `*`, or a prefix of the name.
    pub fn applies_to(&self, resource_type: ResourceType, name: &str) -> bool {
        self.resource_type == resource_type
            && match self.pattern_type {
                PatternType::Literal => self.name == name || self.name == WILDCARD,
                PatternType::Prefixed => name.starts_with(self.name.as_str()),
                _ => false,
            }
    }
}

/// Who may (or may not) do what from where: the second half of a binding.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AccessControlEntry {
    /// `Type:name`, e.g. `User:alice`; `User:*` for every principal.
    pub principal: String,
    /// The client's address as text, or `*` for every host.
    pub host: String,
    /// The operation (not ANY or UNKNOWN in a valid binding).
    pub operation: AclOperation,
    /// ALLOW or DENY in a valid binding.
    pub permission: AclPermissionType,
}

impl AccessControlEntry {
    /// An entry.
    pub fn new(
        principal: impl Into<String>,
        host: impl Into<String>,
        operation: AclOperation,
        permission: AclPermissionType,
    ) -> Self {
        AccessControlEntry {
            principal: principal.into(),
            host: host.into(),
            operation,
            permission,
        }
    }
}

/// One ACL: a resource pattern and an entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AclBinding {
    /// The resources.
    pub pattern: ResourcePattern,
    /// The principal, host, operation and permission.
    pub entry: AccessControlEntry,
}

impl AclBinding {
    /// A binding.
    pub fn new(pattern: ResourcePattern, entry: AccessControlEntry) -> Self {
        AclBinding { pattern, entry }
    }

    /// Checks a binding of a CreateAcls request as Kafka does (the request parser, the broker's
    /// ACL handler and the controller's `AclControlManager` together), in their order:
    ///
    /// - the resource type is a concrete one (not UNKNOWN or ANY);
    /// - the pattern type is LITERAL or PREFIXED (not UNKNOWN, ANY or MATCH);
    /// - the operation is not UNKNOWN or ANY;
    /// - the permission is ALLOW or DENY;
    /// - a CLUSTER resource is named `kafka-cluster`;
    /// - the resource name is not empty;
    /// - the principal has a `:` between its type and its name (Kafka checks only that a colon
    ///   is present, so `User:` and `:x` pass, as they do there).
    ///
    /// Kafka accepts a PREFIXED pattern named `*`; it applies only to names that begin with
    /// `*` (it is not the wildcard), and it is accepted here too. The host is not checked.
    pub fn validate(&self) -> Result<(), AclError> {
        let p = &self.pattern;
        let e = &self.entry;
        if matches!(p.resource_type, ResourceType::Unknown | ResourceType::Any) {
            return Err(invalid(format!(
                "Invalid resource type {}",
                p.resource_type
            )));
        }
        if !matches!(p.pattern_type, PatternType::Literal | PatternType::Prefixed) {
            return Err(invalid(format!("Invalid pattern type {}", p.pattern_type)));
        }
        if matches!(e.operation, AclOperation::Unknown | AclOperation::Any) {
            return Err(invalid(format!("Invalid operation {}", e.operation)));
        }
        if !matches!(
            e.permission,
            AclPermissionType::Allow | AclPermissionType::Deny
        ) {
            return Err(invalid(format!("Invalid permission type {}", e.permission)));
        }
        if p.resource_type == ResourceType::Cluster && p.name != CLUSTER_NAME {
            return Err(invalid(format!(
                "The CLUSTER resource can only be named {CLUSTER_NAME}"
            )));
        }
        if p.name.is_empty() {
            return Err(invalid("The resource name must not be empty".to_owned()));
        }
        if !e.principal.contains(':') {
            return Err(invalid(format!(
                "Cannot parse the principal `{}`: it needs a colon between the principal type \
                 and the principal name",
                e.principal
            )));
        }
        Ok(())
    }

    /// The filter that matches exactly this binding.
    pub fn to_filter(&self) -> AclBindingFilter {
        AclBindingFilter {
            pattern: ResourcePatternFilter {
                resource_type: self.pattern.resource_type,
                name: Some(self.pattern.name.clone()),
                pattern_type: self.pattern.pattern_type,
            },
            entry: AccessControlEntryFilter {
                principal: Some(self.entry.principal.clone()),
                host: Some(self.entry.host.clone()),
                operation: self.entry.operation,
                permission: self.entry.permission,
            },
        }
    }
}

/// Selects resource patterns, as Kafka's `ResourcePatternFilter`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ResourcePatternFilter {
    /// ANY, or the type a pattern must have.
    pub resource_type: ResourceType,
    /// `None` matches every name. With ANY or a concrete pattern type, a pattern's name must
    /// equal it (so `*` selects only the wildcard patterns); with MATCH, see [`Self::matches`].
    pub name: Option<String>,
    /// ANY, MATCH, or the pattern type a pattern must have.
    pub pattern_type: PatternType,
}

impl ResourcePatternFilter {
    /// The filter that matches every pattern.
    pub fn any() -> Self {
        ResourcePatternFilter {
            resource_type: ResourceType::Any,
            name: None,
            pattern_type: PatternType::Any,
        }
    }

    /// Whether the filter has an UNKNOWN field (such a filter is refused).
    pub fn is_unknown(&self) -> bool {
        self.resource_type == ResourceType::Unknown || self.pattern_type == PatternType::Unknown
    }

    /// Whether `pattern` is selected: the resource type is ANY or equal; the pattern type is
    /// ANY, MATCH or equal; and the name is absent, or (ANY or equal pattern type) equal, or
    /// (MATCH) one the pattern applies to: a literal pattern of that name or the literal `*`,
    /// or a prefixed pattern that is a prefix of the name.
    pub fn matches(&self, pattern: &ResourcePattern) -> bool {
        if self.resource_type != ResourceType::Any && self.resource_type != pattern.resource_type {
            return false;
        }
        let filter_pt = self.pattern_type;
        if !matches!(filter_pt, PatternType::Any | PatternType::Match)
            && filter_pt != pattern.pattern_type
        {
            return false;
        }
        let Some(name) = &self.name else {
            return true;
        };
        if filter_pt == PatternType::Any || filter_pt == pattern.pattern_type {
            return *name == pattern.name;
        }
        // MATCH against a pattern of a concrete type.
        match pattern.pattern_type {
            PatternType::Literal => *name == pattern.name || pattern.name == WILDCARD,
            PatternType::Prefixed => name.starts_with(pattern.name.as_str()),
            // Not a valid stored pattern; Kafka throws here, nothing is selected.
            _ => false,
        }
    }
}

/// Selects entries, as Kafka's `AccessControlEntryFilter`: each field is absent/ANY or must
/// be equal (there is no MATCH for entries: `User:*` selects the `User:*` entries only).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AccessControlEntryFilter {
    /// `None` matches every principal.
    pub principal: Option<String>,
    /// `None` matches every host.
    pub host: Option<String>,
    /// ANY, or the operation an entry must have.
    pub operation: AclOperation,
    /// ANY, or the permission an entry must have.
    pub permission: AclPermissionType,
}

impl AccessControlEntryFilter {
    /// The filter that matches every entry.
    pub fn any() -> Self {
        AccessControlEntryFilter {
            principal: None,
            host: None,
            operation: AclOperation::Any,
            permission: AclPermissionType::Any,
        }
    }

    /// Whether the filter has an UNKNOWN field (such a filter is refused).
    pub fn is_unknown(&self) -> bool {
        self.operation == AclOperation::Unknown || self.permission == AclPermissionType::Unknown
    }

    /// Whether `entry` is selected.
    pub fn matches(&self, entry: &AccessControlEntry) -> bool {
        self.principal
            .as_ref()
            .is_none_or(|p| *p == entry.principal)
            && self.host.as_ref().is_none_or(|h| *h == entry.host)
            && (self.operation == AclOperation::Any || self.operation == entry.operation)
            && (self.permission == AclPermissionType::Any || self.permission == entry.permission)
    }
}

/// The filter of DescribeAcls and of each DeleteAcls filter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AclBindingFilter {
    /// Selects the pattern.
    pub pattern: ResourcePatternFilter,
    /// Selects the entry.
    pub entry: AccessControlEntryFilter,
}

impl AclBindingFilter {
    /// The filter that matches every binding.
    pub fn any() -> Self {
        AclBindingFilter {
            pattern: ResourcePatternFilter::any(),
            entry: AccessControlEntryFilter::any(),
        }
    }

    /// Whether `binding` is selected (both halves match).
    pub fn matches(&self, binding: &AclBinding) -> bool {
        self.pattern.matches(&binding.pattern) && self.entry.matches(&binding.entry)
    }

    /// Refuses a filter with an UNKNOWN field, as Kafka does for DescribeAcls and DeleteAcls.
    pub fn validate(&self) -> Result<(), AclError> {
        if self.pattern.is_unknown() {
            return Err(invalid(
                "The resource pattern filter has an UNKNOWN field".to_owned(),
            ));
        }
        if self.entry.is_unknown() {
            return Err(invalid("The entry filter has an UNKNOWN field".to_owned()));
        }
        Ok(())
    }
}

/// Parses `super.users`: principals separated by `;`, blanks around them ignored, each
/// `Type:name`.
pub fn parse_super_users(value: &str) -> Result<BTreeSet<String>, AclError> {
    let mut users = BTreeSet::new();
    for item in value.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        if !item.contains(':') {
            return Err(invalid(format!(
                "super.users: `{item}` is not a principal of the form Type:name"
            )));
        }
        users.insert(item.to_owned());
    }
    Ok(users)
}

/// Why the authorizer decided as it did (for an audit log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The principal is in `super.users`.
    SuperUser,
    /// This DENY binding applies.
    Denied(AclBinding),
    /// No DENY applies and this ALLOW binding does.
    Allowed(AclBinding),
    /// Bindings exist for the resource, but none allows this principal, host and operation.
    NoMatchingAllow,
    /// No binding applies to the resource at all: `allow.everyone.if.no.acl.found` decided.
    NoAcls {
        /// The value of `allow.everyone.if.no.acl.found`.
        allowed: bool,
    },
}

impl Decision {
    /// Whether the operation is allowed.
    pub fn is_allowed(&self) -> bool {
        match self {
            Decision::SuperUser | Decision::Allowed(_) => true,
            Decision::Denied(_) | Decision::NoMatchingAllow => false,
            Decision::NoAcls { allowed } => *allowed,
        }
    }
}

/// Whether an entry's operation covers the requested one. ALL covers everything, for ALLOW and
/// for DENY. An ALLOW of READ, WRITE, DELETE or ALTER also covers DESCRIBE, and an ALLOW of
/// ALTER_CONFIGS covers DESCRIBE_CONFIGS; a DENY covers only its own operation (a DENY of READ
/// does not deny DESCRIBE).
fn operation_covers(entry: &AccessControlEntry, requested: AclOperation) -> bool {
    use AclOperation as Op;
    if entry.operation == Op::All || entry.operation == requested {
        return true;
    }
    if entry.permission != AclPermissionType::Allow {
        return false;
    }
    match requested {
        Op::Describe => matches!(
            entry.operation,
            Op::Read | Op::Write | Op::Delete | Op::Alter
        ),
        Op::DescribeConfigs => entry.operation == Op::AlterConfigs,
        _ => false,
    }
}

/// The ACLs and the two settings of Kafka's `StandardAuthorizer`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Authorizer {
    /// Ordered by pattern first, so one resource type's bindings are contiguous.
    bindings: BTreeSet<AclBinding>,
    super_users: BTreeSet<String>,
    allow_if_no_acl: bool,
}

impl Authorizer {
    /// An authorizer without bindings. `super_users` are `Type:name` principals;
    /// `allow_everyone_if_no_acl_found` is Kafka's `allow.everyone.if.no.acl.found` (default
    /// false).
    pub fn new(
        super_users: impl IntoIterator<Item = String>,
        allow_everyone_if_no_acl_found: bool,
    ) -> Self {
        Authorizer {
            bindings: BTreeSet::new(),
            super_users: super_users.into_iter().collect(),
            allow_if_no_acl: allow_everyone_if_no_acl_found,
        }
    }

    /// An authorizer from the two configuration values (`super.users` as Kafka writes it,
    /// `User:a;User:b`).
    pub fn from_config(
        super_users: &str,
        allow_everyone_if_no_acl_found: bool,
    ) -> Result<Self, AclError> {
        Ok(Authorizer::new(
            parse_super_users(super_users)?,
            allow_everyone_if_no_acl_found,
        ))
    }

    /// Whether `principal` is a super user.
    pub fn is_super_user(&self, principal: &str) -> bool {
        self.super_users.contains(principal)
    }

    /// The number of bindings.
    pub fn len(&self) -> usize {
        self.bindings.len()
    }

    /// Whether there are no bindings.
    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }

    /// Every binding, in a fixed order.
    pub fn bindings(&self) -> impl Iterator<Item = &AclBinding> {
        self.bindings.iter()
    }

    /// Validates and adds a binding; `Ok(false)` when it was already there (a success, as in
    /// Kafka).
    pub fn add(&mut self, binding: AclBinding) -> Result<bool, AclError> {
        binding.validate()?;
        Ok(self.bindings.insert(binding))
    }

    /// Removes every binding the filter selects and returns them (DeleteAcls). A filter with
    /// an UNKNOWN field is refused and removes nothing.
    pub fn remove(&mut self, filter: &AclBindingFilter) -> Result<Vec<AclBinding>, AclError> {
        filter.validate()?;
        let removed: Vec<AclBinding> = self
            .bindings
            .iter()
            .filter(|b| filter.matches(b))
            .cloned()
            .collect();
        for b in &removed {
            self.bindings.remove(b);
        }
        Ok(removed)
    }

    /// The bindings the filter selects (DescribeAcls).
    pub fn describe(&self, filter: &AclBindingFilter) -> Result<Vec<AclBinding>, AclError> {
        filter.validate()?;
        Ok(self
            .bindings
            .iter()
            .filter(|b| filter.matches(b))
            .cloned()
            .collect())
    }

    /// May `principal` (`Type:name`), connected from `host` (the client address as text), do
    /// `operation` on the resource `(resource_type, resource_name)`?
    pub fn authorize(
        &self,
        principal: &str,
        host: &str,
        operation: AclOperation,
        resource_type: ResourceType,
        resource_name: &str,
    ) -> bool {
        self.decide(principal, host, operation, resource_type, resource_name)
            .is_allowed()
    }

    /// [`Self::authorize`] with the reason.
    pub fn decide(
        &self,
        principal: &str,
        host: &str,
        operation: AclOperation,
        resource_type: ResourceType,
        resource_name: &str,
    ) -> Decision {
        self.decide_with(
            &self.bindings,
            principal,
            host,
            operation,
            resource_type,
            resource_name,
        )
    }

    /// [`Self::decide`] over `bindings` instead of this authorizer's own (a broker keeps its
    /// `super.users` and `allow.everyone.if.no.acl.found` here and reads the bindings from
    /// the cluster metadata image).
    pub fn decide_with(
        &self,
        bindings: &BTreeSet<AclBinding>,
        principal: &str,
        host: &str,
        operation: AclOperation,
        resource_type: ResourceType,
        resource_name: &str,
    ) -> Decision {
        if self.is_super_user(principal) {
            return Decision::SuperUser;
        }
        let mut resource_has_acls = false;
        let mut allow = None;
        for b in of_type(bindings, resource_type) {
            if !b.pattern.applies_to(resource_type, resource_name) {
                continue;
            }
            resource_has_acls = true;
            let e = &b.entry;
            if (e.principal != principal && e.principal != WILDCARD_PRINCIPAL)
                || (e.host != host && e.host != WILDCARD)
                || !operation_covers(e, operation)
            {
                continue;
            }
            match e.permission {
                AclPermissionType::Deny => return Decision::Denied(b.clone()),
                AclPermissionType::Allow => {
                    allow.get_or_insert(b);
                }
                _ => {}
            }
        }
        match allow {
            Some(b) => Decision::Allowed(b.clone()),
            None if resource_has_acls => Decision::NoMatchingAllow,
            None => Decision::NoAcls {
                allowed: self.allow_if_no_acl,
            },
        }
    }

    /// May `principal` do `operation` on *some* resource of `resource_type` (Kafka's
    /// `authorizeByResourceType`, asked by InitProducerId without a transactional id: WRITE
    /// on some topic)? As Kafka's default implementation: allowed when a check of a made-up
    /// resource named `hardcode` is (a super user, or `allow.everyone.if.no.acl.found` with no
    /// ACL applying to it); denied by a matching literal `*` DENY; else allowed when some
    /// matching ALLOW (of exactly this operation or ALL) is not dominated by a DENY (a literal
    /// ALLOW by a DENY of the same name or of a prefix of it, a prefixed ALLOW by a prefixed
    /// DENY of a prefix of it).
    pub fn decide_by_type_with(
        &self,
        bindings: &BTreeSet<AclBinding>,
        principal: &str,
        host: &str,
        operation: AclOperation,
        resource_type: ResourceType,
    ) -> bool {
        if self
            .decide_with(
                bindings,
                principal,
                host,
                operation,
                resource_type,
                "hardcode",
            )
            .is_allowed()
        {
            return true;
        }
        let mut deny_literals = BTreeSet::new();
        let mut deny_prefixes = BTreeSet::new();
        let mut allow_literals = BTreeSet::new();
        let mut allow_prefixes = BTreeSet::new();
        for b in of_type(bindings, resource_type) {
            let e = &b.entry;
            if (e.principal != principal && e.principal != WILDCARD_PRINCIPAL)
                || (e.host != host && e.host != WILDCARD)
                || (e.operation != operation && e.operation != AclOperation::All)
            {
                continue;
            }
            let name = b.pattern.name.as_str();
            match (e.permission, b.pattern.pattern_type) {
                (AclPermissionType::Deny, PatternType::Literal) if name == WILDCARD => {
                    return false
                }
                (AclPermissionType::Deny, PatternType::Literal) => {
                    deny_literals.insert(name);
                }
                (AclPermissionType::Deny, PatternType::Prefixed) => {
                    deny_prefixes.insert(name);
                }
                (AclPermissionType::Allow, PatternType::Literal) => {
                    allow_literals.insert(name);
                }
                (AclPermissionType::Allow, PatternType::Prefixed) => {
                    allow_prefixes.insert(name);
                }
                _ => {}
            }
        }
        let prefix_denied = |name: &str| deny_prefixes.iter().any(|p| name.starts_with(p));
        allow_literals
            .iter()
            .any(|a| *a == WILDCARD || (!deny_literals.contains(a) && !prefix_denied(a)))
            || allow_prefixes.iter().any(|a| !prefix_denied(a))
    }
}

/// The bindings whose pattern has this resource type (contiguous in the set's order).
fn of_type(
    bindings: &BTreeSet<AclBinding>,
    resource_type: ResourceType,
) -> impl Iterator<Item = &AclBinding> {
    bindings
        .iter()
        .skip_while(move |b| b.pattern.resource_type < resource_type)
        .take_while(move |b| b.pattern.resource_type == resource_type)
}

/// Where an operation is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum On {
    /// The cluster resource (`kafka-cluster`).
    Cluster,
    /// Each resource of this type the request names (its topics, its group id, its
    /// transactional id); resources that fail are answered with an error (or left out), the
    /// others are served.
    Each(ResourceType),
    /// Some resource of this type, whatever its name: Kafka's `authorizeByResourceType` (allowed
    /// when some ALLOW of the principal on that type is not cancelled by a DENY):
    /// [`Authorizer::decide_by_type_with`].
    SomeOfType(ResourceType),
}

/// One operation on one resource (or set of resources).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Check {
    /// The operation.
    pub operation: AclOperation,
    /// Where.
    pub on: On,
}

/// What must be allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// This check.
    One(Check),
    /// Any of these checks, tried in order (Kafka tries the cluster-wide one first and falls
    /// back to the per-resource one without reporting CLUSTER_AUTHORIZATION_FAILED).
    AnyOf(&'static [Check]),
}

/// When a requirement applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Every request of the API.
    Always,
    /// The request has a transactional id (Produce with transactional records,
    /// InitProducerId with a transactional id).
    Transactional,
    /// The request has no transactional id.
    NotTransactional,
    /// Fetch from a follower replica (replica id >= 0).
    FromFollower,
    /// Fetch from a consumer.
    FromConsumer,
    /// Metadata would create topics that do not exist (auto-creation allowed by the request
    /// and by `auto.create.topics.enable`).
    AutoCreate,
    /// A broker (or broker-logger) config resource.
    BrokerConfigs,
    /// A topic config resource.
    TopicConfigs,
    /// FindCoordinator for a group.
    GroupCoordinator,
    /// FindCoordinator for a transactional id.
    TransactionCoordinator,
    /// Only decides how much of the answer is shown (configs of created topics, the
    /// authorized-operations bits, the name of a topic deleted by id); never fails the request.
    AnswerDetail,
}

/// One line of the [`required_acls`] table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiAcl {
    /// When it applies.
    pub when: When,
    /// What must be allowed.
    pub requirement: Requirement,
}

const fn one(when: When, operation: AclOperation, on: On) -> ApiAcl {
    ApiAcl {
        when,
        requirement: Requirement::One(Check { operation, on }),
    }
}

const fn any_of(when: When, checks: &'static [Check]) -> ApiAcl {
    ApiAcl {
        when,
        requirement: Requirement::AnyOf(checks),
    }
}

const fn check(operation: AclOperation, on: On) -> Check {
    Check { operation, on }
}

use AclOperation as Op;
use ResourceType as Rt;

const TOPIC: On = On::Each(Rt::Topic);
const GROUP: On = On::Each(Rt::Group);
const TXN_ID: On = On::Each(Rt::TransactionalId);
const CLUSTER: On = On::Cluster;

/// What Kafka's request handlers (`KafkaApis`, `ControllerApis`, `AclApis`, `ConfigHelper`) ask
/// the authorizer, per API the broker serves, plus the three ACL APIs it will serve. Kafka's
/// documentation has the same table ("Operations and Resources on Protocols"); where the two
/// differ, this follows the code: Produce no longer checks IDEMPOTENT_WRITE (Kafka 3.0,
/// KIP-679), and DescribeCluster answers without a check (DESCRIBE on the cluster only gates
/// the authorized-operations field).
const TABLE: &[(ApiKey, &[ApiAcl])] = &[
    (
        ApiKey::Produce,
        &[
            // Whole request fails with TRANSACTIONAL_ID_AUTHORIZATION_FAILED.
            one(When::Transactional, Op::Write, TXN_ID),
            // Per partition TOPIC_AUTHORIZATION_FAILED.
            one(When::Always, Op::Write, TOPIC),
        ],
    ),
    (
        ApiKey::Fetch,
        &[
            one(When::FromFollower, Op::ClusterAction, CLUSTER),
            one(When::FromConsumer, Op::Read, TOPIC),
        ],
    ),
    (
        ApiKey::ListOffsets,
        &[one(When::Always, Op::Describe, TOPIC)],
    ),
    (
        ApiKey::Metadata,
        &[
            // A topic the principal may not describe: TOPIC_AUTHORIZATION_FAILED when named,
            // left out of an all-topics answer.
            one(When::Always, Op::Describe, TOPIC),
            any_of(
                When::AutoCreate,
                &[check(Op::Create, CLUSTER), check(Op::Create, TOPIC)],
            ),
            one(When::AnswerDetail, Op::Describe, CLUSTER),
        ],
    ),
    (
        ApiKey::OffsetCommit,
        &[
            // Group first (GROUP_AUTHORIZATION_FAILED for the whole request), then topics.
            one(When::Always, Op::Read, GROUP),
            one(When::Always, Op::Read, TOPIC),
        ],
    ),
    (
        ApiKey::TxnOffsetCommit,
        &[
            // Each check fails the whole request (TRANSACTIONAL_ID_AUTHORIZATION_FAILED, then
            // GROUP_AUTHORIZATION_FAILED on every partition); then topics per partition.
            one(When::Always, Op::Write, TXN_ID),
            one(When::Always, Op::Read, GROUP),
            one(When::Always, Op::Read, TOPIC),
        ],
    ),
    (
        ApiKey::AddPartitionsToTxn,
        &[
            // Clients (v0-3): the transactional id, then each topic per partition. Brokers
            // (v4+, KIP-890 verification) need CLUSTER_ACTION instead.
            one(When::Always, Op::Write, TXN_ID),
            one(When::Always, Op::Write, TOPIC),
        ],
    ),
    (
        ApiKey::AddOffsetsToTxn,
        &[
            one(When::Always, Op::Write, TXN_ID),
            one(When::Always, Op::Read, GROUP),
        ],
    ),
    (ApiKey::EndTxn, &[one(When::Always, Op::Write, TXN_ID)]),
    (
        ApiKey::WriteTxnMarkers,
        &[one(When::Always, Op::ClusterAction, CLUSTER)],
    ),
    (
        ApiKey::DescribeTransactions,
        &[one(When::Always, Op::Describe, TXN_ID)],
    ),
    (
        // Ids the principal may not describe are left out of the answer.
        ApiKey::ListTransactions,
        &[one(When::AnswerDetail, Op::Describe, TXN_ID)],
    ),
    (
        ApiKey::OffsetFetch,
        &[
            one(When::Always, Op::Describe, GROUP),
            one(When::Always, Op::Describe, TOPIC),
        ],
    ),
    (
        ApiKey::FindCoordinator,
        &[
            one(When::GroupCoordinator, Op::Describe, GROUP),
            one(When::TransactionCoordinator, Op::Describe, TXN_ID),
        ],
    ),
    (ApiKey::JoinGroup, &[one(When::Always, Op::Read, GROUP)]),
    (ApiKey::Heartbeat, &[one(When::Always, Op::Read, GROUP)]),
    (ApiKey::LeaveGroup, &[one(When::Always, Op::Read, GROUP)]),
    (ApiKey::SyncGroup, &[one(When::Always, Op::Read, GROUP)]),
    (
        ApiKey::DescribeGroups,
        &[one(When::Always, Op::Describe, GROUP)],
    ),
    (
        ApiKey::ListGroups,
        // Cluster-wide, else group by group; groups not allowed are left out, no error.
        &[any_of(
            When::Always,
            &[check(Op::Describe, CLUSTER), check(Op::Describe, GROUP)],
        )],
    ),
    // Part of the handshake and of authentication: never authorized.
    (ApiKey::SaslHandshake, &[]),
    (ApiKey::ApiVersions, &[]),
    (ApiKey::SaslAuthenticate, &[]),
    (
        ApiKey::CreateTopics,
        &[
            any_of(
                When::Always,
                &[check(Op::Create, CLUSTER), check(Op::Create, TOPIC)],
            ),
            // Whether the created topic's configs are returned.
            one(When::AnswerDetail, Op::DescribeConfigs, TOPIC),
        ],
    ),
    (
        ApiKey::DeleteTopics,
        &[
            one(When::Always, Op::Delete, TOPIC),
            // A topic deleted by id: without DESCRIBE its name is not returned.
            one(When::AnswerDetail, Op::Describe, TOPIC),
        ],
    ),
    (
        ApiKey::DeleteRecords,
        &[one(When::Always, Op::Delete, TOPIC)],
    ),
    (
        ApiKey::InitProducerId,
        &[
            one(When::Transactional, Op::Write, TXN_ID),
            // CLUSTER_AUTHORIZATION_FAILED when neither holds.
            any_of(
                When::NotTransactional,
                &[
                    check(Op::IdempotentWrite, CLUSTER),
                    check(Op::Write, On::SomeOfType(Rt::Topic)),
                ],
            ),
        ],
    ),
    (
        ApiKey::OffsetForLeaderEpoch,
        &[any_of(
            When::Always,
            &[
                check(Op::ClusterAction, CLUSTER),
                check(Op::Describe, TOPIC),
            ],
        )],
    ),
    // The ACL APIs (not served yet).
    (
        ApiKey::DescribeAcls,
        &[one(When::Always, Op::Describe, CLUSTER)],
    ),
    (ApiKey::CreateAcls, &[one(When::Always, Op::Alter, CLUSTER)]),
    (ApiKey::DeleteAcls, &[one(When::Always, Op::Alter, CLUSTER)]),
    (
        ApiKey::DescribeUserScramCredentials,
        &[one(When::Always, Op::Describe, CLUSTER)],
    ),
    (
        ApiKey::AlterUserScramCredentials,
        &[one(When::Always, Op::Alter, CLUSTER)],
    ),
    (
        ApiKey::DescribeConfigs,
        &[
            one(When::BrokerConfigs, Op::DescribeConfigs, CLUSTER),
            one(When::TopicConfigs, Op::DescribeConfigs, TOPIC),
        ],
    ),
    // Denied: an empty answer, not an error.
    (
        ApiKey::DescribeLogDirs,
        &[one(When::Always, Op::Describe, CLUSTER)],
    ),
    (
        ApiKey::CreatePartitions,
        &[one(When::Always, Op::Alter, TOPIC)],
    ),
    (
        ApiKey::DeleteGroups,
        &[one(When::Always, Op::Delete, GROUP)],
    ),
    (
        ApiKey::IncrementalAlterConfigs,
        &[
            one(When::BrokerConfigs, Op::AlterConfigs, CLUSTER),
            one(When::TopicConfigs, Op::AlterConfigs, TOPIC),
        ],
    ),
    (
        ApiKey::OffsetDelete,
        &[
            one(When::Always, Op::Delete, GROUP),
            one(When::Always, Op::Read, TOPIC),
        ],
    ),
    (
        ApiKey::DescribeQuorum,
        &[one(When::Always, Op::Describe, CLUSTER)],
    ),
    (
        ApiKey::ElectLeaders,
        &[one(When::Always, Op::Alter, CLUSTER)],
    ),
    (
        ApiKey::DescribeCluster,
        &[one(When::AnswerDetail, Op::Describe, CLUSTER)],
    ),
    (
        ApiKey::DescribeProducers,
        &[one(When::Always, Op::Read, TOPIC)],
    ),
    (
        ApiKey::DescribeClientQuotas,
        &[one(When::Always, Op::DescribeConfigs, CLUSTER)],
    ),
    (
        ApiKey::AlterClientQuotas,
        &[one(When::Always, Op::AlterConfigs, CLUSTER)],
    ),
];

/// What Kafka authorizes for the API `api_key`: `Some(&[])` for an API that is never
/// authorized (ApiVersions, the SASL handshake), `None` for an API this table does not
/// describe (a caller must refuse it rather than serve it unchecked).
pub fn required_acls(api_key: i16) -> Option<&'static [ApiAcl]> {
    let key = ApiKey::try_from(api_key).ok()?;
    TABLE.iter().find(|(k, _)| *k == key).map(|(_, acls)| *acls)
}

/// The value of an authorized-operations field (KIP-430) that was not asked for:
/// `Integer.MIN_VALUE`, as Kafka sends it.
pub const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;

/// The operations that apply to a resource type (Kafka's `AclEntry.supportedOperations`),
/// the ones an authorized-operations bit set may name.
pub fn supported_operations(resource_type: ResourceType) -> &'static [AclOperation] {
    use AclOperation as Op;
    match resource_type {
        ResourceType::Topic => &[
            Op::Read,
            Op::Write,
            Op::Create,
            Op::Describe,
            Op::Delete,
            Op::Alter,
            Op::DescribeConfigs,
            Op::AlterConfigs,
        ],
        ResourceType::Group => &[Op::Read, Op::Describe, Op::Delete],
        ResourceType::Cluster => &[
            Op::Create,
            Op::ClusterAction,
            Op::DescribeConfigs,
            Op::AlterConfigs,
            Op::IdempotentWrite,
            Op::Alter,
            Op::Describe,
        ],
        ResourceType::TransactionalId => &[Op::Describe, Op::Write],
        ResourceType::DelegationToken => &[Op::Describe],
        ResourceType::User => &[Op::CreateTokens, Op::DescribeTokens],
        ResourceType::Unknown | ResourceType::Any => &[],
    }
}

/// The KIP-430 bit set of the operations of `resource_type` that `allowed` accepts: bit `c`
/// set for each allowed operation of code `c` (Kafka's `Utils.to32BitField`).
pub fn authorized_operations(
    resource_type: ResourceType,
    mut allowed: impl FnMut(AclOperation) -> bool,
) -> i32 {
    let mut bits = 0i32;
    for op in supported_operations(resource_type) {
        debug_assert!((0..31).contains(&op.code()));
        if allowed(*op) {
            bits |= 1 << op.code();
        }
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use AclPermissionType::{Allow, Deny};
    use PatternType::{Literal, Prefixed};

    fn binding(
        rt: ResourceType,
        name: &str,
        pt: PatternType,
        principal: &str,
        host: &str,
        op: AclOperation,
        perm: AclPermissionType,
    ) -> AclBinding {
        AclBinding::new(
            ResourcePattern::new(rt, name, pt),
            AccessControlEntry::new(principal, host, op, perm),
        )
    }

    fn topic_acl(
        name: &str,
        pt: PatternType,
        principal: &str,
        op: AclOperation,
        perm: AclPermissionType,
    ) -> AclBinding {
        binding(Rt::Topic, name, pt, principal, "*", op, perm)
    }

    fn authorizer(bindings: &[AclBinding]) -> Authorizer {
        let mut a = Authorizer::new(Vec::new(), false);
        for b in bindings {
            a.add(b.clone()).unwrap();
        }
        a
    }

    #[test]
    fn by_resource_type_follows_kafkas_default_rules() {
        use AclOperation::{Read, Write};
        let by_type = |a: &Authorizer, principal: &str| {
            a.decide_by_type_with(&a.bindings, principal, "10.0.0.1", Write, Rt::Topic)
        };
        // No ACL: allow.everyone.if.no.acl.found decides; a super user always may.
        assert!(!by_type(&Authorizer::new(Vec::new(), false), "User:a"));
        assert!(by_type(&Authorizer::new(Vec::new(), true), "User:a"));
        assert!(by_type(
            &Authorizer::new(vec!["User:root".to_string()], false),
            "User:root"
        ));
        // An ALLOW of another operation does not count; one of WRITE does.
        let a = authorizer(&[topic_acl("t", Literal, "User:a", Read, Allow)]);
        assert!(!by_type(&a, "User:a"));
        let a = authorizer(&[topic_acl("t", Literal, "User:a", Write, Allow)]);
        assert!(by_type(&a, "User:a"));
        assert!(!by_type(&a, "User:b"));
        // A DENY of the same name or of a prefix dominates; a DENY elsewhere does not.
        let a = authorizer(&[
            topic_acl("team.t", Literal, "User:a", Write, Allow),
            topic_acl("team.", Prefixed, "User:a", Write, Deny),
        ]);
        assert!(!by_type(&a, "User:a"));
        let a = authorizer(&[
            topic_acl("team.t", Literal, "User:a", Write, Allow),
            topic_acl("other", Literal, "User:a", Write, Deny),
        ]);
        assert!(by_type(&a, "User:a"));
        // A prefixed ALLOW under a shorter prefixed DENY is dominated; a literal `*` DENY
        // denies everything.
        let a = authorizer(&[
            topic_acl("team.a", Prefixed, "User:a", Write, Allow),
            topic_acl("team.", Prefixed, "User:a", Write, Deny),
        ]);
        assert!(!by_type(&a, "User:a"));
        let a = authorizer(&[
            topic_acl("t", Literal, "User:*", AclOperation::All, Allow),
            topic_acl("*", Literal, "User:a", Write, Deny),
        ]);
        assert!(!by_type(&a, "User:a"));
        assert!(by_type(&a, "User:b"));
    }

    const ALICE: &str = "User:alice";
    const BOB: &str = "User:bob";
    const HOST: &str = "10.0.0.1";

    fn may(a: &Authorizer, principal: &str, op: AclOperation, topic: &str) -> bool {
        a.authorize(principal, HOST, op, Rt::Topic, topic)
    }

    // ---- enums ----

    fn check_codes<T: Copy + PartialEq + fmt::Debug>(
        values: &[T],
        code: fn(T) -> i8,
        from_code: fn(i8) -> Result<T, UnknownCode>,
        name: fn(T) -> &'static str,
        parse: fn(&str) -> Result<T, UnknownName>,
    ) {
        // The codes are 0..n in order.
        for (i, &v) in values.iter().enumerate() {
            assert_eq!(i64::from(code(v)), i as i64, "{v:?}");
        }
        for c in i8::MIN..=i8::MAX {
            match from_code(c) {
                Ok(v) => assert_eq!(code(v), c),
                Err(e) => {
                    assert!(c < 0 || c as usize >= values.len(), "code {c} refused");
                    assert_eq!(e.code, c);
                }
            }
        }
        for &v in values {
            let n = name(v);
            assert_eq!(parse(n), Ok(v));
            assert_eq!(parse(&n.to_ascii_lowercase()), Ok(v));
            // PascalCase, as Kafka's CLI also accepts (`DescribeConfigs`).
            let pascal: String = n
                .split('_')
                .map(|w| w[..1].to_owned() + &w[1..].to_ascii_lowercase())
                .collect();
            assert_eq!(parse(&pascal), Ok(v), "{pascal}");
        }
        assert!(parse("nonsense").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn every_code_round_trips_and_unknown_codes_are_errors() {
        check_codes(
            ResourceType::VALUES,
            ResourceType::code,
            ResourceType::from_code,
            ResourceType::name,
            ResourceType::parse,
        );
        check_codes(
            PatternType::VALUES,
            PatternType::code,
            PatternType::from_code,
            PatternType::name,
            PatternType::parse,
        );
        check_codes(
            AclOperation::VALUES,
            AclOperation::code,
            AclOperation::from_code,
            AclOperation::name,
            AclOperation::parse,
        );
        check_codes(
            AclPermissionType::VALUES,
            AclPermissionType::code,
            AclPermissionType::from_code,
            AclPermissionType::name,
            AclPermissionType::parse,
        );
        assert_eq!(ResourceType::VALUES.len(), 8);
        assert_eq!(PatternType::VALUES.len(), 5);
        assert_eq!(AclOperation::VALUES.len(), 15);
        assert_eq!(AclPermissionType::VALUES.len(), 4);
        assert!(ResourceType::from_code(8).is_err());
        assert!(PatternType::from_code(5).is_err());
        assert!(AclOperation::from_code(15).is_err());
        assert!(AclPermissionType::from_code(-1).is_err());
    }

    #[test]
    fn names_are_kafkas() {
        assert_eq!(ResourceType::Topic.to_string(), "TOPIC");
        assert_eq!(
            ResourceType::TransactionalId.to_string(),
            "TRANSACTIONAL_ID"
        );
        assert_eq!(
            ResourceType::DelegationToken.to_string(),
            "DELEGATION_TOKEN"
        );
        assert_eq!(PatternType::Prefixed.to_string(), "PREFIXED");
        assert_eq!(
            AclOperation::DescribeConfigs.to_string(),
            "DESCRIBE_CONFIGS"
        );
        assert_eq!(
            AclOperation::IdempotentWrite.to_string(),
            "IDEMPOTENT_WRITE"
        );
        assert_eq!(AclOperation::ClusterAction.to_string(), "CLUSTER_ACTION");
        assert_eq!(AclPermissionType::Allow.to_string(), "ALLOW");
        assert_eq!("transactionalId".parse(), Ok(ResourceType::TransactionalId));
        assert_eq!("alter_configs".parse(), Ok(AclOperation::AlterConfigs));
        assert_eq!("Deny".parse(), Ok(AclPermissionType::Deny));
        assert_eq!(
            "topics".parse::<ResourceType>(),
            Err(UnknownName {
                kind: "resource type",
                name: "topics".into()
            })
        );
    }

    // ---- validation ----

    fn valid() -> AclBinding {
        topic_acl("orders", Literal, ALICE, Op::Read, Allow)
    }

    fn refused(b: AclBinding) -> String {
        let err = b.validate().expect_err("should be refused");
        assert_eq!(err.code, INVALID_REQUEST);
        err.message
    }

    #[test]
    fn a_binding_is_validated_as_kafka_does() {
        valid().validate().unwrap();
        for rt in [Rt::Unknown, Rt::Any] {
            let mut b = valid();
            b.pattern.resource_type = rt;
            assert!(refused(b).contains("resource type"));
        }
        for pt in [PatternType::Unknown, PatternType::Any, PatternType::Match] {
            let mut b = valid();
            b.pattern.pattern_type = pt;
            assert!(refused(b).contains(pt.name()));
        }
        for op in [Op::Unknown, Op::Any] {
            let mut b = valid();
            b.entry.operation = op;
            assert!(refused(b).contains("operation"));
        }
        for perm in [AclPermissionType::Unknown, AclPermissionType::Any] {
            let mut b = valid();
            b.entry.permission = perm;
            assert!(refused(b).contains("permission"));
        }
        let mut b = valid();
        b.pattern.name.clear();
        assert!(refused(b).contains("empty"));
        let mut b = valid();
        b.entry.principal = "alice".into();
        assert!(refused(b).contains("`alice`"));
        // CLUSTER must be named kafka-cluster.
        let cluster = binding(
            Rt::Cluster,
            "kafka-cluster",
            Literal,
            ALICE,
            "*",
            Op::Alter,
            Allow,
        );
        cluster.validate().unwrap();
        let mut b = cluster.clone();
        b.pattern.name = "*".into();
        assert!(refused(b).contains("kafka-cluster"));
        // Accepted as by Kafka: a prefixed `*`, every concrete type, any host.
        topic_acl("*", Prefixed, ALICE, Op::Read, Allow)
            .validate()
            .unwrap();
        topic_acl("*", Literal, WILDCARD_PRINCIPAL, Op::All, Deny)
            .validate()
            .unwrap();
        binding(
            Rt::User,
            "User:bob",
            Literal,
            ALICE,
            "::1",
            Op::CreateTokens,
            Allow,
        )
        .validate()
        .unwrap();
    }

    #[test]
    fn invalid_bindings_are_not_added() {
        let mut a = Authorizer::default();
        let mut b = valid();
        b.pattern.pattern_type = PatternType::Match;
        assert!(a.add(b).is_err());
        assert!(a.is_empty());
        assert_eq!(a.add(valid()), Ok(true));
        assert_eq!(a.add(valid()), Ok(false), "a duplicate is a no-op success");
        assert_eq!(a.len(), 1);
    }

    // ---- filters ----

    fn pfilter(rt: ResourceType, name: Option<&str>, pt: PatternType) -> ResourcePatternFilter {
        ResourcePatternFilter {
            resource_type: rt,
            name: name.map(str::to_owned),
            pattern_type: pt,
        }
    }

    fn pat(name: &str, pt: PatternType) -> ResourcePattern {
        ResourcePattern::new(Rt::Topic, name, pt)
    }

    #[test]
    fn pattern_filters_follow_kafka() {
        let all = [
            pat("foobar", Literal),
            pat("foo", Literal),
            pat("*", Literal),
            pat("foo", Prefixed),
            pat("foobar", Prefixed),
            pat("foobarx", Prefixed),
            pat("*", Prefixed),
            ResourcePattern::new(Rt::Group, "foobar", Literal),
        ];
        let selected = |f: &ResourcePatternFilter| -> Vec<&ResourcePattern> {
            all.iter().filter(|p| f.matches(p)).collect()
        };
        assert_eq!(selected(&ResourcePatternFilter::any()).len(), all.len());
        assert_eq!(
            selected(&pfilter(Rt::Topic, None, PatternType::Any)).len(),
            7
        );
        assert_eq!(
            selected(&pfilter(Rt::Group, None, PatternType::Any)),
            vec![&all[7]]
        );
        // MATCH: the patterns that apply to the topic "foobar".
        assert_eq!(
            selected(&pfilter(Rt::Topic, Some("foobar"), PatternType::Match)),
            vec![&all[0], &all[2], &all[3], &all[4]]
        );
        // ANY with a name: equal names only, any pattern type.
        assert_eq!(
            selected(&pfilter(Rt::Any, Some("foobar"), PatternType::Any)),
            vec![&all[0], &all[4], &all[7]]
        );
        // A concrete pattern type: that type and the equal name; `*` is only the wildcard.
        assert_eq!(
            selected(&pfilter(Rt::Topic, Some("*"), Literal)),
            vec![&all[2]]
        );
        assert_eq!(
            selected(&pfilter(Rt::Topic, Some("foo"), Prefixed)),
            vec![&all[3]]
        );
        assert_eq!(
            selected(&pfilter(Rt::Topic, None, Prefixed)),
            vec![&all[3], &all[4], &all[5], &all[6]]
        );
        // UNKNOWN selects nothing.
        assert!(selected(&pfilter(Rt::Topic, None, PatternType::Unknown)).is_empty());
        assert!(selected(&pfilter(Rt::Unknown, None, PatternType::Any)).is_empty());
    }

    #[test]
    fn entry_filters_compare_for_equality() {
        let e = AccessControlEntry::new(ALICE, HOST, Op::Read, Allow);
        let star = AccessControlEntry::new(WILDCARD_PRINCIPAL, "*", Op::Read, Allow);
        let mut f = AccessControlEntryFilter::any();
        assert!(f.matches(&e) && f.matches(&star));
        f.principal = Some(ALICE.into());
        assert!(f.matches(&e) && !f.matches(&star));
        f.principal = Some(WILDCARD_PRINCIPAL.into());
        assert!(
            !f.matches(&e) && f.matches(&star),
            "User:* is not a wildcard in a filter"
        );
        f.principal = None;
        f.host = Some("*".into());
        assert!(!f.matches(&e) && f.matches(&star));
        let mut f = AccessControlEntryFilter::any();
        f.operation = Op::Write;
        assert!(!f.matches(&e));
        f.operation = Op::Read;
        f.permission = Deny;
        assert!(!f.matches(&e));
        f.permission = Allow;
        assert!(f.matches(&e));
    }

    #[test]
    fn filters_with_unknown_fields_are_refused() {
        AclBindingFilter::any().validate().unwrap();
        let mut f = AclBindingFilter::any();
        f.pattern.resource_type = Rt::Unknown;
        assert_eq!(f.validate().unwrap_err().code, INVALID_REQUEST);
        let mut f = AclBindingFilter::any();
        f.pattern.pattern_type = PatternType::Unknown;
        assert!(f.validate().is_err());
        let mut f = AclBindingFilter::any();
        f.entry.operation = Op::Unknown;
        assert!(f.validate().is_err());
        let mut f = AclBindingFilter::any();
        f.entry.permission = AclPermissionType::Unknown;
        assert!(f.validate().is_err());

        let mut a = authorizer(&[valid()]);
        let mut bad = AclBindingFilter::any();
        bad.entry.operation = Op::Unknown;
        assert!(a.remove(&bad).is_err());
        assert!(a.describe(&bad).is_err());
        assert_eq!(a.len(), 1, "a refused filter removes nothing");
    }

    #[test]
    fn describe_and_remove_by_filter() {
        let read = topic_acl("orders", Literal, ALICE, Op::Read, Allow);
        let write = topic_acl("orders", Literal, BOB, Op::Write, Allow);
        let prefixed = topic_acl("ord", Prefixed, BOB, Op::Read, Deny);
        let group = binding(Rt::Group, "g", Literal, ALICE, "*", Op::Read, Allow);
        let mut a = authorizer(&[read.clone(), write.clone(), prefixed.clone(), group.clone()]);
        let mut bob = AclBindingFilter::any();
        bob.entry.principal = Some(BOB.into());
        let mut found = a.describe(&bob).unwrap();
        found.sort();
        let mut expected = vec![write.clone(), prefixed.clone()];
        expected.sort();
        assert_eq!(found, expected);
        let mut matching = AclBindingFilter::any();
        matching.pattern = pfilter(Rt::Topic, Some("orders"), PatternType::Match);
        assert_eq!(a.describe(&matching).unwrap().len(), 3);
        let mut removed = a.remove(&bob).unwrap();
        removed.sort();
        assert_eq!(removed, expected);
        assert_eq!(a.len(), 2);
        assert_eq!(a.remove(&bob).unwrap(), Vec::<AclBinding>::new());
        assert_eq!(a.remove(&AclBindingFilter::any()).unwrap().len(), 2);
        assert!(a.is_empty());
    }

    // ---- authorization ----

    #[test]
    fn no_acls_means_the_default() {
        let a = Authorizer::default();
        assert!(!may(&a, ALICE, Op::Read, "t"));
        assert_eq!(
            a.decide(ALICE, HOST, Op::Read, Rt::Topic, "t"),
            Decision::NoAcls { allowed: false }
        );
        let mut open = Authorizer::new(Vec::new(), true);
        assert!(may(&open, ALICE, Op::Read, "t"));
        // An ACL on another resource (or type) leaves the default in force...
        open.add(topic_acl("other", Literal, BOB, Op::Read, Allow))
            .unwrap();
        open.add(binding(Rt::Group, "t", Literal, BOB, "*", Op::Read, Allow))
            .unwrap();
        assert!(may(&open, ALICE, Op::Read, "t"));
        // ...but any ACL on the resource, for anyone, takes it away.
        open.add(topic_acl("t", Prefixed, BOB, Op::Read, Allow))
            .unwrap();
        assert!(!may(&open, ALICE, Op::Read, "t"));
        assert!(!may(&open, ALICE, Op::Read, "tx"));
        assert_eq!(
            open.decide(ALICE, HOST, Op::Read, Rt::Topic, "t"),
            Decision::NoMatchingAllow
        );
        assert!(may(&open, ALICE, Op::Read, "s"));
    }

    #[test]
    fn patterns_literal_wildcard_prefixed() {
        let a = authorizer(&[
            topic_acl("orders", Literal, ALICE, Op::Read, Allow),
            topic_acl("logs-", Prefixed, ALICE, Op::Write, Allow),
            topic_acl("*", Literal, BOB, Op::Describe, Allow),
            topic_acl("*", Prefixed, BOB, Op::Write, Allow),
        ]);
        assert!(may(&a, ALICE, Op::Read, "orders"));
        assert!(
            !may(&a, ALICE, Op::Read, "orders2"),
            "a literal is not a prefix"
        );
        assert!(!may(&a, ALICE, Op::Read, "order"));
        assert!(may(&a, ALICE, Op::Write, "logs-app"));
        assert!(may(&a, ALICE, Op::Write, "logs-"));
        assert!(!may(&a, ALICE, Op::Write, "logs"));
        assert!(may(&a, BOB, Op::Describe, "anything"));
        assert!(
            !may(&a, BOB, Op::Write, "anything"),
            "a prefixed * is no wildcard"
        );
        assert!(may(&a, BOB, Op::Write, "*star"));
        // Another type with the same name is another resource.
        assert!(!a.authorize(ALICE, HOST, Op::Read, Rt::Group, "orders"));
    }

    #[test]
    fn authorized_operations_bit_sets() {
        // Without an authorizer every supported operation: Kafka's values for a topic (READ..
        // ALTER_CONFIGS but not ALL, CLUSTER_ACTION, IDEMPOTENT_WRITE), a group and the cluster.
        let all = |rt| authorized_operations(rt, |_| true);
        assert_eq!(all(Rt::Topic), 0b1101_1111_1000);
        assert_eq!(all(Rt::Group), (1 << 3) | (1 << 6) | (1 << 8));
        assert_eq!(all(Rt::Cluster), 0b1_1111_1010_0000);
        assert_eq!(authorized_operations(Rt::Topic, |_| false), 0);
        // Implied operations come from the authorizer's rules: an ALLOW of READ and of
        // ALTER_CONFIGS on a topic gives READ, DESCRIBE, ALTER_CONFIGS and DESCRIBE_CONFIGS.
        let a = authorizer(&[
            binding(Rt::Topic, "t", Literal, ALICE, "*", Op::Read, Allow),
            binding(Rt::Topic, "t", Literal, ALICE, "*", Op::AlterConfigs, Allow),
        ]);
        let bits =
            authorized_operations(Rt::Topic, |op| a.authorize(ALICE, HOST, op, Rt::Topic, "t"));
        assert_eq!(bits, (1 << 3) | (1 << 8) | (1 << 10) | (1 << 11));
        assert_eq!(AUTHORIZED_OPERATIONS_OMITTED, -2147483648);
    }

    #[test]
    fn principals_and_hosts() {
        let a = authorizer(&[
            binding(
                Rt::Topic,
                "t",
                Literal,
                WILDCARD_PRINCIPAL,
                "*",
                Op::Read,
                Allow,
            ),
            binding(Rt::Topic, "u", Literal, ALICE, "10.0.0.9", Op::Read, Allow),
            binding(Rt::Topic, "v", Literal, "Group:*", "*", Op::Read, Allow),
        ]);
        assert!(may(&a, ALICE, Op::Read, "t"));
        assert!(
            may(&a, "Group:ops", Op::Read, "t"),
            "User:* matches any principal"
        );
        assert!(!may(&a, ALICE, Op::Read, "u"), "wrong host");
        assert!(a.authorize(ALICE, "10.0.0.9", Op::Read, Rt::Topic, "u"));
        assert!(!a.authorize(BOB, "10.0.0.9", Op::Read, Rt::Topic, "u"));
        assert!(
            !may(&a, "Group:ops", Op::Read, "v"),
            "only User:* is a wildcard"
        );
        assert!(may(&a, "Group:*", Op::Read, "v"));
    }

    #[test]
    fn deny_wins_over_allow() {
        let a = authorizer(&[
            topic_acl("*", Literal, WILDCARD_PRINCIPAL, Op::All, Allow),
            topic_acl("secret", Prefixed, ALICE, Op::Read, Deny),
            binding(
                Rt::Topic,
                "t",
                Literal,
                WILDCARD_PRINCIPAL,
                HOST,
                Op::Write,
                Deny,
            ),
        ]);
        assert!(may(&a, ALICE, Op::Read, "public"));
        assert!(!may(&a, ALICE, Op::Read, "secret-1"));
        assert!(matches!(
            a.decide(ALICE, HOST, Op::Read, Rt::Topic, "secret-1"),
            Decision::Denied(b) if b.entry.permission == Deny
        ));
        assert!(may(&a, BOB, Op::Read, "secret-1"));
        assert!(!may(&a, BOB, Op::Write, "t"));
        assert!(a.authorize(BOB, "10.0.0.2", Op::Write, Rt::Topic, "t"));
    }

    #[test]
    fn implied_operations() {
        for op in [Op::Read, Op::Write, Op::Delete, Op::Alter, Op::Describe] {
            let a = authorizer(&[topic_acl("t", Literal, ALICE, op, Allow)]);
            assert!(may(&a, ALICE, Op::Describe, "t"), "{op} implies DESCRIBE");
        }
        for op in [
            Op::Create,
            Op::AlterConfigs,
            Op::DescribeConfigs,
            Op::ClusterAction,
        ] {
            let a = authorizer(&[topic_acl("t", Literal, ALICE, op, Allow)]);
            assert!(
                !may(&a, ALICE, Op::Describe, "t"),
                "{op} does not imply DESCRIBE"
            );
        }
        let a = authorizer(&[topic_acl("t", Literal, ALICE, Op::AlterConfigs, Allow)]);
        assert!(may(&a, ALICE, Op::DescribeConfigs, "t"));
        assert!(!may(&a, ALICE, Op::Alter, "t"));
        let a = authorizer(&[topic_acl("t", Literal, ALICE, Op::Read, Allow)]);
        assert!(!may(&a, ALICE, Op::Write, "t"), "READ does not imply WRITE");
        assert!(!may(&a, ALICE, Op::DescribeConfigs, "t"));
        // Implication is for ALLOW only: a DENY of READ does not deny DESCRIBE.
        let a = authorizer(&[
            topic_acl("t", Literal, ALICE, Op::Write, Allow),
            topic_acl("t", Literal, ALICE, Op::Read, Deny),
        ]);
        assert!(may(&a, ALICE, Op::Describe, "t"));
        assert!(!may(&a, ALICE, Op::Read, "t"));
        // ALL allows everything; a DENY of ALL denies everything.
        let a = authorizer(&[topic_acl("t", Literal, ALICE, Op::All, Allow)]);
        for &op in Op::VALUES {
            if !matches!(op, Op::Unknown | Op::Any) {
                assert!(may(&a, ALICE, op, "t"), "ALL allows {op}");
            }
        }
        let a = authorizer(&[
            topic_acl("t", Literal, ALICE, Op::All, Allow),
            topic_acl("t", Literal, ALICE, Op::Read, Allow),
            topic_acl("t", Literal, ALICE, Op::All, Deny),
        ]);
        for &op in Op::VALUES {
            assert!(!may(&a, ALICE, op, "t"), "DENY ALL denies {op}");
        }
    }

    #[test]
    fn super_users_may_do_everything() {
        let mut a = Authorizer::from_config(" User:admin ; ;User:CN=a,O=b", false).unwrap();
        a.add(topic_acl("*", Literal, WILDCARD_PRINCIPAL, Op::All, Deny))
            .unwrap();
        assert!(a.is_super_user("User:CN=a,O=b"));
        assert!(may(&a, "User:admin", Op::Write, "t"));
        assert_eq!(
            a.decide("User:admin", HOST, Op::Write, Rt::Topic, "t"),
            Decision::SuperUser
        );
        assert!(a.authorize("User:admin", HOST, Op::Alter, Rt::Cluster, CLUSTER_NAME));
        assert!(!may(&a, "User:admin2", Op::Write, "t"));
        assert!(!may(&a, "admin", Op::Write, "t"));
        let err = Authorizer::from_config("User:a;bob", false).unwrap_err();
        assert_eq!(err.code, INVALID_REQUEST);
        assert!(err.message.contains("`bob`"));
        assert_eq!(parse_super_users("").unwrap(), BTreeSet::new());
    }

    // ---- the API table ----

    fn acls(key: ApiKey) -> &'static [ApiAcl] {
        required_acls(key as i16).unwrap_or_else(|| panic!("{key:?} missing"))
    }

    #[test]
    fn required_acls_table() {
        assert!(acls(ApiKey::Produce).contains(&one(When::Always, Op::Write, TOPIC)));
        assert!(acls(ApiKey::Produce).contains(&one(When::Transactional, Op::Write, TXN_ID)));
        assert!(
            !acls(ApiKey::Produce)
                .iter()
                .any(|a| a.requirement == Requirement::One(check(Op::IdempotentWrite, CLUSTER))),
            "Produce has not checked IDEMPOTENT_WRITE since Kafka 3.0"
        );
        assert!(acls(ApiKey::Fetch).contains(&one(When::FromFollower, Op::ClusterAction, CLUSTER)));
        let alternatives = |row: &ApiAcl| match row.requirement {
            Requirement::AnyOf(cs) => cs.to_vec(),
            Requirement::One(_) => panic!("not alternatives: {row:?}"),
        };
        let init = &acls(ApiKey::InitProducerId)[1];
        assert_eq!(init.when, When::NotTransactional);
        assert_eq!(
            alternatives(init),
            [
                check(Op::IdempotentWrite, CLUSTER),
                check(Op::Write, On::SomeOfType(Rt::Topic)),
            ]
        );
        assert_eq!(
            alternatives(&acls(ApiKey::CreateTopics)[0]),
            [check(Op::Create, CLUSTER), check(Op::Create, TOPIC)]
        );
        assert_eq!(
            acls(ApiKey::ElectLeaders),
            &[one(When::Always, Op::Alter, CLUSTER)]
        );
        assert_eq!(acls(ApiKey::ApiVersions), &[]);
        assert_eq!(acls(ApiKey::SaslAuthenticate), &[]);
        // Not described: the caller must not read this as "no check".
        assert_eq!(required_acls(ApiKey::AlterPartition as i16), None);
        assert_eq!(required_acls(-1), None);
        assert_eq!(required_acls(i16::MAX), None);
    }

    #[test]
    fn required_acls_table_is_well_formed() {
        let mut seen = BTreeSet::new();
        for (key, rows) in TABLE {
            assert!(seen.insert(*key as i16), "{key:?} twice");
            for row in *rows {
                let checks: &[Check] = match &row.requirement {
                    Requirement::One(c) => std::slice::from_ref(c),
                    Requirement::AnyOf(cs) => {
                        assert!(cs.len() >= 2, "{key:?}: AnyOf of one");
                        cs
                    }
                };
                for c in checks {
                    assert!(
                        !matches!(c.operation, Op::Unknown | Op::Any | Op::All),
                        "{key:?}"
                    );
                    if let On::Each(rt) | On::SomeOfType(rt) = c.on {
                        assert!(
                            !matches!(rt, Rt::Unknown | Rt::Any | Rt::Cluster),
                            "{key:?}: use On::Cluster"
                        );
                    }
                }
            }
        }
    }

    // ---- properties ----

    fn principal() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(ALICE.to_owned()),
            Just(BOB.to_owned()),
            Just(WILDCARD_PRINCIPAL.to_owned()),
            Just("Group:ops".to_owned()),
        ]
    }

    fn host() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("*".to_owned()),
            Just(HOST.to_owned()),
            Just("10.0.0.2".to_owned())
        ]
    }

    fn resource_type() -> impl Strategy<Value = ResourceType> {
        prop_oneof![Just(Rt::Topic), Just(Rt::Group), Just(Rt::TransactionalId)]
    }

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![4 => "[ab]{1,3}", 1 => Just("*".to_owned())]
    }

    fn operation() -> impl Strategy<Value = AclOperation> {
        proptest::sample::select(&Op::VALUES[2..])
    }

    fn permission() -> impl Strategy<Value = AclPermissionType> {
        prop_oneof![Just(Allow), Just(Deny)]
    }

    fn pattern_type() -> impl Strategy<Value = PatternType> {
        prop_oneof![Just(Literal), Just(Prefixed)]
    }

    fn any_binding() -> impl Strategy<Value = AclBinding> {
        (
            resource_type(),
            name(),
            pattern_type(),
            principal(),
            host(),
            operation(),
            permission(),
        )
            .prop_map(|(rt, n, pt, p, h, op, perm)| binding(rt, &n, pt, &p, &h, op, perm))
    }

    fn bindings() -> impl Strategy<Value = Vec<AclBinding>> {
        proptest::collection::vec(any_binding(), 0..24)
    }

    /// A request: principal, host, operation, resource type, resource name.
    fn request() -> impl Strategy<Value = (String, String, AclOperation, ResourceType, String)> {
        (
            prop_oneof![Just(ALICE.to_owned()), Just(BOB.to_owned())],
            prop_oneof![Just(HOST.to_owned()), Just("10.0.0.2".to_owned())],
            operation(),
            resource_type(),
            "[ab]{1,4}",
        )
    }

    proptest! {
        #[test]
        fn deny_always_beats_allow(
            others in bindings(),
            (p, h, op, rt, n) in request(),
            how in 0..3usize,
            cut in 1..4usize,
            star_principal: bool,
            star_host: bool,
            deny_all: bool,
        ) {
            // A DENY that applies to this request, and an ALLOW that applies exactly.
            let (pname, pt) = match how {
                0 => (n.clone(), Literal),
                1 => ("*".to_owned(), Literal),
                _ => (n[..cut.min(n.len())].to_owned(), Prefixed),
            };
            let deny = binding(
                rt,
                &pname,
                pt,
                if star_principal { WILDCARD_PRINCIPAL } else { &p },
                if star_host { "*" } else { &h },
                if deny_all { Op::All } else { op },
                Deny,
            );
            let allow = binding(rt, &n, Literal, &p, &h, op, Allow);
            let mut a = authorizer(&others);
            a.add(allow).unwrap();
            a.add(deny).unwrap();
            prop_assert!(!a.authorize(&p, &h, op, rt, &n));
            prop_assert!(matches!(a.decide(&p, &h, op, rt, &n), Decision::Denied(_)));
        }

        #[test]
        fn a_super_user_is_always_allowed(
            acls in bindings(),
            (_, h, op, rt, n) in request(),
            su in prop_oneof![Just(ALICE), Just(BOB)],
            open: bool,
        ) {
            let mut a = Authorizer::new([su.to_owned()], open);
            for b in acls {
                a.add(b).unwrap();
            }
            a.add(binding(rt, "*", Literal, WILDCARD_PRINCIPAL, "*", Op::All, Deny)).unwrap();
            prop_assert!(a.authorize(su, &h, op, rt, &n));
        }

        #[test]
        fn add_then_delete_with_the_exact_filter_restores(acls in bindings(), b in any_binding()) {
            let before = authorizer(&acls);
            prop_assume!(!before.bindings().any(|x| *x == b));
            let mut a = before.clone();
            prop_assert_eq!(a.add(b.clone()), Ok(true));
            prop_assert_eq!(a.len(), before.len() + 1);
            prop_assert_eq!(a.remove(&b.to_filter()), Ok(vec![b]));
            prop_assert_eq!(a, before);
        }

        #[test]
        fn match_filter_selects_the_patterns_that_apply(
            b in any_binding(),
            rt in resource_type(),
            n in "[ab*]{1,4}",
        ) {
            let f = pfilter(rt, Some(&n), PatternType::Match);
            prop_assert_eq!(f.matches(&b.pattern), b.pattern.applies_to(rt, &n));
        }

        #[test]
        fn the_default_decides_only_when_no_acl_applies(
            acls in bindings(),
            (p, h, op, rt, n) in request(),
        ) {
            let mut closed = Authorizer::new(Vec::new(), false);
            let mut open = Authorizer::new(Vec::new(), true);
            for b in acls {
                closed.add(b.clone()).unwrap();
                open.add(b).unwrap();
            }
            let applies = closed.bindings().any(|b| b.pattern.applies_to(rt, &n));
            let (c, o) = (closed.authorize(&p, &h, op, rt, &n), open.authorize(&p, &h, op, rt, &n));
            if applies {
                prop_assert_eq!(c, o);
            } else {
                prop_assert!(!c && o);
            }
        }
    }
}
