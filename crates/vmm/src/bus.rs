//! Port-I/O and MMIO buses: route a vCPU's exit to the device at that address.
//!
//! Accesses nobody claims read as all-ones and are otherwise ignored; each
//! unclaimed address is logged once and counted, never per access. The table
//! of unclaimed addresses is bounded ([`MAX_UNCLAIMED_ADDRS`]): a guest
//! scanning the MMIO hole is counted in a total, not one entry per address.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// A device that sits on a bus. Offsets are relative to its base address.
pub trait BusDevice: Send {
    /// Handles a read of `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus and whoever else drives it.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors inserting a device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The range overlaps a device already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps another device")]
    Overlap {
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// The range is empty or wraps around.
    #[error("bus range {base:#x}+{len:#x} is empty or wraps")]
    BadRange {
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
}

/// Most distinct unclaimed addresses a bus keeps a count for; accesses to
/// further addresses are only added to the total.
pub const MAX_UNCLAIMED_ADDRS: usize = 1024;
/// Most unclaimed addresses an [`UnclaimedSummary`] lists.
pub const UNCLAIMED_TOP: usize = 32;

#[derive(Default)]
struct Unclaimed {
    counts: HashMap<u64, u64>,
    total: u64,
    untracked: u64,
}

/// Unclaimed accesses on one bus, bounded: the most accessed addresses, the
/// total, and how many accesses went elsewhere.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnclaimedSummary {
    /// Up to [`UNCLAIMED_TOP`] (address, count) pairs, sorted by address.
    pub top: Vec<(u64, u64)>,
    /// All unclaimed accesses.
    pub total: u64,
    /// Accesses not in `top` (the "and N more").
    pub more: u64,
    /// Distinct addresses counted (at most [`MAX_UNCLAIMED_ADDRS`]).
    pub addresses: u64,
    /// Whether more distinct addresses were seen than the table keeps.
    pub overflowed: bool,
}

impl std::fmt::Display for UnclaimedSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} unclaimed accesses", self.total)?;
        for (i, (a, n)) in self.top.iter().enumerate() {
            write!(f, "{} {a:#x} x{n}", if i == 0 { ":" } else { "," })?;
        }
        if self.more > 0 {
            write!(f, ", and {} more", self.more)?;
        }
        Ok(())
    }
}

/// One bus (port I/O or MMIO) mapping address ranges to devices.
#[derive(Default)]
pub struct Bus {
    name: &'static str,
    devices: BTreeMap<u64, (u64, SharedDevice)>,
    unclaimed: Mutex<Unclaimed>,
}

impl Bus {
    /// An empty bus; `name` appears in log lines ("pio", "mmio").
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            ..Default::default()
        }
    }

    /// Puts `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { base, len })?;
        if let Some((&b, &(l, _))) = self.devices.range(..end).next_back() {
            if b + l > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.devices.insert(base, (len, device));
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &SharedDevice)> {
        let (&base, (len, dev)) = self.devices.range(..=addr).next_back()?;
        (addr - base < *len).then_some((addr - base, dev))
    }

    /// Dispatches a read; unclaimed addresses read as all-ones. Returns
    /// whether a device claimed it.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((offset, dev)) => {
                lock(dev).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                self.note_unclaimed(addr, "read");
                false
            }
        }
    }

    /// Dispatches a write; unclaimed addresses are ignored. Returns whether
    /// a device claimed it.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((offset, dev)) => {
                lock(dev).write(offset, data);
                true
            }
            None => {
                self.note_unclaimed(addr, "write");
                false
            }
        }
    }

    fn note_unclaimed(&self, addr: u64, what: &str) {
        let mut seen = lock(&self.unclaimed);
        seen.total += 1;
        let full = seen.counts.len() >= MAX_UNCLAIMED_ADDRS;
        match seen.counts.get_mut(&addr) {
            Some(n) => *n += 1,
            None if full => {
                seen.untracked += 1;
                if seen.untracked == 1 {
                    tracing::debug!(
                        "{}: more than {MAX_UNCLAIMED_ADDRS} unclaimed addresses; further ones are only counted",
                        self.name
                    );
                }
            }
            None => {
                seen.counts.insert(addr, 1);
                tracing::debug!("{} {what} at {addr:#x}: no device there (logged once)", self.name);
            }
        }
    }

    /// Unclaimed accesses: the [`UNCLAIMED_TOP`] most accessed addresses
    /// (sorted by address), the total and the rest.
    pub fn unclaimed_summary(&self) -> UnclaimedSummary {
        let seen = lock(&self.unclaimed);
        let mut v: Vec<_> = seen.counts.iter().map(|(&a, &n)| (a, n)).collect();
        v.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(UNCLAIMED_TOP);
        v.sort_unstable();
        let shown: u64 = v.iter().map(|&(_, n)| n).sum();
        UnclaimedSummary {
            top: v,
            total: seen.total,
            more: seen.total - shown,
            addresses: seen.counts.len() as u64,
            overflowed: seen.untracked > 0,
        }
    }
}

/// Locks a device, recovering from a poisoned lock (a device that panicked
/// once must not take the whole VM down with it).
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Recorder(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_with_offsets() {
        let dev = Arc::new(Mutex::new(Recorder(vec![])));
        let mut bus = Bus::new("pio");
        bus.insert(dev.clone(), 0x3f8, 8).expect("insert");
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fd, &mut b));
        assert_eq!(b, [5]);
        assert!(bus.write(0x3f8, &[0x41]));
        assert_eq!(lock(&dev).0, vec![(0, vec![0x41])]);
        assert!(!bus.read(0x400, &mut b));
        assert_eq!(b, [0xff]);
        assert!(!bus.read(0x3f7, &mut b));
    }

    #[test]
    fn overlapping_and_empty_ranges_are_refused() {
        let mut bus = Bus::new("pio");
        let dev = || -> SharedDevice { Arc::new(Mutex::new(Recorder(vec![]))) };
        bus.insert(dev(), 0x60, 1).expect("insert");
        bus.insert(dev(), 0x64, 1).expect("insert");
        assert_eq!(
            bus.insert(dev(), 0x5f, 2),
            Err(BusError::Overlap { base: 0x5f, len: 2 })
        );
        assert_eq!(
            bus.insert(dev(), 0x64, 1),
            Err(BusError::Overlap { base: 0x64, len: 1 })
        );
        assert_eq!(
            bus.insert(dev(), 0x70, 0),
            Err(BusError::BadRange { base: 0x70, len: 0 })
        );
        assert_eq!(
            bus.insert(dev(), u64::MAX, 2),
            Err(BusError::BadRange { base: u64::MAX, len: 2 })
        );
        bus.insert(dev(), 0x61, 3).expect("the gap fits");
    }

    #[test]
    fn unclaimed_accesses_are_counted() {
        let bus = Bus::new("pio");
        let mut b = [0u8; 4];
        for _ in 0..3 {
            bus.read(0xcfc, &mut b);
        }
        bus.write(0x70, &[1]);
        assert_eq!(b, [0xff; 4]);
        let s = bus.unclaimed_summary();
        assert_eq!(s.top, vec![(0x70, 1), (0xcfc, 3)]);
        assert_eq!((s.total, s.more, s.addresses, s.overflowed), (4, 0, 2, false));
    }

    #[test]
    fn a_scan_of_the_mmio_hole_keeps_the_table_bounded() {
        let bus = Bus::new("mmio");
        let mut b = [0u8; 4];
        // A hot address, then a scan of far more addresses than the table keeps.
        for _ in 0..100 {
            bus.read(0xfee0_0000, &mut b);
        }
        let scanned = 4 * MAX_UNCLAIMED_ADDRS as u64;
        for i in 0..scanned {
            bus.write(0xd000_0000 + i * 4, &[0]);
        }
        let s = bus.unclaimed_summary();
        assert_eq!(s.total, 100 + scanned);
        assert_eq!(s.top.len(), UNCLAIMED_TOP);
        assert!(s.top.contains(&(0xfee0_0000, 100)), "the hot address is in the top");
        assert_eq!(s.more, scanned - (UNCLAIMED_TOP as u64 - 1));
        assert_eq!(s.addresses, MAX_UNCLAIMED_ADDRS as u64);
        assert!(s.overflowed);
        assert_eq!(lock(&bus.unclaimed).counts.len(), MAX_UNCLAIMED_ADDRS);
        assert!(s.to_string().ends_with(&format!("and {} more", s.more)));
    }
}
