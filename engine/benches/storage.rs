//! Storage engine micro-benchmarks (criterion). Run: `cargo bench -p engine --bench storage`.
//!
//! Files live under cargo's target tmp dir (a real disk, not tmpfs) so fsync costs are real.
//! Every group is kept short; see results/engine/README.md for figures and the machine.

use std::cell::RefCell;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hdrhistogram::Histogram;
use sluice::io::file::DiskFile;
use sluice::io::runtime::{block_on, spawn};
use sluice::storage::offset_index::OffsetIndex;
use sluice::storage::record_batch::builder::{build_batch, build_timed_batch, BatchSpec};
use sluice::storage::record_batch::Compression;
use sluice::storage::time_index::TimeIndex;
use sluice::storage::validate::validate_leader;
use sluice::storage::{FlushPolicy, LogConfig, PartitionLog};

/// 16 records of 1 KiB: the 16 KiB batch the issue asks for.
fn batch_16k() -> Vec<u8> {
    let v = vec![0xabu8; 1024];
    let values: Vec<&[u8]> = (0..16).map(|_| &v[..]).collect();
    build_batch(
        &BatchSpec {
            base_timestamp: 1_700_000_000_000,
            ..Default::default()
        },
        &values,
    )
}

fn bench_dir(name: &str) -> tempfile::TempDir {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("storage-bench");
    std::fs::create_dir_all(&root).expect("bench dir");
    tempfile::Builder::new()
        .prefix(name)
        .tempdir_in(root)
        .expect("tempdir")
}

/// Bytes appended before the file is reset (outside the timed region), to bound disk use.
const WRAP_BYTES: usize = 64 << 20;

fn append_vs_raw_write(c: &mut Criterion) {
    let batch = batch_16k();
    let mut g = c.benchmark_group("append_16k_batches");
    g.throughput(Throughput::Bytes(batch.len() as u64));
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));

    g.bench_function("raw_sequential_write", |b| {
        let dir = bench_dir("raw");
        let path = dir.path().join("raw.log");
        let mut file = std::fs::File::create(&path).expect("create");
        let mut written = 0usize;
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            let mut start = Instant::now();
            for _ in 0..iters {
                if written + batch.len() > WRAP_BYTES {
                    elapsed += start.elapsed();
                    file.set_len(0).expect("truncate");
                    file = std::fs::File::create(&path).expect("recreate");
                    written = 0;
                    start = Instant::now();
                }
                file.write_all(&batch).expect("write");
                written += batch.len();
            }
            elapsed + start.elapsed()
        });
    });

    // Breakdown of the append path: the validation alone and an io_uring write alone.
    g.bench_function("validate_leader_only", |b| {
        let cfg = LogConfig::default();
        // A correct batch is not changed by validation, so one buffer serves every iteration.
        let mut buf = batch.clone();
        b.iter(|| black_box(validate_leader(black_box(&mut buf), &cfg, 0).map(|v| v.len())))
    });

    // The batches older clients send: header max timestamp -1, fixed (and the CRC recomputed)
    // by validation. Each iteration gets a fresh copy (the copy is outside the timing).
    for codec in [Compression::None, Compression::Gzip] {
        let values: Vec<i64> = (0..16).map(|i| 1_700_000_000_000 + i).collect();
        let minus_one = build_timed_batch(&BatchSpec::default(), &values, codec, Some(-1))
            .expect("bench batch");
        g.bench_function(format!("validate_leader_minus_one_header_{codec}"), |b| {
            let cfg = LogConfig::default();
            b.iter_batched_ref(
                || minus_one.clone(),
                |buf| black_box(validate_leader(buf, &cfg, 0).map(|v| v.len())),
                criterion::BatchSize::SmallInput,
            )
        });
    }

    g.bench_function("io_uring_write_only", |b| {
        let dir = bench_dir("uring");
        let path = dir.path().join("uring.log");
        let data = bytes::Bytes::from(batch.clone());
        b.iter_custom(|iters| {
            let path = path.clone();
            let data = data.clone();
            block_on(async move {
                let _ = std::fs::remove_file(&path);
                let file = DiskFile::open_rw(&path, true).expect("open");
                let mut pos = 0u64;
                let start = Instant::now();
                for _ in 0..iters {
                    if pos as usize + data.len() > WRAP_BYTES {
                        pos = 0;
                    }
                    let (res, _) = file.write_all_at(data.clone(), pos).await;
                    res.expect("write");
                    pos += data.len() as u64;
                }
                start.elapsed()
            })
        });
    });

    // One appender awaiting each append, then 4 and 16 appenders sharing the partition (as
    // concurrent produce requests do): while one write is in flight the next ones queue and
    // go out together in one writev.
    for appenders in [1usize, 4, 16] {
        g.bench_with_input(
            BenchmarkId::new(
                "partition_log_append_leader",
                format!("{appenders}_appenders"),
            ),
            &appenders,
            |b, &n| {
                let dir = bench_dir("append");
                b.iter_custom(|iters| {
                    let dir = dir.path().join("t-0");
                    let batch = batch.clone();
                    block_on(async move {
                        let log = Rc::new(
                            PartitionLog::open(dir, LogConfig::default())
                                .await
                                .expect("open"),
                        );
                        let mut elapsed = Duration::ZERO;
                        let mut done = 0u64;
                        // Rounds of at most WRAP_BYTES; the reset between rounds is not timed.
                        while done < iters {
                            let round = (iters - done).min((WRAP_BYTES / batch.len()) as u64);
                            let per_task = (round as usize).div_ceil(n);
                            let start = Instant::now();
                            let mut tasks = Vec::new();
                            for _ in 0..n {
                                let log = log.clone();
                                let batch = batch.clone();
                                tasks.push(spawn(async move {
                                    for i in 0..per_task {
                                        let records = BytesMut::from(&batch[..]);
                                        log.append_leader(records, 0, i as i64)
                                            .await
                                            .expect("append");
                                    }
                                }));
                            }
                            for t in tasks {
                                t.await.expect("task");
                            }
                            elapsed += start
                                .elapsed()
                                .mul_f64(round as f64 / (per_task * n) as f64);
                            done += round;
                            let leo = log.log_end_offset();
                            log.truncate_fully_and_start_at(leo).await.expect("reset");
                        }
                        if let Ok(log) = Rc::try_unwrap(log) {
                            log.delete().await.expect("delete");
                        }
                        elapsed
                    })
                });
            },
        );
    }
    g.finish();
}

fn write_hgrm(name: &str, h: &Histogram<u64>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../results/engine/hgrm");
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    let mut s = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    for v in h.iter_quantiles(2) {
        let q = v.quantile_iterated_to();
        let inv = if q < 1.0 {
            format!("{:.2}", 1.0 / (1.0 - q))
        } else {
            "inf".into()
        };
        s.push_str(&format!(
            "{:12.3} {:14.12} {:10} {:>14}\n",
            v.value_iterated_to() as f64 / 1000.0,
            q,
            v.count_since_last_iteration(),
            inv
        ));
    }
    s.push_str(&format!(
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]\n#[Max     = {:12.3}, Total count    = {:12}]\n#[Unit: microseconds]\n",
        h.mean() / 1000.0,
        h.stdev() / 1000.0,
        h.max() as f64 / 1000.0,
        h.len()
    ));
    let _ = std::fs::write(dir.join(format!("{name}.hgrm")), s);
}

/// fsync per append with `n` concurrent appenders: group commit shares fsyncs among them.
fn group_commit(c: &mut Criterion) {
    let batch = batch_16k();
    let mut g = c.benchmark_group("fsync_per_append_group_commit");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(3));
    for appenders in [1usize, 4, 16, 64] {
        // Each criterion iteration is one append by one of the appenders.
        g.throughput(Throughput::Elements(1));
        let hist = Rc::new(RefCell::new(
            Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram"),
        ));
        let dir = bench_dir("gc");
        g.bench_with_input(
            BenchmarkId::from_parameter(appenders),
            &appenders,
            |b, &n| {
                b.iter_custom(|iters| {
                    let dir = dir.path().join("t-0");
                    let batch = batch.clone();
                    let hist = hist.clone();
                    block_on(async move {
                        let cfg = LogConfig {
                            flush: FlushPolicy::EveryAppend,
                            ..LogConfig::default()
                        };
                        let log = Rc::new(PartitionLog::open(dir, cfg).await.expect("open"));
                        let per_task = (iters as usize).div_ceil(n);
                        let start = Instant::now();
                        let mut tasks = Vec::new();
                        for _ in 0..n {
                            let log = log.clone();
                            let batch = batch.clone();
                            let hist = hist.clone();
                            tasks.push(spawn(async move {
                                for i in 0..per_task {
                                    let t0 = Instant::now();
                                    log.append_leader(BytesMut::from(&batch[..]), 0, i as i64)
                                        .await
                                        .expect("append");
                                    let ns = t0.elapsed().as_nanos() as u64;
                                    let _ = hist.borrow_mut().record(ns.max(1));
                                }
                            }));
                        }
                        for t in tasks {
                            t.await.expect("task");
                        }
                        let elapsed = start.elapsed();
                        if let Ok(log) = Rc::try_unwrap(log) {
                            log.delete().await.expect("delete");
                        }
                        // Scale to the requested iteration count.
                        elapsed.mul_f64(iters as f64 / (per_task * n) as f64)
                    })
                });
            },
        );
        let h = hist.borrow();
        if h.is_empty() {
            // Filtered out by the command line: keep earlier histograms.
            continue;
        }
        eprintln!(
            "group commit, {appenders} appenders: p50 {:.1} us, p99 {:.1} us, max {:.1} us over {} appends",
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.max() as f64 / 1000.0,
            h.len()
        );
        write_hgrm(&format!("group_commit_{appenders}"), &h);
    }
    g.finish();
}

fn index_lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("index_lookup");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    // A full 10 MiB offset index: 1,310,720 entries.
    let entries = (10 << 20) / 8;
    let mut idx = OffsetIndex::new(0, entries);
    let mut tidx = TimeIndex::new(0, entries);
    for i in 0..entries as i64 {
        idx.append(i * 16 + 15, (i * 4096) as u32);
        tidx.maybe_append(1_000_000 + i * 10, i * 16 + 15, false);
    }
    let targets: Vec<i64> = (0..4096)
        .map(|i: i64| (i.wrapping_mul(2_654_435_761) & 0xff_ffff) % (entries as i64 * 16))
        .collect();
    g.bench_function("offset_index_full_10MiB", |b| {
        let mut k = 0;
        b.iter(|| {
            k = (k + 1) & 4095;
            black_box(idx.lookup(black_box(targets[k])))
        })
    });
    g.bench_function("time_index_full", |b| {
        let mut k = 0;
        b.iter(|| {
            k = (k + 1) & 4095;
            black_box(tidx.lookup(black_box(1_000_000 + targets[k])))
        })
    });
    g.finish();
}

fn read_slices(c: &mut Criterion) {
    let batch = batch_16k();
    let dir = bench_dir("read");
    let path = dir.path().join("t-0");
    let total_batches = 2048; // 32 MiB
    block_on({
        let path = path.clone();
        let batch = batch.clone();
        async move {
            let log = PartitionLog::open(path, LogConfig::default())
                .await
                .expect("open");
            for i in 0..total_batches {
                log.append_leader(BytesMut::from(&batch[..]), 0, i)
                    .await
                    .expect("append");
            }
            log.close().await.expect("close");
        }
    });
    let leo = total_batches * 16;
    let mut g = c.benchmark_group("read_slice");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    for max_bytes in [64u32 << 10, 1 << 20] {
        g.throughput(Throughput::Bytes(u64::from(max_bytes)));
        g.bench_with_input(
            BenchmarkId::new("locate_and_copy", max_bytes),
            &max_bytes,
            |b, &max| {
                b.iter_custom(|iters| {
                    let path = path.clone();
                    block_on(async move {
                        let log = PartitionLog::open(path, LogConfig::default())
                            .await
                            .expect("open");
                        let start = Instant::now();
                        for i in 0..iters as i64 {
                            let from = (i.wrapping_mul(7919) * 16) % (leo - 1024);
                            let r = log.read(from, max, i64::MAX, true).await.expect("read");
                            let v = r.slice.expect("slice").read_to_vec().await.expect("copy");
                            black_box(v);
                        }
                        let e = start.elapsed();
                        log.close().await.expect("close");
                        e
                    })
                });
            },
        );
        g.bench_with_input(
            BenchmarkId::new("locate_only", max_bytes),
            &max_bytes,
            |b, &max| {
                b.iter_custom(|iters| {
                    let path = path.clone();
                    block_on(async move {
                        let log = PartitionLog::open(path, LogConfig::default())
                            .await
                            .expect("open");
                        let start = Instant::now();
                        for i in 0..iters as i64 {
                            let from = (i.wrapping_mul(7919) * 16) % (leo - 1024);
                            let r = log.read(from, max, i64::MAX, true).await.expect("read");
                            black_box(r.slice.expect("slice").len());
                        }
                        let e = start.elapsed();
                        log.close().await.expect("close");
                        e
                    })
                });
            },
        );
    }
    g.finish();
}

/// Unclean open of a log whose recovery point is 0: every segment is scanned (warm cache).
fn recovery_scan(c: &mut Criterion) {
    let batch = batch_16k();
    let dir = bench_dir("recovery");
    let path = dir.path().join("t-0");
    let total_batches: i64 = 8192; // 128 MiB
    let cfg = LogConfig {
        segment_bytes: 32 << 20,
        ..LogConfig::default()
    };
    block_on({
        let path = path.clone();
        let batch = batch.clone();
        async move {
            let log = PartitionLog::open(path, cfg).await.expect("open");
            for i in 0..total_batches {
                log.append_leader(BytesMut::from(&batch[..]), 0, i)
                    .await
                    .expect("append");
            }
            log.flush().await.expect("flush");
        }
    });
    let bytes: u64 = std::fs::read_dir(&path)
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    let mut g = c.benchmark_group("recovery");
    g.throughput(Throughput::Bytes(bytes));
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(3));
    g.bench_function(
        BenchmarkId::new("unclean_open_full_scan_MiB", bytes >> 20),
        |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let _ = std::fs::remove_file(path.join(".sluice_cleanshutdown"));
                    let f = std::fs::File::create(path.join("recovery-point-offset-checkpoint"))
                        .expect("cp");
                    f.write_all_at(b"0\n0\n", 0).expect("cp write");
                    let path = path.clone();
                    total += block_on(async move {
                        let start = Instant::now();
                        let log = PartitionLog::open(path, cfg).await.expect("open");
                        let e = start.elapsed();
                        assert_eq!(log.log_end_offset(), total_batches * 16);
                        e
                    });
                }
                total
            });
        },
    );
    g.bench_function(BenchmarkId::new("clean_open_MiB", bytes >> 20), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let path = path.clone();
                total += block_on(async move {
                    let log = PartitionLog::open(path.clone(), cfg).await.expect("open");
                    log.close().await.expect("close");
                    drop(log);
                    let start = Instant::now();
                    let log = PartitionLog::open(path, cfg).await.expect("open");
                    let e = start.elapsed();
                    assert_eq!(log.log_end_offset(), total_batches * 16);
                    e
                });
            }
            total
        });
    });
    g.finish();
}

criterion_group!(
    benches,
    append_vs_raw_write,
    group_commit,
    index_lookup,
    read_slices,
    recovery_scan
);
criterion_main!(benches);
