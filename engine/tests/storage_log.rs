//! End-to-end tests of `PartitionLog` on a real io_uring runtime and a temp directory.

use std::path::Path;
use std::rc::Rc;

use bytes::BytesMut;
use sluice::io::runtime::{block_on, spawn};
use sluice::storage::record_batch::builder::{build_batch, BatchSpec};
use sluice::storage::record_batch::{validate_batch, BatchIter};
use sluice::storage::{
    AppendError, FlushPolicy, LogConfig, PartitionLog, ReadError, TimestampType,
};

fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn batch(values: &[&[u8]], ts: i64) -> BytesMut {
    BytesMut::from(
        &build_batch(
            &BatchSpec {
                base_timestamp: ts,
                ..Default::default()
            },
            values,
        )[..],
    )
}

fn follower_batch(base: i64, epoch: i32, n: usize) -> BytesMut {
    let vals: Vec<Vec<u8>> = (0..n)
        .map(|i| format!("f{base}-{i}").into_bytes())
        .collect();
    let refs: Vec<&[u8]> = vals.iter().map(|v| &v[..]).collect();
    let spec = BatchSpec {
        base_offset: base,
        partition_leader_epoch: epoch,
        base_timestamp: 1000 + base,
        ..Default::default()
    };
    BytesMut::from(&build_batch(&spec, &refs)[..])
}

async fn read_all(log: &PartitionLog, from: i64) -> Vec<(i64, i64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut next = from;
    loop {
        let r = log.read(next, 1 << 20, i64::MAX, true).await.unwrap();
        let Some(slice) = r.slice else { break };
        let bytes = slice.read_to_vec().await.unwrap();
        for item in BatchIter::new(&bytes) {
            let (pos, h) = item.unwrap();
            out.push((
                h.base_offset,
                h.last_offset(),
                bytes[pos..pos + h.size()].to_vec(),
            ));
            next = h.next_offset();
        }
    }
    out
}

fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 1024,
        index_interval_bytes: 100,
        retention_ms: -1,
        ..LogConfig::default()
    }
}

#[test]
fn append_read_and_clean_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("topic-0");
    block_on(async {
        let log = PartitionLog::open(dir.clone(), LogConfig::default())
            .await
            .unwrap();
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (0, 0));
        let a = log
            .append_leader(batch(&[b"a", b"b", b"c"], 100), 5, 1)
            .await
            .unwrap();
        assert_eq!(
            (a.first_offset, a.last_offset, a.record_count, a.batch_count),
            (0, 2, 3, 1)
        );
        assert_eq!(a.log_append_time_ms, -1);
        let mut two = batch(&[b"d"], 200);
        two.extend_from_slice(&batch(&[b"e", b"f"], 300));
        let b = log.append_leader(two, 5, 2).await.unwrap();
        assert_eq!(
            (
                b.first_offset,
                b.last_offset,
                b.batch_count,
                b.max_timestamp
            ),
            (3, 5, 2, 301)
        );
        assert_eq!(log.log_end_offset(), 6);
        assert_eq!(log.latest_epoch(), Some(5));

        let batches = read_all(&log, 0).await;
        assert_eq!(
            batches.iter().map(|b| (b.0, b.1)).collect::<Vec<_>>(),
            vec![(0, 2), (3, 3), (4, 5)]
        );
        for (_, _, bytes) in &batches {
            assert_eq!(validate_batch(bytes).unwrap().partition_leader_epoch, 5);
        }
        // From the middle of a batch: the whole batch comes back.
        let r = log.read(4, 1 << 20, i64::MAX, true).await.unwrap();
        let v = r.slice.unwrap().read_to_vec().await.unwrap();
        assert_eq!(validate_batch(&v).unwrap().base_offset, 4);
        // Upper bound excludes batches reaching it; max_bytes limits to whole batches.
        let r = log.read(0, 1 << 20, 4, true).await.unwrap();
        let v = r.slice.unwrap().read_to_vec().await.unwrap();
        assert_eq!(BatchIter::new(&v).count(), 2);
        let first_len = batches[0].2.len() as u32;
        let r = log.read(0, first_len + 1, i64::MAX, true).await.unwrap();
        assert_eq!(r.slice.unwrap().len(), first_len);
        let r = log.read(0, 1, i64::MAX, true).await.unwrap();
        assert_eq!(
            r.slice.unwrap().len(),
            first_len,
            "min_one_batch returns one whole batch"
        );
        assert!(log
            .read(0, 1, i64::MAX, false)
            .await
            .unwrap()
            .slice
            .is_none());
        assert!(log
            .read(6, 100, i64::MAX, true)
            .await
            .unwrap()
            .slice
            .is_none());
        assert!(matches!(
            log.read(7, 100, i64::MAX, true).await,
            Err(ReadError::OffsetOutOfRange { log_end: 6, .. })
        ));
        log.close().await.unwrap();
        assert!(dir.join(".sluice_cleanshutdown").exists());

        let log = PartitionLog::open(dir.clone(), LogConfig::default())
            .await
            .unwrap();
        assert!(!dir.join(".sluice_cleanshutdown").exists());
        assert_eq!(log.log_end_offset(), 6);
        assert_eq!(log.latest_epoch(), Some(5));
        assert_eq!(read_all(&log, 0).await, batches);
        let c = log.append_leader(batch(&[b"g"], 400), 6, 3).await.unwrap();
        assert_eq!(c.first_offset, 6);
        assert_eq!(log.end_offset_for_epoch(5), Some((5, 6)));
        assert_eq!(log.end_offset_for_epoch(6), Some((6, 7)));
        log.close().await.unwrap();
    });
}

#[test]
fn bad_input_is_rejected_and_nothing_written() {
    let tmp = tempfile::tempdir().unwrap();
    block_on(async {
        let log = PartitionLog::open(tmp.path().join("t-0"), LogConfig::default())
            .await
            .unwrap();
        log.append_leader(batch(&[b"ok"], 1), 0, 1).await.unwrap();
        let size = log.size_bytes();
        let good = batch(&[b"x", b"y"], 1);
        let mut corrupt = good.clone();
        let n = corrupt.len();
        corrupt[n - 1] ^= 0xff;
        let mut good_then_bad = good.clone();
        good_then_bad.extend_from_slice(&corrupt);
        let cases: Vec<(BytesMut, i16)> = vec![
            (corrupt, 2),
            (good_then_bad, 2),
            (BytesMut::from(&good[..good.len() - 3]), 2),
            (
                BytesMut::from(&b"\x00\x00\x00\x00\x00\x00\x00\x00\x7f\xff\xff\xff"[..]),
                2,
            ),
            (
                BytesMut::from(&b"\x00\x00\x00\x00\x00\x00\x00\x00\xff\xff\xff\xf0"[..]),
                2,
            ),
        ];
        for (records, code) in cases {
            let err = log.append_leader(records, 0, 1).await.unwrap_err();
            assert_eq!(err.kafka_error_code(), code, "{err}");
        }
        let big = LogConfig {
            max_message_bytes: 10,
            ..LogConfig::default()
        };
        log.set_config(big);
        assert!(matches!(
            log.append_leader(good.clone(), 0, 1).await,
            Err(AppendError::RecordTooLarge { .. })
        ));
        log.set_config(LogConfig::default());
        assert_eq!(log.size_bytes(), size);
        assert_eq!(log.log_end_offset(), 1);
        let info = log.append_leader(BytesMut::new(), 0, 1).await.unwrap();
        assert_eq!((info.first_offset, info.record_count), (-1, 0));
    });
}

#[test]
fn log_append_time_rewrites_timestamp_and_crc() {
    let tmp = tempfile::tempdir().unwrap();
    block_on(async {
        let cfg = LogConfig {
            message_timestamp_type: TimestampType::LogAppendTime,
            ..LogConfig::default()
        };
        let log = PartitionLog::open(tmp.path().join("t-0"), cfg)
            .await
            .unwrap();
        let info = log
            .append_leader(batch(&[b"a"], 5), 0, 123_456)
            .await
            .unwrap();
        assert_eq!(info.log_append_time_ms, 123_456);
        let got = read_all(&log, 0).await;
        let h = validate_batch(&got[0].2).unwrap();
        assert_eq!(h.max_timestamp, 123_456);
        assert_eq!(h.timestamp_type(), TimestampType::LogAppendTime);
    });
}

#[test]
fn rolls_segments_and_reads_across_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t-0");
    block_on(async {
        let log = PartitionLog::open(dir.clone(), small_config())
            .await
            .unwrap();
        let payload = [7u8; 100];
        for i in 0..40 {
            log.append_leader(batch(&[&payload, &payload], i), 1, i)
                .await
                .unwrap();
        }
        assert!(log.segment_count() > 5, "{} segments", log.segment_count());
        let all = read_all(&log, 0).await;
        assert_eq!(all.len(), 40);
        for (i, b) in all.iter().enumerate() {
            assert_eq!(b.0, 2 * i as i64);
        }
        for o in [0, 1, 17, 39, 40, 79] {
            let r = log.read(o, 1, i64::MAX, true).await.unwrap();
            let h = validate_batch(&r.slice.unwrap().read_to_vec().await.unwrap()).unwrap();
            assert!(h.base_offset <= o && o <= h.last_offset());
        }
        // Batch i holds offsets 2i, 2i+1 with timestamps i, i+1.
        assert_eq!(log.offset_for_timestamp(10).await.unwrap(), Some((19, 10)));
        assert_eq!(log.offset_for_timestamp(-5).await.unwrap(), Some((0, 0)));
        assert_eq!(log.offset_for_timestamp(1000).await.unwrap(), None);
        for base in log.segment_base_offsets() {
            assert!(dir.join(format!("{base:020}.log")).exists());
        }
        log.close().await.unwrap();
        let log = PartitionLog::open(dir.clone(), small_config())
            .await
            .unwrap();
        assert_eq!(read_all(&log, 0).await, all);
        assert_eq!(log.offset_for_timestamp(10).await.unwrap(), Some((19, 10)));
    });
}

#[test]
fn unclean_reopen_truncates_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t-0");
    block_on(async {
        let log = PartitionLog::open(dir.clone(), small_config())
            .await
            .unwrap();
        for i in 0..20 {
            log.append_leader(batch(&[b"hello world, this is a record"], i), 2, i)
                .await
                .unwrap();
        }
        log.flush().await.unwrap();
        assert_eq!(log.durable_offset(), 20);
        let all = read_all(&log, 0).await;
        let bases = log.segment_base_offsets();
        drop(log);
        // A torn write: half of a batch at the end of the active segment.
        let active = dir.join(format!("{:020}.log", bases[bases.len() - 1]));
        let torn = build_batch(
            &BatchSpec {
                base_offset: 20,
                ..Default::default()
            },
            &[b"torn"],
        );
        append_bytes(&active, &torn[..torn.len() / 2]);
        let log = PartitionLog::open(dir.clone(), small_config())
            .await
            .unwrap();
        assert_eq!(log.log_end_offset(), 20);
        assert_eq!(read_all(&log, 0).await, all);
        let info = log
            .append_leader(batch(&[b"after"], 99), 2, 99)
            .await
            .unwrap();
        assert_eq!(info.first_offset, 20);
        drop(log);
        // Deleted indexes are rebuilt.
        for base in &bases {
            let _ = std::fs::remove_file(dir.join(format!("{base:020}.index")));
        }
        let log = PartitionLog::open(dir.clone(), small_config())
            .await
            .unwrap();
        assert_eq!(log.log_end_offset(), 21);
        assert_eq!(read_all(&log, 0).await.len(), 21);
    });
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

#[test]
fn follower_append_truncate_and_epochs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t-0");
    block_on(async {
        let log = PartitionLog::open(dir.clone(), small_config())
            .await
            .unwrap();
        let mut off = 0;
        for (epoch, n) in [(1, 3), (1, 2), (3, 4), (4, 1), (4, 5)] {
            let info = log
                .append_follower(follower_batch(off, epoch, n))
                .await
                .unwrap();
            assert_eq!(info.first_offset, off);
            off += n as i64;
        }
        assert_eq!(log.log_end_offset(), 15);
        assert_eq!(log.epoch_entries(), vec![(1, 0), (3, 5), (4, 9)]);
        assert_eq!(log.end_offset_for_epoch(2), Some((1, 5)));
        assert!(matches!(
            log.append_follower(follower_batch(14, 4, 1)).await,
            Err(AppendError::NonContiguous {
                expected: 15,
                got: 14
            })
        ));
        // A gap (what compaction leaves on the leader) is accepted; reads skip it.
        let info = log.append_follower(follower_batch(16, 4, 1)).await.unwrap();
        assert_eq!((info.first_offset, log.log_end_offset()), (16, 17));
        assert_eq!(read_all(&log, 15).await.len(), 1);

        // Truncating mid-batch drops the whole batch.
        log.truncate_to(7).await.unwrap();
        assert_eq!(log.log_end_offset(), 5);
        assert_eq!(log.epoch_entries(), vec![(1, 0)]);
        assert_eq!(read_all(&log, 0).await.len(), 2);
        log.append_follower(follower_batch(5, 6, 2)).await.unwrap();
        assert_eq!(log.epoch_entries(), vec![(1, 0), (6, 5)]);
        drop(log);
        // Unclean reopen keeps the truncation.
        let log = PartitionLog::open(dir.clone(), small_config())
            .await
            .unwrap();
        assert_eq!(log.log_end_offset(), 7);
        assert_eq!(log.epoch_entries(), vec![(1, 0), (6, 5)]);
        log.truncate_fully_and_start_at(100).await.unwrap();
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (100, 100));
        assert_eq!(log.latest_epoch(), None);
        assert!(matches!(
            log.read(5, 100, i64::MAX, true).await,
            Err(ReadError::OffsetOutOfRange { .. })
        ));
        log.append_follower(follower_batch(100, 7, 2))
            .await
            .unwrap();
        log.close().await.unwrap();
        let log = PartitionLog::open(dir.clone(), small_config())
            .await
            .unwrap();
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (100, 102));
        assert_eq!(log.segment_base_offsets(), vec![100]);
    });
}

#[test]
fn concurrent_appends_group_commit() {
    let tmp = tempfile::tempdir().unwrap();
    block_on(async {
        let cfg = LogConfig {
            flush: FlushPolicy::EveryAppend,
            ..LogConfig::default()
        };
        let log = Rc::new(
            PartitionLog::open(tmp.path().join("t-0"), cfg)
                .await
                .unwrap(),
        );
        let mut handles = Vec::new();
        for t in 0..16 {
            let log = log.clone();
            handles.push(spawn(async move {
                let mut offs = Vec::new();
                for i in 0..10 {
                    let v = format!("{t}-{i}");
                    let info = log
                        .append_leader(batch(&[v.as_bytes(), b"x"], i), 0, i)
                        .await
                        .unwrap();
                    assert!(log.durable_offset() > info.last_offset);
                    offs.push(info.first_offset);
                }
                offs
            }));
        }
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.await.unwrap());
        }
        all.sort_unstable();
        assert_eq!(all, (0..160).map(|i| i * 2).collect::<Vec<_>>());
        assert_eq!(log.durable_offset(), 320);
        assert_eq!(read_all(&log, 0).await.len(), 160);
        let stats = log.stats();
        assert_eq!(stats.appends, 160);
        // Appends arriving while an fsync is in flight share the next one.
        assert!(stats.fsyncs < 100, "{stats:?}");
        assert!(stats.fsyncs >= 10, "{stats:?}");
    });
}

#[test]
fn retention_and_delete_records() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t-0");
    block_on(async {
        let log = PartitionLog::open(dir.clone(), small_config())
            .await
            .unwrap();
        let payload = [1u8; 200];
        for i in 0..30 {
            log.append_leader(batch(&[&payload], i * 1000), 0, i)
                .await
                .unwrap();
        }
        let segs = log.segment_base_offsets();
        assert!(segs.len() >= 5);
        let new_start = log.delete_records_before(segs[1] + 1).await.unwrap();
        assert_eq!(new_start, segs[1] + 1);
        assert_eq!(log.segment_base_offsets()[0], segs[1]);
        assert!(matches!(
            log.read(segs[1], 100, i64::MAX, true).await,
            Err(ReadError::OffsetOutOfRange { .. })
        ));
        assert!(log
            .read(segs[1] + 1, 100, i64::MAX, true)
            .await
            .unwrap()
            .slice
            .is_some());
        assert!(!dir.join(format!("{:020}.log", segs[0])).exists());

        // retention.ms: everything older than the cut-off, never the active segment.
        let cfg = LogConfig {
            retention_ms: 10_000,
            ..small_config()
        };
        log.set_config(cfg);
        let out = log.enforce_retention(29_000 + 10_001).await.unwrap();
        assert!(out.deleted_segments >= 1);
        assert_eq!(log.segment_count(), 1);
        assert_eq!(out.log_start_offset, *segs.last().unwrap());
        // retention.bytes keeps at least that many bytes.
        for i in 30..60 {
            log.append_leader(batch(&[&payload], i * 1000), 0, i)
                .await
                .unwrap();
        }
        log.set_config(LogConfig {
            retention_bytes: 1000,
            ..small_config()
        });
        log.enforce_retention(0).await.unwrap();
        assert!(
            log.size_bytes() >= 1000 && log.size_bytes() < 1000 + 1024,
            "{}",
            log.size_bytes()
        );
        let start = log.log_start_offset();
        log.close().await.unwrap();
        let log = PartitionLog::open(dir.clone(), small_config())
            .await
            .unwrap();
        assert_eq!(log.log_start_offset(), start);
        assert_eq!(log.log_end_offset(), 60);
    });
}

#[test]
fn time_based_roll() {
    let tmp = tempfile::tempdir().unwrap();
    block_on(async {
        let cfg = LogConfig {
            segment_ms: 1000,
            ..LogConfig::default()
        };
        let opened_after = wall_clock_ms();
        let log = PartitionLog::open(tmp.path().join("t-0"), cfg)
            .await
            .unwrap();
        let opened_before = wall_clock_ms();
        assert!(
            !log.roll_if_due(10_000_000_000_000).await.unwrap(),
            "empty segment never rolls"
        );
        log.append_leader(batch(&[b"a"], 5_000), 0, 5_000)
            .await
            .unwrap();
        // The timer path measures wall-clock time since the segment was created (at open).
        assert!(!log.roll_if_due(opened_after + 500).await.unwrap());
        assert!(log.roll_if_due(opened_before + 1_001).await.unwrap());
        assert_eq!(log.segment_base_offsets(), vec![0, 1]);
        // An append whose time is past segment.ms also rolls.
        log.append_leader(batch(&[b"b"], 7_000), 0, 7_000)
            .await
            .unwrap();
        log.append_leader(batch(&[b"c"], 9_000), 0, 9_000)
            .await
            .unwrap();
        assert_eq!(log.segment_base_offsets(), vec![0, 1, 2]);
    });
}

#[test]
fn read_slices_are_the_longest_whole_batch_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    block_on(async {
        let cfg = LogConfig {
            index_interval_bytes: 100,
            ..LogConfig::default()
        };
        let log = PartitionLog::open(tmp.path().join("t-0"), cfg)
            .await
            .unwrap();
        for i in 0..300usize {
            let v = vec![b'v'; (i * 37) % 250];
            let n = 1 + i % 3;
            let vals: Vec<&[u8]> = (0..n).map(|_| &v[..]).collect();
            log.append_leader(batch(&vals, i as i64), 0, 0)
                .await
                .unwrap();
        }
        let all = read_all(&log, 0).await;
        let leo = log.log_end_offset();
        for (k, from) in [0i64, 1, 5, 77, 200, 401, leo - 1].into_iter().enumerate() {
            for max in [1u32, 100, 500, 1000, 4096, 20_000] {
                for upper in [leo, from + 1, from + 10, from + 150] {
                    let upper = upper.min(leo);
                    let r = log.read(from, max, upper, true).await.unwrap();
                    // Brute force: the batch holding `from`, then whole batches while they fit.
                    let i = all.iter().position(|b| b.1 >= from).unwrap();
                    let mut expect = 0usize;
                    if all[i].1 < upper {
                        expect = all[i].2.len();
                        for b in &all[i + 1..] {
                            if b.1 >= upper || expect + b.2.len() > max as usize {
                                break;
                            }
                            expect += b.2.len();
                        }
                    }
                    let got = r.slice.map_or(0, |s| s.len() as usize);
                    assert_eq!(got, expect, "case {k}: from {from} max {max} upper {upper}");
                }
            }
        }
    });
}

#[test]
fn interval_and_os_flush_policies() {
    let tmp = tempfile::tempdir().unwrap();
    block_on(async {
        let cfg = LogConfig {
            flush: FlushPolicy::Interval { messages: 3, ms: 0 },
            ..LogConfig::default()
        };
        let log = PartitionLog::open(tmp.path().join("m-0"), cfg)
            .await
            .unwrap();
        log.append_leader(batch(&[b"a"], 1), 0, 1).await.unwrap();
        log.append_leader(batch(&[b"b"], 1), 0, 1).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(
            log.durable_offset(),
            0,
            "below flush.messages nothing is synced"
        );
        log.append_leader(batch(&[b"c"], 1), 0, 1).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(log.durable_offset(), 3);

        let cfg = LogConfig {
            flush: FlushPolicy::Interval {
                messages: 0,
                ms: 30,
            },
            ..LogConfig::default()
        };
        let log = PartitionLog::open(tmp.path().join("t-0"), cfg)
            .await
            .unwrap();
        log.append_leader(batch(&[b"a", b"b"], 1), 0, 1)
            .await
            .unwrap();
        assert_eq!(log.durable_offset(), 0);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while log.durable_offset() < 2 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(
            log.durable_offset(),
            2,
            "flush.ms flushed in the background"
        );

        let log = PartitionLog::open(tmp.path().join("o-0"), LogConfig::default())
            .await
            .unwrap();
        log.append_leader(batch(&[b"a"], 1), 0, 1).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(log.durable_offset(), 0);
        log.wait_durable(0).await.unwrap();
        assert_eq!(log.durable_offset(), 1);
        assert!(
            log.wait_durable(5).await.is_err(),
            "waiting for an unassigned offset is an error"
        );
        assert_eq!(log.stats().fsyncs, 1);
    });
}

#[test]
fn recovery_restores_epochs_missing_from_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t-0");
    block_on(async {
        let log = PartitionLog::open(dir.clone(), LogConfig::default())
            .await
            .unwrap();
        log.append_leader(batch(&[b"a"], 1), 2, 1).await.unwrap();
        log.append_leader(batch(&[b"b"], 1), 4, 1).await.unwrap();
        log.append_leader(batch(&[b"c"], 1), 4, 1).await.unwrap();
        drop(log);
        // A crash between the segment write and the checkpoint write.
        std::fs::write(dir.join("leader-epoch-checkpoint"), "0\n1\n2 0\n").unwrap();
        let log = PartitionLog::open(dir.clone(), LogConfig::default())
            .await
            .unwrap();
        assert_eq!(log.epoch_entries(), vec![(2, 0), (4, 1)]);
        assert_eq!(log.end_offset_for_epoch(2), Some((2, 1)));
    });
}

#[test]
fn rolls_exactly_at_segment_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t-0");
    block_on(async {
        let size = batch(&[b"0123456789"], 0).len() as u64;
        let cfg = LogConfig {
            segment_bytes: 3 * size,
            ..LogConfig::default()
        };
        let log = PartitionLog::open(dir.clone(), cfg).await.unwrap();
        assert_eq!(log.size_bytes(), 0);
        assert!(log
            .read(0, 100, i64::MAX, true)
            .await
            .unwrap()
            .slice
            .is_none());
        for i in 0..7 {
            log.append_leader(batch(&[b"0123456789"], i), 0, i)
                .await
                .unwrap();
        }
        // Three batches fill a segment exactly; the fourth rolls.
        assert_eq!(log.segment_base_offsets(), vec![0, 3, 6]);
        assert_eq!(
            std::fs::metadata(dir.join(format!("{:020}.log", 0)))
                .unwrap()
                .len(),
            3 * size
        );
        assert_eq!(log.size_bytes(), 7 * size);
        // A record set larger than a segment is refused.
        let mut big = BytesMut::new();
        for _ in 0..4 {
            big.extend_from_slice(&batch(&[b"0123456789"], 0));
        }
        assert_eq!(
            log.append_leader(big, 0, 0)
                .await
                .unwrap_err()
                .kafka_error_code(),
            18
        );
        log.close().await.unwrap();
        // Rolled segments have trimmed index files of whole entries.
        for base in [0, 3] {
            let idx = std::fs::metadata(dir.join(format!("{base:020}.index")))
                .unwrap()
                .len();
            let tidx = std::fs::metadata(dir.join(format!("{base:020}.timeindex")))
                .unwrap()
                .len();
            assert_eq!(idx % 8, 0);
            assert_eq!(tidx % 12, 0);
            assert!(tidx >= 12, "the roll adds the segment's max timestamp");
        }
    });
}

#[test]
fn old_create_times_do_not_roll_every_append() {
    let tmp = tempfile::tempdir().unwrap();
    block_on(async {
        let cfg = LogConfig {
            segment_ms: 1000,
            ..LogConfig::default()
        };
        let log = PartitionLog::open(tmp.path().join("t-0"), cfg)
            .await
            .unwrap();
        // 2023-07-22: years behind the broker's clock.
        let t2023 = 1_690_000_000_000i64;
        for i in 0..20 {
            log.append_leader(batch(&[b"old"], t2023 + i * 10), 0, wall_clock_ms())
                .await
                .unwrap();
        }
        assert_eq!(
            log.segment_base_offsets(),
            vec![0],
            "record time advanced 190 ms only"
        );
        assert!(
            !log.roll_if_due(wall_clock_ms()).await.unwrap(),
            "the timer measures the segment's wall-clock age, not record timestamps"
        );
        // Exactly segment.ms after the first batch is not yet past it.
        log.append_leader(batch(&[b"edge"], t2023 + 1_000), 0, wall_clock_ms())
            .await
            .unwrap();
        assert_eq!(log.segment_base_offsets(), vec![0]);
        log.append_leader(batch(&[b"later"], t2023 + 1_001), 0, wall_clock_ms())
            .await
            .unwrap();
        assert_eq!(log.segment_base_offsets(), vec![0, 21]);
        // The new segment measures from its own first batch.
        log.append_leader(batch(&[b"x"], t2023 + 1_500), 0, wall_clock_ms())
            .await
            .unwrap();
        log.append_leader(batch(&[b"y"], t2023 + 2_002), 0, wall_clock_ms())
            .await
            .unwrap();
        assert_eq!(log.segment_base_offsets(), vec![0, 21, 23]);
    });
}

/// One batch encoded by kafka-protocol with `codec`, records at offsets 0.. with `timestamps`.
fn kp_batch(codec: kafka_protocol::records::Compression, timestamps: &[i64]) -> BytesMut {
    use kafka_protocol::records::{
        Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType as KpTimestampType,
    };
    let records: Vec<Record> = timestamps
        .iter()
        .enumerate()
        .map(|(i, &ts)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: KpTimestampType::Creation,
            offset: i as i64,
            // kafka-protocol starts a new batch when offset - sequence changes.
            sequence: i as i32 - 1,
            timestamp: ts,
            key: Some(bytes::Bytes::from(format!("k{i}"))),
            value: Some(bytes::Bytes::from(vec![b'v'; 64 + i])),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: codec,
        },
    )
    .unwrap();
    let h = validate_batch(&buf).unwrap();
    assert_eq!(
        (h.size(), h.records_count),
        (buf.len(), timestamps.len() as i32)
    );
    buf
}

#[test]
fn offset_for_timestamp_is_exact_inside_compressed_batches() {
    use kafka_protocol::records::Compression as Kp;
    for codec in [Kp::Gzip, Kp::Zstd, Kp::Snappy, Kp::Lz4] {
        let tmp = tempfile::tempdir().unwrap();
        block_on(async {
            let log = PartitionLog::open(tmp.path().join("t-0"), LogConfig::default())
                .await
                .unwrap();
            // Offsets 0..=4, 5..=9, 10..=11; timestamps are not monotonic inside a batch.
            let first = kp_batch(codec, &[100, 300, 200, 400, 500]);
            let h = validate_batch(&first).unwrap();
            assert_ne!(h.compression().to_string(), "none", "{codec:?}");
            log.append_leader(first, 0, 0).await.unwrap();
            log.append_leader(kp_batch(codec, &[600, 640, 610, 620, 630]), 0, 0)
                .await
                .unwrap();
            log.append_leader(kp_batch(codec, &[700, 710]), 0, 0)
                .await
                .unwrap();
            let at = |ts| {
                let log = &log;
                async move { log.offset_for_timestamp(ts).await.unwrap() }
            };
            assert_eq!(at(50).await, Some((0, 100)), "{codec:?}");
            assert_eq!(at(150).await, Some((1, 300)), "{codec:?}");
            assert_eq!(at(250).await, Some((1, 300)), "{codec:?}");
            assert_eq!(at(301).await, Some((3, 400)), "{codec:?}");
            assert_eq!(at(500).await, Some((4, 500)), "{codec:?}");
            assert_eq!(at(601).await, Some((6, 640)), "{codec:?}");
            assert_eq!(at(640).await, Some((6, 640)), "{codec:?}");
            assert_eq!(at(641).await, Some((10, 700)), "{codec:?}");
            assert_eq!(at(705).await, Some((11, 710)), "{codec:?}");
            assert_eq!(at(711).await, None, "{codec:?}");
            // Records before the log start offset are skipped, as in Kafka; a batch whose
            // only matching record lies below it is passed over for the next one.
            log.delete_records_before(7).await.unwrap();
            assert_eq!(at(601).await, Some((7, 610)), "{codec:?}");
            assert_eq!(at(635).await, Some((10, 700)), "{codec:?}");
        });
    }
}

#[test]
fn undecodable_compressed_batch_falls_back_to_base_offset() {
    use kafka_protocol::records::Compression as Kp;
    let tmp = tempfile::tempdir().unwrap();
    block_on(async {
        let log = PartitionLog::open(tmp.path().join("t-0"), LogConfig::default())
            .await
            .unwrap();
        let mut b = kp_batch(Kp::Gzip, &[100, 300, 200]);
        // Corrupt the gzip stream after the header, then fix the CRC so the batch is accepted.
        let size = validate_batch(&b).unwrap().size();
        assert_eq!(size, b.len());
        for byte in &mut b[size - 8..size] {
            *byte ^= 0x5a;
        }
        let crc = sluice::storage::record_batch::compute_crc(&b[..size]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        log.append_leader(b, 0, 0).await.unwrap();
        assert_eq!(log.offset_for_timestamp(150).await.unwrap(), Some((0, 300)));
    });
}

/// (relative offset, position) entries of `.index` bytes, stopping at the first zero entry
/// (preallocated space).
fn index_file_entries(bytes: &[u8]) -> Vec<(u32, u32)> {
    bytes
        .chunks_exact(8)
        .map(|c| {
            (
                u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
                u32::from_be_bytes([c[4], c[5], c[6], c[7]]),
            )
        })
        .take_while(|&(rel, pos)| rel != 0 || pos != 0)
        .collect()
}

#[test]
fn index_files_are_preallocated_written_per_entry_and_trimmed_at_roll() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t-0");
    let cfg = LogConfig {
        segment_bytes: 1 << 20,
        segment_index_bytes: 4096,
        index_interval_bytes: 100,
        retention_ms: -1,
        ..LogConfig::default()
    };
    block_on(async {
        let log = PartitionLog::open(dir.clone(), cfg).await.unwrap();
        for i in 0..30 {
            log.append_leader(
                batch(&[b"a record of some forty bytes or so....."], i),
                2,
                i,
            )
            .await
            .unwrap();
        }
        let index_path = dir.join(format!("{:020}.index", 0));
        let time_path = dir.join(format!("{:020}.timeindex", 0));
        let bytes = std::fs::read(&index_path).unwrap();
        assert_eq!(bytes.len(), 4096, "active .index is preallocated");
        assert_eq!(std::fs::metadata(&time_path).unwrap().len(), 4092);
        let entries = index_file_entries(&bytes);
        assert!(entries.len() >= 5, "entries written as added: {entries:?}");
        // Every entry points at a batch start whose last offset is the entry's offset.
        let log_bytes = std::fs::read(dir.join(format!("{:020}.log", 0))).unwrap();
        let starts: Vec<(u32, i64)> = BatchIter::new(&log_bytes)
            .map(|r| {
                let (pos, h) = r.unwrap();
                (pos as u32, h.last_offset())
            })
            .collect();
        for &(rel, pos) in &entries {
            assert!(
                starts.contains(&(pos, i64::from(rel))),
                "entry ({rel}, {pos}) is not a batch start"
            );
        }
        // Roll: the old segment's index is trimmed to its entries.
        log.set_config(LogConfig {
            segment_bytes: 200,
            ..cfg
        });
        log.append_leader(batch(&[b"after roll"], 30), 2, 30)
            .await
            .unwrap();
        assert_eq!(log.segment_base_offsets(), vec![0, 30]);
        let mut trimmed = 0;
        for _ in 0..250 {
            trimmed = std::fs::metadata(&index_path).unwrap().len();
            if trimmed != 4096 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(trimmed, 8 * entries.len() as u64);
        assert_eq!(
            index_file_entries(&std::fs::read(&index_path).unwrap()),
            entries
        );
        assert_eq!(
            std::fs::metadata(dir.join(format!("{:020}.index", 30)))
                .unwrap()
                .len(),
            4096
        );
        for i in 31..40 {
            log.append_leader(batch(&[b"in the new segment"], i), 2, i)
                .await
                .unwrap();
        }
        let before = read_all(&log, 0).await;
        assert_eq!(before.len(), 40);
        // Kill-style: no close, so the active segment's index stays preallocated.
        drop(log);
        let log = PartitionLog::open(dir.clone(), cfg).await.unwrap();
        assert_eq!(read_all(&log, 0).await, before);
        assert_eq!(log.log_end_offset(), 40);
        log.close().await.unwrap();
        let active = std::fs::metadata(dir.join(format!("{:020}.index", 30)))
            .unwrap()
            .len();
        assert_eq!(active % 8, 0);
        assert!(active < 4096, "clean close trims the active index");
        let log = PartitionLog::open(dir.clone(), cfg).await.unwrap();
        assert_eq!(read_all(&log, 0).await, before);
        log.close().await.unwrap();
    });
}

/// Batches stored with a -1 max timestamp, as data written before the leader computed it looks
/// on disk (a follower copies the leader's bytes as they are, which is how they are made here):
/// time lookups read the record timestamps while the log is open, and a reopen rebuilds the
/// time index from them, so retention by time sees the real times. The bytes stay as stored.
#[test]
fn minus_one_max_timestamps_are_handled_at_read_and_recovery() {
    use sluice::storage::record_batch::builder::build_timed_batch;
    use sluice::storage::record_batch::Compression;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t-0");
    let cfg = LogConfig {
        segment_bytes: 400,
        ..small_config()
    };
    // 12 batches of 4 records: batch i has timestamps 1000 * (i + 1) + {0, 30, 10, 20}.
    let mut all: Vec<i64> = Vec::new();
    let mut batches = Vec::new();
    for i in 0..12i64 {
        let ts: Vec<i64> = [0, 30, 10, 20].iter().map(|d| 1000 * (i + 1) + d).collect();
        let codec = [Compression::None, Compression::Gzip, Compression::Zstd][i as usize % 3];
        let spec = BatchSpec {
            base_offset: 4 * i,
            partition_leader_epoch: 0,
            ..Default::default()
        };
        batches.push(build_timed_batch(&spec, &ts, codec, Some(-1)).unwrap());
        all.extend(ts);
    }
    let expected = |t: i64| all.iter().position(|&x| x >= t).map(|o| (o as i64, all[o]));
    let probes = [0, 1000, 1015, 1021, 1031, 5000, 7025, 12_030, 12_031];
    block_on(async {
        let log = PartitionLog::open(dir.clone(), cfg).await.unwrap();
        for b in &batches {
            log.append_follower(BytesMut::from(&b[..])).await.unwrap();
        }
        assert!(log.segment_count() > 2, "the test needs several segments");
        for t in probes {
            assert_eq!(
                log.offset_for_timestamp(t).await.unwrap(),
                expected(t),
                "open, ts {t}"
            );
        }
        log.close().await.unwrap();

        let log = PartitionLog::open(dir.clone(), cfg).await.unwrap();
        for t in probes {
            assert_eq!(
                log.offset_for_timestamp(t).await.unwrap(),
                expected(t),
                "reopened, ts {t}"
            );
        }
        let got = read_all(&log, 0).await;
        assert_eq!(got.len(), 12);
        for (i, (_, _, bytes)) in got.iter().enumerate() {
            assert_eq!(bytes, &batches[i], "batch {i} changed on disk");
        }
        // Every closed segment's records are ~1.7e12 ms older than the clock: all go. With -1
        // as their max they would fall back to the files' mtime (now) and stay.
        let segments = log.segment_count();
        log.set_config(LogConfig {
            retention_ms: 1_000_000,
            ..cfg
        });
        let out = log.enforce_retention(wall_clock_ms()).await.unwrap();
        assert_eq!(out.deleted_segments, segments - 1);
        log.close().await.unwrap();
    });
}
