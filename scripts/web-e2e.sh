#!/usr/bin/env bash
# Browser end-to-end test of the web console: starts `kvmkit serve --web` on
# a free port with a fresh state directory and a small bench-results folder,
# then drives Debian's Chromium (headless) through web/e2e.mjs: the token,
# the create form's refusals, start, console output in xterm.js, typing (the
# bytes reach the VMM), a live chart, pause/resume, stop, the bench page.
# Screenshots go to docs/ (or $SHOTS). Needs chromium and node; without
# chromium it says so and exits 0 (nothing tested: "0 passed").
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CHROMIUM=${CHROMIUM:-$(command -v chromium || true)}
if [ -z "$CHROMIUM" ] || ! command -v node >/dev/null; then
  echo "web-e2e: chromium or node missing (apt-get install chromium nodejs npm); skipped"
  exit 0
fi
[ -d web/node_modules/playwright-core ] || (cd web && npm ci --no-audit --no-fund >/dev/null)
KVMKIT=${KVMKIT:-$ROOT/target/debug/kvmkit}
[ -x "$KVMKIT" ] || cargo build -q
SHOTS=${SHOTS:-$ROOT/docs}
WORK=$(mktemp -d /tmp/kvmkit-web-e2e.XXXXXX)
STATE=$WORK/state
BENCH=$WORK/bench
mkdir -p "$STATE" "$BENCH"
# A tiny results set in the shape `kvmkit bench` writes (results.json + charts).
cat > "$BENCH/results.json" <<'JSON'
{"schema": 1, "runs": 3, "environments": ["host", "kvmkit", "qemu"], "started_unix": 1764460800, "wall_s": 42.0,
 "workloads": {
  "primes:100000": {"table": "cpu", "label": "primes 1e5", "unit": "s", "lower_is_better": true,
    "host": {"stats": {"median": 0.081}}, "kvmkit": {"stats": {"median": 0.083}}, "qemu": {"stats": {"median": 0.085}}},
  "exits:100000": {"table": "exits", "label": "PIO exits", "unit": "us/exit", "lower_is_better": true,
    "kvmkit": {"stats": {"median": 1.9}}, "qemu": {"stats": {"median": 4.2}}}}}
JSON
cat > "$BENCH/ratios.svg" <<'SVG'
<svg xmlns="http://www.w3.org/2000/svg" width="420" height="120"><rect width="420" height="120" fill="#fff"/>
<text x="10" y="20" font-family="sans-serif" font-size="14">guest / host time</text>
<rect x="10" y="40" width="250" height="20" fill="#1f77b4"/><text x="270" y="55" font-size="12">kvmkit 1.02</text>
<rect x="10" y="70" width="262" height="20" fill="#999"/><text x="280" y="85" font-size="12">qemu 1.05</text></svg>
SVG
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$KVMKIT" serve --state-dir "$STATE" --web "127.0.0.1:$PORT" --bench-results "$BENCH" </dev/null >"$WORK/serve.log" 2>&1 &
SERVE=$!
cleanup() {
  for d in "$STATE"/*/; do
    [ -f "$d/pid" ] && "$KVMKIT" vm kill "$(basename "$d")" --state-dir "$STATE" >/dev/null 2>&1 || true
  done
  kill "$SERVE" 2>/dev/null || true
  wait "$SERVE" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
TOKEN=
for _ in $(seq 100); do
  TOKEN=$(sed -n 's/.*?token=\([0-9a-f]*\).*/\1/p' "$WORK/serve.log")
  [ -n "$TOKEN" ] && break
  sleep 0.1
done
[ -n "$TOKEN" ] || { echo "web-e2e: kvmkit serve printed no token"; cat "$WORK/serve.log"; exit 1; }
mkdir -p "$SHOTS"
cd web
KVMKIT=$KVMKIT STATE=$STATE BASE="http://127.0.0.1:$PORT" TOKEN=$TOKEN SHOTS=$SHOTS CHROMIUM=$CHROMIUM \
  timeout 150 node e2e.mjs
