//! `kvmkit host`: runs the test guest's workloads on the bare host, with the
//! very same code (the `kvmkit-workloads` crate), for guest/host ratios.

use std::hint::black_box;
use std::time::Instant;

use anyhow::{bail, Context};
use kvmkit_workloads::{count_primes, memtest};

use crate::cli::HostArgs;

/// One thread's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HostResult {
    /// Workload name.
    pub name: String,
    /// Its argument.
    pub arg: u64,
    /// Thread index.
    pub thread: usize,
    /// Result value (prime count, memtest errors).
    pub value: u64,
    /// Elapsed nanoseconds.
    pub ns: u64,
}

/// Parses `NAME:ARG` for the workloads the host runner supports.
pub fn parse_workload(spec: &str) -> anyhow::Result<(String, u64)> {
    let (name, arg) = spec.split_once(':').unwrap_or((spec, ""));
    let arg: u64 = match (name, arg) {
        ("primes", "") => 100_000,
        ("memtest", "") => 16,
        (_, a) => a
            .parse()
            .with_context(|| format!("workload '{spec}': '{a}' is not a number"))?,
    };
    if !matches!(name, "primes" | "memtest") {
        bail!("the host runner knows primes:N and memtest:MIB, not '{name}'");
    }
    Ok((name.to_owned(), arg))
}

/// Runs one thread's share of a workload.
pub fn run_one(name: &str, arg: u64, thread: usize) -> anyhow::Result<HostResult> {
    let (value, ns) = match name {
        "primes" => {
            let t0 = Instant::now();
            let count = count_primes(black_box(arg));
            (count, t0.elapsed().as_nanos() as u64)
        }
        "memtest" => {
            let words = usize::try_from(arg << 17).context("memtest size too large")?;
            let mut buf = huge_page_buffer(words);
            let t0 = Instant::now();
            let report = memtest(&mut buf, 0x5eed_0000 + thread as u64);
            (report.errors, t0.elapsed().as_nanos() as u64)
        }
        other => bail!("unknown host workload '{other}'"),
    };
    Ok(HostResult {
        name: name.to_owned(),
        arg,
        thread,
        value,
        ns,
    })
}

/// A zeroed buffer advised to use transparent huge pages, as guest RAM is.
fn huge_page_buffer(words: usize) -> Vec<u64> {
    let mut buf: Vec<u64> = Vec::with_capacity(words);
    // SAFETY: the range is the Vec's own allocation; madvise only changes paging policy.
    unsafe { libc::madvise(buf.as_mut_ptr().cast(), words * 8, libc::MADV_HUGEPAGE) };
    buf.resize(words, 0);
    buf
}

/// Runs the workload on `--threads` threads and prints one line per thread.
pub fn run(args: &HostArgs) -> anyhow::Result<u8> {
    let (name, arg) = parse_workload(&args.workload)?;
    if args.threads == 0 {
        bail!("--threads 0: give at least 1 thread");
    }
    let results: Vec<anyhow::Result<HostResult>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..args.threads)
            .map(|t| {
                s.spawn({
                    let name = name.clone();
                    move || run_one(&name, arg, t)
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
            "primes" => println!(
                "primes: N={} count={} time_ns={} thread={}",
                r.arg, r.value, r.ns, r.thread
            ),
            _ => println!(
                "memtest: MiB={} errors={} time_ns={} thread={}",
                r.arg, r.value, r.ns, r.thread
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
    }

    #[test]
    fn host_runner_counts_primes() {
        let r = run_one("primes", 100_000, 0).expect("run");
        assert_eq!(r.value, 9592);
        assert_eq!(run_one("memtest", 1, 0).expect("run").value, 0);
    }
}
