//! What the guest learns about its NICs: kernel command-line words.

use std::net::Ipv4Addr;

use kvmkit_vmm::vmm_config::format_mac;

use crate::setup::NetPlan;

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
    use crate::setup::NetGuard;

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
