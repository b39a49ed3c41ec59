//! `kvmkit image`: Linux guest assets built from Debian packages, cached.

use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use kvmkit_images::{
    build_rootfs, cached_linux_assets, cached_rootfs, fetch_linux_assets, list, Cache, LinuxAssets, RootfsAssets,
};

use crate::cli::{ImageArgs, ImageCommand};

/// Runs `kvmkit image fetch|rootfs|list`.
pub fn run(args: &ImageArgs) -> anyhow::Result<u8> {
    let cache = Cache::from_env().context("cannot locate the kvmkit cache (set KVMKIT_CACHE)")?;
    match args.command {
        ImageCommand::Fetch => {
            let assets = ensure_linux_assets(&cache)?;
            println!("kernel     {} ({})", assets.kernel.display(), assets.kernel_version);
            println!(
                "initramfs  {} (busybox {})",
                assets.initramfs.display(),
                assets.busybox_version
            );
        }
        ImageCommand::Rootfs => {
            let rootfs = ensure_rootfs(&cache)?;
            println!(
                "rootfs     {} ({} packages)",
                rootfs.tree.display(),
                rootfs.packages.len()
            );
            println!("image      {} ({})", rootfs.image.display(), human(rootfs.image_bytes));
            for p in kvmkit_images::ROOTFS_PACKAGES {
                println!("  {p:<16} {}", rootfs.version_of(p).unwrap_or("?"));
            }
        }
        ImageCommand::List => {
            let mut items = list(&cache).context("cannot read the cache")?;
            items.extend(kvmkit_images::list_rootfs(&cache));
            if items.is_empty() {
                println!(
                    "nothing cached in {} (run `kvmkit image fetch`)",
                    cache.root().display()
                );
            }
            for item in items {
                println!(
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
