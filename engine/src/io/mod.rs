//! The one module that owns the runtime.
//!
//! Every shard runs a tokio-uring runtime: disk I/O (appends, reads, fsync, fallocate) goes
//! through io_uring (`file`), sockets go through tokio's reactor that tokio-uring drives on the
//! same thread (`net`), so a zero-copy `sendfile` can await socket readiness without blocking.
//! Nothing outside this module names `tokio_uring` directly.

pub mod file;
pub mod net;
pub mod runtime;
