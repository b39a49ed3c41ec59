//! `vsock`: the virtio-vsock device and its unix-socket bridge (`docs/vsock.md`).

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `PUT /vsock`, the config file's `vsock` section, `--vsock cid=N,uds=PATH`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockDeviceConfig {
    /// Firecracker's deprecated device id: accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
    /// The guest's context id (3 or more; 0-2 are reserved).
    pub guest_cid: u32,
    /// The host's unix socket: host processes connect here (`CONNECT
    /// <port>`); guest connections to host port P go to `<uds_path>_P`.
    pub uds_path: PathBuf,
}

/// Longest unix socket path: `sun_path` holds 108 bytes with the NUL, and
/// `_<port>` (up to 11 bytes) may be appended for guest-initiated connections.
pub const MAX_UDS_PATH: usize = 107;

impl VsockDeviceConfig {
    /// Checks the CID and the path (the socket itself is made at boot).
    pub fn validate(&self) -> Result<(), super::ConfigError> {
        if self.guest_cid < 3 {
            return Err(super::invalid(
                "guest_cid",
                format!("{} is reserved: give 3 or more", self.guest_cid),
            ));
        }
        let bytes = self.uds_path.as_os_str().as_bytes();
        if bytes.is_empty() || bytes.len() > MAX_UDS_PATH || bytes.contains(&0) {
            return Err(super::invalid(
                "uds_path",
                format!("give a unix socket path of 1 to {MAX_UDS_PATH} bytes"),
            ));
        }
        Ok(())
    }
}
