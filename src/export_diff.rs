//! The changes between two revisions (or from an empty image) as Ceph's
//! `rbd diff v1` stream, for `rbd import-diff`: an off-site copy kept in
//! Ceph's own format.
//!
//! Which blocks changed comes from the indexes alone: a block is written
//! when its hash at the newer revision differs from the older one's (with
//! the older image resized to the newer size, as `rbd import-diff` resizes
//! its target first), and zeroed when it became zero. Only the written
//! blocks are read, each verified against its hash. The snapshot names are
//! the revisions' own (the Ceph snapshots they were read from), so a chain
//! of diffs applies in order to one image, as with `rbd export-diff`.

use std::io::Write;

use crate::archive::{Revision, VolumeDir};
use crate::buffers::BufferPool;
use crate::chain::{bad_block, Chain, Resolved, Source};
use crate::checksum::{block_hash, Hash, ZeroHashes};
use crate::error::{Error, Result};
use crate::format::rbd_diff::DiffWriter;
use crate::progress::Progress;
use crate::restore::reader::{Coalescer, Piece};

#[derive(Debug, Clone, Default)]
pub struct DiffReport {
    /// Bytes in `w` records, and bytes the `z` records zero.
    pub data: u64,
    pub zeroed: u64,
}

/// What a block holds, for comparing two revisions.
#[derive(PartialEq, Eq)]
enum Content {
    Zero,
    Hash(Hash),
    /// A stored block whose length is not the block's here (a tail that
    /// grew): never equal to anything, so it is written.
    Other,
}

fn content(r: &Resolved, zero: &ZeroHashes) -> Content {
    match r.source {
        Source::Stored { entry, .. } if !entry.zero => {
            if u64::from(entry.len) != r.len {
                Content::Other
            } else if entry.hash == zero.for_len(r.len) {
                Content::Zero
            } else {
                Content::Hash(entry.hash)
            }
        }
        _ => Content::Zero,
    }
}

/// Writes the diff from `from` (None: an empty image) to `to` into `out`.
pub fn export_diff<W: Write>(
    vol: &VolumeDir,
    from: Option<&Revision>,
    to: &Revision,
    out: W,
    progress: &dyn Progress,
) -> Result<(W, DiffReport)> {
    let chain = Chain::open(vol, to)?;
    let base = from.map(|f| Chain::open(vol, f)).transpose()?;
    let size = chain.size();
    let io = |e: std::io::Error| Error::Invalid(format!("writing the diff: {e}"));
    let mut w = DiffWriter::new(out).map_err(io)?;
    if let Some(f) = from {
        w.from_snap(&f.manifest.snapshot).map_err(io)?;
    }
    w.to_snap(&to.manifest.snapshot).map_err(io)?;
    w.size(size).map_err(io)?;
    let zero = chain.zero_hashes().clone();
    let mut theirs = base.as_ref().map(|b| b.blocks_as(size)).transpose()?;
    let mut report = DiffReport::default();
    // back-to-back changed blocks become one record, as a restore's pieces
    let pool = BufferPool::new(2);
    let mut emit = |piece: Piece| -> Result<()> {
        match piece {
            Piece::Data { offset, data } => {
                report.data += data.len() as u64;
                w.write(offset, &data).map_err(io)?;
                pool.put(data);
            }
            Piece::Zero { offset, len } => {
                report.zeroed += len;
                w.zero(offset, len).map_err(io)?;
            }
        }
        Ok(())
    };
    let mut records = Coalescer::new(&mut emit, &pool, true);
    let mut buf = crate::buffers::AlignedBuf::new();
    progress.begin("export-diff", size);
    for r in chain.blocks()? {
        let r = r?;
        progress.advance(r.len);
        let old = match theirs.as_mut().and_then(|t| t.next()) {
            Some(o) => content(&o?, &zero),
            None => Content::Zero,
        };
        let new = content(&r, &zero);
        let offset = r.block * chain.block_size;
        if new == old && new != Content::Other {
            records.flush()?; // unchanged: the next record starts apart
            continue;
        }
        match (r.source, new) {
            (Source::Stored { link, entry }, Content::Hash(_) | Content::Other) => {
                chain.read_entry(link, &entry, &mut buf)?;
                if block_hash(&buf) != entry.hash {
                    let end = offset + r.len;
                    return Err(bad_block(&to.id, offset..end, &chain.links[link].path));
                }
                records.data(offset, &buf)?;
            }
            _ => records.zero(offset, r.len)?,
        }
    }
    records.flush()?;
    drop(records);
    progress.end();
    Ok((w.end().map_err(io)?, report))
}
