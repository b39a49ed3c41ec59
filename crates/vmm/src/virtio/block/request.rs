//! virtio-blk requests: parsing a descriptor chain and executing it on a
//! [`DiskImage`]. The chain comes from the guest and is untrusted: every
//! length and sector is checked; a malformed request gets an error status
//! (or, when it has no room for one, is completed with nothing written).

use std::io::{Read, Write};

use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::ByteValued;

use crate::memory::{GuestBitmapSlice, GuestMemoryMmap};

use super::disk::{DiskImage, SECTOR_SIZE};

/// Reads a chain's device-readable buffers (guest RAM with its dirty bitmap).
type GuestReader<'a> = Reader<'a, GuestBitmapSlice<'a>>;
/// Writes a chain's device-writable buffers; each page written is marked dirty.
type GuestWriter<'a> = Writer<'a, GuestBitmapSlice<'a>>;

/// Read sectors.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Write sectors.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Make writes durable.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Get the device id string.
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// Deallocate sectors.
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
/// Zero sectors.
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;
/// Success.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// I/O error (also: out of range, read-only, malformed).
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Unsupported request type.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;
/// Length of the GET_ID string.
pub const VIRTIO_BLK_ID_BYTES: usize = 20;
/// Largest data transfer accepted in one request (bounds host memory use).
pub const MAX_REQUEST_BYTES: usize = 16 << 20;
/// Copy buffer size between guest memory and the image (the scratch buffer
/// a caller passes to [`handle`] must be at least this long).
pub const CHUNK: usize = 1 << 20;
/// Most bytes one merged disk access moves (see [`handle_merged`]): 16 in-flight 128 KiB
/// requests and then some. The handler's scratch buffer is this long; untouched pages of it
/// cost no memory.
pub const MERGE_BYTES: usize = 4 << 20;

/// The request header the driver puts first in the chain.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestHeader {
    /// Request type.
    pub request_type: u32,
    /// Reserved.
    pub reserved: u32,
    /// First sector.
    pub sector: u64,
}
// SAFETY: plain old data: two u32 and a u64, no padding, any bit pattern valid.
unsafe impl ByteValued for RequestHeader {}

/// One DISCARD / WRITE_ZEROES segment.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DiscardSegment {
    /// First sector.
    pub sector: u64,
    /// Number of sectors.
    pub num_sectors: u32,
    /// Flags (bit 0: unmap, for WRITE_ZEROES).
    pub flags: u32,
}
// SAFETY: plain old data: u64, u32, u32, no padding, any bit pattern valid.
unsafe impl ByteValued for DiscardSegment {}

/// Device state a request needs.
pub struct RequestContext<'a> {
    /// The image.
    pub disk: &'a DiskImage,
    /// Whether writes are refused.
    pub read_only: bool,
    /// GET_ID answer.
    pub id: &'a [u8; VIRTIO_BLK_ID_BYTES],
}

/// Outcome of a request, for counters and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// Bytes written into guest buffers (the used-ring length).
    pub used_len: u32,
    /// Status byte written (None when the chain had no room for it).
    pub status: Option<u8>,
}

/// Checks that `[sector, sector + len)` lies on the disk and is sector sized.
fn range_ok(sector: u64, len: u64, disk_size: u64) -> Option<u64> {
    if !len.is_multiple_of(SECTOR_SIZE) {
        return None;
    }
    let offset = sector.checked_mul(SECTOR_SIZE)?;
    let end = offset.checked_add(len)?;
    (end <= disk_size).then_some(offset)
}

/// A plain read or write that may be merged with its neighbours (see [`handle_merged`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plain {
    /// OUT (true) or IN.
    pub write: bool,
    /// Byte offset on the disk.
    pub offset: u64,
    /// Data bytes.
    pub len: usize,
}

/// `chain` as a [`Plain`] request, if it is a well-formed IN or OUT of 1 to [`MERGE_BYTES`] bytes
/// inside the disk (and, for OUT, the disk is writable); anything else is left to [`handle`],
/// which answers it as before.
pub fn plain_request(
    mem: &GuestMemoryMmap,
    chain: &DescriptorChain<&GuestMemoryMmap>,
    ctx: &RequestContext<'_>,
) -> Option<Plain> {
    let mut reader = GuestReader::new(mem, chain.clone()).ok()?;
    let writer = GuestWriter::new(mem, chain.clone()).ok()?;
    let writable = writer.available_bytes();
    let header: RequestHeader = reader.read_obj().ok()?;
    let (write, len) = match header.request_type {
        VIRTIO_BLK_T_OUT if !ctx.read_only && writable >= 1 => (true, reader.available_bytes()),
        VIRTIO_BLK_T_IN if writable >= 1 => (false, writable - 1),
        _ => return None,
    };
    if len == 0 || len > MERGE_BYTES {
        return None;
    }
    let offset = range_ok(header.sector, len as u64, ctx.disk.size())?;
    Some(Plain { write, offset, len })
}

/// Executes `run`, consecutive [`Plain`] requests of one direction whose ranges follow each
/// other on the disk and fit in `scratch` together, with one disk access (as QEMU merges
/// them): writes are gathered into `scratch` and written at once, reads read at once and
/// scattered. Returns a completion per request, in order; should a guest buffer fail
/// mid-copy, every request of the run is executed on its own by [`handle`] instead.
pub fn handle_merged(
    mem: &GuestMemoryMmap,
    run: Vec<(DescriptorChain<&GuestMemoryMmap>, Plain)>,
    ctx: &RequestContext<'_>,
    scratch: &mut [u8],
) -> Vec<Completion> {
    let total: usize = run.iter().map(|(_, p)| p.len).sum();
    let (Some((_, first)), true) = (run.first(), total <= scratch.len()) else {
        return run.into_iter().map(|(c, _)| handle(mem, c, ctx, scratch)).collect();
    };
    let (write, offset) = (first.write, first.offset);
    if write {
        let mut at = 0;
        for (chain, p) in &run {
            let copied = GuestReader::new(mem, chain.clone()).ok().and_then(|mut r| {
                r.read_obj::<RequestHeader>().ok()?;
                r.read_exact(&mut scratch[at..at + p.len]).ok()
            });
            if copied.is_none() {
                return run.into_iter().map(|(c, _)| handle(mem, c, ctx, scratch)).collect();
            }
            at += p.len;
        }
        let status = match ctx.disk.write_at(&scratch[..total], offset) {
            Ok(()) => VIRTIO_BLK_S_OK,
            Err(_) => VIRTIO_BLK_S_IOERR,
        };
        return run
            .into_iter()
            .map(|(chain, _)| complete_plain(mem, chain, 0, status))
            .collect();
    }
    if ctx.disk.read_at(&mut scratch[..total], offset).is_err() {
        return run
            .into_iter()
            .map(|(chain, _)| complete_plain(mem, chain, 0, VIRTIO_BLK_S_IOERR))
            .collect();
    }
    let mut at = 0;
    let mut out = Vec::with_capacity(run.len());
    for (chain, p) in run {
        let data = &scratch[at..at + p.len];
        at += p.len;
        out.push(match GuestWriter::new(mem, chain) {
            Ok(mut w) => match w.split_at(p.len) {
                Ok(mut status_writer) => {
                    let (n, status) = match w.write_all(data) {
                        Ok(()) => (p.len as u32, VIRTIO_BLK_S_OK),
                        Err(_) => (0, VIRTIO_BLK_S_IOERR),
                    };
                    finish(&mut status_writer, n, status)
                }
                Err(_) => Completion {
                    used_len: 0,
                    status: None,
                },
            },
            Err(_) => Completion {
                used_len: 0,
                status: None,
            },
        });
    }
    out
}

/// Writes `status` into the last writable byte of `chain` (a plain request's status byte).
fn complete_plain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    data_len: u32,
    status: u8,
) -> Completion {
    let none = Completion {
        used_len: 0,
        status: None,
    };
    let Ok(mut w) = GuestWriter::new(mem, chain) else {
        return none;
    };
    let writable = w.available_bytes();
    match writable.checked_sub(1).map(|at| w.split_at(at)) {
        Some(Ok(mut status_writer)) => finish(&mut status_writer, data_len, status),
        _ => none,
    }
}

/// Executes the request in `chain`.
pub fn handle(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    ctx: &RequestContext<'_>,
    scratch: &mut [u8],
) -> Completion {
    let (reader, writer) = match (GuestReader::new(mem, chain.clone()), GuestWriter::new(mem, chain)) {
        (Ok(r), Ok(w)) => (r, w),
        _ => {
            return Completion {
                used_len: 0,
                status: None,
            }
        }
    };
    execute(reader, writer, ctx, scratch)
}

fn execute(
    mut reader: GuestReader<'_>,
    mut writer: GuestWriter<'_>,
    ctx: &RequestContext<'_>,
    scratch: &mut [u8],
) -> Completion {
    let writable = writer.available_bytes();
    if writable == 0 {
        return Completion {
            used_len: 0,
            status: None,
        };
    }
    // The status byte is the last writable byte; data comes before it.
    let mut status_writer = match writer.split_at(writable - 1) {
        Ok(s) => s,
        Err(_) => {
            return Completion {
                used_len: 0,
                status: None,
            }
        }
    };
    let header: RequestHeader = match reader.read_obj() {
        Ok(h) => h,
        Err(_) => return finish(&mut status_writer, 0, VIRTIO_BLK_S_IOERR),
    };
    let (data_len, status) = match header.request_type {
        VIRTIO_BLK_T_IN => read_sectors(&mut writer, header.sector, ctx, scratch),
        VIRTIO_BLK_T_OUT => (0, write_sectors(&mut reader, header.sector, ctx, scratch)),
        VIRTIO_BLK_T_FLUSH => (
            0,
            if ctx.disk.flush().is_ok() {
                VIRTIO_BLK_S_OK
            } else {
                VIRTIO_BLK_S_IOERR
            },
        ),
        VIRTIO_BLK_T_GET_ID => {
            let n = writer.available_bytes().min(VIRTIO_BLK_ID_BYTES);
            match writer.write_all(&ctx.id[..n]) {
                Ok(()) => (n as u32, VIRTIO_BLK_S_OK),
                Err(_) => (0, VIRTIO_BLK_S_IOERR),
            }
        }
        t @ (VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES) => (0, discard(&mut reader, t, ctx)),
        _ => (0, VIRTIO_BLK_S_UNSUPP),
    };
    finish(&mut status_writer, data_len, status)
}

fn finish(status_writer: &mut GuestWriter<'_>, data_len: u32, status: u8) -> Completion {
    match status_writer.write_obj(status) {
        Ok(()) => Completion {
            used_len: data_len + 1,
            status: Some(status),
        },
        Err(_) => Completion {
            used_len: data_len,
            status: None,
        },
    }
}

fn read_sectors(writer: &mut GuestWriter<'_>, sector: u64, ctx: &RequestContext<'_>, buf: &mut [u8]) -> (u32, u8) {
    if buf.is_empty() {
        return (0, VIRTIO_BLK_S_IOERR);
    }
    let len = writer.available_bytes();
    if len > MAX_REQUEST_BYTES {
        return (0, VIRTIO_BLK_S_IOERR);
    }
    let Some(offset) = range_ok(sector, len as u64, ctx.disk.size()) else {
        return (0, VIRTIO_BLK_S_IOERR);
    };
    let mut done = 0usize;
    while done < len {
        let n = (len - done).min(CHUNK).min(buf.len());
        if ctx.disk.read_at(&mut buf[..n], offset + done as u64).is_err() || writer.write_all(&buf[..n]).is_err() {
            return (done as u32, VIRTIO_BLK_S_IOERR);
        }
        done += n;
    }
    (len as u32, VIRTIO_BLK_S_OK)
}

fn write_sectors(reader: &mut GuestReader<'_>, sector: u64, ctx: &RequestContext<'_>, buf: &mut [u8]) -> u8 {
    if buf.is_empty() {
        return VIRTIO_BLK_S_IOERR;
    }
    if ctx.read_only {
        return VIRTIO_BLK_S_IOERR;
    }
    let len = reader.available_bytes();
    if len > MAX_REQUEST_BYTES {
        return VIRTIO_BLK_S_IOERR;
    }
    let Some(offset) = range_ok(sector, len as u64, ctx.disk.size()) else {
        return VIRTIO_BLK_S_IOERR;
    };
    let mut done = 0usize;
    while done < len {
        let n = (len - done).min(CHUNK).min(buf.len());
        if reader.read_exact(&mut buf[..n]).is_err() || ctx.disk.write_at(&buf[..n], offset + done as u64).is_err() {
            return VIRTIO_BLK_S_IOERR;
        }
        done += n;
    }
    VIRTIO_BLK_S_OK
}

fn discard(reader: &mut GuestReader<'_>, request_type: u32, ctx: &RequestContext<'_>) -> u8 {
    if ctx.read_only {
        return VIRTIO_BLK_S_IOERR;
    }
    let seg_size = std::mem::size_of::<DiscardSegment>();
    if reader.available_bytes() != seg_size {
        return VIRTIO_BLK_S_IOERR;
    }
    while reader.available_bytes() >= seg_size {
        let Ok(seg) = reader.read_obj::<DiscardSegment>() else {
            return VIRTIO_BLK_S_IOERR;
        };
        let len = u64::from(seg.num_sectors) * SECTOR_SIZE;
        let Some(offset) = range_ok(seg.sector, len, ctx.disk.size()) else {
            return VIRTIO_BLK_S_IOERR;
        };
        let result = if request_type == VIRTIO_BLK_T_DISCARD {
            ctx.disk.punch_hole(offset, len)
        } else {
            ctx.disk.write_zeroes(offset, len)
        };
        if result.is_err() {
            return VIRTIO_BLK_S_IOERR;
        }
    }
    VIRTIO_BLK_S_OK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked_against_capacity_and_overflow() {
        assert_eq!(range_ok(0, 512, 1024), Some(0));
        assert_eq!(range_ok(1, 512, 1024), Some(512));
        assert_eq!(range_ok(2, 512, 1024), None);
        assert_eq!(range_ok(0, 100, 1024), None);
        assert_eq!(range_ok(u64::MAX, 512, u64::MAX), None);
        assert_eq!(range_ok(u64::MAX / 512, 512, u64::MAX), None);
    }
}
