#![no_main]
//! Fuzz target: see `sluice::fuzzing::controller_log`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice::fuzzing::controller_log(data);
});
