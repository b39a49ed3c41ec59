//! kvmkit's freestanding test guest.
//!
//! Booted through PVH (an `XEN_ELFNOTE_PHYS32_ENTRY` note). `boot.S` does the
//! whole CPL0 part in assembly and drops every CPU to CPL3, where
//! [`user_main`] runs the workload named on the command line and reports to
//! the VMM through the ports of `kvmkit-guest-abi`. See docs/test-guest.md.
#![no_std]
#![no_main]

mod arch;
#[macro_use]
mod serial;
mod bsp;
mod config;
mod devwork;
mod exit;
mod mem;
mod net;
mod panic;
mod report;
mod smp;
mod start_info;
mod suite;
mod suite_io;
mod ticks;
mod tsc;
mod virtio;
mod vsock;
mod workload;

use core::arch::global_asm;
use core::mem::offset_of;

use kvmkit_guest_abi as abi;

global_asm!(
    include_str!("boot.S"),
    max_cpus = const abi::MAX_CPUS,
    debug_port = const abi::DEBUG_PORT,
    milestone_entry = const abi::MILESTONE_ENTRY,
    report_port = const abi::REPORT_PORT,
    exit_port = const abi::EXIT_PORT,
    report_magic = const abi::REPORT_MAGIC,
    report_kind_exception = const abi::ReportKind::Exception as u32,
    report_cpu = const offset_of!(abi::Report, cpu),
    report_name = const offset_of!(abi::Report, name),
    report_arg = const offset_of!(abi::Report, arg),
    report_value = const offset_of!(abi::Report, value),
    report_ticks = const offset_of!(abi::Report, ticks),
    report_size = const abi::REPORT_SIZE,
    ged_sleep_addr = const abi::QEMU_MICROVM_GED_SLEEP_ADDR,
    ged_sleep_s5 = const abi::QEMU_MICROVM_GED_SLEEP_S5,
    i8042_port = const abi::I8042_COMMAND_PORT,
    i8042_reset = const abi::I8042_RESET,
    user_stack_size = const smp::USER_STACK_SIZE,
    options(att_syntax)
);

/// First Rust code on every CPU, entered from `boot.S` with `iretq` at CPL3.
///
/// `cpu` is the CPU index (0 = bootstrap processor); `start_info` is the
/// physical address of the PVH `hvm_start_info` on the BSP and 0 on APs;
/// `apic_id` and `tsc_khz` come from CPUID executed at CPL0 (see boot.S),
/// `tsc_khz` from the hypervisor timing leaf on the BSP only, 0 if absent.
#[no_mangle]
pub extern "C" fn user_main(cpu: u64, start_info: u64, apic_id: u64, tsc_khz: u64) -> ! {
    smp::set_apic_id(cpu as u32, apic_id as u32);
    if cpu == 0 {
        bsp::main(start_info, tsc_khz)
    } else {
        workload::ap_main(cpu as u32)
    }
}
