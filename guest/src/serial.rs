//! Console output on COM1, polling the line status register.

use core::fmt::{self, Write};
use core::hint::spin_loop;
use core::sync::atomic::{AtomicBool, Ordering};

use kvmkit_guest_abi::COM1_PORT;

use crate::arch::{inb, outb};

/// Line status register offset; bit 5 = transmit holding register empty.
const LSR: u16 = 5;
const LSR_THR_EMPTY: u8 = 0x20;
/// Polls of a stuck lock before printing anyway (only the panic path gives up).
const PANIC_LOCK_SPINS: u32 = 1_000_000;

static LOCK: AtomicBool = AtomicBool::new(false);

struct Com1;

impl Write for Com1 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for byte in s.bytes() {
            while inb(COM1_PORT + LSR) & LSR_THR_EMPTY == 0 {
                spin_loop();
            }
            outb(COM1_PORT, byte);
        }
        Ok(())
    }
}

/// Prints to COM1 under a lock so lines from different CPUs do not mix.
pub fn print(args: fmt::Arguments) {
    while LOCK
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        spin_loop();
    }
    let _ = Com1.write_fmt(args);
    LOCK.store(false, Ordering::Release);
}

/// Prints from the panic handler: waits for the lock only a bounded time,
/// since the panicking CPU may hold it itself.
pub fn print_panic(args: fmt::Arguments) {
    let mut spins = 0;
    while LOCK
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
        && spins < PANIC_LOCK_SPINS
    {
        spins += 1;
        spin_loop();
    }
    let _ = Com1.write_fmt(args);
    LOCK.store(false, Ordering::Release);
}

/// Prints a line to COM1.
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::serial::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}
