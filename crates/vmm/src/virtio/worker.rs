//! The per-device worker thread: waits on the queues' ioeventfds and hands
//! each notification to the device's queue handler.

use std::os::fd::AsRawFd;
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::EventFd;

/// What a device does when queue `index` is notified.
pub trait QueueHandler: Send + 'static {
    /// Processes everything available on queue `index`.
    fn process_queue(&mut self, index: usize);
}

/// A running worker thread, stopped when dropped.
pub struct Worker {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts a thread named `name` that calls `handler.process_queue(i)`
    /// whenever `events[i]` is signalled.
    pub fn spawn<H: QueueHandler>(name: String, events: Vec<EventFd>, mut handler: H) -> std::io::Result<Self> {
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let stop_fd = stop.try_clone()?;
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            let mut fds: Vec<libc::pollfd> = events
                .iter()
                .map(|e| libc::pollfd {
                    fd: e.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            fds.push(libc::pollfd {
                fd: stop_fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            // Work the driver queued before activation is picked up at once.
            for i in 0..events.len() {
                handler.process_queue(i);
            }
            loop {
                // SAFETY: `fds` is a valid pollfd array of the given length.
                let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
                if n < 0 {
                    continue;
                }
                if fds[events.len()].revents != 0 {
                    return;
                }
                for (i, e) in events.iter().enumerate() {
                    if fds[i].revents & libc::POLLIN != 0 {
                        let _ = e.read();
                        handler.process_queue(i);
                    }
                }
            }
        })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
