//! iproute2 `ip` calls in the caller's network namespace.

use std::net::Ipv4Addr;
use std::process::Command;

use kvmkit_vmm::net::NetError;

/// Runs `ip ARGS`; returns stdout, or an error naming the command and its complaint.
pub(crate) fn ip(args: &[&str]) -> Result<String, NetError> {
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
pub(crate) fn ipv4_addrs() -> Result<Vec<(String, Ipv4Addr, u8)>, NetError> {
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

/// Whether interface `name` exists in this network namespace.
pub fn link_exists(name: &str) -> bool {
    link_index(name).is_some()
}

/// Interface `name`'s index in this network namespace, if it exists. The
/// index names one interface for its lifetime: a later interface that reuses
/// the name gets a new index.
pub fn link_index(name: &str) -> Option<u32> {
    // An ioctl (SIOCGIFINDEX) rather than running `ip`: this is also asked
    // at teardown, on a thread whose seccomp filter allows no exec.
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
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

/// Brings interface `name` up.
pub(crate) fn set_up(name: &str) -> Result<(), NetError> {
    ip(&["link", "set", "dev", name, "up"]).map(|_| ())
}
