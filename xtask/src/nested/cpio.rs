//! The L1 initramfs, collected entry by entry and written by kvmkit-images' cpio "newc" writer
//! (one writer for every initramfs the project builds).

use std::path::Path;

use anyhow::{Context, Result};
use kvmkit_images::{write_initramfs, InitramfsEntry};

/// Collects entries, then writes them in order with [`Archive::write`].
#[derive(Default)]
pub struct Archive {
    entries: Vec<InitramfsEntry>,
}

impl Archive {
    /// A directory.
    pub fn dir(&mut self, path: &str) {
        self.entries.push(InitramfsEntry::dir(path, 0o755));
    }

    /// A regular file with the given contents.
    pub fn bytes(&mut self, path: &str, mode: u32, data: impl Into<Vec<u8>>) {
        self.entries.push(InitramfsEntry::file(path, mode, data));
    }

    /// A regular file copied from the host (streamed when the archive is written).
    pub fn host_file(&mut self, path: &str, mode: u32, source: &Path) {
        self.entries.push(InitramfsEntry::host_file(path, mode, source));
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
        self.entries.push(InitramfsEntry::symlink(path, target));
    }

    /// A character device node.
    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        self.entries.push(InitramfsEntry::char_device(path, mode, major, minor));
    }

    /// Writes the archive to `out`.
    pub fn write(&self, out: &Path) -> Result<()> {
        write_initramfs(out, &self.entries).with_context(|| format!("writing the initramfs {}", out.display()))
    }
}
