//! The end of a daemon's life (step 4 of `serve.rs`): it serves until the FUSE session ends.
//! SIGTERM/SIGINT are stop requests: stop the warm-up and unmount if nothing is open; if the
//! mount is busy, keep serving and say who holds it (a lazy detach would leave the job an empty
//! directory under its feet). Once the session ended: store the profile, release the lease,
//! remove the runtime record.

use crate::error::WsfsError;
use crate::fs::warmup::WARMUP_STOP_WAIT;
use crate::fs::WsFs;
use crate::mount::MountArgs;
use crate::ops::{
    linux::{mountinfo, unmount},
    run_records,
};
use crate::store::Chain;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How long an unmount waits for the profile to be stored.
const PROFILE_SAVE_WAIT: Duration = Duration::from_secs(5);

/// What runs while the daemon serves.
pub(super) struct Serving {
    pub(super) done: std::sync::mpsc::Receiver<std::io::Result<()>>,
    pub(super) metrics: Option<crate::ops::service::metrics_file::FileExporter>,
    /// The mount's lease on its stores (gc keeps what it names), taken in the background so
    /// that a slow store does not delay readiness.
    pub(super) lease: tokio::task::JoinHandle<crate::retention::lease::Held>,
}

/// SIGTERM and SIGINT, caught: each one is a stop request (see [`stop_requested`]).
pub(super) struct StopSignals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    /// Replaces the default action of both signals from here on; a signal that arrives before
    /// [`StopSignals::next`] is first awaited is kept and acted on then.
    pub(super) fn install(rt: &tokio::runtime::Runtime) -> StopSignals {
        use tokio::signal::unix::{signal, SignalKind};
        let _in_rt = rt.enter();
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        if let Err(e) = term.as_ref().and(int.as_ref()) {
            tracing::warn!(error = %e, "cannot catch SIGTERM/SIGINT: they will end this daemon (the keeper replaces it)");
        }
        StopSignals {
            term: term.ok(),
            int: int.ok(),
        }
    }

    /// The next stop signal; never, if they could not be caught.
    async fn next(&mut self) {
        match (self.term.as_mut(), self.int.as_mut()) {
            (Some(t), Some(i)) => {
                tokio::select! { _ = t.recv() => {}, _ = i.recv() => {} }
            }
            (Some(t), None) => {
                t.recv().await;
            }
            (None, Some(i)) => {
                i.recv().await;
            }
            (None, None) => futures::future::pending::<()>().await,
        }
    }
}

/// Step 4: serve until the session ends. SIGTERM/SIGINT: stop the warm-up and unmount if
/// nothing is open; if the mount is busy, keep serving and say who holds it (a lazy detach
/// would leave the job an empty directory under its feet).
#[allow(clippy::too_many_arguments)]
pub(super) fn wait(
    args: &MountArgs,
    rt: &tokio::runtime::Runtime,
    fs: &Arc<WsFs>,
    chain: &Chain,
    mount_id: u64,
    serving: Serving,
    mut stops: StopSignals,
) -> Result<(), WsfsError> {
    let Serving {
        done,
        metrics,
        lease,
    } = serving;
    let mp = args.mountpoint.clone();
    rt.block_on(async {
        let mut ended = tokio::task::spawn_blocking(move || done.recv());
        loop {
            tokio::select! {
                _ = stops.next() => {
                    let fs = fs.clone();
                    let mp = mp.clone();
                    let id = mount_id;
                    let _ = tokio::task::spawn_blocking(move || stop_requested(&fs, &mp, id)).await;
                }
                r = &mut ended => {
                    if let Ok(Ok(Err(e))) = r {
                        tracing::warn!(error = %e, "the FUSE session ended with an error");
                    }
                    break;
                }
            }
        }
    });
    if let Some(x) = metrics {
        x.finish();
    }
    if let Some(name) = &args.profile {
        let providers = chain.providers().to_vec();
        let fs = fs.clone();
        // The timer is made inside the runtime (block_on), where tokio's clock lives.
        let saved = rt.block_on(async move {
            tokio::time::timeout(
                PROFILE_SAVE_WAIT,
                crate::profile::save(&providers, &fs, name),
            )
            .await
        });
        if saved.is_err() {
            tracing::warn!(profile = %name, "storing the profile took too long; given up");
        }
    }
    // Unmounted: nothing is in use any more.
    let _ = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), async {
            if let Ok(held) = lease.await {
                held.release().await;
            }
        })
        .await
    });
    run_records::remove_own_record(&mp, std::process::id() as i32);
    tracing::info!(mountpoint = %mp.display(), "the mount's session ended; daemon exiting");
    Ok(())
}

/// A stop signal: unmount if nothing is open, else keep serving and name the holders.
fn stop_requested(fs: &WsFs, mp: &Path, mount_id: u64) {
    tracing::info!(mountpoint = %mp.display(), "stop requested: unmounting if nothing is open");
    // The warm-up's open directories would make the unmount busy.
    fs.warmup.stop(WARMUP_STOP_WAIT);
    let Ok(mounts) = mountinfo::read_mounts() else {
        tracing::warn!("cannot read the mount table; not unmounting");
        return;
    };
    let Some(entry) = mountinfo::find_by_mountpoint(&mounts, mp).filter(|e| e.mount_id == mount_id)
    else {
        tracing::warn!(mountpoint = %mp.display(), "this daemon's mount is not the one at its mount point (covered or gone); not unmounting");
        return;
    };
    let r = unmount::umount(mp).or_else(|e| {
        if e.raw_os_error() != Some(libc::EPERM) {
            return Err(e);
        }
        // Mounted through fusermount3 by an unprivileged user: it unmounts for us (never
        // lazily: without -z it refuses a busy mount with EBUSY, as umount2 does).
        let out = std::process::Command::new("fusermount3")
            .arg("-u")
            .arg("--")
            .arg(mp)
            .output()?;
        if out.status.success() {
            return Ok(());
        }
        let msg = String::from_utf8_lossy(&out.stderr).to_string();
        Err(if msg.contains("busy") {
            std::io::Error::from_raw_os_error(libc::EBUSY)
        } else {
            std::io::Error::other(format!("fusermount3 -u: {}", msg.trim()))
        })
    });
    match r {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            let mut errs = Vec::new();
            let me = std::process::id() as i32;
            let holders: Vec<String> = crate::ops::linux::holders::find_holders(
                entry,
                true,
                Duration::from_secs(2),
                &mut errs,
            )
            .into_iter()
            .filter(|(p, _)| *p != me)
            .map(|(p, c)| format!("{p} ({c})"))
            .collect();
            tracing::warn!(
                mountpoint = %mp.display(),
                holders = %holders.join(", "),
                "the mount is busy: still serving (a job is using it). Close what holds it and stop again, or remove it with wsfs umount --force"
            );
        }
        Err(e) => {
            tracing::warn!(mountpoint = %mp.display(), error = %e, "unmount failed; still serving")
        }
    }
}
