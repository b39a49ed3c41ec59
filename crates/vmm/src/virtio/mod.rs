//! Virtio devices over the virtio-mmio transport (virtio 1.x, modern only).
//!
//! [`mmio::MmioTransport`] is the register interface a guest driver talks to;
//! it owns a [`VirtioDevice`] and, once the driver sets DRIVER_OK, hands the
//! device its queues, the guest memory, the queues' ioeventfds (one per
//! queue: KVM signals them on QueueNotify writes, no vCPU exit to user space)
//! and an [`Interrupt`] (an irqfd). Devices do their work on their own worker
//! thread, never on a vCPU thread.

pub mod block;
pub mod mmio;
pub mod net;
pub mod poll;
pub mod rng;
#[cfg(any(test, feature = "test-rig"))]
pub mod test_rig;
pub mod vsock;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueState};
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMemoryMmap;

pub use worker::{QueueHandler, Queues, Stopping, Worker, WorkerError, WorkerHandler};

/// Feature bit: the device conforms to virtio 1.x (required by kvmkit).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Feature bit: used_event / avail_event notification suppression
/// (VIRTIO_F_RING_EVENT_IDX).
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// The driver's hint, in the avail ring's flags, that it wants no used-buffer
/// interrupt (meaningful only without EVENT_IDX).
const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Whether the driver wants an interrupt for the used buffers added since the
/// last call: `used_event` with EVENT_IDX (virtio-queue's accounting), else the
/// avail ring's VIRTQ_AVAIL_F_NO_INTERRUPT hint (kvmkit's guest sets it when it
/// polls the used ring). A ring the device cannot read gets the interrupt.
pub fn driver_wants_interrupt(queue: &mut Queue, memory: &GuestMemoryMmap) -> bool {
    use virtio_queue::QueueT;
    use vm_memory::{Bytes, GuestAddress};
    if !queue.needs_notification(memory).unwrap_or(true) {
        return false;
    }
    if queue.event_idx_enabled() {
        return true;
    }
    let flags: Result<u16, _> = memory.load(GuestAddress(queue.avail_ring()), Ordering::Acquire);
    !flags.is_ok_and(|f| u16::from_le(f) & VIRTQ_AVAIL_F_NO_INTERRUPT != 0)
}

/// Interrupt status bit: a used buffer was added.
pub const VIRTIO_MMIO_INT_VRING: u32 = 1;
/// Interrupt status bit: the configuration changed.
pub const VIRTIO_MMIO_INT_CONFIG: u32 = 2;

/// A device's interrupt line: the status register the driver reads and
/// acknowledges, and the irqfd that raises the GSI.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    irqfd: EventFd,
    broken: AtomicBool,
}

impl Interrupt {
    /// An interrupt that signals `irqfd` (registered with KVM for the device's GSI).
    pub fn new(irqfd: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            irqfd,
            broken: AtomicBool::new(false),
        }
    }

    /// Marks the device broken (a queue whose avail index is bogus, a
    /// worker that panicked): the transport then shows DEVICE_NEEDS_RESET
    /// and the driver gets a configuration-change interrupt. Said once per
    /// device reset.
    pub fn mark_broken(&self, why: &str) {
        if !self.broken.swap(true, Ordering::SeqCst) {
            tracing::warn!("virtio device needs reset: {why}");
            self.signal(VIRTIO_MMIO_INT_CONFIG);
        }
    }

    /// Whether the device was marked broken since its last reset; its
    /// worker then leaves its queues alone.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::SeqCst)
    }

    /// Clears the broken mark (the driver reset the device).
    pub fn clear_broken(&self) {
        self.broken.store(false, Ordering::SeqCst);
    }

    /// Sets `bits` in the interrupt status and raises the interrupt.
    pub fn signal(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        if let Err(e) = self.irqfd.write(1) {
            tracing::warn!("virtio interrupt could not be raised: {e}");
        }
    }

    /// The interrupt status register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Puts back a saved status register and broken mark (snapshot
    /// restore; nothing is signalled: a pending interrupt is in the saved
    /// irqchip state).
    pub fn restore(&self, status: u32, broken: bool) {
        self.status.store(status, Ordering::SeqCst);
        self.broken.store(broken, Ordering::SeqCst);
    }
}

/// What a running device is given when the driver sets DRIVER_OK.
pub struct Activation {
    /// Guest memory.
    pub memory: GuestMemoryMmap,
    /// The queues, configured and validated by the transport.
    pub queues: Vec<Queue>,
    /// One eventfd per queue, signalled when the driver notifies it.
    pub queue_events: Vec<EventFd>,
    /// The device's interrupt.
    pub interrupt: Arc<Interrupt>,
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// Virtio device id (1 = net, 2 = block, 4 = entropy, 19 = vsock).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers (including [`VIRTIO_F_VERSION_1`]).
    fn features(&self) -> u64;
    /// Reads device configuration space at `offset` into `data` (out of
    /// range bytes read as zero).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device configuration space (ignored by devices without
    /// writable fields).
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::debug!("ignored virtio config write at {offset:#x} ({} bytes)", data.len());
    }
    /// Starts the device with the features the driver accepted.
    fn activate(&mut self, acked_features: u64, activation: Activation) -> Result<(), String>;
    /// Stops the device and waits for its worker (VM end); it may be
    /// activated again.
    fn reset(&mut self);
    /// Starts stopping the device for a driver reset without waiting for
    /// its worker, which may be busy in slow host I/O: the transport waits
    /// on the handle (bounded) before the device is configured again.
    fn reset_async(&mut self) -> Stopping {
        self.reset();
        Stopping::done()
    }
    /// The device's counters as `(name, value)` pairs (requests, bytes, errors).
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
    /// Parks the device's worker (no queue or guest memory is touched
    /// until [`Self::resume`]). Devices without a running worker do nothing.
    fn pause(&mut self) -> Result<(), WorkerError> {
        Ok(())
    }
    /// Lets a paused worker run again.
    fn resume(&mut self) -> Result<(), WorkerError> {
        Ok(())
    }
    /// The live state of the queues its worker owns, read on the worker
    /// thread between rounds (call while paused, for a snapshot). `None`
    /// when no worker runs: the transport's own copy is then current.
    fn queue_states(&self) -> Result<Option<Vec<QueueState>>, WorkerError> {
        Ok(None)
    }
    /// Makes completed writes durable on the host (a block device's
    /// fdatasync before a snapshot). Devices without a backing store do
    /// nothing.
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
    /// The device as `Any`, so its owner can reach device-specific
    /// operations (e.g. swapping a block device's backing file).
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}

/// Copies `src[offset..]` into `data`, zero-filling what lies beyond `src`.
pub fn read_config_bytes(src: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else { return };
    if start >= src.len() {
        return;
    }
    let n = data.len().min(src.len() - start);
    data[..n].copy_from_slice(&src[start..start + n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_are_bounded() {
        let cfg = [1u8, 2, 3, 4];
        let mut d = [0xffu8; 4];
        read_config_bytes(&cfg, 2, &mut d);
        assert_eq!(d, [3, 4, 0, 0]);
        read_config_bytes(&cfg, 100, &mut d);
        assert_eq!(d, [0; 4]);
        read_config_bytes(&cfg, u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
    }

    #[test]
    fn interrupt_status_is_set_and_acked() {
        let i = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"));
        i.signal(VIRTIO_MMIO_INT_VRING);
        assert_eq!(i.status(), 1);
        i.ack(VIRTIO_MMIO_INT_VRING);
        assert_eq!(i.status(), 0);
    }
}
