//! `kvmkit run --serial`: the guest's console to a file, to nowhere, to a
//! unix socket that late clients attach to (and see recent output), to a pty;
//! a bad spelling is one line and exit 2.

mod common;

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kvmkit-serial-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("dir");
    d
}

#[test]
fn file_and_off_take_the_console_off_stdout() {
    let dir = temp_dir("file");
    let log = dir.join("console.log");
    let spec = format!("file={}", log.display());
    let out = common::run_guest(&["--workload", "primes:1000", "--serial", &spec]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        !out.stdout.contains("kvmkit-guest"),
        "console went to stdout: {}",
        out.stdout
    );
    let text = std::fs::read_to_string(&log).expect("console log");
    assert!(text.contains("count=168"), "{text}");
    let out = common::run_guest(&["--workload", "primes:1000", "--serial", "off"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_serial_specs_exit_2_with_one_line() {
    for spec in ["bogus", "socket=", "file="] {
        let out = common::run(&["run", "--guest", "--serial", spec], Duration::from_secs(30));
        assert_eq!(out.code, Some(2), "{spec}: {}", out.stderr);
        assert!(
            out.stderr.contains("give tty, pty") || out.stderr.contains("needs a path"),
            "{}",
            out.stderr
        );
    }
}

#[test]
fn a_late_socket_client_sees_the_start_and_then_live_output() {
    let dir = temp_dir("socket");
    let sock = dir.join("console.sock");
    let spec = format!("socket={}", sock.display());
    let mut child = std::process::Command::new(common::kvmkit())
        .args([
            "run",
            "--guest",
            "--workload",
            "ticks:100",
            "--timeout",
            "20",
            "--serial",
            &spec,
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "no console socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Attach late: the guest has printed its start lines and a few ticks by now.
    std::thread::sleep(Duration::from_millis(600));
    let mut s = UnixStream::connect(&sock).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&got).contains("tick=8") && Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.contains("kvmkit-guest: PVH start_info"),
        "the ring lacks the start: {text}"
    );
    assert!(text.contains("tick=8"), "no live output: {text}");
    // Every kvmkit thread, the socket console's included, is filtered.
    let pid = child.id();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks").flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        if status.is_empty() {
            continue;
        }
        assert!(status.contains("Seccomp:\t2"), "{:?} is not filtered", task.path());
    }
    // SAFETY: SIGTERM to the child we started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = child.wait();
    assert!(!sock.exists(), "the console socket is removed at the end");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_pty_console_is_named_and_carries_output() {
    let mut child = std::process::Command::new(common::kvmkit())
        .args([
            "run",
            "--guest",
            "--workload",
            "ticks:50",
            "--timeout",
            "20",
            "--serial",
            "pty",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut err = child.stderr.take().expect("stderr");
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\n") && err.read(&mut b).unwrap_or(0) == 1 {
        line.push(b[0]);
    }
    let line = String::from_utf8_lossy(&line).into_owned();
    let path = line
        .split_whitespace()
        .find(|w| w.starts_with("/dev/pts/"))
        .unwrap_or_else(|| panic!("no pty path in {line:?}"))
        .trim_end_matches(')')
        .to_owned();
    let mut pty = std::fs::File::open(&path).expect("open the pty");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&got).contains("tick=3") && Instant::now() < deadline {
        match pty.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    // SAFETY: SIGTERM to the child we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    assert!(
        String::from_utf8_lossy(&got).contains("tick=3"),
        "{}",
        String::from_utf8_lossy(&got)
    );
}
