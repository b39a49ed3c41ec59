//! The device manager: every device of a VM with its id, kind, where it
//! sits (port range, MMIO window, GSI) and its counters. It builds the two
//! buses the vCPUs dispatch exits to, places virtio devices (MMIO windows,
//! GSIs, ioeventfds and irqfds) and tells the guest about them (ACPI DSDT
//! entries, and the `virtio_mmio.device=` command-line form).

use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, VmFd};
use serde::Serialize;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::acpi::AcpiMmioDevice;
use crate::bus::{lock, Bus, BusDevice, SharedDevice};
use crate::memory::GuestMemoryMmap;
use crate::vcpu::Buses;
use crate::virtio::mmio::{MmioTransport, MMIO_WINDOW_SIZE, REG_QUEUE_NOTIFY};
use crate::virtio::{Interrupt, VirtioDevice};

pub use crate::arch::x86_64::layout::{FIRST_VIRTIO_GSI, MAX_VIRTIO_DEVICES, VIRTIO_MMIO_START};

/// What a device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceKind {
    /// 16550A UART (COM1).
    Serial,
    /// i8042 keyboard controller (reset line, Ctrl-Alt-Del).
    I8042,
    /// Boot-milestone debug port.
    DebugPort,
    /// ACPI power-management registers.
    AcpiPm,
    /// kvmkit's guest protocol ports.
    GuestPort,
    /// A page of MMIO that reads zero (for exit benchmarks).
    NullMmio,
    /// virtio-blk.
    VirtioBlock,
    /// virtio-net.
    VirtioNet,
    /// virtio-rng.
    VirtioRng,
    /// virtio-vsock.
    VirtioVsock,
}

/// Where a device sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "bus", rename_all = "lowercase")]
pub enum Placement {
    /// Port I/O range.
    Pio {
        /// First port.
        base: u64,
        /// Number of ports.
        len: u64,
    },
    /// MMIO window, with its interrupt line when it has one.
    Mmio {
        /// First address.
        base: u64,
        /// Window size.
        len: u64,
        /// GSI, for virtio devices.
        gsi: Option<u32>,
    },
}

/// One device as the manager knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceInfo {
    /// Unique id: a drive id, an iface id, or the kind's name.
    pub id: String,
    /// What it is.
    pub kind: DeviceKind,
    /// Where it sits.
    pub placement: Placement,
}

/// A typed handle: legacy devices by their bus entry, virtio devices by
/// their transport (which owns the device).
#[derive(Clone)]
pub enum DeviceHandle {
    /// A legacy port-I/O or MMIO device.
    Legacy(SharedDevice),
    /// A virtio-mmio transport and its device.
    Virtio(Arc<Mutex<MmioTransport>>),
}

struct Slot {
    info: DeviceInfo,
    handle: DeviceHandle,
}

/// Errors placing a device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The bus refused the range.
    #[error("{0}: {1}")]
    Bus(String, crate::bus::BusError),
    /// Too many virtio devices.
    #[error("at most {MAX_VIRTIO_DEVICES} virtio devices are supported")]
    TooMany,
    /// An id is used twice.
    #[error("device id '{0}' is used twice")]
    DuplicateId(String),
    /// A KVM or host call failed.
    #[error("{0}")]
    Host(String),
}

/// Every device of one VM.
pub struct DeviceManager {
    pio: Bus,
    mmio: Bus,
    slots: Vec<Slot>,
    acpi: Vec<AcpiMmioDevice>,
}

impl Default for DeviceManager {
    fn default() -> Self {
        Self::new()
    }
}

impl DeviceManager {
    /// A manager with empty buses.
    pub fn new() -> Self {
        Self {
            pio: Bus::new("pio"),
            mmio: Bus::new("mmio"),
            slots: Vec::new(),
            acpi: Vec::new(),
        }
    }

    fn check_id(&self, id: &str) -> Result<(), DeviceError> {
        if self.slots.iter().any(|s| s.info.id == id) {
            return Err(DeviceError::DuplicateId(id.to_owned()));
        }
        Ok(())
    }

    /// Puts a legacy device on the port-I/O bus at `[base, base + len)`.
    pub fn add_pio<D: BusDevice + 'static>(
        &mut self,
        id: &str,
        kind: DeviceKind,
        device: Arc<Mutex<D>>,
        base: u64,
        len: u64,
    ) -> Result<(), DeviceError> {
        self.add_legacy(id, kind, device, Placement::Pio { base, len })
    }

    /// Puts a legacy device on the MMIO bus.
    pub fn add_mmio<D: BusDevice + 'static>(
        &mut self,
        id: &str,
        kind: DeviceKind,
        device: Arc<Mutex<D>>,
        base: u64,
        len: u64,
    ) -> Result<(), DeviceError> {
        self.add_legacy(id, kind, device, Placement::Mmio { base, len, gsi: None })
    }

    fn add_legacy(
        &mut self,
        id: &str,
        kind: DeviceKind,
        device: SharedDevice,
        placement: Placement,
    ) -> Result<(), DeviceError> {
        self.check_id(id)?;
        let (bus, base, len) = match placement {
            Placement::Pio { base, len } => (&mut self.pio, base, len),
            Placement::Mmio { base, len, .. } => (&mut self.mmio, base, len),
        };
        bus.insert(device.clone(), base, len)
            .map_err(|e| DeviceError::Bus(id.to_owned(), e))?;
        self.slots.push(Slot {
            info: DeviceInfo {
                id: id.to_owned(),
                kind,
                placement,
            },
            handle: DeviceHandle::Legacy(device),
        });
        Ok(())
    }

    /// Wires a virtio `device` to the next MMIO window and GSI: an irqfd
    /// for its interrupt, one ioeventfd per queue on QueueNotify.
    pub fn add_virtio(
        &mut self,
        vm: &VmFd,
        memory: &GuestMemoryMmap,
        id: &str,
        kind: DeviceKind,
        device: Box<dyn VirtioDevice>,
    ) -> Result<(), DeviceError> {
        self.check_id(id)?;
        let index = self.acpi.len();
        if index >= MAX_VIRTIO_DEVICES {
            return Err(DeviceError::TooMany);
        }
        let host = |what: &str| {
            let what = what.to_owned();
            move |e: std::io::Error| DeviceError::Host(format!("{what}: {e}"))
        };
        let base = VIRTIO_MMIO_START + index as u64 * MMIO_WINDOW_SIZE;
        let gsi = FIRST_VIRTIO_GSI + index as u32;
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(host("eventfd"))?;
        vm.register_irqfd(&irqfd, gsi)
            .map_err(|e| DeviceError::Host(format!("KVM_IRQFD for GSI {gsi}: {e}")))?;
        let mut events = Vec::new();
        for q in 0..device.queue_max_sizes().len() {
            let e = EventFd::new(libc::EFD_NONBLOCK).map_err(host("eventfd"))?;
            let addr = IoEventAddress::Mmio(base + REG_QUEUE_NOTIFY);
            vm.register_ioevent(&e, &addr, q as u32)
                .map_err(|e| DeviceError::Host(format!("KVM_IOEVENTFD at {base:#x}: {e}")))?;
            events.push(e);
        }
        let transport = MmioTransport::new(device, memory.clone(), Arc::new(Interrupt::new(irqfd)), events)
            .map_err(DeviceError::Host)?;
        let transport = Arc::new(Mutex::new(transport));
        let shared: SharedDevice = transport.clone();
        self.mmio
            .insert(shared, base, MMIO_WINDOW_SIZE)
            .map_err(|e| DeviceError::Bus(id.to_owned(), e))?;
        self.acpi.push(AcpiMmioDevice {
            base,
            size: MMIO_WINDOW_SIZE,
            gsi,
        });
        self.slots.push(Slot {
            info: DeviceInfo {
                id: id.to_owned(),
                kind,
                placement: Placement::Mmio {
                    base,
                    len: MMIO_WINDOW_SIZE,
                    gsi: Some(gsi),
                },
            },
            handle: DeviceHandle::Virtio(transport),
        });
        Ok(())
    }

    /// Every device, in the order they were added.
    pub fn devices(&self) -> impl Iterator<Item = &DeviceInfo> {
        self.slots.iter().map(|s| &s.info)
    }

    /// The handle of device `id`.
    pub fn handle(&self, id: &str) -> Option<(&DeviceInfo, &DeviceHandle)> {
        self.slots
            .iter()
            .find(|s| s.info.id == id)
            .map(|s| (&s.info, &s.handle))
    }

    /// Counters of every device that keeps some: `(device id, name, value)`.
    pub fn counters(&self) -> Vec<(String, &'static str, u64)> {
        let mut out = Vec::new();
        for s in &self.slots {
            if let DeviceHandle::Virtio(t) = &s.handle {
                for (name, v) in lock(t).device().counters() {
                    out.push((s.info.id.clone(), name, v));
                }
            }
        }
        out
    }

    /// The virtio devices placed so far, for the ACPI DSDT.
    pub fn acpi_devices(&self) -> &[AcpiMmioDevice] {
        &self.acpi
    }

    /// Whether any virtio device was placed (only they run worker threads).
    pub fn has_virtio(&self) -> bool {
        !self.acpi_devices().is_empty()
    }

    /// `virtio_mmio.device=4K@0x...:GSI` words for the kernel command line.
    pub fn cmdline_words(&self) -> String {
        cmdline_words(&self.acpi)
    }

    /// Hands the buses to the vCPUs (once; later calls get empty buses).
    /// The manager keeps the typed handles.
    pub fn take_buses(&mut self) -> Buses {
        Buses {
            pio: Arc::new(std::mem::take(&mut self.pio)),
            mmio: Arc::new(std::mem::take(&mut self.mmio)),
        }
    }

    /// Parks every virtio device's worker (after the vCPUs are parked, so
    /// no new request arrives): the VM then touches no guest memory.
    pub fn pause(&self) -> Result<(), DeviceError> {
        for s in &self.slots {
            if let DeviceHandle::Virtio(t) = &s.handle {
                lock(t)
                    .device_mut()
                    .pause()
                    .map_err(|e| DeviceError::Host(format!("device {}: {e}", s.info.id)))?;
            }
        }
        Ok(())
    }

    /// Lets every virtio device's worker run again.
    pub fn resume(&self) -> Result<(), DeviceError> {
        for s in &self.slots {
            if let DeviceHandle::Virtio(t) = &s.handle {
                lock(t)
                    .device_mut()
                    .resume()
                    .map_err(|e| DeviceError::Host(format!("device {}: {e}", s.info.id)))?;
            }
        }
        Ok(())
    }

    /// Stops every virtio device's worker. Called when the VM ends.
    pub fn shutdown(&self) {
        for s in &self.slots {
            if let DeviceHandle::Virtio(t) = &s.handle {
                lock(t).shutdown();
            }
        }
    }
}

/// The command-line description of `devices`, in Linux's format.
pub fn cmdline_words(devices: &[AcpiMmioDevice]) -> String {
    devices
        .iter()
        .map(|d| format!("virtio_mmio.device={}K@{:#x}:{}", d.size >> 10, d.base, d.gsi))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_words_use_linux_format() {
        let d = [
            AcpiMmioDevice {
                base: 0xd000_1000,
                size: 0x1000,
                gsi: 5,
            },
            AcpiMmioDevice {
                base: 0xd000_2000,
                size: 0x1000,
                gsi: 6,
            },
        ];
        assert_eq!(
            cmdline_words(&d),
            "virtio_mmio.device=4K@0xd0001000:5 virtio_mmio.device=4K@0xd0002000:6"
        );
        assert_eq!(cmdline_words(&[]), "");
    }

    #[test]
    fn legacy_devices_are_typed_and_ids_unique() {
        let mut dm = DeviceManager::new();
        let null = Arc::new(Mutex::new(crate::devices::null::NullDevice::new(0)));
        dm.add_mmio("null", DeviceKind::NullMmio, null.clone(), 0x1000, 0x1000)
            .expect("add");
        assert!(matches!(
            dm.add_mmio("null", DeviceKind::NullMmio, null.clone(), 0x3000, 0x1000),
            Err(DeviceError::DuplicateId(_))
        ));
        assert!(matches!(
            dm.add_mmio("other", DeviceKind::NullMmio, null, 0x1800, 0x1000),
            Err(DeviceError::Bus(..))
        ));
        let (info, _) = dm.handle("null").expect("handle");
        assert_eq!(info.kind, DeviceKind::NullMmio);
        assert_eq!(dm.devices().count(), 1);
    }
}
