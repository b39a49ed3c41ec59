//! virtio-blk: 512-byte-sector reads, writes, flush and GET_ID, with several
//! requests in flight (chains of header, data, status).

use kvmkit_guest_abi::VirtioMmioDevice;
use kvmkit_workloads::SECTOR_SIZE;

use super::{Buf, Chain, Queue, Stream, Transport, BUFFERS_OFFSET, CHUNK_BYTES, MAX_SLOTS, QUEUE_MEM_BYTES};

/// VIRTIO_BLK_F_SEG_MAX.
pub const F_SEG_MAX: u64 = 1 << 2;
/// VIRTIO_BLK_F_RO.
pub const F_RO: u64 = 1 << 5;
/// VIRTIO_BLK_F_BLK_SIZE.
pub const F_BLK_SIZE: u64 = 1 << 6;
/// VIRTIO_BLK_F_FLUSH.
pub const F_FLUSH: u64 = 1 << 9;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;

/// VIRTIO_BLK_S_OK.
pub const S_OK: u8 = 0;
/// VIRTIO_BLK_S_IOERR.
pub const S_IOERR: u8 = 1;
/// VIRTIO_BLK_S_UNSUPP.
pub const S_UNSUPP: u8 = 2;
/// Status byte value before the device writes it.
const S_PENDING: u8 = 0xff;

// Config space offsets.
const CFG_CAPACITY: u64 = 0;
const CFG_SEG_MAX: u64 = 12;
const CFG_BLK_SIZE: u64 = 20;

// Scratch layout: 16-byte headers per slot, then status bytes, then the id.
const HEADERS: u64 = 0;
const STATUSES: u64 = 0x400;
const ID_BUF: u64 = 0x800;
/// Length of the GET_ID answer.
pub const ID_LEN: usize = 20;

/// Why a block request failed.
#[derive(Clone, Copy, Debug)]
pub enum BlkError {
    /// The transport failed (timeout, NEEDS_RESET, ...); the device was reset.
    Transport(&'static str),
    /// A request came back with status `status` (not OK); `sector` is its first sector.
    Status {
        /// The status byte.
        status: u8,
        /// The request's first sector.
        sector: u64,
    },
}

impl core::fmt::Display for BlkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::Transport(e) => f.write_str(e),
            Self::Status { status, sector } => {
                let name = match status {
                    S_IOERR => "IOERR",
                    S_UNSUPP => "UNSUPP",
                    S_PENDING => "never written",
                    _ => "unknown",
                };
                write!(f, "request at sector {sector} failed with status {status} ({name})")
            }
        }
    }
}

/// An initialised virtio-blk device.
pub struct Blk {
    t: Transport,
    q: Queue,
    buffers: u64,
    /// Capacity in 512-byte sectors.
    pub capacity: u64,
    /// The device is read-only (VIRTIO_BLK_F_RO).
    pub read_only: bool,
    /// The device supports FLUSH.
    pub flush: bool,
    /// Logical block size, when the device says (VIRTIO_BLK_F_BLK_SIZE).
    pub blk_size: Option<u32>,
    /// Most data segments per request, when the device says.
    pub seg_max: Option<u32>,
}

impl Blk {
    /// Initialises the device `dev` (list index `index`), using the
    /// device-workload region at `region` for its queue and the buffers.
    pub fn open(dev: &VirtioMmioDevice, index: usize, region: u64, khz: u64) -> Result<Self, &'static str> {
        let t = Transport::new(dev.base, khz);
        let features = t.init(F_SEG_MAX | F_RO | F_BLK_SIZE | F_FLUSH)?;
        let q = t.start(region + index as u64 * QUEUE_MEM_BYTES)?;
        let seg_max = (features & F_SEG_MAX != 0).then(|| t.config32(CFG_SEG_MAX));
        if seg_max == Some(0) {
            t.fail();
            return Err("device allows no data segments (seg_max 0)");
        }
        Ok(Self {
            capacity: t.config64(CFG_CAPACITY),
            read_only: features & F_RO != 0,
            flush: features & F_FLUSH != 0,
            blk_size: (features & F_BLK_SIZE != 0).then(|| t.config32(CFG_BLK_SIZE)),
            seg_max,
            t,
            q,
            buffers: region + BUFFERS_OFFSET,
        })
    }

    /// Requests kept in flight.
    pub fn slots(&self) -> u16 {
        self.q.slots()
    }

    /// The queue size in use.
    pub fn queue_size(&self) -> u16 {
        self.q.size()
    }

    /// Guest-physical address of slot `slot`'s data buffer ([`CHUNK_BYTES`]).
    pub fn buffer(&self, slot: u16) -> u64 {
        self.buffers + u64::from(slot) * CHUNK_BYTES
    }

    /// Slot `slot`'s data buffer as words.
    ///
    /// # Safety
    /// The slot must not be in flight, and no other reference to the buffer may live.
    unsafe fn words<'a>(buffer: u64, bytes: u64) -> &'a mut [u64] {
        // SAFETY: the buffer is CHUNK_BYTES of the device-workload region
        // that only this driver uses; the caller guarantees exclusivity.
        unsafe { core::slice::from_raw_parts_mut(buffer as *mut u64, (bytes / 8) as usize) }
    }

    /// Resets the device (stops it from touching memory), best effort.
    pub fn shutdown(&self) {
        let _ = self.t.reset();
    }

    fn run(&mut self, stream: &mut impl Stream) -> Result<(), BlkError> {
        self.q.run(stream).map_err(|e| {
            self.t.fail();
            self.shutdown();
            BlkError::Transport(e)
        })
    }

    /// Reads (`write` false) or writes `count` sectors from `first` in
    /// requests of up to [`CHUNK_BYTES`]. Before a write, `fill(sector,
    /// words)` fills the data; after a read, `check(sector, words)` sees it.
    pub fn transfer(
        &mut self,
        write: bool,
        first: u64,
        count: u64,
        fill: impl FnMut(u64, &mut [u64]),
        check: impl FnMut(u64, &[u64]),
    ) -> Result<(), BlkError> {
        let mut s = Transfer {
            scratch: self.q.scratch(0),
            buffers: self.buffers,
            kind: if write { T_OUT } else { T_IN },
            next: first,
            end: first.saturating_add(count),
            slot_sector: [0; MAX_SLOTS],
            slot_count: [0; MAX_SLOTS],
            fill,
            check,
            error: None,
        };
        self.run(&mut s)?;
        s.error.map_or(Ok(()), Err)
    }

    /// One request without data (FLUSH) or with a device-written `len`-byte
    /// scratch buffer (GET_ID).
    fn single(&mut self, kind: u32, len: u32) -> Result<(), BlkError> {
        let mut s = Single {
            scratch: self.q.scratch(0),
            kind,
            len,
            sent: false,
            status: S_PENDING,
        };
        self.run(&mut s)?;
        match s.status {
            S_OK => Ok(()),
            status => Err(BlkError::Status { status, sector: 0 }),
        }
    }

    /// Flushes the device's write cache (when it offers FLUSH; else a no-op).
    pub fn flush(&mut self) -> Result<(), BlkError> {
        if self.flush {
            self.single(T_FLUSH, 0)
        } else {
            Ok(())
        }
    }

    /// The device's id string (GET_ID), NUL-padded.
    pub fn id(&mut self) -> Result<[u8; ID_LEN], BlkError> {
        self.single(T_GET_ID, ID_LEN as u32)?;
        // SAFETY: the id buffer is scratch memory of this device's queue;
        // the request that wrote it has completed.
        Ok(unsafe { core::ptr::read_volatile(self.q.scratch(ID_BUF) as *const [u8; ID_LEN]) })
    }
}

/// Writes a request header and a pending status byte into slot `slot`'s
/// scratch, returning (header, status) addresses.
fn header(scratch: u64, slot: u16, kind: u32, sector: u64) -> (u64, u64) {
    let header = scratch + HEADERS + u64::from(slot) * 16;
    let status = scratch + STATUSES + u64::from(slot);
    // SAFETY: both lie in the scratch area of the queue memory, in the part
    // owned by `slot`, which is not in flight.
    unsafe {
        core::ptr::write_volatile(header as *mut u32, kind);
        core::ptr::write_volatile((header + 4) as *mut u32, 0);
        core::ptr::write_volatile((header + 8) as *mut u64, sector);
        core::ptr::write_volatile(status as *mut u8, S_PENDING);
    }
    (header, status)
}

fn read_status(scratch: u64, slot: u16) -> u8 {
    // SAFETY: slot `slot`'s status byte in the scratch area; its request completed.
    unsafe { core::ptr::read_volatile((scratch + STATUSES + u64::from(slot)) as *const u8) }
}

struct Transfer<F, G> {
    scratch: u64,
    buffers: u64,
    kind: u32,
    next: u64,
    end: u64,
    slot_sector: [u64; MAX_SLOTS],
    slot_count: [u64; MAX_SLOTS],
    fill: F,
    check: G,
    error: Option<BlkError>,
}

impl<F: FnMut(u64, &mut [u64]), G: FnMut(u64, &[u64])> Stream for Transfer<F, G> {
    fn next(&mut self, slot: u16) -> Option<Chain> {
        if self.next >= self.end || self.error.is_some() {
            return None;
        }
        let sectors = (self.end - self.next).min(CHUNK_BYTES / SECTOR_SIZE as u64);
        let bytes = sectors * SECTOR_SIZE as u64;
        let buffer = self.buffers + u64::from(slot) * CHUNK_BYTES;
        if self.kind == T_OUT {
            // SAFETY: the slot is free (not in flight) and nothing else holds its buffer.
            (self.fill)(self.next, unsafe { Blk::words(buffer, bytes) });
        }
        let (header, status) = header(self.scratch, slot, self.kind, self.next);
        self.slot_sector[usize::from(slot)] = self.next;
        self.slot_count[usize::from(slot)] = sectors;
        self.next += sectors;
        Some(Chain::new(&[
            Buf {
                addr: header,
                len: 16,
                device_writes: false,
            },
            Buf {
                addr: buffer,
                len: bytes as u32,
                device_writes: self.kind == T_IN,
            },
            Buf {
                addr: status,
                len: 1,
                device_writes: true,
            },
        ]))
    }

    fn complete(&mut self, slot: u16, _len: u32) {
        let sector = self.slot_sector[usize::from(slot)];
        let status = read_status(self.scratch, slot);
        if status != S_OK {
            self.error.get_or_insert(BlkError::Status { status, sector });
            return;
        }
        if self.kind == T_IN && self.error.is_none() {
            let bytes = self.slot_count[usize::from(slot)] * SECTOR_SIZE as u64;
            let buffer = self.buffers + u64::from(slot) * CHUNK_BYTES;
            // SAFETY: the request completed, so the device is done with the buffer.
            (self.check)(sector, unsafe { Blk::words(buffer, bytes) });
        }
    }
}

struct Single {
    scratch: u64,
    kind: u32,
    len: u32,
    sent: bool,
    status: u8,
}

impl Stream for Single {
    fn next(&mut self, slot: u16) -> Option<Chain> {
        if core::mem::replace(&mut self.sent, true) {
            return None;
        }
        let (header, status) = header(self.scratch, slot, self.kind, 0);
        let head = Buf {
            addr: header,
            len: 16,
            device_writes: false,
        };
        let tail = Buf {
            addr: status,
            len: 1,
            device_writes: true,
        };
        Some(if self.len == 0 {
            Chain::new(&[head, tail])
        } else {
            let data = Buf {
                addr: self.scratch + ID_BUF,
                len: self.len,
                device_writes: true,
            };
            Chain::new(&[head, data, tail])
        })
    }

    fn complete(&mut self, slot: u16, _len: u32) {
        self.status = read_status(self.scratch, slot);
    }
}
