//! Layers: CircleCI-style workspace semantics.
//!
//! A layer records its parents (the layers its job had attached). A mount of some layers takes
//! their ancestor closure, orders it topologically (ancestors first, ties broken by name, so the
//! result is deterministic) and applies it: a descendant's entry overrides its ancestors'. The same
//! path written by two layers neither of which descends from the other is a conflict — unless both
//! wrote the same thing (same kind, mode and content). Directories merge.

use crate::error::WsfsError;
use crate::fs::InodeTable;
use crate::manifest::{ChunkInfo, Digest, Entry, EntryKind, Manifest, Opened, RootMeta};
use crate::store::{Chain, ResolvedLayer};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// Fetches the requested layers and all their ancestors; returns them ancestors-first.
///
/// The requested layers are found by their current refs. Their ancestors are the versions the
/// refs pin (the manifests the layers were persisted against), fetched by digest, so
/// re-persisting a parent later does not change what a child's mount shows. A ref without pins
/// (written by an older version) has its parents resolved by name, with a warning. Two layers
/// that pin different versions of the same ancestor (or pin another version than is requested)
/// are a conflict: the mount is refused, naming both.
pub async fn resolve_closure(
    chain: &Chain,
    workspace: &str,
    requested: &[String],
) -> Result<Vec<ResolvedLayer>, WsfsError> {
    if requested.is_empty() {
        return Err(WsfsError::Usage(
            "no --layer given: name at least one layer".into(),
        ));
    }
    let mut found: BTreeMap<String, ResolvedLayer> = BTreeMap::new();
    // Which version of each layer the closure needs, and who asked for it.
    let mut want: BTreeMap<String, (Digest, String)> = BTreeMap::new();
    let mut need = |name: &str, d: Digest, by: &str| -> Result<(), WsfsError> {
        match want.get(name) {
            Some((have, who)) if *have != d => Err(WsfsError::Conflict(format!(
                "layer {name:?} is needed in two versions: manifest {} ({who}) and manifest {} ({by}); persist the downstream layers again against one version",
                have.short(),
                d.short()
            ))),
            Some(_) => Ok(()),
            None => {
                want.insert(name.to_string(), (d, by.to_string()));
                Ok(())
            }
        }
    };
    // The requested layers, by their refs; unpinned parents by name.
    let mut by_name: Vec<(String, String)> = requested
        .iter()
        .map(|r| (r.clone(), "requested".to_string()))
        .collect();
    while let Some((name, by)) = by_name.pop() {
        if found.contains_key(&name) {
            continue;
        }
        let layer = chain.resolve_layer(workspace, &name).await?;
        need(&name, layer.digest, &by)?;
        if layer.ancestors.is_empty() {
            if !layer.manifest.head.parents.is_empty() {
                tracing::warn!(
                    layer = %name,
                    parents = ?layer.manifest.head.parents,
                    "the ref of this layer pins no parent versions (persisted by an older wsfs): its parents are resolved by name, as they are now"
                );
            }
            for p in &layer.manifest.head.parents {
                by_name.push((p.clone(), format!("parent of {name}, by name")));
            }
        } else {
            for (a, d) in &layer.ancestors {
                need(a, *d, &format!("pinned by {name}"))?;
            }
        }
        found.insert(name, layer);
    }
    // Pinned ancestors not requested: by digest.
    for (name, (digest, by)) in &want {
        if let Some(l) = found.get(name) {
            if l.digest != *digest {
                return Err(WsfsError::Conflict(format!(
                    "layer {name:?} is requested at manifest {} but {by} at manifest {}; persist the downstream layers again against one version",
                    l.digest.short(),
                    digest.short()
                )));
            }
            continue;
        }
        let m = chain.fetch_manifest_bytes(digest).await.map_err(|mut m| {
            m.what = format!("manifest {} of layer {name:?} ({by})", digest.short());
            WsfsError::from_missed(&m)
        })?;
        let (manifest, bytes) = m.value;
        if manifest.head.workspace != workspace || manifest.head.layer != *name {
            return Err(WsfsError::Integrity(format!(
                "the manifest {by} as {name:?} is layer {:?} of workspace {:?}",
                manifest.head.layer, manifest.head.workspace
            )));
        }
        found.insert(
            name.clone(),
            ResolvedLayer {
                digest: *digest,
                created: manifest.head.created,
                manifest,
                bytes,
                ancestors: BTreeMap::new(),
                signer: by.clone(),
            },
        );
    }
    // Every parent a pinned manifest names must be in the closure (pins are whole closures).
    for (name, l) in &found {
        for p in &l.manifest.head.parents {
            if !found.contains_key(p) {
                return Err(WsfsError::Integrity(format!(
                    "layer {name:?} names parent {p:?}, which no ref pins: the pins are incomplete"
                )));
            }
        }
    }
    topo_order(found)
}

/// The manifests of a new layer's parents and all their ancestors (name → digest), as the
/// stores hold them now: what its ref pins. Every parent must exist.
pub async fn pins_for(
    chain: &Chain,
    workspace: &str,
    parents: &[String],
) -> Result<BTreeMap<String, Digest>, WsfsError> {
    if parents.is_empty() {
        return Ok(BTreeMap::new());
    }
    let closure = resolve_closure(chain, workspace, parents)
        .await
        .map_err(|e| match e {
            WsfsError::Missing(m) => WsfsError::Missing(format!(
                "a --parent layer is missing: {m} (a layer's parents are the layers its job attached)"
            )),
            other => other,
        })?;
    Ok(closure
        .into_iter()
        .map(|l| (l.manifest.head.layer.clone(), l.digest))
        .collect())
}

/// Kahn's algorithm over the closure; among layers ready at the same time the smallest name
/// goes first.
pub fn topo_order(
    mut layers: BTreeMap<String, ResolvedLayer>,
) -> Result<Vec<ResolvedLayer>, WsfsError> {
    let mut pending: BTreeMap<String, usize> = layers
        .iter()
        .map(|(n, l)| {
            (
                n.clone(),
                l.manifest
                    .head
                    .parents
                    .iter()
                    .collect::<BTreeSet<_>>()
                    .len(),
            )
        })
        .collect();
    let mut children: HashMap<String, Vec<String>> = HashMap::new();
    for (n, l) in &layers {
        for p in l.manifest.head.parents.iter().collect::<BTreeSet<_>>() {
            children.entry(p.clone()).or_default().push(n.clone());
        }
    }
    let mut ready: BTreeSet<String> = pending
        .iter()
        .filter(|(_, c)| **c == 0)
        .map(|(n, _)| n.clone())
        .collect();
    let mut out = Vec::with_capacity(layers.len());
    while let Some(n) = ready.pop_first() {
        pending.remove(&n);
        for c in children.get(&n).into_iter().flatten() {
            if let Some(k) = pending.get_mut(c) {
                *k -= 1;
                if *k == 0 {
                    ready.insert(c.clone());
                }
            }
        }
        if let Some(l) = layers.remove(&n) {
            out.push(l);
        }
    }
    if !pending.is_empty() {
        return Err(WsfsError::Integrity(format!(
            "layer parents form a cycle among: {}",
            pending.keys().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(out)
}

/// The merged tree of several layers, ready for the inode table.
pub struct Merged {
    pub entries: Vec<Entry>,
    pub chunks: Vec<ChunkInfo>,
    /// Each chunk's frame table, from a layer that recorded one (empty: read whole).
    pub frames: Vec<Vec<ChunkInfo>>,
    /// The root directory's metadata, from the last layer applied.
    pub root: RootMeta,
}

fn same_content(a: &Entry, b: &Entry) -> bool {
    a.kind == b.kind
        && a.mode == b.mode
        && match a.kind {
            EntryKind::Dir => true,
            EntryKind::Symlink => a.target == b.target,
            EntryKind::File => a.size == b.size && a.content == b.content,
        }
}

/// The tree a mount of these layers (ancestors first) serves. One version-2 layer is served
/// from its own index in place; a version-1 layer is built into one; several layers are
/// decoded whole, merged ([`merge`]) and built.
/// Also says whether the tree is served in place.
pub fn tree_of(mut layers: Vec<Opened>) -> Result<(InodeTable, bool), WsfsError> {
    if layers.len() == 1 {
        if let Some(l) = layers.pop() {
            let in_place = l.in_place();
            return Ok((l.into_tree()?, in_place));
        }
    }
    let manifests = layers
        .into_iter()
        .map(Opened::into_manifest)
        .collect::<Result<Vec<Manifest>, _>>()?;
    let merged = merge(manifests)?;
    Ok((
        InodeTable::build(&merged.entries, merged.chunks, &merged.frames, merged.root)?,
        false,
    ))
}

/// Merges layers given ancestors-first. Conflicts list every path and the two layers.
/// A single layer is taken as it is: a validated manifest is already a consistent tree, and
/// copying 50,000 entries through the merge was a third of mount-ready time.
pub fn merge(mut layers: Vec<Manifest>) -> Result<Merged, WsfsError> {
    if layers.len() == 1 {
        if let Some(m) = layers.pop() {
            return Ok(Merged {
                entries: m.entries,
                chunks: m.chunks,
                frames: m.frames,
                root: m.root,
            });
        }
    }
    let layers = &layers[..];
    let names: Vec<&str> = layers.iter().map(|m| m.layer.as_str()).collect();
    let index: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    // ancestors[i] = set of layer indexes that are ancestors of layer i.
    let mut ancestors: Vec<HashSet<usize>> = vec![HashSet::new(); layers.len()];
    for (i, m) in layers.iter().enumerate() {
        for p in &m.parents {
            if let Some(&pi) = index.get(p.as_str()) {
                let inherited: Vec<usize> = ancestors[pi].iter().copied().collect();
                ancestors[i].insert(pi);
                ancestors[i].extend(inherited);
            }
        }
    }
    // Chunk tables are concatenated, deduplicated by digest.
    let mut chunks: Vec<ChunkInfo> = Vec::new();
    let mut frames: Vec<Vec<ChunkInfo>> = Vec::new();
    let mut chunk_index: HashMap<Digest, u32> = HashMap::new();
    let mut merged: BTreeMap<Vec<u8>, (Entry, usize)> = BTreeMap::new();
    let mut conflicts: Vec<String> = Vec::new();
    for (li, m) in layers.iter().enumerate() {
        let remap: Vec<u32> = m
            .chunks
            .iter()
            .enumerate()
            .map(|(ci, c)| {
                let at = *chunk_index.entry(c.hash).or_insert_with(|| {
                    chunks.push(*c);
                    frames.push(Vec::new());
                    (chunks.len() - 1) as u32
                });
                // The first layer that recorded frames for the chunk (with the stored length
                // they add up to) gives its table.
                let f = m.frames_of(ci);
                let slot = &mut frames[at as usize];
                if slot.is_empty() && !f.is_empty() && chunks[at as usize] == *c {
                    *slot = f.to_vec();
                }
                at
            })
            .collect();
        for e in &m.entries {
            let mut e = e.clone();
            for x in &mut e.extents {
                x.chunk = remap[x.chunk as usize];
            }
            match merged.get(&e.path) {
                None => {
                    merged.insert(e.path.clone(), (e, li));
                }
                Some((prev, pl)) => {
                    let descends = ancestors[li].contains(pl);
                    if !descends && !same_content(prev, &e) {
                        if !(prev.kind == EntryKind::Dir && e.kind == EntryKind::Dir) {
                            conflicts.push(format!(
                                "{} (layers {} and {})",
                                e.path_lossy(),
                                names[*pl],
                                names[li]
                            ));
                        }
                        continue;
                    }
                    merged.insert(e.path.clone(), (e, li));
                }
            }
        }
    }
    if !conflicts.is_empty() {
        return Err(WsfsError::Conflict(format!(
            "{} conflicting path(s) between layers that do not descend from one another:\n  {}",
            conflicts.len(),
            conflicts.join("\n  ")
        )));
    }
    // A descendant that replaced a directory with a file or symlink hides the directory's old
    // contents; drop every entry whose parent is no longer a directory.
    let mut entries: Vec<Entry> = Vec::with_capacity(merged.len());
    let mut dirs: HashSet<Vec<u8>> = HashSet::new();
    for (path, (e, _)) in merged {
        let parent_ok = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => dirs.contains(&path[..i]),
            None => true,
        };
        if !parent_ok {
            continue;
        }
        if e.kind == EntryKind::Dir {
            dirs.insert(path);
        }
        entries.push(e);
    }
    Ok(Merged {
        entries,
        chunks,
        frames,
        root: layers.last().map(|m| m.root).unwrap_or_default(),
    })
}
