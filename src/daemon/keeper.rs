//! The keeper: a small process that holds a mount's FUSE connection and keeps a daemon serving
//! it, so that a daemon's death (SIGKILL, OOM kill, panic) never turns the workspace into an
//! empty directory or an error.
//!
//! The keeper starts the daemon (this executable again, in daemon mode, with its end of a
//! handover socket at descriptor 3; see `handover.rs`). The daemon resolves the layers, mounts,
//! and hands the keeper a duplicate of the connection's `/dev/fuse` descriptor, the kernel's
//! INIT request and the manifests it pinned. While the keeper holds that descriptor, the
//! connection survives the daemon: the kernel queues requests instead of failing them. When the
//! daemon dies and the mount is still in the mount table, the keeper starts a replacement with
//! the same descriptor; the replacement rebuilds the same tree from the pinned manifests (inode
//! numbers are a pure function of them), asks the kernel to resend what the dead daemon had
//! read but not answered (`FUSE_NOTIFY_RESEND`), and serves on. Readers only wait.
//!
//! Invariants:
//! * A mount goes away only when someone unmounts it: the keeper never unmounts a mount that
//!   was reported ready. It exits when the mount is gone from the mount table.
//! * When the keeper cannot (or may not) replace a dead daemon — the kernel lacks
//!   `FUSE_NOTIFY_RESEND` (before Linux 6.9), or daemons keep crashing — it closes its
//!   descriptor: the kernel aborts the connection, every waiting and later request fails with
//!   ENOTCONN, and the mount stays, dead and loud, until `wsfs umount`. Never a reader that
//!   waits forever, never an empty directory.
//! * A daemon killed from outside (SIGKILL: the OOM killer, an operator) is replaced at once; a
//!   daemon that crashed by itself (a panic, an abort) is replaced after a growing pause, and
//!   after [`MAX_CRASHES`] crashes in [`CRASH_WINDOW`] the keeper gives up as above — a request
//!   that crashes every daemon would otherwise be resent forever.
//! * SIGTERM/SIGINT/SIGHUP are passed on to the daemon as SIGTERM (it unmounts if nothing is
//!   open, and keeps serving if the mount is busy). Until the mount was reported ready, they
//!   stop the start-up instead, and anything mounted so far is removed.
//! * Signals reach the keeper through a signalfd, and it has a single thread: the daemon is
//!   started with `fork`/`exec`, which is only safe that way.
//!
//! Why this file is long: the keeper is one state machine (start, ready, replace, back off,
//! give up, exit) over one event loop, and its rules hold only together; split across files,
//! a reader would have to hold them all in mind anyway.

use super::fuse_dev::{check_init, init_has_resend};
use super::handover::{Channel, ConnState, Msg, DAEMON_FD};
use crate::error::WsfsError;
use crate::ops::{
    linux::{mountinfo, process},
    run_records,
};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Crashes (a daemon ending by itself while its mount is still there) tolerated within
/// [`CRASH_WINDOW`] before the keeper gives up.
pub const MAX_CRASHES: usize = 5;
pub const CRASH_WINDOW: Duration = Duration::from_secs(300);
/// External kills (SIGKILL) tolerated within [`KILL_WINDOW`]: a daemon the OOM killer takes
/// again and again is not helped by more replacements.
pub const MAX_KILLS: usize = 30;
pub const KILL_WINDOW: Duration = Duration::from_secs(60);
/// How often the keeper looks at its daemon between signals (see `Keeper::check_daemon`).
const DAEMON_CHECK: Duration = Duration::from_millis(50);
/// A replacement that is not serving after this long is killed and counted as a crash.
const REPLACEMENT_START_LIMIT: Duration = Duration::from_secs(30);
/// Pause before the replacement after the n-th recent crash: none for the first, then doubling.
const CRASH_BACKOFF_BASE: Duration = Duration::from_millis(100);
const CRASH_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Environment variable that makes the keeper act as on a kernel without
/// `FUSE_NOTIFY_RESEND` (no takeover: a dead daemon's connection is aborted). For tests and
/// for operators who prefer a loud failure to a transparent restart.
pub const NO_TAKEOVER_ENV: &str = "WSFS_NO_TAKEOVER";

/// What the keeper needs to start daemons.
pub struct KeeperArgs {
    /// The absolute mount point.
    pub mountpoint: PathBuf,
    /// The daemon's arguments (this executable's mount arguments, in daemon mode).
    pub daemon_args: Vec<OsString>,
}

/// How the daemon that just ended ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Death {
    /// SIGKILL from outside (operator, OOM killer): replace at once.
    Killed,
    /// Anything else while its mount is still there: a crash.
    Crashed,
}

fn classify(status: ExitStatus) -> Death {
    if status.signal() == Some(libc::SIGKILL) {
        Death::Killed
    } else {
        Death::Crashed
    }
}

struct Daemon {
    child: Child,
    chan: Option<Channel>,
    started: Instant,
    ready: bool,
    /// A `Failed` message it sent before exiting.
    failed: Option<WsfsError>,
}

struct Keeper {
    args: KeeperArgs,
    sigfd: SignalFd,
    /// The connection, once the first daemon handed it over.
    conn: Option<(OwnedFd, ConnState)>,
    /// Whether the kernel can resend (and the operator allows takeover).
    takeover: bool,
    daemon: Option<Daemon>,
    /// Replaced daemons with a thread still exiting, to be reaped.
    dying: Vec<Child>,
    /// The mount was reported ready to whoever started wsfs.
    ready_reported: bool,
    takeovers: u32,
    crashes: VecDeque<Instant>,
    kills: VecDeque<Instant>,
    /// When a replacement is due (after a death).
    respawn_at: Option<Instant>,
    /// A stop was asked for while no daemon could receive it.
    pending_term: bool,
    /// Mount ids at the mount point before the first daemon started: anything new there after a
    /// failed start is the first daemon's, and is removed.
    before: Vec<u64>,
}

/// Runs the keeper until the mount is gone (exit 0), the first daemon fails (its exit code), or
/// the keeper gives up on a dead connection. `ready` is called once: when the first daemon
/// serves, or with the reason it could not.
pub fn run(
    args: KeeperArgs,
    ready: &mut dyn FnMut(Result<(), &WsfsError>),
) -> Result<(), WsfsError> {
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        mask.add(s);
    }
    mask.thread_block()
        .map_err(|e| WsfsError::Failed(format!("keeper: cannot block signals: {e}")))?;
    let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| WsfsError::Failed(format!("keeper: signalfd: {e}")))?;
    let before = mountinfo::ids_at(&args.mountpoint);
    let mut k = Keeper {
        args,
        sigfd,
        conn: None,
        takeover: false,
        daemon: None,
        dying: Vec::new(),
        ready_reported: false,
        takeovers: 0,
        crashes: VecDeque::new(),
        kills: VecDeque::new(),
        respawn_at: None,
        pending_term: false,
        before,
    };
    let r = k.main_loop(ready);
    k.finish();
    r
}

impl Keeper {
    fn main_loop(
        &mut self,
        ready: &mut dyn FnMut(Result<(), &WsfsError>),
    ) -> Result<(), WsfsError> {
        self.spawn(Msg::Start, None)
            .inspect_err(|e| ready(Err(e)))?;
        loop {
            let wait = self.next_wakeup();
            let (sig_ready, chan_ready) = self.poll(wait)?;
            if chan_ready {
                if let Some(end) = self.read_daemon(ready) {
                    return end;
                }
            }
            if sig_ready {
                if let Some(end) = self.read_signals(ready) {
                    return end;
                }
            }
            // A daemon whose main thread is gone sends no SIGCHLD while a thread of it lingers.
            if let Some(end) = self.check_daemon(ready) {
                return end;
            }
            if let Some(end) = self.timers(ready) {
                return end;
            }
        }
    }

    /// How long the poll may sleep: until a due replacement or a replacement's start limit,
    /// and never longer than [`DAEMON_CHECK`] while a daemon runs.
    fn next_wakeup(&self) -> Option<Duration> {
        let now = Instant::now();
        let mut at: Option<Instant> = self.respawn_at;
        if self.daemon.is_some() || !self.dying.is_empty() {
            let check = now + DAEMON_CHECK;
            at = Some(at.map_or(check, |a| a.min(check)));
        }
        if let Some(d) = &self.daemon {
            if !d.ready && self.ready_reported {
                let limit = d.started + REPLACEMENT_START_LIMIT;
                at = Some(at.map_or(limit, |a| a.min(limit)));
            }
        }
        at.map(|a| a.saturating_duration_since(now))
    }

    fn poll(&self, wait: Option<Duration>) -> Result<(bool, bool), WsfsError> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let timeout = match wait {
            None => PollTimeout::NONE,
            Some(d) => PollTimeout::try_from(d.as_millis().min(60_000) as i32 + 1)
                .unwrap_or(PollTimeout::MAX),
        };
        let chan = self.daemon.as_ref().and_then(|d| d.chan.as_ref());
        let mut fds = vec![PollFd::new(self.sigfd.as_fd(), PollFlags::POLLIN)];
        if let Some(c) = chan {
            fds.push(PollFd::new(c.fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return Ok((false, false)),
            Err(e) => return Err(WsfsError::Failed(format!("keeper: poll: {e}"))),
        }
        let hit = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
        Ok((hit(&fds[0]), fds.get(1).is_some_and(hit)))
    }

    /// Starts a daemon with `first` as its first message (and the connection, for a takeover).
    fn spawn(&mut self, first: Msg, fd: Option<&OwnedFd>) -> Result<(), WsfsError> {
        let (ours, theirs) = super::fuse_dev::seqpacket_pair()
            .map_err(|e| WsfsError::Failed(format!("keeper: socketpair: {e}")))?;
        let theirs_raw = theirs.as_raw_fd();
        // This very binary, even if the file was replaced by an upgrade since: a replacement
        // must answer the kernel exactly as the first daemon did.
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg0("wsfs")
            .args(&self.args.daemon_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        // SAFETY: only async-signal-safe calls (sigprocmask, dup2, fcntl, setpgid) between fork
        // and exec.
        unsafe {
            cmd.pre_exec(move || {
                // The keeper blocks the signals it reads from its signalfd; a blocked mask is
                // inherited through exec, and the daemon must receive SIGTERM.
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                if libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if theirs_raw == DAEMON_FD {
                    if libc::fcntl(DAEMON_FD, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(theirs_raw, DAEMON_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Its own process group: a signal to the keeper's group (a CI step ending, a
                // Ctrl-C) reaches the keeper, which decides what the daemon is told.
                libc::setpgid(0, 0);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| WsfsError::Failed(format!("keeper: cannot start the daemon: {e}")))?;
        drop(theirs);
        let chan = Channel::new(ours);
        let pid = child.id();
        if let Err(e) = chan.send(&first, fd.map(|f| f.as_fd())) {
            tracing::error!(pid, error = %e, "keeper: cannot talk to the new daemon");
        }
        self.daemon = Some(Daemon {
            child,
            chan: Some(chan),
            started: Instant::now(),
            ready: false,
            failed: None,
        });
        Ok(())
    }

    /// Handles one message from the daemon. `Some` ends the keeper.
    fn read_daemon(
        &mut self,
        ready: &mut dyn FnMut(Result<(), &WsfsError>),
    ) -> Option<Result<(), WsfsError>> {
        let d = self.daemon.as_mut()?;
        let chan = d.chan.as_ref()?;
        let msg = match chan.recv() {
            Ok(Some(m)) => m,
            Ok(None) => {
                // The daemon closed its end: it is exiting; SIGCHLD follows.
                d.chan = None;
                return None;
            }
            Err(e) => {
                // A broken socket stays broken: stop listening (the daemon's exit is seen by
                // check_daemon either way).
                tracing::warn!(error = %e, "keeper: the daemon's socket failed; no more messages from it");
                d.chan = None;
                return None;
            }
        };
        let pid = d.child.id();
        match msg {
            (Msg::Mounted { conn }, Some(fd)) => {
                let init = hex::decode(&conn.init).unwrap_or_default();
                if check_init(&init).is_err() {
                    tracing::error!(
                        pid,
                        "keeper: the daemon handed over a malformed INIT; no takeover possible"
                    );
                }
                self.takeover =
                    init_has_resend(&init) && std::env::var_os(NO_TAKEOVER_ENV).is_none();
                if !self.takeover {
                    tracing::warn!(
                        "this kernel cannot resend requests (FUSE_NOTIFY_RESEND needs Linux 6.9+) or takeover is off ({NO_TAKEOVER_ENV}): if the daemon dies, the mount fails with ENOTCONN until wsfs umount"
                    );
                }
                self.conn = Some((fd, conn));
            }
            (Msg::Mounted { .. }, None) => {
                tracing::error!(
                    pid,
                    "keeper: the daemon said it mounted but passed no descriptor"
                );
            }
            (Msg::Ready, _) => {
                d.ready = true;
                if !self.ready_reported {
                    self.ready_reported = true;
                    ready(Ok(()));
                } else {
                    tracing::info!(
                        pid,
                        takeovers = self.takeovers,
                        took_ms = d.started.elapsed().as_millis() as u64,
                        "takeover complete: the replacement daemon serves the mount"
                    );
                }
                if self.pending_term {
                    self.pending_term = false;
                    self.forward_term();
                }
            }
            (Msg::Failed { code, message }, _) => {
                tracing::error!(pid, code, %message, "daemon could not start");
                d.failed = Some(WsfsError::from_code(code, message));
            }
            (other, _) => {
                tracing::warn!(pid, ?other, "keeper: unexpected message from the daemon");
            }
        }
        None
    }

    fn read_signals(
        &mut self,
        ready: &mut dyn FnMut(Result<(), &WsfsError>),
    ) -> Option<Result<(), WsfsError>> {
        loop {
            let sig = match self.sigfd.read_signal() {
                Ok(Some(s)) => s.ssi_signo as i32,
                Ok(None) => return None,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Some(Err(WsfsError::Failed(format!("keeper: signalfd: {e}")))),
            };
            if sig == libc::SIGCHLD {
                self.reap_dying();
                if let Some(end) = self.check_daemon(ready) {
                    return Some(end);
                }
            } else if !self.ready_reported {
                // Stopped during start-up: end it; nothing has been promised yet.
                tracing::info!(signal = sig, "keeper: stopped before the mount was ready");
                if let Some(d) = &mut self.daemon {
                    let _ = d.child.kill();
                    let _ = d.child.wait();
                }
                self.daemon = None;
                self.remove_unready_mount();
                let e = WsfsError::Failed("stopped by a signal before the mount was ready".into());
                ready(Err(&e));
                return Some(Err(e));
            } else {
                tracing::info!(
                    signal = sig,
                    "keeper: stop requested; asking the daemon to unmount"
                );
                self.forward_term();
            }
        }
    }

    fn forward_term(&mut self) {
        match self.daemon.as_ref().filter(|d| d.ready) {
            Some(d) => {
                // Our own child, not reaped yet: its pid is still its own.
                let _ = process::send_signal(d.child.id() as i32, libc::SIGTERM);
            }
            None => self.pending_term = true,
        }
    }

    /// Whether the current daemon has ended — or is ending — and what comes next.
    ///
    /// Ending counts from the moment its main thread is gone, not when the whole process is: a
    /// killed daemon's warm-up or page-cache push may be waiting, uninterruptibly, for an
    /// answer from this very mount (the kernel lets a request that reached the daemon finish),
    /// and only a replacement can give that answer. Waiting for the last thread would wait
    /// forever. Such a process is reaped later ([`Keeper::reap_dying`]).
    fn check_daemon(
        &mut self,
        ready: &mut dyn FnMut(Result<(), &WsfsError>),
    ) -> Option<Result<(), WsfsError>> {
        let d = self.daemon.as_mut()?;
        let pid = d.child.id() as i32;
        let (status, lingering) = match d.child.try_wait() {
            Ok(Some(s)) => (s, false),
            Ok(None) => match process::Stat::read(pid) {
                Some(st) if st.is_dead() => (ExitStatus::from_raw(st.exit_code.unwrap_or(0)), true),
                _ => return None,
            },
            Err(e) => {
                tracing::error!(error = %e, "keeper: cannot wait for the daemon");
                return None;
            }
        };
        // Drain what it said before dying (a `Failed` explains an exit during start-up).
        if let Some(chan) = &d.chan {
            while chan.readable(Duration::ZERO).unwrap_or(false) {
                match chan.recv() {
                    Ok(Some((Msg::Failed { code, message }, _))) => {
                        d.failed = Some(WsfsError::from_code(code, message))
                    }
                    Ok(Some(_)) | Err(_) => {}
                    Ok(None) => break,
                }
            }
        }
        let d = self.daemon.take()?;
        let pid = d.child.id();
        let (ready_before, started, failed) = (d.ready, d.started, d.failed);
        if lingering {
            // Reaped later; whether that calls for a replacement is decided below (after a
            // clean unmount the mount is simply gone, and nothing is wrong).
            self.dying.push(d.child);
        }
        if !self.ready_reported {
            self.remove_unready_mount();
            let e = failed.unwrap_or_else(|| {
                WsfsError::Mount(format!(
                    "the daemon exited ({status}) before the mount was ready; see the daemon log"
                ))
            });
            ready(Err(&e));
            return Some(Err(e));
        }
        let Some((_, conn)) = &self.conn else {
            return Some(Err(WsfsError::Failed(
                "keeper: no connection to keep".into(),
            )));
        };
        if !self.mount_present(conn.mount_id) {
            tracing::info!(pid, %status, "the mount is gone; keeper exiting");
            return Some(Ok(()));
        }
        if lingering {
            tracing::warn!(pid, "the daemon's main thread is gone but a thread of it still waits on the mount; replacing it now");
        }
        if status.success() && !lingering {
            // A daemon exits 0 only when its session ended: the connection was aborted.
            tracing::warn!(pid, "the mount's connection was aborted (not by wsfs umount): it stays, dead, until wsfs umount");
            return Some(Ok(()));
        }
        let death = if ready_before {
            classify(status)
        } else {
            Death::Crashed
        };
        tracing::error!(
            pid,
            %status,
            ?death,
            served_ms = started.elapsed().as_millis() as u64,
            "the daemon died while its mount is in use"
        );
        if !self.takeover {
            return Some(
                self.give_up("takeover is not possible on this kernel or is switched off"),
            );
        }
        let now = Instant::now();
        let (list, window, max) = match death {
            Death::Killed => (&mut self.kills, KILL_WINDOW, MAX_KILLS),
            Death::Crashed => (&mut self.crashes, CRASH_WINDOW, MAX_CRASHES),
        };
        list.push_back(now);
        while list
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            list.pop_front();
        }
        let recent = list.len();
        if recent > max {
            return Some(self.give_up(&format!(
                "{recent} daemons {death:?} within {}s",
                window.as_secs()
            )));
        }
        let delay = match death {
            Death::Killed => Duration::ZERO,
            Death::Crashed => backoff(self.crashes.len()),
        };
        if !delay.is_zero() {
            tracing::warn!(
                delay_ms = delay.as_millis() as u64,
                "pausing before the next daemon"
            );
        }
        self.respawn_at = Some(now + delay);
        None
    }

    /// Reaps daemons that were replaced while a thread of theirs still lingered.
    fn reap_dying(&mut self) {
        self.dying.retain_mut(|c| match c.try_wait() {
            Ok(Some(s)) => {
                tracing::info!(pid = c.id(), status = %s, "a replaced daemon has finished exiting");
                false
            }
            Ok(None) => true,
            Err(_) => false,
        });
    }

    /// A due replacement, or a replacement that takes too long to serve.
    fn timers(
        &mut self,
        _ready: &mut dyn FnMut(Result<(), &WsfsError>),
    ) -> Option<Result<(), WsfsError>> {
        let now = Instant::now();
        if let Some(d) = &mut self.daemon {
            if self.ready_reported
                && !d.ready
                && now.duration_since(d.started) >= REPLACEMENT_START_LIMIT
            {
                tracing::error!(
                    pid = d.child.id(),
                    "the replacement daemon did not start serving in time; killing it"
                );
                let _ = d.child.kill();
                // Its SIGCHLD is reaped as a crash.
            }
        }
        if self.respawn_at.is_some_and(|t| now >= t) && self.daemon.is_none() {
            self.respawn_at = None;
            let Some((fd, conn)) = self.conn.take() else {
                return Some(Err(WsfsError::Failed(
                    "keeper: no connection to hand over".into(),
                )));
            };
            self.takeovers += 1;
            let msg = Msg::Takeover {
                conn: conn.clone(),
                takeovers: self.takeovers,
            };
            let r = self.spawn(msg, Some(&fd));
            self.conn = Some((fd, conn));
            match r {
                Ok(()) => tracing::warn!(
                    takeovers = self.takeovers,
                    pid = self.daemon.as_ref().map(|d| d.child.id()),
                    "takeover: a replacement daemon is starting"
                ),
                Err(e) => return Some(self.give_up(&e.to_string())),
            }
        }
        None
    }

    fn mount_present(&self, mount_id: u64) -> bool {
        match mountinfo::read_mounts() {
            Ok(m) => m
                .iter()
                .any(|e| e.mount_id == mount_id && e.mount_point == self.args.mountpoint),
            // Unknown: assume it is there; giving up a live mount is the worse mistake.
            Err(_) => true,
        }
    }

    /// Closes the connection (every waiting and later request fails with ENOTCONN) and exits.
    /// The mount stays in the table, dead and loud, until `wsfs umount`.
    fn give_up(&mut self, why: &str) -> Result<(), WsfsError> {
        tracing::error!(
            mountpoint = %self.args.mountpoint.display(),
            reason = why,
            "keeper gives up: aborting the connection; reads fail with ENOTCONN until wsfs umount"
        );
        self.conn = None;
        Err(WsfsError::Failed(format!(
            "the daemon of {} died and could not be replaced: {why}",
            self.args.mountpoint.display()
        )))
    }

    /// After a start-up that never reached ready: remove whatever the first daemon mounted
    /// (the job was never told the mount exists). The connection is closed first, so nothing
    /// can hang on it.
    fn remove_unready_mount(&mut self) {
        let held = self.conn.take().map(|(_, c)| c.mount_id);
        let Ok(mounts) = mountinfo::read_mounts() else {
            return;
        };
        for e in mounts.iter().rev().filter(|e| {
            e.mount_point == self.args.mountpoint
                && crate::ops::force_umount::is_wsfs_mount(e)
                && (Some(e.mount_id) == held || !self.before.contains(&e.mount_id))
        }) {
            let _ = crate::ops::linux::unmount::abort_connection(e);
            let r = crate::ops::linux::unmount::detach(&e.mount_point);
            tracing::info!(mountpoint = %e.mount_point.display(), result = ?r, "removed the mount of a start-up that failed");
        }
    }

    fn finish(&mut self) {
        if let Some(d) = &mut self.daemon {
            // Only reached when the keeper itself fails; the daemon serves on without it.
            tracing::warn!(pid = d.child.id(), "keeper exiting while its daemon runs");
        }
        self.conn = None;
        let _ = std::fs::remove_dir_all(run_records::pins_dir(&self.args.mountpoint));
    }
}

/// Pause before a replacement after `crashes` recent crashes (counting the one just seen).
fn backoff(crashes: usize) -> Duration {
    if crashes <= 1 {
        return Duration::ZERO;
    }
    let exp = (crashes - 2).min(16) as u32;
    (CRASH_BACKOFF_BASE * 2u32.pow(exp)).min(CRASH_BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::ZERO);
        assert_eq!(backoff(2), Duration::from_millis(100));
        assert_eq!(backoff(3), Duration::from_millis(200));
        assert_eq!(backoff(5), Duration::from_millis(800));
        assert_eq!(backoff(40), CRASH_BACKOFF_MAX);
    }

    #[test]
    fn sigkill_is_a_kill_and_anything_else_a_crash() {
        assert_eq!(classify(ExitStatus::from_raw(libc::SIGKILL)), Death::Killed);
        assert_eq!(
            classify(ExitStatus::from_raw(libc::SIGABRT)),
            Death::Crashed
        );
        assert_eq!(classify(ExitStatus::from_raw(101 << 8)), Death::Crashed);
        assert_eq!(classify(ExitStatus::from_raw(0)), Death::Crashed);
    }
}
