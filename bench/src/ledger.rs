//! Reconciliation: which messages were acknowledged and which were consumed, per producer and
//! sequence number, so that a run can state exactly how many acknowledged messages were lost,
//! duplicated, or read without an acknowledgement.

use serde::{Deserialize, Serialize};
use std::sync::Mutex;

/// A growable bit set indexed by sequence number.
#[derive(Debug, Default, Clone)]
pub struct BitSet {
    words: Vec<u64>,
}

impl BitSet {
    /// Sets bit `i`; returns whether it was already set.
    pub fn set(&mut self, i: u64) -> bool {
        let w = (i / 64) as usize;
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        let mask = 1u64 << (i % 64);
        let was = self.words[w] & mask != 0;
        self.words[w] |= mask;
        was
    }

    /// Whether bit `i` is set.
    pub fn get(&self, i: u64) -> bool {
        let w = (i / 64) as usize;
        self.words
            .get(w)
            .is_some_and(|x| x & (1u64 << (i % 64)) != 0)
    }

    /// Number of bits set.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| w.count_ones() as u64).sum()
    }

    /// Bits set here and not in `other`.
    pub fn count_minus(&self, other: &BitSet) -> u64 {
        self.words
            .iter()
            .enumerate()
            .map(|(i, w)| (w & !other.words.get(i).copied().unwrap_or(0)).count_ones() as u64)
            .sum()
    }
}

#[derive(Debug, Default)]
struct ProducerLedger {
    acked: BitSet,
    /// One set per subscription: each subscription reads every message once.
    consumed: Vec<BitSet>,
    duplicates: u64,
    rebalance_duplicates: u64,
}

/// The run's ledger of acknowledged and consumed messages.
#[derive(Debug)]
pub struct Ledger {
    producers: Vec<Mutex<ProducerLedger>>,
    subscriptions: usize,
}

/// The reconciliation reported at the end of every run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Reconciliation {
    /// Messages written to the broker (requests sent).
    pub sent: u64,
    /// Messages the broker acknowledged (with acks=0: written to the socket).
    pub acked: u64,
    /// Messages whose produce request failed or timed out.
    pub failed: u64,
    /// Distinct messages of this run consumed, summed over subscriptions (each subscription
    /// reads every message: `acked x subscriptions` when nothing is lost).
    pub consumed: u64,
    /// Messages consumed more than once.
    pub duplicates: u64,
    /// Of `duplicates`, those read again by a group member from its committed offset after a
    /// rebalance, below what a previous owner had already read (at-least-once delivery, as
    /// a Kafka consumer group gives when a commit did not land before the partition moved).
    #[serde(default)]
    pub rebalance_duplicates: u64,
    /// Acknowledged messages never consumed, summed over subscriptions.
    pub lost: u64,
    /// Messages consumed that were never acknowledged (e.g. a timed-out request that was
    /// written anyway): not an error, but reported.
    pub consumed_unacked: u64,
    /// True when no acknowledged message was lost and none was duplicated except by a replay
    /// after a rebalance.
    pub ok: bool,
}

impl Ledger {
    /// A ledger for `producers` producers read by one subscription.
    pub fn new(producers: usize) -> Self {
        Self::with_subscriptions(producers, 1)
    }

    /// A ledger for `producers` producers whose messages `subscriptions` subscriptions each
    /// read in full (OMB's `subscriptionsPerTopic`).
    pub fn with_subscriptions(producers: usize, subscriptions: usize) -> Self {
        let subscriptions = subscriptions.max(1);
        Ledger {
            producers: (0..producers)
                .map(|_| {
                    Mutex::new(ProducerLedger {
                        consumed: vec![BitSet::default(); subscriptions],
                        ..Default::default()
                    })
                })
                .collect(),
            subscriptions,
        }
    }

    /// Number of subscriptions.
    pub fn subscriptions(&self) -> usize {
        self.subscriptions
    }

    fn with<R>(&self, producer: u32, f: impl FnOnce(&mut ProducerLedger) -> R) -> Option<R> {
        let slot = self.producers.get(producer as usize)?;
        let mut guard = slot.lock().unwrap_or_else(|e| e.into_inner());
        Some(f(&mut guard))
    }

    /// Marks sequences acknowledged.
    pub fn ack(&self, producer: u32, sequences: impl IntoIterator<Item = u64>) {
        self.with(producer, |l| {
            for s in sequences {
                l.acked.set(s);
            }
        });
    }

    /// Marks one message consumed by subscription 0; returns false if it is not from a known
    /// producer.
    pub fn consume(&self, producer: u32, sequence: u64) -> bool {
        self.consume_at(0, producer, sequence, false)
    }

    /// Marks one message consumed by `subscription`; `replay` says it was read at an offset a
    /// previous owner of the partition had already read (after a rebalance), so a repeat is
    /// counted as a rebalance duplicate. Returns false if the producer or subscription is
    /// unknown.
    pub fn consume_at(
        &self,
        subscription: u32,
        producer: u32,
        sequence: u64,
        replay: bool,
    ) -> bool {
        self.with(producer, |l| {
            let Some(set) = l.consumed.get_mut(subscription as usize) else {
                return false;
            };
            if set.set(sequence) {
                l.duplicates += 1;
                if replay {
                    l.rebalance_duplicates += 1;
                }
            }
            true
        })
        .unwrap_or(false)
    }

    /// Acknowledged messages so far.
    pub fn acked(&self) -> u64 {
        (0..self.producers.len() as u32)
            .filter_map(|p| self.with(p, |l| l.acked.count()))
            .sum()
    }

    /// Distinct consumed messages so far, summed over subscriptions.
    pub fn consumed(&self) -> u64 {
        (0..self.producers.len() as u32)
            .filter_map(|p| self.with(p, |l| l.consumed.iter().map(BitSet::count).sum::<u64>()))
            .sum()
    }

    /// Acknowledged but not (yet) consumed, summed over subscriptions.
    pub fn missing(&self) -> u64 {
        (0..self.producers.len() as u32)
            .filter_map(|p| {
                self.with(p, |l| {
                    l.consumed
                        .iter()
                        .map(|c| l.acked.count_minus(c))
                        .sum::<u64>()
                })
            })
            .sum()
    }

    /// The final reconciliation, given the producers' sent and failed counts.
    pub fn reconcile(&self, sent: u64, failed: u64) -> Reconciliation {
        let mut r = Reconciliation {
            sent,
            failed,
            ..Default::default()
        };
        for p in 0..self.producers.len() as u32 {
            self.with(p, |l| {
                r.acked += l.acked.count();
                r.duplicates += l.duplicates;
                r.rebalance_duplicates += l.rebalance_duplicates;
                for c in &l.consumed {
                    r.consumed += c.count();
                    r.lost += l.acked.count_minus(c);
                    r.consumed_unacked += c.count_minus(&l.acked);
                }
            });
        }
        debug_assert!(r.rebalance_duplicates <= r.duplicates);
        r.ok = r.lost == 0 && r.duplicates == r.rebalance_duplicates;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciliation_counts_lost_duplicates_and_unacked() {
        let l = Ledger::new(2);
        l.ack(0, 0..100);
        l.ack(1, 0..50);
        for s in 0..100 {
            if s != 7 {
                assert!(l.consume(0, s));
            }
        }
        for s in 0..55 {
            l.consume(1, s);
        }
        l.consume(1, 3);
        assert!(!l.consume(9, 0));
        let r = l.reconcile(160, 10);
        assert_eq!(r.acked, 150);
        assert_eq!(r.consumed, 99 + 55);
        assert_eq!(r.lost, 1);
        assert_eq!(r.duplicates, 1);
        assert_eq!(r.consumed_unacked, 5);
        assert!(!r.ok);
        assert_eq!(l.missing(), 1);
    }

    #[test]
    fn replays_after_a_rebalance_are_duplicates_but_not_a_mismatch() {
        let l = Ledger::new(1);
        l.ack(0, 0..10);
        for s in 0..10 {
            l.consume(0, s);
        }
        // The new owner re-reads 5..10 from the committed offset: replays.
        for s in 5..10 {
            l.consume_at(0, 0, s, true);
        }
        let r = l.reconcile(10, 0);
        assert_eq!((r.duplicates, r.rebalance_duplicates, r.lost), (5, 5, 0));
        assert!(r.ok, "{r:?}");
        // A repeat outside a replay range is a real duplicate.
        l.consume_at(0, 0, 0, false);
        let r = l.reconcile(10, 0);
        assert_eq!((r.duplicates, r.rebalance_duplicates), (6, 5));
        assert!(!r.ok);
        // A first read in a replay range is not a duplicate at all.
        let l = Ledger::new(1);
        l.ack(0, 0..1);
        l.consume_at(0, 0, 0, true);
        assert_eq!(l.reconcile(1, 0).duplicates, 0);
    }

    #[test]
    fn each_subscription_reads_every_message_once() {
        let l = Ledger::with_subscriptions(1, 2);
        l.ack(0, 0..4);
        for s in 0..4 {
            assert!(l.consume_at(0, 0, s, false));
        }
        for s in 0..3 {
            assert!(l.consume_at(1, 0, s, false));
        }
        assert!(!l.consume_at(2, 0, 0, false));
        assert_eq!(l.missing(), 1);
        let r = l.reconcile(4, 0);
        assert_eq!((r.acked, r.consumed, r.lost, r.duplicates), (4, 7, 1, 0));
        assert!(!r.ok);
        assert!(l.consume_at(1, 0, 3, false));
        assert!(l.reconcile(4, 0).ok);
    }
}
