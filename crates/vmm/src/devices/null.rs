//! A device that accepts everything and does nothing: the target of the
//! exit-latency loops, and a quiet answer to ports Linux probes.

use crate::bus::BusDevice;

/// Reads as `fill`, ignores writes.
pub struct NullDevice {
    fill: u8,
}

impl NullDevice {
    /// A null device whose reads return bytes of `fill`.
    pub fn new(fill: u8) -> Self {
        Self { fill }
    }
}

impl BusDevice for NullDevice {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(self.fill);
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}
