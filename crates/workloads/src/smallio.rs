//! The small-block random I/O test in place of PostMark: `n` operations, each
//! a 4 KiB write at one pseudo-random block and a 4 KiB read at another, with a
//! flush after every [`SMALLIO_FLUSH_EVERY`] operations and at the end. This
//! module only says where (the same sequence in the guest and on the host);
//! the I/O is the caller's.

/// Bytes per I/O.
pub const SMALLIO_BLOCK: usize = 4096;
/// The blocks are spread over this many MiB of the disk / file.
pub const SMALLIO_SPAN_MIB: u64 = 64;
/// Operations between flushes.
pub const SMALLIO_FLUSH_EVERY: u64 = 64;

const BLOCKS: u64 = (SMALLIO_SPAN_MIB << 20) / SMALLIO_BLOCK as u64;

fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Operation `i`'s (write block, read block), block indices in the span.
pub fn smallio_op(i: u64) -> (u64, u64) {
    (
        mix(i.wrapping_mul(2).wrapping_add(0x5111)) % BLOCKS,
        mix(i.wrapping_mul(2).wrapping_add(0x5112)) % BLOCKS,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_stay_in_the_span() {
        for i in 0..1000 {
            let (w, r) = smallio_op(i);
            assert!(w < BLOCKS && r < BLOCKS);
        }
        assert_ne!(smallio_op(1), smallio_op(2));
    }
}
