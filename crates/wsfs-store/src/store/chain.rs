//! The ordered failover chain. Every object is tried on each provider in order until one returns
//! bytes that verify; anything else — 404, error, timeout, short or corrupt body — is a miss
//! and moves on. When every provider misses, the error carries each provider's outcome.

use super::config::{Limits, StoreSpec};
use super::outcome::{AllMissed, Attempt, Outcome};
use super::provider::{Provider, ProviderBuildError};
use super::stats::{inc, ChainStats};
use super::verified::{verify_blob, VerifiedChunk};
use crate::manifest::layer_ref::MAX_REF_BYTES;
use crate::manifest::signature::{self, SignatureError};
use crate::manifest::{self, keys, ChunkInfo, Digest, LayerRef, Manifest, Opened};
use bytes::Bytes;
use std::sync::Arc;
use tokio::sync::mpsc;

pub struct Chain {
    providers: Vec<Arc<Provider>>,
    pub stats: Arc<ChainStats>,
    repair: Option<mpsc::Sender<RepairJob>>,
    /// With trusted keys, only refs they signed are accepted (anything else is `corrupt`, and
    /// the next store's ref is tried).
    trust: Vec<ed25519_dalek::VerifyingKey>,
}

/// A verified object and which provider served it.
pub struct Served<T> {
    pub value: T,
    pub provider: usize,
    pub attempts: Vec<Attempt>,
}

/// A layer found through the chain: its ref and its verified manifest, opened for mounting.
pub struct ResolvedLayer {
    pub digest: Digest,
    pub manifest: Opened,
    /// The manifest's bytes as stored (they hash to `digest`): a mount keeps a copy, so that a
    /// replacement daemon can rebuild the same tree without any store.
    pub bytes: Bytes,
    pub created: i64,
    /// The ancestors the ref pins (name → manifest digest); empty for refs of older versions.
    pub ancestors: std::collections::BTreeMap<String, Digest>,
    /// Who vouches for it: the key id of a valid signature, `unsigned`, or (for an ancestor
    /// loaded by its pinned digest) `pinned by <layer>`.
    pub signer: String,
}

/// What one attempt asks a provider for.
enum Request {
    /// The whole object, of at most `cap` bytes.
    Whole { cap: u64 },
    /// A byte range of it.
    Range(std::ops::Range<u64>),
}

struct RepairJob {
    provider: usize,
    key: String,
    stored: Bytes,
}

/// Bound on queued repairs: repair is best effort and must never hold memory without limit.
const REPAIR_QUEUE: usize = 256;

impl Chain {
    pub fn new(providers: Vec<Provider>) -> Chain {
        Chain {
            providers: providers.into_iter().map(Arc::new).collect(),
            stats: Arc::default(),
            repair: None,
            trust: Vec::new(),
        }
    }

    pub fn from_specs(specs: &[StoreSpec], limits: Limits) -> Result<Chain, ProviderBuildError> {
        let providers = specs
            .iter()
            .map(|s| Provider::from_spec(s, limits))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Chain::new(providers))
    }

    /// A chain of providers that are shared (persist, verify, gc hold them too).
    pub fn from_arcs(providers: Vec<Arc<Provider>>) -> Chain {
        Chain {
            providers,
            stats: Arc::default(),
            repair: None,
            trust: Vec::new(),
        }
    }

    /// Accepts only refs signed by one of `keys` (none: signatures are not required).
    pub fn set_trust(&mut self, keys: Vec<ed25519_dalek::VerifyingKey>) {
        self.trust = keys;
    }

    pub fn trusts(&self) -> bool {
        !self.trust.is_empty()
    }

    pub fn providers(&self) -> &[Arc<Provider>] {
        &self.providers
    }

    /// Turns on repair-on-read: an object that missed on an earlier provider and was found on a
    /// later one is written back to the earlier one by a background task (bounded queue; a full
    /// queue drops the repair, never delays the read). Needs a tokio runtime.
    pub fn enable_repair(&mut self) {
        let (tx, mut rx) = mpsc::channel::<RepairJob>(REPAIR_QUEUE);
        let providers = self.providers.clone();
        let stats = self.stats.clone();
        tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                let Some(p) = providers.get(job.provider) else {
                    continue;
                };
                match p.put(&job.key, job.stored).await {
                    Ok(()) => {
                        inc(&stats.repairs);
                        tracing::info!(provider = %p.name, key = %job.key, "repaired");
                    }
                    Err(o) => {
                        inc(&stats.repair_failures);
                        tracing::warn!(provider = %p.name, key = %job.key, outcome = %o, "repair failed");
                    }
                }
            }
        });
        self.repair = Some(tx);
    }

    /// Tries `key` on each provider in order; `check` turns the body into a verified value or a
    /// miss. A provider whose breaker is open is skipped, and asked last only if every other
    /// provider missed.
    /// `cap` bounds the object: a larger one is a miss (`corrupt`) without being read whole.
    pub async fn fetch<T>(
        &self,
        what: &str,
        key: &str,
        cap: u64,
        check: impl Fn(&Bytes) -> Result<T, Outcome>,
    ) -> Result<Served<T>, AllMissed> {
        let all: Vec<usize> = (0..self.providers.len()).collect();
        self.fetch_among(&all, what, key, Request::Whole { cap }, check)
            .await
    }

    /// [`Chain::fetch`] over some of the providers (indexes, in order).
    async fn fetch_among<T>(
        &self,
        order: &[usize],
        what: &str,
        key: &str,
        request: Request,
        check: impl Fn(&Bytes) -> Result<T, Outcome>,
    ) -> Result<Served<T>, AllMissed> {
        let mut attempts: Vec<Attempt> = Vec::with_capacity(self.providers.len());
        let mut skipped = Vec::new();
        let mut missed_here = Vec::new();
        let order: Vec<usize> = order.to_vec();
        for pass in 0..2 {
            let candidates: Vec<usize> = if pass == 0 {
                order.clone()
            } else {
                std::mem::take(&mut skipped)
            };
            for i in candidates {
                let p = &self.providers[i];
                if pass == 0 && !p.breaker.allow() {
                    p.stats.record(&Outcome::Skipped, 0);
                    attempts.push(Attempt {
                        provider: p.name.clone(),
                        outcome: Outcome::Skipped,
                        elapsed: Default::default(),
                    });
                    skipped.push(i);
                    continue;
                }
                let (r, elapsed) = match &request {
                    Request::Whole { cap } => p.attempt(p.get_capped(key, *cap)).await,
                    Request::Range(range) => p.attempt(p.get_range(key, range.clone())).await,
                };
                let verified = r.and_then(|body| check(&body).map(|v| (v, body)));
                match verified {
                    Ok((value, body)) => {
                        p.stats.record(&Outcome::Hit, elapsed.as_micros() as u64);
                        p.stats
                            .bytes
                            .fetch_add(body.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        attempts.push(Attempt {
                            provider: p.name.clone(),
                            outcome: Outcome::Hit,
                            elapsed,
                        });
                        if attempts.len() > 1 {
                            // Only whole objects can be written back.
                            let repairable = !key.starts_with("workspaces/")
                                && matches!(request, Request::Whole { .. });
                            inc(&self.stats.failovers);
                            tracing::warn!(
                                what,
                                served_by = %p.name,
                                missed = %attempts[..attempts.len() - 1]
                                    .iter()
                                    .map(|a| a.to_string())
                                    .collect::<Vec<_>>()
                                    .join("; "),
                                "failover: served by a later provider"
                            );
                            // Refs are never repaired: a ref promises that the manifest and every
                            // chunk are on its provider, which a read-path copy cannot know.
                            if repairable {
                                self.queue_repairs(&missed_here, key, &body);
                            }
                        }
                        return Ok(Served {
                            value,
                            provider: i,
                            attempts,
                        });
                    }
                    Err(outcome) => {
                        p.stats.record(&outcome, elapsed.as_micros() as u64);
                        if matches!(
                            outcome,
                            Outcome::NotFound | Outcome::Corrupt(_) | Outcome::Short { .. }
                        ) {
                            missed_here.push(i);
                        }
                        attempts.push(Attempt {
                            provider: p.name.clone(),
                            outcome,
                            elapsed,
                        });
                    }
                }
            }
        }
        inc(&self.stats.all_missed);
        // Keep only the most informative attempt per provider (a last-resort retry of a skipped
        // provider replaces its "skipped" line).
        let mut last: Vec<Attempt> = Vec::new();
        for a in attempts {
            if let Some(prev) = last.iter_mut().find(|p| p.provider == a.provider) {
                *prev = a;
            } else {
                last.push(a);
            }
        }
        Err(AllMissed {
            what: what.to_string(),
            attempts: last,
        })
    }

    fn queue_repairs(&self, missed: &[usize], key: &str, body: &Bytes) {
        let Some(tx) = &self.repair else { return };
        for &provider in missed {
            let _ = tx.try_send(RepairJob {
                provider,
                key: key.to_string(),
                stored: body.clone(),
            });
        }
    }

    /// Fetches and verifies one chunk.
    pub async fn fetch_chunk(&self, info: &ChunkInfo) -> Result<Served<VerifiedChunk>, AllMissed> {
        let what = format!("chunk {}", info.hash.short());
        self.fetch(&what, &keys::chunk(&info.hash), chunk_cap(info), |b| {
            VerifiedChunk::from_stored(info, b)
        })
        .await
    }

    /// Fetches frames `run` of a framed chunk (`frames`: its table) with one range GET on each
    /// provider tried: the run's bytes are cut at the recorded stored lengths and every frame
    /// must inflate to its raw length and hash to its digest. A provider whose answer is missing,
    /// short or does not verify (another encoding of the chunk may be stored there) is a miss,
    /// and the next is asked; nothing is repaired from a part of an object.
    pub async fn fetch_frames(
        &self,
        chunk: &ChunkInfo,
        frames: &[ChunkInfo],
        run: std::ops::Range<usize>,
    ) -> Result<Served<Vec<VerifiedChunk>>, AllMissed> {
        let what = format!(
            "frames {}..{} of chunk {}",
            run.start,
            run.end,
            chunk.hash.short()
        );
        let wanted = frames.get(run.clone()).unwrap_or_default();
        let range = manifest::frames::stored_range(frames, run.clone());
        if wanted.is_empty() || range.end > u64::from(chunk.stored_len) {
            return Err(AllMissed {
                what,
                attempts: Vec::new(),
            });
        }
        let all: Vec<usize> = (0..self.providers.len()).collect();
        let served = self
            .fetch_among(
                &all,
                &what,
                &keys::chunk(&chunk.hash),
                Request::Range(range),
                |body| {
                    let mut at = 0usize;
                    let mut out = Vec::with_capacity(wanted.len());
                    for f in wanted {
                        let end = at + f.stored_len as usize;
                        let z = body.get(at..end).ok_or(Outcome::Short {
                            got: body.len() as u64,
                            want: end as u64,
                        })?;
                        out.push(VerifiedChunk::from_stored(f, z).map_err(|o| match o {
                            Outcome::Corrupt(why) => {
                                Outcome::Corrupt(format!("a frame does not verify: {why}"))
                            }
                            other => other,
                        })?);
                        at = end;
                    }
                    Ok(out)
                },
            )
            .await?;
        inc(&self.stats.range_gets);
        self.stats
            .range_frames
            .fetch_add(wanted.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(served)
    }

    /// Fetches a manifest, verifies its bytes against `digest`, and decodes it whole.
    pub async fn fetch_manifest(&self, digest: &Digest) -> Result<Served<Manifest>, AllMissed> {
        self.fetch_manifest_as(digest, |b| manifest::decode(b))
            .await
    }

    /// Fetches a manifest, verifies its bytes against `digest`, and opens it for mounting (a
    /// version-2 tree is served in place: see [`manifest::open`]); also returns the bytes.
    pub async fn fetch_manifest_bytes(
        &self,
        digest: &Digest,
    ) -> Result<Served<(Opened, Bytes)>, AllMissed> {
        self.fetch_manifest_as(digest, |b| Ok((manifest::open(b.clone())?, b.clone())))
            .await
    }

    /// A manifest through the chain, read by `read` once its bytes hash to `digest`; a
    /// manifest `read` refuses is a corrupt copy (the next provider is tried).
    async fn fetch_manifest_as<T>(
        &self,
        digest: &Digest,
        read: impl Fn(&Bytes) -> Result<T, manifest::ManifestError>,
    ) -> Result<Served<T>, AllMissed> {
        let what = format!("manifest {}", digest.short());
        self.fetch(
            &what,
            &keys::manifest(digest),
            manifest::MAX_MANIFEST_BYTES,
            |b| {
                verify_blob(digest, b)?;
                read(b).map_err(|e| Outcome::Corrupt(e.to_string()))
            },
        )
        .await
    }

    /// Finds a layer: its ref on the first provider that has a valid one, then that manifest
    /// through the whole chain (verified against the digest the ref names). A ref whose manifest
    /// no provider can serve (missing, damaged, or another layer's) falls over to the next
    /// provider's ref: the first store with a complete, valid ref → manifest wins.
    pub async fn resolve_layer(
        &self,
        workspace: &str,
        layer: &str,
    ) -> Result<ResolvedLayer, AllMissed> {
        let what = format!("layer {layer:?} of workspace {workspace:?}");
        let key = keys::layer_ref(workspace, layer);
        let mut candidates: Vec<usize> = (0..self.providers.len()).collect();
        // Refs that were found but whose manifest could not be had, as attempts of their store.
        let mut unusable: Vec<Attempt> = Vec::new();
        loop {
            let r = self
                .fetch_among(
                    &candidates,
                    &format!("ref of {what}"),
                    &key,
                    Request::Whole {
                        cap: MAX_REF_BYTES as u64,
                    },
                    |b| {
                        // Nothing arrived (a 200 with an empty body): `short`, as for manifests
                        // and chunks, not a damaged ref.
                        if b.is_empty() {
                            return Err(Outcome::Short { got: 0, want: 1 });
                        }
                        let (r, d) =
                            LayerRef::parse(b).map_err(|e| Outcome::Corrupt(e.to_string()))?;
                        let signer = if self.trust.is_empty() {
                            signature::signer(&r, workspace, layer)
                                .map(|k| signature::key_id(&k))
                                .unwrap_or_else(|e| match e {
                                    SignatureError::Unsigned => "unsigned".into(),
                                    other => format!("not verified: {other}"),
                                })
                        } else {
                            signature::check(&r, workspace, layer, &self.trust).map_err(|e| {
                                inc(&self.stats.signature_failures);
                                Outcome::Corrupt(format!("signature: {e}"))
                            })?
                        };
                        Ok((r, d, signer))
                    },
                )
                .await;
            let r = match r {
                Ok(r) => r,
                Err(mut missed) => {
                    // Stores whose ref was fine but whose manifest was not say so.
                    for u in unusable {
                        missed.attempts.retain(|a| a.provider != u.provider);
                        missed.attempts.push(u);
                    }
                    let pos = |name: &str| self.providers.iter().position(|p| p.name == name);
                    missed.attempts.sort_by_key(|a| pos(&a.provider));
                    missed.what = format!("ref of {what}");
                    return Err(missed);
                }
            };
            let (layer_ref, digest, signer) = r.value;
            let from = r.provider;
            let problem = match self.fetch_manifest_bytes(&digest).await {
                Ok(m) => {
                    let (manifest, bytes) = m.value;
                    if manifest.head.workspace == workspace && manifest.head.layer == layer {
                        let ancestors = layer_ref.pinned().unwrap_or_default();
                        return Ok(ResolvedLayer {
                            digest,
                            manifest,
                            bytes,
                            created: layer_ref.created,
                            ancestors,
                            signer,
                        });
                    }
                    Outcome::Corrupt(format!(
                        "its ref points at the manifest of layer {:?} of workspace {:?}",
                        manifest.head.layer, manifest.head.workspace
                    ))
                }
                Err(missed) => {
                    let corrupt = missed
                        .attempts
                        .iter()
                        .find(|a| matches!(a.outcome, Outcome::Corrupt(_)));
                    match corrupt {
                        Some(a) => Outcome::Corrupt(format!(
                            "its ref names manifest {}, which is damaged ({}: {})",
                            digest.short(),
                            a.provider,
                            a.outcome
                        )),
                        None => Outcome::Unavailable(format!(
                            "its ref names manifest {}, which no store could serve ({missed})",
                            digest.short()
                        )),
                    }
                }
            };
            tracing::warn!(
                store = %self.providers[from].name,
                layer,
                workspace,
                problem = %problem,
                "the layer's ref on this store is unusable; trying the next store's ref"
            );
            unusable.push(Attempt {
                provider: self.providers[from].name.clone(),
                outcome: problem,
                elapsed: Default::default(),
            });
            candidates.retain(|&i| i > from);
        }
    }
}

/// The most a chunk's stored object may weigh: its recorded stored length, or — for another
/// valid encoding of the same bytes — zstd's bound for its raw length. Anything larger is not
/// read.
pub fn chunk_cap(info: &ChunkInfo) -> u64 {
    let raw = u64::from(info.raw_len);
    u64::from(info.stored_len).max(raw + raw / 128 + 1024)
}
