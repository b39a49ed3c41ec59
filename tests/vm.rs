//! `kvmkit vm` and `kvmkit serve` with kvmkit's own guest (`ticks` runs
//! until stopped): define, start, list, pause/resume, stop, undefine; two
//! starts at once; a VM killed behind kvmkit's back; bad definitions; the
//! daemon's re-adoption, autostart and restart=on-failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::kvmkit;

/// A state directory of its own; on drop every VM in it is killed and it is removed.
struct State {
    dir: PathBuf,
    daemon: Option<Child>,
}

impl State {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("kvmkit-vm-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("state dir");
        Self { dir, daemon: None }
    }

    /// `kvmkit vm ARGS --state-dir DIR`: (exit status, stdout, stderr).
    fn vm(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(kvmkit())
            .arg("vm")
            .args(args)
            .arg("--state-dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output()
            .expect("run kvmkit vm");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.vm(args);
        assert_eq!(code, 0, "kvmkit vm {args:?}: {err}");
        out
    }

    fn list(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["list", "--json"])).expect("list --json")
    }

    fn entry(&self, name: &str) -> serde_json::Value {
        self.list()
            .into_iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed"))
    }

    /// Waits until `name` shows `state` (and returns the entry).
    fn wait_state(&self, name: &str, state: &str, limit: Duration) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            let e = self.entry(name);
            if e["state"] == state {
                return e;
            }
            assert!(Instant::now() < deadline, "{name} never became {state}: {e}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ticks(&self, name: &str) -> usize {
        self.ok(&["logs", name])
            .lines()
            .filter(|l| l.starts_with("tick="))
            .count()
    }

    fn define_ticks(&self, name: &str, extra: &[&str]) {
        let mut args = vec!["define", name, "--guest", "--workload", "ticks:20", "--memory", "64"];
        args.extend_from_slice(extra);
        self.ok(&args);
    }
}

impl Drop for State {
    fn drop(&mut self) {
        if let Some(d) = &mut self.daemon {
            let _ = d.kill();
            let _ = d.wait();
        }
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                if let Some(pid) = std::fs::read_to_string(e.path().join("pid"))
                    .ok()
                    .and_then(|t| t.split_whitespace().next()?.parse::<i32>().ok())
                {
                    // SAFETY: kill on a pid this test started.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pid_of(entry: &serde_json::Value) -> i32 {
    entry["pid"].as_i64().expect("a pid") as i32
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks.
    unsafe { libc::kill(pid, 0) == 0 }
}

#[test]
fn define_start_list_pause_resume_stop_undefine() {
    let s = State::new("life");
    s.define_ticks("web", &["--cpus", "2"]);
    let e = s.entry("web");
    assert_eq!(
        (e["state"].as_str(), e["vcpus"].as_u64(), e["memory_mib"].as_u64()),
        (Some("shutoff"), Some(2), Some(64))
    );
    assert!(e["pid"].is_null());
    // The definition is Firecracker's config file.
    let config = std::fs::read_to_string(s.dir.join("web/config.json")).expect("config");
    let v: serde_json::Value = serde_json::from_str(&config).expect("json");
    assert_eq!(v["machine-config"]["vcpu_count"], 2);
    assert!(v["boot-source"]["boot_args"]
        .as_str()
        .expect("args")
        .contains("kvmkit.workload=ticks:20"));

    let out = s.ok(&["start", "web"]);
    assert!(out.contains("started"), "{out}");
    let e = s.wait_state("web", "running", Duration::from_secs(10));
    let pid = pid_of(&e);
    assert!(alive(pid));
    assert!(e["api_sock"].as_str().expect("sock").ends_with("web/api.sock"));
    assert!(e["uptime_s"].as_f64().is_some());

    // A second start: refused, the first one runs on.
    let (code, _, err) = s.vm(&["start", "web"]);
    assert_eq!(code, 2);
    assert!(err.contains("already running"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // Running: no undefine.
    let (code, _, err) = s.vm(&["undefine", "web"]);
    assert!(code != 0 && err.contains("running"), "{err}");

    // Ticks come; paused, they stop; resumed, they come again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.ticks("web") < 3 {
        assert!(Instant::now() < deadline, "no ticks: {}", s.ok(&["logs", "web"]));
        std::thread::sleep(Duration::from_millis(50));
    }
    s.ok(&["pause", "web"]);
    s.wait_state("web", "paused", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(100));
    let paused_at = s.ticks("web");
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(s.ticks("web"), paused_at, "ticks while paused");
    s.ok(&["resume", "web"]);
    s.wait_state("web", "running", Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.ticks("web") <= paused_at {
        assert!(Instant::now() < deadline, "no ticks after resume");
        std::thread::sleep(Duration::from_millis(50));
    }

    let info: serde_json::Value = serde_json::from_str(&s.ok(&["info", "web"])).expect("info json");
    assert_eq!(info["instance"]["state"], "Running");
    assert_eq!(info["definition"]["machine-config"]["mem_size_mib"], 64);
    assert_eq!(info["status"]["pid"], pid);

    let out = s.ok(&["stop", "web"]);
    assert!(out.contains("stopped"), "{out}");
    let e = s.entry("web");
    assert_eq!(e["state"], "stopped");
    assert!(e["pid"].is_null());
    assert!(!alive(pid) || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|t| t.contains(") Z")));
    let (code, _, err) = s.vm(&["stop", "web"]);
    assert!(code != 0 && err.contains("not running"), "{err}");

    s.ok(&["undefine", "web"]);
    assert!(s.list().is_empty());
    assert!(!s.dir.join("web").exists());
}

#[test]
fn two_clients_starting_one_vm_get_one_start_and_one_error() {
    let s = State::new("race");
    s.define_ticks("db", &[]);
    let spawn = || {
        Command::new(kvmkit())
            .args(["vm", "start", "db", "--state-dir"])
            .arg(&s.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    let (a, b) = (spawn(), spawn());
    let outs = [a.wait_with_output().expect("a"), b.wait_with_output().expect("b")];
    let ok = outs.iter().filter(|o| o.status.success()).count();
    assert_eq!(ok, 1, "{outs:?}");
    let failed = outs.iter().find(|o| !o.status.success()).expect("one failed");
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(
        err.contains("already running") || err.contains("another kvmkit is starting"),
        "{err}"
    );
    let e = s.wait_state("db", "running", Duration::from_secs(10));
    let dirs = std::fs::read_dir("/proc")
        .expect("proc")
        .flatten()
        .filter(|p| {
            std::fs::read(p.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&*s.dir.join("db/config.json").to_string_lossy()))
        })
        .count();
    assert_eq!(dirs, 1, "exactly one VMM process for db");
    s.ok(&["kill", "db"]);
    assert!(!alive(pid_of(&e)) || s.entry("db")["pid"].is_null());
}

#[test]
fn a_vm_killed_behind_kvmkits_back_shows_crashed_and_its_pid_file_goes() {
    let s = State::new("stale");
    s.define_ticks("x", &[]);
    s.ok(&["start", "x"]);
    let pid = pid_of(&s.wait_state("x", "running", Duration::from_secs(10)));
    // SAFETY: the VM this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|t| !t.contains(") Z")) {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    let e = s.entry("x");
    assert_eq!(e["state"], "crashed", "{e}");
    assert!(e["pid"].is_null());
    assert!(
        e["last_exit"]
            .as_str()
            .expect("reason")
            .contains("without writing its results"),
        "{e}"
    );
    assert!(!s.dir.join("x/pid").exists(), "stale pid file left");
    // It starts again.
    s.ok(&["start", "x"]);
    s.wait_state("x", "running", Duration::from_secs(10));
    s.ok(&["kill", "x"]);
}

#[test]
fn bad_definitions_are_refused_with_one_line_and_exit_2() {
    let s = State::new("bad");
    let cfg = |name: &str, text: &str| {
        let p = s.dir.join(name);
        std::fs::write(&p, text).expect("write");
        p.display().to_string()
    };
    let not_json = cfg("a.json", "{");
    let zero_cpus = cfg(
        "b.json",
        r#"{"boot-source": {"kernel_image_path": "/bin/true"}, "machine-config": {"vcpu_count": 0, "mem_size_mib": 64}}"#,
    );
    let unknown = cfg(
        "c.json",
        r#"{"boot-source": {"kernel_image_path": "/bin/true"}, "bogus": 1}"#,
    );
    let relative = cfg("d.json", r#"{"boot-source": {"kernel_image_path": "vmlinux"}}"#);
    let no_kernel = cfg("e.json", r#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 64}}"#);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["define", "../up", "--guest"], "VM name"),
        (vec!["define", "a b", "--guest"], "VM name"),
        (vec!["define", "w", "--guest", "--workload", "nope"], "nope"),
        (vec!["define", "w", "--kernel", "/nonexistent/vmlinux"], "no such file"),
        (vec!["define", "w", "--guest", "--cpus", "0"], "--cpus"),
        (vec!["define", "w", "--guest", "--disk", "ro=on"], "--disk"),
        (vec!["define", "w"], "give --guest"),
        (vec!["define", "w", "--config-file", &not_json], "JSON"),
        (vec!["define", "w", "--config-file", &zero_cpus], "vcpu_count"),
        (vec!["define", "w", "--config-file", &unknown], "bogus"),
        (vec!["define", "w", "--config-file", &relative], "absolute"),
        (vec!["define", "w", "--config-file", &no_kernel], "kernel"),
        (vec!["start", "nothere"], "no VM named"),
    ];
    for (args, word) in cases {
        let (code, out, err) = s.vm(&args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(word), "{args:?}: {err}");
    }
    assert!(s.list().is_empty());
    assert!(!s.dir.join("w").join("config.json").exists());
    // Defined once: a second define is refused, --replace replaces.
    s.define_ticks("w", &[]);
    let (code, _, err) = s.vm(&["define", "w", "--guest"]);
    assert!(code == 2 && err.contains("already defined"), "{err}");
    s.ok(&[
        "define",
        "w",
        "--guest",
        "--workload",
        "ticks:50",
        "--cpus",
        "3",
        "--replace",
    ]);
    assert_eq!(s.entry("w")["vcpus"], 3);
}

fn start_daemon(s: &mut State) {
    let d = Command::new(kvmkit())
        .args(["serve", "--state-dir"])
        .arg(&s.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve");
    s.daemon = Some(d);
}

fn stop_daemon(s: &mut State) {
    if let Some(mut d) = s.daemon.take() {
        let _ = d.kill();
        let _ = d.wait();
    }
}

/// With the daemon, a VM's console output outlives it: `vm logs` after the
/// VM ended shows its last lines (recorded in console.log), then kvmkit's log.
#[test]
fn the_daemon_records_the_console_so_logs_show_it_after_the_end() {
    let mut s = State::new("recorder");
    s.define_ticks("r", &[]);
    start_daemon(&mut s);
    s.ok(&["start", "r"]);
    s.wait_state("r", "running", Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.ticks("r") < 5 {
        assert!(Instant::now() < deadline, "no ticks: {}", s.ok(&["logs", "r"]));
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1000)); // the daemon adopts within half a second
    s.ok(&["stop", "r"]);
    let logs = s.ok(&["logs", "r"]);
    assert!(logs.contains("kvmkit-guest: workload=ticks:20"), "{logs}");
    assert!(logs.lines().filter(|l| l.starts_with("tick=")).count() >= 5, "{logs}");
    stop_daemon(&mut s);
}

#[test]
fn the_daemon_autostarts_restarts_on_failure_and_readopts_after_its_own_restart() {
    let mut s = State::new("serve");
    s.define_ticks("auto", &["--autostart", "--restart", "on-failure"]);
    s.define_ticks("plain", &[]);
    start_daemon(&mut s);
    let first = pid_of(&s.wait_state("auto", "running", Duration::from_secs(15)));
    assert_eq!(s.entry("plain")["state"], "shutoff");
    // Started without the daemon's help: the daemon adopts it.
    s.ok(&["start", "plain"]);
    let plain = pid_of(&s.wait_state("plain", "running", Duration::from_secs(10)));

    // A crash (SIGKILL) of an on-failure VM: the daemon starts it again.
    // SAFETY: the VM this test started.
    unsafe { libc::kill(first, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(15);
    let second = loop {
        let e = s.entry("auto");
        if e["state"] == "running" && e["pid"].as_i64().is_some_and(|p| p as i32 != first) {
            break pid_of(&e);
        }
        assert!(Instant::now() < deadline, "not restarted: {e}");
        std::thread::sleep(Duration::from_millis(100));
    };

    // The daemon goes away and comes back: the VMs run on and are re-adopted.
    stop_daemon(&mut s);
    std::thread::sleep(Duration::from_millis(300));
    assert!(alive(second) && alive(plain), "VMs died with the daemon");
    start_daemon(&mut s);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        pid_of(&s.entry("auto")),
        second,
        "autostart must not start a second copy"
    );
    // A stop through the CLI is not a failure: no restart.
    s.ok(&["stop", "auto"]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(s.entry("auto")["state"], "stopped");
    // plain has no restart policy: killed, it stays down (crashed).
    // SAFETY: the VM this test started.
    unsafe { libc::kill(plain, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(1500));
    let e = s.entry("plain");
    assert_eq!(e["state"], "crashed", "{e}");
    stop_daemon(&mut s);
}

/// `vm console`: the recent output, then keystrokes reach the guest's serial
/// port (kvmkit's guest ignores them; this checks the path works) and Ctrl-] detaches.
#[test]
fn console_shows_output_and_detaches_on_ctrl_close_bracket() {
    let s = State::new("console");
    s.define_ticks("c", &[]);
    s.ok(&["start", "c"]);
    s.wait_state("c", "running", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let mut child = Command::new(kvmkit())
        .args(["vm", "console", "c", "--state-dir"])
        .arg(&s.dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("console");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        std::thread::sleep(Duration::from_millis(300));
        stdin.write_all(b"hello\x1d").expect("type");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "console did not detach");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("tick="));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Detached"));
    s.ok(&["kill", "c"]);
    let _ = Path::new(&s.dir);
}

/// One HTTP/1.1 request to the web console: (status, body).
fn http(addr: &str, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let auth = token.map_or(String::new(), |t| format!("X-Kvmkit-Token: {t}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send");
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let status = raw.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn the_web_console_needs_its_token_and_drives_vms() {
    use std::io::BufRead;
    let mut s = State::new("web");
    // A free port: bind, read it, let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut d = Command::new(kvmkit())
        .args(["serve", "--web", &addr, "--state-dir"])
        .arg(&s.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve");
    let mut lines = std::io::BufReader::new(d.stdout.take().expect("stdout")).lines();
    let token = loop {
        let l = lines.next().expect("a line").expect("read");
        if let Some((_, t)) = l.split_once("?token=") {
            break t.trim().to_owned();
        }
    };
    s.daemon = Some(d);
    assert_eq!(http(&addr, "GET", "/", None, "").0, 401);
    assert_eq!(http(&addr, "GET", "/api/vms", Some("0000"), "").0, 401);
    assert_eq!(http(&addr, "GET", &format!("/?token={token}"), None, "").0, 200);
    let (code, body) = http(
        &addr,
        "POST",
        "/api/vms",
        Some(&token),
        r#"{"name":"w","workload":"nope"}"#,
    );
    assert!(code == 400 && body.contains("nope"), "{code} {body}");
    let form = r#"{"name":"w","workload":"ticks:20","cpus":"1","memory":"64"}"#;
    assert_eq!(http(&addr, "POST", "/api/vms", Some(&token), form).0, 200);
    assert_eq!(http(&addr, "POST", "/api/vms/w/start", Some(&token), "").0, 200);
    let (_, list) = http(&addr, "GET", "/api/vms", Some(&token), "");
    let v: serde_json::Value = serde_json::from_str(&list).expect("json");
    assert_eq!(v[0]["state"], "running", "{v}");
    // The serial console over a WebSocket: no token, 401; with it, a hello
    // saying this client writes, then the guest's output.
    assert_eq!(http(&addr, "GET", "/ws/w/console", None, "").0, 401);
    {
        let tcp = std::net::TcpStream::connect(&addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let url = format!("ws://{addr}/ws/w/console?token={token}");
        let (mut ws, resp) = tungstenite::client(url.as_str(), tcp).expect("websocket");
        assert_eq!(resp.status(), 101);
        let hello = ws.read().expect("hello").into_text().expect("text");
        assert_eq!(hello.as_str(), r#"{"writer":true}"#);
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !String::from_utf8_lossy(&seen).contains("tick=") {
            assert!(Instant::now() < deadline, "no console output over the WebSocket");
            seen.extend_from_slice(&ws.read().expect("output").into_data());
        }
        ws.send(tungstenite::Message::text("typed")).expect("send");
        let _ = ws.close(None);
    }
    let (code, m) = http(&addr, "GET", "/api/vms/w/metrics", Some(&token), "");
    let m: serde_json::Value = serde_json::from_str(&m).expect("metrics json");
    assert!(code == 200 && m["exits"]["io_out"].as_u64() > Some(0), "{code} {m}");
    assert_eq!(http(&addr, "POST", "/api/vms/w/pause", Some(&token), "").0, 200);
    assert_eq!(s.entry("w")["state"], "paused");
    assert_eq!(http(&addr, "POST", "/api/vms/w/resume", Some(&token), "").0, 200);
    assert_eq!(http(&addr, "POST", "/api/vms/w/stop", Some(&token), "").0, 200);
    assert_eq!(s.entry("w")["state"], "stopped");
    stop_daemon(&mut s);
}

#[test]
fn a_guest_that_ends_shows_shutoff_and_one_that_panics_crashed() {
    let s = State::new("ends");
    s.ok(&[
        "define",
        "short",
        "--guest",
        "--workload",
        "primes:1000",
        "--memory",
        "32",
    ]);
    s.ok(&["define", "bad", "--guest", "--workload", "panic", "--memory", "32"]);
    s.ok(&["start", "short"]);
    s.ok(&["start", "bad"]);
    let e = s.wait_state("short", "shutoff", Duration::from_secs(15));
    assert!(e["last_exit"].as_str().expect("reason").contains("status 0"), "{e}");
    let e = s.wait_state("bad", "crashed", Duration::from_secs(15));
    assert!(e["last_exit"].as_str().expect("reason").contains("101"), "{e}");
    assert!(s.ok(&["logs", "bad"]).contains("panic"));
    assert!(!s.dir.join("bad/pid").exists());
}

/// `kvmkit serve`'s own answer to `list json` on its socket (what `vm list` prints).
fn daemon_list(s: &State) -> Vec<serde_json::Value> {
    use std::io::{Read, Write};
    let mut c = std::os::unix::net::UnixStream::connect(s.dir.join(".serve.sock")).expect("daemon socket");
    c.write_all(b"list json\n").expect("ask");
    let mut text = String::new();
    c.read_to_string(&mut text).expect("answer");
    let rows = text.strip_prefix("ok\n").unwrap_or_else(|| panic!("daemon: {text}"));
    serde_json::from_str(rows).expect("rows")
}

/// Waits until a process has ended as the kernel tells it (its pidfd is
/// readable: every thread gone, the leader a zombie or reaped). A leader
/// shows as a zombie in /proc while its other threads still exit.
fn wait_ended(pid: i32) {
    // SAFETY: pidfd_open takes a pid and flags, no pointers.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if fd < 0 {
        return; // already reaped
    }
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, 15_000) };
    // SAFETY: our own fd.
    unsafe { libc::close(fd) };
    assert_eq!(r, 1, "process {pid} does not end");
}

/// The daemon's list comes from memory, kept current from events: the
/// first list after a VM ended (killed behind everyone's back, or its guest
/// finished) shows it ended, with no retry; a definition made or removed
/// behind the daemon's back shows at once.
#[test]
fn the_daemons_list_follows_vms_that_end_or_are_killed_behind_its_back() {
    let mut s = State::new("events");
    s.define_ticks("own", &["--autostart"]); // the daemon starts it: its parent
    s.define_ticks("cli", &[]);
    start_daemon(&mut s);
    let own = pid_of(&s.wait_state("own", "running", Duration::from_secs(15)));
    s.ok(&["start", "cli"]);
    let cli = pid_of(&s.wait_state("cli", "running", Duration::from_secs(10)));
    assert_eq!(daemon_list(&s).len(), 2);

    // SAFETY: VMs this test started.
    unsafe { libc::kill(own, libc::SIGKILL) };
    wait_ended(own);
    let rows = daemon_list(&s);
    let e = rows.iter().find(|r| r["name"] == "own").expect("own");
    assert_eq!(e["state"], "crashed", "{e}");
    assert!(e["pid"].is_null(), "{e}");
    // The daemon is its parent: it knows the signal.
    assert!(
        e["last_exit"].as_str().expect("reason").contains("killed by signal 9"),
        "{e}"
    );
    assert!(!s.dir.join("own/pid").exists(), "stale pid file left");
    let cli_row = rows.iter().find(|r| r["name"] == "cli").expect("cli");
    assert_eq!((cli_row["state"].as_str(), pid_of(cli_row)), (Some("running"), cli));

    // SAFETY: as above.
    unsafe { libc::kill(cli, libc::SIGKILL) };
    wait_ended(cli);
    let e = s.entry("cli");
    assert_eq!(e["state"], "crashed", "{e}");
    assert!(
        e["last_exit"]
            .as_str()
            .expect("reason")
            .contains("without writing its results"),
        "{e}"
    );
    assert!(!s.dir.join("cli/pid").exists(), "stale pid file left");

    // A guest that finishes by itself: shutoff.
    s.ok(&[
        "define",
        "short",
        "--guest",
        "--workload",
        "primes:1000",
        "--memory",
        "32",
    ]);
    assert_eq!(s.entry("short")["state"], "shutoff", "a new definition shows at once");
    let out = s.ok(&["start", "short"]);
    let pid: i32 = out
        .split("pid ")
        .nth(1)
        .and_then(|t| t.trim_end_matches([')', '\n']).parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    wait_ended(pid);
    let e = s.entry("short");
    assert_eq!(e["state"], "shutoff", "{e}");
    assert!(e["last_exit"].as_str().expect("reason").contains("status 0"), "{e}");
    assert_eq!(daemon_list(&s), s.list(), "vm list prints the daemon's answer");

    s.ok(&["undefine", "short"]);
    assert!(daemon_list(&s).iter().all(|r| r["name"] != "short"));
    stop_daemon(&mut s);
}

/// A started VM joins the VMs' CPU cgroup (`KVMKIT_VM_CGROUP`; by default
/// `kvmkit-vms` under the cpu controller), so all VMs together weigh as one
/// process group. Skipped where this test cannot make a cgroup (not root,
/// no cpu controller).
#[test]
fn a_started_vm_joins_the_vms_cpu_cgroup() {
    let v2 = std::fs::read_to_string("/sys/fs/cgroup/cgroup.subtree_control")
        .is_ok_and(|t| t.split_whitespace().any(|w| w == "cpu"));
    let root = if v2 { "/sys/fs/cgroup" } else { "/sys/fs/cgroup/cpu" };
    let group = PathBuf::from(root).join(format!("kvmkit-test-{}", std::process::id()));
    if std::fs::create_dir(&group).is_err() {
        eprintln!("skipped: cannot make a cgroup under {root}");
        return;
    }
    let s = State::new("cgroup");
    s.define_ticks("g", &[]);
    let out = Command::new(kvmkit())
        .args(["vm", "start", "g", "--state-dir"])
        .arg(&s.dir)
        .env("KVMKIT_VM_CGROUP", &group)
        .stdin(Stdio::null())
        .output()
        .expect("vm start");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pid = pid_of(&s.entry("g"));
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    let name = group.file_name().expect("name").to_string_lossy().into_owned();
    s.ok(&["kill", "g"]);
    wait_ended(pid);
    let _ = std::fs::remove_dir(&group);
    assert!(cgroups.lines().any(|l| l.ends_with(&format!("/{name}"))), "{cgroups}");
}
