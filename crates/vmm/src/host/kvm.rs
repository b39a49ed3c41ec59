//! Opening `/dev/kvm` with errors a person can act on.

use std::thread::JoinHandle;

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;

/// Path of the KVM device.
pub const KVM_PATH: &str = "/dev/kvm";

/// Why `/dev/kvm` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KvmOpenError {
    /// The device node does not exist.
    #[error("{KVM_PATH} does not exist: load KVM (modprobe kvm_intel, kvm_amd or kvm_pvm) or enable virtualization in the firmware")]
    Missing,
    /// No permission to open it read-write.
    #[error("no permission to open {KVM_PATH} read-write: run as root or add your user to the 'kvm' group")]
    Permission,
    /// Another error.
    #[error("cannot open {KVM_PATH}: {0}")]
    Other(std::io::Error),
}

/// Opens `/dev/kvm`, turning the usual failures into actionable errors.
pub fn open_kvm() -> Result<Kvm, KvmOpenError> {
    Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT | libc::ENODEV | libc::ENXIO => KvmOpenError::Missing,
        libc::EACCES | libc::EPERM => KvmOpenError::Permission,
        n => KvmOpenError::Other(std::io::Error::from_raw_os_error(n)),
    })
}

/// `KVM_GET_SUPPORTED_CPUID`, fetched on a thread of its own while the VM
/// is built: the kernel runs the host's CPUID instruction for every leaf,
/// and where the host is itself a VM each one traps (~0.35 ms in all on
/// this lab's kvm_pvm host, a sixth of kvmkit's start-up). The thread opens
/// its own `/dev/kvm` fd.
pub struct SupportedCpuid(Option<JoinHandle<Result<CpuId, kvm_ioctls::Error>>>);

impl SupportedCpuid {
    /// Starts the fetch (if no thread can start, [`Self::get`] does it).
    pub fn fetch() -> Self {
        let job = || Kvm::new()?.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES);
        Self(std::thread::Builder::new().name("kvm-cpuid".into()).spawn(job).ok())
    }

    /// The supported CPUID, from the thread or, if it failed, from `kvm`.
    pub fn get(self, kvm: &Kvm) -> Result<CpuId, kvm_ioctls::Error> {
        match self.0.map(JoinHandle::join) {
            Some(Ok(Ok(cpuid))) => Ok(cpuid),
            _ => kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES),
        }
    }
}

/// The KVM vendor module loaded on this host, from `/sys/module`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VendorModule {
    /// Intel VT-x (kvm_intel).
    KvmIntel,
    /// AMD-V (kvm_amd).
    KvmAmd,
    /// PVM: software virtualization without VT-x/AMD-V (kvm_pvm).
    KvmPvm,
}

impl VendorModule {
    /// Module name as in `/sys/module`.
    pub fn name(self) -> &'static str {
        match self {
            Self::KvmIntel => "kvm_intel",
            Self::KvmAmd => "kvm_amd",
            Self::KvmPvm => "kvm_pvm",
        }
    }

    /// What this module means for guests, in words.
    pub fn meaning(self) -> &'static str {
        match self {
            Self::KvmIntel => "hardware virtualization (Intel VT-x): stock Linux guests and the kvmkit test guest run",
            Self::KvmAmd => "hardware virtualization (AMD-V): stock Linux guests and the kvmkit test guest run",
            Self::KvmPvm => {
                "PVM software virtualization: guests need a PVM-enabled kernel; stock distro kernels will not boot; \
                 the kvmkit test guest runs (its work at CPL3 runs natively)"
            }
        }
    }

    /// Detects the loaded vendor module under `sys_module` (normally `/sys/module`).
    pub fn detect(sys_module: &std::path::Path) -> Option<Self> {
        [Self::KvmIntel, Self::KvmAmd, Self::KvmPvm]
            .into_iter()
            .find(|m| sys_module.join(m.name()).exists())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_module_is_detected_from_sysfs() {
        let dir = std::env::temp_dir().join(format!("kvmkit-sysmod-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("kvm_pvm")).expect("mkdir");
        assert_eq!(VendorModule::detect(&dir), Some(VendorModule::KvmPvm));
        std::fs::remove_dir_all(dir.join("kvm_pvm")).expect("rmdir");
        assert_eq!(VendorModule::detect(&dir), None);
        std::fs::create_dir_all(dir.join("kvm_amd")).expect("mkdir");
        assert_eq!(VendorModule::detect(&dir), Some(VendorModule::KvmAmd));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn pvm_meaning_warns_about_stock_kernels() {
        assert!(VendorModule::KvmPvm
            .meaning()
            .contains("stock distro kernels will not boot"));
    }
}
