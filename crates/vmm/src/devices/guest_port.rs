//! The kvmkit guest port block (0x600-0x60f): exit status, reports, null port.
//!
//! See `kvmkit_guest_abi` and docs/guest-protocol.md. Everything the guest
//! writes here is untrusted: bad report addresses or contents are logged
//! (rate limited) and ignored.

use std::sync::Arc;

use kvmkit_guest_abi::{Report, ReportKind, EXIT_PORT, NULL_PORT, PORT_BASE, REPORT_MAGIC, REPORT_PORT, REPORT_SIZE};
use vm_memory::{Bytes, GuestAddress};

use crate::bus::BusDevice;
use crate::control::{ExitReason, VmControl};
use crate::memory::GuestMemoryMmap;

/// Most malformed reports logged before going quiet.
const MAX_WARNINGS: u32 = 10;

/// The guest port block device.
pub struct GuestPort {
    control: Arc<VmControl>,
    memory: GuestMemoryMmap,
    warnings: u32,
}

impl GuestPort {
    /// A guest port block that reads reports from `memory`.
    pub fn new(control: Arc<VmControl>, memory: GuestMemoryMmap) -> Self {
        Self {
            control,
            memory,
            warnings: 0,
        }
    }

    fn warn(&mut self, what: std::fmt::Arguments<'_>) {
        if self.warnings < MAX_WARNINGS {
            self.warnings += 1;
            tracing::warn!(
                "guest port: {what}{}",
                if self.warnings == MAX_WARNINGS {
                    " (further warnings suppressed)"
                } else {
                    ""
                }
            );
        }
    }

    fn take_report(&mut self, addr: u64) {
        let mut bytes = [0u8; REPORT_SIZE];
        if self.memory.read_slice(&mut bytes, GuestAddress(addr)).is_err() {
            self.warn(format_args!("report address {addr:#x} is outside guest RAM"));
            return;
        }
        let report = Report::from_bytes(&bytes);
        if report.magic != REPORT_MAGIC || ReportKind::from_raw(report.kind).is_none() {
            self.warn(format_args!(
                "malformed report at {addr:#x} (magic {:#x}, kind {})",
                report.magic, report.kind
            ));
            return;
        }
        self.control.add_report(report);
    }
}

/// Little-endian value of an access of 1, 2 or 4 bytes (others read as 0).
pub fn le_value(data: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let n = data.len().min(4);
    b[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(b)
}

impl BusDevice for GuestPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let port = PORT_BASE as u64 + offset;
        if port == u64::from(EXIT_PORT) {
            self.control.request_exit(ExitReason::GuestExit(le_value(data)));
        } else if port == u64::from(REPORT_PORT) {
            self.take_report(u64::from(le_value(data)));
        } else if port != u64::from(NULL_PORT) {
            self.warn(format_args!("write to reserved port {port:#x}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn setup() -> (Arc<VmControl>, GuestMemoryMmap, GuestPort) {
        let c = Arc::new(VmControl::new(Instant::now()).expect("control"));
        let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("mem");
        let p = GuestPort::new(c.clone(), mem.clone());
        (c, mem, p)
    }

    fn report_bytes(r: &Report) -> [u8; REPORT_SIZE] {
        // SAFETY: Report is repr(C) plain data with no padding (checked by its size test).
        unsafe { std::mem::transmute(*r) }
    }

    #[test]
    fn exit_port_ends_the_vm_with_the_status() {
        let (c, _, mut p) = setup();
        p.write(0, &7u32.to_le_bytes());
        assert_eq!(c.reason(), Some(ExitReason::GuestExit(7)));
    }

    #[test]
    fn valid_reports_are_collected() {
        let (c, mem, mut p) = setup();
        let mut r = Report::new(ReportKind::Result, 1);
        r.set_name("primes");
        r.value = 9592;
        mem.write_slice(&report_bytes(&r), GuestAddress(0x5000)).expect("write");
        p.write(4, &0x5000u32.to_le_bytes());
        assert_eq!(c.reports(), vec![r]);
    }

    #[test]
    fn hostile_reports_are_ignored() {
        let (c, mem, mut p) = setup();
        p.write(4, &0xffff_fff0u32.to_le_bytes());
        p.write(4, &[0x12]);
        mem.write_slice(&[0xab; REPORT_SIZE], GuestAddress(0x100))
            .expect("write");
        p.write(4, &0x100u32.to_le_bytes());
        let mut bad_kind = Report::new(ReportKind::Result, 0);
        bad_kind.kind = 77;
        mem.write_slice(&report_bytes(&bad_kind), GuestAddress(0x200))
            .expect("write");
        p.write(4, &0x200u32.to_le_bytes());
        for _ in 0..100 {
            p.write(0xc, &[1]);
        }
        assert!(c.reports().is_empty());
        assert!(c.reason().is_none());
    }

    #[test]
    fn null_port_does_nothing() {
        let (c, _, mut p) = setup();
        p.write(8, &1u32.to_le_bytes());
        let mut d = [0xffu8; 4];
        p.read(8, &mut d);
        assert_eq!(d, [0; 4]);
        assert!(c.reason().is_none());
    }
}
