//! Ref signatures: an Ed25519 signature by the persisting job over what a ref claims —
//! workspace, layer, manifest digest, created time and every pinned ancestor — so that a ref can
//! be neither forged nor replayed under another name or with other pins. The manifest names
//! every chunk by hash, so a trusted signature vouches for every byte a mount serves.
//!
//! No I/O here: key files are `crate::keys`; which keys are trusted is the caller's.

use super::layer_ref::LayerRef;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

pub use super::layer_ref::RefSignature;

/// A short, stable name for a public key: the first 8 bytes of its BLAKE3, hex.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&blake3::hash(key.as_bytes()).as_bytes()[..8])
}

/// What a signature covers, unambiguously: names cannot contain NUL or `=`.
pub fn message(workspace: &str, layer: &str, r: &LayerRef) -> Vec<u8> {
    let mut m = b"wsfs layer ref v1\0".to_vec();
    for part in [workspace, layer, &r.manifest, &r.created.to_string()] {
        m.extend_from_slice(part.as_bytes());
        m.push(0);
    }
    for (name, digest) in &r.ancestors {
        m.extend_from_slice(name.as_bytes());
        m.push(b'=');
        m.extend_from_slice(digest.as_bytes());
        m.push(0);
    }
    m
}

/// Signs `r` (as the ref of `layer` in `workspace`) in place.
pub fn sign(r: &mut LayerRef, workspace: &str, layer: &str, key: &SigningKey) {
    r.signature = None;
    let sig = key.sign(&message(workspace, layer, r));
    r.signature = Some(RefSignature {
        key: hex::encode(key.verifying_key().as_bytes()),
        sig: hex::encode(sig.to_bytes()),
    });
}

/// Why a ref is not trusted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the ref is unsigned, and only refs signed by a trusted key are accepted")]
    Unsigned,
    #[error("the ref is signed by key {0}, which is not trusted")]
    Untrusted(String),
    #[error("the ref's signature does not verify (signed by key {0}): it was altered or signed for another layer")]
    Invalid(String),
    #[error("the ref's signature is malformed: {0}")]
    Malformed(String),
}

/// The signer of `r`, if its signature is valid for this workspace and layer (whoever signed).
pub fn signer(r: &LayerRef, workspace: &str, layer: &str) -> Result<VerifyingKey, SignatureError> {
    let s = r.signature.as_ref().ok_or(SignatureError::Unsigned)?;
    let key_bytes: [u8; 32] = hex::decode(&s.key)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| SignatureError::Malformed("key is not 32 bytes of hex".into()))?;
    let key = VerifyingKey::from_bytes(&key_bytes)
        .map_err(|e| SignatureError::Malformed(format!("key: {e}")))?;
    let sig_bytes: [u8; 64] = hex::decode(&s.sig)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| SignatureError::Malformed("signature is not 64 bytes of hex".into()))?;
    let mut unsigned = r.clone();
    unsigned.signature = None;
    key.verify(
        &message(workspace, layer, &unsigned),
        &Signature::from_bytes(&sig_bytes),
    )
    .map_err(|_| SignatureError::Invalid(key_id(&key)))?;
    Ok(key)
}

/// Checks `r` against the trusted keys; returns the signer's key id.
pub fn check(
    r: &LayerRef,
    workspace: &str,
    layer: &str,
    trusted: &[VerifyingKey],
) -> Result<String, SignatureError> {
    let key = signer(r, workspace, layer)?;
    if !trusted.contains(&key) {
        return Err(SignatureError::Untrusted(key_id(&key)));
    }
    Ok(key_id(&key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Digest;
    use std::collections::BTreeMap;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn a_ref() -> LayerRef {
        let mut a = BTreeMap::new();
        a.insert("base".to_string(), Digest::of(b"base"));
        LayerRef::with_ancestors(Digest::of(b"m"), 7, &a)
    }

    #[test]
    fn a_signature_covers_every_claim() {
        let (k1, k2) = (key(1), key(2));
        let trusted = [k1.verifying_key()];
        let mut r = a_ref();
        sign(&mut r, "ws", "build", &k1);
        assert_eq!(
            check(&r, "ws", "build", &trusted),
            Ok(key_id(&k1.verifying_key()))
        );
        // Another name, another workspace: a replay.
        assert!(matches!(
            check(&r, "ws", "deploy", &trusted),
            Err(SignatureError::Invalid(_))
        ));
        assert!(matches!(
            check(&r, "other", "build", &trusted),
            Err(SignatureError::Invalid(_))
        ));
        // Any field changed.
        let mut m = r.clone();
        m.manifest = Digest::of(b"other").to_hex();
        assert!(matches!(
            check(&m, "ws", "build", &trusted),
            Err(SignatureError::Invalid(_))
        ));
        let mut c = r.clone();
        c.created += 1;
        assert!(matches!(
            check(&c, "ws", "build", &trusted),
            Err(SignatureError::Invalid(_))
        ));
        let mut p = r.clone();
        p.ancestors
            .insert("base".into(), Digest::of(b"evil").to_hex());
        assert!(matches!(
            check(&p, "ws", "build", &trusted),
            Err(SignatureError::Invalid(_))
        ));
        // Unsigned, or by a key not trusted (even if valid).
        assert_eq!(
            check(&a_ref(), "ws", "build", &trusted),
            Err(SignatureError::Unsigned)
        );
        let mut other = a_ref();
        sign(&mut other, "ws", "build", &k2);
        assert_eq!(
            check(&other, "ws", "build", &trusted),
            Err(SignatureError::Untrusted(key_id(&k2.verifying_key())))
        );
        // Rotation: either of two trusted keys.
        let both = [k1.verifying_key(), k2.verifying_key()];
        assert!(check(&other, "ws", "build", &both).is_ok());
        // The signature survives the ref's JSON.
        let (back, _) = LayerRef::parse(&r.to_bytes()).expect("parse");
        assert!(check(&back, "ws", "build", &trusted).is_ok());
    }
}
