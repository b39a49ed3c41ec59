//! Fuzz target body: virtio-net rx and tx descriptor chains laid out in guest
//! memory by the input, handled by `NetHandler::process_rx`/`process_tx`
//! over a datagram socket pair standing in for the tap (one frame per
//! datagram, as a tap reads and writes them). The fuzzer holds the "host"
//! end: it injects frames towards the guest (any length, floods) and reads
//! what the guest sent.
//!
//! Guest memory is [`crate::guest_memory`] (64 KiB + 4 KiB adjacent + 4 KiB
//! after a hole). Fixed layout: rx rings at 0x1000 (descriptors), 0x2000
//! (avail), 0x2400 (used); tx rings at 0x3000, 0x4000, 0x4400; 32 indirect
//! tables of 256 bytes at 0x5000; buffers from 0x7000 to 0x11000.
//!
//! Input:
//!
//! * byte 0: bits 0-3 rx queue size `1 << (x % 9)`, bits 4-7 the tx one.
//! * byte 1: bit 0 VIRTIO_NET_F_MRG_RXBUF, bit 1 VIRTIO_NET_F_HOST_TSO4;
//!   bits 2-3 first ring index (0, just before the u16 wrap, or from the input);
//!   bit 4: frames are read through an rx ring (io_uring, where the host
//!   has it), so straight into the rx chains while no frame waits;
//!   bit 5: VIRTIO_RING_F_EVENT_IDX (interrupts by used_event, kicks by
//!   avail_event, both in memory the operations poke).
//! * then operations, each starting with an op byte `b`:
//!
//! | `b % 12` | operation                                                        |
//! |----------|------------------------------------------------------------------|
//! | 0, 1     | publish an rx chain: 1-4 buffers (addresses in RAM, straddling regions, in the hole, anywhere; lengths tiny to huge), mutations: a read-only buffer, all behind an indirect table (with a bad table length), a last `next` to any index (loops) |
//! | 2, 3     | publish a tx chain: a 12-byte header (GSO type from the input) and 0-3 data buffers, mutations: short header, a writable buffer, oversized (segments repeated past 64 KiB), indirect, loops; or the same head published up to 64 times (a flood) |
//! | 4        | the host sends 1 frame or a flood of up to 64 (lengths 0, under the 12-byte header, 60, 1514, 2 KiB, the largest allowed, just over it, 70000) |
//! | 5, 6     | `process_rx` (and `arm_rx_notification`, once more when it says so) |
//! | 7        | `process_tx`                                                     |
//! | 8        | raw descriptor write (rx or tx table): index, address, length, flags, next |
//! | 9        | poke up to 31 bytes into descriptor tables, avail rings, indirect tables or buffers (never the used rings, which the device does not read) |
//! | 10       | publish a raw head index, or set an avail index to any value      |
//! | 11       | backend fault mode: normal, writes fail (ENOBUFS), writes fail fatally (EIO), reads fail fatally |
//!
//! The input ends with `process_tx` and a few `process_rx` rounds. Every
//! call is bounded by the device itself (bursts of 256).
//!
//! Checks beyond "no panic" (and the fuzzer's timeout for "no hang"):
//! * while the rx queue's writable buffers (every writable descriptor of
//!   the rx table and of the indirect tables it points at: a superset of
//!   what the device may use) stay off the rings and tables, the device
//!   changes no guest byte outside the two used rings and those buffers;
//!   every new used entry names a head inside the queue, an rx used length
//!   is at most the writable bytes of its chain (walked like virtio-queue
//!   walks it), a tx used length is 0, and the rx used lengths of a call
//!   cover the frames (header included) delivered by it;
//! * each call completes at most queue-size chains, and a tx call at most
//!   as many as it counted (sent + dropped + bad);
//! * frames are conserved: every frame the host managed to send is
//!   delivered, dropped (counted), waiting in the device or still in the
//!   socket at the end; the host receives exactly `tx_frames` frames with
//!   `tx_bytes` bytes after the header, each with a header, no larger than
//!   the largest buffer, `num_buffers` 0, and no GSO without HOST_TSO4.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use kvmkit_vmm::memory::GuestMemoryMmap;
use kvmkit_vmm::net::rx_ring::RxRing;
use kvmkit_vmm::net::tap::VNET_HDR_LEN;
use kvmkit_vmm::virtio::net::handler::{FrameIo, MAX_BUFFER_BYTES, MAX_FRAME_BYTES, READ_ROOM};
use kvmkit_vmm::virtio::net::{
    Backend, NetCounters, NetHandler, QUEUE_SIZE, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_MRG_RXBUF,
};
use kvmkit_vmm::virtio::Interrupt;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::virtio_blk_request::{contains, merged, overlaps, range, snapshot, walk, Range};
use crate::{guest_memory, Input, RAM_REGIONS};

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

const RX_DESC: u64 = 0x1000;
const RX_AVAIL: u64 = 0x2000;
const RX_USED: u64 = 0x2400;
const TX_DESC: u64 = 0x3000;
const TX_AVAIL: u64 = 0x4000;
const TX_USED: u64 = 0x4400;
const INDIRECT: u64 = 0x5000;
const DATA: u64 = 0x7000;
const DATA_END: u64 = 0x1_1000;
const MAX_OPS: usize = 256;
const MAX_FLOOD: usize = 64;

/// What one run did, for the smoke test's coverage checks.
#[derive(Clone, Copy, Debug, Default)]
pub struct Outcome {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Frames the device dropped on rx.
    pub rx_dropped: u64,
    /// Frames the host received from the guest.
    pub tx_frames: u64,
    /// Guest frames the device dropped.
    pub tx_dropped: u64,
    /// Malformed chains counted.
    pub bad_chains: u64,
    /// Mergeable rx frames spread over more than one chain.
    pub merged_frames: u64,
    /// Frames read straight into rx chains (through an rx ring).
    pub rx_direct: u64,
    /// Calls whose guest-memory writes were checked against the model.
    pub checked_calls: usize,
}

/// Backend fault modes.
const MODE_OK: u8 = 0;
const MODE_WRITE_ENOBUFS: u8 = 1;
const MODE_WRITE_EIO: u8 = 2;
const MODE_READ_EIO: u8 = 3;

/// The device's end of the socket pair, with injectable faults.
struct Fake {
    sock: UnixDatagram,
    mode: AtomicU8,
}

impl FrameIo for Fake {
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        if self.mode.load(Ordering::Relaxed) == MODE_READ_EIO {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.sock.recv(buf)
    }

    fn write_frame(&self, frame: &[u8]) -> io::Result<usize> {
        match self.mode.load(Ordering::Relaxed) {
            MODE_WRITE_ENOBUFS => Err(io::Error::from_raw_os_error(libc::ENOBUFS)),
            MODE_WRITE_EIO => Err(io::Error::from_raw_os_error(libc::EIO)),
            _ => self.sock.send(frame),
        }
    }
}

impl AsRawFd for Fake {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl Backend for Fake {
    fn set_offload(&self, _flags: u32) -> io::Result<()> {
        Ok(())
    }

    fn offloads_supported(&self) -> bool {
        true
    }

    fn name(&self) -> String {
        "fuzz".into()
    }
}

fn set_buffers(s: &UnixDatagram) {
    let size: libc::c_int = 1 << 20;
    for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
        // SAFETY: SO_SNDBUF/SO_RCVBUF read one int from a valid pointer.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

/// One virtqueue as the driver (the fuzzer) sees it.
struct Ring {
    desc: u64,
    avail: u64,
    used: u64,
    size: u16,
    avail_idx: u16,
    /// The used index last seen in memory.
    used_idx: u16,
    cursor: u16,
}

impl Ring {
    fn used_range(&self) -> Range {
        range(self.used, 6 + 8 * u64::from(self.size))
    }

    fn queue(&self, start: u16) -> Queue {
        let mut q = Queue::new(QUEUE_SIZE).expect("queue");
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc as u32), Some(0));
        q.set_avail_ring_address(Some(self.avail as u32), Some(0));
        q.set_used_ring_address(Some(self.used as u32), Some(0));
        q.set_ready(true);
        q.set_next_avail(start);
        q.set_next_used(start);
        q
    }
}

struct Rig<'a> {
    input: Input<'a>,
    mem: GuestMemoryMmap,
    handler: NetHandler,
    backend: Arc<Fake>,
    counters: Arc<NetCounters>,
    host: UnixDatagram,
    rx: Ring,
    tx: Ring,
    mrg: bool,
    host_tso: bool,
    /// Frames (and bytes after the header) the host managed to send.
    injected: u64,
    injected_bytes: u64,
    /// Frames (and bytes after the header) the host received.
    received: u64,
    received_bytes: u64,
    /// Whether our view of the used rings is still the device's.
    synced: bool,
    tables: u64,
    outcome: Outcome,
    hostbuf: Vec<u8>,
    pattern: &'static [u8],
}

impl Rig<'_> {
    fn write<T: vm_memory::ByteValued>(&self, v: T, at: u64) {
        let _ = self.mem.write_obj(v, GuestAddress(at));
    }

    fn read_u16(&self, at: u64) -> u16 {
        self.mem.read_obj(GuestAddress(at)).expect("ring in RAM")
    }

    fn read_u32(&self, at: u64) -> u32 {
        self.mem.read_obj(GuestAddress(at)).expect("ring in RAM")
    }

    fn ring(&mut self, tx: bool) -> &mut Ring {
        if tx {
            &mut self.tx
        } else {
            &mut self.rx
        }
    }

    fn write_desc(&self, table: u64, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = table + 16 * u64::from(index);
        self.write(addr, at);
        self.write(len, at + 8);
        self.write(flags, at + 12);
        self.write(next, at + 14);
    }

    fn publish(&mut self, tx: bool, head: u16) {
        let r = self.ring(tx);
        let slot = r.avail + 4 + 2 * u64::from(r.avail_idx % r.size);
        r.avail_idx = r.avail_idx.wrapping_add(1);
        let (idx, avail) = (r.avail_idx, r.avail);
        self.write(head, slot);
        self.write(idx, avail + 2);
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
        match sel % 8 {
            0 => VNET_HDR_LEN as u32,
            1 => (VNET_HDR_LEN + 1514) as u32,
            2 => 2048,
            3 => 4096,
            4 => u32::from(self.input.u8()),
            5 => u32::from(self.input.u16()),
            6 => MAX_BUFFER_BYTES as u32,
            _ => self.input.u32(),
        }
    }

    /// Writes `descs` as a chain (direct at the cursor, or behind an
    /// indirect table) and returns its head.
    fn lay_chain(&mut self, tx: bool, descs: &[(u64, u32, u16)], m: u8) -> u16 {
        let last_next = (m & 0x20 != 0).then(|| {
            let x = self.input.u16();
            let size = self.ring(tx).size;
            if x & 0x8000 != 0 {
                x
            } else {
                x % (size + 2)
            }
        });
        let (table_addr, size, head) = {
            let r = self.ring(tx);
            (r.desc, r.size, r.cursor)
        };
        let n = descs.len() as u16;
        if m & 4 != 0 {
            let table = INDIRECT + 256 * (self.tables % 32);
            self.tables += 1;
            for (k, &(addr, len, flags)) in descs.iter().enumerate() {
                let k = k as u16;
                let next = if k + 1 < n { Some(k + 1) } else { last_next };
                let f = flags | if next.is_some() { F_NEXT } else { 0 };
                self.write_desc(table, k, addr, len, f, next.unwrap_or(0));
            }
            let table_len = if m & 0x80 != 0 {
                u32::from(self.input.u8())
            } else {
                16 * u32::from(n)
            };
            self.write_desc(table_addr, head, table, table_len, F_INDIRECT, 0);
            self.ring(tx).cursor = (head + 1) % size;
        } else {
            for (k, &(addr, len, flags)) in descs.iter().enumerate() {
                let k = k as u16;
                let index = (head + k) % size;
                let next = if k + 1 < n {
                    Some((head + k + 1) % size)
                } else {
                    last_next
                };
                let f = flags | if next.is_some() { F_NEXT } else { 0 };
                self.write_desc(table_addr, index, addr, len, f, next.unwrap_or(0));
            }
            self.ring(tx).cursor = (head + n) % size;
        }
        head
    }

    fn rx_chain(&mut self, b: u8) {
        let segments = 1 + usize::from((b >> 4) & 3);
        let m = self.input.u8();
        let mut descs = Vec::with_capacity(segments);
        for k in 0..segments {
            let addr = self.pick_addr();
            let len = self.pick_len();
            let read_only = m & 1 != 0 && k == usize::from(m >> 6) % segments;
            descs.push((addr, len, if read_only { 0 } else { F_WRITE }));
        }
        let head = self.lay_chain(false, &descs, m);
        self.publish(false, head);
    }

    fn tx_chain(&mut self, b: u8) {
        let m = self.input.u8();
        let slot = u64::from(self.input.u8());
        // Headers sit in the buffer area too (the device reads them).
        let header_at = DATA + 16 * slot;
        let gso = match self.input.u8() % 4 {
            0 => self.input.u8(),
            _ => 0,
        };
        let mut header = [0u8; VNET_HDR_LEN];
        header[0] = self.input.u8() & 1; // NEEDS_CSUM
        header[1] = gso;
        header[10] = self.input.u8(); // num_buffers: the device must clear it
        let _ = self.mem.write_slice(&header, GuestAddress(header_at));
        let header_len = if m & 0x10 != 0 {
            u32::from(self.input.u8() % 13)
        } else {
            VNET_HDR_LEN as u32
        };
        let mut descs = vec![(header_at, header_len, 0)];
        let segments = usize::from((b >> 4) & 3);
        for k in 0..segments {
            let addr = self.pick_addr();
            let len = self.pick_len();
            let writable = m & 1 != 0 && k == 0;
            descs.push((addr, len, if writable { F_WRITE } else { 0 }));
        }
        if m & 2 != 0 {
            // Oversized: the whole low region, several times.
            for _ in 0..2 {
                descs.push((0, 0x1_1000, 0));
            }
        }
        let head = self.lay_chain(true, &descs, m);
        let copies = if m & 8 != 0 {
            1 + usize::from(self.input.u8()) % MAX_FLOOD
        } else {
            1
        };
        for _ in 0..copies {
            self.publish(true, head);
        }
    }

    fn inject(&mut self, b: u8) {
        let count = if b & 0x80 != 0 {
            1 + usize::from(self.input.u8()) % MAX_FLOOD
        } else {
            1
        };
        let len = match self.input.u8() % 10 {
            0 => 0,
            1 => usize::from(self.input.u8()) % VNET_HDR_LEN,
            2 | 3 => VNET_HDR_LEN + 60,
            4 | 5 => VNET_HDR_LEN + 1514,
            6 => VNET_HDR_LEN + 2048 + usize::from(self.input.u8()),
            7 => MAX_BUFFER_BYTES,
            8 => MAX_BUFFER_BYTES + 1 + usize::from(self.input.u8()),
            _ => 70_000,
        };
        let fill = self.input.u8();
        let frame: Vec<u8> = self.pattern[..len].iter().map(|&p| p ^ fill).collect();
        for _ in 0..count {
            match self.host.send(&frame) {
                Ok(_) => {
                    self.injected += 1;
                    self.injected_bytes += len.saturating_sub(VNET_HDR_LEN) as u64;
                }
                Err(_) => break,
            }
        }
    }

    fn raw_desc(&mut self, b: u8) {
        let tx = b & 0x10 != 0;
        let (table, size) = {
            let r = self.ring(tx);
            (r.desc, r.size)
        };
        let index = u16::from(self.input.u8()) % size;
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
            u16::from(self.input.u8()) % (size + 1)
        };
        self.write_desc(table, index, addr, len, flags, next);
    }

    fn poke(&mut self) {
        let at = RX_DESC + u64::from(self.input.u16()) % (DATA_END - RX_DESC);
        let n = usize::from(self.input.u8() % 32);
        let bytes = self.input.bytes(n).to_vec();
        let r = range(at, bytes.len() as u64);
        let used = merged(vec![self.rx.used_range(), self.tx.used_range()]);
        if overlaps(&[r], &used) {
            return;
        }
        let _ = self.mem.write_slice(&bytes, GuestAddress(at));
    }

    fn op(&mut self) -> bool {
        let b = self.input.u8();
        match b % 12 {
            0 | 1 => self.rx_chain(b),
            2 | 3 => self.tx_chain(b),
            4 => self.inject(b),
            5 | 6 => self.call(false),
            7 => self.call(true),
            8 => self.raw_desc(b),
            9 => self.poke(),
            10 => {
                let tx = b & 0x10 != 0;
                if b & 0x20 != 0 {
                    let v = self.input.u16();
                    let r = self.ring(tx);
                    r.avail_idx = v;
                    let avail = r.avail;
                    self.write(v, avail + 2);
                } else {
                    let x = self.input.u16();
                    let size = self.ring(tx).size;
                    let head = if b & 0x80 != 0 { x } else { x % (2 * size) };
                    self.publish(tx, head);
                }
            }
            _ => {
                let mode = match self.input.u8() % 6 {
                    0..=2 => MODE_OK,
                    3 => MODE_WRITE_ENOBUFS,
                    4 => MODE_WRITE_EIO,
                    _ => MODE_READ_EIO,
                };
                self.backend.mode.store(mode, Ordering::Relaxed);
            }
        }
        !self.input.is_empty()
    }

    fn count(&self) -> [u64; 7] {
        let c = &self.counters;
        [
            &c.rx_frames,
            &c.rx_bytes,
            &c.rx_dropped,
            &c.tx_frames,
            &c.tx_bytes,
            &c.tx_dropped,
            &c.bad_chains,
        ]
        .map(|a| a.load(Ordering::Relaxed))
    }

    /// The rx queue's writable buffers (every writable descriptor of its
    /// table and of the indirect tables it refers to) and the indirect
    /// tables read to find them. Reads a snapshot; each table once.
    fn rx_writable(&self, snap: &[Vec<u8>]) -> (Vec<Range>, Vec<Range>) {
        let (mut writable, mut tables) = (Vec::new(), Vec::new());
        let entry = |at: u64| -> Option<(u64, u32, u16)> {
            let (i, &(base, len)) = RAM_REGIONS
                .iter()
                .enumerate()
                .find(|(_, &(b, l))| at >= b && at.checked_add(16).is_some_and(|e| e <= b + l as u64))?;
            let off = (at - base) as usize;
            debug_assert!(off + 16 <= len);
            let raw = &snap[i][off..off + 16];
            Some((
                u64::from_le_bytes(raw[0..8].try_into().expect("8 bytes")),
                u32::from_le_bytes(raw[8..12].try_into().expect("4 bytes")),
                u16::from_le_bytes([raw[12], raw[13]]),
            ))
        };
        let mut seen = std::collections::HashSet::new();
        for i in 0..u64::from(self.rx.size) {
            let Some((addr, len, flags)) = entry(self.rx.desc + 16 * i) else {
                continue;
            };
            if flags & F_INDIRECT != 0 {
                if len % 16 != 0 || !seen.insert((addr, len)) {
                    continue;
                }
                let n = u64::from(len / 16).min(u64::from(u16::MAX));
                tables.push(range(addr, 16 * n));
                for j in 0..n {
                    match entry(addr.wrapping_add(16 * j)) {
                        Some((a, l, f)) if f & F_INDIRECT == 0 && f & F_WRITE != 0 => {
                            writable.push(range(a, u64::from(l)))
                        }
                        Some(_) => {}
                        None => break,
                    }
                }
            } else if flags & F_WRITE != 0 {
                writable.push(range(addr, u64::from(len)));
            }
        }
        (writable, tables)
    }

    /// The tx queue's indirect tables.
    fn tx_tables(&self) -> Vec<Range> {
        (0..u64::from(self.tx.size))
            .filter_map(|i| {
                let at = self.tx.desc + 16 * i;
                let addr: u64 = self.mem.read_obj(GuestAddress(at)).ok()?;
                let len: u32 = self.mem.read_obj(GuestAddress(at + 8)).ok()?;
                let flags: u16 = self.mem.read_obj(GuestAddress(at + 12)).ok()?;
                (flags & F_INDIRECT != 0).then(|| range(addr, u64::from(len)))
            })
            .collect()
    }

    /// Reads everything the guest sent, checking each frame.
    fn drain_host(&mut self) {
        loop {
            match self.host.recv(&mut self.hostbuf) {
                Ok(n) => {
                    assert!(
                        (VNET_HDR_LEN..=MAX_BUFFER_BYTES).contains(&n),
                        "the host got a {n}-byte frame"
                    );
                    let f = &self.hostbuf[..n];
                    assert_eq!(&f[10..12], &[0, 0], "num_buffers not cleared on tx");
                    assert!(self.host_tso || f[1] == 0, "GSO type {} passed without HOST_TSO4", f[1]);
                    self.received += 1;
                    self.received_bytes += (n - VNET_HDR_LEN) as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("host socket: {e}"),
            }
        }
    }

    /// One `process_tx` or `process_rx` round, checked against the model.
    fn call(&mut self, tx: bool) {
        let before = snapshot(&self.mem);
        let (writable, rx_tables) = self.rx_writable(&before);
        let writable = merged(writable);
        let used_rings = vec![self.rx.used_range(), self.tx.used_range()];
        let mut reads = vec![
            range(self.rx.desc, 16 * u64::from(self.rx.size)),
            range(self.tx.desc, 16 * u64::from(self.tx.size)),
            range(self.rx.avail, 6 + 2 * u64::from(self.rx.size)),
            range(self.tx.avail, 6 + 2 * u64::from(self.tx.size)),
        ];
        reads.extend(rx_tables);
        reads.extend(self.tx_tables());
        reads.extend_from_slice(&used_rings);
        let clean = !overlaps(&writable, &merged(reads));
        let allowed = merged([writable.clone(), used_rings].concat());
        let before = clean.then_some(before);
        let c0 = self.count();

        if tx {
            self.handler.process_tx();
        } else {
            self.handler.process_rx();
            let mut again = 2;
            while self.handler.arm_rx_notification() && again > 0 {
                self.handler.process_rx();
                again -= 1;
            }
        }
        let c1 = self.count();
        self.drain_host();
        assert_eq!(self.received, c1[3], "frames the host received vs tx_frames");
        assert_eq!(self.received_bytes, c1[4], "bytes the host received vs tx_bytes");
        if tx {
            assert_eq!(c1[..3], c0[..3], "process_tx changed rx counters");
        } else {
            assert_eq!(c1[3..6], c0[3..6], "process_rx changed tx counters");
        }

        let Some(before) = before else {
            self.synced = false;
            return;
        };
        if !self.synced {
            // Used entries written while the rings were overwritten cannot be
            // told apart; memory writes are still checked.
            self.check_writes(&before, &allowed);
            return;
        }
        self.outcome.checked_calls += 1;
        let ring = if tx { &self.tx } else { &self.rx };
        let (size, used, old) = (ring.size, ring.used, ring.used_idx);
        let other = if tx { &self.rx } else { &self.tx };
        assert_eq!(
            self.read_u16(other.used + 2),
            other.used_idx,
            "the other queue's used index moved"
        );
        let now = self.read_u16(used + 2);
        let new = now.wrapping_sub(old);
        assert!(new <= size, "{new} completions in one call on a queue of {size}");
        let mut used_bytes = 0u64;
        for k in 0..new {
            let at = used + 4 + 8 * u64::from(old.wrapping_add(k) % size);
            let (id, len) = (self.read_u32(at), self.read_u32(at + 4));
            assert!(id < u32::from(size), "used id {id} outside a queue of {size}");
            if tx {
                assert_eq!(len, 0, "tx chain {id} completed with length {len}");
            } else {
                let w = walk(&self.mem, self.rx.desc, size, id as u16);
                assert!(
                    u64::from(len) <= w.writable_bytes,
                    "rx chain {id}: used length {len} > {} writable bytes",
                    w.writable_bytes
                );
                used_bytes += u64::from(len);
            }
        }
        if tx {
            let counted = (c1[3] - c0[3]) + (c1[5] - c0[5]) + (c1[6] - c0[6]);
            assert!(
                u64::from(new) <= counted,
                "{new} tx completions but {counted} chains counted"
            );
            self.tx.used_idx = now;
        } else {
            let frames = c1[0] - c0[0];
            let delivered = (c1[1] - c0[1]) + frames * VNET_HDR_LEN as u64;
            assert!(
                used_bytes >= delivered,
                "{frames} frames of {delivered} bytes delivered in {used_bytes} used bytes"
            );
            if self.mrg && u64::from(new) > frames + (c1[2] - c0[2]) + (c1[6] - c0[6]) {
                self.outcome.merged_frames += 1;
            }
            self.rx.used_idx = now;
        }
        self.check_writes(&before, &allowed);
    }

    fn check_writes(&self, before: &[Vec<u8>], allowed: &[Range]) {
        let after = snapshot(&self.mem);
        for ((&(base, _), b), a) in RAM_REGIONS.iter().zip(before).zip(&after) {
            for (c, (cb, ca)) in b.chunks(256).zip(a.chunks(256)).enumerate() {
                if cb == ca {
                    continue;
                }
                for (i, (x, y)) in cb.iter().zip(ca).enumerate() {
                    let addr = base + (256 * c + i) as u64;
                    assert!(
                        x == y || contains(allowed, addr),
                        "device wrote {addr:#x} ({x:#x} -> {y:#x}) outside the used rings and rx buffers"
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
    let rx_size = 1u16 << ((b0 & 0xf) % 9);
    let tx_size = 1u16 << ((b0 >> 4) % 9);
    let b1 = input.u8();
    let mrg = b1 & 1 != 0;
    let host_tso = b1 & 2 != 0;
    let start = match (b1 >> 2) & 3 {
        0 => 0,
        1 => 0xffff - u16::from(input.u8() % 4),
        _ => input.u16(),
    };
    let mut acked = kvmkit_vmm::virtio::VIRTIO_F_VERSION_1;
    if mrg {
        acked |= VIRTIO_NET_F_MRG_RXBUF;
    }
    if host_tso {
        acked |= VIRTIO_NET_F_HOST_TSO4;
    }
    if b1 & 0x20 != 0 {
        acked |= kvmkit_vmm::virtio::VIRTIO_RING_F_EVENT_IDX;
    }

    let mem = guest_memory();
    let rx = Ring {
        desc: RX_DESC,
        avail: RX_AVAIL,
        used: RX_USED,
        size: rx_size,
        avail_idx: start,
        used_idx: start,
        cursor: 0,
    };
    let tx = Ring {
        desc: TX_DESC,
        avail: TX_AVAIL,
        used: TX_USED,
        size: tx_size,
        avail_idx: start,
        used_idx: start,
        cursor: 0,
    };
    for r in [&rx, &tx] {
        mem.write_obj(start, GuestAddress(r.avail + 2)).expect("avail idx");
        mem.write_obj(start, GuestAddress(r.used + 2)).expect("used idx");
    }
    let (a, b) = UnixDatagram::pair().expect("socketpair");
    for s in [&a, &b] {
        s.set_nonblocking(true).expect("nonblocking");
        set_buffers(s);
    }
    let backend = Arc::new(Fake {
        sock: a,
        mode: AtomicU8::new(MODE_OK),
    });
    let counters = Arc::new(NetCounters::default());
    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let mut handler = NetHandler::new(
        mem.clone(),
        rx.queue(start),
        tx.queue(start),
        Arc::new(Interrupt::new(irq)),
        backend.clone(),
        counters.clone(),
        acked,
    );
    if b1 & 0x10 != 0 {
        // Without io_uring here the input runs without a ring.
        if let Ok(ring) = RxRing::new(backend.sock.as_raw_fd(), READ_ROOM) {
            handler = handler.with_rx_ring(Some(Arc::new(std::sync::Mutex::new(ring))));
        }
    }
    static PATTERN: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let pattern = PATTERN.get_or_init(|| (0..70_000u32).map(|i| (i * 7 + (i >> 8)) as u8).collect());
    let mut rig = Rig {
        input,
        mem,
        handler,
        backend,
        counters,
        host: b,
        rx,
        tx,
        mrg,
        host_tso,
        injected: 0,
        injected_bytes: 0,
        received: 0,
        received_bytes: 0,
        synced: true,
        tables: 0,
        outcome: Outcome::default(),
        hostbuf: vec![0; MAX_BUFFER_BYTES + 4096],
        pattern,
    };
    let mut ops = 0;
    while ops < MAX_OPS && rig.op() {
        ops += 1;
    }
    rig.call(true);
    for _ in 0..4 {
        rig.call(false);
    }

    // Frame conservation: what the host sent is delivered, dropped, waiting
    // in the device, or still in the socket.
    let mut left = 0u64;
    let mut buf = vec![0u8; MAX_BUFFER_BYTES + 4096];
    while rig.backend.sock.recv(&mut buf).is_ok() {
        left += 1;
    }
    let c = rig.count();
    let pending = rig.handler.rx_held() as u64;
    assert_eq!(
        rig.injected,
        c[0] + c[2] + pending + left,
        "frames sent by the host vs delivered {} + dropped {} + waiting {pending} + unread {left}",
        c[0],
        c[2]
    );
    assert!(
        c[1] <= rig.injected_bytes,
        "rx_bytes {} > bytes sent {}",
        c[1],
        rig.injected_bytes
    );
    assert!(c[1] <= c[0] * MAX_FRAME_BYTES as u64);
    Outcome {
        rx_frames: c[0],
        rx_dropped: c[2],
        rx_direct: rig.counters.rx_direct.load(Ordering::Relaxed),
        tx_frames: c[3],
        tx_dropped: c[5],
        bad_chains: c[6],
        ..rig.outcome
    }
}
