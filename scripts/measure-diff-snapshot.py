#!/usr/bin/env python3
"""Diff snapshots: their size and create time against a Full snapshot of the same VM, and what
dirty-page tracking costs the guest's memory writes.

Usage:
    scripts/measure-diff-snapshot.py --kvmkit target/release/kvmkit [--firecracker PATH]
        [--sizes 256,2048] [--rounds 5] [--idle-ms 200] [--memtest-mib 16] [--memtest-rounds 4]

Part 1, per round, guest size and VMM (kvmkit in its Firecracker drop-in mode, or Firecracker,
both over the same API, booting kvmkit's test guest as PVH with `kvmkit.workload=ticks:1`):
  PUT /machine-config {1 vCPU, SIZE MiB, track_dirty_pages: true}, boot, wait for `tick=3`;
  pause, Full snapshot (send -> 204, ms; the memory file's MiB on disk); resume, let the guest
  print ticks for --idle-ms (little memory dirtied: a tick line, its stack, the serial path);
  pause, Diff snapshot (send -> 204, ms; MiB on disk); SIGKILL.
Part 2 (kvmkit only): `kvmkit run --guest --workload memtest:MIB` with and without
  --track-dirty-pages, alternating, --memtest-rounds each; the guest's own reported seconds.
Output: medians, min and max. Python 3 standard library only; the VMM handling and the boot are
scripts/kvmkit_api.py's (with scripts/measure-api.py's HTTP client).
"""
import argparse
import os
import re
import statistics
import subprocess
import tempfile
import time

import kvmkit_api

ma = kvmkit_api.ma


def disk_kib(path):
    return os.stat(path).st_blocks * 512 / 2**10


def snapshot(c, kind, state, mem):
    for p in (state, mem):
        if os.path.exists(p):
            os.unlink(p)
    return kvmkit_api.create_snapshot(c, kind, state, mem), disk_kib(mem)


def one(name, argv, size, guest, args, tmp, idle_ms, timeout):
    sock = os.path.join(tmp, f"{name}.sock")
    machine = {"vcpu_count": 1, "mem_size_mib": size, "track_dirty_pages": True}
    s = {}
    with kvmkit_api.paused_vm(argv + ["--api-sock", sock], sock, os.path.join(tmp, f"{name}.err"), machine, guest,
                              args, timeout) as (_, c):
        s["full_ms"], s["full_disk_kib"] = snapshot(c, "Full", os.path.join(tmp, "f.state"),
                                                    os.path.join(tmp, "f.mem"))
        ma.api(c, "PATCH", "/vm", {"state": "Resumed"})
        time.sleep(idle_ms / 1e3)
        ma.api(c, "PATCH", "/vm", {"state": "Paused"})
        s["diff_ms"], s["diff_disk_kib"] = snapshot(c, "Diff", os.path.join(tmp, "d.state"),
                                                    os.path.join(tmp, "d.mem"))
    for p in ("f.state", "f.mem", "d.state", "d.mem"):
        if os.path.exists(os.path.join(tmp, p)):
            os.unlink(os.path.join(tmp, p))
    return s


def memtest(kvmkit, mib, track):
    argv = [kvmkit, "run", "--no-stdin", "--guest", "--workload", f"memtest:{mib}", "--memory", str(mib + 64)]
    if track:
        argv.append("--track-dirty-pages")
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    m = re.search(r"memtest:.*?errors=(\d+) time_ns=(\d+)", r.stdout)
    if r.returncode != 0 or not m:
        raise ma.Failure(f"memtest run failed ({r.returncode}):\n{r.stdout[-2000:]}")
    if int(m.group(1)) != 0:
        raise ma.Failure(f"memtest found errors:\n{r.stdout[-2000:]}")
    return int(m.group(2)) / 1e9


def line(label, xs):
    return f"  {label:<34} median {statistics.median(xs):10.2f}  min {min(xs):10.2f}  max {max(xs):10.2f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kvmkit", required=True)
    ap.add_argument("--firecracker")
    ap.add_argument("--sizes", default="256,2048")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--idle-ms", type=float, default=200)
    ap.add_argument("--memtest-mib", type=int, default=16)
    ap.add_argument("--memtest-rounds", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=120)
    cfg = ap.parse_args()
    kvmkit = os.path.abspath(os.path.expanduser(cfg.kvmkit))
    tmp = tempfile.mkdtemp(prefix="measure-diff-")
    vmms = [("kvmkit", [kvmkit_api.drop_in(kvmkit, tmp)])]
    if cfg.firecracker:
        vmms.append(("firecracker", [os.path.abspath(os.path.expanduser(cfg.firecracker))]))
    guest = kvmkit_api.test_guest(kvmkit, tmp)
    args = kvmkit_api.TICKS_BOOT_ARGS
    print(f"load average at start: {os.getloadavg()}")
    sizes = [int(x) for x in cfg.sizes.split(",")]
    samples = {(n, s): [] for n, _ in vmms for s in sizes}
    try:
        for rnd in range(cfg.rounds):
            for size in sizes:
                for name, argv in vmms:
                    r = one(name, argv, size, guest, args, tmp, cfg.idle_ms, cfg.timeout)
                    samples[(name, size)].append(r)
                    print(f"round {rnd + 1} {size} MiB {name}: " + " ".join(f"{k}={v:.2f}" for k, v in r.items()),
                          flush=True)
    finally:
        ma.stop_all()
    for (name, size), rs in samples.items():
        print(f"\n== {name}, {size} MiB guest, {len(rs)} rounds ==")
        for key in ("full_ms", "diff_ms", "full_disk_kib", "diff_disk_kib"):
            print(line(key, [r[key] for r in rs]))
    if cfg.memtest_rounds:
        times = {False: [], True: []}
        for rnd in range(cfg.memtest_rounds):
            for track in ((False, True) if rnd % 2 == 0 else (True, False)):
                t = memtest(kvmkit, cfg.memtest_mib, track)
                times[track].append(t)
                print(f"memtest:{cfg.memtest_mib} round {rnd + 1} tracking={'on' if track else 'off'}: {t:.3f} s",
                      flush=True)
        print(f"\n== memtest:{cfg.memtest_mib}, guest-reported seconds ==")
        print(line("tracking off", times[False]))
        print(line("tracking on", times[True]))
        ratios = [b / a for a, b in zip(times[False], times[True])]
        print(f"  on/off paired ratio: median {statistics.median(ratios):.3f}")
    subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    try:
        main()
    except ma.Failure as e:
        ma.stop_all()
        raise SystemExit(f"measure-diff-snapshot: {e}")
