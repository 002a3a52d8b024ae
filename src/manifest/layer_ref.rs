//! A layer ref: the small object at `workspaces/<ws>/layers/<layer>` naming the layer's manifest.
//! It is written last, so its presence on a provider promises the manifest and every chunk.

use super::types::Digest;
use super::ManifestError;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRef {
    pub manifest: String,
    /// Unix seconds when the layer was committed.
    pub created: i64,
}

impl LayerRef {
    pub fn new(manifest: Digest, created: i64) -> Self {
        LayerRef {
            manifest: manifest.to_hex(),
            created,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising a struct of a String and an i64 cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn parse(bytes: &[u8]) -> Result<(LayerRef, Digest), ManifestError> {
        if bytes.len() > 4096 {
            return Err(ManifestError::Corrupt(
                "layer ref is larger than 4 KiB".into(),
            ));
        }
        let r: LayerRef = serde_json::from_slice(bytes)
            .map_err(|e| ManifestError::Corrupt(format!("layer ref is not valid JSON: {e}")))?;
        let d = Digest::from_hex(&r.manifest).ok_or_else(|| {
            ManifestError::Corrupt(format!("layer ref names {:?}, not a digest", r.manifest))
        })?;
        Ok((r, d))
    }
}
