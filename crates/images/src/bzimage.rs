//! Unpacks the ELF `vmlinux` from a bzImage's compressed payload, with the decoder the VMM
//! boots bzImages with (`kvmkit_vmm::boot::unpack`: gzip, xz, zstd, LZ4 legacy; every size
//! bounded): one implementation of the format for booting and for the image cache.

use std::io::Cursor;

use kvmkit_vmm::boot::unpack::{unpack, Outcome};

use crate::ImageError;

/// Extracts the ELF vmlinux from a bzImage.
pub(crate) fn extract_vmlinux(image: &[u8]) -> Result<Vec<u8>, ImageError> {
    let mut cursor = Cursor::new(image);
    match unpack(&mut cursor, image.len() as u64, u64::MAX) {
        Ok(Outcome::Unpacked(u)) => Ok(u.elf),
        Ok(Outcome::Fallback(why)) => Err(ImageError::BadKernel(format!("cannot unpack the bzImage: {why}"))),
        Err(e) => Err(ImageError::io("reading the bzImage".to_string(), e)),
    }
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
        let mut out = 0x184C_2102u32.to_le_bytes().to_vec();
        for chunk in data.chunks(8 << 20) {
            let block = lz4_flex::block::compress(chunk);
            out.extend_from_slice(&(block.len() as u32).to_le_bytes());
            out.extend_from_slice(&block);
        }
        out.extend_from_slice(&(data.len() as u32).to_le_bytes()); // the kernel's size_append
        out
    }

    #[test]
    fn rejects_bad_headers_and_unknown_payloads() {
        let elf = lz4_legacy(b"\x7fELF and more");
        let mut image = synthetic(&elf, 2);
        image[0x24c] = 0xff; // payload past the end
        assert!(matches!(extract_vmlinux(&image), Err(ImageError::BadKernel(_))));
        let mut image = synthetic(&elf, 2);
        image[0x202] = b'X';
        assert!(matches!(extract_vmlinux(&image), Err(ImageError::BadKernel(_))));
        assert!(extract_vmlinux(&[0u8; 16]).is_err());
        let image = synthetic(b"nope!! not a known compression", 2);
        assert!(matches!(extract_vmlinux(&image), Err(ImageError::BadKernel(_))));
    }

    #[test]
    fn unpacks_lz4_legacy_elf() {
        let mut elf = b"\x7fELF".to_vec();
        elf.extend((0..(9u32 << 20)).map(|i| (i % 251) as u8)); // spans two 8 MiB blocks
        let image = synthetic(&lz4_legacy(&elf), 3);
        assert_eq!(extract_vmlinux(&image).unwrap(), elf);
    }

    #[test]
    fn non_elf_payload_is_rejected() {
        let image = synthetic(&lz4_legacy(b"not an elf at all"), 2);
        assert!(matches!(extract_vmlinux(&image), Err(ImageError::BadKernel(_))));
    }
}
