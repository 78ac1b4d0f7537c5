//! Ports for test servers, picked below the kernel's ephemeral range.
//!
//! A port found by binding `127.0.0.1:0` and closing the socket comes from the ephemeral
//! range, the same range the kernel draws the local port of every outgoing connection from.
//! A test that releases such a port and starts a server on it a moment later races every
//! client and raft peer of the tests running beside it: CI saw a controller fail to start with
//! AddrInUse that way. Ports below `net.ipv4.ip_local_port_range` are never handed to an
//! outgoing connection, so once probed free they stay free until someone binds them on purpose.
//!
//! Included with `#[path = ".../support/ports.rs"] mod ports;` by the engine, tools and bench
//! tests.
#![allow(dead_code)]

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;

/// Lowest port handed out: above the well-known ports and the 9092-9094 of `scripts/cluster.sh`.
const FIRST: u16 = 10_000;
/// Ports `scripts/cluster.sh` uses for its controllers.
const RESERVED: [u16; 3] = [19_091, 19_092, 19_093];

/// The first port of the kernel's ephemeral range (32768 when it cannot be read).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .filter(|&p: &u16| p > FIRST + 1_000)
        .unwrap_or(32_768)
}

/// A 127.0.0.1 port nothing listens on now, below the ephemeral range, and never handed out
/// twice by one process. The search starts at a point derived from the process id and the
/// clock, so test processes running side by side start far apart.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    let end = ephemeral_start();
    let span = u32::from(end - FIRST);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let seed = std::process::id().wrapping_mul(2_654_435_761) ^ nanos;
    let start = seed % span;
    for step in 0..span {
        let port = FIRST + ((start + step) % span) as u16;
        if RESERVED.contains(&port) || given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("no free 127.0.0.1 port in {FIRST}..{end}");
}

/// `n` distinct free ports.
pub fn free_ports(n: usize) -> Vec<u16> {
    (0..n).map(|_| free_port()).collect()
}
