//! Host networking for virtio-net: tap devices ([`tap`]) and the `--net`
//! set-up ([`config`]): existing taps, an automatic tap with a private /30,
//! or a tap on an existing bridge.

pub mod config;
pub mod tap;

pub use config::{cmdline_words, setup_net, NetConfig, NetGuard, NetMode, NetPlan};
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
