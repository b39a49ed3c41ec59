//! What `kvmkit bench` measures: profiles, tables, environments and the workload table.
//!
//! Adding a workload is a few lines here: a [`Kind`] variant (its guest spec name, the host
//! runner's support, a cost estimate), its sizes in [`workloads`], and, where it needs devices,
//! the extra VMM arguments in [`Kind::kvmkit_args`] / [`Kind::qemu_args`]. A kind with
//! [`Kind::disk_mib`] gets a fresh sparse image in the output directory per run
//! (`--disk path=IMG` for kvmkit; `-M microvm,acpi=off`, `-drive ... -device
//! virtio-blk-device` for QEMU). One guest run may measure several rows
//! ([`Kind::siblings`]: `blk-seq` gives Table 3's write and read rows).

use std::path::Path;

use clap::ValueEnum;
use serde::Serialize;

/// Workload sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Small sizes: the whole run in <= 3 minutes here (a CI smoke test).
    Quick,
    /// Medium sizes: <= 15 minutes here with 3 runs.
    Default,
    /// The paper's sizes (primes to 1e7, memtester 1000 MB): long.
    Paper,
}

impl Profile {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Quick => "quick",
            Self::Default => "default",
            Self::Paper => "paper",
        }
    }
}

/// The paper's tables (plus the exit-latency table kvmkit adds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    /// Table 1: prime search.
    Cpu,
    /// Table 2: memtester.
    Memory,
    /// Table 3: dd read/write.
    Disk,
    /// Table 4: benchmark suite.
    Suite,
    /// VM exit round trips (PIO, MMIO).
    Exits,
}

impl Table {
    /// Every table, in report order.
    pub const ALL: [Table; 5] = [Table::Cpu, Table::Memory, Table::Disk, Table::Suite, Table::Exits];

    /// Title as in the report.
    pub fn title(self) -> &'static str {
        match self {
            Self::Cpu => "Table 1, CPU: prime search by trial division (seconds; lower is better)",
            Self::Memory => "Table 2, memory: memtester-style pattern tests (seconds; lower is better)",
            Self::Disk => "Table 3, disk: sequential write with flush, cold read (seconds; lower is better)",
            Self::Suite => "Table 4, benchmark suite",
            Self::Exits => "VM exit round trip (ns per exit; lower is better)",
        }
    }

    /// Header of the first column.
    pub fn row_header(self) -> &'static str {
        match self {
            Self::Cpu => "N",
            Self::Memory => "size",
            Self::Disk => "test",
            Self::Suite => "test",
            Self::Exits => "exit",
        }
    }
}

/// Where a workload runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Env {
    /// The bare host (same workload code, in-process threads).
    Host,
    /// kvmkit's test guest under kvmkit.
    Kvmkit,
    /// kvmkit's test guest under QEMU (microvm, KVM).
    Qemu,
}

impl Env {
    /// Every environment, in column order.
    pub const ALL: [Env; 3] = [Env::Host, Env::Kvmkit, Env::Qemu];

    /// Lower-case name (JSON key, column header).
    pub fn name(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Kvmkit => "kvmkit",
            Self::Qemu => "qemu",
        }
    }

    /// Whether this is a guest (has a guest/host ratio).
    pub fn is_guest(self) -> bool {
        self != Self::Host
    }
}

/// Unit of a workload's figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Unit {
    /// Seconds of workload time (guest TSC / host monotonic clock), lower is better.
    #[serde(rename = "s")]
    Seconds,
    /// Nanoseconds per VM exit round trip, lower is better.
    #[serde(rename = "ns/exit")]
    NsPerExit,
}

/// The workload kinds the test guest (and the host runner) know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `primes:N`.
    Primes,
    /// `memtest:MIB` (total MiB, split among vCPUs / threads).
    Memtest,
    /// `exits:N` PIO round trips.
    Exits,
    /// `mmio-exits:N` MMIO round trips.
    MmioExits,
    /// The write half of `blk-seq:MIB` (sequential write + flush), Table 3.
    BlkWrite,
    /// The read half of `blk-seq:MIB` (sequential read after the write), Table 3.
    BlkRead,
    /// `raytrace:W`, the C-Ray-like ray tracer (rows split among CPUs).
    Raytrace,
    /// `md5:MIB` on every CPU.
    Md5,
    /// `des:MIB` on every CPU.
    Des,
    /// `blowfish:MIB` on every CPU.
    Blowfish,
    /// `compress:MIB` (LZ4) on every CPU.
    Compress,
    /// `smallio:N` random 4 KiB writes + reads, flush every 64 (BSP only).
    SmallIo,
    /// `--guest linux`: the paper's Python prime program, `python3 primes.py N`.
    PyPrimes,
    /// `--guest linux`: `memtester <MIB>M 1`.
    Memtester,
    /// `--guest linux`: `dd` write of MIB with `conv=fdatasync` (Table 3).
    DdWrite,
    /// `--guest linux`: `dd` read of the same file after a cache drop, `iflag=direct`.
    DdRead,
    /// `--guest linux`: POV-Ray 3.7, one thread, kvmkit's scene at W x 3W/4.
    PovRay,
    /// `--guest linux`: `openssl speed -seconds S rsa4096`, as seconds per 100 signatures.
    OpenSsl,
    /// `--guest linux`: `7zz b N -mmt1`, as seconds per 10^10 instructions at its rating.
    SevenZip,
    /// `--guest linux`: PostMark, N transactions on 500 files.
    PostMark,
}

impl Kind {
    /// The guest workload name (`kvmkit.workload=NAME:ARG`, serial line prefix, report name).
    pub fn name(self) -> &'static str {
        match self {
            Self::Primes => "primes",
            Self::Memtest => "memtest",
            Self::Exits => "exits",
            Self::MmioExits => "mmio-exits",
            Self::BlkWrite => "blk-write",
            Self::BlkRead => "blk-read",
            Self::Raytrace => "raytrace",
            Self::Md5 => "md5",
            Self::Des => "des",
            Self::Blowfish => "blowfish",
            Self::Compress => "compress",
            Self::SmallIo => "smallio",
            Self::PyPrimes => "py-primes",
            Self::Memtester => "memtester",
            Self::DdWrite => "dd-write",
            Self::DdRead => "dd-read",
            Self::PovRay => "povray",
            Self::OpenSsl => "openssl",
            Self::SevenZip => "7z",
            Self::PostMark => "postmark",
        }
    }

    /// Whether it is one of the paper's programs run by `--guest linux`.
    pub fn is_linux(self) -> bool {
        matches!(
            self,
            Self::PyPrimes
                | Self::Memtester
                | Self::DdWrite
                | Self::DdRead
                | Self::PovRay
                | Self::OpenSsl
                | Self::SevenZip
                | Self::PostMark
        )
    }

    /// The guest workload that measures it (`blk-seq` for both halves of Table 3).
    pub fn guest_name(self) -> &'static str {
        match self {
            Self::BlkWrite | Self::BlkRead => "blk-seq",
            Self::DdWrite | Self::DdRead => "dd",
            k => k.name(),
        }
    }

    /// The kinds one run of this kind's guest workload measures (both halves of `blk-seq`
    /// and of `dd`).
    pub fn siblings(self) -> Vec<Kind> {
        match self {
            Self::BlkWrite | Self::BlkRead => vec![Self::BlkWrite, Self::BlkRead],
            Self::DdWrite | Self::DdRead => vec![Self::DdWrite, Self::DdRead],
            k => vec![k],
        }
    }

    /// Whether the bare host can run it: the paper's programs always; a test-guest workload
    /// when the catalogue says so (an exit has no host counterpart).
    pub fn on_host(self) -> bool {
        self.is_linux() || kvmkit_workloads::find(self.guest_name()).is_some_and(|e| e.envs.host)
    }

    /// Whether every CPU reports (else the BSP alone: the device workloads).
    pub fn per_cpu(self) -> bool {
        !matches!(self, Self::BlkWrite | Self::BlkRead | Self::SmallIo) && !self.is_linux()
    }

    /// Whether every environment must compute the same result (checksum, digest).
    pub fn deterministic(self) -> bool {
        matches!(
            self,
            Self::Primes | Self::Raytrace | Self::Md5 | Self::Des | Self::Blowfish | Self::Compress | Self::PyPrimes
        )
    }

    /// Size (MiB) of the fresh raw disk image a run needs, if it needs one.
    pub fn disk_mib(self, arg: u64) -> Option<u64> {
        match self {
            Self::BlkWrite | Self::BlkRead => Some(arg + 1),
            Self::SmallIo => Some(kvmkit_workloads::SMALLIO_SPAN_MIB + 1),
            // An ext4 scratch file system: the file plus the journal and metadata.
            Self::DdWrite | Self::DdRead => Some(arg + 64),
            Self::PostMark => Some(128),
            _ => None,
        }
    }

    /// Estimated seconds of one run of the workload itself (this host, one CPU).
    pub fn estimate_s(self, arg: u64) -> f64 {
        let a = arg as f64;
        match self {
            // 5.4 ms at 1e5; trial division to sqrt(j): ~N^1.5 / ln N.
            Self::Primes => 0.0054 * (a / 1e5).powf(1.5) * (1e5f64).ln() / a.max(3.0).ln(),
            // ~0.75 s per 16 MiB here.
            Self::Memtest => 0.047 * a,
            // ~30-55 us per exit here (PVM).
            Self::Exits | Self::MmioExits => 50e-6 * a,
            // Buffered write + fdatasync, then a read: a few ms per MiB here.
            Self::BlkWrite | Self::BlkRead => 0.02 + 0.01 * a,
            // 82 ms for 320x240 here.
            Self::Raytrace => 0.082 * (a / 320.0) * (a / 320.0),
            Self::Md5 => 0.005 * a,
            Self::Des => 0.075 * a,
            Self::Blowfish => 0.018 * a,
            Self::Compress => 0.005 * a,
            // A write, a read, and an fdatasync per 64: ~0.2 ms per operation here.
            Self::SmallIo => 0.02 + 2e-4 * a,
            // The --guest linux programs, measured here on the host (python3 starts in ~20 ms).
            Self::PyPrimes => 0.02 + 0.41 * (a / 1e5).powf(1.5) * (1e5f64).ln() / a.max(3.0).ln(),
            Self::Memtester => 0.19 * a,
            Self::DdWrite | Self::DdRead => 0.05 + 0.004 * a,
            // POV-Ray takes ~0.7 s to start.
            Self::PovRay => 0.7 + 0.2 * (a / 160.0) * (a / 160.0),
            // sign and verify, each for `arg` seconds.
            Self::OpenSsl => 0.2 + 2.0 * a,
            // 7-Zip's benchmark sizes its passes to ~8.6 s each here.
            Self::SevenZip => 8.6 * a,
            Self::PostMark => 0.1 + 2.5e-4 * a,
        }
    }

    /// Whether its disk bypasses the host page cache in both VMMs (kvmkit `cache=none`, QEMU
    /// `cache=none`: O_DIRECT): Table 3, whose reads must be cold in every column, as the
    /// host's O_DIRECT read after a cache drop is.
    pub fn uncached_disk(self) -> bool {
        matches!(self, Self::BlkWrite | Self::BlkRead | Self::DdWrite | Self::DdRead)
    }

    /// `,cache=none` for an [`Self::uncached_disk`] image whose file system takes O_DIRECT
    /// (tmpfs does not: QEMU refuses `cache=none` there), else nothing.
    pub fn cache_option(self, disk: Option<&Path>) -> &'static str {
        if self.uncached_disk() && disk.is_some_and(supports_direct_io) {
            ",cache=none"
        } else {
            ""
        }
    }

    /// Extra `kvmkit run` arguments (devices) for this workload, given its disk image.
    pub fn kvmkit_args(self, disk: Option<&Path>) -> Vec<String> {
        let cache = self.cache_option(disk);
        match disk {
            Some(img) => vec!["--disk".into(), format!("path={}{cache}", img.display())],
            None => Vec::new(),
        }
    }

    /// Extra QEMU arguments (devices) for this workload, given its disk image. With a
    /// disk, the machine is `microvm,acpi=off` so QEMU puts `virtio_mmio.device=` on the
    /// command line. Table 3's image is `cache=none` (O_DIRECT) as in kvmkit; the others use
    /// QEMU's default (writeback through the host page cache, FLUSH = fdatasync), as kvmkit does.
    pub fn qemu_args(self, disk: Option<&Path>) -> Vec<String> {
        let cache = self.cache_option(disk);
        match disk {
            Some(img) => vec![
                "-global".into(),
                "virtio-mmio.force-legacy=false".into(),
                "-drive".into(),
                format!("file={},format=raw,if=none,id=d0{cache}", img.display()),
                "-device".into(),
                "virtio-blk-device,drive=d0".into(),
            ],
            None => Vec::new(),
        }
    }

    /// The result every correct run must report (prime count), if fixed.
    pub fn expected(self, arg: u64) -> Option<u64> {
        match (self, arg) {
            (Self::Primes, 100_000) => Some(9592),
            (Self::Primes, 1_000_000) => Some(78_498),
            (Self::Primes, 10_000_000) => Some(664_579),
            (Self::Memtest | Self::Memtester, _) => Some(0),
            (Self::PyPrimes, n) => Self::Primes.expected(n),
            _ => None,
        }
    }
}

/// Whether `path` (an existing file) can be opened with O_DIRECT.
pub fn supports_direct_io(path: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .is_ok()
}

/// One measured row of a table.
#[derive(Clone, Debug)]
pub struct Workload {
    /// The results.json key: `primes:100000`, `blk-read:10`.
    pub id: String,
    /// Guest workload spec (`kvmkit.workload=`): `primes:100000`, `blk-seq:10`.
    pub spec: String,
    /// Which table it belongs to.
    pub table: Table,
    /// What runs.
    pub kind: Kind,
    /// Its argument.
    pub arg: u64,
    /// Row label in the tables ("1e5", "10 MiB", "PIO").
    pub label: String,
    /// Unit of its figure.
    pub unit: Unit,
    /// The paper's (host, KVM guest) figures for this row, if it has one.
    pub paper: Option<(f64, f64)>,
    /// The paper's figures are scores (higher is better), not seconds.
    pub paper_is_score: bool,
}

impl Workload {
    fn new(table: Table, kind: Kind, arg: u64, label: String, paper: Option<(f64, f64)>) -> Self {
        let unit = if matches!(kind, Kind::Exits | Kind::MmioExits) {
            Unit::NsPerExit
        } else {
            Unit::Seconds
        };
        Self {
            id: format!("{}:{arg}", kind.name()),
            spec: format!("{}:{arg}", kind.guest_name()),
            table,
            kind,
            arg,
            label,
            unit,
            paper,
            paper_is_score: false,
        }
    }

    fn score(mut self) -> Self {
        self.paper_is_score = true;
        self
    }

    /// Whether `env` runs this workload.
    pub fn runs_on(&self, env: Env) -> bool {
        env.is_guest() || self.kind.on_host()
    }

    /// Guest RAM (MiB) this workload needs at least.
    pub fn min_memory_mib(&self) -> u64 {
        match self.kind {
            Kind::Memtest => self.arg + 64,
            // Debian's kernel and the initramfs, then memtester's region.
            Kind::Memtester => self.arg + 256,
            k if k.is_linux() => 256,
            Kind::Md5 | Kind::Des | Kind::Blowfish | Kind::Compress => 64 + 2 * 64,
            _ => 64,
        }
    }
}

/// The paper's Table 1 figures (host, KVM) per N.
fn paper_primes(n: u64) -> Option<(f64, f64)> {
    match n {
        100_000 => Some((1.051, 1.123)),
        1_000_000 => Some((5.755, 6.132)),
        10_000_000 => Some((30.326, 40.217)),
        _ => None,
    }
}

/// The paper's Table 2 figures (host, KVM) per size (MB, taken as MiB).
fn paper_memtest(mib: u64) -> Option<(f64, f64)> {
    match mib {
        10 => Some((3.147, 3.661)),
        100 => Some((44.916, 47.448)),
        1000 => Some((447.286, 503.279)),
        _ => None,
    }
}

/// The paper's Table 3 figures (host, KVM) in seconds, per size (MB, taken as MiB).
fn paper_disk(kind: Kind, mib: u64) -> Option<(f64, f64)> {
    match (kind, mib) {
        (Kind::BlkRead, 1) => Some((0.004, 0.006)),
        (Kind::BlkRead, 10) => Some((0.011, 0.013)),
        (Kind::BlkRead, 100) => Some((0.055, 0.062)),
        (Kind::BlkWrite, 1) => Some((0.003, 0.011)),
        (Kind::BlkWrite, 10) => Some((0.027, 0.035)),
        (Kind::BlkWrite, 100) => Some((0.857, 1.176)),
        _ => None,
    }
}

/// Sizes of one profile.
struct Sizes {
    primes: &'static [u64],
    mems: &'static [u64],
    disks: &'static [u64],
    exits: u64,
    /// raytrace width, md5, des, blowfish, compress MiB, smallio operations.
    suite: [u64; 6],
}

fn sizes(profile: Profile) -> Sizes {
    match profile {
        Profile::Quick => Sizes {
            primes: &[100_000],
            mems: &[4],
            disks: &[1],
            exits: 10_000,
            suite: [320, 16, 2, 8, 16, 256],
        },
        Profile::Default => Sizes {
            primes: &[100_000, 1_000_000],
            mems: &[10, 100],
            disks: &[1, 10],
            exits: 20_000,
            suite: [640, 64, 8, 32, 64, 1024],
        },
        Profile::Paper => Sizes {
            primes: &[100_000, 1_000_000, 10_000_000],
            mems: &[10, 100, 1000],
            disks: &[1, 10, 100],
            exits: 100_000,
            suite: [1600, 256, 32, 128, 256, 8192],
        },
    }
}

fn exp_label(n: u64) -> String {
    let digits = n.to_string();
    match digits.strip_prefix('1') {
        Some(zeros) if !zeros.is_empty() && zeros.bytes().all(|b| b == b'0') => format!("1e{}", zeros.len()),
        _ => digits,
    }
}

/// The measured workloads of `profile` for `tables`, in table order.
pub fn workloads(profile: Profile, tables: &[Table]) -> Vec<Workload> {
    let Sizes {
        primes,
        mems,
        disks,
        exits,
        suite,
    } = sizes(profile);
    let mut out = Vec::new();
    for &t in tables {
        match t {
            Table::Cpu => out.extend(
                primes
                    .iter()
                    .map(|&n| Workload::new(t, Kind::Primes, n, exp_label(n), paper_primes(n))),
            ),
            Table::Memory => out.extend(
                mems.iter()
                    .map(|&m| Workload::new(t, Kind::Memtest, m, format!("{m} MiB"), paper_memtest(m))),
            ),
            Table::Exits => {
                out.push(Workload::new(
                    t,
                    Kind::Exits,
                    exits,
                    "PIO (out to a null port)".into(),
                    None,
                ));
                out.push(Workload::new(
                    t,
                    Kind::MmioExits,
                    exits,
                    "MMIO (write to a null page)".into(),
                    None,
                ));
            }
            Table::Disk => {
                for kind in [Kind::BlkRead, Kind::BlkWrite] {
                    let verb = if kind == Kind::BlkRead { "read" } else { "write" };
                    out.extend(
                        disks
                            .iter()
                            .map(|&m| Workload::new(t, kind, m, format!("{verb} {m}M"), paper_disk(kind, m))),
                    );
                }
            }
            Table::Suite => {
                let [w, md5, des, bf, lz, io] = suite;
                out.push(Workload::new(
                    t,
                    Kind::Raytrace,
                    w,
                    format!("ray tracer (C-Ray-like), {w}x{}", kvmkit_workloads::raytrace_height(w)),
                    Some((73.25, 80.52)),
                ));
                out.push(
                    Workload::new(
                        t,
                        Kind::Blowfish,
                        bf,
                        format!("Blowfish (ECB), {bf} MiB"),
                        Some((714.0, 710.0)),
                    )
                    .score(),
                );
                out.push(
                    Workload::new(
                        t,
                        Kind::Des,
                        des,
                        format!("DES (ECB), {des} MiB"),
                        Some((3_475_000.0, 3_383_000.0)),
                    )
                    .score(),
                );
                out.push(Workload::new(t, Kind::Md5, md5, format!("MD5, {md5} MiB"), Some((11124.0, 11063.0))).score());
                out.push(
                    Workload::new(
                        t,
                        Kind::Compress,
                        lz,
                        format!("compression (LZ4, in place of 7-Zip), {lz} MiB"),
                        Some((13331.0, 11757.0)),
                    )
                    .score(),
                );
                out.push(
                    Workload::new(
                        t,
                        Kind::SmallIo,
                        io,
                        format!("small-block random I/O (in place of PostMark), {io} x 4 KiB write+read"),
                        Some((4166.0, 3393.0)),
                    )
                    .score(),
                );
            }
        }
    }
    out
}

/// Sizes of `--guest linux` in one profile.
struct LinuxSizes {
    primes: &'static [u64],
    mems: &'static [u64],
    disks: &'static [u64],
    /// POV-Ray width, openssl seconds, 7z passes, PostMark transactions.
    suite: [u64; 4],
}

fn linux_sizes(profile: Profile) -> LinuxSizes {
    match profile {
        Profile::Quick => LinuxSizes {
            primes: &[100_000],
            mems: &[4],
            disks: &[1],
            suite: [160, 1, 1, 500],
        },
        Profile::Default => LinuxSizes {
            primes: &[100_000, 1_000_000],
            mems: &[10, 100],
            disks: &[1, 10],
            suite: [320, 2, 1, 2000],
        },
        Profile::Paper => LinuxSizes {
            primes: &[100_000, 1_000_000, 10_000_000],
            mems: &[10, 100, 1000],
            disks: &[1, 10, 100],
            suite: [640, 5, 3, 20_000],
        },
    }
}

/// The measured workloads of `--guest linux` (the paper's own programs) for `profile` and
/// `tables`, in table order. The exit table has no Linux counterpart.
pub fn linux_workloads(profile: Profile, tables: &[Table]) -> Vec<Workload> {
    let LinuxSizes {
        primes,
        mems,
        disks,
        suite,
    } = linux_sizes(profile);
    let mut out = Vec::new();
    for &t in tables {
        match t {
            Table::Cpu => out.extend(primes.iter().map(|&n| {
                Workload::new(
                    t,
                    Kind::PyPrimes,
                    n,
                    format!("{} (python3)", exp_label(n)),
                    paper_primes(n),
                )
            })),
            Table::Memory => out.extend(
                mems.iter()
                    .map(|&m| Workload::new(t, Kind::Memtester, m, format!("memtester {m}M"), paper_memtest(m))),
            ),
            Table::Disk => {
                for (kind, paper_kind, verb) in [
                    (Kind::DdRead, Kind::BlkRead, "read"),
                    (Kind::DdWrite, Kind::BlkWrite, "write"),
                ] {
                    out.extend(
                        disks
                            .iter()
                            .map(|&m| Workload::new(t, kind, m, format!("dd {verb} {m}M"), paper_disk(paper_kind, m))),
                    );
                }
            }
            Table::Suite => {
                let [w, secs, passes, tx] = suite;
                out.push(Workload::new(
                    t,
                    Kind::PovRay,
                    w,
                    format!("POV-Ray 3.7, 1 thread, {w}x{}", w * 3 / 4),
                    Some((900.0, 905.0)),
                ));
                out.push(
                    Workload::new(
                        t,
                        Kind::OpenSsl,
                        secs,
                        "OpenSSL speed rsa4096 (s per 100 signatures)".into(),
                        Some((67.75, 67.15)),
                    )
                    .score(),
                );
                out.push(
                    Workload::new(
                        t,
                        Kind::SevenZip,
                        passes,
                        "7-Zip `7zz b`, 1 thread (s per 10^10 instr. at its rating)".into(),
                        Some((13331.0, 11757.0)),
                    )
                    .score(),
                );
                out.push(
                    Workload::new(
                        t,
                        Kind::PostMark,
                        tx,
                        format!("PostMark, {tx} transactions"),
                        Some((4166.0, 3393.0)),
                    )
                    .score(),
                );
            }
            Table::Exits => {}
        }
    }
    out
}

/// A row the paper has that kvmkit does not measure yet.
#[derive(Clone, Debug, Serialize)]
pub struct Pending {
    /// Table.
    pub table: Table,
    /// Row label.
    pub test: &'static str,
    /// Unit of the paper's figures.
    pub unit: &'static str,
    /// The paper's host figure.
    pub paper_host: f64,
    /// The paper's KVM figure.
    pub paper_kvm: f64,
    /// The paper's Xen figure (Table 4 only).
    pub paper_xen: Option<f64>,
}

/// Why the pending rows of the default guest are not measured.
pub const PENDING_REASON: &str = "real programs with no counterpart in the no_std workload suite: \
                                  `kvmkit bench --guest linux` runs POV-Ray and `openssl speed`";

/// Why the pending rows of `--guest linux` are not measured.
pub const LINUX_PENDING_REASON: &str = "measured by the default `--guest kvmkit` (C-Ray-like ray tracer, \
                                        RustCrypto MD5/DES/Blowfish); the paper's John the Ripper and C-Ray \
                                        are not in the rootfs";

/// Rows of Table 4 (with the paper's figures) that this guest kind does not measure.
pub fn not_measured(tables: &[Table], linux: bool) -> Vec<Pending> {
    let default: &[(&str, &str, f64, f64, f64)] = &[
        ("POV-Ray (single-threaded render)", "s", 900.0, 905.0, 1328.0),
        ("OpenSSL", "score", 67.75, 67.15, 46.73),
    ];
    let linux_rows: &[(&str, &str, f64, f64, f64)] = &[
        ("C-Ray (multi-threaded ray tracer)", "s", 73.25, 80.52, 107.65),
        ("Blowfish", "score", 714.0, 710.0, 492.0),
        ("DES", "score", 3_475_000.0, 3_383_000.0, 2_397_333.0),
        ("MD5", "score", 11124.0, 11063.0, 7628.0),
    ];
    let suite = if linux { linux_rows } else { default };
    let mut out = Vec::new();
    if tables.contains(&Table::Suite) {
        out.extend(suite.iter().map(|&(test, unit, h, k, x)| Pending {
            table: Table::Suite,
            test,
            unit,
            paper_host: h,
            paper_kvm: k,
            paper_xen: Some(x),
        }));
    }
    out
}

/// Estimated seconds of one run of `w` in `env`, including VM start-up.
pub fn estimate_run_s(w: &Workload, env: Env, cpus: usize) -> f64 {
    let work = w.kind.estimate_s(w.arg);
    // memtest and raytrace split their work among CPUs; everything else runs whole on each.
    let work = if matches!(w.kind, Kind::Memtest | Kind::Raytrace) {
        work / cpus.max(1) as f64 * 1.2
    } else {
        work
    };
    let start = match (env, w.kind.is_linux()) {
        (Env::Host, false) => 0.01,
        (Env::Kvmkit, false) => 0.15,
        (Env::Qemu, false) => 0.3,
        // The harness's python3 start-up; Debian's kernel boot with its modules.
        (Env::Host, true) => 0.05,
        (_, true) => 3.0,
    };
    work + start + w.min_memory_mib() as f64 * 0.0005
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_list_the_papers_sizes() {
        let all = workloads(Profile::Paper, &Table::ALL);
        let ids: Vec<_> = all.iter().map(|w| w.id.as_str()).collect();
        assert!(ids.contains(&"primes:10000000"));
        assert!(ids.contains(&"memtest:1000"));
        assert!(all.iter().filter(|w| w.table == Table::Cpu).all(|w| w.paper.is_some()));
        assert_eq!(exp_label(1_000_000), "1e6");
        assert_eq!(exp_label(250), "250");
        assert_eq!(not_measured(&Table::ALL, false).len(), 2);
        assert_eq!(not_measured(&Table::ALL, true).len(), 4);
        assert!(ids.contains(&"blk-read:100") && ids.contains(&"blk-write:100"));
        let r = all.iter().find(|w| w.id == "blk-read:10").expect("blk-read:10");
        assert_eq!(r.spec, "blk-seq:10");
        assert_eq!(r.kind.disk_mib(r.arg), Some(11));
        assert!(all.iter().filter(|w| w.table == Table::Disk).all(|w| w.paper.is_some()));
    }

    #[test]
    fn rows_come_from_the_workload_catalogue() {
        let all = workloads(Profile::Paper, &Table::ALL);
        for w in &all {
            let parsed = kvmkit_workloads::Workload::parse(&w.spec).expect("the catalogue parses every spec");
            assert!(
                parsed.entry().envs.bench,
                "{}: not marked bench in the catalogue",
                w.spec
            );
            assert_eq!(w.kind.on_host(), parsed.entry().envs.host, "{}", w.spec);
        }
        for e in kvmkit_workloads::CATALOGUE.iter().filter(|e| e.envs.bench) {
            assert!(
                all.iter().any(|w| w.kind.guest_name() == e.name),
                "{}: marked bench but no row measures it",
                e.name
            );
        }
    }

    #[test]
    fn quick_profile_fits_its_budget() {
        let total: f64 = workloads(Profile::Quick, &Table::ALL)
            .iter()
            .flat_map(|w| Env::ALL.into_iter().map(move |e| (w, e)))
            .filter(|(w, e)| w.runs_on(*e))
            .map(|(w, e)| 3.0 * estimate_run_s(w, e, 1))
            .sum();
        assert!(total < 90.0, "{total}");
    }
}
