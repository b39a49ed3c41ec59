//! The raw KVM floor of the exit table: the same exit from a minimal VMM
//! (`kvmkit_vmm::exit_floor`: kvm-ioctls directly, no device model), timed in this process
//! on the host, pinned like the kvmkit cells. What kvmkit's exit figure has above it is
//! kvmkit's own cost (its vCPU loop, the bus, the device) plus its guest's measuring.

use kvmkit_vmm::exit_floor::{self, FloorKind};

use crate::kind::Kind;
use crate::results::Floor;
use crate::rows::Workload;

/// Runs of the floor per exit row at least (each a fresh VM, a warm-up and the row's exit
/// count): one per round of the bench, and more after the rounds where they were fewer.
pub const MIN_RUNS: usize = 5;
/// Failed runs of one row after which its floor stops.
const MAX_FAILURES: usize = 3;

/// What the floor is, in the report's words.
pub const WHAT: &str = "raw KVM floor (kvm-ioctls, no device model)";

/// The minimal VM's loop for an exit row's kind (None: not an exit row).
pub fn floor_kind(kind: Kind) -> Option<FloorKind> {
    match kind {
        Kind::Exits => Some(FloorKind::Pio),
        Kind::MmioExits => Some(FloorKind::Mmio),
        _ => None,
    }
}

/// The floors of a bench's exit rows while they are being measured: one run per row per
/// round of the bench (so the host's drift lands on the floor as on the kvmkit cells), and
/// at least [`MIN_RUNS`] in all.
pub struct Floors {
    /// (workload index, loop, floor) per exit row.
    rows: Vec<(usize, FloorKind, Floor)>,
    /// Exits timed per run, per row (the row's count, at most `u32::MAX`).
    exits: Vec<u32>,
    cores: Option<Vec<usize>>,
    /// Set once KVM proved unusable: no more runs.
    stopped: bool,
}

impl Floors {
    /// The floors of the exit rows of `workloads`, pinned to `cores`; None where there is
    /// no exit row.
    pub fn new(workloads: &[Workload], cores: Option<&[usize]>) -> Option<Self> {
        let rows: Vec<(usize, FloorKind, Floor)> = workloads
            .iter()
            .enumerate()
            .filter_map(|(i, w)| {
                let kind = floor_kind(w.kind)?;
                Some((i, kind, Floor::new(w.arg, cores.map(<[usize]>::to_vec))))
            })
            .collect();
        let exits = rows
            .iter()
            .map(|(i, _, _)| u32::try_from(workloads[*i].arg).unwrap_or(u32::MAX))
            .collect();
        (!rows.is_empty()).then(|| Self {
            rows,
            exits,
            cores: cores.map(<[usize]>::to_vec),
            stopped: false,
        })
    }

    /// Successful runs of the row with the fewest.
    pub fn runs(&self) -> usize {
        self.rows.iter().map(|(_, _, f)| f.samples_ns.len()).min().unwrap_or(0)
    }

    /// Whether another round could add a run (KVM usable, some row below its failure cap).
    pub fn can_run(&self) -> bool {
        !self.stopped && self.rows.iter().any(|(_, _, f)| f.failures.len() < MAX_FAILURES)
    }

    /// One run of every row, in turn. A host without a usable KVM gives every row a
    /// `skipped` reason and stops the floors; a failed run is recorded and the rest go on.
    pub fn run_round(&mut self) {
        if self.stopped {
            return;
        }
        let cores = self.cores.as_deref();
        let mut no_kvm = None;
        for ((_, kind, floor), &exits) in self.rows.iter_mut().zip(&self.exits) {
            if floor.failures.len() >= MAX_FAILURES {
                continue;
            }
            match crate::load::pinned(cores, || exit_floor::measure_ns(*kind, exits)) {
                Ok(ns) => floor.samples_ns.push(ns),
                Err(e) if e.no_kvm() => {
                    no_kvm = Some(format!("not measured: no usable KVM here ({e})"));
                    break;
                }
                Err(e) => {
                    eprintln!("kvmkit bench: raw KVM floor ({}) run failed: {e}", kind.name());
                    floor.failures.push(e.to_string());
                }
            }
        }
        if let Some(why) = no_kvm {
            eprintln!("kvmkit bench: raw KVM floor {why}");
            self.stopped = true;
            for (_, _, f) in self.rows.iter_mut() {
                f.skipped = Some(why.clone());
            }
        }
    }

    /// Runs rounds until every row has [`MIN_RUNS`] runs (or cannot get them), then
    /// returns (workload index, floor) per exit row.
    pub fn finish(mut self) -> Vec<(usize, Floor)> {
        while self.runs() < MIN_RUNS && self.can_run() {
            self.run_round();
        }
        self.rows.into_iter().map(|(i, _, f)| (i, f)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Profile;
    use crate::table::Table;

    #[test]
    fn floors_run_each_exit_row_at_least_min_runs_or_say_why_not() {
        assert!(Floors::new(&crate::rows::workloads(Profile::Quick, &[Table::Cpu]), None).is_none());
        let mut workloads = crate::rows::workloads(Profile::Quick, &[Table::Cpu, Table::Exits]);
        for w in workloads.iter_mut() {
            w.arg = w.arg.min(300);
        }
        let mut floors = Floors::new(&workloads, None).expect("two exit rows");
        assert_eq!(floors.runs(), 0);
        floors.run_round();
        let out = floors.finish();
        let kinds: Vec<Kind> = out.iter().map(|(i, _)| workloads[*i].kind).collect();
        assert_eq!(kinds, [Kind::Exits, Kind::MmioExits]);
        for (_, f) in &out {
            assert_eq!(f.exits, 300);
            match &f.skipped {
                Some(why) => {
                    eprintln!("floor: {why}");
                    assert!(f.samples_ns.is_empty() && why.contains("no usable KVM"), "{f:?}");
                }
                None => {
                    assert!(f.failures.is_empty(), "{f:?}");
                    assert_eq!(f.samples_ns.len(), MIN_RUNS);
                    assert!(f.samples_ns.iter().all(|&ns| ns > 0.0), "{f:?}");
                }
            }
        }
    }
}
