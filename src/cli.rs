//! Command-line interface: every subcommand and option.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

/// Options of `kvmkit ctl`.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The VMM's API socket (`kvmkit run --api-sock PATH`); also taken after the subcommand.
    #[arg(long, value_name = "PATH", global = true)]
    pub api_sock: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// `kvmkit ctl` subcommands.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum CtlCommand {
    /// Instance info (`GET /`): id, state, version.
    Info,
    /// The VM's configuration (`GET /vm/config`).
    Config,
    /// Pause the vCPUs (`PATCH /vm {"state": "Paused"}`).
    Pause,
    /// Resume the vCPUs (`PATCH /vm {"state": "Resumed"}`).
    Resume,
    /// Press Ctrl-Alt-Del in the guest (`PUT /actions SendCtrlAltDel`).
    CtrlAltDel,
    /// Write a metrics line now (`PUT /actions FlushMetrics`).
    FlushMetrics,
    /// End the VM and the VMM (kvmkit only: `PUT /kvmkit/stop`).
    Stop,
    /// Write a snapshot of the paused VM (`PUT /snapshot/create`): the state file and
    /// the memory file (guest RAM; with --type diff only the pages dirtied since the last
    /// snapshot, to merge onto the base with `kvmkit snapshot rebase`).
    Snapshot {
        /// State file to write.
        #[arg(long, value_name = "FILE")]
        state: PathBuf,
        /// Memory file to write.
        #[arg(long, value_name = "FILE")]
        mem: PathBuf,
        /// full, or diff (the VM must track dirty pages: `run --track-dirty-pages`).
        #[arg(long = "type", value_enum, default_value_t = SnapshotTypeArg::Full)]
        kind: SnapshotTypeArg,
    },
    /// Load a snapshot into a fresh kvmkit (`PUT /snapshot/load`); it stays paused unless --resume.
    Load {
        /// State file.
        #[arg(long, value_name = "FILE")]
        state: PathBuf,
        /// Memory file.
        #[arg(long, value_name = "FILE")]
        mem: PathBuf,
        /// Run the VM once loaded.
        #[arg(long)]
        resume: bool,
        /// Track dirty pages in the restored VM (for diff snapshots of it).
        #[arg(long)]
        track_dirty_pages: bool,
    },
    /// Send any API request (for scripts without curl) and print the answer's body.
    ///
    /// The body is printed as it came; exit status 0 on 2xx, 1 with the fault_message on
    /// stderr otherwise. E.g. `request PUT /machine-config '{"vcpu_count": 1, "mem_size_mib": 256}'`.
    Request {
        /// HTTP method: GET, PUT, PATCH, ...
        method: String,
        /// Request path, e.g. /machine-config or /drives/rootfs.
        path: String,
        /// JSON body (none for GET).
        body: Option<String>,
    },
}

/// `kvmkit ctl snapshot --type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SnapshotTypeArg {
    /// All of guest RAM.
    Full,
    /// Only the pages dirtied since the last snapshot.
    Diff,
}

/// Options of `kvmkit snapshot`.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// What to do with snapshot files.
    #[command(subcommand)]
    pub command: SnapshotCommand,
}

/// `kvmkit snapshot` subcommands.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Merge a diff memory file onto its base memory file, in place: the base then holds guest
    /// RAM as it was at the diff (Firecracker's `snapshot-editor edit-memory rebase`). Merge
    /// diffs in the order they were taken. Do not rebase a file VMs restored from still map.
    Rebase {
        /// The base memory file (a full snapshot's, or one already rebased); changed in place.
        #[arg(long, value_name = "FILE")]
        base_mem: PathBuf,
        /// The diff memory file (`ctl snapshot --type diff`).
        #[arg(long, value_name = "FILE")]
        diff_mem: PathBuf,
    },
}

/// Options of `kvmkit image`.
#[derive(Debug, Args)]
pub struct ImageArgs {
    /// What to do with the image cache.
    #[command(subcommand)]
    pub command: ImageCommand,
}

/// `kvmkit image` subcommands.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build the default Linux guest assets into the cache ($KVMKIT_CACHE, default ~/.cache/kvmkit).
    Fetch,
    /// Build the Debian root file system of `kvmkit bench --guest linux` (python3, memtester,
    /// openssl, 7-Zip, POV-Ray, PostMark and kvmkit's harness) into the cache.
    Rootfs,
    /// Show what is cached, with versions and sizes.
    List,
    /// Write kvmkit's own test guest (a PVH ELF, the one `kvmkit run --guest` boots) to FILE,
    /// for `kvmkit run --kernel FILE` or another VMM (Firecracker, Cloud Hypervisor, QEMU).
    Guest {
        /// Where to write the ELF (its directory must exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

/// Options of `kvmkit host`.
#[derive(Debug, Args)]
pub struct HostArgs {
    /// Workload: one with `host` in `kvmkit workloads` (primes:N, memtest:MIB, md5:MIB, ...).
    #[arg(long, default_value = "primes:100000", value_name = "NAME[:ARG]")]
    pub workload: String,
    /// Number of threads, each running the whole workload (like each vCPU).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub threads: usize,
    /// Write the results to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    pub results: Option<PathBuf>,
}

/// Options of `kvmkit check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Entry protocol choice on the command line.
#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum BootArg {
    /// PVH when the ELF has a PVH note, else the Linux boot protocol.
    #[default]
    Auto,
    /// The Linux 64-bit boot protocol.
    Linux,
    /// PVH (XEN_ELFNOTE_PHYS32_ENTRY).
    Pvh,
}

/// `--console-filter`: what guest console bytes may reach the host terminal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ConsoleFilterArg {
    /// On when stdout is a terminal and the console is not interactive
    /// (--no-stdin, or stdin is not a terminal).
    #[default]
    Auto,
    /// Pass text, line control and basic colour only; drop other escape sequences.
    On,
    /// Pass every byte as the guest wrote it.
    Off,
}

/// `--exec-via`: how `kvmkit run --linux -- CMD` runs CMD in the guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ExecViaArg {
    /// kvmkit's guest agent over virtio-vsock: stdout and stderr stay apart, the guest's own
    /// console lines do not mix into them.
    #[default]
    Vsock,
    /// The serial console: `/init` runs CMD with the console as its terminal.
    Console,
}

/// Options of `kvmkit run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Kernel to boot: a bzImage, an ELF vmlinux, or any ELF with a PVH note.
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with_all = ["guest", "linux"],
        required_unless_present_any = ["guest", "linux", "api_sock", "config_file", "restore_state"]
    )]
    pub kernel: Option<PathBuf>,
    /// Boot kvmkit's own test guest (built into this binary).
    #[arg(long, conflicts_with = "linux")]
    pub guest: bool,
    /// Boot the cached Debian kernel + busybox initramfs (`kvmkit image fetch`); with
    /// `-- CMD ARGS...` run CMD in the guest and exit with its status.
    #[arg(long)]
    pub linux: bool,
    /// Command to run in the Linux guest (after `--`).
    #[arg(last = true, value_name = "CMD", requires = "linux")]
    pub command: Vec<String>,
    /// Initial ramdisk for the kernel.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["guest", "linux"])]
    pub initrd: Option<PathBuf>,
    /// Kernel command line (--kernel: replaces the default console=ttyS0 reboot=k panic=1;
    /// --linux and --guest: appended).
    #[arg(long, value_name = "STR")]
    pub cmdline: Option<String>,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub cpus: usize,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 256, value_name = "MIB")]
    pub memory: u64,
    /// Workload for the test guest, e.g. primes:N, memtest:MIB, exits:N, idle; `kvmkit workloads`
    /// lists all of them with their grammar. Checked before the VM boots.
    #[arg(long, value_name = "NAME[:ARG]", requires = "guest")]
    pub workload: Option<String>,
    /// Print boot milestones (guest entry, guest ready) in microseconds.
    #[arg(long)]
    pub boot_time: bool,
    /// Entry protocol.
    #[arg(long = "boot", value_enum, default_value_t = BootArg::Auto)]
    pub boot_protocol: BootArg,
    /// Boot a bzImage as it is, its own decompressor running in the guest,
    /// instead of decompressing its payload (gzip, xz, zstd, lz4) on the host.
    #[arg(long)]
    pub no_host_decompress: bool,
    /// Stop the VM after this many seconds (exit status 124).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
    /// Do not forward host stdin to the guest console.
    #[arg(long)]
    pub no_stdin: bool,
    /// Where the guest's serial console goes: tty (this terminal), pty (a new
    /// pseudo-terminal, path printed), socket=PATH (clients attach and see recent
    /// output), file=PATH (output appended) or off.
    #[arg(long, default_value = "tty", value_name = "tty|pty|socket=PATH|file=PATH|off")]
    pub serial: SerialSpec,
    /// Neutralise guest escape sequences other than basic colour on the host
    /// terminal (window titles, cursor moves, key redefinitions ...).
    #[arg(long, value_enum, default_value_t = ConsoleFilterArg::Auto)]
    pub console_filter: ConsoleFilterArg,
    /// Attach a raw disk image as a virtio-blk device (repeatable):
    /// path=IMG[,ro=on][,id=NAME][,cache=none][,poll=off|auto|N] (cache=none: O_DIRECT, bypass the
    /// host page cache; poll: after a request the device polls the queue, notifications off, for an
    /// adaptive (auto) or fixed N-microsecond window; default off).
    #[arg(long = "disk", value_name = "path=IMG[,ro=on][,id=NAME][,cache=none][,poll=auto]")]
    pub disks: Vec<String>,
    /// Give the guest a virtio-rng device fed by the host's getrandom.
    #[arg(long)]
    pub rng: bool,
    /// Give the guest a virtio-vsock device with context id N; host
    /// processes connect to the unix socket PATH (`CONNECT <port>`), guest
    /// connections to host port P reach `PATH_P` (docs/vsock.md).
    #[arg(long, value_name = "cid=N,uds=PATH")]
    pub vsock: Option<String>,
    /// With --linux -- CMD: run CMD through kvmkit's guest agent over vsock (default), or
    /// through the serial console like before (docs/vsock.md).
    #[arg(long, value_enum, default_value_t = ExecViaArg::Vsock)]
    pub exec_via: ExecViaArg,
    /// Attach a virtio-net NIC (repeatable): tap=NAME[,mac=M] uses an existing tap;
    /// auto[,host-ip=A,guest-ip=B] creates one with a private /30 and removes it on exit;
    /// bridge=BR[,mac=M] attaches a new tap to an existing bridge. Each takes
    /// poll=off|auto|N: after a round that moved frames the device keeps looking at the tx
    /// queue (notifications off) and the tap for an adaptive (auto) or N-microsecond window.
    #[arg(long = "net", value_name = "auto|tap=NAME|bridge=BR[,poll=auto]")]
    pub nets: Vec<String>,
    /// Write how the run went (exit, boot milestones, guest reports) to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    pub results: Option<PathBuf>,
    /// Serve Firecracker's REST API on this unix socket (docs/api.md). Alone, the VMM waits
    /// for configuration and InstanceStart over it; with --kernel/--guest/--linux/--config-file
    /// the VM boots at once and the API stays up.
    #[arg(long, value_name = "PATH")]
    pub api_sock: Option<PathBuf>,
    /// Restore a snapshot instead of booting: the state file (`kvmkit ctl snapshot --state`).
    /// The VM runs at once without --api-sock; with it, it waits Paused unless --resume.
    #[arg(
        long,
        value_name = "FILE",
        requires = "restore_mem",
        conflicts_with_all = ["kernel", "guest", "linux", "config_file", "disks", "nets", "rng"]
    )]
    pub restore_state: Option<PathBuf>,
    /// The snapshot's memory file, mapped copy-on-write (pages load on first touch).
    #[arg(long, value_name = "FILE", requires = "restore_state")]
    pub restore_mem: Option<PathBuf>,
    /// Read the memory file into fresh memory at restore instead of mapping it.
    #[arg(long, requires = "restore_state")]
    pub restore_mem_copy: bool,
    /// Track the pages the guest and its devices write (machine-config `track_dirty_pages`),
    /// so that diff snapshots can be taken (`ctl snapshot --type diff`); also after a restore.
    #[arg(long)]
    pub track_dirty_pages: bool,
    /// With --restore-state and --api-sock: run the restored VM at once.
    #[arg(long, requires = "restore_state")]
    pub resume: bool,
    /// Boot from a Firecracker-style JSON config file (boot-source, machine-config, drives,
    /// network-interfaces, entropy, logger, metrics).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["kernel", "guest", "linux", "initrd"])]
    pub config_file: Option<PathBuf>,
    /// Run without an API socket (needs --config-file).
    #[arg(long, requires = "config_file", conflicts_with = "api_sock")]
    pub no_api: bool,
    /// Instance id reported by `GET /`.
    #[arg(long, value_name = "ID", default_value = "anonymous-instance")]
    pub id: String,
    /// Run without seccomp filters (they are on by default, one allow-list per thread role).
    #[arg(long, conflicts_with = "seccomp_filter")]
    pub no_seccomp: bool,
    /// Seccomp filters from a Firecracker-format JSON file (keys vmm, api, vcpu, optionally
    /// worker) instead of kvmkit's defaults.
    #[arg(long, value_name = "FILE")]
    pub seccomp_filter: Option<PathBuf>,
    /// Limit file system access with Landlock to the files this VM was given (/dev/kvm, kernel,
    /// disks, sockets, log, metrics, results) plus --landlock-allow; exec and all else refused.
    #[arg(long)]
    pub landlock: bool,
    /// With --landlock: also allow reading and writing (and making files) beneath this path,
    /// e.g. where snapshots go (repeatable).
    #[arg(long, value_name = "PATH", requires = "landlock")]
    pub landlock_allow: Vec<PathBuf>,
    /// Write Firecracker-style JSON metrics lines to this file or FIFO (every 60 s and on FlushMetrics).
    #[arg(long, value_name = "PATH")]
    pub metrics_path: Option<PathBuf>,
    /// Write log lines to this file or FIFO instead of stderr.
    #[arg(long, value_name = "PATH")]
    pub log_path: Option<PathBuf>,
    /// Log level: Off, Error, Warning, Info, Debug, Trace.
    #[arg(long, value_name = "LEVEL")]
    pub level: Option<String>,
}

/// Options of `kvmkit bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Workload sizes: quick (<= 3 min with --runs 3, a CI smoke test), default (<= 15 min with --runs 3), paper (the paper's sizes); adaptive runs take longer (docs/bench.md).
    #[arg(long, value_enum, default_value_t = kvmkit_bench::Profile::Default)]
    pub profile: kvmkit_bench::Profile,
    /// Tables to run (comma-separated): cpu, memory, disk, suite, exits. Default: all.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "TABLE,...")]
    pub only: Vec<kvmkit_bench::Table>,
    /// Environments (comma-separated): host, kvmkit, qemu. Default: all.
    #[arg(long = "env", value_enum, value_delimiter = ',', value_name = "ENV,...")]
    pub envs: Vec<kvmkit_bench::Env>,
    /// Exactly N runs per workload and environment (no adaptation). Default: adaptive,
    /// each cell runs until its median's 95% interval is within --ci-target (docs/bench.md).
    #[arg(long, value_name = "N")]
    pub runs: Option<usize>,
    /// Target of each cell's 95% interval of the median, in percent (+-PCT).
    #[arg(long, default_value_t = 3.0, value_name = "PCT")]
    pub ci_target: f64,
    /// Runs every cell gets at least (adaptive; 2 or more). A cell may stop at 2 runs when
    /// Student's t says its interval is already within --ci-target.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub min_runs: usize,
    /// Runs no cell exceeds (adaptive).
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub max_runs: usize,
    /// Seconds of runs after which a cell stops once it has --min-runs, and at least 5 (adaptive).
    #[arg(long, default_value_t = 60.0, value_name = "S")]
    pub max_cell_time: f64,
    /// Seed of the random round order and the bootstrap (same seed, same report for the same runs).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub seed: u64,
    /// Longest wait, in seconds, for a quieter machine before each round (0: never wait).
    #[arg(long, default_value_t = 10.0, value_name = "S")]
    pub quiet_wait: f64,
    /// Do not pin the host runner and the guests' VMM processes to --cpus cores.
    #[arg(long)]
    pub no_pin: bool,
    /// vCPUs per guest (and threads on the host).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub cpus: usize,
    /// Guest RAM in MiB (raised where a memory workload needs more).
    #[arg(long, default_value_t = 256, value_name = "MIB")]
    pub memory: u64,
    /// kvmkit's disks in the disk rows: `off` (a notification per request once the
    /// device worker sleeps), `auto` (the worker polls for the next request in an
    /// adaptive window) or a window in microseconds; the report says which.
    #[arg(long, default_value = "off", value_name = "off|auto|US")]
    pub disk_poll: kvmkit_vmm::vmm_config::PollMode,
    /// Output directory (default bench-out/<timestamp>).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Guest: `kvmkit` (kvmkit's own test guest, runs on every KVM host) or
    /// `linux` (the paper's programs in a Debian guest; needs VMX/SVM).
    #[arg(long, value_enum, default_value_t = kvmkit_bench::Guest::Kvmkit)]
    pub guest: kvmkit_bench::Guest,
    /// `--guest linux`: boot this kernel instead of the cached Debian one (e.g. a
    /// PVM-enabled kernel on a kvm_pvm host).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
}

/// A parsed `--serial` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialSpec {
    /// This terminal.
    Tty,
    /// A new pseudo-terminal.
    Pty,
    /// A unix socket at this path.
    Socket(PathBuf),
    /// Output appended to this file.
    File(PathBuf),
    /// Nothing.
    Off,
}

impl std::str::FromStr for SerialSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let path = |p: &str, what: &str| {
            if p.is_empty() {
                Err(format!("--serial {what}=PATH needs a path"))
            } else {
                Ok(PathBuf::from(p))
            }
        };
        match s.split_once('=') {
            None if s == "tty" => Ok(Self::Tty),
            None if s == "pty" => Ok(Self::Pty),
            None if s == "off" => Ok(Self::Off),
            Some(("socket", p)) => path(p, "socket").map(Self::Socket),
            Some(("file", p)) => path(p, "file").map(Self::File),
            _ => Err(format!("--serial {s}: give tty, pty, socket=PATH, file=PATH or off")),
        }
    }
}
