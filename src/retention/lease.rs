//! Leases: small objects by which a mount, a persist or a gc tells every other wsfs process on
//! a store "I am using this until …". They are how gc stays safe without deleting anything a
//! job reads or a persist relies on:
//!
//! * a **mount lease** (`workspaces/<ws>/leases/mount-…`, written by the daemon on every store
//!   it reads from, renewed while mounted, deleted at unmount) keeps its workspace — and the
//!   exact manifests it mounted — from being collected, however old;
//! * a **persist lease** (`workspaces/<ws>/leases/persist-…`) marks a persist in flight: it may
//!   rely on chunks it found already present (HEAD) and did not upload again;
//! * the **gc lock** (`gc/lock`) is held by a gc while it deletes. A persist writes its lease,
//!   then looks for the lock: if a gc holds it, the persist withdraws its lease and waits. A gc
//!   writes the lock, then waits until no persist lease older than its lock is left. Whichever
//!   writes second sees the other, so a gc never deletes while a persist relies on what it
//!   found (stores are read-after-write consistent for objects and listings).
//!
//! A lease lives until `expires` (Unix seconds) and is renewed well before that; a holder that
//! died stops renewing, and its lease is ignored once expired. A store that refuses the write
//! (read-only credentials) gets no lease: mounts work on, with one warning; persists and gc
//! cannot work there anyway.

use crate::manifest::keys;
use crate::store::{Outcome, Provider};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a lease holds without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(600);
/// How often a holder renews.
pub const LEASE_RENEW: Duration = Duration::from_secs(60);
/// Leases are tiny; anything larger is not read.
pub const MAX_LEASE_BYTES: u64 = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseKind {
    Mount,
    Persist,
    Gc,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub kind: LeaseKind,
    /// Who holds it: host, pid, and for mounts the mount point.
    pub holder: String,
    /// Unix seconds when the holder first wrote it.
    pub created: i64,
    /// Unix seconds after which it no longer holds.
    pub expires: i64,
    /// Manifests (hex digests) the holder uses: for a mount, every layer it mounted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub manifests: Vec<String>,
}

impl Lease {
    pub fn new(kind: LeaseKind, holder: String, manifests: Vec<String>) -> Lease {
        let now = crate::ops::linux::process::unix_now();
        Lease {
            kind,
            holder,
            created: now,
            expires: now + LEASE_TTL.as_secs() as i64,
            manifests,
        }
    }

    pub fn live(&self, now: i64) -> bool {
        self.expires > now
    }

    pub fn parse(bytes: &[u8]) -> Result<Lease, String> {
        if bytes.len() as u64 > MAX_LEASE_BYTES {
            return Err("lease larger than 64 KiB".into());
        }
        serde_json::from_slice(bytes).map_err(|e| format!("not a lease: {e}"))
    }

    fn to_bytes(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

/// This machine's name, made safe for an object key.
pub fn host() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let h: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if h.is_empty() {
        "host".into()
    } else {
        h
    }
}

/// Reads a lease object; `Ok(None)` if there is none.
pub async fn read(p: &Provider, key: &str) -> Result<Option<Lease>, Outcome> {
    match p.get_capped(key, MAX_LEASE_BYTES).await {
        Ok(b) => Lease::parse(&b).map(Some).map_err(Outcome::Corrupt),
        Err(Outcome::NotFound) => Ok(None),
        Err(o) => Err(o),
    }
}

/// A lease written on some stores and renewed in the background until released.
pub struct Held {
    key: String,
    providers: Vec<Arc<Provider>>,
    state: Arc<Mutex<HeldState>>,
    renewer: Option<tokio::task::JoinHandle<()>>,
}

struct HeldState {
    lease: Lease,
    /// Per provider: the expiry of the last copy it accepted (None: it never accepted one).
    held_until: Vec<Option<i64>>,
    /// Per provider: a renewal failed after the lease had expired there.
    lapsed: Vec<bool>,
    /// Per provider: a write failed (the first failure is logged at WARN, once).
    failed: Vec<bool>,
}

impl Held {
    /// Writes `lease` at `key` on every provider and starts renewing it (on the current tokio
    /// runtime). A provider that refuses is recorded (see [`Held::holds_on`]).
    pub async fn acquire(providers: &[Arc<Provider>], key: String, lease: Lease) -> Held {
        Held::acquire_within(providers, key, lease, None).await
    }

    /// As [`Held::acquire`], but waits at most `wait` for the first write (it goes on in the
    /// background): a slow store must not hold up what waits for the lease.
    pub async fn acquire_within(
        providers: &[Arc<Provider>],
        key: String,
        lease: Lease,
        wait: Option<Duration>,
    ) -> Held {
        let state = Arc::new(Mutex::new(HeldState {
            lease,
            held_until: vec![None; providers.len()],
            lapsed: vec![false; providers.len()],
            failed: vec![false; providers.len()],
        }));
        let first = {
            let (ps, k, st) = (providers.to_vec(), key.clone(), state.clone());
            tokio::spawn(async move { write_all(&ps, &k, &st).await })
        };
        match wait {
            None => {
                let _ = first.await;
            }
            Some(w) => {
                let _ = tokio::time::timeout(w, first).await;
            }
        }
        let (ps, k, st) = (providers.to_vec(), key.clone(), state.clone());
        let renewer = tokio::spawn(async move {
            loop {
                tokio::time::sleep(LEASE_RENEW).await;
                if let Ok(mut s) = st.lock() {
                    s.lease.expires =
                        crate::ops::linux::process::unix_now() + LEASE_TTL.as_secs() as i64;
                }
                write_all(&ps, &k, &st).await;
            }
        });
        Held {
            key,
            providers: providers.to_vec(),
            state,
            renewer: Some(renewer),
        }
    }

    /// Whether provider `i` holds the lease now and has held it without a gap since it was
    /// acquired.
    pub fn holds_on(&self, i: usize) -> bool {
        let now = crate::ops::linux::process::unix_now();
        self.state.lock().is_ok_and(|s| {
            !s.lapsed.get(i).copied().unwrap_or(true)
                && s.held_until
                    .get(i)
                    .copied()
                    .flatten()
                    .is_some_and(|t| t > now)
        })
    }

    /// The providers that refused the lease (a write failed, none succeeded), by name.
    pub fn refused_by(&self) -> Vec<String> {
        let s = match self.state.lock() {
            Ok(s) => s,
            Err(_) => return Vec::new(),
        };
        self.providers
            .iter()
            .enumerate()
            .filter(|(i, _)| s.held_until[*i].is_none() && s.failed[*i])
            .map(|(_, p)| p.name.clone())
            .collect()
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// Names the manifests the holder uses (a mount, once it has resolved its layers) and
    /// writes the lease again at once, in the background.
    pub fn set_manifests(&self, manifests: Vec<String>) {
        if let Ok(mut s) = self.state.lock() {
            s.lease.manifests = manifests;
        }
        let (ps, k, st) = (self.providers.clone(), self.key.clone(), self.state.clone());
        tokio::spawn(async move { write_all(&ps, &k, &st).await });
    }

    /// Stops renewing and deletes the lease everywhere (best effort: an undeleted lease
    /// expires).
    pub async fn release(mut self) {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        let dels = self.providers.iter().map(|p| p.delete(&self.key));
        for (p, r) in self
            .providers
            .iter()
            .zip(futures::future::join_all(dels).await)
        {
            if let Err(o) = r {
                if o != Outcome::NotFound {
                    tracing::debug!(store = %p.name, key = %self.key, outcome = %o, "lease not deleted; it expires");
                }
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
    }
}

async fn write_all(providers: &[Arc<Provider>], key: &str, state: &Mutex<HeldState>) {
    let Ok(lease) = state.lock().map(|s| s.lease.clone()) else {
        return;
    };
    let bytes = lease.to_bytes();
    let puts = providers.iter().map(|p| p.put(key, bytes.clone()));
    let results = futures::future::join_all(puts).await;
    let now = crate::ops::linux::process::unix_now();
    if let Ok(mut s) = state.lock() {
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(()) => s.held_until[i] = Some(lease.expires),
                Err(o) => {
                    if s.held_until[i].is_some_and(|t| t <= now) {
                        s.lapsed[i] = true;
                    }
                    if !s.failed[i] {
                        tracing::warn!(store = %providers[i].name, key, outcome = %o, "lease not written on this store (read-only credentials, or the store is failing): a gc there does not know this lease");
                    }
                    s.failed[i] = true;
                }
            }
        }
    }
}

/// The lease key of the mount at `mountpoint` on this machine: the same for every daemon of
/// the mount, so a replacement renews its predecessor's lease.
pub fn mount_lease_key(workspace: &str, mountpoint: &std::path::Path) -> String {
    keys::lease(
        workspace,
        &format!(
            "mount-{}-{}",
            host(),
            crate::ops::run_records::mount_id(mountpoint)
        ),
    )
}

/// How long a mount waits for its lease to land before resolving its layers (a store that is
/// slower than this gets the lease in the background; see `hold_for_mount`).
pub const MOUNT_LEASE_WAIT: Duration = Duration::from_secs(1);

/// Holds a mount's lease on the stores it reads from, for as long as it is mounted. A first
/// mount takes it *before* reading any ref, with no manifests yet (it then holds the whole
/// workspace), and names the manifests once resolved ([`Held::set_manifests`]): a gc that
/// deletes a ref this mount read therefore sees the lease before it deletes what the ref named.
pub async fn hold_for_mount(
    providers: &[Arc<Provider>],
    workspace: &str,
    mountpoint: &std::path::Path,
    manifests: Vec<String>,
) -> Held {
    let lease = Lease::new(
        LeaseKind::Mount,
        format!(
            "{} pid {} at {}",
            host(),
            std::process::id(),
            mountpoint.display()
        ),
        manifests,
    );
    let held = Held::acquire_within(
        providers,
        mount_lease_key(workspace, mountpoint),
        lease,
        Some(MOUNT_LEASE_WAIT),
    )
    .await;
    if !held.refused_by().is_empty() {
        tracing::warn!(
            "the mount works without its lease there, but run gc on such stores with a retention longer than the longest job"
        );
    }
    held
}

/// A persist's lease on every store, taken where no gc holds the lock: from here on, the
/// persist may rely on chunks it finds present. Waits up to `wait` for running gcs; returns the
/// lease and the stores that stayed locked (or refused the lease) — the persist fails there.
pub async fn persist_gate(
    providers: &[Arc<Provider>],
    workspace: &str,
    wait: Duration,
) -> (Held, Vec<(usize, String)>) {
    let id = format!(
        "persist-{}-{}-{}",
        host(),
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    );
    let key = keys::lease(workspace, &id);
    let deadline = std::time::Instant::now() + wait;
    loop {
        let held = Held::acquire(
            providers,
            key.clone(),
            Lease::new(
                LeaseKind::Persist,
                format!("{} pid {}", host(), std::process::id()),
                Vec::new(),
            ),
        )
        .await;
        let now = crate::ops::linux::process::unix_now();
        let checks = providers.iter().map(|p| read(p, keys::GC_LOCK));
        let mut blocked = Vec::new();
        for (i, r) in futures::future::join_all(checks)
            .await
            .into_iter()
            .enumerate()
        {
            if !held.holds_on(i) {
                blocked.push((i, "cannot write a persist lease there".to_string()));
                continue;
            }
            match r {
                Ok(Some(l)) if l.live(now) => blocked.push((
                    i,
                    format!("a gc holds the store ({}, until {})", l.holder, l.expires),
                )),
                Ok(_) => {}
                Err(o) => blocked.push((i, format!("cannot read the gc lock: {o}"))),
            }
        }
        let locked = blocked.iter().any(|(_, why)| why.starts_with("a gc holds"));
        if !locked || std::time::Instant::now() >= deadline {
            return (held, blocked);
        }
        tracing::info!(
            stores = %blocked.iter().map(|(i, _)| providers[*i].name.clone()).collect::<Vec<_>>().join(", "),
            "a gc is running on these stores; waiting for it before persisting"
        );
        held.release().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_parse_and_expire() {
        let l = Lease::new(LeaseKind::Persist, "h pid 1".into(), vec![]);
        let back = Lease::parse(&l.to_bytes()).expect("parse");
        assert_eq!(back, l);
        assert!(l.live(l.created));
        assert!(!l.live(l.expires));
        assert!(Lease::parse(b"{}").is_err());
        assert!(!host().contains('/'));
    }
}
