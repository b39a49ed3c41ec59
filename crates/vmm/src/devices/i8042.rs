//! The i8042 keyboard controller with a PS/2 keyboard attached and no AUX
//! (mouse) port, answering like the real parts so Linux's `i8042` and
//! `atkbd` drivers probe it without timeouts:
//!
//! - the controller: configuration byte (CTR) read/write, self tests,
//!   keyboard interface disable/enable (0xad/0xae), AUX disable/enable
//!   (0xa7/0xa8: there is no AUX port, so its interface never enables; a
//!   Linux that probes AUX gives up after its 100 CTR reads, ~5 ms, instead
//!   of waiting for an AUX interrupt; told by the DSDT of a PNP0303 device
//!   and no PNP0F13 it does not probe AUX at all), AUX loopback
//!   (0xd3), writes to the AUX device (0xd4: nobody answers, so a timeout
//!   byte 0xfe comes back on the AUX channel), the output port (0xd0/0xd1;
//!   bit 0 is the reset line) and 0xfe (pulse the reset line: `reboot=k`
//!   ends the VM). The status register reports the keyboard as
//!   not inhibited (bit 4: no "Keylock active").
//! - the keyboard: every command written to the data port is acknowledged
//!   (0xfa) and answered — reset (0xff: fa aa), get id (0xf2: fa ab 83, the 0x83
//!   translated to 0x41 like every keyboard byte when the CTR asks for it),
//!   scancode set (0xf0 N), LEDs (0xed N), typematic (0xf3 N), enable,
//!   disable, defaults (0xf4/0xf5/0xf6), echo (0xee), set-3 key modes;
//!   anything else gets 0xfe (resend), which Linux's libps2 takes as "not
//!   supported".
//! - the VMM presses Ctrl-Alt-Del (`SendCtrlAltDel`): the keyboard sends
//!   the make and break codes of the scancode set in use, and the
//!   controller translates them to set 1 when the CTR asks for it (the PC
//!   default, where Linux reports an "AT Translated Set 2 keyboard").
//!
//! Every byte that reaches the output buffer from the keyboard raises IRQ 1
//! (an irqfd) when the CTR enables the keyboard interrupt. Controller
//! answers (which Linux polls with interrupts off) raise none, and IRQ 12
//! is not wired: there is no AUX device to interrupt for.
//!
//! Nothing a guest writes can grow the device's state without bound: the
//! keyboard holds at most [`KBD_FIFO_LEN`] bytes (a command replaces
//! whatever it had not sent yet), the controller one output byte and one
//! keyboard byte set aside behind a controller answer.

use std::collections::VecDeque;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use kvmkit_guest_abi::I8042_RESET;

use crate::bus::BusDevice;
use crate::control::{ExitReason, VmControl};

/// Port base of the i8042 (data port 0x60; command/status is at +4).
pub const I8042_BASE: u64 = 0x60;
/// Ports the device spans (0x60..=0x64).
pub const I8042_LEN: u64 = 5;
/// Keyboard IRQ (ISA IRQ 1).
pub const I8042_KBD_IRQ: u32 = 1;

const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;

// Status register (read from the command port).
const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM_FLAG: u8 = 0x04;
/// The last write went to the command port (0) or the data port (1 = command).
const STATUS_COMMAND: u8 = 0x08;
/// The keyboard is not inhibited (the keylock switch is open). Linux warns
/// "Keylock active" when this bit is clear.
const STATUS_NOT_INHIBITED: u8 = 0x10;
/// The output buffer holds a byte from the AUX channel.
const STATUS_AUX_DATA: u8 = 0x20;
/// The device did not answer (a write to the absent AUX device).
const STATUS_TIMEOUT: u8 = 0x40;

// Controller configuration byte (CTR).
const CTR_KBD_INT: u8 = 0x01;
const CTR_SYSTEM_FLAG: u8 = 0x04;
const CTR_KBD_DISABLED: u8 = 0x10;
/// AUX interface disabled: always set, there is no AUX port to enable.
const CTR_AUX_DISABLED: u8 = 0x20;
/// Translate the keyboard's scancodes to set 1.
const CTR_TRANSLATE: u8 = 0x40;
/// The CTR at power-on, as a PC BIOS leaves it: keyboard interrupt on,
/// system flag, translation, AUX disabled.
const POWER_ON_CTR: u8 = CTR_TRANSLATE | CTR_AUX_DISABLED | CTR_SYSTEM_FLAG | CTR_KBD_INT;

// Controller commands (written to the command port).
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_INTERFACE_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_INTERFACE_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_WRITE_KBD_OUTPUT: u8 = 0xd2;
const CMD_WRITE_AUX_OUTPUT: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;
// 0xf0..=0xff pulse the output port lines whose bits are clear in the low
// nibble: only [`I8042_RESET`] (0xfe, the reset line alone) is acted on.

const SELF_TEST_OK: u8 = 0x55;
const INTERFACE_TEST_OK: u8 = 0x00;
/// Output port at power-on: reset line high (not asserted), A20 enabled.
const POWER_ON_OUTPUT_PORT: u8 = 0x03;
/// What the controller reports after a write to the absent AUX device.
const AUX_NO_DEVICE: u8 = 0xfe;

// Keyboard commands (written to the data port) and answers.
const KBD_SET_LEDS: u8 = 0xed;
const KBD_ECHO: u8 = 0xee;
const KBD_SCANCODE_SET: u8 = 0xf0;
const KBD_GET_ID: u8 = 0xf2;
const KBD_TYPEMATIC: u8 = 0xf3;
const KBD_ENABLE: u8 = 0xf4;
const KBD_DISABLE: u8 = 0xf5;
const KBD_DEFAULTS: u8 = 0xf6;
/// Set-3 "all keys" modes (typematic, make/break, make only, all).
const KBD_SET3_ALL_FIRST: u8 = 0xf7;
const KBD_SET3_ALL_LAST: u8 = 0xfa;
/// Set-3 per-key modes: a list of key codes follows, up to the next command.
const KBD_SET3_KEY_FIRST: u8 = 0xfb;
const KBD_SET3_KEY_LAST: u8 = 0xfd;
const KBD_RESEND: u8 = 0xfe;
const KBD_RESET: u8 = 0xff;

const KBD_ACK: u8 = 0xfa;
const KBD_BAT_OK: u8 = 0xaa;
/// An MF2 keyboard's id.
const KBD_ID: [u8; 2] = [0xab, 0x83];
/// The break prefix of scancode sets 2 and 3.
const BREAK_PREFIX: u8 = 0xf0;

/// Most bytes the keyboard holds waiting for the controller (a real PS/2
/// keyboard's buffer is 16 bytes).
pub const KBD_FIFO_LEN: usize = 16;

/// Ctrl, Alt and Del pressed, then released, in scancode set 1, 2 and 3.
const CTRL_ALT_DEL_SET1: &[u8] = &[0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];
const CTRL_ALT_DEL_SET2: &[u8] = &[0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14];
const CTRL_ALT_DEL_SET3: &[u8] = &[0x11, 0x19, 0x64, 0xf0, 0x64, 0xf0, 0x19, 0xf0, 0x11];

/// The 8042's set 2 to set 1 translation for every byte this keyboard can
/// send (its answers and the Ctrl-Alt-Del codes); bytes from 0x84 up pass
/// unchanged on the real part too.
fn translate(byte: u8) -> u8 {
    match byte {
        0x01 => 0x43, // "scancode set 1" answer
        0x02 => 0x41, // "scancode set 2"
        0x03 => 0x3f, // "scancode set 3"
        0x11 => 0x38, // left Alt
        0x14 => 0x1d, // left Ctrl
        0x71 => 0x53, // Delete (after 0xe0)
        0x83 => 0x41, // second id byte
        other => other,
    }
}

/// Where the byte in the output buffer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Source {
    /// A controller command's answer.
    Controller,
    /// The keyboard (or a 0xd2 write).
    Keyboard,
    /// The AUX channel (0xd3 loopback).
    Aux,
    /// The AUX channel, with the timeout bit: the device did not answer.
    AuxTimeout,
}

/// The PS/2 keyboard behind the controller.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Keyboard {
    /// Bytes to send, oldest first (at most [`KBD_FIFO_LEN`]).
    fifo: VecDeque<u8>,
    /// The command whose argument the next byte is.
    awaiting: Option<u8>,
    /// Scancode set (1, 2 or 3).
    set: u8,
    /// Scanning enabled: key presses are sent.
    scanning: bool,
    /// LED state (scroll, num, caps lock in bits 0-2).
    leds: u8,
    /// The last byte sent, for a resend request.
    last_sent: u8,
}

impl Keyboard {
    fn new() -> Self {
        Self {
            fifo: VecDeque::with_capacity(KBD_FIFO_LEN),
            awaiting: None,
            set: 2,
            scanning: true,
            leds: 0,
            last_sent: KBD_ACK,
        }
    }

    /// Power-on defaults (reset, 0xf5, 0xf6): empty buffer, set 2, LEDs off.
    fn defaults(&mut self) {
        self.fifo.clear();
        self.awaiting = None;
        self.set = 2;
        self.leds = 0;
    }

    /// A command ends whatever the keyboard had not sent yet; `bytes` is
    /// its answer.
    fn answer(&mut self, bytes: &[u8]) {
        self.fifo.clear();
        self.fifo.extend(bytes.iter().take(KBD_FIFO_LEN));
    }

    /// A byte from the controller: a command or a command's argument.
    fn receive(&mut self, byte: u8) {
        if let Some(cmd) = self.awaiting.take() {
            // Arguments have bit 7 clear; a byte with it set is a new command.
            if byte & 0x80 == 0 {
                self.argument(cmd, byte);
                return;
            }
        }
        match byte {
            KBD_SET_LEDS | KBD_SCANCODE_SET | KBD_TYPEMATIC | KBD_SET3_KEY_FIRST..=KBD_SET3_KEY_LAST => {
                self.awaiting = Some(byte);
                self.answer(&[KBD_ACK]);
            }
            KBD_ECHO => self.answer(&[KBD_ECHO]),
            KBD_GET_ID => self.answer(&[KBD_ACK, KBD_ID[0], KBD_ID[1]]),
            KBD_ENABLE => {
                self.scanning = true;
                self.answer(&[KBD_ACK]);
            }
            KBD_DISABLE => {
                self.defaults();
                self.scanning = false;
                self.answer(&[KBD_ACK]);
            }
            KBD_DEFAULTS => {
                self.defaults();
                self.scanning = true;
                self.answer(&[KBD_ACK]);
            }
            KBD_SET3_ALL_FIRST..=KBD_SET3_ALL_LAST => self.answer(&[KBD_ACK]),
            KBD_RESEND => {
                let last = self.last_sent;
                self.answer(&[last]);
            }
            KBD_RESET => {
                self.defaults();
                self.scanning = true;
                self.answer(&[KBD_ACK, KBD_BAT_OK]);
            }
            // Not a command this keyboard knows: ask for another byte.
            _ => self.answer(&[KBD_RESEND]),
        }
    }

    fn argument(&mut self, cmd: u8, arg: u8) {
        match cmd {
            KBD_SCANCODE_SET => match arg {
                0 => {
                    let set = self.set;
                    self.answer(&[KBD_ACK, set]);
                }
                1..=3 => {
                    self.set = arg;
                    self.answer(&[KBD_ACK]);
                }
                _ => self.answer(&[KBD_RESEND]),
            },
            KBD_SET_LEDS => {
                self.leds = arg & 0x07;
                self.answer(&[KBD_ACK]);
            }
            KBD_SET3_KEY_FIRST..=KBD_SET3_KEY_LAST => {
                // A list of keys: keep taking them until the next command.
                self.awaiting = Some(cmd);
                self.answer(&[KBD_ACK]);
            }
            // KBD_TYPEMATIC: rate and delay, nothing to do for a virtual key.
            _ => self.answer(&[KBD_ACK]),
        }
    }

    /// Queues `codes` whole (make and break codes of a key combination);
    /// false when scanning is off or they do not fit.
    fn press(&mut self, codes: &[u8]) -> bool {
        if !self.scanning || self.fifo.len() + codes.len() > KBD_FIFO_LEN {
            return false;
        }
        self.fifo.extend(codes.iter().copied());
        true
    }

    /// The next byte to send to the controller.
    fn pop(&mut self) -> Option<u8> {
        let b = self.fifo.pop_front()?;
        self.last_sent = b;
        Some(b)
    }
}

/// The i8042 device.
pub struct I8042 {
    control: Arc<VmControl>,
    ctr: u8,
    output_port: u8,
    /// The output buffer: what the next data-port read returns.
    output: Option<(u8, Source)>,
    /// A keyboard byte set aside when a controller answer took the output
    /// buffer; it comes back before the keyboard's next one.
    held: Option<u8>,
    /// What a data-port read returns when the output buffer is empty (the
    /// last byte read, as on the real part).
    last_read: u8,
    /// The command whose data byte the next data-port write carries.
    pending: Option<u8>,
    /// The last write went to the command port.
    last_write_command: bool,
    /// Translation saw a break prefix: the next byte gets bit 7.
    translate_break: bool,
    keyboard: Keyboard,
    /// Raises IRQ 1 (an irqfd), when wired.
    kbd_irq: Option<EventFd>,
}

/// The controller's and keyboard's registers, for snapshots (opaque).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct I8042State {
    ctr: u8,
    output_port: u8,
    output: Option<(u8, Source)>,
    held: Option<u8>,
    last_read: u8,
    pending: Option<u8>,
    last_write_command: bool,
    translate_break: bool,
    keyboard: Keyboard,
}

impl I8042 {
    /// The registers, for a snapshot.
    pub fn state(&self) -> I8042State {
        I8042State {
            ctr: self.ctr,
            output_port: self.output_port,
            output: self.output,
            held: self.held,
            last_read: self.last_read,
            pending: self.pending,
            last_write_command: self.last_write_command,
            translate_break: self.translate_break,
            keyboard: self.keyboard.clone(),
        }
    }

    /// Takes saved registers (checked: the state file is input).
    pub fn restore_state(&mut self, s: &I8042State) -> Result<(), String> {
        if s.keyboard.fifo.len() > KBD_FIFO_LEN || !(1..=3).contains(&s.keyboard.set) {
            return Err("i8042 state: keyboard buffer too long or no such scancode set".into());
        }
        self.ctr = s.ctr;
        self.output_port = s.output_port;
        self.output = s.output;
        self.held = s.held;
        self.last_read = s.last_read;
        self.pending = s.pending;
        self.last_write_command = s.last_write_command;
        self.translate_break = s.translate_break;
        self.keyboard = s.keyboard.clone();
        Ok(())
    }

    /// An i8042 that ends the VM on a reset command.
    pub fn new(control: Arc<VmControl>) -> Self {
        Self {
            control,
            ctr: POWER_ON_CTR,
            output_port: POWER_ON_OUTPUT_PORT,
            output: None,
            held: None,
            last_read: 0,
            pending: None,
            last_write_command: false,
            translate_break: false,
            keyboard: Keyboard::new(),
            kbd_irq: None,
        }
    }

    /// Wires the keyboard interrupt (an irqfd registered for IRQ 1).
    pub fn with_kbd_irq(mut self, irq: EventFd) -> Self {
        self.kbd_irq = Some(irq);
        self
    }

    /// Presses and releases Ctrl-Alt-Del. Returns false when nothing was
    /// queued: the guest has not read the previous keys yet, or it turned
    /// the keyboard's scanning off.
    pub fn trigger_ctrl_alt_del(&mut self) -> bool {
        let codes = match self.keyboard.set {
            1 => CTRL_ALT_DEL_SET1,
            3 => CTRL_ALT_DEL_SET3,
            _ => CTRL_ALT_DEL_SET2,
        };
        if !self.keyboard.press(codes) {
            return false;
        }
        self.feed();
        true
    }

    fn kbd_interrupt(&self) {
        if self.ctr & CTR_KBD_INT != 0 {
            if let Some(irq) = &self.kbd_irq {
                // A failed eventfd write means an interrupt is pending anyway.
                let _ = irq.write(1);
            }
        }
    }

    /// Puts `byte` in the output buffer. A keyboard byte the guest has not
    /// read yet is set aside (it comes next), so a controller answer does
    /// not lose a key.
    fn put(&mut self, byte: u8, source: Source) {
        if let Some((k, Source::Keyboard)) = self.output {
            if self.held.is_none() {
                self.held = Some(k);
            }
        }
        self.output = Some((byte, source));
        if source == Source::Keyboard {
            self.kbd_interrupt();
        }
    }

    /// Moves the keyboard's next byte into an empty output buffer (through
    /// the set 1 translation when the CTR asks for it) and interrupts.
    fn feed(&mut self) {
        if self.output.is_some() {
            return;
        }
        if let Some(b) = self.held.take() {
            self.put(b, Source::Keyboard);
            return;
        }
        if self.ctr & CTR_KBD_DISABLED != 0 {
            return;
        }
        while let Some(b) = self.keyboard.pop() {
            if self.ctr & CTR_TRANSLATE == 0 {
                self.put(b, Source::Keyboard);
                return;
            }
            if b == BREAK_PREFIX {
                self.translate_break = true;
                continue;
            }
            let brk = if std::mem::take(&mut self.translate_break) {
                0x80
            } else {
                0
            };
            self.put(translate(b) | brk, Source::Keyboard);
            return;
        }
    }

    fn set_ctr(&mut self, value: u8) {
        let old = self.ctr;
        // No AUX port: its interface stays disabled whatever is written.
        self.ctr = value | CTR_AUX_DISABLED;
        if old & CTR_KBD_INT == 0 && matches!(self.output, Some((_, Source::Keyboard))) {
            self.kbd_interrupt();
        }
        self.feed();
    }

    fn reset(&self, why: &'static str) {
        self.control.request_exit(ExitReason::Reset(why));
    }

    fn command(&mut self, cmd: u8) {
        self.last_write_command = true;
        // A new command abandons one still waiting for its data byte.
        self.pending = None;
        match cmd {
            CMD_READ_CTR => self.put(self.ctr, Source::Controller),
            CMD_WRITE_CTR | CMD_WRITE_OUTPUT_PORT | CMD_WRITE_KBD_OUTPUT | CMD_WRITE_AUX_OUTPUT | CMD_WRITE_AUX => {
                self.pending = Some(cmd)
            }
            CMD_AUX_DISABLE => self.ctr |= CTR_AUX_DISABLED,
            // No AUX port: its interface cannot be enabled (Linux reads the
            // CTR back and gives up on AUX).
            CMD_AUX_ENABLE => {}
            CMD_SELF_TEST => self.put(SELF_TEST_OK, Source::Controller),
            CMD_KBD_INTERFACE_TEST | CMD_AUX_INTERFACE_TEST => self.put(INTERFACE_TEST_OK, Source::Controller),
            CMD_KBD_DISABLE => self.set_ctr(self.ctr | CTR_KBD_DISABLED),
            CMD_KBD_ENABLE => self.set_ctr(self.ctr & !CTR_KBD_DISABLED),
            CMD_READ_OUTPUT_PORT => self.put(self.output_port, Source::Controller),
            I8042_RESET => self.reset("i8042 reset"),
            _ => {}
        }
    }

    fn data(&mut self, value: u8) {
        self.last_write_command = false;
        match self.pending.take() {
            Some(CMD_WRITE_CTR) => self.set_ctr(value),
            Some(CMD_WRITE_OUTPUT_PORT) => {
                self.output_port = value;
                if value & 1 == 0 {
                    self.reset("i8042 output port reset");
                }
            }
            Some(CMD_WRITE_KBD_OUTPUT) => self.put(value, Source::Keyboard),
            Some(CMD_WRITE_AUX_OUTPUT) => self.put(value, Source::Aux),
            // Nothing is attached to the AUX port: the write times out.
            Some(CMD_WRITE_AUX) => self.put(AUX_NO_DEVICE, Source::AuxTimeout),
            _ => {
                // A byte for the keyboard; sending it re-enables the
                // keyboard interface, as on the real part.
                self.ctr &= !CTR_KBD_DISABLED;
                self.translate_break = false;
                self.keyboard.receive(value);
                self.feed();
            }
        }
    }

    fn status(&self) -> u8 {
        let mut s = STATUS_NOT_INHIBITED;
        if self.ctr & CTR_SYSTEM_FLAG != 0 {
            s |= STATUS_SYSTEM_FLAG;
        }
        if self.last_write_command {
            s |= STATUS_COMMAND;
        }
        match self.output {
            Some((_, Source::Controller | Source::Keyboard)) => s |= STATUS_OUTPUT_FULL,
            Some((_, Source::Aux)) => s |= STATUS_OUTPUT_FULL | STATUS_AUX_DATA,
            Some((_, Source::AuxTimeout)) => s |= STATUS_OUTPUT_FULL | STATUS_AUX_DATA | STATUS_TIMEOUT,
            None => {}
        }
        s
    }

    fn read_data(&mut self) -> u8 {
        match self.output.take() {
            Some((b, _)) => {
                self.last_read = b;
                self.feed();
                b
            }
            None => self.last_read,
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(first) = data.first_mut() else { return };
        *first = match offset {
            DATA_OFFSET => self.read_data(),
            COMMAND_OFFSET => self.status(),
            _ => 0,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            COMMAND_OFFSET => self.command(value),
            DATA_OFFSET => self.data(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod linux_probe;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    pub(super) fn dev() -> (Arc<VmControl>, I8042, EventFd) {
        let c = Arc::new(VmControl::new(Instant::now()).expect("control"));
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let d = I8042::new(c.clone()).with_kbd_irq(irq.try_clone().expect("clone"));
        (c, d, irq)
    }

    fn read(d: &mut I8042, offset: u64) -> u8 {
        let mut b = [0u8];
        d.read(offset, &mut b);
        b[0]
    }

    fn status(d: &mut I8042) -> u8 {
        read(d, COMMAND_OFFSET)
    }

    /// Reads every byte waiting, as Linux's i8042 driver does: status, then data.
    fn drain(d: &mut I8042) -> Vec<u8> {
        let mut got = Vec::new();
        while status(d) & STATUS_OUTPUT_FULL != 0 {
            got.push(read(d, DATA_OFFSET));
            assert!(got.len() <= 64, "the output never empties: {got:x?}");
        }
        got
    }

    /// Interrupts raised since the last call.
    pub(super) fn irqs(irq: &EventFd) -> u64 {
        irq.read().unwrap_or(0)
    }

    /// A keyboard command (and arguments) on the data port, and its answer.
    pub(super) fn kbd(d: &mut I8042, bytes: &[u8]) -> Vec<u8> {
        let mut got = Vec::new();
        for &b in bytes {
            d.write(DATA_OFFSET, &[b]);
            got.extend(drain(d));
        }
        got
    }

    pub(super) fn controller(d: &mut I8042, cmd: u8) -> Vec<u8> {
        d.write(COMMAND_OFFSET, &[cmd]);
        drain(d)
    }

    fn write_ctr(d: &mut I8042, ctr: u8) {
        d.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        d.write(DATA_OFFSET, &[ctr]);
    }

    #[test]
    fn reset_command_ends_the_vm() {
        let (c, mut d, _) = dev();
        d.write(DATA_OFFSET, &[I8042_RESET]);
        assert!(c.reason().is_none(), "0xfe on the data port is not a reset");
        d.write(COMMAND_OFFSET, &[CMD_KBD_DISABLE]);
        d.write(COMMAND_OFFSET, &[0xff]);
        assert!(c.reason().is_none(), "0xff pulses no line");
        d.write(COMMAND_OFFSET, &[0xf0]);
        assert!(c.reason().is_none(), "only 0xfe resets");
        d.write(COMMAND_OFFSET, &[I8042_RESET]);
        assert_eq!(c.reason(), Some(ExitReason::Reset("i8042 reset")));
    }

    #[test]
    fn output_port_reset_line_ends_the_vm() {
        let (c, mut d, _) = dev();
        assert_eq!(controller(&mut d, CMD_READ_OUTPUT_PORT), [POWER_ON_OUTPUT_PORT]);
        d.write(COMMAND_OFFSET, &[CMD_WRITE_OUTPUT_PORT]);
        d.write(DATA_OFFSET, &[0x03]);
        assert!(c.reason().is_none());
        d.write(COMMAND_OFFSET, &[CMD_WRITE_OUTPUT_PORT]);
        d.write(DATA_OFFSET, &[0xfe]);
        assert_eq!(c.reason(), Some(ExitReason::Reset("i8042 output port reset")));
    }

    #[test]
    fn status_reports_no_keylock_and_the_system_flag() {
        let (_, mut d, _) = dev();
        let s = status(&mut d);
        assert_ne!(s & STATUS_NOT_INHIBITED, 0, "Linux would warn 'Keylock active'");
        assert_ne!(s & STATUS_SYSTEM_FLAG, 0);
        assert_eq!(s & (STATUS_OUTPUT_FULL | STATUS_AUX_DATA | STATUS_TIMEOUT), 0);
        d.write(COMMAND_OFFSET, &[CMD_KBD_DISABLE]);
        assert_ne!(status(&mut d) & STATUS_COMMAND, 0);
        d.write(DATA_OFFSET, &[KBD_ENABLE]);
        assert_eq!(status(&mut d) & STATUS_COMMAND, 0);
    }

    /// What Linux's i8042_controller_init and selftest do.
    #[test]
    fn linux_controller_init() {
        let (_, mut d, irq) = dev();
        assert!(drain(&mut d).is_empty(), "nothing to flush");
        let ctr = controller(&mut d, CMD_READ_CTR);
        assert_eq!(ctr, [POWER_ON_CTR]);
        assert_eq!(controller(&mut d, CMD_READ_CTR), ctr, "a stable CTR");
        assert_eq!(controller(&mut d, CMD_SELF_TEST), [SELF_TEST_OK]);
        assert_eq!(controller(&mut d, CMD_KBD_INTERFACE_TEST), [INTERFACE_TEST_OK]);
        // Keyboard interface off, interrupt off, written back and read back.
        write_ctr(&mut d, (POWER_ON_CTR | CTR_KBD_DISABLED) & !CTR_KBD_INT);
        assert_eq!(
            controller(&mut d, CMD_READ_CTR),
            [(POWER_ON_CTR | CTR_KBD_DISABLED) & !CTR_KBD_INT]
        );
        assert_eq!(irqs(&irq), 0, "controller answers are polled, not interrupts");
    }

    /// Linux's i8042_check_aux: the loopback works, AUX disables, but it
    /// never enables, so Linux decides there is no AUX port without waiting
    /// for an interrupt.
    #[test]
    fn aux_port_is_absent() {
        let (_, mut d, irq) = dev();
        d.write(COMMAND_OFFSET, &[CMD_WRITE_AUX_OUTPUT]);
        d.write(DATA_OFFSET, &[0x5a]);
        let s = status(&mut d);
        assert_eq!(
            s & (STATUS_OUTPUT_FULL | STATUS_AUX_DATA),
            STATUS_OUTPUT_FULL | STATUS_AUX_DATA
        );
        assert_eq!(read(&mut d, DATA_OFFSET), 0x5a);
        assert_eq!(status(&mut d) & STATUS_OUTPUT_FULL, 0);
        d.write(COMMAND_OFFSET, &[CMD_AUX_DISABLE]);
        assert_ne!(controller(&mut d, CMD_READ_CTR)[0] & CTR_AUX_DISABLED, 0);
        d.write(COMMAND_OFFSET, &[CMD_AUX_ENABLE]);
        assert_ne!(
            controller(&mut d, CMD_READ_CTR)[0] & CTR_AUX_DISABLED,
            0,
            "AUX never enables"
        );
        write_ctr(&mut d, POWER_ON_CTR & !CTR_AUX_DISABLED);
        assert_ne!(controller(&mut d, CMD_READ_CTR)[0] & CTR_AUX_DISABLED, 0);
        assert_eq!(controller(&mut d, CMD_AUX_INTERFACE_TEST), [INTERFACE_TEST_OK]);
        // A byte for the mouse: nobody answers, the controller reports a timeout.
        d.write(COMMAND_OFFSET, &[CMD_WRITE_AUX]);
        d.write(DATA_OFFSET, &[0xf2]);
        let s = status(&mut d);
        assert_eq!(
            s & (STATUS_OUTPUT_FULL | STATUS_AUX_DATA | STATUS_TIMEOUT),
            STATUS_OUTPUT_FULL | STATUS_AUX_DATA | STATUS_TIMEOUT
        );
        assert_eq!(read(&mut d, DATA_OFFSET), AUX_NO_DEVICE);
        assert!(drain(&mut d).is_empty(), "the keyboard did not get the mouse's byte");
        assert_eq!(irqs(&irq), 0);
    }

    /// atkbd's probe and set-up in translated mode (the power-on CTR):
    /// every byte comes with an interrupt.
    #[test]
    fn atkbd_probe_translated() {
        let (_, mut d, irq) = dev();
        assert_eq!(kbd(&mut d, &[KBD_RESET]), [KBD_ACK, KBD_BAT_OK]);
        assert_eq!(irqs(&irq), 2, "one interrupt per byte");
        assert_eq!(kbd(&mut d, &[KBD_GET_ID]), [KBD_ACK, 0xab, 0x41], "0x83 translated");
        assert_eq!(kbd(&mut d, &[KBD_DISABLE]), [KBD_ACK]);
        assert_eq!(kbd(&mut d, &[KBD_SET_LEDS, 0x00]), [KBD_ACK, KBD_ACK]);
        assert_eq!(kbd(&mut d, &[KBD_TYPEMATIC, 0x00]), [KBD_ACK, KBD_ACK]);
        assert_eq!(kbd(&mut d, &[KBD_ENABLE]), [KBD_ACK]);
        assert_eq!(
            kbd(&mut d, &[KBD_SCANCODE_SET, 0]),
            [KBD_ACK, KBD_ACK, 0x41],
            "set 2, translated"
        );
        assert_eq!(kbd(&mut d, &[KBD_DEFAULTS]), [KBD_ACK]);
        assert_eq!(irqs(&irq), 3 + 1 + 2 + 2 + 1 + 3 + 1);
    }

    /// The same without translation (i8042.direct, or a CTR like Firecracker's).
    #[test]
    fn atkbd_probe_raw() {
        let (_, mut d, _) = dev();
        write_ctr(&mut d, CTR_SYSTEM_FLAG | CTR_KBD_INT);
        assert_eq!(kbd(&mut d, &[KBD_GET_ID]), [KBD_ACK, 0xab, 0x83]);
        assert_eq!(kbd(&mut d, &[KBD_SCANCODE_SET, 0]), [KBD_ACK, KBD_ACK, 2]);
        assert_eq!(kbd(&mut d, &[KBD_SCANCODE_SET, 3]), [KBD_ACK, KBD_ACK]);
        assert_eq!(kbd(&mut d, &[KBD_SCANCODE_SET, 0]), [KBD_ACK, KBD_ACK, 3]);
        assert_eq!(kbd(&mut d, &[KBD_SCANCODE_SET, 9]), [KBD_ACK, KBD_RESEND], "no set 9");
        // Set-3 modes: all keys, then a list of keys up to the next command.
        assert_eq!(kbd(&mut d, &[0xf8]), [KBD_ACK]);
        assert_eq!(kbd(&mut d, &[0xfb, 0x11, 0x19]), [KBD_ACK, KBD_ACK, KBD_ACK]);
        assert_eq!(kbd(&mut d, &[KBD_ECHO]), [KBD_ECHO]);
        assert_eq!(kbd(&mut d, &[KBD_RESEND]), [KBD_ECHO], "the last byte again");
        assert_eq!(kbd(&mut d, &[KBD_RESET]), [KBD_ACK, KBD_BAT_OK]);
        assert_eq!(
            kbd(&mut d, &[KBD_SCANCODE_SET, 0]),
            [KBD_ACK, KBD_ACK, 2],
            "reset: set 2"
        );
    }

    #[test]
    fn unknown_keyboard_commands_get_resend() {
        let (_, mut d, _) = dev();
        // 0xea (atkbd's "extra" enable), mouse commands, junk.
        for cmd in [0xea, 0xe8, 0xe6, 0x00, 0x42, 0xec] {
            assert_eq!(kbd(&mut d, &[cmd]), [KBD_RESEND], "{cmd:#x}");
        }
        // A command in place of an argument is run as a command.
        assert_eq!(kbd(&mut d, &[KBD_SET_LEDS, KBD_GET_ID]), [KBD_ACK, KBD_ACK, 0xab, 0x41]);
    }

    #[test]
    fn keyboard_interrupt_follows_the_ctr() {
        let (_, mut d, irq) = dev();
        write_ctr(&mut d, POWER_ON_CTR & !CTR_KBD_INT);
        d.write(DATA_OFFSET, &[KBD_ECHO]);
        assert_eq!(irqs(&irq), 0, "interrupt off: polled");
        // Turning the interrupt on with a byte waiting raises it.
        write_ctr(&mut d, POWER_ON_CTR);
        assert_eq!(irqs(&irq), 1);
        assert_eq!(drain(&mut d), [KBD_ECHO]);
    }

    #[test]
    fn disabled_keyboard_interface_holds_bytes_back() {
        let (_, mut d, irq) = dev();
        d.write(COMMAND_OFFSET, &[CMD_KBD_DISABLE]);
        assert!(d.trigger_ctrl_alt_del());
        assert!(drain(&mut d).is_empty(), "the interface is off");
        assert_eq!(irqs(&irq), 0);
        assert_eq!(controller(&mut d, CMD_KBD_ENABLE), CTRL_ALT_DEL_SET1);
        assert_eq!(irqs(&irq), CTRL_ALT_DEL_SET1.len() as u64);
        // Writing to the keyboard re-enables its interface too.
        d.write(COMMAND_OFFSET, &[CMD_KBD_DISABLE]);
        assert_eq!(kbd(&mut d, &[KBD_ECHO]), [KBD_ECHO]);
        assert_eq!(controller(&mut d, CMD_READ_CTR)[0] & CTR_KBD_DISABLED, 0);
    }

    #[test]
    fn ctrl_alt_del_translated_is_set_1() {
        let (_, mut d, irq) = dev();
        assert!(d.trigger_ctrl_alt_del());
        assert_eq!(drain(&mut d), CTRL_ALT_DEL_SET1);
        assert_eq!(irqs(&irq), CTRL_ALT_DEL_SET1.len() as u64, "one interrupt per byte");
    }

    #[test]
    fn ctrl_alt_del_follows_the_scancode_set() {
        let (_, mut d, _) = dev();
        write_ctr(&mut d, CTR_SYSTEM_FLAG | CTR_KBD_INT);
        assert!(d.trigger_ctrl_alt_del());
        assert_eq!(drain(&mut d), CTRL_ALT_DEL_SET2);
        for (set, codes) in [(1, CTRL_ALT_DEL_SET1), (3, CTRL_ALT_DEL_SET3)] {
            kbd(&mut d, &[KBD_SCANCODE_SET, set]);
            assert!(d.trigger_ctrl_alt_del());
            assert_eq!(drain(&mut d), codes, "set {set}");
        }
    }

    #[test]
    fn controller_answers_do_not_lose_keys() {
        let (_, mut d, _) = dev();
        assert!(d.trigger_ctrl_alt_del());
        // The first key is in the output buffer; the guest reads the CTR.
        assert_eq!(controller(&mut d, CMD_READ_CTR)[0], POWER_ON_CTR);
        // controller() drained the rest: check a fresh sequence the other way.
        assert!(d.trigger_ctrl_alt_del());
        d.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        assert_eq!(read(&mut d, DATA_OFFSET), POWER_ON_CTR);
        assert_eq!(drain(&mut d), CTRL_ALT_DEL_SET1, "every key after the answer");
    }

    #[test]
    fn scanning_off_refuses_keys_and_the_queue_is_bounded() {
        let (_, mut d, _) = dev();
        kbd(&mut d, &[KBD_DISABLE]);
        assert!(!d.trigger_ctrl_alt_del(), "scanning is off");
        kbd(&mut d, &[KBD_ENABLE]);
        // A guest that never reads cannot make the queue grow.
        let accepted = (0..100).filter(|_| d.trigger_ctrl_alt_del()).count();
        assert_eq!(accepted, 1, "one sequence fits behind the output buffer");
        assert!(d.keyboard.fifo.len() <= KBD_FIFO_LEN);
        assert_eq!(drain(&mut d), CTRL_ALT_DEL_SET1);
        assert!(d.trigger_ctrl_alt_del(), "room again once read");
    }

    #[test]
    fn empty_reads_return_the_last_byte() {
        let (_, mut d, _) = dev();
        assert_eq!(read(&mut d, DATA_OFFSET), 0);
        assert_eq!(kbd(&mut d, &[KBD_ECHO]), [KBD_ECHO]);
        assert_eq!(read(&mut d, DATA_OFFSET), KBD_ECHO);
        let mut wide = [0xffu8; 4];
        d.read(COMMAND_OFFSET, &mut wide);
        assert_eq!(wide[1..], [0, 0, 0]);
        d.read(DATA_OFFSET, &mut []);
        d.write(DATA_OFFSET, &[]);
    }

    /// Any sequence of port accesses: no panic, and the state stays bounded.
    #[test]
    fn arbitrary_guest_accesses_stay_bounded() {
        let (c, mut d, irq) = dev();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let value = (x >> 8) as u8;
            // Stay away from the reset command; it only ends the VM.
            let cmd_ok = value != I8042_RESET;
            match x % 7 {
                0 | 1 => {
                    read(&mut d, DATA_OFFSET);
                }
                2 => {
                    status(&mut d);
                }
                3 if cmd_ok => d.write(COMMAND_OFFSET, &[value]),
                4 => {
                    if d.pending == Some(CMD_WRITE_OUTPUT_PORT) {
                        d.write(DATA_OFFSET, &[value | 1]);
                    } else {
                        d.write(DATA_OFFSET, &[value]);
                    }
                }
                5 => {
                    d.trigger_ctrl_alt_del();
                }
                _ => d.write(
                    COMMAND_OFFSET,
                    &[[CMD_WRITE_KBD_OUTPUT, CMD_READ_CTR, CMD_WRITE_AUX][i % 3]],
                ),
            }
            assert!(d.keyboard.fifo.len() <= KBD_FIFO_LEN, "step {i}");
        }
        assert!(c.reason().is_none());
        let _ = irqs(&irq);
    }
}
