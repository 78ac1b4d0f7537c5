#![no_main]
//! Fuzz target: see `sluice::fuzzing::log_recovery`. One io_uring runtime per process (a
//! runtime per input would dominate the run time); the partition directory lives in /dev/shm
//! when it exists, so the scan is not disk-bound.
use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;

fn scratch() -> PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    base.join(format!("sluice-fuzz-log-recovery-{}", std::process::id()))
}

thread_local! {
    static RT: tokio_uring::Runtime = tokio_uring::Runtime::new(&tokio_uring::builder())
        .unwrap_or_else(|e| panic!("io_uring runtime: {e}"));
}

fuzz_target!(|data: &[u8]| {
    let dir = scratch();
    RT.with(|rt| rt.block_on(sluice::fuzzing::log_recovery(&dir, data)));
});
