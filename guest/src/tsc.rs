//! TSC rate detection and tick conversion.

use core::hint::spin_loop;

use crate::arch::{cpuid, inb, outb, rdtsc};

/// PIT input clock in Hz.
const PIT_HZ: u64 = 1_193_182;
/// Length of the PIT calibration window in milliseconds.
const PIT_CALIBRATE_MS: u64 = 10;
/// Port B of the PC: bit 0 gates PIT channel 2, bit 1 drives the speaker,
/// bit 5 reads channel 2's OUT pin.
const PORT_B: u16 = 0x61;
const PORT_B_GATE2: u8 = 0x01;
const PORT_B_SPEAKER: u8 = 0x02;
const PORT_B_OUT2: u8 = 0x20;
/// PIT channel 2 data port and the mode/command port.
const PIT_CH2: u16 = 0x42;
const PIT_MODE: u16 = 0x43;
/// Channel 2, low then high byte, mode 0 (OUT low until the count ends), binary.
const PIT_CH2_MODE0: u8 = 0xb0;
/// More polls than this: OUT2 never rises (no PIT at all); every poll is a
/// VM exit (>= ~0.3 us), so a real 10 ms window needs far fewer.
const PIT_MAX_POLLS: u32 = 200_000;
/// Windows measured at most before giving up.
const PIT_TRIES: u32 = 20;
/// A window is sharp enough to stop at when the brackets around its start
/// and end add up to at most 1/200 (0.5%) of it.
const PIT_SHARP_INV: u64 = 200;
/// The sharpest window is still used when they add up to at most 1/50 (2%,
/// so +/- 1%): VMMs that emulate port 0x61 in user space poll slowly.
const PIT_USABLE_INV: u64 = 50;
/// Plausible TSC rates (kHz): 100 MHz to 10 GHz.
const PLAUSIBLE_KHZ: core::ops::RangeInclusive<u64> = 100_000..=10_000_000;

/// Finds the TSC rate in kHz from a CPL3 CPUID (under PVM: the host CPU's
/// view, still the same TSC): the hypervisor timing leaf
/// 0x40000010 (EAX = TSC kHz), else leaf 0x15 (TSC/crystal ratio), else leaf
/// 0x16 (base MHz). `None` when none of them says.
pub fn detect_khz() -> Option<u64> {
    let hypervisor = cpuid(1).ecx & (1 << 31) != 0;
    if hypervisor && cpuid(0x4000_0000).eax >= 0x4000_0010 {
        let khz = cpuid(0x4000_0010).eax;
        if khz != 0 {
            return Some(u64::from(khz));
        }
    }
    let max_leaf = cpuid(0).eax;
    if max_leaf >= 0x15 {
        let l = cpuid(0x15);
        if l.eax != 0 && l.ebx != 0 && l.ecx != 0 {
            return Some(u64::from(l.ecx) * u64::from(l.ebx) / u64::from(l.eax) / 1000);
        }
    }
    if max_leaf >= 0x16 {
        let mhz = cpuid(0x16).eax & 0xffff;
        if mhz != 0 {
            return Some(u64::from(mhz) * 1000);
        }
    }
    None
}

/// Measures the TSC rate in kHz against PIT channel 2 (one-shot, mode 0,
/// 10 ms windows), like Linux's `pit_calibrate_tsc`. Each window's start and
/// end are bracketed by TSC reads; while they are wider than 0.5% (the vCPU
/// was descheduled at the wrong moment, or polls are slow) the window is
/// measured again, up to [`PIT_TRIES`] times, and the sharpest one is used if
/// within 2%. `None` when there is no PIT (OUT2 rises at once every time, or
/// never), no window was sharp enough, or the rate is implausible. Every
/// access is port I/O, allowed at CPL3 by the TSS I/O bitmap.
pub fn calibrate_pit() -> Option<u64> {
    let latch = PIT_HZ * PIT_CALIBRATE_MS / 1000;
    let port_b = inb(PORT_B);
    outb(PORT_B, (port_b & !PORT_B_SPEAKER) | PORT_B_GATE2);
    // (blur, ticks) of the sharpest window so far.
    let mut best: Option<(u64, u64)> = None;
    for _ in 0..PIT_TRIES {
        match pit_window(latch) {
            Window::NoPit => break,
            Window::Blurred => {}
            Window::Measured { ticks, blur } => {
                if best.is_none_or(|(b, _)| blur < b) {
                    best = Some((blur, ticks));
                }
                if blur * PIT_SHARP_INV <= ticks {
                    break;
                }
            }
        }
    }
    outb(PORT_B, port_b);
    let (blur, ticks) = best?;
    if blur * PIT_USABLE_INV > ticks {
        return None;
    }
    // The window is `latch` PIT periods: ticks / (latch / PIT_HZ) / 1000.
    let khz = u128::from(ticks) * u128::from(PIT_HZ) / (u128::from(latch) * 1000);
    Some(khz as u64).filter(|k| PLAUSIBLE_KHZ.contains(k))
}

/// What one PIT window gave.
enum Window {
    /// The window's length in TSC ticks, known to +/- `blur` / 2.
    Measured { ticks: u64, blur: u64 },
    /// OUT2 rose at once (no PIT, or the vCPU did not run during the window).
    Blurred,
    /// OUT2 never rose: no PIT behind the ports.
    NoPit,
}

/// Counts `latch` PIT periods on channel 2 (gate already on) in TSC ticks.
fn pit_window(latch: u64) -> Window {
    outb(PIT_MODE, PIT_CH2_MODE0);
    outb(PIT_CH2, latch as u8);
    // The count starts with the high byte: somewhere in [before, start].
    let before = rdtsc();
    outb(PIT_CH2, (latch >> 8) as u8);
    let start = rdtsc();
    // OUT2 rises in [the TSC before the last poll that read it low, the TSC
    // after the first poll that read it high].
    let mut pre = start;
    let mut rise_after = start;
    let mut polls = 0u32;
    let rise_before = loop {
        let high = inb(PORT_B) & PORT_B_OUT2 != 0;
        let post = rdtsc();
        if high {
            break post;
        }
        polls += 1;
        if polls > PIT_MAX_POLLS {
            return Window::NoPit;
        }
        rise_after = pre;
        pre = post;
        spin_loop();
    };
    if polls == 0 {
        // No PIT behind port 0x61 (some VMMs answer it with OUT2 always
        // set), or this vCPU was descheduled for the whole window: only the
        // former happens every time.
        return Window::Blurred;
    }
    let shortest = rise_after.saturating_sub(start);
    let longest = rise_before - before;
    let blur = longest - shortest;
    Window::Measured {
        ticks: shortest + blur / 2,
        blur,
    }
}

/// Converts TSC ticks to nanoseconds; 0 when the rate is unknown (0).
pub fn ticks_to_ns(ticks: u64, khz: u64) -> u64 {
    if khz == 0 {
        return 0;
    }
    (u128::from(ticks) * 1_000_000 / u128::from(khz)) as u64
}

/// TSC rate assumed for timeouts when the real one is unknown.
pub const FALLBACK_KHZ: u64 = 4_000_000;

/// TSC ticks per millisecond at `khz` (the fallback rate when 0), never 0.
pub fn ticks_per_ms(khz: u64) -> u64 {
    if khz == 0 {
        FALLBACK_KHZ
    } else {
        khz
    }
}

/// Longest gap (ms) between two looks at a [`StallTimer`] that still counts
/// as time the guest spent waiting. The loops that use one look every few
/// microseconds; a longer gap means this vCPU was not running: the VM was
/// paused, or snapshotted and restored (on kvm_pvm a restored guest's TSC
/// includes the time in between), or the host starved it.
const GAP_MS: u64 = 500;

/// A timeout that counts only time the guest was running, so a wait that was
/// in flight when the VM was paused or snapshotted does not expire the moment
/// it resumes.
pub struct StallTimer {
    left: u64,
    last: u64,
    gap: u64,
}

impl StallTimer {
    /// A timer of `ms` milliseconds at `khz` (0: the fallback rate), started now.
    pub fn new(ms: u64, khz: u64) -> Self {
        let per_ms = ticks_per_ms(khz);
        Self {
            left: ms.saturating_mul(per_ms),
            last: rdtsc(),
            gap: GAP_MS * per_ms,
        }
    }

    /// Counts the time since the last look (unless it is a gap) and says
    /// whether the timer has run out.
    pub fn expired(&mut self) -> bool {
        let now = rdtsc();
        let d = now.wrapping_sub(self.last);
        self.last = now;
        if d < self.gap {
            self.left = self.left.saturating_sub(d);
        }
        self.left == 0
    }
}
