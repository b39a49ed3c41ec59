//! Reading the PVH `hvm_start_info` the loader left in low memory.
//!
//! The BSP copies what it needs (command line, memory map) into its own
//! buffers before anything writes low memory (e.g. the AP trampoline).

use core::ptr;

/// `hvm_start_info.magic`.
const MAGIC: u32 = 0x336e_c578;
/// Largest command line kept; longer ones are cut.
const CMDLINE_MAX: usize = 1024;
/// Most memory-map entries kept.
const MEMMAP_MAX: usize = 32;
/// `hvm_memmap_table_entry.type` for usable RAM.
const TYPE_RAM: u32 = 1;

/// A usable RAM range from the memory map.
#[derive(Clone, Copy, Debug, Default)]
pub struct RamRange {
    /// Physical start address.
    pub base: u64,
    /// Length in bytes.
    pub len: u64,
}

/// What the guest keeps from `hvm_start_info`.
pub struct BootInfo {
    /// `hvm_start_info.version`, or `None` when there was no valid structure.
    pub version: Option<u32>,
    cmdline: [u8; CMDLINE_MAX],
    cmdline_len: usize,
    ram: [RamRange; MEMMAP_MAX],
    ram_len: usize,
}

/// Reads a `T` from a physical address.
fn read<T: Copy>(phys: u64) -> T {
    // SAFETY: all of the low 4 GiB is identity-mapped and readable at CPL3;
    // callers only read addresses the loader handed over in start_info.
    unsafe { ptr::read_unaligned(phys as *const T) }
}

impl BootInfo {
    /// Copies the command line and the RAM ranges out of the `hvm_start_info`
    /// at `phys`. A zero address or a bad magic gives an empty `BootInfo`.
    pub fn parse(phys: u64) -> Self {
        let mut info = Self {
            version: None,
            cmdline: [0; CMDLINE_MAX],
            cmdline_len: 0,
            ram: [RamRange::default(); MEMMAP_MAX],
            ram_len: 0,
        };
        if phys == 0 || phys >= 1 << 32 || read::<u32>(phys) != MAGIC {
            return info;
        }
        let version = read::<u32>(phys + 4);
        info.version = Some(version);
        let cmdline = read::<u64>(phys + 24);
        if cmdline != 0 && cmdline < 1 << 32 {
            while info.cmdline_len < CMDLINE_MAX {
                let b = read::<u8>(cmdline + info.cmdline_len as u64);
                if b == 0 {
                    break;
                }
                info.cmdline[info.cmdline_len] = b;
                info.cmdline_len += 1;
            }
        }
        if version >= 1 {
            let map = read::<u64>(phys + 40);
            let entries = read::<u32>(phys + 48) as u64;
            for i in 0..entries {
                if map == 0 || info.ram_len == MEMMAP_MAX {
                    break;
                }
                let e = map + i * 24;
                let (base, len, kind) = (read::<u64>(e), read::<u64>(e + 8), read::<u32>(e + 16));
                if kind == TYPE_RAM && len != 0 {
                    info.ram[info.ram_len] = RamRange { base, len };
                    info.ram_len += 1;
                }
            }
        }
        info
    }

    /// The command line (up to the first invalid UTF-8 byte).
    pub fn cmdline(&self) -> &str {
        let bytes = &self.cmdline[..self.cmdline_len];
        match core::str::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or(""),
        }
    }

    /// The usable RAM ranges from the memory map (empty without one).
    pub fn ram(&self) -> &[RamRange] {
        &self.ram[..self.ram_len]
    }
}
