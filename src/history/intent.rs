//! The intent record of a history edit (`<volume>/operation.json`).
//!
//! Removing a revision touches several files: a rewritten successor (a
//! merged delta, or a synthetic full), the removed revision's manifest and
//! data, and the state. The new files are first staged in `tmp/` and made
//! durable; then this record names them and what is removed; then the steps
//! run; then the record goes. Every step is idempotent, so a process killed
//! at any point is finished by [`apply`] on the next run. Before the record
//! exists nothing visible has changed (staged files are temp files, cleared
//! with `tmp/`); after it exists the operation always completes.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::archive::atomic::{fsync_dir, write_atomic};
use crate::archive::VolumeDir;
use crate::error::{Error, IoContext, Result};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intent {
    /// `remove`.
    pub op: String,
    /// The revision removed.
    pub remove: String,
    /// The successor rewritten so it no longer needs `remove`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child: Option<String>,
    /// What replaces the child's data file.
    #[serde(default)]
    pub staged: Staged,
    /// The revisions the same edit removes after this one, in order. A
    /// writer that finishes this record removes them too, so an edit of
    /// several revisions is all or nothing once its first record exists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub then: Vec<String>,
    /// What the whole edit is, for the operator who reruns it: `prune`,
    /// `remove`, or `merge FROM TO` (full revision ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edit: Option<String>,
}

/// How [`apply`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The removal happened (or had already).
    Done,
    /// Nothing had changed and the staged files were gone: the record was
    /// dropped, and the rest of its edit with it.
    RolledBack,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Staged {
    #[default]
    None,
    /// A merged delta (file name inside `tmp/`).
    Delta { tmp: String },
    /// A synthetic full and its index (file names inside `tmp/`).
    Full { full: String, fidx: String },
}

fn path(vol: &VolumeDir) -> PathBuf {
    vol.path.join("operation.json")
}

/// The pending record, if an edit was interrupted.
pub fn read(vol: &VolumeDir) -> Result<Option<Intent>> {
    let p = path(vol);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| Error::Corrupt(format!("{}: {e}", p.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&p, e)),
    }
}

pub fn write(vol: &VolumeDir, i: &Intent) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(i).expect("intent serializes");
    bytes.push(b'\n');
    write_atomic(&path(vol), &bytes)
}

/// Runs (or finishes) the steps of `i`; idempotent. If the child still
/// depends on the removed revision and its staged replacement is gone (a
/// `tmp/` cleared by an older version), nothing was changed yet: the
/// record is dropped and the removal rolled back. A record with more
/// removals to come (`then`) stays in place for the caller, who replaces
/// it with the next one or [`clear`]s it.
pub fn apply(vol: &VolumeDir, i: &Intent) -> Result<Applied> {
    crate::fault::point("apply: start");
    if let Some(child) = &i.child {
        let staged_there = match &i.staged {
            Staged::None => true,
            Staged::Delta { tmp } => vol.tmp_dir().join(tmp).exists(),
            // The index is renamed first, the full last.
            Staged::Full { full, .. } => vol.tmp_dir().join(full).exists(),
        };
        if !staged_there && still_needs(vol, child, &i.remove)? {
            tracing::warn!(volume = %vol.name, "the staged files of an interrupted removal are gone; rolling it back");
            clear(vol)?;
            return Ok(Applied::RolledBack);
        }
    }
    if let Some(child) = &i.child {
        match &i.staged {
            Staged::None => {}
            Staged::Delta { tmp } => {
                rename_if_present(&vol.tmp_dir().join(tmp), &vol.delta_path(child))?;
            }
            Staged::Full { full, fidx } => {
                rename_if_present(&vol.tmp_dir().join(fidx), &vol.full_index_path(child))?;
                rename_if_present(&vol.tmp_dir().join(full), &vol.full_path(child))?;
                // The full now wins over the delta; the delta can go.
                remove_if_present(&vol.delta_path(child))?;
                fsync_dir(&vol.data_dir())?;
            }
        }
    }
    crate::fault::point("apply: child in place");
    // The manifest goes first: data without a manifest is only garbage,
    // a manifest without its data would be a broken revision.
    remove_if_present(&vol.manifest_path(&i.remove))?;
    fsync_dir(&vol.revisions_dir())?;
    crate::fault::point("apply: manifest removed");
    for p in [
        vol.full_path(&i.remove),
        vol.full_index_path(&i.remove),
        vol.delta_path(&i.remove),
    ] {
        remove_if_present(&p)?;
        crate::fault::point("apply: data file removed");
    }
    fsync_dir(&vol.data_dir())?;
    crate::archive::state::update(&vol.path, |s| {
        s.revisions.remove(&i.remove);
    })?;
    crate::fault::point("apply: state updated");
    if i.then.is_empty() {
        clear(vol)?;
    }
    Ok(Applied::Done)
}

/// Removes staged files whose removal was called off before its record
/// was written (best effort: the next writer empties `tmp/` anyway).
pub fn discard_staged(vol: &VolumeDir, staged: &Staged) {
    let names: Vec<&String> = match staged {
        Staged::None => vec![],
        Staged::Delta { tmp } => vec![tmp],
        Staged::Full { full, fidx } => vec![full, fidx],
    };
    for n in names {
        let _ = std::fs::remove_file(vol.tmp_dir().join(n));
    }
}

/// Removes the record (the edit is complete).
pub fn clear(vol: &VolumeDir) -> Result<()> {
    remove_if_present(&path(vol))?;
    fsync_dir(&vol.path)
}

/// Whether `child` is still stored as a delta based on `removed`.
fn still_needs(vol: &VolumeDir, child: &str, removed: &str) -> Result<bool> {
    if vol.full_path(child).exists() && vol.full_index_path(child).exists() {
        return Ok(false);
    }
    let base = crate::format::delta::read_header(&vol.delta_path(child))?.base;
    Ok(crate::checksum::to_hex(&base) == removed)
}

fn rename_if_present(from: &Path, to: &Path) -> Result<()> {
    if from.exists() {
        crate::fault::point("apply: rename");
        std::fs::rename(from, to).at(to)?;
        fsync_dir(crate::archive::atomic::dir_of(to))?;
    }
    Ok(())
}

fn remove_if_present(p: &Path) -> Result<()> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(p, e)),
    }
}
