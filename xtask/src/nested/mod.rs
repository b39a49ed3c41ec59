//! `cargo xtask nested`: the nested lab.
//!
//! This host's `/dev/kvm` may be PVM, where stock kernels cannot boot. Under QEMU TCG with
//! `-cpu max`, Debian's generic kernel loads the real `kvm_amd` (TCG emulates SVM with NPT),
//! so kvmkit running in that L1 drives a hardware-virtualization-style `/dev/kvm` and boots
//! Debian's stock cloud kernel as L2. One L1 boot runs every requested scenario in sequence;
//! the L1 `/init` (`init.sh`) reports `@@LAB` lines on the serial console, parsed here.

mod assets;
mod cpio;
mod l1;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The L1 scenario runner, `/init` in the L1 initramfs.
const INIT: &str = include_str!("init.sh");

/// Every scenario, in the order a full run uses, with what it proves.
pub const SCENARIOS: &[(&str, &str)] = &[
    (
        "kvm-amd",
        "kvm_amd loads in L1, /dev/kvm exists, `kvmkit check` reports kvm_amd and usable acceleration",
    ),
    (
        "test-guest",
        "kvmkit's own test guest runs primes:100000 (count=9592) and exits 0 on a real SVM /dev/kvm",
    ),
    (
        "test-guest-smp",
        "the same with --cpus 2: both vCPUs come up and report",
    ),
    (
        "linux-cmd",
        "`run --linux -- uname -r` boots Debian's cloud kernel and prints its version, exit 0",
    ),
    (
        "linux-status",
        "the guest command's exit status comes back: `sh -c 'exit 7'` exits 7",
    ),
    ("linux-127", "a missing guest command exits 127"),
    (
        "linux-smp",
        "`--cpus 2 -- nproc` prints 2 (APs brought up by the stock kernel)",
    ),
    (
        "linux-shell",
        "`run --linux` boots to KVMKIT-USERSPACE-READY; typed input reaches the console shell",
    ),
    ("linux-shell-smp", "the same with --cpus 2"),
    ("linux-poweroff", "guest `poweroff -f` ends the VM with status 0"),
    (
        "linux-reboot",
        "guest `reboot -f` ends the VM with status 0 (no reboot loop)",
    ),
    (
        "linux-panic",
        "a guest kernel panic (sysrq c) ends the VM with a non-zero status (no reboot loop)",
    ),
    (
        "linux-timeline",
        "`run --linux --exec-via console --cmdline initcall_debug -- dmesg`: one boot's kernel log with \
         printk times, in the L1 console log; reports the i8042 probe's span, the widest gaps and the slowest \
         initcalls; fails on 'Keylock active' or 'Failed to disable AUX port' (the probe waiting on a timeout) \
         or no i8042 KBD port",
    ),
    (
        "api",
        "`run --api-sock` driven by `kvmkit ctl request` (no curl in L1): machine-config, boot-source (stock \
         kernel + busybox initramfs), InstanceStart; `ctl info` Running; `ctl pause` freezes the guest's \
         per-second counter, `ctl resume` restarts it; `ctl ctrl-alt-del` reboots the guest and the VMM exits 0",
    ),
    (
        "snapshot-linux",
        "a Debian guest at its console shell (`run --linux --exec-via console --api-sock`) writes a random \
         line to a tmpfs file; `ctl pause`, `ctl snapshot`, the VMM is SIGKILLed; a new `run --restore-state \
         --restore-mem --api-sock` process, `ctl resume`, and a command typed on the restored console prints \
         the line; poweroff exits 0. Reports the guest's vmgenid driver and its dmesg after the restore",
    ),
    (
        "snapshot-vsock",
        "snapshot-linux with the guest agent on a vsock device (`run --linux --api-sock --vsock`): `kvmkit exec` \
         answers before the snapshot, an exec left open is closed by the snapshot (transport reset), and after \
         the restore in a new process over the stale socket `kvmkit exec` into the restored guest prints the \
         tmpfs line",
    ),
    (
        "snapshot-vmgenid",
        "the same with Debian's generic kernel (CONFIG_VMGENID=y; the cloud kernel has no vmgenid driver) \
         booted with --kernel/--initrd: after the restore the guest's dmesg says \
         `crng reseeded due to virtual machine fork` (kvmkit's new VMGenID and GED notify reached Linux)",
    ),
    (
        "blk-ext4",
        "`--disk`: the stock virtio_mmio + virtio_blk find the disk (ACPI), the guest mounts a host-made ext4 \
         image, reads /hello.txt, writes /new and syncs; after exit L1's debugfs reads /new from the image",
    ),
    (
        "blk-ro",
        "`--disk ...,ro=on`: /sys/block/vda/ro is 1, a read-only mount reads /hello.txt, writes fail, and \
         the image's sha256 is unchanged",
    ),
    (
        "blk-two",
        "two `--disk`s: /dev/vda (16 MiB) and /dev/vdb (4 MiB) in /proc/partitions with their sizes; \
         vdb's serial (GET_ID) is its id=",
    ),
    (
        "blk-rng",
        "`--rng`: the stock virtio-rng driver becomes the guest's hw_random (rng_current virtio_rng.0) and \
         /dev/hwrng yields 256 bytes with more than 100 distinct values",
    ),
    (
        "net-ping",
        "`--net auto`: kvmkit makes tap kvmkitN with 10.0.2.1/30, the stock virtio_net gets 10.0.2.2 from ip=; \
         L1 pings the guest, the guest pings L1 (exit 0); no tap is left afterwards",
    ),
    (
        "net-tcp",
        "`--net auto`: the guest serves a TCP echo (busybox nc -l -p 7 -e cat); L1's nc sends lab-tcp and \
         gets it back; no tap is left afterwards",
    ),
    (
        "bench-linux",
        "`kvmkit bench --guest linux --profile quick --runs 1`: the paper's programs run in a chroot of the \
         rootfs (L1 mounts it from its virtio disk) and in stock Debian L2 guests under kvmkit and under \
         Debian's QEMU (copied into L1) with the rootfs as a read-only disk; every cell of all three columns \
         measured, results.json/report.md/SVG written (timings emulated)",
    ),
    (
        "vsock-exec",
        "`run --linux -- CMD` through kvmkit's guest agent over virtio-vsock (the default --exec-via): the stock \
         vsock modules load, CMD's stdout and stderr arrive apart on kvmkit's, its status 7 becomes kvmkit's; a \
         missing command exits 127; the private socket directory is removed",
    ),
    (
        "vsock-exec-api",
        "`kvmkit exec --api-sock` into a running `run --linux --api-sock` VM: output, stderr, status 5, stdin \
         (-i), env (-e), --cwd, a SIGKILLed command exits 137; ctl stop ends the VM",
    ),
    (
        "vsock-many",
        "100 concurrent `kvmkit exec`s (each command sleeps 2 s, so all connections are open at once) each get \
         their own answer, all exit 0",
    ),
    (
        "vsock-big",
        "64 MiB (--vsock-big-mib N; 1024 for the issue's 1 GiB, ~35 min) of random bytes host->guest (exec -i ... sha256sum) and guest->host (the guest \
         hashes what it sends): the sha256 on both ends match",
    ),
    (
        "net-two",
        "`--net auto --net auto`: two taps and two NICs; the guest sets eth1 up from its kvmkit.net= word; \
         L1 pings both guest addresses; no tap is left afterwards",
    ),
    (
        "jail-cgroup2",
        "`kvmkit jail --cgroup-version 2 --cgroup memory.max=64M` on a cgroup2 /sys/fs/cgroup with the memory \
         controller (the jailer enables it): a running jailed guest has uid/gid 1000 and no capabilities on every \
         thread, Seccomp 2, a root of only kvmkit and dev/, and sits alone in kvmkit/<id> with memory.max set; \
         memtest:16 passes under the limit (oom_kill 0), memtest:128 is OOM-killed (status 137, oom_kill >= 1)",
    ),
];

/// Scenarios run only when named (`cargo xtask nested boot-peers`), never in the default list
/// CI runs: they need files CI does not have. `--list` shows them after the default ones.
pub const OPT_IN_SCENARIOS: &[(&str, &str)] = &[(
    "boot-peers",
    "(opt-in; needs the peer VMMs in ~/.cache/kvmkit-peers/bin) the same L2 vmlinux, busybox initramfs, \
     command line, 1 vCPU and 256 MiB booted by kvmkit, Firecracker and Cloud Hypervisor in interleaved \
     rounds (lab.boot_rounds, default 3): VMM process start to KVMKIT-USERSPACE-READY per round, medians and \
     the kvmkit/peer ratios, and one printk timeline per VMM (Run /init) with L1's count of its exits (by reason, \
     port, MSR); a measurement, passes when every VMM \
     it ran reached the marker in every round",
)];

/// Where the peer VMMs' binaries are looked for: `$KVMKIT_PEERS/bin`, by default
/// `~/.cache/kvmkit-peers/bin` (shared/peers/build-peers.sh builds them there).
pub fn peers_bin_dir() -> Result<PathBuf> {
    match std::env::var_os("KVMKIT_PEERS") {
        Some(dir) if !dir.is_empty() => Ok(PathBuf::from(dir).join("bin")),
        _ => {
            let home = std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .context("neither KVMKIT_PEERS nor HOME is set")?;
            Ok(PathBuf::from(home).join(".cache/kvmkit-peers/bin"))
        }
    }
}

/// The peer VMMs boot-peers compares kvmkit with, by binary name.
const PEERS: &[&str] = &["firecracker", "cloud-hypervisor"];

/// Rounds of boot-peers (each boots every VMM once, in turn).
const DEFAULT_BOOT_ROUNDS: u64 = 3;

/// vsock-big's size unless `--vsock-big-mib` says otherwise: 1 GiB each way takes about 35 min
/// under TCG (about 1 MiB/s, measured), too long for a lab run; see docs/nested-lab.md.
const DEFAULT_VSOCK_BIG_MIB: u64 = 64;

/// L1's CPU count unless `--l1-cpus` says otherwise.
const DEFAULT_L1_CPUS: u64 = 1;

/// What `cargo xtask nested` was asked to do.
pub struct Options {
    scenarios: Vec<String>,
    scenario_timeout: u64,
    timeout: Option<u64>,
    no_build: bool,
    /// L1's CPU count (QEMU `-smp`).
    l1_cpus: u64,
    /// vsock-big: MiB each way.
    vsock_big_mib: u64,
    /// vsock-many: concurrent connections.
    vsock_many: u64,
    /// vsock-big: which directions (`both`, `to-guest`, `to-host`).
    vsock_big_dirs: String,
    /// boot-peers: interleaved rounds.
    boot_rounds: u64,
}

impl Options {
    /// Parses the arguments after `nested`; `Ok(None)` when the request was answered (`--list`).
    pub fn parse(args: &[String]) -> Result<Option<Self>> {
        let mut options = Options {
            scenarios: Vec::new(),
            scenario_timeout: 45,
            timeout: None,
            no_build: false,
            l1_cpus: DEFAULT_L1_CPUS,
            vsock_big_mib: DEFAULT_VSOCK_BIG_MIB,
            vsock_many: 100,
            vsock_big_dirs: "both".into(),
            boot_rounds: DEFAULT_BOOT_ROUNDS,
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut number = |flag: &str| -> Result<u64> {
                let v = it.next().with_context(|| format!("{flag} needs a value"))?;
                v.parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .with_context(|| format!("{flag}: {v:?} is not a positive whole number"))
            };
            match arg.as_str() {
                "--list" => {
                    for (name, what) in SCENARIOS.iter().chain(OPT_IN_SCENARIOS) {
                        println!("{name:16} {what}");
                    }
                    return Ok(None);
                }
                "--scenario-timeout" => options.scenario_timeout = number(arg)?,
                "--timeout" => options.timeout = Some(number(arg)?),
                "--no-build" => options.no_build = true,
                "--l1-cpus" => options.l1_cpus = number(arg)?,
                "--vsock-big-mib" => options.vsock_big_mib = number(arg)?,
                "--vsock-many" => options.vsock_many = number(arg)?,
                "--boot-rounds" => options.boot_rounds = number(arg)?,
                "--vsock-big-dirs" => {
                    let v = it.next().context("--vsock-big-dirs needs a value")?;
                    if !["both", "to-guest", "to-host"].contains(&v.as_str()) {
                        bail!("--vsock-big-dirs {v}: give both, to-guest or to-host");
                    }
                    options.vsock_big_dirs = v.clone();
                }
                flag if flag.starts_with('-') => bail!("unknown option {flag}"),
                name => {
                    if !SCENARIOS.iter().chain(OPT_IN_SCENARIOS).any(|(n, _)| *n == name) {
                        let names: Vec<&str> = SCENARIOS.iter().chain(OPT_IN_SCENARIOS).map(|(n, _)| *n).collect();
                        bail!("unknown scenario {name:?} (known: {})", names.join(", "));
                    }
                    if !options.scenarios.iter().any(|n| n == name) {
                        options.scenarios.push(name.to_string());
                    }
                }
            }
        }
        if options.scenarios.is_empty() {
            options.scenarios = SCENARIOS.iter().map(|(n, _)| n.to_string()).collect();
        }
        Ok(Some(options))
    }
}

/// The outcome of one scenario.
enum Outcome {
    Pass,
    Fail(String),
}

#[derive(Default)]
struct ScenarioResult {
    outcome: Option<Outcome>,
    started: Option<Instant>,
    took: Option<Duration>,
    /// The scenario's console output (the `  | ` lines), for failure reports.
    output: Vec<String>,
    /// How many L1s hung while running it (the first hang earns it one more run).
    hung_runs: u32,
    /// How many times L1 went silent while it ran and was woken by a serial interrupt.
    revived: u32,
}

/// How many times one lab run boots L1 (a fresh L1 only after one was stopped).
const MAX_BOOTS: u32 = 4;

/// Runs the lab; `Ok(true)` when every scenario passed.
pub fn run(options: &Options) -> Result<bool> {
    let start = Instant::now();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask has no parent directory")?
        .to_path_buf();
    let cache = assets::cache_root()?;
    let nested = cache.join("nested");
    std::fs::create_dir_all(&nested).with_context(|| format!("creating {}", nested.display()))?;
    // KVMKIT_NESTED_OUT: another directory for the L1 initramfs and console log, so that two
    // labs can run at once (each QEMU keeps its own files).
    let out_dir = std::env::var_os("KVMKIT_NESTED_OUT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace.join("target/nested"));
    std::fs::create_dir_all(&out_dir)?;

    assets::ensure_tool("qemu-system-x86_64", "qemu-system-x86")?;
    let l1 = assets::l1_kernel(&nested)?;
    let busybox = assets::busybox(&nested)?;
    let kvmkit = assets::static_kvmkit(&workspace, !options.no_build)?;
    let l2 = assets::l2_assets(&kvmkit, &cache)?;
    let module_names: Vec<String> = l1
        .modules
        .iter()
        .map(|m| m.file_name().unwrap_or_default().to_string_lossy().into_owned())
        .collect();
    eprintln!(
        "nested: L1 kernel {} (modules {}), L2 kernel {}",
        l1.version,
        module_names.join(" "),
        l2.as_ref().map_or("(none)", |a| a.kernel_version.as_str())
    );

    // The blk-* scenarios' disk and debugfs (with its libraries) to look into it from L1.
    let mut extra = vec![("lab/ext4.img".to_string(), 0o644, assets::ext4_image(&out_dir)?)];
    // snapshot-vmgenid: Debian's generic kernel (L1's own; it has CONFIG_VMGENID=y, the cloud
    // kernel L2 otherwise boots has no drivers/virt) as a second L2 kernel.
    if options.scenarios.iter().any(|s| s == "snapshot-vmgenid") {
        extra.push(("lab/generic-bzImage".to_string(), 0o644, l1.bzimage.clone()));
    }
    // bench-linux: the rootfs image becomes L1's read-only /dev/vda (mounted as the tree and
    // linked as the image in L1's cache); its manifest goes into the initramfs; mkfs.ext4 makes
    // the scratch disks.
    let rootfs = if options.scenarios.iter().any(|s| s == "bench-linux") {
        assets::rootfs(&kvmkit, &cache)?
    } else {
        None
    };
    if let Some((_, manifest)) = &rootfs {
        extra.push(("lab/cache/rootfs/manifest.json".to_string(), 0o644, manifest.clone()));
        extra.push(("etc/mke2fs.conf".to_string(), 0o644, PathBuf::from("/etc/mke2fs.conf")));
        // The peer column: Debian's QEMU in L1 (with KVM from kvm_amd) and the firmware its
        // microvm machine loads.
        let qemu = assets::program_with_libs("qemu-system-x86_64", "qemu-system-x86", "/usr/bin/qemu-system-x86_64")?;
        for (path, host) in assets::program_with_libs("mke2fs", "e2fsprogs", "/sbin/mkfs.ext4")?
            .into_iter()
            .chain(qemu)
        {
            if !extra.iter().any(|(p, _, _)| *p == path) {
                extra.push((path, 0o755, host));
            }
        }
        for rom in QEMU_ROMS {
            let host = Path::new("/usr/share/qemu").join(rom);
            if host.exists() {
                extra.push((format!("usr/share/qemu/{rom}"), 0o644, host));
            }
        }
    }
    // The net-* scenarios: iproute2's `ip` (kvmkit runs `ip -d/-s/-o ...`, more than busybox's
    // applet offers) replaces busybox's /sbin/ip.
    for (path, host) in assets::program_with_libs("debugfs", "e2fsprogs", "/sbin/debugfs")?
        .into_iter()
        .chain(assets::program_with_libs("ip", "iproute2", "/sbin/ip")?)
    {
        if !extra.iter().any(|(p, _, _)| *p == path) {
            extra.push((path, 0o755, host));
        }
    }

    // boot-peers: the peer VMMs at /lab/peers/NAME (their libraries at their host paths when
    // they are dynamic), and `/lab/peers-missing` naming each one not found on the host.
    if options.scenarios.iter().any(|s| s == "boot-peers") {
        let dir = peers_bin_dir()?;
        let mut missing = String::new();
        for peer in PEERS {
            let host = dir.join(peer);
            if !host.is_file() {
                eprintln!(
                    "nested: boot-peers: no {} (the scenario measures the VMMs it has)",
                    host.display()
                );
                missing.push_str(&format!("{peer} {}\n", host.display()));
                continue;
            }
            for (path, file) in assets::binary_with_libs(&host, &format!("lab/peers/{peer}"))? {
                if !extra.iter().any(|(p, _, _)| *p == path) {
                    extra.push((path, 0o755, file));
                }
            }
        }
        let list = out_dir.join("peers-missing");
        std::fs::write(&list, missing).with_context(|| format!("writing {}", list.display()))?;
        extra.push(("lab/peers-missing".to_string(), 0o644, list));
    }

    let cpio = out_dir.join("l1.cpio");
    write_initramfs(
        &cpio,
        &l1,
        &busybox,
        &kvmkit,
        l2.as_ref(),
        &extra,
        l1::budgets_file(options),
    )?;
    let cpio_mib = std::fs::metadata(&cpio)?.len() as f64 / (1024.0 * 1024.0);
    eprintln!("nested: L1 initramfs {} ({cpio_mib:.1} MiB)", cpio.display());

    let n = options.scenarios.len() as u64;
    let hard = options
        .timeout
        .unwrap_or(120 + options.scenarios.iter().map(|s| l1::budget(s, options)).sum::<u64>());
    let log = out_dir.join("l1-console.log");
    let prep = start.elapsed();
    eprintln!(
        "nested: booting L1 under QEMU TCG (-smp {}; {} scenario(s), {}s each, hard limit {hard}s); console log {}",
        options.l1_cpus,
        n,
        options.scenario_timeout,
        log.display()
    );
    let qemu_start = Instant::now();
    let mut deadline = qemu_start + Duration::from_secs(hard);
    let mut results: HashMap<String, ScenarioResult> = options
        .scenarios
        .iter()
        .map(|n| (n.clone(), ScenarioResult::default()))
        .collect();
    let mut pending = options.scenarios.clone();
    let (mut done, mut timed_out, mut first_start) = (false, false, None);
    let mut hangs: Vec<String> = Vec::new();
    let mut revivals: Vec<String> = Vec::new();
    for attempt in 1..=MAX_BOOTS {
        let end = l1::Boot {
            scenarios: &pending,
            options,
            bzimage: &l1.bzimage,
            cpio: &cpio,
            rootfs: rootfs.as_ref().map(|(image, _)| image.as_path()),
            log: &log,
            attempt,
            deadline,
        }
        .run(&mut results)?;
        first_start = first_start.or(end.first_start);
        // Each wake-up cost up to REVIVE_AFTER of the lab's clock (later boots' share).
        deadline += l1::REVIVE_AFTER * end.revivals.len() as u32;
        revivals.extend(end.revivals);
        done = end.done;
        timed_out = matches!(end.stop, Some(l1::Stop::TimedOut));
        match end.stop {
            None | Some(l1::Stop::TimedOut) => break,
            Some(l1::Stop::Hung(during, at)) => {
                // The time the hang cost does not come out of the scenarios' budgets.
                deadline += l1::HANG_COST;
                hangs.push(format!("{} ({at})", during.as_deref().unwrap_or("L1 boot")));
                // A hung L1 says nothing about the scenario it was running: that one runs
                // again, once, first on the fresh L1 (and is reported as retried).
                if let Some(r) = during.as_ref().and_then(|n| results.get_mut(n)) {
                    if r.hung_runs == 0 {
                        *r = ScenarioResult {
                            hung_runs: 1,
                            ..ScenarioResult::default()
                        };
                    } else {
                        r.hung_runs += 1;
                    }
                }
            }
            Some(l1::Stop::Overran) => {}
        }
        pending.retain(|n| results[n].started.is_none());
        if pending.is_empty() || attempt == MAX_BOOTS {
            break;
        }
        eprintln!(
            "nested: booting a fresh L1 for the {} scenario(s) not run yet",
            pending.len()
        );
    }
    let qemu_wall = qemu_start.elapsed();

    let (mut passed, mut failed) = (0, 0);
    println!();
    for name in &options.scenarios {
        let r = &results[name];
        match &r.outcome {
            Some(Outcome::Pass) => {
                passed += 1;
                let retried = if r.hung_runs > 0 {
                    " on a fresh L1, after the first L1 hung during it"
                } else if r.revived > 0 {
                    "; L1 went silent during it and was woken by a serial interrupt"
                } else {
                    ""
                };
                println!(
                    "PASS {name} ({:.1} s{retried})",
                    r.took.unwrap_or_default().as_secs_f64()
                );
            }
            Some(Outcome::Fail(why)) => {
                failed += 1;
                println!("FAIL {name}: {why}");
            }
            None => {
                failed += 1;
                let why = match (r.started, timed_out) {
                    (Some(_), true) => format!("no result: the lab hit its {hard}s limit while running it"),
                    (Some(_), false) => "no result: L1 ended while running it".to_string(),
                    (None, true) => format!("not run: the lab hit its {hard}s limit"),
                    (None, false) => "not run: L1 ended before it".to_string(),
                };
                println!("FAIL {name}: {why}");
            }
        }
    }
    if !done {
        println!(
            "(L1 did not report @@LAB DONE{})",
            if timed_out { "; QEMU was killed" } else { "" }
        );
    }
    println!("{passed} passed, {failed} failed");
    if !hangs.is_empty() {
        println!(
            "L1 hung {} time(s), during: {} (QEMU's CPU state and L1's whole NMI report are in the console log)",
            hangs.len(),
            hangs.join(", ")
        );
    }
    if !revivals.is_empty() {
        println!(
            "L1 went silent and was woken by a serial interrupt {} time(s), during: {}",
            revivals.len(),
            revivals.join(", ")
        );
    }
    let boot = first_start.map(|t| format!(", L1 boot to first scenario {:.1} s", (t - qemu_start).as_secs_f64()));
    println!(
        "lab wall time: {:.1} s (preparation {:.1} s, QEMU {:.1} s{}); console log: {}",
        start.elapsed().as_secs_f64(),
        prep.as_secs_f64(),
        qemu_wall.as_secs_f64(),
        boot.unwrap_or_default(),
        log.display()
    );
    Ok(failed == 0 && done && !timed_out)
}

/// Writes the L1 initramfs: busybox and its applet links, the static kvmkit, the kvm modules,
/// the L2 assets under `/lab/cache/linux`, `extra` host files `(path, mode, source)` (the ext4
/// image, debugfs and iproute2's ip with their libraries; an extra file takes the place of a
/// busybox applet link of the same path), `/lab/hello.txt`, `/lab/budgets` (`name seconds`
/// lines for L1's watchdog), and `/init`.
fn write_initramfs(
    out: &Path,
    l1: &assets::L1Kernel,
    busybox: &Path,
    kvmkit: &Path,
    l2: Option<&assets::L2Assets>,
    extra: &[(String, u32, PathBuf)],
    budgets: String,
) -> Result<()> {
    let mut a = cpio::Archive::default();
    for dir in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "root",
        "lab",
        "lab/cache",
    ] {
        a.dir(dir);
    }
    a.char_device("dev/console", 0o600, 5, 1);
    a.char_device("dev/null", 0o666, 1, 3);
    a.host_file("bin/busybox", 0o755, busybox);
    for applet in assets::busybox_applets(busybox)? {
        if applet != "bin/busybox" && !extra.iter().any(|(p, _, _)| *p == applet) {
            a.symlink(&applet, "/bin/busybox");
        }
    }
    a.host_file("bin/kvmkit", 0o755, kvmkit);
    let mut order = String::new();
    for module in &l1.modules {
        let name = module
            .file_name()
            .context("module without a file name")?
            .to_string_lossy()
            .into_owned();
        a.host_file(&format!("lab/modules/{name}"), 0o644, module);
        order.push_str(&name);
        order.push('\n');
    }
    a.bytes("lab/modules.order", 0o644, order);
    if let Some(l2) = l2 {
        a.host_tree("lab/cache/linux", &l2.dir)?;
        a.bytes("lab/l2-version", 0o644, format!("{}\n", l2.kernel_version));
    }
    for (path, mode, source) in extra {
        a.host_file(path, *mode, source);
    }
    a.bytes("lab/hello.txt", 0o644, format!("{}\n", assets::EXT4_HELLO));
    a.bytes("lab/budgets", 0o644, budgets);
    a.bytes("init", 0o755, INIT);
    a.write(out)
}

/// QEMU's firmware files a microvm guest with a PVH kernel needs (copied into L1).
const QEMU_ROMS: &[&str] = &["bios-microvm.bin", "pvh.bin", "linuxboot_dma.bin", "kvmvapic.bin"];

/// Seconds the bench-linux scenario may take (it reports progress while it runs).
const BENCH_TIMEOUT: u64 = 1500;

/// Seconds the vsock-big scenario may take for `mib` MiB each way (it reports progress every
/// 10 s): the agent's boot, then about 1 s per MiB each way measured under TCG, doubled.
fn vsock_big_timeout(mib: u64) -> u64 {
    120 + 4 * mib
}
