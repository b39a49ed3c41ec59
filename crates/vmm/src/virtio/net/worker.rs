//! The NIC's worker thread: polls the rx and tx queues' ioeventfds and the
//! tap. The tap is polled only while the guest has rx buffers for its
//! frames; with a frame waiting and no buffers, the worker sleeps until the
//! driver notifies the rx queue. Tx floods are worked in bursts, alternating
//! with rx, so neither side starves the other. No busy loops.

use std::os::fd::AsRawFd;
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::EventFd;

use super::handler::{NetHandler, RxState};
use super::{RX_QUEUE, TX_QUEUE};

/// A running NIC worker, stopped when dropped.
pub struct NetWorker {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl NetWorker {
    /// Starts thread `name` driving `handler`; `events` are the rx and tx queues' eventfds.
    pub fn spawn(name: String, events: Vec<EventFd>, mut handler: NetHandler) -> std::io::Result<Self> {
        if events.len() != 2 {
            return Err(std::io::Error::other("virtio-net needs two queue eventfds"));
        }
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let stop_fd = stop.try_clone()?;
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || run(&events, &stop_fd, &mut handler))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

fn pollfd(fd: i32, events: i16) -> libc::pollfd {
    libc::pollfd { fd, events, revents: 0 }
}

fn run(events: &[EventFd], stop: &EventFd, h: &mut NetHandler) {
    let mut tx_more = h.process_tx();
    let mut rx_more = matches!(h.process_rx(), RxState::More);
    loop {
        if h.is_dead() {
            break;
        }
        // Rx notifications on only while a frame waits for buffers.
        if h.arm_rx_notification() {
            rx_more = true;
        }
        let tap_events = if h.rx_blocked() { 0 } else { libc::POLLIN };
        let mut fds = [
            pollfd(events[RX_QUEUE].as_raw_fd(), libc::POLLIN),
            pollfd(events[TX_QUEUE].as_raw_fd(), libc::POLLIN),
            pollfd(h.backend_fd(), tap_events),
            pollfd(stop.as_raw_fd(), libc::POLLIN),
        ];
        let timeout = if tx_more || rx_more { 0 } else { -1 };
        // SAFETY: `fds` is a valid array of 4 pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            continue;
        }
        if fds[3].revents != 0 {
            break;
        }
        let mut do_rx = rx_more;
        let mut do_tx = tx_more;
        if fds[0].revents & libc::POLLIN != 0 {
            let _ = events[RX_QUEUE].read();
            do_rx = true;
        }
        if fds[1].revents & libc::POLLIN != 0 {
            let _ = events[TX_QUEUE].read();
            do_tx = true;
        }
        if fds[2].revents != 0 {
            // POLLIN, or POLLERR/POLLHUP when the tap went away: the read says which.
            do_rx = true;
        }
        if do_tx {
            tx_more = h.process_tx();
        }
        if do_rx {
            rx_more = matches!(h.process_rx(), RxState::More);
        }
    }
    tracing::debug!("virtio-net worker ends: {}", h.counters().summary());
}

impl Drop for NetWorker {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
