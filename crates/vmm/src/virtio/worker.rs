//! One worker-thread helper for every virtio device (after Cloud
//! Hypervisor's `EpollHelper`): the thread waits on the queues' ioeventfds,
//! any descriptors the device adds (a tap), and a control channel; it hands
//! each round to the device's [`WorkerHandler`]. The VMM can pause it (it
//! acknowledges, then touches no queue until resumed) and stop it, which
//! hands the handler back with its queues. While paused it can also be
//! asked to look at its handler ([`Worker::inspect`]): a snapshot reads the
//! queues' state that way, at a round boundary, with no request half-done.
//!
//! A handler that panics is caught: its device is marked broken
//! (DEVICE_NEEDS_RESET, through [`WorkerHandler::interrupt`]) with a log
//! line, and the VM goes on.
//!
//! No busy loops: a handler that has more work than its per-round budget
//! says so, and the worker polls again without sleeping, so notifications,
//! other descriptors and control messages are still seen between rounds.

use std::os::fd::{AsRawFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

use super::Interrupt;

/// What a device's worker does.
pub trait WorkerHandler: Send + 'static {
    /// Called when the worker starts or resumes: picks up work queued
    /// meanwhile. Returns true when more work is ready.
    fn start(&mut self) -> bool;
    /// Extra descriptors to poll this round, with the poll events wanted
    /// (0 to skip one this round).
    fn extra_fds(&mut self) -> Vec<(RawFd, i16)> {
        Vec::new()
    }
    /// One round: `notified[i]` is true when queue `i` was notified,
    /// `extra[j]` holds the revents of extra descriptor `j`. Returns true
    /// when more work is ready without waiting.
    fn work(&mut self, notified: &[bool], extra: &[i16]) -> bool;
    /// Whether the device can do nothing more (its backend is gone); the
    /// worker then ends.
    fn is_done(&self) -> bool {
        false
    }
    /// The device's interrupt, marked broken if the handler panics.
    fn interrupt(&self) -> Option<Arc<Interrupt>> {
        None
    }
    /// How long the worker may sleep when nothing is notified (a handler
    /// with deadlines); `None` to sleep until an event. On expiry
    /// [`Self::work`] runs with nothing notified.
    fn poll_timeout(&self) -> Option<Duration> {
        None
    }
    /// Queue `index`'s eventfd was read: `count` notifications (kicks) came
    /// since the last read (a device's counters).
    fn kicked(&mut self, _index: usize, _count: u64) {}
}

/// What a device does when queue `index` is notified (devices whose work is
/// only their queues).
pub trait QueueHandler: Send + 'static {
    /// Processes what is available on queue `index`, up to a budget.
    /// Returns true when work is left for another round.
    fn process_queue(&mut self, index: usize) -> bool;
    /// The device's interrupt, marked broken if the handler panics.
    fn interrupt(&self) -> Option<Arc<Interrupt>> {
        None
    }
    /// `count` notifications of queue `index` were read (a device's counters).
    fn kicked(&mut self, _index: usize, _count: u64) {}
}

/// Adapts a [`QueueHandler`] to a [`WorkerHandler`].
pub struct Queues<Q> {
    handler: Q,
    count: usize,
    pending: Vec<bool>,
}

impl<Q: QueueHandler> Queues<Q> {
    /// `handler` for `count` queues.
    pub fn new(handler: Q, count: usize) -> Self {
        Self {
            handler,
            count,
            pending: vec![false; count],
        }
    }

    /// The queue handler.
    pub fn into_inner(self) -> Q {
        self.handler
    }

    /// The queue handler, to look at.
    pub fn handler(&self) -> &Q {
        &self.handler
    }
}

impl<Q: QueueHandler> WorkerHandler for Queues<Q> {
    fn start(&mut self) -> bool {
        let all = vec![true; self.count];
        self.work(&all, &[])
    }

    fn work(&mut self, notified: &[bool], _extra: &[i16]) -> bool {
        let mut more = false;
        for (i, pending) in self.pending.iter_mut().enumerate() {
            if *pending || notified.get(i).copied().unwrap_or(false) {
                *pending = self.handler.process_queue(i);
                more |= *pending;
            }
        }
        more
    }

    fn interrupt(&self) -> Option<Arc<Interrupt>> {
        self.handler.interrupt()
    }

    fn kicked(&mut self, index: usize, count: u64) {
        self.handler.kicked(index, count);
    }
}

/// A look at (or a change to) the handler, run on the worker thread between rounds.
type Inspection<H> = Box<dyn FnOnce(&mut H) + Send>;

enum Command<H> {
    Pause,
    Resume,
    Stop,
    Inspect(Inspection<H>),
}

/// Errors driving a worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The thread has ended.
    #[error("the device worker has ended")]
    Gone,
    /// No acknowledgement in time.
    #[error("the device worker did not pause within {0} ms")]
    Timeout(u128),
}

/// How long a worker may take to acknowledge a pause.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A running worker thread; stopped (and joined) when dropped.
pub struct Worker<H: WorkerHandler> {
    commands: Sender<Command<H>>,
    acks: Receiver<()>,
    wake: EventFd,
    thread: Option<JoinHandle<Option<H>>>,
}

impl<H: WorkerHandler> Worker<H> {
    /// Starts thread `name` driving `handler`; `events[i]` is queue `i`'s
    /// notification eventfd.
    pub fn spawn(name: String, events: Vec<EventFd>, handler: H) -> std::io::Result<Self> {
        let wake = EventFd::new(libc::EFD_NONBLOCK)?;
        let thread_wake = wake.try_clone()?;
        let (commands, command_rx) = channel();
        let (ack_tx, acks) = channel();
        let interrupt = handler.interrupt();
        let thread = crate::seccomp::spawn_worker(name.clone(), move || {
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                run(handler, &events, &thread_wake, &command_rx, &ack_tx)
            }));
            match r {
                Ok(h) => Some(h),
                Err(_) => {
                    tracing::error!("device worker {name} panicked; the device needs a reset, the VM goes on");
                    if let Some(i) = interrupt {
                        i.mark_broken(&format!("its worker {name} panicked"));
                    }
                    None
                }
            }
        })?;
        Ok(Self {
            commands,
            acks,
            wake,
            thread: Some(thread),
        })
    }

    fn send(&self, c: Command<H>) -> Result<(), WorkerError> {
        self.commands.send(c).map_err(|_| WorkerError::Gone)?;
        let _ = self.wake.write(1);
        Ok(())
    }

    /// Parks the worker: once this returns, it touches no queue and no
    /// guest memory until [`Self::resume`].
    pub fn pause(&self) -> Result<(), WorkerError> {
        self.send(Command::Pause)?;
        match self.acks.recv_timeout(PAUSE_TIMEOUT) {
            Ok(()) => Ok(()),
            Err(RecvTimeoutError::Timeout) => Err(WorkerError::Timeout(PAUSE_TIMEOUT.as_millis())),
            Err(RecvTimeoutError::Disconnected) => Err(WorkerError::Gone),
        }
    }

    /// Runs `f` on the handler on the worker thread, between rounds (or
    /// while paused), and returns its result: how a snapshot reads the
    /// queues a running device owns.
    pub fn inspect<R: Send + 'static>(&self, f: impl FnOnce(&H) -> R + Send + 'static) -> Result<R, WorkerError> {
        self.inspect_mut(move |h: &mut H| f(h))
    }

    /// Like [`Self::inspect`], with the handler mutable: how a snapshot
    /// makes a paused device act (vsock's transport-reset event).
    pub fn inspect_mut<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut H) -> R + Send + 'static,
    ) -> Result<R, WorkerError> {
        let (tx, rx) = channel();
        self.send(Command::Inspect(Box::new(move |h: &mut H| {
            let _ = tx.send(f(h));
        })))?;
        match rx.recv_timeout(PAUSE_TIMEOUT) {
            Ok(r) => Ok(r),
            Err(RecvTimeoutError::Timeout) => Err(WorkerError::Timeout(PAUSE_TIMEOUT.as_millis())),
            Err(RecvTimeoutError::Disconnected) => Err(WorkerError::Gone),
        }
    }

    /// Lets a paused worker run again (it first picks up work queued meanwhile).
    pub fn resume(&self) -> Result<(), WorkerError> {
        self.send(Command::Resume)
    }

    /// Stops the worker and hands its handler back (with the queues it
    /// owns). `None` if the thread panicked.
    pub fn stop(mut self) -> Option<H> {
        self.finish()
    }

    /// Tells the worker to stop without waiting for it (a driver reset: the
    /// worker may be in the middle of slow host I/O). The handle says when
    /// it has ended.
    pub fn stop_async(mut self) -> Stopping {
        let Some(t) = self.thread.take() else {
            return Stopping::done();
        };
        let _ = self.send(Command::Stop);
        Stopping {
            thread: Some(Box::new(t)),
        }
    }

    fn finish(&mut self) -> Option<H> {
        let t = self.thread.take()?;
        let _ = self.send(Command::Stop);
        t.join().ok().flatten()
    }
}

impl<H: WorkerHandler> Drop for Worker<H> {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// A thread that can be asked whether it has ended, and joined.
trait Ending: Send {
    fn is_finished(&self) -> bool;
    fn join(self: Box<Self>);
}

impl<T: Send + 'static> Ending for JoinHandle<T> {
    fn is_finished(&self) -> bool {
        JoinHandle::is_finished(self)
    }

    fn join(self: Box<Self>) {
        let _ = (*self).join();
    }
}

/// A worker told to stop ([`Worker::stop_async`]) that may not have ended
/// yet. Dropping it does not wait: a worker stuck in host I/O is left to end
/// on its own (it touches nothing once it returns to its loop).
pub struct Stopping {
    thread: Option<Box<dyn Ending>>,
}

impl Stopping {
    /// A handle for a device with no worker running: already done.
    pub fn done() -> Self {
        Self { thread: None }
    }

    /// A handle that ends when `thread` does (tests, devices with their own threads).
    pub fn of_thread<T: Send + 'static>(thread: JoinHandle<T>) -> Self {
        Self {
            thread: Some(Box::new(thread)),
        }
    }

    /// Waits at most `limit` for the worker to end; true once it has (and
    /// was joined).
    pub fn wait(&mut self, limit: Duration) -> bool {
        let Some(t) = self.thread.as_ref() else {
            return true;
        };
        let deadline = std::time::Instant::now() + limit;
        let mut nap = Duration::from_micros(20);
        while !t.is_finished() {
            let now = std::time::Instant::now();
            if now >= deadline {
                return false;
            }
            std::thread::sleep(nap.min(deadline - now));
            nap = (nap * 2).min(Duration::from_millis(5));
        }
        if let Some(t) = self.thread.take() {
            t.join();
        }
        true
    }
}

fn pollfd(fd: RawFd, events: i16) -> libc::pollfd {
    libc::pollfd { fd, events, revents: 0 }
}

/// Waits while paused; returns false when told to stop (or orphaned).
fn paused<H>(handler: &mut H, commands: &Receiver<Command<H>>, acks: &Sender<()>) -> bool {
    let _ = acks.send(());
    loop {
        match commands.recv() {
            Ok(Command::Resume) => return true,
            Ok(Command::Pause) => {
                let _ = acks.send(());
            }
            Ok(Command::Inspect(f)) => f(handler),
            Ok(Command::Stop) | Err(_) => return false,
        }
    }
}

fn run<H: WorkerHandler>(
    mut handler: H,
    events: &[EventFd],
    wake: &EventFd,
    commands: &Receiver<Command<H>>,
    acks: &Sender<()>,
) -> H {
    let mut more = handler.start();
    let mut notified = vec![false; events.len()];
    loop {
        if handler.is_done() {
            break;
        }
        let extra = handler.extra_fds();
        let mut fds: Vec<libc::pollfd> = events.iter().map(|e| pollfd(e.as_raw_fd(), libc::POLLIN)).collect();
        fds.extend(extra.iter().map(|&(fd, ev)| pollfd(fd, ev)));
        fds.push(pollfd(wake.as_raw_fd(), libc::POLLIN));
        let timeout = match (more, handler.poll_timeout()) {
            (true, _) => 0,
            (false, None) => -1,
            // Rounded up, so a deadline is never polled for in a loop.
            (false, Some(d)) => i32::try_from(d.as_micros().div_ceil(1000)).unwrap_or(i32::MAX),
        };
        // SAFETY: `fds` is a valid pollfd array of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            continue;
        }
        if fds[fds.len() - 1].revents != 0 {
            let _ = wake.read();
            let mut stop = false;
            let mut resumed = false;
            while let Ok(c) = commands.try_recv() {
                match c {
                    Command::Pause => {
                        if !paused(&mut handler, commands, acks) {
                            stop = true;
                            break;
                        }
                        resumed = true;
                    }
                    Command::Resume => {}
                    Command::Inspect(f) => f(&mut handler),
                    Command::Stop => {
                        stop = true;
                        break;
                    }
                }
            }
            if stop {
                break;
            }
            if resumed {
                // Queue notifications that came meanwhile stay in their
                // eventfds for the next poll; start() picks up the rest.
                more = handler.start();
                continue;
            }
        }
        for (i, e) in events.iter().enumerate() {
            notified[i] = fds[i].revents & libc::POLLIN != 0;
            if notified[i] {
                if let Ok(count) = e.read() {
                    handler.kicked(i, count);
                }
            }
        }
        let extra_revents: Vec<i16> = fds[events.len()..events.len() + extra.len()]
            .iter()
            .map(|f| f.revents)
            .collect();
        more = handler.work(&notified, &extra_revents);
    }
    handler
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Counts notifications; each call does at most `budget` of `backlog`.
    struct Counter {
        seen: Arc<AtomicUsize>,
        backlog: usize,
        budget: usize,
    }

    impl QueueHandler for Counter {
        fn process_queue(&mut self, _index: usize) -> bool {
            let n = self.backlog.min(self.budget);
            self.backlog -= n;
            self.seen.fetch_add(n, Ordering::SeqCst);
            self.backlog > 0
        }
    }

    fn wait_for(what: &str, f: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn budgets_pause_resume_and_stop_hands_back_the_handler() {
        let seen = Arc::new(AtomicUsize::new(0));
        let ev = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let kick = ev.try_clone().expect("clone");
        let h = Counter {
            seen: seen.clone(),
            backlog: 1000,
            budget: 10,
        };
        let w = Worker::spawn("t".into(), vec![ev], Queues::new(h, 1)).expect("spawn");
        // A backlog bigger than the budget is worked off over many rounds.
        wait_for("backlog", || seen.load(Ordering::SeqCst) == 1000);
        w.pause().expect("pause");
        let left = w.inspect(|q: &Queues<Counter>| q.handler().backlog).expect("inspect");
        assert_eq!(left, 0, "inspected while paused");
        let before = seen.load(Ordering::SeqCst);
        // Work that arrives while paused waits.
        kick.write(1).expect("kick");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(seen.load(Ordering::SeqCst), before);
        w.resume().expect("resume");
        let back = w.stop().expect("handler back").into_inner();
        assert_eq!(back.backlog, 0);
    }

    struct Panics(Arc<Interrupt>);

    impl QueueHandler for Panics {
        fn process_queue(&mut self, _index: usize) -> bool {
            panic!("a device bug");
        }
        fn interrupt(&self) -> Option<Arc<Interrupt>> {
            Some(self.0.clone())
        }
    }

    #[test]
    fn a_worker_that_panics_marks_its_device_broken() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let interrupt = Arc::new(Interrupt::new(irq));
        let ev = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let w = Worker::spawn("t".into(), vec![ev], Queues::new(Panics(interrupt.clone()), 1)).expect("spawn");
        wait_for("broken", || interrupt.is_broken());
        assert!(w.pause().is_err(), "the worker is gone");
        assert!(w.stop().is_none());
    }

    #[test]
    fn dropping_a_paused_worker_joins_it() {
        let ev = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let h = Counter {
            seen: Arc::default(),
            backlog: 0,
            budget: 1,
        };
        let w = Worker::spawn("t".into(), vec![ev], Queues::new(h, 1)).expect("spawn");
        w.pause().expect("pause");
        drop(w);
    }
}
