//! A VM's process: `kvmkit run --config-file STATE/NAME/config.json
//! --api-sock STATE/NAME/api.sock --serial socket=STATE/NAME/console.sock`,
//! started in its own session. Its serial console is the unix socket
//! `console.sock` (a 64 KiB ring for late clients, many readers, one
//! writer: `kvmkit vm console`, `vm logs`, the web console); kvmkit's own
//! messages go to `kvmkit.log`. The pid file holds the pid and the
//! process's start time (from /proc), so a reused pid is never taken for
//! the VM.
//!
//! Files in STATE/NAME while it runs or after it ended:
//! `pid` (running), `lock` (flock held while starting, stopping, undefining),
//! `stopping` (an asked-for stop is under way: not a failure),
//! `results.json` (written by `kvmkit run --results` when the VMM ends by itself),
//! `last-exit.json` (how the last run ended: shutoff, stopped or crashed, and why).

use std::fs::{self, File, OpenOptions};

use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use super::store::{write_atomic, VmDir};
use crate::commands::ctl::Response;

/// How long `vm start` waits for the VMM's API to answer.
const START_WAIT: Duration = Duration::from_secs(15);
/// kvmkit's log past this size moves to kvmkit.log.1 when the VM starts.
const LOG_ROTATE: u64 = 1 << 20;
/// kvmkit's own messages (the guest's console is the socket).
pub const LOG_FILE: &str = "kvmkit.log";
/// The serial console's socket.
pub const CONSOLE_SOCK: &str = "console.sock";
/// How long one API request may take before the VM counts as unresponsive.
const API_TIMEOUT: Duration = Duration::from_secs(2);

/// An exclusive lock on a VM (flock on STATE/NAME/lock), held until dropped.
pub struct VmLock(#[allow(dead_code)] File);

impl VmLock {
    /// Takes the lock or fails at once, saying another client holds it.
    pub fn take(vm: &VmDir) -> anyhow::Result<Self> {
        let p = vm.file("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&p)
            .with_context(|| format!("cannot open {}", p.display()))?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            bail!(
                "VM {}: another kvmkit is starting, stopping or changing it right now (lock {} held); try again",
                vm.name,
                p.display()
            );
        }
        Ok(Self(f))
    }
}

/// The pid file's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PidFile {
    /// Process id.
    pub pid: i32,
    /// Its start time in clock ticks after boot (/proc/PID/stat field 22).
    pub start_ticks: u64,
}

/// A process's start time in clock ticks after boot, None when it is gone.
pub fn start_ticks(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); field 22 is index 19.
    if fields.first() == Some(&"Z") {
        return None; // a zombie: the VM has ended, only its status is left
    }
    fields.get(19)?.parse().ok()
}

/// Reads the pid file, None when there is none (or it is unreadable).
pub fn read_pid(vm: &VmDir) -> Option<PidFile> {
    let text = fs::read_to_string(vm.file("pid")).ok()?;
    let mut w = text.split_whitespace();
    Some(PidFile {
        pid: w.next()?.parse().ok()?,
        start_ticks: w.next()?.parse().ok()?,
    })
}

impl PidFile {
    /// Whether this very process still runs (same pid, same start time).
    pub fn alive(&self) -> bool {
        start_ticks(self.pid) == Some(self.start_ticks)
    }

    /// Seconds since the process started.
    pub fn uptime_s(&self) -> Option<f64> {
        Some(self.uptime_at(host_uptime_s()?))
    }

    /// Seconds since the process started, the host having been up `host_up` seconds.
    pub fn uptime_at(&self, host_up: f64) -> f64 {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let hz = if hz > 0 { hz as f64 } else { 100.0 };
        (host_up - self.start_ticks as f64 / hz).max(0.0)
    }
}

/// Seconds since the host booted (/proc/uptime).
pub fn host_uptime_s() -> Option<f64> {
    fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastExit {
    /// `shutoff` (the guest ended it, exit 0), `stopped` (kvmkit vm stop/kill) or `crashed`.
    pub state: String,
    /// Why, in words.
    pub reason: String,
    /// When it was noticed (seconds since the epoch).
    pub at: u64,
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads `last-exit.json`.
pub fn last_exit(vm: &VmDir) -> Option<LastExit> {
    serde_json::from_str(&fs::read_to_string(vm.file("last-exit.json")).ok()?).ok()
}

/// Records how a run ended, from the `stopping` marker, the VMM's
/// `results.json` and (when known) the wait status; removes the pid file
/// and the marker. `status` is the wait status when this process was the
/// VM's parent.
pub fn record_end(vm: &VmDir, pid: &PidFile, status: Option<std::process::ExitStatus>) -> LastExit {
    use std::os::unix::process::ExitStatusExt;
    let asked = vm.file("stopping").exists();
    let results: Option<serde_json::Value> = fs::read_to_string(vm.file("results.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let from_results = results.as_ref().and_then(|r| {
        let e = r.get("exit")?;
        Some((
            e.get("reason")?.as_str()?.to_owned(),
            e.get("code").and_then(serde_json::Value::as_i64).unwrap_or(-1),
        ))
    });
    let status_text = status.map(|s| match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "ended".to_owned(),
    });
    let (state, reason) = match (asked, from_results) {
        (true, Some((r, _))) => ("stopped", r),
        (true, None) => ("stopped", status_text.unwrap_or_else(|| "stopped".into())),
        (false, Some((r, 0))) => ("shutoff", r),
        (false, Some((r, c))) => ("crashed", format!("{r} (exit status {c})")),
        (false, None) => (
            "crashed",
            format!(
                "process {} ended without writing its results ({})",
                pid.pid,
                status_text.unwrap_or_else(|| "killed, e.g. SIGKILL, or died; see kvmkit vm logs".into())
            ),
        ),
    };
    let end = LastExit {
        state: state.to_owned(),
        reason,
        at: now_s(),
    };
    if let Ok(text) = serde_json::to_string_pretty(&end) {
        let _ = write_atomic(&vm.file("last-exit.json"), (text + "\n").as_bytes());
    }
    // Only the pid file that names this run goes.
    if read_pid(vm) == Some(*pid) {
        let _ = fs::remove_file(vm.file("pid"));
    }
    let _ = fs::remove_file(vm.file("stopping"));
    let _ = fs::remove_file(vm.file("api.sock"));
    // The VMM removes its console socket when it ends; not when it was killed.
    let _ = fs::remove_file(vm.file(CONSOLE_SOCK));
    end
}

/// The running process, after cleaning a stale pid file (the process is
/// gone: how it ended is recorded, the file removed).
pub fn running(vm: &VmDir) -> Option<PidFile> {
    let pid = read_pid(vm)?;
    if pid.alive() {
        return Some(pid);
    }
    record_end(vm, &pid, None);
    None
}

/// One API request with a short timeout.
pub fn api(vm: &VmDir, method: &str, path: &str, body: Option<&str>) -> anyhow::Result<Response> {
    api_at(&vm.file("api.sock"), method, path, body, API_TIMEOUT)
}

fn api_at(sock: &Path, method: &str, path: &str, body: Option<&str>, timeout: Duration) -> anyhow::Result<Response> {
    crate::commands::ctl::request_within(sock, method, path, body, timeout)
}

/// An API request that must succeed (2xx); the refusal's fault_message otherwise.
pub fn api_ok(vm: &VmDir, method: &str, path: &str, body: Option<&str>) -> anyhow::Result<Response> {
    let r = api(vm, method, path, body).with_context(|| format!("VM {}: the VMM's API does not answer", vm.name))?;
    if !(200..300).contains(&r.status) {
        let why = serde_json::from_slice::<serde_json::Value>(&r.body)
            .ok()
            .and_then(|v| v.get("fault_message")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&r.body).into_owned());
        bail!("VM {}: {method} {path}: {} {why}", vm.name, r.status);
    }
    Ok(r)
}

/// How long a cached state (`state.json`) counts as the VM's state.
/// `kvmkit serve` refreshes it every half second.
pub const STATE_FRESH: Duration = Duration::from_secs(3);

/// The last state the VMM's API reported, as cached in `state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedState {
    /// The process it was asked of.
    pub pid: i32,
    /// Its start time (ticks), with `pid` the process's identity.
    pub start_ticks: u64,
    /// running, paused, starting, unresponsive.
    pub state: String,
    /// When it was asked (ms since the epoch).
    pub at_ms: u64,
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Asks the VMM for its state and caches the answer in `state.json` (a
/// cache: written by rename, without fsync).
pub fn refresh_state(vm: &VmDir, pid: &PidFile) -> String {
    let at_ms = now_ms();
    let state = api_state(vm);
    write_cache(vm, pid, &state, at_ms);
    state
}

/// Caches `state`, asked of the VMM at `at_ms`, in `state.json` (by rename,
/// without fsync: `kvmkit serve` sees the rename at once).
fn write_cache(vm: &VmDir, pid: &PidFile, state: &str, at_ms: u64) {
    let c = CachedState {
        pid: pid.pid,
        start_ticks: pid.start_ticks,
        state: state.to_owned(),
        at_ms,
    };
    if let Ok(text) = serde_json::to_string(&c) {
        let tmp = vm.file(&format!(".state.json.{}", std::process::id()));
        if fs::write(&tmp, text).is_ok() && fs::rename(&tmp, vm.file("state.json")).is_err() {
            let _ = fs::remove_file(&tmp);
        }
    }
}

/// `state.json` as written, whatever its age or process.
pub fn read_cache(vm: &VmDir) -> Option<CachedState> {
    serde_json::from_str(&fs::read_to_string(vm.file("state.json")).ok()?).ok()
}

/// Whether a state is one the VMM settled in (not `starting` or `unresponsive`).
pub fn settled(state: &str) -> bool {
    state != "starting" && state != "unresponsive"
}

/// The VM's state: the cached answer when it is about this process and
/// fresh (`kvmkit serve` keeps it so, and `vm pause`/`resume` write it), else
/// the VMM's API, asked now (and cached).
pub fn state(vm: &VmDir, pid: &PidFile) -> String {
    cached_state(vm, pid).unwrap_or_else(|| refresh_state(vm, pid))
}

/// The cached state when it is about this process, fresh, and settled
/// (not starting or unresponsive); None: ask the API.
pub fn cached_state(vm: &VmDir, pid: &PidFile) -> Option<String> {
    let c = read_cache(vm)?;
    (c.pid == pid.pid
        && c.start_ticks == pid.start_ticks
        && now_ms().saturating_sub(c.at_ms) < STATE_FRESH.as_millis() as u64
        && settled(&c.state))
    .then_some(c.state)
}

/// The VM's state as its VMM reports it (`GET /`): running, paused, starting;
/// `unresponsive` when the API does not answer.
pub fn api_state(vm: &VmDir) -> String {
    match api(vm, "GET", "/", None) {
        Ok(r) if r.status == 200 => serde_json::from_slice::<serde_json::Value>(&r.body)
            .ok()
            .and_then(|v| v.get("state")?.as_str().map(str::to_owned))
            .map(|s| match s.as_str() {
                "Running" => "running".to_owned(),
                "Paused" => "paused".to_owned(),
                "Not started" => "starting".to_owned(),
                other => other.to_ascii_lowercase(),
            })
            .unwrap_or_else(|| "unresponsive".into()),
        _ => "unresponsive".into(),
    }
}

/// Starts the VM's process (the caller holds the VM's lock and has checked
/// it is not running). Returns the child; the pid file is written. Waits
/// until the API answers, or fails with the end of the console log.
pub fn spawn(vm: &VmDir) -> anyhow::Result<(Child, PidFile)> {
    vm.resources()?; // still a valid definition
    for f in ["api.sock", "results.json", "stopping", "last-exit.json", "state.json"] {
        let _ = fs::remove_file(vm.file(f));
    }
    // The last run's recorded console (kvmkit serve) and the FIFO console's
    // input (kvmkit before --serial socket=) go.
    for f in ["console.in", "console.log", "console.log.1"] {
        let _ = fs::remove_file(vm.file(f));
    }
    let log_path = vm.file(LOG_FILE);
    if fs::metadata(&log_path).is_ok_and(|m| m.len() > LOG_ROTATE) {
        let _ = fs::rename(&log_path, vm.file(&format!("{LOG_FILE}.1")));
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let exe = std::env::current_exe().context("cannot find the kvmkit binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg("run")
        .arg("--config-file")
        .arg(vm.config_path())
        .arg("--api-sock")
        .arg(vm.file("api.sock"))
        .arg("--id")
        .arg(&vm.name)
        .arg("--results")
        .arg(vm.file("results.json"))
        .arg("--serial")
        .arg(format!("socket={}", vm.file(CONSOLE_SOCK).display()))
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log));
    // SAFETY: setsid is async-signal-safe; the VM leaves the caller's session
    // (a terminal's Ctrl-C or the daemon's end does not reach it).
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("cannot start kvmkit run")?;
    let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    if let Some(group) = super::cgroup::group() {
        if let Err(e) = super::cgroup::join(&group, pid) {
            if let Ok(mut f) = OpenOptions::new().append(true).open(&log_path) {
                use std::io::Write;
                let _ = writeln!(f, "kvmkit vm: the VM stays out of the cgroup {}: {e}", group.display());
            }
        }
    }
    let ticks = start_ticks(pid).unwrap_or(0);
    let pidfile = PidFile {
        pid,
        start_ticks: ticks,
    };
    write_atomic(&vm.file("pid"), format!("{pid} {ticks}\n").as_bytes())?;
    let deadline = Instant::now() + START_WAIT;
    loop {
        if let Some(status) = child.try_wait()? {
            let end = record_end(vm, &pidfile, Some(status));
            if end.state == "shutoff" {
                // A short workload that already ran to its end: a start all the same.
                return Ok((child, pidfile));
            }
            let tail = log_tail(&log_path, log_start, 5);
            bail!("VM {}: the VMM ended at start: {}{tail}", vm.name, end.reason);
        }
        // Up once it answers in a settled state, which is cached for `vm
        // list` (and `kvmkit serve`, which sees state.json appear).
        let at_ms = now_ms();
        let state = api_state(vm);
        if settled(&state) {
            write_cache(vm, &pidfile, &state, at_ms);
            return Ok((child, pidfile));
        }
        if Instant::now() > deadline {
            return Ok((child, pidfile)); // running, API slow: list shows it
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last `lines` lines of the log written after `from`, as "\n  line" text.
fn log_tail(path: &Path, from: u64, lines: usize) -> String {
    let data = fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(data.get(from as usize..).unwrap_or_default()).into_owned();
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let keep = &all[all.len().saturating_sub(lines)..];
    keep.iter().map(|l| format!("\n  {l}")).collect()
}

/// Waits up to `limit` for the process to end; true when it has.
pub fn wait_gone(pid: &PidFile, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if !pid.alive() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends a signal to the VM's process (checked to be that process).
pub fn signal(pid: &PidFile, sig: i32) {
    if pid.alive() {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid.pid, sig) };
    }
}

/// Stops a running VM: Ctrl-Alt-Del and `grace` for the guest to end it
/// (skipped for kvmkit's own guest, which has no keyboard driver), then
/// `PUT /kvmkit/stop`, then SIGTERM, then SIGKILL. Returns how it went.
pub fn stop(vm: &VmDir, pid: &PidFile, grace: Duration, ctrl_alt_del: bool) -> anyhow::Result<String> {
    write_atomic(&vm.file("stopping"), b"")?;
    let mut how = String::new();
    if ctrl_alt_del
        && !grace.is_zero()
        && api_ok(vm, "PUT", "/actions", Some(r#"{"action_type": "SendCtrlAltDel"}"#)).is_ok()
        && wait_gone(pid, grace)
    {
        how = "the guest shut down after Ctrl-Alt-Del".into();
    }
    if how.is_empty() && api_ok(vm, "PUT", "/kvmkit/stop", None).is_ok() && wait_gone(pid, Duration::from_secs(5)) {
        how = "the VMM stopped it (PUT /kvmkit/stop)".into();
    }
    if how.is_empty() {
        signal(pid, libc::SIGTERM);
        if wait_gone(pid, Duration::from_secs(5)) {
            how = "SIGTERM".into();
        }
    }
    if how.is_empty() {
        signal(pid, libc::SIGKILL);
        if !wait_gone(pid, Duration::from_secs(5)) {
            bail!("VM {}: process {} does not end even after SIGKILL", vm.name, pid.pid);
        }
        how = "SIGKILL".into();
    }
    let mut end = record_end(vm, pid, None);
    end.state = "stopped".into();
    end.reason = format!("stopped ({how})");
    let text = serde_json::to_string_pretty(&end)?;
    write_atomic(&vm.file("last-exit.json"), (text + "\n").as_bytes())?;
    Ok(how)
}

/// Where kvmkit's own messages for this VM go.
pub fn log_path(vm: &VmDir) -> PathBuf {
    vm.file(LOG_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_state_counts_only_for_the_same_process_while_fresh_and_settled() {
        let dir = std::env::temp_dir().join(format!("kvmkit-state-cache-{}", std::process::id()));
        let vm = VmDir::new(&dir, "c").expect("vm");
        fs::create_dir_all(&vm.dir).expect("dir");
        let pid = PidFile {
            pid: std::process::id() as i32,
            start_ticks: start_ticks(std::process::id() as i32).expect("ticks"),
        };
        let write = |state: &str, ticks: u64, age_ms: u64| {
            let c = CachedState {
                pid: pid.pid,
                start_ticks: ticks,
                state: state.into(),
                at_ms: now_ms() - age_ms,
            };
            fs::write(vm.file("state.json"), serde_json::to_string(&c).expect("json")).expect("write");
        };
        assert_eq!(cached_state(&vm, &pid), None, "no cache");
        write("paused", pid.start_ticks, 0);
        assert_eq!(cached_state(&vm, &pid).as_deref(), Some("paused"));
        write("paused", pid.start_ticks + 1, 0);
        assert_eq!(cached_state(&vm, &pid), None, "another process with the same pid");
        write("paused", pid.start_ticks, STATE_FRESH.as_millis() as u64 + 1000);
        assert_eq!(cached_state(&vm, &pid), None, "stale");
        write("starting", pid.start_ticks, 0);
        assert_eq!(cached_state(&vm, &pid), None, "not settled");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn own_process_is_alive_and_a_wrong_start_time_is_not() {
        let pid = std::process::id() as i32;
        let ticks = start_ticks(pid).expect("own stat");
        assert!(PidFile {
            pid,
            start_ticks: ticks
        }
        .alive());
        assert!(!PidFile {
            pid,
            start_ticks: ticks + 1
        }
        .alive());
        assert!(start_ticks(i32::MAX).is_none());
    }
}
