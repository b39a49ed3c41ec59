//! A minimal i8042 keyboard controller: enough for Linux to probe it
//! quietly (controller configuration byte, self tests) and for `reboot=k`
//! (command 0xfe, pulse the reset line) to end the VM. No keyboard or mouse
//! is attached.

use std::sync::Arc;

use kvmkit_guest_abi::I8042_RESET;

use crate::bus::BusDevice;
use crate::control::{ExitReason, VmControl};

/// Port base of the i8042 (data port 0x60; command/status is at +4).
pub const I8042_BASE: u64 = 0x60;
/// Ports the device spans (0x60..=0x64).
pub const I8042_LEN: u64 = 5;
const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;

const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM_FLAG: u8 = 0x04;
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_INTERFACE_TEST: u8 = 0xab;
const CMD_AUX_INTERFACE_TEST: u8 = 0xa9;
const CMD_WRITE_AUX: u8 = 0xd4;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;

/// The i8042 device.
pub struct I8042 {
    control: Arc<VmControl>,
    ctr: u8,
    output: Option<u8>,
    /// The command whose data byte the next data-port write carries.
    pending: Option<u8>,
}

impl I8042 {
    /// An i8042 that ends the VM on a reset command.
    pub fn new(control: Arc<VmControl>) -> Self {
        Self {
            control,
            ctr: 0x45,
            output: None,
            pending: None,
        }
    }

    fn command(&mut self, cmd: u8) {
        match cmd {
            I8042_RESET => self.control.request_exit(ExitReason::Reset("i8042 reset")),
            CMD_READ_CTR => self.output = Some(self.ctr),
            CMD_SELF_TEST => self.output = Some(0x55),
            CMD_KBD_INTERFACE_TEST | CMD_AUX_INTERFACE_TEST => self.output = Some(0x00),
            CMD_WRITE_CTR | CMD_WRITE_AUX | CMD_WRITE_OUTPUT_PORT => self.pending = Some(cmd),
            _ => {}
        }
    }

    fn data(&mut self, value: u8) {
        match self.pending.take() {
            Some(CMD_WRITE_CTR) => self.ctr = value,
            // Bit 0 of the output port is the reset line, active low.
            Some(CMD_WRITE_OUTPUT_PORT) if value & 1 == 0 => {
                self.control.request_exit(ExitReason::Reset("i8042 output port reset"))
            }
            _ => {}
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(first) = data.first_mut() else { return };
        *first = match offset {
            DATA_OFFSET => self.output.take().unwrap_or(0),
            COMMAND_OFFSET => STATUS_SYSTEM_FLAG | if self.output.is_some() { STATUS_OUTPUT_FULL } else { 0 },
            _ => 0,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            COMMAND_OFFSET => self.command(value),
            DATA_OFFSET => self.data(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn dev() -> (Arc<VmControl>, I8042) {
        let c = Arc::new(VmControl::new(Instant::now()).expect("control"));
        (c.clone(), I8042::new(c))
    }

    fn read(d: &mut I8042, offset: u64) -> u8 {
        let mut b = [0u8];
        d.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn reset_command_ends_the_vm() {
        let (c, mut d) = dev();
        d.write(DATA_OFFSET, &[I8042_RESET]);
        assert!(c.reason().is_none(), "0xfe on the data port is not a reset");
        d.write(COMMAND_OFFSET, &[0xad]);
        assert!(c.reason().is_none());
        d.write(COMMAND_OFFSET, &[I8042_RESET]);
        assert_eq!(c.reason(), Some(ExitReason::Reset("i8042 reset")));
    }

    #[test]
    fn controller_configuration_byte_reads_back() {
        let (_, mut d) = dev();
        assert_eq!(read(&mut d, COMMAND_OFFSET) & STATUS_OUTPUT_FULL, 0);
        d.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        d.write(DATA_OFFSET, &[0x47]);
        d.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        assert_eq!(read(&mut d, COMMAND_OFFSET) & STATUS_OUTPUT_FULL, STATUS_OUTPUT_FULL);
        assert_eq!(read(&mut d, DATA_OFFSET), 0x47);
        assert_eq!(read(&mut d, COMMAND_OFFSET) & STATUS_OUTPUT_FULL, 0);
        d.write(COMMAND_OFFSET, &[CMD_SELF_TEST]);
        assert_eq!(read(&mut d, DATA_OFFSET), 0x55);
    }

    #[test]
    fn output_port_reset_line_ends_the_vm() {
        let (c, mut d) = dev();
        d.write(COMMAND_OFFSET, &[CMD_WRITE_OUTPUT_PORT]);
        d.write(DATA_OFFSET, &[0xfe]);
        assert!(c.reason().is_some());
    }
}
