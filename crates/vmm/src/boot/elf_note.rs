//! The PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY) found in a PT_NOTE segment
//! as its bytes stream past, for the streaming ELF loader (`elf_stream.rs`).
//!
//! It reads exactly what linux-loader's `parse_elf_note` reads, in the same
//! order, and reaches the same result and errors: note headers from the
//! segment's start, the name "Xen\0" of a type-18 note with a 4-byte name,
//! then its first 4 descriptor bytes. Every read lies at or after the
//! previous one, so the scanner needs no seek back and holds at most one
//! 12-byte note header.

use linux_loader::loader::elf::{Error, PvhBootCapability};
use vm_memory::GuestAddress;

/// XEN_ELFNOTE_PHYS32_ENTRY.
const PHYS32_ENTRY: u32 = 18;
/// Bytes of a note header (namesz, descsz, type).
const NHDR_LEN: usize = 12;
/// The PVH note's name, NUL included.
const XEN: [u8; 4] = *b"Xen\0";

/// What the scanner reads next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// A note header at `read_size` into the segment.
    Header,
    /// The name of the note whose header was just read.
    Name {
        /// Its `n_namesz` (4 here).
        namesz: u32,
        /// Its `n_descsz`.
        descsz: u32,
    },
    /// The entry address (the descriptor's first 4 bytes).
    Entry,
}

/// Scans one PT_NOTE segment for the PVH entry note.
#[derive(Debug)]
pub struct NoteScan {
    /// The segment's file offset.
    start: u64,
    /// Its `p_filesz`.
    filesz: u64,
    /// Bytes of notes skipped so far (linux-loader's `read_size`).
    read_size: u64,
    /// File offset of the next read.
    at: u64,
    /// What that read is for; `None` once done.
    step: Option<Step>,
    /// Bytes of the next read gathered so far.
    partial: Vec<u8>,
    /// The answer, once there is one.
    done: Option<Result<PvhBootCapability, Error>>,
}

impl NoteScan {
    /// A scanner for the segment at file offset `start`, `filesz` bytes long.
    pub fn new(start: u64, filesz: u64) -> Self {
        let mut scan = NoteScan {
            start,
            filesz,
            read_size: 0,
            at: start,
            step: Some(Step::Header),
            partial: Vec::with_capacity(NHDR_LEN),
            done: None,
        };
        if filesz == 0 {
            scan.finish_with(Ok(PvhBootCapability::PvhEntryNotPresent));
        }
        scan
    }

    fn finish_with(&mut self, result: Result<PvhBootCapability, Error>) {
        self.step = None;
        self.done = Some(result);
    }

    fn want(&self) -> Option<usize> {
        self.step.map(|s| match s {
            Step::Header => NHDR_LEN,
            Step::Name { .. } | Step::Entry => 4,
        })
    }

    /// Takes the stream's bytes at file offset `at` (the stream is fed in
    /// order from offset 0, every byte once).
    pub fn feed(&mut self, at: u64, chunk: &[u8]) {
        let end = at.saturating_add(chunk.len() as u64);
        while let Some(n) = self.want() {
            let from = self.at.saturating_add(self.partial.len() as u64);
            if from < at {
                // Bytes that went past before this scanner saw them: cannot happen
                // when fed in order; read as linux-loader's failed read would be.
                self.finish_with(Err(Error::ReadNoteHeader));
                return;
            }
            if from >= end {
                return;
            }
            let i = (from - at) as usize;
            let take = (n - self.partial.len()).min(chunk.len() - i);
            self.partial.extend_from_slice(&chunk[i..i + take]);
            if self.partial.len() == n {
                let bytes = std::mem::take(&mut self.partial);
                self.step_with(&bytes);
                self.partial = bytes;
                self.partial.clear();
            }
        }
    }

    fn step_with(&mut self, b: &[u8]) {
        let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        match self.step {
            Some(Step::Header) => {
                let (namesz, descsz, kind) = (u32_at(0), u32_at(4), u32_at(8));
                if kind == PHYS32_ENTRY && namesz as usize == XEN.len() {
                    self.at += NHDR_LEN as u64;
                    self.step = Some(Step::Name { namesz, descsz });
                } else {
                    self.skip(namesz, descsz);
                }
            }
            Some(Step::Name { namesz, descsz }) => {
                if b == XEN {
                    // linux-loader skips the name's padding (none for a 4-byte name),
                    // then refuses a descriptor too short for a 32-bit address.
                    if (descsz as usize) < 4 {
                        self.finish_with(Err(Error::InvalidPvhNote));
                    } else {
                        self.at += 4 + (u64::from(namesz).next_multiple_of(4) - 4);
                        self.step = Some(Step::Entry);
                    }
                } else {
                    self.skip(namesz, descsz);
                }
            }
            Some(Step::Entry) => {
                let addr = GuestAddress(u64::from(u32_at(0)));
                self.finish_with(Ok(PvhBootCapability::PvhEntryPresent(addr)));
            }
            None => {}
        }
    }

    /// Past the note whose header was read: to the next one, or done.
    fn skip(&mut self, namesz: u32, descsz: u32) {
        let (name, desc) = (
            u64::from(namesz).next_multiple_of(4),
            u64::from(descsz).next_multiple_of(4),
        );
        if name > u64::from(u32::MAX) || desc > u64::from(u32::MAX) {
            self.finish_with(Err(Error::Overflow));
            return;
        }
        self.read_size += NHDR_LEN as u64 + name + desc;
        if self.read_size >= self.filesz {
            self.finish_with(Ok(PvhBootCapability::PvhEntryNotPresent));
            return;
        }
        match self.start.checked_add(self.read_size) {
            Some(at) => {
                self.at = at;
                self.step = Some(Step::Header);
            }
            None => self.finish_with(Err(Error::ReadNoteHeader)),
        }
    }

    /// The answer once the stream has ended: a read the stream did not reach
    /// fails as linux-loader's read past the end of the file does.
    pub fn finish(self) -> Result<PvhBootCapability, Error> {
        self.done.unwrap_or(Err(Error::ReadNoteHeader))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(kind: u32, name: &[u8], desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend_from_slice(&(name.len() as u32).to_le_bytes());
        n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        n.extend_from_slice(&kind.to_le_bytes());
        n.extend_from_slice(name);
        n.resize(n.len().next_multiple_of(4), 0);
        n.extend_from_slice(desc);
        n.resize(n.len().next_multiple_of(4), 0);
        n
    }

    /// Scans `notes` placed at file offset 100 of a stream fed `step` bytes at a time.
    fn scan(notes: &[u8], filesz: u64, step: usize) -> Result<PvhBootCapability, Error> {
        let mut file = vec![0xeeu8; 100];
        file.extend_from_slice(notes);
        let mut s = NoteScan::new(100, filesz);
        for (i, chunk) in file.chunks(step).enumerate() {
            s.feed((i * step) as u64, chunk);
        }
        s.finish()
    }

    #[test]
    fn the_pvh_entry_is_found_after_other_notes_whatever_the_chunks() {
        let mut notes = note(1, b"GNU\0", &[1; 20]);
        notes.extend(note(PHYS32_ENTRY, b"Linux\0", &[2; 8]));
        notes.extend(note(PHYS32_ENTRY, b"Xen\0", &0x0100_0850u64.to_le_bytes()));
        for step in [1, 3, 12, 4096] {
            assert_eq!(
                scan(&notes, notes.len() as u64, step),
                Ok(PvhBootCapability::PvhEntryPresent(GuestAddress(0x0100_0850))),
                "chunks of {step}"
            );
        }
    }

    #[test]
    fn absent_short_and_cut_notes_read_as_linux_loader_reads_them() {
        let other = note(1, b"GNU\0", &[1; 4]);
        assert_eq!(
            scan(&other, other.len() as u64, 7),
            Ok(PvhBootCapability::PvhEntryNotPresent)
        );
        assert_eq!(scan(&[], 0, 7), Ok(PvhBootCapability::PvhEntryNotPresent));
        let short = note(PHYS32_ENTRY, b"Xen\0", &[1, 2]);
        assert_eq!(scan(&short, short.len() as u64, 5), Err(Error::InvalidPvhNote));
        // The segment says more notes follow, the stream ends.
        assert_eq!(scan(&other, 4096, 5), Err(Error::ReadNoteHeader));
        let pvh = note(PHYS32_ENTRY, b"Xen\0", &[1, 2, 3, 4]);
        assert_eq!(scan(&pvh[..18], 4096, 5), Err(Error::ReadNoteHeader));
        // A name size that overflows once aligned.
        let mut huge = note(1, b"", &[]);
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(scan(&huge, 4096, 5), Err(Error::Overflow));
    }
}
