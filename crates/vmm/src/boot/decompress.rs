//! Decompressing a bzImage payload on the host, with every size bounded: the
//! output by the caller's cap, the xz dictionary and the zstd window by the
//! decoders' memory limits, LZ4 blocks by the legacy format's 8 MiB.

use std::io::{BufRead, BufReader, Read};

use super::bzimage::Compression;
use super::lz4_legacy::Lz4Legacy;

/// Largest LZ4 legacy block (`lz4 -l`, what the kernel's `unlz4` reads).
pub const LZ4_LEGACY_BLOCK: usize = 8 << 20;
/// The LZ4 legacy frame's magic.
pub const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];
/// Most memory liblzma may take for an xz dictionary (kernels use 32 MiB or less).
const XZ_MEMLIMIT: u64 = 128 << 20;
/// Largest zstd window (2^27 = 128 MiB, what `zstd -22 --ultra` uses for kernels).
const ZSTD_WINDOW_LOG_MAX: u32 = 27;

/// Why a payload did not decompress (the caller falls back to the kernel's
/// own decompressor).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// kvmkit does not decode this format on the host.
    #[error("kvmkit does not decode {0} payloads on the host")]
    Unsupported(&'static str),
    /// The output would pass the cap (in MiB, rounded up).
    #[error("it decompresses to more than {0} MiB")]
    TooBig(u64),
    /// The decoder rejected the data.
    #[error("the {0} decoder failed: {1}")]
    Corrupt(&'static str, String),
}

/// Bytes the gzip, xz and zstd readers hand out at a time.
const OUT_BUF: usize = 256 << 10;

/// A reader of what the `payload_len`-byte payload `input` (of format `c`)
/// decompresses to. Decoding errors come out of its reads as `io::Error`s.
pub fn reader<'a>(
    input: impl BufRead + 'a,
    c: Compression,
    payload_len: u64,
) -> Result<Box<dyn BufRead + 'a>, DecodeError> {
    let corrupt = |e: std::io::Error| DecodeError::Corrupt(c.name(), e.to_string());
    Ok(match c {
        Compression::Gzip => Box::new(BufReader::with_capacity(
            OUT_BUF,
            flate2::bufread::GzDecoder::new(input),
        )),
        Compression::Xz => {
            let stream = liblzma::stream::Stream::new_stream_decoder(XZ_MEMLIMIT, 0).map_err(|e| corrupt(e.into()))?;
            Box::new(BufReader::with_capacity(
                OUT_BUF,
                liblzma::bufread::XzDecoder::new_stream(input, stream),
            ))
        }
        Compression::Zstd => {
            let mut decoder = zstd::stream::read::Decoder::with_buffer(input).map_err(corrupt)?;
            decoder.window_log_max(ZSTD_WINDOW_LOG_MAX).map_err(corrupt)?;
            Box::new(BufReader::with_capacity(OUT_BUF, decoder.single_frame()))
        }
        Compression::Lz4Legacy => Box::new(Lz4Legacy::new(input, payload_len)),
        other => return Err(DecodeError::Unsupported(other.name())),
    })
}

/// Decompresses `payload` (of format `c`) into at most `cap` bytes (the
/// tests' way in to the readers; kvmkit reads them through `unpack.rs`).
#[cfg(test)]
pub fn decompress(payload: &[u8], c: Compression, cap: usize) -> Result<Vec<u8>, DecodeError> {
    // The kernel build appends the uncompressed size (LE32) to every payload: a
    // capacity hint only, never trusted past the cap.
    let hint = payload
        .len()
        .checked_sub(4)
        .and_then(|at| payload.get(at..))
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .min(cap);
    read_bounded(reader(payload, c, payload.len() as u64)?, c, cap, hint)
}

/// Reads `reader` to its end, failing once it passes `cap` bytes.
pub fn read_bounded(reader: impl Read, c: Compression, cap: usize, hint: usize) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::with_capacity(hint);
    reader
        .take(cap as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| DecodeError::Corrupt(c.name(), e.to_string()))?;
    if out.len() > cap {
        return Err(too_big(cap));
    }
    Ok(out)
}

/// The error for output past `cap` bytes.
pub fn too_big(cap: usize) -> DecodeError {
    DecodeError::TooBig((cap as u64).div_ceil(1 << 20))
}
#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// Data that compresses but is not trivial.
    fn sample(len: usize) -> Vec<u8> {
        let mut v = b"\x7fELF".to_vec();
        v.extend((0..len as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 29) as u8));
        v
    }

    /// What the kernel build appends to every payload.
    fn size_append(mut payload: Vec<u8>, len: usize) -> Vec<u8> {
        payload.extend_from_slice(&(len as u32).to_le_bytes());
        payload
    }

    pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).expect("gzip");
        size_append(e.finish().expect("gzip"), data.len())
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
        e.write_all(data).expect("xz");
        size_append(e.finish().expect("xz"), data.len())
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        size_append(zstd::stream::encode_all(data, 3).expect("zstd"), data.len())
    }

    fn lz4(data: &[u8]) -> Vec<u8> {
        let mut out = LZ4_LEGACY_MAGIC.to_vec();
        for chunk in data.chunks(LZ4_LEGACY_BLOCK) {
            let block = lz4_flex::block::compress(chunk);
            out.extend_from_slice(&(block.len() as u32).to_le_bytes());
            out.extend_from_slice(&block);
        }
        size_append(out, data.len())
    }

    /// A compressor as the kernel build runs it.
    type Encoder = fn(&[u8]) -> Vec<u8>;

    fn each_format() -> [(Compression, Encoder); 4] {
        [
            (Compression::Gzip, gzip),
            (Compression::Xz, xz),
            (Compression::Zstd, zstd),
            (Compression::Lz4Legacy, lz4),
        ]
    }

    #[test]
    fn each_format_round_trips_with_the_size_appended() {
        // 9 MiB: two LZ4 legacy blocks.
        let data = sample(9 << 20);
        for (c, encode) in each_format() {
            let payload = encode(&data);
            assert_eq!(Compression::from_magic(&payload), c);
            let out = decompress(&payload, c, 16 << 20).unwrap_or_else(|e| panic!("{}: {e}", c.name()));
            assert!(out == data, "{}: {} bytes out, {} in", c.name(), out.len(), data.len());
        }
    }

    #[test]
    fn output_past_the_cap_is_refused() {
        let data = sample(1 << 20);
        for (c, encode) in each_format() {
            let payload = encode(&data);
            assert_eq!(decompress(&payload, c, data.len()).map(|v| v.len()), Ok(data.len()));
            assert_eq!(
                decompress(&payload, c, data.len() - 1),
                Err(DecodeError::TooBig(2)),
                "{}",
                c.name()
            );
        }
    }

    #[test]
    fn damaged_payloads_are_errors_not_panics() {
        let data = sample(64 << 10);
        for (c, encode) in each_format() {
            let good = encode(&data);
            let mut damaged = good.clone();
            let mid = damaged.len() / 2;
            damaged[mid..mid + 16].fill(0xa5);
            let cut = &good[..good.len() / 3];
            for bad in [&damaged[..], cut, &good[..good.len().min(5)]] {
                match decompress(bad, c, 1 << 20) {
                    Err(DecodeError::Corrupt(name, _)) => assert_eq!(name, c.name()),
                    // A damaged block may still decode to other bytes (no checksum in LZ4 legacy).
                    Ok(out) => assert!(c == Compression::Lz4Legacy && out != data, "{}", c.name()),
                    Err(e) => panic!("{}: {e}", c.name()),
                }
            }
        }
    }

    #[test]
    fn formats_kvmkit_does_not_decode_are_named() {
        assert_eq!(
            decompress(b"BZh91AY&SY", Compression::Bzip2, 1 << 20),
            Err(DecodeError::Unsupported("bzip2"))
        );
        assert_eq!(
            decompress(b"junk", Compression::Unknown, 1 << 20),
            Err(DecodeError::Unsupported("unknown"))
        );
    }
}
