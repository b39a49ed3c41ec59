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

Two builds side by side (e.g. before and after a change to the filters):
give --kvmkit two or three times; each is measured on and off in every
round, and the table has a column per build and mode. Each exits run's CPU
time (user + system) is reported too: on a loaded host it shows the
filters' set-up cost better than wall time.

Usage: scripts/measure-seccomp.py [--rounds R] [--exits N] [--kvmkit PATH [--kvmkit PATH2]]
                                  [--only pio,mmio,ready,blk,net]
"""
import argparse
import os
import re
import resource
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


def cpu_s():
    """CPU time (user + system) of the finished children so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def net(kvmkit, extra, frames):
    """Mbit/s, and the kvmkit process's CPU time per frame (ns): less
    sensitive than throughput to other load on a shared host."""
    cmd = [kvmkit, "run", "--guest", "--no-stdin", "--workload", f"net-tx:{frames}:1400", "--net", "auto"] + extra
    before = cpu_s()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    cpu = cpu_s() - before
    m = re.search(r"mbit_per_s=([\d.]+)", p.stdout)
    if p.returncode != 0 or not m:
        sys.exit(f"measure-seccomp: {' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()[-300:]}")
    return float(m.group(1)), cpu * 1e9 / frames


def run(kvmkit, extra, workload):
    """ns per exit, start -> guest ready (us), and the run's CPU time (us)."""
    cmd = [kvmkit, "run", "--guest", "--no-stdin", "--boot-time", "--workload", workload] + extra
    before = cpu_s()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    cpu = (cpu_s() - before) * 1e6
    if p.returncode != 0:
        sys.exit(f"measure-seccomp: {' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()[-300:]}")
    ns = re.search(r"ns_per_exit=(\d+)", p.stdout)
    ready = re.search(r"-> guest ready (\d+) us", p.stderr)
    return int(ns.group(1)) if ns else None, int(ready.group(1)) if ready else None, cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--exits", type=int, default=20000)
    ap.add_argument("--kvmkit", action="append", help="the binary (default target/release/kvmkit); twice to compare two")
    ap.add_argument("--blk-mib", type=int, default=64, help="MiB per blk-seq run (0: skip)")
    ap.add_argument("--net-frames", type=int, default=20000, help="frames per net-tx run (0: skip)")
    ap.add_argument("--only", default="pio,mmio,ready,blk,net",
                    help="what to measure (ready comes from the pio and mmio runs)")
    a = ap.parse_args()
    only = set(a.only.split(","))
    if "blk" not in only:
        a.blk_mib = 0
    if "net" not in only:
        a.net_frames = 0
    bins = a.kvmkit or ["target/release/kvmkit"]
    if len(bins) > 3:
        sys.exit("measure-seccomp: at most three --kvmkit")
    # A mode: (binary, extra arguments); labelled "on"/"off", or "A on" ... with two binaries.
    modes = {}
    for i, b in enumerate(bins):
        tag = "" if len(bins) == 1 else "ABC"[i] + " "
        modes[tag + "on"] = (b, [])
        modes[tag + "off"] = (b, ["--no-seccomp"])
    data = {(m, k): [] for m in modes for k in ("pio", "mmio", "ready", "cpu", "blk_w", "blk_r", "net_tx", "net_cpu")}
    disk = tempfile.NamedTemporaryFile(prefix="kvmkit-seccomp-", suffix=".img", delete=False).name
    os.truncate(disk, max(a.blk_mib, 1) * 2 << 20)
    for r in range(a.rounds):
        order = list(modes) if r % 2 == 0 else list(reversed(modes))
        for m in order:
            kvmkit, extra = modes[m]
            if only & {"pio", "ready"}:
                pio, ready, cpu = run(kvmkit, extra, f"exits:{a.exits}")
                data[(m, "pio")].append(pio)
                data[(m, "ready")].append(ready)
                data[(m, "cpu")].append(cpu)
            if only & {"mmio", "ready"}:
                mmio, ready, cpu = run(kvmkit, extra, f"mmio-exits:{a.exits}")
                data[(m, "mmio")].append(mmio)
                data[(m, "ready")].append(ready)
                data[(m, "cpu")].append(cpu)
            if a.blk_mib:
                w, rd = blk(kvmkit, extra, disk, a.blk_mib)
                data[(m, "blk_w")].append(w)
                data[(m, "blk_r")].append(rd)
            if a.net_frames:
                mbit, cpu = net(kvmkit, extra, a.net_frames)
                data[(m, "net_tx")].append(mbit)
                data[(m, "net_cpu")].append(cpu)
        print(f"round {r + 1}/{a.rounds}", file=sys.stderr)
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(f"seccomp on vs off, {a.rounds} interleaved rounds, {a.exits} exits per run, load {load} at the end")
    for i, b in enumerate(bins if len(bins) > 1 else []):
        print(f"{'ABC'[i]}: {b}")
    ratios = [m for m in modes if m.endswith("on")]
    print(f"{'measure':<28}" + "".join(f"{m + ' (median)':>16}" for m in modes)
          + "".join(f"{m[:-2] + 'on/off':>11}" for m in ratios))
    os.unlink(disk)
    rows = [(k, label, unit) for k, label, unit in
            [("pio", "PIO exit round trip", "ns"), ("mmio", "MMIO exit round trip", "ns"),
             ("ready", "start -> guest ready", "us")] if k in only]
    if only & {"pio", "mmio", "ready"}:
        # Less sensitive to other load than wall time: what the filters'
        # set-up costs in CPU shows as the on-off difference.
        rows += [("cpu", "CPU per exits run", "us")]
    if a.blk_mib:
        rows += [("blk_w", "virtio-blk seq write", "MB/s"), ("blk_r", "virtio-blk seq read", "MB/s")]
    if a.net_frames:
        rows += [("net_tx", "virtio-net transmit", "Mbit/s"), ("net_cpu", "net-tx CPU per frame", "ns")]
    if "ready" in only:
        # Other load only ever adds to a start-up time: the minimum shows
        # what the filters themselves cost.
        rows.insert([r[0] for r in rows].index("ready") + 1, ("ready_min", "  the same, minimum", "us"))
    for k, label, unit in rows:
        pick = min if k.endswith("_min") else statistics.median
        med = {m: pick(v for v in data[(m, k.removesuffix("_min"))] if v is not None) for m in modes}
        print(f"{label + ' (' + unit + ')':<28}" + "".join(f"{med[m]:>16.0f}" for m in modes)
              + "".join(f"{med[m] / med[m[:-2] + 'off']:>11.3f}" for m in ratios))


if __name__ == "__main__":
    main()
