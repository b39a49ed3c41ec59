//! virtio-rng's queue as a guest drives it: descriptor chains of any shape
//! (readable and writable buffers, lengths from 0 to 4 GiB, buffers outside
//! RAM or over the rings, chains that loop or point past the table), avail
//! indices that run ahead of the queue, handled by the device's queue handler
//! round by round (its per-round budget included).
//!
//! Input: rounds of `op` then its fields: op % 4 == 0 publishes a chain
//! (length byte, then per descriptor: address selector, length, flags),
//! 1 runs a round of the handler, 2 sets a bogus avail index, 3 jumps the
//! next descriptor index.
//!
//! Checks, besides "no panic, no hang": the device completes no more chains
//! than were published, each at most its writable bytes (and at most
//! `MAX_BYTES_PER_REQUEST`); it never writes a byte the guest only let it
//! read (readable buffers and everything outside the rings and writable
//! buffers stay as they were); a queue whose avail index is bogus marks the
//! device broken and then completes nothing more.

use std::sync::Arc;

use kvmkit_vmm::memory::GuestMemoryMmap;
use kvmkit_vmm::virtio::rng::{queue_handler, MAX_BYTES_PER_REQUEST};
use kvmkit_vmm::virtio::test_rig::{Desc, TestQueue, F_WRITE};
use kvmkit_vmm::virtio::{Interrupt, QueueHandler};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::Input;

/// Guest RAM: rings at 0, buffers after them.
const RAM: usize = 256 << 10;
const QUEUE_SIZE: u16 = 16;
/// Where descriptors may point when they point inside RAM.
const BUFFERS: u64 = 0x1000;

/// What one input did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Chains the device completed.
    pub completed: usize,
    /// Bytes of randomness it wrote.
    pub bytes: u64,
    /// The device marked itself broken.
    pub broken: bool,
}

fn descriptor(input: &mut Input<'_>) -> Desc {
    let addr = match input.u8() % 8 {
        0 => input.u64(),
        1 => u64::from(input.u16()) % 0x1000, // over the rings
        2 => RAM as u64 - u64::from(input.u8()),
        _ => BUFFERS + u64::from(input.u16()) % (RAM as u64 - BUFFERS),
    };
    let len = match input.u8() % 8 {
        0 => input.u32(),
        1 => 0,
        _ => u32::from(input.u16()) % 4096,
    };
    // A buffer over the rings is only ever readable: a writable one would let
    // the device's random bytes rewrite the used ring this target reads back.
    let flags = if input.u8().is_multiple_of(4) || addr < BUFFERS {
        0
    } else {
        F_WRITE
    };
    (addr, len, flags)
}

/// Runs one input; panics only on a broken promise (see the module doc).
pub fn run(data: &[u8]) -> Outcome {
    let mut input = Input::new(data);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).expect("guest memory");
    // A recognisable pattern over the buffers (the rings start zeroed), so that any stray write shows.
    let pattern: Vec<u8> = (0..RAM)
        .map(|i| if i < BUFFERS as usize { 0 } else { (i * 7 + 3) as u8 })
        .collect();
    mem.write_slice(&pattern, GuestAddress(0)).expect("fill");
    let mut q = TestQueue::new(0, QUEUE_SIZE);
    let interrupt = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd")));
    let mut handler = queue_handler(mem.clone(), q.queue(), interrupt.clone());
    // Per published chain: (head, writable bytes in RAM, the descriptors).
    let mut chains: Vec<(u16, u64, Vec<Desc>)> = Vec::new();
    let mut bogus = false;
    let mut out = Outcome::default();
    for _ in 0..64 {
        if input.is_empty() {
            break;
        }
        match input.u8() % 4 {
            0 if !bogus && chains.len() < usize::from(QUEUE_SIZE) * 4 => {
                let n = 1 + usize::from(input.u8() % 4);
                let descs: Vec<Desc> = (0..n).map(|_| descriptor(&mut input)).collect();
                let writable = descs
                    .iter()
                    .filter(|d| d.2 & F_WRITE != 0)
                    .map(|d| u64::from(d.1))
                    .sum();
                let head = q.push(&mem, &descs);
                chains.push((head, writable, descs));
            }
            1 => {
                // A round is bounded by the handler's budget; loop while it says there is more.
                for _ in 0..8 {
                    if !handler.process_queue(0) {
                        break;
                    }
                }
            }
            2 => {
                let idx = q.published().wrapping_add(QUEUE_SIZE + 1 + u16::from(input.u8()));
                mem.write_obj(idx, GuestAddress(q.avail() + 2)).expect("idx");
                bogus = true;
            }
            _ => q.set_next_desc(u16::from(input.u8())),
        }
    }
    let before_final = q.used_idx(&mem);
    while handler.process_queue(0) {}
    let used = q.used_idx(&mem);
    out.broken = interrupt.is_broken();
    if out.broken {
        assert_eq!(used, before_final, "a broken device completed more chains");
    }
    assert!(
        usize::from(used) <= chains.len(),
        "{used} completions for {} chains",
        chains.len()
    );
    // Chains overwrite each other's descriptors when the table wraps; lengths are
    // checked against the largest writable total any published chain had.
    let max_writable = chains.iter().map(|c| c.1).max().unwrap_or(0);
    for n in 0..used {
        let (_, len) = q.used_entry(&mem, n);
        assert!(
            len as usize <= MAX_BYTES_PER_REQUEST,
            "used length {len} over the request cap"
        );
        assert!(
            u64::from(len) <= max_writable,
            "used length {len} over the writable bytes"
        );
        out.bytes += u64::from(len);
    }
    out.completed = usize::from(used);
    // Nothing readable-only changed: check the buffer area outside every
    // writable descriptor (the rings live below BUFFERS).
    let mut writable = vec![false; RAM];
    for (_, _, descs) in &chains {
        for &(addr, len, flags) in descs {
            if flags & F_WRITE != 0 && addr < RAM as u64 {
                let end = addr.saturating_add(u64::from(len)).min(RAM as u64);
                writable[addr as usize..end as usize].iter_mut().for_each(|w| *w = true);
            }
        }
    }
    let mut now = vec![0u8; RAM];
    mem.read_slice(&mut now, GuestAddress(0)).expect("read back");
    for i in BUFFERS as usize..RAM {
        if !writable[i] {
            assert_eq!(
                now[i], pattern[i],
                "byte {i:#x} changed though no writable buffer covers it"
            );
        }
    }
    out
}
