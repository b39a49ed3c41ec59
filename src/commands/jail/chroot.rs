//! The jail's directory: `<base>/<exec name>/<id>/root` with the exec
//! file, the shared libraries it needs (when it is not static), and
//! `/dev/kvm` and `/dev/net/tun` made with mknod; plus the record of what
//! was made, so that a failure removes exactly that.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::args::JailPlan;

/// Everything the jailer made on the host, in order; [`Created::undo`]
/// removes it.
#[derive(Debug, Default, Clone)]
pub struct Created {
    /// Directories made (jail directories, cgroup levels), removed in reverse.
    pub dirs: Vec<PathBuf>,
    /// The chroot directory (removed with everything in it).
    pub tree: Option<PathBuf>,
    /// (the VM's cgroup, the cgroup.procs file of the jailer's original
    /// cgroup in that hierarchy): processes are moved back before removal.
    pub cgroups: Vec<(PathBuf, PathBuf)>,
}

impl Created {
    /// Makes `dir` and any missing parent, recording the ones it made.
    pub fn mkdirs(&mut self, dir: &Path) -> io::Result<()> {
        let mut missing = Vec::new();
        let mut p = dir;
        while p.symlink_metadata().is_err() {
            missing.push(p.to_path_buf());
            match p.parent() {
                Some(q) => p = q,
                None => break,
            }
        }
        for d in missing.into_iter().rev() {
            match std::fs::create_dir(&d) {
                Ok(()) => self.dirs.push(d),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Removes what was made: processes leave the cgroups, then the
    /// cgroups, the chroot tree and the directories go. Best effort; returns
    /// what could not be removed.
    pub fn undo(&self) -> Vec<String> {
        let mut left = Vec::new();
        for (cg, orig_procs) in &self.cgroups {
            let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines() {
                let _ = std::fs::write(orig_procs, pid);
            }
        }
        if let Some(tree) = &self.tree {
            if let Err(e) = std::fs::remove_dir_all(tree) {
                if e.kind() != io::ErrorKind::NotFound {
                    left.push(format!("{}: {e}", tree.display()));
                }
            }
        }
        for d in self.dirs.iter().rev() {
            if let Err(e) = std::fs::remove_dir(d) {
                if e.kind() != io::ErrorKind::NotFound {
                    left.push(format!("{}: {e}", d.display()));
                }
            }
        }
        left
    }
}

/// Makes the chroot directory and fills it. The chroot directory itself
/// must not exist (it would not be ours).
pub fn build(plan: &JailPlan, libs: &[PathBuf], created: &mut Created) -> Result<(), String> {
    created
        .mkdirs(&plan.jail_dir)
        .map_err(|e| format!("cannot make {}: {e}", plan.jail_dir.display()))?;
    check_mount_flags(&plan.jail_dir)?;
    match std::fs::create_dir(&plan.chroot_dir) {
        Ok(()) => created.tree = Some(plan.chroot_dir.clone()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(format!(
                "{} already exists: it is not this jailer's to use (ids must be unique)",
                plan.chroot_dir.display()
            ))
        }
        Err(e) => return Err(format!("cannot make {}: {e}", plan.chroot_dir.display())),
    }
    let root = &plan.chroot_dir;
    set_mode(root, 0o755)?;
    // The exec file: a hard link when on the same file system, else a copy.
    let target = root.join(&plan.exec_name);
    if std::fs::hard_link(&plan.exec_file, &target).is_err() {
        std::fs::copy(&plan.exec_file, &target)
            .map_err(|e| format!("cannot copy {} into the jail: {e}", plan.exec_file.display()))?;
        set_mode(&target, 0o555)?;
    }
    for lib in libs {
        let inside = root.join(lib.strip_prefix("/").unwrap_or(lib));
        if let Some(dir) = inside.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
        }
        std::fs::copy(lib, &inside).map_err(|e| format!("cannot copy {} into the jail: {e}", lib.display()))?;
        set_mode(&inside, 0o555)?;
    }
    for f in &plan.files {
        // A place to mount on (the mount is made in the VM's mount namespace).
        let at = root.join(f.dest.strip_prefix("/").unwrap_or(&f.dest));
        if at.symlink_metadata().is_ok() {
            return Err(format!(
                "--file {}: {} is already in the jail",
                f.src.display(),
                f.dest.display()
            ));
        }
        if let Some(dir) = at.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
        }
        let made = if f.src.is_dir() {
            std::fs::create_dir(&at)
        } else {
            std::fs::File::create(&at).map(drop)
        };
        made.map_err(|e| format!("cannot make {}: {e}", at.display()))?;
    }
    std::fs::create_dir_all(root.join("dev/net"))
        .map_err(|e| format!("cannot make {}/dev/net: {e}", root.display()))?;
    make_node(Path::new("/dev/kvm"), &root.join("dev/kvm"), plan)?;
    if Path::new("/dev/net/tun").exists() {
        make_node(Path::new("/dev/net/tun"), &root.join("dev/net/tun"), plan)?;
    } else {
        tracing::warn!("/dev/net/tun does not exist on this host: the jail has none (no --net)");
    }
    // The VMM makes its API socket, logs and metrics in its root.
    chown(root, plan.uid, plan.gid)?;
    Ok(())
}

/// The jail's file system must allow device nodes and exec.
fn check_mount_flags(dir: &Path) -> Result<(), String> {
    let c = cpath(dir)?;
    // SAFETY: an all-zero statvfs is a valid buffer for statvfs to fill.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid path and st a valid buffer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(format!("statvfs {}: {}", dir.display(), io::Error::last_os_error()));
    }
    for (flag, what) in [
        (libc::ST_NODEV, "nodev: /dev/kvm inside could not be opened"),
        (libc::ST_NOEXEC, "noexec: the exec file could not run"),
    ] {
        if st.f_flag & flag != 0 {
            return Err(format!(
                "--chroot-base-dir: {} is on a file system mounted {what}",
                dir.display()
            ));
        }
    }
    Ok(())
}

fn set_mode(p: &Path, mode: u32) -> Result<(), String> {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot chmod {}: {e}", p.display()))
}

fn cpath(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("{}: NUL in path", p.display()))
}

fn chown(p: &Path, uid: u32, gid: u32) -> Result<(), String> {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).map_err(|e| format!("cannot chown {}: {e}", p.display()))
}

/// mknod `dst` as the character device `src` is (same major/minor, mode
/// 0600), owned by the jail's uid/gid.
fn make_node(src: &Path, dst: &Path, plan: &JailPlan) -> Result<(), String> {
    let m = std::fs::metadata(src).map_err(|e| format!("{}: {e}", src.display()))?;
    if m.mode() & libc::S_IFMT != libc::S_IFCHR {
        return Err(format!("{} is not a character device", src.display()));
    }
    let c = cpath(dst)?;
    // SAFETY: c is a valid NUL-terminated path; mknod only reads it.
    let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, m.rdev() as libc::dev_t) };
    if r != 0 {
        return Err(format!(
            "cannot mknod {}: {}",
            dst.display(),
            io::Error::last_os_error()
        ));
    }
    chown(dst, plan.uid, plan.gid)
}

/// Whether the ELF file at `p` names a program interpreter (PT_INTERP),
/// i.e. is dynamically linked.
pub fn is_dynamic(p: &Path) -> Result<bool, String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(p)
        .and_then(|f| f.take(64 << 10).read_to_end(&mut bytes))
        .map_err(|e| format!("--exec-file {}: {e}", p.display()))?;
    elf_has_interp(&bytes)
        .ok_or_else(|| format!("--exec-file {}: not a 64-bit little-endian ELF executable", p.display()))
}

fn elf_has_interp(b: &[u8]) -> Option<bool> {
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        return None;
    }
    let u16_at = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let phoff = usize::try_from(u64::from_le_bytes(b.get(0x20..0x28)?.try_into().ok()?)).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    for i in 0..phnum {
        let off = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let ty = u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?);
        if ty == 3 {
            return Some(true);
        }
    }
    Some(false)
}

/// The shared libraries (and the loader) a dynamic exec file needs, from
/// `ldd`; none for a static one.
pub fn libraries(exec: &Path) -> Result<Vec<PathBuf>, String> {
    if !is_dynamic(exec)? {
        return Ok(Vec::new());
    }
    let out = std::process::Command::new("ldd")
        .arg(exec)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .map_err(|e| {
            format!(
                "--exec-file {} is dynamically linked and ldd cannot run ({e}): build it static (docs/security.md)",
                exec.display()
            )
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "ldd {} failed: {}",
            exec.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    parse_ldd(&text).map_err(|l| format!("ldd {}: {l}", exec.display()))
}

/// Absolute library paths in ldd's output; an unresolved one is an error.
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("=> not found") {
            return Err(format!("a library is missing: {line}"));
        }
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next().unwrap_or(""),
            None => line.split_whitespace().next().unwrap_or(""),
        };
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output() {
        let t = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x1)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x2)\n\t/lib64/ld-linux-x86-64.so.2 (0x3)\n";
        let v = parse_ldd(t).expect("ok");
        assert_eq!(
            v,
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
        assert!(parse_ldd("\tlibfoo.so => not found\n").is_err());
    }

    #[test]
    fn elf_interp() {
        assert_eq!(elf_has_interp(b"not an elf"), None);
        let me = std::fs::read(std::env::current_exe().expect("exe")).expect("read");
        assert!(elf_has_interp(&me).is_some());
        let mut h = vec![0u8; 64 + 56];
        h[..6].copy_from_slice(b"\x7fELF\x02\x01");
        h[0x20] = 64;
        h[0x36] = 56;
        h[0x38] = 1;
        h[64] = 3;
        assert_eq!(elf_has_interp(&h), Some(true));
        h[64] = 1;
        assert_eq!(elf_has_interp(&h), Some(false));
        h[0x38] = 2;
        assert_eq!(elf_has_interp(&h), None);
    }

    #[test]
    fn mkdirs_records_only_what_it_made() {
        let base = std::env::temp_dir().join(format!("kvmkit-jail-unit-{}", std::process::id()));
        let mut c = Created::default();
        c.mkdirs(&base.join("a/b")).expect("mkdirs");
        assert_eq!(c.dirs, [base.clone(), base.join("a"), base.join("a/b")]);
        let mut c2 = Created::default();
        c2.mkdirs(&base.join("a/b/c")).expect("mkdirs");
        assert_eq!(c2.dirs, [base.join("a/b/c")]);
        assert!(c2.undo().is_empty());
        assert!(base.join("a/b").exists());
        assert!(c.undo().is_empty());
        assert!(!base.exists());
    }
}
