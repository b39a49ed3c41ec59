//! Kernel images as a user (or whoever wrote the file) controls them, loaded
//! by `kvmkit_vmm::boot::boot` into a small guest memory: raw bytes, ELF64
//! images with fuzzed headers and program headers (PT_LOAD, PT_NOTE with or
//! without a PVH entry note, 32-bit class, big-endian, tables past the end),
//! and bzImages with fuzzed setup headers, whose payload is either fuzzed
//! bytes or one of those ELF images compressed as Linux's build does (gzip,
//! xz, zstd, LZ4 legacy, bzip2's magic), intact or damaged, which kvmkit
//! decompresses on the host.
//!
//! Input: `mode` (0 raw, 1 ELF, 2 bzImage), `protocol` (auto, linux, pvh),
//! `ram` (2..=9 MiB), then the fields of the chosen format, then the payload;
//! for a bzImage then `wrap` (0 the payload as it is; 1-4 a compressed ELF,
//! 5 fuzzed bytes behind a compressor's magic; 6-7 a compressed ELF with
//! fuzzed bytes written over it) and its fields.
//!
//! Besides "no panic, no hang": an error is one line under 1 KiB; an image
//! that loads has its entry point inside guest RAM, and every ELF PT_LOAD
//! segment with bytes lies in the file and in RAM at or above 1 MiB (where
//! kvmkit's boot structures end), which is what the pre-load check promises;
//! the same holds for the ELF inside a bzImage, and one that loads through
//! the Linux protocol enters at the ELF's entry, not the bzImage's.

use std::io::Write;
use std::os::fd::FromRawFd;

use kvmkit_vmm::arch::x86_64::regs::EntryPoint;
use kvmkit_vmm::boot::{boot, BootProtocol, BootSource};
use kvmkit_vmm::memory::GuestMemoryMmap;
use vm_memory::GuestAddress;

use crate::Input;

const MIB: u64 = 1 << 20;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
/// XEN_ELFNOTE_PHYS32_ENTRY: the PVH entry note's type.
const PVH_NOTE: u32 = 18;

/// What one input did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The image loaded.
    pub loaded: bool,
    /// It entered through PVH.
    pub pvh: bool,
    /// It was a bzImage whose payload was decompressed on the host.
    pub unpacked: bool,
}

/// A fuzzed u64: usually small and near `base`, sometimes any value.
fn field(input: &mut Input<'_>, base: u64) -> u64 {
    match input.u8() % 8 {
        0 => input.u64(),
        _ => base.wrapping_add(u64::from(input.u16()) * 16),
    }
}

/// An ELF64 image: header, program headers, a PVH note, payload.
fn elf(input: &mut Input<'_>) -> Vec<u8> {
    let class = if input.u8().is_multiple_of(16) { 1 } else { 2 };
    let data = if input.u8().is_multiple_of(16) { 2 } else { 1 };
    let phnum = usize::from(input.u8() % 6);
    let entry = field(input, MIB);
    let mut phdrs = Vec::new();
    let mut note: Option<(u64, u64)> = None;
    let body_at = 64 + 56 * phnum as u64;
    for _ in 0..phnum {
        let kind = match input.u8() % 4 {
            0 | 1 => PT_LOAD,
            2 => PT_NOTE,
            _ => 6,
        };
        let offset = field(input, body_at);
        let paddr = field(input, MIB);
        let filesz = field(input, 0)
            % if input.u8().is_multiple_of(8) {
                u64::MAX
            } else {
                64 << 10
            };
        let memsz = field(input, filesz);
        if kind == PT_NOTE {
            note = Some((offset, filesz));
        }
        phdrs.push((kind, offset, paddr, filesz, memsz));
    }
    let mut img = vec![0u8; 64];
    img[..4].copy_from_slice(b"\x7fELF");
    img[4] = class;
    img[5] = data;
    img[6] = 1;
    img[16..18].copy_from_slice(&2u16.to_le_bytes());
    img[18..20].copy_from_slice(&62u16.to_le_bytes());
    img[24..32].copy_from_slice(&entry.to_le_bytes());
    let phoff = if input.u8().is_multiple_of(16) { input.u64() } else { 64 };
    img[32..40].copy_from_slice(&phoff.to_le_bytes());
    img[52..54].copy_from_slice(&64u16.to_le_bytes());
    img[54..56].copy_from_slice(&56u16.to_le_bytes());
    img[56..58].copy_from_slice(&(phnum as u16).to_le_bytes());
    for (kind, offset, paddr, filesz, memsz) in &phdrs {
        let mut ph = [0u8; 56];
        ph[..4].copy_from_slice(&kind.to_le_bytes());
        ph[8..16].copy_from_slice(&offset.to_le_bytes());
        ph[16..24].copy_from_slice(&paddr.to_le_bytes());
        ph[24..32].copy_from_slice(&paddr.to_le_bytes());
        ph[32..40].copy_from_slice(&filesz.to_le_bytes());
        ph[40..48].copy_from_slice(&memsz.to_le_bytes());
        img.extend_from_slice(&ph);
    }
    let payload_len = usize::from(input.u16() % 8192);
    let mut body = input.bytes(payload_len).to_vec();
    body.resize(payload_len, 0);
    img.extend_from_slice(&body);
    // A PVH note where the PT_NOTE points, when it fits a small file.
    if let Some((offset, len)) = note {
        if input.u8().is_multiple_of(2) && offset < 64 << 10 && len >= 20 {
            let at = offset as usize;
            if img.len() < at + 24 {
                img.resize(at + 24, 0);
            }
            img[at..at + 4].copy_from_slice(&4u32.to_le_bytes()); // name size ("Xen\0")
            img[at + 4..at + 8].copy_from_slice(&(input.u8() as u32 % 9).to_le_bytes()); // desc size
            img[at + 8..at + 12].copy_from_slice(&PVH_NOTE.to_le_bytes());
            img[at + 12..at + 16].copy_from_slice(b"Xen\0");
            img[at + 16..at + 24].copy_from_slice(&field(input, MIB).to_le_bytes());
        }
    }
    img
}

/// `data` compressed as Linux's build does (the uncompressed size appended).
fn compress(data: &[u8], format: u8) -> Vec<u8> {
    let mut out = match format {
        1 => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).expect("gzip");
            e.finish().expect("gzip")
        }
        2 => {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 0);
            e.write_all(data).expect("xz");
            e.finish().expect("xz")
        }
        3 => zstd::stream::encode_all(data, 1).expect("zstd"),
        _ => {
            let mut out = vec![0x02, 0x21, 0x4c, 0x18];
            let block = lz4_flex::block::compress(data);
            out.extend_from_slice(&(block.len() as u32).to_le_bytes());
            out.extend_from_slice(&block);
            out
        }
    };
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// Magic numbers of the payload formats (`wrap` 5 puts fuzzed bytes behind one).
const MAGICS: [&[u8]; 5] = [
    b"\x1f\x8b\x08\x00",
    b"\xfd7zXZ\x00",
    b"\x28\xb5\x2f\xfd",
    b"\x02\x21\x4c\x18",
    b"BZh9",
];

/// A bzImage's payload per `wrap` (see the module doc); the ELF inside when
/// it is intact.
fn payload(input: &mut Input<'_>, wrap: u8) -> (Vec<u8>, Option<Vec<u8>>) {
    if wrap == 5 {
        let mut p = MAGICS[usize::from(input.u8()) % MAGICS.len()].to_vec();
        let len = usize::from(input.u16() % 4096);
        p.extend_from_slice(input.bytes(len));
        return (p, None);
    }
    let format = if wrap <= 4 { wrap } else { 1 + input.u8() % 4 };
    let inner = elf(input);
    let mut p = compress(&inner, format);
    if wrap > 4 {
        for _ in 0..1 + input.u8() % 4 {
            let at = usize::from(input.u16()) % p.len();
            p[at] = input.u8();
        }
        return (p, None);
    }
    (p, Some(inner))
}

/// A bzImage: a setup header with fuzzed fields, then the "protected-mode" payload.
/// The ELF inside is returned when the payload is an intact compressed ELF
/// that the header locates (so that kvmkit must unpack it on the host).
fn bzimage(input: &mut Input<'_>) -> (Vec<u8>, Option<Vec<u8>>) {
    let setup_sects = input.u8() % 8;
    let mut img = vec![0u8; (usize::from(setup_sects.max(1)) + 1) * 512];
    img[0x1f1] = setup_sects;
    img[0x1f4..0x1f8].copy_from_slice(&input.u32().to_le_bytes()); // syssize
    img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&(0x200 + u16::from(input.u8() % 0x10)).to_le_bytes()); // version
    img[0x20e..0x210].copy_from_slice(&input.u16().to_le_bytes()); // kernel_version
    img[0x211] = input.u8(); // loadflags
    img[0x214..0x218].copy_from_slice(&input.u32().to_le_bytes()); // code32_start
    img[0x22c..0x230].copy_from_slice(&input.u32().to_le_bytes()); // initrd_addr_max
    img[0x230..0x234].copy_from_slice(&input.u32().to_le_bytes()); // kernel_alignment
    img[0x234] = input.u8(); // relocatable
    img[0x260..0x264].copy_from_slice(&input.u32().to_le_bytes()); // init_size
    let payload_len = usize::from(input.u16() % 8192);
    let mut body = input.bytes(payload_len).to_vec();
    body.resize(payload_len, 0);
    img.extend_from_slice(&body);
    let wrap = input.u8() % 8;
    if wrap == 0 {
        return (img, None);
    }
    // A payload where the header says (protocol 2.08+), syssize to match;
    // sometimes a fuzzed offset, length, version or syssize instead.
    let (p, inner) = payload(input, wrap);
    let setup_end = img.len() - payload_len;
    let at = u32::from(input.u8()) * 16;
    let start = setup_end + at as usize;
    img.resize(start + p.len(), 0);
    img[start..].copy_from_slice(&p);
    // Padded to whole paragraphs, as syssize counts them.
    img.resize(setup_end + (img.len() - setup_end).div_ceil(16) * 16, 0);
    let pm_len = (img.len() - setup_end) as u32;
    // The builder above lays a setup_sects of 0 out as 1 sector, the header as 4.
    let mut intact = inner.filter(|_| setup_sects != 0);
    let right = (at, p.len() as u32, pm_len.div_ceil(16));
    let (offset, length, syssize) = match input.u8() % 16 {
        0 => (input.u32(), right.1, right.2),
        1 => (right.0, input.u32(), right.2),
        2 => (right.0, right.1, input.u32()),
        _ => right,
    };
    if (offset, length, syssize) != right {
        intact = None;
    }
    if !input.u8().is_multiple_of(16) {
        img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    } else {
        intact = None;
    }
    img[0x1f4..0x1f8].copy_from_slice(&syssize.to_le_bytes());
    img[0x248..0x24c].copy_from_slice(&offset.to_le_bytes());
    img[0x24c..0x250].copy_from_slice(&length.to_le_bytes());
    (img, intact)
}

/// An in-memory file holding `bytes`.
fn memfd(bytes: &[u8]) -> std::fs::File {
    // SAFETY: memfd_create with a NUL-terminated name; checked below.
    let fd = unsafe { libc::memfd_create(c"kernel".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a new descriptor that the File now owns.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    f.write_all(bytes).expect("memfd write");
    f
}

/// PT_LOAD segments with bytes: (file offset, file size, load address, memory size).
fn load_segments(img: &[u8]) -> Vec<(u64, u64, u64, u64)> {
    let u16_at = |at: usize| img.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |at: usize| {
        img.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    let (Some(phoff), Some(phnum)) = (u64_at(32), u16_at(56)) else {
        return Vec::new();
    };
    (0..usize::from(phnum))
        .filter_map(|i| {
            let at = usize::try_from(phoff).ok()?.checked_add(i * 56)?;
            let kind = u32::from_le_bytes(img.get(at..at + 4)?.try_into().ok()?);
            let (off, paddr, filesz, memsz) = (u64_at(at + 8)?, u64_at(at + 24)?, u64_at(at + 32)?, u64_at(at + 40)?);
            (kind == PT_LOAD && filesz > 0).then_some((off, filesz, paddr, memsz))
        })
        .collect()
}

/// Loads one fuzzed image; panics only on a broken promise (see the module doc).
pub fn run(data: &[u8]) -> Outcome {
    let mut input = Input::new(data);
    let mode = input.u8() % 3;
    let protocol = match input.u8() % 3 {
        0 => BootProtocol::Auto,
        1 => BootProtocol::Linux,
        _ => BootProtocol::Pvh,
    };
    let ram = (2 + u64::from(input.u8() % 8)) * MIB;
    let (img, inner) = match mode {
        0 => (input.bytes(16 << 10).to_vec(), None),
        1 => (elf(&mut input), None),
        _ => bzimage(&mut input),
    };
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), ram as usize)]).expect("guest memory");
    let mut source = BootSource {
        kernel: memfd(&img),
        kernel_name: "fuzzed-kernel".into(),
        initrd: None,
        cmdline: "console=ttyS0".into(),
        protocol,
        rsdp: None,
        host_decompress: true,
    };
    match boot(&mem, ram, &mut source) {
        Ok(entry) => {
            let (rip, pvh) = match entry {
                EntryPoint::Pvh { rip, .. } => (rip, true),
                EntryPoint::Linux64 { rip, .. } => (rip, false),
            };
            assert!(rip < ram, "entry {rip:#x} outside {ram:#x} bytes of RAM");
            // A bzImage whose payload is an intact compressed ELF is unpacked on the
            // host: it enters through PVH or at the ELF's own entry.
            let unpacked = inner.as_deref();
            if let (Some(elf), false) = (unpacked, pvh) {
                let elf_entry = elf
                    .get(24..32)
                    .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
                assert_eq!(
                    Some(rip),
                    elf_entry,
                    "a compressed ELF booted through the bzImage's entry"
                );
            }
            let elf = if img.starts_with(b"\x7fELF") {
                Some(&img[..])
            } else {
                unpacked
            };
            if let Some(elf) = elf {
                for (off, filesz, paddr, memsz) in load_segments(elf) {
                    assert!(
                        off.saturating_add(filesz) <= elf.len() as u64,
                        "segment past the file loaded"
                    );
                    assert!(paddr >= MIB, "segment at {paddr:#x} loaded over the boot structures");
                    assert!(
                        paddr.saturating_add(memsz.max(filesz)) <= ram,
                        "segment past RAM loaded"
                    );
                }
            }
            Outcome {
                loaded: true,
                pvh,
                unpacked: unpacked.is_some(),
            }
        }
        Err(e) => {
            let m = e.to_string();
            assert!(
                !m.is_empty() && m.len() < 1024 && !m.contains('\n'),
                "bad message: {m:?}"
            );
            Outcome::default()
        }
    }
}
