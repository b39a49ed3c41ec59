//! Kicking a vCPU thread out of `KVM_RUN` without losing the kick.
//!
//! A real-time signal is sent to the vCPU thread; its handler sets
//! `immediate_exit` in that thread's `kvm_run` page (found through a
//! thread-local pointer). If the signal lands while the thread is in
//! `KVM_RUN`, the ioctl returns EINTR; if it lands just before, the flag
//! makes the next `KVM_RUN` return EINTR at once. Either way the thread
//! looks at its event channel before running the guest again, so no event
//! is raced (Firecracker's `vstate/vcpu.rs` does the same).

use std::cell::Cell;
use std::sync::atomic::{fence, Ordering};

use kvm_bindings::kvm_run;

thread_local! {
    static KVM_RUN_PTR: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN_PTR.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer was set by this thread to its own vCPU's
        // kvm_run mapping, which stays mapped until `clear` runs on this
        // thread; a volatile byte store is async-signal-safe.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
    fence(Ordering::SeqCst);
}

/// The real-time signal used to kick vCPU threads out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

/// Installs the kick handler (idempotent).
pub fn install_kick_handler() -> std::io::Result<()> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// Makes kicks of the calling thread set `immediate_exit` in `run`.
///
/// # Safety
/// `run` must be the calling thread's vCPU `kvm_run` mapping and stay
/// mapped until [`clear`] is called on this thread.
pub unsafe fn register(run: *mut kvm_run) {
    KVM_RUN_PTR.with(|p| p.set(run));
}

/// Stops kicks of the calling thread from touching its `kvm_run`.
pub fn clear() {
    KVM_RUN_PTR.with(|p| p.set(std::ptr::null_mut()));
}

/// Sends the kick signal to `thread`.
pub fn kick(thread: libc::pthread_t) {
    // SAFETY: the caller's thread handle is alive (not joined), so its pthread_t is valid.
    unsafe { libc::pthread_kill(thread, kick_signal()) };
}
