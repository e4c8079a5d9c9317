//! Writing a revision's files and committing it; finishing or undoing an
//! interrupted backup.

use super::pipeline::copy_blocks;
use super::plan::{reads_for, reads_for_all};
use super::writers::FullWriter;
use super::{BackupOptions, Mode};
use crate::archive::atomic::{fsync_dir, write_atomic, TempFile};
use crate::archive::state::VolumeState;
use crate::archive::{now_rfc3339, Pending, Revision, VolumeDir};
use crate::chain::{Blocks, Chain, Resolved};
use crate::checksum::{self, Hash};
use crate::error::{IoContext, Result};
use crate::format::delta::{DeltaHeader, DeltaWriter};
use crate::format::manifest::Manifest;
use crate::format::FORMAT_VERSION;
use crate::progress::Progress;
use crate::source::{ImageLayout, SourceImage, SourceSnapshot};

/// What a backup decided before reading any data.
pub(super) struct Plan<'a> {
    pub mode: &'a Mode,
    /// The newest revision, if any.
    pub parent: Option<&'a Revision>,
    /// Its chain, present for the delta modes.
    pub parent_chain: Option<&'a Chain>,
    /// The source image's layout, recorded in the manifest.
    pub layout: ImageLayout,
}

/// Reads the snapshot's data per `plan`, writes data files and the manifest.
/// Returns the committed revision, bytes read and bytes stored.
pub(super) fn write_revision(
    vol: &VolumeDir,
    snap: &dyn SourceSnapshot,
    plan: &Plan,
    opts: &BackupOptions,
    progress: &dyn Progress,
) -> Result<(Revision, u64, u64)> {
    let Plan {
        mode,
        parent,
        parent_chain,
        layout,
    } = *plan;
    let bs = vol.block_size;
    let size = snap.size();
    let parent_for_delta = match mode {
        Mode::Full => None,
        _ => Some((
            parent.expect("delta modes have a parent"),
            parent_chain.expect("delta modes have a chain"),
        )),
    };
    let Some((parent, chain)) = parent_for_delta else {
        let extents = snap.changed_extents(None, opts.whole_object)?;
        let reads = reads_for(&extents, None, size, bs);
        let mut w = FullWriter::new(&vol.tmp_dir(), size, bs)?;
        progress.begin("full", reads.iter().map(|e| e.len).sum());
        let copied = copy_blocks(
            snap,
            &reads,
            opts.depth,
            bs,
            &mut w,
            &mut |_, _, _| Ok(true),
            progress,
        );
        progress.end();
        let stats = copied?;
        crate::fault::pause("backup: data copied");
        let sum = w.checksum();
        let (rev, bytes) = new_manifest(vol, snap, parent, sum, size, opts, layout);
        let written = w.bytes_written;
        w.persist(
            rev.id_bytes(),
            &vol.full_path(&rev.id),
            &vol.full_index_path(&rev.id),
        )?;
        commit_manifest(vol, &rev, &bytes)?;
        return Ok((rev, stats.bytes_read, written));
    };

    let tmp = TempFile::new_in(&vol.tmp_dir(), "delta")?;
    let file = tmp.file.try_clone().at(&tmp.path)?;
    let mut dw = DeltaWriter::new(file, tmp.path.clone(), bs);
    let boundary = (parent.manifest.size != size).then(|| parent.manifest.size.min(size));
    let copied = match mode {
        Mode::Diff { base_snapshot } => {
            let t = std::time::Instant::now();
            let extents = snap.changed_extents(Some(base_snapshot), opts.whole_object)?;
            tracing::info!(volume = %vol.name, "{} changed extents found in {:?}", extents.len(), t.elapsed());
            let reads = reads_for(&extents, boundary, size, bs);
            progress.begin("delta", reads.iter().map(|e| e.len).sum());
            let mut parent_blocks = ParentBlocks::new(chain, size)?;
            let mut keep =
                |block: u64, hash: &Hash, _zero: bool| parent_blocks.differs(block, hash);
            copy_blocks(snap, &reads, opts.depth, bs, &mut dw, &mut keep, progress)
        }
        Mode::Compare { .. } => {
            let reads = reads_for_all(size, bs);
            let mut parent_blocks = ParentBlocks::new(chain, size)?;
            let mut keep =
                |block: u64, hash: &Hash, _zero: bool| parent_blocks.differs(block, hash);
            progress.begin("compare", size);
            copy_blocks(snap, &reads, opts.depth, bs, &mut dw, &mut keep, progress)
        }
        Mode::Full => unreachable!("handled above"),
    };
    progress.end();
    let stats = copied?;
    crate::fault::pause("backup: data copied");
    let t = std::time::Instant::now();
    let sum = chain.checksum_with(dw.entries(), size)?;
    tracing::info!(volume = %vol.name, "image checksum computed in {:?}", t.elapsed());
    let (rev, bytes) = new_manifest(vol, snap, Some(parent), sum, size, opts, layout);
    let written = dw.data_bytes();
    dw.finish(&DeltaHeader {
        block_size: bs,
        size,
        revision: rev.id_bytes(),
        base: parent.id_bytes(),
    })?;
    tmp.persist(&vol.delta_path(&rev.id))?;
    commit_manifest(vol, &rev, &bytes)?;
    Ok((rev, stats.bytes_read, written))
}

fn new_manifest(
    vol: &VolumeDir,
    snap: &dyn SourceSnapshot,
    parent: Option<&Revision>,
    sum: Hash,
    size: u64,
    opts: &BackupOptions,
    layout: ImageLayout,
) -> (Revision, Vec<u8>) {
    let manifest = Manifest {
        format: FORMAT_VERSION,
        volume: vol.name.clone(),
        source: opts.source_name.clone(),
        seq: parent.map_or(1, |p| p.manifest.seq + 1),
        created: opts.created.clone().unwrap_or_else(now_rfc3339),
        size,
        block_size: vol.block_size,
        checksum: checksum::to_hex(&sum),
        snapshot: snap.name().to_string(),
        previous: parent.map(|p| p.id.clone()),
        order: layout.order,
        features: layout.features,
    };
    let bytes = manifest.encode();
    let id = checksum::to_hex(&Manifest::id_of(&bytes));
    (Revision { id, manifest }, bytes)
}

/// The parent's blocks as seen from a child of a given size, walked in step
/// with the (ascending) blocks a backup reads, to store only blocks whose
/// content really changed: Ceph reports rewrites of identical data as
/// changes, and the checksum-compare fallback reads everything.
struct ParentBlocks<'c> {
    chain: &'c Chain,
    blocks: Blocks<'c>,
    current: Option<Resolved>,
    /// The block straddling `min(parent size, size)` after a resize.
    boundary: Option<u64>,
}

impl<'c> ParentBlocks<'c> {
    fn new(chain: &'c Chain, size: u64) -> Result<Self> {
        let bs = chain.block_size;
        let edge = chain.size().min(size);
        Ok(ParentBlocks {
            chain,
            blocks: chain.blocks_as(size)?,
            current: None,
            boundary: (chain.size() != size && edge % bs != 0).then_some(edge / bs),
        })
    }

    /// Whether `block` now hashing to `hash` differs from the parent. The
    /// block straddling a resize boundary always "differs": the format
    /// requires every delta to store it (docs/FORMAT.md, "Reading block n"),
    /// even when it is zero on both sides, because its length changed; a
    /// later merge relies on it.
    fn differs(&mut self, block: u64, hash: &Hash) -> Result<bool> {
        if self.boundary == Some(block) {
            return Ok(true);
        }
        while self.current.is_none_or(|r| r.block < block) {
            match self.blocks.next() {
                Some(r) => self.current = Some(r?),
                None => return Ok(true),
            }
        }
        Ok(match self.current {
            Some(r) if r.block == block => self.chain.hash_of(&r).map_or(true, |h| &h != hash),
            _ => true,
        })
    }
}

/// The commit point: the manifest appears under its id.
fn commit_manifest(vol: &VolumeDir, rev: &Revision, bytes: &[u8]) -> Result<()> {
    crate::fault::point("backup: data file in place");
    fsync_dir(&vol.data_dir())?;
    write_atomic(&vol.manifest_path(&rev.id), bytes)?;
    crate::fault::point("backup: manifest written");
    Ok(())
}

/// After the commit: record `newest`'s snapshot as the only one kept, remove
/// every other snapshot of this volume archive, and drop the intent record
/// (if `clear`; see [`super::BackupOptions::leave_intent`]).
pub(super) fn finish(
    vol: &VolumeDir,
    image: Option<&dyn SourceImage>,
    newest: &Revision,
    tags: &[String],
    clear: bool,
) -> Result<()> {
    let revisions = vol.revisions()?;
    crate::archive::state::update(&vol.path, |state| {
        for r in &revisions {
            let entry = state.revisions.entry(r.id.clone()).or_default();
            entry.snapshot = (r.id == newest.id).then(|| r.manifest.snapshot.clone());
            if r.id == newest.id {
                entry.tags.extend(tags.iter().cloned());
            }
        }
    })?;
    crate::fault::point("backup: state updated");
    if let Some(image) = image {
        remove_stale_snapshots(vol, image, Some(&newest.manifest.snapshot));
    }
    crate::fault::point("backup: old snapshots removed");
    if clear {
        vol.clear_pending()?;
    }
    Ok(())
}

/// Removes this volume's snapshots except `keep`. Failures are logged, not
/// fatal: a leftover snapshot costs space, and the next backup retries.
/// (A killed backup's snapshot can appear late: with exclusive-lock, the
/// lock owner, e.g. the VM, creates it on the requester's behalf.)
fn remove_stale_snapshots(vol: &VolumeDir, image: &dyn SourceImage, keep: Option<&str>) {
    let prefix = vol.snapshot_prefix();
    let names = match image.snapshot_names() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!("could not list snapshots: {e}");
            return;
        }
    };
    for name in names {
        if name.starts_with(&prefix) && Some(name.as_str()) != keep {
            if let Err(e) = image.remove_snapshot(&name) {
                tracing::warn!("could not remove old snapshot {name}: {e}");
            }
        }
    }
}

/// A backup killed with the image open (`kill -9`, a dead parent) leaves
/// its client's watch on the image (and maybe its lock), and every snapshot
/// change waits about 30 s for Ceph to time the dead client out. When the
/// intent record names a process of this host that is gone, cut its client
/// off at once.
fn evict_dead_owner(vol: &VolumeDir, image: &dyn SourceImage, pending: &Pending) {
    let Some(o) = &pending.owner else { return };
    let Some(client) = &o.client else { return };
    if crate::host::owner(&o.host, o.pid) != crate::host::Owner::Gone {
        return;
    }
    evict(
        &vol.name,
        image,
        client,
        &format!("backup process {} that is gone", o.pid),
    );
}

/// Cuts `client`, the connection of `whose` (a process known to be gone),
/// off the image of `volume`, if it still watches or locks it.
pub fn evict(volume: &str, image: &dyn SourceImage, client: &str, whose: &str) {
    match image.evict(client) {
        Ok(true) => tracing::info!(volume, "cut off {client}, the connection of {whose}"),
        Ok(false) => {}
        Err(e) => tracing::warn!(volume, "could not cut off {client}: {e}"),
    }
}

/// Finishes or undoes a backup that was interrupted (found by its
/// `pending.json`). Call with the volume locked exclusively.
pub fn recover(vol: &VolumeDir, image: &dyn SourceImage) -> Result<()> {
    let Some(pending) = vol.read_pending()? else {
        vol.clear_tmp()?;
        return Ok(());
    };
    evict_dead_owner(vol, image, &pending);
    let revisions = vol.revisions()?;
    match revisions
        .iter()
        .find(|r| r.manifest.snapshot == pending.snapshot)
    {
        Some(committed) => {
            tracing::info!(
                "finishing interrupted backup of revision {}",
                committed.short()
            );
            finish(vol, Some(image), committed, &[], true)?;
        }
        None => {
            tracing::info!("undoing interrupted backup (snapshot {})", pending.snapshot);
            image.remove_snapshot(&pending.snapshot)?;
            let state = VolumeState::load(&vol.state_path())?;
            let keep = revisions.last().and_then(|r| state.get(&r.id).snapshot);
            remove_stale_snapshots(vol, image, keep.as_deref());
            remove_orphan_data(vol, &revisions)?;
            vol.clear_pending()?;
        }
    }
    vol.clear_tmp()
}

/// Removes data files that belong to no committed revision.
pub(super) fn remove_orphan_data(vol: &VolumeDir, revisions: &[Revision]) -> Result<()> {
    let dir = vol.data_dir();
    for entry in std::fs::read_dir(&dir).at(&dir)? {
        let path = entry.at(&dir)?.path();
        let id = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        if !revisions.iter().any(|r| r.id == id) {
            std::fs::remove_file(&path).at(&path)?;
        }
    }
    fsync_dir(&dir)
}
