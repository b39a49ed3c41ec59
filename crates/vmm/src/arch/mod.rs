//! Architecture-specific code (kvmkit targets x86_64).

pub mod x86_64;
