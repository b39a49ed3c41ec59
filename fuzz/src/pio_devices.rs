//! Fuzz target body: a sequence of accesses to kvmkit's port-I/O bus
//! (serial, i8042, debug port, guest port block, unclaimed ports) and MMIO
//! bus (the null page), built the way `machine.rs` builds them.
//!
//! Input: a sequence of operations, each starting with an op byte `b`:
//!
//! | `b % 8`   | operation                                                     |
//! |-----------|---------------------------------------------------------------|
//! | 0, 1, 2   | port write: size `[1,2,4,8][(b >> 3) & 3]`, port, data        |
//! | 3, 4      | port read: size, port                                         |
//! | 5         | MMIO read or write (bit 5) near/at the null page, or anywhere |
//! | 6         | poke guest memory: u16 address, length byte, bytes            |
//! | 7         | plant a report in guest memory (bit 5 clear; bit 4 set: then  |
//! |           | write its address to the report port) or feed serial input   |
//! |           | (bit 5 set)                                                   |
//!
//! Ports are picked by a selector byte: inside or just around a device's
//! range, from a list of unclaimed ports, or any u16. Write data with bit 5
//! of `b` set is a u16 zero-extended (so report addresses land in RAM often).
//!
//! Checks beyond "no panic": every read returns what that device returns
//! (all-ones when unclaimed), the VM's exit reason is the first one the
//! accesses asked for, the reports collected are exactly the valid ones at
//! the addresses written to the report port (read back from guest memory),
//! and the unclaimed-access counters add up.

use std::sync::{Arc, Mutex};

use kvmkit_guest_abi::{
    Report, ReportKind, DEBUG_PORT, EXIT_PORT, I8042_COMMAND_PORT, I8042_RESET, MILESTONE_ENTRY, MILESTONE_READY,
    NULL_MMIO_ADDR, NULL_MMIO_SIZE, PORT_BASE, PORT_COUNT, REPORT_MAGIC, REPORT_NAME_LEN, REPORT_PORT, REPORT_SIZE,
};
use kvmkit_vmm::arch::x86_64::acpi::{ACPI_RESET_VALUE, ACPI_S5_SLP_TYP};
use kvmkit_vmm::bus::{lock, Bus, BusDevice};
use kvmkit_vmm::control::{ExitReason, VmControl};
use kvmkit_vmm::devices::acpi_pm::{AcpiPm, ACPI_PM_BASE, ACPI_PM_LEN};
use kvmkit_vmm::devices::debug_port::DebugPort;
use kvmkit_vmm::devices::guest_port::GuestPort;
use kvmkit_vmm::devices::i8042::{I8042, I8042_BASE, I8042_LEN};
use kvmkit_vmm::devices::null::NullDevice;
use kvmkit_vmm::devices::serial::{ConsoleOut, SerialDevice, COM1_BASE, UART_LEN};
use kvmkit_vmm::memory::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::{control, guest_memory, le_u32, Input};

const SIZES: [usize; 4] = [1, 2, 4, 8];
const UNCLAIMED: [u64; 8] = [0, 0x70, 0xcf8, 0xcfc, 0x3f7, 0x400, 0xffff, u64::MAX];

/// The buses and the state behind them.
pub struct Machine {
    /// Port-I/O bus as machine.rs builds it.
    pub pio: Bus,
    /// MMIO bus (the null page).
    pub mmio: Bus,
    /// VM control the devices report into.
    pub control: Arc<VmControl>,
    /// Guest RAM the guest port reads reports from.
    pub memory: GuestMemoryMmap,
    /// The UART, also driven by the console thread (input).
    pub serial: Arc<Mutex<SerialDevice>>,
}

/// Builds the buses like `kvmkit_vmm::machine` does, with a sink console.
pub fn machine() -> Machine {
    let control = control();
    let memory = guest_memory();
    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let out = ConsoleOut::new(Box::new(std::io::sink()), control.clone());
    let serial = Arc::new(Mutex::new(SerialDevice::new(irq, out)));
    let dev = |d: Arc<Mutex<dyn BusDevice>>| d;
    let mut pio = Bus::new("pio");
    let mut mmio = Bus::new("mmio");
    pio.insert(dev(serial.clone()), COM1_BASE, UART_LEN).expect("serial");
    pio.insert(
        dev(Arc::new(Mutex::new(I8042::new(control.clone())))),
        I8042_BASE,
        I8042_LEN,
    )
    .expect("i8042");
    pio.insert(
        dev(Arc::new(Mutex::new(DebugPort::new(control.clone())))),
        u64::from(DEBUG_PORT),
        1,
    )
    .expect("debug port");
    pio.insert(
        dev(Arc::new(Mutex::new(GuestPort::new(control.clone(), memory.clone())))),
        u64::from(PORT_BASE),
        u64::from(PORT_COUNT),
    )
    .expect("guest port");
    pio.insert(
        dev(Arc::new(Mutex::new(AcpiPm::new(control.clone())))),
        ACPI_PM_BASE,
        ACPI_PM_LEN,
    )
    .expect("acpi pm");
    mmio.insert(
        dev(Arc::new(Mutex::new(NullDevice::new(0)))),
        NULL_MMIO_ADDR,
        NULL_MMIO_SIZE,
    )
    .expect("null mmio");
    Machine {
        pio,
        mmio,
        control,
        memory,
        serial,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PioDev {
    Serial,
    I8042,
    Debug,
    GuestPort,
    AcpiPm,
    None,
}

fn pio_device(port: u64) -> PioDev {
    let within = |base: u64, len: u64| port >= base && port - base < len;
    if within(COM1_BASE, UART_LEN) {
        PioDev::Serial
    } else if within(I8042_BASE, I8042_LEN) {
        PioDev::I8042
    } else if port == u64::from(DEBUG_PORT) {
        PioDev::Debug
    } else if within(u64::from(PORT_BASE), u64::from(PORT_COUNT)) {
        PioDev::GuestPort
    } else if within(ACPI_PM_BASE, ACPI_PM_LEN) {
        PioDev::AcpiPm
    } else {
        PioDev::None
    }
}

fn pick_port(input: &mut Input<'_>) -> u64 {
    let sel = input.u8();
    let x = u64::from(input.u8());
    // Each range starts one below the device and ends one past it.
    let around = |base: u64, len: u64| (base - 1) + x % (len + 2);
    match sel % 7 {
        6 => around(ACPI_PM_BASE, ACPI_PM_LEN),
        0 => around(COM1_BASE, UART_LEN),
        1 => around(I8042_BASE, I8042_LEN),
        2 => around(u64::from(DEBUG_PORT), 1),
        3 => around(u64::from(PORT_BASE), u64::from(PORT_COUNT)),
        4 => UNCLAIMED[x as usize % UNCLAIMED.len()],
        _ => u64::from(u16::from_le_bytes([x as u8, input.u8()])),
    }
}

/// The report kvmkit should collect for a report-port write of `value`,
/// if any: the one in guest memory there, when it has the magic and a known kind.
fn expected_report(memory: &GuestMemoryMmap, value: u32) -> Option<Report> {
    let mut bytes = [0u8; REPORT_SIZE];
    memory.read_slice(&mut bytes, GuestAddress(u64::from(value))).ok()?;
    let r = Report::from_bytes(&bytes);
    (r.magic == REPORT_MAGIC && ReportKind::from_raw(r.kind).is_some()).then_some(r)
}

struct Model {
    reason: Option<ExitReason>,
    reports: Vec<Report>,
    unclaimed_pio: u64,
    entry_seen: bool,
    ready_seen: bool,
    /// The i8042 took 0xd1 (write output port) and waits for its data byte;
    /// a byte with bit 0 (the reset line) clear resets the machine.
    output_port_pending: bool,
}

/// The i8042's command that writes its output port.
const I8042_WRITE_OUTPUT_PORT: u8 = 0xd1;

impl Model {
    fn exit(&mut self, reason: ExitReason) {
        if self.reason.is_none() {
            self.reason = Some(reason);
        }
    }
}

fn pio_write(m: &Machine, model: &mut Model, port: u64, data: &[u8]) {
    let claimed = m.pio.write(port, data);
    let dev = pio_device(port);
    assert_eq!(claimed, dev != PioDev::None, "pio write claim at {port:#x}");
    match dev {
        PioDev::None => model.unclaimed_pio += 1,
        PioDev::I8042 if port == u64::from(I8042_COMMAND_PORT) => {
            // A new command abandons one still waiting for its data byte.
            model.output_port_pending = data.first() == Some(&I8042_WRITE_OUTPUT_PORT);
            if data.first() == Some(&I8042_RESET) {
                model.exit(ExitReason::Reset("i8042 reset"))
            }
        }
        PioDev::I8042 if port == I8042_BASE => {
            // The pending flag is taken whatever the byte is.
            let pending = std::mem::take(&mut model.output_port_pending);
            if pending && data.first().is_some_and(|v| v & 1 == 0) {
                model.exit(ExitReason::Reset("i8042 output port reset"))
            }
        }
        PioDev::Debug => match data.first() {
            Some(&MILESTONE_ENTRY) => model.entry_seen = true,
            Some(&MILESTONE_READY) => model.ready_seen = true,
            _ => {}
        },
        PioDev::GuestPort if port == u64::from(EXIT_PORT) => model.exit(ExitReason::GuestExit(le_u32(data))),
        PioDev::GuestPort if port == u64::from(REPORT_PORT) => {
            model.reports.extend(expected_report(&m.memory, le_u32(data)));
        }
        // Sleep control: SLP_EN with SLP_TYP = S5 powers off; reset register: the reset value resets.
        PioDev::AcpiPm => match (port - ACPI_PM_BASE, data.first()) {
            (0, Some(&v)) if v & 0x20 != 0 && (v >> 2) & 7 == ACPI_S5_SLP_TYP => {
                model.exit(ExitReason::PowerOff("ACPI S5"))
            }
            (2, Some(&v)) if v == ACPI_RESET_VALUE => model.exit(ExitReason::Reset("ACPI reset register")),
            _ => {}
        },
        _ => {}
    }
}

fn pio_read(m: &Machine, model: &mut Model, port: u64, size: usize) {
    let mut data = [0x5au8; 8];
    let data = &mut data[..size];
    let claimed = m.pio.read(port, data);
    let dev = pio_device(port);
    assert_eq!(claimed, dev != PioDev::None, "pio read claim at {port:#x}");
    match dev {
        PioDev::None => {
            model.unclaimed_pio += 1;
            assert!(
                data.iter().all(|&b| b == 0xff),
                "unclaimed read {port:#x} gave {data:x?}"
            );
        }
        PioDev::Serial => assert!(
            data[1..].iter().all(|&b| b == 0),
            "serial read {port:#x} gave {data:x?}"
        ),
        // The i8042 answers probes (status, CTR, self tests) in its first byte.
        PioDev::I8042 => assert!(data[1..].iter().all(|&b| b == 0), "i8042 read {port:#x} gave {data:x?}"),
        PioDev::GuestPort => assert!(data.iter().all(|&b| b == 0), "read {port:#x} gave {data:x?}"),
        PioDev::Debug => assert!(data.iter().all(|&b| b == 0xff), "debug port read gave {data:x?}"),
        PioDev::AcpiPm => assert!(data.iter().all(|&b| b == 0), "ACPI PM read {port:#x} gave {data:x?}"),
    }
}

fn mmio_access(m: &Machine, input: &mut Input<'_>, b: u8, size: usize) {
    let sel = input.u8();
    let addr = match sel % 4 {
        0 => NULL_MMIO_ADDR + u64::from(input.u16()) % (NULL_MMIO_SIZE + 16),
        1 => NULL_MMIO_ADDR.wrapping_sub(1 + u64::from(input.u8())),
        _ => input.u64(),
    };
    let inside = addr >= NULL_MMIO_ADDR && addr - NULL_MMIO_ADDR < NULL_MMIO_SIZE;
    if b & 0x20 != 0 {
        let data = input.bytes(size);
        assert_eq!(m.mmio.write(addr, data), inside, "mmio write claim at {addr:#x}");
    } else {
        let mut data = [0x5au8; 8];
        let data = &mut data[..size];
        assert_eq!(m.mmio.read(addr, data), inside, "mmio read claim at {addr:#x}");
        let want = if inside { 0 } else { 0xff };
        assert!(data.iter().all(|&x| x == want), "mmio read {addr:#x} gave {data:x?}");
    }
}

/// What one input made happen (for the smoke test to check its reach).
#[derive(Clone, Copy, Debug, Default)]
pub struct Outcome {
    /// Reports kvmkit collected.
    pub reports: usize,
    /// Whether the VM was asked to end.
    pub exited: bool,
    /// Unclaimed port accesses.
    pub unclaimed: u64,
}

/// Runs one input; panics only when kvmkit or the model above is wrong.
pub fn run(data: &[u8]) -> Outcome {
    let m = machine();
    let mut input = Input::new(data);
    let mut model = Model {
        reason: None,
        reports: Vec::new(),
        unclaimed_pio: 0,
        entry_seen: false,
        ready_seen: false,
        output_port_pending: false,
    };
    // Bound the work per input so the fuzzer does not time out on long inputs.
    for _ in 0..4096 {
        if input.is_empty() {
            break;
        }
        let b = input.u8();
        let size = SIZES[usize::from((b >> 3) & 3)];
        match b % 8 {
            0..=2 => {
                let port = pick_port(&mut input);
                let data: Vec<u8> = if b & 0x20 != 0 {
                    let v = u64::from(input.u16());
                    v.to_le_bytes()[..size].to_vec()
                } else {
                    input.bytes(size).to_vec()
                };
                pio_write(&m, &mut model, port, &data);
            }
            3 | 4 => {
                let port = pick_port(&mut input);
                pio_read(&m, &mut model, port, size);
            }
            5 => mmio_access(&m, &mut input, b, size),
            6 => {
                let addr = u64::from(input.u16());
                let len = usize::from(input.u8() % 96);
                let bytes = input.bytes(len);
                // May fail or stop short at the end of RAM; that is fine.
                let _ = m.memory.write(bytes, GuestAddress(addr));
            }
            _ if b & 0x20 == 0 => {
                let addr = u64::from(input.u16());
                let mut r = Report::new(ReportKind::Result, u32::from(input.u8()));
                r.kind = u32::from(input.u8() % 6);
                r.value = u64::from(input.u32());
                r.name = [input.u8(); REPORT_NAME_LEN];
                let _ = m.memory.write(&report_bytes(&r), GuestAddress(addr));
                if b & 0x10 != 0 {
                    // Hand it over, the way the guest does.
                    pio_write(&m, &mut model, u64::from(REPORT_PORT), &(addr as u32).to_le_bytes());
                }
            }
            _ => {
                let n = usize::from(input.u8() % 80);
                let bytes = input.bytes(n);
                let took = lock(&m.serial).enqueue_input(bytes);
                assert!(took <= bytes.len());
            }
        }
    }
    assert_eq!(m.control.reason(), model.reason);
    assert_eq!(m.control.stopping(), model.reason.is_some());
    assert_eq!(m.control.reports(), model.reports);
    assert_eq!(m.control.timeline.entry.get().is_some(), model.entry_seen);
    assert_eq!(m.control.timeline.ready.get().is_some(), model.ready_seen);
    let unclaimed: u64 = m.pio.unclaimed_summary().total;
    assert_eq!(unclaimed, model.unclaimed_pio);
    Outcome {
        reports: model.reports.len(),
        exited: model.reason.is_some(),
        unclaimed,
    }
}

/// A report's bytes as the guest lays them out (little-endian, repr(C)).
pub fn report_bytes(r: &Report) -> [u8; REPORT_SIZE] {
    let mut b = [0u8; REPORT_SIZE];
    b[0..4].copy_from_slice(&r.magic.to_le_bytes());
    b[4..8].copy_from_slice(&r.kind.to_le_bytes());
    b[8..12].copy_from_slice(&r.cpu.to_le_bytes());
    b[12..16].copy_from_slice(&r.reserved.to_le_bytes());
    b[16..16 + REPORT_NAME_LEN].copy_from_slice(&r.name);
    let o = 16 + REPORT_NAME_LEN;
    b[o..o + 8].copy_from_slice(&r.arg.to_le_bytes());
    b[o + 8..o + 16].copy_from_slice(&r.value.to_le_bytes());
    b[o + 16..o + 24].copy_from_slice(&r.ticks.to_le_bytes());
    b[o + 24..o + 32].copy_from_slice(&r.ns.to_le_bytes());
    b
}
