//! The cost of log compaction to producers on the same shard: produce latency (p50/p99/max)
//! and throughput on one partition with the cleaner idle, then while the cleaner compacts a
//! few hundred MB of overwritten keys on the same thread, unthrottled and throttled.
//!
//! Run: `cargo bench -p engine --bench compaction` (env `COMPACTION_BENCH_MB`, default 160,
//! sets the compactable data per cleaner run). Files live under cargo's target tmp dir (a real
//! disk). Results: results/compaction/README.md.

use std::cell::Cell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use hdrhistogram::Histogram;
use sluice::io::runtime::{block_on, spawn};
use sluice::storage::cleaner::records::{build_keyed_batch, KeyValue};
use sluice::storage::cleaner::{CleanerConfig, LogCleaner};
use sluice::storage::record_batch::Compression;
use sluice::storage::{LogConfig, PartitionLog};

/// Records per produced batch and value size: 16 x 1 KiB, the engine benches' batch.
const RECORDS_PER_BATCH: usize = 16;
const VALUE_BYTES: usize = 1024;
/// Distinct keys: every key is overwritten many times, so most of the data is garbage.
const KEYS: usize = 20_000;
/// Length of the idle phase.
const IDLE_PHASE: Duration = Duration::from_secs(5);
/// Upper bound on a phase with the cleaner running.
const MAX_PHASE: Duration = Duration::from_secs(60);

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn bench_dir(name: &str) -> tempfile::TempDir {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("compaction-bench");
    std::fs::create_dir_all(&root).expect("bench dir");
    tempfile::Builder::new()
        .prefix(name)
        .tempdir_in(root)
        .expect("tempdir")
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 << 20,
        retention_ms: -1,
        compact: true,
        delete: false,
        min_cleanable_dirty_ratio_ppm: 0,
        ..LogConfig::default()
    }
}

/// A batch of keyed 1 KiB records, keys `first_key..` modulo `KEYS`.
fn batch(first_key: usize) -> BytesMut {
    let value = vec![0x5au8; VALUE_BYTES];
    let keys: Vec<Vec<u8>> = (0..RECORDS_PER_BATCH)
        .map(|i| format!("key-{:08}", (first_key + i) % KEYS).into_bytes())
        .collect();
    let recs: Vec<KeyValue<'_>> = keys
        .iter()
        .map(|k| (Some(&k[..]), Some(&value[..])))
        .collect();
    let b = build_keyed_batch(0, now_ms(), Compression::None, -1, &recs).expect("batch");
    BytesMut::from(&b[..])
}

/// Appends `mb` MiB of overwrites and rolls so all of it is cleanable.
async fn fill(log: &PartitionLog, mb: usize) {
    let per_batch = RECORDS_PER_BATCH * (VALUE_BYTES + 30);
    let batches = (mb << 20) / per_batch;
    for i in 0..batches {
        log.append_leader(batch(i * RECORDS_PER_BATCH), 0, now_ms())
            .await
            .expect("fill append");
    }
    let cfg = log.config();
    log.set_config(LogConfig {
        segment_ms: 1,
        ..cfg
    });
    tokio::time::sleep(Duration::from_millis(5)).await;
    log.roll_if_due(now_ms()).await.expect("roll");
    log.set_config(cfg);
    log.flush().await.expect("flush");
    // Rolled segments are finished in the background; wait until all are cleanable.
    let probe = LogCleaner::new(CleanerConfig::default());
    for _ in 0..6000 {
        let c = probe.cleanable(log, now_ms()).expect("compacted");
        if c.end + 1 == log.segment_count() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("rolled segments never became cleanable");
}

struct Phase {
    name: String,
    hist: Histogram<u64>,
    appends: u64,
    elapsed: Duration,
}

impl Phase {
    fn print(&self) {
        let us = |q: f64| self.hist.value_at_quantile(q) as f64 / 1000.0;
        let secs = self.elapsed.as_secs_f64();
        let records = self.appends * RECORDS_PER_BATCH as u64;
        println!(
            "{:<34} appends {:>7}  p50 {:>8.1} us  p99 {:>8.1} us  p99.9 {:>8.1} us  max {:>9.1} us  {:>9.0} records/s  {:>7.1} MiB/s",
            self.name,
            self.appends,
            us(0.50),
            us(0.99),
            us(0.999),
            self.hist.max() as f64 / 1000.0,
            records as f64 / secs,
            (records as f64 * VALUE_BYTES as f64) / secs / (1 << 20) as f64,
        );
    }
}

/// Appends one batch at a time (each awaited: the latency a producer with one request in
/// flight sees) until `until` says stop.
async fn produce(log: &PartitionLog, name: &str, until: impl Fn(Duration) -> bool) -> Phase {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
    let start = Instant::now();
    let mut appends = 0u64;
    let mut key = 0usize;
    while !until(start.elapsed()) {
        let b = batch(key);
        key += RECORDS_PER_BATCH;
        let t = Instant::now();
        log.append_leader(b, 0, now_ms()).await.expect("append");
        hist.record(t.elapsed().as_nanos() as u64).expect("record");
        appends += 1;
    }
    Phase {
        name: name.to_string(),
        hist,
        appends,
        elapsed: start.elapsed(),
    }
}

/// Fills a fresh log, then produces while the cleaner runs on the same thread.
async fn with_cleaner(mb: usize, rate: f64, name: &str) {
    let dir = bench_dir("cleaning");
    let log = Rc::new(
        PartitionLog::open(dir.path().join("t-0"), config())
            .await
            .expect("open"),
    );
    fill(&log, mb).await;
    let size_before = log.size_bytes();
    let done = Rc::new(Cell::new(false));
    let cleaner_task = {
        let log = log.clone();
        let done = done.clone();
        spawn(async move {
            let mut cleaner = LogCleaner::new(CleanerConfig {
                io_max_bytes_per_second: rate,
                ..CleanerConfig::default()
            });
            let t = Instant::now();
            let stats = cleaner.clean(&log, now_ms()).await.expect("clean");
            done.set(true);
            (stats, t.elapsed())
        })
    };
    let phase = produce(&log, name, |e| done.get() || e > MAX_PHASE).await;
    let (stats, took) = cleaner_task.await.expect("cleaner task");
    phase.print();
    let stats = stats.expect("something to clean");
    println!(
        "  cleaner: {:.1} s, read {:.0} MiB, wrote {:.0} MiB, removed {} records, log {:.0} -> {:.0} MiB",
        took.as_secs_f64(),
        stats.bytes_read as f64 / (1 << 20) as f64,
        stats.bytes_written as f64 / (1 << 20) as f64,
        stats.records_removed,
        size_before as f64 / (1 << 20) as f64,
        log.size_bytes() as f64 / (1 << 20) as f64,
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run a tiny smoke.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let mb: usize = std::env::var("COMPACTION_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 4 } else { 160 });
    block_on(async move {
        let idle = if smoke {
            Duration::from_millis(200)
        } else {
            IDLE_PHASE
        };
        {
            let dir = bench_dir("idle");
            let log = PartitionLog::open(dir.path().join("t-0"), config())
                .await
                .expect("open");
            fill(&log, mb).await;
            produce(&log, "cleaner idle", |e| e > idle).await.print();
        }
        with_cleaner(mb, f64::MAX, "cleaner running, unthrottled").await;
        with_cleaner(mb, 32.0 * (1 << 20) as f64, "cleaner running, 32 MiB/s").await;
    });
}
