//! Opening `/dev/kvm` with errors a person can act on.

use std::thread::JoinHandle;

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm};

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
        let job = || {
            let kvm = Kvm::new()?;
            supported_cpuid(&kvm)
        };
        Self(std::thread::Builder::new().name("kvm-cpuid".into()).spawn(job).ok())
    }

    /// The supported CPUID, from the thread or, if it failed, from `kvm`.
    pub fn get(self, kvm: &Kvm) -> Result<CpuId, kvm_ioctls::Error> {
        match self.0.map(JoinHandle::join) {
            Some(Ok(Ok(cpuid))) => Ok(cpuid),
            _ => supported_cpuid(kvm),
        }
    }
}

/// CPUID.01H:ECX[24]: the local APIC timer has a TSC-deadline mode.
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;

/// `KVM_GET_SUPPORTED_CPUID`, plus what KVM supports but reports only as a
/// capability: the TSC-deadline timer (`KVM_CAP_TSC_DEADLINE_TIMER`; the
/// kernel's API document says VMMs set the bit themselves, as Firecracker,
/// Cloud Hypervisor and QEMU do). Without it Linux calibrates the local APIC
/// timer against the PIT at boot (a tenth of a second of ticks) and programs
/// every timer event through the APIC's MMIO page, an instruction-emulating
/// exit, instead of one `WRMSR`.
fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, kvm_ioctls::Error> {
    let mut cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)?;
    if kvm.check_extension(Cap::TscDeadlineTimer) {
        set_tsc_deadline(&mut cpuid);
    }
    Ok(cpuid)
}

/// Sets the TSC-deadline bit in leaf 0x1 (if the table has that leaf).
fn set_tsc_deadline(cpuid: &mut CpuId) {
    for entry in cpuid.as_mut_slice().iter_mut().filter(|e| e.function == 0x1) {
        entry.ecx |= LEAF1_ECX_TSC_DEADLINE;
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
    fn tsc_deadline_bit_is_set_in_leaf_1_only() {
        let leaf = |function, ecx| kvm_bindings::kvm_cpuid_entry2 {
            function,
            ecx,
            ..Default::default()
        };
        let mut cpuid = CpuId::from_entries(&[leaf(0x0, 0), leaf(0x1, 0x8000_0001), leaf(0x7, 0)]).expect("cpuid");
        set_tsc_deadline(&mut cpuid);
        let ecx: Vec<u32> = cpuid.as_slice().iter().map(|e| e.ecx).collect();
        assert_eq!(ecx, vec![0, 0x8100_0001, 0]);
    }

    #[test]
    fn supported_cpuid_has_tsc_deadline_when_kvm_offers_it() {
        let Ok(kvm) = Kvm::new() else {
            eprintln!("skipping: cannot open /dev/kvm");
            return;
        };
        let cpuid = SupportedCpuid::fetch().get(&kvm).expect("KVM_GET_SUPPORTED_CPUID");
        let leaf1 = cpuid.as_slice().iter().find(|e| e.function == 0x1).expect("leaf 1");
        assert_eq!(
            leaf1.ecx & LEAF1_ECX_TSC_DEADLINE != 0,
            kvm.check_extension(Cap::TscDeadlineTimer)
        );
    }

    #[test]
    fn pvm_meaning_warns_about_stock_kernels() {
        assert!(VendorModule::KvmPvm
            .meaning()
            .contains("stock distro kernels will not boot"));
    }
}
