//! Compression throughput in place of 7-Zip's benchmark: LZ4 (the `lz4_flex`
//! block format, `no_std`) compresses `mib` MiB of text-like data in 64 KiB
//! blocks and decompresses and checks every block, all in caller-provided
//! buffers. lz4_flex allocates its 8 KiB hash table per block from the global
//! allocator (the guest gives it a small per-CPU arena).

use lz4_flex::block::{compress_into, decompress_into, get_maximum_output_size};

/// Block size (below 64 KiB, so lz4_flex uses its 16-bit hash table).
pub const COMPRESS_BLOCK: usize = 60 << 10;
/// Workspace [`compress_mib`] needs besides its input buffer.
pub const COMPRESS_WORKSPACE: usize = get_maximum_output_size(COMPRESS_BLOCK) + COMPRESS_BLOCK;

const WORDS: [&[u8]; 24] = [
    b"the ",
    b"kernel ",
    b"virtual ",
    b"machine ",
    b"monitor ",
    b"guest ",
    b"host ",
    b"memory ",
    b"page ",
    b"table ",
    b"exit ",
    b"latency ",
    b"of ",
    b"and ",
    b"a ",
    b"disk ",
    b"block ",
    b"queue ",
    b"interrupt ",
    b"timer ",
    b"cpu ",
    b"register ",
    b"\n",
    b"0x7f3a ",
];

/// Fills `buf` with pseudo-random text from a small vocabulary (compresses
/// roughly 2:1 with LZ4, like mixed text).
pub fn fill_text(buf: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    let mut i = 0;
    while i < buf.len() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let w = WORDS[(x % WORDS.len() as u64) as usize];
        let n = w.len().min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&w[..n]);
        // One byte in eight of the words gets a varying digit.
        if n > 2 && x & 0x700 == 0 {
            buf[i] = b'0' + ((x >> 20) % 10) as u8;
        }
        i += n;
    }
}

/// What [`compress_mib`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompressReport {
    /// Input bytes compressed (and decompressed).
    pub bytes: u64,
    /// Compressed bytes.
    pub compressed: u64,
    /// Blocks that failed to compress, decompress or compare.
    pub errors: u64,
}

/// Compresses `mib` MiB (passes over `input`, in [`COMPRESS_BLOCK`] blocks)
/// into `work` (at least [`COMPRESS_WORKSPACE`] bytes), decompresses each
/// block again and compares it with the input.
#[inline(never)]
pub fn compress_mib(input: &mut [u8], work: &mut [u8], mib: u64) -> CompressReport {
    let mut r = CompressReport::default();
    if work.len() < COMPRESS_WORKSPACE || input.is_empty() {
        r.errors = 1;
        return r;
    }
    fill_text(input, 0x377a);
    let (out, back) = work.split_at_mut(get_maximum_output_size(COMPRESS_BLOCK));
    let total = mib << 20;
    while r.bytes < total {
        for block in input.chunks(COMPRESS_BLOCK) {
            if r.bytes >= total {
                break;
            }
            match compress_into(block, out) {
                Ok(n) => {
                    r.compressed += n as u64;
                    match decompress_into(&out[..n], &mut back[..block.len()]) {
                        Ok(m) if m == block.len() && back[..m] == *block => {}
                        _ => r.errors += 1,
                    }
                }
                Err(_) => r.errors += 1,
            }
            r.bytes += block.len() as u64;
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_compresses() {
        let mut input = vec![0u8; 256 << 10];
        let mut work = vec![0u8; COMPRESS_WORKSPACE];
        let r = compress_mib(&mut input, &mut work, 1);
        assert_eq!(r.errors, 0);
        assert_eq!(r.bytes, 1 << 20);
        assert!(r.compressed < r.bytes * 3 / 4, "{r:?}");
    }
}
