//! Kernel images (raw, ELF64 with fuzzed headers and PVH notes, bzImage with
//! a fuzzed setup header) loaded into guest memory. See
//! `kvmkit_fuzz::kernel_loader`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kvmkit_fuzz::kernel_loader::run(data);
});
