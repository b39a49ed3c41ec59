//! Handing [`Report`]s to the VMM through [`REPORT_PORT`].

use core::cell::UnsafeCell;

use kvmkit_guest_abi::{Report, MAX_CPUS, REPORT_PORT};

use crate::arch::outl;

/// One report buffer per CPU, plus a shared one for callers that do not know
/// their CPU (the panic path).
#[repr(align(16))]
struct Slot(UnsafeCell<Report>);

// SAFETY: CPU `i` only ever touches slot `i`; the spare slot is used by the
// panic path only, where a race would at worst garble a dying report.
unsafe impl Sync for Slot {}

static SLOTS: [Slot; MAX_CPUS + 1] =
    [const { Slot(UnsafeCell::new(Report::new(kvmkit_guest_abi::ReportKind::Result, 0))) }; MAX_CPUS + 1];

/// Copies `report` into its CPU's buffer and writes the buffer's physical
/// address to [`REPORT_PORT`]; the VMM reads it during that exit.
pub fn send(report: &Report) {
    let index = (report.cpu as usize).min(MAX_CPUS);
    let slot = SLOTS[index].0.get();
    // SAFETY: slot `index` belongs to the calling CPU (see `Slot`), so nothing
    // else accesses it while we write it.
    unsafe { slot.write_volatile(*report) };
    // Identity-mapped and below 4 GiB: the address is the physical address.
    outl(REPORT_PORT, slot as usize as u32);
}
