//! Drives the virtio-net rx and tx paths with descriptor chains laid out in
//! guest memory (well-formed and hostile), against a datagram socket pair
//! standing in for the tap, and against a real tap inside a private network
//! namespace when the host allows it. (`--net` set-up, addresses and
//! bridges are tested in `kvmkit-hostnet`.)

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};

use super::handler::{FrameIo, NetHandler, RxState, MAX_BUFFER_BYTES, RX_BACKLOG_FRAMES, TX_BURST};
use super::*;
use crate::memory::GuestMemoryMmap;
use crate::net::tap::VNET_HDR_LEN;
use crate::virtio::Interrupt;

const QSIZE: u16 = 16;
const RX_BASE: u64 = 0x1000;
const TX_BASE: u64 = 0x4000;
const DATA: u64 = 0x10000;

/// Runs once, when a read finds no frame.
type Hook = Box<dyn FnOnce() + Send>;

/// A datagram socket as the "tap": one frame per message.
struct Fake {
    sock: UnixDatagram,
    on_empty: std::sync::Mutex<Option<Hook>>,
}

impl Fake {
    fn new(sock: UnixDatagram) -> Self {
        Self {
            sock,
            on_empty: std::sync::Mutex::new(None),
        }
    }
}

impl FrameIo for Fake {
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        let r = self.sock.recv(buf);
        if r.as_ref().is_err_and(|e| e.kind() == io::ErrorKind::WouldBlock) {
            if let Some(hook) = self.on_empty.lock().expect("hook").take() {
                hook();
            }
        }
        r
    }

    fn write_frame(&self, frame: &[u8]) -> io::Result<usize> {
        self.sock.send(frame)
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
        "fake".into()
    }
}

use crate::virtio::test_rig::{TestQueue, F_WRITE};

struct Rig {
    mem: GuestMemoryMmap,
    h: NetHandler,
    fake: Arc<Fake>,
    host: UnixDatagram,
    rx: TestQueue,
    tx: TestQueue,
}

impl Rig {
    /// A rig whose handler reads through an rx ring (`ring`), or `None`
    /// (the test says it is skipped) where the host has no io_uring.
    fn new_with_ring(acked: u64, ring: bool) -> Option<Self> {
        let mut r = Self::new(acked);
        if ring {
            let ring = match crate::net::rx_ring::RxRing::new(r.h.backend_fd(), handler::READ_ROOM) {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("skipped: io_uring is not available here ({e})");
                    return None;
                }
            };
            // The handler moves through with_rx_ring (a stand-in holds its place).
            let h = std::mem::replace(&mut r.h, Self::new(acked).h);
            r.h = h.with_rx_ring(Some(Arc::new(std::sync::Mutex::new(ring))));
        }
        Some(r)
    }

    fn new(acked: u64) -> Self {
        let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).expect("mem");
        let (a, b) = UnixDatagram::pair().expect("socketpair");
        a.set_nonblocking(true).expect("nonblocking");
        b.set_nonblocking(true).expect("nonblocking");
        // Room for 64 KiB frames in the socket buffers.
        for s in [&a, &b] {
            let size: libc::c_int = 1 << 20;
            // SAFETY: SO_SNDBUF/SO_RCVBUF read one int.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_SNDBUF,
                    (&size as *const libc::c_int).cast(),
                    4,
                );
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUF,
                    (&size as *const libc::c_int).cast(),
                    4,
                );
            }
        }
        let rx = TestQueue::new(RX_BASE, QSIZE);
        let tx = TestQueue::new(TX_BASE, QSIZE);
        let irq = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let fake = Arc::new(Fake::new(a));
        let h = NetHandler::new(
            mem.clone(),
            rx.queue(),
            tx.queue(),
            Arc::new(Interrupt::new(irq)),
            fake.clone(),
            Arc::new(NetCounters::default()),
            VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC | acked,
        );
        Self {
            mem,
            h,
            fake,
            host: b,
            rx,
            tx,
        }
    }

    fn push(&mut self, tx: bool, descs: &[(u64, u32, u16)]) -> u16 {
        let q = if tx { &mut self.tx } else { &mut self.rx };
        q.push(&self.mem, descs)
    }

    fn used(&self, tx: bool) -> Vec<(u32, u32)> {
        let q = if tx { &self.tx } else { &self.rx };
        (0..q.used_idx(&self.mem)).map(|i| q.used_entry(&self.mem, i)).collect()
    }

    fn counters(&self) -> [u64; 7] {
        let c = self.h.counters();
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
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend((0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    f
}

#[test]
fn tx_frames_reach_the_backend_with_their_header() {
    let mut r = Rig::new(0);
    let f = frame(100, 1);
    r.mem.write_slice(&f[..20], GuestAddress(DATA)).expect("w");
    r.mem.write_slice(&f[20..], GuestAddress(DATA + 0x1000)).expect("w");
    r.push(true, &[(DATA, 20, 0), (DATA + 0x1000, (f.len() - 20) as u32, 0)]);
    assert!(!r.h.process_tx());
    let mut buf = vec![0u8; 4096];
    let n = r.host.recv(&mut buf).expect("frame on the host side");
    assert_eq!(&buf[..n], &f[..]);
    assert_eq!(r.used(true), vec![(0, 0)]);
    assert_eq!(r.counters()[3..5], [1, 100]);
}

#[test]
fn hostile_tx_chains_are_dropped_and_counted() {
    let mut r = Rig::new(0);
    // Device-writable descriptor on tx, too short for a header, outside
    // guest memory, oversized, and a GSO frame without HOST_TSO4.
    r.push(true, &[(DATA, 64, F_WRITE)]);
    r.push(true, &[(DATA, 4, 0)]);
    r.push(true, &[(0xffff_0000_0000, 64, 0)]);
    r.push(true, &[(DATA, 40000, 0), (DATA, 40000, 0)]);
    r.push(true, &[(DATA, u32::MAX, 0)]);
    let mut gso = frame(60, 0);
    gso[1] = 1;
    r.mem.write_slice(&gso, GuestAddress(DATA + 0x2_0000)).expect("w");
    r.push(true, &[(DATA + 0x2_0000, gso.len() as u32, 0)]);
    r.h.process_tx();
    let mut buf = [0u8; 64];
    assert!(r.host.recv(&mut buf).is_err(), "nothing reaches the backend");
    assert_eq!(r.used(true).len(), 6, "every chain is completed");
    let c = r.counters();
    assert_eq!(c[3], 0);
    assert_eq!(c[5] + c[6], 6, "{c:?}");
}

#[test]
fn a_bogus_tx_avail_index_marks_the_device_broken_and_is_not_retried() {
    let mut r = Rig::new(0);
    let f = frame(60, 1);
    r.mem.write_slice(&f, GuestAddress(DATA)).expect("w");
    r.push(true, &[(DATA, f.len() as u32, 0)]);
    let avail = r.tx.avail();
    r.mem.write_obj(1000u16, GuestAddress(avail + 2)).expect("idx");
    assert!(!r.h.process_tx(), "no work left");
    assert!(r.h.interrupt().is_broken());
    assert_ne!(r.h.interrupt().status() & crate::virtio::VIRTIO_MMIO_INT_CONFIG, 0);
    // Fixed by the guest, still left alone until the device is reset.
    r.mem.write_obj(1u16, GuestAddress(avail + 2)).expect("idx");
    assert!(!r.h.process_tx());
    assert!(r.used(true).is_empty());
    r.h.interrupt().clear_broken();
    r.h.process_tx();
    assert_eq!(r.used(true).len(), 1);
}

#[test]
fn tx_floods_are_worked_in_bursts() {
    let mut r = Rig::new(0);
    let f = frame(60, 3);
    r.mem.write_slice(&f, GuestAddress(DATA)).expect("w");
    // More chains than a burst: reuse descriptor 0 over and over.
    for _ in 0..(TX_BURST + 10) {
        r.tx.set_next_desc(0);
        r.push(true, &[(DATA, f.len() as u32, 0)]);
        if r.tx.published().is_multiple_of(QSIZE) {
            // keep the ring from overflowing the driver's view: process as we go
            r.h.process_tx();
            let mut b = [0u8; 256];
            while r.host.recv(&mut b).is_ok() {}
        }
    }
    while r.h.process_tx() {}
    assert_eq!(r.counters()[3], (TX_BURST + 10) as u64);
}

#[test]
fn rx_frames_land_in_guest_buffers() {
    rx_frames_land_in_guest_buffers_with(false);
}

#[test]
fn rx_frames_land_in_guest_buffers_through_the_rx_ring() {
    rx_frames_land_in_guest_buffers_with(true);
}

fn rx_frames_land_in_guest_buffers_with(ring: bool) {
    let Some(mut r) = Rig::new_with_ring(0, ring) else {
        return;
    };
    let f = frame(1000, 9);
    r.host.send(&f).expect("send");
    assert_eq!(r.h.process_rx(), RxState::NoBuffers, "no buffers yet: the frame waits");
    assert_eq!(r.h.rx_waiting(), 1);
    assert!(!r.h.rx_blocked(), "the backlog has room: the tap is still read");
    r.push(false, &[(DATA, 512, F_WRITE), (DATA + 0x1000, 1024, F_WRITE)]);
    assert_eq!(r.h.process_rx(), RxState::Drained);
    assert_eq!(r.used(false), vec![(0, f.len() as u32)]);
    let mut got = vec![0u8; f.len()];
    r.mem.read_slice(&mut got[..512], GuestAddress(DATA)).expect("r");
    r.mem
        .read_slice(&mut got[512..], GuestAddress(DATA + 0x1000))
        .expect("r");
    assert_eq!(&got[VNET_HDR_LEN..], &f[VNET_HDR_LEN..]);
    assert_eq!(&got[10..12], &1u16.to_le_bytes(), "num_buffers = 1");
    assert_eq!(r.counters()[..2], [1, 1000]);
    let c = r.h.counters();
    assert_eq!(c.rx_no_buffers.load(Ordering::Relaxed), 1, "one wait for buffers");
    assert_eq!(
        c.interrupts.load(Ordering::Relaxed),
        1,
        "the driver did not set NO_INTERRUPT"
    );
}

/// Frames the device has not read from its end of the socket pair (read
/// here and counted).
fn unread(r: &Rig) -> usize {
    let mut n = 0;
    let mut buf = [0u8; 2048];
    // SAFETY: recv into a local buffer of its length, on the device's socket
    // (owned by the handler, alive for the call).
    while unsafe { libc::recv(r.h.backend_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) } >= 0 {
        n += 1;
    }
    n
}

#[test]
fn frames_are_read_ahead_while_there_are_no_buffers_and_delivered_in_order() {
    frames_are_read_ahead_while_there_are_no_buffers_and_delivered_in_order_with(false);
}

#[test]
fn frames_are_read_ahead_while_there_are_no_buffers_and_delivered_in_order_through_the_rx_ring() {
    frames_are_read_ahead_while_there_are_no_buffers_and_delivered_in_order_with(true);
}

fn frames_are_read_ahead_while_there_are_no_buffers_and_delivered_in_order_with(ring: bool) {
    let Some(mut r) = Rig::new_with_ring(0, ring) else {
        return;
    };
    let frames: Vec<Vec<u8>> = (0..5).map(|i| frame(60 + i * 10, i as u8)).collect();
    for f in &frames {
        r.host.send(f).expect("send");
    }
    assert_eq!(r.h.process_rx(), RxState::NoBuffers);
    assert_eq!(r.h.rx_waiting(), 5, "all read ahead of the buffers");
    assert_eq!(unread(&r), 0, "the backend is drained");
    for i in 0..5u64 {
        r.push(false, &[(DATA + i * 0x1000, 2048, F_WRITE)]);
    }
    assert_eq!(r.h.process_rx(), RxState::Drained);
    assert_eq!(r.h.rx_waiting(), 0);
    let used = r.used(false);
    assert_eq!(used.len(), 5);
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(used[i], (i as u32, f.len() as u32), "in order");
        let mut got = vec![0u8; f.len() - VNET_HDR_LEN];
        r.mem
            .read_slice(&mut got, GuestAddress(DATA + i as u64 * 0x1000 + VNET_HDR_LEN as u64))
            .expect("r");
        assert_eq!(got, f[VNET_HDR_LEN..]);
    }
}

#[test]
fn a_full_backlog_stops_reading_the_backend() {
    let mut r = Rig::new(0);
    for i in 0..RX_BACKLOG_FRAMES + 3 {
        r.host.send(&frame(60, i as u8)).expect("send");
    }
    // Reads are bounded per call too: a few calls fill the backlog.
    let mut calls = 0;
    while r.h.process_rx() != RxState::NoBuffers {
        calls += 1;
        assert!(calls < 8, "the backlog fills");
    }
    assert_eq!(r.h.rx_waiting(), RX_BACKLOG_FRAMES);
    assert!(r.h.rx_blocked(), "full: the worker stops polling the tap");
    assert_eq!(r.h.process_rx(), RxState::NoBuffers);
    assert_eq!(unread(&r), 3, "what did not fit stays in the backend");
    assert_eq!(r.counters()[2], 0, "nothing dropped");
}

#[test]
fn the_rx_ring_reads_ahead_within_the_backlog_bounds_in_order() {
    let Some(mut r) = Rig::new_with_ring(0, true) else {
        return;
    };
    let n = RX_BACKLOG_FRAMES + 40;
    for i in 0..n {
        r.host.send(&frame(60, i as u8)).expect("send");
    }
    let mut calls = 0;
    while r.h.process_rx() != RxState::NoBuffers {
        calls += 1;
        assert!(calls < 8, "the backlog fills");
    }
    assert_eq!(r.h.rx_waiting(), RX_BACKLOG_FRAMES);
    assert!(r.h.rx_blocked(), "full: the worker stops polling the tap");
    assert_eq!(r.h.process_rx(), RxState::NoBuffers);
    let left = unread(&r);
    assert!(
        (8..=40).contains(&left),
        "at most a ring's batch is read beyond the backlog ({left} left)"
    );
    assert_eq!(r.counters()[2], 0, "nothing dropped");
    // Frames come out in the order they were sent, the backlog's first.
    for round in 0..3u64 {
        for k in 0..u64::from(QSIZE) {
            r.push(false, &[(DATA + k * 0x1000, 2048, F_WRITE)]);
        }
        r.h.process_rx();
        for k in 0..u64::from(QSIZE) {
            let i = round * u64::from(QSIZE) + k;
            let mut got = [0u8; 1];
            r.mem
                .read_slice(&mut got, GuestAddress(DATA + k * 0x1000 + VNET_HDR_LEN as u64))
                .expect("r");
            assert_eq!(got[0], frame(60, i as u8)[VNET_HDR_LEN], "frame {i} in order");
        }
    }
}

#[test]
fn buffers_added_just_before_rx_notifications_go_on_are_not_missed() {
    use crate::virtio::WorkerHandler;
    let r = Rig::new(0);
    r.host.send(&frame(100, 3)).expect("send");
    let mem = r.mem.clone();
    // The driver adds a buffer after the device found none and before it
    // turns notifications on: no kick will come (they were off when it
    // looked), so the worker must go round again instead of sleeping.
    *r.fake.on_empty.lock().expect("hook") = Some(Box::new(move || {
        TestQueue::new(RX_BASE, QSIZE).push(&mem, &[(DATA, 2048, F_WRITE)]);
    }));
    let mut l = super::worker::NetLoop::new(r.h, crate::virtio::poll::PollMode::Off);
    assert!(l.start(), "another round is due at once");
    assert!(!l.work(&[false, false], &[0]), "delivered and drained: nothing due");
    assert_eq!(r.rx.used_idx(&r.mem), 1, "the frame went into the late buffer");
}

#[test]
fn a_polling_worker_sends_without_kicks_and_rearms_when_the_window_ends() {
    use crate::virtio::poll::PollMode;
    use crate::virtio::WorkerHandler;
    use std::time::{Duration, Instant};
    let mut r = Rig::new(0);
    let window = Duration::from_micros(crate::virtio::poll::FIXED_MAX_US);
    let f = frame(60, 1);
    r.mem.write_slice(&f, GuestAddress(DATA)).expect("w");
    r.push(true, &[(DATA, f.len() as u32, 0)]);
    let mut l = super::worker::NetLoop::new(r.h, PollMode::Fixed(crate::virtio::poll::FIXED_MAX_US));
    assert_eq!(r.tx.used_flags(&r.mem), 0, "a fresh queue asks for kicks");
    // A kicked round sends the frame and opens the window: tx notifications off.
    let t0 = Instant::now();
    assert!(
        l.work(&[false, true], &[0]),
        "inside the window: come back without sleeping"
    );
    assert!(l.polling());
    assert_eq!(r.tx.used_flags(&r.mem), 1, "NO_NOTIFY while polling");
    // The driver adds a chain and does not kick (notifications are off):
    // the next round finds it with nothing notified.
    r.tx.push(&r.mem, &[(DATA, f.len() as u32, 0)]);
    let more = l.work(&[false, false], &[0]);
    if t0.elapsed() < window {
        assert!(more && l.polling(), "still inside the window");
    }
    let mut buf = vec![0u8; 256];
    for _ in 0..2 {
        assert_eq!(r.host.recv(&mut buf).expect("a frame on the host side"), f.len());
    }
    assert_eq!(r.tx.used_idx(&r.mem), 2);
    // Empty rounds until the window ends, then notifications go back on.
    std::thread::sleep(window);
    assert!(!l.work(&[false, false], &[0]), "the window ran out empty: sleep");
    assert!(!l.polling());
    assert_eq!(r.tx.used_flags(&r.mem), 0, "kicks asked for again before sleeping");
    let net = l.into_inner();
    let c = net.counters();
    assert_eq!(c.tx_frames.load(Ordering::Relaxed), 2);
    assert!(
        c.polled.load(Ordering::Relaxed) <= 1,
        "only the second frame can have been polled"
    );
}

#[test]
fn polling_off_rearms_tx_notifications_after_each_round() {
    use crate::virtio::poll::PollMode;
    use crate::virtio::WorkerHandler;
    let mut r = Rig::new(0);
    let f = frame(60, 2);
    r.mem.write_slice(&f, GuestAddress(DATA)).expect("w");
    r.push(true, &[(DATA, f.len() as u32, 0)]);
    let mut l = super::worker::NetLoop::new(r.h, PollMode::Off);
    assert!(!l.work(&[false, true], &[0]), "sent; nothing due");
    assert!(!l.polling());
    assert_eq!(r.tx.used_flags(&r.mem), 0, "notifications on for the next frame");
    assert_eq!(l.into_inner().counters().polled.load(Ordering::Relaxed), 0);
}

/// The rx queue's used-ring flags (VIRTQ_USED_F_NO_NOTIFY = 1).
fn rx_used_flags(r: &Rig) -> u16 {
    let used = r.h.queue_states()[0].used_ring;
    r.mem.read_obj(GuestAddress(used)).expect("used flags")
}

#[test]
fn rx_notifications_go_off_as_soon_as_buffers_come() {
    let mut r = Rig::new(0);
    r.host.send(&frame(100, 1)).expect("send");
    assert_eq!(r.h.process_rx(), RxState::NoBuffers);
    assert!(!r.h.arm_rx_notification(), "no buffers arrived meanwhile");
    assert_eq!(rx_used_flags(&r), 0, "a frame waits: the driver is asked to kick");
    r.push(false, &[(DATA, 2048, F_WRITE)]);
    r.push(false, &[(DATA + 0x1000, 2048, F_WRITE)]);
    r.host.send(&frame(100, 2)).expect("send");
    assert_eq!(r.h.process_rx(), RxState::Drained);
    assert_eq!(r.used(false).len(), 2);
    // Off within the round that found buffers, not only when the worker
    // next polls (a polling driver kicks for each frame meanwhile).
    assert_eq!(rx_used_flags(&r), 1, "NO_NOTIFY once buffers came");
    assert!(!r.h.arm_rx_notification());
    assert_eq!(rx_used_flags(&r), 1, "no frame waits: they stay off");
    assert_eq!(r.h.counters().rx_no_buffers.load(Ordering::Relaxed), 1);
}

#[test]
fn mergeable_rx_buffers_split_big_frames() {
    mergeable_rx_buffers_split_big_frames_with(false);
}

#[test]
fn mergeable_rx_buffers_split_big_frames_through_the_rx_ring() {
    mergeable_rx_buffers_split_big_frames_with(true);
}

fn mergeable_rx_buffers_split_big_frames_with(ring: bool) {
    let Some(mut r) = Rig::new_with_ring(OFFLOAD_FEATURES, ring) else {
        return;
    };
    let f = frame(60000, 5);
    r.host.send(&f).expect("send");
    for k in 0..15u64 {
        r.push(false, &[(DATA + k * 4096, 4096, F_WRITE)]);
    }
    assert_eq!(r.h.process_rx(), RxState::Drained);
    let used = r.used(false);
    assert_eq!(used.len(), 15);
    assert_eq!(used.iter().map(|u| u.1 as usize).sum::<usize>(), f.len());
    let mut hdr = [0u8; 12];
    r.mem.read_slice(&mut hdr, GuestAddress(DATA)).expect("r");
    assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 15);
    // Not enough buffers: the frame waits, nothing is consumed.
    let g = frame(20000, 1);
    r.host.send(&g).expect("send");
    r.push(false, &[(DATA, 4096, F_WRITE)]);
    assert_eq!(r.h.process_rx(), RxState::NoBuffers);
    assert_eq!(r.used(false).len(), 15);
    for k in 1..5u64 {
        r.push(false, &[(DATA + k * 4096, 4096, F_WRITE)]);
    }
    assert_eq!(r.h.process_rx(), RxState::Drained);
    assert_eq!(r.used(false).len(), 20);
}

#[test]
fn hostile_rx_chains_and_big_frames_never_panic() {
    hostile_rx_chains_and_big_frames_never_panic_with(false);
}

#[test]
fn hostile_rx_chains_and_big_frames_never_panic_through_the_rx_ring() {
    hostile_rx_chains_and_big_frames_never_panic_with(true);
}

fn hostile_rx_chains_and_big_frames_never_panic_with(ring: bool) {
    let Some(mut r) = Rig::new_with_ring(0, ring) else {
        return;
    };
    // A frame too big for the one buffer is dropped; the buffer stays.
    r.host.send(&frame(3000, 1)).expect("send");
    r.push(false, &[(DATA, 2048, F_WRITE)]);
    assert_eq!(r.h.process_rx(), RxState::Drained);
    assert_eq!(r.used(false).len(), 0);
    assert_eq!(r.counters()[2], 1);
    // The next frame fits it.
    r.host.send(&frame(100, 1)).expect("send");
    assert_eq!(r.h.process_rx(), RxState::Drained);
    assert_eq!(r.used(false), vec![(0, 112)]);
    // Read-only buffer on rx, buffer outside memory, runt frame.
    r.push(false, &[(DATA, 2048, 0)]);
    r.push(false, &[(0xffff_0000_0000, 2048, F_WRITE)]);
    r.host.send(&[0u8; 4]).expect("send");
    r.host.send(&frame(100, 2)).expect("send");
    r.h.process_rx();
    let c = r.counters();
    assert!(c[6] >= 2, "{c:?}");
    // Oversized frames from the backend are dropped.
    r.host.send(&vec![0u8; MAX_BUFFER_BYTES + 10]).expect("send");
    r.push(false, &[(DATA, 2048, F_WRITE)]);
    r.h.process_rx();
}

#[test]
fn device_offers_offloads_only_with_backend_support() {
    let (a, _b) = UnixDatagram::pair().expect("pair");
    let n = Net::new(Arc::new(Fake::new(a)), [0x52, 0x54, 0, 1, 2, 3]);
    assert_eq!(n.features() & OFFLOAD_FEATURES, OFFLOAD_FEATURES);
    let mut cfg = [0u8; 8];
    n.read_config(0, &mut cfg);
    assert_eq!(cfg, [0x52, 0x54, 0, 1, 2, 3, 1, 0]);
    assert_eq!(n.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
}

/// A private network namespace for the calling thread (None when the host
/// does not allow one: no root, no /dev/net/tun, no `ip`).
fn enter_private_netns(tag: &str) -> Option<String> {
    if !std::path::Path::new("/dev/net/tun").exists() {
        eprintln!("skipped: /dev/net/tun is missing");
        return None;
    }
    let ns = format!("kvmkit-ut-{tag}-{}", std::process::id());
    let ok = std::process::Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: cannot create a network namespace (needs root and iproute2)");
        return None;
    }
    let f = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("netns file");
    // SAFETY: setns on a netns fd moves only this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        let _ = std::process::Command::new("ip").args(["netns", "del", &ns]).status();
        eprintln!("skipped: setns failed");
        return None;
    }
    Some(ns)
}

/// Runs `ip ARGS` in the calling thread's namespace; whether it succeeded.
fn ip(args: &[&str]) -> bool {
    std::process::Command::new("ip")
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Interface `name`'s rx packet counter, from `ip -s -j link show`.
fn rx_packets(name: &str) -> u64 {
    let out = std::process::Command::new("ip")
        .args(["-s", "-j", "link", "show", "dev", name])
        .output()
        .expect("ip -s -j link show");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip's JSON");
    v[0]["stats64"]["rx"]["packets"].as_u64().expect("rx packets")
}

#[test]
fn real_tap_in_a_namespace_round_trips_frames() {
    // Runs on its own thread: setns moves only that thread.
    std::thread::spawn(|| {
        let Some(ns) = enter_private_netns("tap") else { return };
        let result = std::panic::catch_unwind(|| {
            // The host side by hand: a tap with 10.0.2.1/30, up.
            let tap = crate::net::Tap::open("kvtap%d").expect("tap in a fresh namespace");
            let name = tap.name().to_owned();
            assert!(name.starts_with("kvtap"), "{name}");
            assert!(ip(&["addr", "add", "10.0.2.1/30", "dev", &name]), "ip addr add");
            assert!(ip(&["link", "set", "dev", &name, "up"]), "ip link set up");
            // Busy: the same tap cannot be opened twice.
            let busy = crate::net::Tap::open(&name).expect_err("busy");
            assert!(matches!(busy, crate::net::NetError::Busy(_)), "{busy}");

            // Host -> tap: the kernel sends an ARP request for 10.0.2.2 when
            // we send a UDP datagram to it; read it from the tap.
            let sock = std::net::UdpSocket::bind("10.0.2.1:0").expect("bind");
            let _ = sock.send_to(b"hello", "10.0.2.2:9");
            let mut buf = vec![0u8; 70000];
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
            let mut got = None;
            while std::time::Instant::now() < deadline {
                match tap.read_frame(&mut buf) {
                    Ok(n) if n >= VNET_HDR_LEN + 14 && buf[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14] == [8, 6] => {
                        got = Some(n);
                        break;
                    }
                    _ => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            }
            assert!(got.is_some(), "an ARP request came out of the tap");
            // Guest -> host: a frame written to the tap counts as tap rx.
            let before = rx_packets(&name);
            let mut f = frame(60, 0);
            f[VNET_HDR_LEN..VNET_HDR_LEN + 6].copy_from_slice(&[0xff; 6]);
            for _ in 0..10 {
                tap.write_frame(&f).expect("write");
            }
            assert_eq!(rx_packets(&name) - before, 10);
            // The tap is not persistent: closing it removes it.
            drop(tap);
            assert!(
                !ip(&["-o", "link", "show", "dev", &name]),
                "the tap is gone once closed"
            );
        });
        let _ = std::process::Command::new("ip").args(["netns", "del", &ns]).status();
        if let Err(e) = result {
            std::panic::resume_unwind(e);
        }
    })
    .join()
    .expect("namespace test");
}

#[test]
fn worker_stops_when_the_tap_disappears() {
    std::thread::spawn(|| {
        let Some(ns) = enter_private_netns("gone") else { return };
        let result = std::panic::catch_unwind(|| {
            let tap = crate::net::Tap::open("kvgone0").expect("tap");
            let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("mem");
            let rx = TestQueue::new(RX_BASE, QSIZE);
            let tx = TestQueue::new(TX_BASE, QSIZE);
            let irq = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
            let counters = Arc::new(NetCounters::default());
            let h = NetHandler::new(
                mem,
                rx.queue(),
                tx.queue(),
                Arc::new(Interrupt::new(irq)),
                Arc::new(tap),
                counters,
                VIRTIO_F_VERSION_1,
            );
            let evs = vec![
                vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).expect("e"),
                vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).expect("e"),
            ];
            let w = NetWorker::spawn("t".into(), evs, h, crate::virtio::poll::PollMode::Off).expect("worker");
            let ok = std::process::Command::new("ip")
                .args(["link", "del", "kvgone0"])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "ip link del");
            std::thread::sleep(std::time::Duration::from_millis(200));
            drop(w); // joins: the worker must have ended or end on stop
        });
        let _ = std::process::Command::new("ip").args(["netns", "del", &ns]).status();
        if let Err(e) = result {
            std::panic::resume_unwind(e);
        }
    })
    .join()
    .expect("namespace test");
}

mod direct;

#[test]
fn with_event_idx_rx_interrupts_follow_used_event() {
    let mut r = Rig::new(crate::virtio::VIRTIO_RING_F_EVENT_IDX);
    // used_event (after the avail ring's entries): interrupt once the used
    // index passes 1, i.e. with the second completion only.
    r.mem
        .write_obj(1u16.to_le(), GuestAddress(r.rx.avail() + 4 + 2 * u64::from(QSIZE)))
        .expect("used_event");
    for i in 0..3u8 {
        r.push(false, &[(DATA + u64::from(i) * 0x1000, 2048, F_WRITE)]);
        r.host.send(&frame(100, i)).expect("send");
        assert_eq!(r.h.process_rx(), RxState::Drained);
    }
    assert_eq!(r.used(false).len(), 3);
    assert_eq!(
        r.h.counters().interrupts.load(Ordering::Relaxed),
        1,
        "one interrupt, for the completion that passed used_event"
    );
}

#[test]
fn event_idx_is_offered() {
    let f = [VIRTIO_F_VERSION_1, crate::virtio::VIRTIO_RING_F_EVENT_IDX];
    let net = super::Net::features_offered(false);
    assert!(f.iter().all(|b| net & b != 0));
}
