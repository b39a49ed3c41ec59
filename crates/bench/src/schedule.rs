//! Adaptive repetition: which cells (workload x environment) still need runs, and why a
//! cell stops. Each round runs every unfinished cell once, in a seeded random order, so
//! drift on the host spreads evenly over the cells.

use crate::environment::Env;
use crate::stats::{self, Rng};

/// How many runs cells get.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// `--runs N`: exactly N attempts per cell, no adaptation.
    pub fixed: Option<usize>,
    /// Target relative half-width of the median's 95% interval (0.03: +-3%).
    pub ci_target: f64,
    /// Runs before a cell may stop on its interval.
    pub min_runs: usize,
    /// Attempts after which a cell stops whatever its interval.
    pub max_runs: usize,
    /// Seconds of runs after which a cell stops (once it has `min_runs`).
    pub max_cell_s: f64,
}

/// Runs a cell gets before the time cap may stop it, however low `--min-runs` is: a slow,
/// noisy cell still gets enough runs for a verdict (4 against 4 reaches Mann-Whitney's
/// p < 0.05; Welch's test needs fewer only when the noise is small).
pub const TIME_CAP_RUNS: usize = 5;

/// Failed attempts after which a cell gives up.
pub const MAX_FAILURES: usize = 3;

/// One cell's progress.
#[derive(Clone, Debug)]
pub struct CellRun {
    /// Index of its workload.
    pub workload: usize,
    /// Its environment.
    pub env: Env,
    /// Attempts so far (the run index of the next one).
    pub attempts: usize,
    /// Failed attempts.
    pub failures: usize,
    /// Seconds its runs took.
    pub spent_s: f64,
    /// Why it stopped, once it has.
    pub stopped: Option<&'static str>,
}

impl CellRun {
    /// A cell with no run yet.
    pub fn new(workload: usize, env: Env) -> Self {
        Self {
            workload,
            env,
            attempts: 0,
            failures: 0,
            spent_s: 0.0,
            stopped: None,
        }
    }
}

impl Plan {
    /// Why `cell` (with its successful `values`) stops now, or None when it needs another run.
    /// `rng` draws the bootstrap resamples.
    pub fn stop_reason(&self, cell: &CellRun, values: &[f64], rng: &mut Rng) -> Option<&'static str> {
        if let Some(n) = self.fixed {
            return (cell.attempts >= n).then_some("fixed-runs");
        }
        if cell.failures >= MAX_FAILURES {
            return Some("failures");
        }
        if values.len() >= self.min_runs {
            let median = stats::median(values)?;
            let narrow =
                stats::interval(values, rng).is_some_and(|ci| stats::relative_half_width(median, ci) <= self.ci_target);
            if narrow {
                return Some("ci-target");
            }
            if cell.spent_s >= self.max_cell_s && values.len() >= TIME_CAP_RUNS {
                return Some("time-cap");
            }
        }
        (cell.attempts >= self.max_runs).then_some("max-runs")
    }

    /// The unfinished cells of `cells` in this round's order.
    pub fn round_order(cells: &[CellRun], rng: &mut Rng) -> Vec<usize> {
        let mut todo: Vec<usize> = (0..cells.len()).filter(|&i| cells[i].stopped.is_none()).collect();
        rng.shuffle(&mut todo);
        todo
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            fixed: None,
            ci_target: 0.03,
            min_runs: 5,
            max_runs: 12,
            max_cell_s: 30.0,
        }
    }

    fn cell(attempts: usize, spent_s: f64) -> CellRun {
        CellRun {
            attempts,
            spent_s,
            ..CellRun::new(0, Env::Host)
        }
    }

    #[test]
    fn cells_stop_on_a_narrow_interval_or_a_cap() {
        let p = plan();
        let rng = &mut Rng::new(1);
        let tight = [1.0, 1.001, 0.999, 1.002, 1.0];
        assert_eq!(p.stop_reason(&cell(4, 1.0), &tight[..4], rng), None, "below min runs");
        assert_eq!(p.stop_reason(&cell(5, 1.0), &tight, rng), Some("ci-target"));
        let noisy = [1.0, 1.3, 0.8, 1.2, 0.9];
        assert_eq!(p.stop_reason(&cell(5, 1.0), &noisy, rng), None);
        assert_eq!(p.stop_reason(&cell(5, 31.0), &noisy, rng), Some("time-cap"));
        assert_eq!(p.stop_reason(&cell(12, 1.0), &noisy, rng), Some("max-runs"));
        let failing = CellRun {
            failures: MAX_FAILURES,
            ..cell(3, 1.0)
        };
        assert_eq!(p.stop_reason(&failing, &[], rng), Some("failures"));
        let fixed = Plan { fixed: Some(3), ..p };
        assert_eq!(
            fixed.stop_reason(&cell(2, 1.0), &tight, rng),
            None,
            "fixed: no adaptation"
        );
        assert_eq!(fixed.stop_reason(&cell(3, 1.0), &noisy, rng), Some("fixed-runs"));
    }

    #[test]
    fn two_runs_suffice_only_when_they_agree_closely() {
        let p = Plan { min_runs: 2, ..plan() };
        let rng = &mut Rng::new(1);
        // t(1) = 12.7: two runs 0.2% apart give +-1.3%, inside +-3%.
        assert_eq!(p.stop_reason(&cell(2, 1.0), &[1.0, 1.002], rng), Some("ci-target"));
        // 1% apart gives +-6.4%: another run.
        assert_eq!(p.stop_reason(&cell(2, 1.0), &[1.0, 1.01], rng), None);
        // Three runs 1% apart: t(2) = 4.3, +-2.9%.
        assert_eq!(
            p.stop_reason(&cell(3, 1.0), &[1.0, 1.01, 1.005], rng),
            Some("ci-target")
        );
        // The time cap waits for TIME_CAP_RUNS runs even with --min-runs 2.
        let noisy = [1.0, 1.3, 0.8, 1.2, 0.9];
        assert_eq!(p.stop_reason(&cell(2, 99.0), &noisy[..2], rng), None);
        assert_eq!(p.stop_reason(&cell(5, 99.0), &noisy, rng), Some("time-cap"));
    }

    #[test]
    fn rounds_hold_the_unfinished_cells_in_seeded_order() {
        let mut cells: Vec<CellRun> = (0..6).map(|w| CellRun::new(w, Env::Kvmkit)).collect();
        cells[2].stopped = Some("ci-target");
        let a = Plan::round_order(&cells, &mut Rng::new(5));
        let b = Plan::round_order(&cells, &mut Rng::new(5));
        assert_eq!(a, b);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [0, 1, 3, 4, 5]);
    }
}
