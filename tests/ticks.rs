//! The test guest's `ticks:MS` workload: a TSC-paced console heartbeat
//! (`tick=1`, `tick=2`, ...) that runs until the VM is stopped.

mod common;

use std::time::Duration;

use common::run;

/// The K of every `tick=K` line, in order.
fn ticks(stdout: &str) -> Vec<u64> {
    stdout
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("tick="))
        .map(|k| k.parse().expect("tick=K with a number"))
        .collect()
}

#[test]
fn ticks_count_up_at_the_asked_pace_until_the_timeout() {
    let out = run(
        &[
            "run",
            "--guest",
            "--no-stdin",
            "--timeout",
            "1",
            "--workload",
            "ticks:20",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(124), "stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    let seen = ticks(&out.stdout);
    assert!(seen.len() >= 5, "too few ticks in 1 s at 20 ms:\n{}", out.stdout);
    let expected: Vec<u64> = (1..=seen.len() as u64).collect();
    assert_eq!(seen, expected, "ticks must count 1, 2, 3 ...");
    // 1 s at one tick per 20 ms is at most 50 ticks (boot takes some of it).
    assert!(seen.len() <= 55, "{} ticks in 1 s: not paced by the TSC", seen.len());
}

#[test]
fn ticks_with_a_zero_period_is_refused() {
    let out = run(
        &[
            "run",
            "--guest",
            "--no-stdin",
            "--timeout",
            "30",
            "--workload",
            "ticks:0",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(2), "stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    // Refused before the VM boots, with the workload's grammar.
    assert!(out.stdout.is_empty(), "the guest ran: {}", out.stdout);
    assert!(out.stderr.contains("ticks"), "{}", out.stderr);
}

#[test]
fn a_stopped_vm_resumes_with_one_tick_not_a_burst() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::time::Instant;

    // ticks:50 for 3 s, with the whole kvmkit process stopped (SIGSTOP) for
    // 1 s after tick=5: the guest's TSC runs on meanwhile, so a guest that
    // caught up would print ~60 lines; one that measures from its last line
    // prints at most ~40 (3 s - 1 s paused, at 50 ms).
    let mut child = Command::new(common::kvmkit())
        .args([
            "run",
            "--guest",
            "--no-stdin",
            "--timeout",
            "3",
            "--workload",
            "ticks:50",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn kvmkit");
    let stdout = child.stdout.take().expect("stdout");
    let pid = child.id() as i32;
    let mut lines = Vec::new();
    let mut stopped_at = None;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if line.starts_with("tick=") {
            lines.push((Instant::now(), line.clone()));
        }
        if line == "tick=5" && stopped_at.is_none() {
            // SAFETY: signals to our own child process.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
            std::thread::sleep(Duration::from_secs(1));
            stopped_at = Some(Instant::now());
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGCONT) };
        }
    }
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(124), "the time limit ends the VM");
    let text: String = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
    let seen = ticks(&text);
    let expected: Vec<u64> = (1..=seen.len() as u64).collect();
    assert_eq!(seen, expected, "ticks must count 1, 2, 3 ...");
    assert!(stopped_at.is_some(), "never saw tick=5:\n{text}");
    assert!(seen.len() > 8, "ticks did not go on after the resume:\n{text}");
    assert!(
        seen.len() <= 45,
        "{} ticks: the guest caught up on the paused second instead of printing one line",
        seen.len()
    );
    // Right after the resume: at most two lines within the first 40 ms.
    let resumed = stopped_at.expect("resumed");
    let burst = lines
        .iter()
        .filter(|(t, _)| *t >= resumed && t.duration_since(resumed) < Duration::from_millis(40))
        .count();
    assert!(burst <= 2, "{burst} lines within 40 ms of the resume:\n{text}");
}
