#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) under libFuzzer for a fixed time
# on the stable toolchain (no nightly, no ASan: LLVM's coverage instrumentation
# asked for directly, as fuzz/README.md describes), then reports per target the
# executions, the corpus size and any finding. Not part of CI (it is a
# measurement of time spent); CI replays the stored seeds in `cd fuzz && cargo test`.
#
#   scripts/fuzz-campaign.sh [--time SECS] [--minimize] [TARGET...]
#
# --time SECS   seconds per target (default 60)
# --minimize    merge each target's corpus into fuzz/seeds/<target>/ (the stored,
#               minimised corpus the CI replay reads), keeping at most 64 files
#
# Findings land in fuzz/artifacts/<target>/ (crash-*, timeout-*, oom-*); the
# smoke test replays that directory too, so `cd fuzz && cargo test` reproduces them.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs=60
minimize=0
targets=()
while [ $# -gt 0 ]; do
  case $1 in
    --time) secs=${2:?--time needs seconds}; shift 2 ;;
    --minimize) minimize=1; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    -*) echo "fuzz-campaign: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
case $secs in ''|*[!0-9]*) echo "fuzz-campaign: --time $secs is not a whole number of seconds" >&2; exit 2 ;; esac

known=$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^kvmkit-fuzz$')
if [ ${#targets[@]} -eq 0 ]; then
  # shellcheck disable=SC2206
  targets=($known)
fi
for t in "${targets[@]}"; do
  grep -qx "$t" <<<"$known" || { echo "fuzz-campaign: no target $t (known: $(echo $known))" >&2; exit 2; }
done

echo "== building ${#targets[@]} target(s) with coverage instrumentation (stable)"
RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
  -Cllvm-args=-sanitizer-coverage-pc-table \
  -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Coverflow-checks=on" \
  cargo build --release --bins --target x86_64-unknown-linux-gnu --target-dir target/stable -q
bin=target/stable/x86_64-unknown-linux-gnu/release

printf '%-24s %8s %12s %10s %8s %s\n' target secs executions exec/s corpus findings
status=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t" "seeds/$t"
  log=$(mktemp)
  before=$(ls "artifacts/$t" | wc -l)
  # -timeout: a single input running this long is a hang (a finding).
  "$bin/$t" "corpus/$t" "seeds/$t" -max_total_time="$secs" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
    -len_control=0 -print_final_stats=1 -artifact_prefix="artifacts/$t/" >"$log" 2>&1 || true
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  after=$(ls "artifacts/$t" | wc -l)
  found=$((after - before))
  [ "$found" = 0 ] || status=1
  printf '%-24s %8s %12s %10s %8s %s\n' "$t" "$secs" "${execs:-?}" "${rate:-?}" "$(ls "corpus/$t" | wc -l)" \
    "$([ "$found" = 0 ] && echo none || echo "$found new in fuzz/artifacts/$t")"
  if [ "$found" != 0 ]; then grep -m3 -E 'ERROR|panicked|deadly signal' "$log" | sed 's/^/    /'; fi
  if [ $minimize = 1 ]; then
    tmp=$(mktemp -d)
    "$bin/$t" -merge=1 "$tmp" "corpus/$t" "seeds/$t" -max_len=4096 >/dev/null 2>&1 || true
    # Keep the 64 smallest inputs that still add coverage: a small corpus CI replays in seconds.
    # (No `head` in the pipe: its early exit would fail the pipeline under pipefail.)
    mapfile -t smallest < <(find "$tmp" -type f -printf '%s %p\n' | sort -n | cut -d' ' -f2-)
    for f in "${smallest[@]:0:64}"; do
      cp "$f" "seeds/$t/$(sha1sum "$f" | cut -c1-16)"
    done
    rm -rf "$tmp"
  fi
  rm -f "$log"
done
exit $status
