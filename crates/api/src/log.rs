//! A bound on how many lines the API server logs, so that a flood of bad
//! requests cannot grow the log without limit.

use std::time::{Duration, Instant};

/// Lets through at most `max` lines per `window`; counts the rest and says
/// how many were left out with the next line let through.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    max: u32,
    window: Duration,
    window_start: Option<Instant>,
    lines: u32,
    suppressed: u64,
}

/// What to do with one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Log it; first say that `suppressed` lines were left out, when not 0.
    Yes {
        /// Lines left out since the last line let through.
        suppressed: u64,
    },
    /// Leave it out (it is counted).
    No,
}

impl LogLimiter {
    /// At most `max` lines per `window`.
    pub(crate) fn new(max: u32, window: Duration) -> Self {
        Self {
            max,
            window,
            window_start: None,
            lines: 0,
            suppressed: 0,
        }
    }

    /// Decides about one line at `now`.
    pub(crate) fn admit(&mut self, now: Instant) -> Admit {
        let fresh = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= self.window);
        if fresh {
            self.window_start = Some(now);
            self.lines = 0;
        }
        if self.lines >= self.max {
            self.suppressed += 1;
            return Admit::No;
        }
        self.lines += 1;
        Admit::Yes {
            suppressed: std::mem::take(&mut self.suppressed),
        }
    }

    /// Lines left out and not reported yet (reported at shutdown).
    pub(crate) fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_and_counted() {
        let mut l = LogLimiter::new(3, Duration::from_secs(1));
        let t0 = Instant::now();
        let admitted: Vec<Admit> = (0..10).map(|_| l.admit(t0)).collect();
        assert_eq!(admitted.iter().filter(|a| matches!(a, Admit::Yes { .. })).count(), 3);
        assert_eq!(admitted[3..], [Admit::No; 7]);
        // The next window lets lines through again and reports the 7.
        assert_eq!(l.admit(t0 + Duration::from_secs(1)), Admit::Yes { suppressed: 7 });
        assert_eq!(l.admit(t0 + Duration::from_secs(1)), Admit::Yes { suppressed: 0 });
        assert_eq!(l.take_suppressed(), 0);
    }

    #[test]
    fn unreported_lines_are_handed_over_at_the_end() {
        let mut l = LogLimiter::new(1, Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(l.admit(t0), Admit::Yes { suppressed: 0 });
        assert_eq!(l.admit(t0), Admit::No);
        assert_eq!(l.admit(t0), Admit::No);
        assert_eq!(l.take_suppressed(), 2);
    }
}
