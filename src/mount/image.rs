//! One revision as a read-only image file: byte ranges resolved block by
//! block through its chain (no replay), every stored block checked against
//! its hash before a byte of it is returned, holes as zeros, and the next
//! data or hole for `SEEK_DATA`/`SEEK_HOLE`.
//!
//! It reads only the files its [`Chain`] opened, so it keeps reading the
//! revision as it was when opened, whatever prunes and merges do next. A
//! block that fails its hash is an error naming the revision, the image
//! offset and the file; it is never returned as bytes.

use std::os::unix::fs::FileExt;

use crate::archive::{Revision, VolumeDir};
use crate::chain::{Chain, Index, Source};
use crate::checksum::block_hash;
use crate::error::{Error, IoContext, Result};

/// An opened revision.
pub struct RevisionImage {
    pub revision: Revision,
    chain: Chain,
}

impl RevisionImage {
    pub fn open(vol: &VolumeDir, revision: &Revision) -> Result<RevisionImage> {
        Ok(RevisionImage {
            revision: revision.clone(),
            chain: Chain::open(vol, revision)?,
        })
    }

    pub fn size(&self) -> u64 {
        self.chain.size()
    }

    /// Up to `len` bytes at `offset` (fewer at the end of the image).
    pub fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let size = self.size();
        if offset >= size {
            return Ok(Vec::new());
        }
        let end = size.min(offset.saturating_add(len as u64));
        let bs = self.chain.block_size;
        let mut out = vec![0u8; (end - offset) as usize];
        let mut buf = Vec::new();
        let mut block = offset / bs;
        while block * bs < end {
            let r = self.chain.resolve(block)?;
            let start = block * bs;
            if let Source::Stored { link, entry } = r.source {
                if !entry.zero {
                    let l = &self.chain.links[link];
                    if u64::from(entry.len) != r.len {
                        return Err(Error::Corrupt(format!(
                            "revision {}: block {block} is stored in {} with length {} but is {} long",
                            self.revision.id,
                            l.path.display(),
                            entry.len,
                            r.len
                        )));
                    }
                    // the part of this block inside [offset, end)
                    let from = offset.max(start);
                    let to = end.min(start + r.len);
                    // A whole block is read straight into place (one copy
                    // less on the sequential path); a part goes via `buf`.
                    let whole = from == start && to == start + r.len;
                    let data: &mut [u8] = if whole {
                        &mut out[(from - offset) as usize..(to - offset) as usize]
                    } else {
                        buf.resize(entry.len as usize, 0);
                        &mut buf
                    };
                    l.file.read_exact_at(data, entry.offset).at(&l.path)?;
                    if block_hash(data) != entry.hash {
                        return Err(Error::Corrupt(format!(
                            "revision {}: bytes {}..{} fail their checksum in {}",
                            self.revision.id,
                            start,
                            start + r.len,
                            l.path.display()
                        )));
                    }
                    if !whole {
                        out[(from - offset) as usize..(to - offset) as usize]
                            .copy_from_slice(&buf[(from - start) as usize..(to - start) as usize]);
                    }
                }
            }
            block += 1;
        }
        Ok(out)
    }

    /// Whether `block` holds data (a stored, non-zero block).
    fn is_data(&self, block: u64) -> Result<bool> {
        Ok(matches!(
            self.chain.resolve(block)?.source,
            Source::Stored { entry, .. } if !entry.zero
        ))
    }

    /// The offset of the first data at or after `offset` (`SEEK_DATA`), or
    /// None past the last data. Block granular: a data block may hold
    /// zeros, never the other way round.
    pub fn seek_data(&self, offset: u64) -> Result<Option<u64>> {
        let (bs, size) = (self.chain.block_size, self.size());
        let mut block = offset / bs;
        while block * bs < size {
            // The earliest block at or after `block` that any link stores
            // as data; whether it is visible at this revision is decided
            // by resolving it.
            let Some(next) = self.next_stored(block)? else {
                return Ok(None);
            };
            if self.is_data(next)? {
                return Ok(Some((next * bs).max(offset)));
            }
            block = next + 1;
        }
        Ok(None)
    }

    /// The offset of the first hole at or after `offset` (`SEEK_HOLE`); the
    /// image's end counts as one.
    pub fn seek_hole(&self, offset: u64) -> Result<u64> {
        let (bs, size) = (self.chain.block_size, self.size());
        let mut block = offset / bs;
        while block * bs < size {
            if !self.is_data(block)? {
                return Ok((block * bs).max(offset));
            }
            block += 1;
        }
        Ok(size)
    }

    /// The smallest block >= `from` that some link stores as non-zero data
    /// below the sizes in between.
    fn next_stored(&self, from: u64) -> Result<Option<u64>> {
        let bs = self.chain.block_size;
        let mut best: Option<u64> = None;
        for (j, l) in self.chain.links.iter().enumerate() {
            let limit = self.chain.visible_limit(j);
            let found = match &l.index {
                Index::Full(idx) => idx.next_at_or_after(from)?.map(|e| e.block),
                Index::Delta(entries) => {
                    let at = entries.partition_point(|e| e.block < from);
                    entries[at..].iter().find(|e| !e.zero).map(|e| e.block)
                }
            };
            if let Some(b) = found.filter(|b| b * bs < limit) {
                best = Some(best.map_or(b, |x| x.min(b)));
            }
        }
        Ok(best)
    }
}
