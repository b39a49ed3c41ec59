//! Diff snapshots on /dev/kvm: kvmkit's guest runs a device workload with
//! dirty-page tracking on; a Full snapshot, then the guest runs on, then a
//! Diff snapshot. The diff merged onto the base (`kvmkit snapshot rebase`)
//! must hold the same bytes as a Full snapshot taken at the same moment
//! (so no page the guest or a device wrote is missing: virtio-blk and
//! virtio-rng fill guest buffers and used rings from the VMM, which KVM's
//! dirty log does not see), and a VM restored from it in a new process
//! finishes its workload with the right results (rng: after a second Diff
//! taken in a VM restored from the first merge). Diff without tracking, or
//! of a running VM, is refused with a 400 that says why.

mod common;

use common::vmm::Vmm;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn kvm() -> bool {
    Path::new("/dev/kvm").exists()
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kvmkit-diff-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn text(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// Bytes of `path` that hold data (not holes).
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("metadata").blocks() * 512
}

/// Asserts that two memory files hold the same bytes (holes read as zeros),
/// naming the first pages that differ.
fn assert_same_memory(merged: &Path, full: &Path) {
    use std::io::Read;
    let (mut a, mut b) = (
        std::fs::File::open(merged).expect("merged"),
        std::fs::File::open(full).expect("full"),
    );
    assert_eq!(a.metadata().unwrap().len(), b.metadata().unwrap().len());
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut at = 0u64;
    let mut differ = Vec::new();
    loop {
        let n = a.read(&mut x).expect("read merged");
        if n == 0 {
            break;
        }
        b.read_exact(&mut y[..n]).expect("read full");
        for (i, (p, q)) in x[..n].chunks(4096).zip(y[..n].chunks(4096)).enumerate() {
            if p != q {
                differ.push(at + (i as u64) * 4096);
            }
        }
        at += n as u64;
    }
    assert!(
        differ.is_empty(),
        "{} pages of the base + diff differ from a Full snapshot of the same moment (a write the diff missed); \
         first offsets: {:x?}",
        differ.len(),
        &differ[..differ.len().min(8)]
    );
}

/// Full snapshot, `run` more, then [`diff_and_merge`] onto that base.
fn full_then_diff(vmm: Vmm, dir: &Path, run: Duration) -> (PathBuf, PathBuf) {
    vmm.ok("PATCH", "/vm", r#"{"state":"Paused"}"#);
    let (_, base) = vmm.snapshot("Full", dir, "base");
    vmm.ok("PATCH", "/vm", r#"{"state":"Resumed"}"#);
    diff_and_merge(vmm, dir, &base, run)
}

/// Lets the (running) VM run for `run`, pauses it, takes a Diff snapshot
/// plus a Full one of the same moment and kills it; merges the diff onto a
/// copy of `base`, checks it against that Full snapshot and returns the
/// Diff's state file and the merged memory.
fn diff_and_merge(vmm: Vmm, dir: &Path, base: &Path, run: Duration) -> (PathBuf, PathBuf) {
    std::thread::sleep(run);
    vmm.ok("PATCH", "/vm", r#"{"state":"Paused"}"#);
    // The Diff through `kvmkit ctl snapshot --type diff`.
    let stem = base.file_stem().and_then(|n| n.to_str()).unwrap_or("base");
    let (diff_state, diff) = (
        dir.join(format!("{stem}-diff.state")),
        dir.join(format!("{stem}-diff.mem")),
    );
    let t = Instant::now();
    let out = common::run(
        &[
            "ctl",
            "snapshot",
            "--api-sock",
            text(vmm.sock()),
            "--state",
            text(&diff_state),
            "--mem",
            text(&diff),
            "--type",
            "diff",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(
        out.code,
        Some(0),
        "ctl snapshot --type diff: {}{}",
        out.stdout,
        out.stderr
    );
    eprintln!("Diff snapshot: {} ms", t.elapsed().as_millis());
    let (_, check) = vmm.snapshot("Full", dir, &format!("{stem}-check"));
    vmm.kill();
    eprintln!(
        "on disk: base {} KiB, diff {} KiB, full at the diff {} KiB",
        allocated(base) >> 10,
        allocated(&diff) >> 10,
        allocated(&check) >> 10
    );
    assert_eq!(
        std::fs::metadata(&diff).unwrap().len(),
        std::fs::metadata(base).unwrap().len()
    );
    assert!(allocated(&diff) > 0, "the guest ran: some pages are dirty");
    assert!(
        allocated(&diff) < allocated(&check),
        "the diff holds less than all of guest RAM"
    );
    let merged = dir.join(format!(
        "{}.merged",
        base.file_name().and_then(|n| n.to_str()).unwrap_or("base")
    ));
    sparse_copy(base, &merged);
    let out = common::run(
        &[
            "snapshot",
            "rebase",
            "--base-mem",
            text(&merged),
            "--diff-mem",
            text(&diff),
        ],
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(0), "rebase: {}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("merged"), "{}", out.stdout);
    assert_same_memory(&merged, &check);
    (diff_state, merged)
}

/// Copies a memory file keeping its holes (`std::fs::copy` would allocate
/// all of guest RAM): `snapshot rebase` of it onto an empty file as large,
/// which copies only its data ranges.
fn sparse_copy(from: &Path, to: &Path) {
    std::fs::File::create(to)
        .and_then(|f| f.set_len(std::fs::metadata(from)?.len()))
        .expect("an empty copy");
    let out = common::run(
        &["snapshot", "rebase", "--base-mem", text(to), "--diff-mem", text(from)],
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(0), "sparse copy: {}{}", out.stdout, out.stderr);
    assert!(allocated(to) <= allocated(from) + (64 << 10), "the copy is sparse");
}

fn restore(state: &Path, mem: &Path) -> common::Output {
    let args = [
        "run",
        "--no-stdin",
        "--restore-state",
        text(state),
        "--restore-mem",
        text(mem),
    ];
    common::run(&args, Duration::from_secs(90))
}

#[test]
fn a_diff_of_a_disk_workload_merged_onto_its_base_restores_and_verifies() {
    if !kvm() {
        eprintln!("skipped: no /dev/kvm");
        return;
    }
    let dir = temp_dir("blk");
    let img = dir.join("disk.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(512 << 20))
        .expect("image");
    let disk = format!("path={}", text(&img));
    let vmm = Vmm::spawn(
        &dir,
        "orig",
        &[
            "--guest",
            "--workload",
            "blk-pattern",
            "--disk",
            &disk,
            "--track-dirty-pages",
        ],
    );
    vmm.wait_stdout("the write phase", |s| s.contains("capacity="), Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(200));
    let (state, merged) = full_then_diff(vmm, &dir, Duration::from_millis(600));
    let out = restore(&state, &merged);
    assert_eq!(out.code, Some(0), "stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("verified=OK"),
        "the guest restored from base + diff reads back its pattern:\n{}",
        out.stdout
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_diff_of_an_rng_workload_holds_the_pages_the_device_wrote() {
    if !kvm() {
        eprintln!("skipped: no /dev/kvm");
        return;
    }
    let dir = temp_dir("rng");
    // Enough that the guest is still reading when the second Diff is taken,
    // ~1.2 s of running later, on a quiet host too (200 MB was done by then).
    let bytes = "1000000000";
    let workload = format!("rng:{bytes}");
    let vmm = Vmm::spawn(
        &dir,
        "orig",
        &["--guest", "--workload", &workload, "--rng", "--track-dirty-pages"],
    );
    vmm.wait_stdout(
        "the rng device",
        |s| s.contains("entropy device"),
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_millis(300));
    let (state, merged) = full_then_diff(vmm, &dir, Duration::from_millis(500));
    // A restored VM tracks again when asked: a second Diff, taken after the
    // restore, merges onto the first merge (the VMGenID page rewritten at
    // the restore is in it).
    let vmm = Vmm::spawn(
        &dir,
        "restored",
        &[
            "--restore-state",
            text(&state),
            "--restore-mem",
            text(&merged),
            "--track-dirty-pages",
        ],
    );
    vmm.ok("PATCH", "/vm", r#"{"state":"Resumed"}"#);
    let (state, merged) = diff_and_merge(vmm, &dir, &merged, Duration::from_millis(400));
    let out = restore(&state, &merged);
    assert_eq!(out.code, Some(0), "stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("rng: bytes="))
        .unwrap_or_else(|| panic!("no rng result:\n{}", out.stdout));
    assert!(
        line.contains(&format!("bytes={bytes} ")) && line.contains("sane=yes"),
        "{line}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn diff_snapshots_are_refused_without_tracking_or_while_running() {
    if !kvm() {
        eprintln!("skipped: no /dev/kvm");
        return;
    }
    let dir = temp_dir("refused");
    let (state, mem) = (dir.join("s"), dir.join("m"));
    let body = serde_json::json!({
        "snapshot_type": "Diff",
        "snapshot_path": text(&state),
        "mem_file_path": text(&mem),
    })
    .to_string();
    // No tracking: refused even when Paused.
    let vmm = Vmm::spawn(&dir, "plain", &["--guest", "--workload", "ticks:50"]);
    vmm.wait_stdout("the guest", |s| s.contains("tick="), Duration::from_secs(30));
    vmm.ok("PATCH", "/vm", r#"{"state":"Paused"}"#);
    let (status, answer) = vmm.req("PUT", "/snapshot/create", &body);
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("track_dirty_pages"), "{answer}");
    vmm.kill();
    // Tracking on, but running: refused; paused: taken.
    let vmm = Vmm::spawn(
        &dir,
        "tracked",
        &["--guest", "--workload", "ticks:50", "--track-dirty-pages"],
    );
    vmm.wait_stdout("the guest", |s| s.contains("tick="), Duration::from_secs(30));
    let (status, answer) = vmm.req("PUT", "/snapshot/create", &body);
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("Paused"), "{answer}");
    assert!(!state.exists() && !mem.exists(), "nothing written");
    let (_, config) = vmm.req("GET", "/vm/config", "");
    assert!(config.contains("\"track_dirty_pages\":true"), "{config}");
    vmm.ok("PATCH", "/vm", r#"{"state":"Paused"}"#);
    vmm.ok("PUT", "/snapshot/create", &body);
    assert!(state.exists() && mem.exists());
    vmm.kill();
    let _ = std::fs::remove_dir_all(&dir);
}
