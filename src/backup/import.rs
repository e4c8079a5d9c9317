//! Adopting backups another tool made (`rbdelta import`): a raw image
//! becomes a full revision, each `rbd export-diff` of a chain a delta over
//! the revision before, with the diff's end snapshot as the revision's
//! snapshot. The source is a file ([`crate::source::raw`],
//! [`crate::source::diff_file`]), so there is no snapshot to take or
//! remove; otherwise a revision is written and committed exactly as a
//! backup's.
//!
//! An import killed half-way writes no intent record (there is no
//! snapshot to undo): the next import of the volume, under its lock,
//! removes what it left in `tmp/` and any data file no manifest names,
//! then goes on from the last revision committed.

use std::time::Instant;

use super::{commit, BackupOptions, BackupReport, Mode};
use crate::archive::oplog::Operation;
use crate::archive::VolumeDir;
use crate::chain::Chain;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::source::SourceSnapshot;

/// Commits `snap` as the next revision of `vol`: a full when the volume
/// has none, else a delta over its newest revision, which must be the
/// snapshot `snap` applies to. `what` names the file in the volume's log.
pub fn import_revision(
    vol: &VolumeDir,
    snap: &dyn SourceSnapshot,
    what: &str,
    opts: &BackupOptions,
    progress: &dyn Progress,
) -> Result<BackupReport> {
    let _lock = vol.lock()?;
    let op = Operation::start(vol.log_path(), "import", None, Some(what.to_string()))?;
    op.end(import_locked(vol, snap, opts, progress), BackupReport::log)
}

fn import_locked(
    vol: &VolumeDir,
    snap: &dyn SourceSnapshot,
    opts: &BackupOptions,
    progress: &dyn Progress,
) -> Result<BackupReport> {
    let started = Instant::now();
    crate::history::recover(vol)?;
    if vol.read_pending()?.is_some() {
        return Err(Error::Invalid(format!(
            "an interrupted backup of volume {} must be finished first (run a backup of it)",
            vol.name
        )));
    }
    let revisions = vol.revisions()?;
    commit::remove_orphan_data(vol, &revisions)?;
    vol.clear_tmp()?;
    let parent = revisions.last().cloned();
    let (mode, chain) = match &parent {
        Some(p) => (
            Mode::Diff {
                base_snapshot: p.manifest.snapshot.clone(),
            },
            Some(Chain::open(vol, p)?),
        ),
        None => (Mode::Full, None),
    };
    let plan = commit::Plan {
        mode: &mode,
        parent: parent.as_ref(),
        parent_chain: chain.as_ref(),
        layout: Default::default(),
    };
    let (revision, bytes_read, bytes_written) =
        commit::write_revision(vol, snap, &plan, opts, progress)?;
    commit::finish(vol, None, &revision, &opts.tags, false)?;
    Ok(BackupReport {
        revision,
        mode,
        bytes_read,
        bytes_written,
        duration: started.elapsed(),
        synthetic_full: false,
    })
}
