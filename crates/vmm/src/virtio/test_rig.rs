//! A split virtqueue laid out in test guest memory and driven from the
//! driver's side: publish descriptor chains, read used entries. For device
//! unit tests and the fuzz targets (feature `test-rig`); new tests use this
//! one rather than a copy.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestMemoryMmap;

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

    /// The descriptor table's address.
    pub fn desc_table(&self) -> u64 {
        self.base
    }

    /// Writes descriptor `i` of the table at `table` (this queue's
    /// [`Self::desc_table`], or an indirect table), chained to `next`.
    pub fn write_desc(mem: &GuestMemoryMmap, table: u64, i: u16, d: Desc, next: Option<u16>) {
        let at = table + u64::from(i) * 16;
        let flags = d.2 | if next.is_some() { F_NEXT } else { 0 };
        mem.write_obj(d.0, GuestAddress(at)).expect("addr");
        mem.write_obj(d.1, GuestAddress(at + 8)).expect("len");
        mem.write_obj(flags, GuestAddress(at + 12)).expect("flags");
        mem.write_obj(next.unwrap_or(0), GuestAddress(at + 14)).expect("next");
    }

    /// Publishes a chain; returns its head index.
    pub fn push(&mut self, mem: &GuestMemoryMmap, descs: &[Desc]) -> u16 {
        let head = self.next_desc % self.size;
        for (k, d) in descs.iter().enumerate() {
            let i = (self.next_desc + k as u16) % self.size;
            let next = (k + 1 < descs.len()).then_some((i + 1) % self.size);
            Self::write_desc(mem, self.desc(), i, *d, next);
        }
        self.next_desc = self.next_desc.wrapping_add(descs.len() as u16);
        self.publish(mem, head);
        head
    }

    /// Puts `head` in the avail ring and bumps the avail index.
    pub fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = self.avail() + 4 + 2 * u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(slot)).expect("ring");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail() + 2))
            .expect("idx");
    }

    /// The next pushed chain starts at descriptor `n`.
    pub fn set_next_desc(&mut self, n: u16) {
        self.next_desc = n;
    }

    /// Chains published so far (the avail index).
    pub fn published(&self) -> u16 {
        self.avail_idx
    }

    /// The used ring's flags (VIRTQ_USED_F_NO_NOTIFY = 1).
    pub fn used_flags(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.used())).expect("used flags")
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
