//! Cipher and hash throughput (Table 4's Blowfish, DES and MD5 rows) with the
//! RustCrypto crates (`blowfish`, `des`, `md-5`, all `no_std`), over a buffer the
//! caller provides: `mib` MiB in all, going over the buffer as often as needed.

use blowfish::Blowfish;
use des::cipher::generic_array::GenericArray;
use des::cipher::{BlockEncrypt, KeyInit};
use des::Des;
use md5::{Digest, Md5};

/// Fills `buf` with a deterministic, incompressible-looking pattern.
pub fn fill_random(buf: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for chunk in buf.chunks_mut(8) {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let w = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        chunk.copy_from_slice(&w[..chunk.len()]);
    }
}

/// How many passes over a `len`-byte buffer make `mib` MiB (at least one).
fn passes(mib: u64, len: usize) -> u64 {
    ((mib << 20) / len.max(1) as u64).max(1)
}

fn first_word(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    let n = b.len().min(8);
    w[..n].copy_from_slice(&b[..n]);
    u64::from_le_bytes(w)
}

/// MD5 of `mib` MiB (the buffer, repeated): returns the digest's first 8 bytes.
#[inline(never)]
pub fn md5_mib(buf: &mut [u8], mib: u64) -> u64 {
    fill_random(buf, 0x006d_6435);
    let mut h = Md5::new();
    for _ in 0..passes(mib, buf.len()) {
        h.update(&*buf);
    }
    first_word(&h.finalize())
}

/// DES (ECB) encryption of `mib` MiB in place, pass after pass over `buf`
/// (a multiple of 8 bytes is used); returns the buffer's first 8 bytes.
#[inline(never)]
pub fn des_mib(buf: &mut [u8], mib: u64) -> u64 {
    fill_random(buf, 0x0064_6573);
    let c = Des::new(GenericArray::from_slice(b"kvmkit!!"));
    let len = buf.len() / 8 * 8;
    for _ in 0..passes(mib, len) {
        for block in buf[..len].chunks_exact_mut(8) {
            c.encrypt_block(GenericArray::from_mut_slice(block));
        }
    }
    first_word(buf)
}

/// Blowfish (ECB, 128-bit key) encryption of `mib` MiB in place, as
/// [`des_mib`]; returns the buffer's first 8 bytes.
#[inline(never)]
pub fn blowfish_mib(buf: &mut [u8], mib: u64) -> u64 {
    fill_random(buf, 0x6266);
    let c: Blowfish = match Blowfish::new_from_slice(b"kvmkit blowfish!") {
        Ok(c) => c,
        Err(_) => return 0,
    };
    let len = buf.len() / 8 * 8;
    for _ in 0..passes(mib, len) {
        for block in buf[..len].chunks_exact_mut(8) {
            c.encrypt_block(GenericArray::from_mut_slice(block));
        }
    }
    first_word(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answers_and_determinism() {
        let mut h = Md5::new();
        h.update(b"abc");
        assert_eq!(format!("{:x}", h.finalize()), "900150983cd24fb0d6963f7d28e17f72");
        let mut a = vec![0u8; 4096];
        let mut b = vec![0u8; 4096];
        assert_eq!(md5_mib(&mut a, 1), md5_mib(&mut b, 1));
        assert_eq!(des_mib(&mut a, 1), des_mib(&mut b, 1));
        assert_eq!(blowfish_mib(&mut a, 1), blowfish_mib(&mut b, 1));
        assert_ne!(des_mib(&mut a, 1), blowfish_mib(&mut b, 1));
    }
}
