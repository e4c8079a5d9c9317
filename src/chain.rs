//! A revision's storage chain and block resolution.
//!
//! A revision is stored either as a full or as a delta over a base revision,
//! which may itself be a delta. [`Chain`] opens the files from the revision
//! down to its full and answers, for every block of the revision, which file
//! holds it (or that it is zero) without replaying anything: each needed byte
//! is read once, and any block can be looked up directly.
//!
//! Sizes: bytes beyond the smallest size seen between the supplying revision
//! and the target read as zeros, so shrink-then-grow restores exactly. A
//! backup always rewrites the block that straddles a resize boundary, so a
//! supplying entry's length always equals the block's length at the target.

use std::fs::File;
use std::path::PathBuf;

use crate::archive::{Revision, StorageKind, VolumeDir};
use crate::buffers::AlignedBuf;
use crate::checksum::{block_count, block_len, Hash, ZeroHashes};
use crate::error::{Error, IoContext, Result};
use crate::format::delta::DeltaFile;
use crate::format::full_index::FullIndexReader;
use crate::format::index::{self, BlockEntry};

/// The block index of one link: a full's is streamed from its file (it can
/// be as large as the image's data), a delta's is in memory (it is as large
/// as the change).
pub enum Index {
    Full(FullIndexReader),
    Delta(Vec<BlockEntry>),
}

/// One revision's stored blocks.
pub struct Link {
    pub revision: Revision,
    pub kind: StorageKind,
    pub size: u64,
    pub index: Index,
    pub file: File,
    pub path: PathBuf,
    /// The revision a delta applies to (None for a full).
    pub base: Option<String>,
}

impl Link {
    /// The entry of `block` in this link, if it stores it.
    pub fn find(&self, block: u64) -> Result<Option<BlockEntry>> {
        match &self.index {
            Index::Full(r) => r.find(block),
            Index::Delta(entries) => Ok(index::find(entries, block).copied()),
        }
    }

    /// A delta's entries (empty for a full).
    pub fn delta_entries(&self) -> &[BlockEntry] {
        match &self.index {
            Index::Full(_) => &[],
            Index::Delta(e) => e,
        }
    }
}

/// A revision and the links it depends on, full first.
pub struct Chain {
    pub links: Vec<Link>,
    pub block_size: u64,
    /// `suffix_min[j]` = smallest size among links j..=last.
    suffix_min: Vec<u64>,
    zero: ZeroHashes,
}

/// Where a block's bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Zero,
    Stored { link: usize, entry: BlockEntry },
}

/// A block of the target revision and its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    pub block: u64,
    /// Length of the block at the target revision.
    pub len: u64,
    pub source: Source,
}

/// How often [`Chain::open`] starts over when a history edit renames or
/// removes a file between two of its opens.
const OPEN_ATTEMPTS: usize = 20;

impl Chain {
    /// Opens `rev` and every base it needs, as one consistent snapshot.
    ///
    /// Readers take no lock. Writers never change the bytes of a visible
    /// file (they rename a new file over it, or unlink it), and an open file
    /// keeps its content until closed; so once every link is open, the chain
    /// reads as it was, whatever prunes and merges do next. Only between two
    /// opens can a writer interfere (a base removed after its child was
    /// merged forward): a file that vanished there makes the whole open
    /// start over, and finds the rewritten chain. A target whose manifest
    /// is gone was removed: [`Error::Removed`].
    pub fn open(vol: &VolumeDir, rev: &Revision) -> Result<Chain> {
        let mut attempt = 1;
        loop {
            match Chain::open_once(vol, rev) {
                Ok(chain) => return Ok(chain),
                Err(e) if e.is_not_found() || matches!(e, Error::Removed(_)) => {
                    if !vol.manifest_path(&rev.id).exists() {
                        return Err(Error::Removed(format!(
                            "revision {} of volume {} was removed (by a prune or merge) before it could be read",
                            rev.id, vol.name
                        )));
                    }
                    if attempt == OPEN_ATTEMPTS {
                        return Err(e);
                    }
                    attempt += 1;
                    tracing::debug!(volume = %vol.name, "chain of {} changed while opening it; again ({e})", rev.short());
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn open_once(vol: &VolumeDir, rev: &Revision) -> Result<Chain> {
        let mut links = Vec::new();
        let mut current = rev.clone();
        loop {
            let link = open_link(vol, &current)?;
            let next = link.base.clone();
            links.push(link);
            #[cfg(test)]
            tests::between_opens();
            match next {
                None => break,
                Some(base) => {
                    if links.iter().any(|l| l.revision.id == base) || links.len() > 100_000 {
                        return Err(Error::Corrupt(format!("delta chain of {} loops", rev.id)));
                    }
                    current = vol.read_revision(&base).map_err(|e| {
                        if e.is_not_found() {
                            return e; // perhaps merged away meanwhile: `open` decides
                        }
                        Error::Corrupt(format!(
                            "revision {} needs base {base}, which cannot be read: {e}",
                            current.id
                        ))
                    })?;
                }
            }
        }
        links.reverse();
        let mut suffix_min = vec![0; links.len()];
        let mut m = u64::MAX;
        for (j, l) in links.iter().enumerate().rev() {
            m = m.min(l.size);
            suffix_min[j] = m;
        }
        Ok(Chain {
            block_size: vol.block_size,
            zero: ZeroHashes::new(vol.block_size),
            links,
            suffix_min,
        })
    }

    /// Bytes of link `j` at or past this offset are invisible at the
    /// target (a smaller size in between).
    pub fn visible_limit(&self, j: usize) -> u64 {
        self.suffix_min[j]
    }

    pub fn target(&self) -> &Link {
        self.links.last().expect("chain is never empty")
    }

    pub fn size(&self) -> u64 {
        self.target().size
    }

    pub fn zero_hashes(&self) -> &ZeroHashes {
        &self.zero
    }

    /// Every block of the target revision in order with its source.
    pub fn blocks(&self) -> Result<Blocks<'_>> {
        self.blocks_as(self.size())
    }

    /// The blocks of a revision of `size` bytes whose content is the target's
    /// (a child with nothing changed, after a possible resize): bytes beyond
    /// `size` vanish, bytes the target does not have read as zeros.
    /// Memory: 24 bytes per block stored in the chain's deltas; the full's
    /// index is streamed.
    pub fn blocks_as(&self, size: u64) -> Result<Blocks<'_>> {
        let bs = self.block_size;
        let n = block_count(size, bs);
        // Blocks supplied by deltas: newest link wins.
        let mut overlay: Vec<(u64, u32, u32)> = Vec::new();
        for (j, link) in self.links.iter().enumerate().skip(1) {
            let limit = self.suffix_min[j].min(size);
            for (i, e) in link.delta_entries().iter().enumerate() {
                if e.block * bs < limit && e.block < n {
                    overlay.push((e.block, j as u32, i as u32));
                }
            }
        }
        overlay.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        overlay.dedup_by_key(|x| x.0);
        let full = match &self.links[0].index {
            Index::Full(r) => Some(r.entries()?),
            Index::Delta(_) => {
                return Err(Error::Corrupt(format!(
                    "chain of {} does not end in a full",
                    self.target().revision.id
                )))
            }
        };
        Ok(Blocks {
            chain: self,
            size,
            n,
            next: 0,
            overlay,
            ov: 0,
            full,
            full_next: None,
            full_limit: self.suffix_min[0].min(size),
        })
    }

    /// The source of one block (random access, for readers like FUSE).
    pub fn resolve(&self, block: u64) -> Result<Resolved> {
        let size = self.size();
        let bs = self.block_size;
        let len = block_len(block, size, bs);
        for j in (0..self.links.len()).rev() {
            if block * bs >= self.suffix_min[j] {
                break;
            }
            if let Some(entry) = self.links[j].find(block)? {
                return Ok(Resolved {
                    block,
                    len,
                    source: Source::Stored { link: j, entry },
                });
            }
        }
        Ok(Resolved {
            block,
            len,
            source: Source::Zero,
        })
    }

    /// The hash of a resolved block at the target revision, from the index
    /// alone. Errors when the stored length does not match (a broken archive).
    pub fn hash_of(&self, r: &Resolved) -> Result<Hash> {
        match r.source {
            Source::Zero => Ok(self.zero.for_len(r.len)),
            // A zero entry reads as zeros whatever its length: the bytes
            // past a shorter one lie past a smaller size in between, which
            // read as zeros too (docs/FORMAT.md, "Reading block n").
            Source::Stored { entry, .. } if entry.zero => Ok(self.zero.for_len(r.len)),
            Source::Stored { link, entry } => {
                if entry.len as u64 != r.len {
                    return Err(Error::Corrupt(format!(
                        "block {} of revision {} is stored with length {} but is {} long",
                        r.block, self.links[link].revision.id, entry.len, r.len
                    )));
                }
                Ok(entry.hash)
            }
        }
    }

    /// The image checksum of the target, computed from block hashes only.
    pub fn image_checksum(&self) -> Result<Hash> {
        self.checksum_with(&[], self.size())
    }

    /// The image checksum of a child of `size` bytes that stores `overlay`
    /// (ascending) over this chain's target.
    pub fn checksum_with(&self, overlay: &[BlockEntry], size: u64) -> Result<Hash> {
        let mut sum = crate::checksum::ImageChecksum::new(size, self.block_size);
        let mut oi = 0;
        for r in self.blocks_as(size)? {
            let r = r?;
            let hash = if overlay.get(oi).is_some_and(|e| e.block == r.block) {
                oi += 1;
                let e = &overlay[oi - 1];
                if e.len as u64 != r.len {
                    return Err(Error::Corrupt(format!(
                        "new block {} has length {} but should have {}",
                        e.block, e.len, r.len
                    )));
                }
                e.hash
            } else {
                self.hash_of(&r)?
            };
            sum.push(r.block, &hash);
        }
        Ok(sum.finish())
    }

    /// Reads a stored entry's bytes (not verified).
    pub fn read_entry(&self, link: usize, entry: &BlockEntry, buf: &mut AlignedBuf) -> Result<()> {
        if entry.zero {
            buf.clear();
            buf.resize(entry.len as usize);
            return Ok(());
        }
        // not zeroed first: the read overwrites every byte (a 4 MiB memset
        // per read was 6 % of a restore's CPU)
        buf.resize_to_fill(entry.len as usize);
        let l = &self.links[link];
        crate::archive::read::read_at(&l.file, &l.path, buf, entry.offset)
    }
}

/// The error for bytes `range` of revision `revision` that fail their
/// checksum in `path`: never returned as data.
pub fn bad_block(revision: &str, range: std::ops::Range<u64>, path: &std::path::Path) -> Error {
    Error::Corrupt(format!(
        "revision {revision}: bytes {}..{} fail their checksum in {}",
        range.start,
        range.end,
        path.display()
    ))
}

/// Iterator over a chain's blocks in order (see [`Chain::blocks_as`]).
pub struct Blocks<'c> {
    chain: &'c Chain,
    size: u64,
    n: u64,
    next: u64,
    overlay: Vec<(u64, u32, u32)>,
    ov: usize,
    full: Option<crate::format::full_index::Entries<'c>>,
    full_next: Option<BlockEntry>,
    full_limit: u64,
}

impl Iterator for Blocks<'_> {
    type Item = Result<Resolved>;

    fn next(&mut self) -> Option<Result<Resolved>> {
        if self.next >= self.n {
            return None;
        }
        let block = self.next;
        self.next += 1;
        let bs = self.chain.block_size;
        let len = block_len(block, self.size, bs);
        // Advance the full's stream to `block`.
        while self.full_next.is_none_or(|e| e.block < block) {
            match self.full.as_mut().and_then(|f| f.next()) {
                Some(Ok(e)) => self.full_next = Some(e),
                Some(Err(e)) => {
                    self.next = self.n;
                    return Some(Err(e));
                }
                None => {
                    self.full = None;
                    self.full_next = None;
                    break;
                }
            }
        }
        let source = if self.overlay.get(self.ov).is_some_and(|o| o.0 == block) {
            let (_, j, i) = self.overlay[self.ov];
            self.ov += 1;
            Source::Stored {
                link: j as usize,
                entry: self.chain.links[j as usize].delta_entries()[i as usize],
            }
        } else {
            match self.full_next {
                Some(e) if e.block == block && block * bs < self.full_limit => {
                    Source::Stored { link: 0, entry: e }
                }
                _ => Source::Zero,
            }
        };
        Some(Ok(Resolved { block, len, source }))
    }
}

/// Opens revision `id`'s full and its checked index; the file's length must
/// be the image size the index names.
pub fn open_full(vol: &VolumeDir, id: &str) -> Result<(FullIndexReader, File, PathBuf)> {
    let idx = FullIndexReader::open(&vol.full_index_path(id))?;
    let path = vol.full_path(id);
    let file = File::open(&path).at(&path)?;
    let len = file.metadata().at(&path)?.len();
    if len != idx.header.size {
        return Err(Error::Corrupt(format!(
            "{}: full is {len} bytes, its index says {}",
            path.display(),
            idx.header.size
        )));
    }
    Ok((idx, file, path))
}

pub(crate) fn open_link(vol: &VolumeDir, rev: &Revision) -> Result<Link> {
    let kind = vol.storage_kind(&rev.id)?;
    let (index, size, path, revision_in_file, base, file) = match kind {
        StorageKind::Full => {
            let (idx, file, path) = open_full(vol, &rev.id)?;
            let (size, revision) = (idx.header.size, idx.header.revision);
            (Index::Full(idx), size, path, revision, None, file)
        }
        StorageKind::Delta => {
            let path = vol.delta_path(&rev.id);
            let d = DeltaFile::open(&path)?;
            let base = Some(crate::checksum::to_hex(&d.header.base));
            let (size, revision) = (d.header.size, d.header.revision);
            (Index::Delta(d.entries), size, path, revision, base, d.file)
        }
    };
    // Restores and verifies read data files front to back: ask for
    // aggressive readahead.
    // SAFETY: advisory call on a valid descriptor.
    unsafe {
        libc::posix_fadvise(
            std::os::unix::io::AsRawFd::as_raw_fd(&file),
            0,
            0,
            libc::POSIX_FADV_SEQUENTIAL,
        )
    };
    if revision_in_file != rev.id_bytes() || size != rev.manifest.size {
        return Err(Error::Corrupt(format!(
            "{}: data file does not belong to revision {} (id or size differs)",
            path.display(),
            rev.id
        )));
    }
    Ok(Link {
        revision: rev.clone(),
        kind,
        size,
        index,
        file,
        path,
        base,
    })
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::backup::{backup, BackupOptions};
    use crate::progress::NoProgress;
    use crate::source::file::{resize, write_at, FileImage};

    thread_local! {
        /// Runs once between two link opens of this thread's next open.
        static HOOK: RefCell<Option<Box<dyn FnOnce()>>> = RefCell::new(None);
    }

    pub(super) fn between_opens() {
        if let Some(f) = HOOK.with(|h| h.borrow_mut().take()) {
            f();
        }
    }

    /// A history edit landing between two opens of `Chain::open` (the
    /// target's old delta open, its base then merged away) makes the open
    /// start over and return the rewritten chain, never a mix.
    #[test]
    fn an_edit_between_two_opens_makes_the_open_start_over() {
        let dir = tempfile::tempdir().unwrap();
        let image = FileImage::new(dir.path().join("img")).unwrap();
        let vol = VolumeDir::open_or_create(&dir.path().join("archive"), "vm", 4096).unwrap();
        resize(&image, 64 * 4096).unwrap();
        let mut ids = Vec::new();
        for i in 0..3u8 {
            write_at(&image, u64::from(i) * 3 * 4096, &[i + 1; 3 * 4096]).unwrap();
            let o = BackupOptions {
                source_name: "test/vm".into(),
                ..Default::default()
            };
            ids.push(backup(&vol, &image, &o, &NoProgress).unwrap().revision.id);
        }
        let newest = vol.read_revision(&ids[2]).unwrap();
        let (vol2, middle) = (vol.clone(), ids[1].clone());
        HOOK.with(|h| {
            *h.borrow_mut() = Some(Box::new(move || {
                crate::history::remove_revisions(
                    &vol2,
                    &[middle],
                    "remove",
                    crate::history::IfTagged::Remove,
                )
                .unwrap();
            }))
        });
        let chain = Chain::open(&vol, &newest).unwrap();
        assert!(HOOK.with(|h| h.borrow().is_none()), "the edit ran");
        let links: Vec<&str> = chain.links.iter().map(|l| l.revision.id.as_str()).collect();
        assert_eq!(
            links,
            [ids[0].as_str(), ids[2].as_str()],
            "the merged chain"
        );
        assert_eq!(
            chain.image_checksum().unwrap(),
            newest.manifest.checksum_bytes()
        );
    }
}
