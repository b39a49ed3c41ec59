#!/usr/bin/env python3
"""Measures `kvmkit vm list` and parallel starts (issue 14's numbers).

Defines --defined VMs running kvmkit's guest (--workload, --memory MiB) in a
fresh state directory, starts --running of them in parallel (`vm start`
processes at once: wall time), reads each VMM's RSS, then times --rounds
`kvmkit vm list --json` (p50/p99), each round followed by `kvmkit --version`
(a process that does nothing: the floor on this host at that moment) and,
with --daemon, by the daemon's own answer on its socket (no process
started). Prints the host's load average and how busy its CPUs were while
timing, and kills what it started.
"""
import argparse, concurrent.futures, json, os, shutil, socket, statistics, subprocess, sys, tempfile, time

p = argparse.ArgumentParser()
p.add_argument("--kvmkit", default="target/debug/kvmkit")
p.add_argument("--defined", type=int, default=50)
p.add_argument("--running", type=int, default=20)
p.add_argument("--rounds", type=int, default=100)
p.add_argument("--workload", default="ticks:1000")
p.add_argument("--memory", type=int, default=32)
p.add_argument("--paused", action="store_true", help="also time list with every VM paused")
p.add_argument("--daemon", action="store_true", help="run kvmkit serve on the state directory (vm list asks it)")
p.add_argument("--vm-cpu-cgroup", metavar="DIR",
               help="an experiment (root, cgroup v1 cpu controller): move every started VM into this new cgroup, "
                    "e.g. /sys/fs/cgroup/cpu/kvmkit-measure, so the VMs together weigh as one process group "
                    "(libvirt's machine.slice); removed at the end")
a = p.parse_args()
K = os.path.abspath(a.kvmkit)
state = tempfile.mkdtemp(prefix="kvmkit-measure-")

def vm(*args, check=True):
    r = subprocess.run([K, "vm", *args, "--state-dir", state], capture_output=True, text=True)
    if check and r.returncode != 0:
        sys.exit(f"kvmkit vm {' '.join(args)}: {r.stderr.strip()}")
    return r

def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]

def cpu_times():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v), v[3] + v[4]  # total, idle + iowait

def ask_daemon():
    s = socket.socket(socket.AF_UNIX)
    s.connect(f"{state}/.serve.sock")
    s.sendall(b"list json\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    assert data.startswith(b"ok\n"), data[:80]
    return json.loads(data[3:])

def time_list(n, floor=False):
    """n timed `vm list --json`; with floor, each followed by a timed
    `kvmkit --version` and (daemon) a timed answer on the daemon's socket."""
    out, base, sock = [], [], []
    busy0 = cpu_times()
    for _ in range(n):
        t = time.perf_counter()
        r = vm("list", "--json")
        out.append((time.perf_counter() - t) * 1000)
        rows = json.loads(r.stdout)
        if floor:
            t = time.perf_counter()
            subprocess.run([K, "--version"], capture_output=True)
            base.append((time.perf_counter() - t) * 1000)
            if daemon:
                t = time.perf_counter()
                ask_daemon()
                sock.append((time.perf_counter() - t) * 1000)
    busy1 = cpu_times()
    total, idle = busy1[0] - busy0[0], busy1[1] - busy0[1]
    load = f"load average {os.getloadavg()[0]:.1f}, CPUs {100 * (total - idle) / max(total, 1):.0f}% busy"
    return out, rows, base, sock, load

names = [f"vm{i:02d}" for i in range(a.defined)]
daemon = None
try:
    for n in names:
        vm("define", n, "--guest", "--workload", a.workload, "--memory", str(a.memory))
    t1 = time.perf_counter(); vm("start", names[0]); one = time.perf_counter() - t1
    vm("kill", names[0])
    started = names[: a.running]
    if a.daemon:
        daemon = subprocess.Popen([K, "serve", "--state-dir", state], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        time.sleep(1)
    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(len(started)) as ex:
        list(ex.map(lambda n: vm("start", n), started))
    wall = time.perf_counter() - t
    if a.vm_cpu_cgroup:
        os.makedirs(a.vm_cpu_cgroup, exist_ok=True)
        for n in started:
            pid = open(f"{state}/{n}/pid").read().split()[0]
            with open(f"{a.vm_cpu_cgroup}/cgroup.procs", "w") as f:
                f.write(pid)
        print(f"the {len(started)} VMs moved into {a.vm_cpu_cgroup} (cpu.shares {open(a.vm_cpu_cgroup + '/cpu.shares').read().strip()})")
    time.sleep(2)
    rss = []
    for n in started:
        pid = int(open(f"{state}/{n}/pid").read().split()[0])
        kb = next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS:"))
        rss.append(kb / 1024)
    ms, rows, base, sock, load = time_list(a.rounds, floor=True)
    running = sum(r["state"] == "running" for r in rows)
    print(f"defined {a.defined}, running {running} ({a.workload}, {a.memory} MiB), daemon {'on' if a.daemon else 'off'}")
    print(f"one vm start: {one:.2f} s; {len(started)} in parallel: {wall:.2f} s wall")
    print(f"VMM RSS per VM: median {statistics.median(rss):.1f} MiB, max {max(rss):.1f} MiB")
    print(f"vm list --json over {a.rounds} runs: p50 {pct(ms, .5):.1f} ms, p99 {pct(ms, .99):.1f} ms, max {max(ms):.1f} ms ({load})")
    print(f"  baseline, kvmkit --version between them: p50 {pct(base, .5):.1f} ms, p99 {pct(base, .99):.1f} ms")
    if sock:
        print(f"  the daemon's answer on its socket (no process start): p50 {pct(sock, .5):.1f} ms, p99 {pct(sock, .99):.1f} ms")
    if daemon:
        daemon.kill(); daemon.wait()
        daemon = subprocess.Popen([K, "serve", "--state-dir", state], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, text=True)
        time.sleep(3)
        _, rows, *_ = time_list(1)
        alive = sum(r["state"] == "running" for r in rows)
        daemon.kill(); out = daemon.communicate()[0]; daemon = None
        adopted = out.count("adopted VM")
        print(f"daemon restarted: {adopted} VMs re-adopted, {alive} still running")
    if a.paused:
        for n in started:
            vm("pause", n)
        ms, _, base, _, load = time_list(a.rounds, floor=True)
        print(f"  with the {len(started)} paused: p50 {pct(ms, .5):.1f} ms, p99 {pct(ms, .99):.1f} ms ({load}); --version p50 {pct(base, .5):.1f} ms, p99 {pct(base, .99):.1f} ms")
finally:
    if daemon:
        daemon.kill(); daemon.wait()
    for n in names:
        if os.path.exists(f"{state}/{n}/pid"):
            vm("kill", n, check=False)
    shutil.rmtree(state, ignore_errors=True)
    if a.vm_cpu_cgroup:
        time.sleep(0.5)
        try:
            os.rmdir(a.vm_cpu_cgroup)
        except OSError as e:
            print(f"cannot remove {a.vm_cpu_cgroup}: {e}")
