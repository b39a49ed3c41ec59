//! Fetching Debian packages and assembling the asset directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::command::run;
use crate::cpio::{write_initramfs, InitramfsEntry};
use crate::debian::{find_deb, Apt};
use crate::manifest::{self, FileRecord, Manifest, ModuleRecord};
use crate::modules::{self, GUEST_MODULES};
use crate::{bzimage, init, Cache, CachedItem, ImageError, LinuxAssets};

/// The Debian meta package of the guest kernel.
const KERNEL_META_PACKAGE: &str = "linux-image-cloud-amd64";
const BUSYBOX_PACKAGE: &str = "busybox-static";
const KERNEL: &str = "vmlinux";
const BZIMAGE: &str = "bzImage";
const INITRAMFS: &str = "initramfs.cpio";
const BUSYBOX: &str = "busybox";

fn deb_version(deb: &Path) -> Result<String, ImageError> {
    Ok(run(Command::new("dpkg-deb").arg("-f").arg(deb).arg("Version"))?
        .trim()
        .to_string())
}

/// The first existing path among `candidates` (for the `/usr`-merged layout of newer releases).
fn first_existing(root: &Path, candidates: &[String]) -> Option<PathBuf> {
    candidates.iter().map(|c| root.join(c)).find(|p| p.exists())
}

fn copy(from: &Path, to: &Path) -> Result<(), ImageError> {
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| ImageError::io(format!("copying {} to {}", from.display(), to.display()), e))
}

/// Removes `linux.tmp-<pid>` directories left by processes that no longer exist.
pub(crate) fn sweep_stale(cache: &Cache) {
    let Ok(entries) = std::fs::read_dir(cache.root()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("linux.tmp-")
            .or_else(|| name.strip_prefix("linux.old-"))
            .or_else(|| name.strip_prefix("rootfs.tmp-"))
            .or_else(|| name.strip_prefix("rootfs.old-"));
        if let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// Files up to this size are hashed by [`cached_linux_assets`] (the initramfs and busybox);
/// larger ones (the kernels) are checked by size there and hashed by [`verify_linux_assets`].
const CHEAP_HASH_LIMIT: u64 = 8 << 20;

/// Returns the cached Linux assets after checking them against their manifest: every file
/// present with its recorded size, and the small ones (initramfs, busybox) with their SHA-256.
///
/// `Ok(None)` when nothing is cached or the manifest is missing or partial (an interrupted
/// build); [`ImageError::Corrupt`] when a file does not match. [`fetch_linux_assets`] rebuilds
/// in both cases.
pub fn cached_linux_assets(cache: &Cache) -> Result<Option<LinuxAssets>, ImageError> {
    let dir = cache.linux_dir();
    let Some(m) = manifest::read(&dir)? else {
        return Ok(None);
    };
    for role in ["kernel", "bzimage", "initramfs", "busybox"] {
        if !m.files.iter().any(|f| f.role == role) {
            return Ok(None);
        }
    }
    manifest::validate_up_to(&dir, &m, CHEAP_HASH_LIMIT)?;
    Ok(Some(assets_from(&dir, &m)))
}

/// Like [`cached_linux_assets`], but checks the SHA-256 of every file, the kernels included
/// (about 70 MB to hash).
pub fn verify_linux_assets(cache: &Cache) -> Result<Option<LinuxAssets>, ImageError> {
    let Some(assets) = cached_linux_assets(cache)? else {
        return Ok(None);
    };
    let dir = cache.linux_dir();
    if let Some(m) = manifest::read(&dir)? {
        manifest::validate(&dir, &m, true)?;
    }
    Ok(Some(assets))
}

fn assets_from(dir: &Path, m: &Manifest) -> LinuxAssets {
    LinuxAssets {
        kernel: dir.join(KERNEL),
        bzimage: dir.join(BZIMAGE),
        initramfs: dir.join(INITRAMFS),
        kernel_version: m.kernel_version.clone(),
        busybox_version: m.busybox_version.clone(),
        vsock: m
            .modules
            .loaded
            .iter()
            .any(|p| p.ends_with(&format!("/{}.ko", modules::VSOCK_MODULE))),
    }
}

/// Lists the cached, validated assets; empty when nothing valid is cached.
pub fn list(cache: &Cache) -> Result<Vec<CachedItem>, ImageError> {
    let dir = cache.linux_dir();
    let Some(m) = manifest::read(&dir)? else {
        return Ok(Vec::new());
    };
    if manifest::validate(&dir, &m, false).is_err() {
        return Ok(Vec::new());
    }
    Ok(m.files
        .iter()
        .map(|f| CachedItem {
            name: match f.role.as_str() {
                "busybox" => "busybox".to_string(),
                role => format!("linux-{role}"),
            },
            version: f.version.clone(),
            path: dir.join(&f.name),
            bytes: f.bytes,
        })
        .collect())
}

/// Makes sure the cache holds a complete set of Linux guest assets and returns it.
///
/// Idempotent: valid cached assets are returned as they are. Otherwise the kernel and
/// busybox-static packages are downloaded (`apt-get download`, with one `apt-get update` if
/// needed) and unpacked (`dpkg-deb -x`) in a temporary directory under the cache, the assets are
/// built there, the manifest is written last, and the directory is renamed into place.
/// `progress` receives one-line status messages.
pub fn fetch_linux_assets(cache: &Cache, progress: &dyn Fn(&str)) -> Result<LinuxAssets, ImageError> {
    match cached_linux_assets(cache) {
        Ok(Some(assets)) => return Ok(assets),
        Ok(None) => {}
        Err(e) => progress(&format!("rebuilding the cached Linux assets: {e}")),
    }
    std::fs::create_dir_all(cache.root())
        .map_err(|e| ImageError::io(format!("creating {}", cache.root().display()), e))?;
    sweep_stale(cache);
    let tmp = cache.root().join(format!("linux.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let result = build(&tmp, progress).and_then(|m| install(cache, &tmp, &m, progress));
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// Moves the finished build at `tmp` into place as `<root>/linux`.
fn install(cache: &Cache, tmp: &Path, m: &Manifest, progress: &dyn Fn(&str)) -> Result<LinuxAssets, ImageError> {
    let dir = cache.linux_dir();
    if dir.exists() {
        // Another process may have finished first; keep its result if it is valid.
        if let Ok(Some(assets)) = cached_linux_assets(cache) {
            return Ok(assets);
        }
        let old = cache.root().join(format!("linux.old-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(&dir, &old).map_err(|e| ImageError::io(format!("moving {} aside", dir.display()), e))?;
        let _ = std::fs::remove_dir_all(&old);
    }
    if let Err(e) = std::fs::rename(tmp, &dir) {
        if let Ok(Some(assets)) = cached_linux_assets(cache) {
            return Ok(assets); // lost a race to an equally valid build
        }
        return Err(ImageError::io(
            format!("renaming {} to {}", tmp.display(), dir.display()),
            e,
        ));
    }
    progress(&format!("Linux assets ready in {}", dir.display()));
    Ok(assets_from(&dir, m))
}

/// Builds the assets in `tmp` and returns the manifest it wrote there.
fn build(tmp: &Path, progress: &dyn Fn(&str)) -> Result<Manifest, ImageError> {
    let debs = tmp.join("debs");
    let kroot = tmp.join("kernel-pkg");
    let broot = tmp.join("busybox-pkg");
    for d in [&debs, &kroot, &broot] {
        std::fs::create_dir_all(d).map_err(|e| ImageError::io(format!("creating {}", d.display()), e))?;
    }
    let mut apt = Apt::new(progress);
    let kernel_package = apt.resolve_kernel_package(KERNEL_META_PACKAGE)?;
    progress(&format!("downloading {kernel_package} and {BUSYBOX_PACKAGE}"));
    apt.download(&debs, &[&kernel_package, BUSYBOX_PACKAGE])?;
    let kernel_deb = find_deb(&debs, &kernel_package)?;
    let busybox_deb = find_deb(&debs, BUSYBOX_PACKAGE)?;
    let kernel_package_version = deb_version(&kernel_deb)?;
    let busybox_version = deb_version(&busybox_deb)?;
    progress(&format!(
        "unpacking {kernel_package} {kernel_package_version} and busybox {busybox_version}"
    ));
    run(Command::new("dpkg-deb").arg("-x").arg(&kernel_deb).arg(&kroot))?;
    run(Command::new("dpkg-deb").arg("-x").arg(&busybox_deb).arg(&broot))?;

    // The kernel: /boot/vmlinuz-<version>.
    let boot = kroot.join("boot");
    let vmlinuz = std::fs::read_dir(&boot)
        .map_err(|e| ImageError::io(format!("listing {}", boot.display()), e))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .ok_or_else(|| ImageError::Package(format!("{kernel_package} has no /boot/vmlinuz-*")))?;
    let kernel_version = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .unwrap_or_default()
        .to_string();
    copy(&vmlinuz, &tmp.join(BZIMAGE))?;
    progress(&format!("unpacking the ELF vmlinux of {kernel_version}"));
    let image = std::fs::read(&vmlinuz).map_err(|e| ImageError::io(format!("reading {}", vmlinuz.display()), e))?;
    let elf = bzimage::extract_vmlinux(&image)?;
    drop(image);
    std::fs::write(tmp.join(KERNEL), &elf).map_err(|e| ImageError::io("writing vmlinux", e))?;
    drop(elf);

    // Modules.
    let moddir = first_existing(
        &kroot,
        &[
            format!("lib/modules/{kernel_version}"),
            format!("usr/lib/modules/{kernel_version}"),
        ],
    )
    .ok_or_else(|| ImageError::Package(format!("{kernel_package} has no lib/modules/{kernel_version}")))?;
    let resolution = modules::resolve(&moddir, GUEST_MODULES)?;
    let names: Vec<&str> = resolution.load.iter().map(|m| m.name.as_str()).collect();
    progress(&format!(
        "modules: load {}; built in {}; missing {}",
        names.join(" "),
        or_none(&resolution.builtin),
        or_none(&resolution.missing)
    ));

    // Busybox.
    let busybox = first_existing(&broot, &["bin/busybox".to_string(), "usr/bin/busybox".to_string()])
        .ok_or_else(|| ImageError::Package(format!("{BUSYBOX_PACKAGE} has no bin/busybox")))?;
    copy(&busybox, &tmp.join(BUSYBOX))?;

    // The initramfs.
    progress("writing the initramfs");
    let mut entries = vec![
        InitramfsEntry::dir("/bin", 0o755),
        InitramfsEntry::dir("/sbin", 0o755),
        InitramfsEntry::dir("/usr/bin", 0o755),
        InitramfsEntry::dir("/usr/sbin", 0o755),
        InitramfsEntry::dir("/etc", 0o755),
        InitramfsEntry::dir("/root", 0o700),
        InitramfsEntry::dir("/proc", 0o555),
        InitramfsEntry::dir("/sys", 0o555),
        InitramfsEntry::dir("/tmp", 0o1777),
        InitramfsEntry::dir("/dev", 0o755),
        InitramfsEntry::char_device("/dev/console", 0o600, 5, 1),
        InitramfsEntry::char_device("/dev/null", 0o666, 1, 3),
        InitramfsEntry::char_device("/dev/port", 0o640, 1, 4),
        InitramfsEntry::dir(format!("/lib/modules/{kernel_version}"), 0o755),
        InitramfsEntry::host_file("/bin/busybox", 0o755, tmp.join(BUSYBOX)),
        InitramfsEntry::file("/bin/kvmkit-outb", 0o755, init::outb_elf()),
    ];
    entries.extend(
        init::APPLETS
            .iter()
            .map(|a| InitramfsEntry::symlink(format!("/bin/{a}"), "busybox")),
    );
    for m in &resolution.load {
        entries.push(InitramfsEntry::host_file(
            format!("/lib/modules/{kernel_version}/{}", m.rel_path),
            0o644,
            moddir.join(&m.rel_path),
        ));
    }
    let module_list: String = resolution
        .load
        .iter()
        .map(|m| format!("load {}\n", m.rel_path))
        .chain(resolution.builtin.iter().map(|m| format!("builtin {m}\n")))
        .chain(resolution.missing.iter().map(|m| format!("missing {m}\n")))
        .collect();
    entries.push(InitramfsEntry::file("/etc/kvmkit-modules", 0o644, module_list));
    entries.push(InitramfsEntry::file(
        "/init",
        0o755,
        init::init_script(&kernel_version, &resolution),
    ));
    write_initramfs(&tmp.join(INITRAMFS), &entries)?;

    // Drop the unpacked packages before hashing, then write the manifest last.
    for d in [&debs, &kroot, &broot] {
        let _ = std::fs::remove_dir_all(d);
    }
    let initramfs_version = format!("{kernel_version}+busybox-{busybox_version}");
    let mut files = Vec::new();
    for (name, role, version) in [
        (KERNEL, "kernel", &kernel_version),
        (BZIMAGE, "bzimage", &kernel_version),
        (INITRAMFS, "initramfs", &initramfs_version),
        (BUSYBOX, "busybox", &busybox_version),
    ] {
        let (bytes, sha256) = manifest::hash_file(&tmp.join(name))?;
        files.push(FileRecord {
            name: name.into(),
            role: role.into(),
            version: version.clone(),
            bytes,
            sha256,
        });
    }
    let m = Manifest {
        format: manifest::FORMAT,
        kernel_version,
        kernel_package,
        kernel_package_version,
        busybox_version,
        modules: ModuleRecord {
            loaded: resolution.load.iter().map(|m| m.rel_path.clone()).collect(),
            builtin: resolution.builtin.clone(),
            missing: resolution.missing.clone(),
        },
        files,
    };
    manifest::write(tmp, &m)?;
    Ok(m)
}

fn or_none(list: &[String]) -> String {
    if list.is_empty() {
        "none".into()
    } else {
        list.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake but complete asset directory, as a build would leave it.
    fn fake_cache(name: &str) -> Cache {
        let root = std::env::temp_dir().join(format!("kvmkit-images-fetch-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let cache = Cache::new(&root);
        let dir = cache.linux_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let mut files = Vec::new();
        for (name, role) in [
            (KERNEL, "kernel"),
            (BZIMAGE, "bzimage"),
            (INITRAMFS, "initramfs"),
            (BUSYBOX, "busybox"),
        ] {
            std::fs::write(dir.join(name), format!("contents of {name}")).unwrap();
            let (bytes, sha256) = manifest::hash_file(&dir.join(name)).unwrap();
            files.push(FileRecord {
                name: name.into(),
                role: role.into(),
                version: "v".into(),
                bytes,
                sha256,
            });
        }
        let m = Manifest {
            format: manifest::FORMAT,
            kernel_version: "6.1.0-test-cloud-amd64".into(),
            kernel_package: "linux-image-6.1.0-test-cloud-amd64".into(),
            kernel_package_version: "6.1.1-1".into(),
            busybox_version: "1:1.35.0-4".into(),
            modules: ModuleRecord::default(),
            files,
        };
        manifest::write(&dir, &m).unwrap();
        cache
    }

    #[test]
    fn valid_cache_is_returned_and_listed() {
        let cache = fake_cache("valid");
        let assets = cached_linux_assets(&cache).unwrap().unwrap();
        assert_eq!(assets.kernel, cache.linux_dir().join("vmlinux"));
        assert_eq!(assets.kernel_version, "6.1.0-test-cloud-amd64");
        assert_eq!(assets.busybox_version, "1:1.35.0-4");
        // fetch is idempotent: a valid cache is returned without running apt.
        assert_eq!(fetch_linux_assets(&cache, &|_| {}).unwrap(), assets);
        let items = list(&cache).unwrap();
        let names: Vec<&str> = items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["linux-kernel", "linux-bzimage", "linux-initramfs", "busybox"]);
        assert_eq!(items[0].bytes, "contents of vmlinux".len() as u64);
        std::fs::remove_dir_all(cache.root()).unwrap();
    }

    #[test]
    fn corrupt_size_or_missing_manifest_needs_rebuild() {
        let cache = fake_cache("corrupt");
        std::fs::write(cache.linux_dir().join(INITRAMFS), "truncated").unwrap();
        assert!(matches!(cached_linux_assets(&cache), Err(ImageError::Corrupt(_))));
        assert!(list(&cache).unwrap().is_empty());
        std::fs::write(cache.linux_dir().join(INITRAMFS), "contents of initramfs.cpio").unwrap();
        assert!(cached_linux_assets(&cache).unwrap().is_some());
        // Same size, other bytes: caught by the hash (these fake files are all small).
        std::fs::write(cache.linux_dir().join(KERNEL), "contents of VMLINUX").unwrap();
        assert!(matches!(cached_linux_assets(&cache), Err(ImageError::Corrupt(_))));
        assert!(matches!(verify_linux_assets(&cache), Err(ImageError::Corrupt(_))));
        std::fs::remove_file(cache.linux_dir().join(manifest::MANIFEST)).unwrap();
        assert_eq!(cached_linux_assets(&cache).unwrap(), None);
        std::fs::remove_dir_all(cache.root()).unwrap();
        assert_eq!(cached_linux_assets(&cache).unwrap(), None);
        assert!(list(&cache).unwrap().is_empty());
    }
}
