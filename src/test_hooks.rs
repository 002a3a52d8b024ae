//! Points where a test can hold a command still, to run something against it in flight (a gc
//! against a persist, a mount against a gc). Inert unless `WSFS_TEST_PAUSE` is set.

/// With `WSFS_TEST_PAUSE=POINT:FILE` set, a command reaching `POINT` creates `FILE.paused` and
/// waits while `FILE` exists. Points: persist `before-commit` (every chunk uploaded, no manifest
/// or ref written yet) and `before-readback` (the ref written, not yet read back); gc
/// `gc-before-ref-delete` (what expires is decided, no ref deleted yet); the mount daemon
/// `daemon-after-ready` (readiness reported, not yet waiting for stop signals).
pub async fn pause(point: &str) {
    let Some(spec) = std::env::var_os("WSFS_TEST_PAUSE") else {
        return;
    };
    let spec = spec.to_string_lossy().to_string();
    let Some((at, file)) = spec.split_once(':') else {
        return;
    };
    if at != point {
        return;
    }
    let f = std::path::PathBuf::from(file);
    let _ = std::fs::write(format!("{file}.paused"), b"");
    while f.exists() {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
