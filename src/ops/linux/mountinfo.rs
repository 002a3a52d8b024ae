//! Parsing of `/proc/self/mountinfo`.
//!
//! Why this module exists: every tool that inspects a mount point the usual
//! way (`stat`, `mountpoint`, `umount` from util-linux, `Path::canonicalize`)
//! performs a `stat()` or a lookup *through* the mount, and on a FUSE mount
//! whose daemon is stopped or hung that blocks forever. The kernel's
//! mountinfo table, in contrast, is produced without asking the filesystem
//! anything, so it is the only safe way to learn whether a path is mounted,
//! by what, and which device number (and so which fusectl connection) it has.
//!
//! Format (see `proc(5)`), one mount per line:
//!
//! ```text
//! 36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//! (1)(2) (3)   (4)   (5)         (6)       (7)    (8)  (9)    (10)      (11)
//! ```
//!
//! Field 7 is zero or more optional fields terminated by a lone `-`.
//! The kernel escapes space, tab, newline and backslash in paths, the source
//! and the type as `\ooo` octal sequences (`\040`, `\011`, `\012`, `\134`).
//! Path bytes that are not UTF-8 are *not* escaped, so the text is parsed as
//! bytes and paths are kept as raw `OsString`s.

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// Where the kernel publishes the mount table of the calling process's
/// mount namespace.
pub const MOUNTINFO_PATH: &str = "/proc/self/mountinfo";

/// How long [`find_by_mountpoint`] lets a canonicalisation of the parent
/// directory run before giving up on it (it runs on a helper thread, so a
/// hang there cannot hang the caller).
const CANONICALIZE_PARENT_WAIT: Duration = Duration::from_millis(500);

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Unique (per namespace, reusable after unmount) id of the mount. The
    /// same id appears as `mnt_id:` in `/proc/<pid>/fdinfo/<fd>`, which is how
    /// open files are attributed to a mount without touching them.
    pub mount_id: u64,
    /// Id of the parent mount (or of itself for the namespace root).
    pub parent_id: u64,
    /// Major device number of the superblock (0 for FUSE: anonymous device).
    pub major: u32,
    /// Minor device number. For a `fuse` mount this names its fusectl
    /// connection directory `/sys/fs/fuse/connections/<minor>`.
    pub minor: u32,
    /// Root of the mount within the filesystem (unescaped).
    pub root: PathBuf,
    /// Mount point relative to the process root (unescaped).
    pub mount_point: PathBuf,
    /// Per-mount options (`rw,nosuid,nodev,relatime`).
    pub options: String,
    /// Optional fields such as `shared:1` or `master:2`.
    pub optional_fields: Vec<String>,
    /// Filesystem type, e.g. `fuse`, `fuse.wsfs`, `ext4` (unescaped).
    pub fs_type: String,
    /// Mount source, e.g. `wsfs:myws` (unescaped; lossily converted to UTF-8).
    pub source: String,
    /// Per-superblock options, e.g. `rw,user_id=0,group_id=0`.
    pub super_options: String,
}

impl MountEntry {
    /// True for every FUSE flavour the kernel reports: `fuse`, `fuse.<subtype>`,
    /// `fuseblk` and `fuseblk.<subtype>`.
    pub fn is_fuse(&self) -> bool {
        let t = self.fs_type.as_str();
        t == "fuse" || t == "fuseblk" || t.starts_with("fuse.") || t.starts_with("fuseblk.")
    }

    /// The FUSE subtype (`wsfs` for `fuse.wsfs`), if any.
    pub fn fuse_subtype(&self) -> Option<&str> {
        self.fs_type
            .strip_prefix("fuse.")
            .or_else(|| self.fs_type.strip_prefix("fuseblk."))
    }

    /// Name of this mount's fusectl connection directory.
    ///
    /// The kernel names it after the superblock's internal `dev_t`
    /// (`major << 20 | minor`). FUSE mounts use anonymous devices (major 0),
    /// so for them this is simply the minor; `fuseblk` mounts have a real
    /// major and need the full value.
    pub fn connection_id(&self) -> u32 {
        (self.major << 20) | self.minor
    }
}

/// Why a mountinfo text could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The line ended before a mandatory field.
    #[error("mountinfo line {line}: missing field `{field}`")]
    MissingField {
        /// 1-based line number.
        line: usize,
        /// Name of the missing field.
        field: &'static str,
    },
    /// A numeric field was not a number.
    #[error("mountinfo line {line}: invalid `{field}`: {value:?}")]
    InvalidField {
        /// 1-based line number.
        line: usize,
        /// Name of the field.
        field: &'static str,
        /// The offending text.
        value: String,
    },
    /// No lone `-` separated the optional fields from the filesystem type.
    #[error("mountinfo line {line}: no ` - ` separator after the optional fields")]
    MissingSeparator {
        /// 1-based line number.
        line: usize,
    },
}

/// Reads and parses the mount table of the calling process.
///
/// Reading mountinfo never calls into any filesystem, so this is safe even
/// while FUSE daemons are stopped or hung.
pub fn read_mounts() -> io::Result<Vec<MountEntry>> {
    let bytes = std::fs::read(MOUNTINFO_PATH)?;
    parse_bytes(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The ids of every mount at exactly `mp` (stacked mounts included), from the mount table.
pub fn ids_at(mp: &Path) -> Vec<u64> {
    read_mounts()
        .map(|m| {
            m.iter()
                .filter(|e| e.mount_point == mp)
                .map(|e| e.mount_id)
                .collect()
        })
        .unwrap_or_default()
}

/// Parses mountinfo text. Empty lines are ignored; any malformed line is an
/// error (the kernel never produces one, so it signals a wrong input).
pub fn parse(text: &str) -> Result<Vec<MountEntry>, ParseError> {
    parse_bytes(text.as_bytes())
}

/// Like [`parse`], for raw bytes: mountinfo can contain non-UTF-8 path bytes,
/// which the kernel does not escape.
pub fn parse_bytes(bytes: &[u8]) -> Result<Vec<MountEntry>, ParseError> {
    bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
        .map(|(idx, line)| parse_line(line, idx + 1))
        .collect()
}

fn parse_line(line: &[u8], lineno: usize) -> Result<MountEntry, ParseError> {
    // Fields are separated by single spaces; spaces inside values are escaped,
    // so splitting on b' ' is exact. Empty fields (an empty source) survive.
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let field = |i: usize, name: &'static str| -> Result<&[u8], ParseError> {
        fields.get(i).copied().ok_or(ParseError::MissingField {
            line: lineno,
            field: name,
        })
    };

    let mount_id = parse_num::<u64>(field(0, "mount_id")?, lineno, "mount_id")?;
    let parent_id = parse_num::<u64>(field(1, "parent_id")?, lineno, "parent_id")?;
    let dev = field(2, "major:minor")?;
    let (major, minor) = match dev.iter().position(|&b| b == b':') {
        Some(p) => (
            parse_num::<u32>(&dev[..p], lineno, "major")?,
            parse_num::<u32>(&dev[p + 1..], lineno, "minor")?,
        ),
        None => {
            return Err(ParseError::InvalidField {
                line: lineno,
                field: "major:minor",
                value: String::from_utf8_lossy(dev).into_owned(),
            });
        }
    };
    let root = unescape_path(field(3, "root")?);
    let mount_point = unescape_path(field(4, "mount_point")?);
    let options = lossy(field(5, "options")?);

    // Optional fields run until a lone "-". Start at 6 so that an (escaped)
    // path can never be mistaken for the separator.
    let sep = fields
        .iter()
        .skip(6)
        .position(|f| *f == b"-")
        .map(|p| p + 6)
        .ok_or(ParseError::MissingSeparator { line: lineno })?;
    let optional_fields = fields[6..sep].iter().map(|f| lossy(f)).collect();

    let fs_type = lossy(&unescape(field(sep + 1, "fs_type")?));
    let source = lossy(&unescape(field(sep + 2, "source")?));
    // Super options are the rest of the line; they contain no spaces, but be
    // lenient and rejoin in case some filesystem emits one.
    let super_options = if fields.len() > sep + 3 {
        lossy(&unescape(&fields[sep + 3..].join(&b' ')))
    } else {
        return Err(ParseError::MissingField {
            line: lineno,
            field: "super_options",
        });
    };

    Ok(MountEntry {
        mount_id,
        parent_id,
        major,
        minor,
        root,
        mount_point,
        options,
        optional_fields,
        fs_type,
        source,
        super_options,
    })
}

fn parse_num<T: std::str::FromStr>(
    raw: &[u8],
    line: usize,
    field: &'static str,
) -> Result<T, ParseError> {
    std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.parse::<T>().ok())
        .ok_or_else(|| ParseError::InvalidField {
            line,
            field,
            value: String::from_utf8_lossy(raw).into_owned(),
        })
}

fn lossy(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

/// Undoes the kernel's `\ooo` octal escaping. A backslash not followed by
/// three octal digits (which the kernel never emits) is kept literally.
pub fn unescape(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        // An escape needs three more bytes after the backslash.
        if raw[i] == b'\\' && i + 3 < raw.len() {
            let digits = &raw[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = u32::from(digits[0] - b'0') * 64
                    + u32::from(digits[1] - b'0') * 8
                    + u32::from(digits[2] - b'0');
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    out
}

fn unescape_path(raw: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(unescape(raw)))
}

/// Finds the mount whose mount point is `path`; with stacked mounts, the
/// topmost one, which is the one a lookup of `path` reaches and the one
/// `umount2(path)` removes.
///
/// The mount point itself is never stat-ed, opened or canonicalised: on a
/// hung FUSE mount that would block. `path` is made absolute against the
/// current directory and normalised lexically (`.` and repeated `/` dropped).
/// If that exact text is not a mount point, or `path` contains `..` (which
/// cannot be resolved lexically in the presence of symlinks), the *parent*
/// directory is canonicalised on a helper thread with a short deadline and
/// the lookup retried. The parent is not canonicalised if it lies on a FUSE
/// mount, because that lookup could itself hang, possibly uninterruptibly.
pub fn find_by_mountpoint<'a>(entries: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    let (abs, has_dotdot) = absolute_lexical(path)?;
    let lexical = if has_dotdot {
        None
    } else {
        last_at(entries, &abs)
    };
    if lexical.is_some() {
        return lexical;
    }
    let name = abs.file_name()?.to_os_string();
    let parent = abs.parent()?.to_path_buf();
    if on_fuse_mount(entries, &parent) {
        return None;
    }
    let canonical_parent = canonicalize_bounded(parent, CANONICALIZE_PARENT_WAIT)?;
    last_at(entries, &canonical_parent.join(name))
}

/// The topmost mount at `path`: the one no other mount at `path` is stacked
/// on (a stacked mount's parent is the mount it covers). Mount order lists
/// it last in practice; that is the tie-breaker.
fn last_at<'a>(entries: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    let at: Vec<&MountEntry> = entries.iter().filter(|e| e.mount_point == path).collect();
    at.iter()
        .rev()
        .find(|c| {
            !at.iter()
                .any(|o| o.parent_id == c.mount_id && o.mount_id != c.mount_id)
        })
        .or(at.last())
        .copied()
}

/// True if `path` (lexically) is at or below any FUSE mount point other than
/// `/`.
fn on_fuse_mount(entries: &[MountEntry], path: &Path) -> bool {
    entries
        .iter()
        .any(|e| e.is_fuse() && path.starts_with(&e.mount_point))
}

/// Makes `path` absolute (against the current directory, which is only read,
/// not resolved) and removes `.` components and redundant separators. `..` is
/// kept, and reported, because resolving it lexically is wrong after a
/// symlink.
pub fn absolute_lexical(path: &Path) -> Option<(PathBuf, bool)> {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().ok()?.join(path)
    };
    let mut out = PathBuf::new();
    let mut has_dotdot = false;
    for c in joined.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                has_dotdot = true;
                out.push("..");
            }
            other => out.push(other.as_os_str()),
        }
    }
    Some((out, has_dotdot))
}

/// `std::fs::canonicalize` on a helper thread, abandoned after `wait`.
fn canonicalize_bounded(path: PathBuf, wait: Duration) -> Option<PathBuf> {
    match super::bounded::run_bounded("mountinfo-canon", wait, move || std::fs::canonicalize(path))
    {
        super::bounded::Bounded::Done(Ok(p)) => Some(p),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 28 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
28 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw,errors=remount-ro
45 28 0:40 / /home/me/My\\040Drive\\011tab rw,nosuid,nodev,relatime shared:30 master:2 - fuse.wsfs wsfs:my\\040ws rw,user_id=0,group_id=0
46 28 0:41 /sub\\012dir /mnt/new\\012line rw,relatime - fuse wsfs:x rw,user_id=0,group_id=0,default_permissions
47 28 0:42 / /mnt/back\\134slash rw - tmpfs  rw,size=1024k
48 28 0:43 / /mnt/nofields rw - fuseblk.ntfs /dev/sdb1 rw,user_id=0
49 45 0:44 / /home/me/My\\040Drive\\011tab rw - fuse.wsfs wsfs:stacked rw
";

    #[test]
    fn parses_realistic_sample_with_escapes() {
        let entries = parse(SAMPLE).expect("parse");
        assert_eq!(entries.len(), 7);

        let sys = &entries[0];
        assert_eq!(sys.mount_id, 22);
        assert_eq!(sys.parent_id, 28);
        assert_eq!((sys.major, sys.minor), (0, 21));
        assert_eq!(sys.mount_point, Path::new("/sys"));
        assert_eq!(sys.optional_fields, vec!["shared:7"]);
        assert!(!sys.is_fuse());

        let ws = &entries[2];
        assert_eq!(ws.mount_point, Path::new("/home/me/My Drive\ttab"));
        assert_eq!(ws.fs_type, "fuse.wsfs");
        assert_eq!(ws.fuse_subtype(), Some("wsfs"));
        assert_eq!(ws.source, "wsfs:my ws");
        assert_eq!(ws.optional_fields, vec!["shared:30", "master:2"]);
        assert_eq!(ws.super_options, "rw,user_id=0,group_id=0");
        assert_eq!(ws.options, "rw,nosuid,nodev,relatime");
        assert!(ws.is_fuse());
        assert_eq!(ws.connection_id(), 40);

        let nl = &entries[3];
        assert_eq!(nl.root, Path::new("/sub\ndir"));
        assert_eq!(nl.mount_point, Path::new("/mnt/new\nline"));
        assert!(nl.optional_fields.is_empty());
        assert_eq!(nl.fs_type, "fuse");
        assert!(nl.is_fuse());
        assert_eq!(nl.fuse_subtype(), None);

        let bs = &entries[4];
        assert_eq!(bs.mount_point, Path::new("/mnt/back\\slash"));
        assert_eq!(bs.source, "", "empty source must survive as an empty field");
        assert_eq!(bs.super_options, "rw,size=1024k");

        let blk = &entries[5];
        assert!(blk.is_fuse());
        assert_eq!(blk.fuse_subtype(), Some("ntfs"));
    }

    #[test]
    fn non_utf8_path_bytes_are_kept() {
        let mut line = b"50 28 0:45 / /mnt/caf".to_vec();
        line.push(0xe9);
        line.extend_from_slice(b" rw - fuse.wsfs wsfs:a rw\n");
        let entries = parse_bytes(&line).expect("parse");
        let expected = PathBuf::from(OsString::from_vec(b"/mnt/caf\xe9".to_vec()));
        assert_eq!(entries[0].mount_point, expected);
    }

    #[test]
    fn unescape_edge_cases() {
        assert_eq!(unescape(b"a\\040b"), b"a b");
        assert_eq!(unescape(b"\\134"), b"\\");
        assert_eq!(unescape(b"end\\04"), b"end\\04", "truncated escape kept");
        assert_eq!(unescape(b"x\\999"), b"x\\999", "non-octal kept");
        assert_eq!(unescape(b"\\777"), b"\\777", "overflow kept");
        assert_eq!(unescape(b"\\"), b"\\");
    }

    #[test]
    fn malformed_lines_are_errors() {
        assert_eq!(
            parse("x 1 0:1 / / rw - ext4 a rw"),
            Err(ParseError::InvalidField {
                line: 1,
                field: "mount_id",
                value: "x".into()
            })
        );
        assert_eq!(
            parse("\n1 1 0:1 / / rw shared:1 ext4 a rw"),
            Err(ParseError::MissingSeparator { line: 2 })
        );
        assert!(matches!(
            parse("1 1 01 / / rw - ext4 a rw"),
            Err(ParseError::InvalidField { .. })
        ));
        assert!(matches!(
            parse("1 1 0:1 / / rw - ext4 a"),
            Err(ParseError::MissingField {
                field: "super_options",
                ..
            })
        ));
        assert!(matches!(
            parse("1 1 0:1"),
            Err(ParseError::MissingField { field: "root", .. })
        ));
    }

    #[test]
    fn blank_lines_and_empty_input() {
        assert_eq!(parse(""), Ok(vec![]));
        assert_eq!(parse("\n\n").map(|v| v.len()), Ok(0));
    }

    #[test]
    fn find_by_mountpoint_is_lexical_and_picks_topmost() {
        let entries = parse(SAMPLE).expect("parse");
        let e =
            find_by_mountpoint(&entries, Path::new("/home/me/./My Drive\ttab/")).expect("found");
        assert_eq!(e.mount_id, 49, "stacked mount: the last one wins");
        let e = find_by_mountpoint(&entries, Path::new("//mnt//nofields")).expect("found");
        assert_eq!(e.mount_id, 48);
        assert!(find_by_mountpoint(&entries, Path::new("/mnt/nowhere")).is_none());

        // Listing order does not matter: 60 is stacked on 61.
        let swapped = parse(
            "60 61 0:60 / /mnt/s rw - fuse.wsfs top rw\n\
             61 1 0:61 / /mnt/s rw - fuse.wsfs bottom rw\n",
        )
        .expect("parse");
        let e = find_by_mountpoint(&swapped, Path::new("/mnt/s")).expect("found");
        assert_eq!(e.source, "top");
    }

    #[test]
    fn find_by_mountpoint_resolves_parent_symlinks() {
        // A mount point reached through a symlinked parent: only the parent is
        // canonicalised (it exists and is not FUSE), the last component is not.
        let base = std::env::temp_dir().join(format!("mountinfo-test-{}", std::process::id()));
        let real = base.join("real");
        std::fs::create_dir_all(&real).expect("mkdir");
        let link = base.join("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        let real_canon = std::fs::canonicalize(&real).expect("canon");
        let text = format!(
            "90 28 0:99 / {} rw - fuse.wsfs wsfs:t rw\n",
            real_canon.join("mp").display()
        );
        let entries = parse(&text).expect("parse");
        assert!(find_by_mountpoint(&entries, &link.join("mp")).is_some());
        assert!(find_by_mountpoint(&entries, &link.join("../real/mp")).is_some());
        std::fs::remove_dir_all(&base).expect("cleanup");
    }

    #[test]
    fn relative_paths_are_made_absolute() {
        let (abs, dd) = absolute_lexical(Path::new("a/./b")).expect("cwd");
        assert!(abs.is_absolute());
        assert!(abs.ends_with("a/b"));
        assert!(!dd);
        assert!(absolute_lexical(Path::new("/a/../b")).expect("abs").1);
    }

    #[test]
    fn reads_own_mount_table() {
        let entries = read_mounts().expect("read /proc/self/mountinfo");
        assert!(entries.iter().any(|e| e.mount_point == Path::new("/")));
    }
}
