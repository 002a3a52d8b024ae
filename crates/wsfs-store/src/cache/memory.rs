//! In-memory LRU of verified chunks, bounded in bytes (not entries: chunks vary from a few bytes
//! to 16 MiB).

use crate::manifest::Digest;
use crate::store::VerifiedChunk;
use lru::LruCache;
use std::sync::Mutex;

pub struct MemoryCache {
    inner: Mutex<Inner>,
    capacity: usize,
}

struct Inner {
    lru: LruCache<Digest, VerifiedChunk>,
    bytes: usize,
}

impl MemoryCache {
    pub fn new(capacity_bytes: usize) -> MemoryCache {
        MemoryCache {
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                bytes: 0,
            }),
            capacity: capacity_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, d: &Digest) -> Option<VerifiedChunk> {
        self.lock().lru.get(d).cloned()
    }

    /// Inserts a chunk, evicting least recently used chunks until the total fits. A chunk larger
    /// than the whole capacity is not kept.
    pub fn insert(&self, c: VerifiedChunk) {
        if c.len() > self.capacity {
            return;
        }
        let mut g = self.lock();
        if let Some(old) = g.lru.put(c.hash(), c.clone()) {
            g.bytes -= old.len();
        }
        g.bytes += c.len();
        while g.bytes > self.capacity {
            match g.lru.pop_lru() {
                Some((_, old)) => g.bytes -= old.len(),
                None => break,
            }
        }
    }

    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    pub fn len(&self) -> usize {
        self.lock().lru.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
