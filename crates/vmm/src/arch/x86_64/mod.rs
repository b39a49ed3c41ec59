//! x86_64 specifics: memory map, boot tables, registers, CPUID, MP table.

pub mod acpi;
pub mod cpuid;
pub mod e820;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod regs;
