//! The `--net` option and the host side of each NIC.
//!
//! Spec forms:
//! - `tap=NAME[,mac=MAC][,host-ip=A][,guest-ip=B]`: an existing tap (created,
//!   non-persistent, when missing). The guest's addresses come from the keys,
//!   or are inferred when the tap carries an IPv4 address in a /30 or larger.
//! - `auto[,host-ip=A][,guest-ip=B][,mac=MAC]`: kvmkit creates a tap
//!   (`kvmkit%d`), gives the host side A/30 and the guest B; without them the
//!   first /30 of 10.0.2.0/24 unused in this network namespace is taken
//!   (10.0.2.1 host, 10.0.2.2 guest when free). The tap goes away on exit.
//! - `bridge=BR[,mac=MAC][,host-ip=A][,guest-ip=B]`: kvmkit creates a tap and
//!   attaches it to the existing bridge BR.
//!
//! Host configuration shells out to iproute2's `ip` in the caller's network
//! namespace; every failure says which command failed and why.

use std::fmt;
use std::net::Ipv4Addr;
use std::process::Command;
use std::str::FromStr;

use super::tap::{check_ifname, Tap};
use super::NetError;

/// Prefix length used by `auto`.
pub const AUTO_PREFIX: u8 = 30;
/// First network `auto` tries (10.0.2.0/30: host .1, guest .2).
pub const AUTO_BASE: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 0);
/// Interface name pattern for taps kvmkit creates (the kernel fills in %d).
pub const AUTO_TAP_PATTERN: &str = "kvmkit%d";

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
}

/// Parses `aa:bb:cc:dd:ee:ff` (unicast, not all zero).
pub fn parse_mac(text: &str) -> Result<[u8; 6], NetError> {
    let bad = || NetError::Config(format!("mac '{text}' is not a MAC address like 52:54:00:12:34:56"));
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
        return Err(NetError::Config(format!(
            "mac {text} is a multicast or zero address; the guest needs a unicast MAC (e.g. 52:54:00:12:34:56)"
        )));
    }
    Ok(mac)
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
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
                Some(("mac", m)) => cfg.mac = Some(parse_mac(m)?),
                Some(("host-ip", v)) => cfg.host_ip = Some(ip("host-ip", v)?),
                Some(("guest-ip", v)) => cfg.guest_ip = Some(ip("guest-ip", v)?),
                Some((k, v)) => {
                    return Err(NetError::Config(format!(
                        "{spec}: unknown option {k}={v} (use tap=NAME, auto or bridge=BR, with mac=, host-ip=, \
                         guest-ip=)"
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
        Ok(())
    }
}

fn net30(a: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(a) & !3)
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

/// Removes what [`setup_net`] created (the tap, and with it its addresses
/// and bridge port) when dropped. Keep it until the VM has ended.
#[derive(Debug, Default)]
pub struct NetGuard {
    created_tap: Option<String>,
}

impl Drop for NetGuard {
    fn drop(&mut self) {
        // The taps kvmkit creates are not persistent and vanish when their
        // file is closed; this covers the case where it is still open.
        if let Some(name) = self.created_tap.take() {
            if link_exists(&name) {
                if let Err(e) = ip(&["link", "del", "dev", &name]) {
                    tracing::debug!("removing tap {name}: {e}");
                }
            }
        }
    }
}

/// What the guest needs to know about one NIC, and the guard for what was created.
#[derive(Debug)]
pub struct NetPlan {
    /// The tap's interface name.
    pub tap_name: String,
    /// The guest's MAC.
    pub mac: [u8; 6],
    /// The guest's address, when known.
    pub guest_ip: Option<Ipv4Addr>,
    /// The host side's address, when known.
    pub host_ip: Option<Ipv4Addr>,
    /// Prefix length of the guest's network.
    pub prefix_len: u8,
    /// Removes the tap on drop if kvmkit created it.
    pub guard: NetGuard,
}

impl NetPlan {
    /// The netmask of [`NetPlan::prefix_len`].
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask(self.prefix_len))
    }

    /// One line for the user: `tap kvmkit0: host 10.0.2.1/30, guest 10.0.2.2, mac ...`.
    pub fn describe(&self) -> String {
        let host = self
            .host_ip
            .map_or("-".to_owned(), |a| format!("{a}/{}", self.prefix_len));
        let guest = self.guest_ip.map_or("-".to_owned(), |a| a.to_string());
        format!(
            "tap {}: host {host}, guest {guest}, mac {}",
            self.tap_name,
            format_mac(&self.mac)
        )
    }
}

/// Runs `ip ARGS`; returns stdout, or an error naming the command and its complaint.
fn ip(args: &[&str]) -> Result<String, NetError> {
    let cmd = format!("ip {}", args.join(" "));
    let out = Command::new("ip").args(args).output().map_err(|e| {
        NetError::Host(format!(
            "cannot run `{cmd}` ({e}): kvmkit needs iproute2's `ip` on PATH to set up networking"
        ))
    })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    Err(if err.contains("Operation not permitted") {
        NetError::Permission(format!(
            "`{cmd}` failed: {err}: configuring host networking needs CAP_NET_ADMIN (run as root)"
        ))
    } else if err.contains("File exists") || err.contains("Address already") {
        NetError::AddressInUse(format!("`{cmd}` failed: {err}: the address is already in use"))
    } else {
        NetError::Host(format!("`{cmd}` failed: {err}"))
    })
}

/// IPv4 addresses in this namespace: (interface, address, prefix).
fn ipv4_addrs() -> Result<Vec<(String, Ipv4Addr, u8)>, NetError> {
    let text = ip(&["-o", "-4", "addr", "show"])?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let _idx = w.next()?;
            let ifname = w.next()?.trim_end_matches(':').to_owned();
            let _family = w.next()?;
            let (a, p) = w.next()?.split_once('/')?;
            Some((ifname, a.parse().ok()?, p.parse().ok()?))
        })
        .collect())
}

/// The first address of `addrs` whose network overlaps `net/prefix`.
fn overlap(addrs: &[(String, Ipv4Addr, u8)], net: Ipv4Addr, prefix: u8) -> Option<&(String, Ipv4Addr, u8)> {
    addrs.iter().find(|(_, a, p)| {
        let m = mask(prefix.min(*p));
        u32::from(*a) & m == u32::from(net) & m
    })
}

/// Picks the /30 for `auto`: the given addresses (checked against this
/// namespace) or the first free /30 of 10.0.2.0/24.
fn auto_addresses(cfg: &NetConfig, addrs: &[(String, Ipv4Addr, u8)]) -> Result<(Ipv4Addr, Ipv4Addr), NetError> {
    let given = cfg.host_ip.or(cfg.guest_ip);
    if let Some(a) = given {
        let net = u32::from(net30(a));
        let host = cfg.host_ip.unwrap_or_else(|| {
            let g = u32::from(cfg.guest_ip.unwrap_or(a));
            Ipv4Addr::from(if g == net + 1 { net + 2 } else { net + 1 })
        });
        let guest = cfg
            .guest_ip
            .unwrap_or_else(|| Ipv4Addr::from(if u32::from(host) == net + 1 { net + 2 } else { net + 1 }));
        for x in [host, guest] {
            if let Some((ifname, _, _)) = addrs.iter().find(|(_, b, _)| *b == x) {
                return Err(NetError::AddressInUse(format!(
                    "address {x} is already in use on {ifname} in this network namespace; pick other host-ip=/guest-ip="
                )));
            }
        }
        if let Some((ifname, b, p)) = overlap(addrs, Ipv4Addr::from(net), AUTO_PREFIX) {
            return Err(NetError::AddressInUse(format!(
                "{}/30 overlaps {b}/{p} on {ifname} in this network namespace; pick other host-ip=/guest-ip=",
                Ipv4Addr::from(net)
            )));
        }
        return Ok((host, guest));
    }
    let base = u32::from(AUTO_BASE);
    for k in 0..64u32 {
        let net = Ipv4Addr::from(base + 4 * k);
        if overlap(addrs, net, AUTO_PREFIX).is_none() {
            return Ok((Ipv4Addr::from(base + 4 * k + 1), Ipv4Addr::from(base + 4 * k + 2)));
        }
    }
    Err(NetError::AddressInUse(
        "no free /30 left in 10.0.2.0/24 in this network namespace; give host-ip= and guest-ip=".into(),
    ))
}

/// A MAC in QEMU's 52:54:00 range with three random bytes.
fn random_mac() -> [u8; 6] {
    let mut r = [0u8; 3];
    if crate::virtio::rng::host_random(&mut r).is_err() {
        let pid = std::process::id();
        r = [(pid >> 16) as u8, (pid >> 8) as u8, pid as u8];
    }
    [0x52, 0x54, 0x00, r[0], r[1], r[2]]
}

/// Whether interface `name` exists in this network namespace.
pub fn link_exists(name: &str) -> bool {
    ip(&["-o", "link", "show", "dev", name]).is_ok()
}

/// Interface `name`'s (rx, tx) packet counters, from `ip -s link show`.
pub fn link_packets(name: &str) -> Option<(u64, u64)> {
    let text = ip(&["-s", "-o", "link", "show", "dev", name]).ok()?;
    let mut parts = text.split('\\');
    let mut rx = None;
    let mut tx = None;
    while let Some(p) = parts.next() {
        let p = p.trim();
        let want = if p.starts_with("RX:") {
            &mut rx
        } else if p.starts_with("TX:") {
            &mut tx
        } else {
            continue;
        };
        *want = parts
            .next()
            .and_then(|v| v.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok());
    }
    Some((rx?, tx?))
}

fn set_up(name: &str) -> Result<(), NetError> {
    ip(&["link", "set", "dev", name, "up"]).map(|_| ())
}

/// Creates or opens NIC `index`'s tap and configures the host side. Returns
/// the open tap (for [`crate::virtio::net::Net`]) and what the guest needs.
pub fn setup_net(cfg: &NetConfig, index: usize) -> Result<(Tap, NetPlan), NetError> {
    let mac = cfg.mac.unwrap_or_else(random_mac);
    let mut plan = NetPlan {
        tap_name: String::new(),
        mac,
        guest_ip: cfg.guest_ip,
        host_ip: cfg.host_ip,
        prefix_len: AUTO_PREFIX,
        guard: NetGuard::default(),
    };
    let tap = match &cfg.mode {
        NetMode::Auto => {
            let addrs = ipv4_addrs()?;
            let (host, guest) = auto_addresses(cfg, &addrs)?;
            let tap = Tap::open(AUTO_TAP_PATTERN)?;
            plan.tap_name = tap.name().to_owned();
            plan.guard.created_tap = Some(plan.tap_name.clone());
            let cidr = format!("{host}/{AUTO_PREFIX}");
            ip(&["addr", "add", &cidr, "dev", tap.name()]).map_err(|e| match e {
                NetError::AddressInUse(m) => NetError::AddressInUse(format!("{m} (NIC {index}: {host})")),
                e => e,
            })?;
            set_up(tap.name())?;
            plan.host_ip = Some(host);
            plan.guest_ip = Some(guest);
            tap
        }
        NetMode::Tap(name) => {
            let existed = link_exists(name);
            let tap = Tap::open(name)?;
            plan.tap_name = tap.name().to_owned();
            if !existed {
                plan.guard.created_tap = Some(plan.tap_name.clone());
                tracing::info!("tap {name} did not exist; created it for this run");
            }
            if let Err(e) = set_up(name) {
                tracing::warn!("could not bring tap {name} up: {e}");
            }
            infer_addresses(&mut plan, name);
            tap
        }
        NetMode::Bridge(br) => {
            let details = ip(&["-d", "-o", "link", "show", "dev", br]).ok();
            let Some(details) = details else {
                return Err(NetError::Bridge(format!(
                    "bridge {br} does not exist in this network namespace: create it first (ip link add {br} type \
                     bridge; ip link set {br} up)"
                )));
            };
            if !details.contains(" bridge ") {
                return Err(NetError::Bridge(format!(
                    "{br} exists but is not a bridge (`ip -d link show dev {br}` shows no bridge)"
                )));
            }
            let tap = Tap::open(AUTO_TAP_PATTERN)?;
            plan.tap_name = tap.name().to_owned();
            plan.guard.created_tap = Some(plan.tap_name.clone());
            ip(&["link", "set", "dev", tap.name(), "master", br])?;
            set_up(tap.name())?;
            infer_addresses(&mut plan, br);
            tap
        }
    };
    tracing::info!("NIC {index}: {}", plan.describe());
    Ok((tap, plan))
}

/// Fills in the host address (and the guest's, for a /30../24 network with
/// only one other host) from `ifname`'s first IPv4 address, unless given.
fn infer_addresses(plan: &mut NetPlan, ifname: &str) {
    let Ok(addrs) = ipv4_addrs() else { return };
    let Some((_, a, p)) = addrs.iter().find(|(i, _, _)| i == ifname) else {
        return;
    };
    plan.prefix_len = *p;
    if plan.host_ip.is_none() {
        plan.host_ip = Some(*a);
    }
    if plan.guest_ip.is_none() && *p == 30 {
        let net = u32::from(*a) & mask(30);
        let other = if u32::from(*a) == net + 1 { net + 2 } else { net + 1 };
        plan.guest_ip = Some(Ipv4Addr::from(other));
    }
}

/// Command-line words for the NICs of `plans`, in attach order: Linux's
/// `ip=` for the first NIC with a guest address (as `eth<i>`), and one
/// `kvmkit.net=MAC,GUEST-IP,HOST-IP,PREFIX` per NIC (0.0.0.0 when unknown)
/// for kvmkit's guest.
pub fn cmdline_words(plans: &[NetPlan]) -> String {
    let mut words = Vec::new();
    if let Some((i, p)) = plans.iter().enumerate().find(|(_, p)| p.guest_ip.is_some()) {
        let g = p.guest_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        let gw = p.host_ip.map_or(String::new(), |h| h.to_string());
        words.push(format!("ip={g}::{gw}:{}::eth{i}:off", p.netmask()));
    }
    for p in plans {
        words.push(format!(
            "{}={},{},{},{}",
            kvmkit_guest_abi::CMDLINE_NET,
            format_mac(&p.mac),
            p.guest_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
            p.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
            p.prefix_len
        ));
    }
    words.join(" ")
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
            "mac=52:54:00:12:34:56",
            "bridge=br0,host-ip=1.2.3",
        ] {
            assert!(NetConfig::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn auto_picks_a_free_slash30() {
        let cfg = NetConfig::parse("auto").expect("auto");
        let none = auto_addresses(&cfg, &[]).expect("free");
        assert_eq!(none, (Ipv4Addr::new(10, 0, 2, 1), Ipv4Addr::new(10, 0, 2, 2)));
        let used = vec![("kvmkit0".to_owned(), Ipv4Addr::new(10, 0, 2, 1), 30)];
        let next = auto_addresses(&cfg, &used).expect("next");
        assert_eq!(next, (Ipv4Addr::new(10, 0, 2, 5), Ipv4Addr::new(10, 0, 2, 6)));
        let wide = vec![("eth0".to_owned(), Ipv4Addr::new(10, 0, 0, 7), 16)];
        assert!(matches!(auto_addresses(&cfg, &wide), Err(NetError::AddressInUse(_))));
        let given = NetConfig::parse("auto,host-ip=10.0.2.1").expect("given");
        assert!(matches!(auto_addresses(&given, &used), Err(NetError::AddressInUse(_))));
        let guest_only = NetConfig::parse("auto,guest-ip=192.168.7.1").expect("guest only");
        assert_eq!(
            auto_addresses(&guest_only, &[]).expect("derived"),
            (Ipv4Addr::new(192, 168, 7, 2), Ipv4Addr::new(192, 168, 7, 1))
        );
    }

    #[test]
    fn cmdline_words_name_linux_and_guest_values() {
        let plan = |mac: u8, g: Option<[u8; 4]>, h: Option<[u8; 4]>| NetPlan {
            tap_name: "t".into(),
            mac: [0x52, 0x54, 0, 0, 0, mac],
            guest_ip: g.map(Ipv4Addr::from),
            host_ip: h.map(Ipv4Addr::from),
            prefix_len: 30,
            guard: NetGuard::default(),
        };
        let plans = [plan(1, Some([10, 0, 2, 2]), Some([10, 0, 2, 1])), plan(2, None, None)];
        assert_eq!(
            cmdline_words(&plans),
            "ip=10.0.2.2::10.0.2.1:255.255.255.252::eth0:off kvmkit.net=52:54:00:00:00:01,10.0.2.2,10.0.2.1,30 \
             kvmkit.net=52:54:00:00:00:02,0.0.0.0,0.0.0.0,30"
        );
        assert_eq!(cmdline_words(&[]), "");
    }
}
