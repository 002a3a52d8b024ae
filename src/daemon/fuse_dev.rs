//! The FUSE connection of a mount, one level below fuser: making it (`mount(2)` as root,
//! fusermount3 otherwise), keeping the kernel's INIT request, and starting a fuser session on
//! a connection that already exists.
//!
//! Why wsfs does this itself: the connection must outlive any one daemon (takeover, see
//! `keeper.rs`). A `/dev/fuse` descriptor held by the keeper keeps the connection — and so the
//! mount — alive while a replacement daemon starts. fuser's `Session::from_fd` wants to perform
//! the INIT handshake on the descriptor it is given, but a connection's INIT is sent once, at
//! mount time. So every daemon, the first and each replacement, starts its session the same
//! way ([`start_session`]):
//!
//! 1. a `SOCK_SEQPACKET` socketpair; the saved INIT request is written into one end;
//! 2. fuser's `Session::from_fd` gets the other end, reads that INIT and answers it there; the
//!    first daemon forwards the answer to the kernel, a replacement drops it (the kernel has
//!    its answer already, and the same binary computes the same one);
//! 3. `dup2` puts the `/dev/fuse` connection under the descriptor number fuser holds;
//! 4. `run` then serves the real connection (its cloned descriptors are made at `run`, after
//!    the `dup2`, so they clone the real connection too).
//!
//! A replacement then asks the kernel to resend the requests the dead daemon had read but not
//! answered ([`notify_resend`], `FUSE_NOTIFY_RESEND`, Linux ≥ 6.9).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Size of `struct fuse_in_header`.
const IN_HEADER: usize = 40;
/// `FUSE_INIT` opcode.
const OP_INIT: u32 = 26;
/// `FUSE_INIT_EXT` in `fuse_init_in.flags`: `flags2` is valid.
const INIT_EXT: u32 = 1 << 30;
/// `FUSE_HAS_RESEND` (bit 39 of the 64-bit flags, bit 7 of `flags2`): the kernel can resend
/// pending requests (Linux 6.9 and later).
const FLAGS2_HAS_RESEND: u32 = 1 << 7;
/// `FUSE_NOTIFY_RESEND` notification code.
const NOTIFY_RESEND: i32 = 7;
/// A read from `/dev/fuse` needs a buffer of at least `FUSE_MIN_READ_BUFFER` (8 KiB).
const READ_BUF: usize = 64 * 1024;

/// How the mount is made, as the kernel sees it.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// The mount's source (`wsfs:<workspace>`), what mountinfo and `df` show.
    pub fsname: String,
    /// Let users other than the mounting one in (`allow_other`); the kernel then checks file
    /// modes (`default_permissions` is always on). Without it the kernel refuses everyone but
    /// the mounting user, before any request reaches wsfs.
    pub allow_other: bool,
}

impl MountOptions {
    /// The filesystem-specific options common to both mount paths.
    fn fuse_options(&self) -> String {
        let mut o = String::from("default_permissions");
        if self.allow_other {
            o.push_str(",allow_other");
        }
        o
    }
}

/// A mount's connection: the `/dev/fuse` descriptor and the kernel's INIT request.
#[derive(Debug)]
pub struct Connection {
    pub fd: OwnedFd,
    pub init: Vec<u8>,
}

/// Mounts a FUSE filesystem at `mountpoint` and returns the connection's descriptor. The
/// kernel's INIT request is waiting on it ([`read_init`]).
///
/// As root, `/dev/fuse` is opened and `mount(2)` called directly (`fuse.wsfs`, read-only,
/// nosuid, nodev, noatime). Otherwise fusermount3 mounts and passes the descriptor back.
/// Neither path asks for `auto_unmount`: a mount goes away only when someone unmounts it.
pub fn mount(mountpoint: &Path, opts: &MountOptions) -> io::Result<OwnedFd> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        mount_direct(mountpoint, opts)
    } else {
        mount_fusermount3(mountpoint, opts)
    }
}

fn cstring(s: &[u8]) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))
}

fn mount_direct(mountpoint: &Path, opts: &MountOptions) -> io::Result<OwnedFd> {
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open /dev/fuse: {e}")))?;
    let fd = OwnedFd::from(dev);
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let data = format!(
        "fd={},rootmode=40000,user_id={uid},group_id={gid},{}",
        fd.as_raw_fd(),
        opts.fuse_options()
    );
    let src = cstring(opts.fsname.as_bytes())?;
    let tgt = cstring(mountpoint.as_os_str().as_bytes())?;
    let fstype = c"fuse.wsfs";
    let data = cstring(data.as_bytes())?;
    let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOATIME;
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// The unprivileged path: fusermount3 (setuid root) mounts and sends the `/dev/fuse`
/// descriptor back over the socket named by `_FUSE_COMMFD`.
fn mount_fusermount3(mountpoint: &Path, opts: &MountOptions) -> io::Result<OwnedFd> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    use std::os::unix::process::CommandExt;
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    let theirs_raw = theirs.as_raw_fd();
    let options = format!(
        "ro,nosuid,nodev,noatime,fsname={},subtype=wsfs,{}",
        opts.fsname,
        opts.fuse_options()
    );
    let mut cmd = std::process::Command::new("fusermount3");
    cmd.arg("-o")
        .arg(&options)
        .arg("--")
        .arg(mountpoint)
        .env("_FUSE_COMMFD", theirs_raw.to_string())
        .stdin(std::process::Stdio::null());
    // SAFETY: fcntl is async-signal-safe; it only clears FD_CLOEXEC on the socket fusermount3
    // must inherit.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(theirs_raw, libc::F_SETFD, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("not root, and fusermount3 could not be started ({e}); install fuse3 or mount as root"),
        )
    })?;
    drop(theirs);
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "fusermount3 failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    recv_fd(ours.as_fd())?
        .map(|(fd, _)| fd)
        .ok_or_else(|| io::Error::other("fusermount3 did not pass a /dev/fuse descriptor"))
}

/// A connected pair of `SOCK_SEQPACKET` Unix sockets (message boundaries kept), close-on-exec.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(io::Error::from)
}

/// Receives one message and at most one descriptor from a Unix socket. `Ok(None)` at the end
/// of the stream.
pub fn recv_fd(sock: BorrowedFd<'_>) -> io::Result<Option<(OwnedFd, Vec<u8>)>> {
    match recv_msg(sock, 64 * 1024)? {
        None => Ok(None),
        Some((bytes, Some(fd))) => Ok(Some((fd, bytes))),
        Some((_, None)) => Err(io::Error::other("message carried no descriptor")),
    }
}

/// Receives one message (and any descriptor it carries) from a Unix socket; `Ok(None)` at the
/// end of the stream. Descriptors arrive with `FD_CLOEXEC` set.
pub fn recv_msg(
    sock: BorrowedFd<'_>,
    max: usize,
) -> io::Result<Option<(Vec<u8>, Option<OwnedFd>)>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
    let mut buf = vec![0u8; max];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    loop {
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        let r = recvmsg::<UnixAddr>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        );
        let msg = match r {
            Ok(m) => m,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let mut fds: Vec<OwnedFd> = Vec::new();
        for c in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel installed these descriptors in this process for us.
                fds.extend(raw.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
            }
        }
        let n = msg.bytes;
        let truncated = msg.flags.contains(MsgFlags::MSG_TRUNC);
        if n == 0 && fds.is_empty() {
            return Ok(None);
        }
        if truncated {
            return Err(io::Error::other("message larger than expected"));
        }
        buf.truncate(n);
        return Ok(Some((buf, fds.into_iter().next())));
    }
}

/// Sends one message, with a descriptor if given, on a Unix socket.
pub fn send_msg(sock: BorrowedFd<'_>, bytes: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
    let raw = fd.map(|f| [f.as_raw_fd()]);
    let cmsgs: Vec<ControlMessage> = raw
        .as_ref()
        .map(|r| ControlMessage::ScmRights(r))
        .into_iter()
        .collect();
    let iov = [io::IoSlice::new(bytes)];
    loop {
        match sendmsg::<UnixAddr>(sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads the kernel's INIT request from a freshly mounted connection.
pub fn read_init(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; READ_BUF];
    let n = loop {
        // SAFETY: buf is valid for READ_BUF bytes.
        let r = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if r >= 0 {
            break r as usize;
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    };
    buf.truncate(n);
    check_init(&buf)?;
    Ok(buf)
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Checks that `init` is a whole FUSE INIT request.
pub fn check_init(init: &[u8]) -> io::Result<()> {
    let bad = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not a FUSE INIT request: {why}"),
        )
    };
    let len = u32_at(init, 0).ok_or_else(|| bad("shorter than a header"))?;
    if len as usize != init.len() {
        return Err(bad("length field does not match"));
    }
    if u32_at(init, 4) != Some(OP_INIT) {
        return Err(bad("wrong opcode"));
    }
    if init.len() < IN_HEADER + 16 {
        return Err(bad("too short"));
    }
    Ok(())
}

/// Whether the kernel that sent this INIT can resend requests (`FUSE_HAS_RESEND`): the
/// condition for a takeover in which no reader sees an error.
pub fn init_has_resend(init: &[u8]) -> bool {
    let Some(flags) = u32_at(init, IN_HEADER + 12) else {
        return false;
    };
    if flags & INIT_EXT == 0 {
        return false;
    }
    u32_at(init, IN_HEADER + 16).is_some_and(|f2| f2 & FLAGS2_HAS_RESEND != 0)
}

/// Which daemon is starting a session on a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The daemon that made the mount: the kernel waits for its INIT answer.
    First,
    /// A replacement: the kernel has its INIT answer already.
    Replacement,
}

/// Starts a fuser session on the connection `conn` whose INIT request is `init` (see the module
/// documentation). The session is ready to `run`.
pub fn start_session<FS: fuser::Filesystem>(
    fs: FS,
    conn: BorrowedFd<'_>,
    init: &[u8],
    role: Role,
    acl: fuser::SessionACL,
    config: fuser::Config,
) -> io::Result<fuser::Session<FS>> {
    check_init(init)?;
    let (ours, theirs) = seqpacket_pair()?;
    send_msg(ours.as_fd(), init, None)?;
    let slot: RawFd = theirs.as_raw_fd();
    let session = fuser::Session::from_fd(fs, theirs, acl, config)?;
    let (reply, _) = recv_msg(ours.as_fd(), 4096)?.ok_or_else(|| {
        io::Error::other("fuser closed the handshake socket without answering INIT")
    })?;
    // fuse_out_header: len u32, error i32, unique u64.
    let error = reply
        .get(4..8)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    if error != Some(0) {
        return Err(io::Error::other(format!(
            "the filesystem refused INIT (error {error:?})"
        )));
    }
    if role == Role::First {
        write_all(conn, &reply)?;
    }
    // SAFETY: `slot` is the descriptor fuser's session owns (the socketpair end, still open);
    // dup2 atomically makes it refer to the /dev/fuse connection instead. Nothing else uses
    // that number.
    if unsafe { libc::dup2(conn.as_raw_fd(), slot) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // dup2 clears close-on-exec on the new descriptor; nothing the daemon starts may inherit it.
    // SAFETY: slot is a valid descriptor.
    unsafe { libc::fcntl(slot, libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(session)
}

fn write_all(fd: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<()> {
    loop {
        // SAFETY: bytes is valid for its length.
        let r = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
        if r == bytes.len() as isize {
            return Ok(());
        }
        if r >= 0 {
            return Err(io::Error::other("short write to /dev/fuse"));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Asks the kernel to put every request a dead daemon had read but not answered back into the
/// queue, for this daemon to read (`FUSE_NOTIFY_RESEND`). Fails with `EINVAL` on kernels
/// before 6.9.
pub fn notify_resend(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut msg = [0u8; 16];
    msg[0..4].copy_from_slice(&16u32.to_le_bytes());
    msg[4..8].copy_from_slice(&NOTIFY_RESEND.to_le_bytes());
    write_all(fd, &msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init_with(flags: u32, flags2: u32) -> Vec<u8> {
        let mut b = vec![0u8; 104];
        b[0..4].copy_from_slice(&104u32.to_le_bytes());
        b[4..8].copy_from_slice(&OP_INIT.to_le_bytes());
        b[IN_HEADER + 12..IN_HEADER + 16].copy_from_slice(&flags.to_le_bytes());
        b[IN_HEADER + 16..IN_HEADER + 20].copy_from_slice(&flags2.to_le_bytes());
        b
    }

    #[test]
    fn resend_support_is_read_from_flags2_only_with_init_ext() {
        assert!(init_has_resend(&init_with(INIT_EXT, FLAGS2_HAS_RESEND)));
        assert!(!init_has_resend(&init_with(0, FLAGS2_HAS_RESEND)));
        assert!(!init_has_resend(&init_with(INIT_EXT, 0)));
        assert!(!init_has_resend(&[0u8; 10]));
    }

    #[test]
    fn init_is_checked() {
        assert!(check_init(&init_with(0, 0)).is_ok());
        let mut wrong_op = init_with(0, 0);
        wrong_op[4] = 1;
        assert!(check_init(&wrong_op).is_err());
        let mut wrong_len = init_with(0, 0);
        wrong_len.push(0);
        assert!(check_init(&wrong_len).is_err());
        assert!(check_init(b"").is_err());
    }

    #[test]
    fn messages_and_descriptors_cross_a_socketpair() {
        let (a, b) = seqpacket_pair().expect("socketpair");
        let f = std::fs::File::open("/proc/self/stat").expect("open");
        send_msg(a.as_fd(), b"hello", Some(f.as_fd())).expect("send");
        send_msg(a.as_fd(), b"plain", None).expect("send");
        let (bytes, fd) = recv_msg(b.as_fd(), 100).expect("recv").expect("a message");
        assert_eq!(bytes, b"hello");
        assert!(fd.is_some());
        let (bytes, fd) = recv_msg(b.as_fd(), 100).expect("recv").expect("a message");
        assert_eq!(bytes, b"plain");
        assert!(fd.is_none());
        drop(a);
        assert!(
            recv_msg(b.as_fd(), 100).expect("recv").is_none(),
            "end of stream"
        );
    }
}
