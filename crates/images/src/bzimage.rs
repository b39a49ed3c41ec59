//! Unpacks the ELF `vmlinux` from a bzImage's compressed payload.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::ImageError;

/// The compression of a bzImage payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    /// LZ4 legacy frame (`lz4 -l`), Debian's choice.
    Lz4Legacy,
    /// xz.
    Xz,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

const LZ4_LEGACY_MAGIC: u32 = 0x184C_2102;
const LZ4_LEGACY_BLOCK: usize = 8 << 20;

/// Finds the compressed payload inside a bzImage, using the setup header's `setup_sects`
/// (0x1f1), `payload_offset` (0x248) and `payload_length` (0x24c).
pub(crate) fn locate_payload(image: &[u8]) -> Result<&[u8], ImageError> {
    let bad = |why: &str| ImageError::BadKernel(why.to_string());
    if image.get(0x202..0x206) != Some(b"HdrS") {
        return Err(bad("no 'HdrS' setup header signature at 0x202"));
    }
    let version = u16::from_le_bytes([image[0x206], image[0x207]]);
    if version < 0x0208 {
        return Err(bad(&format!(
            "boot protocol {version:#x} predates payload_offset (2.08)"
        )));
    }
    let setup_sects = match image[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let read_u32 = |at: usize| u32::from_le_bytes([image[at], image[at + 1], image[at + 2], image[at + 3]]) as usize;
    let offset = read_u32(0x248);
    let length = read_u32(0x24c);
    let start = (setup_sects + 1) * 512 + offset;
    image.get(start..start + length).ok_or_else(|| {
        bad(&format!(
            "payload {start:#x}+{length:#x} lies outside the {:#x}-byte image",
            image.len()
        ))
    })
}

/// Recognizes the payload's compression from its magic bytes.
pub(crate) fn detect_compression(payload: &[u8]) -> Result<Compression, ImageError> {
    if payload.starts_with(&LZ4_LEGACY_MAGIC.to_le_bytes()) {
        Ok(Compression::Lz4Legacy)
    } else if payload.starts_with(b"\xfd7zXZ\x00") {
        Ok(Compression::Xz)
    } else if payload.starts_with(b"\x1f\x8b") {
        Ok(Compression::Gzip)
    } else if payload.starts_with(b"\x28\xb5\x2f\xfd") {
        Ok(Compression::Zstd)
    } else {
        let head: Vec<String> = payload.iter().take(6).map(|b| format!("{b:02x}")).collect();
        Err(ImageError::BadKernel(format!(
            "unsupported bzImage payload compression (magic {})",
            head.join(" ")
        )))
    }
}

/// Decompresses an LZ4 legacy frame: a magic, then blocks each prefixed with its LE32 compressed
/// size and decompressing to at most 8 MiB. The kernel build appends the LE32 uncompressed size,
/// which reads as a block size larger than what is left, and ends the stream.
pub(crate) fn decompress_lz4_legacy(payload: &[u8]) -> Result<Vec<u8>, ImageError> {
    let mut out = Vec::new();
    let mut pos = 4;
    let mut block = vec![0u8; LZ4_LEGACY_BLOCK];
    while let Some(size) = payload.get(pos..pos + 4) {
        let size = u32::from_le_bytes([size[0], size[1], size[2], size[3]]);
        pos += 4;
        if size == LZ4_LEGACY_MAGIC {
            continue; // concatenated frames
        }
        let Some(data) = payload.get(pos..pos + size as usize) else {
            break; // the appended uncompressed size, or trailing padding
        };
        let n = lz4_flex::block::decompress_into(data, &mut block)
            .map_err(|e| ImageError::BadKernel(format!("LZ4 block at {pos:#x}: {e}")))?;
        out.extend_from_slice(&block[..n]);
        pos += size as usize;
    }
    Ok(out)
}

/// Pipes `input` through an external decompressor (`xz -d -c`, ...).
fn decompress_with(tool: &str, input: &[u8]) -> Result<Vec<u8>, ImageError> {
    let spawn_err = |e| ImageError::io(format!("running {tool} -d -c (is it installed?)"), e);
    let mut child = Command::new(tool)
        .args(["-d", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(spawn_err)?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| ImageError::BadKernel(format!("{tool}: no stdin")))?;
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().map_err(spawn_err)?;
    // A decompressor that stops at the end of its stream may close stdin early: not an error.
    let _ = writer.join();
    if output.stdout.is_empty() {
        return Err(ImageError::BadKernel(format!(
            "{tool} -d produced nothing ({})",
            output.status
        )));
    }
    Ok(output.stdout)
}

/// Extracts the ELF vmlinux from a bzImage.
pub(crate) fn extract_vmlinux(image: &[u8]) -> Result<Vec<u8>, ImageError> {
    let payload = locate_payload(image)?;
    let elf = match detect_compression(payload)? {
        Compression::Lz4Legacy => decompress_lz4_legacy(payload)?,
        Compression::Xz => decompress_with("xz", payload)?,
        Compression::Gzip => decompress_with("gzip", payload)?,
        Compression::Zstd => decompress_with("zstd", payload)?,
    };
    if !elf.starts_with(b"\x7fELF") {
        return Err(ImageError::BadKernel(
            "the decompressed payload is not an ELF file".into(),
        ));
    }
    Ok(elf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A synthetic bzImage: 2 setup sectors past the boot sector, the payload 0x10 bytes into
    /// the protected-mode part.
    fn synthetic(payload: &[u8], setup_sects: u8) -> Vec<u8> {
        let sects = if setup_sects == 0 { 4 } else { setup_sects as usize };
        let mut image = vec![0u8; (sects + 1) * 512 + 0x10 + payload.len() + 32];
        image[0x1f1] = setup_sects;
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        image[0x248..0x24c].copy_from_slice(&0x10u32.to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        let start = (sects + 1) * 512 + 0x10;
        image[start..start + payload.len()].copy_from_slice(payload);
        image
    }

    fn lz4_legacy(data: &[u8]) -> Vec<u8> {
        let mut out = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        for chunk in data.chunks(LZ4_LEGACY_BLOCK) {
            let block = lz4_flex::block::compress(chunk);
            out.extend_from_slice(&(block.len() as u32).to_le_bytes());
            out.extend_from_slice(&block);
        }
        out.extend_from_slice(&(data.len() as u32).to_le_bytes()); // the kernel's size_append
        out
    }

    #[test]
    fn locates_payload_in_synthetic_header() {
        let image = synthetic(b"PAYLOAD!", 2);
        assert_eq!(locate_payload(&image).unwrap(), b"PAYLOAD!");
        let image = synthetic(b"zero-means-four", 0);
        assert_eq!(locate_payload(&image).unwrap(), b"zero-means-four");
    }

    #[test]
    fn rejects_bad_headers() {
        let mut image = synthetic(b"x", 2);
        image[0x24c] = 0xff; // payload past the end
        assert!(matches!(locate_payload(&image), Err(ImageError::BadKernel(_))));
        let mut image = synthetic(b"x", 2);
        image[0x202] = b'X';
        assert!(matches!(locate_payload(&image), Err(ImageError::BadKernel(_))));
        assert!(locate_payload(&[0u8; 16]).is_err());
        assert!(matches!(detect_compression(b"nope!!"), Err(ImageError::BadKernel(_))));
    }

    #[test]
    fn unpacks_lz4_legacy_elf() {
        let mut elf = b"\x7fELF".to_vec();
        elf.extend((0..(9u32 << 20)).map(|i| (i % 251) as u8)); // spans two 8 MiB blocks
        let image = synthetic(&lz4_legacy(&elf), 3);
        assert_eq!(
            detect_compression(locate_payload(&image).unwrap()).unwrap(),
            Compression::Lz4Legacy
        );
        assert_eq!(extract_vmlinux(&image).unwrap(), elf);
    }

    #[test]
    fn non_elf_payload_is_rejected() {
        let image = synthetic(&lz4_legacy(b"not an elf at all"), 2);
        assert!(matches!(extract_vmlinux(&image), Err(ImageError::BadKernel(_))));
    }
}
