//! The device through its queues: descriptor chains laid out in guest
//! memory (well-formed and hostile) with real unix sockets on the host
//! side, and the worker thread end to end.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::Ordering;
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::handler::VsockHandler;
use super::packet::{Header, Op, HDR_LEN, TYPE_STREAM};
use super::*;
use crate::memory::GuestMemoryMmap;
use crate::virtio::test_rig::{TestQueue, F_WRITE};
use crate::virtio::{Interrupt, WorkerHandler, VIRTIO_MMIO_INT_VRING};

const CID: u64 = 3;
const QSIZE: u16 = 16;
const DATA: u64 = 0x10000;

struct Rig {
    mem: GuestMemoryMmap,
    rx: TestQueue,
    tx: TestQueue,
    ev: TestQueue,
    dev: Vsock,
    path: PathBuf,
    next_buf: u64,
}

fn hdr(op: Op, src_port: u32, dst_port: u32, len: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: 2,
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

impl Rig {
    fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!("kvmkit-vsockq-{tag}-{}.sock", std::process::id()));
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).expect("mem");
        Self {
            mem,
            rx: TestQueue::new(0x1000, QSIZE),
            tx: TestQueue::new(0x2000, QSIZE),
            ev: TestQueue::new(0x3000, QSIZE),
            dev: Vsock::new(CID, &path).expect("vsock"),
            path,
            next_buf: DATA,
        }
    }

    fn handler(&self) -> VsockHandler {
        let queues = vec![self.rx.queue(), self.tx.queue(), self.ev.queue()];
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let mut muxer = self.dev.muxer();
        muxer.start();
        VsockHandler::new(
            self.mem.clone(),
            queues,
            Arc::new(Interrupt::new(irq)),
            muxer,
            self.dev.vsock_counters(),
        )
        .expect("handler")
    }

    fn buf(&mut self, len: u64) -> u64 {
        let a = self.next_buf;
        self.next_buf += len.max(1).next_multiple_of(0x100);
        a
    }

    /// A tx packet: header in one descriptor, payload in another.
    fn tx_packet(&mut self, h: Header, data: &[u8]) {
        let a = self.buf(HDR_LEN as u64);
        self.mem.write_slice(&h.to_bytes(), GuestAddress(a)).expect("w");
        if data.is_empty() {
            self.tx.push(&self.mem, &[(a, HDR_LEN as u32, 0)]);
        } else {
            let b = self.buf(data.len() as u64);
            self.mem.write_slice(data, GuestAddress(b)).expect("w");
            self.tx
                .push(&self.mem, &[(a, HDR_LEN as u32, 0), (b, data.len() as u32, 0)]);
        }
    }

    /// Gives the device an rx buffer of `len` bytes; returns its address.
    fn rx_buffer(&mut self, len: u32) -> u64 {
        let a = self.buf(u64::from(len));
        self.rx.push(&self.mem, &[(a, len, F_WRITE)]);
        a
    }

    fn rx_packet(&self, at: u64, used_len: u32) -> (Header, Vec<u8>) {
        let mut b = [0u8; HDR_LEN];
        self.mem.read_slice(&mut b, GuestAddress(at)).expect("r");
        let h = Header::from_bytes(&b);
        let mut d = vec![0u8; used_len as usize - HDR_LEN];
        self.mem
            .read_slice(&mut d, GuestAddress(at + HDR_LEN as u64))
            .expect("r");
        (h, d)
    }
}

#[test]
fn device_identity_and_config_space() {
    let r = Rig::new("id");
    assert_eq!(r.dev.device_type(), 19);
    assert_eq!(r.dev.queue_max_sizes().len(), 3);
    assert_eq!(r.dev.features(), VIRTIO_F_VERSION_1);
    let mut cfg = [0u8; 8];
    r.dev.read_config(0, &mut cfg);
    assert_eq!(u64::from_le_bytes(cfg), CID);
    let mut hi = [0u8; 4];
    r.dev.read_config(4, &mut hi);
    assert_eq!(hi, [0; 4]);
}

#[test]
fn guest_connect_and_data_through_the_queues() {
    let mut r = Rig::new("q");
    let lpath = unix::port_path(&r.path, 5000);
    let _ = std::fs::remove_file(&lpath);
    let l = UnixListener::bind(&lpath).expect("bind");
    let mut h = r.handler();
    r.tx_packet(hdr(Op::Request, 77, 5000, 0), &[]);
    let rx0 = r.rx_buffer(4096);
    assert!(!h.process_tx());
    assert!(!h.process_rx());
    assert_eq!(r.rx.used_idx(&r.mem), 1);
    let (_, len) = r.rx.used_entry(&r.mem, 0);
    let (p, _) = r.rx_packet(rx0, len);
    assert_eq!(
        (p.op, p.src_port, p.dst_port, p.dst_cid),
        (Op::Response.code(), 5000, 77, CID)
    );
    r.tx_packet(hdr(Op::Rw, 77, 5000, 5), b"hello");
    assert!(!h.process_tx());
    assert_eq!(r.tx.used_idx(&r.mem), 2, "every tx chain completed");
    let (mut s, _) = l.accept().expect("accept");
    let mut b = [0u8; 5];
    s.read_exact(&mut b).expect("read");
    assert_eq!(&b, b"hello");
    // Host -> guest: an rx buffer split header/payload across two descriptors.
    s.write_all(b"world").expect("write");
    let a = r.buf(HDR_LEN as u64);
    let d = r.buf(100);
    r.rx.push(&r.mem, &[(a, HDR_LEN as u32, F_WRITE), (d, 100, F_WRITE)]);
    let mut got = false;
    for _ in 0..2000 {
        h.work(&[false, false, false], &[libc::POLLIN]);
        if r.rx.used_idx(&r.mem) == 2 {
            got = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(got, "the host's bytes reached the guest");
    let (_, len) = r.rx.used_entry(&r.mem, 1);
    assert_eq!(len as usize, HDR_LEN + 5);
    let mut payload = [0u8; 5];
    r.mem.read_slice(&mut payload, GuestAddress(d)).expect("r");
    assert_eq!(&payload, b"world");
    let c = r.dev.counters();
    assert!(c.contains(&("connections", 1)), "{c:?}");
    assert!(c.contains(&("tx_bytes", 5)), "{c:?}");
    assert!(c.contains(&("rx_bytes", 5)), "{c:?}");
    let _ = std::fs::remove_file(&lpath);
}

#[test]
fn hostile_chains_are_completed_and_counted() {
    let mut r = Rig::new("hostile");
    let mut h = r.handler();
    // Shorter than a header.
    let a = r.buf(64);
    r.tx.push(&r.mem, &[(a, 10, 0)]);
    // An absurd len, and a len over what the chain holds.
    let mut big = hdr(Op::Rw, 1, 2, u32::MAX);
    r.tx_packet(big, &[]);
    big.len = 100;
    r.tx_packet(big, &[1, 2, 3]);
    // Outside guest memory.
    r.tx.push(&r.mem, &[(0xffff_0000_0000, 64, 0)]);
    // A device-writable descriptor only: no readable bytes.
    let a = r.buf(64);
    r.tx.push(&r.mem, &[(a, 64, F_WRITE)]);
    h.process_tx();
    assert_eq!(r.tx.used_idx(&r.mem), 5, "every chain completed");
    let c = r.dev.counters();
    let get = |n: &str| c.iter().find(|(k, _)| *k == n).map(|(_, v)| *v).expect("counter");
    assert_eq!(get("dropped") + get("bad_chains"), 5, "{c:?}");
    assert_eq!(get("connections"), 0);
    // An rx buffer too small for a header is completed empty, and counted.
    r.tx_packet(hdr(Op::Rw, 1, 2, 0), b"x");
    h.process_tx();
    r.rx_buffer(10);
    let rx1 = r.rx_buffer(4096);
    h.process_rx();
    assert_eq!(r.rx.used_idx(&r.mem), 2);
    assert_eq!(r.rx.used_entry(&r.mem, 0).1, 0);
    let (p, _) = r.rx_packet(rx1, r.rx.used_entry(&r.mem, 1).1);
    assert_eq!(p.op, Op::Rst.code());
}

#[test]
fn a_bogus_avail_index_marks_the_device_broken() {
    let mut r = Rig::new("bogus");
    let mut h = r.handler();
    r.tx_packet(hdr(Op::Rw, 1, 2, 0), &[]);
    let avail = r.tx.avail();
    r.mem.write_obj(1000u16, GuestAddress(avail + 2)).expect("idx");
    assert!(!h.process_tx());
    assert!(h.interrupt().is_broken());
}

#[test]
fn the_worker_serves_a_host_client_end_to_end() {
    let mut r = Rig::new("worker");
    let events: Vec<EventFd> = (0..3)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"))
        .collect();
    let kicks: Vec<EventFd> = events.iter().map(|e| e.try_clone().expect("clone")).collect();
    let h = r.handler();
    for _ in 0..4 {
        r.rx_buffer(4096);
    }
    let w = crate::virtio::Worker::spawn("vsock-test".into(), events, h).expect("spawn");
    let mut c = UnixStream::connect(&r.path).expect("connect");
    c.write_all(b"CONNECT 5000\n").expect("write");
    // The fake guest waits for the REQUEST in its rx ring, then answers.
    let mut req = None;
    for _ in 0..5000 {
        if r.rx.used_idx(&r.mem) >= 1 {
            req = Some(r.rx_packet(DATA, r.rx.used_entry(&r.mem, 0).1).0);
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let req = req.expect("REQUEST delivered by the worker");
    assert_eq!((req.op, req.dst_port), (Op::Request.code(), 5000));
    w.pause().expect("pause");
    r.tx_packet(hdr(Op::Response, 5000, req.src_port, 0), &[]);
    w.resume().expect("resume");
    kicks[TX_QUEUE].write(1).expect("kick");
    c.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut line = [0u8; 32];
    let n = c.read(&mut line).expect("OK line");
    assert_eq!(&line[..n], format!("OK {}\n", req.src_port).as_bytes());
    let back = w.stop();
    assert!(back.is_some(), "stop hands the handler back");
    drop(back);
    let mut b = [0u8; 1];
    assert_eq!(c.read(&mut b).expect("eof"), 0, "connections close with the handler");
    assert_eq!(r.dev.vsock_counters().connections.load(Ordering::Relaxed), 1);
}

fn epoll_ready(h: &mut VsockHandler) -> bool {
    let mut p = libc::pollfd {
        fd: h.muxer().epoll_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    unsafe { libc::poll(&mut p, 1, 0) > 0 }
}

#[test]
fn a_guest_that_never_reads_rx_leaves_the_worker_idle() {
    let mut r = Rig::new("noread");
    let mut h = r.handler();
    let mut c = UnixStream::connect(&r.path).expect("connect");
    c.write_all(b"CONNECT 5000\n").expect("write");
    let rx0 = r.rx_buffer(4096);
    let mut n = 0;
    while r.rx.used_idx(&r.mem) == 0 {
        h.work(&[false, false, false], &[libc::POLLIN]);
        n += 1;
        assert!(n < 5000, "no REQUEST");
        std::thread::sleep(Duration::from_millis(1));
    }
    let (req, _) = r.rx_packet(rx0, r.rx.used_entry(&r.mem, 0).1);
    r.tx_packet(hdr(Op::Response, 5000, req.src_port, 0), &[]);
    h.work(&[false, true, false], &[0]);
    let mut line = [0u8; 32];
    c.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let _ = c.read(&mut line).expect("OK line");
    // The host floods; the guest gives no rx buffers.
    c.set_nonblocking(true).expect("nonblocking");
    let _ = c.write(&vec![7u8; 1 << 20]);
    let mut more = true;
    for _ in 0..100 {
        more = h.work(&[false, false, false], &[libc::POLLIN]);
        if !more && !epoll_ready(&mut h) {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(!more, "the worker has nothing to do without rx buffers");
    assert!(!epoll_ready(&mut h), "and nothing to wake it: no spin");
    // A buffer arrives: the data flows again.
    let rx1 = r.rx_buffer(4096);
    h.work(&[true, false, false], &[0]);
    let (p, d) = r.rx_packet(rx1, r.rx.used_entry(&r.mem, 1).1);
    assert_eq!((p.op, d.len()), (Op::Rw.code(), 4096 - HDR_LEN));
}

#[test]
fn a_snapshot_resets_the_transport() {
    let mut r = Rig::new("reset");
    for _ in 0..4 {
        r.rx_buffer(4096);
    }
    let events: Vec<EventFd> = (0..3)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"))
        .collect();
    let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd")));
    let activation = Activation {
        memory: r.mem.clone(),
        queues: vec![r.rx.queue(), r.tx.queue(), r.ev.queue()],
        queue_events: events,
        interrupt: irq.clone(),
    };
    r.dev.activate(VIRTIO_F_VERSION_1, activation).expect("activate");
    // A host client in its handshake: the worker sends the guest a REQUEST.
    let mut c = UnixStream::connect(&r.path).expect("connect");
    c.write_all(b"CONNECT 5000\n").expect("write");
    for _ in 0..5000 {
        if r.rx.used_idx(&r.mem) >= 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(r.rx.used_idx(&r.mem), 1, "REQUEST delivered");
    r.dev.pause().expect("pause");
    assert_eq!(r.dev.next_local_port(), Ok(muxer::FIRST_LOCAL_PORT + 1));
    // No event buffer: nothing to tell the driver, an error; the
    // connections are closed all the same.
    let e = r.dev.reset_transport().unwrap_err();
    assert!(e.contains("no buffer"), "{e}");
    c.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut b = [0u8; 8];
    assert_eq!(c.read(&mut b).expect("eof"), 0, "the host client is closed");
    // With a buffer: VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (id 0) and an interrupt.
    let ev = r.buf(8);
    r.mem.write_slice(&[0xff; 8], GuestAddress(ev)).expect("w");
    r.ev.push(&r.mem, &[(ev, 8, F_WRITE)]);
    irq.ack(VIRTIO_MMIO_INT_VRING);
    r.dev.reset_transport().expect("reset");
    assert_eq!(r.ev.used_idx(&r.mem), 1);
    assert_eq!(r.ev.used_entry(&r.mem, 0).1, 4, "4 bytes written");
    let mut got = [0u8; 8];
    r.mem.read_slice(&mut got, GuestAddress(ev)).expect("r");
    assert_eq!(got, [0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    assert_ne!(irq.status() & VIRTIO_MMIO_INT_VRING, 0, "the driver is interrupted");
    // The queues' state comes from the worker: the event queue moved on.
    let q = r.dev.queue_states().expect("inspect").expect("a worker");
    assert_eq!(q.len(), 3);
    assert_eq!((q[0].next_used, q[2].next_avail, q[2].next_used), (1, 1, 1));
    // The listener stays: a new client reaches the new muxer once resumed.
    r.dev.resume().expect("resume");
    let mut c = UnixStream::connect(&r.path).expect("connect again");
    c.write_all(b"CONNECT 5000\n").expect("write");
    for _ in 0..5000 {
        if r.rx.used_idx(&r.mem) >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(r.rx.used_idx(&r.mem), 2, "a second REQUEST after the reset");
    let (req, _) = r.rx_packet(DATA + 0x1000, r.rx.used_entry(&r.mem, 1).1);
    assert_eq!(
        req.src_port,
        muxer::FIRST_LOCAL_PORT + 1,
        "a new host port: the guest may see the REQUEST before the event"
    );
    r.dev.reset();
}
