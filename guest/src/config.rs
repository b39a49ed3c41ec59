//! The guest's configuration, from the `kvmkit.*` command-line keys. Workload specs
//! parse with the shared catalogue (`kvmkit_workloads::Workload`).

use kvmkit_guest_abi::{cmdline_value, CMDLINE_CPUS, CMDLINE_TSC_KHZ, CMDLINE_WORKLOAD, MAX_CPUS};

pub use kvmkit_workloads::Workload;

/// The parsed command line.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// `kvmkit.workload`, default `primes:100000`.
    pub workload: Workload,
    /// `kvmkit.cpus`, default 1, at most [`MAX_CPUS`].
    pub cpus: u32,
    /// `kvmkit.tsc_khz`, when given.
    pub tsc_khz: Option<u64>,
}

impl Config {
    /// Parses the `kvmkit.*` keys of `cmdline`, ignoring everything else.
    pub fn parse(cmdline: &str) -> Result<Self, &'static str> {
        let workload = match cmdline_value(cmdline, CMDLINE_WORKLOAD) {
            Some(w) => Workload::parse(w).map_err(kvmkit_workloads::ParseError::message)?,
            None => Workload::DEFAULT,
        };
        let cpus = match cmdline_value(cmdline, CMDLINE_CPUS) {
            Some(c) => c.parse::<u32>().map_err(|_| "kvmkit.cpus is not a number")?,
            None => 1,
        };
        if cpus == 0 || cpus as usize > MAX_CPUS {
            return Err("kvmkit.cpus out of range");
        }
        let tsc_khz = match cmdline_value(cmdline, CMDLINE_TSC_KHZ) {
            Some(k) => Some(k.parse::<u64>().map_err(|_| "kvmkit.tsc_khz is not a number")?),
            None => None,
        };
        Ok(Self {
            workload,
            cpus,
            tsc_khz: tsc_khz.filter(|&k| k != 0),
        })
    }
}
