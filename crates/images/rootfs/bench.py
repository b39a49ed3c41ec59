#!/usr/bin/python3
"""kvmkit's harness for the paper's programs (`kvmkit bench --guest linux`).

Usage: bench.py NAME:ARG

The same file runs on the host (in a chroot of this rootfs) and in the Debian guest, so both
run the same program versions. It times one program (time.perf_counter_ns around the
process) and prints one line per measured row:

    kvmkit-linux: NAME arg=ARG time_ns=NS result=R [key=value ...]

Programs whose own figure is a rate (openssl speed, 7z b) report the time that rate needs
for a fixed amount of work, so every row reads "seconds, lower is better"; the rate itself
is in raw=. Exit status 0 when every row was measured.
"""
import os
import re
import subprocess
import sys
import time

DATA = "/data"


class Failed(Exception):
    pass


def run(argv, stdin=None, cwd="/tmp"):
    """Runs argv to completion; returns (wall ns, stdout+stderr)."""
    t0 = time.perf_counter_ns()
    p = subprocess.run(argv, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd)
    ns = time.perf_counter_ns() - t0
    if p.returncode != 0:
        tail = " | ".join(p.stdout.strip().splitlines()[-3:])
        raise Failed(f"{' '.join(argv)} exited with {p.returncode}: {tail}")
    return ns, p.stdout


def report(name, arg, ns, result, **extra):
    fields = "".join(f" {k}={v}" for k, v in extra.items())
    print(f"kvmkit-linux: {name} arg={arg} time_ns={ns} result={result}{fields}", flush=True)


def drop_caches():
    """Writes back and drops the page cache so the next read comes from the disk."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def py_primes(n):
    ns, out = run(["/usr/bin/python3", "/kvmkit/primes.py", str(n)])
    report("py-primes", n, ns, int(out.split()[-1]))


def memtester(mib):
    ns, out = run(["/usr/sbin/memtester", f"{mib}M", "1"])
    errors = len(re.findall(r"FAILURE", out))
    report("memtester", mib, ns, errors)


def dd(mib):
    path = os.path.join(DATA, "dd.bin")
    ns_w, _ = run(["/bin/dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={mib}", "conv=fdatasync"])
    dropped = drop_caches()
    try:
        ns_r, _ = run(["/bin/dd", f"if={path}", "of=/dev/null", "bs=1M", "iflag=direct"])
        direct = 1
    except Failed:
        # The file system refused O_DIRECT: the dropped cache keeps the read cold.
        ns_r, _ = run(["/bin/dd", f"if={path}", "of=/dev/null", "bs=1M"])
        direct = 0
    os.unlink(path)
    report("dd-write", mib, ns_w, mib)
    report("dd-read", mib, ns_r, mib, direct=direct, dropped=int(dropped))


def povray(width):
    height = width * 3 // 4
    ns, _ = run(
        ["/usr/bin/povray", "+I/kvmkit/scene.pov", f"+W{width}", f"+H{height}", "-D", "-F", "+WT1", "+A0.3", "-GA"]
    )
    report("povray", width, ns, width * height)


def openssl(seconds):
    _, out = run(["/usr/bin/openssl", "speed", "-seconds", str(seconds), "rsa4096"])
    m = re.search(r"^rsa 4096 bits\s+\S+\s+\S+\s+([0-9.]+)\s+([0-9.]+)", out, re.M)
    if not m or float(m.group(1)) <= 0:
        raise Failed(f"openssl speed printed no rsa 4096 line: {out[-200:]!r}")
    signs = float(m.group(1))
    # Time for 100 RSA-4096 signatures at the measured rate.
    report("openssl", seconds, int(100e9 / signs), round(signs), raw=f"{signs}sign/s")


def sevenzip(passes):
    _, out = run(["/usr/bin/7zz", "b", str(passes), "-mmt1", "-md18"])
    m = re.search(r"^Tot:\s+\d+\s+(\d+)\s+(\d+)", out, re.M)
    if not m or int(m.group(2)) <= 0:
        raise Failed(f"7zz b printed no Tot: line: {out[-200:]!r}")
    rating = int(m.group(2))
    # Time for 10^10 instructions' worth of 7-Zip work at the measured rating (MIPS).
    report("7z", passes, int(1e13 / rating), rating, raw=f"{rating}MIPS")


def postmark(transactions):
    script = (
        f"set location {DATA}\nset number 500\nset size 500 10000\nset seed 42\n"
        f"set transactions {transactions}\nrun\nquit\n"
    )
    ns, out = run(["/usr/bin/postmark"], stdin=script, cwd=DATA)
    m = re.search(r"seconds of transactions \((\d+) per second\)", out)
    if not m:
        raise Failed(f"postmark printed no transactions line: {out[-200:]!r}")
    report("postmark", transactions, ns, transactions, raw=f"{m.group(1)}tps")


WORKLOADS = {
    "py-primes": py_primes,
    "memtester": memtester,
    "dd": dd,
    "povray": povray,
    "openssl": openssl,
    "7z": sevenzip,
    "postmark": postmark,
}


def main():
    if len(sys.argv) != 2 or ":" not in sys.argv[1]:
        sys.exit(f"usage: bench.py NAME:ARG (NAME: {', '.join(WORKLOADS)})")
    name, arg = sys.argv[1].split(":", 1)
    if name not in WORKLOADS or not arg.isdigit():
        sys.exit(f"kvmkit-linux: unknown workload {sys.argv[1]!r}")
    try:
        WORKLOADS[name](int(arg))
    except Failed as e:
        print(f"kvmkit-linux: {name} failed: {e}", flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
