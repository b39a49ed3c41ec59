//! The VM's cgroup: `<hierarchy>/<parent>/<id>` in cgroup v1 (one per
//! controller mount) or v2 (the unified hierarchy), the `--cgroup`
//! values written, then the jailer moves itself in.
//!
//! The v2 hierarchy is the first `cgroup2` line of /proc/mounts, or the
//! mount point named by [`CGROUP2_MOUNT_ENV`] (tests mount their own; a host
//! with several cgroup2 mounts).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use super::args::{CgroupSetting, JailPlan};
use super::chroot::Created;

/// The cgroups made for the VM: the directories whose `cgroup.procs` the
/// jailer writes itself into.
#[derive(Debug, Default)]
pub struct VmCgroups {
    /// One per hierarchy used.
    pub dirs: Vec<PathBuf>,
}

/// The environment variable that names the cgroup2 mount point
/// `--cgroup-version 2` uses (it must be one: its file system type is
/// checked) instead of the first one in /proc/mounts.
pub const CGROUP2_MOUNT_ENV: &str = "KVMKIT_JAIL_CGROUP2_MOUNT";

/// `statfs`'s f_type of a cgroup2 file system (<linux/magic.h>).
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// The cgroup2 mount point to use: [`CGROUP2_MOUNT_ENV`]'s, checked, else
/// the first in `mounts`.
fn cgroup2_root(mounts: &[(PathBuf, String, Vec<String>)], file: &str) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(CGROUP2_MOUNT_ENV) {
        let p = PathBuf::from(p);
        return match fs_type(&p) {
            Ok(t) if t == CGROUP2_SUPER_MAGIC => Ok(p),
            Ok(_) => Err(format!(
                "{CGROUP2_MOUNT_ENV}={}: not a cgroup2 mount point",
                p.display()
            )),
            Err(e) => Err(format!("{CGROUP2_MOUNT_ENV}={}: {e}", p.display())),
        };
    }
    mounts
        .iter()
        .find(|(_, ty, _)| ty == "cgroup2")
        .map(|(mnt, _, _)| mnt.clone())
        .ok_or_else(|| {
            format!("--cgroup {file}: no cgroup2 file system is mounted (see /proc/mounts); try --cgroup-version 1")
        })
}

/// The file system type (`statfs`'s f_type) of `p`.
fn fs_type(p: &Path) -> io::Result<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c =
        std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a zeroed statfs is valid for the kernel to fill.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a NUL-terminated path, st a valid statfs.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type)
}

/// One line of /proc/mounts: (mount point, fs type, options).
fn mounts() -> Result<Vec<(PathBuf, String, Vec<String>)>, String> {
    let text = std::fs::read_to_string("/proc/mounts").map_err(|e| format!("cannot read /proc/mounts: {e}"))?;
    Ok(parse_mounts(&text))
}

fn parse_mounts(text: &str) -> Vec<(PathBuf, String, Vec<String>)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (_, mnt, ty, opts) = (f.next()?, f.next()?, f.next()?, f.next()?);
            Some((
                PathBuf::from(unescape(mnt)),
                ty.to_owned(),
                opts.split(',').map(str::to_owned).collect(),
            ))
        })
        .collect()
}

/// /proc/mounts writes space, tab, newline and backslash as \ooo.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The jailer's own cgroup path in a hierarchy (from /proc/self/cgroup):
/// v1 by controller, v2 with `None`.
fn own_cgroup(controller: Option<&str>) -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    for l in text.lines() {
        let mut f = l.splitn(3, ':');
        let (_, ctrls, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or("/"));
        let hit = match controller {
            None => ctrls.is_empty(),
            Some(c) => ctrls.split(',').any(|x| x == c),
        };
        if hit {
            return PathBuf::from(path.trim_start_matches('/'));
        }
    }
    PathBuf::new()
}

/// Makes the VM's cgroups and writes the settings; records what it made
/// in `created`.
pub fn create(plan: &JailPlan, created: &mut Created) -> Result<VmCgroups, String> {
    if plan.cgroups.is_empty() {
        return Ok(VmCgroups::default());
    }
    let mounts = mounts()?;
    // hierarchy root -> (controllers, settings), in a stable order.
    let mut by_root: BTreeMap<PathBuf, (Vec<String>, Vec<&CgroupSetting>)> = BTreeMap::new();
    let mut own: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    for s in &plan.cgroups {
        let root = if plan.cgroup_version == 2 {
            let mnt = cgroup2_root(&mounts, &s.file)?;
            own.entry(mnt.clone()).or_insert_with(|| own_cgroup(None));
            mnt
        } else {
            let (mnt, _, _) = mounts
                .iter()
                .find(|(_, ty, o)| ty == "cgroup" && o.contains(&s.controller))
                .ok_or_else(|| {
                    format!(
                        "--cgroup {}: no cgroup v1 hierarchy has the {:?} controller (see /proc/mounts); try --cgroup-version 2",
                        s.file, s.controller
                    )
                })?;
            own.entry(mnt.clone())
                .or_insert_with(|| own_cgroup(Some(&s.controller)));
            mnt.clone()
        };
        let e = by_root.entry(root).or_default();
        if !e.0.contains(&s.controller) {
            e.0.push(s.controller.clone());
        }
        e.1.push(s);
    }
    let mut vm = VmCgroups::default();
    for (root, (controllers, settings)) in by_root {
        if plan.cgroup_version == 2 {
            let avail = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
            if let Some(c) = controllers
                .iter()
                .find(|c| !avail.split_whitespace().any(|a| a == c.as_str()))
            {
                return Err(format!(
                    "--cgroup: the cgroup v2 hierarchy at {} has no {c:?} controller (it has: {}); try --cgroup-version 1",
                    root.display(),
                    if avail.trim().is_empty() { "none" } else { avail.trim() }
                ));
            }
        }
        let dir = root.join(&plan.parent_cgroup).join(&plan.id);
        if dir.exists() {
            return Err(format!(
                "cgroup {} already exists: it is not this jailer's to use",
                dir.display()
            ));
        }
        // Each level from the root down to the parent delegates the controllers (v2).
        let mut level = root.clone();
        let mut levels = vec![root.clone()];
        for c in plan.parent_cgroup.components() {
            level.push(c);
            levels.push(level.clone());
        }
        for l in &levels {
            if !l.exists() {
                created
                    .mkdirs(l)
                    .map_err(|e| format!("cannot make cgroup {}: {e}", l.display()))?;
                if plan.cgroup_version == 1 && controllers.iter().any(|c| c == "cpuset") {
                    inherit_cpuset(l)?;
                }
            }
            if plan.cgroup_version == 2 {
                enable_controllers(l, &controllers)?;
            }
        }
        std::fs::create_dir(&dir).map_err(|e| format!("cannot make cgroup {}: {e}", dir.display()))?;
        created.dirs.push(dir.clone());
        let orig = own.get(&root).cloned().unwrap_or_default();
        created
            .cgroups
            .push((dir.clone(), root.join(orig).join("cgroup.procs")));
        if plan.cgroup_version == 1 && controllers.iter().any(|c| c == "cpuset") {
            inherit_cpuset(&dir)?;
        }
        for s in settings {
            let f = dir.join(&s.file);
            if !f.exists() {
                return Err(format!(
                    "--cgroup {}={}: cgroup {} has no file {:?}",
                    s.file,
                    s.value,
                    dir.display(),
                    s.file
                ));
            }
            std::fs::write(&f, &s.value)
                .map_err(|e| format!("--cgroup {}={}: cannot write {}: {e}", s.file, s.value, f.display()))?;
        }
        vm.dirs.push(dir);
    }
    Ok(vm)
}

/// A new v1 cpuset cgroup has empty cpus/mems; it takes its parent's.
fn inherit_cpuset(dir: &Path) -> Result<(), String> {
    for f in ["cpuset.cpus", "cpuset.mems"] {
        let mine = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        if mine.trim().is_empty() {
            if let Some(parent) = dir.parent() {
                let v = std::fs::read_to_string(parent.join(f)).unwrap_or_default();
                std::fs::write(dir.join(f), v.trim())
                    .map_err(|e| format!("cannot write {}/{f}: {e}", dir.display()))?;
            }
        }
    }
    Ok(())
}

/// Writes `+controller` into a v2 level's cgroup.subtree_control where missing.
fn enable_controllers(level: &Path, controllers: &[String]) -> Result<(), String> {
    let f = level.join("cgroup.subtree_control");
    let on = std::fs::read_to_string(&f).unwrap_or_default();
    for c in controllers {
        if !on.split_whitespace().any(|x| x == c) {
            std::fs::write(&f, format!("+{c}")).map_err(|e| {
                format!(
                    "cannot enable the {c:?} controller for children of cgroup {}: {e}",
                    level.display()
                )
            })?;
        }
    }
    Ok(())
}

/// Moves the calling process into the VM's cgroups.
pub fn join(vm: &VmCgroups) -> Result<(), String> {
    let pid = std::process::id().to_string();
    for d in &vm.dirs {
        let f = d.join("cgroup.procs");
        std::fs::write(&f, &pid).map_err(|e: io::Error| format!("cannot move into cgroup {}: {e}", d.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_parse() {
        let m = parse_mounts(
            "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,relatime,cpu,cpuacct 0 0\ncgroup2 /sys/fs/cgroup/un\\040ified cgroup2 rw 0 0\n",
        );
        assert_eq!(m[0].0, Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert!(m[0].2.iter().any(|o| o == "cpuacct"));
        assert_eq!(m[1].0, Path::new("/sys/fs/cgroup/un ified"));
        assert_eq!(m[1].1, "cgroup2");
        assert_eq!(unescape("a\\134b\\"), "a\\b\\");
    }
}
