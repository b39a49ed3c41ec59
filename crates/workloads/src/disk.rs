//! Disk test patterns and a byte-histogram sanity check for entropy sources.
//!
//! The pattern of a sector depends on its sector number and a seed, so a
//! sector written to or read from the wrong place is caught, not only a
//! corrupted one. Word 0 of each sector is the sector number and word 1 the
//! seed (easy to read in a hex dump); the rest is a hash of all three.

/// Bytes per disk sector (virtio-blk's unit, whatever the block size).
pub const SECTOR_SIZE: usize = 512;
/// 64-bit words per sector.
pub const SECTOR_WORDS: usize = SECTOR_SIZE / 8;

/// The pattern's word `word` of sector `sector`.
#[inline]
pub fn pattern_word(seed: u64, sector: u64, word: usize) -> u64 {
    match word {
        0 => sector,
        1 => seed,
        _ => {
            // splitmix64's finaliser over a mix of the three inputs.
            let mut x =
                seed ^ sector.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (word as u64).wrapping_mul(0xd1b5_4a32_d192_ed03);
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^ (x >> 31)
        }
    }
}

/// Fills `buf` (whole sectors) with the pattern of sectors `first_sector..`.
pub fn fill_sectors(seed: u64, first_sector: u64, buf: &mut [u64]) {
    for (i, sector) in buf.chunks_exact_mut(SECTOR_WORDS).enumerate() {
        let s = first_sector + i as u64;
        for (w, word) in sector.iter_mut().enumerate() {
            *word = pattern_word(seed, s, w);
        }
    }
}

/// The first wrong word [`check_sectors`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// Sector it is in.
    pub sector: u64,
    /// Word index within the sector.
    pub word: usize,
    /// What the pattern says.
    pub expected: u64,
    /// What was read.
    pub actual: u64,
}

/// What [`check_sectors`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SectorCheck {
    /// Sectors with at least one wrong word.
    pub bad_sectors: u64,
    /// The first wrong word.
    pub first: Option<Mismatch>,
}

/// Checks `buf` (whole sectors) against the pattern of sectors `first_sector..`.
pub fn check_sectors(seed: u64, first_sector: u64, buf: &[u64]) -> SectorCheck {
    let mut check = SectorCheck::default();
    for (i, sector) in buf.chunks_exact(SECTOR_WORDS).enumerate() {
        let s = first_sector + i as u64;
        let bad = sector
            .iter()
            .enumerate()
            .find(|&(w, &word)| word != pattern_word(seed, s, w));
        if let Some((word, &actual)) = bad {
            check.bad_sectors += 1;
            check.first.get_or_insert(Mismatch {
                sector: s,
                word,
                expected: pattern_word(seed, s, word),
                actual,
            });
        }
    }
    check
}

/// A byte histogram, for a sanity check of random bytes.
#[derive(Clone, Debug)]
pub struct ByteStats {
    /// Occurrences of each byte value.
    pub hist: [u64; 256],
    /// Bytes counted.
    pub total: u64,
}

impl Default for ByteStats {
    fn default() -> Self {
        Self::new()
    }
}

impl ByteStats {
    /// Empty statistics.
    pub const fn new() -> Self {
        Self {
            hist: [0; 256],
            total: 0,
        }
    }

    /// Counts `bytes`.
    pub fn add(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.hist[usize::from(b)] += 1;
        }
        self.total += bytes.len() as u64;
    }

    /// How many different byte values occurred.
    pub fn distinct(&self) -> u32 {
        self.hist.iter().filter(|&&n| n != 0).count() as u32
    }

    /// The count of the most frequent byte value.
    pub fn max_count(&self) -> u64 {
        self.hist.iter().copied().max().unwrap_or(0)
    }

    /// A coarse check, not a randomness test: some bytes, not all zero, and
    /// from 256 bytes on at least 64 distinct values and no value in more
    /// than an eighth (+16) of the bytes. Uniform random bytes pass with
    /// overwhelming probability; constant or tiny-alphabet output fails.
    pub fn looks_random(&self) -> bool {
        if self.total == 0 || self.hist[0] == self.total {
            return false;
        }
        self.total < 256 || (self.distinct() >= 64 && self.max_count() <= self.total / 8 + 16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_round_trips_and_catches_misplaced_sectors() {
        let mut buf = [0u64; SECTOR_WORDS * 4];
        fill_sectors(7, 100, &mut buf);
        assert_eq!(check_sectors(7, 100, &buf), SectorCheck::default());
        // Read back from the wrong place: every sector is wrong.
        assert_eq!(check_sectors(7, 101, &buf).bad_sectors, 4);
        // A different seed is caught too.
        assert_eq!(check_sectors(8, 100, &buf).bad_sectors, 4);
        buf[SECTOR_WORDS * 2 + 5] ^= 1;
        let c = check_sectors(7, 100, &buf);
        assert_eq!(c.bad_sectors, 1);
        let m = c.first.unwrap();
        assert_eq!((m.sector, m.word, m.expected ^ m.actual), (102, 5, 1));
    }

    #[test]
    fn byte_stats_reject_degenerate_output() {
        let mut s = ByteStats::new();
        assert!(!s.looks_random());
        s.add(&[0; 1000]);
        assert!(!s.looks_random());
        let mut s = ByteStats::new();
        s.add(&[0xaa; 1000]);
        assert!(!s.looks_random());
        let mut s = ByteStats::new();
        let mut x = 1u64;
        for _ in 0..4096 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            s.add(&[(x >> 56) as u8]);
        }
        assert!(s.looks_random());
        assert_eq!(s.total, 4096);
    }
}
