#!/usr/bin/env python3
"""Boot time and peak RSS of kvmkit vs QEMU microvm on the same test-guest ELF.

Measured from outside, the same way for both: time from spawning the VMM to
the guest's first console line (printed right after its READY milestone),
time to process exit, and the process's peak RSS (wait4). Runs are
interleaved; prints medians and the kvmkit/QEMU ratios. Usage:
    scripts/measure-boot.py [RUNS]   (after cargo build --release)
"""
import glob, os, shutil, statistics, subprocess, sys, time

runs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
kvmkit = os.path.join(root, "target/release/kvmkit")
elfs = sorted(glob.glob(os.path.join(root, "target/release/build/kvmkit-guest-image-*/out/kvmkit-guest")), key=os.path.getmtime)
if not elfs:
    sys.exit("build first: cargo build --release")
elf = elfs[-1]
if not shutil.which("qemu-system-x86_64") or not os.path.exists("/usr/bin/time"):
    sys.exit("needs qemu-system-x86_64 and GNU time (apt-get install qemu-system-x86 time)")
cmds = {
    "kvmkit": [kvmkit, "run", "--guest", "--no-stdin", "--workload", "idle", "--memory", "256"],
    "qemu": ["qemu-system-x86_64", "-M", "microvm", "-accel", "kvm", "-cpu", "host,-arch-capabilities,+invtsc",
             "-m", "256", "-smp", "1", "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
             "-kernel", elf, "-append", "kvmkit.workload=idle kvmkit.cpus=1"],
}

RSS_FILE = "/tmp/kvmkit-measure-rss"

def once(cmd):
    # GNU time reports the VMM's own peak RSS (a forked Python would inflate wait4's).
    cmd = ["/usr/bin/time", "-f", "%M", "-o", RSS_FILE] + cmd
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    first = None
    for line in p.stdout:
        if first is None and b"kvmkit-guest" in line:
            first = time.perf_counter() - t0
    p.wait()
    total = time.perf_counter() - t0
    with open(RSS_FILE) as f:
        rss_kib = int(f.read().split()[-1])
    return first, total, rss_kib / 1024.0

res = {k: [] for k in cmds}
for _ in range(runs):
    for name, cmd in cmds.items():
        res[name].append(once(cmd))
med = {}
for name, samples in res.items():
    f = [s[0] * 1e3 for s in samples if s[0] is not None]
    t = [s[1] * 1e3 for s in samples]
    r = [s[2] for s in samples]
    med[name] = (statistics.median(f), statistics.median(t), statistics.median(r))
    print(f"{name:7s} first guest line {med[name][0]:8.2f} ms (min {min(f):.2f}, max {max(f):.2f})  "
          f"exit {med[name][1]:8.2f} ms  peak RSS {med[name][2]:6.1f} MiB  (median of {len(f)})")
k, q = med["kvmkit"], med["qemu"]
print(f"ratio kvmkit/qemu: first line {k[0]/q[0]:.3f}, exit {k[1]/q[1]:.3f}, peak RSS {k[2]/q[2]:.3f}")
