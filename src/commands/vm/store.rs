//! The state directory: one folder per VM name holding its definition
//! (`config.json`, Firecracker's config file), its settings (`vm.json`) and,
//! while it runs, its pid file, API socket, console log and console FIFO.
//!
//! Every file a client reads is written atomically (temp file, fsync,
//! rename, fsync of the folder): a crash or a full disk while writing
//! leaves the previous version whole.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use kvmkit_vmm::vmm_config::VmResources;
use serde::{Deserialize, Serialize};

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/kvmkit";
/// Environment variable naming the state directory.
pub const STATE_DIR_ENV: &str = "KVMKIT_STATE_DIR";
/// Longest VM name.
pub const MAX_NAME: usize = 64;

/// The state directory: `--state-dir`, else `$KVMKIT_STATE_DIR`, else /var/lib/kvmkit.
pub fn state_dir(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    match std::env::var_os(STATE_DIR_ENV) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from(DEFAULT_STATE_DIR),
    }
}

/// Checks a VM name: 1 to 64 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if !ok {
        bail!(
            "VM name {name:?}: use 1 to {MAX_NAME} letters, digits, '.', '_' or '-', starting with a letter or digit"
        );
    }
    Ok(())
}

/// When the daemon restarts a VM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never.
    #[default]
    No,
    /// When its process ends with a failure (crash, non-zero exit, killed).
    OnFailure,
}

/// A VM's settings beside its Firecracker config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `kvmkit serve` starts it when the daemon starts.
    #[serde(default)]
    pub autostart: bool,
    /// When `kvmkit serve` restarts it.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// It boots kvmkit's own guest (no keyboard controller driver: `vm stop`
    /// goes straight to stopping the VMM instead of Ctrl-Alt-Del).
    #[serde(default)]
    pub kvmkit_guest: bool,
}

/// One VM's folder in the state directory.
#[derive(Debug, Clone)]
pub struct VmDir {
    /// The VM's name.
    pub name: String,
    /// STATE/NAME.
    pub dir: PathBuf,
}

impl VmDir {
    /// The folder of `name` (checked) under `state`.
    pub fn new(state: &Path, name: &str) -> anyhow::Result<Self> {
        check_name(name)?;
        Ok(Self {
            name: name.to_owned(),
            dir: state.join(name),
        })
    }

    /// A file in the VM's folder.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The definition: Firecracker's config file.
    pub fn config_path(&self) -> PathBuf {
        self.file("config.json")
    }

    /// Whether the VM is defined.
    pub fn exists(&self) -> bool {
        self.config_path().is_file()
    }

    /// Fails with a clear message when the VM is not defined.
    pub fn require(&self) -> anyhow::Result<()> {
        if !self.exists() {
            bail!(
                "no VM named {:?} in {} (kvmkit vm list shows the defined ones)",
                self.name,
                self.dir.parent().unwrap_or(Path::new("/")).display()
            );
        }
        Ok(())
    }

    /// The definition, parsed and checked.
    pub fn resources(&self) -> anyhow::Result<VmResources> {
        let p = self.config_path();
        let text = fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        VmResources::from_config_json(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
    }

    /// The settings (defaults when the file is missing).
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let p = self.file("vm.json");
        match fs::read_to_string(&p) {
            Ok(text) => serde_json::from_str(&text).with_context(|| format!("{}: malformed", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Settings::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
        }
    }
}

/// Every defined VM under `state`, by name.
pub fn list(state: &Path) -> anyhow::Result<Vec<VmDir>> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(state) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("cannot read the state directory {}", state.display())),
    };
    for e in entries.flatten() {
        let Some(name) = e.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if check_name(&name).is_err() {
            continue;
        }
        let vm = VmDir { name, dir: e.path() };
        if vm.exists() {
            out.push(vm);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Writes `data` to `path` atomically: a temp file in the same folder,
/// fsync, rename over `path`, fsync of the folder. On any failure the
/// temp file is removed and `path` is left as it was.
pub fn write_atomic(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().context("a file path without a folder")?;
    let base = path
        .file_name()
        .context("a path without a file name")?
        .to_string_lossy();
    let tmp = dir.join(format!(".{base}.tmp.{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["a", "web-1", "db_2.test", "X", &"a".repeat(MAX_NAME)] {
            check_name(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "",
            ".",
            "..",
            "-a",
            "a/b",
            "a b",
            "ä",
            &"a".repeat(MAX_NAME + 1),
            ".hidden",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn atomic_write_replaces_whole_files() {
        let dir = std::env::temp_dir().join(format!("kvmkit-vm-store-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("config.json");
        write_atomic(&p, b"one").expect("write");
        write_atomic(&p, b"two").expect("rewrite");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        let left: Vec<_> = fs::read_dir(&dir)
            .expect("ls")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
        // A folder that is gone: an error, nothing written.
        assert!(write_atomic(&dir.join("nope/config.json"), b"x").is_err());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn settings_round_trip() {
        let s = Settings {
            autostart: true,
            restart: RestartPolicy::OnFailure,
            kvmkit_guest: true,
        };
        let text = serde_json::to_string(&s).expect("json");
        assert!(text.contains("\"on-failure\""), "{text}");
        assert_eq!(serde_json::from_str::<Settings>(&text).expect("parse"), s);
    }
}
