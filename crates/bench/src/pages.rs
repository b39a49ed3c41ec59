//! The page-size policy of the host runner's memtest buffer: the same as guest RAM's,
//! so a guest/host memtest ratio compares like with like.
//!
//! kvmkit's guest RAM (`kvmkit_vmm::memory::create_guest_memory`) is a fresh anonymous
//! mapping advised `MADV_HUGEPAGE` (transparent huge pages where the host's THP mode
//! allows them), and the guest's memtest is the first to touch its region, inside its
//! timed run; QEMU advises its guest RAM the same way. [`HugePageBuffer`] gives the host
//! runner the same: a fresh, 2 MiB-aligned anonymous mapping advised `MADV_HUGEPAGE`,
//! not touched before the workload runs. (A `Vec` cannot be advised: glibc's large
//! allocations start 16 bytes into their mapping, and `madvise` refuses an unaligned
//! address with EINVAL, so the old buffer silently stayed in 4 KiB pages.)

use std::ptr::NonNull;

use anyhow::bail;
use serde::Serialize;

use crate::environment::Env;

/// A transparent huge page (x86-64 PMD size).
pub const HUGE_PAGE: usize = 2 << 20;

/// The file that holds the host's THP mode.
const THP_ENABLED: &str = "/sys/kernel/mm/transparent_hugepage/enabled";

/// The host's transparent huge page mode (`always`, `madvise` or `never`), None where
/// the kernel has no THP.
pub fn thp_mode() -> Option<String> {
    parse_thp_mode(&std::fs::read_to_string(THP_ENABLED).ok()?)
}

/// The bracketed word of `always [madvise] never`.
fn parse_thp_mode(text: &str) -> Option<String> {
    let start = text.find('[')? + 1;
    let len = text[start..].find(']')?;
    Some(text[start..start + len].to_owned())
}

/// The page-size policy of environment `e`'s memory (`linux`: `--guest linux`), for
/// `results.json` and the report; `thp` is the host's THP mode.
pub(crate) fn env_policy(e: Env, linux: bool, thp: Option<&str>) -> String {
    let thp = match thp {
        Some(mode) => format!("host THP mode {mode}"),
        None => "no THP in the host kernel".to_owned(),
    };
    match (e, linux) {
        (Env::Host, false) => format!(
            "memtest buffer: a fresh anonymous mapping, 2 MiB-aligned, MADV_HUGEPAGE, first touched by \
             the timed run (as guest RAM is); {thp}"
        ),
        (Env::Kvmkit, false) => format!(
            "guest RAM: an anonymous mapping, MADV_HUGEPAGE above its first 8 MiB (kvmkit_vmm::memory), \
             first touched by the guest; the test guest maps it with 2 MiB pages; its memtest region \
             starts at 4 MiB, so up to 4 MiB of it (all of a 4 MiB memtest) lie in host small pages; {thp}"
        ),
        (Env::Qemu, false) => format!(
            "guest RAM: QEMU's anonymous RAM block, which QEMU advises MADV_HUGEPAGE; the test guest maps \
             it with 2 MiB pages; {thp}"
        ),
        (Env::Host, true) => format!("memtester's own malloc in the chroot (not advised); {thp}"),
        (Env::Kvmkit, true) => format!(
            "guest RAM as for kvmkit's test guest (MADV_HUGEPAGE above 8 MiB); inside it, the guest \
             kernel's own THP policy for memtester; {thp}"
        ),
        (Env::Qemu, true) => format!(
            "guest RAM advised MADV_HUGEPAGE by QEMU; inside it, the guest kernel's own THP policy for \
             memtester; {thp}"
        ),
    }
}

/// What one buffer got, for `results.json` and `kvmkit host`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PageReport {
    /// `MADV_HUGEPAGE`, or `none (MADV_HUGEPAGE refused: ERROR)`.
    pub advice: String,
    /// The host's THP mode at the time (None: no THP in this kernel).
    pub thp_mode: Option<String>,
    /// KiB of the buffer's mapping.
    pub kib: u64,
    /// KiB of it backed by huge pages after the run (`AnonHugePages` in
    /// /proc/self/smaps); None where smaps could not be read.
    pub huge_kib: Option<u64>,
}

impl PageReport {
    /// One word for an output line: `MADV_HUGEPAGE,thp=madvise,huge=100%`.
    pub fn summary(&self) -> String {
        let advice = if self.advice == "MADV_HUGEPAGE" {
            "MADV_HUGEPAGE"
        } else {
            "none"
        };
        let huge = match self.huge_kib {
            Some(h) if self.kib > 0 => format!("{:.0}%", h as f64 * 100.0 / self.kib as f64),
            _ => "?".to_owned(),
        };
        format!(
            "{advice},thp={},huge={huge}",
            self.thp_mode.as_deref().unwrap_or("absent")
        )
    }
}

/// Zeroed anonymous memory for `words` u64s, paged like guest RAM (see the module doc);
/// unmapped on drop.
pub struct HugePageBuffer {
    start: NonNull<u64>,
    /// Mapping length: `words * 8` rounded up to [`HUGE_PAGE`] (one at least).
    len: usize,
    words: usize,
    advice: Result<(), String>,
}

impl HugePageBuffer {
    /// Maps and advises the buffer; touches none of it.
    pub fn new(words: usize) -> anyhow::Result<Self> {
        let Some(len) = words
            .checked_mul(8)
            .and_then(|b| b.checked_next_multiple_of(HUGE_PAGE))
            .map(|l| l.max(HUGE_PAGE))
        else {
            bail!("a memtest buffer of {words} words cannot be mapped");
        };
        let Some(padded) = len.checked_add(HUGE_PAGE) else {
            bail!("a memtest buffer of {words} words cannot be mapped");
        };
        // SAFETY: a new private anonymous mapping; no existing memory is affected.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                padded,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            bail!(
                "cannot map {} MiB for memtest: {}",
                len >> 20,
                std::io::Error::last_os_error()
            );
        }
        let head = base.cast::<u8>().align_offset(HUGE_PAGE);
        let tail = HUGE_PAGE - head;
        // SAFETY: both ranges are the unused ends of the mapping just made (page-aligned:
        // mmap returns a page-aligned base and HUGE_PAGE is a multiple of the page size);
        // a failed munmap only leaves them mapped.
        unsafe {
            if head > 0 {
                libc::munmap(base, head);
            }
            libc::munmap(base.cast::<u8>().add(head + len).cast(), tail);
        }
        // SAFETY: inside the mapping made above.
        let start = unsafe { base.cast::<u8>().add(head) };
        // SAFETY: [start, start + len) is this buffer's own mapping; madvise only sets its
        // paging policy.
        let advice = if unsafe { libc::madvise(start.cast(), len, libc::MADV_HUGEPAGE) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error().to_string())
        };
        let Some(start) = NonNull::new(start.cast::<u64>()) else {
            bail!("mmap returned a null mapping");
        };
        Ok(Self {
            start,
            len,
            words,
            advice,
        })
    }

    /// The words (zero until written: fresh anonymous memory).
    pub fn as_mut_slice(&mut self) -> &mut [u64] {
        // SAFETY: the mapping holds at least `words` u64s, readable and writable, zero-filled
        // by the kernel (a valid u64 each), 2 MiB-aligned, and borrowed mutably through self.
        unsafe { std::slice::from_raw_parts_mut(self.start.as_ptr(), self.words) }
    }

    /// The policy this buffer got, with how much of it is in huge pages now.
    pub fn report(&self) -> PageReport {
        let begin = self.start.as_ptr() as u64;
        PageReport {
            advice: match &self.advice {
                Ok(()) => "MADV_HUGEPAGE".to_owned(),
                Err(e) => format!("none (MADV_HUGEPAGE refused: {e})"),
            },
            thp_mode: thp_mode(),
            kib: (self.len >> 10) as u64,
            huge_kib: std::fs::read_to_string("/proc/self/smaps")
                .ok()
                .map(|s| anon_huge_kib(&s, begin, begin + self.len as u64)),
        }
    }
}

impl Drop for HugePageBuffer {
    fn drop(&mut self) {
        // SAFETY: the mapping this buffer made and nothing else refers to (the slices it
        // lent borrowed self).
        unsafe { libc::munmap(self.start.as_ptr().cast(), self.len) };
    }
}

/// `AnonHugePages` (KiB) of the smaps entries that lie inside [begin, end).
fn anon_huge_kib(smaps: &str, begin: u64, end: u64) -> u64 {
    let mut inside = false;
    let mut kib = 0;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                inside = a >= begin && b <= end;
                continue;
            }
        }
        if inside && first == "AnonHugePages:" {
            kib += words.next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    kib
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thp_mode_is_the_bracketed_word() {
        assert_eq!(parse_thp_mode("always [madvise] never\n").as_deref(), Some("madvise"));
        assert_eq!(parse_thp_mode("[always] madvise never").as_deref(), Some("always"));
        assert_eq!(parse_thp_mode("always madvise never"), None);
    }

    #[test]
    fn every_environment_names_its_policy() {
        for linux in [false, true] {
            for e in Env::ALL {
                let p = env_policy(e, linux, Some("madvise"));
                assert!(p.ends_with("host THP mode madvise"), "{p}");
            }
        }
        assert!(env_policy(Env::Host, false, None).contains("MADV_HUGEPAGE"));
        assert!(env_policy(Env::Host, false, None).ends_with("no THP in the host kernel"));
    }

    #[test]
    fn smaps_counts_only_the_buffer() {
        let smaps = "\
55d0a0000000-55d0a0200000 rw-p 00000000 00:00 0 \n\
AnonHugePages:      2048 kB\n\
7f0000000000-7f0000400000 rw-p 00000000 00:00 0 \n\
Size:               4096 kB\n\
AnonHugePages:      4096 kB\n\
VmFlags: rd wr mr mw me ac hg\n\
7f0000400000-7f0000600000 rw-p 00000000 00:00 0 \n\
AnonHugePages:      2048 kB\n\
7f0000600000-7f0000800000 rw-p 00000000 00:00 0 \n\
AnonHugePages:      2048 kB\n";
        assert_eq!(anon_huge_kib(smaps, 0x7f00_0000_0000, 0x7f00_0060_0000), 6144);
        assert_eq!(anon_huge_kib(smaps, 0x7f00_0000_0000, 0x7f00_0040_0000), 4096);
        assert_eq!(anon_huge_kib(smaps, 0x1000, 0x2000), 0);
    }

    #[test]
    fn buffer_is_aligned_zeroed_and_advised() {
        let words = (3 << 20) / 8 + 5;
        let mut b = HugePageBuffer::new(words).expect("map");
        let s = b.as_mut_slice();
        assert_eq!(s.len(), words);
        assert_eq!(
            s.as_ptr() as usize % HUGE_PAGE,
            0,
            "2 MiB-aligned, so it can be advised"
        );
        assert!(s.iter().all(|&w| w == 0));
        s.fill(0x5a5a_5a5a_5a5a_5a5a);
        let r = b.report();
        assert_eq!(r.kib, 4096, "rounded up to whole huge pages");
        assert!(r.huge_kib.is_none_or(|h| h <= r.kib));
        // Where the kernel has THP, the aligned mapping takes the advice.
        if r.thp_mode.is_some() {
            assert_eq!(r.advice, "MADV_HUGEPAGE", "{r:?}");
        }
        assert!(
            r.summary().starts_with("MADV_HUGEPAGE,thp=") || r.thp_mode.is_none(),
            "{r:?}"
        );
        assert!(HugePageBuffer::new(usize::MAX / 4).is_err());
        assert!(HugePageBuffer::new(0).expect("map").as_mut_slice().is_empty());
    }
}
