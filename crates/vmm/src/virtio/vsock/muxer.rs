//! Firecracker's hybrid vsock bridge: guest stream connections to and from
//! unix sockets on the host.
//!
//! * Host-initiated: a host process connects to the listener at `uds_path`
//!   and writes `CONNECT <port>\n`; the muxer picks a free host port
//!   (>= 2^30), sends the guest a REQUEST to `port`, and on its RESPONSE
//!   writes `OK <hostport>\n` back; bytes then flow. A guest RST (nobody
//!   listens) or no answer within [`GUEST_TIMEOUT`] closes the unix
//!   connection.
//! * Guest-initiated: a REQUEST to CID 2 port P connects to
//!   `<uds_path>_<P>`; nobody listening there gets the guest an RST.
//!
//! Everything is polled through one epoll descriptor (the listener, the
//! unix connections), which the device worker polls beside the queues.
//! Connection sockets are edge-triggered: a socket is read only while the
//! guest has credit and rx buffers for it, and written only while guest
//! bytes wait for it, so a slow reader on either side stalls only its own
//! connection and nothing spins. Bounds: [`MAX_CONNECTIONS`] connections (handshakes included;
//! the listener is not polled while full), [`CONN_BUF`] buffered bytes per
//! connection, [`MAX_PENDING_RSTS`] RSTs waiting for rx buffers (guest tx
//! is not read while that many wait), a 32-byte `CONNECT` line.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::connection::{Connection, Verdict, HOST_CID};
use super::packet::{Header, Op, HDR_LEN, MAX_PKT_DATA, TYPE_STREAM};
use super::unix::{port_path, Listener, Stream};
use super::VsockCounters;

pub use super::connection::{CONN_BUF, GUEST_TIMEOUT};

/// Most connections at once (host- and guest-initiated, handshakes included).
pub const MAX_CONNECTIONS: usize = 1024;
/// Most RSTs waiting for rx buffers before guest tx is left unread.
pub const MAX_PENDING_RSTS: usize = 256;
/// Longest `CONNECT <port>\n` line.
pub const MAX_CONNECT_LINE: usize = 32;
/// First host port handed to host-initiated connections (Firecracker's choice).
pub const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Epoll events read per call.
const EVENTS_PER_ROUND: usize = 64;
/// Connections accepted per call.
const ACCEPTS_PER_ROUND: usize = 32;

const LISTENER_TOKEN: u64 = 0;
/// What a connection's socket is polled for, edge-triggered: an edge sets
/// `read_ready` (cleared when a read would block) or flushes waiting bytes
/// (kept only after a write would block, so the next edge comes). A socket
/// the guest has no credit or buffers for is simply not read: no event
/// repeats, nothing spins, and no epoll_ctl call per wake-up.
const CONN_EVENTS: EventSet = EventSet::IN.union(EventSet::OUT).union(EventSet::EDGE_TRIGGERED);

struct Conn {
    c: Connection,
    stream: Stream,
    queued: bool,
    read_ready: bool,
    hup: bool,
}

struct Handshake {
    stream: Stream,
    line: Vec<u8>,
}

/// The connection table and the unix sockets behind it.
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    epoll: Arc<Epoll>,
    listener: Arc<Listener>,
    listener_armed: bool,
    max_connections: usize,
    conns: HashMap<u64, Conn>,
    by_key: HashMap<(u32, u32), u64>,
    handshakes: HashMap<u64, Handshake>,
    next_token: u64,
    next_local_port: u32,
    rxq: VecDeque<u64>,
    rsts: VecDeque<Header>,
    counters: Arc<VsockCounters>,
    events: Vec<EpollEvent>,
}

fn add(c: &std::sync::atomic::AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Muxer {
    /// A muxer for guest `guest_cid` whose host sockets live at `uds_path`;
    /// `listener` is registered in `epoll` with token 0 ([`register_listener`]).
    /// Nothing is polled until [`Self::start`].
    pub fn new(
        guest_cid: u64,
        uds_path: &Path,
        epoll: Arc<Epoll>,
        listener: Arc<Listener>,
        counters: Arc<VsockCounters>,
    ) -> Self {
        let m = Self {
            guest_cid,
            uds_path: uds_path.to_owned(),
            epoll,
            listener,
            listener_armed: false,
            max_connections: MAX_CONNECTIONS,
            conns: HashMap::new(),
            by_key: HashMap::new(),
            handshakes: HashMap::new(),
            next_token: 1,
            next_local_port: FIRST_LOCAL_PORT,
            rxq: VecDeque::new(),
            rsts: VecDeque::new(),
            counters,
            events: vec![EpollEvent::default(); EVENTS_PER_ROUND],
        };
        // Armed by [`Self::start`] on the worker thread: activation runs on
        // a vCPU thread, whose seccomp filter has no epoll calls.
        m
    }

    /// Starts polling the listener (on the worker thread).
    pub fn start(&mut self) {
        if self.connection_count() < self.max_connections {
            self.arm_listener(true);
        }
    }

    /// Lowers the connection limit (tests).
    pub fn set_max_connections(&mut self, n: usize) {
        self.max_connections = n.min(MAX_CONNECTIONS);
    }

    /// The descriptor to poll: readable when any socket has an event.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Connections open now (handshakes included).
    pub fn connection_count(&self) -> usize {
        self.conns.len() + self.handshakes.len()
    }

    /// Whether packets wait for the guest's rx buffers.
    pub fn has_rx(&self) -> bool {
        !self.rsts.is_empty() || !self.rxq.is_empty()
    }

    /// Whether guest tx must wait (too many RSTs not yet delivered).
    pub fn tx_blocked(&self) -> bool {
        self.rsts.len() >= MAX_PENDING_RSTS
    }

    /// The earliest deadline of a connection waiting for the guest.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.conns.values().filter_map(|c| c.c.deadline()).min()
    }

    fn arm_listener(&mut self, on: bool) {
        if self.listener_armed == on {
            return;
        }
        let ev = if on { EventSet::IN } else { EventSet::empty() };
        let r = self.epoll.ctl(
            ControlOperation::Modify,
            self.listener.as_raw_fd(),
            EpollEvent::new(ev, LISTENER_TOKEN),
        );
        if r.is_ok() {
            self.listener_armed = on;
        }
    }

    fn token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    /// Handles what epoll reports (new host connections, readable and
    /// writable sockets, hang-ups). Returns true when more may be waiting.
    pub fn handle_events(&mut self) -> bool {
        let n = match self.epoll.wait(0, &mut self.events) {
            Ok(n) => n,
            Err(_) => return false,
        };
        let events: Vec<(u64, u32)> = self.events[..n].iter().map(|e| (e.data(), e.events())).collect();
        for (token, ev) in events {
            if token == LISTENER_TOKEN {
                self.accept_some();
            } else if self.handshakes.contains_key(&token) {
                self.read_handshake(token);
            } else if self.conns.contains_key(&token) {
                self.socket_event(token, ev);
            }
        }
        n == EVENTS_PER_ROUND
    }

    fn accept_some(&mut self) {
        for _ in 0..ACCEPTS_PER_ROUND {
            if self.connection_count() >= self.max_connections {
                self.arm_listener(false);
                return;
            }
            match self.listener.accept() {
                Ok(Some(stream)) => {
                    let token = self.token();
                    let ev = EpollEvent::new(EventSet::IN, token);
                    if self.epoll.ctl(ControlOperation::Add, stream.as_raw_fd(), ev).is_ok() {
                        self.handshakes.insert(
                            token,
                            Handshake {
                                stream,
                                line: Vec::new(),
                            },
                        );
                        // The line is usually there already.
                        self.read_handshake(token);
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!("vsock: accept on {}: {e}", self.listener.path().display());
                    return;
                }
            }
        }
    }

    /// Reads the `CONNECT <port>\n` line a byte at a time (bytes after it
    /// belong to the guest).
    fn read_handshake(&mut self, token: u64) {
        let Some(h) = self.handshakes.get_mut(&token) else {
            return;
        };
        let port = loop {
            let mut b = [0u8; 1];
            match h.stream.recv(&mut b) {
                Ok(1) if b[0] == b'\n' => break parse_connect(&h.line),
                Ok(1) if h.line.len() < MAX_CONNECT_LINE => h.line.push(b[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                _ => break None,
            }
        };
        let Some(h) = self.handshakes.remove(&token) else {
            return;
        };
        let Some(peer_port) = port else {
            // A bad line or a client that left: closing it is the answer.
            return;
        };
        let local_port = self.free_local_port(peer_port);
        let c = Connection::new_local(local_port, peer_port, Instant::now());
        let ev = EpollEvent::new(CONN_EVENTS, token);
        if self
            .epoll
            .ctl(ControlOperation::Modify, h.stream.as_raw_fd(), ev)
            .is_err()
        {
            return;
        }
        self.by_key.insert((local_port, peer_port), token);
        self.conns.insert(
            token,
            Conn {
                c,
                stream: h.stream,
                queued: false,
                read_ready: false,
                hup: false,
            },
        );
        add(&self.counters.connections, 1);
        self.sync(token);
    }

    /// The host port the next host-initiated connection tries first.
    pub fn next_local_port(&self) -> u32 {
        self.next_local_port
    }

    /// Where host ports go on from (a snapshot's: a restored guest must not
    /// see a new connection on the ports of one it had before the transport
    /// reset; Firecracker's `local_port_last`). Below 2^30 starts at 2^30.
    pub fn set_next_local_port(&mut self, port: u32) {
        self.next_local_port = port.max(FIRST_LOCAL_PORT);
    }

    fn free_local_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = if p == u32::MAX { FIRST_LOCAL_PORT } else { p + 1 };
            if !self.by_key.contains_key(&(p, peer_port)) {
                return p;
            }
        }
    }

    fn socket_event(&mut self, token: u64, ev: u32) {
        let now = Instant::now();
        let Some(conn) = self.conns.get_mut(&token) else { return };
        let mut verdict = Verdict::Keep;
        if ev & (libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
            // The peer process closed its end: stop polling (a hang-up is
            // reported whatever the interest), read what is left, then end.
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, conn.stream.as_raw_fd(), EpollEvent::default());
            conn.hup = true;
            if conn.c.reads_host() {
                // Read what is left; end of file then closes the connection.
                conn.read_ready = true;
            } else {
                verdict = conn.c.host_eof(true, now);
            }
        } else {
            if ev & libc::EPOLLIN as u32 != 0 {
                conn.read_ready = true;
            }
            if ev & libc::EPOLLOUT as u32 != 0 {
                verdict = conn.c.flush(&mut &conn.stream);
            }
        }
        self.apply(token, verdict);
    }

    /// Acts on a connection's verdict, then brings its polling and rx
    /// queueing up to date.
    fn apply(&mut self, token: u64, verdict: Verdict) {
        match verdict {
            Verdict::Keep => self.sync(token),
            Verdict::Reset => self.remove(token, true),
            Verdict::Close => self.remove(token, false),
        }
    }

    fn remove(&mut self, token: u64, rst: bool) {
        let Some(mut conn) = self.conns.remove(&token) else {
            return;
        };
        self.by_key.remove(&(conn.c.local_port, conn.c.peer_port));
        if rst {
            let h = conn.c.header(self.guest_cid, Op::Rst, 0, 0);
            self.push_rst(h);
        }
        // Dropping the stream closes it (and takes it out of epoll).
        drop(conn);
        if self.connection_count() < self.max_connections {
            self.arm_listener(true);
        }
    }

    fn push_rst(&mut self, h: Header) {
        add(&self.counters.resets, 1);
        self.rsts.push_back(h);
    }

    fn sync(&mut self, token: u64) {
        let Some(conn) = self.conns.get_mut(&token) else { return };
        if conn.c.needs_host_write_shutdown() {
            conn.stream.shutdown_write();
            conn.c.host_write_shut();
        }
        let work = conn.c.has_control() || (conn.read_ready && conn.c.can_read_host());
        if work && !conn.queued {
            conn.queued = true;
            self.rxq.push_back(token);
        }
    }

    /// A packet from the guest (its payload, bounds-checked, in `data`).
    pub fn on_guest_packet(&mut self, hdr: &Header, data: &[u8]) {
        add(&self.counters.tx_packets, 1);
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            // Not from this guest, or not for the host: nobody to answer.
            add(&self.counters.dropped, 1);
            return;
        }
        let op = hdr.operation();
        if hdr.type_ != TYPE_STREAM {
            add(&self.counters.dropped, 1);
            if op != Some(Op::Rst) {
                self.reply_rst(hdr);
            }
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        if let Some(&token) = self.by_key.get(&key) {
            let Some(conn) = self.conns.get_mut(&token) else { return };
            let mut dropped = 0;
            let verdict = conn.c.recv(hdr, data, &mut &conn.stream, &mut dropped);
            if op == Some(Op::Rw) {
                add(&self.counters.tx_bytes, data.len() as u64 - dropped);
            }
            add(&self.counters.dropped, u64::from(dropped > 0));
            self.apply(token, verdict);
            return;
        }
        match op {
            Some(Op::Request) => self.connect_to_host(hdr),
            Some(Op::Rst) => {}
            _ => {
                add(&self.counters.dropped, 1);
                self.reply_rst(hdr);
            }
        }
    }

    fn reply_rst(&mut self, hdr: &Header) {
        self.push_rst(Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: hdr.dst_port,
            dst_port: hdr.src_port,
            len: 0,
            type_: TYPE_STREAM,
            op: Op::Rst.code(),
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        });
    }

    fn connect_to_host(&mut self, hdr: &Header) {
        if self.connection_count() >= self.max_connections {
            return self.reply_rst(hdr);
        }
        let path = port_path(&self.uds_path, hdr.dst_port);
        let Ok(stream) = Stream::connect(&path) else {
            return self.reply_rst(hdr);
        };
        let token = self.token();
        if self
            .epoll
            .ctl(
                ControlOperation::Add,
                stream.as_raw_fd(),
                EpollEvent::new(CONN_EVENTS, token),
            )
            .is_err()
        {
            return self.reply_rst(hdr);
        }
        let c = Connection::new_peer(hdr);
        self.by_key.insert((c.local_port, c.peer_port), token);
        self.conns.insert(
            token,
            Conn {
                c,
                stream,
                queued: false,
                read_ready: false,
                hup: false,
            },
        );
        add(&self.counters.connections, 1);
        self.sync(token);
    }

    /// Resets every connection whose guest missed its deadline.
    pub fn expire(&mut self, now: Instant) {
        if self.next_deadline().is_none_or(|d| d > now) {
            return;
        }
        let late: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.c.expired(now))
            .map(|(&t, _)| t)
            .collect();
        for t in late {
            self.remove(t, true);
        }
    }

    /// The next packet for the guest, for an rx chain with `room` writable
    /// bytes (at least [`HDR_LEN`]): its header, its payload in
    /// `data[..n]`. `None` when nothing is due.
    pub fn next_rx(&mut self, room: usize, data: &mut [u8]) -> Option<(Header, usize)> {
        if let Some(h) = self.rsts.pop_front() {
            return Some((h, 0));
        }
        let room = room.checked_sub(HDR_LEN)?;
        // Each queued connection gets one look (one whose data does not fit
        // `room` goes to the back).
        for _ in 0..self.rxq.len() {
            let Some(&token) = self.rxq.front() else { break };
            if let Some(p) = self.rx_from(token, room, data) {
                self.requeue(token);
                return Some(p);
            }
            self.rxq.pop_front();
            if let Some(conn) = self.conns.get_mut(&token) {
                conn.queued = false;
                self.sync(token);
            }
            // A reset connection left an RST.
            if let Some(h) = self.rsts.pop_front() {
                return Some((h, 0));
            }
        }
        None
    }

    /// Moves `token` to the back of the rx queue if it has more to send,
    /// else takes it out.
    fn requeue(&mut self, token: u64) {
        if self.rxq.front() == Some(&token) {
            self.rxq.pop_front();
        }
        let Some(conn) = self.conns.get_mut(&token) else { return };
        conn.queued = false;
        self.sync(token);
    }

    fn rx_from(&mut self, token: u64, room: usize, data: &mut [u8]) -> Option<(Header, usize)> {
        let now = Instant::now();
        let cid = self.guest_cid;
        loop {
            let conn = self.conns.get_mut(&token)?;
            if let Some((op, flags)) = conn.c.next_control() {
                return Some((conn.c.header(cid, op, flags, 0), 0));
            }
            if !(conn.read_ready && conn.c.can_read_host()) {
                return None;
            }
            let max = room
                .min(conn.c.peer_credit() as usize)
                .min(MAX_PKT_DATA as usize)
                .min(data.len());
            if max == 0 {
                return None;
            }
            match conn.stream.recv(&mut data[..max]) {
                Ok(0) => {
                    conn.read_ready = false;
                    let v = conn.c.host_eof(conn.hup, now);
                    if v != Verdict::Keep {
                        self.apply(token, v);
                        return None;
                    }
                    // Loop: the SHUTDOWN it queued goes out now.
                }
                Ok(n) => {
                    conn.c.sent_data(n as u32);
                    add(&self.counters.rx_bytes, n as u64);
                    return Some((conn.c.header(cid, Op::Rw, 0, n as u32), n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.read_ready = false;
                    return None;
                }
                Err(_) => {
                    self.apply(token, Verdict::Reset);
                    return None;
                }
            }
        }
    }
}

/// Registers `listener` in `epoll` (token 0, not yet polled for input).
pub fn register_listener(epoll: &Epoll, listener: &Listener) -> io::Result<()> {
    epoll.ctl(
        ControlOperation::Add,
        listener.as_raw_fd(),
        EpollEvent::new(EventSet::empty(), LISTENER_TOKEN),
    )
}

/// The port of a `CONNECT <port>` line (without its newline).
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(line).ok()?;
    let s = s.strip_suffix('\r').unwrap_or(s);
    let port = s.strip_prefix("CONNECT ")?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

#[cfg(test)]
mod tests;
