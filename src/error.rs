//! The library's error type and its policy.
//!
//! Policy: library code returns [`Error`], a typed error whose variants say
//! what went wrong in terms an operator can act on; the binary wraps it with
//! `anyhow` context and prints one line. Every variant answers
//! [`Error::is_transient`]: whether retrying the same operation later can
//! help (the scheduler retries only those). Nothing in the library panics on
//! bad input: corrupt files, bad config and cluster failures are all errors.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a local file, with the path it concerns. (Not a
    /// `#[source]`: the message already says it, and the CLI prints the
    /// whole chain.)
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A librados/librbd call failed.
    #[error("ceph: {op}: {msg} (errno {errno})")]
    Ceph { op: String, errno: i32, msg: String },
    /// The configuration file is invalid.
    #[error("{0}")]
    Config(String),
    /// Archive content does not match what was written (checksum, magic, size).
    #[error("corrupt archive: {0}")]
    Corrupt(String),
    /// The archive is held by another process.
    #[error("{0}")]
    Locked(String),
    /// The caller asked for something that does not exist or is refused.
    #[error("{0}")]
    Invalid(String),
    /// A pre- or post-snapshot hook failed or timed out.
    #[error("hook: {0}")]
    Hook(String),
    /// The operation was asked to stop (daemon shutdown) and did, cleanly.
    #[error("cancelled: {0}")]
    Cancelled(String),
    /// A program rbdelta runs (a filesystem checker, the sandbox) is not
    /// installed on this host.
    #[error("{program} is not installed (Debian package {package})")]
    MissingTool { program: String, package: String },
    /// A revision a reader asked for was removed (by a concurrent prune or
    /// merge) before the reader had opened its files.
    #[error("{0}")]
    Removed(String),
    /// A mount could not be taken down; the message names what holds it
    /// and the commands that clear it.
    #[error("{0}")]
    StillMounted(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            error: source,
        }
    }

    /// Whether retrying later may succeed (timeouts, busy locks, cluster
    /// hiccups, a full disk that someone may clean up).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Io { error, .. } => matches!(
                error.raw_os_error(),
                Some(libc::ENOSPC | libc::EAGAIN | libc::EINTR | libc::EIO | libc::EDQUOT)
            ),
            Error::Ceph { errno, .. } => matches!(
                *errno,
                libc::ETIMEDOUT
                    | libc::EAGAIN
                    | libc::EBUSY
                    | libc::ENOTCONN
                    | libc::ESHUTDOWN
                    | libc::ECONNREFUSED
                    | libc::EIO
                    | libc::EINTR
            ),
            Error::Locked(_) => true,
            // A hook is the operator's script; whether it heals itself is
            // unknown, so it gets the retries a cluster hiccup gets.
            Error::Hook(_) => true,
            Error::Config(_)
            | Error::Corrupt(_)
            | Error::Invalid(_)
            | Error::Cancelled(_)
            | Error::MissingTool { .. }
            | Error::Removed(_)
            | Error::StillMounted(_) => false,
        }
    }
}

impl Error {
    /// Whether the cluster did not answer within the client timeout: every
    /// further call is likely to wait as long.
    pub fn is_cluster_timeout(&self) -> bool {
        matches!(self, Error::Ceph { errno, .. } if *errno == libc::ETIMEDOUT)
    }

    /// Whether this is a file that does not exist (or no longer does).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Io { error, .. } if error.kind() == std::io::ErrorKind::NotFound)
    }
}

/// Adds the path to an `io::Result`.
pub trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
