//! Files of the archive root that belong to no single volume, in
//! `<archive>/.rbdelta/` (a name no volume can have): the fleet log of every
//! job's outcome, including jobs that failed before their volume directory
//! existed, and the daemon's status file and lock.
//!
//! When several backup hosts (nodes) share the archive, each writes files
//! of its own, named after it (`log.<node>.jsonl`, `status.<node>.json`,
//! `daemon.<node>.lock`): appends from two CephFS clients to one file are
//! not atomic. Readers merge every fleet log they find.

use std::path::{Path, PathBuf};

use super::atomic::create_dir_private;
use super::oplog::{self, Log};
use crate::error::Result;

/// `<archive>/.rbdelta`.
pub fn dir(root: &Path) -> PathBuf {
    root.join(".rbdelta")
}

/// `<stem>.<node><ext>` on a node of a shared fleet, else `<stem><ext>`.
fn own(root: &Path, stem: &str, ext: &str) -> PathBuf {
    match crate::host::node() {
        Some(n) => dir(root).join(format!("{stem}.{n}{ext}")),
        None => dir(root).join(format!("{stem}{ext}")),
    }
}

/// The fleet log this process appends to: `<archive>/.rbdelta/log.jsonl`,
/// or `log.<node>.jsonl` on a node of a shared fleet.
pub fn log_path(root: &Path) -> PathBuf {
    oplog::own_path(&dir(root))
}

/// The daemon's status file, `<archive>/.rbdelta/status[.<node>].json`.
pub fn status_path(root: &Path) -> PathBuf {
    own(root, "status", ".json")
}

/// The daemon's lock, `<archive>/.rbdelta/daemon[.<node>].lock` (holding
/// its pid): one daemon per archive, or per node of a shared fleet.
pub fn daemon_lock_path(root: &Path) -> PathBuf {
    own(root, "daemon", ".lock")
}

/// The whole fleet's log: every node's records merged in time order.
pub fn read_log(root: &Path) -> Result<Log> {
    oplog::read_merged(&dir(root))
}

/// Creates the archive root and `.rbdelta` if missing.
pub fn ensure(root: &Path) -> Result<()> {
    create_dir_private(root)?;
    create_dir_private(&dir(root))
}
