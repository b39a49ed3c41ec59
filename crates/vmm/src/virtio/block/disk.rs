//! A raw disk image on the host: opened, checked and locked before boot.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;

/// Errors opening a disk image (all reported before the VM starts).
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The image does not exist.
    #[error("disk image {0} does not exist: create it (e.g. truncate -s 64M {0})")]
    Missing(PathBuf),
    /// The path is a directory.
    #[error("disk image {0} is a directory; give a raw image file")]
    Directory(PathBuf),
    /// No permission.
    #[error("no permission to open disk image {0} {1}: fix its permissions or add ro=on")]
    Permission(PathBuf, &'static str),
    /// Another process holds the image.
    #[error("disk image {0} is in use by another process (locked); stop it or use a copy")]
    Locked(PathBuf),
    /// Not a whole number of sectors.
    #[error("disk image {0} is {1} bytes, not a multiple of 512; resize it (truncate -s)")]
    NotSectorAligned(PathBuf, u64),
    /// Another I/O error.
    #[error("cannot open disk image {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// Alignment of I/O buffers (enough for O_DIRECT on 4 KiB-sector disks).
pub const IO_ALIGN: usize = 4096;

/// A zeroed, [`IO_ALIGN`]-aligned byte buffer, reused across requests (and
/// required by O_DIRECT).
pub struct AlignedBuffer {
    ptr: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
}

// SAFETY: the buffer is uniquely owned heap memory, like a Vec<u8>.
unsafe impl Send for AlignedBuffer {}

impl AlignedBuffer {
    /// A buffer of `len` bytes (at least 1).
    pub fn new(len: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(len.max(1), IO_ALIGN)
            .unwrap_or_else(|_| std::alloc::Layout::new::<[u8; IO_ALIGN]>());
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = std::ptr::NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Self { ptr, layout }
    }
}

impl std::ops::Deref for AlignedBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` points to `layout.size()` initialised bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl std::ops::DerefMut for AlignedBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref, and `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this very layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// An open, locked raw image.
#[derive(Debug)]
pub struct DiskImage {
    file: File,
    path: PathBuf,
    read_only: bool,
    direct: bool,
    size: u64,
    /// Host I/O errors (ENOSPC, EIO ...) the guest saw as VIRTIO_BLK_S_IOERR.
    host_errors: AtomicU64,
    /// The errnos already logged (each once per image; a few at most).
    logged: Mutex<Vec<i32>>,
}

/// Most distinct errnos logged per image (the count goes on regardless).
const MAX_LOGGED_ERRNOS: usize = 8;

impl DiskImage {
    /// Opens `path` (read-only when `read_only`), takes an exclusive lock
    /// (shared for read-only), and checks it is a whole number of sectors.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, DiskError> {
        Self::open_with(path, read_only, false)
    }

    /// As [`Self::open`]; with `direct`, I/O bypasses the host page cache
    /// (O_DIRECT, `cache=none`), falling back to cached I/O with a warning
    /// where the file system does not support it.
    pub fn open_with(path: &Path, read_only: bool, direct: bool) -> Result<Self, DiskError> {
        let p = path.to_path_buf();
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => DiskError::Missing(p.clone()),
            _ => DiskError::Io(p.clone(), e),
        })?;
        if meta.is_dir() {
            return Err(DiskError::Directory(p));
        }
        // A FIFO would block in open(2); a socket or character device is no disk.
        crate::files::check_input_file(path).map_err(|e| DiskError::Io(p.clone(), e))?;
        let open = |flags: i32| {
            use std::os::unix::fs::OpenOptionsExt;
            OpenOptions::new()
                .read(true)
                .write(!read_only)
                .custom_flags(flags)
                .open(path)
        };
        let (file, direct) = match (direct, open(if direct { libc::O_DIRECT } else { 0 })) {
            (true, Err(e)) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(
                    "{}: the file system has no O_DIRECT; cache=none falls back to cached I/O",
                    p.display()
                );
                (open(0), false)
            }
            (d, r) => (r, d),
        };
        let file = file.map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => {
                DiskError::Permission(p.clone(), if read_only { "for reading" } else { "for writing" })
            }
            _ => DiskError::Io(p.clone(), e),
        })?;
        // root opens a mode-0444 image for writing without complaint; the owner
        // who made it read-only likely did not mean the guest to write it.
        if !read_only && meta.is_file() && meta.permissions().readonly() {
            tracing::warn!(
                "disk image {} has no write permission bits (mode {:o}) but is opened for writing (kvmkit runs as \
                 root); the guest can change it: add ro=on if it must stay as it is",
                p.display(),
                std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777
            );
        }
        let op = if read_only { libc::LOCK_SH } else { libc::LOCK_EX } | libc::LOCK_NB;
        // SAFETY: flock on a descriptor we own; it only takes an advisory lock.
        if unsafe { libc::flock(file.as_raw_fd(), op) } != 0 {
            return Err(DiskError::Locked(p));
        }
        // A block device's metadata says 0 bytes: its size is where a seek to the end lands.
        let size = if meta.file_type().is_block_device() {
            (&file)
                .seek(SeekFrom::End(0))
                .map_err(|e| DiskError::Io(p.clone(), e))?
        } else {
            file.metadata().map_err(|e| DiskError::Io(p.clone(), e))?.len()
        };
        if size % SECTOR_SIZE != 0 {
            return Err(DiskError::NotSectorAligned(p, size));
        }
        Ok(Self {
            file,
            path: p,
            read_only,
            direct,
            size,
            host_errors: AtomicU64::new(0),
            logged: Mutex::new(Vec::new()),
        })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether I/O bypasses the host page cache (O_DIRECT).
    pub fn direct(&self) -> bool {
        self.direct
    }

    /// Whether the image was opened read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Where the image lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Host I/O errors so far (each one reached the guest as an I/O error).
    pub fn host_errors(&self) -> u64 {
        self.host_errors.load(Ordering::Relaxed)
    }

    /// Counts a failed host operation and logs each distinct errno once per
    /// image, with the path (a guest cannot flood the log by retrying).
    fn noted<T>(&self, op: &str, result: std::io::Result<T>) -> std::io::Result<T> {
        if let Err(e) = &result {
            self.host_errors.fetch_add(1, Ordering::Relaxed);
            let errno = e.raw_os_error().unwrap_or(-1);
            let mut logged = crate::bus::lock(&self.logged);
            if !logged.contains(&errno) && logged.len() < MAX_LOGGED_ERRNOS {
                logged.push(errno);
                tracing::error!(
                    "disk image {}: host {op} failed: {e} (errno {errno}); the guest gets an I/O error, and further \
                     failures with this errno are only counted (host_io_errors in the metrics)",
                    self.path.display()
                );
            }
        }
        result
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.noted("read", self.file.read_exact_at(buf, offset))
    }

    /// Writes `buf` at `offset`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.noted("write", self.file.write_all_at(buf, offset))
    }

    /// Makes every completed write durable (fdatasync).
    pub fn flush(&self) -> std::io::Result<()> {
        self.noted("flush", self.file.sync_data())
    }

    /// Deallocates `[offset, offset + len)` (reads then return zeros).
    pub fn punch_hole(&self, offset: u64, len: u64) -> std::io::Result<()> {
        let r = self.fallocate(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, offset, len);
        self.noted("discard", r)
    }

    /// Zeroes `[offset, offset + len)`, falling back to writing zeros.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> std::io::Result<()> {
        if self
            .fallocate(libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE, offset, len)
            .is_ok()
        {
            return Ok(());
        }
        let zeros = AlignedBuffer::new(1 << 20);
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            self.write_at(&zeros[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> std::io::Result<()> {
        let (Ok(off), Ok(l)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        };
        // SAFETY: fallocate on our own descriptor with checked, non-negative ranges.
        if unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, l) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, size: u64) -> PathBuf {
        let p = std::env::temp_dir().join(format!("kvmkit-disk-{name}-{}", std::process::id()));
        let f = File::create(&p).expect("create");
        f.set_len(size).expect("size");
        p
    }

    #[test]
    fn bad_images_are_refused_with_reasons() {
        assert!(matches!(
            DiskImage::open(Path::new("/nonexistent.img"), false),
            Err(DiskError::Missing(_))
        ));
        assert!(matches!(
            DiskImage::open(Path::new("/tmp"), false),
            Err(DiskError::Directory(_))
        ));
        let odd = temp("odd", 1000);
        assert!(matches!(
            DiskImage::open(&odd, false),
            Err(DiskError::NotSectorAligned(_, 1000))
        ));
        let _ = std::fs::remove_file(odd);
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let p = std::env::temp_dir().join(format!("kvmkit-disk-fifo-{}", std::process::id()));
        let c = std::ffi::CString::new(p.to_str().expect("utf8")).expect("cstr");
        // SAFETY: mkfifo on a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        let q = p.clone();
        std::thread::spawn(move || {
            let _ = tx.send(DiskImage::open(&q, true).map(|_| ()).map_err(|e| e.to_string()));
        });
        let r = rx
            .recv_timeout(std::time::Duration::from_secs(1))
            .expect("opening a FIFO must not block");
        assert!(r.expect_err("a FIFO disk").contains("FIFO"));
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn a_second_writer_is_refused() {
        let p = temp("lock", 4096);
        let first = DiskImage::open(&p, false).expect("first");
        assert!(matches!(DiskImage::open(&p, false), Err(DiskError::Locked(_))));
        assert!(matches!(DiskImage::open(&p, true), Err(DiskError::Locked(_))));
        drop(first);
        let r1 = DiskImage::open(&p, true).expect("shared");
        let _r2 = DiskImage::open(&p, true).expect("shared twice");
        assert!(r1.read_only());
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn direct_io_round_trips_with_aligned_buffers() {
        let p = temp("direct", 8192);
        let d = DiskImage::open_with(&p, false, true).expect("open");
        let mut buf = AlignedBuffer::new(4096);
        assert_eq!(buf.as_ptr() as usize % IO_ALIGN, 0);
        buf.fill(3);
        d.write_at(&buf, 4096).expect("write");
        d.flush().expect("flush");
        buf.fill(0);
        d.read_at(&mut buf, 4096).expect("read");
        assert!(buf.iter().all(|&b| b == 3));
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn host_errors_are_counted_and_each_errno_logged_once() {
        let p = temp("err", 4096);
        let d = DiskImage::open(&p, false).expect("open");
        // Reading past the end of the file fails on the host (short read).
        let mut b = [0u8; 512];
        assert!(d.read_at(&mut b, 8192).is_err());
        assert!(d.read_at(&mut b, 8192).is_err());
        assert_eq!(d.host_errors(), 2);
        assert_eq!(crate::bus::lock(&d.logged).len(), 1, "one errno, logged once");
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn io_round_trips() {
        let p = temp("io", 8192);
        let d = DiskImage::open(&p, false).expect("open");
        d.write_at(&[7u8; 512], 512).expect("write");
        d.flush().expect("flush");
        let mut b = [0u8; 512];
        d.read_at(&mut b, 512).expect("read");
        assert_eq!(b, [7u8; 512]);
        d.write_zeroes(512, 512).expect("zero");
        d.read_at(&mut b, 512).expect("read");
        assert_eq!(b, [0u8; 512]);
        let _ = std::fs::remove_file(p);
    }
}
