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
    let mut head = vec![0u8; 64 << 10];
    let n = file.read(&mut head).ok()?;
    head.truncate(n);
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
    let mut rest = Vec::new();
    file.take(64 << 20).read_to_end(&mut rest).ok()?;
    head.extend_from_slice(&rest);
    // "Linux version " and a digit: the kernel's banner, not some other
    // program's string (kvmkit's own binary holds this one).
    let needle = b"Linux version ";
    let at = head
        .windows(needle.len() + 1)
        .position(|w| &w[..needle.len()] == needle && w[needle.len()].is_ascii_digit())?;
    let bytes = &head[at..];
    let end = bytes
        .iter()
        .position(|&b| b == 0 || b == b'\n')
        .unwrap_or(bytes.len())
        .min(200);
    Some(String::from_utf8_lossy(&bytes[..end]).into_owned())
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
