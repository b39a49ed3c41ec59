//! kvmkit's own devices in a snapshot. The serial port's registers and
//! FIFO are saved. The i8042 is not saved yet: a restored VM gets one in
//! its power-on state (right for guests that never used it, such as
//! kvmkit's own; a Linux guest keeps working, as after a controller
//! self-test). The debug port, guest ports, ACPI PM block and null MMIO
//! page hold no state. Virtio devices are not supported yet: a VM with one is refused
//! at snapshot time, and a state file naming one at restore time.

use serde::{Deserialize, Serialize};
use vm_superio::serial::SerialState;

use super::SnapshotError;
use crate::vmm_config::VmResources;

/// The 16550's registers and receive FIFO.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialSnapshot {
    /// Divisor latch, low byte.
    pub baud_divisor_low: u8,
    /// Divisor latch, high byte.
    pub baud_divisor_high: u8,
    /// IER.
    pub interrupt_enable: u8,
    /// IIR.
    pub interrupt_identification: u8,
    /// LCR.
    pub line_control: u8,
    /// LSR.
    pub line_status: u8,
    /// MCR.
    pub modem_control: u8,
    /// MSR.
    pub modem_status: u8,
    /// Scratch.
    pub scratch: u8,
    /// Bytes received and not read yet.
    pub in_buffer: Vec<u8>,
}

impl From<&SerialState> for SerialSnapshot {
    fn from(s: &SerialState) -> Self {
        Self {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

impl From<&SerialSnapshot> for SerialState {
    fn from(s: &SerialSnapshot) -> Self {
        Self {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

/// The state of kvmkit's devices.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DevicesState {
    /// COM1.
    pub serial: SerialSnapshot,
}

/// Refuses resources with devices whose state kvmkit cannot save yet.
pub fn check_supported(resources: &VmResources) -> Result<(), SnapshotError> {
    let mut what = Vec::new();
    if !resources.drives.is_empty() {
        what.push("virtio-blk drives");
    }
    if !resources.network_interfaces.is_empty() {
        what.push("virtio-net interfaces");
    }
    if resources.entropy.is_some() {
        what.push("a virtio-rng device");
    }
    if what.is_empty() {
        Ok(())
    } else {
        Err(SnapshotError::Unsupported(format!(
            "snapshots of VMs with {} are not supported yet",
            what.join(", ")
        )))
    }
}
