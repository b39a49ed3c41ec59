//! Link options for the `kvmkit` binary (issue 15, a smaller VMM).
//!
//! `-z pack-relative-relocs` stores the position-independent binary's
//! relative relocations as DT_RELR (a few KiB) instead of `.rela.dyn`
//! (~190 KiB that the dynamic loader reads, every page of it, at each
//! start). It needs GNU ld >= 2.38 and glibc >= 2.36; older linkers warn
//! and ignore it, so it is only passed when `ld -v` says it is new enough.
//! Measured in docs/architecture.md ("Where the peak RSS goes").
//!
//! A release link also gets `link/run-path.ld` (written by
//! `scripts/layout-run-path.py`): the functions `kvmkit run` executes,
//! gathered into one output section so that a run touches few text pages,
//! and `link/cold-data.ld`, which moves read-only data a run never reads
//! (embedded guest images, exception tables) after the data it does read.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    for script in LAYOUT {
        println!("cargo:rerun-if-changed={script}");
    }
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux")
        || std::env::var("CARGO_CFG_TARGET_ENV").as_deref() != Ok("gnu")
    {
        return;
    }
    if gnu_ld_at_least(2, 38) && glibc_at_least(2, 36) {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    // Only where the symbol names were traced: an optimized build (debug
    // builds mangle and inline differently, and their size does not matter).
    if std::env::var("PROFILE").as_deref() == Ok("release") {
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
        for script in LAYOUT {
            let path = std::path::Path::new(&dir).join(script);
            if path.is_file() {
                println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", path.display());
            }
        }
    }
}

/// The linker script fragments of the release binary's layout (`INSERT`
/// commands: the default layout stays, these sections move): `kvmkit run`'s
/// functions together, and read-only data a run never reads out of the way.
const LAYOUT: [&str; 2] = ["link/run-path.ld", "link/cold-data.ld"];

/// Whether the build host's glibc (`getconf GNU_LIBC_VERSION`, which the
/// binary is linked against) is `major.minor` or newer: older ones cannot
/// load DT_RELR.
fn glibc_at_least(major: u32, minor: u32) -> bool {
    let Ok(out) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else {
        return false;
    };
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .last()
        .is_some_and(|v| version_at_least(v, major, minor))
}

/// Whether `ld -v` reports GNU ld `major.minor` or newer.
fn gnu_ld_at_least(major: u32, minor: u32) -> bool {
    let Ok(out) = Command::new("ld").arg("-v").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    if !text.starts_with("GNU ld") {
        return false;
    }
    text.split_whitespace()
        .last()
        .is_some_and(|v| version_at_least(v, major, minor))
}

/// Whether a dotted version `A.B[.C]` is at least `major.minor`.
fn version_at_least(version: &str, major: u32, minor: u32) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
}
