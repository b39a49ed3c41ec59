//! `kvmkit bench`: the paper's experiment as one command. Every workload runs on the bare
//! host, in a kvmkit guest and in a QEMU guest (same guest image, vCPUs and memory), runs
//! interleaved across environments; the results become terminal tables shaped like the
//! paper's Tables 1-4, `results.json`, `report.md` and SVG charts.

mod chart;
mod env;
mod environment;
pub mod host;
mod kind;
mod linux;
mod machine;
mod measured;
mod paper;
mod process;
mod profile;
pub mod record;
mod report;
mod results;
mod rows;
mod table;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};

pub use environment::Env;
pub use kind::Kind;
pub use profile::Profile;
pub use rows::Workload;
pub use table::{Table, Unit};

use env::Runner;
use machine::Machine;
use results::{BenchResults, EnvInfo, LinuxInfo, WorkloadResult};

/// Which guest the bench measures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Guest {
    /// kvmkit's own test guest: the same workload code as the host runner.
    #[default]
    Kvmkit,
    /// A Debian guest running the paper's exact programs.
    Linux,
}

/// The Linux guest's assets and the bench rootfs, built or found in the cache (the CLI
/// supplies this: it shows progress while building them).
pub type LinuxAssetsFn<'a> = &'a dyn Fn() -> anyhow::Result<(kvmkit_images::LinuxAssets, kvmkit_images::RootfsAssets)>;

/// What one `kvmkit bench` measures, and where it writes.
pub struct Options<'a> {
    /// Workload sizes.
    pub profile: Profile,
    /// Tables to run (empty: all).
    pub only: Vec<Table>,
    /// Environments (empty: all).
    pub envs: Vec<Env>,
    /// Runs per workload and environment (interleaved across environments).
    pub runs: usize,
    /// vCPUs per guest (and threads on the host).
    pub cpus: usize,
    /// Guest RAM in MiB (raised where a memory workload needs more).
    pub memory: u64,
    /// Output directory (None: bench-out/<timestamp>).
    pub out: Option<PathBuf>,
    /// The guest measured.
    pub guest: Guest,
    /// `Guest::Linux`: boot this kernel instead of the cached Debian one.
    pub kernel: Option<PathBuf>,
    /// `Guest::Linux`: the cached kernel, initramfs and rootfs.
    pub linux_assets: LinuxAssetsFn<'a>,
}

impl Options<'_> {
    /// `kvmkit` or `linux`.
    pub fn guest_name(&self) -> &'static str {
        match self.guest {
            Guest::Kvmkit => "kvmkit",
            Guest::Linux => "linux",
        }
    }
}

/// Runs the bench; exit status 0 when every cell was measured, 1 when some run failed.
pub fn run(args: &Options) -> anyhow::Result<u8> {
    let started = Instant::now();
    let linux_mode = args.guest == Guest::Linux;
    if args.kernel.is_some() && !linux_mode {
        bail!("--kernel is for --guest linux (the default guest is built into kvmkit)");
    }
    if args.runs == 0 {
        bail!("--runs 0: give at least 1 run");
    }
    if args.cpus == 0 || args.cpus > 64 {
        bail!("--cpus {}: give 1 to 64", args.cpus);
    }
    let tables: Vec<Table> = if args.only.is_empty() {
        Table::ALL.to_vec()
    } else {
        Table::ALL.into_iter().filter(|t| args.only.contains(t)).collect()
    };
    let mut envs: Vec<Env> = if args.envs.is_empty() {
        Env::ALL.to_vec()
    } else {
        Env::ALL.into_iter().filter(|e| args.envs.contains(e)).collect()
    };
    if linux_mode && args.kernel.is_none() && envs.iter().any(|e| e.is_guest()) {
        use kvmkit_vmm::host::kvm::VendorModule;
        if VendorModule::detect(Path::new("/sys/module")) == Some(VendorModule::KvmPvm) {
            bail!(
                "--guest linux: this host's KVM is kvm_pvm, where Debian's stock kernel cannot boot; give a \
                 PVM-enabled kernel with --kernel PATH, use --env host, or the default --guest kvmkit"
            );
        }
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("bench-out").join(timestamp()));
    std::fs::create_dir_all(out.join("tmp")).with_context(|| format!("cannot create {}", out.display()))?;

    let mut warnings: Vec<String> = Vec::new();
    let mut warn = |w: String| {
        eprintln!("kvmkit bench: warning: {w}");
        warnings.push(w);
    };
    let mut environments = BTreeMap::new();
    for e in Env::ALL {
        let (available, reason) = if envs.contains(&e) {
            (true, None)
        } else {
            (false, Some("not selected (--env)".to_owned()))
        };
        environments.insert(
            e.name().to_owned(),
            EnvInfo {
                available,
                reason,
                description: describe(e, linux_mode),
            },
        );
    }
    // SAFETY: geteuid has no preconditions.
    if linux_mode && envs.contains(&Env::Host) && unsafe { libc::geteuid() } != 0 {
        let why = "the host column of --guest linux runs in a chroot, which needs root".to_owned();
        warn(format!("{why}; the host column is dropped"));
        envs.retain(|&e| e != Env::Host);
        if let Some(i) = environments.get_mut("host") {
            i.available = false;
            i.reason = Some(why);
        }
    }
    let qemu = if envs.contains(&Env::Qemu) {
        match env::ensure_qemu(&mut warn) {
            Ok(p) => Some(p),
            Err(why) => {
                warn(format!("{why}; the qemu column is dropped"));
                envs.retain(|&e| e != Env::Qemu);
                if let Some(i) = environments.get_mut("qemu") {
                    i.available = false;
                    i.reason = Some(why);
                }
                None
            }
        }
    } else {
        None
    };
    let machine = Machine::describe(qemu.as_deref());
    if machine.load_per_cpu > 0.5 {
        warn(format!(
            "the host was busy at start (load {:.2} on {} CPUs, {:.2} per CPU > 0.5): expect noisy figures",
            machine.load_average[0], machine.cpus_online, machine.load_per_cpu
        ));
    }
    // (--guest linux runs Debian's programs on the host: kvmkit's own build does not matter there.)
    if !machine.kvmkit_optimized && !linux_mode {
        warn(
            "kvmkit was built without optimizations: the host column runs unoptimized code, so guest/host ratios \
              are not meaningful (build with --release)"
                .into(),
        );
    }
    let linux = if linux_mode {
        Some(linux::LinuxGuest::prepare(args.kernel.clone(), args.linux_assets)?)
    } else {
        None
    };
    let linux_info = linux.as_ref().map(|l| LinuxInfo {
        kernel: l.kernel.display().to_string(),
        cached_kernel_release: l.kernel_version.clone(),
        rootfs_packages: l.rootfs.packages.clone(),
    });
    let guest_elf = out.join("kvmkit-guest.elf");
    std::fs::write(&guest_elf, kvmkit_guest_image::GUEST_ELF)
        .with_context(|| format!("cannot write {}", guest_elf.display()))?;
    let runner = Runner {
        exe: std::env::current_exe().context("cannot find the kvmkit executable")?,
        qemu,
        guest_elf,
        out: out.clone(),
        cpus: args.cpus,
        memory_mib: args.memory,
        cache: std::sync::Mutex::default(),
        linux,
    };

    let workloads = if linux_mode {
        rows::linux_workloads(args.profile, &tables)
    } else {
        rows::workloads(args.profile, &tables)
    };
    if workloads.is_empty() {
        bail!("--only: the selected tables have no {} workloads", args.guest_name());
    }
    let pending = paper::not_measured(&tables, linux_mode);
    // Steps, interleaved: run 1 of every workload in host, kvmkit, qemu; then run 2...
    let steps: Vec<(usize, usize, Env, f64)> = (0..args.runs)
        .flat_map(|r| workloads.iter().enumerate().map(move |(wi, w)| (r, wi, w)))
        .flat_map(|(r, wi, w)| envs.iter().filter(|&&e| w.runs_on(e)).map(move |&e| (r, wi, e)))
        .map(|(r, wi, e)| (r, wi, e, rows::estimate_run_s(&workloads[wi], e, args.cpus)))
        .collect();
    let estimate: f64 = steps.iter().map(|s| s.3).sum();
    eprintln!(
        "kvmkit bench: guest {}, profile {}, {} workload(s) x {} environment(s) ({}) x {} run(s) = {} runs, estimated {}; \
         output in {}",
        args.guest_name(),
        args.profile.name(),
        workloads.len(),
        envs.len(),
        envs.iter().map(|e| e.name()).collect::<Vec<_>>().join(", "),
        args.runs,
        steps.len(),
        human_duration(estimate),
        out.display()
    );
    if args.profile == Profile::Paper {
        eprintln!(
            "kvmkit bench: the paper profile is long (estimated {} on this host); Ctrl-C to stop",
            human_duration(estimate)
        );
    }

    let mut rows: BTreeMap<String, WorkloadResult> = workloads
        .iter()
        .map(|w| (w.id.clone(), WorkloadResult::new(w)))
        .collect();
    for w in &workloads {
        let row = rows.get_mut(&w.id).expect("row");
        for e in Env::ALL {
            if !w.runs_on(e) {
                row.cell_mut(e).skipped = Some("no VM exit on the bare host: guest figures only".into());
            } else if !envs.contains(&e) {
                let why = environments.get(e.name()).and_then(|i| i.reason.clone());
                row.cell_mut(e).skipped = why.or_else(|| Some("not run".into()));
            }
        }
    }

    let bar = ProgressBar::new((estimate * 1000.0).max(1.0) as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] [{bar:30}] {percent:>3}% ETA {eta} {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    let mut done_ms = 0.0;
    let mut failed = 0usize;
    // Without a terminal the bar is hidden: log each step instead (CI logs, the nested lab).
    let plain = !std::io::IsTerminal::is_terminal(&std::io::stderr());
    for (i, &(run, wi, e, est)) in steps.iter().enumerate() {
        let w = &workloads[wi];
        bar.set_message(format!("run {}/{} {} on {}", run + 1, args.runs, w.id, e.name()));
        if plain {
            eprintln!(
                "kvmkit bench: [{}/{}] run {} of {} on {}",
                i + 1,
                steps.len(),
                run + 1,
                w.id,
                e.name()
            );
        }
        let timeout = Duration::from_secs_f64(60.0 + 20.0 * est);
        let outcome = runner.run(e, w, run, timeout);
        let cell = rows.get_mut(&w.id).expect("row").cell_mut(e);
        match outcome {
            Ok(sample) => cell.samples.push(sample),
            Err(err) => {
                failed += 1;
                let line = format!(
                    "kvmkit bench: {} on {} (run {}) failed: {err:#}",
                    w.id,
                    e.name(),
                    run + 1
                );
                // A hidden bar (no terminal) prints nothing.
                if plain {
                    eprintln!("{line}");
                } else {
                    bar.println(line);
                }
                cell.failures.push(format!("run {}: {err:#}", run));
            }
        }
        done_ms += est * 1000.0;
        bar.set_position(done_ms as u64);
    }
    bar.finish_and_clear();
    for row in rows.values_mut() {
        row.finish();
    }
    if failed > 0 {
        warnings.push(format!(
            "{failed} run(s) failed; see the failures of each cell in results.json"
        ));
    }

    let mut results = BenchResults {
        schema: "kvmkit-bench/1",
        profile: args.profile,
        guest: args.guest_name(),
        linux: linux_info,
        runs: args.runs,
        cpus: args.cpus,
        memory_mib: args.memory,
        machine,
        environments,
        workloads: rows,
        order: workloads.iter().map(|w| w.id.clone()).collect(),
        not_measured: pending,
        not_measured_reason: if linux_mode {
            paper::LINUX_PENDING_REASON
        } else {
            paper::PENDING_REASON
        },
        warnings,
        started_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .saturating_sub(started.elapsed().as_secs()),
        wall_s: 0.0,
    };
    let _ = std::fs::remove_dir(out.join("tmp"));
    let charts = chart::write_all(&results, &out)?;
    results.wall_s = started.elapsed().as_secs_f64();
    write(
        &out.join("results.json"),
        serde_json::to_string_pretty(&results)? + "\n",
    )?;
    write(&out.join("report.md"), report::markdown(&results, &charts))?;

    print!("{}", report::terminal(&results));
    for w in &results.warnings {
        println!("warning: {w}");
    }
    let spread: usize = results.workloads.values().map(|w| w.warnings.len()).sum();
    if spread > 0 {
        println!("warning: {spread} cell(s) spread more than 10% across runs (report.md lists them)");
    }
    println!(
        "\nkvmkit bench: done in {}; results in {}/{{results.json,report.md,{}}}",
        human_duration(results.wall_s),
        out.display(),
        charts.join(",")
    );
    Ok(u8::from(failed > 0))
}

fn write(path: &Path, text: String) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn describe(e: Env, linux: bool) -> String {
    if linux {
        return match e {
            Env::Host => "the bare host: the paper's programs in a chroot of kvmkit's Debian rootfs".into(),
            Env::Kvmkit => "Debian's cloud kernel, kvmkit's initramfs and the rootfs (read-only virtio-blk) \
                            under kvmkit run"
                .into(),
            Env::Qemu => "the same kernel, initramfs and disks under qemu-system-x86_64 -M microvm -accel kvm \
                          -cpu host,-arch-capabilities,+invtsc"
                .into(),
        };
    }
    match e {
        Env::Host => "the bare host: the same workload code on host threads, in the kvmkit process".into(),
        Env::Kvmkit => "kvmkit's test guest under kvmkit (kvmkit run --guest)".into(),
        Env::Qemu => "the same guest ELF under qemu-system-x86_64 -M microvm -accel kvm \
                      -cpu host,-arch-capabilities,+invtsc"
            .into(),
    }
}

fn human_duration(s: f64) -> String {
    if s < 90.0 {
        format!("{s:.0} s")
    } else if s < 5400.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

/// `YYYYmmdd-HHMMSS` (UTC) for the default output directory.
fn timestamp() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_timestamps_format() {
        assert_eq!(human_duration(30.0), "30 s");
        assert_eq!(human_duration(600.0), "10.0 min");
        let t = timestamp();
        assert_eq!(t.len(), 15, "{t}");
        assert!(t.starts_with("20"), "{t}");
    }
}
