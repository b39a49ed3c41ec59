//! `smallio:N`, the small-block random I/O test in place of PostMark, on the
//! first virtio-blk disk: N operations, each a 4 KiB write at one random block
//! and a 4 KiB read at another (one request at a time), a FLUSH every 64
//! operations and at the end. The block sequence is `kvmkit_workloads::smallio_op`,
//! as on the host.

use kvmkit_guest_abi::{Report, ReportKind};
use kvmkit_workloads::{fill_sectors, smallio_op, SECTOR_SIZE, SMALLIO_BLOCK, SMALLIO_FLUSH_EVERY, SMALLIO_SPAN_MIB};

use crate::arch::rdtsc;
use crate::exit;
use crate::report;
use crate::smp::Plan;
use crate::tsc::ticks_to_ns;
use crate::virtio::blk::Blk;
use crate::virtio::{probe, ID_BLOCK};

const SECTORS_PER_BLOCK: u64 = (SMALLIO_BLOCK / SECTOR_SIZE) as u64;

/// Runs `smallio:n` on the BSP; returns the exit status.
pub fn smallio(plan: &Plan, n: u64) -> u32 {
    const WHO: &str = "smallio";
    let khz = plan.tsc_khz;
    let (found, count) = probe(&plan.devices, ID_BLOCK, WHO);
    if count == 0 {
        println!("{WHO}: no virtio-blk device found");
        return exit::DEVICE_ERROR;
    }
    let f = found[0];
    let mut blk = match Blk::open(&f.dev, f.index, plan.mem_base, khz) {
        Ok(b) => b,
        Err(e) => {
            println!("{WHO}: device setup failed: {e}");
            return exit::DEVICE_ERROR;
        }
    };
    let span_sectors = (SMALLIO_SPAN_MIB << 20) / SECTOR_SIZE as u64;
    if blk.capacity < span_sectors || blk.read_only {
        println!(
            "{WHO}: the disk must be writable and hold {SMALLIO_SPAN_MIB} MiB ({} sectors, ro={})",
            blk.capacity, blk.read_only
        );
        blk.shutdown();
        return exit::DEVICE_ERROR;
    }
    let t0 = rdtsc();
    let mut result = Ok(());
    for i in 0..n {
        let (w, r) = smallio_op(i);
        result = blk
            .transfer(
                true,
                w * SECTORS_PER_BLOCK,
                SECTORS_PER_BLOCK,
                |s, words| fill_sectors(i, s, words),
                |_, _| {},
            )
            .and_then(|()| blk.transfer(false, r * SECTORS_PER_BLOCK, SECTORS_PER_BLOCK, |_, _| {}, |_, _| {}));
        if result.is_ok() && (i + 1) % SMALLIO_FLUSH_EVERY == 0 {
            result = blk.flush();
        }
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() {
        result = blk.flush();
    }
    let ticks = rdtsc() - t0;
    blk.shutdown();
    if let Err(e) = result {
        println!("{WHO}: I/O failed: {e}");
        return exit::DEVICE_ERROR;
    }
    let ns = ticks_to_ns(ticks, khz);
    let ops = 2 * n;
    let per_s = if ns == 0 {
        0
    } else {
        (u128::from(ops) * 1_000_000_000 / u128::from(ns)) as u64
    };
    println!("{WHO}: N={n} ops={ops} ops_per_s={per_s} time_ns={ns} ticks={ticks} cpu=0");
    let mut rep = Report::new(ReportKind::Result, 0);
    rep.set_name(WHO);
    rep.arg = n;
    rep.value = per_s;
    rep.ticks = ticks;
    rep.ns = ns;
    report::send(&rep);
    exit::OK
}
