//! Driver-side helpers the transport's unit tests share: 32-bit register
//! accesses and the handshake up to DRIVER_OK with one queue of 64.

use super::*;

pub(super) fn write(t: &mut MmioTransport, reg: u64, v: u32) {
    t.write(reg, &v.to_le_bytes());
}

pub(super) fn read(t: &mut MmioTransport, reg: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(reg, &mut b);
    u32::from_le_bytes(b)
}

/// The driver's handshake up to DRIVER_OK, one queue of 64 at the given
/// descriptor table, avail and used ring addresses.
pub(super) fn handshake(t: &mut MmioTransport, desc: u64, avail: u64, used: u64) {
    use status::*;
    write(t, REG_STATUS, ACKNOWLEDGE);
    write(t, REG_STATUS, ACKNOWLEDGE | DRIVER);
    write(t, REG_DRIVER_FEATURES_SEL, 1);
    write(t, REG_DRIVER_FEATURES, 1); // VIRTIO_F_VERSION_1
    write(t, REG_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    write(t, REG_QUEUE_SEL, 0);
    write(t, REG_QUEUE_NUM, 64);
    write(t, REG_QUEUE_DESC_LOW, desc as u32);
    write(t, REG_QUEUE_DRIVER_LOW, avail as u32);
    write(t, REG_QUEUE_DEVICE_LOW, used as u32);
    write(t, REG_QUEUE_READY, 1);
    write(t, REG_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
}
