//! Log compaction end to end on a real io_uring runtime: the cleaner against a model (latest
//! record per key), tombstones, codecs, concurrent readers, crash points of the swap, and the
//! produce-time key check.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use bytes::BytesMut;
use proptest::prelude::*;
use sluice::io::runtime::block_on;
use sluice::storage::cleaner::records::{
    build_keyed_batch, parse_records, records_section, KeyValue,
};
use sluice::storage::cleaner::{inject_crash, CleanerConfig, LogCleaner, SwapStep};
use sluice::storage::record_batch::{BatchIter, Compression};
use sluice::storage::{AppendError, LogConfig, PartitionLog};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One record as read back: offset, raw record bytes, key, value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    offset: i64,
    raw: Vec<u8>,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
}

fn decode(bytes: &[u8]) -> Vec<Rec> {
    let mut out = Vec::new();
    for item in BatchIter::new(bytes) {
        let (pos, h) = item.unwrap();
        let batch = &bytes[pos..pos + h.size()];
        let section = records_section(batch, &h, 64 << 20).unwrap();
        for r in parse_records(&section, h.records_count).unwrap() {
            out.push(Rec {
                offset: h.base_offset + i64::from(r.offset_delta),
                raw: section[r.bytes.clone()].to_vec(),
                key: r.key.clone().map(|k| section[k].to_vec()),
                value: r.value.clone().map(|v| section[v].to_vec()),
            });
        }
    }
    out
}

async fn read_all(log: &PartitionLog) -> Vec<Rec> {
    let mut out = Vec::new();
    let mut next = log.log_start_offset();
    loop {
        let r = log.read(next, 1 << 20, i64::MAX, true).await.unwrap();
        let Some(slice) = r.slice else { break };
        let bytes = slice.read_to_vec().await.unwrap();
        for item in BatchIter::new(&bytes) {
            let (_, h) = item.unwrap();
            next = h.next_offset();
        }
        out.extend(decode(&bytes));
    }
    out
}

fn config(delete_retention_ms: i64) -> LogConfig {
    LogConfig {
        segment_bytes: 600,
        index_interval_bytes: 64,
        retention_ms: -1,
        compact: true,
        delete: false,
        delete_retention_ms,
        min_cleanable_dirty_ratio_ppm: 0,
        ..LogConfig::default()
    }
}

fn cleaner() -> LogCleaner {
    LogCleaner::new(CleanerConfig {
        backoff_ms: 10,
        ..CleanerConfig::default()
    })
}

/// A produced record: key (None = unkeyed), value (None = tombstone).
type Op = (Option<u8>, Option<u16>);

/// Appends `ops` in batches of `per_batch`, then rolls so every batch is cleanable, and waits
/// for the rolled segments to be finished (recovery point past them). Returns the records
/// as written.
async fn produce(log: &PartitionLog, ops: &[Op], per_batch: usize, codec: Compression) {
    let ts = now_ms() - 3_600_000;
    // Unkeyed records can only be in a compacted log from before it was compacted.
    let cfg = log.config();
    log.set_config(LogConfig {
        compact: false,
        ..cfg
    });
    for chunk in ops.chunks(per_batch.max(1)) {
        let keys: Vec<Option<Vec<u8>>> = chunk
            .iter()
            .map(|(k, _)| k.map(|k| format!("key-{k}").into_bytes()))
            .collect();
        let vals: Vec<Option<Vec<u8>>> = chunk
            .iter()
            .map(|(_, v)| {
                v.map(|v| format!("value-{v}-{}", "x".repeat(usize::from(v % 7))).into_bytes())
            })
            .collect();
        let recs: Vec<KeyValue<'_>> = keys
            .iter()
            .zip(&vals)
            .map(|(k, v)| (k.as_deref(), v.as_deref()))
            .collect();
        let b = build_keyed_batch(0, ts, codec, -1, &recs).unwrap();
        log.append_leader(BytesMut::from(&b[..]), 0, now_ms())
            .await
            .unwrap();
    }
    log.set_config(cfg);
    settle(log).await;
}

/// Rolls the active segment and waits until the rolled segments are flushed.
async fn settle(log: &PartitionLog) {
    // A timer roll: segment.ms briefly at 1 ms.
    let cfg = log.config();
    log.set_config(LogConfig {
        segment_ms: 1,
        ..cfg
    });
    tokio::time::sleep(Duration::from_millis(3)).await;
    assert!(
        log.roll_if_due(now_ms()).await.unwrap(),
        "active segment rolls"
    );
    log.set_config(cfg);
    log.flush().await.unwrap();
    // Rolled segments are finished (indexes, fsync, recovery point) in the background.
    for _ in 0..1000 {
        let c = cleaner().cleanable(log, now_ms()).unwrap();
        if c.end + 1 == log.segment_count() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "rolled segments never finished: {:?} {:?} {:?} end {}",
        cleaner().cleanable(log, now_ms()),
        std::fs::read_to_string(log.dir().join("recovery-point-offset-checkpoint")),
        log.segment_base_offsets(),
        log.log_end_offset()
    );
}

/// What the log must hold once everything is compacted: the latest record of each key
/// (dropped if it is a tombstone and `drop_tombstones`), and every unkeyed record.
fn expected(written: &[Rec], drop_tombstones: bool) -> Vec<Rec> {
    let mut latest: HashMap<Vec<u8>, i64> = HashMap::new();
    for r in written {
        if let Some(k) = &r.key {
            latest.insert(k.clone(), r.offset);
        }
    }
    written
        .iter()
        .filter(|r| match &r.key {
            None => true,
            Some(k) => latest[k] == r.offset && !(drop_tombstones && r.value.is_none()),
        })
        .cloned()
        .collect()
}

/// (offset, key, tombstone) of each record: what a failure message needs.
fn summary(recs: &[Rec]) -> Vec<(i64, String, bool)> {
    recs.iter()
        .map(|r| {
            let k = r
                .key
                .as_deref()
                .map_or("-".into(), |k| String::from_utf8_lossy(k).into_owned());
            (r.offset, k, r.value.is_none())
        })
        .collect()
}

fn assert_same(got: &[Rec], want: &[Rec], what: &str) {
    assert_eq!(summary(got), summary(want), "{what}");
    assert!(got == want, "{what}: record bytes differ");
}

fn assert_monotonic(recs: &[Rec]) {
    for w in recs.windows(2) {
        assert!(w[0].offset < w[1].offset, "offsets not increasing: {w:?}");
    }
}

fn ops_with_overwrites(n: usize) -> Vec<Op> {
    (0..n)
        .map(|i| {
            let key = (i * 7 % 13) as u8;
            if i % 11 == 5 {
                (Some(key), None)
            } else if i % 17 == 3 {
                (None, Some(i as u16))
            } else {
                (Some(key), Some(i as u16))
            }
        })
        .collect()
}

#[test]
fn compacts_to_latest_per_key_for_every_codec() {
    for codec in [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("t-0");
        block_on(async {
            let log = PartitionLog::open(dir.clone(), config(0)).await.unwrap();
            produce(&log, &ops_with_overwrites(200), 4, codec).await;
            let written = read_all(&log).await;
            let end_before = log.log_end_offset();
            let stats = cleaner().clean(&log, now_ms()).await.unwrap().unwrap();
            assert!(stats.records_removed > 0, "{codec}: {stats:?}");
            let after = read_all(&log).await;
            assert_same(&after, &expected(&written, true), &format!("{codec}"));
            assert_monotonic(&after);
            assert_eq!(log.log_end_offset(), end_before);
            // Rebuilt batches keep their codec.
            let r = log.read(0, 1 << 20, i64::MAX, true).await.unwrap();
            let bytes = r.slice.unwrap().read_to_vec().await.unwrap();
            let (_, h) = BatchIter::new(&bytes).next().unwrap().unwrap();
            assert!(h.records_count == 0 || h.compression() == codec, "{codec}");
            // Nothing more to do until new data arrives.
            assert!(cleaner().clean(&log, now_ms()).await.unwrap().is_none());
            // The next pass merges the now small cleaned segments (grouped by segment.bytes).
            produce(&log, &[(Some(1), Some(1))], 1, codec).await;
            let after = read_all(&log).await;
            let before = log.segment_count();
            cleaner().clean(&log, now_ms()).await.unwrap().unwrap();
            assert!(log.segment_count() < before, "{codec}: groups merged");
            assert_same(&read_all(&log).await, &expected(&after, true), "merged");
            let end_before = log.log_end_offset();
            let after = read_all(&log).await;
            log.close().await.unwrap();
            let log = PartitionLog::open(dir.clone(), config(0)).await.unwrap();
            assert_eq!(read_all(&log).await, after, "{codec}: survives reopen");
            assert_eq!(log.log_end_offset(), end_before);
            // Appends continue at the same offsets.
            let b = build_keyed_batch(0, now_ms(), codec, -1, &[(Some(b"k"), Some(b"v"))]).unwrap();
            let info = log
                .append_leader(BytesMut::from(&b[..]), 0, now_ms())
                .await
                .unwrap();
            assert_eq!(info.first_offset, end_before);
        });
    }
}

#[test]
fn tombstones_stay_until_delete_retention_and_dirty_ratio_gates() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t-0");
    block_on(async {
        let cfg = LogConfig {
            min_cleanable_dirty_ratio_ppm: 500_000,
            ..config(24 * 3_600_000)
        };
        let log = PartitionLog::open(dir.clone(), cfg).await.unwrap();
        produce(&log, &ops_with_overwrites(120), 3, Compression::None).await;
        let written = read_all(&log).await;
        cleaner().clean(&log, now_ms()).await.unwrap().unwrap();
        let after = read_all(&log).await;
        assert_same(&after, &expected(&written, false), "first");
        assert!(after.iter().any(|r| r.key.is_some() && r.value.is_none()));
        // Below the dirty ratio: a small amount of new data does not trigger a cleaning.
        produce(&log, &ops_with_overwrites(2), 1, Compression::None).await;
        let c = cleaner().cleanable(&log, now_ms()).unwrap();
        assert!(
            c.dirty_ratio() > 0.0 && c.dirty_ratio() < 0.5,
            "{c:?} {:?} {}",
            log.segment_base_offsets(),
            log.log_end_offset()
        );
        assert!(cleaner().clean(&log, now_ms()).await.unwrap().is_none());
        // Once delete.retention.ms has passed, the tombstones go.
        log.set_config(LogConfig {
            delete_retention_ms: 0,
            min_cleanable_dirty_ratio_ppm: 0,
            ..cfg
        });
        let written = read_all(&log).await;
        cleaner().clean(&log, now_ms()).await.unwrap().unwrap();
        assert_same(&read_all(&log).await, &expected(&written, true), "second");
    });
}

#[test]
fn readers_keep_old_segments_and_removed_offsets_read_forward() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t-0");
    block_on(async {
        let log = PartitionLog::open(dir.clone(), config(0)).await.unwrap();
        // key 1 written first and overwritten later: offsets 0..4 become garbage.
        let mut ops: Vec<Op> = (0..5).map(|i| (Some(1), Some(i))).collect();
        ops.extend((0..60).map(|i| (Some((i % 9) as u8 + 2), Some(i))));
        ops.push((Some(1), Some(999)));
        produce(&log, &ops, 5, Compression::None).await;
        let in_flight = log
            .read(0, 4096, i64::MAX, true)
            .await
            .unwrap()
            .slice
            .unwrap();
        let before = in_flight.read_to_vec().await.unwrap();
        cleaner().clean(&log, now_ms()).await.unwrap().unwrap();
        // The slice taken before the swap still reads the old bytes (its file is unlinked
        // or replaced, but the descriptor lives).
        assert_eq!(in_flight.read_to_vec().await.unwrap(), before);
        // A fetch at a removed offset answers with the next batch above it.
        let r = log.read(2, 1 << 20, i64::MAX, true).await.unwrap();
        let recs = decode(&r.slice.unwrap().read_to_vec().await.unwrap());
        assert!(recs[0].offset > 4, "{:?}", recs[0]);
        let all = read_all(&log).await;
        assert_monotonic(&all);
        // ListOffsets by time walks batches with offset gaps.
        let (first, _) = log.offset_for_timestamp(0).await.unwrap().unwrap();
        assert_eq!(first, all[0].offset);
        assert_eq!(
            all.iter()
                .filter(|r| r.key.as_deref() == Some(b"key-1"))
                .count(),
            1
        );
    });
}

#[test]
fn compacted_topics_refuse_keyless_records() {
    let tmp = tempfile::tempdir().unwrap();
    block_on(async {
        let log = PartitionLog::open(tmp.path().join("t-0"), config(0))
            .await
            .unwrap();
        for codec in [Compression::None, Compression::Zstd] {
            let b = build_keyed_batch(
                0,
                0,
                codec,
                -1,
                &[(Some(b"k"), Some(b"v")), (None, Some(b"v"))],
            )
            .unwrap();
            let err = log
                .append_leader(BytesMut::from(&b[..]), 0, 0)
                .await
                .unwrap_err();
            assert!(matches!(err, AppendError::InvalidRecord(_)), "{err}");
            assert_eq!(err.kafka_error_code(), 87);
        }
        assert_eq!(log.log_end_offset(), 0);
    });
}

#[test]
fn last_batch_of_a_producer_survives_empty() {
    let tmp = tempfile::tempdir().unwrap();
    block_on(async {
        let log = PartitionLog::open(tmp.path().join("t-0"), config(0))
            .await
            .unwrap();
        let ts = now_ms() - 3_600_000;
        let b =
            build_keyed_batch(0, ts, Compression::None, 42, &[(Some(b"a"), Some(b"1"))]).unwrap();
        log.append_leader(BytesMut::from(&b[..]), 0, 0)
            .await
            .unwrap();
        let b =
            build_keyed_batch(0, ts, Compression::None, -1, &[(Some(b"a"), Some(b"2"))]).unwrap();
        log.append_leader(BytesMut::from(&b[..]), 0, 0)
            .await
            .unwrap();
        settle(&log).await;
        cleaner().clean(&log, now_ms()).await.unwrap().unwrap();
        let r = log.read(0, 1 << 20, i64::MAX, true).await.unwrap();
        let bytes = r.slice.unwrap().read_to_vec().await.unwrap();
        let headers: Vec<_> = BatchIter::new(&bytes).map(|b| b.unwrap().1).collect();
        assert_eq!(headers[0].producer_id, 42);
        assert_eq!(
            headers[0].records_count, 0,
            "emptied but kept for the producer"
        );
        assert_eq!(decode(&bytes).len(), 1);
    });
}

fn dir_names(dir: &Path) -> BTreeMap<String, u64> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect()
}

#[test]
fn a_crash_at_any_swap_step_loses_nothing() {
    for step in [
        SwapStep::Cleaned,
        SwapStep::Committed,
        SwapStep::Renamed,
        SwapStep::Deleted,
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("t-0");
        block_on(async {
            let log = PartitionLog::open(dir.clone(), config(0)).await.unwrap();
            produce(&log, &ops_with_overwrites(150), 4, Compression::Gzip).await;
            let written = read_all(&log).await;
            let end = log.log_end_offset();
            inject_crash(Some(step));
            let err = cleaner().clean(&log, now_ms()).await.unwrap_err();
            assert!(err.to_string().contains("injected crash"), "{err}");
            // "kill -9": no close, nothing else runs; reopen from what is on disk.
            drop(log);
            let log = PartitionLog::open(dir.clone(), config(0)).await.unwrap();
            let names = dir_names(&dir);
            assert!(
                !names
                    .keys()
                    .any(|n| n.ends_with(".cleaned") || n.ends_with(".swap")),
                "{step:?}: leftovers {names:?}"
            );
            let recovered = read_all(&log).await;
            assert_monotonic(&recovered);
            assert_eq!(log.log_end_offset(), end, "{step:?}");
            // Every record read back is an original one, and no latest value was lost.
            let by_offset: HashMap<i64, &Rec> = written.iter().map(|r| (r.offset, r)).collect();
            for r in &recovered {
                assert_eq!(by_offset.get(&r.offset), Some(&r), "{step:?}");
            }
            for r in expected(&written, true) {
                assert!(recovered.contains(&r), "{step:?}: lost {r:?}");
            }
            if step != SwapStep::Cleaned {
                // A committed swap was completed by recovery: the first group is compacted.
                assert!(recovered.len() < written.len(), "{step:?}");
            } else {
                assert_eq!(recovered, written, "{step:?}");
            }
            // A full cleaning then reaches the model.
            while cleaner().clean(&log, now_ms()).await.unwrap().is_some() {}
            assert_same(
                &read_all(&log).await,
                &expected(&written, true),
                &format!("{step:?}"),
            );
        });
    }
}

fn op_strategy() -> impl Strategy<Value = Op> {
    (
        prop::option::weighted(0.9, 0u8..12),
        prop::option::weighted(0.85, any::<u16>()),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Model: after compaction the log reads as exactly the latest record per key (tombstones
    /// gone with delete.retention.ms=0) plus every unkeyed record, each byte-identical to what
    /// was written, offsets strictly increasing; several rounds of produce-then-clean keep it.
    #[test]
    fn compaction_matches_the_model(
        rounds in prop::collection::vec(prop::collection::vec(op_strategy(), 1..80), 1..4),
        per_batch in 1usize..6,
        codec in prop::sample::select(vec![Compression::None, Compression::Gzip, Compression::Lz4]),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("t-0");
        block_on(async {
            let log = PartitionLog::open(dir.clone(), config(0)).await.unwrap();
            let mut cleaner = cleaner();
            let mut written: Vec<Rec> = Vec::new();
            for ops in &rounds {
                let before = log.log_end_offset();
                produce(&log, ops, per_batch, codec).await;
                // New records as written: read them before any cleaning touches them.
                let all = read_all(&log).await;
                written.extend(all.into_iter().filter(|r| r.offset >= before));
                cleaner.clean(&log, now_ms()).await.unwrap();
                let after = read_all(&log).await;
                assert_monotonic(&after);
                assert_same(&after, &expected(&written, true), "round");
            }
        });
    }
}
