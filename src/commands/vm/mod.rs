//! `kvmkit vm`: named VMs on this host, like `virsh`. A definition is
//! Firecracker's config file stored under the state directory; a started
//! VM is a `kvmkit run --config-file ... --api-sock ...` process in its own
//! session, found again through its pid file and driven through its API
//! socket. The commands act on the state directory directly, so they work
//! the same with or without `kvmkit serve` (which supervises: restarts,
//! autostart, re-adoption).

mod cgroup;
mod console;
mod events;
mod fleet;
mod process;
mod recorder;
mod rpc;
pub mod serve;
mod store;
mod web;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use kvmkit_guest_abi::{CMDLINE_CPUS, CMDLINE_WORKLOAD};
use kvmkit_vmm::vmm_config::{
    BlockDeviceConfig, BootSourceConfig, EntropyDeviceConfig, MachineConfig, NetworkInterfaceConfig, PollMode,
    VmResources, MAX_VCPUS,
};
use serde::Serialize;

use process::{PidFile, VmLock};
pub use store::RestartPolicy;
use store::{Settings, VmDir};

/// Options of `kvmkit vm`.
#[derive(Debug, Args)]
pub struct VmArgs {
    /// State directory (default $KVMKIT_STATE_DIR, else /var/lib/kvmkit).
    #[arg(long, value_name = "DIR", global = true)]
    pub state_dir: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: VmCommand,
}

/// `kvmkit vm` subcommands.
#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Store a VM definition (Firecracker's config JSON) under the state directory.
    Define(Box<DefineArgs>),
    /// List defined VMs: name, state, vCPUs, memory, uptime, pid, API socket.
    List {
        /// Print JSON (an array of objects).
        #[arg(long)]
        json: bool,
    },
    /// Start a defined VM in the background (its own kvmkit run process).
    Start {
        /// VM name.
        name: String,
    },
    /// Stop a VM: Ctrl-Alt-Del and a grace period (Linux guests), then stop the VMM.
    Stop {
        /// VM name.
        name: String,
        /// Seconds the guest gets after Ctrl-Alt-Del before the VMM is stopped.
        #[arg(long, default_value_t = 10.0, value_name = "SECS")]
        grace: f64,
    },
    /// Kill a VM's process at once (SIGKILL).
    Kill {
        /// VM name.
        name: String,
    },
    /// Pause a VM's vCPUs (PATCH /vm).
    Pause {
        /// VM name.
        name: String,
    },
    /// Resume a paused VM (PATCH /vm).
    Resume {
        /// VM name.
        name: String,
    },
    /// Press Ctrl-Alt-Del in the guest (PUT /actions SendCtrlAltDel).
    Reboot {
        /// VM name.
        name: String,
    },
    /// A VM's definition, settings, process and (when running) GET / answer, as JSON.
    Info {
        /// VM name.
        name: String,
    },
    /// Print a running VM's recent console output (the last 64 KiB), or
    /// kvmkit's log for a VM that does not run.
    Logs {
        /// VM name.
        name: String,
        /// Only the last N lines.
        #[arg(long, value_name = "N")]
        lines: Option<usize>,
        /// kvmkit's own messages (kvmkit.log) even while the VM runs.
        #[arg(long)]
        vmm: bool,
    },
    /// Attach to a running VM's serial console (detach with Ctrl-]).
    Console {
        /// VM name.
        name: String,
    },
    /// Remove a VM's definition and files (refused while it runs).
    Undefine {
        /// VM name.
        name: String,
    },
}

/// Options of `kvmkit vm define`: a config file, or a subset of `kvmkit run`'s flags.
#[derive(Debug, Args)]
pub struct DefineArgs {
    /// VM name: letters, digits, '.', '_', '-'.
    pub name: String,
    /// Firecracker-style JSON config file to store (checked like `kvmkit run --config-file`).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["guest", "kernel", "initrd", "cmdline", "disks", "nets", "rng", "workload"])]
    pub config_file: Option<PathBuf>,
    /// Boot kvmkit's own test guest (written next to the definition as guest.elf).
    #[arg(long, conflicts_with_all = ["kernel", "initrd"])]
    pub guest: bool,
    /// Workload for the test guest (`kvmkit workloads`); default primes:100000.
    #[arg(long, value_name = "NAME[:ARG]", requires = "guest")]
    pub workload: Option<String>,
    /// Kernel to boot (absolute path, or made absolute).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long, value_name = "PATH", requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line (--kernel: default console=ttyS0 reboot=k panic=1; --guest: appended).
    #[arg(long, value_name = "STR")]
    pub cmdline: Option<String>,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub cpus: usize,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 256, value_name = "MIB")]
    pub memory: u64,
    /// A raw disk image as virtio-blk (repeatable): path=IMG[,ro=on][,id=NAME][,poll=off|auto|N]
    /// (poll: as `kvmkit run --disk`).
    #[arg(long = "disk", value_name = "path=IMG[,ro=on][,id=NAME][,poll=auto]")]
    pub disks: Vec<String>,
    /// A virtio-net NIC on an existing tap (repeatable): tap=NAME[,mac=M][,id=ID][,poll=off|auto|N]
    /// (poll: as `kvmkit run --net`).
    #[arg(long = "net", value_name = "tap=NAME[,mac=M][,id=ID][,poll=auto]")]
    pub nets: Vec<String>,
    /// A virtio-rng device.
    #[arg(long)]
    pub rng: bool,
    /// `kvmkit serve` starts this VM when it starts.
    #[arg(long)]
    pub autostart: bool,
    /// When `kvmkit serve` restarts this VM.
    #[arg(long, value_enum, default_value_t = RestartPolicy::No)]
    pub restart: RestartPolicy,
    /// Replace an existing definition (refused while the VM runs).
    #[arg(long)]
    pub replace: bool,
}

/// Default kernel command line for `--kernel`.
const DEFAULT_LINUX_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

/// Runs `kvmkit vm`.
pub fn run(args: &VmArgs) -> anyhow::Result<u8> {
    let state = store::state_dir(args.state_dir.as_deref());
    match &args.command {
        VmCommand::Define(d) => define(&state, d),
        VmCommand::List { json } => list(&state, *json),
        VmCommand::Start { name } => {
            let vm = open(&state, name)?;
            let pid = start(&vm)?;
            println!("VM {name} started (pid {})", pid.pid);
            Ok(0)
        }
        VmCommand::Stop { name, grace } => {
            let vm = open(&state, name)?;
            if !grace.is_finite() || *grace < 0.0 {
                bail!("--grace {grace}: give a number of seconds, 0 or more");
            }
            let _lock = VmLock::take(&vm)?;
            let Some(pid) = process::running(&vm) else {
                bail!("VM {name} is not running");
            };
            let settings = vm.settings()?;
            let how = process::stop(&vm, &pid, Duration::from_secs_f64(*grace), !settings.kvmkit_guest)?;
            println!("VM {name} stopped ({how})");
            Ok(0)
        }
        VmCommand::Kill { name } => {
            let vm = open(&state, name)?;
            let Some(pid) = process::running(&vm) else {
                bail!("VM {name} is not running");
            };
            store::write_atomic(&vm.file("stopping"), b"")?;
            process::signal(&pid, libc::SIGKILL);
            if !process::wait_gone(&pid, Duration::from_secs(5)) {
                bail!("VM {name}: process {} does not end after SIGKILL", pid.pid);
            }
            let mut end = process::record_end(&vm, &pid, None);
            end.state = "stopped".into();
            end.reason = "killed (kvmkit vm kill, SIGKILL)".into();
            store::write_atomic(
                &vm.file("last-exit.json"),
                (serde_json::to_string_pretty(&end)? + "\n").as_bytes(),
            )?;
            println!("VM {name} killed");
            Ok(0)
        }
        VmCommand::Pause { name } => vm_state(&state, name, "Paused"),
        VmCommand::Resume { name } => vm_state(&state, name, "Resumed"),
        VmCommand::Reboot { name } => {
            let vm = running_vm(&state, name)?;
            process::api_ok(&vm, "PUT", "/actions", Some(r#"{"action_type": "SendCtrlAltDel"}"#))?;
            println!("VM {name}: Ctrl-Alt-Del sent");
            Ok(0)
        }
        VmCommand::Info { name } => info(&state, name),
        VmCommand::Logs { name, lines, vmm } => {
            let vm = open(&state, name)?;
            let data = if !*vmm && process::running(&vm).is_some() {
                console::recent(&vm)?
            } else if *vmm {
                std::fs::read(process::log_path(&vm)).unwrap_or_default()
            } else {
                // The last run's console as `kvmkit serve` recorded it, then kvmkit's messages.
                let mut d = std::fs::read(vm.file(recorder::CONSOLE_LOG)).unwrap_or_default();
                d.extend(std::fs::read(process::log_path(&vm)).unwrap_or_default());
                d
            };
            let text = String::from_utf8_lossy(&data);
            let all: Vec<&str> = text.lines().collect();
            let from = lines.map_or(0, |n| all.len().saturating_sub(n));
            for l in &all[from..] {
                println!("{l}");
            }
            Ok(0)
        }
        VmCommand::Console { name } => {
            let vm = running_vm(&state, name)?;
            console::attach(&vm)
        }
        VmCommand::Undefine { name } => {
            let vm = open(&state, name)?;
            let lock = VmLock::take(&vm)?;
            if let Some(pid) = process::running(&vm) {
                bail!(
                    "VM {name} is running (pid {}): stop it first (kvmkit vm stop {name})",
                    pid.pid
                );
            }
            // Remove the definition first: a half-removed folder is no VM.
            std::fs::remove_file(vm.config_path())?;
            drop(lock);
            std::fs::remove_dir_all(&vm.dir).with_context(|| format!("cannot remove {}", vm.dir.display()))?;
            println!("VM {name} undefined");
            Ok(0)
        }
    }
}

/// A defined VM.
fn open(state: &Path, name: &str) -> anyhow::Result<VmDir> {
    let vm = VmDir::new(state, name)?;
    vm.require()?;
    Ok(vm)
}

/// A defined VM that runs.
fn running_vm(state: &Path, name: &str) -> anyhow::Result<VmDir> {
    let vm = open(state, name)?;
    if process::running(&vm).is_none() {
        bail!("VM {name} is not running (kvmkit vm start {name})");
    }
    Ok(vm)
}

/// Starts a defined VM; one of two clients starting it at once gets a clear error.
fn start(vm: &VmDir) -> anyhow::Result<PidFile> {
    // The child runs on in its own session; this process does not wait for it.
    start_child(vm).map(|(_child, pid)| pid)
}

/// Starts a defined VM and returns its process (for `kvmkit serve`, which reaps it).
fn start_child(vm: &VmDir) -> anyhow::Result<(std::process::Child, PidFile)> {
    let _lock = VmLock::take(vm)?;
    if let Some(pid) = process::running(vm) {
        bail!("VM {} is already running (pid {})", vm.name, pid.pid);
    }
    process::spawn(vm)
}

fn vm_state(state: &Path, name: &str, to: &str) -> anyhow::Result<u8> {
    let vm = running_vm(state, name)?;
    process::api_ok(&vm, "PATCH", "/vm", Some(&format!(r#"{{"state": "{to}"}}"#)))?;
    if let Some(pid) = process::running(&vm) {
        process::refresh_state(&vm, &pid); // vm list shows the change at once
    }
    println!("VM {name} {}", to.to_ascii_lowercase());
    Ok(0)
}

/// One row of `vm list`.
#[derive(Debug, Serialize)]
struct Row {
    name: String,
    state: String,
    vcpus: u8,
    memory_mib: u64,
    uptime_s: Option<f64>,
    pid: Option<i32>,
    api_sock: Option<String>,
    autostart: bool,
    restart: RestartPolicy,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_exit: Option<String>,
}

/// A VM's row; a running VM's state from the cache, or "" when its API must be asked.
fn row_cached(vm: &VmDir) -> Row {
    let (vcpus, memory_mib) = match vm.resources() {
        Ok(r) => (r.machine_config.vcpu_count, r.machine_config.mem_size_mib),
        Err(_) => (0, 0),
    };
    let settings = vm.settings().unwrap_or_default();
    let pid = process::running(vm);
    let (state, last_exit) = match &pid {
        Some(p) => (process::cached_state(vm, p).unwrap_or_default(), None),
        None => match process::last_exit(vm) {
            Some(e) => (e.state, Some(e.reason)),
            None => ("shutoff".to_owned(), None),
        },
    };
    Row {
        name: vm.name.clone(),
        state,
        vcpus,
        memory_mib,
        uptime_s: pid.and_then(|p| p.uptime_s()).map(|s| (s * 10.0).round() / 10.0),
        pid: pid.map(|p| p.pid),
        api_sock: pid.map(|_| vm.file("api.sock").display().to_string()),
        autostart: settings.autostart,
        restart: settings.restart,
        last_exit,
    }
}

/// A VM's row, its state asked of the API when no fresh cached one exists.
fn row(vm: &VmDir) -> Row {
    let mut r = row_cached(vm);
    if let (true, Some(pid)) = (r.state.is_empty(), process::read_pid(vm)) {
        r.state = process::state(vm, &pid);
    }
    r
}

/// Every defined VM's row, by name, without a daemon (`kvmkit serve`
/// answers from memory, [`fleet`]). The files are read in this thread (on
/// a loaded host every extra thread waits for a CPU); only the VMs without
/// a fresh cached state (`vm start`, `pause` and `resume` write it) are asked
/// through their API, one thread each, so a busy or hung VMM delays only its
/// own row.
fn rows(state: &Path) -> anyhow::Result<Vec<Row>> {
    let vms = store::list(state)?;
    let mut rows: Vec<Row> = vms.iter().map(row_cached).collect();
    std::thread::scope(|s| {
        let asks: Vec<_> = rows
            .iter_mut()
            .zip(&vms)
            .filter(|(r, _)| r.state.is_empty())
            .map(|(r, vm)| {
                let pid = r.pid.and_then(|_| process::read_pid(vm));
                (
                    r,
                    s.spawn(move || pid.map_or_else(|| "unknown".into(), |p| process::state(vm, &p))),
                )
            })
            .collect();
        for (r, h) in asks {
            r.state = h.join().unwrap_or_else(|_| "unknown".into());
        }
    });
    Ok(rows)
}

/// `vm list`: `kvmkit serve`'s answer from memory when a daemon runs on
/// this state directory, else the files read here.
fn list(state: &Path, json: bool) -> anyhow::Result<u8> {
    let text = match rpc::list(state, json) {
        Some(t) => t,
        None => render(&rows(state)?, json)?,
    };
    use std::io::Write;
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(0)
}

/// What `vm list` prints: a table, or JSON (an array of rows).
fn render(rows: &[Row], json: bool) -> anyhow::Result<String> {
    if json {
        return Ok(serde_json::to_string_pretty(rows)? + "\n");
    }
    let mut out = format!(
        "{:<20} {:<12} {:>5} {:>8} {:>10} {:>8}  API SOCKET\n",
        "NAME", "STATE", "VCPUS", "MEM MIB", "UPTIME", "PID"
    );
    for r in rows {
        out += &format!(
            "{:<20} {:<12} {:>5} {:>8} {:>10} {:>8}  {}\n",
            r.name,
            r.state,
            r.vcpus,
            r.memory_mib,
            r.uptime_s.map_or("-".into(), format_uptime),
            r.pid.map_or("-".into(), |p| p.to_string()),
            r.api_sock.as_deref().unwrap_or("-")
        );
    }
    Ok(out)
}

fn format_uptime(s: f64) -> String {
    let s = s as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn info(state: &Path, name: &str) -> anyhow::Result<u8> {
    let vm = open(state, name)?;
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(vm.config_path())?)?;
    let r = row(&vm);
    let instance = r.pid.and_then(|_| {
        let resp = process::api(&vm, "GET", "/", None).ok()?;
        serde_json::from_slice::<serde_json::Value>(&resp.body).ok()
    });
    let out = serde_json::json!({
        "name": name,
        "dir": vm.dir.display().to_string(),
        "status": r,
        "settings": vm.settings()?,
        "definition": config,
        "instance": instance,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(0)
}

/// `vm define`: build the config, check it, write it atomically.
fn define(state: &Path, d: &DefineArgs) -> anyhow::Result<u8> {
    let vm = VmDir::new(state, &d.name)?;
    let (resources, guest) = definition(d)?;
    std::fs::create_dir_all(&vm.dir).with_context(|| format!("cannot create {}", vm.dir.display()))?;
    let _lock = VmLock::take(&vm)?;
    let existed = vm.exists();
    if existed && !d.replace {
        bail!(
            "VM {} is already defined (kvmkit vm undefine {} first, or --replace)",
            d.name,
            d.name
        );
    }
    if existed && process::running(&vm).is_some() {
        bail!("VM {} is running: stop it before replacing its definition", d.name);
    }
    let mut resources = resources;
    if guest {
        let elf = vm.file("guest.elf");
        store::write_atomic(&elf, kvmkit_guest_image::GUEST_ELF)?;
        if let Some(b) = &mut resources.boot_source {
            b.kernel_image_path = elf.display().to_string();
        }
    }
    let text = serde_json::to_string_pretty(&resources)? + "\n";
    // The stored text must read back as the same definition.
    VmResources::from_config_json(&text).map_err(|e| anyhow::anyhow!("definition: {e}"))?;
    let settings = Settings {
        autostart: d.autostart,
        restart: d.restart,
        kvmkit_guest: guest,
    };
    store::write_atomic(
        &vm.file("vm.json"),
        (serde_json::to_string_pretty(&settings)? + "\n").as_bytes(),
    )?;
    store::write_atomic(&vm.config_path(), text.as_bytes())?;
    println!(
        "VM {} {} ({})",
        d.name,
        if existed { "redefined" } else { "defined" },
        vm.config_path().display()
    );
    Ok(0)
}

/// The resources a `vm define` describes, and whether it boots kvmkit's guest.
fn definition(d: &DefineArgs) -> anyhow::Result<(VmResources, bool)> {
    if let Some(path) = &d.config_file {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let r = VmResources::from_config_json(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        check_paths(&r)?;
        r.check_bootable()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        return Ok((r, false));
    }
    let max = usize::from(MAX_VCPUS);
    if d.cpus == 0 || d.cpus > max {
        bail!("--cpus {}: give 1 to {max}", d.cpus);
    }
    kvmkit_vmm::memory::validate_size(d.memory, kvmkit_vmm::memory::host_memory_mib())?;
    let mut r = VmResources::default();
    r.set_machine_config(MachineConfig {
        vcpu_count: u8::try_from(d.cpus).unwrap_or(u8::MAX),
        mem_size_mib: d.memory,
        ..Default::default()
    })?;
    let boot = if d.guest {
        let workload = d.workload.clone().unwrap_or_else(|| "primes:100000".into());
        crate::commands::workloads::parse_for(&workload, "--workload", "in the test guest", |e| e.envs.guest)?;
        let mut cmdline = format!("console=ttyS0 {CMDLINE_WORKLOAD}={workload} {CMDLINE_CPUS}={}", d.cpus);
        if let Some(extra) = &d.cmdline {
            cmdline = format!("{extra} {cmdline}");
        }
        BootSourceConfig {
            kernel_image_path: "guest.elf".into(), // replaced by the stored copy's path
            initrd_path: None,
            boot_args: Some(cmdline),
        }
    } else if let Some(k) = &d.kernel {
        BootSourceConfig {
            kernel_image_path: absolute(k)?,
            initrd_path: d.initrd.as_deref().map(absolute).transpose()?,
            boot_args: Some(d.cmdline.clone().unwrap_or_else(|| DEFAULT_LINUX_CMDLINE.into())),
        }
    } else {
        bail!("give --guest [--workload W], --kernel PATH or --config-file FILE");
    };
    r.set_boot_source(boot)?;
    for (i, spec) in d.disks.iter().enumerate() {
        r.put_drive(parse_disk(spec, i)?)?;
    }
    for (i, spec) in d.nets.iter().enumerate() {
        r.put_network_interface(parse_net(spec, i)?)?;
    }
    if d.rng {
        r.set_entropy(EntropyDeviceConfig::default())?;
    }
    if !d.guest {
        check_paths(&r)?;
    }
    Ok((r, d.guest))
}

fn absolute(p: &Path) -> anyhow::Result<String> {
    let abs = std::path::absolute(p).with_context(|| format!("{}: cannot make it absolute", p.display()))?;
    abs.to_str()
        .map(str::to_owned)
        .with_context(|| format!("{}: only UTF-8 paths can go into a definition", p.display()))
}

/// The files a definition names must exist and be given as absolute paths
/// (the VM starts from another working directory).
fn check_paths(r: &VmResources) -> anyhow::Result<()> {
    let mut files: Vec<(&str, &str)> = Vec::new();
    if let Some(b) = &r.boot_source {
        files.push(("kernel_image_path", &b.kernel_image_path));
        if let Some(i) = &b.initrd_path {
            files.push(("initrd_path", i));
        }
    }
    for d in &r.drives {
        files.push(("path_on_host", &d.path_on_host));
    }
    for (field, f) in files {
        if !Path::new(f).is_absolute() {
            bail!("{field} {f:?}: give an absolute path (the VM starts from its state directory)");
        }
        if !Path::new(f).is_file() {
            bail!("{field} {f}: no such file");
        }
    }
    Ok(())
}

/// `path=IMG[,ro=on][,id=NAME][,poll=off|auto|N]`.
fn parse_disk(spec: &str, index: usize) -> anyhow::Result<BlockDeviceConfig> {
    let mut path = None;
    let mut ro = false;
    let mut poll = PollMode::Off;
    let mut id = format!("disk{index}");
    for part in spec.split(',') {
        match part.split_once('=') {
            Some(("path", p)) if !p.is_empty() => path = Some(absolute(Path::new(p))?),
            Some(("ro", v)) => {
                ro = match v {
                    "on" | "true" | "yes" => true,
                    "off" | "false" | "no" => false,
                    _ => bail!("--disk {spec}: ro takes on or off"),
                }
            }
            Some(("id", v)) if !v.is_empty() => id = v.to_owned(),
            Some(("poll", v)) => poll = v.parse().map_err(|e| anyhow::anyhow!("--disk {spec}: {e}"))?,
            _ => bail!("--disk {spec}: give path=IMG[,ro=on][,id=NAME][,poll=off|auto|N]"),
        }
    }
    let Some(path) = path else {
        bail!("--disk {spec}: give path=IMG[,ro=on][,id=NAME][,poll=off|auto|N]");
    };
    Ok(BlockDeviceConfig {
        drive_id: id,
        path_on_host: path,
        is_root_device: false,
        is_read_only: ro,
        poll,
        ..Default::default()
    })
}

/// `tap=NAME[,mac=M][,id=ID][,poll=off|auto|N]`: a NIC on an existing tap.
fn parse_net(spec: &str, index: usize) -> anyhow::Result<NetworkInterfaceConfig> {
    let usage = || {
        anyhow::anyhow!(
            "--net {spec}: give tap=NAME[,mac=aa:bb:cc:dd:ee:ff][,id=ID][,poll=off|auto|N] (an existing tap)"
        )
    };
    let mut tap = None;
    let mut mac = None;
    let mut poll = PollMode::Off;
    let mut id = format!("net{index}");
    for part in spec.split(',') {
        match part.split_once('=') {
            Some(("tap", t)) if !t.is_empty() => tap = Some(t.to_owned()),
            Some(("mac", m)) if !m.is_empty() => mac = Some(m.to_owned()),
            Some(("id", v)) if !v.is_empty() => id = v.to_owned(),
            Some(("poll", v)) => poll = v.parse().map_err(|e| anyhow::anyhow!("--net {spec}: {e}"))?,
            _ => return Err(usage()),
        }
    }
    let nic = NetworkInterfaceConfig {
        iface_id: id,
        host_dev_name: tap.ok_or_else(usage)?,
        guest_mac: mac,
        poll,
        ..Default::default()
    };
    nic.validate().map_err(|e| anyhow::anyhow!("--net {spec}: {e}"))?;
    Ok(nic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nics_parse() {
        let n = parse_net("tap=tap7,mac=06:00:00:00:00:07", 1).expect("nic");
        assert_eq!((n.iface_id.as_str(), n.host_dev_name.as_str()), ("net1", "tap7"));
        assert_eq!(n.guest_mac.as_deref(), Some("06:00:00:00:00:07"));
        assert_eq!(n.poll, PollMode::Off);
        assert_eq!(parse_net("tap=t,poll=auto", 0).expect("nic").poll, PollMode::Auto);
        for bad in [
            "",
            "tap=",
            "mac=06:00:00:00:00:07",
            "tap=t,vhost=on",
            "tap=t,poll=fast",
            "tap=a-name-far-too-long-for-a-tap",
        ] {
            assert!(parse_net(bad, 0).is_err(), "{bad}");
        }
    }

    #[test]
    fn disks_parse() {
        let d = parse_disk("path=/tmp/a.img,ro=on,id=data", 0).expect("disk");
        assert_eq!(
            (d.drive_id.as_str(), d.path_on_host.as_str(), d.is_read_only),
            ("data", "/tmp/a.img", true)
        );
        assert_eq!(parse_disk("path=/x", 3).expect("disk").drive_id, "disk3");
        assert_eq!(
            parse_disk("path=/x,poll=80us", 0).expect("disk").poll,
            PollMode::Fixed(80)
        );
        for bad in [
            "",
            "ro=on",
            "path=/x,ro=maybe",
            "path=/x,cache=none",
            "/x",
            "path=/x,poll=on",
        ] {
            assert!(parse_disk(bad, 0).is_err(), "{bad}");
        }
    }

    #[test]
    fn uptimes_read_well() {
        assert_eq!(format_uptime(5.4), "5s");
        assert_eq!(format_uptime(65.0), "1m05s");
        assert_eq!(format_uptime(7300.0), "2h01m");
    }
}
