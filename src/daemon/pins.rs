//! The manifests a mount pinned: the first daemon keeps a private copy of each one it mounted
//! (under the runtime directory, mode 0700), so that a replacement daemon rebuilds exactly the
//! same tree — the same inode numbers — without asking the stores, and asks them only when a
//! copy is gone or no longer hashes to its digest.

use super::handover::PinnedLayer;
use crate::error::WsfsError;
use crate::manifest::{Digest, Opened};
use crate::ops::run_records;
use crate::store::Chain;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Keeps a copy of each resolved manifest beside the runtime record, so a replacement daemon
/// needs no store to rebuild the tree. Best effort: without the copies a takeover fetches the
/// pinned manifests by digest from the stores.
pub(super) fn pin(mountpoint: &Path, resolved: &[crate::store::ResolvedLayer]) -> Vec<PinnedLayer> {
    let dir = run_records::pins_dir(mountpoint);
    // Private: the manifests list every path of a mount that only its owner may read.
    let made = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .and_then(|_| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)));
    if let Err(e) = made {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot keep manifest copies; a takeover will fetch them");
    }
    // The copies are written beside the mount, not before it: a 1M-entry manifest is tens of
    // MB, and a replacement that finds a copy missing or partial (it must hash to its digest)
    // fetches the manifest from the stores instead. Each copy appears whole (temp + rename).
    let copies: Vec<(std::path::PathBuf, bytes::Bytes)> = resolved
        .iter()
        .map(|l| (dir.join(l.digest.to_hex()), l.bytes.clone()))
        .collect();
    let spawned = std::thread::Builder::new()
        .name("wsfs-pins".into())
        .spawn(move || {
            for (p, bytes) in copies {
                let tmp = p.with_extension("tmp");
                let written = std::fs::write(&tmp, &bytes).and_then(|_| std::fs::rename(&tmp, &p));
                if let Err(e) = written {
                    let _ = std::fs::remove_file(&tmp);
                    tracing::debug!(path = %p.display(), error = %e, "cannot keep a manifest copy");
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot keep manifest copies; a takeover will fetch them");
    }
    resolved
        .iter()
        .map(|l| PinnedLayer {
            name: l.manifest.head.layer.clone(),
            manifest: l.digest.to_hex(),
            signer: l.signer.clone(),
        })
        .collect()
}

/// The pinned manifests, in order: the local copy if it still hashes to its digest, otherwise
/// from the stores (verified the same way).
pub(super) async fn load_pinned(
    chain: &Chain,
    mountpoint: &Path,
    pins: &[PinnedLayer],
) -> Result<Vec<Opened>, WsfsError> {
    let dir = run_records::pins_dir(mountpoint);
    let mut out = Vec::with_capacity(pins.len());
    for p in pins {
        let digest = Digest::from_hex(&p.manifest).ok_or_else(|| {
            WsfsError::Integrity(format!("pinned manifest {:?} is not a digest", p.manifest))
        })?;
        let local = std::fs::read(dir.join(&p.manifest))
            .ok()
            .filter(|b| Digest::of(b) == digest)
            .and_then(|b| crate::manifest::open(b.into()).ok());
        let m = match local {
            Some(m) => m,
            None => {
                tracing::warn!(layer = %p.name, "no usable local copy of the pinned manifest; fetching it");
                chain.fetch_manifest_bytes(&digest).await?.value.0
            }
        };
        out.push(m);
    }
    Ok(out)
}
