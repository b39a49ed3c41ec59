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
//! like [`super::tx_ring`]: its only operation is `IORING_OP_READ`, with
//! no SQE flags (no links, no forced async, no fixed files, no buffer
//! selection) and no registration at all. It can do nothing the worker's
//! own `read` could not, and it holds no file of its own: closing the tap
//! ends the tap at once. It reads only into its own buffers (never guest
//! memory); frames are copied out in the order they were read.

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
}

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
        s.register_restrictions(&mut [Restriction::sqe_op(opcode::Read::CODE)])?;
        s.register_enable_rings()?;
        Ok(Self {
            ring,
            fd,
            // Zeroed lazily by the allocator: pages are touched only when read into.
            bufs: vec![0; room * RX_RING_ENTRIES as usize],
            room,
            results: Vec::with_capacity(RX_RING_ENTRIES as usize),
            next: 0,
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

    /// Frames the last batch read.
    pub fn frames(&self) -> usize {
        self.results.iter().filter(|&&r| r >= 0).count()
    }

    /// Drops the results not handed out yet; returns how many were frames.
    pub fn discard(&mut self) -> usize {
        let frames = self.results[self.next..].iter().filter(|&&r| r >= 0).count();
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
        // buffer selection: all refused (-EACCES).
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
