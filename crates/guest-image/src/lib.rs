//! kvmkit's own test guest, embedded as an ELF image.
//!
//! `build.rs` builds the freestanding guest in `guest/` (a separate cargo
//! workspace) with a nested `cargo build --release`; see docs/test-guest.md
//! for what the guest does and docs/guest-protocol.md for how it talks to
//! the VMM.

/// The test guest: a static x86-64 ELF loaded at 1 MiB that boots through
/// PVH (an `XEN_ELFNOTE_PHYS32_ENTRY` note, entered in 32-bit protected mode
/// with `ebx` = `hvm_start_info`). Load its `PT_LOAD` segments at their
/// physical addresses and start the BSP at the note's entry point.
pub static GUEST_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kvmkit-guest"));

#[cfg(test)]
mod tests {
    use super::GUEST_ELF;

    const PT_LOAD: u32 = 1;
    const PT_NOTE: u32 = 4;
    const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

    fn u16_at(b: &[u8], o: usize) -> u16 {
        u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
    }
    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    /// (p_type, p_offset, p_paddr, p_filesz) of every program header.
    fn program_headers(elf: &[u8]) -> Vec<(u32, usize, u64, usize)> {
        let (phoff, phentsize, phnum) = (
            u64_at(elf, 0x20) as usize,
            u16_at(elf, 0x36) as usize,
            u16_at(elf, 0x38) as usize,
        );
        (0..phnum)
            .map(|i| {
                let p = phoff + i * phentsize;
                (
                    u32_at(elf, p),
                    u64_at(elf, p + 8) as usize,
                    u64_at(elf, p + 24),
                    u64_at(elf, p + 32) as usize,
                )
            })
            .collect()
    }

    /// The PVH entry point from the first Xen PHYS32_ENTRY note.
    fn pvh_entry(elf: &[u8]) -> Option<u64> {
        for (kind, offset, _, size) in program_headers(elf) {
            if kind != PT_NOTE {
                continue;
            }
            let mut o = offset;
            while o + 12 <= offset + size {
                let (namesz, descsz, ty) = (u32_at(elf, o) as usize, u32_at(elf, o + 4) as usize, u32_at(elf, o + 8));
                let name = o + 12;
                let desc = name + namesz.next_multiple_of(4);
                if ty == XEN_ELFNOTE_PHYS32_ENTRY && &elf[name..name + namesz] == b"Xen\0" {
                    return Some(match descsz {
                        4 => u64::from(u32_at(elf, desc)),
                        _ => u64_at(elf, desc),
                    });
                }
                o = desc + descsz.next_multiple_of(4);
            }
        }
        None
    }

    #[test]
    fn is_a_static_x86_64_elf() {
        assert_eq!(&GUEST_ELF[..4], b"\x7fELF");
        assert_eq!(GUEST_ELF[4], 2, "ELFCLASS64");
        assert_eq!(u16_at(GUEST_ELF, 0x10), 2, "ET_EXEC");
        assert_eq!(u16_at(GUEST_ELF, 0x12), 62, "EM_X86_64");
    }

    #[test]
    fn carries_a_pvh_entry_inside_the_loaded_image() {
        let entry = pvh_entry(GUEST_ELF).expect("no XEN_ELFNOTE_PHYS32_ENTRY note");
        let loads: Vec<_> = program_headers(GUEST_ELF)
            .into_iter()
            .filter(|p| p.0 == PT_LOAD)
            .collect();
        assert!(loads.iter().all(|p| p.2 >= 0x10_0000), "loads below 1 MiB");
        assert!(
            loads.iter().any(|p| p.2 <= entry && entry < p.2 + p.3 as u64),
            "entry {entry:#x} outside the loaded image"
        );
    }
}
