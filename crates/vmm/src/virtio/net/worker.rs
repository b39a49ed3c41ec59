//! The NIC's worker: the shared [`Worker`] helper driving a [`NetLoop`],
//! which polls the tap as an extra descriptor. The tap is polled while the
//! rx backlog (frames read ahead of the guest's buffers) has room; with it
//! full and no buffers, the worker sleeps until the driver notifies the rx
//! queue. Tx floods are worked in bursts, alternating with rx, so neither
//! side starves the other. No busy loops.

use std::os::fd::RawFd;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::handler::{NetHandler, RxState};
use super::{NetCounters, RX_QUEUE, TX_QUEUE};
use crate::virtio::{Interrupt, Stopping, Worker, WorkerError, WorkerHandler};

/// A NIC's handler with the rx/tx state carried between rounds.
pub struct NetLoop {
    h: NetHandler,
    tx_more: bool,
    rx_more: bool,
}

impl NetLoop {
    /// The handler (and its queues).
    pub fn into_inner(self) -> NetHandler {
        self.h
    }
}

impl NetLoop {
    /// A loop around `h` with no work pending (tests drive it by hand).
    #[cfg(test)]
    pub(crate) fn new(h: NetHandler) -> Self {
        Self {
            h,
            tx_more: false,
            rx_more: false,
        }
    }

    /// One rx round, then rx notifications on only while frames wait for
    /// buffers (so the driver tells us when it adds some). Buffers added
    /// before they went on make another round due at once: the worker must
    /// not sleep then (the driver, having seen no request, will not kick).
    fn rx_round(&mut self) {
        self.rx_more = match self.h.process_rx() {
            RxState::More => true,
            RxState::NoBuffers | RxState::Drained | RxState::Dead => self.h.arm_rx_notification(),
        };
    }
}

impl WorkerHandler for NetLoop {
    fn interrupt(&self) -> Option<Arc<Interrupt>> {
        Some(self.h.interrupt().clone())
    }

    fn start(&mut self) -> bool {
        self.tx_more = self.h.process_tx();
        self.rx_round();
        self.tx_more || self.rx_more
    }

    fn extra_fds(&mut self) -> Vec<(RawFd, i16)> {
        let tap_events = if self.h.rx_blocked() { 0 } else { libc::POLLIN };
        vec![(self.h.backend_fd(), tap_events)]
    }

    fn work(&mut self, notified: &[bool], extra: &[i16]) -> bool {
        let queue = |i: usize| notified.get(i).copied().unwrap_or(false);
        // POLLIN, or POLLERR/POLLHUP when the tap went away: the read says which.
        let do_rx = self.rx_more || queue(RX_QUEUE) || extra.first().is_some_and(|&r| r != 0);
        let do_tx = self.tx_more || queue(TX_QUEUE);
        if do_tx {
            self.tx_more = self.h.process_tx();
        }
        if do_rx {
            self.rx_round();
        }
        self.tx_more || self.rx_more
    }

    fn is_done(&self) -> bool {
        self.h.is_dead()
    }

    fn kicked(&mut self, index: usize, count: u64) {
        let c = self.h.counters();
        let counter = if index == RX_QUEUE { &c.rx_kicks } else { &c.tx_kicks };
        NetCounters::add(counter, count);
    }
}

/// A running NIC worker, stopped when dropped.
pub struct NetWorker(Worker<NetLoop>);

impl NetWorker {
    /// Starts thread `name` driving `handler`; `events` are the rx and tx queues' eventfds.
    pub fn spawn(name: String, events: Vec<EventFd>, handler: NetHandler) -> std::io::Result<Self> {
        if events.len() != 2 {
            return Err(std::io::Error::other("virtio-net needs two queue eventfds"));
        }
        let l = NetLoop {
            h: handler,
            tx_more: false,
            rx_more: false,
        };
        Ok(Self(Worker::spawn(name, events, l)?))
    }

    /// Parks the worker.
    pub fn pause(&self) -> Result<(), WorkerError> {
        self.0.pause()
    }

    /// Lets it run again.
    pub fn resume(&self) -> Result<(), WorkerError> {
        self.0.resume()
    }

    /// The rx and tx queues' state, read on the worker thread.
    pub fn queue_states(&self) -> Result<Vec<virtio_queue::QueueState>, WorkerError> {
        self.0.inspect(|l: &NetLoop| l.h.queue_states())
    }

    /// Tells it to stop without waiting (a driver reset).
    pub fn stop_async(self) -> Stopping {
        self.0.stop_async()
    }

    /// Stops it and hands the handler back.
    pub fn stop(self) -> Option<NetHandler> {
        let h = self.0.stop()?;
        tracing::debug!("virtio-net worker ends: {}", h.h.counters().summary());
        Some(h.into_inner())
    }
}
