//! Snapshots: a paused VM saved as a state file (vCPUs, the VM's in-kernel
//! devices, kvmkit's devices, the resources it was built from) and a
//! memory file (guest RAM), and a VM rebuilt from them in another process.
//!
//! Restore maps the memory file privately (copy-on-write, pages read on
//! first touch), so restoring does not read guest RAM up front. Virtio
//! block, net and rng devices are saved with their transports and queues
//! and re-activated on restore. Diff snapshots write only the pages
//! dirtied since the last snapshot ([`dirty`]), merged onto their base with
//! [`rebase`]. Not supported yet (refused with an error, never half-saved):
//! other device kinds.

pub mod devices;
pub mod dirty;
pub mod file;
pub mod memory;
pub mod params;
pub mod probe;
pub mod rebase;
pub mod vcpu;
pub mod virtio;
pub mod vm;

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::vmm_config::VmResources;

pub use devices::DevicesState;
pub use params::{CreateSnapshotParams, LoadSnapshotParams};
pub use vcpu::VcpuState;
pub use vm::VmState;

/// Errors saving or restoring a snapshot. Every message is one line that
/// says what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A KVM state ioctl failed.
    #[error("{0}")]
    Kvm(String),
    /// The state file is not usable (truncated, corrupted, inconsistent).
    #[error("{0}")]
    Invalid(String),
    /// Written by another kvmkit or another state file format.
    #[error(
        "snapshot from kvmkit {version} (state format {format}); this kvmkit {} reads format {ours} from itself only",
        file::kvmkit_version()
    )]
    Version {
        /// Format version in the file.
        format: u32,
        /// kvmkit version in the file.
        version: String,
        /// The format version this build writes.
        ours: u32,
    },
    /// The memory file does not fit the state.
    #[error("{0}")]
    Memory(String),
    /// Reading or writing a file.
    #[error("{0}")]
    Io(String),
    /// The VM has something kvmkit cannot snapshot yet (the message says
    /// what, ending in "cannot be snapshotted yet").
    #[error("{0}")]
    Unsupported(String),
}

impl SnapshotError {
    /// Prefixes a file-content error with the file's path.
    pub fn in_file(self, path: &Path) -> Self {
        match self {
            Self::Invalid(m) => Self::Invalid(format!("{}: {m}", path.display())),
            Self::Version { .. } => Self::Invalid(format!("{}: {self}", path.display())),
            other => other,
        }
    }
}

/// One guest RAM region and where it lies in the memory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryRegionState {
    /// Guest-physical start.
    pub guest_addr: u64,
    /// Bytes.
    pub size: u64,
    /// Offset in the memory file.
    pub file_offset: u64,
}

/// Everything a state file holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotState {
    /// What the VM was built from (machine config, devices).
    pub resources: VmResources,
    /// Guest RAM regions, in the memory file's order.
    pub memory: Vec<MemoryRegionState>,
    /// The VM's in-kernel devices and clock.
    pub vm: VmState,
    /// Every vCPU, in index order.
    pub vcpus: Vec<VcpuState>,
    /// kvmkit's own devices.
    pub devices: DevicesState,
}

impl std::fmt::Debug for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmState").finish_non_exhaustive()
    }
}

impl SnapshotState {
    /// Checks that the parts agree with each other (a state file that
    /// passed its CRC can still be hand-made or from a buggy writer).
    pub fn validate(&self) -> Result<(), SnapshotError> {
        let bad = |m: String| Err(SnapshotError::Invalid(m));
        let cpus = usize::from(self.resources.machine_config.vcpu_count);
        if self.vcpus.len() != cpus || cpus == 0 {
            return bad(format!(
                "the state has {} vCPUs, its machine config {cpus}",
                self.vcpus.len()
            ));
        }
        if let Some(v) = self.vcpus.iter().enumerate().find(|(i, v)| v.index != *i) {
            return bad(format!("vCPU {} is out of order", v.0));
        }
        let mut offset = 0u64;
        let mut next_addr = 0u64;
        for r in &self.memory {
            if r.file_offset != offset || r.size == 0 || r.size % 4096 != 0 || r.guest_addr % 4096 != 0 {
                return bad("the memory region table is inconsistent".into());
            }
            if r.guest_addr < next_addr {
                return bad("memory regions overlap or are out of order".into());
            }
            next_addr = r.guest_addr.saturating_add(r.size);
            offset = offset.saturating_add(r.size);
        }
        if offset != self.resources.machine_config.mem_size_mib.saturating_mul(1 << 20) {
            return bad(format!(
                "the memory regions add up to {offset} bytes, the machine config says {} MiB",
                self.resources.machine_config.mem_size_mib
            ));
        }
        devices::check_virtio(&self.resources, &self.devices.virtio)?;
        Ok(())
    }

    /// Bytes of guest RAM (the memory file's size).
    pub fn memory_bytes(&self) -> u64 {
        self.memory.iter().map(|r| r.size).sum()
    }
}

/// Sizes and times of a snapshot taken, for logs and replies.
#[derive(Debug, Clone, Copy, Default)]
pub struct SnapshotInfo {
    /// State file bytes.
    pub state_bytes: u64,
    /// Memory file bytes.
    pub memory_bytes: u64,
    /// Microseconds spent reading vCPU, VM and device state.
    pub save_state_us: u64,
    /// Microseconds spent writing the memory file.
    pub write_memory_us: u64,
    /// Pages written to a diff memory file (`None`: a full snapshot).
    pub diff_pages: Option<u64>,
}
