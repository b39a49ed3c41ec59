//! The virtio-mmio transport (virtio 1.x, section 4.2.2; "modern" version 2
//! only). Every value the guest writes is checked: registers are 32-bit,
//! status bits may only be added in the order the spec gives, queues must be
//! valid before DRIVER_OK; anything else is ignored with a rate-limited warning
//! or ends in DEVICE_NEEDS_RESET, never a panic.

use std::sync::Arc;
use std::time::Duration;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{Activation, Interrupt, Stopping, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_MMIO_INT_CONFIG};
use crate::bus::BusDevice;
use crate::memory::GuestMemoryMmap;
use crate::snapshot::virtio::{QueueSnapshot, TransportState};

/// Size of one virtio-mmio window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// QueueNotify: KVM turns writes here into ioeventfd signals.
pub use kvmkit_guest_abi::virtio_mmio::REG_QUEUE_NOTIFY;
use kvmkit_guest_abi::virtio_mmio::{
    MAGIC_VALUE, REG_CONFIG as CONFIG_SPACE, REG_CONFIG_GENERATION, REG_DEVICE_FEATURES, REG_DEVICE_FEATURES_SEL,
    REG_DEVICE_ID, REG_DRIVER_FEATURES, REG_DRIVER_FEATURES_SEL, REG_INTERRUPT_ACK, REG_INTERRUPT_STATUS, REG_MAGIC,
    REG_QUEUE_DESC_HIGH, REG_QUEUE_DESC_LOW, REG_QUEUE_DEVICE_HIGH, REG_QUEUE_DEVICE_LOW, REG_QUEUE_DRIVER_HIGH,
    REG_QUEUE_DRIVER_LOW, REG_QUEUE_NUM, REG_QUEUE_NUM_MAX, REG_QUEUE_READY, REG_QUEUE_SEL, REG_STATUS, REG_VENDOR_ID,
    REG_VERSION, VERSION_MODERN,
};

/// Vendor id reported to drivers ("KVMK").
const VENDOR_ID: u32 = 0x4b4d_564b;

/// Device status bits.
pub mod status {
    pub use kvmkit_guest_abi::virtio_mmio::{
        STATUS_ACKNOWLEDGE as ACKNOWLEDGE, STATUS_DRIVER as DRIVER, STATUS_DRIVER_OK as DRIVER_OK,
        STATUS_FAILED as FAILED, STATUS_FEATURES_OK as FEATURES_OK, STATUS_NEEDS_RESET as DEVICE_NEEDS_RESET,
    };
}

const MAX_WARNINGS: u32 = 20;
/// How long one register access waits for a reset device's worker to end
/// (normally microseconds; longer only when it is stuck in host I/O).
const RESET_WAIT: Duration = Duration::from_millis(100);
/// How long the VM's end waits for such a worker before leaving it.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);

/// One virtio-mmio window with its device.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    memory: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queue_events: Vec<EventFd>,
    queues: Vec<Queue>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    status: u32,
    config_generation: u32,
    warnings: u32,
    /// A driver reset whose device worker has not ended yet: until it has,
    /// the status reads as it was (not 0) and writes are ignored, so the
    /// vCPU never waits on it for more than [`RESET_WAIT`] per access.
    resetting: Option<(Stopping, u32)>,
}

impl MmioTransport {
    /// A transport for `device`; `queue_events` must hold one eventfd per
    /// queue (registered as ioeventfds on QueueNotify by the caller).
    pub fn new(
        device: Box<dyn VirtioDevice>,
        memory: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queue_events: Vec<EventFd>,
    ) -> Result<Self, String> {
        let sizes = device.queue_max_sizes().to_vec();
        if queue_events.len() != sizes.len() {
            return Err(format!(
                "{} queue events for {} queues",
                queue_events.len(),
                sizes.len()
            ));
        }
        let queues = sizes
            .iter()
            .map(|&s| Queue::new(s).map_err(|e| format!("queue of size {s}: {e:?}")))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            device,
            memory,
            interrupt,
            queue_events,
            queues,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            status: 0,
            config_generation: 0,
            warnings: 0,
            resetting: None,
        })
    }

    /// The driver status register.
    pub fn status(&self) -> u32 {
        if self.interrupt.is_broken() {
            self.status | status::DEVICE_NEEDS_RESET
        } else {
            self.status
        }
    }

    fn warn(&mut self, what: &str) {
        if self.warnings < MAX_WARNINGS {
            self.warnings += 1;
            tracing::warn!("virtio-mmio (device type {}): {what}", self.device.device_type());
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// A driver reset: the device's worker is told to stop without the
    /// vCPU waiting on it for more than [`RESET_WAIT`].
    fn reset(&mut self) {
        let mut stopping = self.device.reset_async();
        if stopping.wait(RESET_WAIT) {
            self.finish_reset();
        } else {
            self.warn(
                "reset: the device's worker is still busy (slow host I/O?); the device stays in reset until it ends",
            );
            self.resetting = Some((stopping, self.status.max(status::ACKNOWLEDGE)));
        }
    }

    /// True when no reset is pending; waits (bounded) for one that is.
    fn settled(&mut self) -> bool {
        let Some((stopping, _)) = self.resetting.as_mut() else {
            return true;
        };
        if !stopping.wait(RESET_WAIT) {
            return false;
        }
        self.resetting = None;
        self.finish_reset();
        true
    }

    /// The register side of a reset, once the device's worker has ended.
    fn finish_reset(&mut self) {
        for q in &mut self.queues {
            q.reset();
        }
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.acked_features = 0;
        self.status = 0;
        self.interrupt.ack(u32::MAX);
        self.interrupt.clear_broken();
    }

    /// The device behind this transport.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// The device behind this transport, for device-specific operations.
    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    /// Tells the driver the device configuration changed (new generation,
    /// configuration-change interrupt), e.g. after a disk was swapped.
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.status & status::DRIVER_OK != 0 {
            self.interrupt.signal(VIRTIO_MMIO_INT_CONFIG);
        }
    }

    /// Stops the device's worker at the VM's end (the guest sees nothing).
    /// A worker still ending from a driver reset gets 2 s,
    /// then is left to end on its own.
    pub fn shutdown(&mut self) {
        self.device.reset();
        if let Some((mut stopping, _)) = self.resetting.take() {
            if !stopping.wait(SHUTDOWN_WAIT) {
                tracing::warn!(
                    "virtio-mmio (device type {}): a reset worker is still busy at the VM's end; not waiting for it",
                    self.device.device_type()
                );
            }
        }
    }

    /// The transport's registers and every queue's state, for a snapshot
    /// (the VM paused, the device's worker paused). The queues of an
    /// active device are read from its worker, where their ring positions
    /// live; a broken device's are the transport's copy (it is not
    /// re-activated on restore: the driver must reset it).
    pub fn save_state(&mut self) -> Result<TransportState, String> {
        if !self.settled() {
            return Err("a device reset is still in progress (its worker is busy in host I/O); try again".into());
        }
        let broken = self.interrupt.is_broken();
        let live = if broken {
            None
        } else {
            self.device.queue_states().map_err(|e| e.to_string())?
        };
        let queues = match live {
            Some(q) if q.len() == self.queues.len() => q.into_iter().map(QueueSnapshot::from).collect(),
            Some(q) => {
                return Err(format!(
                    "the worker has {} queues, the transport {}",
                    q.len(),
                    self.queues.len()
                ))
            }
            None => self.queues.iter().map(|q| QueueSnapshot::from(q.state())).collect(),
        };
        Ok(TransportState {
            device_type: self.device.device_type(),
            device_features: self.device.features(),
            acked_features: self.acked_features,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            queue_sel: self.queue_sel,
            status: self.status,
            config_generation: self.config_generation,
            interrupt_status: self.interrupt.status(),
            broken,
            queues,
        })
    }

    /// Puts a saved transport back on a freshly built device of the same
    /// kind (nothing has run yet) and, when the driver had set DRIVER_OK,
    /// activates the device with the saved queues: its worker picks up
    /// where the snapshot left off. Anything that does not fit the device
    /// (type, offered features, queue count or sizes, invalid queues of an
    /// active device) is refused before anything starts.
    pub fn restore_state(&mut self, s: &TransportState) -> Result<(), String> {
        if s.device_type != self.device.device_type() {
            return Err(format!(
                "saved device type {} is not this device's {}",
                s.device_type,
                self.device.device_type()
            ));
        }
        let offered = self.device.features();
        if s.device_features != offered {
            return Err(format!(
                "the device now offers features {offered:#x}, the snapshot's offered {:#x} (a tap without the same offloads?)",
                s.device_features
            ));
        }
        if s.acked_features & !offered != 0 {
            return Err(format!("acked features {:#x} were never offered", s.acked_features));
        }
        if s.queues.len() != self.queues.len() {
            return Err(format!(
                "{} saved queues for {} queues",
                s.queues.len(),
                self.queues.len()
            ));
        }
        let mut queues = Vec::with_capacity(s.queues.len());
        for (i, (saved, q)) in s.queues.iter().zip(&self.queues).enumerate() {
            if saved.max_size != q.max_size() {
                return Err(format!(
                    "queue {i}: saved max size {} is not {}",
                    saved.max_size,
                    q.max_size()
                ));
            }
            let queue =
                Queue::try_from(virtio_queue::QueueState::from(saved)).map_err(|e| format!("queue {i}: {e:?}"))?;
            queues.push(queue);
        }
        let active = s.status & status::DRIVER_OK != 0 && !s.broken && s.status & status::DEVICE_NEEDS_RESET == 0;
        if active
            && !queues
                .iter()
                .all(|q| q.ready() && q.is_valid(&self.memory) && q.avail_ring() != 0)
        {
            return Err("an active device's queue is not ready or not valid in guest memory".into());
        }
        self.queues = queues;
        self.acked_features = s.acked_features;
        self.device_features_sel = s.device_features_sel;
        self.driver_features_sel = s.driver_features_sel;
        self.queue_sel = s.queue_sel;
        self.status = s.status;
        self.config_generation = s.config_generation;
        self.interrupt.restore(s.interrupt_status, s.broken);
        if active {
            self.activate();
            if self.status & status::DEVICE_NEEDS_RESET != 0 {
                return Err("the device could not be re-activated".into());
            }
        }
        Ok(())
    }

    fn needs_reset(&mut self, why: &str) {
        self.warn(&format!("{why}; device needs reset"));
        self.status |= status::DEVICE_NEEDS_RESET;
        self.interrupt.signal(VIRTIO_MMIO_INT_CONFIG);
    }

    fn write_status(&mut self, value: u32) {
        use status::*;
        if value == 0 {
            self.reset();
            return;
        }
        let added = value & !self.status;
        if value & self.status != self.status {
            self.warn(&format!(
                "driver cleared status bits ({:#x} -> {value:#x}); ignored",
                self.status
            ));
            return;
        }
        let ok = match added {
            ACKNOWLEDGE | FAILED => true,
            DRIVER => self.status & ACKNOWLEDGE != 0,
            FEATURES_OK => self.status & DRIVER != 0,
            DRIVER_OK => self.status & FEATURES_OK != 0,
            0 => true,
            _ => false,
        };
        if !ok {
            self.warn(&format!(
                "status {value:#x} out of order after {:#x}; ignored",
                self.status
            ));
            return;
        }
        if added == FEATURES_OK {
            let offered = self.device.features();
            if self.acked_features & VIRTIO_F_VERSION_1 == 0 || self.acked_features & !offered != 0 {
                self.warn(&format!(
                    "driver accepted features {:#x} of {offered:#x}; FEATURES_OK refused",
                    self.acked_features
                ));
                return;
            }
        }
        if added == DRIVER_OK {
            self.status = value;
            self.activate();
            return;
        }
        self.status = value;
    }

    fn activate(&mut self) {
        let valid = self
            .queues
            .iter()
            .all(|q| q.ready() && q.is_valid(&self.memory) && q.avail_ring() != 0);
        if !valid {
            self.needs_reset("DRIVER_OK with a queue not ready or invalid (size, alignment, addresses)");
            return;
        }
        let events: Result<Vec<EventFd>, _> = self.queue_events.iter().map(EventFd::try_clone).collect();
        let events = match events {
            Ok(e) => e,
            Err(e) => return self.needs_reset(&format!("cannot clone queue eventfds: {e}")),
        };
        let queues: Result<Vec<Queue>, _> = self.queues.iter().map(|q| Queue::try_from(q.state())).collect();
        let queues = match queues {
            Ok(q) => q,
            Err(e) => return self.needs_reset(&format!("queue state: {e:?}")),
        };
        let activation = Activation {
            memory: self.memory.clone(),
            queues,
            queue_events: events,
            interrupt: self.interrupt.clone(),
        };
        if let Err(e) = self.device.activate(self.acked_features, activation) {
            self.needs_reset(&format!("activation failed: {e}"));
        }
    }

    fn queue_config_allowed(&mut self) -> bool {
        let ready = self.queues.get(self.queue_sel as usize).is_some_and(|q| q.ready());
        if self.status & status::DRIVER_OK != 0 || ready {
            self.warn("queue configured after it was made ready; ignored");
            return false;
        }
        true
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            REG_MAGIC => MAGIC_VALUE,
            REG_VERSION => VERSION_MODERN,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status(),
            REG_CONFIG_GENERATION => self.config_generation,
            _ => {
                self.warn(&format!("read of write-only or unknown register {offset:#x}"));
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, v: u32) {
        let set_half = |old: u64, high: bool| {
            if high {
                (old & 0xffff_ffff) | (u64::from(v) << 32)
            } else {
                (old & !0xffff_ffff) | u64::from(v)
            }
        };
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            REG_DRIVER_FEATURES => {
                if self.status & status::FEATURES_OK != 0 {
                    self.warn("features written after FEATURES_OK; ignored");
                    return;
                }
                match self.driver_features_sel {
                    0 => self.acked_features = set_half(self.acked_features, false),
                    1 => self.acked_features = set_half(self.acked_features, true),
                    _ => {}
                }
            }
            REG_QUEUE_SEL => self.queue_sel = v,
            REG_QUEUE_NUM => {
                if self.queue_config_allowed() {
                    let size = u16::try_from(v).unwrap_or(0);
                    let result = self.selected_queue().map(|q| q.try_set_size(size));
                    if !matches!(result, Some(Ok(()))) {
                        self.warn(&format!("invalid queue size {v}"));
                    }
                }
            }
            REG_QUEUE_READY => {
                if self.status & status::DRIVER_OK == 0 {
                    if let Some(q) = self.selected_queue() {
                        q.set_ready(v == 1);
                    }
                }
            }
            REG_QUEUE_DESC_LOW
            | REG_QUEUE_DESC_HIGH
            | REG_QUEUE_DRIVER_LOW
            | REG_QUEUE_DRIVER_HIGH
            | REG_QUEUE_DEVICE_LOW
            | REG_QUEUE_DEVICE_HIGH => {
                if !self.queue_config_allowed() {
                    return;
                }
                let Some(q) = self.selected_queue() else { return };
                let (low, high) = if offset & 4 == 0 {
                    (Some(v), None)
                } else {
                    (None, Some(v))
                };
                match offset & !4 {
                    REG_QUEUE_DESC_LOW => q.set_desc_table_address(low, high),
                    REG_QUEUE_DRIVER_LOW => q.set_avail_ring_address(low, high),
                    _ => q.set_used_ring_address(low, high),
                }
            }
            REG_QUEUE_NOTIFY => {
                // Normally caught by the ioeventfd; a write that reaches us
                // (e.g. a different access size) is forwarded the same way.
                if let Some(e) = self.queue_events.get(v as usize) {
                    let _ = e.write(1);
                }
            }
            REG_INTERRUPT_ACK => self.interrupt.ack(v),
            REG_STATUS => self.write_status(v),
            _ => self.warn(&format!("write to read-only or unknown register {offset:#x}")),
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset == REG_STATUS && data.len() == 4 && !self.settled() {
            // Not reset yet: a driver waits for the status to read 0.
            let pending = self.resetting.as_ref().map_or(status::ACKNOWLEDGE, |r| r.1);
            data.copy_from_slice(&pending.to_le_bytes());
            return;
        }
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            self.warn(&format!("{}-byte register read at {offset:#x}", data.len()));
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if !self.settled() {
            self.warn(&format!(
                "write at {offset:#x} while the device is still resetting; ignored"
            ));
            return;
        }
        if offset >= CONFIG_SPACE {
            self.device.write_config(offset - CONFIG_SPACE, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            self.warn(&format!("{}-byte register write at {offset:#x}", data.len()));
            return;
        }
        let mut b = [0u8; 4];
        b.copy_from_slice(data);
        self.write_register(offset, u32::from_le_bytes(b));
    }
}

#[cfg(test)]
mod reset_tests;
#[cfg(test)]
mod snapshot_tests;
#[cfg(test)]
mod test_util;
