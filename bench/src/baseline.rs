//! `sluice-bench baseline`: the machine's raw limits, measured in the same session as the
//! broker runs so that reports can state ratios rather than lone absolute figures.
//!
//! - sequential write to the data directory's file system, buffered (page cache) and with
//!   `fdatasync` after every chunk;
//! - loopback TCP throughput (one sender thread, one receiver thread);
//! - file-to-socket transfer from the page cache by read+write copy, `sendfile`, and `splice`
//!   through a pipe: the choice Sluice's fetch path makes.

use crate::machine::{command_line, git_commit, Machine};
use anyhow::{anyhow, Context, Result};
use nix::fcntl::{fcntl, splice, FcntlArg, SpliceFFlags};
use nix::sys::sendfile::sendfile;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Instant;

/// Options of a baseline run.
#[derive(Debug, Clone)]
pub struct BaselineOptions {
    /// Directory on the file system to measure (the broker's data directory).
    pub data_dir: PathBuf,
    /// Bytes per measurement.
    pub bytes: u64,
    /// Chunk size for writes and copies.
    pub chunk: usize,
    /// Repetitions per measurement (the median is reported).
    pub repeats: usize,
}

/// `baseline.json`.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct Baseline {
    /// Command that produced it.
    pub command: String,
    /// Harness commit.
    pub git_commit: String,
    /// Machine.
    pub machine: Machine,
    /// Directory measured.
    pub data_dir: String,
    /// Bytes per measurement.
    pub bytes: u64,
    /// Chunk size.
    pub chunk: usize,
    /// Repetitions (median reported).
    pub repeats: usize,
    /// Sequential buffered write, MB/s (10^6 bytes), writes only.
    pub disk_write_buffered_mb_s: f64,
    /// Sequential write with fdatasync after each chunk, MB/s.
    pub disk_write_fdatasync_mb_s: f64,
    /// Loopback TCP, MB/s.
    pub loopback_tcp_mb_s: f64,
    /// File (page cache) to socket by read+write, MB/s.
    pub file_to_socket_copy_mb_s: f64,
    /// File (page cache) to socket by sendfile, MB/s.
    pub file_to_socket_sendfile_mb_s: f64,
    /// File (page cache) to socket by splice through a pipe, MB/s.
    pub file_to_socket_splice_mb_s: f64,
    /// Every repetition, for the record.
    pub samples: Vec<(String, Vec<f64>)>,
}

fn mb_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs.max(1e-9) / 1e6
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

fn write_file(path: &Path, bytes: u64, chunk: usize, sync_each: bool) -> Result<f64> {
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    let buf = vec![0x5au8; chunk];
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk as u64) as usize;
        f.write_all(&buf[..n])?;
        if sync_each {
            f.sync_data()?;
        }
        left -= n as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(mb_s(bytes, secs))
}

/// Sequential buffered write of `bytes` to a temporary file in `dir` (page cache, no fsync),
/// MB/s; the file is removed afterwards. `sluice-bench perf` measures this beside the broker.
pub fn page_cache_write_mb_s(dir: &Path, bytes: u64, chunk: usize) -> Result<f64> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!(
        "sluice-bench-page-cache-{}.tmp",
        std::process::id()
    ));
    let res = write_file(&path, bytes, chunk.max(4096), false);
    let _ = std::fs::remove_file(&path);
    res
}

/// A receiver thread that reads and discards everything until EOF, returning the byte count.
fn sink() -> Result<(
    std::net::SocketAddr,
    thread::JoinHandle<std::io::Result<u64>>,
)> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding loopback listener")?;
    let addr = listener.local_addr()?;
    let h = thread::spawn(move || {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
        }
    });
    Ok((addr, h))
}

#[derive(Clone, Copy)]
enum Transfer {
    Memory,
    Copy,
    Sendfile,
    Splice,
}

fn transfer(kind: Transfer, file: Option<&Path>, bytes: u64, chunk: usize) -> Result<f64> {
    let (addr, receiver) = sink()?;
    let mut sock = TcpStream::connect(addr).context("connecting to loopback sink")?;
    let start = Instant::now();
    match kind {
        Transfer::Memory => {
            let buf = vec![0xa5u8; chunk];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk as u64) as usize;
                sock.write_all(&buf[..n])?;
                left -= n as u64;
            }
        }
        Transfer::Copy => {
            let mut f = File::open(file.ok_or_else(|| anyhow!("no file"))?)?;
            let mut buf = vec![0u8; chunk];
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                sock.write_all(&buf[..n])?;
            }
        }
        Transfer::Sendfile => {
            let f = File::open(file.ok_or_else(|| anyhow!("no file"))?)?;
            let mut off: i64 = 0;
            while (off as u64) < bytes {
                let n = sendfile(sock.as_fd(), f.as_fd(), Some(&mut off), chunk)?;
                if n == 0 {
                    break;
                }
            }
        }
        Transfer::Splice => {
            let f = File::open(file.ok_or_else(|| anyhow!("no file"))?)?;
            let (pr, pw) = nix::unistd::pipe()?;
            // A bigger pipe means fewer round trips; the default (64 KiB) is used if refused.
            let _ = fcntl(
                pw.as_raw_fd(),
                FcntlArg::F_SETPIPE_SZ(chunk.min(1 << 20) as i32),
            );
            let mut off: i64 = 0;
            while (off as u64) < bytes {
                let n = splice(
                    f.as_fd(),
                    Some(&mut off),
                    pw.as_fd(),
                    None,
                    chunk,
                    SpliceFFlags::SPLICE_F_MOVE,
                )?;
                if n == 0 {
                    break;
                }
                let mut left = n;
                while left > 0 {
                    let m = splice(
                        pr.as_fd(),
                        None,
                        sock.as_fd(),
                        None,
                        left,
                        SpliceFFlags::SPLICE_F_MOVE,
                    )?;
                    if m == 0 {
                        return Err(anyhow!("splice to socket returned 0"));
                    }
                    left -= m;
                }
            }
        }
    }
    sock.shutdown(std::net::Shutdown::Write)?;
    let received = receiver
        .join()
        .map_err(|_| anyhow!("receiver thread panicked"))??;
    let secs = start.elapsed().as_secs_f64();
    if received != bytes {
        return Err(anyhow!(
            "sent {bytes} bytes but the sink received {received}"
        ));
    }
    Ok(mb_s(bytes, secs))
}

/// Runs every measurement; bounded by the sizes given (each is a single pass over `bytes`).
pub fn run(opts: &BaselineOptions) -> Result<Baseline> {
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("creating {}", opts.data_dir.display()))?;
    let path = opts
        .data_dir
        .join(format!("sluice-bench-baseline-{}.tmp", std::process::id()));
    let repeats = opts.repeats.max(1);
    let chunk = opts.chunk.max(4096);
    let mut samples: Vec<(String, Vec<f64>)> = Vec::new();
    let mut measure = |name: &str, f: &mut dyn FnMut() -> Result<f64>| -> Result<f64> {
        let mut v = Vec::new();
        for _ in 0..repeats {
            v.push(f()?);
        }
        tracing::info!(measurement = name, mb_s = ?v, "baseline");
        samples.push((name.to_string(), v.clone()));
        Ok(median(v))
    };
    let result = (|| -> Result<Baseline> {
        let buffered = measure("disk_write_buffered", &mut || {
            write_file(&path, opts.bytes, chunk, false)
        })?;
        let synced = measure("disk_write_fdatasync", &mut || {
            write_file(&path, opts.bytes, chunk, true)
        })?;
        let tcp = measure("loopback_tcp", &mut || {
            transfer(Transfer::Memory, None, opts.bytes, chunk)
        })?;
        // The file was just written and synced: it is in the page cache. Read it once more to
        // be sure before the file-to-socket passes.
        write_file(&path, opts.bytes, chunk, false)?;
        std::io::copy(&mut File::open(&path)?, &mut std::io::sink())?;
        let copy = measure("file_to_socket_copy", &mut || {
            transfer(Transfer::Copy, Some(&path), opts.bytes, chunk)
        })?;
        let sf = measure("file_to_socket_sendfile", &mut || {
            transfer(Transfer::Sendfile, Some(&path), opts.bytes, chunk)
        })?;
        let sp = measure("file_to_socket_splice", &mut || {
            transfer(Transfer::Splice, Some(&path), opts.bytes, chunk)
        })?;
        Ok(Baseline {
            command: command_line(),
            git_commit: git_commit(),
            machine: Machine::probe(),
            data_dir: opts.data_dir.display().to_string(),
            bytes: opts.bytes,
            chunk,
            repeats,
            disk_write_buffered_mb_s: buffered,
            disk_write_fdatasync_mb_s: synced,
            loopback_tcp_mb_s: tcp,
            file_to_socket_copy_mb_s: copy,
            file_to_socket_sendfile_mb_s: sf,
            file_to_socket_splice_mb_s: sp,
            samples: Vec::new(),
        })
    })();
    let _ = std::fs::remove_file(&path);
    let mut b = result?;
    b.samples = samples;
    Ok(b)
}

/// Loads a baseline.json.
pub fn load(path: &Path) -> Result<Baseline> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_baseline_moves_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let b = run(&BaselineOptions {
            data_dir: dir.path().to_path_buf(),
            bytes: 4 << 20,
            chunk: 256 << 10,
            repeats: 1,
        })
        .unwrap();
        for v in [
            b.disk_write_buffered_mb_s,
            b.disk_write_fdatasync_mb_s,
            b.loopback_tcp_mb_s,
            b.file_to_socket_copy_mb_s,
            b.file_to_socket_sendfile_mb_s,
            b.file_to_socket_splice_mb_s,
        ] {
            assert!(v > 0.0 && v.is_finite());
        }
        assert_eq!(b.samples.len(), 6);
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }
}
