//! Firecracker-style API requests (method, path, body) through
//! `kvmkit_api::parse_request`. See `kvmkit_fuzz::api_request` for the input
//! format and the checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kvmkit_fuzz::api_request::run(data);
});
