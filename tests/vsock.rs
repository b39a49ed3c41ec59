//! virtio-vsock end to end on the real /dev/kvm (seccomp on, the default):
//! kvmkit's test guest runs the vsock workloads; host clients use
//! Firecracker's unix-socket bridge (`CONNECT <port>\n` -> `OK <hostport>\n`,
//! guest connections to host port P reach `<uds>_P`).

mod common;

use common::vmm::Vmm;
use std::io::{BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// kvmkit's guest running `workload` (120 s at most) with a vsock device,
/// CID 3, bridged at `uds`.
fn start_guest(uds: &Path, workload: &str) -> Vmm {
    let spec = format!("cid=3,uds={}", uds.display());
    Vmm::start(&[
        "run",
        "--guest",
        "--no-stdin",
        "--timeout",
        "120",
        "--vsock",
        &spec,
        "--workload",
        workload,
    ])
}

/// A VM whose vsock device is bridged at `uds`.
struct Vm {
    vmm: Vmm,
    uds: PathBuf,
}

impl Vm {
    fn start(tag: &str, workload: &str, marker: &str) -> Self {
        let uds = std::env::temp_dir().join(format!("kvmkit-it-vsock-{tag}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&uds);
        let vm = Self {
            vmm: start_guest(&uds, workload),
            uds,
        };
        vm.wait_for(marker);
        vm
    }

    fn wait_for(&self, marker: &str) {
        let what = format!("'{marker}' from the guest");
        self.vmm
            .wait_stdout(&what, |s| s.contains(marker), Duration::from_secs(60));
    }

    /// A connection to guest port `port` through the bridge, after its `OK` line.
    fn connect(&self, port: u32) -> (UnixStream, String) {
        let mut s = UnixStream::connect(&self.uds).expect("connect to the vsock socket");
        s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        s.write_all(format!("CONNECT {port}\n").as_bytes()).expect("CONNECT");
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while line.last() != Some(&b'\n') {
            match s.read(&mut b) {
                Ok(1) => line.push(b[0]),
                _ => break,
            }
        }
        (s, String::from_utf8_lossy(&line).into_owned())
    }

    fn stop(mut self) -> String {
        // SAFETY: plain kill(2) of the child we started.
        unsafe { libc::kill(self.vmm.child.id() as i32, libc::SIGTERM) };
        let _ = self.vmm.child.wait();
        let out = self.vmm.stdout();
        assert!(!self.uds.exists(), "the socket file is removed when the VM ends");
        out
    }
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

/// Sends `data` on `s` from a thread while reading the echo back here.
fn echo(s: UnixStream, data: Vec<u8>) -> Vec<u8> {
    let mut w = s.try_clone().expect("clone");
    let len = data.len();
    let writer = std::thread::spawn(move || w.write_all(&data).expect("write"));
    let mut back = vec![0u8; len];
    (&s).read_exact(&mut back).expect("echo back");
    writer.join().expect("writer");
    back
}

#[test]
fn echo_through_the_bridge_refused_ports_and_two_connections() {
    let vm = Vm::start("echo", "vsock-echo:5000", "listening on port 5000");
    // 1 MiB of random bytes comes back unchanged.
    let (s, ok) = vm.connect(5000);
    assert!(ok.starts_with("OK "), "{ok:?}");
    let port: u32 = ok[3..].trim().parse().expect("host port");
    assert!(port >= 1024, "{port}");
    let data = random_bytes(1 << 20, 1);
    let t = Instant::now();
    assert!(echo(s, data.clone()) == data, "1 MiB echoed unchanged");
    eprintln!("1 MiB echoed in {:?}", t.elapsed());
    // Nobody listens on 5999: the guest resets, the client is closed, no hang.
    let t = Instant::now();
    let (mut s, line) = vm.connect(5999);
    assert!(line.is_empty(), "{line:?}");
    let mut b = [0u8; 1];
    assert!(matches!(s.read(&mut b), Ok(0)), "closed");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    // Two connections at once, each echoed whole.
    let (a, la) = vm.connect(5000);
    let (b, lb) = vm.connect(5000);
    assert!(
        la.starts_with("OK ") && lb.starts_with("OK ") && la != lb,
        "{la:?} {lb:?}"
    );
    let da = random_bytes(256 << 10, 2);
    let db = random_bytes(256 << 10, 3);
    let (ea, eb) = (da.clone(), db.clone());
    let ta = std::thread::spawn(move || echo(a, ea));
    let tb = std::thread::spawn(move || echo(b, eb));
    assert!(ta.join().expect("a") == da && tb.join().expect("b") == db);
    // The guest's limit, 8 connections at once, 8 MiB each: connection
    // buffers grow and shrink on the worker thread (under its seccomp filter).
    let conns: Vec<_> = (0..8u64)
        .map(|k| {
            let (c, ok) = vm.connect(5000);
            assert!(ok.starts_with("OK "), "{ok:?}");
            let d = random_bytes(8 << 20, 10 + k);
            std::thread::spawn(move || echo(c, d.clone()) == d)
        })
        .collect();
    for t in conns {
        assert!(t.join().expect("echo thread"), "8 MiB echoed unchanged");
    }
    let out = vm.stop();
    assert!(!out.contains("violation=yes"), "{out}");
}

#[test]
fn guest_connections_reach_uds_port_listeners() {
    let uds = std::env::temp_dir().join(format!("kvmkit-it-vsock-tx-{}.sock", std::process::id()));
    let lpath = PathBuf::from(format!("{}_5001", uds.display()));
    let _ = std::fs::remove_file(&lpath);
    let l = UnixListener::bind(&lpath).expect("listen on <uds>_5001");
    let mut vmm = start_guest(&uds, "vsock-tx:5001:4");
    let (s, _) = l.accept().expect("the guest connects");
    s.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    let mut got = Vec::new();
    BufReader::new(s)
        .read_to_end(&mut got)
        .expect("read to the guest's shutdown");
    assert_eq!(got.len(), 4 << 20);
    for (k, &b) in got.iter().enumerate() {
        let k = k as u64;
        let want = (((k ^ (k >> 8)) & 0xff) as u8).wrapping_add(1);
        assert_eq!(b, want, "byte {k}");
    }
    let status = vmm.child.wait().expect("wait");
    let text = vmm.stdout();
    assert!(status.success(), "{status:?}: {text}");
    assert!(text.lines().any(|l| l.starts_with("vsock-tx:")), "{text}");
    let _ = std::fs::remove_file(&lpath);
    assert!(!uds.exists());
}

#[test]
fn bad_vsock_flags_are_one_line_and_exit_2() {
    for spec in ["cid=2,uds=/tmp/x.sock", "cid=3", "cid=3,uds=/tmp/x,extra=1"] {
        let out = common::run(
            &["run", "--guest", "--no-stdin", "--vsock", spec],
            Duration::from_secs(30),
        );
        assert_eq!(out.code, Some(2), "{spec}: {}", out.stderr);
        assert_eq!(out.stderr.trim().lines().count(), 1, "{spec}: {}", out.stderr);
        assert!(out.stderr.contains("--vsock"), "{}", out.stderr);
    }
    // A path that exists and is not a socket is refused, and left alone.
    let f = std::env::temp_dir().join(format!("kvmkit-it-vsock-file-{}", std::process::id()));
    std::fs::write(&f, b"keep me").expect("write");
    let spec = format!("cid=3,uds={}", f.display());
    let out = common::run(
        &["run", "--guest", "--no-stdin", "--vsock", &spec],
        Duration::from_secs(30),
    );
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("not a unix socket"), "{}", out.stderr);
    assert_eq!(std::fs::read(&f).expect("still there"), b"keep me");
    let _ = std::fs::remove_file(&f);
}

#[test]
fn put_vsock_before_boot_shows_in_the_config_and_is_refused_after() {
    let dir = std::env::temp_dir().join(format!("kvmkit-it-vsock-api-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let elf = dir.join("guest.elf");
    let o = common::run(
        &["image", "guest", "--out", elf.to_str().expect("utf8")],
        Duration::from_secs(30),
    );
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let uds = dir.join("v.sock");
    let mut vm = Vm {
        vmm: Vmm::spawn(&dir, "api", &[]),
        uds: uds.clone(),
    };
    let api = |method: &str, path: &str, body: &str| vm.vmm.req(method, path, body);
    let boot = format!(
        r#"{{"kernel_image_path": "{}", "boot_args": "console=ttyS0 kvmkit.workload=vsock-echo:5000"}}"#,
        elf.display()
    );
    assert_eq!(api("PUT", "/boot-source", &boot).0, 204);
    let body = format!(
        r#"{{"vsock_id": "vsock0", "guest_cid": 3, "uds_path": "{}"}}"#,
        uds.display()
    );
    let (s, text) = api("PUT", "/vsock", &body);
    assert_eq!(s, 204, "{text}");
    let (s, text) = api("PUT", "/vsock", r#"{"guest_cid": 1, "uds_path": "/v"}"#);
    assert!(s == 400 && text.contains("guest_cid"), "{s} {text}");
    let (_, cfg) = api("GET", "/vm/config", "");
    let cfg: serde_json::Value = serde_json::from_str(&cfg).expect("json");
    assert_eq!(cfg["vsock"]["guest_cid"], 3, "{cfg}");
    assert_eq!(cfg["vsock"]["uds_path"], uds.to_str().expect("utf8"));
    let (s, text) = api("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    assert_eq!(s, 204, "{text}");
    vm.wait_for("listening on port 5000");
    let (c, ok) = vm.connect(5000);
    assert!(ok.starts_with("OK "), "{ok:?}");
    assert_eq!(echo(c, b"ping".to_vec()), b"ping");
    let (s, text) = api("PUT", "/vsock", &body);
    assert!(s == 400 && text.contains("fault_message"), "{s} {text}");
    let (_, metrics) = api("GET", "/metrics", "");
    assert!(metrics.contains("vsock0"), "{metrics}");
    let _ = api("PUT", "/kvmkit/stop", "");
    let _ = vm.vmm.child.wait();
    assert!(!uds.exists(), "the vsock socket is removed at exit");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A snapshot of a VM with a vsock device (Firecracker's semantics): the
/// host connection open at snapshot time is closed, the guest gets a
/// transport reset (it drops that connection and keeps listening); a new
/// process restores the VM over the stale socket file, and a new client
/// reaches the restored echo server through `CONNECT 5000`. A second
/// restore while the first listens at the same path is refused.
#[test]
fn a_vm_with_vsock_is_snapshotted_and_restored_in_a_new_process() {
    let dir = std::env::temp_dir().join(format!("kvmkit-it-vsock-snap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let uds = dir.join("v.sock");
    let spec = format!("cid=3,uds={}", uds.display());
    let path = |p: &Path| p.to_str().expect("utf8").to_owned();
    let vmm = Vmm::spawn(
        &dir,
        "api",
        &[
            "--guest",
            "--timeout",
            "120",
            "--vsock",
            &spec,
            "--workload",
            "vsock-echo:5000:2",
        ],
    );
    let vm = Vm { vmm, uds: uds.clone() };
    vm.wait_for("listening on port 5000");
    // A connection open at snapshot time.
    let (s, ok) = vm.connect(5000);
    assert!(ok.starts_with("OK "), "{ok:?}");
    assert_eq!(echo(s.try_clone().expect("clone"), b"before".to_vec()), b"before");
    vm.vmm.ok("PATCH", "/vm", r#"{"state":"Paused"}"#);
    // A VM with vsock is snapshotted.
    let (state, mem) = vm.vmm.snapshot("Full", &dir, "snap");
    // Host connections are not saved: the snapshot closed this one.
    let mut b = [0u8; 16];
    assert_eq!(
        (&s).read(&mut b).expect("end of file"),
        0,
        "the open connection is closed"
    );
    // SIGKILL: the socket file stays behind, stale.
    vm.vmm.kill();
    assert!(uds.exists(), "a killed VMM leaves its socket file");

    let restore = [
        "run",
        "--no-stdin",
        "--landlock",
        "--restore-state",
        &path(&state),
        "--restore-mem",
        &path(&mem),
    ];
    let restored = Vm {
        vmm: Vmm::start(&restore),
        uds: uds.clone(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let (s, ok) = loop {
        let r = UnixStream::connect(&uds).is_ok().then(|| restored.connect(5000));
        match r {
            Some((s, ok)) if ok.starts_with("OK ") => break (s, ok),
            other => {
                assert!(
                    Instant::now() < deadline,
                    "no OK from the restored guest ({:?}): {}",
                    other.map(|o| o.1),
                    restored.vmm.stdout()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    assert!(ok.starts_with("OK "), "{ok:?}");
    let data = random_bytes(64 << 10, 7);
    assert_eq!(
        echo(s.try_clone().expect("clone"), data.clone()),
        data,
        "the restored guest echoes"
    );

    // The path is taken by a live listener: a second restore is refused.
    let second = common::run(&restore, Duration::from_secs(30));
    assert_eq!(second.code, Some(2), "{}\n{}", second.stdout, second.stderr);
    let lines: Vec<_> = second.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {}", second.stderr);
    assert!(lines[0].contains("is in use"), "{}", lines[0]);
    assert!(uds.exists(), "the refused restore left the live socket alone");

    // The guest counted the reset connection as served (closed by the
    // host side) and ends after the second one.
    drop(s);
    restored.wait_for("transport_resets=1");
    let out = restored.vmm.stdout();
    let line = |n: u32| {
        out.lines()
            .find(|l| l.contains(&format!("conn={n} port=5000")))
            .unwrap_or_else(|| panic!("no line for connection {n}: {out}"))
    };
    assert!(
        line(1).contains("bytes=6 echoed=6") && line(1).ends_with("closed_by=host"),
        "{out}"
    );
    assert!(line(2).contains("bytes=65536 echoed=65536"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
