//! virtio-net end to end: kvmkit runs inside network namespaces these tests
//! create (`ip netns add`) and removes again; all traffic stays inside them.
//! Nothing touches the host's own namespace. Skipped (with a printed reason)
//! only where the host has no /dev/net/tun.

mod common;

use std::io::Read;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A network namespace, deleted (with everything in it) when dropped.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("kvmkit-it-{tag}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "`ip netns add {name}` failed: these tests need root and iproute2");
        let ns = Self(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, program]);
        c
    }

    /// Runs `ip ARGS` in the namespace; returns stdout.
    fn ip(&self, args: &[&str]) -> String {
        let out = self.cmd("ip").args(args).output().expect("ip");
        assert!(
            out.status.success(),
            "ip {args:?} in {}: {}",
            self.0,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Interface names in the namespace.
    fn links(&self) -> Vec<String> {
        self.ip(&["-o", "link", "show"])
            .lines()
            .filter_map(|l| {
                l.split(':')
                    .nth(1)
                    .map(|n| n.trim().split('@').next().unwrap_or("").to_owned())
            })
            .collect()
    }

    /// Interface `name`'s rx packet counter.
    fn rx_packets(&self, name: &str) -> u64 {
        let text = self.ip(&["-s", "-o", "link", "show", "dev", name]);
        let mut parts = text.split('\\');
        while let Some(p) = parts.next() {
            if p.trim().starts_with("RX:") {
                let v = parts.next().unwrap_or("");
                return v.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0);
            }
        }
        panic!("no RX counters for {name}: {text}");
    }

    /// Sends `count` ICMP echo requests to `addr` from inside the namespace;
    /// returns how many were answered. Uses ping(8) when installed, else a
    /// raw socket opened from a thread moved into the namespace.
    fn ping(&self, addr: Ipv4Addr, count: u32) -> u32 {
        let has_ping = Command::new("ping").arg("-V").output().is_ok();
        if has_ping {
            let out = self
                .cmd("ping")
                .args(["-c", &count.to_string(), "-i", "0.3", "-W", "2", &addr.to_string()])
                .output()
                .expect("ping");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            eprintln!("{text}");
            return text
                .lines()
                .find_map(|l| {
                    let (_, rest) = l.split_once("transmitted, ")?;
                    rest.split_whitespace().next()?.parse().ok()
                })
                .unwrap_or(0);
        }
        let ns = self.0.clone();
        std::thread::spawn(move || raw_ping(&ns, addr, count))
            .join()
            .expect("raw ping")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// ICMP echo over a raw socket created inside namespace `ns` (this thread only).
fn raw_ping(ns: &str, addr: Ipv4Addr, count: u32) -> u32 {
    let f = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("netns");
    // SAFETY: setns with a netns fd affects only the calling thread.
    assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    let tv = libc::timeval { tv_sec: 1, tv_usec: 0 };
    // SAFETY: SO_RCVTIMEO reads a timeval.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    let mut answered = 0;
    for seq in 0..count as u16 {
        let mut pkt = [0u8; 64];
        pkt[0] = 8;
        pkt[4..6].copy_from_slice(&0x6b76u16.to_be_bytes());
        pkt[6..8].copy_from_slice(&seq.to_be_bytes());
        let c = checksum(&pkt);
        pkt[2..4].copy_from_slice(&c.to_be_bytes());
        // SAFETY: sends `pkt` to the sockaddr_in `sa`.
        unsafe {
            libc::sendto(
                fd,
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            )
        };
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            let mut buf = [0u8; 1500];
            // SAFETY: receives into `buf`.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 28 {
                break;
            }
            let ihl = usize::from(buf[0] & 0xf) * 4;
            let icmp = &buf[ihl..n as usize];
            if icmp[0] == 0 && icmp[6..8] == seq.to_be_bytes() && buf[12..16] == addr.octets() {
                answered += 1;
                break;
            }
        }
    }
    // SAFETY: closes the socket opened above.
    unsafe { libc::close(fd) };
    answered
}

fn skip() -> bool {
    if !std::path::Path::new("/dev/net/tun").exists() {
        eprintln!("skipped: this host has no /dev/net/tun");
        return true;
    }
    false
}

/// kvmkit running in a namespace, its console read line by line.
struct Vm {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl Vm {
    fn start(ns: &Netns, args: &[&str]) -> Self {
        let mut child = ns
            .cmd(common::kvmkit())
            .args(["run", "--guest", "--no-stdin", "--timeout", "90"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kvmkit");
        let mut out = child.stdout.take().expect("stdout");
        let mut err = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while let Ok(n) = out.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                while let Some(i) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=i).collect();
                    if tx.send(String::from_utf8_lossy(&line).trim_end().to_owned()).is_err() {
                        return;
                    }
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// Waits for a console line containing `marker`.
    fn wait_for(&mut self, marker: &str, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(l) => {
                    let hit = l.contains(marker);
                    self.seen.push(l.clone());
                    if hit {
                        return Some(l);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            }
        }
        None
    }

    /// Waits for the VM to end; returns (exit code, console, stderr).
    fn finish(mut self, limit: Duration) -> (Option<i32>, String, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break Some(s);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(500)) {
            self.seen.push(l);
        }
        let stderr = self.stderr.join().unwrap_or_default();
        (status.and_then(|s| s.code()), self.seen.join("\n"), stderr)
    }
}

/// The address after `guest ` in a `net-echo: guest A mac M ...` line.
fn guest_ip(line: &str) -> Ipv4Addr {
    let rest = line.split("guest ").nth(1).expect("guest address");
    rest.split_whitespace()
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

fn field(text: &str, key: &str) -> Option<u64> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

#[test]
fn host_pings_the_guest_and_teardown_leaves_no_tap() {
    if skip() {
        return;
    }
    let ns = Netns::new("ping");
    let mut vm = Vm::start(&ns, &["--net", "auto", "--workload", "net-echo:8"]);
    let line = vm
        .wait_for("net-echo: guest", Duration::from_secs(40))
        .unwrap_or_else(|| panic!("no guest line; console so far:\n{}", vm.seen.join("\n")));
    let ip = guest_ip(&line);
    assert_eq!(ip, Ipv4Addr::new(10, 0, 2, 2), "auto's first /30 in a fresh namespace");
    assert!(
        ns.links().iter().any(|l| l.starts_with("kvmkit")),
        "tap present while running"
    );
    let answered = ns.ping(ip, 3);
    let (code, console, stderr) = vm.finish(Duration::from_secs(60));
    assert_eq!(answered, 3, "ping answers\nconsole:\n{console}\nstderr:\n{stderr}");
    assert_eq!(code, Some(0), "console:\n{console}\nstderr:\n{stderr}");
    assert!(field(&console, "icmp_replies").unwrap_or(0) >= 3, "{console}");
    assert_eq!(ns.links(), vec!["lo".to_owned()], "teardown leaves no tap");
}

/// `--net ...,poll=`: a NIC whose worker polls after each frame answers
/// pings, and with a 10 ms window the guest's echo replies (sent within
/// microseconds of each request) are found by polling, not by a kick.
#[test]
fn a_polling_nic_finds_the_guests_replies_without_kicks() {
    if skip() {
        return;
    }
    let ns = Netns::new("poll");
    let mut vm = Vm::start(
        &ns,
        &[
            "--net",
            "auto,poll=10000us",
            "--workload",
            "net-echo:6",
            "--level",
            "Debug",
        ],
    );
    let line = vm
        .wait_for("net-echo: guest", Duration::from_secs(40))
        .unwrap_or_else(|| panic!("no guest line; console so far:\n{}", vm.seen.join("\n")));
    let answered = ns.ping(guest_ip(&line), 3);
    let (code, console, stderr) = vm.finish(Duration::from_secs(60));
    assert_eq!(answered, 3, "ping answers\nconsole:\n{console}\nstderr:\n{stderr}");
    assert_eq!(code, Some(0), "console:\n{console}\nstderr:\n{stderr}");
    let ends = stderr
        .lines()
        .find(|l| l.contains("virtio-net (") && l.contains(" ends: "))
        .unwrap_or_else(|| panic!("no device summary on stderr:\n{stderr}"));
    assert!(ends.contains("poll=10000us"), "{ends}");
    let count = |what: &str| -> u64 {
        let at = ends.find(what).unwrap_or_else(|| panic!("no {what:?} in {ends}"));
        ends[..at]
            .split_whitespace()
            .last()
            .and_then(|n| n.trim_end_matches(',').parse().ok())
            .unwrap_or_else(|| panic!("no count before {what:?} in {ends}"))
    };
    assert!(count(" polled") >= 1, "no frame found by polling: {ends}");
    assert!(count(" tx kicks") < 3, "each reply kicked the tx queue: {ends}");
}

#[test]
fn net_tx_frames_are_counted_on_the_host_tap() {
    if skip() {
        return;
    }
    let ns = Netns::new("tx");
    // A persistent tap with a /30, used through --net tap=NAME; the guest's
    // address (the other host of the /30) is inferred from it.
    ns.ip(&["tuntap", "add", "dev", "kvtx0", "mode", "tap", "vnet_hdr"]);
    ns.ip(&["addr", "add", "10.0.3.1/30", "dev", "kvtx0"]);
    ns.ip(&["link", "set", "kvtx0", "up"]);
    let before = ns.rx_packets("kvtx0");
    let results = std::env::temp_dir().join(format!("kvmkit-it-net-tx-{}.json", std::process::id()));
    let r = results.to_string_lossy().to_string();
    let vm = Vm::start(
        &ns,
        &["--results", &r, "--net", "tap=kvtx0", "--workload", "net-tx:1000:1500"],
    );
    let (code, console, stderr) = vm.finish(Duration::from_secs(90));
    assert_eq!(code, Some(0), "console:\n{console}\nstderr:\n{stderr}");
    assert!(console.contains("net-tx: guest 10.0.3.2"), "{console}");
    let counted = ns.rx_packets("kvtx0") - before;
    assert!(
        (1000..1100).contains(&counted),
        "tap rx_packets grew by {counted} (1000 frames + ARP)\n{console}"
    );
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&results).expect("results")).expect("json");
    let _ = std::fs::remove_file(&results);
    let sent = json["reports"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == "net-tx"))
        .map(|r| r["value"].clone());
    assert_eq!(sent, Some(Value::from(1000)), "{json:#}");
    // The frames went out in bursts, one syscall each, where the host has
    // io_uring (the tx ring); else one write per frame.
    let nic = &json["devices"]["net0"];
    let (frames, writes) = (nic["tx_frames"].as_u64(), nic["tx_writes"].as_u64());
    let (Some(frames), Some(writes)) = (frames, writes) else {
        panic!("no tx counters in --results: {json:#}")
    };
    assert!(frames >= 1000, "{nic}");
    if host_has_io_uring() {
        assert!(
            writes * 4 <= frames,
            "tx ring: {writes} writes for {frames} frames\n{nic}"
        );
    } else {
        eprintln!("note: no io_uring on this host; a write per frame");
        assert_eq!(writes, frames, "{nic}");
    }
    assert!(
        ns.links().contains(&"kvtx0".to_owned()),
        "a tap kvmkit did not create stays"
    );
}

/// Whether this kernel lets this process make an io_uring.
fn host_has_io_uring() -> bool {
    // struct io_uring_params: 120 bytes.
    let mut params = [0u32; 30];
    // SAFETY: io_uring_setup writes at most sizeof(io_uring_params) into `params`.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    if fd < 0 {
        return false;
    }
    // SAFETY: `fd` was just returned to us.
    unsafe { libc::close(fd as i32) };
    true
}

#[test]
fn two_nics_answer_on_their_own_addresses() {
    if skip() {
        return;
    }
    let ns = Netns::new("two");
    let mut vm = Vm::start(&ns, &["--net", "auto", "--net", "auto", "--workload", "net-echo:10"]);
    let a = vm
        .wait_for("net-echo: guest", Duration::from_secs(40))
        .expect("first NIC line");
    let b = vm
        .wait_for("net-echo: guest", Duration::from_secs(10))
        .expect("second NIC line");
    let (ia, ib) = (guest_ip(&a), guest_ip(&b));
    assert_ne!(ia, ib);
    assert_ne!(a.split(" mac ").nth(1), b.split(" mac ").nth(1), "a MAC per NIC");
    let (na, nb) = (ns.ping(ia, 2), ns.ping(ib, 2));
    let (code, console, stderr) = vm.finish(Duration::from_secs(60));
    assert_eq!((na, nb), (2, 2), "console:\n{console}\nstderr:\n{stderr}");
    assert_eq!(code, Some(0), "{console}\n{stderr}");
    assert_eq!(ns.links(), vec!["lo".to_owned()], "teardown leaves no tap");
}

#[test]
fn network_setup_errors_say_what_is_wrong() {
    if skip() {
        return;
    }
    let ns = Netns::new("err");
    let vm = Vm::start(&ns, &["--net", "bridge=nobr0", "--workload", "idle"]);
    let (code, _, stderr) = vm.finish(Duration::from_secs(30));
    assert_ne!(code, Some(0));
    assert!(stderr.contains("bridge nobr0 does not exist"), "{stderr}");

    ns.ip(&["addr", "add", "10.0.2.1/24", "dev", "lo"]);
    let vm = Vm::start(&ns, &["--net", "auto,host-ip=10.0.2.1", "--workload", "idle"]);
    let (code, _, stderr) = vm.finish(Duration::from_secs(30));
    assert_ne!(code, Some(0));
    assert!(stderr.contains("already in use"), "{stderr}");
    assert_eq!(ns.links(), vec!["lo".to_owned()], "nothing left behind");

    let vm = Vm::start(&ns, &["--net", "auto,mac=01:00:5e:00:00:01", "--workload", "idle"]);
    let (code, _, stderr) = vm.finish(Duration::from_secs(30));
    assert_ne!(code, Some(0));
    assert!(stderr.contains("multicast"), "{stderr}");
}

/// Sends `count` UDP datagrams of `payload` bytes to `addr`:9 from a socket
/// opened in a thread moved into namespace `ns`; returns how many the
/// kernel took. The first one makes the namespace's kernel ARP for `addr`.
fn udp_flood(ns: &str, addr: Ipv4Addr, count: u32, payload: usize) -> u32 {
    let f = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("netns");
    // SAFETY: setns with a netns fd affects only the calling thread.
    assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp socket");
    let data = vec![0x5au8; payload];
    let mut sent = 0;
    for i in 0..count {
        // The first datagram waits in the neighbour queue until the guest
        // answers ARP; then pace lightly so the tap's queue never overflows.
        if i == 1 {
            std::thread::sleep(Duration::from_millis(500));
        }
        if sock.send_to(&data, (addr, 9)).is_ok() {
            sent += 1;
        }
        if i % 50 == 49 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    sent
}

#[test]
fn net_rx_counts_frames_from_the_host() {
    if skip() {
        return;
    }
    let ns = Netns::new("rx");
    ns.ip(&["tuntap", "add", "dev", "kvrx0", "mode", "tap", "vnet_hdr"]);
    ns.ip(&["addr", "add", "10.0.4.1/30", "dev", "kvrx0"]);
    ns.ip(&["link", "set", "kvrx0", "up"]);
    let results = std::env::temp_dir().join(format!("kvmkit-it-net-rx-{}.json", std::process::id()));
    let r = results.to_string_lossy().to_string();
    let mut vm = Vm::start(&ns, &["--results", &r, "--net", "tap=kvrx0", "--workload", "net-rx:6"]);
    let line = vm
        .wait_for("net-rx: guest", Duration::from_secs(40))
        .unwrap_or_else(|| panic!("no guest line; console so far:\n{}", vm.seen.join("\n")));
    let ip = guest_ip(&line);
    assert_eq!(ip, Ipv4Addr::new(10, 0, 4, 2));
    let name = ns.0.clone();
    let sent = std::thread::spawn(move || udp_flood(&name, ip, 1000, 200))
        .join()
        .expect("udp sender");
    let (code, console, stderr) = vm.finish(Duration::from_secs(60));
    assert_eq!(code, Some(0), "console:\n{console}\nstderr:\n{stderr}");
    assert_eq!(sent, 1000, "{console}");
    let frames = field(&console, "frames").unwrap_or(0);
    let bytes = field(&console, "bytes").unwrap_or(0);
    // 1000 UDP frames of 14 + 20 + 8 + 200 bytes, plus ARP (and IPv6 noise).
    assert!(
        (1000..1050).contains(&frames),
        "net-rx counted {frames} frames\n{console}"
    );
    assert!(bytes >= 1000 * 242, "net-rx counted {bytes} bytes\n{console}");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&results).expect("results")).expect("json");
    let _ = std::fs::remove_file(&results);
    let value = json["reports"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == "net-rx"))
        .map(|r| r["value"].clone());
    assert_eq!(value, Some(Value::from(frames)), "{json:#}");
}

/// `kvmkit ctl --api-sock SOCK ARGS...`; panics unless it succeeds.
fn ctl(sock: &std::path::Path, args: &[&str]) {
    let out = Command::new(common::kvmkit())
        .args(["ctl", "--api-sock", sock.to_str().expect("utf8")])
        .args(args)
        .output()
        .expect("kvmkit ctl");
    assert!(
        out.status.success(),
        "kvmkit ctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn wait_for_socket(sock: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "no API socket {}", sock.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A persistent tap NAME with 10.0.4.1/30, up, in `ns`.
fn snapshot_tap(ns: &Netns, name: &str) {
    ns.ip(&["tuntap", "add", "dev", name, "mode", "tap", "vnet_hdr"]);
    ns.ip(&["addr", "add", "10.0.4.1/30", "dev", name]);
    ns.ip(&["link", "set", name, "up"]);
}

#[test]
fn snapshot_restores_the_nic_and_clones_take_their_own_tap() {
    if skip() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("kvmkit-it-netsnap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let (state, mem, sock) = (dir.join("state"), dir.join("mem"), dir.join("a.sock"));
    let (s, m) = (state.to_str().expect("utf8"), mem.to_str().expect("utf8"));
    let a = Netns::new("snapa");
    snapshot_tap(&a, "kvsnap0");
    let mut vm = Vm::start(
        &a,
        &[
            "--api-sock",
            sock.to_str().expect("utf8"),
            "--net",
            "tap=kvsnap0",
            "--workload",
            "net-echo:40",
        ],
    );
    let line = vm
        .wait_for("net-echo: guest", Duration::from_secs(40))
        .unwrap_or_else(|| panic!("no guest line; console so far:\n{}", vm.seen.join("\n")));
    let ip = guest_ip(&line);
    assert_eq!(ip, Ipv4Addr::new(10, 0, 4, 2));
    assert_eq!(a.ping(ip, 2), 2, "the guest answers before the snapshot");
    wait_for_socket(&sock);
    ctl(&sock, &["pause"]);
    ctl(&sock, &["snapshot", "--state", s, "--mem", m]);
    let _ = vm.child.kill();
    let _ = vm.finish(Duration::from_secs(10));

    // Restored in the same namespace, on the same (persistent) tap.
    let restore = |ns: &Netns| {
        ns.cmd(common::kvmkit())
            .args(["run", "--no-stdin", "--restore-state", s, "--restore-mem", m])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kvmkit")
    };
    let mut child = restore(&a);
    let answered = a.ping(ip, 3);
    let _ = child.kill();
    let _ = child.wait();
    assert!(answered >= 2, "the restored guest answers on kvsnap0: {answered} of 3");

    // A clone in another namespace, its NIC renamed onto tap kvsnap1.
    let b = Netns::new("snapb");
    snapshot_tap(&b, "kvsnap1");
    let sock_b = dir.join("b.sock");
    let mut clone = b
        .cmd(common::kvmkit())
        .args(["run", "--no-stdin", "--api-sock", sock_b.to_str().expect("utf8")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn kvmkit");
    wait_for_socket(&sock_b);
    let body = serde_json::json!({
        "snapshot_path": s,
        "mem_backend": {"backend_type": "File", "backend_path": m},
        "network_overrides": [{"iface_id": "net0", "host_dev_name": "kvsnap1"}],
        "resume_vm": true,
    });
    ctl(&sock_b, &["request", "PUT", "/snapshot/load", &body.to_string()]);
    let answered = b.ping(ip, 3);
    let _ = clone.kill();
    let _ = clone.wait();
    assert!(answered >= 2, "the clone answers on kvsnap1: {answered} of 3");

    // Where the saved tap does not exist: one line, exit 2, no tap created.
    let c = Netns::new("snapc");
    let out = restore(&c).wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("tap kvsnap0") && stderr.contains("does not exist"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert_eq!(c.links(), vec!["lo".to_owned()], "no tap was created");
    let _ = std::fs::remove_dir_all(&dir);
}
