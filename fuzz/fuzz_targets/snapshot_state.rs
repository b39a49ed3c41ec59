//! kvmkit's snapshot state-file decoder on arbitrary and mutated files.
//! See `kvmkit_fuzz::snapshot_state`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kvmkit_fuzz::snapshot_state::run(data);
});
