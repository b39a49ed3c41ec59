//! The kernel events `kvmkit serve` keeps its view of the VMs current with:
//! inotify on the state directory and each VM's folder (a definition, pid
//! file or state written, a folder made or removed) and a pidfd per VM
//! process (readable once the process has ended, whoever killed it). Both
//! are queues the kernel fills as things happen: reading them before an
//! answer makes the answer as current as the kernel is, without reading a
//! file that did not change or asking a VMM anything.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// What happened to a watched path, as inotify reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The watch it came from ([`Inotify::watch`]'s answer).
    pub wd: i32,
    /// The name inside the watched folder ("" for the folder itself).
    pub name: String,
    /// `IN_*` bits.
    pub mask: u32,
}

/// An inotify instance, non-blocking.
pub struct Inotify(OwnedFd);

/// What a VM folder is watched for: a file written in place and closed, or
/// renamed in or out (every state file is written by rename), made or removed.
pub const FOLDER_MASK: u32 = libc::IN_CLOSE_WRITE
    | libc::IN_MOVED_TO
    | libc::IN_MOVED_FROM
    | libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_ONLYDIR;

impl Inotify {
    /// A new instance (close-on-exec, non-blocking).
    pub fn new() -> std::io::Result<Self> {
        // SAFETY: no pointers; the fd is owned from here on.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd nothing else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Watches `path` for `mask`; the watch descriptor identifies its changes.
    pub fn watch(&self, path: &Path, mask: u32) -> std::io::Result<i32> {
        let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        // SAFETY: a valid NUL-terminated path and our own inotify fd.
        let wd = unsafe { libc::inotify_add_watch(self.0.as_raw_fd(), c.as_ptr(), mask) };
        if wd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(wd)
    }

    /// Every change queued so far (none: an empty list; never blocks).
    pub fn drain(&self) -> Vec<Change> {
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            // SAFETY: reads into a buffer we own, at most its length.
            let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            let Ok(n) = usize::try_from(n) else {
                return out; // EAGAIN: the queue is empty
            };
            if n == 0 {
                return out;
            }
            parse_events(&buf[..n], &mut out);
        }
    }
}

/// Parses a buffer of `struct inotify_event` records (header, then a
/// NUL-padded name of `len` bytes); a record cut short ends the parse.
pub fn parse_events(mut buf: &[u8], out: &mut Vec<Change>) {
    const HEAD: usize = std::mem::size_of::<libc::inotify_event>();
    while buf.len() >= HEAD {
        let word = |at: usize| [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
        let wd = i32::from_ne_bytes(word(0));
        let mask = u32::from_ne_bytes(word(4));
        let len = u32::from_ne_bytes(word(12)) as usize;
        let Some(raw) = buf.get(HEAD..HEAD + len) else {
            return;
        };
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        out.push(Change {
            wd,
            name: String::from_utf8_lossy(&raw[..end]).into_owned(),
            mask,
        });
        buf = &buf[HEAD + len..];
    }
}

/// A pidfd: a handle on one process that cannot be confused with a later
/// process reusing its pid.
pub struct Pidfd(OwnedFd);

impl Pidfd {
    /// Opens a pidfd for `pid` (fails with ESRCH when no such process exists).
    pub fn open(pid: i32) -> std::io::Result<Self> {
        // SAFETY: pidfd_open takes a pid and flags, no pointers.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = RawFd::try_from(fd).map_err(|_| std::io::ErrorKind::InvalidData)?;
        // SAFETY: a fresh fd nothing else owns (pidfds are close-on-exec).
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// The wait status when the process was this process's child and has
    /// ended (it is reaped here); None otherwise (not a child, or running).
    pub fn reap(&self) -> Option<std::process::ExitStatus> {
        use std::os::unix::process::ExitStatusExt;
        // SAFETY: siginfo_t is plain data; zeroed is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid on our pidfd writes only into `info`.
        let r = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                self.0.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG,
            )
        };
        // SAFETY: si_pid and si_status are valid for a SIGCHLD siginfo; a
        // WNOHANG wait that found nothing leaves si_pid 0.
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if r != 0 || pid == 0 {
            return None;
        }
        // Back to a wait(2) status word: an exit code in bits 8-15, a signal in 0-6.
        let raw = match info.si_code {
            libc::CLD_EXITED => (status & 0xff) << 8,
            libc::CLD_DUMPED => (status & 0x7f) | 0x80,
            _ => status & 0x7f,
        };
        Some(std::process::ExitStatus::from_raw(raw))
    }
}

/// Which of `fds` have ended (their pidfd is readable); never blocks.
pub fn ended(fds: &[&Pidfd]) -> Vec<bool> {
    let mut polls: Vec<libc::pollfd> = fds
        .iter()
        .map(|p| libc::pollfd {
            fd: p.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    if polls.is_empty() {
        return Vec::new();
    }
    // SAFETY: a valid array of pollfd of the given length; timeout 0.
    let r = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, 0) };
    if r < 0 {
        return vec![false; fds.len()];
    }
    polls
        .iter()
        .map(|p| p.revents & (libc::POLLIN | libc::POLLHUP) != 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(wd: i32, mask: u32, name: &str, pad: usize) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&wd.to_ne_bytes());
        v.extend_from_slice(&mask.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes()); // cookie
        v.extend_from_slice(&((name.len() + pad) as u32).to_ne_bytes());
        v.extend_from_slice(name.as_bytes());
        v.extend(std::iter::repeat_n(0, pad));
        v
    }

    #[test]
    fn event_records_parse_and_a_cut_record_ends_the_parse() {
        let mut buf = record(3, libc::IN_MOVED_TO, "pid", 13);
        buf.extend(record(1, libc::IN_Q_OVERFLOW, "", 0));
        buf.extend(record(4, libc::IN_CREATE, "vm01", 12));
        let whole = buf.len();
        buf.extend(&record(5, libc::IN_DELETE, "cut", 13)[..20]);
        let mut out = Vec::new();
        parse_events(&buf, &mut out);
        assert_eq!(
            out,
            vec![
                Change {
                    wd: 3,
                    name: "pid".into(),
                    mask: libc::IN_MOVED_TO
                },
                Change {
                    wd: 1,
                    name: String::new(),
                    mask: libc::IN_Q_OVERFLOW
                },
                Change {
                    wd: 4,
                    name: "vm01".into(),
                    mask: libc::IN_CREATE
                },
            ]
        );
        let mut again = Vec::new();
        parse_events(&buf[..whole - 1], &mut again);
        assert_eq!(again.len(), 2, "the last whole record is cut by one byte");
    }

    #[test]
    fn inotify_sees_a_rename_into_a_watched_folder() {
        let dir = std::env::temp_dir().join(format!("kvmkit-events-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let n = Inotify::new().expect("inotify");
        let wd = n.watch(&dir, FOLDER_MASK).expect("watch");
        assert!(n.drain().is_empty());
        std::fs::write(dir.join(".tmp"), b"x").expect("write");
        std::fs::rename(dir.join(".tmp"), dir.join("pid")).expect("rename");
        let got = n.drain();
        assert!(
            got.iter()
                .any(|c| c.wd == wd && c.name == "pid" && c.mask & libc::IN_MOVED_TO != 0),
            "{got:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_pidfd_tells_a_child_ended_and_gives_its_status() {
        let child = std::process::Command::new("sh")
            .args(["-c", "exit 7"])
            .spawn()
            .expect("sh");
        let fd = Pidfd::open(child.id() as i32).expect("pidfd");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !ended(&[&fd])[0] {
            assert!(std::time::Instant::now() < deadline, "sh -c 'exit 7' never ended");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(fd.reap().and_then(|s| s.code()), Some(7));
        assert_eq!(fd.reap(), None, "reaped once");
        drop(child);
    }
}
