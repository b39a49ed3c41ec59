//! The Debian root file system of `kvmkit bench --guest linux`: the paper's programs
//! (python3, memtester, dd, openssl, 7-Zip, POV-Ray, PostMark) with kvmkit's harness.
//!
//! Built without installing anything on the host and without debootstrap: apt resolves the
//! packages' dependency closure against an empty dpkg status (`apt-get install
//! --download-only`), each `.deb` is unpacked with `dpkg-deb -x` (no maintainer scripts run:
//! the programs need none), and `mkfs.ext4 -d` turns the tree into the guest's root disk.
//! The host runs the same tree in a chroot, so both sides run the same program versions.
//!
//! Cache layout (under [`Cache::root`]):
//!
//! ```text
//! rootfs/
//!   root/            the tree (the host's chroot); /kvmkit holds the harness
//!   rootfs.ext4      the same tree as an ext4 image (the guest's read-only root disk)
//!   manifest.json    package versions and sizes (written last)
//! rootfs.tmp-<pid>/  a build in progress
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::command::run;
use crate::fetch::sweep_stale;
use crate::{Cache, CachedItem, ImageError};

/// The Debian packages of the rootfs (their dependencies come along).
pub const ROOTFS_PACKAGES: &[&str] = &[
    "python3-minimal",
    "memtester",
    "coreutils",
    "openssl",
    "7zip",
    "povray",
    "postmark",
];

/// The harness (`/kvmkit/bench.py NAME:ARG`), the prime program and the POV-Ray scene.
const HARNESS: &[(&str, &str, u32)] = &[
    ("bench.py", include_str!("../rootfs/bench.py"), 0o755),
    ("primes.py", include_str!("../rootfs/primes.py"), 0o755),
    ("scene.pov", include_str!("../rootfs/scene.pov"), 0o644),
];

/// Mount points the harness expects (`/data` is the scratch disk or directory).
const MOUNT_POINTS: &[&str] = &["proc", "sys", "dev", "tmp", "data", "root"];

const MANIFEST: &str = "manifest.json";
const IMAGE: &str = "rootfs.ext4";
const TREE: &str = "root";
/// Bumped whenever the tree's contents change incompatibly (the harness is hashed in too).
const FORMAT: u32 = 1;

/// A built rootfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsAssets {
    /// The unpacked tree (chroot target).
    pub tree: PathBuf,
    /// The ext4 image of the tree (attach read-only; its serial should be `kvmkit-rootfs`).
    pub image: PathBuf,
    /// `(package, version)` of every unpacked package.
    pub packages: Vec<(String, String)>,
    /// Size of the image in bytes.
    pub image_bytes: u64,
}

impl RootfsAssets {
    /// The version of `package`, if it is in the rootfs.
    pub fn version_of(&self, package: &str) -> Option<&str> {
        self.packages
            .iter()
            .find(|(p, _)| p == package)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    harness: String,
    packages: Vec<(String, String)>,
    image_bytes: u64,
}

/// A fingerprint of the harness files, so a changed harness rebuilds the rootfs.
fn harness_fingerprint() -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (name, text, _) in HARNESS {
        h.update(name.as_bytes());
        h.update(text.as_bytes());
    }
    h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The rootfs directory in `cache` (`<root>/rootfs`).
pub fn rootfs_dir(cache: &Cache) -> PathBuf {
    cache.root().join("rootfs")
}

/// The cached rootfs, if complete: a manifest of this format and harness, the tree with its
/// harness, and the image (a regular file of the recorded size, or a block device holding it).
pub fn cached_rootfs(cache: &Cache) -> Result<Option<RootfsAssets>, ImageError> {
    let dir = rootfs_dir(cache);
    let text = match std::fs::read_to_string(dir.join(MANIFEST)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ImageError::io(format!("reading {}", dir.join(MANIFEST).display()), e)),
    };
    let Ok(m) = serde_json::from_str::<Manifest>(&text) else {
        return Ok(None);
    };
    if m.format != FORMAT || m.harness != harness_fingerprint() {
        return Ok(None);
    }
    let tree = dir.join(TREE);
    let image = dir.join(IMAGE);
    if !tree.join("kvmkit/bench.py").is_file() || !tree.join("usr/bin/python3").exists() {
        return Ok(None);
    }
    match std::fs::metadata(&image) {
        Ok(md) if md.is_file() && md.len() != m.image_bytes => {
            return Err(ImageError::Corrupt(format!(
                "{} is {} bytes, the manifest says {}",
                image.display(),
                md.len(),
                m.image_bytes
            )))
        }
        Ok(_) => {}
        Err(_) => return Ok(None),
    }
    Ok(Some(RootfsAssets {
        tree,
        image,
        packages: m.packages,
        image_bytes: m.image_bytes,
    }))
}

/// The cached rootfs as [`CachedItem`]s (empty when there is none).
pub fn list_rootfs(cache: &Cache) -> Vec<CachedItem> {
    let Ok(Some(r)) = cached_rootfs(cache) else {
        return Vec::new();
    };
    let summary = ["python3-minimal", "povray", "7zip", "openssl"]
        .iter()
        .filter_map(|p| r.version_of(p).map(|v| format!("{p} {v}")))
        .collect::<Vec<_>>()
        .join(", ");
    vec![CachedItem {
        name: "linux-rootfs".into(),
        version: format!("{} packages ({summary})", r.packages.len()),
        path: r.image.clone(),
        bytes: r.image_bytes,
    }]
}

/// Makes sure the cache holds the bench rootfs and returns it (idempotent). Needs apt-get,
/// dpkg-deb and mkfs.ext4 (e2fsprogs); `progress` receives one-line status messages.
pub fn build_rootfs(cache: &Cache, progress: &dyn Fn(&str)) -> Result<RootfsAssets, ImageError> {
    match cached_rootfs(cache) {
        Ok(Some(r)) => return Ok(r),
        Ok(None) => {}
        Err(e) => progress(&format!("rebuilding the rootfs: {e}")),
    }
    for (tool, package) in [("apt-get", "apt"), ("dpkg-deb", "dpkg"), ("mkfs.ext4", "e2fsprogs")] {
        if !on_path(tool) {
            return Err(ImageError::Package(format!(
                "`{tool}` is missing: the rootfs needs it (apt-get install {package})"
            )));
        }
    }
    std::fs::create_dir_all(cache.root())
        .map_err(|e| ImageError::io(format!("creating {}", cache.root().display()), e))?;
    sweep_stale(cache);
    let tmp = cache.root().join(format!("rootfs.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let result = build(&tmp, progress).and_then(|m| install(cache, &tmp, m));
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

fn install(cache: &Cache, tmp: &Path, m: Manifest) -> Result<RootfsAssets, ImageError> {
    let dir = rootfs_dir(cache);
    if dir.exists() {
        let old = cache.root().join(format!("rootfs.old-{}", std::process::id()));
        std::fs::rename(&dir, &old).map_err(|e| ImageError::io(format!("moving {} aside", dir.display()), e))?;
        let _ = std::fs::remove_dir_all(&old);
    }
    std::fs::rename(tmp, &dir)
        .map_err(|e| ImageError::io(format!("renaming {} to {}", tmp.display(), dir.display()), e))?;
    Ok(RootfsAssets {
        tree: dir.join(TREE),
        image: dir.join(IMAGE),
        packages: m.packages,
        image_bytes: m.image_bytes,
    })
}

/// apt-get with a private, empty dpkg status and archive directory under `tmp`: it downloads
/// the whole dependency closure of `packages`, as for an empty system.
fn download_closure(tmp: &Path, debs: &Path, progress: &dyn Fn(&str)) -> Result<(), ImageError> {
    let state = tmp.join("dpkg-state");
    std::fs::create_dir_all(debs.join("partial")).map_err(|e| ImageError::io("creating the apt archive dir", e))?;
    std::fs::create_dir_all(&state).map_err(|e| ImageError::io("creating the dpkg state dir", e))?;
    std::fs::write(state.join("status"), "").map_err(|e| ImageError::io("writing an empty dpkg status", e))?;
    let attempt = || {
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--download-only", "--no-install-recommends"])
            .arg(format!("-oDir::State::status={}", state.join("status").display()))
            .arg(format!("-oDir::Cache::archives={}", debs.display()))
            .arg("-oDebug::NoLocking=1")
            .arg("-oAPT::Get::AllowUnauthenticated=false")
            .args(ROOTFS_PACKAGES)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    progress("downloading the rootfs packages (apt-get --download-only)");
    if attempt().is_err() {
        progress("running apt-get update");
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        attempt()?;
    }
    Ok(())
}

fn build(tmp: &Path, progress: &dyn Fn(&str)) -> Result<Manifest, ImageError> {
    let debs = tmp.join("debs");
    let tree = tmp.join(TREE);
    download_closure(tmp, &debs, progress)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&debs)
        .map_err(|e| ImageError::io(format!("listing {}", debs.display()), e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ImageError::Package("apt-get downloaded no packages".into()));
    }
    progress(&format!("unpacking {} packages", files.len()));
    let mut packages = Vec::new();
    for deb in &files {
        let fields = run(Command::new("dpkg-deb")
            .args(["-f"])
            .arg(deb)
            .args(["Package", "Version"]))?;
        let mut name = String::new();
        let mut version = String::new();
        for line in fields.lines() {
            if let Some(v) = line.strip_prefix("Package: ") {
                name = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("Version: ") {
                version = v.trim().to_owned();
            }
        }
        run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tree))?;
        packages.push((name, version));
    }
    for want in ROOTFS_PACKAGES {
        if !packages.iter().any(|(p, _)| p == want) {
            return Err(ImageError::Package(format!("{want} was not downloaded")));
        }
    }
    // Documentation is not needed to run anything.
    for dir in ["usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/info"] {
        let _ = std::fs::remove_dir_all(tree.join(dir));
    }
    let io = |what: &str, e| ImageError::io(format!("{what} in {}", tree.display()), e);
    for dir in MOUNT_POINTS {
        std::fs::create_dir_all(tree.join(dir)).map_err(|e| io("creating mount points", e))?;
    }
    let kvmkit = tree.join("kvmkit");
    std::fs::create_dir_all(&kvmkit).map_err(|e| io("creating /kvmkit", e))?;
    for (name, text, mode) in HARNESS {
        use std::os::unix::fs::PermissionsExt;
        let path = kvmkit.join(name);
        std::fs::write(&path, text).map_err(|e| io("writing the harness", e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).map_err(|e| io("chmod", e))?;
    }
    std::fs::write(tree.join("etc/hostname"), "kvmkit-bench\n").map_err(|e| io("writing /etc/hostname", e))?;

    progress("making the ext4 image (mkfs.ext4 -d)");
    let used = tree_bytes(&tree);
    // Room for the file system's own metadata, rounded to MiB.
    let mib = (used * 5 / 4 + (32 << 20)) >> 20;
    let image = tmp.join(IMAGE);
    run(Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-L",
            "kvmkit-rootfs",
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0",
            "-d",
        ])
        .arg(&tree)
        .arg(&image)
        .arg(format!("{mib}M")))?;
    let image_bytes = std::fs::metadata(&image)
        .map_err(|e| ImageError::io(format!("reading {}", image.display()), e))?
        .len();
    let _ = std::fs::remove_dir_all(&debs);
    let _ = std::fs::remove_dir_all(tmp.join("dpkg-state"));
    let m = Manifest {
        format: FORMAT,
        harness: harness_fingerprint(),
        packages,
        image_bytes,
    };
    let text = serde_json::to_string_pretty(&m).map_err(|e| ImageError::Package(format!("manifest: {e}")))?;
    std::fs::write(tmp.join(MANIFEST), text + "\n").map_err(|e| ImageError::io("writing the rootfs manifest", e))?;
    Ok(m)
}

/// Bytes used by the regular files under `dir` (symlinks not followed).
fn tree_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_bytes(&e.path()) + 4096,
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len().div_ceil(4096) * 4096),
            _ => 4096,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_stale_manifest_reads_as_absent() {
        let root = std::env::temp_dir().join(format!("kvmkit-rootfs-test-{}", std::process::id()));
        let cache = Cache::new(&root);
        assert_eq!(cached_rootfs(&cache).ok(), Some(None));
        let dir = rootfs_dir(&cache);
        std::fs::create_dir_all(dir.join("root/kvmkit")).expect("mkdir");
        std::fs::create_dir_all(dir.join("root/usr/bin")).expect("mkdir");
        std::fs::write(dir.join("root/kvmkit/bench.py"), "x").expect("write");
        std::fs::write(dir.join("root/usr/bin/python3"), "x").expect("write");
        std::fs::write(dir.join(IMAGE), vec![0u8; 4096]).expect("write");
        let manifest = |harness: &str, bytes: u64| {
            format!(r#"{{"format":{FORMAT},"harness":"{harness}","packages":[["povray","1"]],"image_bytes":{bytes}}}"#)
        };
        std::fs::write(dir.join(MANIFEST), manifest("old", 4096)).expect("write");
        assert_eq!(cached_rootfs(&cache).ok(), Some(None), "another harness: rebuild");
        std::fs::write(dir.join(MANIFEST), manifest(&harness_fingerprint(), 4096)).expect("write");
        let r = cached_rootfs(&cache).expect("ok").expect("cached");
        assert_eq!(r.version_of("povray"), Some("1"));
        assert_eq!(list_rootfs(&cache).len(), 1);
        std::fs::write(dir.join(MANIFEST), manifest(&harness_fingerprint(), 8192)).expect("write");
        assert!(matches!(cached_rootfs(&cache), Err(ImageError::Corrupt(_))));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn the_harness_knows_every_workload() {
        let bench = HARNESS[0].1;
        for name in [
            "py-primes",
            "memtester",
            "\"dd\"",
            "povray",
            "openssl",
            "\"7z\"",
            "postmark",
        ] {
            assert!(bench.contains(name), "{name}");
        }
    }
}
