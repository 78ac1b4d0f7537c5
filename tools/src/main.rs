//! sluicectl: admin and inspection CLI for Sluice and any Kafka-compatible cluster.
//!
//! Exit codes: 0 ok, 1 error (from the cluster, e.g. unknown topic, or a local file), 2 usage,
//! 3 broker unreachable.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

mod check_index;
mod client;
mod cmd;
mod dump_log;
mod output;

use client::security::Security;
use client::{ClientError, Cluster};
use output::Format;

/// Exit code for errors the cluster returned and local failures.
const EXIT_ERROR: u8 = 1;
/// Exit code for bad flags and arguments.
const EXIT_USAGE: u8 = 2;
/// Exit code when no broker could be reached.
const EXIT_UNREACHABLE: u8 = 3;

/// Sluice admin and inspection tool; works against any Kafka-compatible cluster.
#[derive(Debug, Parser)]
#[command(name = "sluicectl", version, about)]
struct Cli {
    /// Bootstrap brokers, host:port[,host:port].
    #[arg(
        long,
        global = true,
        env = "SLUICE_BOOTSTRAP",
        default_value = "127.0.0.1:9092"
    )]
    bootstrap: String,
    /// Output format: human tables or JSON for scripts.
    #[arg(long, global = true, value_enum, default_value = "table")]
    output: Format,
    /// Timeout of each request to a broker (connect included), in milliseconds.
    #[arg(long, global = true, default_value_t = 10_000)]
    request_timeout_ms: u64,
    /// Kafka client properties file (`security.protocol`, `ssl.*`, `sasl.*`), as Kafka's
    /// tools take with --command-config.
    #[arg(long, global = true, env = "SLUICE_COMMAND_CONFIG")]
    command_config: Option<std::path::PathBuf>,
    /// One client property, key=value (repeatable; wins over --command-config), as kcat -X.
    #[arg(
        short = 'X',
        long = "property",
        global = true,
        value_name = "KEY=VALUE"
    )]
    property: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, list, describe, delete topics and add partitions.
    #[command(subcommand)]
    Topics(cmd::topics::TopicsCmd),
    /// Describe and alter topic and broker configs.
    #[command(subcommand)]
    Configs(cmd::configs::ConfigsCmd),
    /// List, describe, delete consumer groups and reset their offsets.
    #[command(subcommand)]
    Groups(cmd::groups::GroupsCmd),
    /// Produce lines from stdin (plain or JSON lines).
    Produce(cmd::produce::Args),
    /// Consume records to stdout (plain or JSON lines).
    Consume(cmd::consume::Args),
    /// Describe the cluster: brokers, controller, metadata quorum.
    #[command(subcommand)]
    Cluster(cmd::cluster::ClusterCmd),
    /// Run preferred or unclean leader elections (ElectLeaders, like
    /// kafka-leader-election.sh).
    #[command(subcommand)]
    Leaders(cmd::leaders::LeadersCmd),
    /// Delete the records below an offset (DeleteRecords).
    #[command(subcommand)]
    Records(cmd::records::RecordsCmd),
    /// Describe the brokers' log directories and partition sizes (DescribeLogDirs).
    #[command(subcommand)]
    Logdirs(cmd::logdirs::LogdirsCmd),
    /// Describe the idempotent producers of a topic's partitions (DescribeProducers).
    #[command(subcommand)]
    Producers(cmd::producers::ProducersCmd),
    /// Describe and alter client quotas (DescribeClientQuotas, AlterClientQuotas).
    #[command(subcommand)]
    Quotas(cmd::quotas::QuotasCmd),
    /// List, describe, set and delete SCRAM users (Describe/AlterUserScramCredentials).
    #[command(subcommand)]
    Users(cmd::users::UsersCmd),
    /// List, create and delete ACLs (as kafka-acls.sh).
    #[command(subcommand)]
    Acls(cmd::acls::AclsCmd),
    /// List and describe transactions (as kafka-transactions.sh).
    #[command(subcommand)]
    Transactions(cmd::transactions::TransactionsCmd),
    /// Print the batches of a segment file and check its indexes (like kafka-dump-log.sh).
    DumpLog(dump_log::Args),
    /// Check every segment's offset and time index in a partition directory.
    CheckIndex(check_index::Args),
}

/// What every command needs: where the cluster is and how to print.
pub struct Ctx {
    /// Bootstrap list.
    pub bootstrap: String,
    /// Output format.
    pub format: Format,
    /// Per-request timeout.
    pub timeout: Duration,
    /// TLS and SASL settings of every connection.
    pub security: Security,
}

impl Ctx {
    /// Connects to the cluster.
    pub fn cluster(&self) -> Result<Cluster, ClientError> {
        Cluster::connect(&self.bootstrap, self.timeout, &self.security)
    }
}

/// The client properties of `--command-config` and `-X`, as connection settings.
fn security(cli: &Cli) -> Result<Security, UsageError> {
    Security::from_sources(cli.command_config.as_deref(), &cli.property)
        .map_err(|e| UsageError(e.to_string()))
}

/// A usage mistake found after parsing (conflicting or malformed values): exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

fn run(cli: Cli) -> anyhow::Result<bool> {
    let ctx = Ctx {
        security: security(&cli)?,
        bootstrap: cli.bootstrap,
        format: cli.output,
        timeout: Duration::from_millis(cli.request_timeout_ms.max(1)),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let ok = match cli.command {
        Command::Topics(c) => cmd::topics::run(&ctx, c, &mut out).map(|()| true),
        Command::Configs(c) => cmd::configs::run(&ctx, c, &mut out).map(|()| true),
        Command::Groups(c) => cmd::groups::run(&ctx, c, &mut out).map(|()| true),
        Command::Produce(a) => cmd::produce::run(&ctx, a, &mut out).map(|()| true),
        Command::Consume(a) => cmd::consume::run(&ctx, a, &mut out).map(|()| true),
        Command::Cluster(c) => cmd::cluster::run(&ctx, c, &mut out).map(|()| true),
        Command::Records(c) => cmd::records::run(&ctx, c, &mut out),
        Command::Leaders(c) => cmd::leaders::run(&ctx, c, &mut out),
        Command::Logdirs(c) => cmd::logdirs::run(&ctx, c, &mut out).map(|()| true),
        Command::Producers(c) => cmd::producers::run(&ctx, c, &mut out).map(|()| true),
        Command::Quotas(c) => cmd::quotas::run(&ctx, c, &mut out).map(|()| true),
        Command::Users(c) => cmd::users::run(&ctx, c, &mut out).map(|()| true),
        Command::Acls(c) => cmd::acls::run(&ctx, c, &mut out).map(|()| true),
        Command::Transactions(c) => cmd::transactions::run(&ctx, c, &mut out).map(|()| true),
        Command::DumpLog(a) => dump_log::run(&a, ctx.format, &mut out),
        Command::CheckIndex(a) => check_index::run(&a, ctx.format, &mut out),
    }?;
    out.flush()?;
    Ok(ok)
}

/// True when the failure is stdout closing under us (`sluicectl consume | head`).
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(c) = cause.downcast_ref::<ClientError>() {
            return if c.is_unreachable() {
                EXIT_UNREACHABLE
            } else {
                EXIT_ERROR
            };
        }
        if cause.downcast_ref::<UsageError>().is_some() {
            return EXIT_USAGE;
        }
    }
    EXIT_ERROR
}

/// A next step for the common failures.
fn hint(e: &anyhow::Error, bootstrap: &str) -> Option<String> {
    let c = e.chain().find_map(|c| c.downcast_ref::<ClientError>())?;
    if let ClientError::Io { source, .. } = c {
        // rustls reports a failed handshake (untrusted certificate, wrong host name, a
        // plaintext port) as invalid data.
        if source.kind() == std::io::ErrorKind::InvalidData {
            return Some(
                "the TLS handshake failed: check security.protocol, ssl.ca.location and that the address is the broker's TLS listener.".into(),
            );
        }
    }
    if c.is_unreachable() {
        return Some(format!(
            "is a broker running at {bootstrap}? Set --bootstrap or SLUICE_BOOTSTRAP to host:port."
        ));
    }
    match c.kafka_code() {
        Some(3) => Some("list the topics with `sluicectl topics list`.".into()),
        Some(36) => Some("the topic exists; see `sluicectl topics describe NAME`.".into()),
        Some(69) => Some("list the groups with `sluicectl groups list`.".into()),
        Some(35) => Some("the broker does not support this request version or API yet.".into()),
        Some(33) => Some("set sasl.mechanism to one the listener offers.".into()),
        Some(58) => Some("check sasl.username and sasl.password (or sasl.jaas.config).".into()),
        Some(91) => Some("list the users with `sluicectl users list`.".into()),
        Some(31) => Some(
            "the principal needs ALTER or DESCRIBE on the cluster (see `sluicectl acls`).".into(),
        ),
        _ => None,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let bootstrap = cli.bootstrap.clone();
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_ERROR),
        // The reader went away (`| head`): that is how pipelines end, not an error.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluicectl: error: {e:#}");
            if let Some(h) = hint(&e, &bootstrap) {
                eprintln!("sluicectl: hint: {h}");
            }
            ExitCode::from(exit_code(&e))
        }
    }
}
