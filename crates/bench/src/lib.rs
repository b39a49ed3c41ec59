//! `kvmkit bench`: the paper's experiment as one command. Every workload runs on the bare
//! host, in a kvmkit guest and in a QEMU guest (same guest image, vCPUs and memory), runs
//! interleaved across environments; the results become terminal tables shaped like the
//! paper's Tables 1-4, `results.json`, `report.md` and SVG charts.

mod chart;
mod env;
mod environment;
mod floor;
pub mod host;
mod kind;
mod linux;
mod load;
mod machine;
mod measured;
pub mod pages;
mod paper;
mod process;
mod profile;
pub mod record;
mod report;
mod results;
mod rows;
mod schedule;
pub mod stats;
mod student;
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
use results::{Affinity, BenchResults, EnvInfo, LinuxInfo, Repetition, WorkloadResult};
use schedule::{CellRun, Plan};
use stats::Rng;

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
    /// `--runs N`: exactly N runs per cell; None: adaptive (until the median's 95%
    /// interval is within `ci_target`, or a cap).
    pub runs: Option<usize>,
    /// Target relative half-width of a cell's 95% interval (0.03: +-3%).
    pub ci_target: f64,
    /// Runs each cell gets at least (adaptive).
    pub min_runs: usize,
    /// Runs no cell exceeds (adaptive).
    pub max_runs: usize,
    /// Seconds of runs after which a cell stops once it has `min_runs` (adaptive).
    pub max_cell_s: f64,
    /// Seed of the round order and the bootstrap.
    pub seed: u64,
    /// Longest wait for a quieter machine before each round.
    pub quiet_wait: Duration,
    /// Pin the host runner and the guests' processes to `cpus` cores.
    pub pin: bool,
    /// vCPUs per guest (and threads on the host).
    pub cpus: usize,
    /// Guest RAM in MiB (raised where a memory workload needs more).
    pub memory: u64,
    /// kvmkit's disk polling (`--disk ...,poll=`) in the disk rows.
    pub disk_poll: kvmkit_vmm::vmm_config::PollMode,
    /// Output directory (None: `bench-out/<timestamp>`).
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
    if args.runs == Some(0) {
        bail!("--runs 0: give at least 1 run");
    }
    if !(args.ci_target > 0.0 && args.ci_target < 1.0) {
        bail!(
            "--ci-target {}: give a percentage above 0 and below 100",
            args.ci_target * 100.0
        );
    }
    if args.min_runs < 2 || args.max_runs < args.min_runs {
        bail!(
            "--min-runs {} / --max-runs {}: give at least 2 runs, and no fewer at most than at least",
            args.min_runs,
            args.max_runs
        );
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
                memory_pages: pages::env_policy(e, linux_mode, pages::thp_mode().as_deref()),
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
        disk_poll: args.disk_poll,
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
    let plan = Plan {
        fixed: args.runs,
        ci_target: args.ci_target,
        min_runs: args.min_runs,
        max_runs: args.max_runs,
        max_cell_s: args.max_cell_s,
    };
    // Cells: every workload in every environment that runs it.
    let mut cells: Vec<CellRun> = workloads
        .iter()
        .enumerate()
        .flat_map(|(wi, w)| {
            envs.iter()
                .filter(|&&e| w.runs_on(e))
                .map(move |&e| CellRun::new(wi, e))
        })
        .collect();
    let estimate_of = |c: &CellRun| rows::estimate_run_s(&workloads[c.workload], c.env, args.cpus);
    let round_s: f64 = cells.iter().map(estimate_of).sum();
    let (low, high) = match args.runs {
        Some(n) => (n, n),
        None => (args.min_runs, args.max_runs),
    };
    let runs_text = match args.runs {
        Some(n) => format!("{n} run(s)"),
        None => format!(
            "{}-{} runs (until the median's 95% interval is within +-{}%)",
            args.min_runs,
            args.max_runs,
            args.ci_target * 100.0
        ),
    };
    let estimate = round_s * low as f64;
    let estimate_text = if low == high {
        human_duration(estimate)
    } else {
        format!(
            "{} to {}",
            human_duration(estimate),
            human_duration(round_s * high as f64)
        )
    };
    let cores = if args.pin { load::choose_cores(args.cpus) } else { None };
    let affinity = Affinity {
        cores: cores.clone(),
        note: match (&cores, args.pin) {
            (Some(c), _) => format!(
                "the host runner's threads and the guests' VMM processes (kvmkit run, QEMU, with their vCPU \
                 threads) pinned to CPU(s) {c:?} for the CPU and exit rows; the disk rows unpinned (the guest \
                 polls while the VMM's I/O thread works)"
            ),
            (None, false) => "not pinned (--no-pin)".into(),
            (None, true) => format!(
                "not pinned: --cpus {} uses every CPU this process may run on",
                args.cpus
            ),
        },
    };
    eprintln!(
        "kvmkit bench: guest {}, profile {}, {} workload(s) x {} environment(s) ({}) = {} cells x {runs_text}, \
         estimated {estimate_text}; output in {}",
        args.guest_name(),
        args.profile.name(),
        workloads.len(),
        envs.len(),
        envs.iter().map(|e| e.name()).collect::<Vec<_>>().join(", "),
        cells.len(),
        out.display()
    );
    if args.profile == Profile::Paper {
        eprintln!("kvmkit bench: the paper profile is long (estimated {estimate_text} on this host); Ctrl-C to stop");
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
            } else if w.kind.pinnable() {
                row.cell_mut(e).pinned = cores.clone();
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
    let mut rounds = Vec::new();
    let mut order_rng = Rng::new(args.seed);
    let mut busy_streak = 0usize;
    // The raw KVM floor beside kvmkit's exit rows: one run per row in each round that runs
    // a kvmkit exit cell (milliseconds to seconds), pinned like those cells.
    let mut floors = if envs.contains(&Env::Kvmkit) {
        floor::Floors::new(&workloads, cores.as_deref())
    } else {
        None
    };
    // Without a terminal the bar is hidden: log each step instead (CI logs, the nested lab).
    let plain = !std::io::IsTerminal::is_terminal(&std::io::stderr());
    loop {
        let todo = Plan::round_order(&cells, &mut order_rng);
        if todo.is_empty() {
            break;
        }
        let round = rounds.len() + 1;
        bar.set_message(format!("round {round}: waiting for a quiet machine"));
        // A machine busy through the whole wait of the last rounds stays busy: stop
        // waiting (look once) until a round finds it quiet again.
        let wait = if busy_streak >= load::GIVE_UP_AFTER {
            Duration::ZERO
        } else {
            args.quiet_wait
        };
        let seen = load::settle(round, todo.len(), wait);
        busy_streak = if seen.quiet { 0 } else { busy_streak + 1 };
        let busy = |b: Option<f64>| b.map_or_else(|| "?".into(), |b| format!("{:.0}%", b * 100.0));
        let line = format!(
            "kvmkit bench: round {round}: {} cell(s); CPUs {} busy{}",
            todo.len(),
            busy(seen.busy_before),
            if wait.is_zero() && !seen.quiet && !args.quiet_wait.is_zero() {
                format!(
                    " (busy for {GIVE} rounds in a row: not waiting)",
                    GIVE = load::GIVE_UP_AFTER
                )
            } else if seen.waited_s > 0.05 {
                format!(
                    ", waited {:.1} s: {} busy{}",
                    seen.waited_s,
                    busy(seen.busy_at_start),
                    if seen.quiet { "" } else { " (still busy: runs anyway)" }
                )
            } else {
                String::new()
            }
        );
        if plain {
            eprintln!("{line}");
        } else {
            bar.println(line);
        }
        rounds.push(seen);
        let round_est: f64 = todo.iter().map(|&c| estimate_of(&cells[c])).sum();
        let want = ((done_ms + round_est * 1000.0) as u64).max(bar.length().unwrap_or(0));
        bar.set_length(want);
        for (i, &ci) in todo.iter().enumerate() {
            let (wi, e, run) = (cells[ci].workload, cells[ci].env, cells[ci].attempts);
            let w = &workloads[wi];
            let est = estimate_of(&cells[ci]);
            bar.set_message(format!("round {round}, run {} of {} on {}", run + 1, w.id, e.name()));
            if plain {
                eprintln!(
                    "kvmkit bench: [round {round}, {}/{}] run {} of {} on {}",
                    i + 1,
                    todo.len(),
                    run + 1,
                    w.id,
                    e.name()
                );
            }
            let timeout = Duration::from_secs_f64(60.0 + 20.0 * est);
            let pin = if w.kind.pinnable() { cores.as_deref() } else { None };
            let t0 = Instant::now();
            let outcome = load::pinned(pin, || runner.run(e, w, run, timeout));
            let cell = rows.get_mut(&w.id).expect("row").cell_mut(e);
            let state = &mut cells[ci];
            state.attempts += 1;
            state.spent_s += t0.elapsed().as_secs_f64();
            match outcome {
                Ok(sample) => cell.samples.push(sample),
                Err(err) => {
                    failed += 1;
                    state.failures += 1;
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
        let exit_cells = todo
            .iter()
            .any(|&c| cells[c].env == Env::Kvmkit && floor::floor_kind(workloads[cells[c].workload].kind).is_some());
        if let Some(f) = floors.as_mut().filter(|_| exit_cells) {
            bar.set_message(format!("round {round}: raw KVM floor"));
            if plain {
                eprintln!("kvmkit bench: [round {round}] raw KVM floor of the exit rows");
            }
            f.run_round();
        }
        for c in cells.iter_mut().filter(|c| c.stopped.is_none()) {
            let w = &workloads[c.workload];
            let cell = rows.get_mut(&w.id).expect("row").cell_mut(c.env);
            // The same bootstrap stream as the final statistics: the interval a cell
            // stopped on is the one the report shows.
            let mut rng = Rng::for_stream(args.seed, &format!("{}/{}", w.id, c.env.name()));
            c.stopped = plan.stop_reason(c, &cell.values(), &mut rng);
            if let Some(why) = c.stopped {
                cell.stopped = Some(why.to_owned());
            }
        }
    }
    bar.finish_and_clear();
    if let Some(f) = floors {
        for (wi, f) in f.finish() {
            if let Some(row) = rows.get_mut(&workloads[wi].id) {
                row.floor = Some(f);
            }
        }
    }
    let busy: Vec<bool> = rounds.iter().map(|r| !r.quiet).collect();
    for (id, row) in rows.iter_mut() {
        row.finish(id, args.seed, args.ci_target, &busy);
    }
    if failed > 0 {
        warnings.push(format!(
            "{failed} run(s) failed; see the failures of each cell in results.json"
        ));
    }
    let busy_rounds = rounds.iter().filter(|r| !r.quiet).count();
    if busy_rounds > 0 {
        warnings.push(format!(
            "{busy_rounds} of {} round(s) started on a busy machine (CPUs >= {:.0}% busy after waiting up to \
             {:.0} s; no more waiting after {} such rounds in a row): the intervals carry that noise",
            rounds.len(),
            load::QUIET_BELOW * 100.0,
            args.quiet_wait.as_secs_f64(),
            load::GIVE_UP_AFTER
        ));
    }

    let mut results = BenchResults {
        schema: "kvmkit-bench/1",
        profile: args.profile,
        guest: args.guest_name(),
        linux: linux_info,
        repetition: Repetition {
            mode: if args.runs.is_some() { "fixed" } else { "adaptive" },
            fixed_runs: args.runs,
            ci_target: args.ci_target,
            min_runs: args.min_runs,
            max_runs: args.max_runs,
            max_cell_s: args.max_cell_s,
            seed: args.seed,
        },
        rounds,
        affinity,
        cpus: args.cpus,
        memory_mib: args.memory,
        kvmkit_disk_poll: args.disk_poll.to_string(),
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
    let wide: usize = results
        .workloads
        .values()
        .flat_map(|w| &w.warnings)
        .filter(|w| w.contains("interval"))
        .count();
    if wide > 0 {
        println!(
            "warning: {wide} cell(s) did not reach the +-{}% interval target (report.md lists them)",
            args.ci_target * 100.0
        );
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
