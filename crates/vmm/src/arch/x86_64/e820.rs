//! The guest's physical memory map, as e820 entries (Linux) and PVH memmap entries.

use super::layout::{ram_ranges, EBDA_START, HIMEM_START};

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// One entry of the guest memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryMapEntry {
    /// Guest-physical start.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// The memory map for a guest with `mem_size` bytes of RAM: low RAM up to
/// the EBDA, the EBDA/BIOS area reserved, then RAM from 1 MiB around the MMIO hole.
pub fn memory_map(mem_size: u64) -> Vec<MemoryMapEntry> {
    let mut map = vec![
        MemoryMapEntry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        MemoryMapEntry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    for (start, size) in ram_ranges(mem_size) {
        let (start, size) = if start == 0 {
            (HIMEM_START, size - HIMEM_START)
        } else {
            (start, size)
        };
        if size > 0 {
            map.push(MemoryMapEntry {
                addr: start,
                size,
                kind: E820_RAM,
            });
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::{MMIO_GAP_END, MMIO_GAP_START};

    #[test]
    fn map_covers_ram_without_the_bios_area() {
        let map = memory_map(256 << 20);
        assert_eq!(map.len(), 3);
        assert_eq!(
            map[0],
            MemoryMapEntry {
                addr: 0,
                size: 0x9fc00,
                kind: E820_RAM
            }
        );
        assert_eq!(map[1].kind, E820_RESERVED);
        assert_eq!(
            map[2],
            MemoryMapEntry {
                addr: 0x10_0000,
                size: (256 << 20) - 0x10_0000,
                kind: E820_RAM
            }
        );
    }

    #[test]
    fn map_splits_around_the_hole() {
        let map = memory_map(6 << 30);
        let ram: u64 = map.iter().filter(|e| e.kind == E820_RAM).map(|e| e.size).sum();
        assert_eq!(ram, (6 << 30) - (HIMEM_START - EBDA_START));
        let high = map.last().copied().unwrap_or(map[0]);
        assert_eq!(high.addr, MMIO_GAP_END);
        assert_eq!(high.size, (6 << 30) - MMIO_GAP_START);
        for e in &map {
            assert!(e.addr + e.size <= MMIO_GAP_START || e.addr >= MMIO_GAP_END);
        }
    }
}
