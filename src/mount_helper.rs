//! `mount -t fuse.wsfs` and fstab: mount(8) runs `/sbin/mount.fuse.wsfs SOURCE DIR -o OPTIONS`
//! (this executable, installed under that name). The helper turns that call into the equivalent
//! `wsfs mount …` command line, which then runs exactly as typed by hand: same checks, same
//! readiness (mount(8) returns only when the tree can be read), same exit codes.
//!
//! ```text
//! mount -t fuse.wsfs WORKSPACE /job/ws -o store=s3://bucket/ci,layer=build,allow_other
//! # fstab:
//! ci  /job/ws  fuse.wsfs  noauto,_netdev,config=/etc/wsfs/ci.toml,layer=build  0 0
//! ```
//!
//! Options are `key=value` or bare flags, comma-separated; repeat `store=` and `layer=` for
//! several. A store URL that contains a comma cannot be given here: put it in `config=FILE`.
//! Options mount(8) and fstab add for every filesystem (`defaults`, `noauto`, `_netdev`, `rw`,
//! …) are accepted and have no effect (wsfs mounts are always read-only, nosuid, nodev).

use crate::error::WsfsError;
use std::ffi::OsString;
use std::path::Path;

/// The names this executable answers to as a mount helper.
pub const HELPER_NAMES: [&str; 2] = ["mount.fuse.wsfs", "mount.wsfs"];

/// True when the process was started under a helper name (argv[0], any directory).
pub fn invoked_as_helper(argv0: &std::ffi::OsStr) -> bool {
    Path::new(argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| HELPER_NAMES.contains(&n))
}

/// `key=value` options that become `--key value` of `wsfs mount` (underscores become dashes).
const VALUE_OPTIONS: [&str; 16] = [
    "store",
    "config",
    "workspace",
    "layer",
    "cache_dir",
    "cache_size",
    "memory_cache",
    "uid",
    "gid",
    "prefetch",
    "read_deadline",
    "request_timeout",
    "connect_timeout",
    "trust_key",
    "metrics_file",
    "metrics_addr",
];

/// Bare options that become `--flag`.
const FLAG_OPTIONS: [&str; 2] = ["allow_other", "repair"];

/// Options every filesystem gets from mount(8) or fstab; they change nothing for wsfs.
const GENERIC_OPTIONS: [&str; 20] = [
    "defaults", "auto", "noauto", "user", "nouser", "users", "owner", "group", "_netdev", "nofail",
    "rw", "ro", "suid", "nosuid", "dev", "nodev", "exec", "noexec", "atime", "noatime",
];

/// The `wsfs mount` argv (program name first) for a helper call
/// `mount.fuse.wsfs SOURCE DIR [-o OPTS] [-s] [-n] [-v] [-f]`.
pub fn translate(argv: &[OsString]) -> Result<Vec<OsString>, WsfsError> {
    let usage = |why: String| {
        WsfsError::Usage(format!(
            "{why}\nusage: mount -t fuse.wsfs WORKSPACE DIR -o store=URL,layer=NAME[,layer=…][,config=FILE][,cache_dir=DIR][,allow_other]… (see docs/operations.md, \"mount -t fuse.wsfs and fstab\")"
        ))
    };
    let mut positional: Vec<&OsString> = Vec::new();
    let mut options: Vec<String> = Vec::new();
    let mut sloppy = false;
    let mut fake = false;
    let mut it = argv.iter().skip(1);
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("-o") => {
                let o = it
                    .next()
                    .ok_or_else(|| usage("-o needs a list of options".into()))?;
                let o = o
                    .to_str()
                    .ok_or_else(|| usage("the mount options are not valid UTF-8".into()))?;
                options.push(o.to_string());
            }
            Some(s) if s.starts_with("-o") => options.push(s[2..].to_string()),
            Some("-s") => sloppy = true,
            Some("-f") => fake = true,
            // No mtab to skip (-n), verbosity (-v): nothing to do.
            Some("-n") | Some("-v") => {}
            Some("-t") => {
                it.next();
            }
            Some(s) if s.starts_with('-') && s.len() > 1 => {
                return Err(usage(format!("unknown helper flag {s}")))
            }
            _ => positional.push(a),
        }
    }
    let [source, dir] = positional[..] else {
        return Err(usage(format!(
            "expected a source (the workspace) and a mount point, got {} argument(s)",
            positional.len()
        )));
    };
    let mut out: Vec<OsString> = vec!["wsfs".into(), "mount".into()];
    let mut workspace_given = false;
    for opt in options.iter().flat_map(|o| o.split(',')) {
        let opt = opt.trim();
        if opt.is_empty() {
            continue;
        }
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        if GENERIC_OPTIONS.contains(&key)
            || key.starts_with("x-")
            || key == "comment"
            || key == "fsname"
            || key == "subtype"
        {
            continue;
        }
        match value {
            Some(v) if VALUE_OPTIONS.contains(&key) => {
                if v.is_empty() {
                    return Err(usage(format!("mount option {key}= needs a value")));
                }
                workspace_given |= key == "workspace";
                out.push(format!("--{}", key.replace('_', "-")).into());
                out.push(v.into());
            }
            None if FLAG_OPTIONS.contains(&key) => {
                out.push(format!("--{}", key.replace('_', "-")).into());
            }
            None if VALUE_OPTIONS.contains(&key) => {
                return Err(usage(format!("mount option {key} needs a value: {key}=…")))
            }
            Some(_) if FLAG_OPTIONS.contains(&key) => {
                return Err(usage(format!("mount option {key} takes no value")))
            }
            _ if sloppy => {}
            _ => {
                return Err(usage(format!(
                    "unknown mount option {opt:?} (known: {}, {})",
                    VALUE_OPTIONS.join("=, ") + "=",
                    FLAG_OPTIONS.join(", ")
                )))
            }
        }
    }
    // SOURCE names the workspace unless an option does; a placeholder source ("wsfs", "none")
    // leaves it to the options or the config file.
    let placeholder = matches!(source.to_str(), Some("wsfs" | "none" | "-" | ""));
    if !workspace_given && !placeholder {
        out.push("--workspace".into());
        out.push(source.clone());
    }
    out.push(dir.clone());
    if fake {
        // mount -f: pretend. Check everything, mount nothing.
        out.push("--check-only".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(args: &[&str]) -> Result<Vec<String>, String> {
        let argv: Vec<OsString> = args.iter().map(OsString::from).collect();
        translate(&argv)
            .map(|v| {
                v.into_iter()
                    .map(|s| s.to_string_lossy().into_owned())
                    .collect()
            })
            .map_err(|e| e.to_string())
    }

    #[test]
    fn options_become_mount_flags_and_the_source_the_workspace() {
        let a = t(&[
            "/sbin/mount.fuse.wsfs",
            "ci-123",
            "/job/ws",
            "-o",
            "rw,noauto,_netdev,store=s3://b/p,store=gs://c/q,layer=build,layer=test,cache_dir=/var/cache/wsfs,allow_other,x-systemd.automount",
        ])
        .unwrap();
        assert_eq!(
            a,
            [
                "wsfs",
                "mount",
                "--store",
                "s3://b/p",
                "--store",
                "gs://c/q",
                "--layer",
                "build",
                "--layer",
                "test",
                "--cache-dir",
                "/var/cache/wsfs",
                "--allow-other",
                "--workspace",
                "ci-123",
                "/job/ws"
            ]
        );
    }

    #[test]
    fn a_placeholder_source_leaves_the_workspace_to_the_config() {
        let a = t(&[
            "mount.wsfs",
            "wsfs",
            "/m",
            "-oconfig=/etc/wsfs/ci.toml",
            "-n",
        ])
        .unwrap();
        assert_eq!(a, ["wsfs", "mount", "--config", "/etc/wsfs/ci.toml", "/m"]);
        let a = t(&["mount.wsfs", "src", "/m", "-o", "workspace=w,layer=l"]).unwrap();
        assert_eq!(
            a,
            ["wsfs", "mount", "--workspace", "w", "--layer", "l", "/m"]
        );
    }

    #[test]
    fn bad_helper_calls_say_what_was_wrong() {
        let e = t(&["mount.fuse.wsfs", "ws", "/m", "-o", "bogus=1"]).unwrap_err();
        assert!(e.contains("unknown mount option \"bogus=1\""), "{e}");
        assert!(e.contains("usage: mount -t fuse.wsfs"), "{e}");
        // Sloppy (-s) ignores what it does not know.
        assert!(t(&["mount.fuse.wsfs", "ws", "/m", "-s", "-o", "bogus=1"]).is_ok());
        let e = t(&["mount.fuse.wsfs", "ws"]).unwrap_err();
        assert!(e.contains("got 1 argument"), "{e}");
        let e = t(&["mount.fuse.wsfs", "ws", "/m", "-o", "store"]).unwrap_err();
        assert!(e.contains("store needs a value"), "{e}");
        let e = t(&["mount.fuse.wsfs", "ws", "/m", "-o", "allow_other=yes"]).unwrap_err();
        assert!(e.contains("takes no value"), "{e}");
        let e = t(&["mount.fuse.wsfs", "ws", "/m", "-o", "layer="]).unwrap_err();
        assert!(e.contains("needs a value"), "{e}");
    }

    #[test]
    fn helper_names_are_recognised_in_any_directory() {
        assert!(invoked_as_helper("/usr/sbin/mount.fuse.wsfs".as_ref()));
        assert!(invoked_as_helper("mount.wsfs".as_ref()));
        assert!(!invoked_as_helper("/usr/local/bin/wsfs".as_ref()));
    }
}
