//! What a persist did, per store and as a whole: `wsfs persist` prints [`PersistReport::summary`].

use crate::manifest::Digest;

#[derive(Debug, Default)]
pub struct StoreResult {
    pub name: String,
    pub new_chunks: u64,
    pub present_chunks: u64,
    pub bytes_written: u64,
    pub error: Option<String>,
    pub committed: bool,
}

#[derive(Debug, Default)]
pub struct PersistReport {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    pub chunks: u64,
    pub stored_bytes: u64,
    pub skipped_special: Vec<String>,
    pub manifest: Option<Digest>,
    pub stores: Vec<StoreResult>,
    pub seconds: f64,
    /// What the persist index did.
    pub index: IndexUse,
}

/// How a persist used its index.
#[derive(Debug, Default)]
pub enum IndexUse {
    /// No index directory (`--no-index`).
    #[default]
    Off,
    /// None yet for this tree and layer: every file was read.
    Fresh,
    /// There was one, but it could not be used: every file was read.
    Unusable(String),
    Used {
        /// Files taken from the index, not read.
        reused_files: u64,
        reused_bytes: u64,
        /// Files read (new, changed, racily clean, in a mostly dead pack, or naming a chunk a
        /// store lacks).
        read_files: u64,
        /// Distinct chunks confirmed on every store.
        confirmed_chunks: u64,
        /// Chunks the index named that some store lacked.
        missing_chunks: u64,
    },
}

impl IndexUse {
    fn describe(&self) -> String {
        match self {
            IndexUse::Off => "not used (--no-index)".into(),
            IndexUse::Fresh => "none yet for this tree and layer: every file read".into(),
            IndexUse::Unusable(why) => format!("unusable ({why}): every file read"),
            IndexUse::Used {
                reused_files,
                reused_bytes,
                read_files,
                confirmed_chunks,
                missing_chunks,
            } => format!(
                "{reused_files} files unchanged ({reused_bytes} bytes not read), {read_files} read; {confirmed_chunks} stored chunks confirmed{}",
                if *missing_chunks > 0 {
                    format!(", {missing_chunks} missing on some store (their files read again)")
                } else {
                    String::new()
                }
            ),
        }
    }
}

impl PersistReport {
    pub fn summary(&self) -> String {
        let mut s = format!(
            "persisted {} files, {} dirs, {} symlinks, {} bytes in {} chunks ({} stored) in {:.2}s; manifest {}",
            self.files,
            self.dirs,
            self.symlinks,
            self.bytes,
            self.chunks,
            self.stored_bytes,
            self.seconds,
            self.manifest.map(|d| d.to_hex()).unwrap_or_else(|| "-".into())
        );
        s.push_str(&format!("\n  index: {}", self.index.describe()));
        for st in &self.stores {
            s.push_str(&format!(
                "\n  {}: {} new chunks, {} already present, {} bytes written, ref {}{}",
                st.name,
                st.new_chunks,
                st.present_chunks,
                st.bytes_written,
                if st.committed {
                    "committed"
                } else {
                    "NOT committed"
                },
                st.error
                    .as_ref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ));
        }
        s
    }
}
