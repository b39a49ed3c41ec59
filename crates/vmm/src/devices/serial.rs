//! The 16550A UART on COM1, from `vm-superio`, wired to the host console.

use std::io::Write;
use std::sync::Arc;

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::control::VmControl;

/// COM1 port base.
pub const COM1_BASE: u64 = 0x3f8;
/// Ports a UART spans.
pub const UART_LEN: u64 = 8;
/// COM1's IRQ line.
pub const COM1_IRQ: u32 = 4;

/// Raises the UART's interrupt through an eventfd (registered as an irqfd).
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// What a Linux kernel prints when it panics.
pub const PANIC_MARKER: &[u8] = b"Kernel panic - not syncing";

/// Finds a fixed byte string in a stream fed a piece at a time.
#[derive(Debug, Default)]
pub struct StreamMatcher {
    matched: usize,
}

impl StreamMatcher {
    /// Feeds `bytes`; true when `needle` has been completed inside them.
    pub fn feed(&mut self, needle: &[u8], bytes: &[u8]) -> bool {
        let mut found = false;
        for &b in bytes {
            if needle.get(self.matched) == Some(&b) {
                self.matched += 1;
            } else {
                self.matched = usize::from(needle.first() == Some(&b));
            }
            if self.matched == needle.len() {
                found = true;
                self.matched = 0;
            }
        }
        found
    }
}

/// Output sink that records when the first byte went out and watches for a
/// guest kernel panic.
pub struct ConsoleOut {
    out: Box<dyn Write + Send>,
    control: Arc<VmControl>,
    panic_watch: StreamMatcher,
}

impl ConsoleOut {
    /// Wraps `out`, stamping the first write into `control`'s timeline.
    pub fn new(out: Box<dyn Write + Send>, control: Arc<VmControl>) -> Self {
        Self {
            out,
            control,
            panic_watch: StreamMatcher::default(),
        }
    }
}

impl Write for ConsoleOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.control.timeline.first_output.get().is_none() {
            let _ = self.control.timeline.first_output.set(std::time::Instant::now());
        }
        if self.panic_watch.feed(PANIC_MARKER, buf) {
            self.control.note_guest_panic();
        }
        self.out.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// The UART as a bus device.
pub struct SerialDevice {
    uart: Serial<EventFdTrigger, vm_superio::serial::NoEvents, ConsoleOut>,
    write_errors: u32,
}

impl SerialDevice {
    /// A UART writing to `out` and interrupting through `irq`.
    pub fn new(irq: EventFd, out: ConsoleOut) -> Self {
        Self {
            uart: Serial::new(EventFdTrigger(irq), out),
            write_errors: 0,
        }
    }

    /// A UART in a saved state (snapshot restore); raises its interrupt
    /// if the state has one pending.
    pub fn from_state(irq: EventFd, out: ConsoleOut, state: &vm_superio::serial::SerialState) -> Result<Self, String> {
        let uart = Serial::from_state(state, EventFdTrigger(irq), vm_superio::serial::NoEvents, out)
            .map_err(|e| format!("serial state: {e:?}"))?;
        Ok(Self { uart, write_errors: 0 })
    }

    /// The UART's registers and FIFO (for snapshots).
    pub fn state(&self) -> vm_superio::serial::SerialState {
        self.uart.state()
    }

    /// Feeds host input to the guest; returns how many bytes fit in the FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let room = self.uart.fifo_capacity();
        let n = bytes.len().min(room);
        match self.uart.enqueue_raw_bytes(&bytes[..n]) {
            Ok(k) => k,
            Err(e) => {
                tracing::debug!("serial input dropped: {e:?}");
                0
            }
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = self.uart.read(offset as u8);
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        if let Err(e) = self.uart.write(offset as u8, value) {
            self.write_errors += 1;
            if self.write_errors <= 3 {
                tracing::warn!("serial console write failed: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matcher_finds_the_marker_across_pieces() {
        let mut m = StreamMatcher::default();
        let text = b"[ 1.0] Kernel panic - not syncing: VFS";
        let hits: Vec<bool> = text
            .iter()
            .map(|b| m.feed(PANIC_MARKER, std::slice::from_ref(b)))
            .collect();
        assert_eq!(hits.iter().filter(|h| **h).count(), 1);
        let mut m = StreamMatcher::default();
        assert!(!m.feed(PANIC_MARKER, b"Kernel Kernel panic - not"));
        assert!(m.feed(PANIC_MARKER, b" syncing"));
        assert!(!StreamMatcher::default().feed(PANIC_MARKER, b"Kernel panic - not sync"));
    }
}
