//! memtester-style memory pattern tests.
//!
//! Like memtester, the buffer is split into two halves that are written with
//! the same data and then compared against each other, so a bit that does not
//! hold its value shows up as a mismatch. Every access is volatile so the
//! compiler cannot elide or merge the memory traffic.

use core::ptr;

/// Number of tests one [`memtest`] call runs on a buffer of two words or more.
pub const MEMTEST_TESTS: u32 = 11;

/// Outcome of [`memtest`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemtestReport {
    /// How many tests ran (see [`MEMTEST_TESTS`]).
    pub tests_run: u32,
    /// Words that did not hold the value written (summed over all tests).
    pub errors: u64,
}

impl MemtestReport {
    fn add(&mut self, errors: u64) {
        self.tests_run += 1;
        self.errors += errors;
    }
}

/// A small xorshift64 generator for the random-value tests.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(if seed == 0 { 0x9e37_79b9_7f4a_7c15 } else { seed })
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

#[inline(always)]
fn load(word: &u64) -> u64 {
    // SAFETY: a shared reference is valid and aligned for a read.
    unsafe { ptr::read_volatile(word) }
}

#[inline(always)]
fn store(word: &mut u64, value: u64) {
    // SAFETY: a unique reference is valid and aligned for a write.
    unsafe { ptr::write_volatile(word, value) }
}

/// Counts the words where `a` and `b` differ (over the shorter length).
pub fn compare_regions(a: &[u64], b: &[u64]) -> u64 {
    a.iter().zip(b).filter(|(x, y)| load(x) != load(y)).count() as u64
}

/// Writes `pattern(i)` to word `i` of both halves, then compares them.
fn fill_and_compare(a: &mut [u64], b: &mut [u64], pattern: impl Fn(usize) -> u64) -> u64 {
    for (i, (x, y)) in a.iter_mut().zip(b.iter_mut()).enumerate() {
        let v = pattern(i);
        store(x, v);
        store(y, v);
    }
    compare_regions(a, b)
}

/// Each word holds its own address (or its complement), 16 times over.
fn stuck_address(buf: &mut [u64]) -> u64 {
    let mut errors = 0;
    for j in 0..16usize {
        let expect = |i: usize, w: &u64| {
            let addr = w as *const u64 as u64;
            if (i + j) & 1 == 0 {
                addr
            } else {
                !addr
            }
        };
        for (i, w) in buf.iter_mut().enumerate() {
            let v = expect(i, w);
            store(w, v);
        }
        errors += buf.iter().enumerate().filter(|&(i, w)| load(w) != expect(i, w)).count() as u64;
    }
    errors
}

/// Both halves get the same pseudo-random words.
fn random_value(a: &mut [u64], b: &mut [u64], rng: &mut XorShift) -> u64 {
    for (x, y) in a.iter_mut().zip(b.iter_mut()) {
        let v = rng.next();
        store(x, v);
        store(y, v);
    }
    compare_regions(a, b)
}

/// Applies `op(word, q)` to every word of both halves, then compares.
fn compare_op(a: &mut [u64], b: &mut [u64], q: u64, op: impl Fn(u64, u64) -> u64) -> u64 {
    for (x, y) in a.iter_mut().zip(b.iter_mut()) {
        let vx = op(load(x), q);
        store(x, vx);
        let vy = op(load(y), q);
        store(y, vy);
    }
    compare_regions(a, b)
}

/// Alternating words of `q` and `!q`, 64 passes alternating `q` = all ones / zeros.
fn alternating(a: &mut [u64], b: &mut [u64], even: u64, odd: u64) -> u64 {
    let mut errors = 0;
    for j in 0..64 {
        let q = if j & 1 == 0 { even } else { odd };
        errors += fill_and_compare(a, b, |i| if i & 1 == 0 { q } else { !q });
    }
    errors
}

/// A single one bit walking up then down (`invert`: a single zero bit).
fn walking(a: &mut [u64], b: &mut [u64], invert: bool) -> u64 {
    let mut errors = 0;
    for j in 0..128u32 {
        let bit = if j < 64 { 1u64 << j } else { 1u64 << (127 - j) };
        let q = if invert { !bit } else { bit };
        errors += fill_and_compare(a, b, |_| q);
    }
    errors
}

/// Runs memtester's pattern tests over `buf`: stuck address, random value,
/// compare XOR/SUB/MUL/AND/OR, solid bits, checkerboard, walking ones and
/// walking zeros. `seed` drives the random-value tests. A buffer of fewer
/// than two words runs nothing.
pub fn memtest(buf: &mut [u64], seed: u64) -> MemtestReport {
    let mut report = MemtestReport::default();
    let half = buf.len() / 2;
    if half == 0 {
        return report;
    }
    let buf = &mut buf[..2 * half];
    let mut rng = XorShift::new(seed);
    report.add(stuck_address(buf));
    let (a, b) = buf.split_at_mut(half);
    report.add(random_value(a, b, &mut rng));
    report.add(compare_op(a, b, rng.next(), |x, q| x ^ q));
    report.add(compare_op(a, b, rng.next(), u64::wrapping_sub));
    report.add(compare_op(a, b, rng.next(), u64::wrapping_mul));
    report.add(compare_op(a, b, rng.next(), |x, q| x & q));
    report.add(compare_op(a, b, rng.next(), |x, q| x | q));
    report.add(alternating(a, b, !0, 0));
    report.add(alternating(a, b, 0x5555_5555_5555_5555, 0xaaaa_aaaa_aaaa_aaaa));
    report.add(walking(a, b, false));
    report.add(walking(a, b, true));
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_memory_has_no_errors() {
        let mut buf = vec![0u64; 1024];
        let r = memtest(&mut buf, 42);
        assert_eq!(
            r,
            MemtestReport {
                tests_run: MEMTEST_TESTS,
                errors: 0
            }
        );
        // The last test (walking zeros) ends with bit 0 cleared everywhere.
        assert!(buf.iter().all(|&w| w == !1));
    }

    #[test]
    fn odd_lengths_ignore_the_last_word() {
        let mut buf = vec![7u64; 5];
        assert_eq!(memtest(&mut buf, 1).errors, 0);
        assert_eq!(buf[4], 7);
    }

    #[test]
    fn tiny_buffers_run_nothing() {
        assert_eq!(memtest(&mut [], 1), MemtestReport::default());
        assert_eq!(memtest(&mut [0], 1), MemtestReport::default());
    }

    #[test]
    fn mismatches_are_counted() {
        let a = [1u64, 2, 3, 4];
        let b = [1u64, 0, 3, 5];
        assert_eq!(compare_regions(&a, &b), 2);
        assert_eq!(compare_regions(&a, &a), 0);
    }

    #[test]
    fn xorshift_is_deterministic_and_nonzero() {
        let mut r1 = XorShift::new(0);
        let mut r2 = XorShift::new(0);
        for _ in 0..100 {
            let v = r1.next();
            assert_ne!(v, 0);
            assert_eq!(v, r2.next());
        }
    }
}
