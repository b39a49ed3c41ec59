//! The data of the vsock streaming workloads, shared by the test guest and
//! the host side that checks it (`scripts/measure-vsock.py` does the same in
//! Python): a byte pattern with a 64 KiB period and a word-wise FNV-1a hash.

/// Period of [`pattern_byte`] in bytes: a write of this size starting at a
/// multiple of it is always the same block.
pub const PATTERN_PERIOD: usize = 64 << 10;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Byte `offset` of a pattern stream: the low byte of `offset` xor its
/// second byte, plus one (periodic in [`PATTERN_PERIOD`]).
pub fn pattern_byte(offset: u64) -> u8 {
    ((offset ^ (offset >> 8)) as u8).wrapping_add(1)
}

/// Fills `buf` with the pattern from stream offset 0.
pub fn fill_pattern(buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(i as u64);
    }
}

/// FNV-1a over the stream's little-endian 64-bit words (`h ^= word; h *=
/// prime`), the last partial word zero-padded, then the byte count folded
/// in the same way. Eight bytes per multiply: fast enough to run on every
/// byte received without limiting the transfer.
#[derive(Clone, Copy, Debug)]
pub struct StreamHash {
    hash: u64,
    partial: [u8; 8],
    npartial: usize,
    total: u64,
}

impl Default for StreamHash {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamHash {
    /// The hash of nothing yet.
    pub const fn new() -> Self {
        Self {
            hash: FNV_OFFSET,
            partial: [0; 8],
            npartial: 0,
            total: 0,
        }
    }

    fn word(&mut self, w: u64) {
        self.hash = (self.hash ^ w).wrapping_mul(FNV_PRIME);
    }

    /// Adds the next bytes of the stream.
    pub fn update(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        if self.npartial > 0 {
            let take = (8 - self.npartial).min(data.len());
            self.partial[self.npartial..self.npartial + take].copy_from_slice(&data[..take]);
            self.npartial += take;
            data = &data[take..];
            if self.npartial < 8 {
                return;
            }
            self.word(u64::from_le_bytes(self.partial));
            self.npartial = 0;
        }
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            self.word(u64::from_le_bytes(b));
        }
        let rest = words.remainder();
        self.partial[..rest.len()].copy_from_slice(rest);
        self.npartial = rest.len();
    }

    /// Bytes added so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The hash of everything added.
    pub fn finish(&self) -> u64 {
        let mut h = *self;
        if h.npartial > 0 {
            h.partial[h.npartial..].fill(0);
            h.word(u64::from_le_bytes(h.partial));
        }
        h.word(h.total);
        h.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_does_not_depend_on_how_the_stream_is_cut() {
        let mut data = [0u8; 1000];
        fill_pattern(&mut data);
        let mut whole = StreamHash::new();
        whole.update(&data);
        for cut in [1, 3, 7, 8, 9, 64, 999] {
            let mut parts = StreamHash::new();
            for chunk in data.chunks(cut) {
                parts.update(chunk);
            }
            assert_eq!(parts.finish(), whole.finish(), "cut {cut}");
            assert_eq!(parts.total(), 1000);
        }
    }

    #[test]
    fn hash_sees_length_order_and_content() {
        let h = |d: &[u8]| {
            let mut s = StreamHash::new();
            s.update(d);
            s.finish()
        };
        assert_ne!(h(&[]), h(&[0]));
        assert_ne!(h(&[1, 2]), h(&[2, 1]));
        assert_ne!(h(&[0; 16]), h(&[0; 17]));
        // Known value (the Python side in scripts/measure-vsock.py agrees).
        assert_eq!(h(b"kvmkit"), 0x7b20_0e8d_56f4_d6e4);
    }

    #[test]
    fn pattern_is_periodic_and_not_flat() {
        for k in [0u64, 1, 255, 256, 65535] {
            assert_eq!(pattern_byte(k), pattern_byte(k + PATTERN_PERIOD as u64));
        }
        assert_ne!(pattern_byte(1), pattern_byte(256 + 1));
        assert_eq!(pattern_byte(0), 1);
    }
}
