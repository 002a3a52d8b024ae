//! The failure ledger: the most recent reads that failed with EIO, with the path, chunk and every
//! provider's outcome, for `wsfs status`. Bounded, so a storm of failures cannot grow memory.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Mutex;

pub const LEDGER_LEN: usize = 64;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Failure {
    /// Unix seconds.
    pub time: i64,
    pub path: String,
    pub chunk: String,
    pub error: String,
    /// One line per provider: "name: outcome".
    pub providers: Vec<String>,
}

#[derive(Default)]
pub struct FailureLedger {
    recent: Mutex<VecDeque<Failure>>,
}

impl FailureLedger {
    pub fn push(&self, f: Failure) {
        let mut g = self.recent.lock().unwrap_or_else(|p| p.into_inner());
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
