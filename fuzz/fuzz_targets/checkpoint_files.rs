#![no_main]
//! Fuzz target: see `sluice::fuzzing::checkpoint_files`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice::fuzzing::checkpoint_files(data);
});
