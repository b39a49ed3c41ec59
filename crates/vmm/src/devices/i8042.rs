//! A minimal i8042 keyboard controller: enough for Linux to probe it
//! quietly (controller configuration byte, self tests), for `reboot=k`
//! (command 0xfe, pulse the reset line) to end the VM, and for the VMM to
//! press Ctrl-Alt-Del (`SendCtrlAltDel`): the scancodes are queued and IRQ 1
//! is raised for each. No mouse is attached.

use std::collections::VecDeque;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

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

/// Keyboard IRQ (ISA IRQ 1).
pub const I8042_KBD_IRQ: u32 = 1;
/// Scancodes (set 1, as the controller translates them) of Ctrl, Alt and
/// Del pressed, then released.
const CTRL_ALT_DEL: [u8; 10] = [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d, 0, 0];
/// Most bytes kept waiting for the guest to read.
const MAX_QUEUED: usize = 32;
const CTR_KBD_INT: u8 = 0x01;

/// The i8042 device.
pub struct I8042 {
    control: Arc<VmControl>,
    ctr: u8,
    output: Option<u8>,
    /// Keyboard bytes waiting behind `output`.
    queued: VecDeque<u8>,
    /// The command whose data byte the next data-port write carries.
    pending: Option<u8>,
    /// Raises IRQ 1 (an irqfd), when wired.
    kbd_irq: Option<EventFd>,
}

impl I8042 {
    /// An i8042 that ends the VM on a reset command.
    pub fn new(control: Arc<VmControl>) -> Self {
        Self {
            control,
            ctr: 0x45,
            output: None,
            queued: VecDeque::new(),
            pending: None,
            kbd_irq: None,
        }
    }

    /// Wires the keyboard interrupt (an irqfd registered for IRQ 1).
    pub fn with_kbd_irq(mut self, irq: EventFd) -> Self {
        self.kbd_irq = Some(irq);
        self
    }

    /// Presses and releases Ctrl-Alt-Del. Returns false when the guest
    /// has not read the previous keys yet (nothing is queued then).
    pub fn trigger_ctrl_alt_del(&mut self) -> bool {
        let keys = &CTRL_ALT_DEL[..8];
        if self.queued.len() + keys.len() > MAX_QUEUED {
            return false;
        }
        self.queued.extend(keys.iter().copied());
        self.feed();
        true
    }

    /// Moves the next queued key into the output buffer and interrupts.
    fn feed(&mut self) {
        if self.output.is_some() {
            return;
        }
        if let Some(b) = self.queued.pop_front() {
            self.output = Some(b);
            if self.ctr & CTR_KBD_INT != 0 {
                if let Some(irq) = &self.kbd_irq {
                    // A failed eventfd write means an interrupt is pending anyway.
                    let _ = irq.write(1);
                }
            }
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
            DATA_OFFSET => {
                let b = self.output.take().unwrap_or(0);
                self.feed();
                b
            }
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
    fn ctrl_alt_del_queues_scancodes_and_interrupts() {
        let (_, d) = dev();
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let mut d = d.with_kbd_irq(irq.try_clone().expect("clone"));
        assert!(d.trigger_ctrl_alt_del());
        let mut got = Vec::new();
        while read(&mut d, COMMAND_OFFSET) & STATUS_OUTPUT_FULL != 0 {
            got.push(read(&mut d, DATA_OFFSET));
        }
        assert_eq!(got, CTRL_ALT_DEL[..8]);
        assert_eq!(irq.read().expect("irq raised"), 8, "one interrupt per byte");
        // A guest that never reads cannot make the queue grow.
        let mut accepted = 0;
        for _ in 0..100 {
            accepted += usize::from(d.trigger_ctrl_alt_del());
        }
        assert!(accepted <= MAX_QUEUED / 8 + 1, "{accepted}");
    }

    #[test]
    fn output_port_reset_line_ends_the_vm() {
        let (c, mut d) = dev();
        d.write(COMMAND_OFFSET, &[CMD_WRITE_OUTPUT_PORT]);
        d.write(DATA_OFFSET, &[0xfe]);
        assert!(c.reason().is_some());
    }
}
