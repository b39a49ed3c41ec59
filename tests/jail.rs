//! `kvmkit jail` (Firecracker's jailer): a real guest runs jailed with an
//! unprivileged uid, no capabilities, seccomp and the chroot as its root;
//! bad input gets one line and leaves nothing behind; cgroup limits apply.
//! Needs root (mknod, namespaces, cgroups); skipped with a reason without it.

mod common;

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const UID: &str = "12345";

fn is_root() -> bool {
    // SAFETY: geteuid has no arguments.
    unsafe { libc::geteuid() == 0 }
}

/// A fresh, empty chroot base for one test, removed when dropped.
struct Base(PathBuf);

impl Base {
    fn new(tag: &str) -> Base {
        let p = std::env::temp_dir().join(format!("kvmkit-it-jail-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("base");
        Base(p)
    }
    fn s(&self) -> &str {
        self.0.to_str().expect("utf-8")
    }
    /// Every path under the base.
    fn contents(&self) -> Vec<PathBuf> {
        fn walk(p: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                out.push(e.path());
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(&e.path(), out);
                }
            }
        }
        let mut v = Vec::new();
        walk(&self.0, &mut v);
        v
    }
}

impl Drop for Base {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn jail_args<'a>(id: &'a str, base: &'a Base, extra: &[&'a str], vm: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "jail",
        "--id",
        id,
        "--exec-file",
        common::kvmkit(),
        "--uid",
        UID,
        "--gid",
        UID,
        "--chroot-base-dir",
        base.s(),
    ];
    a.extend_from_slice(extra);
    a.push("--");
    a.extend_from_slice(vm);
    a
}

fn spawn(args: &[&str]) -> Child {
    Command::new(common::kvmkit())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kvmkit jail")
}

/// Reads the child's stdout until `marker` shows (or 60 s pass).
fn wait_for(child: &mut Child, marker: &str) -> String {
    let mut out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while Instant::now() < deadline && !String::from_utf8_lossy(&seen).contains(marker) {
        if let Ok(c) = rx.recv_timeout(Duration::from_millis(100)) {
            seen.extend_from_slice(&c);
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

fn status_field(pid: u32, task: &str, key: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{task}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A jailed VM (`kvmkit jail ... -- run --guest --workload ticks:100`)
/// runs with uid 12345, no capabilities, seccomp mode 2 on every thread,
/// and the chroot as its root, holding only the binary, its libraries and
/// two device nodes.
#[test]
fn jailed_vm_runs_unprivileged_in_its_chroot() {
    if !is_root() {
        eprintln!("skipped: the jailer needs root");
        return;
    }
    let base = Base::new("run");
    let id = format!("t-{}", std::process::id());
    let args = jail_args(
        &id,
        &base,
        &[],
        &[
            "run",
            "--guest",
            "--no-stdin",
            "--timeout",
            "60",
            "--workload",
            "ticks:100",
        ],
    );
    let mut child = spawn(&args);
    let out = wait_for(&mut child, "tick=2");
    let pid = child.id();
    let chroot = base.0.join("kvmkit").join(&id).join("root");
    let tasks: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let mut report = Vec::new();
    for t in &tasks {
        report.push((
            t.clone(),
            status_field(pid, t, "Uid:"),
            status_field(pid, t, "Gid:"),
            status_field(pid, t, "CapEff:"),
            status_field(pid, t, "CapPrm:"),
            status_field(pid, t, "CapBnd:"),
            status_field(pid, t, "Seccomp:"),
        ));
    }
    let root_meta = std::fs::metadata(format!("/proc/{pid}/root/"));
    let mut root_entries: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root/"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    root_entries.sort();
    let chroot_meta = std::fs::metadata(&chroot).expect("chroot exists while the VM runs");
    kill(&mut child);
    let mut err = String::new();
    let _ = child.stderr.take().expect("stderr").read_to_string(&mut err);
    assert!(
        out.contains("tick=2"),
        "the jailed guest did not run:\n{out}\nstderr:\n{err}"
    );
    assert!(tasks.len() >= 3, "threads: {tasks:?}");
    for (t, uid, gid, eff, prm, bnd, sec) in &report {
        assert_eq!(uid.split_whitespace().collect::<Vec<_>>(), [UID; 4], "task {t} uid");
        assert_eq!(gid.split_whitespace().collect::<Vec<_>>(), [UID; 4], "task {t} gid");
        assert_eq!(eff, "0000000000000000", "task {t} CapEff");
        assert_eq!(prm, "0000000000000000", "task {t} CapPrm");
        assert_eq!(bnd, "0000000000000000", "task {t} CapBnd");
        assert_eq!(sec, "2", "task {t} Seccomp");
    }
    let root_meta = root_meta.expect("/proc/PID/root");
    assert_eq!(
        (root_meta.dev(), root_meta.ino()),
        (chroot_meta.dev(), chroot_meta.ino()),
        "the VM's root is the chroot"
    );
    for e in &root_entries {
        assert!(
            ["kvmkit", "dev", "lib", "lib64", "usr"].contains(&e.as_str()),
            "unexpected {e} in the jail: {root_entries:?}"
        );
    }
    assert!(
        root_entries.contains(&"kvmkit".to_string()) && root_entries.contains(&"dev".to_string()),
        "{root_entries:?}"
    );
    let kvm = std::fs::metadata(chroot.join("dev/kvm")).expect("dev/kvm");
    assert_eq!(kvm.rdev(), std::fs::metadata("/dev/kvm").expect("host kvm").rdev());
    assert_eq!(kvm.uid(), 12345);
}

/// The same through a symlink named `jailer`, with Firecracker's command
/// line: the workload's result comes out and the jailer's status is the VM's.
#[test]
fn jailer_symlink_runs_a_workload_to_its_result() {
    if !is_root() {
        eprintln!("skipped: the jailer needs root");
        return;
    }
    let base = Base::new("sym");
    let link = base.0.join("jailer");
    std::os::unix::fs::symlink(common::kvmkit(), &link).expect("symlink");
    let id = format!("t-{}", std::process::id());
    let args = jail_args(
        &id,
        &base,
        &[],
        &[
            "run",
            "--guest",
            "--no-stdin",
            "--timeout",
            "60",
            "--workload",
            "primes:20000",
        ],
    );
    let out = Command::new(&link)
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .expect("jailer");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("primes: N=20000 count=2262"),
        "status {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // A jail is the user's to remove once the VM is done (as with Firecracker).
    assert!(base.0.join("kvmkit").join(&id).join("root/kvmkit").exists());
}

/// Runs a jail that must fail; returns its single stderr line.
fn refused(args: &[&str], group_leader: bool) -> String {
    let mut cmd = Command::new(common::kvmkit());
    cmd.args(args).stdin(Stdio::null());
    if group_leader {
        cmd.process_group(0);
    }
    let out = cmd.output().expect("spawn");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} was not refused; stderr:\n{err}");
    assert_eq!(err.trim().lines().count(), 1, "{args:?}: not one line:\n{err}");
    assert!(
        String::from_utf8_lossy(&out.stdout).trim().is_empty(),
        "{args:?} printed on stdout"
    );
    err
}

/// Bad input: one line, a non-zero status, and nothing left behind.
#[test]
fn bad_input_is_refused_and_leaves_nothing() {
    if !is_root() {
        eprintln!("skipped: the jailer needs root");
        return;
    }
    let base = Base::new("bad");
    let vm = ["run", "--guest", "--workload", "idle"];
    let mut a = jail_args("t-1", &base, &[], &vm);
    a[6] = "0";
    let e = refused(&a, false);
    assert!(e.contains("--uid 0"), "{e}");
    let mut a = jail_args("t-1", &base, &[], &vm);
    a[8] = "0";
    assert!(refused(&a, false).contains("--gid 0"));
    let mut a = jail_args("t-1", &base, &[], &vm);
    a[4] = "/nonexistent/kvmkit";
    assert!(refused(&a, false).contains("/nonexistent/kvmkit"));
    let mut a = jail_args("t-1", &base, &[], &vm);
    a[4] = "/tmp";
    assert!(refused(&a, false).contains("not a regular file"));
    for id in ["a/b", "", "x_y", &"a".repeat(65)] {
        let e = refused(&jail_args(id, &base, &[], &vm), false);
        assert!(e.contains("--id"), "{e}");
    }
    for bad in ["memory", "memory.max", "../x.max=1"] {
        let e = refused(&jail_args("t-1", &base, &["--cgroup", bad], &vm), false);
        assert!(e.contains("--cgroup"), "{e}");
    }
    let e = refused(&jail_args("t-1", &base, &["--resource-limit", "cpu=1"], &vm), false);
    assert!(e.contains("--resource-limit"), "{e}");
    let e = refused(&jail_args("t-1", &base, &["--netns", "/etc/hostname"], &vm), false);
    assert!(e.contains("not a network namespace"), "{e}");
    assert_eq!(base.contents(), Vec::<PathBuf>::new(), "left behind");

    // A controller no hierarchy has: found out after the chroot was built,
    // which is then removed again.
    for v in ["1", "2"] {
        let e = refused(
            &jail_args(
                "t-1",
                &base,
                &["--cgroup-version", v, "--cgroup", "nosuchctl.max=1"],
                &vm,
            ),
            false,
        );
        assert!(e.contains("nosuchctl"), "{e}");
        assert_eq!(base.contents(), Vec::<PathBuf>::new(), "left behind (v{v})");
    }

    // A failure after the jailer entered its namespaces (--daemonize from a
    // process group leader: setsid fails): the clean-up helper removes it all.
    let e = refused(&jail_args("t-2", &base, &["--daemonize"], &vm), true);
    assert!(e.contains("setsid"), "{e}");
    assert_eq!(
        base.contents(),
        Vec::<PathBuf>::new(),
        "left behind after a late failure"
    );

    // An existing chroot is not ours: refused and left as it was.
    let root = base.0.join("kvmkit/t-3/root");
    std::fs::create_dir_all(&root).expect("mkdir");
    std::fs::write(root.join("theirs"), "x").expect("write");
    let e = refused(&jail_args("t-3", &base, &[], &vm), false);
    assert!(e.contains("already exists"), "{e}");
    let left = base.contents();
    assert_eq!(left.len(), 4, "{left:?}");
    assert!(root.join("theirs").exists());
}

/// Where the memory controller is, and its limit file: cgroup v2 if the
/// unified hierarchy has it, else v1.
fn memory_hierarchy() -> Option<(&'static str, PathBuf, &'static str)> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    for l in mounts.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        if f.len() > 3 && f[2] == "cgroup2" {
            let ctl = std::fs::read_to_string(Path::new(f[1]).join("cgroup.controllers")).unwrap_or_default();
            if ctl.split_whitespace().any(|c| c == "memory") {
                return Some(("2", PathBuf::from(f[1]), "memory.max"));
            }
        }
    }
    for l in mounts.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        if f.len() > 3 && f[2] == "cgroup" && f[3].split(',').any(|o| o == "memory") {
            return Some(("1", PathBuf::from(f[1]), "memory.limit_in_bytes"));
        }
    }
    None
}

/// The VM runs in `<hierarchy>/<parent>/<id>` with the memory limit
/// written; a limit below what the guest touches ends the VM (OOM kill);
/// a bad value is refused with the cgroup removed again.
#[test]
fn cgroup_memory_limit_applies() {
    if !is_root() {
        eprintln!("skipped: the jailer needs root");
        return;
    }
    let Some((version, mnt, file)) = memory_hierarchy() else {
        eprintln!("skipped: no cgroup hierarchy (v1 or v2) has the memory controller here");
        return;
    };
    if version == "1" {
        eprintln!("note: the cgroup v2 hierarchy here has no memory controller; testing --cgroup-version 1");
    }
    let base = Base::new("cg");
    let parent = format!("kvmkit-it-{}", std::process::id());
    let id = "t-cg";
    let cg = mnt.join(&parent).join(id);
    let limit = format!("{file}=1073741824");
    let extra = [
        "--cgroup-version",
        version,
        "--parent-cgroup",
        &parent,
        "--cgroup",
        &limit,
    ];
    let args = jail_args(
        id,
        &base,
        &extra,
        &[
            "run",
            "--guest",
            "--no-stdin",
            "--timeout",
            "60",
            "--workload",
            "ticks:100",
        ],
    );
    let mut child = spawn(&args);
    let out = wait_for(&mut child, "tick=1");
    let pid = child.id();
    let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default();
    let limit_read = std::fs::read_to_string(cg.join(file)).unwrap_or_default();
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    kill(&mut child);
    let _ = std::fs::remove_dir(&cg);
    assert!(out.contains("tick=1"), "the jailed guest did not run:\n{out}");
    assert!(
        procs.lines().any(|p| p == pid.to_string()),
        "pid {pid} not in {}: {procs:?}",
        cg.display()
    );
    assert!(own.contains(&format!("/{parent}/{id}")), "{own}");
    assert_eq!(limit_read.trim(), "1073741824");

    // Enforced: 200 MiB of guest memory touched under a 64 MiB limit.
    let _ = std::fs::remove_dir_all(base.0.join("kvmkit"));
    let small = format!("{file}=67108864");
    let extra = [
        "--cgroup-version",
        version,
        "--parent-cgroup",
        &parent,
        "--cgroup",
        &small,
    ];
    let args = jail_args(
        id,
        &base,
        &extra,
        &[
            "run",
            "--guest",
            "--no-stdin",
            "--timeout",
            "60",
            "--workload",
            "memtest:200",
        ],
    );
    let out = common::run(&args, Duration::from_secs(90));
    let _ = std::fs::remove_dir(&cg);
    assert!(
        !out.stdout.contains("failed=0 status=0"),
        "memtest:200 finished under a 64 MiB limit:\n{}",
        out.stdout
    );
    assert_eq!(
        out.code, None,
        "expected the OOM killer's SIGKILL; stderr:\n{}",
        out.stderr
    );

    // A value the kernel refuses: one line, the cgroup and the chroot removed.
    let _ = std::fs::remove_dir_all(base.0.join("kvmkit"));
    let _ = std::fs::remove_dir(mnt.join(&parent));
    let bad = format!("{file}=lots");
    let extra = [
        "--cgroup-version",
        version,
        "--parent-cgroup",
        &parent,
        "--cgroup",
        &bad,
    ];
    let e = refused(&jail_args(id, &base, &extra, &["run", "--guest"]), false);
    assert!(e.contains(file), "{e}");
    assert!(!cg.exists(), "{} left behind", cg.display());
    assert!(
        !mnt.join(&parent).exists(),
        "the parent cgroup the jailer made was left behind"
    );
    assert_eq!(base.contents(), Vec::<PathBuf>::new());
}

/// A disk bind-mounted in with `--file` and a tap made beforehand in the
/// network namespace given with `--netns` (the jailed VMM has no
/// CAP_NET_ADMIN to make one): the guest's blk-pattern and net-tx pass.
#[test]
fn jailed_vm_uses_a_bound_disk_and_a_tap_in_its_netns() {
    if !is_root() {
        eprintln!("skipped: the jailer needs root");
        return;
    }
    let base = Base::new("io");
    let img = std::env::temp_dir().join(format!("kvmkit-it-jail-{}.img", std::process::id()));
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(16 << 20))
        .expect("image");
    std::os::unix::fs::chown(&img, Some(12345), Some(12345)).expect("chown");
    let file = format!("{}:/disks/a.img", img.display());
    let id = format!("t-{}", std::process::id());
    let args = jail_args(
        &id,
        &base,
        &["--file", &file],
        &[
            "run",
            "--guest",
            "--no-stdin",
            "--timeout",
            "60",
            "--disk",
            "path=/disks/a.img",
            "--workload",
            "blk-pattern",
        ],
    );
    let out = common::run(&args, Duration::from_secs(90));
    let _ = std::fs::remove_file(&img);
    assert!(
        out.stdout.contains("failed=0 status=0") && out.code == Some(0),
        "blk-pattern, jailed:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    // The mount was the VM's only: on the host the jail holds an empty placeholder.
    assert_eq!(
        std::fs::metadata(base.0.join("kvmkit").join(&id).join("root/disks/a.img"))
            .map(|m| m.len())
            .ok(),
        Some(0)
    );

    let ns = format!("kvmkit-it-{}", std::process::id());
    let ip = |a: &[&str]| {
        Command::new("ip")
            .args(a)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !ip(&["netns", "add", &ns]) {
        eprintln!("skipped the net part: `ip netns add` failed or ip is missing");
        return;
    }
    let made = ip(&[
        "-n", &ns, "tuntap", "add", "jtap0", "mode", "tap", "user", UID, "group", UID, "vnet_hdr",
    ]) && ip(&["-n", &ns, "link", "set", "jtap0", "up"]);
    let netns = format!("/var/run/netns/{ns}");
    let id2 = format!("t-{}-net", std::process::id());
    let args = jail_args(
        &id2,
        &base,
        &["--netns", &netns],
        &[
            "run",
            "--guest",
            "--no-stdin",
            "--timeout",
            "60",
            "--net",
            "tap=jtap0",
            "--workload",
            "net-tx:100",
        ],
    );
    let out = made.then(|| common::run(&args, Duration::from_secs(90)));
    let stats = Command::new("ip")
        .args(["-n", &ns, "-s", "link", "show", "jtap0"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    ip(&["netns", "del", &ns]);
    assert!(made, "could not make a tap in the namespace");
    let out = out.expect("ran");
    assert!(
        out.stdout.contains("net-tx: frames=100") && out.code == Some(0),
        "net-tx, jailed:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    // The host side of the tap (in the namespace) received the 100 frames.
    let rx = stats.unwrap_or_default();
    let packets = rx
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("RX:"))
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("");
    assert_eq!(packets, "100", "{rx}");
}

/// Firecracker's way: the exec file is kvmkit through a symlink named
/// `firecracker` (followed for the copy, the name kept), so it gets the
/// jailer's `--id=` and start-time arguments and runs in drop-in mode; the
/// kernel and config file come in with `--file ...:ro`.
#[test]
fn firecracker_named_exec_runs_in_drop_in_mode() {
    if !is_root() {
        eprintln!("skipped: the jailer needs root");
        return;
    }
    let base = Base::new("fc");
    let files = std::env::temp_dir().join(format!("kvmkit-it-jail-fcfiles-{}", std::process::id()));
    std::fs::create_dir_all(&files).expect("dir");
    let fc = files.join("firecracker");
    std::os::unix::fs::symlink(common::kvmkit(), &fc).expect("symlink");
    let elf = files.join("guest.elf");
    let made = common::run(
        &["image", "guest", "--out", elf.to_str().expect("utf-8")],
        Duration::from_secs(30),
    );
    assert_eq!(made.code, Some(0), "{}", made.stderr);
    let cfg = files.join("vm.json");
    std::fs::write(
        &cfg,
        r#"{"boot-source": {"kernel_image_path": "/guest.elf", "boot_args": "kvmkit.workload=primes:20000"},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}}"#,
    )
    .expect("config");
    let (elf_arg, cfg_arg) = (
        format!("{}:ro", elf.display()),
        format!("{}:/vm.json:ro", cfg.display()),
    );
    let id = format!("fc-{}", std::process::id());
    let out = Command::new(common::kvmkit())
        .args([
            "jail",
            "--id",
            &id,
            "--exec-file",
            fc.to_str().expect("utf-8"),
            "--uid",
            UID,
            "--gid",
            UID,
        ])
        .args(["--chroot-base-dir", base.s(), "--file", &elf_arg, "--file", &cfg_arg])
        .args(["--", "--no-api", "--config-file", "/vm.json"])
        .stdin(Stdio::null())
        .output()
        .expect("jail");
    let _ = std::fs::remove_dir_all(&files);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("primes: N=20000 count=2262"),
        "{:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let inside = base.0.join("firecracker").join(&id).join("root/firecracker");
    let meta = std::fs::symlink_metadata(&inside).expect("exec file in the jail");
    assert!(
        meta.is_file(),
        "the jail's firecracker is not a regular file (a symlink was copied?)"
    );
}

/// `--daemonize --new-pid-ns`: the jailer exits 0 once the VMM has exec'd
/// as pid 1 of a new pid namespace, whose host pid is in
/// `<chroot>/kvmkit.pid`; the VMM's stdio is /dev/null and it runs as 12345.
#[test]
fn daemonized_vm_in_a_new_pid_namespace() {
    if !is_root() {
        eprintln!("skipped: the jailer needs root");
        return;
    }
    let base = Base::new("pidns");
    let id = format!("t-{}", std::process::id());
    let args = jail_args(
        &id,
        &base,
        &["--daemonize", "--new-pid-ns"],
        &[
            "run",
            "--guest",
            "--no-stdin",
            "--timeout",
            "30",
            "--workload",
            "ticks:100",
        ],
    );
    let out = Command::new(common::kvmkit())
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .expect("jail");
    assert!(
        out.status.success(),
        "{:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let pidfile = base.0.join("kvmkit").join(&id).join("root/kvmkit.pid");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let stdout = std::fs::read_link(format!("/proc/{pid}/fd/1")).unwrap_or_default();
    // SAFETY: pid is the VMM this test started (through the jailer).
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or("")
            .trim()
            .to_owned()
    };
    assert_eq!(field("NSpid:").split_whitespace().last(), Some("1"), "{status}");
    assert_eq!(field("Uid:").split_whitespace().next(), Some(UID), "{status}");
    assert_eq!(field("CapEff:"), "0000000000000000");
    assert_eq!(stdout, Path::new("/dev/null"));
}

/// A cgroup2 hierarchy mounted by the test, unmounted (and its test cgroups
/// removed) when dropped.
struct Cgroup2Mount {
    dir: PathBuf,
    parent: String,
}

impl Cgroup2Mount {
    /// Mounts cgroup2 at a fresh directory, or says why it cannot.
    fn new(parent: String) -> Result<Cgroup2Mount, String> {
        let dir = std::env::temp_dir().join(format!("kvmkit-it-cg2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let c = std::ffi::CString::new(dir.to_str().expect("utf-8")).expect("path");
        // SAFETY: NUL-terminated strings; no data for cgroup2.
        let r = unsafe { libc::mount(c"none".as_ptr(), c.as_ptr(), c"cgroup2".as_ptr(), 0, std::ptr::null()) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            let _ = std::fs::remove_dir(&dir);
            return Err(format!("mount -t cgroup2 none {}: {e}", dir.display()));
        }
        Ok(Cgroup2Mount { dir, parent })
    }
}

impl Drop for Cgroup2Mount {
    fn drop(&mut self) {
        let p = self.dir.join(&self.parent);
        for e in std::fs::read_dir(&p).into_iter().flatten().flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                let _ = std::fs::remove_dir(e.path());
            }
        }
        let _ = std::fs::remove_dir(&p);
        let c = std::ffi::CString::new(self.dir.to_str().expect("utf-8")).expect("path");
        // SAFETY: a NUL-terminated path this test mounted.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// `--cgroup-version 2` against a cgroup2 hierarchy the test mounts itself
/// and names with KVMKIT_JAIL_CGROUP2_MOUNT: the VM runs in
/// `<mount>/<parent>/<id>` with the value written; a controller the
/// hierarchy lacks, or a mount point that is not cgroup2, is refused with
/// one line and nothing left. On a host whose memory controller is bound
/// to cgroup v1 (this lab's), the v2 hierarchy offers only what v1 left
/// (here `hugetlb`): the limit tested is then that controller's, and the
/// OOM check runs only where v2 has `memory`.
#[test]
fn cgroup_v2_at_a_given_mount() {
    if !is_root() {
        eprintln!("skipped: the jailer needs root");
        return;
    }
    let parent = format!("kvmkit-it-cg2-{}", std::process::id());
    let mnt = match Cgroup2Mount::new(parent.clone()) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("skipped: cannot mount a cgroup2 hierarchy here ({e})");
            return;
        }
    };
    let controllers = std::fs::read_to_string(mnt.dir.join("cgroup.controllers")).unwrap_or_default();
    let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
    // A limit each controller takes, and how the kernel writes it back.
    let (setting, file, value) = if has("memory") {
        ("memory.max=1073741824", "memory.max", "1073741824")
    } else if has("pids") {
        ("pids.max=64", "pids.max", "64")
    } else if has("hugetlb") && Path::new("/sys/kernel/mm/hugepages/hugepages-2048kB").exists() {
        ("hugetlb.2MB.max=4194304", "hugetlb.2MB.max", "4194304")
    } else {
        eprintln!(
            "skipped: the cgroup2 hierarchy here has no controller to limit (cgroup.controllers: {:?})",
            controllers.trim()
        );
        return;
    };
    eprintln!(
        "note: cgroup2 at {} offers {:?}; testing {setting}",
        mnt.dir.display(),
        controllers.trim()
    );
    let env = ("KVMKIT_JAIL_CGROUP2_MOUNT", mnt.dir.to_str().expect("utf-8").to_owned());
    let base = Base::new("cg2");
    let id = "t-cg2";
    let cg = mnt.dir.join(&parent).join(id);
    let extra = ["--cgroup-version", "2", "--parent-cgroup", &parent, "--cgroup", setting];
    let vm = [
        "run",
        "--guest",
        "--no-stdin",
        "--timeout",
        "60",
        "--workload",
        "ticks:100",
    ];
    let mut child = Command::new(common::kvmkit())
        .args(jail_args(id, &base, &extra, &vm))
        .env(env.0, &env.1)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kvmkit jail");
    let out = wait_for(&mut child, "tick=1");
    let pid = child.id();
    let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default();
    let read_back = std::fs::read_to_string(cg.join(file)).unwrap_or_default();
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let uid = status_field(pid, &pid.to_string(), "Uid:");
    kill(&mut child);
    let _ = std::fs::remove_dir(&cg);
    assert!(out.contains("tick=1"), "the jailed guest did not run:\n{out}");
    assert!(
        procs.lines().any(|p| p == pid.to_string()),
        "pid {pid} not in {}: {procs:?}",
        cg.display()
    );
    assert!(
        own.lines().any(|l| l == format!("0::/{parent}/{id}")),
        "/proc/{pid}/cgroup: {own}"
    );
    assert_eq!(read_back.trim(), value, "{file}");
    assert!(uid.starts_with(UID), "Uid: {uid}");

    // The limit is enforced where v2 has the memory controller.
    if has("memory") {
        let _ = std::fs::remove_dir_all(base.0.join("kvmkit"));
        let extra = [
            "--cgroup-version",
            "2",
            "--parent-cgroup",
            &parent,
            "--cgroup",
            "memory.max=67108864",
        ];
        let vm = [
            "run",
            "--guest",
            "--no-stdin",
            "--timeout",
            "60",
            "--workload",
            "memtest:200",
        ];
        let out = Command::new(common::kvmkit())
            .args(jail_args(id, &base, &extra, &vm))
            .env(env.0, &env.1)
            .stdin(Stdio::null())
            .output()
            .expect("spawn");
        let _ = std::fs::remove_dir(&cg);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            !stdout.contains("failed=0 status=0"),
            "memtest:200 finished under a 64 MiB memory.max:\n{stdout}"
        );
        assert_eq!(out.status.code(), None, "expected the OOM killer's SIGKILL");
    } else {
        eprintln!("note: no memory controller in this cgroup2 hierarchy: memory.max enforcement not tested");
    }

    // Refused with one line, nothing left: a controller the hierarchy lacks
    // (or, where it has memory, a value the kernel refuses), and a
    // KVMKIT_JAIL_CGROUP2_MOUNT that is not a cgroup2 mount.
    let _ = std::fs::remove_dir_all(base.0.join("kvmkit"));
    let _ = std::fs::remove_dir(mnt.dir.join(&parent));
    let (bad, want) = if has("memory") {
        ("memory.max=lots", "memory.max")
    } else {
        ("memory.max=1073741824", "has no \"memory\" controller")
    };
    let not_cg2 = base.s().to_owned();
    for (setting, env_value, want) in [
        (bad, env.1.as_str(), want),
        (setting, not_cg2.as_str(), "not a cgroup2 mount"),
    ] {
        let extra = ["--cgroup-version", "2", "--parent-cgroup", &parent, "--cgroup", setting];
        let out = Command::new(common::kvmkit())
            .args(jail_args(id, &base, &extra, &["run", "--guest"]))
            .env(env.0, env_value)
            .stdin(Stdio::null())
            .output()
            .expect("spawn");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{setting} with {env_value} was not refused");
        assert_eq!(err.trim().lines().count(), 1, "not one line:\n{err}");
        assert!(err.contains(want), "{err}");
        assert!(!cg.exists(), "{} left behind", cg.display());
        assert!(
            !mnt.dir.join(&parent).exists(),
            "the parent cgroup the jailer made was left behind"
        );
        assert_eq!(base.contents(), Vec::<PathBuf>::new());
    }
}
