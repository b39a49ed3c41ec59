//! The host side of the serial console: terminal mode, input, and the
//! signals (SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1) that stop a VM.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};

/// Puts a terminal in raw-ish mode (no echo, no line editing; Ctrl-C still
/// raises SIGINT so it stops the VM) and restores it when dropped. `Ctrl-\`
/// and `Ctrl-Z` are keys for the guest (its shell's SIGQUIT and job control),
/// not signals for kvmkit, which would otherwise quit or stop with the
/// terminal left raw.
pub struct TerminalGuard {
    fd: RawFd,
    saved: libc::termios,
}

impl TerminalGuard {
    /// Switches `fd` to raw-ish mode when it is a terminal; `None` otherwise.
    pub fn new(fd: RawFd) -> Option<Self> {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(fd) } != 1 {
            return None;
        }
        // SAFETY: termios is plain data; tcgetattr fills it or fails.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `saved` is a valid termios to write into.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        raw.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ECHONL | libc::IEXTEN);
        raw.c_iflag &= !(libc::IXON | libc::ICRNL);
        raw.c_cc[libc::VMIN] = 1;
        raw.c_cc[libc::VTIME] = 0;
        raw.c_cc[libc::VQUIT] = 0; // _POSIX_VDISABLE
        raw.c_cc[libc::VSUSP] = 0;
        // SAFETY: `raw` is a valid termios derived from the current one.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(Self { fd, saved })
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `new` on the same descriptor.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

static SIGNAL_FD: AtomicI32 = AtomicI32::new(-1);
static LAST_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_exit_signal(sig: libc::c_int) {
    LAST_SIGNAL.store(sig, Ordering::SeqCst);
    let fd = SIGNAL_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; `one` outlives the call.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// The signals that end a VM like SIGTERM (their default action would kill
/// kvmkit with the terminal left raw).
pub const EXIT_SIGNALS: [libc::c_int; 5] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1];

/// Routes the [`EXIT_SIGNALS`] to `fd` (an eventfd the VMM thread polls).
pub fn install_exit_signal_handlers(fd: RawFd) -> std::io::Result<()> {
    SIGNAL_FD.store(fd, Ordering::SeqCst);
    for sig in EXIT_SIGNALS {
        // SAFETY: a zeroed sigaction with a handler and empty mask is valid.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_exit_signal as *const () as usize;
        action.sa_flags = libc::SA_RESTART;
        // SAFETY: `action` is fully initialised; the handler is async-signal-safe.
        if unsafe { libc::sigaction(sig, &action, std::ptr::null_mut()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The last exit signal received, if any.
pub fn last_exit_signal() -> Option<i32> {
    match LAST_SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn termios(fd: RawFd) -> libc::termios {
        // SAFETY: termios is plain data; tcgetattr fills it.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `t` is a valid termios to write into.
        assert_eq!(unsafe { libc::tcgetattr(fd, &mut t) }, 0);
        t
    }

    #[test]
    fn the_raw_console_passes_ctrl_backslash_and_ctrl_z_to_the_guest_and_is_restored() {
        let (mut master, mut slave) = (0, 0);
        // SAFETY: openpty fills both descriptors; the other arguments may be null.
        let r = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(r, 0, "openpty");
        let before = termios(slave);
        let guard = TerminalGuard::new(slave).expect("a terminal");
        let raw = termios(slave);
        assert_eq!(raw.c_lflag & (libc::ECHO | libc::ICANON), 0);
        assert_ne!(raw.c_lflag & libc::ISIG, 0, "Ctrl-C still stops the VM");
        assert_eq!((raw.c_cc[libc::VQUIT], raw.c_cc[libc::VSUSP]), (0, 0));
        drop(guard);
        let after = termios(slave);
        assert_eq!(after.c_lflag, before.c_lflag);
        assert_eq!(after.c_cc, before.c_cc);
        // SAFETY: closing the descriptors openpty gave us.
        unsafe {
            libc::close(master);
            libc::close(slave);
        }
    }

    #[test]
    fn every_terminating_signal_is_routed_to_the_exit_fd() {
        let efd = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        install_exit_signal_handlers(std::os::fd::AsRawFd::as_raw_fd(&efd)).expect("handlers");
        for sig in EXIT_SIGNALS {
            // SAFETY: raise(3) delivers to this thread; the handler only writes the eventfd.
            assert_eq!(unsafe { libc::raise(sig) }, 0);
            assert_eq!(efd.read().expect("signalled"), 1, "signal {sig}");
            assert_eq!(last_exit_signal(), Some(sig));
        }
        assert!(EXIT_SIGNALS.contains(&libc::SIGUSR1));
        SIGNAL_FD.store(-1, Ordering::SeqCst);
    }
}
