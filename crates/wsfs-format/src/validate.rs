//! Structural validation of a manifest. Everything the filesystem later relies on without
//! checking (paths are clean and relative, every parent exists, extents lie inside their chunks,
//! sizes add up) is established here, once.

use super::names::validate_name;
use super::types::{EntryKind, Manifest};
use super::ManifestError;
use std::collections::HashMap;

/// The largest raw chunk a manifest may reference. Packs target ~4 MiB and CDC chunks are at most
/// 4 MiB; the slack allows a pack that ends with a file just under the small-file limit.
pub const MAX_CHUNK_RAW: u32 = 16 << 20;

pub fn validate(m: &Manifest) -> Result<(), ManifestError> {
    validate_name("workspace", &m.workspace).map_err(ManifestError::Invalid)?;
    validate_name("layer", &m.layer).map_err(ManifestError::Invalid)?;
    for p in &m.parents {
        validate_name("parent layer", p).map_err(ManifestError::Invalid)?;
    }
    if m.root.mode & !0o7777 != 0 || m.root.mtime_nsec >= 1_000_000_000 {
        return Err(ManifestError::Invalid(format!(
            "root directory metadata out of range (mode {:o}, nsec {})",
            m.root.mode, m.root.mtime_nsec
        )));
    }
    for (i, c) in m.chunks.iter().enumerate() {
        if c.raw_len > MAX_CHUNK_RAW {
            return Err(ManifestError::Invalid(format!(
                "chunk {i} claims {} raw bytes, more than the limit of {MAX_CHUNK_RAW}",
                c.raw_len
            )));
        }
        if c.stored_len == 0 {
            return Err(ManifestError::Invalid(format!(
                "chunk {i} has a stored length of 0"
            )));
        }
    }
    if !m.frames.is_empty() && m.frames.len() != m.chunks.len() {
        return Err(ManifestError::Invalid(format!(
            "{} frame tables for {} chunks",
            m.frames.len(),
            m.chunks.len()
        )));
    }
    for (i, (c, f)) in m.chunks.iter().zip(&m.frames).enumerate() {
        crate::frames::check(c, f)
            .map_err(|why| ManifestError::Invalid(format!("chunk {i}: {why}")))?;
    }

    let mut kinds: HashMap<&[u8], EntryKind> = HashMap::with_capacity(m.entries.len());
    let mut prev: Option<&[u8]> = None;
    for (i, e) in m.entries.iter().enumerate() {
        let bad = |why: String| {
            ManifestError::Invalid(format!("entry {i} ({:?}): {why}", e.path_lossy()))
        };
        check_path(&e.path).map_err(bad)?;
        if let Some(p) = prev {
            if p == e.path.as_slice() {
                return Err(bad("duplicate path".into()));
            }
            if p > e.path.as_slice() {
                return Err(bad("entries are not sorted by path".into()));
            }
        }
        prev = Some(&e.path);
        if let Some(slash) = e.path.iter().rposition(|&b| b == b'/') {
            let parent = &e.path[..slash];
            match kinds.get(parent) {
                Some(EntryKind::Dir) => {}
                Some(_) => return Err(bad("its parent is not a directory".into())),
                None => return Err(bad("its parent directory is not in the manifest".into())),
            }
        }
        if e.mode & !0o7777 != 0 {
            return Err(bad(format!("mode {:o} has bits outside 0o7777", e.mode)));
        }
        if e.mtime_nsec >= 1_000_000_000 {
            return Err(bad(format!(
                "mtime nanoseconds {} out of range",
                e.mtime_nsec
            )));
        }
        match e.kind {
            EntryKind::Dir => {
                if e.size != 0 || !e.extents.is_empty() || !e.target.is_empty() {
                    return Err(bad("a directory has a size, extents or a target".into()));
                }
            }
            EntryKind::Symlink => {
                if e.target.is_empty() || e.target.contains(&0) {
                    return Err(bad("symlink target is empty or contains NUL".into()));
                }
                if e.size != e.target.len() as u64 || !e.extents.is_empty() {
                    return Err(bad("symlink size differs from its target length".into()));
                }
            }
            EntryKind::File => {
                if !e.target.is_empty() {
                    return Err(bad("a regular file has a symlink target".into()));
                }
                let mut total: u64 = 0;
                for (j, x) in e.extents.iter().enumerate() {
                    let Some(c) = m.chunks.get(x.chunk as usize) else {
                        return Err(bad(format!(
                            "extent {j} names chunk {} but the table has {} chunks",
                            x.chunk,
                            m.chunks.len()
                        )));
                    };
                    if x.len == 0 || u64::from(x.offset) + u64::from(x.len) > u64::from(c.raw_len) {
                        return Err(bad(format!(
                            "extent {j} ({}+{}) lies outside chunk {} of {} bytes",
                            x.offset, x.len, x.chunk, c.raw_len
                        )));
                    }
                    total += u64::from(x.len);
                }
                if total != e.size {
                    return Err(bad(format!(
                        "extent lengths add up to {total}, but the size is {}",
                        e.size
                    )));
                }
            }
        }
        kinds.insert(&e.path, e.kind);
    }
    Ok(())
}

/// A manifest path: relative, `/`-separated, no empty, `.` or `..` components, no NUL.
pub fn check_path(p: &[u8]) -> Result<(), String> {
    if p.is_empty() {
        return Err("empty path".into());
    }
    if p[0] == b'/' {
        return Err("absolute path".into());
    }
    if p.contains(&0) {
        return Err("path contains NUL".into());
    }
    for comp in p.split(|&b| b == b'/') {
        match comp {
            b"" => return Err("empty path component".into()),
            b"." => return Err("'.' component".into()),
            b".." => return Err("'..' component".into()),
            _ if comp.len() > 255 => return Err("a component is longer than 255 bytes".into()),
            _ => {}
        }
    }
    Ok(())
}
