//! The workload kinds: what the guest (or host) runs for a row, what it needs (disks,
//! VMM arguments) and what it costs.
//!
//! Adding a workload: its entry in the catalogue (`kvmkit_workloads::CATALOGUE`), a
//! [`Kind`] variant (its guest spec name, a cost estimate), its sizes in
//! [`crate::profile`] and its rows in [`crate::rows`], and, where it needs devices, the
//! extra VMM arguments in [`Kind::kvmkit_args`] / [`Kind::qemu_args`]. A kind with
//! [`Kind::disk_mib`] gets a fresh sparse image in the output directory per run
//! (`--disk path=IMG` for kvmkit; `-M microvm,acpi=off`, `-drive ... -device
//! virtio-blk-device` for QEMU). One guest run may measure several rows
//! ([`Kind::siblings`]: `blk-seq` gives Table 3's write and read rows).

use std::path::Path;

use kvmkit_vmm::vmm_config::PollMode;

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

    /// Whether its runs are pinned to the bench's cores: the CPU and exit workloads of the
    /// test guest. Not the disk ones (the guest polls while kvmkit's or QEMU's I/O thread
    /// works: on the vCPU's core they would take turns) nor `--guest linux` (a whole
    /// Debian guest with its own I/O).
    pub fn pinnable(self) -> bool {
        !self.is_linux() && self.disk_mib(0).is_none()
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

    /// Extra `kvmkit run` arguments (devices) for this workload, given its disk image
    /// and the disk polling mode (`poll=`, left out when off, the default).
    pub fn kvmkit_args(self, disk: Option<&Path>, poll: PollMode) -> Vec<String> {
        let cache = self.cache_option(disk);
        let poll = if poll == PollMode::Off {
            String::new()
        } else {
            format!(",poll={poll}")
        };
        match disk {
            Some(img) => vec!["--disk".into(), format!("path={}{cache}{poll}", img.display())],
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvmkit_disk_args_carry_the_poll_mode_only_when_on() {
        let img = Path::new("/nonexistent/disk.img");
        let args = |k: Kind, p: PollMode| k.kvmkit_args(Some(img), p);
        assert_eq!(
            args(Kind::SmallIo, PollMode::Off),
            ["--disk", "path=/nonexistent/disk.img"]
        );
        assert_eq!(
            args(Kind::SmallIo, PollMode::Auto),
            ["--disk", "path=/nonexistent/disk.img,poll=auto"]
        );
        let fixed: PollMode = "100".parse().expect("a window");
        assert_eq!(
            args(Kind::BlkWrite, fixed),
            ["--disk", format!("path=/nonexistent/disk.img,poll={fixed}").as_str()]
        );
        assert!(Kind::SmallIo.kvmkit_args(None, PollMode::Auto).is_empty());
        // What the bench passes must parse as kvmkit's own --disk option does.
        assert_eq!(fixed.to_string().parse::<PollMode>(), Ok(fixed));
    }
}
