//! Device models on the port-I/O and MMIO buses.

pub mod acpi_pm;
pub mod debug_port;
pub mod guest_port;
pub mod i8042;
pub mod null;
pub mod serial;
pub mod vmgenid;
