#![no_main]
//! Fuzz target: see `sluice::fuzzing::offset_index`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice::fuzzing::offset_index(data);
});
