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

/// Cloud Hypervisor's ACPI shutdown device (x86): a byte `SLP_EN | SLP_TYP=5`
/// written here powers the VM off. It shares the port with kvmkit's
/// [`abi::EXIT_PORT`], which has ended the VM already when kvmkit runs it.
const CLOUD_HYPERVISOR_SHUTDOWN_PORT: u16 = 0x600;
/// `SLP_EN | SLP_TYP=5` (S5, off), as Cloud Hypervisor's DSDT defines it.
const CLOUD_HYPERVISOR_S5: u8 = 0x34;

/// Ends the VM with `status`: the kvmkit exit port first; where that does
/// nothing (other VMMs), Cloud Hypervisor's ACPI S5 port, QEMU microvm's ACPI
/// GED S5 register, then an i8042 reset (Firecracker ends the VM on it).
/// Spins (never `hlt`: this is CPL3) if all of them fail.
pub fn exit(status: u32) -> ! {
    outl(abi::EXIT_PORT, status);
    outb(CLOUD_HYPERVISOR_SHUTDOWN_PORT, CLOUD_HYPERVISOR_S5);
    mmio_write8(abi::QEMU_MICROVM_GED_SLEEP_ADDR, abi::QEMU_MICROVM_GED_SLEEP_S5);
    outb(abi::I8042_COMMAND_PORT, abi::I8042_RESET);
    loop {
        spin_loop();
    }
}
