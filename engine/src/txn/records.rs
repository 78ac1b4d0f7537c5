//! `__transaction_state` records in Kafka's schemas: `TransactionLogKey` v0 (the
//! transactional id) and `TransactionLogValue` v0 (written) / v1 (read too), so a log written
//! by Sluice reads as Kafka's and the other way round.

use std::collections::BTreeSet;

use bytes::{BufMut, Bytes, BytesMut};

use crate::group::records::{put_string, Reader, RecordError};

/// Where a transaction stands (Kafka's `TransactionState`, with its on-disk ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxnStatus {
    /// No transaction is open (after InitProducerId).
    Empty,
    /// Partitions were added; records may be in the log.
    Ongoing,
    /// EndTxn(commit) was accepted; markers are being written.
    PrepareCommit,
    /// EndTxn(abort), a timeout or a fencing InitProducerId; markers are being written.
    PrepareAbort,
    /// Every partition has its COMMIT marker.
    CompleteCommit,
    /// Every partition has its ABORT marker.
    CompleteAbort,
    /// The transactional id expired (`transactional.id.expiration.ms`).
    Dead,
    /// An ongoing transaction is being aborted with a bumped epoch (fencing).
    PrepareEpochFence,
}

impl TxnStatus {
    /// The id stored in `TransactionLogValue.TransactionStatus`.
    pub fn id(self) -> i8 {
        match self {
            TxnStatus::Empty => 0,
            TxnStatus::Ongoing => 1,
            TxnStatus::PrepareCommit => 2,
            TxnStatus::PrepareAbort => 3,
            TxnStatus::CompleteCommit => 4,
            TxnStatus::CompleteAbort => 5,
            TxnStatus::Dead => 6,
            TxnStatus::PrepareEpochFence => 7,
        }
    }

    /// The status of a stored id.
    pub fn from_id(id: i8) -> Option<TxnStatus> {
        Some(match id {
            0 => TxnStatus::Empty,
            1 => TxnStatus::Ongoing,
            2 => TxnStatus::PrepareCommit,
            3 => TxnStatus::PrepareAbort,
            4 => TxnStatus::CompleteCommit,
            5 => TxnStatus::CompleteAbort,
            6 => TxnStatus::Dead,
            7 => TxnStatus::PrepareEpochFence,
            _ => return None,
        })
    }

    /// The name DescribeTransactions and ListTransactions give (Kafka's `stateName`).
    pub fn name(self) -> &'static str {
        match self {
            TxnStatus::Empty => "Empty",
            TxnStatus::Ongoing => "Ongoing",
            TxnStatus::PrepareCommit => "PrepareCommit",
            TxnStatus::PrepareAbort => "PrepareAbort",
            TxnStatus::CompleteCommit => "CompleteCommit",
            TxnStatus::CompleteAbort => "CompleteAbort",
            TxnStatus::Dead => "Dead",
            TxnStatus::PrepareEpochFence => "PrepareEpochFence",
        }
    }

    /// The status a ListTransactions state filter names (case as Kafka's).
    pub fn from_name(name: &str) -> Option<TxnStatus> {
        [
            TxnStatus::Empty,
            TxnStatus::Ongoing,
            TxnStatus::PrepareCommit,
            TxnStatus::PrepareAbort,
            TxnStatus::CompleteCommit,
            TxnStatus::CompleteAbort,
            TxnStatus::Dead,
            TxnStatus::PrepareEpochFence,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }
}

/// A `TransactionLogValue`: one transactional id's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnLogValue {
    /// The producer id.
    pub producer_id: i64,
    /// The producer epoch.
    pub producer_epoch: i16,
    /// `transaction.timeout.ms` the producer asked for.
    pub timeout_ms: i32,
    /// The transaction's status.
    pub status: TxnStatus,
    /// Partitions of the transaction (empty when none is open).
    pub partitions: BTreeSet<(String, i32)>,
    /// When the state last changed.
    pub last_update_ms: i64,
    /// When the open transaction started (-1 when none).
    pub start_ms: i64,
}

/// Encodes `TransactionLogKey` v0.
pub fn encode_key(transactional_id: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(2 + 2 + transactional_id.len());
    buf.put_i16(0);
    put_string(&mut buf, transactional_id);
    buf.freeze()
}

/// Decodes a `TransactionLogKey` (v0 and the flexible v1 layout).
pub fn decode_key(bytes: &[u8]) -> Result<String, RecordError> {
    let mut r = Reader::new(bytes);
    match r.i16()? {
        0 => r.string(),
        1 => r.compact_string(),
        v => Err(RecordError::UnsupportedVersion {
            what: "TransactionLogKey",
            version: v,
        }),
    }
}

impl TxnLogValue {
    /// Encodes as `TransactionLogValue` v0 (partitions grouped by topic).
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::new();
        buf.put_i16(0);
        buf.put_i64(self.producer_id);
        buf.put_i16(self.producer_epoch);
        buf.put_i32(self.timeout_ms);
        buf.put_i8(self.status.id());
        let mut topics: Vec<(&str, Vec<i32>)> = Vec::new();
        for (t, p) in &self.partitions {
            match topics.last_mut() {
                Some((last, ps)) if *last == t.as_str() => ps.push(*p),
                _ => topics.push((t.as_str(), vec![*p])),
            }
        }
        buf.put_i32(topics.len() as i32);
        for (t, ps) in topics {
            put_string(&mut buf, t);
            buf.put_i32(ps.len() as i32);
            for p in ps {
                buf.put_i32(p);
            }
        }
        buf.put_i64(self.last_update_ms);
        buf.put_i64(self.start_ms);
        buf.freeze()
    }

    /// Decodes `TransactionLogValue` v0 or v1 (flexible; its tagged fields are skipped).
    pub fn decode(bytes: &[u8]) -> Result<TxnLogValue, RecordError> {
        let mut r = Reader::new(bytes);
        let version = r.i16()?;
        if !(0..=1).contains(&version) {
            return Err(RecordError::UnsupportedVersion {
                what: "TransactionLogValue",
                version,
            });
        }
        let flexible = version >= 1;
        let producer_id = r.i64()?;
        let producer_epoch = r.i16()?;
        let timeout_ms = r.i32()?;
        let at = r.pos();
        let status_id = i8::from_be_bytes(r.array::<1>()?);
        let status = TxnStatus::from_id(status_id).ok_or(RecordError::InvalidLength {
            len: i64::from(status_id),
            at,
        })?;
        let mut partitions = BTreeSet::new();
        // A null array (-1, or 0 in the compact form) means no partitions.
        let topics = if flexible {
            match r.unsigned_varint()? {
                0 => 0,
                n => checked_count(&r, n as usize - 1)?,
            }
        } else {
            match r.i32()? {
                -1 => 0,
                n if n < 0 => {
                    return Err(RecordError::InvalidLength {
                        len: i64::from(n),
                        at: r.pos(),
                    })
                }
                n => checked_count(&r, n as usize)?,
            }
        };
        for _ in 0..topics {
            let topic = if flexible {
                r.compact_string()?
            } else {
                r.string()?
            };
            let count = if flexible {
                r.compact_len()?
            } else {
                r.array_len()?
            };
            for _ in 0..count {
                partitions.insert((topic.clone(), r.i32()?));
            }
            if flexible {
                r.skip_tagged_fields()?;
            }
        }
        let last_update_ms = r.i64()?;
        let start_ms = r.i64()?;
        if flexible {
            r.skip_tagged_fields()?;
        }
        Ok(TxnLogValue {
            producer_id,
            producer_epoch,
            timeout_ms,
            status,
            partitions,
            last_update_ms,
            start_ms,
        })
    }
}

/// A count read from the buffer, refused when the rest of it could not hold that many
/// elements of at least one byte each.
fn checked_count(r: &Reader<'_>, n: usize) -> Result<usize, RecordError> {
    if n > r.remaining() {
        return Err(RecordError::InvalidLength {
            len: n as i64,
            at: r.pos(),
        });
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value() -> TxnLogValue {
        TxnLogValue {
            producer_id: 4000,
            producer_epoch: 3,
            timeout_ms: 60_000,
            status: TxnStatus::Ongoing,
            partitions: [
                ("a".to_string(), 1),
                ("a".to_string(), 0),
                ("b".to_string(), 7),
            ]
            .into_iter()
            .collect(),
            last_update_ms: 1_700_000_000_123,
            start_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn key_and_value_round_trip_in_kafkas_layout() {
        let key = encode_key("tx-1");
        assert_eq!(&key[..], &[0, 0, 0, 4, b't', b'x', b'-', b'1']);
        assert_eq!(decode_key(&key).unwrap(), "tx-1");
        let v = value();
        let bytes = v.encode();
        // version, pid, epoch, timeout, status, 2 topics: "a" [0, 1], "b" [7], two timestamps.
        assert_eq!(
            bytes.len(),
            2 + 8 + 2 + 4 + 1 + 4 + (3 + 4 + 8) + (3 + 4 + 4) + 16
        );
        assert_eq!(TxnLogValue::decode(&bytes).unwrap(), v);
    }

    #[test]
    fn flexible_v1_values_decode() {
        let mut buf = BytesMut::new();
        buf.put_i16(1);
        buf.put_i64(7);
        buf.put_i16(2);
        buf.put_i32(1000);
        buf.put_i8(TxnStatus::PrepareCommit.id());
        buf.put_u8(2); // one topic
        buf.put_u8(2); // "t"
        buf.put_u8(b't');
        buf.put_u8(3); // two partitions
        buf.put_i32(0);
        buf.put_i32(5);
        buf.put_u8(0); // topic tagged fields
        buf.put_i64(11);
        buf.put_i64(10);
        buf.put_u8(1); // one tagged field (e.g. PreviousProducerId)
        buf.put_u8(0);
        buf.put_u8(8);
        buf.put_i64(6);
        let v = TxnLogValue::decode(&buf).unwrap();
        assert_eq!(v.status, TxnStatus::PrepareCommit);
        assert_eq!(v.producer_epoch, 2);
        assert_eq!(
            v.partitions.into_iter().collect::<Vec<_>>(),
            vec![("t".to_string(), 0), ("t".to_string(), 5)]
        );
        assert_eq!((v.last_update_ms, v.start_ms), (11, 10));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let good = value().encode();
        for cut in 0..good.len() {
            assert!(TxnLogValue::decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = good.to_vec();
        bad[16] = 42; // status
        assert!(TxnLogValue::decode(&bad).is_err());
        let mut huge = good.to_vec();
        huge[17..21].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(TxnLogValue::decode(&huge).is_err());
        assert!(decode_key(&[0, 9]).is_err());
        assert!(decode_key(&[0, 5, 0, 1, b'x']).is_err());
    }

    #[test]
    fn statuses_round_trip_by_id_and_name() {
        for id in 0..8 {
            let s = TxnStatus::from_id(id).unwrap();
            assert_eq!(s.id(), id);
            assert_eq!(TxnStatus::from_name(s.name()), Some(s));
        }
        assert_eq!(TxnStatus::from_id(8), None);
    }
}
