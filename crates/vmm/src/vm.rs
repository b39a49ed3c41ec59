//! The KVM VM: its file descriptor, interrupt controllers and memory slots.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::arch::x86_64::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};
use crate::memory::GuestMemoryMmap;

/// Errors creating or configuring the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// KVM_CREATE_VM failed.
    #[error("KVM refused to create a VM: {0}")]
    Create(kvm_ioctls::Error),
    /// A VM-level KVM ioctl failed.
    #[error("KVM {0} failed: {1}")]
    Ioctl(&'static str, kvm_ioctls::Error),
}

/// A KVM VM with its memory registered and its interrupt controllers created.
pub struct Vm {
    fd: VmFd,
}

impl Vm {
    /// Creates the VM, registers `memory` as slots 0.. (region `i` is slot
    /// `i`; with `track_dirty` KVM logs the guest's writes to them, see
    /// `snapshot::dirty`), then creates the in-kernel IOAPIC/PIC/LAPICs and PIT.
    pub fn new(kvm: &Kvm, memory: &GuestMemoryMmap, track_dirty: bool) -> Result<Self, VmError> {
        let fd = kvm.create_vm().map_err(VmError::Create)?;
        // Memory slots go in before the interrupt controllers: on this host
        // (kvm_pvm) a slot added after KVM_CREATE_IRQCHIP costs ~6 ms more.
        for (slot, region) in memory.iter().enumerate() {
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
                flags: if track_dirty { KVM_MEM_LOG_DIRTY_PAGES } else { 0 },
            };
            // SAFETY: the region is a live mapping owned by `memory`, which the
            // caller keeps alive for as long as the VM exists (the machine owns both).
            unsafe { fd.set_user_memory_region(r) }.map_err(|e| VmError::Ioctl("SET_USER_MEMORY_REGION", e))?;
        }
        fd.set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(|e| VmError::Ioctl("SET_TSS_ADDR", e))?;
        if let Err(e) = fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS) {
            tracing::debug!("KVM_SET_IDENTITY_MAP_ADDR not applied: {e}");
        }
        fd.create_irq_chip().map_err(|e| VmError::Ioctl("CREATE_IRQCHIP", e))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(|e| VmError::Ioctl("CREATE_PIT2", e))?;
        Ok(Self { fd })
    }

    /// The VM file descriptor.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }
}
