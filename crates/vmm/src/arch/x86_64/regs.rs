//! Initial vCPU register state for the two boot entries kvmkit supports.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs, Msrs};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::gdt::{kvm_segment_from_gdt, BOOT_GDT, CODE32_INDEX, CODE64_INDEX, DATA_INDEX, TSS_INDEX};
use super::layout::{BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START};

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Where and how a vCPU starts executing the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryPoint {
    /// Linux 64-bit boot protocol: long mode with identity paging, `rsi` =
    /// boot_params address.
    Linux64 {
        /// Entry RIP.
        rip: u64,
        /// Guest-physical address of the zero page.
        boot_params: u64,
    },
    /// PVH: 32-bit protected mode, paging off, `ebx` = hvm_start_info address.
    Pvh {
        /// Entry EIP.
        rip: u64,
        /// Guest-physical address of the start info.
        start_info: u64,
    },
}

/// Errors setting up boot register state.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// A boot structure could not be written to guest memory.
    #[error("cannot write the boot {0} into guest memory")]
    Write(&'static str),
}

/// Writes the GDT, IDT and (for the Linux entry) identity page tables that the
/// initial register state refers to.
pub fn write_boot_tables<M: GuestMemory>(mem: &M, entry: EntryPoint) -> Result<(), RegsError> {
    for (i, e) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(BOOT_GDT_START + 8 * i as u64))
            .map_err(|_| RegsError::Write("GDT"))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(|_| RegsError::Write("IDT"))?;
    if let EntryPoint::Linux64 { .. } = entry {
        // One PML4 entry -> one PDPT entry -> 512 x 2 MiB pages: the first GiB.
        mem.write_obj(PDPTE_START | 0x03, GuestAddress(PML4_START))
            .map_err(|_| RegsError::Write("PML4"))?;
        mem.write_obj(PDE_START | 0x03, GuestAddress(PDPTE_START))
            .map_err(|_| RegsError::Write("PDPT"))?;
        for i in 0..512u64 {
            mem.write_obj((i << 21) | 0x83, GuestAddress(PDE_START + i * 8))
                .map_err(|_| RegsError::Write("page directory"))?;
        }
    }
    Ok(())
}

/// Special registers for `entry`, starting from the vCPU's current `sregs`.
pub fn boot_sregs(mut sregs: kvm_sregs, entry: EntryPoint) -> kvm_sregs {
    let data = kvm_segment_from_gdt(&BOOT_GDT, DATA_INDEX);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment_from_gdt(&BOOT_GDT, TSS_INDEX);
    match entry {
        EntryPoint::Linux64 { .. } => {
            sregs.cs = kvm_segment_from_gdt(&BOOT_GDT, CODE64_INDEX);
            sregs.cr3 = PML4_START;
            sregs.cr4 |= CR4_PAE;
            sregs.cr0 |= CR0_PE | CR0_PG | CR0_ET;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        EntryPoint::Pvh { .. } => {
            sregs.cs = kvm_segment_from_gdt(&BOOT_GDT, CODE32_INDEX);
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    sregs
}

/// General-purpose registers for `entry`.
pub fn boot_regs(entry: EntryPoint) -> kvm_regs {
    match entry {
        EntryPoint::Linux64 { rip, boot_params } => kvm_regs {
            rflags: 0x2,
            rip,
            rsp: BOOT_STACK_POINTER,
            rbp: BOOT_STACK_POINTER,
            rsi: boot_params,
            ..Default::default()
        },
        EntryPoint::Pvh { rip, start_info } => kvm_regs {
            rflags: 0x2,
            rip,
            rbx: start_info,
            ..Default::default()
        },
    }
}

/// The x87/SSE state Linux expects at entry.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// Model-specific registers set at boot (as Firecracker and QEMU do).
pub fn boot_msrs() -> Msrs {
    const MSR_IA32_SYSENTER_CS: u32 = 0x174;
    const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
    const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
    const MSR_STAR: u32 = 0xc000_0081;
    const MSR_LSTAR: u32 = 0xc000_0082;
    const MSR_CSTAR: u32 = 0xc000_0083;
    const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
    const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
    const MSR_IA32_TSC: u32 = 0x10;
    const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
    const MISC_ENABLE_FAST_STRING: u64 = 1;
    const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
    /// MTRRs enabled (bit 11), default memory type write-back (6): without it
    /// every MTRR is off, Linux reports "MTRRs disabled" and turns PAT off
    /// with them. Firecracker and Cloud Hypervisor set the same value.
    const MTRR_ENABLED_WRITE_BACK: u64 = (1 << 11) | 6;
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    let entries = [
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        entry(MSR_MTRR_DEF_TYPE, MTRR_ENABLED_WRITE_BACK),
    ];
    // from_entries only fails above KVM_MAX_MSR_ENTRIES; eleven entries always fit.
    Msrs::from_entries(&entries).expect("eleven MSR entries fit in KVM_MAX_MSR_ENTRIES")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The arch code is generic over guest memory; plain RAM does here.
    type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

    #[test]
    fn pvh_entry_is_32bit_protected_mode_without_paging() {
        let entry = EntryPoint::Pvh {
            rip: 0x10_0000,
            start_info: 0x6000,
        };
        let s = boot_sregs(kvm_sregs::default(), entry);
        assert_eq!(s.cr0 & (CR0_PE | CR0_PG), CR0_PE);
        assert_eq!(s.efer, 0);
        assert_eq!((s.cs.db, s.cs.l), (1, 0));
        let r = boot_regs(entry);
        assert_eq!((r.rip, r.rbx, r.rflags), (0x10_0000, 0x6000, 2));
    }

    #[test]
    fn linux_entry_is_long_mode_with_identity_paging() {
        let entry = EntryPoint::Linux64 {
            rip: 0x100_0000,
            boot_params: 0x7000,
        };
        let s = boot_sregs(kvm_sregs::default(), entry);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.cr3, PML4_START);
        assert_eq!(s.cs.l, 1);
        assert_eq!(boot_regs(entry).rsi, 0x7000);
        let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("mem");
        write_boot_tables(&mem, entry).expect("tables");
        let pde: u64 = mem.read_obj(GuestAddress(PDE_START + 8 * 511)).expect("pde");
        assert_eq!(pde, (511 << 21) | 0x83);
        let gdt1: u64 = mem.read_obj(GuestAddress(BOOT_GDT_START + 8)).expect("gdt");
        assert_eq!(gdt1, BOOT_GDT[1]);
    }

    #[test]
    fn boot_msrs_are_all_present() {
        assert_eq!(boot_msrs().as_slice().len(), 11);
    }
}
