//! Raw object_store GET baseline for `scripts/bench.sh` (issue 7): lists every object under
//! `<URL>/chunks/` and GETs each one whole with bounded concurrency, with no verification,
//! decompression or caching: the fastest a client of the same object_store crate can pull the
//! same bytes. Prints one JSON line: objects, bytes, seconds, MB/s.
//!
//! ```sh
//! cargo run --release --example raw_get -- s3://bucket/prefix [--concurrency 8]
//! ```
//! Credentials and endpoints come from the same environment variables wsfs reads (`AWS_*`,
//! `GOOGLE_*`, `AZURE_*`); `file:///abs` works too.

use futures::stream::{StreamExt, TryStreamExt};
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreScheme};
use std::sync::Arc;
use std::time::Instant;

fn store_for(url: &url::Url) -> Result<(Arc<dyn ObjectStore>, StorePath), String> {
    let (scheme, path) = ObjectStoreScheme::parse(url).map_err(|e| e.to_string())?;
    let store: Arc<dyn ObjectStore> = match scheme {
        ObjectStoreScheme::Local => Arc::new(object_store::local::LocalFileSystem::new()),
        ObjectStoreScheme::AmazonS3 => Arc::new(
            object_store::aws::AmazonS3Builder::from_env()
                .with_url(url.as_str())
                .build()
                .map_err(|e| e.to_string())?,
        ),
        ObjectStoreScheme::GoogleCloudStorage => Arc::new(
            object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(url.as_str())
                .build()
                .map_err(|e| e.to_string())?,
        ),
        ObjectStoreScheme::MicrosoftAzure => Arc::new(
            object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(url.as_str())
                .build()
                .map_err(|e| e.to_string())?,
        ),
        other => return Err(format!("unsupported store kind {other:?}")),
    };
    Ok((store, StorePath::parse(path).map_err(|e| e.to_string())?))
}

fn usage() -> ! {
    eprintln!("usage: raw_get URL [--concurrency N]");
    std::process::exit(2)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mut url = None;
    let mut concurrency = 8usize;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--concurrency" => {
                concurrency = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| n > 0)
                    .unwrap_or_else(|| usage())
            }
            _ if url.is_none() => url = Some(a),
            _ => usage(),
        }
    }
    let url = url.unwrap_or_else(|| usage());
    let url = url::Url::parse(&url).unwrap_or_else(|e| {
        eprintln!("raw_get: bad URL {url:?}: {e}");
        std::process::exit(2)
    });
    let (store, prefix) = store_for(&url).unwrap_or_else(|e| {
        eprintln!("raw_get: {e}");
        std::process::exit(2)
    });
    let chunks = prefix.child("chunks");
    let keys: Vec<StorePath> = store
        .list(Some(&chunks))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .unwrap_or_else(|e| {
            eprintln!("raw_get: listing {chunks}: {e}");
            std::process::exit(1)
        });
    if keys.is_empty() {
        eprintln!("raw_get: no objects under {chunks}");
        std::process::exit(1);
    }
    // Only the GETs are timed, as in a mount that already knows its chunk list.
    let started = Instant::now();
    let bytes: u64 = futures::stream::iter(keys.iter().cloned())
        .map(|k| {
            let store = store.clone();
            async move {
                let body = store.get(&k).await?.bytes().await?;
                Ok::<u64, object_store::Error>(body.len() as u64)
            }
        })
        .buffer_unordered(concurrency)
        .try_fold(0u64, |acc, n| async move { Ok(acc + n) })
        .await
        .unwrap_or_else(|e| {
            eprintln!("raw_get: GET failed: {e}");
            std::process::exit(1)
        });
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{{\"objects\": {}, \"bytes\": {bytes}, \"seconds\": {secs:.4}, \"mb_per_s\": {:.2}, \"concurrency\": {concurrency}}}",
        keys.len(),
        bytes as f64 / 1e6 / secs
    );
}
