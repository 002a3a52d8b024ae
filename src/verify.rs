//! `wsfs verify`: per store, is every requested layer complete there (ref → manifest → every
//! chunk present)? `--deep` downloads and hashes every chunk instead of a HEAD.

use crate::error::WsfsError;
use crate::manifest::layer_ref::MAX_REF_BYTES;
use crate::manifest::{self, keys, Digest, LayerRef, Manifest};
use crate::store::chain::chunk_cap;
use crate::store::verified::verify_blob;
use crate::store::{Outcome, Provider, VerifiedChunk};
use futures::StreamExt;
use std::collections::BTreeSet;
use std::sync::Arc;

#[derive(Debug)]
pub enum LayerState {
    Complete {
        chunks: usize,
        /// Who signed the ref there: a key id, or `unsigned`.
        signer: String,
    },
    Incomplete {
        chunks: usize,
        missing: Vec<Digest>,
        /// How many of `missing` were there but damaged (not just absent).
        corrupt: usize,
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

/// The layer's manifest on `p` and who signed its ref there. With `trust`, a ref not signed by
/// a trusted key is damaged (integrity, exit 4).
async fn manifest_on(
    p: &Provider,
    ws: &str,
    layer: &str,
    trust: &[ed25519_dalek::VerifyingKey],
) -> Result<(Manifest, String), LayerState> {
    use crate::manifest::signature;
    let r = p
        .get_capped(&keys::layer_ref(ws, layer), MAX_REF_BYTES as u64)
        .await
        .map_err(LayerState::NoRef)?;
    let (lr, digest) = LayerRef::parse(&r).map_err(|e| LayerState::BadManifest(e.to_string()))?;
    let signer = if trust.is_empty() {
        match signature::signer(&lr, ws, layer) {
            Ok(k) => signature::key_id(&k),
            Err(signature::SignatureError::Unsigned) => "unsigned".into(),
            Err(e) => format!("not verified: {e}"),
        }
    } else {
        signature::check(&lr, ws, layer, trust)
            .map_err(|e| LayerState::BadManifest(format!("signature: {e}")))?
    };
    let body = p
        .get_capped(&keys::manifest(&digest), manifest::MAX_MANIFEST_BYTES)
        .await
        .map_err(|o| LayerState::BadManifest(format!("manifest {}: {o}", digest.short())))?;
    verify_blob(&digest, &body)
        .map_err(|o| LayerState::BadManifest(format!("manifest {}: {o}", digest.short())))?;
    let m = manifest::decode(&body).map_err(|e| LayerState::BadManifest(e.to_string()))?;
    Ok((m, signer))
}

/// One chunk's check: Err((message, damaged)), damaged meaning the object was there but did
/// not verify (as opposed to absent or unreachable).
type ChunkCheck = Result<(), (String, bool)>;

async fn check_layer(
    p: &Provider,
    ws: &str,
    layer: &str,
    deep: bool,
    trust: &[ed25519_dalek::VerifyingKey],
    progress: bool,
) -> (LayerState, Vec<String>) {
    let (m, signer) = match manifest_on(p, ws, layer, trust).await {
        Ok(m) => m,
        Err(s) => return (s, Vec::new()),
    };
    // On a terminal, chunks checked so far; the report that follows is the summary.
    let bar = progress.then(|| {
        let b = indicatif::ProgressBar::new(m.chunks.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} chunks {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_message(format!(
            "{} on {} ({})",
            layer,
            p.name,
            if deep { "download and hash" } else { "HEAD" }
        ));
        b
    });
    let bar = bar.as_ref();
    let results: Vec<(Digest, ChunkCheck)> = futures::stream::iter(m.chunks.iter())
        .map(|c| async move {
            let key = keys::chunk(&c.hash);
            let damaged = |o: &Outcome| matches!(o, Outcome::Corrupt(_) | Outcome::Short { .. });
            let r = if deep {
                match p.get_capped(&key, chunk_cap(c)).await {
                    Ok(b) => VerifiedChunk::from_stored(c, &b)
                        .map(|_| ())
                        .map_err(|o| (o.to_string(), true)),
                    Err(o) => Err((o.to_string(), damaged(&o))),
                }
            } else {
                match p.head(&key).await {
                    Ok(size) if size == u64::from(c.stored_len) => Ok(()),
                    // Another length may be another valid encoding: only the content decides.
                    Ok(size) => match p.get_capped(&key, chunk_cap(c)).await {
                        Ok(b) => VerifiedChunk::from_stored(c, &b).map(|_| ()).map_err(|o| {
                            (
                                format!("stored size {size}, expected {}: {o}", c.stored_len),
                                true,
                            )
                        }),
                        Err(o) => Err((o.to_string(), damaged(&o))),
                    },
                    Err(o) => Err((o.to_string(), damaged(&o))),
                }
            };
            if let Some(b) = bar {
                b.inc(1);
            }
            (c.hash, r)
        })
        .buffer_unordered(32)
        .collect()
        .await;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let mut missing = Vec::new();
    let mut problems = Vec::new();
    let mut corrupt = 0;
    for (d, r) in results {
        if let Err((why, bad)) = r {
            if problems.len() < 5 {
                problems.push(format!("chunk {}: {why}", d.short()));
            }
            corrupt += usize::from(bad);
            missing.push(d);
        }
    }
    let parents = m.parents.clone();
    let state = if missing.is_empty() {
        LayerState::Complete {
            chunks: m.chunks.len(),
            signer,
        }
    } else {
        LayerState::Incomplete {
            chunks: m.chunks.len(),
            missing,
            corrupt,
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
    trust: &[ed25519_dalek::VerifyingKey],
    progress: bool,
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
            let (state, parents) = check_layer(p, ws, &l, deep, trust, progress).await;
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
                LayerState::Complete { chunks, signer } => {
                    format!("complete ({chunks} chunks, ref signed: {signer})")
                }
                LayerState::Incomplete {
                    chunks,
                    missing,
                    corrupt,
                    problems,
                } => format!(
                    "incomplete: {} of {chunks} chunks missing, {corrupt} of them damaged [{}]",
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
    // Damage found anywhere makes a failure an integrity failure (exit 4), not a missing one.
    let damaged = reports.iter().any(|r| {
        r.layers.iter().any(|(_, s)| {
            matches!(s, LayerState::Incomplete { corrupt, .. } if *corrupt > 0)
                || matches!(s, LayerState::BadManifest(_))
        })
    });
    let fail = |msg: String| {
        if damaged {
            WsfsError::Integrity(format!("{msg} (damaged objects found)"))
        } else {
            WsfsError::Missing(msg)
        }
    };
    let verdict = if all {
        if reports.iter().all(|r| r.complete()) {
            Ok(())
        } else {
            Err(fail("not every store is complete (--all)".into()))
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
            Err(fail(format!(
                "no store holds a complete copy of layer(s): {}",
                bad.join(", ")
            )))
        }
    };
    (text, verdict)
}

/// `verify --repair`: writes every missing or damaged chunk of an incomplete store back from a
/// good copy (fetched and verified through the chain of the other stores). Returns lines of
/// what was done; refs are never written (a store's ref promises a complete layer, which a
/// repair of chunks alone cannot know for layers verify did not check).
pub async fn repair(providers: &[Arc<Provider>], ws: &str, reports: &[StoreReport]) -> Vec<String> {
    let chain = crate::store::Chain::from_arcs(providers.to_vec());
    let mut out = Vec::new();
    for (i, r) in reports.iter().enumerate() {
        let Some(p) = providers.get(i) else { continue };
        for (layer, state) in &r.layers {
            let LayerState::Incomplete { missing, .. } = state else {
                continue;
            };
            let m = match chain.resolve_layer(ws, layer).await {
                Ok(m) => m.manifest,
                Err(e) => {
                    out.push(format!(
                        "{}: layer {layer}: cannot read its manifest: {e}",
                        p.name
                    ));
                    continue;
                }
            };
            let (mut fixed, mut failed) = (0, 0);
            for d in missing {
                let Some(info) = m.chunks().iter().find(|c| c.hash == *d) else {
                    continue;
                };
                let good = match chain.fetch_chunk(info).await {
                    Ok(c) => c.value,
                    Err(_) => {
                        failed += 1;
                        continue;
                    }
                };
                let stored = match crate::manifest::chunker::compress(good.data()) {
                    Ok(s) => bytes::Bytes::from(s),
                    Err(_) => {
                        failed += 1;
                        continue;
                    }
                };
                match p.put(&keys::chunk(d), stored).await {
                    Ok(()) => fixed += 1,
                    Err(_) => failed += 1,
                }
            }
            out.push(format!(
                "{}: layer {layer}: {fixed} chunk(s) rewritten from a good copy{}",
                p.name,
                if failed > 0 {
                    format!(", {failed} could not be (no good copy, or the write failed)")
                } else {
                    String::new()
                }
            ));
        }
    }
    out
}
