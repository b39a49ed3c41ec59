//! `kvmkit bench --profile quick`: every cell of every table (1-4 and exits) measured,
//! every ratio finite and positive, report.md and at least one SVG written.

mod common;

use std::time::Duration;

use serde_json::Value;

#[test]
fn quick_bench_measures_every_cell() {
    let dir = std::env::temp_dir().join(format!("kvmkit-bench-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_string_lossy().to_string();
    let out = common::run(
        &["bench", "--profile", "quick", "--runs", "1", "--out", &d],
        Duration::from_secs(600),
    );
    assert_eq!(out.code, Some(0), "stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("Table 1"),
        "no Table 1 on the terminal:\n{}",
        out.stdout
    );
    for title in ["Table 2", "Table 3", "Table 4", "VM exit round trip"] {
        assert!(
            out.stdout.contains(title),
            "no {title} on the terminal:\n{}",
            out.stdout
        );
    }
    for label in [
        "read 1M",
        "write 1M",
        "ray tracer (C-Ray-like)",
        "compression (LZ4, in place of 7-Zip)",
    ] {
        assert!(out.stdout.contains(label), "no row '{label}':\n{}", out.stdout);
    }
    assert!(
        !out.stdout.contains("failed"),
        "a cell failed on the terminal:\n{}",
        out.stdout
    );

    let text = std::fs::read_to_string(dir.join("results.json")).expect("results.json");
    let res: Value = serde_json::from_str(&text).expect("results.json parses");
    let qemu_absent = res["environments"]["qemu"]["available"] == false;
    if qemu_absent {
        let why = res["environments"]["qemu"]["reason"].as_str().unwrap_or("");
        assert!(!why.is_empty(), "qemu column absent without a reason: {res:#}");
    }
    let workloads = res["workloads"].as_object().expect("workloads object");
    for id in [
        "primes:100000",
        "memtest:4",
        "blk-read:1",
        "blk-write:1",
        "raytrace:320",
        "md5:16",
        "des:2",
        "blowfish:8",
        "compress:16",
        "smallio:256",
        "exits:10000",
        "mmio-exits:10000",
    ] {
        assert!(workloads.contains_key(id), "{id} missing: {:?}", workloads.keys());
    }
    for table in ["cpu", "memory", "disk", "suite", "exits"] {
        assert!(
            workloads.values().any(|w| w["table"] == table),
            "no row of table {table}"
        );
    }
    for (id, w) in workloads {
        for env in ["host", "kvmkit", "qemu"] {
            let cell = &w[env];
            assert!(cell.is_object(), "{id}: no {env} entry");
            let samples = cell["samples"].as_array().expect("samples array");
            let skipped = cell["skipped"].as_str();
            let exempt = (env == "host" && w["table"] == "exits") || (env == "qemu" && qemu_absent);
            if exempt {
                assert!(
                    skipped.is_some_and(|s| !s.is_empty()),
                    "{id}/{env}: no sample and no reason"
                );
                continue;
            }
            assert!(!samples.is_empty(), "{id}/{env}: no samples: {cell:#}");
            assert!(cell.get("failures").is_none(), "{id}/{env}: failures: {cell:#}");
            for s in samples {
                let v = s["value"].as_f64().expect("value");
                assert!(v.is_finite() && v > 0.0, "{id}/{env}: bad sample {s}");
            }
            assert_eq!(cell["stats"]["runs"], 1, "{id}/{env}: {cell:#}");
            assert_eq!(cell["stopped"], "fixed-runs", "{id}/{env}: {cell:#}");
            if env != "host" && w["table"] != "exits" {
                // One run against one: no test can tell them apart.
                assert_eq!(
                    cell["verdict"]["text"], "no difference detectable",
                    "{id}/{env}: {cell:#}"
                );
            }
        }
        if w["table"] != "exits" {
            let ratios = w["ratios"].as_object().expect("ratios");
            let want = if qemu_absent { 1 } else { 2 };
            assert_eq!(ratios.len(), want, "{id}: ratios {ratios:?}");
            for (env, r) in ratios {
                let r = r.as_f64().expect("ratio");
                assert!(r.is_finite() && r > 0.0, "{id}: {env}/host ratio {r}");
            }
        }
    }
    assert!(res["machine"]["kernel"].as_str().is_some_and(|k| !k.is_empty()));
    // Only Table 4's POV-Ray and OpenSSL rows (real programs) are left unmeasured.
    let pending = res["not_measured"].as_array().expect("not_measured");
    assert!(pending.iter().all(|p| p["table"] == "suite"), "{pending:?}");
    for (id, w) in workloads {
        if let Some(ws) = w["warnings"].as_array() {
            assert!(
                !ws.iter()
                    .any(|x| x.as_str().is_some_and(|x| x.contains("results differ"))),
                "{id}: {ws:?}"
            );
        }
    }

    let report = std::fs::read_to_string(dir.join("report.md")).expect("report.md");
    assert!(report.contains("paper (KVM on 2017 hardware)"), "{report}");
    let svgs = std::fs::read_dir(&dir)
        .expect("out dir")
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "svg"))
        .count();
    assert!(svgs >= 1, "no SVG in {}", dir.display());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Adaptive repetition: every cell runs between --min-runs and --max-runs times, each
/// with its median's 95% interval, why it stopped, and (guests) a verdict in words; every
/// round's load is recorded.
#[test]
fn adaptive_bench_reports_intervals_runs_and_verdicts() {
    let dir = std::env::temp_dir().join(format!("kvmkit-bench-adaptive-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_string_lossy().to_string();
    let out = common::run(
        &[
            "bench",
            "--profile",
            "quick",
            "--only",
            "cpu,exits",
            "--env",
            "host,kvmkit",
            "--min-runs",
            "3",
            "--max-runs",
            "6",
            "--quiet-wait",
            "1",
            "--out",
            &d,
        ],
        Duration::from_secs(600),
    );
    assert_eq!(out.code, Some(0), "stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("95% interval"), "{}", out.stdout);
    let text = std::fs::read_to_string(dir.join("results.json")).expect("results.json");
    let res: Value = serde_json::from_str(&text).expect("results.json parses");
    assert_eq!(res["repetition"]["mode"], "adaptive");
    let rounds = res["rounds"].as_array().expect("rounds");
    assert!((3..=6).contains(&rounds.len()), "{rounds:?}");
    assert!(
        rounds.iter().all(|r| r["waited_s"].as_f64().is_some_and(|w| w <= 1.5)),
        "{rounds:?}"
    );
    for id in ["primes:100000", "exits:10000"] {
        let cell = &res["workloads"][id]["kvmkit"];
        let runs = cell["stats"]["runs"].as_u64().unwrap_or(0);
        assert!((3..=6).contains(&runs), "{id}: {cell:#}");
        let [lo, hi] = [0, 1].map(|i| cell["stats"]["ci95"][i].as_f64().unwrap_or(f64::NAN));
        let median = cell["stats"]["median"].as_f64().unwrap_or(f64::NAN);
        assert!(lo <= median && median <= hi, "{id}: {cell:#}");
        let stopped = cell["stopped"].as_str().unwrap_or("");
        assert!(
            ["ci-target", "max-runs", "time-cap"].contains(&stopped),
            "{id}: {cell:#}"
        );
        let verdict = cell["verdict"]["text"].as_str().unwrap_or("");
        let against = if id.starts_with("exits") { "qemu" } else { "host" };
        if against == "host" {
            assert!(
                [
                    "kvmkit slower than host (significant)",
                    "kvmkit faster than host (significant)",
                    "no difference detectable"
                ]
                .contains(&verdict),
                "{id}: {cell:#}"
            );
        } else {
            // The exit table compares kvmkit with QEMU, which did not run here.
            assert!(cell["verdict"].is_null(), "{id}: {cell:#}");
        }
    }
    // The raw KVM floor of both exit rows: the kvmkit cells ran, so /dev/kvm works here.
    for id in ["exits:10000", "mmio-exits:10000"] {
        let floor = &res["workloads"][id]["floor"];
        assert!(
            floor["skipped"].is_null() && floor["failures"].is_null(),
            "{id}: {floor:#}"
        );
        assert_eq!(floor["exits"], 10000, "{id}: {floor:#}");
        let median = floor["stats"]["median"].as_f64().unwrap_or(0.0);
        assert!(median > 0.0, "{id}: {floor:#}");
        let runs = floor["stats"]["runs"].as_u64().unwrap_or(0);
        assert!(runs >= 5, "{id}: {floor:#}");
        let [lo, hi] = [0, 1].map(|i| floor["stats"]["ci95"][i].as_f64().unwrap_or(f64::NAN));
        assert!(lo <= median && median <= hi, "{id}: {floor:#}");
        assert!(
            floor["kvmkit_ratio"].as_f64().is_some_and(|r| r > 0.0),
            "{id}: {floor:#}"
        );
    }
    assert!(
        out.stdout.contains("raw KVM floor (kvm-ioctls, no device model): PIO"),
        "{}",
        out.stdout
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--guest linux` with the host column only (this host may be kvm_pvm, where Debian's
/// kernel cannot boot; the nested lab's bench-linux scenario runs the guest column): the
/// rootfs is built, every one of the paper's programs runs in its chroot and reports.
#[test]
fn linux_guest_programs_run_on_the_host() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: the host column of --guest linux chroots, which needs root");
        return;
    }
    let dir = std::env::temp_dir().join(format!("kvmkit-bench-linux-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_string_lossy().to_string();
    let out = common::run(
        &[
            "bench",
            "--guest",
            "linux",
            "--profile",
            "quick",
            "--runs",
            "1",
            "--env",
            "host",
            "--out",
            &d,
        ],
        Duration::from_secs(900),
    );
    assert_eq!(out.code, Some(0), "stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    for label in [
        "1e5 (python3)",
        "memtester 4M",
        "dd read 1M",
        "dd write 1M",
        "POV-Ray 3.7",
        "OpenSSL speed",
        "7-Zip",
        "PostMark",
    ] {
        assert!(out.stdout.contains(label), "no row '{label}':\n{}", out.stdout);
    }
    let text = std::fs::read_to_string(dir.join("results.json")).expect("results.json");
    let res: Value = serde_json::from_str(&text).expect("results.json parses");
    assert_eq!(res["guest"], "linux");
    let packages = res["linux"]["rootfs_packages"].as_array().expect("rootfs packages");
    assert!(packages.iter().any(|p| p[0] == "povray"), "{packages:?}");
    for id in [
        "py-primes:100000",
        "memtester:4",
        "dd-read:1",
        "dd-write:1",
        "povray:160",
        "openssl:1",
        "7z:1",
        "postmark:500",
    ] {
        let host = &res["workloads"][id]["host"];
        let samples = host["samples"]
            .as_array()
            .unwrap_or_else(|| panic!("{id}: no host samples: {res:#}"));
        assert_eq!(samples.len(), 1, "{id}: {host:#}");
        let v = samples[0]["value"].as_f64().unwrap_or(0.0);
        assert!(v.is_finite() && v > 0.0, "{id}: value {v}");
    }
    assert_eq!(
        res["workloads"]["py-primes:100000"]["host"]["samples"][0]["result"],
        9592
    );
    assert!(dir.join("report.md").is_file());
    let _ = std::fs::remove_dir_all(&dir);
}

/// On a kvm_pvm host, a Linux guest column is refused in one line that points to --kernel.
#[test]
fn linux_guest_on_pvm_points_to_kernel() {
    if !std::path::Path::new("/sys/module/kvm_pvm").exists() {
        eprintln!("skipped: this host's KVM is not kvm_pvm");
        return;
    }
    let out = common::run(
        &["bench", "--guest", "linux", "--profile", "quick", "--env", "kvmkit"],
        Duration::from_secs(60),
    );
    assert_ne!(out.code, Some(0));
    let line = out.stderr.trim();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(line.contains("kvm_pvm") && line.contains("--kernel"), "{line}");
}
