//! One vsock stream connection's state machine and credit accounting,
//! without sockets: the muxer ([`super::muxer`]) feeds it guest packets and
//! host events and does the I/O it asks for. Kept pure so that every
//! operation in every state is unit-tested.
//!
//! Credit (virtio 1.2, 5.10.6.3), both ways:
//! * towards the guest we advertise `buf_alloc` = [`CONN_BUF`] and `fwd_cnt`
//!   = guest bytes written to the host socket. Guest bytes the host socket
//!   does not take at once wait in a per-connection buffer; an honest guest
//!   never has more than [`CONN_BUF`] unacknowledged bytes, so a guest that
//!   sends past its credit is reset instead of making the buffer grow;
//! * from the guest we track its `buf_alloc`/`fwd_cnt` (from every packet it
//!   sends) and the bytes we sent it (`rx_cnt`); the host socket is read
//!   only while the guest has credit, so a guest that never reads stalls
//!   only its own connection. A guest `fwd_cnt` ahead of what we sent (a
//!   lie) gives no credit at all, never a negative or huge one.

use std::collections::VecDeque;
use std::io::{ErrorKind, Write};
use std::num::Wrapping;
use std::time::{Duration, Instant};

use super::packet::{Header, Op, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};

/// The receive buffer kvmkit advertises per connection, and the most guest
/// bytes it keeps for a host socket that is slow to read.
pub const CONN_BUF: u32 = 256 * 1024;
/// A CREDIT_UPDATE is sent once the guest's view of our `fwd_cnt` is this
/// far behind (so an honest guest always keeps 3/4 of its credit).
pub const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF / 4;
/// How long the guest has to answer a host-initiated REQUEST, and to reset
/// a connection the host closed, before kvmkit tears it down itself.
pub const GUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The host context id.
pub const HOST_CID: u64 = 2;

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: REQUEST queued or sent to the guest, waiting for RESPONSE.
    LocalInit,
    /// Guest-initiated: the host socket is connected, RESPONSE queued.
    PeerInit,
    /// Data flows.
    Established,
    /// The host socket closed: SHUTDOWN sent to the guest, waiting for its RST.
    LocalClosed,
}

/// What the muxer does after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The connection goes on.
    Keep,
    /// Tear it down and send the guest an RST.
    Reset,
    /// Tear it down without telling the guest (it reset the connection).
    Close,
}

const P_REQUEST: u8 = 1;
const P_RESPONSE: u8 = 2;
const P_SHUTDOWN: u8 = 4;
const P_CREDIT_UPDATE: u8 = 8;
const P_CREDIT_REQUEST: u8 = 16;

/// One connection between host port `local_port` and guest port `peer_port`.
#[derive(Debug)]
pub struct Connection {
    /// The host-side port (CID 2).
    pub local_port: u32,
    /// The guest-side port.
    pub peer_port: u32,
    state: State,
    pending: u8,
    shutdown_flags: u32,
    /// Bytes for the host socket: the handshake's `OK` line, then guest data.
    tx_buf: VecDeque<u8>,
    /// Bytes at the front of `tx_buf` that are the `OK` line, not guest data.
    ok_pending: usize,
    fwd_cnt: Wrapping<u32>,
    last_fwd_sent: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    rx_cnt: Wrapping<u32>,
    peer_shut_rcv: bool,
    peer_shut_send: bool,
    host_eof: bool,
    host_write_shut: bool,
    deadline: Option<Instant>,
}

impl Connection {
    fn new(local_port: u32, peer_port: u32, state: State, pending: u8) -> Self {
        Self {
            local_port,
            peer_port,
            state,
            pending,
            shutdown_flags: 0,
            tx_buf: VecDeque::new(),
            ok_pending: 0,
            fwd_cnt: Wrapping(0),
            last_fwd_sent: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            peer_shut_rcv: false,
            peer_shut_send: false,
            host_eof: false,
            host_write_shut: false,
            deadline: None,
        }
    }

    /// A host-initiated connection: a REQUEST to the guest is due, and the
    /// guest must answer by `now + GUEST_TIMEOUT`.
    pub fn new_local(local_port: u32, peer_port: u32, now: Instant) -> Self {
        let mut c = Self::new(local_port, peer_port, State::LocalInit, P_REQUEST);
        c.deadline = Some(now + GUEST_TIMEOUT);
        c
    }

    /// A guest-initiated connection whose host socket is connected: a
    /// RESPONSE is due. `hdr` is the guest's REQUEST (its credit).
    pub fn new_peer(hdr: &Header) -> Self {
        let mut c = Self::new(hdr.dst_port, hdr.src_port, State::PeerInit, P_RESPONSE);
        c.peer_buf_alloc = hdr.buf_alloc;
        c.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        c
    }

    /// The state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Guest bytes (and the `OK` line) waiting for the host socket.
    pub fn buffered(&self) -> usize {
        self.tx_buf.len()
    }

    /// When the guest's answer is overdue (LocalInit, LocalClosed).
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Whether the guest missed its deadline.
    pub fn expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    /// Credit the guest has left for host -> guest data.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether the host socket should be read now.
    pub fn can_read_host(&self) -> bool {
        self.reads_host() && self.peer_credit() > 0
    }

    /// Whether the host socket is to be read, credit permitting.
    pub fn reads_host(&self) -> bool {
        self.state == State::Established && !self.host_eof && !self.peer_shut_rcv
    }

    /// Whether bytes wait for the host socket.
    pub fn wants_write(&self) -> bool {
        !self.tx_buf.is_empty()
    }

    /// Whether a control packet is due to the guest.
    pub fn has_control(&self) -> bool {
        self.pending != 0
    }

    /// Whether the guest shut its sending side, everything it sent reached
    /// the host socket, and that socket's write side is still open: the
    /// muxer then shuts it (`shutdown(SHUT_WR)`) and calls
    /// [`Self::host_write_shut`].
    pub fn needs_host_write_shutdown(&self) -> bool {
        self.peer_shut_send && self.tx_buf.is_empty() && !self.host_write_shut && self.state == State::Established
    }

    /// The host socket's write side was shut.
    pub fn host_write_shut(&mut self) {
        self.host_write_shut = true;
    }

    /// The next control packet due to the guest, highest priority first
    /// (taking it clears it; taking RESPONSE establishes the connection).
    pub fn next_control(&mut self) -> Option<(Op, u32)> {
        for (bit, op) in [
            (P_REQUEST, Op::Request),
            (P_RESPONSE, Op::Response),
            (P_SHUTDOWN, Op::Shutdown),
            (P_CREDIT_UPDATE, Op::CreditUpdate),
            (P_CREDIT_REQUEST, Op::CreditRequest),
        ] {
            if self.pending & bit != 0 {
                self.pending &= !bit;
                if op == Op::Response {
                    self.state = State::Established;
                }
                let flags = if op == Op::Shutdown { self.shutdown_flags } else { 0 };
                return Some((op, flags));
            }
        }
        None
    }

    /// A header for a packet to the guest, carrying our current credit.
    pub fn header(&mut self, guest_cid: u64, op: Op, flags: u32, len: u32) -> Header {
        self.last_fwd_sent = self.fwd_cnt;
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            type_: TYPE_STREAM,
            op: op.code(),
            flags,
            buf_alloc: CONN_BUF,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// `n` bytes of host data went to the guest. With no credit left, the
    /// guest is asked for an update.
    pub fn sent_data(&mut self, n: u32) {
        self.rx_cnt += Wrapping(n);
        if self.peer_credit() == 0 {
            self.pending |= P_CREDIT_REQUEST;
        }
    }

    /// The host socket reached end of file. `full` when it is closed both
    /// ways (the peer process closed it): the guest is told to shut both
    /// directions and must reset within [`GUEST_TIMEOUT`]; otherwise the
    /// host only stopped sending (SHUTDOWN with SEND) and guest data still
    /// flows to it.
    pub fn host_eof(&mut self, full: bool, now: Instant) -> Verdict {
        match self.state {
            State::Established if full => {
                self.state = State::LocalClosed;
                self.tx_buf.clear();
                self.ok_pending = 0;
                self.pending = P_SHUTDOWN;
                self.shutdown_flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
                self.deadline = Some(now + GUEST_TIMEOUT);
                Verdict::Keep
            }
            State::Established => {
                if !self.host_eof {
                    self.host_eof = true;
                    self.pending |= P_SHUTDOWN;
                    self.shutdown_flags = SHUTDOWN_SEND;
                }
                Verdict::Keep
            }
            State::LocalClosed => Verdict::Keep,
            State::LocalInit | State::PeerInit => Verdict::Reset,
        }
    }

    fn take_credit(&mut self, hdr: &Header) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
    }

    /// A packet from the guest for this connection (its payload in `data`,
    /// already bounds-checked). Guest data goes to `sink` (the host socket),
    /// what it does not take at once is kept. `dropped` counts payload bytes
    /// thrown away (after the host closed).
    pub fn recv<W: Write>(&mut self, hdr: &Header, data: &[u8], sink: &mut W, dropped: &mut u64) -> Verdict {
        let Some(op) = hdr.operation() else {
            return Verdict::Reset;
        };
        if op == Op::Rst {
            return Verdict::Close;
        }
        self.take_credit(hdr);
        match (self.state, op) {
            (State::LocalInit, Op::Response) => {
                self.state = State::Established;
                self.deadline = None;
                let line = format!("OK {}\n", self.local_port);
                self.ok_pending = line.len();
                self.tx_buf.extend(line.as_bytes());
                self.flush(sink)
            }
            (State::LocalInit | State::PeerInit, _) => Verdict::Reset,
            (State::Established, Op::Rw) => self.guest_data(data, sink),
            (State::Established, Op::CreditUpdate) => Verdict::Keep,
            (State::Established, Op::CreditRequest) => {
                self.pending |= P_CREDIT_UPDATE;
                Verdict::Keep
            }
            (State::Established, Op::Shutdown) => {
                self.peer_shut_rcv |= hdr.flags & SHUTDOWN_RCV != 0;
                self.peer_shut_send |= hdr.flags & SHUTDOWN_SEND != 0;
                self.after_write()
            }
            (State::Established, Op::Request | Op::Response) => Verdict::Reset,
            (State::LocalClosed, Op::Rw) => {
                *dropped += data.len() as u64;
                Verdict::Keep
            }
            (State::LocalClosed, Op::CreditUpdate | Op::CreditRequest) => Verdict::Keep,
            (State::LocalClosed, _) => Verdict::Reset,
            (_, Op::Rst) => Verdict::Close,
        }
    }

    fn guest_data<W: Write>(&mut self, data: &[u8], sink: &mut W) -> Verdict {
        if self.peer_shut_send {
            return Verdict::Reset;
        }
        if data.is_empty() {
            return Verdict::Keep;
        }
        let unacked = self.tx_buf.len() - self.ok_pending;
        if unacked + data.len() > CONN_BUF as usize {
            // The guest sent past the credit we gave it.
            return Verdict::Reset;
        }
        let mut done = 0;
        if self.tx_buf.is_empty() {
            match write_some(sink, data) {
                Ok(n) => done = n,
                Err(()) => return Verdict::Reset,
            }
            self.forwarded(done);
        }
        self.tx_buf.extend(&data[done..]);
        self.after_write()
    }

    fn forwarded(&mut self, n: usize) {
        self.fwd_cnt += Wrapping(n as u32);
        if (self.fwd_cnt - self.last_fwd_sent).0 >= CREDIT_UPDATE_THRESHOLD {
            self.pending |= P_CREDIT_UPDATE;
        }
    }

    fn after_write(&mut self) -> Verdict {
        if self.peer_shut_rcv && self.peer_shut_send && self.tx_buf.is_empty() {
            return Verdict::Reset;
        }
        Verdict::Keep
    }

    /// Writes buffered bytes to the host socket (as much as it takes).
    pub fn flush<W: Write>(&mut self, sink: &mut W) -> Verdict {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            let n = match write_some(sink, front) {
                Ok(0) => break,
                Ok(n) => n,
                Err(()) => return Verdict::Reset,
            };
            self.tx_buf.drain(..n);
            let ok = n.min(self.ok_pending);
            self.ok_pending -= ok;
            self.forwarded(n - ok);
        }
        if self.tx_buf.capacity() > CONN_BUF as usize * 2 && self.tx_buf.is_empty() {
            self.tx_buf.shrink_to(0);
        }
        self.after_write()
    }
}

/// Writes what `sink` takes now: Ok(0) when it would block, Err on a
/// broken socket.
fn write_some<W: Write>(sink: &mut W, data: &[u8]) -> Result<usize, ()> {
    let mut done = 0;
    while done < data.len() {
        match sink.write(&data[done..]) {
            Ok(0) => return Err(()),
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(_) => return Err(()),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests;
