//! virtio-net: a polled driver with an rx queue (0) full of 2 KiB buffers
//! and a tx queue (1) of 2 KiB buffers, no offloads (every frame carries a
//! zero 12-byte `virtio_net_hdr_v1`). Queues are set up here, not through
//! [`Transport::start`], which knows queue 0 only.

use core::sync::atomic::{fence, AtomicU16, Ordering};

use kvmkit_guest_abi::VirtioMmioDevice;

use super::{Transport, BUFFERS_OFFSET};
use crate::arch::{mmio_read32, mmio_write32};

/// Device ID of a network device.
pub const ID_NET: u32 = 1;
/// VIRTIO_NET_F_MAC.
pub const F_MAC: u64 = 1 << 5;
/// Size of `virtio_net_hdr_v1`.
pub const HDR_LEN: usize = 12;
/// Bytes per rx and tx buffer (header plus a 1514-byte frame fits).
pub const BUF_BYTES: u64 = 2048;
/// Largest frame (without header) the driver sends or receives.
pub const MAX_FRAME: usize = 1514;
/// Most NICs driven at once.
pub const MAX_NICS: usize = 4;
/// Largest queue size used.
const QSIZE_MAX: u32 = 128;
/// Device-workload region layout per NIC: rx ring, tx ring, rx buffers, tx buffers.
const NIC_STRIDE: u64 = 640 << 10;
const RX_RING: u64 = 0;
const TX_RING: u64 = 0x4000;
const RX_BUFS: u64 = 0x8000;
const TX_BUFS: u64 = RX_BUFS + QSIZE_MAX as u64 * BUF_BYTES;
const _: () = assert!(TX_BUFS + QSIZE_MAX as u64 * BUF_BYTES <= NIC_STRIDE);
const _: () = assert!(BUFFERS_OFFSET + NIC_STRIDE * MAX_NICS as u64 <= super::DMA_BYTES);

// Ring layout inside a 16 KiB ring area.
const DESC_OFF: u64 = 0;
const AVAIL_OFF: u64 = 0x800;
const USED_OFF: u64 = 0x1000;

const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_NEEDS_RESET: u32 = 0x40;
const STATUS_FAILED: u32 = 0x80;
const DESC_F_WRITE: u16 = 2;
const AVAIL_F_NO_INTERRUPT: u16 = 1;
const USED_F_NO_NOTIFY: u16 = 1;

/// One split virtqueue with one descriptor per buffer (descriptor i owns buffer i).
struct Ring {
    base: u64,
    mem: u64,
    index: u32,
    size: u16,
    avail_idx: u16,
    last_used: u16,
}

impl Ring {
    fn u16_at(&self, offset: u64) -> &AtomicU16 {
        // SAFETY: `offset` is an even offset inside this ring's 16 KiB area
        // of the device-workload region, reserved for it while it lives.
        unsafe { &*((self.mem + offset) as *const AtomicU16) }
    }

    fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16) {
        let d = self.mem + DESC_OFF + u64::from(i) * 16;
        // SAFETY: descriptor `i` < size lies in this ring's descriptor table,
        // and the driver owns it (not on the avail ring).
        unsafe {
            core::ptr::write_volatile(d as *mut u64, addr);
            core::ptr::write_volatile((d + 8) as *mut u32, len);
            core::ptr::write_volatile((d + 12) as *mut u16, flags);
            core::ptr::write_volatile((d + 14) as *mut u16, 0);
        }
    }

    fn push(&mut self, head: u16) {
        let slot = AVAIL_OFF + 4 + u64::from(self.avail_idx % self.size) * 2;
        self.u16_at(slot).store(head, Ordering::Relaxed);
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// Publishes pushed buffers and notifies unless the device said not to.
    fn kick(&self) {
        self.u16_at(AVAIL_OFF + 2).store(self.avail_idx, Ordering::Release);
        fence(Ordering::SeqCst);
        if self.u16_at(USED_OFF).load(Ordering::Relaxed) & USED_F_NO_NOTIFY == 0 {
            mmio_write32(self.base + REG_QUEUE_NOTIFY, self.index);
        }
    }

    /// A used buffer: (descriptor id, length).
    fn poll(&mut self) -> Option<(u16, u32)> {
        let used = self.u16_at(USED_OFF + 2).load(Ordering::Acquire);
        if used == self.last_used {
            return None;
        }
        let e = self.mem + USED_OFF + 4 + u64::from(self.last_used % self.size) * 8;
        // SAFETY: used element `last_used % size` lies in this ring's used
        // ring; the device published it before advancing used.idx.
        let (id, len) = unsafe {
            (
                core::ptr::read_volatile(e as *const u32),
                core::ptr::read_volatile((e + 4) as *const u32),
            )
        };
        self.last_used = self.last_used.wrapping_add(1);
        Some((id as u16, len))
    }
}

/// An initialised virtio-net device.
pub struct Net {
    t: Transport,
    base: u64,
    /// The device's MAC.
    pub mac: [u8; 6],
    rx: Ring,
    tx: Ring,
    rx_bufs: u64,
    tx_bufs: u64,
    tx_free: [u16; QSIZE_MAX as usize],
    tx_nfree: usize,
    /// Used tx buffers reclaimed so far (frames the device consumed).
    pub tx_done: u64,
    /// Bad ids or lengths the device returned.
    pub device_errors: u64,
}

impl Net {
    /// Initialises `dev` as NIC `nic` (< [`MAX_NICS`]) with the device-workload region at `region`.
    pub fn open(dev: &VirtioMmioDevice, nic: usize, region: u64, khz: u64) -> Result<Self, &'static str> {
        if nic >= MAX_NICS {
            return Err("too many NICs");
        }
        let base = dev.base;
        let t = Transport::new(base, khz);
        let features = t.init(F_MAC)?;
        if features & F_MAC == 0 {
            t.fail();
            return Err("device has no MAC (VIRTIO_NET_F_MAC)");
        }
        let lo = t.config32(0).to_le_bytes();
        let hi = t.config32(4).to_le_bytes();
        let mac = [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1]];
        let mem = region + BUFFERS_OFFSET + nic as u64 * NIC_STRIDE;
        let rx = Self::setup_queue(base, 0, mem + RX_RING)?;
        let tx = Self::setup_queue(base, 1, mem + TX_RING)?;
        let mut n = Self {
            t,
            base,
            mac,
            rx,
            tx,
            rx_bufs: mem + RX_BUFS,
            tx_bufs: mem + TX_BUFS,
            tx_free: [0; QSIZE_MAX as usize],
            tx_nfree: 0,
            tx_done: 0,
            device_errors: 0,
        };
        for i in 0..n.tx.size {
            n.tx_free[usize::from(i)] = i;
        }
        n.tx_nfree = usize::from(n.tx.size);
        // Every rx buffer goes to the device before DRIVER_OK.
        for i in 0..n.rx.size {
            n.rx.set_desc(i, n.rx_bufs + u64::from(i) * BUF_BYTES, BUF_BYTES as u32, DESC_F_WRITE);
            n.rx.push(i);
        }
        n.rx.u16_at(AVAIL_OFF + 2).store(n.rx.avail_idx, Ordering::Release);
        fence(Ordering::SeqCst);
        let ok = 1 | 2 | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
        mmio_write32(base + REG_STATUS, ok);
        let status = mmio_read32(base + REG_STATUS);
        if status & (STATUS_NEEDS_RESET | STATUS_FAILED) != 0 || status & STATUS_DRIVER_OK == 0 {
            n.t.fail();
            return Err("device refused DRIVER_OK");
        }
        n.rx.kick();
        Ok(n)
    }

    fn setup_queue(base: u64, index: u32, mem: u64) -> Result<Ring, &'static str> {
        mmio_write32(base + REG_QUEUE_SEL, index);
        if mmio_read32(base + REG_QUEUE_READY) != 0 {
            return Err("queue already live after reset");
        }
        let max = mmio_read32(base + REG_QUEUE_NUM_MAX);
        if max < 2 {
            return Err("rx or tx queue missing (QueueNumMax < 2)");
        }
        let size = 1u32 << (31 - max.min(QSIZE_MAX).leading_zeros());
        // SAFETY: the ring area (16 KiB) is this NIC's part of the
        // device-workload region, not yet given to the device.
        unsafe { core::ptr::write_bytes(mem as *mut u8, 0, 0x4000) };
        mmio_write32(base + REG_QUEUE_NUM, size);
        for (low, high, addr) in [
            (REG_QUEUE_DESC_LOW, REG_QUEUE_DESC_HIGH, mem + DESC_OFF),
            (REG_QUEUE_DRIVER_LOW, REG_QUEUE_DRIVER_HIGH, mem + AVAIL_OFF),
            (REG_QUEUE_DEVICE_LOW, REG_QUEUE_DEVICE_HIGH, mem + USED_OFF),
        ] {
            mmio_write32(base + low, addr as u32);
            mmio_write32(base + high, (addr >> 32) as u32);
        }
        let ring = Ring {
            base,
            mem,
            index,
            size: size as u16,
            avail_idx: 0,
            last_used: 0,
        };
        ring.u16_at(AVAIL_OFF).store(AVAIL_F_NO_INTERRUPT, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        mmio_write32(base + REG_QUEUE_READY, 1);
        Ok(ring)
    }

    /// Whether the device reports trouble (NEEDS_RESET or lost DRIVER_OK).
    pub fn broken(&self) -> bool {
        let s = self.t.status();
        s & STATUS_NEEDS_RESET != 0 || s & STATUS_DRIVER_OK == 0
    }

    /// Receives one frame (without header) into `out`; returns its length.
    /// The buffer goes straight back to the device.
    pub fn recv(&mut self, out: &mut [u8]) -> Option<usize> {
        let (id, len) = self.rx.poll()?;
        let mut n = 0;
        if id < self.rx.size && (len as usize) >= HDR_LEN && u64::from(len) <= BUF_BYTES {
            n = (len as usize - HDR_LEN).min(out.len());
            let src = self.rx_bufs + u64::from(id) * BUF_BYTES + HDR_LEN as u64;
            // SAFETY: the device returned buffer `id`, which lies in this
            // NIC's rx buffer area and holds `len` <= BUF_BYTES bytes.
            unsafe { core::ptr::copy_nonoverlapping(src as *const u8, out.as_mut_ptr(), n) };
        } else {
            self.device_errors += 1;
        }
        if id < self.rx.size {
            self.rx.push(id);
            self.rx.kick();
        }
        Some(n)
    }

    /// Receives one frame, copying at most `out.len()` bytes of it (without
    /// header) into `out`; returns the frame's full length (0 for a buffer
    /// the device returned malformed). For counting receivers that only look
    /// at the headers.
    pub fn recv_head(&mut self, out: &mut [u8]) -> Option<usize> {
        let (id, len) = self.rx.poll()?;
        let mut frame_len = 0;
        if id < self.rx.size && (len as usize) >= HDR_LEN && u64::from(len) <= BUF_BYTES {
            frame_len = len as usize - HDR_LEN;
            let n = frame_len.min(out.len());
            let src = self.rx_bufs + u64::from(id) * BUF_BYTES + HDR_LEN as u64;
            // SAFETY: as in `recv`: buffer `id` lies in this NIC's rx area
            // and holds `len` <= BUF_BYTES bytes.
            unsafe { core::ptr::copy_nonoverlapping(src as *const u8, out.as_mut_ptr(), n) };
        } else {
            self.device_errors += 1;
        }
        if id < self.rx.size {
            self.rx.push(id);
            self.rx.kick();
        }
        Some(frame_len)
    }

    /// Takes back the tx buffers the device has consumed.
    pub fn reclaim(&mut self) {
        while let Some((id, _)) = self.tx.poll() {
            if id < self.tx.size && self.tx_nfree < usize::from(self.tx.size) {
                self.tx_free[self.tx_nfree] = id;
                self.tx_nfree += 1;
                self.tx_done += 1;
            } else {
                self.device_errors += 1;
            }
        }
    }

    /// Number of tx buffers (queue size).
    pub fn tx_slots(&self) -> u16 {
        self.tx.size
    }

    /// The frame area (after the header) of tx buffer `slot`.
    pub fn tx_frame(&mut self, slot: u16) -> &mut [u8] {
        let p = self.tx_bufs + u64::from(slot) * BUF_BYTES;
        // SAFETY: buffer `slot` is BUF_BYTES of this NIC's tx area; the
        // header is zeroed here and the caller only uses slots it owns.
        unsafe {
            core::ptr::write_bytes(p as *mut u8, 0, HDR_LEN);
            core::slice::from_raw_parts_mut((p + HDR_LEN as u64) as *mut u8, MAX_FRAME)
        }
    }

    /// A free tx slot, if any (reclaims first when none is free).
    pub fn tx_slot(&mut self) -> Option<u16> {
        if self.tx_nfree == 0 {
            self.reclaim();
        }
        if self.tx_nfree == 0 {
            return None;
        }
        self.tx_nfree -= 1;
        Some(self.tx_free[self.tx_nfree])
    }

    /// Queues tx buffer `slot` holding a `len`-byte frame (published by [`Net::tx_kick`]).
    pub fn tx_push(&mut self, slot: u16, len: usize) {
        let addr = self.tx_bufs + u64::from(slot) * BUF_BYTES;
        self.tx.set_desc(slot, addr, (HDR_LEN + len.min(MAX_FRAME)) as u32, 0);
        self.tx.push(slot);
    }

    /// Publishes queued tx buffers.
    pub fn tx_kick(&self) {
        self.tx.kick();
    }

    /// Sends `frame` at once; false when no tx buffer is free.
    pub fn send(&mut self, frame: &[u8]) -> bool {
        let Some(slot) = self.tx_slot() else { return false };
        let n = frame.len().min(MAX_FRAME);
        self.tx_frame(slot)[..n].copy_from_slice(&frame[..n]);
        self.tx_push(slot, n);
        self.tx_kick();
        true
    }

    /// Resets the device, best effort.
    pub fn shutdown(&self) {
        let _ = self.t.reset();
    }

    /// The register window's base.
    pub fn base(&self) -> u64 {
        self.base
    }
}
