//! Fuzz target body: register reads and writes against an `MmioTransport`
//! wrapping a virtio-blk device on a real temp image, with queue eventfds.
//!
//! The device sits inside a [`Recorder`] that checks every activation the
//! transport makes (and forwards everything to the real `Block`). Guest
//! memory ([`crate::guest_memory`]) stays zeroed, so an activated device
//! finds no requests and its worker thread changes nothing the target reads:
//! every register value is deterministic.
//!
//! Input: byte 0 bit 0 read-only image, byte 1 image size in sectors
//! (`1 + x % 64`); then operations, each starting with an op byte `b`:
//!
//! | `b % 8` | operation                                                          |
//! |---------|--------------------------------------------------------------------|
//! | 0, 1    | write: offset (a known register, or any of 0..0x200), size `[4,1,2,8][(b >> 3) & 3]`, value |
//! | 2       | read: offset, size                                                 |
//! | 3       | handshake: ACKNOWLEDGE, DRIVER, features, FEATURES_OK, queue select, size, addresses, ready, DRIVER_OK, each step skippable, values valid or garbage (unaligned, outside RAM, high halves set, sizes not a power of two or too big) |
//! | 4       | status write: any combination of the status bits, or any u32       |
//! | 5       | reset (status 0)                                                   |
//! | 6       | config space read or write at 0x100 + 0..0xff, size 1/2/4/8         |
//! | 7       | QueueNotify / InterruptACK with a value from the input             |
//!
//! Checks beyond "no panic":
//! * activation: never twice without a reset; only with FEATURES_OK-style
//!   features (VERSION_1 accepted, nothing the device did not offer); every
//!   queue ready, its size a power of two no larger than the maximum, its
//!   rings aligned, inside RAM and (virtio-queue's own rule) the avail ring
//!   not at address 0;
//! * DRIVER_OK without DEVICE_NEEDS_RESET in the status means the device is
//!   running; a running device means DRIVER_OK; DEVICE_NEEDS_RESET means it
//!   is not;
//! * status bits are only ever added, except by a reset, after which status,
//!   interrupt status and QueueReady read 0;
//! * constant registers read their constants, DeviceFeatures the features
//!   of a block device (read-only or not), QueueNumMax 256 for queue 0 and 0
//!   for any other; config space never changes, reports the capacity and
//!   reads 0 past its end;
//! * writes to read-only or unknown registers, register writes that are not
//!   4 aligned bytes, and config writes change no readable register.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kvmkit_vmm::bus::BusDevice;
use kvmkit_vmm::memory::GuestMemoryMmap;
use kvmkit_vmm::virtio::block::disk::DiskImage;
use kvmkit_vmm::virtio::block::Block;
use kvmkit_vmm::virtio::mmio::{status, MmioTransport};
use kvmkit_vmm::virtio::{Activation, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use virtio_queue::QueueT;
use vmm_sys_util::eventfd::EventFd;

use crate::{guest_memory, Input, RAM_REGIONS};

const MAGIC: u64 = 0x000;
const VERSION: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const VENDOR_ID: u64 = 0x00c;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
const QUEUE_NOTIFY: u64 = 0x050;
const INTERRUPT_STATUS: u64 = 0x060;
const INTERRUPT_ACK: u64 = 0x064;
const STATUS: u64 = 0x070;
const QUEUE_DESC_LOW: u64 = 0x080;
const QUEUE_DESC_HIGH: u64 = 0x084;
const QUEUE_DRIVER_LOW: u64 = 0x090;
const QUEUE_DRIVER_HIGH: u64 = 0x094;
const QUEUE_DEVICE_LOW: u64 = 0x0a0;
const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG: u64 = 0x100;

const REGISTERS: [u64; 24] = [
    MAGIC,
    VERSION,
    DEVICE_ID,
    VENDOR_ID,
    DEVICE_FEATURES,
    DEVICE_FEATURES_SEL,
    DRIVER_FEATURES,
    DRIVER_FEATURES_SEL,
    QUEUE_SEL,
    QUEUE_NUM_MAX,
    QUEUE_NUM,
    QUEUE_READY,
    QUEUE_NOTIFY,
    INTERRUPT_STATUS,
    INTERRUPT_ACK,
    STATUS,
    QUEUE_DESC_LOW,
    QUEUE_DESC_HIGH,
    QUEUE_DRIVER_LOW,
    QUEUE_DRIVER_HIGH,
    QUEUE_DEVICE_LOW,
    QUEUE_DEVICE_HIGH,
    CONFIG_GENERATION,
    CONFIG,
];

/// Registers a driver may write (virtio 1.x, 4.2.2).
const WRITABLE: [u64; 15] = [
    DEVICE_FEATURES_SEL,
    DRIVER_FEATURES,
    DRIVER_FEATURES_SEL,
    QUEUE_SEL,
    QUEUE_NUM,
    QUEUE_READY,
    QUEUE_NOTIFY,
    INTERRUPT_ACK,
    STATUS,
    QUEUE_DESC_LOW,
    QUEUE_DESC_HIGH,
    QUEUE_DRIVER_LOW,
    QUEUE_DRIVER_HIGH,
    QUEUE_DEVICE_LOW,
    QUEUE_DEVICE_HIGH,
];

/// Block feature bits, written out independently of kvmkit.
fn block_features(read_only: bool) -> u64 {
    let (seg_max, ro, blk_size, flush, discard, write_zeroes) = (1 << 2, 1 << 5, 1 << 6, 1 << 9, 1 << 13, 1 << 14);
    let event_idx = 1 << 29;
    VIRTIO_F_VERSION_1 | event_idx | seg_max | blk_size | flush | if read_only { ro } else { discard | write_zeroes }
}

/// Whether `[addr, addr + len)` lies in guest RAM (adjacent regions count
/// as one).
fn in_ram(addr: u64, len: u64) -> bool {
    let Some(end) = addr.checked_add(len) else { return false };
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for &(a, l) in &RAM_REGIONS {
        match spans.last_mut() {
            Some(s) if s.1 == a => s.1 += l as u64,
            _ => spans.push((a, a + l as u64)),
        }
    }
    spans.iter().any(|&(s, e)| s <= addr && end <= e)
}

/// What the recorder saw.
#[derive(Debug, Default)]
pub struct Log {
    /// Whether the device is running (activated, not reset since).
    pub active: bool,
    /// Activations so far.
    pub activations: usize,
}

/// A `VirtioDevice` that checks each activation, then hands it to `inner`.
struct Recorder {
    inner: Block,
    log: Arc<Mutex<Log>>,
}

impl VirtioDevice for Recorder {
    fn device_type(&self) -> u32 {
        self.inner.device_type()
    }

    fn queue_max_sizes(&self) -> &[u16] {
        self.inner.queue_max_sizes()
    }

    fn features(&self) -> u64 {
        self.inner.features()
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.inner.read_config(offset, data)
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.inner.write_config(offset, data)
    }

    fn activate(&mut self, acked: u64, a: Activation) -> Result<(), String> {
        let mut log = self.log.lock().expect("log");
        assert!(!log.active, "activated twice without a reset");
        let offered = self.inner.features();
        assert!(
            acked & VIRTIO_F_VERSION_1 != 0 && acked & !offered == 0,
            "activated with features {acked:#x} of {offered:#x}"
        );
        assert_eq!(
            a.queues.len(),
            self.inner.queue_max_sizes().len(),
            "one queue per queue"
        );
        assert_eq!(a.queue_events.len(), a.queues.len(), "one eventfd per queue");
        for (q, &max) in a.queues.iter().zip(self.inner.queue_max_sizes()) {
            let size = q.size();
            let s = u64::from(size);
            let (desc, avail, used) = (q.desc_table(), q.avail_ring(), q.used_ring());
            let valid = q.ready()
                && size != 0
                && size.is_power_of_two()
                && size <= max
                && desc % 16 == 0
                && avail % 2 == 0
                && used % 4 == 0
                && in_ram(desc, 16 * s)
                && in_ram(avail, 6 + 2 * s)
                && in_ram(used, 6 + 8 * s)
                && avail != 0;
            assert!(
                valid,
                "activated with an invalid queue: ready {} size {size} desc {desc:#x} avail {avail:#x} used {used:#x}",
                q.ready()
            );
        }
        let result = self.inner.activate(acked, a);
        if result.is_ok() {
            log.active = true;
            log.activations += 1;
        }
        result
    }

    fn reset(&mut self) {
        self.log.lock().expect("log").active = false;
        self.inner.reset();
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self.inner.as_any_mut()
    }
}

/// A temp image removed on drop.
struct TempImage(PathBuf);

impl TempImage {
    fn new(len: u64) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("kvmkit-fuzz-mmio-{}-{n}", std::process::id()));
        let f = std::fs::File::create(&path).expect("temp image");
        f.write_all_at(&[0x5a; 512], 0).expect("fill");
        f.set_len(len).expect("size");
        Self(path)
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What one run did, for the smoke test's coverage checks.
#[derive(Clone, Copy, Debug, Default)]
pub struct Outcome {
    /// Activations.
    pub activations: usize,
    /// DRIVER_OK refused with DEVICE_NEEDS_RESET.
    pub needs_reset: usize,
    /// Resets.
    pub resets: usize,
}

struct Rig<'a> {
    input: Input<'a>,
    transport: MmioTransport,
    log: Arc<Mutex<Log>>,
    features: u64,
    config: Vec<u8>,
    /// Last QueueSel / DeviceFeaturesSel written (4-byte aligned writes).
    queue_sel: u32,
    features_sel: u32,
    outcome: Outcome,
    _image: TempImage,
}

impl Rig<'_> {
    fn read(&mut self, offset: u64, size: usize) -> u64 {
        let mut d = [0u8; 8];
        self.transport.read(offset, &mut d[..size]);
        let v = u64::from_le_bytes(d);
        if offset >= CONFIG {
            let start = (offset - CONFIG) as usize;
            for (i, &b) in d[..size].iter().enumerate() {
                let expected = self.config.get(start + i).copied().unwrap_or(0);
                assert_eq!(b, expected, "config byte {:#x} changed", start + i);
            }
        } else if size == 4 && offset.is_multiple_of(4) {
            let v = v as u32;
            let expect = |what: &str, want: u32| assert_eq!(v, want, "{what} at {offset:#x}");
            match offset {
                MAGIC => expect("magic", 0x7472_6976),
                VERSION => expect("version", 2),
                DEVICE_ID => expect("device id", 2),
                VENDOR_ID => expect("vendor id", 0x4b4d_564b),
                DEVICE_FEATURES => expect(
                    "device features",
                    match self.features_sel {
                        0 => self.features as u32,
                        1 => (self.features >> 32) as u32,
                        _ => 0,
                    },
                ),
                QUEUE_NUM_MAX => expect("queue num max", if self.queue_sel == 0 { 256 } else { 0 }),
                _ => {}
            }
        }
        v
    }

    fn read32(&mut self, offset: u64) -> u32 {
        self.read(offset, 4) as u32
    }

    /// Everything a driver can read.
    fn observable(&mut self) -> Vec<u64> {
        let mut v: Vec<u64> = [
            MAGIC,
            VERSION,
            DEVICE_ID,
            VENDOR_ID,
            DEVICE_FEATURES,
            QUEUE_NUM_MAX,
            QUEUE_READY,
            INTERRUPT_STATUS,
            STATUS,
            CONFIG_GENERATION,
        ]
        .iter()
        .map(|&r| u64::from(self.read32(r)))
        .collect();
        v.extend((0..17).map(|i| self.read(CONFIG + 4 * i, 4)));
        let log = self.log.lock().expect("log");
        v.extend([u64::from(log.active), log.activations as u64]);
        v
    }

    fn write(&mut self, offset: u64, size: usize, value: u64) {
        let read_only = offset >= CONFIG || size != 4 || !offset.is_multiple_of(4) || !WRITABLE.contains(&offset);
        let before_status = self.read32(STATUS);
        let before = read_only.then(|| self.observable());
        self.transport.write(offset, &value.to_le_bytes()[..size]);
        if let Some(before) = before {
            assert_eq!(
                before,
                self.observable(),
                "{size}-byte write of {value:#x} to read-only {offset:#x} changed a register"
            );
        }
        if size == 4 && offset.is_multiple_of(4) {
            match offset {
                QUEUE_SEL => self.queue_sel = value as u32,
                DEVICE_FEATURES_SEL => self.features_sel = value as u32,
                _ => {}
            }
        }
        let reset = offset == STATUS && size == 4 && value as u32 == 0;
        self.check_status(before_status, reset);
    }

    fn check_status(&mut self, before: u32, reset: bool) {
        let now = self.read32(STATUS);
        if reset {
            self.outcome.resets += 1;
            self.queue_sel = 0;
            self.features_sel = 0;
            assert_eq!(now, 0, "status after reset");
            assert_eq!(self.read32(INTERRUPT_STATUS), 0, "interrupt status after reset");
            assert_eq!(self.read32(QUEUE_READY), 0, "queue ready after reset");
            assert!(!self.log.lock().expect("log").active, "running after reset");
            return;
        }
        assert_eq!(
            now & before,
            before,
            "status bits cleared without a reset: {before:#x} -> {now:#x}"
        );
        let active = self.log.lock().expect("log").active;
        let driver_ok = now & status::DRIVER_OK != 0;
        let needs_reset = now & status::DEVICE_NEEDS_RESET != 0;
        if driver_ok && !needs_reset {
            assert!(active, "DRIVER_OK ({now:#x}) but the device is not running");
        }
        if active {
            assert!(driver_ok && !needs_reset, "running with status {now:#x}");
        }
        if needs_reset && before & status::DEVICE_NEEDS_RESET == 0 {
            self.outcome.needs_reset += 1;
        }
    }

    fn pick_offset(&mut self, b: u8) -> u64 {
        let x = self.input.u16();
        if b & 0x40 != 0 {
            REGISTERS[usize::from(x) % REGISTERS.len()] + u64::from(x >> 12 & 3) * u64::from(b & 0x80 != 0)
        } else {
            u64::from(x) % 0x200
        }
    }

    fn pick_value(&mut self, b: u8) -> u64 {
        if b & 0x20 != 0 {
            u64::from(self.input.u8())
        } else {
            self.input.u64()
        }
    }

    fn handshake(&mut self) {
        let skip = self.input.u16();
        let step = |i: u32| skip & (1 << i) == 0 || skip & 0x8000 != 0;
        let mut st = 0;
        for (i, bit) in [status::ACKNOWLEDGE, status::DRIVER].into_iter().enumerate() {
            if step(i as u32) {
                st |= bit;
                self.write(STATUS, 4, u64::from(st));
            }
        }
        if step(2) {
            let garbage = self.input.u8();
            let high = if garbage & 1 != 0 { self.input.u32() } else { 1 };
            let low = if garbage & 2 != 0 {
                self.input.u32()
            } else {
                self.features as u32 & self.input.u32()
            };
            self.write(DRIVER_FEATURES_SEL, 4, 1);
            self.write(DRIVER_FEATURES, 4, u64::from(high));
            self.write(DRIVER_FEATURES_SEL, 4, 0);
            self.write(DRIVER_FEATURES, 4, u64::from(low));
        }
        if step(3) {
            st |= status::FEATURES_OK;
            self.write(STATUS, 4, u64::from(st));
        }
        if step(4) {
            let sel = if skip & (1 << 10) != 0 {
                u64::from(self.input.u8())
            } else {
                0
            };
            self.write(QUEUE_SEL, 4, sel);
        }
        if step(5) {
            let x = self.input.u8();
            let size = if x & 0x80 != 0 {
                u64::from(self.input.u32())
            } else {
                1 << (x % 10)
            };
            self.write(QUEUE_NUM, 4, size);
        }
        for (i, (low, align)) in [(QUEUE_DESC_LOW, 16), (QUEUE_DRIVER_LOW, 2), (QUEUE_DEVICE_LOW, 4)]
            .into_iter()
            .enumerate()
        {
            if !step(6 + i as u32) {
                continue;
            }
            let x = self.input.u8();
            let addr = match x % 8 {
                0..=3 => u64::from(self.input.u16()) & !(align - 1),
                4 => 0x1_0000 - align * u64::from(self.input.u8() % 8),
                5 => 0x2_0000 + (u64::from(self.input.u16()) & 0xfff & !(align - 1)),
                6 => u64::from(self.input.u16()),
                _ => self.input.u64(),
            };
            self.write(low, 4, addr & 0xffff_ffff);
            if x & 0x80 != 0 || addr >> 32 != 0 {
                self.write(low + 4, 4, addr >> 32);
            }
        }
        if step(9) {
            let v = if skip & (1 << 11) != 0 {
                u64::from(self.input.u8())
            } else {
                1
            };
            self.write(QUEUE_READY, 4, v);
        }
        if step(12) {
            st |= status::DRIVER_OK;
            self.write(STATUS, 4, u64::from(st));
        }
    }

    fn op(&mut self) -> bool {
        let b = self.input.u8();
        let size = [4, 1, 2, 8][usize::from(b >> 3 & 3)];
        match b % 8 {
            0 | 1 => {
                let offset = self.pick_offset(b);
                let value = self.pick_value(b);
                self.write(offset, size, value);
            }
            2 => {
                let offset = self.pick_offset(b);
                let before = self.read32(STATUS);
                self.read(offset, size);
                self.check_status(before, false);
            }
            3 => self.handshake(),
            4 => {
                let v = if b & 0x80 != 0 {
                    self.input.u32()
                } else {
                    let bits = [1, 2, 8, 4, 64, 128];
                    let m = self.input.u8();
                    bits.iter()
                        .enumerate()
                        .filter(|(i, _)| m & (1 << i) != 0)
                        .map(|(_, b)| b)
                        .sum()
                };
                self.write(STATUS, 4, u64::from(v));
            }
            5 => self.write(STATUS, 4, 0),
            6 => {
                let offset = CONFIG + u64::from(self.input.u8());
                if b & 0x80 != 0 {
                    let v = self.pick_value(b);
                    self.write(offset, size, v);
                } else {
                    self.read(offset, size);
                }
            }
            _ => {
                let offset = if b & 0x80 != 0 { QUEUE_NOTIFY } else { INTERRUPT_ACK };
                let v = self.pick_value(b);
                self.write(offset, 4, v);
            }
        }
        !self.input.is_empty()
    }
}

fn transport(read_only: bool, sectors: u64) -> (MmioTransport, Arc<Mutex<Log>>, TempImage, GuestMemoryMmap) {
    let image = TempImage::new(sectors * 512);
    let disk = DiskImage::open(&image.0, read_only).expect("open temp image");
    let log = Arc::new(Mutex::new(Log::default()));
    let device = Recorder {
        inner: Block::new(disk, "fuzz0"),
        log: log.clone(),
    };
    let memory = guest_memory();
    let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).expect("irqfd")));
    let events = vec![EventFd::new(libc::EFD_NONBLOCK).expect("queue eventfd")];
    let t = MmioTransport::new(Box::new(device), memory.clone(), irq, events).expect("transport");
    (t, log, image, memory)
}

/// Runs one input; panics on a finding.
pub fn run(data: &[u8]) -> Outcome {
    const MAX_OPS: usize = 512;
    let mut input = Input::new(data);
    let read_only = input.u8() & 1 != 0;
    let sectors = 1 + u64::from(input.u8() % 64);
    let (transport, log, image, _memory) = transport(read_only, sectors);
    let mut rig = Rig {
        input,
        transport,
        log,
        features: block_features(read_only),
        config: Vec::new(),
        queue_sel: 0,
        features_sel: 0,
        outcome: Outcome::default(),
        _image: image,
    };
    // Config space as first read: capacity in sectors, then immutable.
    let mut config = vec![0u8; 0x100];
    rig.transport.read(CONFIG, &mut config);
    assert_eq!(config[..8], sectors.to_le_bytes(), "capacity");
    assert!(
        config[60..].iter().all(|&b| b == 0),
        "config space past its end reads 0"
    );
    rig.config = config;

    let mut ops = 0;
    while ops < MAX_OPS && rig.op() {
        ops += 1;
    }
    rig.outcome.activations = rig.log.lock().expect("log").activations;
    rig.outcome
}
