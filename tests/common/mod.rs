//! Helpers shared by the integration tests: run the kvmkit binary with a
//! time limit and capture what it printed, or keep it running in the
//! background and talk to its API ([`vmm::Vmm`]).

#![allow(dead_code)]

pub mod vmm;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What one kvmkit invocation did.
pub struct Output {
    /// Exit status (None when killed by a signal).
    pub code: Option<i32>,
    /// Everything on stdout (the guest console).
    pub stdout: String,
    /// Everything on stderr (kvmkit's own messages).
    pub stderr: String,
}

/// Path of the kvmkit binary under test.
pub fn kvmkit() -> &'static str {
    env!("CARGO_BIN_EXE_kvmkit")
}

/// Runs kvmkit with `args`, killing it after `limit`.
pub fn run(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(kvmkit())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kvmkit");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = t_out.join().unwrap_or_default();
    let stderr = t_err.join().unwrap_or_default();
    assert!(
        status.is_some(),
        "kvmkit {args:?} did not finish within {limit:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    Output {
        code: status.and_then(|s| s.code()),
        stdout,
        stderr,
    }
}

/// Runs kvmkit with `args` until its stdout contains `marker` (then kills
/// it) or `limit` passes. Returns the stdout seen and whether the marker came.
pub fn run_until(args: &[&str], marker: &str, limit: Duration) -> (String, bool) {
    use std::sync::mpsc;
    let mut child = Command::new(kvmkit())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn kvmkit");
    let mut out = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    let mut found = false;
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(chunk) => seen.extend_from_slice(&chunk),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if String::from_utf8_lossy(&seen).contains(marker) {
            found = true;
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    (String::from_utf8_lossy(&seen).into_owned(), found)
}

/// Runs kvmkit's test guest with the given extra arguments.
pub fn run_guest(extra: &[&str]) -> Output {
    let mut args = vec!["run", "--guest", "--no-stdin", "--timeout", "120"];
    args.extend_from_slice(extra);
    run(&args, Duration::from_secs(150))
}

/// Starts `bin` with `args`, stdin closed, stderr inherited; a thread keeps
/// everything it prints on stdout in the returned buffer.
pub fn spawn_collecting(
    bin: &std::path::Path,
    args: &[&str],
) -> (std::process::Child, std::sync::Arc<std::sync::Mutex<String>>) {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn kvmkit");
    let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut pipe = child.stdout.take().expect("stdout");
    let sink = out.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().expect("out").push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    (child, out)
}

/// Waits (10 s at most) until the unix socket at `sock` accepts connections.
pub fn wait_for_socket(sock: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(sock).is_err() {
        assert!(Instant::now() < deadline, "the API socket did not appear");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One HTTP request on a VMM's API socket (`Connection: close`): (status, body).
pub fn api_request(sock: &std::path::Path, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(sock).expect("connect to the API");
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(n)) = resp.parse(&raw) else {
        panic!("bad answer to {method} {path}: {:?}", String::from_utf8_lossy(&raw));
    };
    (
        resp.code.expect("code"),
        String::from_utf8_lossy(&raw[n..]).into_owned(),
    )
}
