//! Counters kept per provider and per chain. Plain atomics: they are read by `wsfs status` and
//! the metrics exporter, and written on every fetch.

use super::outcome::Outcome;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub const OUTCOME_LABELS: [&str; 7] = [
    "hit",
    "not_found",
    "unavailable",
    "timeout",
    "corrupt",
    "short",
    "skipped",
];

#[derive(Debug, Default)]
pub struct ProviderStats {
    by_outcome: [AtomicU64; 7],
    pub bytes: AtomicU64,
    /// Sum of request latencies in microseconds (with the hit/miss counts gives a mean).
    pub latency_us: AtomicU64,
}

impl ProviderStats {
    pub fn record(&self, o: &Outcome, micros: u64) {
        let i = OUTCOME_LABELS
            .iter()
            .position(|l| *l == o.label())
            .unwrap_or(0);
        self.by_outcome[i].fetch_add(1, Relaxed);
        self.latency_us.fetch_add(micros, Relaxed);
    }

    pub fn count(&self, label: &str) -> u64 {
        OUTCOME_LABELS
            .iter()
            .position(|l| *l == label)
            .map(|i| self.by_outcome[i].load(Relaxed))
            .unwrap_or(0)
    }

    pub fn requests(&self) -> u64 {
        self.by_outcome.iter().map(|c| c.load(Relaxed)).sum()
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
}

pub fn get(c: &AtomicU64) -> u64 {
    c.load(Relaxed)
}

pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}
