//! The few x86 instructions the guest uses at CPL3.
//!
//! Port I/O is allowed at CPL3 by the all-zero TSS I/O bitmap that `boot.S`
//! sets up; all memory, MMIO included, is identity-mapped and user-accessible.

use core::arch::asm;

/// Writes a byte to an I/O port.
#[inline(always)]
pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O touches no Rust-visible memory; the TSS bitmap allows it at CPL3.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nostack, preserves_flags)) }
}

/// Writes a 32-bit value to an I/O port. Also a compiler memory barrier, so
/// memory written before (e.g. a report) is in place when the VMM looks.
#[inline(always)]
pub fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") value, options(nostack, preserves_flags)) }
}

/// Reads a byte from an I/O port.
#[inline(always)]
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`.
    unsafe { asm!("in al, dx", in("dx") port, out("al") value, options(nostack, preserves_flags)) }
    value
}

/// Writes a 32-bit value to a physical (identity-mapped) MMIO address.
#[inline(always)]
pub fn mmio_write32(addr: u64, value: u32) {
    // SAFETY: the identity map covers the low 4 GiB, MMIO holes included, with
    // user access; callers pass device registers that Rust code does not own.
    unsafe { core::ptr::write_volatile(addr as *mut u32, value) }
}

/// Reads a 32-bit value from a physical (identity-mapped) MMIO address.
#[inline(always)]
pub fn mmio_read32(addr: u64) -> u32 {
    // SAFETY: as for `mmio_write32`.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

/// Writes a byte to a physical (identity-mapped) MMIO address.
#[inline(always)]
pub fn mmio_write8(addr: u64, value: u8) {
    // SAFETY: as for `mmio_write32`.
    unsafe { core::ptr::write_volatile(addr as *mut u8, value) }
}

/// Reads the time-stamp counter.
#[inline(always)]
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc only reads the TSC (CR4.TSD is clear, so it works at CPL3).
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Result of [`cpuid`].
#[derive(Clone, Copy, Debug)]
pub struct Cpuid {
    /// EAX output.
    pub eax: u32,
    /// EBX output.
    pub ebx: u32,
    /// ECX output.
    pub ecx: u32,
}

/// Executes CPUID for `leaf` (subleaf 0); EDX is not needed anywhere.
///
/// Under PVM this runs natively at CPL3 and describes the host CPU, not the
/// vCPU; boot.S passes the vCPU's values that matter from a CPL0 CPUID.
pub fn cpuid(leaf: u32) -> Cpuid {
    let (eax, ebx, ecx);
    // SAFETY: cpuid has no side effects; rbx (reserved by LLVM) is saved and restored.
    unsafe {
        asm!(
            "mov {tmp:r}, rbx",
            "cpuid",
            "xchg {tmp:r}, rbx",
            tmp = out(reg) ebx,
            inout("eax") leaf => eax,
            inout("ecx") 0u32 => ecx,
            out("edx") _,
            options(nomem, nostack, preserves_flags),
        )
    }
    Cpuid { eax, ebx, ecx }
}

/// Masks both legacy 8259 PICs so a ticking PIT cannot interrupt CPL3 code
/// (PVM runs CPL3 with interrupts enabled whatever RFLAGS says).
pub fn mask_pic() {
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
}
