//! The host environment's runner: the test guest's workloads on the bare host, with the
//! very same code (the `kvmkit-workloads` crate), for guest/host ratios. `kvmkit host`
//! prints what these return; `kvmkit bench` times its host column with them.

use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context};
use kvmkit_workloads::{
    blowfish_mib, compress_mib, count_primes, des_mib, fill_sectors, md5_mib, memtest, raytrace, smallio_op,
    COMPRESS_WORKSPACE, SMALLIO_BLOCK, SMALLIO_FLUSH_EVERY, SMALLIO_SPAN_MIB, SUITE_BUFFER,
};

use crate::pages::{HugePageBuffer, PageReport};

/// One thread's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HostResult {
    /// Workload name.
    pub name: String,
    /// Its argument.
    pub arg: u64,
    /// Thread index.
    pub thread: usize,
    /// Result value (prime count, memtest errors).
    pub value: u64,
    /// Elapsed nanoseconds.
    pub ns: u64,
    /// memtest: the page-size policy its buffer got (see [`crate::pages`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pages: Option<PageReport>,
}

/// Runs one thread's share of a workload.
pub fn run_one(name: &str, arg: u64, thread: usize) -> anyhow::Result<HostResult> {
    run_share(name, arg, thread, 1)
}

/// Runs thread `thread`'s share (of `threads`) of a CPU workload: the ray tracer
/// renders every `threads`-th row; the others run whole on every thread.
pub fn run_share(name: &str, arg: u64, thread: usize, threads: usize) -> anyhow::Result<HostResult> {
    let suite_buffers = || (vec![0u8; SUITE_BUFFER], vec![0u8; COMPRESS_WORKSPACE]);
    let mut pages = None;
    let (value, ns) = match name {
        "raytrace" => {
            let t0 = Instant::now();
            let sum = raytrace(black_box(arg), thread as u64, threads as u64);
            (sum, t0.elapsed().as_nanos() as u64)
        }
        "md5" | "des" | "blowfish" | "compress" => {
            let (mut buf, mut work) = suite_buffers();
            let t0 = Instant::now();
            let value = match name {
                "md5" => md5_mib(&mut buf, black_box(arg)),
                "des" => des_mib(&mut buf, black_box(arg)),
                "blowfish" => blowfish_mib(&mut buf, black_box(arg)),
                _ => {
                    let r = compress_mib(&mut buf, &mut work, black_box(arg));
                    if r.errors != 0 {
                        bail!("compress: {} block(s) did not round-trip", r.errors);
                    }
                    r.compressed
                }
            };
            (value, t0.elapsed().as_nanos() as u64)
        }
        "primes" => {
            let t0 = Instant::now();
            let count = count_primes(black_box(arg));
            (count, t0.elapsed().as_nanos() as u64)
        }
        "memtest" => {
            let words = usize::try_from(arg << 17).context("memtest size too large")?;
            let (errors, ns, report) = memtest_words(words, thread)?;
            pages = Some(report);
            (errors, ns)
        }
        other => bail!("unknown host workload '{other}'"),
    };
    Ok(HostResult {
        name: name.to_owned(),
        arg,
        thread,
        value,
        ns,
        pages,
    })
}

/// One thread's memtest over `words` u64s in memory paged like guest RAM: a fresh
/// [`HugePageBuffer`], first touched inside the timed run as guest RAM is in the guest.
/// Returns (errors, ns, the policy the buffer got).
pub fn memtest_words(words: usize, thread: usize) -> anyhow::Result<(u64, u64, PageReport)> {
    let mut buf = HugePageBuffer::new(words)?;
    let t0 = Instant::now();
    let report = memtest(buf.as_mut_slice(), 0x5eed_0000 + thread as u64);
    let ns = t0.elapsed().as_nanos() as u64;
    Ok((report.errors, ns, buf.report()))
}

/// What [`blk_seq_file`] measured.
#[derive(Debug, Clone, Copy)]
pub struct BlkSeqTimes {
    /// Sequential write of the whole size plus fdatasync.
    pub write_ns: u64,
    /// The cold read.
    pub read_ns: u64,
    /// Whether the read used O_DIRECT (else: posix_fadvise DONTNEED, then buffered).
    pub direct: bool,
}

/// Chunk of the host's sequential I/O: the guest driver's request size.
pub const BLK_CHUNK: usize = 128 << 10;

/// A zeroed, 4 KiB-aligned byte buffer (for O_DIRECT).
fn aligned(len: usize) -> (Vec<u64>, usize) {
    (vec![0u64; len.div_ceil(8) + 512], len)
}

fn aligned_slice(v: &mut [u64], len: usize) -> &mut [u8] {
    // SAFETY: viewing initialised u64s as bytes is sound (u8 has no invalid values).
    let bytes = unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), v.len() * 8) };
    let skip = bytes.as_ptr().align_offset(4096);
    &mut bytes[skip..skip + len]
}

/// The host side of `blk-seq:MIB` on file `path` (created / truncated): `mib` MiB
/// written sequentially in [`BLK_CHUNK`] writes, then fdatasync (timed together);
/// then its pages are dropped (posix_fadvise DONTNEED) and it is read back cold
/// with O_DIRECT in the same chunks (buffered after the drop where the file system
/// refuses O_DIRECT, e.g. tmpfs).
pub fn blk_seq_file(path: &Path, mib: u64) -> anyhow::Result<BlkSeqTimes> {
    let bytes = mib << 20;
    let (mut store, len) = aligned(BLK_CHUNK);
    let buf = aligned_slice(&mut store, len);
    // The same non-zero data as the guest writes.
    let mut words = vec![0u64; BLK_CHUNK / 8];
    fill_sectors(0x5eed, 0, &mut words);
    for (b, w) in buf.chunks_exact_mut(8).zip(&words) {
        b.copy_from_slice(&w.to_le_bytes());
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let t0 = Instant::now();
    let mut off = 0u64;
    while off < bytes {
        let n = BLK_CHUNK.min((bytes - off) as usize);
        file.write_all_at(&buf[..n], off)?;
        off += n as u64;
    }
    file.sync_data()?;
    let write_ns = t0.elapsed().as_nanos() as u64;
    drop_cache(&file);
    drop(file);
    let (file, direct) = match OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(path) {
        Ok(f) => (f, true),
        Err(_) => (File::open(path)?, false),
    };
    drop_cache(&file);
    let t1 = Instant::now();
    let mut off = 0u64;
    while off < bytes {
        let n = BLK_CHUNK.min((bytes - off) as usize);
        let got = file.read_at(&mut buf[..n], off)?;
        if got == 0 {
            bail!("{}: short read at {off}", path.display());
        }
        off += got as u64;
    }
    let read_ns = t1.elapsed().as_nanos() as u64;
    Ok(BlkSeqTimes {
        write_ns,
        read_ns,
        direct,
    })
}

fn drop_cache(file: &File) {
    // SAFETY: fadvise on an open descriptor only changes caching.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

/// The host side of `smallio:N` on file `path` (created, sized to the span + 1 MiB,
/// sparse, as the guests' fresh images are): the same block sequence as the guest,
/// 4 KiB pwrite + pread through the page cache, fdatasync every 64 operations and
/// at the end. Returns the elapsed ns.
pub fn smallio_file(path: &Path, n: u64) -> anyhow::Result<u64> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.set_len((SMALLIO_SPAN_MIB + 1) << 20)?;
    let mut words = vec![0u64; SMALLIO_BLOCK / 8];
    let mut wbuf = vec![0u8; SMALLIO_BLOCK];
    let mut rbuf = vec![0u8; SMALLIO_BLOCK];
    let sectors = (SMALLIO_BLOCK / 512) as u64;
    let t0 = Instant::now();
    for i in 0..n {
        let (w, r) = smallio_op(i);
        fill_sectors(i, w * sectors, &mut words);
        for (b, x) in wbuf.chunks_exact_mut(8).zip(&words) {
            b.copy_from_slice(&x.to_le_bytes());
        }
        file.write_all_at(&wbuf, w * SMALLIO_BLOCK as u64)?;
        file.read_exact_at(&mut rbuf, r * SMALLIO_BLOCK as u64)?;
        if (i + 1) % SMALLIO_FLUSH_EVERY == 0 {
            file.sync_data()?;
        }
    }
    file.sync_data()?;
    Ok(t0.elapsed().as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_runner_counts_primes() {
        let r = run_one("primes", 100_000, 0).expect("run");
        assert_eq!(r.value, 9592);
        assert_eq!(run_one("memtest", 1, 0).expect("run").value, 0);
        let whole = run_share("raytrace", 64, 0, 1).expect("run").value;
        let halves = (0..2).fold(0u64, |a, t| {
            a.wrapping_add(run_share("raytrace", 64, t, 2).expect("run").value)
        });
        assert_eq!(whole, halves);
        assert_ne!(run_one("des", 1, 0).expect("run").value, 0);
    }

    #[test]
    fn host_disk_runners_work() {
        let dir = std::env::temp_dir();
        let p = dir.join(format!("kvmkit-host-test-{}.img", std::process::id()));
        let t = blk_seq_file(&p, 1).expect("blk-seq");
        assert!(t.write_ns > 0 && t.read_ns > 0);
        assert_eq!(std::fs::metadata(&p).expect("file").len(), 1 << 20);
        assert!(smallio_file(&p, 70).expect("smallio") > 0);
        let _ = std::fs::remove_file(&p);
    }
}
