//! Producer-state checks for a whole produce record set, as the log's append path needs them.
//!
//! A produce request carries one or more batches for a partition; the second batch of a
//! producer must be checked against the state the first one leaves. [`ProducerStateTable::
//! analyze_append`] runs the checks on a scratch copy of the producers involved (nothing
//! changes in the table) and [`ProducerStateTable::commit_append`] applies the result once the
//! log has reserved the offsets. The log calls both in one synchronous section, so the
//! commit can only fail on a shell bug, which the stamps detect.

use super::state::{
    BatchHeader, BatchMetadata, CheckOutcome, ProducerStateError, ProducerStateTable,
    NO_PRODUCER_ID,
};

/// The verdict on a record set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendAnalysis {
    /// No batch carries a producer id: nothing to track.
    NotIdempotent,
    /// Append the record set, then hand this to [`ProducerStateTable::commit_append`].
    Append(ProducerAppend),
    /// A batch is already stored: acknowledge with its offsets and write nothing.
    Duplicate(BatchMetadata),
}

/// Checked producer batches with the offsets they will get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerAppend {
    /// (header, base offset) of every idempotent batch, in log order.
    batches: Vec<(BatchHeader, i64)>,
    /// Stamp of each touched producer's entry at analysis time (None: no entry).
    stamps: Vec<(i64, Option<u64>)>,
    /// Offset after the record set.
    end_offset: i64,
}

impl ProducerAppend {
    /// Offset after the record set.
    pub fn end_offset(&self) -> i64 {
        self.end_offset
    }
}

impl ProducerStateTable {
    /// Checks the batches of one record set that will start at `first_offset`. Like Kafka's
    /// `analyzeAndValidateProducerState`, a duplicate anywhere answers for the whole set.
    pub fn analyze_append(
        &self,
        batches: &[BatchHeader],
        first_offset: i64,
    ) -> Result<AppendAnalysis, ProducerStateError> {
        let mut offset = first_offset;
        let mut placed = Vec::with_capacity(batches.len());
        for h in batches {
            placed.push((*h, offset));
            offset += i64::from(h.last_offset_delta) + 1;
        }
        let end_offset = offset;
        let idempotent = placed
            .iter()
            .filter(|(h, _)| h.producer_id != NO_PRODUCER_ID)
            .count();
        if idempotent == 0 {
            return Ok(AppendAnalysis::NotIdempotent);
        }
        let mut stamps: Vec<(i64, Option<u64>)> = Vec::new();
        for (h, _) in placed
            .iter()
            .filter(|(h, _)| h.producer_id != NO_PRODUCER_ID)
        {
            if !stamps.iter().any(|(p, _)| *p == h.producer_id) {
                stamps.push((h.producer_id, self.stamp_of(h.producer_id)));
            }
        }
        let single = placed
            .iter()
            .filter(|(h, _)| h.producer_id != NO_PRODUCER_ID)
            .map(|(h, _)| *h)
            .next();
        match single {
            // The common case (one batch per partition per request): no scratch copy.
            Some(h) if idempotent == 1 => {
                if let CheckOutcome::Duplicate(meta) = self.check(&h)? {
                    return Ok(AppendAnalysis::Duplicate(meta));
                }
            }
            _ => {
                let mut scratch = self.subset(stamps.iter().map(|(p, _)| *p));
                for (h, base) in &placed {
                    match scratch.check(h)? {
                        CheckOutcome::NotIdempotent => {}
                        CheckOutcome::Duplicate(meta) => {
                            return Ok(AppendAnalysis::Duplicate(meta))
                        }
                        CheckOutcome::Append(ticket) => {
                            scratch.update(ticket, *base)?;
                        }
                    }
                }
            }
        }
        placed.retain(|(h, _)| h.producer_id != NO_PRODUCER_ID);
        Ok(AppendAnalysis::Append(ProducerAppend {
            batches: placed,
            stamps,
            end_offset,
        }))
    }

    /// Records an analysed record set. Fails (changing nothing) if a producer's state changed
    /// since the analysis.
    pub fn commit_append(&mut self, append: ProducerAppend) -> Result<(), ProducerStateError> {
        for (pid, stamp) in &append.stamps {
            if self.stamp_of(*pid) != *stamp {
                return Err(ProducerStateError::StaleTicket(*pid));
            }
        }
        for (h, base) in &append.batches {
            self.apply_checked(h, *base);
        }
        self.advance_end_offset(append.end_offset);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::state::DEFAULT_PRODUCER_ID_EXPIRATION_MS;
    use super::*;

    fn batch(pid: i64, epoch: i16, seq: i32, count: i32) -> BatchHeader {
        BatchHeader {
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            last_offset_delta: count - 1,
            max_timestamp_ms: 1_000,
            transactional: false,
        }
    }

    #[test]
    fn single_batch_append_duplicate_and_errors() {
        let mut t = ProducerStateTable::new(DEFAULT_PRODUCER_ID_EXPIRATION_MS);
        let AppendAnalysis::Append(a) = t.analyze_append(&[batch(5, 0, 0, 3)], 10).unwrap() else {
            panic!("expected append")
        };
        assert_eq!(a.end_offset(), 13);
        t.commit_append(a).unwrap();
        assert_eq!(t.end_offset(), 13);
        assert_eq!(
            t.analyze_append(&[batch(5, 0, 0, 3)], 13),
            Ok(AppendAnalysis::Duplicate(BatchMetadata {
                first_seq: 0,
                last_seq: 2,
                first_offset: 10,
                last_offset: 12,
                timestamp_ms: 1_000
            }))
        );
        assert_eq!(
            t.analyze_append(&[batch(5, 0, 4, 1)], 13)
                .unwrap_err()
                .error_code(),
            45
        );
        assert_eq!(
            t.analyze_append(&[batch(NO_PRODUCER_ID, -1, -1, 2)], 13),
            Ok(AppendAnalysis::NotIdempotent)
        );
    }

    #[test]
    fn several_batches_of_one_producer_in_one_set() {
        let mut t = ProducerStateTable::new(DEFAULT_PRODUCER_ID_EXPIRATION_MS);
        let set = [
            batch(1, 0, 0, 2),
            batch(NO_PRODUCER_ID, -1, -1, 1),
            batch(1, 0, 2, 2),
            batch(2, 0, 0, 1),
        ];
        let AppendAnalysis::Append(a) = t.analyze_append(&set, 0).unwrap() else {
            panic!("expected append")
        };
        assert!(t.is_empty(), "analysis changes nothing");
        t.commit_append(a).unwrap();
        assert_eq!(t.entry(1).unwrap().last_seq(), Some(3));
        assert_eq!(t.entry(1).unwrap().batches[1].first_offset, 3);
        assert_eq!(t.entry(2).unwrap().batches[0].first_offset, 5);
        assert_eq!(t.end_offset(), 6);
        // A gap in the second batch refuses the whole set and changes nothing.
        let before = t.clone();
        let bad = [batch(1, 0, 4, 1), batch(1, 0, 9, 1)];
        assert_eq!(t.analyze_append(&bad, 6).unwrap_err().error_code(), 45);
        assert_eq!(t, before);
    }

    #[test]
    fn stale_analysis_is_refused() {
        let mut t = ProducerStateTable::new(DEFAULT_PRODUCER_ID_EXPIRATION_MS);
        let AppendAnalysis::Append(a) = t.analyze_append(&[batch(1, 0, 0, 1)], 0).unwrap() else {
            panic!()
        };
        let AppendAnalysis::Append(b) = t.analyze_append(&[batch(1, 0, 0, 1)], 0).unwrap() else {
            panic!()
        };
        t.commit_append(a).unwrap();
        assert_eq!(t.commit_append(b), Err(ProducerStateError::StaleTicket(1)));
    }
}
