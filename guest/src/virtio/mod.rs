//! A polled virtio-mmio driver (virtio 1.x "modern" devices only, split
//! virtqueues), running at CPL3. [`Ring`] is one queue of any index
//! ([`Transport::setup_ring`]; net and vsock set up several, then
//! [`Transport::driver_ok`]); [`Queue`] runs request slots on queue 0 (blk, rng).
//!
//! Devices are found through the `virtio_mmio.device=` words of the command
//! line. Every register access is a 32-bit volatile MMIO access (the windows
//! are identity-mapped and user-accessible like all of the low 4 GiB). No
//! interrupts are used: the driver asks the device not to send any and polls
//! the used ring, and every wait has a timeout ([`StallTimer`]: time the VM
//! spent paused or snapshotted does not count).
//!
//! Memory (rings, request headers, data buffers) comes from the free-RAM
//! region the BSP reserves for device workloads ([`DMA_BYTES`]); guest-physical
//! equals virtual, so addresses go to the device as they are.

pub mod blk;
pub mod net;
pub mod rng;
pub mod vsock;

use core::hint::spin_loop;
use core::sync::atomic::{fence, AtomicU16, Ordering};

use kvmkit_guest_abi::{virtio_mmio_devices, VirtioMmioDevice};

use crate::arch::{mmio_read32, mmio_write32, rdtsc};
use crate::tsc::{ticks_per_ms, StallTimer};

/// Most `virtio_mmio.device=` entries kept from the command line.
pub const MAX_DEVICES: usize = 8;
/// Ring and request-header memory per device (page aligned).
pub const QUEUE_MEM_BYTES: u64 = 16 << 10;
/// Most requests kept in flight on one queue.
pub const MAX_SLOTS: usize = 16;
/// Data buffer per in-flight request.
pub const CHUNK_BYTES: u64 = 128 << 10;
/// Offset of the data buffers in the device-workload region.
pub const BUFFERS_OFFSET: u64 = 256 << 10;
/// Size of the device-workload region: queue memory for [`MAX_DEVICES`]
/// devices, then [`MAX_SLOTS`] buffers of [`CHUNK_BYTES`].
pub const DMA_BYTES: u64 = 4 << 20;
const _: () = assert!(QUEUE_MEM_BYTES * MAX_DEVICES as u64 <= BUFFERS_OFFSET);
const _: () = assert!(RING_BYTES <= SCRATCH_OFF);
const _: () = assert!(BUFFERS_OFFSET + CHUNK_BYTES * MAX_SLOTS as u64 <= DMA_BYTES);

/// Device ID of a block device.
pub const ID_BLOCK: u32 = 2;
/// Device ID of an entropy source.
pub const ID_ENTROPY: u32 = 4;

/// VIRTIO_F_VERSION_1.
pub const F_VERSION_1: u64 = 1 << 32;

// Register offsets, magic and status bits: shared with kvmkit's device side.
use kvmkit_guest_abi::virtio_mmio::{
    MAGIC_VALUE, REG_CONFIG, REG_CONFIG_GENERATION, REG_DEVICE_FEATURES, REG_DEVICE_FEATURES_SEL, REG_DEVICE_ID,
    REG_DRIVER_FEATURES, REG_DRIVER_FEATURES_SEL, REG_MAGIC, REG_QUEUE_DESC_HIGH, REG_QUEUE_DESC_LOW,
    REG_QUEUE_DEVICE_HIGH, REG_QUEUE_DEVICE_LOW, REG_QUEUE_DRIVER_HIGH, REG_QUEUE_DRIVER_LOW, REG_QUEUE_NOTIFY,
    REG_QUEUE_NUM, REG_QUEUE_NUM_MAX, REG_QUEUE_READY, REG_QUEUE_SEL, REG_STATUS, REG_VERSION, STATUS_ACKNOWLEDGE,
    STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FAILED, STATUS_FEATURES_OK, STATUS_NEEDS_RESET,
};

/// Largest queue size the driver uses.
pub const QUEUE_SIZE_MAX: u32 = 128;
/// Descriptors reserved per request slot (header, data, status).
const DESC_PER_SLOT: u16 = 3;
/// Descriptor flag: the chain goes on at `next`.
pub const DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the device writes the buffer.
pub const DESC_F_WRITE: u16 = 2;
const AVAIL_F_NO_INTERRUPT: u16 = 1;
const USED_F_NO_NOTIFY: u16 = 1;

/// Bytes of a ring area (descriptors, avail and used rings of up to
/// [`QUEUE_SIZE_MAX`] entries), page aligned.
pub const RING_BYTES: u64 = 0x2000;

// Layout of a ring area (the start of a device's QUEUE_MEM_BYTES for queue 0).
const DESC_OFF: u64 = 0;
const AVAIL_OFF: u64 = 0x800;
const USED_OFF: u64 = 0x1000;
/// Start of the per-request scratch area (headers, status bytes, ids).
pub const SCRATCH_OFF: u64 = 0x2000;

/// Seconds any wait for the device may take before it counts as failed.
const TIMEOUT_S: u64 = 5;
/// How often (ms) a wait also reads the status register for NEEDS_RESET.
const STATUS_POLL_MS: u64 = 10;

/// The `virtio_mmio.device=` entries of the command line.
#[derive(Clone, Copy, Debug)]
pub struct DeviceList {
    devs: [VirtioMmioDevice; MAX_DEVICES],
    len: usize,
    /// Entries beyond [`MAX_DEVICES`], ignored.
    pub dropped: usize,
}

impl DeviceList {
    /// No devices.
    pub const EMPTY: Self = Self {
        devs: [VirtioMmioDevice {
            size: 0,
            base: 0,
            irq: 0,
            id: None,
        }; MAX_DEVICES],
        len: 0,
        dropped: 0,
    };

    /// Collects the well-formed `virtio_mmio.device=` words of `cmdline`.
    pub fn from_cmdline(cmdline: &str) -> Self {
        let mut list = Self::EMPTY;
        for dev in virtio_mmio_devices(cmdline) {
            if list.len < MAX_DEVICES {
                list.devs[list.len] = dev;
                list.len += 1;
            } else {
                list.dropped += 1;
            }
        }
        list
    }

    /// The devices, in command-line order.
    pub fn as_slice(&self) -> &[VirtioMmioDevice] {
        &self.devs[..self.len]
    }
}

/// A modern virtio-mmio device of the wanted type, found by [`probe`].
#[derive(Clone, Copy, Debug)]
pub struct Found {
    /// Its index in the [`DeviceList`] (selects its queue memory).
    pub index: usize,
    /// Its command-line entry.
    pub dev: VirtioMmioDevice,
}

/// Looks at every listed device and returns those with device ID `want`
/// (in command-line order) and how many there are. Prints a line per
/// usable device and a note for anything skipped (bad magic, legacy).
pub fn probe(list: &DeviceList, want: u32, who: &str) -> ([Found; MAX_DEVICES], usize) {
    let mut found = [Found {
        index: 0,
        dev: list.devs[0],
    }; MAX_DEVICES];
    let mut n = 0;
    if list.dropped != 0 {
        println!(
            "{who}: ignoring {} virtio_mmio.device entries beyond {MAX_DEVICES}",
            list.dropped
        );
    }
    for (index, dev) in list.as_slice().iter().enumerate() {
        let base = dev.base;
        if dev.size < REG_CONFIG || base.saturating_add(dev.size) > 1 << 32 {
            println!(
                "{who}: virtio-mmio window {base:#x} size {:#x} unusable, skipped",
                dev.size
            );
            continue;
        }
        let magic = mmio_read32(base + REG_MAGIC);
        if magic != MAGIC_VALUE {
            println!("{who}: no virtio-mmio magic at {base:#x} (read {magic:#x}), skipped");
            continue;
        }
        let version = mmio_read32(base + REG_VERSION);
        let id = mmio_read32(base + REG_DEVICE_ID);
        if id == 0 {
            println!("{who}: empty virtio-mmio slot at {base:#x} (device id 0), skipped");
            continue;
        }
        if version != 2 {
            println!(
                "{who}: virtio-mmio device id {id} at {base:#x} has version {version} (legacy), skipped: \
                 only virtio 1.x (version 2) is supported"
            );
            continue;
        }
        let kind = match id {
            ID_BLOCK => "block",
            ID_ENTROPY => "entropy",
            net::ID_NET => "network",
            vsock::ID_VSOCK => "socket",
            _ => "other",
        };
        println!(
            "{who}: virtio-mmio {kind} device (id {id}) at {base:#x} size {:#x} irq {}",
            dev.size, dev.irq
        );
        if id == want {
            found[n] = Found { index, dev: *dev };
            n += 1;
        }
    }
    (found, n)
}

/// The register window of one device.
#[derive(Clone, Copy, Debug)]
pub struct Transport {
    base: u64,
    khz: u64,
}

impl Transport {
    /// The device at `base`; `khz` is the TSC rate for timeouts (0 = unknown).
    pub fn new(base: u64, khz: u64) -> Self {
        Self { base, khz }
    }

    fn read(&self, reg: u64) -> u32 {
        mmio_read32(self.base + reg)
    }

    fn write(&self, reg: u64, value: u32) {
        mmio_write32(self.base + reg, value);
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.read(REG_STATUS)
    }

    /// Resets the device (Status = 0) and waits until it reads back 0.
    pub fn reset(&self) -> Result<(), &'static str> {
        self.write(REG_STATUS, 0);
        let mut timer = StallTimer::new(TIMEOUT_S * 1000, self.khz);
        while self.status() != 0 {
            if timer.expired() {
                return Err("device did not complete reset");
            }
            spin_loop();
        }
        Ok(())
    }

    /// Tells the device the driver gave up (sets FAILED).
    pub fn fail(&self) {
        self.write(REG_STATUS, self.status() | STATUS_FAILED);
    }

    /// Resets the device and negotiates features: accepts VERSION_1 plus the
    /// bits of `wanted` the device offers. Returns the accepted features.
    pub fn init(&self, wanted: u64) -> Result<u64, &'static str> {
        self.reset()?;
        self.write(REG_STATUS, STATUS_ACKNOWLEDGE);
        self.write(REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        self.write(REG_DEVICE_FEATURES_SEL, 0);
        let low = self.read(REG_DEVICE_FEATURES);
        self.write(REG_DEVICE_FEATURES_SEL, 1);
        let high = self.read(REG_DEVICE_FEATURES);
        let offered = u64::from(high) << 32 | u64::from(low);
        if offered & F_VERSION_1 == 0 {
            self.fail();
            return Err("device does not offer VIRTIO_F_VERSION_1");
        }
        let accepted = offered & (wanted | F_VERSION_1);
        self.write(REG_DRIVER_FEATURES_SEL, 0);
        self.write(REG_DRIVER_FEATURES, accepted as u32);
        self.write(REG_DRIVER_FEATURES_SEL, 1);
        self.write(REG_DRIVER_FEATURES, (accepted >> 32) as u32);
        let status = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        self.write(REG_STATUS, status);
        if self.status() & STATUS_FEATURES_OK == 0 {
            self.fail();
            return Err("device did not accept the features (FEATURES_OK not set)");
        }
        Ok(accepted)
    }

    /// Sets up queue `index` in the [`RING_BYTES`] of page-aligned memory at
    /// `mem` (guest-physical): size QueueNumMax rounded down to a power of
    /// two, at most [`QUEUE_SIZE_MAX`], and at least `min`. The device sends
    /// no interrupts for it. Call [`Transport::driver_ok`] once every queue is set up.
    pub fn setup_ring(&self, index: u32, mem: u64, min: u16) -> Result<Ring, &'static str> {
        self.write(REG_QUEUE_SEL, index);
        if self.read(REG_QUEUE_READY) != 0 {
            self.fail();
            return Err("a queue is already live after reset");
        }
        let max = self.read(REG_QUEUE_NUM_MAX);
        if max < u32::from(min.max(1)) {
            self.fail();
            return Err("a queue is missing or too small (QueueNumMax)");
        }
        // Split queues have power-of-two sizes; round down to be safe.
        let size = 1u32 << (31 - max.min(QUEUE_SIZE_MAX).leading_zeros());
        // SAFETY: `mem` is RING_BYTES of the device-workload region, reserved
        // for this queue and not given to the device yet.
        unsafe { core::ptr::write_bytes(mem as *mut u8, 0, RING_BYTES as usize) };
        self.write(REG_QUEUE_NUM, size);
        let regs = [
            (REG_QUEUE_DESC_LOW, REG_QUEUE_DESC_HIGH, mem + DESC_OFF),
            (REG_QUEUE_DRIVER_LOW, REG_QUEUE_DRIVER_HIGH, mem + AVAIL_OFF),
            (REG_QUEUE_DEVICE_LOW, REG_QUEUE_DEVICE_HIGH, mem + USED_OFF),
        ];
        for (low, high, addr) in regs {
            self.write(low, addr as u32);
            self.write(high, (addr >> 32) as u32);
        }
        let ring = Ring {
            base: self.base,
            mem,
            index,
            size: size as u16,
            avail_idx: 0,
            last_used: 0,
        };
        ring.u16_at(AVAIL_OFF).store(AVAIL_F_NO_INTERRUPT, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        self.write(REG_QUEUE_READY, 1);
        Ok(ring)
    }

    /// Sets DRIVER_OK (after every queue is set up) and checks the device took it.
    pub fn driver_ok(&self) -> Result<(), &'static str> {
        fence(Ordering::SeqCst);
        self.write(
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        let status = self.status();
        if status & (STATUS_NEEDS_RESET | STATUS_FAILED) != 0 || status & STATUS_DRIVER_OK == 0 {
            self.fail();
            return Err("device refused DRIVER_OK");
        }
        Ok(())
    }

    /// Whether the device reports trouble (NEEDS_RESET or lost DRIVER_OK).
    pub fn broken(&self) -> bool {
        let s = self.status();
        s & STATUS_NEEDS_RESET != 0 || s & STATUS_DRIVER_OK == 0
    }

    /// Sets up queue 0 in the [`QUEUE_MEM_BYTES`] of page-aligned memory at
    /// `mem` (guest-physical), then sets DRIVER_OK.
    pub fn start(&self, mem: u64) -> Result<Queue, &'static str> {
        let ring = self.setup_ring(0, mem, DESC_PER_SLOT)?;
        // SAFETY: the scratch area follows the ring in this device's
        // QUEUE_MEM_BYTES, reserved for it; nothing is in flight yet.
        unsafe {
            core::ptr::write_bytes(
                (mem + SCRATCH_OFF) as *mut u8,
                0,
                (QUEUE_MEM_BYTES - SCRATCH_OFF) as usize,
            )
        };
        let slots = (ring.size / DESC_PER_SLOT).min(MAX_SLOTS as u16);
        self.driver_ok()?;
        Ok(Queue { t: *self, ring, slots })
    }

    /// Reads a 32-bit device config field at `offset`.
    pub fn config32(&self, offset: u64) -> u32 {
        self.read(REG_CONFIG + offset)
    }

    /// Reads a 64-bit device config field at `offset` (two 32-bit reads,
    /// retried while ConfigGeneration changes).
    pub fn config64(&self, offset: u64) -> u64 {
        let mut value = 0;
        for _ in 0..16 {
            let generation = self.read(REG_CONFIG_GENERATION);
            let low = self.read(REG_CONFIG + offset);
            let high = self.read(REG_CONFIG + offset + 4);
            value = u64::from(high) << 32 | u64::from(low);
            if self.read(REG_CONFIG_GENERATION) == generation {
                break;
            }
        }
        value
    }
}

/// One buffer of a request.
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    /// Guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// The device writes it (else it reads it).
    pub device_writes: bool,
}

/// A request: up to three buffers, chained.
#[derive(Clone, Copy, Debug)]
pub struct Chain {
    bufs: [Buf; DESC_PER_SLOT as usize],
    len: usize,
}

impl Chain {
    /// A chain of `bufs` (one to three).
    pub fn new(bufs: &[Buf]) -> Self {
        assert!(!bufs.is_empty() && bufs.len() <= DESC_PER_SLOT as usize);
        let mut chain = Self {
            bufs: [bufs[0]; DESC_PER_SLOT as usize],
            len: bufs.len(),
        };
        chain.bufs[..bufs.len()].copy_from_slice(bufs);
        chain
    }
}

/// Feeds requests to [`Queue::run`]. Each request occupies a slot
/// (`0..Queue::slots()`) from [`Stream::next`] until [`Stream::complete`].
pub trait Stream {
    /// The next request, to go in `slot`; `None` when there is none now
    /// (the run ends once nothing is in flight either).
    fn next(&mut self, slot: u16) -> Option<Chain>;
    /// The request in `slot` completed; the device wrote `len` bytes.
    fn complete(&mut self, slot: u16, len: u32);
}

/// One split virtqueue, driven by polling. Descriptor chains are built by
/// the owner ([`Ring::set_desc`]); a chain is known by its head index.
#[derive(Debug)]
pub struct Ring {
    base: u64,
    mem: u64,
    index: u32,
    size: u16,
    avail_idx: u16,
    last_used: u16,
}

/// A virtq_desc.
#[repr(C)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

impl Ring {
    /// The queue size in use (a power of two).
    pub fn size(&self) -> u16 {
        self.size
    }

    fn u16_at(&self, offset: u64) -> &AtomicU16 {
        // SAFETY: `offset` is an even offset inside this ring's RING_BYTES,
        // which stay reserved for it while the ring lives; AtomicU16 has the
        // alignment and size of the ring's le16 fields.
        unsafe { &*((self.mem + offset) as *const AtomicU16) }
    }

    /// Writes descriptor `i` (< size; the caller owns it: not on the avail ring).
    pub fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let desc = Desc { addr, len, flags, next };
        let i = i % self.size;
        // SAFETY: descriptor `i` < size lies in this ring's descriptor
        // table, and the device does not own it (see above).
        unsafe { core::ptr::write_volatile((self.mem + DESC_OFF + u64::from(i) * 16) as *mut Desc, desc) };
    }

    /// Puts the chain at `head` on the avail ring (published by [`Ring::kick`]).
    pub fn push(&mut self, head: u16) {
        let slot = AVAIL_OFF + 4 + u64::from(self.avail_idx % self.size) * 2;
        self.u16_at(slot).store(head, Ordering::Relaxed);
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// Publishes the pushed chains and notifies the device unless it asked
    /// not to be.
    pub fn kick(&self) {
        self.publish();
        self.notify();
    }

    /// Publishes the pushed chains (avail idx) without notifying: a device
    /// that is polling sees them, one that sleeps waits for [`Ring::notify`].
    pub fn publish(&self) {
        self.u16_at(AVAIL_OFF + 2).store(self.avail_idx, Ordering::Release);
    }

    /// Notifies the device of the published chains unless it asked not to
    /// be (VIRTQ_USED_F_NO_NOTIFY). Each notification is a VM exit.
    pub fn notify(&self) {
        fence(Ordering::SeqCst);
        if self.u16_at(USED_OFF).load(Ordering::Relaxed) & USED_F_NO_NOTIFY == 0 {
            mmio_write32(self.base + REG_QUEUE_NOTIFY, self.index);
        }
    }

    /// A used chain, if there is one: `(head id, bytes written)`. The id is
    /// as the device wrote it: the caller checks it.
    pub fn poll(&mut self) -> Option<(u32, u32)> {
        let used_idx = self.u16_at(USED_OFF + 2).load(Ordering::Acquire);
        if used_idx == self.last_used {
            return None;
        }
        let elem = self.mem + USED_OFF + 4 + u64::from(self.last_used % self.size) * 8;
        // SAFETY: used-ring element `last_used % size` lies in this ring's
        // used ring; the device published it before advancing used.idx.
        let (id, len) = unsafe {
            (
                core::ptr::read_volatile(elem as *const u32),
                core::ptr::read_volatile((elem + 4) as *const u32),
            )
        };
        self.last_used = self.last_used.wrapping_add(1);
        Some((id, len))
    }
}

/// Request slots on queue 0 of a device (blk, rng), each slot owning
/// [`DESC_PER_SLOT`] descriptors and a scratch area.
#[derive(Debug)]
pub struct Queue {
    t: Transport,
    ring: Ring,
    slots: u16,
}

impl Queue {
    /// How many requests can be in flight (slots).
    pub fn slots(&self) -> u16 {
        self.slots
    }

    /// The queue size in use.
    pub fn size(&self) -> u16 {
        self.ring.size
    }

    /// Guest-physical address of byte `offset` of the scratch area (request
    /// headers and status bytes; 8 KiB).
    pub fn scratch(&self, offset: u64) -> u64 {
        debug_assert!(offset < QUEUE_MEM_BYTES - SCRATCH_OFF);
        self.ring.mem + SCRATCH_OFF + offset
    }

    fn push(&mut self, slot: u16, chain: &Chain) {
        let head = slot * DESC_PER_SLOT;
        for (k, buf) in chain.bufs[..chain.len].iter().enumerate() {
            let index = head + k as u16;
            let mut flags = if buf.device_writes { DESC_F_WRITE } else { 0 };
            if k + 1 < chain.len {
                flags |= DESC_F_NEXT;
            }
            self.ring.set_desc(index, buf.addr, buf.len, flags, index + 1);
        }
        self.ring.push(head);
    }

    /// A completed request, if there is one: `(slot, len)`.
    fn poll(&mut self) -> Result<Option<(u16, u32)>, &'static str> {
        let Some((id, len)) = self.ring.poll() else {
            return Ok(None);
        };
        let slot = id / u32::from(DESC_PER_SLOT);
        if id % u32::from(DESC_PER_SLOT) != 0 || slot >= u32::from(self.slots) {
            return Err("device returned an unknown descriptor id");
        }
        Ok(Some((slot as u16, len)))
    }

    /// Waits (at most [`TIMEOUT_S`]) for a completed request.
    fn wait(&mut self) -> Result<(u16, u32), &'static str> {
        let ms = ticks_per_ms(self.t.khz);
        let mut timer = StallTimer::new(TIMEOUT_S * 1000, self.t.khz);
        let mut next_check = rdtsc() + STATUS_POLL_MS * ms;
        loop {
            if let Some(done) = self.poll()? {
                return Ok(done);
            }
            let now = rdtsc();
            if now >= next_check {
                let status = self.t.status();
                if status & STATUS_NEEDS_RESET != 0 {
                    return Err("device set DEVICE_NEEDS_RESET");
                }
                if status & STATUS_DRIVER_OK == 0 {
                    return Err("device dropped DRIVER_OK");
                }
                if timer.expired() {
                    return Err("timed out after 5 s waiting for the device");
                }
                next_check = now + STATUS_POLL_MS * ms;
            }
            spin_loop();
        }
    }

    /// Runs `stream` to the end, keeping up to [`Queue::slots`] requests in
    /// flight. On an error the device may still own buffers: reset it before
    /// reusing them.
    pub fn run(&mut self, stream: &mut impl Stream) -> Result<(), &'static str> {
        let mut free = [0u16; MAX_SLOTS];
        let mut busy = [false; MAX_SLOTS];
        let mut nfree = usize::from(self.slots);
        for (i, slot) in free[..nfree].iter_mut().enumerate() {
            *slot = (nfree - 1 - i) as u16;
        }
        let mut in_flight = 0;
        loop {
            let mut added = false;
            while nfree > 0 {
                let slot = free[nfree - 1];
                let Some(chain) = stream.next(slot) else { break };
                self.push(slot, &chain);
                nfree -= 1;
                busy[usize::from(slot)] = true;
                in_flight += 1;
                added = true;
            }
            if added {
                self.ring.kick();
            }
            if in_flight == 0 {
                return Ok(());
            }
            let mut done = Some(self.wait()?);
            while let Some((slot, len)) = done {
                if !core::mem::replace(&mut busy[usize::from(slot)], false) {
                    return Err("device completed a request twice");
                }
                free[nfree] = slot;
                nfree += 1;
                in_flight -= 1;
                stream.complete(slot, len);
                done = self.poll()?;
            }
        }
    }
}
