//! `sluice`: the single-node Kafka-compatible broker.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
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
    /// Cluster mode: controller voters `id@host:port,...` (`controller.quorum.voters`).
    #[arg(long)]
    controller_voters: Option<String>,
    /// Any config key: `--set log.segment.bytes=1048576` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

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
