//! Batched frame reads from a tap: one `io_uring_enter` for a batch of
//! reads instead of one `read` per received frame.
//!
//! A tap gives one frame per read, so the only way to take many frames in
//! one syscall is a submission ring. Every read is posted with
//! `RWF_NOWAIT`: on an empty tap it completes at once with `EAGAIN`
//! instead of being parked by the kernel until a frame comes, so a batch
//! is over when `io_uring_enter` returns, no read is ever left in flight,
//! and the buffers are the ring's own again (nothing to cancel or leak at
//! teardown). An idle NIC sleeps in `poll` on the tap, as without a ring.
//!
//! The ring is confined before it is enabled (`IORING_REGISTER_RESTRICTIONS`),
//! like [`super::tx_ring`]: its only operations are `IORING_OP_READ` and
//! `IORING_OP_READV`, with no SQE flags (no links, no forced async, no
//! fixed files, no buffer selection) and no registration at all. It can do
//! nothing the worker's own `read`/`readv` could not, and it holds no file
//! of its own: closing the tap ends the tap at once.
//!
//! A batch reads either into the ring's own buffers ([`RxRing::read_batch`];
//! frames are copied out in the order they were read) or straight into
//! memory its caller names, guest rx buffers ([`RxRing::add_direct`],
//! [`RxRing::read_direct`]): each such read has the caller's iovecs first
//! and its slot of the ring's buffers behind them, so a frame longer than
//! the caller's room is still read whole (its tail in the slot).

use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, register::Restriction, types, IoUring};

/// Most reads one batch posts.
pub const RX_RING_ENTRIES: u32 = 32;
/// `RWF_NOWAIT`: fail with `EAGAIN` rather than wait for data.
const RWF_NOWAIT: i32 = 0x8;

/// A submission ring that only reads from one fd, a batch at a time.
pub struct RxRing {
    ring: IoUring,
    fd: RawFd,
    /// `RX_RING_ENTRIES` buffers of `room` bytes, one per read.
    bufs: Vec<u8>,
    room: usize,
    /// What each read of the last batch returned (bytes or -errno).
    results: Vec<i32>,
    /// The next result to hand out.
    next: usize,
    /// The iovecs of the direct reads being prepared ([`RxRing::add_direct`]).
    iovecs: Vec<libc::iovec>,
    /// Per direct read: its first iovec, how many, and the caller's room
    /// in them; with one iovec and that room short of the ring's, the read
    /// has no slot behind it (a frame longer than the room is cut).
    direct: Vec<(usize, usize, usize)>,
}

// SAFETY: the iovecs' pointers are only used by `read_direct`, on the
// thread that owns the ring at the time (it is behind a mutex); between
// batches they are stale and never dereferenced.
unsafe impl Send for RxRing {}

impl std::fmt::Debug for RxRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RxRing")
    }
}

impl RxRing {
    /// A ring of [`RX_RING_ENTRIES`] reads of up to `room` bytes each from
    /// `fd`, which must stay open while the ring is used (its owner keeps it).
    pub fn new(fd: RawFd, room: usize) -> io::Result<Self> {
        if room == 0 || u32::try_from(room).is_err() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad read size"));
        }
        let ring = IoUring::builder()
            .setup_r_disabled()
            .setup_cqsize(2 * RX_RING_ENTRIES)
            .build(RX_RING_ENTRIES)?;
        let s = ring.submitter();
        s.register_restrictions(&mut [
            Restriction::sqe_op(opcode::Read::CODE),
            Restriction::sqe_op(opcode::Readv::CODE),
        ])?;
        s.register_enable_rings()?;
        Ok(Self {
            ring,
            fd,
            // Zeroed lazily by the allocator: pages are touched only when read into.
            bufs: vec![0; room * RX_RING_ENTRIES as usize],
            room,
            results: Vec::with_capacity(RX_RING_ENTRIES as usize),
            next: 0,
            iovecs: Vec::with_capacity(4 * RX_RING_ENTRIES as usize),
            direct: Vec::with_capacity(RX_RING_ENTRIES as usize),
        })
    }

    /// Whether the ring failed (it must not be used again).
    pub fn is_broken(&self) -> bool {
        self.bufs.is_empty()
    }

    /// Results of the last batch not handed out yet.
    pub fn pending(&self) -> usize {
        self.results.len() - self.next
    }

    /// Frames of the last batch not handed out yet.
    pub fn pending_frames(&self) -> usize {
        self.results[self.next..].iter().filter(|&&r| r >= 0).count()
    }

    /// Frames the last batch read.
    pub fn frames(&self) -> usize {
        self.results.iter().filter(|&&r| r >= 0).count()
    }

    /// Drops the results not handed out yet; returns how many were frames.
    pub fn discard(&mut self) -> usize {
        let frames = self.pending_frames();
        self.results.clear();
        self.next = 0;
        frames
    }

    /// Posts `n` reads (at most [`RX_RING_ENTRIES`]; results still pending
    /// are dropped first) and waits for all of them, which takes no longer
    /// than the reads themselves: none waits for data. Returns how many
    /// results there are; [`RxRing::next_result`] hands them out in the
    /// order the reads were made.
    ///
    /// `Err` means the ring failed (not a read): reads may still be in
    /// flight into the ring's buffers, so the ring leaks them (they are
    /// never freed) and must not be used again.
    pub fn read_batch(&mut self, n: usize) -> io::Result<usize> {
        self.discard();
        self.direct.clear();
        let n = n.min(RX_RING_ENTRIES as usize);
        if self.bufs.is_empty() {
            return Err(io::Error::other("rx ring: failed before"));
        }
        {
            let mut sq = self.ring.submission();
            for i in 0..n {
                // SAFETY: slot i lies inside `bufs` (n <= RX_RING_ENTRIES).
                let buf = unsafe { self.bufs.as_mut_ptr().add(i * self.room) };
                let sqe = opcode::Read::new(types::Fd(self.fd), buf, self.room as u32)
                    .rw_flags(RWF_NOWAIT)
                    .build()
                    .user_data(i as u64);
                // SAFETY: the buffer stays valid until its completion is
                // reaped below (this function waits for all of them; on a
                // ring failure the buffers are leaked, never freed).
                if unsafe { sq.push(&sqe) }.is_err() {
                    drop(sq);
                    return self.fail(io::Error::other("rx ring: submission queue full"));
                }
            }
        }
        self.wait_all(n)
    }

    /// Waits for the `n` reads just queued and records their results.
    ///
    /// Every read is reaped before this returns `Ok`, so none outlives the
    /// call (they are posted with `RWF_NOWAIT`, so the kernel completes
    /// each one within the `io_uring_enter` that submits it; the loop makes
    /// it so even if one were queued to a kernel worker). On `Err` reads
    /// may still be in flight and the ring is failed for good.
    fn wait_all(&mut self, n: usize) -> io::Result<usize> {
        self.results.clear();
        self.results.resize(n, -libc::EAGAIN);
        let mut reaped = 0;
        let mut failures = 0;
        while reaped < n {
            match self.ring.submit_and_wait(n - reaped) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => {
                    failures += 1;
                    if failures > 3 {
                        return self.fail(e);
                    }
                }
            }
            for cqe in self.ring.completion() {
                if let Some(r) = self.results.get_mut(cqe.user_data() as usize) {
                    *r = cqe.result();
                }
                reaped += 1;
            }
        }
        self.next = 0;
        Ok(n)
    }

    /// Starts preparing a batch of direct reads (results still pending
    /// are dropped).
    pub fn begin_direct(&mut self) {
        self.discard();
        self.iovecs.clear();
        self.direct.clear();
    }

    /// Adds a direct read into `segs` (host address and length each), of
    /// which at most the ring's room per read is used; the rest of the room
    /// is the read's slot of the ring's own buffers, behind them. Returns
    /// the bytes of `segs` used (the read's room in them), or `None` when
    /// the batch is full ([`RX_RING_ENTRIES`] reads) or the ring failed.
    ///
    /// # Safety
    /// Each of `segs` must be memory the caller may let the kernel write,
    /// that stays mapped and writable until [`RxRing::read_direct`] returns
    /// `Ok`, and for ever after if it returns `Err` (reads may then still
    /// be in flight).
    pub unsafe fn add_direct(&mut self, segs: impl IntoIterator<Item = (*mut u8, usize)>) -> Option<usize> {
        let i = self.direct.len();
        if i >= RX_RING_ENTRIES as usize || self.bufs.is_empty() {
            return None;
        }
        let first = self.iovecs.len();
        let mut room = 0usize;
        for (ptr, len) in segs {
            let len = len.min(self.room - room);
            if len == 0 {
                continue;
            }
            self.iovecs.push(libc::iovec {
                iov_base: ptr.cast(),
                iov_len: len,
            });
            room += len;
            if room == self.room {
                break;
            }
        }
        if room < self.room {
            // SAFETY: slot i lies inside `bufs` (i < RX_RING_ENTRIES), and
            // room < self.room keeps the tail inside it.
            let tail = unsafe { self.bufs.as_mut_ptr().add(i * self.room + room) };
            self.iovecs.push(libc::iovec {
                iov_base: tail.cast(),
                iov_len: self.room - room,
            });
        }
        self.direct.push((first, self.iovecs.len() - first, room));
        Some(room)
    }

    /// Adds a direct read of at most `len` bytes into `ptr`, with nothing
    /// behind it: a longer frame is cut at `len` (a tap then reports the
    /// frame's whole length, more than `len`; a socket reports `len`).
    /// One plain read, cheaper for the kernel than a vectored one. Returns
    /// the room (`len`, at most the ring's room), or `None` as
    /// [`RxRing::add_direct`].
    ///
    /// # Safety
    /// As [`RxRing::add_direct`], for `len` bytes at `ptr`.
    pub unsafe fn add_direct_cut(&mut self, ptr: *mut u8, len: usize) -> Option<usize> {
        let i = self.direct.len();
        let len = len.min(self.room);
        if i >= RX_RING_ENTRIES as usize || self.bufs.is_empty() || len == 0 {
            return None;
        }
        let first = self.iovecs.len();
        self.iovecs.push(libc::iovec {
            iov_base: ptr.cast(),
            iov_len: len,
        });
        // The slot is not read into: room == len marks "cut" only when len
        // < self.room; a read of the whole room has no tail either way.
        self.direct.push((first, 1, len));
        Some(len)
    }

    /// Posts the direct reads added since [`RxRing::begin_direct`] and
    /// waits for all of them (none waits for data), like
    /// [`RxRing::read_batch`]. Read i's result is [`RxRing::result`]`(i)`;
    /// its first [`RxRing::direct_room`]`(i)` bytes are in the caller's
    /// memory, the rest in the ring's slot i. `Err`: the ring failed, reads
    /// may still be in flight (the caller's memory must stay mapped for
    /// ever, see [`RxRing::add_direct`]).
    pub fn read_direct(&mut self) -> io::Result<usize> {
        let n = self.direct.len();
        if self.bufs.is_empty() {
            return Err(io::Error::other("rx ring: failed before"));
        }
        {
            let mut sq = self.ring.submission();
            for (i, &(first, count, _)) in self.direct.iter().enumerate() {
                let sqe = if count == 1 {
                    // One buffer (a cut read, or the room in one piece): a plain read.
                    let v = self.iovecs[first];
                    opcode::Read::new(types::Fd(self.fd), v.iov_base.cast(), v.iov_len as u32)
                        .rw_flags(RWF_NOWAIT)
                        .build()
                } else {
                    // `count` <= the iovecs of one read: far below u32::MAX
                    // (each iovec has at least one byte of `room`, a u32).
                    opcode::Readv::new(types::Fd(self.fd), self.iovecs[first..].as_ptr(), count as u32)
                        .rw_flags(RWF_NOWAIT)
                        .build()
                };
                let sqe = sqe.user_data(i as u64);
                // SAFETY: the iovec array (not touched until the next
                // begin_direct) and the memory it names (the caller's, by
                // add_direct's contract, and the ring's own slots) stay
                // valid until every completion is reaped (wait_all; on a
                // failure the ring's buffers are leaked and the caller keeps
                // its memory mapped).
                if unsafe { sq.push(&sqe) }.is_err() {
                    drop(sq);
                    return self.fail(io::Error::other("rx ring: submission queue full"));
                }
            }
        }
        self.wait_all(n)
    }

    /// What read `i` of the last batch returned: bytes, or -errno.
    pub fn result(&self, i: usize) -> Option<i32> {
        self.results.get(i).copied()
    }

    /// The bytes of direct read `i` that went to the caller's memory at
    /// most (the rest of a longer frame is in the ring's slot `i`).
    pub fn direct_room(&self, i: usize) -> usize {
        self.direct.get(i).map_or(0, |d| d.2)
    }

    /// The head of slot `i`: the bytes a direct read put in the caller's
    /// memory belong here (the caller copies them) for the frame to be
    /// whole in the slot and handed out by [`RxRing::next_result`].
    pub fn slot_head_mut(&mut self, i: usize) -> &mut [u8] {
        let room = self.direct_room(i).min(self.room);
        if i >= RX_RING_ENTRIES as usize || self.bufs.is_empty() {
            return &mut [];
        }
        &mut self.bufs[i * self.room..i * self.room + room]
    }

    /// Makes read `i`'s result "nothing read" (its frame was dropped by
    /// the caller): [`RxRing::next_result`] skips it as an empty read.
    pub fn drop_result(&mut self, i: usize) {
        if let Some(r) = self.results.get_mut(i) {
            *r = -libc::EAGAIN;
        }
    }

    /// Hands out the results of the last batch from read `i` on (those
    /// before it were taken by the caller).
    pub fn skip_to(&mut self, i: usize) {
        self.next = i.min(self.results.len());
    }

    /// Stops using a healthy ring for good (the fd refuses its reads):
    /// every read is reaped, none is in flight, so its buffers are freed;
    /// [`RxRing::is_broken`] is true from now on.
    pub fn retire(&mut self) {
        self.bufs = Vec::new();
        self.results.clear();
        self.next = 0;
    }

    /// The ring is unusable: its buffers may still be written by the
    /// kernel, so they are leaked.
    fn fail(&mut self, e: io::Error) -> io::Result<usize> {
        std::mem::forget(std::mem::take(&mut self.bufs));
        std::mem::forget(std::mem::take(&mut self.iovecs));
        self.direct.clear();
        self.results.clear();
        self.next = 0;
        Err(e)
    }

    /// The next result of the last batch, in read order: the frame read
    /// (its bytes, writable), or the read's error (`WouldBlock` when the
    /// fd had nothing); `None` when all were handed out.
    pub fn next_result(&mut self) -> Option<io::Result<&mut [u8]>> {
        let i = self.next;
        let r = *self.results.get(i)?;
        self.next += 1;
        if r < 0 {
            return Some(Err(io::Error::from_raw_os_error(-r)));
        }
        let len = (r as usize).min(self.room);
        let at = i * self.room;
        Some(Ok(&mut self.bufs[at..at + len]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixDatagram;

    /// A non-blocking datagram socket pair keeps message boundaries, like a tap.
    fn pair() -> (UnixDatagram, UnixDatagram) {
        let (a, b) = UnixDatagram::pair().expect("socketpair");
        a.set_nonblocking(true).expect("nonblocking");
        b.set_nonblocking(true).expect("nonblocking");
        (a, b)
    }

    /// A ring reading from `s`; None (the test says it is skipped) without io_uring.
    fn ring_on(s: &UnixDatagram, room: usize) -> Option<RxRing> {
        RxRing::new(s.as_raw_fd(), room)
            .map_err(|e| eprintln!("skipped: io_uring is not available here ({e})"))
            .ok()
    }

    fn take_all(ring: &mut RxRing) -> Vec<Result<Vec<u8>, i32>> {
        let mut out = Vec::new();
        while let Some(r) = ring.next_result() {
            out.push(r.map(|f| f.to_vec()).map_err(|e| e.raw_os_error().unwrap_or(0)));
        }
        out
    }

    #[test]
    fn reads_every_frame_once_in_order_then_would_block() {
        let (a, b) = pair();
        let Some(mut ring) = ring_on(&b, 2048) else { return };
        for round in 0..3usize {
            let sent = 20 + round;
            let frames: Vec<Vec<u8>> = (0..sent).map(|i| vec![(i + round) as u8; 14 + i * 37]).collect();
            for f in &frames {
                a.send(f).expect("send");
            }
            assert_eq!(ring.read_batch(RX_RING_ENTRIES as usize).expect("ring"), 32);
            assert_eq!(ring.pending(), 32);
            let got = take_all(&mut ring);
            for (i, f) in frames.iter().enumerate() {
                assert_eq!(
                    got[i].as_ref(),
                    Ok(f),
                    "round {round}: frame {i} comes as itself, in order"
                );
            }
            for r in &got[sent..] {
                assert_eq!(*r, Err(libc::EAGAIN), "round {round}: an empty socket fails at once");
            }
            assert_eq!(ring.pending(), 0);
            assert!(ring.next_result().is_none());
        }
    }

    #[test]
    fn batches_are_bounded_and_frames_cut_at_the_room() {
        let (a, b) = pair();
        let Some(mut ring) = ring_on(&b, 100) else { return };
        for i in 0..40u8 {
            a.send(&[i; 150]).expect("send");
        }
        assert_eq!(ring.read_batch(1000).expect("ring"), RX_RING_ENTRIES as usize);
        let got = take_all(&mut ring);
        assert_eq!(got.len(), 32);
        assert_eq!(got[0], Ok(vec![0; 100]), "a datagram is cut at the read's size");
        assert_eq!(got[31], Ok(vec![31; 100]));
        // Two reads, then results left unread are dropped by discard.
        assert_eq!(ring.read_batch(2).expect("ring"), 2);
        assert_eq!(ring.discard(), 2);
        assert_eq!(ring.pending(), 0);
        assert_eq!(ring.read_batch(8).expect("ring"), 8);
        let got = take_all(&mut ring);
        assert_eq!(got[..6], (34..40).map(|i| Ok(vec![i; 100])).collect::<Vec<_>>()[..]);
        assert_eq!(got[6], Err(libc::EAGAIN));
        assert_eq!(ring.read_batch(0).expect("ring"), 0);
    }

    #[test]
    fn direct_reads_fill_the_callers_memory_then_the_slot() {
        let (a, b) = pair();
        let Some(mut ring) = ring_on(&b, 300) else { return };
        let f0: Vec<u8> = (0..250u32).map(|i| i as u8).collect();
        let f1 = vec![7u8; 40];
        a.send(&f0).expect("send");
        a.send(&f1).expect("send");
        // Read 0 into two pieces of 60 and 40 bytes, read 1 into 500 (only
        // the room, 300, is used), read 2 finds nothing.
        let mut mem0 = vec![0u8; 60];
        let mut mem1 = vec![0u8; 40];
        let mut mem2 = vec![0u8; 500];
        let mut mem3 = vec![0u8; 10];
        ring.begin_direct();
        // SAFETY: the vectors outlive read_direct and are not touched meanwhile.
        unsafe {
            let r0 = [
                (mem0.as_mut_ptr(), 60),
                (std::ptr::null_mut(), 0),
                (mem1.as_mut_ptr(), 40),
            ];
            assert_eq!(ring.add_direct(r0), Some(100));
            assert_eq!(ring.add_direct([(mem2.as_mut_ptr(), 500)]), Some(300));
            assert_eq!(ring.add_direct([(mem3.as_mut_ptr(), 10)]), Some(10));
        }
        assert_eq!(ring.read_direct().expect("ring"), 3);
        assert_eq!(
            (ring.result(0), ring.result(1), ring.result(2)),
            (Some(250), Some(40), Some(-libc::EAGAIN))
        );
        assert_eq!((ring.direct_room(0), ring.direct_room(1)), (100, 300));
        assert_eq!(mem0[..], f0[..60]);
        assert_eq!(mem1[..], f0[60..100]);
        assert_eq!(mem2[..40], f1[..]);
        assert!(mem2[300..].iter().all(|&x| x == 0), "no more than the room");
        // The caller puts the head back in front of the slot's tail: the
        // frame is whole there and handed out in order.
        let head = ring.slot_head_mut(0);
        assert_eq!(head.len(), 100);
        head[..60].copy_from_slice(&mem0);
        head[60..].copy_from_slice(&mem1);
        ring.skip_to(0);
        assert_eq!(ring.pending(), 3);
        let got = take_all(&mut ring);
        assert_eq!(got[0], Ok(f0));
        assert_eq!(got[2], Err(libc::EAGAIN));
        // A batch is bounded; a full one takes no more.
        ring.begin_direct();
        for i in 0..RX_RING_ENTRIES as usize {
            // SAFETY: as above.
            let room = unsafe { ring.add_direct([(mem3.as_mut_ptr(), 10)]) };
            assert_eq!(room, Some(10), "read {i}");
        }
        // SAFETY: as above.
        assert_eq!(unsafe { ring.add_direct([(mem3.as_mut_ptr(), 10)]) }, None);
        assert_eq!(ring.read_direct().expect("ring"), RX_RING_ENTRIES as usize);
        assert_eq!(ring.frames(), 0);
    }

    #[test]
    fn a_gone_fd_reports_its_error_per_read() {
        let (a, b) = pair();
        let Some(mut ring) = ring_on(&b, 64) else { return };
        a.send(b"x").expect("send");
        drop(a);
        assert_eq!(ring.read_batch(3).expect("ring"), 3);
        let got = take_all(&mut ring);
        assert_eq!(got[0], Ok(b"x".to_vec()));
        // A datagram socket without a peer reads as empty (EAGAIN) or 0 bytes.
        assert!(got[1..]
            .iter()
            .all(|r| matches!(r, Err(libc::EAGAIN)) || r == &Ok(Vec::new())));
    }

    #[test]
    fn the_ring_refuses_other_operations() {
        let (a, _b) = pair();
        let Some(mut ring) = ring_on(&a, 64) else { return };
        // A write, a read on a fixed file, a linked read, a read with
        // buffer selection: all refused (-EACCES). (Read and readv are its
        // operations.)
        let mut buf = [0u8; 8];
        let write = opcode::Write::new(types::Fd(a.as_raw_fd()), buf.as_ptr(), 8)
            .build()
            .user_data(1);
        let fixed = opcode::Read::new(types::Fixed(0), buf.as_mut_ptr(), 8)
            .build()
            .user_data(2);
        let linked = opcode::Read::new(types::Fd(a.as_raw_fd()), buf.as_mut_ptr(), 8)
            .build()
            .flags(io_uring::squeue::Flags::IO_LINK)
            .user_data(3);
        let select = opcode::Read::new(types::Fd(a.as_raw_fd()), buf.as_mut_ptr(), 8)
            .buf_group(0)
            .build()
            .flags(io_uring::squeue::Flags::BUFFER_SELECT)
            .user_data(4);
        // SAFETY: `buf` outlives the call, which waits for every completion.
        let results = unsafe { crate::net::ring_tests::submit_each(&mut ring.ring, &[write, fixed, linked, select]) };
        assert_eq!(results, vec![-libc::EACCES; 4]);
        // And no registration once it runs.
        assert!(ring.ring.submitter().register_files(&[a.as_raw_fd()]).is_err());
    }
}
