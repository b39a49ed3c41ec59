//! The bootstrap processor's CPL3 main line.

use kvmkit_guest_abi::{DEBUG_PORT, MILESTONE_READY};

use crate::arch::{mask_pic, outb};
use crate::config::{Config, Workload};
use crate::exit::{self, exit};
use crate::smp::{self, Plan};
use crate::start_info::BootInfo;
use crate::virtio::{self, DeviceList};
use crate::{tsc, workload};

extern "C" {
    /// End of the loaded image and its .bss (from guest.ld).
    static __image_end: u8;
}

const MIB: u64 = 1 << 20;
/// The identity map ends here.
const MAPPED_END: u64 = 1 << 32;

/// Picks `mib` MiB of free RAM above the image (2 MiB aligned) from the
/// memory map for workload `who`, or says why there is none.
fn free_region(boot: &BootInfo, who: &str, mib: u64) -> Result<(u64, u64), ()> {
    let start = ((&raw const __image_end) as u64).next_multiple_of(2 * MIB);
    let len = mib.saturating_mul(MIB);
    if boot.ram().is_empty() {
        println!("{who}: no memory map in hvm_start_info");
        return Err(());
    }
    let avail = boot
        .ram()
        .iter()
        .filter(|r| r.base <= start && start < r.base.saturating_add(r.len))
        .map(|r| r.base.saturating_add(r.len).min(MAPPED_END) - start)
        .max()
        .unwrap_or(0);
    if len == 0 || len > avail {
        println!(
            "{who}: need {mib} MiB of RAM at {start:#x}, only {} MiB free there",
            avail / MIB
        );
        return Err(());
    }
    Ok((start, len))
}

/// Boots the rest of the machine, runs the BSP's share and ends the VM.
/// `hv_tsc_khz` is the TSC rate from the CPL0 hypervisor-leaf CPUID, or 0.
pub fn main(start_info: u64, hv_tsc_khz: u64) -> ! {
    mask_pic();
    // Read start_info (command line, memory map) before touching low memory.
    let boot = BootInfo::parse(start_info);
    let cmdline = boot.cmdline();
    let config = Config::parse(cmdline).unwrap_or_else(|e| {
        println!("kvmkit-guest: bad command line: {e}");
        exit(exit::BAD_CMDLINE)
    });
    crate::net::remember_cmdline(cmdline);
    let (tsc_khz, source) = match config.tsc_khz {
        Some(k) => (k, "cmdline"),
        None if hv_tsc_khz != 0 => (hv_tsc_khz, "cpuid 0x40000010"),
        None => match tsc::detect_khz() {
            Some(k) => (k, "cpuid"),
            None => tsc::calibrate_pit().map_or((0, "unknown"), |k| (k, "pit")),
        },
    };
    let w = config.workload;
    let (mem_base, mem_len) = match w {
        Workload::Memtest(mib) => free_region(&boot, "memtest", mib).unwrap_or_else(|()| exit(exit::NO_MEMORY)),
        w if crate::suite::bytes_per_cpu(w) > 0 => {
            let mib = (crate::suite::bytes_per_cpu(w) * u64::from(config.cpus)).div_ceil(MIB);
            free_region(&boot, w.name(), mib).unwrap_or_else(|()| exit(exit::NO_MEMORY))
        }
        w if w.uses_devices() => {
            free_region(&boot, w.name(), virtio::DMA_BYTES / MIB).unwrap_or_else(|()| exit(exit::NO_MEMORY))
        }
        _ => (0, 0),
    };
    let plan = Plan {
        workload: w,
        cpus: config.cpus,
        tsc_khz,
        mem_base,
        mem_len,
        devices: DeviceList::from_cmdline(cmdline),
    };
    smp::publish(plan);
    smp::online(0);
    if plan.cpus > 1 {
        let online = smp::start_aps(plan.cpus, tsc_khz);
        if online < plan.cpus {
            println!("kvmkit-guest: only {online} of {} cpus came online", plan.cpus);
            exit(exit::CPUS_MISSING);
        }
    }
    outb(DEBUG_PORT, MILESTONE_READY);
    match boot.version {
        Some(v) => println!("kvmkit-guest: PVH start_info v{v}, cmdline \"{cmdline}\""),
        None => println!("kvmkit-guest: no valid hvm_start_info at {start_info:#x}"),
    }
    println!(
        "kvmkit-guest: workload={}:{} cpus={} tsc_khz={tsc_khz} ({source})",
        w.name(),
        w.arg(),
        config.cpus
    );
    smp::print_online(plan.cpus);
    smp::go();
    let bsp_status = workload::run(0, &plan);
    let failed = smp::wait_done(plan.cpus - 1) + u32::from(bsp_status != exit::OK);
    let status = match (bsp_status, failed) {
        (exit::OK, 0) => exit::OK,
        (exit::OK, _) => exit::WORKLOAD_FAILED,
        (s, _) => s,
    };
    println!(
        "kvmkit-guest: done workload={}:{} cpus={} failed={failed} status={status}",
        w.name(),
        w.arg(),
        plan.cpus
    );
    exit(status)
}
