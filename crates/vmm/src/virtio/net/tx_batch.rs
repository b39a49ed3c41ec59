//! Transmitted frames gathered into one buffer and written to the backend
//! together: through the NIC's [`TxRing`] (one syscall per batch) when it
//! has one, else one `write` per frame.
//!
//! A frame is copied out of guest memory when its chain is taken, so the
//! chain can be completed at once; the batch is written before the guest
//! is interrupted for those completions, and whenever it is full.

use std::io;
use std::sync::{Arc, Mutex};

use super::handler::{FrameIo, MAX_BUFFER_BYTES};
use crate::net::tx_ring::{TxRing, TX_RING_ENTRIES};

/// Bytes of frames one batch holds (at least one largest frame).
pub const TX_BATCH_BYTES: usize = if 256 << 10 > MAX_BUFFER_BYTES {
    256 << 10
} else {
    MAX_BUFFER_BYTES
};

/// Frames waiting to be written, in order.
pub struct TxBatch {
    buf: Vec<u8>,
    /// (offset, length) of each frame in `buf`.
    frames: Vec<(usize, usize)>,
    ring: Option<Arc<Mutex<TxRing>>>,
}

impl TxBatch {
    /// An empty batch, written through `ring` when there is one.
    pub fn new(ring: Option<Arc<Mutex<TxRing>>>) -> Self {
        Self {
            buf: vec![0; TX_BATCH_BYTES],
            frames: Vec::with_capacity(TX_RING_ENTRIES as usize),
            ring,
        }
    }

    /// Writes through `ring` from now on (None: one `write` per frame).
    pub fn set_ring(&mut self, ring: Option<Arc<Mutex<TxRing>>>) {
        self.ring = ring;
    }

    fn tail(&self) -> usize {
        self.frames.last().map_or(0, |&(o, l)| o + l)
    }

    /// The room for a frame of `len` bytes (at most [`MAX_BUFFER_BYTES`]),
    /// or `None` when the batch must be written first.
    pub fn room(&mut self, len: usize) -> Option<&mut [u8]> {
        let tail = self.tail();
        if self.frames.len() >= TX_RING_ENTRIES as usize || tail + len > self.buf.len() {
            return None;
        }
        self.buf.get_mut(tail..tail + len)
    }

    /// Takes the `len` bytes just written into [`TxBatch::room`] as a frame.
    pub fn push(&mut self, len: usize) {
        let tail = self.tail();
        self.frames.push((tail, len));
    }

    /// Whether no frame waits.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Writes every waiting frame, in order; `done(result, len)` once per
    /// frame. Empties the batch; returns the syscalls that took.
    pub fn flush<B: FrameIo + ?Sized>(&mut self, backend: &B, mut done: impl FnMut(io::Result<usize>, usize)) -> usize {
        if self.frames.is_empty() {
            return 0;
        }
        let mut syscalls = 1;
        if let Some(ring) = self.ring.clone() {
            let mut reported = [false; TX_RING_ENTRIES as usize];
            let refs: Vec<&[u8]> = self.frames.iter().map(|&(o, l)| &self.buf[o..o + l]).collect();
            let frames = &self.frames;
            let r = ring.lock().unwrap_or_else(|e| e.into_inner()).write_all(&refs, |i, r| {
                if let Some(flag) = reported.get_mut(i) {
                    *flag = true;
                }
                done(r, frames.get(i).map_or(0, |f| f.1));
            });
            drop(refs);
            if let Err(e) = r {
                tracing::error!("virtio-net: the tx ring failed ({e}); writing one frame at a time from now on");
                for (i, &(_, l)) in self.frames.iter().enumerate() {
                    if !reported.get(i).copied().unwrap_or(true) {
                        done(Err(io::Error::other("tx ring failed")), l);
                    }
                }
                // The kernel may still read frames it did not report: leave
                // their buffer to it (once per device; bounded).
                std::mem::forget(std::mem::replace(&mut self.buf, vec![0; TX_BATCH_BYTES]));
                self.ring = None;
            }
        } else {
            for &(o, l) in &self.frames {
                done(backend.write_frame(&self.buf[o..o + l]), l);
            }
            syscalls = self.frames.len();
        }
        self.frames.clear();
        syscalls
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    struct Sink(RefCell<Vec<Vec<u8>>>);

    impl FrameIo for Sink {
        fn read_frame(&self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::ErrorKind::WouldBlock.into())
        }
        fn write_frame(&self, frame: &[u8]) -> io::Result<usize> {
            self.0.borrow_mut().push(frame.to_vec());
            Ok(frame.len())
        }
    }

    #[test]
    fn frames_go_out_in_order_and_the_batch_bounds_hold() {
        let sink = Sink(RefCell::new(Vec::new()));
        let mut b = TxBatch::new(None);
        let mut n = 0;
        while let Some(room) = b.room(1000) {
            room.fill(n as u8);
            b.push(1000);
            n += 1;
        }
        assert_eq!(n, TX_RING_ENTRIES as usize, "at most a ring's worth of frames");
        let mut lens = Vec::new();
        let syscalls = b.flush(&sink, |r, l| lens.push((r.expect("written"), l)));
        assert_eq!(syscalls, n, "without a ring, a write per frame");
        assert!(b.is_empty());
        let out = sink.0.borrow();
        assert_eq!(out.len(), n);
        for (i, f) in out.iter().enumerate() {
            assert_eq!(f.len(), 1000);
            assert!(f.iter().all(|&x| x == i as u8), "frame {i} in its place");
        }
        assert!(lens.iter().all(|&(a, b)| a == 1000 && b == 1000));
        // Large frames: the byte bound comes first.
        let mut big = 0;
        while b.room(MAX_BUFFER_BYTES).is_some() {
            b.push(MAX_BUFFER_BYTES);
            big += 1;
        }
        assert_eq!(big, TX_BATCH_BYTES / MAX_BUFFER_BYTES);
    }
}
