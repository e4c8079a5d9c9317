//! Synthetic fulls: a full of revision S built from the archive alone (the
//! chain's full plus its deltas), with no read from Ceph.
//!
//! The chain's full is cloned where the file system shares extents
//! (`FICLONE`: XFS, btrfs; no data moves). Elsewhere its data regions
//! are copied, so the copy stays sparse: read forward with the kernel
//! reading ahead and dropping what was copied, written around the page
//! cache ([`DirectWriter`]); `copy_file_range` would copy through the
//! page cache (ext4 has no copy offload), flooding it and writing at the
//! buffered rate. Then every block S reads from a later link is written
//! in place, every block S reads as zeros but the copy holds is punched
//! out, and the index is written from the resolved block hashes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;

use crate::archive::atomic::TempFile;
use crate::archive::direct_write::{self, DirectWriter};
use crate::archive::read::Readahead;
use crate::archive::{Revision, VolumeDir};
use crate::buffers::AlignedBuf;
use crate::chain::{Chain, Source};
use crate::error::{IoContext, Result};
use crate::format::full_index::FullIndexWriter;

/// Stages a full of `s` and its index as kept temp files: (full, index).
pub fn stage(vol: &VolumeDir, s: &Revision) -> Result<(PathBuf, PathBuf)> {
    let chain = Chain::open(vol, s)?;
    let bs = vol.block_size;
    let size = s.manifest.size;
    let base = &chain.links[0];
    let full = TempFile::new_in(&vol.tmp_dir(), "synth")?;
    if let Some(e) = crate::fault::read_fault(&base.path) {
        return Err(crate::error::Error::io(&base.path, e));
    }
    copy_base(&base.file, &base.path, &full, base.size.min(size))?;
    full.file.set_len(size).at(&full.path)?;
    crate::fault::point("synthetic: base copied");
    let index_tmp = TempFile::new_in(&vol.tmp_dir(), "synth-idx")?;
    let mut index = FullIndexWriter::new(
        index_tmp.file.try_clone().at(&index_tmp.path)?,
        index_tmp.path.clone(),
    )?;
    let mut buf = AlignedBuf::new();
    let mut punch = Punch::default();
    for r in chain.blocks()? {
        let r = r?;
        let offset = r.block * bs;
        match r.source {
            Source::Stored { link: 0, entry } if !entry.zero => index.push(r.block, &entry.hash)?,
            Source::Stored { link, entry } if !entry.zero => {
                chain.read_entry(link, &entry, &mut buf)?;
                full.file.write_all_at(&buf, offset).at(&full.path)?;
                index.push(r.block, &entry.hash)?;
                crate::fault::point("synthetic: block written");
            }
            // Zero at S: the copy must not hold data there (runs of such
            // blocks are punched at once: one call per 64 KiB block took
            // seconds over a 2 GiB hole)
            Source::Stored { .. } | Source::Zero => {
                if offset < base.size {
                    punch.add(&full, offset, r.len)?;
                }
            }
        }
    }
    punch.flush(&full)?;
    index.finish(bs, size, s.id_bytes())?;
    Ok((full.keep()?, index_tmp.keep()?))
}

/// A run of bytes to punch out of the copy, grown while blocks follow on.
#[derive(Default)]
struct Punch(Option<(u64, u64)>);

impl Punch {
    fn add(&mut self, to: &TempFile, offset: u64, len: u64) -> Result<()> {
        match &mut self.0 {
            Some((_, end)) if *end == offset => *end += len,
            _ => {
                self.flush(to)?;
                self.0 = Some((offset, offset + len));
            }
        }
        Ok(())
    }

    fn flush(&mut self, to: &TempFile) -> Result<()> {
        if let Some((start, end)) = self.0.take() {
            crate::archive::sparse::punch_hole(&to.file, start, end - start).at(&to.path)?;
        }
        Ok(())
    }
}

/// Copies the data regions of the full `from` (at `path`) below `len` to
/// the same offsets of `to` (new and empty); by cloning the whole file
/// where the file system can (the caller cuts it to length).
fn copy_base(from: &File, path: &std::path::Path, to: &TempFile, len: u64) -> Result<()> {
    // SAFETY: two open descriptors; FICLONE reads its argument as an fd.
    if unsafe { libc::ioctl(to.file.as_raw_fd(), libc::FICLONE, from.as_raw_fd()) } == 0 {
        return Ok(());
    }
    let mut direct = DirectWriter::or_cache(&to.file, &to.path);
    let mut ahead = Readahead::dropping_behind();
    let mut spare = None;
    let mut pos = 0u64;
    while pos < len {
        let Some((start, end)) = crate::archive::sparse::next_data(from, pos, len).at(path)? else {
            break;
        };
        let (mut at, end) = (start, end.min(len));
        while at < end {
            let n = ((end - at) as usize).min(COPY_PIECE);
            ahead.before(from, at, n as u64);
            let mut buf = spare
                .take()
                .unwrap_or_else(|| AlignedBuf::with_capacity(COPY_PIECE));
            buf.resize_to_fill(n);
            crate::archive::read::read_at(from, path, &mut buf, at)?;
            spare = direct_write::write_owned_at(&mut direct, &to.file, &to.path, at, buf)?;
            at += n as u64;
        }
        pos = end;
    }
    match direct {
        Some(d) => d.finish(),
        None => Ok(()),
    }
}

/// Bytes per read of the base full's copy.
const COPY_PIECE: usize = 4 << 20;
