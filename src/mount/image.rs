//! One revision as a read-only image file: byte ranges resolved block by
//! block through its chain (no replay), every stored block checked against
//! its hash before a byte of it is returned, holes as zeros, and the next
//! data or hole for `SEEK_DATA`/`SEEK_HOLE`.
//!
//! It reads only the files its [`Chain`] opened, so it keeps reading the
//! revision as it was when opened, whatever prunes and merges do next. A
//! block that fails its hash is an error naming the revision, the image
//! offset and the file; it is never returned as bytes.

use std::sync::Mutex;

use crate::archive::read::Readahead;
use crate::archive::{Revision, VolumeDir};
use crate::chain::{bad_block, Chain, Index, Source};
use crate::checksum::{block_hash, Hash};
use crate::error::{Error, Result};

/// An opened revision.
pub struct RevisionImage {
    pub revision: Revision,
    chain: Chain,
    /// Per link: the kernel's readahead for a sequential reader.
    ahead: Mutex<Vec<Readahead>>,
}

impl RevisionImage {
    pub fn open(vol: &VolumeDir, revision: &Revision) -> Result<RevisionImage> {
        let chain = Chain::open(vol, revision)?;
        Ok(RevisionImage {
            revision: revision.clone(),
            ahead: Mutex::new(vec![Readahead::default(); chain.links.len()]),
            chain,
        })
    }

    pub fn size(&self) -> u64 {
        self.chain.size()
    }

    /// Up to `len` bytes at `offset` (fewer at the end of the image).
    pub fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut out = vec![0u8; len];
        let n = self.read_into(offset, &mut out)?;
        out.truncate(n);
        Ok(out)
    }

    /// Fills `out` with the bytes at `offset` and returns how many there
    /// are (fewer than `out.len()` at the end of the image). Every returned
    /// byte is written, so `out` may hold anything before. Whole blocks
    /// that lie back to back in one file are read with one call, straight
    /// into place, and then checked block by block.
    pub fn read_into(&self, offset: u64, out: &mut [u8]) -> Result<usize> {
        let size = self.size();
        if offset >= size {
            return Ok(0);
        }
        let end = size.min(offset.saturating_add(out.len() as u64));
        let bs = self.chain.block_size;
        let mut run = Run::default();
        let mut part = Vec::new();
        let mut block = offset / bs;
        while block * bs < end {
            let r = self.chain.resolve(block)?;
            let start = block * bs;
            // the part of this block inside [offset, end), as `out` indexes
            let from = offset.max(start);
            let to = end.min(start + r.len);
            let (lo, hi) = ((from - offset) as usize, (to - offset) as usize);
            match r.source {
                Source::Stored { link, entry } if !entry.zero => {
                    if u64::from(entry.len) != r.len {
                        return Err(Error::Corrupt(format!(
                            "revision {}: block {block} is stored in {} with length {} but is {} long",
                            self.revision.id,
                            self.chain.links[link].path.display(),
                            entry.len,
                            r.len
                        )));
                    }
                    if from == start && to == start + r.len {
                        if !run.extends(link, entry.offset, lo) {
                            self.flush(&mut run, out)?;
                            run = Run::start(link, entry.offset, lo);
                        }
                        run.blocks.push((start, hi - lo, entry.hash));
                        run.len += hi - lo;
                    } else {
                        // a block cut by the request: read whole, copy a part
                        part.resize(entry.len as usize, 0);
                        self.read_checked(link, entry.offset, &mut part, start, &entry.hash)?;
                        out[lo..hi]
                            .copy_from_slice(&part[(from - start) as usize..(to - start) as usize]);
                    }
                }
                _ => out[lo..hi].fill(0),
            }
            block += 1;
        }
        self.flush(&mut run, out)?;
        Ok((end - offset) as usize)
    }

    /// Reads a run of whole blocks into place and checks each.
    fn flush(&self, run: &mut Run, out: &mut [u8]) -> Result<()> {
        if run.blocks.is_empty() {
            return Ok(());
        }
        let data = &mut out[run.out..run.out + run.len];
        self.pread(run.link, data, run.file)?;
        let mut at = 0;
        for (start, n, hash) in run.blocks.drain(..) {
            self.check(&data[at..at + n], start, hash, run.link)?;
            at += n;
        }
        Ok(())
    }

    fn read_checked(
        &self,
        link: usize,
        at: u64,
        data: &mut [u8],
        start: u64,
        hash: &Hash,
    ) -> Result<()> {
        self.pread(link, data, at)?;
        self.check(data, start, *hash, link)
    }

    /// Reads `data` at `at` from `link`'s file, through the page cache.
    /// (Tried: `O_DIRECT` cut the mount's CPU time by a third but, with no
    /// readahead below it, made a cold `dd` of a 2 GiB revision's full
    /// part 1.8× slower; 2026-11-29.)
    /// A sequential reader (`dd`, `cp`, `qemu-img`) gets the kernel
    /// reading ahead of it ([`Readahead`]); random reads do not.
    fn pread(&self, link: usize, data: &mut [u8], at: u64) -> Result<()> {
        let l = &self.chain.links[link];
        self.ahead.lock().unwrap_or_else(|p| p.into_inner())[link].before(
            &l.file,
            at,
            data.len() as u64,
        );
        crate::archive::read::read_at(&l.file, &l.path, data, at)
    }

    /// Errors unless `data`, the block at image offset `start`, hashes to `hash`.
    fn check(&self, data: &[u8], start: u64, hash: Hash, link: usize) -> Result<()> {
        if block_hash(data) == hash {
            return Ok(());
        }
        let end = start + data.len() as u64;
        Err(bad_block(
            &self.revision.id,
            start..end,
            &self.chain.links[link].path,
        ))
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

/// Whole blocks that lie back to back in one link's file and in `out`.
#[derive(Default)]
struct Run {
    link: usize,
    /// where the run starts in the file
    file: u64,
    /// where it starts in `out`
    out: usize,
    len: usize,
    /// (image offset, length, hash) of each block
    blocks: Vec<(u64, usize, Hash)>,
}

impl Run {
    fn start(link: usize, file: u64, out: usize) -> Run {
        Run {
            link,
            file,
            out,
            ..Run::default()
        }
    }

    /// Whether a block at `file` in `link`, going to `out`, continues it.
    fn extends(&self, link: usize, file: u64, out: usize) -> bool {
        !self.blocks.is_empty()
            && self.link == link
            && self.file + self.len as u64 == file
            && self.out + self.len == out
    }
}
