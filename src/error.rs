//! The command-level error: what went wrong, said so an operator can act on it, and the stable
//! exit code it maps to (documented in the README).

use crate::store::AllMissed;

pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILURE: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const MISSING: i32 = 3;
    pub const INTEGRITY: i32 = 4;
    pub const CONFLICT: i32 = 5;
    pub const MOUNT: i32 = 6;
    pub const TIMEOUT: i32 = 7;
}

/// How a line break inside a message crosses the one-line readiness protocol (ASCII record
/// separator: never part of a message).
const LINE_BREAK: &str = "\u{1e}";

#[derive(Debug, thiserror::Error)]
pub enum WsfsError {
    #[error("{0}")]
    Usage(String),
    /// A ref, manifest or chunk is missing on every provider (or no provider could answer).
    #[error("{0}")]
    Missing(String),
    /// Bytes arrived that do not match their digest, or a manifest is invalid.
    #[error("{0}")]
    Integrity(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Mount(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Failed(String),
}

impl WsfsError {
    pub fn exit_code(&self) -> i32 {
        match self {
            WsfsError::Usage(_) => exit::USAGE,
            WsfsError::Missing(_) => exit::MISSING,
            WsfsError::Integrity(_) => exit::INTEGRITY,
            WsfsError::Conflict(_) => exit::CONFLICT,
            WsfsError::Mount(_) => exit::MOUNT,
            WsfsError::Timeout(_) => exit::TIMEOUT,
            WsfsError::Failed(_) => exit::FAILURE,
        }
    }

    /// The error a child `wsfs` process reported with exit code `code` (inverse of
    /// [`Self::exit_code`]).
    pub fn from_code(code: i32, msg: String) -> WsfsError {
        match code {
            exit::USAGE => WsfsError::Usage(msg),
            exit::MISSING => WsfsError::Missing(msg),
            exit::INTEGRITY => WsfsError::Integrity(msg),
            exit::CONFLICT => WsfsError::Conflict(msg),
            exit::MOUNT => WsfsError::Mount(msg),
            exit::TIMEOUT => WsfsError::Timeout(msg),
            _ => WsfsError::Failed(msg),
        }
    }

    /// Classifies an all-providers miss: bytes that arrived but failed verification make it an
    /// integrity failure; otherwise the object is missing. (Also `?` on an [`AllMissed`].)
    pub fn from_missed(m: &AllMissed) -> WsfsError {
        use crate::store::Outcome;
        let integrity = m
            .attempts
            .iter()
            .any(|a| matches!(a.outcome, Outcome::Corrupt(_)));
        if integrity {
            WsfsError::Integrity(m.to_string())
        } else {
            WsfsError::Missing(m.to_string())
        }
    }

    /// The exit code as a single line `ERROR <code> <message>` (the daemon's readiness protocol).
    /// Line breaks travel as [`LINE_BREAK`] and are restored by [`Self::from_code_line`], so a
    /// list (conflicting paths, say) reaches the user as a list.
    pub fn code_line(&self) -> String {
        format!(
            "ERROR {} {}",
            self.exit_code(),
            self.to_string().replace('\n', LINE_BREAK)
        )
    }

    /// The error a [`Self::code_line`] carries (`rest` is what follows `ERROR `).
    pub fn from_code_line(rest: &str) -> WsfsError {
        let (code, msg) = rest.split_once(' ').unwrap_or((rest, ""));
        WsfsError::from_code(
            code.parse::<i32>().unwrap_or(exit::FAILURE),
            msg.replace(LINE_BREAK, "\n"),
        )
    }
}

// The lower layers' errors, each mapped to its exit code here and nowhere else: `?` on them
// gives the right code without every call site deciding it again.

impl From<AllMissed> for WsfsError {
    fn from(m: AllMissed) -> WsfsError {
        WsfsError::from_missed(&m)
    }
}

/// A manifest that cannot be decoded, fails validation or cannot be encoded: its bytes are not
/// what they must be (exit 4).
impl From<crate::manifest::ManifestError> for WsfsError {
    fn from(e: crate::manifest::ManifestError) -> WsfsError {
        WsfsError::Integrity(e.to_string())
    }
}

/// A tree that cannot be built from validated manifests is damaged input (exit 4).
impl From<crate::fs::inode::BuildError> for WsfsError {
    fn from(e: crate::fs::inode::BuildError) -> WsfsError {
        WsfsError::Integrity(e.to_string())
    }
}

/// A background task of this command panicked or was cancelled (exit 1).
impl From<tokio::task::JoinError> for WsfsError {
    fn from(e: tokio::task::JoinError) -> WsfsError {
        WsfsError::Failed(format!("a background task failed: {e}"))
    }
}
