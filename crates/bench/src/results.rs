//! `results.json`: every sample, per workload one entry per environment, with statistics.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::env::Sample;
use crate::environment::Env;
use crate::load::RoundLoad;
use crate::machine::Machine;
use crate::paper::Pending;
use crate::profile::Profile;
use crate::rows::Workload;
use crate::stats::{self, Rng};
use crate::student;
use crate::table::{Table, Unit};

/// Median, its 95% interval, min and max of a cell's samples.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Stats {
    /// Median.
    pub median: f64,
    /// The 95% interval of the median (None with a single run): Student's t on the logs
    /// below `stats::FEW_RUNS` runs, else the bootstrap (`ci_method`).
    pub ci95: Option<[f64; 2]>,
    /// How `ci95` was computed: `t-log` or `bootstrap`.
    pub ci_method: &'static str,
    /// The interval's larger distance from the median, relative to it (0.03: +-3%).
    pub ci95_rel: Option<f64>,
    /// Successful runs behind these figures.
    pub runs: usize,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
    /// (max - min) / median.
    pub spread: f64,
}

impl Stats {
    /// Statistics of `values` (bootstrap resamples drawn from `rng`); None when empty.
    pub fn of(values: &[f64], rng: &mut Rng) -> Option<Self> {
        let median = stats::median(values)?;
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let spread = if median > 0.0 { (max - min) / median } else { 0.0 };
        // Student's interval is centred on the geometric mean; widened (never narrowed) to
        // hold the median in the rare skewed sample where it falls outside.
        let ci = stats::interval(values, rng).map(|(lo, hi)| (lo.min(median), hi.max(median)));
        Some(Self {
            median,
            ci95: ci.map(|(lo, hi)| [lo, hi]),
            ci_method: stats::method(values.len()),
            ci95_rel: ci.map(|c| stats::relative_half_width(median, c)),
            runs: values.len(),
            min,
            max,
            spread,
        })
    }
}

/// A guest cell against the host (or, in the exit table, kvmkit against QEMU): the ratio
/// of medians with its interval and a two-sided test; significant when p < 0.05 and the
/// ratio's 95% interval leaves out 1.0. With at least `stats::FEW_RUNS` runs on each side
/// the test is Mann-Whitney U and the interval a bootstrap; with fewer, Welch's t test on
/// the logs and its interval.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    /// In words: "kvmkit slower than host (significant)", "no difference detectable".
    pub text: String,
    /// The environment compared against.
    pub against: String,
    /// This cell's median / the other's.
    pub ratio: f64,
    /// The 95% interval of the ratio (None with a single run on either side).
    pub ratio_ci95: Option<[f64; 2]>,
    /// The test: `mann-whitney` or `welch-log`.
    pub test: &'static str,
    /// Mann-Whitney U of this cell's samples (Mann-Whitney only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub u: Option<f64>,
    /// Two-sided p-value.
    pub p_value: f64,
    /// Whether p is exact (Mann-Whitney without ties) or an approximation.
    pub p_exact: bool,
    /// p < 0.05 and the ratio's 95% interval leaves out 1.0.
    pub significant: bool,
    /// Most of the rounds both cells ran in started on a busy machine: the
    /// difference may be the load's (the report says so beside the verdict).
    pub busy_host: bool,
}

/// Significance level of the verdicts.
pub const ALPHA: f64 = 0.05;

impl Verdict {
    /// `mine` (environment `name`) against `other` (environment `against`); None when
    /// either has no sample or a median is not positive.
    pub fn of(name: &str, mine: &[f64], against: &str, other: &[f64], rng: &mut Rng) -> Option<Self> {
        let (m, o) = (stats::median(mine)?, stats::median(other)?);
        if m <= 0.0 || o <= 0.0 {
            return None;
        }
        let few = mine.len().min(other.len()) < stats::FEW_RUNS;
        let welch = few.then(|| student::welch_log(mine, other)).flatten();
        let (test, u, p, p_exact, ratio_ci) = match welch {
            Some(w) => ("welch-log", None, w.p, false, Some(w.ratio_ci)),
            None => {
                let mw = stats::mann_whitney(mine, other)?;
                let ci = stats::ratio_ci(mine, other, rng);
                ("mann-whitney", Some(mw.u), mw.p, mw.exact, ci)
            }
        };
        // Both must agree: the test rejects "same distribution" and the ratio's interval
        // leaves out 1.0, so a "significant" line never sits beside an interval that says
        // "maybe equal".
        let significant = p < ALPHA && ratio_ci.is_some_and(|(lo, hi)| lo > 1.0 || hi < 1.0);
        let text = match (significant, m > o) {
            (false, _) => "no difference detectable".to_owned(),
            (true, true) => format!("{name} slower than {against} (significant)"),
            (true, false) => format!("{name} faster than {against} (significant)"),
        };
        Some(Self {
            text,
            against: against.to_owned(),
            ratio: m / o,
            ratio_ci95: ratio_ci.map(|(lo, hi)| [lo, hi]),
            test,
            u,
            p_value: p,
            p_exact,
            significant,
            busy_host: false,
        })
    }

    /// The ratio with the digits its interval supports (`1.2x`).
    pub fn ratio_text(&self) -> String {
        stats::format_ratio(self.ratio, self.ratio_ci95.map(|[lo, hi]| (lo, hi)))
    }
}

/// The raw KVM floor of one exit row (`workloads.<id>.floor` in results.json), measured
/// by `crate::floor`.
#[derive(Clone, Debug, Serialize)]
pub struct Floor {
    /// How it was measured.
    pub method: &'static str,
    /// Exits timed per run (the row's own count).
    pub exits: u64,
    /// Mean nanoseconds per exit of each successful run.
    pub samples_ns: Vec<f64>,
    /// Statistics over `samples_ns` (median, 95% interval, runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<Stats>,
    /// kvmkit's median / the floor's median (1.0: kvmkit adds nothing to a bare exit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kvmkit_ratio: Option<f64>,
    /// The CPUs its runs were pinned to (None: not pinned).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pinned: Option<Vec<usize>>,
    /// Runs that failed, with why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
    /// Why it was not measured at all (no usable /dev/kvm).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

impl Floor {
    /// An empty floor for an exit row of `exits` exits per run.
    pub fn new(exits: u64, pinned: Option<Vec<usize>>) -> Self {
        Self {
            method: "kvmkit_vmm::exit_floor: a one-vCPU VM built with kvm-ioctls (1 MiB slot, no irqchip) \
                     looping on the exit at CPL3; mean ns per KVM_RUN round trip, timed on the host after a \
                     warm-up",
            exits,
            samples_ns: Vec::new(),
            stats: None,
            kvmkit_ratio: None,
            pinned,
            failures: Vec::new(),
            skipped: None,
        }
    }
}

/// One environment's cell of one workload.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Cell {
    /// Every successful run.
    pub samples: Vec<Sample>,
    /// Statistics over `samples`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<Stats>,
    /// Runs that failed, with why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
    /// Why this environment did not run this workload at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Against the host (exit table: kvmkit against QEMU).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// Why its runs stopped: `ci-target`, `max-runs`, `time-cap`, `fixed-runs`, `failures`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    /// The CPUs its runs were pinned to (None: not pinned).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pinned: Option<Vec<usize>>,
}

impl Cell {
    /// The figures of its successful runs.
    pub fn values(&self) -> Vec<f64> {
        self.samples.iter().map(|s| s.value).collect()
    }
}

/// One workload (a row of a table).
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadResult {
    /// Table.
    pub table: Table,
    /// Row label.
    pub label: String,
    /// Unit of `value` in the samples.
    pub unit: Unit,
    /// Lower figures are better.
    pub lower_is_better: bool,
    /// The bare host.
    pub host: Cell,
    /// kvmkit's test guest under kvmkit.
    pub kvmkit: Cell,
    /// The same guest under QEMU.
    pub qemu: Cell,
    /// Guest/host ratio of medians, per guest environment (> 1: the guest is slower);
    /// each guest cell's `verdict` has its interval and test.
    pub ratios: BTreeMap<String, f64>,
    /// The paper's figures for this row: host, kvm and their ratio ("paper (KVM on 2017 hardware)").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paper: Option<BTreeMap<String, f64>>,
    /// Exit rows: the raw KVM floor, the same exit from a minimal VMM, timed on the host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor: Option<Floor>,
    /// Warnings about this row.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Every run in every environment must report the same result (checksum, digest).
    #[serde(skip)]
    pub same_result: bool,
}

impl WorkloadResult {
    /// An empty row for `w`.
    pub fn new(w: &Workload) -> Self {
        // For scores (higher is better) the time-equivalent ratio is host / KVM.
        let paper = w.paper.map(|(h, k)| {
            let ratio = if w.paper_is_score { h / k } else { k / h };
            let mut m = BTreeMap::from([
                ("host".to_owned(), h),
                ("kvm".to_owned(), k),
                ("kvm_over_host".to_owned(), ratio),
            ]);
            if w.paper_is_score {
                m.insert("score".to_owned(), 1.0);
            }
            m
        });
        Self {
            table: w.table,
            label: w.label.clone(),
            unit: w.unit,
            lower_is_better: true,
            host: Cell::default(),
            kvmkit: Cell::default(),
            qemu: Cell::default(),
            ratios: BTreeMap::new(),
            paper,
            floor: None,
            warnings: Vec::new(),
            same_result: w.kind.deterministic(),
        }
    }

    /// The cell of `env`.
    pub fn cell(&self, env: Env) -> &Cell {
        match env {
            Env::Host => &self.host,
            Env::Kvmkit => &self.kvmkit,
            Env::Qemu => &self.qemu,
        }
    }

    /// The cell of `env`, mutable (see [`Cell`]).
    pub fn cell_mut(&mut self, env: Env) -> &mut Cell {
        match env {
            Env::Host => &mut self.host,
            Env::Kvmkit => &mut self.kvmkit,
            Env::Qemu => &mut self.qemu,
        }
    }

    /// Computes statistics, verdicts and ratios once all runs are in; a cell whose
    /// interval is wider than `ci_target` (0.03: +-3%) gets a warning. Bootstrap
    /// resamples come from `seed` and the row's id, so one seed gives one report.
    /// `busy_rounds[r]`: round r + 1 started on a busy machine (a cell's run k is in
    /// round k + 1: every unfinished cell runs once a round).
    pub fn finish(&mut self, id: &str, seed: u64, ci_target: f64, busy_rounds: &[bool]) {
        for env in Env::ALL {
            let mut rng = Rng::for_stream(seed, &format!("{id}/{}", env.name()));
            let cell = self.cell_mut(env);
            let values = cell.values();
            cell.stats = Stats::of(&values, &mut rng);
            if let Some(st) = cell.stats {
                if let Some(rel) = st.ci95_rel.filter(|&r| r > ci_target) {
                    let msg = format!(
                        "{}: 95% interval +-{:.1}% after {} run(s) ({}), wider than the +-{:.0}% target",
                        env.name(),
                        rel * 100.0,
                        st.runs,
                        cell.stopped.as_deref().unwrap_or("stopped"),
                        ci_target * 100.0
                    );
                    self.warnings.push(msg);
                }
            }
        }
        let host = self.host.values();
        let qemu = self.qemu.values();
        for env in [Env::Kvmkit, Env::Qemu] {
            let mut rng = Rng::for_stream(seed, &format!("{id}/{}/ratio", env.name()));
            let mine = self.cell(env).values();
            let (verdict, other) = if !host.is_empty() {
                (Verdict::of(env.name(), &mine, "host", &host, &mut rng), host.len())
            } else if env == Env::Kvmkit && self.table == Table::Exits {
                (Verdict::of(env.name(), &mine, "qemu", &qemu, &mut rng), qemu.len())
            } else {
                (None, 0)
            };
            // The rounds both cells ran in: mostly busy ones make the verdict suspect
            // (load that changed between rounds looks like a difference to any test).
            let both = mine.len().min(other);
            let busy = busy_rounds.iter().take(both).filter(|&&b| b).count();
            self.cell_mut(env).verdict = verdict.map(|v| Verdict {
                busy_host: both > 0 && 2 * busy > both,
                ..v
            });
        }
        if self.same_result {
            let mut seen: Vec<(Env, u64)> = Vec::new();
            for env in Env::ALL {
                for s in &self.cell(env).samples {
                    if !seen.iter().any(|&(_, r)| r == s.result) {
                        seen.push((env, s.result));
                    }
                }
            }
            if seen.len() > 1 {
                let list: Vec<String> = seen.iter().map(|(e, r)| format!("{} {r:#x}", e.name())).collect();
                self.warnings
                    .push(format!("results differ between runs/environments: {}", list.join(", ")));
            }
        }
        let kvmkit = self.kvmkit.stats.map(|s| s.median);
        if let Some(floor) = self.floor.as_mut() {
            let mut rng = Rng::for_stream(seed, &format!("{id}/floor"));
            floor.stats = Stats::of(&floor.samples_ns, &mut rng);
            floor.kvmkit_ratio = floor
                .stats
                .zip(kvmkit)
                .map(|(f, k)| k / f.median)
                .filter(|r| r.is_finite() && *r > 0.0);
        }
        let host = self.host.stats.map(|s| s.median);
        for env in [Env::Kvmkit, Env::Qemu] {
            if let (Some(h), Some(g)) = (host, self.cell(env).stats.map(|s| s.median)) {
                let r = g / h;
                if r.is_finite() && r > 0.0 {
                    self.ratios.insert(env.name().to_owned(), r);
                }
            }
        }
    }
}

/// An environment as a whole.
#[derive(Clone, Debug, Serialize)]
pub struct EnvInfo {
    /// Whether it was run.
    pub available: bool,
    /// Why not, when it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What it is.
    pub description: String,
    /// The page-size policy of the memory its workloads run in (guest RAM, or the host
    /// runner's memtest buffer): a guest/host memtest ratio compares like with like only
    /// when these agree.
    pub memory_pages: String,
}

/// What `--guest linux` ran.
#[derive(Clone, Debug, Serialize)]
pub struct LinuxInfo {
    /// The guest kernel image.
    pub kernel: String,
    /// The cached Debian kernel's release (the kernel, unless `--kernel` replaced it).
    pub cached_kernel_release: String,
    /// `(package, version)` of every package in the rootfs.
    pub rootfs_packages: Vec<(String, String)>,
}

/// How many runs each cell got.
#[derive(Clone, Debug, Serialize)]
pub struct Repetition {
    /// `adaptive` (until the interval is within the target) or `fixed` (`--runs N`).
    pub mode: &'static str,
    /// `--runs N`: the fixed count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fixed_runs: Option<usize>,
    /// Target of the median's 95% interval, relative (0.03: +-3%).
    pub ci_target: f64,
    /// Runs every cell gets at least (adaptive).
    pub min_runs: usize,
    /// Runs no cell exceeds (adaptive).
    pub max_runs: usize,
    /// Seconds of runs after which a cell stops (adaptive, once it has its minimum).
    pub max_cell_s: f64,
    /// Seed of the round order and the bootstrap.
    pub seed: u64,
}

/// Where the runs were pinned.
#[derive(Clone, Debug, Serialize)]
pub struct Affinity {
    /// The CPUs (None: not pinned, with `note` saying why).
    pub cores: Option<Vec<usize>>,
    /// What was pinned, or why nothing was.
    pub note: String,
}

/// The whole of `results.json`.
#[derive(Clone, Debug, Serialize)]
pub struct BenchResults {
    /// Format tag.
    pub schema: &'static str,
    /// Profile.
    pub profile: Profile,
    /// Which guest: `kvmkit` (the no_std test guest) or `linux` (the paper's programs).
    pub guest: &'static str,
    /// `--guest linux`: the kernel, its release and the rootfs's package versions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub linux: Option<LinuxInfo>,
    /// How many runs each cell got: a fixed count or until its interval is narrow enough.
    pub repetition: Repetition,
    /// The load before each round of runs, and how long the bench waited for a quieter machine.
    pub rounds: Vec<RoundLoad>,
    /// The CPUs the host runner and the guests' processes were pinned to, and which rows.
    pub affinity: Affinity,
    /// vCPUs per guest / host threads.
    pub cpus: usize,
    /// Guest RAM (MiB) asked for (memory workloads raise it where needed).
    pub memory_mib: u64,
    /// kvmkit's disk polling in the disk rows (`off`, `auto` or a window in us).
    pub kvmkit_disk_poll: String,
    /// The machine and software.
    pub machine: Machine,
    /// Environments: host, kvmkit, qemu.
    pub environments: BTreeMap<String, EnvInfo>,
    /// Per workload id (`primes:100000`): one entry per environment.
    pub workloads: BTreeMap<String, WorkloadResult>,
    /// Workload ids in table order.
    pub order: Vec<String>,
    /// Rows of the paper's tables not measured yet (with the paper's figures).
    pub not_measured: Vec<Pending>,
    /// Why they are not measured.
    pub not_measured_reason: &'static str,
    /// Run-wide warnings (host load, unoptimized build, missing environments).
    pub warnings: Vec<String>,
    /// Seconds since the Unix epoch at start.
    pub started_unix: u64,
    /// Wall seconds of the whole bench.
    pub wall_s: f64,
}

/// Results to test the report and charts with.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use crate::environment::Env;
    use crate::table::Table;

    /// A bench's results with `primes:100000` measured `n` times per environment
    /// (kvmkit ~20% slower than the host, qemu the same as the host).
    pub(crate) fn synthetic_results(n: usize) -> BenchResults {
        use crate::env::Sample;
        use std::collections::BTreeMap;
        let w = crate::rows::workloads(crate::profile::Profile::Quick, &[Table::Cpu]).remove(0);
        let mut row = WorkloadResult::new(&w);
        for (env, base) in [(Env::Host, 1.0), (Env::Kvmkit, 1.2), (Env::Qemu, 1.0)] {
            row.cell_mut(env).samples = (0..n)
                .map(|run| Sample {
                    run,
                    value: base * (1.0 + 0.004 * (run % 3) as f64),
                    ns_per_cpu: vec![1],
                    result: 9592,
                    wall_s: 0.1,
                    note: None,
                    io: None,
                })
                .collect();
        }
        row.finish(&w.id, 1, 0.03, &[]);
        BenchResults {
            schema: "kvmkit-bench/1",
            profile: crate::profile::Profile::Quick,
            guest: "kvmkit",
            linux: None,
            repetition: crate::results::Repetition {
                mode: "adaptive",
                fixed_runs: None,
                ci_target: 0.03,
                min_runs: 5,
                max_runs: 20,
                max_cell_s: 60.0,
                seed: 1,
            },
            rounds: Vec::new(),
            affinity: crate::results::Affinity {
                cores: None,
                note: "not pinned".into(),
            },
            cpus: 1,
            memory_mib: 256,
            kvmkit_disk_poll: "off".into(),
            machine: crate::machine::Machine::describe(None),
            environments: Env::ALL
                .into_iter()
                .map(|e| {
                    let info = EnvInfo {
                        available: true,
                        reason: None,
                        description: String::new(),
                        memory_pages: String::new(),
                    };
                    (e.name().to_owned(), info)
                })
                .collect(),
            workloads: BTreeMap::from([(w.id.clone(), row)]),
            order: vec![w.id],
            not_measured: Vec::new(),
            not_measured_reason: "",
            warnings: Vec::new(),
            started_unix: 0,
            wall_s: 0.0,
        }
    }

    /// [`synthetic_results`] with the exit table's two rows: kvmkit at 33 us (PIO) and
    /// 40 us (MMIO) per exit, 5 runs each, and a raw KVM floor of 30 and 32 us.
    pub(crate) fn with_exit_floor() -> BenchResults {
        use crate::env::Sample;
        let mut results = synthetic_results(3);
        for (w, (guest, floor)) in crate::rows::workloads(crate::profile::Profile::Quick, &[Table::Exits])
            .into_iter()
            .zip([(33_000.0, 30_000.0), (40_000.0, 32_000.0)])
        {
            let mut row = WorkloadResult::new(&w);
            let wobble = |base: f64, i: usize| base * (1.0 + 0.002 * (i % 3) as f64);
            row.kvmkit.samples = (0..5)
                .map(|run| Sample {
                    run,
                    value: wobble(guest, run),
                    ns_per_cpu: vec![1],
                    result: 0,
                    wall_s: 0.5,
                    note: None,
                    io: None,
                })
                .collect();
            let mut f = Floor::new(w.arg, None);
            f.samples_ns = (0..5).map(|i| wobble(floor, i)).collect();
            row.floor = Some(f);
            row.finish(&w.id, 1, 0.03, &[]);
            results.order.push(w.id.clone());
            results.workloads.insert(w.id, row);
        }
        results
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_are_median_min_max() {
        let rng = &mut Rng::new(1);
        let s = Stats::of(&[3.0, 1.0, 2.0], rng).expect("stats");
        assert_eq!((s.median, s.min, s.max, s.runs), (2.0, 1.0, 3.0, 3));
        let [lo, hi] = s.ci95.expect("interval");
        // Three runs: Student's t on the logs (t(2) = 4.3), wider than the range.
        assert_eq!(s.ci_method, "t-log");
        assert!(lo < 1.0 && hi > 3.0, "{lo} {hi}");
        assert_eq!(Stats::of(&[1.0, 2.0], rng).expect("stats").median, 1.5);
        assert!(Stats::of(&[4.0], rng).expect("stats").ci95.is_none());
        assert!(Stats::of(&[], rng).is_none());
    }

    #[test]
    fn verdicts_from_mostly_busy_rounds_are_flagged() {
        let flagged = |busy: &[bool]| {
            let mut r = fixtures::synthetic_results(6);
            let row = r.workloads.values_mut().next().expect("row");
            row.finish("primes", 1, 0.03, busy);
            let v = row.cell(Env::Kvmkit).verdict.clone().expect("verdict");
            assert!(v.significant, "{v:?}");
            v.busy_host
        };
        assert!(!flagged(&[]), "no round information: no flag");
        assert!(!flagged(&[false; 6]));
        assert!(!flagged(&[true, true, true, false, false, false]), "half is not most");
        assert!(flagged(&[true, true, true, true, false, false]));
        // Rounds after the last run the two cells share do not count.
        assert!(!flagged(&[
            false, false, false, false, false, false, true, true, true, true, true, true, true
        ]));
    }

    #[test]
    fn verdicts_say_slower_faster_or_nothing() {
        let rng = &mut Rng::new(1);
        let host = [1.0, 1.01, 0.99, 1.0, 1.02];
        let slow = [1.2, 1.21, 1.19, 1.22, 1.2];
        let v = Verdict::of("kvmkit", &slow, "host", &host, rng).expect("verdict");
        assert_eq!(v.text, "kvmkit slower than host (significant)");
        assert!(v.significant && v.p_value < ALPHA && !v.p_exact, "{v:?}");
        assert_eq!(v.ratio_text(), "1.20x", "+-2%: two decimals");
        let v = Verdict::of("qemu", &host, "host", &slow, rng).expect("verdict");
        assert_eq!(v.text, "qemu faster than host (significant)");
        // Overlapping samples, or too few runs for any test to decide: no verdict either way.
        let near = [1.01, 0.98, 1.03, 1.0, 0.995];
        let v = Verdict::of("kvmkit", &near, "host", &host, rng).expect("verdict");
        assert_eq!(v.text, "no difference detectable");
        // Few runs: Welch on the logs, which calls a tight 20% gap with 3 runs each (where
        // Mann-Whitney's smallest p would be 0.1) but not two scattered runs.
        let v = Verdict::of("kvmkit", &slow[..3], "host", &host[..3], rng).expect("verdict");
        assert_eq!((v.test, v.u), ("welch-log", None));
        assert_eq!(v.text, "kvmkit slower than host (significant)", "{v:?}");
        let v = Verdict::of("kvmkit", &[1.2, 0.9], "host", &[1.0, 1.1], rng).expect("verdict");
        assert_eq!(v.text, "no difference detectable", "{v:?}");
        assert!(Verdict::of("kvmkit", &[], "host", &host, rng).is_none());
        // Ranks apart (p < 0.05) but the ratio's interval straddles 1.0 (one slow outlier
        // run on the host): not called significant.
        let host = [1.0, 1.0, 1.0, 1.0, 1.0, 3.0];
        let guest = [1.01, 1.01, 1.01, 1.01, 1.01, 1.01];
        let v = Verdict::of("kvmkit", &guest, "host", &host, rng).expect("verdict");
        assert_eq!(v.test, "mann-whitney");
        assert!(v.p_value < ALPHA, "{v:?}");
        assert_eq!(v.text, "no difference detectable", "{v:?}");
    }
}
