//! `kvmkit image`: Linux guest assets built from Debian packages, cached; kvmkit's own guest as a file.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use kvmkit_images::{
    build_rootfs, cached_linux_assets, cached_rootfs, fetch_linux_assets, list, Cache, LinuxAssets, RootfsAssets,
};

use crate::cli::{ImageArgs, ImageCommand};

/// Runs `kvmkit image fetch|rootfs|list|guest`.
pub fn run(args: &ImageArgs) -> anyhow::Result<u8> {
    if let ImageCommand::Guest { out } = &args.command {
        return write_guest(out);
    }
    let cache = Cache::from_env().context("cannot locate the kvmkit cache (set KVMKIT_CACHE)")?;
    match args.command {
        ImageCommand::Guest { .. } => unreachable!("handled above"),
        ImageCommand::Fetch => {
            let assets = ensure_linux_assets(&cache)?;
            crate::logging::outln!("kernel     {} ({})", assets.kernel.display(), assets.kernel_version);
            crate::logging::outln!("bzimage    {} ({})", assets.bzimage.display(), assets.kernel_version);
            crate::logging::outln!(
                "initramfs  {} (busybox {})",
                assets.initramfs.display(),
                assets.busybox_version
            );
        }
        ImageCommand::Rootfs => {
            let rootfs = ensure_rootfs(&cache)?;
            crate::logging::outln!(
                "rootfs     {} ({} packages)",
                rootfs.tree.display(),
                rootfs.packages.len()
            );
            crate::logging::outln!("image      {} ({})", rootfs.image.display(), human(rootfs.image_bytes));
            for p in kvmkit_images::ROOTFS_PACKAGES {
                crate::logging::outln!("  {p:<16} {}", rootfs.version_of(p).unwrap_or("?"));
            }
        }
        ImageCommand::List => {
            let mut items = list(&cache).context("cannot read the cache")?;
            items.extend(kvmkit_images::list_rootfs(&cache));
            if items.is_empty() {
                crate::logging::outln!(
                    "nothing cached in {} (run `kvmkit image fetch`)",
                    cache.root().display()
                );
            }
            for item in items {
                crate::logging::outln!(
                    "{:<16} {:<28} {:>10}  {}",
                    item.name,
                    item.version,
                    human(item.bytes),
                    item.path.display()
                );
            }
        }
    }
    Ok(0)
}

/// `kvmkit image guest --out FILE`: writes the embedded test guest to a
/// temporary file beside FILE, then renames it over FILE.
fn write_guest(out: &Path) -> anyhow::Result<u8> {
    let bytes = kvmkit_guest_image::GUEST_ELF;
    write_atomically(out, bytes)?;
    crate::logging::outln!(
        "wrote kvmkit's test guest ({}, PVH ELF) to {}",
        human(bytes.len() as u64),
        out.display()
    );
    crate::logging::outln!(
        "boot it: kvmkit run --kernel {} --cmdline \"console=ttyS0 reboot=k panic=1 kvmkit.workload=primes:100000\"",
        out.display()
    );
    crate::logging::outln!(
        "  (or as the kernel of Firecracker, Cloud Hypervisor or QEMU -M microvm; it prints on COM1 and \
         ends the VM itself; see docs/test-guest.md)"
    );
    Ok(0)
}

/// Writes `bytes` to `path` through a temporary file in the same directory
/// and a rename, so `path` is never seen half-written.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let Some(name) = path.file_name() else {
        bail!("cannot write {}: not a file name", path.display());
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!(
            "cannot write {}: directory {} does not exist",
            path.display(),
            dir.display()
        );
    }
    if path.is_dir() {
        bail!("cannot write {}: it is a directory", path.display());
    }
    // The rename would replace a device, FIFO or socket (/dev/null
    // included) with a regular file: refuse anything but a regular file.
    if let Ok(meta) = std::fs::metadata(path) {
        if !meta.is_file() {
            bail!(
                "cannot write {}: it exists and is not a regular file (a device, FIFO or socket); give a file path",
                path.display()
            );
        }
    }
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        bail!("cannot write {}: {e}", path.display());
    }
    Ok(())
}

/// The cached Linux assets, fetched and built first when absent or corrupt.
pub fn ensure_linux_assets(cache: &Cache) -> anyhow::Result<LinuxAssets> {
    if let Ok(Some(assets)) = cached_linux_assets(cache) {
        return Ok(assets);
    }
    let bar = spinner("building Linux guest assets from Debian packages");
    let result = fetch_linux_assets(cache, &|step: &str| bar.set_message(step.to_owned()));
    bar.finish_and_clear();
    result.context("cannot build the Linux guest assets")
}

/// The cached bench rootfs, built first when absent or stale.
pub fn ensure_rootfs(cache: &Cache) -> anyhow::Result<RootfsAssets> {
    if let Ok(Some(rootfs)) = cached_rootfs(cache) {
        return Ok(rootfs);
    }
    let bar = spinner("building the bench rootfs from Debian packages");
    let result = build_rootfs(cache, &|step: &str| bar.set_message(step.to_owned()));
    bar.finish_and_clear();
    result.context("cannot build the bench rootfs")
}

fn spinner(message: &'static str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar.set_message(message);
    bar
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}
