//! Files on io_uring: positioned writes and reads, fsync, fallocate.
//!
//! `DiskFile` is the only file handle the storage engine uses on its hot path. Writes, reads,
//! `fdatasync` and `fallocate` are io_uring operations; `set_len` (ftruncate) and `len` (fstat)
//! are plain syscalls because io_uring on the kernels we target has no ftruncate opcode, and
//! both are used only when rolling, truncating or opening a log, never per append.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use bytes::Bytes;

/// Most iovecs handed to one `pwritev` (Linux's IOV_MAX is 1024).
const IOV_BATCH: usize = 512;

/// The bytes a `pwrite`/`pwritev` call wrote: `None` when a signal interrupted it (retry),
/// an error when it failed or wrote nothing.
fn written(n: isize, call: &str) -> io::Result<Option<usize>> {
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(None)
        } else {
            Err(e)
        };
    }
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("{call} wrote nothing"),
        ));
    }
    Ok(Some(n as usize))
}

/// `fallocate` mode that reserves blocks without changing the file length.
pub const FALLOC_KEEP_SIZE: i32 = libc::FALLOC_FL_KEEP_SIZE;

/// An open file whose data path goes through the shard's io_uring.
pub struct DiskFile {
    file: tokio_uring::fs::File,
    path: PathBuf,
}

impl std::fmt::Debug for DiskFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskFile")
            .field("path", &self.path)
            .field("fd", &self.raw_fd())
            .finish()
    }
}

impl DiskFile {
    /// Opens `path` read-write with std (open time, not the hot path), creating it if asked.
    pub fn open_rw(path: &Path, create: bool) -> io::Result<DiskFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .open(path)?;
        Ok(DiskFile {
            file: tokio_uring::fs::File::from_std(file),
            path: path.to_path_buf(),
        })
    }

    /// Opens (creating if needed) `path` read-write through io_uring's openat.
    pub async fn open_rw_async(path: &Path) -> io::Result<DiskFile> {
        let mut opts = tokio_uring::fs::OpenOptions::new();
        opts.read(true).write(true).create(true);
        let file = uring(opts.open(path)).await?;
        Ok(DiskFile {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Creates `path` (failing if it exists) through io_uring's openat.
    pub async fn create_new(path: &Path) -> io::Result<DiskFile> {
        let mut opts = tokio_uring::fs::OpenOptions::new();
        opts.read(true).write(true).create_new(true);
        let file = uring(opts.open(path)).await?;
        Ok(DiskFile {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Opens a directory so that it can be fsync'd (making file creations and deletions durable).
    pub async fn open_dir(path: &Path) -> io::Result<DiskFile> {
        let mut opts = tokio_uring::fs::OpenOptions::new();
        opts.read(true);
        let file = uring(opts.open(path)).await?;
        Ok(DiskFile {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The path this file was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw descriptor, for sendfile/splice by the fetch path.
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Writes all of `buf` at `pos`; returns the buffer so callers can reuse it.
    pub async fn write_all_at(&self, buf: Bytes, pos: u64) -> (io::Result<()>, Bytes) {
        uring(self.file.write_all_at(buf, pos)).await
    }

    /// Writes all of `bufs`, back to back, starting at `pos` with one `writev` per attempt;
    /// short writes continue where they stopped.
    pub async fn write_all_vectored_at(
        &self,
        mut bufs: Vec<Bytes>,
        mut pos: u64,
    ) -> io::Result<()> {
        while !bufs.is_empty() {
            let (res, returned) = uring(self.file.writev_at(bufs, pos)).await;
            let mut n = res?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "writev wrote nothing",
                ));
            }
            pos += n as u64;
            let mut rest = Vec::with_capacity(returned.len());
            for b in returned {
                if n >= b.len() {
                    n -= b.len();
                } else {
                    rest.push(b.slice(n..));
                    n = 0;
                }
            }
            bufs = rest;
        }
        Ok(())
    }

    /// Writes all of `buf` (an owned vector) at `pos`.
    pub async fn write_vec_at(&self, buf: Vec<u8>, pos: u64) -> io::Result<()> {
        let (res, _) = uring(self.file.write_all_at(buf, pos)).await;
        res
    }

    /// Writes all of `bufs`, back to back from `pos`, with `pwritev` on the calling thread.
    ///
    /// This is the append path's write (see docs/arch/storage.md, "Write path"): a buffered
    /// write to ext4 cannot be done inline by io_uring (ext4 refuses `RWF_NOWAIT` for buffered
    /// writes), so io_uring hands every one to an io-wq worker thread, one context switch and
    /// one cross-core copy per write. A page-cache copy is a few hundred microseconds per MiB
    /// at most, so doing it on the shard thread is cheaper. It can block when the kernel
    /// throttles dirty pages; the shard then waits for the disk, as the producers must anyway.
    pub fn pwrite_all_vectored(&self, bufs: &[Bytes], mut pos: u64) -> io::Result<()> {
        let mut first = 0usize; // index of the first buffer not fully written
        let mut skip = 0usize; // bytes of bufs[first] already written
        while first < bufs.len() {
            let iov: Vec<libc::iovec> = bufs[first..]
                .iter()
                .take(IOV_BATCH)
                .enumerate()
                .map(|(i, b)| {
                    let s = if i == 0 { &b[skip..] } else { &b[..] };
                    libc::iovec {
                        iov_base: s.as_ptr() as *mut libc::c_void,
                        iov_len: s.len(),
                    }
                })
                .collect();
            let off = libc::off_t::try_from(pos).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "position overflows off_t")
            })?;
            // SAFETY: every iovec points into a `Bytes` borrowed from `bufs` for the whole
            // call, with its exact length; `iov.len()` is at most IOV_BATCH (< IOV_MAX); the
            // kernel only reads from these buffers.
            let n = unsafe {
                libc::pwritev(self.raw_fd(), iov.as_ptr(), iov.len() as libc::c_int, off)
            };
            let Some(mut n) = written(n, "pwritev")? else {
                continue;
            };
            pos += n as u64;
            while n > 0 && first < bufs.len() {
                let left = bufs[first].len() - skip;
                if n >= left {
                    n -= left;
                    first += 1;
                    skip = 0;
                } else {
                    skip += n;
                    n = 0;
                }
            }
            // Skip empty buffers so the loop ends when only they remain.
            while first < bufs.len() && bufs[first].len() == skip {
                first += 1;
                skip = 0;
            }
        }
        Ok(())
    }

    /// Writes all of `buf` at `pos` with `pwrite` on the calling thread (see
    /// `pwrite_all_vectored` for why the append path does not use io_uring for this).
    pub fn pwrite_all(&self, buf: &[u8], mut pos: u64) -> io::Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let rest = &buf[done..];
            let off = libc::off_t::try_from(pos).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "position overflows off_t")
            })?;
            // SAFETY: `rest` is a live slice of `buf` for the whole call, with its exact
            // length; the kernel only reads from it.
            let n = unsafe {
                libc::pwrite(
                    self.raw_fd(),
                    rest.as_ptr() as *const libc::c_void,
                    rest.len(),
                    off,
                )
            };
            let Some(n) = written(n, "pwrite")? else {
                continue;
            };
            done += n;
            pos += n as u64;
        }
        Ok(())
    }

    /// Reads up to `len` bytes at `pos`; a short result means end of file.
    pub async fn read_at(&self, len: usize, pos: u64) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let want = len - out.len();
            let (res, buf) = uring(
                self.file
                    .read_at(Vec::with_capacity(want), pos + out.len() as u64),
            )
            .await;
            let n = res?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        Ok(out)
    }

    /// Reads exactly `len` bytes at `pos`, failing with `UnexpectedEof` on a short file.
    pub async fn read_exact_at(&self, len: usize, pos: u64) -> io::Result<Vec<u8>> {
        let (res, buf) = uring(self.file.read_exact_at(Vec::with_capacity(len), pos)).await;
        res?;
        Ok(buf)
    }

    /// `fdatasync`: data and the metadata needed to read it back (file length) reach the disk.
    pub async fn sync_data(&self) -> io::Result<()> {
        fsync(uring(self.file.sync_data())).await
    }

    /// `fsync`: data and all metadata.
    pub async fn sync_all(&self) -> io::Result<()> {
        fsync(uring(self.file.sync_all())).await
    }

    /// `fallocate(mode, offset, len)` through io_uring.
    pub async fn fallocate(&self, offset: u64, len: u64, mode: i32) -> io::Result<()> {
        uring(self.file.fallocate(offset, len, mode)).await
    }

    /// Sets the file length (ftruncate). Blocking syscall: roll/truncate/open only.
    pub fn set_len(&self, len: u64) -> io::Result<()> {
        let len = libc::off_t::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "length overflows off_t"))?;
        // SAFETY: ftruncate on a descriptor we own; it has no memory-safety preconditions.
        let rc = unsafe { libc::ftruncate(self.raw_fd(), len) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Current file length (fstat). Blocking syscall: open/inspection only.
    pub fn len(&self) -> io::Result<u64> {
        let stat = nix::sys::stat::fstat(self.raw_fd()).map_err(io::Error::from)?;
        u64::try_from(stat.st_size)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "negative file size"))
    }

    /// Whether the file is empty (fstat).
    pub fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
}

/// Replaces `path` with `contents` atomically: write a temp file, fsync it, rename, fsync the dir.
pub async fn write_file_atomic(path: &Path, contents: Vec<u8>) -> io::Result<()> {
    let tmp = tmp_path(path);
    let res = write_and_rename(&tmp, path, contents).await;
    if res.is_err() {
        // A failed write (ENOSPC) must not leave a temp file holding the space it took; the
        // old file is untouched, so the checkpoint still reads as its previous value.
        let _ = remove_file_if_exists(&tmp).await;
    }
    res
}

async fn write_and_rename(tmp: &Path, path: &Path, contents: Vec<u8>) -> io::Result<()> {
    let file = uring(
        tokio_uring::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(tmp),
    )
    .await?;
    let (res, _) = uring(file.write_all_at(contents, 0)).await;
    if let Err(e) = res {
        let _ = uring(file.close()).await;
        return Err(e);
    }
    if let Err(e) = fsync(uring(file.sync_all())).await {
        let _ = uring(file.close()).await;
        return Err(e);
    }
    uring(file.close()).await?;
    uring(tokio_uring::fs::rename(tmp, path)).await?;
    if let Some(parent) = path.parent() {
        let dir = DiskFile::open_dir(parent).await?;
        dir.sync_all().await?;
    }
    Ok(())
}

/// Removes a file through io_uring's unlinkat; a missing file is not an error.
pub async fn remove_file_if_exists(path: &Path) -> io::Result<()> {
    match uring(tokio_uring::fs::remove_file(path)).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// fsyncs a directory with std (open time only).
pub fn sync_dir_blocking(path: &Path) -> io::Result<()> {
    let dir = std::fs::File::open(path)?;
    let started = std::time::Instant::now();
    let res = dir.sync_all();
    crate::metrics::record_fsync(started.elapsed());
    res
}

/// Counts one io_uring operation of ours in /metrics (submitted, then completed).
async fn uring<T>(op: impl std::future::Future<Output = T>) -> T {
    crate::metrics::uring_submitted();
    let out = op.await;
    crate::metrics::uring_completed();
    out
}

/// Times an fsync/fdatasync for the `sluice_fsync_duration_seconds` histogram.
async fn fsync<T>(op: impl std::future::Future<Output = T>) -> T {
    let started = std::time::Instant::now();
    let out = op.await;
    crate::metrics::record_fsync(started.elapsed());
    out
}

/// A fresh temporary name for `write_file_atomic`: `<name>.<n>.tmp`, unique within the
/// process, so two writers of the same file never rename each other's temp file.
pub fn tmp_path(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".{n}.tmp"));
    path.with_file_name(name)
}
