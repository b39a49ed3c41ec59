//! Workloads shared by kvmkit's test guest and its host runner.
//!
//! Everything here is pure computation over caller-provided memory: no
//! I/O, no clock, and no allocation except lz4_flex's per-block hash table
//! (see [`compress_mib`]). The guest (`#![no_std]`, CPL3) and the host runner
//! call the very same functions, so their timings compare like for like.
#![cfg_attr(not(test), no_std)]

mod catalog;
mod compress;
mod crypto;
mod disk;
mod memtest;
mod primes;
mod raytrace;
mod smallio;
mod stream;

pub use catalog::{find, Entry, Envs, ParseError, Workload, CATALOGUE, VSOCK_MIB};
pub use compress::{compress_mib, fill_text, CompressReport, COMPRESS_BLOCK, COMPRESS_WORKSPACE};
pub use crypto::{blowfish_mib, des_mib, fill_random, md5_mib};
pub use disk::{
    check_sectors, fill_sectors, pattern_word, ByteStats, Mismatch, SectorCheck, SECTOR_SIZE, SECTOR_WORDS,
};
pub use memtest::{compare_regions, memtest, MemtestReport, MEMTEST_TESTS};
pub use primes::count_primes;
pub use raytrace::{powi, raytrace, raytrace_height, sqrt};
pub use smallio::{smallio_op, SMALLIO_BLOCK, SMALLIO_FLUSH_EVERY, SMALLIO_SPAN_MIB};
pub use stream::{fill_pattern, pattern_byte, StreamHash, PATTERN_PERIOD};

/// Bytes of the data buffer each CPU / thread uses for the MD5, DES, Blowfish
/// and compression workloads (they go over it as often as their size asks).
pub const SUITE_BUFFER: usize = 1 << 20;
