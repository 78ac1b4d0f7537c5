//! The one module that owns the runtime: tokio-uring for disk I/O, helpers for sockets.
