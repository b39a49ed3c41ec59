//! Snapshot and restore of a [`Machine`]: a paused VM written out as a
//! state file and a memory file, and a machine rebuilt from them.

use std::path::Path;
use std::time::Instant;

use super::{Machine, MachineError, MachineOptions, RestoreSource, VCPU_ANSWER_TIMEOUT};
use crate::bus::lock;
use crate::device_manager::{DeviceHandle, DeviceInfo, DeviceKind, Placement};
use crate::lifecycle::VmState;
use crate::snapshot::devices::{DevicesState, SerialSnapshot};
use crate::snapshot::memory::{map_memory_file, write_diff_memory_file, write_memory_file};
use crate::snapshot::params::{NetworkOverride, SnapshotType};
use crate::snapshot::virtio::{BlockSnapshot, NetSnapshot, VirtioDeviceState, VirtioKindState, VsockSnapshot};
use crate::snapshot::{dirty, file, vm, SnapshotError, SnapshotInfo, SnapshotState};
use crate::vcpu::handle::{VcpuEvent, VcpuHandleError, VcpuResponse};
use crate::virtio::block::Block;
use crate::virtio::net::Net;
use crate::virtio::vsock::Vsock;

/// Where a snapshot's files are and how to load its memory.
#[derive(Debug, Clone)]
pub struct RestorePaths<'a> {
    /// The state file.
    pub state: &'a Path,
    /// The memory file.
    pub memory: &'a Path,
    /// Read guest RAM eagerly into anonymous memory instead of mapping the
    /// file copy-on-write.
    pub copy_memory: bool,
    /// Taps to use instead of the saved ones (Firecracker's
    /// `network_overrides`, for clones).
    pub network_overrides: &'a [NetworkOverride],
    /// Track dirty pages in the restored VM (its `track_dirty_pages`; not
    /// taken from the snapshot, as in Firecracker).
    pub track_dirty_pages: bool,
}

/// The MMIO window and GSI of a virtio device.
fn window(info: &DeviceInfo) -> (u64, u32) {
    match info.placement {
        Placement::Mmio { base, gsi, .. } => (base, gsi.unwrap_or(0)),
        Placement::Pio { base, .. } => (base, 0),
    }
}

/// Whether kvmkit saves this kind of device: `Some(false)` for devices
/// without state or saved elsewhere, `Some(true)` for virtio devices it
/// saves, `None` for kinds it cannot snapshot yet.
fn snapshot_kind(kind: DeviceKind) -> Option<bool> {
    match kind {
        DeviceKind::Serial
        | DeviceKind::I8042
        | DeviceKind::DebugPort
        | DeviceKind::AcpiPm
        | DeviceKind::GuestPort
        | DeviceKind::NullMmio => Some(false),
        // vsock: its host connections are not saved (a snapshot closes them
        // and sends the driver a transport reset).
        DeviceKind::VirtioBlock | DeviceKind::VirtioNet | DeviceKind::VirtioRng | DeviceKind::VirtioVsock => Some(true),
        // Kinds added later are refused until they are saved.
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// Renames the saved taps as `overrides` say (every iface id must exist).
fn apply_network_overrides(state: &mut SnapshotState, overrides: &[NetworkOverride]) -> Result<(), SnapshotError> {
    for o in overrides {
        crate::net::tap::check_ifname(&o.host_dev_name)
            .map_err(|e| SnapshotError::Invalid(format!("network_overrides: {e}")))?;
        let Some(nic) = state
            .resources
            .network_interfaces
            .iter_mut()
            .find(|n| n.iface_id == o.iface_id)
        else {
            return Err(SnapshotError::Invalid(format!(
                "network_overrides: the snapshot has no network interface '{}'",
                o.iface_id
            )));
        };
        nic.host_dev_name = o.host_dev_name.clone();
        for d in &mut state.devices.virtio {
            if let (true, VirtioKindState::Net(n)) = (d.id == o.iface_id, &mut d.device) {
                n.host_dev_name = o.host_dev_name.clone();
            }
        }
    }
    Ok(())
}

/// Checks that the disks and taps a snapshot names are there, before
/// anything is built (opening a tap would create a missing one).
fn check_backends(state: &SnapshotState) -> Result<(), SnapshotError> {
    for d in &state.resources.drives {
        match std::fs::metadata(&d.path_on_host) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SnapshotError::Io(format!(
                    "disk image {} of drive '{}' (named by the snapshot) does not exist",
                    d.path_on_host, d.drive_id
                )))
            }
            Err(e) => {
                return Err(SnapshotError::Io(format!(
                    "disk image {} of drive '{}' (named by the snapshot): {e}",
                    d.path_on_host, d.drive_id
                )))
            }
        }
    }
    for n in &state.resources.network_interfaces {
        let name = std::ffi::CString::new(n.host_dev_name.as_str())
            .map_err(|_| SnapshotError::Invalid(format!("tap name {:?}", n.host_dev_name)))?;
        // SAFETY: `name` is a valid NUL-terminated string.
        if unsafe { libc::if_nametoindex(name.as_ptr()) } == 0 {
            return Err(SnapshotError::Io(format!(
                "tap {} of network interface '{}' (named by the snapshot) does not exist; create it, or give \
                 network_overrides to use another tap",
                n.host_dev_name, n.iface_id
            )));
        }
    }
    Ok(())
}

impl Machine {
    /// Writes the paused VM to `state_path` (vCPUs, VM, devices, resources)
    /// and `mem_path` (guest RAM: all of it, or with [`SnapshotType::Diff`]
    /// only the pages dirtied since the last snapshot). Refused unless the
    /// VM is Paused, for a Diff unless the VM tracks dirty pages, and for
    /// VMs with devices kvmkit cannot save yet. Each file is written under a
    /// temporary name and renamed, so a failed snapshot leaves no file
    /// that looks complete; dirty pages are marked clean only once both
    /// files are written.
    pub fn snapshot(
        &mut self,
        kind: SnapshotType,
        state_path: &Path,
        mem_path: &Path,
    ) -> Result<SnapshotInfo, MachineError> {
        if self.state != VmState::Paused {
            return Err(MachineError::Config(format!(
                "a snapshot needs a Paused VM (this one is {}); pause it first",
                self.state
            )));
        }
        let tracking = self.resources.machine_config.track_dirty_pages;
        if kind == SnapshotType::Diff && !tracking {
            return Err(MachineError::Config(
                "a Diff snapshot needs dirty-page tracking: set track_dirty_pages in machine-config before the VM \
                 starts (or in the snapshot load request), or take a Full snapshot"
                    .into(),
            ));
        }
        // Refuse device kinds kvmkit cannot save before touching anything.
        for info in self.devices.devices() {
            if snapshot_kind(info.kind).is_none() {
                return Err(SnapshotError::Unsupported(format!(
                    "device '{}' ({:?}) cannot be snapshotted yet",
                    info.id, info.kind
                ))
                .into());
            }
        }
        let t0 = Instant::now();
        // Before the vCPUs' state is read, so the event's interrupt is in it.
        self.reset_vsock();
        let mut vcpus = Vec::with_capacity(self.vcpus.len());
        for h in &self.vcpus {
            h.send(VcpuEvent::SaveState)?;
            match h.response(VcpuEvent::SaveState, VCPU_ANSWER_TIMEOUT)? {
                VcpuResponse::State(saved) => {
                    let state = std::sync::Arc::try_unwrap(saved.0)
                        .map_err(|_| MachineError::Host(format!("vCPU {}: state still shared", h.index())))?
                        .map_err(SnapshotError::Kvm)?;
                    vcpus.push(state);
                }
                VcpuResponse::NotAllowed(why) => return Err(VcpuHandleError::Refused(h.index(), why).into()),
                other => {
                    return Err(MachineError::Host(format!(
                        "vCPU {} answered {other:?} to SaveState",
                        h.index()
                    )))
                }
            }
        }
        let vm_state = vm::save(self._vm.fd())?;
        let devices = DevicesState {
            serial: SerialSnapshot::from(&lock(&self.serial).state()),
            i8042: Some(lock(&self.i8042).state()),
            virtio: self.save_virtio()?,
        };
        let save_state_us = t0.elapsed().as_micros() as u64;
        let t1 = Instant::now();
        let (memory, diff_pages) = match kind {
            SnapshotType::Full => (write_memory_file(&self._memory, mem_path)?, None),
            SnapshotType::Diff => {
                dirty::collect_kvm_log(self._vm.fd(), &self._memory)?;
                let bitmaps = dirty::dirty_bitmaps(&self._memory);
                let (regions, pages) = write_diff_memory_file(&self._memory, &bitmaps, mem_path)?;
                (regions, Some(pages as u64))
            }
        };
        let write_memory_us = t1.elapsed().as_micros() as u64;
        let state = SnapshotState {
            resources: self.resources.clone(),
            memory,
            vm: vm_state,
            vcpus,
            devices,
        };
        let bytes = file::encode(&state)?;
        file::write_atomic(state_path, |f| std::io::Write::write_all(f, &bytes))?;
        // Both files are there: the next Diff starts from this snapshot.
        if tracking {
            dirty::clear(self._vm.fd(), &self._memory)?;
        }
        let info = SnapshotInfo {
            state_bytes: bytes.len() as u64,
            memory_bytes: state.memory_bytes(),
            save_state_us,
            write_memory_us,
            diff_pages,
        };
        tracing::info!(
            "snapshot ({kind:?}): {} ({} bytes), {} ({} bytes{}); state read in {} us, memory written in {} us",
            state_path.display(),
            info.state_bytes,
            mem_path.display(),
            info.memory_bytes,
            match diff_pages {
                Some(n) => format!(", {n} dirty pages written"),
                None => String::new(),
            },
            info.save_state_us,
            info.write_memory_us
        );
        Ok(info)
    }

    /// Rebuilds a snapshotted VM: reads and checks the state file, maps the
    /// memory file, builds the machine from the saved resources with that
    /// memory, and writes the VM's and every vCPU's state back. The machine
    /// is NotStarted; [`Machine::start`] runs it (paused or not). Nothing is
    /// left behind on error.
    pub fn restore(paths: &RestorePaths<'_>, opts: &mut MachineOptions) -> Result<Self, MachineError> {
        let mut state = file::read_state(paths.state)?;
        apply_network_overrides(&mut state, paths.network_overrides)?;
        state.resources.machine_config.track_dirty_pages = paths.track_dirty_pages;
        check_backends(&state)?;
        let memory = map_memory_file(paths.memory, &state.memory, paths.copy_memory)?;
        opts.restore = Some(RestoreSource {
            memory,
            serial: (&state.devices.serial).into(),
        });
        let mut machine = Self::build(&state.resources, opts)?;
        if let Some(s) = &state.devices.i8042 {
            lock(&machine.i8042).restore_state(s).map_err(SnapshotError::Invalid)?;
        }
        vm::restore(machine._vm.fd(), &state.vm)?;
        for (vcpu, saved) in machine.unstarted.iter().zip(&state.vcpus) {
            vcpu.restore_state(saved)?;
        }
        machine.restore_virtio(&state.devices.virtio)?;
        // A new VM generation: a new ID, and the guest told (the interrupt
        // is delivered once the vCPUs run).
        machine
            .vmgenid
            .regenerate(&machine._memory)
            .map_err(MachineError::Host)?;
        machine.vmgenid.notify();
        tracing::debug!(
            "restored {} vCPUs, {} us after start",
            state.vcpus.len(),
            opts.start.elapsed().as_micros()
        );
        Ok(machine)
    }
}

impl Machine {
    /// Sends every started vsock device's driver a transport reset and
    /// closes its host connections (Firecracker's `prepare_save`): the event
    /// and its interrupt are in the snapshot, so a restored guest drops the
    /// connections the new process does not have. A driver that left no
    /// event buffer is logged; the snapshot goes on, as in Firecracker.
    fn reset_vsock(&self) {
        for info in self.devices.devices().filter(|i| i.kind == DeviceKind::VirtioVsock) {
            let Some((_, DeviceHandle::Virtio(t))) = self.devices.handle(&info.id) else {
                continue;
            };
            let mut t = lock(t);
            if let Some(v) = t.device_mut().as_any_mut().downcast_mut::<Vsock>() {
                if let Err(e) = v.reset_transport() {
                    tracing::warn!("vsock '{}': no transport reset sent to the guest: {e}", info.id);
                }
            }
        }
    }

    /// Saves every virtio device (the VM and the device workers paused):
    /// block devices are flushed first, then each transport and its queues
    /// are read (from the worker, between rounds: no request is half-done).
    fn save_virtio(&self) -> Result<Vec<VirtioDeviceState>, MachineError> {
        let infos: Vec<DeviceInfo> = self
            .devices
            .devices()
            .filter(|i| snapshot_kind(i.kind) == Some(true))
            .cloned()
            .collect();
        let mut out = Vec::with_capacity(infos.len());
        for info in infos {
            let fail = |why: String| MachineError::Snapshot(SnapshotError::Io(format!("device '{}': {why}", info.id)));
            let Some((_, DeviceHandle::Virtio(t))) = self.devices.handle(&info.id) else {
                return Err(fail("no virtio transport".into()));
            };
            let mut t = lock(t);
            t.device()
                .flush()
                .map_err(|e| fail(format!("flushing before the snapshot: {e}")))?;
            let transport = t.save_state().map_err(fail)?;
            let any = t.device_mut().as_any_mut();
            let device = match info.kind {
                DeviceKind::VirtioBlock => {
                    let b = any
                        .downcast_mut::<Block>()
                        .ok_or_else(|| fail("not a block device".into()))?;
                    VirtioKindState::Block(BlockSnapshot {
                        path: b.path().display().to_string(),
                        read_only: b.read_only(),
                        direct: b.direct(),
                        size: b.size(),
                    })
                }
                DeviceKind::VirtioNet => {
                    let n = any.downcast_mut::<Net>().ok_or_else(|| fail("not a NIC".into()))?;
                    let tap = self
                        .resources
                        .network_interfaces
                        .iter()
                        .find(|c| c.iface_id == info.id)
                        .map(|c| c.host_dev_name.clone())
                        .ok_or_else(|| fail("no network interface config".into()))?;
                    VirtioKindState::Net(NetSnapshot {
                        host_dev_name: tap,
                        mac: n.mac(),
                    })
                }
                DeviceKind::VirtioVsock => {
                    let v = any
                        .downcast_mut::<Vsock>()
                        .ok_or_else(|| fail("not a vsock device".into()))?;
                    VirtioKindState::Vsock(VsockSnapshot {
                        guest_cid: v.cid(),
                        uds_path: v.uds_path().display().to_string(),
                        next_local_port: v.next_local_port().map_err(fail)?,
                    })
                }
                _ => VirtioKindState::Rng,
            };
            let (mmio_base, gsi) = window(&info);
            out.push(VirtioDeviceState {
                id: info.id.clone(),
                mmio_base,
                gsi,
                transport,
                device,
            });
        }
        Ok(out)
    }

    /// Puts the saved virtio state back on the rebuilt devices: each must
    /// sit at its saved MMIO window and GSI, with the same disk size and
    /// read-only setting, or the same MAC; devices the driver had set
    /// DRIVER_OK are re-activated (their workers start), then parked until
    /// the VM runs.
    fn restore_virtio(&mut self, saved: &[VirtioDeviceState]) -> Result<(), MachineError> {
        let bad = |m: String| MachineError::Snapshot(SnapshotError::Invalid(m));
        let infos: Vec<DeviceInfo> = self.devices.devices().cloned().collect();
        for info in &infos {
            match snapshot_kind(info.kind) {
                Some(false) => continue,
                None => {
                    return Err(bad(format!(
                        "device '{}' ({:?}) cannot be snapshotted yet",
                        info.id, info.kind
                    )))
                }
                Some(true) => {}
            }
            if !saved.iter().any(|s| s.id == info.id) {
                return Err(bad(format!("device '{}' has no saved state", info.id)));
            }
        }
        // Workers are spawned by the worker spawner (under its seccomp list).
        crate::seccomp::start_worker_spawner().map_err(MachineError::Host)?;
        crate::seccomp::launch_worker_spawner().map_err(MachineError::Host)?;
        for s in saved {
            let Some(info) = infos.iter().find(|i| i.id == s.id) else {
                return Err(bad(format!("the snapshot's device '{}' was not rebuilt", s.id)));
            };
            if window(info) != (s.mmio_base, s.gsi) {
                return Err(bad(format!(
                    "device '{}' was rebuilt at {:#x} GSI {}, the snapshot has it at {:#x} GSI {}",
                    s.id,
                    window(info).0,
                    window(info).1,
                    s.mmio_base,
                    s.gsi
                )));
            }
            let Some((_, DeviceHandle::Virtio(t))) = self.devices.handle(&s.id) else {
                return Err(bad(format!("device '{}' is not a virtio device", s.id)));
            };
            let mut t = lock(t);
            let any = t.device_mut().as_any_mut();
            match (&s.device, info.kind) {
                (VirtioKindState::Block(b), DeviceKind::VirtioBlock) => {
                    let dev = any
                        .downcast_mut::<Block>()
                        .ok_or_else(|| bad(format!("'{}' is not a drive", s.id)))?;
                    if dev.size() != b.size || dev.read_only() != b.read_only {
                        return Err(bad(format!(
                            "disk image {} of drive '{}' is {} bytes{}, the snapshot's was {} bytes{}; the guest \
                             would see another disk",
                            b.path,
                            s.id,
                            dev.size(),
                            if dev.read_only() { " read-only" } else { "" },
                            b.size,
                            if b.read_only { " read-only" } else { "" }
                        )));
                    }
                }
                (VirtioKindState::Net(n), DeviceKind::VirtioNet) => {
                    let dev = any
                        .downcast_mut::<Net>()
                        .ok_or_else(|| bad(format!("'{}' is not a NIC", s.id)))?;
                    if dev.mac() != n.mac {
                        return Err(bad(format!("NIC '{}' was rebuilt with another MAC", s.id)));
                    }
                }
                (VirtioKindState::Rng, DeviceKind::VirtioRng) => {}
                (VirtioKindState::Vsock(v), DeviceKind::VirtioVsock) => {
                    let dev = any
                        .downcast_mut::<Vsock>()
                        .ok_or_else(|| bad(format!("'{}' is not a vsock device", s.id)))?;
                    if dev.cid() != v.guest_cid || dev.uds_path().as_os_str() != v.uds_path.as_str() {
                        return Err(bad(format!(
                            "vsock device '{}' was rebuilt with another CID or path",
                            s.id
                        )));
                    }
                    dev.set_next_local_port(v.next_local_port);
                }
                _ => return Err(bad(format!("device '{}' is saved as another kind", s.id))),
            }
            t.restore_state(&s.transport)
                .map_err(|e| bad(format!("device '{}': {e}", s.id)))?;
            if s.transport.interrupt_status != 0 {
                if let Some(v) = t.device_mut().as_any_mut().downcast_mut::<Vsock>() {
                    v.signal_used().map_err(|e| bad(format!("device '{}': {e}", s.id)))?;
                }
            }
        }
        // Parked until the VM runs (Machine::start or resume lets them go):
        // a restored Paused VM touches no guest memory.
        self.devices.pause()?;
        Ok(())
    }
}
