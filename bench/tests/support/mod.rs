//! Starting a local Sluice broker for the integration tests that need a real one.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../../../engine/tests/support/ports.rs"]
mod ports;

/// The `sluice` binary to test: $SLUICE_BIN, else the newest of target/{release,debug}/sluice.
pub fn sluice_binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("SLUICE_BIN") {
        return Some(PathBuf::from(p));
    }
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    ["release", "debug"]
        .iter()
        .map(|profile| target.join(profile).join("sluice"))
        .filter(|p| p.is_file())
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
}

/// A broker process, killed when dropped, with its data directory.
pub struct LocalSluice {
    child: Child,
    /// "127.0.0.1:port".
    pub addr: String,
    _data: tempfile::TempDir,
}

impl Drop for LocalSluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `target/{release,debug}/sluice` (or `SLUICE_BIN`) on a free 127.0.0.1 port; `None`
/// (the test skips) when there is no broker build, unless `SLUICE_SMOKE_REQUIRED` is set.
pub fn start_sluice() -> Option<LocalSluice> {
    // A binary that does not take --listen is not a broker build (e.g. the workspace skeleton).
    let bin = sluice_binary().filter(|b| {
        Command::new(b)
            .arg("--help")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--listen"))
    });
    let Some(bin) = bin else {
        assert!(
            std::env::var("SLUICE_SMOKE_REQUIRED").is_err(),
            "SLUICE_SMOKE_REQUIRED is set but no sluice broker binary was found"
        );
        eprintln!("skipping: no sluice binary (cargo build -p engine --bin sluice)");
        return None;
    };
    let port = ports::free_port();
    let addr = format!("127.0.0.1:{port}");
    let data = tempfile::tempdir().unwrap();
    let child = Command::new(&bin)
        .arg("--listen")
        .arg(&addr)
        .arg("--data-dir")
        .arg(data.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    let mut broker = LocalSluice {
        child,
        addr: addr.clone(),
        _data: data,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&addr).is_err() {
        if let Ok(Some(status)) = broker.child.try_wait() {
            panic!(
                "{} exited ({status}) before listening on {addr}",
                bin.display()
            );
        }
        assert!(Instant::now() < deadline, "sluice did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(broker)
}

/// The `sluice` binary for the replication-experiment tests, which also need root with `ip`
/// and `iptables`: `None` (after saying why) when either is missing, so the test skips; a
/// panic instead when SLUICE_SMOKE_REQUIRED is set (CI).
#[allow(dead_code)]
pub fn sluice_binary_with_netns() -> Option<PathBuf> {
    let required = std::env::var("SLUICE_SMOKE_REQUIRED").is_ok();
    let Some(binary) = sluice_binary() else {
        assert!(
            !required,
            "SLUICE_SMOKE_REQUIRED is set but no sluice binary was found"
        );
        eprintln!("skipping: no sluice binary (cargo build -p engine --bin sluice)");
        return None;
    };
    if !sluice_bench::replication::netns::available() {
        assert!(
            !required,
            "SLUICE_SMOKE_REQUIRED is set but network namespaces are unavailable"
        );
        eprintln!("skipping: needs root with ip and iptables");
        return None;
    }
    Some(binary)
}
