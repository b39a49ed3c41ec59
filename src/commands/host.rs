//! `kvmkit host`: runs the test guest's workloads on the bare host, with the
//! very same code (`kvmkit_bench::host`, over the `kvmkit-workloads` crate), for
//! guest/host ratios. This file parses the spec and prints.

use anyhow::{bail, Context};
use kvmkit_bench::host::{blk_seq_file, run_share, smallio_file, HostResult};

use crate::cli::HostArgs;

/// Parses `NAME[:ARG]` for the workloads the host runner supports (the catalogue's
/// entries with `envs.host`).
pub fn parse_workload(spec: &str) -> anyhow::Result<(String, u64)> {
    let w = crate::commands::workloads::parse_for(spec, "--workload", "on the host", |e| e.envs.host)?;
    Ok((w.name().to_owned(), w.arg()))
}

/// The host's physical memory in MiB.
fn host_ram_mib() -> u64 {
    // SAFETY: sysconf only reads system parameters.
    let (pages, size) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
    (u64::try_from(pages)
        .unwrap_or(0)
        .saturating_mul(u64::try_from(size).unwrap_or(0)))
        >> 20
}

/// Refuses a memtest that could not be allocated (each thread tests `mib`
/// MiB of its own): the allocation would abort the process.
fn check_memtest_size(mib: u64, threads: usize, ram_mib: u64) -> anyhow::Result<()> {
    let total = mib.checked_mul(threads as u64);
    if total.is_none_or(|t| t > ram_mib) {
        bail!("--workload memtest:{mib}: {threads} thread(s) x {mib} MiB is more than the host's {ram_mib} MiB of RAM");
    }
    Ok(())
}

/// Runs the workload on `--threads` threads and prints one line per thread.
pub fn run(args: &HostArgs) -> anyhow::Result<u8> {
    let (name, arg) = parse_workload(&args.workload)?;
    if args.threads == 0 {
        bail!("--threads 0: give at least 1 thread");
    }
    if name == "memtest" {
        check_memtest_size(arg, args.threads, host_ram_mib())?;
    }
    if name == "blk-seq" || name == "smallio" {
        let path = std::env::temp_dir().join(format!("kvmkit-host-{name}-{}.img", std::process::id()));
        let res = if name == "blk-seq" {
            blk_seq_file(&path, arg).map(|t| {
                let rate = |ns: u64| (arg << 20) as f64 / ns.max(1) as f64 * 1e3;
                crate::logging::outln!(
                    "blk-seq: MiB={arg} write_MBps={:.3} read_MBps={:.3} write_ns={} read_ns={} direct={}",
                    rate(t.write_ns),
                    rate(t.read_ns),
                    t.write_ns,
                    t.read_ns,
                    t.direct
                );
            })
        } else {
            smallio_file(&path, arg).map(|ns| {
                crate::logging::outln!(
                    "smallio: N={arg} ops={} ops_per_s={:.0} time_ns={ns}",
                    2 * arg,
                    2.0 * arg as f64 / ns.max(1) as f64 * 1e9
                );
            })
        };
        let _ = std::fs::remove_file(&path);
        res?;
        return Ok(0);
    }
    let results: Vec<anyhow::Result<HostResult>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..args.threads)
            .map(|t| {
                s.spawn({
                    let name = name.clone();
                    let threads = args.threads;
                    move || run_share(&name, arg, t, threads)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail!("a workload thread panicked")))
            .collect()
    });
    let results = results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    for r in &results {
        match r.name.as_str() {
            "primes" => crate::logging::outln!(
                "primes: N={} count={} time_ns={} thread={}",
                r.arg,
                r.value,
                r.ns,
                r.thread
            ),
            "memtest" => crate::logging::outln!(
                "memtest: MiB={} errors={} time_ns={} thread={} pages={}",
                r.arg,
                r.value,
                r.ns,
                r.thread,
                r.pages.as_ref().map_or_else(|| "unknown".to_owned(), |p| p.summary())
            ),
            other => crate::logging::outln!(
                "{other}: arg={} result={:#x} time_ns={} thread={}",
                r.arg,
                r.value,
                r.ns,
                r.thread
            ),
        }
    }
    if let Some(path) = &args.results {
        std::fs::write(path, serde_json::to_string_pretty(&results)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(if results.iter().all(|r| r.name != "memtest" || r.value == 0) {
        0
    } else {
        1
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_parse_with_defaults() {
        assert_eq!(parse_workload("primes:1000").ok(), Some(("primes".into(), 1000)));
        assert_eq!(parse_workload("primes").ok(), Some(("primes".into(), 100_000)));
        assert!(parse_workload("primes:x").is_err());
        assert!(parse_workload("exits:10").is_err());
        assert_eq!(parse_workload("raytrace").ok(), Some(("raytrace".into(), 320)));
        assert!(parse_workload("md5:0").is_err());
    }
}
