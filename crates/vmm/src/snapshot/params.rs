//! The bodies of Firecracker's snapshot calls (`PUT /snapshot/create`,
//! `PUT /snapshot/load`) and what the VMM acts on once they are checked.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Full or diff snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    /// All of guest RAM.
    #[default]
    Full,
    /// Only pages dirtied since the last snapshot (needs dirty-page
    /// tracking), at their offsets in a sparse file; merged onto the base
    /// memory file with `kvmkit snapshot rebase`.
    Diff,
}

/// `PUT /snapshot/create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshotBody {
    /// Full (default) or Diff.
    #[serde(default)]
    pub snapshot_type: SnapshotType,
    /// Where the state file goes.
    pub snapshot_path: String,
    /// Where the memory file goes.
    pub mem_file_path: String,
}

/// How guest memory is brought back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemBackendType {
    /// Map a memory file.
    File,
    /// A userfaultfd handler serves the pages (not supported yet).
    Uffd,
}

/// `mem_backend` of `PUT /snapshot/load`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemBackend {
    /// File or Uffd.
    pub backend_type: MemBackendType,
    /// The memory file (or the Uffd socket).
    pub backend_path: String,
}

/// A `network_overrides` entry: the restored NIC `iface_id` uses tap
/// `host_dev_name` instead of the one in the snapshot (for clones).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    /// The NIC.
    pub iface_id: String,
    /// Its new tap.
    pub host_dev_name: String,
}

/// `PUT /snapshot/load`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadSnapshotBody {
    /// The state file.
    pub snapshot_path: String,
    /// The memory file (older form of `mem_backend`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_file_path: Option<String>,
    /// Where guest memory comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_backend: Option<MemBackend>,
    /// Track dirty pages after the restore, for diff snapshots (the older
    /// name of `track_dirty_pages`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_diff_snapshots: Option<bool>,
    /// Same as `enable_diff_snapshots` (Firecracker's newer name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// Run the VM at once (default: it stays Paused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_vm: Option<bool>,
    /// Taps to use instead of the saved ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_overrides: Option<Vec<NetworkOverride>>,
    /// kvmkit extension: read guest RAM eagerly instead of mapping the
    /// memory file copy-on-write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_memory: Option<bool>,
}

/// A snapshot to write, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateSnapshotParams {
    /// Full or Diff.
    pub snapshot_type: SnapshotType,
    /// The state file.
    pub snapshot_path: PathBuf,
    /// The memory file.
    pub mem_file_path: PathBuf,
}

/// A snapshot to load, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadSnapshotParams {
    /// The state file.
    pub snapshot_path: PathBuf,
    /// The memory file.
    pub mem_file_path: PathBuf,
    /// Read guest RAM eagerly.
    pub copy_memory: bool,
    /// Run at once.
    pub resume_vm: bool,
    /// Taps to use instead of the saved ones.
    pub network_overrides: Vec<NetworkOverride>,
    /// Track dirty pages in the restored VM (diff snapshots of it). Like
    /// Firecracker, the setting is not taken from the snapshot.
    pub track_dirty_pages: bool,
}

impl CreateSnapshotBody {
    /// Checks the body: non-empty paths. Whether a Diff can be taken (the
    /// VM tracks dirty pages) is the machine's to say.
    pub fn validate(self) -> Result<CreateSnapshotParams, String> {
        if self.snapshot_path.is_empty() || self.mem_file_path.is_empty() {
            return Err("snapshot_path and mem_file_path must not be empty".into());
        }
        Ok(CreateSnapshotParams {
            snapshot_type: self.snapshot_type,
            snapshot_path: self.snapshot_path.into(),
            mem_file_path: self.mem_file_path.into(),
        })
    }
}

impl LoadSnapshotBody {
    /// Checks the body: exactly one of `mem_file_path` and `mem_backend`
    /// (of type File), and nothing kvmkit does not do yet.
    pub fn validate(self) -> Result<LoadSnapshotParams, String> {
        let mem = match (self.mem_file_path, self.mem_backend) {
            (Some(p), None) => p,
            (
                None,
                Some(MemBackend {
                    backend_type: MemBackendType::File,
                    backend_path,
                }),
            ) => backend_path,
            (
                None,
                Some(MemBackend {
                    backend_type: MemBackendType::Uffd,
                    ..
                }),
            ) => return Err("mem_backend Uffd is not supported by kvmkit yet; use File".into()),
            (Some(_), Some(_)) => return Err("give mem_backend or mem_file_path, not both".into()),
            (None, None) => return Err("give mem_backend (or mem_file_path)".into()),
        };
        let network_overrides = self.network_overrides.unwrap_or_default();
        for (i, o) in network_overrides.iter().enumerate() {
            if o.iface_id.is_empty() || o.host_dev_name.is_empty() {
                return Err("network_overrides: iface_id and host_dev_name must not be empty".into());
            }
            if network_overrides[..i].iter().any(|p| p.iface_id == o.iface_id) {
                return Err(format!("network_overrides: '{}' is given twice", o.iface_id));
            }
        }
        if self.snapshot_path.is_empty() || mem.is_empty() {
            return Err("snapshot_path and the memory file path must not be empty".into());
        }
        Ok(LoadSnapshotParams {
            snapshot_path: self.snapshot_path.into(),
            mem_file_path: mem.into(),
            copy_memory: self.copy_memory.unwrap_or(false),
            resume_vm: self.resume_vm.unwrap_or(false),
            network_overrides,
            track_dirty_pages: self.track_dirty_pages.or(self.enable_diff_snapshots).unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_bodies_are_checked() {
        let b: LoadSnapshotBody = serde_json::from_str(
            r#"{"snapshot_path":"s","mem_backend":{"backend_type":"File","backend_path":"m"},"resume_vm":true}"#,
        )
        .unwrap();
        let p = b.validate().unwrap();
        assert_eq!(p.mem_file_path, PathBuf::from("m"));
        assert!(p.resume_vm);
        let b: LoadSnapshotBody = serde_json::from_str(r#"{"snapshot_path":"s","mem_file_path":"m"}"#).unwrap();
        assert!(!b.validate().unwrap().resume_vm);
        let b: LoadSnapshotBody = serde_json::from_str(r#"{"snapshot_path":"s"}"#).unwrap();
        assert!(b.validate().is_err());
        assert!(serde_json::from_str::<LoadSnapshotBody>(r#"{"snapshot_path":"s","bogus":1}"#).is_err());
        let c: CreateSnapshotBody =
            serde_json::from_str(r#"{"snapshot_type":"Diff","snapshot_path":"s","mem_file_path":"m"}"#).unwrap();
        assert_eq!(c.validate().unwrap().snapshot_type, SnapshotType::Diff);
        let c: CreateSnapshotBody = serde_json::from_str(r#"{"snapshot_path":"s","mem_file_path":"m"}"#).unwrap();
        assert_eq!(c.validate().unwrap().snapshot_type, SnapshotType::Full);
        for (body, want) in [
            (r#""track_dirty_pages":true"#, true),
            (r#""enable_diff_snapshots":true"#, true),
            (r#""enable_diff_snapshots":true,"track_dirty_pages":false"#, false),
            (r#""resume_vm":true"#, false),
        ] {
            let b: LoadSnapshotBody =
                serde_json::from_str(&format!(r#"{{"snapshot_path":"s","mem_file_path":"m",{body}}}"#)).unwrap();
            assert_eq!(b.validate().unwrap().track_dirty_pages, want, "{body}");
        }
        let b: LoadSnapshotBody = serde_json::from_str(
            r#"{"snapshot_path":"s","mem_file_path":"m","network_overrides":[{"iface_id":"net0","host_dev_name":"tap7"}]}"#,
        )
        .unwrap();
        let p = b.validate().unwrap();
        assert_eq!(p.network_overrides.len(), 1);
        assert_eq!(p.network_overrides[0].host_dev_name, "tap7");
        let twice = r#"{"snapshot_path":"s","mem_file_path":"m","network_overrides":[
            {"iface_id":"a","host_dev_name":"t1"},{"iface_id":"a","host_dev_name":"t2"}]}"#;
        let b: LoadSnapshotBody = serde_json::from_str(twice).unwrap();
        assert!(b.validate().unwrap_err().contains("twice"));
    }
}
