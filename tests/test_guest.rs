//! Boots kvmkit's own test guest on the real /dev/kvm and checks what it
//! reports, through both the serial console and the port protocol.

mod common;

use common::run_guest;
use serde_json::Value;

fn results_path(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("kvmkit-test-{tag}-{}.json", std::process::id()))
}

/// Runs the guest with `--results` and returns (output, parsed results).
fn run_with_results(tag: &str, extra: &[&str]) -> (common::Output, Value) {
    let path = results_path(tag);
    let p = path.to_string_lossy().to_string();
    let mut args = vec!["--results", p.as_str()];
    args.extend_from_slice(extra);
    let out = run_guest(&args);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "no results file ({e})\nstdout:\n{}\nstderr:\n{}",
            out.stdout, out.stderr
        )
    });
    let _ = std::fs::remove_file(&path);
    (out, serde_json::from_str(&text).expect("results JSON"))
}

fn reports<'a>(v: &'a Value, kind: &str) -> Vec<&'a Value> {
    v["reports"]
        .as_array()
        .map(|a| a.iter().filter(|r| r["kind"] == kind).collect())
        .unwrap_or_default()
}

#[test]
fn primes_on_one_vcpu_counts_9592() {
    let (out, res) = run_with_results("primes1", &["--workload", "primes:100000"]);
    assert_eq!(out.code, Some(0), "stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("9592"), "console lacks the count:\n{}", out.stdout);
    let results = reports(&res, "result");
    assert_eq!(results.len(), 1, "{res:#}");
    assert_eq!(results[0]["name"], "primes");
    assert_eq!(results[0]["arg"], 100000);
    assert_eq!(results[0]["value"], 9592);
    assert!(results[0]["ticks"].as_u64().unwrap_or(0) > 0);
    assert_eq!(reports(&res, "cpu_online").len(), 1);
}

#[test]
fn primes_on_two_vcpus_every_vcpu_reports_in() {
    let (out, res) = run_with_results("primes2", &["--cpus", "2", "--workload", "primes:100000"]);
    assert_eq!(out.code, Some(0), "stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    let mut online: Vec<u64> = reports(&res, "cpu_online")
        .iter()
        .filter_map(|r| r["cpu"].as_u64())
        .collect();
    online.sort_unstable();
    assert_eq!(online, vec![0, 1], "{res:#}");
    let mut apic_ids: Vec<u64> = reports(&res, "cpu_online")
        .iter()
        .filter_map(|r| r["value"].as_u64())
        .collect();
    apic_ids.sort_unstable();
    assert_eq!(apic_ids, vec![0, 1], "APIC ids come from the filtered CPUID: {res:#}");
    let results = reports(&res, "result");
    assert_eq!(results.len(), 2, "{res:#}");
    assert!(results.iter().all(|r| r["value"] == 9592), "{res:#}");
}

#[test]
fn memtest_passes_on_healthy_memory() {
    let (out, res) = run_with_results("memtest", &["--memory", "128", "--workload", "memtest:16"]);
    assert_eq!(out.code, Some(0), "stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    let results = reports(&res, "result");
    assert_eq!(results.len(), 1, "{res:#}");
    assert_eq!(results[0]["name"], "memtest");
    assert_eq!(results[0]["value"], 0, "memtest found errors: {res:#}");
}

#[test]
fn memtest_larger_than_ram_fails_with_the_guest_status() {
    let (out, res) = run_with_results("memtest-big", &["--memory", "64", "--workload", "memtest:1000"]);
    assert_ne!(out.code, Some(0), "stdout:\n{}", out.stdout);
    assert_ne!(out.code, Some(2), "a guest failure is not a usage error");
    assert_eq!(res["exit"]["code"].as_i64().map(|c| c as i32), out.code, "{res:#}");
}

#[test]
fn port_io_exit_loop_reports_time_per_exit() {
    let (out, res) = run_with_results("exits", &["--workload", "exits:2000"]);
    assert_eq!(out.code, Some(0), "stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    let results = reports(&res, "result");
    assert_eq!(results.len(), 1, "{res:#}");
    assert_eq!(results[0]["name"], "exits");
    assert_eq!(results[0]["arg"], 2000);
    assert!(
        results[0]["value"].as_u64().unwrap_or(0) > 0,
        "ns per exit missing: {res:#}"
    );
}

#[test]
fn mmio_exit_loop_runs() {
    let (out, res) = run_with_results("mmio", &["--workload", "mmio-exits:500"]);
    assert_eq!(out.code, Some(0), "stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    assert_eq!(reports(&res, "result").len(), 1, "{res:#}");
    assert!(
        res["unclaimed_mmio"].as_array().is_some_and(|a| a.is_empty()),
        "null MMIO page unclaimed: {res:#}"
    );
}

#[test]
fn boot_time_milestones_are_printed_in_order() {
    let (out, res) = run_with_results("boottime", &["--workload", "idle", "--boot-time"]);
    assert_eq!(out.code, Some(0), "stderr:\n{}", out.stderr);
    assert!(out.stderr.contains("boot-time: start -> guest entry"), "{}", out.stderr);
    let entry = res["boot_time_us"]["guest_entry"].as_u64().expect("entry milestone");
    let ready = res["boot_time_us"]["guest_ready"].as_u64().expect("ready milestone");
    let end = res["boot_time_us"]["vm_end"].as_u64().expect("end");
    assert!(entry > 0 && entry <= ready && ready <= end, "{res:#}");
}

#[test]
fn guest_exception_ends_the_vm_with_a_reason() {
    let (out, res) = run_with_results("fault", &["--workload", "fault"]);
    assert_ne!(out.code, Some(0));
    let exc = reports(&res, "exception");
    assert_eq!(exc.len(), 1, "{res:#}\nstderr: {}", out.stderr);
    assert_eq!(exc[0]["arg"], 6, "ud2 raises #UD (vector 6): {res:#}");
    assert!(out.stderr.contains("guest exception 6"), "{}", out.stderr);
}

#[test]
fn timeout_stops_a_running_guest() {
    let out = common::run(
        &[
            "run",
            "--guest",
            "--no-stdin",
            "--timeout",
            "0.5",
            "--workload",
            "primes:100000000",
        ],
        std::time::Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(124), "stderr:\n{}", out.stderr);
    assert!(out.stderr.contains("time limit"), "{}", out.stderr);
}

#[test]
fn sigterm_stops_the_vm_cleanly() {
    use std::process::{Command, Stdio};
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
    std::thread::sleep(std::time::Duration::from_millis(500));
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().expect("wait");
    assert_eq!(
        out.status.code(),
        Some(128 + libc::SIGTERM),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("stopped by signal 15"));
}
