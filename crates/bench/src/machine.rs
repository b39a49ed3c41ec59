//! The machine description recorded with every bench: kernel, KVM module, CPU, load, versions.

use std::path::Path;
use std::process::Command;

use serde::Serialize;

/// What the bench ran on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// Host kernel release (`uname -r`).
    pub kernel: String,
    /// Host kernel version string (`uname -v`).
    pub kernel_version: String,
    /// KVM vendor module (kvm_intel, kvm_amd, kvm_pvm), if any.
    pub kvm_module: Option<String>,
    /// CPU model name.
    pub cpu_model: String,
    /// Logical CPUs.
    pub cpus_online: usize,
    /// RAM in MiB.
    pub memory_mib: u64,
    /// 1/5/15-minute load averages at start.
    pub load_average: [f64; 3],
    /// 1-minute load per logical CPU at start.
    pub load_per_cpu: f64,
    /// kvmkit version.
    pub kvmkit_version: &'static str,
    /// kvmkit git revision (`git rev-parse --short HEAD`), if available.
    pub kvmkit_git_revision: Option<String>,
    /// Whether kvmkit was built with optimizations (release).
    pub kvmkit_optimized: bool,
    /// QEMU version line, if QEMU is available.
    pub qemu_version: Option<String>,
}

impl Machine {
    /// Describes this host; `qemu` is QEMU's path when available.
    pub fn describe(qemu: Option<&Path>) -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split_once(':'))
                    .map(|(_, v)| v.trim())
            })
            .unwrap_or("unknown")
            .to_owned();
        let memory_mib = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb / 1024);
        let loads: Vec<f64> = read("/proc/loadavg")
            .split_ascii_whitespace()
            .take(3)
            .filter_map(|v| v.parse().ok())
            .collect();
        let load_average = [0, 1, 2].map(|i| loads.get(i).copied().unwrap_or(0.0));
        let cpus_online = std::thread::available_parallelism().map_or(1, |n| n.get());
        let vendor = kvmkit_vmm::host::kvm::VendorModule::detect(Path::new("/sys/module"));
        Self {
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            kernel_version: read("/proc/sys/kernel/version").trim().to_owned(),
            kvm_module: vendor.map(|v| v.name().to_owned()),
            cpu_model,
            cpus_online,
            memory_mib,
            load_average,
            load_per_cpu: load_average[0] / cpus_online as f64,
            kvmkit_version: env!("CARGO_PKG_VERSION"),
            kvmkit_git_revision: git_revision(),
            kvmkit_optimized: !cfg!(debug_assertions),
            qemu_version: qemu.and_then(qemu_version),
        }
    }
}

/// First line of the command's stdout, if it ran successfully.
fn first_line(cmd: &mut Command) -> Option<String> {
    let out = cmd.stdin(std::process::Stdio::null()).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .next()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
}

/// `git rev-parse --short HEAD` in the source tree kvmkit was built from, else the current directory.
fn git_revision() -> Option<String> {
    let src = env!("CARGO_MANIFEST_DIR");
    first_line(Command::new("git").args(["-C", src, "rev-parse", "--short", "HEAD"]))
        .or_else(|| first_line(Command::new("git").args(["rev-parse", "--short", "HEAD"])))
}

fn qemu_version(qemu: &Path) -> Option<String> {
    first_line(Command::new(qemu).arg("--version"))
}
