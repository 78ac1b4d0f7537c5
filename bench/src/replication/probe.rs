//! Polls Metadata during a run, as a client would, to record the partition's leader, leader
//! epoch and ISR over time: ISR size for the report, and the time the partition had no leader
//! that clients could find after a fault.

use crate::client::cluster::METADATA_VERSIONS;
use crate::client::Connection;
use kafka_protocol::messages::{ApiKey, MetadataRequest};
use serde::{Deserialize, Serialize};
use sluice::security::client::Security;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Time between two polls.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Bound on one poll (connect + Metadata) against one broker.
const POLL_TIMEOUT: Duration = Duration::from_millis(400);

/// What one poll saw of partition 0 of the run's topic.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProbeSample {
    /// Seconds since the run's producers started (filled in after the run).
    pub t: f64,
    /// Broker that answered.
    pub from: i32,
    /// Leader (-1: none).
    pub leader: i32,
    /// Leader epoch.
    pub leader_epoch: i32,
    /// In-sync replicas.
    pub isr: Vec<i32>,
    #[serde(skip)]
    at: Option<Instant>,
}

/// A running poller; [`Probe::finish`] stops it and returns its samples.
pub struct Probe {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Vec<ProbeSample>>,
}

/// Brokers the probe may ask, in order of preference, and one it must not ask (a broker
/// cut off from the cluster answers from a stale image; clients on the majority side do not
/// see it).
#[derive(Debug, Clone)]
pub struct ProbeTargets {
    /// (broker id, "ip:port").
    pub brokers: Vec<(u32, String)>,
    /// Broker id to skip (0: none).
    pub avoid: Arc<AtomicU32>,
}

impl Probe {
    /// Starts polling for the first topic whose name starts with `topic_prefix`.
    pub fn start(targets: ProbeTargets, topic_prefix: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return Vec::new();
            };
            rt.block_on(poll_loop(targets, topic_prefix, s))
        });
        Probe { stop, handle }
    }

    /// Stops polling; the samples' `t` is made relative to `origin`.
    pub fn finish(self, origin: Instant) -> Vec<ProbeSample> {
        self.stop.store(true, Ordering::Relaxed);
        let mut v = self.handle.join().unwrap_or_default();
        for s in &mut v {
            if let Some(at) = s.at {
                s.t = if at >= origin {
                    at.duration_since(origin).as_secs_f64()
                } else {
                    -origin.duration_since(at).as_secs_f64()
                };
            }
        }
        v
    }
}

async fn poll_once(id: u32, addr: &str, prefix: &str) -> Option<ProbeSample> {
    let mut c = Connection::connect(addr, "replexp-probe", &Security::default())
        .await
        .ok()?;
    let v = c
        .versions()
        .pick(addr, ApiKey::Metadata, "Metadata", METADATA_VERSIONS)
        .ok()?;
    let req = MetadataRequest::default()
        .with_topics(None)
        .with_allow_auto_topic_creation(false);
    let resp = c
        .request::<MetadataRequest>(&req, v, POLL_TIMEOUT)
        .await
        .ok()?;
    let t = resp.topics.iter().find(|t| {
        t.name
            .as_ref()
            .is_some_and(|n| n.0.as_str().starts_with(prefix))
    })?;
    let p = t.partitions.iter().find(|p| p.partition_index == 0)?;
    Some(ProbeSample {
        t: 0.0,
        from: id as i32,
        leader: if p.error_code == 0 { p.leader_id.0 } else { -1 },
        leader_epoch: p.leader_epoch,
        isr: p.isr_nodes.iter().map(|b| b.0).collect(),
        at: Some(Instant::now()),
    })
}

async fn poll_loop(
    targets: ProbeTargets,
    prefix: String,
    stop: Arc<AtomicBool>,
) -> Vec<ProbeSample> {
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let next = tokio::time::Instant::now() + POLL_INTERVAL;
        let avoid = targets.avoid.load(Ordering::Relaxed);
        for (id, addr) in targets.brokers.iter().filter(|(id, _)| *id != avoid) {
            if let Ok(Some(s)) =
                tokio::time::timeout(POLL_TIMEOUT, poll_once(*id, addr, &prefix)).await
            {
                out.push(s);
                break;
            }
        }
        tokio::time::sleep_until(next).await;
    }
    out
}

/// Seconds from `fault_t` until the probe first saw a leader other than `old_leader` (a
/// different live broker), or `None` if it never did.
pub fn time_to_new_leader(samples: &[ProbeSample], fault_t: f64, old_leader: i32) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.t >= fault_t && s.leader >= 0 && s.leader != old_leader)
        .map(|s| s.t - fault_t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: f64, leader: i32) -> ProbeSample {
        ProbeSample {
            t,
            from: 1,
            leader,
            leader_epoch: 0,
            isr: vec![],
            at: None,
        }
    }

    #[test]
    fn new_leader_after_the_fault_only() {
        let v = [s(0.5, 2), s(1.0, 3), s(1.2, 2), s(1.4, -1), s(2.5, 3)];
        let t = time_to_new_leader(&v, 1.1, 2).unwrap();
        assert!((t - 1.4).abs() < 1e-9, "{t}");
        assert_eq!(time_to_new_leader(&v, 3.0, 2), None);
    }
}
