//! The host end of a virtio-net NIC: a tap device ([`tap`]), the ring that
//! writes bursts of frames to it in one syscall ([`tx_ring`]), the one that
//! reads batches of frames from it ([`rx_ring`]), and the error
//! type for opening one. The VMM only receives taps (by name or pre-opened,
//! see [`crate::MachineOptions::taps`]); deciding which tap, with what
//! addresses or on which bridge (`--net`), is host-network policy in the
//! `kvmkit-hostnet` crate.

#[cfg(test)]
mod ring_tests;
pub mod rx_ring;
pub mod tap;
pub mod tx_ring;

pub use tap::Tap;

/// Why networking could not be set up. Every message says what failed and,
/// where there is one, what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The `--net` spec is malformed.
    #[error("--net: {0}")]
    Config(String),
    /// Missing privilege (CAP_NET_ADMIN).
    #[error("{0}")]
    Permission(String),
    /// The tap is in use by another process.
    #[error("{0}")]
    Busy(String),
    /// The bridge does not exist or is not a bridge.
    #[error("{0}")]
    Bridge(String),
    /// An address is already in use in this network namespace.
    #[error("{0}")]
    AddressInUse(String),
    /// Anything else the host refused.
    #[error("{0}")]
    Host(String),
}
