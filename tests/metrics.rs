//! Prometheus metrics of a real mount: the `--metrics-file` textfile and the `--metrics-addr`
//! endpoint parse strictly as the text exposition format (0.0.4) and agree with `wsfs status`.

mod common;
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};
use wsfs::fs::warmup::WarmupState;
use wsfs::ops::service::control::MountStatus;
use wsfs::store::breaker::State as BreakerState;

// ---------------------------------------------------------------------------------------------
// A small strict parser of the text exposition format.

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug, Default)]
struct Exposition {
    /// Family name → type.
    types: BTreeMap<String, String>,
    helps: BTreeSet<String>,
    samples: Vec<Sample>,
}

fn valid_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn valid_label_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

/// Parses `{k="v",…}` (the braces included); returns the labels and the rest of the line.
fn parse_labels(s: &str, line: &str) -> (BTreeMap<String, String>, String) {
    let mut labels = BTreeMap::new();
    let mut it = s.chars().peekable();
    assert_eq!(it.next(), Some('{'), "labels must start with {{: {line:?}");
    loop {
        if it.peek() == Some(&'}') {
            it.next();
            break;
        }
        let mut key = String::new();
        for ch in it.by_ref() {
            if ch == '=' {
                break;
            }
            key.push(ch);
        }
        assert!(valid_label_name(&key), "bad label name {key:?} in {line:?}");
        assert_eq!(it.next(), Some('"'), "label value must be quoted: {line:?}");
        let mut val = String::new();
        loop {
            match it.next() {
                Some('\\') => match it.next() {
                    Some('\\') => val.push('\\'),
                    Some('"') => val.push('"'),
                    Some('n') => val.push('\n'),
                    other => panic!("bad escape \\{other:?} in {line:?}"),
                },
                Some('"') => break,
                Some(ch) => val.push(ch),
                None => panic!("unterminated label value in {line:?}"),
            }
        }
        assert!(
            labels.insert(key.clone(), val).is_none(),
            "duplicate label {key} in {line:?}"
        );
        match it.next() {
            Some(',') => {}
            Some('}') => break,
            other => panic!("expected , or }} after a label, got {other:?} in {line:?}"),
        }
    }
    (labels, it.collect())
}

fn parse_value(v: &str, line: &str) -> f64 {
    match v {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        _ => v
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad value {v:?} in {line:?}")),
    }
}

/// The family a sample name belongs to (histograms own `_bucket`, `_sum`, `_count`).
fn family_of(name: &str, types: &BTreeMap<String, String>) -> Option<String> {
    if types.contains_key(name) {
        return Some(name.to_string());
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base).map(|t| t.as_str()) == Some("histogram") {
                return Some(base.to_string());
            }
        }
    }
    None
}

/// Parses strictly: every line is `# HELP`, `# TYPE` or `name{labels} value`; every family has
/// HELP and TYPE before its samples and its samples are contiguous; histograms are well formed.
fn parse(text: &str) -> Exposition {
    assert!(text.ends_with('\n'), "exposition must end with a newline");
    let mut e = Exposition::default();
    let mut current: Option<String> = None;
    let mut finished: BTreeSet<String> = BTreeSet::new();
    for line in text.lines() {
        assert!(!line.is_empty(), "empty line in the exposition");
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(valid_name(name), "bad HELP name in {line:?}");
            assert!(e.helps.insert(name.to_string()), "second HELP for {name}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut p = rest.split(' ');
            let (name, kind) = (p.next().unwrap(), p.next().unwrap_or(""));
            assert!(p.next().is_none(), "junk after TYPE: {line:?}");
            assert!(valid_name(name), "bad TYPE name in {line:?}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "bad type in {line:?}"
            );
            assert!(e.helps.contains(name), "TYPE before HELP for {name}");
            assert!(
                e.types.insert(name.into(), kind.into()).is_none(),
                "second TYPE for {name}"
            );
            if let Some(c) = current.take() {
                finished.insert(c);
            }
            current = Some(name.to_string());
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment line {line:?}");
        let brace = line.find('{').unwrap_or_else(|| {
            panic!("sample without labels (every wsfs sample has mountpoint): {line:?}")
        });
        let name = &line[..brace];
        assert!(valid_name(name), "bad metric name in {line:?}");
        let (labels, rest) = parse_labels(&line[brace..], line);
        let value = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("expected one space before the value: {line:?}"));
        assert!(
            !value.contains(' '),
            "unexpected timestamp or junk: {line:?}"
        );
        let value = parse_value(value, line);
        let fam = family_of(name, &e.types).unwrap_or_else(|| panic!("sample {name} has no TYPE"));
        assert_eq!(
            current.as_deref(),
            Some(fam.as_str()),
            "sample {name} outside its family's block"
        );
        assert!(!finished.contains(&fam), "family {fam} is not contiguous");
        if e.types[&fam] == "counter" {
            assert!(
                name.ends_with("_total"),
                "counter {name} should end in _total"
            );
            assert!(value >= 0.0 && value.fract() == 0.0, "counter {line:?}");
        }
        e.samples.push(Sample {
            name: name.into(),
            labels,
            value,
        });
    }
    check_histograms(&e);
    e
}

/// A series' labels without `le`, sorted.
type Labels = Vec<(String, String)>;

fn check_histograms(e: &Exposition) {
    for (fam, _) in e.types.iter().filter(|(_, t)| *t == "histogram") {
        // Group the buckets by their labels without `le`.
        let mut series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        for s in e
            .samples
            .iter()
            .filter(|s| s.name == format!("{fam}_bucket"))
        {
            let le = s.labels.get("le").expect("bucket without le");
            let key: Vec<_> = s
                .labels
                .iter()
                .filter(|(k, _)| *k != "le")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            series
                .entry(key)
                .or_default()
                .push((parse_value(le, le), s.value));
        }
        assert!(!series.is_empty(), "histogram {fam} without buckets");
        for (key, buckets) in &series {
            for w in buckets.windows(2) {
                assert!(w[0].0 < w[1].0, "{fam} {key:?}: le not increasing");
                assert!(w[0].1 <= w[1].1, "{fam} {key:?}: buckets not cumulative");
            }
            let last = buckets.last().unwrap();
            assert!(
                last.0.is_infinite(),
                "{fam} {key:?}: last bucket is not +Inf"
            );
            let labels: BTreeMap<String, String> = key.iter().cloned().collect();
            let one = |suffix: &str| {
                let v: Vec<_> = e
                    .samples
                    .iter()
                    .filter(|s| s.name == format!("{fam}{suffix}") && s.labels == labels)
                    .collect();
                assert_eq!(v.len(), 1, "{fam}{suffix} {key:?}");
                v[0].value
            };
            assert_eq!(one("_count"), last.1, "{fam} {key:?}: +Inf != _count");
            assert!(one("_sum") >= 0.0);
        }
    }
}

impl Exposition {
    /// The single sample of `name` whose labels include `want`.
    fn get(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        let v: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| {
                s.name == name
                    && want
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(|x| x.as_str()) == Some(*v))
            })
            .collect();
        assert_eq!(v.len(), 1, "{name} {want:?}: {v:?}");
        v[0].value
    }

    fn names(&self) -> BTreeSet<String> {
        self.samples.iter().map(|s| s.name.clone()).collect()
    }

    fn label_values(&self, name: &str, label: &str) -> BTreeSet<String> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter_map(|s| s.labels.get(label).cloned())
            .collect()
    }
}

#[test]
fn the_parser_is_strict() {
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"q\\\"\\\\\\n\"} 3\n";
    let e = parse(ok);
    assert_eq!(e.get("a_total", &[("x", "q\"\\\n")]), 3.0);
    for bad in [
        "a_total{x=\"1\"} 3\n",                                              // no TYPE
        "# HELP a_total A.\n# TYPE a_total counter\na_total{x=1} 3\n",       // unquoted
        "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"\\t\"} 3\n", // bad escape
        "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"}  3\n",  // two spaces
        "# HELP h A.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum{} 1\nh_count{} 1\n",
        "# HELP h A.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum{} 1\nh_count{} 3\n",
    ] {
        let r = std::panic::catch_unwind(|| parse(bad));
        assert!(r.is_err(), "accepted: {bad:?}");
    }
}

// ---------------------------------------------------------------------------------------------

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A minimal HTTP/1.1 GET; returns (status line, headers, body).
fn http_get(addr: &str, path: &str) -> (String, String, String) {
    http(addr, "GET", path)
}

fn http(addr: &str, method: &str, path: &str) -> (String, String, String) {
    let mut c = std::net::TcpStream::connect(addr).expect("connect to the metrics endpoint");
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        c,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    c.read_to_string(&mut buf).unwrap();
    let (head, body) = buf.split_once("\r\n\r\n").expect("response head");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_string(), body.to_string())
}

/// Compares the metrics with a status snapshot; returns the differences.
fn disagreements(e: &Exposition, st: &MountStatus) -> Vec<String> {
    let mut d = Vec::new();
    let mut eq = |what: &str, metric: f64, status: u64| {
        if metric != status as f64 {
            d.push(format!("{what}: metrics {metric} vs status {status}"));
        }
    };
    for (what, metric, labels, value) in [
        (
            "bytes_served",
            "wsfs_bytes_served_total",
            &[][..],
            st.bytes_served,
        ),
        ("failovers", "wsfs_failovers_total", &[], st.failovers),
        ("eio", "wsfs_eio_total", &[], st.eio),
        ("repairs", "wsfs_repairs_total", &[], st.repairs),
        (
            "fetched",
            "wsfs_chunks_fetched_total",
            &[],
            st.cache.fetched,
        ),
        (
            "warm-up files stored",
            "wsfs_warmup_files_stored_total",
            &[],
            st.warmup.files_stored,
        ),
        (
            "warm-up bytes stored",
            "wsfs_warmup_bytes_stored_total",
            &[],
            st.warmup.bytes_stored,
        ),
        (
            "neighbour files stored",
            "wsfs_neighbour_files_stored_total",
            &[],
            st.warmup.neighbour_files_stored,
        ),
        (
            "warm-up running",
            "wsfs_warmup_running",
            &[],
            u64::from(st.warmup.state == WarmupState::Running),
        ),
        (
            "memory hits",
            "wsfs_cache_hits_total",
            &[("tier", "memory")],
            st.cache.memory_hits,
        ),
        (
            "disk hits",
            "wsfs_cache_hits_total",
            &[("tier", "disk")],
            st.cache.disk_hits,
        ),
    ] {
        eq(what, e.get(metric, labels), value);
    }
    for store in &st.stores {
        let name = store.name.as_str();
        let mut timed = 0;
        for (outcome, count) in &store.requests {
            eq(
                &format!("{name} {outcome}"),
                e.get(
                    "wsfs_provider_requests_total",
                    &[("provider", name), ("outcome", outcome)],
                ),
                *count,
            );
            if outcome != "skipped" {
                timed += count;
            }
        }
        eq(
            &format!("{name} served"),
            e.get(
                "wsfs_provider_requests_total",
                &[("provider", name), ("outcome", "hit")],
            ),
            store.served,
        );
        eq(
            &format!("{name} latency count"),
            e.get(
                "wsfs_provider_request_duration_seconds_count",
                &[("provider", name)],
            ),
            timed,
        );
        eq(
            &format!("{name} breaker"),
            e.get("wsfs_breaker_open", &[("provider", name)]),
            u64::from(store.breaker != BreakerState::Closed),
        );
    }
    for (op, count) in &st.fuse_ops {
        // Every `wsfs status` asks the kernel whether the mount is served: one STATFS, which its
        // own snapshot counts and a metrics file written before it cannot. Polling status
        // therefore keeps the two one apart, so statfs is left out of this comparison.
        if op == "statfs" {
            continue;
        }
        eq(
            &format!("fuse {op}"),
            e.get("wsfs_fuse_operations_total", &[("op", op)]),
            *count,
        );
    }
    for (op, count) in &st.fuse_errors {
        eq(
            &format!("fuse errors {op}"),
            e.get("wsfs_fuse_errors_total", &[("op", op)]),
            *count,
        );
    }
    d
}

const ALL_METRICS: [&str; 17] = [
    "wsfs_up",
    "wsfs_layers",
    "wsfs_provider_requests_total",
    "wsfs_provider_request_duration_seconds_bucket",
    "wsfs_failovers_total",
    "wsfs_eio_total",
    "wsfs_cache_hits_total",
    "wsfs_chunks_fetched_total",
    "wsfs_bytes_served_total",
    "wsfs_repairs_total",
    "wsfs_fuse_operations_total",
    "wsfs_fuse_errors_total",
    "wsfs_breaker_open",
    "wsfs_warmup_files_stored_total",
    "wsfs_warmup_bytes_stored_total",
    "wsfs_warmup_running",
    "wsfs_neighbour_files_stored_total",
];

#[test]
fn metrics_file_and_endpoint_agree_with_status() {
    require_fuse();
    let s = Scratch::new();
    let src = s.path("src");
    std::fs::create_dir_all(src.join("dir")).unwrap();
    let data = Rng::new(21).bytes(3 << 20);
    std::fs::write(src.join("a.bin"), &data).unwrap();
    std::fs::write(src.join("dir/small.txt"), b"small and present").unwrap();
    std::fs::write(src.join("gone.bin"), Rng::new(22).bytes(200_000)).unwrap();
    std::os::unix::fs::symlink("a.bin", src.join("link")).unwrap();
    assert_ok(&persist(
        &s,
        &[s.store("s1"), s.store("s2")],
        "ws",
        "l1",
        &src,
        &[],
    ));
    // Every chunk missing on the primary (failovers); gone.bin's chunk missing on both (EIO).
    let gone = first_chunk_of(&s.path("s1"), "gone.bin");
    remove_chunks(&s.path("s1"));
    std::fs::remove_file(s.path("s2").join(wsfs::manifest::keys::chunk(&gone))).unwrap();

    let metrics_dir = s.mkdir("textfile");
    let file = metrics_dir.join("wsfs.prom");
    let addr = format!("127.0.0.1:{}", free_port());
    // The secondary's URL carries a secret in its query: it must never reach a label.
    let s2_url = format!("{}?sig=secret-token", s.store("s2"));
    let mp = s.mkdir("mnt");
    let m = mount(
        &s,
        &[s.store("s1"), s2_url.clone()],
        "ws",
        &["l1"],
        &mp,
        &[
            "--metrics-file",
            file.to_str().unwrap(),
            "--metrics-addr",
            &addr,
        ],
    );
    // Written before the mount reports ready.
    let first = std::fs::read_to_string(&file).expect("metrics file exists once mounted");
    let e0 = parse(&first);
    assert_eq!(e0.get("wsfs_up", &[]), 1.0);

    // Reads: a failover for every chunk of a.bin, an EIO for gone.bin, plus listing, a symlink,
    // and a lookup that fails.
    assert!(std::fs::read(mp.join("a.bin")).unwrap() == data);
    assert_eq!(
        std::fs::read(mp.join("dir/small.txt")).unwrap(),
        b"small and present"
    );
    let err = std::fs::read(mp.join("gone.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert_eq!(
        std::fs::read_link(mp.join("link")).unwrap(),
        Path::new("a.bin")
    );
    assert!(std::fs::metadata(mp.join("no-such-file")).is_err());
    let listed = std::fs::read_dir(&mp).unwrap().count();
    assert_eq!(listed, 4);

    // (a)+(b): poll until the file has been refreshed and agrees with status.
    let deadline = Instant::now() + Duration::from_secs(6);
    let (e, st) = loop {
        let st = mount_status(&s, &mp);
        let text = std::fs::read_to_string(&file).unwrap();
        let e = parse(&text);
        let d = disagreements(&e, &st);
        if d.is_empty() && e.get("wsfs_eio_total", &[]) >= 1.0 {
            break (e, st);
        }
        assert!(
            Instant::now() < deadline,
            "metrics file never agreed with status: {d:?}\n{text}\n{st:#?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(
        e.get("wsfs_bytes_served_total", &[]),
        (data.len() + 17) as f64
    );
    assert!(e.get("wsfs_failovers_total", &[]) >= 1.0);
    assert!(e.get("wsfs_eio_total", &[]) >= 1.0);
    assert_eq!(e.get("wsfs_layers", &[]), 1.0);
    assert_eq!(e.get("wsfs_up", &[]), 1.0);
    assert!(e.get("wsfs_fuse_operations_total", &[("op", "read")]) >= 2.0);
    assert!(e.get("wsfs_fuse_errors_total", &[("op", "read")]) >= 1.0);
    assert!(e.get("wsfs_fuse_operations_total", &[("op", "readlink")]) >= 1.0);
    assert!(e.get("wsfs_fuse_errors_total", &[("op", "lookup")]) >= 1.0);
    assert!(
        e.get("wsfs_fuse_operations_total", &[("op", "readdir")])
            + e.get("wsfs_fuse_operations_total", &[("op", "readdirplus")])
            >= 1.0
    );
    // Per-provider hits: the secondary served every chunk of the files read.
    let s2_name = st.stores[1].name.clone();
    assert!(
        e.get(
            "wsfs_provider_requests_total",
            &[("provider", &s2_name), ("outcome", "hit")]
        ) >= 2.0
    );
    assert!(
        e.get(
            "wsfs_provider_requests_total",
            &[("provider", &s.store("s1")), ("outcome", "not_found")]
        ) + e.get(
            "wsfs_provider_requests_total",
            &[("provider", &s.store("s1")), ("outcome", "skipped")]
        ) >= 1.0
    );
    for name in ALL_METRICS {
        assert!(e.names().contains(name), "{name} missing");
    }
    // Labels: the mount's, and provider names exactly as status shows them (no secrets).
    assert_eq!(
        e.label_values("wsfs_up", "mountpoint"),
        [mp.display().to_string()].into()
    );
    assert_eq!(
        e.label_values("wsfs_up", "workspace"),
        ["ws".to_string()].into()
    );
    let status_names: BTreeSet<String> = st.stores.iter().map(|x| x.name.clone()).collect();
    assert_eq!(
        status_names,
        [s.store("s1"), s.store("s2")].into(),
        "status names are the URLs without the query"
    );
    for m in [
        "wsfs_provider_requests_total",
        "wsfs_provider_request_duration_seconds_bucket",
        "wsfs_breaker_open",
    ] {
        assert_eq!(e.label_values(m, "provider"), status_names, "{m}");
    }
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains("secret"), "a credential leaked:\n{text}");

    // (c): the endpoint serves the same families, parses the same way, and 404s elsewhere.
    let (status_line, headers, body) = http_get(&addr, "/metrics");
    assert!(status_line.starts_with("HTTP/1.1 200"), "{status_line}");
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{headers}"
    );
    let h = parse(&body);
    assert_eq!(h.names(), e.names());
    assert!(h.get("wsfs_bytes_served_total", &[]) >= e.get("wsfs_bytes_served_total", &[]));
    assert!(!body.contains("secret"));
    let (nf, _, _) = http_get(&addr, "/");
    assert!(nf.starts_with("HTTP/1.1 404"), "{nf}");
    let (nf, _, _) = http_get(&addr, "/metricsx");
    assert!(nf.starts_with("HTTP/1.1 404"), "{nf}");
    // A scraper's HEAD: the headers of a GET, no body. Another method: 405 saying what is allowed.
    // An idle connection (a client that connects and says nothing) holds up nobody.
    let idle = std::net::TcpStream::connect(&addr).unwrap();
    let (st, headers, body) = http(&addr, "HEAD", "/metrics");
    assert!(st.starts_with("HTTP/1.1 200"), "{st}");
    assert!(
        headers.to_ascii_lowercase().contains("content-length: "),
        "{headers}"
    );
    assert!(body.is_empty(), "HEAD has no body: {body}");
    let (st, headers, _) = http(&addr, "POST", "/metrics");
    assert!(st.starts_with("HTTP/1.1 405"), "{st}");
    assert!(
        headers.to_ascii_lowercase().contains("allow: get, head"),
        "{headers}"
    );
    drop(idle);

    // At exit the file is written once more, saying the daemon is down; no temp files remain.
    let o = s.wsfs(&["umount", mp.to_str().unwrap()]);
    assert_ok(&o);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let e = parse(&std::fs::read_to_string(&file).unwrap());
        if e.get("wsfs_up", &[]) == 0.0 {
            assert!(e.get("wsfs_eio_total", &[]) >= 1.0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no final metrics file with wsfs_up 0"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let left: Vec<_> = std::fs::read_dir(&metrics_dir)
        .unwrap()
        .flatten()
        .map(|d| d.file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("wsfs.prom")]);
    drop(m);
    assert!(!is_mounted(&mp));
}

#[test]
fn bad_metrics_flags_are_usage_errors_before_mounting() {
    require_fuse();
    let s = Scratch::new();
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    assert_ok(&persist(&s, &[s.store("s1")], "ws", "l1", &src, &[]));
    let mp = s.mkdir("mnt");
    // Not an address.
    let o = mount_cmd(
        &s,
        &[s.store("s1")],
        "ws",
        &["l1"],
        &mp,
        &["--metrics-addr", "localhost"],
    );
    assert_code(&o, 2);
    assert!(!is_mounted(&mp));
    // A port already taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let o = mount_cmd(
        &s,
        &[s.store("s1")],
        "ws",
        &["l1"],
        &mp,
        &["--metrics-addr", &addr],
    );
    assert_code(&o, 2);
    assert!(text(&o).contains("--metrics-addr"), "{}", text(&o));
    assert!(!is_mounted(&mp));
    // A metrics file in a directory that does not exist.
    let o = mount_cmd(
        &s,
        &[s.store("s1")],
        "ws",
        &["l1"],
        &mp,
        &["--metrics-file", s.path("nope/wsfs.prom").to_str().unwrap()],
    );
    assert_code(&o, 2);
    assert!(text(&o).contains("--metrics-file"), "{}", text(&o));
    assert!(!is_mounted(&mp));
}
