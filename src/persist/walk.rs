//! The walk of `wsfs persist`: which paths of `--root` a layer holds (everything, or what the
//! CircleCI-style path patterns select, with the directories leading to it), in path order,
//! never following symlinks. Only the parts of the tree a pattern can match are visited.

use crate::error::WsfsError;
use globset::{Glob, GlobSet, GlobSetBuilder};
use std::collections::BTreeSet;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// One path to persist.
pub(super) struct Walked {
    pub rel: Vec<u8>,
    pub abs: PathBuf,
    pub meta: std::fs::Metadata,
}

pub(super) fn mtime(m: &std::fs::Metadata) -> (i64, u32) {
    (m.mtime(), m.mtime_nsec().clamp(0, 999_999_999) as u32)
}

pub(super) fn build_globs(paths: &[String]) -> Result<Option<GlobSet>, WsfsError> {
    if paths.is_empty() {
        return Ok(None);
    }
    let mut b = GlobSetBuilder::new();
    for p in paths {
        let p = p.trim_start_matches("./").trim_end_matches('/');
        if p.starts_with('/') || p.split('/').any(|c| c == "..") {
            return Err(WsfsError::Usage(format!(
                "path {p:?} must be relative to --root and must not contain '..'"
            )));
        }
        let g =
            Glob::new(p).map_err(|e| WsfsError::Usage(format!("bad path pattern {p:?}: {e}")))?;
        b.add(g);
    }
    Ok(Some(
        b.build().map_err(|e| WsfsError::Usage(e.to_string()))?,
    ))
}

/// The leading components of a pattern that contain no glob syntax (`results/test-a` of
/// `results/test-a/**`): only that part of the tree can match, so only it is walked.
fn literal_prefix(pattern: &str) -> &str {
    let pattern = pattern.trim_start_matches("./").trim_end_matches('/');
    let mut end = 0;
    for (i, comp) in pattern.split('/').enumerate() {
        if comp.is_empty() || comp.contains(['*', '?', '[', ']', '{', '}', '\\']) {
            break;
        }
        end = if i == 0 {
            comp.len()
        } else {
            end + 1 + comp.len()
        };
    }
    &pattern[..end]
}

/// Where to walk for these patterns (relative to the root, "" = all of it): their literal
/// prefixes, without those inside another. Persisting `results` from a checkout with a
/// workspace attached over it must not read every workspace entry.
fn walk_starts(paths: &[String]) -> Vec<String> {
    let mut starts: Vec<String> = paths
        .iter()
        .map(|p| literal_prefix(p).to_string())
        .collect();
    if paths.is_empty() || starts.iter().any(|s| s.is_empty()) {
        return vec![String::new()];
    }
    starts.sort();
    starts.dedup();
    let mut out: Vec<String> = Vec::new();
    for s in starts {
        if !out.iter().any(|o| s.starts_with(&format!("{o}/"))) {
            out.push(s);
        }
    }
    out
}

/// Walks `root` (never following symlinks) and returns the entries to persist, sorted by path.
/// With patterns, `unmatched` gets the index of every pattern that matched nothing; only the
/// parts of the tree a pattern can match are walked (and the directories leading to them).
pub(super) fn walk(
    root: &Path,
    globs: Option<&GlobSet>,
    paths: &[String],
    skipped: &mut Vec<String>,
    unmatched: &mut Vec<usize>,
) -> Result<Vec<Walked>, WsfsError> {
    let mut by_rel: std::collections::BTreeMap<Vec<u8>, Walked> = Default::default();
    let starts = if globs.is_some() {
        walk_starts(paths)
    } else {
        vec![String::new()]
    };
    // Paths found by the walks, stat-ed together afterwards (see `stat_all`).
    let mut found: Vec<(Vec<u8>, PathBuf)> = Vec::new();
    for start in &starts {
        let top = root.join(start);
        if !start.is_empty() {
            // The start and the directories leading to it, as the whole walk would see them:
            // a symlink on the way is not followed (then nothing below it can match).
            let mut rel = PathBuf::new();
            let mut reachable = true;
            for comp in Path::new(start).components() {
                rel.push(comp);
                let abs = root.join(&rel);
                let Ok(meta) = abs.symlink_metadata() else {
                    reachable = false;
                    break;
                };
                let is_dir = meta.is_dir();
                let key = rel.as_os_str().as_bytes().to_vec();
                by_rel.entry(key.clone()).or_insert(Walked {
                    rel: key,
                    abs: abs.clone(),
                    meta,
                });
                if !is_dir {
                    reachable = abs == top;
                    break;
                }
            }
            if !reachable || !top.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                continue;
            }
        }
        for item in walkdir::WalkDir::new(&top)
            .follow_links(false)
            .sort_by_file_name()
            .min_depth(1)
        {
            let item =
                item.map_err(|e| WsfsError::Failed(format!("cannot walk {}: {e}", top.display())))?;
            let rel = item
                .path()
                .strip_prefix(root)
                .map_err(|e| WsfsError::Failed(e.to_string()))?
                .as_os_str()
                .as_bytes()
                .to_vec();
            found.push((rel, item.into_path()));
        }
    }
    let abs: Vec<&Path> = found.iter().map(|(_, a)| a.as_path()).collect();
    let metas = stat_all(&abs);
    drop(abs);
    for ((rel, abs), meta) in found.into_iter().zip(metas) {
        let meta =
            meta.map_err(|e| WsfsError::Failed(format!("cannot stat {}: {e}", abs.display())))?;
        by_rel
            .entry(rel.clone())
            .or_insert(Walked { rel, abs, meta });
    }
    let mut all = Vec::with_capacity(by_rel.len());
    for (_, w) in by_rel {
        let ft = w.meta.file_type();
        if ft.is_socket() || ft.is_fifo() || ft.is_block_device() || ft.is_char_device() {
            skipped.push(w.abs.display().to_string());
            continue;
        }
        all.push(w);
    }
    let Some(globs) = globs else {
        all.sort_by(|a, b| a.rel.cmp(&b.rel));
        return Ok(all);
    };
    // CircleCI semantics: a path matching a pattern is included with everything under it; the
    // directories leading to it come along so the tree stays connected.
    let mut hit = vec![false; globs.len()];
    let mut matches = |rel: &[u8]| {
        let mut prefix_end = Some(rel.len());
        while let Some(end) = prefix_end {
            let p = Path::new(std::ffi::OsStr::from_bytes(&rel[..end]));
            let m = globs.matches(p);
            if !m.is_empty() {
                for i in m {
                    hit[i] = true;
                }
                return true;
            }
            prefix_end = rel[..end].iter().rposition(|&b| b == b'/');
        }
        false
    };
    let mut keep: BTreeSet<Vec<u8>> = BTreeSet::new();
    for w in &all {
        if matches(&w.rel) {
            keep.insert(w.rel.clone());
            let mut end = w.rel.len();
            while let Some(i) = w.rel[..end].iter().rposition(|&b| b == b'/') {
                keep.insert(w.rel[..i].to_vec());
                end = i;
            }
        }
    }
    unmatched.extend(hit.iter().enumerate().filter(|(_, h)| !**h).map(|(i, _)| i));
    let mut out: Vec<Walked> = all.into_iter().filter(|w| keep.contains(&w.rel)).collect();
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

/// Threads that stat at once: a walk of a large tree with a cold page cache waits on inode
/// reads, which a disk serves many at a time (one thread leaves it idle between requests).
const STAT_THREADS: usize = 16;

/// `lstat` of every path, in order, on up to [`STAT_THREADS`] threads.
fn stat_all(paths: &[&Path]) -> Vec<std::io::Result<std::fs::Metadata>> {
    let one = |p: &&Path| p.symlink_metadata();
    if paths.len() < 4 * STAT_THREADS {
        return paths.iter().map(one).collect();
    }
    let per = paths.len().div_ceil(STAT_THREADS);
    std::thread::scope(|s| {
        let parts: Vec<_> = paths
            .chunks(per)
            .map(|part| {
                (
                    part.len(),
                    s.spawn(move || part.iter().map(one).collect::<Vec<_>>()),
                )
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|(n, h)| {
                h.join().unwrap_or_else(|_| {
                    (0..n)
                        .map(|_| Err(std::io::Error::other("a stat thread panicked")))
                        .collect()
                })
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_come_back_in_order_with_their_errors() {
        let t = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..200).map(|i| t.path().join(format!("f{i}"))).collect();
        for (i, p) in paths.iter().enumerate() {
            if i % 50 != 7 {
                std::fs::write(p, vec![0u8; i]).unwrap();
            }
        }
        let refs: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
        let got = stat_all(&refs);
        assert_eq!(got.len(), 200);
        for (i, m) in got.iter().enumerate() {
            match m {
                Ok(m) => assert_eq!(m.len(), i as u64, "{i}"),
                Err(_) => assert_eq!(i % 50, 7, "{i}"),
            }
        }
        assert_eq!(got.iter().filter(|m| m.is_err()).count(), 4);
    }

    #[test]
    fn only_what_a_pattern_can_match_is_walked() {
        assert_eq!(literal_prefix("results/test-a/**"), "results/test-a");
        assert_eq!(literal_prefix("./dist/"), "dist");
        assert_eq!(literal_prefix("*.o"), "");
        assert_eq!(literal_prefix("src/*/x"), "src");
        assert_eq!(literal_prefix("a/b{c,d}"), "a");
        let v = |p: &[&str]| walk_starts(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(v(&["results", "results/x/**", "dist"]), ["dist", "results"]);
        assert_eq!(v(&["results", "**/*.log"]), [""]);
        assert_eq!(v(&["ab", "a/b"]), ["a/b", "ab"]);
    }

    #[test]
    fn a_pattern_walk_persists_what_the_whole_walk_would() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for d in ["results/a", "results/b", "dist/x", "other", "lnk-target/in"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        for f in [
            "results/a/1",
            "results/b/2",
            "dist/x/app",
            "other/o",
            "top.log",
            "lnk-target/in/f",
        ] {
            std::fs::write(r.join(f), f).unwrap();
        }
        std::os::unix::fs::symlink("lnk-target", r.join("lnk")).unwrap();
        let cases: [&[&str]; 5] = [
            &["results"],
            &["results/a/1", "dist"],
            &["*.log", "results/b"],
            &["lnk/in/f", "lnk"],
            &["missing/x", "dist/x/app"],
        ];
        for pats in cases {
            let pats: Vec<String> = pats.iter().map(|s| s.to_string()).collect();
            let globs = build_globs(&pats).unwrap();
            let (mut s1, mut u1, mut s2, mut u2) = (vec![], vec![], vec![], vec![]);
            let fast = walk(r, globs.as_ref(), &pats, &mut s1, &mut u1).unwrap();
            // The whole walk: the same patterns with a pattern that has no literal prefix.
            let mut all_pats = pats.clone();
            all_pats.push("*.nothing-matches".into());
            let all_globs = build_globs(&all_pats).unwrap();
            let full = walk(r, all_globs.as_ref(), &all_pats, &mut s2, &mut u2).unwrap();
            let names = |v: &[Walked]| v.iter().map(|w| w.rel.clone()).collect::<Vec<_>>();
            assert_eq!(names(&fast), names(&full), "{pats:?}");
            u2.retain(|i| *i < pats.len());
            assert_eq!(u1, u2, "{pats:?}: unmatched patterns");
        }
    }
}
