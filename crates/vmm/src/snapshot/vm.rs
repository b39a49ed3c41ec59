//! The VM's in-kernel devices: PIC master and slave, IOAPIC, PIT and the
//! KVM clock.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_CLOCK_TSC_STABLE, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

use super::SnapshotError;

/// What KVM holds for the VM itself.
#[derive(Clone, Serialize, Deserialize)]
pub struct VmState {
    /// PIC master, PIC slave, IOAPIC (in that order).
    pub irqchips: Vec<kvm_irqchip>,
    /// The in-kernel PIT.
    pub pit: kvm_pit_state2,
    /// kvmclock.
    pub clock: kvm_clock_data,
}

fn ioctl(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> SnapshotError {
    move |e| SnapshotError::Kvm(format!("VM: KVM_{what} failed: {e}"))
}

const CHIPS: [u32; 3] = [KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQCHIP_IOAPIC];

/// Reads the VM's state (with every vCPU paused).
pub fn save(fd: &VmFd) -> Result<VmState, SnapshotError> {
    let mut irqchips = Vec::with_capacity(CHIPS.len());
    for chip_id in CHIPS {
        let mut chip = kvm_irqchip {
            chip_id,
            ..Default::default()
        };
        fd.get_irqchip(&mut chip).map_err(ioctl("GET_IRQCHIP"))?;
        irqchips.push(chip);
    }
    Ok(VmState {
        irqchips,
        pit: fd.get_pit2().map_err(ioctl("GET_PIT2"))?,
        clock: fd.get_clock().map_err(ioctl("GET_CLOCK"))?,
    })
}

/// Writes `state` into a fresh VM (irqchip and PIT already created).
pub fn restore(fd: &VmFd, state: &VmState) -> Result<(), SnapshotError> {
    if state.irqchips.len() != CHIPS.len() || state.irqchips.iter().zip(CHIPS).any(|(c, id)| c.chip_id != id) {
        return Err(SnapshotError::Invalid(
            "the irqchip state is not PIC master, PIC slave, IOAPIC".into(),
        ));
    }
    for chip in &state.irqchips {
        fd.set_irqchip(chip).map_err(ioctl("SET_IRQCHIP"))?;
    }
    fd.set_pit2(&state.pit).map_err(ioctl("SET_PIT2"))?;
    let mut clock = state.clock;
    // KVM_SET_CLOCK takes no TSC_STABLE flag (it is reported, not set).
    clock.flags &= !KVM_CLOCK_TSC_STABLE;
    fd.set_clock(&clock).map_err(ioctl("SET_CLOCK"))?;
    Ok(())
}
