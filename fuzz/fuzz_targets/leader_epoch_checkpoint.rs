#![no_main]
//! Fuzz target: see `sluice::fuzzing::leader_epoch_checkpoint`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice::fuzzing::leader_epoch_checkpoint(data);
});
