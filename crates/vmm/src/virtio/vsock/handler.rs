//! The vsock device's worker: guest tx packets into the muxer, muxer
//! packets into guest rx buffers, the muxer's epoll descriptor polled
//! beside the three queues by the shared [`Worker`](crate::virtio::Worker).
//!
//! No spin: rx is worked only while packets wait and the guest gave
//! buffers (else the worker sleeps until the rx queue is notified); tx is
//! left unread while [`MAX_PENDING_RSTS`](super::muxer::MAX_PENDING_RSTS)
//! RSTs wait for rx buffers; each call is bounded by a budget.

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueOwnedT, QueueState, QueueT};

use super::muxer::Muxer;
use super::packet::{read_packet, write_packet, HDR_LEN, MAX_PKT_DATA};
use super::{VsockCounters, EVENT_QUEUE, RX_QUEUE, TX_QUEUE};
use crate::memory::GuestMemoryMmap;
use crate::virtio::{Interrupt, WorkerHandler, VIRTIO_MMIO_INT_VRING};

/// The event a transport reset puts on the event queue (`le32 id`).
pub const VIRTIO_VSOCK_EVENT_TRANSPORT_RESET: u32 = 0;

/// Most chains handled per queue per call.
pub const BUDGET: usize = 256;

/// The device's queues and its muxer.
pub struct VsockHandler {
    memory: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    event: Queue,
    interrupt: Arc<Interrupt>,
    muxer: Muxer,
    counters: Arc<VsockCounters>,
    scratch: Vec<u8>,
    tx_more: bool,
    rx_more: bool,
    tx_stalled: bool,
}

fn add(c: &std::sync::atomic::AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl VsockHandler {
    /// A handler for the rx, tx and event queues (in that order in `queues`).
    pub fn new(
        memory: GuestMemoryMmap,
        mut queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
        muxer: Muxer,
        counters: Arc<VsockCounters>,
    ) -> Result<Self, String> {
        if queues.len() != 3 {
            return Err("virtio-vsock needs three queues".into());
        }
        let event = queues.remove(EVENT_QUEUE);
        let tx = queues.remove(TX_QUEUE);
        let rx = queues.remove(RX_QUEUE);
        Ok(Self {
            memory,
            rx,
            tx,
            event,
            interrupt,
            muxer,
            counters,
            scratch: vec![0u8; MAX_PKT_DATA as usize],
            tx_more: false,
            rx_more: false,
            tx_stalled: false,
        })
    }

    /// The muxer (tests).
    pub fn muxer(&mut self) -> &mut Muxer {
        &mut self.muxer
    }

    /// The device's interrupt.
    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    /// The host port the next host-initiated connection tries first.
    pub fn next_local_port(&self) -> u32 {
        self.muxer.next_local_port()
    }

    /// The rx, tx and event queues' state (a snapshot reads them here: the
    /// transport's copy dates from activation).
    pub fn queue_states(&self) -> Vec<QueueState> {
        vec![self.rx.state(), self.tx.state(), self.event.state()]
    }

    /// A transport reset, as a snapshot makes one (Firecracker's
    /// `send_transport_reset_event`): every connection is closed with the
    /// old muxer (host clients read end of file; `fresh` takes its place,
    /// over the same listener), and [`VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`]
    /// is written to the driver's next event buffer and signalled, so the
    /// driver drops its connections and reads the CID again, in this VM
    /// and in any restored from the snapshot. An error when the driver
    /// left no event buffer (the connections are closed all the same).
    pub fn reset_transport(&mut self, mut fresh: Muxer) -> Result<(), String> {
        // New host connections take new ports: the guest may see them
        // before it has handled the event.
        fresh.set_next_local_port(self.muxer.next_local_port());
        self.muxer = fresh;
        self.tx_more = false;
        self.rx_more = false;
        self.tx_stalled = false;
        if self.interrupt.is_broken() {
            return Err("the device is broken (DEVICE_NEEDS_RESET)".into());
        }
        if self.event.iter(&self.memory).is_err() {
            self.interrupt
                .mark_broken("virtio-vsock: the event avail index is more than the queue size ahead");
            return Err("the event queue's avail index is bogus".into());
        }
        let chain = self
            .event
            .pop_descriptor_chain(&self.memory)
            .ok_or("the driver left no buffer in the event queue")?;
        let head = chain.head_index();
        let event = VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.to_le_bytes();
        let written = match chain.writer(&self.memory) {
            Ok(mut w) if w.available_bytes() >= event.len() => {
                std::io::Write::write_all(&mut w, &event).map_or(0, |()| event.len() as u32)
            }
            _ => 0,
        };
        self.event
            .add_used(&self.memory, head, written)
            .map_err(|e| format!("event queue: {e}"))?;
        self.interrupt.signal(VIRTIO_MMIO_INT_VRING);
        if written == 0 {
            add(&self.counters.bad_chains, 1);
            return Err("the driver's event buffer is not a writable 4-byte buffer".into());
        }
        Ok(())
    }

    fn notify(&mut self, rx: bool) {
        let q = if rx { &mut self.rx } else { &mut self.tx };
        if q.needs_notification(&self.memory).unwrap_or(true) {
            self.interrupt.signal(VIRTIO_MMIO_INT_VRING);
        }
    }

    /// Reads guest packets from the tx queue into the muxer. Returns true
    /// when more are ready (the budget ran out).
    pub fn process_tx(&mut self) -> bool {
        if self.interrupt.is_broken() {
            return false;
        }
        if self.tx.iter(&self.memory).is_err() {
            self.interrupt
                .mark_broken("virtio-vsock: the tx avail index is more than the queue size ahead");
            return false;
        }
        let mut done = 0;
        let mut more = false;
        while !self.muxer.tx_blocked() {
            let Some(chain) = self.tx.pop_descriptor_chain(&self.memory) else {
                break;
            };
            let head = chain.head_index();
            match chain.reader(&self.memory) {
                Ok(mut r) => match read_packet(&mut r, &mut self.scratch) {
                    Ok(h) => self.muxer.on_guest_packet(&h, &self.scratch[..h.len as usize]),
                    Err(_) => add(&self.counters.dropped, 1),
                },
                Err(_) => add(&self.counters.bad_chains, 1),
            }
            if self.tx.add_used(&self.memory, head, 0).is_err() {
                break;
            }
            done += 1;
            if done == BUDGET {
                more = true;
                break;
            }
        }
        if self.muxer.tx_blocked() {
            self.tx_stalled = true;
        }
        if done > 0 {
            self.notify(false);
        }
        more
    }

    /// Fills guest rx buffers with what the muxer has for the guest.
    /// Returns true when more is ready (the budget ran out).
    pub fn process_rx(&mut self) -> bool {
        if self.interrupt.is_broken() || !self.muxer.has_rx() {
            return false;
        }
        if self.rx.iter(&self.memory).is_err() {
            self.interrupt
                .mark_broken("virtio-vsock: the rx avail index is more than the queue size ahead");
            return false;
        }
        let mut done = 0;
        let mut more = false;
        while self.muxer.has_rx() {
            let Some(chain) = self.rx.pop_descriptor_chain(&self.memory) else {
                break;
            };
            let head = chain.head_index();
            let len = match chain.writer(&self.memory) {
                Ok(mut w) if w.available_bytes() >= HDR_LEN => {
                    match self.muxer.next_rx(w.available_bytes(), &mut self.scratch) {
                        None => {
                            self.rx.go_to_previous_position();
                            break;
                        }
                        Some((h, n)) => match write_packet(&mut w, &h, &self.scratch[..n]) {
                            Ok(len) => {
                                add(&self.counters.rx_packets, 1);
                                len
                            }
                            Err(_) => {
                                add(&self.counters.bad_chains, 1);
                                0
                            }
                        },
                    }
                }
                _ => {
                    add(&self.counters.bad_chains, 1);
                    0
                }
            };
            if self.rx.add_used(&self.memory, head, len as u32).is_err() {
                break;
            }
            done += 1;
            if done == BUDGET {
                more = self.muxer.has_rx();
                break;
            }
        }
        if done > 0 {
            self.notify(true);
        }
        more
    }

    /// One round of the worker.
    fn round(&mut self, rx_kick: bool, tx_kick: bool, events: bool) -> bool {
        let mut more = false;
        if events {
            more |= self.muxer.handle_events();
        }
        self.muxer.expire(Instant::now());
        if tx_kick || self.tx_more {
            self.tx_more = self.process_tx();
        }
        if rx_kick || self.rx_more || self.muxer.has_rx() {
            self.rx_more = self.process_rx();
        }
        // RSTs drained: guest tx that waited can be read again.
        if self.tx_stalled && !self.muxer.tx_blocked() {
            self.tx_stalled = false;
            self.tx_more = true;
        }
        more || self.tx_more || self.rx_more
    }
}

impl WorkerHandler for VsockHandler {
    fn start(&mut self) -> bool {
        self.muxer.start();
        self.tx_more = true;
        self.round(true, true, true)
    }

    fn extra_fds(&mut self) -> Vec<(RawFd, i16)> {
        vec![(self.muxer.epoll_fd(), libc::POLLIN)]
    }

    fn work(&mut self, notified: &[bool], extra: &[i16]) -> bool {
        let q = |i: usize| notified.get(i).copied().unwrap_or(false);
        let events = extra.first().is_some_and(|&r| r != 0);
        self.round(q(RX_QUEUE), q(TX_QUEUE), events)
    }

    fn poll_timeout(&self) -> Option<Duration> {
        let d = self.muxer.next_deadline()?;
        Some(d.saturating_duration_since(Instant::now()))
    }

    fn interrupt(&self) -> Option<Arc<Interrupt>> {
        Some(self.interrupt.clone())
    }
}
