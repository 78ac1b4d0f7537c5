//! `sluicectl configs`: DescribeConfigs and IncrementalAlterConfigs for topics and brokers.

use std::io::Write;

use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::{DescribeConfigsRequest, IncrementalAlterConfigsRequest};
use kafka_protocol::protocol::StrBytes;
use serde::Serialize;

use super::parse_kv;
use crate::client::{check, Cluster, Connection};
use crate::output::{write_json, Format, Table};
use crate::{Ctx, UsageError};

/// Kafka's ConfigResource type of a topic.
const RESOURCE_TOPIC: i8 = 2;
/// Kafka's ConfigResource type of a broker.
const RESOURCE_BROKER: i8 = 4;
/// IncrementalAlterConfigs operations.
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;

/// Which resource a `configs` command addresses.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct Target {
    /// A topic.
    #[arg(long)]
    topic: Option<String>,
    /// A broker id.
    #[arg(long)]
    broker: Option<i32>,
}

/// The `configs` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ConfigsCmd {
    /// Show the configs of a topic or broker with their sources.
    Describe {
        #[command(flatten)]
        target: Target,
    },
    /// Set or delete (revert to default) configs of a topic or broker.
    Alter {
        #[command(flatten)]
        target: Target,
        /// Set a config, repeatable: --set retention.ms=60000.
        #[arg(long = "set", value_name = "K=V")]
        set: Vec<String>,
        /// Delete a config override, repeatable: --delete retention.ms.
        #[arg(long = "delete", value_name = "K")]
        delete: Vec<String>,
    },
}

/// One described config entry.
#[derive(Debug, Serialize)]
struct ConfigEntry {
    name: String,
    value: Option<String>,
    source: &'static str,
    read_only: bool,
    sensitive: bool,
}

fn source_name(s: i8) -> &'static str {
    match s {
        1 => "DYNAMIC_TOPIC_CONFIG",
        2 => "DYNAMIC_BROKER_CONFIG",
        3 => "DYNAMIC_DEFAULT_BROKER_CONFIG",
        4 => "STATIC_BROKER_CONFIG",
        5 => "DEFAULT_CONFIG",
        6 => "DYNAMIC_BROKER_LOGGER_CONFIG",
        7 => "CLIENT_METRICS_CONFIG",
        8 => "GROUP_CONFIG",
        _ => "UNKNOWN",
    }
}

impl Target {
    fn resource(&self) -> (i8, String, String) {
        match (&self.topic, self.broker) {
            (Some(t), _) => (RESOURCE_TOPIC, t.clone(), format!("topic '{t}'")),
            (None, Some(b)) => (RESOURCE_BROKER, b.to_string(), format!("broker {b}")),
            // clap's group makes exactly one present.
            (None, None) => (RESOURCE_TOPIC, String::new(), "nothing".into()),
        }
    }

    /// Broker configs are asked of that broker, as Kafka requires; topic configs of any.
    fn conn<'a>(&self, cluster: &'a mut Cluster) -> anyhow::Result<&'a mut Connection> {
        Ok(match self.broker {
            Some(b) => cluster.node(b)?,
            None => cluster.any(),
        })
    }
}

/// Runs a `configs` subcommand.
pub fn run(ctx: &Ctx, cmd: ConfigsCmd, out: &mut impl Write) -> anyhow::Result<()> {
    match cmd {
        ConfigsCmd::Describe { target } => {
            let (rtype, rname, what) = target.resource();
            let mut cluster = ctx.cluster()?;
            let req = DescribeConfigsRequest::default().with_resources(vec![
                DescribeConfigsResource::default()
                    .with_resource_type(rtype)
                    .with_resource_name(StrBytes::from_string(rname)),
            ]);
            let resp = target.conn(&mut cluster)?.call(&req, 4)?;
            let r = resp
                .results
                .first()
                .ok_or_else(|| anyhow::anyhow!("DescribeConfigs answered nothing for {what}"))?;
            check(
                r.error_code,
                || format!("describing configs of {what}"),
                r.error_message.as_deref(),
            )?;
            let mut entries: Vec<ConfigEntry> = r
                .configs
                .iter()
                .map(|c| ConfigEntry {
                    name: c.name.to_string(),
                    value: if c.is_sensitive {
                        None
                    } else {
                        c.value.as_ref().map(|v| v.to_string())
                    },
                    source: source_name(c.config_source),
                    read_only: c.read_only,
                    sensitive: c.is_sensitive,
                })
                .collect();
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            match ctx.format {
                Format::Json => write_json(out, &entries)?,
                Format::Table => {
                    let mut t = Table::new(&["NAME", "VALUE", "SOURCE", "READ-ONLY"]);
                    for e in &entries {
                        t.row(vec![
                            e.name.clone(),
                            if e.sensitive {
                                "(sensitive)".into()
                            } else {
                                e.value.clone().unwrap_or_else(|| "null".into())
                            },
                            e.source.to_string(),
                            e.read_only.to_string(),
                        ]);
                    }
                    t.write(out)?;
                }
            }
        }
        ConfigsCmd::Alter {
            target,
            set,
            delete,
        } => {
            if set.is_empty() && delete.is_empty() {
                return Err(UsageError(
                    "configs alter needs at least one --set k=v or --delete k".into(),
                )
                .into());
            }
            let (rtype, rname, what) = target.resource();
            let mut ops = Vec::new();
            for s in &set {
                let (k, v) = parse_kv(s)?;
                ops.push(
                    AlterableConfig::default()
                        .with_name(StrBytes::from_string(k))
                        .with_config_operation(OP_SET)
                        .with_value(Some(StrBytes::from_string(v))),
                );
            }
            for k in &delete {
                ops.push(
                    AlterableConfig::default()
                        .with_name(StrBytes::from_string(k.clone()))
                        .with_config_operation(OP_DELETE)
                        .with_value(None),
                );
            }
            let mut cluster = ctx.cluster()?;
            let req = IncrementalAlterConfigsRequest::default().with_resources(vec![
                AlterConfigsResource::default()
                    .with_resource_type(rtype)
                    .with_resource_name(StrBytes::from_string(rname))
                    .with_configs(ops),
            ]);
            let resp = target.conn(&mut cluster)?.call(&req, 1)?;
            for r in &resp.responses {
                check(
                    r.error_code,
                    || format!("altering configs of {what}"),
                    r.error_message.as_deref(),
                )?;
            }
            match ctx.format {
                Format::Json => write_json(
                    out,
                    &serde_json::json!({ "resource": what, "set": set, "deleted": delete }),
                )?,
                Format::Table => writeln!(out, "Altered configs of {what}.")?,
            }
        }
    }
    Ok(())
}
