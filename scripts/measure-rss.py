#!/usr/bin/env python3
"""Peak RSS and boot time of the tiny PVH guest: kvmkit vs Firecracker vs the floor,
at two guest RAM sizes, interleaved rounds (issue 15: "a smaller VMM, flat in RAM size").

For every (VMM, MiB) pair and round: process start -> `GUEST-READY tiny-pvh` on stdout
(ms) and the process's peak RSS (GNU time's "Maximum resident set size", the VMM's own
VmHWM). Prints medians, kvmkit/Firecracker per size, and each VMM's 2 GiB/256 MiB
boot ratio. With --breakdown, one more run of each VMM is stopped at its exit_group
under gdb and /proc/PID/smaps is summed by mapping (binary text, read-only data,
libc, heap, stacks and other anonymous memory): where the peak goes.

Usage (after `cargo build --release`):
    scripts/measure-rss.py [--rounds N] [--sizes 256,2048] [--breakdown] [--pad MIB]
                           [--kvmkit [NAME=]PATH ...]
Peers: $PEERS/bin/firecracker (default ~/.cache/kvmkit-peers, see shared/peers/README.md);
the floor is compiled from shared/tools/bootfloor.c when gcc is there. A missing peer is
skipped, not faked.
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
MARKER = b"GUEST-READY tiny-pvh"


def parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--sizes", default="256,2048", help="guest RAM sizes in MiB, comma-separated")
    ap.add_argument("--breakdown", action="store_true", help="smaps at exit_group under gdb")
    ap.add_argument("--kvmkit", action="append", metavar="[NAME=]PATH",
                    help="kvmkit build(s) to measure side by side (repeatable; default target/release/kvmkit)")
    ap.add_argument("--guest", default=os.path.join(SHARED, "peers/tinyguest/tiny.elf"))
    ap.add_argument("--pad", type=int, default=0, metavar="MIB",
                    help="boot a copy of the guest ELF with MIB MiB appended (vmlinux-sized, same PT_LOADs): "
                         "catches costs that grow with the kernel file")
    ap.add_argument("--peers", default=os.environ.get("PEERS", os.path.expanduser("~/.cache/kvmkit-peers")))
    return ap.parse_args()


def commands(a, tmp, mib):
    cmds = {name: [path, "run", "--kernel", a.guest, "--no-stdin", "--memory", str(mib)] for name, path in a.builds}
    fc = os.path.join(a.peers, "bin/firecracker")
    if os.access(fc, os.X_OK):
        cfg = os.path.join(tmp, f"fc-{mib}.json")
        with open(cfg, "w") as f:
            json.dump({"boot-source": {"kernel_image_path": a.guest,
                                       "boot_args": "console=ttyS0 reboot=k panic=-1 pci=off"},
                       "drives": [], "machine-config": {"vcpu_count": 1, "mem_size_mib": mib}}, f)
        cmds["firecracker"] = [fc, "--no-api", "--config-file", cfg, "--level", "Error"]
    floor = os.path.join(tmp, "bootfloor")
    if os.access(floor, os.X_OK):
        cmds["floor"] = [floor, a.guest, str(mib)]
    return cmds


def once(cmd, tmp):
    rss_file = os.path.join(tmp, "rss")
    t0 = time.monotonic()
    p = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", rss_file] + cmd, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    buf, marker = b"", None
    while True:
        chunk = p.stdout.read1(4096)
        if not chunk:
            break
        buf += chunk
        if marker is None and MARKER in buf:
            marker = (time.monotonic() - t0) * 1e3
    p.wait()
    with open(rss_file) as f:
        rss = int(f.read().split()[-1]) / 1024.0
    return marker, rss


def classify(perms, name, binary):
    if name == binary:
        return {"r-xp": "binary text", "r--p": "binary read-only data"}.get(perms, "binary data/relro")
    if name.startswith("/"):
        return os.path.basename(name).split(".so")[0] + (" text" if "x" in perms else " data")
    if name in ("[heap]", "[stack]"):
        return name
    if name.startswith("anon_inode:kvm"):
        return "kvm_run pages"
    return name or "anonymous (thread stacks, arenas, guest RAM)"


def breakdown(cmd, tmp):
    """smaps summed by class at the first exit_group, or None without gdb."""
    if not shutil.which("gdb"):
        return None
    out = os.path.join(tmp, "smaps")
    py = f"python import gdb,shutil; shutil.copy('/proc/%d/smaps' % gdb.selected_inferior().pid, '{out}')"
    subprocess.run(["gdb", "-q", "-batch", "-ex", "set startup-with-shell off", "-ex", "catch syscall exit_group",
                    "-ex", "run", "-ex", py, "-ex", "kill", "--args"] + cmd,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    if not os.path.exists(out):
        return None
    sums, cur = {}, None
    with open(out) as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and not parts[0].endswith(":"):
                cur = classify(parts[1], parts[5] if len(parts) > 5 else "", os.path.realpath(cmd[0]))
            elif parts[0] == "Rss:":
                sums[cur] = sums.get(cur, 0) + int(parts[1])
    os.unlink(out)
    return sums


def run_path_check(path):
    """Warn when the binary's `.text.run` (link/run-path.ld, build.rs) is much smaller than
    when the script was generated: its symbol hashes went stale (scripts/layout-run-path.py)."""
    try:
        with open(os.path.join(ROOT, "link/run-path.ld")) as f:
            want = int(f.read().split("run-path-bytes:")[1].split()[0])
        out = subprocess.run(["readelf", "-SW", path], capture_output=True, text=True).stdout
    except (OSError, IndexError, ValueError):
        return
    have = next((int(l.split()[-6], 16) for l in out.splitlines() if " .text.run " in l), 0)
    if have < 0.9 * want:
        print(f"warning: {path}: .text.run is {have} bytes, link/run-path.ld recorded {want}: "
              "rerun scripts/layout-run-path.py", file=sys.stderr)


def main():
    a = parse()
    sizes = [int(s) for s in a.sizes.split(",")]
    a.builds = []
    for i, spec in enumerate(a.kvmkit or [os.path.join(ROOT, "target/release/kvmkit")]):
        name, _, path = spec.rpartition("=")
        a.builds.append((name or ("kvmkit" if i == 0 else f"kvmkit{i + 1}"), path))
    if not all(os.access(p, os.X_OK) for _, p in a.builds) or not os.path.exists("/usr/bin/time"):
        sys.exit("needs target/release/kvmkit (cargo build --release) and GNU time")
    for _, p in a.builds:
        run_path_check(p)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(SHARED, "tools/bootfloor.c")
        if shutil.which("gcc") and os.path.exists(src):
            subprocess.run(["gcc", "-O2", "-o", os.path.join(tmp, "bootfloor"), src], check=False)
        if a.pad:
            padded = os.path.join(tmp, "padded.elf")
            shutil.copyfile(a.guest, padded)
            with open(padded, "ab") as f:
                f.truncate(os.path.getsize(padded) + (a.pad << 20))
            a.guest = padded
        res = {}
        for _ in range(a.rounds):
            for mib in sizes:
                for name, cmd in commands(a, tmp, mib).items():
                    res.setdefault((name, mib), []).append(once(cmd, tmp))
        with open("/proc/loadavg") as f:
            load = " ".join(f.read().split()[:3])
        print(f"rounds={a.rounds} load={load} guest={os.path.basename(a.guest)} (+{a.pad} MiB)")
        med = {}
        for (name, mib), s in sorted(res.items()):
            t = [x[0] for x in s if x[0] is not None]
            r = [x[1] for x in s]
            med[(name, mib)] = (statistics.median(t) if t else float("nan"), statistics.median(r))
            print(f"{name:12s} {mib:5d} MiB  start->marker median {med[(name, mib)][0]:7.2f} ms "
                  f"(min {min(t) if t else float('nan'):.2f})  peak RSS median {med[(name, mib)][1]:5.2f} MiB "
                  f"(min {min(r):.2f}, max {max(r):.2f}, {len(t)}/{len(s)} hit the marker)")
        for mib in sizes:
            for name, _ in a.builds:
                if ("firecracker", mib) in med:
                    k, f = med[(name, mib)], med[("firecracker", mib)]
                    print(f"{name}/firecracker at {mib} MiB: peak RSS {k[1] / f[1]:.2f}x, boot {k[0] / f[0]:.2f}x")
        if len(sizes) > 1:
            lo, hi = sizes[0], sizes[-1]
            for name in sorted({n for n, _ in med}):
                print(f"{name:12s} boot {hi}/{lo} MiB: {med[(name, hi)][0] / med[(name, lo)][0]:.3f}, "
                      f"peak RSS {hi}/{lo}: {med[(name, hi)][1] / med[(name, lo)][1]:.3f}")
        if a.breakdown:
            for name, cmd in commands(a, tmp, sizes[0]).items():
                b = breakdown(cmd, tmp)
                if b is None:
                    print(f"{name}: no breakdown (needs gdb)")
                    continue
                print(f"{name} at exit_group, {sizes[0]} MiB, Rss by mapping (KiB), total {sum(b.values())}:")
                for k, v in sorted(b.items(), key=lambda kv: -kv[1]):
                    if v:
                        print(f"  {v:6d}  {k}")


if __name__ == "__main__":
    main()
