//! `wsfs status [MOUNTPOINT|ATTACHED_DIR] [--json]`: every wsfs mount in the mount table (live,
//! dead or hung), every run record of this run directory and every attach, each with what the
//! kernel says of its connection and, where the daemon answers, its counters (asked over its
//! control socket, `service/control.rs`).

use super::service::control::{query, MountStatus};
use crate::fs::warmup::WarmupState;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

/// An attach as `wsfs status` shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AttachStatus {
    /// The attached directory (the overlay's mount point).
    pub at: String,
    /// The wsfs mount under it.
    pub workspace_mount: String,
    /// Where the attach's writes go.
    pub upper: Option<String>,
    /// The workspace mount's connection (as in [`MountStatus::connection`]).
    pub connection: String,
}

/// `wsfs status`: every wsfs mount in the mount table (live, dead or hung) and every runtime
/// record of this run directory, every attach, with what the kernel says of each connection.
/// `MOUNTPOINT` may be a wsfs mount or an attached directory (then both layers are shown).
pub fn print(mountpoint: Option<&Path>, json: bool) -> Result<(), crate::error::WsfsError> {
    use super::{
        force_umount::is_wsfs_mount,
        linux::{mountinfo, overlay, probe},
        run_records,
    };
    use std::path::PathBuf;
    let want = match mountpoint {
        Some(p) => Some(
            mountinfo::absolute_lexical(p)
                .map(|(a, _)| a)
                .ok_or_else(|| {
                    crate::error::WsfsError::Usage(format!("{}: bad path", p.display()))
                })?,
        ),
        None => None,
    };
    let entries = mountinfo::read_mounts().unwrap_or_default();
    let mut attaches = overlay::attachments(&entries);
    let mut points: Vec<PathBuf> = entries
        .iter()
        .filter(|e| is_wsfs_mount(e))
        .map(|e| e.mount_point.clone())
        .collect();
    for r in run_records::all_records() {
        points.push(r.mountpoint);
    }
    points.sort();
    points.dedup();
    if let Some(w) = &want {
        if let Some(a) = attaches.iter().find(|a| a.at() == w.as_path()).cloned() {
            points.retain(|p| *p == a.workspace_mount);
            attaches.retain(|x| x.at() == w.as_path());
        } else {
            points.retain(|p| p == w);
            attaches.retain(|x| x.workspace_mount == *w);
            if points.is_empty() {
                return Err(crate::error::WsfsError::Failed(format!(
                    "{} is neither a wsfs mount nor an attached directory (wsfs status lists them all)",
                    w.display()
                )));
            }
        }
    }
    let topmost = |p: &Path| {
        entries
            .iter()
            .rev()
            .find(|e| e.mount_point == p && is_wsfs_mount(e))
    };
    let probed: Vec<&mountinfo::MountEntry> = points.iter().filter_map(|p| topmost(p)).collect();
    let verdicts = probe::probe_all(&probed, &entries, probe::PROBE_WAIT);
    let liveness = |p: &Path| -> probe::Liveness {
        probed
            .iter()
            .position(|e| e.mount_point == p)
            .and_then(|i| verdicts.get(i).cloned())
            .unwrap_or(probe::Liveness::Unknown("not mounted".into()))
    };
    let mut mounts = Vec::new();
    for p in points {
        let entry = topmost(&p);
        let rec = run_records::read_record(&p);
        let live = liveness(&p);
        let mut st = match &rec {
            Some(r) if r.daemon().alive() => query(&r.socket, Duration::from_secs(2))
                .unwrap_or_else(|e| MountStatus {
                    problem: Some(format!("the daemon does not answer: {e}")),
                    pid: r.pid,
                    ..Default::default()
                }),
            Some(r) => MountStatus {
                pid: r.pid,
                ..Default::default()
            },
            None => MountStatus::default(),
        };
        st.mountpoint = p.display().to_string();
        st.connection = live.name().to_string();
        st.attached_at = attaches
            .iter()
            .find(|a| a.workspace_mount == p)
            .map(|a| a.at().display().to_string())
            .or_else(|| {
                rec.as_ref()
                    .and_then(|r| r.attached_at.as_ref())
                    .map(|a| a.display().to_string())
            });
        if let Some(r) = &rec {
            st.workspace = r.workspace.clone();
            if st.layers.is_empty() {
                st.layers = r.layers.clone();
            }
            st.started = r.started;
            st.keeper_pid = r.keeper.map(|k| k.pid);
            st.keeper_alive = r.keeper.is_some_and(|k| k.alive());
            st.takeovers = st.takeovers.max(r.takeovers);
        } else if let Some(e) = entry {
            st.workspace = e
                .source
                .strip_prefix("wsfs:")
                .unwrap_or(&e.source)
                .to_string();
        }
        let daemon_alive = rec.as_ref().is_some_and(|r| r.daemon().alive());
        let problem = match (&live, entry) {
            (_, None) if st.alive => {
                Some("not in the mount table (daemon starting or exiting?)".to_string())
            }
            (_, None) => Some(
                "daemon and mount are gone; wsfs umount --all-stale clears this record".into(),
            ),
            (probe::Liveness::Dead, _) => Some(
                "dead: no daemon holds the connection, reads fail with ENOTCONN; remove it with wsfs umount (or --all-stale)"
                    .into(),
            ),
            (probe::Liveness::Unresponsive, _) if !daemon_alive && st.keeper_alive => Some(
                "the daemon died; the keeper is starting a replacement (reads wait meanwhile)".into(),
            ),
            (probe::Liveness::Unresponsive, _) => Some(
                "does not answer within 2 s (daemon stopped or hung?); if it stays so: wsfs umount --force"
                    .into(),
            ),
            _ if rec.is_none() => Some(format!(
                "no runtime record in {} (mounted with another WSFS_RUN_DIR or by another user): counters unavailable",
                run_records::records_dir().display()
            )),
            _ if !daemon_alive && st.keeper_alive => {
                Some("the daemon died; the keeper is starting a replacement".into())
            }
            _ => None,
        };
        if problem.is_some() {
            st.problem = problem;
        }
        st.fuse_waiting =
            entry.and_then(|e| super::linux::fusectl::waiting(e.connection_id()).ok());
        mounts.push(st);
    }
    let attach_list: Vec<AttachStatus> = attaches
        .iter()
        .map(|a| AttachStatus {
            at: a.at().display().to_string(),
            workspace_mount: a.workspace_mount.display().to_string(),
            upper: a.upper.as_ref().map(|u| u.display().to_string()),
            connection: liveness(&a.workspace_mount).name().to_string(),
        })
        .collect();
    if json {
        let doc = serde_json::json!({ "mounts": mounts, "attaches": attach_list });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return Ok(());
    }
    if mounts.is_empty() {
        println!("no wsfs mounts");
    }
    for a in &attach_list {
        println!(
            "{}  attach: overlay over the workspace mount {} (writes to {}) connection={}",
            a.at,
            a.workspace_mount,
            a.upper.as_deref().unwrap_or("?"),
            a.connection
        );
    }
    for m in &mounts {
        print_mount(m);
    }
    Ok(())
}

fn print_mount(m: &MountStatus) {
    println!(
        "{}  workspace={} layers={} pid={} keeper={} takeovers={} connection={} uptime={}s waiting={}{}",
        m.mountpoint,
        m.workspace,
        m.layers.join(","),
        m.pid,
        match m.keeper_pid {
            Some(k) if m.keeper_alive => k.to_string(),
            Some(k) => format!("{k}(gone)"),
            None => "-".into(),
        },
        m.takeovers,
        m.connection,
        m.uptime_secs,
        m.fuse_waiting
            .map(|w| w.to_string())
            .unwrap_or_else(|| "-".into()),
        m.attached_at
            .as_ref()
            .map(|a| format!(" attached_at={a}"))
            .unwrap_or_default()
    );
    if let Some(p) = &m.problem {
        println!("  PROBLEM: {p}");
    }
    if !m.alive {
        return;
    }
    println!(
        "  tree: {} entries, {:.1} MiB, {}",
        m.entries,
        m.tree.bytes as f64 / 1048576.0,
        if m.tree.in_place {
            "served in place from the manifest's index"
        } else {
            "built (a version-1 manifest or several layers)"
        }
    );
    println!(
        "  reads={} bytes_served={} failovers={} eio={} repairs={} cache: memory_hits={} disk_hits={} fetched={}",
        m.reads, m.bytes_served, m.failovers, m.eio, m.repairs, m.cache.memory_hits, m.cache.disk_hits, m.cache.fetched
    );
    if m.passthrough_opens + m.passthrough_fallbacks + m.files_materialized > 0 {
        println!(
            "  passthrough: opens={} fallbacks={} files_materialized={}",
            m.passthrough_opens, m.passthrough_fallbacks, m.files_materialized
        );
    }
    if let Some(p) = &m.profile {
        println!(
            "  profile {}: {} of its {} entries here ({} requests done), recorded {}",
            p.name, p.matched, p.listed, p.replayed, p.recorded
        );
    }
    if m.cache.range_gets + m.cache.frame_misses > 0 {
        println!(
            "  frames: range_gets={} frames_fetched={} frame_reads={} frame_misses={}",
            m.cache.range_gets, m.cache.frames_fetched, m.cache.frame_reads, m.cache.frame_misses
        );
    }
    if m.cache.prefetched > 0 {
        println!(
            "  prefetch: {} of {} chunks ({}%)",
            m.cache.prefetched,
            m.cache.chunks,
            (m.cache.prefetched * 100)
                .checked_div(m.cache.chunks)
                .unwrap_or(100)
                .min(100)
        );
    }
    let w = &m.warmup;
    if w.state != WarmupState::Off {
        println!(
            "  warm-up: {} dirs_listed={} files_stored={} bytes_stored={} failed={} over_budget={}{} neighbours_pushed={}",
            w.state.name(),
            w.dirs_listed,
            w.files_stored,
            w.bytes_stored,
            w.files_failed,
            w.files_over_budget,
            if w.state == WarmupState::Running {
                String::new()
            } else {
                format!(" took={}ms", w.elapsed_ms)
            },
            w.neighbour_files_stored
        );
    }
    for s in &m.stores {
        let reqs: Vec<String> = s
            .requests
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!(
            "  store {} breaker={} served={} bytes={} [{}]",
            s.name,
            s.breaker,
            s.served,
            s.bytes,
            reqs.join(" ")
        );
    }
    for f in &m.failures {
        println!(
            "  EIO {} chunk {}{}: {}",
            f.path,
            f.chunk,
            if f.count > 1 {
                format!(" (x{})", f.count)
            } else {
                String::new()
            },
            f.providers.join("; ")
        );
    }
}
