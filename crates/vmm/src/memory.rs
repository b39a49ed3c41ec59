//! Guest RAM: anonymous host memory laid out by [`ram_ranges`], backed by
//! transparent huge pages where the host has them.
//!
//! Every region carries a dirty bitmap ([`AtomicBitmap`], one bit per 4 KiB
//! page): each write kvmkit's own code makes through `vm-memory` (device
//! emulation filling buffers, used rings, the VMGenID page, the boot loader)
//! sets the page's bit. KVM's dirty log sees only the guest's writes; diff
//! snapshots take the union of both (`crate::snapshot::dirty`).

use vm_memory::bitmap::WithBitmapSlice;
use vm_memory::mmap::{MmapRegion, MmapRegionBuilder};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

mod aligned;

use aligned::AlignedMapping;
pub use aligned::{RegionBitmap, GUEST_RAM_ALIGN};
pub use vm_memory::bitmap::AtomicBitmap;

/// Guest RAM as kvmkit uses it everywhere: `vm-memory`'s mmap backend with a
/// dirty bitmap per region (which also owns the region's aligned mapping).
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<RegionBitmap>;

/// One region of [`GuestMemoryMmap`].
pub type GuestRegionMmap = vm_memory::GuestRegionMmap<RegionBitmap>;

/// The bitmap view a volatile slice of guest RAM carries (the `B` of
/// `virtio_queue::{Reader, Writer}` over [`GuestMemoryMmap`]).
pub type GuestBitmapSlice<'a> = <RegionBitmap as WithBitmapSlice<'a>>::S;

use crate::arch::x86_64::layout::ram_ranges;

/// Guest RAM from 0 kept in small pages (boot structures, kernel image).
pub const SMALL_PAGE_AREA: u64 = 8 << 20;

/// Smallest guest RAM kvmkit accepts, in MiB.
pub const MIN_MEMORY_MIB: u64 = 16;

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Less than [`MIN_MEMORY_MIB`].
    #[error("--memory {0} MiB is too small: kvmkit needs at least {MIN_MEMORY_MIB} MiB")]
    TooSmall(u64),
    /// More than the host has.
    #[error("--memory {requested} MiB is more than this host's {host} MiB of RAM; ask for less")]
    MoreThanHost {
        /// Requested MiB.
        requested: u64,
        /// Host MiB.
        host: u64,
    },
    /// mmap failed.
    #[error("cannot allocate {0} MiB of guest memory: {1}")]
    Allocate(u64, String),
}

/// Total host RAM in MiB, from /proc/meminfo (read once per process: it
/// does not change, and `run` checks it twice on its way to the guest).
pub fn host_memory_mib() -> Option<u64> {
    static TOTAL: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *TOTAL.get_or_init(|| {
        use std::io::Read;
        // MemTotal is the first line: one short read, not the whole file.
        let mut head = [0u8; 256];
        let n = std::fs::File::open("/proc/meminfo").ok()?.read(&mut head).ok()?;
        mem_total_mib(head.get(..n)?)
    })
}

/// MemTotal in MiB from the start of /proc/meminfo's text.
fn mem_total_mib(text: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(text).ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Checks a requested size against the limits.
pub fn validate_size(mib: u64, host_mib: Option<u64>) -> Result<(), MemoryError> {
    if mib < MIN_MEMORY_MIB {
        return Err(MemoryError::TooSmall(mib));
    }
    if let Some(host) = host_mib {
        if mib > host {
            return Err(MemoryError::MoreThanHost { requested: mib, host });
        }
    }
    Ok(())
}

/// `size` bytes of anonymous guest RAM at a 2 MiB-aligned host address (see
/// `memory::aligned`), as a `vm-memory` region whose bitmap owns the mapping.
pub fn aligned_ram(size: usize) -> Result<MmapRegion<RegionBitmap>, String> {
    let mapping = AlignedMapping::new(size).map_err(|e| e.to_string())?;
    let ptr = mapping.as_ptr();
    // SAFETY: `ptr` is the start of a read-write mapping of `size` bytes, owned
    // by the bitmap the region keeps for as long as it exists.
    let builder =
        unsafe { MmapRegionBuilder::new_with_bitmap(size, RegionBitmap::owning(mapping)).with_raw_mmap_pointer(ptr) };
    builder
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
        .build()
        .map_err(|e| e.to_string())
}

/// Allocates `mib` MiB of guest RAM, each region mapped at a 2 MiB-aligned
/// host address (so KVM can map it with huge pages), and advises huge pages
/// for it.
pub fn create_guest_memory(mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    validate_size(mib, host_memory_mib())?;
    let allocate = |e: String| MemoryError::Allocate(mib, e);
    let mut regions = Vec::new();
    for (start, size) in ram_ranges(mib << 20) {
        let region = aligned_ram(size as usize).map_err(allocate)?;
        let region = GuestRegionMmap::new(region, GuestAddress(start))
            .ok_or_else(|| allocate(format!("a region at {start:#x} of {size} bytes overflows")))?;
        regions.push(region);
    }
    let mem = GuestMemoryMmap::from_regions(regions).map_err(|e| allocate(e.to_string()))?;
    for region in mem.iter() {
        // Huge pages make first touch ~15x cheaper under PVM (see shared/PVM.md),
        // but a 2 MiB page is resident as soon as one byte of it is touched:
        // the boot area (first 8 MiB) stays in small pages to keep the VMM's
        // footprint small; workloads' memory above it gets huge pages.
        let skip = if region.start_addr().0 == 0 {
            SMALL_PAGE_AREA.min(region.len())
        } else {
            0
        };
        let len = (region.len() - skip) as usize;
        if len == 0 {
            continue;
        }
        // SAFETY: the range lies inside a mapping owned by `mem`; madvise only changes paging policy.
        let rc = unsafe { libc::madvise(region.as_ptr().add(skip as usize).cast(), len, libc::MADV_HUGEPAGE) };
        if rc != 0 {
            tracing::debug!("MADV_HUGEPAGE not applied: {}", std::io::Error::last_os_error());
        }
    }
    Ok(mem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_validated() {
        assert!(matches!(validate_size(8, Some(1024)), Err(MemoryError::TooSmall(8))));
        assert!(matches!(
            validate_size(4096, Some(1024)),
            Err(MemoryError::MoreThanHost { .. })
        ));
        assert!(validate_size(256, Some(1024)).is_ok());
        assert!(validate_size(256, None).is_ok());
    }

    /// The process's mapped address space (VmSize), in KiB.
    fn vm_size_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        let line = status.lines().find(|l| l.starts_with("VmSize:")).expect("VmSize");
        line.split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .expect("kib")
    }

    #[test]
    fn dropped_guest_memory_is_unmapped() {
        // The aligned mappings are unmapped by the regions' bitmaps: 40 VMs'
        // worth of 64 MiB leave no 2.5 GiB behind (other tests' threads may
        // map a little meanwhile, hence the wide bound).
        let before = vm_size_kib();
        for _ in 0..40 {
            let mem = create_guest_memory(64).expect("memory");
            let copy = mem.clone();
            drop(mem);
            assert_eq!(
                copy.iter().map(|r| r.len()).sum::<u64>(),
                64 << 20,
                "a clone keeps the RAM"
            );
        }
        let grown_mib = vm_size_kib().saturating_sub(before) / 1024;
        assert!(grown_mib < 1024, "the address space grew by {grown_mib} MiB");
    }

    #[test]
    fn memory_is_created_with_the_requested_size() {
        let mem = create_guest_memory(32).expect("memory");
        assert_eq!(mem.iter().map(|r| r.len()).sum::<u64>(), 32 << 20);
        for region in mem.iter() {
            assert_eq!(region.as_ptr() as usize % GUEST_RAM_ALIGN, 0, "region host address");
            assert!(std::ops::Deref::deref(region).bitmap().owns_mapping());
        }
        assert!(host_memory_mib().unwrap_or(0) > 0);
        assert_eq!(mem_total_mib(b"MemTotal:       24684092 kB\nMemF"), Some(24105));
        assert_eq!(mem_total_mib(b"MemFree: 1 kB\n"), None);
        assert_eq!(mem_total_mib(b"MemTotal: lots\n"), None);
    }
}
