//! `kvmkit vm console NAME` and `vm logs NAME`: the VM's serial console.
//!
//! The VMM serves the console on the unix socket `console.sock` (`kvmkit run
//! --serial socket=PATH`): every client first gets the last 64 KiB of
//! output, then live output. One client writes: the one holding the flock on
//! `console.lock` (every kvmkit client takes it before connecting: `vm
//! console`, the web console). A client that does not get it shuts down its
//! writing side, which the socket server takes as "reader for good", and
//! says it is read-only. Ctrl-] detaches; the terminal's settings come back.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::process;
use super::store::VmDir;

/// Ctrl-]: detach.
const DETACH: u8 = 0x1d;

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

/// A connection to a VM's console socket.
pub struct Connection {
    /// The socket: the recent output, then live output (and input when writing).
    pub stream: UnixStream,
    /// Whether this client holds the console's input.
    pub writer: bool,
    /// The flock on `console.lock` while this client writes.
    _lock: Option<File>,
}

/// Connects to a running VM's console. With `want_input`, the client takes
/// the input when no other kvmkit client holds it; otherwise (or when another
/// does) it connects read-only.
pub fn connect(vm: &VmDir, want_input: bool) -> anyhow::Result<Connection> {
    let lock = if want_input {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(vm.file("console.lock"))
            .context("cannot open the console lock")?;
        // SAFETY: flock on an fd we own.
        (unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0).then_some(f)
    } else {
        None
    };
    let path = vm.file(process::CONSOLE_SOCK);
    let stream = UnixStream::connect(&path).with_context(|| {
        format!(
            "VM {}: cannot connect to its console {} (a VM started by an older kvmkit has none: restart it)",
            vm.name,
            path.display()
        )
    })?;
    let writer = lock.is_some();
    if !writer {
        // The socket server keeps a client that ended its input as a reader.
        stream.shutdown(std::net::Shutdown::Write)?;
    }
    Ok(Connection {
        stream,
        writer,
        _lock: lock,
    })
}

/// The console's recent output (the ring the VMM keeps), read read-only:
/// what arrives until the socket is quiet for a moment.
pub fn recent(vm: &VmDir) -> anyhow::Result<Vec<u8>> {
    let mut c = connect(vm, false)?;
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    c.stream.set_read_timeout(Some(Duration::from_millis(60)))?;
    // A guest that prints all the time never goes quiet: at most 64 KiB more or 1 s.
    while start.elapsed() < Duration::from_secs(1) && out.len() < (128 << 10) {
        match c.stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    Ok(out)
}

/// Attaches until Ctrl-], end of input, or the VM's end.
pub fn attach(vm: &VmDir) -> anyhow::Result<u8> {
    let Some(pid) = process::running(vm) else {
        anyhow::bail!("VM {} is not running", vm.name);
    };
    let mut c = connect(vm, true)?;
    eprintln!(
        "Connected to VM {} ({}); Ctrl-] detaches.\r",
        vm.name,
        if c.writer {
            "read-write"
        } else {
            "read-only: another client holds the console's input"
        }
    );
    let _raw = Raw::new(libc::STDIN_FILENO);
    let mut out = std::io::stdout();
    let mut buf = [0u8; 4096];
    let mut stdin_open = true;
    let sock = c.stream.as_raw_fd();
    loop {
        let mut fds = [
            libc::pollfd {
                fd: sock,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: libc::STDIN_FILENO,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let nfds = 1 + u64::from(stdin_open);
        // SAFETY: a valid array of pollfd of at least `nfds` entries.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), nfds as libc::nfds_t, 500) };
        if r < 0 {
            continue; // EINTR
        }
        if fds[0].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            let n = c.stream.read(&mut buf).unwrap_or(0);
            if n == 0 {
                eprintln!("\r\nVM {} ended.\r", vm.name);
                return Ok(0);
            }
            out.write_all(&buf[..n])?;
            out.flush()?;
        }
        if r == 0 && !pid.alive() {
            eprintln!("\r\nVM {} ended.\r", vm.name);
            return Ok(0);
        }
        if stdin_open && fds[1].revents & (libc::POLLIN | libc::POLLHUP) != 0 {
            // SAFETY: reading into a local buffer of its size.
            let k = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
            if k <= 0 {
                stdin_open = false;
                if !c.writer {
                    continue; // a viewer: follow the output until the VM ends
                }
                // Input ended (a script's pipe): keep showing output a moment, then leave.
                c.stream.set_read_timeout(Some(Duration::from_millis(100)))?;
                let until = Instant::now() + Duration::from_millis(300);
                while Instant::now() < until {
                    match c.stream.read(&mut buf) {
                        Ok(n) if n > 0 => out.write_all(&buf[..n])?,
                        _ => break,
                    }
                }
                out.flush()?;
                return Ok(0);
            }
            let data = &buf[..k as usize];
            let (data, detach) = match data.iter().position(|&b| b == DETACH) {
                Some(i) => (&data[..i], true),
                None => (data, false),
            };
            if c.writer {
                c.stream.write_all(data)?;
            }
            if detach {
                eprintln!("\r\nDetached from VM {}.\r", vm.name);
                return Ok(0);
            }
        }
    }
}
