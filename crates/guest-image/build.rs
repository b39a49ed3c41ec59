//! Builds the freestanding guest in `guest/` with a nested
//! `cargo fetch --locked` (so a fresh machine gets the guest's registry crates)
//! and `cargo build --release --offline --locked`, and leaves the ELF at
//! `$OUT_DIR/kvmkit-guest` (see `nested_build.rs`).

mod nested_build;

fn main() {
    nested_build::build(&nested_build::Nested {
        dir: "guest",
        watch: &[
            "guest/src",
            "guest/build.rs",
            "guest/guest.ld",
            "guest/Cargo.toml",
            "guest/Cargo.lock",
            "guest/.cargo/config.toml",
            "crates/workloads/src",
            "crates/workloads/Cargo.toml",
            "crates/guest-abi/src",
            "crates/guest-abi/Cargo.toml",
            "crates/guest-image/nested_build.rs",
        ],
        bin: "kvmkit-guest",
        fetch: true,
    });
}
