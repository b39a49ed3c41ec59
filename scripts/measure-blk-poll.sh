#!/bin/bash
# Interleaved rounds of a kvmkit-guest disk workload (smallio by default) under each
# `--disk ...,poll=` mode, then the same workload on the host; one line per run with the
# guest's result, kicks (notifications the worker read) per request, interrupts, requests
# found by polling and the worker thread's CPU time per request (from the device's
# debug line at its end). Env: K (kvmkit binary), N, ROUNDS, MODES, WL, DIR.
set -u
K=$(readlink -f "${K:-$(dirname "$0")/../target/release/kvmkit}")
N=${N:-3000}
ROUNDS=${ROUNDS:-3}
MODES=${MODES:-"off auto 50 200"}
WL=${WL:-smallio:$N}
if [ -z "${DIR:-}" ]; then DIR=$(mktemp -d); trap 'rm -rf "$DIR"' EXIT; fi
cd "$DIR"
truncate -s 64M m.img
for r in $(seq 1 $ROUNDS); do
  for m in $MODES; do
    out=$($K run --guest --no-stdin --workload $WL --disk path=$DIR/m.img,poll=$m --level Debug 2>&1 </dev/null)
    res=$(echo "$out" | grep -oE "(ops_per_s|time_ns|write_ns|read_ns)=[0-9]+" | tr '\n' ' ')
    ends=$(echo "$out" | grep -oE "[0-9]+ requests, [0-9]+ kicks, [0-9]+ interrupts, [0-9]+ polled, [0-9]+ us worker CPU")
    [ -z "$ends" ] && { echo "round=$r poll=$m: no device line (failed?)"; continue; }
    set -- $(echo "$ends" | grep -oE "[0-9]+")
    req=$1; kicks=$2; irq=$3; polled=$4; cpu=$5
    kpr=$(echo "scale=3; $kicks/$req" | bc); cpr=$(echo "scale=1; $cpu/$req" | bc)
    echo "round=$r poll=$m $res req=$req kicks/req=$kpr irq=$irq polled=$polled cpu_us/req=$cpr load=$(cut -d' ' -f1 /proc/loadavg)"
  done
done
for r in $(seq 1 $ROUNDS); do
  [ "${WL%%:*}" = smallio ] && $K host --workload $WL 2>&1 | grep -oE "ops_per_s=[0-9]+|time_ns=[0-9]+" | tr '\n' ' ' && echo " host round=$r"
done
