//! kvmkit's virtual machine monitor.
//!
//! The layout mirrors the machine: [`host`] (what /dev/kvm offers),
//! [`memory`] and [`arch`] (guest RAM and the x86_64 memory map, boot
//! tables, CPUID, MP table), [`boot`] (kernel images and boot protocols),
//! [`vm`] and [`vcpu`] (KVM state and the per-vCPU run loop), [`bus`] and
//! [`devices`] and [`device_manager`] (where exits go), [`control`] (how a
//! VM ends), [`console`] (the host terminal and signals), [`vmm_config`]
//! (the resources a VM is built from, as plain serde data), [`machine`]
//! (the VM object and its [`lifecycle`]), [`rpc`] (what a control plane may
//! ask) and [`runtime`] (the VMM thread's event loop that serves it).

pub mod arch;
pub mod boot;
pub mod bus;
pub mod console;
pub mod console_filter;
pub mod control;
pub mod device_manager;
pub mod devices;
pub mod exit_floor;
pub mod files;
pub mod host;
pub mod lifecycle;
pub mod machine;
pub mod memory;
pub mod metrics;
pub mod net;
pub mod rpc;
pub mod runtime;
pub mod seccomp;
pub mod snapshot;
pub mod vcpu;
pub mod virtio;
pub mod vm;
pub mod vmm_config;

pub use control::ExitReason;
pub use machine::{KernelSource, Machine, MachineError, MachineOptions, RunOutcome};
pub use runtime::{run_vmm, VmmOptions};

/// Everything `kvmkit check` reports: the host's KVM, the snapshot ioctls
/// KVM here accepts, seccomp and Landlock.
pub fn check_host() -> host::check::HostCheck {
    host::check::check_host_with(&|kvm, pvm| {
        let mut items = kvm.map(|k| snapshot::probe::host_items(k, pvm)).unwrap_or_default();
        items.extend(seccomp::host_items());
        items
    })
}
