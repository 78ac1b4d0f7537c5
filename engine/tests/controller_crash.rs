//! Controller voters as separate processes, killed with SIGKILL: the quorum elects a new
//! controller, writes keep working, and a killed voter restarted from its data dir serves the
//! metadata committed while it was dead. The voter processes are this test binary re-run on
//! the ignored `voter_process` entry point; each one exits by itself after a bounded time.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::controller::network::{call, RpcRequest, RpcResponse};
use sluice::controller::{
    parse_voters, Controller, ControllerConfig, HeartbeatRequest, MetadataImage, NodeId,
};
use uuid::Uuid;

#[path = "support/ports.rs"]
mod ports;
use ports::free_ports;

const CHILD_LIFETIME: Duration = Duration::from_secs(40);

fn config() -> ControllerConfig {
    ControllerConfig {
        broker_session_timeout_ms: 3_000,
        raft_heartbeat_ms: 50,
        raft_election_timeout_ms: 300,
        request_timeout_ms: 8_000,
        metadata_poll_ms: 50,
        ..ControllerConfig::default()
    }
}

/// Entry point of a voter process (run only when the parent test spawns it).
#[test]
#[ignore = "run as a child process by kill9_controller_fails_over_and_restarts_from_disk"]
fn voter_process() {
    let (Ok(id), Ok(voters), Ok(dir)) = (
        std::env::var("SLUICE_TEST_NODE_ID"),
        std::env::var("SLUICE_TEST_VOTERS"),
        std::env::var("SLUICE_TEST_DATA_DIR"),
    ) else {
        // Not spawned by the parent test (e.g. `--include-ignored`): nothing to run.
        eprintln!("voter_process is a child-process entry point; skipped");
        return;
    };
    let id: NodeId = id.parse().expect("node id");
    let voters = parse_voters(&voters).expect("voters");
    let ctl = Controller::start(id, &voters, &PathBuf::from(dir), config()).expect("start");
    // Runs until the parent kills it, and never longer than its bounded lifetime.
    std::thread::sleep(CHILD_LIFETIME);
    ctl.shutdown();
}

struct Voter {
    child: Child,
}

impl Voter {
    fn spawn(id: NodeId, voters: &str, dir: &std::path::Path) -> Voter {
        let exe = std::env::current_exe().expect("test binary");
        let child = Command::new(exe)
            .args([
                "voter_process",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SLUICE_TEST_NODE_ID", id.to_string())
            .env("SLUICE_TEST_VOTERS", voters)
            .env("SLUICE_TEST_DATA_DIR", dir.join(format!("node-{id}")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn voter process");
        Voter { child }
    }

    fn kill9(&mut self) {
        // Child::kill sends SIGKILL on Unix: no shutdown path runs.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Voter {
    fn drop(&mut self) {
        self.kill9();
    }
}

async fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

async fn read_image(addr: &str) -> Option<MetadataImage> {
    match call(
        addr,
        None,
        &RpcRequest::ReadMetadata,
        Duration::from_millis(500),
    )
    .await
    {
        Ok(RpcResponse::Metadata { image, .. }) => Some(*image),
        _ => None,
    }
}

#[tokio::test(flavor = "current_thread")]
async fn kill9_controller_fails_over_and_restarts_from_disk() {
    let root = tempfile::tempdir().expect("tempdir");
    let ports = free_ports(3);
    let spec = format!(
        "1@127.0.0.1:{},2@127.0.0.1:{},3@127.0.0.1:{}",
        ports[0], ports[1], ports[2]
    );
    let voters = parse_voters(&spec).expect("voters");
    let addrs: BTreeMap<NodeId, String> = voters.iter().map(|v| (v.id, v.addr.clone())).collect();
    let mut procs: BTreeMap<NodeId, Voter> = voters
        .iter()
        .map(|v| (v.id, Voter::spawn(v.id, &spec, root.path())))
        .collect();
    // This process is a broker-only node (id 9) watching the quorum.
    let observer =
        Arc::new(Controller::start(9, &voters, root.path(), config()).expect("observer"));
    wait_for("a controller", Duration::from_secs(20), || {
        observer.controller_id().is_some()
    })
    .await;

    let epoch = observer
        .register_broker(9, Uuid::new_v4(), vec![], None)
        .await
        .expect("register");
    let alive = Arc::new(AtomicBool::new(true));
    {
        let (ctl, alive) = (observer.clone(), alive.clone());
        tokio::spawn(async move {
            while alive.load(Ordering::SeqCst) {
                let request = HeartbeatRequest {
                    broker_id: 9,
                    broker_epoch: epoch,
                    metadata_offset: 0,
                    want_shutdown: false,
                };
                let _ = tokio::time::timeout(Duration::from_secs(2), ctl.heartbeat(request)).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }
    wait_for("broker 9 unfenced", Duration::from_secs(10), || {
        observer.metadata().live_brokers() == vec![9]
    })
    .await;
    observer
        .create_topic("before-crash", 2, 1, BTreeMap::new())
        .await
        .expect("create before the crash");

    // SIGKILL the controller process.
    let leader = observer.controller_id().expect("leader");
    procs.get_mut(&leader).expect("leader process").kill9();
    let killed = Instant::now();
    wait_for("a new controller", Duration::from_secs(20), || {
        observer.controller_id().is_some_and(|l| l != leader)
    })
    .await;
    observer
        .create_topic("after-crash", 1, 1, BTreeMap::new())
        .await
        .expect("create after the crash");
    eprintln!(
        "after SIGKILL of controller {leader}: new controller {:?} and a topic created within {:?}",
        observer.controller_id(),
        killed.elapsed()
    );

    // Restart the killed voter from its data dir: it has both topics.
    procs.insert(leader, Voter::spawn(leader, &spec, root.path()));
    let addr = addrs[&leader].clone();
    let started = Instant::now();
    let mut caught_up = false;
    while started.elapsed() < Duration::from_secs(20) {
        if let Some(image) = read_image(&addr).await {
            if image.topic("before-crash").is_some() && image.topic("after-crash").is_some() {
                caught_up = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(caught_up, "restarted voter {leader} did not catch up");

    // SIGKILL every voter at once, then restart them all: nothing is left in any memory, so
    // the metadata can only come back from the fsynced logs and snapshots.
    for voter in procs.values_mut() {
        voter.kill9();
    }
    for v in &voters {
        procs.insert(v.id, Voter::spawn(v.id, &spec, root.path()));
    }
    for (id, addr) in &addrs {
        let started = Instant::now();
        let mut recovered = false;
        while started.elapsed() < Duration::from_secs(20) {
            if let Some(image) = read_image(addr).await {
                if image.topic("before-crash").is_some()
                    && image.topic("after-crash").is_some()
                    && image.broker(9).is_some()
                {
                    recovered = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            recovered,
            "voter {id} lost committed metadata across SIGKILL of all voters"
        );
    }
    wait_for(
        "a controller after the full restart",
        Duration::from_secs(20),
        || observer.controller_id().is_some(),
    )
    .await;
    observer
        .create_topic("after-full-restart", 1, 1, BTreeMap::new())
        .await
        .expect("create after a full restart");

    alive.store(false, Ordering::SeqCst);
    observer.shutdown();
    drop(procs);
}
