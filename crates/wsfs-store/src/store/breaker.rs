//! A per-provider circuit breaker. After [`FAILURE_THRESHOLD`] consecutive provider failures
//! (timeouts, connection errors, 5xx — never 404s) the provider is skipped for a cool-down; then one
//! request is let through as a probe (half-open). A success closes the breaker; a failure opens it
//! again. This keeps a dead primary from costing its full timeout on every chunk.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const FAILURE_THRESHOLD: u32 = 3;
pub const COOL_DOWN: Duration = Duration::from_secs(10);

/// Where a breaker is. In `wsfs status --json` as `closed`, `open` or `halfopen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    #[default]
    Closed,
    Open,
    HalfOpen,
}

impl State {
    /// As in `wsfs status` and its JSON.
    pub fn name(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "halfopen",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug)]
struct Inner {
    consecutive_failures: u32,
    opened_at: Option<Instant>,
    probe_in_flight: bool,
}

#[derive(Debug)]
pub struct Breaker {
    inner: Mutex<Inner>,
    cool_down: Duration,
}

impl Default for Breaker {
    fn default() -> Self {
        Self::with_cool_down(COOL_DOWN)
    }
}

impl Breaker {
    pub fn with_cool_down(cool_down: Duration) -> Self {
        Breaker {
            inner: Mutex::new(Inner {
                consecutive_failures: 0,
                opened_at: None,
                probe_in_flight: false,
            }),
            cool_down,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means another thread panicked mid-update of plain counters.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> State {
        let g = self.lock();
        match g.opened_at {
            None => State::Closed,
            Some(t) if t.elapsed() >= self.cool_down => State::HalfOpen,
            Some(_) => State::Open,
        }
    }

    /// Whether a request may go to the provider now. In half-open state only one probe at a time.
    pub fn allow(&self) -> bool {
        let mut g = self.lock();
        match g.opened_at {
            None => true,
            Some(t) if t.elapsed() >= self.cool_down && !g.probe_in_flight => {
                g.probe_in_flight = true;
                true
            }
            Some(_) => false,
        }
    }

    pub fn record_success(&self) {
        let mut g = self.lock();
        g.consecutive_failures = 0;
        g.opened_at = None;
        g.probe_in_flight = false;
    }

    pub fn record_failure(&self) {
        let mut g = self.lock();
        g.consecutive_failures += 1;
        g.probe_in_flight = false;
        if g.consecutive_failures >= FAILURE_THRESHOLD {
            g.opened_at = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_probes_after_cool_down() {
        let b = Breaker::with_cool_down(Duration::from_millis(50));
        for _ in 0..FAILURE_THRESHOLD - 1 {
            b.record_failure();
            assert!(b.allow());
        }
        b.record_failure();
        assert_eq!(b.state(), State::Open);
        assert!(!b.allow());
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.state(), State::HalfOpen);
        assert!(b.allow(), "one probe is let through");
        assert!(!b.allow(), "only one probe at a time");
        b.record_failure();
        assert!(!b.allow(), "a failed probe opens it again");
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.allow());
        b.record_success();
        assert_eq!(b.state(), State::Closed);
        assert!(b.allow());
    }
}
