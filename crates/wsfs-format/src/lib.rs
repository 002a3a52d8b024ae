//! The workspace format: manifest types, their binary encoding and validation, layer refs, and
//! the chunker that turns files into content-addressed chunks. No I/O happens here.

pub mod chunker;
pub mod codec;
pub mod frames;
pub mod layer_ref;
pub mod names;
pub mod signature;
pub mod tree;
pub mod types;
pub mod validate;

pub use codec::{
    decode, encode, encode_v1, open, Head, Opened, FORMAT_VERSION, FORMAT_VERSION_V1,
    MAX_MANIFEST_BYTES,
};
pub use layer_ref::LayerRef;
pub use types::{ChunkInfo, Digest, Entry, EntryKind, Extent, Manifest, RootMeta};

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("not a wsfs manifest (bad magic bytes)")]
    NotAManifest,
    #[error("manifest format version {found} is not supported by this wsfs (it reads version {supported}); upgrade wsfs")]
    UnknownVersion { found: u32, supported: u32 },
    #[error("manifest is corrupt: {0}")]
    Corrupt(String),
    #[error("manifest is invalid: {0}")]
    Invalid(String),
    #[error("could not encode manifest: {0}")]
    Encode(String),
}

/// Object-store keys, relative to a provider's prefix.
pub mod keys {
    use super::Digest;

    pub fn chunk(d: &Digest) -> String {
        let h = d.to_hex();
        format!("chunks/{}/{}", &h[..2], h)
    }

    pub fn manifest(d: &Digest) -> String {
        format!("manifests/{}", d.to_hex())
    }

    pub fn layer_ref(workspace: &str, layer: &str) -> String {
        format!("workspaces/{workspace}/layers/{layer}")
    }

    /// Everything per workspace (refs and leases) lives under this prefix.
    pub const WORKSPACES: &str = "workspaces";
    pub const CHUNKS: &str = "chunks";
    pub const MANIFESTS: &str = "manifests";

    /// A lease: a mount, a persist or a gc saying "I am using this store until …".
    pub fn lease(workspace: &str, id: &str) -> String {
        format!("workspaces/{workspace}/leases/{id}")
    }

    /// The lock a gc holds on a store while it deletes (persists wait for it).
    pub const GC_LOCK: &str = "gc/lock";
}
