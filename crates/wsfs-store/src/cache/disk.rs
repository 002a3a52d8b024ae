//! On-disk cache of raw chunk bytes, shared by every mount on the machine; and, for FUSE
//! passthrough (`--passthrough`), whole files materialized from verified chunks (`files/`).
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
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

pub struct DiskCache {
    root: PathBuf,
    capacity: u64,
    index: Mutex<Index>,
}

/// An entry of the cache: a chunk (by its digest) or a materialized file (by the BLAKE3 of its
/// whole content). Both count against the one size bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Key {
    Chunk(Digest),
    File(Digest),
}

#[derive(Default)]
struct Index {
    entries: HashMap<Key, (u64, SystemTime)>,
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
                    index.entries.insert(
                        Key::Chunk(d),
                        (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)),
                    );
                }
            }
        }
        let files = root.join("files");
        std::fs::create_dir_all(&files)?;
        for f in std::fs::read_dir(&files)?.flatten() {
            let name = f.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".id") {
                continue;
            }
            let Some(d) = Digest::from_hex(&name) else {
                let _ = std::fs::remove_file(f.path());
                continue;
            };
            // A file without its identity record was never finished: remove it. Its age is its
            // record's mtime (the file's own times are part of its identity: never touched).
            let id = files.join(format!("{name}.id"));
            match (f.metadata(), id.metadata()) {
                (Ok(m), Ok(idm)) => {
                    index.bytes += m.len();
                    index.entries.insert(
                        Key::File(d),
                        (m.len(), idm.modified().unwrap_or(SystemTime::UNIX_EPOCH)),
                    );
                }
                _ => {
                    let _ = std::fs::remove_file(f.path());
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

    fn file_path(&self, content: &Digest) -> PathBuf {
        self.root.join("files").join(content.to_hex())
    }

    fn key_path(&self, k: &Key) -> PathBuf {
        match k {
            Key::Chunk(d) => self.path(d),
            Key::File(d) => self.file_path(d),
        }
    }

    /// Whether the chunk is in the cache (by this process's index; a later read re-verifies it).
    pub fn has_chunk(&self, d: &Digest) -> bool {
        self.lock().entries.contains_key(&Key::Chunk(*d))
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
                if let Some(e) = self.lock().entries.get_mut(&Key::Chunk(info.hash)) {
                    e.1 = now;
                }
                DiskLookup::Hit(c)
            }
            Err(outcome) => {
                tracing::warn!(chunk = %info.hash.short(), %outcome, path = %p.display(), "disk cache entry failed verification; removed");
                let _ = std::fs::remove_file(&p);
                let mut g = self.lock();
                if let Some((len, _)) = g.entries.remove(&Key::Chunk(info.hash)) {
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
        if self.lock().entries.contains_key(&Key::Chunk(c.hash())) {
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
                .insert(Key::Chunk(c.hash()), (c.len() as u64, SystemTime::now()));
        }
        self.evict();
        Ok(())
    }

    fn evict(&self) {
        let mut g = self.lock();
        if g.bytes <= self.capacity {
            return;
        }
        let mut by_age: Vec<(SystemTime, Key, u64)> = g
            .entries
            .iter()
            .map(|(k, (len, t))| (*t, *k, *len))
            .collect();
        by_age.sort();
        for (_, k, len) in by_age {
            if g.bytes <= self.capacity {
                break;
            }
            // An open descriptor of an evicted file stays valid (passthrough keeps reading it).
            let p = self.key_path(&k);
            let _ = std::fs::remove_file(&p);
            if let Key::File(_) = k {
                let _ = std::fs::remove_file(p.with_extension("id"));
            }
            g.entries.remove(&k);
            g.bytes -= len;
        }
    }

    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// The materialized copy of a file whose whole content has BLAKE3 `content` and length
    /// `size`, opened read-only — if there is one and it is exactly what was written: its
    /// identity (device, inode, size, modification and change times) must match the record
    /// written when it was made from verified chunks. Any write, truncation, `touch` or
    /// replacement changes the change time, which no process can set back, and the copy is
    /// then dropped (the caller makes a new one).
    pub fn file(&self, content: &Digest, size: u64) -> Option<std::fs::File> {
        let p = self.file_path(content);
        let id = p.with_extension("id");
        let want = std::fs::read_to_string(&id).ok()?;
        let f = std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&p)
            .ok()?;
        let m = f.metadata().ok()?;
        if !m.is_file() || m.len() != size || identity(&m) != want.trim() {
            tracing::warn!(path = %p.display(), "a materialized file changed since it was verified; dropped");
            self.drop_file(content);
            return None;
        }
        let now = SystemTime::now();
        if let Ok(idf) = std::fs::File::options().write(true).open(&id) {
            let _ = idf.set_modified(now);
        }
        if let Some(e) = self.lock().entries.get_mut(&Key::File(*content)) {
            e.1 = now;
        }
        Some(f)
    }

    fn drop_file(&self, content: &Digest) {
        let p = self.file_path(content);
        let _ = std::fs::remove_file(&p);
        let _ = std::fs::remove_file(p.with_extension("id"));
        let mut g = self.lock();
        if let Some((len, _)) = g.entries.remove(&Key::File(*content)) {
            g.bytes -= len;
        }
    }

    /// Starts materializing a file; the caller writes its content in order, then
    /// [`FileWriter::finish`] checks it against `content` and puts it in place.
    pub fn begin_file(&self, content: Digest, size: u64) -> std::io::Result<FileWriter<'_>> {
        let dir = self.root.join("files");
        std::fs::create_dir_all(&dir)?;
        let (tmp, file) = tempfile_in(&dir)?;
        Ok(FileWriter {
            cache: self,
            content,
            size,
            tmp,
            file: std::io::BufWriter::with_capacity(1 << 20, file),
            hasher: blake3::Hasher::new(),
            written: 0,
        })
    }
}

/// The identity of a materialized file as recorded when it was made.
fn identity(m: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "dev={} ino={} size={} mtime={}.{} ctime={}.{}",
        m.dev(),
        m.ino(),
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    )
}

/// A file being materialized (see [`DiskCache::begin_file`]). Dropped unfinished, it removes
/// its temporary file.
pub struct FileWriter<'a> {
    cache: &'a DiskCache,
    content: Digest,
    size: u64,
    tmp: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    hasher: blake3::Hasher,
    written: u64,
}

impl FileWriter<'_> {
    pub fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        self.file.write_all(bytes)
    }

    /// Checks length and BLAKE3 against the manifest's, puts the file in place, records its
    /// identity, and returns it opened read-only.
    pub fn finish(mut self) -> std::io::Result<std::fs::File> {
        self.file.flush()?;
        if self.written != self.size || *self.hasher.finalize().as_bytes() != self.content.0 {
            return Err(std::io::Error::other(format!(
                "materialized content does not match the manifest ({} of {} bytes)",
                self.written, self.size
            )));
        }
        let p = self.cache.file_path(&self.content);
        std::fs::rename(&self.tmp, &p)?;
        // After the rename (which changes the change time): what `file` will compare with.
        let f = std::fs::File::open(&p)?;
        let m = f.metadata()?;
        let id = p.with_extension("id");
        let (idtmp, mut idf) = tempfile_in(p.parent().unwrap_or(&self.cache.root))?;
        idf.write_all(identity(&m).as_bytes())?;
        drop(idf);
        std::fs::rename(&idtmp, &id)?;
        {
            let mut g = self.cache.lock();
            if g.entries
                .insert(Key::File(self.content), (m.len(), SystemTime::now()))
                .is_none()
            {
                g.bytes += m.len();
            }
        }
        self.cache.evict();
        self.tmp = PathBuf::new();
        Ok(f)
    }
}

impl Drop for FileWriter<'_> {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
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
