//! Which Linux a kernel image says it is: its "Linux version N..." banner.

/// The "Linux version ..." string of a kernel image: from a bzImage's setup
/// header (`kernel_version`), or searched for in the first 64 MiB of an ELF
/// vmlinux. `None` when the file is not a Linux kernel (or cannot be read;
/// loading it reports that properly).
pub fn linux_version(path: &std::path::Path) -> Option<String> {
    use std::io::{Read, Seek};
    // Not even opened unless it is a regular file: open(2) on a FIFO blocks.
    if !std::fs::metadata(path).ok()?.is_file() {
        return None;
    }
    let mut file = std::fs::File::open(path).ok()?;
    // One read for a small file: read_to_end probes in growing steps
    // without the capacity (it writes, and so touches, only what it reads).
    let mut head = Vec::with_capacity(64 << 10);
    file.by_ref().take(64 << 10).read_to_end(&mut head).ok()?;
    if head.get(0x202..0x206) == Some(b"HdrS") {
        let ptr = u16::from_le_bytes([*head.get(0x20e)?, *head.get(0x20f)?]) as usize + 0x200;
        let bytes = head.get(ptr..)?;
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len()).min(200);
        // A real version string starts with its number ("6.1.0-...").
        return bytes
            .first()
            .is_some_and(u8::is_ascii_digit)
            .then(|| format!("Linux version {}", String::from_utf8_lossy(&bytes[..end])));
    }
    if head.get(..4) != Some(b"\x7fELF") || names_another_os(&head, &mut file) {
        return None;
    }
    file.seek(std::io::SeekFrom::Start(head.len() as u64)).ok()?;
    elf_banner(head, &mut file.take(SCAN))
}

/// Most note bytes read from one PT_NOTE segment.
const NOTES_MAX: u64 = 16 << 10;

/// Whether a well-formed ELF64 says through its notes that it is not Linux:
/// it has notes, and none is Linux's own (owner "Linux", in every vmlinux
/// since 4.17) or Xen's guest-OS note saying "linux". kvmkit's test guest
/// and other PVH kernels then skip the banner scan (and its 64 KiB reads).
/// Anything unexpected (a short or odd header) says nothing: the scan runs.
fn names_another_os(head: &[u8], file: &mut std::fs::File) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let u16_at = |b: &[u8], o: usize| b.get(o..o + 2).map(|x| u16::from_le_bytes([x[0], x[1]]));
    let u32_at = |b: &[u8], o: usize| b.get(o..o + 4).and_then(|x| x.try_into().ok()).map(u32::from_le_bytes);
    let u64_at = |b: &[u8], o: usize| b.get(o..o + 8).and_then(|x| x.try_into().ok()).map(u64::from_le_bytes);
    // ELFCLASS64, little-endian, 56-byte program headers.
    if head.get(4..6) != Some(&[2, 1]) || u16_at(head, 54) != Some(56) {
        return false;
    }
    let (Some(phoff), Some(phnum)) = (u64_at(head, 32), u16_at(head, 56)) else {
        return false;
    };
    let mut notes = 0;
    for i in 0..usize::from(phnum) {
        // phoff is the file's word: checked, as it may point anywhere.
        let at = usize::try_from(phoff).ok().and_then(|o| o.checked_add(i * 56));
        let Some(ph) = at.and_then(|a| head.get(a..a.checked_add(56)?)) else {
            return false;
        };
        const PT_NOTE: u32 = 4;
        if u32_at(ph, 0) != Some(PT_NOTE) {
            continue;
        }
        let (Some(off), Some(size)) = (u64_at(ph, 8), u64_at(ph, 32)) else {
            return false;
        };
        let mut bytes = Vec::new();
        if file.seek(SeekFrom::Start(off)).is_err()
            || file.by_ref().take(size.min(NOTES_MAX)).read_to_end(&mut bytes).is_err()
        {
            return false;
        }
        let mut at = 0;
        while let (Some(namesz), Some(descsz), Some(kind)) =
            (u32_at(&bytes, at), u32_at(&bytes, at + 4), u32_at(&bytes, at + 8))
        {
            let name_at = at + 12;
            let desc_at = name_at + (namesz as usize).next_multiple_of(4);
            let name = bytes.get(name_at..name_at + namesz as usize).unwrap_or_default();
            let desc = bytes.get(desc_at..desc_at + descsz as usize).unwrap_or_default();
            const XEN_ELFNOTE_GUEST_OS: u32 = 6;
            if name == b"Linux\0" || (name == b"Xen\0" && kind == XEN_ELFNOTE_GUEST_OS && desc.starts_with(b"linux")) {
                return false;
            }
            notes += 1;
            at = desc_at + (descsz as usize).next_multiple_of(4);
        }
    }
    notes > 0
}

/// Bytes of an ELF searched for the banner after its first read.
const SCAN: u64 = 64 << 20;
/// The longest banner kept (bytes from "Linux version ").
const BANNER_MAX: usize = 200;
/// "Linux version " and a digit: the kernel's banner, not some other
/// program's string (kvmkit's own binary holds this one).
const NEEDLE: &[u8] = b"Linux version ";

/// The first banner in `buf` followed by `rest`, read 64 KiB at a time: the
/// whole file is never in memory (a vmlinux is 30-60 MB, and reading it
/// whole made it part of kvmkit's peak RSS).
fn elf_banner(mut buf: Vec<u8>, rest: &mut impl std::io::Read) -> Option<String> {
    use std::io::Read;
    let finder = memchr::memmem::Finder::new(NEEDLE);
    let mut eof = false;
    loop {
        // memmem, not a byte-by-byte window: a vmlinux's banner is tens of MB in.
        let at = finder
            .find_iter(&buf)
            .find(|&i| buf.get(i + NEEDLE.len()).is_some_and(u8::is_ascii_digit));
        match at {
            Some(at) => {
                let bytes = &buf[at..];
                let end = bytes.iter().position(|&b| b == 0 || b == b'\n');
                if eof || end.is_some_and(|e| e <= BANNER_MAX) || bytes.len() >= BANNER_MAX {
                    let end = end.unwrap_or(bytes.len()).min(BANNER_MAX);
                    return Some(String::from_utf8_lossy(&bytes[..end]).into_owned());
                }
                // Its end is in the next read.
                buf.drain(..at);
            }
            None if eof => return None,
            // Keep what could be the start of a banner cut by the read.
            None => {
                let keep = buf.len().min(NEEDLE.len());
                buf.drain(..buf.len() - keep);
            }
        }
        // read_to_end writes only what it reads (a zero-filled 64 KiB would
        // be touched, and resident, even for a 5 KiB file).
        let n = rest.by_ref().take(64 << 10).read_to_end(&mut buf).ok()?;
        eof = n == 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("kvmkit-kver-{name}-{}", std::process::id()));
        std::fs::write(&p, bytes).expect("write");
        p
    }

    #[test]
    fn banners_are_read_from_bzimages_and_elves_and_nothing_else() {
        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes());
        bz[0x300..0x30c].copy_from_slice(b"6.1.0-57 (x)");
        let p = temp("bz", &bz);
        assert_eq!(linux_version(&p).as_deref(), Some("Linux version 6.1.0-57 (x)"));
        let mut elf = b"\x7fELF".to_vec();
        elf.extend_from_slice(&[0; 100]);
        elf.extend_from_slice(b"Linux version %s\0Linux version 6.1.0-57-cloud-amd64 (gcc)\n");
        let q = temp("elf", &elf);
        // A bare format string (no digit) is skipped; the banner is found.
        assert_eq!(
            linux_version(&q).as_deref(),
            Some("Linux version 6.1.0-57-cloud-amd64 (gcc)")
        );
        // Far into the file, and cut by the 64 KiB reads (first, the banner's
        // start; then its end).
        for at in [300 << 10, (64 << 10) - 5, (64 << 10) - NEEDLE.len(), (128 << 10) - 20] {
            let mut far = b"\x7fELF".to_vec();
            far.resize(at, 7);
            far.extend_from_slice(b"Linux version 6.12.1 (far)\0tail");
            let f = temp("far", &far);
            assert_eq!(
                linux_version(&f).as_deref(),
                Some("Linux version 6.12.1 (far)"),
                "banner at {at}"
            );
            let _ = std::fs::remove_file(f);
        }
        let r = temp("other", b"#!/bin/sh\n");
        assert_eq!(linux_version(&r), None);
        assert_eq!(
            linux_version(std::path::Path::new("/dev/null")),
            None,
            "not a regular file"
        );
        for f in [p, q, r] {
            let _ = std::fs::remove_file(f);
        }
    }

    /// An ELF64 with one PT_NOTE segment holding `notes` ((owner, type, desc)),
    /// and a banner after it.
    fn elf_with_notes(notes: &[(&[u8], u32, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (name, kind, desc) in notes {
            body.extend_from_slice(&(name.len() as u32).to_le_bytes());
            body.extend_from_slice(&(desc.len() as u32).to_le_bytes());
            body.extend_from_slice(&kind.to_le_bytes());
            for part in [*name, *desc] {
                body.extend_from_slice(part);
                body.resize(body.len().next_multiple_of(4), 0);
            }
        }
        let mut elf = vec![0u8; 64 + 56];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[32..40].copy_from_slice(&64u64.to_le_bytes());
        elf[54..56].copy_from_slice(&56u16.to_le_bytes());
        elf[56..58].copy_from_slice(&1u16.to_le_bytes());
        elf[64..68].copy_from_slice(&4u32.to_le_bytes());
        elf[72..80].copy_from_slice(&120u64.to_le_bytes());
        elf[96..104].copy_from_slice(&(body.len() as u64).to_le_bytes());
        elf.extend_from_slice(&body);
        elf.resize(100 << 10, 0);
        elf.extend_from_slice(b"Linux version 6.1.0-57 (notes)\0");
        elf
    }

    #[test]
    fn an_elf_whose_notes_name_another_os_is_not_scanned() {
        let other = temp("pvh", &elf_with_notes(&[(b"Xen\0", 18, &[0, 0, 16, 0])]));
        assert_eq!(linux_version(&other), None, "a PVH guest's notes, no Linux note");
        let linux = temp(
            "linux",
            &elf_with_notes(&[(b"Xen\0", 18, &[0; 4]), (b"Linux\0", 0x100, b"salt")]),
        );
        assert_eq!(linux_version(&linux).as_deref(), Some("Linux version 6.1.0-57 (notes)"));
        let xen_linux = temp("xenos", &elf_with_notes(&[(b"Xen\0", 6, b"linux\0")]));
        assert_eq!(
            linux_version(&xen_linux).as_deref(),
            Some("Linux version 6.1.0-57 (notes)")
        );
        // A note segment cut short says nothing: the banner is still looked for.
        let mut cut = elf_with_notes(&[(b"Xen\0", 18, &[0; 4])]);
        cut[96..104].copy_from_slice(&5u64.to_le_bytes());
        let cut = temp("cut", &cut);
        assert_eq!(linux_version(&cut).as_deref(), Some("Linux version 6.1.0-57 (notes)"));
        // Program headers said to lie at the end of the address space: no
        // overflow, nothing said, the banner looked for.
        let mut far = elf_with_notes(&[(b"Xen\0", 18, &[0; 4])]);
        far[32..40].copy_from_slice(&(u64::MAX - 8).to_le_bytes());
        let far = temp("farph", &far);
        assert_eq!(linux_version(&far).as_deref(), Some("Linux version 6.1.0-57 (notes)"));
        for f in [other, linux, xen_linux, cut, far] {
            let _ = std::fs::remove_file(f);
        }
    }
}
