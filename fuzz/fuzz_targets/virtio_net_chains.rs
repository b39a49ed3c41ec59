//! virtio-net rx and tx descriptor chains in guest memory, handled by
//! `NetHandler` over a socket pair standing in for the tap. See
//! `kvmkit_fuzz::virtio_net_chains` for the input format and the checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kvmkit_fuzz::virtio_net_chains::run(data);
});
