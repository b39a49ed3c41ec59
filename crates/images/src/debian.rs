//! Debian packages without installing them: resolving a meta package, `apt-get download`,
//! finding the downloaded `.deb` (used by `kvmkit image` and by the nested lab's xtask).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::command::run;
use crate::ImageError;

/// apt-get and apt-cache for one fetch: `apt-get update` runs at most once, and only when
/// what is asked for is not known without it.
pub struct Apt<'a> {
    updated: bool,
    progress: &'a dyn Fn(&str),
}

impl<'a> Apt<'a> {
    /// A session that reports its steps through `progress`.
    pub fn new(progress: &'a dyn Fn(&str)) -> Self {
        Self {
            updated: false,
            progress,
        }
    }

    /// Runs `apt-get update` unless it already ran; true when it ran now.
    pub fn update(&mut self) -> Result<bool, ImageError> {
        if self.updated {
            return Ok(false);
        }
        self.updated = true;
        (self.progress)("running apt-get update");
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        Ok(true)
    }

    /// The kernel package a meta package depends on: `linux-image-cloud-amd64` ->
    /// `linux-image-<version>-cloud-amd64`.
    pub fn resolve_kernel_package(&mut self, meta: &str) -> Result<String, ImageError> {
        let parse = |out: &str| {
            out.lines()
                .filter_map(|l| l.trim().strip_prefix("Depends:"))
                .map(str::trim)
                .find(|p| p.starts_with("linux-image-"))
                .map(str::to_string)
        };
        let first = run(Command::new("apt-cache").args(["depends", meta])).ok();
        if let Some(pkg) = first.as_deref().and_then(parse) {
            return Ok(pkg);
        }
        self.update()?;
        let out = run(Command::new("apt-cache").args(["depends", meta]))?;
        parse(&out).ok_or_else(|| ImageError::Package(format!("cannot resolve {meta} (is apt configured?)")))
    }

    /// `apt-get download` of `packages` into `dir` (after an update if the first try fails).
    pub fn download(&mut self, dir: &Path, packages: &[&str]) -> Result<(), ImageError> {
        let attempt = || {
            run(Command::new("apt-get")
                .args(["download", "-q"])
                .args(packages)
                .current_dir(dir))
        };
        match attempt() {
            Ok(_) => Ok(()),
            Err(e) => {
                if self.update()? {
                    attempt().map(|_| ())
                } else {
                    Err(e)
                }
            }
        }
    }
}

/// The `.deb` in `dir` whose file name starts with `<package>_`.
pub fn find_deb(dir: &Path, package: &str) -> Result<PathBuf, ImageError> {
    let prefix = format!("{package}_");
    let entries = std::fs::read_dir(dir).map_err(|e| ImageError::io(format!("listing {}", dir.display()), e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            return Ok(entry.path());
        }
    }
    Err(ImageError::Package(format!(
        "apt-get download left no {package}_*.deb in {}",
        dir.display()
    )))
}
