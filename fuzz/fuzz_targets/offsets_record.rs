#![no_main]
//! Fuzz target: see `sluice::fuzzing::offsets_record`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice::fuzzing::offsets_record(data);
});
