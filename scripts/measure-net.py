#!/usr/bin/env python3
"""virtio-net throughput of kvmkit vs QEMU microvm, same test-guest ELF, same tap.

Everything runs inside a network namespace this script creates (and deletes):
a persistent tap `mtap0` with 10.0.9.1/30 on the host side, the guest at
10.0.9.2 with a fixed MAC. No frame leaves the namespace; nothing is sent to
any address of the host's own namespace.

* guest -> host: `net-tx:N:SIZE`; frames counted on the tap's rx_packets
  counter, sampled every ~1 ms, timed between 10 % and 90 % of N (host
  clock). The guest's own figure (guest TSC) is printed alongside.
* host -> guest: `net-rx:SECONDS`; once the guest is up, a raw AF_PACKET
  sender in the namespace floods the guest's MAC with UDP frames of SIZE
  bytes for a fixed time T; rate = frames the guest counted / T. The
  sender's offered rate and the tap's tx_dropped (frames the VMM did not
  read in time) are printed too.

Sizes are Ethernet frame lengths without FCS (64 and 1500 by default).
With perf(1) installed, the VM process's MMIO and port I/O exits
(kvm:kvm_mmio, kvm:kvm_pio: the guest's queue notifications among them; a
kvm_pvm host fires no kvm:kvm_exit/kvm_entry) are counted over the same
window as the frames and printed per frame (`--no-exits` to skip).
Runs are interleaved (kvmkit, QEMU, kvmkit, ...); the table shows medians and
kvmkit/QEMU ratios. Needs root, /dev/kvm, /dev/net/tun, qemu-system-x86_64,
iproute2; gcc for the fast sender (else a slower Python one); ping(8) for the round trips
(`ping -f` from the host to the guest's net-rx, which answers ICMP echo: kvmkit with
`--net ...,poll=off` and `poll=auto`, and QEMU; skipped without it). Usage:

    cargo build --release
    sudo scripts/measure-net.py [--rounds 3] [--tx-frames 64=N,1500=N] [--rx-seconds 3]
                                [--ping N | --ping-only] [--net-poll off|auto|US] [--show-counters]
"""
import argparse, glob, os, re, shutil, signal, statistics, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KVMKIT = os.path.join(ROOT, "target/release/kvmkit")
TAP = "mtap0"
HOST_IP, GUEST_IP, PREFIX = "10.0.9.1", "10.0.9.2", 30
GUEST_MAC = "52:54:00:6b:76:01"
ENV_INNER = "KVMKIT_MEASURE_NET_NS"
NET_POLL = "off"  # kvmkit's --net ...,poll= (--net-poll)
SHOW_COUNTERS = False  # print kvmkit's NIC counters after each run (--show-counters)
ENV_OUTER_NS = "KVMKIT_MEASURE_NET_OUTER"

FLOOD_C = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
/* flood IFNAME DSTMAC SIZE SECONDS: raw frames (UDP to GUEST_IP:9) for SECONDS. */
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static unsigned short csum(unsigned char *p, int n) {
    unsigned s = 0; for (int i = 0; i + 1 < n; i += 2) s += (p[i] << 8) | p[i + 1];
    while (s >> 16) s = (s & 0xffff) + (s >> 16); return ~s;
}
int main(int argc, char **argv) {
    if (argc != 7) return 2;
    int size = atoi(argv[3]); double secs = atof(argv[4]);
    int fd = socket(AF_PACKET, SOCK_RAW, 0); if (fd < 0) { perror("socket"); return 1; }
    int one = 1; setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one);
    struct sockaddr_ll a = {0}; a.sll_family = AF_PACKET; a.sll_ifindex = if_nametoindex(argv[1]); a.sll_halen = 6;
    if (!a.sll_ifindex) { perror("if_nametoindex"); return 1; }
    unsigned char f[2048] = {0}; unsigned m[6];
    sscanf(argv[2], "%x:%x:%x:%x:%x:%x", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]);
    for (int i = 0; i < 6; i++) { f[i] = m[i]; a.sll_addr[i] = m[i]; }
    unsigned char src[6] = {0x02, 0x6b, 0x76, 0, 0, 1}; memcpy(f + 6, src, 6); f[12] = 8; f[13] = 0;
    unsigned char *ip = f + 14; ip[0] = 0x45; ip[2] = (size - 14) >> 8; ip[3] = (size - 14) & 0xff; ip[6] = 0x40; ip[8] = 64; ip[9] = 17;
    inet_pton(AF_INET, argv[5], ip + 12); inet_pton(AF_INET, argv[6], ip + 16);
    unsigned short c = csum(ip, 20); ip[10] = c >> 8; ip[11] = c & 0xff;
    ip[20] = 0x9c; ip[21] = 0x40; ip[23] = 9; ip[24] = (size - 34) >> 8; ip[25] = (size - 34) & 0xff;
    enum { B = 64 }; struct mmsghdr v[B]; struct iovec io = { f, (size_t)size };
    for (int i = 0; i < B; i++) { memset(&v[i], 0, sizeof v[i]); v[i].msg_hdr.msg_iov = &io; v[i].msg_hdr.msg_iovlen = 1;
        v[i].msg_hdr.msg_name = &a; v[i].msg_hdr.msg_namelen = sizeof a; }
    unsigned long long sent = 0, errs = 0; double t0 = now(), end = t0 + secs, t;
    while ((t = now()) < end) { int n = sendmmsg(fd, v, B, 0); if (n > 0) sent += n; else errs++; }
    printf("sent=%llu errors=%llu seconds=%.6f\n", sent, errs, t - t0);
    return 0;
}
"""


def sh(*cmd, check=True):
    return subprocess.run(cmd, check=check, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def guest_elf(path=None):
    if path:
        return path
    elfs = sorted(glob.glob(os.path.join(ROOT, "target/release/build/kvmkit-guest-image-*/out/kvmkit-guest")),
                  key=os.path.getmtime)
    if not elfs or not os.path.exists(KVMKIT):
        sys.exit("build first: cargo build --release")
    return elfs[-1]


def stat(name):
    with open(f"/sys/class/net/{TAP}/statistics/{name}") as f:
        return int(f.read())


def build_flood():
    if not shutil.which("gcc"):
        return None
    d = tempfile.mkdtemp(prefix="kvmkit-netflood-")
    src, exe = os.path.join(d, "flood.c"), os.path.join(d, "flood")
    with open(src, "w") as f:
        f.write(FLOOD_C)
    r = subprocess.run(["gcc", "-O2", "-o", exe, src], stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        print("gcc failed, using the Python sender:", r.stderr, file=sys.stderr)
        return None
    return exe


def py_flood(size, seconds):
    import socket, struct
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((TAP, 0))
    mac = bytes(int(x, 16) for x in GUEST_MAC.split(":"))
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, size - 14, 0, 0x4000, 64, 17, 0,
                     socket.inet_aton(HOST_IP), socket.inet_aton(GUEST_IP))
    words = struct.unpack("!10H", ip)
    c = sum(words)
    while c >> 16:
        c = (c & 0xffff) + (c >> 16)
    ip = ip[:10] + struct.pack("!H", ~c & 0xffff) + ip[12:]
    udp = struct.pack("!HHHH", 40000, 9, size - 34, 0)
    frame = mac + b"\x02\x6b\x76\x00\x00\x01" + b"\x08\x00" + ip + udp + bytes(size - 42)
    sent, t0 = 0, time.monotonic()
    end = t0 + seconds
    while time.monotonic() < end:
        for _ in range(64):
            try:
                s.send(frame)
                sent += 1
            except OSError:
                pass
    return sent, time.monotonic() - t0


class Vm:
    """kvmkit or QEMU on the tap, console read line by line."""

    def __init__(self, vmm, workload, elf, poll=None):
        net = f"{GUEST_MAC},{GUEST_IP},{HOST_IP},{PREFIX}"
        if vmm == "kvmkit":
            cmd = [KVMKIT, "run", "--guest", "--no-stdin", "--memory", "256", "--timeout", "120",
                   "--net", f"tap={TAP},mac={GUEST_MAC},poll={poll or NET_POLL}", "--workload", workload]
        else:
            cmd = ["qemu-system-x86_64", "-M", "microvm,acpi=off", "-accel", "kvm",
                   "-cpu", "host,-arch-capabilities,+invtsc", "-m", "256", "-smp", "1",
                   "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
                   "-global", "virtio-mmio.force-legacy=false",
                   "-device", "isa-debug-exit,iobase=0x600,iosize=4",
                   "-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no",
                   "-device", f"virtio-net-device,netdev=n0,mac={GUEST_MAC}",
                   "-kernel", elf, "-append", f"kvmkit.workload={workload} kvmkit.net={net}"]
        # kvmkit logs its NIC's counters at debug level when the device ends.
        env = dict(os.environ, KVMKIT_LOG="kvmkit_vmm::virtio::net=debug") if SHOW_COUNTERS and vmm == "kvmkit" else None
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                  text=True, errors="replace", env=env)
        self.lines, self.cond = [], threading.Condition()
        self.err = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self.err.extend(self.p.stderr), daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.lines.append(None)
            self.cond.notify_all()

    def wait_for(self, pattern, limit):
        rx = re.compile(pattern)
        deadline = time.monotonic() + limit
        with self.cond:
            while True:
                for l in self.lines:
                    if l is None:
                        return None
                    m = rx.search(l)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def show_counters(self):
        """kvmkit's NIC counters (its debug line at the device's end), with --show-counters."""
        time.sleep(0.1)
        for l in list(self.err):
            if SHOW_COUNTERS and "virtio-net" in l and "ends:" in l:
                print("   ", re.sub(r"\x1b\[[0-9;]*m", "", l.strip()), flush=True)

    def stop(self, limit=30):
        try:
            self.p.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()

    def console(self):
        return "\n".join(l for l in self.lines if l is not None) + "\n" + "".join(self.err)


class Exits:
    """perf stat of the VM process's MMIO and PIO exits over a window."""

    EVENTS = "kvm:kvm_mmio,kvm:kvm_pio"

    def __init__(self, pid, enabled):
        self.p = None
        if not enabled:
            return
        self.out = tempfile.NamedTemporaryFile(prefix="kvmkit-net-perf-", suffix=".txt", delete=False).name
        self.p = subprocess.Popen(["perf", "stat", "-x,", "-e", self.EVENTS, "-p", str(pid), "-o", self.out],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.05)

    def stop(self):
        """{'exits': MMIO + PIO, 'mmio': N} counted since the start (None without perf)."""
        if self.p is None:
            return None
        self.p.send_signal(signal.SIGINT)
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        counts = {}
        with open(self.out) as f:
            for line in f:
                parts = line.strip().split(",")
                if len(parts) >= 3 and parts[0].isdigit():
                    counts[parts[2].split(":")[-1]] = int(parts[0])
        os.unlink(self.out)
        if "kvm_mmio" not in counts:
            return None
        return {"exits": counts["kvm_mmio"] + counts.get("kvm_pio", 0), "mmio": counts["kvm_mmio"]}


def per_frame(x):
    """'; exits/frame E (MMIO M)' when counted."""
    if x.get("exits") is None or not x.get("window_frames"):
        return ""
    n = x["window_frames"]
    return f"; MMIO+PIO exits/frame {x['exits']['exits'] / n:.3f}"


def tx_run(vmm, elf, frames, size, exits=False):
    base_p, base_b = stat("rx_packets"), stat("rx_bytes")
    lo, hi = base_p + frames // 10, base_p + frames * 9 // 10
    t_lo = t_hi = p_lo = p_hi = None
    perf = None
    vm = Vm(vmm, f"net-tx:{frames}:{size}", elf)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        p, t = stat("rx_packets"), time.perf_counter()
        if t_lo is None and p >= lo:
            t_lo, p_lo = t, p
            perf = Exits(vm.p.pid, exits)
        if p >= hi:
            t_hi, p_hi = t, p
            break
        if vm.p.poll() is not None and stat("rx_packets") < hi:
            break
        time.sleep(0.0005)
    counted_exits = perf.stop() if perf else None
    done = vm.wait_for(r"net-tx: frames=(\d+) .*frames_per_s=(\d+)", 30)
    vm.stop()
    vm.show_counters()
    counted = stat("rx_packets") - base_p
    if t_hi is None or t_lo is None or t_hi <= t_lo or done is None:
        raise RuntimeError(f"{vmm} net-tx:{frames}:{size}: host counted {counted} frames\n{vm.console()}")
    fps = (p_hi - p_lo) / (t_hi - t_lo)
    return {"fps": fps, "mbit": fps * size * 8 / 1e6, "guest_fps": int(done.group(2)), "counted": counted,
            "guest_frames": int(done.group(1)), "exits": counted_exits, "window_frames": p_hi - p_lo}


def rx_run(vmm, elf, seconds, size, flood, exits=False):
    vm = Vm(vmm, f"net-rx:{seconds + 4}", elf)
    if vm.wait_for(r"net-rx: guest ", 30) is None:
        vm.stop(1)
        raise RuntimeError(f"{vmm}: guest did not come up\n{vm.console()}")
    time.sleep(0.2)
    drop0 = stat("tx_dropped")
    perf = Exits(vm.p.pid, exits)
    if flood:
        out = sh(flood, TAP, GUEST_MAC, str(size), str(seconds), HOST_IP, GUEST_IP).stdout
        m = re.search(r"sent=(\d+) errors=\d+ seconds=([\d.]+)", out)
        sent, secs = int(m.group(1)), float(m.group(2))
    else:
        sent, secs = py_flood(size, seconds)
    dropped = stat("tx_dropped") - drop0
    counted_exits = perf.stop()
    m = vm.wait_for(r"net-rx: frames=(\d+) bytes=(\d+)", seconds + 40)
    vm.stop()
    vm.show_counters()
    if m is None:
        raise RuntimeError(f"{vmm} net-rx: no result line\n{vm.console()}")
    frames = int(m.group(1))
    fps = frames / secs
    # The tap takes what fits its queue (sent) and drops the rest (tx_dropped).
    # Exits are counted while the sender runs; nearly all frames come then.
    return {"fps": fps, "mbit": fps * size * 8 / 1e6, "offered": (sent + dropped) / secs, "tap_dropped": dropped,
            "guest_frames": frames, "exits": counted_exits, "window_frames": frames}


def ping_run(vmm, elf, count, poll=None):
    """Round trips: `ping -f -c COUNT` (the next echo goes out when the reply
    came) to the guest's net-rx, which answers ICMP echo. Returns the mean RTT in us."""
    vm = Vm(vmm, "net-rx:5", elf, poll)
    if vm.wait_for(r"net-rx: guest ", 30) is None:
        vm.stop(1)
        raise RuntimeError(f"{vmm}: guest did not come up\n{vm.console()}")
    time.sleep(0.2)
    sh("ping", "-c", "3", "-i", "0.2", "-q", GUEST_IP, check=False)  # ARP, warm caches
    out = sh("ping", "-f", "-c", str(count), "-q", GUEST_IP, check=False).stdout
    vm.stop()
    vm.show_counters()
    m = re.search(r"(\d+) received.*?= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms", out, re.S)
    if m is None or int(m.group(1)) < count * 0.99:
        raise RuntimeError(f"{vmm} ping: {out.strip()}")
    return float(m.group(3)) * 1000


def inner(args):
    if str(os.stat("/proc/self/ns/net").st_ino) == os.environ.get(ENV_OUTER_NS):
        sys.exit("refusing to run in the caller's network namespace")
    global KVMKIT, NET_POLL, SHOW_COUNTERS
    KVMKIT = args.kvmkit or KVMKIT
    NET_POLL = args.net_poll
    SHOW_COUNTERS = args.show_counters
    elf = guest_elf(args.guest_elf)
    sh("ip", "link", "set", "lo", "up")
    sh("ip", "tuntap", "add", "dev", TAP, "mode", "tap", "vnet_hdr")
    sh("ip", "addr", "add", f"{HOST_IP}/{PREFIX}", "dev", TAP)
    sh("ip", "link", "set", TAP, "up")
    flood = build_flood()
    exits = not args.no_exits and shutil.which("perf") is not None
    print(f"guest ELF {os.path.relpath(elf, ROOT)}; sender: {'C sendmmsg' if flood else 'Python'}; "
          f"{args.rounds} interleaved rounds; CPUs: {os.cpu_count()}; exits counted: {'yes' if exits else 'no'}; "
          f"kvmkit --net ...,poll={NET_POLL}",
          flush=True)
    tx_frames = dict((int(k), int(v)) for k, v in (kv.split("=") for kv in args.tx_frames.split(",")))
    sizes = sorted(tx_frames)
    res = {}
    for r in range(0 if args.ping_only else args.rounds):
        order = ["kvmkit", "qemu"] if r % 2 == 0 else ["qemu", "kvmkit"]
        for size in sizes:
            for vmm in order if not args.rx_only else []:
                x = tx_run(vmm, elf, tx_frames[size], size, exits)
                res.setdefault(("guest->host", size, vmm), []).append(x)
                print(f"round {r} {vmm:6s} tx {size:4d} B: {x['fps']:>10.0f} frames/s {x['mbit']:8.1f} Mbit/s "
                      f"(guest's clock {x['guest_fps']} frames/s, tap counted {x['counted']}{per_frame(x)})", flush=True)
            for vmm in order:
                x = rx_run(vmm, elf, args.rx_seconds, size, flood, exits)
                res.setdefault(("host->guest", size, vmm), []).append(x)
                print(f"round {r} {vmm:6s} rx {size:4d} B: {x['fps']:>10.0f} frames/s {x['mbit']:8.1f} Mbit/s "
                      f"(offered {x['offered']:.0f}/s, tap tx_dropped {x['tap_dropped']}{per_frame(x)})", flush=True)
    pings = {}
    if args.ping and not shutil.which("ping"):
        print("no ping(8) here (iputils-ping): round trips skipped", flush=True)
    elif args.ping:
        cols = [("kvmkit", "off"), ("kvmkit", "auto"), ("qemu", None)]
        for r in range(args.rounds):
            for vmm, poll in cols if r % 2 == 0 else cols[::-1]:
                rtt = ping_run(vmm, elf, args.ping, poll)
                pings.setdefault((vmm, poll), []).append(rtt)
                name = f"kvmkit poll={poll}" if poll else vmm
                print(f"round {r} {name:16s} ping -f: {rtt:7.1f} us mean round trip", flush=True)
    if pings:
        k0, k1, q = (statistics.median(pings[c]) for c in [("kvmkit", "off"), ("kvmkit", "auto"), ("qemu", None)])
        print(f"\n| round trip (ping -f, {args.ping} echoes) | kvmkit poll=off | kvmkit poll=auto | QEMU | "
              f"QEMU/kvmkit off | QEMU/kvmkit auto |")
        print("|---|---|---|---|---|---|")
        print(f"| mean RTT | {k0:.1f} us | {k1:.1f} us | {q:.1f} us | {q / k0:.2f} | {q / k1:.2f} |")
    med = lambda v, k: statistics.median(x[k] for x in v)
    print()
    if not res:
        return
    def epf(v):
        xs = [x["exits"]["exits"] / x["window_frames"] for x in v if x.get("exits") and x.get("window_frames")]
        return f"{statistics.median(xs):.3f}" if xs else "-"
    print(f"| direction   | frame | kvmkit frames/s | QEMU frames/s | kvmkit Mbit/s | QEMU Mbit/s | ratio kvmkit/QEMU "
          f"| kvmkit exits/frame | QEMU exits/frame |")
    print(f"|-------------|-------|-----------------|---------------|---------------|-------------|-------------------"
          f"|--------------------|------------------|")
    for d in ["host->guest"] if args.rx_only else ["guest->host", "host->guest"]:
        for size in sizes:
            k, q = res[(d, size, "kvmkit")], res[(d, size, "qemu")]
            kf, qf = med(k, "fps"), med(q, "fps")
            print(f"| {d} | {size:4d} B | {kf:15.0f} | {qf:13.0f} | {med(k, 'mbit'):13.1f} | "
                  f"{med(q, 'mbit'):11.1f} | {kf / qf:17.2f} | {epf(k):>18} | {epf(q):>16} |")
    print(f"\nmedians of {args.rounds}; host->guest offered (sender) rate, median: " + ", ".join(
        f"{size} B {statistics.median(x['offered'] for x in res[('host->guest', size, 'kvmkit')] + res[('host->guest', size, 'qemu')]):.0f}/s"
        for size in sizes))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tx-frames", default="64=1000000,1500=500000", help="SIZE=FRAMES,... for net-tx")
    ap.add_argument("--rx-seconds", type=int, default=3, help="flood time per host->guest run")
    ap.add_argument("--kvmkit", help="kvmkit binary (default target/release/kvmkit)")
    ap.add_argument("--guest-elf", help="test-guest ELF (default: the newest release build's)")
    ap.add_argument("--rx-only", action="store_true", help="host->guest only")
    ap.add_argument("--net-poll", default="off", help="kvmkit's --net ...,poll= (off, auto or microseconds)")
    ap.add_argument("--ping", type=int, default=2000,
                    help="round trips per ping -f run (kvmkit poll=off and auto, and QEMU; 0 to skip)")
    ap.add_argument("--ping-only", action="store_true", help="round trips only")
    ap.add_argument("--show-counters", action="store_true", help="print kvmkit's NIC counters after each run")
    ap.add_argument("--no-exits", action="store_true", help="do not count VM exits with perf")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        if not os.environ.get(ENV_INNER) or not os.environ.get(ENV_OUTER_NS):
            sys.exit("--inner is for the script itself")
        return inner(args)
    if os.geteuid() != 0:
        sys.exit("needs root (ip netns, tap)")
    for need in ["/dev/kvm", "/dev/net/tun"]:
        if not os.path.exists(need):
            sys.exit(f"needs {need}")
    if not shutil.which("qemu-system-x86_64") or not shutil.which("ip"):
        sys.exit("needs qemu-system-x86_64 and iproute2")
    if not args.kvmkit or not args.guest_elf:
        guest_elf()
    ns = f"kvmkit-measure-net-{os.getpid()}"
    sh("ip", "netns", "add", ns)
    try:
        env = dict(os.environ, **{ENV_INNER: ns, ENV_OUTER_NS: str(os.stat("/proc/self/ns/net").st_ino)})
        r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, os.path.abspath(__file__), "--inner"]
                           + sys.argv[1:], env=env)
        sys.exit(r.returncode)
    finally:
        sh("ip", "netns", "del", ns, check=False)


if __name__ == "__main__":
    main()
