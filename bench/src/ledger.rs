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
    consumed: BitSet,
    duplicates: u64,
}

/// The run's ledger of acknowledged and consumed messages.
#[derive(Debug)]
pub struct Ledger {
    producers: Vec<Mutex<ProducerLedger>>,
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
    /// Distinct messages of this run consumed.
    pub consumed: u64,
    /// Messages consumed more than once.
    pub duplicates: u64,
    /// Acknowledged messages never consumed.
    pub lost: u64,
    /// Messages consumed that were never acknowledged (e.g. a timed-out request that was
    /// written anyway): not an error, but reported.
    pub consumed_unacked: u64,
    /// True when no acknowledged message was lost and none was duplicated.
    pub ok: bool,
}

impl Ledger {
    /// A ledger for `producers` producers.
    pub fn new(producers: usize) -> Self {
        Ledger {
            producers: (0..producers).map(|_| Mutex::default()).collect(),
        }
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

    /// Marks one message consumed; returns false if it is not from a known producer.
    pub fn consume(&self, producer: u32, sequence: u64) -> bool {
        self.with(producer, |l| {
            if l.consumed.set(sequence) {
                l.duplicates += 1;
            }
        })
        .is_some()
    }

    /// Acknowledged messages so far.
    pub fn acked(&self) -> u64 {
        (0..self.producers.len() as u32)
            .filter_map(|p| self.with(p, |l| l.acked.count()))
            .sum()
    }

    /// Distinct consumed messages so far.
    pub fn consumed(&self) -> u64 {
        (0..self.producers.len() as u32)
            .filter_map(|p| self.with(p, |l| l.consumed.count()))
            .sum()
    }

    /// Acknowledged but not (yet) consumed.
    pub fn missing(&self) -> u64 {
        (0..self.producers.len() as u32)
            .filter_map(|p| self.with(p, |l| l.acked.count_minus(&l.consumed)))
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
                r.consumed += l.consumed.count();
                r.duplicates += l.duplicates;
                r.lost += l.acked.count_minus(&l.consumed);
                r.consumed_unacked += l.consumed.count_minus(&l.acked);
            });
        }
        r.ok = r.lost == 0 && r.duplicates == 0;
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
}
