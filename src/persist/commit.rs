//! The last step of a persist: the manifest, then the ref, on every store that received every
//! chunk (and still holds the persist lease). A ref is the promise that its layer is complete on
//! that store, so nothing is written after it and a store that failed anything gets none.

use super::{Chunked, PersistOptions, PersistReport, Require, StoreResult};
use crate::error::WsfsError;
use crate::manifest::{self, keys, Digest, LayerRef};
use crate::store::Provider;
use bytes::Bytes;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// Writes the manifest, then the ref, on every store that received everything (and still holds
/// the persist lease), and says whether enough stores committed.
pub(super) async fn commit(
    providers: &[Arc<Provider>],
    opts: &PersistOptions,
    chunked: Chunked,
    ancestors: std::collections::BTreeMap<String, Digest>,
    lease: &crate::retention::lease::Held,
    mut report: PersistReport,
    started: std::time::Instant,
) -> Result<PersistReport, WsfsError> {
    let Chunked {
        manifest: m,
        counts,
        states,
        ..
    } = chunked;
    report.files = counts.files;
    report.dirs = counts.dirs;
    report.symlinks = counts.symlinks;
    // Everything the layer is made of, reused chunks included (the stores' side of it is
    // bytes_written).
    report.stored_bytes = m.chunks.iter().map(|c| u64::from(c.stored_len)).sum();
    report.chunks = m.chunks.len() as u64;
    report.bytes = m.total_file_bytes();
    let created = m.created;
    let encoded = manifest::encode(&m)?;
    let digest = Digest::of(&encoded);
    report.manifest = Some(digest);
    let encoded = Bytes::from(encoded);
    let mut layer_ref = LayerRef::with_ancestors(digest, created, &ancestors);
    if let Some(k) = &opts.sign_key {
        crate::manifest::signature::sign(&mut layer_ref, &opts.workspace, &opts.layer, k);
    }
    let layer_ref = Bytes::from(layer_ref.to_bytes());

    crate::test_hooks::pause("before-commit").await;
    // A store where the lease lapsed (unreachable for longer than it lasts) may have been
    // collected meanwhile: no ref there.
    for (i, st) in states.iter().enumerate() {
        if !lease.holds_on(i) {
            if let Ok(mut e) = st.error.lock() {
                e.get_or_insert_with(|| {
                    "the persist lease lapsed on this store (unreachable too long?): a gc may have run; not committing there — persist again".to_string()
                });
            }
        }
    }
    // Manifest, then ref, per store; a store that failed anything gets no ref.
    let commits = providers.iter().zip(states.iter()).map(|(p, st)| {
        let encoded = encoded.clone();
        let layer_ref = layer_ref.clone();
        let ws = opts.workspace.clone();
        let layer = opts.layer.clone();
        async move {
            let failed = st
                .error
                .lock()
                .map(|e| e.clone())
                .unwrap_or(Some("poisoned".into()));
            if let Some(e) = failed {
                return (false, Some(e));
            }
            if let Err(o) = p.put(&keys::manifest(&digest), encoded).await {
                return (false, Some(format!("manifest upload failed: {o}")));
            }
            let key = keys::layer_ref(&ws, &layer);
            if let Err(o) = p.put(&key, layer_ref).await {
                return (false, Some(format!("ref upload failed: {o}")));
            }
            crate::test_hooks::pause("before-readback").await;
            // Two persists of one layer race: the last ref wins. Read it back, and say so if
            // it is not ours (the layer is still complete: whichever ref won names a complete
            // layer on this store).
            let note = match p
                .get_capped(&key, crate::manifest::layer_ref::MAX_REF_BYTES as u64)
                .await
                .map(|b| LayerRef::parse(&b))
            {
                Ok(Ok((_, d))) if d == digest => None,
                Ok(Ok((_, other))) => Some(format!(
                    "another persist of this layer committed after this one: the ref now names manifest {} (not {})",
                    other.to_hex(),
                    digest.to_hex()
                )),
                Ok(Err(e)) => Some(format!("the ref read back is damaged: {e}")),
                Err(o) => Some(format!("the ref could not be read back: {o}")),
            };
            (true, note)
        }
    });
    let results = futures::future::join_all(commits).await;
    for ((p, st), (committed, error)) in providers.iter().zip(states.iter()).zip(results) {
        report.stores.push(StoreResult {
            name: p.name.clone(),
            new_chunks: st.new_chunks.load(Relaxed),
            present_chunks: st.present.load(Relaxed),
            bytes_written: st.bytes.load(Relaxed),
            error,
            committed,
        });
    }
    report.seconds = started.elapsed().as_secs_f64();
    let committed = report.stores.iter().filter(|s| s.committed).count();
    let needed = match opts.require {
        Require::All => providers.len(),
        Require::Any => 1,
        Require::AtLeast(n) => n,
    };
    if committed < needed {
        return Err(WsfsError::Failed(format!(
            "layer committed on {committed} of {} stores, but {needed} required\n{}",
            providers.len(),
            report.summary()
        )));
    }
    Ok(report)
}
