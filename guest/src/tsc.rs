//! TSC rate detection and tick conversion.

use crate::arch::cpuid;

/// Finds the TSC rate in kHz from a CPL3 CPUID (under PVM: the host CPU's
/// view, still the same TSC): the hypervisor timing leaf
/// 0x40000010 (EAX = TSC kHz), else leaf 0x15 (TSC/crystal ratio), else leaf
/// 0x16 (base MHz). `None` when none of them says.
pub fn detect_khz() -> Option<u64> {
    let hypervisor = cpuid(1).ecx & (1 << 31) != 0;
    if hypervisor && cpuid(0x4000_0000).eax >= 0x4000_0010 {
        let khz = cpuid(0x4000_0010).eax;
        if khz != 0 {
            return Some(u64::from(khz));
        }
    }
    let max_leaf = cpuid(0).eax;
    if max_leaf >= 0x15 {
        let l = cpuid(0x15);
        if l.eax != 0 && l.ebx != 0 && l.ecx != 0 {
            return Some(u64::from(l.ecx) * u64::from(l.ebx) / u64::from(l.eax) / 1000);
        }
    }
    if max_leaf >= 0x16 {
        let mhz = cpuid(0x16).eax & 0xffff;
        if mhz != 0 {
            return Some(u64::from(mhz) * 1000);
        }
    }
    None
}

/// Converts TSC ticks to nanoseconds; 0 when the rate is unknown (0).
pub fn ticks_to_ns(ticks: u64, khz: u64) -> u64 {
    if khz == 0 {
        return 0;
    }
    (u128::from(ticks) * 1_000_000 / u128::from(khz)) as u64
}
