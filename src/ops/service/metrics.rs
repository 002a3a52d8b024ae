//! Prometheus metrics of a mount daemon, in the text exposition format (version 0.0.4).
//!
//! The numbers are the ones `wsfs status` reports (a [`MountStatus`] snapshot) plus the per-provider
//! request-latency histograms. Two ways out, both optional flags of `wsfs mount`:
//! * `--metrics-file PATH`: rewritten atomically every 2 s and once at exit, for
//!   node_exporter's textfile collector (`metrics_file.rs`);
//! * `--metrics-addr IP:PORT`: `GET /metrics` over HTTP/1.1 (`metrics_http.rs`).
//!
//! Every sample carries `mountpoint` and `workspace` labels. Provider labels are
//! [`Provider::name`](crate::store::Provider), which never holds credentials or query strings.

use super::control::{MountStatus, StatusSource};
use crate::store::stats::HistogramSnapshot;
use std::fmt::Write as _;

/// The Content-Type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Escapes a label value: backslash, double quote and newline.
pub fn escape_label(v: &str) -> String {
    let mut o = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o
}

/// Escapes HELP text: backslash and newline.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// Writes metric families; every sample gets the mount's labels first.
struct Writer {
    out: String,
    base: Vec<(&'static str, String)>,
}

impl Writer {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: &str) {
        self.out.push_str(name);
        self.out.push('{');
        let base = self.base.iter().map(|(k, v)| (*k, v.as_str()));
        for (i, (k, v)) in base.chain(labels.iter().copied()).enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
        }
        let _ = writeln!(self.out, "}} {value}");
    }

    /// A family with one unlabelled (apart from the mount's labels) sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        self.family(name, kind, help);
        self.sample(name, &[], &value.to_string());
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
        let bucket = format!("{name}_bucket");
        for (le, n) in &h.buckets {
            let le = float(*le);
            let mut l = labels.to_vec();
            l.push(("le", &le));
            self.sample(&bucket, &l, &n.to_string());
        }
        let mut l = labels.to_vec();
        l.push(("le", "+Inf"));
        self.sample(&bucket, &l, &h.count.to_string());
        self.sample(&format!("{name}_sum"), labels, &float(h.sum));
        self.sample(&format!("{name}_count"), labels, &h.count.to_string());
    }
}

/// Renders the exposition for one mount. `latency` holds each provider's request-latency
/// histogram, by provider name. `wsfs_up` is `status.alive`.
pub fn render(status: &MountStatus, latency: &[(String, HistogramSnapshot)]) -> String {
    let mut w = Writer {
        out: String::new(),
        base: vec![
            ("mountpoint", status.mountpoint.clone()),
            ("workspace", status.workspace.clone()),
        ],
    };
    w.single(
        "wsfs_up",
        "gauge",
        "1 while the mount daemon serves; 0 in the file written as it exits.",
        u64::from(status.alive),
    );
    w.single(
        "wsfs_layers",
        "gauge",
        "Layers mounted (the requested layers and their ancestors); 0 means an empty mount.",
        status.layers.len() as u64,
    );
    w.single(
        "wsfs_entries",
        "gauge",
        "Entries (files, directories, symlinks) in the mounted tree.",
        status.entries,
    );
    w.single(
        "wsfs_start_time_seconds",
        "gauge",
        "When the daemon serving the mount started (after a takeover: the replacement), in seconds since the Unix epoch.",
        status.started.max(0) as u64,
    );
    w.single(
        "wsfs_signature_failures_total",
        "counter",
        "Layer refs refused at mount because their signature was missing, untrusted or invalid (with --trust-key).",
        status.signature_failures,
    );
    w.single(
        "wsfs_takeovers_total",
        "counter",
        "Replacement daemons the keeper started for this mount after a daemon died (the other counters restart at 0 with each).",
        u64::from(status.takeovers),
    );
    w.single(
        "wsfs_bytes_served_total",
        "counter",
        "Verified file bytes returned to readers.",
        status.bytes_served,
    );
    w.single(
        "wsfs_chunks_fetched_total",
        "counter",
        "Chunks fetched from a store (after missing both caches).",
        status.cache.fetched,
    );
    w.single(
        "wsfs_range_gets_total",
        "counter",
        "Range GETs of framed chunks that served verified frames.",
        status.cache.range_gets,
    );
    w.single(
        "wsfs_frames_fetched_total",
        "counter",
        "Frames of framed chunks fetched by range and verified.",
        status.cache.frames_fetched,
    );
    w.single(
        "wsfs_frame_misses_total",
        "counter",
        "Runs of frames no store could serve (the readers fetched the whole chunk).",
        status.cache.frame_misses,
    );
    w.family(
        "wsfs_cache_hits_total",
        "counter",
        "Chunk reads served from a cache, by tier.",
    );
    w.sample(
        "wsfs_cache_hits_total",
        &[("tier", "memory")],
        &status.cache.memory_hits.to_string(),
    );
    w.sample(
        "wsfs_cache_hits_total",
        &[("tier", "disk")],
        &status.cache.disk_hits.to_string(),
    );
    w.single(
        "wsfs_warmup_files_stored_total",
        "counter",
        "Small files pushed into the kernel page cache by the --prefetch all warm-up.",
        status.warmup.files_stored,
    );
    w.single(
        "wsfs_warmup_bytes_stored_total",
        "counter",
        "Bytes pushed into the kernel page cache by the --prefetch all warm-up.",
        status.warmup.bytes_stored,
    );
    w.single(
        "wsfs_neighbour_files_stored_total",
        "counter",
        "Small files pushed into the kernel page cache after a file of the same pack chunk was read.",
        status.warmup.neighbour_files_stored,
    );
    w.single(
        "wsfs_warmup_running",
        "gauge",
        "1 while the --prefetch all kernel warm-up runs.",
        u64::from(status.warmup.state == crate::fs::warmup::WarmupState::Running),
    );
    if let Some(p) = &status.profile {
        w.family(
            "wsfs_profile_chunks",
            "gauge",
            "Profile-guided prefetch (--profile): chunks the stored profile listed, those this workspace has, those replayed so far, and those this run's reads touched (the next profile).",
        );
        for (state, v) in [
            ("listed", p.listed),
            ("matched", p.matched),
            ("replayed", p.replayed),
            ("recorded", p.recorded),
        ] {
            w.sample(
                "wsfs_profile_chunks",
                &[("profile", p.name.as_str()), ("state", state)],
                &v.to_string(),
            );
        }
    }
    w.single(
        "wsfs_failovers_total",
        "counter",
        "Objects served by a later store after an earlier store missed them.",
        status.failovers,
    );
    w.single(
        "wsfs_eio_total",
        "counter",
        "Reads that failed with EIO because no store could serve a chunk in time.",
        status.eio,
    );
    w.single(
        "wsfs_repairs_total",
        "counter",
        "Chunks written back to an earlier store that missed them (--repair).",
        status.repairs,
    );
    w.family(
        "wsfs_provider_requests_total",
        "counter",
        "Store requests by provider and outcome (skipped: not sent, the breaker was open).",
    );
    for s in &status.stores {
        for (outcome, n) in &s.requests {
            w.sample(
                "wsfs_provider_requests_total",
                &[("provider", &s.name), ("outcome", outcome)],
                &n.to_string(),
            );
        }
    }
    w.family(
        "wsfs_provider_bytes_total",
        "counter",
        "Stored (compressed) bytes downloaded from each provider and verified.",
    );
    for s in &status.stores {
        w.sample(
            "wsfs_provider_bytes_total",
            &[("provider", &s.name)],
            &s.bytes.to_string(),
        );
    }
    w.family(
        "wsfs_provider_request_duration_seconds",
        "histogram",
        "Latency of store requests (every outcome except skipped), by provider.",
    );
    for (name, h) in latency {
        w.histogram(
            "wsfs_provider_request_duration_seconds",
            &[("provider", name)],
            h,
        );
    }
    w.family(
        "wsfs_breaker_open",
        "gauge",
        "1 while a provider's circuit breaker is open or half-open (the store is being skipped).",
    );
    for s in &status.stores {
        w.sample(
            "wsfs_breaker_open",
            &[("provider", &s.name)],
            if s.breaker == crate::store::breaker::State::Closed {
                "0"
            } else {
                "1"
            },
        );
    }
    w.family(
        "wsfs_fuse_operations_total",
        "counter",
        "FUSE requests handled, by operation.",
    );
    for (op, n) in &status.fuse_ops {
        w.sample("wsfs_fuse_operations_total", &[("op", op)], &n.to_string());
    }
    w.family(
        "wsfs_fuse_errors_total",
        "counter",
        "FUSE requests answered with an error, by operation (lookup errors are mostly routine ENOENT).",
    );
    for (op, n) in &status.fuse_errors {
        w.sample("wsfs_fuse_errors_total", &[("op", op)], &n.to_string());
    }
    w.out
}

/// Renders a live daemon's metrics; `up = false` for the last file written at exit.
pub fn render_source(source: &StatusSource, up: bool) -> String {
    let mut s = source.snapshot();
    s.alive = up;
    let latency: Vec<(String, HistogramSnapshot)> = source
        .chain
        .providers()
        .iter()
        .map(|p| (p.name.clone(), p.stats.latency.snapshot()))
        .collect();
    render(&s, &latency)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::service::control::{CacheStatus, StoreStatus};

    fn status() -> MountStatus {
        MountStatus {
            mountpoint: "/mnt/we\"ird\\path\nx".into(),
            workspace: "ws".into(),
            layers: vec!["a".into(), "b".into()],
            alive: true,
            takeovers: 4,
            started: 1_700_000_000,
            entries: 12,
            bytes_served: 4096,
            failovers: 3,
            eio: 1,
            repairs: 2,
            cache: CacheStatus {
                memory_hits: 5,
                disk_hits: 6,
                fetched: 7,
                ..Default::default()
            },
            stores: vec![
                StoreStatus {
                    name: "gs://bucket/prefix".into(),
                    requests: [("hit".to_string(), 1u64), ("not_found".to_string(), 3)]
                        .into_iter()
                        .collect(),
                    served: 1,
                    bytes: 100,
                    breaker: crate::store::breaker::State::Open,
                },
                StoreStatus {
                    name: "s3://other".into(),
                    requests: [("hit".to_string(), 3u64)].into_iter().collect(),
                    served: 3,
                    bytes: 300,
                    breaker: crate::store::breaker::State::Closed,
                },
            ],
            fuse_ops: [("read".to_string(), 9u64)].into_iter().collect(),
            fuse_errors: [("read".to_string(), 1u64)].into_iter().collect(),
            ..Default::default()
        }
    }

    fn hist() -> HistogramSnapshot {
        let h = crate::store::stats::LatencyHistogram::default();
        h.observe(3_000);
        h.observe(700_000);
        h.observe(30_000_000);
        h.snapshot()
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("line\nnext"), "line\\nnext");
        assert_eq!(escape_label("plain/µ"), "plain/µ");
        let out = render(&status(), &[]);
        assert!(
            out.contains(r#"wsfs_up{mountpoint="/mnt/we\"ird\\path\nx",workspace="ws"} 1"#),
            "{out}"
        );
        // No raw newline inside a sample: every line is a comment or a whole sample.
        for l in out.lines() {
            assert!(
                l.starts_with('#') || l.ends_with(|c: char| c.is_ascii_digit()),
                "{l}"
            );
        }
    }

    #[test]
    fn help_text_is_escaped() {
        assert_eq!(escape_help("a\\b\nc"), "a\\\\b\\nc");
    }

    #[test]
    fn every_family_has_help_and_type_before_its_samples() {
        let out = render(&status(), &[("gs://bucket/prefix".into(), hist())]);
        let mut declared: Vec<String> = Vec::new();
        let mut helped: Vec<String> = Vec::new();
        for l in out.lines() {
            if let Some(r) = l.strip_prefix("# HELP ") {
                helped.push(r.split(' ').next().unwrap().to_string());
            } else if let Some(r) = l.strip_prefix("# TYPE ") {
                let name = r.split(' ').next().unwrap().to_string();
                assert_eq!(helped.last(), Some(&name), "HELP right before TYPE");
                assert!(!declared.contains(&name), "{name} declared twice");
                declared.push(name);
            } else {
                let name = l.split('{').next().unwrap();
                let fam = declared.last().unwrap();
                assert!(
                    name == fam
                        || [
                            format!("{fam}_bucket"),
                            format!("{fam}_sum"),
                            format!("{fam}_count")
                        ]
                        .contains(&name.to_string()),
                    "sample {name} outside its family {fam}"
                );
            }
        }
        for m in [
            "wsfs_up",
            "wsfs_layers",
            "wsfs_takeovers_total",
            "wsfs_signature_failures_total",
            "wsfs_provider_requests_total",
            "wsfs_provider_request_duration_seconds",
            "wsfs_failovers_total",
            "wsfs_eio_total",
            "wsfs_cache_hits_total",
            "wsfs_chunks_fetched_total",
            "wsfs_bytes_served_total",
            "wsfs_repairs_total",
            "wsfs_fuse_operations_total",
            "wsfs_fuse_errors_total",
            "wsfs_breaker_open",
        ] {
            assert!(declared.iter().any(|d| d == m), "{m} missing");
        }
    }

    #[test]
    fn values_and_labels() {
        let out = render(&status(), &[("gs://bucket/prefix".into(), hist())]);
        let has = |s: &str| assert!(out.contains(s), "missing {s:?} in\n{out}");
        let l = r#"mountpoint="/mnt/we\"ird\\path\nx",workspace="ws""#;
        has(&format!("wsfs_layers{{{l}}} 2\n"));
        has(&format!("wsfs_takeovers_total{{{l}}} 4\n"));
        has(&format!("wsfs_eio_total{{{l}}} 1\n"));
        has(&format!("wsfs_failovers_total{{{l}}} 3\n"));
        has(&format!("wsfs_cache_hits_total{{{l},tier=\"disk\"}} 6\n"));
        has(&format!(
            "wsfs_provider_requests_total{{{l},provider=\"gs://bucket/prefix\",outcome=\"not_found\"}} 3\n"
        ));
        has(&format!(
            "wsfs_breaker_open{{{l},provider=\"gs://bucket/prefix\"}} 1\n"
        ));
        has(&format!(
            "wsfs_breaker_open{{{l},provider=\"s3://other\"}} 0\n"
        ));
        has(&format!("wsfs_fuse_errors_total{{{l},op=\"read\"}} 1\n"));
        let p = r#"provider="gs://bucket/prefix""#;
        has(&format!(
            "wsfs_provider_request_duration_seconds_bucket{{{l},{p},le=\"0.005\"}} 1\n"
        ));
        has(&format!(
            "wsfs_provider_request_duration_seconds_bucket{{{l},{p},le=\"1\"}} 2\n"
        ));
        has(&format!(
            "wsfs_provider_request_duration_seconds_bucket{{{l},{p},le=\"10\"}} 2\n"
        ));
        has(&format!(
            "wsfs_provider_request_duration_seconds_bucket{{{l},{p},le=\"+Inf\"}} 3\n"
        ));
        has(&format!(
            "wsfs_provider_request_duration_seconds_count{{{l},{p}}} 3\n"
        ));
        has(&format!(
            "wsfs_provider_request_duration_seconds_sum{{{l},{p}}} 30.703\n"
        ));
        let mut down = status();
        down.alive = false;
        assert!(render(&down, &[]).contains(&format!("wsfs_up{{{l}}} 0\n")));
    }
}
