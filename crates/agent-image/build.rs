//! Builds the guest agent in `agent/` with a nested
//! `cargo build --release --offline --locked` (it has no registry dependencies)
//! and leaves the static binary at `$OUT_DIR/kvmkit-agent`.
//!
//! The agent is its own workspace with its own `.cargo/config.toml` (target,
//! `+crt-static`), so everything the outer build would leak into a nested
//! cargo (rustflags, wrappers such as clippy-driver, the target directory,
//! profile overrides) is removed from its environment (the same as
//! crates/guest-image does for guest/).

use std::env;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Triple named in agent/.cargo/config.toml.
const AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";

/// `CARGO_*` variables the nested cargo may keep: where the cargo home is,
/// the jobserver, and network/registry settings.
fn keep_cargo_var(name: &str) -> bool {
    name == "CARGO_HOME"
        || name == "CARGO_MAKEFLAGS"
        || name.starts_with("CARGO_NET_")
        || name.starts_with("CARGO_HTTP_")
        || name.starts_with("CARGO_TERM_")
}

/// Other variables that would change the nested build.
const REMOVE: &[&str] = &[
    "RUSTFLAGS",
    "RUSTDOCFLAGS",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTC_LINKER",
    "TARGET",
    "HOST",
    "OUT_DIR",
    "PROFILE",
    "OPT_LEVEL",
    "DEBUG",
    "NUM_JOBS",
];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest_dir.join("../..");
    let agent = root.join("agent");
    for path in [
        "agent/src",
        "agent/Cargo.toml",
        "agent/Cargo.lock",
        "agent/.cargo/config.toml",
        "crates/agent-proto/src",
        "crates/agent-proto/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let target_dir = out_dir.join("agent-target");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());

    let mut cmd = Command::new(cargo);
    cmd.current_dir(&agent)
        .args(["build", "--release", "--offline"])
        .arg("--target-dir")
        .arg(&target_dir);
    if agent.join("Cargo.lock").exists() {
        cmd.arg("--locked");
    }
    clean_env(&mut cmd);

    let output = cmd.output().expect("failed to run cargo for agent/");
    if !output.status.success() {
        panic!(
            "building agent/ failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let built = target_dir.join(AGENT_TARGET).join("release").join("kvmkit-agent");
    copy(&built, &out_dir.join("kvmkit-agent"));
}

/// Removes what the outer build would leak into a nested cargo.
fn clean_env(cmd: &mut Command) {
    for (name, _) in env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if (name.starts_with("CARGO_") && !keep_cargo_var(name)) || name.starts_with("__CARGO") {
            cmd.env_remove(name);
        }
    }
    for name in REMOVE {
        cmd.env_remove(OsStr::new(name));
    }
}

fn copy(from: &Path, to: &Path) {
    if let Err(e) = std::fs::copy(from, to) {
        panic!("copying {} to {}: {e}", from.display(), to.display());
    }
}
