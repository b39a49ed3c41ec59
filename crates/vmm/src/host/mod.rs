//! Facts about the host: can it run VMs, and with what.

pub mod check;
pub mod kvm;
pub mod random;
