//! A local Sluice cluster the experiment starts itself: one `sluice` process per broker, each
//! in its own network namespace (see [`super::netns`]), every process killed by PID when the
//! cluster is dropped. Optionally every broker's connections to every other broker's Kafka
//! listener pass through a [`DelayProxy`], so one follower's fetch path can be slowed.

use super::netns::Network;
use super::proxy::DelayProxy;
use crate::client::{cluster as meta, Connection};
use anyhow::{anyhow, Context, Result};
use sluice::security::client::Security;
use std::collections::HashMap;
use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Kafka listener port of every broker (each has its own address).
pub const KAFKA_PORT: u16 = 9092;
/// Controller (Raft) listener port of every voter.
pub const CONTROLLER_PORT: u16 = 19091;
/// Time a broker gets to open its port, and the cluster to register every broker.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Broker settings shared by every scenario: the short timeouts of the real-client cluster
/// tests, so failures are detected within a run of tens of seconds.
pub const BROKER_SETTINGS: &[&str] = &[
    "broker.session.timeout.ms=2000",
    "broker.heartbeat.interval.ms=200",
    "controller.quorum.election.timeout.ms=500",
    "replica.lag.time.max.ms=3000",
    "replica.fetch.wait.max.ms=200",
    "min.insync.replicas=2",
];

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// The `sluice` binary.
    pub binary: PathBuf,
    /// Brokers (all of them controller voters).
    pub nodes: u32,
    /// `replication.mode` of every topic: `isr` or `quorum`.
    pub mode: String,
    /// Root of the data directories and logs (one `nodeN/` and `nodeN.log` each).
    pub dir: PathBuf,
    /// Put a delaying proxy between every pair of brokers.
    pub proxied: bool,
    /// Unique tag of the namespaces (short).
    pub tag: String,
    /// Third octet of the 10.231.X.0/24 subnet.
    pub subnet: u8,
}

/// A running cluster.
pub struct LocalCluster {
    spec: ClusterSpec,
    children: HashMap<u32, Child>,
    /// Proxies by (from broker, to broker).
    proxies: HashMap<(u32, u32), DelayProxy>,
    rt: tokio::runtime::Runtime,
    stop: watch::Sender<bool>,
    // Dropped last: the namespaces go after the processes in them.
    net: Network,
}

impl LocalCluster {
    /// Creates the network, the proxies, starts every broker and waits until all are
    /// registered and visible in Metadata.
    pub fn start(spec: ClusterSpec) -> Result<Self> {
        std::fs::create_dir_all(&spec.dir)
            .with_context(|| format!("creating {}", spec.dir.display()))?;
        let net = Network::create(&spec.tag, spec.subnet, spec.nodes)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("starting the proxy runtime")?;
        let (stop, stop_rx) = watch::channel(false);
        let mut c = LocalCluster {
            spec,
            children: HashMap::new(),
            proxies: HashMap::new(),
            rt,
            stop,
            net,
        };
        if c.spec.proxied {
            for from in 1..=c.spec.nodes {
                for to in (1..=c.spec.nodes).filter(|t| *t != from) {
                    let listen = SocketAddr::new(c.net.host_ip().into(), 0);
                    let target = SocketAddr::new(c.net.node_ip(to).into(), KAFKA_PORT);
                    let p =
                        c.rt.block_on(DelayProxy::start(listen, target, stop_rx.clone()))?;
                    c.net.redirect(
                        from,
                        c.net.node_ip(to),
                        KAFKA_PORT,
                        (c.net.host_ip(), p.addr.port()),
                    )?;
                    c.proxies.insert((from, to), p);
                }
            }
        }
        for n in 1..=c.spec.nodes {
            c.spawn(n)?;
        }
        c.wait_registered(c.spec.nodes as usize)?;
        Ok(c)
    }

    /// "ip:9092" of every broker, comma-separated.
    pub fn bootstrap(&self) -> String {
        (1..=self.spec.nodes)
            .map(|n| self.addr(n))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Kafka address of broker `n`.
    pub fn addr(&self, n: u32) -> String {
        format!("{}:{KAFKA_PORT}", self.net.node_ip(n))
    }

    /// Number of brokers.
    pub fn nodes(&self) -> u32 {
        self.spec.nodes
    }

    /// The network (for partitions).
    pub fn network(&self) -> &Network {
        &self.net
    }

    fn voters(&self) -> String {
        (1..=self.spec.nodes)
            .map(|n| format!("{n}@{}:{CONTROLLER_PORT}", self.net.node_ip(n)))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, n: u32) -> Result<()> {
        let data = self.spec.dir.join(format!("node{n}"));
        std::fs::create_dir_all(&data)?;
        let log_path = self.spec.dir.join(format!("node{n}.log"));
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.net.namespace(n)])
            .arg(&self.spec.binary)
            .args(["--node-id", &n.to_string()])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen", &self.addr(n)])
            .args(["--shards", "1"])
            .args(["--controller-voters", &self.voters()])
            .args(["--set", &format!("replication.mode={}", self.spec.mode)]);
        for s in BROKER_SETTINGS {
            cmd.args(["--set", s]);
        }
        // `ip netns exec` execs the broker: the child's PID is the broker's.
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.spec.binary.display()))?;
        tracing::info!(node = n, pid = child.id(), "broker started");
        self.children.insert(n, child);
        let addr: SocketAddr = self.addr(n).parse()?;
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(c) = self.children.get_mut(&n) {
                if let Ok(Some(st)) = c.try_wait() {
                    return Err(anyhow!(
                        "broker {n} exited ({st}) before listening; see {}",
                        log_path.display()
                    ));
                }
            }
            if Instant::now() > deadline {
                return Err(anyhow!("broker {n} did not listen on {addr}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Waits until Metadata from some live broker lists `want` brokers.
    pub fn wait_registered(&self, want: usize) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            for n in self.live() {
                let addr = self.addr(n);
                let got = self.rt.block_on(async {
                    let mut c = Connection::connect(&addr, "replexp-admin", &Security::default())
                        .await
                        .ok()?;
                    tokio::time::timeout(Duration::from_secs(2), meta::metadata(&mut c, &[]))
                        .await
                        .ok()?
                        .ok()
                });
                if got.is_some_and(|m| m.brokers.len() >= want) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(anyhow!(
                    "{want} brokers not registered after {START_TIMEOUT:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Brokers whose process runs.
    pub fn live(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.children.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// `kill -9` broker `n` (by its PID) and reaps it.
    pub fn kill(&mut self, n: u32) -> Result<()> {
        let mut c = self
            .children
            .remove(&n)
            .ok_or_else(|| anyhow!("broker {n} is not running"))?;
        c.kill().with_context(|| format!("kill -9 broker {n}"))?;
        let _ = c.wait();
        tracing::info!(node = n, "broker killed");
        Ok(())
    }

    /// Starts broker `n` again (same data directory) and waits for its port.
    pub fn restart(&mut self, n: u32) -> Result<()> {
        self.spawn(n)
    }

    /// Delays broker `from`'s requests to broker `to` (proxied clusters only).
    pub fn set_delay(&self, from: u32, to: u32, delay: Duration) -> Result<()> {
        self.proxies
            .get(&(from, to))
            .ok_or_else(|| anyhow!("no proxy from broker {from} to {to}"))?
            .set_delay(delay);
        Ok(())
    }

    /// Data root.
    pub fn dir(&self) -> &Path {
        &self.spec.dir
    }

    /// Runs a future on the cluster's small runtime (probes).
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for (n, mut c) in self.children.drain() {
            let _ = c.kill();
            let _ = c.wait();
            tracing::info!(node = n, "broker stopped");
        }
    }
}
