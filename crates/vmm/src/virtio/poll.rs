//! Adaptive polling of a virtqueue (`--disk ...,poll=off|auto|N`, and the
//! same for `--net`): after a round that completed requests, the device
//! worker keeps looking at the avail ring for a bounded window with the
//! driver's notifications suppressed (VIRTQ_USED_F_NO_NOTIFY, or a stale
//! avail_event with EVENT_IDX), so a driver that submits again soon pays no
//! notification exit. When the window runs out empty the worker re-arms
//! notifications, looks once more, and sleeps on its eventfd: an idle queue
//! costs no CPU. A NIC's worker also keeps reading its tap in the window, so
//! frames that arrive meanwhile are taken at once rather than after a wake-up.
//!
//! `auto` sizes the window from the arrival rate: an exponentially weighted
//! mean of the gaps between the end of one busy round and the start of the
//! next (whether the next request was found by polling or woke the worker
//! with a kick). The window is twice that mean, at most [`AUTO_MAX`]; when
//! the mean gap is longer than [`AUTO_MAX`] polling could not catch the
//! next request, and the window is zero until the gaps shrink again.
//!
//! Polling pays only when the poller has a core of its own. On a host with
//! more busy threads than cores the poller and the vCPU that is to submit
//! the next request take turns, and a request found by polling waits for a
//! time slice instead of being woken at once. So `auto` watches the worker's
//! share of the CPU over each polling stretch (its thread CPU time against
//! the wall clock): under half means the host took the core away, and
//! polling backs off ([`BACKOFF_START`], doubling up to [`BACKOFF_MAX`]).

use std::time::{Duration, Instant};

pub use crate::vmm_config::{PollMode, FIXED_MAX_US};

/// The window `auto` starts with.
pub const AUTO_START: Duration = Duration::from_micros(50);
/// The longest window `auto` chooses.
pub const AUTO_MAX: Duration = Duration::from_micros(500);
/// A gap longer than this counts as this much (one long idle spell must
/// not keep polling off for many requests after it).
const GAP_CAP: Duration = Duration::from_micros(4 * 500);
/// How long `auto` stops polling after a contended stretch, at first.
pub const BACKOFF_START: Duration = Duration::from_millis(10);
/// The longest back-off.
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The polling window of one queue: a small state machine driven by the
/// worker after each round.
#[derive(Debug, Clone)]
pub struct PollWindow {
    mode: PollMode,
    /// Mean gap between busy rounds (auto), in nanoseconds.
    gap_ns: u64,
    /// When the last busy round ended.
    last_done: Option<Instant>,
    /// While polling: when the window ends.
    until: Option<Instant>,
    /// No polling before this (auto, after a contended stretch).
    backoff_until: Option<Instant>,
    /// The next back-off.
    backoff: Duration,
}

impl PollWindow {
    /// A window for `mode`.
    pub fn new(mode: PollMode) -> Self {
        Self {
            mode,
            gap_ns: AUTO_START.as_nanos() as u64 / 2,
            last_done: None,
            until: None,
            backoff_until: None,
            backoff: BACKOFF_START,
        }
    }

    /// The mode.
    pub fn mode(&self) -> PollMode {
        self.mode
    }

    /// How long the worker polls after a busy round now.
    pub fn window(&self) -> Duration {
        match self.mode {
            PollMode::Off => Duration::ZERO,
            PollMode::Fixed(us) => Duration::from_micros(us),
            PollMode::Auto => {
                let gap = Duration::from_nanos(self.gap_ns);
                if gap > AUTO_MAX {
                    Duration::ZERO
                } else {
                    (gap * 2).min(AUTO_MAX)
                }
            }
        }
    }

    /// Whether a window is open (notifications are off).
    pub fn polling(&self) -> bool {
        self.until.is_some()
    }

    /// After a round that began at `started` and ended at `now` having
    /// completed `completed` requests: true to keep polling (notifications
    /// stay suppressed), false when the worker must re-arm notifications
    /// and sleep.
    pub fn after_round(&mut self, completed: usize, started: Instant, now: Instant) -> bool {
        if self.mode == PollMode::Off {
            return false;
        }
        if completed > 0 {
            if let Some(last) = self.last_done {
                let gap = started.saturating_duration_since(last).min(GAP_CAP).as_nanos() as u64;
                // Weight 1/4 for the newest gap.
                self.gap_ns = self.gap_ns - self.gap_ns / 4 + gap / 4;
            }
            self.last_done = Some(now);
            if self.backoff_until.is_some_and(|b| now < b) {
                self.until = None;
                return false;
            }
            let w = self.window();
            self.until = (!w.is_zero()).then(|| now + w);
            return self.until.is_some();
        }
        match self.until {
            Some(end) if now < end => true,
            _ => {
                self.until = None;
                false
            }
        }
    }

    /// A polling stretch (notifications off, from the first busy round to
    /// the window's end) took `wall` and the worker ran for `cpu` of it.
    /// Under half: the host has no core to spare, and `auto` stops polling
    /// for a back-off that doubles while it stays so.
    pub fn stretch_ended(&mut self, cpu: Duration, wall: Duration, now: Instant) {
        if self.mode != PollMode::Auto || wall.is_zero() {
            return;
        }
        if cpu * 2 < wall {
            self.backoff_until = Some(now + self.backoff);
            self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        } else {
            self.backoff = BACKOFF_START;
        }
    }

    /// Whether `auto` is backing off at `now`.
    pub fn backing_off(&self, now: Instant) -> bool {
        self.backoff_until.is_some_and(|b| now < b)
    }

    /// The worker re-armed notifications and found requests at once (they
    /// came in between): a window no longer open.
    pub fn rearmed(&mut self) {
        self.until = None;
    }
}

/// The calling thread's CPU time in nanoseconds (a polling stretch's
/// share of the CPU, a worker's CPU counter).
pub(crate) fn thread_cpu_ns() -> Option<u64> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to write to.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return None;
    }
    Some((ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64)
}

/// A worker thread's CPU time, counted in whole microseconds between calls
/// (the remainder below a microsecond carries over).
#[derive(Debug, Default)]
pub(crate) struct CpuCounter {
    last_ns: Option<u64>,
}

impl CpuCounter {
    /// Microseconds of CPU the calling thread used since the last call
    /// (0 the first time, or when the clock cannot be read).
    pub(crate) fn elapsed_us(&mut self) -> u64 {
        let Some(now) = thread_cpu_ns() else {
            return 0;
        };
        match self.last_ns.filter(|&b| b <= now) {
            Some(before) => {
                self.last_ns = Some(now - (now - before) % 1000);
                (now - before) / 1000
            }
            None => {
                self.last_ns = Some(now);
                0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn modes_parse_and_print() {
        assert_eq!("off".parse::<PollMode>(), Ok(PollMode::Off));
        assert_eq!("auto".parse::<PollMode>(), Ok(PollMode::Auto));
        assert_eq!("100".parse::<PollMode>(), Ok(PollMode::Fixed(100)));
        assert_eq!("100us".parse::<PollMode>(), Ok(PollMode::Fixed(100)));
        assert_eq!("0".parse::<PollMode>(), Ok(PollMode::Off));
        for bad in ["", "on", "-1", "10ms", "100000", "us"] {
            assert!(bad.parse::<PollMode>().is_err(), "{bad}");
        }
        for m in [PollMode::Off, PollMode::Auto, PollMode::Fixed(7)] {
            assert_eq!(m.to_string().parse::<PollMode>(), Ok(m));
            let json = serde_json::to_string(&m).expect("json");
            assert_eq!(serde_json::from_str::<PollMode>(&json).expect("back"), m);
        }
        assert!(serde_json::from_str::<PollMode>("\"fast\"").is_err());
    }

    #[test]
    fn off_never_polls() {
        let mut w = PollWindow::new(PollMode::Off);
        let t = Instant::now();
        assert!(!w.after_round(3, t, t));
        assert!(!w.polling());
        assert_eq!(w.window(), Duration::ZERO);
    }

    #[test]
    fn a_fixed_window_polls_until_it_ends_then_rearms() {
        let mut w = PollWindow::new(PollMode::Fixed(100));
        let t = Instant::now();
        assert!(w.after_round(1, t, t), "a busy round opens the window");
        assert!(w.after_round(0, t, t + us(99)), "still inside");
        assert!(!w.after_round(0, t, t + us(100)), "ended empty: re-arm");
        assert!(!w.polling());
        assert!(!w.after_round(0, t, t + us(150)), "stays asleep");
        // A request inside the window starts a new one from its end.
        assert!(w.after_round(1, t + us(200), t + us(200)));
        assert!(w.after_round(1, t + us(250), t + us(260)));
        assert!(w.after_round(0, t, t + us(359)));
        assert!(!w.after_round(0, t, t + us(360)));
        assert_eq!(w.window(), us(100), "fixed stays fixed");
    }

    #[test]
    fn auto_follows_the_arrival_rate() {
        let mut w = PollWindow::new(PollMode::Auto);
        assert_eq!(w.window(), AUTO_START);
        let mut t = Instant::now();
        // Requests every 20 us: the window settles near 2 x 20 us.
        for _ in 0..40 {
            assert!(w.after_round(1, t, t));
            t += us(20);
        }
        assert!(w.window() >= us(38) && w.window() <= us(42), "{:?}", w.window());
        // Gaps of 200 us: it grows to catch them, capped at AUTO_MAX.
        for _ in 0..40 {
            w.after_round(1, t, t);
            t += us(200);
        }
        assert!(w.window() > us(350) && w.window() <= AUTO_MAX, "{:?}", w.window());
        // Gaps longer than polling could cover: no window at all.
        for _ in 0..20 {
            w.after_round(1, t, t);
            t += Duration::from_millis(10);
        }
        assert_eq!(w.window(), Duration::ZERO);
        assert!(!w.after_round(1, t, t), "nothing to poll for");
        assert!(!w.polling());
        // And back once requests come close together again.
        for _ in 0..40 {
            t += us(10);
            w.after_round(1, t, t);
        }
        assert!(w.window() > Duration::ZERO && w.window() < us(30), "{:?}", w.window());
        assert!(w.polling());
    }

    #[test]
    fn auto_never_polls_past_its_cap_when_idle() {
        let mut w = PollWindow::new(PollMode::Auto);
        let t = Instant::now();
        for i in 0..50 {
            w.after_round(1, t + us(300 * i), t + us(300 * i));
        }
        let end = t + us(300 * 49);
        assert!(w.after_round(0, end, end + AUTO_MAX - us(1)));
        assert!(!w.after_round(0, end, end + AUTO_MAX), "an idle queue stops polling");
        assert!(!w.after_round(0, end, end + us(10_000)));
    }

    #[test]
    fn auto_backs_off_when_the_host_takes_the_core_away() {
        let mut w = PollWindow::new(PollMode::Auto);
        let t = Instant::now();
        // The worker ran all through its stretch: polling goes on.
        w.stretch_ended(us(90), us(100), t);
        assert!(!w.backing_off(t));
        assert!(w.after_round(1, t, t));
        // It ran for a third of it: no polling for BACKOFF_START.
        w.stretch_ended(us(100), us(300), t);
        assert!(w.backing_off(t));
        assert!(!w.after_round(1, t, t + us(10)), "backing off: sleep at once");
        assert!(!w.polling());
        let later = t + BACKOFF_START;
        assert!(!w.backing_off(later));
        // (The 10 ms gap counts in the mean: a few close requests bring the window back.)
        let polls = (1..=10).map(|i| w.after_round(1, later + us(10 * i), later + us(10 * i)));
        assert!(polls.last().unwrap_or(false), "polls again after the back-off");
        // Contended again: the back-off doubles, up to BACKOFF_MAX.
        w.stretch_ended(us(1), us(300), later);
        assert!(w.backing_off(later + BACKOFF_START));
        assert!(!w.backing_off(later + BACKOFF_START * 2));
        for _ in 0..20 {
            w.stretch_ended(us(1), us(300), later);
        }
        assert!(!w.backing_off(later + BACKOFF_MAX));
        // A fixed window is what the user asked for: no back-off.
        let mut f = PollWindow::new(PollMode::Fixed(100));
        f.stretch_ended(us(1), us(300), t);
        assert!(!f.backing_off(t));
    }

    #[test]
    fn the_cpu_counter_counts_this_threads_cpu_time() {
        let mut c = CpuCounter::default();
        assert_eq!(c.elapsed_us(), 0, "the first call starts the count");
        // Spin until the thread has used at least 2 ms of CPU by its own clock.
        let start = thread_cpu_ns().expect("CLOCK_THREAD_CPUTIME_ID");
        while thread_cpu_ns().expect("clock") < start + 2_000_000 {
            std::hint::black_box(0u64);
        }
        let us = c.elapsed_us();
        assert!(us >= 2000, "{us} us");
        assert!(c.elapsed_us() < 1000, "counted once");
    }

    #[test]
    fn rearmed_closes_the_window() {
        let mut w = PollWindow::new(PollMode::Fixed(50));
        let t = Instant::now();
        assert!(w.after_round(1, t, t));
        w.rearmed();
        assert!(!w.polling());
    }
}
