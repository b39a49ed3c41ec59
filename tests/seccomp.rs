//! Seccomp filters: on for every thread of a running VM by default, off
//! with --no-seccomp, and a forbidden syscall is reported with the thread's
//! name and the syscall's before the process ends.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The `Seccomp:` mode of every thread of `pid`, by thread name.
fn seccomp_modes(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in dir.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let mode = status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .unwrap_or("?")
            .trim()
            .to_owned();
        out.push((comm.trim().to_owned(), mode));
    }
    out
}

/// Starts a long guest with a disk and rng and, once its devices run,
/// returns every thread's seccomp mode.
fn modes_of_running_vm(extra: &[&str]) -> Vec<(String, String)> {
    let img = std::env::temp_dir().join(format!("kvmkit-it-seccomp-{}-{}.img", std::process::id(), extra.len()));
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(16 << 20))
        .expect("image");
    let disk = format!("path={}", img.display());
    let sock = std::env::temp_dir().join(format!("kvmkit-it-seccomp-{}-{}.sock", std::process::id(), extra.len()));
    let _ = std::fs::remove_file(&sock);
    let mut args = vec![
        "run",
        "--guest",
        "--no-stdin",
        "--timeout",
        "60",
        "--cpus",
        "2",
        "--rng",
        "--disk",
        &disk,
        "--api-sock",
        sock.to_str().expect("utf-8"),
        "--workload",
        "rng:100000000",
    ];
    args.extend_from_slice(extra);
    let mut child = Command::new(common::kvmkit())
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn kvmkit");
    // Wait until the rng worker runs (the guest is then well into its workload).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut modes = Vec::new();
    while Instant::now() < deadline {
        modes = seccomp_modes(child.id());
        if modes.iter().any(|(n, _)| n == "virtio-rng") && modes.iter().any(|(n, _)| n == "fc_api") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&img);
    let _ = std::fs::remove_file(&sock);
    modes
}

#[test]
fn every_thread_of_a_running_vm_is_filtered() {
    let modes = modes_of_running_vm(&[]);
    for want in ["kvmkit", "vcpu0", "vcpu1", "virtio-rng", "fc_api", "fc_api_accept"] {
        assert!(modes.iter().any(|(n, _)| n == want), "no thread {want}: {modes:?}");
    }
    // KVM's own kernel thread (kvm-nx-lpage-recovery) is listed under the
    // process too; it inherits the filter of the thread that made the VM.
    for (name, mode) in &modes {
        assert_eq!(mode, "2", "thread {name} is not filtered: {modes:?}");
    }
}

#[test]
fn no_seccomp_turns_the_filters_off() {
    let modes = modes_of_running_vm(&["--no-seccomp"]);
    let vcpu = modes.iter().find(|(n, _)| n == "vcpu0").expect("vcpu0");
    assert_eq!(vcpu.1, "0", "{modes:?}");
}

fn forbidden(role: &str, extra: &[&str]) -> common::Output {
    let mut args = vec!["run", "--guest", "--no-stdin", "--timeout", "60"];
    args.extend_from_slice(extra);
    let mut cmd = Command::new(common::kvmkit());
    cmd.args(&args)
        .env("KVMKIT_SECCOMP_SELFTEST", role)
        .stdin(Stdio::null());
    let out = cmd.output().expect("run kvmkit");
    common::Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn a_forbidden_syscall_on_a_vcpu_is_reported() {
    let out = forbidden("vcpu", &["--workload", "primes:1000"]);
    assert_eq!(out.code, Some(159), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("seccomp: thread 'vcpu0' made syscall 110 (getppid), which its filter forbids"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_forbidden_syscall_on_a_device_worker_is_reported() {
    let out = forbidden("worker", &["--rng", "--workload", "rng:4096"]);
    assert_eq!(out.code, Some(159), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("seccomp: thread 'virtio-rng' made syscall 110 (getppid), which its filter forbids"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_custom_filter_file_replaces_the_defaults() {
    let dir = std::env::temp_dir().join(format!("kvmkit-it-seccomp-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    // Allows everything but getppid on every thread.
    let thread = r#"{"default_action": "allow", "filter_action": "trap", "filter": [{"syscall": "getppid"}]}"#;
    let json = format!(r#"{{"vmm": {thread}, "api": {thread}, "vcpu": {thread}}}"#);
    let path = dir.join("filter.json");
    std::fs::write(&path, json).expect("write");
    let p = path.to_str().expect("utf-8");
    let ok = common::run_guest(&["--seccomp-filter", p, "--workload", "primes:1000"]);
    assert_eq!(ok.code, Some(0), "{}", ok.stderr);
    let out = forbidden("vcpu", &["--seccomp-filter", p, "--workload", "primes:1000"]);
    assert_eq!(out.code, Some(159), "{}", out.stderr);
    assert!(out.stderr.contains("(getppid)"), "{}", out.stderr);
    std::fs::write(&path, "{").expect("write");
    let bad = common::run_guest(&["--seccomp-filter", p, "--workload", "primes:1000"]);
    assert_eq!(bad.code, Some(2), "{}", bad.stderr);
    assert!(bad.stderr.contains("not a seccomp filter file"), "{}", bad.stderr);
    let _ = std::fs::remove_dir_all(&dir);
}
