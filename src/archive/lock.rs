//! The per-volume writer lock (flock on `<volume>/lock`).
//!
//! Every writer of a volume (backup, prune, merge, synthetic full, repair)
//! holds it exclusively for its whole run; readers (restore, verify, list,
//! status) never take it, since they read through chains opened as one
//! snapshot (`chain.rs`) and must keep working while a nightly backup runs.
//! A writer never waits either: a held lock is an immediate, clear error,
//! because a job that silently queues behind a stuck one hides the problem.
//! The kernel drops the lock when the process dies, so `kill -9` never
//! leaves a stale lock behind.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::error::{Error, IoContext, Result};

/// A held lock; released on drop.
pub struct VolumeLock {
    _file: File,
}

impl VolumeLock {
    pub fn acquire(path: &Path, volume: &str) -> Result<VolumeLock> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .at(path)?;
        // SAFETY: flock on a valid, owned descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(Error::Locked(format!(
                    "volume {volume} is locked by another rbdelta process (a backup, prune, merge or repair holds {})",
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
    fn one_writer_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        let a = VolumeLock::acquire(&p, "v").unwrap();
        let err = VolumeLock::acquire(&p, "v").err().unwrap();
        assert!(err.to_string().contains("locked"), "{err}");
        drop(a);
        let _b = VolumeLock::acquire(&p, "v").unwrap();
    }
}
