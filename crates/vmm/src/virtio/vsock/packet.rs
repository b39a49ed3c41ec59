//! The virtio-vsock packet header (virtio 1.2, 5.10.6): 44 bytes, little
//! endian, in front of every packet on the rx and tx queues. Guest-sent
//! packets are read through virtio-queue's bounds-checked [`Reader`]: a
//! chain shorter than a header, a `len` over [`MAX_PKT_DATA`] or over what
//! the chain holds is refused before anything is allocated or copied.

use std::io::{Read, Write};

use virtio_queue::{Reader, Writer};

/// Size of the header.
pub const HDR_LEN: usize = 44;
/// Most payload bytes in one packet (either direction), as Linux and
/// Firecracker use.
pub const MAX_PKT_DATA: u32 = 64 * 1024;
/// `type` of a stream socket packet (the only type kvmkit supports).
pub const TYPE_STREAM: u16 = 1;
/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// A packet's operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Connection request.
    Request,
    /// Connection accepted.
    Response,
    /// Connection reset (refused, or torn down).
    Rst,
    /// One or both directions closed (see [`SHUTDOWN_RCV`], [`SHUTDOWN_SEND`]).
    Shutdown,
    /// Payload.
    Rw,
    /// The sender's receive credit changed.
    CreditUpdate,
    /// The sender asks for a credit update.
    CreditRequest,
}

impl Op {
    /// Every operation, in code order.
    pub const ALL: [Op; 7] = [
        Op::Request,
        Op::Response,
        Op::Rst,
        Op::Shutdown,
        Op::Rw,
        Op::CreditUpdate,
        Op::CreditRequest,
    ];

    /// The operation with wire code `code` (1..=7), if any.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.get(usize::from(code).checked_sub(1)?).copied()
    }

    /// The wire code.
    pub fn code(self) -> u16 {
        match self {
            Op::Request => 1,
            Op::Response => 2,
            Op::Rst => 3,
            Op::Shutdown => 4,
            Op::Rw => 5,
            Op::CreditUpdate => 6,
            Op::CreditRequest => 7,
        }
    }
}

/// The packet header (`struct virtio_vsock_hdr`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    /// Source context id.
    pub src_cid: u64,
    /// Destination context id.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type ([`TYPE_STREAM`]).
    pub type_: u16,
    /// Operation code ([`Op::code`]).
    pub op: u16,
    /// Operation flags (SHUTDOWN's).
    pub flags: u32,
    /// The sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer, ever (wrapping).
    pub fwd_cnt: u32,
}

fn le<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[at..at + N]);
    out
}

impl Header {
    /// Decodes a header.
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Self {
        Self {
            src_cid: u64::from_le_bytes(le(b, 0)),
            dst_cid: u64::from_le_bytes(le(b, 8)),
            src_port: u32::from_le_bytes(le(b, 16)),
            dst_port: u32::from_le_bytes(le(b, 20)),
            len: u32::from_le_bytes(le(b, 24)),
            type_: u16::from_le_bytes(le(b, 28)),
            op: u16::from_le_bytes(le(b, 30)),
            flags: u32::from_le_bytes(le(b, 32)),
            buf_alloc: u32::from_le_bytes(le(b, 36)),
            fwd_cnt: u32::from_le_bytes(le(b, 40)),
        }
    }

    /// Encodes the header.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// The operation, if the code is a known one.
    pub fn operation(&self) -> Option<Op> {
        Op::from_code(self.op)
    }
}

/// Why a guest-sent packet was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// The chain's readable part is shorter than a header.
    #[error("the chain holds {0} readable bytes, less than a 44-byte header")]
    Short(usize),
    /// `len` is over [`MAX_PKT_DATA`].
    #[error("payload length {0} is over the 64 KiB limit")]
    TooLong(u32),
    /// `len` is over what the chain holds after the header.
    #[error("payload length {len} is over the {available} bytes the chain holds")]
    Truncated {
        /// The header's `len`.
        len: u32,
        /// Readable bytes after the header.
        available: usize,
    },
    /// Guest memory could not be read.
    #[error("guest memory: {0}")]
    Memory(String),
}

/// Reads a guest packet from `reader`: the header, then its payload into
/// `data[..len]` (`data` must hold [`MAX_PKT_DATA`] bytes). Returns the
/// header; the payload is `data[..header.len]`. Payload bytes of
/// operations other than RW are read too (and ignored by the caller).
pub fn read_packet<B: vm_memory::bitmap::BitmapSlice>(
    reader: &mut Reader<'_, B>,
    data: &mut [u8],
) -> Result<Header, PacketError> {
    let total = reader.available_bytes();
    if total < HDR_LEN {
        return Err(PacketError::Short(total));
    }
    let mut raw = [0u8; HDR_LEN];
    reader
        .read_exact(&mut raw)
        .map_err(|e| PacketError::Memory(e.to_string()))?;
    let hdr = Header::from_bytes(&raw);
    if hdr.len > MAX_PKT_DATA {
        return Err(PacketError::TooLong(hdr.len));
    }
    let len = hdr.len as usize;
    let available = total - HDR_LEN;
    if len > available || len > data.len() {
        return Err(PacketError::Truncated {
            len: hdr.len,
            available,
        });
    }
    reader
        .read_exact(&mut data[..len])
        .map_err(|e| PacketError::Memory(e.to_string()))?;
    Ok(hdr)
}

/// Writes `hdr` and `data` into an rx chain; returns the bytes written.
/// The caller checked that the chain has room ([`Writer::available_bytes`]).
pub fn write_packet<B: vm_memory::bitmap::BitmapSlice>(
    writer: &mut Writer<'_, B>,
    hdr: &Header,
    data: &[u8],
) -> std::io::Result<usize> {
    writer.write_all(&hdr.to_bytes())?;
    writer.write_all(data)?;
    Ok(HDR_LEN + data.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1234,
            dst_port: 5000,
            len: 7,
            type_: TYPE_STREAM,
            op: Op::Rw.code(),
            flags: 0,
            buf_alloc: 1 << 18,
            fwd_cnt: 99,
        }
    }

    #[test]
    fn header_round_trips_and_matches_the_wire_layout() {
        let h = sample();
        let b = h.to_bytes();
        assert_eq!(Header::from_bytes(&b), h);
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[20..24], &5000u32.to_le_bytes());
        assert_eq!(&b[28..30], &1u16.to_le_bytes());
        assert_eq!(&b[30..32], &5u16.to_le_bytes());
        assert_eq!(&b[40..44], &99u32.to_le_bytes());
    }

    #[test]
    fn op_codes() {
        for op in Op::ALL {
            assert_eq!(Op::from_code(op.code()), Some(op));
        }
        assert_eq!(Op::from_code(0), None);
        assert_eq!(Op::from_code(8), None);
        assert_eq!(Op::from_code(u16::MAX), None);
    }
}
