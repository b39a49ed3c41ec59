//! Port-I/O and MMIO buses: route a vCPU's exit to the device at that address.
//!
//! Accesses nobody claims read as all-ones and are otherwise ignored; each
//! unclaimed address is logged once and counted, never per access.

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

/// One bus (port I/O or MMIO) mapping address ranges to devices.
#[derive(Default)]
pub struct Bus {
    name: &'static str,
    devices: BTreeMap<u64, (u64, SharedDevice)>,
    unclaimed: Mutex<HashMap<u64, u64>>,
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
        let mut seen = self.unclaimed.lock().unwrap_or_else(|p| p.into_inner());
        let count = seen.entry(addr).or_insert(0);
        *count += 1;
        if *count == 1 {
            tracing::debug!("{} {what} at {addr:#x}: no device there (logged once)", self.name);
        }
    }

    /// Unclaimed addresses and how often each was accessed.
    pub fn unclaimed_accesses(&self) -> Vec<(u64, u64)> {
        let seen = self.unclaimed.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = seen.iter().map(|(&a, &n)| (a, n)).collect();
        v.sort_unstable();
        v
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
        assert_eq!(bus.unclaimed_accesses(), vec![(0x70, 1), (0xcfc, 3)]);
    }
}
