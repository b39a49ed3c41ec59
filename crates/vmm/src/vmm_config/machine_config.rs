//! `machine-config`: vCPUs and memory.

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError};

/// Memory when none is configured (Firecracker's default).
pub const DEFAULT_MEM_SIZE_MIB: u64 = 128;
/// Most vCPUs a VM may have: what kvmkit's MP table describes (37, above
/// Firecracker's 32).
pub const MAX_VCPUS: u8 = crate::arch::x86_64::mptable::MAX_CPUS;
/// Least guest memory kvmkit boots with.
pub const MIN_MEM_SIZE_MIB: u64 = crate::memory::MIN_MEMORY_MIB;
/// Most guest memory kvmkit boots with (below the 32-bit MMIO hole plus
/// what fits above 4 GiB in one region).
pub const MAX_MEM_SIZE_MIB: u64 = 1 << 20;

/// Huge-page backing of guest memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePages {
    /// 4 KiB pages.
    #[default]
    None,
    /// Transparent huge pages (madvise).
    Transparent,
    /// hugetlbfs 2 MiB pages (not supported by kvmkit yet).
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

/// `PUT /machine-config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// Number of vCPUs (1 to [`MAX_VCPUS`]).
    pub vcpu_count: u8,
    /// Guest RAM in MiB.
    pub mem_size_mib: u64,
    /// Simultaneous multithreading (accepted as false only: kvmkit gives one thread per core).
    #[serde(default)]
    pub smt: bool,
    /// Dirty-page tracking for diff snapshots: guest RAM is registered with
    /// `KVM_MEM_LOG_DIRTY_PAGES` (guest writes at 4 KiB granularity).
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// Huge pages.
    #[serde(default)]
    pub huge_pages: HugePages,
    /// CPU template (only "None": kvmkit passes the host's filtered CPUID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<String>,
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            vcpu_count: 1,
            mem_size_mib: DEFAULT_MEM_SIZE_MIB,
            smt: false,
            track_dirty_pages: false,
            huge_pages: HugePages::None,
            cpu_template: None,
        }
    }
}

/// `PATCH /machine-config`: every field optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    /// New vCPU count.
    #[serde(default)]
    pub vcpu_count: Option<u8>,
    /// New memory size.
    #[serde(default)]
    pub mem_size_mib: Option<u64>,
    /// New SMT setting.
    #[serde(default)]
    pub smt: Option<bool>,
    /// New dirty-page tracking setting.
    #[serde(default)]
    pub track_dirty_pages: Option<bool>,
    /// New huge-page setting.
    #[serde(default)]
    pub huge_pages: Option<HugePages>,
    /// New CPU template.
    #[serde(default)]
    pub cpu_template: Option<String>,
}

impl MachineConfig {
    /// Checks every field against what kvmkit supports.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vcpu_count == 0 || self.vcpu_count > MAX_VCPUS {
            return Err(invalid(
                "vcpu_count",
                format!("{} is out of range: give 1 to {MAX_VCPUS}", self.vcpu_count),
            ));
        }
        if !(MIN_MEM_SIZE_MIB..=MAX_MEM_SIZE_MIB).contains(&self.mem_size_mib) {
            return Err(invalid(
                "mem_size_mib",
                format!(
                    "{} MiB is out of range: give {MIN_MEM_SIZE_MIB} to {MAX_MEM_SIZE_MIB}",
                    self.mem_size_mib
                ),
            ));
        }
        if self.smt {
            return Err(invalid("smt", "kvmkit gives each vCPU its own core; set smt to false"));
        }
        if self.huge_pages == HugePages::Hugetlbfs2M {
            return Err(invalid(
                "huge_pages",
                "hugetlbfs pages (\"2M\") are not supported by kvmkit yet; use \"None\" or \"Transparent\"",
            ));
        }
        if let Some(t) = &self.cpu_template {
            if t != "None" {
                return Err(invalid(
                    "cpu_template",
                    format!("'{t}' is not supported: kvmkit has no CPU templates; use \"None\""),
                ));
            }
        }
        Ok(())
    }

    /// This configuration with `update`'s fields applied.
    pub fn apply(&self, update: &MachineConfigUpdate) -> Self {
        Self {
            vcpu_count: update.vcpu_count.unwrap_or(self.vcpu_count),
            mem_size_mib: update.mem_size_mib.unwrap_or(self.mem_size_mib),
            smt: update.smt.unwrap_or(self.smt),
            track_dirty_pages: update.track_dirty_pages.unwrap_or(self.track_dirty_pages),
            huge_pages: update.huge_pages.unwrap_or(self.huge_pages),
            cpu_template: update.cpu_template.clone().or_else(|| self.cpu_template.clone()),
        }
    }
}
