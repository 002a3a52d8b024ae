//! `wsfs verify`: per store, is every requested layer complete there (ref → manifest → every
//! chunk present)? `--deep` downloads and hashes every chunk instead of a HEAD.

use crate::error::WsfsError;
use crate::manifest::{self, keys, Digest, LayerRef, Manifest};
use crate::store::verified::verify_blob;
use crate::store::{Outcome, Provider, VerifiedChunk};
use futures::StreamExt;
use std::collections::BTreeSet;
use std::sync::Arc;

#[derive(Debug)]
pub enum LayerState {
    Complete {
        chunks: usize,
    },
    Incomplete {
        chunks: usize,
        missing: Vec<Digest>,
        problems: Vec<String>,
    },
    NoRef(Outcome),
    BadManifest(String),
}

#[derive(Debug)]
pub struct StoreReport {
    pub store: String,
    pub layers: Vec<(String, LayerState)>,
}

impl StoreReport {
    pub fn complete(&self) -> bool {
        self.layers
            .iter()
            .all(|(_, s)| matches!(s, LayerState::Complete { .. }))
    }
}

async fn manifest_on(p: &Provider, ws: &str, layer: &str) -> Result<Manifest, LayerState> {
    let r = p
        .get(&keys::layer_ref(ws, layer))
        .await
        .map_err(LayerState::NoRef)?;
    let (_, digest) = LayerRef::parse(&r).map_err(|e| LayerState::BadManifest(e.to_string()))?;
    let body = p
        .get(&keys::manifest(&digest))
        .await
        .map_err(|o| LayerState::BadManifest(format!("manifest {}: {o}", digest.short())))?;
    verify_blob(&digest, &body)
        .map_err(|o| LayerState::BadManifest(format!("manifest {}: {o}", digest.short())))?;
    manifest::decode(&body).map_err(|e| LayerState::BadManifest(e.to_string()))
}

async fn check_layer(p: &Provider, ws: &str, layer: &str, deep: bool) -> (LayerState, Vec<String>) {
    let m = match manifest_on(p, ws, layer).await {
        Ok(m) => m,
        Err(s) => return (s, Vec::new()),
    };
    let results: Vec<(Digest, Result<(), String>)> = futures::stream::iter(m.chunks.iter())
        .map(|c| async move {
            let key = keys::chunk(&c.hash);
            let r = if deep {
                match p.get(&key).await {
                    Ok(b) => VerifiedChunk::from_stored(c, &b)
                        .map(|_| ())
                        .map_err(|o| o.to_string()),
                    Err(o) => Err(o.to_string()),
                }
            } else {
                match p.head(&key).await {
                    Ok(size) if size == u64::from(c.stored_len) => Ok(()),
                    // Another length may be another valid encoding: only the content decides.
                    Ok(size) => match p.get(&key).await {
                        Ok(b) => VerifiedChunk::from_stored(c, &b).map(|_| ()).map_err(|o| {
                            format!("stored size {size}, expected {}: {o}", c.stored_len)
                        }),
                        Err(o) => Err(o.to_string()),
                    },
                    Err(o) => Err(o.to_string()),
                }
            };
            (c.hash, r)
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut missing = Vec::new();
    let mut problems = Vec::new();
    for (d, r) in results {
        if let Err(why) = r {
            if problems.len() < 5 {
                problems.push(format!("chunk {}: {why}", d.short()));
            }
            missing.push(d);
        }
    }
    let parents = m.parents.clone();
    let state = if missing.is_empty() {
        LayerState::Complete {
            chunks: m.chunks.len(),
        }
    } else {
        LayerState::Incomplete {
            chunks: m.chunks.len(),
            missing,
            problems,
        }
    };
    (state, parents)
}

/// Verifies the requested layers and their ancestors on every store, independently.
pub async fn verify(
    providers: &[Arc<Provider>],
    ws: &str,
    layers: &[String],
    deep: bool,
) -> Vec<StoreReport> {
    let mut out = Vec::new();
    for p in providers {
        let mut seen = BTreeSet::new();
        let mut queue: Vec<String> = layers.to_vec();
        let mut rep = StoreReport {
            store: p.name.clone(),
            layers: Vec::new(),
        };
        while let Some(l) = queue.pop() {
            if !seen.insert(l.clone()) {
                continue;
            }
            let (state, parents) = check_layer(p, ws, &l, deep).await;
            queue.extend(parents);
            rep.layers.push((l, state));
        }
        rep.layers.sort_by(|a, b| a.0.cmp(&b.0));
        out.push(rep);
    }
    out
}

/// Renders the reports and decides the exit: Ok when every layer is complete on at least one
/// store (or, with `all`, on every store).
pub fn judge(reports: &[StoreReport], all: bool) -> (String, Result<(), WsfsError>) {
    let mut text = String::new();
    let mut layer_names: BTreeSet<&str> = BTreeSet::new();
    for r in reports {
        text.push_str(&format!(
            "{}: {}\n",
            r.store,
            if r.complete() {
                "complete"
            } else {
                "INCOMPLETE"
            }
        ));
        for (l, s) in &r.layers {
            layer_names.insert(l);
            let line = match s {
                LayerState::Complete { chunks } => format!("complete ({chunks} chunks)"),
                LayerState::Incomplete {
                    chunks,
                    missing,
                    problems,
                } => format!(
                    "incomplete: {} of {chunks} chunks missing or bad [{}]",
                    missing.len(),
                    problems.join("; ")
                ),
                LayerState::NoRef(o) => format!("no ref ({o})"),
                LayerState::BadManifest(e) => format!("manifest unusable ({e})"),
            };
            text.push_str(&format!("  layer {l}: {line}\n"));
        }
    }
    let complete_somewhere = |l: &str| {
        reports.iter().any(|r| {
            r.layers
                .iter()
                .any(|(n, s)| n == l && matches!(s, LayerState::Complete { .. }))
        })
    };
    let verdict = if all {
        if reports.iter().all(|r| r.complete()) {
            Ok(())
        } else {
            Err(WsfsError::Missing(
                "not every store is complete (--all)".into(),
            ))
        }
    } else {
        let bad: Vec<&str> = layer_names
            .iter()
            .copied()
            .filter(|l| !complete_somewhere(l))
            .collect();
        if bad.is_empty() && !layer_names.is_empty() {
            Ok(())
        } else {
            Err(WsfsError::Missing(format!(
                "no store holds a complete copy of layer(s): {}",
                bad.join(", ")
            )))
        }
    };
    (text, verdict)
}
