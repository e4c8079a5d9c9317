//! Per-volume locks (flock on `<volume>/lock`).
//!
//! Writers (backup) take the lock exclusively, readers (restore, verify)
//! shared. Neither waits: a held lock is an immediate, clear error, because a
//! nightly job that silently queues behind a stuck one hides the problem.
//! The kernel drops the lock when the process dies, so `kill -9` never leaves
//! a stale lock behind.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::error::{Error, IoContext, Result};

/// A held lock; released on drop.
pub struct VolumeLock {
    _file: File,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Shared,
    Exclusive,
}

impl VolumeLock {
    pub fn acquire(path: &Path, volume: &str, mode: LockMode) -> Result<VolumeLock> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .at(path)?;
        let op = match mode {
            LockMode::Shared => libc::LOCK_SH,
            LockMode::Exclusive => libc::LOCK_EX,
        } | libc::LOCK_NB;
        // SAFETY: flock on a valid, owned descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let what = match mode {
                    LockMode::Exclusive => "a backup or restore",
                    LockMode::Shared => "a running backup",
                };
                return Err(Error::Locked(format!(
                    "volume {volume} is locked by another rbdelta process ({what} holds {})",
                    path.display()
                )));
            }
            return Err(Error::io(path, err));
        }
        Ok(VolumeLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes_and_shared_shares() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        let a = VolumeLock::acquire(&p, "v", LockMode::Shared).unwrap();
        let _b = VolumeLock::acquire(&p, "v", LockMode::Shared).unwrap();
        let err = VolumeLock::acquire(&p, "v", LockMode::Exclusive)
            .err()
            .unwrap();
        assert!(err.to_string().contains("locked"), "{err}");
        drop(a);
        drop(_b);
        let _c = VolumeLock::acquire(&p, "v", LockMode::Exclusive).unwrap();
        assert!(VolumeLock::acquire(&p, "v", LockMode::Shared).is_err());
    }
}
