//! The memory file: guest RAM regions back to back. Restore maps it
//! `MAP_PRIVATE`: the guest reads pages from the file on first touch and
//! its writes go to private copies, so the file is never changed and any
//! number of VMs can be restored from it at once.

use std::fs::File;
use std::path::Path;

use vm_memory::mmap::{GuestRegionMmap, MmapRegion};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::memory::GuestMemoryMmap;

use super::dirty::{for_each_run, pages, DirtyBitmaps};
use super::{file, MemoryRegionState, SnapshotError};

/// Writes every region of `memory` to `path` (atomically). The VM must be
/// paused: nothing may write guest RAM meanwhile.
pub fn write_memory_file(memory: &GuestMemoryMmap, path: &Path) -> Result<Vec<MemoryRegionState>, SnapshotError> {
    let (regions, offset) = region_table(memory);
    file::write_atomic(path, |f| {
        for (r, st) in memory.iter().zip(&regions) {
            // SAFETY: the region is a live mapping of `r.len()` bytes owned by
            // `memory`; the VM is paused, so no vCPU or device writes it while
            // it is read here (a concurrent write could only tear the copy).
            let bytes = unsafe { std::slice::from_raw_parts(r.as_ptr().cast_const(), r.len() as usize) };
            write_sparse(f, bytes, st.file_offset)?;
        }
        f.set_len(offset)
    })?;
    Ok(regions)
}

/// Writes a diff memory file (Firecracker's layout): a file as large as
/// guest RAM holding, at their offsets, only the pages set in `dirty` (one
/// bitmap per region, [`super::dirty`]); every other page is a hole. A
/// dirty page is written even when it is all zeros, so that merging the
/// diff onto its base ([`super::rebase`]) overwrites the base's old bytes.
/// Returns the region table and the number of pages written.
pub fn write_diff_memory_file(
    memory: &GuestMemoryMmap,
    dirty: &DirtyBitmaps,
    path: &Path,
) -> Result<(Vec<MemoryRegionState>, usize), SnapshotError> {
    use std::os::unix::fs::FileExt;
    let (regions, total) = region_table(memory);
    let mut written = 0usize;
    file::write_atomic(path, |f| {
        f.set_len(total)?;
        for ((r, st), bits) in memory.iter().zip(&regions).zip(dirty) {
            // SAFETY: as in write_memory_file: a live mapping owned by
            // `memory`, read while the VM is paused.
            let bytes = unsafe { std::slice::from_raw_parts(r.as_ptr().cast_const(), r.len() as usize) };
            let mut result = Ok(());
            for_each_run(bits, pages(r.len()), |first, count| {
                let start = first * PAGE;
                let end = (start + count * PAGE).min(bytes.len());
                if result.is_ok() {
                    result = f.write_all_at(&bytes[start..end], st.file_offset + start as u64);
                    written += count;
                }
            });
            result?;
        }
        Ok(())
    })?;
    Ok((regions, written))
}

/// Guest RAM regions back to back: each region's place in a memory file,
/// and the file's length.
fn region_table(memory: &GuestMemoryMmap) -> (Vec<MemoryRegionState>, u64) {
    let mut regions = Vec::new();
    let mut offset = 0u64;
    for r in memory.iter() {
        regions.push(MemoryRegionState {
            guest_addr: r.start_addr().0,
            size: r.len(),
            file_offset: offset,
        });
        offset += r.len();
    }
    (regions, offset)
}

/// Page granularity of the holes in a memory file.
const PAGE: usize = 4096;

/// Writes `bytes` at `offset`, leaving all-zero pages as holes: the file
/// takes only the disk the guest used, and a restore maps holes as zero
/// pages without reading anything.
fn write_sparse(f: &File, bytes: &[u8], offset: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut run_start: Option<usize> = None;
    let mut at = 0;
    while at < bytes.len() {
        let end = (at + PAGE).min(bytes.len());
        let zero = bytes[at..end].iter().fold(0u8, |acc, &b| acc | b) == 0;
        match (zero, run_start) {
            (false, None) => run_start = Some(at),
            (true, Some(s)) => {
                f.write_all_at(&bytes[s..at], offset + s as u64)?;
                run_start = None;
            }
            _ => {}
        }
        at = end;
    }
    if let Some(s) = run_start {
        f.write_all_at(&bytes[s..], offset + s as u64)?;
    }
    Ok(())
}

/// Maps `path` as guest RAM laid out as `regions`: privately
/// (copy-on-write, loaded on demand), or with `copy` into fresh anonymous
/// memory read eagerly. The file must be exactly as large as the regions.
pub fn map_memory_file(
    path: &Path,
    regions: &[MemoryRegionState],
    copy: bool,
) -> Result<GuestMemoryMmap, SnapshotError> {
    let io = |e: std::io::Error| SnapshotError::Io(format!("memory file {}: {e}", path.display()));
    let f = File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    let want: u64 = regions.iter().map(|r| r.size).sum();
    if len != want {
        return Err(SnapshotError::Memory(format!(
            "memory file {} is {len} bytes, the snapshot's guest RAM is {want} bytes",
            path.display()
        )));
    }
    let mut out = Vec::with_capacity(regions.len());
    for r in regions {
        let size = r.size as usize;
        let mapping = if copy {
            let m = crate::memory::aligned_ram(size).map_err(|e| SnapshotError::Memory(format!("guest RAM: {e}")))?;
            let mut done = 0usize;
            while done < size {
                // SAFETY: `m` is a fresh writable mapping of `size` bytes; the
                // pointer and length stay inside it.
                let n = unsafe {
                    libc::pread(
                        std::os::fd::AsRawFd::as_raw_fd(&f),
                        m.as_ptr().add(done).cast(),
                        size - done,
                        (r.file_offset + done as u64) as libc::off_t,
                    )
                };
                if n <= 0 {
                    return Err(io(if n == 0 {
                        std::io::Error::from(std::io::ErrorKind::UnexpectedEof)
                    } else {
                        std::io::Error::last_os_error()
                    }));
                }
                done += n as usize;
            }
            m
        } else {
            let fo = FileOffset::new(f.try_clone().map_err(io)?, r.file_offset);
            MmapRegion::build(
                Some(fo),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_NORESERVE,
            )
            .map_err(|e| SnapshotError::Memory(format!("mapping {}: {e}", path.display())))?
        };
        let region = GuestRegionMmap::new(mapping, GuestAddress(r.guest_addr))
            .ok_or_else(|| SnapshotError::Memory("a memory region wraps the address space".into()))?;
        out.push(region);
    }
    GuestMemoryMmap::from_regions(out).map_err(|e| SnapshotError::Memory(format!("guest RAM layout: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn memory_round_trips_through_a_private_mapping() {
        let dir = std::env::temp_dir().join(format!("kvmkit-snapmem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mem");
        let mem =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20), (GuestAddress(4 << 20), 1 << 20)]).unwrap();
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x1000)).unwrap();
        mem.write_obj(0x1234_u32, GuestAddress((4 << 20) + 8)).unwrap();
        let regions = write_memory_file(&mem, &path).unwrap();
        assert_eq!(regions.len(), 2);
        for copy in [false, true] {
            let back = map_memory_file(&path, &regions, copy).unwrap();
            assert_eq!(back.read_obj::<u32>(GuestAddress(0x1000)).unwrap(), 0xdead_beef);
            assert_eq!(back.read_obj::<u32>(GuestAddress((4 << 20) + 8)).unwrap(), 0x1234);
            // Private: the file does not change.
            back.write_obj(7u32, GuestAddress(0x1000)).unwrap();
        }
        let again = map_memory_file(&path, &regions, false).unwrap();
        assert_eq!(again.read_obj::<u32>(GuestAddress(0x1000)).unwrap(), 0xdead_beef);
        let short = &regions[..1];
        let e = map_memory_file(&path, short, false).unwrap_err().to_string();
        assert!(e.contains("bytes"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
