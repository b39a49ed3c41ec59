//! `kvmkit check`: can this host run VMs? One item per requirement.

use kvm_ioctls::{Cap, Kvm};

use super::kvm::{open_kvm, VendorModule, KVM_PATH};

/// The KVM API version kvmkit is written against.
pub const KVM_API_VERSION: i32 = 12;

/// Capabilities kvmkit cannot run without, with what each is for.
pub const REQUIRED_CAPS: &[(Cap, &str, &str)] = &[
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY", "guest RAM from VMM memory"),
    (Cap::Irqchip, "KVM_CAP_IRQCHIP", "in-kernel interrupt controllers"),
    (Cap::Pit2, "KVM_CAP_PIT2", "in-kernel timer (PIT)"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR", "x86 TSS placement"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID", "per-vCPU CPUID"),
    (Cap::Irqfd, "KVM_CAP_IRQFD", "device interrupts by eventfd"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD", "device notifications by eventfd"),
    (Cap::MpState, "KVM_CAP_MP_STATE", "multi-processor start-up"),
];

/// Capabilities kvmkit uses when present.
pub const OPTIONAL_CAPS: &[(Cap, &str, &str)] = &[
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT", "prompt vCPU stop"),
    (
        Cap::TscDeadlineTimer,
        "KVM_CAP_TSC_DEADLINE_TIMER",
        "TSC-deadline timer",
    ),
    (Cap::GetTscKhz, "KVM_CAP_GET_TSC_KHZ", "TSC frequency for timing"),
    (Cap::Xsave, "KVM_CAP_XSAVE", "extended FPU state"),
];

/// One line of the report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CheckItem {
    /// What was checked.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// Whether a failure makes the host unusable.
    pub required: bool,
    /// What was found.
    pub detail: String,
    /// How to fix a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// The whole report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HostCheck {
    /// Every item, in order.
    pub items: Vec<CheckItem>,
    /// The vendor module, if one is loaded.
    pub vendor_module: Option<VendorModule>,
    /// Whether KVM acceleration can be used.
    pub usable: bool,
    /// The closing sentence.
    pub verdict: String,
}

fn item(name: &str, ok: bool, required: bool, detail: String, fix: Option<&str>) -> CheckItem {
    CheckItem {
        name: name.into(),
        ok,
        required,
        detail,
        fix: if ok { None } else { fix.map(str::to_owned) },
    }
}

/// Checks that other parts of kvmkit add to the host's (snapshot ioctls,
/// seccomp, Landlock): given the open `/dev/kvm`, if it opened, and whether
/// the vendor module is kvm_pvm. (Passed in, so that this module, which they
/// all report through, depends on none of them.)
pub type ExtraChecks<'a> = &'a dyn Fn(Option<&Kvm>, bool) -> Vec<CheckItem>;

/// Runs the host's own checks (device, module, KVM API) against this host;
/// `kvmkit_vmm::check_host` adds every other part's.
pub fn check_host_with(extra: ExtraChecks<'_>) -> HostCheck {
    let mut items = Vec::new();
    let path = std::path::Path::new(KVM_PATH);
    let exists = path.exists();
    items.push(item(
        "/dev/kvm present",
        exists,
        true,
        if exists {
            format!("{KVM_PATH} exists")
        } else {
            format!("{KVM_PATH} not found")
        },
        Some("load KVM (modprobe kvm_intel, kvm_amd or kvm_pvm) or enable virtualization (VT-x/AMD-V) in the firmware"),
    ));
    let vendor = VendorModule::detect(std::path::Path::new("/sys/module"));
    let kvm = open_kvm();
    items.push(item(
        "/dev/kvm read-write",
        kvm.is_ok(),
        true,
        match &kvm {
            Ok(_) => "opened read-write".into(),
            Err(e) => e.to_string(),
        },
        Some("run as root or add your user to the 'kvm' group"),
    ));
    items.push(item(
        "vendor module",
        vendor.is_some(),
        true,
        match vendor {
            Some(v) => format!("{}: {}", v.name(), v.meaning()),
            None => "no kvm_intel, kvm_amd or kvm_pvm module loaded".into(),
        },
        Some("modprobe kvm_intel (Intel), kvm_amd (AMD) or kvm_pvm (no hardware virtualization)"),
    ));
    let pvm = matches!(vendor, Some(VendorModule::KvmPvm));
    if let Ok(kvm) = &kvm {
        check_api(kvm, &mut items);
    }
    items.extend(extra(kvm.as_ref().ok(), pvm));
    let usable = items.iter().all(|i| i.ok || !i.required);
    let verdict = if usable && pvm {
        "KVM acceleration can be used, with kvm_pvm's caveat: guest kernel (CPL0) code is emulated, so \
         only kvmkit's own guest and kernels built with PVM guest support run fast; a stock kernel \
         stops early (prove those in the nested lab: cargo xtask nested)"
            .to_owned()
    } else if usable {
        "KVM acceleration can be used".to_owned()
    } else {
        "KVM acceleration can NOT be used".to_owned()
    };
    HostCheck {
        items,
        vendor_module: vendor,
        usable,
        verdict,
    }
}

fn check_api(kvm: &Kvm, items: &mut Vec<CheckItem>) {
    let version = kvm.get_api_version();
    items.push(item(
        "KVM API version",
        version == KVM_API_VERSION,
        true,
        format!("version {version} (kvmkit needs {KVM_API_VERSION})"),
        Some("use a Linux kernel with the stable KVM API (2.6.22 or later)"),
    ));
    for (required, caps) in [(true, REQUIRED_CAPS), (false, OPTIONAL_CAPS)] {
        for (cap, name, purpose) in caps {
            let ok = kvm.check_extension(*cap);
            items.push(item(
                name,
                ok,
                required,
                format!("{}: {purpose}", if ok { "supported" } else { "missing" }),
                Some("upgrade the host kernel; this KVM lacks the capability"),
            ));
        }
    }
    items.push(item(
        "vCPUs per VM",
        true,
        false,
        format!("up to {} (recommended {})", kvm.get_max_vcpus(), kvm.get_nr_vcpus()),
        None,
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_is_consistent() {
        let r = check_host_with(&|_, _| {
            vec![item(
                "extra",
                false,
                false,
                "an optional item that failed".into(),
                Some("fix it"),
            )]
        });
        assert!(r.items.len() >= 4);
        assert!(r.items.iter().any(|i| i.name == "extra" && i.fix.is_some()));
        assert_eq!(r.usable, r.items.iter().all(|i| i.ok || !i.required));
        assert_eq!(r.usable, r.verdict.starts_with("KVM acceleration can be used"));
        for i in r.items.iter().filter(|i| i.ok) {
            assert!(i.fix.is_none(), "{} passed but carries a fix", i.name);
        }
    }
}
