//! A private network for a local cluster: one network namespace per broker, each with a veth
//! into a bridge in the root namespace. The harness (in the root namespace) reaches every
//! broker at its own address; faults are iptables rules inside a broker's namespace, so they
//! touch only addresses of namespaces this module created.
//!
//! Needs root (`ip netns`, `ip link`, `iptables`). Everything created is removed by
//! [`Network::drop`], also when a scenario fails.

use anyhow::{anyhow, Context, Result};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// The namespaces, links and addresses of one cluster's network.
#[derive(Debug)]
pub struct Network {
    /// Name prefix of every namespace and link (unique per harness process and cluster).
    prefix: String,
    /// Third octet of the 10.231.X.0/24 subnet.
    subnet: u8,
    /// Number of broker namespaces.
    nodes: u32,
    /// Whether the bridge was created (for cleanup).
    created: bool,
}

/// Runs `ip`/`iptables` with arguments, failing with its stderr.
fn sh(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        return Err(anyhow!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

impl Network {
    /// Creates namespaces for brokers `1..=nodes` on 10.231.`subnet`.0/24 (the bridge is .254).
    pub fn create(tag: &str, subnet: u8, nodes: u32) -> Result<Self> {
        let mut net = Network {
            prefix: format!("slx{tag}"),
            subnet,
            nodes,
            created: false,
        };
        // Leftovers of an earlier, killed harness with the same tag would make `add` fail.
        net.remove_all();
        net.created = true;
        let br = net.bridge();
        sh("ip", &["link", "add", &br, "type", "bridge"])?;
        sh(
            "ip",
            &["addr", "add", &format!("{}/24", net.host_ip()), "dev", &br],
        )?;
        sh("ip", &["link", "set", &br, "up"])?;
        for n in 1..=nodes {
            let ns = net.namespace(n);
            let (host, peer) = (format!("{}h{n}", net.prefix), format!("{}n{n}", net.prefix));
            sh("ip", &["netns", "add", &ns])?;
            sh(
                "ip",
                &["link", "add", &host, "type", "veth", "peer", "name", &peer],
            )?;
            sh("ip", &["link", "set", &peer, "netns", &ns])?;
            sh("ip", &["link", "set", &host, "master", &br, "up"])?;
            let cidr = format!("{}/24", net.node_ip(n));
            sh("ip", &["-n", &ns, "addr", "add", &cidr, "dev", &peer])?;
            sh("ip", &["-n", &ns, "link", "set", &peer, "up"])?;
            sh("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    fn bridge(&self) -> String {
        format!("{}br", self.prefix)
    }

    /// Namespace of broker `n`.
    pub fn namespace(&self, n: u32) -> String {
        format!("{}ns{n}", self.prefix)
    }

    /// Address of broker `n`.
    pub fn node_ip(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.subnet, n as u8)
    }

    /// Address of the root namespace on the bridge (where the harness and its proxies live).
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.subnet, 254)
    }

    fn iptables(&self, n: u32, args: &[&str]) -> Result<()> {
        let ns = self.namespace(n);
        let mut full = vec!["netns", "exec", &ns, "iptables", "-w"];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    /// Sends broker `n`'s new connections to `dst:port` to `via` instead (a proxy of the
    /// harness). Connections made later only: install before the brokers start.
    pub fn redirect(&self, n: u32, dst: Ipv4Addr, port: u16, via: (Ipv4Addr, u16)) -> Result<()> {
        self.iptables(
            n,
            &[
                "-t",
                "nat",
                "-A",
                "OUTPUT",
                "-p",
                "tcp",
                "-d",
                &dst.to_string(),
                "--dport",
                &port.to_string(),
                "-j",
                "DNAT",
                "--to-destination",
                &format!("{}:{}", via.0, via.1),
            ],
        )
    }

    /// Cuts broker `n` off from every other broker (both directions, all ports, including
    /// the proxies' address for traffic that came from them); the harness can still reach it.
    pub fn isolate(&self, n: u32) -> Result<()> {
        for m in (1..=self.nodes).filter(|m| *m != n) {
            let ip = self.node_ip(m).to_string();
            self.iptables(n, &["-I", "INPUT", "-s", &ip, "-j", "DROP"])?;
            self.iptables(n, &["-I", "OUTPUT", "-d", &ip, "-j", "DROP"])?;
        }
        Ok(())
    }

    /// Removes the rules of [`Network::isolate`].
    pub fn heal(&self, n: u32) -> Result<()> {
        for m in (1..=self.nodes).filter(|m| *m != n) {
            let ip = self.node_ip(m).to_string();
            self.iptables(n, &["-D", "INPUT", "-s", &ip, "-j", "DROP"])?;
            self.iptables(n, &["-D", "OUTPUT", "-d", &ip, "-j", "DROP"])?;
        }
        Ok(())
    }

    fn remove_all(&self) {
        for n in 1..=self.nodes {
            let _ = sh("ip", &["netns", "del", &self.namespace(n)]);
            let _ = sh("ip", &["link", "del", &format!("{}h{n}", self.prefix)]);
        }
        let _ = sh("ip", &["link", "del", &self.bridge()]);
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        if self.created {
            self.remove_all();
        }
    }
}

/// Whether this process can create network namespaces (root with `ip` and `iptables`).
pub fn available() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        && Command::new("ip")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
        && Command::new("iptables")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
}
