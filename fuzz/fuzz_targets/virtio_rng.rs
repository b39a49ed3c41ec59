//! virtio-rng descriptor chains and avail indices as a guest controls them.
//! See `kvmkit_fuzz::virtio_rng`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kvmkit_fuzz::virtio_rng::run(data);
});
