//! Opening each NIC's tap and configuring the host side; undoing it on drop.

use std::net::Ipv4Addr;

use kvmkit_vmm::net::{NetError, Tap};
use kvmkit_vmm::vmm_config::format_mac;

use crate::addr::{auto_addresses, mask, random_mac};
use crate::ip::{ip, ipv4_addrs, link_exists, link_index, set_up};
use crate::spec::{NetConfig, NetMode};
use crate::{AUTO_PREFIX, AUTO_TAP_PATTERN};

/// Removes what [`setup_net`] created (the tap, and with it its addresses
/// and bridge port) when dropped. Keep it until the VM has ended.
#[derive(Debug, Default)]
pub struct NetGuard {
    /// The tap kvmkit created: its name and interface index.
    created_tap: Option<(String, u32)>,
}

impl NetGuard {
    /// Owns the tap `name` now has (by its index, not its name: the kernel
    /// reuses `kvmkitN` names, and another VM's tap must never be deleted).
    fn own(&mut self, name: &str) {
        self.created_tap = link_index(name).map(|index| (name.to_owned(), index));
    }
}

impl Drop for NetGuard {
    fn drop(&mut self) {
        // The taps kvmkit creates are not persistent and vanish when their
        // file is closed; this covers the case where it is still open. The
        // name is only deleted while it still names the interface created.
        if let Some((name, index)) = self.created_tap.take() {
            match link_index(&name) {
                Some(now) if now == index => {
                    if let Err(e) = ip(&["link", "del", "dev", &name]) {
                        tracing::debug!("removing tap {name}: {e}");
                    }
                }
                Some(_) => tracing::debug!("tap {name} now names another interface; left alone"),
                None => {}
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

/// Creates or opens NIC `index`'s tap and configures the host side. Returns
/// the open tap (for the VMM's virtio-net, e.g. through
/// [`kvmkit_vmm::MachineOptions::taps`]) and what the guest needs.
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
            let (host, guest) = auto_addresses(cfg.host_ip, cfg.guest_ip, &addrs)?;
            let tap = Tap::open(AUTO_TAP_PATTERN)?;
            plan.tap_name = tap.name().to_owned();
            plan.guard.own(tap.name());
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
                plan.guard.own(tap.name());
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
            plan.guard.own(tap.name());
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root and /dev/net/tun; says why it did nothing otherwise.
    fn can_make_taps() -> bool {
        // SAFETY: geteuid has no preconditions.
        let ok = std::path::Path::new("/dev/net/tun").exists() && unsafe { libc::geteuid() } == 0;
        if !ok {
            eprintln!("skipped: needs root and /dev/net/tun");
        }
        ok
    }

    #[test]
    fn a_guard_never_deletes_a_reused_tap_name() {
        if !can_make_taps() {
            return;
        }
        let name = format!("kvmkitre{}", std::process::id() % 100_000);
        let first = Tap::open(&name).expect("first tap");
        let mut guard = NetGuard::default();
        guard.own(first.name());
        // The first tap goes away with its file; another VM gets the same name.
        drop(first);
        assert!(!link_exists(&name));
        let second = Tap::open(&name).expect("second tap");
        drop(guard);
        assert!(link_exists(&name), "the guard deleted another VM's tap");
        // Its own guard still removes it while it is open.
        let mut guard = NetGuard::default();
        guard.own(second.name());
        drop(guard);
        assert!(!link_exists(&name), "the guard left its own tap");
        drop(second);
    }
}
