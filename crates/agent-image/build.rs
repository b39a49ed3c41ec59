//! Builds the guest agent in `agent/` with a nested
//! `cargo build --release --offline --locked` (it has no registry dependencies)
//! and leaves the static binary at `$OUT_DIR/kvmkit-agent`, the same way
//! crates/guest-image builds guest/ (the shared `nested_build.rs`).

#[path = "../guest-image/nested_build.rs"]
mod nested_build;

fn main() {
    nested_build::build(&nested_build::Nested {
        dir: "agent",
        watch: &[
            "agent/src",
            "agent/Cargo.toml",
            "agent/Cargo.lock",
            "agent/.cargo/config.toml",
            "crates/agent-proto/src",
            "crates/agent-proto/Cargo.toml",
            "crates/guest-image/nested_build.rs",
        ],
        bin: "kvmkit-agent",
        fetch: false,
    });
}
