//! How a running VM is told to stop, and what the VM reports back.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use kvmkit_guest_abi::Report;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::lock;

/// Why a VM ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest wrote its exit status to the kvmkit exit port.
    GuestExit(u32),
    /// The guest asked for a reset (i8042 pulse, or KVM system event).
    Reset(&'static str),
    /// The guest powered off (ACPI S5, KVM system event).
    PowerOff(&'static str),
    /// The guest halted with interrupts off: it can never run again.
    Halted {
        /// vCPU index.
        cpu: usize,
        /// Guest RIP.
        rip: u64,
    },
    /// The vCPU hit a triple fault (KVM_EXIT_SHUTDOWN).
    TripleFault {
        /// vCPU index.
        cpu: usize,
        /// Guest RIP.
        rip: u64,
    },
    /// KVM could not go on with the guest (internal error, failed entry,
    /// an exit kvmkit does not handle).
    VcpuFailure {
        /// vCPU index.
        cpu: usize,
        /// Guest RIP.
        rip: u64,
        /// What happened.
        what: String,
    },
    /// The guest kernel panicked (seen on its console) and then reset or
    /// powered off.
    GuestPanic,
    /// The host asked kvmkit to stop (SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1).
    Signal(i32),
    /// A control-plane client asked the VMM to stop.
    Stopped(&'static str),
    /// The VM ran longer than its time limit.
    Timeout(Duration),
    /// kvmkit itself failed.
    VmmError(String),
}

impl ExitReason {
    /// The process exit code this ending maps to: the guest's own status
    /// for the exit port, 0 for a clean power-off or reset, 1 for a crash,
    /// 128 + signal for a signal, 124 for a timeout.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::GuestExit(s) => i32::try_from(*s).ok().filter(|s| *s <= 255).unwrap_or(1),
            Self::Reset(_) | Self::PowerOff(_) | Self::Stopped(_) => 0,
            Self::Signal(sig) => 128 + sig,
            Self::Timeout(_) => 124,
            Self::Halted { .. }
            | Self::TripleFault { .. }
            | Self::VcpuFailure { .. }
            | Self::GuestPanic
            | Self::VmmError(_) => 1,
        }
    }

    /// The cause in one machine-readable word (`--results`' `exit.cause`):
    /// a guest that exits with 124 or 143 itself still says `guest-exit`,
    /// never `timeout` or `signal`.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::GuestExit(_) => "guest-exit",
            Self::Reset(_) => "reset",
            Self::PowerOff(_) => "power-off",
            Self::Stopped(_) => "stopped",
            Self::Signal(_) => "signal",
            Self::Timeout(_) => "timeout",
            Self::Halted { .. } => "halted",
            Self::TripleFault { .. } => "triple-fault",
            Self::VcpuFailure { .. } => "vcpu-failure",
            Self::GuestPanic => "guest-panic",
            Self::VmmError(_) => "vmm-error",
        }
    }

    /// Whether this ending is a failure worth a line on stderr.
    pub fn is_failure(&self) -> bool {
        !matches!(
            self,
            Self::GuestExit(0) | Self::Reset(_) | Self::PowerOff(_) | Self::Stopped(_)
        )
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::GuestExit(s @ 124) => {
                write!(f, "guest exited with status {s} (its own status, not a kvmkit timeout)")
            }
            Self::GuestExit(s @ 129..=192) => write!(
                f,
                "guest exited with status {s} (its own status, not a signal to kvmkit)"
            ),
            Self::GuestExit(s) => write!(f, "guest exited with status {s}"),
            Self::Reset(how) => write!(f, "guest reset ({how}); the VM ends on reset"),
            Self::PowerOff(how) => write!(f, "guest powered off ({how})"),
            Self::Halted { cpu, rip } => write!(f, "vCPU {cpu} halted with interrupts off at RIP {rip:#x}"),
            Self::TripleFault { cpu, rip } => write!(f, "guest triple fault on vCPU {cpu} at RIP {rip:#x}"),
            Self::VcpuFailure { cpu, rip, what } => write!(f, "vCPU {cpu} failed at RIP {rip:#x}: {what}"),
            Self::GuestPanic => write!(f, "guest kernel panic (the VM ended at the panic's reboot)"),
            Self::Signal(sig) => write!(f, "stopped by signal {sig}"),
            Self::Stopped(by) => write!(f, "stopped by {by}"),
            Self::Timeout(t) => write!(f, "guest still running after the {} s time limit", t.as_secs_f64()),
            Self::VmmError(e) => write!(f, "kvmkit error: {e}"),
        }
    }
}

/// Boot milestones, as the guest reports them on the debug port.
#[derive(Debug)]
pub struct BootTimeline {
    /// When the kvmkit process started its work (the reference point).
    pub start: Instant,
    /// First instruction of the guest.
    pub entry: OnceLock<Instant>,
    /// Guest ready for work (userspace).
    pub ready: OnceLock<Instant>,
    /// First byte on the serial console.
    pub first_output: OnceLock<Instant>,
    /// The VM ended.
    pub end: OnceLock<Instant>,
}

impl BootTimeline {
    /// A timeline starting at `start`.
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            entry: OnceLock::new(),
            ready: OnceLock::new(),
            first_output: OnceLock::new(),
            end: OnceLock::new(),
        }
    }

    /// Microseconds from start to `t`, if `t` happened.
    pub fn micros(&self, t: &OnceLock<Instant>) -> Option<u64> {
        t.get().map(|t| t.duration_since(self.start).as_micros() as u64)
    }
}

/// Most guest reports kept; later ones are counted in
/// [`VmControl::reports_dropped`] (a guest writing reports in a loop must not
/// grow the VMM).
pub const MAX_REPORTS: usize = 4096;

/// State shared by the vCPU threads, the devices and the VMM thread.
#[derive(Debug)]
pub struct VmControl {
    stop: AtomicBool,
    reason: Mutex<Option<ExitReason>>,
    wake: EventFd,
    reports: Mutex<Vec<Report>>,
    reports_dropped: AtomicU64,
    guest_panicked: AtomicBool,
    /// Boot milestones.
    pub timeline: BootTimeline,
}

impl VmControl {
    /// New control state; `start` is the reference time for the timeline.
    pub fn new(start: Instant) -> std::io::Result<Self> {
        Ok(Self {
            stop: AtomicBool::new(false),
            reason: Mutex::new(None),
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
            reports: Mutex::new(Vec::new()),
            reports_dropped: AtomicU64::new(0),
            guest_panicked: AtomicBool::new(false),
            timeline: BootTimeline::new(start),
        })
    }

    /// Records that the guest kernel announced a panic; a reset or power-off
    /// that follows ends the VM as [`ExitReason::GuestPanic`].
    pub fn note_guest_panic(&self) {
        self.guest_panicked.store(true, Ordering::SeqCst);
    }

    /// Asks the VM to end. The first reason given wins.
    pub fn request_exit(&self, reason: ExitReason) {
        let reason = match reason {
            ExitReason::Reset(_) | ExitReason::PowerOff(_) if self.guest_panicked.load(Ordering::SeqCst) => {
                ExitReason::GuestPanic
            }
            r => r,
        };
        {
            let mut r = lock(&self.reason);
            if r.is_none() {
                tracing::debug!("VM exit requested: {reason}");
                *r = Some(reason);
                let _ = self.timeline.end.set(Instant::now());
            }
        }
        self.stop.store(true, Ordering::SeqCst);
        // An eventfd write only fails when the counter would overflow, which
        // means a wake-up is pending anyway.
        let _ = self.wake.write(1);
    }

    /// Whether the VM is ending (checked by vCPUs between exits).
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// The reason the VM ended, once it has.
    pub fn reason(&self) -> Option<ExitReason> {
        lock(&self.reason).clone()
    }

    /// Event fd signalled when an exit is requested.
    pub fn wake_fd(&self) -> &EventFd {
        &self.wake
    }

    /// Records a report from the guest; past [`MAX_REPORTS`] it is only
    /// counted (and said once).
    pub fn add_report(&self, report: Report) {
        let mut reports = lock(&self.reports);
        if reports.len() < MAX_REPORTS {
            reports.push(report);
        } else if self.reports_dropped.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!("the guest sent more than {MAX_REPORTS} reports; later ones are counted, not kept");
        }
    }

    /// How many guest reports were dropped past [`MAX_REPORTS`].
    pub fn reports_dropped(&self) -> u64 {
        self.reports_dropped.load(Ordering::Relaxed)
    }

    /// All reports received so far.
    pub fn reports(&self) -> Vec<Report> {
        lock(&self.reports).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_exit_reason_wins() {
        let c = VmControl::new(Instant::now()).expect("control");
        assert!(!c.stopping());
        c.request_exit(ExitReason::GuestExit(3));
        c.request_exit(ExitReason::Signal(15));
        assert!(c.stopping());
        assert_eq!(c.reason(), Some(ExitReason::GuestExit(3)));
        assert_eq!(c.wake_fd().read().expect("wake"), 2);
    }

    #[test]
    fn a_reset_after_a_panic_is_a_panic() {
        let c = VmControl::new(Instant::now()).expect("control");
        c.note_guest_panic();
        c.request_exit(ExitReason::Reset("i8042 reset"));
        assert_eq!(c.reason(), Some(ExitReason::GuestPanic));
        assert_eq!(ExitReason::GuestPanic.exit_code(), 1);
    }

    #[test]
    fn reports_are_capped_and_the_rest_counted() {
        let c = VmControl::new(Instant::now()).expect("control");
        let r = Report::new(kvmkit_guest_abi::ReportKind::Result, 0);
        for _ in 0..MAX_REPORTS + 10 {
            c.add_report(r);
        }
        assert_eq!(c.reports().len(), MAX_REPORTS);
        assert_eq!(c.reports_dropped(), 10);
    }

    #[test]
    fn exit_codes_follow_the_documented_mapping() {
        assert_eq!(ExitReason::GuestExit(0).exit_code(), 0);
        assert_eq!(ExitReason::GuestExit(42).exit_code(), 42);
        assert_eq!(ExitReason::GuestExit(1000).exit_code(), 1);
        assert_eq!(ExitReason::PowerOff("acpi").exit_code(), 0);
        assert_eq!(ExitReason::Signal(2).exit_code(), 130);
        assert_eq!(ExitReason::TripleFault { cpu: 0, rip: 0 }.exit_code(), 1);
        assert!(ExitReason::TripleFault { cpu: 0, rip: 0x1234 }
            .to_string()
            .contains("0x1234"));
        // A guest that exits with the statuses kvmkit uses for a timeout or
        // SIGTERM keeps its status but not the cause.
        assert_eq!(ExitReason::GuestExit(124).exit_code(), 124);
        assert_eq!(ExitReason::GuestExit(124).cause(), "guest-exit");
        assert_eq!(
            ExitReason::Timeout(std::time::Duration::from_secs(1)).cause(),
            "timeout"
        );
        assert_eq!(ExitReason::GuestExit(143).cause(), "guest-exit");
        assert_eq!(ExitReason::Signal(15).cause(), "signal");
        assert!(ExitReason::GuestExit(124).to_string().contains("not a kvmkit timeout"));
        assert!(ExitReason::GuestExit(143).to_string().contains("not a signal"));
        assert!(!ExitReason::GuestExit(0).is_failure());
        assert!(ExitReason::GuestExit(1).is_failure());
    }
}
