//! The host side's unix sockets, with the few raw calls the device worker
//! makes under its seccomp filter (non-blocking `accept4`, `socket` +
//! `connect` for AF_UNIX, `recvfrom`, `sendto` with MSG_NOSIGNAL,
//! `shutdown`): std's versions would also call `ioctl(FIONBIO)`.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// A connected, non-blocking unix stream socket.
#[derive(Debug)]
pub struct Stream(OwnedFd);

fn sockaddr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a unix socket path must be 1-107 bytes without NUL",
        ));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

impl Stream {
    /// Connects to the listener at `path` without blocking (a full backlog
    /// is an error, as is nobody listening).
    pub fn connect(path: &Path) -> io::Result<Self> {
        let (addr, len) = sockaddr(path)?;
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor we own.
        let s = Stream(unsafe { OwnedFd::from_raw_fd(fd) });
        // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
        let r = unsafe { libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(s)
    }

    /// Reads what is there (`Ok(0)` at end of file, WouldBlock when nothing).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: writes at most `buf.len()` bytes into `buf`.
            let n = unsafe {
                libc::recv(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Shuts the write side (the peer reads end of file).
    pub fn shutdown_write(&self) {
        // SAFETY: plain shutdown(2) on a descriptor we own.
        unsafe { libc::shutdown(self.0.as_raw_fd(), libc::SHUT_WR) };
    }
}

impl io::Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: reads at most `buf.len()` bytes from `buf`.
        let n = unsafe {
            libc::send(
                self.0.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// The device's listening socket at `uds_path`; the socket file is removed
/// when it is dropped (the VM's end).
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
    path: PathBuf,
}

impl Listener {
    /// Binds and listens at `path` (non-blocking). A path that exists and
    /// is not a socket is refused; a socket someone still listens on is
    /// refused; a stale socket (nobody listening: a VM that was killed) is
    /// replaced.
    pub fn bind(path: &Path) -> Result<Self, String> {
        sockaddr(path).map_err(|e| format!("{}: {e}", path.display()))?;
        match std::fs::symlink_metadata(path) {
            Ok(m) if !m.file_type().is_socket() => {
                return Err(format!("{} exists and is not a unix socket", path.display()));
            }
            Ok(_) => {
                if UnixStream::connect(path).is_ok() {
                    return Err(format!("{} is in use: something listens on it", path.display()));
                }
                std::fs::remove_file(path)
                    .map_err(|e| format!("cannot remove stale socket {}: {e}", path.display()))?;
            }
            Err(_) => {}
        }
        let l = UnixListener::bind(path).map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
        l.set_nonblocking(true)
            .map_err(|e| format!("{}: non-blocking: {e}", path.display()))?;
        Ok(Self {
            fd: l.into(),
            path: path.to_owned(),
        })
    }

    /// Accepts one pending connection, non-blocking (`Ok(None)` when none waits).
    pub fn accept(&self) -> io::Result<Option<Stream>> {
        loop {
            // SAFETY: accept4 without an address buffer; the result is checked.
            let fd = unsafe {
                libc::accept4(
                    self.fd.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd >= 0 {
                // SAFETY: `fd` is a new descriptor we own.
                return Ok(Some(Stream(unsafe { OwnedFd::from_raw_fd(fd) })));
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock => return Ok(None),
                // The client gave up before we accepted it.
                _ if e.raw_os_error() == Some(libc::ECONNABORTED) => {}
                _ => return Err(e),
            }
        }
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `<uds_path>_<port>`: where a guest connection to host port `port` goes.
pub fn port_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut s = OsString::from(uds_path.as_os_str());
    s.push(format!("_{port}"));
    PathBuf::from(s)
}
