//! Fuzz target body: kvmkit's state-file decoder (`snapshot::file::decode`)
//! on arbitrary bytes, and on a valid state file mutated by the input.
//!
//! Input: the first byte picks the mode. Even: the rest is a state file
//! as it is. Odd: a valid state file (1 or 2 vCPUs by bit 1; with bit 2, a
//! drive, a NIC, an rng and a vsock device with their virtio transport and
//! queue state)
//! is built, then the
//! rest is a sequence of 4-byte steps `[op, i0, i1, v]` that flip
//! (`op % 4 == 0`), overwrite (1), insert (2) or cut the file at (3) byte
//! `i` of the body; when `op & 0x80` the header's length and CRC are fixed
//! up afterwards, so the JSON parser and the consistency checks see the
//! mutated body instead of stopping at the CRC.
//!
//! Checks: decoding never panics; whatever decodes re-encodes to a file
//! that decodes again to the same encoding, and passes its own checks.

use kvmkit_vmm::snapshot::file::{crc32, decode, encode, HEADER_LEN};
use kvmkit_vmm::snapshot::virtio::{
    BlockSnapshot, NetSnapshot, QueueSnapshot, TransportState, VirtioDeviceState, VirtioKindState, VsockSnapshot,
};
use kvmkit_vmm::snapshot::{DevicesState, MemoryRegionState, SnapshotState, VcpuState, VmState};
use kvmkit_vmm::vmm_config::{
    BlockDeviceConfig, EntropyDeviceConfig, NetworkInterfaceConfig, VmResources, VsockDeviceConfig,
};

use crate::Input;

/// A small valid state: `cpus` vCPUs, 128 MiB in two regions.
pub fn sample_state(cpus: u8) -> SnapshotState {
    let mut resources = VmResources::default();
    resources.machine_config.vcpu_count = cpus;
    resources.machine_config.mem_size_mib = 128;
    let vcpus = (0..usize::from(cpus))
        .map(|index| VcpuState {
            index,
            cpuid: Vec::new(),
            msrs: Vec::new(),
            regs: Default::default(),
            sregs: Default::default(),
            xsave: Default::default(),
            xcrs: Default::default(),
            debug_regs: Default::default(),
            lapic: Default::default(),
            vcpu_events: Default::default(),
            mp_state: Default::default(),
            tsc_khz: Some(2_000_000),
        })
        .collect();
    let mut vm = VmState {
        irqchips: vec![Default::default(); 3],
        pit: Default::default(),
        clock: Default::default(),
    };
    for (i, c) in vm.irqchips.iter_mut().enumerate() {
        c.chip_id = i as u32;
    }
    SnapshotState {
        resources,
        memory: vec![
            MemoryRegionState {
                guest_addr: 0,
                size: 64 << 20,
                file_offset: 0,
            },
            MemoryRegionState {
                guest_addr: 1 << 30,
                size: 64 << 20,
                file_offset: 64 << 20,
            },
        ],
        vm,
        vcpus,
        devices: DevicesState::default(),
    }
}

/// A valid state with a drive, a NIC, an rng and a vsock device, each with a transport
/// (the drive's active, with one queue mid-ring).
pub fn sample_state_with_devices(cpus: u8) -> SnapshotState {
    let mut state = sample_state(cpus);
    let r = &mut state.resources;
    r.drives.push(BlockDeviceConfig {
        drive_id: "disk0".into(),
        path_on_host: "/nonexistent/disk0.img".into(),
        ..Default::default()
    });
    r.network_interfaces.push(NetworkInterfaceConfig {
        iface_id: "net0".into(),
        host_dev_name: "tap0".into(),
        ..Default::default()
    });
    r.entropy = Some(EntropyDeviceConfig::default());
    r.vsock = Some(VsockDeviceConfig {
        vsock_id: None,
        guest_cid: 3,
        uds_path: "/nonexistent/v.sock".into(),
    });
    let mac = r.network_interfaces[0].mac();
    let queue = QueueSnapshot {
        max_size: 256,
        next_avail: 40,
        next_used: 38,
        size: 128,
        ready: true,
        desc_table: 0x20_0000,
        avail_ring: 0x20_0800,
        used_ring: 0x20_1000,
        ..Default::default()
    };
    let transport = |device_type: u32, queues: usize| TransportState {
        device_type,
        device_features: 1 << 32,
        acked_features: 1 << 32,
        status: 0xf,
        queues: vec![queue; queues],
        ..Default::default()
    };
    state.devices.virtio = vec![
        VirtioDeviceState {
            id: "disk0".into(),
            mmio_base: 0xd000_1000,
            gsi: 5,
            transport: transport(2, 1),
            device: VirtioKindState::Block(BlockSnapshot {
                path: "/nonexistent/disk0.img".into(),
                read_only: false,
                direct: false,
                size: 64 << 20,
            }),
        },
        VirtioDeviceState {
            id: "rng0".into(),
            mmio_base: 0xd000_2000,
            gsi: 6,
            transport: transport(4, 1),
            device: VirtioKindState::Rng,
        },
        VirtioDeviceState {
            id: "net0".into(),
            mmio_base: 0xd000_3000,
            gsi: 7,
            transport: transport(1, 2),
            device: VirtioKindState::Net(NetSnapshot {
                host_dev_name: "tap0".into(),
                mac,
            }),
        },
        VirtioDeviceState {
            id: "vsock0".into(),
            mmio_base: 0xd000_4000,
            gsi: 8,
            transport: transport(19, 3),
            device: VirtioKindState::Vsock(VsockSnapshot {
                guest_cid: 3,
                uds_path: "/nonexistent/v.sock".into(),
                next_local_port: (1 << 30) + 5,
            }),
        },
    ];
    state
}

/// Rewrites the header's body length and CRC to match the body.
fn fix_header(file: &mut [u8]) {
    if file.len() < HEADER_LEN {
        return;
    }
    let body_len = (file.len() - HEADER_LEN) as u64;
    let crc = crc32(&file[HEADER_LEN..]);
    file[HEADER_LEN - 12..HEADER_LEN - 4].copy_from_slice(&body_len.to_le_bytes());
    file[HEADER_LEN - 4..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
}

/// What one input did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Outcome {
    /// The file decoded.
    pub decoded: bool,
}

/// Runs one input; panics only when the decoder or the checks are wrong.
pub fn run(data: &[u8]) -> Outcome {
    let mut input = Input::new(data);
    let mode = input.u8();
    let file = if mode & 1 == 0 {
        input.bytes(usize::MAX).to_vec()
    } else {
        let cpus = 1 + (mode >> 1) % 2;
        let sample = if mode & 4 != 0 {
            sample_state_with_devices(cpus)
        } else {
            sample_state(cpus)
        };
        let mut file = encode(&sample).expect("encode");
        let mut steps = 0;
        while !input.is_empty() && steps < 256 {
            steps += 1;
            let op = input.u8();
            let body = file.len().saturating_sub(HEADER_LEN).max(1);
            let at = HEADER_LEN + usize::from(input.u16()) % body;
            let v = input.u8();
            match op % 4 {
                0 if at < file.len() => file[at] ^= v,
                1 if at < file.len() => file[at] = v,
                2 => file.insert(at.min(file.len()), v),
                3 => file.truncate(at),
                _ => {}
            }
            if op & 0x80 != 0 {
                fix_header(&mut file);
            }
        }
        file
    };
    match decode(&file) {
        Ok(state) => {
            state.validate().expect("a decoded state passes its checks");
            let again = encode(&state).expect("re-encode");
            let back = decode(&again).expect("a re-encoded state decodes");
            assert_eq!(encode(&back).expect("encode"), again, "encoding is not stable");
            Outcome { decoded: true }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.is_empty() && !msg.contains('\n'), "one-line error: {msg:?}");
            Outcome { decoded: false }
        }
    }
}
