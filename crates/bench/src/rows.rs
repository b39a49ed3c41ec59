//! The measured rows: one [`Workload`] per table row, for a profile and the chosen tables.

use crate::environment::Env;
use crate::kind::Kind;
use crate::paper::{paper_disk, paper_memtest, paper_primes};
use crate::profile::{linux_sizes, sizes, LinuxSizes, Profile, Sizes};
use crate::table::{Table, Unit};

/// One measured row of a table.
#[derive(Clone, Debug)]
pub struct Workload {
    /// The results.json key: `primes:100000`, `blk-read:10`.
    pub id: String,
    /// Guest workload spec (`kvmkit.workload=`): `primes:100000`, `blk-seq:10`.
    pub spec: String,
    /// Which table it belongs to.
    pub table: Table,
    /// What runs.
    pub kind: Kind,
    /// Its argument.
    pub arg: u64,
    /// Row label in the tables ("1e5", "10 MiB", "PIO").
    pub label: String,
    /// Unit of its figure.
    pub unit: Unit,
    /// The paper's (host, KVM guest) figures for this row, if it has one.
    pub paper: Option<(f64, f64)>,
    /// The paper's figures are scores (higher is better), not seconds.
    pub paper_is_score: bool,
}

impl Workload {
    fn new(table: Table, kind: Kind, arg: u64, label: String, paper: Option<(f64, f64)>) -> Self {
        let unit = if matches!(kind, Kind::Exits | Kind::MmioExits) {
            Unit::NsPerExit
        } else {
            Unit::Seconds
        };
        Self {
            id: format!("{}:{arg}", kind.name()),
            spec: format!("{}:{arg}", kind.guest_name()),
            table,
            kind,
            arg,
            label,
            unit,
            paper,
            paper_is_score: false,
        }
    }

    fn score(mut self) -> Self {
        self.paper_is_score = true;
        self
    }

    /// Whether `env` runs this workload.
    pub fn runs_on(&self, env: Env) -> bool {
        env.is_guest() || self.kind.on_host()
    }

    /// Guest RAM (MiB) this workload needs at least.
    pub fn min_memory_mib(&self) -> u64 {
        match self.kind {
            Kind::Memtest => self.arg + 64,
            // Debian's kernel and the initramfs, then memtester's region.
            Kind::Memtester => self.arg + 256,
            k if k.is_linux() => 256,
            Kind::Md5 | Kind::Des | Kind::Blowfish | Kind::Compress => 64 + 2 * 64,
            _ => 64,
        }
    }
}

fn exp_label(n: u64) -> String {
    let digits = n.to_string();
    match digits.strip_prefix('1') {
        Some(zeros) if !zeros.is_empty() && zeros.bytes().all(|b| b == b'0') => format!("1e{}", zeros.len()),
        _ => digits,
    }
}

/// The measured workloads of `profile` for `tables`, in table order.
pub fn workloads(profile: Profile, tables: &[Table]) -> Vec<Workload> {
    let Sizes {
        primes,
        mems,
        disks,
        exits,
        suite,
    } = sizes(profile);
    let mut out = Vec::new();
    for &t in tables {
        match t {
            Table::Cpu => out.extend(
                primes
                    .iter()
                    .map(|&n| Workload::new(t, Kind::Primes, n, exp_label(n), paper_primes(n))),
            ),
            Table::Memory => out.extend(
                mems.iter()
                    .map(|&m| Workload::new(t, Kind::Memtest, m, format!("{m} MiB"), paper_memtest(m))),
            ),
            Table::Exits => {
                out.push(Workload::new(
                    t,
                    Kind::Exits,
                    exits,
                    "PIO (out to a null port)".into(),
                    None,
                ));
                out.push(Workload::new(
                    t,
                    Kind::MmioExits,
                    exits,
                    "MMIO (write to a null page)".into(),
                    None,
                ));
            }
            Table::Disk => {
                for kind in [Kind::BlkRead, Kind::BlkWrite] {
                    let verb = if kind == Kind::BlkRead { "read" } else { "write" };
                    out.extend(
                        disks
                            .iter()
                            .map(|&m| Workload::new(t, kind, m, format!("{verb} {m}M"), paper_disk(kind, m))),
                    );
                }
            }
            Table::Suite => {
                let [w, md5, des, bf, lz, io] = suite;
                out.push(Workload::new(
                    t,
                    Kind::Raytrace,
                    w,
                    format!("ray tracer (C-Ray-like), {w}x{}", kvmkit_workloads::raytrace_height(w)),
                    Some((73.25, 80.52)),
                ));
                out.push(
                    Workload::new(
                        t,
                        Kind::Blowfish,
                        bf,
                        format!("Blowfish (ECB), {bf} MiB"),
                        Some((714.0, 710.0)),
                    )
                    .score(),
                );
                out.push(
                    Workload::new(
                        t,
                        Kind::Des,
                        des,
                        format!("DES (ECB), {des} MiB"),
                        Some((3_475_000.0, 3_383_000.0)),
                    )
                    .score(),
                );
                out.push(Workload::new(t, Kind::Md5, md5, format!("MD5, {md5} MiB"), Some((11124.0, 11063.0))).score());
                out.push(
                    Workload::new(
                        t,
                        Kind::Compress,
                        lz,
                        format!("compression (LZ4, in place of 7-Zip), {lz} MiB"),
                        Some((13331.0, 11757.0)),
                    )
                    .score(),
                );
                out.push(
                    Workload::new(
                        t,
                        Kind::SmallIo,
                        io,
                        format!("small-block random I/O (in place of PostMark), {io} x 4 KiB write+read"),
                        Some((4166.0, 3393.0)),
                    )
                    .score(),
                );
            }
        }
    }
    out
}

/// The measured workloads of `--guest linux` (the paper's own programs) for `profile` and
/// `tables`, in table order. The exit table has no Linux counterpart.
pub fn linux_workloads(profile: Profile, tables: &[Table]) -> Vec<Workload> {
    let LinuxSizes {
        primes,
        mems,
        disks,
        suite,
    } = linux_sizes(profile);
    let mut out = Vec::new();
    for &t in tables {
        match t {
            Table::Cpu => out.extend(primes.iter().map(|&n| {
                Workload::new(
                    t,
                    Kind::PyPrimes,
                    n,
                    format!("{} (python3)", exp_label(n)),
                    paper_primes(n),
                )
            })),
            Table::Memory => out.extend(
                mems.iter()
                    .map(|&m| Workload::new(t, Kind::Memtester, m, format!("memtester {m}M"), paper_memtest(m))),
            ),
            Table::Disk => {
                for (kind, paper_kind, verb) in [
                    (Kind::DdRead, Kind::BlkRead, "read"),
                    (Kind::DdWrite, Kind::BlkWrite, "write"),
                ] {
                    out.extend(
                        disks
                            .iter()
                            .map(|&m| Workload::new(t, kind, m, format!("dd {verb} {m}M"), paper_disk(paper_kind, m))),
                    );
                }
            }
            Table::Suite => {
                let [w, secs, passes, tx] = suite;
                out.push(Workload::new(
                    t,
                    Kind::PovRay,
                    w,
                    format!("POV-Ray 3.7, 1 thread, {w}x{}", w * 3 / 4),
                    Some((900.0, 905.0)),
                ));
                out.push(
                    Workload::new(
                        t,
                        Kind::OpenSsl,
                        secs,
                        "OpenSSL speed rsa4096 (s per 100 signatures)".into(),
                        Some((67.75, 67.15)),
                    )
                    .score(),
                );
                out.push(
                    Workload::new(
                        t,
                        Kind::SevenZip,
                        passes,
                        "7-Zip `7zz b`, 1 thread (s per 10^10 instr. at its rating)".into(),
                        Some((13331.0, 11757.0)),
                    )
                    .score(),
                );
                out.push(
                    Workload::new(
                        t,
                        Kind::PostMark,
                        tx,
                        format!("PostMark, {tx} transactions"),
                        Some((4166.0, 3393.0)),
                    )
                    .score(),
                );
            }
            Table::Exits => {}
        }
    }
    out
}

/// Estimated seconds of one run of `w` in `env`, including VM start-up.
pub fn estimate_run_s(w: &Workload, env: Env, cpus: usize) -> f64 {
    let work = w.kind.estimate_s(w.arg);
    // memtest and raytrace split their work among CPUs; everything else runs whole on each.
    let work = if matches!(w.kind, Kind::Memtest | Kind::Raytrace) {
        work / cpus.max(1) as f64 * 1.2
    } else {
        work
    };
    let start = match (env, w.kind.is_linux()) {
        (Env::Host, false) => 0.01,
        (Env::Kvmkit, false) => 0.15,
        (Env::Qemu, false) => 0.3,
        // The harness's python3 start-up; Debian's kernel boot with its modules.
        (Env::Host, true) => 0.05,
        (_, true) => 3.0,
    };
    work + start + w.min_memory_mib() as f64 * 0.0005
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paper::not_measured;

    #[test]
    fn profiles_list_the_papers_sizes() {
        let all = workloads(Profile::Paper, &Table::ALL);
        let ids: Vec<_> = all.iter().map(|w| w.id.as_str()).collect();
        assert!(ids.contains(&"primes:10000000"));
        assert!(ids.contains(&"memtest:1000"));
        assert!(all.iter().filter(|w| w.table == Table::Cpu).all(|w| w.paper.is_some()));
        assert_eq!(exp_label(1_000_000), "1e6");
        assert_eq!(exp_label(250), "250");
        assert_eq!(not_measured(&Table::ALL, false).len(), 2);
        assert_eq!(not_measured(&Table::ALL, true).len(), 4);
        assert!(ids.contains(&"blk-read:100") && ids.contains(&"blk-write:100"));
        let r = all.iter().find(|w| w.id == "blk-read:10").expect("blk-read:10");
        assert_eq!(r.spec, "blk-seq:10");
        assert_eq!(r.kind.disk_mib(r.arg), Some(11));
        assert!(all.iter().filter(|w| w.table == Table::Disk).all(|w| w.paper.is_some()));
    }

    #[test]
    fn rows_come_from_the_workload_catalogue() {
        let all = workloads(Profile::Paper, &Table::ALL);
        for w in &all {
            let parsed = kvmkit_workloads::Workload::parse(&w.spec).expect("the catalogue parses every spec");
            assert!(
                parsed.entry().envs.bench,
                "{}: not marked bench in the catalogue",
                w.spec
            );
            assert_eq!(w.kind.on_host(), parsed.entry().envs.host, "{}", w.spec);
        }
        for e in kvmkit_workloads::CATALOGUE.iter().filter(|e| e.envs.bench) {
            assert!(
                all.iter().any(|w| w.kind.guest_name() == e.name),
                "{}: marked bench but no row measures it",
                e.name
            );
        }
    }

    #[test]
    fn quick_profile_fits_its_budget() {
        let total: f64 = workloads(Profile::Quick, &Table::ALL)
            .iter()
            .flat_map(|w| Env::ALL.into_iter().map(move |e| (w, e)))
            .filter(|(w, e)| w.runs_on(*e))
            .map(|(w, e)| 3.0 * estimate_run_s(w, e, 1))
            .sum();
        assert!(total < 90.0, "{total}");
    }
}
