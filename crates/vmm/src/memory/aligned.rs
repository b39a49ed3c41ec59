//! Guest RAM mapped at 2 MiB-aligned host addresses, and the region bitmap
//! that owns such a mapping.
//!
//! KVM maps guest RAM with 2 MiB (or 1 GiB) pages in its EPT/NPT only where
//! the guest-physical and host-virtual addresses agree modulo the page size.
//! RAM regions start at 2 MiB-aligned guest addresses, so the host mapping
//! must be 2 MiB-aligned too. `mmap` promises only 4 KiB alignment (Linux
//! aligns large anonymous mappings to 2 MiB only since 6.7); a misaligned
//! mapping leaves KVM at 4 KiB pages even where the host backs RAM with
//! transparent huge pages. In the nested lab (L1 Linux 6.1) that was 17,356
//! nested page faults for one Linux boot against Firecracker's 612, which
//! aligns the same way.
//!
//! `vm-memory` maps what it owns itself, unaligned; it takes a mapping made
//! elsewhere only as borrowed. [`RegionBitmap`] is the region's dirty bitmap
//! and also owns the aligned mapping: the region drops its bitmap when it
//! is dropped, so the mapping lives exactly as long as the region.

use vm_memory::bitmap::{AtomicBitmap, Bitmap, NewBitmap, WithBitmapSlice};

/// Alignment of guest RAM mappings: the x86 huge page.
pub const GUEST_RAM_ALIGN: usize = 2 << 20;

/// An anonymous, private, read-write mapping at a [`GUEST_RAM_ALIGN`]-aligned
/// address, unmapped on drop.
#[derive(Debug)]
pub(crate) struct AlignedMapping {
    addr: usize,
    len: usize,
}

impl AlignedMapping {
    /// Maps `len` bytes (a multiple of 4 KiB) at a 2 MiB-aligned address:
    /// reserves `len + 2 MiB - 4 KiB` without access, then maps the aligned
    /// part read-write over it and unmaps the rest.
    pub(crate) fn new(len: usize) -> std::io::Result<Self> {
        const PAGE: usize = 4096;
        if len == 0 || !len.is_multiple_of(PAGE) {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        let reserve = len
            .checked_add(GUEST_RAM_ALIGN - PAGE)
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOMEM))?;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        // SAFETY: a new anonymous mapping at an address the kernel picks; nothing aliases it.
        let base = unsafe { libc::mmap(std::ptr::null_mut(), reserve, libc::PROT_NONE, flags, -1, 0) };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base = base as usize;
        let addr = base.next_multiple_of(GUEST_RAM_ALIGN);
        // SAFETY: [addr, addr + len) lies inside the reservation just made, which
        // nothing else uses; MAP_FIXED replaces that part of it.
        let mapped = unsafe {
            libc::mmap(
                addr as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if mapped == libc::MAP_FAILED {
            let err = std::io::Error::last_os_error();
            // SAFETY: the whole reservation is ours.
            unsafe { libc::munmap(base as *mut libc::c_void, reserve) };
            return Err(err);
        }
        let head = addr - base;
        let tail = reserve - head - len;
        // SAFETY: head and tail are the unused, page-aligned ends of our reservation.
        unsafe {
            if head > 0 {
                libc::munmap(base as *mut libc::c_void, head);
            }
            if tail > 0 {
                libc::munmap((addr + len) as *mut libc::c_void, tail);
            }
        }
        Ok(Self { addr, len })
    }

    /// The mapping's first byte.
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.addr as *mut u8
    }

    /// Its length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for AlignedMapping {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `new` and is unmapped once, here; the
        // region that used it is gone (it owns this value through its bitmap).
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// A guest RAM region's bitmap: the dirty bits of kvmkit's own writes
/// ([`AtomicBitmap`], one per 4 KiB page) and, for RAM kvmkit mapped itself,
/// the `AlignedMapping` the region reads and writes.
#[derive(Debug, Default)]
pub struct RegionBitmap {
    dirty: AtomicBitmap,
    /// Unmapped when the region (and so this bitmap) is dropped; `None` for
    /// mappings `vm-memory` owns (snapshot files, tests).
    _mapping: Option<AlignedMapping>,
}

impl RegionBitmap {
    /// A clean bitmap for `mapping`, which it keeps until it is dropped.
    pub(crate) fn owning(mapping: AlignedMapping) -> Self {
        Self {
            dirty: AtomicBitmap::with_len(mapping.len()),
            _mapping: Some(mapping),
        }
    }

    /// The dirty bits.
    pub fn dirty(&self) -> &AtomicBitmap {
        &self.dirty
    }

    /// Whether this bitmap holds the region's (aligned) mapping.
    #[cfg(test)]
    pub(crate) fn owns_mapping(&self) -> bool {
        self._mapping.is_some()
    }
}

impl<'a> WithBitmapSlice<'a> for RegionBitmap {
    type S = <AtomicBitmap as WithBitmapSlice<'a>>::S;
}

impl Bitmap for RegionBitmap {
    fn mark_dirty(&self, offset: usize, len: usize) {
        self.dirty.mark_dirty(offset, len)
    }

    fn dirty_at(&self, offset: usize) -> bool {
        self.dirty.dirty_at(offset)
    }

    fn slice_at(&self, offset: usize) -> <Self as WithBitmapSlice<'_>>::S {
        self.dirty.slice_at(offset)
    }
}

impl NewBitmap for RegionBitmap {
    fn with_len(len: usize) -> Self {
        Self {
            dirty: AtomicBitmap::with_len(len),
            _mapping: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_are_aligned_and_writable() {
        for len in [4096, 3 << 20, 256 << 20] {
            let m = AlignedMapping::new(len).expect("mapping");
            assert_eq!(m.as_ptr() as usize % GUEST_RAM_ALIGN, 0, "{len} bytes");
            // SAFETY: the mapping is ours, read-write and `len` bytes long.
            unsafe {
                m.as_ptr().write(1);
                m.as_ptr().add(len - 1).write(2);
            }
        }
        assert!(AlignedMapping::new(0).is_err());
        assert!(AlignedMapping::new(100).is_err());
        assert!(AlignedMapping::new(usize::MAX - 4095).is_err());
    }
}
