//! virtio-blk descriptor chains in guest memory, completed by
//! `BlockHandler::drain` over a temp-file image. See
//! `kvmkit_fuzz::virtio_blk_request` for the input format and the checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kvmkit_fuzz::virtio_blk_request::run(data);
});
