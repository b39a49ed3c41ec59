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
//! It is linked static against glibc ([`static_glibc`]).

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
    println!("cargo:rerun-if-env-changed=KVMKIT_LINK");
    // Only where the symbol names were traced: an optimized build (debug
    // builds mangle and inline differently, and their size does not matter).
    if std::env::var("PROFILE").as_deref() == Ok("release") {
        static_glibc();
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
        for script in LAYOUT {
            let path = std::path::Path::new(&dir).join(script);
            if path.is_file() {
                println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", path.display());
            }
        }
    }
}

/// Links the release `kvmkit` binary as a static PIE against glibc's static
/// libraries (issue 15): only the libc functions kvmkit calls are linked, laid
/// out with the binary, where the shared libc.so.6, its loader and libgcc_s.so
/// cost ~1.7 MiB of resident pages at every start. `-C target-feature=+crt-static`
/// would say it to rustc directly, but without `--target` cargo passes it to
/// proc-macros and build scripts too, which cannot be static; so rustc links
/// as for a dynamic PIE, `-static-pie` is added, and the libraries rustc asks for
/// (`-lc -lgcc_s -lm ...`, dynamic) resolve in a folder searched first to linker
/// scripts naming the static archives. The build with `--target` and
/// `+crt-static` (the nested lab's) is left as rustc makes it.
/// `KVMKIT_LINK=dynamic` keeps the dynamic binary; so does a toolchain without
/// the static archives (libc6-dev's libc.a, gcc's libgcc_eh.a).
fn static_glibc() {
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    if features.split(',').any(|f| f == "crt-static") || std::env::var("KVMKIT_LINK").as_deref() == Ok("dynamic") {
        return;
    }
    let Some(out) = std::env::var_os("OUT_DIR") else {
        return;
    };
    // What each library rustc names for a dynamic glibc link becomes.
    let libs: [(&str, &[&str]); 7] = [
        ("c", &["libc.a", "libgcc.a", "libgcc_eh.a"]),
        ("gcc_s", &["libgcc_eh.a", "libgcc.a"]),
        ("m", &["libm.a"]),
        ("util", &["libutil.a"]),
        ("rt", &["librt.a"]),
        ("pthread", &["libpthread.a"]),
        ("dl", &["libdl.a"]),
    ];
    let dir = std::path::Path::new(&out).join("static-glibc");
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    for (name, archives) in libs {
        let mut paths = Vec::new();
        for a in archives {
            let Some(p) = archive_path(a) else {
                println!("cargo:warning=no {a} (static glibc/libgcc): kvmkit is linked dynamically");
                return;
            };
            paths.push(p);
        }
        let script = format!(
            "/* kvmkit's build.rs: -l{name} is static */\nGROUP({})\n",
            paths.join(" ")
        );
        if std::fs::write(dir.join(format!("lib{name}.so")), script).is_err() {
            return;
        }
    }
    println!("cargo:rustc-link-arg-bin=kvmkit=-static-pie");
    println!("cargo:rustc-link-arg-bin=kvmkit=-L{}", dir.display());
}

/// The absolute path of a static archive as the C compiler (rustc's linker
/// driver) finds it, or None when it has none.
fn archive_path(name: &str) -> Option<String> {
    let out = Command::new("cc")
        .arg(format!("-print-file-name={name}"))
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (path.starts_with('/') && std::path::Path::new(&path).is_file()).then_some(path)
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
