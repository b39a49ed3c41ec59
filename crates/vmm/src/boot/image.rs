//! Kernel image formats: detection and loading through `linux-loader`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{BzImage, Elf, KernelLoader, KernelLoaderResult};
use vm_memory::GuestAddress;

use crate::arch::x86_64::layout::HIMEM_START;
use crate::memory::GuestMemoryMmap;

/// A kernel image format kvmkit can boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    /// An ELF executable (vmlinux, or kvmkit's test guest).
    Elf,
    /// A Linux bzImage (compressed kernel with a setup header).
    BzImage,
}

/// Offset of the 64-bit entry point in a bzImage's protected-mode part.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// Classifies an image by its magic numbers; `None` when it is neither.
pub fn classify(head: &[u8]) -> Option<KernelFormat> {
    if head.len() >= 4 && &head[..4] == b"\x7fELF" {
        return Some(KernelFormat::Elf);
    }
    if head.len() >= 0x206 && &head[0x202..0x206] == b"HdrS" {
        return Some(KernelFormat::BzImage);
    }
    None
}

/// Reads the start of `file` and classifies it.
pub fn detect_format(file: &mut File) -> std::io::Result<Option<KernelFormat>> {
    let mut head = [0u8; 0x210];
    file.seek(SeekFrom::Start(0))?;
    let mut n = 0;
    while n < head.len() {
        match file.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    file.seek(SeekFrom::Start(0))?;
    Ok(classify(&head[..n]))
}

/// `Some((expected, actual))` when a bzImage is shorter than its setup header
/// says ((setup_sects + 1) * 512 + syssize * 16 bytes); the file is rewound.
pub fn bzimage_truncated(file: &mut File) -> Option<(u64, u64)> {
    let mut head = [0u8; 0x1f8];
    let read = file.seek(SeekFrom::Start(0)).and_then(|_| file.read_exact(&mut head));
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(0)).ok()?;
    read.ok()?;
    // setup_sects 0 means 4 (boot protocol).
    let setup_sects = match head[0x1f1] {
        0 => 4,
        n => u64::from(n),
    };
    let syssize = u64::from(u32::from_le_bytes([head[0x1f4], head[0x1f5], head[0x1f6], head[0x1f7]]));
    let want = (setup_sects + 1) * 512 + syssize * 16;
    (len < want).then_some((want, len))
}

/// Loads the image (a file, or a vmlinux unpacked in memory) into guest
/// memory at its preferred address.
pub fn load<F: Read + vm_memory::ReadVolatile + Seek>(
    mem: &GuestMemoryMmap,
    file: &mut F,
    format: KernelFormat,
) -> Result<KernelLoaderResult, linux_loader::loader::Error> {
    match format {
        KernelFormat::Elf => Elf::load(mem, None, file, Some(GuestAddress(HIMEM_START))),
        KernelFormat::BzImage => BzImage::load(mem, None, file, Some(GuestAddress(HIMEM_START))),
    }
}

/// The PVH entry address, when the image has one.
pub fn pvh_entry(loaded: &KernelLoaderResult) -> Option<u64> {
    match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => Some(addr.0),
        _ => None,
    }
}

/// The 64-bit Linux entry: the ELF entry, or bzImage load address + 0x200.
pub fn linux64_entry(loaded: &KernelLoaderResult, format: KernelFormat) -> u64 {
    match format {
        KernelFormat::Elf => loaded.kernel_load.0,
        KernelFormat::BzImage => loaded.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_and_bzimage_are_recognised() {
        assert_eq!(classify(b"\x7fELF\x02\x01\x01"), Some(KernelFormat::Elf));
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(classify(&bz), Some(KernelFormat::BzImage));
    }

    #[test]
    fn other_files_are_rejected() {
        assert_eq!(classify(b""), None);
        assert_eq!(classify(b"#!/bin/sh\necho hi\n"), None);
        assert_eq!(classify(&[0u8; 0x400]), None);
    }
}
