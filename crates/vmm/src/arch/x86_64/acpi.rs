//! ACPI tables: RSDP, XSDT, FADT, MADT and DSDT.
//!
//! Guests whose kernel has no MP-table parser (Debian's cloud kernel is built
//! without `CONFIG_X86_MPPARSE`) only find their secondary processors through
//! the ACPI MADT. This module writes a minimal, hardware-reduced ACPI table
//! set into the reserved BIOS area, where Linux scans for the RSDP:
//!
//! ```text
//! RSDP_ADDR -> RSDP (36 bytes, "RSD PTR ", revision 2) ---> XSDT
//!              XSDT ("XSDT")  ----------------------------> FADT, MADT
//!              FADT ("FACP", HW_REDUCED_ACPI) --X_DSDT----> DSDT
//!              MADT ("APIC": local APICs, I/O APIC, ISO, local APIC NMI)
//!              DSDT ("DSDT": \_SB.COM1, \_SB.PS2_ i8042, \_SB.VRnn virtio-mmio devices)
//! ```
//!
//! Every table starts on a 16-byte boundary, one after the other, and the
//! whole set must end at or below [`ACPI_AREA_END`]. The VMM must keep
//! `[RSDP_ADDR, ACPI_AREA_END)` out of the usable RAM it reports in the e820
//! map (kvmkit's map reserves everything from the EBDA up to 1 MiB).
//!
//! Table checksums are maintained by the `acpi_tables` crate; the MADT and the
//! DSDT are built on its generic [`Sdt`] so that structures the crate does not
//! model (interrupt source overrides, local APIC NMIs) can be added too.

use acpi_tables::aml::{self, EISAName, Interrupt, Memory32Fixed, Name, Path, ResourceTemplate, Scope, IO};
use acpi_tables::fadt::{FADTBuilder, Flags as FadtFlags, FADT};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

/// Guest-physical address of the RSDP (inside the reserved BIOS area 0xe0000..0x100000, which Linux also scans).
pub const RSDP_ADDR: u64 = 0xe_0000;

/// First guest-physical address past the area reserved for the ACPI tables
/// (1 MiB, the end of the legacy BIOS area); all tables must end at or below it.
pub const ACPI_AREA_END: u64 = 0x10_0000;

/// Largest accepted vCPU count: APIC ids are 8 bits, 0xff is the broadcast id,
/// and the I/O APIC takes the id right after the last processor.
pub const MAX_CPUS: u8 = 254;

/// Largest number of virtio-mmio devices the DSDT can name (`VR00`..`VRFF`).
pub const MAX_MMIO_DEVICES: usize = 256;

/// OEM id put in every table header.
const OEM_ID: [u8; 6] = *b"KVMKIT";
/// OEM revision put in every table header.
const OEM_REVISION: u32 = 1;
/// Hypervisor vendor identity advertised in the FADT.
const HYPERVISOR_VENDOR_ID: [u8; 8] = *b"KVMKIT  ";
/// Alignment of every table in guest memory.
const TABLE_ALIGN: u64 = 16;

/// Local APIC base address advertised in the MADT.
const LOCAL_APIC_ADDR: u32 = 0xfee0_0000;
/// I/O APIC base address advertised in the MADT.
const IO_APIC_ADDR: u32 = 0xfec0_0000;
/// MADT flag: the system also has dual 8259 PICs (KVM's in-kernel irqchip does).
const MADT_PCAT_COMPAT: u32 = 1 << 0;
/// MADT revision for ACPI 6.5 (the FADT version the crate emits).
const MADT_REVISION: u8 = 6;
/// DSDT revision 2: AML integers are 64 bits wide.
const DSDT_REVISION: u8 = 2;

/// MADT structure type: Interrupt Source Override.
const MADT_TYPE_INT_SRC_OVERRIDE: u8 = 2;
/// MADT structure type: Local APIC NMI.
const MADT_TYPE_LOCAL_APIC_NMI: u8 = 4;
/// MPS INTI flags "conforms to the bus specification" (ISA: edge, active high).
const MPS_INTI_CONFORMS: u16 = 0;
/// ACPI processor UID meaning "all processors" in a Local APIC NMI structure.
const ALL_PROCESSORS: u8 = 0xff;
/// Local APIC pin wired to NMI.
const NMI_LINT: u8 = 1;
/// ISA IRQ of the PIT (i8254).
const PIT_ISA_IRQ: u8 = 0;
/// GSI the PIT interrupt reaches. kvmkit keeps KVM's default GSI routing (it
/// never calls `KVM_SET_GSI_ROUTING`), in which GSI `n` < 16 drives both PIC
/// pin `n` and I/O APIC pin `n`, so the in-kernel PIT (GSI 0) arrives on I/O
/// APIC pin 0 — the same identity mapping the MP table describes. (QEMU
/// advertises 0 -> 2 only because it installs its own routing that moves the
/// PIT to pin 2.)
const PIT_GSI: u32 = 0;

/// IA-PC boot architecture flag: the 8042 keyboard controller is present
/// (kvmkit emulates one at 0x60/0x64, used for `reboot=k`).
const IAPC_BOOT_ARCH_8042: u16 = 1 << 1;
/// IA-PC boot architecture flag: VGA is not present (do not probe it).
const IAPC_BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;
/// IA-PC boot architecture flag: MSIs must not be enabled (there is no PCI bus).
const IAPC_BOOT_ARCH_MSI_NOT_SUPPORTED: u16 = 1 << 3;
/// IA-PC boot architecture flag: there is no CMOS RTC at ports 0x70/0x71.
const IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
/// IA-PC boot architecture flags advertised in the FADT.
const IAPC_BOOT_ARCH: u16 = IAPC_BOOT_ARCH_8042
    | IAPC_BOOT_ARCH_VGA_NOT_PRESENT
    | IAPC_BOOT_ARCH_MSI_NOT_SUPPORTED
    | IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT;

/// I/O port base of COM1, described in the DSDT.
const COM1_PORT: u16 = 0x3f8;
/// Number of I/O ports COM1 decodes.
const COM1_PORT_COUNT: u8 = 8;
/// GSI of COM1's interrupt (ISA IRQ 4).
const COM1_GSI: u32 = 4;
/// `_HID` of virtio-mmio devices (the Linux virtio_mmio driver's ACPI id).
const VIRTIO_MMIO_HID: &str = "LNRO0005";
/// I/O ports of the i8042 keyboard controller: data, and command/status.
const I8042_DATA_PORT: u16 = 0x60;
const I8042_COMMAND_PORT: u16 = 0x64;
/// GSI of the keyboard's interrupt (ISA IRQ 1).
const I8042_KBD_GSI: u32 = 1;

/// One virtio-mmio device to describe in the DSDT (unused for now, but supported).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcpiMmioDevice {
    /// Guest-physical base address of the device's register window (must lie below 4 GiB).
    pub base: u64,
    /// Size in bytes of the register window.
    pub size: u64,
    /// GSI (I/O APIC pin) of the device's edge-triggered, active-high interrupt.
    pub gsi: u32,
}

/// Errors from [`setup_acpi_tables`].
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The MADT must describe at least one processor.
    #[error("the ACPI tables need at least one CPU")]
    NoCpus,
    /// APIC ids are 8 bits wide (and one is taken by the I/O APIC).
    #[error("{0} CPUs do not fit in 8-bit APIC ids (at most {MAX_CPUS})")]
    TooManyCpus(u8),
    /// More virtio-mmio devices than the DSDT can name.
    #[error("{0} virtio-mmio devices do not fit in the DSDT (at most {MAX_MMIO_DEVICES})")]
    TooManyMmioDevices(usize),
    /// A virtio-mmio register window is empty or does not lie below 4 GiB.
    #[error("virtio-mmio window {base:#x}+{size:#x} is empty or not below 4 GiB")]
    BadMmioDevice {
        /// Base address of the offending window.
        base: u64,
        /// Size of the offending window.
        size: u64,
    },
    /// The tables would extend past [`ACPI_AREA_END`].
    #[error("the ACPI tables would end at {end:#x}, past {ACPI_AREA_END:#x}")]
    TablesTooLarge {
        /// First address past the last table.
        end: u64,
    },
    /// Writing the tables into guest memory failed (e.g. the range is not backed by RAM).
    #[error("failed to write the ACPI tables into guest memory")]
    Write(#[source] GuestMemoryError),
}

/// Serializes any `acpi_tables` object into a byte vector.
fn to_bytes(aml: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    aml.to_aml_bytes(&mut bytes);
    bytes
}

/// Builds the MADT: local APICs, the I/O APIC, the PIT override and the LINT1 NMI.
fn build_madt(num_cpus: u8) -> Sdt {
    let mut madt = Sdt::new(*b"APIC", 44, MADT_REVISION, OEM_ID, *b"KVMKMADT", OEM_REVISION);
    madt.write_u32(36, LOCAL_APIC_ADDR);
    madt.write_u32(40, MADT_PCAT_COMPAT);

    for cpu in 0..num_cpus {
        // ACPI processor UID = APIC id = vCPU index.
        madt.append_slice(&to_bytes(&ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled)));
    }

    // The I/O APIC takes the first APIC id after the processors' ones (as in the MP table).
    madt.append_slice(&to_bytes(&IoApic::new(num_cpus, IO_APIC_ADDR, 0)));

    // Interrupt Source Override: bus 0 (ISA), source IRQ, GSI, MPS INTI flags.
    let mut iso = vec![MADT_TYPE_INT_SRC_OVERRIDE, 10, 0, PIT_ISA_IRQ];
    iso.extend_from_slice(&PIT_GSI.to_le_bytes());
    iso.extend_from_slice(&MPS_INTI_CONFORMS.to_le_bytes());
    madt.append_slice(&iso);

    // Local APIC NMI: processor UID, MPS INTI flags, LINT#.
    let mut nmi = vec![MADT_TYPE_LOCAL_APIC_NMI, 6, ALL_PROCESSORS];
    nmi.extend_from_slice(&MPS_INTI_CONFORMS.to_le_bytes());
    nmi.push(NMI_LINT);
    madt.append_slice(&nmi);

    madt
}

/// AML for the COM1 UART (`\_SB.COM1`, PNP0501, ports 0x3f8..=0x3ff, IRQ 4).
fn com1_aml() -> Vec<u8> {
    let hid = EISAName::new("PNP0501");
    let io = IO::new(COM1_PORT, COM1_PORT, 1, COM1_PORT_COUNT);
    // Consumer, edge-triggered, active high, exclusive.
    let irq = Interrupt::new(true, true, false, false, COM1_GSI);
    let crs = ResourceTemplate::new(vec![&io, &irq]);
    to_bytes(&aml::Device::new(
        Path::new("COM1"),
        vec![
            &Name::new(Path::new("_HID"), &hid),
            &Name::new(Path::new("_UID"), &aml::ZERO),
            &Name::new(Path::new("_CRS"), &crs),
        ],
    ))
}

/// AML for the i8042 keyboard controller (`\_SB.PS2_`, PNP0303, ports 0x60
/// and 0x64, IRQ 1), as Firecracker describes it. Hardware-reduced ACPI
/// leaves Linux no legacy PIC, so an ISA IRQ exists only once a device
/// claims it: without this device Linux's i8042 driver probes the ports
/// directly and its request for IRQ 1 fails ("probe of i8042 failed with
/// error -22"), so there is no keyboard and no Ctrl-Alt-Del. There is no AUX
/// (PNP0F13) device: Linux then leaves the AUX port alone.
fn i8042_aml() -> Vec<u8> {
    let hid = EISAName::new("PNP0303");
    let data = IO::new(I8042_DATA_PORT, I8042_DATA_PORT, 1, 1);
    let command = IO::new(I8042_COMMAND_PORT, I8042_COMMAND_PORT, 1, 1);
    // Consumer, edge-triggered, active high, exclusive.
    let irq = Interrupt::new(true, true, false, false, I8042_KBD_GSI);
    let crs = ResourceTemplate::new(vec![&data, &command, &irq]);
    to_bytes(&aml::Device::new(
        Path::new("PS2_"),
        vec![
            &Name::new(Path::new("_HID"), &hid),
            &Name::new(Path::new("_UID"), &aml::ZERO),
            &Name::new(Path::new("_CRS"), &crs),
        ],
    ))
}

/// AML for virtio-mmio device number `index` (`\_SB.VRxx`, `xx` = `index` in hex).
fn virtio_mmio_aml(index: u8, device: &AcpiMmioDevice) -> Result<Vec<u8>, AcpiError> {
    let bad = || AcpiError::BadMmioDevice {
        base: device.base,
        size: device.size,
    };
    let end = device.base.checked_add(device.size).ok_or_else(bad)?;
    if device.size == 0 || end > 1 << 32 {
        return Err(bad());
    }
    let base = u32::try_from(device.base).map_err(|_| bad())?;
    let size = u32::try_from(device.size).map_err(|_| bad())?;

    let uid = u32::from(index);
    let mem = Memory32Fixed::new(true, base, size);
    // Consumer, edge-triggered, active high, exclusive (as Firecracker's virtio-mmio AML).
    let irq = Interrupt::new(true, true, false, false, device.gsi);
    let crs = ResourceTemplate::new(vec![&mem, &irq]);
    let hid: &'static str = VIRTIO_MMIO_HID;
    Ok(to_bytes(&aml::Device::new(
        Path::new(&format!("VR{index:02X}")),
        vec![
            &Name::new(Path::new("_HID"), &hid),
            &Name::new(Path::new("_UID"), &uid),
            &Name::new(Path::new("_CCA"), &aml::ONE),
            &Name::new(Path::new("_CRS"), &crs),
        ],
    )))
}

/// Guest-physical address of the 16-byte VM generation ID (VMGenID): the
/// last page of the ACPI area, which the e820 map leaves out of RAM.
pub const VMGENID_ADDR: u64 = ACPI_AREA_END - 0x1000;
/// GSI of the Generic Event Device that tells the guest the generation ID
/// changed (ISA IRQ 3, unused otherwise; virtio devices start at 5).
pub const VMGENID_GSI: u32 = 3;

/// AML for the VM generation ID (`\_SB.VGEN`): `_HID "VMGENCTR"`, `_CID
/// "VM_Gen_Counter"` and `ADDR`, the ID's address as a package of its low
/// and high 32 bits, which Linux's `vmgenid` driver reads; and a Generic
/// Event Device (`\_SB.GED_`, ACPI0013, hardware-reduced ACPI's event
/// source) on [`VMGENID_GSI`] whose `_EVT` notifies `VGEN` (0x80): after a
/// restore kvmkit writes a new ID and raises that GSI, and Linux reseeds
/// its RNG (`add_vmfork_randomness`).
fn vmgenid_aml() -> Vec<u8> {
    let hid: &'static str = "VMGENCTR";
    let cid: &'static str = "VM_Gen_Counter";
    let low = (VMGENID_ADDR & 0xffff_ffff) as u32;
    let high = (VMGENID_ADDR >> 32) as u32;
    let addr = aml::Package::new(vec![&low, &high]);
    let mut out = to_bytes(&aml::Device::new(
        Path::new("VGEN"),
        vec![
            &Name::new(Path::new("_HID"), &hid),
            &Name::new(Path::new("_CID"), &cid),
            &Name::new(Path::new("_DDN"), &cid),
            &Name::new(Path::new("ADDR"), &addr),
        ],
    ));
    let ged: &'static str = "ACPI0013";
    // Consumer, edge-triggered, active high, exclusive.
    let irq = Interrupt::new(true, true, false, false, VMGENID_GSI);
    let crs = ResourceTemplate::new(vec![&irq]);
    let vgen = Path::new("\\_SB_.VGEN");
    let notify_value: u8 = 0x80;
    let notify = aml::Notify::new(&vgen, &notify_value);
    let evt = aml::Method::new(Path::new("_EVT"), 1, true, vec![&notify]);
    out.extend(to_bytes(&aml::Device::new(
        Path::new("GED_"),
        vec![
            &Name::new(Path::new("_HID"), &ged),
            &Name::new(Path::new("_UID"), &aml::ZERO),
            &Name::new(Path::new("_CRS"), &crs),
            &evt,
        ],
    )));
    out
}

/// I/O port of the hardware-reduced ACPI sleep control register.
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x610;
/// I/O port of the hardware-reduced ACPI sleep status register.
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x611;
/// I/O port of the ACPI reset register.
pub const ACPI_RESET_PORT: u16 = 0x612;
/// Value written to [`ACPI_RESET_PORT`] to reset.
pub const ACPI_RESET_VALUE: u8 = 1;
/// SLP_TYP of the S5 (soft off) state, as the DSDT's `_S5_` says.
pub const ACPI_S5_SLP_TYP: u8 = 5;

/// Builds the DSDT: `_S5_` (soft-off sleep type) and a `\_SB` scope holding
/// COM1, the i8042 and one device per virtio-mmio window.
fn build_dsdt(mmio_devices: &[AcpiMmioDevice]) -> Result<Sdt, AcpiError> {
    let mut devices = vec![com1_aml(), i8042_aml(), vmgenid_aml()];
    for (index, device) in mmio_devices.iter().enumerate() {
        let index = u8::try_from(index).map_err(|_| AcpiError::TooManyMmioDevices(mmio_devices.len()))?;
        devices.push(virtio_mmio_aml(index, device)?);
    }
    // Each device is serialized on its own (its AML objects borrow locals);
    // `RawAml` lets the scope take the resulting bytes as children.
    let children: Vec<RawAml> = devices.into_iter().map(RawAml).collect();
    let child_refs: Vec<&dyn Aml> = children.iter().map(|c| c as &dyn Aml).collect();
    let scope = Scope::new(Path::new("\\_SB_"), child_refs);

    let mut dsdt = Sdt::new(*b"DSDT", 36, DSDT_REVISION, OEM_ID, *b"KVMKDSDT", OEM_REVISION);
    let s5 = aml::Package::new(vec![&ACPI_S5_SLP_TYP]);
    dsdt.append_slice(&to_bytes(&Name::new(Path::new("_S5_"), &s5)));
    dsdt.append_slice(&to_bytes(&scope));
    Ok(dsdt)
}

/// Already-serialized AML, emitted verbatim.
struct RawAml(Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

/// Builds the FADT: hardware-reduced ACPI, DSDT at `dsdt_addr`.
fn build_fadt(dsdt_addr: u64) -> FADT {
    let io_reg = |port: u16| GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, u64::from(port));
    let mut fadt = FADTBuilder::new(OEM_ID, *b"KVMKFACP", OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(FadtFlags::HwReducedAcpi)
        // No fixed-feature power/sleep buttons.
        .flag(FadtFlags::PwrButton)
        .flag(FadtFlags::SlpButton)
        .flag(FadtFlags::ResetRegSup);
    // Hardware-reduced sleep and reset registers (kvmkit's AcpiPm device):
    // writing SLP_TYP=5|SLP_EN to the sleep control register powers off.
    fadt.sleep_control_reg = io_reg(ACPI_SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io_reg(ACPI_SLEEP_STATUS_PORT);
    fadt.reset_reg = io_reg(ACPI_RESET_PORT);
    fadt.reset_value = ACPI_RESET_VALUE;
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(HYPERVISOR_VENDOR_ID).into();
    fadt.finalize()
}

/// Rounds `addr` up to the next table boundary.
fn align_up(addr: u64) -> u64 {
    addr.div_ceil(TABLE_ALIGN) * TABLE_ALIGN
}

/// Places tables of the given sizes one after the other from `start`, each
/// 16-byte aligned; returns their addresses, or an error if the last one would
/// end past `end`.
fn place_tables<const N: usize>(start: u64, end: u64, sizes: [usize; N]) -> Result<[u64; N], AcpiError> {
    let mut addrs = [0; N];
    let mut next = start;
    for (addr, size) in addrs.iter_mut().zip(sizes) {
        *addr = align_up(next);
        next = addr.saturating_add(size as u64);
        if next > end {
            return Err(AcpiError::TablesTooLarge { end: next });
        }
    }
    Ok(addrs)
}

/// Writes the ACPI tables (RSDP, XSDT, FADT, MADT, DSDT) for `num_cpus` vCPUs
/// and the given virtio-mmio devices into guest memory, starting at
/// [`RSDP_ADDR`]; returns the RSDP's guest-physical address (to put in
/// `boot_params.acpi_rsdp_addr` or PVH's `rsdp_paddr`; Linux also finds it by
/// scanning the BIOS area).
///
/// vCPU `i` gets APIC id and ACPI processor UID `i`; the I/O APIC gets id
/// `num_cpus`, matching the MP table.
///
/// # Errors
///
/// [`AcpiError::NoCpus`] if `num_cpus` is 0, [`AcpiError::TooManyCpus`] if it
/// exceeds [`MAX_CPUS`], [`AcpiError::TooManyMmioDevices`] /
/// [`AcpiError::BadMmioDevice`] for device lists the DSDT cannot describe,
/// [`AcpiError::TablesTooLarge`] if the tables would pass [`ACPI_AREA_END`],
/// and [`AcpiError::Write`] if the range is not backed by guest memory.
pub fn setup_acpi_tables<M: GuestMemory>(
    mem: &M,
    num_cpus: u8,
    mmio_devices: &[AcpiMmioDevice],
) -> Result<u64, AcpiError> {
    if num_cpus == 0 {
        return Err(AcpiError::NoCpus);
    }
    if num_cpus > MAX_CPUS {
        return Err(AcpiError::TooManyCpus(num_cpus));
    }
    if mmio_devices.len() > MAX_MMIO_DEVICES {
        return Err(AcpiError::TooManyMmioDevices(mmio_devices.len()));
    }

    let madt = build_madt(num_cpus);
    let dsdt = build_dsdt(mmio_devices)?;
    // The XSDT lists the FADT and the MADT.
    const XSDT_ENTRIES: usize = 2;
    let xsdt_len = 36 + XSDT_ENTRIES * 8;

    let sizes = [Rsdp::len(), xsdt_len, FADT::len(), madt.len(), dsdt.len()];
    let [rsdp_addr, xsdt_addr, fadt_addr, madt_addr, dsdt_addr] = place_tables(RSDP_ADDR, VMGENID_ADDR, sizes)?;

    let fadt = build_fadt(dsdt_addr);
    let mut xsdt = XSDT::new(OEM_ID, *b"KVMKXSDT", OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let rsdp = Rsdp::new(OEM_ID, xsdt_addr);

    let tables: [(u64, Vec<u8>); 5] = [
        (rsdp_addr, to_bytes(&rsdp)),
        (xsdt_addr, to_bytes(&xsdt)),
        (fadt_addr, to_bytes(&fadt)),
        (madt_addr, madt.as_slice().to_vec()),
        (dsdt_addr, dsdt.as_slice().to_vec()),
    ];
    for ((addr, bytes), size) in tables.iter().zip(sizes) {
        debug_assert_eq!(bytes.len(), size, "table at {addr:#x} has the size it was placed with");
        mem.write_slice(bytes, GuestAddress(*addr)).map_err(AcpiError::Write)?;
    }
    Ok(rsdp_addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The arch code is generic over guest memory; plain RAM does here.
    type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).expect("guest memory")
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut bytes = vec![0; len];
        mem.read_slice(&mut bytes, GuestAddress(addr))
            .expect("read guest memory");
        bytes
    }

    fn u32_at(bytes: &[u8], offset: usize) -> u32 {
        u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"))
    }

    fn u64_at(bytes: &[u8], offset: usize) -> u64 {
        u64::from_le_bytes(bytes[offset..offset + 8].try_into().expect("8 bytes"))
    }

    fn byte_sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
    }

    /// Reads the whole system description table at `addr` (header length included).
    fn read_table(mem: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
        let header = read(mem, addr, 36);
        let len = u32_at(&header, 4) as usize;
        assert!(len >= 36, "table at {addr:#x} is {len} bytes long");
        assert!(
            addr + len as u64 <= ACPI_AREA_END,
            "table at {addr:#x} ends past the BIOS area"
        );
        read(mem, addr, len)
    }

    /// Sets the tables up and returns (memory, RSDP address).
    fn setup(num_cpus: u8, devices: &[AcpiMmioDevice]) -> (GuestMemoryMmap, u64) {
        let mem = memory();
        let rsdp = setup_acpi_tables(&mem, num_cpus, devices).expect("setup_acpi_tables");
        (mem, rsdp)
    }

    fn xsdt_entries(mem: &GuestMemoryMmap, rsdp_addr: u64) -> Vec<u64> {
        let rsdp = read(mem, rsdp_addr, 36);
        let xsdt = read_table(mem, u64_at(&rsdp, 24));
        assert_eq!(&xsdt[0..4], b"XSDT");
        xsdt[36..].chunks(8).map(|c| u64_at(c, 0)).collect()
    }

    /// Finds the table with `signature` among the XSDT entries.
    fn find_table(mem: &GuestMemoryMmap, rsdp_addr: u64, signature: &[u8; 4]) -> (u64, Vec<u8>) {
        xsdt_entries(mem, rsdp_addr)
            .into_iter()
            .map(|addr| (addr, read_table(mem, addr)))
            .find(|(_, t)| &t[0..4] == signature)
            .unwrap_or_else(|| panic!("no {} table", String::from_utf8_lossy(signature)))
    }

    fn read_dsdt(mem: &GuestMemoryMmap, rsdp_addr: u64) -> (u64, Vec<u8>) {
        let (_, fadt) = find_table(mem, rsdp_addr, b"FACP");
        let addr = u64_at(&fadt, 140); // X_DSDT
        (addr, read_table(mem, addr))
    }

    /// MADT interrupt controller structures as (type, bytes).
    fn madt_structures(madt: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut structures = Vec::new();
        let mut offset = 44;
        while offset < madt.len() {
            let (kind, len) = (madt[offset], madt[offset + 1] as usize);
            assert!(len >= 2 && offset + len <= madt.len(), "bad MADT structure at {offset}");
            structures.push((kind, madt[offset..offset + len].to_vec()));
            offset += len;
        }
        assert_eq!(offset, madt.len(), "MADT structures fill the table exactly");
        structures
    }

    fn count(haystack: &[u8], needle: &[u8]) -> usize {
        haystack.windows(needle.len()).filter(|w| *w == needle).count()
    }

    fn two_devices() -> [AcpiMmioDevice; 2] {
        [
            AcpiMmioDevice {
                base: 0xd000_0000,
                size: 0x1000,
                gsi: 5,
            },
            AcpiMmioDevice {
                base: 0xd000_1000,
                size: 0x1000,
                gsi: 6,
            },
        ]
    }

    #[test]
    fn rsdp_signature_and_checksums() {
        let (mem, rsdp_addr) = setup(2, &[]);
        assert_eq!(rsdp_addr, RSDP_ADDR);
        assert_eq!(rsdp_addr % 16, 0, "Linux scans for the RSDP on 16-byte boundaries");
        let rsdp = read(&mem, rsdp_addr, 36);
        assert_eq!(&rsdp[0..8], b"RSD PTR ");
        assert_eq!(rsdp[15], 2, "revision 2 (ACPI 2.0+, has an XSDT)");
        assert_eq!(u32_at(&rsdp, 20), 36, "length");
        assert_eq!(byte_sum(&rsdp[..20]), 0, "ACPI 1.0 checksum");
        assert_eq!(byte_sum(&rsdp), 0, "extended checksum");
    }

    #[test]
    fn xsdt_checksum_and_entries() {
        let (mem, rsdp_addr) = setup(2, &[]);
        let rsdp = read(&mem, rsdp_addr, 36);
        let xsdt = read_table(&mem, u64_at(&rsdp, 24));
        assert_eq!(&xsdt[0..4], b"XSDT");
        assert_eq!(byte_sum(&xsdt), 0);
        let signatures: Vec<Vec<u8>> = xsdt_entries(&mem, rsdp_addr)
            .into_iter()
            .map(|addr| read_table(&mem, addr)[0..4].to_vec())
            .collect();
        assert_eq!(signatures, vec![b"FACP".to_vec(), b"APIC".to_vec()]);
    }

    #[test]
    fn every_table_checksum_alignment_and_no_overlap() {
        for num_cpus in [1, 2, 64, MAX_CPUS] {
            let (mem, rsdp_addr) = setup(num_cpus, &two_devices());
            let mut ranges = vec![(rsdp_addr, 36)];
            let xsdt_addr = u64_at(&read(&mem, rsdp_addr, 36), 24);
            let mut addrs = vec![xsdt_addr];
            addrs.extend(xsdt_entries(&mem, rsdp_addr));
            addrs.push(read_dsdt(&mem, rsdp_addr).0);
            for addr in addrs {
                let table = read_table(&mem, addr);
                assert_eq!(
                    byte_sum(&table),
                    0,
                    "checksum of {}",
                    String::from_utf8_lossy(&table[0..4])
                );
                assert_eq!(&table[10..16], b"KVMKIT", "OEM id");
                assert_eq!(addr % 16, 0);
                ranges.push((addr, table.len() as u64));
            }
            ranges.sort();
            for pair in ranges.windows(2) {
                assert!(pair[0].0 + pair[0].1 <= pair[1].0, "tables overlap: {ranges:x?}");
            }
            let (start, _) = ranges[0];
            let (last, len) = ranges[ranges.len() - 1];
            assert!(start >= RSDP_ADDR && last + len <= ACPI_AREA_END);
        }
    }

    #[test]
    fn madt_describes_cpus_ioapic_override_and_nmi() {
        for num_cpus in [1u8, 2, 7, MAX_CPUS] {
            let (mem, rsdp_addr) = setup(num_cpus, &[]);
            let (_, madt) = find_table(&mem, rsdp_addr, b"APIC");
            assert_eq!(u32_at(&madt, 36), 0xfee0_0000, "local APIC address");
            assert_eq!(u32_at(&madt, 40), MADT_PCAT_COMPAT, "flags");
            let structures = madt_structures(&madt);

            let lapics: Vec<&Vec<u8>> = structures.iter().filter(|(t, _)| *t == 0).map(|(_, s)| s).collect();
            assert_eq!(lapics.len(), usize::from(num_cpus));
            for (i, lapic) in lapics.iter().enumerate() {
                assert_eq!(lapic.len(), 8);
                assert_eq!(usize::from(lapic[2]), i, "ACPI processor UID");
                assert_eq!(usize::from(lapic[3]), i, "APIC id");
                assert_eq!(u32_at(lapic, 4), 1, "enabled");
            }

            let ioapics: Vec<&Vec<u8>> = structures.iter().filter(|(t, _)| *t == 1).map(|(_, s)| s).collect();
            assert_eq!(ioapics.len(), 1);
            let ioapic = ioapics[0];
            assert_eq!(ioapic.len(), 12);
            assert_eq!(ioapic[2], num_cpus, "I/O APIC id follows the CPUs'");
            assert_eq!(u32_at(ioapic, 4), 0xfec0_0000);
            assert_eq!(u32_at(ioapic, 8), 0, "GSI base");

            let isos: Vec<&Vec<u8>> = structures.iter().filter(|(t, _)| *t == 2).map(|(_, s)| s).collect();
            assert_eq!(isos.len(), 1);
            assert_eq!(isos[0].len(), 10);
            assert_eq!((isos[0][2], isos[0][3]), (0, PIT_ISA_IRQ), "ISA bus, IRQ 0");
            assert_eq!(u32_at(isos[0], 4), PIT_GSI);

            let nmis: Vec<&Vec<u8>> = structures.iter().filter(|(t, _)| *t == 4).map(|(_, s)| s).collect();
            assert_eq!(nmis.len(), 1);
            assert_eq!(nmis[0].as_slice(), &[4, 6, 0xff, 0, 0, 1], "all processors, LINT1");

            assert_eq!(structures.len(), usize::from(num_cpus) + 3);
        }
    }

    #[test]
    fn fadt_is_hw_reduced_and_points_to_dsdt() {
        let (mem, rsdp_addr) = setup(1, &[]);
        let (_, fadt) = find_table(&mem, rsdp_addr, b"FACP");
        assert_eq!(fadt.len(), 276, "ACPI 6.5 FADT");
        assert_eq!(u32_at(&fadt, 40), 0, "32-bit DSDT pointer unused");
        assert_ne!(u32_at(&fadt, 112) & (1 << 20), 0, "HW_REDUCED_ACPI");
        let iapc = u16::from_le_bytes([fadt[109], fadt[110]]);
        assert_eq!(iapc, IAPC_BOOT_ARCH);
        assert_ne!(iapc & IAPC_BOOT_ARCH_8042, 0, "the i8042 stays visible for reboot=k");
        let (dsdt_addr, dsdt) = read_dsdt(&mem, rsdp_addr);
        assert_ne!(dsdt_addr, 0);
        assert_eq!(&dsdt[0..4], b"DSDT");
        assert_eq!(byte_sum(&dsdt), 0);
    }

    #[test]
    fn power_off_is_described_by_sleep_registers_and_s5() {
        let (mem, rsdp_addr) = setup(1, &[]);
        let (_, fadt) = find_table(&mem, rsdp_addr, b"FACP");
        // RESET_REG (GAS at 116, value at 128), SLEEP_CONTROL_REG at 244, SLEEP_STATUS_REG at 256.
        assert_eq!(
            (fadt[116], u64_at(&fadt, 120), fadt[128]),
            (1, u64::from(ACPI_RESET_PORT), ACPI_RESET_VALUE)
        );
        assert_eq!((fadt[244], u64_at(&fadt, 248)), (1, u64::from(ACPI_SLEEP_CONTROL_PORT)));
        assert_eq!((fadt[256], u64_at(&fadt, 260)), (1, u64::from(ACPI_SLEEP_STATUS_PORT)));
        assert_ne!(u32_at(&fadt, 112) & (1 << 10), 0, "RESET_REG_SUP");
        let (_, dsdt) = read_dsdt(&mem, rsdp_addr);
        assert!(dsdt.windows(4).any(|w| w == b"_S5_"), "DSDT names the S5 sleep state");
    }

    #[test]
    fn dsdt_describes_the_vm_generation_id_and_its_event_device() {
        let (mem, rsdp_addr) = setup(1, &[]);
        let (dsdt_addr, dsdt) = read_dsdt(&mem, rsdp_addr);
        assert!(
            dsdt_addr + dsdt.len() as u64 <= VMGENID_ADDR,
            "the tables end before the ID"
        );
        for name in [
            &b"VGEN"[..],
            b"VMGENCTR\0",
            b"VM_Gen_Counter\0",
            b"ADDR",
            b"GED_",
            b"ACPI0013\0",
            b"_EVT",
        ] {
            assert!(
                count(&dsdt, name) >= 1,
                "{:?} in the DSDT",
                String::from_utf8_lossy(name)
            );
        }
        // ADDR: Package (2) { DWord low, Zero (high) }.
        let mut addr = b"ADDR".to_vec();
        addr.extend_from_slice(&[0x12, 0x08, 2, 0x0c]);
        addr.extend_from_slice(&(VMGENID_ADDR as u32).to_le_bytes());
        addr.push(0x00);
        assert_eq!(count(&dsdt, &addr), 1, "ADDR package in {dsdt:x?}");
        // The GED's interrupt: consumer, edge, active high, exclusive, GSI 3.
        let mut interrupt = vec![0x89, 6, 0, 0b0011, 1];
        interrupt.extend_from_slice(&VMGENID_GSI.to_le_bytes());
        assert_eq!(count(&dsdt, &interrupt), 1);
        // _EVT (1 argument, serialized) is Notify (\_SB_.VGEN, 0x80).
        assert_eq!(
            count(
                &dsdt,
                &[0x86, b'\\', 0x2e, b'_', b'S', b'B', b'_', b'V', b'G', b'E', b'N', 0x0a, 0x80]
            ),
            1
        );
    }

    #[test]
    fn dsdt_describes_com1_and_mmio_devices() {
        let (mem, rsdp_addr) = setup(2, &[]);
        let (_, dsdt) = read_dsdt(&mem, rsdp_addr);
        assert_eq!(count(&dsdt, b"LNRO0005"), 0);
        assert_eq!(count(&dsdt, b"COM1"), 1);
        // The i8042: its two one-port I/O descriptors (tag, 16-bit decode,
        // min, max, alignment, length) and IRQ 1.
        assert_eq!(count(&dsdt, b"PS2_"), 1);
        assert_eq!(count(&dsdt, &[0x47, 1, 0x60, 0, 0x60, 0, 1, 1]), 1);
        assert_eq!(count(&dsdt, &[0x47, 1, 0x64, 0, 0x64, 0, 1, 1]), 1);
        assert_eq!(count(&dsdt, &[0x89, 6, 0, 0b0011, 1, 1, 0, 0, 0]), 1);

        let devices = two_devices();
        let (mem, rsdp_addr) = setup(2, &devices);
        let (_, dsdt) = read_dsdt(&mem, rsdp_addr);
        assert_eq!(count(&dsdt, b"LNRO0005"), 2);
        assert_eq!(count(&dsdt, b"VR00"), 1);
        assert_eq!(count(&dsdt, b"VR01"), 1);
        for device in devices {
            // Memory32Fixed descriptor: tag, length, read-write, base, size.
            let mut descriptor = vec![0x86, 9, 0, 1];
            descriptor.extend_from_slice(&(device.base as u32).to_le_bytes());
            descriptor.extend_from_slice(&(device.size as u32).to_le_bytes());
            assert_eq!(count(&dsdt, &descriptor), 1);
            // Extended interrupt descriptor: consumer, edge, active high, exclusive.
            let mut interrupt = vec![0x89, 6, 0, 0b0011, 1];
            interrupt.extend_from_slice(&device.gsi.to_le_bytes());
            assert_eq!(count(&dsdt, &interrupt), 1);
        }
    }

    #[test]
    fn bad_arguments_are_rejected() {
        let mem = memory();
        assert!(matches!(setup_acpi_tables(&mem, 0, &[]), Err(AcpiError::NoCpus)));
        assert!(matches!(
            setup_acpi_tables(&mem, 255, &[]),
            Err(AcpiError::TooManyCpus(255))
        ));
        let high = AcpiMmioDevice {
            base: 0xffff_f000,
            size: 0x2000,
            gsi: 5,
        };
        assert!(matches!(
            setup_acpi_tables(&mem, 1, &[high]),
            Err(AcpiError::BadMmioDevice { .. })
        ));
        let empty = AcpiMmioDevice {
            base: 0xd000_0000,
            size: 0,
            gsi: 5,
        };
        assert!(matches!(
            setup_acpi_tables(&mem, 1, &[empty]),
            Err(AcpiError::BadMmioDevice { .. })
        ));
        let many = vec![
            AcpiMmioDevice {
                base: 0xd000_0000,
                size: 0x1000,
                gsi: 5
            };
            MAX_MMIO_DEVICES + 1
        ];
        assert!(matches!(
            setup_acpi_tables(&mem, 1, &many),
            Err(AcpiError::TooManyMmioDevices(257))
        ));
    }

    #[test]
    fn many_devices_still_fit() {
        let devices: Vec<AcpiMmioDevice> = (0..MAX_MMIO_DEVICES as u64)
            .map(|i| AcpiMmioDevice {
                base: 0xd000_0000 + i * 0x1000,
                size: 0x1000,
                gsi: 5 + i as u32,
            })
            .collect();
        let (mem, rsdp_addr) = setup(MAX_CPUS, &devices);
        let (_, dsdt) = read_dsdt(&mem, rsdp_addr);
        assert_eq!(count(&dsdt, b"LNRO0005"), MAX_MMIO_DEVICES);
        assert_eq!(count(&dsdt, b"VRFF"), 1);
    }

    #[test]
    fn placement_aligns_and_bounds_tables() {
        let addrs = place_tables(0x1000, 0x1100, [36, 52, 20]).expect("fits");
        assert_eq!(addrs, [0x1000, 0x1030, 0x1070]);
        assert!(matches!(
            place_tables(0x1000, 0x1080, [36, 52, 20]),
            Err(AcpiError::TablesTooLarge { end: 0x1084 })
        ));
    }

    #[test]
    fn unbacked_memory_is_a_write_error() {
        let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x8_0000)]).expect("guest memory");
        assert!(matches!(setup_acpi_tables(&mem, 1, &[]), Err(AcpiError::Write(_))));
    }

    /// Disassembles the tables with ACPICA's `iasl` when it is installed.
    #[test]
    fn iasl_disassembles_the_tables() {
        use std::process::Command;

        if Command::new("iasl").arg("-v").output().is_err() {
            println!("note: iasl not found (apt-get install acpica-tools); skipping the disassembly check");
            return;
        }
        let (mem, rsdp_addr) = setup(4, &two_devices());
        let dir = std::env::temp_dir().join(format!("kvmkit-acpi-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut tables = vec![("dsdt", read_dsdt(&mem, rsdp_addr).1)];
        tables.push(("apic", find_table(&mem, rsdp_addr, b"APIC").1));
        tables.push(("facp", find_table(&mem, rsdp_addr, b"FACP").1));
        for (name, bytes) in tables {
            let path = dir.join(format!("{name}.dat"));
            std::fs::write(&path, &bytes).expect("write table");
            let output = Command::new("iasl").arg("-d").arg(&path).output().expect("run iasl");
            let log = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(output.status.success(), "iasl -d {name} failed:\n{log}");
            let dsl = std::fs::read_to_string(dir.join(format!("{name}.dsl"))).expect("iasl output");
            if name == "dsdt" {
                for needle in [
                    "\"LNRO0005\"",
                    "VR00",
                    "VR01",
                    "COM1",
                    "PNP0501",
                    "Device (PS2)",
                    "PNP0303",
                    "Memory32Fixed",
                ] {
                    assert!(dsl.contains(needle), "{needle} missing from:\n{dsl}");
                }
            }
        }
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
