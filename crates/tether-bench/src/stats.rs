//! Latency histograms and rate arithmetic, kept apart from the I/O so the
//! numbers a report prints can be tested on their own.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest latency a histogram tracks: 60 s, in nanoseconds. Larger samples
/// are clamped to it (a round trip that slow is a failure in any case).
const MAX_TRACKED_NS: u64 = 60_000_000_000;

/// A latency recorder: nanoseconds in, microseconds out, 3 significant digits
/// (0.1 % error), fixed memory (about 200 KiB) whatever the sample count.
#[derive(Clone, Debug)]
pub struct LatencyRecorder {
    hist: Histogram<u64>,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyRecorder {
    /// An empty recorder.
    pub fn new() -> Self {
        let hist = Histogram::new_with_bounds(1, MAX_TRACKED_NS, 3).expect("static histogram bounds are valid");
        LatencyRecorder { hist }
    }

    /// Record one sample, in nanoseconds (0 is counted as 1 ns).
    #[inline]
    pub fn record_ns(&mut self, ns: u64) {
        self.hist.saturating_record(ns.clamp(1, MAX_TRACKED_NS));
    }

    /// Number of samples recorded.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// Percentiles and extremes, in microseconds.
    pub fn summary(&self) -> LatencySummary {
        if self.hist.is_empty() {
            return LatencySummary::default();
        }
        let us = |ns: u64| round1(ns as f64 / 1000.0);
        LatencySummary {
            count: self.hist.len(),
            min_us: us(self.hist.min()),
            mean_us: round1(self.hist.mean() / 1000.0),
            p50_us: us(self.hist.value_at_quantile(0.50)),
            p90_us: us(self.hist.value_at_quantile(0.90)),
            p99_us: us(self.hist.value_at_quantile(0.99)),
            p999_us: us(self.hist.value_at_quantile(0.999)),
            max_us: us(self.hist.max()),
        }
    }
}

/// Latency distribution of one measurement, in microseconds. Values carry the
/// histogram's 0.1 % resolution; all are 0 when `count` is 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Smallest sample.
    pub min_us: f64,
    /// Arithmetic mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest sample.
    pub max_us: f64,
}

/// `count` per second over `secs`; 0 for an empty interval.
pub fn per_sec(count: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

/// Bytes per second over `secs`, in MB/s (10^6 bytes); 0 for an empty interval.
pub fn mb_per_sec(bytes: u64, secs: f64) -> f64 {
    per_sec(bytes, secs) / 1e6
}

/// Round to one decimal place (reports print µs to 0.1).
pub(crate) fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close_to(actual: f64, expected: f64) -> bool {
        // 3 significant digits: 0.1 % plus rounding to 0.1 µs.
        (actual - expected).abs() <= expected * 0.001 + 0.1
    }

    #[test]
    fn uniform_distribution_percentiles() {
        let mut r = LatencyRecorder::new();
        for us in 1..=10_000u64 {
            r.record_ns(us * 1000);
        }
        let s = r.summary();
        assert_eq!(s.count, 10_000);
        assert!(close_to(s.min_us, 1.0), "{s:?}");
        assert!(close_to(s.p50_us, 5000.0), "{s:?}");
        assert!(close_to(s.p90_us, 9000.0), "{s:?}");
        assert!(close_to(s.p99_us, 9900.0), "{s:?}");
        assert!(close_to(s.p999_us, 9990.0), "{s:?}");
        assert!(close_to(s.max_us, 10_000.0), "{s:?}");
        assert!(close_to(s.mean_us, 5000.5), "{s:?}");
    }

    #[test]
    fn outlier_shows_in_tail_not_median() {
        let mut r = LatencyRecorder::new();
        for _ in 0..999 {
            r.record_ns(20_000);
        }
        r.record_ns(5_000_000);
        let s = r.summary();
        assert!(close_to(s.p50_us, 20.0));
        assert!(close_to(s.p99_us, 20.0));
        assert!(close_to(s.max_us, 5000.0));
        assert!(close_to(s.p999_us, 20.0) || close_to(s.p999_us, 5000.0));
    }

    #[test]
    fn empty_and_extreme_samples() {
        assert_eq!(LatencyRecorder::new().summary(), LatencySummary::default());
        let mut r = LatencyRecorder::new();
        r.record_ns(0);
        r.record_ns(u64::MAX);
        let s = r.summary();
        assert_eq!(s.count, 2);
        assert!(s.min_us <= 0.1);
        assert!(close_to(s.max_us, 60_000_000.0), "{s:?}");
    }

    #[test]
    fn rates() {
        assert_eq!(per_sec(500, 2.0), 250.0);
        assert_eq!(per_sec(500, 0.0), 0.0);
        assert_eq!(mb_per_sec(3_000_000, 1.5), 2.0);
        assert_eq!(round1(12.345), 12.3);
    }
}
