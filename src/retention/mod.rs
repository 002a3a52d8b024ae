//! What is stored, for how long, and what may go: `wsfs ls` (inventory), `wsfs rm` (refs),
//! `wsfs gc` (expiry, then mark and sweep), and the leases that make gc safe next to live
//! mounts and persists in flight. See docs/architecture.md, "Stored data lifecycle".

pub mod gc;
pub mod gc_progress;
pub mod gc_text;
pub mod lease;
pub mod ls;
pub mod rm;

use crate::manifest::{keys, Digest, LayerRef};
use crate::store::{Listed, Outcome, Provider};
use lease::Lease;
use std::collections::BTreeMap;

/// A ref object as listed on one store.
#[derive(Clone, Debug)]
pub struct RefObject {
    pub workspace: String,
    pub layer: String,
    pub key: String,
    /// Last modified, Unix seconds.
    pub modified: i64,
    /// The parsed ref and its manifest digest; `Err` for an unreadable or damaged ref.
    pub parsed: Result<(LayerRef, Digest), String>,
}

impl RefObject {
    /// When the layer was committed: the ref's own time, else the object's.
    pub fn created(&self) -> i64 {
        match &self.parsed {
            Ok((r, _)) => r.created,
            Err(_) => self.modified,
        }
    }
}

/// A lease object as listed on one store.
#[derive(Clone, Debug)]
pub struct LeaseObject {
    pub workspace: String,
    pub key: String,
    pub modified: i64,
    pub lease: Result<Lease, String>,
}

/// Refs and leases of one store (everything under `workspaces/`).
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pub refs: Vec<RefObject>,
    pub leases: Vec<LeaseObject>,
    /// Objects under `workspaces/` that are neither.
    pub other: Vec<Listed>,
}

/// Concurrent small GETs (refs, leases) during an inventory.
const INVENTORY_CONCURRENCY: usize = 16;

/// Lists and reads the refs and leases of one store, optionally of one workspace.
pub async fn inventory(p: &Provider, workspace: Option<&str>) -> Result<Inventory, Outcome> {
    use futures::StreamExt;
    let prefix = match workspace {
        Some(ws) => format!("{}/{ws}", keys::WORKSPACES),
        None => keys::WORKSPACES.to_string(),
    };
    let listed = p.list(&prefix).await?;
    let mut inv = Inventory::default();
    let mut ref_keys = Vec::new();
    let mut lease_keys = Vec::new();
    for o in listed {
        let parts: Vec<&str> = o.key.split('/').collect();
        match parts.as_slice() {
            [_, ws, "layers", layer] => ref_keys.push((ws.to_string(), layer.to_string(), o)),
            [_, ws, "leases", _] => lease_keys.push((ws.to_string(), o)),
            _ => inv.other.push(o),
        }
    }
    inv.refs = futures::stream::iter(ref_keys)
        .map(|(ws, layer, o)| async move {
            let parsed = match p
                .get_capped(&o.key, crate::manifest::layer_ref::MAX_REF_BYTES as u64)
                .await
            {
                Ok(b) => LayerRef::parse(&b).map_err(|e| e.to_string()),
                Err(o) => Err(o.to_string()),
            };
            RefObject {
                workspace: ws,
                layer,
                key: o.key,
                modified: o.modified,
                parsed,
            }
        })
        .buffer_unordered(INVENTORY_CONCURRENCY)
        .collect()
        .await;
    inv.refs
        .sort_by(|a, b| (&a.workspace, &a.layer).cmp(&(&b.workspace, &b.layer)));
    inv.leases = futures::stream::iter(lease_keys)
        .map(|(ws, o)| async move {
            let lease = match lease::read(p, &o.key).await {
                Ok(Some(l)) => Ok(l),
                Ok(None) => Err("gone".to_string()),
                Err(e) => Err(e.to_string()),
            };
            LeaseObject {
                workspace: ws,
                key: o.key,
                modified: o.modified,
                lease,
            }
        })
        .buffer_unordered(INVENTORY_CONCURRENCY)
        .collect()
        .await;
    inv.leases.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(inv)
}

/// The digest in a `chunks/ab/<hex>` or `manifests/<hex>` key.
pub fn digest_of_key(key: &str) -> Option<Digest> {
    Digest::from_hex(key.rsplit('/').next()?)
}

/// Live leases by workspace, at `now`.
pub fn live_leases(inv: &Inventory, now: i64) -> BTreeMap<String, Vec<Lease>> {
    let mut out: BTreeMap<String, Vec<Lease>> = BTreeMap::new();
    for l in &inv.leases {
        if let Ok(lease) = &l.lease {
            if lease.live(now) {
                out.entry(l.workspace.clone())
                    .or_default()
                    .push(lease.clone());
            }
        }
    }
    out
}

/// "3h", "2d" from seconds: ages in listings.
pub fn age(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_ages() {
        let d = Digest::of(b"x");
        assert_eq!(digest_of_key(&keys::chunk(&d)), Some(d));
        assert_eq!(digest_of_key(&keys::manifest(&d)), Some(d));
        assert_eq!(digest_of_key("chunks/ab/not-hex"), None);
        assert_eq!(age(5), "5s");
        assert_eq!(age(3600), "60m");
        assert_eq!(age(3 * 86_400), "3d");
    }
}
