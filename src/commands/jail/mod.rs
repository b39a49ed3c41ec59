//! `kvmkit jail` (and `jailer` through a symlink): Firecracker's jailer.
//! Builds `<base>/<exec name>/<id>/root` with only what the VMM needs,
//! makes the VM's cgroup, enters new namespaces, drops every privilege and
//! execs the VMM inside. Any failure removes what was made.
//!
//! Files: `args` (command line, checks), `chroot` (the directory),
//! `cgroup` (v1/v2), `enter` (namespaces, privileges, exec), and here the
//! order of steps and the clean-up helper.

mod args;
mod cgroup;
mod chroot;
mod enter;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

use clap::Parser;

pub use args::JailArgs;
use chroot::Created;

/// Whether this process was invoked as `jailer`.
pub fn invoked_as_jailer() -> bool {
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n == "jailer"))
        .unwrap_or(false)
}

/// Entry point when invoked as `jailer`: Firecracker's jailer command line.
pub fn main_as_jailer() -> anyhow::Result<u8> {
    run(&JailArgs::parse())
}

/// Microseconds of CLOCK_MONOTONIC and of this process's CPU time.
fn times_us() -> (u64, u64) {
    let read = |clock| {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: ts is a valid timespec to fill.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
    };
    (read(libc::CLOCK_MONOTONIC), read(libc::CLOCK_PROCESS_CPUTIME_ID))
}

/// Builds the jail and execs the VMM in it. Returns only on failure (an
/// error, after everything made was removed), or in the parent of
/// `--new-pid-ns` (the child's fate as exit status).
pub fn run(args: &JailArgs) -> anyhow::Result<u8> {
    let (start_us, start_cpu_us) = times_us();
    let plan = args.plan().map_err(anyhow::Error::msg)?;
    // What the jailer makes is never group- or world-writable.
    // SAFETY: umask only sets this process's file mode mask.
    unsafe { libc::umask(0o022) };
    enter::cloexec_above_stdio().map_err(anyhow::Error::msg)?;
    // Everything that can be opened or checked before the host is changed.
    let handles = enter::Handles {
        netns: plan
            .netns
            .as_deref()
            .map(enter::open_netns)
            .transpose()
            .map_err(anyhow::Error::msg)?,
        dev_null: if plan.daemonize {
            Some(File::options().read(true).write(true).open("/dev/null")?.into())
        } else {
            None
        },
    };
    let libs = chroot::libraries(&plan.exec_file).map_err(anyhow::Error::msg)?;
    let mut created = Created::default();
    let built = chroot::build(&plan, &libs, &mut created).and_then(|()| cgroup::create(&plan, &mut created));
    let vm_cgroups = match built {
        Ok(v) => v,
        Err(e) => return Err(anyhow::Error::msg(with_leftovers(e, created.undo()))),
    };
    tracing::info!(chroot = %plan.chroot_dir.display(), libs = libs.len(), "jail built");
    let reaper = match Reaper::start(&created) {
        Ok(r) => r,
        Err(e) => return Err(anyhow::Error::msg(with_leftovers(e, created.undo()))),
    };
    let argv = enter::argv(&plan, start_us, start_cpu_us);
    let mut reaper = Some(reaper);
    let mut to_parent: Option<File> = None;
    let result = (|| -> Result<u8, String> {
        cgroup::join(&vm_cgroups)?;
        enter::set_rlimits(&plan)?;
        enter::join_netns(&handles)?;
        enter::pivot_into(&plan.chroot_dir, &plan.files)?;
        enter::daemonize(&handles)?;
        if plan.new_pid_ns {
            match new_pid_ns(&plan, &mut reaper)? {
                PidNs::Parent(code) => return Ok(code),
                PidNs::Child(f) => to_parent = Some(f),
            }
        }
        drop(handles);
        enter::drop_privileges(plan.uid, plan.gid)?;
        Err(enter::exec(&argv))
    })();
    match result {
        Ok(code) => Ok(code),
        Err(e) => {
            let left = reaper.map(Reaper::cleanup).unwrap_or_default();
            if let Some(mut f) = to_parent {
                let _ = f.write_all(b"F");
            }
            Err(anyhow::Error::msg(with_leftovers(e, left)))
        }
    }
}

fn with_leftovers(e: String, left: Vec<String>) -> String {
    if left.is_empty() {
        e
    } else {
        format!("{e} (and could not remove: {})", left.join("; "))
    }
}

/// Where the process stands after --new-pid-ns's fork.
enum PidNs {
    /// The jailer's side: the exit status to end with.
    Parent(u8),
    /// Pid 1 of the new namespace: goes on to exec; writes a byte to the
    /// file on failure.
    Child(File),
}

/// unshare(CLONE_NEWPID) and fork: the child is pid 1 of the new
/// namespace. The parent writes its pid to `/<exec name>.pid` in the jail
/// and waits until the child has exec'd (status 0) or failed (its status).
fn new_pid_ns(plan: &args::JailPlan, reaper: &mut Option<Reaper>) -> Result<PidNs, String> {
    // SAFETY: unshare(CLONE_NEWPID) affects only children made later.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        return Err(format!("unshare(CLONE_NEWPID): {}", std::io::Error::last_os_error()));
    }
    let (r, w) = pipe()?;
    // SAFETY: the jailer is single-threaded; both sides go on with plain syscalls.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!(
            "fork into the new pid namespace: {}",
            std::io::Error::last_os_error()
        ));
    }
    if pid == 0 {
        drop(r);
        return Ok(PidNs::Child(w));
    }
    drop(w);
    // The child's exec (or exit) is what lets the clean-up helper go.
    drop(reaper.take());
    let _ = std::fs::write(format!("/{}.pid", plan.exec_name), pid.to_string());
    let mut r = r;
    let mut b = [0u8; 1];
    if matches!(r.read(&mut b), Ok(0)) {
        return Ok(PidNs::Parent(0));
    }
    let mut status = 0;
    // SAFETY: pid is our child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        1
    };
    Ok(PidNs::Parent(u8::try_from(code).unwrap_or(1).max(1)))
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> Result<(File, File), String> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: pipe2 returned two new descriptors that nothing else owns.
    unsafe { Ok((File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1]))) }
}

/// A helper process left in the host's namespaces (before the jailer
/// enters the cgroup and its own namespaces) that removes what was made if
/// the jailer fails after that point: the jailer's mount namespace holds the
/// chroot as its root, and it sits in the cgroup, so it cannot remove
/// either itself. When the jailer execs, the pipe closes (close-on-exec) and
/// the helper ends without doing anything.
struct Reaper {
    /// Write 'F' to ask for the clean-up.
    ask: File,
    /// Closed (after a report of what could not be removed) when done.
    done: File,
}

impl Reaper {
    fn start(created: &Created) -> Result<Reaper, String> {
        let (ask_r, ask_w) = pipe()?;
        let (done_r, done_w) = pipe()?;
        // SAFETY: single-threaded; the children use plain syscalls and std I/O.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(format!("fork: {}", std::io::Error::last_os_error()));
        }
        if pid == 0 {
            // An intermediate child, so the helper is not the VMM's child.
            // SAFETY: as above.
            if unsafe { libc::fork() } == 0 {
                drop(ask_w);
                drop(done_r);
                reaper_main(ask_r, done_w, created);
            }
            // SAFETY: _exit ends this child without running the parent's destructors.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: pid is our child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        Ok(Reaper {
            ask: ask_w,
            done: done_r,
        })
    }

    /// Has the helper remove everything; returns what it could not.
    fn cleanup(mut self) -> Vec<String> {
        if self.ask.write_all(b"F").is_err() {
            return vec!["the clean-up helper is gone".into()];
        }
        drop(self.ask);
        let mut left = String::new();
        let _ = self.done.read_to_string(&mut left);
        left.lines().map(str::to_owned).collect()
    }
}

fn reaper_main(mut ask: File, mut done: File, created: &Created) -> ! {
    // Hold nothing of the caller's: stdio to /dev/null, other descriptors closed.
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        let null: OwnedFd = null.into();
        for fd in 0..3 {
            // SAFETY: dup2 onto stdio.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
    let keep = [ask.as_raw_fd(), done.as_raw_fd()];
    for fd in 3..1024 {
        if !keep.contains(&fd) {
            // SAFETY: closing descriptors this process does not use.
            unsafe { libc::close(fd) };
        }
    }
    let mut b = [0u8; 1];
    if matches!(ask.read(&mut b), Ok(1)) && b[0] == b'F' {
        for l in created.undo() {
            let _ = writeln!(done, "{l}");
        }
    }
    // SAFETY: ends the helper.
    unsafe { libc::_exit(0) }
}
