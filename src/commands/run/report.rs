//! What `kvmkit run` prints and writes once the VM has ended.

use std::collections::BTreeMap;

use kvmkit_bench::record::{BootTimes, ExitRecord, ReportRecord, RunRecord};
use kvmkit_guest_abi::ReportKind;
use kvmkit_vmm::RunOutcome;

use crate::cli::RunArgs;

pub fn report(args: &RunArgs, outcome: &RunOutcome) {
    for r in &outcome.reports {
        match ReportKind::from_raw(r.kind) {
            Some(ReportKind::Exception) => crate::logging::errln!(
                "kvmkit: guest exception {} on vCPU {} at RIP {:#x} (error code {:#x})",
                r.arg,
                r.cpu,
                r.value,
                r.ticks
            ),
            Some(ReportKind::Panic) => {
                crate::logging::errln!(
                    "kvmkit: guest panicked on vCPU {}: {}",
                    r.cpu,
                    r.name_str().unwrap_or("<not UTF-8>")
                )
            }
            _ => {}
        }
    }
    if outcome.reports_dropped > 0 {
        crate::logging::errln!(
            "kvmkit: the guest sent {} reports past the first {}; they were counted, not kept",
            outcome.reports_dropped,
            outcome.reports.len()
        );
    }
    if args.boot_time {
        let us = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        crate::logging::errln!(
            "boot-time: start -> guest entry {} us, -> guest ready {} us, -> first output {} us, -> VM end {} us",
            us(outcome.entry_us),
            us(outcome.ready_us),
            us(outcome.first_output_us),
            us(outcome.end_us)
        );
    }
    if outcome.reason.is_failure() {
        crate::logging::errln!("kvmkit: {}", outcome.reason);
    }
}

/// The record of a run, for `--results` (the bench reads it back as the same type).
pub fn summary(outcome: &RunOutcome) -> RunRecord {
    let reports = outcome
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
            ReportRecord {
                kind: kind.to_owned(),
                cpu: r.cpu,
                name: r.name_str().unwrap_or("").to_owned(),
                arg: r.arg,
                value: r.value,
                ticks: r.ticks,
                ns: r.ns,
            }
        })
        .collect();
    RunRecord {
        exit: ExitRecord {
            reason: outcome.reason.to_string(),
            code: outcome.reason.exit_code(),
            cause: outcome.reason.cause().to_owned(),
        },
        boot_time_us: BootTimes {
            guest_entry: outcome.entry_us,
            guest_ready: outcome.ready_us,
            first_output: outcome.first_output_us,
            vm_end: outcome.end_us,
        },
        reports,
        reports_dropped: outcome.reports_dropped,
        log_lines_suppressed: crate::logging::suppressed_lines(),
        unclaimed_pio: outcome.unclaimed_pio.top.clone(),
        unclaimed_pio_total: outcome.unclaimed_pio.total,
        unclaimed_pio_more: outcome.unclaimed_pio.more,
        unclaimed_mmio: outcome.unclaimed_mmio.top.clone(),
        unclaimed_mmio_total: outcome.unclaimed_mmio.total,
        unclaimed_mmio_more: outcome.unclaimed_mmio.more,
        devices: outcome.device_counters.iter().fold(
            BTreeMap::new(),
            |mut m: BTreeMap<String, BTreeMap<String, u64>>, (id, name, v)| {
                m.entry(id.clone()).or_default().insert((*name).to_owned(), *v);
                m
            },
        ),
        exits: outcome.exits.iter().map(|&(k, v)| (k.to_owned(), v)).collect(),
    }
}
