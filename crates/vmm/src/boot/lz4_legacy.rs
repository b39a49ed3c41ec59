//! An LZ4 legacy frame (`lz4 -l`, what Debian's kernels use) decoded as a
//! stream: the output is handed out a quarter MiB at a time with 64 KiB of
//! history kept for back-references, so neither a whole 8 MiB block nor its
//! compressed bytes are held (they were: 8 MiB plus up to 8 MiB, for a
//! decoder that needs both whole).
//!
//! The frame: a magic, then blocks each prefixed with its LE32 compressed
//! size, each decompressing to at most 8 MiB on its own (blocks are
//! independent). A size larger than what is left of the payload (the
//! uncompressed size the kernel build appends) ends the stream, as in the
//! kernel's `unlz4`; a repeated magic starts a concatenated frame. A block is
//! sequences of literals and matches (the LZ4 block format); the last one has
//! literals only, and a block that ends anywhere else is corrupt.

use std::io::{BufRead, Read};

use super::decompress::{LZ4_LEGACY_BLOCK, LZ4_LEGACY_MAGIC};

/// History kept for back-references (an LZ4 offset is at most 65535).
const HISTORY: usize = 64 << 10;
/// Output produced per refill, beyond the history.
const OUT_CHUNK: usize = 256 << 10;
/// Smallest match (LZ4's MINMATCH).
const MIN_MATCH: usize = 4;
/// Room past the chunk for the fast path's fixed-size copies.
const SLACK: usize = 64;

/// Where the decoder is inside the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Before a block's size (or the frame's magic).
    Block,
    /// Before a sequence's token.
    Token,
    /// Copying a sequence's literals; then its match, with this low nibble.
    Literals { left: usize, match_nibble: u8 },
    /// Copying a match from `offset` bytes back.
    Match { offset: usize, left: usize },
    /// The frame ended.
    Done,
}

/// A reader of what an LZ4 legacy payload decompresses to.
pub struct Lz4Legacy<R> {
    input: R,
    /// Payload bytes not read yet.
    left: u64,
    /// Payload offset of the next byte.
    pos: u64,
    /// Compressed bytes of the current block not read yet.
    block_left: u64,
    /// Payload offset of the current block's size field (for messages).
    block_at: u64,
    /// Bytes the current block produced so far.
    block_out: usize,
    step: Step,
    /// Output: history, then bytes not handed out yet (`out[at..end]`);
    /// allocated whole with the first refill.
    out: Vec<u8>,
    at: usize,
    end: usize,
    /// Bytes decompressed so far.
    total: u64,
}

/// One sequence read from a buffer: literals, then a match.
struct Sequence {
    /// Where its literals lie in the buffer.
    literals: std::ops::Range<usize>,
    /// How far back its match starts.
    offset: usize,
    /// The match's length.
    len: usize,
    /// Where the next sequence starts.
    next: usize,
}

impl Sequence {
    /// The sequence at `i` of `b`, when all of it (a match included) is in `b`.
    fn parse(b: &[u8], i: usize) -> Option<Sequence> {
        let token = *b.get(i)?;
        let mut p = i + 1;
        let mut literals = usize::from(token >> 4);
        if literals == 15 {
            literals += Self::length(b, &mut p)?;
        }
        let start = p;
        let at = start.checked_add(literals)?;
        let offset = usize::from(u16::from_le_bytes([*b.get(at)?, *b.get(at + 1)?]));
        p = at + 2;
        let mut len = MIN_MATCH + usize::from(token & 0xf);
        if token & 0xf == 0xf {
            len += Self::length(b, &mut p)?;
        }
        Some(Sequence {
            literals: start..at,
            offset,
            len,
            next: p,
        })
    }

    /// A length's extra bytes at `*p` (each 255 asks for another), at most a block's worth.
    fn length(b: &[u8], p: &mut usize) -> Option<usize> {
        let mut n = 0usize;
        loop {
            let byte = *b.get(*p)?;
            *p += 1;
            n += usize::from(byte);
            if n > LZ4_LEGACY_BLOCK {
                return None;
            }
            if byte != 255 {
                return Some(n);
            }
        }
    }
}

/// Writes a match of `len` bytes at `end` of `out`, copied from `offset`
/// bytes back. It may overlap what it writes (each byte repeats the one
/// `offset` back): what is written is periodic, so it is copied from the
/// match's start in chunks that double.
fn copy_match(out: &mut [u8], end: usize, offset: usize, len: usize) {
    let from = end - offset;
    let mut done = 0;
    while done < len {
        let n = (len - done).min(offset + done);
        out.copy_within(from..from + n, end + done);
        done += n;
    }
}

fn corrupt(why: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why)
}

impl<R: BufRead> Lz4Legacy<R> {
    /// A decoder of the `payload_len`-byte payload `input` (magic included).
    pub fn new(input: R, payload_len: u64) -> Self {
        Lz4Legacy {
            input,
            left: payload_len,
            pos: 0,
            block_left: 0,
            block_at: 0,
            block_out: 0,
            step: Step::Block,
            out: Vec::new(),
            at: 0,
            end: 0,
            total: 0,
        }
    }

    fn bad(&self, why: &str) -> std::io::Error {
        corrupt(format!("block at {:#x}: {why}", self.block_at))
    }

    /// Reads `buf.len()` payload bytes outside any block (sizes, magics).
    fn frame_bytes(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        self.input.read_exact(buf)?;
        self.left -= buf.len() as u64;
        self.pos += buf.len() as u64;
        Ok(())
    }

    /// One byte of the current block.
    fn block_byte(&mut self) -> std::io::Result<u8> {
        if self.block_left == 0 {
            return Err(self.bad("ends inside a sequence"));
        }
        let mut b = [0u8; 1];
        self.input.read_exact(&mut b)?;
        self.block_left -= 1;
        self.pos += 1;
        Ok(b[0])
    }

    /// A length's extra bytes (each 255 adds 255 and asks for another).
    fn length_bytes(&mut self) -> std::io::Result<usize> {
        let mut n = 0usize;
        loop {
            let b = self.block_byte()?;
            n += usize::from(b);
            if n > LZ4_LEGACY_BLOCK {
                return Err(self.bad("a length past the 8 MiB block"));
            }
            if b != 255 {
                return Ok(n);
            }
        }
    }

    /// Adds `n` bytes to the block's output, refusing what passes 8 MiB.
    fn grow(&mut self, n: usize) -> std::io::Result<()> {
        if self.block_out + n > LZ4_LEGACY_BLOCK {
            return Err(self.bad("decompresses to more than 8 MiB"));
        }
        self.block_out += n;
        self.total += n as u64;
        Ok(())
    }

    /// Starts the next block, skips a magic, or ends the frame.
    fn next_block(&mut self) -> std::io::Result<()> {
        if self.pos == 0 && self.left >= 4 {
            return self.frame_bytes(&mut [0u8; 4]);
        }
        if self.left < 4 {
            return self.end();
        }
        let mut size = [0u8; 4];
        let at = self.pos;
        self.frame_bytes(&mut size)?;
        if size == LZ4_LEGACY_MAGIC {
            return Ok(());
        }
        let size = u64::from(u32::from_le_bytes(size));
        if size == 0 || size > self.left {
            return self.end();
        }
        self.left -= size;
        (self.block_at, self.block_left, self.block_out) = (at, size, 0);
        self.step = Step::Token;
        Ok(())
    }

    fn end(&mut self) -> std::io::Result<()> {
        self.step = Step::Done;
        if self.total == 0 {
            return Err(corrupt("no blocks".into()));
        }
        Ok(())
    }

    /// The common case, decoded straight from the input buffer: whole
    /// sequences (with a match, so not a block's last) whose bytes are all in
    /// the buffer and inside the block, and whose output fits `out`'s room.
    /// Stops before anything else (a sequence cut by the buffer, a bad
    /// offset, a block's last sequence ...), which the general path then
    /// decodes or refuses.
    fn sequences(&mut self) -> std::io::Result<()> {
        let have = self.input.fill_buf()?;
        let limit = have.len().min(usize::try_from(self.block_left).unwrap_or(usize::MAX));
        let (out, mut end, mut block_out) = (&mut self.out, self.end, self.block_out);
        let mut i = 0;
        while let Some(seq) = Sequence::parse(&have[..limit], i) {
            let Sequence {
                literals,
                offset,
                len,
                next,
            } = seq;
            if offset == 0
                || offset > block_out + literals.len()
                || block_out + literals.len() + len > LZ4_LEGACY_BLOCK
                || end + literals.len() + len > HISTORY + OUT_CHUNK
            {
                break;
            }
            // Short copies at fixed sizes (which the compiler inlines), within
            // the input's bytes and `out`'s slack; the rest as they come.
            match have.get(literals.start..literals.start + 16) {
                Some(sixteen) if literals.len() <= 16 => out[end..end + 16].copy_from_slice(sixteen),
                _ => out[end..end + literals.len()].copy_from_slice(&have[literals.clone()]),
            }
            end += literals.len();
            let from = end - offset;
            if offset >= 18 && len <= 18 {
                out.copy_within(from..from + 18, end);
            } else if len <= 18 {
                for k in 0..len {
                    out[end + k] = out[from + k];
                }
            } else {
                copy_match(out, end, offset, len);
            }
            end += len;
            block_out += literals.len() + len;
            i = next;
        }
        self.total += (block_out - self.block_out) as u64;
        (self.block_out, self.end) = (block_out, end);
        self.input.consume(i);
        (self.block_left, self.pos) = (self.block_left - i as u64, self.pos + i as u64);
        Ok(())
    }

    /// Decodes until `out` holds a chunk past the history, or the frame ends.
    fn refill(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            self.out = vec![0u8; HISTORY + OUT_CHUNK + SLACK];
        }
        // Keep only the history: everything before `at` was handed out.
        if self.end > HISTORY {
            self.out.copy_within(self.end - HISTORY..self.end, 0);
            self.end = HISTORY;
        }
        self.at = self.end;
        while self.end < HISTORY + OUT_CHUNK {
            let room = HISTORY + OUT_CHUNK - self.end;
            match self.step {
                Step::Done => break,
                Step::Block => self.next_block()?,
                Step::Token => {
                    self.sequences()?;
                    if self.end >= HISTORY + OUT_CHUNK {
                        break;
                    }
                    let token = self.block_byte()?;
                    let mut literals = usize::from(token >> 4);
                    if literals == 15 {
                        literals += self.length_bytes()?;
                    }
                    if literals as u64 > self.block_left {
                        return Err(self.bad("literals past its end"));
                    }
                    self.grow(literals)?;
                    self.step = Step::Literals {
                        left: literals,
                        match_nibble: token & 0xf,
                    };
                }
                Step::Literals { left, match_nibble } if left > 0 => {
                    let have = self.input.fill_buf()?;
                    if have.is_empty() {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    let n = left.min(room).min(have.len());
                    self.out[self.end..self.end + n].copy_from_slice(&have[..n]);
                    self.end += n;
                    self.input.consume(n);
                    (self.block_left, self.pos) = (self.block_left - n as u64, self.pos + n as u64);
                    self.step = Step::Literals {
                        left: left - n,
                        match_nibble,
                    };
                }
                Step::Literals { match_nibble, .. } => {
                    if self.block_left == 0 {
                        // The last sequence: literals only.
                        self.step = Step::Block;
                        continue;
                    }
                    let offset = usize::from(u16::from_le_bytes([self.block_byte()?, self.block_byte()?]));
                    if offset == 0 || offset > self.block_out {
                        return Err(self.bad(&format!("a match {offset} bytes back, {} into it", self.block_out)));
                    }
                    let mut len = MIN_MATCH + usize::from(match_nibble);
                    if match_nibble == 15 {
                        len += self.length_bytes()?;
                    }
                    self.grow(len)?;
                    self.step = Step::Match { offset, left: len };
                }
                Step::Match { offset, left } => {
                    let want = left.min(room);
                    copy_match(&mut self.out, self.end, offset, want);
                    self.end += want;
                    self.step = match left - want {
                        0 => Step::Token,
                        left => Step::Match { offset, left },
                    };
                }
            }
        }
        Ok(())
    }
}

impl<R: BufRead> BufRead for Lz4Legacy<R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        while self.at == self.end && self.step != Step::Done {
            self.refill()?;
        }
        Ok(&self.out[self.at..self.end])
    }

    fn consume(&mut self, amt: usize) {
        self.at = (self.at + amt).min(self.end);
    }
}

impl<R: BufRead> Read for Lz4Legacy<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = {
            let have = self.fill_buf()?;
            let n = have.len().min(buf.len());
            buf[..n].copy_from_slice(&have[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufReader;

    /// An LZ4 legacy frame of `data` in blocks of `block` bytes (size appended).
    fn frame(data: &[u8], block: usize) -> Vec<u8> {
        let mut out = LZ4_LEGACY_MAGIC.to_vec();
        for chunk in data.chunks(block) {
            let b = lz4_flex::block::compress(chunk);
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(&b);
        }
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out
    }

    fn decode(payload: &[u8], input_buf: usize) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        Lz4Legacy::new(BufReader::with_capacity(input_buf, payload), payload.len() as u64).read_to_end(&mut out)?;
        Ok(out)
    }

    /// Compressible data with long runs (overlapping matches) and noise.
    fn sample(len: usize) -> Vec<u8> {
        (0..len as u32)
            .map(|i| match (i >> 12) % 4 {
                0 => 0,
                1 => (i % 3) as u8,
                2 => (i.wrapping_mul(2_654_435_761) >> 27) as u8,
                _ => (i >> 5) as u8,
            })
            .collect()
    }

    #[test]
    fn frames_round_trip_across_blocks_chunks_and_magics() {
        let data = sample(9 << 20);
        for (block, input_buf) in [(LZ4_LEGACY_BLOCK, 64 << 10), (100_000, 7)] {
            let payload = frame(&data, block);
            let out = decode(&payload, input_buf).expect("decodes");
            assert!(out == data, "blocks of {block}: {} bytes out", out.len());
        }
        // Two frames back to back.
        let mut two = frame(&data[..5000], 4096);
        two.truncate(two.len() - 4);
        two.extend_from_slice(&frame(&data[5000..9000], 4096));
        assert_eq!(decode(&two, 64).expect("decodes"), data[..9000]);
    }

    #[test]
    fn the_same_bytes_as_lz4_flex_or_an_error() {
        let data = sample(300_000);
        let block = lz4_flex::block::compress(&data);
        let mut seed = 0x1234_5678u32;
        for _ in 0..300 {
            let mut bad = block.clone();
            for _ in 0..3 {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let at = (seed >> 8) as usize % bad.len();
                bad[at] = (seed >> 3) as u8;
            }
            let mut payload = LZ4_LEGACY_MAGIC.to_vec();
            payload.extend_from_slice(&(bad.len() as u32).to_le_bytes());
            payload.extend_from_slice(&bad);
            let mut reference = vec![0u8; LZ4_LEGACY_BLOCK];
            let reference = lz4_flex::block::decompress_into(&bad, &mut reference).map(|n| reference[..n].to_vec());
            match (decode(&payload, 4096), reference) {
                (Ok(ours), Ok(theirs)) => assert!(ours == theirs, "{} vs {} bytes", ours.len(), theirs.len()),
                (Err(_), Err(_)) => {}
                // Cases lz4_flex lets through (offset 0; a block ending after a match): refused here.
                (Err(e), Ok(_)) => assert!(e.to_string().contains("block at"), "{e}"),
                (Ok(ours), Err(e)) => panic!("decoded {} bytes where lz4_flex says {e}", ours.len()),
            }
        }
    }

    #[test]
    fn bad_frames_are_errors() {
        let data = sample(100_000);
        let good = frame(&data, 1 << 20);
        // Cut inside a block: the size says more than is left, so the frame ends with no blocks.
        let e = decode(&good[..good.len() / 2], 64).expect_err("cut");
        assert!(e.to_string().contains("no blocks"), "{e}");
        assert!(decode(&LZ4_LEGACY_MAGIC, 64).is_err());
        // A block of literals that says it has more than it holds.
        let mut payload = LZ4_LEGACY_MAGIC.to_vec();
        payload.extend_from_slice(&3u32.to_le_bytes());
        payload.extend_from_slice(&[0xf0, 0x10, 0]);
        payload.extend_from_slice(&[0u8; 8]);
        let e = decode(&payload, 64).expect_err("literals");
        assert!(e.to_string().contains("block at 0x4"), "{e}");
        // A match longer than a block may produce: refused before it is copied.
        let mut payload = LZ4_LEGACY_MAGIC.to_vec();
        let mut block = vec![0x1f, 7, 1, 0];
        block.extend(std::iter::repeat_n(255u8, LZ4_LEGACY_BLOCK / 255 + 1));
        block.push(0);
        payload.extend_from_slice(&(block.len() as u32).to_le_bytes());
        payload.extend_from_slice(&block);
        payload.extend_from_slice(&[0u8; 4]);
        let e = decode(&payload, 64).expect_err("too long");
        assert!(e.to_string().contains("8 MiB"), "{e}");
    }
}
