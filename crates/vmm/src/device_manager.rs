//! Where virtio devices sit: MMIO windows, GSIs, ioeventfds and irqfds, and
//! how the guest learns about them (ACPI DSDT entries, and the
//! `virtio_mmio.device=` command-line form for kernels and guests that read it).

use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::acpi::AcpiMmioDevice;
use crate::bus::Bus;
use crate::virtio::mmio::{MmioTransport, MMIO_WINDOW_SIZE, REG_QUEUE_NOTIFY};
use crate::virtio::{Interrupt, VirtioDevice};

/// First virtio-mmio window (the page before it is the null MMIO page).
pub const VIRTIO_MMIO_START: u64 = 0xd000_1000;
/// GSI of the first virtio device (COM1 uses 4).
pub const FIRST_VIRTIO_GSI: u32 = 5;
/// Most virtio devices (IOAPIC pins 5..=23).
pub const MAX_VIRTIO_DEVICES: usize = 19;

/// Places virtio devices on the MMIO bus.
pub struct VirtioPlacer<'a> {
    vm: &'a VmFd,
    memory: &'a GuestMemoryMmap,
    placed: Vec<AcpiMmioDevice>,
}

impl<'a> VirtioPlacer<'a> {
    /// A placer for devices of the VM `vm`.
    pub fn new(vm: &'a VmFd, memory: &'a GuestMemoryMmap) -> Self {
        Self {
            vm,
            memory,
            placed: Vec::new(),
        }
    }

    /// Wires `device` to the next window and GSI and puts it on `mmio`.
    pub fn attach(&mut self, mmio: &mut Bus, device: Box<dyn VirtioDevice>) -> Result<(), String> {
        let index = self.placed.len();
        if index >= MAX_VIRTIO_DEVICES {
            return Err(format!("at most {MAX_VIRTIO_DEVICES} virtio devices are supported"));
        }
        let base = VIRTIO_MMIO_START + index as u64 * MMIO_WINDOW_SIZE;
        let gsi = FIRST_VIRTIO_GSI + index as u32;
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| format!("eventfd: {e}"))?;
        self.vm
            .register_irqfd(&irqfd, gsi)
            .map_err(|e| format!("KVM_IRQFD for GSI {gsi}: {e}"))?;
        let mut events = Vec::new();
        for q in 0..device.queue_max_sizes().len() {
            let e = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| format!("eventfd: {e}"))?;
            let addr = IoEventAddress::Mmio(base + REG_QUEUE_NOTIFY);
            self.vm
                .register_ioevent(&e, &addr, q as u32)
                .map_err(|e| format!("KVM_IOEVENTFD at {base:#x}: {e}"))?;
            events.push(e);
        }
        let transport = MmioTransport::new(device, self.memory.clone(), Arc::new(Interrupt::new(irqfd)), events)?;
        mmio.insert(Arc::new(Mutex::new(transport)), base, MMIO_WINDOW_SIZE)
            .map_err(|e| e.to_string())?;
        self.placed.push(AcpiMmioDevice {
            base,
            size: MMIO_WINDOW_SIZE,
            gsi,
        });
        Ok(())
    }

    /// The devices placed so far, for the ACPI DSDT.
    pub fn acpi_devices(&self) -> &[AcpiMmioDevice] {
        &self.placed
    }

    /// `virtio_mmio.device=4K@0x...:GSI` words for the kernel command line.
    pub fn cmdline_words(&self) -> String {
        cmdline_words(&self.placed)
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
}
