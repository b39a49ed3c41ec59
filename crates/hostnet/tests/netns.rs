//! `setup_net` against the real host, inside a private network namespace
//! (skipped when the host does not allow one): `auto` addresses, a second
//! NIC, clashes, bridges, existing taps, and teardown.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;

use kvmkit_hostnet::{link_exists, setup_net, NetConfig, NetError};

/// A private network namespace for the calling thread (None when the host
/// does not allow one: no root, no /dev/net/tun, no `ip`).
fn enter_private_netns(tag: &str) -> Option<String> {
    if !std::path::Path::new("/dev/net/tun").exists() {
        eprintln!("skipped: /dev/net/tun is missing");
        return None;
    }
    let ns = format!("kvmkit-hn-{tag}-{}", std::process::id());
    let ok = Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: cannot create a network namespace (needs root and iproute2)");
        return None;
    }
    let f = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("netns file");
    // SAFETY: setns on a netns fd moves only this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        eprintln!("skipped: setns failed");
        return None;
    }
    Some(ns)
}

/// Runs `body` on a thread of its own inside a fresh namespace, then deletes it.
fn in_netns(tag: &'static str, body: fn()) {
    std::thread::spawn(move || {
        let Some(ns) = enter_private_netns(tag) else { return };
        let result = std::panic::catch_unwind(body);
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        if let Err(e) = result {
            std::panic::resume_unwind(e);
        }
    })
    .join()
    .expect("namespace test");
}

fn ip(args: &[&str]) {
    let ok = Command::new("ip").args(args).status().is_ok_and(|s| s.success());
    assert!(ok, "ip {}", args.join(" "));
}

#[test]
fn auto_takes_free_slash30s_and_teardown_removes_the_taps() {
    in_netns("auto", || {
        let cfg = NetConfig::parse("auto").expect("auto");
        let (tap, plan) = setup_net(&cfg, 0).expect("setup_net in a fresh namespace");
        assert_eq!(plan.host_ip, Some(Ipv4Addr::new(10, 0, 2, 1)));
        assert_eq!(plan.guest_ip, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(plan.prefix_len, 30);
        assert_eq!(tap.name(), plan.tap_name);
        assert!(link_exists(&plan.tap_name));
        // A second `auto` in the same namespace takes the next /30.
        let (tap2, plan2) = setup_net(&cfg, 1).expect("second NIC");
        assert_eq!(plan2.host_ip, Some(Ipv4Addr::new(10, 0, 2, 5)));
        assert_eq!(plan2.guest_ip, Some(Ipv4Addr::new(10, 0, 2, 6)));
        // Address in use.
        let used = NetConfig::parse("auto,host-ip=10.0.2.1").expect("spec");
        let e = setup_net(&used, 2).expect_err("in use");
        assert!(matches!(e, NetError::AddressInUse(_)), "{e}");
        // Missing bridge.
        let br = NetConfig::parse("bridge=nobr0").expect("spec");
        let e = setup_net(&br, 3).expect_err("no bridge");
        assert!(matches!(e, NetError::Bridge(_)), "{e}");
        let names = [plan.tap_name.clone(), plan2.tap_name.clone()];
        drop(tap);
        drop(plan);
        drop(tap2);
        drop(plan2);
        for name in names {
            assert!(!link_exists(&name), "{name} is gone after teardown");
        }
    });
}

#[test]
fn bridge_ports_and_existing_taps_take_their_addresses_from_the_host() {
    in_netns("br", || {
        // A tap on an existing bridge: host and guest addresses from the bridge's /30.
        ip(&["link", "add", "br0", "type", "bridge"]);
        ip(&["addr", "add", "192.168.50.1/30", "dev", "br0"]);
        ip(&["link", "set", "br0", "up"]);
        let cfg = NetConfig::parse("bridge=br0").expect("spec");
        let (tap, plan) = setup_net(&cfg, 0).expect("bridge port");
        assert_eq!(plan.host_ip, Some(Ipv4Addr::new(192, 168, 50, 1)));
        assert_eq!(plan.guest_ip, Some(Ipv4Addr::new(192, 168, 50, 2)));
        let details = Command::new("ip")
            .args(["-o", "link", "show", "dev", &plan.tap_name])
            .output()
            .expect("ip link show");
        assert!(
            String::from_utf8_lossy(&details.stdout).contains("master br0"),
            "the tap is a port of br0"
        );
        // Not a bridge.
        let e = setup_net(
            &NetConfig::parse(&format!("bridge={}", plan.tap_name)).expect("spec"),
            1,
        )
        .expect_err("not a bridge");
        assert!(matches!(e, NetError::Bridge(_)), "{e}");
        let port = plan.tap_name.clone();
        drop(tap);
        drop(plan);
        assert!(!link_exists(&port), "the port is gone after teardown");
        assert!(link_exists("br0"), "the bridge stays");

        // An existing persistent tap stays, with its address; a missing one
        // is created for the run and removed after it.
        ip(&["tuntap", "add", "dev", "kvt0", "mode", "tap", "vnet_hdr"]);
        ip(&["addr", "add", "10.7.0.2/30", "dev", "kvt0"]);
        let (tap, plan) = setup_net(&NetConfig::parse("tap=kvt0").expect("spec"), 0).expect("existing tap");
        assert_eq!(plan.host_ip, Some(Ipv4Addr::new(10, 7, 0, 2)));
        assert_eq!(plan.guest_ip, Some(Ipv4Addr::new(10, 7, 0, 1)));
        drop(tap);
        drop(plan);
        assert!(link_exists("kvt0"), "an existing tap stays");
        let (tap, plan) = setup_net(&NetConfig::parse("tap=kvt1").expect("spec"), 1).expect("new tap");
        assert!(link_exists("kvt1"));
        assert_eq!(plan.guest_ip, None);
        drop(tap);
        drop(plan);
        assert!(!link_exists("kvt1"), "a tap created for the run goes away");
    });
}
