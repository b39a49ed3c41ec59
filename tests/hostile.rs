//! A hostile environment must not wedge the VMM: guest console output into
//! a full pipe nobody reads, with host input waiting, must still let SIGTERM
//! and --timeout end the VM.

mod common;

use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A pipe of one page whose buffer is already full; returns (read, write).
/// Nobody reads it: any write to it blocks.
fn full_pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills `fds` with two new descriptors on success.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors are new and owned here.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        libc::fcntl(fds[1], libc::F_SETPIPE_SZ, 4096);
        libc::fcntl(fds[1], libc::F_SETFL, libc::O_NONBLOCK);
    }
    let page = [b'x'; 4096];
    // SAFETY: writes from a local buffer until the pipe is full (EAGAIN).
    while unsafe { libc::write(fds[1], page.as_ptr().cast(), page.len()) } > 0 {}
    // SAFETY: as above; the child gets a blocking stdout, as usual.
    unsafe { libc::fcntl(fds[1], libc::F_SETFL, 0) };
    (r, w)
}

/// Starts a long guest with stdout a full pipe and keystrokes waiting on stdin.
fn start(extra: &[&str]) -> (Child, OwnedFd) {
    let (r, w) = full_pipe();
    let mut args = vec!["run", "--guest", "--workload", "primes:100000000"];
    args.extend_from_slice(extra);
    let mut child = Command::new(common::kvmkit())
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::from(w))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    std::thread::spawn(move || {
        // Input keeps coming while the VM runs: the VMM thread hands it to
        // the serial device (the lock a blocked console write would hold).
        for _ in 0..100 {
            if stdin.write_all(b"keys\n").is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    (child, r)
}

/// Waits at most `limit` for `child`; kills it and fails if it does not end.
fn ends_within(mut child: Child, limit: Duration) -> (i32, String) {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err);
            return (s.code().unwrap_or(-1), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kvmkit did not end within {limit:?} with stdout a full pipe");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_ends_the_vm_when_stdout_is_a_full_pipe() {
    let (child, _reader) = start(&["--timeout", "60"]);
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let (code, err) = ends_within(child, Duration::from_secs(10));
    assert_eq!(code, 128 + libc::SIGTERM, "{err}");
    assert!(err.contains("stopped by signal 15"), "{err}");
}

#[test]
fn the_timeout_ends_the_vm_when_stdout_is_a_full_pipe() {
    let (child, _reader) = start(&["--timeout", "1.5"]);
    let (code, err) = ends_within(child, Duration::from_secs(12));
    assert_eq!(code, 124, "{err}");
}

#[test]
fn sigusr1_ends_the_vm_like_sigterm() {
    let child = Command::new(common::kvmkit())
        .args([
            "run",
            "--guest",
            "--no-stdin",
            "--timeout",
            "60",
            "--workload",
            "primes:100000000",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) };
    let (code, err) = ends_within(child, Duration::from_secs(10));
    assert_eq!(code, 128 + libc::SIGUSR1, "{err}");
}

/// A pipe whose reader is gone: writes to it fail with EPIPE.
fn broken_pipe() -> OwnedFd {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills `fds` with two new descriptors on success.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors are new and owned here; the read end is closed at once.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(r);
    w
}

#[test]
fn closed_stdout_and_stderr_never_panic_and_results_are_written() {
    let results = std::env::temp_dir().join(format!("kvmkit-closed-out-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&results);
    let r = results.to_string_lossy().to_string();
    // A timeout: kvmkit then has something to say on stderr.
    let mut child = Command::new(common::kvmkit())
        .args([
            "run",
            "--guest",
            "--no-stdin",
            "--timeout",
            "1",
            "--workload",
            "primes:100000000",
            "--results",
            &r,
        ])
        .stdout(Stdio::from(broken_pipe()))
        .stderr(Stdio::from(broken_pipe()))
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "kvmkit did not end");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(124), "the time limit's status, not a panic's 101");
    let text = std::fs::read_to_string(&results).expect("--results written");
    assert!(text.contains("time limit"), "{text}");
    let _ = std::fs::remove_file(&results);
}
