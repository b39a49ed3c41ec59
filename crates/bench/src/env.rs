//! Running one workload once in one environment: the bare host, a kvmkit guest, a QEMU guest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::environment::Env;
use crate::kind::Kind;
use crate::measured::{Measured, PerCpu, NO_DIRECT_IO};
use crate::process::{last_lines, run_with_timeout};
use crate::record::{IoCost, RunRecord};
use crate::rows::Workload;
use crate::table::Unit;

/// One run's measurement.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// Run index (0-based).
    pub run: usize,
    /// The figure, in the workload's unit (seconds, or ns per exit).
    pub value: f64,
    /// Workload nanoseconds per vCPU / thread.
    pub ns_per_cpu: Vec<u64>,
    /// What the workload reported (prime count, memtest errors summed, ns per exit of vCPU 0).
    pub result: u64,
    /// Wall seconds of the whole run, VM start-up and exit included (for the two halves
    /// of `blk-seq`, of the one run that measured both).
    pub wall_s: f64,
    /// How it was measured, where that needs saying (the host's cold read: O_DIRECT or not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// kvmkit with a disk: notifications and interrupts per block request over the whole run
    /// (for `blk-seq`, its write and read halves together).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io: Option<IoCost>,
}

/// Results of a run kept for its sibling rows: (env, run, spec, kind) -> (per CPU, wall s, note,
/// block notification cost).
type Cache = BTreeMap<(Env, usize, String, &'static str), (PerCpu, f64, Option<String>, Option<IoCost>)>;

/// Paths and sizes shared by every run.
pub struct Runner {
    /// This kvmkit executable.
    pub exe: PathBuf,
    /// QEMU, when available.
    pub qemu: Option<PathBuf>,
    /// The test guest ELF written out for QEMU.
    pub guest_elf: PathBuf,
    /// Output directory (scratch files go to `out/tmp`).
    pub out: PathBuf,
    /// vCPUs / host threads.
    pub cpus: usize,
    /// Guest RAM (MiB) before per-workload minimums.
    pub memory_mib: u64,
    /// kvmkit's disk polling mode (`--disk ...,poll=`).
    pub disk_poll: kvmkit_vmm::vmm_config::PollMode,
    /// The other halves of multi-row runs (`blk-seq`'s read after its write row ran).
    pub cache: Mutex<Cache>,
    /// `--guest linux`: the kernel, initramfs and rootfs.
    pub linux: Option<crate::linux::LinuxGuest>,
}

impl Runner {
    /// Runs `w` once in `env`; `timeout` bounds the whole run. A run that also measures
    /// sibling rows (`blk-seq`: write and read) keeps their figures for them.
    pub fn run(&self, env: Env, w: &Workload, run: usize, timeout: Duration) -> anyhow::Result<Sample> {
        let key = |k: Kind| (env, run, w.spec.clone(), k.name());
        let cached = self
            .cache
            .lock()
            .map_err(|_| anyhow::anyhow!("cache poisoned"))?
            .remove(&key(w.kind));
        let (per_cpu, wall_s, note, io) = match cached {
            Some(c) => c,
            None => {
                let t0 = Instant::now();
                let measured = if w.kind.is_linux() {
                    self.linux(env, w, run, timeout)?
                } else {
                    let disk = self.make_disk(env, w, run)?;
                    let warm = env.is_guest() && w.kind.cache_option(disk.as_deref()).is_empty();
                    let measured = match env {
                        Env::Host => self.host(w, disk.as_deref()),
                        Env::Kvmkit => self.kvmkit(w, run, timeout, disk.as_deref()),
                        Env::Qemu => self.qemu(w, timeout, disk.as_deref()),
                    };
                    if let Some(d) = &disk {
                        let _ = std::fs::remove_file(d);
                    }
                    let mut measured = measured?;
                    if warm && w.kind.uncached_disk() {
                        measured.note = Some(NO_DIRECT_IO.to_owned());
                    }
                    measured
                };
                let wall_s = t0.elapsed().as_secs_f64();
                let mut mine = None;
                let mut cache = self.cache.lock().map_err(|_| anyhow::anyhow!("cache poisoned"))?;
                for (k, v) in measured.kinds {
                    if k == w.kind {
                        mine = Some(v);
                    } else {
                        cache.insert(key(k), (v, wall_s, measured.note.clone(), measured.io));
                    }
                }
                let mine = mine.with_context(|| format!("{} was not measured", w.id))?;
                (mine, wall_s, measured.note, measured.io)
            }
        };
        let (ns_per_cpu, result) = combine(w.kind, per_cpu);
        let want = if w.kind.per_cpu() { self.cpus } else { 1 };
        if ns_per_cpu.len() != want {
            bail!(
                "{} CPU(s) reported {}, expected {want}",
                ns_per_cpu.len(),
                w.kind.name()
            );
        }
        if let Some(expected) = w.kind.expected(w.arg) {
            if result != expected {
                bail!("{} reported {result}, expected {expected}", w.id);
            }
        }
        let value = match w.unit {
            // The workload's time is its slowest CPU's.
            Unit::Seconds => ns_per_cpu.iter().copied().max().unwrap_or(0) as f64 / 1e9,
            Unit::NsPerExit => ns_per_cpu.iter().sum::<u64>() as f64 / ns_per_cpu.len() as f64 / w.arg.max(1) as f64,
        };
        if !(value.is_finite() && value > 0.0) {
            bail!("{} measured no time (guest TSC rate unknown?)", w.id);
        }
        Ok(Sample {
            run,
            value,
            ns_per_cpu,
            result,
            wall_s,
            note,
            io,
        })
    }

    /// A fresh, sparse raw image (or host file) of the size `w` needs, in `out/tmp`.
    fn make_disk(&self, env: Env, w: &Workload, run: usize) -> anyhow::Result<Option<PathBuf>> {
        let Some(mib) = w.kind.disk_mib(w.arg) else {
            return Ok(None);
        };
        let path = self
            .out
            .join("tmp")
            .join(format!("{}-{}-{run}.img", env.name(), w.spec.replace(':', "-")));
        let f = std::fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        f.set_len(mib << 20)
            .with_context(|| format!("cannot size {}", path.display()))?;
        Ok(Some(path))
    }

    fn memory_for(&self, w: &Workload) -> u64 {
        self.memory_mib.max(w.min_memory_mib())
    }

    /// One of the paper's programs (`--guest linux`).
    fn linux(&self, env: Env, w: &Workload, run: usize, timeout: Duration) -> anyhow::Result<Measured> {
        let linux = self
            .linux
            .as_ref()
            .context("the Linux guest assets were not prepared")?;
        let vmm = match env {
            Env::Qemu => self.qemu.as_deref().context("QEMU is not available")?,
            _ => self.exe.as_path(),
        };
        let scratch = self.out.join("tmp");
        let on = crate::linux::Machine {
            vmm,
            scratch: &scratch,
            cpus: self.cpus,
            memory_mib: self.memory_for(w),
        };
        linux.run(env, w, run, &on, timeout)
    }

    /// The same workload code on host threads (one per vCPU), in this process; the disk
    /// workloads on one thread, on a file of the output directory.
    fn host(&self, w: &Workload, disk: Option<&Path>) -> anyhow::Result<Measured> {
        if let Some(path) = disk {
            return match w.kind {
                Kind::BlkWrite | Kind::BlkRead => {
                    let t = crate::host::blk_seq_file(path, w.arg)?;
                    let note = if t.direct {
                        "host: write + fdatasync, then posix_fadvise(DONTNEED) and an O_DIRECT (cold) read"
                    } else {
                        "host: write + fdatasync, then posix_fadvise(DONTNEED) and a buffered read \
                         (the file system refused O_DIRECT)"
                    };
                    Ok(Measured {
                        kinds: vec![
                            (Kind::BlkWrite, vec![(t.write_ns, w.arg)]),
                            (Kind::BlkRead, vec![(t.read_ns, w.arg)]),
                        ],
                        note: Some(note.into()),
                        io: None,
                    })
                }
                _ => {
                    let ns = crate::host::smallio_file(path, w.arg)?;
                    Ok(Measured {
                        kinds: vec![(w.kind, vec![(ns, w.arg)])],
                        note: None,
                        io: None,
                    })
                }
            };
        }
        let results: Vec<anyhow::Result<(u64, u64)>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..self.cpus)
                .map(|t| s.spawn(move || host_thread(w.kind, w.arg, t, self.cpus)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| bail!("a host workload thread panicked")))
                .collect()
        });
        let results = results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Measured {
            kinds: vec![(w.kind, results)],
            note: None,
            io: None,
        })
    }

    fn kvmkit(&self, w: &Workload, run: usize, timeout: Duration, disk: Option<&Path>) -> anyhow::Result<Measured> {
        let results = self
            .out
            .join("tmp")
            .join(format!("kvmkit-{}-{run}.json", w.id.replace(':', "-")));
        let mut cmd = Command::new(&self.exe);
        cmd.args(["run", "--guest", "--no-stdin"])
            .args(["--cpus", &self.cpus.to_string()])
            .args(["--memory", &self.memory_for(w).to_string()])
            .args(["--workload", &w.spec])
            .arg("--results")
            .arg(&results)
            .args(["--timeout", &format!("{:.0}", timeout.as_secs_f64())])
            .args(w.kind.kvmkit_args(disk, self.disk_poll));
        let out = run_with_timeout(cmd, timeout + Duration::from_secs(10))?;
        if out.code != Some(0) {
            bail!(
                "kvmkit run exited with {:?}: {}",
                out.code,
                last_lines(&out.stderr, &out.stdout)
            );
        }
        let text =
            std::fs::read_to_string(&results).with_context(|| format!("no results file {}", results.display()))?;
        let _ = std::fs::remove_file(&results);
        let record: RunRecord = serde_json::from_str(&text).context("results JSON")?;
        let mut kinds = Vec::new();
        for k in w.kind.siblings() {
            let per_cpu: BTreeMap<u32, (u64, u64)> = record
                .results(k.name())
                .map(|(cpu, ns, value)| (cpu, (ns, value)))
                .collect();
            kinds.push((k, per_cpu.into_values().collect()));
        }
        Ok(Measured {
            kinds,
            note: None,
            io: record.io_cost(),
        })
    }

    fn qemu(&self, w: &Workload, timeout: Duration, disk: Option<&Path>) -> anyhow::Result<Measured> {
        let Some(qemu) = &self.qemu else {
            bail!("QEMU is not available")
        };
        let mut cmd = Command::new(qemu);
        // With ACPI off, microvm lists its virtio-mmio devices on the kernel command line.
        let machine = if disk.is_some() { "microvm,acpi=off" } else { "microvm" };
        cmd.args([
            "-M",
            machine,
            "-accel",
            "kvm",
            "-cpu",
            "host,-arch-capabilities,+invtsc",
        ])
        .args(["-m", &self.memory_for(w).to_string()])
        .args(["-smp", &self.cpus.to_string()])
        .args(["-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(&self.guest_elf)
        .arg("-append")
        .arg(format!("kvmkit.workload={} kvmkit.cpus={}", w.spec, self.cpus))
        .args(w.kind.qemu_args(disk));
        if disk.is_some() {
            // Without ACPI there is no GED sleep register to power off with: let the guest's
            // write to EXIT_PORT end QEMU (exit code (status << 1) | 1; the serial line says it).
            cmd.args(["-device", "isa-debug-exit,iobase=0x600,iosize=4"]);
        }
        let out = run_with_timeout(cmd, timeout)?;
        let parsed = parse_serial(&out.stdout, w.kind);
        match parsed.status {
            Some(0) => {}
            Some(s) => bail!(
                "guest exited with status {s} under QEMU: {}",
                last_lines(&out.stderr, &out.stdout)
            ),
            None => bail!(
                "QEMU ended ({:?}) without the guest's final line: {}",
                out.code,
                last_lines(&out.stderr, &out.stdout)
            ),
        }
        let mut kinds = vec![(w.kind, parsed.per_cpu.into_values().collect())];
        for k in w.kind.siblings().into_iter().filter(|&k| k != w.kind) {
            kinds.push((k, parse_serial(&out.stdout, k).per_cpu.into_values().collect()));
        }
        Ok(Measured {
            kinds,
            note: None,
            io: None,
        })
    }
}

/// One host thread's share: (ns, value).
fn host_thread(kind: Kind, arg: u64, thread: usize, threads: usize) -> anyhow::Result<(u64, u64)> {
    match kind {
        Kind::Primes => {
            let r = crate::host::run_one("primes", arg, thread)?;
            Ok((r.ns, r.value))
        }
        Kind::Memtest if threads == 1 => {
            let r = crate::host::run_one("memtest", arg, thread)?;
            Ok((r.ns, r.value))
        }
        Kind::Memtest => {
            // As in the guest: the region is split among the CPUs, page-aligned shares.
            let share = ((arg << 20) / threads as u64) & !0xfff;
            let words = usize::try_from(share / 8).context("memtest size too large")?;
            let (errors, ns, _) = crate::host::memtest_words(words, thread)?;
            Ok((ns, errors))
        }
        Kind::Raytrace | Kind::Md5 | Kind::Des | Kind::Blowfish | Kind::Compress => {
            let r = crate::host::run_share(kind.name(), arg, thread, threads)?;
            Ok((r.ns, r.value))
        }
        Kind::Exits | Kind::MmioExits => bail!("{} has no bare-host counterpart", kind.name()),
        Kind::BlkWrite | Kind::BlkRead | Kind::SmallIo => bail!("{} needs a disk file", kind.name()),
        k => bail!("{} runs in the Debian rootfs (--guest linux)", k.name()),
    }
}

/// Per-CPU (ns, value) to (ns per CPU, combined result): memtest errors and the ray
/// tracer's per-CPU checksums add up, the others report the same value on every CPU
/// (taken from CPU 0).
fn combine(kind: Kind, per_cpu: Vec<(u64, u64)>) -> (Vec<u64>, u64) {
    let result = match kind {
        Kind::Memtest => per_cpu.iter().map(|&(_, v)| v).sum(),
        Kind::Raytrace => per_cpu.iter().fold(0u64, |a, &(_, v)| a.wrapping_add(v)),
        _ => per_cpu.first().map_or(0, |&(_, v)| v),
    };
    (per_cpu.into_iter().map(|(ns, _)| ns).collect(), result)
}

/// What the guest printed on its serial console.
#[derive(Debug, Default)]
pub struct Serial {
    /// Per CPU: (workload ns, result value).
    pub per_cpu: BTreeMap<u64, (u64, u64)>,
    /// Status of the final `kvmkit-guest: done ... status=N` line.
    pub status: Option<u64>,
}

/// Parses the test guest's console (guest/src/workload.rs formats).
pub fn parse_serial(text: &str, kind: Kind) -> Serial {
    let mut out = Serial::default();
    let prefix = format!("{}: ", kind.guest_name());
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix("kvmkit-guest: done ") {
            out.status = fields(rest).get("status").and_then(|s| s.parse().ok());
            continue;
        }
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        let f = fields(rest);
        let num = |k: &str| {
            f.get(k).and_then(|v| match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => v.parse::<u64>().ok(),
            })
        };
        // blk-seq's line has no cpu= (the BSP runs it).
        let Some(cpu) = num("cpu").or_else(|| (!kind.per_cpu()).then_some(0)) else {
            continue;
        };
        let entry = match kind {
            Kind::Primes => num("time_ns").zip(num("count")),
            Kind::Memtest => num("time_ns").zip(num("errors")),
            Kind::Exits | Kind::MmioExits => num("total_ns").zip(num("ns_per_exit")),
            Kind::BlkWrite => num("write_ns").zip(num("MiB")),
            Kind::BlkRead => num("read_ns").zip(num("MiB")),
            Kind::Raytrace => num("time_ns").zip(num("checksum")),
            Kind::Md5 | Kind::Des | Kind::Blowfish | Kind::Compress => num("time_ns").zip(num("result")),
            Kind::SmallIo => num("time_ns").zip(num("ops_per_s")),
            _ => None,
        };
        if let Some(e) = entry {
            out.per_cpu.insert(cpu, e);
        }
    }
    out
}

fn fields(text: &str) -> BTreeMap<&str, &str> {
    text.split_ascii_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .collect()
}

/// Finds QEMU; if missing, tries `apt-get install -y qemu-system-x86` once. Err says why not.
pub fn ensure_qemu(warn: &mut dyn FnMut(String)) -> Result<PathBuf, String> {
    if let Some(p) = find_in_path("qemu-system-x86_64") {
        return Ok(p);
    }
    if find_in_path("apt-get").is_none() {
        return Err("qemu-system-x86_64 is not installed and there is no apt-get to install it".into());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("qemu-system-x86_64 is not installed (as root: apt-get install -y qemu-system-x86)".into());
    }
    warn("qemu-system-x86_64 not found: running `apt-get install -y qemu-system-x86` once".into());
    let status = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", "qemu-system-x86"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status();
    match (status, find_in_path("qemu-system-x86_64")) {
        (_, Some(p)) => Ok(p),
        (Ok(s), None) => Err(format!(
            "qemu-system-x86_64 is not installed and `apt-get install -y qemu-system-x86` failed ({s})"
        )),
        (Err(e), None) => Err(format!(
            "qemu-system-x86_64 is not installed and apt-get could not run ({e})"
        )),
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_lines_parse() {
        let text = "kvmkit-guest: cpu 0 online (apic id 0)\r\n\
            primes: N=100000 count=9592 time_ns=5458071 ticks=13347331 cpu=0\r\n\
            primes: N=100000 count=9592 time_ns=5558071 ticks=13347331 cpu=1\r\n\
            kvmkit-guest: done workload=primes:100000 cpus=2 failed=0 status=0\r\n";
        let s = parse_serial(text, Kind::Primes);
        assert_eq!(s.status, Some(0));
        assert_eq!(s.per_cpu.get(&1), Some(&(5558071, 9592)));
        let m = "memtest: MiB=4 cpu=0 base=0x400000 bytes=4194304 tests=11 errors=0 time_ns=176216878 ticks=4\n";
        assert_eq!(parse_serial(m, Kind::Memtest).per_cpu.get(&0), Some(&(176216878, 0)));
        let e = "mmio-exits: N=10000 ns_per_exit=38099 ticks_per_exit=93169 total_ns=380993489 cpu=0\n";
        assert_eq!(
            parse_serial(e, Kind::MmioExits).per_cpu.get(&0),
            Some(&(380993489, 38099))
        );
        assert!(parse_serial(e, Kind::Exits).per_cpu.is_empty());
        let b = "blk-seq: MiB=10 write_MBps=1.000 read_MBps=2.000 write_ns=123 read_ns=456 flush=true\r\n";
        assert_eq!(parse_serial(b, Kind::BlkWrite).per_cpu.get(&0), Some(&(123, 10)));
        assert_eq!(parse_serial(b, Kind::BlkRead).per_cpu.get(&0), Some(&(456, 10)));
        let r = "raytrace: W=320 H=240 checksum=0x00000000000000ff time_ns=99 ticks=1 cpu=1\n";
        assert_eq!(parse_serial(r, Kind::Raytrace).per_cpu.get(&1), Some(&(99, 255)));
        let m = "md5: MiB=16 MBps=1.000 result=0x10 errors=0 time_ns=77 ticks=1 cpu=0\n";
        assert_eq!(parse_serial(m, Kind::Md5).per_cpu.get(&0), Some(&(77, 16)));
        assert!(parse_serial(m, Kind::Des).per_cpu.is_empty());
    }
}
