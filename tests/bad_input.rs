//! Every bad-input case gets one clear line on stderr and exit status 2,
//! before any VM is started.

mod common;

use std::time::Duration;

use common::run;

fn assert_user_error(args: &[&str], expect: &str) {
    let out = run(args, Duration::from_secs(30));
    assert_eq!(out.code, Some(2), "{args:?} should exit 2\nstderr: {}", out.stderr);
    let lines: Vec<_> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        out.stderr.contains(expect),
        "{args:?}: stderr lacks {expect:?}: {}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "{args:?} printed on stdout: {}", out.stdout);
    if !args.contains(&"--bogus-option") {
        assert_eq!(lines.len(), 1, "{args:?} should print one line, got: {}", out.stderr);
    }
}

#[test]
fn missing_kernel() {
    assert_user_error(
        &["run", "--kernel", "/nonexistent/vmlinux"],
        "cannot open kernel /nonexistent/vmlinux",
    );
}

#[test]
fn directory_as_kernel() {
    assert_user_error(&["run", "--kernel", "/tmp"], "is a directory");
}

#[test]
fn file_that_is_not_a_kernel() {
    let path = std::env::temp_dir().join(format!("kvmkit-not-a-kernel-{}", std::process::id()));
    std::fs::write(&path, b"#!/bin/sh\necho hello\n").expect("write");
    let p = path.to_string_lossy().to_string();
    assert_user_error(&["run", "--kernel", &p], "neither a Linux bzImage nor an ELF kernel");
    let _ = std::fs::remove_file(path);
}

/// A FIFO (or other non-file) as an image is refused at once, not opened
/// (open(2) on a FIFO blocks until a writer comes, before --timeout is armed).
#[test]
fn fifo_as_kernel_or_disk() {
    let path = std::env::temp_dir().join(format!("kvmkit-fifo-input-{}", std::process::id()));
    let c = std::ffi::CString::new(path.to_str().expect("utf8")).expect("cstr");
    // SAFETY: mkfifo on a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let p = path.to_string_lossy().to_string();
    assert_user_error(&["run", "--kernel", &p, "--timeout", "5"], "is a FIFO");
    assert_user_error(
        &["run", "--guest", "--disk", &format!("path={p},ro=on"), "--timeout", "5"],
        "is a FIFO",
    );
    assert_user_error(&["run", "--kernel", "/dev/zero"], "character device");
    let _ = std::fs::remove_file(path);
}

#[test]
fn timeouts_past_the_clock_are_refused() {
    assert_user_error(&["run", "--guest", "--timeout", "1e19"], "--timeout 1e19: at most");
    assert_user_error(&["run", "--guest", "--timeout", "1e300"], "at most");
}

#[test]
fn host_memtest_larger_than_the_host_is_refused() {
    assert_user_error(&["host", "--workload", "memtest:100000000000"], "more than the host's");
}

#[test]
fn zero_cpus() {
    assert_user_error(&["run", "--guest", "--cpus", "0"], "at least 1 vCPU");
}

#[test]
fn too_many_cpus() {
    assert_user_error(&["run", "--guest", "--cpus", "100000"], "--cpus 100000");
}

#[test]
fn memory_too_small() {
    assert_user_error(&["run", "--guest", "--memory", "1"], "too small");
}

#[test]
fn memory_larger_than_host() {
    assert_user_error(&["run", "--guest", "--memory", "100000000"], "more than this host's");
}

#[test]
fn unknown_workload() {
    assert_user_error(&["run", "--guest", "--workload", "nope:1"], "unknown workload 'nope'");
}

#[test]
fn workload_argument_with_its_grammar() {
    assert_user_error(&["run", "--guest", "--workload", "primes:abc"], "primes[:N]");
    assert_user_error(&["host", "--workload", "exits:10"], "does not run on the host");
}

#[test]
fn unknown_option() {
    assert_user_error(
        &["run", "--guest", "--bogus-option"],
        "unexpected argument '--bogus-option'",
    );
}

#[test]
fn elf_without_pvh_note_refuses_pvh() {
    // The kvmkit binary itself is an ELF without a PVH note.
    let out = run(
        &["run", "--kernel", common::kvmkit(), "--boot", "pvh"],
        Duration::from_secs(30),
    );
    assert_eq!(out.code, Some(2), "stderr: {}", out.stderr);
    assert!(
        // (The pre-load check may refuse it first: a host binary's segments start at 0.)
        out.stderr.contains("no PVH entry note")
            || out.stderr.contains("cannot load kernel")
            || out.stderr.contains("below 1 MiB"),
        "{}",
        out.stderr
    );
}

#[test]
fn disk_image_problems_are_caught_before_boot() {
    assert_user_error(&["run", "--guest", "--disk", "path=/nonexistent.img"], "does not exist");
    assert_user_error(&["run", "--guest", "--disk", "path=/tmp"], "is a directory");
    let odd = std::env::temp_dir().join(format!("kvmkit-odd-{}.img", std::process::id()));
    std::fs::write(&odd, [0u8; 1000]).expect("write");
    assert_user_error(
        &["run", "--guest", "--disk", &format!("path={}", odd.display())],
        "not a multiple of 512",
    );
    let _ = std::fs::remove_file(odd);
    assert_user_error(
        &["run", "--guest", "--disk", "path=/x.img,cache=maybe"],
        "unknown option cache=maybe",
    );
}

#[test]
fn a_disk_in_use_is_refused() {
    let img = std::env::temp_dir().join(format!("kvmkit-locked-{}.img", std::process::id()));
    let f = std::fs::File::create(&img).expect("create");
    f.set_len(1 << 20).expect("size");
    // SAFETY: flock on a file we own, released when `f` is dropped.
    let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) };
    assert_eq!(rc, 0);
    assert_user_error(
        &["run", "--guest", "--disk", &format!("path={}", img.display())],
        "in use by another process",
    );
    drop(f);
    let _ = std::fs::remove_file(img);
}

/// A truncated kernel says "truncated", not "give the VM more --memory"; the
/// same image as two drives says so, not "locked by another process".
#[test]
fn truncated_kernels_and_one_image_as_two_disks_get_precise_messages() {
    let dir = std::env::temp_dir().join(format!("kvmkit-precise-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let elf = dir.join("guest.elf");
    let out = run(
        &["image", "guest", "--out", &elf.to_string_lossy()],
        Duration::from_secs(30),
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let bytes = std::fs::read(&elf).expect("read guest");
    let cut = dir.join("cut.elf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    assert_user_error(&["run", "--kernel", &cut.to_string_lossy()], "is truncated");
    let disk = dir.join("d.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("disk");
    let d = disk.to_string_lossy();
    assert_user_error(
        &["run", "--guest", "--disk", &d, "--disk", &d],
        "cannot back two drives",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A mode-0444 image opened for writing by root is warned about.
#[test]
fn a_read_only_mode_image_opened_for_writing_is_warned_about() {
    let path = std::env::temp_dir().join(format!("kvmkit-444-{}.img", std::process::id()));
    std::fs::write(&path, vec![0u8; 1 << 20]).expect("disk");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o444)).expect("chmod");
    let p = path.to_string_lossy().to_string();
    let out = run(
        &[
            "run",
            "--guest",
            "--workload",
            "primes:1000",
            "--no-stdin",
            "--disk",
            &p,
        ],
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("no write permission bits"), "{}", out.stderr);
    let out = run(
        &[
            "run",
            "--guest",
            "--workload",
            "primes:1000",
            "--no-stdin",
            "--disk",
            &format!("path={p},ro=on"),
        ],
        Duration::from_secs(60),
    );
    assert!(!out.stderr.contains("no write permission bits"), "{}", out.stderr);
    let _ = std::fs::remove_file(path);
}
