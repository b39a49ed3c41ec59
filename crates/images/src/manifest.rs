//! The cache manifest: written last, so a cache without a complete one is treated as absent.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ImageError;

/// The manifest's file name inside an asset directory.
pub(crate) const MANIFEST: &str = "manifest.json";
/// Bumped whenever the layout or the initramfs contents change incompatibly.
pub(crate) const FORMAT: u32 = 3;

/// One file recorded in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileRecord {
    /// File name inside the asset directory.
    pub name: String,
    /// What it is ("kernel", "bzimage", "initramfs", "busybox").
    pub role: String,
    /// The version of what it holds.
    pub version: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Lower-case hex SHA-256.
    pub sha256: String,
}

/// What the guest initramfs loads, and what it did not find.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ModuleRecord {
    /// Modules loaded by `/init`, in order (relative paths under /lib/modules/<version>/).
    pub loaded: Vec<String>,
    /// Requested modules built into the kernel.
    pub builtin: Vec<String>,
    /// Requested modules found nowhere.
    pub missing: Vec<String>,
}

/// The manifest of a Linux asset directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Manifest {
    /// [`FORMAT`].
    pub format: u32,
    /// The kernel release, e.g. `6.1.0-56-cloud-amd64`.
    pub kernel_version: String,
    /// The kernel package and its Debian version.
    pub kernel_package: String,
    /// The kernel package's Debian version.
    pub kernel_package_version: String,
    /// busybox-static's Debian version.
    pub busybox_version: String,
    /// Module resolution.
    pub modules: ModuleRecord,
    /// Every asset file.
    pub files: Vec<FileRecord>,
}

/// Size and SHA-256 of a file.
pub(crate) fn hash_file(path: &Path) -> Result<(u64, String), ImageError> {
    let ctx = |e| ImageError::io(format!("reading {}", path.display()), e);
    let mut file = std::fs::File::open(path).map_err(ctx)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(ctx)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    let digest = hasher.finalize();
    Ok((total, digest.iter().map(|b| format!("{b:02x}")).collect()))
}

/// Reads `dir`'s manifest: `Ok(None)` when it is missing, unreadable as JSON (a partial write)
/// or of another format.
pub(crate) fn read(dir: &Path) -> Result<Option<Manifest>, ImageError> {
    let path = dir.join(MANIFEST);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ImageError::io(format!("reading {}", path.display()), e)),
    };
    match serde_json::from_str::<Manifest>(&text) {
        Ok(m) if m.format == FORMAT => Ok(Some(m)),
        _ => Ok(None),
    }
}

/// Checks every file of `manifest` in `dir`: it must exist with the recorded size and, when
/// `hash` is set, the recorded SHA-256.
pub(crate) fn validate(dir: &Path, manifest: &Manifest, hash: bool) -> Result<(), ImageError> {
    validate_up_to(dir, manifest, if hash { u64::MAX } else { 0 })
}

/// [`validate`], hashing only files of at most `hash_limit` bytes.
pub(crate) fn validate_up_to(dir: &Path, manifest: &Manifest, hash_limit: u64) -> Result<(), ImageError> {
    for f in &manifest.files {
        let path = dir.join(&f.name);
        let meta = std::fs::metadata(&path).map_err(|e| ImageError::Corrupt(format!("{}: {e}", path.display())))?;
        if meta.len() != f.bytes {
            return Err(ImageError::Corrupt(format!(
                "{} is {} bytes, the manifest says {}",
                path.display(),
                meta.len(),
                f.bytes
            )));
        }
        if f.bytes <= hash_limit && hash_limit > 0 {
            let (_, sha) = hash_file(&path)?;
            if sha != f.sha256 {
                return Err(ImageError::Corrupt(format!("{}: SHA-256 mismatch", path.display())));
            }
        }
    }
    Ok(())
}

/// Writes the manifest durably (temp file, fsync, rename).
pub(crate) fn write(dir: &Path, manifest: &Manifest) -> Result<(), ImageError> {
    let text = serde_json::to_string_pretty(manifest).map_err(|e| ImageError::Corrupt(e.to_string()))?;
    let tmp = dir.join(format!("{MANIFEST}.tmp"));
    let path = dir.join(MANIFEST);
    let ctx = |e| ImageError::io(format!("writing {}", path.display()), e);
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(ctx)?;
        f.write_all(text.as_bytes()).map_err(ctx)?;
        f.write_all(b"\n").map_err(ctx)?;
        f.sync_all().map_err(ctx)?;
    }
    std::fs::rename(&tmp, &path).map_err(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("kvmkit-images-manifest-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn manifest_for(d: &Path) -> Manifest {
        std::fs::write(d.join("vmlinux"), b"\x7fELF kernel").unwrap();
        let (bytes, sha256) = hash_file(&d.join("vmlinux")).unwrap();
        Manifest {
            format: FORMAT,
            kernel_version: "6.1.0-test".into(),
            kernel_package: "linux-image-6.1.0-test".into(),
            kernel_package_version: "6.1.1-1".into(),
            busybox_version: "1:1.35.0-4".into(),
            modules: ModuleRecord::default(),
            files: vec![FileRecord {
                name: "vmlinux".into(),
                role: "kernel".into(),
                version: "6.1.0-test".into(),
                bytes,
                sha256,
            }],
        }
    }

    #[test]
    fn round_trip_and_validation() {
        let d = dir("ok");
        let m = manifest_for(&d);
        write(&d, &m).unwrap();
        assert_eq!(read(&d).unwrap(), Some(m.clone()));
        validate(&d, &m, true).unwrap();
        // Same size, different bytes: only the hash notices.
        std::fs::write(d.join("vmlinux"), b"\x7fELF kernem").unwrap();
        validate(&d, &m, false).unwrap();
        assert!(matches!(validate(&d, &m, true), Err(ImageError::Corrupt(_))));
        // Wrong size.
        std::fs::write(d.join("vmlinux"), b"short").unwrap();
        assert!(matches!(validate(&d, &m, false), Err(ImageError::Corrupt(_))));
        std::fs::remove_file(d.join("vmlinux")).unwrap();
        assert!(matches!(validate(&d, &m, false), Err(ImageError::Corrupt(_))));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn missing_or_partial_manifest_reads_as_absent() {
        let d = dir("partial");
        assert_eq!(read(&d).unwrap(), None);
        std::fs::write(d.join(MANIFEST), "{\"format\": 1, \"kernel_vers").unwrap();
        assert_eq!(read(&d).unwrap(), None);
        let mut m = manifest_for(&d);
        m.format = FORMAT + 1;
        write(&d, &m).unwrap();
        assert_eq!(read(&d).unwrap(), None, "another format is absent too");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
