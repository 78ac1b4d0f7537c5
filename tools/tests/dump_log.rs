//! `sluicectl dump-log` against segments written by the engine.

use std::path::Path;
use std::process::Command;

use bytes::BytesMut;
use sluice::io::runtime::block_on;
use sluice::storage::record_batch::builder::{build_batch, BatchSpec};
use sluice::storage::{LogConfig, PartitionLog};

const BIN: &str = env!("CARGO_BIN_EXE_sluicectl");

fn write_log(dir: &Path) {
    block_on(async {
        let cfg = LogConfig {
            index_interval_bytes: 100,
            ..LogConfig::default()
        };
        let log = PartitionLog::open(dir.to_path_buf(), cfg).await.unwrap();
        for i in 0..20 {
            let v = vec![b'x'; 90];
            let b = build_batch(
                &BatchSpec {
                    base_timestamp: 1000 + i,
                    ..Default::default()
                },
                &[&v, &v],
            );
            log.append_leader(BytesMut::from(&b[..]), 3, i)
                .await
                .unwrap();
        }
        log.close().await.unwrap();
    });
}

fn dump(args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .arg("dump-log")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn dumps_and_checks_a_clean_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t-0");
    write_log(&dir);
    let seg = dir.join("00000000000000000000.log");
    let seg = seg.to_str().unwrap();
    let (ok, text) = dump(&[seg, "--index", "--deep"]);
    assert!(ok, "{text}");
    assert_eq!(text.matches("baseOffset:").count(), 20);
    assert!(text.contains("baseOffset: 38 lastOffset: 39 count: 2"));
    assert!(text.contains("partitionLeaderEpoch: 3"));
    assert!(text.contains("crc: 0x") && !text.contains("BAD"));
    assert!(text.contains("| offset: 39 timestamp: 1020"));
    assert!(text.contains("Offset index") && text.contains("Time index"));
    assert!(!text.contains("Offset index 0 entries"));

    let (ok, json) = dump(&[seg, "--index", "--deep", "--output", "json"]);
    assert!(ok, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["batches"].as_array().unwrap().len(), 20);
    assert_eq!(v["batches"][19]["base_offset"], 38);
    assert_eq!(v["batches"][19]["partition_leader_epoch"], 3);
    assert_eq!(v["batches"][19]["records"][1][0], 39);
    assert_eq!(v["batches"][19]["records"][1][1], 1020);
    assert!(v["offset_index_entries"].as_u64().unwrap() > 0);
    assert_eq!(v["problems"].as_array().unwrap().len(), 0);
}

#[test]
fn reports_bad_crc_torn_tail_and_index_mismatch() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t-0");
    write_log(&dir);
    let seg = dir.join("00000000000000000000.log");
    let s = seg.to_str().unwrap();
    let clean = std::fs::read(&seg).unwrap();

    let mut flipped = clean.clone();
    flipped[100] ^= 0x10;
    std::fs::write(&seg, &flipped).unwrap();
    let (ok, text) = dump(&[s]);
    assert!(!ok);
    assert!(text.contains("(BAD)"), "{text}");

    std::fs::write(&seg, &clean[..clean.len() - 10]).unwrap();
    let (ok, text) = dump(&[s]);
    assert!(!ok);
    assert!(text.contains("runs past the end"), "{text}");

    std::fs::write(&seg, &clean).unwrap();
    let idx = dir.join("00000000000000000000.index");
    let mut index = std::fs::read(&idx).unwrap();
    assert!(index.len() >= 16);
    index[7] = index[7].wrapping_add(1); // first entry's position no longer a batch start
    std::fs::write(&idx, &index).unwrap();
    let (ok, text) = dump(&[s, "--index"]);
    assert!(!ok);
    assert!(text.contains("MISMATCH"), "{text}");
    let (ok, json) = dump(&[s, "--index", "--output", "json"]);
    assert!(!ok);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["ok"], false);
    assert!(
        v["problems"][0].as_str().unwrap().starts_with("MISMATCH"),
        "{v}"
    );
    let (ok, _) = dump(&[s]);
    assert!(ok, "without --index the log itself is fine");

    let (ok, _) = dump(&[dir.join("nope.log").to_str().unwrap()]);
    assert!(!ok);
}

#[test]
fn shows_transaction_markers_and_checks_the_txnindex() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t-0");
    block_on(async {
        let log = PartitionLog::open(dir.clone(), LogConfig::default())
            .await
            .unwrap();
        log.set_transactions_enabled(true);
        let b = build_batch(
            &BatchSpec {
                base_timestamp: 1000,
                producer_id: 77,
                producer_epoch: 1,
                base_sequence: 0,
                attributes: 0x10,
                ..Default::default()
            },
            &[b"a", b"b"],
        );
        log.append_leader(BytesMut::from(&b[..]), 0, 1000)
            .await
            .unwrap();
        log.append_txn_marker(77, 1, 5, true, 0, 1001)
            .await
            .unwrap();
        log.close().await.unwrap();
    });
    let seg = dir.join("00000000000000000000.log");
    let seg = seg.to_str().unwrap();
    let (ok, text) = dump(&[seg, "--index"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("endTxnMarker: ABORT coordinatorEpoch: 5"),
        "{text}"
    );
    assert!(
        text.contains("Transaction index: 1 aborted transactions"),
        "{text}"
    );
    assert!(text.contains("producerId: 77 firstOffset: 0 lastOffset: 2 lastStableOffset: 3"));
    let (ok, json) = dump(&[seg, "--index", "--output", "json"]);
    assert!(ok, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["batches"][1]["end_txn_marker"][0], "ABORT");
    assert_eq!(v["aborted_transactions"][0][0], 77);
    // A txnindex entry that names no marker is reported.
    let idx = dir.join("00000000000000000000.txnindex");
    let mut bytes = std::fs::read(&idx).unwrap();
    bytes[18..26].copy_from_slice(&1i64.to_be_bytes());
    std::fs::write(&idx, bytes).unwrap();
    let (ok, text) = dump(&[seg, "--index"]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("no ABORT marker of producer 77 at offset 1"),
        "{text}"
    );
}
