#!/usr/bin/env python3
"""virtio-vsock side by side: kvmkit vs Firecracker, same test-guest ELF, same unix-socket bridge,
interleaved rounds (the VMM order alternates from round to round).

Usage:
    cargo build --release
    scripts/measure-vsock.py [--rounds 3] [--mib 64] [--connects 20] [--json FILE]
        [--kvmkit target/release/kvmkit] [--firecracker ~/.cache/kvmkit-peers/bin/firecracker]
        [--only kvmkit|firecracker] [--tests rx,tx,connect] [--kvmkit-args '--no-seccomp'] [--nice -10]

The guest is kvmkit's test guest, written once with `KVMKIT image guest --out FILE`; Firecracker
boots that file as a PVH kernel (config file, --no-api, 1 vCPU, 256 MiB, "vsock": {"guest_cid": 3,
"uds_path": ...}); kvmkit runs `kvmkit run --guest --vsock cid=3,uds=PATH --workload SPEC` (the
same embedded bytes). Per round and VMM, one VM each for:

  host->guest  `vsock-rx:PORT:MIB`: the script listens on `<uds>_<PORT>`, the guest connects, the
               script writes MIB MiB of the pattern stream in 64 KiB writes and reads until EOF
               (the guest shuts the connection down once it has everything). Host MiB/s = bytes /
               (accept -> EOF); the guest's own MiB/s (its TSC) is shown too, and its hash of the
               data (fnv64w) must equal the script's.
  guest->host  `vsock-tx:PORT:MIB`: the script listens, reads until EOF in 64 KiB reads, checks every
               byte against the pattern. Host MiB/s = bytes / (first byte -> EOF); guest MiB/s and
               the guest's connection set-up time (REQUEST sent -> RESPONSE received) are shown too.
  connect      `vsock-echo:5000:N`: N times, connect to the uds, time `CONNECT 5000\\n` -> `OK` line
               -> 1 byte written -> that byte echoed back ("CONNECT to first byte"), close.

The pattern (byte k = ((k ^ (k >> 8)) & 0xff) + 1 mod 256) and the hash (FNV-1a-64 over
little-endian 64-bit words, zero-padded, then over the byte count) are the guest's
`kvmkit_workloads::{pattern_byte, StreamHash}`.

While kvmkit has no `--vsock` (its `run --help` does not list it) only Firecracker is measured
and the script says so. Output: per metric median/min/max per VMM and kvmkit/Firecracker ratios
(of the medians, and per round). Python 3 standard library only; Linux only; needs /dev/kvm.
"""
import argparse
import json
import os
import re
import shlex
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = os.path.expanduser(os.environ.get("PEERS", "~/.cache/kvmkit-peers"))
GUEST_CID = 3
ECHO_PORT = 5000
RX_PORT = 5002
TX_PORT = 5001
CHUNK = 64 << 10
now = time.perf_counter


class Failure(Exception):
    pass


PATTERN = bytes(((k ^ (k >> 8)) + 1) & 0xFF for k in range(CHUNK))


def fnv64w(mib):
    """The guest's StreamHash of MIB MiB of the pattern stream."""
    h, p, m = 0xCBF29CE484222325, 0x100000001B3, (1 << 64) - 1
    words = struct.unpack(f"<{CHUNK // 8}Q", PATTERN)
    for _ in range(mib * (1 << 20) // CHUNK):
        for w in words:
            h = ((h ^ w) * p) & m
    return ((h ^ (mib << 20)) * p) & m


class Vm:
    """One VMM process booting the test guest with a vsock device; console to a file."""

    def __init__(self, kind, cfg, workdir, spec):
        self.kind, self.spec = kind, spec
        self.uds = os.path.join(workdir, f"{kind}.vsock")
        if os.path.exists(self.uds):
            os.unlink(self.uds)
        self.out_path = os.path.join(workdir, f"{kind}.out")
        args = f"console=ttyS0 reboot=k panic=1 kvmkit.workload={spec}"
        if cfg.tsc_khz:
            # As kvmkit tells its guest: else it calibrates against the PIT, which fails on a
            # busy host (times then read 0).
            args += f" kvmkit.tsc_khz={cfg.tsc_khz}"
        if kind == "firecracker":
            conf = os.path.join(workdir, "fc.json")
            with open(conf, "w") as f:
                json.dump({"boot-source": {"kernel_image_path": cfg.image, "boot_args": args},
                           "drives": [], "machine-config": {"vcpu_count": 1, "mem_size_mib": 256},
                           "vsock": {"guest_cid": GUEST_CID, "uds_path": self.uds}}, f)
            cmd = [cfg.firecracker, "--no-api", "--config-file", conf, "--level", "Error"]
        else:
            cmd = [cfg.kvmkit, "run", "--guest", "--vsock", f"cid={GUEST_CID},uds={self.uds}",
                   "--workload", spec] + shlex.split(cfg.kvmkit_args)
        self.out = open(self.out_path, "w")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.out,
                                     stderr=subprocess.STDOUT)

    def output(self):
        with open(self.out_path) as f:
            return f.read()

    def wait(self, timeout=60):
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise Failure(f"{self.kind} {self.spec}: VM still running after {timeout} s\n"
                          + self.output()[-2000:])
        self.out.close()
        return self.output()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.out.close()

    def guest_line(self, text, prefix):
        for line in text.splitlines():
            if line.startswith(prefix + ":") and "bytes=" in line and "port=" in line:
                return dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)
        raise Failure(f"{self.kind}: no '{prefix}:' result line\n{text[-3000:]}")


def listen(path):
    if os.path.exists(path):
        os.unlink(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(4)
    s.settimeout(30)
    return s


def host_to_guest(kind, cfg, workdir, expect_hash):
    path = os.path.join(workdir, f"{kind}.vsock_{RX_PORT}")
    lsock = listen(path)
    vm = Vm(kind, cfg, workdir, f"vsock-rx:{RX_PORT}:{cfg.mib}")
    try:
        conn, _ = lsock.accept()
        t0 = now()
        conn.settimeout(30)
        mv = memoryview(PATTERN)
        for _ in range(cfg.mib * (1 << 20) // CHUNK):
            conn.sendall(mv)
        t_sent = now()
        while conn.recv(4096):
            pass
        t1 = now()
        conn.close()
        text = vm.wait()
    except OSError as e:
        vm.kill()
        raise Failure(f"{kind} {vm.spec}: {e!r}\n{vm.output()[-3000:]}") from e
    except BaseException:
        vm.kill()
        raise
    finally:
        lsock.close()
    g = vm.guest_line(text, "vsock-rx")
    if int(g["fnv64w"], 16) != expect_hash or int(g["bytes"]) != cfg.mib << 20:
        raise Failure(f"{kind}: guest read bytes={g['bytes']} fnv64w={g['fnv64w']}, expected "
                      f"{cfg.mib << 20} and {expect_hash:#018x}")
    bytes_ = cfg.mib << 20
    return {"rx_host_MiBps": bytes_ / (t1 - t0) / 2**20,
            "rx_guest_MiBps": float(g["MiBps"]),
            "rx_send_ms": (t_sent - t0) * 1e3,
            "rx_packets": float(g.get("packets", 0))}


def guest_to_host(kind, cfg, workdir):
    path = os.path.join(workdir, f"{kind}.vsock_{TX_PORT}")
    lsock = listen(path)
    vm = Vm(kind, cfg, workdir, f"vsock-tx:{TX_PORT}:{cfg.mib}")
    try:
        conn, _ = lsock.accept()
        conn.settimeout(30)
        buf = bytearray(CHUNK)
        double = PATTERN * 2
        got, bad, t0 = 0, 0, None
        while True:
            n = conn.recv_into(buf)
            if n == 0:
                break
            if t0 is None:
                t0 = now()
            off = got % CHUNK
            if buf[:n] != double[off:off + n]:
                bad += 1
            got += n
        t1 = now()
        conn.close()
        text = vm.wait()
    except OSError as e:
        vm.kill()
        raise Failure(f"{kind} {vm.spec}: {e!r}\n{vm.output()[-3000:]}") from e
    except BaseException:
        vm.kill()
        raise
    finally:
        lsock.close()
    g = vm.guest_line(text, "vsock-tx")
    if got != cfg.mib << 20 or bad:
        raise Failure(f"{kind}: host got {got} bytes, {bad} reads differ from the pattern")
    return {"tx_host_MiBps": got / (t1 - t0) / 2**20 if t1 > t0 else 0.0,
            "tx_guest_MiBps": float(g["MiBps"]),
            "guest_connect_us": float(g["connect_us"]),
            "tx_credit_requests": float(g.get("credit_requests", 0))}


def connect_latency(kind, cfg, workdir):
    vm = Vm(kind, cfg, workdir, f"vsock-echo:{ECHO_PORT}:{cfg.connects}")
    ok_us, first_us = [], []
    try:
        deadline = now() + 30
        while not os.path.exists(vm.uds):
            if now() > deadline or vm.proc.poll() is not None:
                raise Failure(f"{kind}: {vm.uds} never appeared\n{vm.output()[-2000:]}")
            time.sleep(0.005)
        # The guest listens once it prints its line; before that a CONNECT is reset.
        while "vsock-echo: listening" not in vm.output():
            if now() > deadline or vm.proc.poll() is not None:
                raise Failure(f"{kind}: guest never listened\n{vm.output()[-2000:]}")
            time.sleep(0.005)
        for _ in range(cfg.connects):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(vm.uds)
            t0 = now()
            s.sendall(f"CONNECT {ECHO_PORT}\n".encode())
            line = b""
            while not line.endswith(b"\n"):
                c = s.recv(1)
                if not c:
                    raise Failure(f"{kind}: connection closed before OK (got {line!r})")
                line += c
            t_ok = now()
            if not line.startswith(b"OK"):
                raise Failure(f"{kind}: CONNECT answered {line!r}")
            s.sendall(b"x")
            if s.recv(1) != b"x":
                raise Failure(f"{kind}: byte not echoed")
            t1 = now()
            s.close()
            ok_us.append((t_ok - t0) * 1e6)
            first_us.append((t1 - t0) * 1e6)
        vm.wait()
    except OSError as e:
        vm.kill()
        raise Failure(f"{kind} {vm.spec}: {e!r}\n{vm.output()[-3000:]}") from e
    except BaseException:
        vm.kill()
        raise
    return {"connect_ok_us": statistics.median(ok_us), "connect_first_byte_us": statistics.median(first_us)}


METRICS = [
    ("rx_host_MiBps", "host->guest MiB/s (host clock)", True),
    ("rx_guest_MiBps", "host->guest MiB/s (guest TSC)", True),
    ("tx_host_MiBps", "guest->host MiB/s (host clock)", True),
    ("tx_guest_MiBps", "guest->host MiB/s (guest TSC)", True),
    ("connect_first_byte_us", "CONNECT -> first echoed byte, us (median of N)", False),
    ("connect_ok_us", "CONNECT -> OK line, us (median of N)", False),
    ("guest_connect_us", "guest REQUEST -> RESPONSE, us (1 per VM, tx run)", False),
    ("rx_packets", "host->guest: RW packets the guest got (fewer = fuller)", False),
    ("tx_credit_requests", "guest->host: times the guest ran out of credit", False),
]


def tsc_khz(kvmkit):
    """The TSC rate kvmkit hands its guest (kvmkit.tsc_khz), from one `idle` run; 0 if unknown."""
    r = subprocess.run([kvmkit, "run", "--guest", "--workload", "idle"], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=60)
    m = re.search(r"tsc_khz=(\d+) \(cmdline\)", r.stdout)
    return int(m.group(1)) if m else 0


def kvmkit_has_vsock(kvmkit):
    r = subprocess.run([kvmkit, "run", "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True)
    return "--vsock" in r.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kvmkit", default=os.path.join(ROOT, "target/release/kvmkit"))
    ap.add_argument("--firecracker", default=os.path.join(PEERS, "bin/firecracker"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--connects", type=int, default=20)
    ap.add_argument("--only", choices=["kvmkit", "firecracker"])
    ap.add_argument("--tests", default="rx,tx,connect",
                    help="comma-separated subset of rx (host->guest), tx (guest->host), connect")
    ap.add_argument("--kvmkit-args", default="", help="extra arguments for `kvmkit run`, e.g. --no-seccomp")
    ap.add_argument("--nice", type=int, default=0,
                    help="niceness for the script and the VMMs (e.g. -10 on a busy host; root only)")
    ap.add_argument("--json")
    cfg = ap.parse_args()
    if cfg.nice:
        os.nice(cfg.nice)
    if not os.access(cfg.kvmkit, os.X_OK):
        sys.exit(f"no kvmkit at {cfg.kvmkit} (cargo build --release, or --kvmkit PATH)")
    vmms = []
    if cfg.only != "kvmkit":
        if not os.access(cfg.firecracker, os.X_OK):
            sys.exit(f"no Firecracker at {cfg.firecracker} (--firecracker PATH)")
        vmms.append("firecracker")
    if cfg.only != "firecracker":
        if kvmkit_has_vsock(cfg.kvmkit):
            vmms.append("kvmkit")
        else:
            print(f"NOTE: {cfg.kvmkit} has no `run --vsock` yet (kvmkit's virtio-vsock device is not "
                  "there yet): measuring Firecracker only.")
    if not vmms:
        sys.exit("nothing to measure")
    workdir = tempfile.mkdtemp(prefix="kvmkit-vsock-")
    try:
        cfg.image = os.path.join(workdir, "kvmkit-guest.elf")
        r = subprocess.run([cfg.kvmkit, "image", "guest", "--out", cfg.image],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            sys.exit(f"kvmkit image guest failed: {r.stdout}")
        cfg.tsc_khz = tsc_khz(cfg.kvmkit)
        print(f"guest: {cfg.image} (kvmkit image guest), {cfg.mib} MiB per transfer, "
              f"{cfg.connects} connects per round, {cfg.rounds} rounds, VMMs: {', '.join(vmms)}, "
              f"guest TSC {cfg.tsc_khz or 'calibrated by the guest'} kHz")
        t = now()
        expect = fnv64w(cfg.mib) if "rx" in cfg.tests else 0
        print(f"expected fnv64w of {cfg.mib} MiB: {expect:#018x} ({now() - t:.1f} s to compute)")
        samples = {v: [] for v in vmms}
        for rnd in range(cfg.rounds):
            order = vmms if rnd % 2 == 0 else vmms[::-1]
            for v in order:
                s = {}
                if "rx" in cfg.tests:
                    s.update(host_to_guest(v, cfg, workdir, expect))
                if "tx" in cfg.tests:
                    s.update(guest_to_host(v, cfg, workdir))
                if "connect" in cfg.tests:
                    s.update(connect_latency(v, cfg, workdir))
                samples[v].append(s)
                print(f"round {rnd + 1} {v:12s} " + " ".join(f"{k}={s[k]:.1f}" for k, _, _ in METRICS if k in s))
        print()
        print(f"{'metric':50s} " + " ".join(f"{v + ' med [min..max]':>34s}" for v in vmms)
              + ("   kvmkit/fc (median; per-round min..max)" if len(vmms) == 2 else ""))
        for key, label, _ in METRICS:
            if key not in samples[vmms[0]][0]:
                continue
            cells = []
            for v in vmms:
                xs = [s[key] for s in samples[v]]
                cells.append(f"{statistics.median(xs):12.1f} [{min(xs):8.1f}..{max(xs):8.1f}]")
            line = f"{label:50s} " + " ".join(f"{c:>34s}" for c in cells)
            if len(vmms) == 2:
                k = [s[key] for s in samples["kvmkit"]]
                f = [s[key] for s in samples["firecracker"]]
                per = [a / b for a, b in zip(k, f) if b]
                if per:
                    line += (f"   {statistics.median(k) / statistics.median(f):.2f}x"
                             f" ({min(per):.2f}..{max(per):.2f})")
            print(line)
        print("(throughput: higher is better; latency: lower is better)")
        if cfg.json:
            with open(cfg.json, "w") as f:
                json.dump({"mib": cfg.mib, "connects": cfg.connects, "samples": samples}, f, indent=1)
    except (Failure, OSError) as e:
        sys.exit(f"FAILED: {e!r}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
