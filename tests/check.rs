//! `kvmkit check` on this host: one line per item, the paper's closing
//! sentence, and the same facts as JSON.

mod common;

use std::time::Duration;

#[test]
fn check_reports_every_item_and_the_verdict() {
    let out = common::run(&["check"], Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let last = out.stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with("KVM acceleration can be used"), "{last}");
    // On a kvm_pvm host the verdict carries the caveat (stock kernels stop early).
    let pvm = out.stdout.contains("kvm_pvm");
    assert_eq!(last.contains("kvm_pvm's caveat"), pvm, "{last}");
    for item in [
        "/dev/kvm present",
        "/dev/kvm read-write",
        "vendor module",
        "KVM API version",
        "KVM_CAP_IRQCHIP",
    ] {
        assert!(out.stdout.contains(item), "missing {item}: {}", out.stdout);
    }
}

#[test]
fn check_json_says_the_same() {
    let out = common::run(&["check", "--json"], Duration::from_secs(30));
    assert_eq!(out.code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(v["usable"], true);
    let module = v["vendor_module"].as_str().unwrap_or_default();
    let verdict = v["verdict"].as_str().unwrap_or_default();
    assert!(verdict.starts_with("KVM acceleration can be used"), "{verdict}");
    assert_eq!(verdict.contains("caveat"), module == "kvm_pvm", "{verdict}");
    assert!(["kvm_intel", "kvm_amd", "kvm_pvm"].contains(&module), "{v:#}");
    assert!(v["items"]
        .as_array()
        .is_some_and(|a| a.iter().all(|i| i["ok"] == true || i["required"] == false)));
}

/// `kvmkit check` says whether seccomp and Landlock are there; the
/// Landlock line carries the ABI version the kernel reports to this test.
#[test]
fn check_shows_seccomp_and_landlock() {
    let out = common::run(&["check"], Duration::from_secs(30));
    let line = |name: &str| {
        out.stdout
            .lines()
            .find(|l| l.contains(&format!("] {name}:")))
            .unwrap_or_else(|| panic!("no {name} line:\n{}", out.stdout))
            .to_owned()
    };
    assert!(line("seccomp").starts_with("[ok  ]"), "{}", line("seccomp"));
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_long = 1;
    // SAFETY: with a null attribute and size 0 this only asks the ABI version.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    let l = line("Landlock");
    if abi > 0 {
        assert!(
            l.starts_with("[ok  ]") && l.contains(&format!("ABI version {abi}")),
            "{l}"
        );
    } else {
        assert!(l.starts_with("[warn]"), "{l}");
    }
}
