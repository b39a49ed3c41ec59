//! Entering the jail: rlimits, the network namespace, a new mount
//! namespace pivoted into the chroot, setsid, a new pid namespace, file
//! descriptors, capabilities and ids, then exec.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use super::args::{JailFile, JailPlan};

/// What the jail's entry needs that was opened on the host.
pub struct Handles {
    /// The network namespace to join.
    pub netns: Option<OwnedFd>,
    /// /dev/null for --daemonize.
    pub dev_null: Option<OwnedFd>,
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

fn cstr(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("{}: NUL in path", p.display()))
}

/// Opens `--netns` and checks it is a network namespace.
pub fn open_netns(p: &Path) -> Result<OwnedFd, String> {
    let f = std::fs::File::open(p).map_err(|e| format!("--netns {}: {e}", p.display()))?;
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: NS_GET_NSTYPE takes no argument and only returns the type.
    let ty = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_NSTYPE) };
    if ty != libc::CLONE_NEWNET {
        return Err(format!(
            "--netns {}: not a network namespace (e.g. /var/run/netns/NAME)",
            p.display()
        ));
    }
    Ok(f.into())
}

/// Marks every descriptor above 2 close-on-exec.
pub fn cloexec_above_stdio() -> Result<(), String> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags on descriptors.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    if r == 0 {
        return Ok(());
    }
    // Older kernels: one by one.
    for fd in 3..4096 {
        // SAFETY: F_SETFD on a descriptor that may not be open only fails.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}

/// Sets the resource limits (soft and hard).
pub fn set_rlimits(plan: &JailPlan) -> Result<(), String> {
    for &(res, n) in &plan.rlimits {
        let lim = libc::rlimit {
            rlim_cur: n,
            rlim_max: n,
        };
        // SAFETY: lim is a valid rlimit.
        if unsafe { libc::setrlimit(res, &lim) } != 0 {
            return Err(os_err(&format!("setrlimit({res}, {n})")));
        }
    }
    Ok(())
}

/// Joins the network namespace.
pub fn join_netns(h: &Handles) -> Result<(), String> {
    if let Some(fd) = &h.netns {
        // SAFETY: fd is an open namespace file.
        if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(os_err("setns(--netns)"));
        }
    }
    Ok(())
}

/// A new mount namespace whose root is the chroot (pivot_root, as
/// Firecracker's jailer does), then chroot(".").
pub fn pivot_into(chroot: &Path, files: &[JailFile]) -> Result<(), String> {
    let root = cstr(chroot)?;
    let slash = c"/";
    // SAFETY: each call below takes valid NUL-terminated strings or nulls
    // and changes only this process's namespaces and mounts.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(os_err("unshare(CLONE_NEWNS)"));
        }
        if libc::mount(
            std::ptr::null(),
            slash.as_ptr(),
            std::ptr::null(),
            libc::MS_PRIVATE | libc::MS_REC,
            std::ptr::null(),
        ) != 0
        {
            return Err(os_err("making / private"));
        }
        if libc::mount(
            root.as_ptr(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        ) != 0
        {
            return Err(os_err(&format!("bind-mounting {} onto itself", chroot.display())));
        }
        for f in files {
            let src = cstr(&f.src)?;
            let at = chroot.join(f.dest.strip_prefix("/").unwrap_or(&f.dest));
            let dst = cstr(&at)?;
            if libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ) != 0
            {
                return Err(os_err(&format!(
                    "--file: bind-mounting {} at {}",
                    f.src.display(),
                    f.dest.display()
                )));
            }
            let ro = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
            if f.ro && libc::mount(std::ptr::null(), dst.as_ptr(), std::ptr::null(), ro, std::ptr::null()) != 0 {
                return Err(os_err(&format!("--file: making {} read-only", f.dest.display())));
            }
        }
        if libc::chdir(root.as_ptr()) != 0 {
            return Err(os_err("chdir into the chroot"));
        }
        let old = c"old_root";
        if libc::mkdir(old.as_ptr(), 0o700) != 0 {
            return Err(os_err("mkdir old_root"));
        }
        if libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), old.as_ptr()) != 0 {
            let e = io::Error::last_os_error();
            let hint = match e.raw_os_error() {
                Some(libc::EINVAL) => std::fs::read_to_string("/proc/self/mountinfo")
                    .ok()
                    .and_then(|m| pivot_root_hint(&m)),
                _ => None,
            };
            return Err(match hint {
                Some(h) => format!("pivot_root: {e} ({h})"),
                None => format!("pivot_root: {e}"),
            });
        }
        if libc::chdir(slash.as_ptr()) != 0 {
            return Err(os_err("chdir /"));
        }
        if libc::umount2(c"/old_root".as_ptr(), libc::MNT_DETACH) != 0 {
            return Err(os_err("unmounting the old root"));
        }
        if libc::rmdir(c"/old_root".as_ptr()) != 0 {
            return Err(os_err("rmdir /old_root"));
        }
        if libc::chroot(c".".as_ptr()) != 0 {
            return Err(os_err("chroot"));
        }
    }
    Ok(())
}

/// Why pivot_root(2) refused (EINVAL) to move this process's root, read
/// from its `/proc/self/mountinfo`, when the root is one it can never move:
/// the mount namespace's top mount (the initramfs's rootfs, listed as its
/// own parent), or no mount at all (the jailer runs in a plain chroot).
fn pivot_root_hint(mountinfo: &str) -> Option<&'static str> {
    // Fields: mount id, parent id, major:minor, root, mount point, ...
    let at_root: Vec<(&str, &str)> = mountinfo
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').take(5).collect();
            (f.len() == 5 && f[4] == "/").then(|| (f[0], f[1]))
        })
        .collect();
    // The last mount on / is the one in use.
    match at_root.last() {
        Some((id, parent)) if id == parent => Some(
            "/ is the initramfs (rootfs), which pivot_root cannot move: run the jailer from a mounted root \
             file system, e.g. after switch_root, or chrooted into a bind mount of /",
        ),
        None => Some("/ is not a mount point (a chroot?): run the jailer where / is a mount"),
        Some(_) => None,
    }
}

/// --daemonize: a new session, stdio to /dev/null.
pub fn daemonize(h: &Handles) -> Result<(), String> {
    let Some(null) = &h.dev_null else { return Ok(()) };
    // SAFETY: setsid has no arguments.
    if unsafe { libc::setsid() } < 0 {
        return Err(os_err(
            "--daemonize: setsid (the jailer must not be a process group leader)",
        ));
    }
    for fd in 0..3 {
        // SAFETY: null is an open descriptor; dup2 onto 0-2 replaces stdio.
        if unsafe { libc::dup2(null.as_raw_fd(), fd) } < 0 {
            return Err(os_err("--daemonize: dup2(/dev/null)"));
        }
    }
    Ok(())
}

/// Drops every capability (bounding, ambient, then the rest with the
/// uid change), sets no_new_privs and the ids.
pub fn drop_privileges(uid: u32, gid: u32) -> Result<(), String> {
    // SAFETY: prctl/setgroups/setres[ug]id/capset with valid arguments;
    // they change only this process's credentials.
    unsafe {
        let mut cap = 0;
        while libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) == 0 {
            cap += 1;
        }
        if cap == 0 {
            return Err(os_err("dropping the capability bounding set"));
        }
        libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
        let groups = [gid];
        if libc::setgroups(1, groups.as_ptr()) != 0 {
            return Err(os_err("setgroups"));
        }
        if libc::setresgid(gid, gid, gid) != 0 {
            return Err(os_err(&format!("setresgid({gid})")));
        }
        if libc::setresuid(uid, uid, uid) != 0 {
            return Err(os_err(&format!("setresuid({uid})")));
        }
        // The uid change cleared permitted and effective; clear inheritable too.
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        let mut h = Header {
            version: 0x2008_0522,
            pid: 0,
        };
        let d = [Data {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        if libc::syscall(libc::SYS_capset, &mut h as *mut Header, d.as_ptr()) != 0 {
            return Err(os_err("capset(0)"));
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(os_err("PR_SET_NO_NEW_PRIVS"));
        }
        if libc::getuid() == 0 || libc::geteuid() == 0 {
            return Err("the uid is still 0 after setresuid".into());
        }
    }
    Ok(())
}

/// The exec file's argv: `/<name>`, then for a `firecracker` binary the
/// arguments Firecracker's jailer passes (`--id`, start times), then the
/// user's.
pub fn argv(plan: &JailPlan, start_us: u64, start_cpu_us: u64) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec![format!("/{}", plan.exec_name).into()];
    if plan.exec_name.contains("firecracker") {
        v.push(format!("--id={}", plan.id).into());
        v.push(format!("--start-time-us={start_us}").into());
        v.push(format!("--start-time-cpu-us={start_cpu_us}").into());
    }
    v.extend(plan.exec_args.iter().cloned());
    v
}

/// execve with an empty environment; returns only on failure.
pub fn exec(argv: &[OsString]) -> String {
    let c: Result<Vec<CString>, _> = argv.iter().map(|a| CString::new(a.clone().into_vec())).collect();
    let Ok(c) = c else {
        return "an exec argument holds a NUL byte".into();
    };
    let mut ptrs: Vec<*const libc::c_char> = c.iter().map(|s| s.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let env: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: ptrs and env are NULL-terminated arrays of valid strings.
    unsafe { libc::execve(ptrs[0], ptrs.as_ptr(), env.as_ptr()) };
    os_err(&format!("exec {}", argv[0].to_string_lossy()))
}

#[cfg(test)]
mod tests {
    use super::pivot_root_hint;

    #[test]
    fn pivot_root_hints() {
        // An initramfs: rootfs is its own parent.
        let rootfs = "1 1 0:2 / / rw - rootfs rootfs rw\n22 1 0:21 / /proc rw,relatime - proc proc rw\n";
        assert!(pivot_root_hint(rootfs).is_some_and(|h| h.contains("initramfs")));
        // A real root file system mounted over rootfs (the last mount on / counts).
        let disk = "1 1 0:2 / / rw - rootfs rootfs rw\n29 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n";
        assert_eq!(pivot_root_hint(disk), None);
        // In a new mount namespace: a root whose parent is not shown.
        assert_eq!(pivot_root_hint("612 590 8:1 / / rw - ext4 /dev/sda1 rw\n"), None);
        // A chroot into a plain directory: no mount at /.
        let chroot = "22 1 0:21 / /proc rw,relatime - proc proc rw\n";
        assert!(pivot_root_hint(chroot).is_some_and(|h| h.contains("not a mount point")));
        assert!(pivot_root_hint("").is_some());
    }
}
