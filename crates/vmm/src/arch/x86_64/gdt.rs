//! Segment descriptors for the vCPU's initial state.

use kvm_bindings::kvm_segment;

/// Packs a GDT entry from flags (access byte and flags nibble), base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The boot GDT: null, 64-bit code, data, TSS, 32-bit code.
pub const BOOT_GDT: [u64; 5] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
    gdt_entry(0xc09b, 0, 0xfffff),
];
/// GDT index of the 64-bit code segment.
pub const CODE64_INDEX: u16 = 1;
/// GDT index of the flat data segment.
pub const DATA_INDEX: u16 = 2;
/// GDT index of the TSS.
pub const TSS_INDEX: u16 = 3;
/// GDT index of the flat 32-bit code segment (PVH entry).
pub const CODE32_INDEX: u16 = 4;

/// Decodes GDT entry `index` of `table` into the form KVM_SET_SREGS takes.
pub fn kvm_segment_from_gdt(table: &[u64], index: u16) -> kvm_segment {
    let entry = table.get(usize::from(index)).copied().unwrap_or(0);
    let base = ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000);
    let mut limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    if g == 1 {
        limit = (limit << 12) | 0xfff;
    }
    kvm_segment {
        base,
        limit,
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(((entry >> 47) & 1) == 0),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code64_segment_decodes() {
        let s = kvm_segment_from_gdt(&BOOT_GDT, CODE64_INDEX);
        assert_eq!(
            (s.selector, s.type_, s.l, s.db, s.present, s.s, s.g),
            (8, 0xb, 1, 0, 1, 1, 1)
        );
        assert_eq!(s.limit, 0xffff_ffff);
        assert_eq!(s.base, 0);
    }

    #[test]
    fn code32_and_data_segments_decode() {
        let c = kvm_segment_from_gdt(&BOOT_GDT, CODE32_INDEX);
        assert_eq!((c.l, c.db, c.type_), (0, 1, 0xb));
        let d = kvm_segment_from_gdt(&BOOT_GDT, DATA_INDEX);
        assert_eq!((d.type_, d.db, d.s, d.unusable), (3, 1, 1, 0));
    }

    #[test]
    fn tss_is_a_system_segment() {
        let t = kvm_segment_from_gdt(&BOOT_GDT, TSS_INDEX);
        assert_eq!((t.type_, t.s, t.selector), (0xb, 0, 0x18));
    }

    #[test]
    fn entry_packing_matches_known_values() {
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
    }
}
