#!/usr/bin/env python3
"""Snapshot and restore, side by side: kvmkit vs Firecracker, in interleaved rounds, both booting
kvmkit's own test guest (PVH) and both driven over the same Firecracker API, measured the same way.

Usage:
    scripts/measure-snapshot.py --vmm kvmkit=target/release/kvmkit \\
        --vmm firecracker=~/.cache/kvmkit-peers/bin/firecracker [--sizes 256,2048] [--rounds 5]
        [--json FILE]

Per round, guest size and VMM (the VMM order rotates from round to round):
  1. spawn `BIN --api-sock S` (kvmkit as a symlink named firecracker: its drop-in mode), PUT
     /machine-config {1 vCPU, SIZE MiB}, /boot-source {the guest, `kvmkit.workload=ticks:1`},
     InstanceStart; wait for the guest's `tick=3` (it prints `tick=N` each 1 ms of TSC time).
  2. PATCH /vm Paused, then PUT /snapshot/create {Full, state file, memory file}: create = the
     time from sending the request to its 204 (wall). Sizes: the state file's bytes, the memory
     file's apparent bytes and the disk blocks it takes (`du`: kvmkit leaves zero pages as holes).
  3. SIGKILL that VMM.
  4. restore: spawn a fresh `BIN --api-sock S2` (t0 = just before the spawn), poll until the
     socket answers GET /, PUT /snapshot/load {snapshot_path, mem_backend {File, memory file},
     resume_vm: true}. restore = t0 -> the first `tick=` line the restored guest prints on the
     VMM's stdout (the guest's first line after its next instruction ran: its TSC went on while it
     was saved, so its 1 ms interval has passed and it prints at once). Also recorded: t0 -> API
     ready and the load request's own time (send -> 204).
Output: median/min/max per VMM and size, and per-round paired ratios kvmkit/firecracker. The
host may be loaded by other work: use several rounds and read the medians.
Python 3 standard library only; the VMM handling and the boot are scripts/kvmkit_api.py's (with
scripts/measure-api.py's HTTP client).
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

import kvmkit_api

ma = kvmkit_api.ma
now = ma.now

METRICS = [
    ("create_ms", "PUT /snapshot/create send -> 204, ms"),
    ("state_bytes", "state file, bytes"),
    ("mem_apparent_mib", "memory file, apparent MiB"),
    ("mem_disk_mib", "memory file, MiB on disk (du)"),
    ("api_ready_ms", "restore: spawn -> API answers, ms"),
    ("load_ms", "restore: PUT /snapshot/load send -> 204, ms"),
    ("restore_ms", "restore: spawn -> the guest's first tick= line, ms"),
]


def tsc_khz(kvmkit):
    """The TSC rate kvmkit hands its guest, from one `idle` run (0 if unknown); given to both
    VMMs' guests (PIT calibration is unreliable on a loaded host)."""
    r = subprocess.run([kvmkit, "run", "--guest", "--workload", "idle"], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=60)
    m = re.search(r"tsc_khz=(\d+) \(cmdline\)", r.stdout)
    return int(m.group(1)) if m else 0


def one(vm, size, guest, args, tmp, rnd, timeout):
    s = {}
    sock = os.path.join(tmp, f"{vm['name']}.sock")
    state = os.path.join(tmp, f"{vm['name']}.state")
    mem = os.path.join(tmp, f"{vm['name']}.mem")
    for p in (state, mem):
        if os.path.exists(p):
            os.unlink(p)
    err = os.path.join(tmp, f"{vm['name']}-{rnd}-a.err")
    with kvmkit_api.paused_vm(vm["argv"](sock), sock, err, {"vcpu_count": 1, "mem_size_mib": size}, guest, args,
                              timeout) as (_, c):
        s["create_ms"] = kvmkit_api.create_snapshot(c, "Full", state, mem)
    s["state_bytes"] = os.path.getsize(state)
    st = os.stat(mem)
    s["mem_apparent_mib"] = st.st_size / 2**20
    s["mem_disk_mib"] = st.st_blocks * 512 / 2**20
    # Drop nothing from the page cache: both VMMs restore from a file the host just wrote.
    sock2 = os.path.join(tmp, f"{vm['name']}-r.sock")
    v = ma.Vmm(vm["argv"](sock2), sock2, os.path.join(tmp, f"{vm['name']}-{rnd}-b.err"))
    try:
        t0 = v.t0
        ms, _, _, _ = v.wait_ready(timeout, 0.0005)
        s["api_ready_ms"] = ms
        c = ma.HttpConn(sock2, timeout=timeout)
        try:
            mark = v.out.offset()
            t = now()
            ma.api(c, "PUT", "/snapshot/load",
                   {"snapshot_path": state, "mem_backend": {"backend_type": "File", "backend_path": mem},
                    "resume_vm": True})
            s["load_ms"] = (now() - t) * 1e3
        finally:
            c.close()
        tt = v.out.wait_for(b"tick=", mark, timeout)
        if tt is None:
            raise ma.Failure("the restored guest printed no tick= line\n" + v.diag())
        s["restore_ms"] = (tt - t0) * 1e3
    finally:
        v.stop()
    for p in (state, mem):
        os.unlink(p)
    return s


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def report(vms, sizes, samples):
    base = vms[0]["name"]
    for size in sizes:
        print(f"\n== {size} MiB guest ({len(samples[(base, size)])} rounds) ==")
        for key, label in METRICS:
            print(f"{label}")
            for vm in vms:
                xs = [r[key] for r in samples[(vm['name'], size)]]
                line = f"  {vm['name']:<12} median {med(xs):10.2f}  min {min(xs):10.2f}  max {max(xs):10.2f}"
                if vm["name"] != base:
                    ratios = [b[key] / a[key] for a, b in zip(samples[(base, size)], samples[(vm['name'], size)])
                              if a[key] > 0]
                    if ratios:
                        line += f"   {base}/{vm['name']} paired ratio: median {med([1 / r for r in ratios]):.3f}"
                print(line)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vmm", action="append", required=True, help="NAME=PATH (kvmkit first)")
    ap.add_argument("--sizes", default="256,2048")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--json")
    cfg = ap.parse_args()
    sizes = [int(x) for x in cfg.sizes.split(",")]
    tmp = tempfile.mkdtemp(prefix="measure-snapshot-")
    vms = []
    kvmkit = None
    for spec in cfg.vmm:
        name, _, path = spec.partition("=")
        path = os.path.abspath(os.path.expanduser(path))
        if name == "kvmkit":
            kvmkit = path
            pre = [kvmkit_api.drop_in(path, tmp)]
        else:
            pre = [path]
        vms.append({"name": name, "path": path, "argv": (lambda pre: lambda s: pre + ["--api-sock", s])(pre)})
    if not kvmkit:
        raise SystemExit("give --vmm kvmkit=PATH")
    guest = kvmkit_api.test_guest(kvmkit, tmp)
    khz = tsc_khz(kvmkit)
    args = kvmkit_api.TICKS_BOOT_ARGS + (f" kvmkit.tsc_khz={khz}" if khz else "")
    print(f"guest {guest}, boot_args {args!r}; VMMs: " + ", ".join(f"{v['name']}={v['path']}" for v in vms))
    print(f"load average at start: {os.getloadavg()}")
    samples = {(v["name"], s): [] for v in vms for s in sizes}
    try:
        for rnd in range(cfg.rounds):
            order = vms[rnd % len(vms):] + vms[:rnd % len(vms)]
            for size in sizes:
                for vm in order:
                    r = one(vm, size, guest, args, tmp, rnd, cfg.timeout)
                    r["load1"] = os.getloadavg()[0]
                    samples[(vm["name"], size)].append(r)
                    print(f"round {rnd + 1} {size} MiB {vm['name']}: " +
                          " ".join(f"{k}={r[k]:.2f}" for k, _ in METRICS) + f" load1={r['load1']:.1f}",
                          flush=True)
    finally:
        ma.stop_all()
    report(vms, sizes, samples)
    if cfg.json:
        with open(cfg.json, "w") as f:
            json.dump({f"{k[0]}/{k[1]}": v for k, v in samples.items()}, f, indent=1)
    subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    try:
        main()
    except ma.Failure as e:
        ma.stop_all()
        print(f"measure-snapshot: {e}", file=sys.stderr)
        sys.exit(1)
