//! `network-interfaces`: virtio-net devices on host taps.

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError, PollMode};

/// `PUT /network-interfaces/{iface_id}`: the VMM receives an existing tap
/// by name (creating and configuring taps is the caller's policy).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceConfig {
    /// Unique id.
    pub iface_id: String,
    /// The host tap's name.
    pub host_dev_name: String,
    /// The guest's MAC (`aa:bb:cc:dd:ee:ff`; default 06:00:ac:10:00:NN-like, derived from the id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// Receive rate limiter (not supported by kvmkit yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<serde_json::Value>,
    /// Transmit rate limiter (not supported by kvmkit yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<serde_json::Value>,
    /// kvmkit extension: how the device worker polls the tx queue and the
    /// tap after a round that moved frames (`"off"`, `"auto"` or a window
    /// such as `"100us"`).
    #[serde(default, skip_serializing_if = "PollMode::is_off")]
    pub poll: PollMode,
}

impl NetworkInterfaceConfig {
    /// Checks what kvmkit supports.
    pub fn validate(&self) -> Result<(), ConfigError> {
        super::drive::check_id("iface_id", &self.iface_id)?;
        if self.host_dev_name.is_empty() || self.host_dev_name.len() > 15 {
            return Err(invalid("host_dev_name", "a tap name is 1 to 15 characters"));
        }
        if let Some(mac) = &self.guest_mac {
            parse_mac(mac).map_err(|why| invalid("guest_mac", why))?;
        }
        for (field, r) in [
            ("rx_rate_limiter", &self.rx_rate_limiter),
            ("tx_rate_limiter", &self.tx_rate_limiter),
        ] {
            if r.as_ref().is_some_and(|r| !r.is_null()) {
                return Err(invalid(field, "rate limiters are not supported by kvmkit yet"));
            }
        }
        Ok(())
    }

    /// The guest MAC: the configured one, or a stable locally administered
    /// address derived from the interface id.
    pub fn mac(&self) -> [u8; 6] {
        if let Some(mac) = self.guest_mac.as_deref().and_then(|m| parse_mac(m).ok()) {
            return mac;
        }
        // FNV-1a of the id: stable across runs, distinct for distinct ids.
        let h = self.iface_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        let b = h.to_le_bytes();
        [0x06, 0x00, b[0], b[1], b[2], b[3]]
    }
}

/// Parses `aa:bb:cc:dd:ee:ff` (unicast, not all zero).
pub fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let bad = || format!("mac '{text}' is not a MAC address like 52:54:00:12:34:56");
    let mut mac = [0u8; 6];
    let mut parts = text.split([':', '-']);
    for b in &mut mac {
        let p = parts.next().ok_or_else(bad)?;
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    if mac[0] & 1 != 0 || mac == [0; 6] {
        return Err(format!(
            "mac {text} is a multicast or zero address; the guest needs a unicast MAC (e.g. 52:54:00:12:34:56)"
        ));
    }
    Ok(mac)
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}
