//! The NIC's worker: the shared [`Worker`] helper driving a [`NetLoop`],
//! which polls the tap as an extra descriptor. The tap is polled while the
//! rx backlog (frames read ahead of the guest's buffers) has room; with it
//! full and no buffers, the worker sleeps until the driver notifies the rx
//! queue. Tx floods are worked in bursts, alternating with rx, so neither
//! side starves the other. No busy loops, except inside a polling window
//! (`--net ...,poll=`, `crate::virtio::poll`): after a round that moved
//! frames the worker keeps looking at the tx queue (notifications off) and
//! the tap without sleeping, giving its core away between empty looks,
//! until the window runs out empty.

use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use super::handler::{NetHandler, RxState};
use super::{NetCounters, RX_QUEUE, TX_QUEUE};
use crate::virtio::poll::{thread_cpu_ns, CpuCounter, PollMode, PollWindow};
use crate::virtio::{Interrupt, Stopping, Worker, WorkerError, WorkerHandler};

/// A NIC's handler with the rx/tx state carried between rounds.
pub struct NetLoop {
    h: NetHandler,
    tx_more: bool,
    rx_more: bool,
    poll: PollWindow,
    /// Inside a polling window: tx notifications are off (rx ones too), and
    /// each round looks at both queues and the tap whether or not they
    /// signalled.
    polling: bool,
    /// When the current polling stretch began, and the thread's CPU time then.
    stretch: Option<(Instant, u64)>,
    /// The thread's CPU time, for the `worker_cpu_us` counter.
    cpu: CpuCounter,
}

impl NetLoop {
    /// The handler (and its queues).
    pub fn into_inner(self) -> NetHandler {
        self.h
    }
}

impl NetLoop {
    /// A loop around `h` with no work pending, polling per `poll` (tests
    /// drive it by hand).
    pub(crate) fn new(h: NetHandler, poll: PollMode) -> Self {
        Self {
            h,
            tx_more: false,
            rx_more: false,
            poll: PollWindow::new(poll),
            polling: false,
            stretch: None,
            cpu: CpuCounter::default(),
        }
    }

    /// Whether a polling window is open (tx notifications off).
    #[cfg(test)]
    pub(crate) fn polling(&self) -> bool {
        self.polling
    }

    /// After a round that began at `started` (`None` when polling is off) and moved `moved` frames:
    /// true to come back without sleeping (inside the polling window),
    /// false to sleep (tx notifications back on first; chains that came
    /// meanwhile make the round due again).
    fn after_round(&mut self, moved: u64, started: Option<Instant>) -> bool {
        let Some(started) = started else {
            return false;
        };
        let now = Instant::now();
        if self.polling && moved > 0 {
            NetCounters::add(&self.h.counters().polled, moved);
        }
        if self
            .poll
            .after_round(usize::try_from(moved).unwrap_or(usize::MAX), started, now)
        {
            if !self.polling {
                self.polling = true;
                self.h.set_polling(true);
                self.stretch = thread_cpu_ns().map(|cpu| (started, cpu));
            }
            if moved == 0 {
                // Give the core away between looks: the vCPU that is to
                // send the next frame may be waiting for it.
                std::thread::yield_now();
            }
            return true;
        }
        if self.polling {
            self.polling = false;
            if let Some((began, cpu0)) = self.stretch.take() {
                if let Some(cpu1) = thread_cpu_ns() {
                    let cpu = Duration::from_nanos(cpu1.saturating_sub(cpu0));
                    self.poll.stretch_ended(cpu, now.saturating_duration_since(began), now);
                }
            }
            self.h.set_polling(false);
            if self.h.arm_tx_notification() {
                self.poll.rearmed();
                self.tx_more = true;
            }
            if self.h.arm_rx_notification() {
                self.poll.rearmed();
                self.rx_more = true;
            }
        }
        false
    }

    /// Adds the thread's CPU time since the last call to the counters.
    fn count_cpu(&mut self) {
        let us = self.cpu.elapsed_us();
        NetCounters::add(&self.h.counters().worker_cpu_us, us);
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
        self.count_cpu();
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
        let tap = extra.first().is_some_and(|&r| r != 0);
        let do_rx = self.rx_more || queue(RX_QUEUE) || tap || self.polling;
        let do_tx = self.tx_more || queue(TX_QUEUE) || self.polling;
        // The clock is read only where a polling window needs it.
        let started = (self.poll.mode() != PollMode::Off).then(Instant::now);
        let before = self.h.progress();
        if do_tx {
            self.tx_more = self.h.process_tx();
        }
        if do_rx {
            self.rx_round();
        }
        let moved = self.h.progress() - before;
        let keep_polling = self.after_round(moved, started);
        let more = self.tx_more || self.rx_more || keep_polling;
        if !more {
            self.count_cpu();
        }
        more
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
    /// `poll` is how it polls after a round (`--net ...,poll=`).
    pub fn spawn(name: String, events: Vec<EventFd>, handler: NetHandler, poll: PollMode) -> std::io::Result<Self> {
        if events.len() != 2 {
            return Err(std::io::Error::other("virtio-net needs two queue eventfds"));
        }
        Ok(Self(Worker::spawn(name, events, NetLoop::new(handler, poll))?))
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
