//! The bodies of kvmkit's fuzz targets, in a library so that the libFuzzer
//! binaries (`fuzz_targets/*.rs`) and the stable smoke test
//! (`tests/smoke.rs`) run exactly the same code.
//!
//! Each `run` function must never panic on any input; the panics it can
//! raise are its own assertions (an oracle that disagrees with the device
//! models), which are findings just like a crash inside kvmkit.

pub mod agent_frames;
pub mod api_request;
pub mod guest_report;
pub mod kernel_loader;
pub mod pio_devices;
pub mod snapshot_state;
pub mod virtio_blk_request;
pub mod virtio_mmio_transport;
pub mod virtio_net_chains;
pub mod virtio_rng;
pub mod virtio_vsock_packets;

use std::sync::Arc;
use std::time::Instant;

use kvmkit_vmm::control::VmControl;
use kvmkit_vmm::memory::GuestMemoryMmap;
use vm_memory::GuestAddress;

/// Guest RAM used by the targets: 64 KiB at 0, 4 KiB right after it (a
/// report may straddle the two), and 4 KiB after a hole at 0x20000.
pub const RAM_REGIONS: [(u64, usize); 3] = [(0, 0x1_0000), (0x1_0000, 0x1000), (0x2_0000, 0x1000)];

/// Small guest memory laid out as [`RAM_REGIONS`].
pub fn guest_memory() -> GuestMemoryMmap {
    let ranges: Vec<_> = RAM_REGIONS.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
    GuestMemoryMmap::from_ranges(&ranges).expect("guest memory")
}

/// Fresh VM control state.
pub fn control() -> Arc<VmControl> {
    Arc::new(VmControl::new(Instant::now()).expect("VmControl"))
}

/// Reads fuzz input front to back; past the end everything reads as 0.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// Wraps `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// Whether all input is used up.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Next byte.
    pub fn u8(&mut self) -> u8 {
        let (&b, rest) = self.data.split_first().unwrap_or((&0, &[]));
        self.data = rest;
        b
    }

    /// Next `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// Next little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    /// Next little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// Next little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }
}

/// Little-endian value of the first (up to) 4 bytes: the guest port's view
/// of an access, recomputed here independently of kvmkit.
pub fn le_u32(data: &[u8]) -> u32 {
    data.iter().take(4).rev().fold(0, |v, &b| (v << 8) | u32::from(b))
}

/// Deterministic pseudo-random inputs (xorshift64*) for the smoke test.
pub fn pseudo_random_inputs(seed: u64, count: usize, max_len: usize) -> Vec<Vec<u8>> {
    let mut s = seed | 1;
    let mut next = move || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        s.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    (0..count)
        .map(|_| {
            let len = (next() % (max_len as u64 + 1)) as usize;
            // Bias some inputs towards small values, which hit the
            // interesting ports and in-RAM addresses more often.
            let mask = if next() % 3 == 0 { 0x0f } else { 0xff };
            (0..len).map(|_| (next() >> 24) as u8 & mask).collect()
        })
        .collect()
}
