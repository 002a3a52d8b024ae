//! systemd's readiness protocol (`Type=notify`): one datagram to the socket named by
//! `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace). Only the process systemd
//! started (the keeper of `wsfs mount --foreground`) speaks it; without the variable every call
//! does nothing, so the same binary runs the same way outside systemd.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (newline-separated `KEY=VALUE` lines such as `READY=1`) to systemd, if it
/// asked for it. Errors are logged, never fatal: a unit without `Type=notify` still mounts.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&path, state) {
        tracing::warn!(socket = ?path, error = %e, "cannot notify systemd");
    }
}

fn send(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let sock = UnixDatagram::unbound()?;
    // Never wait on systemd: a full queue is an error (logged), not a stall of the keeper.
    sock.set_nonblocking(true)?;
    let bytes = path.as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), std::path::Path::new(path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_one_datagram_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("notify");
        let listener = UnixDatagram::bind(&p).unwrap();
        send(p.as_os_str(), "READY=1\nSTATUS=mounted").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=mounted");
    }
}
