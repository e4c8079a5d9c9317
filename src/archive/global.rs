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

use std::io::Write;

use super::atomic::{create_dir_private, TempFile};
use super::oplog::{self, Log};
use super::summary::{self, Backups};
use crate::error::IoContext;
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

/// The whole fleet's log, every node's records merged in time order; only
/// the records of `volumes` when given (see [`oplog::read_merged_of`]).
pub fn read_log_of(root: &Path, volumes: Option<&[String]>) -> Result<Log> {
    oplog::read_merged_of(&dir(root), volumes)
}

/// What status needs of the fleet's logs (see [`summary::backups_of`]),
/// of `volumes` when given.
pub fn backups_of(root: &Path, volumes: Option<&[String]>) -> Result<Backups> {
    summary::backups_of(&dir(root), volumes)
}

/// `<archive>/.rbdelta/fleet-id`: names the fleet that shares this
/// archive, so that its nodes' leases in RADOS are told apart from those
/// of another fleet using the same lease pool.
fn fleet_id_path(root: &Path) -> PathBuf {
    dir(root).join("fleet-id")
}

/// The archive's fleet id (32 hex digits), if it has one.
pub fn read_fleet_id(root: &Path) -> Result<Option<String>> {
    let path = fleet_id_path(root);
    match std::fs::read_to_string(&path) {
        Ok(t) => {
            let id = t.trim();
            if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(Some(id.to_string()))
            } else {
                Err(crate::error::Error::Corrupt(format!(
                    "{}: not a fleet id",
                    path.display()
                )))
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(crate::error::Error::io(&path, e)),
    }
}

/// The archive's fleet id, made on first use. Nodes that start at once
/// agree: each writes a candidate and links it into place, which only the
/// first link does ([`TempFile::persist_new`]); the others read it.
pub fn fleet_id(root: &Path) -> Result<String> {
    if let Some(id) = read_fleet_id(root)? {
        return Ok(id);
    }
    ensure(root)?;
    let path = fleet_id_path(root);
    let mut tmp = TempFile::new_in(&dir(root), "fleet-id")?;
    tmp.file
        .write_all(format!("{}\n", super::random_hex(16)).as_bytes())
        .at(&tmp.path)?;
    tmp.persist_new(&path)?;
    read_fleet_id(root)?
        .ok_or_else(|| crate::error::Error::Corrupt(format!("{}: vanished", path.display())))
}

/// Creates the archive root and `.rbdelta` if missing.
pub fn ensure(root: &Path) -> Result<()> {
    create_dir_private(root)?;
    create_dir_private(&dir(root))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One id per archive, made once, however many ask at once; a damaged
    /// file is an error, not a new fleet.
    #[test]
    fn one_fleet_id_per_archive() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("a");
        assert_eq!(read_fleet_id(&root).unwrap(), None);
        let ids: Vec<String> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| s.spawn(|| fleet_id(&root).unwrap()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(ids.iter().all(|i| *i == ids[0] && i.len() == 32), "{ids:?}");
        assert_eq!(fleet_id(&root).unwrap(), ids[0]);
        let left: Vec<_> = std::fs::read_dir(dir(&root))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["fleet-id"], "temp files left");
        std::fs::write(fleet_id_path(&root), "zz\n").unwrap();
        assert!(fleet_id(&root).is_err());
    }
}
