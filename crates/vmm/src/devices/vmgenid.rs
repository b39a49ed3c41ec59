//! The VM generation ID (Microsoft's VMGenID, as Linux's `vmgenid` driver
//! reads it): 16 random bytes at [`VMGENID_ADDR`] in guest memory, described
//! by the DSDT (`\_SB.VGEN`), and a new value on every snapshot restore,
//! announced through a Generic Event Device interrupt on [`VMGENID_GSI`]
//! (the DSDT's `_EVT` then notifies `VGEN`). A guest that watches it learns
//! it was restored (or cloned) and can reseed; Linux feeds the new ID to its
//! RNG (`add_vmfork_randomness`).

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMemoryMmap;

pub use crate::arch::x86_64::acpi::{VMGENID_ADDR, VMGENID_GSI};

/// Bytes of the generation ID.
pub const VMGENID_LEN: usize = 16;

/// The generation ID's interrupt line (an irqfd for [`VMGENID_GSI`]).
#[derive(Debug)]
pub struct VmGenId {
    irqfd: EventFd,
}

impl VmGenId {
    /// A generation ID that raises `irqfd` (registered for [`VMGENID_GSI`]).
    pub fn new(irqfd: EventFd) -> Self {
        Self { irqfd }
    }

    /// Writes a fresh random ID into guest memory (at boot, and on restore
    /// before [`Self::notify`]); returns it.
    pub fn regenerate(&self, memory: &GuestMemoryMmap) -> Result<[u8; VMGENID_LEN], String> {
        let mut id = [0u8; VMGENID_LEN];
        crate::host::random::host_random(&mut id).map_err(|e| format!("VM generation ID: getrandom: {e}"))?;
        memory
            .write_slice(&id, GuestAddress(VMGENID_ADDR))
            .map_err(|e| format!("VM generation ID at {VMGENID_ADDR:#x}: {e}"))?;
        Ok(id)
    }

    /// Tells the guest the ID changed (the GED's interrupt; delivered once
    /// the vCPUs run).
    pub fn notify(&self) {
        if let Err(e) = self.irqfd.write(1) {
            tracing::warn!("VM generation ID: the change interrupt could not be raised: {e}");
        }
    }
}

/// The ID in `memory`.
pub fn read_id(memory: &GuestMemoryMmap) -> Option<[u8; VMGENID_LEN]> {
    let mut id = [0u8; VMGENID_LEN];
    memory.read_slice(&mut id, GuestAddress(VMGENID_ADDR)).ok()?;
    Some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_regeneration_writes_a_new_id_and_notifies() {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("memory");
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let g = VmGenId::new(irq.try_clone().expect("clone"));
        let a = g.regenerate(&memory).expect("id");
        assert_eq!(read_id(&memory), Some(a));
        let b = g.regenerate(&memory).expect("id");
        assert_ne!(a, b, "a new ID each time");
        assert_ne!(a, [0; VMGENID_LEN]);
        assert!(irq.read().is_err(), "nothing signalled yet");
        g.notify();
        assert_eq!(irq.read().expect("signalled"), 1);
    }
}
