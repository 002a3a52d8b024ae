//! Which stores make up the chain, and how each is reached.
//!
//! The chain is the `[[store]]` entries of `--config FILE` in order, then the `--store` flags in
//! order. Options are object_store configuration keys (`aws_endpoint`, `allow_http`, …) plus a
//! few of wsfs's own, prefixed `wsfs_` (timeouts and retries); environment variables that
//! object_store reads (`AWS_*`, `GOOGLE_*`, `AZURE_*`) apply too.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StoreSpec {
    pub url: String,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    store: Vec<StoreSpec>,
    /// Public keys (files made by `wsfs keygen`) whose signed refs are trusted; relative paths
    /// are relative to the config file.
    #[serde(default)]
    trust_keys: Vec<std::path::PathBuf>,
    /// What `wsfs mount --config FILE` mounts when the command line does not say (systemd's
    /// `wsfs@NAME` reads `/etc/wsfs/NAME.toml`); other commands ignore it.
    #[serde(default)]
    mount: MountSection,
}

/// The `[mount]` table of a config file: defaults for `wsfs mount`; a flag on the command line
/// wins over the same key here.
#[derive(Clone, Debug, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MountSection {
    pub workspace: Option<String>,
    #[serde(default)]
    pub layers: Vec<String>,
    /// Absolute path of the mount point.
    pub mountpoint: Option<std::path::PathBuf>,
    pub cache_dir: Option<std::path::PathBuf>,
    /// A size such as "10G".
    pub cache_size: Option<String>,
    pub allow_other: Option<bool>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// none, tree, chunks or all.
    pub prefetch: Option<String>,
    /// A duration such as "30s".
    pub read_deadline: Option<String>,
    pub metrics_file: Option<std::path::PathBuf>,
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Profile-guided prefetch under this name.
    pub profile: Option<String>,
    /// FUSE passthrough for files whose chunks are in the disk cache.
    pub passthrough: Option<bool>,
}

/// The `[mount]` table of a config file (empty without a file or a table).
/// Relative paths in it (mountpoint, cache_dir, metrics_file) are taken against the config
/// file's directory, as `trust_keys` are: the same file means the same mount wherever it is
/// used from (systemd runs in `/`).
pub fn config_mount(config: Option<&Path>) -> Result<MountSection, ConfigError> {
    let Some(path) = config else {
        return Ok(MountSection::default());
    };
    let mut m = read_config(path)?.mount;
    let base = path.parent().unwrap_or(Path::new("."));
    for p in [&mut m.mountpoint, &mut m.cache_dir, &mut m.metrics_file]
        .into_iter()
        .flatten()
    {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
    Ok(m)
}

fn read_config(path: &Path) -> Result<ConfigFile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// The `trust_keys` of a config file (paths made absolute against its directory).
pub fn config_trust_keys(config: Option<&Path>) -> Result<Vec<std::path::PathBuf>, ConfigError> {
    let Some(path) = config else {
        return Ok(Vec::new());
    };
    let file = read_config(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    Ok(file
        .trust_keys
        .into_iter()
        .map(|k| if k.is_absolute() { k } else { base.join(k) })
        .collect())
}

/// Per-provider request limits. object_store's own default retry policy can wait for minutes;
/// a job must never wait that long on one store when another could answer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Bound on one whole request (headers and body), retries included.
    pub request_timeout: Duration,
    /// Bound on establishing a connection.
    pub connect_timeout: Duration,
    /// Retries of transient errors (5xx, resets) within the request timeout; never on 404/403.
    pub retries: usize,
    /// Requests in flight to this provider at once. Background prefetch uses only a few of them,
    /// so on-demand reads always find room.
    pub concurrency: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            retries: 2,
            concurrency: 32,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message} (expected [[store]] tables with url = \"…\" and an optional options = {{ … }}, trust_keys = [\"…\"] and a [mount] table; see docs/operations.md)")]
    Parse { path: String, message: String },
    #[error("store option {key} = {value:?} is not valid: {why}")]
    BadOption {
        key: String,
        value: String,
        why: String,
    },
    #[error("no stores given: pass --store URL (repeatable, in failover order) or --config FILE")]
    NoStores,
}

/// Builds the ordered chain of store specs from an optional config file and `--store` flags.
pub fn chain_specs(config: Option<&Path>, flags: &[String]) -> Result<Vec<StoreSpec>, ConfigError> {
    let mut specs = Vec::new();
    if let Some(path) = config {
        specs.extend(read_config(path)?.store);
    }
    specs.extend(flags.iter().map(|u| StoreSpec {
        url: u.clone(),
        options: BTreeMap::new(),
    }));
    if specs.is_empty() {
        return Err(ConfigError::NoStores);
    }
    Ok(specs)
}

/// Whether a store URL carries credentials: a user name or password, or a query parameter that
/// is a token or signature (`sig=`, `X-Amz-Signature=`, `token=`, …). Such a URL is readable by
/// anyone who can see the command line; credentials belong in the environment or a config file.
pub fn url_has_credentials(url: &str) -> bool {
    let Ok(u) = url::Url::parse(url) else {
        return false;
    };
    const SECRET_KEYS: [&str; 10] = [
        "sig",
        "signature",
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "x-goog-signature",
        "token",
        "access_key",
        "secret",
        "password",
    ];
    !u.username().is_empty()
        || u.password().is_some()
        || u.query_pairs()
            .any(|(k, _)| SECRET_KEYS.contains(&k.to_ascii_lowercase().as_str()))
}

/// Splits wsfs's own `wsfs_*` options out of a spec and applies them over `base`.
pub fn limits_for(
    spec: &StoreSpec,
    base: Limits,
) -> Result<(Limits, BTreeMap<String, String>), ConfigError> {
    let mut limits = base;
    let mut rest = BTreeMap::new();
    for (k, v) in &spec.options {
        let bad = |why: &str| ConfigError::BadOption {
            key: k.clone(),
            value: v.clone(),
            why: why.to_string(),
        };
        match k.as_str() {
            "wsfs_request_timeout" => {
                limits.request_timeout = parse_duration(v).ok_or_else(|| bad("expected a duration like 5s or 500ms"))?
            }
            "wsfs_connect_timeout" => {
                limits.connect_timeout = parse_duration(v).ok_or_else(|| bad("expected a duration like 2s or 500ms"))?
            }
            "wsfs_concurrency" => {
                limits.concurrency = v
                    .parse()
                    .ok()
                    .filter(|n: &usize| *n > 0)
                    .ok_or_else(|| bad("expected a positive whole number"))?
            }
            "wsfs_retries" => {
                limits.retries = v.parse().map_err(|_| bad("expected a small whole number"))?
            }
            k if k.starts_with("wsfs_") => return Err(bad("unknown wsfs option (known: wsfs_request_timeout, wsfs_connect_timeout, wsfs_retries, wsfs_concurrency)")),
            _ => {
                rest.insert(k.clone(), v.clone());
            }
        }
    }
    Ok((limits, rest))
}

/// Parses `500ms`, `5s`, `2m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, "s"),
    };
    let n: f64 = num.parse().ok()?;
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "sec" | "secs" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(
            parse_duration("15d"),
            Some(Duration::from_secs(15 * 86_400))
        );
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("fast"), None);
        assert_eq!(parse_duration("5 parsecs"), None);
    }

    #[test]
    fn chain_order_is_config_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "[[store]]\nurl = \"gs://a/x\"\noptions = { wsfs_request_timeout = \"1s\" }\n[[store]]\nurl = \"s3://b/y\"\n",
        )
        .unwrap();
        let specs = chain_specs(Some(&p), &["file:///tmp/z".to_string()]).unwrap();
        let urls: Vec<_> = specs.iter().map(|s| s.url.as_str()).collect();
        assert_eq!(urls, ["gs://a/x", "s3://b/y", "file:///tmp/z"]);
        let (l, rest) = limits_for(&specs[0], Limits::default()).unwrap();
        assert_eq!(l.request_timeout, Duration::from_secs(1));
        assert!(rest.is_empty());
    }

    #[test]
    fn credentials_in_urls_are_recognised() {
        assert!(url_has_credentials("http://user:pw@host:9000/b/p"));
        assert!(url_has_credentials(
            "https://acct.blob.core.windows.net/c?sv=2022&sig=abc"
        ));
        assert!(url_has_credentials("https://h/b?X-Amz-Signature=1"));
        assert!(!url_has_credentials("s3://bucket/prefix"));
        assert!(!url_has_credentials("file:///var/ws"));
        assert!(!url_has_credentials("https://h/b?region=eu"));
    }

    #[test]
    fn a_mount_table_is_read_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "[[store]]\nurl = \"file:///s\"\n[mount]\nworkspace = \"w\"\nlayers = [\"a\", \"b\"]\nmountpoint = \"/job/ws\"\nallow_other = true\n",
        )
        .unwrap();
        let m = config_mount(Some(&p)).unwrap();
        assert_eq!(m.workspace.as_deref(), Some("w"));
        assert_eq!(m.layers, ["a", "b"]);
        assert_eq!(m.allow_other, Some(true));
        std::fs::write(
            &p,
            "[mount]\nmountpoint = \"ws\"\ncache_dir = \"/abs/cache\"\n",
        )
        .unwrap();
        let m = config_mount(Some(&p)).unwrap();
        assert_eq!(
            m.mountpoint.unwrap(),
            dir.path().join("ws"),
            "relative to the file"
        );
        assert_eq!(m.cache_dir.unwrap(), Path::new("/abs/cache"));
        std::fs::write(&p, "[mount]\nworkspaces = \"w\"\n").unwrap();
        let e = config_mount(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("workspaces"), "{e}");
    }

    #[test]
    fn bad_config_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[[stores]]\nurl = 1\n").unwrap();
        let e = chain_specs(Some(&p), &[]).unwrap_err().to_string();
        assert!(e.contains("is not valid"), "{e}");
        assert!(matches!(chain_specs(None, &[]), Err(ConfigError::NoStores)));
        let spec = StoreSpec {
            url: "memory://".into(),
            options: [("wsfs_bogus".to_string(), "1".to_string())].into(),
        };
        assert!(limits_for(&spec, Limits::default()).is_err());
    }
}
