//! The workload catalogue: every workload kvmkit knows, in one table (name, argument
//! grammar, units, help, where it runs), and [`Workload`], the parsed `NAME[:ARG]` spec.
//!
//! The test guest parses `kvmkit.workload=` with [`Workload::parse`]; `kvmkit run`
//! checks `--workload` with it before the VM boots, `kvmkit host` and `kvmkit bench`
//! take their host workloads from [`Entry::envs`], and `kvmkit workloads` prints
//! [`CATALOGUE`].

use core::fmt;

/// MiB `vsock-tx` and `vsock-rx` move when no MIB is given.
pub const VSOCK_MIB: u64 = 64;

/// Where a workload runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envs {
    /// kvmkit's test guest (`kvmkit run --guest --workload SPEC`).
    pub guest: bool,
    /// The bare host (`kvmkit host --workload SPEC`).
    pub host: bool,
    /// A row of `kvmkit bench` measures it.
    pub bench: bool,
}

/// The guest only (a test or a device exercise).
const GUEST: Envs = Envs {
    guest: true,
    host: false,
    bench: false,
};
/// The guest, measured by the bench (no host counterpart: VM exits).
const GUEST_BENCH: Envs = Envs {
    guest: true,
    host: false,
    bench: true,
};
/// Guest, host and bench.
const ALL: Envs = Envs {
    guest: true,
    host: true,
    bench: true,
};

/// One workload of the catalogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Name, as in `NAME[:ARG]`, on the console and in reports.
    pub name: &'static str,
    /// Argument grammar: `primes[:N]`, `net-tx[:FRAMES[:SIZE]]`, `idle`.
    pub grammar: &'static str,
    /// The argument when none is given (empty when it takes none).
    pub default: &'static str,
    /// What the argument counts and what the workload reports.
    pub units: &'static str,
    /// One line of help.
    pub help: &'static str,
    /// Where it runs.
    pub envs: Envs,
}

/// Every workload, in help order.
pub const CATALOGUE: &[Entry] = &[
    Entry {
        name: "primes",
        grammar: "primes[:N]",
        default: "100000",
        units: "N: upper bound; reports the count and seconds",
        help: "count the primes up to N by trial division (Table 1)",
        envs: ALL,
    },
    Entry {
        name: "memtest",
        grammar: "memtest[:MIB]",
        default: "16",
        units: "MIB: MiB tested, split among CPUs; reports errors and seconds",
        help: "memtester-style pattern tests (Table 2)",
        envs: ALL,
    },
    Entry {
        name: "exits",
        grammar: "exits[:N]",
        default: "10000",
        units: "N: exits; reports ns per exit",
        help: "N 32-bit `out`s to the null port (PIO exit round trips)",
        envs: GUEST_BENCH,
    },
    Entry {
        name: "mmio-exits",
        grammar: "mmio-exits[:N]",
        default: "10000",
        units: "N: exits; reports ns per exit",
        help: "N 32-bit writes to the null MMIO page (MMIO exit round trips)",
        envs: GUEST_BENCH,
    },
    Entry {
        name: "blk-pattern",
        grammar: "blk-pattern",
        default: "",
        units: "no argument; reports mismatches",
        help: "write, flush, read back and verify a seeded pattern on every virtio-blk disk (needs --disk)",
        envs: GUEST,
    },
    Entry {
        name: "blk-seq",
        grammar: "blk-seq[:MIB]",
        default: "16",
        units: "MIB: MiB, non-zero; reports write and read seconds",
        help: "sequential write + flush, then read, on the first virtio-blk disk (Table 3; needs --disk)",
        envs: ALL,
    },
    Entry {
        name: "rng",
        grammar: "rng[:BYTES]",
        default: "4096",
        units: "BYTES: bytes read, non-zero; reports seconds",
        help: "read from the first virtio-rng device (needs --rng)",
        envs: GUEST,
    },
    Entry {
        name: "raytrace",
        grammar: "raytrace[:W]",
        default: "320",
        units: "W: picture width in pixels (height 3W/4), non-zero; reports a checksum and seconds",
        help: "C-Ray-like ray tracer, rows split among CPUs (Table 4)",
        envs: ALL,
    },
    Entry {
        name: "md5",
        grammar: "md5[:MIB]",
        default: "16",
        units: "MIB: MiB per CPU, non-zero; reports a digest and seconds",
        help: "MD5 on every CPU (Table 4)",
        envs: ALL,
    },
    Entry {
        name: "des",
        grammar: "des[:MIB]",
        default: "4",
        units: "MIB: MiB per CPU, non-zero; reports a checksum and seconds",
        help: "DES (ECB) on every CPU (Table 4)",
        envs: ALL,
    },
    Entry {
        name: "blowfish",
        grammar: "blowfish[:MIB]",
        default: "16",
        units: "MIB: MiB per CPU, non-zero; reports a checksum and seconds",
        help: "Blowfish (ECB) on every CPU (Table 4)",
        envs: ALL,
    },
    Entry {
        name: "compress",
        grammar: "compress[:MIB]",
        default: "16",
        units: "MIB: MiB per CPU, non-zero; reports the compressed size and seconds",
        help: "LZ4 compress + decompress + compare on every CPU (Table 4)",
        envs: ALL,
    },
    Entry {
        name: "smallio",
        grammar: "smallio[:N]",
        default: "1024",
        units: "N: operations, non-zero; reports seconds",
        help: "N random 4 KiB writes + reads, a flush every 64 (Table 4, for PostMark; needs --disk)",
        envs: ALL,
    },
    Entry {
        name: "net-echo",
        grammar: "net-echo[:SECONDS]",
        default: "10",
        units: "SECONDS: how long to answer",
        help: "answer ARP and ICMP echo on every virtio-net NIC (needs --net)",
        envs: GUEST,
    },
    Entry {
        name: "net-tx",
        grammar: "net-tx[:FRAMES[:SIZE]]",
        default: "1000:1500",
        units: "FRAMES: frames, non-zero; SIZE: bytes per frame; reports seconds",
        help: "send UDP frames to the host side (needs --net)",
        envs: GUEST,
    },
    Entry {
        name: "net-rx",
        grammar: "net-rx[:SECONDS]",
        default: "10",
        units: "SECONDS: how long to count",
        help: "count frames and bytes received on every NIC, answering ARP (needs --net)",
        envs: GUEST,
    },
    Entry {
        name: "vsock-echo",
        grammar: "vsock-echo[:PORT[:CONNS]]",
        default: "5000",
        units: "PORT: vsock port listened on; CONNS: connections served, non-zero (default: forever); \
                reports bytes echoed per connection",
        help: "echo every byte of every connection on a vsock port, several at once (needs --vsock)",
        envs: GUEST,
    },
    Entry {
        name: "vsock-tx",
        grammar: "vsock-tx[:PORT[:MIB]]",
        default: "5001",
        units: "PORT: host port (CID 2) connected to; MIB: MiB written, non-zero (default 64); \
                reports MiB/s and the connection set-up time",
        help: "write MIB MiB in 64 KiB writes to a host vsock port, then shut down (needs --vsock)",
        envs: GUEST,
    },
    Entry {
        name: "vsock-rx",
        grammar: "vsock-rx[:PORT[:MIB]]",
        default: "5002",
        units: "PORT: host port (CID 2) connected to; MIB: MiB read, non-zero (default 64); \
                reports MiB/s and an FNV-1a-64 word checksum of the data",
        help: "read MIB MiB the host writes on a vsock connection (needs --vsock)",
        envs: GUEST,
    },
    Entry {
        name: "ticks",
        grammar: "ticks[:MS]",
        default: "100",
        units: "MS: milliseconds between lines, non-zero",
        help: "print tick=K every MS ms of TSC time, forever (shows that a paused VM makes no progress)",
        envs: GUEST,
    },
    Entry {
        name: "idle",
        grammar: "idle",
        default: "",
        units: "no argument",
        help: "boot and exit",
        envs: GUEST,
    },
    Entry {
        name: "fault",
        grammar: "fault",
        default: "",
        units: "no argument",
        help: "execute ud2 (tests the exception path: exit status 134)",
        envs: GUEST,
    },
    Entry {
        name: "panic",
        grammar: "panic",
        default: "",
        units: "no argument",
        help: "panic (tests the panic path: exit status 101)",
        envs: GUEST,
    },
];

/// The catalogue entry named `name`.
pub fn find(name: &str) -> Option<&'static Entry> {
    CATALOGUE.iter().find(|e| e.name == name)
}

/// Why a workload spec does not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// No workload has this name.
    Unknown,
    /// The argument (or one part of it) is not a decimal number.
    NotANumber,
    /// The argument is 0 where the workload needs at least 1.
    Zero,
    /// An argument was given to a workload that takes none.
    NoArgument,
    /// A number is too large (a vsock port is 32 bits).
    OutOfRange,
}

impl ParseError {
    /// The reason in words (no allocation: the guest prints it).
    pub fn message(self) -> &'static str {
        match self {
            Self::Unknown => "unknown workload",
            Self::NotANumber => "the argument is not a number",
            Self::Zero => "this workload needs a non-zero argument",
            Self::NoArgument => "this workload takes no argument",
            Self::OutOfRange => "a number is out of range (vsock ports are 32-bit)",
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

/// A parsed workload spec: what each CPU runs.
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
    /// `vsock-echo:PORT:CONNS`: listen on vsock PORT and echo every byte of
    /// every connection; end after CONNS connections (0: never).
    VsockEcho(u32, u64),
    /// `vsock-tx:PORT:MIB`: connect to host (CID 2) port PORT, write MIB MiB, shut down.
    VsockTx(u32, u64),
    /// `vsock-rx:PORT:MIB`: connect to host (CID 2) port PORT, read MIB MiB.
    VsockRx(u32, u64),
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
    /// The default when no workload is given.
    pub const DEFAULT: Self = Self::Primes(100_000);

    /// Parses `NAME[:ARG]`; a missing argument takes the catalogue's default.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let (name, arg) = match text.split_once(':') {
            Some((name, arg)) => (name, Some(arg)),
            None => (text, None),
        };
        let entry = find(name).ok_or(ParseError::Unknown)?;
        if entry.default.is_empty() {
            return match (arg, name) {
                (Some(_), _) => Err(ParseError::NoArgument),
                (None, "blk-pattern") => Ok(Self::BlkPattern),
                (None, "idle") => Ok(Self::Idle),
                (None, "fault") => Ok(Self::Fault),
                (None, _) => Ok(Self::Panic),
            };
        }
        let arg = arg.unwrap_or(entry.default);
        let number = |s: &str| s.parse::<u64>().map_err(|_| ParseError::NotANumber);
        if name == "net-tx" {
            let (frames, size) = arg.split_once(':').unwrap_or((arg, "1500"));
            let (frames, size) = (number(frames)?, number(size)?);
            if frames == 0 {
                return Err(ParseError::Zero);
            }
            return Ok(Self::NetTx(frames, size));
        }
        if let Some(vsock) = name.strip_prefix("vsock-") {
            let (port, more) = match arg.split_once(':') {
                Some((port, more)) => (port, Some(number(more)?)),
                None => (arg, None),
            };
            let port = u32::try_from(number(port)?).map_err(|_| ParseError::OutOfRange)?;
            if more == Some(0) {
                return Err(ParseError::Zero);
            }
            return Ok(match vsock {
                "echo" => Self::VsockEcho(port, more.unwrap_or(0)),
                "tx" => Self::VsockTx(port, more.unwrap_or(VSOCK_MIB)),
                "rx" => Self::VsockRx(port, more.unwrap_or(VSOCK_MIB)),
                _ => return Err(ParseError::Unknown),
            });
        }
        let n = number(arg)?;
        let nonzero = |n: u64| if n == 0 { Err(ParseError::Zero) } else { Ok(n) };
        Ok(match name {
            "primes" => Self::Primes(n),
            "memtest" => Self::Memtest(n),
            "exits" => Self::Exits(n),
            "mmio-exits" => Self::MmioExits(n),
            "net-echo" => Self::NetEcho(n),
            "net-rx" => Self::NetRx(n),
            "raytrace" => Self::Raytrace(nonzero(n)?),
            "md5" => Self::Md5(nonzero(n)?),
            "des" => Self::Des(nonzero(n)?),
            "blowfish" => Self::Blowfish(nonzero(n)?),
            "compress" => Self::Compress(nonzero(n)?),
            "smallio" => Self::SmallIo(nonzero(n)?),
            "blk-seq" => Self::BlkSeq(nonzero(n)?),
            "rng" => Self::Rng(nonzero(n)?),
            "ticks" => Self::Ticks(nonzero(n)?),
            _ => return Err(ParseError::Unknown),
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
            Self::VsockEcho(..) => "vsock-echo",
            Self::VsockTx(..) => "vsock-tx",
            Self::VsockRx(..) => "vsock-rx",
            Self::Ticks(_) => "ticks",
            Self::Idle => "idle",
            Self::Fault => "fault",
            Self::Panic => "panic",
        }
    }

    /// Its catalogue entry.
    pub fn entry(self) -> &'static Entry {
        match find(self.name()) {
            Some(e) => e,
            None => &CATALOGUE[0],
        }
    }

    /// The argument (0 for workloads without one; FRAMES for `net-tx`, PORT for the vsock ones).
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
            Self::VsockEcho(port, _) | Self::VsockTx(port, _) | Self::VsockRx(port, _) => u64::from(port),
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
                | Self::VsockEcho(..)
                | Self::VsockTx(..)
                | Self::VsockRx(..)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_parses_with_its_default() {
        for e in CATALOGUE {
            let w = Workload::parse(e.name).unwrap_or_else(|err| panic!("{}: {err}", e.name));
            assert_eq!(w.name(), e.name);
            assert_eq!(w.entry(), e);
            assert!(e.grammar.starts_with(e.name), "{}", e.grammar);
            assert!(e.envs.guest, "{}: every workload runs in the test guest", e.name);
            if !e.default.is_empty() {
                let spec = std::format!("{}:{}", e.name, e.default);
                assert_eq!(Workload::parse(&spec), Ok(w));
            }
        }
    }

    #[test]
    fn specs_parse_with_defaults_and_errors() {
        assert_eq!(Workload::parse("primes"), Ok(Workload::Primes(100_000)));
        assert_eq!(Workload::parse("primes:1000"), Ok(Workload::Primes(1000)));
        assert_eq!(Workload::parse("primes:abc"), Err(ParseError::NotANumber));
        assert_eq!(Workload::parse("bogus:1"), Err(ParseError::Unknown));
        assert_eq!(Workload::parse("md5:0"), Err(ParseError::Zero));
        assert_eq!(Workload::parse("memtest:0"), Ok(Workload::Memtest(0)));
        assert_eq!(Workload::parse("idle:1"), Err(ParseError::NoArgument));
        assert_eq!(Workload::parse("net-tx"), Ok(Workload::NetTx(1000, 1500)));
        assert_eq!(Workload::parse("net-tx:5"), Ok(Workload::NetTx(5, 1500)));
        assert_eq!(Workload::parse("net-tx:5:64"), Ok(Workload::NetTx(5, 64)));
        assert_eq!(Workload::parse("net-tx:0"), Err(ParseError::Zero));
        assert_eq!(Workload::parse("net-tx:5:x"), Err(ParseError::NotANumber));
        assert_eq!(Workload::parse("vsock-echo:5000"), Ok(Workload::VsockEcho(5000, 0)));
        assert_eq!(Workload::parse("vsock-echo:5000:3"), Ok(Workload::VsockEcho(5000, 3)));
        assert_eq!(Workload::parse("vsock-echo:5000:0"), Err(ParseError::Zero));
        assert_eq!(Workload::parse("vsock-echo:4294967296"), Err(ParseError::OutOfRange));
        assert_eq!(Workload::parse("vsock-echo:x"), Err(ParseError::NotANumber));
        assert_eq!(Workload::parse("vsock-tx:7"), Ok(Workload::VsockTx(7, 64)));
        assert_eq!(Workload::parse("vsock-tx:7:1"), Ok(Workload::VsockTx(7, 1)));
        assert_eq!(Workload::parse("vsock-rx:7:2"), Ok(Workload::VsockRx(7, 2)));
        assert_eq!(Workload::parse("vsock-rx:7:2:3"), Err(ParseError::NotANumber));
        assert_eq!(Workload::parse("vsock-rx:7:0"), Err(ParseError::Zero));
        assert_eq!(Workload::VsockTx(7, 1).arg(), 7);
        assert!(Workload::VsockEcho(1, 0).uses_devices());
    }
}
