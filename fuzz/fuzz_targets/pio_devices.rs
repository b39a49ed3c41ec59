//! Sequences of port-I/O (and null-MMIO) accesses against kvmkit's device
//! buses, populated the way `machine.rs` populates them. See
//! `kvmkit_fuzz::pio_devices` for the input format and the checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kvmkit_fuzz::pio_devices::run(data);
});
