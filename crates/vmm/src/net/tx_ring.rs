//! Batched frame writes to a tap: one `io_uring_enter` for a whole burst
//! of transmitted frames instead of one `write` each.
//!
//! A tap takes one frame per write, and `writev` joins its buffers into one
//! frame, so the only way to hand the kernel many frames in one syscall is
//! a submission ring. Per frame that saves the syscall entry (and, with a
//! seccomp filter on the thread, the filter's entry cost too).
//!
//! The ring is confined before it is enabled (`IORING_REGISTER_RESTRICTIONS`):
//! its only operation is `IORING_OP_WRITE`, with no SQE flags (no links, no
//! forced async, no fixed files) and no registration at all. Requests on a
//! ring are not checked by seccomp, so this keeps the ring from doing
//! anything the worker's own `write` (allowed on any fd it holds) could not.
//! The ring holds no file of its own (no registered files): closing the tap
//! ends the tap at once, as without a ring.
//!
//! The ring is made where the NIC is built (before any seccomp filter is
//! on); a device worker only calls `io_uring_enter`. Where io_uring is not
//! available (an old kernel, `kernel.io_uring_disabled`, a container's
//! seccomp profile) the NIC writes one frame per `write`, as before.

use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, register::Restriction, types, IoUring};

/// Most frames one [`TxRing::write_all`] call takes (the ring's size).
pub const TX_RING_ENTRIES: u32 = 64;

/// A submission ring that only writes whole buffers to one fd.
pub struct TxRing {
    ring: IoUring,
    fd: RawFd,
}

impl std::fmt::Debug for TxRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TxRing")
    }
}

impl TxRing {
    /// A ring of [`TX_RING_ENTRIES`] that writes to `fd`, which must stay
    /// open while the ring is used (its owner keeps it).
    pub fn new(fd: RawFd) -> io::Result<Self> {
        let ring = IoUring::builder()
            .setup_r_disabled()
            .setup_cqsize(2 * TX_RING_ENTRIES)
            .build(TX_RING_ENTRIES)?;
        let s = ring.submitter();
        s.register_restrictions(&mut [Restriction::sqe_op(opcode::Write::CODE)])?;
        s.register_enable_rings()?;
        Ok(Self { ring, fd })
    }

    /// Writes each of `frames` (at most [`TX_RING_ENTRIES`]) as one write,
    /// submitted together, in order, and waits for all of them: the buffers
    /// are free again when this returns `Ok`. `done(i, result)` is called
    /// once per frame with what its write returned.
    ///
    /// `Err` means the ring failed (not a frame): the frames whose results
    /// were not reported may still be read by the kernel, so the caller must
    /// not reuse or free their memory (leak it) and should stop using the
    /// ring.
    pub fn write_all(&mut self, frames: &[&[u8]], mut done: impl FnMut(usize, io::Result<usize>)) -> io::Result<()> {
        if frames.len() > TX_RING_ENTRIES as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "more frames than ring entries",
            ));
        }
        {
            let mut sq = self.ring.submission();
            for (i, f) in frames.iter().enumerate() {
                let len = u32::try_from(f.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
                let sqe = opcode::Write::new(types::Fd(self.fd), f.as_ptr(), len)
                    .build()
                    .user_data(i as u64);
                // SAFETY: the buffer stays valid until its completion is
                // reaped below (this function waits for all of them, and on
                // an error the caller leaks the memory, as documented).
                unsafe { sq.push(&sqe) }.map_err(|_| io::Error::other("tx ring: submission queue full"))?;
            }
        }
        let mut reaped = 0;
        let mut failures = 0;
        while reaped < frames.len() {
            match self.ring.submit_and_wait(frames.len() - reaped) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                // The completion queue is full: drain it below, then wait again.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => {
                    failures += 1;
                    if failures > 3 {
                        return Err(e);
                    }
                }
            }
            for cqe in self.ring.completion() {
                let i = cqe.user_data() as usize;
                let r = cqe.result();
                let r = if r < 0 {
                    Err(io::Error::from_raw_os_error(-r))
                } else {
                    Ok(r as usize)
                };
                if i < frames.len() {
                    done(i, r);
                }
                reaped += 1;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixDatagram;

    /// A datagram socket pair keeps message boundaries, like a tap.
    fn pair() -> (UnixDatagram, UnixDatagram) {
        UnixDatagram::pair().expect("socketpair")
    }

    /// A ring writing to `s`; None (the test says it is skipped) without io_uring.
    fn ring_on(s: &UnixDatagram) -> Option<TxRing> {
        TxRing::new(s.as_raw_fd())
            .map_err(|e| eprintln!("skipped: io_uring is not available here ({e})"))
            .ok()
    }

    #[test]
    fn writes_every_frame_once_in_order() {
        let (a, b) = pair();
        let Some(mut ring) = ring_on(&a) else { return };
        let frames: Vec<Vec<u8>> = (0..TX_RING_ENTRIES as usize)
            .map(|i| vec![i as u8; 14 + i * 7])
            .collect();
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        for round in 0..3 {
            let mut results = vec![None; refs.len()];
            ring.write_all(&refs, |i, r| results[i] = Some(r.expect("write")))
                .expect("ring");
            for (i, r) in results.iter().enumerate() {
                assert_eq!(*r, Some(frames[i].len()), "round {round} frame {i}");
            }
            let mut buf = [0u8; 1024];
            for (i, f) in frames.iter().enumerate() {
                let n = b.recv(&mut buf).expect("recv");
                assert_eq!(
                    &buf[..n],
                    &f[..],
                    "round {round}: frame {i} arrives as itself, in order"
                );
            }
        }
    }

    #[test]
    fn a_failed_write_is_reported_for_that_frame_only() {
        let (a, b) = pair();
        let Some(mut ring) = ring_on(&a) else { return };
        drop(b);
        let frame = [1u8; 20];
        let mut errors = 0;
        ring.write_all(&[&frame, &frame], |_, r| errors += usize::from(r.is_err()))
            .expect("ring");
        assert_eq!(errors, 2, "writes to a socket without a peer fail, one report each");
    }

    #[test]
    fn too_many_frames_are_refused() {
        let (a, _b) = pair();
        let Some(mut ring) = ring_on(&a) else { return };
        let f = [0u8; 1];
        let many = vec![&f[..]; TX_RING_ENTRIES as usize + 1];
        assert!(ring.write_all(&many, |_, _| panic!("nothing is written")).is_err());
    }

    #[test]
    fn the_ring_refuses_other_operations() {
        let (a, _b) = pair();
        let Some(mut ring) = ring_on(&a) else { return };
        // A read, a write with a fixed file, a linked write: all refused (-EACCES).
        let mut buf = [0u8; 8];
        let read = opcode::Read::new(types::Fd(a.as_raw_fd()), buf.as_mut_ptr(), 8)
            .build()
            .user_data(1);
        let fixed = opcode::Write::new(types::Fixed(0), buf.as_ptr(), 8)
            .build()
            .user_data(2);
        let linked = opcode::Write::new(types::Fd(a.as_raw_fd()), buf.as_ptr(), 8)
            .build()
            .flags(io_uring::squeue::Flags::IO_LINK)
            .user_data(3);
        // SAFETY: `buf` outlives the call, which waits for every completion.
        let results = unsafe { crate::net::ring_tests::submit_each(&mut ring.ring, &[read, fixed, linked]) };
        assert_eq!(results, vec![-libc::EACCES; 3]);
        // And no registration once it runs.
        assert!(ring.ring.submitter().register_files(&[a.as_raw_fd()]).is_err());
    }
}
