//! The paper's tables (plus the exit table) and the unit of a row's figure.

use clap::ValueEnum;
use serde::Serialize;

/// The paper's tables (plus the exit-latency table kvmkit adds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    /// Table 1: prime search.
    Cpu,
    /// Table 2: memtester.
    Memory,
    /// Table 3: dd read/write.
    Disk,
    /// Table 4: benchmark suite.
    Suite,
    /// VM exit round trips (PIO, MMIO).
    Exits,
}

impl Table {
    /// Every table, in report order.
    pub const ALL: [Table; 5] = [Table::Cpu, Table::Memory, Table::Disk, Table::Suite, Table::Exits];

    /// Title as in the report.
    pub fn title(self) -> &'static str {
        match self {
            Self::Cpu => "Table 1, CPU: prime search by trial division (seconds; lower is better)",
            Self::Memory => "Table 2, memory: memtester-style pattern tests (seconds; lower is better)",
            Self::Disk => "Table 3, disk: sequential write with flush, cold read (seconds; lower is better)",
            Self::Suite => "Table 4, benchmark suite",
            Self::Exits => "VM exit round trip (ns per exit; lower is better)",
        }
    }

    /// Header of the first column.
    pub fn row_header(self) -> &'static str {
        match self {
            Self::Cpu => "N",
            Self::Memory => "size",
            Self::Disk => "test",
            Self::Suite => "test",
            Self::Exits => "exit",
        }
    }
}

/// Unit of a workload's figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Unit {
    /// Seconds of workload time (guest TSC / host monotonic clock), lower is better.
    #[serde(rename = "s")]
    Seconds,
    /// Nanoseconds per VM exit round trip, lower is better.
    #[serde(rename = "ns/exit")]
    NsPerExit,
}

impl Unit {
    /// A figure in this unit with about four significant digits.
    pub fn format(self, v: f64) -> String {
        match self {
            Self::NsPerExit => format!("{v:.0}"),
            Self::Seconds if v >= 100.0 => format!("{v:.1}"),
            Self::Seconds if v >= 1.0 => format!("{v:.3}"),
            Self::Seconds if v >= 0.01 => format!("{v:.4}"),
            Self::Seconds => format!("{v:.6}"),
        }
    }
}
