//! The virtio device workloads: `blk-pattern`, `blk-seq:MIB` and `rng:BYTES`
//! here; the net and vsock ones dispatched to `net.rs` and `vsock.rs`.
//! Run by the BSP only, on the devices of `Plan::devices`, with the buffers
//! in the region at `Plan::mem_base`.

use kvmkit_guest_abi::{Report, ReportKind};
use kvmkit_workloads::{check_sectors, fill_sectors, ByteStats, SectorCheck, SECTOR_SIZE};

use crate::arch::rdtsc;
use crate::config::Workload;
use crate::exit;
use crate::report;
use crate::smp::Plan;
use crate::tsc::ticks_to_ns;
use crate::virtio::blk::{Blk, BlkError, S_IOERR};
use crate::virtio::rng::Rng;
use crate::virtio::{probe, DeviceList, ID_BLOCK, ID_ENTROPY};

const MIB: u64 = 1 << 20;

/// Runs the device workload of `plan`; returns the exit status.
pub fn run(plan: &Plan) -> u32 {
    match plan.workload {
        Workload::BlkPattern => blk_pattern(plan),
        Workload::BlkSeq(mib) => blk_seq(plan, mib),
        Workload::Rng(bytes) => rng(plan, bytes),
        Workload::NetEcho(seconds) => crate::net::echo(plan, seconds),
        Workload::NetTx(frames, size) => crate::net::tx(plan, frames, size),
        Workload::NetRx(seconds) => crate::net::rx(plan, seconds),
        Workload::VsockEcho(port, conns) => crate::vsock::echo(plan, port, conns),
        Workload::VsockTx(port, mib) => crate::vsock::tx(plan, port, mib),
        Workload::VsockRx(port, mib) => crate::vsock::rx(plan, port, mib),
        _ => exit::BAD_CMDLINE,
    }
}

fn no_device(who: &str, what: &str, list: &DeviceList) -> u32 {
    println!(
        "{who}: no {what} device found ({} virtio_mmio.device entries on the command line)",
        list.as_slice().len()
    );
    exit::DEVICE_ERROR
}

/// A Result report from the BSP.
fn result(name: &str, arg: u64, value: u64, ticks: u64, khz: u64) -> Report {
    let mut r = Report::new(ReportKind::Result, 0);
    r.set_name(name);
    r.arg = arg;
    r.value = value;
    r.ticks = ticks;
    r.ns = ticks_to_ns(ticks, khz);
    r
}

/// Prints the device's traits (one line).
fn describe(who: &str, k: usize, base: u64, blk: &mut Blk) {
    let id = blk.id().ok();
    let id = id.as_ref().map_or("", |b| {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        core::str::from_utf8(&b[..end]).unwrap_or("?")
    });
    println!(
        "{who}: dev={k} mmio={base:#x} capacity={} sectors ro={} flush={} blk_size={} seg_max={} queue={} \
         in_flight={} id=\"{id}\"",
        blk.capacity,
        blk.read_only,
        blk.flush,
        blk.blk_size.unwrap_or(0),
        blk.seg_max.unwrap_or(0),
        blk.queue_size(),
        blk.slots()
    );
}

/// Whether an error from writing is the device refusing writes.
fn refused(e: &BlkError) -> bool {
    matches!(e, BlkError::Status { status: S_IOERR, .. })
}

fn blk_pattern(plan: &Plan) -> u32 {
    const WHO: &str = "blk-pattern";
    let khz = plan.tsc_khz;
    let (found, n) = probe(&plan.devices, ID_BLOCK, WHO);
    if n == 0 {
        return no_device(WHO, "virtio-blk", &plan.devices);
    }
    let seed = 0x6b76_6d6b_0000_0000 | (rdtsc() & 0xffff_ffff);
    println!("{WHO}: {n} block device(s), seed={seed:#x}");
    let mut status = exit::OK;
    let (mut total_sectors, mut total_bad, mut total_ticks) = (0u64, 0u64, 0u64);
    for (k, f) in found[..n].iter().enumerate() {
        let base = f.dev.base;
        let mut blk = match Blk::open(&f.dev, f.index, plan.mem_base, khz) {
            Ok(b) => b,
            Err(e) => {
                println!("{WHO}: dev={k} mmio={base:#x}: device setup failed: {e}");
                status = exit::DEVICE_ERROR;
                continue;
            }
        };
        describe(WHO, k, base, &mut blk);
        if blk.read_only {
            println!("{WHO}: write refused (read-only device) dev={k} mmio={base:#x} (VIRTIO_BLK_F_RO)");
            blk.shutdown();
            status = exit::DEVICE_ERROR;
            continue;
        }
        let sectors = blk.capacity;
        let t0 = rdtsc();
        let wrote = blk
            .transfer(true, 0, sectors, |s, words| fill_sectors(seed, s, words), |_, _| {})
            .and_then(|()| blk.flush());
        if let Err(e) = wrote {
            if refused(&e) {
                println!("{WHO}: write refused (read-only device) dev={k} mmio={base:#x} ({e})");
            } else {
                println!("{WHO}: dev={k} mmio={base:#x}: write failed: {e}");
            }
            blk.shutdown();
            status = exit::DEVICE_ERROR;
            continue;
        }
        let t1 = rdtsc();
        let mut check = SectorCheck::default();
        let read = blk.transfer(
            false,
            0,
            sectors,
            |_, _| {},
            |s, words| {
                let c = check_sectors(seed, s, words);
                check.bad_sectors += c.bad_sectors;
                if check.first.is_none() {
                    check.first = c.first;
                }
            },
        );
        let t2 = rdtsc();
        blk.shutdown();
        if let Err(e) = read {
            println!("{WHO}: dev={k} mmio={base:#x}: read failed: {e}");
            status = exit::DEVICE_ERROR;
            continue;
        }
        let bytes = sectors * SECTOR_SIZE as u64;
        let (write_ns, read_ns) = (ticks_to_ns(t1 - t0, khz), ticks_to_ns(t2 - t1, khz));
        match check.first {
            None => println!(
                "{WHO}: sectors={sectors} bytes={bytes} verified=OK dev={k} mmio={base:#x} write_ns={write_ns} \
                 read_ns={read_ns}"
            ),
            Some(m) => {
                println!(
                    "{WHO}: sectors={sectors} bytes={bytes} verified=FAILED mismatched_sectors={} dev={k} \
                     mmio={base:#x} first_bad_sector={} word={} expected={:#018x} actual={:#018x}",
                    check.bad_sectors, m.sector, m.word, m.expected, m.actual
                );
                if status == exit::OK {
                    status = exit::WORKLOAD_FAILED;
                }
            }
        }
        total_sectors += sectors;
        total_bad += check.bad_sectors;
        total_ticks += t2 - t0;
    }
    if status != exit::DEVICE_ERROR {
        report::send(&result(WHO, total_sectors, total_bad, total_ticks, khz));
    }
    status
}

/// `bytes` in `ns` as MB/s (10^6 bytes) times 1000, and as bytes per second.
fn rates(bytes: u64, ns: u64) -> (u64, u64) {
    if ns == 0 {
        return (0, 0);
    }
    let per_s = (u128::from(bytes) * 1_000_000_000 / u128::from(ns)) as u64;
    (per_s / 1000, per_s)
}

fn blk_seq(plan: &Plan, mib: u64) -> u32 {
    const WHO: &str = "blk-seq";
    let khz = plan.tsc_khz;
    let (found, n) = probe(&plan.devices, ID_BLOCK, WHO);
    if n == 0 {
        return no_device(WHO, "virtio-blk", &plan.devices);
    }
    let f = found[0];
    let base = f.dev.base;
    let mut blk = match Blk::open(&f.dev, f.index, plan.mem_base, khz) {
        Ok(b) => b,
        Err(e) => {
            println!("{WHO}: mmio={base:#x}: device setup failed: {e}");
            return exit::DEVICE_ERROR;
        }
    };
    describe(WHO, 0, base, &mut blk);
    let sectors = mib.saturating_mul(MIB / SECTOR_SIZE as u64);
    if sectors > blk.capacity {
        println!(
            "{WHO}: {mib} MiB do not fit the disk ({} sectors = {} MiB)",
            blk.capacity,
            blk.capacity * SECTOR_SIZE as u64 / MIB
        );
        blk.shutdown();
        return exit::DEVICE_ERROR;
    }
    if blk.read_only {
        println!("{WHO}: write refused (read-only device) mmio={base:#x} (VIRTIO_BLK_F_RO)");
        blk.shutdown();
        return exit::DEVICE_ERROR;
    }
    // Non-zero data, written once into every slot's buffer (no per-request work).
    for slot in 0..blk.slots() {
        let words = crate::virtio::CHUNK_BYTES as usize / 8;
        // SAFETY: slot buffers are CHUNK_BYTES of the device-workload region
        // that only this driver uses, and nothing is in flight yet.
        let buf = unsafe { core::slice::from_raw_parts_mut(blk.buffer(slot) as *mut u64, words) };
        fill_sectors(0x5eed, u64::from(slot) << 16, buf);
    }
    let t0 = rdtsc();
    let wrote = blk
        .transfer(true, 0, sectors, |_, _| {}, |_, _| {})
        .and_then(|()| blk.flush());
    let t1 = rdtsc();
    if let Err(e) = wrote {
        if refused(&e) {
            println!("{WHO}: write refused (read-only device) mmio={base:#x} ({e})");
        } else {
            println!("{WHO}: write failed: {e}");
        }
        blk.shutdown();
        return exit::DEVICE_ERROR;
    }
    let read = blk.transfer(false, 0, sectors, |_, _| {}, |_, _| {});
    let t2 = rdtsc();
    blk.shutdown();
    if let Err(e) = read {
        println!("{WHO}: read failed: {e}");
        return exit::DEVICE_ERROR;
    }
    let bytes = sectors * SECTOR_SIZE as u64;
    let (write_ns, read_ns) = (ticks_to_ns(t1 - t0, khz), ticks_to_ns(t2 - t1, khz));
    let (w_milli, w_rate) = rates(bytes, write_ns);
    let (r_milli, r_rate) = rates(bytes, read_ns);
    println!(
        "{WHO}: MiB={mib} write_MBps={}.{:03} read_MBps={}.{:03} write_ns={write_ns} read_ns={read_ns} flush={}",
        w_milli / 1000,
        w_milli % 1000,
        r_milli / 1000,
        r_milli % 1000,
        blk.flush
    );
    report::send(&result("blk-write", mib, w_rate, t1 - t0, khz));
    report::send(&result("blk-read", mib, r_rate, t2 - t1, khz));
    exit::OK
}

fn rng(plan: &Plan, bytes: u64) -> u32 {
    const WHO: &str = "rng";
    let khz = plan.tsc_khz;
    let (found, n) = probe(&plan.devices, ID_ENTROPY, WHO);
    if n == 0 {
        return no_device(WHO, "virtio-rng", &plan.devices);
    }
    let f = found[0];
    let base = f.dev.base;
    let mut rng = match Rng::open(&f.dev, f.index, plan.mem_base, khz) {
        Ok(r) => r,
        Err(e) => {
            println!("{WHO}: mmio={base:#x}: device setup failed: {e}");
            return exit::DEVICE_ERROR;
        }
    };
    let mut stats = ByteStats::new();
    let t0 = rdtsc();
    let got = rng.read(bytes, |b| stats.add(b));
    let ticks = rdtsc() - t0;
    rng.shutdown();
    let ns = ticks_to_ns(ticks, khz);
    let received = match got {
        Ok(r) => r,
        Err(e) => {
            println!("{WHO}: read failed after {} of {bytes} bytes: {e}", stats.total);
            return exit::DEVICE_ERROR;
        }
    };
    let sane = stats.looks_random();
    println!(
        "{WHO}: bytes={received} time_ns={ns} distinct={} max_count={} zeros={} sane={}",
        stats.distinct(),
        stats.max_count(),
        stats.hist[0],
        if sane { "yes" } else { "NO" }
    );
    report::send(&result(WHO, bytes, received, ticks, khz));
    if sane {
        exit::OK
    } else {
        exit::WORKLOAD_FAILED
    }
}
