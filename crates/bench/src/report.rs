//! The terminal tables and `report.md`.

use std::fmt::Write as _;

use crate::environment::Env;
use crate::floor;
use crate::results::{BenchResults, Cell, Floor, WorkloadResult};
use crate::stats;
use crate::table::{Table, Unit};

/// What a cell and a ratio of the report mean.
const CELLS: &str = "Cells are the median of the runs with its 95% interval (a bootstrap of the median from 6 \
     runs; below 6, Student's t on the logs of the runs, which assumes log-normal noise), the number of runs \
     (and why they stopped: `ci-target`, `max-runs`, `time-cap`, `fixed-runs`) and the runs' extremes; ratios \
     are guest median / host median (> 1: the guest is slower), with as many digits as their 95% interval \
     supports. Each guest row gets a verdict: \"slower/faster than host (significant)\" when a two-sided test \
     of its runs against the host's (Mann-Whitney U from 6 runs a side, Welch's t on the logs below) gives \
     p < 0.05 and the ratio's interval leaves out 1.0, else \"no difference detectable\" (too few runs, or \
     too much noise, to tell).";

/// Label of the paper's columns.
pub const PAPER: &str = "paper (KVM on 2017 hardware)";

fn median(cell: &Cell, unit: Unit) -> String {
    match (&cell.stats, &cell.skipped) {
        (Some(s), _) => unit.format(s.median),
        (None, Some(_)) => "-".into(),
        (None, None) if !cell.failures.is_empty() => "failed".into(),
        (None, None) => "-".into(),
    }
}

/// `+-1.2%` of a cell's interval, or `n=1` where it has none.
fn interval(cell: &Cell) -> String {
    match &cell.stats {
        Some(s) => match s.ci95_rel {
            Some(r) => format!("±{} n={}", percent(r), s.runs),
            None => format!("n={}", s.runs),
        },
        None => String::new(),
    }
}

/// A relative width in percent with two significant digits at most (`1.2%`, `12%`).
fn percent(r: f64) -> String {
    let p = r * 100.0;
    if p >= 9.95 {
        format!("{p:.0}%")
    } else if p >= 0.995 {
        format!("{p:.1}%")
    } else {
        format!("{p:.2}%")
    }
}

/// The terminal's cell: median, +-interval and runs.
fn median_interval(cell: &Cell, unit: Unit) -> String {
    match &cell.stats {
        Some(_) => format!("{} {}", median(cell, unit), interval(cell)),
        None => median(cell, unit),
    }
}

/// The report's cell: median [95% interval] (runs, why they stopped; min–max).
fn median_ci_runs(cell: &Cell, unit: Unit, target: f64) -> String {
    match &cell.stats {
        Some(s) => {
            let flag = if s.ci95_rel.is_some_and(|r| r > target) {
                " ⚠"
            } else {
                ""
            };
            let ci = s.ci95.map_or_else(String::new, |[lo, hi]| {
                format!(" [{}–{}]", unit.format(lo), unit.format(hi))
            });
            format!(
                "{}{ci} (n={}{}; min–max {}–{}){flag}",
                unit.format(s.median),
                s.runs,
                cell.stopped.as_deref().map_or_else(String::new, |w| format!(", {w}")),
                unit.format(s.min),
                unit.format(s.max)
            )
        }
        None => median(cell, unit),
    }
}
/// `env`'s ratio to the host with the digits its interval supports.
fn ratio(w: &WorkloadResult, env: Env) -> String {
    match &w.cell(env).verdict {
        Some(v) if v.against == "host" => v.ratio_text(),
        _ => w
            .ratios
            .get(env.name())
            .map_or_else(|| "-".into(), |r| stats::format_ratio(*r, None)),
    }
}

/// A p-value in three decimals, or `p<0.001`.
fn p_text(p: f64) -> String {
    if p < 0.001 {
        "p<0.001".into()
    } else {
        format!("p={p:.3}")
    }
}

/// The verdicts of a row's guest cells, in words, with the ratio's interval and p.
fn verdicts(w: &WorkloadResult) -> Vec<String> {
    [Env::Kvmkit, Env::Qemu]
        .into_iter()
        .filter_map(|e| {
            let v = w.cell(e).verdict.as_ref()?;
            let ci = v.ratio_ci95.map_or_else(
                || "no interval: a single run".to_owned(),
                |[lo, hi]| format!("95% interval {lo:.2}–{hi:.2}"),
            );
            let text = match (v.significant, v.busy_host) {
                (true, false) => v.text.clone(),
                (true, true) => format!(
                    "{}, but most of these runs started on a busy machine: the load may have made the difference",
                    v.text
                ),
                (false, _) => format!("{} vs {}: {}", e.name(), v.against, v.text),
            };
            Some(format!(
                "{text} ({}/{} {}, {ci}, n={}/{}, {} {})",
                e.name(),
                v.against,
                v.ratio_text(),
                w.cell(e).stats.map_or(0, |s| s.runs),
                w.cell(if v.against == "host" { Env::Host } else { Env::Qemu })
                    .stats
                    .map_or(0, |s| s.runs),
                if v.test == "welch-log" {
                    "Welch t on logs"
                } else {
                    "Mann-Whitney"
                },
                p_text(v.p_value)
            ))
        })
        .collect()
}

/// How many runs the cells got, in words.
fn repetition(results: &BenchResults) -> String {
    let r = &results.repetition;
    match r.fixed_runs {
        Some(n) => format!("median of {n} run(s) per cell (--runs)"),
        None => {
            let runs: Vec<usize> = results
                .workloads
                .values()
                .flat_map(|w| Env::ALL.map(|e| w.cell(e).stats.map(|s| s.runs)))
                .flatten()
                .collect();
            let lo = runs.iter().min().copied().unwrap_or(0);
            let hi = runs.iter().max().copied().unwrap_or(0);
            format!(
                "median ± its 95% interval; each cell ran until that was within ±{}% ({lo} to {hi} runs per \
                 cell here, at most {})",
                r.ci_target * 100.0,
                r.max_runs
            )
        }
    }
}

/// Lays out rows as a fixed-width text table (first column left-aligned).
fn text_table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            let pad = width[c] - cell.chars().count();
            if c == 0 {
                line += cell;
                line += &" ".repeat(pad);
            } else {
                line += "  ";
                line += &" ".repeat(pad);
                line += cell;
            }
        }
        out += line.trim_end();
        out.push('\n');
    }
    out
}

fn rows_of(results: &BenchResults, table: Table) -> Vec<&WorkloadResult> {
    results
        .order
        .iter()
        .filter_map(|id| results.workloads.get(id))
        .filter(|w| w.table == table)
        .collect()
}

fn envs_run(results: &BenchResults) -> Vec<Env> {
    Env::ALL
        .into_iter()
        .filter(|e| results.environments.get(e.name()).is_some_and(|i| i.available))
        .collect()
}

/// The tables for the terminal (medians and ratios).
pub fn terminal(results: &BenchResults) -> String {
    let envs = envs_run(results);
    let guests: Vec<Env> = envs.iter().copied().filter(|e| e.is_guest()).collect();
    let mut out = String::new();
    for table in Table::ALL {
        let rows = rows_of(results, table);
        let pending: Vec<_> = results.not_measured.iter().filter(|p| p.table == table).collect();
        if rows.is_empty() && pending.is_empty() {
            continue;
        }
        if rows.is_empty() {
            let _ = writeln!(out, "\n{} — not measured yet", table.title());
            let mut t = vec![vec![
                table.row_header().to_owned(),
                "kvmkit bench".into(),
                "paper host".into(),
                "paper KVM".into(),
            ]];
            for p in pending {
                t.push(vec![
                    p.test.into(),
                    "not measured yet".into(),
                    p.paper_host.to_string(),
                    p.paper_kvm.to_string(),
                ]);
            }
            out += &text_table(&t);
            continue;
        }
        let _ = writeln!(out, "\n{} — {}", table.title(), repetition(results));
        let mut header = vec![table.row_header().to_owned()];
        header.extend(envs.iter().map(|e| e.name().to_owned()));
        let floors = table == Table::Exits && rows.iter().any(|w| w.floor.is_some());
        if table == Table::Exits {
            if guests.len() == 2 {
                header.push("kvmkit/qemu".into());
            }
            if floors {
                header.extend(["KVM floor".to_owned(), "kvmkit/floor".to_owned()]);
            }
        } else {
            header.extend(guests.iter().map(|g| format!("{}/host", g.name())));
            header.push("paper KVM/host".into());
        }
        let mut t = vec![header];
        for w in rows {
            let mut row = vec![w.label.clone()];
            row.extend(envs.iter().map(|&e| median_interval(w.cell(e), w.unit)));
            if table == Table::Exits {
                if guests.len() == 2 {
                    row.push(w.kvmkit.verdict.as_ref().map_or_else(|| "-".into(), |v| v.ratio_text()));
                }
                if floors {
                    row.push(
                        w.floor
                            .as_ref()
                            .map_or_else(|| "-".into(), |f| median_interval(&floor_cell(f), w.unit)),
                    );
                    row.push(floor_ratio(w.floor.as_ref()));
                }
            } else {
                row.extend(guests.iter().map(|&g| ratio(w, g)));
                row.push(
                    w.paper
                        .as_ref()
                        .and_then(|p| p.get("kvm_over_host"))
                        .map_or_else(|| "-".into(), |r| format!("{r:.2}x")),
                );
            }
            t.push(row);
        }
        out += &text_table(&t);
        for w in rows_of(results, table) {
            for v in verdicts(w) {
                let _ = writeln!(out, "  {}: {v}", w.label);
            }
        }
        for line in io_cost_lines(results, table) {
            let _ = writeln!(out, "  {line}");
        }
        for line in floor_lines(results, table) {
            let _ = writeln!(out, "  {line}");
        }
        if table == Table::Exits && envs.contains(&Env::Host) {
            out += "(host: no VM exit on the bare host; the guest figures stand alone)\n";
        }
        if let Some(note) = table_note(table, results.linux.is_some()) {
            out += note;
            out.push('\n');
        }
        for p in pending {
            let _ = writeln!(
                out,
                "not measured: {} (paper host {} / KVM {} {}): {}",
                p.test, p.paper_host, p.paper_kvm, p.unit, results.not_measured_reason
            );
        }
    }
    out
}

/// A floor as a cell, for the table's cell formats.
fn floor_cell(f: &Floor) -> Cell {
    Cell {
        stats: f.stats,
        failures: f.failures.clone(),
        skipped: f.skipped.clone(),
        ..Cell::default()
    }
}

/// kvmkit's median over the floor's, `1.01x`, or `-`.
fn floor_ratio(f: Option<&Floor>) -> String {
    f.and_then(|f| f.kvmkit_ratio)
        .map_or_else(|| "-".into(), |r| format!("{r:.2}x"))
}

/// Nanoseconds as microseconds with 3 significant digits (`31.2 µs`, `1.23 µs`).
fn micros(ns: f64) -> String {
    let us = ns / 1e3;
    if us >= 100.0 {
        format!("{us:.0} µs")
    } else if us >= 10.0 {
        format!("{us:.1} µs")
    } else {
        format!("{us:.2} µs")
    }
}

/// Per exit row of `table`: its raw KVM floor with its interval and kvmkit's ratio to it,
/// or why it was not measured.
fn floor_lines(results: &BenchResults, table: Table) -> Vec<String> {
    if table != Table::Exits {
        return Vec::new();
    }
    rows_of(results, table)
        .into_iter()
        .filter_map(|w| {
            let f = w.floor.as_ref()?;
            let kind = w.label.split(' ').next().unwrap_or(&w.label);
            let text = match (&f.stats, &f.skipped) {
                (Some(s), _) => format!(
                    "{}{} (n={}, {} exits each){}",
                    micros(s.median),
                    s.ci95.map_or_else(String::new, |[lo, hi]| format!(
                        " [95% interval {}–{}]",
                        micros(lo),
                        micros(hi)
                    )),
                    s.runs,
                    f.exits,
                    f.kvmkit_ratio
                        .map_or_else(String::new, |r| format!("; kvmkit {r:.2}x the floor")),
                ),
                (None, Some(why)) => why.clone(),
                (None, None) => format!(
                    "not measured: {}",
                    f.failures.first().map_or("no run succeeded", String::as_str)
                ),
            };
            Some(format!("{}: {kind} {text}", floor::WHAT))
        })
        .collect()
}

/// Per row of `table` whose kvmkit runs used a disk: what a block request cost in
/// notifications (medians over the runs), then one line on what a kick costs on this host.
fn io_cost_lines(results: &BenchResults, table: Table) -> Vec<String> {
    let med = |v: Vec<f64>| stats::median(&v).unwrap_or(0.0);
    let mut lines: Vec<String> = rows_of(results, table)
        .into_iter()
        .filter_map(|w| {
            let io: Vec<_> = w.kvmkit.samples.iter().filter_map(|s| s.io).collect();
            if io.is_empty() {
                return None;
            }
            let polled = med(io.iter().map(|c| c.polled_per_request).collect());
            Some(format!(
                "{}: kvmkit {:.2} kicks and {:.2} interrupts per block request{} (medians of {} runs, {} requests \
                 in the median run)",
                w.label,
                med(io.iter().map(|c| c.kicks_per_request).collect()),
                med(io.iter().map(|c| c.interrupts_per_request).collect()),
                if polled > 0.0 {
                    format!(", {polled:.2} found by polling")
                } else {
                    String::new()
                },
                io.len(),
                med(io.iter().map(|c| c.requests as f64).collect()) as u64
            ))
        })
        .collect();
    if lines.is_empty() {
        return lines;
    }
    let mmio = rows_of(results, Table::Exits)
        .into_iter()
        .find(|w| w.label.starts_with("MMIO"))
        .and_then(|w| w.kvmkit.stats.map(|s| s.median));
    lines.push(match mmio {
        Some(ns) => format!(
            "a kick is the guest's write to the queue's notify register, which KVM turns into an eventfd \
             signal: a VM exit to the host kernel, not to kvmkit, so it costs less than this run's MMIO exit \
             to kvmkit ({:.1} us, the exit table), and an interrupt costs the guest an entry and an EOI",
            ns / 1000.0
        ),
        None => "a kick is the guest's write to the queue's notify register, which KVM turns into an eventfd \
                 signal: a VM exit to the host kernel, not to kvmkit (the exit table, not run here, gives the \
                 cost of an MMIO exit to kvmkit); an interrupt costs the guest an entry and an EOI"
            .to_owned(),
    });
    lines
}

/// What a table's rows mean, where the figures need it (`linux`: `--guest linux`).
fn table_note(table: Table, linux: bool) -> Option<&'static str> {
    if linux {
        return match table {
            Table::Disk => Some(
                "(one bench.py run gives both rows: `dd if=/dev/zero bs=1M conv=fdatasync` onto a fresh ext4 \
                 file system, then a page-cache drop and `dd iflag=direct` back. Host: a directory of the \
                 output directory's file system; guests: a fresh ext4 image on a second virtio-blk disk \
                 with cache=none (O_DIRECT) in kvmkit and QEMU, so every column's read is cold.)",
            ),
            Table::Suite => Some(
                "(seconds, lower is better. openssl speed and 7z b measure for a fixed time and report a \
                 rate; their rows are the time that rate needs for a fixed amount of work, so the ratio is \
                 host rate / guest rate, like the paper's score ratios.)",
            ),
            _ => None,
        };
    }
    match table {
        Table::Disk => Some(
            "(one blk-seq run gives both rows: sequential 128 KiB writes then FLUSH, then reads; fresh sparse \
             raw image per run. Host: the same writes + fdatasync on a file of the output directory, then a \
             cold O_DIRECT read after posix_fadvise(DONTNEED). Guests: the image is cache=none (O_DIRECT) in \
             kvmkit and in QEMU, so the guests' reads are cold too and their writes reach the host disk \
             before they complete.)",
        ),
        Table::Suite => Some(
            "(seconds for the given size, lower is better, every CPU runs the whole size except the ray \
             tracer, whose rows are split. The paper's Blowfish/DES/MD5/7-Zip/PostMark figures are scores; \
             their KVM/host column is host score / KVM score, a time ratio like ours.)",
        ),
        _ => None,
    }
}

fn md_row(cells: &[String]) -> String {
    format!("| {} |\n", cells.join(" | "))
}

/// `report.md`.
pub fn markdown(results: &BenchResults, charts: &[String]) -> String {
    let m = &results.machine;
    let envs = envs_run(results);
    let guests: Vec<Env> = envs.iter().copied().filter(|e| e.is_guest()).collect();
    let mut out = String::new();
    let _ = writeln!(out, "# kvmkit bench report\n");
    let _ = writeln!(
        out,
        "Profile `{}`, {} (cells interleaved in a random order, seed {}, each round), {} vCPU(s) / host \
         thread(s), guest RAM {} MiB (raised for memory workloads), whole bench {:.0} s.\n",
        results.profile.name(),
        repetition(results),
        results.repetition.seed,
        results.cpus,
        results.memory_mib,
        results.wall_s
    );
    if let Some(linux) = &results.linux {
        let _ = writeln!(
            out,
            "Guest `linux`: the paper's own programs, run by kvmkit's harness (`/kvmkit/bench.py`) from one \
             Debian rootfs: on the host in a chroot of it, in the guests from its ext4 image as a read-only \
             virtio-blk disk, booting {} with kvmkit's busybox initramfs. {CELLS} The paper's columns are \
             {PAPER} on unknown 2017 hardware, so compare its ratios, not its absolute times.\n",
            linux.kernel
        );
    } else {
        let _ = writeln!(
            out,
            "Every environment runs the same workload code (the `kvmkit-workloads` crate): in this process on \
             the host, in kvmkit's test guest under kvmkit, and in the same guest ELF under QEMU (microvm, KVM). \
             {CELLS} The paper's columns are {PAPER}: a Python prime script and memtester on unknown 2017 \
             hardware, so compare its ratios, not its absolute times.\n"
        );
    }
    let _ = writeln!(out, "## Machine\n");
    let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "unknown".into());
    let _ = writeln!(out, "- host kernel: {} ({})", m.kernel, m.kernel_version);
    let _ = writeln!(out, "- KVM vendor module: {}", opt(&m.kvm_module));
    let _ = writeln!(
        out,
        "- CPU: {} ({} logical CPUs), RAM {} MiB",
        m.cpu_model, m.cpus_online, m.memory_mib
    );
    let _ = writeln!(
        out,
        "- load average at start: {:.2} {:.2} {:.2} ({:.2} per CPU)",
        m.load_average[0], m.load_average[1], m.load_average[2], m.load_per_cpu
    );
    let _ = writeln!(
        out,
        "- kvmkit {} (git {}), {} build",
        m.kvmkit_version,
        opt(&m.kvmkit_git_revision),
        if m.kvmkit_optimized {
            "optimized"
        } else {
            "UNOPTIMIZED debug"
        }
    );
    let _ = writeln!(
        out,
        "- QEMU: {}",
        m.qemu_version.clone().unwrap_or_else(|| "not available".into())
    );
    if let Some(linux) = &results.linux {
        let versions: Vec<String> = kvmkit_images::ROOTFS_PACKAGES
            .iter()
            .filter_map(|p| linux.rootfs_packages.iter().find(|(n, _)| n == p))
            .map(|(n, v)| format!("{n} {v}"))
            .collect();
        let _ = writeln!(
            out,
            "- guest kernel: {} (cached Debian kernel {}); rootfs: {} packages ({})",
            linux.kernel,
            linux.cached_kernel_release,
            linux.rootfs_packages.len(),
            versions.join(", ")
        );
    }
    for (name, info) in &results.environments {
        if let Some(r) = &info.reason {
            let _ = writeln!(out, "- environment {name} not run: {r}");
        } else if !info.memory_pages.is_empty() {
            let _ = writeln!(out, "- memory pages, {name}: {}", info.memory_pages);
        }
    }
    let _ = writeln!(
        out,
        "- kvmkit's disks: poll={} ({}; `kvmkit bench --disk-poll`); QEMU's: notifications",
        results.kvmkit_disk_poll,
        if results.kvmkit_disk_poll == "off" {
            "a notification per request once the device worker sleeps"
        } else {
            "the device worker polls for the next request before it sleeps"
        }
    );
    let _ = writeln!(out, "- CPU affinity: {}", results.affinity.note);
    let waited: f64 = results.rounds.iter().map(|r| r.waited_s).sum();
    let busy: Vec<String> = results
        .rounds
        .iter()
        .map(|r| {
            r.busy_at_start
                .map_or_else(|| "?".into(), |b| format!("{:.0}%", b * 100.0))
        })
        .collect();
    let _ = writeln!(
        out,
        "- {} round(s); CPUs busy when each started: {} (waited {:.1} s in all for a quieter machine, up to \
         the bound per round; per round in results.json `rounds`)",
        results.rounds.len(),
        busy.join(" "),
        waited
    );
    let row_warnings: Vec<String> = results
        .order
        .iter()
        .filter_map(|id| results.workloads.get(id).map(|w| (id, w)))
        .flat_map(|(id, w)| w.warnings.iter().map(move |x| format!("{id}: {x}")))
        .collect();
    if !results.warnings.is_empty() || !row_warnings.is_empty() {
        let _ = writeln!(out, "\n## Warnings\n");
        for w in results.warnings.iter().chain(&row_warnings) {
            let _ = writeln!(out, "- ⚠ {w}");
        }
    }
    let sizes = if results.linux.is_some() {
        "\n## Sizes\n\nquick: python3 primes 1e5, memtester 4M, dd 1M, POV-Ray 160x120, openssl speed 1 s, \
         7z b 1 pass, PostMark 500 transactions; default: primes 1e5/1e6, memtester 10M/100M, dd 1M/10M, \
         POV-Ray 320x240, openssl 2 s, 7z b 1 pass, PostMark 2000; paper: primes 1e5/1e6/1e7, memtester \
         10M/100M/1000M, dd 1M/10M/100M, POV-Ray 640x480, openssl 5 s, 7z b 3 passes, PostMark 20000."
    } else {
        "\n## Sizes\n\nquick: primes 1e5, memtest 4 MiB, 10000 exits; default: primes 1e5/1e6, memtest \
         10/100 MiB, 20000 exits; paper: primes 1e5/1e6/1e7, memtest 10/100/1000 MiB, 100000 exits. The \
         memtester-style passes are slow here (~0.75 s per 16 MiB), so the quick and default profiles keep \
         memory sizes small enough for quick <= 3 min and default <= 15 min with --runs 3; the paper's \
         1000 MB row is in --profile paper only. Disk (blk-seq): quick 1 MiB, default 1/10 MiB, paper \
         1/10/100 MiB. Suite (ray tracer width, MD5, DES, Blowfish, LZ4 MiB, small-I/O operations): quick \
         320, 16, 2, 8, 16, 256; default 640, 64, 8, 32, 64, 1024; paper 1600, 256, 32, 128, 256, 8192."
    };
    let _ = writeln!(out, "{sizes}");
    for table in Table::ALL {
        let rows = rows_of(results, table);
        let pending: Vec<_> = results.not_measured.iter().filter(|p| p.table == table).collect();
        if rows.is_empty() && pending.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n## {}\n", table.title());
        if rows.is_empty() {
            let _ = writeln!(out, "{}.\n", results.not_measured_reason);
            let xen = table == Table::Suite;
            let mut h = vec![
                table.row_header().to_owned(),
                "kvmkit bench".into(),
                format!("{PAPER}: host"),
                "KVM".into(),
            ];
            if xen {
                h.push("Xen".into());
            }
            out += &md_row(&h);
            out += &md_row(&vec!["---".to_owned(); h.len()]);
            for p in pending {
                let mut r = vec![
                    format!("{} ({})", p.test, p.unit),
                    "not measured yet".into(),
                    p.paper_host.to_string(),
                    p.paper_kvm.to_string(),
                ];
                if let Some(x) = p.paper_xen {
                    r.push(x.to_string());
                }
                out += &md_row(&r);
            }
            continue;
        }
        let mut h = vec![table.row_header().to_owned()];
        h.extend(envs.iter().map(|e| e.name().to_owned()));
        let floors = table == Table::Exits && rows.iter().any(|w| w.floor.is_some());
        if table == Table::Exits {
            if envs.contains(&Env::Host) {
                h.retain(|c| c != "host");
            }
            if floors {
                h.extend(["raw KVM floor".to_owned(), "kvmkit/floor".to_owned()]);
            }
        } else {
            h.extend(guests.iter().map(|g| format!("{}/host", g.name())));
            h.extend([format!("{PAPER}: host"), "KVM".into(), "KVM/host".into()]);
        }
        out += &md_row(&h);
        out += &md_row(&vec!["---".to_owned(); h.len()]);
        for w in rows {
            let mut r = vec![w.label.clone()];
            for &e in &envs {
                if table == Table::Exits && e == Env::Host {
                    continue;
                }
                r.push(median_ci_runs(w.cell(e), w.unit, results.repetition.ci_target));
            }
            if floors {
                r.push(w.floor.as_ref().map_or_else(
                    || "-".into(),
                    |f| median_ci_runs(&floor_cell(f), w.unit, results.repetition.ci_target),
                ));
                r.push(floor_ratio(w.floor.as_ref()));
            }
            if table != Table::Exits {
                r.extend(guests.iter().map(|&g| ratio(w, g)));
                let p = |k: &str| w.paper.as_ref().and_then(|p| p.get(k).copied());
                r.push(p("host").map_or_else(|| "-".into(), |v| v.to_string()));
                r.push(p("kvm").map_or_else(|| "-".into(), |v| v.to_string()));
                r.push(p("kvm_over_host").map_or_else(|| "-".into(), |v| format!("{v:.2}")));
            }
            out += &md_row(&r);
        }
        let lines: Vec<String> = rows_of(results, table)
            .into_iter()
            .flat_map(|w| verdicts(w).into_iter().map(move |v| format!("- {}: {v}", w.label)))
            .collect();
        if !lines.is_empty() {
            let _ = writeln!(out, "\nVerdicts:\n\n{}", lines.join("\n"));
        }
        let io = io_cost_lines(results, table);
        if !io.is_empty() {
            let _ = writeln!(out, "\nWhat a block request costs in notifications:\n");
            for line in io {
                let _ = writeln!(out, "- {line}");
            }
        }
        if let Some(note) = table_note(table, results.linux.is_some()) {
            let _ = writeln!(out, "\n{}", note.trim_start_matches('(').trim_end_matches(')'));
        }
        if !pending.is_empty() {
            let _ = writeln!(out, "\nNot measured ({}):\n", results.not_measured_reason);
            for p in &pending {
                let _ = writeln!(
                    out,
                    "- {} ({}): {PAPER} host {}, KVM {}{}",
                    p.test,
                    p.unit,
                    p.paper_host,
                    p.paper_kvm,
                    p.paper_xen.map_or_else(String::new, |x| format!(", Xen {x}"))
                );
            }
        }
        if table == Table::Exits {
            let _ = writeln!(
                out,
                "\nThe bare host has no VM exit, so this table has no host column and no ratio to it. The raw KVM \
                 floor is the same exit from a minimal VMM (`kvmkit_vmm::exit_floor`: a one-vCPU VM built with \
                 kvm-ioctls, one 1 MiB memory slot, no irqchip and no device model, looping on the exit at CPL3), \
                 timed on the host at the end of each round that runs a kvmkit exit cell (at least {} runs of the \
                 row's exit count, each a fresh VM after a warm-up), pinned like the kvmkit cells (results.json \
                 `workloads.<id>.floor`); kvmkit/floor is kvmkit's median over the floor's. kvmkit's own figure is \
                 timed by its guest and includes its vCPU loop, the bus and the device.",
                floor::MIN_RUNS
            );
            let lines = floor_lines(results, table);
            if lines.is_empty() {
                let _ = writeln!(
                    out,
                    "\nThe floor is measured only when the kvmkit environment runs (not in this run)."
                );
            } else {
                let _ = writeln!(out);
                for line in lines {
                    let _ = writeln!(out, "- {line}");
                }
            }
        }
    }
    if !charts.is_empty() {
        let _ = writeln!(out, "\n## Charts\n");
        for c in charts {
            let _ = writeln!(out, "![{c}]({c})\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_from_busy_rounds_say_so() {
        let mut r = crate::results::fixtures::synthetic_results(6);
        let row = r.workloads.values_mut().next().expect("row");
        row.finish("primes", 1, 0.03, &[true; 6]);
        let text = terminal(&r);
        assert!(text.contains("most of these runs started on a busy machine"), "{text}");
        let row = r.workloads.values_mut().next().expect("row");
        row.finish("primes", 1, 0.03, &[false; 6]);
        assert!(!terminal(&r).contains("busy machine"));
    }

    #[test]
    fn tables_give_intervals_runs_verdicts_and_supported_digits() {
        let results = crate::results::fixtures::synthetic_results(6);
        let text = terminal(&results);
        assert!(
            text.contains("each cell ran until that was within ±3% (6 to 6 runs"),
            "{text}"
        );
        assert!(text.contains("±0.") && text.contains("n=6"), "{text}");
        assert!(
            text.contains("kvmkit slower than host (significant) (kvmkit/host 1.20x"),
            "{text}"
        );
        assert!(text.contains("qemu vs host: no difference detectable"), "{text}");
        assert!(
            !text.contains("1.200"),
            "more digits than the interval supports: {text}"
        );
        let md = markdown(&results, &[]);
        assert!(md.contains("Verdicts:") && md.contains("Mann-Whitney"), "{md}");
    }

    #[test]
    fn io_rows_say_what_a_request_cost_in_kicks_and_interrupts() {
        let mut results = crate::results::fixtures::synthetic_results(3);
        assert!(!terminal(&results).contains("kicks"), "no disk, no kick line");
        let cost = |k: f64| crate::record::IoCost {
            requests: 130,
            kicks_per_request: k,
            interrupts_per_request: 0.5,
            polled_per_request: 0.0,
        };
        for w in results.workloads.values_mut() {
            for (s, k) in w.kvmkit.samples.iter_mut().zip([1.0, 0.25, 0.5]) {
                s.io = Some(cost(k));
            }
        }
        let text = terminal(&results);
        assert!(
            text.contains("kvmkit 0.50 kicks and 0.50 interrupts per block request (medians of 3 runs, 130 requests"),
            "{text}"
        );
        assert!(text.contains("the exit table, not run here"), "{text}");
        assert!(markdown(&results, &[]).contains("What a block request costs in notifications"));
    }

    #[test]
    fn exit_rows_give_the_raw_kvm_floor_and_kvmkit_over_it() {
        let results = crate::results::fixtures::with_exit_floor();
        let text = terminal(&results);
        assert!(text.contains("KVM floor") && text.contains("kvmkit/floor"), "{text}");
        assert!(
            text.contains("raw KVM floor (kvm-ioctls, no device model): PIO 30.1 µs [95% interval"),
            "{text}"
        );
        assert!(text.contains("; kvmkit 1.10x the floor"), "{text}");
        assert!(
            text.contains("MMIO 32.1 µs") && text.contains("kvmkit 1.25x the floor"),
            "{text}"
        );
        let md = markdown(&results, &[]);
        assert!(!md.contains("not measured yet"), "{md}");
        assert!(md.contains("| raw KVM floor | kvmkit/floor |"), "{md}");
        assert!(
            md.contains("- raw KVM floor (kvm-ioctls, no device model): MMIO 32.1 µs"),
            "{md}"
        );
        // A host without KVM: the reason instead of a figure, never a failure.
        let mut results = results;
        for w in results.workloads.values_mut() {
            if let Some(f) = w.floor.as_mut() {
                f.samples_ns.clear();
                f.stats = None;
                f.kvmkit_ratio = None;
                f.skipped = Some("not measured: no usable KVM here (open /dev/kvm: ...)".into());
            }
        }
        let text = terminal(&results);
        assert!(
            text.contains("raw KVM floor (kvm-ioctls, no device model): PIO not measured: no usable KVM"),
            "{text}"
        );
    }

    #[test]
    fn machine_lists_each_environments_memory_pages() {
        let mut results = crate::results::fixtures::synthetic_results(3);
        for (name, info) in results.environments.iter_mut() {
            info.memory_pages = format!("pages of {name}");
        }
        let md = markdown(&results, &[]);
        for name in ["host", "kvmkit", "qemu"] {
            assert!(md.contains(&format!("- memory pages, {name}: pages of {name}")), "{md}");
        }
    }
}
