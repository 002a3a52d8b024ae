//! Object stores and the verified failover chain.
//!
//! * [`Provider`] — one object store (any URL object_store understands), its key prefix, request
//!   limits, circuit breaker and counters.
//! * [`Chain`] — providers in failover order; returns only verified values.
//! * [`VerifiedChunk`] — chunk bytes that passed the hash check; the only thing the read path
//!   accepts.
//! * `fault` — an `ObjectStore` wrapper that injects failures, for fast unit tests (feature
//!   `fault`; never in the binary).

pub mod breaker;
pub mod chain;
pub mod config;
#[cfg(any(test, feature = "fault"))]
pub mod fault;
pub mod outcome;
pub mod provider;
pub mod stats;
pub mod verified;

pub use chain::{Chain, ResolvedLayer, Served};
pub use config::{
    chain_specs, config_mount, config_trust_keys, url_has_credentials, Limits, MountSection,
    StoreSpec,
};
pub use outcome::{AllMissed, Attempt, Outcome, OutcomeKind};
pub use provider::{Listed, Provider};
pub use verified::VerifiedChunk;
