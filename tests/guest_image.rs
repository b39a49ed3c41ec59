//! `kvmkit image guest --out FILE` writes kvmkit's own test guest as a PVH
//! ELF that boots like any other kernel: with `kvmkit run --kernel FILE` and
//! only a Linux-style command line (no `kvmkit.tsc_khz`, no `kvmkit.cpus`),
//! as another VMM would boot it.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::run;

/// A fresh, empty directory for one test.
fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kvmkit-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// `tsc_khz=K (SOURCE)` from the guest's `kvmkit-guest: workload=...` line.
fn tsc_line(stdout: &str) -> Option<(u64, String)> {
    let line = stdout.lines().find(|l| l.starts_with("kvmkit-guest: workload="))?;
    let rest = line.split(" tsc_khz=").nth(1)?;
    let (khz, rest) = rest.split_once(' ')?;
    let source = rest.strip_prefix('(')?.split(')').next()?;
    Some((khz.parse().ok()?, source.to_owned()))
}

#[test]
fn image_guest_writes_an_elf_that_boots_with_a_plain_cmdline() {
    let dir = scratch_dir("image-guest");
    let elf = dir.join("g.elf");
    let p = elf.to_string_lossy().to_string();
    let out = run(&["image", "guest", "--out", &p], Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "stderr:\n{}", out.stderr);
    assert!(
        out.stdout.contains(&p),
        "stdout does not name the file:\n{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("--kernel"),
        "stdout does not say how to boot it:\n{}",
        out.stdout
    );
    let bytes = std::fs::read(&elf).expect("read the written guest");
    assert_eq!(&bytes[..4], b"\x7fELF");
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .expect("read dir")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .filter(|n| n != "g.elf")
        .collect();
    assert!(leftovers.is_empty(), "temporary files left behind: {leftovers:?}");

    let boot = run(
        &[
            "run",
            "--kernel",
            &p,
            "--cmdline",
            "console=ttyS0 reboot=k panic=1 kvmkit.workload=primes:100000",
            "--no-stdin",
            "--timeout",
            "30",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(boot.code, Some(0), "stdout:\n{}\nstderr:\n{}", boot.stdout, boot.stderr);
    assert!(
        boot.stdout.contains("count=9592"),
        "console lacks the count:\n{}",
        boot.stdout
    );
    assert!(boot.stdout.contains("cpus=1"), "one vCPU assumed:\n{}", boot.stdout);

    // Without kvmkit.tsc_khz the guest finds the TSC rate itself (CPUID or
    // the PIT) or says it is unknown; when it finds one, it must agree with
    // the rate kvmkit reads from KVM and passes to `--guest`.
    let (khz, source) = tsc_line(&boot.stdout).expect("tsc_khz in the banner");
    assert!(source != "cmdline", "nobody passed kvmkit.tsc_khz:\n{}", boot.stdout);
    if source != "unknown" {
        let reference = run(
            &["run", "--guest", "--no-stdin", "--timeout", "30", "--workload", "idle"],
            Duration::from_secs(60),
        );
        let (kvm_khz, kvm_source) = tsc_line(&reference.stdout).expect("tsc_khz with --guest");
        assert_eq!(kvm_source, "cmdline", "{}", reference.stdout);
        let error = khz.abs_diff(kvm_khz) as f64 / kvm_khz as f64;
        assert!(
            error < 0.02,
            "guest-found TSC rate {khz} kHz ({source}) is {:.2}% off KVM's {kvm_khz} kHz",
            error * 100.0
        );
    } else {
        assert!(
            boot.stdout.contains("time_ns=0"),
            "unknown rate reports 0 ns:\n{}",
            boot.stdout
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn image_guest_replaces_an_existing_file() {
    let dir = scratch_dir("image-guest-replace");
    let elf = dir.join("g.elf");
    std::fs::write(&elf, b"old").expect("write");
    let p = elf.to_string_lossy().to_string();
    let out = run(&["image", "guest", "--out", &p], Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "stderr:\n{}", out.stderr);
    assert_eq!(&std::fs::read(&elf).expect("read")[..4], b"\x7fELF");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn image_guest_into_a_missing_directory_fails_with_one_line() {
    let dir = scratch_dir("image-guest-missing");
    let target = dir.join("no-such-dir").join("g.elf");
    let p = target.to_string_lossy().to_string();
    let out = run(&["image", "guest", "--out", &p], Duration::from_secs(30));
    assert_eq!(out.code, Some(2), "stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    let lines: Vec<_> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected:\n{}", out.stderr);
    assert!(lines[0].contains("does not exist"), "{}", lines[0]);
    assert!(lines[0].contains(&p), "the line names the file: {}", lines[0]);
    assert!(out.stdout.is_empty(), "printed on stdout: {}", out.stdout);
    assert!(!target.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn image_guest_never_replaces_a_fifo_or_device() {
    // A rename over /dev/null once turned it into a regular file; a FIFO
    // stands in for it here (same check: not a regular file).
    let dir = scratch_dir("image-guest-fifo");
    let fifo = dir.join("pipe");
    let c = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).expect("cstr");
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let p = fifo.to_string_lossy().to_string();
    let out = run(&["image", "guest", "--out", &p], Duration::from_secs(30));
    assert_eq!(out.code, Some(2), "stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("not a regular file"), "{}", out.stderr);
    use std::os::unix::fs::FileTypeExt;
    assert!(
        std::fs::metadata(&fifo).expect("fifo").file_type().is_fifo(),
        "the FIFO was replaced"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
