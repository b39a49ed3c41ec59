//! `kvmkit jail`'s command line (Firecracker's jailer's) and its checks.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::Parser;

/// Firecracker's jailer command line: build a chroot, cgroups and
/// namespaces for one VM, drop to an unprivileged uid and exec the VMM.
#[derive(Debug, Clone, Parser)]
#[command(name = "jailer", disable_version_flag = true)]
pub struct JailArgs {
    /// Unique VM id: letters, digits and '-', at most 64 characters.
    #[arg(long, value_name = "ID")]
    pub id: String,
    /// The VMM binary to copy into the jail and exec (kvmkit, or kvmkit named `firecracker`).
    #[arg(long, value_name = "PATH")]
    pub exec_file: PathBuf,
    /// User id the VMM runs as (not 0).
    #[arg(long, value_name = "UID")]
    pub uid: u32,
    /// Group id the VMM runs as (not 0).
    #[arg(long, value_name = "GID")]
    pub gid: u32,
    /// Where jails are built: `<base>/<exec-file name>/<id>/root`.
    #[arg(long, value_name = "DIR", default_value = "/srv/jailer")]
    pub chroot_base_dir: PathBuf,
    /// Network namespace to join (e.g. /var/run/netns/NAME).
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,
    /// setsid() and stdin, stdout, stderr to /dev/null before the exec.
    #[arg(long)]
    pub daemonize: bool,
    /// Exec the VMM as pid 1 of a new pid namespace (its pid is written to
    /// `<chroot>/<exec-file name>.pid`).
    #[arg(long)]
    pub new_pid_ns: bool,
    /// Cgroup hierarchy: 1 (a mount per controller) or 2 (unified).
    #[arg(long, value_name = "1|2", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub cgroup_version: u8,
    /// A cgroup file and its value, e.g. memory.max=512M or cpu.max="50000 100000" (repeatable).
    #[arg(long = "cgroup", value_name = "FILE=VALUE")]
    pub cgroups: Vec<String>,
    /// Where the VM's cgroup is made, relative to the hierarchy's root (default: the exec file's name).
    #[arg(long, value_name = "PATH")]
    pub parent_cgroup: Option<PathBuf>,
    /// A resource limit: fsize=BYTES or no-file=N (repeatable; no-file is 2048 unless given).
    #[arg(long = "resource-limit", value_name = "RESOURCE=N")]
    pub resource_limits: Vec<String>,
    /// kvmkit's addition: bind-mount a host file or directory (a kernel, a disk, a
    /// config file) into the jail at JAIL_PATH (default `/<file name>`), read-only with `:ro`
    /// (repeatable). The mount lives only in the VM's mount namespace; the file must already be
    /// readable (and writable, for a writable disk) by --uid/--gid.
    #[arg(long = "file", value_name = "HOST_PATH[:JAIL_PATH][:ro]")]
    pub files: Vec<String>,
    /// Arguments for the exec file (after `--`).
    #[arg(last = true, value_name = "ARGS")]
    pub exec_args: Vec<OsString>,
}

/// One `--cgroup FILE=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupSetting {
    /// The controller: the file name's part before the first '.'.
    pub controller: String,
    /// The file, e.g. `memory.max`.
    pub file: String,
    /// What is written to it.
    pub value: String,
}

/// One `--file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailFile {
    /// On the host (absolute).
    pub src: PathBuf,
    /// Inside the jail (absolute, no `..`).
    pub dest: PathBuf,
    /// Mounted read-only.
    pub ro: bool,
}

/// Parses `--file HOST_PATH[:JAIL_PATH][:ro]` (the host path must exist).
pub fn parse_file(s: &str) -> Result<JailFile, String> {
    let mut parts: Vec<&str> = s.split(':').collect();
    let ro = parts.len() > 1 && parts.last() == Some(&"ro");
    if ro {
        parts.pop();
    }
    let (src, dest) = match parts.as_slice() {
        [src] => (*src, None),
        [src, dest] => (*src, Some(*dest)),
        _ => return Err(format!("--file {s:?}: expected HOST_PATH[:JAIL_PATH][:ro]")),
    };
    let src = std::path::absolute(src).map_err(|e| format!("--file {s:?}: {e}"))?;
    if let Err(e) = std::fs::metadata(&src) {
        return Err(format!("--file {}: {e}", src.display()));
    }
    let dest = match dest {
        Some(d) => PathBuf::from(d),
        None => Path::new("/").join(src.file_name().ok_or_else(|| format!("--file {s:?}: no file name"))?),
    };
    let inside = dest
        .strip_prefix("/")
        .map_err(|_| format!("--file {s:?}: the jail path must be absolute"))?;
    if inside.as_os_str().is_empty() || check_relative(inside).is_err() {
        return Err(format!(
            "--file {s:?}: the jail path must name a file below / without '..'"
        ));
    }
    Ok(JailFile { src, dest, ro })
}

/// A checked jail request.
#[derive(Debug, Clone)]
pub struct JailPlan {
    /// The VM id.
    pub id: String,
    /// The exec file on the host (absolute, symlinks resolved).
    pub exec_file: PathBuf,
    /// Its file name, which is also its name inside the jail.
    pub exec_name: String,
    /// Uid and gid to drop to.
    pub uid: u32,
    /// See `uid`.
    pub gid: u32,
    /// `<base>/<exec name>/<id>`.
    pub jail_dir: PathBuf,
    /// `<jail_dir>/root`.
    pub chroot_dir: PathBuf,
    /// Network namespace to join.
    pub netns: Option<PathBuf>,
    /// See [`JailArgs::daemonize`].
    pub daemonize: bool,
    /// See [`JailArgs::new_pid_ns`].
    pub new_pid_ns: bool,
    /// 1 or 2.
    pub cgroup_version: u8,
    /// The cgroup settings, in order.
    pub cgroups: Vec<CgroupSetting>,
    /// Parent cgroup, relative.
    pub parent_cgroup: PathBuf,
    /// (RLIMIT_*, value) pairs, no-file always present.
    pub rlimits: Vec<(libc::__rlimit_resource_t, u64)>,
    /// Files bind-mounted into the jail.
    pub files: Vec<JailFile>,
    /// The exec file's arguments.
    pub exec_args: Vec<OsString>,
}

/// The no-file limit Firecracker's jailer sets when none is given.
pub const DEFAULT_NO_FILE: u64 = 2048;

/// Checks an id: letters, digits and '-', 1 to 64 characters.
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(format!(
            "--id {id:?}: an id is 1 to 64 characters, letters, digits and '-' only"
        ));
    }
    Ok(())
}

/// Parses `--cgroup FILE=VALUE`.
pub fn parse_cgroup(s: &str) -> Result<CgroupSetting, String> {
    let bad = || format!("--cgroup {s:?}: expected <controller>.<file>=<value>, e.g. memory.max=512M");
    let (file, value) = s.split_once('=').ok_or_else(bad)?;
    let (controller, rest) = file.split_once('.').ok_or_else(bad)?;
    let name_ok = |t: &str| !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if !name_ok(controller) || !name_ok(rest) || controller.starts_with('.') || value.is_empty() || value.contains('\n')
    {
        return Err(bad());
    }
    if controller == "cgroup" {
        return Err(format!(
            "--cgroup {s:?}: cgroup.* files are the jailer's own (it writes cgroup.procs)"
        ));
    }
    Ok(CgroupSetting {
        controller: controller.to_owned(),
        file: file.to_owned(),
        value: value.to_owned(),
    })
}

/// Parses `--resource-limit RESOURCE=N`.
pub fn parse_rlimit(s: &str) -> Result<(libc::__rlimit_resource_t, u64), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("--resource-limit {s:?}: expected fsize=BYTES or no-file=N"))?;
    let resource = match name {
        "fsize" => libc::RLIMIT_FSIZE,
        "no-file" => libc::RLIMIT_NOFILE,
        _ => {
            return Err(format!(
                "--resource-limit {s:?}: unknown resource {name:?} (fsize, no-file)"
            ))
        }
    };
    let n = value
        .parse::<u64>()
        .map_err(|_| format!("--resource-limit {s:?}: {value:?} is not a number"))?;
    Ok((resource, n))
}

impl JailArgs {
    /// Checks everything that can be checked without changing the host.
    pub fn plan(&self) -> Result<JailPlan, String> {
        check_id(&self.id)?;
        if self.uid == 0 {
            return Err("--uid 0: the jailer drops privileges; give an unprivileged uid".into());
        }
        if self.gid == 0 {
            return Err("--gid 0: the jailer drops privileges; give an unprivileged gid".into());
        }
        let exec_file = std::path::absolute(&self.exec_file)
            .map_err(|e| format!("--exec-file {}: {e}", self.exec_file.display()))?;
        match std::fs::metadata(&exec_file) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Err(format!("--exec-file {}: not a regular file", exec_file.display())),
            Err(e) => return Err(format!("--exec-file {}: {e}", exec_file.display())),
        }
        // A symlink (e.g. `firecracker` -> kvmkit) is followed for the file
        // copied in; the name in the jail stays the one given.
        let exec_src =
            std::fs::canonicalize(&exec_file).map_err(|e| format!("--exec-file {}: {e}", exec_file.display()))?;
        let exec_name = exec_file
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| format!("--exec-file {}: no usable file name", exec_file.display()))?
            .to_owned();
        let base = std::path::absolute(&self.chroot_base_dir)
            .map_err(|e| format!("--chroot-base-dir {}: {e}", self.chroot_base_dir.display()))?;
        let jail_dir = base.join(&exec_name).join(&self.id);
        let chroot_dir = jail_dir.join("root");
        if chroot_dir.symlink_metadata().is_ok() {
            return Err(format!(
                "{} already exists: it is not this jailer's to use (ids must be unique; remove it if it is a leftover)",
                chroot_dir.display()
            ));
        }
        let cgroups = self
            .cgroups
            .iter()
            .map(|s| parse_cgroup(s))
            .collect::<Result<Vec<_>, _>>()?;
        let parent_cgroup = self.parent_cgroup.clone().unwrap_or_else(|| PathBuf::from(&exec_name));
        check_relative(&parent_cgroup)?;
        let mut rlimits = self
            .resource_limits
            .iter()
            .map(|s| parse_rlimit(s))
            .collect::<Result<Vec<_>, _>>()?;
        if !rlimits.iter().any(|(r, _)| *r == libc::RLIMIT_NOFILE) {
            rlimits.push((libc::RLIMIT_NOFILE, DEFAULT_NO_FILE));
        }
        if let Some(ns) = &self.netns {
            if let Err(e) = std::fs::metadata(ns) {
                return Err(format!("--netns {}: {e}", ns.display()));
            }
        }
        let files = self
            .files
            .iter()
            .map(|s| parse_file(s))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(JailPlan {
            id: self.id.clone(),
            exec_file: exec_src,
            exec_name,
            uid: self.uid,
            gid: self.gid,
            jail_dir,
            chroot_dir,
            netns: self.netns.clone(),
            daemonize: self.daemonize,
            new_pid_ns: self.new_pid_ns,
            cgroup_version: self.cgroup_version,
            cgroups,
            parent_cgroup,
            rlimits,
            files,
            exec_args: self.exec_args.clone(),
        })
    }
}

/// A `--parent-cgroup` must stay inside the hierarchy.
fn check_relative(p: &Path) -> Result<(), String> {
    use std::path::Component;
    if p.as_os_str().is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(format!(
            "--parent-cgroup {}: a relative path without '..' (e.g. vms/tenant1)",
            p.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(check_id("551e7604-e35c-42b3-b825-416853441234").is_ok());
        assert!(check_id(&"a".repeat(64)).is_ok());
        assert!(check_id(&"a".repeat(65)).is_err());
        assert!(check_id("").is_err());
        assert!(check_id("a/b").is_err());
        assert!(check_id("a_b").is_err());
        assert!(check_id("..").is_err());
    }

    #[test]
    fn cgroups() {
        let c = parse_cgroup("memory.max=512M").expect("ok");
        assert_eq!(
            (c.controller.as_str(), c.file.as_str(), c.value.as_str()),
            ("memory", "memory.max", "512M")
        );
        let c = parse_cgroup("cpu.max=50000 100000").expect("ok");
        assert_eq!(c.value, "50000 100000");
        assert_eq!(parse_cgroup("cpuset.cpus=0-1=").expect("ok").value, "0-1=");
        for bad in [
            "memory",
            "memory.max",
            "memory.max=",
            "max=1",
            "../x.max=1",
            "memory./x=1",
            "cgroup.procs=1",
            ".x=1",
            "memory.max=1\n2",
        ] {
            assert!(parse_cgroup(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rlimits() {
        assert_eq!(parse_rlimit("fsize=100").expect("ok"), (libc::RLIMIT_FSIZE, 100));
        assert_eq!(parse_rlimit("no-file=1024").expect("ok"), (libc::RLIMIT_NOFILE, 1024));
        assert!(parse_rlimit("nofile=1").is_err());
        assert!(parse_rlimit("fsize=-1").is_err());
        assert!(parse_rlimit("fsize").is_err());
    }

    #[test]
    fn exec_argv() {
        let a = JailArgs::try_parse_from([
            "jailer",
            "--id",
            "vm1",
            "--exec-file",
            "/proc/self/exe",
            "--uid",
            "1",
            "--gid",
            "1",
            "--chroot-base-dir",
            "/nonexistent-kvmkit",
            "--",
            "run",
            "--guest",
        ])
        .expect("parse");
        let mut plan = a.plan().expect("plan");
        plan.exec_name = "kvmkit".into();
        assert_eq!(
            super::super::enter::argv(&plan, 5, 6),
            ["/kvmkit", "run", "--guest"].map(OsString::from)
        );
        plan.exec_name = "firecracker".into();
        plan.exec_args = vec!["--no-api".into()];
        assert_eq!(
            super::super::enter::argv(&plan, 5, 6),
            [
                "/firecracker",
                "--id=vm1",
                "--start-time-us=5",
                "--start-time-cpu-us=6",
                "--no-api"
            ]
            .map(OsString::from)
        );
    }

    #[test]
    fn files() {
        let f = parse_file("/etc/hostname").expect("ok");
        assert_eq!(
            (f.src.as_path(), f.dest.as_path(), f.ro),
            (Path::new("/etc/hostname"), Path::new("/hostname"), false)
        );
        let f = parse_file("/etc/hostname:/a/b:ro").expect("ok");
        assert_eq!((f.dest.as_path(), f.ro), (Path::new("/a/b"), true));
        assert!(parse_file("/etc/hostname:ro").expect("ok").ro);
        assert!(parse_file("/nonexistent-kvmkit").is_err());
        assert!(parse_file("/etc/hostname:relative").is_err());
        assert!(parse_file("/etc/hostname:/../x").is_err());
        assert!(parse_file("/etc/hostname:/").is_err());
        assert!(parse_file("/etc/hostname:/a:b:ro").is_err());
    }

    #[test]
    fn parent_cgroup_stays_inside() {
        assert!(check_relative(Path::new("vms/a")).is_ok());
        assert!(check_relative(Path::new("../a")).is_err());
        assert!(check_relative(Path::new("/a")).is_err());
    }

    #[test]
    fn command_line() {
        let a = JailArgs::try_parse_from([
            "jailer",
            "--id",
            "x",
            "--exec-file",
            "/bin/kvmkit",
            "--uid",
            "1",
            "--gid",
            "2",
            "--cgroup-version",
            "2",
            "--cgroup",
            "memory.max=1G",
            "--cgroup",
            "cpu.max=max",
            "--",
            "run",
            "--guest",
        ])
        .expect("parse");
        assert_eq!(a.cgroups.len(), 2);
        assert_eq!(a.exec_args, [OsString::from("run"), OsString::from("--guest")]);
        assert_eq!(a.chroot_base_dir, Path::new("/srv/jailer"));
        assert!(JailArgs::try_parse_from([
            "jailer",
            "--id",
            "x",
            "--exec-file",
            "/k",
            "--uid",
            "1",
            "--gid",
            "2",
            "--cgroup-version",
            "3"
        ])
        .is_err());
    }
}
