//! Starting a shard's runtime and spawning tasks on it.

use std::future::Future;

/// Runs `future` to completion on a new io_uring runtime bound to the calling thread.
///
/// The runtime also drives tokio's reactor and timers, so `tokio::net` and `tokio::time`
/// work inside it.
pub fn block_on<F: Future>(future: F) -> F::Output {
    tokio_uring::start(future)
}

/// Spawns a task on the current thread's runtime (tasks need not be `Send`).
pub fn spawn<T: Future + 'static>(task: T) -> tokio::task::JoinHandle<T::Output> {
    tokio_uring::spawn(task)
}

/// Creates and drops a small io_uring, to tell whether this process may use io_uring at all
/// (`sluice check`): fails when the kernel lacks it, it is disabled by sysctl or seccomp, or
/// locked memory is too small for the ring on older kernels.
pub fn probe_io_uring() -> std::io::Result<()> {
    io_uring::IoUring::new(8).map(drop)
}
