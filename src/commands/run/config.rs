//! From `kvmkit run` flags (or `--config-file`) to the VM's resources: the
//! same [`VmResources`] the API fills, plus what only the CLI decides (the
//! embedded guest, the boot protocol, taps it creates for `--net`).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kvmkit_guest_abi::{CMDLINE_CPUS, CMDLINE_WORKLOAD};
use kvmkit_hostnet::{NetGuard, NetPlan};
use kvmkit_vmm::boot::BootProtocol;
use kvmkit_vmm::vmm_config::{
    format_mac, BlockDeviceConfig, BootSourceConfig, EntropyDeviceConfig, LogLevel, LoggerConfig, MachineConfig,
    MetricsConfig, NetworkInterfaceConfig, VmResources, VsockDeviceConfig,
};
use kvmkit_vmm::{KernelSource, MachineOptions};

use crate::cli::{BootArg, ConsoleFilterArg, RunArgs};

/// Default command line for Linux guests.
pub const DEFAULT_LINUX_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";
// The default command line for `--linux` comes with kvmkit's Debian assets.
use kvmkit_images::LINUX_ASSETS_CMDLINE;

/// Everything `kvmkit run` hands the VMM.
pub struct RunPlan {
    /// The VM's resources.
    pub resources: VmResources,
    /// How the machine is built.
    pub machine: MachineOptions,
    /// Boot at once (false: wait for InstanceStart over the API).
    pub boot_now: bool,
    /// Taps and addresses kvmkit set up for `--net`, undone when dropped.
    pub net_guards: Vec<NetGuard>,
    /// `--linux` through kvmkit's guest agent (its private directory is removed when dropped).
    pub agent: Option<super::agent::AgentPlan>,
}

/// The longest `--timeout` (about 31 years): a deadline past it would
/// overflow the clock's arithmetic.
pub const MAX_TIMEOUT_SECS: f64 = 1e9;

/// `--timeout` as a duration.
pub fn timeout(args: &RunArgs) -> anyhow::Result<Option<Duration>> {
    match args.timeout {
        Some(t) if !(t > 0.0 && t.is_finite()) => bail!("--timeout {t}: give a positive number of seconds"),
        Some(t) if t > MAX_TIMEOUT_SECS => {
            bail!("--timeout {t:e}: at most {MAX_TIMEOUT_SECS:e} seconds (about 31 years)")
        }
        Some(t) => Ok(Some(Duration::from_secs_f64(t))),
        None => Ok(None),
    }
}

/// Turns the flags into resources and machine options. Fails with one
/// clear message, before anything is started.
pub fn plan(args: &RunArgs, start: Instant) -> anyhow::Result<RunPlan> {
    timeout(args)?;
    let mut machine = MachineOptions::new(start);
    if console_filter_on(args) {
        machine.console = Some(Box::new(kvmkit_vmm::console_filter::EscapeFilter::new(
            std::io::stdout(),
        )));
    }
    machine.protocol = match args.boot_protocol {
        BootArg::Auto => BootProtocol::Auto,
        BootArg::Linux => BootProtocol::Linux,
        BootArg::Pvh => BootProtocol::Pvh,
    };
    machine.host_decompress = !args.no_host_decompress;
    let mut resources = if let Some(path) = &args.config_file {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
        VmResources::from_config_json(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?
    } else {
        VmResources::default()
    };
    // The flag adds tracking to a config file's machine-config (and to the
    // API's default one, until a PUT /machine-config replaces it).
    resources.machine_config.track_dirty_pages |= args.track_dirty_pages;
    let booting_from_flags = args.guest || args.linux || args.kernel.is_some();
    let mut agent = None;
    let boot_now = booting_from_flags || args.config_file.is_some();
    if !boot_now && args.api_sock.is_none() && args.restore_state.is_none() {
        bail!("give --kernel PATH, --linux, --guest, --config-file FILE or --api-sock PATH");
    }
    if booting_from_flags {
        check_cpus(args.cpus)?;
        kvmkit_vmm::memory::validate_size(args.memory, kvmkit_vmm::memory::host_memory_mib())?;
        resources.set_machine_config(MachineConfig {
            vcpu_count: u8::try_from(args.cpus).unwrap_or(u8::MAX),
            mem_size_mib: args.memory,
            track_dirty_pages: args.track_dirty_pages,
            ..Default::default()
        })?;
        let (boot, kernel, agent_plan) = boot_source(args)?;
        resources.set_boot_source(boot)?;
        if let Some(a) = &agent_plan {
            resources.set_vsock(a.vsock.clone())?;
        }
        agent = agent_plan;
        machine.kernel = kernel;
        machine.tsc_hint = args.guest;
        for d in parse_disks(&args.disks)? {
            resources.put_drive(d)?;
        }
        if args.rng {
            resources.set_entropy(EntropyDeviceConfig::default())?;
        }
    } else if !args.disks.is_empty() || args.rng {
        bail!("--disk and --rng go with --kernel, --guest or --linux; with --config-file or the API use its drives and entropy");
    }
    if let Some(spec) = &args.vsock {
        resources.set_vsock(parse_vsock(spec)?)?;
    }
    let mut net_guards = Vec::new();
    if !args.nets.is_empty() {
        if !booting_from_flags {
            bail!("--net goes with --kernel, --guest or --linux; with --config-file or the API use network-interfaces");
        }
        let mut plans: Vec<NetPlan> = Vec::new();
        for (i, cfg) in parse_nets(&args.nets)?.iter().enumerate() {
            let (tap, plan) = kvmkit_hostnet::setup_net(cfg, i)?;
            let id = format!("net{i}");
            resources.put_network_interface(NetworkInterfaceConfig {
                iface_id: id.clone(),
                host_dev_name: plan.tap_name.clone(),
                guest_mac: Some(format_mac(&plan.mac)),
                poll: cfg.poll,
                ..Default::default()
            })?;
            machine.taps.push((id, tap));
            plans.push(plan);
        }
        let words = kvmkit_hostnet::cmdline_words(&plans);
        if let Some(b) = &mut resources.boot_source {
            let args = b.boot_args.get_or_insert_with(String::new);
            *args = format!("{args} {words}").trim().to_owned();
        }
        net_guards.extend(plans.into_iter().map(|p| p.guard));
    }
    if let Some(p) = &args.metrics_path {
        resources.metrics = Some(MetricsConfig {
            metrics_path: p.display().to_string(),
        });
    }
    if args.log_path.is_some() || args.level.is_some() {
        let level = match &args.level {
            Some(l) => Some(
                LogLevel::parse(l)
                    .with_context(|| format!("--level {l}: choose Off, Error, Warning, Info, Debug or Trace"))?,
            ),
            None => None,
        };
        resources.logger = Some(LoggerConfig {
            log_path: args.log_path.as_ref().map(|p| p.display().to_string()),
            level,
            ..Default::default()
        });
    }
    Ok(RunPlan {
        resources,
        machine,
        boot_now,
        net_guards,
        agent,
    })
}

/// Checks `--cpus` with a message in the flag's terms.
fn check_cpus(cpus: usize) -> anyhow::Result<()> {
    let max = usize::from(kvmkit_vmm::vmm_config::MAX_VCPUS);
    if cpus == 0 {
        bail!("--cpus 0: a VM needs at least 1 vCPU");
    }
    if cpus > max {
        bail!("--cpus {cpus}: at most {max} vCPUs are supported");
    }
    Ok(())
}

/// The boot source for `--guest`, `--linux` or `--kernel`, the
/// embedded kernel for `--guest`, and for `--linux` the guest agent's set-up.
type BootPlan = (BootSourceConfig, Option<KernelSource>, Option<super::agent::AgentPlan>);

/// The boot source for `--guest`, `--linux` or `--kernel` (see [`BootPlan`]).
fn boot_source(args: &RunArgs) -> anyhow::Result<BootPlan> {
    if args.guest {
        let workload = args.workload.clone().unwrap_or_else(|| "primes:100000".into());
        check_workload(&workload)?;
        let mut cmdline = format!("{CMDLINE_WORKLOAD}={workload} {CMDLINE_CPUS}={}", args.cpus);
        if let Some(extra) = &args.cmdline {
            cmdline = format!("{extra} {cmdline}");
        }
        let boot = BootSourceConfig {
            kernel_image_path: "<kvmkit test guest>".into(),
            initrd_path: None,
            boot_args: Some(cmdline),
        };
        let kernel = KernelSource::Embedded {
            name: "kvmkit test guest".into(),
            bytes: kvmkit_guest_image::GUEST_ELF,
        };
        return Ok((boot, Some(kernel), None));
    }
    if args.linux {
        warn_if_pvm();
        let cache = kvmkit_images::Cache::from_env().context("cannot locate the kvmkit cache (set KVMKIT_CACHE)")?;
        let assets = crate::commands::image::ensure_linux_assets(&cache)?;
        let mut cmdline = LINUX_ASSETS_CMDLINE.to_owned();
        if let Some(extra) = &args.cmdline {
            cmdline = format!("{cmdline} {extra}");
        }
        let agent = super::agent::plan(args, &assets)?;
        if let Some(a) = &agent {
            cmdline = format!("{cmdline} {}", a.cmdline_word);
        } else if !args.command.is_empty() {
            cmdline = format!(
                "{cmdline} {}",
                kvmkit_images::cmdline_command(&shell_join(&args.command))
            );
        }
        let initrd = agent.as_ref().map_or(&assets.initramfs, |a| &a.initramfs);
        let boot = BootSourceConfig {
            kernel_image_path: assets.kernel.display().to_string(),
            initrd_path: Some(initrd.display().to_string()),
            boot_args: Some(cmdline),
        };
        return Ok((boot, None, agent));
    }
    let Some(path) = &args.kernel else {
        bail!("give --kernel PATH, --linux or --guest")
    };
    warn_if_pvm_kernel(path);
    let boot = BootSourceConfig {
        kernel_image_path: path.display().to_string(),
        initrd_path: args.initrd.as_ref().map(|p| p.display().to_string()),
        boot_args: Some(args.cmdline.clone().unwrap_or_else(|| DEFAULT_LINUX_CMDLINE.into())),
    };
    // A path with a non-UTF-8 name still opens: hand the file over as given.
    Ok((boot, Some(KernelSource::Path(path.clone())), None))
}

/// Parses every `--net` spec.
pub fn parse_nets(specs: &[String]) -> anyhow::Result<Vec<kvmkit_hostnet::NetConfig>> {
    specs
        .iter()
        .map(|s| kvmkit_hostnet::NetConfig::parse(s).map_err(anyhow::Error::from))
        .collect()
}

/// Parses `--disk path=IMG[,ro=on|off][,id=NAME][,cache=none][,poll=off|auto|N]` (a bare path
/// also works).
pub fn parse_disks(specs: &[String]) -> anyhow::Result<Vec<BlockDeviceConfig>> {
    let mut disks = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let mut disk = BlockDeviceConfig {
            drive_id: format!("disk{i}"),
            ..Default::default()
        };
        for part in spec.split(',') {
            match part.split_once('=') {
                Some(("path", p)) => disk.path_on_host = p.to_owned(),
                Some(("ro", "on" | "true" | "1")) => disk.is_read_only = true,
                Some(("ro", "off" | "false" | "0")) => disk.is_read_only = false,
                Some(("cache", "none")) => disk.direct = true,
                Some(("cache", "writeback")) => disk.direct = false,
                Some(("poll", mode)) => {
                    disk.poll = mode
                        .parse()
                        .map_err(|e: String| anyhow::anyhow!("--disk {spec}: {e}"))?
                }
                Some(("id", id)) if !id.is_empty() && id.len() <= 20 => disk.drive_id = id.to_owned(),
                Some(("id", id)) => bail!("--disk {spec}: id '{id}' must be 1 to 20 characters"),
                Some((k, v)) => bail!(
                    "--disk {spec}: unknown option {k}={v} (use path=IMG,ro=on,id=NAME,cache=none,poll=off|auto|N)"
                ),
                None if disk.path_on_host.is_empty() => disk.path_on_host = part.to_owned(),
                None => bail!("--disk {spec}: '{part}' is not key=value"),
            }
        }
        if disk.path_on_host.is_empty() {
            bail!("--disk {spec}: give path=IMG");
        }
        disk.validate().map_err(|e| anyhow::anyhow!("--disk {spec}: {e}"))?;
        if disks.iter().any(|d: &BlockDeviceConfig| d.drive_id == disk.drive_id) {
            bail!("--disk {spec}: id '{}' is used by another disk", disk.drive_id);
        }
        disks.push(disk);
    }
    Ok(disks)
}

/// `--vsock cid=N,uds=PATH` as the API's vsock resource.
pub fn parse_vsock(spec: &str) -> anyhow::Result<VsockDeviceConfig> {
    let (mut cid, mut uds) = (None, None);
    for part in spec.split(',') {
        match part.split_once('=') {
            Some(("cid", n)) => match n.parse::<u32>() {
                Ok(n) => cid = Some(n),
                Err(_) => bail!("--vsock {spec}: cid '{n}' is not a number (3 to 4294967295)"),
            },
            Some(("uds", p)) => uds = Some(p.to_owned()),
            Some((k, v)) => bail!("--vsock {spec}: unknown option {k}={v} (use cid=N,uds=PATH)"),
            None => bail!("--vsock {spec}: '{part}' is not key=value (use cid=N,uds=PATH)"),
        }
    }
    let (Some(guest_cid), Some(uds)) = (cid, uds) else {
        bail!("--vsock {spec}: give both cid=N and uds=PATH");
    };
    let v = VsockDeviceConfig {
        vsock_id: None,
        guest_cid,
        uds_path: uds.into(),
    };
    v.validate().map_err(|e| anyhow::anyhow!("--vsock {spec}: {e}"))?;
    Ok(v)
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
        crate::logging::errln!(
            "kvmkit: warning: this host's KVM is kvm_pvm: Debian's stock kernel cannot finish booting here \
             (use a PVM-enabled kernel with --kernel, or the nested lab: cargo xtask nested)"
        );
    }
}

/// On a kvm_pvm host, a Linux kernel given with `--kernel` that does not say
/// it is a PVM guest runs its CPL0 code emulated (the decompressor alone takes
/// minutes): say so once instead of letting the user stare at a silent console.
/// kvmkit's own guest (an ELF without a Linux version string) is not warned about.
fn warn_if_pvm_kernel(path: &std::path::Path) {
    use kvmkit_vmm::host::kvm::VendorModule;
    if VendorModule::detect(std::path::Path::new("/sys/module")) != Some(VendorModule::KvmPvm) {
        return;
    }
    if let Some(version) = kvmkit_images::linux_version(path) {
        if !version.to_ascii_lowercase().contains("pvm") {
            crate::logging::errln!(
                "kvmkit: warning: this host's KVM is kvm_pvm and {} is a Linux kernel ({}) that does not say it is a \
                 PVM guest: unless it was built with CONFIG_PVM_GUEST its kernel code runs emulated and it may print \
                 nothing before --timeout (kvmkit's --guest runs fast here; prove stock kernels in the nested lab)",
                path.display(),
                version.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
            );
        }
    }
}

/// Whether guest console output goes through the escape filter: `auto` is on
/// when stdout is a terminal nobody types into through kvmkit.
fn console_filter_on(args: &RunArgs) -> bool {
    use std::io::IsTerminal;
    match args.console_filter {
        ConsoleFilterArg::On => true,
        ConsoleFilterArg::Off => false,
        ConsoleFilterArg::Auto => std::io::stdout().is_terminal() && (args.no_stdin || !std::io::stdin().is_terminal()),
    }
}

/// Checks `--workload` against the workload catalogue, before anything boots, with the
/// workload's grammar in the message.
fn check_workload(spec: &str) -> anyhow::Result<()> {
    if spec.split_ascii_whitespace().count() != 1 {
        bail!("--workload '{spec}' must not contain spaces");
    }
    crate::commands::workloads::parse_for(spec, "--workload", "in the test guest", |e| e.envs.guest)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmkit_vmm::virtio::poll::PollMode;

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
            (
                d[0].path_on_host.as_str(),
                d[0].is_read_only,
                d[0].drive_id.as_str(),
                d[0].direct
            ),
            ("/a.img", true, "data", false)
        );
        assert_eq!(
            (
                d[1].path_on_host.as_str(),
                d[1].is_read_only,
                d[1].drive_id.as_str(),
                d[1].direct
            ),
            ("/b.img", false, "disk1", false)
        );
        assert!(parse_disks(&["path=/a,id=x".into(), "path=/b,id=x".into()]).is_err());
        assert!(parse_disks(&["ro=on".into()]).is_err());
        assert!(parse_disks(&["path=/a,cache=none".into()]).is_ok_and(|d| d[0].direct));
        assert!(parse_disks(&["path=/a,cache=maybe".into()]).is_err());
        assert!(parse_disks(&["path=/a,poll=auto".into()]).is_ok_and(|d| d[0].poll == PollMode::Auto));
        assert!(parse_disks(&["path=/a,poll=80us".into()]).is_ok_and(|d| d[0].poll == PollMode::Fixed(80)));
        assert!(parse_disks(&["path=/a".into()]).is_ok_and(|d| d[0].poll == PollMode::Off));
        assert!(parse_disks(&["path=/a,poll=fast".into()]).is_err());
        assert!(parse_disks(&["path=/a,id=".into()]).is_err());
    }

    #[test]
    fn vsock_specs() {
        let v = parse_vsock("cid=3,uds=/tmp/v.sock").expect("parse");
        assert_eq!((v.guest_cid, v.uds_path.to_str()), (3, Some("/tmp/v.sock")));
        for (bad, why) in [
            ("cid=2,uds=/v", "reserved"),
            ("cid=x,uds=/v", "not a number"),
            ("cid=3", "give both"),
            ("uds=/v", "give both"),
            ("cid=3,uds=/v,port=1", "unknown option"),
            ("cid=3,uds=", "uds_path"),
            ("3,/v", "not key=value"),
        ] {
            let e = parse_vsock(bad).expect_err(bad).to_string();
            assert!(e.contains(why) && !e.contains('\n'), "{bad}: {e}");
        }
    }

    #[test]
    fn workloads_are_checked_by_name() {
        assert!(check_workload("primes:100000").is_ok());
        assert!(check_workload("idle").is_ok());
        assert!(check_workload("bogus:1").is_err());
        assert!(check_workload("primes:1 x").is_err());
        let err = check_workload("primes:abc").expect_err("not a number").to_string();
        assert!(err.contains("primes[:N]"), "{err}");
    }
}
