//! Linux's i8042 driver (drivers/input/serio/i8042.c, 6.1) run against the device, step
//! by step as it probes: the controller check, CTR init and keylock test, the keyboard
//! port, the AUX probe it makes when no PNP device says "keyboard only" (`i8042.nopnp`,
//! `acpi=off`), the MUX probe, and `reboot=k`. Linux polls the status register with a
//! bound (I8042_CTL_TIMEOUT polls, 50 us apart: 0.5 s) before it gives up on a byte; the
//! model counts those polls, and every probe here must finish without one running out.

use super::tests::{controller, dev, irqs, kbd};
use super::*;

/// Linux's poll bound for one byte (I8042_CTL_TIMEOUT).
const CTL_TIMEOUT: usize = 10_000;
/// Bytes Linux's flush reads at most (I8042_BUFFER_SIZE).
const BUFFER_SIZE: usize = 16;
/// Input buffer full: Linux waits for it to clear before every write.
const STATUS_INPUT_FULL: u8 = 0x02;

// Linux's command words: low byte the command, bits 8-11 the results, 12-15 the parameters.
const RCTR: u16 = 0x0120;
const WCTR: u16 = 0x1060;
const CTL_TEST: u16 = 0x01aa;
const AUX_DISABLE: u16 = 0x00a7;
const AUX_ENABLE: u16 = 0x00a8;
const AUX_TEST: u16 = 0x01a9;
const AUX_LOOP: u16 = 0x11d3;
const AUX_SEND: u16 = 0x10d4;

/// Linux's side: its view of the CTR, its warnings, and what the probe cost.
struct Linux<'a> {
    d: &'a mut I8042,
    ctr: u8,
    warnings: Vec<&'static str>,
    /// Port accesses (each one a VM exit).
    accesses: usize,
    /// Bytes Linux waited for in vain (each a 0.5 s stall on a real boot).
    timeouts: usize,
}

impl<'a> Linux<'a> {
    fn new(d: &'a mut I8042) -> Self {
        Self {
            d,
            ctr: 0,
            warnings: Vec::new(),
            accesses: 0,
            timeouts: 0,
        }
    }

    fn status(&mut self) -> u8 {
        self.accesses += 1;
        let mut b = [0u8];
        self.d.read(COMMAND_OFFSET, &mut b);
        b[0]
    }

    fn read_data(&mut self) -> u8 {
        self.accesses += 1;
        let mut b = [0u8];
        self.d.read(DATA_OFFSET, &mut b);
        b[0]
    }

    fn write(&mut self, offset: u64, value: u8) {
        self.accesses += 1;
        self.d.write(offset, &[value]);
    }

    /// i8042_wait_read / i8042_wait_write: poll until the bit is as wanted.
    fn wait(&mut self, bit: u8, set: bool) -> Result<(), ()> {
        for _ in 0..CTL_TIMEOUT {
            if (self.status() & bit != 0) == set {
                return Ok(());
            }
        }
        self.timeouts += 1;
        Err(())
    }

    /// __i8042_command.
    fn command(&mut self, param: &mut [u8], command: u16) -> Result<(), ()> {
        self.wait(STATUS_INPUT_FULL, false)?;
        self.write(COMMAND_OFFSET, command as u8);
        for &p in param.iter().take(usize::from((command >> 12) & 0xf)) {
            self.wait(STATUS_INPUT_FULL, false)?;
            self.write(DATA_OFFSET, p);
        }
        for p in param.iter_mut().take(usize::from((command >> 8) & 0xf)) {
            self.wait(STATUS_OUTPUT_FULL, true)?;
            if command == AUX_LOOP && self.status() & STATUS_AUX_DATA == 0 {
                return Err(());
            }
            *p = self.read_data();
        }
        Ok(())
    }

    fn write_ctr(&mut self) -> Result<(), ()> {
        let mut p = [self.ctr];
        self.command(&mut p, WCTR)
    }

    /// i8042_flush: the bytes it threw away, or None when it never emptied.
    fn flush(&mut self) -> Option<usize> {
        let mut n = 0;
        while self.status() & STATUS_OUTPUT_FULL != 0 {
            if n == BUFFER_SIZE {
                return None;
            }
            self.read_data();
            n += 1;
        }
        Some(n)
    }

    /// i8042_controller_check + i8042_controller_init.
    fn controller_init(&mut self) {
        assert!(self.flush().is_some(), "Linux: 'No controller found'");
        let mut ctr = [0u8; 2];
        let mut n = 0;
        while n < 2 || ctr[0] != ctr[1] {
            assert!(n < 10, "Linux: 'Unable to get stable CTR read'");
            let mut p = [0u8];
            assert!(self.command(&mut p, RCTR).is_ok(), "Linux: 'Can't read CTR'");
            ctr[n % 2] = p[0];
            n += 1;
        }
        self.ctr = (ctr[0] | CTR_KBD_DISABLED) & !CTR_KBD_INT;
        if self.status() & STATUS_NOT_INHIBITED == 0 {
            self.warnings.push("Keylock active");
        }
        assert!(self.write_ctr().is_ok(), "Linux: 'Can't write CTR'");
        self.flush();
    }

    /// i8042_toggle_aux: up to 100 CTR reads until AUXDIS follows.
    fn toggle_aux(&mut self, on: bool) -> Result<(), ()> {
        let mut p = [0u8];
        self.command(&mut p, if on { AUX_ENABLE } else { AUX_DISABLE })?;
        for _ in 0..100 {
            self.command(&mut p, RCTR)?;
            if (p[0] & CTR_AUX_DISABLED == 0) == on {
                return Ok(());
            }
        }
        Err(())
    }

    /// i8042_check_aux up to the IRQ delivery test: Ok when Linux would go on to use an
    /// AUX port.
    fn check_aux(&mut self) -> Result<(), ()> {
        self.flush();
        let mut p = [0x5a];
        let looped = self.command(&mut p, AUX_LOOP);
        // The loopback failed: the interface test decides (0, 0xfa and 0xff pass).
        if (looped.is_err() || p[0] != 0x5a)
            && (self.command(&mut p, AUX_TEST).is_err() || !matches!(p[0], 0x00 | 0xfa | 0xff))
        {
            return Err(());
        }
        if self.toggle_aux(false).is_err() {
            self.warnings.push("Failed to disable AUX port");
        }
        self.toggle_aux(true)
    }

    /// i8042_set_mux_mode(true): Ok(version) when Linux finds an active multiplexer.
    fn mux_mode(&mut self) -> Result<u8, ()> {
        self.flush();
        for (send, want_same) in [(0xf0, true), (0x56, true), (0xa4, false)] {
            let mut p = [send];
            self.command(&mut p, AUX_LOOP)?;
            if (p[0] == send) != want_same {
                return Err(());
            }
            if !want_same {
                return Ok(p[0]);
            }
        }
        Err(())
    }

    /// i8042_enable_kbd_port.
    fn enable_kbd_port(&mut self) {
        self.ctr = (self.ctr & !CTR_KBD_DISABLED) | CTR_KBD_INT;
        assert!(self.write_ctr().is_ok(), "Linux: 'Failed to enable KBD port'");
    }
}

/// The PNP path (kvmkit's DSDT has a PNP0303 and no PNP0F13, so Linux sets
/// i8042.noaux itself): controller init, then the keyboard port; nothing waits.
#[test]
fn pnp_probe_is_a_handful_of_accesses() {
    let (_, mut d, irq) = dev();
    let mut linux = Linux::new(&mut d);
    linux.controller_init();
    assert!(linux.warnings.is_empty(), "{:?}", linux.warnings);
    assert_ne!(linux.ctr & CTR_TRANSLATE, 0, "translated: Linux keeps the BIOS's set 1");
    linux.enable_kbd_port();
    assert_eq!(linux.timeouts, 0);
    assert!(linux.accesses <= 30, "{} port accesses", linux.accesses);
    let ctr = linux.ctr;
    assert_eq!(controller(&mut d, CMD_READ_CTR), [ctr]);
    assert_eq!(irqs(&irq), 0, "the probe itself raises no keyboard interrupt");
    // atkbd then talks to the keyboard through the port, one interrupt per answer byte.
    assert_eq!(kbd(&mut d, &[KBD_GET_ID]), [KBD_ACK, 0xab, 0x41]);
    assert_eq!(irqs(&irq), 3);
}

/// The direct probe (no PNP device, or i8042.nopnp): the loopback works, AUX
/// disables at the first CTR read (no "Failed to disable AUX port"), and it never
/// enables, so Linux decides there is no AUX port after its 100 CTR reads, without
/// waiting on a byte; i8042.reset's self test answers at once too.
#[test]
fn direct_probe_finds_no_aux_without_waiting() {
    let (_, mut d, _) = dev();
    let mut linux = Linux::new(&mut d);
    linux.controller_init();
    let mut p = [0u8];
    assert!(linux.command(&mut p, CTL_TEST).is_ok());
    assert_eq!(p, [SELF_TEST_OK]);
    assert!(linux.check_aux().is_err(), "there is no AUX port");
    assert!(linux.warnings.is_empty(), "{:?}", linux.warnings);
    assert_eq!(linux.timeouts, 0);
    // 100 CTR reads of ~5 accesses each bound the cost.
    assert!(linux.accesses <= 600, "{} port accesses", linux.accesses);
    linux.enable_kbd_port();
    assert_eq!(linux.timeouts, 0);
}

/// i8042_check_mux's loopback handshake: the controller echoes every byte, so the
/// third is not a version and Linux finds no multiplexer.
#[test]
fn mux_probe_finds_no_multiplexer() {
    let (_, mut d, _) = dev();
    let mut linux = Linux::new(&mut d);
    linux.controller_init();
    assert!(linux.mux_mode().is_err());
    assert_eq!(linux.timeouts, 0);
}

/// psmouse writing to the absent mouse: each byte comes back at once as a timeout on
/// the AUX channel, which serio turns into "no device" instead of waiting.
#[test]
fn aux_writes_fail_at_once() {
    let (_, mut d, _) = dev();
    let mut linux = Linux::new(&mut d);
    linux.controller_init();
    let mut p = [0xff];
    assert!(linux.command(&mut p, AUX_SEND).is_ok());
    assert!(linux.wait(STATUS_OUTPUT_FULL, true).is_ok());
    let s = linux.status();
    assert_eq!(s & (STATUS_AUX_DATA | STATUS_TIMEOUT), STATUS_AUX_DATA | STATUS_TIMEOUT);
    assert_eq!(linux.read_data(), AUX_NO_DEVICE);
    assert_eq!(linux.timeouts, 0);
}

/// `reboot=k` after a probe: Linux waits for the input buffer to be empty, then
/// pulses the reset line (0xfe on the command port); the VM ends with a reset.
#[test]
fn reboot_k_after_the_probe_resets() {
    let (c, mut d, _) = dev();
    let mut linux = Linux::new(&mut d);
    linux.controller_init();
    linux.enable_kbd_port();
    assert!(c.reason().is_none());
    assert!(linux.wait(STATUS_INPUT_FULL, false).is_ok());
    linux.write(COMMAND_OFFSET, I8042_RESET);
    assert_eq!(c.reason(), Some(ExitReason::Reset("i8042 reset")));
}
