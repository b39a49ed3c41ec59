//! `drives`: virtio-blk devices backed by host files.

use serde::{Deserialize, Serialize};

use super::PollMode;
use super::{invalid, ConfigError};

/// Longest drive id accepted.
pub const MAX_DRIVE_ID: usize = 64;

/// Firecracker's cache modes. kvmkit always honours a guest flush with
/// `fdatasync`, so both mean "flushes are durable"; `Unsafe` is accepted
/// for compatibility.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheType {
    /// Firecracker: flushes are not advertised. kvmkit: same as Writeback.
    #[default]
    Unsafe,
    /// Flushes reach the host disk.
    Writeback,
}

/// Firecracker's I/O engines; kvmkit has one synchronous engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoEngine {
    /// Synchronous I/O on the device's worker thread.
    #[default]
    Sync,
    /// io_uring (not supported by kvmkit yet).
    Async,
}

/// `PUT /drives/{drive_id}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockDeviceConfig {
    /// Unique id; also the virtio-blk serial (GET_ID, first 20 bytes).
    pub drive_id: String,
    /// Host path of the raw image or block device.
    #[serde(default)]
    pub path_on_host: String,
    /// Whether this is the root device (at most one).
    pub is_root_device: bool,
    /// Partition UUID of the root partition (root device only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// Advertise and enforce read-only.
    #[serde(default)]
    pub is_read_only: bool,
    /// Cache mode.
    #[serde(default)]
    pub cache_type: CacheType,
    /// I/O engine.
    #[serde(default)]
    pub io_engine: IoEngine,
    /// Rate limiter (not supported by kvmkit yet; must be absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<serde_json::Value>,
    /// vhost-user socket (not supported by kvmkit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    /// kvmkit extension: bypass the host page cache (O_DIRECT).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub direct: bool,
    /// kvmkit extension: how the device worker polls the queue after a
    /// request (`"off"`, `"auto"` or a window such as `"100us"`).
    #[serde(default, skip_serializing_if = "PollMode::is_off")]
    pub poll: PollMode,
}

/// `PATCH /drives/{drive_id}` after boot: a new backing file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockDeviceUpdate {
    /// The drive to change.
    pub drive_id: String,
    /// The new backing file.
    #[serde(default)]
    pub path_on_host: Option<String>,
    /// New rate limiter (not supported by kvmkit yet).
    #[serde(default)]
    pub rate_limiter: Option<serde_json::Value>,
}

/// Checks an id taken from a path or body.
pub(super) fn check_id(field: &'static str, id: &str) -> Result<(), ConfigError> {
    if id.is_empty() || id.len() > MAX_DRIVE_ID {
        return Err(invalid(field, format!("must be 1 to {MAX_DRIVE_ID} characters")));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    {
        return Err(invalid(
            field,
            format!("'{id}' may only hold letters, digits, '_', '-' and '.'"),
        ));
    }
    Ok(())
}

impl BlockDeviceConfig {
    /// Checks what kvmkit supports.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_id("drive_id", &self.drive_id)?;
        if self.socket.is_some() {
            return Err(invalid(
                "socket",
                "vhost-user block devices are not supported by kvmkit",
            ));
        }
        if self.path_on_host.is_empty() {
            return Err(invalid("path_on_host", "give the host path of the disk image"));
        }
        if self.io_engine == IoEngine::Async {
            return Err(invalid(
                "io_engine",
                "\"Async\" (io_uring) is not supported by kvmkit yet; use \"Sync\"",
            ));
        }
        if self.rate_limiter.as_ref().is_some_and(|r| !r.is_null()) {
            return Err(invalid("rate_limiter", "rate limiters are not supported by kvmkit yet"));
        }
        Ok(())
    }
}

impl BlockDeviceUpdate {
    /// Checks what kvmkit supports.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_id("drive_id", &self.drive_id)?;
        if self.rate_limiter.as_ref().is_some_and(|r| !r.is_null()) {
            return Err(invalid("rate_limiter", "rate limiters are not supported by kvmkit yet"));
        }
        if self.path_on_host.as_deref().is_some_and(str::is_empty) {
            return Err(invalid("path_on_host", "must not be empty"));
        }
        Ok(())
    }
}
