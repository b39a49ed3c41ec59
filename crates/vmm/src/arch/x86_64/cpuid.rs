//! Per-vCPU filtering of the CPUID table reported by `KVM_GET_SUPPORTED_CPUID`.
//!
//! KVM reports what the host can virtualize, including the host's own topology
//! (APIC ids, core counts, cache sharing). Before `KVM_SET_CPUID2` each vCPU's
//! copy is rewritten so that the guest sees a single package with `num_vcpus`
//! cores, one thread per core, where vCPU `i` has (x2)APIC id `i`:
//!
//! | leaf          | rule                                                                      |
//! |---------------|---------------------------------------------------------------------------|
//! | `0x1`         | APIC id, logical count, CLFLUSH size, hypervisor bit, HTT iff >1 vCPU     |
//! | `0x4`         | cores per package, threads sharing each cache (L1/L2 private, L3 shared)  |
//! | `0xB`, `0x1F` | SMT level (1 thread), core level (`num_vcpus`), x2APIC id in EDX          |
//! | `0x8000_0008` | AMD core count (`NC`), APIC id size derived from it                       |
//! | `0x8000_001E` | AMD extended APIC id, core id, one thread per core, one node              |
//!
//! Every other leaf, in particular KVM's paravirtual leaves `0x4000_0000..`
//! (which paravirtualized guests use to detect the hypervisor), passes through
//! unchanged.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// Leaf 0x1, EBX[31:24]: initial APIC id.
const LEAF1_EBX_APIC_ID_SHIFT: u32 = 24;
/// Leaf 0x1, EBX[23:16]: maximum number of addressable logical processors.
const LEAF1_EBX_LOGICAL_COUNT_SHIFT: u32 = 16;
/// Leaf 0x1, EBX[15:8]: CLFLUSH line size in 8-byte units.
const LEAF1_EBX_CLFLUSH_SHIFT: u32 = 8;
/// CLFLUSH line size reported when the host reports none: 8 * 8 = 64 bytes.
const LEAF1_EBX_CLFLUSH_DEFAULT: u32 = 8;
/// Leaf 0x1, ECX bit 31: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 0x1, EDX bit 28: HTT (the logical processor count in EBX is valid).
const LEAF1_EDX_HTT: u32 = 1 << 28;

/// Leaf 0x4, EAX[4:0]: cache type (0 = no more caches).
const LEAF4_EAX_CACHE_TYPE_MASK: u32 = 0x1f;
/// Leaf 0x4, EAX[7:5]: cache level.
const LEAF4_EAX_CACHE_LEVEL_SHIFT: u32 = 5;
/// Leaf 0x4, EAX[25:14]: logical processors sharing this cache, minus 1.
const LEAF4_EAX_SHARING_SHIFT: u32 = 14;
const LEAF4_EAX_SHARING_MASK: u32 = 0xfff << LEAF4_EAX_SHARING_SHIFT;
/// Leaf 0x4, EAX[31:26]: cores per package, minus 1.
const LEAF4_EAX_CORES_SHIFT: u32 = 26;
const LEAF4_EAX_CORES_MASK: u32 = 0x3f << LEAF4_EAX_CORES_SHIFT;

/// Leaf 0xB/0x1F, ECX[15:8]: level type.
const LEAFB_ECX_LEVEL_TYPE_SHIFT: u32 = 8;
/// Level type "SMT".
const LEAFB_LEVEL_TYPE_SMT: u32 = 1;
/// Level type "core".
const LEAFB_LEVEL_TYPE_CORE: u32 = 2;

/// Leaf 0x8000_0008, ECX[7:0]: number of physical cores, minus 1 (`NC`).
const LEAF_80000008_ECX_NC_MASK: u32 = 0xff;
/// Leaf 0x8000_0008, ECX[15:12]: APIC id size (`ApicIdSize`; 0 = derive from `NC`).
const LEAF_80000008_ECX_APIC_ID_SIZE_MASK: u32 = 0xf << 12;

/// Rewrites `cpuid` (as returned by `KVM_GET_SUPPORTED_CPUID`) for vCPU
/// `vcpu_index` of a VM with `num_vcpus` vCPUs: one package, `num_vcpus`
/// cores, one thread per core, APIC id and x2APIC id equal to `vcpu_index`.
///
/// Leaves not listed in the module documentation, including KVM's
/// paravirtual leaves `0x4000_0000..`, are left untouched. A `num_vcpus` of 0
/// is treated as 1.
pub fn filter_cpuid(cpuid: &mut CpuId, vcpu_index: u8, num_vcpus: u8) {
    let num_vcpus = u32::from(num_vcpus.max(1));
    let apic_id = u32::from(vcpu_index);
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            0x1 => filter_leaf_1(entry, apic_id, num_vcpus),
            0x4 => filter_leaf_4(entry, num_vcpus),
            0xb | 0x1f => filter_extended_topology(entry, apic_id, num_vcpus),
            0x8000_0008 => filter_leaf_8000_0008(entry, num_vcpus),
            0x8000_001e => filter_leaf_8000_001e(entry, apic_id),
            _ => {}
        }
    }
}

/// Number of APIC-id bits needed to number `count` logical processors.
fn id_bits(count: u32) -> u32 {
    count.next_power_of_two().trailing_zeros()
}

/// Leaf 0x1: basic feature information.
fn filter_leaf_1(entry: &mut kvm_cpuid_entry2, apic_id: u32, num_vcpus: u32) {
    // EBX[31:24] = initial APIC id, EBX[23:16] = logical processors per package.
    // Only the CLFLUSH size in EBX[15:8] is kept from the host (brand index EBX[7:0] too).
    let mut ebx = entry.ebx & 0xffff;
    if (ebx >> LEAF1_EBX_CLFLUSH_SHIFT) & 0xff == 0 {
        // Linux derives its cache-line size from this; never report 0.
        ebx |= LEAF1_EBX_CLFLUSH_DEFAULT << LEAF1_EBX_CLFLUSH_SHIFT;
    }
    ebx |= (num_vcpus & 0xff) << LEAF1_EBX_LOGICAL_COUNT_SHIFT;
    ebx |= (apic_id & 0xff) << LEAF1_EBX_APIC_ID_SHIFT;
    entry.ebx = ebx;
    // Tell the guest it runs on a hypervisor.
    entry.ecx |= LEAF1_ECX_HYPERVISOR;
    // HTT: the logical processor count is meaningful only with more than one vCPU.
    if num_vcpus > 1 {
        entry.edx |= LEAF1_EDX_HTT;
    } else {
        entry.edx &= !LEAF1_EDX_HTT;
    }
}

/// Leaf 0x4 (Intel deterministic cache parameters), one entry per cache (subleaf).
fn filter_leaf_4(entry: &mut kvm_cpuid_entry2, num_vcpus: u32) {
    // Cache type 0 terminates the list: nothing to describe.
    if entry.eax & LEAF4_EAX_CACHE_TYPE_MASK == 0 {
        return;
    }
    let level = (entry.eax >> LEAF4_EAX_CACHE_LEVEL_SHIFT) & 0x7;
    // L1 and L2 are private to each (single-threaded) core; L3 and beyond are
    // shared by the whole package.
    let sharing = if level <= 2 { 0 } else { num_vcpus - 1 };
    // EAX[31:26] is 6 bits wide: at most 64 cores per package can be reported.
    let cores = num_vcpus.min(64) - 1;
    entry.eax &= !(LEAF4_EAX_SHARING_MASK | LEAF4_EAX_CORES_MASK);
    entry.eax |= (sharing << LEAF4_EAX_SHARING_SHIFT) & LEAF4_EAX_SHARING_MASK;
    entry.eax |= cores << LEAF4_EAX_CORES_SHIFT;
}

/// Leaves 0xB and 0x1F (extended topology enumeration), one entry per level (subleaf).
fn filter_extended_topology(entry: &mut kvm_cpuid_entry2, apic_id: u32, num_vcpus: u32) {
    match entry.index {
        // SMT level: one thread per core, so no x2APIC id bits belong to it.
        0 => {
            entry.eax = 0;
            entry.ebx = 1;
            entry.ecx = LEAFB_LEVEL_TYPE_SMT << LEAFB_ECX_LEVEL_TYPE_SHIFT;
        }
        // Core level: `num_vcpus` cores, numbered by the low bits of the x2APIC id.
        1 => {
            entry.eax = id_bits(num_vcpus);
            entry.ebx = num_vcpus;
            entry.ecx = (LEAFB_LEVEL_TYPE_CORE << LEAFB_ECX_LEVEL_TYPE_SHIFT) | 1;
        }
        // No further levels: level type 0 (invalid), ECX[7:0] echoes the subleaf.
        index => {
            entry.eax = 0;
            entry.ebx = 0;
            entry.ecx = index & 0xff;
        }
    }
    // EDX = x2APIC id of this vCPU, in every subleaf.
    entry.edx = apic_id;
}

/// Leaf 0x8000_0008 (AMD): address sizes and core count.
fn filter_leaf_8000_0008(entry: &mut kvm_cpuid_entry2, num_vcpus: u32) {
    // ECX[7:0] = cores - 1; ApicIdSize = 0 so the guest derives the core-id
    // width from NC rather than from the host's (possibly smaller) value.
    entry.ecx &= !(LEAF_80000008_ECX_NC_MASK | LEAF_80000008_ECX_APIC_ID_SIZE_MASK);
    entry.ecx |= (num_vcpus - 1) & LEAF_80000008_ECX_NC_MASK;
}

/// Leaf 0x8000_001E (AMD extended APIC id / topology extensions).
fn filter_leaf_8000_001e(entry: &mut kvm_cpuid_entry2, apic_id: u32) {
    // EAX = extended APIC id.
    entry.eax = apic_id;
    // EBX[7:0] = core (compute unit) id, EBX[15:8] = threads per core - 1 = 0.
    entry.ebx = apic_id & 0xff;
    // ECX[7:0] = node id 0, ECX[10:8] = nodes per package - 1 = 0.
    entry.ecx = 0;
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX;

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        let flags = if matches!(function, 0x4 | 0xb | 0x1f) {
            KVM_CPUID_FLAG_SIGNIFCANT_INDEX
        } else {
            0
        };
        kvm_cpuid_entry2 {
            function,
            index,
            flags,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            padding: [0; 3],
        }
    }

    /// A host-like table: 8-thread host (APIC id 5), SMT enabled, L1d/L1i/L2/L3.
    fn host_entries() -> Vec<kvm_cpuid_entry2> {
        vec![
            entry(0x0, 0, [0x1f, 0x756e_6547, 0x6c65_746e, 0x4965_6e69]),
            // EBX: APIC id 5, 16 logical, CLFLUSH 0 (forces the default); HTT set.
            entry(0x1, 0, [0x906ea, 0x0510_0000, 0x7ffa_fbbf, 0xbfeb_fbff]),
            // L1d: type 1, level 1, shared by 2, 8 cores.
            entry(0x4, 0, [(7 << 26) | (1 << 14) | (1 << 5) | 1, 0x1c0003f, 0x3f, 0]),
            // L1i: type 2, level 1.
            entry(0x4, 1, [(7 << 26) | (1 << 14) | (1 << 5) | 2, 0x1c0003f, 0x3f, 0]),
            // L2: type 3, level 2.
            entry(0x4, 2, [(7 << 26) | (1 << 14) | (2 << 5) | 3, 0x3c0003f, 0x3ff, 0]),
            // L3: type 3, level 3, shared by 16.
            entry(0x4, 3, [(7 << 26) | (15 << 14) | (3 << 5) | 3, 0x3c0003f, 0x3fff, 6]),
            entry(0xb, 0, [1, 2, 0x100, 5]),
            entry(0xb, 1, [4, 16, 0x201, 5]),
            entry(0x4000_0000, 0, [0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d]),
            entry(0x8000_0008, 0, [0x3027, 0, 0x700f, 0]),
        ]
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .expect("leaf present")
    }

    #[test]
    fn four_vcpus_index_3() {
        let entries = host_entries();
        let mut cpuid = CpuId::from_entries(&entries).expect("cpuid");
        filter_cpuid(&mut cpuid, 3, 4);

        let leaf1 = find(&cpuid, 0x1, 0);
        assert_eq!(leaf1.ebx >> 24, 3, "APIC id");
        assert_eq!((leaf1.ebx >> 16) & 0xff, 4, "logical count");
        assert_eq!((leaf1.ebx >> 8) & 0xff, 8, "CLFLUSH size");
        assert_ne!(leaf1.ecx & (1 << 31), 0, "hypervisor bit");
        assert_ne!(leaf1.edx & (1 << 28), 0, "HTT");
        assert_eq!(leaf1.eax, entries[1].eax);

        for sub in 0..4 {
            let leaf4 = find(&cpuid, 0x4, sub);
            assert_eq!(leaf4.eax >> 26, 3, "cores per package - 1");
            let sharing = (leaf4.eax >> 14) & 0xfff;
            assert_eq!(sharing, if sub == 3 { 3 } else { 0 }, "subleaf {sub}");
            // Cache type/level and the other registers are kept.
            assert_eq!(leaf4.eax & 0x3fff, entries[2 + sub as usize].eax & 0x3fff);
            assert_eq!(leaf4.ebx, entries[2 + sub as usize].ebx);
        }

        let smt = find(&cpuid, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 3));
        let core = find(&cpuid, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 4, 0x201, 3));

        let amd = find(&cpuid, 0x8000_0008, 0);
        assert_eq!(amd.ecx & 0xff, 3);
        assert_eq!(amd.ecx & 0xf000, 0);
        assert_eq!(amd.eax, 0x3027);

        // Paravirt leaf and leaf 0 pass through byte for byte.
        assert_eq!(find(&cpuid, 0x4000_0000, 0), entries[8]);
        assert_eq!(find(&cpuid, 0x0, 0), entries[0]);
    }

    #[test]
    fn single_vcpu() {
        let mut cpuid = CpuId::from_entries(&host_entries()).expect("cpuid");
        filter_cpuid(&mut cpuid, 0, 1);

        let leaf1 = find(&cpuid, 0x1, 0);
        assert_eq!(leaf1.ebx >> 24, 0);
        assert_eq!((leaf1.ebx >> 16) & 0xff, 1);
        assert_ne!(leaf1.ecx & (1 << 31), 0);
        assert_eq!(leaf1.edx & (1 << 28), 0, "HTT must be clear");

        for sub in 0..4 {
            let leaf4 = find(&cpuid, 0x4, sub);
            assert_eq!(leaf4.eax >> 26, 0);
            assert_eq!((leaf4.eax >> 14) & 0xfff, 0);
        }
        let core = find(&cpuid, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.edx), (0, 1, 0));
        assert_eq!(find(&cpuid, 0x8000_0008, 0).ecx & 0xff, 0);
    }

    #[test]
    fn extended_topology_extra_subleaves_and_amd_leaf() {
        let entries = vec![
            entry(0x1f, 0, [1, 2, 0x100, 9]),
            entry(0x1f, 1, [4, 16, 0x201, 9]),
            entry(0x1f, 2, [7, 32, 0x502, 9]),
            entry(0x1f, 3, [0, 0, 3, 9]),
            entry(0x8000_001e, 0, [9, 0x105, 0x100, 0]),
        ];
        let mut cpuid = CpuId::from_entries(&entries).expect("cpuid");
        filter_cpuid(&mut cpuid, 5, 6);

        let smt = find(&cpuid, 0x1f, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 5));
        let core = find(&cpuid, 0x1f, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (3, 6, 0x201, 5));
        for sub in 2..4 {
            let e = find(&cpuid, 0x1f, sub);
            assert_eq!((e.eax, e.ebx, e.ecx, e.edx), (0, 0, sub, 5));
        }
        let ext = find(&cpuid, 0x8000_001e, 0);
        assert_eq!((ext.eax, ext.ebx, ext.ecx), (5, 5, 0));
    }

    #[test]
    fn id_bits_values() {
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(3), 2);
        assert_eq!(id_bits(4), 2);
        assert_eq!(id_bits(5), 3);
        assert_eq!(id_bits(255), 8);
    }

    #[test]
    fn real_host_cpuid() {
        let kvm = match kvm_ioctls::Kvm::new() {
            Ok(kvm) => kvm,
            Err(e) => {
                eprintln!("skipping real_host_cpuid: cannot open /dev/kvm: {e}");
                return;
            }
        };
        let mut cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .expect("KVM_GET_SUPPORTED_CPUID");
        let pv_before: Vec<_> = cpuid
            .as_slice()
            .iter()
            .filter(|e| (0x4000_0000..0x4000_0100).contains(&e.function))
            .copied()
            .collect();
        filter_cpuid(&mut cpuid, 1, 2);
        let leaf1 = find(&cpuid, 0x1, 0);
        assert_eq!(leaf1.ebx >> 24, 1);
        assert_eq!((leaf1.ebx >> 16) & 0xff, 2);
        assert_ne!(leaf1.ecx & (1 << 31), 0);
        assert_ne!(leaf1.edx & (1 << 28), 0);
        let pv_after: Vec<_> = cpuid
            .as_slice()
            .iter()
            .filter(|e| (0x4000_0000..0x4000_0100).contains(&e.function))
            .copied()
            .collect();
        assert_eq!(pv_before, pv_after);
        if let Some(e) = cpuid.as_slice().iter().find(|e| e.function == 0xb) {
            assert_eq!(e.edx, 1);
        }
    }
}
