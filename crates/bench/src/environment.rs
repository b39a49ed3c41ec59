//! Where a workload runs: the bare host, a kvmkit guest, a QEMU guest.

use clap::ValueEnum;
use serde::Serialize;

/// Where a workload runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Env {
    /// The bare host (same workload code, in-process threads).
    Host,
    /// kvmkit's test guest under kvmkit.
    Kvmkit,
    /// kvmkit's test guest under QEMU (microvm, KVM).
    Qemu,
}

impl Env {
    /// Every environment, in column order.
    pub const ALL: [Env; 3] = [Env::Host, Env::Kvmkit, Env::Qemu];

    /// Lower-case name (JSON key, column header).
    pub fn name(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Kvmkit => "kvmkit",
            Self::Qemu => "qemu",
        }
    }

    /// Whether this is a guest (has a guest/host ratio).
    pub fn is_guest(self) -> bool {
        self != Self::Host
    }
}
