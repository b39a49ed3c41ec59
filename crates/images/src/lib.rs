//! Builds and caches the assets kvmkit needs to boot a real Linux guest: Debian's cloud kernel
//! (as ELF `vmlinux` and as bzImage) and a small busybox initramfs whose `/init` can run one
//! command given on the kernel command line and report its exit status to the VMM; and the
//! Debian root file system with the paper's programs that `kvmkit bench --guest linux` runs
//! (see [`build_rootfs`]).
//!
//! Packages are fetched with `apt-get download` and unpacked with `dpkg-deb -x` into a
//! temporary directory under the cache; nothing is installed on the host.
//!
//! Cache layout (under [`Cache::root`]):
//!
//! ```text
//! linux/                 the current assets, renamed into place whole
//!   vmlinux              ELF kernel unpacked from the bzImage payload
//!   bzImage              the kernel as Debian ships it (/boot/vmlinuz-<version>)
//!   initramfs.cpio       uncompressed cpio newc archive
//!   busybox              busybox-static's /bin/busybox
//!   manifest.json        versions, sizes, SHA-256 of the files above (written last)
//! linux.tmp-<pid>/       a build in progress (removed when done; stale ones are swept)
//! ```

#![deny(missing_docs)]

mod bzimage;
mod command;
mod cpio;
pub mod debian;
mod fetch;
mod init;
mod kernel_version;
mod manifest;
mod modules;
mod rootfs;

use std::path::{Path, PathBuf};

pub use cpio::{write_initramfs, EntryKind, FileSource, InitramfsEntry};
pub use fetch::{cached_linux_assets, fetch_linux_assets, list, verify_linux_assets};
pub use init::{
    cmdline_command, AGENT_KEY, CMDLINE_KEY, EXIT_STATUS_MARKER, EXIT_STATUS_PORT, MILESTONE_PORT, MILESTONE_USERSPACE,
    USERSPACE_READY_MARKER,
};
pub use kernel_version::linux_version;
pub use modules::{GUEST_MODULES, VSOCK_MODULE};

/// Command line for these assets (`kvmkit run --linux`, `kvmkit bench --guest linux`):
/// quiet, since every console byte is a VM exit; a panic reboots at once, which ends the VM.
pub const LINUX_ASSETS_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 pci=off quiet";
pub use rootfs::{build_rootfs, cached_rootfs, list_rootfs, rootfs_dir, RootfsAssets, ROOTFS_PACKAGES};

/// Errors from building, fetching or validating guest assets.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A filesystem operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An external tool (apt-get, dpkg-deb, ...) failed.
    #[error("`{command}` failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status and the end of its stderr.
        detail: String,
    },
    /// A Debian package could not be resolved or unpacked as expected.
    #[error("package: {0}")]
    Package(String),
    /// The kernel image is not a bzImage kvmkit can unpack.
    #[error("kernel image: {0}")]
    BadKernel(String),
    /// An initramfs entry is invalid (e.g. its path contains `..`).
    #[error("initramfs entry: {0}")]
    InvalidEntry(String),
    /// The cached assets do not match their manifest.
    #[error("corrupt cache: {0}")]
    Corrupt(String),
    /// Neither `$KVMKIT_CACHE` nor `$HOME` is set.
    #[error("no cache directory: set $KVMKIT_CACHE or $HOME")]
    NoCacheDir,
}

impl ImageError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ImageError::Io {
            context: context.into(),
            source,
        }
    }
}

/// kvmkit's asset cache directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// A cache rooted at `root` (created on first fetch).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The cache at `$KVMKIT_CACHE`, or `~/.cache/kvmkit` when that is unset or empty.
    pub fn from_env() -> Result<Self, ImageError> {
        match std::env::var_os("KVMKIT_CACHE") {
            Some(dir) if !dir.is_empty() => Ok(Self::new(dir)),
            _ => match std::env::var_os("HOME") {
                Some(home) if !home.is_empty() => Ok(Self::new(PathBuf::from(home).join(".cache").join("kvmkit"))),
                _ => Err(ImageError::NoCacheDir),
            },
        }
    }

    /// The cache's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory holding the current Linux assets (`<root>/linux`).
    pub fn linux_dir(&self) -> PathBuf {
        self.root.join("linux")
    }
}

/// A complete, validated set of Linux guest assets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinuxAssets {
    /// The ELF `vmlinux` (boot it with a PVH/ELF loader).
    pub kernel: PathBuf,
    /// The bzImage as Debian ships it.
    pub bzimage: PathBuf,
    /// The uncompressed cpio newc initramfs.
    pub initramfs: PathBuf,
    /// The kernel release, e.g. `6.1.0-56-cloud-amd64`.
    pub kernel_version: String,
    /// busybox-static's Debian package version, e.g. `1:1.35.0-4+deb12u1+b1`.
    pub busybox_version: String,
    /// The initramfs loads the virtio-vsock modules (`kvmkit run --linux` can run commands
    /// through the guest agent).
    pub vsock: bool,
}

/// One file in the cache, as [`list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedItem {
    /// What it is: `linux-kernel`, `linux-bzimage`, `linux-initramfs` or `busybox`.
    pub name: String,
    /// The version of what it holds.
    pub version: String,
    /// Where it is.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_paths() {
        let c = Cache::new("/x/y");
        assert_eq!(c.root(), Path::new("/x/y"));
        assert_eq!(c.linux_dir(), Path::new("/x/y/linux"));
    }
}
