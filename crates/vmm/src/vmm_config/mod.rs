//! The VM's resources as plain serde data, shaped like Firecracker's
//! `vmm_config`: the API's request bodies, the `--config-file` sections and
//! what the CLI flags fill in are the same types. [`VmResources`] gathers
//! them before boot; [`crate::machine::Machine::build`] turns them into a VM.

mod boot_source;
mod drive;
mod entropy;
mod logger;
mod machine_config;
mod metrics;
mod net;
mod poll_mode;
mod vsock;

pub use boot_source::BootSourceConfig;
pub use drive::{BlockDeviceConfig, BlockDeviceUpdate, CacheType, IoEngine};
pub use entropy::EntropyDeviceConfig;
pub use logger::{LogLevel, LoggerConfig};
pub use machine_config::{HugePages, MachineConfig, MachineConfigUpdate, DEFAULT_MEM_SIZE_MIB, MAX_VCPUS};
pub use metrics::MetricsConfig;
pub use net::{format_mac, parse_mac, NetworkInterfaceConfig};
pub use poll_mode::{PollMode, FIXED_MAX_US};
pub use vsock::{VsockDeviceConfig, MAX_UDS_PATH};

use serde::{Deserialize, Serialize};

/// Why a resource was refused. Each message names the field and says what
/// is allowed; the API returns it as `fault_message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A field has a value kvmkit cannot use.
    #[error("{field}: {why}")]
    Invalid {
        /// The field, as the API spells it.
        field: &'static str,
        /// What is wrong and what is allowed.
        why: String,
    },
    /// A device id is used twice where it must be unique.
    #[error("{0}")]
    Conflict(String),
    /// Something needed for boot is missing.
    #[error("{0}")]
    Missing(String),
    /// The id in the path differs from the id in the body.
    #[error("the id in the path ({path}) differs from the id in the body ({body})")]
    IdMismatch {
        /// Id from the URL path.
        path: String,
        /// Id from the JSON body.
        body: String,
    },
}

fn invalid(field: &'static str, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field, why: why.into() }
}

/// Everything a VM is built from, gathered before boot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmResources {
    /// The kernel, initrd and command line.
    #[serde(rename = "boot-source", default, skip_serializing_if = "Option::is_none")]
    pub boot_source: Option<BootSourceConfig>,
    /// vCPUs and memory.
    #[serde(rename = "machine-config", default)]
    pub machine_config: MachineConfig,
    /// Block devices, in attach order.
    #[serde(default)]
    pub drives: Vec<BlockDeviceConfig>,
    /// NICs, in attach order.
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterfaceConfig>,
    /// The virtio-rng device, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entropy: Option<EntropyDeviceConfig>,
    /// The virtio-vsock device, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockDeviceConfig>,
    /// Where and how much kvmkit logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logger: Option<LoggerConfig>,
    /// Where metrics go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
}

/// Sections of Firecracker's config file that kvmkit does not implement
/// yet; a file that sets them is refused with a clear message instead of
/// booting a VM that silently lacks them.
pub const UNSUPPORTED_SECTIONS: &[&str] = &["balloon", "mmds-config", "cpu-config", "pmem", "memory-hotplug"];

impl VmResources {
    /// Parses a Firecracker-style config file (`--config-file`): the API's
    /// bodies under kebab-case keys. Unknown keys are refused.
    pub fn from_config_json(text: &str) -> Result<Self, String> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
        if let Some(obj) = value.as_object() {
            for section in UNSUPPORTED_SECTIONS {
                if obj.get(*section).is_some_and(|v| !v.is_null()) {
                    return Err(format!("section '{section}' is not supported by kvmkit yet"));
                }
            }
        }
        let mut res: VmResources = serde_json::from_value(value).map_err(|e| e.to_string())?;
        let drives = std::mem::take(&mut res.drives);
        for d in drives {
            res.put_drive(d).map_err(|e| e.to_string())?;
        }
        let nics = std::mem::take(&mut res.network_interfaces);
        for n in nics {
            res.put_network_interface(n).map_err(|e| e.to_string())?;
        }
        res.machine_config.validate().map_err(|e| e.to_string())?;
        if let Some(b) = &res.boot_source {
            b.validate().map_err(|e| e.to_string())?;
        }
        if let Some(v) = res.vsock.take() {
            res.set_vsock(v).map_err(|e| e.to_string())?;
        }
        Ok(res)
    }

    /// Sets the boot source (`PUT /boot-source`).
    pub fn set_boot_source(&mut self, boot: BootSourceConfig) -> Result<(), ConfigError> {
        boot.validate()?;
        self.boot_source = Some(boot);
        Ok(())
    }

    /// Replaces the machine configuration (`PUT /machine-config`).
    pub fn set_machine_config(&mut self, config: MachineConfig) -> Result<(), ConfigError> {
        config.validate()?;
        self.machine_config = config;
        Ok(())
    }

    /// Updates some machine-config fields (`PATCH /machine-config`).
    pub fn update_machine_config(&mut self, update: &MachineConfigUpdate) -> Result<(), ConfigError> {
        let next = self.machine_config.apply(update);
        next.validate()?;
        self.machine_config = next;
        Ok(())
    }

    /// Adds or replaces a drive by id (`PUT /drives/{id}`). At most one
    /// drive may be the root device.
    pub fn put_drive(&mut self, drive: BlockDeviceConfig) -> Result<(), ConfigError> {
        drive.validate()?;
        if drive.is_root_device
            && self
                .drives
                .iter()
                .any(|d| d.is_root_device && d.drive_id != drive.drive_id)
        {
            return Err(ConfigError::Conflict(
                "a root block device already exists; only one drive may be the root device".into(),
            ));
        }
        // One image behind two drives would fail later as "locked by another
        // process"; say what is really wrong.
        let same_file = |a: &str, b: &str| match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
            (Ok(a), Ok(b)) => a == b,
            _ => a == b,
        };
        if let Some(other) = self
            .drives
            .iter()
            .find(|d| d.drive_id != drive.drive_id && same_file(&d.path_on_host, &drive.path_on_host))
        {
            return Err(ConfigError::Conflict(format!(
                "disk image {} is already drive {}; one image cannot back two drives (give a copy)",
                drive.path_on_host, other.drive_id
            )));
        }
        match self.drives.iter_mut().find(|d| d.drive_id == drive.drive_id) {
            Some(d) => *d = drive,
            // Firecracker keeps the root device first.
            None if drive.is_root_device => self.drives.insert(0, drive),
            None => self.drives.push(drive),
        }
        self.check_device_count()
    }

    /// Adds or replaces a NIC by id (`PUT /network-interfaces/{id}`). Tap
    /// names and MACs must be unique.
    pub fn put_network_interface(&mut self, nic: NetworkInterfaceConfig) -> Result<(), ConfigError> {
        nic.validate()?;
        for other in self.network_interfaces.iter().filter(|n| n.iface_id != nic.iface_id) {
            if other.host_dev_name == nic.host_dev_name {
                return Err(ConfigError::Conflict(format!(
                    "tap {} is already used by network interface {}",
                    nic.host_dev_name, other.iface_id
                )));
            }
            if nic.guest_mac.is_some() && other.guest_mac == nic.guest_mac {
                return Err(ConfigError::Conflict(format!(
                    "MAC {} is already used by network interface {}",
                    nic.guest_mac.as_deref().unwrap_or_default(),
                    other.iface_id
                )));
            }
        }
        match self.network_interfaces.iter_mut().find(|n| n.iface_id == nic.iface_id) {
            Some(n) => *n = nic,
            None => self.network_interfaces.push(nic),
        }
        self.check_device_count()
    }

    /// Sets the entropy device (`PUT /entropy`).
    pub fn set_entropy(&mut self, entropy: EntropyDeviceConfig) -> Result<(), ConfigError> {
        self.entropy = Some(entropy);
        self.check_device_count()
    }

    /// Sets the vsock device (`PUT /vsock`); a second PUT replaces it.
    pub fn set_vsock(&mut self, vsock: VsockDeviceConfig) -> Result<(), ConfigError> {
        vsock.validate()?;
        self.vsock = Some(vsock);
        self.check_device_count()
    }

    /// Number of virtio devices these resources make.
    pub fn virtio_device_count(&self) -> usize {
        self.drives.len()
            + self.network_interfaces.len()
            + usize::from(self.entropy.is_some())
            + usize::from(self.vsock.is_some())
    }

    fn check_device_count(&self) -> Result<(), ConfigError> {
        let max = crate::arch::x86_64::layout::MAX_VIRTIO_DEVICES;
        if self.virtio_device_count() > max {
            return Err(ConfigError::Conflict(format!(
                "at most {max} virtio devices (drives, network interfaces, entropy, vsock) are supported"
            )));
        }
        Ok(())
    }

    /// Whether everything needed to boot is there.
    pub fn check_bootable(&self) -> Result<(), ConfigError> {
        if self.boot_source.is_none() {
            return Err(ConfigError::Missing(
                "cannot start the microVM without a kernel: PUT /boot-source first".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
