//! Processes, as wsfs needs to know them: is a pid alive (a zombie is not), is it still the
//! process we recorded (pids are reused), what are its children, and signalling exactly one
//! process. Everything reads `/proc/<pid>/stat`; nothing here blocks on a FUSE mount.

use serde::{Deserialize, Serialize};

/// A process as recorded at some moment: its pid and its start time (clock ticks since boot,
/// field 22 of `/proc/<pid>/stat`). Two processes never share both, so a recorded `ProcId`
/// cannot be mistaken for a later process that reused the pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcId {
    pub pid: i32,
    pub start: u64,
}

impl ProcId {
    /// The process `pid` as it is now, if it exists and is not a zombie.
    pub fn of(pid: i32) -> Option<ProcId> {
        let st = Stat::read(pid)?;
        (!st.is_dead()).then_some(ProcId {
            pid,
            start: st.start,
        })
    }

    /// This process.
    pub fn me() -> ProcId {
        let pid = std::process::id() as i32;
        ProcId::of(pid).unwrap_or(ProcId { pid, start: 0 })
    }

    /// Still running (not a zombie) and still the same process. A record without a start time
    /// (`start == 0`, written by an older wsfs) is judged by the pid alone.
    pub fn alive(&self) -> bool {
        match Stat::read(self.pid) {
            Some(st) => !st.is_dead() && (self.start == 0 || st.start == self.start),
            None => false,
        }
    }

    /// Sends `sig` to this process only, if it is still the same process. Refuses pids that
    /// would address a group (`<= 0`) and this process itself.
    pub fn signal(&self, sig: libc::c_int) -> std::io::Result<()> {
        if self.pid <= 0 || self.pid == std::process::id() as i32 {
            return Err(std::io::Error::other(format!(
                "refusing to signal pid {}",
                self.pid
            )));
        }
        if !self.alive() {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
        send_signal(self.pid, sig)
    }

    /// Waits until the process is gone (or a zombie), polling; true if it went in time.
    pub fn wait_gone(&self, timeout: std::time::Duration) -> bool {
        let until = std::time::Instant::now() + timeout;
        while self.alive() {
            if std::time::Instant::now() >= until {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        true
    }
}

/// `kill(pid, sig)` for exactly one process (a `pid <= 0` would address a process group or
/// every process: refused), through nix's typed call. A signal number this platform does not
/// know is `EINVAL`.
pub fn send_signal(pid: i32, sig: libc::c_int) -> std::io::Result<()> {
    if pid <= 0 {
        return Err(std::io::Error::other(format!(
            "refusing to signal pid {pid}"
        )));
    }
    let sig = nix::sys::signal::Signal::try_from(sig).map_err(std::io::Error::from)?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).map_err(std::io::Error::from)
}

/// The fields of `/proc/<pid>/stat` wsfs uses.
#[derive(Clone, Copy, Debug)]
pub struct Stat {
    /// `R`, `S`, `D`, `T`, `t`, `Z`, `X`, …
    pub state: char,
    pub ppid: i32,
    pub start: u64,
    /// The exit status (as `waitpid` reports it) of a thread that has exited: set for a zombie.
    pub exit_code: Option<i32>,
}

impl Stat {
    pub fn read(pid: i32) -> Option<Stat> {
        if pid <= 0 {
            return None;
        }
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Stat::parse(&text)
    }

    /// Parses a stat line. The command name (field 2) may hold spaces and parentheses, so the
    /// fields are counted from the last `)`.
    pub fn parse(text: &str) -> Option<Stat> {
        let rest = text.get(text.rfind(')')? + 1..)?;
        let f: Vec<&str> = rest.split_ascii_whitespace().collect();
        // After the comm: state is field 3, ppid field 4, starttime field 22.
        // exit_code is field 52 (Linux 3.5+).
        Some(Stat {
            state: f.first()?.chars().next()?,
            ppid: f.get(1)?.parse().ok()?,
            start: f.get(19)?.parse().ok()?,
            exit_code: f.get(49).and_then(|x| x.parse().ok()),
        })
    }

    /// A zombie (or a dead task) has released its descriptors and mounts: for wsfs it is gone.
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }

    pub fn is_stopped(&self) -> bool {
        matches!(self.state, 'T' | 't')
    }
}

/// True if `pid` exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    Stat::read(pid).is_some_and(|s| !s.is_dead())
}

/// Living children of `pid` (from `/proc/<pid>/task/*/children`).
pub fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out: Vec<i32> = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_ascii_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .filter(|&p| pid_alive(p))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Now, in Unix seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_reach_one_process_and_never_a_group() {
        for pid in [0, -1, -12345] {
            assert!(send_signal(pid, libc::SIGTERM).is_err(), "pid {pid}");
        }
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        assert!(
            send_signal(child.id() as i32, 12345).is_err(),
            "unknown signal"
        );
        send_signal(child.id() as i32, libc::SIGTERM).unwrap();
        let st = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&st),
            Some(libc::SIGTERM)
        );
    }

    #[test]
    fn parses_stat_with_a_hostile_comm() {
        let line =
            "1234 (a) b (c) S 77 1234 1234 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 98765 1000 100";
        let s = Stat::parse(line).expect("parse");
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 77);
        assert_eq!(s.start, 98765);
        assert!(Stat::parse("garbage").is_none());
    }

    #[test]
    fn me_is_alive_and_a_reused_pid_is_not_me() {
        let me = ProcId::me();
        assert!(me.alive());
        assert!(me.start > 0);
        let other = ProcId {
            pid: me.pid,
            start: me.start + 1,
        };
        assert!(
            !other.alive(),
            "same pid, different start time: not the same process"
        );
        assert!(!pid_alive(0));
        assert!(!pid_alive(-3));
        assert!(me.signal(0).is_err(), "never signals itself");
    }

    #[test]
    fn children_lists_a_spawned_child() {
        let mut c = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("spawn sleep");
        let kids = children(std::process::id() as i32);
        let _ = c.kill();
        let _ = c.wait();
        assert!(kids.contains(&(c.id() as i32)), "{kids:?}");
    }
}
