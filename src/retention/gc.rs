//! `wsfs gc`: expire old refs, then mark and sweep — per store, independently.
//!
//! For each store:
//! 1. **Lock.** Write the gc lock (`gc/lock`, a lease renewed while gc runs). Another live gc
//!    lock: the store is skipped. (`--dry-run` takes no lock and deletes nothing.)
//! 2. **Drain.** Wait (`--wait`) until no persist lease is left on the store: persists that
//!    started before the lock may rely on chunks they found present; persists that start now
//!    see the lock and wait for it. Still draining after `--wait`: the store is skipped,
//!    nothing deleted.
//! 3. **Expire.** Refs committed more than `--older-than` ago go, unless their workspace has a
//!    live mount lease, or a kept ref of an older version names them as a parent by name.
//! 4. **Mark.** Everything reachable from the kept refs: their manifests, the manifests of the
//!    ancestors they pin, the manifests live mount leases name, and every chunk of those
//!    manifests (a manifest this store lacks is read from another store of the chain; if none
//!    has it, no chunk is swept on this store).
//! 5. **Sweep.** Expired refs are deleted first. Then the leases are read again: a mount that
//!    read one of those refs a moment before wrote its lease before reading (lease.rs), so it
//!    shows now, and what the expired refs of its workspace named is kept too. Then unreached
//!    manifests, then chunks, older than `--grace` (default 1 h, longer than any persist) — so
//!    a gc that stops half-way never leaves a ref naming something deleted. Expired leases and
//!    the `#N` upload leftovers of `file://` stores go too. A DELETE that finds nothing is fine.
//!
//! Cost in requests per store: one listing of `workspaces/`, `manifests/` and `chunks/` (S3: a
//! request per 1,000 objects); one GET per ref, per lease and per kept manifest; deletions in
//! bulk where the store has it (S3: one request per 1,000 objects, 20 in flight), else one
//! DELETE per object (10 in flight); a few requests for the lock.

use super::gc_progress::GcProgress;
use super::lease::{self, Held, Lease, LeaseKind};
use super::{digest_of_key, inventory, live_leases, Inventory, RefObject};
use crate::error::WsfsError;
use crate::manifest::{keys, Digest};
use crate::store::{Chain, Listed, Provider};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct GcOptions {
    pub older_than: Duration,
    pub grace: Duration,
    pub dry_run: bool,
    /// How long to wait for persists in flight to finish before skipping a store.
    pub wait: Duration,
    pub progress: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Counts {
    pub kept: u64,
    pub kept_bytes: u64,
    pub deleted: u64,
    pub deleted_bytes: u64,
    /// Unreached but younger than the grace period: spared this time.
    pub spared_young: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct StoreGc {
    pub store: String,
    /// `done`, `dry-run`, `skipped` or `failed`.
    pub status: String,
    pub reason: Option<String>,
    /// `ws/layer` of every ref expired (or, dry run, that would be).
    pub refs_expired: Vec<String>,
    pub refs_kept: u64,
    /// Workspaces kept whatever their age because a mount holds a lease.
    pub workspaces_leased: Vec<String>,
    pub manifests: Counts,
    pub chunks: Counts,
    pub leases_removed: u64,
    pub upload_leftovers_removed: u64,
    pub errors: Vec<String>,
}

/// Runs gc on every store; the result says per store what happened. Exit: Ok when every store
/// was collected (or dry-run), else an error summarizing what was skipped or failed.
pub async fn gc(
    providers: &[Arc<Provider>],
    opts: &GcOptions,
) -> (Vec<StoreGc>, Result<(), WsfsError>) {
    let chain = Chain::from_arcs(providers.to_vec());
    let mut out = Vec::new();
    for p in providers {
        let r = gc_store(p, &chain, opts).await;
        out.push(r);
    }
    let bad: Vec<String> = out
        .iter()
        .filter(|s| s.status == "skipped" || s.status == "failed")
        .map(|s| {
            format!(
                "{}: {} ({})",
                s.store,
                s.status,
                s.reason.clone().unwrap_or_default()
            )
        })
        .collect();
    let verdict = if bad.is_empty() {
        Ok(())
    } else {
        Err(WsfsError::Failed(format!(
            "gc did not complete on every store: {}",
            bad.join("; ")
        )))
    };
    (out, verdict)
}

fn holder() -> String {
    format!("{} pid {}", lease::host(), std::process::id())
}

async fn gc_store(p: &Arc<Provider>, chain: &Chain, opts: &GcOptions) -> StoreGc {
    let mut r = StoreGc {
        store: p.name.clone(),
        ..Default::default()
    };
    let lock = if opts.dry_run {
        None
    } else {
        match take_lock(p).await {
            Ok(h) => Some(h),
            Err(why) => {
                r.status = "skipped".into();
                r.reason = Some(why);
                return r;
            }
        }
    };
    let result = collect(p, chain, opts, &mut r).await;
    if let Some(l) = lock {
        l.release().await;
    }
    match result {
        Ok(()) => r.status = if opts.dry_run { "dry-run" } else { "done" }.into(),
        Err((status, why)) => {
            r.status = status.into();
            r.reason = Some(why);
        }
    }
    r
}

/// Writes the gc lock, unless another live gc holds it; checks afterwards that no other gc
/// wrote it at the same moment.
async fn take_lock(p: &Arc<Provider>) -> Result<Held, String> {
    let now = crate::ops::linux::process::unix_now();
    let me = holder();
    match lease::read(p, keys::GC_LOCK).await {
        Ok(Some(l)) if l.live(now) && l.holder != me => {
            return Err(format!(
                "another gc holds the lock ({}, until {})",
                l.holder, l.expires
            ))
        }
        Ok(_) => {}
        Err(o) => return Err(format!("cannot read the gc lock: {o}")),
    }
    let held = Held::acquire(
        std::slice::from_ref(p),
        keys::GC_LOCK.to_string(),
        Lease::new(LeaseKind::Gc, me.clone(), Vec::new()),
    )
    .await;
    if !held.holds_on(0) {
        held.release().await;
        return Err("cannot write the gc lock (read-only credentials?)".into());
    }
    match lease::read(p, keys::GC_LOCK).await {
        Ok(Some(l)) if l.holder == me => Ok(held),
        Ok(other) => {
            // Another gc wrote after us: it has the lock.
            drop(held);
            Err(format!(
                "another gc took the lock at the same time ({})",
                other.map(|l| l.holder).unwrap_or_else(|| "gone".into())
            ))
        }
        Err(o) => {
            held.release().await;
            Err(format!("cannot read the gc lock back: {o}"))
        }
    }
}

type Stop = (&'static str, String);

async fn collect(
    p: &Arc<Provider>,
    chain: &Chain,
    opts: &GcOptions,
    r: &mut StoreGc,
) -> Result<(), Stop> {
    let prog = GcProgress::new(opts.progress, &p.name);
    let inv = drain(p, opts, r, &prog).await?;
    let now = crate::ops::linux::process::unix_now();
    let leased = live_leases(&inv, now);
    r.workspaces_leased = leased
        .iter()
        .filter(|(_, ls)| ls.iter().any(|l| l.kind == LeaseKind::Mount))
        .map(|(w, _)| w.clone())
        .collect();
    // 3. Expire.
    prog.step(format!("expiring: {} refs read", inv.refs.len()));
    let cutoff = now - opts.older_than.as_secs() as i64;
    let (kept, expired) = expire(&inv, &r.workspaces_leased, cutoff, chain).await;
    r.refs_kept = kept.len() as u64;
    r.refs_expired = expired
        .iter()
        .map(|x| format!("{}/{}", x.workspace, x.layer))
        .collect();
    // 4. Mark.
    let mut manifests: BTreeSet<Digest> = BTreeSet::new();
    for k in &kept {
        if let Ok((lr, d)) = &k.parsed {
            manifests.insert(*d);
            manifests.extend(lr.pinned().unwrap_or_default().into_values());
        }
    }
    for ls in leased.values() {
        for l in ls.iter().filter(|l| l.kind == LeaseKind::Mount) {
            manifests.extend(l.manifests.iter().filter_map(|h| Digest::from_hex(h)));
        }
    }
    let mut marks = Marks::default();
    marks.add(chain, manifests, &prog).await;
    let grace_cutoff = now - opts.grace.as_secs() as i64;
    let stale_leases: Vec<String> = inv
        .leases
        .iter()
        .filter(|l| match &l.lease {
            Ok(lease) => lease.expires < grace_cutoff,
            Err(_) => l.modified < grace_cutoff,
        })
        .map(|l| l.key.clone())
        .collect();
    // 5a. Expired refs first: a gc cut short leaves no ref to deleted data.
    if !opts.dry_run {
        crate::test_hooks::pause("gc-before-ref-delete").await;
        let ref_keys: Vec<String> = expired.iter().map(|x| x.key.clone()).collect();
        let errors = delete_all(p, ref_keys, None).await;
        if !errors.is_empty() {
            r.errors.push(format!(
                "{} refs not deleted (first: {})",
                errors.len(),
                errors[0]
            ));
        }
        // 5b. A mount may have read one of those refs just before it went. It wrote its lease
        // before reading any ref (lease.rs), so the lease is visible now: keep what the expired
        // refs of its workspace named, and what it names itself.
        let late = inventory(p, None)
            .await
            .map_err(|o| ("failed", format!("cannot list leases again: {o}")))?;
        let mut more: BTreeSet<Digest> = BTreeSet::new();
        for (ws, ls) in live_leases(&late, crate::ops::linux::process::unix_now()) {
            for l in ls.iter().filter(|l| l.kind == LeaseKind::Mount) {
                more.extend(l.manifests.iter().filter_map(|h| Digest::from_hex(h)));
                if !r.workspaces_leased.contains(&ws) {
                    r.workspaces_leased.push(ws.clone());
                    for x in expired.iter().filter(|x| x.workspace == ws) {
                        if let Ok((lr, d)) = &x.parsed {
                            more.insert(*d);
                            more.extend(lr.pinned().unwrap_or_default().into_values());
                        }
                    }
                }
            }
        }
        marks.add(chain, more, &prog).await;
    }
    // 5c. Unreached manifests and chunks older than the grace period.
    prog.step("listing manifests");
    let listed_manifests = p
        .list(keys::MANIFESTS)
        .await
        .map_err(|o| ("failed", format!("cannot list manifests: {o}")))?;
    let listed_chunks = if marks.unknown.is_empty() {
        prog.step(format!(
            "listing chunks ({} manifests listed)",
            listed_manifests.len()
        ));
        p.list(keys::CHUNKS)
            .await
            .map_err(|o| ("failed", format!("cannot list chunks: {o}")))?
    } else {
        r.errors.push(format!(
            "chunks not swept: the chunks of {} kept manifest(s) are unknown ({})",
            marks.unknown.len(),
            marks.unknown.join("; ")
        ));
        Vec::new()
    };
    let (m_del, m_counts) = partition(
        &listed_manifests,
        |d| marks.manifests.contains(d),
        grace_cutoff,
    );
    let (c_del, c_counts) = partition(&listed_chunks, |d| marks.chunks.contains(d), grace_cutoff);
    r.manifests = m_counts;
    r.chunks = c_counts;
    if opts.dry_run {
        r.leases_removed = stale_leases.len() as u64;
        return Ok(());
    }
    let total = m_del.len() + c_del.len() + stale_leases.len();
    let bar = prog.deleting(total as u64);
    // Manifests before chunks, for the same reason as refs first.
    let lease_count = stale_leases.len() as u64;
    for (what, keys) in [
        ("manifests", m_del.iter().map(|o| o.key.clone()).collect()),
        ("chunks", c_del.iter().map(|o| o.key.clone()).collect()),
        ("leases", stale_leases),
    ] {
        let errors = delete_all(p, keys, bar).await;
        if what == "leases" {
            r.leases_removed = lease_count - errors.len() as u64;
        }
        if !errors.is_empty() {
            r.errors.push(format!(
                "{} {what} not deleted (first: {})",
                errors.len(),
                errors[0]
            ));
        }
    }
    drop(prog);
    if let Some(dir) = p.local_dir() {
        r.upload_leftovers_removed = sweep_upload_leftovers(dir, opts.grace);
    }
    if !r.errors.is_empty() {
        return Err(("failed", r.errors.join("; ")));
    }
    Ok(())
}

/// What gc keeps: manifests, and the chunks they name.
#[derive(Default)]
struct Marks {
    manifests: BTreeSet<Digest>,
    chunks: HashSet<Digest>,
    /// Kept manifests no store could serve: their chunks are unknown.
    unknown: Vec<String>,
}

impl Marks {
    async fn add(&mut self, chain: &Chain, manifests: BTreeSet<Digest>, prog: &GcProgress) {
        prog.marked(self.manifests.len(), self.chunks.len());
        for d in manifests {
            if !self.manifests.insert(d) {
                continue;
            }
            match chain.fetch_manifest(&d).await {
                Ok(m) => self.chunks.extend(m.value.chunks.iter().map(|c| c.hash)),
                Err(missed) => self
                    .unknown
                    .push(format!("manifest {}: {missed}", d.short())),
            }
            prog.marked(self.manifests.len(), self.chunks.len());
        }
    }
}

/// Waits until no persist lease is left on the store; returns the inventory taken after.
async fn drain(
    p: &Arc<Provider>,
    opts: &GcOptions,
    r: &mut StoreGc,
    prog: &GcProgress,
) -> Result<Inventory, Stop> {
    let started = Instant::now();
    prog.step("listing refs and leases");
    loop {
        let inv = inventory(p, None)
            .await
            .map_err(|o| ("failed", format!("cannot list workspaces: {o}")))?;
        let now = crate::ops::linux::process::unix_now();
        let persists: Vec<String> = inv
            .leases
            .iter()
            .filter_map(|l| l.lease.as_ref().ok())
            .filter(|l| l.kind == LeaseKind::Persist && l.live(now))
            .map(|l| l.holder.clone())
            .collect();
        if persists.is_empty() {
            return Ok(inv);
        }
        if opts.dry_run {
            r.errors.push(format!(
                "persists in flight ({}): a real gc would wait for them",
                persists.join(", ")
            ));
            return Ok(inv);
        }
        if started.elapsed() >= opts.wait {
            return Err((
                "skipped",
                format!(
                    "persists still in flight after {}s ({}); nothing deleted — run gc again later",
                    opts.wait.as_secs(),
                    persists.join(", ")
                ),
            ));
        }
        tracing::info!(store = %p.name, persists = %persists.join(", "), "waiting for persists in flight");
        prog.step(format!(
            "waiting for persists in flight ({})",
            persists.join(", ")
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Splits refs into kept and expired.
async fn expire(
    inv: &Inventory,
    leased: &[String],
    cutoff: i64,
    chain: &Chain,
) -> (Vec<RefObject>, Vec<RefObject>) {
    let mut keep: BTreeMap<(String, String), bool> = inv
        .refs
        .iter()
        .map(|x| {
            (
                (x.workspace.clone(), x.layer.clone()),
                leased.contains(&x.workspace) || x.created() > cutoff,
            )
        })
        .collect();
    // A kept ref without pins (older versions) needs its parents by name: keep their refs.
    loop {
        let mut more = Vec::new();
        for x in &inv.refs {
            if !keep[&(x.workspace.clone(), x.layer.clone())] {
                continue;
            }
            let Ok((lr, d)) = &x.parsed else { continue };
            if !lr.ancestors.is_empty() {
                continue;
            }
            if let Ok(m) = chain.fetch_manifest(d).await {
                for parent in m.value.parents {
                    let k = (x.workspace.clone(), parent);
                    if keep.get(&k) == Some(&false) {
                        more.push(k);
                    }
                }
            }
        }
        if more.is_empty() {
            break;
        }
        for k in more {
            keep.insert(k, true);
        }
    }
    inv.refs
        .iter()
        .cloned()
        .partition(|x| keep[&(x.workspace.clone(), x.layer.clone())])
}

/// Splits listed objects into those to delete and the counts of the rest.
fn partition(
    listed: &[Listed],
    reached: impl Fn(&Digest) -> bool,
    grace_cutoff: i64,
) -> (Vec<&Listed>, Counts) {
    let mut c = Counts::default();
    let mut del = Vec::new();
    for o in listed {
        match digest_of_key(&o.key) {
            Some(d) if reached(&d) => {
                c.kept += 1;
                c.kept_bytes += o.size;
            }
            _ if o.modified > grace_cutoff => c.spared_young += 1,
            _ => {
                c.deleted += 1;
                c.deleted_bytes += o.size;
                del.push(o);
            }
        }
    }
    (del, c)
}

/// Deletes `keys` on `p` (in bulk where the store can); returns what failed.
async fn delete_all(
    p: &Provider,
    keys: Vec<String>,
    bar: Option<&indicatif::ProgressBar>,
) -> Vec<String> {
    if keys.is_empty() {
        return Vec::new();
    }
    let tick = || {
        if let Some(b) = bar {
            b.inc(1);
        }
    };
    match p.delete_many(keys, &tick).await {
        Ok(errors) => errors,
        Err(o) => vec![format!("deletion stopped: {o}")],
    }
}

/// Removes `name#N` files (uploads of a killed process, which object listings do not show)
/// older than `grace` under a `file://` store's `chunks/` and `manifests/`.
fn sweep_upload_leftovers(dir: &std::path::Path, grace: Duration) -> u64 {
    let mut n = 0;
    for sub in [keys::CHUNKS, keys::MANIFESTS] {
        for e in walkdir::WalkDir::new(dir.join(sub))
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_file())
        {
            let name = e.file_name().to_string_lossy();
            let leftover = name
                .split_once('#')
                .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            let old = e
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= grace);
            if leftover && old && std::fs::remove_file(e.path()).is_ok() {
                n += 1;
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_keeps_reached_and_young_objects() {
        let d1 = Digest::of(b"1");
        let d2 = Digest::of(b"2");
        let d3 = Digest::of(b"3");
        let listed = vec![
            Listed {
                key: keys::chunk(&d1),
                size: 10,
                modified: 0,
            },
            Listed {
                key: keys::chunk(&d2),
                size: 20,
                modified: 100,
            },
            Listed {
                key: keys::chunk(&d3),
                size: 30,
                modified: 0,
            },
            Listed {
                key: "chunks/zz/garbage".into(),
                size: 5,
                modified: 0,
            },
        ];
        let (del, c) = partition(&listed, |d| *d == d1, 50);
        assert_eq!(c.kept, 1);
        assert_eq!(c.kept_bytes, 10);
        assert_eq!(c.spared_young, 1);
        assert_eq!(c.deleted, 2);
        assert_eq!(c.deleted_bytes, 35);
        assert_eq!(del.len(), 2);
    }

    #[test]
    fn upload_leftovers_are_only_hash_number_files() {
        let t = tempfile::tempdir().expect("tempdir");
        let c = t.path().join("chunks/ab");
        std::fs::create_dir_all(&c).expect("mkdir");
        for n in ["abc#1", "abc#12", "abc", "abc#x", "ab#"] {
            std::fs::write(c.join(n), b"x").expect("write");
        }
        assert_eq!(sweep_upload_leftovers(t.path(), Duration::ZERO), 2);
        assert!(c.join("abc").exists() && c.join("abc#x").exists() && c.join("ab#").exists());
    }
}
