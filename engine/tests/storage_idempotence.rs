//! Producer state inside `PartitionLog`: duplicate detection in log order, sequence and epoch
//! errors, snapshots at roll and close, rebuild after a crash, truncation and retention.

use std::path::Path;
use std::time::Duration;

use bytes::BytesMut;
use sluice::io::runtime::block_on;
use sluice::storage::record_batch::builder::{build_batch, BatchSpec};
use sluice::storage::{AppendError, LogConfig, PartitionLog};

const PID: i64 = 4242;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A batch of `n` records from producer `pid`/`epoch` starting at sequence `seq`.
fn idem(pid: i64, epoch: i16, seq: i32, n: usize) -> BytesMut {
    let vals: Vec<Vec<u8>> = (0..n).map(|i| format!("v{seq}-{i}").into_bytes()).collect();
    let refs: Vec<&[u8]> = vals.iter().map(|v| &v[..]).collect();
    BytesMut::from(
        &build_batch(
            &BatchSpec {
                base_timestamp: now_ms(),
                producer_id: pid,
                producer_epoch: epoch,
                base_sequence: seq,
                ..Default::default()
            },
            &refs,
        )[..],
    )
}

fn with_attributes(mut b: BytesMut, attributes: i16) -> BytesMut {
    // Attributes sit at byte 21; the CRC (bytes 17..21) covers everything from byte 21.
    b[21..23].copy_from_slice(&attributes.to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes: 600,
        index_interval_bytes: 100,
        retention_ms: -1,
        ..LogConfig::default()
    }
}

async fn append(log: &PartitionLog, b: BytesMut) -> Result<(i64, u32), AppendError> {
    log.append_leader(b, 0, now_ms())
        .await
        .map(|i| (i.first_offset, i.record_count))
}

fn snapshot_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".snapshot"))
        .collect();
    v.sort();
    v
}

#[test]
fn duplicates_gaps_and_fenced_epochs() {
    let tmp = tempfile::tempdir().unwrap();
    block_on(async {
        let log = PartitionLog::open(tmp.path().join("t-0"), LogConfig::default())
            .await
            .unwrap();
        assert_eq!(append(&log, idem(PID, 0, 0, 3)).await.unwrap(), (0, 3));
        assert_eq!(append(&log, idem(PID, 0, 3, 2)).await.unwrap(), (3, 2));
        // The retry of the first batch: original offset, nothing stored.
        assert_eq!(append(&log, idem(PID, 0, 0, 3)).await.unwrap(), (0, 0));
        assert_eq!(log.log_end_offset(), 5);
        // A gap.
        let e = append(&log, idem(PID, 0, 9, 1)).await.unwrap_err();
        assert_eq!(e.kafka_error_code(), 45, "{e}");
        // A new epoch starts at 0; then the old epoch is fenced.
        assert_eq!(append(&log, idem(PID, 1, 0, 1)).await.unwrap(), (5, 1));
        let e = append(&log, idem(PID, 0, 5, 1)).await.unwrap_err();
        assert_eq!(e.kafka_error_code(), 47, "{e}");
        // Transactional and control batches from a client.
        let e = append(&log, with_attributes(idem(7, 0, 0, 1), 0x10))
            .await
            .unwrap_err();
        assert_eq!(e.kafka_error_code(), 48, "{e}");
        let e = append(&log, with_attributes(idem(7, 0, 0, 1), 0x30))
            .await
            .unwrap_err();
        assert_eq!(e.kafka_error_code(), 87, "{e}");
        // Non-idempotent batches are untouched by any of this.
        assert_eq!(append(&log, idem(-1, -1, -1, 2)).await.unwrap(), (6, 2));
        assert_eq!(append(&log, idem(-1, -1, -1, 2)).await.unwrap(), (8, 2));
        assert_eq!(log.log_end_offset(), 10);
        assert_eq!(log.producer_count(), 1);
        log.close().await.unwrap();
    });
}

#[test]
fn pipelined_appends_and_a_retry_while_the_original_is_in_flight() {
    let tmp = tempfile::tempdir().unwrap();
    block_on(async {
        let log = PartitionLog::open(tmp.path().join("t-0"), LogConfig::default())
            .await
            .unwrap();
        // join polls in order, so the three appends take the append lock in this order while
        // none has completed its write.
        let (a, b, retry) = futures_util::future::join3(
            append(&log, idem(PID, 0, 0, 5)),
            append(&log, idem(PID, 0, 5, 5)),
            append(&log, idem(PID, 0, 0, 5)),
        )
        .await;
        assert_eq!(a.unwrap(), (0, 5));
        assert_eq!(b.unwrap(), (5, 5));
        assert_eq!(retry.unwrap(), (0, 0), "retry of an in-flight batch");
        assert_eq!(log.log_end_offset(), 10);
        // Out of order within the pipeline: the second request arrives with a gap.
        let (c, gap) = futures_util::future::join(
            append(&log, idem(PID, 0, 10, 1)),
            append(&log, idem(PID, 0, 12, 1)),
        )
        .await;
        assert_eq!(c.unwrap(), (10, 1));
        assert_eq!(gap.unwrap_err().kafka_error_code(), 45);
        log.close().await.unwrap();
    });
}

#[test]
fn snapshots_at_roll_and_close_and_state_survives_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t-0");
    block_on(async {
        let log = PartitionLog::open(dir.clone(), small_segments())
            .await
            .unwrap();
        for i in 0..12 {
            append(&log, idem(PID, 0, i * 4, 4)).await.unwrap();
        }
        assert!(log.segment_count() > 2);
        // Roll snapshots are written by the background roll finisher.
        let bases: Vec<i64> = log.segment_base_offsets()[1..].to_vec();
        for _ in 0..200 {
            let snaps = log.producer_snapshot_offsets();
            if bases[..bases.len() - 1].iter().all(|b| snaps.contains(b)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let snaps = log.producer_snapshot_offsets();
        for b in &bases[..bases.len() - 1] {
            assert!(snaps.contains(b), "no snapshot at roll {b}: {snaps:?}");
        }
        log.close().await.unwrap();
    });
    assert!(snapshot_files(&dir).contains(&"00000000000000000048.snapshot".to_string()));
    block_on(async {
        let log = PartitionLog::open(dir.clone(), small_segments())
            .await
            .unwrap();
        // The last five batches are still recognised; the next sequence continues.
        for i in 7..12 {
            assert_eq!(
                append(&log, idem(PID, 0, i * 4, 4)).await.unwrap(),
                (i64::from(i) * 4, 0)
            );
        }
        assert_eq!(append(&log, idem(PID, 0, 48, 1)).await.unwrap(), (48, 1));
        log.close().await.unwrap();
    });
}

#[test]
fn state_is_rebuilt_after_a_crash_and_without_any_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t-0");
    block_on(async {
        let log = PartitionLog::open(dir.clone(), small_segments())
            .await
            .unwrap();
        for i in 0..10 {
            append(&log, idem(PID, 0, i * 2, 2)).await.unwrap();
            append(&log, idem(-1, -1, -1, 1)).await.unwrap();
        }
        log.flush().await.unwrap();
        // No close: a crash (no clean-shutdown marker, no snapshot at the log end).
        drop(log);
    });
    block_on(async {
        let log = PartitionLog::open(dir.clone(), small_segments())
            .await
            .unwrap();
        assert_eq!(log.log_end_offset(), 30);
        // Batch 9 (seq 18-19) is at offset 27.
        assert_eq!(append(&log, idem(PID, 0, 18, 2)).await.unwrap(), (27, 0));
        assert_eq!(
            append(&log, idem(PID, 0, 21, 1))
                .await
                .unwrap_err()
                .kafka_error_code(),
            45
        );
        drop(log);
    });
    for f in snapshot_files(&dir) {
        std::fs::remove_file(dir.join(f)).unwrap();
    }
    // Corrupt stray snapshot above the end: ignored and removed.
    std::fs::write(dir.join("00000000000000000999.snapshot"), b"junk").unwrap();
    block_on(async {
        let log = PartitionLog::open(dir.clone(), small_segments())
            .await
            .unwrap();
        assert!(!log.producer_snapshot_offsets().contains(&999));
        assert_eq!(append(&log, idem(PID, 0, 16, 2)).await.unwrap(), (24, 0));
        assert_eq!(append(&log, idem(PID, 0, 20, 2)).await.unwrap(), (30, 2));
        log.close().await.unwrap();
    });
}

#[test]
fn truncation_drops_state_above_the_new_end() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t-0");
    block_on(async {
        let log = PartitionLog::open(dir.clone(), small_segments())
            .await
            .unwrap();
        for i in 0..12 {
            append(&log, idem(PID, 0, i * 4, 4)).await.unwrap();
        }
        log.close().await.unwrap();
    });
    block_on(async {
        let log = PartitionLog::open(dir.clone(), small_segments())
            .await
            .unwrap();
        assert!(log.producer_snapshot_offsets().contains(&48));
        // Drop the last three batches (offsets 36..48), across a snapshot at 48.
        log.truncate_to(36).await.unwrap();
        assert!(log.producer_snapshot_offsets().iter().all(|o| *o <= 36));
        // The batch just below the cut is still a duplicate; the truncated one is new again.
        assert_eq!(append(&log, idem(PID, 0, 32, 4)).await.unwrap(), (32, 0));
        assert_eq!(append(&log, idem(PID, 0, 36, 4)).await.unwrap(), (36, 4));
        // Truncating below the log start empties the state.
        log.truncate_fully_and_start_at(100).await.unwrap();
        assert_eq!(log.producer_count(), 0);
        assert!(log.producer_snapshot_offsets().is_empty());
        assert_eq!(append(&log, idem(PID, 0, 40, 4)).await.unwrap(), (100, 4));
        log.close().await.unwrap();
    });
}

#[test]
fn retention_removes_old_snapshots_and_forgotten_producers_and_expiry() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t-0");
    block_on(async {
        let log = PartitionLog::open(dir.clone(), small_segments())
            .await
            .unwrap();
        for i in 0..8 {
            append(&log, idem(1, 0, i * 4, 4)).await.unwrap();
        }
        append(&log, idem(2, 0, 0, 1)).await.unwrap();
        log.close().await.unwrap();
    });
    block_on(async {
        let log = PartitionLog::open(dir.clone(), small_segments())
            .await
            .unwrap();
        assert_eq!(log.producer_count(), 2);
        let start = log.delete_records_before(32).await.unwrap();
        assert_eq!(start, 32);
        // Producer 1's batches all end below 32: forgotten. Producer 2 (offset 32) kept.
        assert_eq!(log.producer_count(), 1);
        let snaps = log.producer_snapshot_offsets();
        let newest = *snaps.iter().max().unwrap();
        assert!(
            snaps.iter().all(|o| *o >= 32 || *o == newest),
            "old snapshots left: {snaps:?}"
        );
        // Expiry: producer 2's last batch is "now"; an hour-old cutoff keeps it, a later clock drops it.
        assert_eq!(log.expire_producers(now_ms(), 3_600_000), 0);
        assert_eq!(log.expire_producers(now_ms() + 3_600_001, 3_600_000), 1);
        assert_eq!(log.producer_count(), 0);
        log.close().await.unwrap();
    });
}

/// A tiny deterministic generator (no external RNG needed for a fixed schedule).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// What the log must hold: every accepted batch as (producer, first seq, records, base offset).
#[derive(Default)]
struct Model {
    batches: Vec<(i64, i32, usize, i64)>,
    next_seq: [i32; 3],
}

impl Model {
    fn end(&self) -> i64 {
        self.batches
            .last()
            .map_or(0, |(_, _, n, base)| base + *n as i64)
    }

    fn last_five(&self, pid: i64) -> Vec<(i64, i32, usize, i64)> {
        let mine: Vec<_> = self
            .batches
            .iter()
            .filter(|b| b.0 == pid)
            .copied()
            .collect();
        mine[mine.len().saturating_sub(5)..].to_vec()
    }
}

/// Random schedules of new batches, retries, gaps, clean and crash reopens and truncations
/// against a model: a retry of one of the last five batches is always acknowledged with its
/// original offset and never stored twice, whatever happened to the process in between.
#[test]
fn random_schedule_against_a_model() {
    for seed in 1..=6u64 {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("t-0");
        let mut rng = Lcg(seed);
        let mut model = Model::default();
        let mut log = Some(block_on(PartitionLog::open(dir.clone(), small_segments())).unwrap());
        for step in 0..150 {
            let pid = rng.below(3) as i64;
            let p = pid as usize;
            let op = rng.below(20);
            let ctx = format!("seed {seed} step {step} op {op}");
            let l = log.take().unwrap();
            let l = block_on(async {
                match op {
                    0..=9 => {
                        let n = 1 + rng.below(4) as usize;
                        let seq = model.next_seq[p];
                        let got = append(&l, idem(pid, 0, seq, n)).await.unwrap();
                        assert_eq!(got, (model.end(), n as u32), "{ctx}: new batch");
                        model.batches.push((pid, seq, n, got.0));
                        model.next_seq[p] += n as i32;
                    }
                    10..=13 => {
                        let five = model.last_five(pid);
                        if let Some(b) = five.get(rng.below(5) as usize) {
                            let end = model.end();
                            let got = append(&l, idem(pid, 0, b.1, b.2)).await.unwrap();
                            assert_eq!(got, (b.3, 0), "{ctx}: retry of {b:?}");
                            assert_eq!(l.log_end_offset(), end, "{ctx}: retry stored");
                        }
                    }
                    14 => {
                        if !model.last_five(pid).is_empty() {
                            let e = append(&l, idem(pid, 0, model.next_seq[p] + 1, 1))
                                .await
                                .unwrap_err();
                            assert_eq!(e.kafka_error_code(), 45, "{ctx}: gap");
                        }
                    }
                    15..=16 => {
                        l.close().await.unwrap();
                        drop(l);
                        return PartitionLog::open(dir.clone(), small_segments())
                            .await
                            .unwrap();
                    }
                    17..=18 => {
                        l.flush().await.unwrap();
                        drop(l);
                        return PartitionLog::open(dir.clone(), small_segments())
                            .await
                            .unwrap();
                    }
                    _ => {
                        if !model.batches.is_empty() {
                            let keep = rng.below(model.batches.len() as u64) as usize;
                            let cut = model.batches[keep].3;
                            l.truncate_to(cut).await.unwrap();
                            model.batches.truncate(keep);
                            for q in 0..3 {
                                model.next_seq[q] = model
                                    .batches
                                    .iter()
                                    .rev()
                                    .find(|b| b.0 == q as i64)
                                    .map_or(0, |b| b.1 + b.2 as i32);
                            }
                            assert_eq!(l.log_end_offset(), model.end(), "{ctx}: truncate");
                        }
                    }
                }
                l
            });
            log = Some(l);
        }
        block_on(log.take().unwrap().close()).unwrap();
    }
}
