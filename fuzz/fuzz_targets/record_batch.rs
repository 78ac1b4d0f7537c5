#![no_main]
//! Fuzz target: see `sluice::fuzzing::record_batches`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice::fuzzing::record_batches(data);
});
