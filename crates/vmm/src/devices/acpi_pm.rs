//! Hardware-reduced ACPI power management: the sleep control, sleep status
//! and reset registers the FADT points at. Linux's `poweroff` writes
//! SLP_TYP=5 | SLP_EN here (the DSDT's `_S5_`), which ends the VM.

use std::sync::Arc;

use crate::arch::x86_64::acpi::{ACPI_RESET_VALUE, ACPI_S5_SLP_TYP, ACPI_SLEEP_CONTROL_PORT};
use crate::bus::BusDevice;
use crate::control::{ExitReason, VmControl};

/// First port of the device (the sleep control register).
pub const ACPI_PM_BASE: u64 = ACPI_SLEEP_CONTROL_PORT as u64;
/// Ports it spans: sleep control, sleep status, reset.
pub const ACPI_PM_LEN: u64 = 3;
const SLEEP_CONTROL: u64 = 0;
const RESET: u64 = 2;
const SLP_EN: u8 = 1 << 5;

/// The ACPI power-management registers.
pub struct AcpiPm {
    control: Arc<VmControl>,
}

impl AcpiPm {
    /// A device that ends the VM on S5 or reset.
    pub fn new(control: Arc<VmControl>) -> Self {
        Self { control }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            SLEEP_CONTROL if v & SLP_EN != 0 && (v >> 2) & 7 == ACPI_S5_SLP_TYP => {
                self.control.request_exit(ExitReason::PowerOff("ACPI S5"))
            }
            RESET if v == ACPI_RESET_VALUE => self.control.request_exit(ExitReason::Reset("ACPI reset register")),
            _ => tracing::debug!("ACPI PM write {v:#x} at +{offset} ignored"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn s5_powers_off_and_other_states_do_not() {
        let c = Arc::new(VmControl::new(Instant::now()).expect("control"));
        let mut d = AcpiPm::new(c.clone());
        d.write(SLEEP_CONTROL, &[(3 << 2) | SLP_EN]);
        d.write(SLEEP_CONTROL, &[5 << 2]);
        assert!(c.reason().is_none());
        d.write(SLEEP_CONTROL, &[0x34]);
        assert_eq!(c.reason(), Some(ExitReason::PowerOff("ACPI S5")));
    }

    #[test]
    fn reset_register_resets() {
        let c = Arc::new(VmControl::new(Instant::now()).expect("control"));
        let mut d = AcpiPm::new(c.clone());
        d.write(RESET, &[0]);
        assert!(c.reason().is_none());
        d.write(RESET, &[ACPI_RESET_VALUE]);
        assert!(matches!(c.reason(), Some(ExitReason::Reset(_))));
    }
}
