#!/usr/bin/env python3
"""The Firecracker-compatible control-plane API, side by side: kvmkit vs Firecracker (or any VMM
that speaks Firecracker's API over a unix socket), in interleaved rounds, measured from outside
the same way for every VMM.

Usage:
    scripts/measure-api.py --vmm kvmkit=target/release/kvmkit \\
        --vmm firecracker=~/.cache/kvmkit-peers/bin/firecracker [--rounds 5] [--json FILE]

Per round and VMM (the order rotates from round to round):
  (a) process start -> API ready: spawn `BIN --api-sock S`, poll connect + `GET /` until a 200;
      wall ms, and the process's CPU ms at that moment: the sum of its threads' run time from
      /proc/PID/task/*/schedstat (ns), and utime+stime from /proc/PID/stat (10 ms ticks, coarse).
      Firecracker's SPECIFICATION.md target: <= 8 CPU ms.
  (b) InstanceStart -> guest marker: PUT /machine-config {vcpu_count 1, mem_size_mib 256},
      PUT /boot-source {kernel_image_path GUEST, boot_args ARGS}, then the time from sending
      PUT /actions {InstanceStart} to MARKER on the VMM's stdout (guest serial). Also recorded:
      InstanceStart -> its 204.
  (c) `GET /` latency while the VM runs, `--requests` (1000) times on one keep-alive connection
      and, separately, with a new connection per request (as curl does): p50, p99 in us.
  (d) VmRSS and VmHWM (KiB, /proc/PID/status) once the guest has printed its marker and the
      InstanceStart 204 has arrived.
(c) and (d) need a VMM whose guest stays up, so they run in a second VMM process per round that
boots a "hold" guest: by default a 1-page PVH ELF this script writes itself (prints
`GUEST-READY hold`, then cli; hlt forever). `--hold-guest same` uses --guest instead (for a
guest that does not exit), `--hold-guest PATH --hold-marker STR` another one.

Guests: `--guest PATH --marker STR --boot-args STR`. Default: the tiny PVH guest
(~/.cache/kvmkit-peers/tinyguest/tiny.elf or /work/shared/peers/tinyguest/tiny.elf, else built
from tiny.S with as/ld), marker `GUEST-READY`; it prints its line, then resets (Firecracker exits
on it). `--guest kvmkit` writes kvmkit's test guest with `KVMKIT image guest --out FILE` (KVMKIT:
the kvmkit --vmm, or --kvmkit-bin) and boots it with
`console=ttyS0 reboot=k panic=1 kvmkit.workload=primes:1000`, marker `primes: N=`.

kvmkit is run in its drop-in mode: a temporary symlink named `firecracker` to the kvmkit binary,
spawned with the same `--api-sock S` command line as Firecracker. `--kvmkit-mode run` spawns
`BIN run --api-sock S` instead. A VMM is taken as kvmkit when its NAME is `kvmkit` or it is named
with `--kvmkit-style NAME`. `--vmm-args NAME='--level Error'` appends arguments for one VMM
(Firecracker logs at Info to stdout by default; that is left as it is unless asked).

Output: one table per metric, median/min/max per VMM and the per-round paired ratio of each VMM
to the first one given (median/min/max of the ratios). `--json FILE` writes every raw sample,
the per-request latencies included. Sockets, links, generated guests and VMM processes are
cleaned up on exit, Ctrl-C included. Python 3 standard library only; Linux only.
"""
import argparse
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

PEERS = os.path.expanduser(os.environ.get("PEERS", "~/.cache/kvmkit-peers"))
SHARED_TINY = "/work/shared/peers/tinyguest"
KVMKIT_BOOT_ARGS = "console=ttyS0 reboot=k panic=1 kvmkit.workload=primes:1000"
DEFAULT_BOOT_ARGS = "console=ttyS0 reboot=k panic=1"
now = time.perf_counter  # CLOCK_MONOTONIC on Linux, the same clock in every thread


class Failure(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# HTTP/1.1 over AF_UNIX, by hand


class HttpConn:
    """One HTTP/1.1 connection to a unix socket; responses parsed by status line, headers and
    Content-Length (a response without one, other than 1xx/204/304, is read to EOF)."""

    def __init__(self, path, timeout=5.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except BaseException:
            self.sock.close()
            raise
        self.buf = b""

    def close(self):
        self.sock.close()

    @staticmethod
    def encode(method, path, body=None):
        head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n"
        if body is None:
            return (head + "\r\n").encode()
        data = json.dumps(body, separators=(",", ":")).encode()
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        return head.encode() + data

    def send(self, raw):
        self.sock.sendall(raw)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed by the VMM")
        self.buf += chunk

    def read_response(self, method="GET"):
        """-> (status, {lower-case header: value}, body bytes)"""
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(self.buf) > 65536:
                raise Failure("response header over 64 KiB")
            self._fill()
        head, self.buf = self.buf[:end].decode("latin-1"), self.buf[end + 4:]
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise Failure(f"bad status line {lines[0]!r}")
        status = int(parts[1])
        headers = {}
        for line in lines[1:]:
            k, sep, v = line.partition(":")
            if not sep:
                raise Failure(f"bad header line {line!r}")
            headers[k.strip().lower()] = v.strip()
        if "content-length" in headers:
            n = int(headers["content-length"])
            while len(self.buf) < n:
                self._fill()
            body, self.buf = self.buf[:n], self.buf[n:]
        elif status in (204, 304) or status < 200 or method == "HEAD":
            body = b""
        else:  # no length: the body runs to EOF
            while True:
                try:
                    self._fill()
                except ConnectionError:
                    break
            body, self.buf = self.buf, b""
        return status, headers, body

    def request(self, method, path, body=None):
        self.send(self.encode(method, path, body))
        return self.read_response(method)


def api(conn, method, path, body=None, want=(200, 204)):
    status, _, data = conn.request(method, path, body)
    if status not in want:
        raise Failure(f"{method} {path} -> {status} {data[:300].decode(errors='replace')}")
    return data


# ---------------------------------------------------------------------------------------------
# /proc


def cpu_ms(pid):
    """(schedstat_ms, stat_ms): the process's CPU time. schedstat: run time of its live threads
    in ns (None without schedstats); stat: utime+stime of the whole process in clock ticks."""
    sched = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                sched += int(f.read().split()[0])
        sched_ms = sched / 1e6
    except (OSError, ValueError, IndexError):
        sched_ms = None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        stat_ms = (int(fields[11]) + int(fields[12])) * 1000.0 / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        stat_ms = None
    return sched_ms, stat_ms


def rss_kib(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0])
    return out.get("VmRSS"), out.get("VmHWM")


# ---------------------------------------------------------------------------------------------
# guests


def hold_guest_elf():
    """A PVH ELF (one 4 KiB page at 0x100000) that prints "GUEST-READY hold\\n" on COM1 and then
    halts with interrupts off, so the VMM keeps running. 32-bit code:
        cld; mov $msg,%esi; mov $0x3f8,%dx
    1:  lodsb; test %al,%al; jz 2f; outb %al,%dx; jmp 1b
    2:  cli
    3:  hlt; jmp 3b"""
    base, off = 0x100000, 0x1000
    msg_at = 22
    code = (b"\xfc" + b"\xbe" + struct.pack("<I", base + msg_at) + b"\x66\xba\xf8\x03"
            + b"\xac\x84\xc0\x74\x03\xee\xeb\xf8" + b"\xfa\xf4\xeb\xfd")
    assert len(code) == msg_at
    text = code + b"GUEST-READY hold\n\0"
    text += b"\0" * (-len(text) % 4)
    note_at = len(text)
    note = struct.pack("<III", 4, 4, 18) + b"Xen\0" + struct.pack("<I", base)
    seg = text + note
    ehdr = struct.pack("<4sBBBBB7xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0, 2, 62, 1, base, 64, 0,
                       0, 64, 56, 2, 64, 0, 0)
    load = struct.pack("<IIQQQQQQ", 1, 5, off, base, base, len(seg), len(seg), 0x1000)
    pnote = struct.pack("<IIQQQQQQ", 4, 4, off + note_at, base + note_at, base + note_at,
                        len(note), len(note), 4)
    hdr = ehdr + load + pnote
    return hdr + b"\0" * (off - len(hdr)) + seg


def tiny_guest(tmp):
    for p in (os.path.join(PEERS, "tinyguest/tiny.elf"), os.path.join(SHARED_TINY, "tiny.elf")):
        if os.path.isfile(p):
            return p
    src = os.path.join(SHARED_TINY, "tiny.S")
    if not (os.path.isfile(src) and shutil.which("as") and shutil.which("ld")):
        raise Failure("no tiny guest: give --guest PATH (or build-peers.sh, or binutils + tiny.S)")
    out = os.path.join(tmp, "tiny.elf")
    subprocess.run(["as", "--64", "-o", out + ".o", src], check=True)
    subprocess.run(["ld", "-m", "elf_x86_64", "-T", os.path.join(SHARED_TINY, "tiny.ld"), "-o", out,
                    out + ".o"], check=True)
    return out


# ---------------------------------------------------------------------------------------------
# VMM processes


# A Firecracker log line: it logs to stdout (Info by default) and a line can land in the middle of
# the guest's serial output ("GUE<log line>ST-READY"), so markers are matched around such lines.
LOG_LINE = rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+ \[[^\]\n]*\] [^\n]*\n"


class Output(threading.Thread):
    """Reads a pipe to EOF, keeps what it read (up to 4 MiB) with the time each read returned."""

    LIMIT = 4 << 20

    def __init__(self, f):
        super().__init__(daemon=True)
        self.fd = f.fileno()
        self.f = f
        self.data = bytearray()
        self.stamps = []  # (end offset, time)
        self.eof = False
        self.cv = threading.Condition()

    def run(self):
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                chunk = b""
            t = now()
            with self.cv:
                if not chunk:
                    self.eof = True
                    self.cv.notify_all()
                    return
                if len(self.data) < self.LIMIT:
                    self.data += chunk
                    self.stamps.append((len(self.data), t))
                self.cv.notify_all()

    def offset(self):
        with self.cv:
            return len(self.data)

    def wait_for(self, marker, start, timeout):
        """Time the read that completed the first MARKER at or after offset START; None on EOF
        or timeout. Whole log lines of the VMM's may sit between the marker's bytes (see
        LOG_LINE)."""
        gap = b"(?:" + LOG_LINE + b")*"
        pat = re.compile(gap.join(re.escape(marker[i:i + 1]) for i in range(len(marker))))
        deadline = now() + timeout
        with self.cv:
            while True:
                m = pat.search(self.data, start)
                if m:
                    return next(t for o, t in self.stamps if o >= m.end())
                left = deadline - now()
                if self.eof or left <= 0:
                    return None
                self.cv.wait(left)

    def tail(self, n=800):
        with self.cv:
            return bytes(self.data[-n:]).decode(errors="replace")


class Vmm:
    """One spawned VMM process: stdout watched for markers, stderr to a file."""

    live = set()

    def __init__(self, argv, sock, errpath):
        self.sock = sock
        self.errpath = errpath
        if os.path.lexists(sock):
            os.unlink(sock)
        self.err = open(errpath, "wb")
        self.t0 = now()
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=self.err, close_fds=True)
        Vmm.live.add(self)
        self.out = Output(self.p.stdout)
        self.out.start()

    def diag(self):
        try:
            with open(self.errpath, "rb") as f:
                err = f.read()[-800:].decode(errors="replace")
        except OSError:
            err = ""
        rc = self.p.poll()
        return (f"[exit status {rc}]" if rc is not None else "[running]") + \
            f"\n--- stdout tail ---\n{self.out.tail()}\n--- stderr tail ---\n{err}"

    def wait_ready(self, timeout, poll_s):
        """Poll connect + GET / until 200: -> (wall_ms, sched_cpu_ms, stat_cpu_ms, body)."""
        deadline = self.t0 + timeout
        while True:
            if self.p.poll() is not None:
                raise Failure("VMM exited before its API answered\n" + self.diag())
            if now() > deadline:
                raise Failure(f"API not ready after {timeout} s\n" + self.diag())
            try:
                c = HttpConn(self.sock, timeout=max(0.1, deadline - now()))
            except (FileNotFoundError, ConnectionRefusedError):
                time.sleep(poll_s)
                continue
            try:
                status, _, body = c.request("GET", "/")
            except (ConnectionError, socket.timeout, OSError):
                time.sleep(poll_s)
                continue
            finally:
                c.close()
            if status == 200:
                t = now()
                sched, stat = cpu_ms(self.p.pid)
                return (t - self.t0) * 1e3, sched, stat, body
            time.sleep(poll_s)

    def stop(self):
        if self.p.poll() is None:
            self.p.kill()
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.p.stdin, self.err):
            try:
                f.close()
            except OSError:
                pass
        self.out.join(timeout=2)
        try:
            self.p.stdout.close()
        except OSError:
            pass
        if os.path.lexists(self.sock):
            os.unlink(self.sock)
        Vmm.live.discard(self)


def stop_all():
    for v in list(Vmm.live):
        try:
            v.stop()
        except Exception:
            pass


# ---------------------------------------------------------------------------------------------
# the measurements


def boot(v, guest, args, marker, timeout):
    """Configure, send InstanceStart: -> (marker ms, 204 ms or None). Leaves the VM running."""
    c = HttpConn(v.sock, timeout=timeout)
    try:
        api(c, "PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 256})
        api(c, "PUT", "/boot-source", {"kernel_image_path": guest, "boot_args": args})
        raw = c.encode("PUT", "/actions", {"action_type": "InstanceStart"})
        mark = v.out.offset()
        t0 = now()
        c.send(raw)
        resp_ms = None
        try:
            status, _, body = c.read_response("PUT")
            if status != 204:
                raise Failure(f"InstanceStart -> {status} {body[:300].decode(errors='replace')}\n"
                              + v.diag())
            resp_ms = (now() - t0) * 1e3
        except (ConnectionError, socket.timeout, OSError):
            pass  # e.g. the guest reset and the VMM exited before answering; the marker decides
        t = v.out.wait_for(marker.encode(), mark, timeout)
        if t is None:
            raise Failure(f"no {marker!r} on stdout within {timeout} s of InstanceStart\n" + v.diag())
        return (t - t0) * 1e3, resp_ms
    finally:
        c.close()


def get_latencies(sock, n, keepalive):
    """N `GET /` round trips in us, all answered 200."""
    raw = HttpConn.encode("GET", "/")
    lat = []
    if keepalive:
        c = HttpConn(sock)
        try:
            for _ in range(10):  # warm-up
                c.send(raw)
                c.read_response()
            for _ in range(n):
                t0 = time.perf_counter_ns()
                c.send(raw)
                status, _, body = c.read_response()
                lat.append((time.perf_counter_ns() - t0) / 1e3)
                if status != 200:
                    raise Failure(f"GET / -> {status}")
        finally:
            c.close()
    else:
        for _ in range(n):
            t0 = time.perf_counter_ns()
            c = HttpConn(sock)
            try:
                c.send(raw)
                status, _, body = c.read_response()
            finally:
                c.close()
            lat.append((time.perf_counter_ns() - t0) / 1e3)
            if status != 200:
                raise Failure(f"GET / -> {status}")
    return lat, body


def pct(xs, p):
    """Nearest-rank percentile."""
    s = sorted(xs)
    return s[min(len(s), max(1, math.ceil(p / 100.0 * len(s)))) - 1]


def one_round(vm, cfg, rnd, tmp):
    """All four measurements of one VMM: -> dict of samples (+ raw latencies)."""
    s = {}
    sock = os.path.join(tmp, f"{vm['name']}.sock")
    err = os.path.join(tmp, f"{vm['name']}.stderr")
    v = Vmm(vm["argv"](sock), sock, err)
    try:
        wall, sched, stat, body = v.wait_ready(cfg.timeout, cfg.poll_us / 1e6)
        s.update(a_wall_ms=wall, a_cpu_ms=sched, a_cpu_stat_ms=stat)
        try:
            s["a_get_root"] = json.loads(body)
        except ValueError:
            s["a_get_root"] = body.decode(errors="replace")
        s["b_marker_ms"], s["b_204_ms"] = boot(v, cfg.guest, cfg.boot_args, cfg.marker, cfg.timeout)
        if cfg.hold_guest != "same":
            v.stop()
            v = Vmm(vm["argv"](sock), sock, err)
            v.wait_ready(cfg.timeout, cfg.poll_us / 1e6)
            boot(v, cfg.hold_guest, cfg.hold_boot_args, cfg.hold_marker, cfg.timeout)
        if v.p.poll() is not None:
            raise Failure("the VMM exited after its guest's marker; (c) and (d) need a guest that "
                          "stays up (--hold-guest)\n" + v.diag())
        s["d_rss_kib"], s["d_hwm_kib"] = rss_kib(v.p.pid)
        for mode, ka in (("ka", True), ("new", False)):
            lat, last = get_latencies(sock, cfg.requests, ka)
            s[f"c_{mode}_p50_us"], s[f"c_{mode}_p99_us"] = pct(lat, 50), pct(lat, 99)
            s[f"c_{mode}_raw_us"] = [round(x, 2) for x in lat]
        try:
            s["c_state"] = json.loads(last).get("state")
        except (ValueError, AttributeError):
            s["c_state"] = None
        if v.p.poll() is not None:
            raise Failure("the VMM exited during (c)\n" + v.diag())
        s["d_rss_after_c_kib"], s["d_hwm_after_c_kib"] = rss_kib(v.p.pid)
    finally:
        v.stop()
    return s


METRICS = [
    ("a_wall_ms", "(a) start -> API ready (GET / 200), wall", "ms"),
    ("a_cpu_ms", "(a) start -> API ready, CPU (threads' schedstat; FC spec <= 8)", "ms"),
    ("a_cpu_stat_ms", "(a) start -> API ready, CPU utime+stime (/proc/PID/stat, ticks)", "ms"),
    ("b_marker_ms", "(b) InstanceStart -> guest marker on stdout", "ms"),
    ("b_204_ms", "(b') InstanceStart -> its 204", "ms"),
    ("c_ka_p50_us", "(c) GET / keep-alive, p50", "us"),
    ("c_ka_p99_us", "(c) GET / keep-alive, p99", "us"),
    ("c_new_p50_us", "(c) GET / new connection each, p50", "us"),
    ("c_new_p99_us", "(c) GET / new connection each, p99", "us"),
    ("d_rss_kib", "(d) VmRSS after boot", "KiB"),
    ("d_hwm_kib", "(d) VmHWM after boot", "KiB"),
]


def report(vms, samples):
    first = vms[0]["name"]
    for key, label, unit in METRICS:
        rows = []
        for vm in vms:
            n = vm["name"]
            xs = [r[key] for r in samples[n] if r and r.get(key) is not None]
            if not xs:
                continue
            ratios = []
            if n != first:
                for r, r0 in zip(samples[n], samples[first]):
                    if r and r0 and r.get(key) is not None and r0.get(key):
                        ratios.append(r[key] / r0[key])
            rows.append((n, xs, ratios))
        if not rows:
            continue
        print(f"\n{label} [{unit}]")
        print(f"  {'vmm':14s} {'median':>10s} {'min':>10s} {'max':>10s} {'n':>3s}   "
              f"ratio to {first}: median (min-max)")
        for n, xs, ratios in rows:
            rat = (f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"
                   if ratios else "")
            print(f"  {n:14s} {statistics.median(xs):10.2f} {min(xs):10.2f} {max(xs):10.2f} "
                  f"{len(xs):3d}   {rat}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="See the module docstring (head -60 of this file).")
    ap.add_argument("--vmm", action="append", required=True, metavar="NAME=PATH",
                    help="a VMM to measure (repeatable; the first is the ratios' baseline)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=1000, help="GET / requests per mode in (c)")
    ap.add_argument("--guest", help="guest ELF for (b); 'kvmkit': kvmkit's test guest")
    ap.add_argument("--marker", help="guest line to wait for (default GUEST-READY)")
    ap.add_argument("--boot-args", help=f"default {DEFAULT_BOOT_ARGS!r}")
    ap.add_argument("--hold-guest", default=None,
                    help="guest that stays up for (c)/(d): PATH, or 'same' (default: generated)")
    ap.add_argument("--hold-marker", default=None)
    ap.add_argument("--hold-boot-args", default=None)
    ap.add_argument("--kvmkit-style", action="append", default=[], metavar="NAME",
                    help="treat this VMM as kvmkit (NAME=kvmkit is anyway)")
    ap.add_argument("--kvmkit-mode", choices=("symlink", "run"), default="symlink",
                    help="symlink: spawn a link named firecracker with --api-sock (drop-in); "
                         "run: spawn BIN run --api-sock")
    ap.add_argument("--kvmkit-bin", help="kvmkit binary for --guest kvmkit (default: the kvmkit VMM)")
    ap.add_argument("--vmm-args", action="append", default=[], metavar="NAME=ARGS",
                    help="extra arguments for one VMM, shell-quoted, after --api-sock S")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per wait (default 30)")
    ap.add_argument("--poll-us", type=float, default=200.0, help="readiness poll interval")
    ap.add_argument("--json", metavar="FILE", help="write the raw samples here")
    cfg = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="measure-api-")

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        run(cfg, tmp)
    except Failure as e:
        sys.exit(f"measure-api: {e}")
    except KeyboardInterrupt:
        sys.exit("measure-api: interrupted")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def run(cfg, tmp):
    extra = {}
    for a in cfg.vmm_args:
        n, sep, rest = a.partition("=")
        if not sep:
            raise Failure(f"--vmm-args wants NAME=ARGS, got {a!r}")
        extra[n] = shlex.split(rest)
    vms = []
    for spec in cfg.vmm:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise Failure(f"--vmm wants NAME=PATH, got {spec!r}")
        if name in (v["name"] for v in vms) or not name.replace("-", "").replace("_", "").isalnum():
            raise Failure(f"bad or repeated VMM name {name!r}")
        path = os.path.abspath(os.path.expanduser(path))
        if not os.access(path, os.X_OK):
            raise Failure(f"{name}: {path} is not an executable file")
        kvmkit = name == "kvmkit" or name in cfg.kvmkit_style
        if kvmkit and cfg.kvmkit_mode == "symlink":
            d = os.path.join(tmp, f"{name}-bin")
            os.mkdir(d)
            exe = os.path.join(d, "firecracker")
            os.symlink(os.path.realpath(path), exe)
            pre, mode = [exe], "drop-in (symlink named firecracker)"
        elif kvmkit:
            pre, mode = [path, "run"], "kvmkit run"
        else:
            pre, mode = [path], "plain"
        x = extra.get(name, [])
        vms.append({"name": name, "path": path, "kvmkit": kvmkit, "mode": mode,
                    "argv": (lambda pre, x: lambda s: pre + ["--api-sock", s] + x)(pre, x)})
        try:
            ver = subprocess.run([path, "--version"], capture_output=True, timeout=10,
                                 text=True).stdout.strip().splitlines()
        except (OSError, subprocess.TimeoutExpired):
            ver = []
        vms[-1]["version"] = ver[0] if ver else "?"
    unknown = set(extra) - {v["name"] for v in vms}
    if unknown:
        raise Failure(f"--vmm-args for unknown VMM(s): {', '.join(sorted(unknown))}")

    if cfg.guest == "kvmkit":
        kb = cfg.kvmkit_bin or next((v["path"] for v in vms if v["kvmkit"]), None)
        if not kb:
            raise Failure("--guest kvmkit needs a kvmkit --vmm or --kvmkit-bin")
        cfg.guest = os.path.join(tmp, "kvmkit-guest.elf")
        r = subprocess.run([os.path.expanduser(kb), "image", "guest", "--out", cfg.guest],
                           capture_output=True, text=True)
        if r.returncode != 0 or not os.path.isfile(cfg.guest):
            raise Failure(f"kvmkit image guest failed: {r.stdout}{r.stderr}")
        cfg.marker = cfg.marker or "primes: N="
        cfg.boot_args = cfg.boot_args if cfg.boot_args is not None else KVMKIT_BOOT_ARGS
    elif cfg.guest:
        cfg.guest = os.path.abspath(os.path.expanduser(cfg.guest))
        if not os.path.isfile(cfg.guest):
            raise Failure(f"no guest at {cfg.guest}")
    else:
        cfg.guest = tiny_guest(tmp)
    cfg.marker = cfg.marker or "GUEST-READY"
    if cfg.boot_args is None:
        cfg.boot_args = DEFAULT_BOOT_ARGS
    if cfg.hold_guest is None:
        cfg.hold_guest = os.path.join(tmp, "hold.elf")
        with open(cfg.hold_guest, "wb") as f:
            f.write(hold_guest_elf())
        cfg.hold_marker = cfg.hold_marker or "GUEST-READY hold"
    elif cfg.hold_guest != "same":
        cfg.hold_guest = os.path.abspath(os.path.expanduser(cfg.hold_guest))
    cfg.hold_marker = cfg.hold_marker or cfg.marker
    if cfg.hold_boot_args is None:
        cfg.hold_boot_args = DEFAULT_BOOT_ARGS if cfg.hold_marker == "GUEST-READY hold" \
            else cfg.boot_args

    print(f"host: {platform.node()} {platform.release()}, {os.cpu_count()} CPUs; "
          f"{cfg.rounds} rounds, order rotating; {cfg.requests} GET / per mode")
    print(f"guest (b): {cfg.guest}  marker {cfg.marker!r}  boot_args {cfg.boot_args!r}")
    print(f"guest (c, d): {'the same VM' if cfg.hold_guest == 'same' else cfg.hold_guest}"
          f"  marker {cfg.hold_marker!r}")
    for v in vms:
        print(f"{v['name']}: {v['version']}  [{v['mode']}]  "
              f"{shlex.join(v['argv'](os.path.join(tmp, v['name'] + '.sock')))}")

    samples = {v["name"]: [] for v in vms}
    for rnd in range(cfg.rounds):
        k = rnd % len(vms)
        for vm in vms[k:] + vms[:k]:
            try:
                s = one_round(vm, cfg, rnd, tmp)
            except Failure as e:
                print(f"round {rnd + 1}: {vm['name']}: FAILED: {e}", file=sys.stderr)
                s = None
            samples[vm["name"]].append(s)
            if s:
                print(f"round {rnd + 1} {vm['name']:12s} a {s['a_wall_ms']:7.2f} ms wall "
                      f"{s['a_cpu_ms'] if s['a_cpu_ms'] is not None else float('nan'):6.2f} ms CPU | "
                      f"b {s['b_marker_ms']:7.2f} ms | c ka p50 {s['c_ka_p50_us']:6.1f} us, new "
                      f"p50 {s['c_new_p50_us']:6.1f} us | d RSS {s['d_rss_kib']} KiB, "
                      f"HWM {s['d_hwm_kib']} KiB", flush=True)
        # the order of the VMMs' samples is by round, whichever ran first in it
    report(vms, samples)
    if cfg.json:
        out = {
            "host": {"node": platform.node(), "kernel": platform.release(),
                     "cpus": os.cpu_count()},
            "config": {"rounds": cfg.rounds, "requests": cfg.requests, "guest": cfg.guest,
                       "marker": cfg.marker, "boot_args": cfg.boot_args,
                       "hold_guest": cfg.hold_guest, "hold_marker": cfg.hold_marker,
                       "hold_boot_args": cfg.hold_boot_args,
                       "machine_config": {"vcpu_count": 1, "mem_size_mib": 256}},
            "vmms": [{k: v[k] for k in ("name", "path", "kvmkit", "mode", "version")}
                     | {"argv": v["argv"]("SOCK")} for v in vms],
            "samples": samples,
        }
        with open(cfg.json, "w") as f:
            json.dump(out, f, indent=1)
        print(f"\nraw samples: {cfg.json}")
    if any(s is None for ss in samples.values() for s in ss):
        sys.exit(1)


if __name__ == "__main__":
    main()
