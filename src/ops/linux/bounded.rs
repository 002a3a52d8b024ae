//! Running a call that may block in the kernel — on a hung FUSE mount, a lookup, an unmount or
//! even a read of another process's `/proc` files can — on a helper thread, and waiting for it
//! only so long.
//!
//! Why a thread and not a signal or an alarm: a syscall stuck in an uninterruptible FUSE wait
//! ignores signals; the only way not to hang is not to wait. The thread is never joined; a
//! helper stuck in the kernel is abandoned (FUSE waits are killable, so it does not keep the
//! process from exiting).

use std::io;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// What is left of `deadline` (zero once it passed).
pub fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// Outcome of [`run_bounded`].
pub enum Bounded<T> {
    /// The closure finished in time.
    Done(T),
    /// Still running; the receiver yields the result if it ever finishes.
    TimedOut(Receiver<T>),
    /// No time was left, the thread could not be spawned, or it panicked.
    Failed(io::Error),
}

/// Runs `f` on a detached helper thread named `name` and waits at most `wait` for it.
pub fn run_bounded<T, F>(name: &str, wait: Duration, f: F) -> Bounded<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    if wait.is_zero() {
        return Bounded::Failed(io::Error::new(
            io::ErrorKind::TimedOut,
            "deadline exhausted before the step started",
        ));
    }
    let (tx, rx) = mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name(name.to_owned())
        .stack_size(256 * 1024)
        .spawn(move || {
            // The receiver may be gone if we were abandoned; that is fine.
            let _ = tx.send(f());
        });
    if let Err(e) = spawned {
        return Bounded::Failed(e);
    }
    match rx.recv_timeout(wait) {
        Ok(v) => Bounded::Done(v),
        Err(RecvTimeoutError::Timeout) => Bounded::TimedOut(rx),
        Err(RecvTimeoutError::Disconnected) => {
            Bounded::Failed(io::Error::other("helper thread panicked"))
        }
    }
}

impl<T> Bounded<io::Result<T>> {
    /// Folds the outcome into one result; a timeout is `ErrorKind::TimedOut`.
    pub fn flatten(self) -> io::Result<T> {
        match self {
            Bounded::Done(r) => r,
            Bounded::TimedOut(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "did not return in time (abandoned)",
            )),
            Bounded::Failed(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn abandons_slow_work_and_refuses_zero_time() {
        let t = Instant::now();
        let r = run_bounded("slow", Duration::from_millis(50), || {
            std::thread::sleep(Duration::from_secs(3));
        });
        assert!(matches!(r, Bounded::TimedOut(_)));
        assert!(t.elapsed() < Duration::from_secs(1));
        assert!(matches!(
            run_bounded("zero", Duration::ZERO, || ()),
            Bounded::Failed(_)
        ));
        let r: io::Result<u8> = run_bounded("quick", Duration::from_secs(1), || Ok(7)).flatten();
        assert_eq!(r.ok(), Some(7));
    }
}
