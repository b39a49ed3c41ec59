//! vCPUs: creation, per-vCPU CPU state, and the thread that runs `KVM_RUN`
//! and serves port-I/O and MMIO exits through the buses.

use std::sync::Arc;

use kvm_bindings::{CpuId, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::GuestMemoryMmap;

use crate::arch::x86_64::cpuid::filter_cpuid;
use crate::arch::x86_64::regs::{boot_fpu, boot_msrs, boot_regs, boot_sregs, write_boot_tables, EntryPoint};
use crate::bus::Bus;
use crate::control::{ExitReason, VmControl};
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

/// One virtual CPU, owned by its thread once running.
pub struct Vcpu {
    index: usize,
    fd: VcpuFd,
    buses: Buses,
    control: Arc<VmControl>,
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
        fd.set_msrs(&boot_msrs()).map_err(io("SET_MSRS"))?;
        let mut lapic = fd.get_lapic().map_err(io("GET_LAPIC"))?;
        set_apic_delivery_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
        set_apic_delivery_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
        fd.set_lapic(&lapic).map_err(io("SET_LAPIC"))?;
        Ok(Self {
            index,
            fd,
            buses,
            control,
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

    /// The vCPU's TSC frequency in kHz, when KVM reports it.
    pub fn tsc_khz(&self) -> Option<u32> {
        self.fd.get_tsc_khz().ok().filter(|&k| k > 0)
    }

    fn rip(&self) -> u64 {
        self.fd.get_regs().map(|r| r.rip).unwrap_or(0)
    }

    /// Runs the guest until the VM is asked to stop. Every way out of the
    /// loop records an [`ExitReason`] in the VM control.
    pub fn run(mut self) {
        let cpu = self.index;
        while !self.control.stopping() {
            let ending = match self.fd.run() {
                Ok(VcpuExit::IoOut(port, data)) => {
                    self.buses.pio.write(u64::from(port), data);
                    None
                }
                Ok(VcpuExit::IoIn(port, data)) => {
                    self.buses.pio.read(u64::from(port), data);
                    None
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    self.buses.mmio.write(addr, data);
                    None
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    self.buses.mmio.read(addr, data);
                    None
                }
                Ok(VcpuExit::Intr) => None,
                Ok(VcpuExit::Hlt) => Some(Ending::Halt),
                Ok(VcpuExit::Shutdown) => Some(Ending::TripleFault),
                Ok(VcpuExit::SystemEvent(kind, _)) => Some(match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => Ending::Reason(ExitReason::PowerOff("KVM system event")),
                    KVM_SYSTEM_EVENT_RESET => Ending::Reason(ExitReason::Reset("KVM system event")),
                    other => Ending::Failure(format!("KVM system event {other}")),
                }),
                Ok(VcpuExit::InternalError) => Some(Ending::Failure(
                    "KVM internal error (the instruction emulator could not run the guest's code)".into(),
                )),
                Ok(VcpuExit::FailEntry(reason, hw_cpu)) => Some(Ending::Failure(format!(
                    "KVM entry failed (reason {reason:#x}, host cpu {hw_cpu})"
                ))),
                Ok(other) => Some(Ending::Failure(format!("unhandled exit {other:?}"))),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
                Err(e) => Some(Ending::Failure(format!("KVM_RUN failed: {e}"))),
            };
            if let Some(ending) = ending {
                let rip = self.rip();
                let reason = match ending {
                    Ending::Halt => ExitReason::Halted { cpu, rip },
                    Ending::TripleFault => ExitReason::TripleFault { cpu, rip },
                    Ending::Failure(what) => ExitReason::VcpuFailure { cpu, rip, what },
                    Ending::Reason(r) => r,
                };
                self.control.request_exit(reason);
            }
        }
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
