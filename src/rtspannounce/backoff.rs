//! How long to wait before each reconnect attempt, and when to give up: a pure value, the
//! randomness passed in, so its rules are tested without a clock.

use std::time::Duration;

#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    /// Attempts allowed: None for ever (`retry-max=-1`).
    limit: Option<u32>,
    /// Attempts made so far.
    made: u32,
    /// A re-announce for new caps, not a loss: the first attempt goes at once.
    immediate_first: bool,
}

impl Backoff {
    /// `retry_max`: -1 for ever, 0 never. A re-announce makes one attempt even with 0.
    pub(crate) fn new(min: Duration, max: Duration, retry_max: i32, renegotiating: bool) -> Self {
        let retry_max = if renegotiating {
            retry_max.max(1)
        } else {
            retry_max
        };
        Backoff {
            min,
            max: max.max(min),
            limit: u32::try_from(retry_max).ok(),
            made: 0,
            immediate_first: renegotiating,
        }
    }

    pub(crate) fn attempts(&self) -> u32 {
        self.made
    }

    /// The delay before the next attempt, or None when no attempt is left. `unit` is a random
    /// number in [0, 1): each delay is spread by ±20 % so many publishers do not come back in
    /// step. Exponential from `min`, at most `max`.
    pub(crate) fn next(&mut self, unit: f64) -> Option<Duration> {
        if self.limit.is_some_and(|l| self.made >= l) {
            return None;
        }
        self.made += 1;
        if self.immediate_first && self.made == 1 {
            return Some(Duration::ZERO);
        }
        let doubling = (self.made - 1).min(16);
        let d = self.min.saturating_mul(1u32 << doubling).min(self.max);
        Some(d.mul_f64(0.8 + 0.4 * unit.clamp(0.0, 1.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_from_min_up_to_max() {
        let mut b = Backoff::new(100 * MS, 1000 * MS, -1, false);
        let mid: Vec<Duration> = (0..6).map(|_| b.next(0.5).unwrap()).collect();
        assert_eq!(
            mid,
            [100, 200, 400, 800, 1000, 1000].map(|m| m * MS).to_vec()
        );
        assert_eq!(b.attempts(), 6);
    }

    #[test]
    fn each_delay_is_spread_by_a_fifth() {
        let mut lo = Backoff::new(100 * MS, 100 * MS, -1, false);
        let mut hi = lo.clone();
        assert_eq!(lo.next(0.0), Some(80 * MS));
        assert_eq!(hi.next(1.0), Some(120 * MS));
        // Out-of-range randomness cannot stretch it further.
        assert_eq!(lo.next(7.0), Some(120 * MS));
    }

    #[test]
    fn gives_up_after_retry_max() {
        let mut b = Backoff::new(MS, MS, 2, false);
        assert!(b.next(0.5).is_some());
        assert!(b.next(0.5).is_some());
        assert_eq!(b.next(0.5), None);
        assert_eq!(b.attempts(), 2);
        assert_eq!(Backoff::new(MS, MS, 0, false).next(0.5), None);
    }

    #[test]
    fn a_reannounce_goes_at_once_even_without_retries() {
        let mut b = Backoff::new(100 * MS, 100 * MS, 0, true);
        assert_eq!(b.next(0.5), Some(Duration::ZERO));
        assert_eq!(b.next(0.5), None);
        // The second attempt waits as a loss's second would.
        let mut b = Backoff::new(100 * MS, 1000 * MS, 3, true);
        assert_eq!(b.next(0.5), Some(Duration::ZERO));
        assert_eq!(b.next(0.5), Some(200 * MS));
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(3600), Duration::MAX, -1, false);
        for _ in 0..100 {
            assert!(b.next(0.5).is_some());
        }
    }
}
