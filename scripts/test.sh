#!/usr/bin/env bash
# The project's test command (README): unit tests, then integration tests that
# boot real guests on /dev/kvm, including Debian's stock kernel.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-debian-kernel.sh >/dev/null
cargo test --workspace --no-fail-fast -- --test-threads=2
