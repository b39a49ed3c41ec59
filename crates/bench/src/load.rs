//! Busy-host handling: how busy the CPUs are before each round (and a bounded wait for a
//! quieter machine), and the cores the host runner and the guests' processes are pinned to.

use std::time::{Duration, Instant};

use serde::Serialize;

/// CPU busy fraction (all CPUs, over [`SAMPLE`]) below which the machine counts as quiet.
pub const QUIET_BELOW: f64 = 0.25;
/// Rounds in a row that stay busy through their whole wait, after which the bench stops
/// waiting (it looks once per round) until a round finds the machine quiet.
pub const GIVE_UP_AFTER: usize = 3;
/// How long one busy measurement looks at `/proc/stat`.
pub const SAMPLE: Duration = Duration::from_millis(200);

/// Jiffies of the aggregate `cpu` line of `/proc/stat`: (busy, total).
fn parse_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_ascii_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

fn read_stat() -> Option<(u64, u64)> {
    parse_stat(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// The fraction of all CPUs' time spent busy over [`SAMPLE`] (None where /proc/stat is unreadable).
pub fn busy_fraction() -> Option<f64> {
    let (b0, t0) = read_stat()?;
    std::thread::sleep(SAMPLE);
    let (b1, t1) = read_stat()?;
    let dt = t1.saturating_sub(t0);
    (dt > 0).then(|| b1.saturating_sub(b0) as f64 / dt as f64)
}

/// The 1-minute load average.
pub fn load_1min() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The load seen before one round of runs.
#[derive(Clone, Debug, Serialize)]
pub struct RoundLoad {
    /// Round number (1-based).
    pub round: usize,
    /// Cells run in this round.
    pub cells: usize,
    /// CPU busy fraction (all CPUs) in the first 200 ms look, before any wait.
    pub busy_before: Option<f64>,
    /// CPU busy fraction in the last look, when the round started.
    pub busy_at_start: Option<f64>,
    /// 1-minute load average when the round started.
    pub load_1min: Option<f64>,
    /// Seconds waited for a quieter machine (after the first look).
    pub waited_s: f64,
    /// Whether the machine was quiet (busy below 25%) when the round started.
    pub quiet: bool,
}

/// Looks at the CPUs; while busy, looks again, up to `max_wait` in all.
pub fn settle(round: usize, cells: usize, max_wait: Duration) -> RoundLoad {
    let t0 = Instant::now();
    let first = busy_fraction();
    let mut last = first;
    while last.is_some_and(|b| b >= QUIET_BELOW) && t0.elapsed() + SAMPLE < max_wait {
        std::thread::sleep(Duration::from_millis(300).min(max_wait.saturating_sub(t0.elapsed() + SAMPLE)));
        last = busy_fraction();
    }
    RoundLoad {
        round,
        cells,
        busy_before: first,
        busy_at_start: last,
        load_1min: load_1min(),
        waited_s: (t0.elapsed().as_secs_f64() - SAMPLE.as_secs_f64()).max(0.0),
        quiet: last.is_some_and(|b| b < QUIET_BELOW),
    }
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is this thread; the pointer and size describe `set`.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return Vec::new();
    }
    // SAFETY: CPU_ISSET reads the set within its bounds (i < CPU_SETSIZE).
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .collect()
}

fn set_affinity(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        if c < libc::CPU_SETSIZE as usize {
            // SAFETY: CPU_SET writes within the set for c < CPU_SETSIZE, checked above.
            unsafe { libc::CPU_SET(c, &mut set) };
        }
    }
    // SAFETY: pid 0 is the calling thread; the pointer and size describe `set`.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The cores the bench pins to: the last `n` CPUs this process may use (CPU 0 usually takes
/// more interrupts); None where that is every allowed CPU (pinning would change nothing).
pub fn choose_cores(n: usize) -> Option<Vec<usize>> {
    let allowed = allowed_cpus();
    (n > 0 && n < allowed.len()).then(|| allowed[allowed.len() - n..].to_vec())
}

/// Runs `f` with the calling thread pinned to `cores` (None: unpinned). Threads and
/// processes it starts inherit the mask: the host runner's threads, `kvmkit run` and
/// its vCPU threads, QEMU and its vCPU threads. The old mask comes back afterwards.
pub fn pinned<T>(cores: Option<&[usize]>, f: impl FnOnce() -> T) -> T {
    let Some(cores) = cores else { return f() };
    let old = allowed_cpus();
    let ok = set_affinity(cores).is_ok();
    let out = f();
    if ok && !old.is_empty() {
        let _ = set_affinity(&old);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_parses() {
        let text = "cpu  100 5 50 800 45 0 0 0 0 0\ncpu0 50 2 25 400 20 0 0 0 0 0\nintr 1\n";
        assert_eq!(parse_stat(text), Some((155, 1000)));
        assert_eq!(parse_stat("intr 1\n"), None);
    }

    #[test]
    fn pinning_restores_the_old_mask() {
        let before = allowed_cpus();
        assert!(!before.is_empty());
        let last = *before.last().expect("a cpu");
        let inside = pinned(Some(&[last]), allowed_cpus);
        assert_eq!(inside, vec![last]);
        // A thread started while pinned inherits the mask.
        let child = pinned(Some(&[last]), || {
            std::thread::spawn(allowed_cpus).join().expect("thread")
        });
        assert_eq!(child, vec![last]);
        assert_eq!(allowed_cpus(), before);
        assert_eq!(choose_cores(before.len()), None);
        if before.len() > 1 {
            assert_eq!(choose_cores(1), Some(vec![last]));
        }
    }
}
