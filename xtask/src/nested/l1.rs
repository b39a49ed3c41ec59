//! One L1 boot: QEMU TCG running L1's `/init` over some scenarios, its serial console followed
//! line by line, and what is done when L1 stops answering.
//!
//! L1's `/init` prints a `@@LAB-TICK` line every 30 s, so silence means L1 itself stopped (its
//! only CPU no longer runs L1 code), not that a scenario is quiet. Every such stop seen so far
//! was L1 idle in `native_safe_halt` with interrupts on while its local APIC held the timer's
//! interrupt pending (IRR 236, nothing in service): QEMU had not told the CPU about it, and
//! only a change to the APIC's inputs makes it look again. So after [`REVIVE_AFTER`] of
//! silence the harness writes one XON byte (Ctrl-Q) to L1's serial port: the receive interrupt
//! makes QEMU re-evaluate the APIC, and L1 takes the timer interrupt first. (The tty layer
//! takes XON as flow control, so no reader sees it; a reader in raw mode, such as a kvmkit
//! forwarding its console, passes it to a guest tty that does the same.) A scenario during
//! which L1 was woken this way and that then fails runs again on a fresh L1, as after a hang
//! (its VMs' clocks jumped). An L1 still silent at [`STALL`] counts as hung: QEMU's CPU
//! registers go to the log and L1 gets an NMI: it boots with `unknown_nmi_panic` and
//! `sysctl.kernel.panic_on_unrecovered_nmi=1` (microvm's NMI reason port reads 0xff, which
//! Linux takes for a PCI SERR), so a kernel that still takes NMIs panics with a stack trace of
//! where it was stuck. Then QEMU is killed and a fresh L1 takes the scenarios not run yet.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{Options, Outcome, ScenarioResult, BENCH_TIMEOUT};

/// XON (Ctrl-Q): what is written to a silent L1's serial port.
const XON: u8 = 0x11;

/// How long the console may stay silent before L1 counts as hung: five missed ticks.
pub(super) const STALL: Duration = Duration::from_secs(150);

/// How long the console may stay silent before L1's serial port is poked to wake it: one
/// missed tick and some slack.
pub(super) const REVIVE_AFTER: Duration = Duration::from_secs(45);

/// How long after the NMI the console is followed for L1's panic report.
const NMI_WAIT: Duration = Duration::from_secs(30);

/// What one hung L1 costs the lab's clock: the silence, the diagnosis and a fresh L1's boot.
pub(super) const HANG_COST: Duration = Duration::from_secs(STALL.as_secs() + NMI_WAIT.as_secs() + 60);

/// Why a boot was cut short.
pub(super) enum Stop {
    /// L1 printed nothing for [`STALL`] (no tick either): QEMU was killed. The scenario then
    /// running, if any, and where L1's NMI report found its CPU.
    Hung(Option<String>, String),
    /// L1 was alive but this scenario ran far past its budget: QEMU was killed.
    Overran,
    /// The lab's hard limit was reached: QEMU was killed.
    TimedOut,
}

/// How one L1 boot ended.
pub(super) struct BootEnd {
    /// L1 printed `@@LAB DONE`.
    pub done: bool,
    /// Why QEMU was killed, if it was.
    pub stop: Option<Stop>,
    /// When the first scenario started (L1 boot time).
    pub first_start: Option<Instant>,
    /// Each time a silent L1 was woken by a serial interrupt: the scenario then running (or
    /// "L1 boot") and how long L1 had been silent.
    pub revivals: Vec<String>,
}

/// What one L1 boot runs and where its files go.
pub(super) struct Boot<'a> {
    /// The scenarios for this boot, in order.
    pub scenarios: &'a [String],
    /// The lab's options (timeouts, sizes, L1 CPUs).
    pub options: &'a Options,
    /// L1's kernel.
    pub bzimage: &'a Path,
    /// L1's initramfs.
    pub cpio: &'a Path,
    /// bench-linux's rootfs image, L1's read-only virtio disk.
    pub rootfs: Option<&'a Path>,
    /// L1's console log (appended to after the first boot).
    pub log: &'a Path,
    /// 1 for the lab's first boot.
    pub attempt: u32,
    /// The lab's hard limit.
    pub deadline: Instant,
}

impl Boot<'_> {
    /// Boots L1 and follows its console until `@@LAB DONE`, QEMU's exit, the hard deadline, a
    /// silent L1 or an overrunning scenario; records scenario results in `results`.
    pub(super) fn run(&self, results: &mut HashMap<String, ScenarioResult>) -> Result<BootEnd> {
        self.start_log()?;
        let monitor = self.log.with_file_name("l1-monitor.sock");
        let _ = std::fs::remove_file(&monitor);
        let mut child = self.spawn(&monitor)?;
        let stdout = child.stdout.take().context("no QEMU stdout")?;
        // L1's serial input: written only to wake a silent L1.
        let mut serial_in = child.stdin.take();
        let mut log_w = self.append_log()?;
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let _ = log_w.write_all(&buf);
                        let line = String::from_utf8_lossy(&buf).trim_end_matches(['\r', '\n']).to_string();
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });

        let (mut done, mut stop, mut current, mut first_start) = (false, None, None::<String>, None);
        let mut last_output = Instant::now();
        // When a silent L1 was poked, if it has not spoken since.
        let mut poked = None::<Instant>;
        let mut revivals = Vec::new();
        loop {
            let overrun_at = current
                .as_ref()
                .and_then(|c| Some(results.get(c)?.started? + overrun_after(c, self.options)));
            // Each wake-up cost up to REVIVE_AFTER of this boot's clock too.
            let deadline = self.deadline + REVIVE_AFTER * revivals.len() as u32;
            let mut until = deadline.min(last_output + STALL);
            if let Some(t) = overrun_at {
                until = until.min(t);
            }
            if poked.is_none() {
                until = until.min(last_output + REVIVE_AFTER);
            }
            match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    if poked.take().is_some() {
                        let during = current.clone().unwrap_or_else(|| "L1 boot".into());
                        let silent = last_output.elapsed().as_secs_f64();
                        eprintln!(
                            "nested: L1 runs again after {silent:.0} s of silence: the serial interrupt woke it (during {during})"
                        );
                        revivals.push(format!("{during} ({silent:.0} s silent)"));
                        if let Some(r) = current.as_ref().and_then(|c| results.get_mut(c)) {
                            r.revived += 1;
                        }
                    }
                    last_output = Instant::now();
                    if let Some((name, why)) = failed_after_revival(&line, results) {
                        eprintln!(
                            "nested: {name} failed after L1 was woken during it ({why}); it runs again on a fresh L1"
                        );
                        stop = Some(Stop::Hung(
                            Some(name),
                            format!("L1 was silent during it and woken, then it failed: {why}"),
                        ));
                        let _ = child.kill();
                        break;
                    }
                    follow(&line, results, &mut current, &mut done, &mut first_start);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let now = Instant::now();
                    let why = if now >= deadline {
                        eprintln!("nested: the lab's hard limit was reached; killing QEMU");
                        stop = Some(Stop::TimedOut);
                        None
                    } else if poked.is_none() && now >= last_output + REVIVE_AFTER {
                        eprintln!(
                            "nested: L1 silent for {}s during {}: poking its serial port to wake it",
                            REVIVE_AFTER.as_secs(),
                            current.as_deref().unwrap_or("L1 boot")
                        );
                        self.wake(&monitor, &mut serial_in);
                        poked = Some(now);
                        continue;
                    } else if now >= last_output + STALL {
                        let why = format!(
                            "L1 hung: no console output, not even its 30 s tick, for {}s (QEMU killed)",
                            STALL.as_secs()
                        );
                        eprintln!("nested: {why} during {}", current.as_deref().unwrap_or("L1 boot"));
                        let at = self.diagnose_hang(&monitor, &rx);
                        stop = Some(Stop::Hung(current.clone(), at));
                        Some(why)
                    } else {
                        let name = current.clone().unwrap_or_default();
                        let why = format!(
                            "ran {}s, far past its {}s budget, with L1 alive (QEMU killed; L1's watchdog dump is in the console log)",
                            overrun_after(&name, self.options).as_secs(),
                            budget(&name, self.options)
                        );
                        eprintln!("nested: {name} {why}");
                        stop = Some(Stop::Overran);
                        Some(why)
                    };
                    if let (Some(why), Some(r)) = (why, current.as_ref().and_then(|c| results.get_mut(c))) {
                        r.took = r.started.map(|t| t.elapsed());
                        r.outcome = Some(Outcome::Fail(why));
                    }
                    let _ = child.kill();
                    break;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        // After DONE, L1 powers off; give QEMU a moment, then make sure it is gone.
        let grace = Instant::now() + Duration::from_secs(10);
        while child.try_wait()?.is_none() {
            if Instant::now() > grace {
                let _ = child.kill();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = reader.join();
        let _ = std::fs::remove_file(&monitor);
        Ok(BootEnd {
            done,
            stop,
            first_start,
            revivals,
        })
    }

    /// Starts (first boot) or continues the console log with a separator line.
    fn start_log(&self) -> Result<()> {
        let mut log_file = OpenOptions::new().create(true).append(true).open(self.log)?;
        if self.attempt == 1 {
            log_file.set_len(0)?;
        } else {
            writeln!(
                log_file,
                "\n===== nested lab: L1 boot {} (the previous L1 was stopped) =====",
                self.attempt
            )?;
        }
        Ok(())
    }

    fn append_log(&self) -> std::io::Result<std::fs::File> {
        OpenOptions::new().append(true).open(self.log)
    }

    /// Starts QEMU with L1, its HMP monitor on the unix socket `monitor`.
    fn spawn(&self, monitor: &Path) -> Result<Child> {
        let o = self.options;
        let append = format!(
            "console=ttyS0 reboot=k panic=-1 tsc_early_khz=2445426 quiet nokaslr idle=halt unknown_nmi_panic sysctl.kernel.panic_on_unrecovered_nmi=1 \
             lab.scenarios={} lab.timeout={} lab.bench_timeout={BENCH_TIMEOUT} lab.vsock_big_timeout={} \
             lab.vsock_big_mib={} lab.vsock_many={} lab.vsock_big_dirs={} lab.boot_rounds={}",
            self.scenarios.join(","),
            o.scenario_timeout,
            super::vsock_big_timeout(o.vsock_big_mib),
            o.vsock_big_mib,
            o.vsock_many,
            o.vsock_big_dirs,
            o.boot_rounds
        );
        let mut qemu = Command::new("qemu-system-x86_64");
        if let Some(image) = self.rootfs {
            qemu.arg("-drive")
                .arg(format!(
                    "file={},format=raw,if=none,id=rootfs,readonly=on",
                    image.display()
                ))
                .args(["-device", "virtio-blk-device,drive=rootfs"]);
        }
        qemu.args(["-accel", "tcg", "-cpu", "max", "-M", "microvm", "-m", "2G", "-smp"])
            .arg(o.l1_cpus.to_string())
            .args(["-nographic", "-no-reboot", "-monitor"])
            .arg(format!("unix:{},server=on,wait=off", monitor.display()))
            .arg("-kernel")
            .arg(self.bzimage)
            .arg("-initrd")
            .arg(self.cpio)
            .arg("-append")
            .arg(&append)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(self.append_log()?)
            .spawn()
            .context("starting qemu-system-x86_64")
    }

    /// L1 went silent: logs where QEMU has its CPU and its local APIC's state (which
    /// interrupts are pending or in service, the timer), then writes an XON byte to its serial
    /// port (see the module's comment).
    fn wake(&self, monitor: &Path, serial_in: &mut Option<ChildStdin>) {
        let regs = hmp(monitor, "info registers");
        let rip = rip_line(&regs);
        eprintln!("nested:   qemu: {rip}");
        let lapic = log_lapic(monitor);
        let sent = match serial_in.as_mut() {
            Some(w) => w.write_all(&[XON]).and_then(|()| w.flush()),
            None => Err(std::io::Error::other("no serial input")),
        };
        if let Err(e) = &sent {
            eprintln!("nested:   cannot write to L1's serial port: {e}");
        }
        if let Ok(mut f) = self.append_log() {
            let said = match sent {
                Ok(()) => "sent".to_string(),
                Err(e) => format!("not sent: {e}"),
            };
            let _ = writeln!(
                f,
                "\n===== nested lab: L1 silent for {}s, {rip}; its local APIC: =====\n{lapic}\n===== XON to its serial port to wake it: {said} =====",
                REVIVE_AFTER.as_secs()
            );
        }
    }

    /// L1 stopped printing: logs QEMU's view of the CPU, then sends an NMI and shows what L1
    /// prints for it (its panic report, when L1 still takes NMIs). Returns where the report
    /// found L1's kernel (its `RIP: 0010:` function), or why it cannot say.
    fn diagnose_hang(&self, monitor: &Path, rx: &mpsc::Receiver<String>) -> String {
        let regs = hmp(monitor, "info registers -a");
        let lapic = log_lapic(monitor);
        let mut log = self.append_log().ok();
        if let Some(f) = log.as_mut() {
            let _ = writeln!(
                f,
                "\n===== nested lab: L1 silent for {}s; QEMU's CPU state =====",
                STALL.as_secs()
            );
            let _ = writeln!(f, "{regs}");
            let _ = writeln!(f, "===== L1's local APIC =====\n{lapic}");
        }
        for line in regs
            .lines()
            .filter(|l| l.starts_with("RIP=") || l.starts_with("CS ") || l.contains("EFER="))
        {
            eprintln!("nested:   qemu: {line}");
        }
        let nmi = hmp(monitor, "nmi");
        if let Some(f) = log.as_mut() {
            let said = if nmi.trim().is_empty() { "ok" } else { nmi.trim() };
            let _ = writeln!(f, "===== nested lab: NMI sent to L1 (QEMU: {said}) =====");
        }
        let until = Instant::now() + NMI_WAIT;
        let (mut shown, mut at) = (0, None);
        while let Ok(line) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            if let Some(i) = line.find("RIP: 0010:") {
                at.get_or_insert_with(|| format!("the NMI found L1's kernel at {}", line[i + 10..].trim()));
            }
            if shown < 60 {
                eprintln!("nested:   L1 after NMI: {line}");
                shown += 1;
            }
        }
        if shown == 0 {
            eprintln!("nested:   L1 printed nothing in {}s after an NMI", NMI_WAIT.as_secs());
        }
        at.unwrap_or_else(|| {
            let rip = rip_line(&regs);
            format!("no NMI report from L1; QEMU: {rip}")
        })
    }
}

/// QEMU's `info lapic` for L1's CPU; its timer, ISR, IRR and priority lines also go to stderr
/// (an interrupt stuck in service blocks every one of lower priority, the timer's included).
fn log_lapic(monitor: &Path) -> String {
    let lapic = hmp(monitor, "info lapic");
    for line in lapic.lines().filter(|l| {
        ["LVTT", "Timer", "ISR", "IRR", "APR"]
            .iter()
            .any(|k| l.trim_start().starts_with(k))
    }) {
        eprintln!("nested:   qemu lapic: {}", line.trim());
    }
    lapic
}

/// `Some((name, why))` when `line` reports a failure of scenario `name` during which L1 was
/// silent and woken.
fn failed_after_revival(line: &str, results: &HashMap<String, ScenarioResult>) -> Option<(String, String)> {
    let (name, verb, rest) = lab_line(line)?;
    (verb == "FAIL" && results.get(name)?.revived > 0).then(|| {
        let why = rest.unwrap_or("(no reason given)").trim().to_string();
        (name.to_string(), why)
    })
}

/// The words of an `@@LAB NAME VERB [REST]` line (name and verb empty when missing).
fn lab_line(line: &str) -> Option<(&str, &str, Option<&str>)> {
    let i = line.find("@@LAB ")?;
    let mut words = line[i + 6..].splitn(3, ' ');
    Some((words.next().unwrap_or(""), words.next().unwrap_or(""), words.next()))
}

/// QEMU's `RIP=...` line of an `info registers` answer.
fn rip_line(regs: &str) -> &str {
    regs.lines().find(|l| l.starts_with("RIP=")).unwrap_or("RIP unknown")
}

/// Applies one console line to the results: `@@LAB` verbs, and `  | ` output lines.
fn follow(
    line: &str,
    results: &mut HashMap<String, ScenarioResult>,
    current: &mut Option<String>,
    done: &mut bool,
    first_start: &mut Option<Instant>,
) {
    if let Some(i) = line.find("  | ") {
        if let Some(r) = current.as_ref().and_then(|c| results.get_mut(c)) {
            r.output.push(line[i + 4..].to_string());
        }
        return;
    }
    let Some((name, verb, rest)) = lab_line(line) else {
        return;
    };
    if name == "DONE" {
        *done = true;
        return;
    }
    let Some(r) = results.get_mut(name) else { return };
    match verb {
        "START" => {
            r.started = Some(Instant::now());
            first_start.get_or_insert(Instant::now());
            *current = Some(name.to_string());
            eprintln!("nested: {name} ...");
        }
        "PASS" | "FAIL" => {
            r.took = r.started.map(|t| t.elapsed());
            let secs = r.took.unwrap_or_default().as_secs_f64();
            if verb == "PASS" {
                r.outcome = Some(Outcome::Pass);
                eprintln!("nested: {name} passed ({secs:.1} s)");
            } else {
                let why = rest.unwrap_or("(no reason given)").trim().to_string();
                eprintln!("nested: {name} FAILED ({secs:.1} s): {why}");
                let tail = r.output.len().saturating_sub(8);
                for l in &r.output[tail..] {
                    eprintln!("nested:   | {l}");
                }
                r.outcome = Some(Outcome::Fail(why));
            }
            *current = None;
        }
        _ => {}
    }
}

/// Seconds a scenario may take in L1: its VMs' timeouts and the lab's bookkeeping. L1's
/// watchdog dumps its processes at twice this; the host stops L1 90 s later.
pub(super) fn budget(name: &str, options: &Options) -> u64 {
    let t = options.scenario_timeout;
    let extra = match name {
        "api" | "vsock-exec-api" | "snapshot-linux" | "snapshot-vmgenid" | "snapshot-vsock" => t,
        "vsock-many" => 3 * t,
        // Three jailed VMs in turn, each under the scenario timeout.
        "jail-cgroup2" => 2 * t,
        "vsock-big" => super::vsock_big_timeout(options.vsock_big_mib),
        "bench-linux" => BENCH_TIMEOUT,
        // Each round boots the three VMMs to their marker (5-17 s each under TCG, up to 2x the
        // scenario timeout when one hangs), plus a warm-up round and the printk timelines' round.
        "boot-peers" => (options.boot_rounds + 2) * 3 * 30,
        _ => 0,
    };
    t + 15 + extra
}

/// How long after its start a scenario counts as stuck.
fn overrun_after(name: &str, options: &Options) -> Duration {
    Duration::from_secs(2 * budget(name, options) + 90)
}

/// `name secs` lines for L1's watchdog (`/lab/budgets`).
pub(super) fn budgets_file(options: &Options) -> String {
    options
        .scenarios
        .iter()
        .map(|n| format!("{n} {}\n", budget(n, options)))
        .collect()
}

/// Runs one HMP command on QEMU's monitor socket; its output without the banner, prompts and
/// terminal escapes, or why there is none.
fn hmp(socket: &Path, command: &str) -> String {
    let mut s = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => return format!("(QEMU monitor {}: {e})", socket.display()),
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = s.write_all(format!("{command}\n").as_bytes());
    let (mut out, mut buf) = (Vec::new(), [0u8; 8192]);
    let until = Instant::now() + Duration::from_secs(10);
    // The banner's prompt, then the command's output and a second prompt.
    while Instant::now() < until && out.windows(7).filter(|w| w == b"(qemu) ").count() < 2 {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
    clean_hmp(&String::from_utf8_lossy(&out))
}

/// HMP's output without its banner, the prompt line (which echoes the command as typed, with
/// cursor movements) and terminal escapes.
fn clean_hmp(raw: &str) -> String {
    let mut text = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters, then a final byte in @..~.
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        if c == '\n' || !c.is_control() {
            text.push(c);
        }
    }
    text.lines()
        .filter(|l| !l.starts_with("(qemu)") && !l.starts_with("QEMU ") && !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_after_a_revival_are_found() {
        let mut results: HashMap<String, ScenarioResult> = HashMap::new();
        results.insert("a".into(), ScenarioResult::default());
        results.insert(
            "b".into(),
            ScenarioResult {
                revived: 1,
                ..ScenarioResult::default()
            },
        );
        assert_eq!(failed_after_revival("@@LAB a FAIL timed out", &results), None);
        assert_eq!(
            failed_after_revival("[  9.1] @@LAB b FAIL timed out after 45 s", &results),
            Some(("b".into(), "timed out after 45 s".into()))
        );
        assert_eq!(failed_after_revival("@@LAB b PASS", &results), None);
        assert_eq!(failed_after_revival("@@LAB c FAIL x", &results), None);
    }

    #[test]
    fn hmp_output_loses_banner_echo_prompts_and_escapes() {
        // As QEMU 7.2 writes it: the prompt line echoes each typed prefix with cursor moves.
        let raw = "QEMU 7.2.22 monitor - type 'help' for more information\r\n(qemu) i\x1b[K\x1b[Din\x1b[K\x1b[D\x1b[Dinfo registers\x1b[K\r\nRIP=ffffffff81000000 RFL=00000002 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=1\r\nEFER=0000000000000d01\r\n(qemu) ";
        assert_eq!(
            clean_hmp(raw),
            "RIP=ffffffff81000000 RFL=00000002 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=1\nEFER=0000000000000d01"
        );
        let nmi = "QEMU 7.2.22 monitor - type 'help' for more information\r\n(qemu) n\x1b[K\x1b[Dnm\x1b[K\x1b[D\x1b[Dnmi\x1b[K\r\n(qemu) ";
        assert_eq!(clean_hmp(nmi), "");
    }

    #[test]
    fn boot_peers_is_opt_in_and_its_rounds_are_in_its_budget() {
        let all = Options::parse(&[]).ok().flatten().expect("options");
        assert_eq!(all.scenarios.len(), super::super::SCENARIOS.len());
        assert!(!all.scenarios.iter().any(|s| s == "boot-peers"));
        let args: Vec<String> = ["boot-peers", "--boot-rounds", "5"].map(String::from).to_vec();
        let options = Options::parse(&args).ok().flatten().expect("options");
        assert_eq!(options.scenarios, ["boot-peers"]);
        assert_eq!(options.boot_rounds, 5);
        assert_eq!(budget("boot-peers", &options), 60 + 7 * 3 * 30);
        assert!(Options::parse(&["--boot-rounds".to_string(), "0".to_string()]).is_err());
    }

    #[test]
    fn the_bench_scenario_gets_the_bench_timeout_in_its_budget() {
        let options = Options::parse(&["bench-linux".to_string(), "linux-cmd".to_string()])
            .ok()
            .flatten()
            .expect("options");
        assert_eq!(budget("linux-cmd", &options), 60);
        // jail-cgroup2 runs three VMs, one after the other.
        assert_eq!(budget("jail-cgroup2", &options), 3 * 45 + 15);
        assert_eq!(budget("bench-linux", &options), 60 + BENCH_TIMEOUT);
        assert_eq!(
            budgets_file(&options),
            format!("bench-linux {}\nlinux-cmd 60\n", 60 + BENCH_TIMEOUT)
        );
    }
}
