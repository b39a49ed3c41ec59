//! `entropy`: the virtio-rng device.

use serde::{Deserialize, Serialize};

/// `PUT /entropy`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyDeviceConfig {
    /// Rate limiter (not supported by kvmkit yet; must be absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<serde_json::Value>,
}

impl EntropyDeviceConfig {
    /// Checks what kvmkit supports.
    pub fn validate(&self) -> Result<(), super::ConfigError> {
        if self.rate_limiter.as_ref().is_some_and(|r| !r.is_null()) {
            return Err(super::invalid(
                "rate_limiter",
                "rate limiters are not supported by kvmkit yet",
            ));
        }
        Ok(())
    }
}
