//! virtio-net: a polled driver with an rx queue (0) full of 2 KiB buffers
//! and a tx queue (1) of 2 KiB buffers, no offloads (every frame carries a
//! zero 12-byte `virtio_net_hdr_v1`), one descriptor per buffer.
//!
//! Rx buffers go back to the device as soon as a frame is read (published
//! on the avail ring at once), but the device is notified once per batch:
//! when the used ring is found empty or after half a queue of refills
//! (as Linux's virtio-net refills in its NAPI poll). A notification is a VM
//! exit (30-56 us at CPL3 on kvm_pvm), so one per frame would cap a flood
//! at ~30k frames/s.

use kvmkit_guest_abi::VirtioMmioDevice;

use super::{Ring, Transport, BUFFERS_OFFSET, DESC_F_WRITE, QUEUE_SIZE_MAX};

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
const QSIZE_MAX: u32 = QUEUE_SIZE_MAX;
/// Device-workload region layout per NIC: rx ring, tx ring, rx buffers, tx buffers.
const NIC_STRIDE: u64 = 640 << 10;
const RX_RING: u64 = 0;
const TX_RING: u64 = 0x4000;
const RX_BUFS: u64 = 0x8000;
const TX_BUFS: u64 = RX_BUFS + QSIZE_MAX as u64 * BUF_BYTES;
const _: () = assert!(TX_BUFS + QSIZE_MAX as u64 * BUF_BYTES <= NIC_STRIDE);
const _: () = assert!(BUFFERS_OFFSET + NIC_STRIDE * MAX_NICS as u64 <= super::DMA_BYTES);

const _: () = assert!(super::RING_BYTES <= TX_RING);

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
    /// Rx buffers given back (published) since the device was last notified.
    rx_unkicked: u16,
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
        let rx = t.setup_ring(0, mem + RX_RING, 2)?;
        let tx = t.setup_ring(1, mem + TX_RING, 2)?;
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
            rx_unkicked: 0,
            tx_done: 0,
            device_errors: 0,
        };
        for i in 0..n.tx.size() {
            n.tx_free[usize::from(i)] = i;
        }
        n.tx_nfree = usize::from(n.tx.size());
        // Every rx buffer goes to the device before DRIVER_OK (published by
        // the kick after it).
        for i in 0..n.rx.size() {
            n.rx.set_desc(
                i,
                n.rx_bufs + u64::from(i) * BUF_BYTES,
                BUF_BYTES as u32,
                DESC_F_WRITE,
                0,
            );
            n.rx.push(i);
        }
        n.t.driver_ok()?;
        n.rx.kick();
        Ok(n)
    }

    /// Whether the device reports trouble (NEEDS_RESET or lost DRIVER_OK).
    pub fn broken(&self) -> bool {
        self.t.broken()
    }

    /// Receives one frame (without header) into `out`; returns its length.
    /// The buffer goes straight back to the device.
    pub fn recv(&mut self, out: &mut [u8]) -> Option<usize> {
        let (id, len) = self.rx_poll()?;
        let in_range = id < u32::from(self.rx.size());
        let id = id as u16;
        let mut n = 0;
        if in_range && (len as usize) >= HDR_LEN && u64::from(len) <= BUF_BYTES {
            n = (len as usize - HDR_LEN).min(out.len());
            let src = self.rx_bufs + u64::from(id) * BUF_BYTES + HDR_LEN as u64;
            // SAFETY: the device returned buffer `id`, which lies in this
            // NIC's rx buffer area and holds `len` <= BUF_BYTES bytes.
            unsafe { core::ptr::copy_nonoverlapping(src as *const u8, out.as_mut_ptr(), n) };
        } else {
            self.device_errors += 1;
        }
        if in_range {
            self.rx_give_back(id);
        }
        Some(n)
    }

    /// Receives one frame, copying at most `out.len()` bytes of it (without
    /// header) into `out`; returns the frame's full length (0 for a buffer
    /// the device returned malformed). For counting receivers that only look
    /// at the headers.
    pub fn recv_head(&mut self, out: &mut [u8]) -> Option<usize> {
        let (id, len) = self.rx_poll()?;
        let in_range = id < u32::from(self.rx.size());
        let id = id as u16;
        let mut frame_len = 0;
        if in_range && (len as usize) >= HDR_LEN && u64::from(len) <= BUF_BYTES {
            frame_len = len as usize - HDR_LEN;
            let n = frame_len.min(out.len());
            let src = self.rx_bufs + u64::from(id) * BUF_BYTES + HDR_LEN as u64;
            // SAFETY: as in `recv`: buffer `id` lies in this NIC's rx area
            // and holds `len` <= BUF_BYTES bytes.
            unsafe { core::ptr::copy_nonoverlapping(src as *const u8, out.as_mut_ptr(), n) };
        } else {
            self.device_errors += 1;
        }
        if in_range {
            self.rx_give_back(id);
        }
        Some(frame_len)
    }

    /// The next used rx buffer; when there is none, first notifies the
    /// device of the buffers given back since the last notification.
    fn rx_poll(&mut self) -> Option<(u32, u32)> {
        let used = self.rx.poll();
        if used.is_none() && self.rx_unkicked > 0 {
            self.rx_notify();
        }
        used
    }

    /// Puts rx buffer `id` back on the avail ring (published at once) and
    /// notifies the device once half a queue has gone back unnotified.
    fn rx_give_back(&mut self, id: u16) {
        self.rx.push(id);
        self.rx.publish();
        self.rx_unkicked += 1;
        if self.rx_unkicked >= (self.rx.size() / 2).max(1) {
            self.rx_notify();
        }
    }

    /// Notifies the device of the rx buffers given back (if it asked to be).
    fn rx_notify(&mut self) {
        self.rx_unkicked = 0;
        self.rx.notify();
    }

    /// Takes back the tx buffers the device has consumed.
    pub fn reclaim(&mut self) {
        while let Some((id, _)) = self.tx.poll() {
            if id < u32::from(self.tx.size()) && self.tx_nfree < usize::from(self.tx.size()) {
                self.tx_free[self.tx_nfree] = id as u16;
                self.tx_nfree += 1;
                self.tx_done += 1;
            } else {
                self.device_errors += 1;
            }
        }
    }

    /// Number of tx buffers (queue size).
    pub fn tx_slots(&self) -> u16 {
        self.tx.size()
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
        self.tx
            .set_desc(slot, addr, (HDR_LEN + len.min(MAX_FRAME)) as u32, 0, 0);
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
