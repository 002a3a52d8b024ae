//! A layer ref: the small object at `workspaces/<ws>/layers/<layer>` naming the layer's manifest.
//! It is written last, so its presence on a provider promises the manifest and every chunk.
//!
//! A ref also pins the layer's ancestors: the manifest digest of every layer in its parents'
//! closure, as they were when the layer was persisted. A mount of the layer applies exactly
//! those, so re-persisting a parent later cannot change what the child's mount shows. Refs
//! written by older versions have no pins; their ancestors are resolved by name.

use super::names::validate_name;
use super::types::Digest;
use super::ManifestError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Refs are tiny; anything larger is not a ref (and is not read whole).
pub const MAX_REF_BYTES: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRef {
    pub manifest: String,
    /// Unix seconds when the layer was committed.
    pub created: i64,
    /// Every ancestor layer (the parents' closure) → the hex digest of its manifest at persist
    /// time. Empty in refs written before pinning existed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ancestors: BTreeMap<String, String>,
    /// An Ed25519 signature over all of the above (see `signature.rs`); `None` when unsigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<RefSignature>,
}

/// A signature as stored in a ref (made and checked by `signature.rs`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RefSignature {
    /// The signer's public key, hex (32 bytes).
    pub key: String,
    /// The Ed25519 signature, hex (64 bytes).
    pub sig: String,
}

impl LayerRef {
    pub fn new(manifest: Digest, created: i64) -> Self {
        LayerRef {
            manifest: manifest.to_hex(),
            created,
            ancestors: BTreeMap::new(),
            signature: None,
        }
    }

    /// A ref pinning `ancestors` (name → manifest digest).
    pub fn with_ancestors(
        manifest: Digest,
        created: i64,
        ancestors: &BTreeMap<String, Digest>,
    ) -> Self {
        LayerRef {
            manifest: manifest.to_hex(),
            created,
            ancestors: ancestors
                .iter()
                .map(|(n, d)| (n.clone(), d.to_hex()))
                .collect(),
            signature: None,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising strings, an i64 and a map of strings cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses and checks a ref: the manifest digest, and every pinned ancestor's name and digest.
    pub fn parse(bytes: &[u8]) -> Result<(LayerRef, Digest), ManifestError> {
        if bytes.len() > MAX_REF_BYTES {
            return Err(ManifestError::Corrupt(format!(
                "layer ref is larger than {} KiB",
                MAX_REF_BYTES / 1024
            )));
        }
        let r: LayerRef = serde_json::from_slice(bytes)
            .map_err(|e| ManifestError::Corrupt(format!("layer ref is not valid JSON: {e}")))?;
        let d = Digest::from_hex(&r.manifest).ok_or_else(|| {
            ManifestError::Corrupt(format!("layer ref names {:?}, not a digest", r.manifest))
        })?;
        r.pinned()?;
        Ok((r, d))
    }

    /// The pinned ancestors, checked.
    pub fn pinned(&self) -> Result<BTreeMap<String, Digest>, ManifestError> {
        self.ancestors
            .iter()
            .map(|(n, h)| {
                validate_name("ancestor layer", n).map_err(ManifestError::Corrupt)?;
                let d = Digest::from_hex(h).ok_or_else(|| {
                    ManifestError::Corrupt(format!("layer ref pins {n} to {h:?}, not a digest"))
                })?;
                Ok((n.clone(), d))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_round_trip_and_old_refs_still_parse() {
        let d = Digest::of(b"m");
        let mut a = BTreeMap::new();
        a.insert("base".to_string(), Digest::of(b"base"));
        let r = LayerRef::with_ancestors(d, 5, &a);
        let (back, digest) = LayerRef::parse(&r.to_bytes()).expect("parse");
        assert_eq!(digest, d);
        assert_eq!(back.pinned().expect("pins"), a);
        let old = format!("{{\"manifest\":\"{}\",\"created\":1}}", d.to_hex());
        let (old, _) = LayerRef::parse(old.as_bytes()).expect("old ref");
        assert!(old.ancestors.is_empty());
        let bad = format!(
            "{{\"manifest\":\"{}\",\"created\":1,\"ancestors\":{{\"../x\":\"{}\"}}}}",
            d.to_hex(),
            d.to_hex()
        );
        assert!(
            LayerRef::parse(bad.as_bytes()).is_err(),
            "hostile ancestor name"
        );
        assert!(LayerRef::parse(&vec![b' '; MAX_REF_BYTES + 1]).is_err());
    }
}
