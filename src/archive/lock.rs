//! The per-volume writer lock (flock on `<volume>/lock`), and the one
//! daemon per archive (flock on `<archive>/.rbdelta/daemon.lock`).
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
        match flock_exclusive(path)? {
            Some(file) => Ok(VolumeLock { _file: file }),
            None => Err(Error::Locked(format!(
                "volume {volume} is locked by another rbdelta process (a backup, prune, merge or repair holds {})",
                path.display()
            ))),
        }
    }
}

/// The lock of the one daemon of an archive, holding its pid; released
/// on drop (or when the process dies).
pub struct DaemonLock {
    _file: File,
}

impl DaemonLock {
    pub fn acquire(path: &Path) -> Result<DaemonLock> {
        let Some(file) = flock_exclusive(path)? else {
            let pid = std::fs::read_to_string(path).unwrap_or_default();
            return Err(Error::Locked(format!(
                "another rbdelta daemon (pid {}) runs on this archive ({} is locked): refusing to start a second one",
                pid.trim(),
                path.display()
            )));
        };
        file.set_len(0).at(path)?;
        std::os::unix::fs::FileExt::write_all_at(
            &file,
            std::process::id().to_string().as_bytes(),
            0,
        )
        .at(path)?;
        Ok(DaemonLock { _file: file })
    }
}

/// Opens (creating) `path` and takes an exclusive flock without waiting;
/// None when another process holds it.
fn flock_exclusive(path: &Path) -> Result<Option<File>> {
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
            return Ok(None);
        }
        return Err(Error::io(path, err));
    }
    Ok(Some(file))
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

    #[test]
    fn one_daemon_at_a_time_named_by_pid() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("daemon.lock");
        let a = DaemonLock::acquire(&p).unwrap();
        let err = DaemonLock::acquire(&p).err().unwrap().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(a);
        let _b = DaemonLock::acquire(&p).unwrap();
    }
}
