//! `kvmkit exec` against the real guest agent, without a VM: the agent runs on the host with
//! `--unix` (the same service it offers on vsock), a small bridge answers `CONNECT <port>`
//! with `OK` like the vsock device's unix-socket bridge and relays bytes, and a one-route
//! HTTP server plays the API's `GET /vm/config`. The whole path through a real guest kernel
//! is proved in the nested lab (`cargo xtask nested vsock-exec vsock-exec-api ...`).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Rig {
    dir: PathBuf,
    agent: Option<Child>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(a) = &mut self.agent {
            let _ = a.kill();
            let _ = a.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_for(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Serves `GET /vm/config` with `config` on `api` (any number of requests).
fn fake_api(api: &Path, config: String) {
    let l = UnixListener::bind(api).unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{config}",
                config.len()
            );
        }
    });
}

/// A bridge like the vsock device's: `CONNECT <port>\n` -> `OK 1\n` and a relay to the agent's
/// unix socket when `port` is the one it serves; a close otherwise.
fn fake_bridge(uds: &Path, agent: PathBuf, port: u32) {
    let l = UnixListener::bind(uds).unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            let agent = agent.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                if r.read_line(&mut line).is_err() || line.trim() != format!("CONNECT {port}") {
                    return;
                }
                let Ok(a) = UnixStream::connect(&agent) else { return };
                (&s).write_all(b"OK 1\n").unwrap();
                let (mut a2, mut s2) = (a.try_clone().unwrap(), s.try_clone().unwrap());
                let t = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut r, &mut a2);
                    let _ = a2.shutdown(std::net::Shutdown::Write);
                });
                let _ = std::io::copy(&mut &a, &mut s2);
                let _ = s2.shutdown(std::net::Shutdown::Both);
                let _ = t.join();
            });
        }
    });
}

fn rig(name: &str, with_vsock: bool, agent_port: u32) -> Rig {
    let dir = std::env::temp_dir().join(format!("kvmkit-exec-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("kvmkit-agent");
    std::fs::write(&bin, kvmkit_agent_image::AGENT).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let agent_sock = dir.join("agent.sock");
    // A concurrent test's fork may hold the just-written file open for
    // writing until its exec (ETXTBSY): wait for that to pass.
    let mut tries = 0;
    let agent = loop {
        match Command::new(&bin)
            .arg("--unix")
            .arg(&agent_sock)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Err(e) if e.raw_os_error() == Some(26) && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            r => break r.unwrap(),
        }
    };
    wait_for(&agent_sock);
    let uds = dir.join("v.sock");
    fake_bridge(&uds, agent_sock, agent_port);
    let config = if with_vsock {
        format!(
            r#"{{"machine-config": {{"vcpu_count": 1}}, "vsock": {{"guest_cid": 3, "uds_path": "{}"}}}}"#,
            uds.display()
        )
    } else {
        r#"{"machine-config": {"vcpu_count": 1}}"#.to_string()
    };
    fake_api(&dir.join("api.sock"), config);
    Rig {
        dir,
        agent: Some(agent),
    }
}

fn exec(r: &Rig, args: &[&str], stdin: &[u8]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kvmkit"))
        .arg("exec")
        .arg("--api-sock")
        .arg(r.dir.join("api.sock"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = c.stdin.take().unwrap();
    let data = stdin.to_vec();
    let w = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = c.wait_with_output().unwrap();
    w.join().unwrap();
    out
}

#[test]
fn exec_streams_output_and_exits_with_the_status() {
    let r = rig("run", true, 1024);
    let out = exec(&r, &["--", "sh", "-c", "echo out; echo err >&2; exit 7"], b"");
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");

    let out = exec(
        &r,
        &["-e", "X=1 2", "--cwd", "/tmp", "--", "sh", "-c", "echo $X; pwd"],
        b"",
    );
    assert_eq!((out.status.code(), &out.stdout[..]), (Some(0), &b"1 2\n/tmp\n"[..]));

    // -i: our stdin reaches the command (64 KiB frames), 3 MB through sha-free wc.
    let out = exec(&r, &["-i", "--", "wc", "-c"], &vec![b'k'; 3_000_000]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3000000");
    // Without -i the command's stdin is /dev/null.
    let out = exec(&r, &["--", "wc", "-c"], b"ignored");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");

    let out = exec(&r, &["--", "sh", "-c", "kill -KILL $$"], b"");
    assert_eq!(out.status.code(), Some(137), "killed by signal 9: 128 + 9");
    let out = exec(&r, &["--", "kvmkit-no-such-command"], b"");
    assert_eq!(out.status.code(), Some(127));
}

#[test]
fn no_vsock_device_or_no_agent_is_one_line_and_status_2() {
    let r = rig("novsock", false, 1024);
    let out = exec(&r, &["--", "true"], b"");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("has no vsock device") && err.lines().count() == 1, "{err}");

    // The agent listens elsewhere: the bridge closes every CONNECT 1024.
    let r = rig("noagent", true, 2000);
    let start = Instant::now();
    let out = exec(&r, &["--timeout", "1", "--", "true"], b"");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("did not answer on vsock port 1024 within 1 s") && err.lines().count() == 1,
        "{err}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "gave up long after --timeout"
    );
    // --port reaches it.
    let out = exec(&r, &["--port", "2000", "--", "echo", "hi"], b"");
    assert_eq!((out.status.code(), &out.stdout[..]), (Some(0), &b"hi\n"[..]));
}

#[test]
fn exec_without_a_command_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_kvmkit"))
        .args(["exec", "--api-sock", "/nonexistent/api.sock"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let mut s = String::new();
    out.stderr.as_slice().read_to_string(&mut s).unwrap();
    assert!(s.contains("CMD"), "{s}");
}
