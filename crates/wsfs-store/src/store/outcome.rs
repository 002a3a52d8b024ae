//! Typed results of one attempt on one provider, and the error a chain returns when every
//! provider missed. Nothing here is a success unless it is [`Outcome::Hit`].

use std::fmt;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The object was there and passed verification.
    Hit,
    /// The provider answered: no such object (404).
    NotFound,
    /// The provider could not be asked or answered with an error (403, 5xx, reset, …).
    Unavailable(String),
    /// No complete answer within the provider's request timeout.
    Timeout(Duration),
    /// Bytes arrived but are not the object: wrong hash, bad compression, too long.
    Corrupt(String),
    /// Fewer bytes arrived than the object has.
    Short { got: u64, want: u64 },
    /// The provider's circuit breaker is open: it failed repeatedly and is being rested.
    Skipped,
}

/// An [`Outcome`] without its details: what the counters count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutcomeKind {
    Hit,
    NotFound,
    Unavailable,
    Timeout,
    Corrupt,
    Short,
    Skipped,
}

impl OutcomeKind {
    /// Every kind, in the order the counters keep them.
    pub const ALL: [OutcomeKind; 7] = [
        OutcomeKind::Hit,
        OutcomeKind::NotFound,
        OutcomeKind::Unavailable,
        OutcomeKind::Timeout,
        OutcomeKind::Corrupt,
        OutcomeKind::Short,
        OutcomeKind::Skipped,
    ];

    /// The name in status JSON, metrics labels and logs.
    pub fn label(self) -> &'static str {
        match self {
            OutcomeKind::Hit => "hit",
            OutcomeKind::NotFound => "not_found",
            OutcomeKind::Unavailable => "unavailable",
            OutcomeKind::Timeout => "timeout",
            OutcomeKind::Corrupt => "corrupt",
            OutcomeKind::Short => "short",
            OutcomeKind::Skipped => "skipped",
        }
    }
}

impl Outcome {
    pub fn kind(&self) -> OutcomeKind {
        match self {
            Outcome::Hit => OutcomeKind::Hit,
            Outcome::NotFound => OutcomeKind::NotFound,
            Outcome::Unavailable(_) => OutcomeKind::Unavailable,
            Outcome::Timeout(_) => OutcomeKind::Timeout,
            Outcome::Corrupt(_) => OutcomeKind::Corrupt,
            Outcome::Short { .. } => OutcomeKind::Short,
            Outcome::Skipped => OutcomeKind::Skipped,
        }
    }

    pub fn label(&self) -> &'static str {
        self.kind().label()
    }

    /// Whether this outcome says the provider itself is unwell (counts towards its breaker).
    /// A 404 is a healthy answer; so are corrupt bytes, which point at the object, not the service.
    pub fn is_provider_failure(&self) -> bool {
        matches!(self, Outcome::Unavailable(_) | Outcome::Timeout(_))
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Hit => write!(f, "hit"),
            Outcome::NotFound => write!(f, "not found"),
            Outcome::Unavailable(why) => write!(f, "unavailable ({why})"),
            Outcome::Timeout(d) => write!(f, "timed out after {:.1}s", d.as_secs_f64()),
            Outcome::Corrupt(why) => write!(f, "corrupt ({why})"),
            Outcome::Short { got, want } => write!(f, "short ({got} of {want} bytes)"),
            Outcome::Skipped => write!(f, "skipped (circuit breaker open)"),
        }
    }
}

/// One provider's answer to one request.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub provider: String,
    pub outcome: Outcome,
    pub elapsed: Duration,
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.provider, self.outcome)
    }
}

/// Every provider missed `what`. Carries each provider's outcome so the message can say why.
#[derive(Clone, Debug)]
pub struct AllMissed {
    pub what: String,
    pub attempts: Vec<Attempt>,
}

impl AllMissed {
    /// True when every provider positively said "not found" (as opposed to failing to answer).
    pub fn all_not_found(&self) -> bool {
        self.attempts.iter().all(|a| a.outcome == Outcome::NotFound)
    }
}

impl fmt::Display for AllMissed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} missed on every provider: ", self.what)?;
        for (i, a) in self.attempts.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{a}")?;
        }
        if self.attempts.is_empty() {
            f.write_str("no providers configured")?;
        }
        Ok(())
    }
}

impl std::error::Error for AllMissed {}
