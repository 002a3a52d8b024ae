//! What the keeper and its daemon say to each other, over a `SOCK_SEQPACKET` socketpair (one
//! JSON message per packet; the connection's `/dev/fuse` descriptor rides along with
//! `SCM_RIGHTS`). The daemon finds its end at [`DAEMON_FD`].
//!
//! ```text
//! keeper                                   daemon
//!   ── Start ─────────────────────────────▶  resolve layers, mount
//!   ◀──────────────── Mounted{conn} + fd ──  (the keeper now holds the connection)
//!   ◀────────────────────────────── Ready ──  serving
//!            … the daemon dies; the keeper starts a replacement …
//!   ── Takeover{conn, takeovers} + fd ────▶  rebuild the same tree, resend, serve
//!   ◀────────────────────────────── Ready ──
//! ```
//! Either side may send `Failed` instead of going on; a closed socket means the peer is gone.

use super::fuse_dev::{recv_msg, send_msg};
use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// The descriptor number at which a daemon started by a keeper finds its end of the socket.
pub const DAEMON_FD: i32 = 3;

/// Largest message: a connection state with a few hundred layers.
const MAX_MSG: usize = 256 * 1024;

/// A layer pinned to the manifest its mount resolved: a replacement daemon serves exactly these
/// manifests, whatever the refs say by then, so it rebuilds exactly the tree (and the inode
/// numbers) the kernel already holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedLayer {
    pub name: String,
    /// Hex BLAKE3 of the manifest's bytes.
    pub manifest: String,
    /// Who vouched for it when the mount resolved it (a signing key id, `unsigned`, or
    /// `pinned by <layer>`), for status.
    #[serde(default)]
    pub signer: String,
}

/// Everything a replacement needs besides the descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnState {
    /// The kernel's INIT request, hex.
    pub init: String,
    /// The mount's id in mountinfo (with the mount point: how the keeper tells the mount is
    /// still there).
    pub mount_id: u64,
    /// The layers, in the order they were applied.
    pub layers: Vec<PinnedLayer>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "msg")]
pub enum Msg {
    /// keeper → first daemon: resolve the layers and mount.
    Start,
    /// keeper → replacement: serve this connection (the descriptor is attached). `takeovers`
    /// counts this one.
    Takeover { conn: ConnState, takeovers: u32 },
    /// daemon → keeper: the mount exists; here is its connection (descriptor attached).
    Mounted { conn: ConnState },
    /// daemon → keeper: serving.
    Ready,
    /// daemon → keeper: could not start; `code` is the exit code it will exit with.
    Failed { code: i32, message: String },
}

/// One end of the keeper–daemon socket.
#[derive(Debug)]
pub struct Channel {
    sock: OwnedFd,
}

impl Channel {
    pub fn new(sock: OwnedFd) -> Channel {
        Channel { sock }
    }

    /// The daemon's end, inherited at [`DAEMON_FD`].
    ///
    /// # Safety
    /// Only for a process started by a keeper, where [`DAEMON_FD`] is that socket and nothing
    /// else owns it.
    pub unsafe fn inherited() -> io::Result<Channel> {
        use std::os::fd::FromRawFd;
        // SAFETY: fcntl(F_GETFD) only checks that the number is open.
        if unsafe { libc::fcntl(DAEMON_FD, libc::F_GETFD) } < 0 {
            return Err(io::Error::other(format!(
                "descriptor {DAEMON_FD} (the keeper's socket) is not open: the daemon mode is only for wsfs's own keeper"
            )));
        }
        // SAFETY: per the caller's contract.
        let sock = unsafe { OwnedFd::from_raw_fd(DAEMON_FD) };
        // Not for anything the daemon might start.
        // SAFETY: a valid descriptor.
        unsafe { libc::fcntl(DAEMON_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
        Ok(Channel { sock })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    pub fn send(&self, msg: &Msg, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        let bytes = serde_json::to_vec(msg).map_err(io::Error::other)?;
        send_msg(self.sock.as_fd(), &bytes, fd)
    }

    /// The next message, or `None` when the peer closed its end.
    pub fn recv(&self) -> io::Result<Option<(Msg, Option<OwnedFd>)>> {
        let Some((bytes, fd)) = recv_msg(self.sock.as_fd(), MAX_MSG)? else {
            return Ok(None);
        };
        let msg: Msg = serde_json::from_slice(&bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad handover message: {e}"),
            )
        })?;
        Ok(Some((msg, fd)))
    }

    /// Waits up to `timeout` for the socket to be readable (a message or the peer's end).
    pub fn readable(&self, timeout: std::time::Duration) -> io::Result<bool> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        let mut fds = [PollFd::new(self.sock.as_fd(), PollFlags::POLLIN)];
        loop {
            match poll(
                &mut fds,
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
            ) {
                Ok(n) => return Ok(n > 0),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_with_a_descriptor() {
        let (a, b) = crate::daemon::fuse_dev::seqpacket_pair().expect("socketpair");
        let (a, b) = (Channel::new(a), Channel::new(b));
        let conn = ConnState {
            init: "00ff".into(),
            mount_id: 42,
            layers: vec![PinnedLayer {
                name: "build".into(),
                manifest: "ab".repeat(32),
                signer: "unsigned".into(),
            }],
        };
        let f = std::fs::File::open("/proc/self/stat").expect("open");
        a.send(&Msg::Mounted { conn: conn.clone() }, Some(f.as_fd()))
            .expect("send");
        a.send(&Msg::Ready, None).expect("send");
        assert!(b.readable(std::time::Duration::from_secs(1)).expect("poll"));
        let (m, fd) = b.recv().expect("recv").expect("message");
        assert_eq!(m, Msg::Mounted { conn });
        assert!(fd.is_some());
        assert_eq!(b.recv().expect("recv").expect("message").0, Msg::Ready);
        drop(a);
        assert!(b.recv().expect("recv").is_none());
    }
}
