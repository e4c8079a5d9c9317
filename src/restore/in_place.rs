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
//! The image is claimed first: refused while another client holds its
//! exclusive lock or watches it (a VM, a mapping), then locked, then
//! checked again under the lock: a client that opened the image between
//! the first check and the lock is seen then, and the restore refused.
//! From there on nobody else writes until the restore ends and closes the
//! image (librbd refuses other clients' requests for a lock taken with
//! `rbd_lock_acquire`). An image without the exclusive-lock feature has no
//! such lock: nothing would stop a VM that starts during the restore from
//! writing, so it is refused unless the caller accepts that
//! ([`InPlaceOptions::unlocked`]).

use std::sync::Arc;

use super::block_set::BlockSet;
use super::rbd_target::RbdTarget;
use super::TargetOptions;
use crate::archive::{Revision, VolumeDir};
use crate::ceph::{features, Image, IoCtx};
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

/// How to roll an image back.
#[derive(Debug, Clone, Copy, Default)]
pub struct InPlaceOptions {
    /// Find the blocks to write from a snapshot of an earlier backup the
    /// image still has, when there is one (else by hashing).
    pub use_snapshot: bool,
    /// Restore into an image without the exclusive-lock feature, which
    /// nothing then protects from another client's writes.
    pub unlocked: bool,
}

/// Claims image `name`, finds the blocks that differ from `rev` and
/// resizes the image to `rev`'s size. The target returned writes into it
/// and holds its exclusive lock until it finishes or aborts.
pub fn prepare(
    vol: &VolumeDir,
    rev: &Revision,
    ioctx: &IoCtx,
    name: &str,
    opts: InPlaceOptions,
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
    claim(&image, ioctx, &spec, opts.unlocked)?;
    let old_size = image.size()?;
    let chain = Chain::open(vol, rev)?;
    let head = RbdSnapshot::head(ioctx, name)?;
    let base = match opts.use_snapshot {
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

/// Refuses an image another client uses, takes its exclusive lock for as
/// long as `image` stays open, and checks again under the lock. Without
/// the exclusive-lock feature, refused unless `unlocked`.
fn claim(image: &Image, ioctx: &IoCtx, spec: &str, unlocked: bool) -> Result<()> {
    // before locking: librbd would ask a running VM to hand its lock over
    if let Some(who) = user(image, ioctx, "")? {
        return Err(in_use(spec, &who));
    }
    if image.features()? & features::EXCLUSIVE_LOCK == 0 {
        if !unlocked {
            return Err(Error::Invalid(format!(
                "image {spec} has no exclusive-lock feature: nothing would stop a VM that starts during the restore from writing; \
                 enable it with `rbd feature enable {spec} exclusive-lock` or pass --force-unlocked"
            )));
        }
        tracing::warn!(
            "image {spec} has no exclusive-lock feature: restoring without a lock (--force-unlocked); \
             keep every VM that uses it stopped until the restore ends"
        );
        return Ok(());
    }
    crate::fault::pause("in-place: checked");
    image
        .lock_acquire()
        .map_err(|e| match user(image, ioctx, "") {
            Ok(Some(who)) => in_use(spec, &who),
            _ => e,
        })?;
    // Under the lock: a client that opened the image since the first check
    // shows here, and none can open it for writing from now on.
    if let Some(who) = user(image, ioctx, " while the restore was starting")? {
        let _ = image.lock_release();
        return Err(in_use(spec, &who));
    }
    Ok(())
}

fn in_use(spec: &str, who: &str) -> Error {
    Error::Invalid(format!(
        "image {spec} is in use: {who}; stop the VM (or unmap the image) before restoring into it"
    ))
}

/// Who other than this client holds the image's lock or watches it, if
/// anyone (`when` is said after "has it open").
fn user(image: &Image, ioctx: &IoCtx, when: &str) -> Result<Option<String>> {
    let me = ioctx.client();
    let watchers = image.watchers()?;
    // librbd names a lock owner by address; its watch says which client.
    let who = |addr: &str| match watchers.iter().find(|w| w.0 == addr) {
        Some((_, id)) => format!("client.{id} at {addr}"),
        None => addr.to_string(),
    };
    let mine = |id: &i64| format!("client.{id}") == me;
    if let Some(owner) = image.lock_owners()?.first() {
        let own = watchers.iter().any(|(a, id)| a == owner && mine(id));
        if !own {
            return Ok(Some(format!("{} holds its exclusive lock", who(owner))));
        }
    }
    let others: Vec<String> = watchers
        .iter()
        .filter(|(_, id)| !mine(id))
        .map(|(addr, _)| who(addr))
        .collect();
    Ok((!others.is_empty()).then(|| format!("{} has it open{when}", others.join(", "))))
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
