//! `--metrics-file PATH`: the Prometheus text rewritten atomically (a temp file in the same
//! directory, then a rename) every [`FILE_INTERVAL`] and once at exit, for node_exporter's
//! textfile collector, which reads only `*.prom` files and ignores hidden ones.

use super::control::StatusSource;
use super::metrics::render_source;
use crate::error::WsfsError;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// How often `--metrics-file` is rewritten.
pub const FILE_INTERVAL: Duration = Duration::from_secs(2);

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "metrics".into());
    // Hidden and not ending in .prom: node_exporter's textfile collector ignores it.
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Replaces `path` atomically with `body`: a temp file in the same directory, then rename.
pub fn write_atomic(path: &Path, body: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = temp_path(path);
    let r = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(body.as_bytes())?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// Checks `--metrics-file` before mounting: its directory exists and is writable, and the path is
/// not a directory. Returns the absolute path.
pub fn check_file(path: &Path) -> Result<PathBuf, WsfsError> {
    let bad = |why: String| WsfsError::Usage(format!("--metrics-file {}: {why}", path.display()));
    let abs = std::path::absolute(path).map_err(|e| bad(e.to_string()))?;
    if abs.file_name().is_none() || abs.is_dir() {
        return Err(bad(
            "is a directory; give a file path (e.g. …/wsfs.prom)".into()
        ));
    }
    // node_exporter's textfile collector reads only *.prom files.
    if abs.extension().is_none_or(|e| e != "prom") {
        return Err(bad(
            "the name must end in .prom (node_exporter's textfile collector reads only those)"
                .into(),
        ));
    }
    let tmp = temp_path(&abs);
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| bad(format!("cannot write in its directory: {e}")))?;
    let _ = std::fs::remove_file(&tmp);
    Ok(abs)
}

/// The `--metrics-file` writer thread. [`FileExporter::finish`] (or drop) writes the last file,
/// with `wsfs_up 0`, and stops the thread.
pub struct FileExporter {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FileExporter {
    /// Writes the file now (before returning, so it exists once the mount is reported ready),
    /// then every `every` until finished.
    pub fn start(
        path: PathBuf,
        source: Arc<StatusSource>,
        every: Duration,
    ) -> std::io::Result<FileExporter> {
        let mut last_error: Option<String> = None;
        let mut write = move |up: bool| match write_atomic(&path, &render_source(&source, up)) {
            Ok(()) => last_error = None,
            Err(e) => {
                let e = e.to_string();
                // Logged once per distinct error, not every interval.
                if last_error.as_deref() != Some(e.as_str()) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot write the metrics file");
                }
                last_error = Some(e);
            }
        };
        write(true);
        let (tx, rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("wsfs-metrics-file".into())
            .spawn(move || loop {
                match rx.recv_timeout(every) {
                    Err(mpsc::RecvTimeoutError::Timeout) => write(true),
                    _ => {
                        write(false);
                        break;
                    }
                }
            })?;
        Ok(FileExporter {
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    /// Writes the final file and waits for the thread.
    pub fn finish(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for FileExporter {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_the_file_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("wsfs.prom");
        write_atomic(&p, "a 1\n").unwrap();
        write_atomic(&p, "a 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a 2\n");
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert_eq!(check_file(&p).unwrap(), p);
        assert!(matches!(check_file(d.path()), Err(WsfsError::Usage(_))));
        assert!(matches!(
            check_file(&d.path().join("no/such/dir/x.prom")),
            Err(WsfsError::Usage(_))
        ));
    }
}
