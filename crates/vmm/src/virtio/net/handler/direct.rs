//! Direct rx: frames read from the tap straight into the guest's rx
//! buffers, skipping both copies of the backlog path (ring buffer ->
//! backlog -> guest).
//!
//! While no frame waits in the backlog and the driver has rx buffers, the
//! worker pops a batch of rx chains, turns each chain's buffers into host
//! addresses (every range checked by vm-memory; a chain that does not
//! check out is completed empty and counted, as on the copy path) and
//! posts one read per chain through the rx ring, all in one
//! `io_uring_enter` ([`RxRing::read_direct`]). Two kinds of read:
//!
//! * a chain of one piece, longer than any frame read so far, without
//!   mergeable rx buffers (kvmkit's test guest; Linux without offloads):
//!   one plain read into it, cut at its end ([`RxRing::add_direct_cut`]).
//!   A frame that fills it may have been cut (a tap, like a socket, cuts
//!   a frame to the read's size and says so by nothing but the size): it
//!   is dropped and counted, as the copy path drops a frame longer than a
//!   chain, and cut reads rest for [`CUT_BACKOFF`] batches, after which
//!   chains of that size no longer qualify (the frame made the longest
//!   frame so far that long). Only a frame exactly the chain's size is
//!   lost that the copy path would have kept, once;
//! * any other chain: a vectored read, the chain's buffers followed by the
//!   ring's own slot, so a frame longer than its chain is still read
//!   whole. A vectored read costs the kernel more than a plain one, about
//!   what the copies it saves cost for small frames
//!   (`examples/rx_ring_cost.rs`), so while the frames' running mean is
//!   under [`VECTORED_MIN`] such chains take the copy path.
//!
//! Reads complete in order. Each one that got a whole frame inside its
//! chain is completed there (`num_buffers` = 1 written into its header:
//! the tap leaves those two bytes alone). From the first one that did not
//! (nothing to read, a frame longer than its chain, a runt, an error) the
//! rest of the batch goes the copy path: what those reads put into their
//! chains is copied to the front of their ring slots, so each frame lies
//! whole in its slot, the chains are given back to the queue (they were
//! popped last, so they are the next to pop), and the ring hands those
//! results to the backlog in read order as if it had read them into its
//! own buffers. Frames keep their order, a frame spanning several
//! mergeable buffers is split there, and nothing is dropped that the copy
//! path would keep (but the cut case above). While frames come longer
//! than the mergeable buffers (TSO), direct reads rest for
//! [`DIRECT_BACKOFF`] batches: each would only add a copy back.
//!
//! Safety: the kernel writes guest RAM only while `io_uring_enter` runs in
//! [`RxRing::read_direct`], which reaps every read before it returns (they
//! are `RWF_NOWAIT` reads: none waits for data). If the ring fails there,
//! reads may still be in flight, so guest RAM's regions are leaked (never
//! unmapped, their addresses never reused). What the kernel wrote is
//! marked in guest RAM's dirty bitmap (it bypasses vm-memory).

use virtio_queue::QueueOwnedT;
use vm_memory::bitmap::Bitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::{NetHandler, Seg, MAX_BUFFER_BYTES, MIN_RX_BATCH};
use crate::net::rx_ring::{RxRing, RX_RING_ENTRIES};
use crate::net::tap::VNET_HDR_LEN;
use crate::virtio::net::NetCounters;

/// Direct batches skipped after one saw a frame longer than its chain.
const DIRECT_BACKOFF: u32 = 64;
/// Direct batches without cut reads after one filled its chain.
const CUT_BACKOFF: u32 = 256;
/// Mean frame length (header included) below which chains that need a
/// vectored read take the copy path: for small frames that read costs
/// the kernel more than the copies save (`examples/rx_ring_cost.rs`:
/// +6 % per 64 B frame, -3 to -12 % per 1500 B frame).
const VECTORED_MIN: usize = 512;

/// What a direct batch did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Direct {
    /// Not tried: no rx ring, results of a batch still pending in it, or no
    /// usable rx chain.
    NotTried,
    /// The batch ran: `delivered` frames went straight into rx chains;
    /// `drained` when the tap had nothing more (every other read found
    /// nothing); what the batch read into chains it then gave back waits
    /// in the ring.
    Done {
        /// Frames completed in their chains.
        delivered: usize,
        /// The tap is drained and nothing waits in the ring.
        drained: bool,
    },
}

/// One direct read: its chain's head, its descriptors in
/// `NetHandler::rx_segs` (first, end), the bytes of them it may fill, and
/// whether it is cut there (no room behind, see [`RxRing::add_direct_cut`]).
pub(super) type DirectRead = (u16, usize, usize, usize, bool);

impl NetHandler {
    /// Reads a batch of frames straight into the driver's rx chains (see
    /// the module's description).
    pub(super) fn rx_direct(&mut self) -> Direct {
        // The ring is taken out for the batch (the handler is borrowed
        // meanwhile) and put back unless it failed.
        let Some(ring) = self.rx_ring.take() else {
            return Direct::NotTried;
        };
        let (d, keep) = self.rx_direct_with(&ring);
        if keep {
            self.rx_ring = Some(ring);
        }
        d
    }

    /// The batch; false with it when the ring failed (not to be used again).
    fn rx_direct_with(&mut self, ring: &std::sync::Mutex<RxRing>) -> (Direct, bool) {
        let Ok(mut ring) = ring.lock() else {
            return (Direct::NotTried, false);
        };
        if ring.pending() > 0 || ring.is_broken() {
            return (Direct::NotTried, true);
        }
        if self.direct_backoff > 0 {
            self.direct_backoff -= 1;
            return (Direct::NotTried, true);
        }
        ring.begin_direct();
        self.direct.clear();
        let mut all_segs = std::mem::take(&mut self.rx_segs);
        all_segs.clear();
        let want = self.rx_batch.min(RX_RING_ENTRIES as usize);
        while self.direct.len() < want {
            let Some((head, ok)) = self.pop(false) else { break };
            let usable = self.rx_chain_room(ok).is_some() && self.translate();
            if !usable {
                if !self.direct.is_empty() {
                    // Left for the next batch, where it comes first: a
                    // chain completed here could not be given back past.
                    self.rx.go_to_previous_position();
                    break;
                }
                NetCounters::add(&self.counters.bad_chains, 1);
                if !self.complete(false, head, 0) {
                    break;
                }
                continue;
            }
            // A chain of one piece well beyond the longest frame so far (no
            // mergeable buffers): one plain read into it, cut at its end.
            // A frame can fill it only if longer than any before; such a
            // read is dropped (it may have been cut) and cut reads rest.
            let cut = !self.mrg_rxbuf
                && self.cut_backoff == 0
                && self.host_iovs.len() == 1
                && self.host_iovs[0].1 > self.rx_longest;
            if !cut && self.rx_avg < VECTORED_MIN {
                // Given back (the next to pop) for the copy path.
                self.rx.go_to_previous_position();
                break;
            }
            // SAFETY: every range in `host_iovs` was handed out by vm-memory
            // for guest RAM (self.translate), which stays mapped while
            // `self.memory` lives: past read_direct's return, since this
            // handler holds it, and for ever if read_direct fails (its
            // regions are leaked below). The guest may change what is there
            // at any time; nothing in the host reads it as anything but bytes.
            let room = unsafe {
                if cut {
                    let (p, l) = self.host_iovs[0];
                    ring.add_direct_cut(p as *mut u8, l)
                } else {
                    ring.add_direct(self.host_iovs.iter().map(|&(p, l)| (p as *mut u8, l)))
                }
            };
            let Some(room) = room else {
                self.rx.go_to_previous_position();
                break;
            };
            let first = all_segs.len();
            all_segs.extend_from_slice(&self.segs);
            self.direct.push((head, first, all_segs.len(), room, cut));
        }
        let k = self.direct.len();
        if k == 0 {
            self.rx_segs = all_segs;
            return (Direct::NotTried, true);
        }
        if let Err(e) = ring.read_direct() {
            // Reads may still be in flight into the chains: guest RAM must
            // never be unmapped (or its addresses reused) now, so its
            // regions are leaked; the chains go back to the driver's queue
            // unused, and frames are read one per read(2) from now on.
            std::mem::forget(self.memory.clone());
            for _ in 0..k {
                self.rx.go_to_previous_position();
            }
            self.rx_segs = all_segs;
            tracing::warn!(
                "virtio-net ({}): the rx ring failed ({e}); one read per received frame from now on",
                self.backend.name()
            );
            return (Direct::NotTried, false);
        }
        // What the kernel wrote into guest RAM is not seen by the dirty
        // bitmap: mark it (a read that failed wrote nothing but EAGAIN is
        // the only failure expected; any other marks its whole room).
        for (i, &(_, first, end, room, _)) in self.direct.iter().enumerate() {
            let n = match ring.result(i) {
                Some(r) if r >= 0 => (r as usize).min(room),
                Some(r) if r == -libc::EAGAIN => 0,
                _ => room,
            };
            mark_dirty(&self.memory, &all_segs[first..end], n);
        }
        // Frames that may have been cut are dropped (they filled a cut read).
        for (i, &(_, _, _, room, cut)) in self.direct.iter().enumerate() {
            match ring.result(i) {
                Some(r) if r >= 0 && cut && r as usize >= room => {
                    ring.drop_result(i);
                    NetCounters::add(&self.counters.rx_dropped, 1);
                    self.rx_longest = self.rx_longest.max(room);
                    self.cut_backoff = CUT_BACKOFF;
                }
                Some(r) if r >= 0 => {
                    let n = (r as usize).min(MAX_BUFFER_BYTES);
                    self.rx_longest = self.rx_longest.max(n);
                    self.rx_avg = super::rx_mean(self.rx_avg, n);
                }
                _ => {}
            }
        }
        let mut j = 0;
        while j < k {
            let (head, first, end, room, _) = self.direct[j];
            let n = match ring.result(j) {
                Some(r) if r >= 0 => r as usize,
                _ => break,
            };
            if !(VNET_HDR_LEN..=room.min(MAX_BUFFER_BYTES)).contains(&n) {
                if self.mrg_rxbuf && n > room && n <= MAX_BUFFER_BYTES {
                    // Frames longer than the chains (TSO into mergeable
                    // buffers): the copy path splits them; direct reads
                    // would only add a copy back, so they rest a while.
                    self.direct_backoff = DIRECT_BACKOFF;
                }
                break;
            }
            // num_buffers (the tap leaves those two bytes as they were).
            let ok = write_at(&self.memory, &all_segs[first..end], 10, &1u16.to_le_bytes());
            if ok {
                NetCounters::add(&self.counters.rx_frames, 1);
                NetCounters::add(&self.counters.rx_direct, 1);
                NetCounters::add(&self.counters.rx_bytes, (n - VNET_HDR_LEN) as u64);
            } else {
                // Cannot happen (checked before the read): completed empty.
                NetCounters::add(&self.counters.bad_chains, 1);
                NetCounters::add(&self.counters.rx_dropped, 1);
            }
            self.complete(false, head, if ok { n as u32 } else { 0 });
            j += 1;
        }
        let delivered = j;
        // The reads delivered are taken; the ring hands out the rest.
        ring.skip_to(j);
        let mut drained = false;
        if j < k {
            drained = (j..k).all(|i| ring.result(i) == Some(-libc::EAGAIN));
            if drained {
                ring.discard();
            } else {
                for i in j..k {
                    let (_, first, end, room, _) = self.direct[i];
                    let Some(r) = ring.result(i).filter(|&r| r > 0) else {
                        continue;
                    };
                    let n = (r as usize).min(room);
                    let slot = ring.slot_head_mut(i);
                    let n = n.min(slot.len());
                    if !read_at(&self.memory, &all_segs[first..end], &mut slot[..n]) {
                        // Cannot happen (checked before the read).
                        NetCounters::add(&self.counters.bad_chains, 1);
                    }
                }
            }
            for _ in j..k {
                self.rx.go_to_previous_position();
            }
        }
        self.rx_batch = (2 * ring.frames()).clamp(MIN_RX_BATCH, RX_RING_ENTRIES as usize);
        self.cut_backoff = self.cut_backoff.saturating_sub(1);
        // A hostile driver's long chains do not stay allocated.
        all_segs.shrink_to(1024);
        self.rx_segs = all_segs;
        (Direct::Done { delivered, drained }, true)
    }

    /// Host addresses of the chain in `self.segs` (at most a read's room of
    /// it), into `self.host_iovs`; false when a range is not guest RAM.
    fn translate(&mut self) -> bool {
        self.host_iovs.clear();
        let mut total = 0usize;
        for &(addr, len, _) in &self.segs {
            if total >= super::READ_ROOM {
                break;
            }
            for s in self.memory.get_slices(addr, len as usize) {
                let Ok(s) = s else { return false };
                let p = s.ptr_guard_mut().as_ptr();
                self.host_iovs.push((p as usize, s.len()));
                total += s.len();
            }
        }
        true
    }
}

/// Marks the first `n` bytes of `segs` dirty in guest RAM's bitmap.
fn mark_dirty(mem: &crate::memory::GuestMemoryMmap, segs: &[Seg], mut n: usize) {
    for &(addr, len, _) in segs {
        if n == 0 {
            return;
        }
        let m = (len as usize).min(n);
        for s in mem.get_slices(addr, m).flatten() {
            s.bitmap().mark_dirty(0, s.len());
        }
        n -= m;
    }
}

/// Writes `bytes` at byte `off` of the buffers `segs` (checked by vm-memory).
fn write_at(mem: &crate::memory::GuestMemoryMmap, segs: &[Seg], mut off: usize, mut bytes: &[u8]) -> bool {
    for &(addr, len, _) in segs {
        let len = len as usize;
        if off >= len {
            off -= len;
            continue;
        }
        let m = (len - off).min(bytes.len());
        let Some(at) = addr.0.checked_add(off as u64) else {
            return false;
        };
        if mem.write_slice(&bytes[..m], GuestAddress(at)).is_err() {
            return false;
        }
        bytes = &bytes[m..];
        off = 0;
        if bytes.is_empty() {
            return true;
        }
    }
    bytes.is_empty()
}

/// Reads the first `out.len()` bytes of the buffers `segs` into `out`.
fn read_at(mem: &crate::memory::GuestMemoryMmap, segs: &[Seg], out: &mut [u8]) -> bool {
    let mut at = 0usize;
    for &(addr, len, _) in segs {
        if at == out.len() {
            break;
        }
        let m = (len as usize).min(out.len() - at);
        if mem.read_slice(&mut out[at..at + m], addr).is_err() {
            return false;
        }
        at += m;
    }
    at == out.len()
}
