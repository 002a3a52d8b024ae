//! [`VerifiedChunk`]: bytes that have been checked against their content hash.
//!
//! Its fields are private and the only constructors run the check, so any code that holds a
//! `VerifiedChunk` holds correct bytes. The filesystem's read path accepts nothing else: a provider
//! that answers 200 with an empty, short or wrong body cannot reach a reader. This type is the
//! structural answer to "a failed download was reported as success".

use super::outcome::Outcome;
use crate::manifest::{ChunkInfo, Digest};
use bytes::Bytes;

#[derive(Clone)]
pub struct VerifiedChunk {
    hash: Digest,
    data: Bytes,
}

impl std::fmt::Debug for VerifiedChunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VerifiedChunk({:?}, {} bytes)",
            self.hash,
            self.data.len()
        )
    }
}

impl VerifiedChunk {
    /// Checks a stored (zstd-compressed) chunk body against the manifest's chunk record:
    /// stored length, bounded decompression to exactly `raw_len` bytes, then BLAKE3.
    pub fn from_stored(info: &ChunkInfo, stored: &[u8]) -> Result<VerifiedChunk, Outcome> {
        let got = stored.len() as u64;
        let want = u64::from(info.stored_len);
        // The content hash is the check; the stored length only classifies a failure. A body of
        // another length that still inflates to the right bytes is a valid encoding of the chunk
        // (e.g. compressed by another zstd version, which a later persist may have written over
        // the old object), so it is accepted rather than breaking every older layer that uses it.
        // The capacity bounds the output: a body that inflates past raw_len is rejected instead
        // of allocating without limit.
        let checked = zstd::bulk::Decompressor::new()
            .and_then(|mut d| d.decompress(stored, info.raw_len as usize))
            .map_err(|e| Outcome::Corrupt(format!("does not decompress: {e}")))
            .and_then(|raw| Self::from_raw(info, Bytes::from(raw)));
        match checked {
            Ok(c) => Ok(c),
            Err(_) if got < want => Err(Outcome::Short { got, want }),
            Err(_) if got > want => Err(Outcome::Corrupt(format!(
                "{got} bytes where {want} were stored"
            ))),
            Err(e) => Err(e),
        }
    }

    /// Checks raw (uncompressed) bytes, e.g. read back from the disk cache.
    pub fn from_raw(info: &ChunkInfo, raw: Bytes) -> Result<VerifiedChunk, Outcome> {
        let got = raw.len() as u64;
        let want = u64::from(info.raw_len);
        if got < want {
            return Err(Outcome::Short { got, want });
        }
        if got > want {
            return Err(Outcome::Corrupt(format!(
                "{got} raw bytes, expected {want}"
            )));
        }
        let actual = Digest::of(&raw);
        if actual != info.hash {
            return Err(Outcome::Corrupt(format!(
                "hash {} instead of {}",
                actual.short(),
                info.hash.short()
            )));
        }
        Ok(VerifiedChunk {
            hash: info.hash,
            data: raw,
        })
    }

    pub fn hash(&self) -> Digest {
        self.hash
    }

    pub fn data(&self) -> &Bytes {
        &self.data
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Raw bytes checked against a digest (manifests).
pub fn verify_blob(expected: &Digest, bytes: &[u8]) -> Result<(), Outcome> {
    if bytes.is_empty() {
        return Err(Outcome::Short { got: 0, want: 1 });
    }
    let actual = Digest::of(bytes);
    if &actual != expected {
        return Err(Outcome::Corrupt(format!(
            "hash {} instead of {}",
            actual.short(),
            expected.short()
        )));
    }
    Ok(())
}
