//! A nested `cargo build` of one of the workspace's own sub-workspaces
//! (`guest/`, `agent/`), shared by the build scripts of `kvmkit-guest-image`
//! and `kvmkit-agent-image`.
//!
//! Each sub-workspace has its own `.cargo/config.toml` (target, codegen
//! flags), so everything the outer build would leak into a nested cargo
//! (rustflags, wrappers such as clippy-driver, the target directory, profile
//! overrides) is removed from its environment.

use std::env;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Triple named in the sub-workspaces' `.cargo/config.toml`.
const TARGET: &str = "x86_64-unknown-linux-gnu";

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

/// What to build.
pub struct Nested<'a> {
    /// The sub-workspace, relative to the repository root (`guest`).
    pub dir: &'a str,
    /// Paths (relative to the root) whose change rebuilds it.
    pub watch: &'a [&'a str],
    /// The binary it builds; left at `$OUT_DIR/<bin>`.
    pub bin: &'a str,
    /// Run `cargo fetch` first (for registry dependencies on a fresh machine).
    pub fetch: bool,
}

/// Builds `n` with `cargo build --release --offline --locked` and copies
/// its binary to `$OUT_DIR`. Panics (the build script's way to fail) with
/// the nested cargo's output.
pub fn build(n: &Nested<'_>) {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest_dir.join("../..");
    let dir = root.join(n.dir);
    for path in n.watch {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let target_dir = out_dir.join(format!("{}-target", n.dir));
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let locked = dir.join("Cargo.lock").exists();

    if n.fetch {
        // Registry dependencies must be in the cargo cache for the offline build:
        // fetch them first (a no-op when they are; a failure, e.g. no network, is
        // left to the offline build to report).
        let mut fetch = Command::new(&cargo);
        fetch.current_dir(&dir).args(["fetch", "--quiet"]);
        if locked {
            fetch.arg("--locked");
        }
        clean_env(&mut fetch);
        let _ = fetch.output();
    }

    let mut cmd = Command::new(cargo);
    cmd.current_dir(&dir)
        .args(["build", "--release", "--offline"])
        .arg("--target-dir")
        .arg(&target_dir);
    if locked {
        cmd.arg("--locked");
    }
    clean_env(&mut cmd);
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("failed to run cargo for {}/: {e}", n.dir));
    if !output.status.success() {
        panic!(
            "building {}/ failed ({}):\n{}{}",
            n.dir,
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let built = target_dir.join(TARGET).join("release").join(n.bin);
    copy(&built, &out_dir.join(n.bin));
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
