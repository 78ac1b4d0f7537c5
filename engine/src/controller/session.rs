//! Broker sessions, kept in memory by the controller leader only (as KRaft does): a broker
//! that does not heartbeat for `broker.session.timeout.ms` expires, like a ZooKeeper ephemeral
//! node, and the leader writes a `FenceBroker` command. Sans-IO: the caller passes the time.

use std::collections::BTreeMap;

use crate::replication::{BrokerId, Millis};

/// Last heartbeat per broker, on the controller leader.
#[derive(Debug, Clone)]
pub struct BrokerSessions {
    timeout_ms: Millis,
    sessions: BTreeMap<BrokerId, (i64, Millis)>,
}

impl BrokerSessions {
    /// Sessions expiring after `timeout_ms` without a heartbeat.
    pub fn new(timeout_ms: Millis) -> Self {
        BrokerSessions {
            timeout_ms,
            sessions: BTreeMap::new(),
        }
    }

    /// A heartbeat from `broker` at registration `broker_epoch`.
    pub fn heartbeat(&mut self, broker: BrokerId, broker_epoch: i64, now: Millis) {
        self.sessions.insert(broker, (broker_epoch, now));
    }

    /// Starts a session for a live broker the leader has not heard from yet (a new leader
    /// gives every live broker one full timeout, as a new ZooKeeper leader does).
    pub fn ensure(&mut self, broker: BrokerId, broker_epoch: i64, now: Millis) {
        match self.sessions.get(&broker) {
            Some(&(epoch, _)) if epoch == broker_epoch => {}
            _ => {
                self.sessions.insert(broker, (broker_epoch, now));
            }
        }
    }

    /// Forgets every session (this node stopped leading).
    pub fn clear(&mut self) {
        self.sessions.clear();
    }

    /// Forgets one broker (it was fenced).
    pub fn remove(&mut self, broker: BrokerId) {
        self.sessions.remove(&broker);
    }

    /// Brokers whose session has expired at `now`, with the registration epoch to fence.
    pub fn expired(&self, now: Millis) -> Vec<(BrokerId, i64)> {
        self.sessions
            .iter()
            .filter(|(_, &(_, last))| now.saturating_sub(last) > self.timeout_ms)
            .map(|(&b, &(epoch, _))| (b, epoch))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_expires_after_timeout_and_heartbeat_renews() {
        let mut s = BrokerSessions::new(100);
        s.heartbeat(1, 7, 0);
        s.ensure(2, 9, 50);
        assert!(s.expired(100).is_empty());
        assert_eq!(s.expired(101), vec![(1, 7)]);
        s.heartbeat(1, 7, 101);
        assert_eq!(s.expired(151), vec![(2, 9)]);
        s.ensure(2, 9, 151);
        assert_eq!(
            s.expired(151),
            vec![(2, 9)],
            "ensure keeps an existing session"
        );
        s.remove(2);
        assert!(s.expired(151).is_empty());
    }
}
