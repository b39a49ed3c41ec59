//! A minimal i8042 keyboard controller: enough for Linux to probe it and for
//! `reboot=k` (command 0xfe, pulse the reset line) to end the VM.

use std::sync::Arc;

use kvmkit_guest_abi::I8042_RESET;

use crate::bus::BusDevice;
use crate::control::{ExitReason, VmControl};

/// Port base of the i8042 (data port 0x60; command/status is at +4).
pub const I8042_BASE: u64 = 0x60;
/// Ports the device spans (0x60..=0x64).
pub const I8042_LEN: u64 = 5;
const COMMAND_OFFSET: u64 = 4;

/// The i8042 device.
pub struct I8042 {
    control: Arc<VmControl>,
}

impl I8042 {
    /// An i8042 that ends the VM on a reset command.
    pub fn new(control: Arc<VmControl>) -> Self {
        Self { control }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status 0: no data, input buffer empty. Data port reads 0.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&I8042_RESET) {
            self.control.request_exit(ExitReason::Reset("i8042 reset"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn reset_command_ends_the_vm() {
        let c = Arc::new(VmControl::new(Instant::now()).expect("control"));
        let mut d = I8042::new(c.clone());
        d.write(0, &[I8042_RESET]);
        assert!(c.reason().is_none(), "0xfe on the data port is not a reset");
        d.write(COMMAND_OFFSET, &[0xaa]);
        assert!(c.reason().is_none());
        d.write(COMMAND_OFFSET, &[I8042_RESET]);
        assert_eq!(c.reason(), Some(ExitReason::Reset("i8042 reset")));
    }
}
