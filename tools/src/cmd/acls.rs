//! `sluicectl acls`: CreateAcls, DescribeAcls and DeleteAcls with `kafka-acls.sh`'s flags
//! (`--allow-principal`/`--deny-principal`, `--operation`, `--topic`/`--group`/`--cluster`/
//! `--transactional-id`, `--resource-pattern-type`, `--host`).

use std::io::Write;

use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
use kafka_protocol::messages::{CreateAclsRequest, DeleteAclsRequest, DescribeAclsRequest};
use kafka_protocol::protocol::StrBytes;
use serde::Serialize;
use sluice::security::acl::{
    AclOperation, AclPermissionType, PatternType, ResourceType, CLUSTER_NAME, WILDCARD,
};

use crate::client::check;
use crate::output::{write_json, Format, Table};
use crate::{Ctx, UsageError};

/// The flags shared by the three subcommands.
#[derive(Debug, clap::Args)]
pub struct AclFlags {
    /// Principal given ALLOW, repeatable (User:alice, User:*).
    #[arg(long = "allow-principal", value_name = "PRINCIPAL")]
    allow_principal: Vec<String>,
    /// Principal given DENY, repeatable.
    #[arg(long = "deny-principal", value_name = "PRINCIPAL")]
    deny_principal: Vec<String>,
    /// Operation, repeatable: Read, Write, Create, Delete, Alter, Describe, ClusterAction,
    /// DescribeConfigs, AlterConfigs, IdempotentWrite, All.
    #[arg(long = "operation", value_name = "OP")]
    operation: Vec<String>,
    /// Topic, repeatable (`*` for every topic).
    #[arg(long)]
    topic: Vec<String>,
    /// Consumer group, repeatable.
    #[arg(long)]
    group: Vec<String>,
    /// The cluster resource.
    #[arg(long)]
    cluster: bool,
    /// Transactional id, repeatable.
    #[arg(long = "transactional-id", value_name = "ID")]
    transactional_id: Vec<String>,
    /// literal or prefixed (list and delete also take any and match; default: literal with a
    /// resource named, else any).
    #[arg(long = "resource-pattern-type", value_name = "TYPE")]
    resource_pattern_type: Option<String>,
    /// Host the ACL applies to (default `*`: every host).
    #[arg(long)]
    host: Option<String>,
}

/// The `acls` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum AclsCmd {
    /// The ACLs that match the flags (every ACL without flags).
    List {
        #[command(flatten)]
        flags: AclFlags,
    },
    /// Add an ACL for each principal x operation x resource given.
    Create {
        #[command(flatten)]
        flags: AclFlags,
    },
    /// Remove the ACLs that match the flags (a resource or a principal is required).
    Delete {
        #[command(flatten)]
        flags: AclFlags,
    },
}

/// One ACL binding, as printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Acl {
    resource_type: String,
    resource_name: String,
    pattern_type: String,
    principal: String,
    host: String,
    operation: String,
    permission: String,
}

fn usage(msg: impl Into<String>) -> UsageError {
    UsageError(msg.into())
}

impl AclFlags {
    fn resources(&self) -> Vec<(ResourceType, String)> {
        let mut out = Vec::new();
        out.extend(self.topic.iter().map(|t| (ResourceType::Topic, t.clone())));
        out.extend(self.group.iter().map(|g| (ResourceType::Group, g.clone())));
        if self.cluster {
            out.push((ResourceType::Cluster, CLUSTER_NAME.to_string()));
        }
        out.extend(
            self.transactional_id
                .iter()
                .map(|t| (ResourceType::TransactionalId, t.clone())),
        );
        out
    }

    fn principals(&self) -> Vec<(String, AclPermissionType)> {
        self.allow_principal
            .iter()
            .map(|p| (p.clone(), AclPermissionType::Allow))
            .chain(
                self.deny_principal
                    .iter()
                    .map(|p| (p.clone(), AclPermissionType::Deny)),
            )
            .collect()
    }

    fn operations(&self) -> Result<Vec<AclOperation>, UsageError> {
        self.operation
            .iter()
            .map(|o| {
                AclOperation::parse(o)
                    .ok()
                    .filter(|op| !matches!(op, AclOperation::Any | AclOperation::Unknown))
                    .ok_or_else(|| usage(format!("unknown operation '{o}'")))
            })
            .collect()
    }

    fn pattern_type(&self, filter: bool) -> Result<PatternType, UsageError> {
        let default = if filter && self.resources().is_empty() {
            PatternType::Any
        } else {
            PatternType::Literal
        };
        let Some(given) = &self.resource_pattern_type else {
            return Ok(default);
        };
        let pt = PatternType::parse(given)
            .map_err(|_| usage(format!("unknown resource pattern type '{given}'")))?;
        match pt {
            PatternType::Literal | PatternType::Prefixed => Ok(pt),
            PatternType::Any | PatternType::Match if filter => Ok(pt),
            _ => Err(usage(format!(
                "--resource-pattern-type {given}: use literal or prefixed{}",
                if filter { ", any or match" } else { "" }
            ))),
        }
    }

    /// The DescribeAcls/DeleteAcls filters: one per resource x principal x operation, with
    /// ANY for what the flags leave out.
    fn filters(&self) -> Result<Vec<Filter>, UsageError> {
        let pattern_type = self.pattern_type(true)?;
        let resources: Vec<(ResourceType, Option<String>)> = if self.resources().is_empty() {
            vec![(ResourceType::Any, None)]
        } else {
            self.resources()
                .into_iter()
                .map(|(t, n)| (t, Some(n)))
                .collect()
        };
        let principals: Vec<(Option<String>, AclPermissionType)> = if self.principals().is_empty() {
            vec![(None, AclPermissionType::Any)]
        } else {
            self.principals()
                .into_iter()
                .map(|(p, perm)| (Some(p), perm))
                .collect()
        };
        let operations = match self.operations()? {
            ops if ops.is_empty() => vec![AclOperation::Any],
            ops => ops,
        };
        let mut out = Vec::new();
        for (rt, name) in &resources {
            for (principal, perm) in &principals {
                for op in &operations {
                    out.push(Filter {
                        resource_type: *rt,
                        name: name.clone(),
                        pattern_type,
                        principal: principal.clone(),
                        host: self.host.clone(),
                        operation: *op,
                        permission: *perm,
                    });
                }
            }
        }
        Ok(out)
    }
}

/// One filter of DescribeAcls or DeleteAcls.
#[derive(Debug, Clone)]
struct Filter {
    resource_type: ResourceType,
    name: Option<String>,
    pattern_type: PatternType,
    principal: Option<String>,
    host: Option<String>,
    operation: AclOperation,
    permission: AclPermissionType,
}

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn print(ctx: &Ctx, acls: &[Acl], out: &mut impl Write) -> anyhow::Result<()> {
    match ctx.format {
        Format::Json => write_json(out, &acls)?,
        Format::Table => {
            let mut t = Table::new(&[
                "RESOURCE-TYPE",
                "NAME",
                "PATTERN",
                "PRINCIPAL",
                "HOST",
                "OPERATION",
                "PERMISSION",
            ]);
            for a in acls {
                t.row(vec![
                    a.resource_type.clone(),
                    a.resource_name.clone(),
                    a.pattern_type.clone(),
                    a.principal.clone(),
                    a.host.clone(),
                    a.operation.clone(),
                    a.permission.clone(),
                ]);
            }
            t.write(out)?;
        }
    }
    Ok(())
}

fn name_of<T: Copy>(
    code: i8,
    parse: fn(i8) -> Result<T, sluice::security::acl::UnknownCode>,
    name: fn(T) -> &'static str,
) -> String {
    parse(code).map_or_else(|_| format!("UNKNOWN({code})"), |v| name(v).to_string())
}

fn list(ctx: &Ctx, flags: &AclFlags) -> anyhow::Result<Vec<Acl>> {
    let mut cluster = ctx.cluster()?;
    let mut acls: Vec<Acl> = Vec::new();
    for f in flags.filters()? {
        let req = DescribeAclsRequest::default()
            .with_resource_type_filter(f.resource_type.code())
            .with_resource_name_filter(f.name.as_deref().map(sb))
            .with_pattern_type_filter(f.pattern_type.code())
            .with_principal_filter(f.principal.as_deref().map(sb))
            .with_host_filter(f.host.as_deref().map(sb))
            .with_operation(f.operation.code())
            .with_permission_type(f.permission.code());
        let resp = cluster.any().call(&req, 3)?;
        check(
            resp.error_code,
            || "describing ACLs".into(),
            resp.error_message.as_deref(),
        )?;
        for r in &resp.resources {
            for a in &r.acls {
                let acl = Acl {
                    resource_type: name_of(
                        r.resource_type,
                        ResourceType::from_code,
                        ResourceType::name,
                    ),
                    resource_name: r.resource_name.to_string(),
                    pattern_type: name_of(
                        r.pattern_type,
                        PatternType::from_code,
                        PatternType::name,
                    ),
                    principal: a.principal.to_string(),
                    host: a.host.to_string(),
                    operation: name_of(a.operation, AclOperation::from_code, AclOperation::name),
                    permission: name_of(
                        a.permission_type,
                        AclPermissionType::from_code,
                        AclPermissionType::name,
                    ),
                };
                if !acls.contains(&acl) {
                    acls.push(acl);
                }
            }
        }
    }
    acls.sort_by(|a, b| {
        (
            &a.resource_type,
            &a.resource_name,
            &a.principal,
            &a.operation,
        )
            .cmp(&(
                &b.resource_type,
                &b.resource_name,
                &b.principal,
                &b.operation,
            ))
    });
    Ok(acls)
}

/// Runs an `acls` subcommand.
pub fn run(ctx: &Ctx, cmd: AclsCmd, out: &mut impl Write) -> anyhow::Result<()> {
    match cmd {
        AclsCmd::List { flags } => {
            let acls = list(ctx, &flags)?;
            print(ctx, &acls, out)?;
        }
        AclsCmd::Create { flags } => {
            let resources = flags.resources();
            let principals = flags.principals();
            let operations = flags.operations()?;
            if resources.is_empty() {
                return Err(usage(
                    "acls create needs a resource: --topic, --group, --cluster or --transactional-id",
                )
                .into());
            }
            if principals.is_empty() {
                return Err(
                    usage("acls create needs --allow-principal or --deny-principal").into(),
                );
            }
            if operations.is_empty() {
                return Err(usage("acls create needs --operation").into());
            }
            let pattern_type = flags.pattern_type(false)?;
            let host = flags.host.clone().unwrap_or_else(|| WILDCARD.to_string());
            let mut created = Vec::new();
            let mut creations = Vec::new();
            for (rt, name) in &resources {
                for (principal, perm) in &principals {
                    for op in &operations {
                        creations.push(
                            AclCreation::default()
                                .with_resource_type(rt.code())
                                .with_resource_name(sb(name))
                                .with_resource_pattern_type(pattern_type.code())
                                .with_principal(sb(principal))
                                .with_host(sb(&host))
                                .with_operation(op.code())
                                .with_permission_type(perm.code()),
                        );
                        created.push(Acl {
                            resource_type: rt.name().to_string(),
                            resource_name: name.clone(),
                            pattern_type: pattern_type.name().to_string(),
                            principal: principal.clone(),
                            host: host.clone(),
                            operation: op.name().to_string(),
                            permission: perm.name().to_string(),
                        });
                    }
                }
            }
            let mut cluster = ctx.cluster()?;
            let resp = cluster
                .any()
                .call(&CreateAclsRequest::default().with_creations(creations), 3)?;
            for (r, acl) in resp.results.iter().zip(&created) {
                check(
                    r.error_code,
                    || {
                        format!(
                            "creating {} {} for {} on {} '{}'",
                            acl.permission,
                            acl.operation,
                            acl.principal,
                            acl.resource_type,
                            acl.resource_name
                        )
                    },
                    r.error_message.as_deref(),
                )?;
            }
            if resp.results.len() != created.len() {
                anyhow::bail!(
                    "CreateAcls answered {} results for {} ACLs",
                    resp.results.len(),
                    created.len()
                );
            }
            match ctx.format {
                Format::Json => write_json(out, &created)?,
                Format::Table => {
                    writeln!(out, "Created {} ACL(s):", created.len())?;
                    print(ctx, &created, out)?;
                }
            }
        }
        AclsCmd::Delete { flags } => {
            if flags.resources().is_empty() && flags.principals().is_empty() {
                return Err(usage(
                    "acls delete needs a resource (--topic, --group, --cluster, --transactional-id) or a principal",
                )
                .into());
            }
            let filters: Vec<DeleteAclsFilter> = flags
                .filters()?
                .into_iter()
                .map(|f| {
                    DeleteAclsFilter::default()
                        .with_resource_type_filter(f.resource_type.code())
                        .with_resource_name_filter(f.name.as_deref().map(sb))
                        .with_pattern_type_filter(f.pattern_type.code())
                        .with_principal_filter(f.principal.as_deref().map(sb))
                        .with_host_filter(f.host.as_deref().map(sb))
                        .with_operation(f.operation.code())
                        .with_permission_type(f.permission.code())
                })
                .collect();
            let mut cluster = ctx.cluster()?;
            let resp = cluster
                .any()
                .call(&DeleteAclsRequest::default().with_filters(filters), 3)?;
            let mut deleted: Vec<Acl> = Vec::new();
            for r in &resp.filter_results {
                check(
                    r.error_code,
                    || "deleting ACLs".into(),
                    r.error_message.as_deref(),
                )?;
                for m in &r.matching_acls {
                    check(
                        m.error_code,
                        || "deleting an ACL".into(),
                        m.error_message.as_deref(),
                    )?;
                    let acl = Acl {
                        resource_type: name_of(
                            m.resource_type,
                            ResourceType::from_code,
                            ResourceType::name,
                        ),
                        resource_name: m.resource_name.to_string(),
                        pattern_type: name_of(
                            m.pattern_type,
                            PatternType::from_code,
                            PatternType::name,
                        ),
                        principal: m.principal.to_string(),
                        host: m.host.to_string(),
                        operation: name_of(
                            m.operation,
                            AclOperation::from_code,
                            AclOperation::name,
                        ),
                        permission: name_of(
                            m.permission_type,
                            AclPermissionType::from_code,
                            AclPermissionType::name,
                        ),
                    };
                    if !deleted.contains(&acl) {
                        deleted.push(acl);
                    }
                }
            }
            match ctx.format {
                Format::Json => write_json(out, &deleted)?,
                Format::Table => {
                    writeln!(out, "Deleted {} ACL(s):", deleted.len())?;
                    print(ctx, &deleted, out)?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(subcommand)]
        cmd: AclsCmd,
    }

    fn flags(args: &[&str]) -> AclFlags {
        let mut argv = vec!["t", "list"];
        argv.extend_from_slice(args);
        match T::parse_from(argv).cmd {
            AclsCmd::List { flags } => flags,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn filters_cover_every_combination_and_default_to_any() {
        let all = flags(&[]).filters().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].resource_type, ResourceType::Any);
        assert_eq!(all[0].pattern_type, PatternType::Any);
        assert_eq!(all[0].operation, AclOperation::Any);
        let f = flags(&[
            "--topic",
            "a",
            "--group",
            "g",
            "--allow-principal",
            "User:x",
            "--deny-principal",
            "User:y",
            "--operation",
            "read",
            "--operation",
            "AlterConfigs",
        ])
        .filters()
        .unwrap();
        assert_eq!(f.len(), 2 * 2 * 2);
        assert!(f.iter().all(|f| f.pattern_type == PatternType::Literal));
        assert!(f.iter().any(|f| f.operation == AclOperation::AlterConfigs
            && f.permission == AclPermissionType::Deny
            && f.resource_type == ResourceType::Group));
        assert!(flags(&["--operation", "fly"]).filters().is_err());
        assert!(flags(&["--resource-pattern-type", "weird"])
            .filters()
            .is_err());
        let p = flags(&["--topic", "a", "--resource-pattern-type", "prefixed"]);
        assert_eq!(p.pattern_type(false).unwrap(), PatternType::Prefixed);
        let m = flags(&["--resource-pattern-type", "match"]);
        assert!(
            m.pattern_type(false).is_err(),
            "create takes literal or prefixed only"
        );
        assert_eq!(m.pattern_type(true).unwrap(), PatternType::Match);
    }
}
