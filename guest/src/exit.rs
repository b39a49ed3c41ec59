//! Ending the VM, under kvmkit and under QEMU microvm.

use core::hint::spin_loop;

use kvmkit_guest_abi as abi;

use crate::arch::{mmio_write8, outb, outl};

/// Success.
pub const OK: u32 = 0;
/// The workload ran but failed (e.g. memtest found errors).
pub const WORKLOAD_FAILED: u32 = 1;
/// The command line named an unknown workload or a bad value.
pub const BAD_CMDLINE: u32 = 2;
/// Fewer CPUs came online than `kvmkit.cpus` asked for.
pub const CPUS_MISSING: u32 = 3;
/// Not enough free RAM (or no memory map) for the memtest size asked for.
pub const NO_MEMORY: u32 = 4;
/// A device workload found no usable device, the device failed or refused
/// the I/O (e.g. a write to a read-only disk), or the disk is too small.
pub const DEVICE_ERROR: u32 = 5;
/// The guest panicked.
pub const PANIC: u32 = 101;

/// Ends the VM with `status`: the kvmkit exit port first; where that does
/// nothing (QEMU), the microvm ACPI GED S5 register, then an i8042 reset.
/// Spins (never `hlt`: this is CPL3) if all of them fail.
pub fn exit(status: u32) -> ! {
    outl(abi::EXIT_PORT, status);
    mmio_write8(abi::QEMU_MICROVM_GED_SLEEP_ADDR, abi::QEMU_MICROVM_GED_SLEEP_S5);
    outb(abi::I8042_COMMAND_PORT, abi::I8042_RESET);
    loop {
        spin_loop();
    }
}
