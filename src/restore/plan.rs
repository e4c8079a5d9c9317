//! Plans a restore's reads: walks a chain's blocks in image order and
//! gathers blocks stored back to back in one file into groups of up to
//! [`MAX_CHUNK`], read with one `pread` each; the blocks between them
//! (zeros, or blocks the target holds already) pass along in runs.

use super::block_set::BlockSet;
use super::reader::MAX_CHUNK;
use crate::buffers::AlignedBuf;
use crate::chain::{Chain, Resolved, Source};
use crate::checksum::Hash;
use crate::error::{Error, Result};
use crate::format::index::BlockEntry;

/// The stored, non-zero entry behind a resolved block.
pub(super) fn stored(r: &Resolved) -> Option<(usize, BlockEntry)> {
    match r.source {
        Source::Stored { link, entry } if !entry.zero => Some((link, entry)),
        _ => None,
    }
}

/// Blocks stored back to back in one file, read together.
pub(super) struct Group {
    pub link: usize,
    pub blocks: Vec<Resolved>,
}

impl Group {
    /// Where the group's blocks lie in their file, as one entry.
    pub fn span(&self) -> BlockEntry {
        let (_, fe) = stored(&self.blocks[0]).expect("stored");
        let (_, le) = stored(self.blocks.last().expect("a group has blocks")).expect("stored");
        BlockEntry {
            len: (le.offset + le.len as u64 - fe.offset) as u32,
            ..fe
        }
    }
}

/// A block handed on without a read.
pub(super) enum Pass {
    /// Reads as zeros.
    Zero(Resolved),
    /// The target holds it already (`only`).
    Known(Resolved),
}

/// Work for a lane.
pub(super) enum Job {
    Read(Group),
    /// A run of blocks between groups, passed along in order.
    Pass(Vec<Pass>),
}

/// A lane's result.
pub(super) enum Done {
    /// A group's bytes and the hash of each of its blocks.
    Read((Group, AlignedBuf, Vec<Hash>)),
    Pass(Vec<Pass>),
}

/// Blocks passed along in one job at most: a sparse image's zero blocks
/// cost one channel hop per run, not per block.
const PASS_RUN: usize = 1024;

/// Walks the chain's blocks in order and sends them as jobs; stops early
/// (with Ok) when `send` says the results are no longer wanted.
pub(super) fn plan(
    chain: &Chain,
    only: Option<&BlockSet>,
    send: &mut dyn FnMut(Job) -> bool,
) -> Result<()> {
    let mut group: Option<Group> = None;
    let mut pass: Vec<Pass> = Vec::new();
    let mut out = |job: Job| if send(job) { Ok(()) } else { Err(None) };
    let mut walk = || -> std::result::Result<(), Option<Error>> {
        for r in chain.blocks()? {
            let r = r?;
            let wanted = only.is_none_or(|set| set.contains(r.block));
            if let Some((link, e)) = stored(&r).filter(|_| wanted) {
                if !group.as_ref().is_some_and(|g| joins(g, link, &e)) {
                    if let Some(g) = group.take() {
                        out(Job::Read(g))?;
                    }
                    if !pass.is_empty() {
                        out(Job::Pass(std::mem::take(&mut pass)))?;
                    }
                }
                group
                    .get_or_insert(Group {
                        link,
                        blocks: Vec::new(),
                    })
                    .blocks
                    .push(r);
                continue;
            }
            if let Some(g) = group.take() {
                out(Job::Read(g))?;
            }
            pass.push(if wanted {
                Pass::Zero(r)
            } else {
                Pass::Known(r)
            });
            if pass.len() == PASS_RUN {
                out(Job::Pass(std::mem::take(&mut pass)))?;
            }
        }
        if let Some(g) = group.take() {
            out(Job::Read(g))?;
        }
        if !pass.is_empty() {
            out(Job::Pass(pass.split_off(0)))?;
        }
        Ok(())
    };
    match walk() {
        Ok(()) | Err(None) => Ok(()),
        Err(Some(e)) => Err(e),
    }
}

/// Whether a block stored at `e` in `link` extends group `g` (back to back
/// in the same file, and the group within [`MAX_CHUNK`]).
fn joins(g: &Group, link: usize, e: &BlockEntry) -> bool {
    let span = g.span();
    g.link == link
        && span.offset + u64::from(span.len) == e.offset
        && e.offset + u64::from(e.len) - span.offset <= MAX_CHUNK as u64
}
