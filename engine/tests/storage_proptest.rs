//! Property test: random append / follower-append / truncate / roll / retention / reopen
//! sequences against an in-memory model; every read is compared with the model.

use bytes::BytesMut;
use proptest::prelude::*;
use sluice::io::runtime::block_on;
use sluice::storage::record_batch::builder::{build_batch, BatchSpec};
use sluice::storage::record_batch::{
    set_base_offset, set_partition_leader_epoch, BatchHeader, BatchIter,
};
use sluice::storage::{LogConfig, PartitionLog};

#[derive(Debug, Clone)]
enum Op {
    AppendLeader {
        batches: Vec<(u8, u16)>,
        bump_epoch: bool,
    },
    AppendFollower {
        records: u8,
        size: u16,
        bump_epoch: bool,
    },
    Truncate {
        permille: u16,
    },
    TruncateFully {
        ahead: u8,
    },
    Roll,
    DeleteRecords {
        permille: u16,
    },
    RetainBytes {
        bytes: u16,
    },
    Reopen {
        clean: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (prop::collection::vec((1u8..5, 1u16..120), 1..4), any::<bool>())
            .prop_map(|(batches, b)| Op::AppendLeader { batches, bump_epoch: b }),
        3 => (1u8..5, 1u16..400, any::<bool>()).prop_map(|(records, size, b)| Op::AppendFollower { records, size, bump_epoch: b }),
        2 => (0u16..=1000).prop_map(|permille| Op::Truncate { permille }),
        1 => (0u8..3).prop_map(|ahead| Op::TruncateFully { ahead }),
        1 => Just(Op::Roll),
        1 => (0u16..=1000).prop_map(|permille| Op::DeleteRecords { permille }),
        1 => (0u16..6000).prop_map(|bytes| Op::RetainBytes { bytes }),
        2 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
    ]
}

#[derive(Default)]
struct Model {
    /// (base offset, last offset, epoch, stored bytes)
    batches: Vec<(i64, i64, i32, Vec<u8>)>,
    start: i64,
    leo: i64,
    epoch: i32,
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 2048,
        index_interval_bytes: 256,
        segment_ms: 1000,
        retention_ms: -1,
        ..LogConfig::default()
    }
}

fn make_batch(base: i64, epoch: i32, records: u8, size: u16, ts: i64) -> Vec<u8> {
    let vals: Vec<Vec<u8>> = (0..records)
        .map(|r| vec![(base as u8).wrapping_add(r); size as usize])
        .collect();
    let refs: Vec<&[u8]> = vals.iter().map(|v| &v[..]).collect();
    build_batch(
        &BatchSpec {
            base_offset: base,
            partition_leader_epoch: epoch,
            base_timestamp: ts,
            ..Default::default()
        },
        &refs,
    )
}

async fn check(log: &PartitionLog, model: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(log.log_start_offset(), model.start);
    prop_assert_eq!(log.log_end_offset(), model.leo);
    let expected: Vec<&(i64, i64, i32, Vec<u8>)> = model
        .batches
        .iter()
        .filter(|b| b.1 >= model.start)
        .collect();
    let mut got = Vec::new();
    let mut next = model.start;
    loop {
        let r = log
            .read(next, 3000, i64::MAX, true)
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let Some(slice) = r.slice else { break };
        let bytes = slice
            .read_to_vec()
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        for item in BatchIter::new(&bytes) {
            let (pos, h) = item.map_err(|e| TestCaseError::fail(e.to_string()))?;
            got.push(bytes[pos..pos + h.size()].to_vec());
            next = h.next_offset();
        }
    }
    prop_assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(&expected) {
        prop_assert!(g == &e.3, "batch at {} differs", e.0);
    }
    // Point reads of every offset return the batch holding it.
    for e in &expected {
        for o in [e.0.max(model.start), e.1] {
            let r = log
                .read(o, 1, i64::MAX, true)
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let bytes = r
                .slice
                .ok_or_else(|| TestCaseError::fail("no slice"))?
                .read_to_vec()
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&bytes, &e.3);
        }
    }
    if let Some(last) = expected.last() {
        prop_assert_eq!(log.latest_epoch(), Some(last.2));
    }
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let tmp = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let dir = tmp.path().join("p-0");
    block_on(async {
        let mut log = PartitionLog::open(dir.clone(), config())
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut m = Model::default();
        let mut now = 1_000_000i64;
        for op in ops {
            now += 10;
            match op {
                Op::AppendLeader {
                    batches,
                    bump_epoch,
                } => {
                    if bump_epoch {
                        m.epoch += 1;
                    }
                    let mut records = BytesMut::new();
                    let mut stored = Vec::new();
                    let mut next = m.leo;
                    for (n, size) in batches {
                        let mut b = make_batch(0, -1, n, size, now);
                        records.extend_from_slice(&b);
                        set_base_offset(&mut b, next);
                        set_partition_leader_epoch(&mut b, m.epoch);
                        stored.push((next, next + i64::from(n) - 1, m.epoch, b));
                        next += i64::from(n);
                    }
                    let info = log
                        .append_leader(records, m.epoch, now)
                        .await
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(info.first_offset, m.leo);
                    prop_assert_eq!(info.last_offset, next - 1);
                    m.batches.extend(stored);
                    m.leo = next;
                }
                Op::AppendFollower {
                    records,
                    size,
                    bump_epoch,
                } => {
                    if bump_epoch {
                        m.epoch += 1;
                    }
                    let b = make_batch(m.leo, m.epoch, records, size, now);
                    let info = log
                        .append_follower(BytesMut::from(&b[..]))
                        .await
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(info.first_offset, m.leo);
                    let last = m.leo + i64::from(records) - 1;
                    m.batches.push((m.leo, last, m.epoch, b));
                    m.leo = last + 1;
                }
                Op::Truncate { permille } => {
                    let target = m.start + (m.leo - m.start) * i64::from(permille) / 1000;
                    log.truncate_to(target)
                        .await
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    if let Some(i) = m.batches.iter().position(|b| b.1 >= target) {
                        m.leo = m.batches[i].0.max(m.start);
                        if m.batches[i].0 < m.start {
                            // The batch straddling the log start is dropped whole; Kafka then
                            // restarts the log at the target.
                            m.batches.clear();
                            m.start = target;
                            m.leo = target;
                        } else {
                            m.batches.truncate(i);
                        }
                    }
                }
                Op::TruncateFully { ahead } => {
                    let at = m.leo + i64::from(ahead);
                    log.truncate_fully_and_start_at(at)
                        .await
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    m.batches.clear();
                    m.start = at;
                    m.leo = at;
                }
                Op::Roll => {
                    log.roll_if_due(now + 5000)
                        .await
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                }
                Op::DeleteRecords { permille } => {
                    let target = m.start + (m.leo - m.start) * i64::from(permille) / 1000;
                    let start = log
                        .delete_records_before(target)
                        .await
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(start, target.max(m.start));
                    m.start = start;
                }
                Op::RetainBytes { bytes } => {
                    log.set_config(LogConfig {
                        retention_bytes: i64::from(bytes),
                        ..config()
                    });
                    let out = log
                        .enforce_retention(now)
                        .await
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    log.set_config(config());
                    prop_assert!(out.log_start_offset >= m.start && out.log_start_offset <= m.leo);
                    if out.deleted_segments > 0 {
                        prop_assert!(log.size_bytes() >= u64::from(bytes));
                    }
                    m.start = out.log_start_offset;
                }
                Op::Reopen { clean } => {
                    if clean {
                        log.close()
                            .await
                            .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    }
                    drop(log);
                    log = PartitionLog::open(dir.clone(), config())
                        .await
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                }
            }
            // Batches wholly below the start are gone from the model too.
            let start = m.start;
            m.batches.retain(|b| b.1 >= start);
            check(&log, &m).await?;
        }
        let _ = BatchHeader::parse;
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("SLUICE_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24), max_shrink_iters: 200, ..ProptestConfig::default() })]
    #[test]
    fn log_matches_model(ops in prop::collection::vec(op(), 1..30)) {
        run(ops)?;
    }
}
