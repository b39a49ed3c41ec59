//! `Report::from_bytes` and the guest port's report handling on arbitrary
//! guest memory contents. See `kvmkit_fuzz::guest_report`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kvmkit_fuzz::guest_report::run(data);
});
