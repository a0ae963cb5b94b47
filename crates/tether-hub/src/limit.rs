//! Per-connection rate limits: a generic cell rate algorithm (GCRA, the
//! token bucket expressed as one timestamp), so each limit costs 8 bytes.

/// Requests per second with a burst, as a GCRA: `tat` is the theoretical
/// arrival time of the next request, in nanoseconds on the caller's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained requests per second; 0 turns the limit off.
    pub per_second: u32,
    /// Requests allowed at once above the sustained rate (at least 1).
    pub burst: u32,
}

impl RateLimit {
    /// No limit.
    pub const OFF: RateLimit = RateLimit { per_second: 0, burst: 0 };

    fn interval_ns(&self) -> u64 {
        1_000_000_000 / u64::from(self.per_second.max(1))
    }

    /// Whether one more request at `now_ns` is within the limit; updates `tat`.
    pub(crate) fn allow(&self, tat: &mut u64, now_ns: u64) -> bool {
        if self.per_second == 0 {
            return true;
        }
        let interval = self.interval_ns();
        let tolerance = interval.saturating_mul(u64::from(self.burst.max(1) - 1));
        let start = (*tat).max(now_ns);
        if start - now_ns > tolerance {
            return false;
        }
        *tat = start + interval;
        true
    }
}

/// The state of a connection's limits: messages, subscription changes, and
/// the refusals themselves (sustained abuse closes the connection).
#[derive(Default, Debug)]
pub(crate) struct Limiter {
    messages: u64,
    subscriptions: u64,
    refusals: u64,
}

/// What a limit said about one request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allow,
    /// Refuse this request; the connection stays.
    Refuse,
    /// Refusals went past their own burst: close with 1008.
    Close,
}

/// Refusals tolerated: the limit's burst within about ten seconds.
fn refusal_limit(limit: &RateLimit) -> RateLimit {
    RateLimit { per_second: (limit.burst / 10).max(1), burst: limit.burst.max(1) }
}

impl Limiter {
    fn check(state: &mut u64, refusals: &mut u64, limit: &RateLimit, now_ns: u64) -> Verdict {
        if limit.allow(state, now_ns) {
            Verdict::Allow
        } else if refusal_limit(limit).allow(refusals, now_ns) {
            Verdict::Refuse
        } else {
            Verdict::Close
        }
    }

    /// A data message (or a ping) arrived.
    pub fn message(&mut self, limit: &RateLimit, now_ns: u64) -> Verdict {
        Self::check(&mut self.messages, &mut self.refusals, limit, now_ns)
    }

    /// A subscribe or unsubscribe arrived.
    pub fn subscription(&mut self, limit: &RateLimit, now_ns: u64) -> Verdict {
        Self::check(&mut self.subscriptions, &mut self.refusals, limit, now_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn burst_then_sustained_rate() {
        let limit = RateLimit { per_second: 10, burst: 5 };
        let mut tat = 0;
        let t0 = 100 * S;
        assert_eq!((0..20).filter(|_| limit.allow(&mut tat, t0)).count(), 5);
        // One more every 100 ms.
        assert!(!limit.allow(&mut tat, t0 + S / 20));
        assert!(limit.allow(&mut tat, t0 + S / 10));
        // After a quiet second the burst is back.
        let t1 = t0 + 3 * S;
        assert_eq!((0..20).filter(|_| limit.allow(&mut tat, t1)).count(), 5);
    }

    #[test]
    fn off_allows_everything() {
        let mut tat = 0;
        assert!((0..10_000).all(|_| RateLimit::OFF.allow(&mut tat, 5)));
    }

    #[test]
    fn sustained_abuse_closes_occasional_excess_does_not() {
        let limit = RateLimit { per_second: 10, burst: 20 };
        // A client at twice the rate: refused, then closed within seconds.
        let mut l = Limiter::default();
        let mut verdicts = Vec::new();
        for i in 0..200u64 {
            verdicts.push(l.message(&limit, 10 * S + i * S / 20));
        }
        let closed_at = verdicts.iter().position(|v| *v == Verdict::Close).expect("closed");
        assert!(verdicts[..closed_at].contains(&Verdict::Refuse));
        assert!(closed_at > 20, "the burst is allowed first: {closed_at}");
        // A client that bursts over the limit once a minute is never closed.
        let mut l = Limiter::default();
        for minute in 0..10u64 {
            let t = 10 * S + minute * 60 * S;
            for _ in 0..30 {
                assert_ne!(l.message(&limit, t), Verdict::Close);
            }
        }
    }
}
