//! `results.json`: every sample, per workload one entry per environment, with statistics.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::env::Sample;
use crate::environment::Env;
use crate::machine::Machine;
use crate::paper::Pending;
use crate::profile::Profile;
use crate::rows::Workload;
use crate::table::{Table, Unit};

/// Spread ((max - min) / median) above which a cell gets a warning.
pub const SPREAD_WARN: f64 = 0.10;

/// Median, min and max of a cell's samples.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Stats {
    /// Median.
    pub median: f64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
    /// (max - min) / median.
    pub spread: f64,
}

impl Stats {
    /// Statistics of `values`; None when empty.
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        let (min, max) = (v[0], v[n - 1]);
        let spread = if median > 0.0 { (max - min) / median } else { 0.0 };
        Some(Self {
            median,
            min,
            max,
            spread,
        })
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
    /// Guest/host ratio of medians, per guest environment (> 1: the guest is slower).
    pub ratios: BTreeMap<String, f64>,
    /// The paper's figures for this row: host, kvm and their ratio ("paper (KVM on 2017 hardware)").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paper: Option<BTreeMap<String, f64>>,
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

    /// The cell of `env`, mutable.
    pub fn cell_mut(&mut self, env: Env) -> &mut Cell {
        match env {
            Env::Host => &mut self.host,
            Env::Kvmkit => &mut self.kvmkit,
            Env::Qemu => &mut self.qemu,
        }
    }

    /// Computes statistics, ratios and spread warnings once all runs are in.
    pub fn finish(&mut self) {
        let unit = self.unit;
        for env in Env::ALL {
            let cell = self.cell_mut(env);
            let values: Vec<f64> = cell.samples.iter().map(|s| s.value).collect();
            cell.stats = Stats::of(&values);
            if let Some(st) = cell.stats {
                if st.spread > SPREAD_WARN {
                    let msg = format!(
                        "{}: spread {:.0}% (min {} / max {}) exceeds {:.0}%",
                        env.name(),
                        st.spread * 100.0,
                        unit.format(st.min),
                        unit.format(st.max),
                        SPREAD_WARN * 100.0
                    );
                    self.warnings.push(msg);
                }
            }
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
    /// Runs per cell.
    pub runs: usize,
    /// vCPUs per guest / host threads.
    pub cpus: usize,
    /// Guest RAM (MiB) asked for (memory workloads raise it where needed).
    pub memory_mib: u64,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_are_median_min_max() {
        let s = Stats::of(&[3.0, 1.0, 2.0]).expect("stats");
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Stats::of(&[1.0, 2.0]).expect("stats").median, 1.5);
        assert!(Stats::of(&[]).is_none());
    }
}
