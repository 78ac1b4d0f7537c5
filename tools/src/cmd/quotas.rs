//! `sluicectl quotas`: DescribeClientQuotas and AlterClientQuotas, with kafka-configs.sh's
//! entity flags (`--entity-type users|clients` with `--entity-name N` or `--entity-default`,
//! and its `--user`/`--user-defaults`/`--client`/`--client-defaults` shorthands for a
//! user and client-id pair).

use std::collections::BTreeMap;
use std::io::Write;

use kafka_protocol::messages::{
    alter_client_quotas_request as alter, describe_client_quotas_request as describe,
    AlterClientQuotasRequest, DescribeClientQuotasRequest,
};
use kafka_protocol::protocol::StrBytes;
use serde::Serialize;

use crate::client::check;
use crate::output::{write_json, Format, Table};
use crate::{Ctx, UsageError};

/// DescribeClientQuotas match types.
const MATCH_EXACT: i8 = 0;
const MATCH_DEFAULT: i8 = 1;
const MATCH_SPECIFIED: i8 = 2;

/// The entity a `quotas` command addresses.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EntityArgs {
    /// Entity type: users or clients (kafka-configs.sh's --entity-type).
    #[arg(long = "entity-type", value_name = "users|clients")]
    entity_type: Option<String>,
    /// The entity's name.
    #[arg(long = "entity-name", conflicts_with = "entity_default")]
    entity_name: Option<String>,
    /// The default entity of the type (Kafka's <default>).
    #[arg(long = "entity-default")]
    entity_default: bool,
    /// A user (combine with --client/--client-defaults for a user and client-id pair).
    #[arg(long, conflicts_with_all = ["user_defaults", "entity_type"])]
    user: Option<String>,
    /// The default user.
    #[arg(long = "user-defaults", conflicts_with = "entity_type")]
    user_defaults: bool,
    /// A client id.
    #[arg(long, conflicts_with_all = ["client_defaults", "entity_type"])]
    client: Option<String>,
    /// The default client id.
    #[arg(long = "client-defaults", conflicts_with = "entity_type")]
    client_defaults: bool,
}

/// One component: `(entity type on the wire, None = any | Some(None) = default |
/// Some(Some(name)))`.
type Component = (&'static str, Option<Option<String>>);

impl EntityArgs {
    fn components(&self) -> Result<Vec<Component>, UsageError> {
        let mut out = Vec::new();
        if let Some(t) = &self.entity_type {
            let wire = match t.as_str() {
                "users" | "user" => "user",
                "clients" | "client" | "client-id" => "client-id",
                other => {
                    return Err(UsageError(format!(
                        "--entity-type must be users or clients, got '{other}'"
                    )))
                }
            };
            let name = match (&self.entity_name, self.entity_default) {
                (Some(n), _) => Some(Some(n.clone())),
                (None, true) => Some(None),
                (None, false) => None,
            };
            out.push((wire, name));
        } else if self.entity_name.is_some() || self.entity_default {
            return Err(UsageError(
                "--entity-name/--entity-default need --entity-type".into(),
            ));
        }
        if let Some(u) = &self.user {
            out.push(("user", Some(Some(u.clone()))));
        } else if self.user_defaults {
            out.push(("user", Some(None)));
        }
        if let Some(c) = &self.client {
            out.push(("client-id", Some(Some(c.clone()))));
        } else if self.client_defaults {
            out.push(("client-id", Some(None)));
        }
        Ok(out)
    }
}

/// The `quotas` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum QuotasCmd {
    /// Show client quotas: all, those of an entity type, or of one entity.
    Describe {
        #[command(flatten)]
        entity: EntityArgs,
    },
    /// Set or delete quotas of one entity.
    Alter {
        #[command(flatten)]
        entity: EntityArgs,
        /// Set quotas: --add-config producer_byte_rate=1048576,consumer_byte_rate=2097152.
        #[arg(long = "add-config", value_name = "K=V,...")]
        add: Vec<String>,
        /// Delete quotas: --delete-config producer_byte_rate,consumer_byte_rate.
        #[arg(long = "delete-config", value_name = "K,...")]
        delete: Vec<String>,
        /// Ask the broker to check the change without applying it.
        #[arg(long)]
        validate_only: bool,
    },
}

/// One described entity and its quotas.
#[derive(Debug, Serialize)]
struct QuotaEntry {
    /// Entity type to name (`null`: the default entity).
    entity: BTreeMap<String, Option<String>>,
    values: BTreeMap<String, f64>,
}

/// `user=alice,client-id=<default>`: the user first, as kafka-configs.sh prints entities.
fn entity_text(entity: &BTreeMap<String, Option<String>>) -> String {
    let mut parts: Vec<(&String, &Option<String>)> = entity.iter().collect();
    parts.sort_by_key(|(t, _)| t.as_str() != "user");
    parts
        .iter()
        .map(|(t, n)| format!("{t}={}", n.as_deref().unwrap_or("<default>")))
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_ops(add: &[String], delete: &[String]) -> Result<Vec<alter::OpData>, UsageError> {
    let mut ops = Vec::new();
    for item in add
        .iter()
        .flat_map(|s| s.split(','))
        .filter(|s| !s.is_empty())
    {
        let (k, v) = super::parse_kv(item.trim())?;
        let value: f64 = v
            .parse()
            .map_err(|_| UsageError(format!("quota {k} needs a number, got '{v}'")))?;
        ops.push(
            alter::OpData::default()
                .with_key(StrBytes::from_string(k))
                .with_value(value)
                .with_remove(false),
        );
    }
    for k in delete.iter().flat_map(|s| s.split(',')).map(str::trim) {
        if k.is_empty() {
            continue;
        }
        ops.push(
            alter::OpData::default()
                .with_key(StrBytes::from_string(k.to_string()))
                .with_remove(true),
        );
    }
    if ops.is_empty() {
        return Err(UsageError(
            "quotas alter needs --add-config k=v or --delete-config k".into(),
        ));
    }
    Ok(ops)
}

/// Runs a `quotas` subcommand.
pub fn run(ctx: &Ctx, cmd: QuotasCmd, out: &mut impl Write) -> anyhow::Result<()> {
    match cmd {
        QuotasCmd::Describe { entity } => {
            let components = entity.components()?;
            // A whole entity named: only it; a type alone: every entity of that type.
            let strict = components.iter().all(|(_, n)| n.is_some()) && !components.is_empty();
            let req = DescribeClientQuotasRequest::default()
                .with_strict(strict)
                .with_components(
                    components
                        .iter()
                        .map(|(t, n)| {
                            let (match_type, name) = match n {
                                Some(Some(n)) => (MATCH_EXACT, Some(n.clone())),
                                Some(None) => (MATCH_DEFAULT, None),
                                None => (MATCH_SPECIFIED, None),
                            };
                            describe::ComponentData::default()
                                .with_entity_type(StrBytes::from_static_str(t))
                                .with_match_type(match_type)
                                .with_match(name.map(StrBytes::from_string))
                        })
                        .collect(),
                );
            let mut cluster = ctx.cluster()?;
            let resp = cluster.any().call(&req, 1)?;
            check(
                resp.error_code,
                || "describing client quotas".to_string(),
                resp.error_message.as_deref(),
            )?;
            let entries: Vec<QuotaEntry> = resp
                .entries
                .unwrap_or_default()
                .iter()
                .map(|e| QuotaEntry {
                    entity: e
                        .entity
                        .iter()
                        .map(|c| {
                            (
                                c.entity_type.to_string(),
                                c.entity_name.as_ref().map(|n| n.to_string()),
                            )
                        })
                        .collect(),
                    values: e
                        .values
                        .iter()
                        .map(|v| (v.key.to_string(), v.value))
                        .collect(),
                })
                .collect();
            match ctx.format {
                Format::Json => write_json(out, &entries)?,
                Format::Table => {
                    let mut t = Table::new(&["ENTITY", "QUOTA", "VALUE"]);
                    for e in &entries {
                        for (k, v) in &e.values {
                            t.row(vec![entity_text(&e.entity), k.clone(), v.to_string()]);
                        }
                    }
                    t.write(out)?;
                }
            }
        }
        QuotasCmd::Alter {
            entity,
            add,
            delete,
            validate_only,
        } => {
            let components = entity.components()?;
            if components.is_empty() || components.iter().any(|(_, n)| n.is_none()) {
                return Err(UsageError(
                    "quotas alter needs an entity: --entity-type with --entity-name or \
                     --entity-default (or --user/--user-defaults, --client/--client-defaults)"
                        .into(),
                )
                .into());
            }
            let ops = parse_ops(&add, &delete)?;
            let wire_entity: Vec<alter::EntityData> = components
                .iter()
                .map(|(t, n)| {
                    alter::EntityData::default()
                        .with_entity_type(StrBytes::from_static_str(t))
                        .with_entity_name(n.clone().flatten().map(StrBytes::from_string))
                })
                .collect();
            let req = AlterClientQuotasRequest::default()
                .with_validate_only(validate_only)
                .with_entries(vec![alter::EntryData::default()
                    .with_entity(wire_entity)
                    .with_ops(ops)]);
            let mut cluster = ctx.cluster()?;
            let resp = cluster.any().call(&req, 1)?;
            let entity: BTreeMap<String, Option<String>> = components
                .iter()
                .map(|(t, n)| (t.to_string(), n.clone().flatten()))
                .collect();
            let what = entity_text(&entity);
            for r in &resp.entries {
                check(
                    r.error_code,
                    || format!("altering client quotas of {what}"),
                    r.error_message.as_deref(),
                )?;
            }
            match ctx.format {
                Format::Json => write_json(
                    out,
                    &serde_json::json!({
                        "entity": entity,
                        "added": add,
                        "deleted": delete,
                        "validate_only": validate_only,
                    }),
                )?,
                Format::Table if validate_only => {
                    writeln!(out, "Validated client quotas of {what} (nothing changed).")?
                }
                Format::Table => writeln!(out, "Altered client quotas of {what}.")?,
            }
        }
    }
    Ok(())
}
