//! Workloads shared by kvmkit's test guest and its host runner.
//!
//! Everything here is pure computation over caller-provided memory: no
//! allocation, no I/O, no clock. The guest (`#![no_std]`, CPL3) and the host
//! runner call the very same functions, so their timings compare like for like.
#![cfg_attr(not(test), no_std)]

mod disk;
mod memtest;
mod primes;

pub use disk::{
    check_sectors, fill_sectors, pattern_word, ByteStats, Mismatch, SectorCheck, SECTOR_SIZE, SECTOR_WORDS,
};
pub use memtest::{compare_regions, memtest, MemtestReport, MEMTEST_TESTS};
pub use primes::count_primes;
