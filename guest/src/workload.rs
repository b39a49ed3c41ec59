//! Running one CPU's share of the workload and reporting it.

use core::hint::black_box;

use kvmkit_guest_abi::{Report, ReportKind, NULL_MMIO_ADDR, NULL_PORT};
use kvmkit_workloads::{count_primes, memtest};

use crate::arch::{mmio_write32, outl, rdtsc};
use crate::config::Workload;
use crate::smp::{self, Plan};
use crate::tsc::ticks_to_ns;
use crate::{devwork, exit, report};

/// Runs CPU `cpu`'s share of `plan`, prints and reports the result.
/// Returns the exit status it asks for ([`exit::OK`] when it passed).
pub fn run(cpu: u32, plan: &Plan) -> u32 {
    if let Some(status) = crate::suite::run(cpu, plan) {
        return status;
    }
    if plan.workload.uses_devices() {
        // Devices are driven by the BSP alone.
        return if cpu == 0 { devwork::run(plan) } else { exit::OK };
    }
    let khz = plan.tsc_khz;
    let mut r = Report::new(ReportKind::Result, cpu);
    r.set_name(plan.workload.name());
    r.arg = plan.workload.arg();
    let mut ok = true;
    match plan.workload {
        Workload::Primes(n) => {
            let t0 = rdtsc();
            let count = count_primes(black_box(n));
            r.ticks = rdtsc() - t0;
            r.ns = ticks_to_ns(r.ticks, khz);
            r.value = count;
            println!(
                "primes: N={n} count={count} time_ns={} ticks={} cpu={cpu}",
                r.ns, r.ticks
            );
        }
        Workload::Memtest(mib) => {
            let share = (plan.mem_len / u64::from(plan.cpus)) & !0xfff;
            let base = plan.mem_base + u64::from(cpu) * share;
            // SAFETY: [mem_base, mem_base + mem_len) is free RAM above the image
            // (checked against the memory map by the BSP) that nothing else
            // uses, and each CPU gets its own disjoint, page-aligned share.
            let buf = unsafe { core::slice::from_raw_parts_mut(base as *mut u64, (share / 8) as usize) };
            let t0 = rdtsc();
            let result = memtest(buf, 0x5eed_0000 + u64::from(cpu));
            r.ticks = rdtsc() - t0;
            r.ns = ticks_to_ns(r.ticks, khz);
            r.value = result.errors;
            ok = result.errors == 0;
            println!(
                "memtest: MiB={mib} cpu={cpu} base={base:#x} bytes={share} tests={} errors={} time_ns={} ticks={}",
                result.tests_run, result.errors, r.ns, r.ticks
            );
        }
        Workload::Exits(n) | Workload::MmioExits(n) => {
            let mmio = matches!(plan.workload, Workload::MmioExits(_));
            let t0 = rdtsc();
            for i in 0..n {
                if mmio {
                    mmio_write32(NULL_MMIO_ADDR, i as u32);
                } else {
                    outl(NULL_PORT, i as u32);
                }
            }
            r.ticks = rdtsc() - t0;
            r.ns = ticks_to_ns(r.ticks, khz);
            let per_exit = r.ns.checked_div(n).unwrap_or(0);
            r.value = per_exit;
            println!(
                "{}: N={n} ns_per_exit={per_exit} ticks_per_exit={} total_ns={} cpu={cpu}",
                plan.workload.name(),
                r.ticks.checked_div(n).unwrap_or(0),
                r.ns
            );
        }
        Workload::Ticks(ms) => {
            // The BSP alone prints; the other CPUs are done at once.
            if cpu == 0 {
                crate::ticks::run(ms, khz)
            }
            return exit::OK;
        }
        Workload::Idle => return exit::OK,
        Workload::Fault => {
            // SAFETY: ud2 only raises #UD, which boot.S's IDT turns into an
            // Exception report and exit status 0x86; no memory is involved.
            unsafe { core::arch::asm!("ud2", options(nomem, nostack)) };
        }
        Workload::Panic => panic!("panic workload on cpu {cpu}"),
        Workload::BlkPattern
        | Workload::BlkSeq(_)
        | Workload::Rng(_)
        | Workload::Raytrace(_)
        | Workload::Md5(_)
        | Workload::Des(_)
        | Workload::Blowfish(_)
        | Workload::Compress(_)
        | Workload::SmallIo(_)
        | Workload::NetEcho(_)
        | Workload::NetTx(..)
        | Workload::NetRx(_)
        | Workload::VsockEcho(..)
        | Workload::VsockTx(..)
        | Workload::VsockRx(..) => unreachable!("handled above"),
    }
    report::send(&r);
    if ok {
        exit::OK
    } else {
        exit::WORKLOAD_FAILED
    }
}

/// CPL3 entry of an application processor: its share of the workload, once
/// the BSP says go.
pub fn ap_main(cpu: u32) -> ! {
    let plan = smp::plan();
    if cpu < plan.cpus {
        smp::online(cpu);
        smp::wait_go();
        smp::ap_done(run(cpu, &plan) == exit::OK);
    }
    // CPL3 cannot hlt; spin until the BSP ends the VM.
    loop {
        core::hint::spin_loop();
    }
}
