#![no_main]
//! Fuzz target: see `sluice::fuzzing::request`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice::fuzzing::request(data);
});
