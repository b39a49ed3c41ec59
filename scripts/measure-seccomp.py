#!/usr/bin/env python3
"""What kvmkit's seccomp filters cost: the same runs with filters on (the
default) and off (--no-seccomp), interleaved round by round (the order flips
each round so drift falls on both), medians and the on/off ratio.

Measured per run, by kvmkit's own guest:
  - PIO exit round trip (`exits:N`, ns per exit): each exit is one KVM_RUN
    ioctl through the vCPU's filter;
  - MMIO exit round trip (`mmio-exits:N`);
  - start -> guest ready (`--boot-time`, us): threads installing their filters;
  - virtio-blk sequential write and read (`blk-seq:MIB` on a scratch image,
    MB/s): every request goes through a device worker's filter (pread/pwrite,
    fdatasync, eventfd reads and writes);
  - virtio-net transmit (`net-tx:FRAMES:1400` over `--net auto`, Mbit/s;
    needs root for the tap): every frame is a write to the tap under the
    worker's filter.

Usage: scripts/measure-seccomp.py [--rounds R] [--exits N] [--kvmkit PATH]
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile


def blk(kvmkit, extra, disk, mib):
    cmd = [kvmkit, "run", "--guest", "--no-stdin", "--workload", f"blk-seq:{mib}", "--disk", disk] + extra
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    m = re.search(r"write_MBps=([\d.]+) read_MBps=([\d.]+)", p.stdout)
    if p.returncode != 0 or not m:
        sys.exit(f"measure-seccomp: {' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()[-300:]}")
    return float(m.group(1)), float(m.group(2))


def net(kvmkit, extra, frames):
    cmd = [kvmkit, "run", "--guest", "--no-stdin", "--workload", f"net-tx:{frames}:1400", "--net", "auto"] + extra
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    m = re.search(r"mbit_per_s=([\d.]+)", p.stdout)
    if p.returncode != 0 or not m:
        sys.exit(f"measure-seccomp: {' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()[-300:]}")
    return float(m.group(1))


def run(kvmkit, extra, workload):
    cmd = [kvmkit, "run", "--guest", "--no-stdin", "--boot-time", "--workload", workload] + extra
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        sys.exit(f"measure-seccomp: {' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()[-300:]}")
    ns = re.search(r"ns_per_exit=(\d+)", p.stdout)
    ready = re.search(r"-> guest ready (\d+) us", p.stderr)
    return int(ns.group(1)) if ns else None, int(ready.group(1)) if ready else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--exits", type=int, default=20000)
    ap.add_argument("--kvmkit", default="target/release/kvmkit")
    ap.add_argument("--blk-mib", type=int, default=64, help="MiB per blk-seq run (0: skip)")
    ap.add_argument("--net-frames", type=int, default=20000, help="frames per net-tx run (0: skip)")
    a = ap.parse_args()
    modes = {"on": [], "off": ["--no-seccomp"]}
    data = {(m, k): [] for m in modes for k in ("pio", "mmio", "ready", "blk_w", "blk_r", "net_tx")}
    disk = tempfile.NamedTemporaryFile(prefix="kvmkit-seccomp-", suffix=".img", delete=False).name
    os.truncate(disk, max(a.blk_mib, 1) * 2 << 20)
    for r in range(a.rounds):
        order = list(modes) if r % 2 == 0 else list(reversed(modes))
        for m in order:
            pio, ready = run(a.kvmkit, modes[m], f"exits:{a.exits}")
            mmio, _ = run(a.kvmkit, modes[m], f"mmio-exits:{a.exits}")
            data[(m, "pio")].append(pio)
            data[(m, "mmio")].append(mmio)
            data[(m, "ready")].append(ready)
            if a.blk_mib:
                w, rd = blk(a.kvmkit, modes[m], disk, a.blk_mib)
                data[(m, "blk_w")].append(w)
                data[(m, "blk_r")].append(rd)
            if a.net_frames:
                data[(m, "net_tx")].append(net(a.kvmkit, modes[m], a.net_frames))
        print(f"round {r + 1}/{a.rounds}", file=sys.stderr)
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(f"seccomp on vs off, {a.rounds} interleaved rounds, {a.exits} exits per run, load {load} at the end")
    print(f"{'measure':<28}{'on (median)':>14}{'off (median)':>14}{'on/off':>9}")
    os.unlink(disk)
    rows = [("pio", "PIO exit round trip", "ns"), ("mmio", "MMIO exit round trip", "ns"),
            ("ready", "start -> guest ready", "us")]
    if a.blk_mib:
        rows += [("blk_w", "virtio-blk seq write", "MB/s"), ("blk_r", "virtio-blk seq read", "MB/s")]
    if a.net_frames:
        rows += [("net_tx", "virtio-net transmit", "Mbit/s")]
    for k, label, unit in rows:
        on = statistics.median(v for v in data[("on", k)] if v is not None)
        off = statistics.median(v for v in data[("off", k)] if v is not None)
        print(f"{label + ' (' + unit + ')':<28}{on:>14.0f}{off:>14.0f}{on / off:>9.3f}")


if __name__ == "__main__":
    main()
