//! Every guest operation in every state, credit accounting both ways, and
//! the bounds on what a guest can make kvmkit buffer.

use std::io;

use super::*;

/// A host socket stand-in that takes at most `room` more bytes.
#[derive(Default)]
struct Sink {
    got: Vec<u8>,
    room: usize,
    broken: bool,
}

impl Sink {
    fn open(room: usize) -> Self {
        Self {
            room,
            ..Default::default()
        }
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.broken {
            return Err(io::Error::from(ErrorKind::BrokenPipe));
        }
        if self.room == 0 {
            return Err(io::Error::from(ErrorKind::WouldBlock));
        }
        let n = buf.len().min(self.room);
        self.room -= n;
        self.got.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn pkt(op: Op, len: u32) -> Header {
    Header {
        src_cid: 3,
        dst_cid: HOST_CID,
        src_port: 1000,
        dst_port: 5000,
        len,
        type_: TYPE_STREAM,
        op: op.code(),
        flags: 0,
        buf_alloc: 64 * 1024,
        fwd_cnt: 0,
    }
}

fn in_state(state: State) -> Connection {
    let now = Instant::now();
    match state {
        State::LocalInit => Connection::new_local(5000, 1000, now),
        State::PeerInit => Connection::new_peer(&pkt(Op::Request, 0)),
        State::Established => {
            let mut c = Connection::new_peer(&pkt(Op::Request, 0));
            assert_eq!(c.next_control(), Some((Op::Response, 0)));
            c
        }
        State::LocalClosed => {
            let mut c = in_state(State::Established);
            assert_eq!(c.host_eof(true, now), Verdict::Keep);
            c
        }
    }
}

const STATES: [State; 4] = [
    State::LocalInit,
    State::PeerInit,
    State::Established,
    State::LocalClosed,
];

#[test]
fn every_op_in_every_state() {
    use Verdict::{Close, Keep, Reset};
    // (state, op) -> verdict and the state after.
    let table: &[(State, Op, Verdict, State)] = &[
        (State::LocalInit, Op::Request, Reset, State::LocalInit),
        (State::LocalInit, Op::Response, Keep, State::Established),
        (State::LocalInit, Op::Rst, Close, State::LocalInit),
        (State::LocalInit, Op::Shutdown, Reset, State::LocalInit),
        (State::LocalInit, Op::Rw, Reset, State::LocalInit),
        (State::LocalInit, Op::CreditUpdate, Reset, State::LocalInit),
        (State::LocalInit, Op::CreditRequest, Reset, State::LocalInit),
        (State::PeerInit, Op::Request, Reset, State::PeerInit),
        (State::PeerInit, Op::Response, Reset, State::PeerInit),
        (State::PeerInit, Op::Rst, Close, State::PeerInit),
        (State::PeerInit, Op::Shutdown, Reset, State::PeerInit),
        (State::PeerInit, Op::Rw, Reset, State::PeerInit),
        (State::PeerInit, Op::CreditUpdate, Reset, State::PeerInit),
        (State::PeerInit, Op::CreditRequest, Reset, State::PeerInit),
        (State::Established, Op::Request, Reset, State::Established),
        (State::Established, Op::Response, Reset, State::Established),
        (State::Established, Op::Rst, Close, State::Established),
        (State::Established, Op::Shutdown, Keep, State::Established),
        (State::Established, Op::Rw, Keep, State::Established),
        (State::Established, Op::CreditUpdate, Keep, State::Established),
        (State::Established, Op::CreditRequest, Keep, State::Established),
        (State::LocalClosed, Op::Request, Reset, State::LocalClosed),
        (State::LocalClosed, Op::Response, Reset, State::LocalClosed),
        (State::LocalClosed, Op::Rst, Close, State::LocalClosed),
        (State::LocalClosed, Op::Shutdown, Reset, State::LocalClosed),
        (State::LocalClosed, Op::Rw, Keep, State::LocalClosed),
        (State::LocalClosed, Op::CreditUpdate, Keep, State::LocalClosed),
        (State::LocalClosed, Op::CreditRequest, Keep, State::LocalClosed),
    ];
    assert_eq!(table.len(), STATES.len() * Op::ALL.len());
    for &(state, op, verdict, after) in table {
        let mut c = in_state(state);
        let mut sink = Sink::open(1 << 20);
        let mut dropped = 0;
        let data = [7u8; 10];
        let len = if op == Op::Rw { 10 } else { 0 };
        let got = c.recv(&pkt(op, len), &data[..len as usize], &mut sink, &mut dropped);
        assert_eq!(got, verdict, "{state:?} {op:?}");
        assert_eq!(c.state(), after, "{state:?} {op:?}");
        match (state, op) {
            (State::Established, Op::Rw) => assert_eq!(sink.got, data),
            (State::LocalClosed, Op::Rw) => {
                assert!(sink.got.is_empty());
                assert_eq!(dropped, 10);
            }
            (State::LocalInit, Op::Response) => assert_eq!(sink.got, b"OK 5000\n"),
            (State::Established, Op::CreditRequest) => {
                assert_eq!(c.next_control(), Some((Op::CreditUpdate, 0)))
            }
            _ => assert!(sink.got.is_empty(), "{state:?} {op:?}"),
        }
    }
}

#[test]
fn unknown_op_codes_reset_in_every_state() {
    for state in STATES {
        for code in [0u16, 8, 0xffff] {
            let mut c = in_state(state);
            let mut h = pkt(Op::Rw, 0);
            h.op = code;
            let v = c.recv(&h, &[], &mut Sink::open(0), &mut 0);
            assert_eq!(v, Verdict::Reset, "{state:?} op {code}");
        }
    }
}

#[test]
fn control_packets_come_out_once_in_priority_order() {
    let mut c = Connection::new_local(7, 8, Instant::now());
    assert_eq!(c.next_control(), Some((Op::Request, 0)));
    assert_eq!(c.next_control(), None);
    let mut p = in_state(State::PeerInit);
    assert_eq!(p.next_control(), Some((Op::Response, 0)));
    assert_eq!(p.state(), State::Established);
    assert!(!p.has_control());
    let h = p.header(3, Op::Rw, 0, 5);
    assert_eq!(
        (h.src_cid, h.dst_cid, h.src_port, h.dst_port),
        (HOST_CID, 3, 5000, 1000)
    );
    assert_eq!((h.buf_alloc, h.len, h.op), (CONN_BUF, 5, Op::Rw.code()));
}

#[test]
fn guest_data_the_host_does_not_take_is_buffered_and_flushed_with_credit_updates() {
    let mut c = in_state(State::Established);
    let mut sink = Sink::open(100);
    let data = vec![1u8; 60 * 1024];
    assert_eq!(c.recv(&pkt(Op::Rw, 0), &data, &mut sink, &mut 0), Verdict::Keep);
    assert_eq!(sink.got.len(), 100);
    assert_eq!(c.buffered(), data.len() - 100);
    assert!(c.wants_write());
    assert!(!c.has_control(), "no credit update before the threshold");
    sink.room = usize::MAX;
    assert_eq!(c.flush(&mut sink), Verdict::Keep);
    assert_eq!(sink.got.len(), data.len());
    assert!(!c.wants_write());
    // 60 KiB forwarded is under the threshold; 4 more KiB reach it.
    c.recv(&pkt(Op::Rw, 0), &[2u8; 4096], &mut sink, &mut 0);
    assert_eq!(c.next_control(), Some((Op::CreditUpdate, 0)));
    let h = c.header(3, Op::CreditUpdate, 0, 0);
    assert_eq!(h.fwd_cnt, 64 * 1024);
    // Once told, no further update is due.
    c.recv(&pkt(Op::Rw, 0), &[2u8; 10], &mut sink, &mut 0);
    assert!(!c.has_control());
}

#[test]
fn a_guest_that_sends_past_its_credit_is_reset_not_buffered() {
    let mut c = in_state(State::Established);
    let mut sink = Sink::open(0);
    let chunk = vec![0u8; 64 * 1024];
    for _ in 0..4 {
        assert_eq!(c.recv(&pkt(Op::Rw, 0), &chunk, &mut sink, &mut 0), Verdict::Keep);
    }
    assert_eq!(c.buffered(), CONN_BUF as usize);
    assert_eq!(c.recv(&pkt(Op::Rw, 0), &[0u8; 1], &mut sink, &mut 0), Verdict::Reset);
    assert_eq!(c.buffered(), CONN_BUF as usize, "nothing more kept");
}

#[test]
fn the_ok_line_is_not_counted_as_guest_data() {
    let mut c = Connection::new_local(9000, 5000, Instant::now());
    c.next_control();
    let mut sink = Sink::open(3);
    assert_eq!(c.recv(&pkt(Op::Response, 0), &[], &mut sink, &mut 0), Verdict::Keep);
    assert_eq!(sink.got, b"OK ");
    // The guest may still send a full buffer of data behind the line.
    let chunk = vec![5u8; 64 * 1024];
    for _ in 0..4 {
        assert_eq!(c.recv(&pkt(Op::Rw, 0), &chunk, &mut sink, &mut 0), Verdict::Keep);
    }
    sink.room = usize::MAX;
    c.flush(&mut sink);
    assert_eq!(&sink.got[..8], b"OK 9000\n");
    assert_eq!(sink.got.len(), 8 + CONN_BUF as usize);
    assert_eq!(c.header(3, Op::CreditUpdate, 0, 0).fwd_cnt, CONN_BUF);
}

#[test]
fn host_credit_follows_the_guest_and_ignores_lies() {
    let mut c = in_state(State::Established);
    assert_eq!(c.peer_credit(), 64 * 1024);
    assert!(c.can_read_host());
    c.sent_data(64 * 1024);
    assert_eq!(c.peer_credit(), 0);
    assert!(!c.can_read_host());
    assert_eq!(c.next_control(), Some((Op::CreditRequest, 0)));
    let mut h = pkt(Op::CreditUpdate, 0);
    h.fwd_cnt = 1000;
    c.recv(&h, &[], &mut Sink::open(0), &mut 0);
    assert_eq!(c.peer_credit(), 1000);
    // A fwd_cnt ahead of what was sent: no credit, not a huge one.
    h.fwd_cnt = 1 << 30;
    c.recv(&h, &[], &mut Sink::open(0), &mut 0);
    assert_eq!(c.peer_credit(), 0);
    // A buf_alloc of u32::MAX is only what the guest says it can take.
    h.fwd_cnt = 64 * 1024;
    h.buf_alloc = u32::MAX;
    c.recv(&h, &[], &mut Sink::open(0), &mut 0);
    assert_eq!(c.peer_credit(), u32::MAX);
    // Counters wrap.
    c.sent_data(u32::MAX);
    h.fwd_cnt = (64u32 * 1024).wrapping_add(u32::MAX);
    c.recv(&h, &[], &mut Sink::open(0), &mut 0);
    assert_eq!(c.peer_credit(), u32::MAX);
}

#[test]
fn shutdown_flags_and_host_eof() {
    let mut sink = Sink::open(usize::MAX);
    // Guest stops sending: the host socket's write side is shut once flushed.
    let mut c = in_state(State::Established);
    let mut s = pkt(Op::Shutdown, 0);
    s.flags = SHUTDOWN_SEND;
    assert_eq!(c.recv(&s, &[], &mut sink, &mut 0), Verdict::Keep);
    assert!(c.needs_host_write_shutdown());
    c.host_write_shut();
    assert!(!c.needs_host_write_shutdown());
    // Sending after SEND shutdown is a protocol error.
    assert_eq!(c.recv(&pkt(Op::Rw, 0), &[1], &mut sink, &mut 0), Verdict::Reset);
    // Guest stops receiving: the host socket is not read any more.
    let mut c = in_state(State::Established);
    s.flags = SHUTDOWN_RCV;
    c.recv(&s, &[], &mut sink, &mut 0);
    assert!(!c.can_read_host());
    // Both: reset once everything reached the host.
    let mut c = in_state(State::Established);
    let mut slow = Sink::open(0);
    c.recv(&pkt(Op::Rw, 0), &[1, 2, 3], &mut slow, &mut 0);
    s.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    assert_eq!(c.recv(&s, &[], &mut slow, &mut 0), Verdict::Keep, "data still buffered");
    slow.room = 3;
    assert_eq!(c.flush(&mut slow), Verdict::Reset);
    assert_eq!(slow.got, [1, 2, 3]);
    // Host half-close: SHUTDOWN(SEND) once, data still flows to the host.
    let mut c = in_state(State::Established);
    assert_eq!(c.host_eof(false, Instant::now()), Verdict::Keep);
    assert_eq!(c.next_control(), Some((Op::Shutdown, SHUTDOWN_SEND)));
    assert_eq!(c.host_eof(false, Instant::now()), Verdict::Keep);
    assert!(!c.has_control());
    assert!(!c.can_read_host());
    assert_eq!(c.recv(&pkt(Op::Rw, 0), &[9], &mut sink, &mut 0), Verdict::Keep);
    // Host full close: SHUTDOWN(both), then the guest has GUEST_TIMEOUT to reset.
    let now = Instant::now();
    let mut c = in_state(State::Established);
    c.host_eof(true, now);
    assert_eq!(c.state(), State::LocalClosed);
    assert_eq!(c.next_control(), Some((Op::Shutdown, SHUTDOWN_RCV | SHUTDOWN_SEND)));
    assert!(!c.expired(now));
    assert!(c.expired(now + GUEST_TIMEOUT));
    // A host that closes before the handshake ends resets the connection.
    assert_eq!(in_state(State::LocalInit).host_eof(true, now), Verdict::Reset);
    assert_eq!(in_state(State::PeerInit).host_eof(false, now), Verdict::Reset);
}

#[test]
fn a_broken_host_socket_resets() {
    let mut c = in_state(State::Established);
    let mut sink = Sink {
        broken: true,
        ..Default::default()
    };
    assert_eq!(c.recv(&pkt(Op::Rw, 0), &[1], &mut sink, &mut 0), Verdict::Reset);
}

#[test]
fn a_guest_that_never_answers_a_request_times_out() {
    let now = Instant::now();
    let c = Connection::new_local(1, 2, now);
    assert_eq!(c.deadline(), Some(now + GUEST_TIMEOUT));
    assert!(c.expired(now + GUEST_TIMEOUT));
    assert!(in_state(State::Established).deadline().is_none());
}
