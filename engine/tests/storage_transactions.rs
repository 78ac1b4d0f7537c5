//! Transactions in `PartitionLog`: transactional batches and COMMIT/ABORT markers, fencing of
//! stale markers, the last stable offset, the `.txnindex` files, read_committed reads against
//! a model, recovery after a crash or a torn index, truncation, retention and the cleaner.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bytes::BytesMut;
use proptest::prelude::*;
use sluice::io::runtime::block_on;
use sluice::storage::cleaner::records::{
    build_keyed_batch, parse_records, records_section, KeyValue,
};
use sluice::storage::cleaner::{CleanerConfig, LogCleaner};
use sluice::storage::record_batch::builder::{build_batch, BatchSpec};
use sluice::storage::record_batch::{BatchIter, Compression};
use sluice::storage::txn_index::{self, parse_marker, AbortedTxn, ENTRY_LEN, TXN_INDEX_SUFFIX};
use sluice::storage::{AppendError, LogConfig, PartitionLog};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Rewrites attributes and base sequence of a batch and fixes its CRC.
fn patch(mut b: Vec<u8>, attributes: i16, seq: i32, epoch: i16) -> BytesMut {
    b[21..23].copy_from_slice(&attributes.to_be_bytes());
    b[51..53].copy_from_slice(&epoch.to_be_bytes());
    b[53..57].copy_from_slice(&seq.to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    BytesMut::from(&b[..])
}

/// A batch of `n` records from `pid`/`epoch` at sequence `seq`, transactional or not.
fn batch(pid: i64, epoch: i16, seq: i32, n: usize, transactional: bool) -> BytesMut {
    let vals: Vec<Vec<u8>> = (0..n)
        .map(|i| format!("p{pid}-s{seq}-{i}").into_bytes())
        .collect();
    let refs: Vec<&[u8]> = vals.iter().map(|v| &v[..]).collect();
    let b = build_batch(
        &BatchSpec {
            base_timestamp: now_ms(),
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            ..Default::default()
        },
        &refs,
    );
    patch(b, if transactional { 0x10 } else { 0 }, seq, epoch)
}

fn plain(n: usize) -> BytesMut {
    let vals: Vec<Vec<u8>> = (0..n).map(|i| format!("plain-{i}").into_bytes()).collect();
    let refs: Vec<&[u8]> = vals.iter().map(|v| &v[..]).collect();
    BytesMut::from(&build_batch(&BatchSpec::default(), &refs)[..])
}

fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes: 700,
        index_interval_bytes: 100,
        retention_ms: -1,
        ..LogConfig::default()
    }
}

async fn open(dir: &Path, cfg: LogConfig) -> PartitionLog {
    let log = PartitionLog::open(dir.to_path_buf(), cfg).await.unwrap();
    log.set_transactions_enabled(true);
    log
}

async fn append(log: &PartitionLog, b: BytesMut) -> Result<i64, AppendError> {
    log.append_leader(b, 0, now_ms())
        .await
        .map(|i| i.first_offset)
}

async fn marker(
    log: &PartitionLog,
    pid: i64,
    epoch: i16,
    coordinator_epoch: i32,
    abort: bool,
) -> Result<i64, AppendError> {
    log.append_txn_marker(pid, epoch, coordinator_epoch, abort, 0, now_ms())
        .await
        .map(|i| i.first_offset)
}

fn txn_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            name.ends_with(&format!(".{TXN_INDEX_SUFFIX}"))
                .then(|| (name, std::fs::read(e.path()).unwrap()))
        })
        .collect()
}

/// What a read_committed consumer delivers from `from` up to the LSO for `hw`: the offsets
/// of data records, filtered with the aborted list as Kafka's consumer does.
async fn committed_view(log: &PartitionLog, hw: i64) -> (Vec<i64>, i64) {
    let mut out = Vec::new();
    let mut next = log.log_start_offset();
    let mut lso;
    loop {
        let r = log.read_committed(next, 1 << 20, hw, true).await.unwrap();
        lso = r.last_stable_offset;
        let Some(slice) = r.read.slice else { break };
        let bytes = slice.read_to_vec().await.unwrap();
        let mut aborted: Vec<(i64, i64)> = r.aborted.clone();
        aborted.sort_by_key(|a| a.1);
        let mut pending = aborted.into_iter().peekable();
        let mut aborting = std::collections::HashSet::new();
        for item in BatchIter::new(&bytes) {
            let (pos, h) = item.unwrap();
            next = h.next_offset();
            assert!(
                h.last_offset() < lso,
                "a read_committed read passed the LSO"
            );
            while pending.peek().is_some_and(|a| a.1 <= h.last_offset()) {
                aborting.insert(pending.next().unwrap().0);
            }
            if h.is_control() {
                let m = parse_marker(&bytes[pos..pos + h.size()], &h).unwrap();
                if m.is_some_and(|m| m.aborted) {
                    aborting.remove(&h.producer_id);
                }
                continue;
            }
            if h.is_transactional() && aborting.contains(&h.producer_id) {
                continue;
            }
            out.extend(h.base_offset..=h.last_offset());
        }
    }
    (out, lso)
}

#[test]
fn markers_complete_transactions_and_move_the_lso() {
    let tmp = tempfile::tempdir().unwrap();
    block_on(async {
        let dir = tmp.path().join("t-0");
        let log = open(&dir, LogConfig::default()).await;
        assert_eq!(log.last_stable_offset(0), 0);
        assert_eq!(append(&log, batch(1, 0, 0, 2, true)).await.unwrap(), 0);
        assert_eq!(append(&log, plain(1)).await.unwrap(), 2);
        assert_eq!(append(&log, batch(2, 0, 0, 3, true)).await.unwrap(), 3);
        assert_eq!(append(&log, batch(1, 0, 2, 1, true)).await.unwrap(), 6);
        let leo = log.log_end_offset();
        assert_eq!(leo, 7);
        assert_eq!(log.last_stable_offset(leo), 0);
        assert_eq!(log.open_transactions(), vec![(1, 0), (2, 3)]);
        // read_committed returns nothing below an LSO of 0.
        let r = log.read_committed(0, 1 << 20, leo, true).await.unwrap();
        assert!(r.read.slice.is_none());
        assert_eq!(r.last_stable_offset, 0);

        assert_eq!(marker(&log, 1, 0, 0, false).await.unwrap(), 7);
        // The commit is not replicated until the high watermark passes its marker.
        assert_eq!(log.last_stable_offset(7), 0);
        assert_eq!(log.last_stable_offset(8), 3);
        assert_eq!(marker(&log, 2, 0, 0, true).await.unwrap(), 8);
        assert_eq!(log.last_stable_offset(9), 9);
        assert!(log.open_transactions().is_empty());
        assert_eq!(
            log.aborted_index_entries(),
            vec![AbortedTxn {
                producer_id: 2,
                first_offset: 3,
                last_offset: 8,
                last_stable_offset: 9
            }]
        );
        // The .txnindex holds exactly that entry in Kafka's layout.
        let files = txn_files(&dir);
        assert_eq!(files.len(), 1);
        let bytes = files.values().next().unwrap();
        assert_eq!(bytes.len(), ENTRY_LEN);
        assert_eq!(
            txn_index::decode(bytes, 0, 9).unwrap(),
            log.aborted_index_entries()
        );
        let (view, lso) = committed_view(&log, 9).await;
        assert_eq!(lso, 9);
        assert_eq!(view, vec![0, 1, 2, 6]);
        let r = log.read_committed(0, 1 << 20, 9, true).await.unwrap();
        assert_eq!(r.aborted, vec![(2, 3)]);
        // Without transactions after the marker the LSO is the high watermark.
        append(&log, plain(2)).await.unwrap();
        assert_eq!(log.last_stable_offset(11), 11);
        log.close().await.unwrap();
    });
}

#[test]
fn stale_markers_and_mixed_batches_are_fenced() {
    let tmp = tempfile::tempdir().unwrap();
    block_on(async {
        let log = open(&tmp.path().join("t-0"), LogConfig::default()).await;
        append(&log, batch(7, 3, 0, 1, true)).await.unwrap();
        // Data outside the open transaction: INVALID_TXN_STATE.
        let e = append(&log, batch(7, 3, 1, 1, false)).await.unwrap_err();
        assert_eq!(e.kafka_error_code(), 48);
        // A marker from an older producer epoch: INVALID_PRODUCER_EPOCH.
        let e = marker(&log, 7, 2, 0, false).await.unwrap_err();
        assert_eq!(e.kafka_error_code(), 47);
        assert_eq!(log.open_transactions(), vec![(7, 0)]);
        marker(&log, 7, 3, 5, true).await.unwrap();
        // A marker from an older coordinator: TRANSACTION_COORDINATOR_FENCED.
        append(&log, batch(7, 3, 1, 1, true)).await.unwrap();
        let e = marker(&log, 7, 3, 4, false).await.unwrap_err();
        assert_eq!(e.kafka_error_code(), 52);
        marker(&log, 7, 3, 5, false).await.unwrap();
        assert!(log.open_transactions().is_empty());
        // A transactional batch without a producer id is invalid.
        let e = append(&log, patch(plain(1).to_vec(), 0x10, -1, -1))
            .await
            .unwrap_err();
        assert_eq!(e.kafka_error_code(), 87);
        // Clients may not write control batches.
        let m = txn_index::build_marker_batch(7, 3, 5, true, now_ms());
        let e = append(&log, BytesMut::from(&m[..])).await.unwrap_err();
        assert_eq!(e.kafka_error_code(), 87);
    });
}

#[test]
fn transactional_batches_are_refused_unless_enabled() {
    let tmp = tempfile::tempdir().unwrap();
    block_on(async {
        let log = PartitionLog::open(tmp.path().join("t-0"), LogConfig::default())
            .await
            .unwrap();
        let e = append(&log, batch(1, 0, 0, 1, true)).await.unwrap_err();
        assert!(matches!(e, AppendError::TransactionalBatch));
        assert_eq!(log.log_end_offset(), 0);
        log.set_transactions_enabled(true);
        assert_eq!(append(&log, batch(1, 0, 0, 1, true)).await.unwrap(), 0);
    });
}

#[test]
fn coordinator_batches_check_the_epoch_only_and_open_transactions() {
    let tmp = tempfile::tempdir().unwrap();
    block_on(async {
        // Transactions off: the coordinator's own batches do not need the switch.
        let log = PartitionLog::open(tmp.path().join("t-0"), LogConfig::default())
            .await
            .unwrap();
        let coord = |b: BytesMut| log.append_coordinator(b, 0, now_ms());
        assert_eq!(
            coord(batch(5, 2, 0, 2, true)).await.unwrap().first_offset,
            0
        );
        // The same sequence again (every coordinator batch starts at 0, as Kafka writes
        // them): appended, not taken for a duplicate.
        assert_eq!(
            coord(batch(5, 2, 0, 2, true)).await.unwrap().first_offset,
            2
        );
        assert_eq!(log.open_transactions(), vec![(5, 0)]);
        assert_eq!(log.last_stable_offset(4), 0);
        // An older epoch is fenced; nothing is written.
        let e = coord(batch(5, 1, 0, 1, true)).await.unwrap_err();
        assert_eq!(e.kafka_error_code(), 47);
        assert_eq!(log.log_end_offset(), 4);
        // Control batches are not the coordinator's to write here.
        let m = txn_index::build_marker_batch(5, 2, 0, false, now_ms());
        let e = coord(BytesMut::from(&m[..])).await.unwrap_err();
        assert_eq!(e.kafka_error_code(), 87);
        // The marker completes the coordinator's transaction like any other.
        assert_eq!(marker(&log, 5, 2, 0, false).await.unwrap(), 4);
        assert!(log.open_transactions().is_empty());
        assert_eq!(log.last_stable_offset(5), 5);
        // A client's transactional batch is still refused while transactions are off.
        let e = append(&log, batch(6, 0, 0, 1, true)).await.unwrap_err();
        assert!(matches!(e, AppendError::TransactionalBatch));
        log.close().await.unwrap();
    });
}

/// Appends transactions across several segments: returns the log end offset.
async fn mixed_history(log: &PartitionLog) -> i64 {
    let mut seq = [0i32; 4];
    for round in 0..12 {
        for pid in 1..4i64 {
            let p = pid as usize;
            append(log, batch(pid, 0, seq[p], 2, true)).await.unwrap();
            seq[p] += 2;
            append(log, plain(1)).await.unwrap();
            if (round + pid) % 3 == 0 {
                marker(log, pid, 0, 1, true).await.unwrap();
            } else if (round + pid) % 3 == 1 {
                marker(log, pid, 0, 1, false).await.unwrap();
            }
        }
    }
    // Producer 3 ends with an open transaction.
    append(log, batch(3, 0, seq[3], 1, true)).await.unwrap();
    log.log_end_offset()
}

#[test]
fn crash_and_torn_indexes_rebuild_the_lso_and_txnindex() {
    let tmp = tempfile::tempdir().unwrap();
    block_on(async {
        let dir = tmp.path().join("t-0");
        let log = open(&dir, small_segments()).await;
        let leo = mixed_history(&log).await;
        assert!(log.segment_count() > 3, "history spans segments");
        let entries = log.aborted_index_entries();
        let open_txns = log.open_transactions();
        let lso = log.last_stable_offset(leo);
        let view = committed_view(&log, leo).await;
        assert!(entries.len() >= 8, "{entries:?}");
        assert_eq!(open_txns.len(), 1);
        // Let the rolled segments finish (their snapshots too), then crash: no close.
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(log);
        let log = open(&dir, small_segments()).await;
        assert_eq!(log.aborted_index_entries(), entries);
        assert_eq!(log.open_transactions(), open_txns);
        assert_eq!(log.last_stable_offset(leo), lso);
        assert_eq!(committed_view(&log, leo).await, view);
        log.close().await.unwrap();

        // Tear, corrupt and remove index files, then reopen cleanly.
        let files = txn_files(&dir);
        assert!(files.len() >= 3, "{files:?}");
        let names: Vec<&String> = files.keys().collect();
        let torn = dir.join(names[0]);
        let mut b = std::fs::read(&torn).unwrap();
        b.extend_from_slice(&[0, 0, 1]);
        std::fs::write(&torn, b).unwrap();
        let flipped = dir.join(names[1]);
        let mut b = std::fs::read(&flipped).unwrap();
        b[0] = 0x7f; // version
        std::fs::write(&flipped, b).unwrap();
        let log = open(&dir, small_segments()).await;
        assert_eq!(log.aborted_index_entries(), entries);
        assert_eq!(log.open_transactions(), open_txns);
        assert_eq!(log.last_stable_offset(leo), lso);
        assert_eq!(committed_view(&log, leo).await, view);
        log.close().await.unwrap();
        // The rebuilt files are byte for byte what was written.
        assert_eq!(txn_files(&dir), files);
    });
}

#[test]
fn truncation_and_retention_keep_the_txnindex_consistent() {
    let tmp = tempfile::tempdir().unwrap();
    block_on(async {
        let dir = tmp.path().join("t-0");
        let log = open(&dir, small_segments()).await;
        let leo = mixed_history(&log).await;
        let entries = log.aborted_index_entries();
        let last = *entries.last().unwrap();
        // Truncating at the last abort marker reopens that transaction.
        log.truncate_to(last.last_offset).await.unwrap();
        assert!(log.log_end_offset() <= last.last_offset);
        assert_eq!(
            log.aborted_index_entries(),
            entries[..entries.len() - 1].to_vec()
        );
        assert!(log
            .open_transactions()
            .contains(&(last.producer_id, last.first_offset)));
        assert!(log.last_stable_offset(leo) <= last.first_offset);
        // The files agree with memory.
        let on_disk: Vec<AbortedTxn> = txn_files(&dir)
            .values()
            .flat_map(|b| txn_index::decode(b, 0, i64::MAX).unwrap())
            .collect();
        assert_eq!(on_disk, log.aborted_index_entries());
        // DeleteRecords past the first segments deletes their .txnindex files with them.
        let bases = log.segment_base_offsets();
        let before = txn_files(&dir).len();
        log.delete_records_before(bases[3]).await.unwrap();
        let after = txn_files(&dir);
        assert!(after.len() < before, "{before} -> {}", after.len());
        for name in after.keys() {
            let base: i64 = name[..20].parse().unwrap();
            assert!(base >= bases[3]);
        }
        assert!(log
            .aborted_index_entries()
            .iter()
            .all(|e| e.last_offset >= bases[3]));
        log.close().await.unwrap();
    });
}

/// A compacted log: a committed transaction, an aborted one that rewrites the same keys, then
/// plain records. The cleaner keeps the committed values, drops the aborted records and, past
/// `delete.retention.ms`, the markers whose transactions have no data left.
#[test]
fn cleaner_removes_aborted_records_and_spent_markers() {
    let tmp = tempfile::tempdir().unwrap();
    block_on(async {
        let cfg = LogConfig {
            segment_bytes: 100_000,
            retention_ms: -1,
            compact: true,
            delete: false,
            delete_retention_ms: 0,
            min_cleanable_dirty_ratio_ppm: 0,
            ..LogConfig::default()
        };
        let log = open(&tmp.path().join("t-0"), cfg).await;
        let ts = now_ms() - 3_600_000;
        let keyed = |pid: i64, seq: i32, kvs: &[(&str, &str)], txn: bool| {
            let recs: Vec<KeyValue<'_>> = kvs
                .iter()
                .map(|(k, v)| (Some(k.as_bytes()), Some(v.as_bytes())))
                .collect();
            let b = build_keyed_batch(0, ts, Compression::None, pid, &recs).unwrap();
            patch(b, if txn { 0x10 } else { 0 }, seq, 0)
        };
        // Producer 1 commits a=1, b=1; producer 2 aborts a=2, c=2; producer 1's second
        // transaction (committed) overwrites b; a plain producer writes d.
        append(&log, keyed(1, 0, &[("a", "1"), ("b", "1")], true))
            .await
            .unwrap();
        append(&log, keyed(2, 0, &[("a", "2"), ("c", "2")], true))
            .await
            .unwrap();
        marker(&log, 1, 0, 0, false).await.unwrap(); // 4
        marker(&log, 2, 0, 0, true).await.unwrap(); // 5
        append(&log, keyed(1, 2, &[("b", "3")], true))
            .await
            .unwrap(); // 6
        marker(&log, 1, 0, 0, false).await.unwrap(); // 7
        append(&log, keyed(-1, -1, &[("d", "4")], false))
            .await
            .unwrap(); // 8
        append(&log, keyed(2, 2, &[("e", "5")], false))
            .await
            .unwrap(); // 9
                       // The high watermark (one copy: the log end) passed every marker: no transaction is
                       // undecided, so the cleaner may take every rolled segment.
        assert_eq!(log.last_stable_offset(10), 10);
        let cleaner = LogCleaner::new(CleanerConfig {
            backoff_ms: 10,
            ..CleanerConfig::default()
        });
        // Roll so everything is cleanable, and wait for the rolled segment to finish.
        let c = log.config();
        log.set_config(LogConfig { segment_ms: 1, ..c });
        tokio::time::sleep(Duration::from_millis(3)).await;
        assert!(log.roll_if_due(now_ms()).await.unwrap());
        log.set_config(c);
        log.flush().await.unwrap();
        let mut ready = false;
        for _ in 0..500 {
            let cl = cleaner.cleanable(&log, now_ms()).unwrap();
            if cl.end + 1 == log.segment_count() {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(ready, "rolled segment never finished");
        let mut cleaner = cleaner;
        cleaner
            .clean(&log, now_ms())
            .await
            .unwrap()
            .expect("cleaned");

        let r = log.read(0, 1 << 20, i64::MAX, true).await.unwrap();
        let bytes = r.slice.unwrap().read_to_vec().await.unwrap();
        let mut data = Vec::new();
        let mut markers = Vec::new();
        for item in BatchIter::new(&bytes) {
            let (pos, h) = item.unwrap();
            let b = &bytes[pos..pos + h.size()];
            if h.is_control() {
                markers.push(h.base_offset);
                continue;
            }
            let section = records_section(b, &h, 1 << 20).unwrap();
            for rec in parse_records(&section, h.records_count).unwrap() {
                let k = String::from_utf8(section[rec.key.unwrap()].to_vec()).unwrap();
                let v = String::from_utf8(section[rec.value.unwrap()].to_vec()).unwrap();
                data.push((h.base_offset + i64::from(rec.offset_delta), k, v));
            }
        }
        let kv = |o: i64, k: &str, v: &str| (o, k.to_string(), v.to_string());
        // a=1 survives (the aborted a=2 never superseded it), b=3 replaced b=1, c=2 is gone.
        assert_eq!(
            data,
            vec![
                kv(0, "a", "1"),
                kv(6, "b", "3"),
                kv(8, "d", "4"),
                kv(9, "e", "5")
            ]
        );
        // The abort marker (no data left) went; the first commit marker still has a=1; the
        // second commit marker has b=3.
        assert_eq!(markers, vec![4, 7]);
        // The aborted entry stays in the index of the cleaned segment.
        assert_eq!(log.aborted_index_entries().len(), 1);
        log.close().await.unwrap();
    });
}

/// Waits (bounded) until the recovery-point checkpoint reaches `offset`: the segments below
/// it are rolled and flushed, so the cleaner may take them.
async fn wait_recovery_point(dir: &Path, offset: i64) {
    for _ in 0..500 {
        let rp = std::fs::read(dir.join(sluice::storage::checkpoint::RECOVERY_POINT_FILE))
            .ok()
            .and_then(|b| sluice::storage::checkpoint::decode_offset(&b));
        if rp.is_some_and(|rp| rp >= offset) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the recovery point never reached {offset}");
}

/// Key/value pairs of a log's data records (markers left out), in offset order.
async fn keyed_data(log: &PartitionLog) -> Vec<(i64, String, String)> {
    let r = log.read(0, 1 << 20, i64::MAX, true).await.unwrap();
    let bytes = r.slice.unwrap().read_to_vec().await.unwrap();
    let mut data = Vec::new();
    for item in BatchIter::new(&bytes) {
        let (pos, h) = item.unwrap();
        if h.is_control() {
            continue;
        }
        let b = &bytes[pos..pos + h.size()];
        let section = records_section(b, &h, 1 << 20).unwrap();
        for rec in parse_records(&section, h.records_count).unwrap() {
            let k = String::from_utf8(section[rec.key.unwrap()].to_vec()).unwrap();
            let v = String::from_utf8(section[rec.value.unwrap()].to_vec()).unwrap();
            data.push((h.base_offset + i64::from(rec.offset_delta), k, v));
        }
    }
    data
}

/// An open transaction's records must not supersede older values before its marker (a
/// transactional offset commit in `__consumer_offsets` that is later aborted would
/// otherwise take the committed offset with it): the cleaner stops before the segment
/// holding the first unstable offset, as Kafka's `cleanableOffsets` does.
#[test]
fn cleaner_stops_before_an_open_transaction() {
    let tmp = tempfile::tempdir().unwrap();
    block_on(async {
        let cfg = LogConfig {
            segment_bytes: 100_000,
            retention_ms: -1,
            compact: true,
            delete: false,
            delete_retention_ms: 0,
            min_cleanable_dirty_ratio_ppm: 0,
            ..LogConfig::default()
        };
        let dir = tmp.path().join("t-0");
        let log = open(&dir, cfg).await;
        let ts = now_ms() - 3_600_000;
        let keyed = |pid: i64, seq: i32, k: &str, v: &str, txn: bool| {
            let recs: Vec<KeyValue<'_>> = vec![(Some(k.as_bytes()), Some(v.as_bytes()))];
            let b = build_keyed_batch(0, ts, Compression::None, pid, &recs).unwrap();
            patch(b, if txn { 0x10 } else { 0 }, seq, 0)
        };
        let roll = || async {
            let c = log.config();
            log.set_config(LogConfig { segment_ms: 1, ..c });
            tokio::time::sleep(Duration::from_millis(3)).await;
            assert!(log.roll_if_due(now_ms()).await.unwrap());
            log.set_config(c);
        };
        append(&log, keyed(-1, -1, "a", "1", false)).await.unwrap(); // 0
        append(&log, keyed(3, 0, "a", "2", true)).await.unwrap(); // 1, open
        roll().await;
        wait_recovery_point(&dir, 2).await;
        let mut cleaner = LogCleaner::new(CleanerConfig {
            backoff_ms: 10,
            ..CleanerConfig::default()
        });
        assert_eq!(
            cleaner.cleanable(&log, now_ms()).unwrap().end,
            0,
            "the segment holding the open transaction is not cleanable"
        );
        let _ = cleaner.clean(&log, now_ms()).await.unwrap();
        assert_eq!(
            keyed_data(&log).await,
            vec![(0, "a".into(), "1".into()), (1, "a".into(), "2".into())]
        );
        // The transaction aborts: a=1 is still the value, and once the marker is known to be
        // replicated the cleaner drops the aborted record and keeps a=1.
        marker(&log, 3, 0, 0, true).await.unwrap(); // 2
        append(&log, keyed(-1, -1, "z", "9", false)).await.unwrap(); // 3
        roll().await;
        wait_recovery_point(&dir, 4).await;
        assert_eq!(log.last_stable_offset(4), 4);
        assert_eq!(cleaner.cleanable(&log, now_ms()).unwrap().end, 2);
        cleaner
            .clean(&log, now_ms())
            .await
            .unwrap()
            .expect("cleaned");
        assert_eq!(
            keyed_data(&log).await,
            vec![(0, "a".into(), "1".into()), (3, "z".into(), "9".into())]
        );
        log.close().await.unwrap();
    });
}

#[derive(Debug, Clone)]
enum Op {
    Data { pid: usize, n: usize },
    Plain { n: usize },
    End { pid: usize, abort: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, 1..4usize).prop_map(|(pid, n)| Op::Data { pid, n }),
        1 => (1..3usize).prop_map(|n| Op::Plain { n }),
        2 => (0..3usize, any::<bool>()).prop_map(|(pid, abort)| Op::End { pid, abort }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random interleavings of transactional appends, commits and aborts from three
    /// producers (with plain records between), checked after every step against a model:
    /// the open transactions, the LSO, the aborted index and what a read_committed reader
    /// sees; then once more after a crash and reopen.
    #[test]
    fn read_committed_matches_a_model(ops in proptest::collection::vec(op(), 1..40)) {
        let tmp = tempfile::tempdir().unwrap();
        block_on(async {
            let dir = tmp.path().join("t-0");
            let log = open(&dir, small_segments()).await;
            let mut seq = [0i32; 3];
            // Model: per producer the open transaction's (first offset, its offsets).
            let mut open_txn: [Option<(i64, Vec<i64>)>; 3] = [None, None, None];
            let mut visible: Vec<i64> = Vec::new();
            let mut aborted: Vec<(i64, i64, i64)> = Vec::new();
            for op in &ops {
                match *op {
                    Op::Data { pid, n } => {
                        let first = append(&log, batch(pid as i64 + 10, 0, seq[pid], n, true)).await.unwrap();
                        seq[pid] += n as i32;
                        let t = open_txn[pid].get_or_insert((first, Vec::new()));
                        t.1.extend(first..first + n as i64);
                    }
                    Op::Plain { n } => {
                        let first = append(&log, plain(n)).await.unwrap();
                        visible.extend(first..first + n as i64);
                    }
                    Op::End { pid, abort } => {
                        let at = marker(&log, pid as i64 + 10, 0, 0, abort).await.unwrap();
                        let (first, offsets) = open_txn[pid].take().unwrap_or((at, Vec::new()));
                        if abort {
                            aborted.push((pid as i64 + 10, first, at));
                        } else {
                            visible.extend(offsets);
                        }
                    }
                }
                let leo = log.log_end_offset();
                let lso = open_txn.iter().flatten().map(|t| t.0).min().unwrap_or(leo);
                prop_assert_eq!(log.last_stable_offset(leo), lso);
                let mut want_open: Vec<(i64, i64)> = open_txn
                    .iter()
                    .enumerate()
                    .filter_map(|(p, t)| t.as_ref().map(|t| (p as i64 + 10, t.0)))
                    .collect();
                want_open.sort();
                prop_assert_eq!(log.open_transactions(), want_open);
                let got: Vec<(i64, i64, i64)> = log
                    .aborted_index_entries()
                    .iter()
                    .map(|e| (e.producer_id, e.first_offset, e.last_offset))
                    .collect();
                prop_assert_eq!(&got, &aborted);
                let mut want: Vec<i64> = visible.iter().copied().filter(|o| *o < lso).collect();
                want.sort();
                let (view, view_lso) = committed_view(&log, leo).await;
                prop_assert_eq!(view_lso, lso);
                prop_assert_eq!(view, want);
            }
            let leo = log.log_end_offset();
            let before = (
                log.aborted_index_entries(),
                log.open_transactions(),
                log.last_stable_offset(leo),
                committed_view(&log, leo).await,
            );
            drop(log); // a crash: no clean shutdown
            let log = open(&dir, small_segments()).await;
            let after = (
                log.aborted_index_entries(),
                log.open_transactions(),
                log.last_stable_offset(leo),
                committed_view(&log, leo).await,
            );
            prop_assert_eq!(before, after);
            Ok(())
        })?;
    }
}
