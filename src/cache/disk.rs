//! On-disk cache of raw chunk bytes, shared by every mount on the machine.
//!
//! Entries are written to a temporary file and renamed into place, so a reader never sees a
//! partial entry; and every entry is re-verified (length and BLAKE3) when read back, so a
//! corrupted disk or a concurrent writer's bug costs a refetch, never a wrong byte. The size bound
//! is enforced by this process's view of the directory (scanned at start, updated as it writes),
//! evicting the least recently used entries (mtime is bumped on every hit).

use crate::manifest::{ChunkInfo, Digest};
use crate::store::VerifiedChunk;
use bytes::Bytes;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

pub struct DiskCache {
    root: PathBuf,
    capacity: u64,
    index: Mutex<Index>,
}

#[derive(Default)]
struct Index {
    entries: HashMap<Digest, (u64, SystemTime)>,
    bytes: u64,
}

/// What a lookup found.
pub enum DiskLookup {
    Hit(VerifiedChunk),
    Miss,
    /// An entry was there but failed verification; it has been removed.
    Corrupt,
}

impl DiskCache {
    /// Opens (creating if needed) a cache directory bounded to `capacity` bytes.
    pub fn open(root: &Path, capacity: u64) -> std::io::Result<DiskCache> {
        let chunks = root.join("chunks");
        std::fs::create_dir_all(&chunks)?;
        let mut index = Index::default();
        for shard in std::fs::read_dir(&chunks)?.flatten() {
            let Ok(files) = std::fs::read_dir(shard.path()) else {
                continue;
            };
            for f in files.flatten() {
                let name = f.file_name();
                let Some(d) = name.to_str().and_then(Digest::from_hex) else {
                    // Temporary files of an interrupted writer: remove them.
                    let _ = std::fs::remove_file(f.path());
                    continue;
                };
                if let Ok(m) = f.metadata() {
                    index.bytes += m.len();
                    index
                        .entries
                        .insert(d, (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
                }
            }
        }
        let cache = DiskCache {
            root: root.to_path_buf(),
            capacity,
            index: Mutex::new(index),
        };
        cache.evict();
        Ok(cache)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, d: &Digest) -> PathBuf {
        let h = d.to_hex();
        self.root.join("chunks").join(&h[..2]).join(h)
    }

    pub fn get(&self, info: &ChunkInfo) -> DiskLookup {
        let p = self.path(&info.hash);
        let raw = match std::fs::read(&p) {
            Ok(b) => b,
            Err(_) => return DiskLookup::Miss,
        };
        match VerifiedChunk::from_raw(info, Bytes::from(raw)) {
            Ok(c) => {
                let now = SystemTime::now();
                if let Ok(f) = std::fs::File::options().write(true).open(&p) {
                    let _ = f.set_modified(now);
                }
                if let Some(e) = self.lock().entries.get_mut(&info.hash) {
                    e.1 = now;
                }
                DiskLookup::Hit(c)
            }
            Err(outcome) => {
                tracing::warn!(chunk = %info.hash.short(), %outcome, path = %p.display(), "disk cache entry failed verification; removed");
                let _ = std::fs::remove_file(&p);
                let mut g = self.lock();
                if let Some((len, _)) = g.entries.remove(&info.hash) {
                    g.bytes -= len;
                }
                DiskLookup::Corrupt
            }
        }
    }

    /// Stores a verified chunk. Errors (disk full, permissions) are logged and ignored: the cache
    /// is an optimisation, never a reason for a read to fail.
    pub fn put(&self, c: &VerifiedChunk) {
        if let Err(e) = self.try_put(c) {
            tracing::warn!(chunk = %c.hash().short(), error = %e, "could not write disk cache entry");
        }
    }

    fn try_put(&self, c: &VerifiedChunk) -> std::io::Result<()> {
        if self.lock().entries.contains_key(&c.hash()) {
            return Ok(());
        }
        let p = self.path(&c.hash());
        let dir = p.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(dir)?;
        let mut tmp = tempfile_in(dir)?;
        tmp.1.write_all(c.data())?;
        drop(tmp.1);
        std::fs::rename(&tmp.0, &p).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp.0);
        })?;
        {
            let mut g = self.lock();
            g.bytes += c.len() as u64;
            g.entries
                .insert(c.hash(), (c.len() as u64, SystemTime::now()));
        }
        self.evict();
        Ok(())
    }

    fn evict(&self) {
        let mut g = self.lock();
        if g.bytes <= self.capacity {
            return;
        }
        let mut by_age: Vec<(SystemTime, Digest, u64)> = g
            .entries
            .iter()
            .map(|(d, (len, t))| (*t, *d, *len))
            .collect();
        by_age.sort();
        for (_, d, len) in by_age {
            if g.bytes <= self.capacity {
                break;
            }
            let _ = std::fs::remove_file(self.path(&d));
            g.entries.remove(&d);
            g.bytes -= len;
        }
    }

    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }
}

fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        ".tmp-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let p = dir.join(name);
    let f = std::fs::File::options()
        .write(true)
        .create_new(true)
        .open(&p)?;
    Ok((p, f))
}
