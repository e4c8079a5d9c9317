//! Checking stored blocks against their hashes: every listed block of a
//! full or a delta, and every unlisted region of a full against zero,
//! optionally only the blocks of one [`Subset`].

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use super::subset::Subset;
use super::Problem;
use crate::archive::{Revision, VolumeDir};
use crate::chain::{open_link, Index, Link};
use crate::checksum::{block_hash, is_zero};
use crate::error::{Error, IoContext, Result};
use crate::format::index::BlockEntry;
use crate::progress::Progress;

/// What checking one data file found.
#[derive(Debug, Default)]
pub struct FileCheck {
    pub bytes_read: u64,
    pub blocks_checked: u64,
    pub problems: Vec<Problem>,
    /// The bad blocks, for repair.
    pub bad: Vec<BadBlock>,
}

/// A stored block that does not read back as it should.
#[derive(Debug, Clone, Copy)]
pub enum BadBlock {
    /// A listed block whose data fails its hash.
    Data(BlockEntry),
    /// An unlisted region of a full (block `block`, `len` bytes) that is
    /// not zero.
    Hole { block: u64, len: u64 },
}

/// The length of a link's data file.
pub fn data_len(link: &Link) -> u64 {
    link.file.metadata().map_or(0, |m| m.len())
}

/// Checks the stored blocks (of `subset`, or all) of one revision's data
/// file, opened on its own (for repair, which holds the writer lock).
pub fn check_data(
    vol: &VolumeDir,
    rev: &Revision,
    subset: Option<Subset>,
    progress: &dyn Progress,
) -> Result<FileCheck> {
    check_link(
        &open_link(vol, rev)?,
        vol.block_size,
        subset,
        progress,
        &AtomicBool::new(false),
    )
}

/// Checks the stored blocks (of `subset`, or all) of an open link: the
/// file as it was when its chain was opened, whatever writers did since.
/// Errs with [`Error::Cancelled`] as soon as `cancel` is set.
pub fn check_link(
    link: &Link,
    bs: u64,
    subset: Option<Subset>,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<FileCheck> {
    let id = &link.revision.id;
    let mut fc = FileCheck::default();
    match &link.index {
        Index::Full(idx) => {
            let (file, path) = (&link.file, &link.path);
            let len = idx.header.size;
            check_entries(
                id,
                file,
                path,
                idx.entries()?,
                bs,
                subset,
                progress,
                cancel,
                &mut fc,
            )?;
            let (problems, bad) = check_holes(id, file, path, idx.entries()?, len, bs, subset)?;
            fc.problems.extend(problems);
            fc.bad.extend(bad);
        }
        Index::Delta(entries) => {
            let entries = entries.iter().map(|e| Ok(*e));
            check_entries(
                id, &link.file, &link.path, entries, bs, subset, progress, cancel, &mut fc,
            )?;
        }
    }
    Ok(fc)
}

#[allow(clippy::too_many_arguments)]
fn check_entries(
    id: &str,
    file: &File,
    path: &Path,
    entries: impl Iterator<Item = Result<BlockEntry>>,
    bs: u64,
    subset: Option<Subset>,
    progress: &dyn Progress,
    cancel: &AtomicBool,
    fc: &mut FileCheck,
) -> Result<()> {
    let mut buf = Vec::new();
    // the entries ascend through the file: the kernel reads ahead, and what
    // was checked leaves the page cache
    let mut ahead = crate::archive::read::Readahead::dropping_behind();
    for e in entries {
        let e = e?;
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled(format!("verify of {id} stopped")));
        }
        if e.zero || subset.is_some_and(|s| !s.contains(e.block)) {
            continue;
        }
        buf.resize(e.len as usize, 0);
        ahead.before(file, e.offset, e.len.into());
        crate::archive::read::read_at(file, path, &mut buf, e.offset)?;
        progress.advance(e.len as u64);
        fc.bytes_read += e.len as u64;
        fc.blocks_checked += 1;
        if block_hash(&buf) != e.hash {
            fc.bad.push(BadBlock::Data(e));
            let start = e.block * bs;
            fc.problems.push(Problem {
                revision: id.to_string(),
                range: Some((start, start + e.len as u64)),
                what: format!("block {} fails its checksum in {}", e.block, path.display()),
            });
        }
    }
    Ok(())
}

/// In a full, data found outside the listed blocks must be zeros. Walks the
/// file's data regions and the (ascending) index together.
fn check_holes(
    id: &str,
    file: &File,
    path: &Path,
    listed: impl Iterator<Item = Result<BlockEntry>>,
    size: u64,
    bs: u64,
    subset: Option<Subset>,
) -> Result<(Vec<Problem>, Vec<BadBlock>)> {
    let mut problems = Vec::new();
    let mut bad = Vec::new();
    let mut listed = listed.peekable();
    let mut buf = vec![0u8; bs as usize];
    let mut pos = 0u64;
    let mut next_block = 0u64; // blocks below this were checked
                               // where the file system reports no holes (ceph-fuse), every unlisted
                               // block is read, in order: ahead of time
    let mut ahead = crate::archive::read::Readahead::dropping_behind();
    while pos < size {
        let Some((start, end)) = crate::archive::sparse::next_data(file, pos, size).at(path)?
        else {
            break;
        };
        let mut block = (start / bs).max(next_block);
        while block * bs < end {
            while let Some(Ok(e)) = listed.peek() {
                if e.block >= block {
                    break;
                }
                listed.next();
            }
            let is_listed = match listed.peek() {
                Some(Ok(e)) => e.block == block,
                Some(Err(_)) => return Err(listed.next().unwrap().unwrap_err()),
                None => false,
            };
            if !is_listed && subset.is_none_or(|s| s.contains(block)) {
                let len = (size - block * bs).min(bs) as usize;
                ahead.before(file, block * bs, len as u64);
                crate::archive::read::read_at(file, path, &mut buf[..len], block * bs)?;
                if !is_zero(&buf[..len]) {
                    bad.push(BadBlock::Hole {
                        block,
                        len: len as u64,
                    });
                    problems.push(Problem {
                        revision: id.to_string(),
                        range: Some((block * bs, block * bs + len as u64)),
                        what: format!("unlisted block {block} is not zero in {}", path.display()),
                    });
                }
            }
            block += 1;
        }
        next_block = block;
        pos = end;
    }
    Ok((problems, bad))
}
