//! Merging a diff memory file onto its base (`kvmkit snapshot rebase`,
//! what Firecracker's `snapshot-editor edit-memory rebase` does): every
//! range the diff holds data in (`SEEK_DATA`/`SEEK_HOLE`) is copied to the
//! same offset of the base, which then describes guest RAM at the time of
//! the diff.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use super::SnapshotError;

/// Bytes copied per read/write.
const CHUNK: usize = 1 << 20;

/// What a rebase copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RebaseInfo {
    /// Bytes copied from the diff into the base.
    pub bytes: u64,
    /// Data ranges of the diff.
    pub ranges: u64,
}

/// Writes the data ranges of the diff memory file `diff` into `base` at the
/// same offsets. Both must be as large (guest RAM); the base is changed in
/// place and synced. The diff must lie on a file system that reports holes
/// (ext4, xfs, btrfs, tmpfs): on one that does not, its holes would read as
/// data and zero the base.
pub fn rebase(base: &Path, diff: &Path) -> Result<RebaseInfo, SnapshotError> {
    let d = File::open(diff).map_err(io(diff))?;
    let b = OpenOptions::new().write(true).open(base).map_err(io(base))?;
    let (dm, bm) = (d.metadata().map_err(io(diff))?, b.metadata().map_err(io(base))?);
    if !dm.is_file() || !bm.is_file() {
        return Err(SnapshotError::Io("the base and the diff must be regular files".into()));
    }
    if (dm.dev(), dm.ino()) == (bm.dev(), bm.ino()) {
        return Err(SnapshotError::Io(format!(
            "{} and {} are the same file",
            base.display(),
            diff.display()
        )));
    }
    if dm.len() != bm.len() {
        return Err(SnapshotError::Memory(format!(
            "the diff {} is {} bytes, the base {} {} bytes: not a diff of this base's VM",
            diff.display(),
            dm.len(),
            base.display(),
            bm.len()
        )));
    }
    let mut info = RebaseInfo::default();
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    while pos < dm.len() {
        let Some(start) = seek(&d, pos, libc::SEEK_DATA).map_err(io(diff))? else {
            break;
        };
        let end = seek(&d, start, libc::SEEK_HOLE).map_err(io(diff))?.unwrap_or(dm.len());
        info.ranges += 1;
        let mut at = start;
        while at < end {
            let n = ((end - at) as usize).min(CHUNK);
            d.read_exact_at(&mut buf[..n], at).map_err(io(diff))?;
            b.write_all_at(&buf[..n], at).map_err(io(base))?;
            at += n as u64;
        }
        info.bytes += end - start;
        pos = end;
    }
    b.sync_data().map_err(io(base))?;
    Ok(info)
}

/// An I/O error on `path`, as a snapshot error.
fn io(path: &Path) -> impl Fn(std::io::Error) -> SnapshotError + '_ {
    move |e| SnapshotError::Io(format!("{}: {e}", path.display()))
}

/// `lseek(fd, offset, whence)`; `None` past the last data (`ENXIO`).
fn seek(f: &File, offset: u64, whence: libc::c_int) -> std::io::Result<Option<u64>> {
    let offset = libc::off_t::try_from(offset).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: lseek on a file descriptor owned by `f`; no memory is passed.
    let r = unsafe { libc::lseek(f.as_raw_fd(), offset, whence) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            Some(libc::EINVAL) => Err(std::io::Error::other(
                "this file system cannot report a file's holes (SEEK_DATA); keep diff memory files on ext4, xfs, \
                 btrfs or tmpfs",
            )),
            _ => Err(e),
        };
    }
    Ok(Some(r as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestMemoryMmap;
    use crate::snapshot::dirty::{dirty_bitmaps, PAGE};
    use crate::snapshot::memory::{write_diff_memory_file, write_memory_file};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("kvmkit-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn reset(mem: &GuestMemoryMmap) {
        for r in mem.iter() {
            std::ops::Deref::deref(r).bitmap().dirty().reset();
        }
    }

    #[test]
    fn a_diff_merged_onto_its_base_gives_the_memory_at_the_diff() {
        let dir = temp_dir("rebase");
        let (base, diff) = (dir.join("base"), dir.join("diff"));
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20), (GuestAddress(4 << 20), 1 << 20)])
            .expect("memory");
        // The base: three pages with data.
        for (i, a) in [0x1000u64, 0x5000, (4 << 20) + 0x2000].iter().enumerate() {
            mem.write_slice(&[0xa0 + i as u8; PAGE as usize], GuestAddress(*a))
                .unwrap();
        }
        let regions = write_memory_file(&mem, &base).unwrap();
        reset(&mem);
        // After it: one page changed, one zeroed (must reach the base as
        // zeros), one written that was a hole in the base.
        mem.write_slice(&[0xbb; 16], GuestAddress(0x1000)).unwrap();
        mem.write_slice(&[0; PAGE as usize], GuestAddress(0x5000)).unwrap();
        mem.write_slice(&[0xcc; 8], GuestAddress((4 << 20) + 0xf_f000)).unwrap();
        let (regions2, pages) = write_diff_memory_file(&mem, &dirty_bitmaps(&mem), &diff).unwrap();
        assert_eq!(regions, regions2);
        assert_eq!(pages, 3);
        let meta = std::fs::metadata(&diff).unwrap();
        assert_eq!(meta.len(), 2 << 20);
        assert!(
            meta.blocks() * 512 < 64 << 10,
            "the diff is sparse: {} blocks",
            meta.blocks()
        );
        let info = rebase(&base, &diff).unwrap();
        assert_eq!(info.bytes, 3 * PAGE, "{info:?}");
        let merged = std::fs::read(&base).unwrap();
        let mut want = vec![0u8; 2 << 20];
        for r in mem.iter() {
            let off = regions
                .iter()
                .find(|s| s.guest_addr == r.start_addr().0)
                .unwrap()
                .file_offset as usize;
            mem.read_slice(&mut want[off..off + r.len() as usize], r.start_addr())
                .unwrap();
        }
        assert!(merged == want, "the merged base is guest RAM at the diff");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn mismatched_or_identical_files_are_refused() {
        let dir = temp_dir("rebase-bad");
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::write(&a, vec![1u8; 8192]).unwrap();
        std::fs::write(&b, vec![1u8; 4096]).unwrap();
        let e = rebase(&a, &b).unwrap_err().to_string();
        assert!(e.contains("not a diff of this base"), "{e}");
        let e = rebase(&a, &a).unwrap_err().to_string();
        assert!(e.contains("same file"), "{e}");
        let e = rebase(&a, &dir.join("missing")).unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
