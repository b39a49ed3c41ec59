//! What this host's KVM lets a snapshot save and restore: every state
//! ioctl kvmkit uses is tried on a scratch VM (read, then written back),
//! for `kvmkit check`.

use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};

use crate::host::check::CheckItem;

/// The outcome of the probe.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StateProbe {
    /// Ioctls tried and working.
    pub working: Vec<&'static str>,
    /// Ioctls refused, with KVM's error.
    pub refused: Vec<(&'static str, String)>,
    /// MSRs in KVM_GET_MSR_INDEX_LIST.
    pub msrs_listed: usize,
    /// Of those, readable with KVM_GET_MSRS.
    pub msrs_readable: usize,
}

impl StateProbe {
    fn note<T>(&mut self, name: &'static str, r: Result<T, kvm_ioctls::Error>) -> Option<T> {
        match r {
            Ok(v) => {
                self.working.push(name);
                Some(v)
            }
            Err(e) => {
                self.refused.push((name, e.to_string()));
                None
            }
        }
    }
}

fn probe_vm(p: &mut StateProbe, vm: &VmFd) {
    use super::vm;
    match vm::save(vm) {
        Ok(state) => {
            p.working.extend(["KVM_GET_IRQCHIP", "KVM_GET_PIT2", "KVM_GET_CLOCK"]);
            match vm::restore(vm, &state) {
                Ok(()) => p.working.extend(["KVM_SET_IRQCHIP", "KVM_SET_PIT2", "KVM_SET_CLOCK"]),
                Err(e) => p.refused.push(("VM state write", e.to_string())),
            }
        }
        Err(e) => p.refused.push(("VM state read", e.to_string())),
    }
}

fn probe_vcpu(p: &mut StateProbe, fd: &VcpuFd) {
    if let Some(v) = p.note("KVM_GET_REGS", fd.get_regs()) {
        p.note("KVM_SET_REGS", fd.set_regs(&v));
    }
    if let Some(v) = p.note("KVM_GET_SREGS", fd.get_sregs()) {
        p.note("KVM_SET_SREGS", fd.set_sregs(&v));
    }
    if let Some(v) = p.note("KVM_GET_XSAVE", fd.get_xsave()) {
        // SAFETY: a legacy 4 KiB area just read with KVM_GET_XSAVE.
        p.note("KVM_SET_XSAVE", unsafe { fd.set_xsave(&v) });
    }
    if let Some(v) = p.note("KVM_GET_XCRS", fd.get_xcrs()) {
        p.note("KVM_SET_XCRS", fd.set_xcrs(&v));
    }
    if let Some(v) = p.note("KVM_GET_DEBUGREGS", fd.get_debug_regs()) {
        p.note("KVM_SET_DEBUGREGS", fd.set_debug_regs(&v));
    }
    if let Some(v) = p.note("KVM_GET_LAPIC", fd.get_lapic()) {
        p.note("KVM_SET_LAPIC", fd.set_lapic(&v));
    }
    if let Some(v) = p.note("KVM_GET_VCPU_EVENTS", fd.get_vcpu_events()) {
        p.note("KVM_SET_VCPU_EVENTS", fd.set_vcpu_events(&v));
    }
    if let Some(v) = p.note("KVM_GET_MP_STATE", fd.get_mp_state()) {
        p.note("KVM_SET_MP_STATE", fd.set_mp_state(v));
    }
    if let Some(v) = p.note("KVM_GET_TSC_KHZ", fd.get_tsc_khz()) {
        p.note("KVM_SET_TSC_KHZ", fd.set_tsc_khz(v));
    }
    if let Some(v) = p.note("KVM_GET_CPUID2", fd.get_cpuid2(KVM_MAX_CPUID_ENTRIES)) {
        p.note("KVM_SET_CPUID2", fd.set_cpuid2(&v));
    }
}

fn probe_msrs(p: &mut StateProbe, fd: &VcpuFd) {
    let list = match super::vcpu::msr_index_list() {
        Ok(l) => l,
        Err(e) => {
            p.refused.push(("KVM_GET_MSR_INDEX_LIST", e.to_string()));
            return;
        }
    };
    p.working.push("KVM_GET_MSR_INDEX_LIST");
    p.msrs_listed = list.len();
    match super::vcpu::read_msrs(fd, 0, list) {
        Ok(entries) => {
            p.msrs_readable = entries.len();
            p.working.push("KVM_GET_MSRS");
            match kvm_bindings::Msrs::from_entries(&entries) {
                Ok(msrs) => match fd.set_msrs(&msrs) {
                    Ok(n) if n == entries.len() => p.working.push("KVM_SET_MSRS"),
                    Ok(n) => p.refused.push((
                        "KVM_SET_MSRS",
                        format!("wrote {n} of {} MSRs (refused {:#x})", entries.len(), entries[n].index),
                    )),
                    Err(e) => p.refused.push(("KVM_SET_MSRS", e.to_string())),
                },
                Err(e) => p.refused.push(("KVM_SET_MSRS", format!("{e:?}"))),
            }
        }
        Err(e) => p.refused.push(("KVM_GET_MSRS", e.to_string())),
    }
}

/// Bytes of the scratch memory slot the dirty-log probe registers.
const DIRTY_PROBE_LEN: usize = 64 * 1024;

/// Whether KVM takes a memory slot with `KVM_MEM_LOG_DIRTY_PAGES` and answers
/// `KVM_GET_DIRTY_LOG` for it (what diff snapshots would need), on a scratch VM
/// of its own. Only the ioctls are tried; no guest runs to dirty a page.
pub fn probe_dirty_log(kvm: &Kvm) -> Result<(), String> {
    let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
    // SAFETY: a fresh private anonymous mapping; checked for MAP_FAILED below.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            DIRTY_PROBE_LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(format!("mmap: {}", std::io::Error::last_os_error()));
    }
    let region = kvm_bindings::kvm_userspace_memory_region {
        slot: 0,
        flags: kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES,
        guest_phys_addr: 0,
        memory_size: DIRTY_PROBE_LEN as u64,
        userspace_addr: addr as u64,
    };
    // SAFETY: the mapping is DIRTY_PROBE_LEN bytes and outlives the VM (dropped
    // before the munmap below); no vCPU exists, so nothing runs on it.
    let r = unsafe { vm.set_user_memory_region(region) }
        .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION with KVM_MEM_LOG_DIRTY_PAGES: {e}"))
        .and_then(|()| {
            vm.get_dirty_log(0, DIRTY_PROBE_LEN)
                .map(drop)
                .map_err(|e| format!("KVM_GET_DIRTY_LOG: {e}"))
        });
    drop(vm);
    // SAFETY: unmaps exactly the mapping made above; the VM using it is gone.
    unsafe { libc::munmap(addr, DIRTY_PROBE_LEN) };
    r
}

/// Tries every state ioctl on a scratch VM with one vCPU.
pub fn probe(kvm: &Kvm) -> Result<StateProbe, String> {
    let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
    vm.create_irq_chip().map_err(|e| format!("KVM_CREATE_IRQCHIP: {e}"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(|e| format!("KVM_CREATE_PIT2: {e}"))?;
    let vcpu = vm.create_vcpu(0).map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| format!("KVM_GET_SUPPORTED_CPUID: {e}"))?;
    vcpu.set_cpuid2(&supported)
        .map_err(|e| format!("KVM_SET_CPUID2: {e}"))?;
    let mut p = StateProbe::default();
    probe_vm(&mut p, &vm);
    probe_vcpu(&mut p, &vcpu);
    probe_msrs(&mut p, &vcpu);
    Ok(p)
}

/// The `kvmkit check` lines about snapshots (never required to run VMs).
pub fn host_items(kvm: &Kvm, pvm: bool) -> Vec<CheckItem> {
    let line = |ok: bool, detail: String, fix: Option<&str>| CheckItem {
        name: "snapshot state ioctls".into(),
        ok,
        required: false,
        detail,
        fix: if ok { None } else { fix.map(str::to_owned) },
    };
    let mut items = match probe(kvm) {
        Err(e) => vec![line(false, format!("probe failed: {e}"), None)],
        Ok(p) if p.refused.is_empty() => vec![line(
            true,
            format!(
                "all {} work (vCPU, irqchip, PIT, clock; {} of the {} MSRs KVM lists are readable)",
                p.working.len(),
                p.msrs_readable,
                p.msrs_listed
            ),
            None,
        )],
        Ok(p) => {
            let refused: Vec<String> = p.refused.iter().map(|(n, e)| format!("{n} ({e})")).collect();
            vec![line(
                false,
                format!(
                    "refused: {}; snapshots cannot be taken or restored here",
                    refused.join(", ")
                ),
                Some("use a host with kvm_intel or kvm_amd (the nested lab) for snapshots"),
            )]
        }
    };
    let dirty = probe_dirty_log(kvm);
    items.push(CheckItem {
        name: "dirty-page log".into(),
        ok: dirty.is_ok(),
        required: false,
        detail: match &dirty {
            Ok(()) => "KVM takes KVM_MEM_LOG_DIRTY_PAGES and answers KVM_GET_DIRTY_LOG: diff snapshots \
                       (track_dirty_pages, snapshot_type Diff) work here"
                .into(),
            Err(e) => {
                format!("refused: {e}; VMs with track_dirty_pages cannot be created here, and so no diff snapshots")
            }
        },
        fix: None,
    });
    if pvm {
        items.push(CheckItem {
            name: "snapshot guest TSC".into(),
            ok: true,
            required: false,
            detail: "kvm_pvm: guest code at CPL3 reads the host's TSC, so a restored guest sees the time \
                     between snapshot and restore pass (KVM takes the saved TSC, but rdtsc is not offset)"
                .into(),
            fix: None,
        });
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_reports_every_ioctl_once() {
        let Ok(kvm) = Kvm::new() else { return };
        let p = probe(&kvm).expect("probe");
        eprintln!("{p:?}");
        let all = p.working.len() + p.refused.len();
        assert!(all >= 20, "{p:?}");
        assert!(p.msrs_readable <= p.msrs_listed);
        let items = host_items(&kvm, false);
        assert_eq!(items.len(), 2);
        assert!(items.iter().all(|i| !i.required));
        assert_eq!(items[1].name, "dirty-page log");
    }
}
