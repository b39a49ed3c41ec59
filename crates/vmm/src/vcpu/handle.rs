//! A vCPU's thread and the handle the VMM drives it with.
//!
//! The thread runs a small state machine: **Running** (`KVM_RUN` in a loop),
//! **Paused** (blocked on the event channel), **Exited** (the vCPU ended the
//! VM, or was told to finish). Events ([`VcpuEvent`]) arrive on a channel;
//! the sender kicks the thread ([`super::kick`]) so a running vCPU leaves
//! `KVM_RUN` and reads them. Every event gets exactly one
//! [`VcpuResponse`].

use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{kick, Step, Vcpu};
use crate::control::{ExitReason, VmControl};

/// What the VMM asks of a vCPU thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuEvent {
    /// Stop running guest code until Resume.
    Pause,
    /// Run guest code again.
    Resume,
    /// End the thread.
    Finish,
    /// Answer with the vCPU's state (only while paused).
    SaveState,
}

/// How a vCPU thread answered an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuResponse {
    /// Now paused.
    Paused,
    /// Now running.
    Resumed,
    /// The thread is ending (answer to Finish).
    Exited,
    /// The event makes no sense in this state (e.g. Resume after the vCPU ended the VM).
    NotAllowed(String),
    /// The vCPU's state (answer to SaveState).
    State(SavedVcpu),
}

/// A vCPU's state as read by its thread, or why it could not be read.
#[derive(Debug, Clone)]
pub struct SavedVcpu(pub std::sync::Arc<Result<crate::snapshot::VcpuState, String>>);

impl PartialEq for SavedVcpu {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SavedVcpu {}

/// Errors driving a vCPU thread.
#[derive(Debug, thiserror::Error)]
pub enum VcpuHandleError {
    /// The thread could not be started.
    #[error("cannot start the thread of vCPU {0}: {1}")]
    Spawn(usize, std::io::Error),
    /// The thread is gone.
    #[error("vCPU {0} has ended")]
    Gone(usize),
    /// No answer in time.
    #[error("vCPU {0} did not answer {1:?} within {2} ms")]
    Timeout(usize, VcpuEvent, u128),
    /// The event was refused.
    #[error("vCPU {0}: {1}")]
    Refused(usize, String),
}

/// The VMM's end of a vCPU thread.
pub struct VcpuHandle {
    index: usize,
    /// A kick was sent and the thread has not seen it yet. Kicks are only
    /// sent when this is clear: a real-time signal per event would queue,
    /// and a flood of queued signals can keep a vCPU thread busy
    /// delivering them (seen on kvm_pvm), so it never reads its events.
    kick_pending: Arc<AtomicBool>,
    events: Sender<VcpuEvent>,
    responses: Receiver<VcpuResponse>,
    /// Signalled once, when the thread has its filter and is about to run.
    ready: Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Paused,
    Exited,
}

impl VcpuHandle {
    /// Starts `vcpu`'s thread, running or (with `paused`) waiting for Resume.
    pub fn spawn(vcpu: Vcpu, paused: bool) -> Result<Self, VcpuHandleError> {
        let index = vcpu.index;
        let (events, event_rx) = channel();
        let (response_tx, responses) = channel();
        let (ready_tx, ready) = channel();
        let kick_pending = Arc::new(AtomicBool::new(false));
        let seen = kick_pending.clone();
        let control = vcpu.control.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || {
                guarded(index, &control, &response_tx, || {
                    thread_main(vcpu, paused, &event_rx, &response_tx, &seen, &ready_tx);
                });
            })
            .map_err(|e| VcpuHandleError::Spawn(index, e))?;
        Ok(Self {
            index,
            kick_pending,
            events,
            responses,
            ready,
            thread: Some(thread),
        })
    }

    /// Waits, at most `timeout`, until the thread has installed its filter
    /// and is about to run (or park); false if it did not in time or ended.
    /// The VMM thread waits for this before its own set-up after a start, so
    /// that on a busy host the vCPU gets the core first.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        self.ready.recv_timeout(timeout).is_ok()
    }

    /// This vCPU's index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Sends `event` and kicks the thread out of `KVM_RUN`.
    pub fn send(&self, event: VcpuEvent) -> Result<(), VcpuHandleError> {
        self.events.send(event).map_err(|_| VcpuHandleError::Gone(self.index))?;
        self.kick();
        Ok(())
    }

    /// Kicks the thread out of `KVM_RUN`, unless a kick is still on its way.
    fn kick(&self) {
        if let Some(t) = &self.thread {
            if !t.is_finished() && !self.kick_pending.swap(true, Ordering::SeqCst) {
                kick::kick(t.as_pthread_t());
            }
        }
    }

    /// Waits for the answer to an event sent with [`Self::send`]. While
    /// waiting, the thread is kicked again now and then if the last kick
    /// was seen (belt and braces: the thread reads its events before every
    /// `KVM_RUN`, and a kick makes the next `KVM_RUN` return at once).
    pub fn response(&self, event: VcpuEvent, timeout: Duration) -> Result<VcpuResponse, VcpuHandleError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(VcpuHandleError::Timeout(self.index, event, timeout.as_millis()));
            }
            match self.responses.recv_timeout(left.min(Duration::from_millis(20))) {
                Ok(r) => return Ok(r),
                Err(RecvTimeoutError::Timeout) => self.kick(),
                Err(RecvTimeoutError::Disconnected) => return Err(VcpuHandleError::Gone(self.index)),
            }
        }
    }

    /// Sends `event` and waits for the expected answer.
    pub fn request(&self, event: VcpuEvent, timeout: Duration) -> Result<(), VcpuHandleError> {
        self.send(event)?;
        match self.response(event, timeout)? {
            VcpuResponse::NotAllowed(why) => Err(VcpuHandleError::Refused(self.index, why)),
            _ => Ok(()),
        }
    }

    /// Tells the thread to finish and joins it. Returns false (and leaves
    /// the thread detached, logging it) only if it did not end in `timeout`.
    pub fn finish(mut self, timeout: Duration) -> bool {
        let Some(thread) = self.thread.take() else { return true };
        let _ = self.events.send(VcpuEvent::Finish);
        let deadline = Instant::now() + timeout;
        while !thread.is_finished() && Instant::now() < deadline {
            if !self.kick_pending.swap(true, Ordering::SeqCst) {
                kick::kick(thread.as_pthread_t());
            }
            // Wakes as soon as the thread answers; else looks again after 2 ms.
            let _ = self.responses.recv_timeout(Duration::from_millis(2));
        }
        if thread.is_finished() {
            let _ = thread.join();
            true
        } else {
            tracing::error!("vCPU {} did not stop within {} ms", self.index, timeout.as_millis());
            false
        }
    }
}

/// Runs a vCPU thread's body; if it panics, the VM ends with a reason
/// (a VM whose vCPU died would otherwise wait forever) and whoever waits
/// for an answer hears that the vCPU has exited.
fn guarded(index: usize, control: &VmControl, responses: &Sender<VcpuResponse>, body: impl FnOnce()) {
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        kick::clear();
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        control.request_exit(ExitReason::VmmError(format!(
            "the vCPU {index} thread panicked: {what}"
        )));
        let _ = responses.send(VcpuResponse::Exited);
    }
}

/// Unregisters the thread's `kvm_run` from kicks before the vCPU (and its
/// mapping) is dropped, also when the thread unwinds.
struct KickRegistration;

impl Drop for KickRegistration {
    fn drop(&mut self) {
        kick::clear();
    }
}

fn thread_main(
    mut vcpu: Vcpu,
    paused: bool,
    events: &Receiver<VcpuEvent>,
    responses: &Sender<VcpuResponse>,
    kick_pending: &AtomicBool,
    ready: &Sender<()>,
) {
    crate::seccomp::apply_or_exit(crate::seccomp::Role::Vcpu);
    // SAFETY: the pointer is this thread's vCPU kvm_run mapping; `vcpu`
    // lives (and stays mapped) until after `kick::clear` below.
    unsafe { kick::register(vcpu.kvm_run_ptr()) };
    let _registration = KickRegistration;
    // Nobody may be waiting any more: then there is nothing to tell.
    let _ = ready.send(());
    let mut state = if paused { State::Paused } else { State::Running };
    loop {
        let event = match state {
            // Events sent before this thread registered its kvm_run are seen
            // here; later ones also set immediate_exit, so KVM_RUN returns.
            State::Running => match events.try_recv() {
                Ok(e) => e,
                Err(TryRecvError::Empty) => {
                    match vcpu.step() {
                        Step::Continue => {}
                        Step::Interrupted => {
                            vcpu.clear_immediate_exit();
                            // Cleared before the next look at the channel:
                            // an event sent meanwhile is seen there.
                            kick_pending.store(false, Ordering::SeqCst);
                        }
                        Step::Ended(reason) => {
                            vcpu.control.request_exit(reason);
                            state = State::Exited;
                        }
                    }
                    // A device (the exit port, the i8042 reset line) or
                    // another vCPU ended the VM: run no further guest code.
                    if vcpu.control.stopping() {
                        state = State::Exited;
                    }
                    continue;
                }
                Err(TryRecvError::Disconnected) => break,
            },
            State::Paused | State::Exited => match events.recv() {
                Ok(e) => e,
                Err(_) => break,
            },
        };
        kick_pending.store(false, Ordering::SeqCst);
        let answer = match (state, event) {
            (_, VcpuEvent::Finish) => break,
            (State::Exited, e) => VcpuResponse::NotAllowed(format!("{e:?}: vCPU {} has ended", vcpu.index)),
            (State::Running, VcpuEvent::SaveState) => {
                VcpuResponse::NotAllowed(format!("vCPU {} is running; pause it first", vcpu.index))
            }
            (State::Paused, VcpuEvent::SaveState) => {
                VcpuResponse::State(SavedVcpu(Arc::new(vcpu.save_state().map_err(|e| e.to_string()))))
            }
            (_, VcpuEvent::Pause) => {
                state = State::Paused;
                VcpuResponse::Paused
            }
            (_, VcpuEvent::Resume) => {
                state = State::Running;
                VcpuResponse::Resumed
            }
        };
        let _ = responses.send(answer);
    }
    kick::clear();
    let _ = responses.send(VcpuResponse::Exited);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vcpu_thread_that_panics_ends_the_vm_with_a_reason() {
        let control = VmControl::new(Instant::now()).expect("control");
        let (tx, rx) = channel();
        std::thread::spawn({
            let control = Arc::new(control);
            move || {
                guarded(3, &control, &tx, || panic!("a VMM bug"));
                control
            }
        })
        .join()
        .map(|control| {
            let reason = control.reason().expect("a reason");
            assert!(matches!(&reason, ExitReason::VmmError(w) if w.contains("vCPU 3") && w.contains("a VMM bug")));
            assert!(control.stopping());
            assert_eq!(reason.exit_code(), 1);
        })
        .expect("the panic is caught");
        assert!(matches!(rx.recv(), Ok(VcpuResponse::Exited)));
    }
}
