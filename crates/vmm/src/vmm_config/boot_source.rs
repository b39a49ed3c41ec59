//! `boot-source`: the kernel, initrd and command line.

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError};

/// Longest kernel command line accepted (the Linux boot protocol's limit
/// on x86_64 is 2048 bytes, NUL included).
pub const MAX_BOOT_ARGS: usize = 2047;

/// `PUT /boot-source`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSourceConfig {
    /// Host path of the kernel: a bzImage, an ELF vmlinux or a PVH ELF.
    pub kernel_image_path: String,
    /// Host path of an initrd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
    /// Kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}

/// Firecracker's command line when none is given (no serial console: a
/// client that wants one passes `console=ttyS0`).
pub const DEFAULT_BOOT_ARGS: &str =
    "reboot=k panic=1 pci=off nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.dumbkbd swiotlb=noforce";

impl BootSourceConfig {
    /// Checks the fields a client sets.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kernel_image_path.is_empty() {
            return Err(invalid("kernel_image_path", "give the host path of a kernel image"));
        }
        if let Some(args) = &self.boot_args {
            if args.len() > MAX_BOOT_ARGS {
                return Err(invalid(
                    "boot_args",
                    format!("{} bytes is longer than the {MAX_BOOT_ARGS}-byte limit", args.len()),
                ));
            }
            if args.bytes().any(|b| b == 0) {
                return Err(invalid("boot_args", "must not contain a NUL byte"));
            }
        }
        Ok(())
    }

    /// The command line to boot with.
    pub fn boot_args_or_default(&self) -> &str {
        self.boot_args.as_deref().unwrap_or(DEFAULT_BOOT_ARGS)
    }
}
