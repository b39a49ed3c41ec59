//! The guest's configuration, from the `kvmkit.*` command-line keys.

use kvmkit_guest_abi::{cmdline_value, CMDLINE_CPUS, CMDLINE_TSC_KHZ, CMDLINE_WORKLOAD, MAX_CPUS};

/// What each CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// `primes:N`: count the primes up to N.
    Primes(u64),
    /// `memtest:MIB`: memtester-style tests over MIB MiB, split among CPUs.
    Memtest(u64),
    /// `exits:N`: N 32-bit `out`s to the null port.
    Exits(u64),
    /// `mmio-exits:N`: N 32-bit writes to the null MMIO page.
    MmioExits(u64),
    /// `blk-pattern`: write, flush, read back and verify a seeded pattern
    /// over every virtio-blk device.
    BlkPattern,
    /// `blk-seq:MIB`: sequential write (+ flush) then read of MIB MiB on the
    /// first virtio-blk device, timed.
    BlkSeq(u64),
    /// `rng:BYTES`: read BYTES from the first virtio-rng device, timed.
    Rng(u64),
    /// `raytrace:W`: render a W x W/4*3 picture (C-Ray-like), rows split among CPUs.
    Raytrace(u64),
    /// `md5:MIB`: MD5 over MIB MiB on every CPU.
    Md5(u64),
    /// `des:MIB`: DES (ECB) over MIB MiB on every CPU.
    Des(u64),
    /// `blowfish:MIB`: Blowfish (ECB) over MIB MiB on every CPU.
    Blowfish(u64),
    /// `compress:MIB`: LZ4 compress + decompress + compare MIB MiB on every CPU.
    Compress(u64),
    /// `smallio:N`: N random 4 KiB writes + reads on the first virtio-blk
    /// device, a flush every 64 (in place of PostMark).
    SmallIo(u64),
    /// `net-echo:SECONDS`: answer ARP and ICMP echo on every virtio-net NIC for SECONDS.
    NetEcho(u64),
    /// `net-tx:FRAMES:SIZE`: send FRAMES UDP frames of SIZE bytes to the host side, timed.
    NetTx(u64, u64),
    /// `net-rx:SECONDS`: count frames and bytes received on every NIC for SECONDS (answering ARP).
    NetRx(u64),
    /// `ticks:MS`: print `tick=K` every MS milliseconds of TSC time, forever
    /// (BSP only; shows that a paused VM makes no progress).
    Ticks(u64),
    /// `idle`: boot and exit.
    Idle,
    /// `fault`: execute `ud2` (tests the exception path: exit 0x86).
    Fault,
    /// `panic`: panic (tests the panic path: exit 101).
    Panic,
}

impl Workload {
    /// The default when `kvmkit.workload` is absent.
    pub const DEFAULT: Self = Self::Primes(100_000);

    /// Parses `NAME[:ARG]`.
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let (name, arg) = match text.split_once(':') {
            Some((name, arg)) => (name, Some(arg)),
            None => (text, None),
        };
        let num = |default: u64| match arg {
            None => Ok(default),
            Some(a) => a.parse::<u64>().map_err(|_| "workload argument is not a number"),
        };
        Ok(match name {
            "primes" => Self::Primes(num(100_000)?),
            "memtest" => Self::Memtest(num(16)?),
            "exits" => Self::Exits(num(10_000)?),
            "mmio-exits" => Self::MmioExits(num(10_000)?),
            "blk-seq" | "rng" | "raytrace" | "md5" | "des" | "blowfish" | "compress" | "smallio" | "ticks"
                if num(1)? == 0 =>
            {
                return Err("this workload needs a non-zero argument")
            }
            "raytrace" => Self::Raytrace(num(320)?),
            "md5" => Self::Md5(num(16)?),
            "des" => Self::Des(num(4)?),
            "blowfish" => Self::Blowfish(num(16)?),
            "compress" => Self::Compress(num(16)?),
            "smallio" => Self::SmallIo(num(1024)?),
            "blk-seq" => Self::BlkSeq(num(16)?),
            "rng" => Self::Rng(num(4096)?),
            "ticks" => Self::Ticks(num(100)?),
            "net-echo" => Self::NetEcho(num(10)?),
            "net-rx" => Self::NetRx(num(10)?),
            "net-tx" => {
                let (frames, size) = match arg {
                    None => (1000, 1500),
                    Some(a) => {
                        let (f, s) = a.split_once(':').unwrap_or((a, "1500"));
                        let f = f.parse::<u64>().map_err(|_| "net-tx: FRAMES is not a number")?;
                        let s = s.parse::<u64>().map_err(|_| "net-tx: SIZE is not a number")?;
                        (f, s)
                    }
                };
                if frames == 0 {
                    return Err("net-tx needs at least one frame");
                }
                Self::NetTx(frames, size)
            }
            "blk-pattern" | "idle" | "fault" | "panic" if arg.is_some() => {
                return Err("this workload takes no argument")
            }
            "blk-pattern" => Self::BlkPattern,
            "idle" => Self::Idle,
            "fault" => Self::Fault,
            "panic" => Self::Panic,
            _ => return Err("unknown workload"),
        })
    }

    /// The name used on the console and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Primes(_) => "primes",
            Self::Memtest(_) => "memtest",
            Self::Exits(_) => "exits",
            Self::MmioExits(_) => "mmio-exits",
            Self::BlkPattern => "blk-pattern",
            Self::BlkSeq(_) => "blk-seq",
            Self::Rng(_) => "rng",
            Self::NetEcho(_) => "net-echo",
            Self::NetTx(..) => "net-tx",
            Self::NetRx(_) => "net-rx",
            Self::Raytrace(_) => "raytrace",
            Self::Md5(_) => "md5",
            Self::Des(_) => "des",
            Self::Blowfish(_) => "blowfish",
            Self::Compress(_) => "compress",
            Self::SmallIo(_) => "smallio",
            Self::Ticks(_) => "ticks",
            Self::Idle => "idle",
            Self::Fault => "fault",
            Self::Panic => "panic",
        }
    }

    /// The argument (0 for workloads without one).
    pub fn arg(self) -> u64 {
        match self {
            Self::Primes(n)
            | Self::Memtest(n)
            | Self::Exits(n)
            | Self::MmioExits(n)
            | Self::BlkSeq(n)
            | Self::Rng(n)
            | Self::Raytrace(n)
            | Self::Md5(n)
            | Self::Des(n)
            | Self::Blowfish(n)
            | Self::Compress(n)
            | Self::SmallIo(n)
            | Self::NetEcho(n)
            | Self::NetRx(n)
            | Self::NetTx(n, _)
            | Self::Ticks(n) => n,
            Self::BlkPattern | Self::Idle | Self::Fault | Self::Panic => 0,
        }
    }

    /// Whether the workload drives virtio devices (BSP only, needs the
    /// device-workload memory region).
    pub fn uses_devices(self) -> bool {
        matches!(
            self,
            Self::BlkPattern
                | Self::BlkSeq(_)
                | Self::Rng(_)
                | Self::SmallIo(_)
                | Self::NetEcho(_)
                | Self::NetTx(..)
                | Self::NetRx(_)
        )
    }

    /// RAM (bytes) each CPU needs for a suite workload (guest/src/suite.rs), 0 for others.
    pub fn suite_bytes_per_cpu(self) -> u64 {
        match self {
            Self::Md5(_) | Self::Des(_) | Self::Blowfish(_) | Self::Compress(_) => crate::suite::BYTES_PER_CPU,
            _ => 0,
        }
    }
}

/// The parsed command line.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// `kvmkit.workload`, default `primes:100000`.
    pub workload: Workload,
    /// `kvmkit.cpus`, default 1, at most [`MAX_CPUS`].
    pub cpus: u32,
    /// `kvmkit.tsc_khz`, when given.
    pub tsc_khz: Option<u64>,
}

impl Config {
    /// Parses the `kvmkit.*` keys of `cmdline`, ignoring everything else.
    pub fn parse(cmdline: &str) -> Result<Self, &'static str> {
        crate::net::remember_cmdline(cmdline);
        let workload = match cmdline_value(cmdline, CMDLINE_WORKLOAD) {
            Some(w) => Workload::parse(w)?,
            None => Workload::DEFAULT,
        };
        let cpus = match cmdline_value(cmdline, CMDLINE_CPUS) {
            Some(c) => c.parse::<u32>().map_err(|_| "kvmkit.cpus is not a number")?,
            None => 1,
        };
        if cpus == 0 || cpus as usize > MAX_CPUS {
            return Err("kvmkit.cpus out of range");
        }
        let tsc_khz = match cmdline_value(cmdline, CMDLINE_TSC_KHZ) {
            Some(k) => Some(k.parse::<u64>().map_err(|_| "kvmkit.tsc_khz is not a number")?),
            None => None,
        };
        Ok(Self {
            workload,
            cpus,
            tsc_khz: tsc_khz.filter(|&k| k != 0),
        })
    }
}
