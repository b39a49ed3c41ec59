//! Bringing up application processors and keeping the CPUs in step.
//!
//! The BSP, already at CPL3 (all memory is user-mapped), copies the real-mode
//! trampoline from `boot.S` to 0x8000 and sends INIT and two SIPIs to all
//! other CPUs through the xAPIC ICR. Each AP runs the trampoline and the same
//! CPL0 setup as the BSP, takes an index with `lock xadd`, and arrives at CPL3
//! in [`ap_main`].

use core::cell::UnsafeCell;
use core::hint::spin_loop;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use kvmkit_guest_abi::{Report, ReportKind, MAX_CPUS};

use crate::arch::{mmio_write32, rdtsc};
use crate::config::Workload;
use crate::report;
use crate::tsc::ticks_per_ms;
use crate::virtio::DeviceList;

/// Size of each CPU's CPL3 stack (boot.S lays them out in `user_stacks`).
pub const USER_STACK_SIZE: usize = 0x8000;
/// Where the trampoline is copied; the SIPI vector is its page number.
const TRAMPOLINE_ADDR: u64 = 0x8000;
const APIC_ICR_LOW: u64 = 0xfee0_0300;
const APIC_ICR_HIGH: u64 = 0xfee0_0310;
/// Destination shorthand "all excluding self", level assert, INIT.
const ICR_INIT_ALL_BUT_SELF: u32 = 0x000c_4500;
/// Destination shorthand "all excluding self", level assert, start-up.
const ICR_SIPI_ALL_BUT_SELF: u32 = 0x000c_4600;

extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
    static user_stacks: u8;
}

/// What every CPU needs to run its share of the workload.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// The workload.
    pub workload: Workload,
    /// CPUs taking part (indices `0..cpus`).
    pub cpus: u32,
    /// TSC rate in kHz, 0 when unknown.
    pub tsc_khz: u64,
    /// Start of the memtest region, or of the device-workload region
    /// (`virtio::DMA_BYTES`) for device workloads; 0 for others.
    pub mem_base: u64,
    /// Length of that region in bytes.
    pub mem_len: u64,
    /// The `virtio_mmio.device=` entries of the command line.
    pub devices: DeviceList,
}

struct PlanCell(UnsafeCell<Plan>);

// SAFETY: written once by the BSP before PLAN_READY is set (Release), read by
// others only after seeing PLAN_READY (Acquire).
unsafe impl Sync for PlanCell {}

static PLAN: PlanCell = PlanCell(UnsafeCell::new(Plan {
    workload: Workload::Idle,
    cpus: 1,
    tsc_khz: 0,
    mem_base: 0,
    mem_len: 0,
    devices: DeviceList::EMPTY,
}));
static PLAN_READY: AtomicBool = AtomicBool::new(false);
static GO: AtomicBool = AtomicBool::new(false);
static ONLINE: AtomicU32 = AtomicU32::new(0);
static DONE: AtomicU32 = AtomicU32::new(0);
static FAILED: AtomicU32 = AtomicU32::new(0);
static APIC_IDS: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(u32::MAX) }; MAX_CPUS];

/// Publishes the plan (BSP, once, before [`start_aps`]).
pub fn publish(plan: Plan) {
    // SAFETY: only the BSP calls this, once, before any AP can read PLAN.
    unsafe { *PLAN.0.get() = plan };
    PLAN_READY.store(true, Ordering::Release);
}

/// The published plan.
pub fn plan() -> Plan {
    while !PLAN_READY.load(Ordering::Acquire) {
        spin_loop();
    }
    // SAFETY: PLAN_READY was set after the only write; no writes follow.
    unsafe { *PLAN.0.get() }
}

/// Records CPU `cpu`'s APIC id (as CPUID reported it at CPL0).
pub fn set_apic_id(cpu: u32, apic: u32) {
    if let Some(slot) = APIC_IDS.get(cpu as usize) {
        slot.store(apic, Ordering::Relaxed);
    }
}

/// Marks CPU `cpu` online: reports and prints it with its APIC id.
pub fn online(cpu: u32) {
    let apic = APIC_IDS[cpu as usize].load(Ordering::Relaxed);
    let mut r = Report::new(ReportKind::CpuOnline, cpu);
    r.value = u64::from(apic);
    report::send(&r);
    ONLINE.fetch_add(1, Ordering::AcqRel);
}

/// Prints which CPUs came online (after the ready milestone: every console
/// byte is a VM exit, so boot-time work stays off the console).
pub fn print_online(cpus: u32) {
    for cpu in 0..cpus.min(MAX_CPUS as u32) {
        let apic = APIC_IDS[cpu as usize].load(Ordering::Relaxed);
        println!("kvmkit-guest: cpu {cpu} online (apic id {apic})");
    }
}

/// This CPU's index, found from the stack pointer (each CPU runs on its
/// own slot of `user_stacks`); `u32::MAX` if the stack is not one of them.
pub fn current_cpu() -> u32 {
    let marker = 0u8;
    let sp = &raw const marker as usize;
    let base = &raw const user_stacks as usize;
    let index = sp.wrapping_sub(base) / USER_STACK_SIZE;
    if index < MAX_CPUS {
        index as u32
    } else {
        u32::MAX
    }
}

fn delay_us(us: u64, tsc_khz: u64) {
    let khz = ticks_per_ms(tsc_khz);
    let end = rdtsc() + us * khz / 1000;
    while rdtsc() < end {
        spin_loop();
    }
}

fn send_ipi(icr_low: u32) {
    mmio_write32(APIC_ICR_HIGH, 0);
    mmio_write32(APIC_ICR_LOW, icr_low);
}

/// Starts the APs and waits up to about a second until `cpus` CPUs in all
/// are online. Returns how many are.
pub fn start_aps(cpus: u32, tsc_khz: u64) -> u32 {
    let start = &raw const ap_trampoline_start;
    let end = &raw const ap_trampoline_end;
    let len = end as usize - start as usize;
    // SAFETY: the trampoline is `len` bytes of the image; 0x8000.. is low RAM
    // below the image that nothing else uses once start_info has been read.
    unsafe { core::ptr::copy_nonoverlapping(start, TRAMPOLINE_ADDR as *mut u8, len) };
    let sipi = ICR_SIPI_ALL_BUT_SELF | (TRAMPOLINE_ADDR >> 12) as u32;
    // A virtual machine needs none of the 10 ms / 200 us waits real
    // hardware does (Linux skips them under a hypervisor too); keep a token one.
    send_ipi(ICR_INIT_ALL_BUT_SELF);
    delay_us(10, tsc_khz);
    send_ipi(sipi);
    delay_us(10, tsc_khz);
    send_ipi(sipi);
    let khz = ticks_per_ms(tsc_khz);
    let deadline = rdtsc() + khz * 1000;
    while ONLINE.load(Ordering::Acquire) < cpus && rdtsc() < deadline {
        spin_loop();
    }
    ONLINE.load(Ordering::Acquire)
}

/// Lets the APs start their workload.
pub fn go() {
    GO.store(true, Ordering::Release);
}

/// Waits until `aps` APs have finished; returns how many of them failed.
pub fn wait_done(aps: u32) -> u32 {
    while DONE.load(Ordering::Acquire) < aps {
        spin_loop();
    }
    FAILED.load(Ordering::Acquire)
}

/// Spins until the BSP lets the APs start their workload ([`go`]).
pub fn wait_go() {
    while !GO.load(Ordering::Acquire) {
        spin_loop();
    }
}

/// An AP has finished its workload (`ok`: with status OK).
pub fn ap_done(ok: bool) {
    if !ok {
        FAILED.fetch_add(1, Ordering::AcqRel);
    }
    DONE.fetch_add(1, Ordering::AcqRel);
}
