//! Rolling an existing image back to a revision by writing only the blocks
//! that differ.
//!
//! Which blocks may differ is proven one of two ways:
//! - **From a snapshot.** The image still has the snapshot some revision R0
//!   was read from (checked by name, source and size against R0's
//!   manifest). A block outside both "changed in the image since that
//!   snapshot" (`diff_iterate2`) and "hash differs between R0 and the
//!   revision" (indexes only, no data read) holds the revision's bytes.
//! - **By hashing.** Every allocated block of the image is read (in
//!   parallel) and hashed; a block whose hash equals the revision's is kept.
//!
//! The image is claimed first (`restore::claim`): refused while another
//! client uses it, then locked until the restore ends; refused without the
//! exclusive-lock feature unless `TargetOptions::force_unlocked`.

use std::sync::Arc;

use super::block_set::BlockSet;
use super::claim::claim;
use super::rbd_target::RbdTarget;
use super::TargetOptions;
use crate::archive::{Revision, VolumeDir};
use crate::ceph::{Image, IoCtx};
use crate::chain::Chain;
use crate::checksum::block_count;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::source::rbd::RbdSnapshot;
use crate::source::SourceSnapshot;
use crate::verify::source::walk_image;

/// How the blocks to write were found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Basis {
    /// The image's snapshot `snapshot` of revision `revision`.
    Snapshot { snapshot: String, revision: String },
    /// Every allocated block read and hashed (no usable snapshot, or asked).
    Hashed { bytes_read: u64 },
}

/// The blocks an in-place restore writes, and why only those.
#[derive(Debug, Clone)]
pub struct Plan {
    pub basis: Basis,
    pub write: Arc<BlockSet>,
    /// Blocks of the revision.
    pub blocks: u64,
}

/// Claims image `name`, finds the blocks that differ from `rev` and
/// resizes the image to `rev`'s size. The target returned writes into it
/// and holds its exclusive lock until it finishes or aborts.
pub fn prepare(
    vol: &VolumeDir,
    rev: &Revision,
    ioctx: &IoCtx,
    name: &str,
    use_snapshot: bool,
    topts: &TargetOptions,
    progress: &dyn Progress,
) -> Result<(RbdTarget, Plan)> {
    let spec = format!("{}/{name}", ioctx.pool());
    if !ioctx.image_exists(name)? {
        return Err(Error::Invalid(format!(
            "image {spec} does not exist: an in-place restore rolls back an existing image (drop --in-place to create it)"
        )));
    }
    let image = ioctx.open_image(name)?;
    claim(&image, ioctx, &spec, topts.force_unlocked)?;
    let old_size = image.size()?;
    let chain = Chain::open(vol, rev)?;
    let head = RbdSnapshot::head(ioctx, name)?;
    let base = match use_snapshot {
        true => snapshot_base(vol, &image, &spec)?,
        false => None,
    };
    let (basis, write) = match base {
        Some((r0, snap_size)) => {
            let write = from_snapshot(vol, &chain, &head, &r0, snap_size, old_size)?;
            let basis = Basis::Snapshot {
                snapshot: r0.manifest.snapshot.clone(),
                revision: r0.id.clone(),
            };
            (basis, write)
        }
        None => {
            let (write, bytes_read) = by_hashing(&chain, &head, old_size, progress)?;
            (Basis::Hashed { bytes_read }, write)
        }
    };
    drop(head);
    let size = rev.manifest.size;
    if old_size != size {
        image.resize(size)?;
    }
    let plan = Plan {
        basis,
        write: Arc::new(write),
        blocks: block_count(size, chain.block_size),
    };
    Ok((RbdTarget::over(ioctx, name, image, topts), plan))
}

/// The newest revision of `vol` whose snapshot the image still has,
/// taken from this image, with the size the manifest says; and that
/// snapshot's size.
fn snapshot_base(vol: &VolumeDir, image: &Image, spec: &str) -> Result<Option<(Revision, u64)>> {
    let snaps = image.snap_list()?;
    let found = vol.revisions()?.into_iter().rev().find_map(|r| {
        let (_, _, size) = snaps.iter().find(|s| s.0 == r.manifest.snapshot)?;
        (r.manifest.source == spec && *size == r.manifest.size).then_some((r, *size))
    });
    Ok(found)
}

/// Blocks changed in the image since R0's snapshot, plus blocks whose hash
/// differs between R0 and the revision, plus every block from the smaller
/// of the snapshot's and the image's size on (resizes: conservative).
fn from_snapshot(
    vol: &VolumeDir,
    chain: &Chain,
    head: &RbdSnapshot,
    r0: &Revision,
    snap_size: u64,
    old_size: u64,
) -> Result<BlockSet> {
    let bs = chain.block_size;
    let size = chain.size();
    let mut write = BlockSet::new(block_count(size, bs));
    for e in head.changed_extents(Some(&r0.manifest.snapshot), false)? {
        write.insert_range(e.offset / bs..e.end().div_ceil(bs));
    }
    write.insert_range(snap_size.min(old_size) / bs..u64::MAX);
    let base = Chain::open(vol, r0)?;
    let mut was = base.blocks_as(size)?;
    for r in chain.blocks()? {
        let r = r?;
        let want = chain.hash_of(&r)?;
        // R0 read as `size` bytes; a block it cannot vouch for is written.
        let same = match was.next() {
            Some(Ok(b)) => base.hash_of(&b).is_ok_and(|h| h == want),
            _ => false,
        };
        if !same {
            write.insert(r.block);
        }
    }
    Ok(write)
}

/// Blocks whose bytes in the image (read and hashed) differ from the
/// revision's; bytes past the image's old size count as the zeros a grow
/// leaves there. Returns them and the bytes read.
fn by_hashing(
    chain: &Chain,
    head: &RbdSnapshot,
    old_size: u64,
    progress: &dyn Progress,
) -> Result<(BlockSet, u64)> {
    let mut write = BlockSet::new(block_count(chain.size(), chain.block_size));
    let walked = walk_image(chain, head, old_size, "compare", progress, |r, actual| {
        if chain.hash_of(r)? != actual {
            write.insert(r.block);
        }
        Ok(())
    })?;
    Ok((write, walked.bytes))
}
