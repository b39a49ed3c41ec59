//! The record of one `kvmkit run --results FILE`: `run` writes it, the bench's kvmkit
//! runner reads it back. One serde type on both sides, so a renamed field breaks the
//! build instead of silently reading zeros.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How the VM ended.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// The exit reason in words.
    pub reason: String,
    /// The process exit status it maps to.
    pub code: i32,
    /// What ended the VM, in one word (`guest-exit`, `timeout`, `signal`,
    /// `power-off`, ...): a guest's own status 124 or 143 is told apart from
    /// kvmkit's timeout or a SIGTERM by this, not by `code`.
    #[serde(default)]
    pub cause: String,
}

/// Boot milestones, microseconds since kvmkit started (null when not reached).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootTimes {
    /// The guest's first instruction.
    pub guest_entry: Option<u64>,
    /// The guest said it was ready.
    pub guest_ready: Option<u64>,
    /// The first console byte.
    pub first_output: Option<u64>,
    /// The VM ended.
    pub vm_end: Option<u64>,
}

/// One report the test guest sent (guest-abi `Report`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRecord {
    /// `cpu_online`, `result`, `exception`, `panic` or `unknown`.
    pub kind: String,
    /// The vCPU that sent it.
    pub cpu: u32,
    /// The workload name (a `result`) or the panic message.
    pub name: String,
    /// The workload's argument.
    pub arg: u64,
    /// Its result value (prime count, errors, ns per exit).
    pub value: u64,
    /// TSC ticks of the workload.
    pub ticks: u64,
    /// Nanoseconds of the workload.
    pub ns: u64,
}

/// Everything `kvmkit run --results FILE` writes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunRecord {
    /// How the VM ended.
    pub exit: ExitRecord,
    /// Boot milestones.
    pub boot_time_us: BootTimes,
    /// The guest's reports, in arrival order.
    pub reports: Vec<ReportRecord>,
    /// Reports counted past the kept ones.
    pub reports_dropped: u64,
    /// Log lines held back by the rate limiter.
    pub log_lines_suppressed: u64,
    /// Unclaimed port accesses: (port, count), the most frequent.
    pub unclaimed_pio: Vec<(u64, u64)>,
    /// All unclaimed port accesses.
    pub unclaimed_pio_total: u64,
    /// Unclaimed port accesses not in `unclaimed_pio`.
    pub unclaimed_pio_more: u64,
    /// Unclaimed MMIO accesses: (address, count), the most frequent.
    pub unclaimed_mmio: Vec<(u64, u64)>,
    /// All unclaimed MMIO accesses.
    pub unclaimed_mmio_total: u64,
    /// Unclaimed MMIO accesses not in `unclaimed_mmio`.
    pub unclaimed_mmio_more: u64,
    /// Every device's counters at the end: device id -> counter -> value.
    pub devices: BTreeMap<String, BTreeMap<String, u64>>,
    /// Exits to user space by kind (`exit_io_out`, `exit_mmio_write`, ...), all vCPUs.
    pub exits: BTreeMap<String, u64>,
}

/// What the guest's block requests cost in notifications, over one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IoCost {
    /// Block requests completed.
    pub requests: u64,
    /// Queue notifications (kicks) per request: each is a guest MMIO write that KVM turns
    /// into an eventfd signal, a VM exit to the host kernel but not to kvmkit.
    pub kicks_per_request: f64,
    /// Used-buffer interrupts per request.
    pub interrupts_per_request: f64,
    /// Requests the device found by polling, per request.
    pub polled_per_request: f64,
}

impl RunRecord {
    /// The block devices' notification cost (all devices with a `requests` and a `kicks`
    /// counter together); None without block requests.
    pub fn io_cost(&self) -> Option<IoCost> {
        let (mut requests, mut kicks, mut interrupts, mut polled) = (0u64, 0u64, 0u64, 0u64);
        for c in self.devices.values() {
            let (Some(r), Some(k)) = (c.get("requests"), c.get("kicks")) else {
                continue;
            };
            requests += r;
            kicks += k;
            interrupts += c.get("interrupts").copied().unwrap_or(0);
            polled += c.get("polled").copied().unwrap_or(0);
        }
        let per = |n: u64| n as f64 / requests as f64;
        (requests > 0).then(|| IoCost {
            requests,
            kicks_per_request: per(kicks),
            interrupts_per_request: per(interrupts),
            polled_per_request: per(polled),
        })
    }

    /// The `result` reports of workload `name`: (cpu, ns, value).
    pub fn results<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (u32, u64, u64)> + 'a {
        self.reports
            .iter()
            .filter(move |r| r.kind == "result" && r.name == name)
            .map(|r| (r.cpu, r.ns, r.value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_cost_sums_block_devices_and_ignores_others() {
        let mut rec = RunRecord::default();
        assert_eq!(rec.io_cost(), None);
        let counters = |pairs: &[(&str, u64)]| pairs.iter().map(|&(k, v)| (k.to_owned(), v)).collect();
        rec.devices.insert("rng".into(), counters(&[("bytes", 4096)]));
        rec.devices.insert(
            "disk0".into(),
            counters(&[("requests", 300), ("kicks", 150), ("interrupts", 300)]),
        );
        rec.devices.insert(
            "disk1".into(),
            counters(&[("requests", 100), ("kicks", 50), ("polled", 40)]),
        );
        let cost = rec.io_cost().expect("block requests");
        assert_eq!(cost.requests, 400);
        assert!((cost.kicks_per_request - 0.5).abs() < 1e-12);
        assert!((cost.interrupts_per_request - 0.75).abs() < 1e-12);
        assert!((cost.polled_per_request - 0.1).abs() < 1e-12);
        // Round trip through JSON, as `run --results` and the bench do.
        let back: RunRecord = serde_json::from_str(&serde_json::to_string(&rec).expect("json")).expect("parse");
        assert_eq!(back, rec);
    }

    #[test]
    fn records_round_trip_and_select_results() {
        let mut rec = RunRecord::default();
        rec.reports.push(ReportRecord {
            kind: "result".into(),
            cpu: 1,
            name: "primes".into(),
            arg: 1000,
            value: 168,
            ticks: 5,
            ns: 99,
        });
        rec.reports.push(ReportRecord {
            kind: "cpu_online".into(),
            name: "primes".into(),
            ..Default::default()
        });
        let text = serde_json::to_string(&rec).expect("serialize");
        let back: RunRecord = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, rec);
        assert_eq!(back.results("primes").collect::<Vec<_>>(), vec![(1, 99, 168)]);
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert!(v["boot_time_us"]["guest_entry"].is_null());
        assert_eq!(v["reports"][0]["name"], "primes");
    }
}
