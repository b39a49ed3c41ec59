//! A console filter for guest output shown on the host terminal.
//!
//! Guest console bytes are guest-controlled: an escape sequence can retitle
//! the host's terminal window, redefine keys, move the cursor over earlier
//! output, switch character sets, or (on some terminals) answer back into the
//! host's input. [`EscapeFilter`] passes text, line control (`\n`, `\r`, `\t`,
//! backspace) and basic colour (SGR: `ESC [ digits;... m`) and drops every
//! other escape sequence and control character, counting what it dropped.
//! It keeps at most [`MAX_CSI_BYTES`] of state, whatever the guest sends.

use std::io::Write;

/// The longest SGR sequence kept; a longer one is dropped whole.
pub const MAX_CSI_BYTES: usize = 32;

const ESC: u8 = 0x1b;
const BEL: u8 = 0x07;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Plain text.
    Ground,
    /// After ESC.
    Escape,
    /// After ESC and intermediates (0x20..=0x2f): dropped up to the final byte.
    EscIntermediate,
    /// Inside `ESC [` (CSI): kept in `csi` while it may be SGR.
    Csi,
    /// Inside a CSI that is not SGR (or too long): dropped up to the final byte.
    CsiDrop,
    /// Inside OSC/DCS/SOS/PM/APC: dropped up to BEL or ST (`ESC \`).
    Str,
    /// ESC inside such a string (ST if `\` follows).
    StrEscape,
}

/// Passes text and basic colour to `inner`; drops other escape sequences and
/// control characters (see the module documentation).
pub struct EscapeFilter<W: Write> {
    inner: W,
    state: State,
    csi: Vec<u8>,
    out: Vec<u8>,
    bytes_in: u64,
    bytes_out: u64,
}

impl<W: Write> EscapeFilter<W> {
    /// Filters what is written to `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            state: State::Ground,
            csi: Vec::with_capacity(MAX_CSI_BYTES),
            out: Vec::new(),
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    /// Bytes dropped so far (escape sequences and control characters); a
    /// sequence still being read counts once it is known to be dropped.
    pub fn dropped(&self) -> u64 {
        let pending = match self.state {
            State::Escape => 1,
            State::Csi => self.csi.len() as u64,
            _ => 0,
        };
        self.bytes_in - self.bytes_out - pending
    }

    fn drop_csi(&mut self) {
        self.csi.clear();
    }

    /// Runs one byte through the state machine, appending what passes to `out`.
    fn feed(&mut self, b: u8) {
        self.state = match (self.state, b) {
            // ESC starts a sequence in every state except inside a string.
            (State::Str | State::StrEscape, ESC) => State::StrEscape,
            (State::Csi, ESC) => {
                self.drop_csi();
                State::Escape
            }
            (State::Str | State::StrEscape, BEL) | (State::StrEscape, b'\\') => State::Ground,
            (State::Str | State::StrEscape, _) => State::Str,
            (_, ESC) => State::Escape,
            (State::Ground, b'\n' | b'\r' | b'\t' | 0x08) => {
                self.out.push(b);
                State::Ground
            }
            (State::Ground, 0x00..=0x1f | 0x7f) => State::Ground,
            (State::Ground, _) => {
                self.out.push(b);
                State::Ground
            }
            (State::Escape, b'[') => {
                self.csi.clear();
                self.csi.extend_from_slice(&[ESC, b'[']);
                State::Csi
            }
            (State::Escape, b']' | b'P' | b'X' | b'^' | b'_') => State::Str,
            (State::Escape | State::EscIntermediate, 0x20..=0x2f) => State::EscIntermediate,
            // A final byte (or anything else) ends a two-byte sequence.
            (State::Escape | State::EscIntermediate, _) => State::Ground,
            (State::Csi, b'0'..=b'9' | b';') if self.csi.len() < MAX_CSI_BYTES => {
                self.csi.push(b);
                State::Csi
            }
            (State::Csi, b'm') => {
                self.out.extend_from_slice(&self.csi);
                self.out.push(b'm');
                self.csi.clear();
                State::Ground
            }
            (State::Csi | State::CsiDrop, 0x40..=0x7e) => {
                self.drop_csi();
                State::Ground
            }
            // Parameters past the limit, private markers, intermediates, or
            // control bytes inside the sequence: not SGR, dropped whole.
            (State::Csi | State::CsiDrop, 0x18 | 0x1a) => {
                self.drop_csi();
                State::Ground
            }
            (State::Csi | State::CsiDrop, _) => {
                self.drop_csi();
                State::CsiDrop
            }
        };
    }
}

impl<W: Write> Write for EscapeFilter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.clear();
        for &b in buf {
            self.feed(b);
        }
        self.bytes_in += buf.len() as u64;
        self.bytes_out += self.out.len() as u64;
        if !self.out.is_empty() {
            self.inner.write_all(&self.out)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(input: &[u8]) -> (Vec<u8>, u64) {
        let mut f = EscapeFilter::new(Vec::new());
        // Byte by byte and whole give the same result.
        let mut g = EscapeFilter::new(Vec::new());
        f.write_all(input).expect("write");
        for b in input {
            g.write_all(std::slice::from_ref(b)).expect("write");
        }
        assert_eq!(f.inner, g.inner, "split writes must not change the output");
        let dropped = f.dropped();
        (f.inner, dropped)
    }

    #[test]
    fn text_line_control_and_colour_pass() {
        let s = b"hello\tworld\r\n\x1b[1;32mgreen\x1b[0m ok\x08!";
        assert_eq!(filter(s), (s.to_vec(), 0));
        let utf8 = "caf\u{e9} \u{2713}".as_bytes();
        assert_eq!(filter(utf8).0, utf8);
    }

    #[test]
    fn other_sequences_and_controls_are_dropped() {
        // Window title (OSC ... BEL and OSC ... ST), cursor moves, clear screen,
        // a private mode, DCS, a charset switch, a bare control byte.
        let cases: &[(&[u8], &[u8])] = &[
            (b"a\x1b]0;pwned\x07b", b"ab"),
            (b"a\x1b]2;pwned\x1b\\b", b"ab"),
            (b"a\x1b[2Jb", b"ab"),
            (b"a\x1b[10;10Hb", b"ab"),
            (b"a\x1b[?1049hb", b"ab"),
            (b"a\x1bP1$r\x1b\\b", b"ab"),
            (b"a\x1b(0b", b"ab"),
            (b"a\x1bcb", b"ab"),
            (b"a\x05\x07\x7fb", b"ab"),
            (b"a\x1b[1;31xb", b"ab"),
            (b"a\x1b[1\x18b", b"ab"),
        ];
        for (input, want) in cases {
            let (out, dropped) = filter(input);
            assert_eq!(&out, want, "{input:?}");
            assert_eq!(dropped as usize, input.len() - want.len(), "{input:?}");
        }
    }

    #[test]
    fn an_overlong_colour_sequence_is_dropped_and_state_stays_bounded() {
        let mut s = b"\x1b[".to_vec();
        s.extend(std::iter::repeat_n(b'1', 10_000));
        s.extend_from_slice(b"mafter");
        let mut f = EscapeFilter::new(Vec::new());
        f.write_all(&s).expect("write");
        assert_eq!(f.inner, b"after");
        assert!(f.csi.capacity() <= 2 * MAX_CSI_BYTES);
        // An unterminated OSC swallows text until BEL/ST, without buffering it.
        let mut f = EscapeFilter::new(Vec::new());
        f.write_all(b"\x1b]0;").expect("write");
        f.write_all(&vec![b'x'; 100_000]).expect("write");
        f.write_all(b"\x07back").expect("write");
        assert_eq!(f.inner, b"back");
    }

    #[test]
    fn any_input_leaves_only_sgr_escapes() {
        // A small xorshift stream of bytes biased towards ESC and sequence bytes.
        let mut x: u64 = 0x6b76_6d6b_6974;
        let alphabet = b"\x1b[]0123456789;mHJ?P\\\x07\x18 ab\n";
        let input: Vec<u8> = (0..200_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if x.is_multiple_of(5) {
                    (x >> 8) as u8
                } else {
                    alphabet[(x >> 16) as usize % alphabet.len()]
                }
            })
            .collect();
        let (out, dropped) = filter(&input);
        assert!(out.len() + dropped as usize <= input.len());
        let mut i = 0;
        while i < out.len() {
            let b = out[i];
            if b == ESC {
                assert_eq!(out.get(i + 1), Some(&b'['), "ESC must start SGR at {i}");
                let end = out[i + 2..].iter().position(|&c| c == b'm').expect("SGR ends with m") + i + 2;
                assert!(out[i + 2..end].iter().all(|c| c.is_ascii_digit() || *c == b';'));
                assert!(end - i <= MAX_CSI_BYTES + 1);
                i = end + 1;
                continue;
            }
            assert!(
                b >= 0x20 && b != 0x7f || matches!(b, b'\n' | b'\r' | b'\t' | 0x08),
                "{b:#x} at {i}"
            );
            i += 1;
        }
    }
}
