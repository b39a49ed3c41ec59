//! The prime search: trial division bounded by `i * i <= j`.

/// Counts the primes in `2..=n` by trial division, trying divisors `i` while
/// `i * i <= j` (the prime search used for the guest/host comparison).
///
/// Marked `#[inline(never)]` so that callers time a real call that the
/// compiler cannot fold into its surroundings.
#[inline(never)]
pub fn count_primes(n: u64) -> u64 {
    let mut count = 0;
    let mut j = 2;
    while j <= n {
        let mut i = 2;
        let mut prime = true;
        while i * i <= j {
            if j % i == 0 {
                prime = false;
                break;
            }
            i += 1;
        }
        if prime {
            count += 1;
        }
        j += 1;
    }
    count
}

#[cfg(test)]
mod tests {
    use super::count_primes;

    #[test]
    fn small_counts() {
        assert_eq!(count_primes(0), 0);
        assert_eq!(count_primes(1), 0);
        assert_eq!(count_primes(2), 1);
        assert_eq!(count_primes(10), 4);
        assert_eq!(count_primes(100), 25);
        assert_eq!(count_primes(7919), 1000);
    }

    #[test]
    fn the_benchmark_size() {
        assert_eq!(count_primes(100_000), 9592);
    }
}
