//! The profiles (quick, default, paper) and the sizes each gives every table's rows.

use clap::ValueEnum;
use serde::Serialize;

/// Workload sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Small sizes: <= 3 minutes here with `--runs 3` (a CI smoke test); adaptive, 5-10
    /// minutes on a busy 2-CPU host where most cells run to `--max-runs`.
    Quick,
    /// Medium sizes: <= 15 minutes here with `--runs 3`; adaptive runs take up to
    /// `--max-runs` / 3 times that on a busy host.
    Default,
    /// The paper's sizes (primes to 1e7, memtester 1000 MB): long.
    Paper,
}

impl Profile {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Quick => "quick",
            Self::Default => "default",
            Self::Paper => "paper",
        }
    }
}

/// Sizes of one profile.
pub(crate) struct Sizes {
    pub primes: &'static [u64],
    pub mems: &'static [u64],
    pub disks: &'static [u64],
    pub exits: u64,
    /// raytrace width, md5, des, blowfish, compress MiB, smallio operations.
    pub suite: [u64; 6],
}

pub(crate) fn sizes(profile: Profile) -> Sizes {
    match profile {
        Profile::Quick => Sizes {
            primes: &[100_000],
            mems: &[4],
            disks: &[1],
            exits: 10_000,
            suite: [320, 16, 2, 8, 16, 256],
        },
        Profile::Default => Sizes {
            primes: &[100_000, 1_000_000],
            mems: &[10, 100],
            disks: &[1, 10],
            exits: 20_000,
            suite: [640, 64, 8, 32, 64, 1024],
        },
        Profile::Paper => Sizes {
            primes: &[100_000, 1_000_000, 10_000_000],
            mems: &[10, 100, 1000],
            disks: &[1, 10, 100],
            exits: 100_000,
            suite: [1600, 256, 32, 128, 256, 8192],
        },
    }
}

/// Sizes of `--guest linux` in one profile.
pub(crate) struct LinuxSizes {
    pub primes: &'static [u64],
    pub mems: &'static [u64],
    pub disks: &'static [u64],
    /// POV-Ray width, openssl seconds, 7z passes, PostMark transactions.
    pub suite: [u64; 4],
}

pub(crate) fn linux_sizes(profile: Profile) -> LinuxSizes {
    match profile {
        Profile::Quick => LinuxSizes {
            primes: &[100_000],
            mems: &[4],
            disks: &[1],
            suite: [160, 1, 1, 500],
        },
        Profile::Default => LinuxSizes {
            primes: &[100_000, 1_000_000],
            mems: &[10, 100],
            disks: &[1, 10],
            suite: [320, 2, 1, 2000],
        },
        Profile::Paper => LinuxSizes {
            primes: &[100_000, 1_000_000, 10_000_000],
            mems: &[10, 100, 1000],
            disks: &[1, 10, 100],
            suite: [640, 5, 3, 20_000],
        },
    }
}
