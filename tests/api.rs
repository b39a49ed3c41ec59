//! Firecracker's API over a real unix socket, against a real kvmkit
//! process booting kvmkit's own guest on /dev/kvm: the getting-started
//! curl session, pause/resume, drive swaps, metrics, and every class of
//! bad request (each gets its 400 and the VMM keeps serving).

mod common;

use common::vmm::Vmm;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kvmkit-api-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn guest_elf(dir: &Path) -> PathBuf {
    let p = dir.join("guest.elf");
    let o = common::run(
        &["image", "guest", "--out", p.to_str().expect("utf8")],
        Duration::from_secs(30),
    );
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    p
}

/// `kvmkit run --no-stdin --api-sock DIR/api.sock EXTRA...` in a fresh
/// temporary folder DIR, removed with the VMM.
fn spawn(name: &str, extra: &[&str]) -> Vmm {
    let dir = temp_dir(name);
    Vmm::spawn(&dir, "api", extra).removing(dir)
}

/// What these tests ask of a VMM beyond the common requests.
impl Vmm {
    /// The folder that holds the API socket.
    fn dir(&self) -> &Path {
        self.sock().parent().expect("the socket's folder")
    }

    /// A request that must be refused `400` with a Firecracker fault
    /// message; returns the message.
    fn fault(&self, method: &str, path: &str, body: &str) -> String {
        let (status, text) = self.req(method, path, body);
        assert_eq!(status, 400, "{method} {path} {body}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).expect("fault JSON");
        let msg = v["fault_message"].as_str().expect("fault_message").to_owned();
        assert!(!msg.is_empty());
        msg
    }

    /// The `state` of `GET /`.
    fn state(&self) -> String {
        let (status, text) = self.req("GET", "/", "");
        assert_eq!(status, 200, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        v["state"].as_str().expect("state").to_owned()
    }
}

fn ticks(text: &str) -> usize {
    text.lines().filter(|l| l.starts_with("tick=")).count()
}

fn kvm() -> bool {
    Path::new("/dev/kvm").exists()
}

#[test]
fn getting_started_session_boots_the_guest() {
    if !kvm() {
        return;
    }
    let mut vmm = spawn("start", &[]);
    let elf = guest_elf(vmm.dir());
    assert_eq!(vmm.state(), "Not started");
    let (s, mc) = vmm.req("GET", "/machine-config", "");
    assert_eq!(s, 200);
    let mc: serde_json::Value = serde_json::from_str(&mc).expect("json");
    assert_eq!(
        (mc["vcpu_count"].as_u64(), mc["mem_size_mib"].as_u64()),
        (Some(1), Some(128))
    );
    let disk = vmm.dir().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("disk");
    vmm.ok("PUT", "/machine-config", r#"{"vcpu_count": 2, "mem_size_mib": 256}"#);
    vmm.ok(
        "PUT",
        "/boot-source",
        &format!(
            r#"{{"kernel_image_path": "{}", "boot_args": "console=ttyS0 reboot=k panic=1 kvmkit.workload=primes:100000"}}"#,
            elf.display()
        ),
    );
    vmm.ok(
        "PUT",
        "/drives/rootfs",
        &format!(
            r#"{{"drive_id": "rootfs", "path_on_host": "{}", "is_root_device": true, "is_read_only": false}}"#,
            disk.display()
        ),
    );
    vmm.ok("PUT", "/entropy", "{}");
    let (s, cfg) = vmm.req("GET", "/vm/config", "");
    assert_eq!(s, 200);
    let cfg: serde_json::Value = serde_json::from_str(&cfg).expect("json");
    assert_eq!(cfg["machine-config"]["vcpu_count"], 2);
    assert_eq!(cfg["drives"][0]["drive_id"], "rootfs");
    vmm.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    vmm.wait_stdout("the prime count", |o| o.contains("count=9592"), Duration::from_secs(60));
    assert_eq!(vmm.wait_exit(Duration::from_secs(30)), Some(0), "the guest's status");
    assert!(!vmm.sock().exists(), "the API socket is removed at exit");
}

#[test]
fn pause_stops_the_guest_and_resume_continues() {
    if !kvm() {
        return;
    }
    let mut vmm = spawn("pause", &["--guest", "--workload", "ticks:20"]);
    vmm.wait_stdout("ticks", |o| ticks(o) >= 3, Duration::from_secs(30));
    assert_eq!(vmm.state(), "Running");
    vmm.fault("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    vmm.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    assert_eq!(vmm.state(), "Paused");
    let frozen = ticks(&vmm.stdout());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ticks(&vmm.stdout()), frozen, "ticks while paused");
    vmm.fault("PATCH", "/vm", r#"{"state": "Paused"}"#);
    vmm.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    assert_eq!(vmm.state(), "Running");
    vmm.wait_stdout(
        "ticks after resume",
        |o| ticks(o) >= frozen + 3,
        Duration::from_secs(30),
    );
    let o = common::run(
        &["ctl", "--api-sock", vmm.sock().to_str().expect("utf8"), "stop"],
        Duration::from_secs(30),
    );
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert_eq!(vmm.wait_exit(Duration::from_secs(30)), Some(0));
}

#[test]
fn bad_requests_get_400_and_the_vmm_keeps_serving() {
    if !kvm() {
        return;
    }
    let vmm = spawn("bad", &[]);
    // A client that sends half a request and stalls must not block others.
    let mut stalled = UnixStream::connect(vmm.sock()).expect("connect");
    stalled
        .write_all(b"PUT /machine-config HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"vcpu")
        .expect("half");
    vmm.fault("PUT", "/machine-config", "{");
    vmm.fault(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": "two", "mem_size_mib": 128}"#,
    );
    vmm.fault(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 128, "bogus": 1}"#,
    );
    vmm.fault("PUT", "/machine-config", r#"{"vcpu_count": 0, "mem_size_mib": 128}"#);
    vmm.fault("DELETE", "/machine-config", "");
    vmm.fault("GET", "/no-such-path", "");
    vmm.fault(
        "PUT",
        "/drives/a",
        r#"{"drive_id": "b", "path_on_host": "/x", "is_root_device": false}"#,
    );
    vmm.fault("PUT", "/balloon", r#"{"amount_mib": 1, "deflate_on_oom": true}"#);
    vmm.fault(
        "PUT",
        "/snapshot/create",
        r#"{"snapshot_path": "/s", "mem_file_path": "/m"}"#,
    );
    let big = format!(r#"{{"kernel_image_path": "{}"}}"#, "x".repeat(60_000));
    vmm.fault("PUT", "/boot-source", &big);
    let msg = vmm.fault("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    assert!(msg.contains("boot-source"), "{msg}");
    vmm.fault("PATCH", "/vm", r#"{"state": "Paused"}"#);
    vmm.fault("PUT", "/actions", r#"{"action_type": "SendCtrlAltDel"}"#);
    vmm.fault(
        "PATCH",
        "/drives/rootfs",
        r#"{"drive_id": "rootfs", "path_on_host": "/x"}"#,
    );
    // Many clients at once.
    let sock = vmm.sock().to_path_buf();
    let clients: Vec<_> = (0..32)
        .map(|_| {
            let sock = sock.clone();
            std::thread::spawn(move || common::api_request(&sock, "GET", "/", "").0)
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().expect("client"), 200);
    }
    assert_eq!(vmm.state(), "Not started");
    drop(stalled);
    // Configuration after boot is refused.
    let elf = guest_elf(vmm.dir());
    vmm.ok(
        "PUT",
        "/boot-source",
        &format!(
            r#"{{"kernel_image_path": "{}", "boot_args": "kvmkit.workload=ticks"}}"#,
            elf.display()
        ),
    );
    vmm.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    let msg = vmm.fault("PUT", "/machine-config", r#"{"vcpu_count": 1, "mem_size_mib": 128}"#);
    assert!(msg.contains("after starting"), "{msg}");
    vmm.fault("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    assert_eq!(vmm.state(), "Running");
}

#[test]
fn drives_can_be_swapped_after_boot_and_metrics_flushed() {
    if !kvm() {
        return;
    }
    let dir = temp_dir("patch-files");
    let (a, b, metrics) = (dir.join("a.img"), dir.join("b.img"), dir.join("metrics.json"));
    std::fs::write(&a, vec![0u8; 1 << 20]).expect("a");
    std::fs::write(&b, vec![0u8; 2 << 20]).expect("b");
    let disk = format!("path={},id=data", a.display());
    let vmm = spawn(
        "patch",
        &[
            "--guest",
            "--workload",
            "ticks",
            "--disk",
            &disk,
            "--metrics-path",
            metrics.to_str().expect("utf8"),
        ],
    );
    vmm.wait_stdout("ticks", |o| ticks(o) >= 1, Duration::from_secs(30));
    vmm.ok(
        "PATCH",
        "/drives/data",
        &format!(r#"{{"drive_id": "data", "path_on_host": "{}"}}"#, b.display()),
    );
    let (_, cfg) = vmm.req("GET", "/vm/config", "");
    assert!(cfg.contains("b.img"), "{cfg}");
    vmm.fault(
        "PATCH",
        "/drives/nope",
        &format!(r#"{{"drive_id": "nope", "path_on_host": "{}"}}"#, b.display()),
    );
    vmm.fault(
        "PATCH",
        "/drives/data",
        r#"{"drive_id": "data", "path_on_host": "/no/such/file"}"#,
    );
    vmm.ok("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#);
    let text = std::fs::read_to_string(&metrics).expect("metrics file");
    let line: serde_json::Value = serde_json::from_str(text.lines().last().expect("a line")).expect("JSON line");
    assert!(line["utc_timestamp_ms"].as_u64().is_some());
    assert!(line["api_server"]["patch_drive_count"].as_u64() >= Some(3), "{line}");
    assert!(line["vcpu"]["exit_io_out"].as_u64() > Some(0), "{line}");
    assert_eq!(line["kvmkit"]["devices"]["data"]["swaps"], 1, "{line}");
    let (s, prom) = vmm.req("GET", "/metrics", "");
    assert_eq!(s, 200);
    assert!(prom.contains("kvmkit_vcpu_exits_total"), "{prom}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_existing_socket_path_is_refused_with_one_line() {
    let dir = temp_dir("exists");
    let path = dir.join("taken");
    std::fs::write(&path, "keep me").expect("file");
    let o = common::run(
        &["run", "--api-sock", path.to_str().expect("utf8"), "--no-stdin"],
        Duration::from_secs(20),
    );
    assert_eq!(o.code, Some(2), "{}", o.stderr);
    assert_eq!(o.stderr.trim().lines().count(), 1, "{}", o.stderr);
    assert_eq!(std::fs::read_to_string(&path).expect("file"), "keep me");
    let o = common::run(
        &["run", "--api-sock", "/no/such/dir/api.sock", "--no-stdin"],
        Duration::from_secs(20),
    );
    assert_eq!(o.code, Some(2), "{}", o.stderr);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_firecracker_symlink_takes_firecrackers_command_line() {
    if !kvm() {
        return;
    }
    let dir = temp_dir("symlink");
    let fc = dir.join("firecracker");
    std::os::unix::fs::symlink(common::kvmkit(), &fc).expect("symlink");
    let v = Command::new(&fc).arg("--version").output().expect("version");
    let text = String::from_utf8_lossy(&v.stdout);
    assert!(text.starts_with("Firecracker v"), "{text}");
    let sock = dir.join("api.sock");
    let vmm = Vmm::spawn_with(
        &fc,
        &["--api-sock", sock.to_str().expect("utf8"), "--id", "fc1"],
        sock.clone(),
    )
    .removing(dir.clone());
    let (s, info) = vmm.req("GET", "/", "");
    assert_eq!(s, 200);
    assert!(info.contains("\"id\":\"fc1\""), "{info}");
    // --no-api with a config file boots at once and exits with the guest.
    let elf = guest_elf(&dir);
    let cfg = dir.join("vm.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}", "boot_args": "console=ttyS0 kvmkit.workload=primes:10000"}},
               "machine-config": {{"vcpu_count": 1, "mem_size_mib": 64}}}}"#,
            elf.display()
        ),
    )
    .expect("config");
    let o = Command::new(&fc)
        .args(["--no-api", "--config-file", cfg.to_str().expect("utf8")])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("count=1229"));
}
