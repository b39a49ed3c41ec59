//! `kvmkit run --landlock`: the VM works with the files it was given, and a
//! file outside them (a snapshot into a directory not allowed) is refused
//! by the kernel while one under --landlock-allow is written.

mod common;

use common::vmm::Vmm;
use std::path::PathBuf;
use std::time::Duration;

fn landlock_abi() -> i64 {
    // SAFETY: with a null attribute and size 0 this only asks the ABI version.
    unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, std::ptr::null::<u8>(), 0usize, 1u32) }
}

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kvmkit-it-landlock-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("dir");
    d
}

#[test]
fn guest_with_a_disk_and_results_runs_under_landlock() {
    if landlock_abi() <= 0 {
        eprintln!("skipped: this kernel has no Landlock");
        return;
    }
    let d = dir("blk");
    let img = d.join("a.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(16 << 20))
        .expect("image");
    let results = d.join("r.json");
    let disk = format!("path={}", img.display());
    let out = common::run_guest(&[
        "--landlock",
        "--rng",
        "--disk",
        &disk,
        "--results",
        results.to_str().expect("utf-8"),
        "--workload",
        "blk-pattern",
    ]);
    let json = std::fs::read_to_string(&results).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&d);
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("verified=OK"), "{}", out.stdout);
    assert!(json.contains('{'), "no results written");
}

#[test]
fn snapshot_outside_the_allowed_paths_is_refused() {
    if landlock_abi() <= 0 {
        eprintln!("skipped: this kernel has no Landlock");
        return;
    }
    let d = dir("snap");
    let (ok, no) = (d.join("ok"), d.join("no"));
    std::fs::create_dir_all(&ok).expect("ok");
    std::fs::create_dir_all(&no).expect("no");
    let mut vmm = Vmm::spawn(
        &d,
        "api",
        &[
            "--guest",
            "--timeout",
            "60",
            "--landlock",
            "--landlock-allow",
            ok.to_str().expect("utf-8"),
            "--workload",
            "ticks:100",
        ],
    );
    let sock = vmm.sock().to_path_buf();
    let s = sock.to_str().expect("utf-8");
    let ctl = |a: &[&str]| {
        let mut v = vec!["ctl", "--api-sock", s];
        v.extend_from_slice(a);
        common::run(&v, Duration::from_secs(30))
    };
    let paused = ctl(&["pause"]);
    let p = |dir: &PathBuf, f: &str| dir.join(f).to_str().expect("utf-8").to_owned();
    let denied = ctl(&["snapshot", "--state", &p(&no, "s"), "--mem", &p(&no, "m")]);
    let allowed = ctl(&["snapshot", "--state", &p(&ok, "s"), "--mem", &p(&ok, "m")]);
    let stopped = ctl(&["stop"]);
    let _ = vmm.child.wait();
    let left_no: Vec<_> = std::fs::read_dir(&no)
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    let state_len = std::fs::metadata(ok.join("s")).map(|m| m.len()).unwrap_or(0);
    let sock_left = sock.exists();
    let _ = std::fs::remove_dir_all(&d);
    assert_eq!(paused.code, Some(0), "{}", paused.stderr);
    assert_ne!(denied.code, Some(0), "a snapshot outside the allowed paths was written");
    assert!(denied.stderr.contains("Permission denied"), "{}", denied.stderr);
    assert!(left_no.is_empty(), "{left_no:?}");
    assert_eq!(allowed.code, Some(0), "{}", allowed.stderr);
    assert!(state_len > 0);
    assert_eq!(stopped.code, Some(0), "{}", stopped.stderr);
    assert!(!sock_left, "the API socket was not removed at the end");
}

#[test]
fn landlock_allow_needs_landlock() {
    let out = common::run(&["run", "--guest", "--landlock-allow", "/tmp"], Duration::from_secs(30));
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("--landlock"), "{}", out.stderr);
}
