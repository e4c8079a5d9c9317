//! Crash-safe file creation: write under a temporary name, fsync, rename,
//! fsync the directory.
//!
//! A [`TempFile`] is created owner-only (0600) with O_EXCL in the volume's
//! `tmp/` directory and removed on drop unless it was persisted, so a failed
//! operation leaves no half-written file under a real name.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{IoContext, Result};

/// Fsyncs a directory so renames and creations in it are durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// The directory `path` lies in: `.` for a bare file name (whose
/// `parent()` is the empty path, which no system call accepts).
pub fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Creates a directory (and parents) owner-only if it does not exist.
pub fn create_dir_private(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .at(dir)
}

/// Writes `bytes` to `dest` atomically and durably.
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
    let dir = dir_of(dest);
    let mut tmp = TempFile::new_in(
        dir,
        dest.file_name().and_then(|n| n.to_str()).unwrap_or("f"),
    )?;
    tmp.file.write_all(bytes).at(&tmp.path)?;
    tmp.persist(dest)
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A file being written under a temporary name.
pub struct TempFile {
    pub file: File,
    pub path: PathBuf,
    done: bool,
}

impl TempFile {
    /// The host (or node) and pid of the process that created temp file
    /// `name` for `stem` (see [`TempFile::new_in`]), if `name` is one. The
    /// host is `None` in a name written before temp names carried one
    /// (`.<stem>.tmp-<pid>-<n>`): nobody can tell where that ran.
    pub fn owner<'a>(name: &'a str, stem: &str) -> Option<(Option<&'a str>, u32)> {
        let rest = name
            .strip_prefix('.')?
            .strip_prefix(stem)?
            .strip_prefix(".tmp-")?;
        let mut it = rest.rsplitn(3, '-');
        let (n, pid, host) = (it.next()?, it.next()?, it.next());
        n.parse::<u64>().ok()?;
        let pid = pid.parse().ok()?;
        match host {
            Some("") => None,
            h => Some((h, pid)),
        }
    }

    /// Creates `<dir>/.<stem>.tmp-<host>-<pid>-<n>` (0600, must not exist),
    /// `<host>` being this process's node name or else the host name
    /// ([`crate::host::here`]): on an archive that several hosts share,
    /// the name says whose process may still be writing it.
    pub fn new_in(dir: &Path, stem: &str) -> Result<TempFile> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(
            ".{stem}.tmp-{}-{}-{n}",
            crate::host::here(),
            std::process::id()
        ));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .at(&path)?;
        Ok(TempFile {
            file,
            path,
            done: false,
        })
    }

    /// Fsyncs the file and links it to `dest` unless `dest` exists (then
    /// returns false and leaves `dest` alone); the temp name goes either
    /// way. Of several writers racing for one `dest`, exactly one wins.
    pub fn persist_new(self, dest: &Path) -> Result<bool> {
        self.file.sync_all().at(&self.path)?;
        match std::fs::hard_link(&self.path, dest) {
            Ok(()) => fsync_dir(dir_of(dest)).map(|()| true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(crate::error::Error::io(dest, e)),
        }
        // dropping `self` removes the temp name
    }

    /// Fsyncs the file, renames it to `dest` and fsyncs `dest`'s directory.
    pub fn persist(mut self, dest: &Path) -> Result<()> {
        self.file.sync_all().at(&self.path)?;
        std::fs::rename(&self.path, dest).at(dest)?;
        self.done = true;
        fsync_dir(dir_of(dest))
    }
}

impl TempFile {
    /// Makes the file durable and keeps it under its temp name (an intent
    /// record will name it); returns the path.
    pub fn keep(mut self) -> Result<PathBuf> {
        self.file.sync_all().at(&self.path)?;
        self.done = true;
        Ok(self.path.clone())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_write_is_private_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("a.json");
        write_atomic(&dest, b"one").unwrap();
        write_atomic(&dest, b"two").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"two");
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn dropped_temp_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let t = TempFile::new_in(dir.path(), "x").unwrap();
        let p = t.path.clone();
        drop(t);
        assert!(!p.exists());
    }
}
