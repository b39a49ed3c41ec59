//! kvmkit's guest agent for Linux guests, embedded as a static x86-64 binary.
//!
//! `build.rs` builds `agent/` (a separate cargo workspace) with a nested
//! `cargo build --release`, statically linked. `kvmkit run --linux` puts it into
//! the guest's initramfs as [`AGENT_PATH`]; the guest's `/init` starts it when
//! the kernel command line has `kvmkit.agent=PORT`. Its protocol is in
//! `kvmkit-agent-proto` and docs/vsock.md.

/// The agent: a static (no interpreter, no shared libraries) x86-64 ELF executable.
pub static AGENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kvmkit-agent"));

/// Where the agent lives in the guest's initramfs.
pub const AGENT_PATH: &str = "/bin/kvmkit-agent";

#[cfg(test)]
mod tests;
