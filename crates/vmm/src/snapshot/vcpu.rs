//! One vCPU's KVM state: what `KVM_GET_*` reads while the vCPU is paused
//! and `KVM_SET_*` writes back into a fresh vCPU, in the order KVM needs.

use std::sync::OnceLock;

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuFd};
use serde::{Deserialize, Serialize};

use super::SnapshotError;

/// MSRs read per `KVM_GET_MSRS` call.
const MSR_CHUNK: usize = 200;

/// Everything KVM holds for one vCPU.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    /// vCPU index.
    pub index: usize,
    /// CPUID as set on the vCPU.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// Every MSR of KVM's index list that the vCPU could read (TSC included).
    pub msrs: Vec<kvm_msr_entry>,
    /// General registers.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers.
    pub sregs: kvm_sregs,
    /// FPU/SSE/AVX state (legacy 4 KiB `KVM_GET_XSAVE` area).
    pub xsave: kvm_xsave,
    /// Extended control registers (XCR0).
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debug_regs: kvm_debugregs,
    /// The in-kernel local APIC.
    pub lapic: kvm_lapic_state,
    /// Pending exceptions, interrupts, NMIs, SMM state.
    pub vcpu_events: kvm_vcpu_events,
    /// Runnable, halted, waiting for SIPI...
    pub mp_state: kvm_mp_state,
    /// TSC frequency in kHz, when KVM reports it.
    pub tsc_khz: Option<u32>,
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuState")
            .field("index", &self.index)
            .field("rip", &format_args!("{:#x}", self.regs.rip))
            .field("msrs", &self.msrs.len())
            .field("cpuid", &self.cpuid.len())
            .finish_non_exhaustive()
    }
}

static MSR_LIST: OnceLock<Result<Vec<u32>, String>> = OnceLock::new();

/// KVM's list of MSRs to save (`KVM_GET_MSR_INDEX_LIST`), read once.
/// [`prime_msr_index_list`] reads it while the machine is built, so a vCPU
/// thread saving its state never opens /dev/kvm (its seccomp list has no
/// `openat`); without that, it is read here.
pub fn msr_index_list() -> Result<&'static [u32], SnapshotError> {
    let list = MSR_LIST.get_or_init(|| {
        let kvm = Kvm::new().map_err(|e| format!("/dev/kvm: {e}"))?;
        read_msr_index_list(&kvm)
    });
    list.as_deref().map_err(|e| SnapshotError::Kvm(e.clone()))
}

/// Reads KVM's MSR list through an open `/dev/kvm` (the machine builder's),
/// once per process.
pub fn prime_msr_index_list(kvm: &Kvm) {
    MSR_LIST.get_or_init(|| read_msr_index_list(kvm));
}

fn read_msr_index_list(kvm: &Kvm) -> Result<Vec<u32>, String> {
    kvm.get_msr_index_list()
        .map(|l| l.as_slice().to_vec())
        .map_err(|e| format!("KVM_GET_MSR_INDEX_LIST: {e}"))
}

fn ioctl(index: usize, what: &'static str) -> impl Fn(kvm_ioctls::Error) -> SnapshotError {
    move |e| SnapshotError::Kvm(format!("vCPU {index}: KVM_{what} failed: {e}"))
}

/// Reads the MSRs in `indices`, leaving out those KVM cannot read
/// (`KVM_GET_MSRS` stops at the first one it refuses).
pub(crate) fn read_msrs(fd: &VcpuFd, index: usize, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, SnapshotError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest: Vec<u32> = indices.to_vec();
    while !rest.is_empty() {
        let take = rest.len().min(MSR_CHUNK);
        let entries: Vec<kvm_msr_entry> = rest[..take]
            .iter()
            .map(|&i| kvm_msr_entry {
                index: i,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|e| SnapshotError::Kvm(format!("MSR list: {e:?}")))?;
        let n = fd.get_msrs(&mut msrs).map_err(ioctl(index, "GET_MSRS"))?;
        out.extend_from_slice(&msrs.as_slice()[..n]);
        if n < take {
            tracing::debug!("vCPU {index}: MSR {:#x} not readable, left out", rest[n]);
            rest.drain(..=n);
        } else {
            rest.drain(..take);
        }
    }
    Ok(out)
}

/// Reads vCPU `index`'s state. The vCPU must not be running; a pending
/// I/O or MMIO completion must have been finished by a `KVM_RUN` with
/// `immediate_exit` set (see [`crate::vcpu::Vcpu::save_state`]).
pub fn save(fd: &VcpuFd, index: usize) -> Result<VcpuState, SnapshotError> {
    let io = |what| ioctl(index, what);
    let cpuid = fd.get_cpuid2(KVM_MAX_CPUID_ENTRIES).map_err(io("GET_CPUID2"))?;
    let msrs = read_msrs(fd, index, msr_index_list()?)?;
    Ok(VcpuState {
        index,
        cpuid: cpuid.as_slice().to_vec(),
        msrs,
        regs: fd.get_regs().map_err(io("GET_REGS"))?,
        sregs: fd.get_sregs().map_err(io("GET_SREGS"))?,
        xsave: fd.get_xsave().map_err(io("GET_XSAVE"))?,
        xcrs: fd.get_xcrs().map_err(io("GET_XCRS"))?,
        debug_regs: fd.get_debug_regs().map_err(io("GET_DEBUGREGS"))?,
        lapic: fd.get_lapic().map_err(io("GET_LAPIC"))?,
        vcpu_events: fd.get_vcpu_events().map_err(io("GET_VCPU_EVENTS"))?,
        mp_state: fd.get_mp_state().map_err(io("GET_MP_STATE"))?,
        tsc_khz: fd.get_tsc_khz().ok().filter(|&k| k > 0),
    })
}

/// Writes `state` into a fresh vCPU (CPUID first: KVM checks the rest
/// against it; events last, so nothing overwrites a pending interrupt).
pub fn restore(fd: &VcpuFd, state: &VcpuState) -> Result<(), SnapshotError> {
    let io = |what| ioctl(state.index, what);
    if let Some(khz) = state.tsc_khz {
        if fd.get_tsc_khz().ok() != Some(khz) {
            fd.set_tsc_khz(khz).map_err(io("SET_TSC_KHZ"))?;
        }
    }
    let cpuid = CpuId::from_entries(&state.cpuid).map_err(|e| SnapshotError::Kvm(format!("CPUID: {e:?}")))?;
    fd.set_cpuid2(&cpuid).map_err(io("SET_CPUID2"))?;
    fd.set_mp_state(state.mp_state).map_err(io("SET_MP_STATE"))?;
    fd.set_regs(&state.regs).map_err(io("SET_REGS"))?;
    fd.set_sregs(&state.sregs).map_err(io("SET_SREGS"))?;
    // SAFETY: `xsave` is a legacy 4 KiB area read with KVM_GET_XSAVE, the size KVM_SET_XSAVE reads.
    unsafe { fd.set_xsave(&state.xsave) }.map_err(io("SET_XSAVE"))?;
    fd.set_xcrs(&state.xcrs).map_err(io("SET_XCRS"))?;
    fd.set_debug_regs(&state.debug_regs).map_err(io("SET_DEBUGREGS"))?;
    fd.set_lapic(&state.lapic).map_err(io("SET_LAPIC"))?;
    for chunk in state.msrs.chunks(MSR_CHUNK) {
        let msrs = Msrs::from_entries(chunk).map_err(|e| SnapshotError::Kvm(format!("MSR list: {e:?}")))?;
        let n = fd.set_msrs(&msrs).map_err(io("SET_MSRS"))?;
        if n < chunk.len() {
            return Err(SnapshotError::Kvm(format!(
                "vCPU {}: KVM_SET_MSRS refused MSR {:#x}",
                state.index, chunk[n].index
            )));
        }
    }
    fd.set_vcpu_events(&state.vcpu_events).map_err(io("SET_VCPU_EVENTS"))?;
    Ok(())
}
