//! The failure ledger: the most recent reads that failed with EIO, with the path, chunk and every
//! provider's outcome, for `wsfs status`. Bounded, so a storm of failures cannot grow memory.
//! A failure that repeats one still in the ledger (same path and chunk) within
//! [`REPEAT_WINDOW_SECS`] bumps that entry's `count` instead of adding a line: the kernel retries
//! a failed read-ahead once with a synchronous read, and a retrying reader would otherwise push
//! every other failure out.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Mutex;

pub const LEDGER_LEN: usize = 64;
pub const REPEAT_WINDOW_SECS: i64 = 10;

fn one() -> u64 {
    1
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Failure {
    /// Unix seconds.
    pub time: i64,
    pub path: String,
    pub chunk: String,
    pub error: String,
    /// One line per provider: "name: outcome".
    pub providers: Vec<String>,
    /// How many reads failed this way (the latest at `time`).
    #[serde(default = "one")]
    pub count: u64,
}

#[derive(Default)]
pub struct FailureLedger {
    recent: Mutex<VecDeque<Failure>>,
}

impl FailureLedger {
    pub fn push(&self, f: Failure) {
        let mut g = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = g.iter().rposition(|e| {
            e.path == f.path && e.chunk == f.chunk && f.time - e.time <= REPEAT_WINDOW_SECS
        }) {
            // Move it to the newest position with the newest details.
            if let Some(mut e) = g.remove(i) {
                let count = e.count.saturating_add(f.count);
                e = Failure { count, ..f };
                g.push_back(e);
            }
            return;
        }
        if g.len() == LEDGER_LEN {
            g.pop_front();
        }
        g.push_back(f);
    }

    pub fn recent(&self) -> Vec<Failure> {
        self.recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}
