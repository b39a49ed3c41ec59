//! The VM object: built from [`VmResources`] (`builder.rs`), then driven
//! through its lifecycle (start, pause, resume, stop) by the VMM thread.
//! Every transition is checked against [`VmState::valid_transition`];
//! vCPUs are driven through their [`VcpuHandle`]s.

mod builder;
mod snapshot;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvmkit_guest_abi::Report;
use vmm_sys_util::eventfd::EventFd;

pub use builder::{validate_cpus, KernelSource, MachineOptions, RestoreSource};
pub use snapshot::RestorePaths;

use crate::bus::{lock, UnclaimedSummary};
use crate::control::{ExitReason, VmControl};
use crate::device_manager::{DeviceHandle, DeviceInfo, DeviceKind, DeviceManager};
use crate::devices::i8042::I8042;
use crate::devices::serial::SerialDevice;
use crate::host::kvm::KvmOpenError;
use crate::lifecycle::{InvalidTransition, VmState};
use crate::memory::GuestMemoryMmap;
use crate::memory::MemoryError;
use crate::vcpu::handle::{VcpuEvent, VcpuHandle, VcpuHandleError};
use crate::vcpu::{Buses, Vcpu, VcpuError, VcpuMetrics};
use crate::virtio::block::disk::{DiskError, DiskImage};
use crate::virtio::block::Block;
use crate::vm::{Vm, VmError};
use crate::vmm_config::VmResources;
use crate::{boot, device_manager};

/// How long a vCPU may take to answer Pause or Resume.
const VCPU_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a vCPU thread may take to end.
const VCPU_FINISH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a start waits for each vCPU thread to be ready to run.
const VCPU_READY_WAIT: Duration = Duration::from_millis(50);

/// Errors building or driving a VM.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// /dev/kvm unusable.
    #[error(transparent)]
    Kvm(#[from] KvmOpenError),
    /// The resources are not bootable.
    #[error("{0}")]
    Config(String),
    /// Bad vCPU count.
    #[error("--cpus {requested}: {why}")]
    Cpus {
        /// What was asked for.
        requested: usize,
        /// Why it is refused.
        why: String,
    },
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The kernel file.
    #[error("cannot open kernel {0}: {1}")]
    KernelFile(String, std::io::Error),
    /// Loading the kernel.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// VM creation.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// vCPU creation.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Driving a vCPU thread.
    #[error(transparent)]
    VcpuThread(#[from] VcpuHandleError),
    /// A disk image could not be used.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// A tap could not be used.
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    /// A device could not be placed.
    #[error(transparent)]
    Device(#[from] device_manager::DeviceError),
    /// The lifecycle forbids the operation.
    #[error(transparent)]
    Transition(#[from] InvalidTransition),
    /// No such device, or not of the right kind.
    #[error("{0}")]
    NoDevice(String),
    /// Anything else on the host side.
    #[error("{0}")]
    Host(String),
    /// Saving or restoring a snapshot.
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
}

/// How a VM run went.
#[derive(Debug)]
pub struct RunOutcome {
    /// Why it ended.
    pub reason: ExitReason,
    /// Reports the guest sent over the kvmkit port protocol (at most
    /// [`crate::control::MAX_REPORTS`]).
    pub reports: Vec<Report>,
    /// Reports dropped past that cap.
    pub reports_dropped: u64,
    /// Microseconds from start to the guest's first instruction.
    pub entry_us: Option<u64>,
    /// Microseconds from start to the guest's ready milestone.
    pub ready_us: Option<u64>,
    /// Microseconds from start to the first console byte.
    pub first_output_us: Option<u64>,
    /// Microseconds from start to the VM's end.
    pub end_us: Option<u64>,
    /// Port-I/O addresses no device claimed, with access counts (bounded).
    pub unclaimed_pio: UnclaimedSummary,
    /// MMIO addresses no device claimed, with access counts (bounded).
    pub unclaimed_mmio: UnclaimedSummary,
    /// Every device's counters at the end: `(device id, counter, value)`.
    pub device_counters: Vec<(String, &'static str, u64)>,
    /// Exits to user space by kind, summed over the vCPUs.
    pub exits: Vec<(&'static str, u64)>,
}

impl RunOutcome {
    /// The outcome of a VMM that ended before any VM was built.
    pub fn without_vm(reason: ExitReason) -> Self {
        Self {
            reason,
            reports: Vec::new(),
            reports_dropped: 0,
            entry_us: None,
            ready_us: None,
            first_output_us: None,
            end_us: None,
            unclaimed_pio: UnclaimedSummary::default(),
            unclaimed_mmio: UnclaimedSummary::default(),
            device_counters: Vec::new(),
            exits: Vec::new(),
        }
    }
}

/// One VM: its KVM objects, devices and vCPUs, and where it is in its life.
pub struct Machine {
    state: VmState,
    resources: VmResources,
    control: Arc<VmControl>,
    _vm: Vm,
    _memory: GuestMemoryMmap,
    devices: DeviceManager,
    buses: Buses,
    serial: Arc<Mutex<SerialDevice>>,
    i8042: Arc<Mutex<I8042>>,
    vmgenid: crate::devices::vmgenid::VmGenId,
    vcpu_metrics: Vec<Arc<VcpuMetrics>>,
    unstarted: Vec<Vcpu>,
    vcpus: Vec<VcpuHandle>,
    /// The legacy devices' interrupt eventfds and GSIs, registered with KVM
    /// by [`Machine::start`]: an interrupt raised before (a restored UART's)
    /// is injected at registration, as KVM does for a signalled eventfd.
    legacy_irqfds: Vec<(EventFd, u32)>,
}

impl Machine {
    /// Where the VM is in its life.
    pub fn state(&self) -> VmState {
        self.state
    }

    /// The resources the VM was built from (updated by drive swaps).
    pub fn resources(&self) -> &VmResources {
        &self.resources
    }

    /// The control state shared with vCPUs and devices: exit requests,
    /// the boot timeline, guest reports.
    pub fn control(&self) -> &Arc<VmControl> {
        &self.control
    }

    /// The serial port, for console input.
    pub fn serial(&self) -> &Arc<Mutex<SerialDevice>> {
        &self.serial
    }

    /// Every device.
    pub fn devices(&self) -> impl Iterator<Item = &DeviceInfo> {
        self.devices.devices()
    }

    /// Device counters: `(device id, counter, value)`.
    pub fn device_counters(&self) -> Vec<(String, &'static str, u64)> {
        self.devices.counters()
    }

    /// Exit counters, one entry per vCPU.
    pub fn vcpu_metrics(&self) -> &[Arc<VcpuMetrics>] {
        &self.vcpu_metrics
    }

    /// Pause and resume act on a booted VM only (NotStarted -> Paused is
    /// a start, not a pause).
    fn require(&self, from: VmState, to: VmState) -> Result<(), InvalidTransition> {
        if self.state == from {
            Ok(())
        } else {
            Err(InvalidTransition { from: self.state, to })
        }
    }

    fn transition(&mut self, to: VmState) -> Result<(), MachineError> {
        self.state.valid_transition(to)?;
        tracing::debug!("VM {} -> {}", self.state, to);
        self.state = to;
        Ok(())
    }

    /// Starts the vCPU threads, running or (with `paused`) parked until
    /// [`Self::resume`].
    pub fn start(&mut self, paused: bool) -> Result<(), MachineError> {
        let to = if paused { VmState::Paused } else { VmState::Running };
        self.state.valid_transition(to)?;
        // Device workers start from DRIVER_OK writes on vCPU threads; the
        // channel to the thread that spawns them must exist before any vCPU
        // does (the thread itself starts after them). Only virtio devices
        // have workers: a machine without them needs no spawner.
        let workers = self.devices.has_virtio();
        if workers {
            crate::seccomp::start_worker_spawner().map_err(MachineError::Host)?;
        }
        // Device workers of a restored VM wait parked until it runs.
        if !paused {
            self.devices.resume()?;
        }
        for vcpu in std::mem::take(&mut self.unstarted) {
            match VcpuHandle::spawn(vcpu, paused) {
                Ok(h) => self.vcpus.push(h),
                Err(e) => {
                    let _ = self.stop(ExitReason::VmmError(e.to_string()));
                    return Err(e.into());
                }
            }
        }
        // The legacy interrupt lines, while the vCPU threads start.
        for (e, gsi) in std::mem::take(&mut self.legacy_irqfds) {
            if let Err(err) = self._vm.fd().register_irqfd(&e, gsi) {
                let why = format!("KVM_IRQFD for GSI {gsi}: {err}");
                let _ = self.stop(ExitReason::VmmError(why.clone()));
                return Err(MachineError::Host(why));
            }
        }
        // The vCPUs go first: on a busy host a new thread waits for a core,
        // and the spawner's start and the VMM thread's own filter (after
        // this returns) would take it. Bounded: a slow thread is not waited for.
        for h in &self.vcpus {
            h.wait_ready(VCPU_READY_WAIT);
        }
        if workers {
            crate::seccomp::launch_worker_spawner().map_err(MachineError::Host)?;
        }
        self.transition(to)?;
        tracing::debug!(
            "vCPU threads started, {} us after start",
            self.control.timeline.start.elapsed().as_micros()
        );
        Ok(())
    }

    fn broadcast(&self, event: VcpuEvent) -> Result<(), MachineError> {
        for v in &self.vcpus {
            v.send(event)?;
        }
        for v in &self.vcpus {
            match v.response(event, VCPU_ANSWER_TIMEOUT)? {
                crate::vcpu::handle::VcpuResponse::NotAllowed(why) => {
                    return Err(VcpuHandleError::Refused(v.index(), why).into())
                }
                _ => continue,
            }
        }
        Ok(())
    }

    /// Parks every vCPU, then every device worker: no guest instruction
    /// runs and no device touches guest memory until [`Self::resume`].
    /// Returns once all have answered.
    pub fn pause(&mut self) -> Result<(), MachineError> {
        self.require(VmState::Running, VmState::Paused)?;
        self.broadcast(VcpuEvent::Pause)?;
        if let Err(e) = self.devices.pause() {
            // Back to a consistent running VM before reporting.
            let _ = self.devices.resume();
            let _ = self.broadcast(VcpuEvent::Resume);
            return Err(e.into());
        }
        self.transition(VmState::Paused)
    }

    /// Lets every vCPU run again.
    pub fn resume(&mut self) -> Result<(), MachineError> {
        self.require(VmState::Paused, VmState::Running)?;
        self.devices.resume()?;
        self.broadcast(VcpuEvent::Resume)?;
        self.transition(VmState::Running)
    }

    /// Presses Ctrl-Alt-Del on the i8042 (a Linux guest reboots; with
    /// `reboot=k` the VM then ends).
    pub fn send_ctrl_alt_del(&mut self) -> Result<(), MachineError> {
        if self.state == VmState::NotStarted || self.state == VmState::Stopped {
            return Err(MachineError::Config(format!("the VM is {}", self.state)));
        }
        if !lock(&self.i8042).trigger_ctrl_alt_del() {
            return Err(MachineError::Host(
                "the guest has not read the previous key presses yet; try again later".into(),
            ));
        }
        Ok(())
    }

    /// Swaps drive `id`'s backing file (`PATCH /drives/{id}`): the device
    /// keeps its read-only and cache settings, reports the new capacity
    /// and raises a configuration-change interrupt.
    pub fn update_drive(&mut self, id: &str, path: &str) -> Result<u64, MachineError> {
        let Some(cfg) = self.resources.drives.iter_mut().find(|d| d.drive_id == id) else {
            return Err(MachineError::NoDevice(format!("no drive with id '{id}'")));
        };
        let image = DiskImage::open_with(std::path::Path::new(path), cfg.is_read_only, cfg.direct)?;
        let Some((info, DeviceHandle::Virtio(transport))) = self.devices.handle(id) else {
            return Err(MachineError::NoDevice(format!("drive '{id}' has no device")));
        };
        if info.kind != DeviceKind::VirtioBlock {
            return Err(MachineError::NoDevice(format!("device '{id}' is not a drive")));
        }
        let mut t = lock(transport);
        let Some(block) = t.device_mut().as_any_mut().downcast_mut::<Block>() else {
            return Err(MachineError::NoDevice(format!("device '{id}' is not a drive")));
        };
        let size = block.swap_disk(image);
        t.config_changed();
        cfg.path_on_host = path.to_owned();
        tracing::info!("drive {id} now backed by {path} ({size} bytes)");
        Ok(size)
    }

    /// Ends the VM: records `reason` (unless one was recorded first), ends
    /// and joins every vCPU thread, stops the device workers. Idempotent.
    /// Returns false if a vCPU thread did not end in time (it is logged).
    pub fn stop(&mut self, reason: ExitReason) -> bool {
        self.control.request_exit(reason);
        let mut all_joined = true;
        for h in self.vcpus.drain(..) {
            all_joined &= h.finish(VCPU_FINISH_TIMEOUT);
        }
        self.unstarted.clear();
        self.devices.shutdown();
        self.state = VmState::Stopped;
        all_joined
    }

    /// How the run went (call after [`Self::stop`]).
    pub fn outcome(&self) -> RunOutcome {
        let reason = self
            .control
            .reason()
            .unwrap_or(ExitReason::VmmError("VM ended without a reason".into()));
        let t = &self.control.timeline;
        RunOutcome {
            reason,
            reports: self.control.reports(),
            reports_dropped: self.control.reports_dropped(),
            entry_us: t.micros(&t.entry),
            ready_us: t.micros(&t.ready),
            first_output_us: t.micros(&t.first_output),
            end_us: t.micros(&t.end),
            unclaimed_pio: self.buses.pio.unclaimed_summary(),
            unclaimed_mmio: self.buses.mmio.unclaimed_summary(),
            device_counters: self.devices.counters(),
            exits: self.exit_totals(),
        }
    }

    /// Exits by kind, summed over the vCPUs.
    fn exit_totals(&self) -> Vec<(&'static str, u64)> {
        let mut totals: Vec<(&'static str, u64)> = Vec::new();
        for m in &self.vcpu_metrics {
            for (name, v) in m.snapshot() {
                match totals.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, t)) => *t += v,
                    None => totals.push((name, v)),
                }
            }
        }
        totals
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if !self.vcpus.is_empty() {
            let _ = self.stop(ExitReason::VmmError("the VM was dropped while running".into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_counts_are_validated() {
        use crate::arch::x86_64::mptable;
        assert!(validate_cpus(0, 288).is_err());
        assert!(validate_cpus(1, 288).is_ok());
        assert!(validate_cpus(usize::from(mptable::MAX_CPUS), 288).is_ok());
        assert!(validate_cpus(usize::from(mptable::MAX_CPUS) + 1, 288).is_err());
        assert!(validate_cpus(5, 4).is_err());
    }
}
