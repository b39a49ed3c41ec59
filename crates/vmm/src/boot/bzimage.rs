//! A bzImage's setup header as far as host-side decompression needs it:
//! where the compressed vmlinux lies (`payload_offset`/`payload_length`,
//! boot protocol 2.08+) and which compressor made it (its magic bytes).

use linux_loader::loader::bootparam::setup_header;
use vm_memory::ByteValued;

/// Bytes of the image that hold the setup header (it starts at 0x1f1).
pub const HEAD_LEN: usize = SETUP_HEADER_AT + std::mem::size_of::<setup_header>();

const SETUP_HEADER_AT: usize = 0x1f1;
const SETUP_SECTS_AT: usize = 0x1f1;
const MAGIC_AT: usize = 0x202;
const VERSION_AT: usize = 0x206;
const PAYLOAD_OFFSET_AT: usize = 0x248;
const PAYLOAD_LENGTH_AT: usize = 0x24c;
/// The boot protocol version that added `payload_offset`/`payload_length`.
const PAYLOAD_FIELDS_VERSION: u16 = 0x0208;

/// Where the compressed kernel lies in the bzImage file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Payload {
    /// File offset of its first byte.
    pub offset: u64,
    /// Its length in bytes.
    pub length: u64,
}

/// Why a bzImage's payload cannot be located (the caller falls back to the
/// kernel's own decompressor).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderFault {
    /// Shorter than a setup header.
    #[error("the file is shorter than a setup header")]
    Short,
    /// No "HdrS" signature.
    #[error("no 'HdrS' signature at 0x202")]
    NoSignature,
    /// A boot protocol from before 2.08 has no payload fields.
    #[error("boot protocol {0:#x} predates payload_offset (2.08)")]
    OldProtocol(u16),
    /// The payload fields point outside the file.
    #[error("its payload ({offset:#x}+{length:#x}) lies outside the {file_len:#x}-byte file")]
    OutsideFile {
        /// File offset the header gives.
        offset: u64,
        /// Length the header gives.
        length: u64,
        /// The file's length.
        file_len: u64,
    },
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Locates the payload from the image's first [`HEAD_LEN`] bytes and the
/// file's length: `(setup_sects + 1) * 512 + payload_offset`, `payload_length`
/// bytes (setup_sects 0 means 4).
pub fn payload(head: &[u8], file_len: u64) -> Result<Payload, HeaderFault> {
    if head.len() < HEAD_LEN {
        return Err(HeaderFault::Short);
    }
    if &head[MAGIC_AT..MAGIC_AT + 4] != b"HdrS" {
        return Err(HeaderFault::NoSignature);
    }
    let version = u16_at(head, VERSION_AT);
    if version < PAYLOAD_FIELDS_VERSION {
        return Err(HeaderFault::OldProtocol(version));
    }
    let setup_sects = match head[SETUP_SECTS_AT] {
        0 => 4,
        n => u64::from(n),
    };
    let offset = (setup_sects + 1) * 512 + u64::from(u32_at(head, PAYLOAD_OFFSET_AT));
    let length = u64::from(u32_at(head, PAYLOAD_LENGTH_AT));
    if length == 0 || offset.saturating_add(length) > file_len {
        return Err(HeaderFault::OutsideFile {
            offset,
            length,
            file_len,
        });
    }
    Ok(Payload { offset, length })
}

/// The setup header from the image's first [`HEAD_LEN`] bytes (`None` when
/// shorter): what the zero page of the unpacked kernel carries over.
pub fn setup_header(head: &[u8]) -> Option<setup_header> {
    head.get(SETUP_HEADER_AT..HEAD_LEN)
        .and_then(setup_header::from_slice)
        .copied()
}

/// A payload's compression, recognised by its magic bytes (the formats
/// Linux's `arch/x86/boot/compressed` can build).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// gzip (`1f 8b`).
    Gzip,
    /// xz (`fd 37 7a 58 5a 00`), with the x86 BCJ filter in kernels.
    Xz,
    /// zstd (`28 b5 2f fd`).
    Zstd,
    /// LZ4 legacy frame (`02 21 4c 18`), Debian's choice.
    Lz4Legacy,
    /// bzip2 (`BZh`): not decoded on the host.
    Bzip2,
    /// LZMA "alone" (`5d 00 00`): not decoded on the host.
    Lzma,
    /// LZO (`89 4c 5a 4f`): not decoded on the host.
    Lzo,
    /// Anything else.
    Unknown,
}

impl Compression {
    /// Recognises the format from the payload's first bytes.
    pub fn from_magic(head: &[u8]) -> Self {
        const TABLE: [(&[u8], Compression); 7] = [
            (b"\x1f\x8b", Compression::Gzip),
            (b"\xfd7zXZ\x00", Compression::Xz),
            (b"\x28\xb5\x2f\xfd", Compression::Zstd),
            (b"\x02\x21\x4c\x18", Compression::Lz4Legacy),
            (b"BZh", Compression::Bzip2),
            (b"\x5d\x00\x00", Compression::Lzma),
            (b"\x89LZO", Compression::Lzo),
        ];
        TABLE
            .iter()
            .find(|(magic, _)| head.starts_with(magic))
            .map_or(Compression::Unknown, |&(_, c)| c)
    }

    /// Whether kvmkit decodes it on the host.
    pub fn host_decodable(self) -> bool {
        matches!(self, Self::Gzip | Self::Xz | Self::Zstd | Self::Lz4Legacy)
    }

    /// Its name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Xz => "xz",
            Self::Zstd => "zstd",
            Self::Lz4Legacy => "lz4",
            Self::Bzip2 => "bzip2",
            Self::Lzma => "lzma",
            Self::Lzo => "lzo",
            Self::Unknown => "unknown",
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A synthetic bzImage header (protocol 2.15, `setup_sects` sectors of
    /// setup) whose payload sits `gap` bytes into the protected-mode part.
    pub(crate) fn synthetic(payload: &[u8], setup_sects: u8, gap: u32) -> Vec<u8> {
        let sects = if setup_sects == 0 { 4 } else { usize::from(setup_sects) };
        let start = (sects + 1) * 512 + gap as usize;
        let mut img = vec![0u8; start + payload.len()];
        img[SETUP_SECTS_AT] = setup_sects;
        img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        img[MAGIC_AT..MAGIC_AT + 4].copy_from_slice(b"HdrS");
        img[VERSION_AT..VERSION_AT + 2].copy_from_slice(&0x020fu16.to_le_bytes());
        img[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
        img[PAYLOAD_OFFSET_AT..PAYLOAD_OFFSET_AT + 4].copy_from_slice(&gap.to_le_bytes());
        img[PAYLOAD_LENGTH_AT..PAYLOAD_LENGTH_AT + 4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        img[start..].copy_from_slice(payload);
        img
    }

    #[test]
    fn the_payload_is_found_after_the_setup_sectors() {
        let img = synthetic(b"PAYLOAD!", 2, 0x10);
        let p = payload(&img, img.len() as u64).expect("payload");
        assert_eq!(
            p,
            Payload {
                offset: 3 * 512 + 0x10,
                length: 8
            }
        );
        let img = synthetic(b"four", 0, 0);
        let p = payload(&img, img.len() as u64).expect("payload");
        assert_eq!(p.offset, 5 * 512, "setup_sects 0 means 4");
    }

    #[test]
    fn bad_headers_are_named() {
        let img = synthetic(b"x", 2, 0);
        assert_eq!(payload(&img[..0x200], 0x200), Err(HeaderFault::Short));
        let mut bad = img.clone();
        bad[MAGIC_AT] = b'X';
        assert_eq!(payload(&bad, bad.len() as u64), Err(HeaderFault::NoSignature));
        let mut old = img.clone();
        old[VERSION_AT..VERSION_AT + 2].copy_from_slice(&0x0207u16.to_le_bytes());
        assert_eq!(payload(&old, old.len() as u64), Err(HeaderFault::OldProtocol(0x207)));
        let mut past = img.clone();
        past[PAYLOAD_LENGTH_AT..PAYLOAD_LENGTH_AT + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            payload(&past, past.len() as u64),
            Err(HeaderFault::OutsideFile { .. })
        ));
        let mut empty = img.clone();
        empty[PAYLOAD_LENGTH_AT..PAYLOAD_LENGTH_AT + 4].copy_from_slice(&0u32.to_le_bytes());
        assert!(matches!(
            payload(&empty, empty.len() as u64),
            Err(HeaderFault::OutsideFile { .. })
        ));
    }

    #[test]
    fn the_setup_header_is_read_in_place() {
        let img = synthetic(b"x", 2, 0);
        let h = setup_header(&img).expect("header");
        assert_eq!({ h.header }, u32::from_le_bytes(*b"HdrS"));
        assert_eq!({ h.version }, 0x20f);
        assert_eq!({ h.setup_sects }, 2);
        assert_eq!({ h.initrd_addr_max }, 0x7fff_ffff);
        assert_eq!({ h.payload_length }, 1);
        assert!(setup_header(&img[..0x200]).is_none());
    }

    #[test]
    fn each_compressor_is_recognised_by_its_magic() {
        let cases: [(&[u8], Compression, bool); 9] = [
            (b"\x1f\x8b\x08\x00", Compression::Gzip, true),
            (b"\xfd7zXZ\x00\x00", Compression::Xz, true),
            (b"\x28\xb5\x2f\xfd\x00", Compression::Zstd, true),
            (b"\x02\x21\x4c\x18\x11", Compression::Lz4Legacy, true),
            (b"BZh91AY", Compression::Bzip2, false),
            (b"\x5d\x00\x00\x80\x00", Compression::Lzma, false),
            (b"\x89LZO\x00", Compression::Lzo, false),
            (b"\x7fELF", Compression::Unknown, false),
            (b"", Compression::Unknown, false),
        ];
        for (magic, want, decodable) in cases {
            let c = Compression::from_magic(magic);
            assert_eq!(c, want, "{magic:02x?}");
            assert_eq!(c.host_decodable(), decodable, "{}", c.name());
        }
        // A magic cut short is not the format.
        assert_eq!(Compression::from_magic(b"\xfd7zX"), Compression::Unknown);
    }
}
