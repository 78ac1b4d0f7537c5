//! Crash-test child: opens a partition log with fsync-per-append and appends from several
//! concurrent tasks until killed, printing `ACK <first> <last> <crc> <len>` for every append
//! that returned (so is durable). The crash test kills it with SIGKILL and checks the log.
//!
//! Usage: sluice-crash-appender <partition-dir> <tasks> <seed> [max-seconds]

use std::io::Write;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::BytesMut;
use sluice::io::runtime::{block_on, spawn};
use sluice::storage::record_batch::builder::{build_batch, BatchSpec};
use sluice::storage::record_batch::BatchHeader;
use sluice::storage::{FlushPolicy, LogConfig, PartitionLog};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        bail!(
            "usage: {} <partition-dir> <tasks> <seed> [max-seconds]",
            args[0]
        );
    }
    let dir = PathBuf::from(&args[1]);
    let tasks: usize = args[2].parse().context("tasks")?;
    let seed: u64 = args[3].parse().context("seed")?;
    let max_secs: u64 = args
        .get(4)
        .map(|s| s.parse())
        .transpose()
        .context("max-seconds")?
        .unwrap_or(20);
    let config = LogConfig {
        segment_bytes: 64 * 1024,
        index_interval_bytes: 1024,
        flush: FlushPolicy::EveryAppend,
        retention_ms: -1,
        ..LogConfig::default()
    };
    block_on(async move {
        let log = Rc::new(PartitionLog::open(dir, config).await.context("open")?);
        println!("READY {}", log.log_end_offset());
        let deadline = Instant::now() + Duration::from_secs(max_secs);
        let mut handles = Vec::new();
        for t in 0..tasks {
            let log = log.clone();
            handles.push(spawn(async move {
                let mut i: u64 = 0;
                while Instant::now() < deadline {
                    // Sizes vary so batches straddle pages and segment boundaries.
                    let n = 1 + ((seed ^ (t as u64 * 7919) ^ i) % 7) as usize;
                    let len = 16 + ((seed.wrapping_mul(31) ^ i.wrapping_mul(131)) % 1500) as usize;
                    let vals: Vec<Vec<u8>> = (0..n).map(|r| vec![(t + r) as u8; len]).collect();
                    let refs: Vec<&[u8]> = vals.iter().map(|v| &v[..]).collect();
                    let spec = BatchSpec {
                        base_timestamp: i as i64,
                        ..Default::default()
                    };
                    let bytes = build_batch(&spec, &refs);
                    let Ok(h) = BatchHeader::parse(&bytes) else {
                        return;
                    };
                    match log
                        .append_leader(BytesMut::from(&bytes[..]), 1, i as i64)
                        .await
                    {
                        Ok(info) => {
                            let mut out = std::io::stdout().lock();
                            let _ = writeln!(
                                out,
                                "ACK {} {} {} {}",
                                info.first_offset,
                                info.last_offset,
                                h.crc,
                                bytes.len()
                            );
                            let _ = out.flush();
                        }
                        Err(e) => {
                            eprintln!("append failed: {e}");
                            return;
                        }
                    }
                    i += 1;
                }
            }));
        }
        for h in handles {
            let _ = h.await;
        }
        log.close().await.context("close")?;
        Ok(())
    })
}
