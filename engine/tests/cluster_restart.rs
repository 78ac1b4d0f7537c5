//! Three `sluice` processes on 127.0.0.1: a broker restarted after kill -9 does not lead (nor
//! answer clients as leader of) a partition epoch that ended while it was down. Its metadata
//! replayed from its own log still names it leader; until it has registered again and its
//! image has caught up with the controller's log, it answers NOT_LEADER_OR_FOLLOWER and its
//! Metadata does not name it leader (KRaft's broker catch-up). Both replication modes. Every
//! wait is bounded; the brokers are killed and their directories deleted when a test ends.

#[path = "broker_support.rs"]
mod support;

#[path = "support/cluster.rs"]
mod cluster;

use std::time::{Duration, Instant};

use bytes::Bytes;
use cluster::{latest_offset, produce_until_ok, Cluster};
use support::*;

const NOT_LEADER_OR_FOLLOWER: i16 = 6;

impl Cluster {
    fn start_in_mode(mode: &str) -> Cluster {
        Cluster::start(&[
            &format!("replication.mode={mode}"),
            // The leader's automatic rebalance would move leadership back to a restarted
            // preferred replica: this test watches the restarted broker's own decisions.
            "auto.leader.rebalance.enable=false",
        ])
    }

    /// Each running broker's log lines about registration, catch-up and partition roles (for
    /// a failure's message).
    fn logs(&self) -> String {
        let keys = [
            "registered",
            "caught up",
            "fenced",
            "elected",
            "leading",
            "following",
            "cut off",
            "isr",
            "ISR",
        ];
        let mut out = String::new();
        for (i, b) in self.brokers.iter().enumerate() {
            let Some(b) = b else { continue };
            out.push_str(&format!("--- broker {}\n", i + 1));
            for line in b
                .log()
                .lines()
                .filter(|l| keys.iter().any(|k| l.contains(k)))
            {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// (error, leader, leader epoch, isr) of partition 0 as broker `via` answers Metadata.
    fn partition0(&self, via: i32, topic: &str) -> Option<(i16, i32, i32, Vec<i32>)> {
        let resp = self.metadata(via, topic);
        let p = resp.topics.first()?.partitions.first()?.clone();
        Some((
            p.error_code,
            p.leader_id.0,
            p.leader_epoch,
            p.isr_nodes.iter().map(|b| b.0).collect(),
        ))
    }

    /// Waits (20 s at most) until `via` names a leader satisfying `ok`: (leader, epoch, isr).
    fn wait_for(
        &self,
        via: i32,
        topic: &str,
        what: &str,
        ok: impl Fn(i32, i32, &[i32]) -> bool,
    ) -> (i32, i32, Vec<i32>) {
        let (_, leader, epoch, isr) = self.wait_until(
            what,
            Duration::from_secs(20),
            |c| c.partition0(via, topic),
            |(code, leader, epoch, isr)| *code == 0 && *leader >= 0 && ok(*leader, *epoch, isr),
        );
        (leader, epoch, isr)
    }
}

/// acks=all Produce v9 to partition 0: the error code.
fn produce(b: &Broker, topic: &str, records: Bytes) -> i16 {
    cluster::produce(b, topic, records).0
}

/// A consumer's Fetch v12 of partition 0 from offset 0 with no current epoch:
/// (error, values).
fn fetch(b: &Broker, topic: &str) -> (i16, Vec<String>) {
    let (code, _, vals) = cluster::fetch(b, topic, -1);
    (code, vals)
}

/// A consumer's OffsetForLeaderEpoch v4 for `epoch` of partition 0, with no current epoch:
/// (error, epoch, end offset).
fn epoch_end(b: &Broker, topic: &str, epoch: i32) -> (i16, i32, i64) {
    cluster::epoch_end(b, topic, -1, epoch)
}

/// Checks that `id` does not act as leader of partition 0 in `stale_epoch` (or any epoch up to
/// it): Produce, Fetch, ListOffsets and OffsetForLeaderEpoch are refused or, if answered as
/// leader, in a newer epoch; its Metadata names neither itself as leader of such an epoch.
/// Returns whether it answered as the leader of a newer epoch (the check is then over).
fn assert_not_stale_leader(cluster: &Cluster, id: i32, topic: &str, stale_epoch: i32) -> bool {
    let b = cluster.broker(id);
    let (code, _, epoch) = latest_offset(b, topic);
    assert!(
        code != 0 || epoch > stale_epoch,
        "broker {id} answered ListOffsets as leader of epoch {epoch} (superseded: {stale_epoch})"
    );
    let newer = code == 0;
    if let Some((_, leader, epoch, _)) = cluster.partition0(id, topic) {
        assert!(
            leader != id || epoch > stale_epoch,
            "broker {id}'s Metadata names itself leader of epoch {epoch} (superseded: {stale_epoch})"
        );
    }
    if newer {
        return true;
    }
    let (code, epoch, end) = epoch_end(b, topic, stale_epoch);
    assert_eq!(
        code, NOT_LEADER_OR_FOLLOWER,
        "broker {id} answered OffsetForLeaderEpoch as a stale leader: epoch {epoch} ends at {end}"
    );
    let (code, vals) = fetch(b, topic);
    assert_eq!(
        code, NOT_LEADER_OR_FOLLOWER,
        "broker {id} served a consumer Fetch as a stale leader: {vals:?}"
    );
    let code = produce(b, topic, batch("stale", 1, 100));
    assert_ne!(code, 0, "broker {id} accepted a produce as a stale leader");
    false
}

fn run(mode: &str) {
    let mut cluster = Cluster::start_in_mode(mode);
    let topic = "restarted";
    cluster.create_topic(topic, 1, 3);
    let (old_leader, old_epoch, _) =
        cluster.wait_for(1, topic, "initial leader", |_, _, isr| isr.len() == 3);
    produce_until_ok(
        cluster.broker(old_leader),
        topic,
        batch("a", 5, 0),
        "produce to the first leader",
    );

    // kill -9 the leader: a survivor leads a newer epoch and takes more acknowledged writes.
    cluster.kill(old_leader);
    let survivor = (1..=3).find(|b| *b != old_leader).expect("a survivor");
    let (new_leader, new_epoch, _) = cluster.wait_for(survivor, topic, "failover", |l, e, _| {
        l != old_leader && e > old_epoch
    });
    produce_until_ok(
        cluster.broker(new_leader),
        topic,
        batch("b", 3, 10),
        "produce to the new leader",
    );
    let other = (1..=3)
        .find(|b| *b != old_leader && *b != new_leader)
        .expect("the third broker");

    // Both survivors die; the old leader comes back alone. Its metadata log ends before the
    // failover, so its replayed image says it leads the old epoch; without a controller
    // majority it can neither register nor catch up, and must not lead meanwhile.
    cluster.kill(new_leader);
    cluster.kill(other);
    cluster.restart(old_leader);
    let alone_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < alone_until {
        assert!(
            !assert_not_stale_leader(&cluster, old_leader, topic, old_epoch),
            "broker {old_leader} led a newer epoch without a controller majority"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A survivor with the newer metadata returns: the old leader registers and catches up,
    // and at no point in between leads the superseded epoch. Then the last broker returns (in
    // ISR mode the restarted survivor's new incarnation left the ISR, so the partition may
    // wait for the last leader).
    cluster.restart(other);
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_not_stale_leader(&cluster, old_leader, topic, old_epoch);
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.restart(new_leader);
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let current = cluster
            .partition0(old_leader, topic)
            .filter(|(code, leader, _, _)| *code == 0 && *leader >= 0);
        let newer_led_here = assert_not_stale_leader(&cluster, old_leader, topic, old_epoch);
        if let Some((_, leader, epoch, _)) = current {
            if epoch > new_epoch && (leader != old_leader || newer_led_here) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no leader after {new_epoch} once the controller was back: {current:?}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (leader, _, _) = cluster.wait_for(old_leader, topic, "leader", |_, e, _| e > new_epoch);
    // Nothing acknowledged was lost to the restarted broker's stale view.
    produce_until_ok(
        cluster.broker(leader),
        topic,
        batch("c", 2, 20),
        "produce after the restart",
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let vals = loop {
        let (code, vals) = fetch(cluster.broker(leader), topic);
        if code == 0 && vals.iter().any(|v| v.starts_with("c-")) {
            break vals;
        }
        assert!(Instant::now() < deadline, "fetch after restart: {code}");
        std::thread::sleep(Duration::from_millis(100));
    };
    for (prefix, n) in [("a-", 5), ("b-", 3)] {
        assert_eq!(
            vals.iter().filter(|v| v.starts_with(prefix)).count(),
            n,
            "acknowledged {prefix} records: {vals:?}"
        );
    }
    assert!(
        !vals.iter().any(|v| v.starts_with("stale-")),
        "a stale leader's write survived: {vals:?}"
    );
}

#[test]
fn isr_restarted_broker_does_not_lead_a_superseded_epoch() {
    run("isr");
}

#[test]
fn quorum_restarted_broker_does_not_lead_a_superseded_epoch() {
    run("quorum");
}
