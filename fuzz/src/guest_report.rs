//! Fuzz target body: `Report::from_bytes` on arbitrary bytes, then the guest
//! port's report handling on arbitrary guest memory contents.
//!
//! Input: the first `REPORT_SIZE` bytes (zero-padded) are a raw report. The
//! rest is a sequence of 7-byte steps `[sel, a0, a1, a2, a3, xi, xv]`: flip
//! report byte `xi % REPORT_SIZE` by `xv`; force the magic (sel bit 2) and a
//! kind in 0..=5 (bit 3); unless bit 5 is set, store the report at address
//! `a` (a u16 when bit 4 is set, so it lands in RAM often; it may cross the
//! end of a region or fall in a hole); then write `a` to the report port as
//! a `[1,2,4,8][sel & 3]`-byte access.
//!
//! Checks: `from_bytes` decodes every field as little-endian at its offset
//! and re-encodes to the same bytes; `name_str` is NUL-free and at most 32
//! bytes; the guest port collects exactly the valid reports (magic and a
//! known kind) that guest memory held at the addresses it was given, and
//! nothing else happens to the VM.

use kvmkit_guest_abi::{Report, ReportKind, PORT_BASE, REPORT_MAGIC, REPORT_NAME_LEN, REPORT_PORT, REPORT_SIZE};
use kvmkit_vmm::bus::BusDevice;
use kvmkit_vmm::devices::guest_port::GuestPort;
use vm_memory::{Bytes, GuestAddress};

use crate::pio_devices::report_bytes;
use crate::{control, guest_memory, le_u32, Input};

const SIZES: [usize; 4] = [1, 2, 4, 8];

fn check_decoding(bytes: &[u8; REPORT_SIZE]) -> Report {
    let r = Report::from_bytes(bytes);
    let le = |o: usize, n: usize| bytes[o..o + n].iter().rev().fold(0u64, |v, &b| (v << 8) | u64::from(b));
    assert_eq!(u64::from(r.magic), le(0, 4));
    assert_eq!(u64::from(r.kind), le(4, 4));
    assert_eq!(u64::from(r.cpu), le(8, 4));
    assert_eq!(u64::from(r.reserved), le(12, 4));
    assert_eq!(r.name[..], bytes[16..16 + REPORT_NAME_LEN]);
    let o = 16 + REPORT_NAME_LEN;
    assert_eq!(r.arg, le(o, 8));
    assert_eq!(r.value, le(o + 8, 8));
    assert_eq!(r.ticks, le(o + 16, 8));
    assert_eq!(r.ns, le(o + 24, 8));
    assert_eq!(&report_bytes(&r), bytes, "re-encoding differs");
    if let Some(name) = r.name_str() {
        assert!(name.len() <= REPORT_NAME_LEN && !name.contains('\0'));
    }
    assert_eq!(ReportKind::from_raw(r.kind).is_some(), (1..=4).contains(&r.kind));
    if let Some(k) = ReportKind::from_raw(r.kind) {
        assert_eq!(k as u32, r.kind);
    }
    r
}

/// Runs one input; panics only when kvmkit or the checks above are wrong.
/// Returns how many reports the guest port collected.
pub fn run(data: &[u8]) -> usize {
    let mut input = Input::new(data);
    let mut bytes = [0u8; REPORT_SIZE];
    let head = input.bytes(REPORT_SIZE);
    bytes[..head.len()].copy_from_slice(head);
    check_decoding(&bytes);

    let control = control();
    let memory = guest_memory();
    let mut port = GuestPort::new(control.clone(), memory.clone());
    let offset = u64::from(REPORT_PORT - PORT_BASE);
    let mut expected = Vec::new();
    let mut steps = 0;
    while steps == 0 || (!input.is_empty() && steps < 2048) {
        steps += 1;
        let sel = input.u8();
        let addr_raw = input.u32();
        let xi = usize::from(input.u8()) % REPORT_SIZE;
        let xv = input.u8();
        bytes[xi] ^= xv;
        if sel & 0x04 != 0 {
            bytes[0..4].copy_from_slice(&REPORT_MAGIC.to_le_bytes());
        }
        if sel & 0x08 != 0 {
            bytes[4..8].copy_from_slice(&u32::from(xv % 6).to_le_bytes());
        }
        let addr = if sel & 0x10 != 0 { addr_raw & 0xffff } else { addr_raw };
        if sel & 0x20 == 0 {
            // May fail or stop short at the end of a region; that is fine.
            let _ = memory.write(&bytes, GuestAddress(u64::from(addr)));
        }
        let size = SIZES[usize::from(sel & 3)];
        let access = u64::from(addr).to_le_bytes();
        let access = &access[..size];

        let mut in_ram = [0u8; REPORT_SIZE];
        let value = le_u32(access);
        if memory.read_slice(&mut in_ram, GuestAddress(u64::from(value))).is_ok() {
            let r = check_decoding(&in_ram);
            if r.magic == REPORT_MAGIC && ReportKind::from_raw(r.kind).is_some() {
                expected.push(r);
            }
        }
        port.write(offset, access);
    }
    assert_eq!(control.reports(), expected);
    assert_eq!(control.reason(), None);
    assert!(!control.stopping());
    expected.len()
}
