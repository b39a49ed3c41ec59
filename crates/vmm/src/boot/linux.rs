//! The Linux x86 boot protocol: the "zero page" (`boot_params`).

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::GuestAddress;

use super::{BootError, InitrdPlacement};
use crate::arch::x86_64::e820::MemoryMapEntry;
use crate::arch::x86_64::layout::{CMDLINE_START, ZERO_PAGE_START};
use crate::memory::GuestMemoryMmap;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
const LOADFLAGS_CAN_USE_HEAP: u8 = 0x80;

/// Builds the zero page from the kernel's setup header (bzImage) or from
/// scratch (ELF vmlinux) and writes it at [`ZERO_PAGE_START`].
pub fn write_zero_page(
    mem: &GuestMemoryMmap,
    map: &[MemoryMapEntry],
    header: Option<setup_header>,
    cmdline_len: u32,
    initrd: Option<InitrdPlacement>,
    rsdp: Option<u64>,
) -> Result<u64, BootError> {
    let mut params = zero_page(map, header, cmdline_len, initrd)?;
    params.acpi_rsdp_addr = rsdp.unwrap_or(0);
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(|_| BootError::Write("zero page"))?;
    Ok(ZERO_PAGE_START)
}

/// The zero page contents (pure, for tests).
pub fn zero_page(
    map: &[MemoryMapEntry],
    header: Option<setup_header>,
    cmdline_len: u32,
    initrd: Option<InitrdPlacement>,
) -> Result<boot_params, BootError> {
    let mut params = boot_params::default();
    if let Some(h) = header {
        params.hdr = h;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len;
    params.hdr.loadflags |= LOADFLAGS_CAN_USE_HEAP;
    if params.hdr.kernel_alignment == 0 {
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    if let Some(rd) = initrd {
        params.hdr.ramdisk_image = rd.addr as u32;
        params.hdr.ramdisk_size = rd.size as u32;
    }
    if map.len() > params.e820_table.len() {
        return Err(BootError::Write("e820 table (too many entries)"));
    }
    for (slot, e) in params.e820_table.iter_mut().zip(map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = map.len() as u8;
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::e820::memory_map;

    #[test]
    fn zero_page_carries_map_cmdline_and_initrd() {
        let map = memory_map(512 << 20);
        let rd = InitrdPlacement {
            addr: 0x1000_0000,
            size: 0x1234,
        };
        let p = zero_page(&map, None, 20, Some(rd)).expect("zero page");
        assert_eq!(p.e820_entries as usize, map.len());
        let e2 = p.e820_table[2];
        assert_eq!({ e2.addr }, 0x10_0000);
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ p.hdr.cmdline_size }, 20);
        assert_eq!({ p.hdr.ramdisk_image }, 0x1000_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 0x1234);
        assert_eq!({ p.hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!({ p.hdr.kernel_alignment }, KERNEL_MIN_ALIGNMENT_BYTES);
    }

    #[test]
    fn bzimage_header_fields_are_kept() {
        let h = setup_header {
            version: 0x20f,
            kernel_alignment: 0x20_0000,
            ..Default::default()
        };
        let p = zero_page(&memory_map(256 << 20), Some(h), 1, None).expect("zero page");
        assert_eq!({ p.hdr.version }, 0x20f);
        assert_eq!({ p.hdr.kernel_alignment }, 0x20_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 0);
    }
}
