//! The `--net` option and the host side of each NIC: the policy above the
//! VMM, which only receives a tap ([`kvmkit_vmm::net::Tap`]).
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
//!
//! One file per job: `spec` parses `--net`, `addr` picks addresses, `ip`
//! runs iproute2, `setup` opens the tap and configures the host side (and
//! undoes it), `cmdline` tells the guest.

mod addr;
mod cmdline;
mod ip;
mod setup;
mod spec;

use std::net::Ipv4Addr;

pub use cmdline::cmdline_words;
pub use ip::{link_exists, link_packets};
pub use kvmkit_vmm::net::NetError;
pub use setup::{setup_net, NetGuard, NetPlan};
pub use spec::{NetConfig, NetMode};

/// Prefix length used by `auto`.
pub const AUTO_PREFIX: u8 = 30;
/// First network `auto` tries (10.0.2.0/30: host .1, guest .2).
pub const AUTO_BASE: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 0);
/// Interface name pattern for taps kvmkit creates (the kernel fills in %d).
pub const AUTO_TAP_PATTERN: &str = "kvmkit%d";
