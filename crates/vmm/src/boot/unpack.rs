//! Host-side bzImage decompression: the compressed vmlinux a bzImage carries
//! is decompressed here, so that the guest starts in the kernel proper
//! instead of running the bzImage's own decompressor first (emulated, and so
//! slow, on kvm_pvm; tens of milliseconds on VMX/SVM). Anything this path
//! cannot do ends in [`Outcome::Fallback`] with the reason, and the caller
//! boots the bzImage as it is.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};

use linux_loader::loader::bootparam::setup_header;

use super::bzimage::{self, Compression, HEAD_LEN};
use super::decompress::{read_bounded, reader, DecodeError};

/// Bytes of the compressed payload read from the file at a time.
const IN_BUF: usize = 64 << 10;

/// Most bytes a payload may decompress to (less when guest RAM is smaller:
/// a kernel larger than the guest's RAM could not run in it anyway).
pub const MAX_UNPACKED: u64 = 256 << 20;

/// A bzImage's kernel, decompressed.
#[derive(Debug)]
pub struct Unpacked {
    /// The ELF vmlinux (and whatever the build appended, e.g. relocations).
    pub elf: Vec<u8>,
    /// The bzImage's setup header, for the zero page.
    pub header: setup_header,
    /// The payload's format.
    pub compression: Compression,
}

/// What [`unpack`] did.
#[derive(Debug)]
pub enum Outcome {
    /// The payload decompressed to an ELF kernel.
    Unpacked(Unpacked),
    /// It did not (the reason, one line): boot the bzImage as it is.
    Fallback(String),
}

/// The cap on the decompressed size for a guest of `mem_size` bytes.
pub fn cap(mem_size: u64) -> usize {
    usize::try_from(mem_size.min(MAX_UNPACKED)).unwrap_or(usize::MAX)
}

/// Decompresses the payload of the bzImage in `file` (`file_len` bytes) for a
/// guest of `mem_size` bytes; `file` is rewound. Only I/O errors are errors.
pub fn unpack<R: Read + Seek>(file: &mut R, file_len: u64, mem_size: u64) -> std::io::Result<Outcome> {
    let cap = cap(mem_size);
    let outcome = match open_payload(file, file_len, cap)? {
        Opened::Payload(p) => match read_bounded(p.decoded, p.compression, cap, p.size_hint) {
            Ok(elf) if elf.starts_with(b"\x7fELF") => Outcome::Unpacked(Unpacked {
                elf,
                header: p.header,
                compression: p.compression,
            }),
            Ok(_) => Outcome::Fallback(not_elf(p.compression)),
            Err(e) => Outcome::Fallback(undecodable(p.compression, &e)),
        },
        Opened::Fallback(why) => Outcome::Fallback(why),
    };
    file.seek(SeekFrom::Start(0))?;
    Ok(outcome)
}

/// The fallback reason for a payload that decoded to something other than an ELF file.
pub fn not_elf(c: Compression) -> String {
    format!(
        "its {} payload decompressed to something other than an ELF kernel",
        c.name()
    )
}

/// The fallback reason for a payload that did not decode.
pub fn undecodable(c: Compression, e: &DecodeError) -> String {
    format!("its {} payload did not decompress: {e}", c.name())
}

/// A bzImage's payload, found and recognised, with a reader of what it
/// decompresses to.
pub struct Payload<'a> {
    /// The decompressed bytes (decoding errors come out of its reads).
    pub decoded: Box<dyn BufRead + 'a>,
    /// The bzImage's setup header, for the zero page.
    pub header: setup_header,
    /// The payload's format.
    pub compression: Compression,
    /// The uncompressed size the kernel build appends to the payload (LE32),
    /// at most the cap: a capacity hint, never trusted.
    pub size_hint: usize,
}

/// What [`open_payload`] found.
pub enum Opened<'a> {
    /// A payload kvmkit decodes.
    Payload(Payload<'a>),
    /// None (the reason, one line): boot the bzImage as it is.
    Fallback(String),
}

/// Finds the payload of the bzImage in `file` (`file_len` bytes) and opens a
/// decoder on it, for output of at most `cap` bytes (the caller enforces it;
/// see [`cap`]). The caller rewinds `file` once done with the payload.
pub fn open_payload<R: Read + Seek>(file: &mut R, file_len: u64, cap: usize) -> std::io::Result<Opened<'_>> {
    let fallback = |why: String| Ok(Opened::Fallback(why));
    let mut head = vec![0u8; HEAD_LEN.min(usize::try_from(file_len).unwrap_or(HEAD_LEN))];
    file.seek(SeekFrom::Start(0))?;
    file.read_exact(&mut head)?;
    let location = match bzimage::payload(&head, file_len) {
        Ok(p) => p,
        Err(fault) => return fallback(format!("its setup header does not locate the payload: {fault}")),
    };
    let Some(header) = bzimage::setup_header(&head) else {
        return fallback("its setup header is cut short".into());
    };
    // `payload` checked that the payload lies inside the file; a compressed
    // payload larger than the cap on its output is not read at all.
    if location.length > cap as u64 {
        return fallback(format!(
            "its payload is {} MiB, more than the {} MiB a kernel may decompress to here",
            location.length >> 20,
            cap >> 20
        ));
    }
    let mut magic = [0u8; 6];
    let magic = &mut magic[..usize::try_from(location.length).unwrap_or(6).min(6)];
    file.seek(SeekFrom::Start(location.offset))?;
    file.read_exact(magic)?;
    let compression = Compression::from_magic(magic);
    if !compression.host_decodable() {
        let magic: Vec<String> = magic.iter().map(|b| format!("{b:02x}")).collect();
        return fallback(format!(
            "its payload is {} (magic {}), which kvmkit does not decompress on the host",
            compression.name(),
            magic.join(" ")
        ));
    }
    let mut size = [0u8; 4];
    let size_hint = match location.length.checked_sub(4) {
        Some(at) => {
            file.seek(SeekFrom::Start(location.offset + at))?;
            file.read_exact(&mut size)?;
            (u32::from_le_bytes(size) as usize).min(cap)
        }
        None => 0,
    };
    file.seek(SeekFrom::Start(location.offset))?;
    let input = BufReader::with_capacity(IN_BUF, file.take(location.length));
    match reader(input, compression, location.length) {
        Ok(decoded) => Ok(Opened::Payload(Payload {
            decoded,
            header,
            compression,
            size_hint,
        })),
        Err(e) => fallback(undecodable(compression, &e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::bzimage::tests::synthetic;
    use crate::boot::decompress::tests::gzip;
    use std::io::Cursor;

    fn run(img: &[u8], mem_size: u64) -> Outcome {
        let mut file = Cursor::new(img.to_vec());
        let outcome = unpack(&mut file, img.len() as u64, mem_size).expect("in-memory I/O");
        assert_eq!(file.position(), 0, "the file is rewound");
        outcome
    }

    fn fallback_reason(outcome: Outcome) -> String {
        match outcome {
            Outcome::Fallback(why) => why,
            Outcome::Unpacked(u) => panic!("unpacked {} bytes", u.elf.len()),
        }
    }

    #[test]
    fn a_gzip_payload_unpacks_with_its_setup_header() {
        let elf = b"\x7fELF and the rest of a kernel".repeat(100);
        let img = synthetic(&gzip(&elf), 3, 0x40);
        match run(&img, 64 << 20) {
            Outcome::Unpacked(u) => {
                assert_eq!(u.elf, elf);
                assert_eq!(u.compression, Compression::Gzip);
                assert_eq!({ u.header.setup_sects }, 3);
                assert_eq!({ u.header.version }, 0x20f);
            }
            Outcome::Fallback(why) => panic!("fell back: {why}"),
        }
    }

    #[test]
    fn what_cannot_be_unpacked_falls_back_with_a_reason() {
        let why = fallback_reason(run(&synthetic(b"BZh91AY&SY....", 2, 0), 64 << 20));
        assert!(why.contains("bzip2") && why.contains("42 5a 68"), "{why}");
        let why = fallback_reason(run(&synthetic(&gzip(b"not an ELF file"), 2, 0), 64 << 20));
        assert!(why.contains("other than an ELF"), "{why}");
        let mut old = synthetic(&gzip(b"\x7fELF"), 2, 0);
        old[0x206..0x208].copy_from_slice(&0x0206u16.to_le_bytes());
        assert!(fallback_reason(run(&old, 64 << 20)).contains("2.08"));
        let mut damaged = gzip(&[7u8; 4096]);
        let mid = damaged.len() / 2;
        damaged[mid..mid + 4].fill(0xff);
        let why = fallback_reason(run(&synthetic(&damaged, 2, 0), 64 << 20));
        assert!(why.contains("did not decompress"), "{why}");
    }

    #[test]
    fn the_output_is_capped_by_guest_ram() {
        let mut elf = b"\x7fELF".to_vec();
        elf.resize(3 << 20, 0);
        let img = synthetic(&gzip(&elf), 2, 0);
        let why = fallback_reason(run(&img, 2 << 20));
        assert!(why.contains("more than 2 MiB"), "{why}");
        // A payload larger than the cap is not even read.
        let big = synthetic(&vec![0x1f; 3 << 20], 2, 0);
        let why = fallback_reason(run(&big, 2 << 20));
        assert!(why.contains("payload is 3 MiB, more than the 2 MiB"), "{why}");
        assert!(matches!(run(&img, 4 << 20), Outcome::Unpacked(_)));
        assert_eq!(cap(1 << 40), MAX_UNPACKED as usize);
    }
}
