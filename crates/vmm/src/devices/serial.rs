//! The 16550A UART on COM1, from `vm-superio`, wired to the host console.
//!
//! Console output never blocks a vCPU (or the VMM thread waiting for the
//! serial lock): [`ConsoleOut`] puts the guest's bytes in a bounded buffer
//! that its own thread writes to the host; when the host side does not keep
//! up (a full pipe nobody reads), the oldest bytes are dropped and counted.
//! The thread writes whole lines: a guest prints one byte per exit, and
//! waking the writer for each one cost the vCPU a futex call per byte.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

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

/// Console bytes buffered for the host at most; older ones are dropped.
pub const CONSOLE_BUFFER_BYTES: usize = 1 << 20;
/// How long the end of a VM waits for buffered console output to go out.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Most bytes the writer thread takes per write.
const WRITE_CHUNK: usize = 64 * 1024;
/// How long the writer waits for the end of a line it has the start of:
/// output without a newline (a prompt, echoed keys) goes out this late.
const LINE_WAIT: Duration = Duration::from_millis(5);

#[derive(Default)]
struct Pending {
    bytes: VecDeque<u8>,
    dropped: u64,
    writing: bool,
    closing: bool,
    /// A newline (or a drain) asks for the buffer to go out now.
    flush: bool,
}

struct Buffer {
    state: Mutex<Pending>,
    changed: Condvar,
    /// [`LINE_WAIT`], but for tests.
    line_wait: Duration,
}

impl Buffer {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Writes what the buffer holds to `out` until the buffer is closed and
/// empty, a line at a time: woken by a line's first byte, it waits for its
/// newline (at most [`LINE_WAIT`]) and writes up to there in one call.
/// Write errors (a closed pipe) drop the bytes.
fn drain_to(mut out: Box<dyn Write + Send>, buf: &Buffer) {
    let mut chunk = Vec::with_capacity(WRITE_CHUNK);
    loop {
        {
            let mut s = buf.lock();
            if s.writing {
                s.writing = false;
                buf.changed.notify_all();
            }
            while s.bytes.is_empty() && !s.closing {
                s = buf.changed.wait(s).unwrap_or_else(|p| p.into_inner());
            }
            if s.bytes.is_empty() {
                return;
            }
            let deadline = Instant::now() + buf.line_wait;
            while !s.flush && !s.closing && s.bytes.len() < WRITE_CHUNK {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                s = buf
                    .changed
                    .wait_timeout(s, left)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            s.flush = false;
            let n = s.bytes.len().min(WRITE_CHUNK);
            chunk.extend(s.bytes.drain(..n));
            s.writing = true;
        }
        let _ = out.write_all(&chunk).and_then(|()| out.flush());
        chunk.clear();
    }
}

/// Output sink that records when the first byte went out and watches for a
/// guest kernel panic. Writes never block: the bytes go to a bounded buffer
/// (drop-oldest) that a thread of its own writes to the host.
pub struct ConsoleOut {
    buffer: Arc<Buffer>,
    capacity: usize,
    control: Arc<VmControl>,
    panic_watch: StreamMatcher,
}

impl ConsoleOut {
    /// Wraps `out`, stamping the first write into `control`'s timeline.
    pub fn new(out: Box<dyn Write + Send>, control: Arc<VmControl>) -> Self {
        Self::with_capacity(out, control, CONSOLE_BUFFER_BYTES)
    }

    /// As [`Self::new`], buffering at most `capacity` bytes.
    pub fn with_capacity(out: Box<dyn Write + Send>, control: Arc<VmControl>, capacity: usize) -> Self {
        Self::with_line_wait(out, control, capacity, LINE_WAIT)
    }

    fn with_line_wait(
        out: Box<dyn Write + Send>,
        control: Arc<VmControl>,
        capacity: usize,
        line_wait: Duration,
    ) -> Self {
        let buffer = Arc::new(Buffer {
            state: Mutex::default(),
            changed: Condvar::new(),
            line_wait,
        });
        let b = buffer.clone();
        if let Err(e) = std::thread::Builder::new().name("console-out".into()).spawn(move || {
            crate::seccomp::apply_or_exit(crate::seccomp::Role::Console);
            drain_to(out, &b)
        }) {
            tracing::warn!("no console output thread ({e}); guest console output is dropped");
        }
        Self {
            buffer,
            capacity: capacity.max(1),
            control,
            panic_watch: StreamMatcher::default(),
        }
    }

    /// Console bytes dropped so far because the host did not take them.
    pub fn dropped(&self) -> u64 {
        self.buffer.lock().dropped
    }

    /// Waits until the buffered bytes went out, at most `timeout`; returns
    /// whether they did.
    pub fn drain(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.buffer.lock();
        if !s.bytes.is_empty() {
            // A line the writer waits to see the end of goes out now.
            s.flush = true;
            self.buffer.changed.notify_all();
        }
        while !s.bytes.is_empty() || s.writing {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = self
                .buffer
                .changed
                .wait_timeout(s, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        true
    }
}

impl Write for ConsoleOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.control.timeline.first_output.get().is_none() {
            let _ = self.control.timeline.first_output.set(Instant::now());
        }
        if self.panic_watch.feed(PANIC_MARKER, buf) {
            self.control.note_guest_panic();
        }
        let mut s = self.buffer.lock();
        let was_empty = s.bytes.is_empty();
        // Only the last `capacity` bytes of `buf` can be kept.
        let keep = &buf[buf.len().saturating_sub(self.capacity)..];
        let over = (s.bytes.len() + keep.len()).saturating_sub(self.capacity);
        s.bytes.drain(..over);
        s.dropped += (over + buf.len() - keep.len()) as u64;
        s.bytes.extend(keep);
        // The writer is woken for a line's first byte and for its end only.
        let line_end = buf.contains(&b'\n');
        s.flush |= line_end;
        if was_empty || line_end {
            self.buffer.changed.notify_all();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for ConsoleOut {
    /// Gives the writer thread `DRAIN_TIMEOUT` (2 s) to put out what is
    /// buffered, then leaves it (it may be blocked on a pipe nobody reads).
    fn drop(&mut self) {
        let drained = self.drain(DRAIN_TIMEOUT);
        let dropped = {
            let mut s = self.buffer.lock();
            s.closing = true;
            self.buffer.changed.notify_all();
            s.dropped + if drained { 0 } else { s.bytes.len() as u64 }
        };
        if dropped > 0 {
            tracing::warn!(
                "{dropped} bytes of guest console output were dropped: the host side did not take them in time"
            );
        }
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

    /// A host side that takes nothing until released, then records.
    struct Stuck {
        gate: Arc<(Mutex<bool>, Condvar)>,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (open, cv) = &*self.gate;
            let mut o = open.lock().expect("gate");
            while !*o {
                o = cv.wait(o).expect("gate");
            }
            self.got.lock().expect("got").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_host_that_does_not_read_never_blocks_the_writer_and_the_oldest_bytes_go() {
        let control = Arc::new(VmControl::new(Instant::now()).expect("control"));
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let got = Arc::new(Mutex::new(Vec::new()));
        let stuck = Stuck {
            gate: gate.clone(),
            got: got.clone(),
        };
        let mut out = ConsoleOut::with_capacity(Box::new(stuck), control.clone(), 100);
        let t = Instant::now();
        // The writer thread takes the first byte and blocks on it; the
        // rest (far more than the buffer holds) must not block us.
        out.write_all(b"A").expect("write");
        std::thread::sleep(Duration::from_millis(50));
        for i in 0..10_000u32 {
            out.write_all(&[b'a' + (i % 26) as u8]).expect("write");
        }
        out.write_all(&[b'z'; 300]).expect("a write bigger than the buffer");
        assert!(t.elapsed() < Duration::from_secs(2), "writes did not block");
        assert_eq!(out.dropped(), 10_000 + 300 - 100);
        assert!(!out.drain(Duration::from_millis(20)), "nothing went out yet");
        assert!(control.timeline.first_output.get().is_some());
        *gate.0.lock().expect("gate") = true;
        gate.1.notify_all();
        assert!(out.drain(Duration::from_secs(5)));
        let got = got.lock().expect("got").clone();
        assert_eq!(got.len(), 1 + 100, "the first byte, then the newest 100");
        assert!(got[1..].iter().all(|&b| b == b'z'));
    }

    #[test]
    fn everything_goes_out_when_the_host_keeps_up() {
        let control = Arc::new(VmControl::new(Instant::now()).expect("control"));
        let got = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new((Mutex::new(true), Condvar::new()));
        let mut out = ConsoleOut::new(Box::new(Stuck { gate, got: got.clone() }), control);
        let text: Vec<u8> = (0..100_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        for b in &text {
            out.write_all(std::slice::from_ref(b)).expect("write");
        }
        drop(out);
        assert_eq!(
            *got.lock().expect("got"),
            text,
            "dropping the sink waits for the output"
        );
    }

    /// Records each write call's bytes.
    struct Writes(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Writes {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("writes").push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_written_a_byte_at_a_time_goes_out_in_one_write_and_a_partial_line_goes_out_anyway() {
        let control = Arc::new(VmControl::new(Instant::now()).expect("control"));
        let writes = Arc::new(Mutex::new(Vec::new()));
        // A wait long enough that only the newline can end it, however slow this host.
        let long = Duration::from_secs(60);
        let mut out = ConsoleOut::with_line_wait(Box::new(Writes(writes.clone())), control, 1 << 10, long);
        for b in b"GUEST-READY tiny-pvh\n" {
            out.write_all(std::slice::from_ref(b)).expect("write");
        }
        assert!(out.drain(Duration::from_secs(5)));
        assert_eq!(
            *writes.lock().expect("writes"),
            vec![b"GUEST-READY tiny-pvh\n".to_vec()]
        );
        drop(out);
        // A prompt with no newline is not held back for good.
        let control = Arc::new(VmControl::new(Instant::now()).expect("control"));
        let writes = Arc::new(Mutex::new(Vec::new()));
        let mut out = ConsoleOut::new(Box::new(Writes(writes.clone())), control);
        out.write_all(b"login: ").expect("write");
        let deadline = Instant::now() + Duration::from_secs(30);
        while writes.lock().expect("writes").is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(*writes.lock().expect("writes"), vec![b"login: ".to_vec()]);
    }
}
