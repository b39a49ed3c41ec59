//! The rx and tx paths: descriptor chains in, frames out, and back.
//!
//! Every chain is checked (direction, lengths, guest addresses) before use;
//! a bad chain is completed with length 0 and counted, an oversized frame is
//! dropped and counted, and nothing a guest writes can make the device panic.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::backlog::Backlog;
use super::tx_batch::TxBatch;
use super::{Backend, NetCounters, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_MRG_RXBUF};
use crate::memory::GuestMemoryMmap;
use crate::net::rx_ring::{RxRing, RX_RING_ENTRIES};
use crate::net::tap::{is_fatal, VNET_HDR_LEN};
use crate::net::tx_ring::TxRing;
use crate::virtio::{Interrupt, VIRTIO_MMIO_INT_VRING};

mod direct;
use direct::{Direct, DirectRead};

/// The running mean of received frames' lengths (header included) after
/// one more of `n` bytes, 1/8 weight per frame: it decides vectored direct
/// reads (`direct.rs`).
fn rx_mean(avg: usize, n: usize) -> usize {
    (7 * avg + n) / 8
}

/// Largest frame (without the virtio header) either way: 64 KiB of TSO
/// payload plus headers, as virtio-net and tap allow.
pub const MAX_FRAME_BYTES: usize = 65550;
/// Largest buffer: header plus frame.
pub const MAX_BUFFER_BYTES: usize = VNET_HDR_LEN + MAX_FRAME_BYTES;
/// Tx chains handled before the rx side gets a turn.
pub const TX_BURST: usize = 256;
/// Rx frames delivered before the tx side gets a turn.
pub const RX_BURST: usize = 256;
/// Most frames read from the backend ahead of the guest's rx buffers.
pub const RX_BACKLOG_FRAMES: usize = 1024;
/// Bytes of frames read ahead (plus room for one more read).
pub const RX_BACKLOG_BYTES: usize = 512 << 10;
/// Room one read gets: the largest buffer plus slack, so oversized frames show.
pub const READ_ROOM: usize = MAX_BUFFER_BYTES + 64;
const GSO_NONE: u8 = 0;
const MAX_WARNINGS: u32 = 10;
/// Fewest reads an rx batch posts.
const MIN_RX_BATCH: usize = 4;

/// Frame I/O: one frame (with its 12-byte header) per call, non-blocking.
pub trait FrameIo {
    /// Reads one frame into `buf`; `WouldBlock` when none is waiting.
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one frame.
    fn write_frame(&self, frame: &[u8]) -> io::Result<usize>;
}

impl FrameIo for crate::net::tap::Tap {
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        crate::net::tap::Tap::read_frame(self, buf)
    }

    fn write_frame(&self, frame: &[u8]) -> io::Result<usize> {
        crate::net::tap::Tap::write_frame(self, frame)
    }
}

/// What the rx side did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxState {
    /// The backend has no more frames and none waits.
    Drained,
    /// Frames wait for the driver to add rx buffers (the backend is drained
    /// or the backlog is full).
    NoBuffers,
    /// The burst ended with frames possibly left.
    More,
    /// The backend is gone.
    Dead,
}

/// A descriptor: (address, length, device-writable).
type Seg = (GuestAddress, u32, bool);

/// The worker side of a virtio-net device.
pub struct NetHandler {
    memory: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<Interrupt>,
    backend: Arc<dyn Backend>,
    counters: Arc<NetCounters>,
    mrg_rxbuf: bool,
    host_tso: bool,
    /// Frames read from the backend that wait for rx buffers.
    backlog: Backlog,
    /// Rx notifications may be on (the driver kicks for each refill batch).
    rx_notifications: bool,
    /// Frames taken from tx chains, not yet written.
    txq: TxBatch,
    /// The ring received frames are read through (a batch per syscall), if any.
    rx_ring: Option<Arc<Mutex<RxRing>>>,
    /// Reads the next rx batch posts (grows while batches come back full).
    rx_batch: usize,
    segs: Vec<Seg>,
    /// Descriptors of the chains one rx frame goes into (or of a direct batch's chains).
    rx_segs: Vec<Seg>,
    /// The reads of a direct batch (`direct.rs`).
    direct: Vec<DirectRead>,
    /// Host addresses and lengths of one chain's buffers (a direct read's iovecs).
    host_iovs: Vec<(usize, usize)>,
    /// Direct batches skipped from now on (one saw a frame longer than its chain).
    direct_backoff: u32,
    /// The longest frame read so far (header included): a one-piece rx
    /// chain longer than it gets a plain read cut at its end (`direct.rs`).
    rx_longest: usize,
    /// Direct batches without cut reads from now on (a cut read filled its
    /// chain: its frame may have been cut).
    cut_backoff: u32,
    /// Running mean of the frames' lengths (header included, 1/8 weight
    /// per frame): small frames get no vectored direct reads (`direct.rs`).
    rx_avg: usize,
    chains: Vec<(u16, usize, usize)>,
    warnings: u32,
    dead: bool,
    /// Tx chains completed plus rx frames delivered, ever (a polling
    /// worker's measure of whether a round found work).
    progress: u64,
    /// The worker polls: tx notifications stay off after a round, and rx
    /// notifications stay off while frames wait for buffers.
    polling: bool,
}

impl NetHandler {
    /// A handler for the `rx` and `tx` queues with the features `acked`
    /// (with EVENT_IDX both queues use used_event and avail_event).
    pub fn new(
        memory: GuestMemoryMmap,
        mut rx: Queue,
        mut tx: Queue,
        interrupt: Arc<Interrupt>,
        backend: Arc<dyn Backend>,
        counters: Arc<NetCounters>,
        acked: u64,
    ) -> Self {
        let event_idx = acked & crate::virtio::VIRTIO_RING_F_EVENT_IDX != 0;
        rx.set_event_idx(event_idx);
        tx.set_event_idx(event_idx);
        Self {
            memory,
            rx,
            tx,
            interrupt,
            backend,
            counters,
            mrg_rxbuf: acked & VIRTIO_NET_F_MRG_RXBUF != 0,
            host_tso: acked & VIRTIO_NET_F_HOST_TSO4 != 0,
            backlog: Backlog::new(
                RX_BACKLOG_BYTES + READ_ROOM,
                READ_ROOM,
                RX_BACKLOG_FRAMES,
                VNET_HDR_LEN..=MAX_BUFFER_BYTES,
            ),
            // A fresh queue has notifications on; the first round turns them off.
            rx_notifications: true,
            txq: TxBatch::new(None),
            rx_ring: None,
            rx_batch: MIN_RX_BATCH,
            segs: Vec::with_capacity(64),
            rx_segs: Vec::with_capacity(64),
            direct: Vec::with_capacity(RX_RING_ENTRIES as usize),
            host_iovs: Vec::with_capacity(64),
            direct_backoff: 0,
            // Until frames tell: the longest a tap gives without offloads
            // (a 1500-byte MTU, a VLAN tag, the header).
            rx_longest: 1530,
            cut_backoff: 0,
            rx_avg: 1024,
            chains: Vec::with_capacity(64),
            warnings: 0,
            dead: false,
            progress: 0,
            polling: false,
        }
    }

    /// Tx chains completed plus rx frames delivered since the device started.
    pub fn progress(&self) -> u64 {
        self.progress
    }

    /// While `on`, the worker polls both queues: their notifications are
    /// turned off now, tx's stay off after each round and rx's stay off
    /// even while frames wait for buffers (the worker looks for them).
    /// Turning it off leaves them off too: [`Self::arm_tx_notification`]
    /// and [`Self::arm_rx_notification`] turn them back on.
    pub fn set_polling(&mut self, on: bool) {
        self.polling = on;
        if on {
            if let Err(e) = self.tx.disable_notification(&self.memory) {
                self.warn(&format!("tx queue: {e:?}"));
            }
            self.rx_notifications_off();
        }
    }

    /// Turns tx notifications back on (the worker is about to sleep);
    /// true when chains came meanwhile (take them before sleeping: the
    /// driver, having seen notifications off, will not kick for them).
    pub fn arm_tx_notification(&mut self) -> bool {
        match self.tx.enable_notification(&self.memory) {
            Ok(more) => more && !self.avail_index_bogus(true),
            Err(e) => {
                self.warn(&format!("tx queue: {e:?}"));
                false
            }
        }
    }

    /// Writes transmitted frames through `ring` (a burst per syscall)
    /// instead of one `write` each.
    pub fn with_tx_ring(mut self, ring: Option<Arc<Mutex<TxRing>>>) -> Self {
        self.txq.set_ring(ring);
        self
    }

    /// Reads received frames through `ring` (a batch per syscall) instead
    /// of one `read` each; frames a previous activation left in it are
    /// dropped (counted). A ring that failed before is not used (its
    /// failure was logged once).
    pub fn with_rx_ring(mut self, ring: Option<Arc<Mutex<RxRing>>>) -> Self {
        self.rx_ring = ring.filter(|r| match r.lock() {
            Ok(mut r) => {
                NetCounters::add(&self.counters.rx_dropped, r.discard() as u64);
                !r.is_broken()
            }
            Err(_) => false,
        });
        self
    }

    /// Reads the next frame into the backlog, through the rx ring when
    /// there is one: `Ok(None)` when the backlog is full, the frame's
    /// length, or the read's error (`WouldBlock`: nothing waits).
    fn read_frame(&mut self) -> io::Result<Option<usize>> {
        let Some(ring) = self.rx_ring.as_ref() else {
            let backend = &self.backend;
            return self.backlog.read_with(|buf| backend.read_frame(buf));
        };
        if !self.backlog.has_room() {
            return Ok(None);
        }
        let Ok(mut ring) = ring.lock() else {
            self.rx_ring = None;
            return Err(io::Error::from(io::ErrorKind::WouldBlock));
        };
        if ring.pending() == 0 {
            if let Err(e) = ring.read_batch(self.rx_batch) {
                drop(ring);
                self.rx_ring = None;
                tracing::warn!(
                    "virtio-net ({}): the rx ring failed ({e}); one read per received frame from now on",
                    self.backend.name()
                );
                return Err(io::Error::from(io::ErrorKind::WouldBlock));
            }
            let frames = ring.frames();
            self.rx_batch = (2 * frames).clamp(MIN_RX_BATCH, RX_RING_ENTRIES as usize);
        }
        // Reads that found nothing, before a frame that came meanwhile, are skipped.
        loop {
            match ring.next_result() {
                Some(Ok(frame)) => {
                    return self.backlog.read_with(|buf| {
                        let n = frame.len().min(buf.len());
                        buf[..n].copy_from_slice(&frame[..n]);
                        Ok(n)
                    })
                }
                Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                // A tap without non-blocking ring reads (tun before Linux 6.4 or
                // so refuses RWF_NOWAIT): nothing was read, so plain reads take over.
                Some(Err(e)) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EINVAL)) => {
                    ring.retire();
                    drop(ring);
                    self.rx_ring = None;
                    tracing::warn!(
                        "virtio-net ({}): the tap refuses ring reads ({e}); one read per received frame from now on",
                        self.backend.name()
                    );
                    let backend = &self.backend;
                    return self.backlog.read_with(|buf| backend.read_frame(buf));
                }
                Some(Err(e)) => return Err(e),
                None => return Err(io::Error::from(io::ErrorKind::WouldBlock)),
            }
        }
    }

    /// The backend's fd, polled for incoming frames.
    pub fn backend_fd(&self) -> i32 {
        self.backend.as_raw_fd()
    }

    /// Whether the backend went away (the device has stopped).
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// Whether the backend is not to be read now: the backlog of frames
    /// waiting for rx buffers is full.
    pub fn rx_blocked(&self) -> bool {
        !self.backlog.has_room()
    }

    /// Frames read from the backend that wait for rx buffers.
    pub fn rx_waiting(&self) -> usize {
        self.backlog.len()
    }

    /// Frames read from the backend and not yet delivered or dropped: the
    /// backlog's and those a ring batch read beyond it (or into chains it
    /// then gave back), waiting in the rx ring.
    pub fn rx_held(&self) -> usize {
        let in_ring = self
            .rx_ring
            .as_ref()
            .and_then(|r| r.lock().ok().map(|r| r.pending_frames()))
            .unwrap_or(0);
        self.backlog.len() + in_ring
    }

    /// The rx and tx queues' state (frames read from the tap and still
    /// waiting for rx buffers are not part of it: a snapshot loses them, as
    /// a network may).
    pub fn queue_states(&self) -> Vec<virtio_queue::QueueState> {
        vec![self.rx.state(), self.tx.state()]
    }

    /// The device's interrupt.
    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    /// The device's counters.
    pub fn counters(&self) -> &NetCounters {
        &self.counters
    }

    fn warn(&mut self, what: &str) {
        if self.warnings < MAX_WARNINGS {
            self.warnings += 1;
            tracing::warn!("virtio-net ({}): {what}", self.backend.name());
        }
    }

    fn backend_gone(&mut self, e: &io::Error) {
        if !self.dead {
            self.dead = true;
            tracing::error!(
                "virtio-net: {} went away ({e}); the NIC is stopped, the VM runs on without it ({})",
                self.backend.name(),
                self.counters.summary()
            );
        }
    }

    /// Raises the interrupt for the `tx` (else rx) queue's completions unless
    /// the driver asked not to get one (used_event with EVENT_IDX, else the
    /// avail ring's no-interrupt flag).
    fn notify(&mut self, tx: bool) {
        let q = if tx { &mut self.tx } else { &mut self.rx };
        if crate::virtio::driver_wants_interrupt(q, &self.memory) {
            NetCounters::add(&self.counters.interrupts, 1);
            self.interrupt.signal(VIRTIO_MMIO_INT_VRING);
        }
    }

    /// The descriptors of the next available chain on `rx` (`tx` when
    /// `tx`), into `self.segs`; `None` when the queue is empty, `Some(None)`
    /// when the chain is malformed (its head is returned for completion).
    fn pop(&mut self, tx: bool) -> Option<(u16, bool)> {
        let q = if tx { &mut self.tx } else { &mut self.rx };
        let chain = q.pop_descriptor_chain(&self.memory)?;
        let head = chain.head_index();
        self.segs.clear();
        let mut ok = true;
        for d in chain {
            if self.segs.len() >= usize::from(super::QUEUE_SIZE) {
                ok = false;
                break;
            }
            self.segs.push((d.addr(), d.len(), d.is_write_only()));
        }
        Some((head, ok))
    }

    /// Completes `head` on `rx` or `tx` with `len` bytes written.
    fn complete(&mut self, tx: bool, head: u16, len: u32) -> bool {
        let q = if tx { &mut self.tx } else { &mut self.rx };
        match q.add_used(&self.memory, head, len) {
            Ok(()) => true,
            Err(e) => {
                self.warn(&format!("cannot complete descriptor {head}: {e:?}"));
                false
            }
        }
    }

    /// While the device is broken (waiting for a reset), frames from the
    /// backend are read and dropped (counted), a burst at a time, so the
    /// backend is not polled in a loop.
    fn drop_rx(&mut self) -> RxState {
        // Frames that were waiting for buffers are dropped too, and counted.
        let mut waiting = self.backlog.clear();
        if let Some(Ok(mut r)) = self.rx_ring.as_ref().map(|r| r.lock()) {
            waiting += r.discard();
        }
        NetCounters::add(&self.counters.rx_dropped, waiting as u64);
        let backend = &self.backend;
        for _ in 0..RX_BURST {
            match self.backlog.read_with(|buf| backend.read_frame(buf)) {
                Ok(_) => {
                    self.backlog.clear();
                    NetCounters::add(&self.counters.rx_dropped, 1);
                }
                Err(e) if is_fatal(&e) => {
                    self.backend_gone(&e);
                    return RxState::Dead;
                }
                Err(_) => return RxState::Drained,
            }
        }
        RxState::More
    }

    /// Sends everything on the tx queue, at most [`TX_BURST`] chains;
    /// returns whether chains may be left.
    pub fn process_tx(&mut self) -> bool {
        // A queue whose avail index is bogus is broken until the driver
        // resets the device (DEVICE_NEEDS_RESET): not retried meanwhile.
        if self.interrupt.is_broken() {
            return false;
        }
        if self.tx.iter(&self.memory).is_err() {
            self.interrupt
                .mark_broken("virtio-net: the tx avail index is more than the queue size ahead");
            return false;
        }
        let mut done = 0;
        let mut more = false;
        loop {
            if let Err(e) = self.tx.disable_notification(&self.memory) {
                self.warn(&format!("tx queue: {e:?}"));
            }
            while done < TX_BURST {
                let Some((head, ok)) = self.pop(true) else { break };
                if !ok {
                    NetCounters::add(&self.counters.bad_chains, 1);
                } else {
                    self.queue_chain();
                }
                done += 1;
                if !self.complete(true, head, 0) {
                    break;
                }
                if self.dead {
                    break;
                }
            }
            // Out before the guest hears of the completions (and before
            // notifications go back on).
            self.flush_tx();
            if done >= TX_BURST || self.dead {
                more = !self.dead;
                break;
            }
            if self.polling {
                // The worker looks again soon; notifications stay off.
                break;
            }
            match self.tx.enable_notification(&self.memory) {
                // More chains, unless the avail index is more than the queue
                // size ahead: then none can be popped and this would spin.
                Ok(true) if !self.avail_index_bogus(true) => continue,
                Ok(true) => break,
                Ok(false) => break,
                Err(e) => {
                    self.warn(&format!("tx queue: {e:?}"));
                    break;
                }
            }
        }
        if done > 0 {
            self.progress += done as u64;
            self.notify(true);
        }
        more
    }

    /// Copies the chain in `self.segs` into the tx batch (writing the batch
    /// first when it has no room).
    fn queue_chain(&mut self) {
        let mut len = 0usize;
        for &(_, seg_len, writable) in &self.segs {
            if writable {
                NetCounters::add(&self.counters.bad_chains, 1);
                return;
            }
            len += seg_len as usize;
            if len > MAX_BUFFER_BYTES {
                NetCounters::add(&self.counters.tx_dropped, 1);
                return;
            }
        }
        if len < VNET_HDR_LEN {
            NetCounters::add(&self.counters.bad_chains, 1);
            return;
        }
        if self.txq.room(len).is_none() {
            self.flush_tx();
        }
        let Some(frame) = self.txq.room(len) else {
            // Cannot happen (an empty batch holds the largest frame); dropped, counted.
            NetCounters::add(&self.counters.tx_dropped, 1);
            return;
        };
        let mut at = 0usize;
        for &(addr, seg_len, _) in &self.segs {
            let seg_len = seg_len as usize;
            if self.memory.read_slice(&mut frame[at..at + seg_len], addr).is_err() {
                NetCounters::add(&self.counters.bad_chains, 1);
                return;
            }
            at += seg_len;
        }
        // virtio_net_hdr_v1: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers.
        if frame[1] != GSO_NONE && !self.host_tso {
            NetCounters::add(&self.counters.tx_dropped, 1);
            return;
        }
        frame[10] = 0;
        frame[11] = 0;
        self.txq.push(len);
    }

    /// Writes the frames waiting in the tx batch, counting each.
    fn flush_tx(&mut self) {
        if self.txq.is_empty() {
            return;
        }
        let counters = &self.counters;
        let mut fatal = None;
        let syscalls = self.txq.flush(&*self.backend, |r, len| match r {
            Ok(_) => {
                NetCounters::add(&counters.tx_frames, 1);
                NetCounters::add(&counters.tx_bytes, len.saturating_sub(VNET_HDR_LEN) as u64);
            }
            Err(e) => {
                NetCounters::add(&counters.tx_dropped, 1);
                if fatal.is_none() && is_fatal(&e) {
                    fatal = Some(e);
                }
            }
        });
        NetCounters::add(&self.counters.tx_writes, syscalls as u64);
        if let Some(e) = fatal {
            self.backend_gone(&e);
        }
    }

    /// Moves frames from the backend into rx buffers, at most [`RX_BURST`]
    /// deliveries and as many reads. While the driver has no buffers, frames
    /// are read ahead into the backlog (up to its bounds), so that the reads
    /// (most of the cost of a frame) overlap with the guest's turn-around
    /// and buffers that come are filled at copy speed.
    pub fn process_rx(&mut self) -> RxState {
        if self.interrupt.is_broken() {
            return self.drop_rx();
        }
        let mut delivered = 0;
        let mut steps = 0;
        let mut no_buffers = false;
        let mut drained = false;
        let state = loop {
            if steps >= 2 * RX_BURST {
                break RxState::More;
            }
            if !no_buffers && !self.backlog.is_empty() {
                steps += 1;
                match self.deliver() {
                    Some(true) => {
                        self.backlog.pop();
                        delivered += 1;
                        // Buffers came: no more kicks while they last (as
                        // soon as here, not after the burst: a polling
                        // driver would otherwise kick for every frame it
                        // takes meanwhile).
                        self.rx_notifications_off();
                    }
                    Some(false) => {
                        self.backlog.pop();
                        NetCounters::add(&self.counters.rx_dropped, 1);
                    }
                    None => {
                        NetCounters::add(&self.counters.rx_no_buffers, 1);
                        no_buffers = true;
                    }
                }
                continue;
            }
            // The backlog is empty, or the driver has no buffers: read (ahead).
            if drained {
                break if self.backlog.is_empty() {
                    RxState::Drained
                } else {
                    RxState::NoBuffers
                };
            }
            steps += 1;
            // Nothing waits and the driver may have buffers: read straight into them.
            if !no_buffers && self.backlog.is_empty() {
                if let Direct::Done {
                    delivered: d,
                    drained: dr,
                } = self.rx_direct()
                {
                    if d > 0 {
                        delivered += d;
                        steps += d - 1;
                        self.rx_notifications_off();
                    }
                    drained = dr;
                    continue;
                }
            }
            match self.read_frame() {
                // Full (only while there are no buffers: else it is emptied first).
                Ok(None) => break RxState::NoBuffers,
                Ok(Some(n)) if !self.backlog.is_valid(n) => NetCounters::add(&self.counters.rx_dropped, 1),
                Ok(Some(n)) => self.rx_avg = rx_mean(self.rx_avg, n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => drained = true,
                Err(e) if is_fatal(&e) => {
                    self.backend_gone(&e);
                    break RxState::Dead;
                }
                Err(e) => {
                    self.warn(&format!("read: {e}"));
                    drained = true;
                }
            }
        };
        if delivered > 0 {
            self.progress += delivered as u64;
            self.notify(false);
        }
        state
    }

    /// Puts the oldest frame of the backlog (header included) into rx
    /// chains. `Some(true)` when delivered, `Some(false)` when it can never
    /// fit (drop it), `None` when the driver must add buffers first.
    fn deliver(&mut self) -> Option<bool> {
        // The frame and the chains' descriptors (in a buffer kept across
        // frames) are taken out for the call and put back.
        let mut backlog = std::mem::take(&mut self.backlog);
        let mut all_segs = std::mem::take(&mut self.rx_segs);
        all_segs.clear();
        let r = match backlog.front_mut() {
            Some(frame) => self.deliver_into(frame, &mut all_segs),
            None => Some(false),
        };
        // A hostile driver's long chains do not stay allocated.
        all_segs.shrink_to(256);
        self.rx_segs = all_segs;
        self.backlog = backlog;
        r
    }

    fn deliver_into(&mut self, frame: &mut [u8], all_segs: &mut Vec<Seg>) -> Option<bool> {
        let len = frame.len();
        // Collect chains until their room holds the frame (one chain unless
        // mergeable rx buffers were negotiated).
        self.chains.clear();
        let mut room = 0usize;
        while room < len {
            if !self.mrg_rxbuf && !self.chains.is_empty() {
                break;
            }
            let Some((head, ok)) = self.pop(false) else {
                // Not enough buffers now: give back what we took.
                for _ in 0..self.chains.len() {
                    self.rx.go_to_previous_position();
                }
                return None;
            };
            let Some(cap) = self.rx_chain_room(ok) else {
                NetCounters::add(&self.counters.bad_chains, 1);
                let ok = self.complete(false, head, 0);
                if !self.chains.is_empty() {
                    // Chains taken before it cannot be given back past it:
                    // complete them empty and drop the frame.
                    let taken = std::mem::take(&mut self.chains);
                    for &(h, _, _) in &taken {
                        self.complete(false, h, 0);
                    }
                    return Some(false);
                }
                if !ok {
                    return Some(false);
                }
                continue;
            };
            let first = all_segs.len();
            all_segs.extend_from_slice(&self.segs);
            room += cap;
            self.chains.push((head, first, all_segs.len()));
        }
        if room < len {
            // Only without mergeable buffers: the one chain is too small.
            // Keep it for a smaller frame and drop this one.
            self.rx.go_to_previous_position();
            return Some(false);
        }
        let nbuf = self.chains.len() as u16;
        frame[10..12].copy_from_slice(&nbuf.to_le_bytes());
        let mut off = 0usize;
        let chains = std::mem::take(&mut self.chains);
        let mut ok = true;
        for &(head, first, end) in &chains {
            let mut written = 0usize;
            for &(addr, seg_len, _) in &all_segs[first..end] {
                if off >= len {
                    break;
                }
                let n = (seg_len as usize).min(len - off);
                if self.memory.write_slice(&frame[off..off + n], addr).is_err() {
                    ok = false;
                    NetCounters::add(&self.counters.bad_chains, 1);
                    break;
                }
                off += n;
                written += n;
            }
            if !self.complete(false, head, written as u32) {
                ok = false;
            }
        }
        self.chains = chains;
        if ok && off == len {
            NetCounters::add(&self.counters.rx_frames, 1);
            NetCounters::add(&self.counters.rx_bytes, (len - VNET_HDR_LEN) as u64);
            Some(true)
        } else {
            Some(false)
        }
    }

    /// The bytes the rx chain just popped (in `self.segs`) can take, or
    /// None when it cannot take a frame: a bad chain (`ok` false), a
    /// read-only or empty one, or one too short for the header that
    /// mergeable rx buffers need in the first buffer.
    fn rx_chain_room(&self, ok: bool) -> Option<usize> {
        let cap: usize = self.segs.iter().map(|s| s.1 as usize).sum();
        let min = if self.mrg_rxbuf { VNET_HDR_LEN } else { 1 };
        (ok && !self.segs.is_empty() && self.segs.iter().all(|s| s.2) && cap >= min).then_some(cap)
    }

    /// Whether the queue's avail index is more than the queue size ahead of
    /// the device (a driver bug or a hostile guest): nothing can be popped
    /// until the driver fixes it. Warns once per occurrence.
    fn avail_index_bogus(&mut self, tx: bool) -> bool {
        let q = if tx { &mut self.tx } else { &mut self.rx };
        let bogus = q.iter(&self.memory).is_err();
        if bogus {
            let which = if tx { "tx" } else { "rx" };
            self.interrupt.mark_broken(&format!(
                "virtio-net: the {which} avail index is more than the queue size ahead"
            ));
            self.warn(&format!(
                "{which} queue: avail index more than the queue size ahead; ignored until the driver notifies again"
            ));
        }
        bogus
    }

    /// Rx notifications: on while frames wait for buffers (so the driver
    /// tells us when it adds some), off otherwise, and off while the worker
    /// polls. Returns true when buffers arrived meanwhile (retry at once).
    pub fn arm_rx_notification(&mut self) -> bool {
        if self.polling {
            // The worker comes back without sleeping and looks for buffers.
            self.rx_notifications_off();
            false
        } else if !self.backlog.is_empty() {
            self.rx_notifications = true;
            self.rx.enable_notification(&self.memory).unwrap_or(false) && !self.avail_index_bogus(false)
        } else {
            self.rx_notifications_off();
            false
        }
    }

    /// Turns rx notifications off (VIRTQ_USED_F_NO_NOTIFY) unless they are already.
    fn rx_notifications_off(&mut self) {
        if self.rx_notifications {
            self.rx_notifications = false;
            let _ = self.rx.disable_notification(&self.memory);
        }
    }

    /// Counter snapshot for tests.
    pub fn rx_frames(&self) -> u64 {
        self.counters.rx_frames.load(Ordering::Relaxed)
    }
}
