//! Fuzz target body: virtio-blk requests laid out in guest memory by the
//! input, completed by `BlockHandler::drain` over a small temp-file image.
//!
//! Guest memory is [`crate::guest_memory`] (64 KiB + 4 KiB adjacent + 4 KiB
//! after a hole). Input:
//!
//! * byte 0: bit 0 read-only image; bits 1-4: queue size `1 << (x % 9)`;
//!   bit 5: ring addresses from the input (aligned, anywhere in the first
//!   64 KiB, possibly overlapping each other and the buffers) instead of the
//!   fixed layout; bits 6-7: first ring index (0, just before the u16 wrap,
//!   or from the input).
//! * byte 1: image size in sectors (`x % 65`, 0 allowed).
//! * then operations, each starting with an op byte `b`:
//!
//! | `b % 8` | operation                                                          |
//! |---------|--------------------------------------------------------------------|
//! | 0, 1, 2 | build and publish a request chain: type (IN/OUT/FLUSH/GET_ID/DISCARD/WRITE_ZEROES/any u32), sector (in range, at/past capacity, any u64), 0-4 data buffers (sizes of any kind, addresses in RAM, straddling regions, in the hole, anywhere), mutations: writable header, short header, no status byte, long status, flipped data direction, all of it behind an indirect descriptor (with a bad table length), a last `next` to any index |
//! | 3       | raw descriptor write: index, address, length, flags, next           |
//! | 4       | poke up to 31 bytes anywhere in the first 64 KiB (rings included)   |
//! | 5       | publish a raw head index (often past the queue)                     |
//! | 6       | drain now                                                           |
//! | 7       | set the avail index to any value (e.g. far ahead)                   |
//!
//! The input ends with a final drain. Every drain is bounded: it runs at most
//! `pending + 1` times (each run pops at least one entry while any is left).
//!
//! Checks beyond "no panic": a read-only image is never modified (and no
//! image ever changes size); and while the device's writes (used ring and
//! the writable buffers of the pending chains, as the chains stand before
//! the drain) do not overlap what it reads (descriptor tables, avail ring),
//! so that a model computed before the drain stays true:
//! * with more than `size` entries pending nothing is completed and nothing
//!   in guest memory changes;
//! * otherwise every published chain with a head index inside the queue is
//!   completed exactly once, in order (so the used index advances by at most
//!   the number of published chains) and the used index in memory says so;
//! * each completion's length is at most the writable bytes its chain offers
//!   (walked like virtio-queue walks it: direct chain up to `size` entries,
//!   one level of indirection anywhere, stopping at a bad table length or an
//!   index past the table);
//! * the device changes no guest byte outside the used ring and those
//!   writable buffers.
//!
//! Once a drain ran with an overlapping layout the model is out of sync and
//! only the image checks remain.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use kvmkit_vmm::memory::GuestMemoryMmap;
use kvmkit_vmm::virtio::block::disk::DiskImage;
use kvmkit_vmm::virtio::block::request::{
    DiscardSegment, RequestHeader, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use kvmkit_vmm::virtio::block::{BlockHandler, QUEUE_SIZE};
use kvmkit_vmm::virtio::Interrupt;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::{guest_memory, Input, RAM_REGIONS};

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// Fixed layout: indirect tables (32 x 128 bytes) at 0, rings, status bytes,
/// headers, then data buffers up to the end of the second region.
const INDIRECT: u64 = 0x0;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const STATUS: u64 = 0x3900;
const HEADERS: u64 = 0x4000;
const DATA: u64 = 0x5000;
const DATA_END: u64 = 0x1_1000;
const MAX_OPS: usize = 256;

/// What one run did, for the smoke test's coverage checks.
#[derive(Clone, Copy, Debug, Default)]
pub struct Outcome {
    /// Requests completed (sum of `drain` results).
    pub completed: usize,
    /// Drains checked against the model.
    pub checked_drains: usize,
    /// Whether the image was read-only.
    pub read_only: bool,
}

/// A temp image removed on drop.
struct TempImage {
    path: PathBuf,
}

impl TempImage {
    fn new(len: u64) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("kvmkit-fuzz-blk-{}-{n}", std::process::id()));
        let file = std::fs::File::create(&path).expect("temp image");
        static PATTERN: OnceLock<Vec<u8>> = OnceLock::new();
        let pattern = PATTERN.get_or_init(|| {
            (0..64 * 512u64)
                .map(|o| ((o / 512) as u8).wrapping_mul(31) ^ (o as u8))
                .collect()
        });
        file.write_all_at(&pattern[..len as usize], 0).expect("fill temp image");
        file.set_len(len).expect("size temp image");
        Self { path }
    }

    fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.path).expect("read temp image")
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Half-open byte range `[start, end)` of guest addresses.
pub(crate) type Range = (u64, u64);

pub(crate) fn range(addr: u64, len: u64) -> Range {
    (addr, addr.saturating_add(len))
}

/// Sorts and merges ranges (empty ones dropped).
pub(crate) fn merged(mut v: Vec<Range>) -> Vec<Range> {
    v.retain(|r| r.0 < r.1);
    v.sort_unstable();
    let mut out: Vec<Range> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(last) if r.0 <= last.1 => last.1 = last.1.max(r.1),
            _ => out.push(r),
        }
    }
    out
}

pub(crate) fn overlaps(a: &[Range], b: &[Range]) -> bool {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i].0 < b[j].1 && b[j].0 < a[i].1 {
            return true;
        }
        if a[i].1 <= b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    false
}

pub(crate) fn contains(sorted: &[Range], addr: u64) -> bool {
    let i = sorted.partition_point(|r| r.1 <= addr);
    sorted.get(i).is_some_and(|r| r.0 <= addr)
}

/// A descriptor chain as virtio-queue walks it (see `chain.rs` there).
#[derive(Default)]
pub(crate) struct Walk {
    /// Sum of the lengths of the device-writable descriptors.
    pub(crate) writable_bytes: u64,
    /// Their buffers.
    pub(crate) writable: Vec<Range>,
    /// Descriptor entries read (main and indirect tables).
    pub(crate) read: Vec<Range>,
}

pub(crate) fn walk(mem: &GuestMemoryMmap, desc_table: u64, size: u16, head: u16) -> Walk {
    let mut w = Walk::default();
    let (mut table, mut table_len, mut index, mut ttl) = (desc_table, size, head, size);
    let mut indirect = false;
    let mut yielded: u32 = 0;
    while ttl > 0 && index < table_len {
        let Some(at) = table.checked_add(u64::from(index) * 16) else {
            break;
        };
        let mut raw = [0u8; 16];
        if mem.read_slice(&mut raw, GuestAddress(at)).is_err() {
            break;
        }
        w.read.push(range(at, 16));
        let addr = u64::from_le_bytes(raw[0..8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(raw[8..12].try_into().expect("4 bytes"));
        let flags = u16::from_le_bytes([raw[12], raw[13]]);
        let next = u16::from_le_bytes([raw[14], raw[15]]);
        if flags & F_INDIRECT != 0 {
            if indirect || len % 16 != 0 || len / 16 > u32::from(u16::MAX) {
                break;
            }
            (table, table_len, index, ttl, indirect) = (addr, (len / 16) as u16, 0, (len / 16) as u16, true);
            continue;
        }
        let Some(y) = yielded.checked_add(len) else { break };
        yielded = y;
        if flags & F_WRITE != 0 {
            w.writable_bytes += u64::from(len);
            w.writable.push(range(addr, u64::from(len)));
        }
        if flags & F_NEXT != 0 {
            index = next;
            ttl -= 1;
        } else {
            ttl = 0;
        }
    }
    w
}

pub(crate) fn snapshot(mem: &GuestMemoryMmap) -> Vec<Vec<u8>> {
    RAM_REGIONS
        .iter()
        .map(|&(a, l)| {
            let mut v = vec![0u8; l];
            mem.read_slice(&mut v, GuestAddress(a)).expect("snapshot");
            v
        })
        .collect()
}

struct Rig<'a> {
    input: Input<'a>,
    mem: GuestMemoryMmap,
    handler: BlockHandler,
    /// The device's interrupt: it says whether the device marked itself
    /// broken (a bogus avail index), after which it completes nothing
    /// until a reset.
    interrupt: Arc<Interrupt>,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    capacity: u64,
    /// The driver's avail index (what it last published).
    avail_idx: u16,
    /// Where the device is, per the model.
    next_avail: u16,
    next_used: u16,
    desc_cursor: u16,
    chains: u64,
    synced: bool,
    outcome: Outcome,
}

impl Rig<'_> {
    fn write<T: vm_memory::ByteValued>(&self, v: T, at: u64) {
        let _ = self.mem.write_obj(v, GuestAddress(at));
    }

    fn write_desc(&self, table: u64, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = table + 16 * u64::from(index);
        self.write(addr, at);
        self.write(len, at + 8);
        self.write(flags, at + 12);
        self.write(next, at + 14);
    }

    fn publish(&mut self, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        self.write(head, slot);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.write(self.avail_idx, self.avail + 2);
    }

    fn pick_addr(&mut self) -> u64 {
        let sel = self.input.u8();
        match sel % 8 {
            0..=3 => DATA + u64::from(self.input.u16()) % (DATA_END - DATA),
            4 => 0x1_0000 - u64::from(self.input.u8()),
            5 => 0x1_1000 - u64::from(self.input.u8()),
            6 => 0x2_0000 + 16 * u64::from(self.input.u8()),
            _ => self.input.u64(),
        }
    }

    fn pick_len(&mut self) -> u32 {
        let sel = self.input.u8();
        match sel % 6 {
            0 | 1 => 512 * u32::from(self.input.u8() % 9),
            2 => 4096,
            3 => u32::from(self.input.u16()),
            4 => u32::from(self.input.u8()),
            _ => self.input.u32(),
        }
    }

    fn pick_sector(&mut self) -> u64 {
        let sel = self.input.u8();
        let x = u64::from(self.input.u8());
        match sel % 6 {
            0 | 1 => x % (self.capacity + 1),
            2 => self.capacity.saturating_sub(x % 4),
            3 => self.capacity + x % 4,
            4 => self.input.u64(),
            _ => u64::MAX - x,
        }
    }

    fn build_chain(&mut self) {
        let request_type = match self.input.u8() % 9 {
            0 | 6 => VIRTIO_BLK_T_IN,
            1 | 7 => VIRTIO_BLK_T_OUT,
            2 => VIRTIO_BLK_T_FLUSH,
            3 => VIRTIO_BLK_T_GET_ID,
            4 => VIRTIO_BLK_T_DISCARD,
            5 => VIRTIO_BLK_T_WRITE_ZEROES,
            _ => self.input.u32(),
        };
        let sector = self.pick_sector();
        let segments = self.input.u8() % 5;
        let m = self.input.u8();
        let slot = self.chains % 64;
        self.chains += 1;

        let header_at = HEADERS + 32 * slot;
        let header = RequestHeader {
            request_type,
            reserved: 0,
            sector,
        };
        self.write(header, header_at);
        let header_len = if m & 0x10 != 0 {
            u32::from(self.input.u8() % 17)
        } else {
            16
        };
        let mut descs = vec![(header_at, header_len, if m & 1 != 0 { F_WRITE } else { 0 })];

        let device_writes = matches!(request_type, VIRTIO_BLK_T_IN | VIRTIO_BLK_T_GET_ID) || request_type > 13;
        for _ in 0..segments {
            let addr = self.pick_addr();
            let len = self.pick_len();
            if matches!(request_type, VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES) {
                for k in 0..u64::from((len / 16).min(4)) {
                    let seg = DiscardSegment {
                        sector: self.pick_sector(),
                        num_sectors: if self.input.u8() & 1 == 0 {
                            u32::from(self.input.u8())
                        } else {
                            self.input.u32()
                        },
                        flags: u32::from(self.input.u8()),
                    };
                    self.write(seg, addr.wrapping_add(16 * k));
                }
            }
            let write = device_writes ^ (m & 0x40 != 0);
            descs.push((addr, len, if write { F_WRITE } else { 0 }));
        }
        if m & 2 == 0 {
            let len = if m & 8 != 0 { u32::from(self.input.u8() % 4) } else { 1 };
            descs.push((STATUS + 8 * slot, len, F_WRITE));
        }
        let last_next = (m & 0x20 != 0).then(|| {
            let x = self.input.u16();
            if x & 0x8000 != 0 {
                x
            } else {
                x % (self.size + 2)
            }
        });

        let head = self.desc_cursor;
        let n = descs.len() as u16;
        let chain_next = |k: u16, count: u16, wrap: u16| {
            if k + 1 < count {
                Some((k + 1) % wrap)
            } else {
                last_next
            }
        };
        if m & 4 != 0 {
            // All behind one indirect descriptor in the main table.
            let table = INDIRECT + 128 * (slot % 32);
            for (k, &(addr, len, flags)) in descs.iter().enumerate() {
                let k = k as u16;
                let next = chain_next(k, n, u16::MAX);
                let f = flags | if next.is_some() { F_NEXT } else { 0 };
                self.write_desc(table, k, addr, len, f, next.unwrap_or(0));
            }
            let table_len = if m & 0x80 != 0 {
                u32::from(self.input.u8())
            } else {
                16 * u32::from(n)
            };
            self.write_desc(self.desc, head, table, table_len, F_INDIRECT, 0);
            self.desc_cursor = (head + 1) % self.size;
        } else {
            for (k, &(addr, len, flags)) in descs.iter().enumerate() {
                let k = k as u16;
                let index = (head + k) % self.size;
                let next = chain_next(k, n, u16::MAX).map(|x| if k + 1 < n { (head + x) % self.size } else { x });
                let f = flags | if next.is_some() { F_NEXT } else { 0 };
                self.write_desc(self.desc, index, addr, len, f, next.unwrap_or(0));
            }
            self.desc_cursor = (head + n) % self.size;
        }
        self.publish(head);
    }

    fn op(&mut self) -> bool {
        let b = self.input.u8();
        match b % 8 {
            0..=2 => self.build_chain(),
            3 => {
                let index = u16::from(self.input.u8()) % self.size;
                let addr = self.pick_addr();
                let len = self.pick_len();
                let flags = if b & 0x80 != 0 {
                    self.input.u16()
                } else {
                    u16::from(self.input.u8() & 7)
                };
                let next = if b & 0x40 != 0 {
                    self.input.u16()
                } else {
                    u16::from(self.input.u8()) % (self.size + 1)
                };
                self.write_desc(self.desc, index, addr, len, flags, next);
            }
            4 => {
                let at = u64::from(self.input.u16());
                let n = usize::from(self.input.u8() % 32);
                let bytes = self.input.bytes(n).to_vec();
                let _ = self.mem.write_slice(&bytes, GuestAddress(at));
            }
            5 => {
                let x = self.input.u16();
                let head = if b & 0x80 != 0 { x } else { x % (2 * self.size) };
                self.publish(head);
            }
            6 => self.drain(),
            _ => {
                self.avail_idx = self.input.u16();
                self.write(self.avail_idx, self.avail + 2);
            }
        }
        !self.input.is_empty()
    }

    fn read_u16(&self, at: u64) -> u16 {
        self.mem.read_obj(GuestAddress(at)).expect("ring in RAM")
    }

    fn read_u32(&self, at: u64) -> u32 {
        self.mem.read_obj(GuestAddress(at)).expect("ring in RAM")
    }

    fn drain(&mut self) {
        let size = self.size;
        let pending = self.read_u16(self.avail + 2).wrapping_sub(self.next_avail);
        if !self.synced {
            let runs = usize::from(pending.min(size)) + 1;
            for _ in 0..runs {
                self.outcome.completed += self.handler.drain();
            }
            return;
        }
        // The model, from memory as it is before the drain.
        let heads: Vec<u16> = if pending > size {
            Vec::new()
        } else {
            (0..pending)
                .map(|i| self.read_u16(self.avail + 4 + 2 * u64::from(self.next_avail.wrapping_add(i) % size)))
                .collect()
        };
        let valid: Vec<u16> = heads.iter().copied().filter(|&h| h < size).collect();
        let walks: Vec<(u16, Walk)> = valid
            .iter()
            .map(|&h| (h, walk(&self.mem, self.desc, size, h)))
            .collect();
        let used_ring = range(self.used, 6 + 8 * u64::from(size));
        let mut device_writes = vec![used_ring];
        let mut driver_reads = vec![
            range(self.desc, 16 * u64::from(size)),
            range(self.avail, 6 + 2 * u64::from(size)),
        ];
        for (_, w) in &walks {
            device_writes.extend_from_slice(&w.writable);
            driver_reads.extend_from_slice(&w.read);
        }
        let device_writes = merged(device_writes);
        let clean = !overlaps(&device_writes, &merged(driver_reads));
        let before = snapshot(&self.mem);

        let was_broken = self.interrupt.is_broken();
        let runs = usize::from(pending.min(size)) + 1;
        let mut done = 0;
        for _ in 0..runs {
            done += self.handler.drain();
        }
        self.outcome.completed += done;
        if was_broken || pending > size {
            // Broken before, or made broken now by the bogus index: the
            // device must leave the queue alone (and stay broken).
            assert_eq!(done, 0, "a broken device completed {done} requests");
            assert!(
                self.interrupt.is_broken(),
                "a bogus avail index must mark the device broken"
            );
            self.synced = false;
            return;
        }
        if !clean {
            self.synced = false;
            return;
        }
        self.outcome.checked_drains += 1;

        assert!(
            done <= usize::from(pending),
            "{done} completions for {pending} published chains"
        );
        assert_eq!(
            done,
            valid.len(),
            "published heads {heads:?} (queue size {size}): every valid one completes exactly once"
        );
        for (k, (head, w)) in walks.iter().enumerate() {
            let at = self.used + 4 + 8 * u64::from(self.next_used.wrapping_add(k as u16) % size);
            let (id, len) = (self.read_u32(at), self.read_u32(at + 4));
            assert_eq!(id, u32::from(*head), "used entry {k}: completions in order");
            assert!(
                u64::from(len) <= w.writable_bytes,
                "chain {head}: used length {len} > {} writable bytes offered",
                w.writable_bytes
            );
        }
        if pending <= size {
            self.next_avail = self.next_avail.wrapping_add(pending);
        }
        let expected_used = self.next_used.wrapping_add(done as u16);
        if done > 0 {
            assert_eq!(self.read_u16(self.used + 2), expected_used, "used index in memory");
        }
        self.next_used = expected_used;

        let after = snapshot(&self.mem);
        for ((&(base, _), b), a) in RAM_REGIONS.iter().zip(&before).zip(&after) {
            // Whole chunks first (memcmp), bytes only where a chunk changed.
            for (c, (cb, ca)) in b.chunks(256).zip(a.chunks(256)).enumerate() {
                if cb == ca {
                    continue;
                }
                for (i, (x, y)) in cb.iter().zip(ca).enumerate() {
                    let addr = base + (256 * c + i) as u64;
                    assert!(
                        x == y || contains(&device_writes, addr),
                        "device wrote {addr:#x} ({x:#x} -> {y:#x}) outside the used ring and writable buffers"
                    );
                }
            }
        }
    }
}

/// Runs one input; panics on a finding.
pub fn run(data: &[u8]) -> Outcome {
    let mut input = Input::new(data);
    let b0 = input.u8();
    let read_only = b0 & 1 != 0;
    let size = 1u16 << (((b0 >> 1) & 0xf) % 9);
    let capacity = u64::from(input.u8() % 65);
    let (desc, avail, used) = if b0 & 0x20 != 0 {
        (
            u64::from(input.u16() & !15),
            u64::from(input.u16() & !1),
            u64::from(input.u16() & !3),
        )
    } else {
        (DESC, AVAIL, USED)
    };
    let start = match b0 >> 6 {
        0 => 0,
        1 => 0xffff - u16::from(input.u8() % 4),
        _ => input.u16(),
    };

    let mem = guest_memory();
    let mut queue = Queue::new(QUEUE_SIZE).expect("queue");
    queue.set_size(size);
    queue.set_desc_table_address(Some(desc as u32), Some(0));
    queue.set_avail_ring_address(Some(avail as u32), Some(0));
    queue.set_used_ring_address(Some(used as u32), Some(0));
    queue.set_ready(true);
    queue.set_next_avail(start);
    queue.set_next_used(start);
    // The transport hands over only valid queues (and virtio-queue never
    // iterates an avail ring at address 0).
    if !queue.is_valid(&mem) || avail == 0 {
        return Outcome::default();
    }
    mem.write_obj(start, GuestAddress(avail + 2)).expect("avail idx");
    mem.write_obj(start, GuestAddress(used + 2)).expect("used idx");

    let image = TempImage::new(capacity * 512);
    let original = image.contents();
    let disk = DiskImage::open(&image.path, read_only).expect("open temp image");
    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let interrupt = Arc::new(Interrupt::new(irq));
    let handler = BlockHandler::new(
        mem.clone(),
        queue,
        interrupt.clone(),
        Arc::new(disk),
        *b"kvmkit-fuzz-disk\0\0\0\0",
    );
    let mut rig = Rig {
        input,
        mem,
        handler,
        interrupt,
        size,
        desc,
        avail,
        used,
        capacity,
        avail_idx: start,
        next_avail: start,
        next_used: start,
        desc_cursor: 0,
        chains: 0,
        synced: true,
        outcome: Outcome {
            read_only,
            ..Outcome::default()
        },
    };
    let mut ops = 0;
    while ops < MAX_OPS && rig.op() {
        ops += 1;
    }
    rig.drain();
    let outcome = rig.outcome;
    drop(rig);

    let now = image.contents();
    assert_eq!(now.len(), original.len(), "the image changed size");
    if read_only {
        assert!(now == original, "a read-only image was modified");
    }
    outcome
}
