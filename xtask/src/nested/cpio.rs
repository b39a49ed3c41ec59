//! A small cpio "newc" writer for the L1 initramfs (uncompressed, as the kernel accepts it).
//!
//! Parent directories are created implicitly before their children (the kernel's unpacker does
//! not create them); owners and timestamps are zero. Host files are streamed, not loaded whole.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;
const TRAILER: &str = "TRAILER!!!";

/// What one archive entry holds.
enum Kind {
    Dir,
    Bytes(Vec<u8>),
    Host(PathBuf),
    Symlink(String),
    CharDevice(u32, u32),
}

/// Collects entries, then writes them in order with [`Archive::write`].
#[derive(Default)]
pub struct Archive {
    entries: Vec<(String, u32, Kind)>,
}

impl Archive {
    /// A directory.
    pub fn dir(&mut self, path: &str) {
        self.entries.push((path.to_string(), 0o755, Kind::Dir));
    }

    /// A regular file with the given contents.
    pub fn bytes(&mut self, path: &str, mode: u32, data: impl Into<Vec<u8>>) {
        self.entries.push((path.to_string(), mode, Kind::Bytes(data.into())));
    }

    /// A regular file copied from the host.
    pub fn host_file(&mut self, path: &str, mode: u32, source: &Path) {
        self.entries
            .push((path.to_string(), mode, Kind::Host(source.to_path_buf())));
    }

    /// A host directory tree, copied recursively (regular files and directories only).
    pub fn host_tree(&mut self, path: &str, source: &Path) -> Result<()> {
        self.dir(path);
        let mut names: Vec<_> = std::fs::read_dir(source)
            .with_context(|| format!("listing {}", source.display()))?
            .collect::<Result<_, _>>()?;
        names.sort_by_key(|e| e.file_name());
        for entry in names {
            let name = entry.file_name().to_string_lossy().into_owned();
            let child = format!("{path}/{name}");
            let kind = entry.file_type()?;
            if kind.is_dir() {
                self.host_tree(&child, &entry.path())?;
            } else if kind.is_file() {
                self.host_file(&child, 0o644, &entry.path());
            }
        }
        Ok(())
    }

    /// A symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) {
        self.entries
            .push((path.to_string(), 0o777, Kind::Symlink(target.to_string())));
    }

    /// A character device node.
    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        self.entries
            .push((path.to_string(), mode, Kind::CharDevice(major, minor)));
    }

    /// Writes the archive to `out`.
    pub fn write(&self, out: &Path) -> Result<()> {
        let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
        let mut w = Writer {
            out: BufWriter::new(file),
            offset: 0,
            ino: 0,
        };
        let mut seen = BTreeSet::new();
        for (path, mode, kind) in &self.entries {
            let path = path.trim_start_matches('/');
            if path.is_empty() || path.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
                bail!("bad initramfs path {path:?}");
            }
            let parts: Vec<&str> = path.split('/').collect();
            for i in 1..parts.len() {
                let parent = parts[..i].join("/");
                if seen.insert(parent.clone()) {
                    w.entry(&parent, S_IFDIR | 0o755, 0, &mut std::io::empty(), 0)?;
                }
            }
            let fresh = seen.insert(path.to_string());
            let perm = mode & 0o7777;
            match kind {
                Kind::Dir if !fresh => {}
                Kind::Dir => w.entry(path, S_IFDIR | perm, 0, &mut std::io::empty(), 0)?,
                Kind::Bytes(data) => w.entry(path, S_IFREG | perm, 0, &mut data.as_slice(), data.len() as u64)?,
                Kind::Symlink(target) => {
                    w.entry(path, S_IFLNK | 0o777, 0, &mut target.as_bytes(), target.len() as u64)?
                }
                Kind::CharDevice(major, minor) => {
                    w.entry(path, S_IFCHR | perm, (major << 8) | minor, &mut std::io::empty(), 0)?
                }
                Kind::Host(source) => {
                    let mut f = File::open(source).with_context(|| format!("opening {}", source.display()))?;
                    let len = f.metadata()?.len();
                    w.entry(path, S_IFREG | perm, 0, &mut f, len)?
                }
            }
        }
        w.entry(TRAILER, 0, 0, &mut std::io::empty(), 0)?;
        w.out.flush()?;
        Ok(())
    }
}

struct Writer<W: Write> {
    out: W,
    offset: u64,
    ino: u32,
}

impl<W: Write> Writer<W> {
    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    fn pad4(&mut self) -> Result<()> {
        let pad = ((4 - self.offset % 4) % 4) as usize;
        self.put(&[0u8; 3][..pad])
    }

    /// One entry; `rdev` is `major << 8 | minor` for device nodes.
    fn entry(&mut self, name: &str, mode: u32, rdev: u32, data: &mut dyn std::io::Read, len: u64) -> Result<()> {
        let size = u32::try_from(len).with_context(|| format!("{name} is over 4 GiB"))?;
        self.ino += 1;
        let nlink = if mode & S_IFDIR == S_IFDIR { 2 } else { 1 };
        let header = format!(
            "070701{:08X}{mode:08X}{:08X}{:08X}{nlink:08X}{:08X}{size:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            self.ino,
            0,
            0,
            0,
            0,
            0,
            rdev >> 8,
            rdev & 0xff,
            name.len() + 1,
            0
        );
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad4()?;
        let copied = std::io::copy(&mut std::io::Read::take(data, len), &mut self.out)?;
        if copied != len {
            bail!("{name}: short read ({copied} of {len} bytes)");
        }
        self.offset += len;
        self.pad4()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_layout_is_aligned_and_ends_with_trailer() {
        let dir = std::env::temp_dir().join(format!("xtask-cpio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("a.cpio");
        let mut a = Archive::default();
        a.bytes("init", 0o755, b"#!/bin/sh\n".to_vec());
        a.symlink("bin/sh", "busybox");
        a.char_device("dev/console", 0o600, 5, 1);
        a.write(&out).unwrap();
        let data = std::fs::read(&out).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        // init, bin (implicit), bin/sh, dev (implicit), dev/console, trailer.
        let mut names = Vec::new();
        let mut off = 0usize;
        loop {
            assert_eq!(&data[off..off + 6], b"070701");
            let field = |i: usize| {
                u32::from_str_radix(
                    std::str::from_utf8(&data[off + 6 + i * 8..off + 14 + i * 8]).unwrap(),
                    16,
                )
                .unwrap()
            };
            let (size, namesize) = (field(6) as usize, field(11) as usize);
            let name = std::str::from_utf8(&data[off + 110..off + 110 + namesize - 1])
                .unwrap()
                .to_string();
            if name == "dev/console" {
                assert_eq!((field(9), field(10)), (5, 1));
            }
            off = (off + 110 + namesize).next_multiple_of(4);
            off = (off + size).next_multiple_of(4);
            names.push(name.clone());
            if name == TRAILER {
                break;
            }
        }
        assert_eq!(off, data.len());
        assert_eq!(names, ["init", "bin", "bin/sh", "dev", "dev/console", TRAILER]);
    }
}
