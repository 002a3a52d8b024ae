//! Binary encoding of a [`Manifest`]: a fixed header (magic, format version) followed by a
//! zstd-compressed bincode body. Decoding never trusts its input: sizes are bounded before
//! anything is allocated, and the decoded manifest is validated before it is returned.

use super::types::Manifest;
use super::validate::validate;
use super::ManifestError;

const MAGIC: &[u8; 8] = b"WSFSMANI";
/// The only format version this build reads and writes. Bump it on any incompatible change;
/// older binaries then refuse newer manifests with a clear message instead of misreading them.
pub const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: usize = 12;
/// Upper bound on a decompressed manifest body: ~2M entries. Protects the decoder from a
/// decompression bomb in a corrupt or hostile manifest.
const MAX_BODY: usize = 512 << 20;
/// Upper bound on a stored (compressed) manifest: a larger object is not read.
pub const MAX_MANIFEST_BYTES: u64 = 256 << 20;

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_BODY>()
}

/// Encodes `manifest` (which must be valid: it is checked, so a bug cannot persist a manifest
/// that no mount would accept).
pub fn encode(manifest: &Manifest) -> Result<Vec<u8>, ManifestError> {
    validate(manifest)?;
    let body = bincode::serde::encode_to_vec(manifest, bincode_config())
        .map_err(|e| ManifestError::Encode(e.to_string()))?;
    let compressed =
        zstd::bulk::compress(&body, 3).map_err(|e| ManifestError::Encode(e.to_string()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + compressed.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&compressed);
    Ok(out)
}

/// Decodes and validates a manifest.
pub fn decode(bytes: &[u8]) -> Result<Manifest, ManifestError> {
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return Err(ManifestError::NotAManifest);
    }
    let mut v = [0u8; 4];
    v.copy_from_slice(&bytes[8..12]);
    let version = u32::from_le_bytes(v);
    if version != FORMAT_VERSION {
        return Err(ManifestError::UnknownVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    // Streamed through a bounded reader: memory grows with the real body, never to MAX_BODY up
    // front, and a body that inflates past MAX_BODY is rejected.
    let mut body = Vec::new();
    let decoder = zstd::stream::read::Decoder::new(&bytes[HEADER_LEN..])
        .map_err(|e| ManifestError::Corrupt(format!("body does not decompress: {e}")))?;
    std::io::Read::read_to_end(
        &mut std::io::Read::take(decoder, MAX_BODY as u64 + 1),
        &mut body,
    )
    .map_err(|e| ManifestError::Corrupt(format!("body does not decompress: {e}")))?;
    if body.len() > MAX_BODY {
        return Err(ManifestError::Corrupt(format!(
            "body inflates past the limit of {MAX_BODY} bytes"
        )));
    }
    let (manifest, used): (Manifest, usize) =
        bincode::serde::decode_from_slice(&body, bincode_config())
            .map_err(|e| ManifestError::Corrupt(format!("body does not decode: {e}")))?;
    if used != body.len() {
        return Err(ManifestError::Corrupt(format!(
            "{} trailing bytes after the manifest body",
            body.len() - used
        )));
    }
    validate(&manifest)?;
    Ok(manifest)
}
