//! vCPUs: creation, per-vCPU CPU state ([`Vcpu`]), one step of `KVM_RUN`
//! serving port-I/O and MMIO exits through the buses, and the thread that
//! drives it with a small state machine ([`handle`]).

pub mod handle;
pub mod kick;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use kvm_bindings::{CpuId, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::arch::x86_64::cpuid::filter_cpuid;
use crate::arch::x86_64::regs::{boot_fpu, boot_msrs, boot_regs, boot_sregs, write_boot_tables, EntryPoint};
use crate::bus::Bus;
use crate::control::{ExitReason, VmControl};
use crate::memory::GuestMemoryMmap;
use crate::vm::Vm;

/// Errors creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A vCPU KVM ioctl failed.
    #[error("vCPU {0}: KVM {1} failed: {2}")]
    Ioctl(usize, &'static str, kvm_ioctls::Error),
    /// Boot tables could not be written.
    #[error("vCPU {0}: {1}")]
    Boot(usize, crate::arch::x86_64::regs::RegsError),
}

/// The buses a vCPU dispatches exits to.
#[derive(Clone)]
pub struct Buses {
    /// Port I/O.
    pub pio: Arc<Bus>,
    /// MMIO.
    pub mmio: Arc<Bus>,
}

/// Exits of one vCPU by kind (read by the metrics writer while it runs).
#[derive(Debug, Default)]
pub struct VcpuMetrics {
    /// Port-I/O reads.
    pub io_in: AtomicU64,
    /// Port-I/O writes.
    pub io_out: AtomicU64,
    /// MMIO reads.
    pub mmio_read: AtomicU64,
    /// MMIO writes.
    pub mmio_write: AtomicU64,
    /// Returns from `KVM_RUN` for a signal or kick (EINTR, KVM_EXIT_INTR).
    pub interrupted: AtomicU64,
    /// Exits that ended the vCPU (halt, shutdown, failure, system event).
    pub fatal: AtomicU64,
}

impl VcpuMetrics {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// `(name, value)` pairs, for metrics output.
    pub fn snapshot(&self) -> [(&'static str, u64); 6] {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("exit_io_in", g(&self.io_in)),
            ("exit_io_out", g(&self.io_out)),
            ("exit_mmio_read", g(&self.mmio_read)),
            ("exit_mmio_write", g(&self.mmio_write)),
            ("exit_interrupted", g(&self.interrupted)),
            ("exit_fatal", g(&self.fatal)),
        ]
    }
}

/// One virtual CPU, owned by its thread once running.
pub struct Vcpu {
    index: usize,
    fd: VcpuFd,
    buses: Buses,
    control: Arc<VmControl>,
    metrics: Arc<VcpuMetrics>,
}

/// What one `KVM_RUN` came back with.
#[derive(Debug)]
pub enum Step {
    /// An exit was served; run again.
    Continue,
    /// A signal or kick interrupted the run: look at the event channel.
    Interrupted,
    /// The vCPU cannot go on; the VM ends for this reason.
    Ended(ExitReason),
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

fn set_apic_delivery_mode(regs: &mut [std::os::raw::c_char], offset: usize, mode: u32) {
    let mut b = [0u8; 4];
    for (i, v) in b.iter_mut().enumerate() {
        *v = regs[offset + i] as u8;
    }
    let value = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
    for (i, v) in value.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *v as std::os::raw::c_char;
    }
}

impl Vcpu {
    /// Creates vCPU `index` of `count` with its filtered CPUID, MSRs and LAPIC LINT pins.
    pub fn new(
        vm: &Vm,
        index: usize,
        count: usize,
        supported_cpuid: &CpuId,
        buses: Buses,
        control: Arc<VmControl>,
    ) -> Result<Self, VcpuError> {
        let io = |what| move |e| VcpuError::Ioctl(index, what, e);
        let fd = vm.fd().create_vcpu(index as u64).map_err(io("CREATE_VCPU"))?;
        let mut cpuid = supported_cpuid.clone();
        filter_cpuid(&mut cpuid, index as u8, count as u8);
        fd.set_cpuid2(&cpuid).map_err(io("SET_CPUID2"))?;
        let msrs = boot_msrs();
        // KVM stops at the first MSR it refuses and returns how many it set.
        let set = fd.set_msrs(&msrs).map_err(io("SET_MSRS"))?;
        if let Some(refused) = msrs.as_slice().get(set) {
            tracing::debug!("vCPU {index}: KVM refused boot MSR {:#x} ({set} set)", refused.index);
        }
        let mut lapic = fd.get_lapic().map_err(io("GET_LAPIC"))?;
        set_apic_delivery_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
        set_apic_delivery_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
        fd.set_lapic(&lapic).map_err(io("SET_LAPIC"))?;
        Ok(Self {
            index,
            fd,
            buses,
            control,
            metrics: Arc::new(VcpuMetrics::default()),
        })
    }

    /// Puts the bootstrap processor at the kernel's entry point.
    pub fn configure_boot(&self, mem: &GuestMemoryMmap, entry: EntryPoint) -> Result<(), VcpuError> {
        let i = self.index;
        write_boot_tables(mem, entry).map_err(|e| VcpuError::Boot(i, e))?;
        let sregs = self.fd.get_sregs().map_err(|e| VcpuError::Ioctl(i, "GET_SREGS", e))?;
        self.fd
            .set_sregs(&boot_sregs(sregs, entry))
            .map_err(|e| VcpuError::Ioctl(i, "SET_SREGS", e))?;
        self.fd
            .set_regs(&boot_regs(entry))
            .map_err(|e| VcpuError::Ioctl(i, "SET_REGS", e))?;
        self.fd
            .set_fpu(&boot_fpu())
            .map_err(|e| VcpuError::Ioctl(i, "SET_FPU", e))?;
        Ok(())
    }

    /// Reads this vCPU's state for a snapshot. Runs `KVM_RUN` once with
    /// `immediate_exit` set first, so an I/O or MMIO exit served last is
    /// completed inside KVM (KVM's API: state is consistent only then);
    /// no guest instruction runs.
    pub fn save_state(&mut self) -> Result<crate::snapshot::VcpuState, crate::snapshot::SnapshotError> {
        self.fd.set_kvm_immediate_exit(1);
        let r = match self.fd.run() {
            Err(e) if e.errno() == libc::EINTR => Ok(()),
            Ok(VcpuExit::Intr) => Ok(()),
            other => Err(format!("{other:?}")),
        };
        self.fd.set_kvm_immediate_exit(0);
        if let Err(what) = r {
            return Err(crate::snapshot::SnapshotError::Kvm(format!(
                "vCPU {}: KVM_RUN with immediate_exit returned {what}",
                self.index
            )));
        }
        crate::snapshot::vcpu::save(&self.fd, self.index)
    }

    /// Writes a saved state into this (not yet started) vCPU.
    pub fn restore_state(&self, state: &crate::snapshot::VcpuState) -> Result<(), crate::snapshot::SnapshotError> {
        crate::snapshot::vcpu::restore(&self.fd, state)
    }

    /// The vCPU's TSC frequency in kHz, when KVM reports it.
    pub fn tsc_khz(&self) -> Option<u32> {
        self.fd.get_tsc_khz().ok().filter(|&k| k > 0)
    }

    fn rip(&self) -> u64 {
        self.fd.get_regs().map(|r| r.rip).unwrap_or(0)
    }

    /// This vCPU's index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// This vCPU's exit counters.
    pub fn metrics(&self) -> Arc<VcpuMetrics> {
        self.metrics.clone()
    }

    /// The VM control shared with devices.
    pub fn control(&self) -> &Arc<VmControl> {
        &self.control
    }

    /// The `kvm_run` page, for the kick handler.
    pub(crate) fn kvm_run_ptr(&mut self) -> *mut kvm_bindings::kvm_run {
        self.fd.get_kvm_run()
    }

    /// Clears `immediate_exit` after a kick was seen.
    pub(crate) fn clear_immediate_exit(&mut self) {
        self.fd.set_kvm_immediate_exit(0);
    }

    /// Runs the guest until one exit needs the caller: serves I/O exits on
    /// the buses, reports kicks, and turns fatal exits into an [`ExitReason`].
    pub fn step(&mut self) -> Step {
        let cpu = self.index;
        let m = &self.metrics;
        let ending = match self.fd.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                VcpuMetrics::bump(&m.io_out);
                self.buses.pio.write(u64::from(port), data);
                return Step::Continue;
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                VcpuMetrics::bump(&m.io_in);
                self.buses.pio.read(u64::from(port), data);
                return Step::Continue;
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                VcpuMetrics::bump(&m.mmio_write);
                self.buses.mmio.write(addr, data);
                return Step::Continue;
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                VcpuMetrics::bump(&m.mmio_read);
                self.buses.mmio.read(addr, data);
                return Step::Continue;
            }
            Ok(VcpuExit::Intr) => {
                VcpuMetrics::bump(&m.interrupted);
                return Step::Interrupted;
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                VcpuMetrics::bump(&m.interrupted);
                return Step::Interrupted;
            }
            Ok(VcpuExit::Hlt) => Ending::Halt,
            Ok(VcpuExit::Shutdown) => Ending::TripleFault,
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => Ending::Reason(ExitReason::PowerOff("KVM system event")),
                KVM_SYSTEM_EVENT_RESET => Ending::Reason(ExitReason::Reset("KVM system event")),
                other => Ending::Failure(format!("KVM system event {other}")),
            },
            Ok(VcpuExit::InternalError) => {
                Ending::Failure("KVM internal error (the instruction emulator could not run the guest's code)".into())
            }
            Ok(VcpuExit::FailEntry(reason, hw_cpu)) => {
                Ending::Failure(format!("KVM entry failed (reason {reason:#x}, host cpu {hw_cpu})"))
            }
            Ok(other) => Ending::Failure(format!("unhandled exit {other:?}")),
            Err(e) => Ending::Failure(format!("KVM_RUN failed: {e}")),
        };
        VcpuMetrics::bump(&m.fatal);
        let rip = self.rip();
        Step::Ended(match ending {
            Ending::Halt => ExitReason::Halted { cpu, rip },
            Ending::TripleFault => ExitReason::TripleFault { cpu, rip },
            Ending::Failure(what) => ExitReason::VcpuFailure { cpu, rip, what },
            Ending::Reason(r) => r,
        })
    }
}

enum Ending {
    Halt,
    TripleFault,
    Failure(String),
    Reason(ExitReason),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apic_delivery_mode_is_patched_in_place() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        regs[APIC_LVT0] = 0x10;
        regs[APIC_LVT0 + 2] = 0x01;
        set_apic_delivery_mode(&mut regs, APIC_LVT0, APIC_MODE_EXTINT);
        assert_eq!(regs[APIC_LVT0] as u8, 0x10);
        assert_eq!(regs[APIC_LVT0 + 1] as u8, 0x07);
        assert_eq!(regs[APIC_LVT0 + 2] as u8, 0x01);
    }
}
