//! Virtio devices in a snapshot: each virtio-mmio transport (registers,
//! negotiated features, every queue's addresses and ring positions, the
//! interrupt status) and what the device itself needs to be rebuilt (a
//! drive's file and settings, a NIC's tap and MAC, the rng's id, a vsock
//! device's CID and socket path).

use serde::{Deserialize, Serialize};
use virtio_queue::QueueState;

/// One virtqueue (virtio-queue's `QueueState`, which has no serde).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    /// Largest size the device offers.
    pub max_size: u16,
    /// Next avail ring entry the device will read.
    pub next_avail: u16,
    /// Next used ring entry the device will write.
    pub next_used: u16,
    /// VIRTIO_F_RING_EVENT_IDX negotiated.
    pub event_idx_enabled: bool,
    /// Size the driver chose.
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// Descriptor table (guest-physical).
    pub desc_table: u64,
    /// Avail ring (guest-physical).
    pub avail_ring: u64,
    /// Used ring (guest-physical).
    pub used_ring: u64,
}

impl From<QueueState> for QueueSnapshot {
    fn from(q: QueueState) -> Self {
        Self {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

impl From<&QueueSnapshot> for QueueState {
    fn from(q: &QueueSnapshot) -> Self {
        Self {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

/// A virtio-mmio transport's registers and queues.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    /// Virtio device id (checked against the rebuilt device).
    pub device_type: u32,
    /// Features the device offered (checked against the rebuilt device).
    pub device_features: u64,
    /// Features the driver accepted.
    pub acked_features: u64,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// QueueSel.
    pub queue_sel: u32,
    /// The driver status register (DRIVER_OK: the device is re-activated).
    pub status: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// Marked broken (DEVICE_NEEDS_RESET) by the device.
    pub broken: bool,
    /// Every queue, as the device's worker last left it.
    pub queues: Vec<QueueSnapshot>,
}

/// What a block device is rebuilt from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockSnapshot {
    /// Host path of the image at snapshot time (after any drive swap).
    pub path: String,
    /// Read-only (negotiated with the driver; must not change).
    pub read_only: bool,
    /// O_DIRECT (`cache=none`).
    pub direct: bool,
    /// Image size in bytes (the capacity the driver knows; must not change).
    pub size: u64,
}

/// What a NIC is rebuilt from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetSnapshot {
    /// The tap it used (`network_overrides` can name another).
    pub host_dev_name: String,
    /// The guest's MAC.
    pub mac: [u8; 6],
}

/// What a vsock device is rebuilt from. Its connections are not saved: a
/// snapshot closes them and sends the driver a transport reset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockSnapshot {
    /// The guest's CID.
    pub guest_cid: u64,
    /// The host listener's path (bound again by the restoring process).
    pub uds_path: String,
    /// The host port the next host-initiated connection tries first, so a
    /// restored guest never sees a new connection on an old one's ports
    /// (Firecracker's `local_port_last`).
    #[serde(default)]
    pub next_local_port: u32,
}

/// The device behind a transport.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum VirtioKindState {
    /// virtio-blk.
    Block(BlockSnapshot),
    /// virtio-net.
    Net(NetSnapshot),
    /// virtio-rng (no state of its own; rate limiters are not supported).
    Rng,
    /// virtio-vsock.
    Vsock(VsockSnapshot),
}

/// One virtio device: where it sits, its transport, its device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioDeviceState {
    /// Drive id, iface id, `rng0` or `vsock0`.
    pub id: String,
    /// MMIO window base (the rebuilt device must land at the same one).
    pub mmio_base: u64,
    /// GSI.
    pub gsi: u32,
    /// The transport.
    pub transport: TransportState,
    /// The device.
    pub device: VirtioKindState,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_state_round_trips_through_json() {
        let q = QueueState {
            max_size: 256,
            next_avail: 17,
            next_used: 15,
            event_idx_enabled: false,
            size: 128,
            ready: true,
            desc_table: 0x10_0000,
            avail_ring: 0x10_1000,
            used_ring: 0x10_2000,
        };
        let snap = QueueSnapshot::from(q);
        assert_eq!(QueueState::from(&snap), q);
        let devices = vec![
            VirtioDeviceState {
                id: "disk0".into(),
                mmio_base: 0xd000_1000,
                gsi: 5,
                transport: TransportState {
                    device_type: 2,
                    device_features: 1 << 32 | 1 << 9,
                    acked_features: 1 << 32,
                    status: 0xf,
                    interrupt_status: 1,
                    queues: vec![snap],
                    ..Default::default()
                },
                device: VirtioKindState::Block(BlockSnapshot {
                    path: "/tmp/d.img".into(),
                    read_only: false,
                    direct: true,
                    size: 1 << 20,
                }),
            },
            VirtioDeviceState {
                id: "net0".into(),
                mmio_base: 0xd000_2000,
                gsi: 6,
                transport: TransportState::default(),
                device: VirtioKindState::Net(NetSnapshot {
                    host_dev_name: "tap0".into(),
                    mac: [6, 0, 1, 2, 3, 4],
                }),
            },
            VirtioDeviceState {
                id: "rng0".into(),
                mmio_base: 0xd000_3000,
                gsi: 7,
                transport: TransportState::default(),
                device: VirtioKindState::Rng,
            },
            VirtioDeviceState {
                id: "vsock0".into(),
                mmio_base: 0xd000_4000,
                gsi: 8,
                transport: TransportState {
                    device_type: 19,
                    device_features: 1 << 32,
                    acked_features: 1 << 32,
                    status: 0xf,
                    queues: vec![snap, snap, snap],
                    ..Default::default()
                },
                device: VirtioKindState::Vsock(VsockSnapshot {
                    guest_cid: 3,
                    uds_path: "/tmp/v.sock".into(),
                    next_local_port: (1 << 30) + 2,
                }),
            },
        ];
        let json = serde_json::to_string(&devices).expect("encode");
        assert!(json.contains(r#""kind":"block""#), "{json}");
        assert!(json.contains(r#""kind":"vsock","guest_cid":3"#), "{json}");
        let back: Vec<VirtioDeviceState> = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, devices);
        // An unknown device kind is refused by the decoder.
        let bad = json.replace(r#""kind":"rng""#, r#""kind":"gpu""#);
        assert!(serde_json::from_str::<Vec<VirtioDeviceState>>(&bad).is_err());
    }
}
