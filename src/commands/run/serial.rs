//! `kvmkit run --serial tty|pty|socket=PATH|file=PATH|off`: where the guest's
//! serial console (COM1) goes.
//!
//! - `tty` (default): this terminal (stdin forwarded unless `--no-stdin`).
//! - `pty`: a new pseudo-terminal; its path is printed on stderr, and any
//!   terminal program (`screen /dev/pts/N`) attaches and detaches at will.
//! - `socket=PATH`: a unix socket; every client first gets the last
//!   [`RING_BYTES`] of output (a late attach sees what it missed), then live
//!   output. Several clients read; the first to connect also writes (its
//!   bytes go to the guest), later ones are read-only until it leaves. A
//!   client that shuts down its writing side (`shutdown(SHUT_WR)`) stays a
//!   reader and never takes the input (a viewer: `kvmkit vm console` when
//!   another client holds the input, the web console's read-only tabs). A
//!   client that does not keep up loses bytes, never the VM's time.
//! - `file=PATH`: output appended to PATH; no input.
//! - `off`: output discarded; no input.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};

use crate::cli::SerialSpec;

/// Output kept for clients that attach late (`socket=`).
pub const RING_BYTES: usize = 64 << 10;
/// Most clients attached at once (`socket=`); more are refused.
pub const MAX_CLIENTS: usize = 16;

/// What the VMM gets for its console, and what is undone at the end.
pub struct Serial {
    /// The console output sink (`None`: stdout, the `tty` default).
    pub output: Option<Box<dyn Write + Send>>,
    /// Where console input comes from instead of stdin (`None`: stdin or nothing).
    pub input: Option<OwnedFd>,
    /// Whether stdin may be forwarded (only for `tty`).
    pub stdin: bool,
    /// Removes the socket file when dropped (`socket=`).
    _socket: Option<SocketFile>,
    /// The pty's slave side, held open so the master never sees a hang-up
    /// while no terminal program is attached (`pty`).
    _slave: Option<File>,
}

impl Serial {
    /// Sets up `spec`; fails with one line before anything is started.
    pub fn setup(spec: &SerialSpec) -> anyhow::Result<Self> {
        let mut s = Serial {
            output: None,
            input: None,
            stdin: false,
            _socket: None,
            _slave: None,
        };
        match spec {
            SerialSpec::Tty => s.stdin = true,
            SerialSpec::Off => s.output = Some(Box::new(std::io::sink())),
            SerialSpec::File(p) => {
                if p.is_dir() {
                    bail!("--serial file={}: is a directory; give a file path", p.display());
                }
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("--serial file={}: cannot open it for writing", p.display()))?;
                s.output = Some(Box::new(f));
            }
            SerialSpec::Pty => {
                let (master, slave, name) = open_pty().context("--serial pty: cannot make a pseudo-terminal")?;
                crate::logging::errln!("kvmkit: serial console on {name} (attach with: screen {name})");
                let out = master.try_clone().context("--serial pty: dup")?;
                s.output = Some(Box::new(out));
                s.input = Some(OwnedFd::from(master));
                s._slave = Some(slave);
            }
            SerialSpec::Socket(p) => {
                let (server, input) = SocketServer::bind(p)?;
                s.output = Some(Box::new(server.writer()));
                s.input = Some(input);
                s._socket = Some(SocketFile(p.clone()));
            }
        }
        Ok(s)
    }
}

/// Opens a pseudo-terminal in raw mode: (master, slave, slave's path).
fn open_pty() -> std::io::Result<(File, File, String)> {
    let err = std::io::Error::last_os_error;
    // SAFETY: posix_openpt returns a new descriptor or -1.
    let master = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if master < 0 {
        return Err(err());
    }
    // SAFETY: `master` is a descriptor we own from here on.
    let master = unsafe { File::from_raw_fd(master) };
    let fd = master.as_raw_fd();
    // SAFETY: grantpt/unlockpt on a pty master we own.
    if unsafe { libc::grantpt(fd) } != 0 || unsafe { libc::unlockpt(fd) } != 0 {
        return Err(err());
    }
    let mut buf = [0u8; 128];
    // SAFETY: ptsname_r writes at most buf.len() bytes, NUL included.
    if unsafe { libc::ptsname_r(fd, buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return Err(err());
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).into_owned();
    let slave = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags_noctty()
        .open(&name)?;
    raw_mode(slave.as_raw_fd())?;
    Ok((master, slave, name))
}

/// `O_NOCTTY` for [`OpenOptions`] (kvmkit must not acquire a controlling terminal).
trait NoCtty {
    fn custom_flags_noctty(&mut self) -> &mut Self;
}

impl NoCtty for OpenOptions {
    fn custom_flags_noctty(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
    }
}

/// Puts a terminal in raw mode: bytes pass both ways unchanged (no echo, no
/// line editing, no `\n` -> `\r\n`); the guest's console driver does that.
fn raw_mode(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: termios is plain data; tcgetattr fills it or fails.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `t` is a valid termios for this descriptor.
    if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: cfmakeraw only edits the struct.
    unsafe { libc::cfmakeraw(&mut t) };
    // SAFETY: `t` is a valid termios derived from the current one.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Removes the `socket=` file at the end (only if it is still a socket).
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        if std::fs::symlink_metadata(&self.0).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// One attached `socket=` client.
struct Client {
    stream: UnixStream,
    /// Its bytes go to the guest.
    writer: bool,
    /// It shut down its writing side: a reader for good.
    reader_only: bool,
    /// It has gone; the accept thread (the only one that closes streams) removes it.
    gone: bool,
}

/// The clients of a `socket=` console and the recent output.
#[derive(Default)]
struct Clients {
    ring: VecDeque<u8>,
    streams: Vec<Client>,
    /// Bytes a slow client could not take (dropped for it alone).
    dropped: u64,
}

impl Clients {
    /// Sends `bytes` to every client without blocking; a client whose socket
    /// is full loses them, one that has gone is marked.
    fn broadcast(&mut self, bytes: &[u8]) {
        for c in self.streams.iter_mut().filter(|c| !c.gone) {
            match send_some(&mut c.stream, bytes) {
                Ok(n) => self.dropped += (bytes.len() - n) as u64,
                Err(_) => c.gone = true,
            }
        }
    }

    /// Removes the clients that have gone; the first left that may write
    /// becomes the writer if there is none.
    fn prune(&mut self) {
        self.streams.retain(|c| !c.gone);
        if !self.streams.iter().any(|c| c.writer) {
            if let Some(first) = self.streams.iter_mut().find(|c| !c.reader_only) {
                first.writer = true;
            }
        }
    }

    fn writer_fd(&self) -> Option<RawFd> {
        self.streams.iter().find(|c| c.writer).map(|c| c.stream.as_raw_fd())
    }

    fn mark_gone(&mut self, fd: RawFd) {
        for c in self.streams.iter_mut().filter(|c| c.stream.as_raw_fd() == fd) {
            c.gone = true;
        }
    }

    /// The writer shut down its writing side: it stays as a reader, the
    /// input goes to the next client that may write.
    fn demote(&mut self, fd: RawFd) {
        for c in self.streams.iter_mut().filter(|c| c.stream.as_raw_fd() == fd) {
            c.writer = false;
            c.reader_only = true;
        }
    }

    /// The readers' descriptors (watched for hang-ups only).
    fn reader_fds(&self) -> Vec<RawFd> {
        self.streams
            .iter()
            .filter(|c| !c.writer && !c.gone)
            .map(|c| c.stream.as_raw_fd())
            .collect()
    }
}

/// Writes what fits now; `Err` when the peer has gone.
fn send_some(s: &mut UnixStream, bytes: &[u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < bytes.len() {
        match s.write(&bytes[done..]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// The `socket=` server: a thread accepts clients and forwards the
/// writer's bytes into a pipe the VMM reads as console input.
struct SocketServer {
    clients: Arc<Mutex<Clients>>,
}

impl SocketServer {
    /// Binds `path` and starts the accept thread; returns the server and the
    /// console-input end of the pipe.
    fn bind(path: &Path) -> anyhow::Result<(Self, OwnedFd)> {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                // A stale socket from an earlier run: in use only if something answers.
                if UnixStream::connect(path).is_ok() {
                    bail!(
                        "--serial socket={}: another process is listening there; pick another path",
                        path.display()
                    );
                }
                std::fs::remove_file(path)
                    .with_context(|| format!("--serial socket={}: cannot remove the stale socket", path.display()))?;
            }
            Ok(_) => bail!(
                "--serial socket={}: exists and is not a socket; give a new path",
                path.display()
            ),
            Err(_) => {}
        }
        let listener =
            UnixListener::bind(path).with_context(|| format!("--serial socket={}: cannot bind", path.display()))?;
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two descriptors or fails.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            bail!("--serial socket: pipe: {}", std::io::Error::last_os_error());
        }
        // SAFETY: both descriptors are new and ours.
        let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        let clients = Arc::new(Mutex::new(Clients::default()));
        let c = clients.clone();
        std::thread::Builder::new()
            .name("serial-socket".into())
            .spawn(move || {
                kvmkit_vmm::seccomp::apply_or_exit(kvmkit_vmm::seccomp::Role::Console);
                serve(&listener, &c, write_end);
            })
            .context("--serial socket: cannot start its thread")?;
        Ok((Self { clients }, read_end))
    }

    /// The console output sink feeding the ring and the clients.
    fn writer(&self) -> SocketWriter {
        SocketWriter {
            clients: self.clients.clone(),
        }
    }
}

/// Console output for a `socket=` console.
struct SocketWriter {
    clients: Arc<Mutex<Clients>>,
}

impl Write for SocketWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut c = kvmkit_vmm::bus::lock(&self.clients);
        let keep = &buf[buf.len().saturating_sub(RING_BYTES)..];
        let over = (c.ring.len() + keep.len()).saturating_sub(RING_BYTES);
        c.ring.drain(..over);
        c.ring.extend(keep);
        c.broadcast(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Accepts clients (each first gets the ring) and copies the writer's
/// input into `input` (the pipe the VMM reads); runs until the process ends.
fn serve(listener: &UnixListener, clients: &Mutex<Clients>, mut input: File) {
    let mut buf = [0u8; 4096];
    loop {
        let (writer_fd, readers) = {
            let mut c = kvmkit_vmm::bus::lock(clients);
            c.prune();
            (c.writer_fd(), c.reader_fds())
        };
        let mut fds = vec![libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(fd) = writer_fd {
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // Readers are watched for their hang-up only (a quiet guest would
        // otherwise never notice they left, and they would fill the slots).
        fds.extend(readers.iter().map(|&fd| libc::pollfd {
            fd,
            events: 0,
            revents: 0,
        }));
        // SAFETY: `fds` is a valid array of pollfd of the given length.
        if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1000) } <= 0 {
            continue;
        }
        let first_reader = 1 + usize::from(writer_fd.is_some());
        for p in fds.iter().skip(first_reader) {
            if p.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                kvmkit_vmm::bus::lock(clients).mark_gone(p.fd);
            }
        }
        if fds[0].revents & libc::POLLIN != 0 {
            // SAFETY: accept4 on our listener; the new descriptor is ours.
            let fd = unsafe {
                libc::accept4(
                    listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                )
            };
            if fd >= 0 {
                // SAFETY: `fd` was just returned by accept4.
                let mut stream = unsafe { UnixStream::from_raw_fd(fd) };
                let mut c = kvmkit_vmm::bus::lock(clients);
                if c.streams.len() >= MAX_CLIENTS {
                    let _ = send_some(&mut stream, b"kvmkit: too many console clients\r\n");
                } else {
                    let (a, b) = c.ring.as_slices();
                    let _ = send_some(&mut stream, a).and_then(|_| send_some(&mut stream, b));
                    let writer = c.writer_fd().is_none();
                    c.streams.push(Client {
                        stream,
                        writer,
                        reader_only: false,
                        gone: false,
                    });
                }
            }
        }
        if let (Some(fd), Some(p)) = (writer_fd, fds.get(1)) {
            if p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                // SAFETY: reading into a local buffer from a descriptor the client list owns.
                let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                if n > 0 {
                    // The pipe is non-blocking: input the guest has not taken
                    // yet beyond the pipe's 64 KiB is dropped, not waited for.
                    let _ = input.write(&buf[..n as usize]);
                } else if n == 0 && p.revents & (libc::POLLHUP | libc::POLLERR) == 0 {
                    // End of its input only: it shut down its writing side and
                    // stays a reader; the next client that may write takes over.
                    kvmkit_vmm::bus::lock(clients).demote(fd);
                } else if n == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock {
                    // The writer left: the next client (if any) takes over.
                    kvmkit_vmm::bus::lock(clients).mark_gone(fd);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::time::Duration;

    #[test]
    fn specs_parse_and_bad_ones_say_what_to_give() {
        assert_eq!("tty".parse(), Ok(SerialSpec::Tty));
        assert_eq!("pty".parse(), Ok(SerialSpec::Pty));
        assert_eq!("off".parse(), Ok(SerialSpec::Off));
        assert_eq!("socket=/tmp/s".parse(), Ok(SerialSpec::Socket("/tmp/s".into())));
        assert_eq!("file=log".parse(), Ok(SerialSpec::File("log".into())));
        for bad in ["", "tty=1", "socket=", "file=", "serial", "pipe=/x"] {
            let e = bad.parse::<SerialSpec>().expect_err(bad);
            assert!(e.contains("give tty, pty") || e.contains("needs a path"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_late_socket_client_sees_recent_output_and_the_first_one_writes() {
        let dir = std::env::temp_dir().join(format!("kvmkit-serial-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("console.sock");
        let serial = Serial::setup(&SerialSpec::Socket(path.clone())).expect("setup");
        let mut out = serial.output.expect("output");
        let input = File::from(serial.input.expect("input"));
        out.write_all(b"early line\n").expect("write");
        let mut first = UnixStream::connect(&path).expect("connect");
        first.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut got = [0u8; 11];
        first.read_exact(&mut got).expect("ring");
        assert_eq!(&got, b"early line\n");
        let mut second = UnixStream::connect(&path).expect("connect");
        second.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        second.read_exact(&mut got).expect("ring");
        assert_eq!(&got, b"early line\n");
        // Only the first client's bytes reach the guest's input.
        second.write_all(b"nope").expect("write");
        first.write_all(b"ls\n").expect("write");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut seen = Vec::new();
        while seen.len() < 3 && std::time::Instant::now() < deadline {
            let mut b = [0u8; 16];
            match (&input).read(&mut b) {
                Ok(n) => seen.extend_from_slice(&b[..n]),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        assert_eq!(seen, b"ls\n");
        // Live output reaches both.
        out.write_all(b"live").expect("write");
        let mut live = [0u8; 4];
        first.read_exact(&mut live).expect("live");
        second.read_exact(&mut live).expect("live");
        assert_eq!(&live, b"live");
        drop(serial._socket);
        assert!(!path.exists(), "the socket file is removed at the end");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Reads what reaches the guest's input within a few seconds, until `want` bytes.
    fn input_bytes(input: &File, want: usize) -> Vec<u8> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut seen = Vec::new();
        while seen.len() < want && std::time::Instant::now() < deadline {
            let mut b = [0u8; 16];
            match (&*input).read(&mut b) {
                Ok(n) => seen.extend_from_slice(&b[..n]),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        seen
    }

    #[test]
    fn a_client_that_shuts_its_writing_side_stays_a_reader_and_hands_on_the_input() {
        let dir = std::env::temp_dir().join(format!("kvmkit-serial-ro-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("console.sock");
        let serial = Serial::setup(&SerialSpec::Socket(path.clone())).expect("setup");
        let mut out = serial.output.expect("output");
        let input = File::from(serial.input.expect("input"));
        // A viewer connects first and declares itself read-only.
        let mut viewer = UnixStream::connect(&path).expect("connect");
        viewer.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        viewer.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut typist = UnixStream::connect(&path).expect("connect");
        typist.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        typist.write_all(b"hi\n").expect("write");
        assert_eq!(input_bytes(&input, 3), b"hi\n", "the input went to the second client");
        // The viewer still gets live output.
        out.write_all(b"live").expect("write");
        let mut live = [0u8; 4];
        viewer.read_exact(&mut live).expect("viewer");
        typist.read_exact(&mut live).expect("typist");
        // Clients that leave while the guest is quiet free their slots.
        for _ in 0..(MAX_CLIENTS * 2) {
            let c = UnixStream::connect(&path).expect("connect");
            c.shutdown(std::net::Shutdown::Write).expect("shutdown");
            drop(c);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut c = UnixStream::connect(&path).expect("connect");
            // No output meanwhile: only hang-up detection can free the slots.
            c.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
            let mut got = Vec::new();
            let mut b = [0u8; 256];
            while let Ok(n) = c.read(&mut b) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&b[..n]);
            }
            if !String::from_utf8_lossy(&got).contains("too many") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "slots were not freed");
            std::thread::sleep(Duration::from_millis(100));
        }
        drop(serial._socket);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_path_that_is_not_a_socket_is_refused_and_left_alone() {
        let path = std::env::temp_dir().join(format!("kvmkit-serial-file-{}", std::process::id()));
        std::fs::write(&path, b"keep").expect("write");
        let e = Serial::setup(&SerialSpec::Socket(path.clone())).err().expect("refused");
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert_eq!(std::fs::read(&path).expect("read"), b"keep");
        let _ = std::fs::remove_file(path);
    }
}
