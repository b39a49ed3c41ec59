//! The PVH boot protocol: `hvm_start_info`, its memory map and module list.

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use vm_memory::GuestAddress;

use super::{BootError, InitrdPlacement};
use crate::arch::x86_64::e820::MemoryMapEntry;
use crate::arch::x86_64::layout::{CMDLINE_START, PVH_INFO_START, PVH_MEMMAP_START, PVH_MODLIST_START};
use crate::memory::GuestMemoryMmap;

/// `hvm_start_info.magic` ("xEn3" with the high bit set).
pub const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;

/// Writes the start info, memory map and initrd module; returns the start info address.
pub fn write_start_info(
    mem: &GuestMemoryMmap,
    map: &[MemoryMapEntry],
    initrd: Option<InitrdPlacement>,
    rsdp: Option<u64>,
) -> Result<u64, BootError> {
    let (mut info, memmap, modules) = start_info(map, initrd);
    info.rsdp_paddr = rsdp.unwrap_or(0);
    let mut params = BootParams::new::<hvm_start_info>(&info, GuestAddress(PVH_INFO_START));
    params.set_sections::<hvm_memmap_table_entry>(&memmap, GuestAddress(PVH_MEMMAP_START));
    if !modules.is_empty() {
        params.set_modules::<hvm_modlist_entry>(&modules, GuestAddress(PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
        .map_err(|_| BootError::Write("PVH start info"))?;
    Ok(PVH_INFO_START)
}

/// The start info and its tables (pure, for tests).
pub fn start_info(
    map: &[MemoryMapEntry],
    initrd: Option<InitrdPlacement>,
) -> (hvm_start_info, Vec<hvm_memmap_table_entry>, Vec<hvm_modlist_entry>) {
    let memmap: Vec<_> = map
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let modules: Vec<_> = initrd
        .map(|rd| hvm_modlist_entry {
            paddr: rd.addr,
            size: rd.size,
            ..Default::default()
        })
        .into_iter()
        .collect();
    let info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        nr_modules: modules.len() as u32,
        modlist_paddr: if modules.is_empty() { 0 } else { PVH_MODLIST_START },
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    (info, memmap, modules)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::e820::memory_map;
    use vm_memory::Bytes;

    #[test]
    fn start_info_describes_memory_and_cmdline() {
        let map = memory_map(256 << 20);
        let (info, memmap, modules) = start_info(&map, None);
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(info.version, 1);
        assert_eq!(info.memmap_entries as usize, map.len());
        assert_eq!(info.cmdline_paddr, CMDLINE_START);
        assert_eq!((info.nr_modules, info.modlist_paddr), (0, 0));
        assert!(modules.is_empty());
        assert_eq!(memmap[2].addr, 0x10_0000);
    }

    #[test]
    fn initrd_becomes_the_first_module() {
        let rd = InitrdPlacement {
            addr: 0x800_0000,
            size: 4096,
        };
        let (info, _, modules) = start_info(&memory_map(256 << 20), Some(rd));
        assert_eq!((info.nr_modules, info.modlist_paddr), (1, PVH_MODLIST_START));
        assert_eq!((modules[0].paddr, modules[0].size), (0x800_0000, 4096));
    }

    #[test]
    fn start_info_is_written_to_guest_memory() {
        let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("mem");
        let addr = write_start_info(&mem, &memory_map(256 << 20), None, Some(0xe0000)).expect("write");
        let magic: u32 = mem.read_obj(GuestAddress(addr)).expect("read");
        assert_eq!(magic, XEN_HVM_START_MAGIC_VALUE);
        let rsdp: u64 = mem.read_obj(GuestAddress(addr + 32)).expect("read");
        assert_eq!(rsdp, 0xe0000);
        let first: u64 = mem.read_obj(GuestAddress(PVH_MEMMAP_START + 24 * 2)).expect("read");
        assert_eq!(first, 0x10_0000);
    }
}
