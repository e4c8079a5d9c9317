//! Block sources: where backups read image data from.
//!
//! A backup needs four things from the thing it backs up: make a point-in-time
//! snapshot, say which byte ranges changed since an earlier snapshot (or which
//! are allocated at all), read those ranges, and drop snapshots it no longer
//! needs. This module states that contract as two small traits so the backup
//! engine never knows whether it talks to librbd ([`rbd`]) or to a plain file
//! ([`file`], used by the fast unit and property tests).
//!
//! Contract shared by every implementation:
//! - Snapshots are immutable: reading the same range of the same snapshot
//!   twice returns the same bytes.
//! - `changed_extents` may over-report (whole objects, say) but never
//!   under-report: every byte that differs between base and snapshot lies in a
//!   returned extent. The one exception: bytes past the base's size that read
//!   as zeros need not be reported (librbd does not report a grown, unwritten
//!   tail); the archive reads bytes past a parent's size as zeros anyway.
//! - `read_extents` delivers extents in the order given, each exactly once,
//!   and may keep several reads in flight; its memory use is bounded by
//!   `depth × largest extent`.

pub mod diff_file;
pub mod file;
pub mod raw;
pub mod rbd;

use crate::buffers::{AlignedBuf, BufferPool};
use crate::error::Result;

/// A byte range `[offset, offset + len)` of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
}

impl Extent {
    pub fn new(offset: u64, len: u64) -> Self {
        Extent { offset, len }
    }
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// Layout facts about an image that a restore wants to reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ImageLayout {
    /// log2 of the RADOS object size (22 = 4 MiB); 0 when unknown.
    pub order: u8,
    /// librbd feature bits; 0 when unknown.
    pub features: u64,
}

/// Errors unless every extent lies within `size` bytes of `what`: the
/// [`SourceSnapshot::read_extents`] contract, checked by each source.
pub fn check_within(extents: &[Extent], size: u64, what: &dyn std::fmt::Display) -> Result<()> {
    match extents.iter().find(|e| e.end() > size) {
        Some(e) => Err(crate::error::Error::Invalid(format!(
            "extent {}+{} lies beyond the end ({size}) of {what}",
            e.offset, e.len
        ))),
        None => Ok(()),
    }
}

/// An image that can be snapshotted: the live side of a backup.
pub trait SourceImage: Send {
    /// Creates snapshot `name` of the image as it is now and opens it.
    fn create_snapshot(&self, name: &str) -> Result<Box<dyn SourceSnapshot + '_>>;
    /// Opens an existing snapshot; `Ok(None)` when it does not exist.
    fn open_snapshot(&self, name: &str) -> Result<Option<Box<dyn SourceSnapshot + '_>>>;
    /// Removes snapshot `name`; removing a missing snapshot is not an error.
    fn remove_snapshot(&self, name: &str) -> Result<()>;
    /// Names of all snapshots of the image (ours and others').
    fn snapshot_names(&self) -> Result<Vec<String>>;
    /// Object size and features, for restores into a new image.
    fn layout(&self) -> Result<ImageLayout>;
    /// This connection's client name in the cluster, if it has one.
    fn client(&self) -> Option<String>;
    /// Cuts `client`, a dead process's connection, off the image: drops
    /// its watch (else every snapshot change waits about 30 s for its
    /// acknowledgement) and its lock. True if it had either.
    fn evict(&self, client: &str) -> Result<bool>;
}

/// A read-only, point-in-time view of an image.
pub trait SourceSnapshot: Send {
    fn name(&self) -> &str;
    /// Image size in bytes at this snapshot.
    fn size(&self) -> u64;
    /// Extents that may differ from snapshot `base`, or, with `None`, every
    /// allocated extent (so a sparse image reads only its data). Sorted by
    /// offset, non-overlapping, clipped to `size()`. Includes the parent's
    /// data for clones.
    fn changed_extents(&self, base: Option<&str>, whole_object: bool) -> Result<Vec<Extent>>;
    /// Reads every extent in order, handing `(extent, bytes)` to `sink`, with
    /// up to `depth` reads in flight, into buffers taken from `pool`.
    /// Extents must lie within `size()`.
    fn read_extents(
        &self,
        extents: &[Extent],
        depth: usize,
        pool: &BufferPool,
        sink: &mut dyn FnMut(Extent, AlignedBuf) -> Result<()>,
    ) -> Result<()>;
}
