//! The muxer with real unix sockets on the host side and a fake guest
//! (packets handed in and taken out directly).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use super::*;
use crate::virtio::vsock::packet::{SHUTDOWN_RCV, SHUTDOWN_SEND};
use crate::virtio::vsock::{unix, Vsock};
use std::sync::atomic::AtomicU64;

const CID: u64 = 3;

struct T {
    _dev: Vsock,
    m: Muxer,
    path: PathBuf,
    counters: Arc<VsockCounters>,
}

fn rig(tag: &str) -> T {
    let path = std::env::temp_dir().join(format!("kvmkit-vsock-{tag}-{}.sock", std::process::id()));
    let dev = Vsock::new(CID, &path).expect("vsock");
    let mut m = dev.muxer();
    m.start();
    let counters = dev.vsock_counters();
    T {
        _dev: dev,
        m,
        path,
        counters,
    }
}

fn guest(op: Op, src_port: u32, dst_port: u32, len: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len,
        type_: TYPE_STREAM,
        op: op.code(),
        flags: 0,
        buf_alloc: 256 * 1024,
        fwd_cnt: 0,
    }
}

impl T {
    /// The next packet for the guest, polling the sockets (bounded retries).
    fn wait_rx(&mut self) -> (Header, Vec<u8>) {
        self.try_rx(2000).expect("a packet for the guest")
    }

    fn try_rx(&mut self, tries: usize) -> Option<(Header, Vec<u8>)> {
        let mut buf = vec![0u8; MAX_PKT_DATA as usize];
        for _ in 0..tries {
            self.m.handle_events();
            if let Some((h, n)) = self.m.next_rx(4096, &mut buf) {
                return Some((h, buf[..n].to_vec()));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        None
    }

    fn send(&mut self, h: Header, data: &[u8]) {
        let mut h = h;
        h.len = data.len() as u32;
        self.m.on_guest_packet(&h, data);
    }

    /// A host client connected through `CONNECT port`, its REQUEST answered.
    fn host_connect(&mut self, port: u32) -> (UnixStream, u32) {
        let mut c = UnixStream::connect(&self.path).expect("connect");
        c.write_all(format!("CONNECT {port}\n").as_bytes()).expect("write");
        let (h, _) = self.wait_rx();
        assert_eq!(h.op, Op::Request.code());
        assert_eq!((h.src_cid, h.dst_cid, h.dst_port), (HOST_CID, CID, port));
        assert!(h.src_port >= FIRST_LOCAL_PORT);
        self.send(guest(Op::Response, port, h.src_port, 0), &[]);
        let mut line = [0u8; 64];
        let n = read_line(&mut c, &mut line);
        assert_eq!(&line[..n], format!("OK {}\n", h.src_port).as_bytes());
        (c, h.src_port)
    }
}

fn read_line(c: &mut UnixStream, buf: &mut [u8]) -> usize {
    c.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut n = 0;
    while n == 0 || buf[n - 1] != b'\n' {
        let k = c.read(&mut buf[n..n + 1]).expect("read");
        if k == 0 {
            break;
        }
        n += k;
    }
    n
}

fn eof(c: &mut UnixStream) -> bool {
    c.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut b = [0u8; 16];
    matches!(c.read(&mut b), Ok(0) | Err(_))
}

#[test]
fn host_initiated_connection_carries_data_both_ways() {
    let mut t = rig("host-init");
    let (mut c, local) = t.host_connect(5000);
    c.write_all(b"hello guest").expect("write");
    let (h, d) = t.wait_rx();
    assert_eq!((h.op, h.src_port, h.dst_port), (Op::Rw.code(), local, 5000));
    assert_eq!(d, b"hello guest");
    t.send(guest(Op::Rw, 5000, local, 0), b"hello host");
    let mut got = [0u8; 10];
    c.read_exact(&mut got).expect("read");
    assert_eq!(&got, b"hello host");
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    assert_eq!(g(&t.counters.connections), 1);
    assert_eq!(g(&t.counters.rx_bytes), 11);
    assert_eq!(g(&t.counters.tx_bytes), 10);
    // The guest resets: the host client sees the connection end.
    t.send(guest(Op::Rst, 5000, local, 0), &[]);
    assert!(eof(&mut c));
    assert_eq!(t.m.connection_count(), 0);
}

#[test]
fn a_guest_rst_or_no_answer_closes_the_host_client() {
    let mut t = rig("refused");
    let mut c = UnixStream::connect(&t.path).expect("connect");
    c.write_all(b"CONNECT 4000\n").expect("write");
    let (h, _) = t.wait_rx();
    t.send(guest(Op::Rst, 4000, h.src_port, 0), &[]);
    assert!(eof(&mut c), "nobody listens: closed, not hung");
    // No answer at all: the deadline resets it.
    let mut c = UnixStream::connect(&t.path).expect("connect");
    c.write_all(b"CONNECT 4001\n").expect("write");
    let (h, _) = t.wait_rx();
    let deadline = t.m.next_deadline().expect("deadline");
    t.m.expire(deadline - Duration::from_millis(1));
    assert_eq!(t.m.connection_count(), 1);
    t.m.expire(deadline);
    assert!(eof(&mut c));
    let (rst, _) = t.wait_rx();
    assert_eq!((rst.op, rst.src_port, rst.dst_port), (Op::Rst.code(), h.src_port, 4001));
}

#[test]
fn bad_connect_lines_are_closed() {
    let mut t = rig("bad-line");
    for line in [
        &b"CONNECT\n"[..],
        b"CONNECT x\n",
        b"connect 5\n",
        b"CONNECT 99999999999\n",
        &[b'A'; 40][..],
    ] {
        let mut c = UnixStream::connect(&t.path).expect("connect");
        c.write_all(line).expect("write");
        for _ in 0..200 {
            t.m.handle_events();
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(eof(&mut c), "{:?}", String::from_utf8_lossy(line));
        assert!(!t.m.has_rx());
    }
    assert_eq!(parse_connect(b"CONNECT 5000"), Some(5000));
    assert_eq!(parse_connect(b"CONNECT 5000\r"), Some(5000));
    assert_eq!(parse_connect(b"CONNECT +5"), None);
}

#[test]
fn guest_initiated_connections_reach_uds_path_port() {
    let mut t = rig("guest-init");
    let lpath = unix::port_path(&t.path, 6000);
    let _ = std::fs::remove_file(&lpath);
    let l = UnixListener::bind(&lpath).expect("bind");
    t.send(guest(Op::Request, 1234, 6000, 0), &[]);
    let (h, _) = t.wait_rx();
    assert_eq!((h.op, h.src_port, h.dst_port), (Op::Response.code(), 6000, 1234));
    let (mut s, _) = l.accept().expect("accept");
    t.send(guest(Op::Rw, 1234, 6000, 0), b"ping");
    let mut b = [0u8; 4];
    s.read_exact(&mut b).expect("read");
    assert_eq!(&b, b"ping");
    s.write_all(b"pong").expect("write");
    let (h, d) = t.wait_rx();
    assert_eq!((h.op, d.as_slice()), (Op::Rw.code(), &b"pong"[..]));
    // Nobody listens on 6001: RST.
    t.send(guest(Op::Request, 1235, 6001, 0), &[]);
    let (h, _) = t.wait_rx();
    assert_eq!((h.op, h.dst_port), (Op::Rst.code(), 1235));
    let _ = std::fs::remove_file(&lpath);
}

#[test]
fn host_data_waits_for_guest_credit() {
    let mut t = rig("credit");
    let mut c = UnixStream::connect(&t.path).expect("connect");
    c.write_all(b"CONNECT 7000\n").expect("write");
    let (h, _) = t.wait_rx();
    let local = h.src_port;
    let mut resp = guest(Op::Response, 7000, local, 0);
    resp.buf_alloc = 100;
    t.send(resp, &[]);
    let mut line = [0u8; 64];
    read_line(&mut c, &mut line);
    c.write_all(&[9u8; 1000]).expect("write");
    let (h, d) = t.wait_rx();
    assert_eq!((h.op, d.len()), (Op::Rw.code(), 100));
    let (h, _) = t.wait_rx();
    assert_eq!(h.op, Op::CreditRequest.code(), "out of credit: ask");
    assert!(t.try_rx(50).is_none(), "nothing more without credit");
    let mut up = guest(Op::CreditUpdate, 7000, local, 0);
    up.buf_alloc = 100;
    up.fwd_cnt = 100;
    t.send(up, &[]);
    let (h, d) = t.wait_rx();
    assert_eq!((h.op, d.len()), (Op::Rw.code(), 100));
}

#[test]
fn host_half_close_and_full_close() {
    let mut t = rig("close");
    let (c, local) = t.host_connect(5000);
    c.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let (h, _) = t.wait_rx();
    assert_eq!((h.op, h.flags), (Op::Shutdown.code(), SHUTDOWN_SEND));
    // The guest can still answer.
    t.send(guest(Op::Rw, 5000, local, 0), b"late");
    let mut b = [0u8; 4];
    (&c).read_exact(&mut b).expect("read");
    assert_eq!(&b, b"late");
    drop(c);
    let (h, _) = t.wait_rx();
    assert_eq!((h.op, h.flags), (Op::Shutdown.code(), SHUTDOWN_RCV | SHUTDOWN_SEND));
    t.send(guest(Op::Rst, 5000, local, 0), &[]);
    assert_eq!(t.m.connection_count(), 0);
    assert!(!t.m.has_rx());
}

#[test]
fn guest_shutdown_send_half_closes_the_host_socket() {
    let mut t = rig("gshut");
    let (mut c, local) = t.host_connect(5000);
    let mut s = guest(Op::Shutdown, 5000, local, 0);
    s.flags = SHUTDOWN_SEND;
    t.send(s, &[]);
    assert!(eof(&mut c));
    c.write_all(b"still").expect("the host can still send");
    let (h, d) = t.wait_rx();
    assert_eq!((h.op, d.as_slice()), (Op::Rw.code(), &b"still"[..]));
}

#[test]
fn hostile_packets_are_refused_and_bounded() {
    let mut t = rig("hostile");
    // Wrong source CID or destination: dropped without a reply.
    let mut h = guest(Op::Request, 1, 2, 0);
    h.src_cid = 4;
    t.send(h, &[]);
    let mut h = guest(Op::Request, 1, 2, 0);
    h.dst_cid = 7;
    t.send(h, &[]);
    assert!(!t.m.has_rx());
    // Packets for no connection, or of another type: RST.
    t.send(guest(Op::Rw, 1, 2, 0), b"x");
    let mut h = guest(Op::Request, 1, 2, 0);
    h.type_ = 2;
    t.send(h, &[]);
    let mut h = guest(Op::Rw, 1, 2, 0);
    h.op = 77;
    t.send(h, &[]);
    // An RST for no connection is ignored.
    t.send(guest(Op::Rst, 1, 2, 0), &[]);
    let mut n = 0;
    while let Some((h, _)) = t.try_rx(1) {
        assert_eq!(h.op, Op::Rst.code());
        n += 1;
    }
    assert_eq!(n, 3);
    // A flood of REQUESTs nobody listens to: RSTs queue up to the bound,
    // then guest tx is left unread until they are delivered.
    for p in 0..(MAX_PENDING_RSTS as u32) {
        assert!(!t.m.tx_blocked());
        t.send(guest(Op::Request, p, 40_000, 0), &[]);
    }
    assert!(t.m.tx_blocked());
    t.try_rx(1);
    assert!(!t.m.tx_blocked());
}

#[test]
fn the_connection_limit_holds_and_frees() {
    let mut t = rig("limit");
    t.m.set_max_connections(2);
    let (_a, _) = t.host_connect(1);
    let (_b, lb) = t.host_connect(2);
    // A third client waits in the backlog, unanswered.
    let mut c = UnixStream::connect(&t.path).expect("connect");
    c.write_all(b"CONNECT 3\n").expect("write");
    assert!(t.try_rx(50).is_none());
    // Guest-initiated requests beyond the limit are reset.
    t.send(guest(Op::Request, 9, 9, 0), &[]);
    let (h, _) = t.wait_rx();
    assert_eq!(h.op, Op::Rst.code());
    // One closes: the waiting client gets its turn.
    t.send(guest(Op::Rst, 2, lb, 0), &[]);
    let (h, _) = t.wait_rx();
    assert_eq!((h.op, h.dst_port), (Op::Request.code(), 3));
}

#[test]
fn the_socket_file_is_refused_when_not_a_socket_and_removed_at_the_end() {
    let path = std::env::temp_dir().join(format!("kvmkit-vsock-file-{}", std::process::id()));
    std::fs::write(&path, b"not a socket").expect("write");
    let e = Vsock::new(CID, &path).err().expect("refused").to_string();
    assert!(e.contains("not a unix socket"), "{e}");
    std::fs::remove_file(&path).expect("rm");
    // A stale socket (nobody listening) is replaced; a live one refused.
    drop(UnixListener::bind(&path).expect("bind"));
    let dev = Vsock::new(CID, &path).expect("stale socket replaced");
    let e = Vsock::new(CID, &path).err().expect("in use").to_string();
    assert!(e.contains("in use"), "{e}");
    drop(dev);
    assert!(!path.exists(), "removed with the device");
    assert!(matches!(
        Vsock::new(2, &path),
        Err(crate::virtio::vsock::VsockError::Cid(2))
    ));
}

#[test]
fn a_host_that_does_not_read_stalls_only_its_own_connection() {
    let mut t = rig("slow");
    let (slow, ls) = t.host_connect(5000);
    let (mut fast, lf) = t.host_connect(5001);
    // The guest sends the slow client its whole credit: kept, bounded.
    let chunk = vec![1u8; MAX_PKT_DATA as usize];
    for _ in 0..(CONN_BUF / MAX_PKT_DATA) {
        t.send(guest(Op::Rw, 5000, ls, 0), &chunk);
    }
    assert_eq!(t.m.connection_count(), 2);
    // The other connection is unaffected.
    t.send(guest(Op::Rw, 5001, lf, 0), b"fast");
    let mut b = [0u8; 4];
    fast.read_exact(&mut b).expect("read");
    assert_eq!(&b, b"fast");
    // Past its credit (what the socket holds plus 256 KiB kept by kvmkit),
    // only the slow connection is reset.
    let mut sent = 0;
    while t.m.connection_count() == 2 {
        t.send(guest(Op::Rw, 5000, ls, 0), &chunk);
        sent += 1;
        assert!(sent < 200, "12 MiB sent past the credit and never reset");
    }
    let (h, _) = t.wait_rx();
    assert_eq!((h.op, h.src_port), (Op::Rst.code(), ls));
    t.send(guest(Op::Rw, 5001, lf, 0), b"more");
    fast.read_exact(&mut b).expect("read");
    assert_eq!(&b, b"more");
    drop(slow);
}
