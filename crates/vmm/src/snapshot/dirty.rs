//! Dirty pages for diff snapshots: KVM's dirty log (the guest's writes,
//! `KVM_MEM_LOG_DIRTY_PAGES` slots read with `KVM_GET_DIRTY_LOG`) merged
//! with the bitmap `vm-memory` keeps of kvmkit's own writes to guest RAM
//! (virtio devices filling buffers and used rings, the VMGenID page), which
//! KVM's log does not see.
//!
//! KVM's log is cleared when it is read, so each read is stored into the
//! region's bitmap at once: a snapshot that fails afterwards loses nothing,
//! and the next one writes those pages. Only a snapshot that was written
//! clears the bitmaps ([`clear`]).

use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::SnapshotError;
use crate::memory::{AtomicBitmap, GuestMemoryMmap, GuestRegionMmap};

/// Page size of both bitmaps (KVM's log on x86 and `AtomicBitmap`).
pub const PAGE: u64 = 4096;

/// Pages of each region, in region (= KVM slot) order: one bit per page,
/// bit `i % 64` of word `i / 64` (`KVM_GET_DIRTY_LOG`'s layout).
pub type DirtyBitmaps = Vec<Vec<u64>>;

/// Reads and clears KVM's dirty log of every slot (slot `i` is region `i`,
/// as `Vm::new` registers them) and sets those pages in the regions' own
/// bitmaps. Call with the VM paused.
pub fn collect_kvm_log(vm: &VmFd, memory: &GuestMemoryMmap) -> Result<(), SnapshotError> {
    for (slot, region) in memory.iter().enumerate() {
        let log = vm
            .get_dirty_log(slot as u32, region.len() as usize)
            .map_err(|e| SnapshotError::Kvm(format!("KVM_GET_DIRTY_LOG of memory slot {slot}: {e}")))?;
        let bitmap = own_bitmap(region);
        for_each_run(&log, pages(region.len()), |first, count| {
            bitmap.set_addr_range((first as u64 * PAGE) as usize, (count as u64 * PAGE) as usize);
        });
    }
    Ok(())
}

/// The dirty pages of every region as recorded in the regions' bitmaps
/// (after [`collect_kvm_log`]: the guest's writes and kvmkit's). Does not
/// clear anything.
pub fn dirty_bitmaps(memory: &GuestMemoryMmap) -> DirtyBitmaps {
    memory
        .iter()
        .map(|region| {
            let n = pages(region.len());
            let bitmap = own_bitmap(region);
            let mut words = vec![0u64; n.div_ceil(64)];
            for page in 0..n {
                if bitmap.is_bit_set(page) {
                    words[page / 64] |= 1 << (page % 64);
                }
            }
            words
        })
        .collect()
}

/// Marks every page clean in kvmkit's bitmaps and, through one more read,
/// in KVM's log (after a snapshot was written, with the VM paused).
pub fn clear(vm: &VmFd, memory: &GuestMemoryMmap) -> Result<(), SnapshotError> {
    for (slot, region) in memory.iter().enumerate() {
        vm.get_dirty_log(slot as u32, region.len() as usize)
            .map_err(|e| SnapshotError::Kvm(format!("KVM_GET_DIRTY_LOG of memory slot {slot}: {e}")))?;
        own_bitmap(region).reset();
    }
    Ok(())
}

/// The region's own bitmap (the `vm-memory` trait's `bitmap()` gives a
/// slice view without the page-level calls).
fn own_bitmap(region: &GuestRegionMmap) -> &AtomicBitmap {
    std::ops::Deref::deref(region).bitmap().dirty()
}

/// Number of pages in `bytes` (a region's length is page-aligned).
pub fn pages(bytes: u64) -> usize {
    bytes.div_ceil(PAGE) as usize
}

/// Calls `f(first_page, count)` for each run of set bits among the first
/// `pages` bits of `words`, in order.
pub fn for_each_run(words: &[u64], pages: usize, mut f: impl FnMut(usize, usize)) {
    let mut run: Option<usize> = None;
    let mut page = 0;
    while page < pages {
        let word = words.get(page / 64).copied().unwrap_or(0);
        // Whole clean words are skipped at once (most of a diff's RAM).
        if word == 0 && page % 64 == 0 && run.is_none() {
            page += 64;
            continue;
        }
        let set = word & (1 << (page % 64)) != 0;
        match (set, run) {
            (true, None) => run = Some(page),
            (false, Some(start)) => {
                f(start, page - start);
                run = None;
            }
            _ => {}
        }
        page += 1;
    }
    if let Some(start) = run {
        f(start, pages - start);
    }
}

/// Number of set bits among the first `pages` bits of `words`.
pub fn count(words: &[u64], pages: usize) -> usize {
    let mut n = 0;
    for_each_run(words, pages, |_, c| n += c);
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    fn runs(words: &[u64], pages: usize) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for_each_run(words, pages, |a, b| out.push((a, b)));
        out
    }

    #[test]
    fn runs_of_set_bits_are_found_across_words_and_cut_at_the_end() {
        assert_eq!(runs(&[], 0), vec![]);
        assert_eq!(runs(&[0, 0], 128), vec![]);
        assert_eq!(runs(&[1], 64), vec![(0, 1)]);
        assert_eq!(runs(&[0b1101], 64), vec![(0, 1), (2, 2)]);
        // A run over a word boundary is one run.
        assert_eq!(runs(&[1 << 63, 0b11], 128), vec![(63, 3)]);
        // A full word, then a run that reaches the last page.
        assert_eq!(runs(&[u64::MAX, 1 << 63], 128), vec![(0, 64), (127, 1)]);
        // Bits past `pages` are ignored; a run is cut at `pages`.
        assert_eq!(runs(&[u64::MAX], 10), vec![(0, 10)]);
        assert_eq!(runs(&[1 << 20], 10), vec![]);
        // A shorter bitmap than `pages`: the missing words are clean.
        assert_eq!(runs(&[1 << 63], 200), vec![(63, 1)]);
        assert_eq!(count(&[0b1101, u64::MAX], 128), 67);
    }

    #[test]
    fn writes_through_vm_memory_are_marked_and_cleared() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20), (GuestAddress(4 << 20), 1 << 20)])
            .expect("memory");
        assert!(dirty_bitmaps(&mem).iter().all(|r| r.iter().all(|&w| w == 0)));
        mem.write_obj(7u64, GuestAddress(0x3000)).unwrap();
        // Across a page boundary: both pages.
        mem.write_slice(&[1u8; 8], GuestAddress((4 << 20) + 0x1ffc)).unwrap();
        let d = dirty_bitmaps(&mem);
        assert_eq!(runs(&d[0], 256), vec![(3, 1)]);
        assert_eq!(runs(&d[1], 256), vec![(1, 2)]);
        // Reading marks nothing.
        let _: u64 = mem.read_obj(GuestAddress(0x5000)).unwrap();
        assert_eq!(count(&dirty_bitmaps(&mem)[0], 256), 1);
        for r in mem.iter() {
            own_bitmap(r).reset();
        }
        assert!(dirty_bitmaps(&mem).iter().all(|r| r.iter().all(|&w| w == 0)));
    }
}
