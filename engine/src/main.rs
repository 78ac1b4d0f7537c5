//! `sluice`: the Kafka-compatible broker (with no cluster flags, a cluster of one).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use nix::sys::signal::{SigSet, Signal};
use sluice::broker::{BrokerConfig, Event, Server};

/// Sluice: a Kafka-compatible, thread-per-core streaming broker.
///
/// Configuration precedence: flags > SLUICE_* environment variables > --config file > defaults.
#[derive(Debug, Parser)]
#[command(name = "sluice", version)]
struct Args {
    /// TOML config file with Kafka key names (e.g. `log.dirs = "/var/lib/sluice"`).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Data directory (`log.dirs`).
    #[arg(long)]
    data_dir: Option<String>,
    /// Listener address host:port (`listeners`).
    #[arg(long)]
    listen: Option<String>,
    /// Address advertised to clients host:port (`advertised.listeners`).
    #[arg(long)]
    advertised_listener: Option<String>,
    /// Number of shards, one thread per core (`num.shards`; 0 = number of cores).
    #[arg(long)]
    shards: Option<String>,
    /// Broker id (`node.id`).
    #[arg(long)]
    node_id: Option<String>,
    /// Default partitions of new topics (`num.partitions`).
    #[arg(long)]
    num_partitions: Option<String>,
    /// Controller voters `id@host:port,...` (`controller.quorum.voters`).
    #[arg(long)]
    controller_voters: Option<String>,
    /// Any config key: `--set log.segment.bytes=1048576` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check whether this host is ready to run a broker (io_uring, limits, disk, clock,
    /// sysctls). Exits 1 when a check fails.
    Check {
        /// Data directory to check (default: `log.dirs` from --config / flags / defaults).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Prepare a data directory before the first start, as `kafka-storage.sh format` does:
    /// `--add-scram 'SCRAM-SHA-256=[name=admin,password=admin-secret]'` stores a bootstrap
    /// SCRAM credential (salted, never the password), which the next start imports into the
    /// cluster metadata unless the metadata already has one for that user and mechanism.
    Format {
        /// Data directory (default: `log.dirs` from --config / flags / defaults).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// A SCRAM credential `MECH=[name=N,password=P(,iterations=I)(,salt=BASE64)]`
        /// (repeatable).
        #[arg(long = "add-scram", value_name = "CREDENTIAL")]
        add_scram: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();

    let mut flags: Vec<(String, String)> = Vec::new();
    let named = [
        ("log.dirs", &args.data_dir),
        ("listeners", &args.listen),
        ("advertised.listeners", &args.advertised_listener),
        ("num.shards", &args.shards),
        ("node.id", &args.node_id),
        ("num.partitions", &args.num_partitions),
        ("controller.quorum.voters", &args.controller_voters),
    ];
    for (key, value) in named {
        if let Some(v) = value {
            flags.push((key.to_string(), v.clone()));
        }
    }
    for kv in &args.set {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--set expects KEY=VALUE, got `{kv}`"))?;
        flags.push((k.trim().to_string(), v.trim().to_string()));
    }
    let file = match &args.config {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?,
        ),
        None => None,
    };
    let (config, warnings) = BrokerConfig::resolve(file.as_deref(), std::env::vars(), &flags)?;
    if let Some(Command::Check { data_dir, output }) = &args.command {
        let dir = data_dir.clone().unwrap_or_else(|| config.data_dir.clone());
        let checks = sluice::check::run(&dir);
        let text = match output {
            Output::Json => sluice::check::to_json(&checks) + "\n",
            Output::Table => sluice::check::to_table(&checks),
        };
        // A closed pipe (`sluice check | head`) is not an error worth a panic.
        let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
        std::process::exit(if sluice::check::all_ok(&checks) { 0 } else { 1 });
    }
    if let Some(Command::Format {
        data_dir,
        add_scram,
    }) = &args.command
    {
        let dir = data_dir.clone().unwrap_or_else(|| config.data_dir.clone());
        return format_data_dir(&dir, add_scram);
    }
    sluice::logging::init(&config.log_level, config.log_json)?;
    for w in warnings {
        tracing::warn!("{w}");
    }

    // Block the stop signals in every thread (shards inherit the mask) and wait for them on a
    // dedicated thread, so no shard is ever interrupted mid-syscall by a handler.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals
        .thread_block()
        .context("cannot block SIGINT/SIGTERM")?;

    let server = Server::start(config)?;
    let stop = server.stopper();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(sig) = signals.wait() {
                tracing::info!(signal = ?sig, "stop requested");
            }
            let _ = stop.send(Event::Stop);
        })
        .context("cannot start the signal thread")?;
    server.run();
    Ok(())
}

/// `sluice format`: creates the data directory and adds the SCRAM credentials given.
fn format_data_dir(dir: &std::path::Path, add_scram: &[String]) -> anyhow::Result<()> {
    use sluice::security::credentials::{AddScram, FileCredentialStore, SCRAM_FILE};
    use sluice::security::scram::ScramCredential;
    let specs = add_scram
        .iter()
        .map(|s| s.parse::<AddScram>())
        .collect::<Result<Vec<_>, _>>()?;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    let mut store = FileCredentialStore::open(dir)?;
    for spec in &specs {
        let salt = spec
            .salt
            .clone()
            .unwrap_or_else(|| (0..32).map(|_| rand::random::<u8>()).collect());
        let credential =
            ScramCredential::new(spec.mechanism, &spec.password, &salt, spec.iterations);
        store.upsert(spec.mechanism, &spec.name, credential);
        println!(
            "{}: added bootstrap {} credential for user {:?} ({} iterations; imported into the cluster metadata at the next start)",
            dir.join(SCRAM_FILE).display(),
            spec.mechanism.name(),
            spec.name,
            spec.iterations
        );
    }
    store.save(dir)?;
    Ok(())
}
