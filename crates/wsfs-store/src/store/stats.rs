//! Counters kept per provider and per chain. Plain atomics: they are read by `wsfs status` and
//! the metrics exporter, and written on every fetch.

use super::outcome::{Outcome, OutcomeKind};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub struct ProviderStats {
    /// Indexed by `OutcomeKind as usize` (the order of [`OutcomeKind::ALL`]).
    by_outcome: [AtomicU64; OutcomeKind::ALL.len()],
    pub bytes: AtomicU64,
    /// Latency of every request actually sent (skips are not requests).
    pub latency: LatencyHistogram,
}

impl ProviderStats {
    pub fn record(&self, o: &Outcome, micros: u64) {
        self.by_outcome[o.kind() as usize].fetch_add(1, Relaxed);
        if !matches!(o, Outcome::Skipped) {
            self.latency.observe(micros);
        }
    }

    pub fn count(&self, kind: OutcomeKind) -> u64 {
        self.by_outcome[kind as usize].load(Relaxed)
    }

    pub fn requests(&self) -> u64 {
        self.by_outcome.iter().map(|c| c.load(Relaxed)).sum()
    }
}

/// Upper bounds (seconds) of the request-latency histogram buckets; `+Inf` is implicit.
pub const LATENCY_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A fixed-bucket latency histogram of atomics (Prometheus semantics, kept non-cumulative here;
/// [`LatencyHistogram::snapshot`] makes the buckets cumulative).
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// One slot per bucket of [`LATENCY_BUCKETS`], then one for slower requests.
    slots: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_us: AtomicU64,
    count: AtomicU64,
}

/// A point-in-time copy of a [`LatencyHistogram`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// (upper bound in seconds, cumulative count) for each of [`LATENCY_BUCKETS`].
    pub buckets: Vec<(f64, u64)>,
    /// Sum of observations in seconds.
    pub sum: f64,
    /// Number of observations (the `+Inf` bucket).
    pub count: u64,
}

impl LatencyHistogram {
    pub fn observe(&self, micros: u64) {
        let secs = micros as f64 / 1e6;
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.slots[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(micros, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut acc = 0;
        let buckets = LATENCY_BUCKETS
            .iter()
            .zip(&self.slots)
            .map(|(b, c)| {
                acc += c.load(Relaxed);
                (*b, acc)
            })
            .collect();
        let overflow = self.slots[LATENCY_BUCKETS.len()].load(Relaxed);
        // Count from the slots, not `count`, so the +Inf bucket always equals _count even while
        // another thread is between the two increments.
        HistogramSnapshot {
            buckets,
            sum: self.sum_us.load(Relaxed) as f64 / 1e6,
            count: acc + overflow,
        }
    }
}

#[derive(Debug, Default)]
pub struct ChainStats {
    /// Objects served by a provider after an earlier provider missed them.
    pub failovers: AtomicU64,
    /// Objects that missed on every provider.
    pub all_missed: AtomicU64,
    /// Repairs written back to an earlier provider.
    pub repairs: AtomicU64,
    pub repair_failures: AtomicU64,
    /// Refs refused because their signature is missing, untrusted or invalid (with trust keys).
    pub signature_failures: AtomicU64,
    /// Range GETs of framed chunks that served verified frames, and the frames they served.
    pub range_gets: AtomicU64,
    pub range_frames: AtomicU64,
}

pub fn get(c: &AtomicU64) -> u64 {
    c.load(Relaxed)
}

pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_at_the_count() {
        let h = LatencyHistogram::default();
        for us in [1_000, 5_000, 7_000, 300_000, 20_000_000] {
            h.observe(us);
        }
        let s = h.snapshot();
        assert_eq!(s.count, 5);
        assert_eq!(s.buckets[0], (0.005, 2), "5 ms falls in le=0.005");
        assert_eq!(s.buckets[1], (0.01, 3));
        assert_eq!(s.buckets[5], (0.25, 3));
        assert_eq!(s.buckets[6], (0.5, 4));
        assert_eq!(s.buckets.last(), Some(&(10.0, 4)), "20 s only in +Inf");
        assert!((s.sum - 20.313).abs() < 1e-9, "{}", s.sum);
    }

    #[test]
    fn skips_are_counted_but_not_timed() {
        let p = ProviderStats::default();
        p.record(&Outcome::Skipped, 0);
        p.record(&Outcome::Hit, 2_000);
        assert_eq!(p.count(OutcomeKind::Skipped), 1);
        assert_eq!(p.latency.snapshot().count, 1);
    }
}
