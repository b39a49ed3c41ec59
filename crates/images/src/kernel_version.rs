//! Which Linux a kernel image says it is: its "Linux version N..." banner.

/// The "Linux version ..." string of a kernel image: from a bzImage's setup
/// header (`kernel_version`), or searched for in the first 64 MiB of an ELF
/// vmlinux. `None` when the file is not a Linux kernel (or cannot be read;
/// loading it reports that properly).
pub fn linux_version(path: &std::path::Path) -> Option<String> {
    use std::io::Read;
    // Not even opened unless it is a regular file: open(2) on a FIFO blocks.
    if !std::fs::metadata(path).ok()?.is_file() {
        return None;
    }
    let mut file = std::fs::File::open(path).ok()?;
    let mut head = Vec::new();
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
    if head.get(..4) != Some(b"\x7fELF") {
        return None;
    }
    elf_banner(head, &mut file.take(SCAN))
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
}
