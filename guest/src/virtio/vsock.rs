//! virtio-vsock (device ID 19, virtio 1.2 section 5.10): a polled driver for
//! stream sockets with a small fixed connection table ([`MAX_CONNS`]).
//!
//! Queues: rx (0) with [`RX_BUFS`] buffers always posted, each a 44-byte
//! header descriptor chained to a [`PKT_MAX`]-byte data descriptor; tx (1), a
//! header descriptor chained to a data descriptor for RW packets; event (2)
//! with a few 8-byte buffers (a transport reset drops every connection).
//!
//! Flow control (section 5.10.6.3): every packet sent carries `buf_alloc` and
//! `fwd_cnt`; data never goes past the peer's credit `peer_buf_alloc -
//! (tx_cnt - peer_fwd_cnt)`, and one CREDIT_REQUEST goes out when that
//! credit is exhausted; a CREDIT_UPDATE goes out when the peer asks, or when
//! a quarter of our buffer has been freed since the peer last heard of it.
//!
//! Nothing is sent from inside rx processing: replies are flags on the
//! connection (or a short queue of RSTs for unknown connections) that
//! [`Vsock::poll`] flushes while tx descriptors are free, so a device that
//! stops taking tx until its rx is drained cannot deadlock the driver.

use kvmkit_guest_abi::VirtioMmioDevice;
use kvmkit_workloads::{fill_pattern, PATTERN_PERIOD};

use super::{Ring, Transport, BUFFERS_OFFSET, DESC_F_NEXT, DESC_F_WRITE, DMA_BYTES};
use crate::arch::rdtsc;

/// Device ID of a socket device.
pub const ID_VSOCK: u32 = 19;
/// The host's CID.
pub const HOST_CID: u64 = 2;
/// Most connections open at once.
pub const MAX_CONNS: usize = 8;
/// Largest payload of one packet (Firecracker's limit too), and the size of
/// each rx data buffer.
pub const PKT_MAX: u64 = 64 << 10;
/// rx buffers kept posted.
pub const RX_BUFS: u16 = 32;
/// Receive buffer of an echo connection: the `buf_alloc` it advertises.
pub const ECHO_BUF: u64 = 64 << 10;

/// VIRTIO_VSOCK_F_STREAM.
const F_STREAM: u64 = 1;
const HDR_LEN: usize = 44;
const TYPE_STREAM: u16 = 1;
const OP_REQUEST: u16 = 1;
const OP_RESPONSE: u16 = 2;
const OP_RST: u16 = 3;
const OP_SHUTDOWN: u16 = 4;
const OP_RW: u16 = 5;
const OP_CREDIT_UPDATE: u16 = 6;
const OP_CREDIT_REQUEST: u16 = 7;
/// SHUTDOWN flags: the sender will receive / send no more.
const SHUT_RCV: u32 = 1;
const SHUT_SEND: u32 = 2;
/// `buf_alloc` of a sink connection: its data is consumed as it arrives.
const SINK_BUF_ALLOC: u32 = 1 << 20;
/// Most tx packets in flight.
const TX_SLOTS: u16 = 64;
/// tx data buffers (for echoed data) of [`PKT_MAX`] bytes.
const TX_DATA_BUFS: usize = 8;
const EVENT_BUFS: u16 = 4;
/// RSTs owed to unknown connections, kept at most.
const MAX_PENDING_RST: usize = 16;
/// Smallest RW packet `send_pattern` sends while more data waits (unless
/// the peer's buffer is tiny): less credit than this waits for an update.
const SWS_MIN: u64 = 16 << 10;
/// Local ports of outgoing connections start here.
const FIRST_LOCAL_PORT: u32 = 49152;

// Layout, from BUFFERS_OFFSET of the device-workload region.
const RX_RING: u64 = 0;
const TX_RING: u64 = 0x2000;
const EV_RING: u64 = 0x4000;
const RX_HDRS: u64 = 0x6000;
const TX_HDRS: u64 = 0x7000;
const EV_BUF: u64 = 0x8000;
const PATTERN: u64 = 0x1_0000;
const TX_DATA: u64 = 0x2_0000;
const ECHO: u64 = TX_DATA + TX_DATA_BUFS as u64 * PKT_MAX;
const RX_DATA: u64 = ECHO + MAX_CONNS as u64 * ECHO_BUF;
const _: () = assert!(RX_HDRS + RX_BUFS as u64 * 64 <= TX_HDRS);
const _: () = assert!(TX_HDRS + TX_SLOTS as u64 * 64 <= EV_BUF);
const _: () = assert!(PATTERN + PATTERN_PERIOD as u64 <= TX_DATA);
const _: () = assert!(BUFFERS_OFFSET + RX_DATA + RX_BUFS as u64 * PKT_MAX <= DMA_BYTES);

// Replies a connection owes the peer (bits of `Conn::owe`).
const O_REQUEST: u8 = 1;
const O_RESPONSE: u8 = 2;
const O_CREDIT_UPDATE: u8 = 4;
const O_CREDIT_REQUEST: u8 = 8;
const O_SHUTDOWN: u8 = 16;
const O_RST: u8 = 32;

/// A packet header (`struct virtio_vsock_hdr`).
#[derive(Clone, Copy, Debug, Default)]
struct Hdr {
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    len: u32,
    kind: u16,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
}

impl Hdr {
    fn read(addr: u64) -> Self {
        let mut b = [0u8; HDR_LEN];
        // SAFETY: `addr` is a 64-byte header slot of the rx header area,
        // reserved for this driver; the device has returned it.
        unsafe { core::ptr::copy_nonoverlapping(addr as *const u8, b.as_mut_ptr(), HDR_LEN) };
        let u64_at = |o: usize| {
            u64::from_le_bytes([
                b[o],
                b[o + 1],
                b[o + 2],
                b[o + 3],
                b[o + 4],
                b[o + 5],
                b[o + 6],
                b[o + 7],
            ])
        };
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            kind: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    fn write(&self, addr: u64) {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.kind.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        // SAFETY: `addr` is a 64-byte header slot of the tx header area whose
        // tx slot the driver owns (not given to the device yet).
        unsafe { core::ptr::copy_nonoverlapping(b.as_ptr(), addr as *mut u8, HDR_LEN) };
    }
}

/// Where a connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Slot unused.
    Free,
    /// REQUEST sent (or owed), no RESPONSE yet.
    Connecting,
    /// Data may flow.
    Established,
    /// Reset (by either side); the workload reads it, then [`Vsock::release`]s it.
    Closed,
}

/// What happens to a connection's received data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Sent back to the peer.
    Echo,
    /// Handed to the `sink` of [`Vsock::poll`] at once.
    Sink,
}

/// One connection.
#[derive(Clone, Copy, Debug)]
pub struct Conn {
    /// Where it is.
    pub state: State,
    /// What happens to its data.
    pub mode: Mode,
    /// Our port.
    pub local_port: u32,
    /// The host's port.
    pub peer_port: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    tx_cnt: u32,
    fwd_cnt: u32,
    fwd_told: u32,
    buf_alloc: u32,
    /// Payload bytes received.
    pub rx_bytes: u64,
    /// Payload bytes sent.
    pub tx_bytes: u64,
    /// RW packets received.
    pub rx_packets: u64,
    /// CREDIT_REQUESTs sent (each time the peer's credit ran out).
    pub credit_requests: u64,
    echo_start: u64,
    echo_len: u64,
    /// SHUTDOWN flags the peer sent (1: it receives no more, 2: it sends no more).
    pub peer_shut: u32,
    owe: u8,
    shut_flags: u32,
    credit_asked: bool,
    /// TSC when the REQUEST went out (ours) or came in (the peer's).
    pub opened: u64,
    /// TSC when the RESPONSE came in (ours) or went out (the peer's).
    pub established: u64,
    /// TSC of the first and the last payload received (0: none).
    pub first_rx: u64,
    /// See `first_rx`.
    pub last_rx: u64,
    /// The peer reset it (else we did).
    pub reset_by_peer: bool,
    /// The peer broke the protocol on it (data past our credit, data before
    /// the connection was up): the driver reset it.
    pub violation: bool,
}

impl Conn {
    const FREE: Self = Self {
        state: State::Free,
        mode: Mode::Sink,
        local_port: 0,
        peer_port: 0,
        peer_buf_alloc: 0,
        peer_fwd_cnt: 0,
        tx_cnt: 0,
        fwd_cnt: 0,
        fwd_told: 0,
        buf_alloc: 0,
        rx_bytes: 0,
        tx_bytes: 0,
        rx_packets: 0,
        credit_requests: 0,
        echo_start: 0,
        echo_len: 0,
        peer_shut: 0,
        owe: 0,
        shut_flags: 0,
        credit_asked: false,
        opened: 0,
        established: 0,
        first_rx: 0,
        last_rx: 0,
        reset_by_peer: false,
        violation: false,
    };

    /// Bytes the peer can take now.
    fn credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }
}

/// An initialised virtio-vsock device.
pub struct Vsock {
    t: Transport,
    /// Our CID, from the config space.
    pub cid: u64,
    rx: Ring,
    tx: Ring,
    ev: Ring,
    base: u64,
    nrx: u16,
    ntx: u16,
    tx_free: [u16; TX_SLOTS as usize],
    tx_nfree: usize,
    tx_busy: [bool; TX_SLOTS as usize],
    tx_data_of: [u8; TX_SLOTS as usize],
    data_free: [u8; TX_DATA_BUFS],
    data_nfree: usize,
    tx_pushed: bool,
    conns: [Conn; MAX_CONNS],
    listen: Option<u32>,
    next_port: u32,
    rst_queue: [Hdr; MAX_PENDING_RST],
    rst_len: usize,
    /// RSTs to unknown connections dropped because the queue was full.
    pub rst_dropped: u64,
    /// Malformed buffers the device returned (bad id, short length).
    pub device_errors: u64,
    /// Packets dropped: not for our CID, not a stream, or malformed.
    pub bad_packets: u64,
    /// Transport resets the device announced.
    pub resets: u64,
}

impl Vsock {
    /// Initialises `dev` with the device-workload region at `region`.
    pub fn open(dev: &VirtioMmioDevice, region: u64, khz: u64) -> Result<Self, &'static str> {
        let t = Transport::new(dev.base, khz);
        t.init(F_STREAM)?;
        let cid = t.config64(0);
        let base = region + BUFFERS_OFFSET;
        let rx = t.setup_ring(0, base + RX_RING, 2)?;
        let tx = t.setup_ring(1, base + TX_RING, 2)?;
        let ev = t.setup_ring(2, base + EV_RING, 1)?;
        let nrx = (rx.size() / 2).min(RX_BUFS);
        let ntx = (tx.size() / 2).min(TX_SLOTS);
        let mut v = Self {
            t,
            cid,
            rx,
            tx,
            ev,
            base,
            nrx,
            ntx,
            tx_free: [0; TX_SLOTS as usize],
            tx_nfree: usize::from(ntx),
            tx_busy: [false; TX_SLOTS as usize],
            tx_data_of: [u8::MAX; TX_SLOTS as usize],
            data_free: [0; TX_DATA_BUFS],
            data_nfree: TX_DATA_BUFS,
            tx_pushed: false,
            conns: [Conn::FREE; MAX_CONNS],
            listen: None,
            next_port: FIRST_LOCAL_PORT,
            rst_queue: [Hdr::default(); MAX_PENDING_RST],
            rst_len: 0,
            rst_dropped: 0,
            device_errors: 0,
            bad_packets: 0,
            resets: 0,
        };
        for (i, s) in v.tx_free[..usize::from(ntx)].iter_mut().enumerate() {
            *s = ntx - 1 - i as u16;
        }
        for (i, d) in v.data_free.iter_mut().enumerate() {
            *d = i as u8;
        }
        // SAFETY: the pattern block is PATTERN_PERIOD bytes of this driver's
        // part of the device-workload region; the device has none of it yet.
        fill_pattern(unsafe { core::slice::from_raw_parts_mut((base + PATTERN) as *mut u8, PATTERN_PERIOD) });
        for k in 0..nrx {
            let (hdr, data) = (
                base + RX_HDRS + u64::from(k) * 64,
                base + RX_DATA + u64::from(k) * PKT_MAX,
            );
            v.rx.set_desc(2 * k, hdr, HDR_LEN as u32, DESC_F_WRITE | DESC_F_NEXT, 2 * k + 1);
            v.rx.set_desc(2 * k + 1, data, PKT_MAX as u32, DESC_F_WRITE, 0);
            v.rx.push(2 * k);
        }
        for k in 0..EVENT_BUFS.min(v.ev.size()) {
            v.ev.set_desc(k, base + EV_BUF + u64::from(k) * 8, 8, DESC_F_WRITE, 0);
            v.ev.push(k);
        }
        v.t.driver_ok()?;
        v.rx.kick();
        v.ev.kick();
        Ok(v)
    }

    /// Whether the device reports trouble (NEEDS_RESET or lost DRIVER_OK).
    pub fn broken(&self) -> bool {
        self.t.broken()
    }

    /// Resets the device, best effort.
    pub fn shutdown(&self) {
        let _ = self.t.reset();
    }

    /// Accepts connections to `port` from now on (echo mode).
    pub fn listen(&mut self, port: u32) {
        self.listen = Some(port);
    }

    /// Connection `c`.
    pub fn conn(&self, c: usize) -> &Conn {
        &self.conns[c]
    }

    /// Frees the slot of a [`State::Closed`] connection.
    pub fn release(&mut self, c: usize) {
        if self.conns[c].state == State::Closed {
            self.conns[c] = Conn::FREE;
        }
    }

    fn free_slot(&self) -> Option<usize> {
        self.conns.iter().position(|c| c.state == State::Free)
    }

    /// Starts a connection to host port `port` (REQUEST goes out at the next
    /// [`Vsock::poll`]); returns its slot.
    pub fn connect(&mut self, port: u32, mode: Mode) -> Result<usize, &'static str> {
        let c = self.free_slot().ok_or("no free connection slot")?;
        let local_port = self.next_port;
        self.next_port = self.next_port.wrapping_add(1).max(FIRST_LOCAL_PORT);
        self.conns[c] = Conn {
            state: State::Connecting,
            mode,
            local_port,
            peer_port: port,
            buf_alloc: buf_alloc(mode),
            owe: O_REQUEST,
            ..Conn::FREE
        };
        Ok(c)
    }

    /// Shuts connection `c` down both ways (the peer answers with RST).
    pub fn shutdown_conn(&mut self, c: usize) {
        if self.conns[c].state == State::Established {
            self.conns[c].owe |= O_SHUTDOWN;
            self.conns[c].shut_flags = SHUT_RCV | SHUT_SEND;
        }
    }

    /// Resets connection `c` (it is [`State::Closed`] once the RST is out).
    pub fn close(&mut self, c: usize) {
        match self.conns[c].state {
            State::Connecting | State::Established => self.conns[c].owe |= O_RST,
            State::Free | State::Closed => {}
        }
    }

    /// Queues up to `max` bytes of the pattern stream at stream offset
    /// `offset` on connection `c`, within the peer's credit, the pattern's
    /// period and [`PKT_MAX`]; returns how many (0: no credit or no free
    /// tx descriptor now).
    pub fn send_pattern(&mut self, c: usize, offset: u64, max: u64) -> u64 {
        let conn = self.conns[c];
        if conn.state != State::Established || conn.owe & (O_SHUTDOWN | O_RST) != 0 || max == 0 {
            return 0;
        }
        let credit = u64::from(conn.credit());
        let at = offset % PATTERN_PERIOD as u64;
        let want = max.min(PATTERN_PERIOD as u64 - at).min(PKT_MAX);
        // No silly windows: wait for a fair share of the packet, unless the
        // peer's whole buffer is small.
        let floor = want.min(SWS_MIN).min(u64::from(conn.peer_buf_alloc / 4)).max(1);
        if credit < floor {
            if !conn.credit_asked {
                self.conns[c].owe |= O_CREDIT_REQUEST;
            }
            return 0;
        }
        let n = want.min(credit);
        let Some(slot) = self.take_tx_slot() else { return 0 };
        self.send(slot, c, OP_RW, n as u32, Some(self.base + PATTERN + at), 0);
        n
    }

    /// Handles whatever the device returned, then sends what is owed and
    /// echoes what can be echoed. `sink` gets the data of [`Mode::Sink`]
    /// connections. Returns whether anything happened.
    pub fn poll(&mut self, sink: &mut impl FnMut(usize, &[u8])) -> Result<bool, &'static str> {
        let mut progress = self.reclaim()?;
        while let Some((id, _)) = self.ev.poll() {
            progress = true;
            // The only event is VIRTIO_VSOCK_EVENT_TRANSPORT_RESET: every
            // connection is gone and the CID may have changed. Handled before
            // rx: packets used after it (a restored VM's new connections)
            // must not be dropped with the old ones.
            self.resets += 1;
            for conn in self.conns.iter_mut().filter(|c| c.state != State::Free) {
                conn.state = State::Closed;
                conn.owe = 0;
                conn.reset_by_peer = true;
            }
            self.cid = self.t.config64(0);
            if id < u32::from(EVENT_BUFS.min(self.ev.size())) {
                self.ev.push(id as u16);
                self.ev.kick();
            } else {
                self.device_errors += 1;
            }
        }
        let mut reposted = false;
        while let Some((id, used)) = self.rx.poll() {
            progress = true;
            let k = id / 2;
            if id % 2 != 0 || k >= u32::from(self.nrx) {
                self.device_errors += 1;
                return Err("device returned an unknown rx descriptor id");
            }
            let k = k as u16;
            let hdr = Hdr::read(self.base + RX_HDRS + u64::from(k) * 64);
            let data = self.base + RX_DATA + u64::from(k) * PKT_MAX;
            let len = if hdr.op == OP_RW { hdr.len } else { 0 };
            if u64::from(len) > PKT_MAX || (used as usize) < HDR_LEN + len as usize {
                self.device_errors += 1;
            } else {
                // SAFETY: rx data buffer `k` is PKT_MAX bytes of this
                // driver's region; the device returned it holding `len` bytes.
                let bytes = unsafe { core::slice::from_raw_parts(data as *const u8, len as usize) };
                self.on_packet(&hdr, bytes, sink);
            }
            self.rx.push(2 * k);
            reposted = true;
        }
        if reposted {
            self.rx.kick();
        }
        self.flush();
        if self.tx_pushed {
            self.tx.kick();
            self.tx_pushed = false;
        }
        Ok(progress)
    }

    /// Takes back used tx descriptors; whether there were any.
    fn reclaim(&mut self) -> Result<bool, &'static str> {
        let mut any = false;
        while let Some((id, _)) = self.tx.poll() {
            any = true;
            let slot = id / 2;
            if id % 2 != 0 || slot >= u32::from(self.ntx) || !self.tx_busy[slot as usize] {
                self.device_errors += 1;
                return Err("device returned an unknown or free tx descriptor id");
            }
            let slot = slot as usize;
            self.tx_busy[slot] = false;
            self.tx_free[self.tx_nfree] = slot as u16;
            self.tx_nfree += 1;
            let data = core::mem::replace(&mut self.tx_data_of[slot], u8::MAX);
            if usize::from(data) < TX_DATA_BUFS {
                self.data_free[self.data_nfree] = data;
                self.data_nfree += 1;
            }
        }
        Ok(any)
    }

    /// Whether tx packets are still with the device.
    pub fn tx_in_flight(&self) -> bool {
        self.tx_nfree < usize::from(self.ntx)
    }

    fn take_tx_slot(&mut self) -> Option<u16> {
        if self.tx_nfree == 0 {
            return None;
        }
        self.tx_nfree -= 1;
        let slot = self.tx_free[self.tx_nfree];
        self.tx_busy[usize::from(slot)] = true;
        Some(slot)
    }

    /// Queues a packet of connection `c` in tx slot `slot`: header, and
    /// `len` payload bytes at `data` for RW.
    fn send(&mut self, slot: u16, c: usize, op: u16, len: u32, data: Option<u64>, flags: u32) {
        let conn = &mut self.conns[c];
        if op == OP_RW {
            conn.tx_cnt = conn.tx_cnt.wrapping_add(len);
            conn.tx_bytes += u64::from(len);
        }
        conn.fwd_told = conn.fwd_cnt;
        let hdr = Hdr {
            src_cid: self.cid,
            dst_cid: HOST_CID,
            src_port: conn.local_port,
            dst_port: conn.peer_port,
            len: if data.is_some() { len } else { 0 },
            kind: TYPE_STREAM,
            op,
            flags,
            buf_alloc: conn.buf_alloc,
            fwd_cnt: conn.fwd_cnt,
        };
        self.push_hdr(slot, &hdr, data.map(|a| (a, len)));
    }

    fn push_hdr(&mut self, slot: u16, hdr: &Hdr, data: Option<(u64, u32)>) {
        let addr = self.base + TX_HDRS + u64::from(slot) * 64;
        hdr.write(addr);
        match data {
            Some((buf, len)) => {
                self.tx
                    .set_desc(2 * slot, addr, HDR_LEN as u32, DESC_F_NEXT, 2 * slot + 1);
                self.tx.set_desc(2 * slot + 1, buf, len, 0, 0);
            }
            None => self.tx.set_desc(2 * slot, addr, HDR_LEN as u32, 0, 0),
        }
        self.tx.push(2 * slot);
        self.tx_pushed = true;
    }

    /// The connection a packet from the host belongs to.
    fn lookup(&self, h: &Hdr) -> Option<usize> {
        self.conns.iter().position(|c| {
            matches!(c.state, State::Connecting | State::Established)
                && c.local_port == h.dst_port
                && c.peer_port == h.src_port
        })
    }

    fn owe_rst(&mut self, h: &Hdr) {
        if self.rst_len < MAX_PENDING_RST {
            self.rst_queue[self.rst_len] = *h;
            self.rst_len += 1;
        } else {
            self.rst_dropped += 1;
        }
    }

    fn on_packet(&mut self, h: &Hdr, data: &[u8], sink: &mut impl FnMut(usize, &[u8])) {
        if h.dst_cid != self.cid || h.src_cid != HOST_CID || h.kind != TYPE_STREAM {
            self.bad_packets += 1;
            if h.op != OP_RST {
                self.owe_rst(h);
            }
            return;
        }
        let Some(c) = self.lookup(h) else {
            if h.op == OP_REQUEST && self.listen == Some(h.dst_port) {
                if let Some(c) = self.free_slot() {
                    self.conns[c] = Conn {
                        state: State::Established,
                        mode: Mode::Echo,
                        local_port: h.dst_port,
                        peer_port: h.src_port,
                        peer_buf_alloc: h.buf_alloc,
                        peer_fwd_cnt: h.fwd_cnt,
                        buf_alloc: buf_alloc(Mode::Echo),
                        owe: O_RESPONSE,
                        opened: rdtsc(),
                        ..Conn::FREE
                    };
                    return;
                }
            }
            if h.op != OP_RST {
                self.owe_rst(h);
            }
            return;
        };
        let conn = &mut self.conns[c];
        conn.peer_buf_alloc = h.buf_alloc;
        conn.peer_fwd_cnt = h.fwd_cnt;
        conn.credit_asked = false;
        match h.op {
            OP_RESPONSE if conn.state == State::Connecting => {
                conn.state = State::Established;
                conn.established = rdtsc();
            }
            OP_RST => {
                conn.state = State::Closed;
                conn.owe = 0;
                conn.reset_by_peer = true;
            }
            OP_SHUTDOWN => conn.peer_shut |= h.flags & (SHUT_RCV | SHUT_SEND),
            OP_RW if conn.state == State::Established => {
                let now = rdtsc();
                if conn.first_rx == 0 {
                    conn.first_rx = now;
                }
                conn.last_rx = now;
                conn.rx_bytes += data.len() as u64;
                conn.rx_packets += 1;
                let n = data.len() as u32;
                match conn.mode {
                    Mode::Sink => {
                        conn.fwd_cnt = conn.fwd_cnt.wrapping_add(n);
                        sink(c, data);
                    }
                    Mode::Echo if conn.peer_shut & SHUT_RCV != 0 => {
                        conn.fwd_cnt = conn.fwd_cnt.wrapping_add(n);
                    }
                    Mode::Echo if conn.echo_len + u64::from(n) > ECHO_BUF => {
                        // Past the credit we gave: the peer is broken.
                        conn.violation = true;
                        conn.owe |= O_RST;
                    }
                    Mode::Echo => {
                        let ring = self.base + ECHO + c as u64 * ECHO_BUF;
                        let start = (conn.echo_start + conn.echo_len) % ECHO_BUF;
                        let first = data.len().min((ECHO_BUF - start) as usize);
                        // SAFETY: the echo ring of connection `c` is ECHO_BUF
                        // bytes of this driver's region, used by it alone; both
                        // pieces stay inside it (first <= ECHO_BUF - start, and
                        // the rest fits since echo_len + n <= ECHO_BUF).
                        unsafe {
                            core::ptr::copy_nonoverlapping(data.as_ptr(), (ring + start) as *mut u8, first);
                            core::ptr::copy_nonoverlapping(data[first..].as_ptr(), ring as *mut u8, data.len() - first);
                        }
                        conn.echo_len += u64::from(n);
                    }
                }
            }
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => conn.owe |= O_CREDIT_UPDATE,
            _ => {
                // REQUEST on a live connection, RESPONSE when not connecting,
                // RW before it is up, unknown ops.
                conn.violation = true;
                conn.owe |= O_RST;
            }
        }
    }

    /// Sends what is owed and echoes pending data, while tx slots last.
    fn flush(&mut self) {
        while self.rst_len > 0 {
            let Some(slot) = self.take_tx_slot() else { return };
            self.rst_len -= 1;
            let h = self.rst_queue[self.rst_len];
            let rst = Hdr {
                src_cid: self.cid,
                dst_cid: h.src_cid,
                src_port: h.dst_port,
                dst_port: h.src_port,
                kind: TYPE_STREAM,
                op: OP_RST,
                ..Hdr::default()
            };
            self.push_hdr(slot, &rst, None);
        }
        for c in 0..MAX_CONNS {
            let conn = self.conns[c];
            if matches!(conn.state, State::Free | State::Closed) {
                continue;
            }
            if conn.mode == Mode::Echo && conn.state == State::Established {
                self.pump_echo(c);
            }
            let conn = &mut self.conns[c];
            // Tell the peer about freed buffer space once a quarter is free.
            if conn.state == State::Established && conn.fwd_cnt.wrapping_sub(conn.fwd_told) >= conn.buf_alloc / 4 {
                conn.owe |= O_CREDIT_UPDATE;
            }
            // A peer that sends no more: once everything is echoed, reset
            // at once if it receives no more either (nothing left to deliver),
            // else shut down both ways and let it reset the connection once
            // it has forwarded what it holds (an RST now could drop it).
            let drained = conn.mode == Mode::Sink || conn.echo_len == 0;
            if conn.peer_shut & SHUT_SEND != 0 && (drained || conn.peer_shut & SHUT_RCV != 0) {
                if conn.peer_shut & SHUT_RCV != 0 {
                    conn.owe |= O_RST;
                } else if conn.shut_flags == 0 {
                    conn.owe |= O_SHUTDOWN;
                    conn.shut_flags = SHUT_RCV | SHUT_SEND;
                }
            }
            while conn_owes(&self.conns[c]) {
                let Some(slot) = self.take_tx_slot() else { return };
                let owe = self.conns[c].owe;
                let bit = owe & owe.wrapping_neg();
                self.conns[c].owe &= !bit;
                match bit {
                    O_REQUEST => {
                        self.conns[c].opened = rdtsc();
                        self.send(slot, c, OP_REQUEST, 0, None, 0);
                    }
                    O_RESPONSE => {
                        self.conns[c].established = rdtsc();
                        self.send(slot, c, OP_RESPONSE, 0, None, 0);
                    }
                    O_CREDIT_UPDATE => self.send(slot, c, OP_CREDIT_UPDATE, 0, None, 0),
                    O_CREDIT_REQUEST => {
                        self.conns[c].credit_asked = true;
                        self.conns[c].credit_requests += 1;
                        self.send(slot, c, OP_CREDIT_REQUEST, 0, None, 0);
                    }
                    O_SHUTDOWN => {
                        let flags = self.conns[c].shut_flags;
                        self.send(slot, c, OP_SHUTDOWN, 0, None, flags);
                    }
                    _ => {
                        self.send(slot, c, OP_RST, 0, None, 0);
                        self.conns[c].state = State::Closed;
                        self.conns[c].owe = 0;
                    }
                }
            }
        }
    }

    /// Echoes what connection `c` holds, within the peer's credit.
    fn pump_echo(&mut self, c: usize) {
        loop {
            let conn = self.conns[c];
            if conn.echo_len == 0 || conn.peer_shut & SHUT_RCV != 0 || conn.owe & O_RST != 0 {
                return;
            }
            let credit = u64::from(conn.credit());
            if credit == 0 {
                if !conn.credit_asked {
                    self.conns[c].owe |= O_CREDIT_REQUEST;
                }
                return;
            }
            if self.data_nfree == 0 || self.tx_nfree == 0 {
                return;
            }
            let n = conn.echo_len.min(credit).min(PKT_MAX);
            self.data_nfree -= 1;
            let buf_index = self.data_free[self.data_nfree];
            let buf = self.base + TX_DATA + u64::from(buf_index) * PKT_MAX;
            let ring = self.base + ECHO + c as u64 * ECHO_BUF;
            let first = n.min(ECHO_BUF - conn.echo_start);
            // SAFETY: the tx data buffer was free (the device has none of it)
            // and holds PKT_MAX >= n bytes; the echo ring of `c` holds
            // echo_len >= n bytes from echo_start, wrapping at ECHO_BUF.
            unsafe {
                core::ptr::copy_nonoverlapping((ring + conn.echo_start) as *const u8, buf as *mut u8, first as usize);
                core::ptr::copy_nonoverlapping(ring as *const u8, (buf + first) as *mut u8, (n - first) as usize);
            }
            let conn = &mut self.conns[c];
            conn.echo_start = (conn.echo_start + n) % ECHO_BUF;
            conn.echo_len -= n;
            conn.fwd_cnt = conn.fwd_cnt.wrapping_add(n as u32);
            let Some(slot) = self.take_tx_slot() else { return };
            self.tx_data_of[usize::from(slot)] = buf_index;
            self.send(slot, c, OP_RW, n as u32, Some(buf), 0);
        }
    }
}

fn conn_owes(c: &Conn) -> bool {
    c.owe != 0 && !matches!(c.state, State::Free | State::Closed)
}

fn buf_alloc(mode: Mode) -> u32 {
    match mode {
        Mode::Echo => ECHO_BUF as u32,
        Mode::Sink => SINK_BUF_ALLOC,
    }
}
