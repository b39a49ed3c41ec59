//! The `ticks:MS` workload: a console heartbeat paced by the TSC.
//!
//! Prints `tick=K` (K = 1, 2, 3 ...) each time MS milliseconds of TSC time
//! have passed since the previous line was printed, forever. Each interval
//! is measured from the end of the previous line, so a VM that was paused
//! for a long time prints one line when it resumes, not a burst: tests use
//! it to show that pausing stops guest progress and resuming continues it.

use core::hint::spin_loop;

use crate::arch::rdtsc;
use crate::tsc::FALLBACK_KHZ;

/// Runs the heartbeat on this CPU; never returns.
pub fn run(ms: u64, tsc_khz: u64) -> ! {
    let khz = if tsc_khz == 0 {
        println!("ticks: TSC rate unknown, assuming {} MHz", FALLBACK_KHZ / 1000);
        FALLBACK_KHZ
    } else {
        tsc_khz
    };
    let period = ms.saturating_mul(khz).max(1);
    let mut last = rdtsc();
    let mut k: u64 = 0;
    loop {
        if rdtsc().wrapping_sub(last) >= period {
            k += 1;
            println!("tick={k}");
            last = rdtsc();
        }
        spin_loop();
    }
}
