//! The rx backlog: frames read from the tap that wait for the guest's rx
//! buffers, in one fixed arena (no allocation per frame).
//!
//! Reading ahead while the driver has no buffers moves the read(2) calls
//! (most of the device's cost per frame) into the time the device would
//! otherwise sleep: once buffers come, queued frames are only copied. The
//! backlog is bounded in frames and bytes; while it is full the tap is not
//! read, and the tap's own queue holds (or drops) what comes next.
//!
//! Frames are stored one after another, each at an offset with room for the
//! largest frame behind it (a read does not know the frame's size first);
//! when the end of the arena lacks that room the next frame goes to its
//! start, once the oldest frame has left it.

use std::collections::VecDeque;

/// A frame in the arena: (offset, length).
type Slot = (usize, usize);

/// Frames read ahead of the guest's rx buffers.
#[derive(Default)]
pub struct Backlog {
    arena: Vec<u8>,
    /// Room a read needs (the largest frame plus slack to see oversized ones).
    room: usize,
    /// Lengths of frames worth keeping: (shortest, longest).
    valid: (usize, usize),
    frames: VecDeque<Slot>,
    max_frames: usize,
    /// Where the next frame goes.
    write: usize,
}

impl Backlog {
    /// At most `max_frames` frames in `bytes` of arena, each read into `room`
    /// bytes (`bytes` >= `room`, `max_frames` >= 1); frames whose length is
    /// not in `valid` are not kept.
    pub fn new(bytes: usize, room: usize, max_frames: usize, valid: std::ops::RangeInclusive<usize>) -> Self {
        let bytes = bytes.max(room);
        Self {
            arena: vec![0; bytes],
            room,
            valid: (*valid.start(), *valid.end()),
            frames: VecDeque::with_capacity(max_frames.max(1)),
            max_frames: max_frames.max(1),
            write: 0,
        }
    }

    /// Whether a read's length is kept.
    pub fn is_valid(&self, n: usize) -> bool {
        n <= self.room && (self.valid.0..=self.valid.1).contains(&n)
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether no frame waits.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The offset where a frame can be read now (with `room` bytes free
    /// behind it), or `None` while the backlog is full.
    fn free_offset(&self) -> Option<usize> {
        if self.frames.len() >= self.max_frames {
            return None;
        }
        let Some(&(head, _)) = self.frames.front() else {
            return Some(0);
        };
        if self.write > head {
            // Occupied: [head, write). Free: [write, end) and [0, head).
            if self.write + self.room <= self.arena.len() {
                Some(self.write)
            } else if self.room <= head {
                Some(0)
            } else {
                None
            }
        } else if self.write + self.room <= head {
            // Wrapped: occupied [head, end) and [0, write). Free: [write, head).
            Some(self.write)
        } else {
            None
        }
    }

    /// Whether another frame fits.
    pub fn has_room(&self) -> bool {
        self.free_offset().is_some()
    }

    /// Reads one frame with `read` (given `room` bytes to fill; returns the
    /// frame's length) and queues it. `Ok(None)` when the backlog is full
    /// (nothing is read). A length outside `valid` (or above `room`) is
    /// returned but not queued (the caller counts the drop).
    pub fn read_with<E>(&mut self, read: impl FnOnce(&mut [u8]) -> Result<usize, E>) -> Result<Option<usize>, E> {
        let Some(off) = self.free_offset() else {
            return Ok(None);
        };
        let n = read(&mut self.arena[off..off + self.room])?;
        if self.is_valid(n) {
            self.frames.push_back((off, n));
            self.write = off + n;
        }
        Ok(Some(n))
    }

    /// The oldest frame, mutable (the device writes num_buffers into its header).
    pub fn front_mut(&mut self) -> Option<&mut [u8]> {
        let &(off, len) = self.frames.front()?;
        Some(&mut self.arena[off..off + len])
    }

    /// Drops the oldest frame (delivered or discarded).
    pub fn pop(&mut self) {
        self.frames.pop_front();
        if self.frames.is_empty() {
            self.write = 0;
        }
    }

    /// Drops every frame; returns how many there were.
    pub fn clear(&mut self) -> usize {
        let n = self.frames.len();
        self.frames.clear();
        self.write = 0;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(b: &mut Backlog, len: usize, seed: u8) -> Option<usize> {
        b.read_with(|buf| -> Result<usize, ()> {
            buf[..len]
                .iter_mut()
                .enumerate()
                .for_each(|(i, x)| *x = seed.wrapping_add(i as u8));
            Ok(len)
        })
        .expect("read")
    }

    fn front(b: &mut Backlog) -> Vec<u8> {
        b.front_mut().expect("a frame").to_vec()
    }

    #[test]
    fn frames_come_out_in_order_with_their_bytes() {
        let mut b = Backlog::new(4096, 1000, 8, 1..=1000);
        assert!(b.is_empty());
        assert_eq!(fill(&mut b, 10, 1), Some(10));
        assert_eq!(fill(&mut b, 20, 2), Some(20));
        assert_eq!(b.len(), 2);
        assert_eq!(front(&mut b), (0..10).map(|i| 1 + i as u8).collect::<Vec<_>>());
        b.pop();
        assert_eq!(front(&mut b), (0..20).map(|i| 2 + i as u8).collect::<Vec<_>>());
        b.pop();
        assert!(b.is_empty() && b.front_mut().is_none());
    }

    #[test]
    fn the_frame_cap_and_the_byte_cap_both_hold() {
        let mut b = Backlog::new(4096, 1000, 3, 1..=1000);
        for i in 0..3 {
            assert_eq!(fill(&mut b, 10, i), Some(10));
        }
        assert!(!b.has_room(), "three frames: full");
        let mut called = false;
        let r = b.read_with(|_| -> Result<usize, ()> {
            called = true;
            Ok(1)
        });
        assert_eq!(r, Ok(None));
        assert!(!called, "a full backlog reads nothing");
        // Bytes: 1000-byte frames in 4096 bytes with 1000 of room per read.
        let mut b = Backlog::new(4096, 1000, 100, 1..=1000);
        let mut n = 0;
        while fill(&mut b, 1000, 0).is_some() {
            n += 1;
            assert!(n <= 4, "no more than fits");
        }
        assert_eq!(n, 4);
    }

    #[test]
    fn the_arena_wraps_once_the_oldest_frames_leave() {
        let mut b = Backlog::new(3000, 1000, 100, 1..=1000);
        assert_eq!(fill(&mut b, 900, 1), Some(900)); // [0, 900)
        assert_eq!(fill(&mut b, 900, 2), Some(900)); // [900, 1800)
        assert_eq!(fill(&mut b, 900, 3), Some(900)); // [1800, 2700)
        assert!(!b.has_room(), "2700 + 1000 > 3000 and the start is taken");
        b.pop();
        assert!(!b.has_room(), "[0, 900) is free, but a read needs 1000");
        b.pop();
        assert!(b.has_room(), "[0, 1800) is free");
        assert_eq!(fill(&mut b, 500, 4), Some(500)); // wraps: [0, 500)
        assert!(b.has_room(), "[500, 1800) is free");
        assert_eq!(fill(&mut b, 400, 5), Some(400)); // [500, 900)
        assert!(!b.has_room(), "900 + 1000 > 1800, the oldest frame's start");
        assert_eq!(front(&mut b)[0], 3, "the third frame is still first");
        b.pop();
        assert_eq!(
            front(&mut b),
            (0..500).map(|i| 4u8.wrapping_add(i as u8)).collect::<Vec<_>>()
        );
        b.pop();
        assert_eq!(front(&mut b)[..3], [5, 6, 7]);
        assert!(b.has_room());
    }

    #[test]
    fn bad_lengths_are_returned_but_not_queued() {
        let mut b = Backlog::new(4096, 1000, 8, 5..=900);
        assert_eq!(fill(&mut b, 0, 0), Some(0));
        assert_eq!(fill(&mut b, 4, 0), Some(4));
        assert_eq!(fill(&mut b, 901, 0), Some(901));
        let r = b.read_with(|_| -> Result<usize, ()> { Ok(5000) });
        assert_eq!(r, Ok(Some(5000)));
        assert!(b.is_empty());
        let r = b.read_with(|_| -> Result<usize, &str> { Err("would block") });
        assert_eq!(r, Err("would block"));
        assert!(b.is_empty());
        assert_eq!(fill(&mut b, 7, 0), Some(7));
        assert_eq!(b.clear(), 1);
        assert!(b.is_empty());
    }
}
