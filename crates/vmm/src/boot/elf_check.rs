//! Checks an ELF kernel's headers before `linux-loader` copies it, so that a
//! bad image gets a message that names its real fault: linux-loader reads a
//! 32-bit ELF as ELF64, loads segments over kvmkit's boot structures (page 0,
//! the GDT, the zero page, the page tables below 1 MiB) without a word, and
//! reports a truncated file the same way as guest memory that is too small.
//! The same checks serve the streaming loader (`elf_stream.rs`, the vmlinux
//! of a bzImage decompressed on the host), on the header bytes it reads ahead.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use crate::arch::x86_64::layout::{low_ram_end, HIMEM_START};

/// What is wrong with an ELF image (the caller adds the file name).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ElfFault {
    /// Not ELFCLASS64.
    #[error("is a {0}-bit ELF; kvmkit boots 64-bit ELF kernels (an x86_64 vmlinux or a PVH ELF64)")]
    Class(u32),
    /// Not little-endian.
    #[error("is a big-endian ELF; x86_64 kernels are little-endian")]
    BigEndian,
    /// The header or program-header table is cut short or malformed.
    #[error("has a malformed ELF header: {0}")]
    Header(&'static str),
    /// A loadable segment's bytes run past the end of the file.
    #[error(
        "is truncated: ELF segment {segment} needs bytes up to offset {end:#x} but the file has {len:#x} bytes \
         (copy the image again)"
    )]
    Truncated {
        /// Index of the program header.
        segment: usize,
        /// File offset the segment's bytes end at.
        end: u64,
        /// File length.
        len: u64,
    },
    /// A loadable segment would land below 1 MiB, over kvmkit's boot structures.
    #[error(
        "has ELF segment {segment} at guest address {addr:#x}, below 1 MiB where kvmkit keeps the boot \
         structures (page tables, GDT, zero page, command line); link the kernel at 1 MiB or above"
    )]
    Low {
        /// Index of the program header.
        segment: usize,
        /// Its guest-physical load address.
        addr: u64,
    },
    /// A loadable segment ends past low RAM (guest memory or the MMIO hole).
    #[error(
        "has ELF segment {segment} ending at guest address {end:#x}, past the end of low RAM ({ram:#x}); \
         give the VM more --memory"
    )]
    TooHigh {
        /// Index of the program header.
        segment: usize,
        /// End of the segment in guest-physical memory.
        end: u64,
        /// End of low RAM for this VM.
        ram: u64,
    },
    /// The program header table lies past what the streaming loader reads
    /// ahead (a vmlinux decompressed from a bzImage straight into guest RAM).
    #[error(
        "has its program header table at offset {0:#x}, past the first {ahead} KiB that kvmkit reads ahead when it \
         decompresses a bzImage into guest memory; boot it with --no-host-decompress",
        ahead = crate::boot::elf_stream::READ_AHEAD >> 10
    )]
    TableTooFar(u64),
}

/// `p_type` of a loadable segment.
pub const PT_LOAD: u32 = 1;
/// `p_type` of a note segment.
pub const PT_NOTE: u32 = 4;
/// Bytes of an ELF64 header.
pub const EHDR_LEN: usize = 64;
/// Bytes of an ELF64 program header.
pub const PHDR_LEN: usize = 56;
/// Most program headers read (Linux has a handful; the limit bounds work on hostile files).
const MAX_PHDRS: u16 = 256;

pub(super) fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
pub(super) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
pub(super) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// Checks the ELF image in `file` (rewound afterwards) against a VM of
/// `mem_size` bytes. I/O errors are left to the loader, which reports them.
pub fn check(file: &mut File, mem_size: u64) -> Result<(), ElfFault> {
    let len = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
    let result = check_headers(file, len, mem_size);
    let _ = file.seek(SeekFrom::Start(0));
    result
}

pub(super) fn check_headers<R: Read + Seek>(file: &mut R, len: u64, mem_size: u64) -> Result<(), ElfFault> {
    let mut ehdr = [0u8; EHDR_LEN];
    let mut have = 0;
    if file.seek(SeekFrom::Start(0)).is_ok() {
        while have < EHDR_LEN {
            match file.read(&mut ehdr[have..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => have += n,
            }
        }
    }
    let table = program_headers(&ehdr[..have], len)?;
    let mut bytes = vec![0u8; table.len];
    file.seek(SeekFrom::Start(table.offset))
        .and_then(|_| file.read_exact(&mut bytes))
        .map_err(|_| ElfFault::Header("program header table cannot be read"))?;
    check_segments(&bytes, len, mem_size)
}

/// Where an ELF image's program header table lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableAt {
    /// Its file offset.
    pub offset: u64,
    /// Its length in bytes (`PHDR_LEN` per entry).
    pub len: usize,
}

/// Checks the ELF header in `head` (the image's first bytes; the first 64
/// are used) of an image of `len` bytes, and locates its program headers.
pub fn program_headers(head: &[u8], len: u64) -> Result<TableAt, ElfFault> {
    if head.len() < 6 {
        return Err(ElfFault::Header("shorter than the ELF identification"));
    }
    match head[4] {
        2 => {}
        1 => return Err(ElfFault::Class(32)),
        _ => return Err(ElfFault::Header("unknown ELF class")),
    }
    if head[5] == 2 {
        return Err(ElfFault::BigEndian);
    }
    if head.len() < EHDR_LEN {
        return Err(ElfFault::Header("shorter than an ELF64 header"));
    }
    let phoff = u64_at(head, 32);
    let phentsize = u16_at(head, 54);
    let phnum = u16_at(head, 56);
    if usize::from(phentsize) != PHDR_LEN {
        return Err(ElfFault::Header("program header size is not 56"));
    }
    if phnum > MAX_PHDRS {
        return Err(ElfFault::Header("more than 256 program headers"));
    }
    let table_end = phoff.checked_add(u64::from(phnum) * PHDR_LEN as u64);
    if phoff < EHDR_LEN as u64 || table_end.is_none_or(|e| e > len) {
        return Err(ElfFault::Header("program header table outside the file"));
    }
    Ok(TableAt {
        offset: phoff,
        len: usize::from(phnum) * PHDR_LEN,
    })
}

/// One program header's fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgramHeader {
    /// `p_type`.
    pub kind: u32,
    /// `p_offset`: where its bytes start in the file.
    pub offset: u64,
    /// `p_paddr`: where they go in guest memory.
    pub paddr: u64,
    /// `p_filesz`.
    pub filesz: u64,
    /// `p_memsz`.
    pub memsz: u64,
}

impl ProgramHeader {
    /// Whether linux-loader copies bytes for it (a PT_LOAD with file bytes).
    pub fn loads(&self) -> bool {
        self.kind == PT_LOAD && self.filesz != 0
    }
}

/// The entries of a program header table (whole entries only).
pub fn parse_table(table: &[u8]) -> impl Iterator<Item = ProgramHeader> + '_ {
    table.chunks_exact(PHDR_LEN).map(|ph| ProgramHeader {
        kind: u32_at(ph, 0),
        offset: u64_at(ph, 8),
        paddr: u64_at(ph, 24),
        filesz: u64_at(ph, 32),
        memsz: u64_at(ph, 40),
    })
}

/// Checks the loadable segments of `table` (an image of `len` bytes) against
/// a VM of `mem_size` bytes: in the file, at or above 1 MiB, inside low RAM.
pub fn check_segments(table: &[u8], len: u64, mem_size: u64) -> Result<(), ElfFault> {
    let ram = low_ram_end(mem_size);
    for (segment, ph) in parse_table(table).enumerate() {
        if !ph.loads() {
            continue;
        }
        let end = ph.offset.saturating_add(ph.filesz);
        if end > len {
            return Err(ElfFault::Truncated { segment, end, len });
        }
        if ph.paddr < HIMEM_START {
            return Err(ElfFault::Low {
                segment,
                addr: ph.paddr,
            });
        }
        let mem_end = ph.paddr.saturating_add(ph.memsz.max(ph.filesz));
        if mem_end > ram {
            return Err(ElfFault::TooHigh {
                segment,
                end: mem_end,
                ram,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// An ELF64 with one PT_LOAD segment of `filesz` bytes at file offset 0x1000, loaded at `paddr`.
    fn elf(class: u8, paddr: u64, filesz: u64, file_len: usize) -> Vec<u8> {
        let mut b = vec![0u8; file_len.max(EHDR_LEN + PHDR_LEN)];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = class;
        b[5] = 1;
        b[32..40].copy_from_slice(&(EHDR_LEN as u64).to_le_bytes());
        b[54..56].copy_from_slice(&(PHDR_LEN as u16).to_le_bytes());
        b[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = &mut b[EHDR_LEN..EHDR_LEN + PHDR_LEN];
        ph[0..4].copy_from_slice(&PT_LOAD.to_le_bytes());
        ph[8..16].copy_from_slice(&0x1000u64.to_le_bytes());
        ph[24..32].copy_from_slice(&paddr.to_le_bytes());
        ph[32..40].copy_from_slice(&filesz.to_le_bytes());
        ph[40..48].copy_from_slice(&filesz.to_le_bytes());
        b
    }

    fn run(b: Vec<u8>, mem: u64) -> Result<(), ElfFault> {
        let len = b.len() as u64;
        check_headers(&mut Cursor::new(b), len, mem)
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_good_image_passes() {
        assert_eq!(run(elf(2, MIB, 0x1000, 0x2000), 256 * MIB), Ok(()));
    }

    #[test]
    fn each_fault_gets_its_own_message() {
        assert_eq!(run(elf(1, MIB, 0x1000, 0x2000), 256 * MIB), Err(ElfFault::Class(32)));
        assert_eq!(
            run(elf(2, MIB, 0x1000, 0x1800), 256 * MIB),
            Err(ElfFault::Truncated {
                segment: 0,
                end: 0x2000,
                len: 0x1800
            })
        );
        assert_eq!(
            run(elf(2, 0, 0x1000, 0x2000), 256 * MIB),
            Err(ElfFault::Low { segment: 0, addr: 0 })
        );
        assert!(matches!(
            run(elf(2, 255 * MIB, 2 * MIB, 0x1000 + 2 * MIB as usize), 256 * MIB),
            Err(ElfFault::TooHigh { .. })
        ));
        let mut big = elf(2, MIB, 0x1000, 0x2000);
        big[5] = 2;
        assert_eq!(run(big, 256 * MIB), Err(ElfFault::BigEndian));
        let mut cut = elf(2, MIB, 0x1000, 0x2000);
        cut.truncate(20);
        assert!(matches!(run(cut, 256 * MIB), Err(ElfFault::Header(_))));
        let mut table = elf(2, MIB, 0x1000, 0x2000);
        table[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(run(table, 256 * MIB), Err(ElfFault::Header(_))));
    }

    #[test]
    fn messages_name_the_fault_not_the_memory_size() {
        let truncated = ElfFault::Truncated {
            segment: 1,
            end: 0x2000,
            len: 0x1800,
        }
        .to_string();
        assert!(
            truncated.contains("truncated") && !truncated.contains("--memory"),
            "{truncated}"
        );
        assert!(ElfFault::Class(32).to_string().contains("32-bit"));
    }
}
