//! Staging a merged delta: when delta R (on base B) is removed, its child
//! S (a delta on R) is rewritten as a delta on B holding R's blocks and
//! S's (S's win), so S reads exactly as before.
//!
//! Sizes need care (docs/FORMAT.md, "Reading block n"): blocks of B's
//! chain at or past R's size were invisible from S while R sat in between.
//! If R was smaller than both B and S, the blocks in
//! `[R.size, min(B.size, S.size))` become visible through B once R is gone,
//! so the merged delta lists them explicitly as zero blocks (unless S
//! stores them). R's blocks past S's size are dropped. The straddling-block
//! invariant holds for the merged delta because the block at
//! `min(B.size, S.size)` is either stored by R or S already or falls in the
//! zero range above.

use std::path::PathBuf;

use crate::archive::atomic::TempFile;
use crate::archive::read::Readahead;
use crate::archive::{Revision, VolumeDir};
use crate::checksum::{block_count, ZeroHashes};
use crate::error::{IoContext, Result};
use crate::format::delta::{DeltaFile, DeltaHeader, DeltaWriter};
use crate::format::index::BlockEntry;

/// Writes S's merged delta to a kept temp file; returns its path.
pub fn stage(vol: &VolumeDir, r: &Revision, s: &Revision) -> Result<PathBuf> {
    let bs = vol.block_size;
    let rd = DeltaFile::open(&vol.delta_path(&r.id))?;
    let sd = DeltaFile::open(&vol.delta_path(&s.id))?;
    let base_id = crate::checksum::to_hex(&rd.header.base);
    let b_size = vol.read_revision(&base_id)?.manifest.size;
    let (r_size, s_size) = (r.manifest.size, s.manifest.size);
    let s_blocks = block_count(s_size, bs);
    let exposed = if r_size < b_size.min(s_size) {
        r_size.div_ceil(bs)..b_size.min(s_size).div_ceil(bs)
    } else {
        0..0
    };
    let tmp = TempFile::new_in(&vol.tmp_dir(), "merge")?;
    let file = tmp.file.try_clone().at(&tmp.path)?;
    let mut w = DeltaWriter::new(file, tmp.path.clone(), bs);
    let zeros = ZeroHashes::new(bs);
    let mut buf = Vec::new();
    // both deltas are read forward: the kernel reads ahead of each, and
    // what was copied leaves the page cache
    let (mut ahead_r, mut ahead_s) = (Readahead::dropping_behind(), Readahead::dropping_behind());
    let (mut i, mut j) = (0usize, 0usize);
    let (re, se) = (&rd.entries, &sd.entries);
    let mut block = 0u64;
    // Walk R's entries, S's entries and the exposed range in block order.
    loop {
        let next_r = re.get(i).map(|e| e.block);
        let next_s = se.get(j).map(|e| e.block);
        let next_x = (block.max(exposed.start) < exposed.end).then(|| block.max(exposed.start));
        let Some(n) = [next_r, next_s, next_x].into_iter().flatten().min() else {
            break;
        };
        if n >= s_blocks {
            break;
        }
        if next_s == Some(n) {
            put(&mut w, &sd, &se[j], &mut ahead_s, &mut buf)?;
        } else if next_r == Some(n) {
            put(&mut w, &rd, &re[i], &mut ahead_r, &mut buf)?;
        } else {
            let len = (s_size - n * bs).min(bs);
            w.add_zero(n, len, zeros.for_len(len))?;
        }
        if next_s == Some(n) {
            j += 1;
        }
        if next_r == Some(n) {
            i += 1;
        }
        block = n + 1;
        crate::fault::point("merge: block staged");
    }
    w.finish(&DeltaHeader {
        block_size: bs,
        size: s_size,
        revision: s.id_bytes(),
        base: rd.header.base,
    })?;
    tmp.keep()
}

fn put(
    w: &mut DeltaWriter,
    from: &DeltaFile,
    e: &BlockEntry,
    ahead: &mut Readahead,
    buf: &mut Vec<u8>,
) -> Result<()> {
    if e.zero {
        return w.add_zero(e.block, e.len as u64, e.hash);
    }
    buf.resize(e.len as usize, 0);
    ahead.before(&from.file, e.offset, e.len.into());
    crate::archive::read::read_at(&from.file, &from.path, buf, e.offset)?;
    w.add(e.block, buf, e.hash)
}
