//! `wsfs ls`: the workspaces on the stores, their layers (with parents and pins), when each was
//! committed, how big it is, and which stores hold a ref to it. The JSON form is stable
//! (docs/operations.md).

use super::{inventory, live_leases, Inventory};
use crate::error::WsfsError;
use crate::manifest::Digest;
use crate::store::{Chain, Provider};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

#[derive(Clone, Debug, Serialize)]
pub struct StoreRef {
    pub store: String,
    pub manifest: String,
    pub created: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct LayerInfo {
    pub layer: String,
    /// The manifest of the first store (in chain order) that has a readable ref.
    pub manifest: String,
    pub created: i64,
    pub parents: Vec<String>,
    /// Pinned ancestors (name → manifest); empty for refs of older versions.
    pub pinned: BTreeMap<String, String>,
    pub manifest_bytes: u64,
    /// Bytes of file content.
    pub logical_bytes: u64,
    /// Stored (compressed) bytes of its distinct chunks.
    pub stored_bytes: u64,
    pub chunks: u64,
    pub files: u64,
    /// Every store with a ref to this layer, and what its ref names there.
    pub stores: Vec<StoreRef>,
    /// Set when the manifest could not be read (then the sizes are 0).
    pub problem: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LeaseInfo {
    pub store: String,
    pub kind: String,
    pub holder: String,
    pub expires: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct WorkspaceInfo {
    pub workspace: String,
    pub layers: Vec<LayerInfo>,
    /// Live leases (mounts, persists in flight) on any store.
    pub leases: Vec<LeaseInfo>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Listing {
    pub workspaces: Vec<WorkspaceInfo>,
    /// Stores that could not be listed, with the reason.
    pub unreachable: Vec<String>,
}

/// (workspace, layer) → each store's ref (in chain order) and the ancestors it pins.
type RefsByLayer = BTreeMap<(String, String), Vec<(StoreRef, BTreeMap<String, String>)>>;

/// What a manifest says about its layer's size.
struct Sizes {
    manifest_bytes: u64,
    logical_bytes: u64,
    stored_bytes: u64,
    chunks: u64,
    files: u64,
    parents: Vec<String>,
}

pub async fn list(
    providers: &[Arc<Provider>],
    workspace: Option<&str>,
) -> Result<Listing, WsfsError> {
    if let Some(ws) = workspace {
        crate::manifest::names::validate_name("workspace", ws).map_err(WsfsError::Usage)?;
    }
    let now = crate::ops::linux::process::unix_now();
    let mut invs: Vec<(Arc<Provider>, Inventory)> = Vec::new();
    let mut unreachable = Vec::new();
    for p in providers {
        match inventory(p, workspace).await {
            Ok(inv) => invs.push((p.clone(), inv)),
            Err(o) => unreachable.push(format!("{}: {o}", p.name)),
        }
    }
    if invs.is_empty() {
        return Err(WsfsError::Missing(format!(
            "no store could be listed: {}",
            unreachable.join("; ")
        )));
    }
    // (workspace, layer) → refs per store, in chain order.
    let mut layers: RefsByLayer = BTreeMap::new();
    let mut leases: BTreeMap<String, Vec<LeaseInfo>> = BTreeMap::new();
    for (p, inv) in &invs {
        for r in &inv.refs {
            if let Ok((lr, d)) = &r.parsed {
                layers
                    .entry((r.workspace.clone(), r.layer.clone()))
                    .or_default()
                    .push((
                        StoreRef {
                            store: p.name.clone(),
                            manifest: d.to_hex(),
                            created: lr.created,
                        },
                        lr.ancestors.clone(),
                    ));
            }
        }
        for (ws, ls) in live_leases(inv, now) {
            for l in ls {
                leases.entry(ws.clone()).or_default().push(LeaseInfo {
                    store: p.name.clone(),
                    kind: format!("{:?}", l.kind).to_lowercase(),
                    holder: l.holder,
                    expires: l.expires,
                });
            }
        }
    }
    let chain = Chain::from_arcs(providers.to_vec());
    let mut sizes: BTreeMap<String, Result<Sizes, String>> = BTreeMap::new();
    let digests: BTreeSet<String> = layers
        .values()
        .flat_map(|v| v.iter().map(|(s, _)| s.manifest.clone()))
        .collect();
    for hex in digests {
        let Some(d) = Digest::from_hex(&hex) else {
            continue;
        };
        let r = match chain.fetch_manifest_bytes(&d).await {
            Ok(s) => {
                let (m, bytes) = s.value;
                let parents = m.head.parents.clone();
                m.into_tree().map_err(|e| e.to_string()).map(|t| Sizes {
                    manifest_bytes: bytes.len() as u64,
                    logical_bytes: t.total_bytes(),
                    stored_bytes: t
                        .chunk_table()
                        .iter()
                        .map(|c| u64::from(c.stored_len))
                        .sum(),
                    chunks: t.chunk_count() as u64,
                    files: t
                        .iter()
                        .filter(|(_, n)| n.kind() == crate::manifest::EntryKind::File)
                        .count() as u64,
                    parents,
                })
            }
            Err(missed) => Err(missed.to_string()),
        };
        sizes.insert(hex, r);
    }
    let mut by_ws: BTreeMap<String, Vec<LayerInfo>> = BTreeMap::new();
    for ((ws, layer), refs) in layers {
        let Some((first, pinned)) = refs.first().cloned() else {
            continue;
        };
        let mut info = LayerInfo {
            layer,
            manifest: first.manifest.clone(),
            created: first.created,
            parents: Vec::new(),
            pinned,
            manifest_bytes: 0,
            logical_bytes: 0,
            stored_bytes: 0,
            chunks: 0,
            files: 0,
            stores: refs.into_iter().map(|(s, _)| s).collect(),
            problem: None,
        };
        match sizes.get(&first.manifest) {
            Some(Ok(z)) => {
                info.manifest_bytes = z.manifest_bytes;
                info.logical_bytes = z.logical_bytes;
                info.stored_bytes = z.stored_bytes;
                info.chunks = z.chunks;
                info.files = z.files;
                info.parents = z.parents.clone();
            }
            Some(Err(e)) => info.problem = Some(format!("manifest unreadable: {e}")),
            None => info.problem = Some("manifest not fetched".into()),
        }
        by_ws.entry(ws).or_default().push(info);
    }
    for ws in leases.keys() {
        by_ws.entry(ws.clone()).or_default();
    }
    if let Some(ws) = workspace {
        if !by_ws.contains_key(ws) {
            return Err(WsfsError::Missing(format!(
                "workspace {ws:?} has no layers on any store{}",
                if unreachable.is_empty() {
                    String::new()
                } else {
                    format!(" (not listed: {})", unreachable.join("; "))
                }
            )));
        }
    }
    Ok(Listing {
        workspaces: by_ws
            .into_iter()
            .map(|(ws, layers)| WorkspaceInfo {
                leases: leases.remove(&ws).unwrap_or_default(),
                workspace: ws,
                layers,
            })
            .collect(),
        unreachable,
    })
}

fn human(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..=1023 => format!("{bytes} B"),
        1024..=1_048_575 => format!("{:.1} KiB", b / 1024.0),
        1_048_576..=1_073_741_823 => format!("{:.1} MiB", b / 1_048_576.0),
        _ => format!("{:.2} GiB", b / 1_073_741_824.0),
    }
}

/// The listing as a table (one line per layer, leases under their workspace).
pub fn render(l: &Listing) -> String {
    let now = crate::ops::linux::process::unix_now();
    let mut out = String::new();
    out.push_str(&format!(
        "{:<20} {:<20} {:>6} {:>8} {:>11} {:>11} {:>7}  {:<22} STORES\n",
        "WORKSPACE", "LAYER", "AGE", "FILES", "LOGICAL", "STORED", "CHUNKS", "PARENTS (pinned)"
    ));
    for ws in &l.workspaces {
        for layer in &ws.layers {
            let parents = if layer.parents.is_empty() {
                "-".to_string()
            } else {
                layer
                    .parents
                    .iter()
                    .map(|p| {
                        if layer.pinned.contains_key(p) {
                            p.clone()
                        } else {
                            format!("{p} (by name)")
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            };
            out.push_str(&format!(
                "{:<20} {:<20} {:>6} {:>8} {:>11} {:>11} {:>7}  {:<22} {}\n",
                ws.workspace,
                layer.layer,
                super::age(now - layer.created),
                layer.files,
                human(layer.logical_bytes),
                human(layer.stored_bytes),
                layer.chunks,
                parents,
                layer
                    .stores
                    .iter()
                    .map(|s| {
                        if s.manifest == layer.manifest {
                            s.store.clone()
                        } else {
                            format!("{} (another version: {})", s.store, &s.manifest[..12])
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            if let Some(p) = &layer.problem {
                out.push_str(&format!("  PROBLEM: {p}\n"));
            }
        }
        for lease in &ws.leases {
            out.push_str(&format!(
                "  lease on {}: {} by {} (for {} more)\n",
                lease.store,
                lease.kind,
                lease.holder,
                super::age(lease.expires - now)
            ));
        }
    }
    for u in &l.unreachable {
        out.push_str(&format!("NOT LISTED: {u}\n"));
    }
    out
}
