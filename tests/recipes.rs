//! The CI recipes in docs/ci/ must not rot: this runs each one's jobs, as its CI would, on this
//! machine against moto (S3 on loopback).
//!
//! Extraction, per recipe file:
//! 1. The workflow is the fenced ```yaml block right after the line
//!    `<!-- recipes.rs: workflow … -->`; the conflict error is the fenced block right after
//!    `<!-- recipes.rs: conflict … -->` (exactly one of each per file).
//! 2. The YAML is parsed by `yaml::parse` below, a small subset (block mappings and sequences,
//!    plain/quoted scalars, `|`/`|-` block scalars, flow sequences of scalars, comments) that
//!    refuses everything else (anchors, tags, flow mappings, folded scalars, tabs). Its result is
//!    compared with PyYAML's (PyYAML comes with moto), so the recipe is the YAML the CI reads.
//! 3. Each CI's structure becomes jobs (name, upstream jobs, environment) of steps (checkout,
//!    shell script, artifact upload; `always` for the detach steps): CircleCI `workflows:` →
//!    `jobs:` (`requires:`), `run:` steps (`when: always`); GitHub `jobs:` (`needs:`), `run:`
//!    steps (`if: always()`), `uses: actions/checkout|upload-artifact`; GitLab top-level jobs
//!    (`stage:`, `needs:`), `script:` lines joined into one shell script as the runner does, and
//!    `after_script:` as an always-step. Keys the test does not simulate fail the test.
//! 4. Jobs run in dependency order (ties in document order; parallel jobs one after the other),
//!    each in a fresh checkout directory (like a new machine) holding the example repository
//!    (`src/app.sh`). Each shell step runs as `bash -euo pipefail FILE` there, with: the CI's
//!    variables (workflow id → a fresh workspace name, checkout dir → the job's directory), the
//!    YAML's environment (`${{ secrets.X }}`/`${{ vars.X }}` → this process's `X`), the bucket of
//!    `WSFS_STORE` replaced by a fresh moto bucket, `WSFS_RUN_DIR` inside the test's temp dir,
//!    and on `PATH` first a `sudo` that only runs its command (the test is root), then the built
//!    `wsfs`. Steps named `Install wsfs` are skipped (the binary under test is used instead).
//!    After a failed step only always-steps run, as in CI.
//! 5. The conflict variant runs the same workflow with each test job writing `results/summary.txt`
//!    instead of `results/<job>/summary.txt` (the text `results/<job>` in its scripts becomes
//!    `results`): the fan-in attach must exit 5 and print what the doc shows (whitespace aside).

mod common;
use common::*;
use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A small YAML subset: what the recipes use, and a clear error for anything else.
mod yaml {
    #[derive(Clone, Debug, PartialEq)]
    pub enum Y {
        Null,
        Str(String),
        Seq(Vec<Y>),
        Map(Vec<(String, Y)>),
    }

    impl Y {
        pub fn get(&self, k: &str) -> Option<&Y> {
            match self {
                Y::Map(m) => m.iter().find(|(x, _)| x == k).map(|(_, v)| v),
                _ => None,
            }
        }
        pub fn str(&self) -> Option<&str> {
            match self {
                Y::Str(s) => Some(s),
                _ => None,
            }
        }
        pub fn seq(&self) -> Option<&[Y]> {
            match self {
                Y::Seq(s) => Some(s),
                _ => None,
            }
        }
        pub fn map(&self) -> Option<&[(String, Y)]> {
            match self {
                Y::Map(m) => Some(m),
                _ => None,
            }
        }

        /// JSON for the comparison with PyYAML, scalars canonicalised (see `canon`).
        pub fn to_json(&self) -> serde_json::Value {
            match self {
                Y::Null => serde_json::Value::String("null".into()),
                Y::Str(s) => serde_json::Value::String(canon(s)),
                Y::Seq(v) => serde_json::Value::Array(v.iter().map(Y::to_json).collect()),
                Y::Map(m) => serde_json::Value::Object(
                    m.iter().map(|(k, v)| (canon(k), v.to_json())).collect(),
                ),
            }
        }
    }

    /// PyYAML types scalars (YAML 1.1: `on` is true, `2.1` a float); this parser keeps strings.
    /// Both sides are compared as canonical strings.
    pub fn canon(s: &str) -> String {
        match s {
            "on" | "On" | "ON" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" => "true".into(),
            "off" | "Off" | "OFF" | "no" | "No" | "NO" | "false" | "False" | "FALSE" => {
                "false".into()
            }
            "~" | "null" | "Null" | "NULL" | "" => "null".into(),
            _ => s.to_string(),
        }
    }

    /// PyYAML's JSON with scalars canonicalised like `Y::to_json`.
    pub fn canon_json(v: &serde_json::Value) -> serde_json::Value {
        use serde_json::Value as J;
        match v {
            J::Null => J::String("null".into()),
            J::Bool(b) => J::String(b.to_string()),
            J::Number(n) => J::String(n.to_string()),
            J::String(s) => J::String(canon(s)),
            J::Array(a) => J::Array(a.iter().map(canon_json).collect()),
            J::Object(o) => J::Object(o.iter().map(|(k, v)| (canon(k), canon_json(v))).collect()),
        }
    }

    struct P {
        lines: Vec<String>,
        i: usize,
    }

    fn indent(l: &str) -> usize {
        l.len() - l.trim_start_matches(' ').len()
    }

    fn blank(l: &str) -> bool {
        let t = l.trim();
        t.is_empty() || t.starts_with('#')
    }

    fn is_dash(t: &str) -> bool {
        t == "-" || t.starts_with("- ")
    }

    pub fn parse(text: &str) -> Result<Y, String> {
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        for (n, l) in lines.iter().enumerate() {
            if l[..l.len() - l.trim_start().len()].contains('\t') {
                return Err(format!("line {}: tab in indentation", n + 1));
            }
        }
        let mut p = P { lines, i: 0 };
        let y = p.node(0)?;
        p.skip_blank();
        if p.i < p.lines.len() {
            return Err(p.err("unexpected content (indentation?)"));
        }
        Ok(y)
    }

    /// `key: rest` → (key, rest), for plain or quoted keys; None if the text is no mapping entry.
    fn split_key(t: &str) -> Option<(String, String)> {
        let (key, after) = if t.starts_with('"') || t.starts_with('\'') {
            let (k, n) = quoted(t).ok()?;
            (k, &t[n..])
        } else {
            if t.starts_with(['[', '{', '#', '|', '>']) {
                return None;
            }
            let b = t.as_bytes();
            let pos =
                (0..b.len()).find(|&j| b[j] == b':' && (j + 1 == b.len() || b[j + 1] == b' '))?;
            if t[..pos].contains(" #") {
                return None;
            }
            (t[..pos].trim_end().to_string(), &t[pos..])
        };
        let rest = after.strip_prefix(':')?;
        if !(rest.is_empty() || rest.starts_with(' ')) {
            return None;
        }
        Some((key, rest.trim().to_string()))
    }

    /// A quoted scalar at the start of `t`: its value and the bytes it took.
    fn quoted(t: &str) -> Result<(String, usize), String> {
        let q = t.chars().next().ok_or("empty")?;
        let mut out = String::new();
        let mut it = t.char_indices().skip(1).peekable();
        while let Some((j, c)) = it.next() {
            if c == q {
                if q == '\'' && it.peek().map(|x| x.1) == Some('\'') {
                    out.push('\'');
                    it.next();
                    continue;
                }
                return Ok((out, j + 1));
            }
            if q == '"' && c == '\\' {
                let (_, e) = it.next().ok_or("dangling backslash")?;
                out.push(match e {
                    'n' => '\n',
                    't' => '\t',
                    '"' => '"',
                    '\\' => '\\',
                    '/' => '/',
                    other => return Err(format!("unsupported escape \\{other}")),
                });
                continue;
            }
            out.push(c);
        }
        Err(format!(
            "unterminated quoted scalar {t:?} (multi-line quotes are not supported)"
        ))
    }

    fn scalar(t: &str) -> Result<Y, String> {
        let t = t.trim();
        if t.starts_with('"') || t.starts_with('\'') {
            let (s, n) = quoted(t)?;
            let rest = t[n..].trim();
            if !(rest.is_empty() || rest.starts_with('#')) {
                return Err(format!("text after a quoted scalar: {t:?}"));
            }
            return Ok(Y::Str(s));
        }
        if let Some(inner) = t.strip_prefix('[') {
            let end = inner.find(']').ok_or(format!("unterminated [ in {t:?}"))?;
            let rest = inner[end + 1..].trim();
            if !(rest.is_empty() || rest.starts_with('#')) {
                return Err(format!("text after a flow sequence: {t:?}"));
            }
            let body = &inner[..end];
            if body.contains(['[', '{', '"', '\'']) {
                return Err(format!("only flow sequences of plain scalars: {t:?}"));
            }
            if body.trim().is_empty() {
                return Ok(Y::Seq(Vec::new()));
            }
            return Ok(Y::Seq(
                body.split(',')
                    .map(|x| Y::Str(x.trim().to_string()))
                    .collect(),
            ));
        }
        if t.starts_with(['{', '&', '*', '!', '>', '|', '%', '@', '`']) {
            return Err(format!("unsupported YAML construct: {t:?}"));
        }
        let plain = match t.find(" #") {
            Some(n) => t[..n].trim_end(),
            None => t,
        };
        Ok(Y::Str(plain.to_string()))
    }

    impl P {
        fn err(&self, m: &str) -> String {
            format!("line {}: {m}: {:?}", self.i + 1, self.lines.get(self.i))
        }

        fn skip_blank(&mut self) {
            while self.i < self.lines.len() && blank(&self.lines[self.i]) {
                self.i += 1;
            }
        }

        /// The block starting at the next non-blank line, if it is indented at least `min`.
        fn node(&mut self, min: usize) -> Result<Y, String> {
            self.skip_blank();
            let Some(l) = self.lines.get(self.i) else {
                return Ok(Y::Null);
            };
            let n = indent(l);
            if n < min {
                return Ok(Y::Null);
            }
            if is_dash(&l[n..]) {
                self.seq(n)
            } else {
                self.map(n)
            }
        }

        fn seq(&mut self, n: usize) -> Result<Y, String> {
            let mut items = Vec::new();
            loop {
                self.skip_blank();
                let Some(l) = self.lines.get(self.i).cloned() else {
                    break;
                };
                let k = indent(&l);
                if k > n {
                    return Err(self.err("unexpected indentation"));
                }
                if k < n || !is_dash(&l[n..]) {
                    break;
                }
                let rest = l[n + 1..].trim_start();
                if rest.is_empty() || rest.starts_with('#') {
                    self.i += 1;
                    items.push(self.node(n + 1)?);
                    continue;
                }
                let col = l.len() - rest.len();
                if split_key(rest).is_some() || is_dash(rest) {
                    // A mapping (or sequence) starting on the dash's line: read it as a block
                    // at its own column.
                    self.lines[self.i] = format!("{}{rest}", " ".repeat(col));
                    items.push(self.node(col)?);
                } else {
                    self.i += 1;
                    items.push(self.value(rest, n)?);
                }
            }
            Ok(Y::Seq(items))
        }

        fn map(&mut self, n: usize) -> Result<Y, String> {
            let mut entries: Vec<(String, Y)> = Vec::new();
            loop {
                self.skip_blank();
                let Some(l) = self.lines.get(self.i).cloned() else {
                    break;
                };
                let k = indent(&l);
                if k > n {
                    return Err(self.err("unexpected indentation"));
                }
                if k < n || is_dash(&l[n..]) {
                    break;
                }
                let (key, rest) =
                    split_key(&l[n..]).ok_or_else(|| self.err("expected key: value"))?;
                if entries.iter().any(|(x, _)| *x == key) {
                    return Err(self.err("duplicate key"));
                }
                self.i += 1;
                let v = self.value(&rest, n)?;
                entries.push((key, v));
            }
            Ok(Y::Map(entries))
        }

        /// The value after `key:` (or `-`) at indentation `n`: inline, a block scalar, or the
        /// nested block below.
        fn value(&mut self, rest: &str, n: usize) -> Result<Y, String> {
            let rest = rest.trim();
            if rest.is_empty() || rest.starts_with('#') {
                self.skip_blank();
                let Some(l) = self.lines.get(self.i) else {
                    return Ok(Y::Null);
                };
                let k = indent(l);
                if k > n {
                    return self.node(k);
                }
                if k == n && is_dash(&l[n..]) {
                    return self.seq(n);
                }
                return Ok(Y::Null);
            }
            match rest {
                "|" | "|-" => Ok(Y::Str(self.block(n, rest == "|")?)),
                _ => scalar(rest),
            }
        }

        /// A literal block scalar: the lines indented more than `n`.
        fn block(&mut self, n: usize, clip: bool) -> Result<String, String> {
            let mut out: Vec<String> = Vec::new();
            let mut bi: Option<usize> = None;
            while let Some(l) = self.lines.get(self.i) {
                if l.trim().is_empty() {
                    out.push(String::new());
                    self.i += 1;
                    continue;
                }
                let k = indent(l);
                if k <= n {
                    break;
                }
                let b = *bi.get_or_insert(k);
                if k < b {
                    return Err(self.err("line less indented than its block scalar"));
                }
                out.push(l[b..].to_string());
                self.i += 1;
            }
            while out.last().is_some_and(|x| x.is_empty()) {
                out.pop();
            }
            let mut s = out.join("\n");
            if clip && !s.is_empty() {
                s.push('\n');
            }
            Ok(s)
        }
    }

    #[test]
    fn subset_parser_reads_what_the_recipes_use() {
        let y = parse(
            "a: 1 # c\nb:\n  - x\n  - k: v\n    j: |\n      line 1\n        line 2\n\n      line 3\n  - [p, q]\nc: 'it''s'\nd: \"q\\\"\"\ne:\n- s\nf:\n",
        )
        .expect("parse");
        assert_eq!(y.get("a").and_then(Y::str), Some("1"));
        let b = y.get("b").and_then(Y::seq).expect("b");
        assert_eq!(b[0], Y::Str("x".into()));
        assert_eq!(b[1].get("k").and_then(Y::str), Some("v"));
        assert_eq!(
            b[1].get("j").and_then(Y::str),
            Some("line 1\n  line 2\n\nline 3\n")
        );
        assert_eq!(b[2], Y::Seq(vec![Y::Str("p".into()), Y::Str("q".into())]));
        assert_eq!(y.get("c").and_then(Y::str), Some("it's"));
        assert_eq!(y.get("d").and_then(Y::str), Some("q\""));
        assert_eq!(y.get("e"), Some(&Y::Seq(vec![Y::Str("s".into())])));
        assert_eq!(y.get("f"), Some(&Y::Null));
        for bad in [
            "a: &x 1\n",
            "a: {b: 1}\n",
            "a: >\n  x\n",
            "a:\n\t- x\n",
            "a: 1\n  b: 2\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} must be refused");
        }
    }
}

use yaml::Y;

#[derive(Clone, Copy, Debug, PartialEq)]
enum System {
    CircleCi,
    GitHub,
    GitLab,
}

#[derive(Clone, Debug)]
enum Action {
    /// The CI checks the repository out: the test writes the example repository.
    Checkout,
    Run(String),
    /// An artifact upload of this path (relative to the checkout): checked, not uploaded.
    Artifacts(String),
}

#[derive(Clone, Debug)]
struct Step {
    name: String,
    action: Action,
    always: bool,
    env: Vec<(String, String)>,
}

#[derive(Clone, Debug)]
struct Job {
    name: String,
    needs: Vec<String>,
    env: Vec<(String, String)>,
    steps: Vec<Step>,
}

struct Recipe {
    ci: System,
    file: &'static str,
    jobs: Vec<Job>,
    conflict_error: Vec<String>,
}

/// Steps the test does not run, by name, and why.
const SKIPPED_STEPS: &[(&str, &str)] = &[(
    "Install wsfs",
    "the test puts the wsfs it built first on PATH",
)];

/// The example repository every checkout holds.
const APP_SH: &str = "#!/bin/sh\n# The example project's program: reports a test as passed.\necho \"app: $1 passed\"\n";

fn doc_path(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs/ci")
        .join(file)
}

/// The fenced block right after the marker line `<!-- recipes.rs: {what}…` (exactly one).
fn marked_block(md: &str, file: &str, what: &str) -> String {
    let marker = format!("<!-- recipes.rs: {what}");
    let lines: Vec<&str> = md.lines().collect();
    let at: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].trim_start().starts_with(&marker))
        .collect();
    assert_eq!(
        at.len(),
        1,
        "{file}: expected exactly one `{marker} -->` line, found {}",
        at.len()
    );
    let open = at[0] + 1;
    assert!(
        lines.get(open).is_some_and(|l| l.starts_with("```")),
        "{file}: the line after `{marker} -->` must open a fenced block"
    );
    let close = (open + 1..lines.len())
        .find(|&i| lines[i].starts_with("```"))
        .unwrap_or_else(|| panic!("{file}: unterminated fenced block after `{marker}`"));
    let mut s = lines[open + 1..close].join("\n");
    s.push('\n');
    s
}

/// PyYAML's reading of `text` as JSON (PyYAML is installed with moto).
fn pyyaml(src: &str) -> serde_json::Value {
    use std::io::Write;
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3 (PyYAML comes with moto: bash scripts/servers.sh install)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(src.as_bytes())
        .expect("write yaml to python3");
    let o = child.wait_with_output().expect("python3");
    assert!(o.status.success(), "PyYAML failed: {}", text(&o));
    serde_json::from_slice(&o.stdout).expect("PyYAML json")
}

fn str_of<'a>(y: &'a Y, what: &str) -> &'a str {
    y.str()
        .unwrap_or_else(|| panic!("{what}: expected a string, found {y:?}"))
}

fn str_list(y: &Y, what: &str) -> Vec<String> {
    match y {
        Y::Str(s) => vec![s.clone()],
        Y::Seq(v) => v.iter().map(|x| str_of(x, what).to_string()).collect(),
        other => panic!("{what}: expected a name or a list of names, found {other:?}"),
    }
}

fn env_of(y: Option<&Y>, what: &str) -> Vec<(String, String)> {
    let Some(y) = y else { return Vec::new() };
    y.map()
        .unwrap_or_else(|| panic!("{what}: expected a mapping"))
        .iter()
        .map(|(k, v)| (k.clone(), str_of(v, what).to_string()))
        .collect()
}

fn only_keys(y: &Y, allowed: &[&str], what: &str) {
    for (k, _) in y
        .map()
        .unwrap_or_else(|| panic!("{what}: expected a mapping, found {y:?}"))
    {
        assert!(
            allowed.contains(&k.as_str()),
            "{what}: key `{k}` is not simulated by tests/recipes.rs (known: {allowed:?})"
        );
    }
}

fn run_step(name: &str, script: &str, always: bool, env: Vec<(String, String)>) -> Step {
    Step {
        name: name.to_string(),
        action: Action::Run(script.to_string()),
        always,
        env,
    }
}

fn circleci(y: &Y) -> Vec<Job> {
    only_keys(y, &["version", "executors", "jobs", "workflows"], "config");
    let wfs = y
        .get("workflows")
        .and_then(Y::map)
        .expect("config: workflows");
    let wfs: Vec<&(String, Y)> = wfs.iter().filter(|(k, _)| k != "version").collect();
    assert_eq!(wfs.len(), 1, "config: exactly one workflow");
    let defs = y.get("jobs").expect("config: jobs");
    let mut jobs = Vec::new();
    for entry in wfs[0]
        .1
        .get("jobs")
        .and_then(Y::seq)
        .expect("workflow jobs")
    {
        let (name, opts) = match entry {
            Y::Str(n) => (n.clone(), None),
            Y::Map(m) if m.len() == 1 => (m[0].0.clone(), Some(&m[0].1)),
            other => panic!("workflow job entry {other:?}"),
        };
        let mut needs = Vec::new();
        if let Some(o) = opts {
            only_keys(o, &["requires", "context"], &format!("workflow job {name}"));
            if let Some(r) = o.get("requires") {
                needs = str_list(r, "requires");
            }
        }
        let def = defs
            .get(&name)
            .unwrap_or_else(|| panic!("job {name} is not defined"));
        only_keys(def, &["executor", "machine", "environment", "steps"], &name);
        let mut env = Vec::new();
        if let Some(x) = def.get("executor") {
            let ex = y
                .get("executors")
                .and_then(|e| e.get(str_of(x, "executor")))
                .unwrap_or_else(|| panic!("{name}: executor {x:?} not defined"));
            only_keys(ex, &["machine", "environment"], "executor");
            assert!(
                ex.get("machine").is_some(),
                "wsfs needs the machine executor"
            );
            env.extend(env_of(ex.get("environment"), "executor environment"));
        } else {
            assert!(
                def.get("machine").is_some(),
                "{name}: wsfs needs the machine executor"
            );
        }
        env.extend(env_of(def.get("environment"), "job environment"));
        let mut steps = Vec::new();
        for s in def.get("steps").and_then(Y::seq).expect("steps") {
            match s {
                Y::Str(c) if c == "checkout" => steps.push(Step {
                    name: "checkout".into(),
                    action: Action::Checkout,
                    always: false,
                    env: Vec::new(),
                }),
                Y::Map(m) if m.len() == 1 => {
                    let (kind, body) = (&m[0].0, &m[0].1);
                    match kind.as_str() {
                        "run" => {
                            if let Some(cmd) = body.str() {
                                steps.push(run_step(cmd, cmd, false, Vec::new()));
                                continue;
                            }
                            only_keys(body, &["name", "command", "when"], "run step");
                            let cmd = str_of(body.get("command").expect("run.command"), "command");
                            let name = body.get("name").and_then(Y::str).unwrap_or(cmd);
                            let always = match body.get("when").and_then(Y::str) {
                                None | Some("on_success") => false,
                                Some("always") => true,
                                Some(w) => panic!("run step {name}: when: {w} is not simulated"),
                            };
                            steps.push(run_step(name, cmd, always, Vec::new()));
                        }
                        "store_artifacts" | "store_test_results" => {
                            only_keys(body, &["path", "destination"], kind);
                            steps.push(Step {
                                name: kind.clone(),
                                action: Action::Artifacts(
                                    str_of(body.get("path").expect("path"), "path").into(),
                                ),
                                always: false,
                                env: Vec::new(),
                            });
                        }
                        other => panic!("{name}: step `{other}` is not simulated"),
                    }
                }
                other => panic!("{name}: step {other:?} is not simulated"),
            }
        }
        jobs.push(Job {
            name,
            needs,
            env,
            steps,
        });
    }
    jobs
}

fn github(y: &Y) -> Vec<Job> {
    only_keys(y, &["name", "on", "env", "jobs", "permissions"], "workflow");
    let wf_env = env_of(y.get("env"), "workflow env");
    let mut jobs = Vec::new();
    for (name, def) in y.get("jobs").and_then(Y::map).expect("jobs") {
        only_keys(
            def,
            &["runs-on", "needs", "env", "steps", "timeout-minutes"],
            name,
        );
        let needs = def
            .get("needs")
            .map(|n| str_list(n, "needs"))
            .unwrap_or_default();
        let mut env = wf_env.clone();
        env.extend(env_of(def.get("env"), "job env"));
        let mut steps = Vec::new();
        for s in def.get("steps").and_then(Y::seq).expect("steps") {
            only_keys(s, &["name", "uses", "with", "run", "env", "if"], "step");
            let always = match s.get("if").and_then(Y::str) {
                None => false,
                Some("always()") | Some("${{ always() }}") => true,
                Some(c) => panic!("{name}: if: {c} is not simulated"),
            };
            let step_env = env_of(s.get("env"), "step env");
            if let Some(u) = s.get("uses").and_then(Y::str) {
                let action = if u.starts_with("actions/checkout@") {
                    Action::Checkout
                } else if u.starts_with("actions/upload-artifact@") {
                    let p = s
                        .get("with")
                        .and_then(|w| w.get("path"))
                        .expect("with.path");
                    Action::Artifacts(str_of(p, "path").into())
                } else {
                    panic!("{name}: uses: {u} is not simulated");
                };
                steps.push(Step {
                    name: u.into(),
                    action,
                    always,
                    env: step_env,
                });
                continue;
            }
            let cmd = str_of(s.get("run").expect("a step has run: or uses:"), "run");
            let sname = s.get("name").and_then(Y::str).unwrap_or(cmd);
            steps.push(run_step(sname, cmd, always, step_env));
        }
        jobs.push(Job {
            name: name.clone(),
            needs,
            env,
            steps,
        });
    }
    jobs
}

fn gitlab(y: &Y) -> Vec<Job> {
    let top = y.map().expect("top level");
    let stages: Vec<String> = y
        .get("stages")
        .map(|s| str_list(s, "stages"))
        .unwrap_or_default();
    let vars = env_of(y.get("variables"), "variables");
    let mut defs: Vec<(&String, &Y)> = Vec::new();
    for (k, v) in top {
        match k.as_str() {
            "stages" | "variables" => {}
            _ if k.starts_with('.') => {}
            "default" | "include" | "workflow" | "image" | "services" | "before_script"
            | "after_script" | "cache" => panic!("top-level `{k}` is not simulated"),
            _ => defs.push((k, v)),
        }
    }
    let stage_of = |d: &Y| {
        d.get("stage")
            .and_then(Y::str)
            .unwrap_or("test")
            .to_string()
    };
    let mut jobs = Vec::new();
    for (name, def) in &defs {
        only_keys(
            def,
            &[
                "stage",
                "needs",
                "script",
                "after_script",
                "variables",
                "tags",
            ],
            name,
        );
        let stage = stage_of(def);
        let si = stages
            .iter()
            .position(|s| *s == stage)
            .unwrap_or_else(|| panic!("{name}: stage {stage} is not in stages"));
        // Without needs:, a job waits for every job of the earlier stages.
        let needs = match def.get("needs") {
            Some(n) => str_list(n, "needs"),
            None => defs
                .iter()
                .filter(|(_, d)| stages.iter().position(|s| *s == stage_of(d)).unwrap_or(0) < si)
                .map(|(n, _)| (*n).clone())
                .collect(),
        };
        let mut env = vars.clone();
        env.extend(env_of(def.get("variables"), "job variables"));
        for (_, v) in &env {
            assert!(
                !v.contains('$'),
                "{name}: variables referring to variables are not simulated"
            );
        }
        let lines = |k: &str| -> Option<String> {
            def.get(k).map(|s| {
                let items: Vec<String> = match s {
                    Y::Str(x) => vec![x.clone()],
                    Y::Seq(v) => v.iter().map(|x| str_of(x, k).to_string()).collect(),
                    other => panic!("{name}: {k}: {other:?}"),
                };
                // One shell for all lines, as the runner does.
                let mut s = items
                    .iter()
                    .map(|l| l.trim_end_matches('\n'))
                    .collect::<Vec<_>>()
                    .join("\n");
                s.push('\n');
                s
            })
        };
        let mut steps = vec![Step {
            name: "get sources".into(),
            action: Action::Checkout,
            always: false,
            env: Vec::new(),
        }];
        steps.push(run_step(
            "script",
            &lines("script").unwrap_or_else(|| panic!("{name}: script")),
            false,
            Vec::new(),
        ));
        if let Some(a) = lines("after_script") {
            steps.push(run_step("after_script", &a, true, Vec::new()));
        }
        jobs.push(Job {
            name: (*name).clone(),
            needs,
            env,
            steps,
        });
    }
    jobs
}

fn load(ci: System, file: &'static str) -> Recipe {
    let md = std::fs::read_to_string(doc_path(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let text = marked_block(&md, file, "workflow");
    let y = yaml::parse(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
    assert_eq!(
        y.to_json(),
        yaml::canon_json(&pyyaml(&text)),
        "{file}: tests/recipes.rs reads the YAML differently from PyYAML"
    );
    let jobs = match ci {
        System::CircleCi => circleci(&y),
        System::GitHub => github(&y),
        System::GitLab => gitlab(&y),
    };
    let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(
        names
            .iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        ["build", "report", "test-a", "test-b"].into(),
        "{file}: the recipes' jobs"
    );
    // Scripts are plain shell: no CI expressions, no credentials in URLs.
    for j in &jobs {
        for s in &j.steps {
            if let Action::Run(sc) = &s.action {
                assert!(
                    !sc.contains("${{"),
                    "{file}: {}/{}: ${{{{ … }}}} inside a script (pass it through env)",
                    j.name,
                    s.name
                );
            }
        }
        for (k, v) in j
            .env
            .iter()
            .chain(j.steps.iter().flat_map(|s| s.env.iter()))
        {
            if let Some(rest) = v.split_once("://").map(|x| x.1) {
                let host = rest.split('/').next().unwrap_or("");
                assert!(!host.contains('@'), "{file}: {k}: credentials in a URL");
            }
        }
    }
    let conflict_error = marked_block(&md, file, "conflict")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.trim_end().to_string())
        .collect();
    Recipe {
        ci,
        file,
        jobs,
        conflict_error,
    }
}

/// Jobs in the order a CI may run them: dependencies first, ties in document order.
fn order(jobs: &[Job]) -> Vec<Job> {
    let mut done: Vec<String> = Vec::new();
    let mut out = Vec::new();
    while out.len() < jobs.len() {
        let next = jobs
            .iter()
            .find(|j| !done.contains(&j.name) && j.needs.iter().all(|n| done.contains(n)))
            .unwrap_or_else(|| panic!("unsatisfiable needs among {jobs:?}"));
        done.push(next.name.clone());
        out.push(next.clone());
    }
    out
}

struct StepRun {
    name: String,
    /// None: not run (an earlier step failed), or not a shell step.
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

struct JobRun {
    steps: Vec<StepRun>,
}

impl JobRun {
    fn first_failure(&self) -> Option<&StepRun> {
        self.steps.iter().find(|s| s.code.is_some_and(|c| c != 0))
    }
    fn step(&self, name: &str) -> &StepRun {
        self.steps
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no step {name}"))
    }
}

/// One simulated machine set: a temp dir with a run dir, the tool shims, and a checkout
/// directory per job; every attach the test could have made is forced down on drop.
struct Sim {
    // Declared first, so dropped first: the attaches go before the temp dir.
    guards: Vec<Attached>,
    s: Scratch,
    bin: PathBuf,
    bucket: String,
}

impl Sim {
    fn new(bucket: &str) -> Sim {
        let s = Scratch::new();
        let bin = s.mkdir("bin");
        let sudo = bin.join("sudo");
        std::fs::write(
            &sudo,
            "#!/bin/sh\n# tests/recipes.rs: the test runs as root; sudo only runs its command.\n\
             while [ $# -gt 0 ]; do\n  case \"$1\" in\n    -E|-n|--preserve-env|--preserve-env=*) shift ;;\n\
             \x20   --) shift; break ;;\n    -*) echo \"sudo shim: unsupported option $1\" >&2; exit 2 ;;\n\
             \x20   *) break ;;\n  esac\ndone\nexec \"$@\"\n",
        )
        .expect("write sudo shim");
        std::fs::set_permissions(&sudo, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Sim {
            guards: Vec::new(),
            s,
            bin,
            bucket: bucket.to_string(),
        }
    }

    /// The environment of a job: this process's minus any real CI's variables, then the
    /// simulated CI's, then the recipe's.
    fn env(
        &self,
        r: &Recipe,
        job: &Job,
        step: &Step,
        checkout: &Path,
        run_id: &str,
    ) -> Vec<(String, String)> {
        let ci_prefixes = ["CIRCLE", "GITHUB_", "RUNNER_", "CI_", "GITLAB_"];
        let mut env: BTreeMap<String, String> = std::env::vars()
            .filter(|(k, _)| k != "CI" && !ci_prefixes.iter().any(|p| k.starts_with(p)))
            .collect();
        let wsfs_dir = Path::new(WSFS).parent().expect("wsfs dir");
        env.insert(
            "PATH".into(),
            format!(
                "{}:{}:{}",
                self.bin.display(),
                wsfs_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        );
        env.insert(
            "WSFS_RUN_DIR".into(),
            self.s.run_dir().display().to_string(),
        );
        env.insert(
            "WSFS_PERSIST_INDEX_DIR".into(),
            self.s.index_dir().display().to_string(),
        );
        env.insert("CI".into(), "true".into());
        let co = checkout.display().to_string();
        let vars: Vec<(&str, String)> = match r.ci {
            System::CircleCi => vec![
                ("CIRCLECI", "true".into()),
                ("CIRCLE_WORKFLOW_WORKSPACE_ID", format!("wf-{run_id}")),
                ("CIRCLE_WORKFLOW_ID", format!("wf-{run_id}-rerun-1")),
                ("CIRCLE_JOB", job.name.clone()),
                ("CIRCLE_WORKING_DIRECTORY", co),
            ],
            System::GitHub => vec![
                ("GITHUB_ACTIONS", "true".into()),
                ("GITHUB_RUN_ID", run_id.into()),
                ("GITHUB_RUN_ATTEMPT", "1".into()),
                ("GITHUB_JOB", job.name.clone()),
                ("GITHUB_WORKSPACE", co),
                (
                    "RUNNER_TEMP",
                    checkout.with_file_name("runner-temp").display().to_string(),
                ),
            ],
            System::GitLab => vec![
                ("GITLAB_CI", "true".into()),
                ("CI_PIPELINE_ID", run_id.into()),
                ("CI_JOB_NAME", job.name.clone()),
                ("CI_PROJECT_DIR", co),
            ],
        };
        for (k, v) in vars {
            env.insert(k.into(), v);
        }
        for (k, v) in job.env.iter().chain(step.env.iter()) {
            env.insert(k.clone(), self.resolve(r, k, v));
        }
        env.into_iter().collect()
    }

    /// A value from the recipe's environment: secrets and variables come from this process's
    /// environment; WSFS_STORE's bucket becomes the test's.
    fn resolve(&self, r: &Recipe, k: &str, v: &str) -> String {
        if let Some(inner) = v.strip_prefix("${{").and_then(|x| x.strip_suffix("}}")) {
            let inner = inner.trim();
            let name = inner
                .strip_prefix("secrets.")
                .or_else(|| inner.strip_prefix("vars."))
                .unwrap_or_else(|| {
                    panic!("{}: {k}: only secrets.X and vars.X are simulated", r.file)
                });
            return std::env::var(name).unwrap_or_else(|_| {
                panic!("{}: {k} needs {name} in the test environment", r.file)
            });
        }
        assert!(
            !v.contains("${{"),
            "{}: {k}: expression not simulated",
            r.file
        );
        if k == "WSFS_STORE" {
            let rest = v
                .strip_prefix("s3://")
                .unwrap_or_else(|| panic!("{}: WSFS_STORE must be an s3:// URL", r.file));
            let prefix = rest.split_once('/').map(|x| x.1).unwrap_or("");
            return format!("s3://{}/{prefix}", self.bucket);
        }
        v.to_string()
    }

    fn checkout(&self, variant: &str, job: &str) -> PathBuf {
        self.s.path(&format!("{variant}/{job}/project"))
    }

    /// Runs the workflow; `before_detach(job, checkout)` is called before a job's always-steps
    /// (while its attach is still there).
    fn run(
        &mut self,
        r: &Recipe,
        variant: &str,
        jobs: &[Job],
        before_detach: &mut dyn FnMut(&str, &Path),
    ) -> BTreeMap<String, JobRun> {
        let run_id = format!(
            "{}{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .subsec_nanos()
        );
        let mut runs = BTreeMap::new();
        for job in order(jobs) {
            let co = self.checkout(variant, &job.name);
            std::fs::create_dir_all(&co).expect("checkout dir");
            self.guards.push(Attached {
                at: co.clone(),
                run_dir: self.s.run_dir(),
            });
            println!("=== {} [{variant}] job {}", r.file, job.name);
            let mut failed = false;
            let mut hook_called = false;
            let mut steps = Vec::new();
            for (n, step) in job.steps.iter().enumerate() {
                if step.always && !hook_called {
                    hook_called = true;
                    before_detach(&job.name, &co);
                }
                let skip = SKIPPED_STEPS.iter().find(|(s, _)| *s == step.name);
                if let Some((_, why)) = skip {
                    println!("--- step {}: skipped ({why})", step.name);
                    continue;
                }
                if failed && !step.always {
                    println!("--- step {}: not run (an earlier step failed)", step.name);
                    steps.push(StepRun {
                        name: step.name.clone(),
                        code: None,
                        stdout: String::new(),
                        stderr: String::new(),
                    });
                    continue;
                }
                match &step.action {
                    Action::Checkout => {
                        std::fs::create_dir_all(co.join("src")).expect("src");
                        std::fs::write(co.join("src/app.sh"), APP_SH).expect("app.sh");
                        std::fs::set_permissions(
                            co.join("src/app.sh"),
                            std::fs::Permissions::from_mode(0o755),
                        )
                        .expect("chmod");
                    }
                    Action::Artifacts(p) => {
                        assert!(
                            co.join(p).exists(),
                            "{}: {}: artifact path {p} does not exist when it is uploaded",
                            r.file,
                            job.name
                        );
                    }
                    Action::Run(script) => {
                        let sr = self.shell(r, &job, step, n, &co, script, &run_id);
                        failed |= sr.code != Some(0);
                        steps.push(sr);
                    }
                }
            }
            if !hook_called {
                before_detach(&job.name, &co);
            }
            // Whatever happened, the job left nothing mounted and the checkout as it was.
            let ours = self.s.dir.path().display().to_string();
            let left: Vec<String> = mount_table()
                .into_iter()
                .filter(|m| m.starts_with(&ours))
                .collect();
            assert!(
                left.is_empty(),
                "{}: job {} left mounts: {left:?}",
                r.file,
                job.name
            );
            let mut names: Vec<String> = walkdir::WalkDir::new(&co)
                .min_depth(1)
                .into_iter()
                .map(|e| {
                    e.expect("walk checkout")
                        .path()
                        .strip_prefix(&co)
                        .expect("prefix")
                        .display()
                        .to_string()
                })
                .collect();
            names.sort();
            if job.name != "build" {
                assert_eq!(
                    names,
                    ["src", "src/app.sh"],
                    "{}: job {}: the checkout after the detach",
                    r.file,
                    job.name
                );
            }
            runs.insert(job.name.clone(), JobRun { steps });
        }
        runs
    }

    #[allow(clippy::too_many_arguments)]
    fn shell(
        &self,
        r: &Recipe,
        job: &Job,
        step: &Step,
        n: usize,
        co: &Path,
        script: &str,
        run_id: &str,
    ) -> StepRun {
        let dir = co.parent().expect("job dir");
        let file = dir.join(format!("step-{n}.sh"));
        std::fs::write(&file, script).expect("write step script");
        let (out, err) = (
            dir.join(format!("step-{n}.out")),
            dir.join(format!("step-{n}.err")),
        );
        let mut child = Command::new("bash")
            .args(["--noprofile", "--norc", "-euo", "pipefail"])
            .arg(&file)
            .current_dir(co)
            .env_clear()
            .envs(self.env(r, job, step, co, run_id))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("stdout file"))
            .stderr(std::fs::File::create(&err).expect("stderr file"))
            .process_group(0)
            .spawn()
            .expect("run bash");
        let t = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().expect("wait") {
                break st;
            }
            if t.elapsed() > Duration::from_secs(180) {
                // SAFETY: kill has no memory preconditions; the group is the step's own.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                panic!(
                    "{}: {}/{}: step did not finish in 180 s",
                    r.file, job.name, step.name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let read = |p: &Path| {
            let mut s = String::new();
            std::fs::File::open(p)
                .and_then(|mut f| f.read_to_string(&mut s))
                .expect("read step output");
            s
        };
        let sr = StepRun {
            name: step.name.clone(),
            code: status.code(),
            stdout: read(&out),
            stderr: read(&err),
        };
        println!(
            "--- step {}: exit {:?}\n{}{}",
            step.name, sr.code, sr.stdout, sr.stderr
        );
        sr
    }
}

/// The test jobs' scripts with `results/<job>` replaced by `results`: both write
/// `results/summary.txt`.
fn conflicting(r: &Recipe) -> Vec<Job> {
    let mut jobs = r.jobs.clone();
    for j in jobs.iter_mut().filter(|j| j.name.starts_with("test-")) {
        let from = format!("results/{}", j.name);
        let mut hits = 0;
        for s in &mut j.steps {
            if let Action::Run(sc) = &mut s.action {
                hits += sc.matches(&from).count();
                *sc = sc.replace(&from, "results");
            }
        }
        assert!(hits > 0, "{}: job {} never writes {from}", r.file, j.name);
    }
    jobs
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn assert_all_ok(r: &Recipe, runs: &BTreeMap<String, JobRun>, jobs: &[&str]) {
    for j in jobs {
        let run = &runs[*j];
        if let Some(f) = run.first_failure() {
            panic!(
                "{}: job {j}, step {} exited {:?}:\n{}{}",
                r.file, f.name, f.code, f.stdout, f.stderr
            );
        }
        assert!(
            run.steps.iter().all(|s| s.code.is_some()),
            "{}: {j}: a step was not run",
            r.file
        );
    }
}

fn check_recipe(ci: System, file: &'static str) {
    require_fuse();
    let e = emulators::env();
    let r = load(ci, file);
    let bucket = emulators::unique("recipes");
    emulators::mk_s3(&e, &bucket);
    let mut sim = Sim::new(&bucket);

    // The flow as written: every job succeeds, and each sees what its upstream jobs persisted.
    let app = |x: &str| format!("app: {x} passed\n");
    let mut seen: Vec<String> = Vec::new();
    let runs = sim.run(&r, "flow", &r.jobs, &mut |job, co| {
        match job {
            "test-a" | "test-b" => {
                assert_eq!(
                    read(&co.join("dist/app")),
                    APP_SH,
                    "{file}: {job} sees build's dist/app"
                );
                assert_eq!(
                    read(&co.join(format!("results/{job}/summary.txt"))),
                    app(job),
                    "{file}: {job} ran build's dist/app in the attached checkout"
                );
                assert_eq!(
                    read(&co.join("src/app.sh")),
                    APP_SH,
                    "the checkout's own files stay"
                );
            }
            "report" => {
                assert_eq!(
                    read(&co.join("dist/app")),
                    APP_SH,
                    "{file}: report sees build (an ancestor)"
                );
                for t in ["test-a", "test-b"] {
                    assert_eq!(
                        read(&co.join(format!("results/{t}/summary.txt"))),
                        app(t),
                        "{file}: report sees {t}'s results"
                    );
                }
            }
            _ => {}
        }
        seen.push(job.to_string());
    });
    assert_all_ok(&r, &runs, &["build", "test-a", "test-b", "report"]);
    assert_eq!(seen.len(), 4, "{file}: every job ran");
    let report_out: String = runs["report"]
        .steps
        .iter()
        .map(|s| s.stdout.as_str())
        .collect();
    assert!(
        report_out.contains(&app("test-a")) && report_out.contains(&app("test-b")),
        "{file}: the report prints both results: {report_out}"
    );

    // The conflict: both test jobs write results/summary.txt; the fan-in attach exits 5.
    let jobs = conflicting(&r);
    let runs = sim.run(&r, "conflict", &jobs, &mut |_, _| {});
    assert_all_ok(&r, &runs, &["build", "test-a", "test-b"]);
    let report = &runs["report"];
    let f = report
        .first_failure()
        .unwrap_or_else(|| panic!("{file}: the fan-in attach must fail on the conflict"));
    assert_eq!(
        f.code,
        Some(5),
        "{file}: conflict exit code; stderr:\n{}",
        f.stderr
    );
    // Compared with whitespace collapsed: the lines the doc shows, in order.
    let squash = |x: &str| x.split_whitespace().collect::<Vec<_>>().join(" ");
    let want = squash(&r.conflict_error.join("\n"));
    assert!(
        squash(&f.stderr).contains(&want),
        "{file}: the conflict section shows\n{}\nbut the attach printed:\n{}",
        r.conflict_error.join("\n"),
        f.stderr
    );
    let detach = report
        .steps
        .iter()
        .rev()
        .find(|s| s.code.is_some())
        .expect("a step ran");
    assert_ne!(
        detach.name, f.name,
        "{file}: the detach step runs after the failed attach"
    );
    assert_eq!(
        detach.code,
        Some(0),
        "{file}: detach after a failed attach: {}",
        detach.stderr
    );
    if ci == System::GitLab {
        assert_eq!(report.step("after_script").code, Some(0));
    }
}

#[test]
fn circleci_recipe_runs() {
    check_recipe(System::CircleCi, "circleci.md");
}

#[test]
fn github_actions_recipe_runs() {
    check_recipe(System::GitHub, "github-actions.md");
}

#[test]
fn gitlab_ci_recipe_runs() {
    check_recipe(System::GitLab, "gitlab-ci.md");
}

#[test]
fn the_index_names_every_recipe_and_the_test() {
    let md = read(&doc_path("README.md"));
    for f in ["circleci.md", "github-actions.md", "gitlab-ci.md"] {
        assert!(
            md.contains(&format!("]({f})")),
            "docs/ci/README.md links {f}"
        );
        assert!(doc_path(f).exists());
    }
    assert!(md.contains("tests/recipes.rs"));
    // The exit codes it lists are the README's.
    let top = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"));
    for code in 1..=7 {
        assert!(
            top.contains(&format!("| {code} |")),
            "README lists exit {code}"
        );
        assert!(
            md.contains(&format!("| {code} |")),
            "docs/ci/README.md covers exit {code}"
        );
    }
}
