//! Intel MultiProcessor Specification 1.4 table ("MP table").
//!
//! Linux (and other legacy-aware guests) discover the processors, the I/O APIC
//! and the interrupt routing of an x86 machine by scanning the last KiB of base
//! memory (among other places) for the MP floating pointer structure. This
//! module writes a minimal, self-consistent MP table there:
//!
//! ```text
//! MPTABLE_START -> floating pointer (16 bytes, "_MP_")
//!                  configuration table header (44 bytes, "PCMP")
//!                  processor entries           (20 bytes each, one per vCPU)
//!                  ISA bus entry               (8 bytes)
//!                  I/O APIC entry              (8 bytes)
//!                  I/O interrupt entries       (8 bytes each, IRQ 0..=23)
//!                  local interrupt entries     (8 bytes each, LINT0/LINT1)
//! ```
//!
//! The whole table must fit in `[MPTABLE_START, MPTABLE_END)` (the 1 KiB
//! extended BIOS data area just below the legacy VGA hole), which limits the
//! number of processors to [`MAX_CPUS`]. The VMM must keep that range out of
//! the usable RAM it reports in the e820 map.

use std::mem::size_of;

use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemory, GuestMemoryError};

/// Guest-physical address where the MP floating pointer structure is written (start of the EBDA).
pub const MPTABLE_START: u64 = 0x9fc00;

/// First guest-physical address past the area reserved for the MP table
/// (start of the legacy VGA hole); the whole table must end at or below it.
pub const MPTABLE_END: u64 = 0xa0000;

/// Local APIC base address advertised in the configuration table header.
const APIC_DEFAULT_PHYS_BASE: u32 = 0xfee0_0000;
/// I/O APIC base address advertised in the I/O APIC entry.
const IO_APIC_DEFAULT_PHYS_BASE: u32 = 0xfec0_0000;
/// Local APIC version reported in processor entries (integrated xAPIC).
const APIC_VERSION: u8 = 0x14;
/// I/O APIC version reported in the I/O APIC entry (KVM's in-kernel IOAPIC).
const IOAPIC_VERSION: u8 = 0x11;
/// Number of I/O APIC pins that get an I/O interrupt entry (IRQ 0..=23).
const IOAPIC_PINS: u8 = 24;
/// MP specification revision 1.4.
const MP_SPEC_REV: u8 = 4;
/// CPU signature (family 6, model 0, stepping 0) put in processor entries.
const CPU_SIGNATURE: u32 = 0x600;
/// Feature flags put in processor entries: FPU (bit 0) | APIC (bit 9).
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
/// Identifier of the single (ISA) bus.
const ISA_BUS_ID: u8 = 0;

// Entry type codes (MP spec table 4-3).
const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;

// Processor entry CPU flags.
const CPU_ENABLED: u8 = 1 << 0;
const CPU_BOOTPROCESSOR: u8 = 1 << 1;
// I/O APIC entry flags.
const MPC_APIC_USABLE: u8 = 1 << 0;

// Interrupt types (MP spec table 4-8).
const MP_IRQ_TYPE_INT: u8 = 0;
const MP_IRQ_TYPE_NMI: u8 = 1;
const MP_IRQ_TYPE_EXTINT: u8 = 3;
/// Polarity/trigger mode "conforms to the bus specification".
const MP_IRQ_FLAGS_DEFAULT: u16 = 0;
/// Destination local APIC id meaning "all local APICs".
const MP_APIC_ALL: u8 = 0xff;

/// MP floating pointer structure (MP spec 4.1).
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
struct MpfIntel {
    signature: [u8; 4],
    physptr: u32,
    length: u8,
    specification: u8,
    checksum: u8,
    feature1: u8,
    feature2: u8,
    feature3: u8,
    feature4: u8,
    feature5: u8,
}

/// MP configuration table header (MP spec 4.2).
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
struct MpcTable {
    signature: [u8; 4],
    length: u16,
    spec: u8,
    checksum: u8,
    oem: [u8; 8],
    productid: [u8; 12],
    oemptr: u32,
    oemsize: u16,
    oemcount: u16,
    lapic: u32,
    ext_length: u16,
    ext_checksum: u8,
    reserved: u8,
}

/// Processor entry (MP spec 4.3.1).
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
struct MpcCpu {
    type_: u8,
    apicid: u8,
    apicver: u8,
    cpuflag: u8,
    cpufeature: u32,
    featureflag: u32,
    reserved: [u32; 2],
}

/// Bus entry (MP spec 4.3.2).
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
struct MpcBus {
    type_: u8,
    busid: u8,
    bustype: [u8; 6],
}

/// I/O APIC entry (MP spec 4.3.3).
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
struct MpcIoapic {
    type_: u8,
    apicid: u8,
    apicver: u8,
    flags: u8,
    apicaddr: u32,
}

/// I/O interrupt assignment entry (MP spec 4.3.4).
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
struct MpcIntsrc {
    type_: u8,
    irqtype: u8,
    irqflag: u16,
    srcbus: u8,
    srcbusirq: u8,
    dstapic: u8,
    dstirq: u8,
}

/// Local interrupt assignment entry (MP spec 4.3.5).
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
struct MpcLintsrc {
    type_: u8,
    irqtype: u8,
    irqflag: u16,
    srcbusid: u8,
    srcbusirq: u8,
    destapic: u8,
    destapiclint: u8,
}

// SAFETY: `#[repr(C, packed)]` struct made only of integers and integer
// arrays: no padding, no pointers, and every bit pattern is a valid value.
unsafe impl ByteValued for MpfIntel {}
// SAFETY: `#[repr(C, packed)]` struct made only of integers and integer
// arrays: no padding, no pointers, and every bit pattern is a valid value.
unsafe impl ByteValued for MpcTable {}
// SAFETY: `#[repr(C, packed)]` struct made only of integers and integer
// arrays: no padding, no pointers, and every bit pattern is a valid value.
unsafe impl ByteValued for MpcCpu {}
// SAFETY: `#[repr(C, packed)]` struct made only of integers and integer
// arrays: no padding, no pointers, and every bit pattern is a valid value.
unsafe impl ByteValued for MpcBus {}
// SAFETY: `#[repr(C, packed)]` struct made only of integers and integer
// arrays: no padding, no pointers, and every bit pattern is a valid value.
unsafe impl ByteValued for MpcIoapic {}
// SAFETY: `#[repr(C, packed)]` struct made only of integers and integer
// arrays: no padding, no pointers, and every bit pattern is a valid value.
unsafe impl ByteValued for MpcIntsrc {}
// SAFETY: `#[repr(C, packed)]` struct made only of integers and integer
// arrays: no padding, no pointers, and every bit pattern is a valid value.
unsafe impl ByteValued for MpcLintsrc {}

// The layouts the MP specification mandates.
const _: () = {
    assert!(size_of::<MpfIntel>() == 16);
    assert!(size_of::<MpcTable>() == 44);
    assert!(size_of::<MpcCpu>() == 20);
    assert!(size_of::<MpcBus>() == 8);
    assert!(size_of::<MpcIoapic>() == 8);
    assert!(size_of::<MpcIntsrc>() == 8);
    assert!(size_of::<MpcLintsrc>() == 8);
};

/// Number of local interrupt entries (ExtINT on LINT0, NMI on LINT1).
const NUM_LINTSRC: usize = 2;

/// Size in bytes of everything but the processor entries.
const FIXED_SIZE: usize = size_of::<MpfIntel>()
    + size_of::<MpcTable>()
    + size_of::<MpcBus>()
    + size_of::<MpcIoapic>()
    + IOAPIC_PINS as usize * size_of::<MpcIntsrc>()
    + NUM_LINTSRC * size_of::<MpcLintsrc>();

/// Largest number of CPUs whose MP table fits in `[MPTABLE_START, MPTABLE_END)`.
///
/// With 1 KiB available, a 284-byte fixed part and 20 bytes per processor this is 37.
pub const MAX_CPUS: u8 = {
    let n = ((MPTABLE_END - MPTABLE_START) as usize - FIXED_SIZE) / size_of::<MpcCpu>();
    // Keep the I/O APIC id (= number of CPUs) below the broadcast id 0xff.
    assert!(n < 0xff);
    n as u8
};

/// Errors from [`setup_mptable`].
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// An MP table must describe at least one processor.
    #[error("the MP table needs at least one CPU")]
    NoCpus,
    /// The table for this many CPUs would not fit below [`MPTABLE_END`].
    #[error("{0} CPUs do not fit in the MP table (at most {MAX_CPUS})")]
    TooManyCpus(u8),
    /// Writing the table into guest memory failed (e.g. the range is not backed by RAM).
    #[error("failed to write the MP table into guest memory")]
    Write(#[source] GuestMemoryError),
}

/// Value that makes the byte sum of `bytes` plus itself 0 (mod 256).
fn checksum_fix(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b)).wrapping_neg()
}

/// Size in bytes of the MP table (floating pointer included) for `num_cpus` CPUs.
fn table_size(num_cpus: u8) -> usize {
    FIXED_SIZE + usize::from(num_cpus) * size_of::<MpcCpu>()
}

/// Builds the configuration table (header followed by all entries), checksummed.
fn build_config_table(num_cpus: u8) -> Vec<u8> {
    let entries_size = table_size(num_cpus) - size_of::<MpfIntel>() - size_of::<MpcTable>();
    let mut entries = Vec::with_capacity(entries_size);
    let mut entry_count: u16 = 0;

    for cpu in 0..num_cpus {
        let mut cpuflag = CPU_ENABLED;
        if cpu == 0 {
            cpuflag |= CPU_BOOTPROCESSOR;
        }
        let entry = MpcCpu {
            type_: MP_PROCESSOR,
            apicid: cpu,
            apicver: APIC_VERSION,
            cpuflag,
            cpufeature: CPU_SIGNATURE,
            featureflag: CPU_FEATURES,
            reserved: [0; 2],
        };
        entries.extend_from_slice(entry.as_slice());
        entry_count += 1;
    }

    let bus = MpcBus {
        type_: MP_BUS,
        busid: ISA_BUS_ID,
        bustype: *b"ISA   ",
    };
    entries.extend_from_slice(bus.as_slice());
    entry_count += 1;

    // The I/O APIC takes the first APIC id after the processors' ones.
    let ioapic_id = num_cpus;
    let ioapic = MpcIoapic {
        type_: MP_IOAPIC,
        apicid: ioapic_id,
        apicver: IOAPIC_VERSION,
        flags: MPC_APIC_USABLE,
        apicaddr: IO_APIC_DEFAULT_PHYS_BASE,
    };
    entries.extend_from_slice(ioapic.as_slice());
    entry_count += 1;

    // Identity-map ISA IRQ n to I/O APIC pin n.
    for irq in 0..IOAPIC_PINS {
        let intsrc = MpcIntsrc {
            type_: MP_INTSRC,
            irqtype: MP_IRQ_TYPE_INT,
            irqflag: MP_IRQ_FLAGS_DEFAULT,
            srcbus: ISA_BUS_ID,
            srcbusirq: irq,
            dstapic: ioapic_id,
            dstirq: irq,
        };
        entries.extend_from_slice(intsrc.as_slice());
        entry_count += 1;
    }

    // Virtual-wire mode: ExtINT on LINT0 and NMI on LINT1 of every local APIC.
    for (irqtype, lint) in [(MP_IRQ_TYPE_EXTINT, 0), (MP_IRQ_TYPE_NMI, 1)] {
        let lintsrc = MpcLintsrc {
            type_: MP_LINTSRC,
            irqtype,
            irqflag: MP_IRQ_FLAGS_DEFAULT,
            srcbusid: ISA_BUS_ID,
            srcbusirq: 0,
            destapic: MP_APIC_ALL,
            destapiclint: lint,
        };
        entries.extend_from_slice(lintsrc.as_slice());
        entry_count += 1;
    }
    debug_assert_eq!(entries.len(), entries_size);

    let mut header = MpcTable {
        signature: *b"PCMP",
        // Cannot truncate: callers bound `num_cpus` by MAX_CPUS, so the table is < 1 KiB.
        length: (size_of::<MpcTable>() + entries.len()) as u16,
        spec: MP_SPEC_REV,
        checksum: 0,
        oem: *b"KVMKIT  ",
        productid: *b"KVMKIT-VMM  ",
        oemptr: 0,
        oemsize: 0,
        oemcount: entry_count,
        lapic: APIC_DEFAULT_PHYS_BASE,
        ext_length: 0,
        ext_checksum: 0,
        reserved: 0,
    };

    let mut table = Vec::with_capacity(size_of::<MpcTable>() + entries.len());
    table.extend_from_slice(header.as_slice());
    table.extend_from_slice(&entries);
    header.checksum = checksum_fix(&table);
    table[..size_of::<MpcTable>()].copy_from_slice(header.as_slice());
    table
}

/// Writes an MP specification 1.4 table describing `num_cpus` processors
/// (APIC ids `0..num_cpus`, CPU 0 being the bootstrap processor), one ISA bus
/// and one I/O APIC (id `num_cpus`, at 0xfec00000, ISA IRQs 0..=23 routed to
/// pins 0..=23) into `mem` at [`MPTABLE_START`].
///
/// # Errors
///
/// [`MptableError::NoCpus`] if `num_cpus` is 0, [`MptableError::TooManyCpus`]
/// if it exceeds [`MAX_CPUS`], [`MptableError::Write`] if the range
/// `[MPTABLE_START, MPTABLE_END)` cannot be written in `mem`.
pub fn setup_mptable<M: GuestMemory>(mem: &M, num_cpus: u8) -> Result<(), MptableError> {
    if num_cpus == 0 {
        return Err(MptableError::NoCpus);
    }
    if num_cpus > MAX_CPUS {
        return Err(MptableError::TooManyCpus(num_cpus));
    }
    let size = table_size(num_cpus);
    debug_assert!(MPTABLE_START + size as u64 <= MPTABLE_END);

    let config_table = build_config_table(num_cpus);

    let mut mpf = MpfIntel {
        signature: *b"_MP_",
        // The configuration table follows the floating pointer directly.
        physptr: (MPTABLE_START + size_of::<MpfIntel>() as u64) as u32,
        // Length in 16-byte paragraphs.
        length: 1,
        specification: MP_SPEC_REV,
        checksum: 0,
        // feature1 == 0: a configuration table is present (no default configuration).
        feature1: 0,
        feature2: 0,
        feature3: 0,
        feature4: 0,
        feature5: 0,
    };
    mpf.checksum = checksum_fix(mpf.as_slice());

    // Zero the whole reserved area first so no stale bytes follow the table.
    let mut image = vec![0u8; (MPTABLE_END - MPTABLE_START) as usize];
    let mpf_end = size_of::<MpfIntel>();
    image[..mpf_end].copy_from_slice(mpf.as_slice());
    image[mpf_end..mpf_end + config_table.len()].copy_from_slice(&config_table);

    mem.write_slice(&image, GuestAddress(MPTABLE_START))
        .map_err(MptableError::Write)?;
    tracing::debug!(num_cpus, size, "wrote MP table at {MPTABLE_START:#x}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The arch code is generic over guest memory; plain RAM does here.
    type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).expect("guest memory")
    }

    fn byte_sum(mem: &GuestMemoryMmap, addr: u64, len: usize) -> u8 {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, GuestAddress(addr)).expect("read");
        buf.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
    }

    fn read_mpf(mem: &GuestMemoryMmap) -> MpfIntel {
        mem.read_obj(GuestAddress(MPTABLE_START)).expect("read mpf")
    }

    fn read_header(mem: &GuestMemoryMmap) -> MpcTable {
        let mpf = read_mpf(mem);
        mem.read_obj(GuestAddress(u64::from(mpf.physptr))).expect("read header")
    }

    /// Walks the entries and returns their type codes, checking the CPU entries on the way.
    fn entry_types(mem: &GuestMemoryMmap) -> Vec<u8> {
        let mpf = read_mpf(mem);
        let header = read_header(mem);
        let end = u64::from(mpf.physptr) + u64::from(header.length);
        let mut addr = u64::from(mpf.physptr) + size_of::<MpcTable>() as u64;
        let mut types = Vec::new();
        while addr < end {
            let ty: u8 = mem.read_obj(GuestAddress(addr)).expect("entry type");
            addr += match ty {
                MP_PROCESSOR => size_of::<MpcCpu>(),
                MP_BUS | MP_IOAPIC | MP_INTSRC | MP_LINTSRC => 8,
                other => panic!("unknown entry type {other}"),
            } as u64;
            types.push(ty);
        }
        assert_eq!(addr, end);
        types
    }

    fn cpu_entries(mem: &GuestMemoryMmap, num_cpus: u8) -> Vec<MpcCpu> {
        let mpf = read_mpf(mem);
        let first = u64::from(mpf.physptr) + size_of::<MpcTable>() as u64;
        (0..u64::from(num_cpus))
            .map(|i| {
                mem.read_obj(GuestAddress(first + i * size_of::<MpcCpu>() as u64))
                    .expect("cpu entry")
            })
            .collect()
    }

    #[test]
    fn floating_pointer() {
        let mem = memory();
        setup_mptable(&mem, 4).expect("setup");
        let mpf = read_mpf(&mem);
        assert_eq!(&{ mpf.signature }, b"_MP_");
        assert_eq!({ mpf.length }, 1);
        assert_eq!({ mpf.specification }, 4);
        assert_eq!(u64::from(mpf.physptr), MPTABLE_START + size_of::<MpfIntel>() as u64);
        assert_eq!(byte_sum(&mem, MPTABLE_START, size_of::<MpfIntel>()), 0);
    }

    #[test]
    fn config_table() {
        let mem = memory();
        for num_cpus in [1u8, 2, 4, 8, MAX_CPUS] {
            setup_mptable(&mem, num_cpus).expect("setup");
            let mpf = read_mpf(&mem);
            let header = read_header(&mem);
            assert_eq!(&{ header.signature }, b"PCMP");
            assert_eq!({ header.spec }, 4);
            assert_eq!(&{ header.oem }, b"KVMKIT  ");
            assert_eq!({ header.lapic }, 0xfee0_0000);
            assert_eq!(byte_sum(&mem, u64::from(mpf.physptr), usize::from(header.length)), 0);
            let expected = u16::from(num_cpus) + 1 + 1 + 24 + 2;
            assert_eq!({ header.oemcount }, expected);

            let types = entry_types(&mem);
            assert_eq!(types.len(), usize::from(expected));
            let count = |t: u8| types.iter().filter(|&&x| x == t).count();
            assert_eq!(count(MP_PROCESSOR), usize::from(num_cpus));
            assert_eq!(count(MP_BUS), 1);
            assert_eq!(count(MP_IOAPIC), 1);
            assert_eq!(count(MP_INTSRC), 24);
            assert_eq!(count(MP_LINTSRC), 2);

            let cpus = cpu_entries(&mem, num_cpus);
            let bsps = cpus.iter().filter(|c| c.cpuflag & CPU_BOOTPROCESSOR != 0).count();
            assert_eq!(bsps, 1);
            assert_ne!(cpus[0].cpuflag & CPU_BOOTPROCESSOR, 0);
            for (i, cpu) in cpus.iter().enumerate() {
                assert_eq!(usize::from(cpu.apicid), i);
                assert_ne!(cpu.cpuflag & CPU_ENABLED, 0);
                assert_eq!({ cpu.featureflag }, 0x201);
                assert_eq!({ cpu.cpufeature }, 0x600);
            }

            // The I/O APIC entry directly follows the processors and the bus.
            let ioapic_addr = u64::from(mpf.physptr)
                + size_of::<MpcTable>() as u64
                + u64::from(num_cpus) * size_of::<MpcCpu>() as u64
                + size_of::<MpcBus>() as u64;
            let ioapic: MpcIoapic = mem.read_obj(GuestAddress(ioapic_addr)).expect("ioapic");
            assert_eq!(ioapic.type_, MP_IOAPIC);
            assert_eq!(ioapic.apicid, num_cpus);
            assert_eq!({ ioapic.apicaddr }, 0xfec0_0000);
        }
    }

    #[test]
    fn zero_cpus_errors() {
        assert!(matches!(setup_mptable(&memory(), 0), Err(MptableError::NoCpus)));
    }

    #[test]
    fn maximum_fits_and_one_more_errors() {
        let mem = memory();
        assert_eq!(MAX_CPUS, 37);
        assert!(MPTABLE_START + table_size(MAX_CPUS) as u64 <= MPTABLE_END);
        assert!(MPTABLE_START + table_size(MAX_CPUS + 1) as u64 > MPTABLE_END);
        setup_mptable(&mem, MAX_CPUS).expect("max fits");
        assert!(matches!(
            setup_mptable(&mem, MAX_CPUS + 1),
            Err(MptableError::TooManyCpus(n)) if n == MAX_CPUS + 1
        ));
        assert!(matches!(
            setup_mptable(&mem, u8::MAX),
            Err(MptableError::TooManyCpus(_))
        ));
    }

    #[test]
    fn memory_without_ebda_errors() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x9_0000)]).expect("memory");
        assert!(matches!(setup_mptable(&mem, 1), Err(MptableError::Write(_))));
    }
}
