//! Reconnect delays: exponential backoff with jitter, as a pure function of
//! the attempt number and a random draw, so it can be tested with bounds.

use std::time::Duration;

/// How long to wait before each reconnect attempt.
///
/// Attempt `n` (1-based) waits around `min_delay * factor^(n-1)`, capped at
/// `max_delay`, spread by `±jitter` of itself so that clients dropped
/// together by a server restart do not all come back in the same instant.
/// The result never exceeds `max_delay`.
#[derive(Clone, Debug, PartialEq)]
pub struct Backoff {
    /// The delay before the first attempt. Default 500 ms: quick enough for a
    /// blip, slow enough not to hammer a server that just went away.
    pub min_delay: Duration,
    /// The longest delay. Default 30 s.
    pub max_delay: Duration,
    /// Growth per attempt (values below 1 are treated as 1). Default 2.
    pub factor: f64,
    /// Randomisation as a fraction of the delay, 0 to 1: 0.5 spreads a delay
    /// over ±50%. Default 0.5.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { min_delay: Duration::from_millis(500), max_delay: Duration::from_secs(30), factor: 2.0, jitter: 0.5 }
    }
}

impl Backoff {
    /// The delay before attempt `attempt` (1-based) without jitter:
    /// `min(max_delay, min_delay * factor^(attempt-1))`.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(1024) as i32;
        let factor = if self.factor.is_finite() { self.factor.max(1.0) } else { 1.0 };
        let secs = self.min_delay.as_secs_f64() * factor.powi(exponent);
        let max = self.max_delay.max(self.min_delay);
        if secs.is_finite() && secs < max.as_secs_f64() {
            Duration::from_secs_f64(secs)
        } else {
            max
        }
    }

    /// The smallest and largest delay [`delay`](Self::delay) can return for `attempt`.
    pub fn bounds(&self, attempt: u32) -> (Duration, Duration) {
        (self.delay_with(attempt, 0.0), self.delay_with(attempt, 1.0))
    }

    /// The delay for `attempt` given a random draw `unit` in `[0, 1]`: 0 gives
    /// the lower bound, 1 the upper one. Deterministic, for tests.
    pub fn delay_with(&self, attempt: u32, unit: f64) -> Duration {
        let base = self.base_delay(attempt).as_secs_f64();
        let jitter = if self.jitter.is_finite() { self.jitter.clamp(0.0, 1.0) } else { 0.0 };
        let spread = base * jitter;
        let secs = base - spread + unit.clamp(0.0, 1.0) * 2.0 * spread;
        Duration::from_secs_f64(secs.max(0.0)).min(self.max_delay.max(self.min_delay))
    }

    /// The delay for `attempt`, with a fresh random draw.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn grows_by_factor_until_the_cap() {
        let b = Backoff { min_delay: ms(100), max_delay: ms(1000), factor: 2.0, jitter: 0.0 };
        let delays: Vec<_> = (1..=6).map(|n| b.delay(n)).collect();
        assert_eq!(delays, [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]);
        assert_eq!(b.base_delay(0), ms(100));
        assert_eq!(b.base_delay(u32::MAX), ms(1000));
    }

    #[test]
    fn jitter_spreads_within_bounds_and_never_passes_the_cap() {
        let b = Backoff { min_delay: ms(100), max_delay: ms(1000), factor: 2.0, jitter: 0.5 };
        assert_eq!(b.bounds(1), (ms(50), ms(150)));
        assert_eq!(b.bounds(3), (ms(200), ms(600)));
        assert_eq!(b.bounds(10), (ms(500), ms(1000)));
        assert_eq!(b.delay_with(2, 0.5), ms(200));
        for attempt in 1..12 {
            let (lo, hi) = b.bounds(attempt);
            let draws: Vec<_> = (0..200).map(|_| b.delay(attempt)).collect();
            assert!(draws.iter().all(|d| *d >= lo && *d <= hi), "attempt {attempt}: {draws:?} not in {lo:?}..{hi:?}");
            assert!(draws.iter().any(|d| *d != draws[0]), "attempt {attempt}: no jitter");
        }
    }

    #[test]
    fn odd_settings_stay_sane() {
        let b = Backoff { min_delay: ms(100), max_delay: ms(10), factor: 0.5, jitter: 7.0 };
        assert_eq!(b.base_delay(5), ms(100), "max below min means min");
        assert_eq!(b.bounds(5), (ms(0), ms(100)));
        let b = Backoff { factor: f64::NAN, jitter: f64::NAN, ..Backoff::default() };
        assert_eq!(b.delay(3), ms(500));
    }
}
