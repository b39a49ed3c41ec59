//! `kvmkit vm console NAME`: the VM's serial console in this terminal.
//!
//! Output: the VM's `console.log` (its serial output), from the last 4 KiB
//! on, followed as it grows — any number of readers. Input: keystrokes go
//! to the FIFO `console.in`, the VMM's stdin, which it forwards to the
//! guest's serial port — one writer at a time (flock on `console.lock`);
//! a second client attaches read-only and says so. Ctrl-] detaches.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::time::Duration;

use anyhow::Context;

use super::process;
use super::store::VmDir;

/// Ctrl-]: detach.
const DETACH: u8 = 0x1d;
/// How much of the past output an attach shows.
const BACKLOG: u64 = 4096;

/// The terminal in raw mode until dropped.
struct Raw {
    fd: i32,
    saved: libc::termios,
}

impl Raw {
    fn new(fd: i32) -> Option<Self> {
        // SAFETY: isatty/tcgetattr/tcsetattr on a valid fd with a local termios.
        unsafe {
            if libc::isatty(fd) != 1 {
                return None;
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut t) != 0 {
                return None;
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            t.c_oflag |= libc::OPOST | libc::ONLCR;
            libc::tcsetattr(fd, libc::TCSANOW, &t);
            Some(Self { fd, saved })
        }
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        // SAFETY: restoring the saved settings of the same fd.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// Attaches until Ctrl-], end of input, or the VM's end.
pub fn attach(vm: &VmDir) -> anyhow::Result<u8> {
    let Some(pid) = process::running(vm) else {
        anyhow::bail!("VM {} is not running", vm.name);
    };
    let mut log = File::open(process::log_path(vm)).context("cannot open the console log")?;
    let len = log.metadata()?.len();
    log.seek(SeekFrom::Start(len.saturating_sub(BACKLOG)))?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(vm.file("console.lock"))?;
    // SAFETY: flock on an fd we own.
    let writer = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    let mut input = if writer {
        Some(
            OpenOptions::new()
                .write(true)
                .open(vm.file("console.in"))
                .context("cannot open the console input")?,
        )
    } else {
        None
    };
    eprintln!(
        "Connected to VM {} ({}); Ctrl-] detaches.\r",
        vm.name,
        if writer {
            "read-write"
        } else {
            "read-only: another client holds the console's input"
        }
    );
    let _raw = Raw::new(libc::STDIN_FILENO);
    let mut out = std::io::stdout();
    let mut buf = [0u8; 4096];
    let mut stdin_open = true;
    loop {
        let n = log.read(&mut buf)?;
        if n > 0 {
            out.write_all(&buf[..n])?;
            out.flush()?;
            continue;
        }
        if !pid.alive() {
            eprintln!("\r\nVM {} ended.\r", vm.name);
            return Ok(0);
        }
        let mut pfd = libc::pollfd {
            fd: libc::STDIN_FILENO,
            events: libc::POLLIN,
            revents: 0,
        };
        let nfds = u64::from(stdin_open);
        // SAFETY: one valid pollfd (or none).
        let r = unsafe { libc::poll(&mut pfd, nfds as libc::nfds_t, 50) };
        if r > 0 && pfd.revents & (libc::POLLIN | libc::POLLHUP) != 0 {
            // SAFETY: reading into a local buffer of its size.
            let k = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
            if k <= 0 {
                stdin_open = false;
                if !writer {
                    continue; // a viewer: follow the output until the VM ends
                }
                // Input ended (a script's pipe): keep showing output a moment, then leave.
                std::thread::sleep(Duration::from_millis(300));
                let mut rest = Vec::new();
                log.read_to_end(&mut rest)?;
                out.write_all(&rest)?;
                return Ok(0);
            }
            let data = &buf[..k as usize];
            let (data, detach) = match data.iter().position(|&b| b == DETACH) {
                Some(i) => (&data[..i], true),
                None => (data, false),
            };
            if let Some(w) = &mut input {
                w.write_all(data)?;
            }
            if detach {
                eprintln!("\r\nDetached from VM {}.\r", vm.name);
                return Ok(0);
            }
        }
    }
}
