//! virtio-rng (entropy device): one device-writable buffer per request.

use kvmkit_guest_abi::VirtioMmioDevice;

use super::{Buf, Chain, Queue, Stream, Transport, BUFFERS_OFFSET, CHUNK_BYTES, MAX_SLOTS, QUEUE_MEM_BYTES};

/// Requests answered with 0 bytes before the device counts as stuck.
const MAX_EMPTY: u32 = 10_000;

/// An initialised virtio-rng device.
pub struct Rng {
    t: Transport,
    q: Queue,
    buffers: u64,
}

impl Rng {
    /// Initialises the device `dev` (list index `index`), using the
    /// device-workload region at `region` for its queue and the buffers.
    pub fn open(dev: &VirtioMmioDevice, index: usize, region: u64, khz: u64) -> Result<Self, &'static str> {
        let t = Transport::new(dev.base, khz);
        t.init(0)?;
        let q = t.start(region + index as u64 * QUEUE_MEM_BYTES)?;
        Ok(Self {
            t,
            q,
            buffers: region + BUFFERS_OFFSET,
        })
    }

    /// Reads `bytes` bytes, handing each piece to `consume`; returns how
    /// many were received (`bytes` unless it failed).
    pub fn read(&mut self, bytes: u64, consume: impl FnMut(&[u8])) -> Result<u64, &'static str> {
        let mut s = Read {
            buffers: self.buffers,
            wanted: bytes,
            received: 0,
            outstanding: 0,
            slot_len: [0; MAX_SLOTS],
            empty: 0,
            error: None,
            consume,
        };
        if let Err(e) = self.q.run(&mut s) {
            self.t.fail();
            let _ = self.t.reset();
            return Err(e);
        }
        s.error.map_or(Ok(s.received), Err)
    }

    /// Resets the device, best effort.
    pub fn shutdown(&self) {
        let _ = self.t.reset();
    }
}

struct Read<F> {
    buffers: u64,
    wanted: u64,
    received: u64,
    outstanding: u64,
    slot_len: [u32; MAX_SLOTS],
    empty: u32,
    error: Option<&'static str>,
    consume: F,
}

impl<F: FnMut(&[u8])> Stream for Read<F> {
    fn next(&mut self, slot: u16) -> Option<Chain> {
        let missing = self.wanted - self.received - self.outstanding;
        if missing == 0 || self.error.is_some() {
            return None;
        }
        let len = missing.min(CHUNK_BYTES) as u32;
        self.slot_len[usize::from(slot)] = len;
        self.outstanding += u64::from(len);
        Some(Chain::new(&[Buf {
            addr: self.buffers + u64::from(slot) * CHUNK_BYTES,
            len,
            device_writes: true,
        }]))
    }

    fn complete(&mut self, slot: u16, len: u32) {
        let asked = self.slot_len[usize::from(slot)];
        self.outstanding -= u64::from(asked);
        if len > asked {
            self.error
                .get_or_insert("device claims more bytes than the buffer holds");
            return;
        }
        if len == 0 {
            self.empty += 1;
            if self.empty > MAX_EMPTY {
                self.error.get_or_insert("device keeps answering with 0 bytes");
            }
            return;
        }
        let take = u64::from(len).min(self.wanted - self.received);
        let buffer = self.buffers + u64::from(slot) * CHUNK_BYTES;
        // SAFETY: the request completed, so the device is done with the
        // buffer; it is `asked` >= `take` bytes of the device-workload region.
        (self.consume)(unsafe { core::slice::from_raw_parts(buffer as *const u8, take as usize) });
        self.received += take;
    }
}
