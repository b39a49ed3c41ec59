//! `kvmkit run --landlock`: a Landlock ruleset, applied before any thread
//! starts, that limits the process's file system access to what the VM
//! was given: /dev/kvm (and /dev/net/tun with NICs), the kernel, initrd,
//! disks and snapshot files it reads, the directories where it makes its
//! API and vsock sockets, log, metrics and results, and `--landlock-allow`
//! paths (for snapshots and anything configured later over the API).
//! Everything else (other files, exec, making devices) is refused with
//! EACCES. Files opened before it (stdin, taps made by --net) stay usable.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use kvmkit_vmm::vmm_config::VmResources;

use crate::cli::RunArgs;

const EXECUTE: u64 = 1 << 0;
const WRITE_FILE: u64 = 1 << 1;
const READ_FILE: u64 = 1 << 2;
const READ_DIR: u64 = 1 << 3;
const REMOVE_FILE: u64 = 1 << 5;
const MAKE_REG: u64 = 1 << 8;
const MAKE_SOCK: u64 = 1 << 9;
const TRUNCATE: u64 = 1 << 14;
const IOCTL_DEV: u64 = 1 << 15;
/// The rights that apply to a file (the rest are directory rights).
const FILE_RIGHTS: u64 = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV;

/// Every file-system right the kernel's Landlock ABI knows: all of them
/// are handled (denied unless a rule allows them).
fn handled(abi: i64) -> u64 {
    let mut h = (1 << 13) - 1;
    if abi >= 2 {
        h |= 1 << 13; // REFER
    }
    if abi >= 3 {
        h |= TRUNCATE;
    }
    if abi >= 5 {
        h |= IOCTL_DEV;
    }
    h
}

/// Paths and the rights the VM needs on them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rules(pub Vec<(PathBuf, u64)>);

impl Rules {
    fn file(&mut self, p: impl AsRef<Path>, rights: u64) {
        let p = p.as_ref();
        if p.exists() {
            self.0.push((p.to_path_buf(), rights));
        }
    }

    /// A file that may not exist yet: the file if it does, else its
    /// directory with the right to make regular files.
    fn output(&mut self, p: &Path, rights: u64) {
        if p.exists() {
            self.file(p, rights);
        } else {
            self.file(parent(p), rights | MAKE_REG);
        }
    }

    /// A unix socket the process makes (and removes at the end).
    fn socket(&mut self, p: &Path) {
        self.file(parent(p), MAKE_SOCK | REMOVE_FILE);
    }
}

fn parent(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The rules for this run.
pub fn rules(args: &RunArgs, res: &VmResources) -> Rules {
    // A restored VM's disks, NICs and vsock socket are those its state file names (an
    // unreadable file is refused by the restore itself, with its reason).
    let restored = args
        .restore_state
        .as_ref()
        .and_then(|p| kvmkit_vmm::snapshot::file::read_state(p).ok())
        .map(|s| s.resources)
        .unwrap_or_default();
    let mut r = Rules::default();
    r.file("/dev/kvm", READ_FILE | WRITE_FILE | IOCTL_DEV);
    if !res.network_interfaces.is_empty() || !restored.network_interfaces.is_empty() {
        r.file("/dev/net/tun", READ_FILE | WRITE_FILE | IOCTL_DEV);
    }
    if let Some(b) = &res.boot_source {
        r.file(&b.kernel_image_path, READ_FILE);
        if let Some(i) = &b.initrd_path {
            r.file(i, READ_FILE);
        }
    }
    for d in res.drives.iter().chain(&restored.drives) {
        r.file(
            &d.path_on_host,
            if d.is_read_only {
                READ_FILE
            } else {
                READ_FILE | WRITE_FILE
            },
        );
    }
    for p in [&args.restore_state, &args.restore_mem].into_iter().flatten() {
        r.file(p, READ_FILE);
    }
    let log = res.logger.as_ref().and_then(|l| l.log_path.as_ref()).map(PathBuf::from);
    let metrics = res.metrics.as_ref().map(|m| PathBuf::from(&m.metrics_path));
    for p in [log, metrics, args.log_path.clone(), args.metrics_path.clone()]
        .into_iter()
        .flatten()
    {
        r.output(&p, WRITE_FILE | TRUNCATE);
    }
    if let Some(p) = &args.results {
        r.output(p, WRITE_FILE | TRUNCATE);
    }
    if let Some(s) = &args.api_sock {
        r.socket(s);
    }
    // A restored VM binds its vsock socket again, at the path its state file names.
    for v in res.vsock.iter().chain(&restored.vsock) {
        r.socket(&v.uds_path);
    }
    // The serial console is set up after the ruleset (its socket thread must be restricted too).
    match &args.serial {
        crate::cli::SerialSpec::Socket(p) => r.socket(p),
        crate::cli::SerialSpec::File(p) => r.output(p, WRITE_FILE),
        crate::cli::SerialSpec::Pty => {
            r.file("/dev/ptmx", READ_FILE | WRITE_FILE | IOCTL_DEV);
            r.file("/dev/pts", READ_FILE | WRITE_FILE | IOCTL_DEV);
        }
        crate::cli::SerialSpec::Tty | crate::cli::SerialSpec::Off => {}
    }
    for p in &args.landlock_allow {
        let all = FILE_RIGHTS & !EXECUTE | READ_DIR | REMOVE_FILE | MAKE_REG | MAKE_SOCK;
        r.file(p, if p.is_dir() { all } else { FILE_RIGHTS & !EXECUTE });
    }
    r
}

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// Restricts this process (and every thread it starts later) to `rules`.
pub fn apply(args: &RunArgs, res: &VmResources) -> anyhow::Result<()> {
    if !args.landlock {
        return Ok(());
    }
    for p in &args.landlock_allow {
        std::fs::metadata(p).with_context(|| format!("--landlock-allow {}", p.display()))?;
    }
    let abi = match kvmkit_vmm::seccomp::landlock_abi() {
        Ok(v) => v,
        Err(e) => bail!("--landlock: this kernel has no Landlock ({e}); run without --landlock"),
    };
    let handled = handled(abi);
    let attr = RulesetAttr {
        handled_access_fs: handled,
    };
    // SAFETY: attr is a valid ruleset attribute of the size given.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const RulesetAttr,
            std::mem::size_of::<RulesetAttr>(),
            0u32,
        )
    };
    if fd < 0 {
        bail!(
            "--landlock: landlock_create_ruleset: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    let ruleset: OwnedFd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    let rules = rules(args, res);
    for (path, rights) in &rules.0 {
        let f = std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(path)
            .with_context(|| format!("--landlock: cannot open {}", path.display()))?;
        let mut rights = rights & handled;
        if !f.metadata().map(|m| m.is_dir()).unwrap_or(false) {
            rights &= FILE_RIGHTS;
        }
        let beneath = PathBeneathAttr {
            allowed_access: rights,
            parent_fd: f.as_raw_fd(),
        };
        const LANDLOCK_RULE_PATH_BENEATH: libc::c_int = 1;
        // SAFETY: beneath is a valid path-beneath attribute; both fds are open.
        let r = unsafe {
            libc::syscall(
                libc::SYS_landlock_add_rule,
                ruleset.as_raw_fd(),
                LANDLOCK_RULE_PATH_BENEATH,
                &beneath as *const PathBeneathAttr,
                0u32,
            )
        };
        if r != 0 {
            bail!(
                "--landlock: rule for {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
    }
    // SAFETY: prctl and landlock_restrict_self change only this process's
    // credentials; the ruleset fd is open.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            bail!("--landlock: PR_SET_NO_NEW_PRIVS: {}", std::io::Error::last_os_error());
        }
        if libc::syscall(libc::SYS_landlock_restrict_self, ruleset.as_raw_fd(), 0u32) != 0 {
            bail!(
                "--landlock: landlock_restrict_self: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    tracing::info!(
        abi,
        rules = rules.0.len(),
        "Landlock: file system access limited to the VM's files"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handled_rights_follow_the_abi() {
        assert_eq!(handled(1), 0x1fff);
        assert_eq!(handled(2), 0x3fff);
        assert_eq!(handled(4), 0x7fff);
        assert_eq!(handled(7), 0xffff);
    }

    #[test]
    fn outputs_that_do_not_exist_allow_their_directory() {
        let mut r = Rules::default();
        r.output(Path::new("/nonexistent-dir-kvmkit/x"), WRITE_FILE);
        assert!(r.0.is_empty());
        r.output(Path::new("/tmp/kvmkit-landlock-unit-nonexistent"), WRITE_FILE);
        assert_eq!(r.0, [(PathBuf::from("/tmp"), WRITE_FILE | MAKE_REG)]);
        r.socket(Path::new("rel.sock"));
        assert_eq!(r.0[1], (PathBuf::from("."), MAKE_SOCK | REMOVE_FILE));
    }
}
