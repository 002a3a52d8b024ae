//! A `Provider`: one object store, its key prefix, its request limits and its health.
//!
//! Every request is bounded by the provider's request timeout (enforced here, around
//! object_store's own timeout and retries) and classified into an [`Outcome`].

use super::breaker::Breaker;
use super::config::{limits_for, ConfigError, Limits, StoreSpec};
use super::outcome::Outcome;
use super::stats::ProviderStats;
use bytes::Bytes;
use object_store::path::Path as StorePath;
use object_store::{BackoffConfig, ObjectStore, ObjectStoreScheme, PutPayload, RetryConfig};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An object found by [`Provider::list`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// The key, relative to the store's prefix (`chunks/ab/ab12…`).
    pub key: String,
    pub size: u64,
    /// Last modified, Unix seconds.
    pub modified: i64,
}

/// The longest a whole listing may take (pages are bounded by the request timeout).
pub const LIST_LIMIT: Duration = Duration::from_secs(30 * 60);

pub struct Provider {
    /// Display name: the URL without credentials or query, e.g. `s3://bucket/prefix`.
    pub name: String,
    store: Arc<dyn ObjectStore>,
    prefix: StorePath,
    /// For a `file://` store, its directory (gc sweeps upload leftovers there, which object
    /// listings do not show).
    local_dir: Option<std::path::PathBuf>,
    pub limits: Limits,
    pub breaker: Breaker,
    pub stats: ProviderStats,
    /// Bounds requests in flight (`Limits::concurrency`).
    permits: tokio::sync::Semaphore,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Provider({})", self.name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderBuildError {
    #[error("store URL {url:?} is not valid: {why}")]
    BadUrl { url: String, why: String },
    #[error("cannot set up store {url}: {why}")]
    Build { url: String, why: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Strips credentials and query from a URL for logs, messages and status output.
pub fn display_name(url: &url::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    let s = u.to_string();
    s.trim_end_matches('/').to_string()
}

impl Provider {
    pub fn from_spec(spec: &StoreSpec, base: Limits) -> Result<Provider, ProviderBuildError> {
        let (limits, options) = limits_for(spec, base)?;
        let url = url::Url::parse(&spec.url).map_err(|e| ProviderBuildError::BadUrl {
            url: spec.url.clone(),
            why: format!(
                "{e} (expected e.g. file:///abs/dir, s3://bucket/prefix, gs://bucket/prefix)"
            ),
        })?;
        if url.scheme() == "file" && url.path().trim_end_matches('/').is_empty() {
            return Err(ProviderBuildError::BadUrl {
                url: spec.url.clone(),
                why: "a file store needs a directory: file:///absolute/dir".into(),
            });
        }
        let (store, prefix) =
            build_store(&url, &options, &limits).map_err(|why| ProviderBuildError::Build {
                url: display_name(&url),
                why,
            })?;
        let local_dir = (url.scheme() == "file")
            .then(|| url.to_file_path().ok())
            .flatten();
        Ok(Provider {
            name: display_name(&url),
            store,
            prefix,
            local_dir,
            limits,
            breaker: Breaker::default(),
            stats: ProviderStats::default(),
            permits: tokio::sync::Semaphore::new(limits.concurrency.max(1)),
        })
    }

    /// Wraps an existing store (tests, fault injection).
    pub fn from_store(name: &str, store: Arc<dyn ObjectStore>, limits: Limits) -> Provider {
        Provider {
            name: name.to_string(),
            store,
            prefix: StorePath::default(),
            local_dir: None,
            limits,
            breaker: Breaker::default(),
            stats: ProviderStats::default(),
            permits: tokio::sync::Semaphore::new(limits.concurrency.max(1)),
        }
    }

    fn path(&self, key: &str) -> StorePath {
        let mut p = self.prefix.clone();
        for part in key.split('/') {
            p = p.child(part);
        }
        p
    }

    /// GETs a whole object of at most `cap` bytes. Chunks are fetched whole: they are small,
    /// and some servers (moto) read the whole object for every range request anyway. An object
    /// announced larger than `cap` is `corrupt` and its body is not read: a huge object in place
    /// of a chunk must not take the daemon's memory. (The announced size is binding: the HTTP
    /// client stops at Content-Length, and local files are read to the size they had.)
    pub async fn get_capped(&self, key: &str, cap: u64) -> Result<Bytes, Outcome> {
        let path = self.path(key);
        let fut = async {
            let r = self.store.get(&path).await.map_err(classify)?;
            let size = r.meta.size;
            if size > cap {
                return Err(Outcome::Corrupt(format!(
                    "object of {size} bytes where at most {cap} belong; not read"
                )));
            }
            // One read of the whole body (a stream of a local file would be thousands of
            // blocking 8 KiB reads).
            let body = r.bytes().await.map_err(classify)?;
            if body.len() as u64 > cap {
                return Err(Outcome::Corrupt(format!(
                    "object larger than the {cap} bytes that belong"
                )));
            }
            Ok(body)
        };
        self.bounded(fut).await
    }

    /// GETs bytes `range` of an object (a run of a framed chunk's frames). Exactly that many
    /// bytes or a miss: a shorter answer (the object is smaller, or another encoding of the
    /// chunk is stored) is `short`, never a partial success.
    pub async fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, Outcome> {
        let path = self.path(key);
        let want = range.end.saturating_sub(range.start);
        let fut = async {
            let body = self
                .store
                .get_range(&path, range)
                .await
                .map_err(classify_range)?;
            let got = body.len() as u64;
            if got < want {
                return Err(Outcome::Short { got, want });
            }
            if got > want {
                return Err(Outcome::Corrupt(format!(
                    "{got} bytes for a range of {want}"
                )));
            }
            Ok(body)
        };
        self.bounded(fut).await
    }

    /// The directory of a `file://` store.
    pub fn local_dir(&self) -> Option<&std::path::Path> {
        self.local_dir.as_deref()
    }

    /// Every object under `prefix` (a key prefix ending at a `/` boundary, e.g. `chunks` or
    /// `workspaces/ws`), with its size and last-modified time. Each page of the listing is
    /// bounded by the store's request timeout; the whole listing by [`LIST_LIMIT`].
    pub async fn list(&self, prefix: &str) -> Result<Vec<Listed>, Outcome> {
        use futures::TryStreamExt;
        let path = self.path(prefix);
        let base = self.prefix.parts().count();
        let all = self
            .store
            .list(Some(&path))
            .map_err(classify)
            .try_collect::<Vec<_>>();
        let metas = tokio::time::timeout(LIST_LIMIT, all)
            .await
            .map_err(|_| Outcome::Timeout(LIST_LIMIT))??;
        Ok(metas
            .into_iter()
            .map(|m| Listed {
                key: m
                    .location
                    .parts()
                    .skip(base)
                    .map(|p| p.as_ref().to_string())
                    .collect::<Vec<_>>()
                    .join("/"),
                size: m.size,
                modified: m.last_modified.timestamp(),
            })
            .collect())
    }

    /// HEAD: the stored size of an object.
    pub async fn head(&self, key: &str) -> Result<u64, Outcome> {
        let path = self.path(key);
        self.bounded(async {
            self.store
                .head(&path)
                .await
                .map(|m| m.size)
                .map_err(classify)
        })
        .await
    }

    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), Outcome> {
        let path = self.path(key);
        // Uploads carry up to 4 MiB: allow them a few request timeouts.
        let limit = self.limits.request_timeout * 4;
        match tokio::time::timeout(limit, self.store.put(&path, PutPayload::from_bytes(bytes)))
            .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(classify(e)),
            Err(_) => Err(Outcome::Timeout(limit)),
        }
    }

    /// Deletes many objects, in bulk where the store can (S3: 1,000 per request). `done` is
    /// called once per key handled. A key that is already gone counts as deleted; the other
    /// failures are returned (at most 100 of them described).
    pub async fn delete_many(
        &self,
        keys: Vec<String>,
        done: &(dyn Fn() + Sync),
    ) -> Result<Vec<String>, Outcome> {
        use futures::StreamExt;
        let paths: Vec<object_store::Result<StorePath>> =
            keys.iter().map(|k| Ok(self.path(k))).collect();
        let mut errors = Vec::new();
        let work = async {
            let mut results = self
                .store
                .delete_stream(futures::stream::iter(paths).boxed());
            while let Some(r) = results.next().await {
                done();
                match r {
                    Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => {
                        if errors.len() < 100 {
                            errors.push(classify(e).to_string());
                        }
                    }
                }
            }
        };
        tokio::time::timeout(LIST_LIMIT, work)
            .await
            .map_err(|_| Outcome::Timeout(LIST_LIMIT))?;
        Ok(errors)
    }

    pub async fn delete(&self, key: &str) -> Result<(), Outcome> {
        let path = self.path(key);
        self.bounded(async { self.store.delete(&path).await.map_err(classify) })
            .await
    }

    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, Outcome>>,
    ) -> Result<T, Outcome> {
        let limit = self.limits.request_timeout;
        // Waiting for a slot counts against the request timeout: a provider whose every slot is
        // held by hung requests times out new ones too, instead of queueing them forever.
        let run = async {
            let _permit = self
                .permits
                .acquire()
                .await
                .map_err(|_| Outcome::Unavailable("provider closed".into()))?;
            fut.await
        };
        match tokio::time::timeout(limit, run).await {
            Ok(r) => r,
            Err(_) => Err(Outcome::Timeout(limit)),
        }
    }

    /// Runs one request under the breaker, recording its health.
    pub async fn attempt<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, Outcome>>,
    ) -> (Result<T, Outcome>, Duration) {
        let start = Instant::now();
        let r = fut.await;
        match &r {
            Err(o) if o.is_provider_failure() => self.breaker.record_failure(),
            _ => self.breaker.record_success(),
        }
        (r, start.elapsed())
    }
}

/// A range outside the object means another (shorter) encoding of the chunk is stored there:
/// a miss of this range on this store (`short`), not a failure of the store.
fn classify_range(e: object_store::Error) -> Outcome {
    let msg = e.to_string().to_ascii_lowercase();
    let outside = msg.contains("416") || msg.contains("range") && msg.contains("invalid");
    if outside && !matches!(e, object_store::Error::NotFound { .. }) {
        return Outcome::Short { got: 0, want: 1 };
    }
    classify(e)
}

fn classify(e: object_store::Error) -> Outcome {
    match e {
        object_store::Error::NotFound { .. } => Outcome::NotFound,
        other => {
            // Keep the message short: object_store errors nest their sources deeply.
            let mut msg = other.to_string();
            let mut src = std::error::Error::source(&other);
            while let Some(s) = src {
                msg = format!("{msg}: {s}");
                src = s.source();
            }
            let mut msg = redact_urls(&msg);
            if msg.len() > 300 {
                // Cut on a character boundary: object_store messages contain "µs".
                let mut n = 300;
                while !msg.is_char_boundary(n) {
                    n -= 1;
                }
                msg.truncate(n);
                msg.push('…');
            }
            Outcome::Unavailable(msg)
        }
    }
}

/// Removes credentials from URLs inside a message: userinfo (`user:pass@`) and query strings
/// (SAS tokens, presigned signatures). Error texts from the HTTP client quote request URLs, and
/// they end up in logs, `wsfs status` and the failure ledger.
pub fn redact_urls(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find("://") {
        out.push_str(&rest[..i + 3]);
        rest = &rest[i + 3..];
        let end = rest
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ')' | '>'))
            .unwrap_or(rest.len());
        let token = &rest[..end];
        let (authority_end, _) = token
            .char_indices()
            .find(|(_, c)| *c == '/' || *c == '?')
            .unwrap_or((token.len(), ' '));
        let authority = &token[..authority_end];
        let host = authority
            .rsplit_once('@')
            .map(|(_, h)| h)
            .unwrap_or(authority);
        out.push_str(host);
        let path = &token[authority_end..];
        match path.find('?') {
            Some(q) => {
                out.push_str(&path[..q]);
                out.push_str("?…");
            }
            None => out.push_str(path),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn retry_config(limits: &Limits) -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            base: 2.0,
        },
        max_retries: limits.retries,
        retry_timeout: limits.request_timeout,
    }
}

fn fmt_ms(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

/// Builds the object store for a URL. Cloud stores start from the environment (`AWS_*`,
/// `GOOGLE_*`, `AZURE_*`) as object_store defines it, then the spec's options, then wsfs's limits
/// (unless the options set their own `timeout` / `connect_timeout`).
fn build_store(
    url: &url::Url,
    options: &BTreeMap<String, String>,
    limits: &Limits,
) -> Result<(Arc<dyn ObjectStore>, StorePath), String> {
    let (scheme, path) = ObjectStoreScheme::parse(url).map_err(|e| e.to_string())?;
    let mut opts: Vec<(String, String)> = options
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !options.contains_key("timeout") {
        opts.push(("timeout".into(), fmt_ms(limits.request_timeout)));
    }
    if !options.contains_key("connect_timeout") {
        opts.push(("connect_timeout".into(), fmt_ms(limits.connect_timeout)));
    }
    let retry = retry_config(limits);
    macro_rules! cloud {
        ($builder:ty, $url:expr) => {{
            let mut b = <$builder>::from_env().with_url($url);
            for (k, v) in &opts {
                let key = k
                    .parse()
                    .map_err(|_| format!("unknown option {k:?} for this kind of store"))?;
                b = b.with_config(key, v.clone());
            }
            Arc::new(b.with_retry(retry).build().map_err(|e| e.to_string())?)
                as Arc<dyn ObjectStore>
        }};
    }
    let store: Arc<dyn ObjectStore> = match scheme {
        ObjectStoreScheme::Local => {
            if !options.is_empty() {
                return Err("file:// stores take no options".into());
            }
            Arc::new(object_store::local::LocalFileSystem::new())
        }
        ObjectStoreScheme::Memory => Arc::new(object_store::memory::InMemory::new()),
        ObjectStoreScheme::AmazonS3 => cloud!(object_store::aws::AmazonS3Builder, url.to_string()),
        ObjectStoreScheme::GoogleCloudStorage => {
            cloud!(
                object_store::gcp::GoogleCloudStorageBuilder,
                url.to_string()
            )
        }
        ObjectStoreScheme::MicrosoftAzure => {
            cloud!(object_store::azure::MicrosoftAzureBuilder, url.to_string())
        }
        ObjectStoreScheme::Http => {
            let base = &url[..url::Position::BeforePath];
            // The scheme says it: an http:// store is plain HTTP (object_store refuses it
            // unless told). TLS (https://) is what to use across any network you do not own.
            if url.scheme() == "http" && !opts.iter().any(|(k, _)| k == "allow_http") {
                opts.push(("allow_http".into(), "true".into()));
            }
            let mut b = object_store::http::HttpBuilder::new().with_url(base);
            for (k, v) in &opts {
                let key = k
                    .parse()
                    .map_err(|_| format!("unknown option {k:?} for an http store"))?;
                b = b.with_config(key, v.clone());
            }
            Arc::new(b.with_retry(retry).build().map_err(|e| e.to_string())?)
        }
        other => return Err(format!("{other:?} stores are not supported")),
    };
    let prefix = StorePath::parse(path).map_err(|e| e.to_string())?;
    Ok((store, prefix))
}

#[cfg(test)]
mod tests {
    use super::redact_urls;

    #[test]
    fn urls_lose_credentials() {
        assert_eq!(
            redact_urls("Error performing GET https://acct.blob.core.windows.net/c/k?sv=2020&sig=SECRET in 3ms"),
            "Error performing GET https://acct.blob.core.windows.net/c/k?… in 3ms"
        );
        assert_eq!(
            redact_urls("connect to http://user:pw@host:9000/b failed"),
            "connect to http://host:9000/b failed"
        );
        assert_eq!(redact_urls("no url here"), "no url here");
        assert_eq!(redact_urls("(http://h/p?x=1)"), "(http://h/p?…)");
    }
}
