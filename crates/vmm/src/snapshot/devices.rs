//! kvmkit's own devices in a snapshot. The serial port's registers and
//! FIFO, and the i8042's controller and keyboard registers, are saved.
//! The debug port, guest ports, ACPI PM block and null MMIO page hold no
//! state. Virtio block, net, rng and vsock devices are saved with their
//! transports ([`super::virtio`]); any other device kind is refused at
//! snapshot time ("cannot be snapshotted yet"), never half-saved.

use serde::{Deserialize, Serialize};
use vm_superio::serial::SerialState;

use super::virtio::{VirtioDeviceState, VirtioKindState};
use super::SnapshotError;
use crate::devices::i8042::I8042State;
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
    /// The i8042 controller and keyboard (None: power-on state).
    #[serde(default)]
    pub i8042: Option<I8042State>,
    /// Every virtio device, in the order they were placed.
    #[serde(default)]
    pub virtio: Vec<VirtioDeviceState>,
}

/// Checks that the saved virtio devices are exactly the resources' drives,
/// NICs, rng and vsock device, each with a unique id (a state file that
/// passed its CRC can still be hand-made).
pub fn check_virtio(resources: &VmResources, virtio: &[VirtioDeviceState]) -> Result<(), SnapshotError> {
    let bad = |m: String| Err(SnapshotError::Invalid(m));
    let want = resources.drives.len()
        + resources.network_interfaces.len()
        + usize::from(resources.entropy.is_some())
        + usize::from(resources.vsock.is_some());
    if virtio.len() != want {
        return bad(format!(
            "the state has {} virtio devices, its resources {want}",
            virtio.len()
        ));
    }
    for (i, d) in virtio.iter().enumerate() {
        if virtio[..i].iter().any(|o| o.id == d.id) {
            return bad(format!("virtio device '{}' is saved twice", d.id));
        }
        let known = match &d.device {
            VirtioKindState::Block(b) => resources
                .drives
                .iter()
                .any(|r| r.drive_id == d.id && r.is_read_only == b.read_only && r.path_on_host == b.path),
            VirtioKindState::Net(n) => resources
                .network_interfaces
                .iter()
                .any(|r| r.iface_id == d.id && r.host_dev_name == n.host_dev_name && r.mac() == n.mac),
            VirtioKindState::Rng => resources.entropy.is_some() && d.id == "rng0",
            VirtioKindState::Vsock(v) => resources.vsock.as_ref().is_some_and(|r| {
                d.id == "vsock0"
                    && u64::from(r.guest_cid) == v.guest_cid
                    && r.uds_path.as_os_str() == v.uds_path.as_str()
            }),
        };
        if !known {
            return bad(format!(
                "virtio device '{}' does not match the snapshot's device configuration",
                d.id
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::snapshot::virtio::{BlockSnapshot, TransportState, VsockSnapshot};
    use crate::vmm_config::BlockDeviceConfig;

    #[test]
    fn saved_virtio_devices_must_match_the_resources() {
        let mut r = VmResources::default();
        r.drives.push(BlockDeviceConfig {
            drive_id: "d".into(),
            path_on_host: "/x.img".into(),
            ..Default::default()
        });
        let dev = |path: &str| VirtioDeviceState {
            id: "d".into(),
            mmio_base: 0xd000_1000,
            gsi: 5,
            transport: TransportState::default(),
            device: VirtioKindState::Block(BlockSnapshot {
                path: path.into(),
                read_only: false,
                direct: false,
                size: 1 << 20,
            }),
        };
        assert!(check_virtio(&r, &[dev("/x.img")]).is_ok());
        assert!(check_virtio(&r, &[]).is_err(), "a drive without state");
        assert!(check_virtio(&r, &[dev("/y.img")]).is_err(), "another path");
        assert!(check_virtio(&r, &[dev("/x.img"), dev("/x.img")]).is_err(), "twice");
        // A vsock device: saved with its CID and socket path, which must be
        // the resources' (a state without it, or with another, is refused).
        r.vsock = Some(serde_json::from_str(r#"{"guest_cid":3,"uds_path":"/tmp/v.sock"}"#).expect("vsock"));
        let vsock = |cid: u64, path: &str| VirtioDeviceState {
            id: "vsock0".into(),
            mmio_base: 0xd000_2000,
            gsi: 6,
            transport: TransportState::default(),
            device: VirtioKindState::Vsock(VsockSnapshot {
                guest_cid: cid,
                uds_path: path.into(),
                next_local_port: 1 << 30,
            }),
        };
        let e = check_virtio(&r, &[dev("/x.img")]).unwrap_err().to_string();
        assert!(e.contains("the state has 1 virtio devices, its resources 2"), "{e}");
        assert!(check_virtio(&r, &[dev("/x.img"), vsock(3, "/tmp/v.sock")]).is_ok());
        assert!(
            check_virtio(&r, &[dev("/x.img"), vsock(4, "/tmp/v.sock")]).is_err(),
            "another CID"
        );
        assert!(
            check_virtio(&r, &[dev("/x.img"), vsock(3, "/tmp/w.sock")]).is_err(),
            "another path"
        );
        r.vsock = None;
        assert!(
            check_virtio(&r, &[dev("/x.img"), vsock(3, "/tmp/v.sock")]).is_err(),
            "no vsock resource"
        );
    }
    use crate::bus::BusDevice;
    use crate::control::VmControl;
    use crate::devices::i8042::I8042;

    #[test]
    fn i8042_state_round_trips_through_json() {
        let control = Arc::new(VmControl::new(std::time::Instant::now()).expect("control"));
        let mut a = I8042::new(control.clone());
        // Write the command byte (0x60) and leave a keyboard echo (0xee) unread.
        a.write(4, &[0x60]);
        a.write(0, &[0x45]);
        a.write(0, &[0xee]);
        let json = serde_json::to_string(&a.state()).expect("encode");
        let back: I8042State = serde_json::from_str(&json).expect("decode");
        let mut b = I8042::new(control);
        b.restore_state(&back).expect("restore");
        assert_eq!(serde_json::to_string(&b.state()).expect("encode"), json);
        let (mut x, mut y) = ([0u8], [0u8]);
        a.read(0, &mut x);
        b.read(0, &mut y);
        assert_eq!(x, y, "the pending byte survives");
        let bad = json.replace("\"set\":2", "\"set\":9");
        let bad: I8042State = serde_json::from_str(&bad).expect("decode");
        assert!(b.restore_state(&bad).is_err());
    }
}
