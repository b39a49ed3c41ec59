//! The guest agent's framing: decode_frame/read_frame agreement, limits, request building and
//! round trips on arbitrary bytes. See `kvmkit_fuzz::agent_frames`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kvmkit_fuzz::agent_frames::run(data);
});
