#!/usr/bin/env bash
# The project's test command (README): unit tests, then integration tests that
# boot real guests on /dev/kvm, including Debian's stock kernel.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian's stock kernel and a busybox initramfs into the cache (once; tests boot them).
cargo run -q -- image fetch >/dev/null
cargo test --workspace --no-fail-fast -- --test-threads=2
