//! Files of the archive root that belong to no single volume, in
//! `<archive>/.rbdelta/` (a name no volume can have): the fleet log of every
//! job's outcome, including jobs that failed before their volume directory
//! existed, and the daemon's status file.

use std::path::{Path, PathBuf};

use super::atomic::create_dir_private;
use crate::error::Result;

/// `<archive>/.rbdelta`.
pub fn dir(root: &Path) -> PathBuf {
    root.join(".rbdelta")
}

/// The fleet log, `<archive>/.rbdelta/log.jsonl`.
pub fn log_path(root: &Path) -> PathBuf {
    dir(root).join("log.jsonl")
}

/// The daemon's status file, `<archive>/.rbdelta/status.json`.
pub fn status_path(root: &Path) -> PathBuf {
    dir(root).join("status.json")
}

/// The daemon's lock, `<archive>/.rbdelta/daemon.lock` (holding its pid).
pub fn daemon_lock_path(root: &Path) -> PathBuf {
    dir(root).join("daemon.lock")
}

/// Creates the archive root and `.rbdelta` if missing.
pub fn ensure(root: &Path) -> Result<()> {
    create_dir_private(root)?;
    create_dir_private(&dir(root))
}
