//! Boots Debian's stock cloud kernel (fetched by `kvmkit image fetch` into
//! the cache, never installed) and checks that its first console line
//! appears. Under PVM a stock kernel cannot finish booting (its CPL0 code is
//! emulated), but reaching `Linux version 6.1...` proves the boot path:
//! image loading, boot protocol, memory map, command line, serial console.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// The cached kernel as `(vmlinux, bzImage)`, fetched by `kvmkit image fetch`.
fn kernel_cache() -> (PathBuf, PathBuf) {
    let out = Command::new(env!("CARGO_BIN_EXE_kvmkit"))
        .args(["image", "fetch"])
        .output()
        .expect("run kvmkit image fetch");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fetching the Debian kernel failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.trim().split(" (").next())
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("no '{key}' line from kvmkit image fetch:\n{stdout}"))
    };
    (path("kernel "), path("bzimage "))
}

fn boot_until_first_line(kernel: &str, boot: &str, extra: &[&str], secs: u64) {
    let mut args = vec![
        "run",
        "--kernel",
        kernel,
        "--boot",
        boot,
        "--no-stdin",
        "--cmdline",
        "console=ttyS0 earlyprintk=ttyS0 reboot=k panic=1",
    ];
    args.extend_from_slice(extra);
    let (stdout, found) = common::run_until(&args, "BIOS-e820", Duration::from_secs(secs));
    assert!(found, "no first console lines within {secs} s\nstdout:\n{stdout}");
    assert!(stdout.contains("Linux version 6.1"), "{stdout}");
    assert!(
        stdout.contains("Command line: console=ttyS0 earlyprintk=ttyS0"),
        "{stdout}"
    );
}

#[test]
fn debian_vmlinux_boots_to_first_console_line_via_pvh() {
    let (vmlinux, _) = kernel_cache();
    boot_until_first_line(&vmlinux.to_string_lossy(), "pvh", &[], 120);
}

#[test]
fn debian_vmlinux_boots_to_first_console_line_via_linux_boot_protocol() {
    let (vmlinux, _) = kernel_cache();
    boot_until_first_line(&vmlinux.to_string_lossy(), "linux", &[], 120);
}

#[test]
fn debian_bzimage_boots_to_first_console_line_with_its_own_decompressor() {
    // The bzImage's own decompressor runs first; under PVM it is emulated
    // (~150 s here), on VMX/SVM hosts it takes well under a second.
    let (_, bzimage) = kernel_cache();
    boot_until_first_line(&bzimage.to_string_lossy(), "linux", &["--no-host-decompress"], 600);
}

#[test]
fn debian_bzimage_decompressed_on_the_host_boots_through_both_entries() {
    // Debian's LZ4 payload unpacked by kvmkit: the vmlinux enters through its
    // PVH note, or at startup_64 with the bzImage's setup header in the zero
    // page; no decompressor runs in the guest (as fast as the ELF vmlinux).
    let (_, bzimage) = kernel_cache();
    boot_until_first_line(&bzimage.to_string_lossy(), "pvh", &[], 120);
    boot_until_first_line(&bzimage.to_string_lossy(), "linux", &[], 120);
}

#[test]
fn a_stock_kernel_on_a_pvm_host_is_warned_about_and_the_test_guest_is_not() {
    let pvm = std::path::Path::new("/sys/module/kvm_pvm").exists();
    let (vmlinux, bzimage) = kernel_cache();
    for (image, kernel) in [("bzImage", bzimage), ("vmlinux", vmlinux)] {
        let out = common::run(
            &[
                "run",
                "--kernel",
                &kernel.to_string_lossy(),
                "--no-stdin",
                "--timeout",
                "1",
            ],
            Duration::from_secs(60),
        );
        let warned = out.stderr.contains("is a Linux kernel (Linux version 6.1");
        assert_eq!(warned, pvm, "{image}: kvm_pvm host {pvm}, stderr:\n{}", out.stderr);
    }
    let out = common::run(
        &["run", "--guest", "--workload", "primes:1000", "--no-stdin"],
        Duration::from_secs(60),
    );
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);
}
