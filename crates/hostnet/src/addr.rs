//! Address selection: the /30 `auto` takes, and the guest's default MAC.

use std::net::Ipv4Addr;

use kvmkit_vmm::net::NetError;

use crate::{AUTO_BASE, AUTO_PREFIX};

/// The /30 network `a` lies in.
pub(crate) fn net30(a: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(a) & !3)
}

/// The netmask of a prefix length, as a number.
pub(crate) fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

/// The first address of `addrs` whose network overlaps `net/prefix`.
fn overlap(addrs: &[(String, Ipv4Addr, u8)], net: Ipv4Addr, prefix: u8) -> Option<&(String, Ipv4Addr, u8)> {
    addrs.iter().find(|(_, a, p)| {
        let m = mask(prefix.min(*p));
        u32::from(*a) & m == u32::from(net) & m
    })
}

/// Picks the /30 for `auto`: the given addresses (`host-ip=`, `guest-ip=`,
/// checked against this namespace) or the first free /30 of 10.0.2.0/24.
pub(crate) fn auto_addresses(
    host_ip: Option<Ipv4Addr>,
    guest_ip: Option<Ipv4Addr>,
    addrs: &[(String, Ipv4Addr, u8)],
) -> Result<(Ipv4Addr, Ipv4Addr), NetError> {
    let given = host_ip.or(guest_ip);
    if let Some(a) = given {
        let net = u32::from(net30(a));
        let host = host_ip.unwrap_or_else(|| {
            let g = u32::from(guest_ip.unwrap_or(a));
            Ipv4Addr::from(if g == net + 1 { net + 2 } else { net + 1 })
        });
        let guest =
            guest_ip.unwrap_or_else(|| Ipv4Addr::from(if u32::from(host) == net + 1 { net + 2 } else { net + 1 }));
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
pub(crate) fn random_mac() -> [u8; 6] {
    let mut r = [0u8; 3];
    if kvmkit_vmm::host::random::host_random(&mut r).is_err() {
        let pid = std::process::id();
        r = [(pid >> 16) as u8, (pid >> 8) as u8, pid as u8];
    }
    [0x52, 0x54, 0x00, r[0], r[1], r[2]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_picks_a_free_slash30() {
        let none = auto_addresses(None, None, &[]).expect("free");
        assert_eq!(none, (Ipv4Addr::new(10, 0, 2, 1), Ipv4Addr::new(10, 0, 2, 2)));
        let used = vec![("kvmkit0".to_owned(), Ipv4Addr::new(10, 0, 2, 1), 30)];
        let next = auto_addresses(None, None, &used).expect("next");
        assert_eq!(next, (Ipv4Addr::new(10, 0, 2, 5), Ipv4Addr::new(10, 0, 2, 6)));
        let wide = vec![("eth0".to_owned(), Ipv4Addr::new(10, 0, 0, 7), 16)];
        assert!(matches!(
            auto_addresses(None, None, &wide),
            Err(NetError::AddressInUse(_))
        ));
        let given = Some(Ipv4Addr::new(10, 0, 2, 1));
        assert!(matches!(
            auto_addresses(given, None, &used),
            Err(NetError::AddressInUse(_))
        ));
        assert_eq!(
            auto_addresses(None, Some(Ipv4Addr::new(192, 168, 7, 1)), &[]).expect("derived"),
            (Ipv4Addr::new(192, 168, 7, 2), Ipv4Addr::new(192, 168, 7, 1))
        );
    }
}
