//! Snapshot and restore across processes, on /dev/kvm: kvmkit's guest is
//! paused in the middle of `primes:N`, snapshotted over the API, its
//! process killed; a new process restores it (from the CLI, over the API,
//! five clones at once) and the guest prints the right count. With virtio
//! devices: a disk-write workload snapshotted mid-way finishes after the
//! restore with the right data on the host disk (2 vCPUs); an rng workload
//! restored as five clones at once, sharing a read-only disk. Broken state
//! files, memory files and missing or resized disks are refused with one
//! line and exit 2.

mod common;

use common::vmm::Vmm;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// primes:N with N = 5,000,000 runs for ~4 s here: long enough to be
/// snapshotted in the middle. pi(5e6) = 348513.
const WORKLOAD: &str = "primes:5000000";
const COUNT: &str = "count=348513";

fn kvm() -> bool {
    Path::new("/dev/kvm").exists()
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kvmkit-snap-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Boots `cpus` vCPUs on primes, pauses in the middle, snapshots to
/// `dir/primes.state` + `dir/primes.mem`, then kills the process (SIGKILL).
fn snapshot_mid_primes(dir: &Path, cpus: usize) -> (PathBuf, PathBuf) {
    let cpus_arg = cpus.to_string();
    let vmm = Vmm::spawn(dir, "orig", &["--guest", "--workload", WORKLOAD, "--cpus", &cpus_arg]);
    let last = format!("cpu {} online", cpus - 1);
    vmm.wait_stdout("the vCPUs online", |s| s.contains(&last), Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(700));
    let (status, text) = vmm.req(
        "PUT",
        "/snapshot/create",
        r#"{"snapshot_path":"x","mem_file_path":"y"}"#,
    );
    assert_eq!(status, 400, "a running VM is not snapshotted: {text}");
    assert!(text.contains("Paused"), "{text}");
    let (state, mem) = pause_and_snapshot(&vmm, dir, "primes");
    assert!(
        !vmm.stdout().contains("count="),
        "the snapshot should be taken in the middle of the run:\n{}",
        vmm.stdout()
    );
    vmm.kill();
    assert_eq!(std::fs::metadata(&mem).expect("memory file").len(), 256 << 20);
    (state, mem)
}

fn restore_cli(state: &Path, mem: &Path, extra: &[&str]) -> common::Output {
    let mut args = vec![
        "run",
        "--no-stdin",
        "--restore-state",
        state.to_str().expect("utf8"),
        "--restore-mem",
        mem.to_str().expect("utf8"),
    ];
    args.extend_from_slice(extra);
    common::run(&args, Duration::from_secs(60))
}

fn assert_counts(out: &common::Output, cpus: usize) {
    assert_eq!(out.code, Some(0), "stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    let lines = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("primes:"))
        .collect::<Vec<_>>();
    assert_eq!(lines.len(), cpus, "one result per vCPU:\n{}", out.stdout);
    for l in lines {
        assert!(l.contains(COUNT), "wrong count after restore: {l}");
    }
}

#[test]
fn primes_survive_snapshot_kill_and_restore() {
    if !kvm() {
        eprintln!("skipped: no /dev/kvm");
        return;
    }
    let dir = temp_dir("one");
    let (state, mem) = snapshot_mid_primes(&dir, 1);
    assert_counts(&restore_cli(&state, &mem, &[]), 1);
    // Eager copy of the memory file gives the same result.
    assert_counts(&restore_cli(&state, &mem, &["--restore-mem-copy"]), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn two_vcpus_survive_snapshot_and_restore() {
    if !kvm() {
        eprintln!("skipped: no /dev/kvm");
        return;
    }
    let dir = temp_dir("two");
    let (state, mem) = snapshot_mid_primes(&dir, 2);
    assert_counts(&restore_cli(&state, &mem, &[]), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn snapshot_loads_over_the_api_and_clones_run_at_once() {
    if !kvm() {
        eprintln!("skipped: no /dev/kvm");
        return;
    }
    let dir = temp_dir("api");
    let (state, mem) = snapshot_mid_primes(&dir, 1);
    // A fresh VMM loads it (Paused), then resumes over the API.
    let mut vmm = Vmm::spawn(&dir, "load", &[]);
    let body = serde_json::json!({
        "snapshot_path": state.to_str().expect("utf8"),
        "mem_backend": {"backend_type": "File", "backend_path": mem.to_str().expect("utf8")},
        "resume_vm": false,
    });
    vmm.ok("PUT", "/snapshot/load", &body.to_string());
    let (_, info) = vmm.req("GET", "/", "");
    assert!(info.contains("\"Paused\""), "{info}");
    let (status, text) = vmm.req("PUT", "/snapshot/load", &body.to_string());
    assert_eq!(status, 400, "a second load is refused: {text}");
    vmm.ok("PATCH", "/vm", r#"{"state":"Resumed"}"#);
    assert_eq!(vmm.wait_exit(Duration::from_secs(60)), Some(0));
    assert!(vmm.stdout().contains(COUNT), "{}", vmm.stdout());
    // A VMM that was configured first refuses a load.
    let fresh = Vmm::spawn(&dir, "configured", &[]);
    fresh.ok("PUT", "/machine-config", r#"{"vcpu_count":1,"mem_size_mib":128}"#);
    let (status, text) = fresh.req("PUT", "/snapshot/load", &body.to_string());
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("fresh"), "{text}");
    drop(fresh);
    // Five clones of one snapshot at once, each with the right count.
    let clones: Vec<_> = (0..5)
        .map(|_| {
            let (s, m) = (state.clone(), mem.clone());
            std::thread::spawn(move || restore_cli(&s, &m, &[]))
        })
        .collect();
    for c in clones {
        assert_counts(&c.join().expect("clone"), 1);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// One line on stderr naming the problem, exit status 2.
fn assert_refused(out: &common::Output, what: &str) {
    assert_eq!(out.code, Some(2), "stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    let lines: Vec<_> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {}", out.stderr);
    assert!(lines[0].contains(what), "expected '{what}' in: {}", lines[0]);
    assert!(out.stdout.is_empty(), "nothing ran: {}", out.stdout);
}

#[test]
fn broken_snapshots_are_refused_with_one_line() {
    if !kvm() {
        eprintln!("skipped: no /dev/kvm");
        return;
    }
    let dir = temp_dir("bad");
    let (state, mem) = snapshot_mid_primes(&dir, 1);
    let good = std::fs::read(&state).expect("state");
    let bad = dir.join("bad-state");
    // Truncated.
    std::fs::write(&bad, &good[..good.len() / 2]).expect("write");
    assert_refused(&restore_cli(&bad, &mem, &[]), "truncated");
    std::fs::write(&bad, &good[..20]).expect("write");
    assert_refused(&restore_cli(&bad, &mem, &[]), "truncated");
    // One byte of the body flipped.
    let mut b = good.clone();
    let at = b.len() - 100;
    b[at] ^= 0x20;
    std::fs::write(&bad, &b).expect("write");
    assert_refused(&restore_cli(&bad, &mem, &[]), "CRC");
    // Another format version, another kvmkit version.
    let mut b = good.clone();
    b[8] = 99;
    std::fs::write(&bad, &b).expect("write");
    assert_refused(&restore_cli(&bad, &mem, &[]), "format 99");
    let mut b = good.clone();
    b[12..16].copy_from_slice(b"9.9.");
    std::fs::write(&bad, &b).expect("write");
    assert_refused(&restore_cli(&bad, &mem, &[]), "kvmkit 9.9.");
    // Not a state file at all.
    assert_refused(&restore_cli(&mem, &mem, &[]), "magic");
    // A memory file of the wrong size.
    let short = dir.join("short-mem");
    std::fs::write(&short, vec![0u8; 1 << 20]).expect("write");
    assert_refused(&restore_cli(&state, &short, &[]), "bytes");
    // A missing memory file.
    assert_refused(&restore_cli(&state, &dir.join("nope"), &[]), "nope");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_restored_vm_can_be_snapshotted_again() {
    if !kvm() {
        eprintln!("skipped: no /dev/kvm");
        return;
    }
    let dir = temp_dir("chain");
    let (state, mem) = snapshot_mid_primes(&dir, 1);
    let (s, m) = (state.to_str().expect("utf8"), mem.to_str().expect("utf8"));
    let vmm = Vmm::spawn(&dir, "second", &["--restore-state", s, "--restore-mem", m]);
    let (_, info) = vmm.req("GET", "/", "");
    assert!(
        info.contains("\"Paused\""),
        "restored with an API socket: Paused ({info})"
    );
    vmm.ok("PATCH", "/vm", r#"{"state":"Resumed"}"#);
    std::thread::sleep(Duration::from_millis(300));
    vmm.ok("PATCH", "/vm", r#"{"state":"Paused"}"#);
    let (state2, mem2) = (dir.join("state2"), dir.join("mem2"));
    let body = serde_json::json!({
        "snapshot_path": state2.to_str().expect("utf8"),
        "mem_file_path": mem2.to_str().expect("utf8"),
    });
    vmm.ok("PUT", "/snapshot/create", &body.to_string());
    vmm.kill();
    // The VM generation ID (16 bytes at 0xff000, low RAM: offset 0 of the
    // memory file) was set at boot and is new after the restore.
    let id = |m: &Path| {
        use std::os::unix::fs::FileExt;
        let mut b = [0u8; 16];
        std::fs::File::open(m)
            .and_then(|f| f.read_exact_at(&mut b, 0xff000))
            .expect("read the ID");
        b
    };
    let (first, second) = (id(&mem), id(&mem2));
    assert_ne!(first, [0; 16], "an ID from boot");
    assert_ne!(second, [0; 16]);
    assert_ne!(first, second, "a new VM generation after the restore");
    assert_counts(&restore_cli(&state2, &mem2, &[]), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A sparse disk image, removed when dropped.
struct Image(PathBuf);

impl Image {
    fn new(dir: &Path, name: &str, mib: u64) -> Self {
        let p = dir.join(name);
        std::fs::File::create(&p)
            .and_then(|f| f.set_len(mib << 20))
            .expect("image");
        Self(p)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("utf8")
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Pauses `vmm` and snapshots it to `dir/NAME.state` + `dir/NAME.mem`.
fn pause_and_snapshot(vmm: &Vmm, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    vmm.ok("PATCH", "/vm", r#"{"state":"Paused"}"#);
    vmm.snapshot("Full", dir, name)
}

/// Every sector of `img` carries blk-pattern's pattern for `seed`.
fn assert_pattern_on_host(img: &Path, seed: u64) {
    use std::io::Read as _;
    let mut f = std::fs::File::open(img).expect("image");
    let mut buf = vec![0u8; 1 << 20];
    let mut sector = 0u64;
    let mut bad = 0u64;
    let mut first = None;
    loop {
        let n = f.read(&mut buf).expect("read image");
        if n == 0 {
            break;
        }
        assert_eq!(n % 512, 0, "short read");
        let words: Vec<u64> = buf[..n]
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
            .collect();
        let c = kvmkit_workloads::check_sectors(seed, sector, &words);
        bad += c.bad_sectors;
        first = first.or(c.first);
        sector += (n / 512) as u64;
    }
    assert_eq!(
        bad, 0,
        "sectors without the guest's pattern on the host disk; first: {first:?}"
    );
}

/// The `seed=0x...` blk-pattern printed.
fn pattern_seed(stdout: &str) -> u64 {
    let hex = stdout
        .split("seed=0x")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no seed in:\n{stdout}"));
    u64::from_str_radix(hex, 16).expect("hex seed")
}

#[test]
fn disk_writes_survive_snapshot_kill_and_restore_with_two_vcpus() {
    if !kvm() {
        eprintln!("skipped: no /dev/kvm");
        return;
    }
    let dir = temp_dir("disk");
    // 1 GiB: blk-pattern writes it for ~2 s here, then reads it back.
    let img = Image::new(&dir, "disk.img", 1024);
    // Polling on: the snapshot may catch the device mid-window, with
    // VIRTQ_USED_F_NO_NOTIFY in guest memory; the restored worker re-arms.
    let disk = format!("path={},poll=auto", img.path());
    let vmm = Vmm::spawn(
        &dir,
        "orig",
        &["--guest", "--workload", "blk-pattern", "--disk", &disk, "--cpus", "2"],
    );
    vmm.wait_stdout("the write phase", |s| s.contains("capacity="), Duration::from_secs(30));
    let (state, mem) = pause_and_snapshot(&vmm, &dir, "a");
    let before = vmm.stdout();
    assert!(
        !before.contains("verified="),
        "the snapshot should be taken in the middle of the workload:\n{before}"
    );
    let seed = pattern_seed(&before);
    vmm.kill();

    // A missing disk: one line, exit 2, nothing runs.
    let moved = dir.join("moved.img");
    std::fs::rename(&img.0, &moved).expect("move the disk away");
    let out = restore_cli(&state, &mem, &[]);
    assert_refused(&out, "does not exist");
    assert!(out.stderr.contains("disk.img"), "{}", out.stderr);
    // A disk of another size is refused too.
    std::fs::File::create(&img.0)
        .and_then(|f| f.set_len(512 << 20))
        .expect("small image");
    assert_refused(&restore_cli(&state, &mem, &[]), "bytes");
    std::fs::rename(&moved, &img.0).expect("move the disk back");

    // Restored Paused (workers parked), snapshotted again at once: the
    // queues read back from the parked workers give a second good snapshot.
    let (s, m) = (state.to_str().expect("utf8"), mem.to_str().expect("utf8"));
    let again = Vmm::spawn(&dir, "again", &["--restore-state", s, "--restore-mem", m]);
    let (state2, mem2) = {
        let (_, info) = again.req("GET", "/", "");
        assert!(info.contains("\"Paused\""), "{info}");
        let state2 = dir.join("b.state");
        let mem2 = dir.join("b.mem");
        let body = serde_json::json!({
            "snapshot_path": state2.to_str().expect("utf8"),
            "mem_file_path": mem2.to_str().expect("utf8"),
        });
        again.ok("PUT", "/snapshot/create", &body.to_string());
        (state2, mem2)
    };
    again.kill();

    let t = Instant::now();
    let out = restore_cli(&state2, &mem2, &[]);
    eprintln!("restore + rest of the workload: {} ms", t.elapsed().as_millis());
    assert_eq!(out.code, Some(0), "stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("verified=OK"),
        "the restored guest reads back its pattern:\n{}",
        out.stdout
    );
    assert_pattern_on_host(&img.0, seed);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The `bytes=N ... sane=yes` line of the rng workload.
fn assert_rng_done(out: &common::Output, bytes: &str) {
    assert_eq!(out.code, Some(0), "stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("rng: bytes="))
        .unwrap_or_else(|| panic!("no rng result:\n{}", out.stdout));
    assert!(line.contains(&format!("bytes={bytes} ")), "{line}");
    assert!(line.contains("sane=yes"), "{line}");
}

#[test]
fn rng_clones_with_a_read_only_disk_run_at_once() {
    if !kvm() {
        eprintln!("skipped: no /dev/kvm");
        return;
    }
    let dir = temp_dir("rng");
    let img = Image::new(&dir, "ro.img", 16);
    let disk = format!("path={},ro=on", img.path());
    // ~3 s of reading from virtio-rng here.
    let bytes = "250000000";
    let workload = format!("rng:{bytes}");
    let vmm = Vmm::spawn(
        &dir,
        "orig",
        &["--guest", "--workload", &workload, "--rng", "--disk", &disk],
    );
    vmm.wait_stdout(
        "the rng device",
        |s| s.contains("entropy device"),
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_millis(300));
    let (state, mem) = pause_and_snapshot(&vmm, &dir, "r");
    assert!(!vmm.stdout().contains("sane="), "mid-workload:\n{}", vmm.stdout());
    vmm.kill();

    // An unknown interface in network_overrides is refused over the API.
    let load = Vmm::spawn(&dir, "load", &[]);
    let body = serde_json::json!({
        "snapshot_path": state.to_str().expect("utf8"),
        "mem_backend": {"backend_type": "File", "backend_path": mem.to_str().expect("utf8")},
        "network_overrides": [{"iface_id": "eth9", "host_dev_name": "tap9"}],
    });
    let (status, text) = load.req("PUT", "/snapshot/load", &body.to_string());
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("eth9"), "{text}");
    // The refused load left the VMM fresh: a good one loads Paused (the
    // rng's worker parked), and resuming lets the workload finish.
    let mut load = load;
    let body = serde_json::json!({
        "snapshot_path": state.to_str().expect("utf8"),
        "mem_backend": {"backend_type": "File", "backend_path": mem.to_str().expect("utf8")},
    });
    load.ok("PUT", "/snapshot/load", &body.to_string());
    let (_, info) = load.req("GET", "/", "");
    assert!(info.contains("\"Paused\""), "{info}");
    // Longer than the guest driver's 5 s device timeout: the TSC runs on
    // while the VM is paused (and on kvm_pvm a restored guest's TSC includes
    // the time since the snapshot), and a wait in flight must not count it.
    std::thread::sleep(Duration::from_millis(6000));
    assert!(!load.stdout().contains("sane="), "a Paused VM makes no progress");
    load.ok("PATCH", "/vm", r#"{"state":"Resumed"}"#);
    assert_eq!(load.wait_exit(Duration::from_secs(60)), Some(0), "{}", load.stdout());
    assert!(load.stdout().contains("sane=yes"), "{}", load.stdout());
    drop(load);

    // Five clones at once, copy-on-write memory, the read-only disk shared.
    let clones: Vec<_> = (0..5)
        .map(|_| {
            let (s, m) = (state.clone(), mem.clone());
            std::thread::spawn(move || restore_cli(&s, &m, &[]))
        })
        .collect();
    for c in clones {
        assert_rng_done(&c.join().expect("clone"), bytes);
    }
    // Under Landlock, the disk the state file names is allowed.
    assert_rng_done(&restore_cli(&state, &mem, &["--landlock"]), bytes);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A vsock device whose driver never started it (the guest runs ticks) is
/// saved with its CID and path and rebuilt listening there (its
/// connections and the transport reset: `tests/vsock.rs`).
#[test]
fn a_vm_with_an_unstarted_vsock_device_is_snapshotted_and_restored() {
    if !kvm() {
        eprintln!("skipped: no /dev/kvm");
        return;
    }
    let dir = temp_dir("vsock");
    let uds = dir.join("v.sock");
    let spec = format!("cid=3,uds={}", uds.display());
    let vmm = Vmm::spawn(
        &dir,
        "orig",
        &["--guest", "--workload", "ticks:100", "--vsock", &spec, "--rng"],
    );
    vmm.wait_stdout("the guest", |s| s.contains("tick="), Duration::from_secs(30));
    vmm.ok("PATCH", "/vm", r#"{"state":"Paused"}"#);
    let (state, mem) = (dir.join("state"), dir.join("mem"));
    let body = serde_json::json!({
        "snapshot_path": state.to_str().expect("utf8"),
        "mem_file_path": mem.to_str().expect("utf8"),
    });
    vmm.ok("PUT", "/snapshot/create", &body.to_string());
    vmm.kill();
    let (s, m) = (state.to_str().expect("utf8"), mem.to_str().expect("utf8"));
    let restored = Vmm::spawn(&dir, "restored", &["--restore-state", s, "--restore-mem", m]);
    let (status, config) = restored.req("GET", "/vm/config", "");
    assert_eq!(status, 200, "{config}");
    assert!(config.contains(r#""guest_cid":3"#), "{config}");
    assert!(
        std::os::unix::net::UnixStream::connect(&uds).is_ok(),
        "the restored device listens at the saved path"
    );
    restored.ok("PATCH", "/vm", r#"{"state":"Resumed"}"#);
    drop(restored);
    let _ = std::fs::remove_dir_all(&dir);
}
