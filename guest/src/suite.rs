//! Table 4's benchmark suite in the test guest: `raytrace:W` (C-Ray-like,
//! rows split among the CPUs), `md5:MIB`, `des:MIB`, `blowfish:MIB` and
//! `compress:MIB` (every CPU runs the whole size on its own buffer), and
//! `smallio:N` (the BSP alone, on the first virtio-blk disk: see
//! [`crate::suite_io`]). The code is `kvmkit-workloads`, as on the host.
//!
//! Also the guest's global allocator: lz4_flex allocates an 8 KiB hash table
//! per block, which comes from a per-CPU bump arena in the CPU's share of the
//! suite region, reset whenever everything in it has been freed.

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicU64, Ordering};

use kvmkit_guest_abi::{Report, ReportKind, MAX_CPUS};
use kvmkit_workloads::{
    blowfish_mib, compress_mib, des_mib, md5_mib, raytrace, raytrace_height, COMPRESS_WORKSPACE, SUITE_BUFFER,
};

use crate::arch::rdtsc;
use crate::config::Workload;
use crate::smp::{current_cpu, Plan};
use crate::tsc::ticks_to_ns;
use crate::{exit, report, suite_io};

/// RAM each CPU needs: the data buffer, the compression workspace, the arena.
pub const BYTES_PER_CPU: u64 = 2 << 20;

/// RAM (bytes) each CPU needs for workload `w`: [`BYTES_PER_CPU`] for a suite workload, 0 for others.
pub fn bytes_per_cpu(w: Workload) -> u64 {
    match w {
        Workload::Md5(_) | Workload::Des(_) | Workload::Blowfish(_) | Workload::Compress(_) => BYTES_PER_CPU,
        _ => 0,
    }
}

const WORK_OFFSET: usize = SUITE_BUFFER;
const ARENA_OFFSET: usize = SUITE_BUFFER + (512 << 10);
const ARENA_BYTES: u64 = 256 << 10;
const _: () = assert!(WORK_OFFSET + COMPRESS_WORKSPACE <= ARENA_OFFSET);
const _: () = assert!(ARENA_OFFSET as u64 + ARENA_BYTES <= BYTES_PER_CPU);

/// Runs the suite workload of `plan` on CPU `cpu`; None for other workloads.
pub fn run(cpu: u32, plan: &Plan) -> Option<u32> {
    let w = plan.workload;
    let status = match w {
        Workload::SmallIo(n) => {
            if cpu == 0 {
                suite_io::smallio(plan, n)
            } else {
                exit::OK
            }
        }
        Workload::Raytrace(width) => {
            let t0 = rdtsc();
            let sum = raytrace(width, u64::from(cpu), u64::from(plan.cpus));
            let ticks = rdtsc() - t0;
            let ns = ticks_to_ns(ticks, plan.tsc_khz);
            println!(
                "raytrace: W={width} H={} checksum={sum:#018x} time_ns={ns} ticks={ticks} cpu={cpu}",
                raytrace_height(width)
            );
            send(cpu, w, sum, ticks, ns);
            exit::OK
        }
        Workload::Md5(mib) | Workload::Des(mib) | Workload::Blowfish(mib) | Workload::Compress(mib) => {
            crypto(cpu, plan, mib)
        }
        _ => return None,
    };
    Some(status)
}

fn send(cpu: u32, w: Workload, value: u64, ticks: u64, ns: u64) {
    let mut r = Report::new(ReportKind::Result, cpu);
    r.set_name(w.name());
    r.arg = w.arg();
    r.value = value;
    r.ticks = ticks;
    r.ns = ns;
    report::send(&r);
}

/// MB/s (10^6 bytes) times 1000.
fn milli_mbps(bytes: u64, ns: u64) -> u64 {
    if ns == 0 {
        0
    } else {
        (u128::from(bytes) * 1_000_000 / u128::from(ns)) as u64
    }
}

fn crypto(cpu: u32, plan: &Plan, mib: u64) -> u32 {
    let w = plan.workload;
    let share = plan.mem_len / u64::from(plan.cpus);
    if share < BYTES_PER_CPU {
        println!("{}: no suite region ({} bytes per cpu)", w.name(), share);
        return exit::NO_MEMORY;
    }
    let base = plan.mem_base + u64::from(cpu) * share;
    // SAFETY: [mem_base, mem_base + mem_len) is free RAM the BSP reserved for
    // this workload (checked against the memory map); CPU `cpu` owns its
    // share, and the buffer and workspace below do not overlap its arena.
    let buf = unsafe { core::slice::from_raw_parts_mut(base as *mut u8, SUITE_BUFFER) };
    // SAFETY: as above, the workspace follows the buffer within the share.
    let work = unsafe { core::slice::from_raw_parts_mut((base + WORK_OFFSET as u64) as *mut u8, COMPRESS_WORKSPACE) };
    set_arena(cpu, base + ARENA_OFFSET as u64, ARENA_BYTES);
    let t0 = rdtsc();
    let (value, errors) = match w {
        Workload::Md5(_) => (md5_mib(buf, mib), 0),
        Workload::Des(_) => (des_mib(buf, mib), 0),
        Workload::Blowfish(_) => (blowfish_mib(buf, mib), 0),
        _ => {
            let r = compress_mib(buf, work, mib);
            (r.compressed, r.errors)
        }
    };
    let ticks = rdtsc() - t0;
    set_arena(cpu, 0, 0);
    let ns = ticks_to_ns(ticks, plan.tsc_khz);
    let m = milli_mbps(mib << 20, ns);
    println!(
        "{}: MiB={mib} MBps={}.{:03} result={value:#x} errors={errors} time_ns={ns} ticks={ticks} cpu={cpu}",
        w.name(),
        m / 1000,
        m % 1000
    );
    send(cpu, w, value, ticks, ns);
    if errors == 0 {
        exit::OK
    } else {
        exit::WORKLOAD_FAILED
    }
}

/// One CPU's bump arena: base, length, next free offset, live allocations.
struct Arena {
    base: AtomicU64,
    len: AtomicU64,
    top: AtomicU64,
    live: AtomicU64,
}

static ARENAS: [Arena; MAX_CPUS] = [const {
    Arena {
        base: AtomicU64::new(0),
        len: AtomicU64::new(0),
        top: AtomicU64::new(0),
        live: AtomicU64::new(0),
    }
}; MAX_CPUS];

fn set_arena(cpu: u32, base: u64, len: u64) {
    if let Some(a) = ARENAS.get(cpu as usize) {
        a.base.store(base, Ordering::Relaxed);
        a.len.store(len, Ordering::Relaxed);
        a.top.store(0, Ordering::Relaxed);
        a.live.store(0, Ordering::Relaxed);
    }
}

/// Per-CPU bump allocator (only the owning CPU touches its arena, so relaxed
/// atomics suffice); null when the CPU has no arena or it is full.
struct SuiteAlloc;

// SAFETY: alloc returns null or a block of at least `layout.size()` bytes,
// aligned to `layout.align()`, inside the calling CPU's arena and disjoint
// from every other live block (the bump pointer only moves forward until
// every block has been freed).
unsafe impl GlobalAlloc for SuiteAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(a) = ARENAS.get(current_cpu() as usize) else {
            return core::ptr::null_mut();
        };
        let base = a.base.load(Ordering::Relaxed);
        if base == 0 {
            return core::ptr::null_mut();
        }
        let align = layout.align() as u64;
        let start = (base + a.top.load(Ordering::Relaxed)).next_multiple_of(align);
        let end = start + layout.size() as u64;
        if end > base + a.len.load(Ordering::Relaxed) {
            return core::ptr::null_mut();
        }
        a.top.store(end - base, Ordering::Relaxed);
        a.live.fetch_add(1, Ordering::Relaxed);
        start as *mut u8
    }

    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {
        if let Some(a) = ARENAS.get(current_cpu() as usize) {
            if a.live.fetch_sub(1, Ordering::Relaxed) == 1 {
                a.top.store(0, Ordering::Relaxed);
            }
        }
    }
}

#[global_allocator]
static ALLOCATOR: SuiteAlloc = SuiteAlloc;
