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
