//! The protocol between kvmkit (the VMM) and kvmkit's own test guest.
//!
//! Shared by both sides so they cannot drift apart. Everything here is plain
//! data: port numbers, MMIO addresses, command-line keys and the layout of the
//! [`Report`] record. `docs/guest-protocol.md` describes the same in prose.
//!
//! The guest talks to the VMM with port I/O from CPL3 (its TSS I/O bitmap
//! allows every port), so the common path is not emulated even under PVM.
#![no_std]

pub mod virtio_mmio;

/// Debug port written with boot milestones (as Cloud Hypervisor uses 0x80).
pub const DEBUG_PORT: u16 = 0x80;
/// Milestone byte written to [`DEBUG_PORT`] at the guest's very first instruction.
pub const MILESTONE_ENTRY: u8 = 0x40;
/// Milestone byte written to [`DEBUG_PORT`] when the guest is ready for work.
pub const MILESTONE_READY: u8 = 0x60;

/// First port of the kvmkit guest port block.
pub const PORT_BASE: u16 = 0x600;
/// Number of ports in the kvmkit guest port block.
pub const PORT_COUNT: u16 = 0x10;
/// 32-bit write: end the VM with this exit status (0 = success).
pub const EXIT_PORT: u16 = PORT_BASE;
/// 32-bit write: guest-physical address of a [`Report`] the VMM should read.
pub const REPORT_PORT: u16 = PORT_BASE + 4;
/// Any access: does nothing. Target of the port-I/O exit-latency loop.
pub const NULL_PORT: u16 = PORT_BASE + 8;

/// Guest-physical base of a 4 KiB MMIO page that does nothing (MMIO exit loop).
pub const NULL_MMIO_ADDR: u64 = 0xd000_0000;
/// Size of the null MMIO page.
pub const NULL_MMIO_SIZE: u64 = 0x1000;

/// QEMU microvm's ACPI GED sleep-control register (a way to power off there).
pub const QEMU_MICROVM_GED_SLEEP_ADDR: u64 = 0xfea0_0200;
/// Value for [`QEMU_MICROVM_GED_SLEEP_ADDR`]: SLP_EN | SLP_TYP=5 (S5, off).
pub const QEMU_MICROVM_GED_SLEEP_S5: u8 = 0x34;
/// i8042 command port; writing [`I8042_RESET`] resets (ends) the machine.
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// i8042 "pulse reset line" command.
pub const I8042_RESET: u8 = 0xfe;

/// COM1 base port: the guest's console.
pub const COM1_PORT: u16 = 0x3f8;

/// Command-line key naming the workload: `kvmkit.workload=NAME[:ARG[:ARG]]`.
pub const CMDLINE_WORKLOAD: &str = "kvmkit.workload";
/// Command-line key with the number of vCPUs the guest should bring up.
pub const CMDLINE_CPUS: &str = "kvmkit.cpus";
/// Command-line key with the TSC frequency in kHz (for converting ticks to ns).
pub const CMDLINE_TSC_KHZ: &str = "kvmkit.tsc_khz";

/// Most vCPUs kvmkit's guest can bring up.
pub const MAX_CPUS: usize = 64;

/// Magic value at the start of every [`Report`] ("KVMK").
pub const REPORT_MAGIC: u32 = 0x4b4d_564b;

/// What a [`Report`] carries.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportKind {
    /// A vCPU came online: `value` = its APIC id.
    CpuOnline = 1,
    /// A workload finished on `cpu`: `arg` = its argument, `value` = its
    /// result (e.g. the prime count), `ticks` = TSC ticks it took, `ns` =
    /// the same in nanoseconds when the guest knows the TSC rate, else 0.
    Result = 2,
    /// A CPU exception: `arg` = vector, `value` = faulting RIP,
    /// `ticks` = error code. The guest then exits with a failure status.
    Exception = 3,
    /// The guest panicked: `name` holds the start of the message.
    Panic = 4,
}

impl ReportKind {
    /// Decodes a raw kind, `None` when the guest sent something unknown.
    pub fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            1 => Some(Self::CpuOnline),
            2 => Some(Self::Result),
            3 => Some(Self::Exception),
            4 => Some(Self::Panic),
            _ => None,
        }
    }
}

/// Length of [`Report::name`].
pub const REPORT_NAME_LEN: usize = 32;

/// A record the guest writes into its memory and hands to the VMM by writing
/// its guest-physical address to [`REPORT_PORT`]. The VMM copies it out and
/// validates `magic` and `kind`; anything malformed is logged and ignored.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Report {
    /// Must be [`REPORT_MAGIC`].
    pub magic: u32,
    /// A [`ReportKind`] as `u32`.
    pub kind: u32,
    /// Index of the reporting vCPU (0 = bootstrap processor).
    pub cpu: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// Workload name or panic message, NUL-padded UTF-8.
    pub name: [u8; REPORT_NAME_LEN],
    /// Workload argument or exception vector.
    pub arg: u64,
    /// Result value, APIC id or faulting RIP.
    pub value: u64,
    /// Elapsed TSC ticks or exception error code.
    pub ticks: u64,
    /// Elapsed nanoseconds (0 when unknown).
    pub ns: u64,
}

/// Size in bytes of a [`Report`] in guest memory.
pub const REPORT_SIZE: usize = core::mem::size_of::<Report>();

impl Report {
    /// An all-zero report of the given kind from the given CPU.
    pub const fn new(kind: ReportKind, cpu: u32) -> Self {
        Self {
            magic: REPORT_MAGIC,
            kind: kind as u32,
            cpu,
            reserved: 0,
            name: [0; REPORT_NAME_LEN],
            arg: 0,
            value: 0,
            ticks: 0,
            ns: 0,
        }
    }

    /// Stores `text` in `name`, truncated to fit.
    pub fn set_name(&mut self, text: &str) {
        let n = text.len().min(REPORT_NAME_LEN);
        self.name = [0; REPORT_NAME_LEN];
        self.name[..n].copy_from_slice(&text.as_bytes()[..n]);
    }

    /// `name` up to the first NUL, or `None` when it is not UTF-8.
    pub fn name_str(&self) -> Option<&str> {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(REPORT_NAME_LEN);
        core::str::from_utf8(&self.name[..end]).ok()
    }

    /// Decodes a report from raw little-endian bytes as read from guest memory.
    pub fn from_bytes(bytes: &[u8; REPORT_SIZE]) -> Self {
        let u32_at = |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        let u64_at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[o..o + 8]);
            u64::from_le_bytes(b)
        };
        let mut name = [0u8; REPORT_NAME_LEN];
        name.copy_from_slice(&bytes[16..16 + REPORT_NAME_LEN]);
        let o = 16 + REPORT_NAME_LEN;
        Self {
            magic: u32_at(0),
            kind: u32_at(4),
            cpu: u32_at(8),
            reserved: u32_at(12),
            name,
            arg: u64_at(o),
            value: u64_at(o + 8),
            ticks: u64_at(o + 16),
            ns: u64_at(o + 24),
        }
    }
}

/// Finds `key=value` in a kernel-style command line and returns `value`.
pub fn cmdline_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline.split_ascii_whitespace().find_map(|word| {
        let (k, v) = word.split_once('=')?;
        (k == key).then_some(v)
    })
}

/// Kernel command-line key announcing a virtio-mmio device, in Linux's format
/// `virtio_mmio.device=<size>@<base>:<irq>[:<id>]` (the VMM passes one per
/// device; QEMU microvm adds them itself). See [`parse_virtio_mmio_device`].
pub const CMDLINE_VIRTIO_MMIO_DEVICE: &str = "virtio_mmio.device";

/// One `virtio_mmio.device=` entry of the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioMmioDevice {
    /// Size of the register window in bytes.
    pub size: u64,
    /// Guest-physical base of the register window.
    pub base: u64,
    /// Interrupt line (never 0).
    pub irq: u32,
    /// Platform device id, when given.
    pub id: Option<u32>,
}

/// Parses an unsigned integer the way C's `strtoull(.., 0)` does: `0x`
/// prefix hexadecimal, leading `0` octal, else decimal. Returns the value and
/// the rest of `text`; `None` when no digit follows or it overflows.
fn parse_c_uint(text: &str) -> Option<(u64, &str)> {
    let (radix, digits) = if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        (16, hex)
    } else if text.len() > 1 && text.starts_with('0') {
        (8, &text[1..])
    } else {
        (10, text)
    };
    let end = digits.find(|c: char| !c.is_digit(radix)).unwrap_or(digits.len());
    if end == 0 {
        return None;
    }
    let value = u64::from_str_radix(&digits[..end], radix).ok()?;
    Some((value, &digits[end..]))
}

/// Parses a size like Linux's `memparse`: a C integer (as
/// `strtoull(.., 0)` reads it) with an optional K/M/G/T/P/E suffix (either case).
/// Returns the value and the rest of `text`.
pub fn parse_memsize(text: &str) -> Option<(u64, &str)> {
    let (value, rest) = parse_c_uint(text)?;
    let shift = match rest.as_bytes().first().map(u8::to_ascii_uppercase) {
        Some(b'K') => 10,
        Some(b'M') => 20,
        Some(b'G') => 30,
        Some(b'T') => 40,
        Some(b'P') => 50,
        Some(b'E') => 60,
        _ => return Some((value, rest)),
    };
    let scaled = value.checked_mul(1u64 << shift)?;
    Some((scaled, &rest[1..]))
}

/// Parses the value of a `virtio_mmio.device=` word as Linux does:
/// `<size>@<base>:<irq>[:<id>]`, size with [`parse_memsize`], base a C
/// integer (`0x...`), irq and id decimal; irq 0 and trailing text are errors.
pub fn parse_virtio_mmio_device(value: &str) -> Option<VirtioMmioDevice> {
    let (size, rest) = parse_memsize(value)?;
    let (base, rest) = parse_c_uint(rest.strip_prefix('@')?)?;
    let rest = rest.strip_prefix(':')?;
    let (irq, id) = match rest.split_once(':') {
        Some((irq, id)) => (irq, Some(id.parse::<u32>().ok()?)),
        None => (rest, None),
    };
    let irq = irq.parse::<u32>().ok().filter(|&i| i != 0)?;
    (size != 0).then_some(VirtioMmioDevice { size, base, irq, id })
}

/// Every well-formed `virtio_mmio.device=` entry of `cmdline`, in order
/// (malformed ones are skipped).
pub fn virtio_mmio_devices(cmdline: &str) -> impl Iterator<Item = VirtioMmioDevice> + '_ {
    cmdline.split_ascii_whitespace().filter_map(|word| {
        let (k, v) = word.split_once('=')?;
        if k == CMDLINE_VIRTIO_MMIO_DEVICE {
            parse_virtio_mmio_device(v)
        } else {
            None
        }
    })
}

/// Kernel command-line key describing one NIC to kvmkit's guest:
/// `kvmkit.net=<mac>,<guest-ip>,<host-ip>,<prefix>` (one word per NIC, in
/// attach order; `0.0.0.0` when an address is unknown). See [`parse_net`].
pub const CMDLINE_NET: &str = "kvmkit.net";

/// One `kvmkit.net=` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetParams {
    /// The NIC's MAC.
    pub mac: [u8; 6],
    /// The guest's IPv4 address (0 when unknown).
    pub guest_ip: [u8; 4],
    /// The host side's IPv4 address (0 when unknown).
    pub host_ip: [u8; 4],
    /// Prefix length of the network.
    pub prefix: u8,
}

fn parse_ipv4(text: &str) -> Option<[u8; 4]> {
    let mut a = [0u8; 4];
    let mut parts = text.split('.');
    for b in &mut a {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 {
            return None;
        }
        *b = p.parse().ok()?;
    }
    parts.next().is_none().then_some(a)
}

/// Parses the value of a `kvmkit.net=` word (the prefix may be left out: 30).
pub fn parse_net(value: &str) -> Option<NetParams> {
    let mut parts = value.split(',');
    let mut mac = [0u8; 6];
    let mut bytes = parts.next()?.split(':');
    for b in &mut mac {
        let p = bytes.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    if bytes.next().is_some() {
        return None;
    }
    let guest_ip = parse_ipv4(parts.next()?)?;
    let host_ip = parse_ipv4(parts.next()?)?;
    let prefix = match parts.next() {
        Some(p) => p.parse::<u8>().ok().filter(|&p| p <= 32)?,
        None => 30,
    };
    parts.next().is_none().then_some(NetParams {
        mac,
        guest_ip,
        host_ip,
        prefix,
    })
}

/// Every well-formed `kvmkit.net=` entry of `cmdline`, in order.
pub fn net_params(cmdline: &str) -> impl Iterator<Item = NetParams> + '_ {
    cmdline.split_ascii_whitespace().filter_map(|word| {
        let (k, v) = word.split_once('=')?;
        if k == CMDLINE_NET {
            parse_net(v)
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_layout_is_stable() {
        assert_eq!(REPORT_SIZE, 16 + REPORT_NAME_LEN + 32);
    }

    #[test]
    fn report_round_trips_through_bytes() {
        let mut r = Report::new(ReportKind::Result, 3);
        r.set_name("primes");
        r.arg = 100_000;
        r.value = 9592;
        r.ticks = 12345;
        r.ns = 678;
        // SAFETY: Report is repr(C) plain-old-data without padding.
        let bytes: [u8; REPORT_SIZE] = unsafe { core::mem::transmute(r) };
        assert_eq!(Report::from_bytes(&bytes), r);
        assert_eq!(r.name_str(), Some("primes"));
    }

    #[test]
    fn long_names_are_truncated() {
        let mut r = Report::new(ReportKind::Panic, 0);
        r.set_name("a panic message that is much longer than thirty-two bytes");
        assert_eq!(r.name_str().map(str::len), Some(REPORT_NAME_LEN));
    }

    #[test]
    fn cmdline_values_are_found_by_exact_key() {
        let c = "console=ttyS0 kvmkit.workload=primes:100000 kvmkit.cpus=2";
        assert_eq!(cmdline_value(c, CMDLINE_WORKLOAD), Some("primes:100000"));
        assert_eq!(cmdline_value(c, CMDLINE_CPUS), Some("2"));
        assert_eq!(cmdline_value(c, "kvmkit"), None);
        assert_eq!(cmdline_value(c, CMDLINE_TSC_KHZ), None);
    }

    #[test]
    fn unknown_report_kinds_are_rejected() {
        assert_eq!(ReportKind::from_raw(2), Some(ReportKind::Result));
        assert_eq!(ReportKind::from_raw(0), None);
        assert_eq!(ReportKind::from_raw(99), None);
    }

    #[test]
    fn virtio_mmio_devices_are_parsed_like_linux() {
        let c = "console=ttyS0 virtio_mmio.device=512@0xfeb00e00:12 virtio_mmio.device=4K@0xd0001000:5:3 \
                 virtio_mmio.device=0x1000@0xd0002000:6 virtio_mmio.device=1K@0xd0003000:0 \
                 virtio_mmio.device=4K@0xd0004000:7x kvmkit.workload=blk-pattern";
        let mut devs = virtio_mmio_devices(c);
        let d = |size, base, irq, id| Some(VirtioMmioDevice { size, base, irq, id });
        assert_eq!(devs.next(), d(512, 0xfeb0_0e00, 12, None));
        assert_eq!(devs.next(), d(4096, 0xd000_1000, 5, Some(3)));
        assert_eq!(devs.next(), d(0x1000, 0xd000_2000, 6, None));
        assert_eq!(devs.next(), None);
        assert_eq!(parse_memsize("2M"), Some((2 << 20, "")));
        assert_eq!(parse_memsize("010k@"), Some((8 << 10, "@")));
        assert_eq!(parse_memsize("x"), None);
        assert_eq!(parse_virtio_mmio_device("4K@0x1000"), None);
        assert_eq!(parse_virtio_mmio_device("0@0x1000:5"), None);
    }

    #[test]
    fn net_params_are_parsed() {
        let c = "kvmkit.net=52:54:00:ab:cd:ef,10.0.2.2,10.0.2.1,30 kvmkit.net=52:54:00:00:00:01,0.0.0.0,0.0.0.0 \
                 kvmkit.net=52:54:00:00:00,1.2.3.4,1.2.3.5 kvmkit.net=52:54:00:00:00:02,1.2.3.256,1.2.3.5";
        let v: [Option<NetParams>; 3] = {
            let mut it = net_params(c);
            [it.next(), it.next(), it.next()]
        };
        assert_eq!(
            v[0],
            Some(NetParams {
                mac: [0x52, 0x54, 0, 0xab, 0xcd, 0xef],
                guest_ip: [10, 0, 2, 2],
                host_ip: [10, 0, 2, 1],
                prefix: 30
            })
        );
        assert_eq!(v[1].map(|p| (p.guest_ip, p.prefix)), Some(([0; 4], 30)));
        assert_eq!(v[2], None);
    }
}
