//! Parsing (and printing) one `--net` spec.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use kvmkit_vmm::net::tap::check_ifname;
use kvmkit_vmm::net::NetError;
use kvmkit_vmm::vmm_config::{format_mac, parse_mac, PollMode};

use crate::addr::net30;

/// How the NIC reaches the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetMode {
    /// An existing (or ad-hoc) tap of this name.
    Tap(String),
    /// A tap created by kvmkit with a private /30.
    Auto,
    /// A tap created by kvmkit and attached to this bridge.
    Bridge(String),
}

/// One `--net` option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// Where the frames go.
    pub mode: NetMode,
    /// The guest's MAC (default 52:54:00 plus three random bytes).
    pub mac: Option<[u8; 6]>,
    /// Host-side address (`host-ip=`).
    pub host_ip: Option<Ipv4Addr>,
    /// Guest address (`guest-ip=`).
    pub guest_ip: Option<Ipv4Addr>,
    /// How the device worker polls after a round that moved frames (`poll=`).
    pub poll: PollMode,
}

impl FromStr for NetConfig {
    type Err = NetError;

    fn from_str(spec: &str) -> Result<Self, NetError> {
        NetConfig::parse(spec)
    }
}

impl NetConfig {
    /// Parses one `--net` value.
    pub fn parse(spec: &str) -> Result<Self, NetError> {
        let mut mode = None;
        let mut cfg = NetConfig {
            mode: NetMode::Auto,
            mac: None,
            host_ip: None,
            guest_ip: None,
            poll: PollMode::Off,
        };
        let ip = |k: &str, v: &str| {
            v.parse::<Ipv4Addr>()
                .map_err(|_| NetError::Config(format!("{spec}: {k}={v} is not an IPv4 address")))
        };
        for part in spec.split(',') {
            let set = |mode: &mut Option<NetMode>, m: NetMode| {
                if mode.is_some() {
                    return Err(NetError::Config(format!(
                        "{spec}: give one of tap=NAME, auto, bridge=BR"
                    )));
                }
                *mode = Some(m);
                Ok(())
            };
            match part.split_once('=') {
                None if part == "auto" => set(&mut mode, NetMode::Auto)?,
                Some(("tap", name)) => {
                    check_ifname(name)?;
                    set(&mut mode, NetMode::Tap(name.to_owned()))?
                }
                Some(("bridge", name)) => {
                    check_ifname(name)?;
                    set(&mut mode, NetMode::Bridge(name.to_owned()))?
                }
                Some(("mac", m)) => cfg.mac = Some(parse_mac(m).map_err(NetError::Config)?),
                Some(("host-ip", v)) => cfg.host_ip = Some(ip("host-ip", v)?),
                Some(("guest-ip", v)) => cfg.guest_ip = Some(ip("guest-ip", v)?),
                Some(("poll", v)) => cfg.poll = v.parse().map_err(|e| NetError::Config(format!("{spec}: {e}")))?,
                Some((k, v)) => {
                    return Err(NetError::Config(format!(
                        "{spec}: unknown option {k}={v} (use tap=NAME, auto or bridge=BR, with mac=, host-ip=, \
                         guest-ip=, poll=off|auto|N)"
                    )))
                }
                None => {
                    return Err(NetError::Config(format!(
                        "{spec}: '{part}' is not understood (use tap=NAME, auto or bridge=BR)"
                    )))
                }
            }
        }
        cfg.mode = mode.ok_or_else(|| NetError::Config(format!("{spec}: give one of tap=NAME, auto, bridge=BR")))?;
        if let (Some(h), Some(g)) = (cfg.host_ip, cfg.guest_ip) {
            if h == g {
                return Err(NetError::Config(format!("{spec}: host-ip and guest-ip are both {h}")));
            }
            if cfg.mode == NetMode::Auto && net30(h) != net30(g) {
                return Err(NetError::Config(format!(
                    "{spec}: with auto, host-ip {h} and guest-ip {g} must lie in the same /30 (e.g. 10.0.2.1 and \
                     10.0.2.2)"
                )));
            }
        }
        for a in [cfg.host_ip, cfg.guest_ip].into_iter().flatten() {
            if cfg.mode == NetMode::Auto && (a == net30(a) || u32::from(a) & 3 == 3) {
                return Err(NetError::Config(format!(
                    "{spec}: {a} is the network or broadcast address of its /30"
                )));
            }
            if a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback() {
                return Err(NetError::Config(format!("{spec}: {a} cannot be an interface address")));
            }
        }
        Ok(cfg)
    }
}

impl fmt::Display for NetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.mode {
            NetMode::Tap(n) => write!(f, "tap={n}")?,
            NetMode::Auto => f.write_str("auto")?,
            NetMode::Bridge(b) => write!(f, "bridge={b}")?,
        }
        if let Some(m) = &self.mac {
            write!(f, ",mac={}", format_mac(m))?;
        }
        if let Some(a) = self.host_ip {
            write!(f, ",host-ip={a}")?;
        }
        if let Some(a) = self.guest_ip {
            write!(f, ",guest-ip={a}")?;
        }
        if !self.poll.is_off() {
            write!(f, ",poll={}", self.poll)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        let c = NetConfig::parse("tap=tap0,mac=52:54:00:12:34:56").expect("tap");
        assert_eq!(c.mode, NetMode::Tap("tap0".into()));
        assert_eq!(c.mac, Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        let c = NetConfig::parse("auto").expect("auto");
        assert_eq!(c.mode, NetMode::Auto);
        let c = NetConfig::parse("auto,host-ip=10.9.0.5,guest-ip=10.9.0.6").expect("auto ips");
        assert_eq!(c.host_ip, Some(Ipv4Addr::new(10, 9, 0, 5)));
        assert_eq!(c.to_string(), "auto,host-ip=10.9.0.5,guest-ip=10.9.0.6");
        let c = NetConfig::parse("bridge=br0").expect("bridge");
        assert_eq!(c.mode, NetMode::Bridge("br0".into()));
        assert_eq!(c.poll, PollMode::Off);
        let c = NetConfig::parse("tap=t0,poll=auto").expect("poll");
        assert_eq!(c.poll, PollMode::Auto);
        assert_eq!(c.to_string(), "tap=t0,poll=auto");
        let c = NetConfig::parse("auto,poll=80us").expect("poll us");
        assert_eq!(c.poll, PollMode::Fixed(80));
        assert_eq!(NetConfig::parse(&c.to_string()).expect("round trip"), c);
        for bad in [
            "",
            "tap=",
            "tap=averyveryverylongname",
            "auto,tap=x",
            "auto,mac=01:00:00:00:00:01",
            "auto,mac=52:54:00:12:34",
            "auto,host-ip=10.0.0.1,guest-ip=10.0.0.9",
            "auto,host-ip=10.0.0.0",
            "auto,guest-ip=10.0.0.3",
            "auto,speed=10",
            "auto,poll=fast",
            "auto,poll=100000",
            "mac=52:54:00:12:34:56",
            "bridge=br0,host-ip=1.2.3",
        ] {
            assert!(NetConfig::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn mac_errors_keep_their_messages() {
        let e = NetConfig::parse("auto,mac=52:54:00:12:34").expect_err("short");
        assert_eq!(
            e.to_string(),
            "--net: mac '52:54:00:12:34' is not a MAC address like 52:54:00:12:34:56"
        );
        let e = NetConfig::parse("auto,mac=01:00:00:00:00:01").expect_err("multicast");
        assert_eq!(
            e.to_string(),
            "--net: mac 01:00:00:00:00:01 is a multicast or zero address; the guest needs a unicast MAC (e.g. \
             52:54:00:12:34:56)"
        );
    }
}
