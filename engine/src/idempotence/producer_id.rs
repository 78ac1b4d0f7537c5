//! Producer id allocation for InitProducerId, sans-IO.
//!
//! Ids are handed out from blocks whose upper bound (the high-water mark) is persisted
//! *before* any id of the block is used, so a crash can skip ids but never reuse one. The
//! shell stores the mark in a small file (see [`encode_high_water_mark`]) and reports back
//! with [`ProducerIdManager::on_persisted`].

use std::collections::VecDeque;

use bytes::{Buf, BufMut};

/// How many ids one persisted reservation covers.
pub const DEFAULT_PRODUCER_ID_BLOCK_SIZE: i64 = 1000;

/// Error codes InitProducerId answers with.
pub mod codes {
    /// No error.
    pub const NONE: i16 = 0;
    /// The broker could not reserve ids (disk failure); the client retries.
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    /// Malformed request (empty transactional id).
    pub const INVALID_REQUEST: i16 = 42;
    /// Transactions are not supported.
    pub const UNSUPPORTED_VERSION: i16 = 35;
    /// The id space is exhausted.
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
}

/// The InitProducerId fields that matter without transactions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitProducerId {
    /// Transactional id: None for an idempotent-only producer.
    pub transactional_id: Option<String>,
    /// v3+: the producer's current id, -1 if none.
    pub producer_id: i64,
    /// v3+: the producer's current epoch, -1 if none.
    pub producer_epoch: i16,
}

/// InitProducerId response fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitProducerIdResult {
    /// Error code.
    pub error: i16,
    /// Allocated producer id, -1 on error.
    pub producer_id: i64,
    /// Epoch, -1 on error.
    pub producer_epoch: i16,
}

impl InitProducerIdResult {
    fn error(error: i16) -> Self {
        InitProducerIdResult {
            error,
            producer_id: -1,
            producer_epoch: -1,
        }
    }
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProducerIdAction {
    /// Durably store `high_water_mark` (fsync), then call `on_persisted`.
    PersistHighWaterMark {
        /// Every id below this may have been handed out.
        high_water_mark: i64,
    },
    /// Answer the InitProducerId identified by `token`.
    Respond {
        /// The request's token.
        token: u64,
        /// The response.
        result: InitProducerIdResult,
    },
}

/// Allocates producer ids that are never reused, across restarts.
#[derive(Debug)]
pub struct ProducerIdManager {
    next_id: i64,
    /// Ids below this are durably reserved.
    reserved_end: i64,
    block_size: i64,
    /// Ids at or above this are never handed out (this broker's share of the id space).
    limit: i64,
    persisting: Option<i64>,
    waiting: VecDeque<u64>,
}

impl ProducerIdManager {
    /// Starts from the persisted high-water mark (None on a fresh broker).
    pub fn new(persisted_high_water_mark: Option<i64>, block_size: i64) -> Self {
        Self::with_range(persisted_high_water_mark, block_size, 0..i64::MAX)
    }

    /// Like [`ProducerIdManager::new`], handing out ids only from `range`. In a cluster each
    /// broker gets its own range, so two brokers never give the same id to two producers.
    pub fn with_range(
        persisted_high_water_mark: Option<i64>,
        block_size: i64,
        range: std::ops::Range<i64>,
    ) -> Self {
        let start = persisted_high_water_mark
            .unwrap_or(0)
            .max(range.start)
            .max(0);
        ProducerIdManager {
            next_id: start,
            reserved_end: start,
            block_size: block_size.max(1),
            limit: range.end,
            persisting: None,
            waiting: VecDeque::new(),
        }
    }

    /// The next id that would be handed out.
    pub fn next_id(&self) -> i64 {
        self.next_id
    }

    /// Handles InitProducerId. An idempotent producer always gets a fresh id with epoch 0, as
    /// Kafka's coordinator does for a null transactional id (the client bumps epochs of its
    /// own id locally, which the partition's producer state accepts).
    pub fn init_producer_id(&mut self, token: u64, req: &InitProducerId) -> Vec<ProducerIdAction> {
        match req.transactional_id.as_deref() {
            Some("") => {
                return vec![respond(
                    token,
                    InitProducerIdResult::error(codes::INVALID_REQUEST),
                )]
            }
            Some(_) => {
                return vec![respond(
                    token,
                    InitProducerIdResult::error(codes::UNSUPPORTED_VERSION),
                )]
            }
            None => {}
        }
        self.waiting.push_back(token);
        self.drain()
    }

    /// The shell stored (or failed to store) `high_water_mark`.
    pub fn on_persisted(
        &mut self,
        high_water_mark: i64,
        result: Result<(), ()>,
    ) -> Vec<ProducerIdAction> {
        if self.persisting != Some(high_water_mark) {
            tracing::warn!(
                high_water_mark,
                "unexpected producer id persistence completion"
            );
            return Vec::new();
        }
        self.persisting = None;
        match result {
            Ok(()) => {
                assert!(
                    high_water_mark >= self.reserved_end,
                    "producer id mark went back"
                );
                self.reserved_end = high_water_mark;
                self.drain()
            }
            Err(()) => {
                // Nothing was reserved: fail the waiters, the next request tries again.
                self.fail_waiters()
            }
        }
    }

    /// Answers every waiting request COORDINATOR_NOT_AVAILABLE (nothing was reserved; the
    /// client's retry asks again).
    fn fail_waiters(&mut self) -> Vec<ProducerIdAction> {
        self.waiting
            .drain(..)
            .map(|t| {
                respond(
                    t,
                    InitProducerIdResult::error(codes::COORDINATOR_NOT_AVAILABLE),
                )
            })
            .collect()
    }

    /// The reservation asked for by `PersistHighWaterMark { high_water_mark }`
    /// was answered by the controller with the block `block` (Kafka's AllocateProducerIds),
    /// or failed. The block replaces the mark's range: ids come from `block` only.
    pub fn on_block_allocated(
        &mut self,
        high_water_mark: i64,
        block: Result<std::ops::Range<i64>, ()>,
    ) -> Vec<ProducerIdAction> {
        if self.persisting != Some(high_water_mark) {
            tracing::warn!(high_water_mark, "unexpected producer id block completion");
            return Vec::new();
        }
        self.persisting = None;
        match block {
            // Blocks only move forward: one below what this broker already used is refused.
            Ok(b) if b.start >= self.reserved_end && b.end > b.start && b.start >= 0 => {
                self.next_id = b.start;
                self.reserved_end = b.end;
                self.limit = i64::MAX;
                self.drain()
            }
            other => {
                if let Ok(b) = other {
                    tracing::error!(
                        start = b.start,
                        end = b.end,
                        used_up_to = self.reserved_end,
                        "controller returned a producer id block below ids already used; refused"
                    );
                }
                self.fail_waiters()
            }
        }
    }

    fn drain(&mut self) -> Vec<ProducerIdAction> {
        let mut out = Vec::new();
        while let Some(&token) = self.waiting.front() {
            if self.next_id < self.reserved_end {
                self.waiting.pop_front();
                let id = self.next_id;
                self.next_id += 1;
                out.push(respond(
                    token,
                    InitProducerIdResult {
                        error: codes::NONE,
                        producer_id: id,
                        producer_epoch: 0,
                    },
                ));
                continue;
            }
            if self.persisting.is_some() {
                break;
            }
            let mark = self
                .reserved_end
                .saturating_add(self.block_size)
                .min(self.limit);
            match (mark > self.reserved_end).then_some(mark) {
                Some(mark) => {
                    self.persisting = Some(mark);
                    out.push(ProducerIdAction::PersistHighWaterMark {
                        high_water_mark: mark,
                    });
                }
                None => {
                    self.waiting.pop_front();
                    out.push(respond(
                        token,
                        InitProducerIdResult::error(codes::UNKNOWN_SERVER_ERROR),
                    ));
                }
            }
            break;
        }
        out
    }
}

fn respond(token: u64, result: InitProducerIdResult) -> ProducerIdAction {
    ProducerIdAction::Respond { token, result }
}

/// InitProducerId request (v0-5) -> core.
pub fn init_producer_id_request(
    req: &kafka_protocol::messages::InitProducerIdRequest,
    version: i16,
) -> InitProducerId {
    InitProducerId {
        transactional_id: req
            .transactional_id
            .as_ref()
            .map(|t| t.0.as_str().to_owned()),
        producer_id: if version >= 3 { req.producer_id.0 } else { -1 },
        producer_epoch: if version >= 3 { req.producer_epoch } else { -1 },
    }
}

/// Core -> InitProducerId response.
pub fn init_producer_id_response(
    r: &InitProducerIdResult,
) -> kafka_protocol::messages::InitProducerIdResponse {
    kafka_protocol::messages::InitProducerIdResponse::default()
        .with_error_code(r.error)
        .with_producer_id(kafka_protocol::messages::ProducerId(r.producer_id))
        .with_producer_epoch(r.producer_epoch)
}

/// Format version of the high-water-mark file.
const MARK_FILE_VERSION: u16 = 1;

/// Why a high-water-mark file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MarkFileError {
    /// Wrong size.
    #[error("producer id file has {0} bytes, expected 14")]
    Length(usize),
    /// Unknown version.
    #[error("producer id file version {0} is not supported")]
    Version(u16),
    /// Checksum mismatch.
    #[error("producer id file is corrupt (CRC mismatch)")]
    Crc,
}

/// Encodes the high-water mark: version u16, mark i64, CRC-32C u32 of the preceding bytes.
pub fn encode_high_water_mark(mark: i64) -> Vec<u8> {
    let mut buf = Vec::with_capacity(14);
    buf.put_u16(MARK_FILE_VERSION);
    buf.put_i64(mark);
    let crc = crc32c::crc32c(&buf);
    buf.put_u32(crc);
    buf
}

/// Decodes a high-water-mark file.
pub fn decode_high_water_mark(bytes: &[u8]) -> Result<i64, MarkFileError> {
    if bytes.len() != 14 {
        return Err(MarkFileError::Length(bytes.len()));
    }
    let mut b = bytes;
    let version = b.get_u16();
    if version != MARK_FILE_VERSION {
        return Err(MarkFileError::Version(version));
    }
    let mark = b.get_i64();
    let crc = b.get_u32();
    if crc != crc32c::crc32c(&bytes[..10]) {
        return Err(MarkFileError::Crc);
    }
    Ok(mark)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idempotent() -> InitProducerId {
        InitProducerId {
            transactional_id: None,
            producer_id: -1,
            producer_epoch: -1,
        }
    }

    fn ids(actions: &[ProducerIdAction]) -> Vec<i64> {
        actions
            .iter()
            .filter_map(|a| match a {
                ProducerIdAction::Respond { result, .. } if result.error == codes::NONE => {
                    Some(result.producer_id)
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn ids_are_reserved_before_use_and_never_reused_across_restarts() {
        let mut m = ProducerIdManager::new(None, 3);
        let a = m.init_producer_id(1, &idempotent());
        assert_eq!(
            a,
            vec![ProducerIdAction::PersistHighWaterMark { high_water_mark: 3 }]
        );
        // A second request waits behind the same reservation.
        assert!(m.init_producer_id(2, &idempotent()).is_empty());
        let done = m.on_persisted(3, Ok(()));
        assert_eq!(ids(&done), vec![0, 1]);
        let a = m.init_producer_id(3, &idempotent());
        assert_eq!(ids(&a), vec![2]);
        let a = m.init_producer_id(4, &idempotent());
        assert_eq!(
            a,
            vec![ProducerIdAction::PersistHighWaterMark { high_water_mark: 6 }]
        );
        // Crash before the mark 6 is stored: the restart resumes from the stored mark 3, and
        // id 3 was never handed out, so nothing is reused.
        let mut restarted = ProducerIdManager::new(Some(3), 3);
        let a = restarted.init_producer_id(1, &idempotent());
        let done = restarted.on_persisted(6, Ok(()));
        assert_eq!(
            a,
            vec![ProducerIdAction::PersistHighWaterMark { high_water_mark: 6 }]
        );
        assert_eq!(ids(&done), vec![3]);
    }

    #[test]
    fn controller_blocks_replace_the_local_mark() {
        let mut m = ProducerIdManager::new(None, 1000);
        let a = m.init_producer_id(1, &idempotent());
        let [ProducerIdAction::PersistHighWaterMark { high_water_mark }] = a[..] else {
            panic!("expected a reservation, got {a:?}")
        };
        // The controller hands out [5000, 5002): ids come from it, not from 0.
        let done = m.on_block_allocated(high_water_mark, Ok(5000..5002));
        assert_eq!(ids(&done), vec![5000]);
        assert_eq!(ids(&m.init_producer_id(2, &idempotent())), vec![5001]);
        let a = m.init_producer_id(3, &idempotent());
        let [ProducerIdAction::PersistHighWaterMark { high_water_mark }] = a[..] else {
            panic!("expected a reservation, got {a:?}")
        };
        // A block below ids already used is refused (the waiter retries), never reused.
        let refused = m.on_block_allocated(high_water_mark, Ok(4000..5000));
        assert!(ids(&refused).is_empty());
        assert_eq!(refused.len(), 1);
        let a = m.init_producer_id(4, &idempotent());
        let [ProducerIdAction::PersistHighWaterMark { high_water_mark }] = a[..] else {
            panic!("expected a reservation, got {a:?}")
        };
        assert_eq!(
            ids(&m.on_block_allocated(high_water_mark, Ok(9000..10000))),
            vec![9000]
        );
    }

    #[test]
    fn epoch_is_zero_and_old_id_is_not_reused_on_reinit() {
        let mut m = ProducerIdManager::new(Some(100), 10);
        m.init_producer_id(1, &idempotent());
        let first = m.on_persisted(110, Ok(()));
        let ProducerIdAction::Respond { result, .. } = first[0] else {
            panic!()
        };
        assert_eq!((result.producer_id, result.producer_epoch), (100, 0));
        let again = m.init_producer_id(
            2,
            &InitProducerId {
                transactional_id: None,
                producer_id: 100,
                producer_epoch: 0,
            },
        );
        assert_eq!(ids(&again), vec![101]);
    }

    #[test]
    fn persistence_failure_fails_waiters_and_retries_later() {
        let mut m = ProducerIdManager::new(None, 5);
        m.init_producer_id(1, &idempotent());
        let failed = m.on_persisted(5, Err(()));
        assert_eq!(
            failed,
            vec![ProducerIdAction::Respond {
                token: 1,
                result: InitProducerIdResult::error(codes::COORDINATOR_NOT_AVAILABLE)
            }]
        );
        let retry = m.init_producer_id(2, &idempotent());
        assert_eq!(
            retry,
            vec![ProducerIdAction::PersistHighWaterMark { high_water_mark: 5 }]
        );
        assert!(
            m.on_persisted(99, Ok(())).is_empty(),
            "stray completion ignored"
        );
    }

    #[test]
    fn transactional_ids_are_rejected() {
        let mut m = ProducerIdManager::new(None, 5);
        let tx = InitProducerId {
            transactional_id: Some("tx".into()),
            producer_id: -1,
            producer_epoch: -1,
        };
        assert_eq!(
            m.init_producer_id(1, &tx),
            vec![respond(
                1,
                InitProducerIdResult::error(codes::UNSUPPORTED_VERSION)
            )]
        );
        let empty = InitProducerId {
            transactional_id: Some(String::new()),
            ..tx
        };
        assert_eq!(
            m.init_producer_id(2, &empty),
            vec![respond(
                2,
                InitProducerIdResult::error(codes::INVALID_REQUEST)
            )]
        );
    }

    #[test]
    fn exhausted_id_space_is_an_error_not_an_overflow() {
        let mut m = ProducerIdManager::new(Some(i64::MAX), 10);
        let a = m.init_producer_id(1, &idempotent());
        assert_eq!(
            a,
            vec![respond(
                1,
                InitProducerIdResult::error(codes::UNKNOWN_SERVER_ERROR)
            )]
        );
    }

    #[test]
    fn wire_conversions() {
        use kafka_protocol::messages::{InitProducerIdRequest, ProducerId, TransactionalId};
        use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
        let req = InitProducerIdRequest::default()
            .with_transactional_id(Some(TransactionalId(StrBytes::from_static_str("tx"))))
            .with_producer_id(ProducerId(5))
            .with_producer_epoch(2);
        let core = init_producer_id_request(&req, 4);
        assert_eq!(core.transactional_id.as_deref(), Some("tx"));
        assert_eq!((core.producer_id, core.producer_epoch), (5, 2));
        assert_eq!(init_producer_id_request(&req, 2).producer_id, -1);
        let resp = init_producer_id_response(&InitProducerIdResult {
            error: codes::NONE,
            producer_id: 77,
            producer_epoch: 0,
        });
        for v in 0..=5 {
            let mut buf = bytes::BytesMut::new();
            resp.encode(&mut buf, v).unwrap();
            let back =
                kafka_protocol::messages::InitProducerIdResponse::decode(&mut buf.freeze(), v)
                    .unwrap();
            assert_eq!(back.producer_id.0, 77);
        }
    }

    #[test]
    fn mark_file_round_trip_and_corruption() {
        let bytes = encode_high_water_mark(12_345);
        assert_eq!(decode_high_water_mark(&bytes), Ok(12_345));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(decode_high_water_mark(&bad).is_err(), "flip at {i}");
        }
        assert_eq!(
            decode_high_water_mark(&bytes[..5]),
            Err(MarkFileError::Length(5))
        );
    }

    #[test]
    fn a_range_bounds_the_ids_handed_out() {
        let req = InitProducerId {
            transactional_id: None,
            producer_id: -1,
            producer_epoch: -1,
        };
        let mut m = ProducerIdManager::with_range(None, 2, 10..13);
        let mut ids = Vec::new();
        for token in 0..4 {
            let mut actions = m.init_producer_id(token, &req);
            while let Some(ProducerIdAction::PersistHighWaterMark { high_water_mark }) =
                actions.first().cloned()
            {
                assert!(high_water_mark <= 13);
                actions = m.on_persisted(high_water_mark, Ok(()));
            }
            for a in actions {
                if let ProducerIdAction::Respond { result, .. } = a {
                    ids.push((result.error, result.producer_id));
                }
            }
        }
        assert_eq!(
            ids,
            vec![
                (codes::NONE, 10),
                (codes::NONE, 11),
                (codes::NONE, 12),
                (codes::UNKNOWN_SERVER_ERROR, -1)
            ]
        );
        // A stored mark above the range start resumes there.
        assert_eq!(
            ProducerIdManager::with_range(Some(11), 2, 10..13).next_id(),
            11
        );
    }
}
