//! The paper's reference figures: per row (host, KVM), and the rows kvmkit does not measure.

use serde::Serialize;

use crate::kind::Kind;
use crate::table::Table;

/// The paper's Table 1 figures (host, KVM) per N.
pub(crate) fn paper_primes(n: u64) -> Option<(f64, f64)> {
    match n {
        100_000 => Some((1.051, 1.123)),
        1_000_000 => Some((5.755, 6.132)),
        10_000_000 => Some((30.326, 40.217)),
        _ => None,
    }
}

/// The paper's Table 2 figures (host, KVM) per size (MB, taken as MiB).
pub(crate) fn paper_memtest(mib: u64) -> Option<(f64, f64)> {
    match mib {
        10 => Some((3.147, 3.661)),
        100 => Some((44.916, 47.448)),
        1000 => Some((447.286, 503.279)),
        _ => None,
    }
}

/// The paper's Table 3 figures (host, KVM) in seconds, per size (MB, taken as MiB).
pub(crate) fn paper_disk(kind: Kind, mib: u64) -> Option<(f64, f64)> {
    match (kind, mib) {
        (Kind::BlkRead, 1) => Some((0.004, 0.006)),
        (Kind::BlkRead, 10) => Some((0.011, 0.013)),
        (Kind::BlkRead, 100) => Some((0.055, 0.062)),
        (Kind::BlkWrite, 1) => Some((0.003, 0.011)),
        (Kind::BlkWrite, 10) => Some((0.027, 0.035)),
        (Kind::BlkWrite, 100) => Some((0.857, 1.176)),
        _ => None,
    }
}

/// A row the paper has that kvmkit does not measure yet.
#[derive(Clone, Debug, Serialize)]
pub struct Pending {
    /// Table.
    pub table: Table,
    /// Row label.
    pub test: &'static str,
    /// Unit of the paper's figures.
    pub unit: &'static str,
    /// The paper's host figure.
    pub paper_host: f64,
    /// The paper's KVM figure.
    pub paper_kvm: f64,
    /// The paper's Xen figure (Table 4 only).
    pub paper_xen: Option<f64>,
}

/// Why the pending rows of the default guest are not measured.
pub const PENDING_REASON: &str = "real programs with no counterpart in the no_std workload suite: \
                                  `kvmkit bench --guest linux` runs POV-Ray and `openssl speed`";

/// Why the pending rows of `--guest linux` are not measured.
pub const LINUX_PENDING_REASON: &str = "measured by the default `--guest kvmkit` (C-Ray-like ray tracer, \
                                        RustCrypto MD5/DES/Blowfish); the paper's John the Ripper and C-Ray \
                                        are not in the rootfs";

/// Rows of Table 4 (with the paper's figures) that this guest kind does not measure.
pub fn not_measured(tables: &[Table], linux: bool) -> Vec<Pending> {
    let default: &[(&str, &str, f64, f64, f64)] = &[
        ("POV-Ray (single-threaded render)", "s", 900.0, 905.0, 1328.0),
        ("OpenSSL", "score", 67.75, 67.15, 46.73),
    ];
    let linux_rows: &[(&str, &str, f64, f64, f64)] = &[
        ("C-Ray (multi-threaded ray tracer)", "s", 73.25, 80.52, 107.65),
        ("Blowfish", "score", 714.0, 710.0, 492.0),
        ("DES", "score", 3_475_000.0, 3_383_000.0, 2_397_333.0),
        ("MD5", "score", 11124.0, 11063.0, 7628.0),
    ];
    let suite = if linux { linux_rows } else { default };
    let mut out = Vec::new();
    if tables.contains(&Table::Suite) {
        out.extend(suite.iter().map(|&(test, unit, h, k, x)| Pending {
            table: Table::Suite,
            test,
            unit,
            paper_host: h,
            paper_kvm: k,
            paper_xen: Some(x),
        }));
    }
    out
}
