//! The loopback object-store emulators the tests use (moto for S3, fake-gcs-server for GCS),
//! as scripts/test.sh starts them: their endpoints, buckets, and `--config` files that point a
//! store at them (or at a fault proxy in front of them). Tests never skip: without the
//! environment the scripts export they fail and say so.
#![allow(dead_code)]

use super::text;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct Env {
    pub s3: String,
    pub gcs: String,
}

/// The emulator endpoints, or a clear failure (never a skip).
pub fn env() -> Env {
    let need = [
        "WSFS_TEST_S3_ENDPOINT",
        "WSFS_TEST_GCS_ENDPOINT",
        "AWS_ENDPOINT",
        "AWS_ALLOW_HTTP",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "GOOGLE_SERVICE_ACCOUNT_KEY",
    ];
    let missing: Vec<&str> = need
        .iter()
        .copied()
        .filter(|v| std::env::var_os(v).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "provider tests need the emulator environment, missing: {missing:?}. Run scripts/test.sh, or \
         `bash scripts/servers.sh start && source /tmp/wsfs-test-servers/env.sh` before cargo test"
    );
    Env {
        s3: std::env::var("WSFS_TEST_S3_ENDPOINT")
            .unwrap()
            .trim_end_matches('/')
            .to_string(),
        gcs: std::env::var("WSFS_TEST_GCS_ENDPOINT")
            .unwrap()
            .trim_end_matches('/')
            .to_string(),
    }
}

/// A bucket name unique to this test run (the emulators outlive test runs).
pub fn unique(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{tag}-{}-{nanos:x}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Runs a small boto3 script against moto (argv[1] = endpoint, then `args`).
pub fn s3_py(e: &Env, script: &str, args: &[&str]) {
    let o = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sys, os, boto3\ns3 = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1', \
             aws_access_key_id='testing', aws_secret_access_key='testing')\n{script}"
        ))
        .arg(&e.s3)
        .args(args)
        .output()
        .expect("run python3 (boto3 comes with moto)");
    assert!(o.status.success(), "boto3 helper failed: {}", text(&o));
}

pub fn mk_s3(e: &Env, bucket: &str) {
    s3_py(e, "s3.create_bucket(Bucket=sys.argv[2])", &[bucket]);
}

/// Deletes every object under `prefix` in an S3 bucket.
/// Writes a `--config` TOML with these stores in order (url, options).
pub fn write_config(path: &Path, stores: &[(String, Vec<(&str, String)>)]) {
    let mut t = String::new();
    for (url, opts) in stores {
        t.push_str(&format!("[[store]]\nurl = {url:?}\n"));
        let o: Vec<String> = opts.iter().map(|(k, v)| format!("{k} = {v:?}")).collect();
        t.push_str(&format!("options = {{ {} }}\n", o.join(", ")));
    }
    std::fs::write(path, t).expect("write config");
}

/// Options that send an s3:// store through `endpoint` (a fault proxy).
pub fn s3_via(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("aws_endpoint", endpoint.to_string()),
        ("aws_allow_http", "true".to_string()),
    ]
}

pub fn mk_gcs(e: &Env, bucket: &str) {
    let o = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
        ])
        .arg("--data")
        .arg(format!("{{\"name\":\"{bucket}\"}}"))
        .arg(format!("{}/storage/v1/b", e.gcs))
        .output()
        .expect("run curl");
    let code = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        code == "200" || code == "409",
        "creating GCS bucket {bucket}: HTTP {code} {}",
        text(&o)
    );
}

/// Copies the objects of a file:// store into a GCS bucket under `prefix`, keeping those whose
/// key `keep` accepts. Why not `wsfs persist --store gs://…`: fake-gcs-server refuses
/// object_store's uploads (its XML `PUT {base}/B/KEY` answers `400 invalid uploadType`); it only
/// takes uploads through the JSON API, so the tests seed GCS over that API instead. Reads, which
/// are what these tests exercise, work object_store-style.
pub fn gcs_seed(
    e: &Env,
    store_dir: &Path,
    bucket: &str,
    prefix: &str,
    keep: impl Fn(&str) -> bool,
) -> usize {
    let mut n = 0;
    for ent in walkdir::WalkDir::new(store_dir)
        .into_iter()
        .map(|x| x.expect("walk store"))
    {
        if !ent.file_type().is_file() {
            continue;
        }
        let rel = ent
            .path()
            .strip_prefix(store_dir)
            .unwrap()
            .to_str()
            .expect("utf-8 key")
            .to_string();
        if !keep(&rel) {
            continue;
        }
        let name = format!("{prefix}/{rel}").replace('/', "%2F");
        let o = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
            .args([
                "-H",
                "Content-Type: application/octet-stream",
                "--data-binary",
            ])
            .arg(format!("@{}", ent.path().display()))
            .arg(format!(
                "{}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={name}",
                e.gcs
            ))
            .output()
            .expect("run curl");
        let code = String::from_utf8_lossy(&o.stdout).to_string();
        assert_eq!(
            code,
            "200",
            "uploading {rel} to GCS bucket {bucket}: {}",
            text(&o)
        );
        n += 1;
    }
    n
}
