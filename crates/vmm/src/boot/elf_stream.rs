//! Loading an ELF kernel from a stream, straight into guest memory: the
//! vmlinux a bzImage's payload decompresses to is never held whole on the
//! host (it was 52 MB for Debian's kernel).
//!
//! The stream is read once, in order. Its first [`READ_AHEAD`] bytes are
//! kept: the ELF header and program headers must lie in them (a vmlinux has
//! them at offset 64). They are checked as the ELF path checks a file
//! (`elf_check.rs`, then linux-loader's own checks), and then every chunk of
//! the stream is copied to the guest memory of each PT_LOAD segment whose
//! file bytes it holds (so segments in any order, gaps and overlaps are
//! handled without seeking back) and shown to a scanner per PT_NOTE segment
//! for the PVH entry note (`elf_note.rs`). The stream is read to its end
//! even past the last segment, so that a payload that does not decode or
//! passes the size cap still falls back as before, and a fault is reported
//! against the real length: the result is the one the whole-buffer path gave
//! (the same fallbacks, faults and linux-loader errors, in the same order),
//! with guest memory written as the stream goes. A payload that breaks
//! late falls back to the bzImage after part of the vmlinux was written to
//! guest memory, which the bzImage's own loader and decompressor overwrite
//! or ignore (RAM holds no promise for them).
//!
//! Differences from linux-loader's `Elf::load`: segments that overlap in guest
//! memory are written chunk by chunk in stream order rather than segment by
//! segment in table order, so the overlap may end up holding either's bytes
//! (both are inside RAM and above 1 MiB: checked). Like linux-loader, the
//! bytes between `p_filesz` and `p_memsz` are left as they are (fresh guest
//! memory is zero).

use std::io::BufRead;

use linux_loader::loader::elf::{Error as ElfError, PvhBootCapability};
use linux_loader::loader::{Error as LoaderError, KernelLoaderResult};
use vm_memory::{Bytes, GuestAddress};

use super::bzimage::Compression;
use super::decompress::{too_big, DecodeError};
use super::elf_check::{self, check_segments, parse_table, program_headers, ElfFault, ProgramHeader, PT_NOTE};
use super::elf_note::NoteScan;
use crate::arch::x86_64::layout::HIMEM_START;
use crate::memory::GuestMemoryMmap;

/// Bytes of the stream kept for the ELF header and program headers.
pub const READ_AHEAD: usize = 64 << 10;

const ELF_MAGIC: &[u8] = b"\x7fELF";
/// `EI_DATA` of a little-endian ELF.
const ELFDATA2LSB: u8 = 1;

/// What [`load`] did.
#[derive(Debug)]
pub enum Streamed {
    /// The kernel is in guest memory; the stream held `len` bytes.
    Loaded {
        /// Where it starts and ends, its PVH entry.
        result: KernelLoaderResult,
        /// Bytes the stream held.
        len: u64,
    },
    /// The payload did not decode, or passed the cap: boot the bzImage.
    Undecodable(DecodeError),
    /// It decoded to something other than an ELF file: boot the bzImage.
    NotElf,
    /// The ELF's headers are wrong (as `elf_check` reports for a file).
    Fault(ElfFault),
    /// linux-loader's checks refuse it (as `Elf::load` reports for a file).
    Load(LoaderError),
}

/// Loads the ELF image `stream` decodes to (format `c`, at most `cap` bytes)
/// into `mem`, a VM of `mem_size` bytes.
pub fn load(mem: &GuestMemoryMmap, mem_size: u64, mut stream: impl BufRead, c: Compression, cap: usize) -> Streamed {
    let undecodable = |e: std::io::Error| Streamed::Undecodable(DecodeError::Corrupt(c.name(), e.to_string()));
    let cap64 = cap as u64;
    // The read-ahead, within the cap.
    let mut head = Vec::with_capacity(READ_AHEAD);
    let mut ended = false;
    while head.len() < READ_AHEAD {
        let chunk = match stream.fill_buf() {
            Ok(chunk) => chunk,
            Err(e) => return undecodable(e),
        };
        if chunk.is_empty() {
            ended = true;
            break;
        }
        let n = chunk.len().min(READ_AHEAD - head.len());
        head.extend_from_slice(&chunk[..n]);
        stream.consume(n);
        if head.len() as u64 > cap64 {
            return Streamed::Undecodable(too_big(cap));
        }
    }
    // Checked against the length when it is known (the stream ended), else
    // against no length: what passes is loaded, and checked again at the end.
    let known = if ended { head.len() as u64 } else { u64::MAX };
    let mut loader = match verdict(&head, known, mem_size) {
        Ok(table) => Some(Loader::new(mem, &head, table)),
        Err(_) => None,
    };
    let mut len = head.len() as u64;
    if let Some(l) = loader.as_mut() {
        l.feed(0, &head);
    }
    while !ended {
        let chunk = match stream.fill_buf() {
            Ok(chunk) => chunk,
            Err(e) => return undecodable(e),
        };
        if chunk.is_empty() {
            ended = true;
            continue;
        }
        let n = chunk.len();
        if len + n as u64 > cap64 {
            return Streamed::Undecodable(too_big(cap));
        }
        if let Some(l) = loader.as_mut() {
            l.feed(len, chunk);
        }
        len += n as u64;
        stream.consume(n);
    }
    // The same answer as the whole-buffer path, now that the length is known.
    let table = match verdict(&head, len, mem_size) {
        Ok(table) => table,
        Err(refused) => return refused.into(),
    };
    match loader {
        Some(l) => l.finish(len),
        // Unreachable: what fails without a length fails with one.
        None => Streamed::Fault(ElfFault::TableTooFar(table.start as u64)),
    }
}

/// The ELF checks, in the order the whole-buffer path made them, for an
/// image whose first bytes are `head` and whose length is `len`: the byte
/// range of `head` that holds the program headers.
fn verdict(head: &[u8], len: u64, mem_size: u64) -> Result<std::ops::Range<usize>, Refused> {
    if !head.starts_with(ELF_MAGIC) {
        return Err(Refused::NotElf);
    }
    let at = program_headers(head, len).map_err(Refused::Fault)?;
    let range = usize::try_from(at.offset)
        .ok()
        .and_then(|start| Some(start..start.checked_add(at.len)?))
        .filter(|r| r.end <= head.len())
        .ok_or(Refused::Fault(ElfFault::TableTooFar(at.offset)))?;
    check_segments(&head[range.clone()], len, mem_size).map_err(Refused::Fault)?;
    // linux-loader's own checks (Elf::validate_header, then the entry).
    if head[5] != ELFDATA2LSB {
        return Err(Refused::Load(LoaderError::Elf(ElfError::BigEndianElfOnLittle)));
    }
    if elf_check::u64_at(head, 24) < HIMEM_START {
        return Err(Refused::Load(LoaderError::Elf(ElfError::InvalidEntryAddress)));
    }
    Ok(range)
}

/// Why [`verdict`] refuses an image (the [`Streamed`] variants it can be).
enum Refused {
    NotElf,
    Fault(ElfFault),
    Load(LoaderError),
}

impl From<Refused> for Streamed {
    fn from(r: Refused) -> Self {
        match r {
            Refused::NotElf => Streamed::NotElf,
            Refused::Fault(f) => Streamed::Fault(f),
            Refused::Load(e) => Streamed::Load(e),
        }
    }
}

/// Copies the stream into the segments' guest memory and scans the notes.
struct Loader<'m> {
    mem: &'m GuestMemoryMmap,
    /// The PT_LOAD segments with file bytes, in table order.
    loads: Vec<ProgramHeader>,
    /// A scanner per PT_NOTE segment, in table order.
    notes: Vec<NoteScan>,
    /// The ELF entry point.
    entry: u64,
    /// A write to guest memory failed.
    write_failed: bool,
}

impl<'m> Loader<'m> {
    fn new(mem: &'m GuestMemoryMmap, head: &[u8], table: std::ops::Range<usize>) -> Self {
        let headers: Vec<ProgramHeader> = parse_table(&head[table]).collect();
        Loader {
            mem,
            loads: headers.iter().copied().filter(ProgramHeader::loads).collect(),
            notes: headers
                .iter()
                .filter(|h| h.kind == PT_NOTE)
                .map(|h| NoteScan::new(h.offset, h.filesz))
                .collect(),
            entry: elf_check::u64_at(head, 24),
            write_failed: false,
        }
    }

    /// Takes the stream's bytes at offset `at`.
    fn feed(&mut self, at: u64, chunk: &[u8]) {
        let end = at + chunk.len() as u64;
        for seg in &self.loads {
            let from = seg.offset.max(at);
            let to = seg.offset.saturating_add(seg.filesz).min(end);
            if from >= to {
                continue;
            }
            let bytes = &chunk[(from - at) as usize..(to - at) as usize];
            let addr = GuestAddress(seg.paddr + (from - seg.offset));
            if self.mem.write_slice(bytes, addr).is_err() {
                self.write_failed = true;
            }
        }
        for note in &mut self.notes {
            note.feed(at, chunk);
        }
    }

    /// The result once the stream has ended at `len` bytes and the headers
    /// passed their checks against that length (so every segment was filled).
    fn finish(self, len: u64) -> Streamed {
        if self.write_failed {
            return Streamed::Load(LoaderError::Elf(ElfError::ReadKernelImage));
        }
        // linux-loader keeps the last note segment's answer; an error in any stops it.
        let mut pvh = PvhBootCapability::PvhEntryIgnored;
        for note in self.notes {
            match note.finish() {
                Ok(cap) => pvh = cap,
                Err(e) => return Streamed::Load(LoaderError::Elf(e)),
            }
        }
        let kernel_end = self
            .loads
            .iter()
            .map(|s| s.paddr.saturating_add(s.memsz))
            .max()
            .unwrap_or(0);
        Streamed::Loaded {
            result: KernelLoaderResult {
                kernel_load: GuestAddress(self.entry),
                kernel_end,
                setup_header: None,
                pvh_boot_cap: pvh,
            },
            len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::elf_check::{EHDR_LEN, PHDR_LEN, PT_LOAD};
    use std::io::{BufReader, Cursor, Read};

    const MIB: u64 = 1 << 20;
    const RAM: u64 = 16 * MIB;

    /// A program header: (type, file offset, load address, file size, memory size).
    type Ph = (u32, u64, u64, u64, u64);

    /// An ELF64 image of `len` bytes (byte i of the file is `i % 251`, so
    /// every segment's bytes are told apart) with these program headers.
    fn elf(entry: u64, phdrs: &[Ph], len: usize) -> Vec<u8> {
        let mut b: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        b[..EHDR_LEN].fill(0);
        b[..4].copy_from_slice(ELF_MAGIC);
        b[4] = 2;
        b[5] = 1;
        b[24..32].copy_from_slice(&entry.to_le_bytes());
        b[32..40].copy_from_slice(&(EHDR_LEN as u64).to_le_bytes());
        b[54..56].copy_from_slice(&(PHDR_LEN as u16).to_le_bytes());
        b[56..58].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
        for (i, &(kind, offset, paddr, filesz, memsz)) in phdrs.iter().enumerate() {
            let ph = &mut b[EHDR_LEN + i * PHDR_LEN..EHDR_LEN + (i + 1) * PHDR_LEN];
            ph.fill(0);
            ph[0..4].copy_from_slice(&kind.to_le_bytes());
            ph[8..16].copy_from_slice(&offset.to_le_bytes());
            ph[24..32].copy_from_slice(&paddr.to_le_bytes());
            ph[32..40].copy_from_slice(&filesz.to_le_bytes());
            ph[40..48].copy_from_slice(&memsz.to_le_bytes());
        }
        b
    }

    /// Writes a PVH entry note (entry `rip`) after a GNU note at `at`; its length.
    fn pvh_notes(b: &mut [u8], at: usize, rip: u32) -> u64 {
        let mut n = vec![4, 0, 0, 0, 4, 0, 0, 0, 3, 0, 0, 0];
        n.extend_from_slice(b"GNU\0\x01\x02\x03\x04");
        n.extend_from_slice(&[4, 0, 0, 0, 8, 0, 0, 0, 18, 0, 0, 0]);
        n.extend_from_slice(b"Xen\0");
        n.extend_from_slice(&u64::from(rip).to_le_bytes());
        b[at..at + n.len()].copy_from_slice(&n);
        n.len() as u64
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).expect("guest memory")
    }

    /// The stream, `chunk` bytes per read.
    fn streamed(img: &[u8], chunk: usize, cap: usize) -> (Streamed, GuestMemoryMmap) {
        let m = mem();
        let s = load(&m, RAM, BufReader::with_capacity(chunk, img), Compression::Gzip, cap);
        (s, m)
    }

    /// What the whole-buffer path (elf_check, then linux-loader) makes of it.
    fn whole(img: &[u8]) -> (Result<KernelLoaderResult, String>, GuestMemoryMmap) {
        let m = mem();
        let mut file = Cursor::new(img.to_vec());
        let result = match elf_check::check_headers(&mut file, img.len() as u64, RAM) {
            Err(f) => Err(f.to_string()),
            Ok(()) => {
                crate::boot::image::load(&m, &mut file, crate::boot::KernelFormat::Elf).map_err(|e| e.to_string())
            }
        };
        (result, m)
    }

    fn message(s: &Streamed) -> String {
        match s {
            Streamed::Fault(f) => f.to_string(),
            Streamed::Load(e) => e.to_string(),
            other => format!("{other:?}"),
        }
    }

    fn guest(m: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        m.read_slice(&mut v, GuestAddress(addr)).expect("read guest memory");
        v
    }

    #[test]
    fn segments_in_any_file_order_with_gaps_and_a_late_note_load_as_linux_loader_loads_them() {
        // Table order is not file order; gaps between segments; bss past filesz;
        // the note segment last in the file, after every load.
        let phdrs = [
            (PT_LOAD, 0x9000, 3 * MIB, 0x2345, 0x8000),
            (PT_LOAD, 0x1000, MIB, 0x3000, 0x3000),
            (6, 0x40, 0, 0x100, 0x100),
            (PT_LOAD, 0x5000, 2 * MIB, 0x1800, 0x1800),
            (PT_NOTE, 0xc000, 0, 0x40, 0x40),
            (PT_LOAD, 0x6000, 5 * MIB, 0, 0x1000),
        ];
        let mut img = elf(MIB, &phdrs, 0xd000);
        let note_len = pvh_notes(&mut img, 0xc000, 0x0100_0850);
        assert!(note_len <= 0x40);
        let (want, want_mem) = whole(&img);
        let want = want.expect("the whole-buffer path loads it");
        assert_eq!(
            want.pvh_boot_cap,
            PvhBootCapability::PvhEntryPresent(GuestAddress(0x0100_0850))
        );
        for chunk in [1, 7, 4096, 1 << 20] {
            let (s, m) = streamed(&img, chunk, 1 << 20);
            match s {
                Streamed::Loaded { result, len } => {
                    assert_eq!(result, want, "chunks of {chunk}");
                    assert_eq!(len, img.len() as u64);
                }
                other => panic!("chunks of {chunk}: {other:?}"),
            }
            for &(kind, offset, paddr, filesz, memsz) in &phdrs {
                if kind == PT_LOAD {
                    let at = offset as usize;
                    assert_eq!(guest(&m, paddr, filesz as usize), img[at..at + filesz as usize]);
                    assert_eq!(
                        guest(&m, paddr, memsz as usize),
                        guest(&want_mem, paddr, memsz as usize)
                    );
                }
            }
            // The bytes between segments went nowhere.
            assert!(guest(&m, MIB + 0x3000, 0x1000).iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn a_truncated_stream_is_the_fault_the_file_path_reports() {
        let phdrs = [
            (PT_LOAD, 0x1000, MIB, 0x1000, 0x1000),
            (PT_LOAD, 0x2000, 2 * MIB, 0x4000, 0x4000),
        ];
        let img = elf(MIB, &phdrs, 0x3000);
        let (want, _) = whole(&img);
        let want = want.expect_err("truncated");
        assert!(want.contains("truncated") && want.contains("segment 1"), "{want}");
        for chunk in [5, 4096] {
            assert_eq!(message(&streamed(&img, chunk, 1 << 20).0), want);
        }
        // Shorter than the read-ahead, and ending inside the note segment.
        let mut img = elf(MIB, &[(PT_NOTE, 0x100, 0, 0x40, 0x40)], 0x110);
        img[0x100..0x10c].copy_from_slice(&[4, 0, 0, 0, 4, 0, 0, 0, 1, 0, 0, 0]);
        let want = whole(&img).0.expect_err("note cut");
        assert!(want.contains("note header"), "{want}");
        assert_eq!(message(&streamed(&img, 3, 1 << 20).0), want);
    }

    #[test]
    fn a_segment_past_ram_or_below_1_mib_is_refused_before_anything_is_written() {
        let past = elf(MIB, &[(PT_LOAD, 0x1000, RAM - 0x800, 0x1000, 0x1000)], 0x2000);
        let low = elf(MIB, &[(PT_LOAD, 0x1000, 0x8000, 0x1000, 0x1000)], 0x2000);
        for img in [past, low] {
            let want = whole(&img).0.expect_err("refused");
            let (s, m) = streamed(&img, 512, 1 << 20);
            assert!(matches!(s, Streamed::Fault(_)), "{s:?}");
            assert_eq!(message(&s), want);
            assert!(guest(&m, RAM - 0x800, 0x800).iter().all(|&b| b == 0));
            assert!(guest(&m, 0x8000, 0x1000).iter().all(|&b| b == 0));
        }
        // A fault late in a long stream is still reported against its real length:
        // segment 0 truncated comes before segment 1 past RAM.
        let img = elf(
            MIB,
            &[
                (PT_LOAD, 0x1000, MIB, 0x20_0000, 0x20_0000),
                (PT_LOAD, 0x1000, RAM, 0x1000, 0x1000),
            ],
            0x10_0000,
        );
        assert_eq!(
            message(&streamed(&img, 4096, 16 << 20).0),
            whole(&img).0.expect_err("truncated")
        );
    }

    #[test]
    fn linux_loader_checks_and_note_errors_come_out_as_they_did() {
        let low_entry = elf(0x1000, &[(PT_LOAD, 0x1000, MIB, 0x100, 0x100)], 0x2000);
        let mut no_endian = elf(MIB, &[(PT_LOAD, 0x1000, MIB, 0x100, 0x100)], 0x2000);
        no_endian[5] = 0;
        let mut short_desc = elf(MIB, &[(PT_NOTE, 0x1000, 0, 0x40, 0x40)], 0x2000);
        short_desc[0x1000..0x1010].copy_from_slice(&[4, 0, 0, 0, 2, 0, 0, 0, 18, 0, 0, 0, b'X', b'e', b'n', 0]);
        for img in [low_entry, no_endian, short_desc] {
            let want = whole(&img).0.expect_err("refused");
            let s = streamed(&img, 100, 1 << 20).0;
            assert!(matches!(s, Streamed::Load(_)), "{s:?}");
            assert_eq!(message(&s), want);
        }
    }

    /// Yields `good` bytes of `img`, then a decoding error.
    struct Failing<'a> {
        img: &'a [u8],
        good: usize,
    }

    impl Read for Failing<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.good == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "corrupt deflate stream",
                ));
            }
            let n = buf.len().min(self.good).min(self.img.len());
            buf[..n].copy_from_slice(&self.img[..n]);
            self.img = &self.img[n..];
            self.good -= n;
            Ok(n)
        }
    }

    #[test]
    fn a_stream_that_breaks_or_passes_the_cap_or_is_not_an_elf_falls_back() {
        let img = elf(MIB, &[(PT_LOAD, 0x1000, MIB, 0x30000, 0x30000)], 0x40000);
        let m = mem();
        for good in [10, 0x2_0000] {
            let s = load(
                &m,
                RAM,
                BufReader::new(Failing { img: &img, good }),
                Compression::Gzip,
                1 << 20,
            );
            assert!(
                matches!(&s, Streamed::Undecodable(DecodeError::Corrupt("gzip", e)) if e.contains("corrupt deflate")),
                "{s:?}"
            );
        }
        let s = streamed(&img, 4096, img.len() - 1).0;
        assert!(matches!(s, Streamed::Undecodable(DecodeError::TooBig(1))), "{s:?}");
        assert!(matches!(streamed(&img, 4096, img.len()).0, Streamed::Loaded { .. }));
        assert!(matches!(streamed(b"#!/bin/sh", 4, 1 << 20).0, Streamed::NotElf));
        // Not an ELF file, and broken later: the decoding error wins, as before.
        let s = load(
            &m,
            RAM,
            BufReader::new(Failing {
                img: &[7u8; 0x2_0000],
                good: 0x1_8000,
            }),
            Compression::Gzip,
            1 << 20,
        );
        assert!(matches!(s, Streamed::Undecodable(_)), "{s:?}");
    }

    #[test]
    fn program_headers_past_the_read_ahead_are_refused_with_their_own_message() {
        let mut img = elf(MIB, &[], 0x2_0000);
        let far = READ_AHEAD as u64 + 0x100;
        img[32..40].copy_from_slice(&far.to_le_bytes());
        img[56..58].copy_from_slice(&1u16.to_le_bytes());
        let s = streamed(&img, 4096, 1 << 20).0;
        assert!(
            matches!(s, Streamed::Fault(ElfFault::TableTooFar(at)) if at == far),
            "{s:?}"
        );
        assert!(message(&s).contains("--no-host-decompress"));
        // Past the end of a short file: the file path's message.
        img.truncate(READ_AHEAD + 0x120);
        assert_eq!(
            message(&streamed(&img, 4096, 1 << 20).0),
            whole(&img).0.expect_err("outside")
        );
    }
}
