//! `FaultStore`: wraps any `ObjectStore` and injects failures into reads, per key pattern or for
//! the next N calls. Used by fast unit tests of the chain (the HTTP-level equivalent for real
//! servers is the fault proxy in the integration tests).

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// 404.
    NotFound,
    /// A generic service error (as a 503 would surface).
    Error,
    /// Wait, then answer normally.
    Delay(Duration),
    /// Never answer (until the caller's timeout).
    Hang,
    /// Answer with only the first half of the body.
    Truncate,
    /// Answer with every byte inverted (same length).
    FlipBytes,
    /// Answer 200 with an empty body.
    EmptyBody,
}

#[derive(Clone, Debug)]
pub struct Rule {
    /// Applies to keys containing this string; empty matches every key.
    pub key_contains: String,
    pub fault: Fault,
    /// How many more times this rule fires; `None` = always.
    pub remaining: Option<usize>,
}

#[derive(Debug)]
pub struct FaultStore {
    inner: Arc<dyn ObjectStore>,
    rules: Mutex<Vec<Rule>>,
    gets: AtomicUsize,
}

impl std::fmt::Display for FaultStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FaultStore({})", self.inner)
    }
}

impl FaultStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> FaultStore {
        FaultStore {
            inner,
            rules: Mutex::new(Vec::new()),
            gets: AtomicUsize::new(0),
        }
    }

    pub fn add(&self, key_contains: &str, fault: Fault, times: Option<usize>) {
        self.lock().push(Rule {
            key_contains: key_contains.to_string(),
            fault,
            remaining: times,
        });
    }

    pub fn clear(&self) {
        self.lock().clear();
    }

    /// GET requests seen so far.
    pub fn gets(&self) -> usize {
        self.gets.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Rule>> {
        self.rules.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pick(&self, location: &Path) -> Option<Fault> {
        let mut rules = self.lock();
        let key = location.as_ref();
        for r in rules.iter_mut() {
            if !key.contains(&r.key_contains) {
                continue;
            }
            match &mut r.remaining {
                Some(0) => continue,
                Some(n) => *n -= 1,
                None => {}
            }
            return Some(r.fault.clone());
        }
        None
    }
}

fn not_found(location: &Path) -> object_store::Error {
    object_store::Error::NotFound {
        path: location.to_string(),
        source: "injected not found".into(),
    }
}

fn injected_error() -> object_store::Error {
    object_store::Error::Generic {
        store: "fault",
        source: "injected 503 Service Unavailable".into(),
    }
}

fn with_body(mut r: GetResult, body: Bytes) -> GetResult {
    r.range = 0..body.len() as u64;
    r.payload = GetResultPayload::Stream(stream::once(async move { Ok(body) }).boxed());
    r
}

#[async_trait]
impl ObjectStore for FaultStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        let fault = self.pick(location);
        match fault {
            None => self.inner.get_opts(location, options).await,
            Some(Fault::NotFound) => Err(not_found(location)),
            Some(Fault::Error) => Err(injected_error()),
            Some(Fault::Hang) => {
                futures::future::pending::<()>().await;
                Err(injected_error())
            }
            Some(Fault::Delay(d)) => {
                tokio::time::sleep(d).await;
                self.inner.get_opts(location, options).await
            }
            Some(f) => {
                let r = self.inner.get_opts(location, options).await?;
                let meta_size = r.meta.size;
                let r2 = GetResult {
                    payload: GetResultPayload::Stream(stream::empty().boxed()),
                    meta: r.meta.clone(),
                    range: 0..meta_size,
                    attributes: r.attributes.clone(),
                };
                let body = r.bytes().await?;
                let body = match f {
                    Fault::Truncate => body.slice(..body.len() / 2),
                    Fault::FlipBytes => Bytes::from(body.iter().map(|b| !b).collect::<Vec<u8>>()),
                    _ => Bytes::new(),
                };
                Ok(with_body(r2, body))
            }
        }
    }

    async fn head(&self, location: &Path) -> Result<ObjectMeta> {
        match self.pick(location) {
            Some(Fault::NotFound) => Err(not_found(location)),
            Some(Fault::Error) => Err(injected_error()),
            _ => self.inner.head(location).await,
        }
    }

    async fn delete(&self, location: &Path) -> Result<()> {
        self.inner.delete(location).await
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
        self.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        self.inner.copy_if_not_exists(from, to).await
    }
}
