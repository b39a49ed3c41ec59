//! A split virtqueue laid out in test guest memory and driven from the
//! driver's side: publish descriptor chains, read used entries. For device
//! unit tests (new device tests use this one rather than a copy).

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Descriptor flag: the chain goes on.
pub const F_NEXT: u16 = 1;
/// Descriptor flag: device-writable.
pub const F_WRITE: u16 = 2;

/// (address, length, flags) of one descriptor.
pub type Desc = (u64, u32, u16);

/// One queue's rings at `base` (descriptor table, then avail, then used).
pub struct TestQueue {
    base: u64,
    size: u16,
    next_desc: u16,
    avail_idx: u16,
}

impl TestQueue {
    /// A queue of `size` entries at `base` (needs `32 * size + 16` bytes).
    pub fn new(base: u64, size: u16) -> Self {
        Self {
            base,
            size,
            next_desc: 0,
            avail_idx: 0,
        }
    }

    fn desc(&self) -> u64 {
        self.base
    }

    /// Address of the avail ring.
    pub fn avail(&self) -> u64 {
        self.base + 16 * u64::from(self.size)
    }

    fn used(&self) -> u64 {
        (self.avail() + 6 + 2 * u64::from(self.size) + 3) & !3
    }

    /// The device's view of the queue, ready.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).expect("queue");
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc() as u32), Some(0));
        q.set_avail_ring_address(Some(self.avail() as u32), Some(0));
        q.set_used_ring_address(Some(self.used() as u32), Some(0));
        q.set_ready(true);
        q
    }

    /// Publishes a chain; returns its head index.
    pub fn push(&mut self, mem: &GuestMemoryMmap, descs: &[Desc]) -> u16 {
        let head = self.next_desc % self.size;
        for (k, d) in descs.iter().enumerate() {
            let i = (self.next_desc + k as u16) % self.size;
            let at = self.desc() + u64::from(i) * 16;
            let flags = d.2 | if k + 1 < descs.len() { F_NEXT } else { 0 };
            mem.write_obj(d.0, GuestAddress(at)).expect("addr");
            mem.write_obj(d.1, GuestAddress(at + 8)).expect("len");
            mem.write_obj(flags, GuestAddress(at + 12)).expect("flags");
            mem.write_obj((i + 1) % self.size, GuestAddress(at + 14)).expect("next");
        }
        self.next_desc = self.next_desc.wrapping_add(descs.len() as u16);
        let slot = self.avail() + 4 + 2 * u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(slot)).expect("ring");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail() + 2))
            .expect("idx");
        head
    }

    /// Chains published so far (the avail index).
    pub fn published(&self) -> u16 {
        self.avail_idx
    }

    /// The next chain starts again at descriptor 0 (reusing descriptors
    /// the device has completed).
    pub fn rewind(&mut self) {
        self.next_desc = 0;
    }

    /// The used ring's index.
    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.used() + 2)).expect("used idx")
    }

    /// Used entry `n` (counting from the start): (head, length).
    pub fn used_entry(&self, mem: &GuestMemoryMmap, n: u16) -> (u32, u32) {
        let e = self.used() + 4 + 8 * u64::from(n % self.size);
        (
            mem.read_obj(GuestAddress(e)).expect("id"),
            mem.read_obj(GuestAddress(e + 4)).expect("len"),
        )
    }
}
