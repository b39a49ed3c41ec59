//! Register accesses against a virtio-mmio transport wrapping a virtio-blk
//! device. See `kvmkit_fuzz::virtio_mmio_transport` for the input format and
//! the checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kvmkit_fuzz::virtio_mmio_transport::run(data);
});
