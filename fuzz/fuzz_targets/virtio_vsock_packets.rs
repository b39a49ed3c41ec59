//! Guest-sent virtio-vsock packets and rx buffers in guest memory, with real
//! unix sockets on the host side. See `kvmkit_fuzz::virtio_vsock_packets`
//! for the input format and the checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kvmkit_fuzz::virtio_vsock_packets::run(data);
});
