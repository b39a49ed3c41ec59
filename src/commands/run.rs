//! `kvmkit run`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kvmkit_guest_abi::{ReportKind, CMDLINE_CPUS, CMDLINE_WORKLOAD};
use kvmkit_vmm::boot::BootProtocol;
use kvmkit_vmm::{run_vm, DiskConfig, KernelSource, RunOutcome, VmConfig};

use crate::cli::{BootArg, RunArgs};

/// Default command line for Linux guests.
pub const DEFAULT_LINUX_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";
/// Default command line for `--linux` (kvmkit's Debian assets): quiet, since
/// every console byte is a VM exit; a panic reboots at once, which ends the VM.
pub const LINUX_ASSETS_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 pci=off quiet";

/// Workloads the test guest knows (checked here so a typo fails fast).
const GUEST_WORKLOADS: &[&str] = &[
    "primes",
    "memtest",
    "exits",
    "mmio-exits",
    "idle",
    "ticks",
    "fault",
    "panic",
    "blk-pattern",
    "blk-seq",
    "rng",
    "raytrace",
    "md5",
    "des",
    "blowfish",
    "compress",
    "smallio",
    "net-echo",
    "net-tx",
    "net-rx",
];

/// Boots the VM and returns the process exit status.
pub fn run(args: &RunArgs, start: Instant) -> anyhow::Result<u8> {
    let config = vm_config(args)?;
    let outcome = run_vm(config, start)?;
    report(args, &outcome);
    if let Some(path) = &args.results {
        let json = serde_json::to_string_pretty(&summary(&outcome))?;
        std::fs::write(path, json + "\n").with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(outcome.reason.exit_code().clamp(0, 255) as u8)
}

fn vm_config(args: &RunArgs) -> anyhow::Result<VmConfig> {
    let timeout = match args.timeout {
        Some(t) if !(t > 0.0 && t.is_finite()) => bail!("--timeout {t}: give a positive number of seconds"),
        Some(t) => Some(Duration::from_secs_f64(t)),
        None => None,
    };
    let protocol = match args.boot_protocol {
        BootArg::Auto => BootProtocol::Auto,
        BootArg::Linux => BootProtocol::Linux,
        BootArg::Pvh => BootProtocol::Pvh,
    };
    let (kernel, cmdline) = if args.guest {
        let workload = args.workload.clone().unwrap_or_else(|| "primes:100000".into());
        check_workload(&workload)?;
        let mut cmdline = format!("{CMDLINE_WORKLOAD}={workload} {CMDLINE_CPUS}={}", args.cpus);
        if let Some(extra) = &args.cmdline {
            cmdline = format!("{extra} {cmdline}");
        }
        let bytes = kvmkit_guest_image::GUEST_ELF;
        (
            KernelSource::Embedded {
                name: "kvmkit test guest".into(),
                bytes,
            },
            cmdline,
        )
    } else if args.linux {
        warn_if_pvm();
        let cache = kvmkit_images::Cache::from_env().context("cannot locate the kvmkit cache (set KVMKIT_CACHE)")?;
        let assets = super::image::ensure_linux_assets(&cache)?;
        let mut cmdline = LINUX_ASSETS_CMDLINE.to_owned();
        if let Some(extra) = &args.cmdline {
            cmdline = format!("{cmdline} {extra}");
        }
        if !args.command.is_empty() {
            cmdline = format!(
                "{cmdline} {}",
                kvmkit_images::cmdline_command(&shell_join(&args.command))
            );
        }
        return Ok(VmConfig {
            cpus: args.cpus,
            memory_mib: args.memory,
            kernel: KernelSource::Path(assets.kernel),
            initrd: Some(assets.initramfs),
            cmdline,
            protocol,
            stdin: !args.no_stdin,
            timeout,
            tsc_hint: false,
            disks: parse_disks(&args.disks)?,
            rng: args.rng,
            nets: parse_nets(&args.nets)?,
        });
    } else {
        let Some(path) = args.kernel.clone() else {
            bail!("give --kernel PATH, --linux or --guest")
        };
        let cmdline = args.cmdline.clone().unwrap_or_else(|| DEFAULT_LINUX_CMDLINE.into());
        (KernelSource::Path(path), cmdline)
    };
    Ok(VmConfig {
        cpus: args.cpus,
        memory_mib: args.memory,
        kernel,
        initrd: args.initrd.clone(),
        cmdline,
        protocol,
        stdin: !args.no_stdin,
        timeout,
        tsc_hint: args.guest,
        disks: parse_disks(&args.disks)?,
        rng: args.rng,
        nets: parse_nets(&args.nets)?,
    })
}

/// Parses every `--net` spec.
pub fn parse_nets(specs: &[String]) -> anyhow::Result<Vec<kvmkit_vmm::net::NetConfig>> {
    specs
        .iter()
        .map(|s| kvmkit_vmm::net::NetConfig::parse(s).map_err(anyhow::Error::from))
        .collect()
}

/// Parses `--disk path=IMG[,ro=on|off][,id=NAME]` (a bare path also works).
pub fn parse_disks(specs: &[String]) -> anyhow::Result<Vec<DiskConfig>> {
    let mut disks = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let mut disk = DiskConfig {
            path: PathBuf::new(),
            read_only: false,
            id: format!("disk{i}"),
            direct: false,
        };
        for part in spec.split(',') {
            match part.split_once('=') {
                Some(("path", p)) => disk.path = PathBuf::from(p),
                Some(("ro", "on" | "true" | "1")) => disk.read_only = true,
                Some(("ro", "off" | "false" | "0")) => disk.read_only = false,
                Some(("cache", "none")) => disk.direct = true,
                Some(("cache", "writeback")) => disk.direct = false,
                Some(("id", id)) if !id.is_empty() && id.len() <= 20 => disk.id = id.to_owned(),
                Some(("id", id)) => bail!("--disk {spec}: id '{id}' must be 1 to 20 characters"),
                Some((k, v)) => bail!("--disk {spec}: unknown option {k}={v} (use path=IMG,ro=on,id=NAME,cache=none)"),
                None if disk.path.as_os_str().is_empty() => disk.path = PathBuf::from(part),
                None => bail!("--disk {spec}: '{part}' is not key=value"),
            }
        }
        if disk.path.as_os_str().is_empty() {
            bail!("--disk {spec}: give path=IMG");
        }
        disks.push(disk);
    }
    Ok(disks)
}

/// Joins a command and its arguments into one shell command line, quoting
/// each word so the guest shell sees exactly the words given.
pub fn shell_join(words: &[String]) -> String {
    let quote = |w: &String| {
        if !w.is_empty()
            && w.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
        {
            w.clone()
        } else {
            format!("'{}'", w.replace('\'', "'\\''"))
        }
    };
    words.iter().map(quote).collect::<Vec<_>>().join(" ")
}

/// Stock kernels stop early on PVM hosts; say so once instead of letting the
/// user wait for a shell that will not come.
fn warn_if_pvm() {
    use kvmkit_vmm::host::kvm::VendorModule;
    if VendorModule::detect(std::path::Path::new("/sys/module")) == Some(VendorModule::KvmPvm) {
        eprintln!(
            "kvmkit: warning: this host's KVM is kvm_pvm: Debian's stock kernel cannot finish booting here \
             (use a PVM-enabled kernel with --kernel, or the nested lab: cargo xtask nested)"
        );
    }
}

fn check_workload(spec: &str) -> anyhow::Result<()> {
    let name = spec.split(':').next().unwrap_or_default();
    if !GUEST_WORKLOADS.contains(&name) {
        bail!(
            "unknown workload '{name}': choose one of {}",
            GUEST_WORKLOADS.join(", ")
        );
    }
    if spec.split_ascii_whitespace().count() != 1 {
        bail!("workload '{spec}' must not contain spaces");
    }
    Ok(())
}

fn report(args: &RunArgs, outcome: &RunOutcome) {
    for r in &outcome.reports {
        match ReportKind::from_raw(r.kind) {
            Some(ReportKind::Exception) => eprintln!(
                "kvmkit: guest exception {} on vCPU {} at RIP {:#x} (error code {:#x})",
                r.arg, r.cpu, r.value, r.ticks
            ),
            Some(ReportKind::Panic) => {
                eprintln!(
                    "kvmkit: guest panicked on vCPU {}: {}",
                    r.cpu,
                    r.name_str().unwrap_or("<not UTF-8>")
                )
            }
            _ => {}
        }
    }
    if args.boot_time {
        let us = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        eprintln!(
            "boot-time: start -> guest entry {} us, -> guest ready {} us, -> first output {} us, -> VM end {} us",
            us(outcome.entry_us),
            us(outcome.ready_us),
            us(outcome.first_output_us),
            us(outcome.end_us)
        );
    }
    if outcome.reason.is_failure() {
        eprintln!("kvmkit: {}", outcome.reason);
    }
}

/// The JSON form of a run, for `--results`.
fn summary(outcome: &RunOutcome) -> serde_json::Value {
    let reports: Vec<_> = outcome
        .reports
        .iter()
        .map(|r| {
            let kind = match ReportKind::from_raw(r.kind) {
                Some(ReportKind::CpuOnline) => "cpu_online",
                Some(ReportKind::Result) => "result",
                Some(ReportKind::Exception) => "exception",
                Some(ReportKind::Panic) => "panic",
                None => "unknown",
            };
            serde_json::json!({
                "kind": kind, "cpu": r.cpu, "name": r.name_str().unwrap_or(""),
                "arg": r.arg, "value": r.value, "ticks": r.ticks, "ns": r.ns,
            })
        })
        .collect();
    serde_json::json!({
        "exit": { "reason": outcome.reason.to_string(), "code": outcome.reason.exit_code() },
        "boot_time_us": {
            "guest_entry": outcome.entry_us, "guest_ready": outcome.ready_us,
            "first_output": outcome.first_output_us, "vm_end": outcome.end_us,
        },
        "reports": reports,
        "unclaimed_pio": outcome.unclaimed_pio,
        "unclaimed_mmio": outcome.unclaimed_mmio,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_quoted_for_the_guest_shell() {
        let w = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(shell_join(&w(&["uname", "-r"])), "uname -r");
        assert_eq!(shell_join(&w(&["sh", "-c", "exit 7"])), "sh -c 'exit 7'");
        assert_eq!(shell_join(&w(&["echo", "it's"])), "echo 'it'\\''s'");
        assert_eq!(shell_join(&w(&["printf", ""])), "printf ''");
    }

    #[test]
    fn disk_specs_parse() {
        let d = parse_disks(&["path=/a.img,ro=on,id=data".into(), "/b.img".into()]).expect("parse");
        assert_eq!(
            d[0],
            DiskConfig {
                path: "/a.img".into(),
                read_only: true,
                id: "data".into(),
                direct: false,
            }
        );
        assert_eq!(
            d[1],
            DiskConfig {
                path: "/b.img".into(),
                read_only: false,
                id: "disk1".into(),
                direct: false,
            }
        );
        assert!(parse_disks(&["ro=on".into()]).is_err());
        assert!(parse_disks(&["path=/a,cache=none".into()]).is_ok_and(|d| d[0].direct));
        assert!(parse_disks(&["path=/a,cache=maybe".into()]).is_err());
        assert!(parse_disks(&["path=/a,id=".into()]).is_err());
    }

    #[test]
    fn workloads_are_checked_by_name() {
        assert!(check_workload("primes:100000").is_ok());
        assert!(check_workload("idle").is_ok());
        assert!(check_workload("bogus:1").is_err());
        assert!(check_workload("primes:1 x").is_err());
    }
}
