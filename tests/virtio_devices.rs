//! kvmkit's virtio-blk and virtio-rng devices, driven by the test guest's
//! own virtio-mmio driver on the real /dev/kvm.

mod common;

use std::path::PathBuf;

use serde_json::Value;

struct Image(PathBuf);

impl Image {
    fn new(tag: &str, mib: u64) -> Self {
        let p = std::env::temp_dir().join(format!("kvmkit-it-{tag}-{}.img", std::process::id()));
        std::fs::File::create(&p)
            .and_then(|f| f.set_len(mib << 20))
            .expect("image");
        Self(p)
    }

    fn arg(&self, opts: &str) -> String {
        format!("path={}{opts}", self.0.display())
    }

    fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.0).expect("read image")
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn run(tag: &str, extra: &[&str]) -> (common::Output, Value) {
    let path = std::env::temp_dir().join(format!("kvmkit-it-{tag}-{}.json", std::process::id()));
    let p = path.to_string_lossy().to_string();
    let mut args = vec!["--results", p.as_str()];
    args.extend_from_slice(extra);
    let out = common::run_guest(&args);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("no results ({e}): {}", out.stderr));
    let _ = std::fs::remove_file(&path);
    (out, serde_json::from_str(&text).expect("json"))
}

fn results<'a>(v: &'a Value, name: &str) -> Vec<&'a Value> {
    v["reports"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|r| r["kind"] == "result" && r["name"] == name)
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn pattern_written_and_flushed_is_on_the_host_disk() {
    let img = Image::new("pattern", 16);
    let (out, res) = run("pattern", &["--disk", &img.arg(""), "--workload", "blk-pattern"]);
    assert_eq!(out.code, Some(0), "stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    let r = results(&res, "blk-pattern");
    assert_eq!(r.len(), 1, "{res:#}");
    assert_eq!(r[0]["arg"], 16 * 2048, "capacity in sectors");
    assert_eq!(r[0]["value"], 0, "mismatching sectors");
    let data = img.bytes();
    let nonzero = data.chunks(512).filter(|s| s.iter().any(|&b| b != 0)).count();
    assert_eq!(
        nonzero,
        16 * 2048,
        "every sector carries the guest's pattern on the host"
    );
}

#[test]
fn read_only_disk_refuses_writes_and_stays_untouched() {
    let img = Image::new("ro", 4);
    let (out, _) = run("ro", &["--disk", &img.arg(",ro=on"), "--workload", "blk-pattern"]);
    assert_ne!(out.code, Some(0), "{}", out.stdout);
    assert!(
        out.stdout.contains("write refused (read-only device)"),
        "{}",
        out.stdout
    );
    assert!(img.bytes().iter().all(|&b| b == 0), "a read-only image was modified");
}

#[test]
fn two_disks_are_both_verified() {
    let (a, b) = (Image::new("two-a", 4), Image::new("two-b", 8));
    let (out, res) = run(
        "two",
        &[
            "--disk",
            &a.arg(",id=first"),
            "--disk",
            &b.arg(""),
            "--workload",
            "blk-pattern",
        ],
    );
    assert_eq!(out.code, Some(0), "stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    assert_eq!(out.stdout.matches("verified=OK").count(), 2, "{}", out.stdout);
    assert!(
        out.stdout.contains("id=\"first\""),
        "GET_ID answers the configured id: {}",
        out.stdout
    );
    assert_eq!(results(&res, "blk-pattern")[0]["arg"], 12 * 2048);
}

/// The guest's data survives every polling mode (`--disk ...,poll=`): the device polls the
/// queue with notifications suppressed and re-arms them before it sleeps. (Whether a request
/// is found by polling depends on timing, so only the data and the mode in use are checked.)
#[test]
fn pattern_is_verified_with_each_poll_mode() {
    for mode in ["off", "auto", "80us"] {
        let img = Image::new(&format!("poll-{mode}"), 8);
        let (out, res) = run(
            &format!("poll-{mode}"),
            &[
                "--disk",
                &img.arg(&format!(",poll={mode}")),
                "--workload",
                "blk-pattern",
                "--level",
                "Debug",
            ],
        );
        assert_eq!(
            out.code,
            Some(0),
            "poll={mode}\nstdout:\n{}\nstderr:\n{}",
            out.stdout,
            out.stderr
        );
        let r = results(&res, "blk-pattern");
        assert_eq!(r.len(), 1, "{res:#}");
        assert_eq!(r[0]["value"], 0, "poll={mode}: mismatching sectors");
        assert!(
            out.stderr.contains(&format!("(poll={mode})")),
            "the device ran with poll={mode}: {}",
            out.stderr
        );
    }
    let img = Image::new("poll-bad", 1);
    let out = common::run_guest(&["--disk", &img.arg(",poll=fast"), "--workload", "idle"]);
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("poll 'fast'"), "{}", out.stderr);
}

#[test]
fn sequential_write_and_read_report_throughput() {
    let img = Image::new("seq", 16);
    let (out, res) = run("seq", &["--disk", &img.arg(""), "--workload", "blk-seq:8"]);
    assert_eq!(out.code, Some(0), "stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    for name in ["blk-write", "blk-read"] {
        let r = results(&res, name);
        assert_eq!(r.len(), 1, "{name}: {res:#}");
        assert!(r[0]["value"].as_u64().unwrap_or(0) > 0, "{name} bytes/s: {res:#}");
    }
}

#[test]
fn rng_delivers_the_requested_bytes() {
    let (out, res) = run("rng", &["--rng", "--workload", "rng:65536"]);
    assert_eq!(out.code, Some(0), "stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    assert_eq!(results(&res, "rng")[0]["value"], 65536);
    assert!(out.stdout.contains("sane=yes"), "{}", out.stdout);
}

#[test]
fn data_flushed_before_sigkill_is_on_the_host_disk() {
    // blk-pattern writes every sector, FLUSHes, then reads back and prints
    // "verified="; kvmkit is SIGKILLed the moment that line appears. Nothing
    // the guest flushed may be missing from the image afterwards.
    let img = Image::new("sigkill", 8);
    let disk = img.arg("");
    let (stdout, found) = common::run_until(
        &[
            "run",
            "--guest",
            "--no-stdin",
            "--disk",
            &disk,
            "--workload",
            "blk-pattern",
        ],
        "verified=",
        std::time::Duration::from_secs(120),
    );
    assert!(found, "the guest never got past its flush:\n{stdout}");
    let data = img.bytes();
    let written = data.chunks(512).filter(|s| s.iter().any(|&b| b != 0)).count();
    assert_eq!(
        written,
        8 * 2048,
        "sectors flushed before the kill are missing on the host"
    );
}
